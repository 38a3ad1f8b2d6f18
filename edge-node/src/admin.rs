//! The admin listener of `isola-edge serve`: health, readiness, metrics
//! and the served state, on a port apart from the public listeners so that
//! none of it is reachable by worker traffic.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use isola_runtime::Metrics;
use isola_runtime::ResponseBody;
use tokio::sync::watch;

use crate::node::Node;
use crate::server::text_response;
use crate::server::HttpOptions;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct Admin {
  pub node: Arc<Node>,
  pub metrics: Metrics,
  /// True once the first state is loaded, false again when draining.
  pub ready: Arc<AtomicBool>,
}

impl Admin {
  fn answer(&self, path: &str) -> http::Response<ResponseBody> {
    match path {
      "/healthz" => text_response(200, "ok\n".into()),
      "/readyz" if self.ready.load(Ordering::Acquire) => text_response(200, "ready\n".into()),
      "/readyz" => text_response(503, "not ready\n".into()),
      "/metrics" => with_type(
        text_response(200, self.metrics.encode(Some(self.node.runtime_stats()))),
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
      ),
      "/admin/state" => {
        let json = serde_json::to_string(&self.node.snapshot()).expect("a snapshot serialises");
        with_type(text_response(200, json + "\n"), "application/json")
      }
      _ => text_response(
        404,
        "try /healthz, /readyz, /metrics or /admin/state\n".into(),
      ),
    }
  }

  /// Serves the admin endpoints on `listener` until `shutdown`.
  pub async fn serve(self, listener: tokio::net::TcpListener, shutdown: watch::Receiver<bool>) {
    let handle = move |req: http::Request<isola_runtime::RequestBody>| {
      let response = self.answer(req.uri().path());
      async move { response }
    };
    crate::server::serve(listener, None, HttpOptions::default(), shutdown, handle).await;
  }
}

fn with_type(
  mut response: http::Response<ResponseBody>,
  content_type: &'static str,
) -> http::Response<ResponseBody> {
  response.headers_mut().insert(
    http::header::CONTENT_TYPE,
    http::HeaderValue::from_static(content_type),
  );
  response
}
