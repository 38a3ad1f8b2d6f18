//! What observers (live tail, invocation logs, OpenTelemetry spans) see of
//! one invocation, collected while it runs. Only kept when the node ships
//! trace events: otherwise nothing here is ever built. What the request
//! thread records is kept raw (the method, the URL it already has, shared
//! header values, the address); turning it into strings is left to
//! [`Started::info`], which the node calls off the request's thread.

use std::net::IpAddr;
use std::time::Duration;
use std::time::SystemTime;

use isola_proto::trace::EventInfo;
use isola_proto::trace::ExceptionInfo;
use isola_proto::trace::LogLine;
use isola_proto::trace::MAX_LOG_BYTES;

use crate::log::Level;

/// How many headers [`SHOWN_HEADERS`] names.
pub const SHOWN_COUNT: usize = 6;

/// Request headers a fetch event shows, as tail shows a selection
/// (names ready-made: looking one up parses nothing).
pub static SHOWN_HEADERS: [http::HeaderName; SHOWN_COUNT] = [
  http::header::USER_AGENT,
  http::header::CONTENT_TYPE,
  http::header::REFERER,
  http::HeaderName::from_static("cf-connecting-ip"),
  http::HeaderName::from_static("x-forwarded-for"),
  http::HeaderName::from_static("x-real-ip"),
];

/// Appends `uri` to `out` as `Uri`'s `Display` writes it, without the
/// formatting machinery (it runs for every request: through `Display` it
/// took ~800 instructions), and returns where its path lies in `out`.
pub fn write_uri(out: &mut Vec<u8>, uri: &http::Uri) -> std::ops::Range<usize> {
  if let Some(scheme) = uri.scheme() {
    // The usual schemes as constants: a copy of a known length is a move,
    // not a `memcpy` call.
    match scheme.as_str() {
      "http" => out.extend_from_slice(b"http://"),
      "https" => out.extend_from_slice(b"https://"),
      other => {
        out.extend_from_slice(other.as_bytes());
        out.extend_from_slice(b"://");
      }
    }
  }
  if let Some(authority) = uri.authority() {
    out.extend_from_slice(authority.as_str().as_bytes());
  }
  let path_start = out.len();
  out.extend_from_slice(uri.path().as_bytes());
  let path = path_start..out.len();
  if let Some(query) = uri.query() {
    out.push(b'?');
    out.extend_from_slice(query.as_bytes());
  }
  path
}

/// A fetch invocation's request, as the request thread saw it: the URI
/// and the shown headers' values copied into one small buffer. Not shared
/// with the request: `Uri` and `HeaderValue` are views into the server's
/// read buffer, so keeping them until the shipper runs (up to 100 ms)
/// pinned a whole read buffer per request. The server then allocated a
/// fresh one for nearly every request and the shipper's thread freed them
/// in bulk, which cost the request thread more (fresh pages zeroed by the
/// kernel) than this copy does.
#[derive(Clone, Debug)]
pub struct FetchStart {
  pub method: http::Method,
  /// The URI as `Uri`'s `Display` writes it, then the shown values.
  text: Vec<u8>,
  uri_len: usize,
  path: (usize, usize),
  /// The URI has a scheme: it is the URL as it is.
  absolute: bool,
  /// Where each of [`SHOWN_HEADERS`] the request has lies in `text`.
  headers: [Option<(usize, usize)>; SHOWN_COUNT],
  pub client: Option<IpAddr>,
  pub status: Option<u16>,
}

impl FetchStart {
  pub fn new(
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    client: Option<IpAddr>,
  ) -> Self {
    let mut start = Self {
      method: http::Method::GET,
      text: Vec::with_capacity(64),
      uri_len: 0,
      path: (0, 0),
      absolute: false,
      headers: [None; SHOWN_COUNT],
      client: None,
      status: None,
    };
    start.refill(method, uri, headers, client);
    start
  }

