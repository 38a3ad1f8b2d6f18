//! The control channel, control plane side: a QUIC endpoint that only
//! edges holding a certificate from this control plane's CA can reach. The
//! protocol rules live in [`isola_proto::ControlSession`]; this file moves
//! its messages and does what its events ask against the database.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use isola_io::channel;
use isola_io::channel::Handler;
use isola_io::BoxError;
use isola_proto::msg::Call;
use isola_proto::msg::CallReply;
use isola_proto::msg::DesiredState;
use isola_proto::trace::PackedBatch;
use isola_proto::ControlEvent;
use isola_proto::ControlSession;
use isola_proto::Timing;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use tokio::sync::broadcast;
use tokio::sync::watch;

use crate::api::ErrorChain;
use crate::blobs::Blobs;
use crate::db::blocking;
use crate::db::Db;
use crate::fleet::EdgeLink;
use crate::fleet::Fleet;
use crate::fleet::Work;
use crate::kv::Kv;
use crate::queues::driver::Handle as Queues;
use crate::scheduler::driver::Handle as Scheduler;

/// TLS 1.3 with a client certificate required and checked against the CA.
fn server_config(data_dir: &Path) -> anyhow::Result<quinn::ServerConfig> {
  let files = crate::pki::files(data_dir);
  Ok(channel::server_config(channel::TlsFiles {
    ca: &files.ca,
    cert: &files.cert,
    key: &files.key,
  })?)
}

/// The stateless-reset key is kept in the data folder: after a restart, a
/// packet an edge sends on its old connection can be answered with a reset
/// it recognises, so it need not wait for the idle timeout to reconnect.
/// `init` writes it, so a data folder copied to replicas (or mounted read
/// only) is complete; older folders get one at the first `serve`.
pub fn reset_key(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
  let path = data_dir.join("quic-reset.key");
  Ok(match std::fs::read(&path) {
    Ok(key) if key.len() == 64 => key,
    _ => {
      let key: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
      crate::pki::write_file(&path, &key, true)
        .with_context(|| format!("cannot write {}", path.display()))?;
      key
    }
  })
}

fn endpoint_config(data_dir: &Path) -> anyhow::Result<quinn::EndpointConfig> {
  let key = reset_key(data_dir)?;
  let hmac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
  Ok(quinn::EndpointConfig::new(Arc::new(hmac)))
}

/// Accepts edges on `addr` until the process ends.
/// What every edge connection works with.
#[derive(Clone)]
pub struct Shared {
  pub db: Db,
  /// Where the bundles' module bytes are read from.
  pub blobs: Blobs,
  pub state: watch::Receiver<Arc<DesiredState>>,
  pub scheduler: Scheduler,
  pub kv: Kv,
  pub fleet: Fleet,
  pub queues: Queues,
  pub traces: crate::observe::Traces,
}

pub async fn serve(addr: SocketAddr, data_dir: &Path, shared: Shared) -> anyhow::Result<()> {
  let socket = std::net::UdpSocket::bind(addr)
    .with_context(|| format!("cannot listen for edges on {addr} (UDP)"))?;
  tracing::info!(listener = "quic", addr = %socket.local_addr()?, "listening");
  let endpoint = quinn::Endpoint::new(
    endpoint_config(data_dir)?,
    Some(server_config(data_dir)?),
    socket,
    Arc::new(quinn::TokioRuntime),
  )
  .context("cannot start the QUIC endpoint")?;
  while let Some(incoming) = endpoint.accept().await {
    let shared = shared.clone();
    tokio::spawn(async move {
      let remote = incoming.remote_address();
      if let Err(e) = connection(incoming, shared).await {
        tracing::info!(%remote, "edge connection ended: {e:#}");
      }
    });
  }
  Ok(())
}

/// Whether the verified client certificate was issued for edge `name`.
fn cert_names_edge(cert: &CertificateDer<'_>, name: &str) -> bool {
  let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
    return false;
  };
  let Ok(dns) = ServerName::try_from(crate::pki::edge_dns_name(name)) else {
    return false;
  };
  cert.verify_is_valid_for_subject_name(&dns).is_ok()
}

