//! Trace events through the pool: one per invocation of each kind (fetch,
//! scheduled, queue, RPC), with its own logs when two interleave in one
//! isolate, logs cut at the byte cap, and uncaught exceptions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use isola_proto::queue::Batch;
use isola_proto::queue::ContentType;
use isola_proto::queue::Message;
use isola_proto::trace::EventInfo;
use isola_proto::trace::MAX_LOG_BYTES;
use isola_runtime::Bundle;
use isola_runtime::Config;
use isola_runtime::Error;
use isola_runtime::Fairness;
use isola_runtime::Limits;
use isola_runtime::LogRecord;
use isola_runtime::LogSink;
use isola_runtime::Runtime;
use isola_runtime::ScheduledEvent;
use isola_runtime::ServiceTarget;
use isola_runtime::Services;
use isola_runtime::TraceEvent;
use isola_runtime::TraceSink;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;
use libtest_mimic::Trial;

/// A worker of a test: its name and its one module's source.
#[derive(Clone)]
struct Spec {
  name: &'static str,
  source: &'static str,
}

impl Spec {
  fn key(&self) -> WorkerKey {
    WorkerKey::new(self.name, "v1")
  }

  fn source(&self) -> impl FnOnce() -> Result<(Bundle, WorkerConfig), Error> + Send + 'static {
    let spec = self.clone();
    move || {
      let bundle = Bundle::from_modules(
        "worker.js",
        [(
          "worker.js".to_string(),
          Bytes::from_static(spec.source.as_bytes()),
        )],
      )?;
      let config = WorkerConfig::new(spec.name)
        .version("v1")
        .limits(
          // Generous: unoptimised test builds are slow.
          Limits::default()
            .cpu(Duration::from_secs(5))
            .wall(Duration::from_secs(20)),
        )
        .service("CALLEE", "callee", Some("Api".into()));
      Ok((bundle, config))
    }
  }
}

struct Named(HashMap<&'static str, Spec>);

impl Services for Named {
  fn resolve(&self, _caller: &str, service: &str) -> Option<ServiceTarget> {
    let spec = self.0.get(service)?;
    Some(ServiceTarget {
      key: spec.key(),
      source: Box::new(spec.source()),
    })
  }
}

/// A pool of one V8 thread that keeps every trace event and log line.
struct Pool {
  rt: Runtime,
  events: Arc<Mutex<Vec<TraceEvent>>>,
  logs: Arc<Mutex<Vec<LogRecord>>>,
}

impl Pool {
  fn new(services: &[Spec]) -> Self {
    let events: Arc<Mutex<Vec<TraceEvent>>> = Arc::default();
    let logs: Arc<Mutex<Vec<LogRecord>>> = Arc::default();
    let services = services.iter().map(|s| (s.name, s.clone())).collect();
    let config = Config::default()
      .threads(1)
      .fairness(Fairness::default().enabled(false))
      .services(Arc::new(Named(services)))
      .logs({
        let logs = logs.clone();
        LogSink::new(move |r| logs.lock().unwrap().push(r))
      })
      .trace({
        let events = events.clone();
        TraceSink::new(move |e| events.lock().unwrap().push(e.into_event()))
      });
    Self {
      rt: Runtime::new(config).unwrap(),
      events,
      logs,
    }
  }

  async fn get(&self, spec: &Spec, path: &str) -> (u16, String) {
    let req = http::Request::get(format!("http://{}.test{path}", spec.name))
      .header("user-agent", "trace-test/1")
      .header("authorization", "Bearer not-for-traces")
      .body(isola_runtime::request_body(
        http_body_util::Empty::<Bytes>::new(),
      ))
      .unwrap();
    let client = Some("192.0.2.7".parse().unwrap());
    let response = match self
      .rt
      .fetch_from(
        &spec.key(),
        spec.source(),
        isola_runtime::FetchRequest::new(req, client),
      )
      .await
    {
      Ok(r) => r,
      Err(e) => isola_runtime::error_response(&e),
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
  }

  /// Waits (bounded) until `n` events of `worker` have come, and returns
  /// them in the order they came.
  async fn events_of(&self, worker: &str, n: usize) -> Vec<TraceEvent> {
    let start = Instant::now();
    loop {
      let found: Vec<TraceEvent> = self
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.worker == worker)
        .cloned()
        .collect();
      if found.len() >= n {
        return found;
      }
      assert!(
        start.elapsed() < Duration::from_secs(20),
        "{} of {n} trace events of {worker}",
        found.len()
      );
      tokio::time::sleep(Duration::from_millis(5)).await;
    }
  }
}

fn messages(e: &TraceEvent) -> Vec<(&str, &str)> {
  e.logs
    .iter()
    .map(|l| (l.level.as_str(), l.message.as_str()))
    .collect()
}

// ---------------------------------------------------------------- fetch --

const HELLO: Spec = Spec {
  name: "hello",
  source: r#"export default {
    fetch(request) {
      console.log("hello", new URL(request.url).pathname);
      console.warn("careful");
      return new Response("hi", { status: 201 });
    },
  };"#,
};

