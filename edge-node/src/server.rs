//! The HTTP front: hyper connections handed to a worker on the same thread.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use isola_runtime::ResponseBody;
use isola_runtime::WorkerHandle;
use tokio::net::TcpListener;

/// Makes the request URI absolute (`http://host/path?query`), as Workers
/// handlers expect `request.url` to be.
pub fn absolute_uri(req: &http::Request<Incoming>, scheme: &str, fallback_host: &str) -> http::Uri {
  let host = req
    .uri()
    .authority()
    .map(|a| a.as_str().to_string())
    .or_else(|| {
      req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
    })
    .unwrap_or_else(|| fallback_host.to_string());
  let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
  format!("{scheme}://{host}{path}")
    .parse()
    .unwrap_or_else(|_| http::Uri::from_static("http://invalid/"))
}

/// Serves `worker` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, worker: WorkerHandle) -> std::io::Result<()> {
  let local: SocketAddr = listener.local_addr()?;
  let fallback_host = local.to_string();
  loop {
    let (stream, _peer) = match listener.accept().await {
      Ok(conn) => conn,
      Err(e) => {
        tracing::warn!("accept failed: {e}");
        continue;
      }
    };
    let _ = stream.set_nodelay(true);
    let worker = worker.clone();
    let fallback_host = fallback_host.clone();
    tokio::spawn(async move {
      let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let worker = worker.clone();
        let uri = absolute_uri(&req, "http", &fallback_host);
        async move {
          let (mut parts, body) = req.into_parts();
          parts.uri = uri;
          let req = http::Request::from_parts(parts, isola_runtime::request_body(body));
          let response: http::Response<ResponseBody> = match worker.fetch(req).await {
            Ok(r) => r,
            Err(e) => isola_runtime::error_response(&e),
          };
          Ok::<_, std::convert::Infallible>(response)
        }
      });
      let builder = auto::Builder::new(TokioExecutor::new());
      if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
      {
        tracing::debug!("connection ended: {e}");
      }
    });
  }
}
