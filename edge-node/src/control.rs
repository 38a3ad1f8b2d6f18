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

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use anyhow::Context as _;
use isola_proto::codec;
use isola_proto::msg::DesiredState;
use isola_proto::msg::UsageBatch;
use isola_proto::msg::UsageRecord;
use isola_proto::Backoff;
use isola_proto::EdgeEvent;
use isola_proto::EdgeSession;
use isola_proto::Timing;
use isola_runtime::Metrics;
use tokio::sync::mpsc;

use crate::config::ControlConfig;
use crate::node::Node;
use crate::store::write_atomic;

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
        Ok(Err(e)) => eprintln!(
          "isola-edge: skipping corrupt usage batch {}: {e}",
          path.display()
        ),
        Err(e) => eprintln!(
          "isola-edge: cannot read usage batch {}: {e}",
          path.display()
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
pub struct UsageCutter {
  node: Arc<Node>,
  metrics: Metrics,
  spool: Spool,
  /// Start of the window the next batch covers.
  start: std::sync::Mutex<u64>,
}

impl UsageCutter {
  pub fn new(node: Arc<Node>, metrics: Metrics, spool: Spool) -> Self {
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
        eprintln!("isola-edge: cannot keep usage on disk, it is lost: {e:#}");
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

fn client_config(cfg: &ControlConfig) -> anyhow::Result<quinn::ClientConfig> {
  let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
  let mut roots = rustls::RootCertStore::empty();
  for cert in crate::tls::load_chain(&cfg.ca)? {
    roots
      .add(cert)
      .with_context(|| format!("{} is not a usable CA certificate", cfg.ca.display()))?;
  }
  let chain = crate::tls::load_chain(&cfg.cert)?;
  let key = crate::tls::load_key(&cfg.key)?;
  let mut tls = rustls::ClientConfig::builder_with_provider(provider)
    .with_protocol_versions(&[&rustls::version::TLS13])
    .context("TLS protocol setup")?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .with_context(|| {
      format!(
        "{} and {} do not form a usable client identity",
        cfg.cert.display(),
        cfg.key.display()
      )
    })?;
  tls.alpn_protocols = vec![isola_proto::msg::ALPN.to_vec()];
  let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
    .context("the TLS setup cannot carry QUIC")?;
  let mut client = quinn::ClientConfig::new(Arc::new(quic));
  let mut transport = quinn::TransportConfig::default();
  // As on the control plane: a restarted control plane may reset the old
  // connection at the next keepalive; a vanished one is given up after 5 s.
  transport.keep_alive_interval(Some(Duration::from_secs(1)));
  transport.max_idle_timeout(Some(Duration::from_secs(5).try_into().expect("fits")));
  client.transport_config(Arc::new(transport));
  Ok(client)
}

/// Follows the control plane for the life of the process: connects, keeps
/// the session going, and after any failure reconnects with backoff while
/// the node goes on serving what it last applied.
pub async fn run(
  cfg: ControlConfig,
  node: Arc<Node>,
  spool: Spool,
  mut usage: mpsc::UnboundedReceiver<UsageBatch>,
) -> anyhow::Result<()> {
  let client = client_config(&cfg)?;
  let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
  let mut logged_down = false;
  loop {
    let result = session(&cfg, &client, &node, &spool, &mut usage, &mut backoff).await;
    match result {
      Ok(reason) => eprintln!("isola-edge: control channel closed: {reason}"),
      Err(e) if !logged_down => eprintln!(
        "isola-edge: control plane {} unreachable, serving the last applied state: {e:#}",
        cfg.address
      ),
      Err(_) => {}
    }
    logged_down = true;
    tokio::time::sleep(backoff.next_delay(rand::random())).await;
    // Batches cut while disconnected are on disk; the next session reads
    // them from there.
    while usage.try_recv().is_ok() {}
  }
}

async fn session(
  cfg: &ControlConfig,
  client: &quinn::ClientConfig,
  node: &Arc<Node>,
  spool: &Spool,
  usage: &mut mpsc::UnboundedReceiver<UsageBatch>,
  backoff: &mut Backoff,
) -> anyhow::Result<String> {
  let addr = tokio::net::lookup_host(&cfg.address)
    .await
    .with_context(|| format!("cannot resolve {}", cfg.address))?
    .next()
    .with_context(|| format!("{} resolves to no address", cfg.address))?;
  let bind: std::net::SocketAddr = if addr.is_ipv6() {
    "[::]:0".parse().expect("valid")
  } else {
    "0.0.0.0:0".parse().expect("valid")
  };
  let mut endpoint = quinn::Endpoint::client(bind).context("cannot open a UDP socket")?;
  endpoint.set_default_client_config(client.clone());
  let conn = tokio::time::timeout(
    Duration::from_secs(5),
    endpoint.connect(addr, &cfg.server_name)?,
  )
  .await
  .context("timed out connecting")?
  .context("QUIC handshake failed")?;
  let (mut send, mut recv) = conn.open_bi().await.context("cannot open the stream")?;

  let mut session = EdgeSession::new(
    Instant::now(),
    Timing::default(),
    cfg.name.clone(),
    node.control_revision(),
    node.store().all_versions()?,
    spool.pending()?,
  );
  let mut decoder = codec::Decoder::new();
  let mut buf = vec![0u8; 64 << 10];
  let mut heard = false;
  let mut usage_open = true;
  loop {
    while let Some(msg) = session.poll_transmit(Instant::now()) {
      send.write_all(&codec::encode(&msg)).await?;
    }
    if let Some(event) = session.poll_event() {
      match event {
        EdgeEvent::Apply { state, bundles } => {
          let revision = state.revision;
          let errors = node.apply_control(state, bundles).await;
          session.applied(revision, errors);
        }
        EdgeEvent::UsageStored(id) => spool.remove(&id),
      }
      continue;
    }
    if let Some(reason) = session.closed() {
      let reason = reason.to_string();
      conn.close(0u32.into(), b"closing");
      return Ok(reason);
    }
    let timeout = session
      .poll_timeout()
      .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
    tokio::select! {
      read = recv.read(&mut buf) => {
        let Some(n) = read.context("control stream")? else {
          return Ok("the control plane ended the stream".to_string());
        };
        decoder.push(&buf[..n]);
        while let Some(msg) = decoder.decode()? {
          if !heard {
            heard = true;
            backoff.reset();
          }
          session.handle(msg, Instant::now());
        }
      }
      batch = usage.recv(), if usage_open => match batch {
        Some(batch) => session.send_usage(batch),
        None => usage_open = false,
      },
      _ = tokio::time::sleep_until(timeout.into()) => session.handle_timeout(Instant::now()),
    }
  }
}
