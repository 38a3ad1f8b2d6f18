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

/// Trace records written, as each invocation ends, into the wire form of a
/// [`PackedBatch`](isola_proto::trace::PackedBatch): every distinct
/// string (worker, version, URL, header value...) once in the table, each
/// event a row of positions, all of it already CBOR. The thread that ends
/// the invocation writes its row and gives the record's trace back to the
/// isolate at once, so its memory is reused for the next request while it
/// is still in that thread's caches; the shipper only frames the bytes.
/// Queuing the records for the shipper instead cost the request thread
/// more than writing them: a batch's worth of fresh memory per batch,
/// freed in bulk from another thread.
/// The bytes decode to the `PackedBatch` whose
/// [`unpack`](isola_proto::trace::PackedBatch::unpack) gives the events of
/// [`TraceRecord::into_event`].
#[derive(Default)]
pub struct PackedWriter {
  batch: PackedBytes,
  /// Strings of this batch by content, and URLs and addresses by what
  /// they are made from (so a repeated one is not formatted again).
  /// Cleared by the next [`Self::push`] after a [`Self::take`], so their
  /// keys are freed on the thread that made them.
  strings: FastMap<Box<str>>,
  urls: [FastMap<Box<[u8]>>; 2],
  addresses: FastMap<IpAddr>,
  /// The standard methods' and the outcomes' positions, by index: a
  /// hashed lookup of such a short string cost ~80 instructions a row.
  methods: [Option<u32>; METHODS.len()],
  outcomes: [Option<u32>; Outcome::ALL.len()],
  /// Every worker and version of this batch with their positions, by
  /// the names' addresses (the `Arc`s are held, so an address is not
  /// reused while it is a key): with many workers taking turns,
  /// neighbouring events rarely share them, and looking a version's
  /// 64-character hash up by its text cost ~180 instructions a name.
  names: std::collections::HashMap<NamesKey, Names, foldhash::fast::FixedState>,
  /// The last record's: under load on one worker, neighbouring events
  /// nearly always share them, and two compares find them.
  last: Option<(NamesKey, (u32, u32))>,
  /// The last row's URI (as [`FetchStart::uri_key`] gives it) and its
  /// URL's position, and its client's: under load neighbouring requests
  /// mostly share them, and a comparison costs less than a hashed lookup.
  last_uri: Vec<u8>,
  last_url: Option<(bool, u32)>,
  last_address: Option<(IpAddr, u32)>,
  /// The last row's start and its milliseconds since the epoch: a
  /// wake-up's requests share their start.
  last_start: Option<(SystemTime, i64)>,
  stale: bool,
}

/// A batch of [`PackedWriter`] rows, ready to frame.
#[derive(Debug, Default)]
pub struct PackedBytes {
  /// The table's CBOR text strings, in order.
  strings: Vec<u8>,
  string_count: u32,
  /// The rows, each a CBOR `PackedEvent`.
  events: Vec<u8>,
  event_count: u32,
}

/// The methods whose positions are kept by index; others are looked up.
const METHODS: [http::Method; 5] = [
  http::Method::GET,
  http::Method::POST,
  http::Method::HEAD,
  http::Method::PUT,
  http::Method::DELETE,
];

type FastMap<K> = std::collections::HashMap<K, u32, foldhash::fast::FixedState>;

/// A worker and version and their positions in the batch's strings.
type Names = (Arc<str>, Arc<str>, (u32, u32));
/// The addresses of a worker's and a version's names.
type NamesKey = (usize, usize);

