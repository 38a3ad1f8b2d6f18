//! One worker in its isolate, driven directly (no pool): concurrency,
//! isolation, hidden internals, and how invocations end.

use bytes::Bytes;
use isola_runtime::Bundle;
use isola_runtime::Error;
use isola_runtime::Isolate;
use isola_runtime::LogSink;
use isola_runtime::Worker;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerHandle;
use libtest_mimic::Trial;

fn bundle(code: &str) -> Bundle {
  Bundle::from_modules(
    "worker.js",
    [("worker.js".to_string(), Bytes::from(code.to_string()))],
  )
  .unwrap()
}

async fn text(worker: &mut Worker, url: &str) -> Result<String, Error> {
  let response = worker.fetch(isola_runtime::empty_request(url)).await?;
  let body = response.into_body().collect_bytes().await.unwrap();
  Ok(String::from_utf8(body.to_vec()).unwrap())
}

/// The body of `worker`'s response to `request`.
async fn body_of(
  worker: &WorkerHandle,
  request: http::Request<isola_runtime::RequestBody>,
) -> Bytes {
  worker
    .fetch(request)
    .await
    .unwrap()
    .into_body()
    .collect_bytes()
    .await
    .unwrap()
}

/// `code` loaded as worker `name`, running in its task.
async fn running(code: &str, name: &str) -> WorkerHandle {
  Worker::new(bundle(code), &WorkerConfig::new(name), LogSink::discard())
    .await
    .unwrap()
    .spawn()
}

fn rt() -> tokio::runtime::Runtime {
  tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .unwrap()
}

