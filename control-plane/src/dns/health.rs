//! Which edges may be in DNS answers. Sans IO: fed the fleet's connects and
//! disconnects and the results of health checks, with the time; the driver
//! at the bottom runs the `GET /healthz` checks and publishes what this
//! decides to the [`Directory`] that the DNS server and the API read.
//!
//! An edge is down when its control connection has been gone longer than
//! the grace period (it keeps serving its last state meanwhile, so a
//! control-plane hiccup moves no traffic), or after `fall` failed checks in
//! a row; a down edge is back after `rise` passed checks in a row. An edge
//! first seen counts as passing, so a fresh control plane answers at once.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::time::Duration;

use isola_proto::msg::EdgeSite;
use tokio::sync::mpsc;

use crate::fleet::Change;
use crate::fleet::Fleet;
use isola_dns::config::HealthConfig;
pub use isola_dns::directory::Directory;
pub use isola_dns::directory::EdgeView;
pub use isola_dns::directory::Status;

/// Milliseconds on the driver's clock.
pub type Millis = i64;

#[derive(Debug)]
struct Edge {
  connected: bool,
  /// When `connected` last changed.
  since: Millis,
  /// What the checks say, with hysteresis.
  passing: bool,
  /// Results in a row against `passing` (failures while passing, passes
  /// while failing).
  streak: u32,
  last_error: Option<String>,
}

/// The health of every edge seen since start.
#[derive(Debug)]
pub struct Health {
  config: HealthConfig,
  edges: BTreeMap<String, Edge>,
}

impl Health {
  pub fn new(config: HealthConfig) -> Self {
    Self {
      config,
      edges: BTreeMap::new(),
    }
  }

  /// The edge's control connection is up.
  pub fn connected(&mut self, edge: &str, now: Millis) {
    let e = self.edges.entry(edge.to_string()).or_insert(Edge {
      connected: false,
      since: now,
      passing: true,
      streak: 0,
      last_error: None,
    });
    e.connected = true;
    e.since = now;
  }

  /// The edge's control connection is gone.
  pub fn disconnected(&mut self, edge: &str, now: Millis) {
    if let Some(e) = self.edges.get_mut(edge) {
      if e.connected {
        e.connected = false;
        e.since = now;
      }
    }
  }

  /// A health check of the edge ended.
  pub fn checked(&mut self, edge: &str, result: Result<(), String>) {
    let Some(e) = self.edges.get_mut(edge) else {
      return;
    };
    let ok = result.is_ok();
    if let Err(error) = result {
      e.last_error = Some(error);
    }
    if ok == e.passing {
      e.streak = 0;
      return;
    }
    e.streak += 1;
    let needed = if e.passing {
      self.config.fall
    } else {
      self.config.rise
    };
    if e.streak >= needed {
      e.passing = ok;
      e.streak = 0;
    }
  }

  /// The edges seen since start, by name.
  pub fn edges(&self) -> impl Iterator<Item = &str> {
    self.edges.keys().map(String::as_str)
  }

  pub fn status(&self, edge: &str, now: Millis) -> Status {
    let Some(e) = self.edges.get(edge) else {
      return Status::Down {
        reason: "not connected since the control plane started".into(),
      };
    };
    let grace = i64::try_from(self.config.grace_ms).unwrap_or(i64::MAX);
    if !e.connected && now.saturating_sub(e.since) >= grace {
      return Status::Down {
        reason: format!(
          "control connection down for {} s",
          now.saturating_sub(e.since) / 1000
        ),
      };
    }
    if !e.passing {
      return Status::Down {
        reason: format!(
          "health checks failing: {}",
          e.last_error.as_deref().unwrap_or("unknown")
        ),
      };
    }
    Status::Healthy
  }

  /// When a status changes with no event: the end of a grace period.
  pub fn next_change(&self, now: Millis) -> Option<Millis> {
    let grace = i64::try_from(self.config.grace_ms).unwrap_or(i64::MAX);
    self
      .edges
      .values()
      .filter(|e| !e.connected)
      .map(|e| e.since.saturating_add(grace))
      .filter(|&t| t > now)
      .min()
  }
}

/// Where the edge's HTTP listener is reached from the internet.
fn check_target(site: &EdgeSite) -> Option<SocketAddr> {
  let port = site.http_port?;
  let ip = site
    .public_ipv4
    .first()
    .map(|&a| IpAddr::V4(a))
    .or_else(|| site.public_ipv6.first().map(|&a| IpAddr::V6(a)))?;
  Some(SocketAddr::new(ip, port))
}

