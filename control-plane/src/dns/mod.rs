//! Geo DNS: the control plane answers, authoritatively, for the names that
//! route patterns cover in its zones, with the public addresses of the
//! nearest healthy edges.
//!
//! - `config`: `dns.toml`.
//! - `geo`: where a client is, and the edges ranked for it.
//! - `health`: which edges may be in answers (sans IO, plus its driver).
//! - `server`: query in, answer out; UDP and TCP.
//!
//! [`Dns::start`] is the front: it follows the desired state for the names
//! routes cover (rebuilt on every revision, never read from SQLite per
//! packet) and serves.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::RwLock;

use isola_proto::msg::DesiredState;
use isola_proto::msg::Route;
use tokio::sync::watch;

pub mod config;
pub mod geo;
pub mod health;
pub mod server;

pub use config::DnsConfig;
pub use health::Directory;

/// Why the DNS server cannot start.
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
  #[error("cannot listen for DNS on {addr} ({what}); pick another --dns address")]
  Listen {
    addr: SocketAddr,
    what: &'static str,
    #[source]
    source: std::io::Error,
  },
}

/// The host names route patterns cover, as of one revision.
#[derive(Debug, Default)]
pub struct Names {
  pub revision: u64,
  /// `host/…` patterns.
  exact: HashSet<String>,
  /// `*.suffix/…`: names below the suffix.
  below: HashSet<String>,
  /// `*suffix/…`: the suffix and names below it.
  at_or_below: HashSet<String>,
}

impl Names {
  /// The names `routes` cover (any path counts).
  pub fn from_routes(revision: u64, routes: &[Route]) -> Self {
    let mut names = Names {
      revision,
      ..Names::default()
    };
    for route in routes {
      let host = route.pattern.split('/').next().unwrap_or_default();
      // A port in a pattern does not change the name.
      let host = host.split(':').next().unwrap_or_default();
      let host = host.trim_end_matches('.').to_ascii_lowercase();
      if let Some(suffix) = host.strip_prefix("*.") {
        names.below.insert(suffix.to_string());
      } else if let Some(suffix) = host.strip_prefix('*') {
        names.at_or_below.insert(suffix.to_string());
      } else if !host.is_empty() {
        names.exact.insert(host);
      }
    }
    names
  }

  /// Whether a route covers `name` (lowercase, no trailing dot).
  pub fn covers(&self, name: &str) -> bool {
    if self.exact.contains(name) || self.at_or_below.contains(name) {
      return true;
    }
    let mut rest = name;
    while let Some((_, suffix)) = rest.split_once('.') {
      if self.below.contains(suffix) || self.at_or_below.contains(suffix) {
        return true;
      }
      rest = suffix;
    }
    false
  }
}

/// The current [`Names`], swapped whole on each revision.
#[derive(Clone, Debug, Default)]
pub struct NamesCache(Arc<RwLock<Arc<Names>>>);

impl NamesCache {
  pub fn get(&self) -> Arc<Names> {
    self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
  }

  pub fn set(&self, names: Names) {
    *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(names);
  }

  /// Kept current from the desired state until the sender goes.
  pub fn follow(mut state: watch::Receiver<Arc<DesiredState>>) -> Self {
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
      Some(path) => Some(std::fs::read(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
      })?),
      None => None,
    };
    let geo = geo::Geo::new(config.networks.clone(), db).map_err(|message| Error::Config {
      path: config
        .geoip_db
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default(),
      message,
    })?;
    let names = NamesCache::follow(state);
    let responder = server::Responder::new(Arc::new(config), geo, edges, names)?;
    server::start(addr, Arc::new(responder)).await
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn route_patterns_cover_names() {
    let route = |pattern: &str| Route {
      pattern: pattern.into(),
      worker: "w".into(),
    };
    let names = Names::from_routes(
      3,
      &[
        route("shop.apps.example/*"),
        route("*.blog.apps.example/*"),
        route("*api.apps.example/v1/*"),
        route("Admin.Apps.Example:8443/login"),
      ],
    );
    for covered in [
      "shop.apps.example",
      "x.blog.apps.example",
      "a.b.blog.apps.example",
      "api.apps.example",
      "eu.api.apps.example",
      "admin.apps.example",
    ] {
      assert!(names.covers(covered), "{covered}");
    }
    for not in [
      "blog.apps.example",
      "apps.example",
      "x.shop.apps.example",
      "xapi.apps.example",
    ] {
      assert!(!names.covers(not), "{not}");
    }
  }
}
