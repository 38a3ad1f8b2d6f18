//! The connections of one accept loop: drained at shutdown (each is asked
//! to finish its request in flight and close, and shutdown waits until all
//! have), and cut off when an HTTP/1 connection waits too long for a
//! request head.
//!
//! hyper_util's `GracefulShutdown` did the drain by polling a `watch`
//! receiver each time a connection's task was polled: twice a request, ~340
//! instructions of a ~30,000-instruction `hello` request
//! (`bench/instructions.py`). Here a connection reads one flag per poll;
//! its task's waker waits in the drain's list, so that starting the
//! shutdown wakes connections idle between requests.
//!
//! The head deadline was hyper's `header_read_timeout`. With it set, hyper
//! armed a timer each time a kept-alive connection waited for a head, and
//! after each response tried one more read to start it: ~950 of a `dev`
//! `hello` request's ~15,100 instructions. Here a connection's
//! [`HeadClock`] notes when a head arrives and when its answer ends (a
//! plain store each), and a sweep of the list every [`SWEEP`] cuts off the
//! connections it has seen waiting for a head for the whole timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::task::Context;
use std::task::Poll;
use std::task::Waker;
use std::time::Duration;
use std::time::Instant;

use hyper::body::Body;
use hyper::body::Frame;
use hyper::body::SizeHint;
use slab::Slab;
use tokio::sync::Notify;

/// How often the head deadlines are swept: a connection is cut off up to
/// two sweeps (a second) after its deadline, never before.
const SWEEP: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Shared {
  closing: AtomicBool,
  /// One per connection not yet ended.
  conns: Mutex<Slab<Entry>>,
  /// Notified when the last connection ends after `closing`.
  idle: Notify,
}

impl Shared {
  fn conns(&self) -> MutexGuard<'_, Slab<Entry>> {
    self
      .conns
      .lock()
      .unwrap_or_else(std::sync::PoisonError::into_inner)
  }

  /// Cuts off the connections whose clocks the sweeps have seen waiting
  /// for the same head for `timeout` or longer at `now`, waking them.
  /// Sans-IO: [`Drain::sweeper`] calls it every [`SWEEP`].
  fn sweep(&self, now: Instant, timeout: Duration) {
    for (_, entry) in self.conns().iter_mut() {
      let Some(heads) = &mut entry.heads else {
        continue;
      };
      let state = heads.clock.state.load(Ordering::Relaxed);
      if state != heads.seen {
        // A head arrived or an answer ended since the last sweep: a wait
        // that began then is counted from now.
        heads.seen = state;
        heads.since = now;
      } else if HeadClock::waits(state)
        && now.saturating_duration_since(heads.since) >= timeout
        && !heads.clock.cut.swap(true, Ordering::SeqCst)
      {
        entry.waker.wake_by_ref();
      }
    }
  }
}

/// A connection in its drain's list.
struct Entry {
  /// The waker of its task.
  waker: Waker,
  /// Its head clock once it is known to speak HTTP/1.
  heads: Option<Timed>,
}

/// A [`HeadClock`] with what the sweeps saw of it.
struct Timed {
  clock: Arc<HeadClock>,
  /// Its state at the last sweep.
  seen: u64,
  /// When it was first seen in that state: the wait began at most one
  /// sweep earlier.
  since: Instant,
}

/// Whether an HTTP/1 connection waits for a request head. Only its
/// connection's task changes it (hyper calls the service and drops the
/// answer's body there), so a load and a store do; an HTTP/2 connection
/// serves its streams on other tasks, and its clock is never read.
#[derive(Debug)]
pub(crate) struct HeadClock {
  /// Odd while the connection waits for a head (from its start and from
  /// the end of each answer), even while it serves a request; every change
  /// makes it larger, so a sweep tells a new wait from an old one.
  state: AtomicU64,
  /// Set by the sweep that cut the connection off.
  cut: AtomicBool,
}

impl Default for HeadClock {
  fn default() -> Self {
    Self {
      state: AtomicU64::new(1),
      cut: AtomicBool::new(false),
    }
  }
}

impl HeadClock {
  fn waits(state: u64) -> bool {
    state & 1 == 1
  }

  /// A request head arrived: its request is served from now.
  pub(crate) fn head(&self) {
    let state = self.state.load(Ordering::Relaxed);
    self.state.store((state | 1) + 1, Ordering::Relaxed);
  }

  /// An answer ended: the next head is waited for from now.
  fn answered(&self) {
    let state = self.state.load(Ordering::Relaxed);
    self.state.store(state | 1, Ordering::Relaxed);
  }
}

