//! KV and queue bindings through the pool, with the workers in
//! `tests/fixtures/storage/`: the test's stores are in memory (a
//! [`MemoryKv`] and a queue that keeps what it is sent).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use isola_proto::kv::KvCall;
use isola_proto::kv::KvError;
use isola_proto::kv::KvReply;
use isola_proto::queue::Batch;
use isola_proto::queue::ContentType;
use isola_proto::queue::Disposition;
use isola_proto::queue::Message;
use isola_proto::queue::QueueError;
use isola_proto::queue::SendCall;
use isola_proto::queue::SendReply;
use isola_runtime::Config;
use isola_runtime::Fairness;
use isola_runtime::InvocationRecord;
use isola_runtime::KvService;
use isola_runtime::Limits;
use isola_runtime::LogRecord;
use isola_runtime::LogSink;
use isola_runtime::MemoryKv;
use isola_runtime::MeterSink;
use isola_runtime::Outcome;
use isola_runtime::QueueService;
use isola_runtime::Runtime;
use isola_runtime::StorageOps;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;
use libtest_mimic::Trial;
use serde_json::json;
use serde_json::Value;

use crate::Spec;

fn fixture(file: &str) -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("tests/fixtures/storage")
    .join(file)
}

/// The test's KV store: a [`MemoryKv`], except namespace `denied`
/// (refused) and `broken` (the store fails); it notes each read's
/// `cacheTtl`.
#[derive(Default)]
struct TestKv {
  store: MemoryKv,
  cache_ttls: Mutex<Vec<Option<u64>>>,
  calls: Mutex<Vec<(String, String)>>,
}

impl KvService for TestKv {
  fn call(
    &self,
    call: KvCall,
    cache_ttl: Option<u64>,
  ) -> Pin<Box<dyn Future<Output = Result<KvReply, KvError>> + Send + '_>> {
    self
      .calls
      .lock()
      .unwrap()
      .push((call.worker.clone(), call.namespace.clone()));
    if matches!(call.op, isola_proto::kv::KvOp::Get { .. }) {
      self.cache_ttls.lock().unwrap().push(cache_ttl);
    }
    let reply = match call.namespace.as_str() {
      "denied" => KvReply::Refused(KvError(
        "KV namespace denied does not belong to this account".into(),
      )),
      "broken" => KvReply::Failed,
      _ => self.store.apply(call),
    };
    Box::pin(async move { Ok(reply) })
  }
}

/// The test's queues: keeps every send, except to queue `full`
/// (refused) and `broken` (the store fails).
#[derive(Default)]
struct TestQueues {
  sent: Mutex<Vec<SendCall>>,
}

impl QueueService for TestQueues {
  fn send(&self, call: SendCall) -> Pin<Box<dyn Future<Output = SendReply> + Send + '_>> {
    let reply = match call.queue.as_str() {
      "full" => SendReply::Refused(QueueError("queue full is over its backlog limit".into())),
      "broken" => SendReply::Failed,
      _ => {
        self.sent.lock().unwrap().push(call);
        SendReply::Sent
      }
    };
    Box::pin(async move { reply })
  }
}

struct Pool {
  rt: Runtime,
  kv: Arc<TestKv>,
  queues: Arc<TestQueues>,
  logs: Arc<Mutex<Vec<LogRecord>>>,
  records: Arc<Mutex<Vec<InvocationRecord>>>,
}

fn limits() -> Limits {
  // Generous: unoptimised test builds are slow.
  Limits::default()
    .cpu(Duration::from_secs(5))
    .wall(Duration::from_secs(20))
}

impl Pool {
  /// A pool with the test's stores (`storage`: false leaves the
  /// runtime's defaults).
  fn new(storage: bool) -> Self {
    let kv = Arc::new(TestKv::default());
    let queues = Arc::new(TestQueues::default());
    let logs: Arc<Mutex<Vec<LogRecord>>> = Arc::default();
    let records: Arc<Mutex<Vec<InvocationRecord>>> = Arc::default();
    let mut config = Config::default()
      .threads(1)
      .fairness(Fairness::default().enabled(false))
      .logs({
        let logs = logs.clone();
        LogSink::new(move |r| logs.lock().unwrap().push(r))
      })
      .meter({
        let records = records.clone();
        MeterSink::new(move |r| records.lock().unwrap().push(r))
      });
    if storage {
      config = config.kv(kv.clone()).queues(queues.clone());
    }
    Self {
      rt: Runtime::new(config).unwrap(),
      kv,
      queues,
      logs,
      records,
    }
  }

