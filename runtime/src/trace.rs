//! Trace events: one per invocation, for live tail and invocation logs.
//! They are only built when the node's [`TraceSink`] keeps them, so a node
//! that discards them pays one branch per invocation and per log line.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

pub use isola_ext::FetchStart;
pub use isola_ext::SpanContext;
pub use isola_ext::Started;
pub use isola_ext::SubrequestSpan;
pub use isola_ext::Trace;
pub use isola_proto::trace::TraceEvent;

use crate::Outcome;

/// The client's address, put into a request's extensions by the server
/// that accepted it; trace events carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// One finished invocation as the isolate's thread hands it over: what it
/// collected, kept raw. [`TraceRecord::into_event`] builds the event
/// observers see; a node calls it on another thread, so the request's
/// thread never formats strings or copies headers for it.
#[derive(Debug)]
pub struct TraceRecord {
  pub worker: Arc<str>,
  pub version: Arc<str>,
  pub start: SystemTime,
  pub outcome: Outcome,
  pub cpu_us: u64,
  pub wall_us: u64,
  pub trace: Box<Trace>,
}

impl TraceRecord {
  /// The event observers see (its `edge` left empty for the node to fill).
  pub fn into_event(self) -> TraceEvent {
    let trace = *self.trace;
    TraceEvent {
      worker: self.worker.to_string(),
      version: self.version.to_string(),
      edge: String::new(),
      timestamp: isola_ext::epoch_ms(self.start),
      event: trace.event.into_info(),
      outcome: self.outcome.tail_name().to_string(),
      cpu_us: self.cpu_us,
      wall_us: self.wall_us,
      logs: trace.logs,
      exceptions: trace.exceptions,
      truncated: trace.truncated,
    }
  }

  /// Roughly the bytes it holds, for bounded buffers.
  pub fn approx_bytes(&self) -> usize {
    128 + self.worker.len() + self.version.len() + self.trace.approx_bytes()
  }
}

struct Sink {
  f: Box<dyn Fn(TraceRecord) + Send + Sync>,
  spans: bool,
}

/// Where trace records go. Cloned into every worker of a node.
#[derive(Clone, Default)]
pub struct TraceSink(Option<Arc<Sink>>);

impl TraceSink {
  /// `f` is called on the isolate's thread as each invocation ends: it
  /// must not block (and should leave [`TraceRecord::into_event`] to
  /// another thread).
  pub fn new(f: impl Fn(TraceRecord) + Send + Sync + 'static) -> Self {
    Self(Some(Arc::new(Sink {
      f: Box::new(f),
      spans: false,
    })))
  }

  /// Like [`TraceSink::new`], for a node that exports OpenTelemetry
  /// spans: every record then has a span ([`Trace::span`]) that continues
  /// the request's `traceparent`, with one child per outgoing `fetch()`,
  /// each of which carries a `traceparent` naming its span.
  pub fn with_spans(f: impl Fn(TraceRecord) + Send + Sync + 'static) -> Self {
    Self(Some(Arc::new(Sink {
      f: Box::new(f),
      spans: true,
    })))
  }

  /// A sink that keeps nothing: no event is built at all.
  pub fn discard() -> Self {
    Self(None)
  }

  pub fn is_enabled(&self) -> bool {
    self.0.is_some()
  }

  /// Records get spans.
  pub fn spans(&self) -> bool {
    self.0.as_ref().is_some_and(|s| s.spans)
  }

  pub fn emit(&self, record: TraceRecord) {
    if let Some(s) = &self.0 {
      (s.f)(record)
    }
  }
}

impl std::fmt::Debug for TraceSink {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(match &self.0 {
      None => "TraceSink(discard)",
      Some(s) if s.spans => "TraceSink(spans)",
      Some(_) => "TraceSink",
    })
  }
}

/// What a fetch event records of its request: shared values only (the
/// method, the URI, the shown headers' values, the address), no strings.
pub(crate) fn fetch_start(parts: &http::request::Parts) -> Started {
  let mut headers: [Option<http::HeaderValue>; isola_ext::SHOWN_COUNT] = Default::default();
  if !parts.headers.is_empty() {
    for (slot, name) in headers.iter_mut().zip(&isola_ext::SHOWN_HEADERS) {
      *slot = parts.headers.get(name).cloned();
    }
  }
  Started::Fetch(FetchStart {
    method: parts.method.clone(),
    uri: parts.uri.clone(),
    headers,
    client: parts.extensions.get::<ClientAddr>().map(|a| a.0),
    status: None,
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_fetch_shows_selected_headers_and_the_client_address() {
    let mut request = http::Request::post("http://a.test/x")
      .header("user-agent", "curl/8")
      .header("authorization", "Bearer secret")
      .header("x-forwarded-for", "203.0.113.9")
      .body(())
      .unwrap();
    request
      .extensions_mut()
      .insert(ClientAddr("192.0.2.1".parse().unwrap()));
    let (parts, ()) = request.into_parts();
    let isola_proto::trace::EventInfo::Fetch {
      method,
      headers,
      client_ip,
      ..
    } = fetch_start(&parts).into_info()
    else {
      panic!("not a fetch");
    };
    assert_eq!(method, "POST");
    assert_eq!(
      headers,
      vec![
        ("user-agent".to_string(), "curl/8".to_string()),
        ("x-forwarded-for".to_string(), "203.0.113.9".to_string()),
      ],
      "credentials are never shown"
    );
    assert_eq!(client_ip.as_deref(), Some("192.0.2.1"));
  }

  #[test]
  fn a_discarding_sink_says_so() {
    assert!(!TraceSink::discard().is_enabled());
    assert!(!TraceSink::default().is_enabled());
    assert!(TraceSink::new(|_| {}).is_enabled());
  }
}
