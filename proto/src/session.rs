//! Both ends of a control connection as state machines with injected time.

use std::collections::BTreeSet;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::time::Duration;
use std::time::Instant;

use crate::msg::DesiredState;
use crate::msg::EdgeSite;
use crate::msg::Revision;
use crate::msg::Tick;
use crate::msg::TickReport;
use crate::msg::ToControl;
use crate::msg::ToEdge;
use crate::msg::UsageBatch;
use crate::msg::VersionBundle;
use crate::msg::PROTOCOL_VERSION;

/// Keepalive settings, shared by both ends.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
  /// A side that has sent nothing for this long sends a ping. Default: 5 s.
  pub keepalive: Duration,
  /// A side that has heard nothing for this long gives the connection up,
  /// even if the transport still looks open (a stuck peer). Default: 20 s.
  pub idle_timeout: Duration,
}

impl Default for Timing {
  fn default() -> Self {
    Self {
      keepalive: Duration::from_secs(5),
      idle_timeout: Duration::from_secs(20),
    }
  }
}

/// Either end of a connection, as the IO driver sees it (quinn's split: the
/// protocol here, one async driver in `isola-io` for both ends). The driver
/// writes what [`Session::poll_transmit`] hands out, feeds what it reads to
/// [`Session::handle`], hands each event to the caller and sleeps until
/// [`Session::poll_timeout`].
pub trait Session {
  /// Messages read from the peer.
  type Incoming: serde::de::DeserializeOwned;
  /// Messages written to the peer.
  type Outgoing: serde::Serialize;
  /// What the caller must do.
  type Event;

  fn handle(&mut self, msg: Self::Incoming, now: Instant);
  fn poll_transmit(&mut self, now: Instant) -> Option<Self::Outgoing>;
  fn poll_event(&mut self) -> Option<Self::Event>;
  /// When [`Session::handle_timeout`] is due next; `None` once closed.
  fn poll_timeout(&self) -> Option<Instant>;
  fn handle_timeout(&mut self, now: Instant);
  /// Why the session ended, once it has. Messages still queued (such as a
  /// refusal) should be sent before the connection goes.
  fn closed(&self) -> Option<&str>;
}

/// Keepalive bookkeeping and the outbox, the part both ends share.
#[derive(Debug)]
struct Link<Out> {
  timing: Timing,
  last_sent: Instant,
  last_received: Instant,
  outbox: VecDeque<Out>,
  closed: Option<String>,
}

impl<Out> Link<Out> {
  fn new(now: Instant, timing: Timing) -> Self {
    Self {
      timing,
      last_sent: now,
      last_received: now,
      outbox: VecDeque::new(),
      closed: None,
    }
  }

  fn poll_transmit(&mut self, now: Instant) -> Option<Out> {
    let msg = self.outbox.pop_front()?;
    self.last_sent = now;
    Some(msg)
  }

  fn poll_timeout(&self) -> Option<Instant> {
    if self.closed.is_some() {
      return None;
    }
    Some(
      (self.last_sent + self.timing.keepalive).min(self.last_received + self.timing.idle_timeout),
    )
  }

  /// Returns whether a ping is due.
  fn handle_timeout(&mut self, now: Instant) -> bool {
    if self.closed.is_some() {
      return false;
    }
    if now >= self.last_received + self.timing.idle_timeout {
      self.close(format!(
        "heard nothing from the peer for {:?}",
        self.timing.idle_timeout
      ));
      return false;
    }
    now >= self.last_sent + self.timing.keepalive && self.outbox.is_empty()
  }

  fn close(&mut self, reason: String) {
    if self.closed.is_none() {
      self.closed = Some(reason);
    }
  }
}

/// What the edge's IO layer must do.
#[derive(Debug, PartialEq)]
pub enum EdgeEvent {
  /// Write this version to the store: a state that serves it follows.
  Bundle(VersionBundle),
  /// Switch to the state (its bundles arrived before it), then call
  /// [`EdgeSession::applied`].
  Apply(DesiredState),
  /// The control plane stored this usage batch: delete it from disk.
  UsageStored(String),
  /// Run this scheduled tick (already acknowledged), then call
  /// [`EdgeSession::run_done`].
  Run(Tick),
  /// The control plane recorded the report of this run: forget it.
  RunRecorded(u64),
  /// Drop this KV key from the cache (`None`: every key).
  KvChanged(Option<(String, String)>),
  /// Run the consumer on this batch (already acknowledged), then call
  /// [`EdgeSession::batch_done`].
  Deliver(crate::queue::Batch),
  /// The control plane recorded this batch's report: forget it.
  BatchRecorded(u64),
}

