//! Observability: the trace events edges send (one per invocation) go
//! through the hub, [`Traces`], to live tails, the invocation log store and
//! the analytics sketches, and are counted for Prometheus.
//!
//! Events are best effort end to end: an edge's call is answered at once,
//! a tail that cannot keep up is cut off, and a store that falls behind
//! drops (and counts) batches rather than slowing the edges.

pub mod analytics;
pub mod fanout;
pub mod filter;
pub mod message;
pub mod metrics;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::time::Duration;

use isola_proto::msg::UsageBatch;
use isola_proto::trace::TraceBatch;
use isola_proto::trace::TraceEvent;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use self::fanout::Fanout;
use self::fanout::TailReceiver;
use self::filter::TailFilter;
use self::metrics::Metrics;
use crate::db::blocking;
use crate::db::Db;

/// Messages a tail may have waiting before it is cut off.
pub const TAIL_QUEUE: usize = 1024;

/// Batches waiting for the log store before new ones are dropped.
pub const STORE_QUEUE: usize = 256;

/// How often old invocation logs and sketches are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How long the log store's writer gathers batches, from the first, before
/// it stores them in one transaction. Each transaction reads and rewrites
/// the minute's sketch of every worker in it and syncs to disk, so storing
/// each edge's batch on its own cost the control plane more CPU per event
/// than the edge spent serving it. Logs become searchable this much later;
/// live tails get events at once.
pub const STORE_EVERY: Duration = Duration::from_secs(1);

/// Events gathered at most: past it they are stored at once.
pub const STORE_EVENTS: usize = 16_384;

enum ToStore {
  Events(Vec<TraceEvent>),
  Flush(oneshot::Sender<()>),
}

/// The hub. Cheap to clone.
#[derive(Clone)]
pub struct Traces {
  inner: Arc<Inner>,
}

struct Inner {
  fanout: Mutex<Fanout>,
  metrics: Metrics,
  /// To the log store's writer; `None`: nothing is stored.
  store: Option<mpsc::Sender<ToStore>>,
}

impl std::fmt::Debug for Traces {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("Traces(..)")
  }
}

impl Traces {
  /// Tails and counters only: events are not stored.
  pub fn detached() -> Self {
    Self::with_store(None)
  }

  fn with_store(store: Option<mpsc::Sender<ToStore>>) -> Self {
    Self {
      inner: Arc::new(Inner {
        fanout: Mutex::new(Fanout::default()),
        metrics: Metrics::default(),
        store,
      }),
    }
  }

  /// The hub with its log store writer and the task pruning old logs
  /// (both on the current tokio runtime).
  pub fn start(db: Db) -> Self {
    let (tx, rx) = mpsc::channel(STORE_QUEUE);
    tokio::spawn(write_forever(db.clone(), rx));
    tokio::spawn(prune_forever(db));
    Self::with_store(Some(tx))
  }

  fn fanout(&self) -> MutexGuard<'_, Fanout> {
    self
      .inner
      .fanout
      .lock()
      .unwrap_or_else(PoisonError::into_inner)
  }

  /// Takes a batch from edge `edge`. Never waits.
  pub fn ingest(&self, edge: &str, batch: TraceBatch) {
    let TraceBatch { events, dropped } = batch;
    let metrics = &self.inner.metrics;
    metrics.batch(edge, &events, dropped);
    {
      let mut fanout = self.fanout();
      let mut cut_off = 0;
      let mut uniform = rand::random::<f64>;
      for event in &events {
        if fanout.watched(&event.worker) {
          cut_off += fanout.publish(event, &mut uniform).cut_off;
        }
      }
      if cut_off > 0 {
        metrics.tails_cut_off.inc_by(cut_off as u64);
        metrics.tails_open.set(fanout.open_count() as i64);
      }
    }
    let Some(store) = &self.inner.store else {
      return;
    };
    if events.is_empty() {
      return;
    }
    if let Err(mpsc::error::TrySendError::Full(ToStore::Events(events))) =
      store.try_send(ToStore::Events(events))
    {
      for e in &events {
        metrics
          .store_dropped
          .get_or_create(&vec![("worker".into(), e.worker.clone())])
          .inc();
      }
      tracing::warn!(
        edge,
        events = events.len(),
        "the invocation log store is behind; dropped a trace batch"
      );
    }
  }

  /// Counts a usage batch the store took for the first time.
  pub fn usage_stored(&self, batch: &UsageBatch) {
    self.inner.metrics.usage(batch);
  }

  /// Opens a live tail of `worker` (its edge name); it closes when the
  /// returned [`Tail`] is dropped.
  pub fn tail(&self, worker: &str, filter: TailFilter) -> Tail {
    let mut fanout = self.fanout();
    let receiver = fanout.open(worker, filter, TAIL_QUEUE);
    self
      .inner
      .metrics
      .tails_open
      .set(fanout.open_count() as i64);
    Tail {
      hub: self.clone(),
      worker: worker.to_string(),
      receiver,
    }
  }

  /// Waits until every batch ingested before the call is stored.
  pub async fn flush(&self) {
    if let Some(store) = &self.inner.store {
      let (tx, rx) = oneshot::channel();
      if store.send(ToStore::Flush(tx)).await.is_ok() {
        let _ = rx.await;
      }
    }
  }

  /// The Prometheus text exposition.
  pub fn metrics(&self) -> String {
    self.inner.metrics.encode()
  }
}