/// One `GET /healthz`: any answer but a 5xx passes (a worker may route
/// that path; what counts is that the listener users reach answers).
async fn check(addr: SocketAddr) -> Result<(), String> {
  use http_body_util::Empty;
  let stream = tokio::net::TcpStream::connect(addr)
    .await
    .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
  let (mut send, conn) =
    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
      .await
      .map_err(|e| format!("{addr}: {e}"))?;
  tokio::spawn(conn);
  let request = http::Request::get("/healthz")
    .header(http::header::HOST, addr.to_string())
    .header(http::header::USER_AGENT, "isola-control-health")
    .body(Empty::<bytes::Bytes>::new())
    .expect("a valid request");
  let response = send
    .send_request(request)
    .await
    .map_err(|e| format!("{addr}: {e}"))?;
  if response.status().is_server_error() {
    return Err(format!("{addr} answered {}", response.status()));
  }
  Ok(())
}

/// Follows the fleet and, when `active`, checks each edge every interval;
/// publishes to the returned directory after every change.
pub fn start(fleet: Fleet, config: HealthConfig, active: bool) -> Directory {
  let directory = Directory::default();
  let published = directory.clone();
  tokio::spawn(async move {
    let origin = tokio::time::Instant::now();
    let now = || Millis::try_from(origin.elapsed().as_millis()).unwrap_or(Millis::MAX);
    let mut health = Health::new(config);
    let (up, mut changes) = fleet.subscribe();
    for edge in &up {
      health.connected(edge, now());
    }
    let (results_tx, mut results) = mpsc::unbounded_channel::<(String, Result<(), String>)>();
    let mut in_flight: HashSet<String> = HashSet::new();
    let interval = Duration::from_millis(config.interval_ms);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = interval.min(Duration::from_secs(2));
    loop {
      let views = health
        .edges()
        .map(|name| EdgeView {
          name: name.to_string(),
          site: fleet.site(name).unwrap_or_default(),
          status: health.status(name, now()),
        })
        .collect();
      published.set(views);
      let wake = health
        .next_change(now())
        .map(|t| origin + Duration::from_millis(u64::try_from(t).unwrap_or(0)));
      tokio::select! {
        change = changes.recv() => match change {
          Some(Change::Up(edge)) => health.connected(&edge, now()),
          Some(Change::Down(edge)) => health.disconnected(&edge, now()),
          None => return,
        },
        Some((edge, result)) = results.recv() => {
          in_flight.remove(&edge);
          if let Err(error) = &result {
            tracing::debug!(edge, error, "health check failed");
          }
          let before = health.status(&edge, now()).is_healthy();
          health.checked(&edge, result);
          let after = health.status(&edge, now());
          if before != after.is_healthy() {
            tracing::info!(edge, status = ?after, "edge health changed");
          }
        }
        _ = ticker.tick(), if active => {
          for name in health.edges() {
            let Some(target) = fleet.site(name).as_ref().and_then(check_target) else {
              continue;
            };
            if !in_flight.insert(name.to_string()) {
              continue;
            }
            let (tx, name) = (results_tx.clone(), name.to_string());
            tokio::spawn(async move {
              let result = match tokio::time::timeout(timeout, check(target)).await {
                Ok(result) => result,
                Err(_) => Err(format!("{target}: no answer within {} ms", timeout.as_millis())),
              };
              let _ = tx.send((name, result));
            });
          }
        }
        _ = async {
          match wake {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
          }
        } => {}
      }
    }
  });
  directory
}

#[cfg(test)]
mod tests {
  use super::*;

  fn health() -> Health {
    Health::new(HealthConfig {
      interval_ms: 1000,
      rise: 2,
      fall: 3,
      grace_ms: 5000,
    })
  }

  fn fail(h: &mut Health) {
    h.checked("e1", Err("refused".into()));
  }

  #[test]
  fn fall_failures_take_an_edge_out_and_rise_passes_bring_it_back() {
    let mut h = health();
    h.connected("e1", 0);
    assert_eq!(h.status("e1", 0), Status::Healthy);
    fail(&mut h);
    fail(&mut h);
    // A pass resets the count.
    h.checked("e1", Ok(()));
    fail(&mut h);
    fail(&mut h);
    assert!(h.status("e1", 0).is_healthy());
    fail(&mut h);
    let Status::Down { reason } = h.status("e1", 0) else {
      panic!("expected down")
    };
    assert!(reason.contains("refused"), "{reason}");
    h.checked("e1", Ok(()));
    assert!(!h.status("e1", 0).is_healthy());
    h.checked("e1", Ok(()));
    assert!(h.status("e1", 0).is_healthy());
  }

  #[test]
  fn a_lost_connection_counts_after_the_grace_period() {
    let mut h = health();
    h.connected("e1", 0);
    h.disconnected("e1", 1000);
    assert_eq!(h.next_change(1000), Some(6000));
    assert!(h.status("e1", 5999).is_healthy());
    let Status::Down { reason } = h.status("e1", 6000) else {
      panic!("expected down")
    };
    assert!(reason.contains("control connection down"), "{reason}");
    assert_eq!(h.next_change(6000), None);
    h.connected("e1", 7000);
    assert!(h.status("e1", 7000).is_healthy());
    assert!(!h.status("never-seen", 0).is_healthy());
    assert_eq!(h.edges().collect::<Vec<_>>(), ["e1"]);
  }
}
