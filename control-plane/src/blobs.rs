//! Module blobs: the bytes of uploaded modules, content-addressed by their
//! sha256, in files under the data directory (the default) or in
//! S3-compatible storage (`--blobs s3://BUCKET/PREFIX`, through the
//! `object_store` crate). Both lay a blob out as `ROOT/ab/cdef…` (the first
//! two hex digits, then the other 62), so a store moves to another with a
//! plain copy (`aws s3 sync DATA_DIR/blobs s3://BUCKET/PREFIX`).
//!
//! An upload writes its blobs before its version row commits: a crash in
//! between leaves a blob no version names, never a version whose blob is
//! missing. Writes replace, so uploading a module again repairs its blob.
//! Every read re-checks the sha256, so bytes changed or cut short at rest
//! are an error naming the blob and the store, never wrong code on edges.
//!
//! Blobs stored by releases that kept module bytes in SQLite (the `blobs`
//! table) are moved into the store when `serve` starts
//! ([`Blobs::adopt_legacy`]): each is written, then its row deleted, so an
//! interrupted move only repeats work on the next start. Reads never look
//! in the database.

use std::fmt;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use isola_proto::manifest::is_sha256_hex;
use isola_proto::manifest::sha256_hex;
use isola_proto::msg::VersionBundle;
use object_store::aws::AmazonS3;
use object_store::aws::AmazonS3Builder;
use object_store::aws::AmazonS3ConfigKey;
use object_store::ObjectStoreExt as _;

use crate::db;
use crate::db::blocking;
use crate::db::Db;

/// What `--blobs` and `[storage] blobs` accept, for error messages.
const FORMS: &str = "use a path, file:///PATH or s3://BUCKET/PREFIX";

/// Where blobs live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
  /// A folder (relative paths are relative to the working directory).
  Files(PathBuf),
  /// A bucket and a key prefix (no leading or trailing `/`; may be empty).
  /// Endpoint, region and credentials come from the usual AWS variables.
  S3 { bucket: String, prefix: String },
}

impl Location {
  /// The default: `blobs/` in the data directory.
  pub fn default_in(data_dir: &Path) -> Self {
    Self::Files(data_dir.join("blobs"))
  }
}

impl FromStr for Location {
  type Err = String;

  /// A path, `file:///PATH` or `s3://BUCKET/PREFIX`; the error says what is
  /// wrong and which forms work.
  fn from_str(value: &str) -> Result<Self, String> {
    if value.is_empty() {
      return Err(format!("is empty; {FORMS}"));
    }
    let Some((scheme, rest)) = value.split_once("://") else {
      return Ok(Self::Files(PathBuf::from(value)));
    };
    match scheme {
      "file" if rest.starts_with('/') => Ok(Self::Files(PathBuf::from(rest))),
      "file" => Err(format!(
        "a file URL needs an absolute path, as in file:///var/lib/isola/blobs; or give the \
         path itself ({rest})"
      )),
      "s3" => {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket)?;
        if prefix.contains(['?', '#']) || prefix.split('/').any(|s| s == "." || s == "..") {
          return Err(format!(
            "the prefix {prefix:?} holds '?', '#', '.' or '..'; use plain names separated \
             by '/', as in s3://{bucket}/isola/blobs"
          ));
        }
        Ok(Self::S3 {
          bucket: bucket.to_string(),
          prefix: prefix.trim_matches('/').to_string(),
        })
      }
      other => Err(format!("unknown scheme {other:?}; {FORMS}")),
    }
  }
}

/// S3's bucket naming rules, so a typo shows at start with the rule broken.
fn check_bucket(bucket: &str) -> Result<(), String> {
  let ok = (3..=63).contains(&bucket.len())
    && bucket
      .bytes()
      .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
    && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
  if ok {
    Ok(())
  } else {
    Err(format!(
      "{bucket:?} is not a bucket name (3 to 63 characters of a-z, 0-9, '-' and '.', starting \
       and ending with a letter or digit); use s3://BUCKET/PREFIX"
    ))
  }
}

impl fmt::Display for Location {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      Self::Files(path) => write!(f, "{}", path.display()),
      Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
      Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
    }
  }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a blob could not be stored or read. Operators read these in the log;
