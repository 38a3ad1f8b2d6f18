//! Queue consumers across a fleet: when a batch goes out, and to which
//! edge.
//!
//! [`Dispatcher`] is sans-IO, like the cron scheduler: it keeps, per queue
//! with a consumer, how many messages are ready and since when, which are
//! delayed until when, and the batch in flight; it is fed the time, the
//! messages stored and settled, and the edges that come and go, and hands
//! back [`Action`]s for the driver to carry out against the database.
//!
//! - A batch goes out when `max_batch_size` messages are ready, or when the
//!   oldest ready one has waited `max_batch_timeout`.
//! - One batch per queue is in flight at a time; it goes to the consumer's
//!   edge by rendezvous hashing (the same ranking as cron ticks). An edge
//!   that does not accept it in time, or lacks the consumer, hands it to the
//!   next; an edge that vanishes mid-batch, or keeps it past the run
//!   timeout, has it released: every message is delivered again
//!   (at least once).

pub mod driver;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;

use crate::scheduler::rank;
use crate::scheduler::Millis;

/// Timing rules of a [`Dispatcher`], in ms.
#[derive(Clone, Debug)]
pub struct Config {
  /// How long an edge has to accept a batch. Default: 10 s.
  pub ack_timeout: Millis,
  /// How long an accepted batch may go unreported before it is released:
  /// a consumer's longest wall time (15 min) and a minute. Default: 16 min.
  pub run_timeout: Millis,
}

impl Default for Config {
  fn default() -> Self {
    Self {
      ack_timeout: 10_000,
      run_timeout: 16 * 60_000,
    }
  }
}

/// A queue's consumer, as the dispatcher needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
  /// Edge name of the consumer worker.
  pub worker: String,
  pub max_batch_size: u32,
  /// ms.
  pub max_batch_timeout: Millis,
}

/// What the stored messages of a queue look like, at start-up or after a
/// change of consumer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
  /// When each message that is not leased becomes (or became) visible.
  pub visible_at: Vec<Millis>,
  /// Batches leased and not settled: (batch id, edge).
  pub leased: Vec<(u64, String)>,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
  /// Lease up to `max` ready messages of `queue` as batch `id`, send them to
  /// `edge` for `worker`, and report the count with
  /// [`Dispatcher::leased`].
  Lease {
    queue: String,
    id: u64,
    max: u32,
    edge: String,
    worker: String,
  },
  /// Send the messages leased as batch `old` again, as batch `id`, to
  /// `edge` (the first edge did not take them).
  Move {
    queue: String,
    old: u64,
    id: u64,
    edge: String,
    worker: String,
  },
  /// Put batch `id`'s messages back as failed deliveries (its edge
  /// vanished or kept it too long), then call [`Dispatcher::settled`].
  Release { queue: String, id: u64 },
}

#[derive(Clone, Debug)]
struct InFlight {
  id: u64,
  edge: String,
  sent_at: Millis,
  accepted: bool,
  /// Edges that refused or ignored it.
  tried: BTreeSet<String>,
}

#[derive(Clone, Debug, Default)]
struct Queue {
  consumer: Option<Consumer>,
  /// Ready messages and since when the oldest has been.
  ready: u64,
  oldest_ready: Option<Millis>,
  /// Messages not yet visible: when they become so, and how many.
  delayed: BTreeMap<Millis, u64>,
  batch: Option<InFlight>,
}

impl Queue {
  fn add(&mut self, visible_at: Millis, now: Millis) {
    if visible_at <= now {
      self.ready += 1;
      self.oldest_ready = Some(self.oldest_ready.map_or(visible_at, |o| o.min(visible_at)));
    } else {
      *self.delayed.entry(visible_at).or_default() += 1;
    }
  }

  /// Moves delayed messages that are due into the ready count.
  fn ripen(&mut self, now: Millis) {
    let later = self.delayed.split_off(&(now + 1));
    for (at, n) in std::mem::replace(&mut self.delayed, later) {
      self.ready += n;
      self.oldest_ready = Some(self.oldest_ready.map_or(at, |o| o.min(at)));
    }
  }
}

/// The fleet's queue dispatcher. See the module docs for its rules.
#[derive(Debug)]
pub struct Dispatcher {
  config: Config,
  queues: BTreeMap<String, Queue>,
  edges: BTreeSet<String>,
  next_id: u64,
  actions: VecDeque<Action>,
}

