//! Observability through the real router: settings, logs, analytics, live
//! tail over a real WebSocket, and `/metrics`, with trace batches fed into
//! the hub the way edge connections feed it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt as _;
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use isola_control::api;
use isola_control::blobs::Blobs;
use isola_control::blobs::Location;
use isola_control::db;
use isola_control::observe::Traces;
use isola_control::observe::TAIL_QUEUE;
use isola_control::secrets;
use isola_control::validate;
use isola_proto::msg::Usage;
use isola_proto::msg::UsageBatch;
use isola_proto::msg::UsageRecord;
use isola_proto::trace::EventInfo;
use isola_proto::trace::ExceptionInfo;
use isola_proto::trace::LogLine;
use isola_proto::trace::TraceBatch;
use isola_proto::trace::TraceEvent;
use serde_json::json;
use serde_json::Value;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

struct Server {
  addr: SocketAddr,
  admin: String,
  db: db::Db,
  traces: Traces,
  _dir: tempfile::TempDir,
}

async fn start() -> Server {
  let dir = tempfile::tempdir().unwrap();
  let db = db::test_support::open(
    &dir.path().join("control.db"),
    secrets::Cipher::new(&secrets::generate_key()),
  )
  .unwrap();
  let admin = db.create_account("default", true).unwrap();
  let (tx, _rx) = tokio::sync::watch::channel(Arc::new(db.desired_state().unwrap()));
  let validator = Arc::new(validate::Validator::new().unwrap());
  let traces = Traces::start(db.clone());
  let blobs = Blobs::open(Location::default_in(dir.path())).await.unwrap();
  let app = api::router(
    api::AppState::new(db.clone(), blobs, Arc::new(tx), validator).with_traces(traces.clone()),
  );
  let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
  let addr = listener.local_addr().unwrap();
  tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
  Server {
    addr,
    admin,
    db,
    traces,
    _dir: dir,
  }
}

impl Server {
  async fn call(
    &self,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
  ) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
      .await
      .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
      .method(method)
      .uri(path)
      .header("host", "control.test")
      .header("authorization", format!("Bearer {token}"))
      .header("content-type", "application/json");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let res = sender
      .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
      .await
      .unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
  }

  async fn json(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let (status, text) = self.call(method, path, token, body).await;
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, json)
  }

  async fn get_ok(&self, path: &str) -> Value {
    let (status, json) = self.json("GET", path, &self.admin.clone(), None).await;
    assert_eq!(status, 200, "{path}: {json}");
    json
  }

  /// Uploads a version of `worker` (account default); returns (id, hash).
  async fn upload(&self, worker: &str, text: &str) -> (String, String) {
    let boundary = "observe-test-boundary";
    let mut body = Vec::new();
    for (name, bytes) in [
      ("metadata", json!({"main_module": "worker.js"}).to_string()),
      (
        "worker.js",
        format!("export default {{ fetch() {{ return new Response({text:?}) }} }}"),
      ),
    ] {
      body.extend_from_slice(
        format!(
          "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
           filename=\"{name}\"\r\n\r\n"
        )
        .as_bytes(),
      );
      body.extend_from_slice(bytes.as_bytes());
      body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
      .await
      .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
      .method("POST")
      .uri(format!("/v1/workers/{worker}/versions"))
      .header("host", "control.test")
      .header("authorization", format!("Bearer {}", self.admin))
      .header(
        "content-type",
        format!("multipart/form-data; boundary={boundary}"),
      )
      .body(Full::new(Bytes::from(body)))
      .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 201);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    (
      v["id"].as_str().unwrap().to_string(),
      v["hash"].as_str().unwrap().to_string(),
    )
  }

  /// Feeds events as edge `edge` would and waits until they are stored.
  async fn feed(&self, edge: &str, events: Vec<TraceEvent>) {
    self.traces.ingest(edge, TraceBatch { events, dropped: 0 });
    self.traces.flush().await;
  }

  async fn tail(
    &self,
    worker: &str,
    query: &str,
    token: &str,
  ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
  {
    let mut req = format!("ws://{}/v1/workers/{worker}/tail{query}", self.addr)
      .into_client_request()
      .unwrap();
    req
      .headers_mut()
      .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(response.status(), 101);
    ws
  }
}

