//! V8 code caches: made by the first isolate of a version once its code
//! is wanted again, used by the later ones on any thread, kept in a store
//! across runtimes, and never trusted blindly.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use isola_runtime::Bundle;
use isola_runtime::CodeCacheConfig;
use isola_runtime::CodeCacheKey;
use isola_runtime::CodeCacheStats;
use isola_runtime::CodeCacheStore;
use isola_runtime::Config;
use isola_runtime::Metrics;
use isola_runtime::Runtime;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;
use libtest_mimic::Trial;
use sha2::Digest as _;

const MAIN: &str = r#"
import { greet } from "./lib.js";
export default { fetch(request) { return new Response(greet(new URL(request.url).pathname)); } };
"#;
const LIB: &str = r#"
class Greeter { constructor(word) { this.word = word; } say(who) { return `${this.word}, ${who}!`; } }
export function greet(path) { return new Greeter("hello").say(path.slice(1)); }
"#;

/// The two modules above, each made longer than the 1 KiB below which a
/// module gets no cache (`CodeCacheConfig::min_source_bytes`).
fn modules() -> [(String, Bytes); 2] {
  let long = |src: &str| Bytes::from(format!("{src}// {}\n", "-".repeat(1024)));
  [
    ("main.js".to_string(), long(MAIN)),
    ("lib.js".to_string(), long(LIB)),
  ]
}

/// Worker `name`, version `v1`, of [`modules`]; answers "hello, <path>!".
async fn get(rt: &Runtime, name: &str, path: &str) -> (u16, String) {
  get_of(rt, name, path, modules()).await
}

/// As [`get`], with the worker made of `modules` (`main.js` the main one).
async fn get_of(
  rt: &Runtime,
  name: &str,
  path: &str,
  modules: impl IntoIterator<Item = (String, Bytes)>,
) -> (u16, String) {
  let key = WorkerKey::new(name, "v1");
  let config = WorkerConfig::new(name);
  let source = move || Bundle::from_modules("main.js", modules).map(|b| (b, config));
  let req = isola_runtime::empty_request(&format!("http://{name}.test{path}"));
  let response = match rt.fetch(&key, source, req).await {
    Ok(r) => r,
    Err(e) => isola_runtime::error_response(&e),
  };
  let status = response.status().as_u16();
  let body = response.into_body().collect_bytes().await.unwrap();
  (status, String::from_utf8_lossy(&body).into_owned())
}