fn one_isolate_serves_concurrent_requests() {
  rt().block_on(async {
    let code = r#"
      let inFlight = 0, maxInFlight = 0;
      export default {
        async fetch(request) {
          inFlight++; maxInFlight = Math.max(maxInFlight, inFlight);
          await new Promise((r) => setTimeout(r, 20));
          inFlight--;
          return new Response(String(maxInFlight));
        },
      };
    "#;
    let worker = running(code, "c").await;
    let calls = (0..10).map(|_| worker.fetch(isola_runtime::empty_request("http://c.test/")));
    let responses = futures::future::join_all(calls).await;
    let mut max = 0;
    for r in responses {
      let body = r.unwrap().into_body().collect_bytes().await.unwrap();
      max = max.max(std::str::from_utf8(&body).unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(max, 10, "all ten requests were in flight at once");
  });
}

/// Requests sent together reach the isolate in one call (64 at most); each
/// still gets its own URL, headers, body and response.
fn requests_that_come_together_each_get_their_own_answer() {
  rt().block_on(async {
    let code = r#"
      export default {
        async fetch(request) {
          const body = request.method === "POST" ? await request.text() : "-";
          const path = new URL(request.url).pathname;
          const names = [...request.headers.keys()].length;
          return new Response(`${path} ${request.headers.get("x-n")} ${names} ${body}`);
        },
      };
    "#;
    let worker = running(code, "t").await;
    for round in 0..3 {
      // Submitted before the worker's task runs: one wake-up takes them all.
      let mut invocations: Vec<_> = (0..150)
        .map(|i| {
          let mut request = isola_runtime::empty_request(&format!("http://t.test/{round}/{i}"));
          if i % 7 == 0 {
            *request.method_mut() = http::Method::POST;
            *request.body_mut() =
              isola_runtime::request_body(http_body_util::Full::new(Bytes::from(format!("b{i}"))));
          }
          let headers = request.headers_mut();
          headers.insert("x-n", http::HeaderValue::from(i));
          for k in 0..i % 5 {
            headers.insert(
              http::HeaderName::from_bytes(format!("x-h{k}").as_bytes()).unwrap(),
              http::HeaderValue::from(k),
            );
          }
          worker.invoke(request)
        })
        .collect();
      for (i, invocation) in invocations.iter_mut().enumerate() {
        let response = invocation.response().await.unwrap();
        let body = response.into_body().collect_bytes().await.unwrap();
        let sent = if i % 7 == 0 {
          format!("b{i}")
        } else {
          "-".into()
        };
        assert_eq!(
          std::str::from_utf8(&body).unwrap(),
          format!("/{round}/{i} {i} {} {sent}", 1 + i % 5),
        );
      }
    }
  });
}

fn isolates_do_not_share_globals() {
  rt().block_on(async {
    let code = r#"
      export default {
        fetch(request) {
          const url = new URL(request.url);
          if (url.pathname === "/set") globalThis.secret = url.search;
          return new Response(String(globalThis.secret));
        },
      };
    "#;
    let config = WorkerConfig::new("iso");
    let mut a = Worker::new(bundle(code), &config, LogSink::discard())
      .await
      .unwrap();
    let mut b = Worker::new(bundle(code), &config, LogSink::discard())
      .await
      .unwrap();
    assert_eq!(text(&mut a, "http://a.test/set?x").await.unwrap(), "?x");
    assert_eq!(
      text(&mut b, "http://b.test/get").await.unwrap(),
      "undefined"
    );
    assert_eq!(text(&mut a, "http://a.test/get").await.unwrap(), "?x");
    // Isolates on one thread may be dropped in any order.
    drop(a);
    assert_eq!(
      text(&mut b, "http://b.test/get").await.unwrap(),
      "undefined"
    );
    let mut c = Worker::new(bundle(code), &config, LogSink::discard())
      .await
      .unwrap();
    assert_eq!(text(&mut c, "http://c.test/set?c").await.unwrap(), "?c");
    drop(b);
    assert_eq!(text(&mut c, "http://c.test/get").await.unwrap(), "?c");
  });
}

fn runtime_internals_are_hidden_from_workers() {
  rt().block_on(async {
    let code = r#"
      export default {
        fetch() {
          const names = ["isola.respondWith", "isola.moduleValue"];
          return Response.json([typeof Deno, typeof __bootstrap, typeof __isolaInternals,
            Object.getOwnPropertyNames(globalThis).filter((n) => n.startsWith("__")).length,
            Object.getOwnPropertySymbols(globalThis).length,
            names.filter((n) => globalThis[Symbol.for(n)] !== undefined).length]);
        },
      };
    "#;
    let mut w = Worker::new(bundle(code), &WorkerConfig::new("h"), LogSink::discard())
      .await
      .unwrap();
    assert_eq!(
      text(&mut w, "http://h.test/").await.unwrap(),
      r#"["undefined","undefined","undefined",0,0,0]"#
    );
  });
}

fn a_promise_that_can_never_settle_is_an_exception() {
  rt().block_on(async {
    let code = "export default { fetch() { return new Promise(() => {}); } };";
    let mut w = Worker::new(bundle(code), &WorkerConfig::new("n"), LogSink::discard())
      .await
      .unwrap();
    let err = w
      .fetch(isola_runtime::empty_request("http://n.test/"))
      .await
      .unwrap_err();
    assert!(err.is_exception(), "{err}");
  });
}

fn invocation_finishes_after_wait_until_settles() {
  rt().block_on(async {
    let code = r#"
      let done = false;
      export default {
        fetch(request, env, ctx) {
          if (new URL(request.url).pathname === "/check") return new Response(String(done));
          ctx.waitUntil(new Promise((r) => setTimeout(() => { done = true; r(); }, 30)));
          return new Response("sent");
        },
      };
    "#;
    let worker = running(code, "w").await;
    let mut inv = worker.invoke(isola_runtime::empty_request("http://w.test/"));
    let body = inv
      .response()
      .await
      .unwrap()
      .into_body()
      .collect_bytes()
      .await
      .unwrap();
    assert_eq!(&body[..], b"sent");
    inv.finished().await;
    let body = body_of(&worker, isola_runtime::empty_request("http://w.test/check")).await;
    assert_eq!(
      &body[..],
      b"true",
      "waitUntil work ran before `finished` resolved"
    );
  });
}

/// However a response ends (a text, bytes or stream body, sent at once or
/// after an await, with or without a request body), its invocation
/// finishes: the response op that also ends the JS, or the op after it.
fn every_kind_of_response_finishes_its_invocation() {
  rt().block_on(async {
    let code = r#"
      export default {
        async fetch(request) {
          const kind = new URL(request.url).pathname;
          if (kind === "/later") await new Promise((r) => setTimeout(r, 1));
          if (kind === "/bytes") return new Response(new Uint8Array([1, 2]));
          if (kind === "/stream") return new Response(new Blob(["s"]).stream());
          if (kind === "/none") return new Response(null, { status: 204 });
          return new Response("t");
        },
      };
    "#;
    let worker = running(code, "f").await;
    for round in 0..300 {
      for path in ["/text", "/later", "/bytes", "/stream", "/none", "/post"] {
        let mut request = isola_runtime::empty_request(&format!("http://f.test{path}"));
        if path == "/post" {
          *request.method_mut() = http::Method::POST;
          *request.body_mut() =
            isola_runtime::request_body(http_body_util::Full::new(Bytes::from_static(b"unread")));
        }
        let mut inv = worker.invoke(request);
        let response = inv.response().await.unwrap();
        assert!(
          response.status().is_success(),
          "{path}: {}",
          response.status()
        );
        let _ = response.into_body().collect_bytes().await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), inv.finished())
          .await
          .unwrap_or_else(|_| panic!("{path} (round {round}): the invocation never finished"));
      }
    }
  });
}