/// The edge's end of one connection.
///
/// Created on connect with the revision last applied and the usage batches
/// still on disk; it says hello, resends those batches, and from then on
/// forwards every newer state the control plane pushes.
#[derive(Debug)]
pub struct EdgeSession {
  link: Link<ToControl>,
  events: VecDeque<EdgeEvent>,
  /// Highest revision applied or handed out to apply.
  revision: Revision,
  /// Batches sent and not yet acknowledged, by id.
  in_flight: BTreeSet<String>,
}

impl EdgeSession {
  pub fn new(
    now: Instant,
    timing: Timing,
    edge: String,
    revision: Revision,
    versions: Vec<String>,
    pending_usage: Vec<UsageBatch>,
  ) -> Self {
    let mut session = Self {
      link: Link::new(now, timing),
      events: VecDeque::new(),
      revision,
      in_flight: BTreeSet::new(),
    };
    session.link.outbox.push_back(ToControl::Hello {
      protocol: PROTOCOL_VERSION,
      edge,
      revision,
      versions,
      site: EdgeSite::default(),
    });
    for batch in pending_usage {
      session.send_usage(batch);
    }
    session
  }

  /// Says in the hello where this edge is (see [`EdgeSite`]).
  pub fn with_site(mut self, site: EdgeSite) -> Self {
    if let Some(ToControl::Hello { site: s, .. }) = self.link.outbox.front_mut() {
      *s = site;
    }
    self
  }

  /// The IO layer finished applying `revision`.
  pub fn applied(&mut self, revision: Revision, errors: Vec<String>) {
    self
      .link
      .outbox
      .push_back(ToControl::Applied { revision, errors });
  }

  /// Ships a batch (already safe on disk). Sending a batch again before its
  /// ack is harmless: the control plane stores each id once.
  pub fn send_usage(&mut self, batch: UsageBatch) {
    self.in_flight.insert(batch.id.clone());
    self.link.outbox.push_back(ToControl::Usage(batch));
  }

  /// Says a run received on an earlier connection is still going, so a
  /// control plane that restarted does not hand it to another edge.
  pub fn still_running(&mut self, id: u64) {
    self.link.outbox.push_back(ToControl::RunAccepted { id });
  }

  /// Says a batch received on an earlier connection is still being
  /// consumed.
  pub fn still_consuming(&mut self, id: u64) {
    self.link.outbox.push_back(ToControl::BatchAccepted { id });
  }

  /// Reports how a batch's consumer ended (resent on every connection
  /// until recorded).
  pub fn batch_done(&mut self, report: crate::queue::BatchReport) {
    self.link.outbox.push_back(ToControl::BatchDone(report));
  }

  /// Reports how a run ended. A report still unrecorded when the
  /// connection ends is passed again to the next session.
  pub fn run_done(&mut self, report: TickReport) {
    self.link.outbox.push_back(ToControl::RunDone(report));
  }

  /// Batches sent and not yet acknowledged.
  pub fn usage_in_flight(&self) -> usize {
    self.in_flight.len()
  }
}

impl Session for EdgeSession {
  type Incoming = ToEdge;
  type Outgoing = ToControl;
  type Event = EdgeEvent;

  fn handle(&mut self, msg: ToEdge, now: Instant) {
    self.link.last_received = now;
    match msg {
      ToEdge::Bundle(bundle) => self.events.push_back(EdgeEvent::Bundle(bundle)),
      ToEdge::State { state } => {
        // A state no newer than one already taken is a resend; skip it.
        if state.revision > self.revision {
          self.revision = state.revision;
          self.events.push_back(EdgeEvent::Apply(state));
        }
      }
      ToEdge::UsageStored { id } => {
        if self.in_flight.remove(&id) {
          self.events.push_back(EdgeEvent::UsageStored(id));
        }
      }
      ToEdge::Run(tick) => {
        self
          .link
          .outbox
          .push_back(ToControl::RunAccepted { id: tick.id });
        self.events.push_back(EdgeEvent::Run(tick));
      }
      ToEdge::RunRecorded { id } => self.events.push_back(EdgeEvent::RunRecorded(id)),
      ToEdge::KvChanged { namespace, key } => {
        self
          .events
          .push_back(EdgeEvent::KvChanged(Some((namespace, key))));
      }
      ToEdge::KvFlush => self.events.push_back(EdgeEvent::KvChanged(None)),
      ToEdge::Deliver(batch) => {
        self
          .link
          .outbox
          .push_back(ToControl::BatchAccepted { id: batch.id });
        self.events.push_back(EdgeEvent::Deliver(batch));
      }
      ToEdge::BatchRecorded { id } => self.events.push_back(EdgeEvent::BatchRecorded(id)),
      ToEdge::Refused { reason } => {
        self
          .link
          .close(format!("the control plane refused this edge: {reason}"));
      }
      ToEdge::Ping => {}
    }
  }

