//! Which replica does the work that must happen once (cron ticks, queue
//! deliveries): the holder of a lease row in the shared database. Sans-IO,
//! like the scheduler: [`Lease`] is told the time and the result of each
//! attempt and says when to try next and whether it leads; `run` in
//! `driver` is its one IO loop.
//!
//! The rules:
//! - A replica writes `expires_at = now + ttl` when the row is free,
//!   expired or already its own; it leads only while the expiry it wrote
//!   last is more than `margin` away, so it stops before another replica may
//!   start, even when its renewals fail.
//! - It renews every `renew_every`; a standby tries as often, so leadership
//!   moves within about `ttl + renew_every` of a holder dying.
//! - The replicas' clocks must agree to well within `margin` (NTP).

/// Ms since the Unix epoch.
pub type Millis = i64;

/// Whether this replica leads now; the drivers of once-only work follow it.
pub type Leading = tokio::sync::watch::Receiver<bool>;

/// Leadership that never ends: one process on its own SQLite file.
pub fn always() -> Leading {
  let (tx, rx) = tokio::sync::watch::channel(true);
  // Kept: a closed channel would read as a change.
  std::mem::forget(tx);
  rx
}

/// Resolves when leadership may have changed; never, once nothing can
/// change it.
pub async fn changed(leading: &mut Leading) {
  if leading.changed().await.is_err() {
    std::future::pending::<()>().await;
  }
}

/// How a standby's wait ended.
enum Standby {
  Leading,
  Closed,
}

/// A driver of once-only work (the scheduler's, the queues'): what it does
/// while another replica leads, how it loads its state when the lease
/// comes to it (as after a restart), and its run.
pub trait OnceOnly {
  type State;
  /// What its handles send it.
  type Msg: Send;
  /// Names the work in log lines.
  const WORK: &'static str;
  /// Its handles' messages, and the leadership it follows.
  fn channels(
    &mut self,
  ) -> (
    &mut tokio::sync::mpsc::UnboundedReceiver<Self::Msg>,
    &mut Leading,
  );
  /// Handles a message that came while another replica leads.
  fn standing_by(&mut self, msg: Self::Msg) -> impl std::future::Future<Output = ()> + Send;
  fn load(&mut self) -> impl std::future::Future<Output = crate::db::Result<Self::State>> + Send;
  /// Runs until leadership ends (false) or every handle is gone (true).
  fn run(&mut self, state: Self::State) -> impl std::future::Future<Output = bool> + Send;
}

/// Waits while another replica leads, handing `driver` what comes meanwhile.
async fn standby<D: OnceOnly>(driver: &mut D) -> Standby {
  loop {
    let msg = {
      let (rx, leading) = driver.channels();
      if *leading.borrow() {
        return Standby::Leading;
      }
      tokio::select! {
        msg = rx.recv() => match msg {
          Some(msg) => msg,
          None => return Standby::Closed,
        },
        () = changed(leading) => continue,
      }
    };
    driver.standing_by(msg).await;
  }
}

/// Stands `driver` by, loads and runs it as leadership comes and goes;
/// `first` is the state loaded at start when this replica led then.
pub async fn supervise<D: OnceOnly>(mut driver: D, mut first: Option<D::State>) {
  loop {
    let state = match first.take() {
      Some(state) => state,
      None => {
        if let Standby::Closed = standby(&mut driver).await {
          return;
        }
        match driver.load().await {
          Ok(state) => {
            tracing::info!(work = D::WORK, "leading; state loaded");
            state
          }
          Err(e) => {
            tracing::error!(work = D::WORK, error = %e, "cannot load the state; retrying");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
          }
        }
      }
    };
    if driver.run(state).await {
      return;
    }
    tracing::info!(
      work = D::WORK,
      "no longer leading; another replica has this work"
    );
  }
}

/// Timing of a [`Lease`].
#[derive(Clone, Copy, Debug)]
pub struct Timing {
  /// How long a written lease lasts. Default: 5 s.
  pub ttl: Millis,
  /// How often the holder renews and a standby tries. Default: 1 s.
  pub renew_every: Millis,
  /// How long before its expiry the holder stops. Default: 1 s.
  pub margin: Millis,
}

impl Default for Timing {
  fn default() -> Self {
    Self {
      ttl: 5_000,
      renew_every: 1_000,
      margin: 1_000,
    }
  }
}

/// One replica's view of the lease.
#[derive(Debug)]
pub struct Lease {
  timing: Timing,
  /// The expiry this replica wrote last, if it holds the lease.
  held_until: Option<Millis>,
  next_attempt: Millis,
}

/// What an attempt changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
  None,
  Acquired,
  Lost,
}

impl Lease {
  pub fn new(timing: Timing) -> Self {
    Self {
      timing,
      held_until: None,
      next_attempt: 0,
    }
  }

  /// Whether this replica may do the once-only work at `now`.
  pub fn leading(&self, now: Millis) -> bool {
    self
      .held_until
      .is_some_and(|until| now < until - self.timing.margin)
  }

  /// When to attempt next (and check [`Self::leading`] again).
  pub fn next_wakeup(&self) -> Millis {
    match self.held_until {
      Some(until) => self.next_attempt.min(until - self.timing.margin),
      None => self.next_attempt,
    }
  }

  /// The expiry to write if an attempt is due at `now`.
  pub fn due(&self, now: Millis) -> Option<Millis> {
    (now >= self.next_attempt).then_some(now + self.timing.ttl)
  }