async fn a_fetch_event_has_the_request_status_and_logs() {
  let pool = Pool::new(&[]);
  assert_eq!(pool.get(&HELLO, "/a?b=1").await, (201, "hi".to_string()));
  let events = pool.events_of("hello", 1).await;
  let e = &events[0];
  assert_eq!(
    e.event,
    EventInfo::Fetch {
      method: "GET".into(),
      url: "http://hello.test/a?b=1".into(),
      headers: vec![("user-agent".into(), "trace-test/1".into())],
      client_ip: Some("192.0.2.7".into()),
      status: Some(201),
    }
  );
  assert_eq!((e.worker.as_str(), e.version.as_str()), ("hello", "v1"));
  assert_eq!(e.edge, "", "the edge fills it in");
  assert_eq!(e.outcome, "ok");
  assert_eq!(messages(e), [("log", "hello /a"), ("warn", "careful")]);
  assert!(e.exceptions.is_empty());
  assert!(!e.truncated);
  assert!(e.timestamp > 1_700_000_000_000, "{}", e.timestamp);
  assert!(e.wall_us > 0);
  // Console output still reaches the log sink.
  let logs = pool.logs.lock().unwrap();
  assert!(logs.iter().any(|r| r.message == "hello /a"));
}

// ----------------------------------------------------------- exceptions --

const THROWS: Spec = Spec {
  name: "throws",
  source: r#"export default {
    async fetch(request) {
      const path = new URL(request.url).pathname;
      console.error("about to fail");
      if (path === "/string") throw "plain string";
      await null;
      throw new TypeError("boom");
    },
  };"#,
};

async fn an_uncaught_exception_is_named_with_its_stack() {
  let pool = Pool::new(&[]);
  assert_eq!(pool.get(&THROWS, "/").await.0, 500);
  assert_eq!(pool.get(&THROWS, "/string").await.0, 500);
  let events = pool.events_of("throws", 2).await;
  let e = &events[0];
  assert_eq!(e.outcome, "exception");
  assert!(matches!(e.event, EventInfo::Fetch { status: None, .. }));
  assert_eq!(messages(e), [("error", "about to fail")]);
  assert_eq!(e.exceptions.len(), 1, "{:?}", e.exceptions);
  let x = &e.exceptions[0];
  assert_eq!((x.name.as_str(), x.message.as_str()), ("TypeError", "boom"));
  let stack = x.stack.as_deref().unwrap_or_default();
  assert!(stack.starts_with("TypeError: boom"), "{stack}");
  assert!(stack.contains("worker.js"), "{stack}");
  // A thrown non-Error has no stack.
  let x = &events[1].exceptions[0];
  assert_eq!(x.name, "Error");
  assert!(x.message.contains("plain string"), "{}", x.message);
  assert_eq!(x.stack, None);
}

async fn a_limit_is_the_outcome_and_says_which() {
  const SPIN: Spec = Spec {
    name: "spin",
    source: r#"export default { fetch() { console.log("spinning"); while (true) {} } };"#,
  };
  let pool = Pool::new(&[]);
  // A tight CPU limit of its own, so the test stays short.
  let source = SPIN.source();
  let source = move || {
    let (bundle, config) = source()?;
    let limits = Limits::default().cpu(Duration::from_millis(20));
    Ok((bundle, config.limits(limits)))
  };
  let req = isola_runtime::empty_request("http://spin.test/");
  let err = pool.rt.fetch(&SPIN.key(), source, req).await.unwrap_err();
  assert_eq!(err.limit(), Some(isola_runtime::Outcome::CpuLimit));
  let events = pool.events_of("spin", 1).await;
  let e = &events[0];
  assert_eq!(e.outcome, "exceededCpu");
  assert_eq!(messages(e), [("log", "spinning")]);
  assert!(
    e.exceptions[0].message.starts_with("cpu limit"),
    "{:?}",
    e.exceptions
  );
}

