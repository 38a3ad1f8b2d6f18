//! `isola-edge dev` as a user runs it: the real binary, real HTTP on loopback.

use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use isola_integration::free_tcp;
use isola_integration::http;
use isola_integration::poll;
use isola_integration::write;
use isola_integration::Edge;
use isola_integration::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_isola-edge");

/// A running `isola-edge dev` on the port it picked and reported.
struct Dev {
  edge: Edge,
  addr: SocketAddr,
}

impl Dev {
  fn start(entry: &Path, extra: &[&str]) -> Dev {
    let mut args: Vec<&std::ffi::OsStr> = vec!["dev".as_ref(), entry.as_os_str()];
    args.extend(["--listen", "127.0.0.1:0"].iter().map(std::ffi::OsStr::new));
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let mut edge = Edge::start(BIN.as_ref(), &args);
    let addr = edge.http;
    // The banner for people names the same address as the event.
    edge.proc.expect_line(&format!(
      "isola-edge dev: serving {} at http://{addr}",
      entry.display()
    ));
    Dev { edge, addr }
  }

  fn expect_line(&mut self, needle: &str) -> String {
    self.edge.proc.expect_line(needle)
  }

  /// One HTTP/1.1 request; the node must answer.
  fn send(&self, method: &str, path: &str, body: &[u8]) -> isola_integration::Response {
    let host = self.addr.to_string();
    http(self.addr, method, &host, path, &[], body)
      .unwrap_or_else(|| panic!("no answer to {method} {path}"))
  }
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
  let mut dev = Dev::start(&entry, &["--var", "GREETING=hello"]);
  let base = format!("http://{}", dev.addr);

  let r = dev.send("GET", "/page?q=1", b"");
  assert_eq!(r.status, 200);
  assert_eq!(r.text(), format!("hi hello at {base}/page?q=1 via GET"));
  assert_eq!(r.header_all("set-cookie"), ["a=1", "b=2"]);
  let line = dev.expect_line("visit /page");
  assert!(
    line.contains(" worker ") && line.contains(" log "),
    "{line}"
  );

  // HTTP/2 with prior knowledge on the same port.
  let h2 = Client::builder(TokioExecutor::new())
    .http2_only(true)
    .build_http::<Full<Bytes>>();
  let res = h2
    .request(
      http::Request::get(format!("{base}/h2"))
        .body(Full::default())
        .unwrap(),
    )
    .await
    .expect("request succeeds");
  assert_eq!(res.status(), 200);
  let body = res.into_body().collect().await.unwrap().to_bytes();
  assert!(String::from_utf8_lossy(&body).ends_with("/h2 via GET"));

  // A 1 MiB body streams through the worker and back.
  let big = vec![b'z'; 1 << 20];
  let r = dev.send("POST", "/echo", &big);
  assert_eq!(r.status, 200);
  assert_eq!(r.header("x-len"), Some("1048576"));
  assert!(
    r.body == big,
    "the echoed body differs ({} bytes)",
    r.body.len()
  );

  // An exception is a 500 with a plain body; the details go to the log only.
  let r = dev.send("GET", "/boom", b"");
  assert_eq!(r.status, 500);
  assert_eq!(r.text(), "Worker threw exception\n");
  let line = dev.expect_line("kaboom in handler");
  assert!(line.contains(" error "), "{line}");
  dev.expect_line("worker.js:");

