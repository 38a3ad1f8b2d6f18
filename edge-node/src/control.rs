//! The control channel, edge side: a QUIC connection to `isola-control`
//! authenticated by this node's certificate. The protocol rules live in
//! [`isola_proto::EdgeSession`]; this file moves its messages, applies the
//! states it hands out and keeps usage on disk until the control plane has
//! stored it.
//!
//! ```text
//! <data_dir>/control/state.json        last applied desired state (0600)
//! <data_dir>/control/usage/<id>.json   usage batches not yet acknowledged
//! ```

use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use anyhow::Context as _;
use isola_io::channel;
use isola_io::channel::Handler;
use isola_io::BoxError;
use isola_proto::msg::DesiredState;
use isola_proto::msg::Revision;
use isola_proto::msg::Tick;
use isola_proto::msg::TickReport;
use isola_proto::msg::UsageBatch;
use isola_proto::msg::UsageRecord;
use isola_proto::msg::VersionBundle;
use isola_proto::Backoff;
use isola_proto::EdgeEvent;
use isola_proto::EdgeSession;
use isola_proto::Timing;
use isola_runtime::Metrics;
use tokio::sync::mpsc;

use crate::config::ControlConfig;
use crate::kv::EdgeKv;
use crate::kv::Upstream;
use crate::store::write_atomic;
use isola_proto::queue::Batch;
use isola_proto::queue::BatchReport;

/// What the control client needs of the node. Narrow on purpose: the
/// client depends on this, not on the node, so it is tested in-process
/// against a stand-in.
pub trait Target: Send + Sync + 'static {
  /// The control-plane revision the node serves (0 before the first).
  fn revision(&self) -> Revision;
  /// Hashes of the versions the node holds, so none is sent twice.
  fn versions(&self) -> anyhow::Result<Vec<String>>;
  /// Keeps a version pushed ahead of the state that serves it (blocking
  /// file IO).
  fn store_bundle(&self, bundle: &VersionBundle) -> anyhow::Result<()>;
  /// Switches to `state`; returns why workers kept their previous
  /// deployment, if any did.
  fn apply(&self, state: DesiredState) -> impl Future<Output = Vec<String>> + Send;
  /// Whether `worker` comes from the node's config file rather than the
  /// control plane (its usage is not shipped).
  fn is_static(&self, worker: &str) -> bool;
  /// Runs a scheduled tick to its end.
  fn scheduled(&self, tick: Tick) -> impl Future<Output = TickReport> + Send;
  /// Runs a queue consumer on a batch to its end.
  fn consume(&self, batch: Batch) -> impl Future<Output = BatchReport> + Send;
}

/// Reports of scheduled runs the control plane has not recorded yet. Kept
/// across connections (in memory): a run that ends while the channel is
/// down is reported on the next one.
#[derive(Clone, Default)]
pub struct Reports {
  inner: Arc<std::sync::Mutex<RunsState>>,
}

#[derive(Default)]
struct RunsState {
  /// Runs going on now.
  running: std::collections::BTreeSet<u64>,
  /// Runs ended and not yet recorded.
  pending: std::collections::BTreeMap<u64, TickReport>,
  /// The same for queue batches (their ids are another series).
  consuming: std::collections::BTreeSet<u64>,
  consumed: std::collections::BTreeMap<u64, BatchReport>,
}

impl Reports {
  fn lock(&self) -> std::sync::MutexGuard<'_, RunsState> {
    self.inner.lock().unwrap_or_else(|e| e.into_inner())
  }
}

/// The last state applied, if this node ever applied one.
pub fn load_state(dir: &Path) -> anyhow::Result<Option<DesiredState>> {
  let path = dir.join("state.json");
  match std::fs::read(&path) {
    Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
      format!(
        "{} is corrupt; delete it to fetch the state again",
        path.display()
      )
    }),
    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
    Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
  }
}

pub fn save_state(dir: &Path, state: &DesiredState) -> anyhow::Result<()> {
  let json = serde_json::to_vec(state).expect("a state always serialises");
  write_atomic(&dir.join("state.json"), &json)?;
  Ok(())
}

/// Usage batches on disk from the moment they are cut until the control
/// plane acknowledges them, so neither a restart of this node nor of the
/// control plane loses any.
#[derive(Clone, Debug)]
pub struct Spool {
  dir: PathBuf,
}