  /// The result of the attempt made at `now` that wrote `until`: `Ok(true)`
  /// the row is ours, `Ok(false)` another replica holds it, `Err` the
  /// database did not answer (the lease runs out on its own).
  pub fn attempted(&mut self, now: Millis, until: Millis, result: Result<bool, ()>) -> Change {
    let was = self.leading(now);
    self.next_attempt = now + self.timing.renew_every;
    match result {
      Ok(true) => self.held_until = Some(until),
      Ok(false) => self.held_until = None,
      Err(()) => {}
    }
    self.change(was, now)
  }

  /// What the passing of time alone changed by `now` (a holder whose
  /// renewals fail stops at its expiry minus the margin).
  pub fn expire(&mut self, now: Millis) -> Change {
    let was = self.held_until.is_some();
    if !self.leading(now) {
      self.held_until = None;
    }
    self.change(was, now)
  }

  fn change(&self, was: bool, now: Millis) -> Change {
    match (was, self.leading(now)) {
      (false, true) => Change::Acquired,
      (true, false) => Change::Lost,
      _ => Change::None,
    }
  }
}

/// The lease row's name.
const NAME: &str = "once-only-work";

/// Real time, ms since the Unix epoch: leases outlive test clocks.
fn wall_now() -> Millis {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Follows the lease as replica `holder` and says whether it leads. On a
/// store only this process uses (SQLite) it always leads.
pub fn start(db: crate::db::Db, holder: String, timing: Timing) -> Leading {
  if !db.is_shared() {
    return always();
  }
  let (tx, rx) = tokio::sync::watch::channel(false);
  tokio::spawn(async move {
    let mut lease = Lease::new(timing);
    let mut failing = false;
    let mut first = true;
    loop {
      let now = wall_now();
      if let Some(until) = lease.due(now) {
        let (db2, h) = (db.clone(), holder.clone());
        let call = crate::db::blocking(move || db2.try_lease(NAME, &h, now, until));
        // A database that hangs must not keep a holder past its expiry.
        let wait = std::time::Duration::from_millis(timing.renew_every.unsigned_abs());
        let result = match tokio::time::timeout(wait, call).await {
          Ok(Ok(ours)) => Ok(ours),
          Ok(Err(e)) => Err(e.to_string()),
          Err(_) => Err("no answer in time".to_string()),
        };
        match &result {
          Err(e) if !failing => {
            tracing::warn!(error = %e, "cannot renew the lease on once-only work");
          }
          _ => {}
        }
        failing = result.is_err();
        lease.attempted(wall_now(), until, result.map_err(|_| ()));
      }
      lease.expire(wall_now());
      let leading = lease.leading(wall_now());
      if std::mem::take(&mut first) && !leading {
        tracing::info!(replica = %holder, "standing by: another replica runs cron and queue deliveries");
      }
      tx.send_if_modified(|v| {
        if *v == leading {
          return false;
        }
        *v = leading;
        if leading {
          tracing::info!(replica = %holder, "leading: this replica runs cron and queue deliveries");
        } else {
          tracing::info!(replica = %holder, "standing by: another replica runs cron and queue deliveries");
        }
        true
      });
      let left = (lease.next_wakeup() - wall_now()).clamp(10, timing.renew_every);
      tokio::time::sleep(std::time::Duration::from_millis(left.unsigned_abs())).await;
    }
  });
  rx
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_standby_takes_over_within_ttl_and_a_failing_holder_stops_first() {
    let t = Timing::default();
    let mut a = Lease::new(t);
    let mut b = Lease::new(t);
    // A wins the free row.
    let until = a.due(0).unwrap();
    assert_eq!(a.attempted(0, until, Ok(true)), Change::Acquired);
    assert!(a.leading(0));
    let until_b = b.due(0).unwrap();
    assert_eq!(b.attempted(0, until_b, Ok(false)), Change::None);
    assert!(!b.leading(0));
    assert_eq!(a.due(500), None);
    assert_eq!(a.next_wakeup(), 1_000);
    // A renews at 1 s; then its database calls fail from 2 s on.
    let until = a.due(1_000).unwrap();
    assert_eq!(a.attempted(1_000, until, Ok(true)), Change::None);
    for now in [2_000, 3_000, 4_000] {
      let until = a.due(now).unwrap();
      assert_eq!(a.attempted(now, until, Err(())), Change::None);
      assert!(a.leading(now));
    }
    // Written expiry 6 s, margin 1 s: A stops at 5 s...
    assert_eq!(a.next_wakeup(), 5_000);
    assert_eq!(a.expire(5_000), Change::Lost);
    assert!(!a.leading(5_000));
    // ...and B, which the database refuses until the row expires at 6 s,
    // takes it then.
    let until_b = b.due(5_000).unwrap();
    assert_eq!(b.attempted(5_000, until_b, Ok(false)), Change::None);
    let until_b = b.due(6_000).unwrap();
    assert_eq!(b.attempted(6_000, until_b, Ok(true)), Change::Acquired);
    assert!(b.leading(6_000) && !a.leading(6_000));
  }

  #[test]
  fn a_holder_told_another_replica_holds_the_row_stops_at_once() {
    let mut a = Lease::new(Timing::default());
    let until = a.due(0).unwrap();
    a.attempted(0, until, Ok(true));
    let until = a.due(1_000).unwrap();
    assert_eq!(a.attempted(1_000, until, Ok(false)), Change::Lost);
    assert!(!a.leading(1_000));
  }
}
