//! Trace events on their way to the control plane (live tail, invocation
//! logs). Best effort, unlike usage: a bounded buffer filled from the
//! runtime's [`TraceSink`] without ever waiting, sampling when it is full
//! (keep 1 in N, N doubling while it stays full), and one shipper task that
//! sends what it holds every 200 ms or at 1,024 events, never retried. Every
//! event left out is counted (`isola_trace_events_dropped_total`, and the
//! next batch's `dropped`). The request's thread writes each event's row of
//! the packed batch ([`PackedWriter`]) and gives its trace back there; the
//! shipper compresses and frames the rows and, when the edge exports
//! OpenTelemetry spans, builds the spans of the records kept for them.
//! Measured with `bench/events_overhead.py`: queuing the records for the
//! shipper to write cost more on both threads (a batch of fresh memory on
//! the request thread, freed in bulk by the shipper) than writing them
//! where they end.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use isola_proto::msg::Call;
use isola_proto::msg::CallReply;
use isola_runtime::Metrics;
use isola_runtime::PackedBytes;
use isola_runtime::PackedWriter;
use isola_runtime::Trace;
use isola_runtime::TraceRecord;
use isola_runtime::TraceSink;

use crate::kv::Upstream;

/// Events the buffer holds at most.
pub const MAX_EVENTS: usize = 10_000;
/// Bytes of events (as [`TraceRecord::approx_bytes`] counts them) it
/// holds at most.
pub const MAX_BYTES: usize = 16 << 20;
/// A batch leaves once it has this many events...
pub const BATCH_EVENTS: usize = 1024;
/// ...or this long after the last one left.
pub const BATCH_EVERY: Duration = Duration::from_millis(200);
/// How long one batch may take to reach the control plane; past it the
/// batch counts as dropped, so a stalled control plane only costs events.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// The sampling never gets sparser than 1 in this many.
const MAX_EVERY: u64 = 1 << 16;

/// What the request threads fill and the shipper empties.
#[derive(Default)]
struct Held {
  /// The batch being written.
  open: PackedWriter,
  /// Batches of [`BATCH_EVENTS`], waiting for the shipper.
  full: Vec<PackedBytes>,
  /// Records kept for their spans.
  spans: Vec<TraceRecord>,
  /// Records taken since the shipper last emptied it, and their bytes.
  count: usize,
  bytes: usize,
}

/// The buffer's state, shared with the shipper: a push costs the request
/// thread one uncontended lock, no wake-up.
struct Inbox {
  held: Mutex<Held>,
  /// Dropped since the last batch left.
  dropped: AtomicU64,
  metrics: Metrics,
  /// Wakes the shipper when a full batch is waiting, or when the buffer
  /// is gone. Only then: a wake-up per event would cost the request
  /// thread a cross-thread signal each.
  wake: tokio::sync::Notify,
  /// Every [`TraceBuffer`] is gone: nothing more will come.
  closed: AtomicBool,
}

impl Inbox {
  fn lock(&self) -> MutexGuard<'_, Held> {
    // A panic while holding it leaves at worst a half-written row, which
    // the control plane refuses with its batch: best effort.
    self
      .held
      .lock()
      .unwrap_or_else(std::sync::PoisonError::into_inner)
  }

  fn drop_events(&self, n: u64) {
    self.dropped.fetch_add(n, Ordering::Relaxed);
    self.metrics.record_trace_dropped(n);
  }

  /// What it holds, taken out: the batches to send and the records kept
  /// for their spans.
  fn take(&self) -> (Vec<PackedBytes>, Vec<TraceRecord>) {
    let mut held = self.lock();
    let mut batches = std::mem::take(&mut held.full);
    if !held.open.is_empty() {
      batches.push(held.open.take());
    }
    held.count = 0;
    held.bytes = 0;
    (batches, std::mem::take(&mut held.spans))
  }
}

