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
use isola_runtime::WorkerEgress;
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
  fetch_as(rt, "fetcher", None, target).await
}

/// [`fetch_via`] from worker `name`, with its own egress list if given.
async fn fetch_as(rt: &Runtime, name: &str, allow: Option<&[String]>, target: &str) -> String {
  let key = WorkerKey::new(name, "v1");
  let source = || {
    let mut config = WorkerConfig::new(name);
    if let Some(allow) = allow {
      let spec = isola_proto::egress::EgressSpec {
        allow: allow.to_vec(),
      };
      config = config.egress(WorkerEgress::new(&spec).unwrap());
    }
    Ok((
      Bundle::from_modules(
        "worker.js",
        [(
          "worker.js".to_string(),
          Bytes::from_static(FETCHER.as_bytes()),
        )],
      )?,
      config,
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

/// A worker's own list narrows the node's, for that worker only: on one V8
/// thread, a worker without a list reaches what the node allows, the
/// worker with one only what both allow.
async fn a_worker_list_narrows_the_node_policy_for_that_worker_only() {
  let (a, b, c) = (listener().await, listener().await, listener().await);
  let (a, b, c) = (a.port(), b.port(), c.port());
  let rt = runtime(
    EgressPolicy::default()
      .allow(&format!("127.0.0.1:{a}"))
      .unwrap()
      .allow(&format!("127.0.0.1:{b}"))
      .unwrap()
      .allow("localhost")
      .unwrap(),
  );
  let list = [
    format!("127.0.0.1:{a}"),
    format!("127.0.0.1:{c}"),
    format!("localhost:{a}"),
  ];
  let narrow = |target: String| {
    let rt = &rt;
    let list = &list;
    async move { fetch_as(rt, "narrow", Some(list), &target).await }
  };
  // Allowed by both.
  assert_eq!(
    narrow(format!("http://127.0.0.1:{a}/")).await,
    format!("ok 200 hello from {a}")
  );
  assert_eq!(
    narrow(format!("http://localhost:{a}/")).await,
    format!("ok 200 hello from {a}")
  );
  // Allowed by the node, not by the worker: by address, by name on
  // another port, a public-looking address, and a redirect hop.
  for (target, shown) in [
    (format!("http://127.0.0.1:{b}/"), format!("127.0.0.1:{b}")),
    (format!("http://localhost:{b}/"), format!("localhost:{b}")),
    ("http://1.1.1.1/".to_string(), "1.1.1.1:80".to_string()),
    (
      "http://[::ffff:1.1.1.1]:443/".to_string(),
      "1.1.1.1:443".to_string(),
    ),
    (
      format!("http://127.0.0.1:{a}/redirect/{b}"),
      format!("127.0.0.1:{b}"),
    ),
  ] {
    let answer = narrow(target.clone()).await;
    assert!(
      answer.starts_with("TypeError:")
        && answer.contains(&format!(
          "fetch() to {shown} is denied by the egress policy (worker)"
        )),
      "{target}: {answer}"
    );
  }
  // Listed by the worker, denied by the node: stays denied, and says so.
  let answer = narrow(format!("http://127.0.0.1:{c}/")).await;
  assert!(
    answer.starts_with("TypeError:")
      && answer.contains(&format!(
        "127.0.0.1:{c} is denied by the egress policy (node)"
      ))
      && answer.contains("loopback"),
    "{answer}"
  );
  // Another worker on the same thread has no list: the node's policy only.
  assert_eq!(
    fetch_as(&rt, "wide", None, &format!("http://127.0.0.1:{b}/")).await,
    format!("ok 200 hello from {b}")
  );
}

/// A worker list of networks applies to the addresses a name resolves to.
async fn a_worker_network_entry_applies_to_resolved_names() {
  let up = listener().await;
  let port = up.port();
  let rt = runtime(EgressPolicy::allow_all());
  let loopback = ["127.0.0.0/8".to_string()];
  assert_eq!(
    fetch_as(
      &rt,
      "loopback-only",
      Some(&loopback),
      &format!("http://localhost:{port}/")
    )
    .await,
    format!("ok 200 hello from {port}")
  );
  let elsewhere = ["10.9.0.0/16".to_string()];
  let answer = fetch_as(
    &rt,
    "elsewhere-only",
    Some(&elsewhere),
    &format!("http://localhost:{port}/"),
  )
  .await;
  assert!(
    answer.starts_with("TypeError:")
      && answer.contains("fetch() to localhost is denied by the egress policy (worker)")
      && answer.contains("resolves to"),
    "{answer}"
  );
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
    trial(
      "a_worker_list_narrows_the_node_policy_for_that_worker_only",
      a_worker_list_narrows_the_node_policy_for_that_worker_only,
    ),
    trial(
      "a_worker_network_entry_applies_to_resolved_names",
      a_worker_network_entry_applies_to_resolved_names,
    ),
  ]
}

fn trial<F: Future<Output = ()> + 'static>(name: &str, test: fn() -> F) -> Trial {
  crate::async_trial(&format!("egress::{name}"), test)
}
