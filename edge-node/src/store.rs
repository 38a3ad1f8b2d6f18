//! The edge's on-disk deployment store.
//!
//! Module files are content-addressed blobs, so versions that share a module
//! store it once, and a version is an immutable manifest named by the hash
//! of its own canonical JSON: the same upload always gets the same id, and
//! a version can never change under a running worker.
//!
//! ```text
//! <dir>/blobs/sha256/<first 2 hex>/<64 hex>    module bytes
//! <dir>/versions/<worker>/<version id>.json    canonical manifest JSON
//! <dir>/code-cache/<engine>/<first 2 hex>/<64 hex>  V8 code cache of a module
//! ```
//!
//! A code cache is named by its module's sha256 (the module's blob name for
//! an ES module) under the V8 version it was made by; the runtime makes and
//! checks it ([`isola_runtime::CodeCacheStore`]), so a cache that went bad
//! only costs a compile. Folders of other engines are removed on open.
//!
//! Every file is written to a temp file in its final folder, fsynced and
//! renamed, so a crash leaves either the old state or the new one.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use bytes::Bytes;
use isola_runtime::Bundle;
use isola_runtime::CodeCacheKey;
use isola_runtime::CodeCacheStore;
use isola_runtime::WorkerConfig;

use isola_proto::manifest::is_sha256_hex;
use isola_proto::manifest::sha256_hex;
pub use isola_proto::manifest::LimitsSpec;
pub use isola_proto::manifest::Manifest;
pub use isola_proto::manifest::ModuleRef;
use isola_proto::names;
use isola_proto::names::check_edge_worker_name;
use isola_proto::names::InvalidName;
use isola_proto::names::ModuleKind;

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
  #[error("cannot {action} {}: {source}", path.display())]
  Io {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
  },
  #[error(transparent)]
  InvalidWorkerName(InvalidName),
  #[error("invalid version id {0:?}: expected 64 lowercase hex characters (a sha256)")]
  InvalidVersionId(String),
  #[error(transparent)]
  InvalidModuleName(InvalidName),
  #[error("invalid manifest for worker {worker}: {reason}")]
  InvalidManifest { worker: String, reason: String },
  #[error(
    "module {module} of worker {worker} refers to blob {sha256}, which is not in the store \
     ({}); upload the module's bytes before the version",
    path.display()
  )]
  MissingBlob {
    worker: String,
    module: String,
    sha256: String,
    path: PathBuf,
  },
  #[error(
    "module {module} of worker {worker} declares size {declared} but blob {sha256} holds {actual} \
     bytes ({}); fix the manifest's size",
    path.display()
  )]
  SizeMismatch {
    worker: String,
    module: String,
    sha256: String,
    declared: u64,
    actual: u64,
    path: PathBuf,
  },
  #[error(
    "module {module} of worker {worker} is corrupt on disk: expected sha256 {expected}, \
     found {actual} ({}); upload the module again to repair the blob",
    path.display()
  )]
  CorruptBlob {
    worker: String,
    module: String,
    expected: String,
    actual: String,
    path: PathBuf,
  },
  #[error("worker {worker} has no version {version} (no {})", path.display())]
  VersionNotFound {
    worker: String,
    version: String,
    path: PathBuf,
  },
  #[error("the manifest {} is not valid: {reason}; deploy the version again", path.display())]
  CorruptManifest { path: PathBuf, reason: String },
  #[error("the modules of {worker}@{version} do not form a bundle: {source}")]
  Bundle {
    worker: String,
    version: String,
    #[source]
    source: isola_runtime::Error,
  },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
  move |source| StoreError::Io {
    action,
    path: path.to_path_buf(),
    source,
  }
}

/// Deployed worker versions and their modules under one folder.
#[derive(Clone, Debug)]
pub struct Store {
  root: PathBuf,
}

impl Store {
  /// Opens the store in `dir`, creating it and its `blobs/` and `versions/`
  /// folders if missing.
  pub fn open(dir: &Path) -> Result<Self, StoreError> {
    let store = Self {
      root: dir.to_path_buf(),
    };
    for sub in [
      store.root.join("blobs").join("sha256"),
      store.root.join("versions"),
    ] {
      fs::create_dir_all(&sub).map_err(io_err("create the store folder", &sub))?;
    }
    Ok(store)
  }