/// A response body that tells its connection's [`HeadClock`] when it ends:
/// when hyper drops it, written out or given up.
pub(crate) struct Answered<B> {
  body: B,
  clock: Arc<HeadClock>,
}

impl<B> Answered<B> {
  pub(crate) fn new(body: B, clock: Arc<HeadClock>) -> Self {
    Self { body, clock }
  }
}

impl<B: Body + Unpin> Body for Answered<B> {
  type Data = B::Data;
  type Error = B::Error;

  fn poll_frame(
    self: Pin<&mut Self>,
    cx: &mut Context<'_>,
  ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
    Pin::new(&mut self.get_mut().body).poll_frame(cx)
  }

  fn is_end_stream(&self) -> bool {
    self.body.is_end_stream()
  }

  fn size_hint(&self) -> SizeHint {
    self.body.size_hint()
  }
}

impl<B> Drop for Answered<B> {
  fn drop(&mut self) {
    self.clock.answered();
  }
}

/// The connections of one accept loop.
#[derive(Default)]
pub(crate) struct Drain {
  shared: Arc<Shared>,
}

impl Drain {
  /// Counts a connection from now (before its TLS handshake, say) until the
  /// ticket is dropped.
  pub(crate) fn ticket(&self) -> Ticket {
    let key = self.shared.conns().insert(Entry {
      waker: Waker::noop().clone(),
      heads: None,
    });
    Ticket {
      shared: self.shared.clone(),
      key,
      waker: None,
      heads: None,
    }
  }

  /// Sweeps the head deadlines every [`SWEEP`] (`timeout` each) until the
  /// drain and its last ticket are gone.
  pub(crate) fn sweeper(&self, timeout: Duration) -> impl Future<Output = ()> + Send + 'static {
    let shared = Arc::downgrade(&self.shared);
    async move {
      let mut every = tokio::time::interval(SWEEP);
      every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
      loop {
        every.tick().await;
        let Some(shared) = shared.upgrade() else {
          return;
        };
        shared.sweep(Instant::now(), timeout);
      }
    }
  }

  /// Asks every connection to close once its request in flight is answered
  /// (waking those that wait for a request), and waits until all have ended.
  pub(crate) async fn shutdown(self) {
    let shared = self.shared;
    shared.closing.store(true, Ordering::SeqCst);
    for (_, entry) in shared.conns().iter() {
      entry.waker.wake_by_ref();
    }
    loop {
      let idle = shared.idle.notified();
      let mut idle = std::pin::pin!(idle);
      idle.as_mut().enable();
      if shared.conns().is_empty() {
        return;
      }
      idle.await;
    }
  }
}

/// A connection's place in its [`Drain`].
pub(crate) struct Ticket {
  shared: Arc<Shared>,
  key: usize,
  /// The waker last left in the drain's list.
  waker: Option<Waker>,
  /// The head clock, once the sweeps time it.
  heads: Option<Arc<HeadClock>>,
}

impl Ticket {
  /// Times this connection's request heads with `clock` from `now` on
  /// (its service and answers keep the clock): once the sweeps have seen it
  /// wait for one head for their whole timeout, [`Ticket::watch`] ends.
  pub(crate) fn time_heads(&mut self, clock: Arc<HeadClock>, now: Instant) {
    if let Some(entry) = self.shared.conns().get_mut(self.key) {
      entry.heads = Some(Timed {
        seen: clock.state.load(Ordering::Relaxed),
        since: now,
        clock: clock.clone(),
      });
    }
    self.heads = Some(clock);
  }

  /// Serves `conn` until it ends (`Some`) or its head clock is cut off
  /// (`None`), calling `close` on it once the drain starts.
  pub(crate) fn watch<C, F>(self, conn: C, close: F) -> Draining<C, F>
  where
    C: Future,
    F: FnOnce(Pin<&mut C>) + Unpin,
  {
    Draining {
      conn: Box::pin(conn),
      close: Some(close),
      ticket: self,
    }
  }

  /// Ends once the drain has started: for what a connection waits for
  /// before it is served (its first bytes, its TLS handshake).
  pub(crate) async fn closing(&mut self) {
    std::future::poll_fn(|cx| {
      if self.poll_closing(cx) {
        Poll::Ready(())
      } else {
        Poll::Pending
      }
    })
    .await
  }

