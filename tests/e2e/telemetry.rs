//! OpenTelemetry export: a control plane and an edge with `[telemetry]
//! otlp_endpoint` send their spans over OTLP/HTTP to a receiver run here;
//! a worker's `fetch()` to a server run here carries the `traceparent` of
//! its span. A second edge without `[telemetry]` sends no `traceparent`.

use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use isola_integration::poll;
use isola_integration::Control;
use isola_integration::EdgeSetup;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

const CALLER: &str = r#"
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    const down = await fetch(`${env.DOWN}/down${path}`);
    return new Response(`up ${await down.text()}`);
  },
};
"#;

/// A span as the receiver got it, with its resource's `service.name`.
#[derive(Clone, Debug)]
struct Got {
  service: String,
  trace_id: String,
  span_id: String,
  parent_span_id: String,
  name: String,
  kind: i32,
  attributes: Vec<KeyValue>,
}

impl Got {
  fn attr(&self, key: &str) -> Option<String> {
    let kv = self.attributes.iter().find(|kv| kv.key == key)?;
    Some(match kv.value.as_ref()?.value.as_ref()? {
      AnyValue::StringValue(s) => s.clone(),
      AnyValue::IntValue(i) => i.to_string(),
      other => format!("{other:?}"),
    })
  }
}

fn hex(bytes: &[u8]) -> String {
  bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads HTTP/1.1 requests off `stream` (keep-alive), hands each (path,
/// headers, body) to `handle` and writes its answer.
fn serve_http(
  stream: TcpStream,
  mut handle: impl FnMut(&str, &[(String, String)], &[u8]) -> (u16, Vec<u8>),
) {
  let mut reader = BufReader::new(stream.try_clone().unwrap());
  let mut writer = stream;
  loop {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
      return;
    }
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
      let mut h = String::new();
      if reader.read_line(&mut h).unwrap_or(0) == 0 {
        return;
      }
      let h = h.trim_end();
      if h.is_empty() {
        break;
      }
      if let Some((k, v)) = h.split_once(':') {
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
      }
    }
    let length = headers
      .iter()
      .find(|(k, _)| k == "content-length")
      .and_then(|(_, v)| v.parse().ok())
      .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
      return;
    }
    let (status, answer) = handle(&path, &headers, &body);
    let head = format!(
      "HTTP/1.1 {status} X\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
      answer.len()
    );
    if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&answer).is_err() {
      return;
    }
  }
}

