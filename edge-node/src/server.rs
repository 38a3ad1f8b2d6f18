//! The HTTP front: hyper connections (HTTP/1.1, h2c, and HTTPS with ALPN),
//! served on the V8 threads so that a request usually reaches its isolate
//! without a cross-thread hop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use isola_runtime::ResponseBody;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Protection of the HTTP front against slow or oversized input.
#[derive(Clone, Debug)]
pub struct HttpOptions {
  /// Largest request head; beyond it hyper answers 431.
  pub max_header_bytes: usize,
  /// A client that has not sent a full request head by then is cut off.
  pub header_timeout: Duration,
  /// Time in-flight requests get to finish once shutdown starts.
  pub drain_timeout: Duration,
}

impl Default for HttpOptions {
  fn default() -> Self {
    Self {
      max_header_bytes: 64 << 10,
      header_timeout: Duration::from_secs(10),
      drain_timeout: Duration::from_secs(30),
    }
  }
}

/// Makes the request URI absolute (`https://host/path?query`), as Workers
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

fn builder(options: &HttpOptions) -> auto::Builder<TokioExecutor> {
  let mut builder = auto::Builder::new(TokioExecutor::new());
  // One buffer per response (head and a small body copied together) and a
  // plain `send`, rather than `writev` of the parts: less kernel work per
  // response, as `deno serve` does.
  builder
    .http1()
    .writev(false)
    .timer(TokioTimer::new())
    .header_read_timeout(options.header_timeout)
    .max_buf_size(options.max_header_bytes.max(8192));
  builder
    .http2()
    .timer(TokioTimer::new())
    .max_header_list_size(options.max_header_bytes as u32);
  builder
}

/// Runs [`serve`] for `listener` on every V8 thread of `runtime` (each
/// accepts on the same socket, next to its isolates). `done` gets one
/// message per accept loop when it has ended and drained.
pub fn serve_on_each_thread<H, F>(
  runtime: &isola_runtime::Runtime,
  listener: std::net::TcpListener,
  tls: Option<Arc<rustls::ServerConfig>>,
  options: HttpOptions,
  shutdown: watch::Receiver<bool>,
  handle: H,
  done: std::sync::mpsc::Sender<()>,
) where
  H: Fn(http::Request<isola_runtime::RequestBody>) -> F + Clone + Send + Sync + 'static,
  F: Future<Output = http::Response<ResponseBody>> + Send + 'static,
{
  let listener = Arc::new(listener);
  runtime.spawn_on_each_thread(move |_thread| {
    let listener = listener.try_clone();
    let (tls, options, shutdown) = (tls.clone(), options.clone(), shutdown.clone());
    let (handle, done) = (handle.clone(), done.clone());
    async move {
      match listener.map(TcpListener::from_std) {
        Ok(Ok(listener)) => serve(listener, tls, options, shutdown, handle).await,
        Ok(Err(e)) | Err(e) => tracing::error!("cannot use the listener: {e}"),
      }
      let _ = done.send(());
    }
  });
}

/// Accepts connections on `listener` until `shutdown` turns true, answering
/// each request with `handle`; then lets in-flight requests finish (up to the
/// drain timeout).
pub async fn serve<H, F>(
  listener: TcpListener,
  tls: Option<Arc<rustls::ServerConfig>>,
  options: HttpOptions,
  mut shutdown: watch::Receiver<bool>,
  handle: H,
) where
  H: Fn(http::Request<isola_runtime::RequestBody>) -> F + Clone + Send + 'static,
  F: Future<Output = http::Response<ResponseBody>> + Send + 'static,
{
  let scheme = if tls.is_some() { "https" } else { "http" };
  let fallback_host = listener
    .local_addr()
    .map_or_else(|_| "localhost".to_string(), |a| a.to_string());
  let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
  let builder = Arc::new(builder(&options));
  let graceful = GracefulShutdown::new();
  loop {
    let (stream, peer) = tokio::select! {
      conn = listener.accept() => match conn {
        Ok(conn) => conn,
        Err(e) => {
          tracing::warn!("accept failed: {e}");
          tokio::time::sleep(Duration::from_millis(10)).await;
          continue;
        }
      },
      _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
    };
    let _ = stream.set_nodelay(true);
    let handle = handle.clone();
    let fallback_host = fallback_host.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
      let uri = absolute_uri(&req, scheme, &fallback_host);
      let (mut parts, body) = req.into_parts();
      parts.uri = uri;
      // Trace events show who asked.
      parts
        .extensions
        .insert(isola_runtime::ClientAddr(peer.ip()));
      let req = http::Request::from_parts(parts, isola_runtime::request_body(body));
      let response = handle(req);
      async move { Ok::<_, std::convert::Infallible>(response.await) }
    });
    let builder = builder.clone();
    let watcher = graceful.watcher();
    let acceptor = acceptor.clone();
    let header_timeout = options.header_timeout;
    tokio::spawn(async move {
      match acceptor {
        None => {
          let conn = builder.serve_connection(TokioIo::new(stream), service);
          if let Err(e) = watcher.watch(conn.into_owned()).await {
            tracing::debug!("connection ended: {e}");
          }
        }
        Some(acceptor) => {
          // A TLS handshake is held to the same deadline as a request head.
          let tls = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!("TLS handshake timed out"),
          };
          let conn = builder.serve_connection(TokioIo::new(tls), service);
          if let Err(e) = watcher.watch(conn.into_owned()).await {
            tracing::debug!("connection ended: {e}");
          }
        }
      }
    });
  }
  drop(listener);
  if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
    .await
    .is_err()
  {
    tracing::warn!("shutdown: connections still open after the drain timeout");
  }
}