impl PackedWriter {
  /// Writes `record`'s row.
  pub fn push(&mut self, record: &TraceRecord) {
    if std::mem::take(&mut self.stale) {
      self.strings.clear();
      self.urls.iter_mut().for_each(FastMap::clear);
      self.addresses.clear();
      self.methods = Default::default();
      self.outcomes = Default::default();
      self.last = None;
      self.last_url = None;
      self.last_address = None;
      self.names.clear();
    }
    let key = (
      Arc::as_ptr(&record.worker).cast::<u8>() as usize,
      Arc::as_ptr(&record.version).cast::<u8>() as usize,
    );
    let (worker, version) = match self.last {
      Some((last, at)) if last == key => at,
      _ => self.names_of(key, record),
    };
    // Positions first: adding a string writes to the table, not the row.
    let info = match &record.trace.event {
      Started::Fetch(f) => {
        let mut headers = [(0, 0); isola_ext::SHOWN_COUNT];
        let mut shown = 0;
        for (name, value) in f.shown_headers() {
          headers[shown] = (
            self.add(name.as_str()),
            self.add(&String::from_utf8_lossy(value)),
          );
          shown += 1;
        }
        Ok((
          self.method(&f.method),
          self.url(f),
          headers,
          shown,
          f.client.map(|ip| self.address(ip)),
          f.status,
        ))
      }
      // Not a fetch: written as it is.
      Started::Other(info) => Err(info),
    };
    let outcome = self.outcome(record.outcome);
    let start = self.epoch_ms(record.start);
    let trace = &record.trace;
    let out = &mut self.batch.events;
    let mut row = Row::new();
    row.head(cbor::ARRAY, 10);
    row.uint(worker.into());
    row.uint(version.into());
    row.int(start);
    row.head(cbor::MAP, 1);
    match info {
      Ok((method, url, headers, shown, client, status)) => {
        row.bytes(b"\x65Fetch");
        row.head(cbor::ARRAY, 5);
        row.uint(method.into());
        row.uint(url.into());
        row.head(cbor::ARRAY, shown as u64);
        for (n, v) in &headers[..shown] {
          row.head(cbor::ARRAY, 2);
          row.uint((*n).into());
          row.uint((*v).into());
        }
        match client {
          Some(c) => row.uint(c.into()),
          None => row.bytes(&[cbor::NULL]),
        }
        match status {
          Some(s) => row.uint(s.into()),
          None => row.bytes(&[cbor::NULL]),
        }
      }
      Err(info) => {
        row.bytes(b"\x65Other");
        out.extend_from_slice(row.take());
        cbor::serde(out, info);
      }
    }
    row.uint(outcome.into());
    row.uint(record.cpu_us);
    row.uint(record.wall_us);
    let truncated = if trace.truncated {
      cbor::TRUE
    } else {
      cbor::FALSE
    };
    if trace.logs.is_empty() && trace.exceptions.is_empty() {
      // Two empty arrays.
      row.bytes(&[0x80, 0x80, truncated]);
      out.extend_from_slice(row.take());
    } else {
      out.extend_from_slice(row.take());
      cbor::list(out, &trace.logs);
      cbor::list(out, &trace.exceptions);
      out.push(truncated);
    }
    self.batch.event_count += 1;
  }

  /// Rows written since the last [`Self::take`].
  pub fn len(&self) -> usize {
    self.batch.event_count as usize
  }

  pub fn is_empty(&self) -> bool {
    self.batch.event_count == 0
  }

  /// The rows written so far, as a batch; the writer starts a new one
  /// (with room for as many bytes).
  pub fn take(&mut self) -> PackedBytes {
    self.stale = true;
    let next = PackedBytes {
      strings: Vec::with_capacity(self.batch.strings.len()),
      events: Vec::with_capacity(self.batch.events.len()),
      ..PackedBytes::default()
    };
    std::mem::replace(&mut self.batch, next)
  }

  /// The positions of `record`'s worker and version (whose addresses are
  /// `key`), added on their first event of the batch; they become the
  /// last.
  fn names_of(&mut self, key: NamesKey, record: &TraceRecord) -> (u32, u32) {
    let at = match self.names.get(&key) {
      Some(&(_, _, at)) => at,
      None => {
        let at = (self.add(&record.worker), self.add(&record.version));
        let names = (record.worker.clone(), record.version.clone(), at);
        self.names.insert(key, names);
        at
      }
    };
    self.last = Some((key, at));
    at
  }

  fn add(&mut self, s: &str) -> u32 {
    if let Some(&i) = self.strings.get(s) {
      return i;
    }
    let i = self.batch.new_string(s);
    self.strings.insert(s.into(), i);
    i
  }

  fn method(&mut self, method: &http::Method) -> u32 {
    let Some(i) = METHODS.iter().position(|m| m == method) else {
      return self.add(method.as_str());
    };
    self.add_kept(|w| &mut w.methods[i], method.as_str())
  }