  fn poll_transmit(&mut self, now: Instant) -> Option<ToControl> {
    self.link.poll_transmit(now)
  }

  fn poll_event(&mut self) -> Option<EdgeEvent> {
    self.events.pop_front()
  }

  fn poll_timeout(&self) -> Option<Instant> {
    self.link.poll_timeout()
  }

  fn handle_timeout(&mut self, now: Instant) {
    if self.link.handle_timeout(now) {
      self.link.outbox.push_back(ToControl::Ping);
    }
  }

  fn closed(&self) -> Option<&str> {
    self.link.closed.as_deref()
  }
}

/// What the control plane's IO layer must do.
#[derive(Debug, PartialEq)]
pub enum ControlEvent {
  /// The edge introduced itself. Check that `edge` is the name its
  /// certificate was issued for (else [`ControlSession::refuse`]), then
  /// [`ControlSession::offer`] it the current state.
  Hello {
    edge: String,
    revision: Revision,
    site: EdgeSite,
  },
  /// The edge serves `revision` now.
  Applied {
    revision: Revision,
    errors: Vec<String>,
  },
  /// Store the batch (once per id), then call
  /// [`ControlSession::usage_stored`]: the edge deletes its copy only then.
  Usage(UsageBatch),
  /// Look up the version with this manifest hash and pass it to
  /// [`ControlSession::bundle`]. Asked one at a time, each after the last
  /// was handed over, so a catch-up of any size holds one bundle in memory.
  NeedBundle(String),
  /// The edge took the tick sent with [`ControlSession::run`].
  RunAccepted(u64),
  /// A run ended; record it, then call [`ControlSession::run_recorded`].
  RunDone(TickReport),
  /// The edge took the batch sent with [`ControlSession::deliver`].
  BatchAccepted(u64),
  /// A batch's consumer finished; store the outcome, then call
  /// [`ControlSession::batch_recorded`].
  BatchDone(crate::queue::BatchReport),
}

/// The control plane's end of one edge connection.
#[derive(Debug)]
pub struct ControlSession {
  link: Link<ToEdge>,
  events: VecDeque<ControlEvent>,
  /// The edge's revision from its hello; `None` until then.
  edge_revision: Option<Revision>,
  /// Revision of the last state sent.
  sent: Option<Revision>,
  /// Versions the edge has or was sent (or is about to be).
  edge_has: HashSet<String>,
  /// Versions to send before `held`, and the one asked for now.
  wanted: VecDeque<String>,
  asked: Option<String>,
  /// The newest state offered, waiting for its bundles to go first.
  held: Option<DesiredState>,
}

impl ControlSession {
  pub fn new(now: Instant, timing: Timing) -> Self {
    Self {
      link: Link::new(now, timing),
      events: VecDeque::new(),
      edge_revision: None,
      sent: None,
      edge_has: HashSet::new(),
      wanted: VecDeque::new(),
      asked: None,
      held: None,
    }
  }

  /// Sends `state` if the edge does not have it yet, after the bundles of
  /// the versions it lacks (asked for through [`ControlEvent::NeedBundle`]).
  /// Call after the hello and on every change; a call with nothing new
  /// sends nothing.
  pub fn offer(&mut self, state: &DesiredState) {
    let Some(edge_revision) = self.edge_revision else {
      return;
    };
    if self.link.closed.is_some() {
      return;
    }
    let newest = self.held.as_ref().map(|s| s.revision).or(self.sent);
    let new = match newest {
      // Not `>`: a control plane restored from an older backup must still
      // bring the edge back in line with it.
      None => state.revision != edge_revision,
      Some(newest) => state.revision > newest,
    };
    if !new {
      return;
    }
    for hash in state.version_hashes() {
      if self.edge_has.insert(hash.to_string()) {
        self.wanted.push_back(hash.to_string());
      }
    }
    self.held = Some(state.clone());
    self.ask_next();
  }

  /// The bundle asked for with [`ControlEvent::NeedBundle`]; `None` if it
  /// cannot be read (the edge then reports the worker as not applied, and
  /// the next offer asks for it again, so a repaired blob reaches the edge
  /// with the next revision).
  pub fn bundle(&mut self, hash: &str, bundle: Option<VersionBundle>) {
    if self.asked.as_deref() != Some(hash) {
      return;
    }
    self.asked = None;
    match bundle {
      Some(bundle) => self.link.outbox.push_back(ToEdge::Bundle(bundle)),
      None => {
        self.edge_has.remove(hash);
      }
    }
    self.ask_next();
  }

