//! Invocations beyond HTTP through the pool: scheduled (cron) runs and
//! service bindings (fetch and RPC), with the workers in
//! `tests/fixtures/scheduled/` and `tests/fixtures/services/`.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use isola_runtime::Config;
use isola_runtime::Error;
use isola_runtime::Fairness;
use isola_runtime::InvocationRecord;
use isola_runtime::Limits;
use isola_runtime::LogRecord;
use isola_runtime::LogSink;
use isola_runtime::MeterSink;
use isola_runtime::Outcome;
use isola_runtime::Runtime;
use isola_runtime::ScheduledEvent;
use isola_runtime::ScheduledRun;
use isola_runtime::ServiceTarget;
use isola_runtime::Services;
use isola_runtime::WorkerConfig;
use libtest_mimic::Trial;

use crate::Spec;

fn fixture(group: &str, file: &str) -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("tests/fixtures")
    .join(group)
    .join(file)
}

/// A pool of one V8 thread whose logs and records the test reads, and
/// whose service names resolve to fixture files.
struct Pool {
  rt: Runtime,
  logs: Arc<Mutex<Vec<LogRecord>>>,
  records: Arc<Mutex<Vec<InvocationRecord>>>,
}

/// Service name → worker.
struct FixtureServices(HashMap<String, Spec>);

impl Services for FixtureServices {
  fn resolve(&self, _caller: &str, service: &str) -> Option<ServiceTarget> {
    let spec = self.0.get(service)?;
    Some(ServiceTarget {
      key: spec.key(),
      source: Box::new(spec.source()),
    })
  }
}

fn limits() -> Limits {
  // Generous: unoptimised test builds are slow.
  Limits::default()
    .cpu(Duration::from_secs(5))
    .wall(Duration::from_secs(20))
}

impl Pool {
  fn new(services: Vec<Spec>) -> Self {
    let logs: Arc<Mutex<Vec<LogRecord>>> = Arc::default();
    let records: Arc<Mutex<Vec<InvocationRecord>>> = Arc::default();
    let services = services
      .into_iter()
      .map(|s| (s.config.name().to_string(), s))
      .collect();
    let config = Config::default()
      .threads(1)
      .fairness(Fairness::default().enabled(false))
      .services(Arc::new(FixtureServices(services)))
      .logs({
        let logs = logs.clone();
        LogSink::new(move |r| logs.lock().unwrap().push(r))
      })
      .meter({
        let records = records.clone();
        MeterSink::new(move |r| records.lock().unwrap().push(r))
      });
    Self {
      rt: Runtime::new(config).unwrap(),
      logs,
      records,
    }
  }

  async fn scheduled(&self, spec: &Spec, event: ScheduledEvent) -> Result<ScheduledRun, Error> {
    self.rt.scheduled(&spec.key(), spec.source(), event).await
  }

  async fn request(
    &self,
    spec: &Spec,
    method: &str,
    path: &str,
    body: &str,
  ) -> (u16, http::HeaderMap, String) {
    let req = http::Request::builder()
      .method(method)
      .uri(format!("http://{}.test{path}", spec.config.name()))
      .body(isola_runtime::request_body(http_body_util::Full::new(
        bytes::Bytes::from(body.to_string()),
      )))
      .unwrap();
    let response = match self.rt.fetch(&spec.key(), spec.source(), req).await {
      Ok(r) => r,
      Err(e) => isola_runtime::error_response(&e),
    };
    let (parts, body) = response.into_parts();
    let body = body.collect_bytes().await.unwrap();
    (
      parts.status.as_u16(),
      parts.headers,
      String::from_utf8_lossy(&body).into_owned(),
    )
  }

  fn logged(&self, needle: &str) -> bool {
    self
      .logs
      .lock()
      .unwrap()
      .iter()
      .any(|r| r.message.contains(needle))
  }

  fn log_text(&self) -> String {
    let logs = self.logs.lock().unwrap();
    logs.iter().map(|r| format!("{}\n", r.message)).collect()
  }

