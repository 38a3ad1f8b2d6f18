//! V8 code caches of worker modules, so that only the first isolate of a
//! version parses and compiles its code.
//!
//! When an isolate compiles an ES module it had no cache for, V8 hands back
//! the module's code cache; every later isolate of any version with the
//! same module source (on any V8 thread) compiles from it instead. Caches
//! are kept in memory, least recently used first out past a byte cap, and,
//! with a [`CodeCacheStore`], written to disk on a thread of their own so a
//! restarted node starts warm.
//!
//! A cache is keyed by the sha256 of the module's source and the V8 version
//! ([`CodeCacheKey::engine`]), so a V8 upgrade makes new ones. Bytes read
//! back from a store are framed with their own sha256 and the source's, and
//! refused unless both match; V8 then checks its own version, flags and
//! source length and may still reject a cache, which just means compiling
//! as if there were none (and replacing the cache).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;

use sha2::Digest as _;
use sha2::Sha256;

/// The sha256 of a module's source.
pub(crate) type SourceHash = [u8; 32];

pub(crate) fn source_hash(bytes: &[u8]) -> SourceHash {
  Sha256::digest(bytes).into()
}

/// Names one module's code cache in a [`CodeCacheStore`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CodeCacheKey {
  engine: &'static str,
  source: SourceHash,
}

impl CodeCacheKey {
  /// The engine tag of this build (see [`CodeCacheKey::engine`]).
  pub fn current_engine() -> &'static str {
    engine()
  }

  /// The engine the cache is for (`v8-<version>`, letters, digits, `.`
  /// and `-` only, so it can name a folder): caches of another engine are
  /// of no use.
  pub fn engine(&self) -> &'static str {
    self.engine
  }

  /// The sha256 of the module's source, lowercase hex.
  pub fn source_sha256(&self) -> String {
    self.source.iter().map(|b| format!("{b:02x}")).collect()
  }
}

/// The engine tag of this build's V8.
fn engine() -> &'static str {
  static ENGINE: OnceLock<String> = OnceLock::new();
  ENGINE.get_or_init(|| {
    let version: String = deno_core::v8::V8::get_version()
      .chars()
      .map(|c| {
        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
          c
        } else {
          '-'
        }
      })
      .collect();
    format!("v8-{version}")
  })
}

/// Where code caches outlive the process, e.g. the edge's content-addressed
/// store. Both calls are best effort: a cache that cannot be read or written
/// only costs a compile. Neither is called on a V8 thread while a request
/// waits, except `get` for a module no isolate of this process compiled yet.
pub trait CodeCacheStore: Send + Sync {
  /// The bytes last put under `key`, if any.
  fn get(&self, key: &CodeCacheKey) -> Option<Vec<u8>>;
  /// Keeps `bytes` under `key`.
  fn put(&self, key: &CodeCacheKey, bytes: &[u8]);
}

/// How a runtime keeps code caches (see [`crate::Config::code_cache`]).
#[derive(Clone)]
pub struct CodeCacheConfig {
  pub(crate) enabled: bool,
  pub(crate) memory: u64,
  pub(crate) min_source: usize,
  pub(crate) store: Option<Arc<dyn CodeCacheStore>>,
}

impl std::fmt::Debug for CodeCacheConfig {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("CodeCacheConfig")
      .field("enabled", &self.enabled)
      .field("memory", &self.memory)
      .field("min_source", &self.min_source)
      .field("store", &self.store.is_some())
      .finish()
  }
}

impl Default for CodeCacheConfig {
  fn default() -> Self {
    Self {
      enabled: true,
      memory: 64 << 20,
      min_source: 1024,
      store: None,
    }
  }
}

impl CodeCacheConfig {
  /// No code cache: every isolate parses and compiles its modules.
  pub fn disabled() -> Self {
    Self {
      enabled: false,
      ..Self::default()
    }
  }

  /// Caches kept in memory at most, all modules together; the least
  /// recently used go first. Default: 64 MiB.
  pub fn memory(mut self, bytes: u64) -> Self {
    self.memory = bytes;
    self
  }

  /// Modules with a shorter source (bytes) get no cache: V8 compiles
  /// their top level about as fast as it reads a cache, and making the
  /// cache would double the first isolate's compile. Default: 1024, as
  /// Chrome's code cache.
  pub fn min_source_bytes(mut self, bytes: usize) -> Self {
    self.min_source = bytes;
    self
  }

  /// Where caches are also written, and read from when memory has none.
  /// Default: nowhere.
  pub fn store(mut self, store: Arc<dyn CodeCacheStore>) -> Self {
    self.store = Some(store);
    self
  }
}

