//! The one IO loop around the [`Dispatcher`]: stores messages, leases and
//! settles batches in the database, and hands batches to edges.

use std::time::Duration;

use isola_proto::names::split_edge_worker_name;
use isola_proto::queue::check_send;
use isola_proto::queue::Batch;
use isola_proto::queue::BatchReport;
use isola_proto::queue::NewMessage;
use isola_proto::queue::QueueError;
use isola_proto::queue::SendCall;
use isola_proto::queue::SendReply;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::Action;
use super::Config;
use super::Consumer;
use super::Dispatcher;
use crate::db;
use crate::db::blocking;
use crate::db::queue_key;
use crate::db::Db;
use crate::fleet::Fleet;
use crate::fleet::Work;
use crate::lease::Leading;
use crate::scheduler::driver::Clock;
use crate::scheduler::Millis;

enum Msg {
  Stored {
    queue: String,
    visible_at: Vec<Millis>,
  },
  Accepted(u64),
  Done(BatchReport, oneshot::Sender<()>),
  Reload,
}

/// How the API and the edge connections reach the queues. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
  tx: mpsc::UnboundedSender<Msg>,
  db: Db,
  clock: Clock,
}

impl Handle {
  /// Queues whose messages are stored and never delivered, for tests of
  /// the API alone.
  pub fn detached(db: Db) -> Self {
    Self {
      tx: mpsc::unbounded_channel().0,
      db,
      clock: Clock::real(),
    }
  }

  /// Stores `messages` in `account`'s queue `queue`, durably, then lets the
  /// dispatcher know. Each message keeps the id given, so a repeated send
  /// stores nothing twice.
  pub async fn send(
    &self,
    account: &str,
    queue: &str,
    messages: Vec<(String, NewMessage)>,
  ) -> db::Result<()> {
    let now = self.clock.now();
    let (db, a, q) = (self.db.clone(), account.to_string(), queue.to_string());
    let visible_at = blocking(move || db.enqueue(&a, &q, &messages, now)).await?;
    let _ = self.tx.send(Msg::Stored {
      queue: queue_key(account, queue),
      visible_at,
    });
    Ok(())
  }

  /// Serves an edge's producer call for one of its workers.
  pub async fn call(&self, call: SendCall, ids: Vec<String>) -> SendReply {
    let Some((account, _)) = split_edge_worker_name(&call.worker) else {
      return SendReply::Refused(QueueError(format!("unknown worker {:?}", call.worker)));
    };
    if ids.len() != call.messages.len() {
      return SendReply::Refused(QueueError("every message needs one id".into()));
    }
    if let Err(e) = check_send(&call.messages) {
      return SendReply::Refused(e);
    }
    let messages = ids.into_iter().zip(call.messages).collect();
    match self.send(account, &call.queue, messages).await {
      Ok(()) => SendReply::Sent,
      Err(db::Error::NotFound(_)) => SendReply::Refused(QueueError(format!(
        "queue {:?} does not exist in this account; create it first",
        call.queue
      ))),
      Err(e) => {
        tracing::error!(error = %e, "cannot store queue messages");
        SendReply::Failed
      }
    }
  }

  pub fn accepted(&self, id: u64) {
    let _ = self.tx.send(Msg::Accepted(id));
  }

  /// Hands over a consumer's report; returns once it is stored.
  pub async fn report(&self, report: BatchReport) {
    let (done, wait) = oneshot::channel();
    if self.tx.send(Msg::Done(report, done)).is_ok() {
      let _ = wait.await;
    }
  }

  /// Queues or consumers changed.
  pub fn reload(&self) {
    let _ = self.tx.send(Msg::Reload);
  }

  pub fn clock(&self) -> Clock {
    self.clock
  }
}

/// Starts the loop. While `leading` says so (always, on one SQLite file)
/// it delivers: every queue's backlog is loaded when leadership starts. A
/// standby stores what edges send and settles the reports they bring.
pub async fn start(
  db: Db,
  fleet: Fleet,
  clock: Clock,
  config: Config,
  leading: Leading,
) -> db::Result<Handle> {
  let first = if *leading.borrow() {
    Some(dispatcher(&db, &config, clock).await?)
  } else {
    None
  };
  let (tx, rx) = mpsc::unbounded_channel();
  let driver = Driver {
    db: db.clone(),
    fleet,
    clock,
    config,
    rx,
    leading,
  };
  tokio::spawn(crate::lease::supervise(driver, first));
  Ok(Handle { tx, db, clock })
}

