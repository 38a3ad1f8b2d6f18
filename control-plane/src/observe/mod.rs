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

async fn write_forever(db: Db, mut rx: mpsc::Receiver<ToStore>) {
  while let Some(msg) = rx.recv().await {
    match msg {
      ToStore::Events(events) => {
        let db = db.clone();
        let stored = blocking(move || {
          db.store_traces(&events, &mut |rate| {
            filter::keep(rate, rand::random::<f64>())
          })
        })
        .await;
        if let Err(e) = stored {
          tracing::error!(error = %e, "cannot store trace events");
        }
      }
      ToStore::Flush(done) => {
        let _ = done.send(());
      }
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