  /// Makes it another request's, in its own memory: the copy's room is
  /// kept.
  fn refill(
    &mut self,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    client: Option<IpAddr>,
  ) {
    self.text.clear();
    let path = write_uri(&mut self.text, uri);
    self.path = (path.start, path.end);
    self.uri_len = self.text.len();
    self.headers = [None; SHOWN_COUNT];
    // One pass over the request's few headers costs less than a hashed
    // lookup per shown name; the first value of a name is the one shown,
    // as `HeaderMap::get` gives it.
    for (name, value) in headers {
      if let Some(i) = SHOWN_HEADERS.iter().position(|n| n == name) {
        if self.headers[i].is_none() {
          let start = self.text.len();
          self.text.extend_from_slice(value.as_bytes());
          self.headers[i] = Some((start, self.text.len()));
        }
      }
    }
    self.method = method.clone();
    self.absolute = uri.scheme().is_some();
    self.client = client;
    self.status = None;
  }

  /// The URL the worker saw (`http://localhost` before a bare path).
  pub fn url(&self) -> String {
    let uri = String::from_utf8_lossy(&self.text[..self.uri_len]);
    if self.absolute {
      uri.into_owned()
    } else {
      format!("http://localhost{uri}")
    }
  }

  /// The URI as it came (no `http://localhost`), and whether it has a
  /// scheme: with equal keys, two requests have equal [`Self::url`]s.
  pub fn uri_key(&self) -> (&[u8], bool) {
    (&self.text[..self.uri_len], self.absolute)
  }

  /// The URI's path.
  pub fn path(&self) -> &str {
    std::str::from_utf8(&self.text[self.path.0..self.path.1]).unwrap_or("/")
  }

  /// The shown headers the request had, with their values' bytes.
  pub fn shown_headers(&self) -> impl Iterator<Item = (&'static http::HeaderName, &[u8])> {
    SHOWN_HEADERS
      .iter()
      .zip(&self.headers)
      .filter_map(|(name, range)| range.map(|(a, b)| (name, &self.text[a..b])))
  }
}

/// What started an invocation.
#[derive(Clone, Debug)]
// Unboxed: it lives in the boxed `Trace`, one allocation per invocation.
#[allow(clippy::large_enum_variant)]
pub enum Started {
  Fetch(FetchStart),
  /// Scheduled, queue and RPC invocations (built as they are: they are
  /// not on the hot path).
  Other(EventInfo),
}

impl From<EventInfo> for Started {
  fn from(info: EventInfo) -> Self {
    Self::Other(info)
  }
}

impl Started {
  /// The event info observers see (strings built here, not on the
  /// request's thread).
  pub fn info(&self) -> EventInfo {
    match self {
      Self::Fetch(f) => EventInfo::Fetch {
        method: f.method.as_str().to_string(),
        url: f.url(),
        headers: f
          .shown_headers()
          .map(|(name, value)| {
            (
              name.as_str().to_string(),
              String::from_utf8_lossy(value).into_owned(),
            )
          })
          .collect(),
        client_ip: f.client.map(|a| a.to_string()),
        status: f.status,
      },
      Self::Other(info) => info.clone(),
    }
  }

  /// [`Self::info`], taking what it can instead of copying.
  pub fn into_info(self) -> EventInfo {
    match self {
      Self::Other(info) => info,
      fetch => fetch.info(),
    }
  }

  /// Roughly the bytes it holds, for bounded buffers.
  pub fn approx_bytes(&self) -> usize {
    match self {
      Self::Fetch(f) => 16 + f.text.len(),
      Self::Other(EventInfo::Scheduled { cron, .. }) => cron.len(),
      Self::Other(EventInfo::Queue { queue, .. }) => queue.len(),
      Self::Other(EventInfo::Rpc { method }) => method.len(),
      Self::Other(EventInfo::Fetch { url, headers, .. }) => {
        url.len()
          + headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
      }
    }
  }
}

/// W3C trace context of an invocation, kept when the node exports spans:
/// the invocation's span and the outgoing `fetch()` calls under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
  pub trace_id: u128,
  pub span_id: u64,
  /// The caller's span, from the request's `traceparent` (0: a new trace).
  pub parent_id: u64,
  /// The trace flags (bit 0: sampled), kept from the caller.
  pub flags: u8,
  pub subrequests: Vec<SubrequestSpan>,
}

/// One outgoing `fetch()` of an invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubrequestSpan {
  pub span_id: u64,
  pub method: String,
  pub url: String,
  pub start: SystemTime,
  /// Until its response headers came (or it failed); `None` if the
  /// invocation ended first.
  pub duration: Option<Duration>,
  /// The response status; 0 if it failed.
  pub status: u16,
}

