//! The one IO loop around the [`Scheduler`]: reads the time, stores what
//! its actions say in the database (before any tick leaves), and hands
//! ticks to the edge connections.

use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use isola_proto::msg::TickReport;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::Action;
use super::Config;
use super::Millis;
use super::Scheduler;
use crate::db::blocking;
use crate::db::Db;
use crate::fleet::Fleet;
use crate::fleet::Work;
use crate::lease::Leading;

/// The scheduler's time. Real time, or for tests a clock that runs `scale`
/// times faster from `origin` on (a pure function of real time, so a
/// restarted control plane reads the same clock).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
  origin: Millis,
  scale: i64,
}

impl Clock {
  pub fn real() -> Self {
    Self {
      origin: 0,
      scale: 1,
    }
  }

  /// Reads `origin` (ms since the epoch) at real time `origin`, then runs
  /// `scale` times faster.
  pub fn test(origin: Millis, scale: i64) -> Self {
    Self {
      origin,
      scale: scale.max(1),
    }
  }

  pub fn scale(&self) -> i64 {
    self.scale
  }

  pub fn now(&self) -> Millis {
    let real = SystemTime::now()
      .duration_since(UNIX_EPOCH)
      .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    self.origin + (real - self.origin) * self.scale
  }

  /// Real time until the clock reads `at`, rounded up so a wake-up is never
  /// early.
  fn until(&self, at: Millis) -> Duration {
    let left = at.saturating_sub(self.now()).max(0);
    Duration::from_millis(((left + self.scale - 1) / self.scale) as u64)
  }
}

enum Msg {
  Accepted(u64),
  Report(TickReport, oneshot::Sender<()>),
  Reload,
}

/// How the API and the edge connections reach the scheduler. Cheap to
/// clone.
#[derive(Clone)]
pub struct Handle {
  tx: mpsc::UnboundedSender<Msg>,
  clock: Clock,
}

impl Handle {
  /// A handle to no scheduler, for tests of the API alone: schedules are
  /// stored, nothing runs.
  pub fn detached() -> Self {
    let (tx, _) = mpsc::unbounded_channel();
    Self {
      tx,
      clock: Clock::real(),
    }
  }

  pub fn clock(&self) -> Clock {
    self.clock
  }

  pub fn accepted(&self, id: u64) {
    let _ = self.tx.send(Msg::Accepted(id));
  }

  /// Hands over a report; returns once what it leads to is stored.
  pub async fn report(&self, report: TickReport) {
    let (done, wait) = oneshot::channel();
    if self.tx.send(Msg::Report(report, done)).is_ok() {
      let _ = wait.await;
    }
  }

  /// The stored schedules changed.
  pub fn reload(&self) {
    let _ = self.tx.send(Msg::Reload);
  }
}

/// Starts the loop. While `leading` says so (always, on one SQLite
/// file) it runs the schedules: loaded from the database when leadership
/// starts, as after a restart, so another replica taking over neither
/// reruns nor drops a tick. A standby keeps the reports edges send it and
/// hands them to its scheduler if it comes to lead.
pub async fn start(
  db: Db,
  fleet: Fleet,
  clock: Clock,
  config: Config,
  leading: Leading,
) -> crate::db::Result<Handle> {
  // Leading from the start: a database that cannot be read stops the start.
  let first = if *leading.borrow() {
    Some(load(&db, &config, clock).await?)
  } else {
    None
  };
  let (tx, rx) = mpsc::unbounded_channel();
  let driver = Driver {
    db,
    fleet,
    clock,
    config,
    rx,
    leading,
    held: std::collections::VecDeque::new(),
  };
  tokio::spawn(crate::lease::supervise(driver, first));
  Ok(Handle { tx, clock })
}

async fn load(db: &Db, config: &Config, clock: Clock) -> crate::db::Result<Scheduler> {
  let loaded = {
    let db = db.clone();
    blocking(move || {
      Ok::<_, crate::db::Error>((db.last_run_id()?, db.all_schedules()?, db.runs_in_flight()?))
    })
    .await?
  };
  let (last_id, entries, in_flight) = loaded;
  let mut scheduler = Scheduler::new(config.clone(), last_id);
  scheduler.set_schedules(entries);
  scheduler.resume(in_flight, clock.now());
  Ok(scheduler)
}

/// Reports held by a standby at most; older ones are dropped (their runs
/// count as lost and are retried by the leader).
const HELD_MAX: usize = 10_000;

/// The scheduler's side of [`crate::lease::supervise`].
struct Driver {
  db: Db,
  fleet: Fleet,
  clock: Clock,
  config: Config,
  rx: mpsc::UnboundedReceiver<Msg>,
  leading: Leading,
  /// Reports kept while standing by, for the scheduler to come.
  held: std::collections::VecDeque<Msg>,
}