impl Spool {
  pub fn open(control_dir: &Path) -> anyhow::Result<Self> {
    let dir = control_dir.join("usage");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(Self { dir })
  }

  fn path(&self, id: &str) -> PathBuf {
    self.dir.join(format!("{id}.json"))
  }

  pub fn write(&self, batch: &UsageBatch) -> anyhow::Result<()> {
    let json = serde_json::to_vec(batch).expect("a batch always serialises");
    write_atomic(&self.path(&batch.id), &json)?;
    Ok(())
  }

  /// Batches not yet acknowledged, oldest first (ids start with the time).
  pub fn pending(&self) -> anyhow::Result<Vec<UsageBatch>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&self.dir)? {
      let name = entry?.file_name();
      if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
        if !id.starts_with('.') {
          names.push(id.to_string());
        }
      }
    }
    names.sort();
    let mut batches = Vec::new();
    for id in names {
      let path = self.path(&id);
      match std::fs::read(&path).map(|b| serde_json::from_slice::<UsageBatch>(&b)) {
        Ok(Ok(batch)) => batches.push(batch),
        // A batch that cannot be read would be resent forever; keep the
        // file for the operator and say so.
        Ok(Err(e)) => tracing::error!(
          path = %path.display(),
          error = %e,
          "skipping a corrupt usage batch; it stays on disk for inspection"
        ),
        Err(e) => tracing::error!(
          path = %path.display(),
          error = %e,
          "cannot read a usage batch"
        ),
      }
    }
    Ok(batches)
  }

  pub fn remove(&self, id: &str) {
    let _ = std::fs::remove_file(self.path(id));
  }
}

fn unix_now() -> u64 {
  SystemTime::now()
    .duration_since(SystemTime::UNIX_EPOCH)
    .map_or(0, |d| d.as_secs())
}

/// A fresh batch id: the time first, so the spool lists in order, then
/// randomness, so ids never repeat across restarts or lost disks.
fn batch_id() -> String {
  let ms = SystemTime::now()
    .duration_since(SystemTime::UNIX_EPOCH)
    .map_or(0, |d| d.as_millis());
  format!("{ms:016x}-{:016x}", rand::random::<u64>())
}

/// Turns the node's metered usage of control-plane workers into batches on
/// disk.
pub struct UsageCutter<T> {
  node: Arc<T>,
  metrics: Metrics,
  spool: Spool,
  /// Start of the window the next batch covers.
  start: std::sync::Mutex<u64>,
}

impl<T: Target> UsageCutter<T> {
  pub fn new(node: Arc<T>, metrics: Metrics, spool: Spool) -> Self {
    Self {
      node,
      metrics,
      spool,
      start: std::sync::Mutex::new(unix_now()),
    }
  }

  /// Drains the usage metered since the last cut into a batch, writes it
  /// to disk and returns it; `None` when nothing ran or it could not be
  /// written.
  pub fn cut(&self) -> Option<UsageBatch> {
    let mut start = self.start.lock().unwrap_or_else(|e| e.into_inner());
    let end = unix_now();
    let records: Vec<UsageRecord> = self
      .metrics
      .drain_usage()
      .into_iter()
      .filter(|(worker, _, _)| !self.node.is_static(worker))
      .map(|(worker, version, usage)| UsageRecord {
        worker: worker.to_string(),
        version: version.to_string(),
        start: *start,
        end,
        usage,
      })
      .collect();
    *start = end;
    if records.is_empty() {
      return None;
    }
    let batch = UsageBatch {
      id: batch_id(),
      records,
    };
    match self.spool.write(&batch) {
      Ok(()) => Some(batch),
      Err(e) => {
        tracing::error!(
          error = format!("{e:#}"),
          "cannot keep usage on disk, it is lost"
        );
        None
      }
    }
  }

  /// Cuts a batch every `interval` and hands it to the connection.
  pub async fn run(self: Arc<Self>, interval: Duration, tx: mpsc::UnboundedSender<UsageBatch>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
      ticker.tick().await;
      if let Some(batch) = self.cut() {
        let _ = tx.send(batch);
      }
    }
  }
}

