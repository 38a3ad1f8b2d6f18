//! Fixture cases: each folder under `tests/fixtures/` is a worker
//! (`worker.js` and its modules) plus `case.json` with the requests to send
//! and the responses and logs to expect. One test per folder.
//!
//! `case.json`:
//! ```json
//! {
//!   "main": "worker.js",                   // optional
//!   "vars": { "NAME": "text" },            // optional
//!   "json_vars": { "CONF": { "a": 1 } },   // optional
//!   "load_error": ["substring", "..."],    // the worker must fail to load
//!   "limits": { "cpu_ms": 50, "wall_ms": 1000, "memory_mb": 64, "subrequests": 5,
//!               "request_body_bytes": 1024, "response_body_bytes": 1024 },
//!   "requests": [{
//!     "method": "POST", "path": "/x?y=1", "host": "example.test",
//!     "headers": { "content-type": "text/plain" },
//!     "body": "text", "body_base64": "...", "body_repeat": 1,
//!     "expect": {
//!       "status": 200,
//!       "headers": { "content-type": "text/plain" },
//!       "header_values": { "set-cookie": ["a=1", "b=2"] },
//!       "body": "exact", "body_contains": ["..."], "body_json": {},
//!       "body_len": 123,
//!       "logs": [["log", "substring"]]      // logged by the time this request is done
//!     }
//!   }]
//! }
//! ```
//! Every worker also gets `env.UPSTREAM`, the base URL of a local HTTP
//! server: `/echo` answers with the request as JSON, `/status/N` with status
//! N, `/bytes/N` with N bytes, `/slow/MS` after MS milliseconds.
//!
//! A case must assert something: either `load_error` or at least one
//! request, never both, and every `expect` must check at least one thing.
//! The runner refuses other cases rather than letting them pass.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use isola_runtime::Bundle;
use isola_runtime::Limits;
use isola_runtime::LogRecord;
use isola_runtime::LogSink;
use isola_runtime::Worker;
use isola_runtime::WorkerConfig;
use libtest_mimic::Failed;
use libtest_mimic::Trial;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
  #[serde(default = "default_main")]
  main: String,
  #[serde(default)]
  vars: BTreeMap<String, String>,
  #[serde(default)]
  json_vars: BTreeMap<String, serde_json::Value>,
  #[serde(default)]
  load_error: Vec<String>,
  #[serde(default)]
  limits: CaseLimits,
  #[serde(default)]
  requests: Vec<CaseRequest>,
}

/// Limits of a case; unset ones are generous, so that API cases do not trip
/// over the CPU limit in unoptimised test builds.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CaseLimits {
  cpu_ms: Option<u64>,
  wall_ms: Option<u64>,
  memory_mb: Option<u64>,
  subrequests: Option<u32>,
  request_body_bytes: Option<u64>,
  response_body_bytes: Option<u64>,
}

impl CaseLimits {
  fn to_limits(&self) -> Limits {
    let mut l = Limits::default()
      .cpu(Duration::from_millis(self.cpu_ms.unwrap_or(10_000)))
      .wall(Duration::from_millis(self.wall_ms.unwrap_or(15_000)));
    if let Some(mb) = self.memory_mb {
      l = l.memory_mib(mb);
    }
    if let Some(n) = self.subrequests {
      l = l.subrequests(n);
    }
    if let Some(n) = self.request_body_bytes {
      l = l.request_body_bytes(n);
    }
    if let Some(n) = self.response_body_bytes {
      l = l.response_body_bytes(n);
    }
    l
  }
}

fn default_main() -> String {
  "worker.js".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
  #[serde(default = "default_method")]
  method: String,
  #[serde(default = "default_path")]
  path: String,
  #[serde(default = "default_host")]
  host: String,
  #[serde(default)]
  headers: BTreeMap<String, String>,
  body: Option<String>,
  body_base64: Option<String>,
  /// Repeats `body` this many times (large bodies without large files).
  #[serde(default = "one")]
  body_repeat: usize,
  expect: Expect,
}