impl Dispatcher {
  /// A dispatcher whose batch ids start after `last_id`.
  pub fn new(config: Config, last_id: u64) -> Self {
    Self {
      config,
      queues: BTreeMap::new(),
      edges: BTreeSet::new(),
      next_id: last_id + 1,
      actions: VecDeque::new(),
    }
  }

  /// Sets `queue`'s consumer and what is stored for it (at start, or when
  /// the consumer changed). Leased batches count as in flight, sent now and
  /// not accepted: an edge still consuming one says so when it reconnects;
  /// otherwise it is released after the ack timeout.
  pub fn load(&mut self, queue: &str, consumer: Option<Consumer>, backlog: Backlog, now: Millis) {
    let q = self.queues.entry(queue.to_string()).or_default();
    q.consumer = consumer;
    q.ready = 0;
    q.oldest_ready = None;
    q.delayed.clear();
    for at in backlog.visible_at {
      q.add(at, now);
    }
    if let Some((id, edge)) = backlog.leased.into_iter().next() {
      self.next_id = self.next_id.max(id + 1);
      q.batch = Some(InFlight {
        id,
        edge,
        sent_at: now,
        accepted: false,
        tried: BTreeSet::new(),
      });
    }
    self.poll(now);
  }

  /// A queue was deleted.
  pub fn remove(&mut self, queue: &str) {
    self.queues.remove(queue);
  }

  /// Messages were stored in `queue`, visible at these times.
  pub fn stored(&mut self, queue: &str, visible_at: &[Millis], now: Millis) {
    let q = self.queues.entry(queue.to_string()).or_default();
    for &at in visible_at {
      q.add(at, now);
    }
    self.poll(now);
  }

  /// Batch `id` was leased with `count` messages (0: nothing was ready
  /// after all, and no batch goes out).
  pub fn leased(&mut self, queue: &str, id: u64, count: u64, requested: u32, now: Millis) {
    let Some(q) = self.queues.get_mut(queue) else {
      return;
    };
    if count < u64::from(requested) {
      // Fewer were ready than counted: none are left.
      q.ready = 0;
      q.oldest_ready = None;
    } else {
      q.ready = q.ready.saturating_sub(count);
      if q.ready == 0 {
        q.oldest_ready = None;
      }
    }
    if count == 0 && q.batch.as_ref().is_some_and(|b| b.id == id) {
      q.batch = None;
    }
    self.poll(now);
  }

  pub fn accepted(&mut self, id: u64) {
    for q in self.queues.values_mut() {
      if let Some(b) = q.batch.as_mut().filter(|b| b.id == id) {
        b.accepted = true;
      }
    }
  }

  /// The edge cannot run the consumer: the batch goes to the next edge.
  pub fn unavailable(&mut self, id: u64, now: Millis) {
    if let Some(queue) = self.queue_of(id) {
      self.hand_on(&queue, now);
    }
  }

  /// Batch `id` is settled (reported or released): messages to deliver
  /// again become visible at these times.
  pub fn settled(&mut self, queue: &str, id: u64, retry_at: &[Millis], now: Millis) {
    let Some(q) = self.queues.get_mut(queue) else {
      return;
    };
    if q.batch.as_ref().is_some_and(|b| b.id == id) {
      q.batch = None;
    }
    for &at in retry_at {
      q.add(at, now);
    }
    self.poll(now);
  }

  pub fn edge_up(&mut self, edge: &str, now: Millis) {
    self.edges.insert(edge.to_string());
    self.poll(now);
  }

  /// An edge went: batches it had accepted are released, those it had not
  /// go to the next edge.
  pub fn edge_down(&mut self, edge: &str, now: Millis) {
    self.edges.remove(edge);
    let queues: Vec<String> = self
      .queues
      .iter()
      .filter(|(_, q)| q.batch.as_ref().is_some_and(|b| b.edge == edge))
      .map(|(k, _)| k.clone())
      .collect();
    for queue in queues {
      let b = self.queues[&queue].batch.as_ref().expect("filtered");
      if b.accepted {
        self.actions.push_back(Action::Release {
          queue: queue.clone(),
          id: b.id,
        });
      } else {
        self.hand_on(&queue, now);
      }
    }
    self.poll(now);
  }

  pub fn poll(&mut self, now: Millis) {
    let keys: Vec<String> = self.queues.keys().cloned().collect();
    for key in keys {
      self.poll_queue(&key, now);
    }
  }