  /// Waits (bounded) for a record of `worker`.
  async fn record_of(&self, worker: &str) -> InvocationRecord {
    let start = Instant::now();
    loop {
      let found = self
        .records
        .lock()
        .unwrap()
        .iter()
        .find(|r| &*r.worker == worker)
        .cloned();
      if let Some(r) = found {
        return r;
      }
      assert!(
        start.elapsed() < Duration::from_secs(20),
        "no invocation record of {worker}"
      );
      tokio::time::sleep(Duration::from_millis(10)).await;
    }
  }
}

fn sched(file: &str) -> Spec {
  Spec {
    file: fixture("scheduled", file),
    config: WorkerConfig::new(file.trim_end_matches(".js"))
      .var("GREETING", "hello")
      .limits(limits()),
  }
}

fn event(cron: &str) -> ScheduledEvent {
  ScheduledEvent {
    cron: cron.to_string(),
    scheduled_time: 1_700_000_000_123,
    cpu_limit: None,
  }
}

// ------------------------------------------------------------- scheduled --

async fn the_controller_carries_the_cron_string_and_nominal_time() {
  let pool = Pool::new(vec![]);
  let w = sched("controller.js");
  // Odd spacing and names: the string arrives byte for byte.
  let cron = "*/5  * * JAN-MAR MON#2";
  let run = pool.scheduled(&w, event(cron)).await.unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  assert!(!run.no_retry);
  assert_eq!(run.error, None);
  let want = format!(
    r#"{{"cron":"{cron}","scheduledTime":1700000000123,"type":"scheduled","greeting":"hello","waitUntil":"function"}}"#
  );
  assert!(pool.logged(&want), "{}", pool.log_text());
  // Billed like a request: one record, with the run's outcome.
  let record = pool.record_of("controller").await;
  assert_eq!(record.outcome, Outcome::Ok);
  // The same isolate still serves requests.
  assert_eq!(pool.request(&w, "GET", "/", "").await.2, "has both");
}

async fn no_retry_is_reported_with_the_exception() {
  let pool = Pool::new(vec![]);
  let w = sched("no_retry.js");
  let run = pool.scheduled(&w, event("0 * * * *")).await.unwrap();
  assert_eq!(run.outcome, Outcome::Exception);
  assert!(run.no_retry);
  let error = run.error.unwrap();
  assert!(error.contains("failed for good"), "{error}");
  let run = pool.scheduled(&w, event("retry me")).await.unwrap();
  assert_eq!(run.outcome, Outcome::Exception);
  assert!(!run.no_retry, "noRetry() is per run");
  assert!(run.error.unwrap().contains("failed, retry"));
}

async fn the_run_ends_when_its_wait_until_work_settles() {
  let pool = Pool::new(vec![]);
  let w = sched("wait_until.js");
  let run = pool.scheduled(&w, event("* * * * *")).await.unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  // Logged by the waitUntil promise, before the run was reported over.
  assert!(pool.logged("waitUntil work done"), "{}", pool.log_text());
}

async fn a_rejected_wait_until_makes_the_run_an_exception() {
  let pool = Pool::new(vec![]);
  let w = sched("rejects.js");
  let run = pool.scheduled(&w, event("* * * * *")).await.unwrap();
  assert_eq!(run.outcome, Outcome::Exception);
  let error = run.error.unwrap();
  assert!(error.contains("TypeError: background job broke"), "{error}");
  assert_eq!(pool.record_of("rejects").await.outcome, Outcome::Exception);
}

async fn service_worker_syntax_gets_a_scheduled_event() {
  let pool = Pool::new(vec![]);
  let w = sched("service_worker.js");
  let run = pool.scheduled(&w, event("15 3 * * *")).await.unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  assert!(run.no_retry, "event.noRetry() counts");
  assert!(
    pool.logged("sw scheduled 15 3 * * * 1700000000123 function hello"),
    "{}",
    pool.log_text()
  );
}

async fn a_class_entrypoint_runs_scheduled_with_this_env() {
  let pool = Pool::new(vec![]);
  let w = sched("class_entrypoint.js");
  let run = pool.scheduled(&w, event("@daily")).await.unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  assert!(pool.logged("class @daily hello"), "{}", pool.log_text());
}