  async fn get(&self, w: &Spec, path: &str) -> (u16, Value) {
    let req = isola_runtime::empty_request(&format!("http://{}.test{path}", w.config.name()));
    let response = match self.rt.fetch(&w.key(), w.source(), req).await {
      Ok(r) => r,
      Err(e) => isola_runtime::error_response(&e),
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect_bytes().await.unwrap();
    let value = serde_json::from_slice(&body)
      .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, value)
  }

  /// The JSON a scenario answers with; it must answer 200.
  async fn scenario(&self, w: &Spec, path: &str) -> Value {
    let (status, value) = self.get(w, path).await;
    assert_eq!(status, 200, "{path}: {value}\n{}", self.log_text());
    value
  }

  fn log_text(&self) -> String {
    let logs = self.logs.lock().unwrap();
    logs.iter().map(|r| format!("{}\n", r.message)).collect()
  }

  fn logged(&self, needle: &str) -> bool {
    self.log_text().contains(needle)
  }

  fn sent(&self) -> Vec<SendCall> {
    self.queues.sent.lock().unwrap().clone()
  }

  /// The storage operations of `worker`'s one invocation, once metered.
  async fn ops_of(&self, worker: &str) -> StorageOps {
    let start = Instant::now();
    loop {
      let ops: Vec<StorageOps> = {
        let records = self.records.lock().unwrap();
        records
          .iter()
          .filter(|r| &*r.worker == worker)
          .map(|r| r.ops)
          .collect()
      };
      if let Some(first) = ops.first() {
        assert_eq!(ops.len(), 1, "one invocation");
        return *first;
      }
      assert!(start.elapsed() < Duration::from_secs(20), "no record");
      tokio::time::sleep(Duration::from_millis(10)).await;
    }
  }
}

fn kv_worker() -> Spec {
  Spec {
    file: fixture("kv.js"),
    config: WorkerConfig::new("kv-worker")
      .limits(limits())
      .kv_namespace("KV", "ns-1")
      .kv_namespace("DENIED", "denied")
      .kv_namespace("BROKEN", "broken"),
  }
}

fn producer(subrequests: u32) -> Spec {
  Spec {
    file: fixture("producer.js"),
    config: WorkerConfig::new("producer")
      .limits(limits().subrequests(subrequests))
      .queue_producer("Q", "jobs")
      .queue_producer("FULL", "full")
      .queue_producer("BROKEN", "broken"),
  }
}

fn consumer(file: &str) -> Spec {
  Spec {
    file: fixture(file),
    config: WorkerConfig::new(file.trim_end_matches(".js"))
      .var("GREETING", "hello")
      .limits(limits().scheduled_cpu(Duration::from_millis(300))),
  }
}

fn message(i: usize, body: &[u8], content_type: ContentType) -> Message {
  Message {
    id: format!("m{i}"),
    timestamp: 1_700_000_000_000 + i as i64,
    body: body.to_vec(),
    content_type,
    attempts: 1,
  }
}

/// A batch of `n` JSON messages (bodies 0..n) of queue `queue`.
fn batch(queue: &str, n: usize) -> Batch {
  Batch {
    id: 7,
    worker: "consumer".into(),
    queue: queue.into(),
    messages: (0..n)
      .map(|i| message(i, i.to_string().as_bytes(), ContentType::Json))
      .collect(),
  }
}

fn dispositions(run: &isola_runtime::QueueRun) -> Vec<Disposition> {
  run.messages.iter().map(|(_, d)| *d).collect()
}

// -------------------------------------------------------------------- KV --