  pub fn poll_action(&mut self) -> Option<Action> {
    self.actions.pop_front()
  }

  /// When [`Dispatcher::poll`] next has something to do.
  pub fn poll_timeout(&self) -> Option<Millis> {
    self
      .queues
      .values()
      .flat_map(|q| {
        let batch = q.batch.as_ref().map(|b| {
          b.sent_at
            + if b.accepted {
              self.config.run_timeout
            } else {
              self.config.ack_timeout
            }
        });
        let fill = match (&q.consumer, q.batch.is_none(), q.oldest_ready) {
          (Some(c), true, Some(oldest)) if !self.edges.is_empty() => {
            Some(oldest + c.max_batch_timeout)
          }
          _ => None,
        };
        [batch, q.delayed.keys().next().copied(), fill]
      })
      .flatten()
      .min()
  }

  fn poll_queue(&mut self, key: &str, now: Millis) {
    let config = self.config.clone();
    let q = self.queues.get_mut(key).expect("polled keys exist");
    q.ripen(now);
    if let Some(b) = &q.batch {
      if b.accepted && now >= b.sent_at + config.run_timeout {
        let id = b.id;
        // Released once: the batch stays in flight until settled.
        q.batch.as_mut().expect("checked").sent_at = Millis::MAX / 2;
        self.actions.push_back(Action::Release {
          queue: key.to_string(),
          id,
        });
      } else if !b.accepted && now >= b.sent_at + config.ack_timeout {
        self.hand_on(key, now);
      }
      return;
    }
    let Some(consumer) = q.consumer.clone() else {
      return;
    };
    let full = q.ready >= u64::from(consumer.max_batch_size);
    let waited = q
      .oldest_ready
      .is_some_and(|o| now >= o + consumer.max_batch_timeout);
    if q.ready == 0 || !(full || waited) {
      return;
    }
    let Some(edge) = rank(&self.edges, &consumer.worker).into_iter().next() else {
      return;
    };
    let id = self.take_id();
    let q = self.queues.get_mut(key).expect("polled keys exist");
    q.batch = Some(InFlight {
      id,
      edge: edge.clone(),
      sent_at: now,
      accepted: false,
      tried: BTreeSet::new(),
    });
    self.actions.push_back(Action::Lease {
      queue: key.to_string(),
      id,
      max: consumer.max_batch_size,
      edge,
      worker: consumer.worker,
    });
  }

  /// The batch's edge did not take it: the next edge gets it under a new
  /// id; with none left it is released.
  fn hand_on(&mut self, key: &str, now: Millis) {
    let id = self.take_id();
    let edges = self.edges.clone();
    let q = self.queues.get_mut(key).expect("known queue");
    let Some(b) = q.batch.as_mut() else {
      return;
    };
    let worker = q
      .consumer
      .as_ref()
      .map(|c| c.worker.clone())
      .unwrap_or_default();
    b.tried.insert(b.edge.clone());
    let next = rank(&edges, &worker)
      .into_iter()
      .find(|e| !b.tried.contains(e));
    let Some(edge) = next else {
      b.sent_at = Millis::MAX / 2;
      let old = b.id;
      self.actions.push_back(Action::Release {
        queue: key.to_string(),
        id: old,
      });
      return;
    };
    let old = b.id;
    b.id = id;
    b.edge = edge.clone();
    b.sent_at = now;
    b.accepted = false;
    self.actions.push_back(Action::Move {
      queue: key.to_string(),
      old,
      id,
      edge,
      worker,
    });
  }

  /// The queue whose batch in flight is `id`.
  pub fn queue_of(&self, id: u64) -> Option<String> {
    self
      .queues
      .iter()
      .find(|(_, q)| q.batch.as_ref().is_some_and(|b| b.id == id))
      .map(|(k, _)| k.clone())
  }

  fn take_id(&mut self) -> u64 {
    let id = self.next_id;
    self.next_id += 1;
    id
  }
}

impl crate::fleet::Follower for Dispatcher {
  fn edge_up(&mut self, edge: &str, now: Millis) {
    Dispatcher::edge_up(self, edge, now);
  }

  fn edge_down(&mut self, edge: &str, now: Millis) {
    Dispatcher::edge_down(self, edge, now);
  }
}

#[cfg(test)]
mod tests;