/// Request header names reach JS as they came, however many distinct
/// ones an isolate sees (it holds the JS strings of some), and the method
/// too, whether it is a usual one or not; `get` finds a header by any
/// case of its name, repeated ones joined.
fn request_header_names_and_methods_reach_js() {
  rt().block_on(async {
    let code = r#"
      export default {
        fetch(request) {
          const name = new URL(request.url).searchParams.get("n");
          const h = request.headers;
          const got = [h.get(name), h.get(name.toUpperCase()), h.get("Accept"), h.get("x-absent"), h.get("X-Absent")];
          return new Response(`${request.method} ${got.join(" ")} ${[...h.keys()].join(",")}`);
        },
      };
    "#;
    let worker = running(code, "n").await;
    let methods = ["GET", "POST", "DELETE", "PATCH", "PURGE", "OPTIONS"];
    for i in 0..200 {
      let name = format!("x-name-{}", i % 150);
      let method = methods[i % methods.len()];
      let mut request = isola_runtime::empty_request(&format!("http://n.test/?n={name}"));
      *request.method_mut() = http::Method::from_bytes(method.as_bytes()).unwrap();
      request
        .headers_mut()
        .insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
      request
        .headers_mut()
        .append(http::header::ACCEPT, http::HeaderValue::from_static("text/html"));
      request.headers_mut().insert(
        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        http::HeaderValue::from_str(&format!("v{i}")).unwrap(),
      );
      let body = body_of(&worker, request).await;
      assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        format!("{method} v{i} v{i} */*, text/html   accept,{name}"),
      );
    }
  });
}

/// Header values and URLs that repeat are held per isolate once they come
/// twice in a row, and header names looked up first by their place in the
/// last request; whatever the pattern (repeats, changes, alternation,
/// values too long to hold, Latin-1 bytes, the headers' order swapped),
/// JS reads what was sent.
fn repeated_header_values_and_urls_reach_js_as_sent() {
  rt().block_on(async {
    let code = r#"
      export default {
        fetch(request) {
          return new Response(`${request.url}|${request.headers.get("x-v")}|${request.headers.get("x-w")}`);
        },
      };
    "#;
    let worker = running(code, "r").await;
    let long = "l".repeat(300);
    let values: Vec<Vec<u8>> = [
      "a", "a", "a", "b", "a", "b", "b", "b", &long, &long, &long, "a",
    ]
    .iter()
    .map(|v| v.as_bytes().to_vec())
    .chain([b"caf\xe9".to_vec(), b"caf\xe9".to_vec(), b"caf\xe9".to_vec(), b"cafe".to_vec()])
    .collect();
    for (i, value) in values.iter().enumerate() {
      // The URL repeats in runs of three; `x-w` alternates with every request.
      let url = format!("http://r.test/{}", i / 3);
      let mut request = isola_runtime::empty_request(&url);
      let headers = request.headers_mut();
      let v = ("x-v", http::HeaderValue::from_bytes(value).unwrap());
      let w = ("x-w", http::HeaderValue::from_str(&format!("w{}", i % 2)).unwrap());
      // Sent in one order for two requests, then in the other.
      let (first, second) = if i % 4 < 2 { (v, w) } else { (w, v) };
      headers.insert(first.0, first.1);
      headers.insert(second.0, second.1);
      let body = body_of(&worker, request).await;
      let shown: String = value.iter().map(|&b| char::from(b)).collect();
      assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        format!("{url}|{shown}|w{}", i % 2),
        "request {i}"
      );
    }
  });
}