/// API clients get an opaque internal error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("blob {sha256} is missing from the blob store {store}")]
  Missing { sha256: String, store: String },
  #[error("blob {sha256} in the blob store {store} is corrupt: its bytes hash to {actual}")]
  Corrupt {
    sha256: String,
    store: String,
    actual: String,
  },
  /// Bytes handed to [`Blobs::put`] under another hash's key.
  #[error("refused to store bytes hashing to {actual} as blob {sha256}")]
  Mismatch { sha256: String, actual: String },
  /// A key that is not 64 lowercase hex digits (never a path).
  #[error("{0:?} is not a blob key (64 lowercase hex digits)")]
  Key(String),
  #[error("cannot {action} {path}")]
  Io {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
  },
  #[error("the blob store {store} failed to {action} {key}")]
  Remote {
    store: String,
    action: &'static str,
    key: String,
    #[source]
    source: Box<object_store::Error>,
  },
  #[error(
    "cannot use the blob store {store} (check AWS_ENDPOINT_URL, AWS_REGION, the credentials \
     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that the bucket exists)"
  )]
  Open {
    store: String,
    #[source]
    source: Box<object_store::Error>,
  },
  #[error("cannot read module {module} ({sha256}) of version {version}")]
  Module {
    version: String,
    module: String,
    sha256: String,
    #[source]
    source: Box<Error>,
  },
  #[error(transparent)]
  Db(#[from] db::Error),
}

/// The blob store. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
  inner: Arc<Inner>,
}

struct Inner {
  location: Location,
  shown: String,
  backend: Backend,
}

enum Backend {
  Files(PathBuf),
  S3 {
    store: AmazonS3,
    prefix: object_store::path::Path,
  },
}

impl fmt::Debug for Blobs {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "Blobs({})", self.inner.shown)
  }
}

/// `AmazonS3Builder::from_env`, except that an empty variable counts as
/// unset: a Kubernetes Secret may leave `AWS_ENDPOINT_URL` empty for AWS
/// itself. Reads `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`), `AWS_REGION` (or
/// `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP` and the crate's other `AWS_*` keys.
fn s3_builder_from_env() -> AmazonS3Builder {
  std::env::vars_os()
    .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
    .filter(|(k, v)| k.starts_with("AWS_") && !v.is_empty())
    .filter_map(|(k, v)| Some((k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>().ok()?, v)))
    .fold(AmazonS3Builder::new(), |b, (k, v)| b.with_config(k, v))
}

/// How often and how long an S3 request is retried. Shorter than the
/// crate's default (10 tries within 3 minutes): an edge waiting for a
/// bundle should rather hear "not applied" and get it with the next
/// revision or connection.
fn retry() -> object_store::RetryConfig {
  object_store::RetryConfig {
    max_retries: 3,
    retry_timeout: Duration::from_secs(20),
    ..Default::default()
  }
}

impl Blobs {
  /// Opens the store at `location`. A folder is created (owner only: it
  /// holds users' code). An S3 store is asked for one key, so a wrong
  /// endpoint, bucket or key fails the start rather than the first upload.
  pub async fn open(location: Location) -> Result<Self> {
    let shown = location.to_string();
    let backend = match &location {
      Location::Files(root) => {
        std::fs::DirBuilder::new()
          .recursive(true)
          .mode(0o700)
          .create(root)
          .map_err(io_err("create the blob folder", root))?;
        Backend::Files(root.clone())
      }
      Location::S3 { bucket, prefix } => {
        let open_err = |source| Error::Open {
          store: shown.clone(),
          source: Box::new(source),
        };
        let store = s3_builder_from_env()
          .with_bucket_name(bucket)
          .with_retry(retry())
          .build()
          .map_err(open_err)?;
        let prefix = object_store::path::Path::from(prefix.as_str());
        // A key that never exists: "not found" proves the bucket answers
        // and the credentials may read it (S3 says "access denied" instead
        // without s3:ListBucket).
        match store.head(&prefix.clone().join(".isola-probe")).await {
          Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
          Err(e) => return Err(open_err(e)),
        }
        Backend::S3 { store, prefix }
      }
    };
    Ok(Self {
      inner: Arc::new(Inner {
        location,
        shown,
        backend,
      }),
    })
  }

  pub fn location(&self) -> &Location {
    &self.inner.location
  }