async fn each_event_s_cpu_limit_is_honoured() {
  let pool = Pool::new(vec![]);
  let w = sched("busy.js");
  let short = ScheduledEvent {
    cpu_limit: Some(Duration::from_millis(5)),
    ..event("* * * * *")
  };
  let run = pool.scheduled(&w, short).await.unwrap();
  assert_eq!(run.outcome, Outcome::CpuLimit, "{:?}", run.error);
  let error = run.error.unwrap();
  assert!(
    error.contains("cpu limit") && error.contains("5 ms"),
    "{error}"
  );
  // The request limit (5 s here) is not what bounds a scheduled run.
  let long = ScheduledEvent {
    cpu_limit: Some(Duration::from_secs(60)),
    ..event("* * * * *")
  };
  let run = pool.scheduled(&w, long).await.unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  assert!(run.cpu > Duration::ZERO);
  assert!(pool.logged("busy done"));
  // Without one of its own, the run takes the worker's scheduled limit.
  let tight = Spec {
    file: fixture("scheduled", "busy.js"),
    config: WorkerConfig::new("busy_tight")
      .limits(limits().scheduled_cpu(Duration::from_millis(5))),
  };
  let run = pool.scheduled(&tight, event("* * * * *")).await.unwrap();
  assert_eq!(run.outcome, Outcome::CpuLimit, "{:?}", run.error);
}

async fn a_worker_without_fetch_loads_and_refuses_requests_clearly() {
  let pool = Pool::new(vec![]);
  let w = sched("only_scheduled.js");
  let run = pool.scheduled(&w, event("* * * * *")).await.unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  assert!(pool.logged("only scheduled ran"));
  let (status, _, _) = pool.request(&w, "GET", "/", "").await;
  assert_eq!(status, 500);
  assert!(
    pool.logged("Handler does not export a fetch() function."),
    "{}",
    pool.log_text()
  );
}

async fn a_worker_without_a_scheduled_handler_cannot_run_one() {
  let pool = Pool::new(vec![]);
  let w = sched("fetch_only.js");
  let err = pool.scheduled(&w, event("* * * * *")).await.unwrap_err();
  assert!(
    err
      .to_string()
      .contains("the worker has no scheduled handler"),
    "{err}"
  );
}

// ------------------------------------------------------ service bindings --

fn svc(name: &str, file: &str) -> Spec {
  Spec {
    file: fixture("services", file),
    config: WorkerConfig::new(name).limits(limits()),
  }
}

fn caller() -> Spec {
  let mut s = svc("caller", "caller.js");
  s.config = s
    .config
    .service("CALLEE", "callee", None)
    .service("NAMED", "callee", Some("Named".into()))
    .service("NOWHERE", "nowhere", None);
  s
}

fn callee() -> Spec {
  let mut s = svc("callee", "callee.js");
  s.config = s.config.var("WHO", "env of callee");
  s
}

async fn a_binding_fetch_streams_both_ways() {
  let pool = Pool::new(vec![callee()]);
  let (status, headers, body) = pool
    .request(&caller(), "POST", "/fetch", "streamed through a binding")
    .await;
  assert_eq!(body, "STREAMED THROUGH A BINDING");
  assert_eq!(status, 201);
  assert_eq!(headers["x-callee"], "yes");
  assert_eq!(headers["x-seen-from"], "caller");
  assert_eq!(headers["x-seen-url"], "http://callee.internal/upper?x=1");
  // Each side is metered on its own; the binding call is a subrequest.
  let caller = pool.record_of("caller").await;
  let callee = pool.record_of("callee").await;
  assert_eq!(caller.subrequests, 1);
  assert_eq!(callee.subrequests, 0);
  assert_eq!(callee.outcome, Outcome::Ok);
}

async fn rpc_passes_structured_clones_both_ways() {
  let pool = Pool::new(vec![callee()]);
  let (status, _, body) = pool.request(&caller(), "GET", "/rpc", "").await;
  assert_eq!(status, 200, "{body}\n{}", pool.log_text());
  let got: serde_json::Value = serde_json::from_str(&body).unwrap();
  assert_eq!(
    got,
    serde_json::json!({
      "sum": 42,
      "dateIsDate": true,
      "time": 1_700_000_000_000_i64,
      "mapIsMap": true,
      "b": { "nested": [1, 2, 3] },
      "bytesIsU8": true,
      "bytes": [1, 2, 250],
      "text": "héllo",
      "seenByCallee": [true, true, true],
    })
  );
}