/// Follows the control plane for the life of the process: connects, keeps
/// the session going, and after any failure reconnects with backoff while
/// the node goes on serving what it last applied.
pub async fn run<T: Target>(
  cfg: ControlConfig,
  node: Arc<T>,
  spool: Spool,
  mut usage: mpsc::UnboundedReceiver<UsageBatch>,
  kv: Arc<EdgeKv>,
  upstream: Arc<Upstream>,
) -> anyhow::Result<()> {
  let client = channel::client_config(channel::TlsFiles {
    ca: &cfg.ca,
    cert: &cfg.cert,
    key: &cfg.key,
  })?;
  let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
  let mut logged_down = false;
  let addresses: Vec<String> = cfg.addresses().into_iter().map(str::to_owned).collect();
  // The replica in use; the next one is tried after any failure.
  let mut at = 0;
  let reports = Reports::default();
  let (done_tx, mut done_rx) = mpsc::unbounded_channel();
  loop {
    let mut link = Link {
      usage: &mut usage,
      kv: &kv,
      upstream: &upstream,
      reports: &reports,
      done_tx: &done_tx,
      done_rx: &mut done_rx,
    };
    let address = &addresses[at % addresses.len()];
    let result = session(
      address,
      &cfg,
      &client,
      &node,
      &spool,
      &mut link,
      &mut backoff,
    )
    .await;
    upstream.set(None);
    match result {
      Ok(reason) => {
        tracing::warn!(address, reason, "control channel closed");
        logged_down = false;
      }
      Err(e) if !logged_down => {
        tracing::warn!(
          address,
          error = format!("{e:#}"),
          "control plane unreachable, serving the last applied state"
        );
        logged_down = true;
      }
      Err(e) => tracing::debug!(
        address,
        error = format!("{e:#}"),
        "control plane unreachable"
      ),
    }
    at += 1;
    // A lost replica: the next one straight away, once per round; the
    // backoff paces whole rounds.
    if at % addresses.len() == 0 {
      tokio::time::sleep(backoff.next_delay(rand::random())).await;
    }
    // Batches cut while disconnected are on disk, and reports of runs that
    // ended are in `reports`; the next session sends them from there.
    while usage.try_recv().is_ok() {}
    while done_rx.try_recv().is_ok() {}
  }
}

async fn session<T: Target>(
  address: &str,
  cfg: &ControlConfig,
  client: &quinn::ClientConfig,
  node: &Arc<T>,
  spool: &Spool,
  link: &mut Link<'_>,
  backoff: &mut Backoff,
) -> anyhow::Result<String> {
  let (_endpoint, conn) = channel::connect(address, &cfg.server_name, client).await?;
  let (mut send, mut recv) = channel::open_stream(&conn).await?;
  let mut session = EdgeSession::new(
    Instant::now(),
    Timing::default(),
    cfg.name.clone(),
    node.revision(),
    node.versions()?,
    spool.pending()?,
  )
  .with_site(cfg.site.clone());
  {
    let runs = link.reports.lock();
    for id in &runs.running {
      session.still_running(*id);
    }
    for report in runs.pending.values() {
      session.run_done(report.clone());
    }
    for id in &runs.consuming {
      session.still_consuming(*id);
    }
    for report in runs.consumed.values() {
      session.batch_done(report.clone());
    }
  }
  // Changes missed while the channel was down are unknown: the KV cache
  // starts over.
  link.kv.invalidate(None);
  link.upstream.set(Some(conn.clone()));
  let mut handler = Connection {
    node: node.clone(),
    spool,
    link,
    backoff,
    refused: Vec::new(),
  };
  let reason = channel::drive(&mut session, &mut handler, &mut send, &mut recv).await?;
  conn.close(0u32.into(), b"closing");
  Ok(reason)
}

/// What outlives one connection: usage batches to ship, and scheduled runs
/// going on and their reports.
struct Link<'a> {
  usage: &'a mut mpsc::UnboundedReceiver<UsageBatch>,
  kv: &'a EdgeKv,
  upstream: &'a Upstream,
  reports: &'a Reports,
  done_tx: &'a mpsc::UnboundedSender<Done>,
  done_rx: &'a mut mpsc::UnboundedReceiver<Done>,
}

/// A run or a batch that ended.
enum Done {
  Run(TickReport),
  Batch(BatchReport),
}

/// What a connection is handed besides the peer's messages.
enum Input {
  Usage(UsageBatch),
  Done(Done),
}

