//! The HTTP front: hyper connections (HTTP/1.1, h2c, and HTTPS with ALPN),
//! served on the V8 threads so that a request usually reaches its isolate
//! without a cross-thread hop.

mod drain;
mod spread;
mod timer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::uri::PathAndQuery;
use http::uri::Scheme;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use isola_runtime::ResponseBody;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Protection of the HTTP front against slow or oversized input.
#[derive(Clone, Debug)]
pub struct HttpOptions {
  /// Largest request head; beyond it hyper answers 431.
  pub max_header_bytes: usize,
  /// A client that has not sent a full request head by then is cut off
  /// (HTTP/1 heads: up to a second later).
  pub header_timeout: Duration,
  /// Time in-flight requests get to finish once shutdown starts.
  pub drain_timeout: Duration,
  /// Whether `handle` gets the client's address, which only trace events
  /// read.
  pub client_addr: bool,
}

impl Default for HttpOptions {
  fn default() -> Self {
    Self {
      max_header_bytes: 64 << 10,
      header_timeout: Duration::from_secs(10),
      drain_timeout: Duration::from_secs(30),
      client_addr: false,
    }
  }
}

/// The `Host` headers a V8 thread's connections sent lately, parsed. A
/// client sends the same one on every request of its connection, and an edge
/// serving many host names over few connections sees each again soon:
/// parsing one into a new allocation was ~880 of the ~31,500 instructions of
/// a `serve` request spread over 100 host names (a lookup here: ~100).
#[derive(Default)]
pub struct Hosts {
  /// The last one parsed or found, compared before the map is hashed.
  last: Option<Authority>,
  /// Valid hosts by their bytes, at most [`Hosts::MAX`] of at most
  /// [`Hosts::MAX_LEN`] bytes each (a few hundred KiB), emptied when full,
  /// so that a client sending a new `Host` on every request costs memory
  /// that stays bounded.
  seen: foldhash::HashMap<Box<[u8]>, Authority>,
}

impl Hosts {
  const MAX: usize = 1024;
  /// A DNS name (253) with a port; a longer `Host` is parsed every time.
  const MAX_LEN: usize = 260;

  /// `host` as an authority: `None` when it is not text (the caller falls
  /// back to its listener's address), `Some(Err(()))` when it is text but
  /// no authority.
  fn authority(&mut self, host: &http::HeaderValue) -> Option<Result<Authority, ()>> {
    let bytes = host.as_bytes();
    if let Some(last) = &self.last {
      if last.as_str().as_bytes() == bytes {
        return Some(Ok(last.clone()));
      }
    }
    if let Some(seen) = self.seen.get(bytes) {
      self.last = Some(seen.clone());
      return Some(Ok(seen.clone()));
    }
    let parsed = Authority::try_from(host.to_str().ok()?).map_err(|_| ());
    if let Ok(authority) = &parsed {
      if bytes.len() <= Self::MAX_LEN {
        if self.seen.len() >= Self::MAX {
          self.seen.clear();
        }
        self.seen.insert(bytes.into(), authority.clone());
      }
      self.last = Some(authority.clone());
    }
    Some(parsed)
  }
}

thread_local! {
  /// Per thread rather than per connection: a connection's task stays on
  /// the V8 thread that accepted it, and the cache serves all of them.
  static HOSTS: std::cell::RefCell<Hosts> = std::cell::RefCell::default();
}

/// Makes the request URI absolute (`https://host/path?query`), as Workers
/// handlers expect `request.url` to be: the request's own authority, else
/// its `Host` header, else `fallback_host`. It runs for every request, so
/// the URI is put together from its parsed parts rather than formatted and
/// parsed again, and the `Host` is looked up in `hosts` before it is parsed.
/// A `Host` that is no authority (`a/b`, `a b`) gives `http://invalid/`, so
/// it can never become part of the path.
pub fn absolute_uri(
  uri: &http::Uri,
  headers: &http::HeaderMap,
  scheme: &Scheme,
  fallback_host: &Authority,
  hosts: &mut Hosts,
) -> http::Uri {
  let invalid = || http::Uri::from_static("http://invalid/");
  let authority = match uri.authority() {
    Some(authority) => authority.clone(),
    None => match host_header(headers).map(|h| hosts.authority(h)) {
      Some(Some(Ok(authority))) => authority,
      Some(Some(Err(()))) => return invalid(),
      Some(None) | None => fallback_host.clone(),
    },
  };
  let path = match uri.path_and_query() {
    Some(path) if path.as_str().starts_with('/') => path.clone(),
    Some(_) => return invalid(),
    None => PathAndQuery::from_static("/"),
  };
  let mut parts = http::uri::Parts::default();
  parts.scheme = Some(scheme.clone());
  parts.authority = Some(authority);
  parts.path_and_query = Some(path);
  http::Uri::from_parts(parts).unwrap_or_else(|_| invalid())
}

