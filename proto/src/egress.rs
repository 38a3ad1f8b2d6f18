//! Egress allow entries, as a node's `[egress] allow` (edge.toml) and a
//! worker's `egress = { allow = [...] }` (its upload metadata) write them.
//! Only the syntax lives here, so the control plane checks an upload and
//! the fuzzer reads edge.toml without V8; what an entry opens is the
//! runtime's policy (`isola_ext::egress`).

use std::net::IpAddr;
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::Serialize;

/// One `allow` entry: a network (any port, or one), or a host name (any
/// port, or one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowEntry {
  Net(IpNet, Option<u16>),
  /// Lowercase, without the root dot.
  Host(String, Option<u16>),
}

impl AllowEntry {
  /// `10.1.2.0/24`, `10.1.2.3`, `10.1.2.3:5432`, `[fd00::1]:80`,
  /// `fd00::/8`, `db.internal` or `db.internal:5432`. The error quotes the
  /// entry and says what to write instead.
  pub fn parse(entry: &str) -> Result<Self, String> {
    let bad = |why: &str| {
      format!(
        "egress allow entry {entry:?}: {why}; write a network (\"10.1.2.0/24\"), an address \
         (\"10.1.2.3\", \"10.1.2.3:5432\", \"[fd00::1]:80\") or a host (\"db.internal\", \
         \"db.internal:5432\")"
      )
    };
    let entry = entry.trim();
    if entry.is_empty() {
      return Err(bad("it is empty"));
    }
    if let Ok(net) = entry.parse::<IpNet>() {
      return Ok(Self::Net(net.trunc(), None));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
      return Ok(Self::Net(IpNet::from(ip), None));
    }
    if let Ok(sock) = entry.parse::<SocketAddr>() {
      return Ok(Self::Net(IpNet::from(sock.ip()), Some(sock.port())));
    }
    let (host, port) = match entry.rsplit_once(':') {
      Some((h, p)) => {
        let port = p
          .parse::<u16>()
          .map_err(|_| bad(&format!("{p:?} is not a port")))?;
        (h, Some(port))
      }
      None => (entry, None),
    };
    // A fully qualified name's root dot changes nothing.
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
      && host.len() <= 253
      && host.split('.').all(|label| {
        !label.is_empty()
          && label.len() <= 63
          && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
      });
    if !valid || host.parse::<IpAddr>().is_ok() {
      return Err(bad("it is not a network, an address or a host name"));
    }
    Ok(Self::Host(normal_host(host), port))
  }
}

/// `host` as entries hold it: lowercase, without the root dot.
pub fn normal_host(host: &str) -> String {
  host.trim_end_matches('.').to_ascii_lowercase()
}

/// A worker's `egress = { allow = [...] }`: where its `fetch()` may go,
/// inside what the node allows. Set, it narrows public destinations too
/// (`allow = ["api.example.com:443"]` means only that); unset, the node's
/// policy alone applies.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
  #[serde(default)]
  pub allow: Vec<String>,
}

impl EgressSpec {
  /// Each entry parsed; the error names the first bad one by its index.
  pub fn entries(&self) -> Result<Vec<AllowEntry>, String> {
    self
      .allow
      .iter()
      .enumerate()
      .map(|(i, e)| AllowEntry::parse(e).map_err(|why| format!("egress.allow[{i}]: {why}")))
      .collect()
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn entries_parse_to_networks_and_hosts() {
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    assert_eq!(
      AllowEntry::parse("10.1.2.7/24"),
      Ok(AllowEntry::Net(net("10.1.2.0/24"), None))
    );
    assert_eq!(
      AllowEntry::parse("[fd00::1]:80"),
      Ok(AllowEntry::Net(net("fd00::1/128"), Some(80)))
    );
    assert_eq!(
      AllowEntry::parse(" DB.Internal.:5432 "),
      Ok(AllowEntry::Host("db.internal".into(), Some(5432)))
    );
  }

  #[test]
  fn bad_entries_say_what_to_write() {
    for bad in [
      "",
      "10.0.0.0/33",
      "db internal",
      "host:port",
      "10.0.0.1:99999",
      "-.-:1a",
    ] {
      let err = AllowEntry::parse(bad).unwrap_err();
      assert!(err.contains("write a network"), "{bad:?}: {err}");
    }
    let spec = EgressSpec {
      allow: vec!["api.example.com:443".into(), "api example".into()],
    };
    let err = spec.entries().unwrap_err();
    assert!(
      err.starts_with("egress.allow[1]: ") && err.contains("\"api example\""),
      "{err}"
    );
  }
}
