//! `dns.toml`: the zones the geo DNS server is authoritative for, how it
//! answers, where clients are, and how edges are health-checked.
//!
//! ```toml
//! zones = ["apps.example"]
//! nameservers = ["ns1.example.net", "ns2.example.net"]
//! hostmaster = "hostmaster.example.net"
//! ttl = 30
//! answers = 2
//! geoip_db = "GeoLite2-City.mmdb"
//!
//! [[network]]
//! cidr = "198.51.100.0/24"
//! region = "eu-west"
//!
//! [health]
//! interval_ms = 2000
//! rise = 2
//! fall = 3
//! grace_ms = 10000
//! ```

use std::path::Path;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use crate::Error;

/// The file as written. Unknown keys are errors, so a typo never passes
/// silently.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
  zones: Vec<String>,
  nameservers: Vec<String>,
  hostmaster: Option<String>,
  #[serde(default = "default_ttl")]
  ttl: u32,
  #[serde(default = "default_answers")]
  answers: usize,
  geoip_db: Option<PathBuf>,
  #[serde(default, rename = "network")]
  networks: Vec<NetworkFile>,
  #[serde(default)]
  health: HealthConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
  cidr: String,
  region: Option<String>,
  location: Option<[f64; 2]>,
}

fn default_ttl() -> u32 {
  30
}
fn default_answers() -> usize {
  2
}

/// The checked settings of the DNS server.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsConfig {
  /// Zone apexes, lowercased, without the trailing dot.
  pub zones: Vec<String>,
  /// NS records of every zone; the first is the SOA's primary.
  pub nameservers: Vec<String>,
  /// SOA RNAME. Default: `hostmaster.<zone>`.
  pub hostmaster: Option<String>,
  /// TTL of every answer, and the SOA minimum (negative caching). Default: 30.
  pub ttl: u32,
  /// Edges per answer. Default: 2.
  pub answers: usize,
  /// MaxMind-format database mapping addresses to locations. Default: none.
  pub geoip_db: Option<PathBuf>,
  /// Rules consulted before the database; the longest matching prefix wins.
  pub networks: Vec<NetworkRule>,
  pub health: HealthConfig,
}

/// `[[network]]`: clients in `cidr` are in `region` (and at `location`).
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkRule {
  pub cidr: IpNet,
  pub region: Option<String>,
  pub location: Option<[f64; 2]>,
}

/// `[health]`: how the control plane decides an edge is out of answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
  /// Time between `GET /healthz` checks of each edge. Default: 2000.
  pub interval_ms: u64,
  /// Passed checks in a row that bring a failing edge back. Default: 2.
  pub rise: u32,
  /// Failed checks in a row that take an edge out. Default: 3.
  pub fall: u32,
  /// How long an edge's control connection may be down before the edge
  /// leaves answers (it keeps serving its last state meanwhile). Default:
  /// 10000.
  pub grace_ms: u64,
}

impl Default for HealthConfig {
  fn default() -> Self {
    Self {
      interval_ms: 2000,
      rise: 2,
      fall: 3,
      grace_ms: 10_000,
    }
  }
}

impl DnsConfig {
  /// Reads and checks `path`; a relative `geoip_db` is taken from the
  /// file's folder.
  pub fn load(path: &Path) -> Result<Self, Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
      path: shown.clone(),
      source,
    })?;
    let mut config = Self::parse(&text).map_err(|message| Error::Config {
      path: shown,
      message,
    })?;
    if let Some(db) = &mut config.geoip_db {
      if db.is_relative() {
        *db = path.parent().unwrap_or(Path::new(".")).join(&*db);
      }
    }
    Ok(config)
  }

  /// Parses and checks the file's text; the error names the line or key and
  /// how to fix it.
  pub fn parse(text: &str) -> Result<Self, String> {
    let file: File = isola_proto::config::from_toml(text)?;
    if file.zones.is_empty() {
      return Err("zones is empty; name at least one zone, like zones = [\"apps.example\"]".into());
    }
    let zones = file
      .zones
      .iter()
      .map(|z| domain("zones", z))
      .collect::<Result<Vec<_>, _>>()?;
    if file.nameservers.is_empty() {
      return Err(
        "nameservers is empty; list the names of the servers the zone is delegated to, like \
         nameservers = [\"ns1.example.net\"]"
          .into(),
      );
    }
    let nameservers = file
      .nameservers
      .iter()
      .map(|n| domain("nameservers", n))
      .collect::<Result<Vec<_>, _>>()?;
    let hostmaster = file
      .hostmaster
      .as_deref()
      .map(|h| domain("hostmaster", &h.replacen('@', ".", 1)))
      .transpose()?;
    if file.answers == 0 {
      return Err("answers = 0 would answer with no edge; leave it unset for 2".into());
    }
    let networks = file
      .networks
      .into_iter()
      .enumerate()
      .map(|(i, n)| {
        let cidr: IpNet = n.cidr.parse().map_err(|_| {
          format!(
            "[[network]] #{}: cidr {:?} is not a network; write it like \"198.51.100.0/24\"",
            i + 1,
            n.cidr
          )
        })?;
        if n.region.is_none() && n.location.is_none() {
          return Err(format!(
            "[[network]] #{} ({}) says nothing; give it a region, a location or both",
            i + 1,
            n.cidr
          ));
        }
        if let Some(loc) = n.location {
          check_location(loc).map_err(|e| format!("[[network]] #{}: {e}", i + 1))?;
        }
        Ok(NetworkRule {
          cidr: cidr.trunc(),
          region: n.region,
          location: n.location,
        })
      })
      .collect::<Result<Vec<_>, String>>()?;
    let health = file.health;
    if health.interval_ms == 0 || health.rise == 0 || health.fall == 0 {
      return Err(
        "[health] interval_ms, rise and fall must be above 0; leave them unset for 2000, 2 and 3"
          .into(),
      );
    }
    Ok(DnsConfig {
      zones,
      nameservers,
      hostmaster,
      ttl: file.ttl,
      answers: file.answers,
      geoip_db: file.geoip_db,
      networks,
      health,
    })
  }

  /// The zone `name` (lowercased, no trailing dot) is in: the longest apex
  /// equal to it or a suffix of it at a label boundary.
  pub fn zone_of(&self, name: &str) -> Option<&str> {
    self
      .zones
      .iter()
      .filter(|z| {
        name == z.as_str()
          || (name.len() > z.len()
            && name.ends_with(z.as_str())
            && name.as_bytes()[name.len() - z.len() - 1] == b'.')
      })
      .max_by_key(|z| z.len())
      .map(String::as_str)
  }
}

