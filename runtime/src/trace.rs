//! Trace events: one per invocation, for live tail and invocation logs.
//! They are only built when the node's [`TraceSink`] keeps them, so a node
//! that discards them pays one branch per invocation and per log line.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

pub use isola_ext::FetchStart;
pub use isola_ext::SpanContext;
pub use isola_ext::Started;
pub use isola_ext::SubrequestSpan;
pub use isola_ext::Trace;
use isola_proto::trace::EventInfo;
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

/// Records written as a [`PackedBatch`](isola_proto::trace::PackedBatch)
/// straight from what the request threads kept: each distinct string
/// (worker, version, URL, header value...) once in the table, the events
/// as rows of positions. The bytes decode to the `PackedBatch` whose
/// [`unpack`](isola_proto::trace::PackedBatch::unpack) gives the events
/// of [`TraceRecord::into_event`]; no event is built on the way.
pub struct Packed<'a> {
  pub records: &'a [TraceRecord],
  pub dropped: u64,
}

impl serde::Serialize for Packed<'_> {
  fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut table = Table::default();
    let rows: Vec<Row<'_>> = self
      .records
      .iter()
      .map(|record| Row::new(record, &mut table))
      .collect();
    let mut s = serializer.serialize_struct("PackedBatch", 3)?;
    s.serialize_field("strings", &table.in_order())?;
    s.serialize_field("events", &rows)?;
    s.serialize_field("dropped", &self.dropped)?;
    s.end()
  }
}

type FastMap<K> = std::collections::HashMap<K, u32, foldhash::fast::FixedState>;

/// A batch's strings, each once, numbered as they first come. URLs and
/// addresses are also found by what they are made from, so a repeated one
/// is neither formatted nor allocated again.
#[derive(Default)]
struct Table<'a> {
  strings: FastMap<Cow<'a, str>>,
  urls: FastMap<(&'a [u8], bool)>,
  addresses: FastMap<IpAddr>,
}

impl<'a> Table<'a> {
  fn add(&mut self, s: impl Into<Cow<'a, str>>) -> u32 {
    let next = u32::try_from(self.strings.len()).expect("a batch holds far fewer strings");
    *self.strings.entry(s.into()).or_insert(next)
  }

  fn url(&mut self, f: &'a FetchStart) -> u32 {
    if let Some(&i) = self.urls.get(&f.uri_key()) {
      return i;
    }
    let i = self.add(f.url());
    self.urls.insert(f.uri_key(), i);
    i
  }

  fn address(&mut self, ip: IpAddr) -> u32 {
    if let Some(&i) = self.addresses.get(&ip) {
      return i;
    }
    let i = self.add(ip.to_string());
    self.addresses.insert(ip, i);
    i
  }

  fn in_order(&self) -> Vec<&str> {
    let mut strings = vec![""; self.strings.len()];
    for (s, &i) in &self.strings {
      strings[i as usize] = s;
    }
    strings
  }
}

/// A `PackedEvent`: positions, and the record for the rest.
struct Row<'a> {
  record: &'a TraceRecord,
  worker: u32,
  version: u32,
  outcome: u32,
  info: RowInfo<'a>,
}

/// A `PackedInfo`.
enum RowInfo<'a> {
  Fetch(FetchRow),
  Other(&'a EventInfo),
}

/// A `PackedFetch`.
struct FetchRow {
  method: u32,
  url: u32,
  headers: [(u32, u32); isola_ext::SHOWN_COUNT],
  shown: usize,
  client: Option<u32>,
  status: Option<u16>,
}

impl<'a> Row<'a> {
  fn new(record: &'a TraceRecord, table: &mut Table<'a>) -> Self {
    let info = match &record.trace.event {
      Started::Fetch(f) => {
        let mut headers = [(0, 0); isola_ext::SHOWN_COUNT];
        let mut shown = 0;
        for (name, value) in f.shown_headers() {
          headers[shown] = (
            table.add(name.as_str()),
            table.add(String::from_utf8_lossy(value)),
          );
          shown += 1;
        }
        RowInfo::Fetch(FetchRow {
          method: table.add(f.method.as_str()),
          url: table.url(f),
          headers,
          shown,
          client: f.client.map(|ip| table.address(ip)),
          status: f.status,
        })
      }
      Started::Other(info) => RowInfo::Other(info),
    };
    Self {
      record,
      worker: table.add(&*record.worker),
      version: table.add(&*record.version),
      outcome: table.add(record.outcome.tail_name()),
      info,
    }
  }
}

impl serde::Serialize for Row<'_> {
  fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeTupleStruct;
    let r = self.record;
    let mut s = serializer.serialize_tuple_struct("PackedEvent", 10)?;
    s.serialize_field(&self.worker)?;
    s.serialize_field(&self.version)?;
    s.serialize_field(&isola_ext::epoch_ms(r.start))?;
    s.serialize_field(&self.info)?;
    s.serialize_field(&self.outcome)?;
    s.serialize_field(&r.cpu_us)?;
    s.serialize_field(&r.wall_us)?;
    s.serialize_field(&r.trace.logs)?;
    s.serialize_field(&r.trace.exceptions)?;
    s.serialize_field(&r.trace.truncated)?;
    s.end()
  }
}

impl serde::Serialize for RowInfo<'_> {
  fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
    match self {
      Self::Fetch(f) => serializer.serialize_newtype_variant("PackedInfo", 0, "Fetch", f),
      Self::Other(info) => serializer.serialize_newtype_variant("PackedInfo", 1, "Other", info),
    }
  }
}

impl serde::Serialize for FetchRow {
  fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeTupleStruct;
    let mut s = serializer.serialize_tuple_struct("PackedFetch", 5)?;
    s.serialize_field(&self.method)?;
    s.serialize_field(&self.url)?;
    s.serialize_field(&self.headers[..self.shown])?;
    s.serialize_field(&self.client)?;
    s.serialize_field(&self.status)?;
    s.end()
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

/// What a fetch event records of its request: the method, a copy of the
/// URI and the shown headers' values, the address; no strings formatted.
pub(crate) fn fetch_start(parts: &http::request::Parts) -> Started {
  Started::Fetch(FetchStart::new(
    &parts.method,
    &parts.uri,
    &parts.headers,
    parts.extensions.get::<ClientAddr>().map(|a| a.0),
  ))
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