  /// Asks for the next wanted bundle, or sends the held state once none is
  /// left.
  fn ask_next(&mut self) {
    if self.asked.is_some() || self.link.closed.is_some() {
      return;
    }
    if let Some(hash) = self.wanted.pop_front() {
      self.asked = Some(hash.clone());
      self.events.push_back(ControlEvent::NeedBundle(hash));
    } else if let Some(state) = self.held.take() {
      self.sent = Some(state.revision);
      self.link.outbox.push_back(ToEdge::State { state });
    }
  }

  /// Asks the edge to run a scheduled tick.
  pub fn run(&mut self, tick: Tick) {
    if self.link.closed.is_none() {
      self.link.outbox.push_back(ToEdge::Run(tick));
    }
  }

  /// Tells the edge a KV key changed (`None`: changes were missed).
  pub fn kv_changed(&mut self, change: Option<(String, String)>) {
    if self.edge_revision.is_none() || self.link.closed.is_some() {
      return;
    }
    self.link.outbox.push_back(match change {
      Some((namespace, key)) => ToEdge::KvChanged { namespace, key },
      None => ToEdge::KvFlush,
    });
  }

  /// Asks the edge to run a consumer on a batch.
  pub fn deliver(&mut self, batch: crate::queue::Batch) {
    if self.link.closed.is_none() {
      self.link.outbox.push_back(ToEdge::Deliver(batch));
    }
  }

  pub fn batch_recorded(&mut self, id: u64) {
    self.link.outbox.push_back(ToEdge::BatchRecorded { id });
  }

  pub fn run_recorded(&mut self, id: u64) {
    self.link.outbox.push_back(ToEdge::RunRecorded { id });
  }

  pub fn usage_stored(&mut self, id: String) {
    self.link.outbox.push_back(ToEdge::UsageStored { id });
  }

  /// Tells the edge why it is refused and ends the session.
  pub fn refuse(&mut self, reason: String) {
    self.link.outbox.push_back(ToEdge::Refused {
      reason: reason.clone(),
    });
    self.link.close(reason);
  }
}

impl Session for ControlSession {
  type Incoming = ToControl;
  type Outgoing = ToEdge;
  type Event = ControlEvent;

  fn handle(&mut self, msg: ToControl, now: Instant) {
    self.link.last_received = now;
    match msg {
      ToControl::Hello {
        protocol,
        edge,
        revision,
        versions,
        site,
      } => {
        if protocol != PROTOCOL_VERSION {
          self.refuse(format!(
            "the edge speaks protocol {protocol}, this control plane {PROTOCOL_VERSION}; \
             run the same release on both"
          ));
          return;
        }
        if self.edge_revision.is_some() {
          self.refuse("hello sent twice".to_string());
          return;
        }
        self.edge_revision = Some(revision);
        self.edge_has = versions.into_iter().collect();
        self.events.push_back(ControlEvent::Hello {
          edge,
          revision,
          site,
        });
      }
      _ if self.edge_revision.is_none() => {
        self.refuse("the first message must be hello".to_string());
      }
      ToControl::Applied { revision, errors } => {
        self
          .events
          .push_back(ControlEvent::Applied { revision, errors });
      }
      ToControl::Usage(batch) => self.events.push_back(ControlEvent::Usage(batch)),
      ToControl::RunAccepted { id } => self.events.push_back(ControlEvent::RunAccepted(id)),
      ToControl::RunDone(report) => self.events.push_back(ControlEvent::RunDone(report)),
      ToControl::BatchAccepted { id } => self.events.push_back(ControlEvent::BatchAccepted(id)),
      ToControl::BatchDone(report) => self.events.push_back(ControlEvent::BatchDone(report)),
      ToControl::Ping => {}
    }
  }

  fn poll_transmit(&mut self, now: Instant) -> Option<ToEdge> {
    self.link.poll_transmit(now)
  }

  fn poll_event(&mut self) -> Option<ControlEvent> {
    self.events.pop_front()
  }

  fn poll_timeout(&self) -> Option<Instant> {
    self.link.poll_timeout()
  }

  fn handle_timeout(&mut self, now: Instant) {
    if self.link.handle_timeout(now) {
      self.link.outbox.push_back(ToEdge::Ping);
    }
  }

  fn closed(&self) -> Option<&str> {
    self.link.closed.as_deref()
  }
}