/// Checks a latitude/longitude pair.
pub fn check_location([lat, lon]: [f64; 2]) -> Result<(), String> {
  if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
    Ok(())
  } else {
    Err(format!(
      "location [{lat}, {lon}] is off the globe; write [latitude, longitude] with latitude in \
       -90..90 and longitude in -180..180"
    ))
  }
}

/// `name` lowercased without its trailing dot, if it is a domain name.
fn domain(key: &str, name: &str) -> Result<String, String> {
  let lower = name.trim_end_matches('.').to_ascii_lowercase();
  let ok = !lower.is_empty()
    && lower.len() <= 253
    && lower.split('.').all(|label| {
      !label.is_empty()
        && label.len() <= 63
        && label
          .bytes()
          .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
  if ok {
    Ok(lower)
  } else {
    Err(format!(
      "{key}: {name:?} is not a domain name; write it like \"apps.example.com\""
    ))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const EXAMPLE: &str = r#"
zones = ["Apps.Example."]
nameservers = ["ns1.example.net"]
ttl = 20
[[network]]
cidr = "198.51.100.7/24"
region = "eu-west"
[health]
interval_ms = 500
"#;

  #[test]
  fn the_example_parses_with_defaults() {
    let c = DnsConfig::parse(EXAMPLE).unwrap();
    assert_eq!(c.zones, ["apps.example"]);
    assert_eq!((c.ttl, c.answers), (20, 2));
    assert_eq!(c.networks[0].cidr.to_string(), "198.51.100.0/24");
    assert_eq!(
      c.health,
      HealthConfig {
        interval_ms: 500,
        ..HealthConfig::default()
      }
    );
    assert_eq!(c.zone_of("a.b.apps.example"), Some("apps.example"));
    assert_eq!(c.zone_of("apps.example"), Some("apps.example"));
    assert_eq!(c.zone_of("xapps.example"), None);
  }

  #[test]
  fn errors_name_the_key_or_line_and_the_fix() {
    let err = |text: &str| DnsConfig::parse(text).unwrap_err();
    let e = err("zones = [\"a.example\"]\nnameservers = [\"ns.example\"]\nttll = 3\n");
    assert!(e.starts_with("line 3:") && e.contains("ttll"), "{e}");
    let e = err("zones = [\"a.example\"]\nnameservers = [\"ns.example\"]\n[health]\nrice = 3\n");
    assert!(e.starts_with("line 4:") && e.contains("rice"), "{e}");
    let e = err("zones = []\nnameservers = [\"ns.example\"]\n");
    assert!(e.contains("zones is empty"), "{e}");
    let e = err("zones = [\"a b\"]\nnameservers = [\"ns.example\"]\n");
    assert!(e.contains("not a domain name"), "{e}");
    let e = err("zones = [\"a.example\"]\nnameservers = []\n");
    assert!(e.contains("nameservers is empty"), "{e}");
    let e = err(
      "zones = [\"a.example\"]\nnameservers = [\"ns.example\"]\n[[network]]\ncidr = \"10.0.0.0/33\"\nregion = \"x\"\n",
    );
    assert!(
      e.contains("[[network]] #1") && e.contains("10.0.0.0/33"),
      "{e}"
    );
    let e = err("zones = [\"a.example\"]\nnameservers = [\"ns.example\"]\nanswers = 0\n");
    assert!(e.contains("answers = 0"), "{e}");
    let e = err("zones = [\"a.example\"]\nnameservers = [\"ns.example\"]\n[health]\nfall = 0\n");
    assert!(e.contains("above 0"), "{e}");
    let e = err("nameservers = [\"ns.example\"]\n");
    assert!(e.contains("zones"), "{e}");
  }
}