/// The start of a whole minute an hour ago, in ms: inside every retention.
/// Events the store keeps must be this recent, since the hub's pruning
/// (whose first pass may run while a test feeds them) deletes older ones.
fn recent_minute_ms() -> i64 {
  let now = std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .expect("after 1970")
    .as_millis() as i64;
  (now / 60_000 - 60) * 60_000
}

/// A fetch event of worker `default_{worker}`.
fn event(worker: &str, hash: &str, outcome: &str, timestamp: i64, path: &str) -> TraceEvent {
  TraceEvent {
    worker: format!("default_{worker}"),
    version: hash.into(),
    edge: "edge-0".into(),
    timestamp,
    event: EventInfo::Fetch {
      method: if path.starts_with("/post") {
        "POST"
      } else {
        "GET"
      }
      .into(),
      url: format!("https://{worker}.test{path}"),
      headers: vec![("x-user".into(), "alice".into())],
      client_ip: Some("10.1.1.1".into()),
      status: (outcome == "ok").then_some(200),
    },
    outcome: outcome.into(),
    cpu_us: 2000,
    wall_us: 5000,
    logs: vec![LogLine {
      level: "log".into(),
      message: format!("handled {path}"),
      timestamp,
    }],
    exceptions: if outcome == "exception" {
      vec![ExceptionInfo {
        name: "Error".into(),
        message: "boom".into(),
        stack: Some("Error: boom\n    at fetch".into()),
        timestamp,
      }]
    } else {
      vec![]
    },
    truncated: false,
  }
}

#[tokio::test]
async fn observability_settings_default_change_and_refuse_nonsense() {
  let s = start().await;
  s.upload("api", "a").await;
  let admin = s.admin.clone();
  let got = s.get_ok("/v1/workers/api/observability").await;
  assert_eq!(got, json!({"head_sampling_rate": 1.0, "retention_days": 7}));
  let (status, got) = s
    .json(
      "PUT",
      "/v1/workers/api/observability",
      &admin,
      Some(json!({"head_sampling_rate": 0.25})),
    )
    .await;
  assert_eq!(status, 200, "{got}");
  assert_eq!(
    got,
    json!({"head_sampling_rate": 0.25, "retention_days": 7})
  );
  let (_, got) = s
    .json(
      "PUT",
      "/v1/workers/api/observability",
      &admin,
      Some(json!({"retention_days": 30})),
    )
    .await;
  assert_eq!(
    got,
    json!({"head_sampling_rate": 0.25, "retention_days": 30})
  );
  assert_eq!(
    s.get_ok("/v1/workers/api/observability").await,
    json!({"head_sampling_rate": 0.25, "retention_days": 30})
  );
  for bad in [
    json!({"head_sampling_rate": 0}),
    json!({"head_sampling_rate": 2}),
    json!({"retention_days": 0}),
    json!({"retention_days": 365}),
    json!({"sampling": 1}),
  ] {
    let (status, body) = s
      .json(
        "PUT",
        "/v1/workers/api/observability",
        &admin,
        Some(bad.clone()),
      )
      .await;
    assert_eq!(status, 400, "{bad}: {body}");
    assert_eq!(body["error"]["code"], "invalid_request");
  }
  // Another account's worker does not exist for the caller.
  let (_, acct) = s
    .json(
      "POST",
      "/v1/accounts",
      &admin,
      Some(json!({"name": "other"})),
    )
    .await;
  let other = acct["token"].as_str().unwrap().to_string();
  for path in [
    "/v1/workers/api/observability",
    "/v1/workers/api/logs",
    "/v1/workers/api/analytics",
  ] {
    let (status, _) = s.call("GET", path, &other, None).await;
    assert_eq!(status, 404, "{path}");
  }
}