// ----------------------------------------------------------- truncation --

async fn logs_past_the_cap_are_left_out_and_flagged() {
  const CHATTY: Spec = Spec {
    name: "chatty",
    source: r#"export default {
      fetch() {
        const line = "x".repeat(1000);
        for (let i = 0; i < 200; i++) console.log(line);
        return new Response("ok");
      },
    };"#,
  };
  let pool = Pool::new(&[]);
  assert_eq!(pool.get(&CHATTY, "/").await.0, 200);
  let e = &pool.events_of("chatty", 1).await[0];
  assert!(e.truncated);
  assert_eq!(e.logs.len(), MAX_LOG_BYTES / 1000);
  let bytes: usize = e.logs.iter().map(|l| l.message.len()).sum();
  assert!(bytes <= MAX_LOG_BYTES);
  // The log sink still got every line.
  assert_eq!(pool.logs.lock().unwrap().len(), 200);
}

// -------------------------------------------------------- concurrency --

/// The first request waits until the second one wakes it, so their logs
/// interleave in the one isolate.
const RENDEZVOUS: Spec = Spec {
  name: "rendezvous",
  source: r#"let waiting = null;
  export default {
    async fetch(request) {
      const me = new URL(request.url).pathname;
      console.log(`start ${me}`);
      if (waiting === null) {
        // The timer keeps the isolate from judging this request unable to
        // ever answer before the second one arrives (a busy machine may
        // dispatch it a turn later); the second wakes it long before.
        let timer;
        await new Promise((resolve) => {
          waiting = resolve;
          timer = setTimeout(resolve, 20000);
        });
        clearTimeout(timer);
      } else {
        const wake = waiting;
        waiting = null;
        console.log(`wake from ${me}`);
        wake();
        await null;
      }
      console.log(`end ${me}`);
      return new Response(me);
    },
  };"#,
};

async fn logs_go_to_their_own_invocation_when_two_interleave() {
  let pool = Pool::new(&[]);
  let (bundle, config) = (RENDEZVOUS.source())().unwrap();
  pool
    .rt
    .preload(&RENDEZVOUS.key(), bundle, config)
    .await
    .unwrap();
  let (a, b) = tokio::join!(pool.get(&RENDEZVOUS, "/a"), pool.get(&RENDEZVOUS, "/b"));
  assert_eq!((a.0, b.0), (200, 200));
  assert_eq!(pool.rt.stats().cold_starts, 1, "both ran in one isolate");
  let events = pool.events_of("rendezvous", 2).await;
  let of = |path: &str| {
    events
      .iter()
      .find(|e| matches!(&e.event, EventInfo::Fetch { url, .. } if url.ends_with(path)))
      .map(messages)
      .unwrap()
  };
  let (first, second) = if of("/a").len() == 2 {
    ("/a", "/b")
  } else {
    ("/b", "/a")
  };
  assert_eq!(
    of(first),
    [
      ("log", format!("start {first}").as_str()),
      ("log", format!("end {first}").as_str())
    ]
  );
  assert_eq!(
    of(second),
    [
      ("log", format!("start {second}").as_str()),
      ("log", format!("wake from {second}").as_str()),
      ("log", format!("end {second}").as_str()),
    ]
  );
}

// ------------------------------------------- scheduled, queue and RPC --

const BACKGROUND: Spec = Spec {
  name: "background",
  source: r#"export default {
    async scheduled(controller) { console.log(`tick ${controller.cron}`); },
    async queue(batch) {
      console.log(`${batch.messages.length} from ${batch.queue}`);
      batch.ackAll();
    },
  };"#,
};

async fn a_scheduled_run_shows_its_cron_and_time() {
  let pool = Pool::new(&[]);
  let event = ScheduledEvent {
    cron: "*/5 * * * *".into(),
    scheduled_time: 1_700_000_000_123,
    cpu_limit: None,
  };
  let run = pool
    .rt
    .scheduled(&BACKGROUND.key(), BACKGROUND.source(), event)
    .await
    .unwrap();
  assert_eq!(run.outcome, isola_runtime::Outcome::Ok);
  let e = &pool.events_of("background", 1).await[0];
  assert_eq!(
    e.event,
    EventInfo::Scheduled {
      cron: "*/5 * * * *".into(),
      scheduled_time: 1_700_000_000_123,
    }
  );
  assert_eq!(e.outcome, "ok");
  assert_eq!(messages(e), [("log", "tick */5 * * * *")]);
}

