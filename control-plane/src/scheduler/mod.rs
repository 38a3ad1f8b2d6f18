//! Cron triggers across a fleet: which tick runs, when, and on which edge.
//!
//! [`Scheduler`] is sans-IO, like the channel's sessions: it is fed the
//! time (ms since the Unix epoch, injected, so tests and the test clock
//! move it at will), the edges that come and go and what they report, and
//! hands back [`Action`]s — persist a cron's next due time, send a tick to
//! an edge, record a run. `driver` is the one IO loop around it.
//!
//! The rules:
//! - A tick runs on one edge: connected edges are ranked per worker by
//!   rendezvous hashing, so the choice is stable and moves only when that
//!   edge goes. An edge that does not accept a tick in time, or reports the
//!   worker unavailable, hands it to the next one.
//! - The next due time is persisted before a tick is sent, so a restart
//!   neither reruns nor drops it; ticks that came due while the scheduler
//!   was down run once, in order, if within the catch-up window, else are
//!   recorded `missed`.
//! - Runs of one (worker, cron) never overlap: a tick that comes due while
//!   one runs is recorded `skipped`.
//! - A failed run is retried (backoff doubling) up to `retries` times
//!   unless the handler called `noRetry()`; a run whose edge vanished is
//!   `lost` and retried elsewhere.

pub mod driver;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;

use isola_proto::cron::Schedule;
use isola_proto::manifest::sha256_hex;
use isola_proto::msg::RunOutcome;
use isola_proto::msg::Tick;
use isola_proto::msg::TickReport;

/// Ms since the Unix epoch.
pub type Millis = i64;

/// Timing rules of a [`Scheduler`]; all in ms of its clock.
#[derive(Clone, Debug)]
pub struct Config {
  /// How old a tick missed while the scheduler was down may be and still
  /// run. Default: 5 minutes.
  pub catch_up: Millis,
  /// How long an edge has to accept a tick. Default: 10 s.
  pub ack_timeout: Millis,
  /// How long an accepted run may go unreported before it counts as
  /// `lost`: the longest wall time of a scheduled run (15 min) and a
  /// minute. Default: 16 minutes.
  pub run_timeout: Millis,
  /// Retries of a failed run. Default: 3.
  pub retries: u32,
  /// Delay before the first retry, doubling after. Default: 10 s.
  pub retry_backoff: Millis,
}

impl Default for Config {
  fn default() -> Self {
    Self {
      catch_up: 5 * 60_000,
      ack_timeout: 10_000,
      run_timeout: 16 * 60_000,
      retries: 3,
      retry_backoff: 10_000,
    }
  }
}

impl Config {
  /// Every duration multiplied by `scale`: for a test clock that runs
  /// `scale` times faster than real time, the same real-time allowances.
  pub fn scaled(mut self, scale: i64) -> Self {
    self.ack_timeout *= scale;
    self.run_timeout *= scale;
    self.retry_backoff *= scale;
    self
  }
}

/// One cron of one worker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CronKey {
  /// Edge name of the worker.
  pub worker: String,
  pub cron: String,
}

/// A schedule as stored: the next tick not yet handed out.
#[derive(Clone, Debug)]
pub struct Entry {
  pub key: CronKey,
  pub schedule: Schedule,
  pub next_due: Millis,
}

/// A run that was sent and has not ended, as stored (to be resumed after a
/// restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
  pub id: u64,
  pub key: CronKey,
  pub scheduled_time: Millis,
  pub attempt: u32,
  pub edge: String,
  pub dispatched_at: Millis,
}

/// How one tick (or one attempt at it) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
  /// The attempt's id; ticks that never ran get a fresh one.
  pub id: u64,
  pub key: CronKey,
  pub scheduled_time: Millis,
  /// 1 for the first run of a tick.
  pub attempt: u32,
  pub edge: Option<String>,
  pub outcome: RunOutcome,
  /// When the attempt was sent (or the tick judged), scheduler time.
  pub started_at: Millis,
  pub version: Option<String>,
  pub cpu_us: u64,
  pub wall_us: u64,
}

/// What the IO around the scheduler must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
  /// Store the cron's next due time. Comes before the dispatch of the tick
  /// it follows, so a crash in between drops no tick and runs none twice.
  Advance { key: CronKey, next_due: Millis },
  /// Store that this attempt was sent (an [`InFlight`]), then send `tick`
  /// to `edge`.
  Dispatch { run: InFlight, tick: Tick },
  /// Store how an attempt or a tick ended (replacing its in-flight row).
  Record(RunRecord),
  /// Drop the in-flight row of an attempt an edge did not take (it went
  /// to another edge under a new id).
  Forget { id: u64 },
}