async fn kv_get_returns_each_type() {
  let pool = Pool::new(true);
  let w = kv_worker();
  let v = pool.scenario(&w, "/types").await;
  assert_eq!(
    v,
    json!({
      "text": "{\"a\":1}",
      "textType": "{\"a\":1}",
      "json": {"a": 1},
      "jsonOpts": {"a": 1},
      "arrayBuffer": "{\"a\":1}",
      "stream": "{\"a\":1}",
      "missing": null,
      "missingJson": null,
      "badType": "TypeError: Unknown response type \"xml\". Possible types are \"text\", \"arrayBuffer\", \"json\", and \"stream\".",
    })
  );
  // Only the read that set `cacheTtl` passes one on.
  let ttls = pool.kv.cache_ttls.lock().unwrap().clone();
  assert_eq!(ttls.iter().filter(|t| t.is_some()).count(), 1, "{ttls:?}");
  assert!(ttls.contains(&Some(120)));
  // The store learns which worker asks, and for which namespace.
  assert!(pool
    .kv
    .calls
    .lock()
    .unwrap()
    .iter()
    .all(|c| *c == ("kv-worker".to_string(), "ns-1".to_string())));
}

async fn kv_put_takes_strings_buffers_views_and_streams() {
  let pool = Pool::new(true);
  let v = pool.scenario(&kv_worker(), "/values").await;
  let refused = "TypeError: KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and ReadableStreams as values.";
  assert_eq!(
    v,
    json!({
      "ab": [1, 2, 3],
      "view": [1, 2, 3],
      "stream": "streamed",
      "empty": "",
      "number": refused,
      "object": refused,
    })
  );
}

async fn kv_metadata_round_trips_and_is_limited() {
  let pool = Pool::new(true);
  let v = pool.scenario(&kv_worker(), "/metadata").await;
  assert_eq!(
    v,
    json!({
      "withMeta": {"value": "v", "metadata": {"owner": "me", "n": 1}, "cacheStatus": null},
      "plain": {"value": "p", "metadata": null, "cacheStatus": null},
      "missing": {"value": null, "metadata": null, "cacheStatus": null},
      "tooLarge": "TypeError: KV metadata is too large: 1108 bytes serialized exceeds the limit of 1024",
      "listed": [{"name": "m", "metadata": {"owner": "me", "n": 1}}, {"name": "plain"}],
    })
  );
}

async fn kv_expiration_is_checked_and_listed() {
  let pool = Pool::new(true);
  let v = pool.scenario(&kv_worker(), "/expiration").await;
  assert_eq!(
    v,
    json!({
      "ttlOk": true,
      "atOk": true,
      "shortTtl": "TypeError: KV expirationTtl of 59 s is too short: it must be at least 60 s",
      "soon": "TypeError: KV expiration N is too soon: it must be at least 60 s in the future (now is N)",
      "negative": "TypeError: KV expirationTtl must be a non-negative number of seconds, got -1",
      "stored": null,
    })
  );
}

async fn kv_keys_follow_the_key_rules() {
  let pool = Pool::new(true);
  let v = pool.scenario(&kv_worker(), "/keys").await;
  assert_eq!(
    v,
    json!({
      "longest": "ok",
      "tooLong": "TypeError: KV key is too long: 414 UTF-8 encoded length of 513 exceeds key length limit of 512",
      "empty": "TypeError: KV key must not be empty",
      "dot": "TypeError: KV key \".\" is not allowed",
      "dotdot": "TypeError: KV key \"..\" is not allowed",
    })
  );
}

async fn kv_delete_removes_a_key() {
  let pool = Pool::new(true);
  let v = pool.scenario(&kv_worker(), "/delete").await;
  assert_eq!(v, json!({"before": "v", "after": null}));
}

async fn kv_list_pages_in_byte_order() {
  let pool = Pool::new(true);
  let v = pool.scenario(&kv_worker(), "/list").await;
  let page = |names: &[&str], complete: bool| json!({"names": names, "complete": complete, "hasCursor": !complete, "cacheStatus": null});
  assert_eq!(
    v,
    json!({
      "pages": [
        page(&["p/B", "p/a"], false),
        page(&["p/b", "p/c"], false),
        page(&["p/é"], true),
      ],
      "all": ["o", "p/B", "p/a", "p/b", "p/c", "p/é", "q"],
      "tooMany": "TypeError: KV list limit 1001 is out of range: it must be between 1 and 1000",
      "zero": "TypeError: KV list limit 0 is out of range: it must be between 1 and 1000",
    })
  );
}