async fn a_queue_batch_shows_its_queue_and_size() {
  let pool = Pool::new(&[]);
  let message = |i: usize| Message {
    id: format!("m{i}"),
    timestamp: 1_700_000_000_000,
    body: b"1".to_vec(),
    content_type: ContentType::Json,
    attempts: 1,
  };
  let batch = Batch {
    id: 1,
    worker: "background".into(),
    queue: "jobs".into(),
    messages: (0..3).map(message).collect(),
  };
  let run = pool
    .rt
    .queue(&BACKGROUND.key(), BACKGROUND.source(), batch)
    .await
    .unwrap();
  assert_eq!(run.outcome, isola_runtime::Outcome::Ok);
  let e = &pool.events_of("background", 1).await[0];
  assert_eq!(
    e.event,
    EventInfo::Queue {
      queue: "jobs".into(),
      batch_size: 3,
    }
  );
  assert_eq!(messages(e), [("log", "3 from jobs")]);
}

const CALLEE: Spec = Spec {
  name: "callee",
  source: r#"import { WorkerEntrypoint } from "cloudflare:workers";
  export class Api extends WorkerEntrypoint {
    greet(who) { console.log(`greeting ${who}`); return `hi ${who}`; }
    fail() { throw new RangeError("not today"); }
  }"#,
};

const CALLER: Spec = Spec {
  name: "caller",
  source: r#"export default {
    async fetch(request, env) {
      const greeting = await env.CALLEE.greet("you");
      let failed = "";
      try { await env.CALLEE.fail(); } catch (e) { failed = `${e.name}: ${e.message}`; }
      console.log(greeting, "/", failed);
      return new Response(greeting);
    },
  };"#,
};

async fn rpc_calls_are_events_of_the_callee() {
  let pool = Pool::new(&[CALLEE]);
  assert_eq!(pool.get(&CALLER, "/").await, (200, "hi you".to_string()));
  let calls = pool.events_of("callee", 2).await;
  let greet = calls
    .iter()
    .find(|e| {
      e.event
        == EventInfo::Rpc {
          method: "greet".into(),
        }
    })
    .unwrap();
  assert_eq!(greet.outcome, "ok");
  assert_eq!(messages(greet), [("log", "greeting you")]);
  let fail = calls
    .iter()
    .find(|e| {
      e.event
        == EventInfo::Rpc {
          method: "fail".into(),
        }
    })
    .unwrap();
  assert_eq!(fail.outcome, "exception");
  assert_eq!(fail.exceptions[0].name, "RangeError");
  assert_eq!(fail.exceptions[0].message, "not today");
  // The caller's own event has only its own line.
  let caller = &pool.events_of("caller", 1).await[0];
  assert_eq!(
    messages(caller),
    [("log", "hi you / RangeError: not today")]
  );
}

// ---------------------------------------------------------------------------

fn trial<F: Future<Output = ()> + 'static>(name: &str, test: fn() -> F) -> Trial {
  crate::async_trial(&format!("trace::{name}"), test)
}

pub fn trials() -> Vec<Trial> {
  vec![
    trial(
      "a_fetch_event_has_the_request_status_and_logs",
      a_fetch_event_has_the_request_status_and_logs,
    ),
    trial(
      "an_uncaught_exception_is_named_with_its_stack",
      an_uncaught_exception_is_named_with_its_stack,
    ),
    trial(
      "a_limit_is_the_outcome_and_says_which",
      a_limit_is_the_outcome_and_says_which,
    ),
    trial(
      "logs_past_the_cap_are_left_out_and_flagged",
      logs_past_the_cap_are_left_out_and_flagged,
    ),
    trial(
      "logs_go_to_their_own_invocation_when_two_interleave",
      logs_go_to_their_own_invocation_when_two_interleave,
    ),
    trial(
      "a_scheduled_run_shows_its_cron_and_time",
      a_scheduled_run_shows_its_cron_and_time,
    ),
    trial(
      "a_queue_batch_shows_its_queue_and_size",
      a_queue_batch_shows_its_queue_and_size,
    ),
    trial(
      "rpc_calls_are_events_of_the_callee",
      rpc_calls_are_events_of_the_callee,
    ),
  ]
}