/// One connection's work on the edge: what the session's events ask of the
/// node and the spool, and usage batches to ship.
struct Connection<'a, 'b, T> {
  node: Arc<T>,
  spool: &'a Spool,
  link: &'a mut Link<'b>,
  backoff: &'a mut Backoff,
  /// Pushed versions the store refused, reported with the next apply.
  refused: Vec<String>,
}

impl<T: Target> Handler<EdgeSession> for Connection<'_, '_, T> {
  type Input = Input;

  async fn next_input(&mut self) -> Option<Input> {
    tokio::select! {
      batch = self.link.usage.recv() => batch.map(Input::Usage),
      done = self.link.done_rx.recv() => done.map(Input::Done),
    }
  }

  fn input(&mut self, session: &mut EdgeSession, input: Input) {
    match input {
      Input::Usage(batch) => session.send_usage(batch),
      Input::Done(Done::Run(report)) => session.run_done(report),
      Input::Done(Done::Batch(report)) => session.batch_done(report),
    }
  }

  async fn event(&mut self, session: &mut EdgeSession, event: EdgeEvent) -> Result<(), BoxError> {
    match event {
      EdgeEvent::Bundle(bundle) => {
        // Off the async thread: writing up to 25 MiB and fsyncing it.
        let node = self.node.clone();
        let stored = tokio::task::spawn_blocking(move || node.store_bundle(&bundle)).await?;
        if let Err(e) = stored {
          self
            .refused
            .push(format!("a pushed version was refused: {e:#}"));
        }
      }
      EdgeEvent::Apply(state) => {
        let revision = state.revision;
        let mut errors = std::mem::take(&mut self.refused);
        errors.extend(self.node.apply(state).await);
        session.applied(revision, errors);
      }
      EdgeEvent::UsageStored(id) => self.spool.remove(&id),
      EdgeEvent::Run(tick) => {
        // The run goes on whatever happens to this connection; its report
        // waits in `reports` until the control plane has recorded it.
        let (node, reports, done) = (
          self.node.clone(),
          self.link.reports.clone(),
          self.link.done_tx.clone(),
        );
        reports.lock().running.insert(tick.id);
        tokio::spawn(async move {
          let report = node.scheduled(tick).await;
          {
            let mut runs = reports.lock();
            runs.running.remove(&report.id);
            runs.pending.insert(report.id, report.clone());
          }
          let _ = done.send(Done::Run(report));
        });
      }
      EdgeEvent::Deliver(batch) => {
        let (node, reports, done) = (
          self.node.clone(),
          self.link.reports.clone(),
          self.link.done_tx.clone(),
        );
        reports.lock().consuming.insert(batch.id);
        tokio::spawn(async move {
          let report = node.consume(batch).await;
          {
            let mut runs = reports.lock();
            runs.consuming.remove(&report.id);
            runs.consumed.insert(report.id, report.clone());
          }
          let _ = done.send(Done::Batch(report));
        });
      }
      EdgeEvent::BatchRecorded(id) => {
        self.link.reports.lock().consumed.remove(&id);
      }
      EdgeEvent::RunRecorded(id) => {
        self.link.reports.lock().pending.remove(&id);
      }
      EdgeEvent::KvChanged(change) => self.link.kv.invalidate(change),
    }
    Ok(())
  }

  fn heard(&mut self) {
    self.backoff.reset();
  }
}

#[cfg(test)]
mod tests {
  use std::collections::BTreeSet;
  use std::net::SocketAddr;
  use std::sync::atomic::AtomicU64;
  use std::sync::atomic::Ordering;
  use std::sync::Mutex;

  use isola_io::testing::Identity;
  use isola_io::testing::SERVER_NAME;
  use isola_proto::msg::Usage;
  use isola_proto::testing::desired;
  use isola_proto::ControlEvent;
  use isola_proto::ControlSession;
  use tokio::sync::watch;

  use super::*;

  /// A node that keeps what it is given in memory.
  #[derive(Default)]
  struct FakeNode {
    revision: AtomicU64,
    versions: Mutex<BTreeSet<String>>,
    applied: Mutex<Vec<Revision>>,
  }

  impl Target for FakeNode {
    fn revision(&self) -> Revision {
      self.revision.load(Ordering::Acquire)
    }