async fn kv_allows_1000_operations_per_invocation() {
  let pool = Pool::new(true);
  let w = kv_worker();
  let v = pool.scenario(&w, "/ops").await;
  assert_eq!(
    v,
    json!({"op1001": "Error: KV operation limit: more than 1000 KV operations in one invocation"})
  );
  // The count is per invocation: the next one starts afresh.
  let v = pool.scenario(&w, "/delete").await;
  assert_eq!(v["before"], "v");
}

async fn kv_values_of_25_mib_round_trip_in_every_type() {
  let pool = Pool::new(true);
  let v = pool.scenario(&kv_worker(), "/big").await;
  let size = 25 << 20;
  let too_large = format!(
    "TypeError: KV value is too large: {} bytes exceeds the limit of {size} bytes (25 MiB)",
    size + 1
  );
  assert_eq!(v["arrayBuffer"], size);
  assert_eq!(v["stream"], size);
  assert_eq!(v["text"], size);
  assert_eq!(v["json"], size - 2);
  assert_eq!(v["streamed"], size);
  assert_eq!(v["tooLarge"], too_large.as_str());
  // A stream stops being read once it is too large.
  let stream_error = v["streamTooLarge"].as_str().unwrap();
  assert!(
    stream_error.starts_with("TypeError: KV value is too large:")
      && stream_error.contains("25 MiB"),
    "{stream_error}"
  );
}

async fn kv_refusals_and_failures_reach_the_worker() {
  let pool = Pool::new(true);
  let v = pool.scenario(&kv_worker(), "/refused").await;
  assert_eq!(
    v,
    json!({
      "refused": "Error: KV namespace denied does not belong to this account",
      "failed": "Error: KV operation failed",
    })
  );
}

async fn kv_and_queue_bindings_come_from_the_manifest() {
  use isola_proto::manifest::KvBinding;
  use isola_proto::manifest::Manifest;
  use isola_proto::manifest::QueueBindings;
  use isola_proto::manifest::QueueProducer;
  let code = std::fs::read(fixture("kv.js")).unwrap();
  let manifest = Manifest {
    worker: "from-manifest".into(),
    main_module: "kv.js".into(),
    modules: vec![],
    vars: Default::default(),
    limits: Default::default(),
    compatibility_date: None,
    services: vec![],
    kv_namespaces: vec![KvBinding {
      binding: "KV".into(),
      id: "ns-9".into(),
    }],
    queues: QueueBindings {
      producers: vec![QueueProducer {
        binding: "Q".into(),
        queue: "jobs".into(),
      }],
    },
    egress: None,
  };
  let (bundle, config) = isola_runtime::from_manifest(
    &manifest,
    "v1",
    [("kv.js".to_string(), bytes::Bytes::from(code))],
  )
  .unwrap();
  let pool = Pool::new(true);
  let key = WorkerKey::new("from-manifest", "v1");
  let req = isola_runtime::empty_request("http://m.test/delete");
  let response = pool
    .rt
    .fetch(&key, move || Ok((bundle, config)), req)
    .await
    .unwrap();
  assert_eq!(response.status(), 200);
  let calls = pool.kv.calls.lock().unwrap().clone();
  assert!(!calls.is_empty());
  assert!(calls
    .iter()
    .all(|c| *c == ("from-manifest".to_string(), "ns-9".to_string())));
}