/// A running worker `name` whose every request is a busy loop, with a
/// 20 ms CPU limit.
async fn busy_loop(name: &str) -> isola_runtime::WorkerHandle {
  let code = "export default { fetch() { for (;;) {} } };";
  let config = WorkerConfig::new(name)
    .limits(isola_runtime::Limits::default().cpu(std::time::Duration::from_millis(20)));
  Worker::new(bundle(code), &config, LogSink::discard())
    .await
    .unwrap()
    .spawn()
}

fn a_stopped_worker_reports_it() {
  rt().block_on(async {
    let worker = busy_loop("s").await;
    let err = worker
      .fetch(isola_runtime::empty_request("http://s.test/"))
      .await
      .unwrap_err();
    assert_eq!(err.limit(), Some(isola_runtime::Outcome::CpuLimit), "{err}");
    // The CPU limit stopped the isolate: its task ends and the handle says so.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
      while !worker.is_closed() {
        tokio::task::yield_now().await;
      }
    })
    .await
    .expect("the worker task ends once its isolate is stopped");
    let err = worker
      .fetch(isola_runtime::empty_request("http://s.test/"))
      .await
      .unwrap_err();
    assert!(err.is_stopped(), "{err}");
  });
}

/// After a quiet spell the watchdog is parked, or asleep until a later
/// deadline (the load's start-up budget); a turn that starts then must
/// wake it, so the CPU limit holds as before.
fn a_busy_loop_after_a_quiet_spell_is_still_stopped() {
  rt().block_on(async {
    let worker = busy_loop("q").await;
    // Long enough for the load's turn to have ended and the watchdog to wait.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let err = worker
      .fetch(isola_runtime::empty_request("http://q.test/"))
      .await
      .unwrap_err();
    assert_eq!(err.limit(), Some(isola_runtime::Outcome::CpuLimit), "{err}");
  });
}

