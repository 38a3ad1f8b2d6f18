//! The control channel, control plane side: a QUIC endpoint that only
//! edges holding a certificate from this control plane's CA can reach. The
//! protocol rules live in [`isola_proto::ControlSession`]; this file moves
//! its messages and does what its events ask against the database.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use isola_proto::codec;
use isola_proto::msg::DesiredState;
use isola_proto::ControlEvent;
use isola_proto::ControlSession;
use isola_proto::Timing;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use tokio::sync::watch;

use crate::db::Db;

/// Transport keepalive and idle timeout: a vanished peer is noticed within
/// the timeout, a restarted control plane at the next keepalive.
const KEEPALIVE: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
  let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
  let certs = rustls_pemfile::certs(&mut pem.as_slice())
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
  anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
  Ok(certs)
}

/// TLS 1.3 with a client certificate required and checked against the CA.
fn server_config(data_dir: &Path) -> anyhow::Result<quinn::ServerConfig> {
  let files = crate::pki::files(data_dir);
  let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
  let mut roots = rustls::RootCertStore::empty();
  for cert in read_pem_certs(&files.ca)? {
    roots
      .add(cert)
      .context("the CA certificate is not usable")?;
  }
  let verifier =
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
      .build()
      .context("cannot build the edge certificate verifier")?;
  let key_pem =
    std::fs::read(&files.key).with_context(|| format!("cannot read {}", files.key.display()))?;
  let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
    .with_context(|| format!("{} is not a PEM key", files.key.display()))?
    .with_context(|| format!("{} holds no key", files.key.display()))?;
  let mut tls = rustls::ServerConfig::builder_with_provider(provider)
    .with_protocol_versions(&[&rustls::version::TLS13])
    .context("TLS protocol setup")?
    .with_client_cert_verifier(verifier)
    .with_single_cert(read_pem_certs(&files.cert)?, key)
    .context("the control plane's certificate and key do not match")?;
  tls.alpn_protocols = vec![isola_proto::msg::ALPN.to_vec()];
  let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
    .context("the TLS setup cannot carry QUIC")?;
  let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
  let mut transport = quinn::TransportConfig::default();
  transport.keep_alive_interval(Some(KEEPALIVE));
  transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("fits")));
  config.transport_config(Arc::new(transport));
  Ok(config)
}

/// The stateless-reset key is kept in the data folder: after a restart, a
/// packet an edge sends on its old connection can be answered with a reset
/// it recognises, so it need not wait for the idle timeout to reconnect.
fn endpoint_config(data_dir: &Path) -> anyhow::Result<quinn::EndpointConfig> {
  let path = data_dir.join("quic-reset.key");
  let key = match std::fs::read(&path) {
    Ok(key) if key.len() == 64 => key,
    _ => {
      let key: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
      crate::pki::write_file(&path, &key, true)
        .with_context(|| format!("cannot write {}", path.display()))?;
      key
    }
  };
  let hmac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
  Ok(quinn::EndpointConfig::new(Arc::new(hmac)))
}

/// Accepts edges on `addr` until the process ends.
pub async fn serve(
  addr: SocketAddr,
  data_dir: &Path,
  db: Db,
  state: watch::Receiver<Arc<DesiredState>>,
) -> anyhow::Result<()> {
  let socket = std::net::UdpSocket::bind(addr)
    .with_context(|| format!("cannot listen for edges on {addr} (UDP)"))?;
  let endpoint = quinn::Endpoint::new(
    endpoint_config(data_dir)?,
    Some(server_config(data_dir)?),
    socket,
    Arc::new(quinn::TokioRuntime),
  )
  .context("cannot start the QUIC endpoint")?;
  while let Some(incoming) = endpoint.accept().await {
    let (db, state) = (db.clone(), state.clone());
    tokio::spawn(async move {
      let remote = incoming.remote_address();
      if let Err(e) = connection(incoming, db, state).await {
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

async fn blocking<T: Send + 'static>(
  f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
  tokio::task::spawn_blocking(f)
    .await
    .context("database task panicked")?
}

async fn connection(
  incoming: quinn::Incoming,
  db: Db,
  mut state: watch::Receiver<Arc<DesiredState>>,
) -> anyhow::Result<()> {
  let conn = incoming.await.context("handshake")?;
  let cert = conn
    .peer_identity()
    .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
    .and_then(|chain| chain.into_iter().next())
    .context("the edge presented no certificate")?;
  let (mut send, mut recv) = conn.accept_bi().await.context("no control stream")?;
  let mut session = ControlSession::new(Instant::now(), Timing::default());
  let mut decoder = codec::Decoder::new();
  let mut buf = vec![0u8; 64 << 10];
  let mut edge: Option<String> = None;
  loop {
    while let Some(msg) = session.poll_transmit(Instant::now()) {
      send.write_all(&codec::encode(&msg)).await?;
    }
    if let Some(event) = session.poll_event() {
      match event {
        ControlEvent::Hello {
          edge: name,
          revision,
        } => {
          let known = {
            let (db, name) = (db.clone(), name.clone());
            blocking(move || Ok(db.edge_exists(&name)?)).await?
          };
          if !cert_names_edge(&cert, &name) {
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
            edge = Some(name);
            let current = state.borrow_and_update().clone();
            offer(&mut session, &db, &current);
          }
        }
        ControlEvent::Applied { revision, errors } => {
          let name = edge.clone().context("applied before hello")?;
          for e in &errors {
            tracing::warn!(edge = %name, revision, "edge could not apply: {e}");
          }
          let db = db.clone();
          blocking(move || Ok(db.edge_applied(&name, revision, &errors)?)).await?;
        }
        ControlEvent::Usage(batch) => {
          let name = edge.clone().context("usage before hello")?;
          let id = batch.id.clone();
          let db = db.clone();
          // Acknowledged only once committed; a failure drops the
          // connection and the edge sends the batch again later.
          blocking(move || Ok(db.store_usage(&name, &batch)?)).await?;
          session.usage_stored(id);
        }
      }
      continue;
    }
    if let Some(reason) = session.closed() {
      let _ = send.finish();
      // Let the refusal reach the edge before the connection goes.
      let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
      anyhow::bail!("{reason}");
    }
    let timeout = session
      .poll_timeout()
      .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
    tokio::select! {
      read = recv.read(&mut buf) => {
        let Some(n) = read.context("control stream")? else {
          return Ok(());
        };
        decoder.push(&buf[..n]);
        while let Some(msg) = decoder.decode()? {
          session.handle(msg, Instant::now());
        }
      }
      changed = state.changed() => {
        changed.context("the control plane is shutting down")?;
        let current = state.borrow_and_update().clone();
        offer(&mut session, &db, &current);
      }
      _ = tokio::time::sleep_until(timeout.into()) => session.handle_timeout(Instant::now()),
    }
  }
}

/// Offers `state` to the edge, reading the bundles it lacks from the
/// database (a blocking read, so the runtime is told).
fn offer(session: &mut ControlSession, db: &Db, state: &DesiredState) {
  tokio::task::block_in_place(|| {
    session.offer(state, |hash| match db.bundle(hash) {
      Ok(b) => b,
      Err(e) => {
        tracing::error!(hash, "cannot read a version's bundle: {e:#}");
        None
      }
    })
  });
}
