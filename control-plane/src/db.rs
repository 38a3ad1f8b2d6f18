//! The control plane's store: one SQLite file holding accounts, uploaded
//! versions (content-addressed module blobs plus immutable manifests),
//! deployments, routes, encrypted secrets, edges and usage.
//!
//! Every change edges must see (deploy, rollback, route, secret) takes the
//! next `revision` in the same transaction, so a revision always names one
//! consistent [`DesiredState`]. WAL with `synchronous=FULL`: a write is on
//! disk when its call returns, which usage acks rely on.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use isola_proto::manifest::Manifest;
use isola_proto::manifest::ModuleRef;
use isola_proto::msg::DesiredState;
use isola_proto::msg::Revision;
use isola_proto::msg::Route;
use isola_proto::msg::Split;
use isola_proto::msg::Usage;
use isola_proto::msg::UsageBatch;
use isola_proto::msg::VersionBundle;
use isola_proto::msg::WorkerDeployment;
use isola_proto::names::edge_worker_name;
use isola_proto::names::split_edge_worker_name;
use isola_proto::routes::RouteError;
use isola_proto::routes::RouteTable;
use rand::RngCore as _;
use rusqlite::params;
use rusqlite::Connection;
use rusqlite::OptionalExtension as _;
use rusqlite::Transaction;
use rusqlite::TransactionBehavior;
use serde::Deserialize;
use serde::Serialize;
use sha2::Digest as _;

use crate::secrets::Cipher;

/// Schema changes, applied in order, each once; `PRAGMA user_version` counts
/// those applied. Append only: never edit a released entry.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL);
INSERT INTO meta (key, value) VALUES ('revision', 0);
CREATE TABLE accounts (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
CREATE TABLE tokens (
  sha256 TEXT PRIMARY KEY,
  account TEXT NOT NULL REFERENCES accounts (name),
  admin INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL
);
CREATE TABLE workers (
  account TEXT NOT NULL REFERENCES accounts (name),
  name TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (account, name)
);
CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, bytes BLOB NOT NULL);
CREATE TABLE versions (
  id TEXT PRIMARY KEY,
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  hash TEXT NOT NULL,
  manifest BLOB NOT NULL,
  created_at INTEGER NOT NULL,
  FOREIGN KEY (account, worker) REFERENCES workers (account, name)
);
CREATE INDEX versions_by_worker ON versions (account, worker);
CREATE INDEX versions_by_hash ON versions (hash);
CREATE TABLE deployments (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  versions TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  rolled_back INTEGER NOT NULL DEFAULT 0,
  FOREIGN KEY (account, worker) REFERENCES workers (account, name)
);
CREATE INDEX deployments_by_worker ON deployments (account, worker, id);
CREATE TABLE routes (
  pattern TEXT PRIMARY KEY,
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  FOREIGN KEY (account, worker) REFERENCES workers (account, name)
);
CREATE TABLE secrets (
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  key TEXT NOT NULL,
  nonce BLOB NOT NULL,
  ciphertext BLOB NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (account, worker, key),
  FOREIGN KEY (account, worker) REFERENCES workers (account, name)
);
CREATE TABLE edges (
  name TEXT PRIMARY KEY,
  created_at INTEGER NOT NULL,
  enrolled_at INTEGER NOT NULL,
  revision INTEGER,
  last_seen INTEGER,
  errors TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE usage_batches (id TEXT PRIMARY KEY, edge TEXT NOT NULL, stored_at INTEGER NOT NULL);
CREATE TABLE usage (
  batch_id TEXT NOT NULL REFERENCES usage_batches (id),
  edge TEXT NOT NULL,
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  version_hash TEXT NOT NULL,
  window_start INTEGER NOT NULL,
  window_end INTEGER NOT NULL,
  requests INTEGER NOT NULL,
  errors INTEGER NOT NULL,
  cpu_us INTEGER NOT NULL,
  wall_us INTEGER NOT NULL,
  ingress_bytes INTEGER NOT NULL,
  egress_bytes INTEGER NOT NULL,
  subrequests INTEGER NOT NULL
);
CREATE INDEX usage_by_worker ON usage (account, worker, window_end);
"#];

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("database error: {0}")]
  Sqlite(#[from] rusqlite::Error),
  #[error(
    "the database is from a newer isola-control (schema version {found}; this release knows up \
     to {known}); run the newer release, or restore a backup made by this one"
  )]
  TooNew { found: i64, known: usize },
  #[error("{0}")]
  NotFound(String),
  #[error("{0}")]
  Conflict(String),
  #[error("{0}")]
  Invalid(String),
  #[error(transparent)]
  Secret(#[from] crate::secrets::Error),
  #[error("corrupt database: {0}")]
  Corrupt(String),
}

/// Unix seconds, written as RFC 3339 in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
  pub fn now() -> Self {
    let secs = SystemTime::now()
      .duration_since(UNIX_EPOCH)
      .map_or(0, |d| d.as_secs());
    Self(i64::try_from(secs).unwrap_or(i64::MAX))
  }
}

impl Serialize for Timestamp {
  fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
    let formatted = time::OffsetDateTime::from_unix_timestamp(self.0)
      .ok()
      .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
          .ok()
      });
    match formatted {
      Some(text) => s.serialize_str(&text),
      None => s.serialize_i64(self.0),
    }
  }
}

/// A new API token: `isola_` and 64 random hex digits. Only its sha256 is
/// stored, so a copy of the database grants nothing.
fn new_token() -> String {
  let mut bytes = [0u8; 32];
  rand::thread_rng().fill_bytes(&mut bytes);
  format!("isola_{}", hex::encode(bytes))
}

