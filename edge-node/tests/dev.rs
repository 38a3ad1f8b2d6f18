//! `isola-edge dev` as a user runs it: the real binary, real HTTP on loopback.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A running `isola-edge dev` and the address it serves.
struct Dev {
  proc: common::Proc,
  addr: SocketAddr,
}

impl Dev {
  fn start(entry: &Path, extra: &[&str]) -> Dev {
    let mut args: Vec<&std::ffi::OsStr> = vec!["dev".as_ref(), entry.as_os_str()];
    args.extend(["--listen", "127.0.0.1:0"].iter().map(std::ffi::OsStr::new));
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let proc = common::Proc::start(&args);
    let banner = proc.expect_line(" at http://");
    let addr = banner
      .split(" at http://")
      .nth(1)
      .and_then(|a| a.trim().parse().ok())
      .expect("address in banner");
    Dev { proc, addr }
  }

  fn expect_line(&self, needle: &str) -> String {
    self.proc.expect_line(needle)
  }
}

use common::write;

async fn send(
  client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
  req: http::Request<Full<Bytes>>,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
  let res = client.request(req).await.expect("request succeeds");
  let (parts, body) = res.into_parts();
  (
    parts.status,
    parts.headers,
    body.collect().await.unwrap().to_bytes(),
  )
}

const WORKER: &str = r#"
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === "/echo") {
      return new Response(request.body, { headers: { "x-len": request.headers.get("content-length") ?? "" } });
    }
    if (url.pathname === "/boom") {
      throw new Error("kaboom in handler");
    }
    console.log("visit", url.pathname);
    return new Response(`hi ${env.GREETING} at ${request.url} via ${request.method}`, {
      headers: [["set-cookie", "a=1"], ["set-cookie", "b=2"]],
    });
  },
};
"#;

#[tokio::test]
async fn dev_serves_http1_and_h2c_with_vars_logs_and_errors() {
  let dir = tempfile::tempdir().unwrap();
  let entry = write(dir.path(), "worker.js", WORKER);
  let dev = Dev::start(&entry, &["--var", "GREETING=hello"]);
  let base = format!("http://{}", dev.addr);

  let h1 = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
  let (status, headers, body) = send(
    &h1,
    http::Request::get(format!("{base}/page?q=1"))
      .body(Full::default())
      .unwrap(),
  )
  .await;
  assert_eq!(status, 200);
  assert_eq!(
    String::from_utf8_lossy(&body),
    format!("hi hello at {base}/page?q=1 via GET")
  );
  let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
  assert_eq!(cookies, ["a=1", "b=2"]);
  let line = dev.expect_line("visit /page");
  assert!(
    line.contains(" worker ") && line.contains(" log "),
    "{line}"
  );

  // HTTP/2 with prior knowledge on the same port.
  let h2 = Client::builder(TokioExecutor::new())
    .http2_only(true)
    .build_http::<Full<Bytes>>();
  let (status, _, body) = send(
    &h2,
    http::Request::get(format!("{base}/h2"))
      .body(Full::default())
      .unwrap(),
  )
  .await;
  assert_eq!(status, 200);
  assert!(String::from_utf8_lossy(&body).ends_with("/h2 via GET"));

  // A 1 MiB body streams through the worker and back.
  let big = Bytes::from(vec![b'z'; 1 << 20]);
  let (status, headers, body) = send(
    &h1,
    http::Request::post(format!("{base}/echo"))
      .body(Full::new(big.clone()))
      .unwrap(),
  )
  .await;
  assert_eq!(status, 200);
  assert_eq!(headers["x-len"], "1048576");
  assert_eq!(body, big);

  // An exception is a 500 with a plain body; the details go to the log only.
  let (status, _, body) = send(
    &h1,
    http::Request::get(format!("{base}/boom"))
      .body(Full::default())
      .unwrap(),
  )
  .await;
  assert_eq!(status, 500);
  assert_eq!(&body[..], b"Worker threw exception\n");
  let line = dev.expect_line("kaboom in handler");
  assert!(line.contains(" error "), "{line}");
  dev.expect_line("worker.js:");

  // ...and the worker keeps answering.
  let (status, _, _) = send(
    &h1,
    http::Request::get(format!("{base}/after"))
      .body(Full::default())
      .unwrap(),
  )
  .await;
  assert_eq!(status, 200);
}

#[test]
fn dev_reports_a_syntax_error_with_module_line_and_column() {
  let dir = tempfile::tempdir().unwrap();
  let entry = write(
    dir.path(),
    "worker.js",
    "import './lib.js';\nexport default { fetch() { return new Response('x') } };\n",
  );
  write(dir.path(), "lib.js", "const ok = 1;\nconst broken = ;\n");
  let out = Command::new(env!("CARGO_BIN_EXE_isola-edge"))
    .args(["dev", entry.to_str().unwrap(), "--listen", "127.0.0.1:0"])
    .output()
    .unwrap();
  assert!(!out.status.success());
  let stderr = String::from_utf8_lossy(&out.stderr);
  assert!(stderr.contains("SyntaxError"), "{stderr}");
  assert!(stderr.contains("lib.js:2:"), "{stderr}");
}

#[test]
fn dev_rejects_a_malformed_var() {
  let out = Command::new(env!("CARGO_BIN_EXE_isola-edge"))
    .args(["dev", "worker.js", "--var", "NOEQUALS"])
    .output()
    .unwrap();
  assert!(!out.status.success());
  let stderr = String::from_utf8_lossy(&out.stderr);
  assert!(stderr.contains("NAME=VALUE"), "{stderr}");
}

#[tokio::test]
async fn dev_enforces_limits_and_recovers_with_a_fresh_isolate() {
  let dir = tempfile::tempdir().unwrap();
  let entry = write(
    dir.path(),
    "worker.js",
    r#"
    let served = 0;
    export default {
      fetch(request) {
        if (new URL(request.url).pathname === "/spin") for (;;) {}
        served++;
        return new Response(`served ${served}`);
      },
    };
    "#,
  );
  let dev = Dev::start(&entry, &["--cpu-ms", "20"]);
  let base = format!("http://{}", dev.addr);
  let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
  let get = |path: &str| {
    http::Request::get(format!("{base}{path}"))
      .body(Full::default())
      .unwrap()
  };

  let (status, _, body) = send(&client, get("/")).await;
  assert_eq!((status.as_u16(), &body[..]), (200, &b"served 1"[..]));
  let (status, _, body) = send(&client, get("/spin")).await;
  assert_eq!(status, 503);
  assert!(
    String::from_utf8_lossy(&body).contains("cpu limit"),
    "{body:?}"
  );
  dev.expect_line("cpu limit");
  // The stopped isolate is replaced: module state starts over.
  let (status, _, body) = send(&client, get("/")).await;
  assert_eq!((status.as_u16(), &body[..]), (200, &b"served 1"[..]));
}