/// The attempt of a cron that is going on, or waiting to be retried.
#[derive(Clone, Debug)]
struct Running {
  run: InFlight,
  accepted: bool,
  /// Edges that refused or ignored this attempt.
  tried: BTreeSet<String>,
  /// When the first attempt was sent: ticks due after it came due during
  /// the run and are skipped.
  began: Millis,
  /// Set while waiting to retry: when.
  retry_at: Option<Millis>,
}

#[derive(Clone, Debug)]
struct Cron {
  schedule: Schedule,
  next_due: Millis,
  running: Option<Running>,
  /// Ticks that came due before the current run began (catch-up), oldest
  /// first, or while no edge was connected.
  backlog: VecDeque<Millis>,
}

/// The fleet's cron scheduler. See the module docs for its rules.
#[derive(Debug)]
pub struct Scheduler {
  config: Config,
  crons: BTreeMap<CronKey, Cron>,
  edges: BTreeSet<String>,
  next_id: u64,
  actions: VecDeque<Action>,
}

impl Scheduler {
  /// A scheduler whose run ids start after `last_id` (the highest stored).
  pub fn new(config: Config, last_id: u64) -> Self {
    Self {
      config,
      crons: BTreeMap::new(),
      edges: BTreeSet::new(),
      next_id: last_id + 1,
      actions: VecDeque::new(),
    }
  }

  /// Sets the schedules to `entries` (all of them, as stored). Crons kept
  /// keep their run in progress; a removed cron's run still reports, but
  /// nothing is retried or started for it.
  pub fn set_schedules(&mut self, entries: Vec<Entry>) {
    let mut crons = BTreeMap::new();
    for entry in entries {
      let cron = match self.crons.remove(&entry.key) {
        Some(mut cron) => {
          cron.schedule = entry.schedule;
          cron
        }
        None => Cron {
          schedule: entry.schedule,
          next_due: entry.next_due,
          running: None,
          backlog: VecDeque::new(),
        },
      };
      crons.insert(entry.key, cron);
    }
    self.crons = crons;
  }

  /// Runs that were in flight when the scheduler last stopped, resumed at
  /// `now`: their reports may still come, and their crons must not overlap
  /// them. Each counts as sent now and not yet accepted: an edge that is
  /// still running one says so again when it reconnects; one that is not
  /// (or never reconnects) loses it to the next edge after the ack
  /// timeout.
  pub fn resume(&mut self, runs: Vec<InFlight>, now: Millis) {
    for mut run in runs {
      self.next_id = self.next_id.max(run.id + 1);
      if let Some(cron) = self.crons.get_mut(&run.key) {
        let began = run.dispatched_at;
        run.dispatched_at = now;
        cron.running = Some(Running {
          began,
          accepted: false,
          tried: BTreeSet::new(),
          retry_at: None,
          run,
        });
      } else {
        self.actions.push_back(Action::Forget { id: run.id });
      }
    }
  }

  pub fn edge_up(&mut self, edge: &str, now: Millis) {
    self.edges.insert(edge.to_string());
    self.poll(now);
  }

  /// The edge's connection ended: what it had accepted is lost and what it
  /// had not accepted goes to the next edge.
  pub fn edge_down(&mut self, edge: &str, now: Millis) {
    self.edges.remove(edge);
    let keys: Vec<CronKey> = self
      .crons
      .iter()
      .filter(|(_, c)| {
        c.running
          .as_ref()
          .is_some_and(|r| r.retry_at.is_none() && r.run.edge == edge)
      })
      .map(|(k, _)| k.clone())
      .collect();
    for key in keys {
      let accepted = self.crons[&key]
        .running
        .as_ref()
        .is_some_and(|r| r.accepted);
      if accepted {
        let report = lost(&self.crons[&key]);
        self.finish(&key, report, now);
      } else {
        self.redispatch(&key, now);
      }
    }
    self.poll(now);
  }

  /// The edge took run `id`.
  pub fn accepted(&mut self, id: u64) {
    if let Some(r) = self.running_mut(id) {
      r.accepted = true;
    }
  }

  /// An edge reported how run `id` ended.
  pub fn report(&mut self, report: TickReport, now: Millis) {
    let Some(key) = self.key_of(report.id) else {
      return;
    };
    if report.outcome == RunOutcome::Unavailable {
      self.redispatch(&key, now);
    } else {
      self.finish(&key, report, now);
    }
    self.poll(now);
  }

  /// Starts what is due at `now`: ticks, retries, and the handling of
  /// edges that did not accept or report in time.
  pub fn poll(&mut self, now: Millis) {
    let keys: Vec<CronKey> = self.crons.keys().cloned().collect();
    for key in keys {
      self.poll_cron(&key, now);
    }
  }