fn token_hash(token: &str) -> String {
  hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Who an API token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
  pub account: String,
  pub admin: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct VersionInfo {
  pub id: String,
  pub hash: String,
  pub worker: String,
  pub created_at: Timestamp,
  pub main_module: String,
  pub modules: Vec<ModuleRef>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerInfo {
  pub name: String,
  pub created_at: Timestamp,
  pub active_deployment: Option<Deployment>,
}

/// A version of a deployment as stored: `[{"id", "percentage"}]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSplit {
  id: String,
  percentage: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeployedVersion {
  pub id: String,
  pub percentage: u8,
  pub hash: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Deployment {
  pub id: i64,
  pub worker: String,
  pub versions: Vec<DeployedVersion>,
  pub created_at: Timestamp,
  pub rolled_back: bool,
  pub active: bool,
  /// The revision the change took, on answers to a change.
  #[serde(skip_serializing_if = "Option::is_none")]
  pub revision: Option<Revision>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteInfo {
  pub pattern: String,
  pub worker: String,
  pub created_at: Timestamp,
}

#[derive(Clone, Debug, Serialize)]
pub struct SecretInfo {
  pub key: String,
  pub updated_at: Timestamp,
}

/// [`Usage`] as the API shows it: times in ms (stored and summed in µs,
/// so sums are exact).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageTotals {
  pub requests: u64,
  pub errors: u64,
  pub cpu_ms: f64,
  pub wall_ms: f64,
  pub egress_bytes: u64,
  pub ingress_bytes: u64,
  pub subrequests: u64,
}

impl From<&Usage> for UsageTotals {
  fn from(u: &Usage) -> Self {
    Self {
      requests: u.requests,
      errors: u.errors,
      cpu_ms: u.cpu_us as f64 / 1000.0,
      wall_ms: u.wall_us as f64 / 1000.0,
      egress_bytes: u.egress_bytes,
      ingress_bytes: u.ingress_bytes,
      subrequests: u.subrequests,
    }
  }
}

#[derive(Clone, Debug, Serialize)]
pub struct VersionUsage {
  pub hash: String,
  #[serde(flatten)]
  pub totals: UsageTotals,
}

#[derive(Clone, Debug, Serialize)]
pub struct UsageSummary {
  pub worker: String,
  pub since: Option<Timestamp>,
  pub until: Option<Timestamp>,
  #[serde(flatten)]
  pub totals: UsageTotals,
  pub by_version: Vec<VersionUsage>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EdgeInfo {
  pub name: String,
  pub enrolled_at: Timestamp,
  /// Last revision the edge reported applied; none before it first did.
  pub revision: Option<Revision>,
  pub last_seen: Option<Timestamp>,
  /// Workers whose last pushed version failed to start on the edge.
  pub errors: Vec<String>,
}

/// The store. Cheap to clone; one connection behind a mutex, since SQLite
/// writes one transaction at a time anyway. Calls block: async callers use
/// `spawn_blocking`.
#[derive(Clone)]
pub struct Db {
  inner: Arc<Inner>,
}

struct Inner {
  conn: Mutex<Connection>,
  cipher: Cipher,
}

impl std::fmt::Debug for Db {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("Db(..)")
  }
}

fn not_found_worker(worker: &str) -> Error {
  Error::NotFound(format!(
    "no worker named {worker:?} in this account; upload a version to create it \
     (POST /v1/workers/{worker}/versions)"
  ))
}

fn to_i64(n: u64) -> i64 {
  i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
  u64::try_from(n).unwrap_or(0)
}

impl Db {
  /// Opens (or creates) the database at `path` and applies pending
  /// migrations. `cipher` encrypts secret values.
  pub fn open(path: &Path, cipher: Cipher) -> Result<Self> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn)?;
    Ok(Self {
      inner: Arc::new(Inner {
        conn: Mutex::new(conn),
        cipher,
      }),
    })
  }

  fn conn(&self) -> MutexGuard<'_, Connection> {
    self
      .inner
      .conn
      .lock()
      .unwrap_or_else(PoisonError::into_inner)
  }

  /// Runs `f` in an IMMEDIATE transaction (the write lock is taken up front,
  /// so another process writing cannot deadlock an upgrade) and commits if
  /// it succeeds.
  fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    let mut conn = self.conn();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
  }

  #[cfg(test)]
  pub fn revision(&self) -> Result<Revision> {
    revision(&self.conn())
  }

  // Accounts and tokens.

  /// Creates `account` and returns its first token.
  pub fn create_account(&self, account: &str, admin: bool) -> Result<String> {
    self.write(|tx| {
      let now = Timestamp::now().0;
      let inserted = tx.execute(
        "INSERT OR IGNORE INTO accounts (name, created_at) VALUES (?1, ?2)",
        params![account, now],
      )?;
      if inserted == 0 {
        return Err(Error::Conflict(format!(
          "account {account:?} already exists; pick another name"
        )));
      }
      insert_token(tx, account, admin)
    })
  }

  /// A new token for `account`.
  pub fn issue_token(&self, account: &str, admin: bool) -> Result<String> {
    self.write(|tx| insert_token(tx, account, admin))
  }

  /// The owner of `token`, if it is one.
  pub fn authenticate(&self, token: &str) -> Result<Option<Caller>> {
    let conn = self.conn();
    let caller = conn
      .query_row(
        "SELECT account, admin FROM tokens WHERE sha256 = ?1",
        [token_hash(token)],
        |row| {
          Ok(Caller {
            account: row.get(0)?,
            admin: row.get(1)?,
          })
        },
      )
      .optional()?;
    Ok(caller)
  }

  // Workers and versions.

  /// Stores a checked upload as a new version of `account`'s `worker`,
  /// creating the worker on its first upload. `modules` are in the
  /// manifest's order.
  pub fn insert_version(
    &self,
    account: &str,
    worker: &str,
    manifest: &Manifest,
    modules: &[(String, Bytes)],
  ) -> Result<VersionInfo> {
    let manifest_json = manifest.canonical_json();
    let stored: Manifest = serde_json::from_slice(&manifest_json)
      .map_err(|e| Error::Corrupt(format!("canonical manifest does not parse: {e}")))?;
    if stored.modules.len() != modules.len()
      || stored
        .modules
        .iter()
        .zip(modules)
        .any(|(m, (name, bytes))| m.name != *name || m.size != bytes.len() as u64)
    {
      return Err(Error::Invalid(
        "the modules do not match the manifest".to_string(),
      ));
    }
    let created_at = Timestamp::now();
    let id = uuid::Uuid::new_v4().to_string();
    let hash = manifest.version_id();
    self.write(|tx| {
      tx.execute(
        "INSERT OR IGNORE INTO workers (account, name, created_at) VALUES (?1, ?2, ?3)",
        params![account, worker, created_at.0],
      )?;
      for (module, (_, bytes)) in stored.modules.iter().zip(modules) {
        let have: bool = tx.query_row(
          "SELECT EXISTS (SELECT 1 FROM blobs WHERE sha256 = ?1)",
          [&module.sha256],
          |row| row.get(0),
        )?;
        if !have {
          tx.execute(
            "INSERT INTO blobs (sha256, bytes) VALUES (?1, ?2)",
            params![module.sha256, bytes.as_ref()],
          )?;
        }
      }
      tx.execute(
        "INSERT INTO versions (id, account, worker, hash, manifest, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, account, worker, hash, manifest_json, created_at.0],
      )?;
      Ok(())
    })?;
    Ok(VersionInfo {
      id,
      hash,
      worker: worker.to_string(),
      created_at,
      main_module: stored.main_module,
      modules: stored.modules,
    })
  }

  /// `account`'s workers by name, with their active deployments.
  pub fn workers(&self, account: &str) -> Result<Vec<WorkerInfo>> {
    let conn = self.conn();
    let mut stmt =
      conn.prepare("SELECT name, created_at FROM workers WHERE account = ?1 ORDER BY name")?;
    let rows = stmt
      .query_map([account], |row| Ok((row.get::<_, String>(0)?, row.get(1)?)))?
      .collect::<rusqlite::Result<Vec<_>>>()?;
    rows
      .into_iter()
      .map(|(name, created_at)| {
        let active_deployment = active_deployment(&conn, account, &name)?;
        Ok(WorkerInfo {
          name,
          created_at: Timestamp(created_at),
          active_deployment,
        })
      })
      .collect()
  }

  /// Versions of a worker, newest first.
  pub fn versions(&self, account: &str, worker: &str) -> Result<Vec<VersionInfo>> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn.prepare(
      "SELECT id, hash, manifest, created_at FROM versions
       WHERE account = ?1 AND worker = ?2 ORDER BY created_at DESC, rowid DESC",
    )?;
    let rows = stmt
      .query_map([account, worker], |row| {
        Ok((
          row.get::<_, String>(0)?,
          row.get::<_, String>(1)?,
          row.get::<_, Vec<u8>>(2)?,
          row.get::<_, i64>(3)?,
        ))
      })?
      .collect::<rusqlite::Result<Vec<_>>>()?;
    rows
      .into_iter()
      .map(|(id, hash, manifest, created_at)| {
        let manifest = parse_manifest(&hash, &manifest)?;
        Ok(VersionInfo {
          id,
          hash,
          worker: worker.to_string(),
          created_at: Timestamp(created_at),
          main_module: manifest.main_module,
          modules: manifest.modules,
        })
      })
      .collect()
  }

  // Deployments.

  /// Makes `versions` (id, percentage) the worker's active deployment. The
  /// split itself is checked by the caller; here, that each version belongs
  /// to this worker.
  pub fn deploy(
    &self,
    account: &str,
    worker: &str,
    versions: &[(String, u8)],
  ) -> Result<Deployment> {
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let mut deployed = Vec::with_capacity(versions.len());
      for (id, percentage) in versions {
        let hash: Option<String> = tx
          .query_row(
            "SELECT hash FROM versions WHERE id = ?1 AND account = ?2 AND worker = ?3",
            params![id, account, worker],
            |row| row.get(0),
          )
          .optional()?;
        let Some(hash) = hash else {
          return Err(Error::NotFound(format!(
            "worker {worker:?} has no version {id:?}; GET /v1/workers/{worker}/versions lists \
             its versions"
          )));
        };
        deployed.push(DeployedVersion {
          id: id.clone(),
          percentage: *percentage,
          hash,
        });
      }
      let stored: Vec<StoredSplit> = deployed
        .iter()
        .map(|v| StoredSplit {
          id: v.id.clone(),
          percentage: v.percentage,
        })
        .collect();
      let created_at = Timestamp::now();
      tx.execute(
        "INSERT INTO deployments (account, worker, versions, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![
          account,
          worker,
          serde_json::to_string(&stored).expect("splits serialise"),
          created_at.0
        ],
      )?;
      let id = tx.last_insert_rowid();
      let revision = bump_revision(tx)?;
      Ok(Deployment {
        id,
        worker: worker.to_string(),
        versions: deployed,
        created_at,
        rolled_back: false,
        active: true,
        revision: Some(revision),
      })
    })
  }

  /// A worker's deployments, newest first.
  pub fn deployments(&self, account: &str, worker: &str) -> Result<Vec<Deployment>> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn.prepare(
      "SELECT id, versions, created_at, rolled_back FROM deployments
       WHERE account = ?1 AND worker = ?2 ORDER BY id DESC",
    )?;
    let rows = stmt
      .query_map([account, worker], deployment_row)?
      .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut active_seen = false;
    rows
      .into_iter()
      .map(|row| {
        // Newest first: the first not rolled back is the active one.
        let active = !active_seen && !row.3;
        active_seen |= active;
        load_deployment(&conn, worker, row, active)
      })
      .collect()
  }

  /// Marks the active deployment rolled back, so the newest earlier one not
  /// rolled back serves again; returns that one.
  pub fn rollback(&self, account: &str, worker: &str) -> Result<Deployment> {
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let Some(current) = active_deployment(tx, account, worker)? else {
        return Err(Error::Conflict(format!(
          "worker {worker:?} has no active deployment to roll back; deploy a version first"
        )));
      };
      let previous = tx
        .query_row(
          "SELECT id, versions, created_at, rolled_back FROM deployments
           WHERE account = ?1 AND worker = ?2 AND rolled_back = 0 AND id < ?3
           ORDER BY id DESC LIMIT 1",
          params![account, worker, current.id],
          deployment_row,
        )
        .optional()?;
      let Some(previous) = previous else {
        return Err(Error::Conflict(format!(
          "worker {worker:?} has no earlier deployment to roll back to (deployment {} is its \
           first); deploy the version you want instead",
          current.id
        )));
      };
      tx.execute(
        "UPDATE deployments SET rolled_back = 1 WHERE id = ?1",
        [current.id],
      )?;
      let revision = bump_revision(tx)?;
      let mut deployment = load_deployment(tx, worker, previous, true)?;
      deployment.revision = Some(revision);
      Ok(deployment)
    })
  }

  // Routes.

  /// Routes `pattern` to `account`'s `worker`. Patterns are global: one
  /// taken by any account (or matching the same requests as one) conflicts.
  pub fn add_route(
    &self,
    account: &str,
    pattern: &str,
    worker: &str,
  ) -> Result<(RouteInfo, Revision)> {
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let owner: Option<(String, String)> = tx
        .query_row(
          "SELECT account, worker FROM routes WHERE pattern = ?1",
          [pattern],
          |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
      if let Some((owner, to)) = owner {
        return Err(Error::Conflict(if owner == account {
          format!(
            "route {pattern:?} already exists and goes to worker {to:?}; delete it first \
             (DELETE /v1/routes?pattern=...)"
          )
        } else {
          format!("route {pattern:?} is taken by another account; pick another host or path")
        }));
      }
      let mut stmt = tx.prepare("SELECT pattern FROM routes ORDER BY created_at, pattern")?;
      let mut all = stmt
        .query_map([], |row| Ok((row.get::<_, String>(0)?, ())))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
      all.push((pattern.to_string(), ()));
      match RouteTable::new(all) {
        Ok(_) => {}
        Err(e @ RouteError::Invalid { .. }) => return Err(Error::Invalid(e.to_string())),
        Err(e @ RouteError::Duplicate { .. }) => return Err(Error::Conflict(e.to_string())),
      }
      let created_at = Timestamp::now();
      tx.execute(
        "INSERT INTO routes (pattern, account, worker, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![pattern, account, worker, created_at.0],
      )?;
      let revision = bump_revision(tx)?;
      Ok((
        RouteInfo {
          pattern: pattern.to_string(),
          worker: worker.to_string(),
          created_at,
        },
        revision,
      ))
    })
  }

  pub fn routes(&self, account: &str) -> Result<Vec<RouteInfo>> {
    let conn = self.conn();
    let mut stmt = conn.prepare(
      "SELECT pattern, worker, created_at FROM routes WHERE account = ?1 ORDER BY pattern",
    )?;
    let routes = stmt
      .query_map([account], |row| {
        Ok(RouteInfo {
          pattern: row.get(0)?,
          worker: row.get(1)?,
          created_at: Timestamp(row.get(2)?),
        })
      })?
      .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(routes)
  }

  pub fn delete_route(&self, account: &str, pattern: &str) -> Result<Revision> {
    self.write(|tx| {
      let deleted = tx.execute(
        "DELETE FROM routes WHERE pattern = ?1 AND account = ?2",
        [pattern, account],
      )?;
      if deleted == 0 {
        return Err(Error::NotFound(format!(
          "no route {pattern:?} in this account; GET /v1/routes lists them"
        )));
      }
      bump_revision(tx)
    })
  }

  // Secrets.

  /// Sets secret `key` of a worker; returns whether it is new.
  pub fn put_secret(
    &self,
    account: &str,
    worker: &str,
    key: &str,
    value: &str,
  ) -> Result<(bool, Revision)> {
    let (nonce, ciphertext) = self
      .inner
      .cipher
      .seal(account, worker, key, value.as_bytes());
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let existed: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM secrets WHERE account = ?1 AND worker = ?2 AND key = ?3)",
        [account, worker, key],
        |row| row.get(0),
      )?;
      tx.execute(
        "INSERT INTO secrets (account, worker, key, nonce, ciphertext, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (account, worker, key) DO UPDATE
         SET nonce = excluded.nonce, ciphertext = excluded.ciphertext,
             updated_at = excluded.updated_at",
        params![
          account,
          worker,
          key,
          &nonce[..],
          ciphertext,
          Timestamp::now().0
        ],
      )?;
      Ok((!existed, bump_revision(tx)?))
    })
  }

  /// The names of a worker's secrets (never their values).
  pub fn secrets(&self, account: &str, worker: &str) -> Result<Vec<SecretInfo>> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn.prepare(
      "SELECT key, updated_at FROM secrets WHERE account = ?1 AND worker = ?2 ORDER BY key",
    )?;
    let secrets = stmt
      .query_map([account, worker], |row| {
        Ok(SecretInfo {
          key: row.get(0)?,
          updated_at: Timestamp(row.get(1)?),
        })
      })?
      .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(secrets)
  }

  pub fn delete_secret(&self, account: &str, worker: &str, key: &str) -> Result<Revision> {
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let deleted = tx.execute(
        "DELETE FROM secrets WHERE account = ?1 AND worker = ?2 AND key = ?3",
        [account, worker, key],
      )?;
      if deleted == 0 {
        return Err(Error::NotFound(format!(
          "worker {worker:?} has no secret {key:?}; GET /v1/workers/{worker}/secrets lists them"
        )));
      }
      bump_revision(tx)
    })
  }

  // Usage.

  /// Sums a worker's usage over windows ending in `[since, until)`.
  pub fn usage(
    &self,
    account: &str,
    worker: &str,
    since: Option<i64>,
    until: Option<i64>,
  ) -> Result<UsageSummary> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn.prepare(
      "SELECT version_hash, SUM(requests), SUM(errors), SUM(cpu_us), SUM(wall_us),
              SUM(egress_bytes), SUM(ingress_bytes), SUM(subrequests)
       FROM usage
       WHERE account = ?1 AND worker = ?2 AND window_end >= ?3 AND window_end < ?4
       GROUP BY version_hash ORDER BY version_hash",
    )?;
    let by_version = stmt
      .query_map(
        params![
          account,
          worker,
          since.unwrap_or(i64::MIN),
          until.unwrap_or(i64::MAX)
        ],
        |row| {
          Ok((
            row.get::<_, String>(0)?,
            Usage {
              requests: to_u64(row.get(1)?),
              errors: to_u64(row.get(2)?),
              cpu_us: to_u64(row.get(3)?),
              wall_us: to_u64(row.get(4)?),
              egress_bytes: to_u64(row.get(5)?),
              ingress_bytes: to_u64(row.get(6)?),
              subrequests: to_u64(row.get(7)?),
            },
          ))
        },
      )?
      .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut totals = Usage::default();
    for (_, usage) in &by_version {
      totals += usage;
    }
    let by_version = by_version
      .into_iter()
      .map(|(hash, usage)| VersionUsage {
        hash,
        totals: UsageTotals::from(&usage),
      })
      .collect();
    Ok(UsageSummary {
      worker: worker.to_string(),
      since: since.map(Timestamp),
      until: until.map(Timestamp),
      totals: UsageTotals::from(&totals),
      by_version,
    })
  }

  // Edges.

  /// Records edge `name`; returns whether it is new (else it is re-enrolled).
  pub fn enroll_edge(&self, name: &str) -> Result<bool> {
    self.write(|tx| {
      let now = Timestamp::now().0;
      let existed: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM edges WHERE name = ?1)",
        [name],
        |row| row.get(0),
      )?;
      tx.execute(
        "INSERT INTO edges (name, created_at, enrolled_at) VALUES (?1, ?2, ?2)
         ON CONFLICT (name) DO UPDATE SET enrolled_at = excluded.enrolled_at",
        params![name, now],
      )?;
      Ok(!existed)
    })
  }

  /// The current revision and every edge, by name.
  pub fn edges(&self) -> Result<(Revision, Vec<EdgeInfo>)> {
    let conn = self.conn();
    let mut stmt = conn
      .prepare("SELECT name, enrolled_at, revision, last_seen, errors FROM edges ORDER BY name")?;
    let edges = stmt
      .query_map([], |row| {
        Ok((
          row.get::<_, String>(0)?,
          row.get::<_, i64>(1)?,
          row.get::<_, Option<i64>>(2)?,
          row.get::<_, Option<i64>>(3)?,
          row.get::<_, String>(4)?,
        ))
      })?
      .collect::<rusqlite::Result<Vec<_>>>()?
      .into_iter()
      .map(|(name, enrolled_at, revision, last_seen, errors)| {
        let errors = serde_json::from_str(&errors)
          .map_err(|e| Error::Corrupt(format!("errors of edge {name}: {e}")))?;
        Ok(EdgeInfo {
          name,
          enrolled_at: Timestamp(enrolled_at),
          revision: revision.map(to_u64),
          last_seen: last_seen.map(Timestamp),
          errors,
        })
      })
      .collect::<Result<Vec<_>>>()?;
    Ok((revision(&conn)?, edges))
  }

  // What the QUIC layer needs.

  /// Everything edges must serve as of the current revision: each worker's
  /// active deployment with its decrypted secrets, and every route.
  pub fn desired_state(&self) -> Result<DesiredState> {
    let mut conn = self.conn();
    // One read transaction, so the revision matches what is read with it.
    let tx = conn.transaction()?;
    let revision = revision(&tx)?;
    let mut stmt = tx.prepare("SELECT account, name FROM workers ORDER BY account, name")?;
    let names = stmt
      .query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
      })?
      .collect::<rusqlite::Result<Vec<_>>>()?;
    drop(stmt);
    let mut workers = Vec::new();
    for (account, worker) in names {
      let Some(deployment) = active_deployment(&tx, &account, &worker)? else {
        continue;
      };
      let mut stmt = tx
        .prepare("SELECT key, nonce, ciphertext FROM secrets WHERE account = ?1 AND worker = ?2")?;
      let rows = stmt
        .query_map([&account, &worker], |row| {
          Ok((
            row.get::<_, String>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, Vec<u8>>(2)?,
          ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
      let mut secrets = std::collections::BTreeMap::new();
      for (key, nonce, ciphertext) in rows {
        let plain = self
          .inner
          .cipher
          .open(&account, &worker, &key, &nonce, &ciphertext)?;
        let value = String::from_utf8(plain)
          .map_err(|_| Error::Corrupt(format!("secret {account}/{worker}/{key} is not UTF-8")))?;
        secrets.insert(key, value);
      }
      workers.push(WorkerDeployment {
        name: edge_worker_name(&account, &worker),
        versions: deployment
          .versions
          .into_iter()
          .map(|v| Split {
            hash: v.hash,
            percentage: v.percentage,
          })
          .collect(),
        secrets,
      });
    }
    let mut stmt = tx.prepare("SELECT pattern, account, worker FROM routes ORDER BY pattern")?;
    let routes = stmt
      .query_map([], |row| {
        Ok(Route {
          pattern: row.get(0)?,
          worker: edge_worker_name(&row.get::<_, String>(1)?, &row.get::<_, String>(2)?),
        })
      })?
      .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(DesiredState {
      revision,
      workers,
      routes,
    })
  }

  /// The canonical manifest and module bytes (in manifest order) of the
  /// version with manifest hash `hash`.
  pub fn bundle(&self, hash: &str) -> Result<Option<VersionBundle>> {
    let conn = self.conn();
    let manifest: Option<Vec<u8>> = conn
      .query_row(
        "SELECT manifest FROM versions WHERE hash = ?1 LIMIT 1",
        [hash],
        |row| row.get(0),
      )
      .optional()?;
    let Some(manifest_json) = manifest else {
      return Ok(None);
    };
    let manifest = parse_manifest(hash, &manifest_json)?;
    let mut stmt = conn.prepare("SELECT bytes FROM blobs WHERE sha256 = ?1")?;
    let mut modules = Vec::with_capacity(manifest.modules.len());
    for module in &manifest.modules {
      let bytes: Option<Vec<u8>> = stmt
        .query_row([&module.sha256], |row| row.get(0))
        .optional()?;
      let bytes = bytes.ok_or_else(|| {
        Error::Corrupt(format!(
          "blob {} of module {} of version {hash} is missing",
          module.sha256, module.name
        ))
      })?;
      modules.push(serde_bytes::ByteBuf::from(bytes));
    }
    Ok(Some(VersionBundle {
      manifest: manifest_json,
      modules,
    }))
  }

  pub fn edge_exists(&self, name: &str) -> Result<bool> {
    let exists = self.conn().query_row(
      "SELECT EXISTS (SELECT 1 FROM edges WHERE name = ?1)",
      [name],
      |row| row.get(0),
    )?;
    Ok(exists)
  }

  /// Edge `name` reports serving `revision`; `errors` names workers whose
  /// new version did not start there.
  pub fn edge_applied(&self, name: &str, revision: u64, errors: &[String]) -> Result<()> {
    let errors = serde_json::to_string(errors).expect("strings serialise");
    let updated = self.conn().execute(
      "UPDATE edges SET revision = ?1, errors = ?2, last_seen = ?3 WHERE name = ?4",
      params![to_i64(revision), errors, Timestamp::now().0, name],
    )?;
    if updated == 0 {
      return Err(Error::NotFound(format!("no edge named {name:?}")));
    }
    Ok(())
  }

  /// Stores a usage batch from edge `edge`, once: returns `false` (storing
  /// nothing) if its id was stored before. Durable when it returns.
  pub fn store_usage(&self, edge: &str, batch: &UsageBatch) -> Result<bool> {
    let mut conn = self.conn();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let inserted = tx.execute(
      "INSERT OR IGNORE INTO usage_batches (id, edge, stored_at) VALUES (?1, ?2, ?3)",
      params![batch.id, edge, Timestamp::now().0],
    )?;
    if inserted == 0 {
      return Ok(false);
    }
    {
      let mut stmt = tx.prepare(
        "INSERT INTO usage (batch_id, edge, account, worker, version_hash, window_start,
           window_end, requests, errors, cpu_us, wall_us, ingress_bytes, egress_bytes, subrequests)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
      )?;
      for r in &batch.records {
        let Some((account, worker)) = split_edge_worker_name(&r.worker) else {
          tracing::warn!(edge, worker = %r.worker, "usage for a worker name that is no account_worker; dropped");
          continue;
        };
        stmt.execute(params![
          batch.id,
          edge,
          account,
          worker,
          r.version,
          to_i64(r.start),
          to_i64(r.end),
          to_i64(r.usage.requests),
          to_i64(r.usage.errors),
          to_i64(r.usage.cpu_us),
          to_i64(r.usage.wall_us),
          to_i64(r.usage.ingress_bytes),
          to_i64(r.usage.egress_bytes),
          to_i64(r.usage.subrequests),
        ])?;
      }
    }
    tx.commit()?;
    Ok(true)
  }
}

fn migrate(conn: &mut Connection) -> Result<()> {
  let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
  let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
  let known = MIGRATIONS.len();
  if version > known as i64 {
    return Err(Error::TooNew {
      found: version,
      known,
    });
  }
  for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
    tx.execute_batch(sql)?;
    tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
    tracing::info!(version = i + 1, "applied database migration");
  }
  tx.commit()?;
  Ok(())
}

