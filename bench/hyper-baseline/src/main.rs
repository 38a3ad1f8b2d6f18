//! Raw hyper, one current-thread tokio runtime: the ceiling the benchmark
//! harness compares every JS runtime against. It implements the same three
//! workloads as `bench/workloads/*/worker.js`, routed by path:
//!
//! * `GET /`       -> `Hello World!` (text/plain)
//! * `GET /json`   -> a small JSON object built from three request headers
//! * `POST /echo`  -> the request body back, same content-type
//!
//! Usage: `hyper-baseline [--listen 127.0.0.1:8080]`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper::Response;
use hyper_util::rt::TokioIo;

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
  req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
  let path = req.uri().path();
  let res = if path.starts_with("/json") {
    // Same key order as the worker's JSON.stringify; serde_json escapes the values.
    let json = |name: &str| serde_json::to_string(&header_str(&req, name)).unwrap();
    let body = format!(
      "{{\"ok\":true,\"userAgent\":{},\"accept\":{},\"requestId\":{}}}",
      json("user-agent"),
      json("accept"),
      json("x-request-id"),
    );
    Response::builder()
      .header(header::CONTENT_TYPE, "application/json")
      .body(Full::new(Bytes::from(body)))
  } else if path.starts_with("/echo") {
    let content_type = req
      .headers()
      .get(header::CONTENT_TYPE)
      .cloned()
      .unwrap_or_else(|| header::HeaderValue::from_static("application/octet-stream"));
    let body = match req.into_body().collect().await {
      Ok(collected) => collected.to_bytes(),
      Err(_) => Bytes::new(),
    };
    Response::builder()
      .header(header::CONTENT_TYPE, content_type)
      .body(Full::new(body))
  } else {
    Response::builder()
      .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8")
      .body(Full::new(Bytes::from_static(b"Hello World!")))
  };
  Ok(res.expect("static response parts are valid"))
}

fn main() -> std::io::Result<()> {
  let mut listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
  let mut args = std::env::args().skip(1);
  while let Some(arg) = args.next() {
    match arg.as_str() {
      "--listen" => {
        let value = args.next().expect("--listen needs an address");
        listen = value.parse().expect("--listen: not a socket address");
      }
      other => panic!("unknown argument {other:?} (usage: hyper-baseline [--listen ADDR])"),
    }
  }

  let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
  rt.block_on(async move {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("hyper-baseline: listening on http://{}", listener.local_addr()?);
    loop {
      let (stream, _) = match listener.accept().await {
        Ok(conn) => conn,
        Err(e) => {
          eprintln!("accept failed: {e}");
          continue;
        }
      };
      let _ = stream.set_nodelay(true);
      tokio::spawn(async move {
        let _ = http1::Builder::new()
          .serve_connection(TokioIo::new(stream), service_fn(handle))
          .await;
      });
    }
  })
}