/// Subrequest spans kept per invocation at most (the subrequest limit
/// normally ends an invocation well before).
pub const MAX_SUBREQUEST_SPANS: usize = 1000;

impl SpanContext {
  /// A span for a new invocation: the child of `traceparent` if it is a
  /// valid W3C version-00 header, else the root of a new trace.
  pub fn start(traceparent: Option<&[u8]>) -> Self {
    let span_id = nonzero_u64();
    match traceparent.and_then(parse_traceparent) {
      Some((trace_id, parent_id, flags)) => Self {
        trace_id,
        span_id,
        parent_id,
        flags,
        subrequests: Vec::new(),
      },
      None => Self {
        trace_id: loop {
          let id = fastrand::u128(..);
          if id != 0 {
            break id;
          }
        },
        span_id,
        parent_id: 0,
        flags: 1,
        subrequests: Vec::new(),
      },
    }
  }

  /// Starts a subrequest span; returns the `traceparent` that names it, or
  /// `None` past [`MAX_SUBREQUEST_SPANS`].
  pub fn subrequest(&mut self, method: &str, url: &str, now: SystemTime) -> Option<String> {
    if self.subrequests.len() >= MAX_SUBREQUEST_SPANS {
      return None;
    }
    let span_id = nonzero_u64();
    self.subrequests.push(SubrequestSpan {
      span_id,
      method: method.to_string(),
      url: url.to_string(),
      start: now,
      duration: None,
      status: 0,
    });
    Some(format_traceparent(self.trace_id, span_id, self.flags))
  }

  /// Ends the subrequest span that `traceparent` names.
  pub fn subrequest_done(&mut self, traceparent: &str, status: u16, now: SystemTime) {
    let Some((_, span_id, _)) = parse_traceparent(traceparent.as_bytes()) else {
      return;
    };
    if let Some(s) = self
      .subrequests
      .iter_mut()
      .rev()
      .find(|s| s.span_id == span_id)
    {
      s.duration = Some(now.duration_since(s.start).unwrap_or_default());
      s.status = status;
    }
  }
}

fn nonzero_u64() -> u64 {
  loop {
    let id = fastrand::u64(..);
    if id != 0 {
      return id;
    }
  }
}

/// `00-<trace id>-<span id>-<flags>`, W3C trace context version 00.
pub fn format_traceparent(trace_id: u128, span_id: u64, flags: u8) -> String {
  format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}")
}

/// Trace id, parent span id and flags of a W3C `traceparent` header;
/// `None` unless it is well formed (version 00, lowercase hex, ids not all
/// zero). Later versions' extra fields are refused too: we only speak 00.
pub fn parse_traceparent(value: &[u8]) -> Option<(u128, u64, u8)> {
  let s = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
  let b = s.as_bytes();
  if b.len() != 55 || &b[..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
    return None;
  }
  let hex = |s: &str| {
    s.bytes()
      .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
  };
  let (trace, span, flags) = (&s[3..35], &s[36..52], &s[53..55]);
  if !(hex(trace) && hex(span) && hex(flags)) {
    return None;
  }
  let trace_id = u128::from_str_radix(trace, 16).ok()?;
  let span_id = u64::from_str_radix(span, 16).ok()?;
  let flags = u8::from_str_radix(flags, 16).ok()?;
  (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags))
}

/// The room for a request's copy a reused trace may keep.
const REUSED_TEXT: usize = 256;

/// One invocation's event info, logs and exceptions so far.
#[derive(Clone, Debug)]
pub struct Trace {
  pub event: Started,
  pub logs: Vec<LogLine>,
  pub exceptions: Vec<ExceptionInfo>,
  /// Log lines past [`MAX_LOG_BYTES`] were left out.
  pub truncated: bool,
  /// Its span, when the node exports OpenTelemetry spans.
  pub span: Option<SpanContext>,
  log_bytes: usize,
}

impl Trace {
  pub fn new(event: impl Into<Started>) -> Self {
    Self {
      event: event.into(),
      logs: Vec::new(),
      exceptions: Vec::new(),
      truncated: false,
      span: None,
      log_bytes: 0,
    }
  }