fn revision(conn: &Connection) -> Result<Revision> {
  let value: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'revision'", [], |row| {
    row.get(0)
  })?;
  Ok(to_u64(value))
}

fn bump_revision(tx: &Transaction<'_>) -> Result<Revision> {
  let value: i64 = tx.query_row(
    "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
    [],
    |row| row.get(0),
  )?;
  Ok(to_u64(value))
}

fn insert_token(tx: &Transaction<'_>, account: &str, admin: bool) -> Result<String> {
  let token = new_token();
  tx.execute(
    "INSERT INTO tokens (sha256, account, admin, created_at) VALUES (?1, ?2, ?3, ?4)",
    params![token_hash(&token), account, admin, Timestamp::now().0],
  )?;
  Ok(token)
}

fn require_worker(conn: &Connection, account: &str, worker: &str) -> Result<()> {
  let exists: bool = conn.query_row(
    "SELECT EXISTS (SELECT 1 FROM workers WHERE account = ?1 AND name = ?2)",
    [account, worker],
    |row| row.get(0),
  )?;
  if exists {
    Ok(())
  } else {
    Err(not_found_worker(worker))
  }
}

fn parse_manifest(hash: &str, json: &[u8]) -> Result<Manifest> {
  serde_json::from_slice(json)
    .map_err(|e| Error::Corrupt(format!("manifest of version {hash} does not parse: {e}")))
}

