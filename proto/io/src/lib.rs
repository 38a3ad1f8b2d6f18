//! The IO half of what `isola-edge` and `isola-control` share, next to the
//! sans-IO [`isola_proto`]: the control channel's driver and QUIC/TLS setup
//! ([`channel`]), reading TLS files ([`pem`]), the operator log ([`log`])
//! and files written whole or not at all ([`fs`]).

#![forbid(unsafe_code)]

pub mod channel;
pub mod fs;
pub mod log;
pub mod pem;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

/// An error from code this crate calls back (a [`channel::Handler`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why shared IO failed; each message names the file or peer and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("cannot set up OpenTelemetry export: {0}")]
  Telemetry(String),
  #[error("cannot read {what} {path}")]
  Read {
    what: &'static str,
    path: std::path::PathBuf,
    #[source]
    source: std::io::Error,
  },
  #[error("{path} is not a PEM {what}")]
  Pem {
    what: &'static str,
    path: std::path::PathBuf,
    #[source]
    source: rustls::pki_types::pem::Error,
  },
  #[error("{path} holds no {what}")]
  Empty {
    what: &'static str,
    path: std::path::PathBuf,
  },
  #[error("{what}")]
  Tls {
    what: String,
    #[source]
    source: BoxError,
  },
  #[error("cannot resolve {address}")]
  Resolve {
    address: String,
    #[source]
    source: std::io::Error,
  },
  #[error("{0} resolves to no address")]
  NoAddress(String),
  #[error("cannot open a UDP socket")]
  Bind(#[source] std::io::Error),
  #[error("cannot start connecting")]
  Connect(#[source] quinn::ConnectError),
  #[error("timed out connecting to {0}")]
  ConnectTimeout(String),
  #[error("QUIC handshake failed")]
  Handshake(#[source] quinn::ConnectionError),
  #[error("the control stream failed")]
  Stream(#[source] quinn::ConnectionError),
  #[error("cannot write to the control stream")]
  Write(#[source] quinn::WriteError),
  #[error("cannot read the control stream")]
  Receive(#[source] quinn::ReadError),
  #[error("the peer sent an unreadable message")]
  Decode(#[source] isola_proto::Error),
  #[error("handling a control message failed")]
  Handler(#[source] BoxError),
}

impl Error {
  fn tls(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
    Self::Tls {
      what: what.into(),
      source: source.into(),
    }
  }
}