  /// Whether the drain has started; leaves this task's waker to be woken
  /// when it does.
  fn poll_closing(&mut self, cx: &mut Context<'_>) -> bool {
    if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
      let waker = cx.waker().clone();
      if let Some(entry) = self.shared.conns().get_mut(self.key) {
        entry.waker.clone_from(&waker);
      }
      self.waker = Some(waker);
    }
    // Read after the waker is in the list (under its lock), so a drain
    // that starts meanwhile either wakes this waker or is seen here.
    self.shared.closing.load(Ordering::SeqCst)
  }

  /// Whether a sweep cut the connection off; read after
  /// [`Ticket::poll_closing`] left the waker that the sweep wakes.
  fn is_cut(&self) -> bool {
    self
      .heads
      .as_ref()
      .is_some_and(|clock| clock.cut.load(Ordering::SeqCst))
  }
}

impl Drop for Ticket {
  fn drop(&mut self) {
    let mut conns = self.shared.conns();
    conns.try_remove(self.key);
    if conns.is_empty() && self.shared.closing.load(Ordering::SeqCst) {
      self.shared.idle.notify_waiters();
    }
  }
}

/// A connection served under a [`Drain`] (see [`Ticket::watch`]).
pub(crate) struct Draining<C, F> {
  conn: Pin<Box<C>>,
  close: Option<F>,
  ticket: Ticket,
}

