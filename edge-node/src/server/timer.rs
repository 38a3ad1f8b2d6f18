//! hyper's timer for the HTTP/1 header-read deadline, at a second's grain,
//! for the connections `auto` serves (TLS clients that named no protocol);
//! the others' heads are timed by their drain (see `drain`).
//!
//! hyper arms that timer each time a kept-alive connection waits for its
//! next request head. With tokio's timer each arming made a `Sleep` (a
//! handle to the runtime), registered it in the timer wheel under the
//! driver's lock when first polled, and took it out again when the head
//! arrived: ~730 instructions of a ~30,000-instruction `hello` request
//! (`bench/instructions.py`). The deadline only cuts off clients too slow
//! to send a head (10 s by default), so a second's grain is enough: a sleep
//! puts its deadline in its thread's list, and a task of that thread wakes
//! the due ones once a second while the list is not empty.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::task::Context;
use std::task::Poll;
use std::task::Waker;
use std::time::Duration;
use std::time::Instant;

use slab::Slab;

/// How often a thread's due sleeps are woken: a deadline is met up to this
/// late.
const TICK: Duration = Duration::from_secs(1);

/// The deadlines of one thread's sleeps and their wakers. Sans-IO: time only
/// moves when [`Deadlines::advance`] is called.
#[derive(Default)]
struct Deadlines {
  /// The time of the last tick: a deadline is over once a tick has passed it.
  now: Option<Instant>,
  entries: Slab<(Instant, Waker)>,
  /// Whether a task ticks this list (it stops when the list is empty).
  ticking: bool,
}

impl Deadlines {
  fn is_due(&self, deadline: Instant) -> bool {
    self.now.is_some_and(|now| deadline <= now)
  }

  /// Moves time to `now` and wakes the sleeps that are due; they find out
  /// when polled. Returns whether any sleep is left to tick for.
  fn advance(&mut self, now: Instant) -> bool {
    self.now = Some(now);
    for (_, (deadline, waker)) in &self.entries {
      if *deadline <= now {
        waker.wake_by_ref();
      }
    }
    !self.entries.is_empty()
  }
}

#[derive(Default)]
struct List(Mutex<Deadlines>);

impl List {
  fn lock(&self) -> MutexGuard<'_, Deadlines> {
    self
      .0
      .lock()
      .unwrap_or_else(std::sync::PoisonError::into_inner)
  }
}

thread_local! {
  static THREAD_LIST: Arc<List> = Arc::new(List::default());
}

/// The [`hyper::rt::Timer`] for HTTP/1 header reads (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
  fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
    self.sleep_until(Instant::now() + duration)
  }

  fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
    Box::pin(CoarseSleep {
      deadline,
      entry: None,
    })
  }
}

/// Registered in its thread's list on its first pending poll, taken out
/// when done or dropped.
struct CoarseSleep {
  deadline: Instant,
  entry: Option<(Arc<List>, usize)>,
}

impl hyper::rt::Sleep for CoarseSleep {}

impl Future for CoarseSleep {
  type Output = ();

  fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
    let deadline = self.deadline;
    if let Some((list, key)) = &self.entry {
      let mut deadlines = list.lock();
      if !deadlines.is_due(deadline) {
        if let Some((_, waker)) = deadlines.entries.get_mut(*key) {
          if !waker.will_wake(cx.waker()) {
            waker.clone_from(cx.waker());
          }
        }
        return Poll::Pending;
      }
      deadlines.entries.try_remove(*key);
      drop(deadlines);
      self.entry = None;
      return Poll::Ready(());
    }
    let list = THREAD_LIST.with(Arc::clone);
    let mut deadlines = list.lock();
    if deadlines.is_due(deadline) {
      return Poll::Ready(());
    }
    let key = deadlines.entries.insert((deadline, cx.waker().clone()));
    let start = !std::mem::replace(&mut deadlines.ticking, true);
    // Started outside the lock: a runtime that is shutting down drops the
    // task at once, and its drop takes the lock.
    drop(deadlines);
    if start && !tick(list.clone()) {
      list.lock().ticking = false;
    }
    self.entry = Some((list, key));
    Poll::Pending
  }
}