#[tokio::test]
async fn logs_page_newest_first_and_filter() {
  let s = start().await;
  let (v1, h1) = s.upload("api", "one").await;
  let (_, h2) = s.upload("api", "two").await;
  let base = recent_minute_ms();
  let events: Vec<_> = (0..30)
    .map(|i| {
      let outcome = match i % 10 {
        0 => "exception",
        5 => "exceededCpu",
        9 => "canceled",
        _ => "ok",
      };
      let hash = if i < 20 { &h1 } else { &h2 };
      event("api", hash, outcome, base + i * 1000, &format!("/item/{i}"))
    })
    .collect();
  s.feed("edge-0", events).await;

  // All 30, ten a page, newest first, through cursors.
  let mut seen = Vec::new();
  let mut path = "/v1/workers/api/logs?limit=10".to_string();
  loop {
    let page = s.get_ok(&path).await;
    for log in page["logs"].as_array().unwrap() {
      seen.push(log["eventTimestamp"].as_i64().unwrap());
    }
    match page["cursor"].as_str() {
      Some(c) => path = format!("/v1/workers/api/logs?limit=10&cursor={c}"),
      None => break,
    }
  }
  let want: Vec<i64> = (0..30).rev().map(|i| base + i * 1000).collect();
  assert_eq!(seen, want);

  let page = s.get_ok("/v1/workers/api/logs?status=error").await;
  let outcomes: Vec<&str> = page["logs"]
    .as_array()
    .unwrap()
    .iter()
    .map(|l| l["outcome"].as_str().unwrap())
    .collect();
  assert_eq!(outcomes.len(), 6, "{outcomes:?}");
  assert!(outcomes
    .iter()
    .all(|o| *o == "exception" || *o == "exceededCpu"));
  let page = s
    .get_ok("/v1/workers/api/logs?status=canceled&status=ok")
    .await;
  assert_eq!(page["logs"].as_array().unwrap().len(), 24);
  // A version by its id: the first 20 events.
  let page = s
    .get_ok(&format!("/v1/workers/api/logs?version={v1}&limit=100"))
    .await;
  assert_eq!(page["logs"].as_array().unwrap().len(), 20);
  let page = s
    .get_ok(&format!("/v1/workers/api/logs?version={h2}"))
    .await;
  assert_eq!(page["logs"].as_array().unwrap().len(), 10);
  // Search looks at logs, exceptions and URLs.
  let page = s
    .get_ok("/v1/workers/api/logs?search=handled%20/item/7")
    .await;
  let logs = page["logs"].as_array().unwrap();
  assert_eq!(logs.len(), 1);
  assert_eq!(logs[0]["logs"][0]["message"], json!(["handled /item/7"]));
  assert_eq!(logs[0]["scriptName"], "api");
  assert_eq!(logs[0]["scriptVersion"]["id"], h1.as_str());
  let page = s.get_ok("/v1/workers/api/logs?search=boom").await;
  assert_eq!(page["logs"].as_array().unwrap().len(), 3);
  // since/until in seconds: [base+10 s, base+15 s).
  let page = s
    .get_ok(&format!(
      "/v1/workers/api/logs?since={}&until={}",
      base / 1000 + 10,
      base / 1000 + 15
    ))
    .await;
  assert_eq!(page["logs"].as_array().unwrap().len(), 5);
  for bad in [
    "limit=0",
    "limit=5000",
    "cursor=bogus",
    "status=fine",
    "version=nope",
    "method=GET",
  ] {
    let (status, body) = s
      .call(
        "GET",
        &format!("/v1/workers/api/logs?{bad}"),
        &s.admin.clone(),
        None,
      )
      .await;
    assert_eq!(status, 400, "{bad}: {body}");
  }
}