  /// Stores `bytes` as blob `sha256`, replacing any blob there (the same
  /// bytes, or a damaged copy). Refuses bytes that do not hash to `sha256`.
  pub async fn put(&self, sha256: &str, bytes: Bytes) -> Result<()> {
    check_key(sha256)?;
    let actual = sha256_hex(&bytes);
    if actual != sha256 {
      return Err(Error::Mismatch {
        sha256: sha256.to_string(),
        actual,
      });
    }
    match &self.inner.backend {
      Backend::Files(root) => {
        let path = file_path(root, sha256);
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
          .await
          .map_err(|e| Error::Io {
            action: "write a blob in",
            path: root.clone(),
            source: std::io::Error::other(e),
          })?
      }
      Backend::S3 { store, prefix } => {
        let key = object_key(prefix, sha256);
        store
          .put(&key, bytes.into())
          .await
          .map(drop)
          .map_err(|source| self.remote("write", &key, source))
      }
    }
  }

  /// Blob `sha256`, checked against its hash.
  pub async fn get(&self, sha256: &str) -> Result<Bytes> {
    check_key(sha256)?;
    let bytes = match &self.inner.backend {
      Backend::Files(root) => {
        let path = file_path(root, sha256);
        let read = tokio::task::spawn_blocking({
          let path = path.clone();
          move || std::fs::read(path)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match read {
          Ok(bytes) => Bytes::from(bytes),
          Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.missing(sha256)),
          Err(source) => {
            return Err(Error::Io {
              action: "read",
              path,
              source,
            })
          }
        }
      }
      Backend::S3 { store, prefix } => {
        let key = object_key(prefix, sha256);
        let got = match store.get(&key).await {
          Ok(got) => got,
          Err(object_store::Error::NotFound { .. }) => return Err(self.missing(sha256)),
          Err(source) => return Err(self.remote("read", &key, source)),
        };
        got
          .bytes()
          .await
          .map_err(|source| self.remote("read", &key, source))?
      }
    };
    let actual = sha256_hex(&bytes);
    if actual != sha256 {
      return Err(Error::Corrupt {
        sha256: sha256.to_string(),
        store: self.inner.shown.clone(),
        actual,
      });
    }
    Ok(bytes)
  }

  /// The canonical manifest and module bytes (in manifest order) of the
  /// version whose manifest hash is `hash`; `None` if no version has it.
  pub async fn bundle(&self, db: &Db, hash: &str) -> Result<Option<VersionBundle>> {
    let found = blocking({
      let (db, hash) = (db.clone(), hash.to_string());
      move || db.version_manifest(&hash)
    })
    .await?;
    let Some((manifest_json, manifest)) = found else {
      return Ok(None);
    };
    let mut modules = Vec::with_capacity(manifest.modules.len());
    for module in &manifest.modules {
      let bytes = self
        .get(&module.sha256)
        .await
        .map_err(|source| Error::Module {
          version: hash.to_string(),
          module: module.name.clone(),
          sha256: module.sha256.clone(),
          source: Box::new(source),
        })?;
      modules.push(serde_bytes::ByteBuf::from(Vec::from(bytes)));
    }
    Ok(Some(VersionBundle {
      manifest: manifest_json,
      modules,
    }))
  }

  /// Moves the blobs an older release kept in the database into this
  /// store (see the module docs), logging what it moved. A row whose bytes
  /// do not match its hash is logged and left where it is.
  pub async fn adopt_legacy(&self, db: &Db) -> Result<Adopted> {
    let keys = blocking({
      let db = db.clone();
      move || db.legacy_blob_keys()
    })
    .await?;
    let mut adopted = Adopted::default();
    for sha256 in keys {
      let row = blocking({
        let (db, sha256) = (db.clone(), sha256.clone());
        move || db.legacy_blob(&sha256)
      })
      .await?;
      let Some(bytes) = row else { continue };
      let actual = sha256_hex(&bytes);
      if actual != sha256 {
        tracing::error!(
          blob = %sha256,
          actual = %actual,
          "a module blob in the database is corrupt; left in the database. Upload the \
           versions that use it again to repair it"
        );
        adopted.corrupt += 1;
        continue;
      }
      adopted.bytes += bytes.len() as u64;
      self.put(&sha256, Bytes::from(bytes)).await?;
      blocking({
        let (db, sha256) = (db.clone(), sha256.clone());
        move || db.forget_legacy_blob(&sha256)
      })
      .await?;
      adopted.moved += 1;
    }
    if adopted.moved > 0 || adopted.corrupt > 0 {
      tracing::info!(
        moved = adopted.moved,
        bytes = adopted.bytes,
        corrupt = adopted.corrupt,
        store = %self.inner.shown,
        "moved module blobs from the database into the blob store"
      );
    }
    Ok(adopted)
  }

  fn missing(&self, sha256: &str) -> Error {
    Error::Missing {
      sha256: sha256.to_string(),
      store: self.inner.shown.clone(),
    }
  }

  fn remote(
    &self,
    action: &'static str,
    key: &object_store::path::Path,
    source: object_store::Error,
  ) -> Error {
    Error::Remote {
      store: self.inner.shown.clone(),
      action,
      key: key.to_string(),
      source: Box::new(source),
    }
  }
}

/// What [`Blobs::adopt_legacy`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
  pub moved: u64,
  pub bytes: u64,
  /// Rows left in the database because their bytes do not match their key.
  pub corrupt: u64,
}