/// Each operation that reached storage counts once, by kind; calls a
/// check, a limit, a refusal or a failure stopped count nothing.
async fn operations_that_reach_storage_are_metered() {
  let ops = |kv_reads, kv_writes, kv_deletes, kv_lists, queue_ops| StorageOps {
    kv_reads,
    kv_writes,
    kv_deletes,
    kv_lists,
    queue_ops,
  };
  for (worker, path, want) in [
    // A put, two gets, and two deletes (one of a key never there).
    (kv_worker(), "/delete", ops(2, 1, 2, 0, 0)),
    // Seven puts, three pages and a whole listing; two lists out of range.
    (kv_worker(), "/list", ops(0, 7, 0, 4, 0)),
    // Keys refused before the call: only the longest key's put and get.
    (kv_worker(), "/keys", ops(1, 1, 0, 0, 0)),
    // Refused by the store, or it failed.
    (kv_worker(), "/refused", ops(0, 0, 0, 0, 0)),
    // Five small messages, one operation each.
    (producer(50), "/types", ops(0, 0, 0, 0, 5)),
    // Only the 128,000-byte message is sent: two 64 KB operations.
    (producer(50), "/limits", ops(0, 0, 0, 0, 2)),
    (producer(50), "/refused", ops(0, 0, 0, 0, 0)),
  ] {
    let pool = Pool::new(true);
    pool.scenario(&worker, path).await;
    let got = pool.ops_of(worker.config.name()).await;
    assert_eq!(got, want, "{path}");
  }
}

async fn kv_without_a_service_says_so() {
  let pool = Pool::new(false);
  let v = pool.scenario(&kv_worker(), "/unavailable").await;
  assert_eq!(v, json!({"get": "Error: KV is not available on this node"}));
}

async fn binding_internals_are_hidden() {
  let pool = Pool::new(true);
  let v = pool.scenario(&kv_worker(), "/hidden").await;
  assert_eq!(
    v,
    json!({
      "kvKeys": [],
      "kvSymbols": [],
      "kvProto": ["constructor", "delete", "get", "getWithMetadata", "list", "put"],
      "construct": "TypeError: Illegal constructor",
    })
  );
  let v = pool.scenario(&producer(50), "/hidden").await;
  assert_eq!(
    v,
    json!({"keys": [], "proto": ["constructor", "send", "sendBatch"]})
  );
}

// ---------------------------------------------------------------- queues --

async fn queue_send_serializes_each_content_type() {
  let pool = Pool::new(true);
  let v = pool.scenario(&producer(50), "/types").await;
  assert_eq!(v, "sent");
  let sent = pool.sent();
  assert_eq!(sent.len(), 5, "one call per send");
  assert!(sent
    .iter()
    .all(|c| c.worker == "producer" && c.queue == "jobs" && c.messages.len() == 1));
  let m: Vec<_> = sent.iter().map(|c| c.messages[0].clone()).collect();
  assert_eq!(
    (m[0].content_type, m[0].body.as_slice()),
    (ContentType::Json, &b"{\"a\":1}"[..])
  );
  assert_eq!(
    (m[1].content_type, m[1].body.as_slice()),
    (ContentType::Text, &b"hi"[..])
  );
  assert_eq!(
    (m[2].content_type, m[2].body.as_slice()),
    (ContentType::Bytes, &[1u8, 2, 3][..])
  );
  assert_eq!(m[3].content_type, ContentType::V8);
  assert_eq!(m[4].delay_seconds, 30);

  // What was sent comes back as it went, through a consumer.
  let messages = m
    .iter()
    .enumerate()
    .map(|(i, n)| message(i, &n.body, n.content_type))
    .collect();
  let batch = Batch {
    messages,
    ..batch("bodies", 0)
  };
  let w = consumer("consumer.js");
  let run = pool.rt.queue(&w.key(), w.source(), batch).await.unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  for line in [
    "body m0 1 2023-11-14T22:13:20.000Z {\"a\":1}",
    "body m1 1 2023-11-14T22:13:20.001Z \"hi\"",
    "body m2 1 2023-11-14T22:13:20.002Z ArrayBuffer 1,2,3",
    "body m3 1 2023-11-14T22:13:20.003Z Map 1970-01-01T00:00:00.000Z",
    "body m4 1 2023-11-14T22:13:20.004Z [\"j\"]",
  ] {
    assert!(pool.logged(line), "{line}\n{}", pool.log_text());
  }
}