  fn outcome(&mut self, outcome: Outcome) -> u32 {
    let i = Outcome::ALL
      .iter()
      .position(|o| *o == outcome)
      .expect("ALL lists every outcome");
    self.add_kept(|w| &mut w.outcomes[i], outcome.tail_name())
  }

  /// `text`'s position, kept in the slot `slot` picks (cleared with the
  /// batch's strings).
  fn add_kept(&mut self, slot: impl Fn(&mut Self) -> &mut Option<u32>, text: &str) -> u32 {
    if let Some(at) = *slot(self) {
      return at;
    }
    let at = self.add(text);
    *slot(self) = Some(at);
    at
  }

  fn epoch_ms(&mut self, start: SystemTime) -> i64 {
    match self.last_start {
      Some((last, ms)) if last == start => ms,
      _ => {
        let ms = isola_ext::epoch_ms(start);
        self.last_start = Some((start, ms));
        ms
      }
    }
  }

  fn url(&mut self, f: &FetchStart) -> u32 {
    let (uri, absolute) = f.uri_key();
    if let Some((last_absolute, i)) = self.last_url {
      if last_absolute == absolute && self.last_uri == uri {
        return i;
      }
    }
    let i = match self.urls[usize::from(absolute)].get(uri) {
      Some(&i) => i,
      None => {
        let i = self.add(&f.url());
        self.urls[usize::from(absolute)].insert(uri.into(), i);
        i
      }
    };
    self.last_uri.clear();
    self.last_uri.extend_from_slice(uri);
    self.last_url = Some((absolute, i));
    i
  }

  fn address(&mut self, ip: IpAddr) -> u32 {
    if let Some((last, i)) = self.last_address {
      if last == ip {
        return i;
      }
    }
    let i = match self.addresses.get(&ip) {
      Some(&i) => i,
      None => {
        let i = self.add(&ip.to_string());
        self.addresses.insert(ip, i);
        i
      }
    };
    self.last_address = Some((ip, i));
    i
  }
}

impl PackedBytes {
  /// Rows it holds.
  pub fn len(&self) -> usize {
    self.event_count as usize
  }

  pub fn is_empty(&self) -> bool {
    self.event_count == 0
  }

  /// The bytes it holds.
  pub fn bytes(&self) -> usize {
    self.strings.len() + self.events.len()
  }

  fn new_string(&mut self, s: &str) -> u32 {
    cbor::text(&mut self.strings, s);
    self.string_count += 1;
    self.string_count - 1
  }

  /// Appends the CBOR of the `PackedBatch` of these rows, with `dropped`.
  pub fn write(&self, dropped: u64, out: &mut Vec<u8>) {
    out.reserve(self.bytes() + 48);
    cbor::head(out, cbor::MAP, 3);
    cbor::text(out, "strings");
    cbor::head(out, cbor::ARRAY, self.string_count.into());
    out.extend_from_slice(&self.strings);
    cbor::text(out, "events");
    cbor::head(out, cbor::ARRAY, self.event_count.into());
    out.extend_from_slice(&self.events);
    cbor::text(out, "dropped");
    cbor::uint(out, dropped);
  }
}

/// A row's items (all but its logs and exceptions, when it has any),
/// written on the stack and appended to the batch in one copy: written one
/// by one into the batch's `Vec`, each of its ~25 items paid a call and a
/// capacity check (`cbor::head` alone took 303 instructions of a `hello`
/// row; the row costs 175 fewer this way).
struct Row {
  buf: [u8; Row::MAX + 8],
  len: usize,
}

impl Row {
  /// The longest row: the array's head (1), worker and version (5 each),
  /// the timestamp (9), the map's head (1), `"Fetch"` (6), the fetch's
  /// array head (1), method and URL (5 each), the headers' array head (1)
  /// and every shown header (11 each), client (5), status (3), outcome
  /// (5), CPU and wall time (9 each), and the last 3 bytes.
  const MAX: usize =
    1 + 5 + 5 + 9 + 1 + 6 + 1 + 5 + 5 + 1 + isola_ext::SHOWN_COUNT * 11 + 5 + 3 + 5 + 9 + 9 + 3;