async fn dispatcher(db: &Db, config: &Config, clock: Clock) -> db::Result<Dispatcher> {
  let last = {
    let db = db.clone();
    blocking(move || db.last_batch_id()).await?
  };
  let mut dispatcher = Dispatcher::new(config.clone(), last);
  load(&mut dispatcher, db, clock.now()).await?;
  Ok(dispatcher)
}

/// The queues' side of [`crate::lease::supervise`].
struct Driver {
  db: Db,
  fleet: Fleet,
  clock: Clock,
  config: Config,
  rx: mpsc::UnboundedReceiver<Msg>,
  leading: Leading,
}

impl crate::lease::OnceOnly for Driver {
  type State = Dispatcher;
  const WORK: &'static str = "queue deliveries";

  type Msg = Msg;

  fn channels(&mut self) -> (&mut mpsc::UnboundedReceiver<Msg>, &mut Leading) {
    (&mut self.rx, &mut self.leading)
  }

  /// Reports are settled in the database (as the leader would: the batch's
  /// messages are acked, retried or dead-lettered) and answered.
  async fn standing_by(&mut self, msg: Msg) {
    match msg {
      Msg::Done(report, done) => {
        if !report.unavailable {
          let (db, id, now) = (self.db.clone(), report.id, self.clock.now());
          let settled = blocking(move || match db.lease_queue(id)? {
            Some(key) => db.settle(&key, &report, now).map(|_| ()),
            None => Ok(()),
          })
          .await;
          if let Err(e) = settled {
            tracing::error!(error = %e, batch = id, "queues: cannot settle a batch");
          }
        }
        let _ = done.send(());
      }
      // Loaded whole when leadership starts.
      Msg::Stored { .. } | Msg::Accepted(_) | Msg::Reload => {}
    }
  }

  async fn load(&mut self) -> db::Result<Dispatcher> {
    dispatcher(&self.db, &self.config, self.clock).await
  }

  async fn run(&mut self, dispatcher: Dispatcher) -> bool {
    run(
      dispatcher,
      &self.db,
      &self.fleet,
      self.clock,
      &mut self.rx,
      &mut self.leading,
    )
    .await
  }
}

async fn load(dispatcher: &mut Dispatcher, db: &Db, now: Millis) -> db::Result<()> {
  let db2 = db.clone();
  let backlogs = blocking(move || db2.queue_backlogs()).await?;
  for q in backlogs {
    let (key, backlog) = (q.key, q.backlog);
    let consumer = q.consumer.map(|(worker, c)| Consumer {
      worker,
      max_batch_size: c.max_batch_size,
      max_batch_timeout: i64::from(c.max_batch_timeout) * 1000,
    });
    dispatcher.load(&key, consumer, backlog, now);
  }
  Ok(())
}

/// Delivers until leadership ends (false) or every handle is gone (true).
async fn run(
  mut dispatcher: Dispatcher,
  db: &Db,
  fleet: &Fleet,
  clock: Clock,
  rx: &mut mpsc::UnboundedReceiver<Msg>,
  leading: &mut Leading,
) -> bool {
  let (db, fleet) = (db.clone(), fleet.clone());
  let mut changes = fleet.follow(&mut dispatcher, clock.now());
  loop {
    if !*leading.borrow() {
      return false;
    }
    dispatcher.poll(clock.now());
    apply(&mut dispatcher, &db, &fleet, clock).await;
    let wait = dispatcher
      .poll_timeout()
      .map_or(Duration::from_secs(3600), |at| {
        Duration::from_millis(at.saturating_sub(clock.now()).max(0) as u64)
      });
    let msg = tokio::select! {
      msg = rx.recv() => msg,
      Some(change) = changes.recv() => {
        change.tell(&mut dispatcher, clock.now());
        continue;
      }
      () = crate::lease::changed(leading) => continue,
      () = tokio::time::sleep(wait) => continue,
    };
    let Some(msg) = msg else {
      return true;
    };
    let now = clock.now();
    match msg {
      Msg::Stored { queue, visible_at } => dispatcher.stored(&queue, &visible_at, now),
      Msg::Accepted(id) => dispatcher.accepted(id),
      Msg::Done(report, done) => {
        settle(&mut dispatcher, &db, report, now).await;
        apply(&mut dispatcher, &db, &fleet, clock).await;
        let _ = done.send(());
      }
      Msg::Reload => {
        if let Err(e) = load(&mut dispatcher, &db, now).await {
          tracing::error!(error = %e, "queues: cannot read the queues");
        }
      }
    }
  }
}