#[tokio::test]
async fn head_sampling_keeps_a_share_of_logs_and_analytics_count_all() {
  let s = start().await;
  let (_, h1) = s.upload("api", "one").await;
  let admin = s.admin.clone();
  let (status, _) = s
    .call(
      "PUT",
      "/v1/workers/api/observability",
      &admin,
      Some(json!({"head_sampling_rate": 0.1})),
    )
    .await;
  assert_eq!(status, 200);
  let base = recent_minute_ms();
  let events: Vec<_> = (0..1000)
    .map(|i| event("api", &h1, "ok", base + i, "/"))
    .collect();
  s.feed("edge-0", events).await;
  let page = s.get_ok("/v1/workers/api/logs?limit=1000").await;
  let kept = page["logs"].as_array().unwrap().len();
  assert!((50..=150).contains(&kept), "kept {kept} of 1000 at 0.1");
  let a = s
    .get_ok(&format!(
      "/v1/workers/api/analytics?since={}&until={}",
      base / 1000,
      base / 1000 + 60
    ))
    .await;
  assert_eq!(a["buckets"][0]["events"], 1000);
  assert_eq!(a["buckets"][0]["requests"], 1000);
}

#[tokio::test]
async fn analytics_buckets_usage_and_events_per_version() {
  let s = start().await;
  let (_, h1) = s.upload("api", "one").await;
  let (_, h2) = s.upload("api", "two").await;
  let minute = recent_minute_ms() / 1000;
  // Minute 0: 8 ok + 2 exceptions on h1, 3 exceededCpu on h2.
  let mut events = Vec::new();
  for i in 0..8 {
    events.push(event("api", &h1, "ok", minute * 1000 + i, "/"));
  }
  for i in 0..2 {
    events.push(event("api", &h1, "exception", minute * 1000 + 100 + i, "/"));
  }
  for i in 0..3 {
    let mut e = event("api", &h2, "exceededCpu", minute * 1000 + 200 + i, "/");
    e.cpu_us = 50_000;
    events.push(e);
  }
  // Minute 1: one event on h1.
  events.push(event("api", &h1, "ok", (minute + 60) * 1000, "/"));
  s.feed("edge-0", events).await;
  // Exact usage for minute 0 (11 requests on h1: one event was lost).
  s.db.enroll_edge("edge-0").unwrap();
  let record = |version: &str, requests, errors, start| UsageRecord {
    worker: "default_api".into(),
    version: version.into(),
    start,
    end: start + 1,
    usage: Usage {
      requests,
      errors,
      subrequests: 4,
      egress_bytes: 1000,
      ..Usage::default()
    },
  };
  s.db
    .store_usage(
      "edge-0",
      &UsageBatch {
        id: "u1".into(),
        records: vec![
          record(&h1, 6, 1, minute as u64 + 1),
          record(&h1, 5, 1, minute as u64 + 30),
          record(&h2, 3, 3, minute as u64 + 2),
        ],
      },
    )
    .unwrap();
  let a = s
    .get_ok(&format!(
      "/v1/workers/api/analytics?since={}&until={}&step=60",
      minute,
      minute + 180
    ))
    .await;
  assert_eq!(a["step"], 60);
  assert_eq!(a["quantile_relative_error"], 0.01);
  let buckets = a["buckets"].as_array().unwrap();
  assert_eq!(buckets.len(), 3);
  let b0 = &buckets[0];
  assert_eq!(b0["requests"], 14);
  assert_eq!(b0["errors"], 5);
  assert_eq!(b0["events"], 13);
  assert_eq!(
    b0["errors_by_outcome"],
    json!({"exception": 2, "exceededCpu": 3})
  );
  assert_eq!(b0["subrequests"], 12);
  assert_eq!(b0["egress_bytes"], 3000);
  let p50 = b0["cpu_ms"]["p50"].as_f64().unwrap();
  assert!((p50 - 2.0).abs() <= 2.0 * 0.011, "{p50}");
  let p99 = b0["cpu_ms"]["p99"].as_f64().unwrap();
  assert!((p99 - 50.0).abs() <= 50.0 * 0.011, "{p99}");
  assert!(b0["wall_ms"]["p50"].as_f64().unwrap() > 4.9);
  let versions = b0["by_version"].as_array().unwrap();
  let sum: u64 = versions
    .iter()
    .map(|v| v["requests"].as_u64().unwrap())
    .sum();
  assert_eq!(sum, 14);
  let v2 = versions
    .iter()
    .find(|v| v["version"] == h2.as_str())
    .unwrap();
  assert_eq!(v2["errors_by_outcome"], json!({"exceededCpu": 3}));
  // No usage yet for minute 1: its one event stands in.
  assert_eq!(buckets[1]["requests"], 1);
  assert_eq!(buckets[2]["requests"], 0);
  assert_eq!(buckets[2]["cpu_ms"]["p50"], Value::Null);
  // One bucket over all three minutes: h1 has usage in it, so its counts
  // come from usage alone (the minute-1 event awaits its usage record).
  let a = s
    .get_ok(&format!(
      "/v1/workers/api/analytics?since={}&until={}&step=180",
      minute,
      minute + 180
    ))
    .await;
  assert_eq!(a["buckets"].as_array().unwrap().len(), 1);
  assert_eq!(a["buckets"][0]["requests"], 14);
  assert_eq!(a["buckets"][0]["events"], 14);
  for bad in [
    "step=30",
    "step=90",
    "since=10&until=5",
    "since=0&until=9999999",
  ] {
    let (status, body) = s
      .call(
        "GET",
        &format!("/v1/workers/api/analytics?{bad}"),
        &s.admin.clone(),
        None,
      )
      .await;
    assert_eq!(status, 400, "{bad}: {body}");
  }
}