  /// Removes the code caches of other V8 versions than `engine`: no
  /// isolate of this build can use them.
  pub fn prune_code_caches(&self, engine: &str) {
    let Ok(entries) = fs::read_dir(self.root.join("code-cache")) else {
      return;
    };
    for entry in entries.flatten() {
      if entry.file_name().to_str() != Some(engine) {
        if let Err(e) = fs::remove_dir_all(entry.path()) {
          tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove old code caches");
        }
      }
    }
  }

  fn code_cache_path(&self, key: &CodeCacheKey) -> PathBuf {
    let sha256 = key.source_sha256();
    self
      .root
      .join("code-cache")
      .join(key.engine())
      .join(&sha256[..2])
      .join(sha256)
  }

  fn blob_path(&self, sha256: &str) -> PathBuf {
    self
      .root
      .join("blobs")
      .join("sha256")
      .join(&sha256[..2])
      .join(sha256)
  }

  fn worker_dir(&self, worker: &str) -> PathBuf {
    self.root.join("versions").join(worker)
  }

  fn version_path(&self, worker: &str, id: &str) -> PathBuf {
    self.worker_dir(worker).join(format!("{id}.json"))
  }

  /// Stores `bytes` and returns their sha256 (lowercase hex). Storing the
  /// same bytes again is a no-op, unless the blob on disk went bad, which
  /// this repairs.
  pub fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
    let sha256 = sha256_hex(bytes);
    let path = self.blob_path(&sha256);
    match fs::read(&path) {
      Ok(existing) if existing == bytes => return Ok(sha256),
      Ok(_) => {}
      Err(e) if e.kind() == io::ErrorKind::NotFound => {}
      Err(e) => return Err(io_err("read the blob", &path)(e)),
    }
    write_atomic(&path, bytes)?;
    Ok(sha256)
  }

  /// Validates `manifest` and stores it, returning its version id. The
  /// manifest is written in canonical form, so the file's sha256 is its id.
  pub fn put_version(&self, manifest: &Manifest) -> Result<String, StoreError> {
    check_worker_name(&manifest.worker)?;
    let invalid = |reason: String| StoreError::InvalidManifest {
      worker: manifest.worker.clone(),
      reason,
    };
    if manifest.modules.is_empty() {
      return Err(invalid("it lists no modules".to_string()));
    }
    let mut names = BTreeSet::new();
    for module in &manifest.modules {
      check_module_name(&module.name)?;
      if !names.insert(module.name.as_str()) {
        return Err(invalid(format!("module {} is listed twice", module.name)));
      }
      if !is_sha256_hex(&module.sha256) {
        return Err(invalid(format!(
          "module {} has sha256 {:?}; expected 64 lowercase hex characters",
          module.name, module.sha256
        )));
      }
    }
    if !names.contains(manifest.main_module.as_str()) {
      return Err(invalid(format!(
        "the main module {:?} is not among its modules ({})",
        manifest.main_module,
        names.into_iter().collect::<Vec<_>>().join(", ")
      )));
    }
    manifest.limits.validate().map_err(invalid)?;
    for module in &manifest.modules {
      let path = self.blob_path(&module.sha256);
      let actual = match fs::metadata(&path) {
        Ok(meta) if meta.is_file() => meta.len(),
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
          return Err(io_err("read the blob", &path)(e))
        }
        // Missing, or something that is not a file where the blob belongs.
        _ => {
          return Err(StoreError::MissingBlob {
            worker: manifest.worker.clone(),
            module: module.name.clone(),
            sha256: module.sha256.clone(),
            path,
          })
        }
      };
      if actual != module.size {
        return Err(StoreError::SizeMismatch {
          worker: manifest.worker.clone(),
          module: module.name.clone(),
          sha256: module.sha256.clone(),
          declared: module.size,
          actual,
          path,
        });
      }
    }

    let json = manifest.canonical_json();
    let id = sha256_hex(&json);
    let path = self.version_path(&manifest.worker, &id);
    match fs::read(&path) {
      Ok(existing) if existing == json => return Ok(id),
      Ok(_) => {}
      Err(e) if e.kind() == io::ErrorKind::NotFound => {}
      Err(e) => return Err(io_err("read the manifest", &path)(e)),
    }
    write_atomic(&path, &json)?;
    Ok(id)
  }

  /// The manifest of `worker`'s version `id`, checked against its id.
  pub fn version(&self, worker: &str, id: &str) -> Result<Manifest, StoreError> {
    check_worker_name(worker)?;
    if !is_sha256_hex(id) {
      return Err(StoreError::InvalidVersionId(id.to_string()));
    }
    let path = self.version_path(worker, id);
    let json = match fs::read(&path) {
      Ok(json) => json,
      Err(e) if e.kind() == io::ErrorKind::NotFound => {
        return Err(StoreError::VersionNotFound {
          worker: worker.to_string(),
          version: id.to_string(),
          path,
        })
      }
      Err(e) => return Err(io_err("read the manifest", &path)(e)),
    };
    let corrupt = |reason: String| StoreError::CorruptManifest {
      path: path.clone(),
      reason,
    };
    let manifest: Manifest = serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
    if manifest.worker != worker {
      return Err(corrupt(format!(
        "it belongs to worker {:?}",
        manifest.worker
      )));
    }
    let actual = manifest.version_id();
    if actual != id {
      return Err(corrupt(format!(
        "its content hashes to {actual}, not to its name"
      )));
    }
    Ok(manifest)
  }

  /// The ids of `worker`'s stored versions, sorted (ids are hashes, so this
  /// is not deploy order). An unknown worker has none.
  pub fn versions(&self, worker: &str) -> Result<Vec<String>, StoreError> {
    check_worker_name(worker)?;
    let dir = self.worker_dir(worker);
    let entries = match fs::read_dir(&dir) {
      Ok(entries) => entries,
      Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
      Err(e) => return Err(io_err("list the versions in", &dir)(e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
      let entry = entry.map_err(io_err("list the versions in", &dir))?;
      let name = entry.file_name();
      // Temp files of writes in progress start with '.' and never match.
      if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
        if is_sha256_hex(id) {
          ids.push(id.to_string());
        }
      }
    }
    ids.sort();
    Ok(ids)
  }

  /// Every stored version's id, across workers.
  pub fn all_versions(&self) -> Result<Vec<String>, StoreError> {
    let dir = self.root.join("versions");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_err("list the workers in", &dir))? {
      let entry = entry.map_err(io_err("list the workers in", &dir))?;
      if let Some(worker) = entry.file_name().to_str() {
        if check_worker_name(worker).is_ok() {
          ids.extend(self.versions(worker)?);
        }
      }
    }
    Ok(ids)
  }

  /// Stores a version pushed by the control plane: its module bytes (in the
  /// manifest's module order), checked against the manifest, then the
  /// manifest. Returns the version id.
  pub fn put_pushed(&self, manifest_json: &[u8], modules: &[&[u8]]) -> Result<String, StoreError> {
    let manifest: Manifest =
      serde_json::from_slice(manifest_json).map_err(|e| StoreError::InvalidManifest {
        worker: "?".to_string(),
        reason: format!("the pushed manifest is not valid JSON: {e}"),
      })?;
    let invalid = |reason: String| StoreError::InvalidManifest {
      worker: manifest.worker.clone(),
      reason,
    };
    if modules.len() != manifest.modules.len() {
      return Err(invalid(format!(
        "{} modules were pushed for {} listed",
        modules.len(),
        manifest.modules.len()
      )));
    }
    for (module, bytes) in manifest.modules.iter().zip(modules) {
      let sha256 = self.put_blob(bytes)?;
      if sha256 != module.sha256 {
        return Err(invalid(format!(
          "the bytes pushed for module {} hash to {sha256}, not {}",
          module.name, module.sha256
        )));
      }
    }
    self.put_version(&manifest)
  }

  /// The folder for files the control channel keeps (applied state, usage
  /// not yet acknowledged).
  pub fn control_dir(&self) -> PathBuf {
    self.root.join("control")
  }

  /// Reads every module of a version, verifying each one's sha256, and
  /// returns the bundle and config to run it. A mismatch is refused, so the
  /// caller keeps serving the previous version rather than bad code.
  pub fn load(&self, worker: &str, id: &str) -> Result<(Bundle, WorkerConfig), StoreError> {
    let manifest = self.version(worker, id)?;
    let mut modules = Vec::with_capacity(manifest.modules.len());
    for module in &manifest.modules {
      let path = self.blob_path(&module.sha256);
      let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
          return Err(StoreError::MissingBlob {
            worker: worker.to_string(),
            module: module.name.clone(),
            sha256: module.sha256.clone(),
            path,
          })
        }
        Err(e) => return Err(io_err("read the blob", &path)(e)),
      };
      let actual = sha256_hex(&bytes);
      if actual != module.sha256 {
        return Err(StoreError::CorruptBlob {
          worker: worker.to_string(),
          module: module.name.clone(),
          expected: module.sha256.clone(),
          actual,
          path,
        });
      }
      modules.push((module.name.clone(), Bytes::from(bytes)));
    }
    isola_runtime::from_manifest(&manifest, id, modules).map_err(|source| StoreError::Bundle {
      worker: worker.to_string(),
      version: id.to_string(),
      source,
    })
  }

  /// Imports a worker from a folder on disk (a static `[[worker]]` entry in
  /// the node's config) and returns its version id.
  ///
  /// The folder is `entry`'s parent; every file under it with a known module
  /// extension is a module named by its `/`-separated path relative to the
  /// folder. Hidden entries, `node_modules` and symlinked folders are
  /// skipped (they hold tooling, dependencies or loops, not the worker).
  pub fn import_dir(
    &self,
    worker: &str,
    entry: &Path,
    vars: BTreeMap<String, serde_json::Value>,
    limits: LimitsSpec,
  ) -> Result<String, StoreError> {
    check_worker_name(worker)?;
    let entry_meta = fs::metadata(entry).map_err(io_err("open the worker entry", entry))?;
    if !entry_meta.is_file() {
      return Err(io_err("open the worker entry", entry)(io::Error::other(
        "it is not a file",
      )));
    }
    let dir = match entry.parent() {
      Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
      _ => PathBuf::from("."),
    };
    let main_module = entry
      .file_name()
      .and_then(|n| n.to_str())
      .ok_or_else(|| {
        StoreError::InvalidModuleName(InvalidName(format!(
          "invalid module name {:?}: the entry's file name is not UTF-8",
          entry.display()
        )))
      })?
      .to_string();
    check_module_name(&main_module)?;

    let mut files = vec![(main_module.clone(), entry.to_path_buf())];
    collect_modules(&dir, "", &mut files)?;
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);

    let mut modules = Vec::with_capacity(files.len());
    for (name, path) in files {
      let bytes = fs::read(&path).map_err(io_err("read the module", &path))?;
      let sha256 = self.put_blob(&bytes)?;
      modules.push(ModuleRef {
        name,
        sha256,
        size: bytes.len() as u64,
      });
    }
    self.put_version(&Manifest {
      worker: worker.to_string(),
      main_module,
      modules,
      vars,
      limits,
      compatibility_date: None,
      services: Vec::new(),
      kv_namespaces: Vec::new(),
      queues: Default::default(),
      egress: None,
    })
  }
}

