//! `edge.toml`: its model and checks are `isola_proto::config::edge` (no IO,
//! so the fuzzer reads it too); here the file is read and turned into the
//! runtime's settings.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

pub use isola_proto::config::edge::*;

/// Reads and checks the config file at `path`; relative paths in it resolve
/// against its folder.
pub fn load(path: &Path) -> anyhow::Result<EdgeConfig> {
  let text = std::fs::read_to_string(path)
    .with_context(|| format!("cannot read the config file {}", path.display()))?;
  let base_dir = path
    .parent()
    .map(Path::to_path_buf)
    .unwrap_or_else(|| PathBuf::from("."));
  EdgeConfig::parse(&text, &base_dir).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The runtime's egress policy from `[egress]`, with this node's own
/// listening sockets denied.
pub fn egress_policy(config: &EdgeConfig) -> anyhow::Result<isola_runtime::EgressPolicy> {
  if !config.egress.enabled {
    return Ok(isola_runtime::EgressPolicy::allow_all());
  }
  let own = [
    Some(config.server.listen),
    config.server.listen_tls,
    config.server.admin,
  ];
  // The public addresses DNS hands out reach this node too.
  let public: Vec<std::net::IpAddr> = config
    .edge
    .public_ipv4
    .iter()
    .chain(&config.edge.public_ipv6)
    .filter_map(|a| a.parse().ok())
    .collect();
  let mut sockets: Vec<SocketAddr> = own.into_iter().flatten().collect();
  let ports: Vec<u16> = sockets.iter().map(SocketAddr::port).collect();
  for ip in public {
    sockets.extend(ports.iter().map(|p| SocketAddr::new(ip, *p)));
  }
  let mut policy = isola_runtime::EgressPolicy::default().own_sockets(sockets);
  for entry in &config.egress.allow {
    policy = policy
      .allow(entry)
      .map_err(|e| anyhow::anyhow!("[egress] {e}"))?;
  }
  Ok(policy)
}

/// The runtime's fairness settings from `[fairness]`.
pub fn fairness(config: &FairnessConfig) -> isola_runtime::Fairness {
  isola_runtime::Fairness::default()
    .enabled(config.enabled)
    .allowance(Duration::from_millis(config.allowance_ms))
    .burst(Duration::from_millis(config.burst_ms))
    .forgive_after(Duration::from_secs(config.forgive_after_s))
    .hold(Duration::from_millis(config.hold_ms))
    .quarantine(config.quarantine)
}

#[cfg(test)]
mod tests {
  use super::*;

  fn parse(text: &str) -> EdgeConfig {
    EdgeConfig::parse(text, Path::new("/etc/isola")).unwrap()
  }

  #[test]
  fn the_node_egress_policy_comes_from_the_config() {
    let c = parse("[egress]\nallow = [\"10.1.2.0/24\", \"db.internal:5432\"]\n");
    let policy = egress_policy(&c).unwrap();
    assert!(policy.check_ip("10.1.2.3".parse().unwrap(), 80).is_ok());
    assert!(policy.check_ip("127.0.0.1".parse().unwrap(), 80).is_err());
    // A public address of this node, on its own port, is refused too.
    let c = parse(
      "[server]\nlisten = \"0.0.0.0:8080\"\n[edge]\npublic_ipv4 = [\"203.0.113.7\"]\n[egress]\nallow = [\"203.0.113.0/24\"]\n",
    );
    let policy = egress_policy(&c).unwrap();
    assert!(policy
      .check_ip("203.0.113.7".parse().unwrap(), 8080)
      .is_err());
    assert!(policy.check_ip("203.0.113.7".parse().unwrap(), 443).is_ok());
    let off = parse("[egress]\nenabled = false\n");
    assert!(!egress_policy(&off).unwrap().is_enabled());
  }

  #[test]
  fn a_bad_file_is_named_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(
      err.starts_with(&format!("{}: line 2: ", path.display())),
      "{err}"
    );
  }
}