async fn a_body_that_does_not_match_its_content_type_is_a_type_error() {
  let pool = Pool::new(true);
  let v = pool.scenario(&producer(50), "/mismatch").await;
  for (field, needle) in [
    (
      "text",
      "TypeError: A message with contentType \"text\" needs a string body",
    ),
    (
      "bytes",
      "TypeError: A message with contentType \"bytes\" needs an ArrayBuffer",
    ),
    (
      "json",
      "TypeError: A message with contentType \"json\" needs a JSON-serializable body",
    ),
    (
      "v8",
      "TypeError: A message with contentType \"v8\" needs a structured-cloneable body",
    ),
    ("unknown", "TypeError: Unknown contentType \"xml\""),
    (
      "delay",
      "TypeError: delaySeconds must be a non-negative whole number",
    ),
  ] {
    let got = v[field].as_str().unwrap();
    assert!(got.starts_with(needle), "{field}: {got}");
  }
  assert!(pool.sent().is_empty());
}

async fn queue_sends_follow_cloudflare_limits() {
  let pool = Pool::new(true);
  let v = pool.scenario(&producer(50), "/limits").await;
  assert_eq!(
    v,
    json!({
      "message": "TypeError: message 0 is 128001 bytes, more than the limit of 128000 bytes (128 KB)",
      "messageAtLimit": "no error",
      "count": "TypeError: sendBatch() of 101 messages exceeds the limit of 100",
      "bytes": "TypeError: sendBatch() of 360000 bytes exceeds the limit of 256000 bytes (256 KB)",
      "delay": "TypeError: message 0: delaySeconds 43201 exceeds the limit of 43200 (12 hours)",
      "empty": "TypeError: sendBatch() needs at least one message",
    })
  );
  assert_eq!(pool.sent().len(), 1, "only the message at the limit went");
}

async fn send_batch_takes_per_message_options_over_the_batch_s() {
  let pool = Pool::new(true);
  assert_eq!(pool.scenario(&producer(50), "/batch").await, "sent");
  let sent = pool.sent();
  assert_eq!(sent.len(), 1);
  let m = &sent[0].messages;
  assert_eq!(
    (m[0].content_type, m[0].delay_seconds, m[0].body.as_slice()),
    (ContentType::Json, 2, &b"1"[..])
  );
  assert_eq!(
    (m[1].content_type, m[1].delay_seconds, m[1].body.as_slice()),
    (ContentType::Text, 5, &b"t"[..])
  );
}

async fn queue_refusals_and_failures_reach_the_worker() {
  let pool = Pool::new(true);
  let v = pool.scenario(&producer(50), "/refused").await;
  assert_eq!(
    v,
    json!({
      "refused": "Error: queue full is over its backlog limit",
      "failed": "Error: Queue send failed",
    })
  );
}

async fn each_send_is_a_subrequest() {
  let pool = Pool::new(true);
  let (status, _) = pool.get(&producer(3), "/subrequests").await;
  assert_eq!(status, 503, "{}", pool.log_text());
  assert_eq!(pool.sent().len(), 3);
}

async fn queues_without_a_service_say_so() {
  let pool = Pool::new(false);
  let v = pool.scenario(&producer(50), "/unavailable").await;
  assert_eq!(
    v,
    json!({"send": "Error: Queues are not available on this node"})
  );
}

// -------------------------------------------------------------- consumer --

async fn undecided_messages_are_acked_when_the_handler_returns() {
  let pool = Pool::new(true);
  let w = consumer("consumer.js");
  let run = pool
    .rt
    .queue(&w.key(), w.source(), batch("plain", 3))
    .await
    .unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  assert_eq!(
    run.messages,
    vec![
      ("m0".to_string(), Disposition::Ack),
      ("m1".to_string(), Disposition::Ack),
      ("m2".to_string(), Disposition::Ack),
    ]
  );
  assert!(pool.logged("batch plain of 3"));
  // The run is metered like a request.
  let start = Instant::now();
  loop {
    let found = pool
      .records
      .lock()
      .unwrap()
      .iter()
      .any(|r| &*r.worker == "consumer" && r.outcome == Outcome::Ok);
    if found {
      break;
    }
    assert!(start.elapsed() < Duration::from_secs(20), "no record");
    tokio::time::sleep(Duration::from_millis(10)).await;
  }
}