  fn new() -> Self {
    Self {
      // 8 bytes of slack: a head copies 9 bytes, however short it is.
      buf: [0; Row::MAX + 8],
      len: 0,
    }
  }

  /// A head, as [`cbor::head`] writes it: one fixed-size copy of 9
  /// bytes, of which the head's length is kept.
  #[inline(always)]
  fn head(&mut self, major: u8, n: u64) {
    let (bytes, len) = cbor::head_bytes(major, n);
    let at = self.len;
    self.buf[at..at + 9].copy_from_slice(&bytes);
    self.len = at + len;
  }

  #[inline(always)]
  fn uint(&mut self, n: u64) {
    self.head(0, n);
  }

  #[inline(always)]
  fn int(&mut self, n: i64) {
    match u64::try_from(n) {
      Ok(n) => self.head(0, n),
      // -1 - n, which is never negative here.
      Err(_) => self.head(1, !(n as u64)),
    }
  }

  #[inline(always)]
  fn bytes(&mut self, b: &[u8]) {
    self.buf[self.len..self.len + b.len()].copy_from_slice(b);
    self.len += b.len();
  }

  /// What it holds; it is empty again after.
  fn take(&mut self) -> &[u8] {
    let len = std::mem::take(&mut self.len);
    &self.buf[..len]
  }
}

/// The few CBOR items a row is made of (RFC 8949, shortest forms, as
/// ciborium writes them); the rare parts go through serde.
mod cbor {
  pub const MAP: u8 = 5;
  pub const ARRAY: u8 = 4;
  pub const NULL: u8 = 0xf6;
  pub const TRUE: u8 = 0xf5;
  pub const FALSE: u8 = 0xf4;

  /// A head in its shortest form (RFC 8949 §4.2.1): its first `.1` bytes.
  #[inline(always)]
  pub fn head_bytes(major: u8, n: u64) -> ([u8; 9], usize) {
    let m = major << 5;
    let (lead, size) = match n {
      0..24 => (m | n as u8, 0),
      24..=0xff => (m | 24, 1),
      0x100..=0xffff => (m | 25, 2),
      0x1_0000..=0xffff_ffff => (m | 26, 4),
      _ => (m | 27, 8),
    };
    let mut bytes = [lead; 9];
    // The argument's `size` bytes first, big-endian.
    let arg = if size == 0 { 0 } else { n << (64 - 8 * size) };
    bytes[1..].copy_from_slice(&arg.to_be_bytes());
    (bytes, 1 + size)
  }

  #[inline]
  pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let (bytes, len) = head_bytes(major, n);
    out.extend_from_slice(&bytes[..len]);
  }

  #[inline]
  pub fn uint(out: &mut Vec<u8>, n: u64) {
    head(out, 0, n);
  }

  pub fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
  }

  pub fn serde(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    ciborium::into_writer(value, out).expect("writing to a Vec cannot fail");
  }

  /// A list, nearly always empty (an event's logs and exceptions).
  pub fn list(out: &mut Vec<u8>, items: &[impl serde::Serialize]) {
    if items.is_empty() {
      head(out, ARRAY, 0);
    } else {
      serde(out, &items);
    }
  }
}

