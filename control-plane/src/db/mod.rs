//! The control plane's store: accounts, uploaded versions (immutable
//! manifests; module bytes are in `crate::blobs`), deployments, routes,
//! encrypted secrets, edges, usage, schedules, KV, queues and logs. One SQLite
//! file (the embedded default) or a PostgreSQL database, which several
//! control-plane replicas can share; the statements are the same
//! ([`sql`]).
//!
//! Every change edges must see (deploy, rollback, route, secret) takes the
//! next `revision` in the same transaction, so a revision always names one
//! consistent [`DesiredState`](isola_proto::msg::DesiredState). Writes are
//! one at a time on both: SQLite's IMMEDIATE transactions, and on
//! PostgreSQL a transaction-scoped advisory lock taken first, so replicas
//! see the same serial order of changes as one process. A write is durable
//! when its call returns (SQLite: WAL with `synchronous=FULL`), which usage
//! acks rely on.

mod accounts;
mod analytics;
mod audit;
mod billing;
mod deployments;
mod edges;
mod kv;
mod leases;
mod logs;
mod pg;
mod postgres;
mod queues;
mod routes;
mod schedules;
mod secrets;
pub mod sql;
mod state;
mod usage;
mod versions;

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use isola_proto::msg::Revision;
use rusqlite::Connection;
use rusqlite::TransactionBehavior;
use serde::Serialize;

use self::sql::Sql;

pub use self::accounts::Caller;
pub use self::audit::AuditEntry;
pub use self::audit::AuditQuery;
pub use self::deployments::DeployedVersion;
pub use self::deployments::Deployment;
pub use self::edges::EdgeInfo;
pub use self::kv::KvNamespace;
pub use self::logs::LogFilter;
pub use self::logs::LogPage;
pub use self::logs::Observability;
pub use self::queues::queue_key;
pub use self::queues::ConsumerSettings;
pub use self::queues::QueueInfo;
pub use self::queues::Settled;
pub use self::routes::RouteInfo;
pub use self::schedules::rfc3339_ms;
pub use self::schedules::ScheduleRun;
pub use self::secrets::SecretInfo;
pub use self::usage::UsageSummary;
pub use self::usage::VersionUsage;
pub use self::versions::LimitsDoc;
pub use self::versions::VersionDetail;
pub use self::versions::VersionInfo;
pub use self::versions::WorkerInfo;
use crate::secrets::Cipher;

