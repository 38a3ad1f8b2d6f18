//! `isola-edge serve` as an operator runs it: the real binary with a config
//! file, real HTTP, HTTP/2 and TLS on loopback. The tests learn ports from
//! the node's `listening` events and what it serves from `/admin/state`.

use std::io::Read as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use isola_integration::get;
use isola_integration::versions_of;
use isola_integration::write;
use isola_integration::Edge;

const BIN: &str = env!("CARGO_BIN_EXE_isola-edge");

struct Node {
  edge: Edge,
  http: SocketAddr,
  tls: SocketAddr,
  admin: SocketAddr,
}

impl Node {
  fn signal(&self, sig: &str) {
    self.edge.proc.signal(sig);
  }

  /// GET on the public HTTP listener; the node must answer.
  fn get(&self, host: &str, path: &str) -> (u16, String) {
    let r = get(self.http, host, path).unwrap_or_else(|| panic!("no answer for {host}{path}"));
    (r.status, r.text())
  }
}

/// Two certificates (alpha.test, *.beta.test) signed by one test CA.
fn make_certs(dir: &Path) -> rustls::RootCertStore {
  let ca_key = rcgen::KeyPair::generate().unwrap();
  let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
  ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
  let ca = ca_params.self_signed(&ca_key).unwrap();
  for (name, hosts) in [("alpha", vec!["alpha.test"]), ("beta", vec!["*.beta.test"])] {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
      rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    write(dir, &format!("certs/{name}.pem"), &cert.pem());
    write(dir, &format!("certs/{name}-key.pem"), &key.serialize_pem());
  }
  let mut roots = rustls::RootCertStore::empty();
  roots.add(ca.der().clone()).unwrap();
  roots
}

fn start(dir: &Path) -> Node {
  write(
    dir,
    "edge.toml",
    r#"
[server]
listen = "127.0.0.1:0"
listen_tls = "127.0.0.1:0"
admin = "127.0.0.1:0"
threads = 2
max_header_bytes = 16384
header_timeout_ms = 1000

[[certificate]]
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha-key.pem"

[[certificate]]
hosts = ["*.beta.test"]
cert = "certs/beta.pem"
key = "certs/beta-key.pem"

[[worker]]
name = "alpha"
entry = "alpha/worker.js"
vars = { NAME = "A" }
routes = ["alpha.test/*", "*.alpha.test/*"]

[[worker]]
name = "api"
entry = "api/worker.js"
routes = ["shop.alpha.test/api/*", "*.beta.test/*"]
"#,
  );
  let mut edge = Edge::serve(BIN.as_ref(), &dir.join("edge.toml"));
  let (tls, admin) = (edge.proc.listening("https"), edge.proc.listening("admin"));
  let http = edge.http;
  edge.proc.expect_event("serving");
  Node {
    edge,
    http,
    tls,
    admin,
  }
}

const ALPHA_V1: &str = r#"
import { version } from "./version.js";
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/slow") {
      console.log("slow request started");
      await new Promise((r) => setTimeout(r, 200));
    }
    if (url.pathname === "/linger") {
      // Half an answer, the rest 2.5 s later: longer than the header timeout.
      const text = new TextEncoder();
      const body = new ReadableStream({
        async start(c) {
          c.enqueue(text.encode("first "));
          await new Promise((r) => setTimeout(r, 2500));
          c.enqueue(text.encode("last"));
          c.close();
        },
      });
      return new Response(body);
    }
    return new Response(`alpha ${version} ${env.NAME} ${url.host}${url.pathname}`, {
      headers: { "x-version": version },
    });
  },
};
"#;

const API: &str = r#"
export default {
  fetch(request) {
    const url = new URL(request.url);
    return Response.json({ worker: "api", host: url.host, path: url.pathname, proto: url.protocol });
  },
};
"#;