fn counts(rt: &Runtime) -> (u64, u64, u64) {
  let CodeCacheStats {
    hits,
    misses,
    rejections,
    ..
  } = rt.stats().code_cache;
  (hits, misses, rejections)
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
  let start = Instant::now();
  while !f() {
    assert!(
      start.elapsed() < Duration::from_secs(20),
      "timed out waiting for {what}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
  }
}

/// A store in memory: what the edge's store keeps on disk, without the disk.
#[derive(Default)]
struct MemoryStore(Mutex<HashMap<CodeCacheKey, Vec<u8>>>);

impl MemoryStore {
  fn len(&self) -> usize {
    self.0.lock().unwrap().len()
  }

  fn rewrite(&self, f: impl Fn(&CodeCacheKey, &[u8]) -> Vec<u8>) {
    for (key, bytes) in self.0.lock().unwrap().iter_mut() {
      *bytes = f(key, bytes);
    }
  }

  fn snapshot(&self) -> HashMap<CodeCacheKey, Vec<u8>> {
    self.0.lock().unwrap().clone()
  }
}

impl CodeCacheStore for MemoryStore {
  fn get(&self, key: &CodeCacheKey) -> Option<Vec<u8>> {
    self.0.lock().unwrap().get(key).cloned()
  }

  fn put(&self, key: &CodeCacheKey, bytes: &[u8]) {
    self.0.lock().unwrap().insert(key.clone(), bytes.to_vec());
  }
}

fn with_store(store: &Arc<MemoryStore>) -> Config {
  Config::default()
    .threads(1)
    .stock(0)
    .code_cache(CodeCacheConfig::default().store(store.clone()))
}

async fn a_later_isolate_compiles_from_the_code_cache() {
  let rt = Runtime::new(Config::default().threads(2).stock(0)).unwrap();
  assert_eq!(
    get(&rt, "one", "/world").await,
    (200, "hello, world!".into())
  );
  assert_eq!(get(&rt, "one", "/w").await, (200, "hello, w!".into()));
  // Both modules compiled without a cache; the worker makes theirs
  // shortly after its second request.
  assert_eq!(counts(&rt), (0, 2, 0));
  eventually("both caches to be kept", || {
    rt.stats().code_cache.modules == 2
  })
  .await;

  // The same modules under another name: a second isolate, on the other
  // V8 thread (the one with fewer isolates).
  assert_eq!(
    get(&rt, "two", "/there").await,
    (200, "hello, there!".into())
  );
  assert_eq!(counts(&rt), (2, 2, 0));
  // The first worker again after eviction: a third isolate, same caches.
  rt.evict(&WorkerKey::new("one", "v1"));
  assert_eq!(
    get(&rt, "one", "/again").await,
    (200, "hello, again!".into())
  );
  assert_eq!(counts(&rt), (4, 2, 0));

  let text = Metrics::new().encode(Some(rt.stats()));
  for line in [
    "isola_code_cache_hits_total 4",
    "isola_code_cache_misses_total 2",
    "isola_code_cache_rejections_total 0",
  ] {
    assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
  }
}

async fn a_preloaded_version_leaves_its_caches_for_requests() {
  // As an edge loads a new version before routing to it: its first isolate
  // pays for the caches, the isolates requests start use them.
  let rt = Runtime::new(Config::default().threads(2).stock(0)).unwrap();
  let bundle = Bundle::from_modules("main.js", modules()).unwrap();
  rt.preload(
    &WorkerKey::new("pre", "v1"),
    bundle,
    WorkerConfig::new("pre"),
  )
  .await
  .unwrap();
  eventually("both caches to be kept", || {
    rt.stats().code_cache.modules == 2
  })
  .await;
  assert_eq!(counts(&rt), (0, 2, 0));
  assert_eq!(get(&rt, "other", "/x").await, (200, "hello, x!".into()));
  assert_eq!(counts(&rt), (2, 2, 0));
}

async fn a_small_module_gets_no_cache() {
  let rt = Runtime::new(Config::default().threads(1).stock(0)).unwrap();
  // `main.js` as above, importing a `lib.js` under 1 KiB.
  let [main, _] = modules();
  let small = Bytes::from_static(LIB.as_bytes());
  assert!(small.len() < 1024);
  for name in ["one", "two"] {
    let modules = [main.clone(), ("lib.js".to_string(), small.clone())];
    for _ in 0..2 {
      assert_eq!(
        get_of(&rt, name, "/small", modules.clone()).await,
        (200, "hello, small!".into())
      );
    }
    eventually("the long module's cache to be kept", || {
      rt.stats().code_cache.modules == 1
    })
    .await;
  }
  // Only `main.js` was looked up (a miss, then a hit); `lib.js` compiled
  // from source both times and is counted nowhere.
  assert_eq!(counts(&rt), (1, 1, 0));
}

async fn code_caches_can_be_turned_off() {
  let rt = Runtime::new(
    Config::default()
      .threads(1)
      .stock(0)
      .code_cache(CodeCacheConfig::disabled()),
  )
  .unwrap();
  for name in ["one", "two"] {
    assert_eq!(get(&rt, name, "/x").await, (200, "hello, x!".into()));
  }
  let stats = rt.stats().code_cache;
  assert_eq!((stats.hits, stats.misses, stats.modules), (0, 0, 0));
}

async fn a_stored_code_cache_serves_the_next_runtime() {
  let store = Arc::new(MemoryStore::default());
  {
    let rt = Runtime::new(with_store(&store)).unwrap();
    assert_eq!(get(&rt, "w", "/a").await, (200, "hello, a!".into()));
    assert_eq!(get(&rt, "w", "/a").await, (200, "hello, a!".into()));
    eventually("both caches to be stored", || store.len() == 2).await;
  }
  // A restarted node: nothing in memory, the store has both.
  let rt = Runtime::new(with_store(&store)).unwrap();
  assert_eq!(get(&rt, "w", "/b").await, (200, "hello, b!".into()));
  assert_eq!(counts(&rt), (2, 0, 0));
}

async fn a_corrupt_code_cache_only_costs_a_compile() {
  let store = Arc::new(MemoryStore::default());
  {
    let rt = Runtime::new(with_store(&store)).unwrap();
    assert_eq!(get(&rt, "w", "/a").await, (200, "hello, a!".into()));
    assert_eq!(get(&rt, "w", "/a").await, (200, "hello, a!".into()));
    eventually("both caches to be stored", || store.len() == 2).await;
  }

  // Garbage where the caches were: refused before V8 sees it.
  store.rewrite(|_, bytes| {
    let mut garbage = vec![0x5a; bytes.len()];
    garbage[..4].copy_from_slice(b"junk");
    garbage
  });
  let garbage = store.snapshot();
  {
    let rt = Runtime::new(with_store(&store)).unwrap();
    assert_eq!(get(&rt, "w", "/b").await, (200, "hello, b!".into()));
    assert_eq!(counts(&rt), (0, 2, 2));
    // The store gets the new caches.
    eventually("the caches to be replaced", || replaced(&store, &garbage)).await;
  }
  {
    let rt = Runtime::new(with_store(&store)).unwrap();
    assert_eq!(get(&rt, "w", "/b").await, (200, "hello, b!".into()));
    assert_eq!(counts(&rt), (2, 0, 0), "the repaired caches serve");
  }

  // Well framed, so it reaches V8, but not a V8 cache: V8 refuses it and
  // the module compiles from source.
  store.rewrite(|key, bytes| {
    assert!(bytes.len() > 72, "a cache has a payload");
    let garbage = vec![0xa5; bytes.len() - 72];
    let mut framed = b"ISOLACC1".to_vec();
    framed.extend_from_slice(&hex(&key.source_sha256()));
    framed.extend_from_slice(&sha2::Sha256::digest(&garbage));
    framed.extend_from_slice(&garbage);
    framed
  });
  let garbage = store.snapshot();
  let rt = Runtime::new(with_store(&store)).unwrap();
  assert_eq!(get(&rt, "w", "/c").await, (200, "hello, c!".into()));
  let (hits, misses, _) = counts(&rt);
  assert_eq!((hits, misses), (2, 0), "both were handed to V8");
  eventually("V8 to refuse both", || counts(&rt).2 == 2).await;
  eventually("the caches to be replaced", || replaced(&store, &garbage)).await;
  // And the next isolate uses the repaired ones.
  rt.evict(&WorkerKey::new("w", "v1"));
  assert_eq!(get(&rt, "w", "/d").await, (200, "hello, d!".into()));
  assert_eq!(counts(&rt), (4, 0, 2));
}

async fn the_cache_holds_what_the_first_request_compiled() {
  // Two one-module workers alike but for their handler: `route` is a long
  // function that V8 compiles lazily, and only `called`'s request runs it.
  let route = (0..200)
    .map(|i| format!("  if (path === \"/r{i}\") return \"route {i}\";\n"))
    .collect::<String>();
  let module = |body: &str| {
    Bytes::from(format!(
      "function route(path) {{\n{route}  return \"none\";\n}}\n\
       export default {{ fetch(request) {{ return new Response({body}); }} }};\n"
    ))
  };
  let workers = [
    ("called", module("route(new URL(request.url).pathname)")),
    ("idle", module("\"no route\"")),
  ];
  let store = Arc::new(MemoryStore::default());
  let rt = Runtime::new(with_store(&store)).unwrap();
  let mut sizes = Vec::new();
  for (name, code) in workers {
    for _ in 0..2 {
      let (status, _) = get_of(&rt, name, "/r7", [("main.js".to_string(), code.clone())]).await;
      assert_eq!(status, 200);
    }
    let before = store.snapshot();
    eventually("the cache to be stored", || store.len() == before.len() + 1).await;
    let made = store
      .snapshot()
      .into_iter()
      .find(|(key, _)| !before.contains_key(key))
      .map(|(_, bytes)| bytes.len());
    sizes.push(made.unwrap());
  }
  // Made after the request, the cache holds `route`'s bytecode too.
  let (called, idle) = (sizes[0], sizes[1]);
  assert!(
    called > idle + 2000,
    "the cache of the worker that ran `route` ({called} bytes) should be well over the other's ({idle} bytes)"
  );
}

async fn code_seen_once_gets_no_cache() {
  let rt = Runtime::new(Config::default().threads(1).stock(0)).unwrap();
  // One request to a never-seen worker: no cache is made, even once the
  // isolate is gone (its eviction does not make them either).
  assert_eq!(get(&rt, "once", "/a").await, (200, "hello, a!".into()));
  rt.evict(&WorkerKey::new("once", "v1"));
  tokio::time::sleep(Duration::from_millis(300)).await;
  assert_eq!(
    rt.stats().code_cache.modules,
    0,
    "code run once got a cache"
  );
  assert_eq!(counts(&rt), (0, 2, 0));
  // The same code again (here under another name, as after an eviction or
  // in another version): wanted again, so its first request leaves the
  // caches, and the next isolate compiles from them.
  assert_eq!(get(&rt, "again", "/b").await, (200, "hello, b!".into()));
  eventually("both caches to be kept", || {
    rt.stats().code_cache.modules == 2
  })
  .await;
  assert_eq!(counts(&rt), (0, 4, 0));
  assert_eq!(get(&rt, "third", "/c").await, (200, "hello, c!".into()));
  assert_eq!(counts(&rt), (2, 4, 0));
}

/// Whether every cache in `store` differs from the one in `before`.
fn replaced(store: &MemoryStore, before: &HashMap<CodeCacheKey, Vec<u8>>) -> bool {
  let now = store.snapshot();
  now.len() == before.len() && now.iter().all(|(k, v)| before.get(k) != Some(v))
}

fn hex(s: &str) -> Vec<u8> {
  (0..s.len())
    .step_by(2)
    .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
    .collect()
}

pub fn trials() -> Vec<Trial> {
  vec![
    trial(
      "a_later_isolate_compiles_from_the_code_cache",
      a_later_isolate_compiles_from_the_code_cache,
    ),
    trial(
      "a_preloaded_version_leaves_its_caches_for_requests",
      a_preloaded_version_leaves_its_caches_for_requests,
    ),
    trial("a_small_module_gets_no_cache", a_small_module_gets_no_cache),
    trial(
      "the_cache_holds_what_the_first_request_compiled",
      the_cache_holds_what_the_first_request_compiled,
    ),
    trial(
      "code_caches_can_be_turned_off",
      code_caches_can_be_turned_off,
    ),
    trial(
      "a_stored_code_cache_serves_the_next_runtime",
      a_stored_code_cache_serves_the_next_runtime,
    ),
    trial(
      "a_corrupt_code_cache_only_costs_a_compile",
      a_corrupt_code_cache_only_costs_a_compile,
    ),
    trial("code_seen_once_gets_no_cache", code_seen_once_gets_no_cache),
  ]
}

fn trial<F: Future<Output = ()> + 'static>(name: &str, test: fn() -> F) -> Trial {
  Trial::test(format!("code_cache::{name}"), move || {
    tokio::runtime::Builder::new_multi_thread()
      .worker_threads(2)
      .enable_all()
      .build()
      .expect("a tokio runtime starts")
      .block_on(test());
    Ok(())
  })
}