/// The edge's bounded buffer of trace events. Shared by every V8 thread.
pub struct TraceBuffer {
  inbox: Arc<Inbox>,
  capacity: usize,
  max_bytes: usize,
  /// Keep 1 in this many offered events (1: all of them).
  every: AtomicU64,
  offered: AtomicU64,
}

/// The buffer's other end, for the shipper.
pub struct TraceQueue(Arc<Inbox>);

impl TraceBuffer {
  pub fn new(capacity: usize, max_bytes: usize, metrics: Metrics) -> (Arc<Self>, TraceQueue) {
    let inbox = Arc::new(Inbox {
      held: Mutex::default(),
      dropped: AtomicU64::new(0),
      metrics,
      wake: tokio::sync::Notify::new(),
      closed: AtomicBool::new(false),
    });
    let buffer = Self {
      inbox: inbox.clone(),
      capacity: capacity.max(1),
      max_bytes,
      every: AtomicU64::new(1),
      offered: AtomicU64::new(0),
    };
    (Arc::new(buffer), TraceQueue(inbox))
  }

  /// Takes `record` if there is room and the sampling keeps it; never
  /// waits. `upstream`: its event goes to the control plane. A record
  /// with a span is kept for the shipper to export; any other's trace is
  /// given back, to the thread that made it, once its row is written.
  pub fn offer(&self, record: TraceRecord, upstream: bool) -> Option<Box<Trace>> {
    let inbox = &*self.inbox;
    let every = self.every.load(Ordering::Relaxed);
    if every > 1
      && !self
        .offered
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(every)
    {
      inbox.drop_events(1);
      return Some(record.trace);
    }
    let size = record.approx_bytes();
    let mut held = inbox.lock();
    if held.count >= self.capacity || held.bytes + size > self.max_bytes {
      drop(held);
      self
        .every
        .store((every * 2).min(MAX_EVERY), Ordering::Relaxed);
      inbox.drop_events(1);
      return Some(record.trace);
    }
    held.count += 1;
    held.bytes += size;
    let (count, bytes) = (held.count, held.bytes);
    if upstream {
      held.open.push(&record);
      if held.open.len() == BATCH_EVENTS {
        let batch = held.open.take();
        held.full.push(batch);
      }
    }
    let unkept = if record.trace.span.is_some() {
      held.spans.push(record);
      None
    } else {
      Some(record.trace)
    };
    drop(held);
    if count.is_multiple_of(BATCH_EVENTS) {
      inbox.wake.notify_one();
    }
    // Room again (the shipper caught up): keep everything.
    if every > 1 && count * 2 <= self.capacity && bytes * 2 <= self.max_bytes {
      self.every.store(1, Ordering::Relaxed);
    }
    unkept
  }

  /// Keep 1 in how many offered events, now.
  #[cfg(test)]
  fn sampling(&self) -> u64 {
    self.every.load(Ordering::Relaxed)
  }

  /// The sink that feeds this buffer with the events of the workers
  /// `shipped` accepts (the control plane's, not the config file's); with
  /// `spans`, every worker's records come (for their spans) and carry
  /// spans.
  pub fn sink(
    self: &Arc<Self>,
    shipped: impl Fn(&str) -> bool + Send + Sync + 'static,
    spans: bool,
  ) -> TraceSink {
    let buffer = self.clone();
    TraceSink::giving_back(spans, move |record| {
      let upstream = shipped(&record.worker);
      if !(upstream || spans) {
        return Some(record.trace);
      }
      buffer.offer(record, upstream)
    })
  }
}

impl Drop for TraceBuffer {
  /// The last sink is gone: the shipper sends what is left and ends.
  fn drop(&mut self) {
    self.inbox.closed.store(true, Ordering::Release);
    self.inbox.wake.notify_one();
  }
}