impl CodeCacheStore for Store {
  fn get(&self, key: &CodeCacheKey) -> Option<Vec<u8>> {
    fs::read(self.code_cache_path(key)).ok()
  }

  fn put(&self, key: &CodeCacheKey, bytes: &[u8]) {
    let path = self.code_cache_path(key);
    if let Err(e) = write_atomic(&path, bytes) {
      tracing::warn!(error = %e, "cannot store a code cache");
    }
  }
}

/// Adds the module files under `dir` (named `prefix` + their relative path)
/// to `out`.
fn collect_modules(
  dir: &Path,
  prefix: &str,
  out: &mut Vec<(String, PathBuf)>,
) -> Result<(), StoreError> {
  let entries = fs::read_dir(dir).map_err(io_err("list the worker folder", dir))?;
  for entry in entries {
    let entry = entry.map_err(io_err("list the worker folder", dir))?;
    let path = entry.path();
    let Some(name) = entry.file_name().to_str().map(str::to_string) else {
      // A name we cannot put in a module specifier cannot be imported.
      continue;
    };
    if name.starts_with('.') || name == "node_modules" {
      continue;
    }
    let file_type = entry.file_type().map_err(io_err("inspect", &path))?;
    if file_type.is_dir() {
      collect_modules(&path, &format!("{prefix}{name}/"), out)?;
    } else if ModuleKind::from_name(&name).is_some() {
      // Symlinks count when they point at a file; symlinked folders are not
      // followed.
      let is_file = file_type.is_file() || fs::metadata(&path).is_ok_and(|m| m.is_file());
      if is_file {
        out.push((format!("{prefix}{name}"), path));
      }
    }
  }
  Ok(())
}