/// (id, versions JSON, created_at, rolled_back)
type DeploymentRow = (i64, String, i64, bool);

fn deployment_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentRow> {
  Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn load_deployment(
  conn: &Connection,
  worker: &str,
  (id, versions, created_at, rolled_back): DeploymentRow,
  active: bool,
) -> Result<Deployment> {
  let stored: Vec<StoredSplit> = serde_json::from_str(&versions)
    .map_err(|e| Error::Corrupt(format!("versions of deployment {id}: {e}")))?;
  let mut stmt = conn.prepare_cached("SELECT hash FROM versions WHERE id = ?1")?;
  let versions = stored
    .into_iter()
    .map(|s| {
      let hash = stmt.query_row([&s.id], |row| row.get(0)).optional()?;
      let hash = hash
        .ok_or_else(|| Error::Corrupt(format!("deployment {id} names missing version {}", s.id)))?;
      Ok(DeployedVersion {
        id: s.id,
        percentage: s.percentage,
        hash,
      })
    })
    .collect::<Result<Vec<_>>>()?;
  Ok(Deployment {
    id,
    worker: worker.to_string(),
    versions,
    created_at: Timestamp(created_at),
    rolled_back,
    active,
    revision: None,
  })
}

/// The worker's latest deployment not rolled back.
fn active_deployment(conn: &Connection, account: &str, worker: &str) -> Result<Option<Deployment>> {
  let row = conn
    .query_row(
      "SELECT id, versions, created_at, rolled_back FROM deployments
       WHERE account = ?1 AND worker = ?2 AND rolled_back = 0 ORDER BY id DESC LIMIT 1",
      [account, worker],
      deployment_row,
    )
    .optional()?;
  row
    .map(|row| load_deployment(conn, worker, row, true))
    .transpose()
}

#[cfg(test)]
mod tests {
  use isola_proto::msg::UsageRecord;

  use super::*;
  use crate::secrets::generate_key;

  fn open(dir: &Path) -> Db {
    Db::open(&dir.join("control.db"), Cipher::new(&[7; 32])).unwrap()
  }

  fn upload(db: &Db, account: &str, worker: &str, src: &str) -> VersionInfo {
    let modules = vec![("worker.js".to_string(), Bytes::from(src.to_string()))];
    let manifest = Manifest {
      worker: edge_worker_name(account, worker),
      main_module: "worker.js".into(),
      modules: vec![ModuleRef {
        name: "worker.js".into(),
        sha256: isola_proto::manifest::sha256_hex(src.as_bytes()),
        size: src.len() as u64,
      }],
      vars: Default::default(),
      limits: Default::default(),
      compatibility_date: None,
    };
    db.insert_version(account, worker, &manifest, &modules)
      .unwrap()
  }

  #[test]
  fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    drop(db);
    // Opening again applies nothing and keeps the data.
    let db = open(dir.path());
    let version: i64 = db
      .conn()
      .query_row("PRAGMA user_version", [], |r| r.get(0))
      .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    assert!(matches!(
      db.create_account("acme", false),
      Err(Error::Conflict(_))
    ));
    let mode: String = db
      .conn()
      .query_row("PRAGMA journal_mode", [], |r| r.get(0))
      .unwrap();
    assert_eq!(mode, "wal");
    db.conn()
      .execute_batch(&format!("PRAGMA user_version = {}", MIGRATIONS.len() + 1))
      .unwrap();
    drop(db);
    let err = Db::open(&dir.path().join("control.db"), Cipher::new(&[7; 32])).unwrap_err();
    assert!(matches!(err, Error::TooNew { .. }), "{err}");
    assert!(err.to_string().contains("newer isola-control"), "{err}");
  }

  #[test]
  fn tokens_authenticate_their_account() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let admin = db.create_account("default", true).unwrap();
    assert!(admin.starts_with("isola_") && admin.len() == 6 + 64);
    let user = db.issue_token("default", false).unwrap();
    assert_eq!(
      db.authenticate(&admin).unwrap(),
      Some(Caller {
        account: "default".into(),
        admin: true
      })
    );
    assert!(!db.authenticate(&user).unwrap().unwrap().admin);
    assert_eq!(db.authenticate("isola_nope").unwrap(), None);
    // Only hashes are stored.
    let stored: String = db
      .conn()
      .query_row("SELECT group_concat(sha256) FROM tokens", [], |r| r.get(0))
      .unwrap();
    assert!(!stored.contains(&admin[6..]));
  }

  #[test]
  fn rollback_returns_to_the_previous_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    let v1 = upload(&db, "acme", "api", "1");
    let v2 = upload(&db, "acme", "api", "2");
    let v3 = upload(&db, "acme", "api", "3");
    assert!(matches!(
      db.rollback("acme", "api"),
      Err(Error::Conflict(_))
    ));
    let d1 = db.deploy("acme", "api", &[(v1.id.clone(), 100)]).unwrap();
    let err = db.rollback("acme", "api").unwrap_err();
    assert!(
      matches!(&err, Error::Conflict(m) if m.contains("no earlier deployment")),
      "{err}"
    );
    let d2 = db
      .deploy("acme", "api", &[(v2.id.clone(), 90), (v1.id.clone(), 10)])
      .unwrap();
    let d3 = db.deploy("acme", "api", &[(v3.id.clone(), 100)]).unwrap();
    assert!(d3.revision > d2.revision);

    let back = db.rollback("acme", "api").unwrap();
    assert_eq!(back.id, d2.id);
    assert_eq!(back.versions[0].hash, v2.hash);
    assert!(back.revision > d3.revision);
    let state = db.desired_state().unwrap();
    assert_eq!(state.revision, back.revision.unwrap());
    assert_eq!(
      state.workers[0].versions,
      [
        Split {
          hash: v2.hash.clone(),
          percentage: 90
        },
        Split {
          hash: v1.hash.clone(),
          percentage: 10
        }
      ]
    );
    let back = db.rollback("acme", "api").unwrap();
    assert_eq!(back.id, d1.id);
    assert!(matches!(
      db.rollback("acme", "api"),
      Err(Error::Conflict(_))
    ));

    let list = db.deployments("acme", "api").unwrap();
    let flags: Vec<(i64, bool, bool)> = list
      .iter()
      .map(|d| (d.id, d.active, d.rolled_back))
      .collect();
    assert_eq!(
      flags,
      [
        (d3.id, false, true),
        (d2.id, false, true),
        (d1.id, true, false)
      ]
    );
    // A new deployment is active again, whatever was rolled back.
    let d4 = db.deploy("acme", "api", &[(v3.id.clone(), 100)]).unwrap();
    assert_eq!(
      db.workers("acme").unwrap()[0]
        .active_deployment
        .as_ref()
        .unwrap()
        .id,
      d4.id
    );
  }

  #[test]
  fn deployments_take_versions_of_their_own_worker_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    db.create_account("evil", false).unwrap();
    let api = upload(&db, "acme", "api", "1");
    upload(&db, "acme", "web", "1");
    upload(&db, "evil", "api", "1");
    assert!(matches!(
      db.deploy("acme", "web", &[(api.id.clone(), 100)]),
      Err(Error::NotFound(_))
    ));
    assert!(matches!(
      db.deploy("evil", "api", &[(api.id.clone(), 100)]),
      Err(Error::NotFound(_))
    ));
    assert!(matches!(
      db.versions("evil", "web"),
      Err(Error::NotFound(_))
    ));
    assert_eq!(db.revision().unwrap(), 0);
  }

  #[test]
  fn desired_state_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("control.db"), Cipher::new(&generate_key())).unwrap();
    db.create_account("acme", false).unwrap();
    let v = upload(&db, "acme", "api", "export default {}");
    upload(&db, "acme", "idle", "x");
    assert_eq!(db.desired_state().unwrap(), DesiredState::default());

    db.deploy("acme", "api", &[(v.id.clone(), 100)]).unwrap();
    db.put_secret("acme", "api", "TOKEN", "s3cret").unwrap();
    let (created, _) = db.put_secret("acme", "api", "TOKEN", "s3cret2").unwrap();
    assert!(!created);
    db.add_route("acme", "api.test/*", "api").unwrap();
    db.add_route("acme", "idle.test/*", "idle").unwrap();
    let state = db.desired_state().unwrap();
    assert_eq!(state.revision, 5);
    assert_eq!(
      state.workers.len(),
      1,
      "workers without deployment are left out"
    );
    assert_eq!(state.workers[0].name, "acme_api");
    assert_eq!(state.workers[0].secrets["TOKEN"], "s3cret2");
    assert_eq!(
      state.routes,
      [
        Route {
          pattern: "api.test/*".into(),
          worker: "acme_api".into()
        },
        Route {
          pattern: "idle.test/*".into(),
          worker: "acme_idle".into()
        }
      ]
    );
    assert_eq!(
      db.secrets("acme", "api").unwrap()[0].key,
      "TOKEN".to_string()
    );
    db.delete_secret("acme", "api", "TOKEN").unwrap();
    assert!(matches!(
      db.delete_secret("acme", "api", "TOKEN"),
      Err(Error::NotFound(_))
    ));
    assert!(db.desired_state().unwrap().workers[0].secrets.is_empty());

    let bundle = db.bundle(&v.hash).unwrap().unwrap();
    let manifest: Manifest = serde_json::from_slice(&bundle.manifest).unwrap();
    assert_eq!(manifest.version_id(), v.hash);
    assert_eq!(bundle.modules[0].as_slice(), b"export default {}");
    assert!(db.bundle(&"0".repeat(64)).unwrap().is_none());
  }

  #[test]
  fn a_secret_moved_to_another_row_does_not_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    let v = upload(&db, "acme", "api", "1");
    db.deploy("acme", "api", &[(v.id, 100)]).unwrap();
    db.put_secret("acme", "api", "A", "a").unwrap();
    db.put_secret("acme", "api", "B", "b").unwrap();
    db.conn()
      .execute_batch(
        "UPDATE secrets SET (nonce, ciphertext) =
           (SELECT nonce, ciphertext FROM secrets WHERE key = 'A') WHERE key = 'B'",
      )
      .unwrap();
    let err = db.desired_state().unwrap_err();
    assert!(err.to_string().contains("acme/api/B"), "{err}");
  }

  #[test]
  fn routes_are_checked_and_global() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    db.create_account("evil", false).unwrap();
    upload(&db, "acme", "api", "1");
    upload(&db, "evil", "api", "1");
    db.add_route("acme", "api.test/*", "api").unwrap();
    let err = db.add_route("evil", "api.test/*", "api").unwrap_err();
    assert!(
      matches!(&err, Error::Conflict(m) if m.contains("another account")),
      "{err}"
    );
    let err = db.add_route("evil", "API.test/*", "api").unwrap_err();
    assert!(
      matches!(&err, Error::Conflict(m) if m.contains("duplicate route")),
      "{err}"
    );
    let err = db.add_route("acme", "api.test", "api").unwrap_err();
    assert!(
      matches!(&err, Error::Invalid(m) if m.contains("has no path")),
      "{err}"
    );
    assert!(matches!(
      db.add_route("acme", "x.test/*", "nope"),
      Err(Error::NotFound(_))
    ));
    assert!(matches!(
      db.delete_route("evil", "api.test/*"),
      Err(Error::NotFound(_))
    ));
    assert_eq!(db.routes("evil").unwrap().len(), 0);
    db.delete_route("acme", "api.test/*").unwrap();
    db.add_route("evil", "api.test/*", "api").unwrap();
  }

  #[test]
  fn a_usage_batch_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    db.enroll_edge("edge-1").unwrap();
    let record = |end, hash: &str| UsageRecord {
      worker: "acme_api".into(),
      version: hash.into(),
      start: end - 1,
      end,
      usage: Usage {
        requests: 10,
        errors: 1,
        cpu_us: 1500,
        wall_us: 20_000,
        ingress_bytes: 100,
        egress_bytes: 1000,
        subrequests: 2,
      },
    };
    let batch = UsageBatch {
      id: "b1".into(),
      records: vec![record(100, "h1"), record(200, "h2"), record(300, "h1")],
    };
    assert!(db.store_usage("edge-1", &batch).unwrap());
    assert!(!db.store_usage("edge-1", &batch).unwrap());
    let usage = db.usage("acme", "api", None, None).unwrap();
    assert_eq!(usage.totals.requests, 30);
    assert_eq!(usage.totals.cpu_ms, 4.5);
    assert_eq!(usage.by_version.len(), 2);
    assert_eq!(usage.by_version[0].hash, "h1");
    assert_eq!(usage.by_version[0].totals.requests, 20);
    let usage = db.usage("acme", "api", Some(200), Some(300)).unwrap();
    assert_eq!(usage.totals.requests, 10);
    assert_eq!(usage.by_version[0].hash, "h2");
    assert!(matches!(
      db.usage("acme", "web", None, None),
      Err(Error::NotFound(_))
    ));
  }

  #[test]
  fn edges_report_what_they_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    assert!(!db.edge_exists("edge-1").unwrap());
    assert!(db.enroll_edge("edge-1").unwrap());
    assert!(!db.enroll_edge("edge-1").unwrap());
    assert!(db.edge_exists("edge-1").unwrap());
    assert!(db.edge_applied("nope", 1, &[]).is_err());
    db.edge_applied("edge-1", 3, &["acme_api".into()]).unwrap();
    let (revision, edges) = db.edges().unwrap();
    assert_eq!(revision, 0);
    assert_eq!(edges[0].revision, Some(3));
    assert_eq!(edges[0].errors, ["acme_api"]);
    assert!(edges[0].last_seen.is_some());
  }
}
