//! Tenant fairness: a worker whose invocations keep ending on a CPU or
//! memory limit must not take the node from its neighbours.
//!
//! Limits end each runaway invocation exactly, but a tenant that keeps
//! sending runaway requests would still keep the V8 threads busy in 50 ms
//! chunks that no other request on those threads can interrupt. So each
//! worker carries a *debt*: the CPU its limit-ended invocations burned. The
//! debt drains at an allowance per second; while it is above a burst size the
//! worker is throttled (its requests are answered `503` with `Retry-After`
//! without entering its isolate), and while it is above zero at most one of
//! its invocations runs at a time, in an isolate on the quarantine thread
//! (see [`crate::Config::fairness`]). Every throttle episode that starts
//! soon after the last one halves the drain rate (a growing back-off); a
//! worker that stays clean is forgiven.
//!
//! Pure state with injected time, so every rule is tested without isolates
//! or sleeps; the pool calls [`Ledger::admit`] before an invocation,
//! [`Ledger::finish`] after it, and [`Ledger::charge`] with each invocation
//! record, through a [`LedgerCell`].

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;
use std::time::Instant;

use crate::limits::Outcome;

/// Settings of the fairness mechanism (part of [`crate::Config`]).
#[derive(Clone, Debug)]
pub struct Fairness {
  pub(crate) enabled: bool,
  pub(crate) allowance: Duration,
  pub(crate) burst: Duration,
  pub(crate) forgive_after: Duration,
  pub(crate) hold: Duration,
  pub(crate) quarantine: bool,
}

impl Default for Fairness {
  fn default() -> Self {
    Self {
      enabled: true,
      allowance: Duration::from_millis(50),
      burst: Duration::from_millis(100),
      forgive_after: Duration::from_secs(60),
      hold: Duration::from_millis(250),
      quarantine: true,
    }
  }
}

/// Slowest drain: the allowance halved this many times at most.
const MAX_BACKOFF_STEPS: u32 = 6;

impl Fairness {
  /// Whether workers are throttled at all. Default: on.
  pub fn enabled(mut self, on: bool) -> Self {
    self.enabled = on;
    self
  }

  /// CPU per second a worker may burn in invocations that a CPU or memory
  /// limit ended, before the first back-off. Default: 50 ms (5 % of a core).
  pub fn allowance(mut self, per_second: Duration) -> Self {
    self.allowance = per_second.max(Duration::from_micros(1));
    self
  }

  /// Debt above which a worker is throttled. Default: 100 ms (two busy
  /// loops at the default 50 ms CPU limit).
  pub fn burst(mut self, debt: Duration) -> Self {
    self.burst = debt;
    self
  }

  /// A worker that throttles again within this long of its last episode
  /// drains at half the previous rate (down to 1/64 of the allowance); one
  /// that stays free of debt this long starts over. Default: 60 s.
  pub fn forgive_after(mut self, period: Duration) -> Self {
    self.forgive_after = period;
    self
  }

  /// How long a throttled request waits before its `503`, so a client
  /// looping on a throttled worker cannot keep a core busy with rejections.
  /// Default: 250 ms.
  pub fn hold(mut self, hold: Duration) -> Self {
    self.hold = hold;
    self
  }

  /// Whether a worker with debt runs on the quarantine thread (a V8 thread
  /// of lowest OS priority that serves no other worker) instead of sharing
  /// the request threads. Default: on.
  pub fn quarantine(mut self, on: bool) -> Self {
    self.quarantine = on;
    self
  }
}

/// What [`Ledger::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
  /// Run the invocation; in quarantine if `quarantine`. Call
  /// [`Ledger::finish`] when it is done.
  Run { quarantine: bool },
  /// Do not run it: the worker is throttled because of `limit`.
  Throttled {
    limit: Outcome,
    retry_after: Duration,
  },
}