/// A live tail; dropping it closes it.
#[derive(Debug)]
pub struct Tail {
  hub: Traces,
  worker: String,
  pub receiver: TailReceiver,
}

impl Drop for Tail {
  fn drop(&mut self) {
    let mut fanout = self.hub.fanout();
    fanout.close(&self.worker, self.receiver.id);
    self
      .hub
      .inner
      .metrics
      .tails_open
      .set(fanout.open_count() as i64);
  }
}

/// What the writer has gathered for one transaction.
#[derive(Default)]
struct Gathered {
  /// The batches as they came: appending them to one vector moved every
  /// event gathered so far each time it grew.
  batches: Vec<Vec<TraceEvent>>,
  events: usize,
  /// Flushes to answer once the events are stored.
  flushes: Vec<oneshot::Sender<()>>,
}

impl Gathered {
  fn take(&mut self, msg: ToStore) {
    match msg {
      ToStore::Events(events) => {
        self.events += events.len();
        self.batches.push(events);
      }
      ToStore::Flush(done) => self.flushes.push(done),
    }
  }

  /// Store now: a flush waits, or enough events are gathered.
  fn full(&self) -> bool {
    !self.flushes.is_empty() || self.events >= STORE_EVENTS
  }
}

/// The log store's writer: gathers what arrives for [`STORE_EVERY`] (or
/// until [`Gathered::full`]) from the first message, then stores it.
async fn write_forever(db: Db, mut rx: mpsc::Receiver<ToStore>) {
  let mut open = true;
  while open {
    let mut gathered = Gathered::default();
    match rx.recv().await {
      Some(msg) => gathered.take(msg),
      None => return,
    }
    let deadline = tokio::time::Instant::now() + STORE_EVERY;
    while !gathered.full() {
      tokio::select! {
        msg = rx.recv() => match msg {
          Some(msg) => gathered.take(msg),
          None => {
            open = false;
            break;
          }
        },
        () = tokio::time::sleep_until(deadline) => break,
      }
    }
    let Gathered {
      batches,
      events,
      flushes,
    } = gathered;
    if events > 0 {
      let db = db.clone();
      let stored = blocking(move || {
        db.store_traces(batches.iter().flatten(), &mut |rate| {
          filter::keep(rate, rand::random::<f64>())
        })
      })
      .await;
      if let Err(e) = stored {
        tracing::error!(error = %e, "cannot store trace events");
      }
    }
    for done in flushes {
      let _ = done.send(());
    }
  }
}

async fn prune_forever(db: Db) {
  let mut every = tokio::time::interval(PRUNE_EVERY);
  loop {
    every.tick().await;
    let db = db.clone();
    match blocking(move || db.prune_traces(now_ms())).await {
      Ok((logs, minutes)) if logs + minutes > 0 => {
        tracing::info!(logs, minutes, "pruned old invocation logs and analytics")
      }
      Ok(_) => {}
      Err(e) => tracing::error!(error = %e, "cannot prune invocation logs"),
    }
  }
}

/// ms since the Unix epoch.
pub fn now_ms() -> i64 {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::db::testing::open;
  use crate::db::testing::upload;
  use crate::db::LogFilter;
  use crate::observe::filter::tests::fetch;

  fn batch(n: usize) -> TraceBatch {
    TraceBatch {
      events: vec![fetch("ok", "GET", "https://a.test/"); n],
      dropped: 0,
    }
  }

  #[test]
  fn a_flush_or_enough_events_end_the_gathering() {
    let mut gathered = Gathered::default();
    gathered.take(ToStore::Events(batch(3).events));
    gathered.take(ToStore::Events(batch(2).events));
    assert_eq!(gathered.events, 5);
    assert_eq!(gathered.batches.len(), 2);
    assert!(!gathered.full());
    gathered.take(ToStore::Events(batch(STORE_EVENTS - 5).events));
    assert!(gathered.full());

    let mut gathered = Gathered::default();
    gathered.take(ToStore::Flush(oneshot::channel().0));
    assert!(gathered.full());
  }

  #[tokio::test]
  async fn batches_are_stored_together_a_second_after_the_first_or_at_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    let stored = || {
      let all = LogFilter {
        limit: 1000,
        ..LogFilter::default()
      };
      db.logs("acme", "api", &all).unwrap().logs.len()
    };
    let traces = Traces::start(db.clone());
    let start = tokio::time::Instant::now();
    traces.ingest("edge-0", batch(3));
    traces.ingest("edge-1", batch(2));
    tokio::time::sleep(STORE_EVERY / 2).await;
    assert_eq!(stored(), 0, "stored before the second was over");
    while stored() < 5 && start.elapsed() < STORE_EVERY * 10 {
      tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored(), 5);
    assert!(start.elapsed() >= STORE_EVERY);

    let start = tokio::time::Instant::now();
    traces.ingest("edge-0", batch(2));
    traces.flush().await;
    assert_eq!(stored(), 7);
    assert!(
      start.elapsed() < STORE_EVERY,
      "a flush waited for the second"
    );
  }
}