/// Worker names become folder names; the rule is the one every worker
/// name on an edge follows.
fn check_worker_name(name: &str) -> Result<(), StoreError> {
  check_edge_worker_name(name).map_err(StoreError::InvalidWorkerName)
}

fn check_module_name(name: &str) -> Result<(), StoreError> {
  names::check_module_name(name)
    .map(drop)
    .map_err(StoreError::InvalidModuleName)
}

/// Writes `bytes` to `path` whole or not at all
/// ([`isola_io::fs::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
  isola_io::fs::write_atomic(path, bytes, 0o777).map_err(|e| StoreError::Io {
    action: e.action,
    path: e.path,
    source: e.source,
  })
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::time::Duration;

  fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    (dir, store)
  }

  /// Stores `modules` as blobs and returns a manifest for them.
  fn manifest(store: &Store, worker: &str, main: &str, modules: &[(&str, &str)]) -> Manifest {
    let modules = modules
      .iter()
      .map(|(name, code)| ModuleRef {
        name: name.to_string(),
        sha256: store.put_blob(code.as_bytes()).unwrap(),
        size: code.len() as u64,
      })
      .collect();
    Manifest {
      worker: worker.to_string(),
      main_module: main.to_string(),
      modules,
      vars: BTreeMap::new(),
      limits: LimitsSpec::default(),
      compatibility_date: None,
      services: Vec::new(),
      kv_namespaces: Vec::new(),
      queues: Default::default(),
      egress: None,
    }
  }

  const INDEX: &str = r#"import { greet } from "./lib/greet.js";