#[derive(Debug)]
struct Account {
  /// CPU of limit-ended invocations not yet drained, as of `updated`.
  debt: Duration,
  updated: Instant,
  /// Throttle episodes in the current back-off streak.
  episodes: u32,
  throttled: bool,
  /// When the last episode ended (debt back under the burst).
  episode_ended: Option<Instant>,
  /// When the debt last reached zero.
  clean_since: Option<Instant>,
  inflight: u32,
  /// The limit that last ended one of its invocations.
  limit: Outcome,
}

impl Account {
  fn new(now: Instant) -> Self {
    Self {
      debt: Duration::ZERO,
      updated: now,
      episodes: 0,
      throttled: false,
      episode_ended: None,
      clean_since: Some(now),
      inflight: 0,
      limit: Outcome::CpuLimit,
    }
  }

  fn rate(&self, config: &Fairness) -> Duration {
    let halvings = self.episodes.saturating_sub(1).min(MAX_BACKOFF_STEPS);
    config.allowance / 2u32.pow(halvings)
  }

  /// Drains the debt up to `now` and updates the episode state, dating
  /// each change to the moment it happened, not to when it is noticed.
  fn drain(&mut self, config: &Fairness, now: Instant) {
    let since = self.updated;
    let elapsed = now.saturating_duration_since(since).as_secs_f64();
    self.updated = now;
    let rate = self.rate(config).as_secs_f64();
    // When the debt, draining from `since`, falls to `level`.
    let reaches = |debt: Duration, level: Duration| {
      since + Duration::from_secs_f64(debt.saturating_sub(level).as_secs_f64() / rate)
    };
    let before = self.debt;
    if before > Duration::ZERO {
      let zero_at = reaches(before, Duration::ZERO);
      if zero_at <= now {
        self.debt = Duration::ZERO;
        self.clean_since = Some(zero_at);
      } else {
        self.debt = before.saturating_sub(Duration::from_secs_f64(rate * elapsed));
      }
    }
    if self.throttled && self.debt <= config.burst {
      self.throttled = false;
      self.episode_ended = Some(reaches(before, config.burst).min(now));
    }
    if self
      .clean_since
      .is_some_and(|t| now.saturating_duration_since(t) >= config.forgive_after)
    {
      self.episodes = 0;
    }
  }

  /// Nothing to remember: no debt, no back-off streak, nothing running.
  fn is_idle(&self) -> bool {
    self.debt.is_zero() && self.episodes == 0 && self.inflight == 0
  }
}

/// Every worker's debt, by worker name.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
  config: Fairness,
  /// Looked up on every invocation's start and end: foldhash, seeded per
  /// process.
  accounts: foldhash::HashMap<Arc<str>, Account>,
}

/// Whether [`Ledger::charge`] books an invocation that ended with
/// `outcome`, so callers can skip the ledger's lock for all others.
pub(crate) fn charges(outcome: Outcome) -> bool {
  matches!(outcome, Outcome::CpuLimit | Outcome::MemoryLimit)
}

impl Ledger {
  pub(crate) fn new(config: Fairness) -> Self {
    Self {
      config,
      accounts: foldhash::HashMap::default(),
    }
  }

  /// Whether an invocation of `worker` may start now. `now` is read only
  /// for a worker with an account: most have none, and a clock read costs
  /// about as much as the rest of this.
  pub(crate) fn admit(&mut self, worker: &str, now: impl FnOnce() -> Instant) -> Admission {
    // No account at all (the usual state): not even the name's hash.
    if !self.config.enabled || self.accounts.is_empty() {
      return Admission::Run { quarantine: false };
    }
    let Some(account) = self.accounts.get_mut(worker) else {
      return Admission::Run { quarantine: false };
    };
    account.drain(&self.config, now());
    if account.throttled || (account.debt > Duration::ZERO && account.inflight > 0) {
      // Past the burst: until the debt drains below it. On probation with
      // one invocation running: until about when that one is done.
      let over = account.debt.saturating_sub(self.config.burst);
      let retry_after = if account.throttled {
        Duration::from_secs_f64(over.as_secs_f64() / account.rate(&self.config).as_secs_f64())
      } else {
        self.config.hold
      };
      return Admission::Throttled {
        limit: account.limit,
        retry_after,
      };
    }
    account.inflight += 1;
    Admission::Run {
      quarantine: self.config.quarantine && (account.debt > Duration::ZERO || account.episodes > 0),
    }
  }