async fn next_json(
  ws: &mut tokio_tungstenite::WebSocketStream<
    tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
  >,
) -> Value {
  loop {
    match ws.next().await.expect("the tail is open").unwrap() {
      tungstenite::Message::Text(text) => return serde_json::from_str(&text).unwrap(),
      tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
      other => panic!("unexpected message {other:?}"),
    }
  }
}

#[tokio::test]
async fn tails_stream_filtered_events_over_a_websocket() {
  let s = start().await;
  let (v1, h1) = s.upload("api", "one").await;
  let (_, h2) = s.upload("api", "two").await;
  s.upload("web", "w").await;
  let admin = s.admin.clone();
  let mut all = s.tail("api", "", &admin).await;
  let mut errors = s.tail("api", "?status=error", &admin).await;
  let mut posts_v1 = s
    .tail(
      "api",
      &format!("?method=post&version={v1}&header=x-user:alice"),
      &admin,
    )
    .await;
  let mut search = s.tail("api", "?search=needle", &admin).await;
  let mut web = s.tail("web", "", &admin).await;
  let t = 1_700_000_000_000i64;
  let events = vec![
    event("api", &h1, "ok", t, "/get"),
    event("api", &h1, "exception", t + 1, "/post-a"),
    event("api", &h2, "ok", t + 2, "/post-b"),
    event("api", &h1, "exceededCpu", t + 3, "/needle"),
    event("api", &h1, "ok", t + 4, "/post-c"),
    event("web", "w", "ok", t + 5, "/w"),
  ];
  s.traces.ingest("edge-0", TraceBatch { events, dropped: 2 });
  let mut got = Vec::new();
  for _ in 0..5 {
    got.push(next_json(&mut all).await);
  }
  assert_eq!(
    got
      .iter()
      .map(|m| m["eventTimestamp"].as_i64().unwrap() - t)
      .collect::<Vec<_>>(),
    [0, 1, 2, 3, 4]
  );
  let first = &got[1];
  assert_eq!(first["outcome"], "exception");
  assert_eq!(first["scriptName"], "api");
  assert_eq!(first["scriptVersion"]["id"], h1.as_str());
  assert_eq!(first["event"]["request"]["method"], "POST");
  assert_eq!(first["event"]["request"]["url"], "https://api.test/post-a");
  assert_eq!(first["event"]["request"]["headers"]["x-user"], "alice");
  assert_eq!(first["logs"][0]["message"], json!(["handled /post-a"]));
  assert_eq!(first["logs"][0]["level"], "log");
  assert_eq!(first["exceptions"][0]["name"], "Error");
  assert_eq!(first["exceptions"][0]["message"], "boom");
  assert_eq!(first["cpuTime"], 2.0);
  assert_eq!(first["wallTime"], 5.0);
  assert_eq!(first["edge"], "edge-0");
  assert_eq!(first["truncated"], false);
  assert_eq!(got[0]["event"]["response"]["status"], 200);

  assert_eq!(next_json(&mut errors).await["eventTimestamp"], t + 1);
  assert_eq!(next_json(&mut errors).await["eventTimestamp"], t + 3);
  assert_eq!(next_json(&mut posts_v1).await["eventTimestamp"], t + 1);
  assert_eq!(next_json(&mut posts_v1).await["eventTimestamp"], t + 4);
  assert_eq!(next_json(&mut search).await["eventTimestamp"], t + 3);
  assert_eq!(next_json(&mut web).await["scriptName"], "web");
  // Nothing else was queued for the filtered tails: the next event each
  // gets is one sent after.
  s.traces.ingest(
    "edge-0",
    TraceBatch {
      events: vec![event("api", &h1, "exception", t + 10, "/post-needle")],
      dropped: 0,
    },
  );
  for ws in [&mut errors, &mut posts_v1, &mut search] {
    assert_eq!(next_json(ws).await["eventTimestamp"], t + 10);
  }

  // A client that closes its tail is forgotten.
  web.close(None).await.unwrap();
  drop(web);
  let metrics = loop {
    let (status, text) = s.call("GET", "/metrics", &admin, None).await;
    assert_eq!(status, 200, "{text}");
    if text.contains("isola_tails_open 4") {
      break text;
    }
    tokio::task::yield_now().await;
  };
  assert!(
    metrics.contains("isola_trace_events_received_total{worker=\"default_api\"} 6"),
    "{metrics}"
  );
  assert!(
    metrics.contains("isola_trace_events_dropped_total{edge=\"edge-0\"} 2"),
    "{metrics}"
  );
  let (_, acct) = s
    .json(
      "POST",
      "/v1/accounts",
      &admin,
      Some(json!({"name": "other"})),
    )
    .await;
  let other = acct["token"].as_str().unwrap().to_string();
  let (status, _) = s.call("GET", "/metrics", &other, None).await;
  assert_eq!(status, 403);
}