  pub fn poll_action(&mut self) -> Option<Action> {
    self.actions.pop_front()
  }

  /// When [`Scheduler::poll`] next has something to do.
  pub fn poll_timeout(&self) -> Option<Millis> {
    self
      .crons
      .values()
      .flat_map(|c| {
        let running = c.running.as_ref().map(|r| match r.retry_at {
          Some(at) => at,
          None if r.accepted => r.run.dispatched_at + self.config.run_timeout,
          None => r.run.dispatched_at + self.config.ack_timeout,
        });
        // A backlog waits for a run to end or an edge to come; if neither,
        // for its oldest tick to leave the catch-up window.
        let backlog = c.backlog.front().map(|t| t + self.config.catch_up + 1);
        [Some(c.next_due), running, backlog]
      })
      .flatten()
      .min()
  }

  fn poll_cron(&mut self, key: &CronKey, now: Millis) {
    // The run in progress: a retry that is due, or an edge that is late.
    if let Some(r) = self.crons[key].running.as_ref() {
      match r.retry_at {
        Some(at) if at <= now => self.retry(key, now),
        Some(_) => {}
        None if r.accepted && now >= r.run.dispatched_at + self.config.run_timeout => {
          let report = lost(&self.crons[key]);
          self.finish(key, report, now);
        }
        None if !r.accepted && now >= r.run.dispatched_at + self.config.ack_timeout => {
          self.redispatch(key, now);
        }
        None => {}
      }
    }
    // Ticks that came due.
    loop {
      let cron = self.crons.get_mut(key).expect("polled keys exist");
      if cron.next_due > now {
        break;
      }
      let due = cron.next_due;
      // A cron that never fires again keeps a due time past any clock.
      cron.next_due = cron.schedule.next_after(due).unwrap_or(Millis::MAX);
      self.actions.push_back(Action::Advance {
        key: key.clone(),
        next_due: cron.next_due,
      });
      match &cron.running {
        Some(r) if due > r.began => {
          let record = self.never_ran(key, due, RunOutcome::Skipped, now);
          self.actions.push_back(Action::Record(record));
        }
        _ => cron.backlog.push_back(due),
      }
    }
    self.start_next(key, now);
  }

  /// Starts the oldest waiting tick if nothing of this cron is running.
  fn start_next(&mut self, key: &CronKey, now: Millis) {
    loop {
      let cron = self.crons.get_mut(key).expect("known key");
      if cron.running.is_some() {
        return;
      }
      let Some(&due) = cron.backlog.front() else {
        return;
      };
      let stale = now - due > self.config.catch_up;
      if !stale && self.edges.is_empty() {
        // Edges reconnect after a restart of the control plane: wait for
        // one while the tick is within the catch-up window.
        return;
      }
      cron.backlog.pop_front();
      if stale {
        let outcome = if self.edges.is_empty() {
          RunOutcome::NoEdge
        } else {
          RunOutcome::Missed
        };
        let record = self.never_ran(key, due, outcome, now);
        self.actions.push_back(Action::Record(record));
        continue;
      }
      let id = self.take_id();
      let cron = self.crons.get_mut(key).expect("known key");
      cron.running = Some(Running {
        run: InFlight {
          id,
          key: key.clone(),
          scheduled_time: due,
          attempt: 1,
          edge: String::new(),
          dispatched_at: now,
        },
        accepted: false,
        tried: BTreeSet::new(),
        began: now,
        retry_at: None,
      });
      self.send(key, now);
      return;
    }
  }

  /// Sends the current attempt to the best edge not tried yet; with none
  /// left the attempt ends `unavailable` (or `noEdge`).
  fn send(&mut self, key: &CronKey, now: Millis) {
    let cron = self.crons.get_mut(key).expect("known key");
    let running = cron.running.as_mut().expect("a run to send");
    let edge = rank(&self.edges, &key.worker)
      .into_iter()
      .find(|e| !running.tried.contains(e));
    let Some(edge) = edge else {
      let outcome = if self.edges.is_empty() {
        RunOutcome::NoEdge
      } else {
        RunOutcome::Unavailable
      };
      let report = TickReport {
        id: running.run.id,
        outcome,
        no_retry: false,
        version: None,
        cpu_us: 0,
        wall_us: 0,
      };
      self.finish(key, report, now);
      return;
    };
    running.run.edge = edge;
    running.run.dispatched_at = now;
    running.accepted = false;
    let tick = Tick {
      id: running.run.id,
      worker: key.worker.clone(),
      cron: key.cron.clone(),
      scheduled_time: running.run.scheduled_time,
      cpu_ms: cron.schedule.default_cpu().as_millis() as u64,
    };
    self.actions.push_back(Action::Dispatch {
      run: running.run.clone(),
      tick,
    });
  }