  /// An invocation admitted with [`Admission::Run`] is over; `now` is
  /// read as by [`Ledger::admit`].
  pub(crate) fn finish(&mut self, worker: &str, now: impl FnOnce() -> Instant) {
    if self.accounts.is_empty() {
      return;
    }
    if let Some(account) = self.accounts.get_mut(worker) {
      account.inflight = account.inflight.saturating_sub(1);
      account.drain(&self.config, now());
      if account.is_idle() {
        self.accounts.remove(worker);
      }
    }
  }

  /// Books one finished invocation: `cpu` is charged if `outcome` is a CPU
  /// or memory limit.
  pub(crate) fn charge(
    &mut self,
    worker: &Arc<str>,
    outcome: Outcome,
    cpu: Duration,
    now: Instant,
  ) {
    if !self.config.enabled || !charges(outcome) {
      return;
    }
    let config = &self.config;
    let account = self
      .accounts
      .entry(worker.clone())
      .or_insert_with(|| Account::new(now));
    account.drain(config, now);
    account.debt += cpu;
    account.limit = outcome;
    account.clean_since = None;
    if !account.throttled && account.debt > config.burst {
      account.throttled = true;
      // A new episode soon after the last one continues the streak.
      let streak = account
        .episode_ended
        .is_some_and(|t| now.saturating_duration_since(t) < config.forgive_after);
      account.episodes = if streak || account.episodes > 0 {
        account.episodes + 1
      } else {
        1
      };
    }
  }

  /// Workers throttled right now.
  pub(crate) fn throttled(&self) -> usize {
    self.accounts.values().filter(|a| a.throttled).count()
  }
}

/// The pool's [`Ledger`], behind its lock, with whether it holds any
/// account. In the usual state (no worker in debt) an invocation's start
/// and end leave the lock alone: two locks a request, each two atomic
/// read-modify-writes, for a ledger that answered "run" without looking.
#[derive(Debug)]
pub(crate) struct LedgerCell {
  ledger: Mutex<Ledger>,
  /// The ledger has an account; written under the lock whenever one is
  /// made or removed. A start that reads `false` while another thread
  /// makes the first account is admitted, as it would have been had it
  /// taken the lock a moment sooner; its end then finds that account
  /// without its count, which [`Ledger::finish`] takes as it always has.
  accounts: AtomicBool,
}

impl LedgerCell {
  pub(crate) fn new(config: Fairness) -> Self {
    Self {
      ledger: Mutex::new(Ledger::new(config)),
      accounts: AtomicBool::new(false),
    }
  }

  fn lock(&self) -> MutexGuard<'_, Ledger> {
    self.ledger.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// [`Ledger::admit`], without the lock while there is no account.
  pub(crate) fn admit(&self, worker: &str, now: impl FnOnce() -> Instant) -> Admission {
    if !self.accounts.load(Ordering::Acquire) {
      return Admission::Run { quarantine: false };
    }
    self.lock().admit(worker, now)
  }

  /// [`Ledger::finish`], without the lock while there is no account.
  pub(crate) fn finish(&self, worker: &str, now: impl FnOnce() -> Instant) {
    if !self.accounts.load(Ordering::Acquire) {
      return;
    }
    let mut ledger = self.lock();
    ledger.finish(worker, now);
    self.note_accounts(&ledger);
  }

  /// [`Ledger::charge`].
  pub(crate) fn charge(&self, worker: &Arc<str>, outcome: Outcome, cpu: Duration, now: Instant) {
    let mut ledger = self.lock();
    ledger.charge(worker, outcome, cpu, now);
    self.note_accounts(&ledger);
  }