/// Applies a report (or a release) to the database and the dispatcher.
async fn settle(dispatcher: &mut Dispatcher, db: &Db, report: BatchReport, now: Millis) {
  let id = report.id;
  if report.unavailable {
    dispatcher.unavailable(id, now);
    return;
  }
  let db2 = db.clone();
  let key = match dispatcher.queue_of(id) {
    Some(key) => Some(key),
    None => blocking(move || db2.lease_queue(id)).await.ok().flatten(),
  };
  let Some(key) = key else {
    // Settled before (a report sent again): nothing is leased to it.
    return;
  };
  let (db2, k) = (db.clone(), key.clone());
  match blocking(move || db2.settle(&k, &report, now)).await {
    Ok(settled) => {
      dispatcher.settled(&key, id, &settled.retry_at, now);
      for (dlq, at) in settled.dead_lettered {
        dispatcher.stored(&dlq, &[at], now);
      }
    }
    Err(e) => tracing::error!(error = %e, batch = id, "queues: cannot settle a batch"),
  }
}

/// Carries out what the dispatcher asked, in its order.
async fn apply(dispatcher: &mut Dispatcher, db: &Db, fleet: &Fleet, clock: Clock) {
  while let Some(action) = dispatcher.poll_action() {
    let now = clock.now();
    match action {
      Action::Lease {
        queue,
        id,
        max,
        edge,
        worker,
      } => {
        let (db2, q) = (db.clone(), queue.clone());
        let leased = blocking(move || {
          db2.use_batch_id(id)?;
          db2.lease(&q, id, max, now)
        })
        .await;
        let messages = leased.unwrap_or_else(|e| {
          tracing::error!(error = %e, "queues: cannot lease a batch");
          Vec::new()
        });
        dispatcher.leased(&queue, id, messages.len() as u64, max, now);
        if !messages.is_empty() {
          send(fleet, &edge, id, worker, &queue, messages);
        }
      }
      Action::Move {
        queue,
        old,
        id,
        edge,
        worker,
      } => {
        let db2 = db.clone();
        let moved = blocking(move || {
          db2.use_batch_id(id)?;
          db2.move_lease(old, id)?;
          db2.leased(id)
        })
        .await;
        match moved {
          Ok(messages) => send(fleet, &edge, id, worker, &queue, messages),
          Err(e) => tracing::error!(error = %e, "queues: cannot move a batch"),
        }
      }
      Action::Release { id, .. } => {
        let report = BatchReport {
          id,
          ok: false,
          messages: Vec::new(),
          unavailable: false,
          cpu_us: 0,
          wall_us: 0,
          // Nothing reported which version ran: its reads are billed to
          // no version.
          version: None,
        };
        tracing::info!(
          batch = id,
          "queues: a batch's edge is gone or late; delivering its messages again"
        );
        settle(dispatcher, db, report, now).await;
      }
    }
  }
}

fn send(
  fleet: &Fleet,
  edge: &str,
  id: u64,
  worker: String,
  queue: &str,
  messages: Vec<isola_proto::queue::Message>,
) {
  let name = queue.split_once('/').map_or(queue, |(_, n)| n).to_string();
  // An edge gone meanwhile never accepts; the dispatcher moves on.
  fleet.send(
    edge,
    Work::Batch(Batch {
      id,
      worker,
      queue: name,
      messages,
    }),
  );
}