#[tokio::test]
async fn a_tail_is_refused_without_a_websocket_token_or_worker() {
  let s = start().await;
  s.upload("api", "one").await;
  let admin = s.admin.clone();
  let (status, body) = s.call("GET", "/v1/workers/api/tail", &admin, None).await;
  assert_eq!(status, 400, "{body}");
  assert!(body.contains("WebSocket"), "{body}");
  let (status, _) = s
    .call("GET", "/v1/workers/api/tail?status=fine", &admin, None)
    .await;
  assert_eq!(status, 400);
  let (status, _) = s.call("GET", "/v1/workers/nope/tail", &admin, None).await;
  assert_eq!(status, 404);
  let mut req = format!("ws://{}/v1/workers/api/tail", s.addr)
    .into_client_request()
    .unwrap();
  req
    .headers_mut()
    .insert("authorization", "Bearer wrong".parse().unwrap());
  match tokio_tungstenite::connect_async(req).await {
    Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
    other => panic!("a bad token opened a tail: {other:?}"),
  }
}

// One thread: the hub's fan-out runs to its end before the tail's task
// drains anything, so the queue fills deterministically.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_tail_is_closed_with_a_reason_and_others_go_on() {
  let s = start().await;
  let (_, h1) = s.upload("api", "one").await;
  let admin = s.admin.clone();
  let mut slow = s.tail("api", "", &admin).await;
  // Events that match only the other tail do not count against this one.
  let mut errors = s.tail("api", "?status=error", &admin).await;
  let t = 1_700_000_000_000i64;
  let flood: Vec<_> = (0..=TAIL_QUEUE as i64)
    .map(|i| event("api", &h1, "ok", t + i, "/"))
    .collect();
  s.traces.ingest(
    "edge-0",
    TraceBatch {
      events: flood,
      dropped: 0,
    },
  );
  let mut texts = 0;
  let close = loop {
    match slow.next().await {
      Some(Ok(tungstenite::Message::Text(_))) => texts += 1,
      Some(Ok(tungstenite::Message::Close(frame))) => break frame.expect("a close frame"),
      other => panic!("unexpected {other:?}"),
    }
  };
  assert_eq!(u16::from(close.code), 1008);
  assert!(close.reason.contains("fell"), "{}", close.reason);
  assert!(texts <= TAIL_QUEUE, "{texts}");
  s.traces.ingest(
    "edge-0",
    TraceBatch {
      events: vec![event("api", &h1, "exception", t, "/")],
      dropped: 0,
    },
  );
  assert_eq!(next_json(&mut errors).await["outcome"], "exception");
  let (_, metrics) = s.call("GET", "/metrics", &admin, None).await;
  assert!(metrics.contains("isola_tails_cut_off_total 1"), "{metrics}");
  let _ = errors.send(tungstenite::Message::Close(None)).await;
}