fn default_method() -> String {
  "GET".into()
}
fn default_path() -> String {
  "/".into()
}
fn default_host() -> String {
  "fixture.test".into()
}
fn one() -> usize {
  1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
  status: Option<u16>,
  #[serde(default)]
  headers: BTreeMap<String, String>,
  #[serde(default)]
  header_values: BTreeMap<String, Vec<String>>,
  #[serde(default)]
  absent_headers: Vec<String>,
  body: Option<String>,
  #[serde(default)]
  body_contains: Vec<String>,
  #[serde(default)]
  body_not_contains: Vec<String>,
  body_json: Option<serde_json::Value>,
  body_len: Option<usize>,
  #[serde(default)]
  logs: Vec<(String, String)>,
}

impl Case {
  /// Refuses a case that would pass whatever the worker did.
  fn check_asserts_something(&self) -> anyhow::Result<()> {
    if self.requests.is_empty() && self.load_error.is_empty() {
      bail!("case.json asserts nothing: give it \"requests\" or a \"load_error\"");
    }
    if !self.requests.is_empty() && !self.load_error.is_empty() {
      bail!("case.json has both \"requests\" and a \"load_error\"; a worker that fails to load answers no requests");
    }
    for (i, request) in self.requests.iter().enumerate() {
      if request.expect.is_empty() {
        bail!(
          "case.json request #{i} ({} {}) has an \"expect\" that checks nothing",
          request.method,
          request.path
        );
      }
    }
    Ok(())
  }
}

impl Expect {
  fn is_empty(&self) -> bool {
    self.status.is_none()
      && self.headers.is_empty()
      && self.header_values.is_empty()
      && self.absent_headers.is_empty()
      && self.body.is_none()
      && self.body_contains.is_empty()
      && self.body_not_contains.is_empty()
      && self.body_json.is_none()
      && self.body_len.is_none()
      && self.logs.is_empty()
  }
}

/// One trial per folder under `tests/fixtures/`, plus the runner's own check.
pub fn trials() -> Vec<Trial> {
  let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
  let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
    .expect("tests/fixtures exists")
    .filter_map(|e| e.ok().map(|e| e.path()))
    .filter(|p| p.join("case.json").is_file())
    .collect();
  dirs.sort();
  let mut trials: Vec<Trial> = dirs
    .into_iter()
    .map(|dir| {
      let name = dir.file_name().unwrap().to_string_lossy().to_string();
      Trial::test(format!("fixtures::{name}"), move || {
        run_case(&dir).map_err(|e| Failed::from(format!("{e:#}")))
      })
    })
    .collect();
  trials.push(Trial::test(
    "fixtures::runner_refuses_cases_that_assert_nothing",
    || refuses_cases_that_assert_nothing().map_err(|e| Failed::from(format!("{e:#}"))),
  ));
  trials
}