  /// The current edge refused or ignored the attempt: the next edge gets
  /// it, under a new id so a late answer from the first is not mistaken
  /// for the second's.
  fn redispatch(&mut self, key: &CronKey, now: Millis) {
    let id = self.take_id();
    let cron = self.crons.get_mut(key).expect("known key");
    let running = cron.running.as_mut().expect("a run to move");
    running.tried.insert(running.run.edge.clone());
    self
      .actions
      .push_back(Action::Forget { id: running.run.id });
    running.run.id = id;
    self.send(key, now);
  }

  /// The attempt ended: record it, then retry, or free the cron.
  fn finish(&mut self, key: &CronKey, report: TickReport, now: Millis) {
    let retries = self.config.retries;
    let backoff = self.config.retry_backoff;
    let cron = self.crons.get_mut(key).expect("known key");
    let Some(running) = cron.running.as_mut() else {
      return;
    };
    let edge = (!running.run.edge.is_empty()).then(|| running.run.edge.clone());
    self.actions.push_back(Action::Record(RunRecord {
      id: running.run.id,
      key: key.clone(),
      scheduled_time: running.run.scheduled_time,
      attempt: running.run.attempt,
      edge,
      outcome: report.outcome,
      started_at: running.run.dispatched_at,
      version: report.version,
      cpu_us: report.cpu_us,
      wall_us: report.wall_us,
    }));
    let attempt = running.run.attempt;
    if report.outcome.failed() && !report.no_retry && attempt <= retries {
      let delay = backoff.saturating_mul(1 << (attempt - 1).min(20));
      running.retry_at = Some(now + delay);
    } else {
      cron.running = None;
      self.start_next(key, now);
    }
  }

  fn retry(&mut self, key: &CronKey, now: Millis) {
    let id = self.take_id();
    let cron = self.crons.get_mut(key).expect("known key");
    let running = cron.running.as_mut().expect("a run to retry");
    running.retry_at = None;
    running.tried.clear();
    running.run.id = id;
    running.run.attempt += 1;
    self.send(key, now);
  }

  fn never_ran(
    &mut self,
    key: &CronKey,
    due: Millis,
    outcome: RunOutcome,
    now: Millis,
  ) -> RunRecord {
    RunRecord {
      id: self.take_id(),
      key: key.clone(),
      scheduled_time: due,
      attempt: 0,
      edge: None,
      outcome,
      started_at: now,
      version: None,
      cpu_us: 0,
      wall_us: 0,
    }
  }

  fn take_id(&mut self) -> u64 {
    let id = self.next_id;
    self.next_id += 1;
    id
  }

  fn key_of(&self, id: u64) -> Option<CronKey> {
    self
      .crons
      .iter()
      .find(|(_, c)| {
        c.running
          .as_ref()
          .is_some_and(|r| r.run.id == id && r.retry_at.is_none())
      })
      .map(|(k, _)| k.clone())
  }

  fn running_mut(&mut self, id: u64) -> Option<&mut Running> {
    self
      .crons
      .values_mut()
      .filter_map(|c| c.running.as_mut())
      .find(|r| r.run.id == id && r.retry_at.is_none())
  }
}

fn lost(cron: &Cron) -> TickReport {
  TickReport {
    id: cron.running.as_ref().map_or(0, |r| r.run.id),
    outcome: RunOutcome::Lost,
    no_retry: false,
    version: None,
    cpu_us: 0,
    wall_us: 0,
  }
}

/// `edges` best first for `worker`: highest hash of (worker, edge) first
/// (rendezvous hashing), so each worker has a stable edge and losing one
/// edge moves only its workers.
pub fn rank(edges: &BTreeSet<String>, worker: &str) -> Vec<String> {
  let mut ranked: Vec<(String, &String)> = edges
    .iter()
    .map(|e| (sha256_hex(format!("{worker}\0{e}").as_bytes()), e))
    .collect();
  ranked.sort_by(|a, b| b.0.cmp(&a.0));
  ranked.into_iter().map(|(_, e)| e.clone()).collect()
}

#[cfg(test)]
mod tests;

impl crate::fleet::Follower for Scheduler {
  fn edge_up(&mut self, edge: &str, now: Millis) {
    Scheduler::edge_up(self, edge, now);
  }

  fn edge_down(&mut self, edge: &str, now: Millis) {
    Scheduler::edge_down(self, edge, now);
  }
}