/// The body of a request the handler never reads is let go (the client's
/// upload stops) when the invocation ends, not when V8 next collects it.
fn an_unread_request_body_is_dropped_when_its_invocation_ends() {
  rt().block_on(async {
    let code = r#"export default { fetch() { return new Response("unread"); } };"#;
    let mut worker = Worker::new(bundle(code), &WorkerConfig::new("u"), LogSink::discard())
      .await
      .unwrap();
    // An upload still in progress: one chunk sent, the rest never comes.
    let (mut tx, rx) = futures::channel::mpsc::channel::<
      Result<http_body::Frame<Bytes>, std::convert::Infallible>,
    >(1);
    tx.try_send(Ok(http_body::Frame::data(Bytes::from_static(b"partial"))))
      .unwrap();
    let body = isola_runtime::request_body(http_body_util::StreamBody::new(rx));
    let request = http::Request::post("http://u.test/").body(body).unwrap();
    let response = worker.fetch(request).await.unwrap();
    let body = response.into_body().collect_bytes().await.unwrap();
    assert_eq!(&body[..], b"unread");
    for _ in 0..200 {
      if tx.is_closed() {
        return;
      }
      tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the unread request body was still held after its invocation ended");
  });
}

/// A body with a declared length that yields what its channel has, as
/// hyper's does: whole at once for a small request, or part now and the
/// rest later.
struct Declared(
  futures::channel::mpsc::Receiver<Result<Bytes, std::io::Error>>,
  u64,
);

impl http_body::Body for Declared {
  type Data = Bytes;
  type Error = std::io::Error;

  fn poll_frame(
    mut self: std::pin::Pin<&mut Self>,
    cx: &mut std::task::Context<'_>,
  ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
    use futures::StreamExt as _;
    self
      .0
      .poll_next_unpin(cx)
      .map(|item| item.map(|r| r.map(http_body::Frame::data)))
  }

  fn size_hint(&self) -> http_body::SizeHint {
    http_body::SizeHint::with_exact(self.1)
  }
}

/// A request body reads the same whether it was at hand whole when the
/// invocation started (then JS gets its bytes), in part (the rest is read
/// as it comes), or not at all, and an error after its first bytes still
/// reaches the handler.
fn a_request_body_reads_the_same_whole_in_part_or_failing() {
  rt().block_on(async {
    let code = r#"
      export default {
        async fetch(request) {
          const copy = request.clone();
          try {
            const text = await request.text();
            const again = await new Response(copy.body).text();
            return new Response(`${text}|${again}|${request.bodyUsed}`);
          } catch (e) {
            return new Response(`${e.name}: ${e.message}`);
          }
        },
      };
    "#;
    let worker = running(code, "b").await;
    let post = |parts: &[&'static [u8]], end: bool, error: bool| {
      let (mut tx, rx) = futures::channel::mpsc::channel(8);
      for part in parts {
        tx.try_send(Ok(Bytes::from_static(part))).unwrap();
      }
      if error {
        tx.try_send(Err(std::io::Error::other("reset"))).unwrap();
      }
      if end {
        tx.close_channel();
      }
      let body = isola_runtime::request_body(Declared(rx, 6));
      (
        tx,
        http::Request::post("http://b.test/").body(body).unwrap(),
      )
    };
    // Whole.
    let (_tx, request) = post(&[b"abc", b"def"], true, false);
    assert_eq!(&body_of(&worker, request).await[..], b"abcdef|abcdef|true");
    // In part: the rest comes after the worker started.
    let (mut tx, request) = post(&[b"abc"], false, false);
    let response = tokio::spawn({
      let worker = worker.clone();
      async move { body_of(&worker, request).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tx.try_send(Ok(Bytes::from_static(b"def"))).unwrap();
    tx.close_channel();
    assert_eq!(&response.await.unwrap()[..], b"abcdef|abcdef|true");
    // Failing after its first bytes.
    let (_tx, request) = post(&[b"abc"], false, true);
    let got = body_of(&worker, request).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
      got.starts_with("TypeError: ") && got.contains("reset"),
      "{got}"
    );
  });
}

/// A body the edge had whole reads through each of `Request`'s methods as
/// through deno_fetch's: the result, the body used after, a second read
/// refused, bad JSON a `SyntaxError`, and the methods still refuse an
/// object that is no request.
fn a_whole_request_body_reads_through_each_method() {
  rt().block_on(async {
    let code = r#"
      const show = async (p) => {
        try {
          const v = await p;
          if (v instanceof ArrayBuffer) return `ArrayBuffer ${new TextDecoder().decode(v)}`;
          if (v instanceof Uint8Array) return `Uint8Array ${new TextDecoder().decode(v)}`;
          return `${typeof v} ${JSON.stringify(v)}`;
        } catch (e) {
          return `${e.name}`;
        }
      };
      export default {
        async fetch(request) {
          const m = new URL(request.url).searchParams.get("m");
          const first = await show(request[m]());
          const used = request.bodyUsed;
          const again = await show(request.text());
          const stray = await show(Request.prototype[m].call({}));
          return new Response(`${first}|${used}|${again}|${stray}`);
        },
      };
    "#;
    let worker = running(code, "m").await;
    let cases: [(&str, &'static [u8], &str); 5] = [
      ("arrayBuffer", b"{\"a\":1}", "ArrayBuffer {\"a\":1}"),
      ("bytes", b"{\"a\":1}", "Uint8Array {\"a\":1}"),
      ("text", b"caf\xc3\xa9", "string \"caf\u{e9}\""),
      ("json", b"{\"a\":1}", "object {\"a\":1}"),
      ("json", b"{a", "SyntaxError"),
    ];
    for (method, sent, want) in cases {
      let (mut tx, rx) = futures::channel::mpsc::channel(1);
      tx.try_send(Ok(Bytes::from_static(sent))).unwrap();
      tx.close_channel();
      let body = isola_runtime::request_body(Declared(rx, sent.len() as u64));
      let request = http::Request::post(format!("http://m.test/?m={method}"))
        .body(body)
        .unwrap();
      let got = body_of(&worker, request).await;
      assert_eq!(
        String::from_utf8_lossy(&got),
        format!("{want}|true|TypeError|TypeError"),
        "{method}"
      );
    }
  });
}

/// V8 reads an ASCII module's source in place. A module read from disk
/// (`isola-edge dev`) is made text on each read, so the isolate keeps that
/// text while it lives: a function compiled later, and `toString()`, read
/// it after the file changed and the memory freed since was reused.
fn a_module_read_from_disk_stays_readable_while_its_isolate_lives() {
  rt().block_on(async {
    let dir = std::env::temp_dir().join(format!("isola-source-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("worker.js");
    let code = format!(
      "function late() {{ return 'late'; }}\n{}export default {{ fetch() {{ return new Response(late.toString() + ' ' + late()); }} }};\n",
      "// padding\n".repeat(400)
    );
    std::fs::write(&file, &code).unwrap();
    let bundle = Bundle::from_entry_file(&file).unwrap();
    let mut worker = Worker::new(bundle, &WorkerConfig::new("d"), LogSink::discard())
      .await
      .unwrap();
    std::fs::write(&file, "export default {};").unwrap();
    // Blocks of the text's size: freed memory of that size is reused.
    let reuse: Vec<String> = (0..64).map(|_| "x".repeat(code.len())).collect();
    assert_eq!(
      text(&mut worker, "http://d.test/").await.unwrap(),
      "function late() { return 'late'; } late"
    );
    drop(reuse);
    std::fs::remove_dir_all(&dir).unwrap();
  });
}

/// A response's headers reach hyper as the bytes of their ByteStrings:
/// Latin-1 values byte for byte, whether V8 holds the string in one byte or
/// two a unit, and repeated names as repeated headers; for each kind of
/// body, in an isolate made for the worker and in a prewarmed one of the
/// stock (whose ops were bound once already, by the prewarm's init).
fn response_headers_keep_their_bytes() {
  rt().block_on(async {
    let code = r#"
      export default {
        fetch(request) {
          const h = new Headers();
          h.set("X-Latin", "caf\u00e9");
          // Latin-1 units in a two-byte string: V8 slices 13 units or more
          // as a view of the flat two-byte parent.
          h.set("x-wide", ("\u20ac" + "\u00e9t".repeat(10)).slice(1));
          h.append("set-cookie", "a=1");
          h.append("set-cookie", "b=2");
          const kind = new URL(request.url).pathname;
          const body = kind === "/bytes" ? new Uint8Array([0, 1, 0xe9])
            : kind === "/none" ? null
            : "ok \u00e9\u20ac";
          return new Response(body, { headers: h });
        },
      };
    "#;
    let config = WorkerConfig::new("h");
    let fresh = Worker::new(bundle(code), &config, LogSink::discard());
    let mut stock = Isolate::new(LogSink::discard()).unwrap();
    stock.prewarm().unwrap();
    let prewarmed = stock.load(bundle(code), &config);
    for worker in [fresh.await.unwrap(), prewarmed.await.unwrap()] {
      serve_every_body_kind(worker.spawn()).await;
    }
  });
}

async fn serve_every_body_kind(worker: WorkerHandle) {
  {
    let kinds: [(&str, &[u8]); 3] = [
      ("/text", "ok é€".as_bytes()),
      ("/bytes", b"\x00\x01\xe9"),
      ("/none", b""),
    ];
    // Far enough for V8 to tier the path up.
    for round in 0..1500 {
      for (path, body) in kinds {
        let url = format!("http://h.test{path}");
        let response = worker
          .fetch(isola_runtime::empty_request(&url))
          .await
          .unwrap();
        let headers = response.headers();
        let what = format!("{path}, round {round}");
        assert_eq!(headers["x-latin"].as_bytes(), b"caf\xe9", "{what}");
        assert_eq!(headers["x-wide"].as_bytes(), b"\xe9t".repeat(10), "{what}");
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "{what}");
        if path == "/text" {
          assert_eq!(
            headers["content-type"], "text/plain;charset=UTF-8",
            "{what}"
          );
        }
        let got = response.into_body().collect_bytes().await.unwrap();
        assert_eq!(&got[..], body, "{what}");
      }
    }
  }
}

/// A worker idle for its `idle_trim` gets a full GC: an object it holds
/// only weakly is gone by its next request. Nothing allocates while it is
/// idle, so without the trim no GC would run (the request right after the
/// first still sees the object).
fn an_idle_worker_gives_back_its_memory() {
  rt().block_on(async {
    let code = r#"
      let ref;
      export default {
        fetch(request) {
          if (new URL(request.url).pathname === "/grow") {
            ref = new WeakRef({ kept: "weakly" });
            // Short-lived objects: the young generation grows past 1 MiB.
            const ring = new Array(64);
            for (let i = 0; i < 300000; i++) ring[i & 63] = { i, pair: [i, i] };
            return new Response(String(ring.length));
          }
          return new Response(ref.deref() === undefined ? "collected" : "alive");
        },
      };
    "#;
    let config = WorkerConfig::new("trim").idle_trim(std::time::Duration::from_millis(100));
    let worker = Worker::new(bundle(code), &config, LogSink::discard())
      .await
      .unwrap()
      .spawn();
    let get = |url: &str| body_of(&worker, isola_runtime::empty_request(url));
    assert_eq!(get("http://t.test/grow").await, "64");
    assert_eq!(
      get("http://t.test/").await,
      "alive",
      "no GC between two requests"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(get("http://t.test/").await, "collected");
  });
}

pub fn trials() -> Vec<Trial> {
  vec![
    trial(
      "an_idle_worker_gives_back_its_memory",
      an_idle_worker_gives_back_its_memory,
    ),
    trial(
      "one_isolate_serves_concurrent_requests",
      one_isolate_serves_concurrent_requests,
    ),
    trial(
      "isolates_do_not_share_globals",
      isolates_do_not_share_globals,
    ),
    trial(
      "runtime_internals_are_hidden_from_workers",
      runtime_internals_are_hidden_from_workers,
    ),
    trial(
      "a_promise_that_can_never_settle_is_an_exception",
      a_promise_that_can_never_settle_is_an_exception,
    ),
    trial(
      "invocation_finishes_after_wait_until_settles",
      invocation_finishes_after_wait_until_settles,
    ),
    trial(
      "an_unread_request_body_is_dropped_when_its_invocation_ends",
      an_unread_request_body_is_dropped_when_its_invocation_ends,
    ),
    trial(
      "a_request_body_reads_the_same_whole_in_part_or_failing",
      a_request_body_reads_the_same_whole_in_part_or_failing,
    ),
    trial(
      "a_whole_request_body_reads_through_each_method",
      a_whole_request_body_reads_through_each_method,
    ),
    trial("a_stopped_worker_reports_it", a_stopped_worker_reports_it),
    trial(
      "response_headers_keep_their_bytes",
      response_headers_keep_their_bytes,
    ),
    trial(
      "a_module_read_from_disk_stays_readable_while_its_isolate_lives",
      a_module_read_from_disk_stays_readable_while_its_isolate_lives,
    ),
    trial(
      "a_busy_loop_after_a_quiet_spell_is_still_stopped",
      a_busy_loop_after_a_quiet_spell_is_still_stopped,
    ),
    trial(
      "every_kind_of_response_finishes_its_invocation",
      every_kind_of_response_finishes_its_invocation,
    ),
    trial(
      "request_header_names_and_methods_reach_js",
      request_header_names_and_methods_reach_js,
    ),
    trial(
      "requests_that_come_together_each_get_their_own_answer",
      requests_that_come_together_each_get_their_own_answer,
    ),
    trial(
      "repeated_header_values_and_urls_reach_js_as_sent",
      repeated_header_values_and_urls_reach_js_as_sent,
    ),
  ]
}

fn trial(name: &str, test: fn()) -> Trial {
  Trial::test(format!("worker::{name}"), move || {
    test();
    Ok(())
  })
}