/// Counts of a runtime's code cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct CodeCacheStats {
  /// Modules compiled with a cache handed to V8 (modules shorter than
  /// [`CodeCacheConfig::min_source_bytes`] count neither here nor as
  /// misses).
  pub hits: u64,
  /// Modules compiled without one. A cache is made of each whose code is
  /// wanted again (see [`crate::Config::code_cache`]).
  pub misses: u64,
  /// Caches V8 refused (another engine build or flags), or found corrupt
  /// in the store; the module was compiled without.
  pub rejections: u64,
  /// Modules with a cache held in memory.
  pub modules: usize,
  /// Bytes of those caches.
  pub memory: u64,
}

struct Memory {
  lru: lru::LruCache<SourceHash, Arc<[u8]>>,
  bytes: u64,
  /// Sources compiled without a cache lately (their hash's first 8
  /// bytes): compiled again, they are wanted again, and get one.
  seen: lru::LruCache<u64, ()>,
}

/// Sources [`Memory::seen`] remembers at most (128 KiB of keys).
const SEEN: usize = 16_384;

/// The caches of one runtime, shared by its V8 threads.
pub(crate) struct CodeCache {
  memory_cap: u64,
  min_source: usize,
  memory: Mutex<Memory>,
  store: Option<Arc<dyn CodeCacheStore>>,
  writer: Option<mpsc::SyncSender<(CodeCacheKey, Arc<[u8]>)>>,
  hits: AtomicU64,
  misses: AtomicU64,
  rejections: AtomicU64,
}

/// Framing of a cache in a store: magic, the source's sha256, the payload's
/// sha256, the payload.
const MAGIC: &[u8; 8] = b"ISOLACC1";
const HEADER: usize = 8 + 32 + 32;

/// Caches waiting for the writer thread at most; more are not persisted
/// (the next process makes them again).
const WRITE_QUEUE: usize = 64;

impl CodeCache {
  /// `None` when the config turns caching off.
  pub(crate) fn new(config: &CodeCacheConfig) -> Option<Arc<Self>> {
    if !config.enabled {
      return None;
    }
    let writer = config.store.clone().and_then(|store| {
      let (tx, rx) = mpsc::sync_channel::<(CodeCacheKey, Arc<[u8]>)>(WRITE_QUEUE);
      std::thread::Builder::new()
        .name("isola-code-cache".into())
        .spawn(move || {
          for (key, bytes) in rx {
            store.put(&key, &frame(&key.source, &bytes));
          }
        })
        .map_err(|e| tracing::warn!(error = %e, "code caches will not be written to the store"))
        .ok()
        .map(|_| tx)
    });
    Some(Arc::new(Self {
      memory_cap: config.memory,
      min_source: config.min_source,
      memory: Mutex::new(Memory {
        lru: lru::LruCache::unbounded(),
        bytes: 0,
        seen: lru::LruCache::new(std::num::NonZeroUsize::new(SEEN).expect("not zero")),
      }),
      store: config.store.clone(),
      writer,
      hits: AtomicU64::new(0),
      misses: AtomicU64::new(0),
      rejections: AtomicU64::new(0),
    }))
  }

  /// Whether a module whose source is `len` bytes gets a cache at all.
  pub(crate) fn wants(&self, len: usize) -> bool {
    len >= self.min_source
  }

  fn key(source: SourceHash) -> CodeCacheKey {
    CodeCacheKey {
      engine: engine(),
      source,
    }
  }

  fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
    self.memory.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// The cache for a module with source `source`, from memory or else the
  /// store; counts a hit or a miss.
  pub(crate) fn lookup(&self, source: &SourceHash) -> Option<Arc<[u8]>> {
    let found = self.memory().lru.get(source).cloned();
    let found = found.or_else(|| {
      let bytes = self.store.as_ref()?.get(&Self::key(*source))?;
      match unframe(source, &bytes) {
        Some(payload) => {
          let payload: Arc<[u8]> = Arc::from(payload);
          self.remember(*source, payload.clone());
          Some(payload)
        }
        None => {
          self.rejections.fetch_add(1, Ordering::Relaxed);
          // A process made this cache before: the code is wanted again.
          self.memory().seen.put(short_hash(source), ());
          tracing::debug!(
            source = %Self::key(*source).source_sha256(),
            "a stored code cache is corrupt; compiling without it"
          );
          None
        }
      }
    });
    let counter = if found.is_some() {
      &self.hits
    } else {
      &self.misses
    };
    counter.fetch_add(1, Ordering::Relaxed);
    found
  }

