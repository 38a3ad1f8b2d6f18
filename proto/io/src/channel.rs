//! The control channel's one IO driver, for both ends (quinn's split:
//! `isola_proto` holds the protocol as sans-IO [`Session`]s, this module
//! moves their bytes). It owns the QUIC transport settings, the mutual-TLS
//! setup and the loop around a session: write what it hands out, feed it
//! what arrives, wake it on time, and pass its events to a [`Handler`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use isola_proto::codec;
use isola_proto::Session;

use crate::Error;

/// QUIC keepalive: a restarted control plane answers the next one with a
/// stateless reset, so edges notice within a second.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// QUIC idle timeout: a peer that vanished is given up after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an edge waits for the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing side waits for its last messages (a refusal, say) to
/// be acknowledged before the connection goes.
const LINGER: Duration = Duration::from_secs(1);

/// The files of one end's TLS identity: the CA both ends trust, and this
/// end's certificate chain and key.
#[derive(Clone, Copy, Debug)]
pub struct TlsFiles<'a> {
  pub ca: &'a Path,
  pub cert: &'a Path,
  pub key: &'a Path,
}

impl TlsFiles<'_> {
  fn roots(&self) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::pem::load_certs(self.ca)? {
      roots.add(cert).map_err(|e| {
        Error::tls(
          format!("{} is not a usable CA certificate", self.ca.display()),
          e,
        )
      })?;
    }
    Ok(roots)
  }
}

/// Ack-eliciting packets the peer may take before it must acknowledge
/// (QUIC's ACK frequency extension; RFC 9000's rule is every second one).
/// An edge's trace batch is a handful of packets every 200 ms; an ACK for
/// every other one woke the edge for each, on the core its requests run on.
/// Replies carry their ACKs anyway, and the peer's delay timer still bounds
/// how late one comes.
const ACK_ELICITING_THRESHOLD: u32 = 10;

fn transport() -> Arc<quinn::TransportConfig> {
  let mut transport = quinn::TransportConfig::default();
  let mut acks = quinn::AckFrequencyConfig::default();
  acks.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
  transport.ack_frequency_config(Some(acks));
  transport.keep_alive_interval(Some(KEEPALIVE));
  transport.max_idle_timeout(Some(
    IDLE_TIMEOUT
      .try_into()
      .expect("5 s is a valid idle timeout"),
  ));
  Arc::new(transport)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
  Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The control plane's end: TLS 1.3 with the channel's ALPN, a client
/// certificate required and chained to the CA.
pub fn server_config(files: TlsFiles<'_>) -> Result<quinn::ServerConfig, Error> {
  let provider = provider();
  let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
    Arc::new(files.roots()?),
    provider.clone(),
  )
  .build()
  .map_err(|e| Error::tls("cannot build the edge certificate verifier", e))?;
  let mut tls = rustls::ServerConfig::builder_with_provider(provider)
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| Error::tls("TLS protocol setup", e))?
    .with_client_cert_verifier(verifier)
    .with_single_cert(
      crate::pem::load_certs(files.cert)?,
      crate::pem::load_key(files.key)?,
    )
    .map_err(|e| {
      Error::tls(
        format!(
          "{} and {} do not form a usable identity",
          files.cert.display(),
          files.key.display()
        ),
        e,
      )
    })?;
  tls.alpn_protocols = vec![isola_proto::msg::ALPN.to_vec()];
  let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
    .map_err(|e| Error::tls("the TLS setup cannot carry QUIC", e))?;
  let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
  config.transport_config(transport());
  Ok(config)
}

/// An edge's end: TLS 1.3 with the channel's ALPN, trusting only the CA and
/// presenting the edge's certificate.
pub fn client_config(files: TlsFiles<'_>) -> Result<quinn::ClientConfig, Error> {
  let mut tls = rustls::ClientConfig::builder_with_provider(provider())
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| Error::tls("TLS protocol setup", e))?
    .with_root_certificates(files.roots()?)
    .with_client_auth_cert(
      crate::pem::load_certs(files.cert)?,
      crate::pem::load_key(files.key)?,
    )
    .map_err(|e| {
      Error::tls(
        format!(
          "{} and {} do not form a usable client identity",
          files.cert.display(),
          files.key.display()
        ),
        e,
      )
    })?;
  tls.alpn_protocols = vec![isola_proto::msg::ALPN.to_vec()];
  let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
    .map_err(|e| Error::tls("the TLS setup cannot carry QUIC", e))?;
  let mut client = quinn::ClientConfig::new(Arc::new(quic));
  client.transport_config(transport());
  Ok(client)
}

/// A connection to the control plane at `address` (`host:port`), whose
/// certificate must name `server_name`. The endpoint must outlive the
/// connection.
pub async fn connect(
  address: &str,
  server_name: &str,
  config: &quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection), Error> {
  let addr = tokio::net::lookup_host(address)
    .await
    .map_err(|source| Error::Resolve {
      address: address.to_string(),
      source,
    })?
    .next()
    .ok_or_else(|| Error::NoAddress(address.to_string()))?;
  let bind: SocketAddr = if addr.is_ipv6() {
    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
  } else {
    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
  };
  let mut endpoint = quinn::Endpoint::client(bind).map_err(Error::Bind)?;
  endpoint.set_default_client_config(config.clone());
  let connecting = endpoint
    .connect(addr, server_name)
    .map_err(Error::Connect)?;
  let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
    .await
    .map_err(|_| Error::ConnectTimeout(address.to_string()))?
    .map_err(Error::Handshake)?;
  Ok((endpoint, conn))
}

/// The edge's end of the control stream: it opens it.
pub async fn open_stream(
  conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
  conn.open_bi().await.map_err(Error::Stream)
}