#[tokio::test]
async fn retention_prunes_old_logs() {
  let s = start().await;
  let (_, h1) = s.upload("api", "one").await;
  let now = isola_control::observe::now_ms();
  let day = 86_400_000;
  s.feed(
    "edge-0",
    vec![
      event("api", &h1, "ok", now - 8 * day, "/old"),
      event("api", &h1, "ok", now - day, "/recent"),
    ],
  )
  .await;
  assert_eq!(s.db.prune_traces(now).unwrap().0, 1);
  let page = s.get_ok("/v1/workers/api/logs").await;
  let logs = page["logs"].as_array().unwrap();
  assert_eq!(logs.len(), 1);
  assert_eq!(
    logs[0]["event"]["request"]["url"],
    "https://api.test/recent"
  );
}

/// An edge's trace call over a real QUIC connection is answered at once
/// and reaches a tail opened through the hub.
#[tokio::test]
async fn a_trace_call_over_quic_reaches_the_hub() {
  use isola_control::pki;
  use isola_control::quic;
  use isola_io::channel;
  use isola_proto::msg::Call;
  use isola_proto::msg::CallReply;
  use isola_proto::msg::ToControl;

  let dir = tempfile::tempdir().unwrap();
  let files = pki::files(dir.path());
  let ca = pki::Ca::generate().unwrap();
  pki::write_file(&files.ca, ca.cert_pem().as_bytes(), false).unwrap();
  let server = ca.issue_server().unwrap();
  pki::write_file(&files.cert, server.cert_pem.as_bytes(), false).unwrap();
  pki::write_file(&files.key, server.key_pem.as_bytes(), true).unwrap();
  let edge = ca.issue_edge("edge-1").unwrap();
  let (edge_cert, edge_key) = (dir.path().join("edge.pem"), dir.path().join("edge-key.pem"));
  pki::write_file(&edge_cert, edge.cert_pem.as_bytes(), false).unwrap();
  pki::write_file(&edge_key, edge.key_pem.as_bytes(), true).unwrap();

  let db = db::test_support::open(
    &dir.path().join("control.db"),
    secrets::Cipher::new(&secrets::generate_key()),
  )
  .unwrap();
  db.create_account("default", true).unwrap();
  db.enroll_edge("edge-1").unwrap();
  let traces = Traces::start(db.clone());
  let (_state_tx, state) = tokio::sync::watch::channel(Arc::new(db.desired_state().unwrap()));
  // A free UDP port (bound and released).
  let addr = std::net::UdpSocket::bind("127.0.0.1:0")
    .unwrap()
    .local_addr()
    .unwrap();
  let shared = quic::Shared {
    db: db.clone(),
    blobs: Blobs::open(Location::default_in(dir.path())).await.unwrap(),
    state,
    scheduler: isola_control::scheduler::driver::Handle::detached(),
    kv: isola_control::kv::Kv::new(db.clone()),
    fleet: isola_control::fleet::Fleet::default(),
    queues: isola_control::queues::driver::Handle::detached(db.clone()),
    traces: traces.clone(),
  };
  let data_dir = dir.path().to_path_buf();
  tokio::spawn(async move { quic::serve(addr, &data_dir, shared).await });

  let mut tail = traces.tail("default_api", Default::default());
  let client = channel::client_config(channel::TlsFiles {
    ca: &files.ca,
    cert: &edge_cert,
    key: &edge_key,
  })
  .unwrap();
  // The endpoint may not listen yet: try until it answers.
  let (_endpoint, conn) = loop {
    match channel::connect(&addr.to_string(), pki::SERVER_NAME, &client).await {
      Ok(c) => break c,
      Err(_) => tokio::task::yield_now().await,
    }
  };
  let (mut send, _recv) = channel::open_stream(&conn).await.unwrap();
  let hello = ToControl::Hello {
    protocol: isola_proto::msg::PROTOCOL_VERSION,
    edge: "edge-1".into(),
    revision: 0,
    versions: vec![],
    site: Default::default(),
  };
  send
    .write_all(&isola_proto::codec::encode(&hello))
    .await
    .unwrap();
  let batch = TraceBatch {
    events: vec![event("api", "h1", "ok", 1_700_000_000_000, "/quic")],
    dropped: 7,
  };
  let reply: CallReply = channel::call(&conn, &Call::Trace(batch)).await.unwrap();
  assert_eq!(reply, CallReply::Traced);
  let message = tail.receiver.rx.recv().await.unwrap();
  let message: Value = serde_json::from_str(&message).unwrap();
  assert_eq!(message["event"]["request"]["url"], "https://api.test/quic");
  assert!(traces
    .metrics()
    .contains("isola_trace_events_dropped_total{edge=\"edge-1\"} 7"));
}

