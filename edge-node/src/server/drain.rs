//! Draining the HTTP front's connections at shutdown: each is asked to
//! finish its request in flight and close, and shutdown waits until all
//! have.
//!
//! hyper_util's `GracefulShutdown` did this by polling a `watch` receiver
//! each time a connection's task was polled: twice a request, ~340
//! instructions of a ~30,000-instruction `hello` request
//! (`bench/instructions.py`). Here a connection reads one flag per poll;
//! its task's waker waits in the drain's list, so that starting the
//! shutdown wakes connections idle between requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::task::Context;
use std::task::Poll;
use std::task::Waker;

use slab::Slab;
use tokio::sync::Notify;

#[derive(Default)]
struct Shared {
  closing: AtomicBool,
  /// One per connection not yet ended: the waker of its task.
  conns: Mutex<Slab<Waker>>,
  /// Notified when the last connection ends after `closing`.
  idle: Notify,
}

impl Shared {
  fn conns(&self) -> MutexGuard<'_, Slab<Waker>> {
    self
      .conns
      .lock()
      .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let key = self.shared.conns().insert(Waker::noop().clone());
    Ticket {
      shared: self.shared.clone(),
      key,
      waker: None,
    }
  }

  /// Asks every connection to close once its request in flight is answered
  /// (waking those that wait for a request), and waits until all have ended.
  pub(crate) async fn shutdown(self) {
    let shared = self.shared;
    shared.closing.store(true, Ordering::SeqCst);
    for (_, waker) in shared.conns().iter() {
      waker.wake_by_ref();
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
}

impl Ticket {
  /// Serves `conn` until it ends, calling `close` on it once the drain
  /// starts.
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
      if let Some(slot) = self.shared.conns().get_mut(self.key) {
        slot.clone_from(&waker);
      }
      self.waker = Some(waker);
    }
    // Read after the waker is in the list (under its lock), so a drain
    // that starts meanwhile either wakes this waker or is seen here.
    self.shared.closing.load(Ordering::SeqCst)
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
  type Output = C::Output;

  fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
    let this = &mut *self;
    if this.close.is_some() && this.ticket.poll_closing(cx) {
      if let Some(close) = this.close.take() {
        close(this.conn.as_mut());
      }
    }
    this.conn.as_mut().poll(cx)
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

  fn conn(drain: &Drain) -> (impl Future<Output = ()>, Rc<Cell<bool>>) {
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
}
