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
use crate::server::HttpOptions;
use http::StatusCode;
use isola_runtime::text_response;

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
      "/healthz" => text_response(StatusCode::OK, "ok\n"),
      "/readyz" if self.ready.load(Ordering::Acquire) => text_response(StatusCode::OK, "ready\n"),
      "/readyz" => text_response(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
      "/metrics" => with_type(
        text_response(
          StatusCode::OK,
          self.metrics.encode(Some(self.node.runtime_stats())),
        ),
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
      ),
      "/admin/state" => {
        let json = serde_json::to_string(&self.node.snapshot()).expect("a snapshot serialises");
        with_type(
          text_response(StatusCode::OK, json + "\n"),
          "application/json",
        )
      }
      _ => text_response(
        StatusCode::NOT_FOUND,
        "try /healthz, /readyz, /metrics or /admin/state\n",
      ),
    }
  }

  /// Serves the admin endpoints on `listener` until `shutdown`.
  pub async fn serve(self, listener: tokio::net::TcpListener, shutdown: watch::Receiver<bool>) {
    let handle = move |req: isola_runtime::FetchRequest| {
      let response = self.answer(req.request().uri().path());
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