async fn a_throw_after_acking_three_retries_the_rest() {
  let pool = Pool::new(true);
  let w = consumer("consumer.js");
  let run = pool
    .rt
    .queue(&w.key(), w.source(), batch("ack-then-throw", 6))
    .await
    .unwrap();
  assert_eq!(run.outcome, Outcome::Exception);
  assert!(
    run
      .error
      .as_deref()
      .unwrap_or_default()
      .contains("consumer failed after acking 3"),
    "{:?}",
    run.error
  );
  let retry = Disposition::Retry(None);
  assert_eq!(
    dispositions(&run),
    [
      Disposition::Ack,
      Disposition::Ack,
      Disposition::Ack,
      retry,
      retry,
      retry
    ]
  );
}

async fn a_message_s_own_first_call_beats_the_batch_s() {
  let pool = Pool::new(true);
  let w = consumer("consumer.js");
  let run = pool
    .rt
    .queue(&w.key(), w.source(), batch("precedence", 3))
    .await
    .unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  assert_eq!(
    dispositions(&run),
    [
      Disposition::Retry(Some(7)),
      Disposition::Ack,
      Disposition::Retry(Some(3)),
    ]
  );
  let run = pool
    .rt
    .queue(&w.key(), w.source(), batch("ack-all-then-throw", 3))
    .await
    .unwrap();
  assert_eq!(run.outcome, Outcome::Exception);
  assert_eq!(
    dispositions(&run),
    [Disposition::Retry(None), Disposition::Ack, Disposition::Ack]
  );
  let run = pool
    .rt
    .queue(&w.key(), w.source(), batch("retry-all", 2))
    .await
    .unwrap();
  assert_eq!(run.outcome, Outcome::Ok);
  assert_eq!(dispositions(&run), [Disposition::Retry(None); 2]);
}

async fn the_run_ends_when_its_wait_until_work_settles() {
  let pool = Pool::new(true);
  let w = consumer("consumer.js");
  let run = pool
    .rt
    .queue(&w.key(), w.source(), batch("wait-until", 3))
    .await
    .unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  assert!(pool.logged("waitUntil done hello"));
  assert_eq!(
    dispositions(&run),
    [
      Disposition::Ack,
      Disposition::Ack,
      Disposition::Retry(Some(1))
    ]
  );
}

async fn a_limit_keeps_the_decisions_made_before_it() {
  let pool = Pool::new(true);
  let w = consumer("consumer.js");
  let run = pool
    .rt
    .queue(&w.key(), w.source(), batch("busy", 2))
    .await
    .unwrap();
  assert_eq!(run.outcome, Outcome::CpuLimit, "{:?}", run.error);
  assert_eq!(
    dispositions(&run),
    [Disposition::Ack, Disposition::Retry(None)]
  );
}

async fn a_retry_delay_past_12_hours_fails_the_run() {
  let pool = Pool::new(true);
  let w = consumer("consumer.js");
  let run = pool
    .rt
    .queue(&w.key(), w.source(), batch("bad-delay", 1))
    .await
    .unwrap();
  assert_eq!(run.outcome, Outcome::Exception);
  assert!(
    run.error.as_deref().unwrap_or_default().contains("43201"),
    "{:?}",
    run.error
  );
  assert_eq!(dispositions(&run), [Disposition::Retry(None)]);
}

async fn a_class_entrypoint_consumes_with_this_env() {
  let pool = Pool::new(true);
  let w = consumer("consumer_class.js");
  let run = pool
    .rt
    .queue(&w.key(), w.source(), batch("jobs", 2))
    .await
    .unwrap();
  assert_eq!(run.outcome, Outcome::Ok, "{:?}", run.error);
  assert!(pool.logged("class jobs 2 hello"), "{}", pool.log_text());
  assert_eq!(
    dispositions(&run),
    [Disposition::Retry(None), Disposition::Ack]
  );
}

async fn a_worker_without_a_queue_handler_cannot_consume() {
  let pool = Pool::new(true);
  let w = Spec {
    file: fixture("kv.js"),
    config: WorkerConfig::new("kv-only").limits(limits()),
  };
  let err = pool
    .rt
    .queue(&w.key(), w.source(), batch("jobs", 1))
    .await
    .unwrap_err();
  assert!(
    err.to_string().contains("the worker has no queue handler"),
    "{err}"
  );
}