/// Schema changes, applied in order, each once; `PRAGMA user_version` counts
/// those applied. Append only: never edit a released entry.
const MIGRATIONS: &[&str] = &[
  r#"
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
"#,
  // A version's message describes the upload; it is not in the manifest, so
  // it does not change version ids.
  "ALTER TABLE versions ADD COLUMN message TEXT;",
  // Cron schedules (not versioned) and the runs of their ticks; a run with
  // no outcome is in flight.
  r#"
CREATE TABLE schedules (
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  cron TEXT NOT NULL,
  position INTEGER NOT NULL,
  next_due INTEGER NOT NULL,
  PRIMARY KEY (account, worker, cron),
  FOREIGN KEY (account, worker) REFERENCES workers (account, name)
);
CREATE TABLE schedule_runs (
  id INTEGER PRIMARY KEY,
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  cron TEXT NOT NULL,
  scheduled_time INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  edge TEXT,
  started_at INTEGER NOT NULL,
  outcome TEXT,
  version TEXT,
  cpu_us INTEGER NOT NULL DEFAULT 0,
  wall_us INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX schedule_runs_by_worker ON schedule_runs (account, worker, id);
"#,
  // KV namespaces and values; keys compare as bytes (BINARY), which is
  // UTF-8 byte order.
  r#"
CREATE TABLE kv_namespaces (
  id TEXT PRIMARY KEY,
  account TEXT NOT NULL REFERENCES accounts (name),
  title TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  UNIQUE (account, title)
);
CREATE TABLE kv_values (
  namespace TEXT NOT NULL,
  key TEXT NOT NULL,
  value BLOB NOT NULL,
  metadata TEXT,
  expiration INTEGER,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX kv_values_by_expiration ON kv_values (expiration) WHERE expiration IS NOT NULL;
"#,
  // Queues, their consumer settings and counters, and their messages; a
  // message with a lease is in a batch a consumer has.
  r#"
CREATE TABLE queues (
  account TEXT NOT NULL REFERENCES accounts (name),
  name TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  consumer TEXT,
  max_batch_size INTEGER NOT NULL DEFAULT 10,
  max_batch_timeout INTEGER NOT NULL DEFAULT 5,
  max_retries INTEGER NOT NULL DEFAULT 3,
  dead_letter_queue TEXT,
  retry_delay INTEGER NOT NULL DEFAULT 0,
  delivered INTEGER NOT NULL DEFAULT 0,
  retried INTEGER NOT NULL DEFAULT 0,
  dead_lettered INTEGER NOT NULL DEFAULT 0,
  dropped INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (account, name)
);
CREATE TABLE queue_messages (
  id TEXT PRIMARY KEY,
  account TEXT NOT NULL,
  queue TEXT NOT NULL,
  body BLOB NOT NULL,
  content_type TEXT NOT NULL,
  sent_at INTEGER NOT NULL,
  visible_at INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  lease INTEGER
);
CREATE INDEX queue_messages_ready ON queue_messages (account, queue, lease, visible_at);
CREATE INDEX queue_messages_by_lease ON queue_messages (lease) WHERE lease IS NOT NULL;
"#,
  // Invoices of closed months, as issued; usage by account and stored time
  // for billing.
  r#"
CREATE TABLE invoices (
  account TEXT NOT NULL,
  month TEXT NOT NULL,
  issued_at INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (account, month)
);
CREATE INDEX usage_by_account ON usage (account, window_end);
"#,
  // Observability: per-worker settings, invocation logs (the tail message
  // as JSON, and the text `search` looks through), and per-minute
  // analytics sketches of each version.
  r#"
CREATE TABLE observability (
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  head_sampling_rate REAL NOT NULL,
  retention_days INTEGER NOT NULL,
  PRIMARY KEY (account, worker),
  FOREIGN KEY (account, worker) REFERENCES workers (account, name)
);
CREATE TABLE invocation_logs (
  id INTEGER PRIMARY KEY,
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  version TEXT NOT NULL,
  edge TEXT NOT NULL,
  timestamp INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  message TEXT NOT NULL,
  search TEXT NOT NULL
);
CREATE INDEX invocation_logs_by_worker ON invocation_logs (account, worker, timestamp, id);
CREATE INDEX invocation_logs_by_time ON invocation_logs (timestamp);
CREATE TABLE trace_minutes (
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  version TEXT NOT NULL,
  minute INTEGER NOT NULL,
  stats TEXT NOT NULL,
  PRIMARY KEY (account, worker, version, minute)
) WITHOUT ROWID;
CREATE INDEX trace_minutes_by_time ON trace_minutes (minute);
"#,
  // Guard rails: an account's limit ceilings when an admin set them, and
  // the audit log of every authenticated change.
  r#"
CREATE TABLE account_limits (
  account TEXT PRIMARY KEY REFERENCES accounts (name),
  limits TEXT NOT NULL
);
CREATE TABLE audit (
  id INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  account TEXT NOT NULL,
  admin INTEGER NOT NULL,
  token TEXT NOT NULL,
  method TEXT NOT NULL,
  path TEXT NOT NULL,
  status INTEGER NOT NULL,
  client TEXT
);
CREATE INDEX audit_by_time ON audit (at, id);
"#,
  // Storage operations in usage (0 in rows stored before they were
  // counted). Queue deliveries are counted by the control plane itself,
  // in rows whose batch id starts `queue-batch-` and whose edge is "".
  r#"
ALTER TABLE usage ADD COLUMN kv_reads INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN kv_writes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN kv_deletes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN kv_lists INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN queue_ops INTEGER NOT NULL DEFAULT 0;
"#,
  // Leases: which replica of a shared database does once-only work.
  "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at INTEGER NOT NULL);",
  // Invocation logs in chunks: one row per worker and minute of a stored
  // batch, its logs a JSON array (LZ4-compressed when `codec` is 1; see
  // `db::logs`). A row per log cost the control plane more CPU than the
  // edge spent serving the request. The logs kept so far move over, each
  // worker's minute a chunk.
  r#"
CREATE TABLE log_chunks (
  id INTEGER PRIMARY KEY,
  account TEXT NOT NULL,
  worker TEXT NOT NULL,
  first_ts INTEGER NOT NULL,
  last_ts INTEGER NOT NULL,
  logs INTEGER NOT NULL,
  codec INTEGER NOT NULL,
  body BLOB NOT NULL
);
CREATE INDEX log_chunks_by_worker ON log_chunks (account, worker, last_ts, id);
CREATE INDEX log_chunks_by_time ON log_chunks (last_ts);
INSERT INTO log_chunks (account, worker, first_ts, last_ts, logs, codec, body)
  SELECT account, worker, MIN(timestamp), MAX(timestamp), COUNT(*), 0,
    CAST(json_group_array(json_array(timestamp, outcome, version, edge, json(message), search))
      AS BLOB)
  FROM (SELECT * FROM invocation_logs ORDER BY id)
  GROUP BY account, worker, timestamp / 60000;
DROP TABLE invocation_logs;
"#,
];

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("database error: {0}")]
  Database(#[from] sql::Error),
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
  /// A [`blocking`] task panicked or was cancelled.
  #[error("a database task failed")]
  Task(#[source] tokio::task::JoinError),
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

/// In the OpenAPI document: an RFC 3339 string, as [`Serialize`] writes it.
impl utoipa::PartialSchema for Timestamp {
  fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::KnownFormat;
    use utoipa::openapi::schema::ObjectBuilder;
    use utoipa::openapi::schema::SchemaFormat;
    use utoipa::openapi::schema::Type;
    ObjectBuilder::new()
      .schema_type(Type::String)
      .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
      .into()
  }
}

impl utoipa::ToSchema for Timestamp {}

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

/// The store. Cheap to clone. SQLite: one connection behind a mutex, since
/// SQLite writes one transaction at a time anyway; PostgreSQL: a pool.
/// Calls block: async callers go through [`blocking`].
#[derive(Clone)]
pub struct Db {
  inner: Arc<Inner>,
}

struct Inner {
  backend: Backend,
  cipher: Cipher,
}

enum Backend {
  Sqlite(Mutex<Connection>),
  Postgres(pg::PgPool),
}

/// What another replica changed, as [`Db::follow`] hears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
  /// Anything may have changed (the listening connection was (re)made).
  Everything,
  /// The revision may have moved (a change, or the periodic check).
  Revision,
  /// Cron schedules.
  Schedules,
  /// Queues, consumers or messages.
  Queues,
}

/// The channel changes are announced on.
const NOTIFY_CHANNEL: &str = "isola_changes";

/// The advisory lock every PostgreSQL write transaction takes first ("isola"
/// in ASCII): one writer at a time across replicas, as on SQLite.
const PG_WRITE_LOCK: i64 = 0x0069_736f_6c61;

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

/// Runs blocking store work (every [`Db`] call) on tokio's blocking threads,
/// so async callers never stall their runtime on SQLite's lock or fsync. A
/// task that panics comes back as [`Error::Task`].
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
  T: Send + 'static,
  E: From<Error> + Send + 'static,
{
  tokio::task::spawn_blocking(f)
    .await
    .unwrap_or_else(|e| Err(Error::Task(e).into()))
}

impl Db {
  /// Opens (or creates) the SQLite database at `path` and applies pending
  /// migrations. `cipher` encrypts secret values.
  pub fn open(path: &Path, cipher: Cipher) -> Result<Self> {
    let sqlite = |e| Error::Database(sql::Error::Sqlite(e));
    let mut conn = Connection::open(path).map_err(sqlite)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sqlite)?;
    conn
      .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
      .map_err(sqlite)?;
    conn
      .pragma_update(None, "synchronous", "FULL")
      .map_err(sqlite)?;
    conn
      .pragma_update(None, "foreign_keys", "ON")
      .map_err(sqlite)?;
    // Up to 32 MiB of pages (SQLite's default is 2 MiB): a second of trace
    // events is one transaction (`observe::STORE_EVERY`) that dirties more
    // than 2 MiB, and a transaction that outgrows the cache spills pages to
    // the WAL before its commit, then writes them again.
    conn
      .pragma_update(None, "cache_size", -32_768)
      .map_err(sqlite)?;
    migrate(&mut conn).map_err(|e| match e {
      MigrateError::Sqlite(e) => sqlite(e),
      MigrateError::Db(e) => e,
    })?;
    Ok(Self {
      inner: Arc::new(Inner {
        backend: Backend::Sqlite(Mutex::new(conn)),
        cipher,
      }),
    })
  }

  /// Connects to PostgreSQL at `url` (`postgres://user:password@host/db`,
  /// or key=value settings) and applies pending migrations, under the
  /// write lock so replicas starting together apply each once.
  pub fn connect_postgres(url: &str, cipher: Cipher) -> Result<Self> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
      Error::Invalid(format!(
        "the PostgreSQL URL is not valid ({e}); write postgres://USER:PASSWORD@HOST:PORT/DATABASE"
      ))
    })?;
    if config.get_connect_timeout().is_none() {
      config.connect_timeout(Duration::from_secs(10));
    }
    let pool = pg::PgPool::new(config)?;
    // Unreachable or refused: say so now, not at the first request.
    drop(pool.get()?);
    let db = Self {
      inner: Arc::new(Inner {
        backend: Backend::Postgres(pool),
        cipher,
      }),
    };
    db.write(|tx| {
      tx.execute_batch("CREATE TABLE IF NOT EXISTS isola_schema (version BIGINT NOT NULL)")?;
      let version: Option<i64> = tx
        .query_row("SELECT version FROM isola_schema", (), |r| r.get(0))
        .map(Some)
        .or_else(|e| match e {
          sql::Error::NoRows => Ok(None),
          e => Err(e),
        })?;
      let version = version.unwrap_or(0);
      let known = postgres::MIGRATIONS.len();
      if version > known as i64 {
        return Err(Error::TooNew {
          found: version,
          known,
        });
      }
      for (i, step) in postgres::MIGRATIONS
        .iter()
        .enumerate()
        .skip(version as usize)
      {
        tx.execute_batch(step)?;
        tracing::info!(version = i + 1, "applied database migration");
      }
      tx.execute("DELETE FROM isola_schema", ())?;
      tx.execute(
        "INSERT INTO isola_schema (version) VALUES (?1)",
        [known as i64],
      )?;
      Ok(())
    })?;
    Ok(db)
  }

  /// Whether other processes (control-plane replicas) share this store.
  pub fn is_shared(&self) -> bool {
    matches!(self.inner.backend, Backend::Postgres { .. })
  }

  /// What other replicas change, for a replica to follow: `None` on SQLite,
  /// which no other process writes. A thread listens on its own
  /// connection (reconnecting, then announcing [`Changed::Everything`]) and
  /// announces [`Changed::Revision`] at least every second as well, in case
  /// a notification is lost.
  pub fn follow(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Changed>> {
    let Backend::Postgres(pool) = &self.inner.backend else {
      return None;
    };
    let config = pool.config().clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    pool.spawn(async move {
      let mut logged = false;
      while !tx.is_closed() {
        let (client, mut connection) = match config.connect(tokio_postgres::NoTls).await {
          Ok(c) => c,
          Err(e) => {
            if !logged {
              tracing::warn!(error = %e, "cannot listen for other replicas' changes; retrying");
              logged = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
          }
        };
        // The connection's messages, notifications among them, come from
        // polling it; the LISTEN below needs it polled too.
        let (note_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
          let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
          while let Some(message) = futures::StreamExt::next(&mut messages).await {
            match message {
              Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                let _ = note_tx.send(n.payload().to_string());
              }
              Ok(_) => {}
              Err(e) => {
                tracing::warn!(error = %e, "lost the connection that listens for other replicas' changes");
                break;
              }
            }
          }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await {
          tracing::warn!(error = %e, "cannot listen for other replicas' changes; retrying");
          driver.abort();
          tokio::time::sleep(Duration::from_secs(1)).await;
          continue;
        }
        logged = false;
        if tx.send(Changed::Everything).is_err() {
          break;
        }
        loop {
          let changed = match tokio::time::timeout(Duration::from_secs(1), notes.recv()).await {
            Ok(Some(payload)) => match payload.as_str() {
              "schedules" => Changed::Schedules,
              "queues" => Changed::Queues,
              _ => Changed::Revision,
            },
            // The periodic check.
            Err(_) => Changed::Revision,
            // The connection ended: listen again.
            Ok(None) => break,
          };
          if tx.send(changed).is_err() {
            driver.abort();
            return;
          }
        }
        drop(client);
      }
    });
    Some(rx)
  }

  /// The current revision.
  pub fn current_revision(&self) -> Result<Revision> {
    revision(&self.conn())
  }

  /// A connection for reads (and single-statement writes).
  fn conn(&self) -> Sql<'_> {
    match &self.inner.backend {
      Backend::Sqlite(conn) => Sql::sqlite(sql::SqliteRef::Guard(
        conn.lock().unwrap_or_else(PoisonError::into_inner),
      )),
      Backend::Postgres(pool) => match pool.get() {
        Ok(c) => Sql::postgres(sql::PgRef::Pooled(c)),
        Err(e) => Sql::failed(&e),
      },
    }
  }

  /// Runs `f` in a read transaction: what it reads is one snapshot.
  fn read<T>(&self, f: impl FnOnce(&Sql<'_>) -> Result<T>) -> Result<T> {
    self.transaction(false, f)
  }

  /// Runs `f` in a write transaction and commits if it succeeds. SQLite:
  /// IMMEDIATE (the write lock is taken up front, so another process
  /// writing cannot deadlock an upgrade); PostgreSQL: the advisory write
  /// lock first.
  fn write<T>(&self, f: impl FnOnce(&Sql<'_>) -> Result<T>) -> Result<T> {
    self.transaction(true, f)
  }

  fn transaction<T>(&self, write: bool, f: impl FnOnce(&Sql<'_>) -> Result<T>) -> Result<T> {
    match &self.inner.backend {
      Backend::Sqlite(conn) => {
        let mut conn: MutexGuard<'_, Connection> =
          conn.lock().unwrap_or_else(PoisonError::into_inner);
        let behavior = if write {
          TransactionBehavior::Immediate
        } else {
          TransactionBehavior::Deferred
        };
        let tx = conn
          .transaction_with_behavior(behavior)
          .map_err(sql::Error::from)?;
        let value = f(&Sql::sqlite(sql::SqliteRef::Borrowed(&tx)))?;
        tx.commit().map_err(sql::Error::from)?;
        Ok(value)
      }
      Backend::Postgres(pool) => {
        let mut conn = pool.get()?;
        let value = if write {
          conn.begin("")?;
          conn
            .execute(
              "SELECT pg_advisory_xact_lock($1)",
              vec![sql::Value::Int(PG_WRITE_LOCK)],
            )
            .map(drop)
        } else {
          conn.begin("ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
          Ok(())
        };
        let value = value
          .map_err(Error::from)
          .and_then(|()| f(&Sql::postgres(sql::PgRef::Borrowed(&mut conn))));
        conn.finish(value.is_ok())?;
        value
      }
    }
  }

  #[cfg(test)]
  pub fn revision(&self) -> Result<Revision> {
    self.current_revision()
  }
}

enum MigrateError {
  Sqlite(rusqlite::Error),
  Db(Error),
}

impl From<rusqlite::Error> for MigrateError {
  fn from(e: rusqlite::Error) -> Self {
    Self::Sqlite(e)
  }
}

fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
  let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
  let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
  let known = MIGRATIONS.len();
  if version > known as i64 {
    return Err(MigrateError::Db(Error::TooNew {
      found: version,
      known,
    }));
  }
  for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
    tx.execute_batch(sql)?;
    tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
    tracing::info!(version = i + 1, "applied database migration");
  }
  tx.commit()?;
  Ok(())
}

fn revision(conn: &Sql<'_>) -> Result<Revision> {
  let value: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'revision'", (), |row| {
    row.get(0)
  })?;
  Ok(to_u64(value))
}