fn setup() -> (tempfile::TempDir, rustls::RootCertStore) {
  let dir = tempfile::tempdir().unwrap();
  let roots = make_certs(dir.path());
  write(dir.path(), "alpha/worker.js", ALPHA_V1);
  write(
    dir.path(),
    "alpha/version.js",
    "export const version = \"v1\";\n",
  );
  write(dir.path(), "api/worker.js", API);
  (dir, roots)
}

/// One request over TLS with SNI `host`; returns status, body, negotiated ALPN.
/// A TLS connection to `host` offering `alpn`, handshake done.
async fn connect_tls(
  roots: &rustls::RootCertStore,
  addr: SocketAddr,
  host: &str,
  alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
  let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
    rustls::crypto::aws_lc_rs::default_provider(),
  ))
  .with_safe_default_protocol_versions()
  .unwrap()
  .with_root_certificates(roots.clone())
  .with_no_client_auth();
  config.alpn_protocols = vec![alpn.to_vec()];
  let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
  let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
  let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
  connector
    .connect(name, tcp)
    .await
    .expect("TLS handshake with the right certificate")
}

async fn get_tls(
  roots: &rustls::RootCertStore,
  addr: SocketAddr,
  host: &str,
  path: &str,
  h2: bool,
) -> (u16, String, Vec<u8>) {
  let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
  let tls = connect_tls(roots, addr, host, alpn).await;
  let alpn = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
  let io = TokioIo::new(tls);
  let req = http::Request::get(format!("https://{host}{path}"))
    .header("host", host)
    .body(Full::<Bytes>::default())
    .unwrap();
  let res = if h2 {
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
      .await
      .unwrap();
    tokio::spawn(conn);
    send.send_request(req).await.unwrap()
  } else {
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send.send_request(req).await.unwrap()
  };
  let status = res.status().as_u16();
  let body = res.into_body().collect().await.unwrap().to_bytes();
  (status, String::from_utf8_lossy(&body).into_owned(), alpn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_with_the_most_specific_match() {
  let (dir, _) = setup();
  let node = start(dir.path());
  let cases = [
    ("alpha.test", "/x", 200, "alpha v1 A alpha.test/x"),
    ("WWW.Alpha.Test", "/y", 200, "alpha v1 A www.alpha.test/y"),
    (
      "deep.www.alpha.test",
      "/",
      200,
      "alpha v1 A deep.www.alpha.test/",
    ),
    // More specific (exact host + path) beats the wildcard route.
    ("shop.alpha.test", "/api/items", 200, r#""worker":"api""#),
    (
      "shop.alpha.test",
      "/cart",
      200,
      "alpha v1 A shop.alpha.test/cart",
    ),
    ("x.beta.test", "/", 200, r#""host":"x.beta.test""#),
    ("beta.test", "/", 404, "No worker is routed for beta.test/"),
    ("other.test", "/", 404, "No worker is routed"),
  ];
  for (host, path, status, want) in cases {
    let (got_status, body) = node.get(host, path);
    assert_eq!(got_status, status, "{host}{path}: {body}");
    assert!(body.contains(want), "{host}{path}: {body}");
  }
  // HTTP/2 with prior knowledge on the plain port; it routes by :authority.
  let tcp = tokio::net::TcpStream::connect(node.http).await.unwrap();
  let (mut h2c, conn) =
    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
      .await
      .unwrap();
  tokio::spawn(conn);
  let res = h2c
    .send_request(
      http::Request::get("http://alpha.test/h2")
        .body(Full::<Bytes>::default())
        .unwrap(),
    )
    .await
    .unwrap();
  assert_eq!(res.version(), http::Version::HTTP_2);
  let body = res.into_body().collect().await.unwrap().to_bytes();
  assert_eq!(&body[..], b"alpha v1 A alpha.test/h2");

  let admin = |path: &str| get(node.admin, "admin", path).expect("the admin port answers");
  assert_eq!(admin("/healthz").status, 200);
  assert_eq!(admin("/readyz").status, 200);
  let metrics = admin("/metrics");
  assert_eq!(metrics.status, 200);
  let metrics = metrics.text();
  assert!(
    metrics.contains(r#"isola_http_requests_total{worker="alpha",class="2xx"}"#),
    "{metrics}"
  );
  assert!(metrics.contains("isola_isolates_live"), "{metrics}");
  assert!(metrics.contains("isola_cold_starts_total"), "{metrics}");

  // The served state: no control plane, each worker on one version with
  // its routes.
  let state = admin("/admin/state");
  assert_eq!(state.header("content-type"), Some("application/json"));
  let state = state.json();
  assert_eq!(
    state["control_revision"],
    serde_json::Value::Null,
    "{state}"
  );
  assert_eq!(state["routes"], 4, "{state}");
  for worker in ["alpha", "api"] {
    let versions = versions_of(&state, worker);
    assert_eq!(versions.len(), 1, "{state}");
    assert_eq!(versions[0].0.len(), 64, "a sha-256 version id: {state}");
    assert_eq!(versions[0].1, 100, "{state}");
    assert_eq!(state["workers"][worker]["routes"], 2, "{state}");
  }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_picks_the_certificate_by_sni_and_negotiates_http2() {
  let (dir, roots) = setup();
  let node = start(dir.path());
  for h2 in [false, true] {
    let (status, body, alpn) = get_tls(&roots, node.tls, "alpha.test", "/secure", h2).await;
    assert_eq!(status, 200);
    assert_eq!(body, "alpha v1 A alpha.test/secure");
    assert_eq!(
      alpn,
      if h2 {
        b"h2".to_vec()
      } else {
        b"http/1.1".to_vec()
      }
    );
    // The wildcard certificate serves a subdomain; the worker sees https.
    let (status, body, _) = get_tls(&roots, node.tls, "shop.beta.test", "/", h2).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""proto":"https:""#), "{body}");
  }
  // A connection that agreed on HTTP/1.1 and sends no request head is cut
  // off at the header timeout (1 s here), as one over plain TCP is.
  let mut idle = connect_tls(&roots, node.tls, "alpha.test", b"http/1.1").await;
  let mut rest = Vec::new();
  let closed = tokio::time::timeout(
    Duration::from_secs(5),
    tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut rest),
  )
  .await;
  assert!(closed.is_ok(), "the idle TLS connection was closed");
}

#[test]
fn a_version_switch_under_load_is_atomic_and_loses_nothing() {
  let (dir, _) = setup();
  let mut node = start(dir.path());
  let v1 = versions_of(&node.edge.state(), "alpha");
  let stop = Arc::new(AtomicBool::new(false));
  let mut loaders = Vec::new();
  for _ in 0..4 {
    let (stop, addr) = (stop.clone(), node.http);
    loaders.push(std::thread::spawn(move || {
      let mut seen = Vec::new();
      let start = Instant::now();
      while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(30) {
        let r = get(addr, "alpha.test", "/slow").expect("no request fails");
        let body = r.text();
        assert_eq!(r.status, 200, "{body}");
        // Each response is wholly one version: module and header agree.
        let version = if body.starts_with("alpha v1 ") {
          "v1"
        } else {
          "v2"
        };
        assert!(body.starts_with(&format!("alpha {version} A ")), "{body}");
        assert_eq!(r.header("x-version"), Some(version), "{body}");
        seen.push(version);
      }
      seen
    }));
  }
  std::thread::sleep(Duration::from_millis(600));
  write(
    dir.path(),
    "alpha/version.js",
    "export const version = \"v2\";\n",
  );
  node.signal("HUP");
  let reloaded = node.edge.proc.expect_event("reloaded");
  assert_eq!(
    reloaded.field("changed").as_deref(),
    Some("1"),
    "{:?}",
    reloaded
  );
  let state = node.edge.wait_state("alpha on a new version", |s| {
    let now = versions_of(s, "alpha");
    now.len() == 1 && now != v1
  });
  let v2 = versions_of(&state, "alpha");
  std::thread::sleep(Duration::from_millis(800));
  stop.store(true, Ordering::Relaxed);
  let per_loader: Vec<Vec<&str>> = loaders.into_iter().map(|l| l.join().unwrap()).collect();
  for (i, seen) in per_loader.iter().enumerate() {
    // Requests kept flowing across the switch, and once this client got
    // the new version it never saw the old one again.
    let first_v2 = seen
      .iter()
      .position(|v| *v == "v2")
      .unwrap_or_else(|| panic!("loader {i} never got v2: {seen:?}"));
    assert!(
      seen[first_v2..].iter().all(|v| *v == "v2"),
      "loader {i} got v1 after v2: {seen:?}"
    );
  }
  assert!(
    per_loader.iter().flatten().any(|v| *v == "v1"),
    "v1 served before the switch: {per_loader:?}"
  );
  // A broken new version is refused; the previous one keeps serving.
  write(dir.path(), "alpha/version.js", "export const version = ;\n");
  node.signal("HUP");
  node
    .edge
    .proc
    .expect_event("reload failed, still serving the previous state");
  assert_eq!(versions_of(&node.edge.state(), "alpha"), v2);
  assert_eq!(
    node.get("alpha.test", "/"),
    (200, "alpha v2 A alpha.test/".to_string())
  );
}

/// What `stream` reads until the node closes it, which must be within 5 s.
fn until_closed(stream: &mut TcpStream, what: &str) -> String {
  stream
    .set_read_timeout(Some(Duration::from_secs(5)))
    .unwrap();
  let mut got = Vec::new();
  let started = Instant::now();
  let _ = stream.read_to_end(&mut got);
  assert!(
    started.elapsed() < Duration::from_secs(5),
    "{what} was closed"
  );
  String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn malformed_slow_and_oversized_requests_do_not_hurt_others() {
  let (dir, _) = setup();
  let node = start(dir.path());

  // A client that never finishes its request head is cut off.
  let mut slow = TcpStream::connect(node.http).unwrap();
  slow
    .write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n")
    .unwrap();
  // So is a kept-alive one that sends no next request...
  let mut idle = TcpStream::connect(node.http).unwrap();
  idle
    .write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
    .unwrap();
  // ... but not one whose answer takes longer than the timeout.
  let lingering = {
    let addr = node.http;
    std::thread::spawn(move || get(addr, "alpha.test", "/linger").expect("an answer"))
  };

  // Garbage gets a 400.
  let mut bad = TcpStream::connect(node.http).unwrap();
  bad.write_all(b"BLAH\x01 / HTTP/9\r\n\r\n").unwrap();
  let mut answer = String::new();
  bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
  let _ = bad.read_to_string(&mut answer);
  assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

  // A head over the limit gets 431.
  let mut big = TcpStream::connect(node.http).unwrap();
  let huge = "x".repeat(40_000);
  let _ = big
    .write_all(format!("GET / HTTP/1.1\r\nHost: alpha.test\r\nX-Big: {huge}\r\n\r\n").as_bytes());
  let mut answer = String::new();
  big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
  let _ = big.read_to_string(&mut answer);
  assert!(
    answer.starts_with("HTTP/1.1 431"),
    "{:?}",
    &answer[..answer.len().min(80)]
  );

  // Meanwhile everyone else is served.
  for _ in 0..5 {
    assert_eq!(node.get("alpha.test", "/").0, 200);
  }

  // The slow client was closed by the header timeout (1 s here).
  until_closed(&mut slow, "the slow connection");
  let answered = until_closed(&mut idle, "the idle connection");
  assert!(
    answered.starts_with("HTTP/1.1 200") && answered.ends_with("alpha v1 A alpha.test/"),
    "{answered:?}"
  );
  let r = lingering.join().unwrap();
  assert_eq!((r.status, r.text().as_str()), (200, "first last"));
}

#[test]
fn sigterm_drains_in_flight_requests() {
  let (dir, _) = setup();
  let mut node = start(dir.path());
  let in_flight = {
    let addr = node.http;
    std::thread::spawn(move || get(addr, "alpha.test", "/slow").expect("the request is served"))
  };
  // Only once the request is inside the worker: connections still queued in
  // the kernel when the listeners close are refused, as with any server.
  node.edge.proc.expect_line("slow request started");
  node.signal("TERM");
  let r = in_flight.join().unwrap();
  assert_eq!(
    (r.status, r.text().as_str()),
    (200, "alpha v1 A alpha.test/slow")
  );
  node
    .edge
    .proc
    .expect_event("shutting down, draining in-flight requests");
  let exit = node.edge.proc.child.wait().unwrap();
  assert!(exit.success(), "{exit:?}");
}

/// The value of one sample in a Prometheus text answer (0 if absent).
fn sample(metrics: &str, series: &str) -> u64 {
  metrics
    .lines()
    .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    .map_or(0, |v| v.trim().parse().unwrap())
}

/// Tenant fairness as an operator sees it: a worker whose requests keep
/// hitting the CPU limit is throttled — answered 503 naming the limit with
/// `Retry-After`, without entering its isolate (`/metrics` counts throttled
/// requests and no new invocations) — while its neighbour answers 200.
#[test]
fn a_worker_that_keeps_hitting_its_cpu_limit_is_throttled_without_running() {
  let dir = tempfile::tempdir().unwrap();
  let dir = dir.path();
  write(
    dir,
    "hello.js",
    r#"export default { fetch() { return new Response("hello"); } };"#,
  );
  write(
    dir,
    "spin.js",
    r#"export default { fetch() { for (;;) {} } };"#,
  );
  write(
    dir,
    "edge.toml",
    r#"
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
threads = 1

# Throttled from the first kill on, for minutes; no hold, to keep it quick.
[fairness]
burst_ms = 0
allowance_ms = 1
hold_ms = 0

[[worker]]
name = "hello"
entry = "hello.js"
routes = ["hello.test/*"]

[[worker]]
name = "spin"
entry = "spin.js"
routes = ["spin.test/*"]
limits = { cpu_ms = 50 }
"#,
  );
  let mut edge = Edge::serve(BIN.as_ref(), &dir.join("edge.toml"));
  let admin = edge.proc.listening("admin");
  let metrics = || get(admin, "admin", "/metrics").unwrap().text();
  let spin = r#"isola_invocations_total{worker="spin",outcome="cpu_limit"}"#;

  let first = get(edge.http, "spin.test", "/").unwrap();
  assert_eq!(first.status, 503);
  assert!(first.text().contains("cpu limit"), "{}", first.text());
  isola_integration::poll(Duration::from_secs(20), || {
    (sample(&metrics(), spin) == 1).then_some(())
  })
  .expect("the kill is metered");

  for _ in 0..3 {
    let r = get(edge.http, "spin.test", "/").unwrap();
    assert_eq!(r.status, 503);
    assert!(
      r.text().contains("throttled") && r.text().contains("CPU limit"),
      "{}",
      r.text()
    );
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let hello = get(edge.http, "hello.test", "/").unwrap();
    assert_eq!((hello.status, hello.text()), (200, "hello".to_string()));
  }
  let m = metrics();
  assert_eq!(
    sample(&m, r#"isola_throttled_requests_total{worker="spin"}"#),
    3,
    "{m}"
  );
  assert_eq!(sample(&m, spin), 1, "throttled requests ran: {m}");
  assert_eq!(sample(&m, "isola_workers_throttled"), 1, "{m}");
  assert_eq!(
    sample(
      &m,
      r#"isola_http_requests_total{worker="hello",class="2xx"}"#
    ),
    3,
    "{m}"
  );
}

/// The files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
  let mut out = Vec::new();
  for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
    let path = entry.path();
    if path.is_dir() {
      out.extend(files_under(&path));
    } else if !entry.file_name().to_string_lossy().starts_with('.') {
      // Not the temp file of a write under way.
      out.push(path);
    }
  }
  out
}

/// V8 code caches as an operator sees them: the first start compiles the
/// worker and writes its cache into the data dir; a restarted edge compiles
/// from it; garbage in its place only costs a compile (`/metrics` counts
/// hits, misses and rejections).
#[test]
fn a_restarted_edge_compiles_from_its_stored_code_cache() {
  let dir = tempfile::tempdir().unwrap();
  let dir = dir.path();
  // Longer than 1 KiB: shorter modules get no cache.
  let hello = format!(
    "export default {{ fetch() {{ return new Response(\"hello\"); }} }};\n// {}\n",
    "-".repeat(1024)
  );
  write(dir, "hello.js", &hello);
  write(
    dir,
    "edge.toml",
    r#"
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
threads = 1

[[worker]]
name = "hello"
entry = "hello.js"
routes = ["hello.test/*"]
"#,
  );
  let caches = dir.join(".isola-edge").join("code-cache");
  // Starts the edge, answers one request; the edge's code cache counts.
  let run = || {
    let mut edge = Edge::serve(BIN.as_ref(), &dir.join("edge.toml"));
    let admin = edge.proc.listening("admin");
    let hello = get(edge.http, "hello.test", "/").unwrap();
    assert_eq!((hello.status, hello.text()), (200, "hello".to_string()));
    let m = get(admin, "admin", "/metrics").unwrap().text();
    let counts = (
      sample(&m, "isola_code_cache_hits_total"),
      sample(&m, "isola_code_cache_misses_total"),
      sample(&m, "isola_code_cache_rejections_total"),
    );
    (edge, counts)
  };
  let wait_for_cache = |old: Option<&[u8]>| {
    isola_integration::poll(Duration::from_secs(20), || {
      let files = files_under(&caches);
      let [file] = files.as_slice() else {
        return None;
      };
      let bytes = std::fs::read(file).ok()?;
      (Some(&bytes[..]) != old).then(|| file.clone())
    })
    .expect("the code cache is stored")
  };

  let (edge, counts) = run();
  assert_eq!(counts, (0, 1, 0));
  let file = wait_for_cache(None);
  edge.proc.terminate();

  let (edge, counts) = run();
  assert_eq!(
    counts,
    (1, 0, 0),
    "the restarted edge used the stored cache"
  );
  edge.proc.terminate();

  std::fs::write(&file, b"not a code cache").unwrap();
  let (edge, counts) = run();
  assert_eq!(counts, (0, 1, 1));
  wait_for_cache(Some(b"not a code cache"));
  edge.proc.terminate();

  let (edge, counts) = run();
  assert_eq!(counts, (1, 0, 0), "the cache was written again");
  edge.proc.terminate();
}

/// A worker on a node reaches nothing of the node's: not its admin port,
/// not a service on its loopback; `[egress] allow` opens exactly what it
/// names.
#[test]
fn workers_cannot_reach_the_node_s_own_network_unless_allowed() {
  let dir = tempfile::tempdir().unwrap();
  let dir = dir.path();
  // A service on the node's loopback that the operator chooses to open.
  let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
  let service_addr = service.local_addr().unwrap();
  std::thread::spawn(move || {
    for mut stream in service.incoming().flatten() {
      let mut buf = [0u8; 1024];
      let _ = stream.read(&mut buf);
      let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nservice");
    }
  });
  write(
    dir,
    "fetcher.js",
    r#"export default {
  async fetch(request) {
    const target = new URL(request.url).searchParams.get("u");
    try {
      const r = await fetch(target);
      return new Response(`ok ${await r.text()}`);
    } catch (e) {
      return new Response(`${e.name}: ${e.message}`);
    }
  },
};"#,
  );
  write(
    dir,
    "edge.toml",
    &format!(
      r#"
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
threads = 1

[egress]
allow = ["{service_addr}"]

[[worker]]
name = "fetcher"
entry = "fetcher.js"
routes = ["fetcher.test/*"]
"#
    ),
  );
  let mut edge = Edge::serve(BIN.as_ref(), &dir.join("edge.toml"));
  let admin = edge.proc.listening("admin");
  edge.proc.expect_event("serving");
  let ask = |target: &str| {
    let r = get(edge.http, "fetcher.test", &format!("/?u={target}")).expect("the node answers");
    r.text()
  };
  let answer = ask(&format!("http://{admin}/admin/state"));
  assert!(
    answer.starts_with("TypeError:")
      && answer.contains("egress policy")
      && answer.contains(&admin.to_string()),
    "{answer}"
  );
  let answer = ask(&format!("http://localhost:{}/admin/state", admin.port()));
  assert!(answer.contains("egress policy"), "{answer}");
  let answer = ask("http://169.254.169.254/latest/meta-data/");
  assert!(answer.contains("link-local"), "{answer}");
  assert_eq!(ask(&format!("http://{service_addr}/")), "ok service");
}

/// Starts `serve --sandbox-selftest <secret>` with `sandbox` as the
/// `[sandbox]` section; returns the node and its self-test event.
fn start_selftest(dir: &Path, secret: &Path, sandbox: &str) -> (Edge, isola_integration::Event) {
  write(
    dir,
    "site/worker.js",
    r#"export default { fetch() { return new Response("site v1"); } };"#,
  );
  write(
    dir,
    "edge.toml",
    &format!(
      r#"
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
threads = 1

[sandbox]
{sandbox}

[[worker]]
name = "site"
entry = "site/worker.js"
routes = ["site.test/*"]
"#
    ),
  );
  let config = dir.join("edge.toml");
  let mut edge = Edge::start(
    BIN.as_ref(),
    &[
      "serve".as_ref(),
      "--config".as_ref(),
      config.as_os_str(),
      "--sandbox-selftest".as_ref(),
      secret.as_os_str(),
    ],
  );
  let event = edge.proc.expect_event("sandbox self-test");
  edge.proc.expect_event("serving");
  (edge, event)
}

#[test]
fn the_sandbox_refuses_other_files_and_syscalls_while_the_node_serves() {
  let dir = tempfile::tempdir().unwrap();
  // A file the node has no business reading: outside its data dir and its
  // config folder.
  let elsewhere = tempfile::tempdir().unwrap();
  let secret = write(elsewhere.path(), "secret.txt", "do not read");

  let (mut edge, test) = start_selftest(dir.path(), &secret, "");
  let in_force = edge.proc.expect_event("sandbox in force");
  let seccomp = in_force.field("seccomp").unwrap();
  let landlock = in_force.field("landlock").unwrap();
  assert!(
    seccomp.starts_with("on(") && seccomp.ends_with(" syscalls)"),
    "{seccomp}"
  );
  assert_eq!(test.field("unshare").as_deref(), Some("denied (EPERM)"));
  if landlock == "full" || landlock == "partial" {
    assert_eq!(test.field("open").as_deref(), Some("denied (EACCES)"));
  } else {
    eprintln!("this kernel has no Landlock ({landlock}); the file check is skipped");
  }
  // The node still serves, and reloads its config folder on SIGHUP.
  let r = get(edge.http, "site.test", "/").expect("the node answers");
  assert_eq!((r.status, r.text().as_str()), (200, "site v1"));
  write(
    dir.path(),
    "site/worker.js",
    r#"export default { fetch() { return new Response("site v2"); } };"#,
  );
  edge.proc.signal("HUP");
  edge.proc.expect_event("reloaded");
  let r = get(edge.http, "site.test", "/").expect("the node answers");
  assert_eq!(r.text(), "site v2");
  drop(edge);

  // Turned off, the same attempts get through to the kernel: the checks
  // above see the sandbox, not something else.
  let dir = tempfile::tempdir().unwrap();
  let (mut edge, test) = start_selftest(dir.path(), &secret, "seccomp = false\nlandlock = false");
  let in_force = edge.proc.expect_event("sandbox in force");
  assert_eq!(in_force.field("seccomp").as_deref(), Some("off(disabled)"));
  assert_eq!(in_force.field("landlock").as_deref(), Some("off(disabled)"));
  assert_eq!(test.field("open").as_deref(), Some("allowed"));
  assert_ne!(test.field("unshare").as_deref(), Some("denied (EPERM)"));
}