fn run_case(dir: &Path) -> anyhow::Result<()> {
  let case: Case = serde_json::from_slice(&std::fs::read(dir.join("case.json"))?)
    .with_context(|| format!("{}/case.json", dir.display()))?;
  case.check_asserts_something()?;
  let rt = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()?;
  rt.block_on(async move {
    let upstream = start_upstream().await?;
    let logs: Arc<Mutex<Vec<LogRecord>>> = Arc::default();
    let sink = {
      let logs = logs.clone();
      LogSink::new(move |r| logs.lock().unwrap().push(r))
    };
    let mut config = WorkerConfig::new("fixture")
      .var("UPSTREAM", format!("http://{upstream}"))
      .limits(case.limits.to_limits());
    for (k, v) in &case.vars {
      config = config.var(k, v);
    }
    for (k, v) in &case.json_vars {
      config = config.json_var(k, v.clone());
    }
    let bundle = Bundle::from_entry_file(&dir.join(&case.main))?;
    let loaded = Worker::new(bundle, &config, sink).await;
    if !case.load_error.is_empty() {
      let err = match loaded {
        Ok(_) => bail!("the worker loaded, but the case expects a load error"),
        Err(e) => e.to_string(),
      };
      for want in &case.load_error {
        if !err.contains(want.as_str()) {
          bail!("load error lacks {want:?}:\n{err}");
        }
      }
      return Ok(());
    }
    let worker = loaded
      .map_err(|e| anyhow!("worker failed to load:\n{e}"))?
      .spawn();
    for (i, req) in case.requests.iter().enumerate() {
      let what = format!("request #{i} {} {}", req.method, req.path);
      let mut invocation = worker.invoke(build_request(req)?);
      let response = tokio::time::timeout(Duration::from_secs(20), invocation.response())
        .await
        .with_context(|| format!("{what}: no response within 20 s"))?;
      let response = match response {
        Ok(r) => r,
        Err(e) => isola_runtime::error_response(&e),
      };
      let (parts, body) = response.into_parts();
      let body = tokio::time::timeout(Duration::from_secs(20), body.collect_bytes())
        .await
        .with_context(|| format!("{what}: body did not end within 20 s"))?
        .map_err(|e| anyhow!("{what}: body failed: {e}"))?;
      // waitUntil work finishes before the next request (and before logs
      // of this invocation are checked).
      tokio::time::timeout(Duration::from_secs(20), invocation.finished())
        .await
        .with_context(|| format!("{what}: waitUntil work did not settle within 20 s"))?;
      // Logs accumulate over the case: background work of one request (a
      // timer) may log just before or after that request's check.
      let all_logs = logs.lock().unwrap().clone();
      check(&req.expect, &parts, &body, &all_logs).with_context(|| {
        let logs: Vec<String> = all_logs
          .iter()
          .map(|r| format!("  [{}] {}", r.level.as_str(), r.message))
          .collect();
        format!(
          "{what}\n  got status {} body {:?}\n  logs:\n{}",
          parts.status,
          String::from_utf8_lossy(&body[..body.len().min(2000)]),
          logs.join("\n")
        )
      })?;
    }
    Ok(())
  })
}

fn build_request(req: &CaseRequest) -> anyhow::Result<http::Request<isola_runtime::RequestBody>> {
  let mut builder = http::Request::builder()
    .method(req.method.as_str())
    .uri(format!("http://{}{}", req.host, req.path))
    .header("host", &req.host);
  for (k, v) in &req.headers {
    builder = builder.header(k, v);
  }
  let body = match (&req.body, &req.body_base64) {
    (Some(text), _) => Bytes::from(text.repeat(req.body_repeat)),
    (None, Some(b64)) => Bytes::from(base64::engine::general_purpose::STANDARD.decode(b64)?),
    (None, None) => Bytes::new(),
  };
  Ok(builder.body(isola_runtime::request_body(Full::new(body)))?)
}