export default { fetch(request, env) { return new Response(greet(env.WHO) + " " + env.N.n); } };"#;
  const GREET: &str = r#"export function greet(who) { return "hello " + who; }"#;

  fn run(bundle: Bundle, config: WorkerConfig) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
      .enable_all()
      .build()
      .unwrap();
    rt.block_on(async {
      let mut worker =
        isola_runtime::Worker::new(bundle, &config, isola_runtime::LogSink::discard())
          .await
          .unwrap();
      let response = worker
        .fetch(isola_runtime::empty_request("http://x.test/"))
        .await
        .unwrap();
      assert_eq!(response.status(), 200);
      let body = response.into_body().collect_bytes().await.unwrap();
      String::from_utf8(body.to_vec()).unwrap()
    })
  }

  #[test]
  fn blobs_round_trip_and_are_idempotent() {
    let (_dir, store) = store();
    let id = store.put_blob(b"hello").unwrap();
    assert_eq!(
      id,
      "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    let path = store.blob_path(&id);
    assert!(path.ends_with(format!("blobs/sha256/2c/{id}")));
    assert_eq!(fs::read(&path).unwrap(), b"hello");
    assert_eq!(store.put_blob(b"hello").unwrap(), id);
    assert_eq!(fs::read(&path).unwrap(), b"hello");
    // No temp files are left behind.
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    // Storing again repairs a damaged blob.
    fs::write(&path, b"hellO").unwrap();
    assert_eq!(store.put_blob(b"hello").unwrap(), id);
    assert_eq!(fs::read(&path).unwrap(), b"hello");
  }

  #[test]
  fn version_id_is_stable_and_covers_every_field() {
    let (_dir, store) = store();
    let base = manifest(
      &store,
      "app",
      "index.js",
      &[("index.js", INDEX), ("lib/greet.js", GREET)],
    );
    let id = base.version_id();
    assert!(is_sha256_hex(&id));
    assert_eq!(base.clone().version_id(), id);

    // Module order does not matter; JSON object key order does not either.
    let mut reordered = base.clone();
    reordered.modules.reverse();
    assert_eq!(reordered.version_id(), id);
    let mut a = base.clone();
    a.vars.insert(
      "O".into(),
      serde_json::json!({"x": 1, "y": {"b": 2, "a": 3}}),
    );
    let mut b = base.clone();
    let mut inner = serde_json::Map::new();
    inner.insert("a".into(), 3.into());
    inner.insert("b".into(), 2.into());
    let mut outer = serde_json::Map::new();
    outer.insert("y".into(), inner.into());
    outer.insert("x".into(), 1.into());
    b.vars.insert("O".into(), outer.into());
    assert_eq!(a.version_id(), b.version_id());

    let changes: Vec<fn(&mut Manifest)> = vec![
      |m| m.worker = "app2".into(),
      |m| m.main_module = "lib/greet.js".into(),
      |m| m.modules[0].sha256 = "0".repeat(64),
      |m| m.modules[0].size += 1,
      |m| m.modules[1].name = "lib/greet.mjs".into(),
      |m| {
        m.vars.insert("WHO".into(), "x".into());
      },
      |m| m.limits.cpu_ms = Some(10),
      |m| m.limits.response_body_bytes = Some(10),
      |m| m.compatibility_date = Some("2025-01-01".into()),
    ];
    let mut seen = BTreeSet::from([id.clone()]);
    for change in changes {
      let mut m = base.clone();
      change(&mut m);
      assert!(seen.insert(m.version_id()), "{m:?} kept an id");
    }

    // The stored file is the canonical JSON, so it hashes to its name, and
    // it reads back equal to the sorted manifest.
    let stored = store.put_version(&reordered).unwrap();
    assert_eq!(stored, id);
    let path = store.version_path("app", &id);
    assert_eq!(sha256_hex(&fs::read(&path).unwrap()), id);
    assert_eq!(store.version("app", &id).unwrap(), base);
    assert_eq!(store.put_version(&base).unwrap(), id);
    assert_eq!(store.versions("app").unwrap(), vec![id.clone()]);
    assert_eq!(store.versions("other").unwrap(), Vec::<String>::new());
  }

  #[test]
  fn put_version_validates() {
    let (_dir, store) = store();
    let good = manifest(
      &store,
      "app",
      "index.js",
      &[("index.js", INDEX), ("lib/greet.js", GREET)],
    );
    store.put_version(&good).unwrap();

    let mut missing = good.clone();
    missing.modules[1].sha256 = sha256_hex(b"never stored");
    let err = store.put_version(&missing).unwrap_err();
    assert!(matches!(err, StoreError::MissingBlob { .. }), "{err}");
    assert!(err.to_string().contains("lib/greet.js"), "{err}");

    let mut size = good.clone();
    size.modules[0].size += 1;
    let err = store.put_version(&size).unwrap_err();
    assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");

    let mut no_main = good.clone();
    no_main.main_module = "main.js".into();
    let err = store.put_version(&no_main).unwrap_err();
    assert!(err.to_string().contains("main module \"main.js\""), "{err}");

    for name in ["", "App", "a.b", "a/b", "..", &"a".repeat(64)] {
      let mut bad = good.clone();
      bad.worker = name.to_string();
      let err = store.put_version(&bad).unwrap_err();
      assert!(
        matches!(err, StoreError::InvalidWorkerName(_)),
        "{name:?}: {err}"
      );
    }
    let mut ok = good.clone();
    ok.worker = format!("a-b_9{}", "x".repeat(58));
    store.put_version(&ok).unwrap();

    for name in [
      "../x.js",
      "/abs.js",
      "a//b.js",
      "./a.js",
      "a\\b.js",
      "a/./b.js",
      "a\0.js",
      "style.css",
    ] {
      let mut bad = good.clone();
      bad.modules[1].name = name.to_string();
      let err = store.put_version(&bad).unwrap_err();
      assert!(
        matches!(err, StoreError::InvalidModuleName(_)),
        "{name:?}: {err}"
      );
    }

    let mut twice = good.clone();
    twice.modules.push(good.modules[0].clone());
    assert!(store
      .put_version(&twice)
      .unwrap_err()
      .to_string()
      .contains("twice"));

    let mut zero = good.clone();
    zero.limits.cpu_ms = Some(0);
    assert!(store
      .put_version(&zero)
      .unwrap_err()
      .to_string()
      .contains("cpu_ms"));

    // Only the good versions were written.
    assert_eq!(store.versions("app").unwrap().len(), 1);
  }

  #[test]
  fn load_runs_the_version() {
    let (_dir, store) = store();
    let mut m = manifest(
      &store,
      "app",
      "index.js",
      &[("index.js", INDEX), ("lib/greet.js", GREET)],
    );
    m.vars.insert("WHO".into(), "edge".into());
    m.vars.insert("N".into(), serde_json::json!({"n": 7}));
    m.limits = LimitsSpec {
      cpu_ms: Some(200),
      memory_mb: Some(64),
      ..LimitsSpec::default()
    };
    let id = store.put_version(&m).unwrap();
    let (bundle, config) = store.load("app", &id).unwrap();
    assert_eq!(bundle.main_module(), "index.js");
    assert_eq!(config.name(), "app");
    assert_eq!(config.limits_ref().cpu_limit(), Duration::from_millis(200));
    assert_eq!(config.limits_ref().memory_bytes(), 64 << 20);
    assert_eq!(
      config.limits_ref().wall_limit(),
      isola_runtime::Limits::default().wall_limit()
    );
    assert_eq!(run(bundle, config), "hello edge 7");

    let err = store.load("app", &"0".repeat(64)).unwrap_err();
    assert!(matches!(err, StoreError::VersionNotFound { .. }), "{err}");
    let err = store.load("app", "../../x").unwrap_err();
    assert!(matches!(err, StoreError::InvalidVersionId(_)), "{err}");
  }

  #[test]
  fn load_refuses_a_corrupt_blob() {
    let (_dir, store) = store();
    let m = manifest(
      &store,
      "app",
      "index.js",
      &[("index.js", INDEX), ("lib/greet.js", GREET)],
    );
    let id = store.put_version(&m).unwrap();
    let expected = sha256_hex(GREET.as_bytes());
    let bad = GREET.replace("hello", "HACKED");
    fs::write(store.blob_path(&expected), &bad).unwrap();

    let err = store.load("app", &id).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::CorruptBlob { .. }), "{text}");
    assert!(text.contains("lib/greet.js"), "{text}");
    assert!(text.contains(&expected), "{text}");
    assert!(text.contains(&sha256_hex(bad.as_bytes())), "{text}");

    // A damaged manifest is refused too.
    let path = store.version_path("app", &id);
    let json = fs::read_to_string(&path)
      .unwrap()
      .replace("index.js", "lib/greet.js");
    fs::write(&path, json).unwrap();
    let err = store.version("app", &id).unwrap_err();
    assert!(matches!(err, StoreError::CorruptManifest { .. }), "{err}");
  }

  #[test]
  fn import_dir_picks_up_nested_modules() {
    let (dir, store) = store();
    let src = dir.path().join("worker");
    for (path, text) in [
      ("index.js", INDEX),
      ("lib/greet.js", GREET),
      ("lib/deep/page.html", "<p>hi</p>"),
      ("README.md", "docs"),
      ("style.css", "p {}"),
      (".hidden.js", "x"),
      (".git/config.js", "x"),
      ("node_modules/dep/index.js", "x"),
      ("lib/node_modules/dep.js", "x"),
    ] {
      let path = src.join(path);
      fs::create_dir_all(path.parent().unwrap()).unwrap();
      fs::write(path, text).unwrap();
    }
    let vars = BTreeMap::from([
      ("WHO".to_string(), serde_json::json!("disk")),
      ("N".to_string(), serde_json::json!({"n": 1})),
    ]);
    let id = store
      .import_dir(
        "disk",
        &src.join("index.js"),
        vars.clone(),
        LimitsSpec::default(),
      )
      .unwrap();
    let manifest = store.version("disk", &id).unwrap();
    let names: Vec<_> = manifest.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["index.js", "lib/deep/page.html", "lib/greet.js"]);
    assert_eq!(manifest.main_module, "index.js");
    assert_eq!(manifest.vars, vars);

    // Importing unchanged files gives the same version.
    let again = store
      .import_dir("disk", &src.join("index.js"), vars, LimitsSpec::default())
      .unwrap();
    assert_eq!(again, id);

    let (bundle, config) = store.load("disk", &id).unwrap();
    assert_eq!(run(bundle, config), "hello disk 1");

    let err = store
      .import_dir(
        "disk",
        &src.join("missing.js"),
        BTreeMap::new(),
        LimitsSpec::default(),
      )
      .unwrap_err();
    assert!(err.to_string().contains("missing.js"), "{err}");
  }

  /// Serves `id` of `app` once on a fresh runtime whose code caches live in
  /// `store`; the runtime's code cache counts (hits, misses, rejections).
  fn serve_once(store: &Store, id: &str) -> (u64, u64, u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
      .worker_threads(1)
      .enable_all()
      .build()
      .unwrap();
    rt.block_on(async {
      let runtime = isola_runtime::Runtime::new(
        isola_runtime::Config::default()
          .threads(1)
          .stock(0)
          .code_cache(
            // These modules are short; cache them anyway.
            isola_runtime::CodeCacheConfig::default()
              .min_source_bytes(0)
              .store(std::sync::Arc::new(store.clone())),
          ),
      )
      .unwrap();
      let (store, id) = (store.clone(), id.to_string());
      let key = isola_runtime::WorkerKey::new("app", id.as_str());
      // Loaded before its request, as an edge loads a version it deploys.
      let (bundle, config) = store.load("app", &id).expect("the version loads");
      runtime.preload(&key, bundle, config).await.unwrap();
      let source = move || Ok(store.load("app", &id).expect("the version loads"));
      let response = runtime
        .fetch(&key, source, isola_runtime::empty_request("http://x.test/"))
        .await
        .unwrap();
      let body = response.into_body().collect_bytes().await.unwrap();
      assert_eq!(&body[..], b"hello edge 7");
      // A preloaded worker makes its new caches once its thread is quiet;
      // the store then gets them on the cache's own thread.
      let start = std::time::Instant::now();
      while runtime.stats().code_cache.modules < 2 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(10)).await;
      }
      let stats = runtime.stats().code_cache;
      (stats.hits, stats.misses, stats.rejections)
    })
  }

  fn code_cache_files(store: &Store) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let engine = store
      .root
      .join("code-cache")
      .join(CodeCacheKey::current_engine());
    for dir in fs::read_dir(engine).into_iter().flatten().flatten() {
      for file in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
        // Not the temp files of a write under way.
        if !file.file_name().to_string_lossy().starts_with('.') {
          files.push(file.path());
        }
      }
    }
    files.sort();
    files
  }

  #[test]
  fn code_caches_are_kept_next_to_the_modules_and_survive_garbage() {
    let (_dir, store) = store();
    let mut m = manifest(
      &store,
      "app",
      "index.js",
      &[("index.js", INDEX), ("lib/greet.js", GREET)],
    );
    m.vars.insert("WHO".into(), "edge".into());
    m.vars.insert("N".into(), serde_json::json!({"n": 7}));
    let id = store.put_version(&m).unwrap();

    assert_eq!(serve_once(&store, &id), (0, 2, 0));
    let wait_for_files = |n: usize| {
      let start = std::time::Instant::now();
      while code_cache_files(&store).len() < n && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
      }
      code_cache_files(&store)
    };
    let files = wait_for_files(2);
    // Named by the modules' sha256, as their blobs are.
    let mut names: Vec<String> = files
      .iter()
      .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
      .collect();
    names.sort();
    let mut blobs: Vec<String> = m.modules.iter().map(|r| r.sha256.clone()).collect();
    blobs.sort();
    assert_eq!(names, blobs);

    // A restarted edge compiles from them.
    assert_eq!(serve_once(&store, &id), (2, 0, 0));

    // Garbage in their place: the worker still runs, compiled from source,
    // and the caches are written again.
    for f in &files {
      fs::write(f, b"not a code cache").unwrap();
    }
    assert_eq!(serve_once(&store, &id), (0, 2, 2));
    let start = std::time::Instant::now();
    while files
      .iter()
      .any(|f| fs::read(f).unwrap() == b"not a code cache")
      && start.elapsed() < Duration::from_secs(20)
    {
      std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(serve_once(&store, &id), (2, 0, 0));

    // Caches of another V8 go when the edge starts.
    let old = store.root.join("code-cache").join("v8-0.0.0").join("ab");
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join("x"), b"old").unwrap();
    store.prune_code_caches(CodeCacheKey::current_engine());
    assert!(!store.root.join("code-cache").join("v8-0.0.0").exists());
    assert_eq!(code_cache_files(&store).len(), 2);
  }
}