    fn versions(&self) -> anyhow::Result<Vec<String>> {
      Ok(self.versions.lock().unwrap().iter().cloned().collect())
    }

    fn store_bundle(&self, bundle: &VersionBundle) -> anyhow::Result<()> {
      let hash = String::from_utf8(bundle.manifest.clone())?;
      self.versions.lock().unwrap().insert(hash);
      Ok(())
    }

    async fn apply(&self, state: DesiredState) -> Vec<String> {
      let versions = self.versions.lock().unwrap();
      let missing: Vec<String> = state
        .version_hashes()
        .filter(|h| !versions.contains(*h))
        .map(|h| format!("version {h} is missing"))
        .collect();
      self.applied.lock().unwrap().push(state.revision);
      self.revision.store(state.revision, Ordering::Release);
      missing
    }

    fn is_static(&self, _: &str) -> bool {
      false
    }

    async fn consume(&self, batch: Batch) -> BatchReport {
      BatchReport {
        id: batch.id,
        ok: true,
        messages: Vec::new(),
        unavailable: false,
        cpu_us: 1,
        wall_us: 2,
        version: None,
      }
    }

    async fn scheduled(&self, tick: Tick) -> TickReport {
      TickReport {
        id: tick.id,
        outcome: isola_proto::msg::RunOutcome::Ok,
        no_retry: false,
        version: None,
        cpu_us: 1,
        wall_us: 2,
      }
    }
  }

  /// What the stand-in control plane saw.
  #[derive(Debug, PartialEq)]
  enum Seen {
    Hello(Revision),
    Asked(String),
    Applied(Revision, Vec<String>),
    Usage(String),
    Accepted(u64),
    Done(u64),
  }

  /// A control plane as far as the channel goes: the real session and
  /// driver, serving `state` and bundles named by their hash.
  struct StandIn {
    state: watch::Receiver<DesiredState>,
    seen: mpsc::UnboundedSender<Seen>,
  }

  impl Handler<ControlSession> for StandIn {
    type Input = DesiredState;

    async fn next_input(&mut self) -> Option<DesiredState> {
      self.state.changed().await.ok()?;
      Some(self.state.borrow_and_update().clone())
    }

    fn input(&mut self, session: &mut ControlSession, state: DesiredState) {
      session.offer(&state);
    }

    async fn event(
      &mut self,
      session: &mut ControlSession,
      event: ControlEvent,
    ) -> Result<(), BoxError> {
      let seen = match event {
        ControlEvent::Hello { revision, .. } => {
          session.offer(&self.state.borrow_and_update().clone());
          Seen::Hello(revision)
        }
        ControlEvent::NeedBundle(hash) => {
          let bundle = VersionBundle {
            manifest: hash.clone().into_bytes(),
            modules: Vec::new(),
          };
          session.bundle(&hash, Some(bundle));
          Seen::Asked(hash)
        }
        ControlEvent::Applied { revision, errors } => Seen::Applied(revision, errors),
        ControlEvent::Usage(batch) => {
          session.usage_stored(batch.id.clone());
          Seen::Usage(batch.id)
        }
        ControlEvent::RunAccepted(id) | ControlEvent::BatchAccepted(id) => Seen::Accepted(id),
        ControlEvent::RunDone(report) => {
          session.run_recorded(report.id);
          Seen::Done(report.id)
        }
        ControlEvent::BatchDone(report) => {
          session.batch_recorded(report.id);
          Seen::Done(report.id)
        }
      };
      self.seen.send(seen)?;
      Ok(())
    }
  }