fn check_key(sha256: &str) -> Result<()> {
  if is_sha256_hex(sha256) {
    Ok(())
  } else {
    Err(Error::Key(sha256.to_string()))
  }
}

fn file_path(root: &Path, sha256: &str) -> PathBuf {
  root.join(&sha256[..2]).join(&sha256[2..])
}

fn object_key(prefix: &object_store::path::Path, sha256: &str) -> object_store::path::Path {
  prefix.clone().join(&sha256[..2]).join(&sha256[2..])
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
  let path = path.to_path_buf();
  move |source| Error::Io {
    action,
    path,
    source,
  }
}

/// Writes `bytes` to `path` whole or not at all
/// ([`isola_io::fs::write_atomic`]), in owner-only folders.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
  isola_io::fs::write_atomic(path, bytes, 0o700).map_err(|e| Error::Io {
    action: e.action,
    path: e.path,
    source: e.source,
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  fn loc(s: &str) -> Result<Location, String> {
    s.parse()
  }

  #[test]
  fn locations_parse_and_bad_ones_say_how_to_fix_them() {
    assert_eq!(loc("blobs").unwrap(), Location::Files("blobs".into()));
    assert_eq!(
      loc("file:///var/lib/isola/blobs").unwrap(),
      Location::Files("/var/lib/isola/blobs".into())
    );
    let s3 = loc("s3://isola-fleet/prod/blobs/").unwrap();
    assert_eq!(
      s3,
      Location::S3 {
        bucket: "isola-fleet".into(),
        prefix: "prod/blobs".into()
      }
    );
    assert_eq!(s3.to_string(), "s3://isola-fleet/prod/blobs");
    assert_eq!(
      loc("s3://isola-fleet").unwrap().to_string(),
      "s3://isola-fleet"
    );
    let err = loc("s4://x").unwrap_err();
    assert_eq!(
      err,
      "unknown scheme \"s4\"; use a path, file:///PATH or s3://BUCKET/PREFIX"
    );
    assert!(loc("").unwrap_err().contains("is empty"));
    assert!(loc("file://relative")
      .unwrap_err()
      .contains("absolute path"));
    assert!(loc("s3://").unwrap_err().contains("not a bucket name"));
    assert!(loc("s3://My_Bucket/x")
      .unwrap_err()
      .contains("not a bucket name"));
    assert!(loc("s3://bucket/a/../b").unwrap_err().contains("'..'"));
  }

  async fn files(dir: &Path) -> Blobs {
    Blobs::open(Location::Files(dir.join("blobs")))
      .await
      .unwrap()
  }

  #[tokio::test]
  async fn the_file_store_writes_whole_files_and_reads_them_back_checked() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = files(dir.path()).await;
    let bytes = Bytes::from_static(b"export default {};\n");
    let sha = sha256_hex(&bytes);
    blobs.put(&sha, bytes.clone()).await.unwrap();
    // Laid out as ab/cdef…, owner-only, with no temporary file left.
    let path = dir.path().join("blobs").join(&sha[..2]).join(&sha[2..]);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("blobs")), 0o700);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
      .unwrap()
      .map(|e| e.unwrap().file_name())
      .collect();
    assert_eq!(names, [std::ffi::OsString::from(&sha[2..])]);
    assert_eq!(blobs.get(&sha).await.unwrap(), bytes);
    // Writing again is harmless; a store reopened reads the same.
    blobs.put(&sha, bytes.clone()).await.unwrap();
    assert_eq!(files(dir.path()).await.get(&sha).await.unwrap(), bytes);

    // Bytes that are not what the key says are refused before any write.
    let other = sha256_hex(b"other");
    let err = blobs.put(&other, bytes.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Mismatch { .. }), "{err}");
    assert!(!dir.path().join("blobs").join(&other[..2]).exists());
    // A key is never a path.
    let err = blobs.get("../../etc/passwd").await.unwrap_err();
    assert!(matches!(err, Error::Key(_)), "{err}");
  }

  #[tokio::test]
  async fn a_missing_or_corrupt_blob_is_an_error_naming_it_and_a_write_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = files(dir.path()).await;
    let bytes = Bytes::from_static(b"export default { fetch() {} };\n");
    let sha = sha256_hex(&bytes);
    let err = blobs.get(&sha).await.unwrap_err();
    assert!(matches!(err, Error::Missing { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&sha) && text.contains("blobs"), "{text}");

    blobs.put(&sha, bytes.clone()).await.unwrap();
    let path = dir.path().join("blobs").join(&sha[..2]).join(&sha[2..]);
    std::fs::write(&path, b"export default { fetch() { evil() } };\n").unwrap();
    let err = blobs.get(&sha).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&sha), "{err}");
    // Cut short is corrupt too.
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert!(matches!(
      blobs.get(&sha).await.unwrap_err(),
      Error::Corrupt { .. }
    ));
    // Uploading the module again repairs it.
    blobs.put(&sha, bytes.clone()).await.unwrap();
    assert_eq!(blobs.get(&sha).await.unwrap(), bytes);
  }

  #[tokio::test]
  async fn a_bundle_reads_its_modules_from_the_store_and_names_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db::testing::open(dir.path());
    let blobs = files(dir.path()).await;
    db.create_account("acme", false).unwrap();
    let src = "export default { fetch() { return new Response('hi'); } };\n";
    let sha = sha256_hex(src.as_bytes());
    blobs.put(&sha, Bytes::from(src)).await.unwrap();
    let v = crate::db::testing::upload(&db, "acme", "api", src);
    let bundle = blobs.bundle(&db, &v.hash).await.unwrap().unwrap();
    assert_eq!(bundle.modules, [serde_bytes::ByteBuf::from(src.as_bytes())]);
    assert!(blobs.bundle(&db, &"0".repeat(64)).await.unwrap().is_none());

    std::fs::remove_file(dir.path().join("blobs").join(&sha[..2]).join(&sha[2..])).unwrap();
    let err = blobs.bundle(&db, &v.hash).await.unwrap_err();
    let text = crate::api::ErrorChain(&err).to_string();
    for part in [sha.as_str(), v.hash.as_str(), "worker.js", "blobs"] {
      assert!(text.contains(part), "{part} in {text}");
    }
  }

  #[tokio::test]
  async fn blobs_kept_in_the_database_move_into_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db::testing::open(dir.path());
    let blobs = files(dir.path()).await;
    db.create_account("acme", false).unwrap();
    let src = "export default { fetch() { return new Response('old'); } };\n";
    let v = crate::db::testing::upload(&db, "acme", "api", src);
    // As an older release stored it, plus a damaged row.
    let sha = sha256_hex(src.as_bytes());
    db.insert_legacy_blob(&sha, src.as_bytes()).unwrap();
    let bad = sha256_hex(b"something else");
    db.insert_legacy_blob(&bad, b"not that").unwrap();
    assert!(blobs.bundle(&db, &v.hash).await.is_err());

    let adopted = blobs.adopt_legacy(&db).await.unwrap();
    assert_eq!(
      adopted,
      Adopted {
        moved: 1,
        bytes: src.len() as u64,
        corrupt: 1
      }
    );
    let bundle = blobs.bundle(&db, &v.hash).await.unwrap().unwrap();
    assert_eq!(bundle.modules[0].as_ref(), src.as_bytes());
    assert_eq!(db.legacy_blob_keys().unwrap(), [bad]);
    // Again: nothing left to move; the damaged row stays.
    let again = blobs.adopt_legacy(&db).await.unwrap();
    assert_eq!((again.moved, again.corrupt), (0, 1));
  }
}