impl crate::lease::OnceOnly for Driver {
  type State = Scheduler;
  const WORK: &'static str = "cron";

  type Msg = Msg;

  fn channels(&mut self) -> (&mut mpsc::UnboundedReceiver<Msg>, &mut Leading) {
    (&mut self.rx, &mut self.leading)
  }

  /// Reports are answered at once (the edge may forget them) and kept for
  /// the scheduler this replica may come to run; at most [`HELD_MAX`],
  /// oldest dropped first.
  async fn standing_by(&mut self, msg: Msg) {
    match msg {
      Msg::Report(report, done) => {
        let _ = done.send(());
        self
          .held
          .push_back(Msg::Report(report, oneshot::channel().0));
      }
      msg @ Msg::Accepted(_) => self.held.push_back(msg),
      // Loaded whole when leadership starts.
      Msg::Reload => {}
    }
    while self.held.len() > HELD_MAX {
      self.held.pop_front();
    }
  }

  async fn load(&mut self) -> crate::db::Result<Scheduler> {
    load(&self.db, &self.config, self.clock).await
  }

  async fn run(&mut self, scheduler: Scheduler) -> bool {
    run(
      scheduler,
      &self.db,
      &self.fleet,
      self.clock,
      &mut self.rx,
      &mut self.leading,
      &mut self.held,
    )
    .await
  }
}

/// Runs the schedules until leadership ends (false) or every handle is gone
/// (true).
async fn run(
  mut scheduler: Scheduler,
  db: &Db,
  fleet: &Fleet,
  clock: Clock,
  rx: &mut mpsc::UnboundedReceiver<Msg>,
  leading: &mut Leading,
  held: &mut std::collections::VecDeque<Msg>,
) -> bool {
  let (db, fleet) = (db.clone(), fleet.clone());
  let mut changes = fleet.follow(&mut scheduler, clock.now());
  loop {
    if !*leading.borrow() {
      return false;
    }
    scheduler.poll(clock.now());
    apply(&mut scheduler, &db, &fleet).await;
    let wait = scheduler
      .poll_timeout()
      .map_or(Duration::from_secs(3600), |at| clock.until(at));
    let msg = match held.pop_front() {
      Some(msg) => Some(msg),
      None => tokio::select! {
        msg = rx.recv() => msg,
        Some(change) = changes.recv() => {
          change.tell(&mut scheduler, clock.now());
          continue;
        }
        () = crate::lease::changed(leading) => continue,
        () = tokio::time::sleep(wait) => continue,
      },
    };
    let Some(msg) = msg else {
      return true;
    };
    let now = clock.now();
    match msg {
      Msg::Accepted(id) => scheduler.accepted(id),
      Msg::Report(report, done) => {
        scheduler.report(report, now);
        apply(&mut scheduler, &db, &fleet).await;
        let _ = done.send(());
      }
      Msg::Reload => {
        let db2 = db.clone();
        match blocking(move || db2.all_schedules()).await {
          Ok(entries) => scheduler.set_schedules(entries),
          Err(e) => tracing::error!(error = %e, "scheduler: cannot read the schedules"),
        }
      }
    }
  }
}

/// Stores and sends what the scheduler asked, in its order.
async fn apply(scheduler: &mut Scheduler, db: &Db, fleet: &Fleet) {
  while let Some(action) = scheduler.poll_action() {
    let db = db.clone();
    match action {
      Action::Advance { key, next_due } => {
        if let Err(e) = blocking(move || db.advance_schedule(&key, next_due)).await {
          tracing::error!(error = %e, "scheduler: cannot store a next due time");
        }
      }
      Action::Dispatch { run, tick } => {
        let edge = run.edge.clone();
        if let Err(e) = blocking(move || db.run_sent(&run)).await {
          // Not sent: without the record a restart could run it again.
          tracing::error!(error = %e, "scheduler: cannot store a run; not sending it");
          continue;
        }
        tracing::debug!(
          edge,
          worker = tick.worker,
          cron = tick.cron,
          "scheduler: tick sent"
        );
        // An edge gone meanwhile never accepts; the scheduler moves on.
        fleet.send(&edge, Work::Tick(tick));
      }
      Action::Forget { id } => {
        if let Err(e) = blocking(move || db.forget_run(id)).await {
          tracing::error!(error = %e, "scheduler: cannot drop a run handed on");
        }
      }
      Action::Record(record) => {
        if record.outcome.failed() {
          tracing::info!(
            worker = record.key.worker,
            cron = record.key.cron,
            outcome = record.outcome.as_str(),
            attempt = record.attempt,
            "scheduled run did not succeed"
          );
        }
        if let Err(e) = blocking(move || db.run_ended(&record)).await {
          tracing::error!(error = %e, "scheduler: cannot store a run's outcome");
        }
      }
    }
  }
}