fn check(
  expect: &Expect,
  parts: &http::response::Parts,
  body: &Bytes,
  logs: &[LogRecord],
) -> anyhow::Result<()> {
  if let Some(status) = expect.status {
    if parts.status.as_u16() != status {
      bail!("status {} != expected {status}", parts.status);
    }
  }
  for (name, want) in &expect.headers {
    let got = parts
      .headers
      .get(name)
      .map(|v| v.to_str().unwrap_or("<binary>"));
    if got != Some(want.as_str()) {
      bail!("header {name}: {got:?} != expected {want:?}");
    }
  }
  for (name, want) in &expect.header_values {
    let got: Vec<&str> = parts
      .headers
      .get_all(name)
      .iter()
      .map(|v| v.to_str().unwrap_or("<binary>"))
      .collect();
    if got != *want {
      bail!("header {name} values {got:?} != expected {want:?}");
    }
  }
  for name in &expect.absent_headers {
    if parts.headers.contains_key(name) {
      bail!("header {name} should be absent");
    }
  }
  let text = String::from_utf8_lossy(body);
  if let Some(want) = &expect.body {
    if text != *want {
      bail!("body != expected {want:?}");
    }
  }
  for want in &expect.body_contains {
    if !text.contains(want.as_str()) {
      bail!("body lacks {want:?}");
    }
  }
  for bad in &expect.body_not_contains {
    if text.contains(bad.as_str()) {
      bail!("body must not contain {bad:?}");
    }
  }
  if let Some(want) = &expect.body_json {
    let got: serde_json::Value =
      serde_json::from_slice(body).map_err(|e| anyhow!("body is not JSON: {e}"))?;
    if got != *want {
      bail!("JSON body {got} != expected {want}");
    }
  }
  if let Some(len) = expect.body_len {
    if body.len() != len {
      bail!("body length {} != expected {len}", body.len());
    }
  }
  for (level, want) in &expect.logs {
    let found = logs
      .iter()
      .any(|r| r.level.as_str() == level && r.message.contains(want.as_str()));
    if !found {
      bail!("no {level} log containing {want:?}");
    }
  }
  Ok(())
}

/// A small HTTP server for outbound `fetch()` from fixtures.
async fn start_upstream() -> anyhow::Result<SocketAddr> {
  let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
  let addr = listener.local_addr()?;
  tokio::spawn(async move {
    loop {
      let Ok((stream, _)) = listener.accept().await else {
        return;
      };
      tokio::spawn(async move {
        let service = hyper::service::service_fn(upstream);
        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
          .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
          .await;
      });
    }
  });
  Ok(addr)
}

async fn upstream(
  req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
  let path = req.uri().path().to_string();
  let mut parts = path.trim_start_matches('/').splitn(2, '/');
  let (head, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
  let reply = |status: u16, ctype: &str, body: Bytes| {
    http::Response::builder()
      .status(status)
      .header("content-type", ctype)
      .body(Full::new(body))
      .unwrap()
  };
  Ok(match head {
    "echo" => {
      let method = req.method().to_string();
      let uri = req.uri().to_string();
      let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
      let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
      let json = serde_json::json!({
        "method": method, "uri": uri, "headers": headers,
        "body": String::from_utf8_lossy(&body),
      });
      reply(200, "application/json", Bytes::from(json.to_string()))
    }
    "status" => reply(
      arg.parse().unwrap_or(500),
      "text/plain",
      Bytes::from_static(b"status"),
    ),
    "bytes" => reply(
      200,
      "application/octet-stream",
      Bytes::from(vec![b'x'; arg.parse().unwrap_or(0)]),
    ),
    "slow" => {
      tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(100))).await;
      reply(200, "text/plain", Bytes::from_static(b"slow"))
    }
    _ => reply(
      404,
      "text/plain",
      Bytes::from_static(b"no such upstream route"),
    ),
  })
}

fn refuses_cases_that_assert_nothing() -> anyhow::Result<()> {
  for (json, why) in [
    (r#"{}"#, "asserts nothing"),
    (r#"{ "requests": [] }"#, "asserts nothing"),
    (
      r#"{ "requests": [{ "path": "/", "expect": {} }] }"#,
      "checks nothing",
    ),
    (
      r#"{ "load_error": ["x"], "requests": [{ "expect": { "status": 200 } }] }"#,
      "both",
    ),
  ] {
    let case: Case = serde_json::from_str(json)?;
    match case.check_asserts_something() {
      Ok(()) => bail!("{json} was accepted"),
      Err(e) if e.to_string().contains(why) => {}
      Err(e) => bail!("{json}: unexpected refusal {e}"),
    }
  }
  let case: Case = serde_json::from_str(r#"{ "requests": [{ "expect": { "status": 200 } }] }"#)?;
  case.check_asserts_something()
}