impl<C, F> Future for Draining<C, F>
where
  C: Future,
  F: FnOnce(Pin<&mut C>) + Unpin,
{
  type Output = Option<C::Output>;

  fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<C::Output>> {
    let this = &mut *self;
    if this.close.is_some() && this.ticket.poll_closing(cx) {
      if let Some(close) = this.close.take() {
        close(this.conn.as_mut());
      }
    }
    if this.ticket.is_cut() {
      return Poll::Ready(None);
    }
    this.conn.as_mut().poll(cx).map(Some)
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::cell::Cell;
  use std::rc::Rc;
  use std::time::Duration;

  /// A connection that ends one poll after it is asked to close.
  struct Conn {
    asked: Rc<Cell<bool>>,
  }
  impl Future for Conn {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
      if self.asked.get() {
        Poll::Ready(())
      } else {
        Poll::Pending
      }
    }
  }

  fn conn(drain: &Drain) -> (impl Future<Output = Option<()>>, Rc<Cell<bool>>) {
    let asked = Rc::new(Cell::new(false));
    let conn = Conn {
      asked: asked.clone(),
    };
    let watched = drain
      .ticket()
      .watch(conn, |c: Pin<&mut Conn>| c.asked.set(true));
    (watched, asked)
  }

  #[tokio::test(flavor = "current_thread")]
  async fn shutdown_wakes_idle_connections_and_waits_for_every_one() {
    // A drain that misses a wake-up hangs: bounded, so that it fails.
    let local = tokio::task::LocalSet::new();
    let run = local.run_until(async {
      let drain = Drain::default();
      let (a, asked_a) = conn(&drain);
      let (b, asked_b) = conn(&drain);
      let a = tokio::task::spawn_local(a);
      let b = tokio::task::spawn_local(b);
      // A ticket whose connection has not started yet (a TLS handshake)
      // is waited for too.
      let handshaking = drain.ticket();
      tokio::task::yield_now().await;
      assert!(
        !asked_a.get() && !asked_b.get(),
        "not asked before shutdown"
      );
      let shutdown = tokio::task::spawn_local(drain.shutdown());
      a.await.unwrap();
      b.await.unwrap();
      assert!(asked_a.get() && asked_b.get());
      tokio::task::yield_now().await;
      assert!(
        !shutdown.is_finished(),
        "the handshaking connection is still open"
      );
      drop(handshaking);
      tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown ends when the last connection does")
        .unwrap();
    });
    tokio::time::timeout(Duration::from_secs(20), run)
      .await
      .expect("every connection was asked to close");
  }

  #[tokio::test(flavor = "current_thread")]
  async fn a_connection_not_served_yet_is_told_when_the_drain_starts() {
    let drain = Drain::default();
    let mut ticket = drain.ticket();
    let shared = drain.shared.clone();
    let waiting = tokio::spawn(async move {
      ticket.closing().await;
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "no drain yet");
    let shutdown = tokio::spawn(drain.shutdown());
    tokio::time::timeout(Duration::from_secs(10), waiting)
      .await
      .expect("the drain wakes it")
      .unwrap();
    assert!(shared.closing.load(Ordering::SeqCst));
    tokio::time::timeout(Duration::from_secs(10), shutdown)
      .await
      .expect("shutdown ends once its ticket is gone")
      .unwrap();
  }

  #[tokio::test(flavor = "current_thread")]
  async fn a_connection_that_starts_after_the_drain_closes_at_once() {
    let drain = Drain::default();
    let ticket = drain.ticket();
    let shared = drain.shared.clone();
    let shutdown = tokio::spawn(drain.shutdown());
    tokio::task::yield_now().await;
    assert!(shared.closing.load(Ordering::SeqCst));
    let asked = Rc::new(Cell::new(false));
    let conn = Conn {
      asked: asked.clone(),
    };
    ticket
      .watch(conn, |c: Pin<&mut Conn>| c.asked.set(true))
      .await;
    assert!(asked.get());
    tokio::time::timeout(Duration::from_secs(10), shutdown)
      .await
      .expect("shutdown ends")
      .unwrap();
  }

  /// A clock timed from `t0`, as `Ticket::time_heads` leaves it in the
  /// list.
  fn timed(drain: &Drain, t0: Instant) -> (Ticket, Arc<HeadClock>) {
    let mut ticket = drain.ticket();
    let clock = Arc::new(HeadClock::default());
    ticket.time_heads(clock.clone(), t0);
    (ticket, clock)
  }

  fn cut(clock: &HeadClock) -> bool {
    clock.cut.load(Ordering::SeqCst)
  }

  #[test]
  fn a_connection_is_cut_off_only_after_waiting_the_whole_timeout_for_one_head() {
    let drain = Drain::default();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let timeout = Duration::from_secs(1);
    let sweep = |ms| drain.shared.sweep(at(ms), timeout);

    // Waiting for its first head since it was timed.
    let (_first, first) = timed(&drain, t0);
    // Served a request longer than the timeout, then waiting again.
    let (_busy, busy) = timed(&drain, t0);
    busy.head();
    // Kept alive by a request every sweep: each wait is a new one.
    let (_lively, lively) = timed(&drain, t0);
    // Never timed (HTTP/2, or before its protocol is known).
    let _untimed = drain.ticket();

    sweep(500);
    sweep(900);
    assert!(!cut(&first), "900 ms of a 1 s timeout");
    for ms in [1500, 2000, 2500, 3000] {
      lively.head();
      lively.answered();
      sweep(ms);
    }
    assert!(cut(&first), "cut at the first sweep after its deadline");
    assert!(!cut(&busy), "a request in progress is not waiting");
    assert!(!cut(&lively));

    busy.answered();
    sweep(3500); // Seen waiting from here.
    sweep(4400);
    assert!(!cut(&busy), "waiting 900 ms since a sweep saw it answer");
    sweep(4500);
    assert!(cut(&busy));

    // Answers that end out of turn (never for HTTP/1) do not start a new
    // wait, and a clock only counts up.
    let clock = HeadClock::default();
    clock.answered();
    assert_eq!(clock.state.load(Ordering::Relaxed), 1);
    clock.head();
    clock.head();
    assert_eq!(clock.state.load(Ordering::Relaxed), 4);
    clock.answered();
    clock.answered();
    assert_eq!(clock.state.load(Ordering::Relaxed), 5);
  }

  #[tokio::test(flavor = "current_thread")]
  async fn a_connection_cut_off_by_a_sweep_ends_its_watch() {
    let drain = Drain::default();
    let t0 = Instant::now();
    let (ticket, _clock) = timed(&drain, t0);
    let asked = Rc::new(Cell::new(false));
    let watched = ticket.watch(
      Conn {
        asked: asked.clone(),
      },
      |c: Pin<&mut Conn>| c.asked.set(true),
    );
    let local = tokio::task::LocalSet::new();
    local
      .run_until(async {
        let watched = tokio::task::spawn_local(watched);
        tokio::task::yield_now().await;
        assert!(!watched.is_finished(), "the connection waits");
        // Two sweeps: one that sees the wait, one past the deadline.
        drain.shared.sweep(t0, Duration::from_secs(1));
        drain
          .shared
          .sweep(t0 + Duration::from_secs(1), Duration::from_secs(1));
        let ended = tokio::time::timeout(Duration::from_secs(10), watched)
          .await
          .expect("the sweep wakes it")
          .unwrap();
        assert_eq!(ended, None, "cut off, not ended by the connection");
      })
      .await;
    assert!(!asked.get(), "not drained: no shutdown");
    // Its ticket is gone with it.
    assert!(drain.shared.conns().is_empty());
  }

  #[tokio::test(flavor = "current_thread")]
  async fn the_sweeper_ends_with_its_drain() {
    let drain = Drain::default();
    let sweeper = tokio::spawn(drain.sweeper(Duration::from_secs(1)));
    let ticket = drain.ticket();
    drop(drain);
    tokio::task::yield_now().await;
    assert!(!sweeper.is_finished(), "a ticket is left");
    drop(ticket);
    tokio::time::timeout(Duration::from_secs(10), sweeper)
      .await
      .expect("no ticket, no drain: the sweeper ends")
      .unwrap();
  }
}