/// Sends the buffer's events in batches through `send` (true: the batch
/// went out) until the [`TraceBuffer`] is gone, then what it left. A
/// batch that does not go out is dropped and counted. With `telemetry`,
/// the spans of the records kept for them are queued for export too, from
/// edge `edge`.
pub async fn ship<F, Fut>(
  queue: TraceQueue,
  edge: String,
  telemetry: Option<Arc<crate::telemetry::Telemetry>>,
  mut send: F,
) where
  F: FnMut(Outgoing) -> Fut,
  Fut: Future<Output = bool>,
{
  let inbox = queue.0;
  let mut tick = tokio::time::interval(BATCH_EVERY);
  tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
  loop {
    // Every BATCH_EVERY, or sooner when a full batch waits; the events
    // are taken without waiting, so none wakes the shipper by itself.
    tokio::select! {
      _ = tick.tick() => {}
      () = inbox.wake.notified() => tick.reset(),
    }
    // Read before taking: whatever was pushed before the close is taken.
    let closed = inbox.closed.load(Ordering::Acquire);
    let (mut batches, spans) = inbox.take();
    if let Some(telemetry) = &telemetry {
      for record in &spans {
        telemetry.export(record, &edge);
      }
    }
    drop(spans);
    if batches.is_empty() && inbox.dropped.load(Ordering::Relaxed) > 0 {
      // Nothing to send but a count of what was lost.
      batches.push(PackedBytes::default());
    }
    for batch in batches {
      let dropped = inbox.dropped.swap(0, Ordering::Relaxed);
      let n = batch.len() as u64;
      if !send(Outgoing::new(&batch, dropped)).await {
        // Lost with its batch: its events, and the count it carried.
        inbox.drop_events(n);
        inbox.dropped.fetch_add(dropped, Ordering::Relaxed);
      }
    }
    if closed {
      if let Some(telemetry) = telemetry {
        // Sends what it holds; it waits for the receiver, so not here.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
      }
      return;
    }
  }
}

/// A batch as it leaves: the frame of its `Call::EventsLz4`.
pub struct Outgoing {
  pub frame: Vec<u8>,
}

impl Outgoing {
  fn new(batch: &PackedBytes, dropped: u64) -> Self {
    Self {
      frame: Call::events_frame(|out| batch.write(dropped, out)),
    }
  }

  /// The batch the control plane reads from these bytes, sent by `edge`.
  #[cfg(test)]
  fn into_batch(self, edge: &str) -> isola_proto::trace::TraceBatch {
    let mut decoder = isola_proto::codec::Decoder::new();
    decoder.push(&self.frame);
    let Some(Call::EventsLz4(bytes)) = decoder.decode().unwrap() else {
      panic!("not a Call::EventsLz4");
    };
    let through_serde = isola_proto::trace::PackedBatch::from_lz4(&bytes)
      .unwrap()
      .unpack(edge)
      .unwrap();
    let one_pass = isola_proto::trace::PackedBatch::unpack_lz4_in_one_pass(&bytes, edge)
      .expect("an edge's batch is read in one pass")
      .unwrap();
    assert_eq!(one_pass, through_serde);
    one_pass
  }
}

/// Sends one batch to the control plane through `upstream`: false if the
/// control plane is unreachable, does not answer in time, or refuses it.
pub async fn send_upstream(upstream: &Upstream, batch: Outgoing) -> bool {
  match tokio::time::timeout(SEND_TIMEOUT, upstream.call_frame(&batch.frame)).await {
    Ok(Some(Ok(CallReply::Traced))) => true,
    Ok(Some(Ok(other))) => {
      tracing::debug!(?other, "the control plane refused trace events");
      false
    }
    Ok(Some(Err(e))) => {
      tracing::debug!(error = %e, "trace events did not reach the control plane");
      false
    }
    Ok(None) | Err(_) => false,
  }
}

#[cfg(test)]
mod tests {
  use isola_proto::trace::EventInfo;

  use super::*;

  fn event(worker: &str) -> TraceRecord {
    TraceRecord {
      worker: worker.into(),
      version: "v1".into(),
      start: std::time::UNIX_EPOCH + Duration::from_millis(1),
      outcome: isola_runtime::Outcome::Ok,
      cpu_us: 1,
      wall_us: 2,
      trace: Box::new(isola_runtime::Trace::new(EventInfo::Rpc {
        method: "m".into(),
      })),
    }
  }