  // ...and the worker keeps answering.
  assert_eq!(dev.send("GET", "/after", b"").status, 200);
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

/// A request sent while the worker loads waits for it in the listen
/// backlog and is answered once it has loaded, instead of being refused.
#[test]
fn dev_answers_a_connection_made_while_the_worker_loads() {
  let dir = tempfile::tempdir().unwrap();
  // The load takes a second: long enough that the connections below are
  // made while it runs.
  let entry = write(
    dir.path(),
    "worker.js",
    "await new Promise((resolve) => setTimeout(resolve, 1000));\n\
     export default { fetch() { return new Response('loaded'); } };\n",
  );
  // `dev` reports its port only once the worker has loaded, too late here,
  // so the test picks one; another test may take it before `dev` binds it,
  // and then `dev` exits saying so and the test picks again.
  let (mut dev, addr, listen) = (0..5)
    .find_map(|_| {
      let addr = free_tcp();
      let listen = addr.to_string();
      let mut dev = Proc::start(
        BIN.as_ref(),
        &[
          "dev".as_ref(),
          entry.as_os_str(),
          "--listen".as_ref(),
          listen.as_ref(),
        ],
      );
      let up = poll(Duration::from_secs(30), || {
        if TcpStream::connect(addr).is_ok() {
          Some(true)
        } else {
          dev.child.try_wait().ok().flatten().map(|_| false)
        }
      })
      .expect("dev listens or exits");
      if up {
        return Some((dev, addr, listen));
      }
      dev.expect_line("cannot listen on");
      None
    })
    .expect("a free port in five tries");
  // The banner comes once the worker has loaded: not yet.
  let early = dev.output();
  assert!(
    !early.contains("isola-edge dev: serving"),
    "the worker loaded before the connection was made: {early}"
  );
  let r = http(addr, "GET", &listen, "/", &[], b"").expect("an answer once the worker has loaded");
  assert_eq!(r.status, 200);
  assert_eq!(r.text(), "loaded");
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

#[test]
fn dev_enforces_limits_and_recovers_with_a_fresh_isolate() {
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
  let mut dev = Dev::start(&entry, &["--cpu-ms", "20"]);

  let r = dev.send("GET", "/", b"");
  assert_eq!((r.status, r.text().as_str()), (200, "served 1"));
  let r = dev.send("GET", "/spin", b"");
  assert_eq!(r.status, 503);
  assert!(r.text().contains("cpu limit"), "{}", r.text());
  dev.expect_line("cpu limit");
  // The stopped isolate is replaced: module state starts over.
  let r = dev.send("GET", "/", b"");
  assert_eq!((r.status, r.text().as_str()), (200, "served 1"));
}

#[test]
fn dev_test_scheduled_runs_the_handler_once_per_request() {
  let dir = tempfile::tempdir().unwrap();
  let entry = write(
    dir.path(),
    "worker.js",
    r#"
    export default {
      async scheduled(controller, env, ctx) {
        if (controller.cron === "0 0 * * *") throw new Error("midnight job broke");
        ctx.waitUntil(Promise.resolve().then(() =>
          console.log(`tick ${controller.cron} ${controller.type} ${typeof controller.scheduledTime}`)));
      },
    };
    "#,
  );
  let mut dev = Dev::start(&entry, &["--test-scheduled"]);
  let r = dev.send("GET", "/__scheduled?cron=*%2F5+*+*+*+*", b"");
  assert_eq!((r.status, r.text().as_str()), (200, "Ran scheduled event"));
  dev.expect_line("tick */5 * * * * scheduled number");
  let r = dev.send("GET", "/__scheduled?cron=0+0+*+*+*", b"");
  assert_eq!(r.status, 500);
  assert!(r.text().contains("midnight job broke"), "{}", r.text());
  // No fetch handler: an ordinary request is told so, in the log.
  let r = dev.send("GET", "/", b"");
  assert_eq!(r.status, 500);
  dev.expect_line("Handler does not export a fetch() function.");
}

#[test]
fn dev_service_binds_another_worker_for_fetch_and_rpc() {
  let dir = tempfile::tempdir().unwrap();
  let entry = write(
    dir.path(),
    "main.js",
    r#"
    export default {
      async fetch(request, env) {
        if (new URL(request.url).pathname === "/rpc") {
          return new Response(`sum ${await env.MATH.add(20, 22)}`);
        }
        return env.MATH.fetch(request);
      },
    };
    "#,
  );
  let service_dir = dir.path().join("math");
  std::fs::create_dir_all(&service_dir).unwrap();
  let service = write(
    &service_dir,
    "math.js",
    r#"
    import { WorkerEntrypoint } from "cloudflare:workers";
    export default class extends WorkerEntrypoint {
      fetch(request) {
        return new Response(request.body, { headers: { "x-served-by": "math" } });
      }
      add(a, b) {
        return a + b;
      }
    }
    "#,
  );
  let binding = format!("MATH={}", service.display());
  let dev = Dev::start(&entry, &["--service", &binding]);
  let r = dev.send("GET", "/rpc", b"");
  assert_eq!((r.status, r.text().as_str()), (200, "sum 42"));
  let r = dev.send("POST", "/echo", b"through the binding");
  assert_eq!(r.status, 200);
  assert_eq!(r.header("x-served-by"), Some("math"));
  assert_eq!(r.text(), "through the binding");
}

const KV_WORKER: &str = r#"
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/put") {
      await env.NS.put("greeting", url.searchParams.get("v"), { metadata: { by: "dev" } });
      return new Response("stored");
    }
    const { value, metadata } = await env.NS.getWithMetadata("greeting");
    return new Response(value === null ? "missing" : `${value} by ${metadata.by}`);
  },
};
"#;

#[test]
fn dev_kv_keeps_a_put_for_the_next_request_and_across_restarts() {
  let dir = tempfile::tempdir().unwrap();
  let entry = write(dir.path(), "worker.js", KV_WORKER);
  let data = dir.path().join("data");
  let data_arg = data.to_str().unwrap();
  {
    let dev = Dev::start(&entry, &["--kv", "NS", "--persist-to", data_arg]);
    assert_eq!(dev.send("GET", "/get", b"").text(), "missing");
    assert_eq!(dev.send("GET", "/put?v=hello", b"").text(), "stored");
    assert_eq!(dev.send("GET", "/get", b"").text(), "hello by dev");
  }
  // A new process finds the namespace in --persist-to.
  let dev = Dev::start(&entry, &["--kv", "NS", "--persist-to", data_arg]);
  assert_eq!(dev.send("GET", "/get", b"").text(), "hello by dev");
  // Without it, a namespace starts empty.
  let fresh = Dev::start(&entry, &["--kv", "NS"]);
  assert_eq!(fresh.send("GET", "/get", b"").text(), "missing");
}

const QUEUE_WORKER: &str = r#"
export default {
  async fetch(request, env) {
    const n = new URL(request.url).searchParams.get("n");
    await env.JOBS.send({ n, retry: n === "2" });
    return new Response(`sent ${n}`);
  },
  async queue(batch, env) {
    for (const m of batch.messages) {
      console.log(`consumed ${batch.queue} n=${m.body.n} attempt ${m.attempts}`);
      if (m.body.retry && m.attempts === 1) m.retry();
    }
  },
};
"#;

#[test]
fn dev_queue_delivers_what_fetch_sends_to_the_consumer() {
  let dir = tempfile::tempdir().unwrap();
  let entry = write(dir.path(), "worker.js", QUEUE_WORKER);
  let mut dev = Dev::start(&entry, &["--queue", "JOBS=jobs"]);
  assert_eq!(dev.send("GET", "/?n=1", b"").text(), "sent 1");
  dev.expect_line("consumed jobs n=1 attempt 1");
  // A retried message comes back with one more attempt.
  assert_eq!(dev.send("GET", "/?n=2", b"").text(), "sent 2");
  dev.expect_line("consumed jobs n=2 attempt 1");
  dev.expect_line("consumed jobs n=2 attempt 2");
}