  /// Notes that a module with source `source` compiles without a cache;
  /// true if one did before, lately: the code is wanted again, so its
  /// cache is worth making. (Chrome's rule: a script seen once gets none.)
  pub(crate) fn compiled_again(&self, source: &SourceHash) -> bool {
    self.memory().seen.put(short_hash(source), ()).is_some()
  }

  /// V8 made a cache for a module with source `source`; `rejected` if it
  /// was compiled with a cache that V8 refused.
  pub(crate) fn ready(&self, source: SourceHash, bytes: &[u8], rejected: bool) {
    if rejected {
      self.rejections.fetch_add(1, Ordering::Relaxed);
    }
    let bytes: Arc<[u8]> = Arc::from(bytes);
    self.remember(source, bytes.clone());
    if let Some(writer) = &self.writer {
      // A full queue drops the write: persisting is best effort.
      let _ = writer.try_send((Self::key(source), bytes));
    }
  }

  fn remember(&self, source: SourceHash, bytes: Arc<[u8]>) {
    let len = bytes.len() as u64;
    if len > self.memory_cap {
      return;
    }
    let mut memory = self.memory();
    if let Some(old) = memory.lru.put(source, bytes) {
      memory.bytes -= old.len() as u64;
    }
    memory.bytes += len;
    while memory.bytes > self.memory_cap {
      let Some((_, old)) = memory.lru.pop_lru() else {
        break;
      };
      memory.bytes -= old.len() as u64;
    }
  }

  pub(crate) fn stats(&self) -> CodeCacheStats {
    let (modules, memory) = {
      let memory = self.memory();
      (memory.lru.len(), memory.bytes)
    };
    CodeCacheStats {
      hits: self.hits.load(Ordering::Relaxed),
      misses: self.misses.load(Ordering::Relaxed),
      rejections: self.rejections.load(Ordering::Relaxed),
      modules,
      memory,
    }
  }
}

/// The first 8 bytes of a source's hash: the key of [`Memory::seen`],
/// and the hash deno_core is given with a cache.
pub(crate) fn short_hash(source: &SourceHash) -> u64 {
  let mut key = [0; 8];
  key.copy_from_slice(&source[..8]);
  u64::from_le_bytes(key)
}

fn frame(source: &SourceHash, payload: &[u8]) -> Vec<u8> {
  let mut out = Vec::with_capacity(HEADER + payload.len());
  out.extend_from_slice(MAGIC);
  out.extend_from_slice(source);
  out.extend_from_slice(&source_hash(payload));
  out.extend_from_slice(payload);
  out
}

/// The payload of a framed cache, if it is whole and made for `source`.
fn unframe<'a>(source: &SourceHash, bytes: &'a [u8]) -> Option<&'a [u8]> {
  if bytes.len() < HEADER || &bytes[..8] != MAGIC || &bytes[8..40] != source {
    return None;
  }
  let payload = &bytes[HEADER..];
  (source_hash(payload)[..] == bytes[40..72]).then_some(payload)
}

impl std::fmt::Debug for CodeCache {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("CodeCache")
      .field("stats", &self.stats())
      .finish()
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn frames_round_trip_and_refuse_damage() {
    let source = source_hash(b"export default {}");
    let framed = frame(&source, b"payload");
    assert_eq!(unframe(&source, &framed), Some(&b"payload"[..]));
    let mut flipped = framed.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert_eq!(unframe(&source, &flipped), None);
    assert_eq!(unframe(&source_hash(b"other"), &framed), None);
    assert_eq!(unframe(&source, &framed[..HEADER - 1]), None);
    assert_eq!(unframe(&source, b"garbage"), None);
  }

  #[test]
  fn memory_stays_under_its_cap() {
    let cache = CodeCache::new(&CodeCacheConfig::default().memory(10)).unwrap();
    let (a, b) = (source_hash(b"a"), source_hash(b"b"));
    cache.ready(a, &[0; 6], false);
    cache.ready(b, &[0; 6], false);
    assert_eq!(cache.stats().memory, 6);
    assert!(cache.lookup(&a).is_none(), "the older cache went first");
    assert!(cache.lookup(&b).is_some());
    cache.ready(a, &[0; 11], false);
    assert!(
      cache.lookup(&a).is_none(),
      "one cache over the cap is not kept"
    );
  }

  #[test]
  fn engine_names_a_folder() {
    let e = engine();
    assert!(e.starts_with("v8-") && e.len() > 3, "{e}");
    assert!(e
      .chars()
      .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
  }
}
