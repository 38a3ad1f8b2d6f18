//! Workers KV, control plane side: namespaces belong to accounts (in the
//! database), values live in a [`KvStore`] (the database by default), and
//! every write is announced on a change feed that edge connections turn
//! into cache invalidations.

use std::sync::Arc;
use std::time::SystemTime;

use isola_proto::kv::KvCall;
use isola_proto::kv::KvEntry;
use isola_proto::kv::KvError;
use isola_proto::kv::KvList;
use isola_proto::kv::KvOp;
use isola_proto::kv::KvReply;
use isola_proto::kv::MAX_LIST_LIMIT;
use isola_proto::names::split_edge_worker_name;
use tokio::sync::broadcast;

use crate::db;
use crate::db::blocking;
use crate::db::Db;

/// Where KV values live. The control plane's SQLite file by default;
/// implement this to keep them in another store (namespaces and their
/// accounts stay in the database).
pub trait KvStore: Send + Sync + 'static {
  /// The live value of `key` at `now` (Unix seconds).
  fn get(&self, namespace: &str, key: &str, now: u64) -> db::Result<Option<KvEntry>>;
  /// Writes values, all or none; durable when it returns.
  fn put(&self, namespace: &str, entries: &[(String, KvEntry)]) -> db::Result<()>;
  fn delete(&self, namespace: &str, keys: &[String]) -> db::Result<()>;
  /// Live keys in UTF-8 byte order after `cursor`.
  fn list(
    &self,
    namespace: &str,
    prefix: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
    now: u64,
  ) -> db::Result<KvList>;
}

impl KvStore for Db {
  fn get(&self, namespace: &str, key: &str, now: u64) -> db::Result<Option<KvEntry>> {
    self.kv_get(namespace, key, now)
  }

  fn put(&self, namespace: &str, entries: &[(String, KvEntry)]) -> db::Result<()> {
    self.kv_put(namespace, entries)
  }

  fn delete(&self, namespace: &str, keys: &[String]) -> db::Result<()> {
    self.kv_delete(namespace, keys)
  }

  fn list(
    &self,
    namespace: &str,
    prefix: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
    now: u64,
  ) -> db::Result<KvList> {
    self.kv_list(namespace, prefix, limit, cursor, now)
  }
}

/// A key that changed: (namespace, key).
pub type Change = (String, String);

/// Changes buffered per edge connection before it counts as behind (and
/// gets a flush instead).
const CHANGE_BUFFER: usize = 4096;

/// The KV service both the REST API and edge calls go through.
#[derive(Clone)]
pub struct Kv {
  db: Db,
  store: Arc<dyn KvStore>,
  changes: broadcast::Sender<Change>,
}

pub fn unix_now() -> u64 {
  SystemTime::now()
    .duration_since(SystemTime::UNIX_EPOCH)
    .map_or(0, |d| d.as_secs())
}

impl Kv {
  /// KV with values in the database.
  pub fn new(db: Db) -> Self {
    Self::with_store(db.clone(), Arc::new(db))
  }

  pub fn with_store(db: Db, store: Arc<dyn KvStore>) -> Self {
    Self {
      db,
      store,
      changes: broadcast::channel(CHANGE_BUFFER).0,
    }
  }

  /// The change feed, for one edge connection.
  pub fn subscribe(&self) -> broadcast::Receiver<Change> {
    self.changes.subscribe()
  }

  fn announce(&self, namespace: &str, keys: impl IntoIterator<Item = String>) {
    for key in keys {
      // No receiver (no edge connected) is fine.
      let _ = self.changes.send((namespace.to_string(), key));
    }
  }

  /// Checks that `namespace` is `account`'s.
  pub async fn require(&self, account: &str, namespace: &str) -> db::Result<()> {
    let (db, account, namespace) = (self.db.clone(), account.to_string(), namespace.to_string());
    blocking(move || db.require_kv_namespace(&account, &namespace)).await
  }

