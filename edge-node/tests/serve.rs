//! `isola-edge serve` as an operator runs it: the real binary with a config
//! file, real HTTP, HTTP/2 and TLS on loopback.

mod common;

use std::io::Read as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;

fn free_port() -> u16 {
  TcpListener::bind("127.0.0.1:0")
    .unwrap()
    .local_addr()
    .unwrap()
    .port()
}

struct Node {
  proc: common::Proc,
  http: SocketAddr,
  tls: SocketAddr,
  admin: SocketAddr,
}

impl Node {
  fn signal(&self, sig: &str) {
    let ok = Command::new("kill")
      .args([&format!("-{sig}"), &self.proc.child.id().to_string()])
      .status()
      .unwrap()
      .success();
    assert!(ok, "kill -{sig}");
  }

  fn expect_line(&self, needle: &str) -> String {
    self.proc.expect_line(needle)
  }
}

use common::write;

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
  let (http, tls, admin) = (free_port(), free_port(), free_port());
  write(
    dir,
    "edge.toml",
    &format!(
      r#"
[server]
listen = "127.0.0.1:{http}"
listen_tls = "127.0.0.1:{tls}"
admin = "127.0.0.1:{admin}"
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
vars = {{ NAME = "A" }}
routes = ["alpha.test/*", "*.alpha.test/*"]

[[worker]]
name = "api"
entry = "api/worker.js"
routes = ["shop.alpha.test/api/*", "*.beta.test/*"]
"#
    ),
  );
  let config = dir.join("edge.toml");
  let proc = common::Proc::start(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()]);
  let node = Node {
    proc,
    http: format!("127.0.0.1:{http}").parse().unwrap(),
    tls: format!("127.0.0.1:{tls}").parse().unwrap(),
    admin: format!("127.0.0.1:{admin}").parse().unwrap(),
  };
  node.expect_line("isola-edge serve:");
  node
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

type H1 = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn get(client: &H1, addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
  let req = http::Request::get(format!("http://{addr}{path}"))
    .header("host", host)
    .body(Full::default())
    .unwrap();
  let res = client.request(req).await.unwrap();
  let status = res.status().as_u16();
  let body = res.into_body().collect().await.unwrap().to_bytes();
  (status, String::from_utf8_lossy(&body).into_owned())
}

/// One request over TLS with SNI `host`; returns status, body, negotiated ALPN.
async fn get_tls(
  roots: &rustls::RootCertStore,
  addr: SocketAddr,
  host: &str,
  path: &str,
  h2: bool,
) -> (u16, String, Vec<u8>) {
  let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
    rustls::crypto::aws_lc_rs::default_provider(),
  ))
  .with_safe_default_protocol_versions()
  .unwrap()
  .with_root_certificates(roots.clone())
  .with_no_client_auth();
  config.alpn_protocols = if h2 {
    vec![b"h2".to_vec()]
  } else {
    vec![b"http/1.1".to_vec()]
  };
  let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
  let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
  let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
  let tls = connector
    .connect(name, tcp)
    .await
    .expect("TLS handshake with the right certificate");
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
  let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
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
    let (got_status, body) = get(&client, node.http, host, path).await;
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

  let admin = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
  assert_eq!(get(&admin, node.admin, "admin", "/healthz").await.0, 200);
  assert_eq!(get(&admin, node.admin, "admin", "/readyz").await.0, 200);
  let (status, metrics) = get(&admin, node.admin, "admin", "/metrics").await;
  assert_eq!(status, 200);
  assert!(
    metrics.contains(r#"isola_http_requests_total{worker="alpha",class="2xx"}"#),
    "{metrics}"
  );
  assert!(metrics.contains("isola_isolates_live"), "{metrics}");
  assert!(metrics.contains("isola_cold_starts_total"), "{metrics}");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_switch_under_load_is_atomic_and_loses_nothing() {
  let (dir, _) = setup();
  let node = start(dir.path());
  let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
  let stop = Arc::new(AtomicBool::new(false));
  let mut loaders = Vec::new();
  for _ in 0..4 {
    let (client, stop, addr) = (client.clone(), stop.clone(), node.http);
    loaders.push(tokio::spawn(async move {
      let mut seen = Vec::new();
      let start = Instant::now();
      while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(30) {
        let (status, body) = get(&client, addr, "alpha.test", "/slow").await;
        assert_eq!(status, 200, "{body}");
        // Each response is wholly one version: module and header agree.
        let version = if body.starts_with("alpha v1 ") {
          "v1"
        } else {
          "v2"
        };
        assert!(body.starts_with(&format!("alpha {version} A ")), "{body}");
        seen.push(version);
      }
      seen
    }));
  }
  tokio::time::sleep(Duration::from_millis(600)).await;
  write(
    dir.path(),
    "alpha/version.js",
    "export const version = \"v2\";\n",
  );
  node.signal("HUP");
  node.expect_line("1 worker(s) switched version");
  tokio::time::sleep(Duration::from_millis(800)).await;
  stop.store(true, Ordering::Relaxed);
  let mut all = Vec::new();
  for l in loaders {
    all.extend(l.await.unwrap());
  }
  assert!(
    all.contains(&"v1") && all.contains(&"v2"),
    "both versions served: {all:?}"
  );
  let first_v2 = all.iter().position(|v| *v == "v2").unwrap();
  assert!(
    all.len() > first_v2,
    "requests kept flowing after the switch"
  );
  // A broken new version is refused; the previous one keeps serving.
  write(dir.path(), "alpha/version.js", "export const version = ;\n");
  node.signal("HUP");
  node.expect_line("reload failed");
  assert_eq!(
    get(&client, node.http, "alpha.test", "/").await.1,
    "alpha v2 A alpha.test/"
  );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_slow_and_oversized_requests_do_not_hurt_others() {
  let (dir, _) = setup();
  let node = start(dir.path());
  let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

  // A client that never finishes its request head is cut off.
  let mut slow = TcpStream::connect(node.http).unwrap();
  slow
    .write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n")
    .unwrap();

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
    assert_eq!(get(&client, node.http, "alpha.test", "/").await.0, 200);
  }

  // The slow client was closed by the header timeout (1 s here).
  slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
  let mut rest = Vec::new();
  let started = Instant::now();
  let _ = slow.read_to_end(&mut rest);
  assert!(
    started.elapsed() < Duration::from_secs(5),
    "the slow connection was closed"
  );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
  let (dir, _) = setup();
  let mut node = start(dir.path());
  let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
  let in_flight = {
    let (client, addr) = (client.clone(), node.http);
    tokio::spawn(async move { get(&client, addr, "alpha.test", "/slow").await })
  };
  // Only once the request is inside the worker: connections still queued in
  // the kernel when the listeners close are refused, as with any server.
  node.expect_line("slow request started");
  node.signal("TERM");
  let (status, body) = in_flight.await.unwrap();
  assert_eq!((status, body.as_str()), (200, "alpha v1 A alpha.test/slow"));
  let exit = node.proc.child.wait().unwrap();
  assert!(exit.success(), "{exit:?}");
}
