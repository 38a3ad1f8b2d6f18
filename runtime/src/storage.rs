//! The node's storage services behind KV and queue producer bindings: what
//! a [`crate::Config`] holds until the node plugs its own in, and
//! [`MemoryKv`], a KV store in memory for `isola-edge dev` and tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;

use isola_ext::KvService;
use isola_ext::QueueService;
use isola_proto::kv::KvCall;
use isola_proto::kv::KvEntry;
use isola_proto::kv::KvError;
use isola_proto::kv::KvKey;
use isola_proto::kv::KvList;
use isola_proto::kv::KvOp;
use isola_proto::kv::KvReply;
use isola_proto::queue::QueueError;
use isola_proto::queue::SendCall;
use isola_proto::queue::SendReply;

use crate::error::Error;
use crate::error::ErrorKind;

/// The default KV service: a node without one says so.
struct NoKv;

impl KvService for NoKv {
  fn call(
    &self,
    _call: KvCall,
    _cache_ttl: Option<u64>,
  ) -> Pin<Box<dyn Future<Output = Result<KvReply, KvError>> + Send + '_>> {
    Box::pin(async { Err(KvError("KV is not available on this node".into())) })
  }
}

/// The default queue service: a node without one says so.
struct NoQueues;

impl QueueService for NoQueues {
  fn send(&self, _call: SendCall) -> Pin<Box<dyn Future<Output = SendReply> + Send + '_>> {
    Box::pin(async {
      SendReply::Refused(QueueError("Queues are not available on this node".into()))
    })
  }
}

/// The storage services a runtime's workers reach, printable for
/// `Config`'s `Debug`.
#[derive(Clone)]
pub(crate) struct Storage {
  pub(crate) kv: Arc<dyn KvService>,
  pub(crate) queues: Arc<dyn QueueService>,
}

impl Default for Storage {
  fn default() -> Self {
    Self {
      kv: Arc::new(NoKv),
      queues: Arc::new(NoQueues),
    }
  }
}

impl std::fmt::Debug for Storage {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("Storage")
  }
}

type Entries = BTreeMap<(String, String), KvEntry>;

/// KV namespaces in memory, optionally kept in a JSON file (rewritten on
/// every write: for development, not for load). Expired keys are gone
/// from reads and lists; keys list in UTF-8 byte order, and a page's
/// cursor is the last key it holds.
#[derive(Default)]
pub struct MemoryKv {
  entries: Mutex<Entries>,
  file: Option<PathBuf>,
}

impl MemoryKv {
  pub fn new() -> Self {
    Self::default()
  }

  /// A store kept in `file`, with what it holds already (if it exists).
  pub fn open(file: impl Into<PathBuf>) -> Result<Self, Error> {
    let file = file.into();
    let entries = match std::fs::read(&file) {
      Ok(bytes) => {
        let list: Vec<(String, String, KvEntry)> =
          serde_json::from_slice(&bytes).map_err(|e| ErrorKind::Io {
            what: format!("cannot read KV data from {}", file.display()),
            source: std::io::Error::other(e),
          })?;
        list.into_iter().map(|(ns, k, e)| ((ns, k), e)).collect()
      }
      Err(e) if e.kind() == std::io::ErrorKind::NotFound => Entries::new(),
      Err(source) => {
        return Err(
          ErrorKind::Io {
            what: format!("cannot read KV data from {}", file.display()),
            source,
          }
          .into(),
        )
      }
    };
    Ok(Self {
      entries: Mutex::new(entries),
      file: Some(file),
    })
  }

  /// Answers one call now.
  pub fn apply(&self, call: KvCall) -> KvReply {
    let now = now_secs();
    let live = |e: &KvEntry| e.expiration.is_none_or(|at| at > now);
    let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
    let ns = call.namespace;
    match call.op {
      KvOp::Get { key } => KvReply::Value(entries.get(&(ns, key)).filter(|e| live(e)).cloned()),
      KvOp::Put {
        key,
        value,
        metadata,
        expiration,
      } => {
        let entry = KvEntry {
          value,
          metadata,
          expiration,
        };
        entries.insert((ns, key), entry);
        self.save(&entries)
      }
      KvOp::Delete { key } => {
        entries.remove(&(ns, key));
        self.save(&entries)
      }
      KvOp::List {
        prefix,
        limit,
        cursor,
      } => {
        let prefix = prefix.unwrap_or_default();
        let start = match cursor {
          Some(after) => Bound::Excluded((ns.clone(), after)),
          None => Bound::Included((ns.clone(), prefix.clone())),
        };
        let mut keys = entries
          .range((start, Bound::Unbounded))
          .take_while(|((n, k), _)| *n == ns && k.starts_with(&prefix))
          .filter(|(_, e)| live(e))
          .take(limit as usize + 1)
          .map(|((_, name), e)| KvKey {
            name: name.clone(),
            expiration: e.expiration,
            metadata: e.metadata.clone(),
          })
          .collect::<Vec<_>>();
        let more = keys.len() > limit as usize;
        keys.truncate(limit as usize);
        let cursor = more.then(|| keys.last().map(|k| k.name.clone())).flatten();
        KvReply::Keys(KvList {
          keys,
          list_complete: !more,
          cursor,
        })
      }
    }
  }