struct Sink {
  f: Box<dyn Fn(TraceRecord) -> Option<Box<Trace>> + Send + Sync>,
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
    Self::giving_back(false, move |record| {
      f(record);
      None
    })
  }

  /// Like [`TraceSink::new`], for a node that exports OpenTelemetry
  /// spans: every record then has a span ([`Trace::span`]) that continues
  /// the request's `traceparent`, with one child per outgoing `fetch()`,
  /// each of which carries a `traceparent` naming its span.
  pub fn with_spans(f: impl Fn(TraceRecord) + Send + Sync + 'static) -> Self {
    Self::giving_back(true, move |record| {
      f(record);
      None
    })
  }

  /// Like [`TraceSink::new`] (with spans if `spans`), for an `f` that
  /// gives back the trace of a record it did not keep: the worker makes
  /// its next request's trace in that memory ([`Trace::fetch`]).
  pub fn giving_back(
    spans: bool,
    f: impl Fn(TraceRecord) -> Option<Box<Trace>> + Send + Sync + 'static,
  ) -> Self {
    Self(Some(Arc::new(Sink {
      f: Box::new(f),
      spans,
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

  /// Hands `record` to the sink; its trace comes back if the sink did not
  /// keep it.
  pub fn emit(&self, record: TraceRecord) -> Option<Box<Trace>> {
    (self.0.as_ref()?.f)(record)
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

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_fetch_shows_selected_headers_and_the_client_address() {
    let request = http::Request::post("http://a.test/x")
      .header("user-agent", "curl/8")
      .header("authorization", "Bearer secret")
      .header("x-forwarded-for", "203.0.113.9")
      .body(())
      .unwrap();
    let (parts, ()) = request.into_parts();
    let isola_proto::trace::EventInfo::Fetch {
      method,
      headers,
      client_ip,
      ..
    } = Trace::fetch(
      None,
      &parts.method,
      &parts.uri,
      &parts.headers,
      Some("192.0.2.1".parse().unwrap()),
    )
    .event
    .into_info()
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
  fn integers_read_back_at_every_width() {
    for n in [
      0,
      23,
      24,
      255,
      256,
      65_535,
      65_536,
      u32::MAX.into(),
      u64::from(u32::MAX) + 1,
      u64::MAX,
    ] {
      let mut out = Vec::new();
      cbor::uint(&mut out, n);
      assert_eq!(ciborium::from_reader::<u64, _>(&out[..]).unwrap(), n);
      let mut row = Row::new();
      row.uint(n);
      assert_eq!(row.take(), out, "a row writes {n} as the batch does");
      let mut shortest = Vec::new();
      ciborium::into_writer(&n, &mut shortest).unwrap();
      assert_eq!(out, shortest, "{n} in its shortest form");
    }
    for n in [-1, -24, -25, -256, -257, i64::MIN, 5, i64::MAX] {
      let mut row = Row::new();
      row.int(n);
      let out = row.take();
      assert_eq!(ciborium::from_reader::<i64, _>(out).unwrap(), n);
      let mut shortest = Vec::new();
      ciborium::into_writer(&n, &mut shortest).unwrap();
      assert_eq!(out, shortest, "{n} in its shortest form");
    }
  }

  #[test]
  fn the_widest_row_fits_and_reads_back() {
    use ciborium::Value;
    let big = u64::from(u32::MAX);
    let mut row = Row::new();
    row.head(cbor::ARRAY, 10);
    row.uint(big);
    row.uint(big);
    row.int(i64::MIN);
    row.head(cbor::MAP, 1);
    row.bytes(b"\x65Fetch");
    row.head(cbor::ARRAY, 5);
    row.uint(big);
    row.uint(big);
    row.head(cbor::ARRAY, isola_ext::SHOWN_COUNT as u64);
    for _ in 0..isola_ext::SHOWN_COUNT {
      row.head(cbor::ARRAY, 2);
      row.uint(big);
      row.uint(big);
    }
    row.uint(big);
    row.uint(u16::MAX.into());
    row.uint(big);
    row.uint(u64::MAX);
    row.uint(u64::MAX);
    row.bytes(&[0x80, 0x80, cbor::TRUE]);
    let bytes = row.take().to_vec();
    assert_eq!(bytes.len(), Row::MAX);
    let value: Value = ciborium::from_reader(&bytes[..]).unwrap();
    let Value::Array(items) = value else {
      panic!("a row is an array: {value:?}");
    };
    assert_eq!(items.len(), 10);
    assert_eq!(items[2], Value::Integer(i64::MIN.into()));
    assert_eq!(items[6], Value::Integer(u64::MAX.into()));
    assert_eq!(items[9], Value::Bool(true));
    let Value::Map(event) = &items[3] else {
      panic!("the event is a map: {:?}", items[3]);
    };
    assert_eq!(event[0].0, Value::Text("Fetch".into()));
  }

  #[test]
  fn a_discarding_sink_says_so() {
    assert!(!TraceSink::discard().is_enabled());
    assert!(!TraceSink::default().is_enabled());
    assert!(TraceSink::new(|_| {}).is_enabled());
  }
}
