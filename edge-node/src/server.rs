//! The HTTP front: hyper connections, served on the V8 threads so that a
//! request usually reaches its isolate without a cross-thread hop.

use std::future::Future;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use isola_runtime::ResponseBody;
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

/// Accepts connections on `listener` forever and answers each request with
/// `handle` (given the request with an absolute URI).
pub async fn serve<H, F>(listener: TcpListener, handle: H)
where
  H: Fn(http::Request<isola_runtime::RequestBody>) -> F + Clone + Send + 'static,
  F: Future<Output = http::Response<ResponseBody>> + Send + 'static,
{
  let fallback_host = listener
    .local_addr()
    .map_or_else(|_| "localhost".to_string(), |a: SocketAddr| a.to_string());
  loop {
    let (stream, _peer) = match listener.accept().await {
      Ok(conn) => conn,
      Err(e) => {
        tracing::warn!("accept failed: {e}");
        continue;
      }
    };
    let _ = stream.set_nodelay(true);
    let handle = handle.clone();
    let fallback_host = fallback_host.clone();
    tokio::spawn(async move {
      let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let uri = absolute_uri(&req, "http", &fallback_host);
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        let req = http::Request::from_parts(parts, isola_runtime::request_body(body));
        let response = handle(req);
        async move { Ok::<_, std::convert::Infallible>(response.await) }
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