/// Reconnect delays: exponential from `base` to `max`, each scaled by a
/// jitter factor in [0.5, 1) so a fleet of edges does not reconnect in step
/// after a control plane restart.
#[derive(Clone, Debug)]
pub struct Backoff {
  base: Duration,
  max: Duration,
  attempt: u32,
}

impl Backoff {
  pub fn new(base: Duration, max: Duration) -> Self {
    Self {
      base,
      max,
      attempt: 0,
    }
  }

  /// The delay before the next attempt; `jitter` in [0, 1) comes from the
  /// caller's random source.
  pub fn next_delay(&mut self, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(self.attempt.min(30));
    self.attempt = self.attempt.saturating_add(1);
    let full = self.base.saturating_mul(factor).min(self.max);
    full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
  }

  /// Call once a connection got as far as the hello being answered.
  pub fn reset(&mut self) {
    self.attempt = 0;
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::msg::Usage;
  use crate::msg::UsageRecord;
  use crate::testing::desired;
  use crate::testing::full_bundle;

  fn bundle_of(hash: &str) -> Option<VersionBundle> {
    Some(VersionBundle {
      manifest: hash.as_bytes().to_vec(),
      modules: Vec::new(),
    })
  }

  fn batch(id: &str) -> UsageBatch {
    UsageBatch {
      id: id.to_string(),
      records: vec![UsageRecord {
        worker: "acme_w0".into(),
        usage: Usage {
          requests: 3,
          ..Default::default()
        },
        ..Default::default()
      }],
    }
  }

  /// Moves every queued message across, both ways, answering the control
  /// plane's bundle requests, until both are quiet; returns the control
  /// plane's other events.
  fn pump(edge: &mut EdgeSession, control: &mut ControlSession, now: Instant) -> Vec<ControlEvent> {
    let mut events = Vec::new();
    loop {
      let mut moved = false;
      while let Some(m) = edge.poll_transmit(now) {
        control.handle(m, now);
        moved = true;
      }
      while let Some(e) = control.poll_event() {
        match e {
          ControlEvent::NeedBundle(hash) => control.bundle(&hash, bundle_of(&hash)),
          other => events.push(other),
        }
        moved = true;
      }
      while let Some(m) = control.poll_transmit(now) {
        edge.handle(m, now);
        moved = true;
      }
      if !moved {
        return events;
      }
    }
  }

  fn drain<T>(next: impl FnMut() -> Option<T>) -> Vec<T> {
    std::iter::from_fn(next).collect()
  }

  /// The bundles and states the edge was handed, checking that each state
  /// came after every bundle sent with it.
  fn received(edge: &mut EdgeSession) -> (Vec<VersionBundle>, Vec<DesiredState>) {
    let (mut bundles, mut states) = (Vec::new(), Vec::new());
    for event in drain(|| edge.poll_event()) {
      match event {
        EdgeEvent::Bundle(b) => {
          assert!(states.is_empty(), "a bundle came after its state");
          bundles.push(b);
        }
        EdgeEvent::Apply(state) => states.push(state),
        other => panic!("{other:?}"),
      }
    }
    (bundles, states)
  }

  #[test]
  fn a_new_edge_gets_the_state_and_every_bundle_once() {
    let t0 = Instant::now();
    let site = EdgeSite {
      region: Some("eu-west".into()),
      location: Some([50.1, 8.7]),
      public_ipv4: vec!["192.0.2.1".parse().unwrap()],
      public_ipv6: vec!["2001:db8::1".parse().unwrap()],
      http_port: Some(80),
    };
    let mut edge = EdgeSession::new(t0, Timing::default(), "e1".into(), 0, vec![], vec![])
      .with_site(site.clone());
    let mut control = ControlSession::new(t0, Timing::default());
    let s1 = desired(1, &["h1", "h2"]);
    // Before the hello there is nobody to offer to.
    control.offer(&s1);
    assert!(control.poll_transmit(t0).is_none());
    assert!(control.poll_event().is_none());

    assert_eq!(
      pump(&mut edge, &mut control, t0),
      vec![ControlEvent::Hello {
        edge: "e1".into(),
        revision: 0,
        site
      }]
    );
    control.offer(&s1);
    pump(&mut edge, &mut control, t0);
    let (bundles, states) = received(&mut edge);
    assert_eq!(states, vec![s1]);
    assert_eq!(
      bundles,
      vec![bundle_of("h1").unwrap(), bundle_of("h2").unwrap()]
    );

    // The next revision reuses h2 and brings h3: only h3 travels.
    let s2 = desired(2, &["h2", "h3"]);
    control.offer(&s2);
    control.offer(&s2); // offering twice sends once
    pump(&mut edge, &mut control, t0);
    let (bundles, states) = received(&mut edge);
    assert_eq!(states, vec![s2]);
    assert_eq!(bundles, vec![bundle_of("h3").unwrap()]);

    edge.applied(2, vec![]);
    assert_eq!(
      pump(&mut edge, &mut control, t0),
      vec![ControlEvent::Applied {
        revision: 2,
        errors: vec![]
      }]
    );
  }

  #[test]
  fn bundles_are_asked_for_one_at_a_time_and_go_before_their_state() {
    let t0 = Instant::now();
    let mut edge = EdgeSession::new(t0, Timing::default(), "e1".into(), 0, vec![], vec![]);
    let mut control = ControlSession::new(t0, Timing::default());
    pump(&mut edge, &mut control, t0);
    control.offer(&desired(1, &["h1", "h2", "h3"]));
    let mut sent = Vec::new();
    for expected in ["h1", "h2", "h3"] {
      // Nothing goes out while a bundle is being looked up.
      assert_eq!(
        drain(|| control.poll_event()),
        vec![ControlEvent::NeedBundle(expected.into())]
      );
      // An answer for another hash (late, or confused) is ignored.
      control.bundle("zz", bundle_of("zz"));
      control.bundle(expected, bundle_of(expected));
      sent.extend(drain(|| control.poll_transmit(t0)));
    }
    assert!(control.poll_event().is_none());
    let kinds: Vec<&str> = sent
      .iter()
      .map(|m| match m {
        ToEdge::Bundle(_) => "bundle",
        ToEdge::State { .. } => "state",
        _ => "other",
      })
      .collect();
    assert_eq!(kinds, ["bundle", "bundle", "bundle", "state"]);
  }

  #[test]
  fn a_newer_offer_during_a_catch_up_sends_only_the_newest_state() {
    let t0 = Instant::now();
    let mut edge = EdgeSession::new(t0, Timing::default(), "e1".into(), 0, vec![], vec![]);
    let mut control = ControlSession::new(t0, Timing::default());
    pump(&mut edge, &mut control, t0);
    control.offer(&desired(1, &["h1", "h2"]));
    let Some(ControlEvent::NeedBundle(first)) = control.poll_event() else {
      panic!("expected a bundle request")
    };
    control.bundle(&first, bundle_of(&first));
    // Revision 2 arrives while h2 is still to be sent; a missing bundle is
    // skipped and the state still goes.
    control.offer(&desired(2, &["h2", "h3"]));
    let Some(ControlEvent::NeedBundle(h2)) = control.poll_event() else {
      panic!("expected a bundle request")
    };
    control.bundle(&h2, bundle_of(&h2));
    let Some(ControlEvent::NeedBundle(h3)) = control.poll_event() else {
      panic!("expected a bundle request")
    };
    control.bundle(&h3, None);
    pump(&mut edge, &mut control, t0);
    let (bundles, states) = received(&mut edge);
    assert_eq!(
      bundles,
      vec![bundle_of("h1").unwrap(), bundle_of("h2").unwrap()]
    );
    assert_eq!(states, vec![desired(2, &["h2", "h3"])]);

    // The unreadable bundle is asked for again with the next revision.
    control.offer(&desired(3, &["h2", "h3"]));
    assert_eq!(
      drain(|| control.poll_event()),
      vec![ControlEvent::NeedBundle("h3".into())]
    );
    control.bundle("h3", bundle_of("h3"));
    pump(&mut edge, &mut control, t0);
    let (bundles, states) = received(&mut edge);
    assert_eq!(bundles, vec![bundle_of("h3").unwrap()]);
    assert_eq!(states, vec![desired(3, &["h2", "h3"])]);
  }

  /// The catch-up that once needed one frame of every missing bundle: an
  /// edge missing twelve versions at the 25 MiB limit (300 MiB) gets them
  /// in frames that each fit [`codec::MAX_FRAME`].
  #[test]
  fn an_edge_missing_300_mib_of_versions_catches_up() {
    use crate::codec;
    use crate::manifest::MAX_VERSION_BYTES;
    let t0 = Instant::now();
    let mut edge = EdgeSession::new(t0, Timing::default(), "e1".into(), 0, vec![], vec![]);
    let mut control = ControlSession::new(t0, Timing::default());
    pump(&mut edge, &mut control, t0);
    let hashes: Vec<String> = (0..12).map(|i| format!("h{i}")).collect();
    let hash_refs: Vec<&str> = hashes.iter().map(String::as_str).collect();
    let state = desired(1, &hash_refs);
    control.offer(&state);
    let (mut bundles, mut total, mut largest) = (0, 0usize, 0usize);
    let mut decoder = codec::Decoder::new();
    loop {
      while let Some(ControlEvent::NeedBundle(hash)) = control.poll_event() {
        control.bundle(&hash, Some(full_bundle(&hash)));
      }
      let Some(msg) = control.poll_transmit(t0) else {
        break;
      };
      let frame = codec::encode(&msg);
      largest = largest.max(frame.len() - 4);
      decoder.push(&frame);
      let msg: ToEdge = decoder.decode().unwrap().expect("a whole frame");
      edge.handle(msg, t0);
      while let Some(event) = edge.poll_event() {
        match event {
          EdgeEvent::Bundle(b) => {
            bundles += 1;
            total += b.modules.iter().map(|m| m.len()).sum::<usize>();
          }
          EdgeEvent::Apply(applied) => {
            assert_eq!(applied, state);
            assert_eq!((bundles, total), (12, 12 * MAX_VERSION_BYTES));
            assert!(largest <= codec::MAX_FRAME, "{largest}");
            return;
          }
          other => panic!("{other:?}"),
        }
      }
    }
    panic!("the state never arrived");
  }

  #[test]
  fn a_reconnecting_edge_catches_up_from_its_revision_without_refetching() {
    let t0 = Instant::now();
    // The edge applied revision 3 and has h1 on disk.
    let mut edge = EdgeSession::new(
      t0,
      Timing::default(),
      "e1".into(),
      3,
      vec!["h1".into()],
      vec![],
    );
    let mut control = ControlSession::new(t0, Timing::default());
    pump(&mut edge, &mut control, t0);
    // Up to date: nothing is sent.
    control.offer(&desired(3, &["h1"]));
    assert!(control.poll_transmit(t0).is_none());
    assert!(control.poll_event().is_none());
    // Missed revisions 4 and 5: one message with the latest, h1 not resent.
    control.offer(&desired(5, &["h1", "h9"]));
    pump(&mut edge, &mut control, t0);
    let (bundles, states) = received(&mut edge);
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].revision, 5);
    assert_eq!(bundles, vec![bundle_of("h9").unwrap()]);
  }

  #[test]
  fn a_control_plane_restored_to_an_older_revision_still_resyncs_the_edge() {
    let t0 = Instant::now();
    let mut edge = EdgeSession::new(t0, Timing::default(), "e1".into(), 9, vec![], vec![]);
    let mut control = ControlSession::new(t0, Timing::default());
    pump(&mut edge, &mut control, t0);
    control.offer(&desired(4, &[]));
    let sent = control.poll_transmit(t0);
    assert!(matches!(sent, Some(ToEdge::State { .. })), "{sent:?}");
  }

  #[test]
  fn an_old_or_repeated_state_is_not_applied_twice() {
    let t0 = Instant::now();
    let mut edge = EdgeSession::new(t0, Timing::default(), "e1".into(), 4, vec![], vec![]);
    for revision in [3, 4, 5, 5] {
      edge.handle(
        ToEdge::State {
          state: desired(revision, &[]),
        },
        t0,
      );
    }
    let applied: Vec<Revision> = drain(|| edge.poll_event())
      .into_iter()
      .map(|e| match e {
        EdgeEvent::Apply(state) => state.revision,
        other => panic!("{other:?}"),
      })
      .collect();
    assert_eq!(applied, vec![5]);
  }

  #[test]
  fn usage_is_resent_until_stored_and_acknowledged_once() {
    let t0 = Instant::now();
    // Two batches survived on disk from before a restart.
    let mut edge = EdgeSession::new(
      t0,
      Timing::default(),
      "e1".into(),
      0,
      vec![],
      vec![batch("b1"), batch("b2")],
    );
    let mut control = ControlSession::new(t0, Timing::default());
    let usage: Vec<String> = pump(&mut edge, &mut control, t0)
      .into_iter()
      .filter_map(|e| match e {
        ControlEvent::Usage(b) => Some(b.id),
        _ => None,
      })
      .collect();
    assert_eq!(usage, vec!["b1", "b2"]);
    assert_eq!(edge.usage_in_flight(), 2);
    // Only b1 was committed before the connection broke.
    control.usage_stored("b1".into());
    pump(&mut edge, &mut control, t0);
    assert_eq!(
      drain(|| edge.poll_event()),
      vec![EdgeEvent::UsageStored("b1".into())]
    );
    assert_eq!(edge.usage_in_flight(), 1);
    // A duplicate or unknown ack is ignored.
    edge.handle(ToEdge::UsageStored { id: "b1".into() }, t0);
    edge.handle(ToEdge::UsageStored { id: "zz".into() }, t0);
    assert!(edge.poll_event().is_none());
  }

  #[test]
  fn a_tick_is_accepted_at_once_and_its_report_recorded() {
    let t0 = Instant::now();
    let mut edge = EdgeSession::new(t0, Timing::default(), "e1".into(), 0, vec![], vec![]);
    let mut control = ControlSession::new(t0, Timing::default());
    pump(&mut edge, &mut control, t0);
    let tick = Tick {
      id: 7,
      worker: "acme_cron".into(),
      cron: "*/5 * * * *".into(),
      scheduled_time: 1_800_000_000_000,
      cpu_ms: 30_000,
    };
    control.run(tick.clone());
    let events = pump(&mut edge, &mut control, t0);
    assert_eq!(events, vec![ControlEvent::RunAccepted(7)]);
    assert_eq!(drain(|| edge.poll_event()), vec![EdgeEvent::Run(tick)]);
    let report = TickReport {
      id: 7,
      outcome: crate::msg::RunOutcome::Exception,
      no_retry: true,
      version: Some("v".into()),
      cpu_us: 5,
      wall_us: 9,
    };
    edge.run_done(report.clone());
    assert_eq!(
      pump(&mut edge, &mut control, t0),
      vec![ControlEvent::RunDone(report)]
    );
    control.run_recorded(7);
    pump(&mut edge, &mut control, t0);
    assert_eq!(drain(|| edge.poll_event()), vec![EdgeEvent::RunRecorded(7)]);
  }

  #[test]
  fn keepalive_pings_and_a_silent_peer_closes_the_session() {
    let t0 = Instant::now();
    let timing = Timing {
      keepalive: Duration::from_secs(5),
      idle_timeout: Duration::from_secs(20),
    };
    let mut edge = EdgeSession::new(t0, timing, "e1".into(), 0, vec![], vec![]);
    assert!(matches!(
      edge.poll_transmit(t0),
      Some(ToControl::Hello { .. })
    ));
    assert_eq!(edge.poll_timeout(), Some(t0 + Duration::from_secs(5)));

    // Nothing due early.
    edge.handle_timeout(t0 + Duration::from_secs(4));
    assert!(edge.poll_transmit(t0 + Duration::from_secs(4)).is_none());
    // Keepalive due: one ping.
    let t5 = t0 + Duration::from_secs(5);
    edge.handle_timeout(t5);
    assert_eq!(edge.poll_transmit(t5), Some(ToControl::Ping));
    assert!(edge.poll_transmit(t5).is_none());
    // The peer talking resets the idle clock.
    edge.handle(ToEdge::Ping, t0 + Duration::from_secs(15));
    edge.handle_timeout(t0 + Duration::from_secs(34));
    assert!(edge.closed().is_none());
    edge.handle_timeout(t0 + Duration::from_secs(35));
    assert!(edge.closed().unwrap().contains("heard nothing"));
    assert_eq!(edge.poll_timeout(), None);
  }

  #[test]
  fn a_wrong_protocol_or_a_message_before_hello_is_refused() {
    let t0 = Instant::now();
    let mut control = ControlSession::new(t0, Timing::default());
    control.handle(
      ToControl::Hello {
        protocol: PROTOCOL_VERSION + 1,
        edge: "e1".into(),
        revision: 0,
        versions: vec![],
        site: EdgeSite::default(),
      },
      t0,
    );
    let Some(ToEdge::Refused { reason }) = control.poll_transmit(t0) else {
      panic!("expected a refusal")
    };
    assert!(reason.contains("protocol"), "{reason}");
    assert!(control.closed().is_some());

    let mut control = ControlSession::new(t0, Timing::default());
    control.handle(ToControl::Usage(batch("b1")), t0);
    assert!(
      control.poll_event().is_none(),
      "usage before hello is not stored"
    );
    assert!(control.closed().unwrap().contains("hello"));

    // The edge side ends on a refusal and says why.
    let mut edge = EdgeSession::new(t0, Timing::default(), "e1".into(), 0, vec![], vec![]);
    edge.handle(
      ToEdge::Refused {
        reason: "not enrolled".into(),
      },
      t0,
    );
    assert!(edge.closed().unwrap().contains("not enrolled"));
  }

  #[test]
  fn backoff_grows_to_its_cap_with_jitter_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let full: Vec<Duration> = (0..8).map(|_| b.next_delay(0.999_999)).collect();
    assert!(full[0] <= Duration::from_millis(100) && full[0] > Duration::from_millis(99));
    assert!(full[1] > Duration::from_millis(199));
    assert!(full[7] <= Duration::from_secs(5) && full[7] > Duration::from_millis(4999));
    b.reset();
    assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
  }
}
