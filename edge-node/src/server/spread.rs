//! Spreading one listener's connections over the accept loops of the V8
//! threads. Every loop accepts on the same socket, and whichever thread
//! was idle when a burst of connections came took them all: with wrk's 50
//! connections on two threads, one thread served most of them and a
//! second thread added nothing to the first's throughput. Now a loop that
//! holds more than its share of the open connections leaves the next one to
//! the others; if none of them takes it within [`GRACE`] (they are busy: a
//! long turn of JS), it accepts after all.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// How long a loop over its share waits for the others to accept.
const GRACE: Duration = Duration::from_millis(2);

/// The open connections of each accept loop of one listener.
pub(crate) struct Spread {
  open: Box<[AtomicUsize]>,
  /// Notified whenever a count changes.
  changed: Notify,
}

impl Spread {
  pub(crate) fn new(loops: usize) -> Arc<Self> {
    Arc::new(Self {
      open: (0..loops.max(1)).map(|_| AtomicUsize::new(0)).collect(),
      changed: Notify::new(),
    })
  }

  /// Waits until loop `me` may accept the next connection: it holds no
  /// more than its share, or the others have left it waiting [`GRACE`].
  pub(crate) async fn turn(&self, me: usize) {
    let grace = tokio::time::sleep(GRACE);
    tokio::pin!(grace);
    loop {
      let changed = self.changed.notified();
      tokio::pin!(changed);
      // Registered before the counts are read: a change after the read
      // still wakes this loop.
      changed.as_mut().enable();
      if !self.over(me) {
        return;
      }
      tokio::select! {
        () = &mut changed => {}
        () = &mut grace => return,
      }
    }
  }

  fn over(&self, me: usize) -> bool {
    let mine = self.open[me].load(Ordering::Relaxed);
    let least = self
      .open
      .iter()
      .enumerate()
      .filter(|&(i, _)| i != me)
      .map(|(_, n)| n.load(Ordering::Relaxed))
      .min();
    least.is_some_and(|least| over_share(mine, least))
  }

  /// Counts a connection of loop `me` in until the returned hold is
  /// dropped.
  pub(crate) fn hold(self: &Arc<Self>, me: usize) -> Hold {
    self.open[me].fetch_add(1, Ordering::Relaxed);
    self.changed.notify_waiters();
    Hold {
      spread: self.clone(),
      me,
    }
  }
}

/// Whether a loop holding `mine` connections leaves the next one to a loop
/// holding `least`: one ahead is even enough (the connections come one at a
/// time), and an eighth more than the least loaded loop's share is the
/// noise of connections coming and going.
fn over_share(mine: usize, least: usize) -> bool {
  mine > least + 1 + least / 8
}

/// One open connection, counted in its loop's share.
pub(crate) struct Hold {
  spread: Arc<Spread>,
  me: usize,
}

impl Drop for Hold {
  fn drop(&mut self) {
    self.spread.open[self.me].fetch_sub(1, Ordering::Relaxed);
    self.spread.changed.notify_waiters();
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_loop_over_its_share_leaves_the_next_connection_to_the_others() {
    assert!(!over_share(0, 0));
    assert!(!over_share(1, 0));
    assert!(over_share(2, 0));
    assert!(!over_share(28, 24));
    assert!(over_share(29, 24));
    // Many connections: an eighth's slack.
    assert!(!over_share(91, 80));
    assert!(over_share(92, 80));
  }

  #[tokio::test]
  async fn counts_follow_the_holds_and_a_busy_neighbour_only_delays() {
    let spread = Spread::new(2);
    let a = spread.hold(0);
    let b = spread.hold(0);
    assert!(spread.over(0) && !spread.over(1));
    // Loop 1 takes the next one: loop 0 may go on.
    let waiting = tokio::spawn({
      let spread = spread.clone();
      async move { spread.turn(0).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    let c = spread.hold(1);
    waiting.await.unwrap();
    // Loop 1 accepts nothing more: loop 0 waits out the grace, no longer.
    let d = spread.hold(0);
    assert!(spread.over(0));
    let start = std::time::Instant::now();
    spread.turn(0).await;
    assert!(start.elapsed() >= GRACE);
    drop((a, b, c, d));
    assert!(spread.open.iter().all(|n| n.load(Ordering::Relaxed) == 0));
    // A single loop is never over its share.
    let one = Spread::new(1);
    let _held: Vec<Hold> = (0..10).map(|_| one.hold(0)).collect();
    assert!(!one.over(0));
  }
}