/// Runs `handle` for every request to a loopback server; returns its address.
fn server(
  handle: impl Fn(&str, &[(String, String)], &[u8]) -> (u16, Vec<u8>) + Send + Sync + 'static,
) -> SocketAddr {
  let listener = TcpListener::bind("127.0.0.1:0").unwrap();
  let addr = listener.local_addr().unwrap();
  let handle = Arc::new(handle);
  std::thread::spawn(move || {
    for stream in listener.incoming().flatten() {
      let handle = handle.clone();
      std::thread::spawn(move || serve_http(stream, |p, h, b| handle(p, h, b)));
    }
  });
  addr
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`.
fn otlp_receiver() -> (SocketAddr, Arc<Mutex<Vec<Got>>>) {
  let got: Arc<Mutex<Vec<Got>>> = Arc::default();
  let spans = got.clone();
  let addr = server(move |path, headers, body| {
    assert_eq!(path, "/v1/traces");
    assert!(
      headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "application/x-protobuf"),
      "{headers:?}"
    );
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
    let mut spans = spans.lock().unwrap();
    for rs in request.resource_spans {
      let service = rs
        .resource
        .iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
          AnyValue::StringValue(s) => Some(s.clone()),
          _ => None,
        })
        .unwrap_or_default();
      for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
        spans.push(Got {
          service: service.clone(),
          trace_id: hex(&span.trace_id),
          span_id: hex(&span.span_id),
          parent_span_id: hex(&span.parent_span_id),
          name: span.name,
          kind: span.kind,
          attributes: span.attributes,
        });
      }
    }
    (200, Vec::new())
  });
  (addr, got)
}

/// Each downstream request's path and `traceparent`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// The downstream server: answers `down` and keeps each request's path and
/// `traceparent`.
fn downstream() -> (SocketAddr, Seen) {
  let seen: Seen = Arc::default();
  let log = seen.clone();
  let addr = server(move |path, headers, _| {
    let traceparent = headers
      .iter()
      .find(|(k, _)| k == "traceparent")
      .map(|(_, v)| v.clone());
    log.lock().unwrap().push((path.to_string(), traceparent));
    (200, b"down".to_vec())
  });
  (addr, seen)
}

fn find(got: &Mutex<Vec<Got>>, want: impl Fn(&Got) -> bool) -> Option<Got> {
  got.lock().unwrap().iter().find(|g| want(g)).cloned()
}

fn traceparent_of(seen: &Mutex<Vec<(String, Option<String>)>>, path: &str) -> Option<String> {
  seen
    .lock()
    .unwrap()
    .iter()
    .find(|(p, _)| p == path)
    .map(|(_, t)| t.clone().unwrap_or_default())
}

fn add_telemetry(edge: &EdgeSetup, endpoint: SocketAddr) {
  let text = std::fs::read_to_string(&edge.config).unwrap();
  std::fs::write(
    &edge.config,
    format!("{text}\n[telemetry]\notlp_endpoint = \"http://{endpoint}\"\n"),
  )
  .unwrap();
}

#[test]
fn spans_continue_the_callers_trace_and_name_each_subrequest() {
  let dir = tempfile::tempdir().unwrap();
  let (otlp, got) = otlp_receiver();
  let (down, seen) = downstream();
  let control_toml = dir.path().join("control.toml");
  std::fs::write(
    &control_toml,
    format!("[telemetry]\notlp_endpoint = \"http://{otlp}/\"\n"),
  )
  .unwrap();
  let control = Control::init_and_start_with(
    &dir.path().join("control"),
    &["--config", control_toml.to_str().unwrap()],
  );
  let on = control.enroll("edge-on", &dir.path().join("edge-on"), 200);
  add_telemetry(&on, otlp);
  let off = control.enroll("edge-off", &dir.path().join("edge-off"), 200);
  // The downstream server is on loopback, which the egress policy denies
  // unless allowed.
  for edge in [&on, &off] {
    let text = std::fs::read_to_string(&edge.config).unwrap();
    std::fs::write(
      &edge.config,
      format!(
        "{text}
[egress]
allow = [\"{down}\"]
"
      ),
    )
    .unwrap();
  }
  let _procs = [on.start(), off.start()];
  let v = control.upload("caller", CALLER, json!({"DOWN": format!("http://{down}")}));
  control.route("caller.test/*", "caller");
  control.deploy("caller", &v);
  let revision = control.api("GET", "/v1/edges", None).json()["revision"]
    .as_u64()
    .unwrap();
  for edge in [&on, &off] {
    assert!(
      edge.wait_revision(revision, WAIT),
      "the edge applied the deployment"
    );
  }

  // A request that names its caller's span.
  let trace_id = "0af7651916cd43dd8448eb211c80319c";
  let caller_span = "b7ad6b7169203331";
  let incoming = format!("00-{trace_id}-{caller_span}-01");
  let r = isola_integration::http(
    on.http(),
    "GET",
    "caller.test",
    "/with",
    &[("traceparent", &incoming)],
    b"",
  )
  .expect("the edge answers");
  assert_eq!((r.status, r.text().as_str()), (200, "up down"));
  let invocation = poll(WAIT, || {
    find(&got, |g| {
      g.trace_id == trace_id && g.name == "fetch GET /with"
    })
  })
  .expect("the invocation's span reaches the receiver");
  assert_eq!(invocation.service, "isola-edge");
  assert_eq!(invocation.parent_span_id, caller_span);
  assert_eq!(invocation.kind, 2, "a server span");
  assert_eq!(
    invocation.attr("http.request.method").as_deref(),
    Some("GET")
  );
  assert_eq!(
    invocation.attr("http.response.status_code").as_deref(),
    Some("200")
  );
  // The worker's name on the edge: its account's, then its own.
  assert_eq!(
    invocation.attr("isola.worker").as_deref(),
    Some("default_caller")
  );
  assert_eq!(invocation.attr("isola.edge").as_deref(), Some("edge-on"));
  assert_eq!(invocation.attr("isola.outcome").as_deref(), Some("ok"));
  assert_eq!(invocation.attr("faas.trigger").as_deref(), Some("http"));
  let subrequest = poll(WAIT, || {
    find(&got, |g| g.parent_span_id == invocation.span_id)
  })
  .expect("the fetch() span reaches the receiver");
  assert_eq!(subrequest.trace_id, trace_id);
  assert_eq!(subrequest.kind, 3, "a client span");
  assert_eq!(subrequest.name, "fetch GET /down/with");
  assert_eq!(
    subrequest.attr("url.full"),
    Some(format!("http://{down}/down/with"))
  );
  assert_eq!(
    subrequest.attr("http.response.status_code").as_deref(),
    Some("200")
  );
  // The downstream request named that span.
  assert_eq!(
    traceparent_of(&seen, "/down/with").as_deref(),
    Some(format!("00-{trace_id}-{}-01", subrequest.span_id).as_str())
  );

  // Without a traceparent (or with a malformed one) a new trace starts.
  for (path, header) in [("/without", None), ("/malformed", Some("00-xyz-01"))] {
    let headers: Vec<(&str, &str)> = header.map(|h| ("traceparent", h)).into_iter().collect();
    let r = isola_integration::http(on.http(), "GET", "caller.test", path, &headers, b"")
      .expect("the edge answers");
    assert_eq!(r.status, 200);
    let name = format!("fetch GET {path}");
    let root = poll(WAIT, || find(&got, |g| g.name == name)).expect("its span arrives");
    assert_eq!(root.parent_span_id, "", "{path}: a root span");
    assert_ne!(root.trace_id, trace_id);
    let sent = traceparent_of(&seen, &format!("/down{path}")).unwrap();
    assert!(
      sent.starts_with(&format!("00-{}-", root.trace_id)),
      "{path}: the downstream request continues the new trace: {sent}"
    );
  }

  // The control plane's API requests are spans of their own, by route.
  let api = poll(WAIT, || {
    find(&got, |g| {
      g.service == "isola-control" && g.attr("http.route").as_deref() == Some("/v1/edges")
    })
  })
  .expect("an API request's span arrives");
  assert_eq!(api.name, "GET /v1/edges");
  assert_eq!(
    api.attr("http.response.status_code").as_deref(),
    Some("200")
  );

  // The edge without [telemetry] sends no traceparent, and its
  // invocations are not exported.
  let r = off.get("caller.test", "/off").expect("the edge answers");
  assert_eq!((r.status, r.text().as_str()), (200, "up down"));
  assert_eq!(traceparent_of(&seen, "/down/off").as_deref(), Some(""));
  // Spans leave at least every second; wait for a later span of edge-on
  // so that any of edge-off's would have had the time to arrive.
  on.get("caller.test", "/after").expect("the edge answers");
  poll(WAIT, || find(&got, |g| g.name == "fetch GET /after")).expect("a later span arrives");
  assert!(
    find(&got, |g| g.name == "fetch GET /off"
      || g.attr("isola.edge").as_deref() == Some("edge-off"))
    .is_none(),
    "edge-off exported nothing"
  );
}
