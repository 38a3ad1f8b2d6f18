//! The edges connected now, for the work the control plane hands out (cron
//! ticks, queue batches): each edge connection registers and receives its
//! work on a channel; the drivers that hand out work hear when edges come
//! and go.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use isola_proto::msg::EdgeSite;
use isola_proto::msg::Tick;
use isola_proto::queue::Batch;
use tokio::sync::mpsc;

/// Work for one edge.
#[derive(Debug)]
pub enum Work {
  Tick(Tick),
  Batch(Batch),
}

/// An edge came or went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
  Up(String),
  Down(String),
}

#[derive(Default)]
struct Inner {
  /// Each connected edge: its connection number and where its work goes.
  edges: HashMap<String, (u64, mpsc::UnboundedSender<Work>)>,
  next_conn: u64,
  /// What each edge said of itself in its last hello; kept after it goes,
  /// so the API and DNS still know a down edge.
  sites: HashMap<String, EdgeSite>,
  subscribers: Vec<mpsc::UnboundedSender<Change>>,
}

impl Inner {
  fn tell(&mut self, change: &Change) {
    self.subscribers.retain(|s| s.send(change.clone()).is_ok());
  }
}

/// What hands out work to edges (the cron scheduler, the queue dispatcher)
/// and so must hear when they come and go.
pub trait Follower {
  fn edge_up(&mut self, edge: &str, now: crate::scheduler::Millis);
  fn edge_down(&mut self, edge: &str, now: crate::scheduler::Millis);
}

impl Change {
  /// Tells `follower` of this change.
  pub fn tell(self, follower: &mut impl Follower, now: crate::scheduler::Millis) {
    match self {
      Change::Up(edge) => follower.edge_up(&edge, now),
      Change::Down(edge) => follower.edge_down(&edge, now),
    }
  }
}

/// Cheap to clone; all clones are one registry.
#[derive(Clone, Default)]
pub struct Fleet {
  inner: Arc<Mutex<Inner>>,
}

/// An edge connection's place in the fleet; dropping it takes the edge out
/// (unless it has reconnected since).
pub struct EdgeLink {
  fleet: Fleet,
  edge: String,
  conn: u64,
}

impl Drop for EdgeLink {
  fn drop(&mut self) {
    let mut inner = self.fleet.lock();
    if inner
      .edges
      .get(&self.edge)
      .is_some_and(|(c, _)| *c == self.conn)
    {
      inner.edges.remove(&self.edge);
      inner.tell(&Change::Down(self.edge.clone()));
    }
  }
}

impl Fleet {
  fn lock(&self) -> MutexGuard<'_, Inner> {
    self.inner.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// Edge `edge` is connected, at `site`: its work arrives on the receiver
  /// until the link is dropped. A reconnect replaces the previous
  /// connection.
  pub fn connect(&self, edge: &str, site: EdgeSite) -> (EdgeLink, mpsc::UnboundedReceiver<Work>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut inner = self.lock();
    inner.sites.insert(edge.to_string(), site);
    let conn = inner.next_conn;
    inner.next_conn += 1;
    let replaced = inner.edges.insert(edge.to_string(), (conn, tx)).is_some();
    if replaced {
      // The drivers must forget what the old connection had taken.
      inner.tell(&Change::Down(edge.to_string()));
    }
    inner.tell(&Change::Up(edge.to_string()));
    let link = EdgeLink {
      fleet: self.clone(),
      edge: edge.to_string(),
      conn,
    };
    (link, rx)
  }

  /// What edge `edge` said of itself when it last connected.
  pub fn site(&self, edge: &str) -> Option<EdgeSite> {
    self.lock().sites.get(edge).cloned()
  }

  /// The edges up now, and every change after.
  pub fn subscribe(&self) -> (Vec<String>, mpsc::UnboundedReceiver<Change>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut inner = self.lock();
    inner.subscribers.push(tx);
    (inner.edges.keys().cloned().collect(), rx)
  }

  /// Tells `follower` of the edges up now; the changes after come on the
  /// receiver.
  pub fn follow(
    &self,
    follower: &mut impl Follower,
    now: crate::scheduler::Millis,
  ) -> mpsc::UnboundedReceiver<Change> {
    let (up, changes) = self.subscribe();
    for edge in up {
      follower.edge_up(&edge, now);
    }
    changes
  }

  /// Hands `work` to `edge`; false if it is not connected.
  pub fn send(&self, edge: &str, work: Work) -> bool {
    self
      .lock()
      .edges
      .get(edge)
      .is_some_and(|(_, tx)| tx.send(work).is_ok())
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn edges_come_and_go_and_a_reconnect_replaces_the_old_link() {
    let fleet = Fleet::default();
    let (up, mut changes) = fleet.subscribe();
    assert!(up.is_empty());
    let (first, _rx1) = fleet.connect("e1", EdgeSite::default());
    assert_eq!(changes.try_recv().unwrap(), Change::Up("e1".into()));
    let (second, mut rx2) = fleet.connect("e1", EdgeSite::default());
    assert_eq!(changes.try_recv().unwrap(), Change::Down("e1".into()));
    assert_eq!(changes.try_recv().unwrap(), Change::Up("e1".into()));
    // The old link going away does not take the new connection down.
    drop(first);
    assert!(changes.try_recv().is_err());
    assert!(fleet.send(
      "e1",
      Work::Tick(Tick {
        id: 1,
        worker: "a_w".into(),
        cron: "* * * * *".into(),
        scheduled_time: 0,
        cpu_ms: 1
      })
    ));
    assert!(matches!(rx2.try_recv(), Ok(Work::Tick(_))));
    drop(second);
    assert_eq!(changes.try_recv().unwrap(), Change::Down("e1".into()));
    assert!(!fleet.send(
      "e1",
      Work::Batch(Batch {
        id: 1,
        worker: "a_w".into(),
        queue: "q".into(),
        messages: vec![]
      })
    ));
  }
}