async fn an_rpc_error_keeps_its_name_and_message() {
  let pool = Pool::new(vec![callee()]);
  let (_, _, body) = pool.request(&caller(), "GET", "/throw", "").await;
  let got: serde_json::Value = serde_json::from_str(&body).unwrap();
  assert_eq!(
    got,
    serde_json::json!({ "name": "QuotaError", "message": "quota gone", "isError": true })
  );
  // The callee's log has the stack; its invocation is an exception.
  assert!(pool.logged("QuotaError: quota gone"), "{}", pool.log_text());
  assert_eq!(pool.record_of("callee").await.outcome, Outcome::Exception);
}

async fn a_named_entrypoint_is_not_the_default_one() {
  let pool = Pool::new(vec![callee()]);
  let (_, _, body) = pool.request(&caller(), "GET", "/named", "").await;
  assert_eq!(body, "named / default with env of callee");
  let (_, _, body) = pool.request(&caller(), "GET", "/named-fetch", "").await;
  assert_eq!(body, "named fetch");
  let (_, _, body) = pool.request(&caller(), "GET", "/reserved", "").await;
  assert!(
    body.contains("TypeError") && body.contains("connect()"),
    "{body}"
  );
}

async fn an_rpc_only_worker_loads_and_answers_calls_but_not_requests() {
  let api = svc("api", "rpc_only.js");
  let mut c = svc("rpc_caller", "rpc_caller.js");
  c.config = c.config.service("API", "api", Some("Api".into()));
  let pool = Pool::new(vec![api.clone()]);
  let (status, _, body) = pool.request(&c, "GET", "/", "").await;
  assert_eq!((status, body.as_str()), (200, "pong to caller"));
  let (status, _, _) = pool.request(&api, "GET", "/", "").await;
  assert_eq!(status, 500);
  assert!(pool.logged("Handler does not export a fetch() function."));
}

async fn a_binding_to_an_unknown_service_fails_at_call_time() {
  let pool = Pool::new(vec![callee()]);
  let (status, _, body) = pool.request(&caller(), "GET", "/missing", "").await;
  assert_eq!(status, 502);
  assert!(body.contains("service \"nowhere\" was not found"), "{body}");
}

async fn binding_calls_count_as_subrequests() {
  let mut c = caller();
  c.config = c.config.limits(limits().subrequests(3));
  let pool = Pool::new(vec![callee()]);
  let (status, _, body) = pool.request(&c, "GET", "/many?n=3", "").await;
  assert_eq!((status, body.as_str()), (200, "made 3"));
  let (status, _, body) = pool.request(&c, "GET", "/many?n=4", "").await;
  assert_eq!(status, 503, "{body}");
  assert!(body.contains("subrequest limit"), "{body}");
}

