//! Geo DNS answers without IO, so every rule is unit-tested and the fuzzer
//! can throw any packet at them (no V8 in this crate): the control plane
//! (`isola-control`'s `dns`) runs them on its sockets and feeds them the
//! fleet's health.
//!
//! - [`config`], `dns.toml`.
//! - [`geo`]: where a client is, and the edges ranked for it.
//! - [`names`]: the host names routes cover.
//! - [`directory`]: the edges that may be in answers.
//! - [`responder`]: one query packet in, one answer packet out (EDNS,
//!   client subnet, truncation, FORMERR).

#![forbid(unsafe_code)]

pub mod config;
pub mod directory;
pub mod geo;
pub mod names;
pub mod responder;

pub use config::DnsConfig;
pub use directory::Directory;
pub use names::Names;
pub use names::NamesCache;
pub use responder::Responder;
pub use responder::Transport;

/// Why the DNS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("cannot read {path}")]
  Read {
    path: String,
    #[source]
    source: std::io::Error,
  },
  #[error("{path}: {message}")]
  Config { path: String, message: String },
}