/// The control plane's end of the control stream: it accepts it.
pub async fn accept_stream(
  conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
  conn.accept_bi().await.map_err(Error::Stream)
}

/// What a [`drive`] caller does with a session: its events, and inputs from
/// outside the connection (a new desired state, a usage batch).
pub trait Handler<S: Session> {
  type Input: Send;

  /// Waits for the next input; `None` once no more will come (the driver
  /// then stops asking).
  fn next_input(&mut self) -> impl Future<Output = Option<Self::Input>> + Send;

  /// Hands an input to the session.
  fn input(&mut self, session: &mut S, input: Self::Input);

  /// Does what `event` asks, calling back into the session as needed. The
  /// driver sends what that queues before it hands over the next event, so
  /// one event's work (one bundle, say) is on the wire before the next
  /// starts. An error ends the connection.
  fn event(
    &mut self,
    session: &mut S,
    event: S::Event,
  ) -> impl Future<Output = Result<(), crate::BoxError>> + Send;

  /// The first message from the peer arrived.
  fn heard(&mut self) {}
}

/// Runs `session` over one bidirectional stream until it closes (returns
/// why), the peer ends the stream, or IO fails.
pub async fn drive<S, H>(
  session: &mut S,
  handler: &mut H,
  send: &mut quinn::SendStream,
  recv: &mut quinn::RecvStream,
) -> Result<String, Error>
where
  S: Session + Send,
  S::Incoming: Send,
  S::Outgoing: Send,
  S::Event: Send,
  H: Handler<S> + Send,
{
  let mut decoder = codec::Decoder::new();
  let mut buf = vec![0u8; 64 << 10];
  let mut heard = false;
  let mut inputs_open = true;
  loop {
    while let Some(msg) = session.poll_transmit(Instant::now()) {
      send
        .write_all(&codec::encode(&msg))
        .await
        .map_err(Error::Write)?;
    }
    if let Some(event) = session.poll_event() {
      handler
        .event(session, event)
        .await
        .map_err(Error::Handler)?;
      continue;
    }
    if let Some(reason) = session.closed() {
      let reason = reason.to_string();
      let _ = send.finish();
      let _ = tokio::time::timeout(LINGER, send.stopped()).await;
      return Ok(reason);
    }
    let timeout = session
      .poll_timeout()
      .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
    tokio::select! {
      read = recv.read(&mut buf) => {
        let Some(n) = read.map_err(Error::Receive)? else {
          return Ok("the peer ended the stream".to_string());
        };
        decoder.push(&buf[..n]);
        while let Some(msg) = decoder.decode().map_err(Error::Decode)? {
          if !heard {
            heard = true;
            handler.heard();
          }
          session.handle(msg, Instant::now());
        }
      }
      input = handler.next_input(), if inputs_open => match input {
        Some(input) => handler.input(session, input),
        None => inputs_open = false,
      },
      () = tokio::time::sleep_until(timeout.into()) => session.handle_timeout(Instant::now()),
    }
  }
}

/// Makes one call on a stream of its own (KV, queues): the request, then
/// the reply. A stream per call keeps a large value from waiting behind a
/// bundle on the control stream, and the control stream from waiting
/// behind it.
pub async fn call<Req, Resp>(conn: &quinn::Connection, request: &Req) -> Result<Resp, Error>
where
  Req: serde::Serialize,
  Resp: serde::de::DeserializeOwned,
{
  call_frame(conn, &codec::encode(request)).await
}

/// [`call`] with the request already framed (as [`codec::encode`] frames
/// it), for a caller that writes its CBOR itself.
pub async fn call_frame<Resp>(conn: &quinn::Connection, frame: &[u8]) -> Result<Resp, Error>
where
  Resp: serde::de::DeserializeOwned,
{
  let (mut send, mut recv) = conn.open_bi().await.map_err(Error::Stream)?;
  send.write_all(frame).await.map_err(Error::Write)?;
  let _ = send.finish();
  read_one(&mut recv).await
}

/// Serves the calls of [`call`] on every stream the peer opens after the
/// control stream, each on a task of its own, until the connection ends.
pub async fn serve_calls<Req, Resp, F, Fut>(conn: quinn::Connection, handle: F)
where
  Req: serde::de::DeserializeOwned + Send + 'static,
  Resp: serde::Serialize + Send + 'static,
  F: Fn(Req) -> Fut + Clone + Send + 'static,
  Fut: std::future::Future<Output = Resp> + Send + 'static,
{
  while let Ok((mut send, mut recv)) = conn.accept_bi().await {
    let handle = handle.clone();
    tokio::spawn(async move {
      let request: Req = match read_one(&mut recv).await {
        Ok(request) => request,
        Err(e) => {
          tracing::debug!(error = %e, "an unreadable call");
          let _ = send.reset(0u32.into());
          return;
        }
      };
      let reply = handle(request).await;
      if send.write_all(&codec::encode(&reply)).await.is_ok() {
        let _ = send.finish();
      }
    });
  }
}

/// Reads one message that ends its stream.
async fn read_one<T: serde::de::DeserializeOwned>(
  recv: &mut quinn::RecvStream,
) -> Result<T, Error> {
  let bytes = recv
    .read_to_end(codec::MAX_FRAME + 8)
    .await
    .map_err(|e| match e {
      quinn::ReadToEndError::Read(e) => Error::Receive(e),
      quinn::ReadToEndError::TooLong => {
        Error::Decode(isola_proto::Error::FrameTooLarge(codec::MAX_FRAME + 8))
      }
    })?;
  let mut decoder = codec::Decoder::new();
  decoder.push(&bytes);
  decoder.decode().map_err(Error::Decode)?.ok_or_else(|| {
    Error::Decode(isola_proto::Error::Malformed(
      "a call ended mid-message".into(),
    ))
  })
}