  /// A fetch's trace, made in `spare`'s memory when there is one (a trace
  /// a finished invocation gave back, see [`Trace::reusable`]): its box
  /// and its copy's room are used again, and nothing is moved into them.
  pub fn fetch(
    spare: Option<Box<Trace>>,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    client: Option<IpAddr>,
  ) -> Box<Trace> {
    if let Some(mut trace) = spare {
      if let Started::Fetch(f) = &mut trace.event {
        f.refill(method, uri, headers, client);
        trace.logs.clear();
        trace.exceptions.clear();
        trace.truncated = false;
        trace.span = None;
        trace.log_bytes = 0;
        return trace;
      }
    }
    Box::new(Trace::new(Started::Fetch(FetchStart::new(
      method, uri, headers, client,
    ))))
  }

  /// Whether [`Trace::fetch`] may use it again: a fetch's, holding no
  /// memory but the box and a usual URL's room (a trace that logged, or
  /// copied a long URL, is let go rather than kept by an idle worker).
  pub fn reusable(&self) -> bool {
    matches!(&self.event, Started::Fetch(f) if f.text.capacity() <= REUSED_TEXT)
      && self.logs.capacity() == 0
      && self.exceptions.capacity() == 0
      && self.span.is_none()
  }

  /// Keeps a `console.*` line, unless the invocation's log bytes would pass
  /// [`MAX_LOG_BYTES`]: then it and every later line are left out (a log
  /// with holes in it would mislead more than one cut short).
  pub fn log(&mut self, level: Level, message: &str, at: SystemTime) {
    if self.truncated {
      return;
    }
    let size = message.len();
    if self.log_bytes + size > MAX_LOG_BYTES {
      self.truncated = true;
      return;
    }
    self.log_bytes += size;
    self.logs.push(LogLine {
      level: level.as_str().to_string(),
      message: message.to_string(),
      timestamp: epoch_ms(at),
    });
  }

  /// Notes an uncaught exception (or a limit that ended the invocation).
  pub fn exception(&mut self, name: &str, message: &str, stack: Option<&str>) {
    self.exceptions.push(ExceptionInfo {
      name: name.to_string(),
      message: message.to_string(),
      stack: stack.map(str::to_string),
      timestamp: epoch_ms(SystemTime::now()),
    });
  }

  /// The response status of a fetch invocation.
  pub fn set_status(&mut self, code: u16) {
    match &mut self.event {
      Started::Fetch(f) => f.status = Some(code),
      Started::Other(EventInfo::Fetch { status, .. }) => *status = Some(code),
      Started::Other(_) => {}
    }
  }

  /// Roughly the bytes it holds, for bounded buffers.
  pub fn approx_bytes(&self) -> usize {
    let logs: usize = self.logs.iter().map(|l| l.message.len() + 32).sum();
    let exceptions: usize = self
      .exceptions
      .iter()
      .map(|x| x.name.len() + x.message.len() + x.stack.as_ref().map_or(0, String::len) + 16)
      .sum();
    let spans = self
      .span
      .as_ref()
      .map_or(0, |s| s.subrequests.iter().map(|r| r.url.len() + 64).sum());
    self.event.approx_bytes() + logs + exceptions + spans
  }
}