fn bump_revision(tx: &Sql<'_>) -> Result<Revision> {
  let value: i64 = tx.query_row(
    "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
    (),
    |row| row.get(0),
  )?;
  notify(tx, "revision")?;
  Ok(to_u64(value))
}

/// Tells the other replicas, when the transaction commits, that `what`
/// changed (see [`Db::follow`]); nothing on SQLite.
fn notify(tx: &Sql<'_>, what: &str) -> Result<()> {
  if tx.dialect() == sql::Dialect::Postgres {
    tx.execute("SELECT pg_notify(?1, ?2)", [NOTIFY_CHANNEL, what])?;
  }
  Ok(())
}

impl Db {
  /// Whether `account` has a worker named `worker`.
  pub fn worker_exists(&self, account: &str, worker: &str) -> Result<bool> {
    Ok(require_worker(&self.conn(), account, worker).is_ok())
  }
}

fn require_worker(conn: &Sql<'_>, account: &str, worker: &str) -> Result<()> {
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

/// Stores for tests, on the backend the environment picks: with
/// `ISOLA_TEST_POSTGRES=postgres://USER@HOST:PORT` (a server where USER may
/// create databases) each store is a new PostgreSQL database there, so the
/// same tests run on both backends; else SQLite.
#[doc(hidden)]
pub mod test_support {
  use std::path::Path;

  use super::Db;
  use super::Result;
  use crate::secrets::Cipher;

  /// The server tests use, if any.
  pub fn postgres_server() -> Option<String> {
    std::env::var("ISOLA_TEST_POSTGRES")
      .ok()
      .filter(|s| !s.is_empty())
      .map(|s| s.trim_end_matches('/').to_string())
  }

  /// A new empty database on the test server: its URL.
  pub fn fresh_postgres() -> Option<String> {
    let server = postgres_server()?;
    let name = format!("isola_t_{}", uuid::Uuid::new_v4().simple());
    let config: tokio_postgres::Config = format!("{server}/postgres")
      .parse()
      .unwrap_or_else(|e| panic!("ISOLA_TEST_POSTGRES={server} is not a URL: {e}"));
    let admin = super::pg::PgPool::new(config).expect("a runtime for PostgreSQL");
    admin
      .get()
      .and_then(|mut c| c.batch(&format!("CREATE DATABASE {name}")))
      .unwrap_or_else(|e| {
        panic!("ISOLA_TEST_POSTGRES={server}: cannot create database {name}: {e}")
      });
    Some(format!("{server}/{name}"))
  }

  /// Runs `sql` on the store as it is, for tests that break it on
  /// purpose.
  pub fn execute_batch(db: &Db, sql: &str) -> Result<()> {
    Ok(db.conn().execute_batch(sql)?)
  }

  /// A store for a test: a new PostgreSQL database, or SQLite at `path`.
  pub fn open(path: &Path, cipher: Cipher) -> Result<Db> {
    match fresh_postgres() {
      Some(url) => Db::connect_postgres(&url, cipher),
      None => Db::open(path, cipher),
    }
  }
}

#[cfg(test)]
pub(crate) mod testing {
  //! What the store's tests share.

  use std::path::Path;

  use bytes::Bytes;
  use isola_proto::manifest::Manifest;
  use isola_proto::manifest::ModuleRef;
  use isola_proto::names::edge_worker_name;

  use super::Db;
  use super::VersionInfo;
  use crate::secrets::Cipher;

  pub(crate) fn open(dir: &Path) -> Db {
    super::test_support::open(&dir.join("control.db"), Cipher::new(&[7; 32])).unwrap()
  }

  pub(crate) fn upload(db: &Db, account: &str, worker: &str, src: &str) -> VersionInfo {
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
      services: Vec::new(),
      kv_namespaces: Vec::new(),
      queues: Default::default(),
      egress: None,
    };
    db.insert_version(account, worker, &manifest, &modules, None)
      .unwrap()
  }
}

