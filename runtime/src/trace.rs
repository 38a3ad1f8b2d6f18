//! Trace events: one per invocation, for live tail and invocation logs.
//! They are only built when the node's [`TraceSink`] keeps them, so a node
//! that discards them pays one branch per invocation and per log line.

use std::net::IpAddr;
use std::sync::Arc;

use isola_proto::trace::EventInfo;
pub use isola_proto::trace::TraceEvent;

/// The client's address, put into a request's extensions by the server
/// that accepted it; trace events carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Where trace events go. Cloned into every worker of a node.
#[derive(Clone, Default)]
pub struct TraceSink(Option<Arc<dyn Fn(TraceEvent) + Send + Sync>>);

impl TraceSink {
  /// `f` is called on the isolate's thread as each invocation ends: it
  /// must not block.
  pub fn new(f: impl Fn(TraceEvent) + Send + Sync + 'static) -> Self {
    Self(Some(Arc::new(f)))
  }

  /// A sink that keeps nothing: no event is built at all.
  pub fn discard() -> Self {
    Self(None)
  }

  pub fn is_enabled(&self) -> bool {
    self.0.is_some()
  }

  pub fn emit(&self, event: TraceEvent) {
    if let Some(f) = &self.0 {
      f(event)
    }
  }
}

impl std::fmt::Debug for TraceSink {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(if self.is_enabled() {
      "TraceSink"
    } else {
      "TraceSink(discard)"
    })
  }
}

/// Request headers a fetch event shows, as tail shows a selection.
const SHOWN_HEADERS: [&str; 6] = [
  "user-agent",
  "content-type",
  "referer",
  "cf-connecting-ip",
  "x-forwarded-for",
  "x-real-ip",
];

/// The event info of a request to a fetch handler.
pub(crate) fn fetch_info(parts: &http::request::Parts, url: &str) -> EventInfo {
  let headers = SHOWN_HEADERS
    .iter()
    .filter_map(|name| {
      let value = parts.headers.get(*name)?;
      Some((
        name.to_string(),
        String::from_utf8_lossy(value.as_bytes()).into_owned(),
      ))
    })
    .collect();
  EventInfo::Fetch {
    method: parts.method.as_str().to_string(),
    url: url.to_string(),
    headers,
    client_ip: parts
      .extensions
      .get::<ClientAddr>()
      .map(|a| a.0.to_string()),
    status: None,
  }
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
    let EventInfo::Fetch {
      method,
      headers,
      client_ip,
      ..
    } = fetch_info(&parts, "http://a.test/x")
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