  /// Serves the stand-in on `addr` until `stop` is sent; the task then
  /// closes every connection and releases the port.
  fn control_plane(
    id: &Identity,
    addr: SocketAddr,
    state: watch::Receiver<DesiredState>,
    seen: mpsc::UnboundedSender<Seen>,
  ) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
  ) {
    let endpoint =
      quinn::Endpoint::server(channel::server_config(id.server()).unwrap(), addr).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
      let mut connections = tokio::task::JoinSet::new();
      loop {
        let incoming = tokio::select! {
          incoming = endpoint.accept() => incoming,
          _ = &mut stopped => break,
        };
        let Some(incoming) = incoming else { break };
        let (state, seen) = (state.clone(), seen.clone());
        connections.spawn(async move {
          let conn = incoming.await.ok()?;
          let (mut send, mut recv) = channel::accept_stream(&conn).await.ok()?;
          let mut session = ControlSession::new(Instant::now(), Timing::default());
          let mut stand_in = StandIn { state, seen };
          channel::drive(&mut session, &mut stand_in, &mut send, &mut recv)
            .await
            .ok()
        });
      }
      connections.abort_all();
      endpoint.close(0u32.into(), b"restarting");
      endpoint.wait_idle().await;
    });
    (addr, stop, task)
  }

  async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(20), seen.recv())
      .await
      .expect("the control plane heard from the edge")
      .expect("the stand-in runs")
  }

  /// The client end to end in one process: hello, bundles ahead of their
  /// state, a live push, usage shipped from the spool and deleted once
  /// acknowledged, and after the control plane restarts a reconnect that
  /// says what the node has, so nothing is sent twice.
  #[tokio::test]
  async fn the_client_applies_pushes_ships_usage_and_catches_up_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::new(dir.path());
    let (state_tx, state_rx) = watch::channel(desired(1, &["h1", "h2"]));
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (addr, stop, control) = control_plane(
      &id,
      "127.0.0.1:0".parse().unwrap(),
      state_rx.clone(),
      seen_tx.clone(),
    );
    let cfg = ControlConfig {
      address: Some(addr.to_string()),
      addresses: Vec::new(),
      trace_events: true,
      name: "edge-1".into(),
      ca: id.ca.clone(),
      cert: id.edge_cert.clone(),
      key: id.edge_key.clone(),
      server_name: SERVER_NAME.into(),
      usage_interval_ms: 1000,
      site: Default::default(),
    };
    let node = Arc::new(FakeNode::default());
    let spool = Spool::open(&dir.path().join("control")).unwrap();
    let (usage_tx, usage_rx) = mpsc::unbounded_channel();
    let client = tokio::spawn(run(
      cfg,
      node.clone(),
      spool.clone(),
      usage_rx,
      Arc::new(EdgeKv::new(Arc::default(), 1 << 20)),
      Arc::default(),
    ));

    assert_eq!(next(&mut seen).await, Seen::Hello(0));
    assert_eq!(next(&mut seen).await, Seen::Asked("h1".into()));
    assert_eq!(next(&mut seen).await, Seen::Asked("h2".into()));
    // Both bundles were stored before the state was applied.
    assert_eq!(next(&mut seen).await, Seen::Applied(1, vec![]));

    // A change while connected: only the new version travels.
    state_tx.send(desired(2, &["h2", "h3"])).unwrap();
    assert_eq!(next(&mut seen).await, Seen::Asked("h3".into()));
    assert_eq!(next(&mut seen).await, Seen::Applied(2, vec![]));

    // Usage goes out from the spool and is deleted once stored.
    let batch = UsageBatch {
      id: "0001-usage".into(),
      records: vec![UsageRecord {
        worker: "acme_h2".into(),
        version: "h2".into(),
        start: 1,
        end: 2,
        usage: Usage {
          requests: 7,
          ..Usage::default()
        },
      }],
    };
    spool.write(&batch).unwrap();
    usage_tx.send(batch).unwrap();
    assert_eq!(next(&mut seen).await, Seen::Usage("0001-usage".into()));
    for _ in 0..200 {
      if spool.pending().unwrap().is_empty() {
        break;
      }
      tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
      spool.pending().unwrap().is_empty(),
      "acknowledged usage is deleted"
    );

    // The control plane goes away and comes back (same address) at
    // revision 3: the edge reconnects, says it is at 2 with h1..h3, and
    // is sent only h4.
    stop.send(()).unwrap();
    control.await.unwrap();
    state_tx.send(desired(3, &["h3", "h4"])).unwrap();
    let (_, _stop, control) = control_plane(&id, addr, state_rx, seen_tx);
    assert_eq!(next(&mut seen).await, Seen::Hello(2));
    assert_eq!(next(&mut seen).await, Seen::Asked("h4".into()));
    assert_eq!(next(&mut seen).await, Seen::Applied(3, vec![]));
    assert_eq!(*node.applied.lock().unwrap(), vec![1, 2, 3]);

    client.abort();
    control.abort();
  }
}
