//! Workers KV on an edge: calls to the control plane's store on streams of
//! their own, and a read cache (moka, bounded by bytes) that the control
//! plane keeps fresh by pushing a change for every write.
//!
//! - A read is served from the cache when it can; a miss asks the store and
//!   keeps the answer (a missing key too) for `cacheTtl` (≥ 60 s), unless a
//!   change arrives first.
//! - A write resolves once the store has it on disk, and the writer's cache
//!   holds the new value at once (it reads its own writes).
//! - Without the control plane, cached reads go on; everything else fails
//!   with an error that says so. Nothing is written anywhere else, so
//!   nothing is lost silently.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use isola_proto::kv::KvCall;
use isola_proto::kv::KvEntry;
use isola_proto::kv::KvError;
use isola_proto::kv::KvOp;
use isola_proto::kv::KvReply;
use isola_proto::kv::MIN_CACHE_TTL;
use isola_proto::msg::Call;
use isola_proto::msg::CallReply;

/// Bytes of values the cache holds by default.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

type Key = (String, String);

/// A cached read: the entry (or its absence) and how long it may be used.
#[derive(Clone)]
struct Cached {
  entry: Option<Arc<KvEntry>>,
  ttl: Duration,
}

struct PerEntry;

impl moka::Expiry<Key, Cached> for PerEntry {
  fn expire_after_create(&self, _: &Key, value: &Cached, _: Instant) -> Option<Duration> {
    Some(value.ttl)
  }
}

/// The control plane's connection, for calls beside the control stream
/// (KV, queue sends); empty while the channel is down.
#[derive(Default)]
pub struct Upstream {
  conn: ArcSwapOption<quinn::Connection>,
}

impl Upstream {
  pub fn set(&self, conn: Option<quinn::Connection>) {
    self.conn.store(conn.map(Arc::new));
  }

  /// Makes one call (a [`Call`], or what serializes as one); `None` while
  /// the control plane is unreachable.
  pub async fn call(
    &self,
    call: &impl serde::Serialize,
  ) -> Option<Result<CallReply, isola_io::Error>> {
    let conn = self.conn.load_full()?;
    Some(isola_io::channel::call::<_, CallReply>(&conn, call).await)
  }

  /// [`Self::call`] with the call already framed.
  pub async fn call_frame(&self, frame: &[u8]) -> Option<Result<CallReply, isola_io::Error>> {
    let conn = self.conn.load_full()?;
    Some(isola_io::channel::call_frame::<CallReply>(&conn, frame).await)
  }
}

/// The edge's KV client. Cheap to share (`Arc`).
pub struct EdgeKv {
  upstream: Arc<Upstream>,
  cache: moka::sync::Cache<Key, Cached>,
  /// Bumped on every invalidation: a read that started before one may
  /// carry the old value and is not cached.
  epoch: AtomicU64,
}

impl EdgeKv {
  pub fn new(upstream: Arc<Upstream>, cache_bytes: u64) -> Self {
    let cache = moka::sync::Cache::builder()
      .max_capacity(cache_bytes)
      .weigher(|k: &Key, v: &Cached| {
        let size = k.0.len()
          + k.1.len()
          + 64
          + v.entry.as_ref().map_or(0, |e| {
            e.value.len() + e.metadata.as_ref().map_or(0, String::len)
          });
        u32::try_from(size).unwrap_or(u32::MAX)
      })
      .expire_after(PerEntry)
      .build();
    Self {
      upstream,
      cache,
      epoch: AtomicU64::new(0),
    }
  }

  /// A key changed elsewhere (`None`: any key may have).
  pub fn invalidate(&self, change: Option<(String, String)>) {
    self.epoch.fetch_add(1, Ordering::AcqRel);
    match change {
      Some(key) => self.cache.invalidate(&key),
      None => self.cache.invalidate_all(),
    }
  }

  /// Serves one binding call. `cache_ttl` (seconds, reads only) is raised
  /// to Cloudflare's minimum of 60.
  pub async fn call(&self, call: KvCall, cache_ttl: Option<u64>) -> Result<KvReply, KvError> {
    let key = match &call.op {
      KvOp::Get { key } => {
        let k = (call.namespace.clone(), key.clone());
        if let Some(hit) = self.cache.get(&k) {
          return Ok(KvReply::Value(hit.entry.map(|e| (*e).clone())));
        }
        Some(k)
      }
      _ => None,
    };
    let epoch = self.epoch.load(Ordering::Acquire);
    let written = match &call.op {
      KvOp::Put {
        key,
        value,
        metadata,
        expiration,
      } => Some((
        (call.namespace.clone(), key.clone()),
        Some(KvEntry {
          value: value.clone(),
          metadata: metadata.clone(),
          expiration: *expiration,
        }),
      )),
      KvOp::Delete { key } => Some(((call.namespace.clone(), key.clone()), None)),
      _ => None,
    };
    let reply = self.remote(call).await?;
    if let (Some(k), KvReply::Value(entry)) = (&key, &reply) {
      if self.epoch.load(Ordering::Acquire) == epoch {
        let ttl = cache_ttl.unwrap_or(MIN_CACHE_TTL).max(MIN_CACHE_TTL);
        self.keep(k.clone(), entry.clone(), ttl);
      }
    }
    if let (Some((k, entry)), KvReply::Done) = (written, &reply) {
      self.keep(k, entry, MIN_CACHE_TTL);
    }
    Ok(reply)
  }

  /// Caches `entry` for `ttl` seconds, or until it expires, if sooner.
  fn keep(&self, key: Key, entry: Option<KvEntry>, ttl: u64) {
    let mut ttl = Duration::from_secs(ttl);
    if let Some(at) = entry.as_ref().and_then(|e| e.expiration) {
      let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
      ttl = ttl.min(Duration::from_secs(at.saturating_sub(now)));
    }
    if !ttl.is_zero() {
      self.cache.insert(
        key,
        Cached {
          entry: entry.map(Arc::new),
          ttl,
        },
      );
    }
  }

  async fn remote(&self, call: KvCall) -> Result<KvReply, KvError> {
    let what = match call.op {
      KvOp::Get { .. } | KvOp::List { .. } => "read",
      KvOp::Put { .. } | KvOp::Delete { .. } => "write",
    };
    let Some(reply) = self.upstream.call(&Call::Kv(call)).await else {
      return Err(KvError(format!(
        "KV {what} failed: this edge has lost its control plane{}; nothing was changed, try again",
        if what == "read" {
          " and the key is not cached"
        } else {
          ""
        }
      )));
    };
    match reply {
      Ok(CallReply::Kv(reply)) => Ok(reply),
      Ok(_) => Err(KvError(
        "KV failed: the control plane does not support this call; run the same release on both"
          .into(),
      )),
      Err(e) => {
        tracing::warn!(error = %e, "a KV call to the control plane failed");
        Err(KvError(format!(
          "KV {what} failed: the control plane did not answer; the {what} may not have happened"
        )))
      }
    }
  }
}

/// Workers' KV bindings on this edge go through its cache to the control
/// plane.
impl isola_runtime::KvService for EdgeKv {
  fn call(
    &self,
    call: KvCall,
    cache_ttl: Option<u64>,
  ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<KvReply, KvError>> + Send + '_>>
  {
    Box::pin(EdgeKv::call(self, call, cache_ttl))
  }
}