  impl TraceQueue {
    /// What the buffer holds now, taken out of it: the events going
    /// upstream, and the records kept for their spans.
    fn take(&self) -> (Vec<isola_proto::trace::TraceEvent>, Vec<TraceRecord>) {
      let (batches, spans) = self.0.take();
      let events = batches
        .iter()
        .flat_map(|b| Outgoing::new(b, 0).into_batch("e").events)
        .collect();
      (events, spans)
    }
  }

  fn dropped_metric(metrics: &Metrics) -> String {
    metrics
      .encode(None)
      .lines()
      .find(|l| l.starts_with("isola_trace_events_dropped_total"))
      .unwrap_or_default()
      .to_string()
  }

  #[test]
  fn a_full_buffer_samples_and_counts_what_it_drops() {
    let metrics = Metrics::new();
    let (buffer, queue) = TraceBuffer::new(4, MAX_BYTES, metrics.clone());
    for _ in 0..4 {
      buffer.offer(event("a"), true);
    }
    assert_eq!(buffer.sampling(), 1);
    // Full: the next one is dropped and sampling starts at 1 in 2.
    buffer.offer(event("a"), true);
    assert_eq!(buffer.sampling(), 2);
    // Of the next four, the first is tried (and dropped: still full, so N
    // doubles again); the other three are sampled out.
    for _ in 0..4 {
      buffer.offer(event("a"), true);
    }
    assert_eq!(buffer.sampling(), 4);
    assert_eq!(buffer.inbox.dropped.load(Ordering::Relaxed), 5);
    assert_eq!(
      dropped_metric(&metrics),
      "isola_trace_events_dropped_total 5"
    );
    // Drained: the first event the sampling keeps finds room and ends it.
    queue.take();
    buffer.offer(event("a"), true);
    assert_eq!(buffer.sampling(), 1);
    let (held, _) = queue.take();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].worker, "a");
  }

  #[test]
  fn the_byte_bound_holds_too() {
    let (buffer, _queue) = TraceBuffer::new(100, 3 * event("a").approx_bytes(), Metrics::new());
    for _ in 0..4 {
      buffer.offer(event("a"), true);
    }
    assert_eq!(buffer.inbox.dropped.load(Ordering::Relaxed), 1);
  }

  #[test]
  fn only_the_workers_the_filter_accepts_are_buffered() {
    let (buffer, queue) = TraceBuffer::new(10, MAX_BYTES, Metrics::new());
    let sink = buffer.sink(|worker| worker != "static", false);
    assert!(!sink.spans());
    sink.emit(event("static"));
    sink.emit(event("shipped"));
    let (held, spans) = queue.take();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].worker, "shipped");
    assert!(spans.is_empty());
  }

  #[test]
  fn with_spans_every_worker_comes_and_only_the_shipped_go_upstream() {
    let (buffer, queue) = TraceBuffer::new(10, MAX_BYTES, Metrics::new());
    let sink = buffer.sink(|worker| worker != "static", true);
    assert!(sink.spans());
    for worker in ["static", "shipped"] {
      let mut record = event(worker);
      record.trace.span = Some(isola_runtime::SpanContext::start(None));
      sink.emit(record);
    }
    let (events, spans) = queue.take();
    let events: Vec<String> = events.into_iter().map(|e| e.worker).collect();
    assert_eq!(events, vec!["shipped".to_string()]);
    let spans: Vec<String> = spans.into_iter().map(|r| r.worker.to_string()).collect();
    assert_eq!(
      spans,
      vec!["static".to_string(), "shipped".to_string()],
      "every record with a span is kept for export"
    );
  }

  /// A fetch with every part an event shows, and a log line, an
  /// exception and a cut log.
  fn full_fetch() -> TraceRecord {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::USER_AGENT, "curl/8".parse().unwrap());
    // Not UTF-8: shown lossily.
    headers.insert(
      "x-forwarded-for",
      http::HeaderValue::from_bytes(b"caf\xc3\xa9 \xff").unwrap(),
    );
    let mut start = isola_runtime::FetchStart::new(
      &http::Method::PATCH,
      &"/a/b?c=d".parse().unwrap(),
      &headers,
      Some("2001:db8::1".parse().unwrap()),
    );
    start.status = Some(418);
    let mut trace = isola_runtime::Trace::new(isola_runtime::Started::Fetch(start));
    trace.logs.push(isola_proto::trace::LogLine {
      level: "warn".into(),
      message: "h\u{e9}llo".into(),
      timestamp: 7,
    });
    trace.exceptions.push(isola_proto::trace::ExceptionInfo {
      name: "TypeError".into(),
      message: "x is not a function".into(),
      stack: Some("at f (main.js:1:1)".into()),
      timestamp: 8,
    });
    trace.truncated = true;
    TraceRecord {
      outcome: isola_runtime::Outcome::Exception,
      trace: Box::new(trace),
      ..event("full")
    }
  }

  fn records() -> Vec<TraceRecord> {
    let mut absolute = full_fetch();
    absolute.trace.event = isola_runtime::Started::Fetch(isola_runtime::FetchStart::new(
      &http::Method::GET,
      &"https://example.com/x".parse().unwrap(),
      &http::HeaderMap::new(),
      None,
    ));
    vec![full_fetch(), absolute, event("rpc")]
  }

  /// `records` as the control plane reads them from a frame the buffer's
  /// writer wrote, with `dropped`.
  fn shipped(records: &[TraceRecord], dropped: u64) -> Outgoing {
    let mut writer = PackedWriter::default();
    for record in records {
      writer.push(record);
    }
    Outgoing::new(&writer.take(), dropped)
  }

  /// The events observers should see of `records`, from edge `edge`.
  fn events(records: Vec<TraceRecord>, edge: &str) -> Vec<isola_proto::trace::TraceEvent> {
    records
      .into_iter()
      .map(|r| {
        let mut event = r.into_event();
        event.edge = edge.to_string();
        event
      })
      .collect()
  }

  #[test]
  fn a_batch_leaves_packed_and_reads_back_as_the_events_it_holds() {
    for (records, dropped) in [(records(), 3), (Vec::new(), 0)] {
      let batch = shipped(&records, dropped).into_batch("edge-1");
      assert_eq!(batch.dropped, dropped);
      assert_eq!(batch.events, events(records, "edge-1"));
    }
  }

  #[test]
  fn a_writer_taken_from_starts_a_new_table() {
    let mut writer = PackedWriter::default();
    writer.push(&full_fetch());
    let first = Outgoing::new(&writer.take(), 0);
    let second_records = records();
    for record in &second_records {
      writer.push(record);
    }
    assert_eq!(writer.len(), 3);
    let second = Outgoing::new(&writer.take(), 0);
    assert!(writer.is_empty());
    assert_eq!(
      first.into_batch("e").events,
      events(vec![full_fetch()], "e")
    );
    assert_eq!(second.into_batch("e").events, events(second_records, "e"));
  }

  #[test]
  fn workers_taking_turns_keep_their_names_in_a_batch_and_the_next() {
    // Names shared by their records, as the pool's are, in turns; then a
    // name again in another allocation of the same text.
    let names: Vec<(Arc<str>, Arc<str>)> = (0..3)
      .map(|i| (format!("worker-{i}").into(), format!("{i:064x}").into()))
      .collect();
    let mut writer = PackedWriter::default();
    for round in 0..2 {
      let mut want = Vec::new();
      for i in 0..7 {
        let mut record = full_fetch();
        (record.worker, record.version) = names[(i + round) % 3].clone();
        writer.push(&record);
        want.push(record);
      }
      let mut copy = full_fetch();
      copy.worker = names[1].0.to_string().into();
      copy.version = names[1].1.to_string().into();
      writer.push(&copy);
      want.push(copy);
      let batch = Outgoing::new(&writer.take(), 0).into_batch("e");
      assert_eq!(batch.events, events(want, "e"), "batch {round}");
    }
  }

  #[test]
  fn urls_addresses_and_starts_repeated_or_alternating_read_back() {
    let fetch = |uri: &str, client: Option<&str>| {
      let mut record = full_fetch();
      record.trace.event = isola_runtime::Started::Fetch(isola_runtime::FetchStart::new(
        &http::Method::GET,
        &uri.parse().unwrap(),
        &http::HeaderMap::new(),
        client.map(|c| c.parse().unwrap()),
      ));
      record
    };
    let (a, b) = (Some("192.0.2.1"), Some("2001:db8::2"));
    let mut writer = PackedWriter::default();
    for round in 0..2 {
      let mut want = vec![
        fetch("/x", a),
        fetch("/x", a),
        fetch("/y", b),
        fetch("/x", None),
        fetch("http://h.test/x", a),
        fetch("/x", b),
        fetch("/y?q", a),
        fetch("/y", a),
      ];
      // Starts shared by neighbours, then one again after another.
      for (i, record) in want.iter_mut().enumerate() {
        record.start = std::time::UNIX_EPOCH + Duration::from_millis([5, 5, 9, 5][i % 4]);
      }
      for record in &want {
        writer.push(record);
      }
      let batch = Outgoing::new(&writer.take(), 0).into_batch("e");
      assert_eq!(batch.events, events(want, "e"), "batch {round}");
    }
  }

  #[test]
  fn packed_events_are_a_fraction_of_the_plain_ones() {
    // A full batch of requests to a few workers and URLs, as under load.
    let records = || {
      (0..BATCH_EVENTS)
        .map(|i| {
          let mut r = full_fetch();
          r.worker = format!("worker-{}", i % 4).into();
          r.version = format!("{:064x}", i % 4).into();
          r.trace.logs.clear();
          r.trace.exceptions.clear();
          r
        })
        .collect::<Vec<_>>()
    };
    let packed = shipped(&records(), 0).frame;
    let plain = isola_proto::codec::encode(&isola_proto::msg::Call::Trace(
      isola_proto::trace::TraceBatch {
        events: events(records(), "edge-1"),
        dropped: 0,
      },
    ));
    let per_event = |bytes: usize| bytes / BATCH_EVENTS;
    assert!(
      packed.len() * 5 < plain.len(),
      "{} bytes an event packed, {} plain",
      per_event(packed.len()),
      per_event(plain.len())
    );
  }

  #[tokio::test]
  async fn batches_carry_what_was_lost_before_them() {
    let (buffer, queue) = TraceBuffer::new(4 * BATCH_EVENTS, MAX_BYTES, Metrics::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut first = true;
    let shipper = tokio::spawn(ship(queue, "edge-1".into(), None, move |batch| {
      // The first batch does not go out (no control plane).
      let delivered = !std::mem::replace(&mut first, false);
      let _ = tx.send((batch.into_batch("edge-1"), delivered));
      async move { delivered }
    }));
    for _ in 0..BATCH_EVENTS {
      buffer.offer(event("a"), true);
    }
    let (lost, delivered) = rx.recv().await.unwrap();
    assert!(!delivered);
    assert_eq!(
      lost.events.len(),
      BATCH_EVENTS,
      "a full batch leaves at once"
    );
    buffer.offer(event("b"), true);
    let (next, _) = rx.recv().await.unwrap();
    assert_eq!(next.events.len(), 1);
    assert_eq!(next.events[0].worker, "b");
    assert_eq!(next.dropped, BATCH_EVENTS as u64);
    // Every buffer gone: the shipper sends what is left, and ends.
    buffer.offer(event("c"), true);
    drop(buffer);
    shipper.await.unwrap();
    let (last, delivered) = rx.recv().await.unwrap();
    assert!(delivered);
    assert_eq!(last.events.len(), 1);
    assert_eq!(last.events[0].worker, "c");
  }
}