  pub async fn get(&self, namespace: &str, key: &str) -> db::Result<Option<KvEntry>> {
    let (store, namespace, key) = (self.store.clone(), namespace.to_string(), key.to_string());
    blocking(move || store.get(&namespace, &key, unix_now())).await
  }

  pub async fn put(&self, namespace: &str, entries: Vec<(String, KvEntry)>) -> db::Result<()> {
    let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    let (store, ns) = (self.store.clone(), namespace.to_string());
    blocking(move || store.put(&ns, &entries)).await?;
    self.announce(namespace, keys);
    Ok(())
  }

  pub async fn delete(&self, namespace: &str, keys: Vec<String>) -> db::Result<()> {
    let (store, ns, k) = (self.store.clone(), namespace.to_string(), keys.clone());
    blocking(move || store.delete(&ns, &k)).await?;
    self.announce(namespace, keys);
    Ok(())
  }

  pub async fn list(
    &self,
    namespace: &str,
    prefix: Option<String>,
    limit: u32,
    cursor: Option<String>,
  ) -> db::Result<KvList> {
    let store = self.store.clone();
    let ns = namespace.to_string();
    blocking(move || {
      store.list(
        &ns,
        prefix.as_deref(),
        limit.clamp(1, MAX_LIST_LIMIT),
        cursor.as_deref(),
        unix_now(),
      )
    })
    .await
  }

  /// Serves an edge's call for one of its workers. The namespace must be
  /// the worker's account's; the edge has checked the limits, and they are
  /// checked again here (an edge is trusted to be ours, not to be right).
  pub async fn call(&self, call: KvCall) -> KvReply {
    let Some((account, _)) = split_edge_worker_name(&call.worker) else {
      return KvReply::Refused(KvError(format!("unknown worker {:?}", call.worker)));
    };
    let refused = |e: KvError| KvReply::Refused(e);
    if let Err(e) = self.require(account, &call.namespace).await {
      return match e {
        db::Error::NotFound(_) => refused(KvError(format!(
          "KV namespace {} does not exist in this account",
          call.namespace
        ))),
        other => failed(other),
      };
    }
    let ns = call.namespace.as_str();
    let result = match call.op {
      KvOp::Get { key } => match isola_proto::kv::check_key(&key) {
        Err(e) => return refused(e),
        Ok(()) => self.get(ns, &key).await.map(KvReply::Value),
      },
      KvOp::Put {
        key,
        value,
        metadata,
        expiration,
      } => {
        if let Err(e) = isola_proto::kv::check_key(&key).and_then(|()| {
          isola_proto::kv::check_write(value.len(), metadata.as_deref(), None, None, 0)
        }) {
          return refused(e);
        }
        let entry = KvEntry {
          value,
          metadata,
          expiration,
        };
        self
          .put(ns, vec![(key, entry)])
          .await
          .map(|()| KvReply::Done)
      }
      KvOp::Delete { key } => match isola_proto::kv::check_key(&key) {
        Err(e) => return refused(e),
        Ok(()) => self.delete(ns, vec![key]).await.map(|()| KvReply::Done),
      },
      KvOp::List {
        prefix,
        limit,
        cursor,
      } => self
        .list(ns, prefix, limit, cursor)
        .await
        .map(KvReply::Keys),
    };
    result.unwrap_or_else(|e| match e {
      db::Error::Invalid(m) => refused(KvError(m)),
      other => failed(other),
    })
  }

  /// Deletes expired values now and then, so they do not pile up (reads
  /// already skip them).
  pub async fn sweep_forever(self) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
      every.tick().await;
      let db = self.db.clone();
      if let Err(e) = blocking(move || db.kv_sweep(unix_now())).await {
        tracing::warn!(error = %e, "cannot delete expired KV values");
      }
    }
  }
}

fn failed(e: db::Error) -> KvReply {
  tracing::error!(error = %e, "a KV call failed");
  KvReply::Failed
}
