//! Files written whole or not at all, for the edge's store and state and the
//! control plane's blob folder.

use std::io;
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// The step of [`write_atomic`] that failed, and on which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}", path.display())]
pub struct WriteError {
  pub action: &'static str,
  pub path: PathBuf,
  #[source]
  pub source: io::Error,
}

fn step<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
  move |source| WriteError {
    action,
    path: path.to_path_buf(),
    source,
  }
}

/// Writes `bytes` to `path` through a temporary file in the same folder,
/// synced and renamed over `path`, then syncs the folder so the rename
/// itself survives a crash: afterwards `path` holds the old bytes or the
/// new ones. The file is owner-only (it may hold secrets); a missing folder
/// is made with `dir_mode` (less the umask).
pub fn write_atomic(path: &Path, bytes: &[u8], dir_mode: u32) -> Result<(), WriteError> {
  // Unique per write: two writers of one path may race.
  static COUNTER: AtomicU64 = AtomicU64::new(0);
  let dir = path
    .parent()
    .expect("atomic writes name a file in a folder");
  std::fs::DirBuilder::new()
    .recursive(true)
    .mode(dir_mode)
    .create(dir)
    .map_err(step("create the folder", dir))?;
  // Processes sharing a folder (control-plane replicas on one blob
  // folder) may have the same pid in their containers: a random part too.
  let tmp = dir.join(format!(
    ".tmp-{}-{}-{:016x}",
    std::process::id(),
    COUNTER.fetch_add(1, Ordering::Relaxed),
    {
      use std::hash::BuildHasher as _;
      std::collections::hash_map::RandomState::new().hash_one(COUNTER.load(Ordering::Relaxed))
    }
  ));
  let result = (|| {
    let mut file = std::fs::OpenOptions::new()
      .write(true)
      .create_new(true)
      .mode(0o600)
      .open(&tmp)
      .map_err(step("create", &tmp))?;
    file.write_all(bytes).map_err(step("write", &tmp))?;
    file.sync_all().map_err(step("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(step("rename the temporary file to", path))
  })();
  if result.is_err() {
    let _ = std::fs::remove_file(&tmp);
  }
  result?;
  std::fs::File::open(dir)
    .and_then(|d| d.sync_all())
    .map_err(step("sync the folder", dir))
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::os::unix::fs::PermissionsExt as _;

  #[test]
  fn writes_whole_files_owner_only_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/file");
    write_atomic(&path, b"one", 0o700).unwrap();
    write_atomic(&path, b"two", 0o700).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
      .unwrap()
      .map(|e| e.unwrap().file_name())
      .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("file")]);
  }

  #[test]
  fn a_failed_step_names_itself_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // The "folder" is a file, so it cannot be made.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let err = write_atomic(&blocker.join("file"), b"x", 0o700).unwrap_err();
    assert_eq!(err.action, "create the folder");
    assert_eq!(err.path, blocker);
  }
}
