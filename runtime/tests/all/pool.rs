//! The isolate pool under load and abuse: real isolates on real V8 threads.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use isola_runtime::Bundle;
use isola_runtime::Config;
use isola_runtime::Error;
use isola_runtime::Fairness;
use isola_runtime::Limits;
use isola_runtime::Metrics;
use isola_runtime::Outcome;
use isola_runtime::Runtime;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;
use libtest_mimic::Trial;

fn source(
  name: &str,
  code: &str,
  limits: Limits,
) -> impl FnOnce() -> Result<(Bundle, WorkerConfig), Error> {
  let bundle = Bundle::from_modules(
    "worker.js",
    [("worker.js".to_string(), Bytes::from(code.to_string()))],
  );
  let config = WorkerConfig::new(name).limits(limits);
  move || Ok((bundle?, config))
}

async fn get(rt: &Runtime, name: &str, code: &str, limits: Limits, path: &str) -> (u16, String) {
  let key = WorkerKey::new(name, "v1");
  let req = isola_runtime::empty_request(&format!("http://{name}.test{path}"));
  let response = match rt.fetch(&key, source(name, code, limits), req).await {
    Ok(r) => r,
    Err(e) => isola_runtime::error_response(&e),
  };
  let status = response.status().as_u16();
  let body = response.into_body().collect_bytes().await.unwrap();
  (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
  let start = Instant::now();
  while !f() {
    assert!(
      start.elapsed() < Duration::from_secs(20),
      "timed out waiting for {what}"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
  }
}

fn rss_bytes() -> u64 {
  let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
  let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
  pages * 4096
}

const GOOD: &str = r#"export default { fetch() { return new Response("good"); } };"#;

const BAD: &str = r#"
const kept = [];
setInterval(() => {}, 1000);
export default {
  async fetch(request) {
    switch (new URL(request.url).pathname) {
      case "/spin": for (;;) {}
      case "/hog": for (;;) kept.push(new Uint8Array(4 << 20).fill(7));
      case "/hang": return new Promise(() => {});
      case "/objects": for (;;) kept.push({ v: Math.random(), s: "z".repeat(100) });
    }
    return new Response("bad is fine");
  },
};
"#;

async fn a_misbehaving_tenant_does_not_stop_its_neighbours() {
  // One V8 thread: both tenants share it, the hardest case. Fairness off:
  // this is about each limit ending its invocation, every time.
  let rt = Runtime::new(
    Config::default()
      .threads(1)
      .fairness(Fairness::default().enabled(false)),
  )
  .unwrap();
  // CPU room enough for the memory abusers to reach the memory limit first
  // in unoptimised test builds.
  let limits = Limits::default()
    .cpu(Duration::from_millis(400))
    .memory_mib(64)
    .wall(Duration::from_millis(1500));
  assert_eq!(
    get(&rt, "good", GOOD, limits.clone(), "/").await,
    (200, "good".into())
  );

  // Heap growth of small objects may exhaust its CPU allowance in garbage
  // collection before it reaches the memory limit; either stop is right here
  // (the `lim_memory_objects` fixture pins the memory limit down).
  for (path, wants) in [
    ("/spin", &["cpu limit"][..]),
    ("/hog", &["memory limit"][..]),
    ("/objects", &["memory limit", "cpu limit"][..]),
    ("/hang", &["wall-clock limit"][..]),
  ] {
    let abuse = {
      let rt = rt.clone();
      let limits = limits.clone();
      tokio::spawn(async move { get(&rt, "bad", BAD, limits, path).await })
    };
    // The neighbour keeps answering while the abuse runs...
    for _ in 0..5 {
      assert_eq!(
        get(&rt, "good", GOOD, limits.clone(), "/").await,
        (200, "good".into())
      );
    }
    let (status, body) = abuse.await.unwrap();
    assert_eq!(status, 503, "{path}: {body}");
    assert!(wants.iter().any(|w| body.contains(w)), "{path}: {body}");
    // ...and after it; the abuser itself gets a fresh isolate.
    assert_eq!(
      get(&rt, "good", GOOD, limits.clone(), "/").await,
      (200, "good".into())
    );
    assert_eq!(
      get(&rt, "bad", BAD, limits.clone(), "/").await,
      (200, "bad is fine".into())
    );
  }
}

const SPIN: &str = r#"
export default {
  fetch(request) {
    if (new URL(request.url).pathname === "/ok") return new Response("fine");
    for (;;) {}
  },
};
"#;

/// How many invocations of `worker` ended with `outcome`, per the metrics.
fn invocations(metrics: &Metrics, worker: &str, outcome: &str) -> u64 {
  let needle = format!(r#"isola_invocations_total{{worker="{worker}",outcome="{outcome}"}} "#);
  metrics
    .encode(None)
    .lines()
    .find_map(|l| l.strip_prefix(&needle))
    .map_or(0, |n| n.trim().parse().unwrap())
}

/// A one-thread pool with `fairness` (no hold) where worker `spin` has just
/// been ended by its 50 ms CPU limit, and the ledger has booked it.
async fn after_one_kill(fairness: Fairness) -> (Runtime, Metrics, Limits) {
  let metrics = Metrics::new();
  let rt = Runtime::new(
    Config::default()
      .threads(1)
      .meter(metrics.sink())
      .fairness(fairness.hold(Duration::ZERO)),
  )
  .unwrap();
  let limits = Limits::default().cpu(Duration::from_millis(50));
  let (status, body) = get(&rt, "spin", SPIN, limits.clone(), "/").await;
  assert_eq!(status, 503);
  assert!(body.contains("cpu limit"), "{body}");
  // The kill is booked when its record arrives.
  eventually("the kill to be metered", || {
    invocations(&metrics, "spin", "cpu_limit") == 1
  })
  .await;
  (rt, metrics, limits)
}

/// A worker whose invocations keep hitting the CPU limit is throttled: its
/// requests are answered 503 naming the limit, with `Retry-After`, without
/// entering its isolate; its neighbour on the same thread sees no error.
async fn an_abusive_worker_is_throttled_without_running_and_its_neighbour_is_unaffected() {
  // Throttled at the first kill, for long enough to see it.
  let (rt, metrics, limits) = after_one_kill(
    Fairness::default()
      .burst(Duration::ZERO)
      .allowance(Duration::from_millis(1)),
  )
  .await;
  let cold_starts = rt.stats().cold_starts;

  let neighbour = {
    let (rt, limits) = (rt.clone(), limits.clone());
    tokio::spawn(async move {
      let mut answers = Vec::new();
      for _ in 0..20 {
        answers.push(get(&rt, "good", GOOD, limits.clone(), "/").await);
      }
      answers
    })
  };
  for path in ["/", "/", "/ok", "/"] {
    let key = WorkerKey::new("spin", "v1");
    let req = isola_runtime::empty_request(&format!("http://spin.test{path}"));
    let err = rt
      .fetch(&key, source("spin", SPIN, limits.clone()), req)
      .await
      .expect_err("a throttled worker does not run");
    assert!(err.throttled().is_some(), "{err}");
    let response = isola_runtime::error_response(&err);
    assert_eq!(response.status(), 503);
    let retry: u64 = response.headers()["retry-after"]
      .to_str()
      .unwrap()
      .parse()
      .unwrap();
    assert!(retry >= 1, "{retry}");
    let body = response.into_body().collect_bytes().await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(
      body.contains("throttled") && body.contains("CPU limit"),
      "{body}"
    );
    metrics.record_throttled("spin");
  }
  for answer in neighbour.await.unwrap() {
    assert_eq!(answer, (200, "good".into()));
  }
  // Nothing of the throttled requests reached an isolate: no invocation
  // record, no new isolate.
  assert_eq!(invocations(&metrics, "spin", "cpu_limit"), 1);
  assert_eq!(invocations(&metrics, "spin", "ok"), 0);
  assert_eq!(
    rt.stats().cold_starts,
    cold_starts + 1,
    "only the neighbour loaded"
  );
  assert_eq!(rt.stats().throttled_workers, 1);
  let text = metrics.encode(Some(rt.stats()));
  assert!(
    text.contains(r#"isola_throttled_requests_total{worker="spin"} 4"#),
    "{text}"
  );
}

/// After one kill a worker runs on the quarantine thread, one invocation at
/// a time; once its debt drains and it stays clean it is admitted normally
/// again, on the request threads.
async fn a_worker_that_stops_misbehaving_is_admitted_normally_again() {
  // Not throttled at one kill (burst 1 s); the debt drains at 100 ms/s, so
  // a 50 ms kill is forgiven after about half a second.
  let (rt, metrics, limits) = after_one_kill(
    Fairness::default()
      .burst(Duration::from_secs(1))
      .allowance(Duration::from_millis(100))
      .forgive_after(Duration::ZERO),
  )
  .await;
  // On probation: it runs, in quarantine.
  assert_eq!(
    get(&rt, "spin", SPIN, limits.clone(), "/ok").await,
    (200, "fine".into())
  );
  assert_eq!(rt.stats().quarantined, 1);
  // Its debt drains; then it runs next to everyone else again: a fresh
  // isolate on the request thread, while the quarantined one sits idle.
  let mut answered = false;
  for _ in 0..200 {
    let cold = rt.stats().cold_starts;
    assert_eq!(
      get(&rt, "spin", SPIN, limits.clone(), "/ok").await,
      (200, "fine".into())
    );
    if rt.stats().cold_starts > cold {
      answered = true;
      break;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
  }
  assert_eq!(rt.stats().quarantined, 1);
  assert!(answered, "the worker never left quarantine");
  assert_eq!(invocations(&metrics, "spin", "cpu_limit"), 1);
}

async fn lru_evicts_by_count_and_idle_ttl() {
  let rt = Runtime::new(
    Config::default()
      .threads(1)
      .max_isolates(3)
      .idle_ttl(Duration::from_millis(600)),
  )
  .unwrap();
  for i in 0..5 {
    let name = format!("w{i}");
    assert_eq!(get(&rt, &name, GOOD, Limits::default(), "/").await.0, 200);
  }
  let stats = rt.stats();
  assert_eq!(stats.isolates, 3);
  assert_eq!(stats.evictions, 2);
  // w0 and w1 went first (least recently used): using w0 loads it again.
  assert_eq!(get(&rt, "w0", GOOD, Limits::default(), "/").await.0, 200);
  assert_eq!(rt.stats().cold_starts, 6);
  eventually("idle isolates to expire", || rt.stats().isolates == 0).await;
  eventually("expired isolates to be disposed", || {
    rt.stats().running == 0
  })
  .await;
}

async fn memory_returns_after_isolates_are_disposed() {
  let rt = Runtime::new(Config::default().threads(1).stock(0)).unwrap();
  let hold = r#"
    const kept = new Uint8Array(40 << 20).fill(1);
    export default { fetch() { return new Response(String(kept.length)); } };
  "#;
  let before = rss_bytes();
  for i in 0..8 {
    assert_eq!(
      get(&rt, &format!("m{i}"), hold, Limits::default(), "/")
        .await
        .0,
      200
    );
  }
  let peak = rss_bytes();
  assert!(
    peak > before + 250 * (1 << 20),
    "8 × 40 MiB resident: {before} → {peak}"
  );
  for i in 0..8 {
    rt.evict(&WorkerKey::new(format!("m{i}"), "v1"));
  }
  eventually("isolates to be disposed", || rt.stats().running == 0).await;
  let after = rss_bytes();
  assert!(
    after + 200 * (1 << 20) < peak,
    "memory came back: peak {peak}, after disposal {after}"
  );
}

async fn every_invocation_is_metered() {
  let metrics = Metrics::new();
  let rt = Runtime::new(Config::default().threads(1).meter(metrics.sink())).unwrap();
  let code = r#"
    export default {
      fetch(request) {
        if (new URL(request.url).pathname === "/spin") for (;;) {}
        let x = 0;
        for (let i = 0; i < 1e5; i++) x += i;
        return new Response("12345");
      },
    };
  "#;
  let limits = Limits::default().cpu(Duration::from_millis(30));
  for _ in 0..3 {
    assert_eq!(
      get(&rt, "metered", code, limits.clone(), "/").await,
      (200, "12345".into())
    );
  }
  assert_eq!(
    get(&rt, "metered", code, limits.clone(), "/spin").await.0,
    503
  );
  let records: Arc<Mutex<Vec<_>>> = Arc::default();
  eventually("four records", || {
    let usage = metrics.drain_usage();
    records.lock().unwrap().extend(usage);
    records
      .lock()
      .unwrap()
      .iter()
      .map(|(_, _, t)| t.requests)
      .sum::<u64>()
      == 4
  })
  .await;
  let records = records.lock().unwrap();
  let errors: u64 = records.iter().map(|(_, _, t)| t.errors).sum();
  let egress: u64 = records.iter().map(|(_, _, t)| t.egress_bytes).sum();
  let cpu: u64 = records.iter().map(|(_, _, t)| t.cpu_us).sum();
  assert_eq!(errors, 1);
  assert_eq!(egress, 15);
  assert!(
    cpu >= 30_000,
    "the spinning invocation alone used its 30 ms: {cpu} µs"
  );
  let text = metrics.encode(Some(rt.stats()));
  assert!(
    text.contains(r#"isola_invocations_total{worker="metered",outcome="ok"} 3"#),
    "{text}"
  );
  assert!(
    text.contains(&format!(
      r#"isola_invocations_total{{worker="metered",outcome="{}"}} 1"#,
      Outcome::CpuLimit.as_str()
    )),
    "{text}"
  );
}

async fn a_busy_worker_scales_out_to_another_isolate() {
  let rt = Runtime::new(Config::default().threads(2).max_concurrency(1)).unwrap();
  let slow = r#"export default { async fetch() { await new Promise((r) => setTimeout(r, 300)); return new Response("slow"); } };"#;
  let a = {
    let rt = rt.clone();
    tokio::spawn(async move { get(&rt, "slow", slow, Limits::default(), "/").await })
  };
  let b = {
    let rt = rt.clone();
    tokio::spawn(async move { get(&rt, "slow", slow, Limits::default(), "/").await })
  };
  assert_eq!(a.await.unwrap().0, 200);
  assert_eq!(b.await.unwrap().0, 200);
  assert_eq!(
    rt.stats().cold_starts,
    2,
    "two isolates for two concurrent requests"
  );
}

/// A worker whose requests keep arriving on both V8 threads (each thread
/// accepts its own connections) gets an instance on each: the thread
/// without one loads a replica rather than sending every request across to
/// the other thread and back. One replica, not one per request.
async fn a_worker_busy_on_two_threads_gets_an_instance_on_each() {
  let rt = Runtime::new(Config::default().threads(2).stock(0)).unwrap();
  assert_eq!(get(&rt, "both", GOOD, Limits::default(), "/").await.0, 200);
  assert_eq!(rt.stats().cold_starts, 1);
  let rounds = |rt: &Runtime| {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let caller = rt.clone();
    rt.spawn_on_each_thread(move |thread| {
      let (rt, tx) = (caller.clone(), tx.clone());
      async move {
        for _ in 0..300 {
          let (status, body) = get(&rt, "both", GOOD, Limits::default(), "/").await;
          assert_eq!((status, body.as_str()), (200, "good"));
        }
        let _ = tx.send(thread);
      }
    });
    async move {
      let mut threads = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
      threads.sort();
      assert_eq!(threads, [0, 1]);
    }
  };
  rounds(&rt).await;
  eventually("a replica on the other thread", || {
    rt.stats().cold_starts == 2
  })
  .await;
  assert_eq!(rt.stats().isolates, 2);
  rounds(&rt).await;
  let stats = rt.stats();
  assert_eq!(
    (stats.cold_starts, stats.isolates),
    (2, 2),
    "each thread has its instance: no more loads"
  );
}

/// A request whose caller goes away (a client that disconnected) gives its
/// place in the isolate back: dropped requests must not fill the isolate's
/// concurrency and make the pool start another isolate for the next one.
async fn a_dropped_request_gives_its_place_back() {
  let rt = Runtime::new(Config::default().threads(1).max_concurrency(2)).unwrap();
  let hang = r#"export default { fetch(request) {
    return new URL(request.url).pathname === "/hang"
      ? new Promise((r) => setTimeout(() => r(new Response("late")), 30000))
      : new Response("ok");
  } };"#;
  let limits = Limits::default().wall(Duration::from_secs(60));
  assert_eq!(get(&rt, "drop", hang, limits.clone(), "/").await.0, 200);
  for _ in 0..3 {
    let request = {
      let (rt, limits) = (rt.clone(), limits.clone());
      tokio::spawn(async move { get(&rt, "drop", hang, limits, "/hang").await })
    };
    // Long enough for the request to reach its isolate.
    tokio::time::sleep(Duration::from_millis(200)).await;
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
  }
  assert_eq!(
    get(&rt, "drop", hang, limits, "/").await,
    (200, "ok".into())
  );
  assert_eq!(
    rt.stats().cold_starts,
    1,
    "one isolate serves every request; the dropped ones left no place taken"
  );
}

async fn unseen_workers_load_into_ready_isolates() {
  let rt = Runtime::new(Config::default().threads(1).stock(2)).unwrap();
  eventually("the stock to fill", || rt.stats().stock == 2).await;
  assert_eq!(get(&rt, "fresh", GOOD, Limits::default(), "/").await.0, 200);
  let stats = rt.stats();
  assert_eq!((stats.cold_starts, stats.stock_hits), (1, 1));
  eventually("the stock to refill", || rt.stats().stock == 2).await;
}

/// The body of the first reply of worker `name` (one module, `code`),
/// loaded into the one isolate of the stock once that has waited `idle`
/// after its warm-up.
async fn first_reply_from_a_ready_isolate(
  name: &str,
  code: &'static str,
  config: WorkerConfig,
  idle: Duration,
) -> String {
  let rt = Runtime::new(Config::default().threads(1).stock(1)).unwrap();
  eventually("the stock to fill", || rt.stats().stock == 1).await;
  tokio::time::sleep(idle).await;
  let key = WorkerKey::new(name, "v1");
  let bundle = Bundle::from_modules("worker.js", [("worker.js".to_string(), Bytes::from(code))]);
  let req = isola_runtime::empty_request(&format!("http://{name}.test/"));
  let response = rt
    .fetch(&key, move || Ok((bundle?, config)), req)
    .await
    .unwrap();
  let body = response.into_body().collect_bytes().await.unwrap();
  assert_eq!(
    rt.stats().stock_hits,
    1,
    "the worker was loaded into the ready isolate"
  );
  String::from_utf8_lossy(&body).into_owned()
}

/// A ready isolate ran the init path once with no worker (its warm-up):
/// the worker loaded into it still sees exactly its own bindings.
async fn a_ready_isolate_gives_its_worker_only_its_own_bindings() {
  let code = r#"export default {
    fetch(request, env) {
      return new Response(JSON.stringify({ keys: Object.keys(env), greeting: env.GREETING }));
    },
  };"#;
  let config = WorkerConfig::new("ready").var("GREETING", "hello");
  assert_eq!(
    first_reply_from_a_ready_isolate("ready", code, config, Duration::ZERO).await,
    r#"{"keys":["GREETING"],"greeting":"hello"}"#
  );
}

/// A ready isolate set up its clock in its warm-up, long before a worker
/// comes: the worker's `performance.now()` still counts from its own start.
async fn a_ready_isolate_starts_its_workers_clock_afresh() {
  let code = r#"const atStart = performance.now();
  export default {
    fetch() {
      return new Response(JSON.stringify({ atStart, now: Date.now() }));
    },
  };"#;
  let idle = Duration::from_millis(1500);
  let body =
    first_reply_from_a_ready_isolate("clock", code, WorkerConfig::new("clock"), idle).await;
  let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
  let at_start = seen["atStart"].as_f64().unwrap();
  assert!(
    at_start >= 0.0 && at_start < idle.as_millis() as f64,
    "performance.now() at the worker's top level was {at_start} ms: it counts from the isolate's warm-up, not the worker's start"
  );
  let wall = std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .unwrap()
    .as_millis() as f64;
  let now = seen["now"].as_f64().unwrap();
  assert!(
    (wall - now).abs() < 60_000.0,
    "Date.now() {now} is the wall clock's {wall}"
  );
}

/// The pool tests, each on its own two-thread tokio runtime (as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` gave them).
pub fn trials() -> Vec<Trial> {
  vec![
    trial(
      "a_misbehaving_tenant_does_not_stop_its_neighbours",
      a_misbehaving_tenant_does_not_stop_its_neighbours,
    ),
    trial(
      "an_abusive_worker_is_throttled_without_running_and_its_neighbour_is_unaffected",
      an_abusive_worker_is_throttled_without_running_and_its_neighbour_is_unaffected,
    ),
    trial(
      "a_worker_that_stops_misbehaving_is_admitted_normally_again",
      a_worker_that_stops_misbehaving_is_admitted_normally_again,
    ),
    trial(
      "lru_evicts_by_count_and_idle_ttl",
      lru_evicts_by_count_and_idle_ttl,
    ),
    trial("every_invocation_is_metered", every_invocation_is_metered),
    trial(
      "isolates_taking_turns_on_a_thread_keep_their_own_state",
      isolates_taking_turns_on_a_thread_keep_their_own_state,
    ),
    trial(
      "a_ready_isolate_starts_its_workers_clock_afresh",
      a_ready_isolate_starts_its_workers_clock_afresh,
    ),
    trial(
      "a_busy_worker_scales_out_to_another_isolate",
      a_busy_worker_scales_out_to_another_isolate,
    ),
    trial(
      "a_worker_busy_on_two_threads_gets_an_instance_on_each",
      a_worker_busy_on_two_threads_gets_an_instance_on_each,
    ),
    trial(
      "a_dropped_request_gives_its_place_back",
      a_dropped_request_gives_its_place_back,
    ),
    trial(
      "unseen_workers_load_into_ready_isolates",
      unseen_workers_load_into_ready_isolates,
    ),
    trial(
      "a_ready_isolate_gives_its_worker_only_its_own_bindings",
      a_ready_isolate_gives_its_worker_only_its_own_bindings,
    ),
    trial(
      "a_tiny_memory_limit_is_a_workers_error_not_the_processes",
      a_tiny_memory_limit_is_a_workers_error_not_the_processes,
    ),
    trial(
      "a_requests_future_carries_it_by_pointer",
      a_requests_future_carries_it_by_pointer,
    ),
  ]
}

/// The server moves each request's future several times (into hyper's
/// slot for it, among others), copying it whole each time: the request
/// (~240 bytes) travels boxed in a `FetchRequest`, so the pool's future
/// holds a pointer to it, not the request once per nested future (it was
/// 1,304 bytes here, 424 since).
async fn a_requests_future_carries_it_by_pointer() {
  let rt = Runtime::new(Config::default().threads(1).stock(0)).unwrap();
  let key = WorkerKey::new("sized", "v1");
  let request =
    isola_runtime::FetchRequest::new(isola_runtime::empty_request("http://a.test/"), None);
  // A source as the edge's router passes: an `Arc` of what it loads from.
  let version = Arc::new(source("sized", GOOD, Limits::default()));
  let source = move || -> Result<(Bundle, WorkerConfig), Error> {
    let _ = &version;
    unreachable!("the future is never polled")
  };
  let future = rt.fetch_from(&key, source, request);
  let request_size = std::mem::size_of::<http::Request<isola_runtime::RequestBody>>();
  assert!(
    std::mem::size_of_val(&future) < 2 * request_size,
    "{} bytes, a request is {request_size}",
    std::mem::size_of_val(&future)
  );
}

/// Isolates sharing one V8 thread take turns, and the one used last stays
/// entered between uses: each still sees only its own globals, and evicting
/// (disposing) the one used last, or one made while it was entered, leaves
/// the others serving.
async fn isolates_taking_turns_on_a_thread_keep_their_own_state() {
  let rt = Runtime::new(Config::default().threads(1).stock(1)).unwrap();
  let counter = |name: &str| {
    format!(
      r#"let n = 0; globalThis.owner = "{name}";
        export default {{ fetch() {{ n += 1; return new Response(`${{globalThis.owner}} ${{n}}`); }} }};"#
    )
  };
  let (a, b, c) = (counter("a"), counter("b"), counter("c"));
  let hit = |name: &'static str, code: &str| {
    let code = code.to_string();
    let rt = &rt;
    async move { get(rt, name, &code, Limits::default(), "/").await.1 }
  };
  assert_eq!(hit("a", &a).await, "a 1");
  assert_eq!(hit("b", &b).await, "b 1");
  assert_eq!(hit("a", &a).await, "a 2");
  assert_eq!(hit("a", &a).await, "a 3");
  assert_eq!(hit("c", &c).await, "c 1");
  assert_eq!(hit("b", &b).await, "b 2");
  // `b` was used last: it is disposed while still entered.
  rt.evict(&WorkerKey::new("b", "v1"));
  eventually("b's isolate to be disposed", || rt.stats().running == 2).await;
  assert_eq!(hit("c", &c).await, "c 2");
  assert_eq!(hit("a", &a).await, "a 4");
  // A fresh isolate for `b`, from the stock made meanwhile.
  assert_eq!(hit("b", &b).await, "b 1");
  rt.evict(&WorkerKey::new("a", "v1"));
  assert_eq!(hit("c", &c).await, "c 3");
  assert_eq!(hit("b", &b).await, "b 2");
}

/// A version may ask for 2 MiB; without a ready isolate (the upload check
/// has none) its isolate is made with that limit. V8 must not abort the
/// process: the worker runs within it or stops with a memory error, and
/// the node goes on.
async fn a_tiny_memory_limit_is_a_workers_error_not_the_processes() {
  let rt = Runtime::new(Config::default().threads(1).stock(0)).unwrap();
  for mib in [1, 2, 4] {
    let limits = Limits::default().memory_mib(mib);
    // Below what a started isolate holds, the worker cannot start (503);
    // else it answers, and a hog is stopped at its limit.
    let (status, body) = get(&rt, &format!("tiny-{mib}"), GOOD, limits.clone(), "/").await;
    assert!(
      (status, body.as_str()) == (200, "good") || status == 503,
      "{mib} MiB: {status} {body}"
    );
    let (status, body) = get(&rt, &format!("hog-{mib}"), BAD, limits, "/hog").await;
    assert!(
      status == 503 || body.contains("memory limit"),
      "{mib} MiB: {status} {body}"
    );
  }
  assert_eq!(
    get(&rt, "good", GOOD, Limits::default(), "/").await,
    (200, "good".into())
  );
}

/// Tests that measure the whole process (RSS), so they run before the
/// others, one at a time.
pub fn exclusive_trials() -> Vec<Trial> {
  vec![trial(
    "memory_returns_after_isolates_are_disposed",
    memory_returns_after_isolates_are_disposed,
  )]
}

fn trial<F: Future<Output = ()> + 'static>(name: &str, test: fn() -> F) -> Trial {
  Trial::test(format!("pool::{name}"), move || {
    tokio::runtime::Builder::new_multi_thread()
      .worker_threads(2)
      .enable_all()
      .build()
      .expect("a tokio runtime starts")
      .block_on(test());
    Ok(())
  })
}