async fn connection(incoming: quinn::Incoming, shared: Shared) -> anyhow::Result<()> {
  let Shared {
    db,
    blobs,
    state,
    scheduler,
    kv,
    fleet,
    queues,
    traces,
  } = shared;
  let conn = incoming.await.context("handshake")?;
  let cert = conn
    .peer_identity()
    .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
    .and_then(|chain| chain.into_iter().next())
    .context("the edge presented no certificate")?;
  let (mut send, mut recv) = channel::accept_stream(&conn).await?;
  let mut session = ControlSession::new(Instant::now(), Timing::default());
  let mut edge = EdgeConnection {
    db,
    blobs,
    state,
    cert,
    name: None,
    scheduler,
    fleet,
    work: None,
    kv,
    queues,
    traces,
    conn: conn.clone(),
    calls: None,
    changes: None,
  };
  let reason = channel::drive(&mut session, &mut edge, &mut send, &mut recv).await?;
  anyhow::bail!("{reason}")
}

/// One edge's connection: the database work its session's events ask for.
struct EdgeConnection {
  db: Db,
  blobs: Blobs,
  state: watch::Receiver<Arc<DesiredState>>,
  /// The certificate the edge presented (already chained to the CA).
  cert: CertificateDer<'static>,
  /// The edge's name, once its hello was accepted.
  name: Option<String>,
  scheduler: Scheduler,
  fleet: Fleet,
  /// Work for this edge (ticks, batches), once it is accepted; the link
  /// takes the edge out of the fleet when the connection ends.
  work: Option<(EdgeLink, tokio::sync::mpsc::UnboundedReceiver<Work>)>,
  kv: Kv,
  queues: Queues,
  traces: crate::observe::Traces,
  conn: quinn::Connection,
  /// The task serving the edge's calls (KV), once it is accepted.
  calls: Option<AbortOnDrop>,
  /// KV changes to pass on, once it is accepted.
  changes: Option<broadcast::Receiver<crate::kv::Change>>,
}

/// Stops a task when the connection that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
  fn drop(&mut self) {
    self.0.abort();
  }
}

/// What an edge connection is handed: a newer desired state, or a tick.
pub enum Input {
  State(Arc<DesiredState>),
  Work(Work),
  /// A KV key changed (`None`: changes were missed).
  KvChanged(Option<crate::kv::Change>),
}

impl EdgeConnection {
  fn name(&self) -> Result<String, BoxError> {
    self
      .name
      .clone()
      .ok_or_else(|| "a message before hello".into())
  }
}

impl Handler<ControlSession> for EdgeConnection {
  type Input = Input;

  async fn next_input(&mut self) -> Option<Input> {
    let work = async {
      match self.work.as_mut() {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
      }
    };
    let changes = async {
      match self.changes.as_mut() {
        Some(rx) => match rx.recv().await {
          Ok(change) => Some(Some(change)),
          Err(broadcast::error::RecvError::Lagged(_)) => Some(None),
          Err(broadcast::error::RecvError::Closed) => None,
        },
        None => std::future::pending().await,
      }
    };
    tokio::select! {
      Some(change) = changes => Some(Input::KvChanged(change)),
      // A closed channel means the control plane is shutting down.
      changed = self.state.changed() => {
        changed.ok()?;
        Some(Input::State(self.state.borrow_and_update().clone()))
      }
      Some(work) = work => Some(Input::Work(work)),
    }
  }

  fn input(&mut self, session: &mut ControlSession, input: Input) {
    match input {
      Input::State(state) => session.offer(&state),
      Input::Work(Work::Tick(tick)) => session.run(tick),
      Input::Work(Work::Batch(batch)) => session.deliver(batch),
      Input::KvChanged(change) => session.kv_changed(change),
    }
  }