  /// Sets the flag from `ledger`, which the caller holds locked.
  fn note_accounts(&self, ledger: &Ledger) {
    self
      .accounts
      .store(!ledger.accounts.is_empty(), Ordering::Release);
  }

  /// [`Ledger::throttled`].
  pub(crate) fn throttled(&self) -> usize {
    self.lock().throttled()
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const MS: Duration = Duration::from_millis(1);

  fn ledger() -> Ledger {
    Ledger::new(Fairness::default())
  }

  fn name(s: &str) -> Arc<str> {
    Arc::from(s)
  }

  /// Runs one invocation of `w` that a CPU limit ends after `cpu`.
  fn runaway(l: &mut Ledger, w: &Arc<str>, cpu: Duration, now: Instant) -> Admission {
    let admitted = l.admit(w, || now);
    if let Admission::Run { .. } = admitted {
      l.charge(w, Outcome::CpuLimit, cpu, now);
      l.finish(w, || now);
    }
    admitted
  }

  #[test]
  fn well_behaved_workers_are_never_tracked_or_throttled() {
    let mut l = ledger();
    let t0 = Instant::now();
    let w = name("hello");
    for i in 0..1000 {
      let now = t0 + MS * i;
      assert_eq!(l.admit(&w, || now), Admission::Run { quarantine: false });
      l.charge(&w, Outcome::Ok, 40 * MS, now);
      l.charge(&w, Outcome::Exception, 40 * MS, now);
      l.charge(&w, Outcome::WallLimit, 40 * MS, now);
      l.finish(&w, || now);
    }
    assert!(l.accounts.is_empty());
  }

  /// The cell says what its ledger says, and knows when the ledger has
  /// accounts: made by a charge, gone with the last one forgiven.
  #[test]
  fn the_cell_skips_the_lock_only_while_no_worker_has_an_account() {
    let cell = LedgerCell::new(Fairness::default());
    let t0 = Instant::now();
    let w = name("spin");
    let has_accounts = |cell: &LedgerCell| cell.accounts.load(Ordering::Acquire);
    assert!(!has_accounts(&cell));
    for _ in 0..3 {
      assert!(matches!(cell.admit(&w, || t0), Admission::Run { .. }));
      cell.charge(&w, Outcome::CpuLimit, 50 * MS, t0);
      cell.finish(&w, || t0);
      assert!(has_accounts(&cell));
    }
    assert!(matches!(cell.admit(&w, || t0), Admission::Throttled { .. }));
    assert_eq!(cell.throttled(), 1);
    // Drained (3 s), then clean past `forgive_after` (60 s): forgotten at
    // its next end, and the lock is left alone again.
    let t1 = t0 + Duration::from_secs(120);
    assert_eq!(cell.admit(&w, || t1), Admission::Run { quarantine: false });
    assert!(has_accounts(&cell));
    cell.finish(&w, || t1);
    assert!(!has_accounts(&cell));
    assert_eq!(cell.throttled(), 0);
  }

  #[test]
  fn one_runaway_is_forgiven_but_a_stream_of_them_is_throttled() {
    let mut l = ledger();
    let t0 = Instant::now();
    let w = name("spin");
    // One kill: on probation (quarantined, one at a time), not throttled.
    assert_eq!(
      runaway(&mut l, &w, 50 * MS, t0),
      Admission::Run { quarantine: false }
    );
    assert_eq!(l.admit(&w, || t0), Admission::Run { quarantine: true });
    assert!(
      matches!(l.admit(&w, || t0), Admission::Throttled { .. }),
      "one at a time"
    );
    l.finish(&w, || t0);
    // Two more kills push the debt (150 ms) past the burst (100 ms).
    runaway(&mut l, &w, 50 * MS, t0);
    runaway(&mut l, &w, 50 * MS, t0);
    let Admission::Throttled { limit, retry_after } = l.admit(&w, || t0) else {
      panic!("throttled")
    };
    assert_eq!(limit, Outcome::CpuLimit);
    // 50 ms over the burst at 50 ms/s: one second.
    assert_eq!(retry_after, Duration::from_secs(1));
    assert_eq!(l.throttled(), 1);
    // After it drains below the burst it may run again, quarantined.
    let t1 = t0 + Duration::from_millis(1001);
    assert_eq!(l.admit(&w, || t1), Admission::Run { quarantine: true });
    l.finish(&w, || t1);
    // Once the debt is gone (another 2 s) it runs on the shared threads,
    // and after a clean period it is forgotten.
    let t3 = t1 + Duration::from_secs(2);
    assert_eq!(l.admit(&w, || t3), Admission::Run { quarantine: true });
    l.finish(&w, || t3);
    let t4 = t3 + Duration::from_secs(61);
    assert_eq!(l.admit(&w, || t4), Admission::Run { quarantine: false });
    l.finish(&w, || t4);
    assert!(l.accounts.is_empty());
  }

  #[test]
  fn repeat_offenders_back_off_longer_each_time_up_to_a_cap() {
    let mut l = ledger();
    let mut now = Instant::now();
    let w = name("spin");
    let mut waits = Vec::new();
    for round in 0..9 {
      // Three kills in a row (150 ms) the first time; after that the debt
      // is let back in at the burst, and one more kill throttles again.
      for _ in 0..if round == 0 { 3 } else { 1 } {
        while let Admission::Throttled { retry_after, .. } = l.admit(&w, || now) {
          now += retry_after.max(MS);
        }
        l.finish(&w, || now);
        runaway(&mut l, &w, 50 * MS, now);
      }
      let Admission::Throttled { retry_after, .. } = l.admit(&w, || now) else {
        panic!("throttled")
      };
      waits.push(retry_after);
    }
    // The first episode drains 50 ms at 50 ms/s; each next one at half the
    // rate of the one before, until 1/64.
    let secs: Vec<f64> = waits.iter().map(|d| d.as_secs_f64().round()).collect();
    assert_eq!(secs, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0]);
  }