/// ms since the Unix epoch (0 before it).
pub fn epoch_ms(t: SystemTime) -> i64 {
  t.duration_since(SystemTime::UNIX_EPOCH)
    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
  use super::*;

  fn rpc() -> Trace {
    Trace::new(EventInfo::Rpc { method: "m".into() })
  }

  #[test]
  fn logs_stop_at_the_byte_cap_and_say_so() {
    let mut trace = rpc();
    let line = "x".repeat(1000);
    let now = SystemTime::now();
    for _ in 0..MAX_LOG_BYTES / 1000 {
      trace.log(Level::Log, &line, now);
    }
    assert!(!trace.truncated);
    // One more full line does not fit; a later short one is left out too.
    trace.log(Level::Warn, &line, now);
    trace.log(Level::Warn, "short", now);
    assert!(trace.truncated);
    assert_eq!(trace.logs.len(), MAX_LOG_BYTES / 1000);
    assert!(trace.logs.iter().all(|l| l.level == "log"));
  }

  #[test]
  fn a_fetch_start_copies_what_the_event_shows() {
    // Each also made again in the trace of the one before it.
    let mut spare: Option<Box<Trace>> = None;
    for uri in [
      "/",
      "/a/b?c=d&e",
      "/x?",
      "*",
      "https://example.com:8443/p?q=1",
      "http://a.test",
      "ftp://f.test/x",
      "example.com:443",
    ] {
      let parsed: http::Uri = uri.parse().unwrap();
      let mut headers = http::HeaderMap::new();
      headers.insert(http::header::USER_AGENT, "curl/8".parse().unwrap());
      headers.insert(http::header::AUTHORIZATION, "Bearer x".parse().unwrap());
      headers.insert(
        "x-real-ip",
        http::HeaderValue::from_bytes(b"\xff1").unwrap(),
      );
      // Given twice (and after the others): the first value is shown.
      headers.insert("x-forwarded-for", "192.0.2.1".parse().unwrap());
      headers.append("x-forwarded-for", "192.0.2.2".parse().unwrap());
      let start = FetchStart::new(&http::Method::PUT, &parsed, &headers, None);
      // The URL a worker sees: `Uri`'s text, after `http://localhost`
      // when it has no scheme.
      let want = if parsed.scheme().is_some() {
        parsed.to_string()
      } else {
        format!("http://localhost{parsed}")
      };
      assert_eq!(start.url(), want, "{uri}");
      assert_eq!(start.path(), parsed.path(), "{uri}");
      let shown: Vec<(&str, &[u8])> = start
        .shown_headers()
        .map(|(n, v)| (n.as_str(), v))
        .collect();
      assert_eq!(
        shown,
        vec![
          ("user-agent", &b"curl/8"[..]),
          ("x-forwarded-for", &b"192.0.2.1"[..]),
          ("x-real-ip", &b"\xff1"[..])
        ],
        "credentials are never kept"
      );
      let mut again = Trace::fetch(spare.take(), &http::Method::PUT, &parsed, &headers, None);
      assert_eq!(again.event.info(), Started::Fetch(start).info(), "{uri}");
      again.set_status(200);
      spare = Some(again);
    }
  }

  #[test]
  fn only_a_fetch_has_a_status() {
    let mut trace = rpc();
    trace.set_status(200);
    assert_eq!(trace.event.info(), EventInfo::Rpc { method: "m".into() });
    let mut fetch = Trace::new(Started::Fetch(FetchStart::new(
      &http::Method::GET,
      &"http://a.test/".parse().unwrap(),
      &http::HeaderMap::new(),
      None,
    )));
    fetch.set_status(204);
    assert!(matches!(
      fetch.event.into_info(),
      EventInfo::Fetch {
        status: Some(204),
        ..
      }
    ));
  }

  #[test]
  fn a_traceparent_is_parsed_and_bad_ones_start_a_new_trace() {
    let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
      parse_traceparent(good),
      Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1))
    );
    for bad in [
      &b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
      b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
      b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
      b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
      b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
      b"00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      b"garbage",
    ] {
      assert_eq!(
        parse_traceparent(bad),
        None,
        "{}",
        String::from_utf8_lossy(bad)
      );
    }
    let child = SpanContext::start(Some(good));
    assert_eq!(child.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_eq!(child.parent_id, 0x00f067aa0ba902b7);
    assert_ne!(child.span_id, child.parent_id);
    let root = SpanContext::start(Some(b"00-zz"));
    assert_eq!(root.parent_id, 0);
    assert_ne!(root.trace_id, child.trace_id);
  }

  #[test]
  fn a_subrequest_is_named_by_its_traceparent_and_timed() {
    let mut span = SpanContext::start(None);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let header = span.subrequest("GET", "http://b.test/", t0).unwrap();
    let (trace, id, flags) = parse_traceparent(header.as_bytes()).unwrap();
    assert_eq!((trace, flags), (span.trace_id, 1));
    assert_eq!(span.subrequests[0].span_id, id);
    span.subrequest_done(&header, 204, t0 + Duration::from_millis(7));
    assert_eq!(span.subrequests[0].status, 204);
    assert_eq!(span.subrequests[0].duration, Some(Duration::from_millis(7)));
  }
}