/// Browsers cannot set `Authorization` on a WebSocket: the token may come
/// as the subprotocol `isola.bearer.TOKEN` beside `isola.tail`, which the
/// answer selects (never echoing the token).
#[tokio::test]
async fn a_tail_takes_its_token_as_a_websocket_subprotocol() {
  let s = start().await;
  let (_, hash) = s.upload("api", "one").await;
  let open = |protocols: String| {
    let mut req = format!("ws://{}/v1/workers/api/tail", s.addr)
      .into_client_request()
      .unwrap();
    req
      .headers_mut()
      .insert("sec-websocket-protocol", protocols.parse().unwrap());
    tokio_tungstenite::connect_async(req)
  };
  let (mut ws, response) = open(format!("isola.tail, isola.bearer.{}", s.admin))
    .await
    .unwrap();
  assert_eq!(response.status(), 101);
  assert_eq!(
    response.headers()["sec-websocket-protocol"],
    api::TAIL_PROTOCOL
  );
  s.traces.ingest(
    "edge-0",
    TraceBatch {
      events: vec![event(
        "api",
        &hash,
        "ok",
        1_700_000_000_000,
        "/from-browser",
      )],
      dropped: 0,
    },
  );
  let got = next_json(&mut ws).await;
  assert_eq!(
    got["event"]["request"]["url"],
    "https://api.test/from-browser"
  );

  for protocols in ["isola.tail, isola.bearer.isola_0000", "isola.tail"] {
    match open(protocols.to_string()).await {
      Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
      other => panic!("{protocols:?} opened a tail: {other:?}"),
    }
  }
}