/// The request's `Host` header. Clients send it first (browsers, curl,
/// wrk), so the first header is looked at before the hashed lookup, which
/// cost ~110 instructions a request.
fn host_header(headers: &http::HeaderMap) -> Option<&http::HeaderValue> {
  match headers.iter().next() {
    Some((name, value)) if name == http::header::HOST => Some(value),
    _ => headers.get(http::header::HOST),
  }
}

/// The HTTP/1 settings, for hyper's own builder and for `auto`'s (the same
/// methods on two types).
macro_rules! http1_settings {
  ($builder:expr, $options:expr) => {
    $builder
      // A client that shuts down its sending side after the request still
      // gets its response (hyper's default ends such a connection
      // unanswered), and hyper no longer tries a read for that end while
      // each response is being made: two reads a request, ~950 of dev's
      // ~17,500 instructions for `hello`. A client that goes away is found
      // when its response is written (its invocation runs on either way).
      .half_close(true)
      // One buffer per response (head and a small body copied together)
      // and a plain `send`, rather than `writev` of the parts: less kernel
      // work per response, as `deno serve` does.
      .writev(false)
      .max_buf_size($options.max_header_bytes.max(8192))
  };
}

/// How the connections of one accept loop are served.
struct Builders {
  /// Connections known to speak HTTP/1: hyper's connection straight.
  http1: http1::Builder,
  /// The others: `auto` tells HTTP/2 from HTTP/1 by the first bytes it
  /// reads, and serves every read of the connection through a layer that
  /// gives those back first (~160 instructions a request).
  auto: auto::Builder<TokioExecutor>,
}

impl Builders {
  fn new(options: &HttpOptions) -> Self {
    let mut http1 = http1::Builder::new();
    // The head deadline is the drain's (see `drain`'s docs): hyper's own
    // costs a timer and a read a request.
    http1_settings!(http1, options).header_read_timeout(None::<Duration>);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    // `auto` serves HTTP/1 only to TLS clients that named no protocol, and
    // cannot tell the drain which protocol it found: hyper's deadline.
    http1_settings!(auto.http1(), options)
      .timer(timer::CoarseTimer)
      .header_read_timeout(options.header_timeout);
    auto
      .http2()
      .timer(TokioTimer::new())
      .max_header_list_size(options.max_header_bytes as u32);
    Self { http1, auto }
  }

  /// Serves `io` until it ends or the drain closes it (`http1`: known to
  /// be HTTP/1, its heads timed by the drain with `heads`, the clock that
  /// `service` keeps).
  async fn serve<I, S>(
    &self,
    io: I,
    http1: bool,
    service: S,
    mut ticket: drain::Ticket,
    heads: Arc<drain::HeadClock>,
  ) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
        http::Request<Incoming>,
        Response = http::Response<drain::Answered<ResponseBody>>,
        Error = std::convert::Infallible,
      > + Send
      + 'static,
    S::Future: Send + 'static,
  {
    let ended = if http1 {
      ticket.time_heads(heads, std::time::Instant::now());
      let conn = self.http1.serve_connection(io, service);
      let ended = ticket.watch(conn, http1::Connection::graceful_shutdown);
      ended.await.map(|ended| ended.map_err(|e| e.to_string()))
    } else {
      let conn = self.auto.serve_connection(io, service);
      let ended = ticket.watch(conn, auto::Connection::graceful_shutdown);
      ended.await.map(|ended| ended.map_err(|e| e.to_string()))
    };
    match ended {
      Some(Ok(())) => {}
      Some(Err(e)) => tracing::debug!("connection ended: {e}"),
      None => tracing::debug!("connection cut off: no request head within the header timeout"),
    }
  }
}