  async fn event(
    &mut self,
    session: &mut ControlSession,
    event: ControlEvent,
  ) -> Result<(), BoxError> {
    match event {
      ControlEvent::Hello {
        edge: name,
        revision,
        site,
      } => {
        let known = {
          let (db, name) = (self.db.clone(), name.clone());
          blocking(move || db.edge_exists(&name)).await?
        };
        if !cert_names_edge(&self.cert, &name) {
          session.refuse(format!(
            "the certificate presented was not issued for edge {name:?}"
          ));
        } else if !known {
          session.refuse(format!(
            "edge {name:?} is not enrolled (or was removed); run `isola-control enroll-edge \
             --name {name}` and use the files it writes"
          ));
        } else {
          tracing::info!(edge = %name, revision, "edge connected");
          self.work = Some(self.fleet.connect(&name, site));
          self.changes = Some(self.kv.subscribe());
          let (kv, queues) = (self.kv.clone(), self.queues.clone());
          let (traces, edge) = (self.traces.clone(), name.clone());
          self.calls = Some(AbortOnDrop(tokio::spawn(channel::serve_calls(
            self.conn.clone(),
            move |call: Call| {
              let (kv, queues) = (kv.clone(), queues.clone());
              let (traces, edge) = (traces.clone(), edge.clone());
              async move {
                // Best effort: taken (or counted as dropped) at once.
                let batch = match call {
                  Call::Kv(call) => return CallReply::Kv(kv.call(call).await),
                  Call::Send { call, ids } => return CallReply::Send(queues.call(call, ids).await),
                  Call::Trace(batch) => Ok(batch),
                  Call::Events(packed) => packed.unpack(&edge),
                  Call::EventsLz4(bytes) => PackedBatch::unpack_lz4(&bytes, &edge),
                };
                match batch {
                  Ok(batch) => {
                    traces.ingest(&edge, batch);
                    CallReply::Traced
                  }
                  Err(e) => {
                    tracing::debug!(edge = %edge, error = %e, "an unreadable trace batch");
                    CallReply::Unsupported
                  }
                }
              }
            },
          ))));
          self.name = Some(name);
          let current = self.state.borrow_and_update().clone();
          session.offer(&current);
        }
      }
      ControlEvent::NeedBundle(hash) => {
        // The edge reports the worker as not applied and asks again on
        // its next connection; the log names the blob, version and store.
        let bundle = match self.blobs.bundle(&self.db, &hash).await {
          Ok(bundle) => bundle,
          Err(e) => {
            tracing::error!(
              version = hash,
              store = %self.blobs.location(),
              error = %ErrorChain(&e),
              "cannot read a version's bundle; upload the version again to repair a \
               missing or corrupt blob"
            );
            None
          }
        };
        session.bundle(&hash, bundle);
      }
      ControlEvent::Applied { revision, errors } => {
        let name = self.name()?;
        for e in &errors {
          tracing::warn!(edge = %name, revision, "edge could not apply: {e}");
        }
        let db = self.db.clone();
        blocking(move || db.edge_applied(&name, revision, &errors)).await?;
      }
      ControlEvent::Usage(batch) => {
        let name = self.name()?;
        let id = batch.id.clone();
        let db = self.db.clone();
        // Acknowledged only once committed; a failure drops the
        // connection and the edge sends the batch again later.
        let stored =
          blocking(move || db.store_usage(&name, &batch).map(|new| (new, batch))).await?;
        if let (true, batch) = stored {
          self.traces.usage_stored(&batch);
        }
        session.usage_stored(id);
      }
      ControlEvent::RunAccepted(id) => self.scheduler.accepted(id),
      ControlEvent::BatchAccepted(id) => self.queues.accepted(id),
      ControlEvent::BatchDone(report) => {
        let id = report.id;
        // Acknowledged once stored, so the edge resends it otherwise.
        self.queues.report(report).await;
        session.batch_recorded(id);
      }
      ControlEvent::RunDone(report) => {
        let id = report.id;
        // Acknowledged once stored, so the edge resends it otherwise.
        self.scheduler.report(report).await;
        session.run_recorded(id);
      }
    }
    Ok(())
  }
}
