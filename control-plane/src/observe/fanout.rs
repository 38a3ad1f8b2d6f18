//! Live tails of each worker: every matching event goes to each tail's
//! bounded queue. A tail whose queue is full is cut off (its client reads
//! too slowly) rather than buffered without bound or allowed to hold up the
//! edges' calls. Plain data and `try_send`, so it is tested without sockets.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use isola_proto::trace::TraceEvent;
use tokio::sync::mpsc;

use super::filter::keep;
use super::filter::TailFilter;
use super::message::TailMessage;

/// One tail's end: its queue of JSON messages and whether it was cut off
/// for being slow (checked once the queue closes).
#[derive(Debug)]
pub struct TailReceiver {
  pub id: u64,
  pub rx: mpsc::Receiver<Arc<str>>,
  pub cut_off: Arc<AtomicBool>,
}

impl TailReceiver {
  pub fn was_cut_off(&self) -> bool {
    self.cut_off.load(Ordering::Relaxed)
  }
}

struct Tail {
  id: u64,
  filter: TailFilter,
  tx: mpsc::Sender<Arc<str>>,
  cut_off: Arc<AtomicBool>,
}

/// What one [`Fanout::publish`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
  pub sent: usize,
  /// Tails cut off because their queue was full.
  pub cut_off: usize,
}

#[derive(Default)]
pub struct Fanout {
  next_id: u64,
  /// By the worker's edge name.
  tails: HashMap<String, Vec<Tail>>,
}

impl Fanout {
  /// A new tail of `worker` holding at most `capacity` unsent messages.
  pub fn open(&mut self, worker: &str, filter: TailFilter, capacity: usize) -> TailReceiver {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let cut_off = Arc::new(AtomicBool::new(false));
    self.next_id += 1;
    let id = self.next_id;
    self
      .tails
      .entry(worker.to_string())
      .or_default()
      .push(Tail {
        id,
        filter,
        tx,
        cut_off: cut_off.clone(),
      });
    TailReceiver { id, rx, cut_off }
  }

  /// Forgets tail `id` (its client went away).
  pub fn close(&mut self, worker: &str, id: u64) {
    if let Some(tails) = self.tails.get_mut(worker) {
      tails.retain(|t| t.id != id);
      if tails.is_empty() {
        self.tails.remove(worker);
      }
    }
  }

  /// Tails open now.
  pub fn open_count(&self) -> usize {
    self.tails.values().map(Vec::len).sum()
  }

  /// Whether anyone tails `worker` (so events of others cost nothing).
  pub fn watched(&self, worker: &str) -> bool {
    self.tails.contains_key(worker)
  }

  /// Sends `event` to each of its worker's tails it matches; `uniform`
  /// draws from [0, 1) for tails that sample. The JSON is made once.
  pub fn publish(&mut self, event: &TraceEvent, uniform: &mut dyn FnMut() -> f64) -> Published {
    let mut done = Published::default();
    let Some(tails) = self.tails.get_mut(&event.worker) else {
      return done;
    };
    let mut json: Option<Arc<str>> = None;
    tails.retain(|tail| {
      if !tail.filter.matches(event) || !keep(tail.filter.sampling_rate, uniform()) {
        return true;
      }
      let message = json
        .get_or_insert_with(|| {
          serde_json::to_string(&TailMessage::from(event))
            .unwrap_or_default()
            .into()
        })
        .clone();
      match tail.tx.try_send(message) {
        Ok(()) => {
          done.sent += 1;
          true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
          tail.cut_off.store(true, Ordering::Relaxed);
          done.cut_off += 1;
          false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
      }
    });
    if tails.is_empty() {
      self.tails.remove(&event.worker);
    }
    done
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::observe::filter::tests::fetch;
  use crate::observe::filter::Status;

  fn all() -> TailFilter {
    TailFilter::default()
  }

  #[test]
  fn each_tail_gets_what_its_filter_passes() {
    let mut fanout = Fanout::default();
    let mut everything = fanout.open("acme_api", all(), 16);
    let mut errors = fanout.open(
      "acme_api",
      TailFilter {
        status: vec![Status::Error],
        ..all()
      },
      16,
    );
    let mut other = fanout.open("acme_web", all(), 16);
    assert_eq!(fanout.open_count(), 3);
    let mut half = || 0.5;
    let ok = fetch("ok", "GET", "https://a.test/");
    let failed = fetch("exception", "GET", "https://a.test/");
    assert_eq!(fanout.publish(&ok, &mut half).sent, 1);
    assert_eq!(fanout.publish(&failed, &mut half).sent, 2);
    assert_eq!(
      everything.rx.try_recv().unwrap().as_ref(),
      serde_json::to_string(&TailMessage::from(&ok)).unwrap()
    );
    assert!(everything.rx.try_recv().unwrap().contains("\"exception\""));
    assert!(errors.rx.try_recv().unwrap().contains("\"exception\""));
    assert!(errors.rx.try_recv().is_err());
    assert!(other.rx.try_recv().is_err());
  }

  #[test]
  fn a_sampling_tail_gets_its_share() {
    let mut fanout = Fanout::default();
    let mut tail = fanout.open(
      "acme_api",
      TailFilter {
        sampling_rate: 0.25,
        ..all()
      },
      1000,
    );
    let mut i = 0u32;
    let mut spread = || {
      i += 1;
      f64::from(i % 100) / 100.0
    };
    let event = fetch("ok", "GET", "https://a.test/");
    for _ in 0..400 {
      fanout.publish(&event, &mut spread);
    }
    let mut got = 0;
    while tail.rx.try_recv().is_ok() {
      got += 1;
    }
    assert_eq!(got, 100);
  }

  #[test]
  fn a_slow_tail_is_cut_off_and_the_others_go_on() {
    let mut fanout = Fanout::default();
    let slow = fanout.open("acme_api", all(), 2);
    let mut fast = fanout.open("acme_api", all(), 2);
    let event = fetch("ok", "GET", "https://a.test/");
    let mut zero = || 0.0;
    for _ in 0..2 {
      assert_eq!(fanout.publish(&event, &mut zero).sent, 2);
      fast.rx.try_recv().unwrap();
    }
    // The slow tail's queue is full: the next event cuts it off.
    let done = fanout.publish(&event, &mut zero);
    assert_eq!(
      done,
      Published {
        sent: 1,
        cut_off: 1
      }
    );
    assert!(slow.was_cut_off());
    assert!(!fast.was_cut_off());
    assert_eq!(fanout.open_count(), 1);
    // What it had queued is still there to drain, then its queue ends.
    let mut slow = slow;
    assert!(slow.rx.try_recv().is_ok());
    assert!(slow.rx.try_recv().is_ok());
    assert!(matches!(
      slow.rx.try_recv(),
      Err(mpsc::error::TryRecvError::Disconnected)
    ));
    fast.rx.try_recv().unwrap();
  }

  #[test]
  fn closed_tails_are_forgotten() {
    let mut fanout = Fanout::default();
    let a = fanout.open("acme_api", all(), 2);
    let b = fanout.open("acme_api", all(), 2);
    fanout.close("acme_api", a.id);
    assert_eq!(fanout.open_count(), 1);
    // A receiver dropped without close goes at the next publish.
    drop(b);
    let done = fanout.publish(&fetch("ok", "GET", "https://a.test/"), &mut || 0.0);
    assert_eq!(done, Published::default());
    assert_eq!(fanout.open_count(), 0);
    assert!(!fanout.watched("acme_api"));
  }
}
