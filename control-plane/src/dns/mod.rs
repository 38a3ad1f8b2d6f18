//! Geo DNS: the control plane answers, authoritatively, for the names that
//! route patterns cover in its zones, with the public addresses of the
//! nearest healthy edges.
//!
//! The answers are computed by `isola_dns` (no IO, no V8, fuzzed): its
//! `config` (`dns.toml`), `geo`, `names` and `responder`. Here:
//! - `health`: which edges may be in answers (sans IO, plus its driver).
//! - `server`: the responder on UDP and TCP.
//!
//! [`Dns::start`] is the front: it follows the desired state for the names
//! routes cover (rebuilt on every revision, never read from SQLite per
//! packet) and serves.

use std::net::SocketAddr;
use std::sync::Arc;

use isola_dns::Names;
use isola_dns::NamesCache;
use isola_proto::msg::DesiredState;
use tokio::sync::watch;

pub mod health;
pub mod server;

pub use health::Directory;
pub use isola_dns::config;
pub use isola_dns::geo;
pub use isola_dns::DnsConfig;

/// Why the DNS server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  /// The settings or the GeoIP database (read or checked).
  #[error(transparent)]
  Dns(#[from] isola_dns::Error),
  #[error("cannot listen for DNS on {addr} ({what}); pick another --dns address")]
  Listen {
    addr: SocketAddr,
    what: &'static str,
    #[source]
    source: std::io::Error,
  },
}

/// A [`NamesCache`] kept current from the desired state until the sender
/// goes.
pub fn follow_names(mut state: watch::Receiver<Arc<DesiredState>>) -> NamesCache {
  let cache = NamesCache::default();
  let current = state.borrow_and_update().clone();
  cache.set(Names::from_routes(current.revision, &current.routes));
  let updated = cache.clone();
  tokio::spawn(async move {
    while state.changed().await.is_ok() {
      let current = state.borrow_and_update().clone();
      updated.set(Names::from_routes(current.revision, &current.routes));
    }
  });
  cache
}

/// The geo DNS server of `isola-control serve --dns ADDR --dns-config FILE`.
pub struct Dns;

impl Dns {
  /// Loads the location database, follows the desired state and serves on
  /// `addr` (UDP and TCP); returns the address bound.
  pub async fn start(
    addr: SocketAddr,
    config: DnsConfig,
    edges: Directory,
    state: watch::Receiver<Arc<DesiredState>>,
  ) -> Result<SocketAddr, Error> {
    let db = match &config.geoip_db {
      Some(path) => Some(
        std::fs::read(path).map_err(|source| isola_dns::Error::Read {
          path: path.display().to_string(),
          source,
        })?,
      ),
      None => None,
    };
    let geo =
      geo::Geo::new(config.networks.clone(), db).map_err(|message| isola_dns::Error::Config {
        path: config
          .geoip_db
          .as_ref()
          .map(|p| p.display().to_string())
          .unwrap_or_default(),
        message,
      })?;
    let names = follow_names(state);
    let responder = isola_dns::Responder::new(Arc::new(config), geo, edges, names)?;
    server::start(addr, Arc::new(responder)).await
  }
}