pub fn trials() -> Vec<Trial> {
  vec![
    trial("kv::get_returns_each_type", kv_get_returns_each_type),
    trial(
      "operations_that_reach_storage_are_metered",
      operations_that_reach_storage_are_metered,
    ),
    trial(
      "kv::put_takes_strings_buffers_views_and_streams",
      kv_put_takes_strings_buffers_views_and_streams,
    ),
    trial(
      "kv::metadata_round_trips_and_is_limited",
      kv_metadata_round_trips_and_is_limited,
    ),
    trial(
      "kv::expiration_is_checked_and_listed",
      kv_expiration_is_checked_and_listed,
    ),
    trial(
      "kv::keys_follow_the_key_rules",
      kv_keys_follow_the_key_rules,
    ),
    trial("kv::delete_removes_a_key", kv_delete_removes_a_key),
    trial("kv::list_pages_in_byte_order", kv_list_pages_in_byte_order),
    trial(
      "kv::allows_1000_operations_per_invocation",
      kv_allows_1000_operations_per_invocation,
    ),
    trial(
      "kv::values_of_25_mib_round_trip_in_every_type",
      kv_values_of_25_mib_round_trip_in_every_type,
    ),
    trial(
      "kv::refusals_and_failures_reach_the_worker",
      kv_refusals_and_failures_reach_the_worker,
    ),
    trial(
      "kv::without_a_service_says_so",
      kv_without_a_service_says_so,
    ),
    trial(
      "bindings::come_from_the_manifest",
      kv_and_queue_bindings_come_from_the_manifest,
    ),
    trial(
      "bindings::internals_are_hidden",
      binding_internals_are_hidden,
    ),
    trial(
      "queue::send_serializes_each_content_type",
      queue_send_serializes_each_content_type,
    ),
    trial(
      "queue::a_body_that_does_not_match_its_content_type_is_a_type_error",
      a_body_that_does_not_match_its_content_type_is_a_type_error,
    ),
    trial(
      "queue::sends_follow_cloudflare_limits",
      queue_sends_follow_cloudflare_limits,
    ),
    trial(
      "queue::send_batch_takes_per_message_options_over_the_batch_s",
      send_batch_takes_per_message_options_over_the_batch_s,
    ),
    trial(
      "queue::refusals_and_failures_reach_the_worker",
      queue_refusals_and_failures_reach_the_worker,
    ),
    trial(
      "queue::each_send_is_a_subrequest",
      each_send_is_a_subrequest,
    ),
    trial(
      "queue::without_a_service_say_so",
      queues_without_a_service_say_so,
    ),
    trial(
      "consumer::undecided_messages_are_acked_when_the_handler_returns",
      undecided_messages_are_acked_when_the_handler_returns,
    ),
    trial(
      "consumer::a_throw_after_acking_three_retries_the_rest",
      a_throw_after_acking_three_retries_the_rest,
    ),
    trial(
      "consumer::a_message_s_own_first_call_beats_the_batch_s",
      a_message_s_own_first_call_beats_the_batch_s,
    ),
    trial(
      "consumer::the_run_ends_when_its_wait_until_work_settles",
      the_run_ends_when_its_wait_until_work_settles,
    ),
    trial(
      "consumer::a_limit_keeps_the_decisions_made_before_it",
      a_limit_keeps_the_decisions_made_before_it,
    ),
    trial(
      "consumer::a_retry_delay_past_12_hours_fails_the_run",
      a_retry_delay_past_12_hours_fails_the_run,
    ),
    trial(
      "consumer::a_class_entrypoint_consumes_with_this_env",
      a_class_entrypoint_consumes_with_this_env,
    ),
    trial(
      "consumer::a_worker_without_a_queue_handler_cannot_consume",
      a_worker_without_a_queue_handler_cannot_consume,
    ),
  ]
}

fn trial<F: Future<Output = ()> + 'static>(name: &str, test: fn() -> F) -> Trial {
  crate::async_trial(&format!("storage::{name}"), test)
}
