//! Both ends of the control channel over real QUIC on loopback, each run by
//! the one driver around the real sessions, with mutual TLS from a CA made
//! for the test.

use std::time::Instant;

use isola_io::channel;
use isola_io::channel::Handler;
use isola_io::channel::TlsFiles;
use isola_io::testing::Identity;
use isola_io::testing::SERVER_NAME;
use isola_io::BoxError;
use isola_proto::manifest::MAX_VERSION_BYTES;
use isola_proto::msg::DesiredState;
use isola_proto::testing::desired;
use isola_proto::testing::full_bundle;
use isola_proto::ControlEvent;
use isola_proto::ControlSession;
use isola_proto::EdgeEvent;
use isola_proto::EdgeSession;
use isola_proto::Timing;
use tokio::sync::mpsc;

/// The control plane's side: offers `state` after the hello, makes each
/// bundle when asked, reports what the edge applied and then ends.
struct Control {
  state: DesiredState,
  applied: mpsc::UnboundedSender<(u64, Vec<String>)>,
}

impl Handler<ControlSession> for Control {
  type Input = ();

  async fn next_input(&mut self) -> Option<()> {
    None
  }

  fn input(&mut self, _: &mut ControlSession, (): ()) {}

  async fn event(
    &mut self,
    session: &mut ControlSession,
    event: ControlEvent,
  ) -> Result<(), BoxError> {
    match event {
      ControlEvent::Hello { .. } => session.offer(&self.state),
      ControlEvent::NeedBundle(hash) => session.bundle(&hash, Some(full_bundle(&hash))),
      ControlEvent::Applied { revision, errors } => {
        self.applied.send((revision, errors))?;
        session.refuse("the test is over".into());
      }
      other => return Err(format!("unexpected {other:?}").into()),
    }
    Ok(())
  }
}

/// The edge's side: checks every bundle as it arrives and keeps only its
/// size, as a store writing to disk would.
#[derive(Default)]
struct Edge {
  bundles: Vec<(String, usize)>,
  applied: Option<DesiredState>,
}

impl Handler<EdgeSession> for Edge {
  type Input = ();

  async fn next_input(&mut self) -> Option<()> {
    None
  }

  fn input(&mut self, _: &mut EdgeSession, (): ()) {}

  async fn event(&mut self, session: &mut EdgeSession, event: EdgeEvent) -> Result<(), BoxError> {
    match event {
      EdgeEvent::Bundle(bundle) => {
        let hash = String::from_utf8(bundle.manifest.clone())?;
        assert_eq!(bundle, full_bundle(&hash), "bundle {hash} arrived intact");
        let size = bundle.modules.iter().map(|m| m.len()).sum();
        self.bundles.push((hash, size));
      }
      EdgeEvent::Apply(state) => {
        let revision = state.revision;
        self.applied = Some(state);
        session.applied(revision, Vec::new());
      }
      other => return Err(format!("unexpected {other:?}").into()),
    }
    Ok(())
  }
}

/// An edge that lacks twelve versions at the 25 MiB limit (300 MiB) catches
/// up over one connection: every bundle arrives whole and before the state
/// that serves it, and the edge applies that state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_missing_300_mib_of_versions_catches_up_over_quic() {
  let dir = tempfile::tempdir().unwrap();
  let id = Identity::new(dir.path());
  let hashes: Vec<String> = (0..12).map(|i| format!("h{i:x}")).collect();
  let hash_refs: Vec<&str> = hashes.iter().map(String::as_str).collect();
  let state = desired(1, &hash_refs);

  let server = quinn::Endpoint::server(
    channel::server_config(id.server()).unwrap(),
    "127.0.0.1:0".parse().unwrap(),
  )
  .unwrap();
  let addr = server.local_addr().unwrap();
  let (applied_tx, mut applied_rx) = mpsc::unbounded_channel();
  let mut control = Control {
    state: state.clone(),
    applied: applied_tx,
  };
  let control_task = tokio::spawn(async move {
    let conn = server.accept().await.unwrap().await.unwrap();
    let (mut send, mut recv) = channel::accept_stream(&conn).await.unwrap();
    let mut session = ControlSession::new(Instant::now(), Timing::default());
    channel::drive(&mut session, &mut control, &mut send, &mut recv).await
  });

  let client = channel::client_config(id.edge()).unwrap();
  let (_endpoint, conn) = channel::connect(&addr.to_string(), SERVER_NAME, &client)
    .await
    .unwrap();
  let (mut send, mut recv) = channel::open_stream(&conn).await.unwrap();
  let mut session = EdgeSession::new(
    Instant::now(),
    Timing::default(),
    "edge-1".into(),
    0,
    Vec::new(),
    Vec::new(),
  );
  let mut edge = Edge::default();
  let ended = channel::drive(&mut session, &mut edge, &mut send, &mut recv)
    .await
    .unwrap();
  assert!(ended.contains("the test is over"), "{ended}");

  let received: Vec<String> = edge.bundles.iter().map(|(h, _)| h.clone()).collect();
  assert_eq!(received, hashes);
  let total: usize = edge.bundles.iter().map(|(_, n)| n).sum();
  assert_eq!(total, 12 * MAX_VERSION_BYTES);
  assert_eq!(edge.applied, Some(state));
  assert_eq!(applied_rx.recv().await, Some((1, Vec::new())));
  let control_ended = control_task.await.unwrap().unwrap();
  assert!(
    control_ended.contains("the test is over"),
    "{control_ended}"
  );
}

/// A client whose certificate another CA issued is refused at the
/// handshake, before any message.
#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
  let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
  let (ours, theirs) = (Identity::new(ours.path()), Identity::new(theirs.path()));
  let server = quinn::Endpoint::server(
    channel::server_config(ours.server()).unwrap(),
    "127.0.0.1:0".parse().unwrap(),
  )
  .unwrap();
  let addr = server.local_addr().unwrap();
  let handshake = tokio::spawn(async move { server.accept().await.unwrap().await.map(drop) });
  // Trusts our CA, presents a certificate from theirs.
  let mixed = TlsFiles {
    ca: &ours.ca,
    cert: &theirs.edge_cert,
    key: &theirs.edge_key,
  };
  let client = channel::client_config(mixed).unwrap();
  // TLS 1.3 client authentication is checked after the client considers
  // the handshake done, so the refusal shows on the server's side and as
  // the client's connection closing.
  let connected = channel::connect(&addr.to_string(), SERVER_NAME, &client).await;
  let refused = tokio::time::timeout(std::time::Duration::from_secs(10), handshake)
    .await
    .expect("the server decided")
    .unwrap();
  assert!(
    refused.is_err(),
    "the server accepted a foreign certificate"
  );
  if let Ok((_endpoint, conn)) = connected {
    let reason = tokio::time::timeout(std::time::Duration::from_secs(10), conn.closed())
      .await
      .expect("the client saw the connection close");
    assert!(
      matches!(
        reason,
        quinn::ConnectionError::ConnectionClosed(_) | quinn::ConnectionError::TransportError(_)
      ),
      "{reason:?}"
    );
  }
}
