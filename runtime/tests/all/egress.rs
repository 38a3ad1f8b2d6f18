//! The egress policy from a worker's point of view: real isolates on the
//! pool's threads calling `fetch()` towards real listeners on loopback.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use isola_runtime::Bundle;
use isola_runtime::Config;
use isola_runtime::EgressPolicy;
use isola_runtime::Runtime;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;
use libtest_mimic::Trial;

/// A listener answering `hello from PORT`, or, on `/redirect/N`, a 302 to
/// `http://127.0.0.1:N/`.
async fn listener() -> SocketAddr {
  let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
  let addr = listener.local_addr().unwrap();
  tokio::spawn(async move {
    loop {
      let Ok((stream, _)) = listener.accept().await else {
        return;
      };
      tokio::spawn(async move {
        let service = hyper::service::service_fn(
          move |req: http::Request<hyper::body::Incoming>| async move {
            let path = req.uri().path().to_string();
            let response = match path.strip_prefix("/redirect/") {
              Some(port) => http::Response::builder()
                .status(302)
                .header("location", format!("http://127.0.0.1:{port}/"))
                .body(http_body_util::Full::new(Bytes::new())),
              None => http::Response::builder().body(http_body_util::Full::new(Bytes::from(
                format!("hello from {}", addr.port()),
              ))),
            };
            Ok::<_, std::convert::Infallible>(response.unwrap())
          },
        );
        let _ = hyper::server::conn::http1::Builder::new()
          .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
          .await;
      });
    }
  });
  addr
}

/// The worker fetches the URL in `?u=` and answers the body, or the
/// error's name and message.
const FETCHER: &str = r#"
export default {
  async fetch(request) {
    const target = new URL(request.url).searchParams.get("u");
    try {
      const r = await fetch(target);
      return new Response(`ok ${r.status} ${await r.text()}`);
    } catch (e) {
      return new Response(`${e.name}: ${e.message}`);
    }
  },
};
"#;

async fn fetch_via(rt: &Runtime, target: &str) -> String {
  let key = WorkerKey::new("fetcher", "v1");
  let source = || {
    Ok((
      Bundle::from_modules(
        "worker.js",
        [(
          "worker.js".to_string(),
          Bytes::from_static(FETCHER.as_bytes()),
        )],
      )?,
      WorkerConfig::new("fetcher"),
    ))
  };
  let url = format!("http://fetcher.test/?u={}", urlencode(target));
  let response = rt
    .fetch(&key, source, isola_runtime::empty_request(&url))
    .await
    .unwrap();
  let body = response.into_body().collect_bytes().await.unwrap();
  String::from_utf8_lossy(&body).into_owned()
}

fn urlencode(s: &str) -> String {
  s.bytes()
    .map(|b| match b {
      b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
        (b as char).to_string()
      }
      _ => format!("%{b:02X}"),
    })
    .collect()
}

fn runtime(policy: EgressPolicy) -> Runtime {
  Runtime::new(Config::default().threads(1).stock(0).egress(policy)).unwrap()
}

async fn loopback_in_every_spelling_is_denied_by_default() {
  let up = listener().await;
  let port = up.port();
  let rt = runtime(EgressPolicy::default());
  for target in [
    format!("http://127.0.0.1:{port}/"),
    format!("http://127.1:{port}/"),
    format!("http://2130706433:{port}/"),
    format!("http://0x7f000001:{port}/"),
    format!("http://0177.0.0.1:{port}/"),
    format!("http://[::ffff:127.0.0.1]:{port}/"),
    format!("http://localhost:{port}/"),
    format!("http://LocalHost:{port}/"),
  ] {
    let answer = fetch_via(&rt, &target).await;
    assert!(
      answer.starts_with("TypeError:") && answer.contains("egress policy"),
      "{target}: {answer}"
    );
  }
  let answer = fetch_via(&rt, &format!("http://127.0.0.1:{port}/")).await;
  assert!(
    answer.contains(&format!("127.0.0.1:{port}")) && answer.contains("loopback"),
    "the error names the address and the rule: {answer}"
  );
}

async fn an_allowed_address_is_reached_but_a_redirect_to_a_denied_one_is_not() {
  let allowed = listener().await;
  let other = listener().await;
  let rt = runtime(
    EgressPolicy::default()
      .allow(&format!("127.0.0.1:{}", allowed.port()))
      .unwrap(),
  );
  let answer = fetch_via(&rt, &format!("http://{allowed}/")).await;
  assert_eq!(answer, format!("ok 200 hello from {}", allowed.port()));
  let answer = fetch_via(&rt, &format!("http://{allowed}/redirect/{}", other.port())).await;
  assert!(
    answer.starts_with("TypeError:") && answer.contains(&format!("127.0.0.1:{}", other.port())),
    "{answer}"
  );
  // By name, the allow entry for an address does not carry over to the
  // port the entry does not name.
  let answer = fetch_via(&rt, &format!("http://localhost:{}/", other.port())).await;
  assert!(answer.contains("egress policy"), "{answer}");
}

async fn a_host_allowed_by_name_is_reached_on_its_port_only() {
  let up = listener().await;
  let rt = runtime(
    EgressPolicy::default()
      .allow(&format!("localhost:{}", up.port()))
      .unwrap(),
  );
  let answer = fetch_via(&rt, &format!("http://localhost:{}/", up.port())).await;
  assert_eq!(answer, format!("ok 200 hello from {}", up.port()));
  let answer = fetch_via(&rt, &format!("http://localhost:{}/", up.port() ^ 1)).await;
  assert!(answer.contains("on other ports only"), "{answer}");
  // The name's exemption is not the address's.
  let answer = fetch_via(&rt, &format!("http://127.0.0.1:{}/", up.port())).await;
  assert!(answer.contains("egress policy"), "{answer}");
}

async fn with_the_policy_off_loopback_is_reached() {
  let up = listener().await;
  let rt = runtime(EgressPolicy::allow_all());
  let answer = fetch_via(&rt, &format!("http://localhost:{}/", up.port())).await;
  assert_eq!(answer, format!("ok 200 hello from {}", up.port()));
}

pub fn trials() -> Vec<Trial> {
  vec![
    trial(
      "loopback_in_every_spelling_is_denied_by_default",
      loopback_in_every_spelling_is_denied_by_default,
    ),
    trial(
      "an_allowed_address_is_reached_but_a_redirect_to_a_denied_one_is_not",
      an_allowed_address_is_reached_but_a_redirect_to_a_denied_one_is_not,
    ),
    trial(
      "a_host_allowed_by_name_is_reached_on_its_port_only",
      a_host_allowed_by_name_is_reached_on_its_port_only,
    ),
    trial(
      "with_the_policy_off_loopback_is_reached",
      with_the_policy_off_loopback_is_reached,
    ),
  ]
}

fn trial<F: Future<Output = ()> + 'static>(name: &str, test: fn() -> F) -> Trial {
  crate::async_trial(&format!("egress::{name}"), test)
}