  #[test]
  fn a_worker_that_stops_misbehaving_is_admitted_normally_again() {
    let mut l = ledger();
    let t0 = Instant::now();
    let w = name("spin");
    for _ in 0..4 {
      runaway(&mut l, &w, 50 * MS, t0);
    }
    assert!(matches!(l.admit(&w, || t0), Admission::Throttled { .. }));
    // Its debt (200 ms) drains in 4 s; a minute clean ends the streak.
    let later = t0 + Duration::from_secs(4) + Duration::from_secs(60);
    for i in 0..10 {
      let now = later + MS * i;
      assert_eq!(l.admit(&w, || now), Admission::Run { quarantine: false });
      l.charge(&w, Outcome::Ok, MS, now);
      l.finish(&w, || now);
    }
    assert_eq!(l.throttled(), 0);
    assert!(l.accounts.is_empty());
  }

  #[test]
  fn memory_kills_count_and_name_their_limit() {
    let mut l = ledger();
    let t0 = Instant::now();
    let w = name("hog");
    l.charge(&w, Outcome::MemoryLimit, 300 * MS, t0);
    assert!(matches!(
      l.admit(&w, || t0),
      Admission::Throttled {
        limit: Outcome::MemoryLimit,
        ..
      }
    ));
  }

  #[test]
  fn neighbours_are_not_affected_and_the_switch_turns_it_off() {
    let mut l = ledger();
    let t0 = Instant::now();
    let (bad, good) = (name("spin"), name("hello"));
    for _ in 0..10 {
      runaway(&mut l, &bad, 50 * MS, t0);
    }
    assert!(matches!(l.admit(&bad, || t0), Admission::Throttled { .. }));
    assert_eq!(l.admit(&good, || t0), Admission::Run { quarantine: false });

    let mut off = Ledger::new(Fairness::default().enabled(false));
    for _ in 0..10 {
      runaway(&mut off, &bad, 50 * MS, t0);
    }
    assert_eq!(off.admit(&bad, || t0), Admission::Run { quarantine: false });
  }
}