  /// Writes the store to its file, if it has one.
  fn save(&self, entries: &Entries) -> KvReply {
    let Some(file) = &self.file else {
      return KvReply::Done;
    };
    let list: Vec<(&String, &String, &KvEntry)> =
      entries.iter().map(|((ns, k), e)| (ns, k, e)).collect();
    let tmp = file.with_extension("tmp");
    let written = serde_json::to_vec(&list)
      .map_err(std::io::Error::other)
      .and_then(|bytes| std::fs::write(&tmp, bytes))
      .and_then(|()| std::fs::rename(&tmp, file));
    match written {
      Ok(()) => KvReply::Done,
      Err(e) => {
        tracing::warn!(file = %file.display(), error = %e, "cannot write KV data");
        KvReply::Failed
      }
    }
  }
}

impl KvService for MemoryKv {
  fn call(
    &self,
    call: KvCall,
    _cache_ttl: Option<u64>,
  ) -> Pin<Box<dyn Future<Output = Result<KvReply, KvError>> + Send + '_>> {
    let reply = self.apply(call);
    Box::pin(async move { Ok(reply) })
  }
}

fn now_secs() -> u64 {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
  use super::*;

  fn call(op: KvOp) -> KvCall {
    KvCall {
      worker: "w".into(),
      namespace: "ns".into(),
      op,
    }
  }

  fn put(kv: &MemoryKv, key: &str, expiration: Option<u64>) {
    let op = KvOp::Put {
      key: key.into(),
      value: b"v".to_vec(),
      metadata: None,
      expiration,
    };
    assert_eq!(kv.apply(call(op)), KvReply::Done);
  }

  fn list(kv: &MemoryKv, prefix: &str, limit: u32, cursor: Option<String>) -> KvList {
    let op = KvOp::List {
      prefix: Some(prefix.into()),
      limit,
      cursor,
    };
    match kv.apply(call(op)) {
      KvReply::Keys(list) => list,
      other => panic!("{other:?}"),
    }
  }

  #[test]
  fn lists_page_in_byte_order_within_the_prefix() {
    let kv = MemoryKv::new();
    for k in ["b/2", "b/1", "a", "b/é", "b/Z", "c"] {
      put(&kv, k, None);
    }
    let first = list(&kv, "b/", 2, None);
    let names: Vec<_> = first.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["b/1", "b/2"]);
    assert!(!first.list_complete);
    let second = list(&kv, "b/", 2, first.cursor);
    let names: Vec<_> = second.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["b/Z", "b/é"]);
    assert!(second.list_complete);
    assert_eq!(second.cursor, None);
  }

  #[test]
  fn expired_keys_are_gone() {
    let kv = MemoryKv::new();
    put(&kv, "old", Some(1));
    put(&kv, "new", Some(now_secs() + 3600));
    let get = |k: &str| kv.apply(call(KvOp::Get { key: k.into() }));
    assert_eq!(get("old"), KvReply::Value(None));
    assert!(matches!(get("new"), KvReply::Value(Some(_))));
    let names: Vec<_> = list(&kv, "", 10, None)
      .keys
      .into_iter()
      .map(|k| k.name)
      .collect();
    assert_eq!(names, ["new"]);
  }

  #[test]
  fn a_file_store_keeps_its_keys() {
    let dir = std::env::temp_dir().join(format!("isola-kv-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kv.json");
    let _ = std::fs::remove_file(&file);
    put(&MemoryKv::open(&file).unwrap(), "kept", None);
    let again = MemoryKv::open(&file).unwrap();
    assert!(matches!(
      again.apply(call(KvOp::Get { key: "kept".into() })),
      KvReply::Value(Some(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
  }
}
