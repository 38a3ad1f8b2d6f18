//! Isola's runtime: Cloudflare-Workers-style handlers
//! (`export default { fetch(request, env, ctx) }`) in V8 isolates.
//!
//! Each isolate starts from a startup snapshot that already holds the
//! Workers global scope (Web APIs from Deno's extension crates), so starting
//! one runs no bootstrap JS. A hyper request goes into JS as a `Request` and
//! the handler's `Response` comes back as an `http::Response` whose body
//! streams, without re-serialising HTTP in between.
//!
//! ```no_run
//! # async fn demo() -> Result<(), isola_runtime::Error> {
//! use isola_runtime::{Bundle, LogSink, Worker, WorkerConfig};
//! let bundle = Bundle::from_modules(
//!   "worker.js",
//!   [("worker.js".to_string(), "export default { fetch() { return new Response('hi') } }".into())],
//! )?;
//! let mut worker = Worker::new(bundle, &WorkerConfig::new("demo"), LogSink::discard()).await?;
//! let response = worker.fetch(isola_runtime::empty_request("http://demo.test/")).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(()) }
//! ```

mod bundle;
mod code_cache;
mod error;
mod fairness;
mod limits;
mod loader;
mod manifest;
mod metrics;
mod placement;
mod pool;
mod queue;
mod scheduled;
mod services;
mod specifier;
mod storage;
mod trace;
mod watchdog;
mod worker;

use bytes::Bytes;
use http_body_util::BodyExt;
pub use isola_ext::egress::EgressPolicy;
pub use isola_ext::egress::WorkerEgress;
pub use isola_ext::BoxError;
pub use isola_ext::KvService;
pub use isola_ext::Level;
pub use isola_ext::LimitExceeded;
pub use isola_ext::LogRecord;
pub use isola_ext::LogSink;
pub use isola_ext::QueueService;
pub use isola_ext::RequestBody;
pub use isola_ext::ResponseBody;
pub use isola_ext::StorageOps;

pub use crate::bundle::Bundle;
pub use crate::code_cache::CodeCacheConfig;
pub use crate::code_cache::CodeCacheKey;
pub use crate::code_cache::CodeCacheStats;
pub use crate::code_cache::CodeCacheStore;
pub use crate::error::Error;
pub use crate::fairness::Fairness;
pub use crate::limits::InvocationRecord;
pub use crate::limits::Limits;
pub use crate::limits::MeterSink;
pub use crate::limits::Outcome;
pub use crate::manifest::from_manifest;
pub use crate::metrics::Metrics;
pub use crate::pool::Config;
pub use crate::pool::PoolStats;
pub use crate::pool::Runtime;
pub use crate::pool::WorkerKey;
pub use crate::queue::QueueRun;
pub use crate::scheduled::ScheduledEvent;
pub use crate::scheduled::ScheduledRun;
pub use crate::services::ServiceTarget;
pub use crate::services::Services;
pub use crate::services::MAX_CHAIN_DEPTH;
pub use crate::specifier::clean_message;
pub use crate::storage::MemoryKv;
pub use crate::trace::FetchStart;
pub use crate::trace::PackedBytes;
pub use crate::trace::PackedWriter;
pub use crate::trace::SpanContext;
pub use crate::trace::Started;
pub use crate::trace::SubrequestSpan;
pub use crate::trace::Trace;
pub use crate::trace::TraceEvent;
pub use crate::trace::TraceRecord;
pub use crate::trace::TraceSink;
pub use crate::worker::FetchRequest;
pub use crate::worker::Invocation;
pub use crate::worker::Isolate;
pub use crate::worker::Worker;
pub use crate::worker::WorkerConfig;
pub use crate::worker::WorkerHandle;
pub use isola_proto::msg::Usage;
pub use isola_proto::names::ModuleKind;

/// Wraps any body (e.g. hyper's `Incoming`) as a [`RequestBody`].
pub fn request_body<B>(body: B) -> RequestBody
where
  B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
  B::Error: Into<BoxError>,
{
  // Most requests have none: an empty body boxes without allocating, and
  // the one it stands for (nothing more to come) is let go now.
  if body.is_end_stream() {
    return http_body_util::Empty::new()
      .map_err(|never: std::convert::Infallible| -> BoxError { match never {} })
      .boxed();
  }
  body.map_err(Into::into).boxed()
}

/// A GET request with no body, for tests and examples.
pub fn empty_request(url: &str) -> http::Request<RequestBody> {
  http::Request::get(url)
    .body(request_body(http_body_util::Empty::<Bytes>::new()))
    .expect("a GET with a valid URL builds")
}

/// The response a server sends when a worker fails: a short plain-text body
/// that tells the client nothing about the code. The details are in the log.
pub fn error_response(error: &Error) -> http::Response<ResponseBody> {
  if let Some(retry_after) = error.throttled() {
    let mut response = text_response(
      http::StatusCode::SERVICE_UNAVAILABLE,
      format!("Worker throttled: {error}\n"),
    );
    response.headers_mut().insert(
      http::header::RETRY_AFTER,
      http::HeaderValue::from(crate::error::retry_secs(retry_after)),
    );
    return response;
  }
  let (status, text) = match error.limit() {
    // The client sent too much: its fault, and it can retry with less.
    Some(Outcome::RequestBodyLimit) => (http::StatusCode::PAYLOAD_TOO_LARGE, format!("{error}\n")),
    Some(_) => (
      http::StatusCode::SERVICE_UNAVAILABLE,
      format!("Worker exceeded a limit: {error}\n"),
    ),
    None if error.is_exception() => (
      http::StatusCode::INTERNAL_SERVER_ERROR,
      "Worker threw exception\n".to_string(),
    ),
    None if error.is_code_error() => (
      http::StatusCode::INTERNAL_SERVER_ERROR,
      "Worker failed to start\n".to_string(),
    ),
    None => (
      http::StatusCode::SERVICE_UNAVAILABLE,
      "Worker unavailable\n".to_string(),
    ),
  };
  text_response(status, text)
}

/// A `text/plain` response, as the node's own answers (errors, 404s) are.
pub fn text_response(
  status: impl Into<http::StatusCode>,
  text: impl Into<String>,
) -> http::Response<ResponseBody> {
  let mut response = http::Response::new(ResponseBody::full(text.into()));
  *response.status_mut() = status.into();
  response.headers_mut().insert(
    http::header::CONTENT_TYPE,
    http::HeaderValue::from_static("text/plain;charset=UTF-8"),
  );
  response
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::error::ErrorKind;

  #[test]
  fn the_status_follows_the_limit_not_its_wording() {
    let request: Error = ErrorKind::Limit(LimitExceeded::RequestBody(1000)).into();
    let response: Error = ErrorKind::Limit(LimitExceeded::ResponseBody(1000)).into();
    assert_eq!(error_response(&request).status(), 413);
    assert_eq!(error_response(&response).status(), 503);
    assert_eq!(request.limit(), Some(Outcome::RequestBodyLimit));
    assert_eq!(response.limit(), Some(Outcome::ResponseBodyLimit));
  }

  #[test]
  fn io_errors_keep_their_cause() {
    use std::error::Error as _;
    let err: Error = ErrorKind::Io {
      what: "cannot read a.js".into(),
      source: std::io::Error::other("disk on fire"),
    }
    .into();
    assert_eq!(err.source().unwrap().to_string(), "disk on fire");
  }
}