impl Drop for CoarseSleep {
  fn drop(&mut self) {
    if let Some((list, key)) = self.entry.take() {
      list.lock().entries.try_remove(key);
    }
  }
}

/// Starts the task that ticks `list`, on the current runtime; false if
/// there is none (hyper's connections always run on one).
fn tick(list: Arc<List>) -> bool {
  let Ok(runtime) = tokio::runtime::Handle::try_current() else {
    return false;
  };
  /// If the task is dropped before the list empties (its runtime shut
  /// down), the next sleep starts another.
  struct Ticking(Option<Arc<List>>);
  impl Drop for Ticking {
    fn drop(&mut self) {
      if let Some(list) = self.0.take() {
        list.lock().ticking = false;
      }
    }
  }
  let mut ticking = Ticking(Some(list.clone()));
  runtime.spawn(async move {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
      interval.tick().await;
      let mut deadlines = list.lock();
      if !deadlines.advance(Instant::now()) {
        // Cleared under the lock that found the list empty, which a new
        // sleep takes to register: that sleep starts the next task.
        deadlines.ticking = false;
        drop(deadlines);
        ticking.0.take();
        return;
      }
    }
  });
  true
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::sync::atomic::AtomicUsize;
  use std::sync::atomic::Ordering;
  use std::task::Wake;

  struct Count(AtomicUsize);
  impl Wake for Count {
    fn wake(self: Arc<Self>) {
      self.0.fetch_add(1, Ordering::Relaxed);
    }
  }

  #[test]
  fn a_tick_wakes_only_the_sleeps_it_has_passed() {
    let t0 = Instant::now();
    let (early, late) = (
      Arc::new(Count(AtomicUsize::new(0))),
      Arc::new(Count(AtomicUsize::new(0))),
    );
    let mut d = Deadlines::default();
    assert!(!d.is_due(t0), "no tick yet: nothing is due");
    d.entries
      .insert((t0 + Duration::from_secs(2), Waker::from(early.clone())));
    d.entries
      .insert((t0 + Duration::from_secs(5), Waker::from(late.clone())));
    assert!(d.advance(t0 + Duration::from_secs(1)));
    assert_eq!(early.0.load(Ordering::Relaxed), 0);
    assert!(d.advance(t0 + Duration::from_secs(2)));
    assert_eq!(early.0.load(Ordering::Relaxed), 1);
    assert_eq!(late.0.load(Ordering::Relaxed), 0);
    assert!(d.is_due(t0 + Duration::from_secs(2)));
    assert!(!d.is_due(t0 + Duration::from_secs(5)));
    d.entries.clear();
    assert!(
      !d.advance(t0 + Duration::from_secs(3)),
      "nothing left to tick for"
    );
  }

  #[tokio::test(flavor = "current_thread")]
  async fn a_sleep_ends_after_its_deadline_and_leaves_no_entry() {
    let started = Instant::now();
    let sleep = hyper::rt::Timer::sleep(&CoarseTimer, Duration::from_millis(300));
    tokio::time::timeout(TICK * 10, sleep)
      .await
      .expect("the sleep ends");
    let waited = started.elapsed();
    assert!(
      waited >= Duration::from_millis(300),
      "not before its deadline: {waited:?}"
    );
    assert!(THREAD_LIST.with(|l| l.lock().entries.is_empty()));
  }

  #[tokio::test(flavor = "current_thread")]
  async fn a_dropped_sleep_leaves_its_list_and_the_ticking_stops() {
    let mut sleep = hyper::rt::Timer::sleep(&CoarseTimer, Duration::from_secs(60));
    let polled = std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
    assert!(polled.is_pending());
    assert_eq!(THREAD_LIST.with(|l| l.lock().entries.len()), 1);
    drop(sleep);
    assert!(THREAD_LIST.with(|l| l.lock().entries.is_empty()));
    // The ticker sees the empty list on its next tick and ends.
    tokio::time::sleep(TICK * 2).await;
    assert!(!THREAD_LIST.with(|l| l.lock().ticking));
    // The next sleep starts another.
    let sleep = hyper::rt::Timer::sleep(&CoarseTimer, Duration::from_millis(100));
    tokio::time::timeout(TICK * 10, sleep)
      .await
      .expect("a sleep after the ticking stopped still ends");
  }
}
