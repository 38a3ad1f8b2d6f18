//! The IO half of what `isola-edge` and `isola-control` share, next to the
//! sans-IO [`isola_proto`]: reading TLS files ([`pem`]) and the operator
//! log ([`log`]).

#![forbid(unsafe_code)]

pub mod log;
pub mod pem;

/// Why shared IO failed; each message names the file or peer and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
}