#[cfg(test)]
mod tests {
  use super::testing::open;
  use super::*;

  #[test]
  fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cipher = || Cipher::new(&[7; 32]);
    if let Some(url) = test_support::fresh_postgres() {
      let db = Db::connect_postgres(&url, cipher()).unwrap();
      db.create_account("acme", false).unwrap();
      drop(db);
      let db = Db::connect_postgres(&url, cipher()).unwrap();
      let version: i64 = db
        .conn()
        .query_row("SELECT version FROM isola_schema", (), |r| r.get(0))
        .unwrap();
      assert_eq!(version, postgres::MIGRATIONS.len() as i64);
      assert_eq!(postgres::MIGRATIONS.len(), MIGRATIONS.len());
      assert!(matches!(
        db.create_account("acme", false),
        Err(Error::Conflict(_))
      ));
      db.conn()
        .execute("UPDATE isola_schema SET version = version + 1", ())
        .unwrap();
      drop(db);
      let err = Db::connect_postgres(&url, cipher()).unwrap_err();
      assert!(matches!(err, Error::TooNew { .. }), "{err}");
      return;
    }
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    drop(db);
    // Opening again applies nothing and keeps the data.
    let db = open(dir.path());
    let version: i64 = db
      .conn()
      .query_row("PRAGMA user_version", (), |r| r.get(0))
      .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    assert!(matches!(
      db.create_account("acme", false),
      Err(Error::Conflict(_))
    ));
    let mode: String = db
      .conn()
      .query_row("PRAGMA journal_mode", (), |r| r.get(0))
      .unwrap();
    assert_eq!(mode, "wal");
    db.conn()
      .execute_batch(&format!("PRAGMA user_version = {}", MIGRATIONS.len() + 1))
      .unwrap();
    drop(db);
    let err = Db::open(&dir.path().join("control.db"), cipher()).unwrap_err();
    assert!(matches!(err, Error::TooNew { .. }), "{err}");
    assert!(err.to_string().contains("newer isola-control"), "{err}");
  }
}