async fn a_call_is_dropped_when_its_caller_ends() {
  let pool = Pool::new(vec![callee()]);
  let (status, _, body) = pool.request(&caller(), "GET", "/forget", "").await;
  assert_eq!((status, body.as_str()), (200, "forgot"));
  // The callee's `slow()` would take 15 s; it ends with its caller.
  let start = Instant::now();
  loop {
    let canceled = pool
      .records
      .lock()
      .unwrap()
      .iter()
      .any(|r| &*r.worker == "callee" && r.outcome == Outcome::Canceled);
    if canceled {
      break;
    }
    assert!(
      start.elapsed() < Duration::from_secs(10),
      "the callee's invocation was not canceled"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
  }
}

async fn a_chain_of_32_works_and_33_fails() {
  let mut chain = svc("chain", "chain.js");
  chain.config = chain.config.service("SELF", "chain", None);
  let pool = Pool::new(vec![chain.clone()]);
  let (status, _, body) = pool.request(&chain, "GET", "/?n=32", "").await;
  assert_eq!((status, body.as_str()), (200, "bottom"));
  let (status, _, body) = pool.request(&chain, "GET", "/?n=33", "").await;
  assert_eq!(status, 508, "{body}");
  // The 32nd invocation's call is the one refused.
  assert!(
    body.contains("failed with 2 left")
      && body.contains("service binding chain deeper than 32 workers"),
    "{body}"
  );
}

/// Cost of one call through a binding vs one in the same isolate; prints
/// medians, asserts nothing (`--ignored`, best in a release build).
async fn bench_binding_calls() {
  let mut bench = svc("bench", "bench.js");
  bench.config = bench
    .config
    .limits(limits().subrequests(0))
    .service("SELF", "bench", None)
    .service("PEER", "bench_peer", None);
  let mut peer = svc("bench_peer", "bench.js");
  peer.config = peer.config.limits(limits().subrequests(0));
  let pool = Pool::new(vec![bench.clone(), peer]);
  // Warm up: the isolate is loaded and its code compiled.
  pool.request(&bench, "GET", "/?mode=rpc&n=100", "").await;
  let n = 1000;
  for mode in ["direct", "rpc", "rpc-peer", "fetch", "fetch-peer"] {
    let start = Instant::now();
    let (status, _, body) = pool
      .request(&bench, "GET", &format!("/?mode={mode}&n={n}"), "")
      .await;
    let mean = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    assert_eq!(status, 200, "{body}");
    // The worker's clock stands still within a turn, so its median of a
    // direct call reads 0; the mean is measured from outside.
    println!("binding bench {mode}: in JS {body}; mean {mean:.1} us per call");
  }
}

pub fn trials() -> Vec<Trial> {
  let mut trials = vec![
    trial(
      "scheduled::the_controller_carries_the_cron_string_and_nominal_time",
      the_controller_carries_the_cron_string_and_nominal_time,
    ),
    trial(
      "scheduled::no_retry_is_reported_with_the_exception",
      no_retry_is_reported_with_the_exception,
    ),
    trial(
      "scheduled::the_run_ends_when_its_wait_until_work_settles",
      the_run_ends_when_its_wait_until_work_settles,
    ),
    trial(
      "scheduled::a_rejected_wait_until_makes_the_run_an_exception",
      a_rejected_wait_until_makes_the_run_an_exception,
    ),
    trial(
      "scheduled::service_worker_syntax_gets_a_scheduled_event",
      service_worker_syntax_gets_a_scheduled_event,
    ),
    trial(
      "scheduled::a_class_entrypoint_runs_scheduled_with_this_env",
      a_class_entrypoint_runs_scheduled_with_this_env,
    ),
    trial(
      "scheduled::each_event_s_cpu_limit_is_honoured",
      each_event_s_cpu_limit_is_honoured,
    ),
    trial(
      "scheduled::a_worker_without_fetch_loads_and_refuses_requests_clearly",
      a_worker_without_fetch_loads_and_refuses_requests_clearly,
    ),
    trial(
      "scheduled::a_worker_without_a_scheduled_handler_cannot_run_one",
      a_worker_without_a_scheduled_handler_cannot_run_one,
    ),
    trial(
      "services::a_binding_fetch_streams_both_ways",
      a_binding_fetch_streams_both_ways,
    ),
    trial(
      "services::rpc_passes_structured_clones_both_ways",
      rpc_passes_structured_clones_both_ways,
    ),
    trial(
      "services::an_rpc_error_keeps_its_name_and_message",
      an_rpc_error_keeps_its_name_and_message,
    ),
    trial(
      "services::a_named_entrypoint_is_not_the_default_one",
      a_named_entrypoint_is_not_the_default_one,
    ),
    trial(
      "services::a_binding_to_an_unknown_service_fails_at_call_time",
      a_binding_to_an_unknown_service_fails_at_call_time,
    ),
    trial(
      "services::binding_calls_count_as_subrequests",
      binding_calls_count_as_subrequests,
    ),
    trial(
      "services::a_chain_of_32_works_and_33_fails",
      a_chain_of_32_works_and_33_fails,
    ),
    trial(
      "services::an_rpc_only_worker_loads_and_answers_calls_but_not_requests",
      an_rpc_only_worker_loads_and_answers_calls_but_not_requests,
    ),
    trial(
      "services::a_call_is_dropped_when_its_caller_ends",
      a_call_is_dropped_when_its_caller_ends,
    ),
  ];
  trials.push(trial("services::bench_binding_calls", bench_binding_calls).with_ignored_flag(true));
  trials
}

fn trial<F: Future<Output = ()> + 'static>(name: &str, test: fn() -> F) -> Trial {
  crate::async_trial(&format!("events::{name}"), test)
}