/// Whether a plaintext connection speaks HTTP/1, from its first bytes
/// (peeked: hyper reads them again): any start but `PRI`, HTTP/2's
/// preface, is a request line. `None`: it closed or sent nothing in
/// `timeout`.
async fn plaintext_is_http1(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<bool> {
  let mut first = [0u8; 3];
  let n = tokio::time::timeout(timeout, stream.peek(&mut first))
    .await
    .ok()?
    .ok()?;
  // Fewer bytes than that, all of them the preface's: `auto` reads on.
  (n > 0).then(|| !b"PRI".starts_with(&first[..n]))
}

/// Whether a TLS connection speaks HTTP/1: it agreed on it by ALPN (a
/// client that named no protocol may still send HTTP/2's preface).
fn tls_is_http1(tls: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> bool {
  tls.get_ref().1.alpn_protocol() == Some(b"http/1.1")
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
  H: Fn(isola_runtime::FetchRequest) -> F + Clone + Send + Sync + 'static,
  F: Future<Output = http::Response<ResponseBody>> + Send + 'static,
{
  let listener = Arc::new(listener);
  let spread = spread::Spread::new(runtime.threads());
  runtime.spawn_on_each_thread(move |thread| {
    let listener = listener.try_clone();
    let (tls, options, shutdown) = (tls.clone(), options.clone(), shutdown.clone());
    let (handle, done) = (handle.clone(), done.clone());
    let spread = Some((spread.clone(), thread));
    async move {
      match listener.map(TcpListener::from_std) {
        Ok(Ok(listener)) => serve_spread(listener, tls, options, shutdown, handle, spread).await,
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
  shutdown: watch::Receiver<bool>,
  handle: H,
) where
  H: Fn(isola_runtime::FetchRequest) -> F + Clone + Send + 'static,
  F: Future<Output = http::Response<ResponseBody>> + Send + 'static,
{
  serve_spread(listener, tls, options, shutdown, handle, None).await;
}

/// [`serve`] as accept loop `.1` of those that share `listener` through
/// `spread`'s counts.
async fn serve_spread<H, F>(
  listener: TcpListener,
  tls: Option<Arc<rustls::ServerConfig>>,
  options: HttpOptions,
  mut shutdown: watch::Receiver<bool>,
  handle: H,
  spread: Option<(Arc<spread::Spread>, usize)>,
) where
  H: Fn(isola_runtime::FetchRequest) -> F + Clone + Send + 'static,
  F: Future<Output = http::Response<ResponseBody>> + Send + 'static,
{
  let scheme = if tls.is_some() {
    Scheme::HTTPS
  } else {
    Scheme::HTTP
  };
  let fallback_host = listener
    .local_addr()
    .ok()
    .and_then(|a| Authority::try_from(a.to_string()).ok())
    .unwrap_or_else(|| Authority::from_static("localhost"));
  let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
  let builders = Arc::new(Builders::new(&options));
  let client_addr = options.client_addr;
  let drain = drain::Drain::default();
  tokio::spawn(drain.sweeper(options.header_timeout));
  loop {
    let accept = async {
      if let Some((spread, me)) = &spread {
        spread.turn(*me).await;
      }
      listener.accept().await
    };
    let (stream, peer) = tokio::select! {
      conn = accept => match conn {
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
    let scheme = scheme.clone();
    let heads = Arc::new(drain::HeadClock::default());
    let clock = heads.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
      clock.head();
      let uri = HOSTS.with_borrow_mut(|hosts| {
        absolute_uri(req.uri(), req.headers(), &scheme, &fallback_host, hosts)
      });
      let (mut parts, body) = req.into_parts();
      parts.uri = uri;
      let req = http::Request::from_parts(parts, isola_runtime::request_body(body));
      let response = handle(isola_runtime::FetchRequest::new(
        req,
        client_addr.then_some(peer.ip()),
      ));
      let clock = clock.clone();
      async move {
        let response = response.await.map(|body| drain::Answered::new(body, clock));
        Ok::<_, std::convert::Infallible>(response)
      }
    });
    let builders = builders.clone();
    let mut ticket = drain.ticket();
    let share = spread.as_ref().map(|(spread, me)| spread.hold(*me));
    let acceptor = acceptor.clone();
    let header_timeout = options.header_timeout;
    tokio::spawn(async move {
      let _share = share;
      match acceptor {
        None => {
          // The first bytes are held to the deadline of a request head,
          // and not waited for once shutdown starts.
          let first = tokio::select! {
            first = plaintext_is_http1(&stream, header_timeout) => first,
            () = ticket.closing() => None,
          };
          let Some(http1) = first else {
            return tracing::debug!(
              "connection closed, silent or shut down before its first request"
            );
          };
          let io = TokioIo::new(stream);
          builders.serve(io, http1, service, ticket, heads).await;
        }
        Some(acceptor) => {
          // A TLS handshake is held to the same deadline as a request
          // head, and given up once shutdown starts.
          let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
          let tls = tokio::select! {
            tls = handshake => match tls {
              Ok(Ok(tls)) => tls,
              Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
              Err(_) => return tracing::debug!("TLS handshake timed out"),
            },
            () = ticket.closing() => return tracing::debug!("shut down during a TLS handshake"),
          };
          let http1 = tls_is_http1(&tls);
          builders
            .serve(TokioIo::new(tls), http1, service, ticket, heads)
            .await;
        }
      }
    });
  }
  drop(listener);
  if tokio::time::timeout(options.drain_timeout, drain.shutdown())
    .await
    .is_err()
  {
    tracing::warn!("shutdown: connections still open after the drain timeout");
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn absolute(uri: &str, host: Option<&[u8]>) -> String {
    let uri: http::Uri = uri.parse().unwrap();
    let mut headers = http::HeaderMap::new();
    if let Some(host) = host {
      headers.insert(
        http::header::HOST,
        http::HeaderValue::from_bytes(host).unwrap(),
      );
    }
    let fallback = Authority::from_static("127.0.0.1:8080");
    let mut hosts = Hosts::default();
    let first = absolute_uri(&uri, &headers, &Scheme::HTTPS, &fallback, &mut hosts);
    // A second request with the same `Host` reuses the parsed one.
    let again = absolute_uri(&uri, &headers, &Scheme::HTTPS, &fallback, &mut hosts);
    assert_eq!(first, again);
    first.to_string()
  }

  #[test]
  fn the_url_a_handler_sees_is_absolute() {
    assert_eq!(
      absolute("/a/b?x=1&y", Some(b"shop.test")),
      "https://shop.test/a/b?x=1&y"
    );
    assert_eq!(absolute("/", Some(b"[::1]:8443")), "https://[::1]:8443/");
    // The request's own authority wins over its Host header.
    assert_eq!(
      absolute("http://api.test:81/v1", Some(b"shop.test")),
      "https://api.test:81/v1"
    );
    // No Host, or one that is not text: the listener's address.
    assert_eq!(absolute("/p", None), "https://127.0.0.1:8080/p");
    assert_eq!(
      absolute("/p", Some(b"caf\xc3\xa9.test")),
      "https://127.0.0.1:8080/p"
    );
    // CONNECT's authority form has no path.
    assert_eq!(absolute("shop.test:443", None), "https://shop.test:443/");
  }

  #[test]
  fn the_host_is_found_first_or_anywhere_else() {
    let map = |pairs: &[(&'static str, &'static str)]| {
      let mut headers = http::HeaderMap::new();
      for (name, value) in pairs {
        headers.append(*name, http::HeaderValue::from_static(value));
      }
      headers
    };
    let host = |headers: &http::HeaderMap| host_header(headers).map(|v| v.as_bytes().to_vec());
    assert_eq!(
      host(&map(&[("host", "a.test"), ("accept", "*/*")])),
      Some(b"a.test".to_vec())
    );
    assert_eq!(
      host(&map(&[("accept", "*/*"), ("host", "b.test")])),
      Some(b"b.test".to_vec())
    );
    // The first of two, as `HeaderMap::get` gives it.
    assert_eq!(
      host(&map(&[("host", "a.test"), ("host", "b.test")])),
      Some(b"a.test".to_vec())
    );
    assert_eq!(host(&map(&[("accept", "*/*")])), None);
    assert_eq!(host(&http::HeaderMap::new()), None);
  }

  #[test]
  fn a_connection_that_changes_its_host_gets_the_new_one() {
    let fallback = Authority::from_static("127.0.0.1:8080");
    let uri: http::Uri = "/p".parse().unwrap();
    let mut hosts = Hosts::default();
    let mut url = |host: &'static str| {
      let mut headers = http::HeaderMap::new();
      headers.insert(http::header::HOST, http::HeaderValue::from_static(host));
      absolute_uri(&uri, &headers, &Scheme::HTTP, &fallback, &mut hosts).to_string()
    };
    assert_eq!(url("a.test"), "http://a.test/p");
    assert_eq!(url("b.test:81"), "http://b.test:81/p");
    assert_eq!(url("a b"), "http://invalid/");
    assert_eq!(url("b.test:81"), "http://b.test:81/p");
    // Found again in the map, not as the last one.
    assert_eq!(url("a.test"), "http://a.test/p");
    assert_eq!(url("a b"), "http://invalid/");
  }

  /// However many host names a thread's clients send, the cache keeps at
  /// most `MAX` of them, none longer than `MAX_LEN`, and answers the same.
  #[test]
  fn the_hosts_kept_stay_bounded() {
    let mut hosts = Hosts::default();
    for i in 0..3 * Hosts::MAX {
      let host = http::HeaderValue::try_from(format!("h{i}.test")).unwrap();
      let authority = hosts.authority(&host).unwrap().unwrap();
      assert_eq!(authority.as_str(), format!("h{i}.test"));
      assert!(hosts.seen.len() <= Hosts::MAX);
    }
    let long = http::HeaderValue::try_from("a".repeat(Hosts::MAX_LEN + 1)).unwrap();
    hosts.seen.clear();
    assert_eq!(
      hosts.authority(&long).unwrap().unwrap().as_str().len(),
      Hosts::MAX_LEN + 1
    );
    assert!(hosts.seen.is_empty());
    // Not text: the caller's fallback.
    let binary = http::HeaderValue::from_bytes(b"caf\xc3\xa9.test").unwrap();
    assert!(hosts.authority(&binary).is_none());
  }

  #[test]
  fn a_host_header_that_is_no_authority_never_reaches_the_path() {
    for host in [&b"evil.test/admin"[..], b"a b", b"a?x=1", b"", b"a#frag"] {
      assert_eq!(
        absolute("/p", Some(host)),
        "http://invalid/",
        "Host {:?}",
        String::from_utf8_lossy(host)
      );
    }
    assert_eq!(absolute("*", Some(b"shop.test")), "http://invalid/");
  }

  /// A client that shuts down its sending side once the request is out (as
  /// `nc -N` and some proxies do) still gets its response, even one made
  /// after that end arrived.
  #[tokio::test]
  async fn a_client_that_half_closes_gets_its_response() {
    use tokio::io::AsyncReadExt as _;
    use tokio::io::AsyncWriteExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let handle = |_request| async {
      // Long enough for the client's end of sending to come first.
      tokio::time::sleep(Duration::from_millis(200)).await;
      http::Response::new(ResponseBody::full("late"))
    };
    tokio::spawn(serve(
      listener,
      None,
      HttpOptions::default(),
      shutdown,
      handle,
    ));
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
      .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
      .await
      .unwrap();
    client.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut answer))
      .await
      .expect("the server ends the connection")
      .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("late"), "{answer:?}");
  }

  #[tokio::test]
  async fn a_connection_s_first_bytes_tell_http1_from_http2() {
    use tokio::io::AsyncWriteExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeout = Duration::from_millis(300);
    for (sent, expected) in [
      (&b"GET / HTTP/1.1\r\n"[..], Some(true)),
      (b"PROPFIND / HTTP/1.1\r\n", Some(true)),
      (b"PUT / HTTP/1.1\r\n", Some(true)),
      (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(false)),
      // Too few bytes to tell: `auto` reads on.
      (b"PR", Some(false)),
      // Silent past the deadline.
      (b"", None),
    ] {
      let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
      client.write_all(sent).await.unwrap();
      let (stream, _) = listener.accept().await.unwrap();
      if sent.len() > 1 {
        // All of it arrived before the peek.
        tokio::time::sleep(Duration::from_millis(20)).await;
      }
      let seen = plaintext_is_http1(&stream, timeout).await;
      assert_eq!(seen, expected, "{:?}", String::from_utf8_lossy(sent));
    }
    // A client that closes without a byte.
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    drop(client);
    let (stream, _) = listener.accept().await.unwrap();
    assert_eq!(plaintext_is_http1(&stream, timeout).await, None);
  }
}
