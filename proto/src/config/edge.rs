//! `edge.toml`: what an operator writes to run a node, parsed and checked
//! without IO (`isola-edge` reads the file; the fuzzer feeds it anything).
//! Every config parsed serialises back to TOML that parses to the same.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use super::telemetry::TelemetryConfig;
use crate::egress::AllowEntry;
use crate::manifest::LimitsSpec;

/// The whole file. Unknown keys are errors, so typos do not pass silently.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
  #[serde(default)]
  pub server: ServerConfig,
  #[serde(default, rename = "certificate")]
  pub certificates: Vec<CertificateConfig>,
  #[serde(default, rename = "worker")]
  pub workers: Vec<StaticWorker>,
  /// Where deployments come from besides `[[worker]]`; written by
  /// `isola-control enroll-edge`.
  pub control: Option<ControlConfig>,
  /// Tenant fairness: how workers that keep exceeding their CPU or memory
  /// limit are kept from starving the others.
  #[serde(default)]
  pub fairness: FairnessConfig,
  /// `[limits]`: the most any control-plane worker gets on this node,
  /// whatever its version asks for (the keys of a version's `limits`);
  /// keys left out keep [`default_node_maxima`]. See [`Self::node_maxima`].
  #[serde(default)]
  pub limits: LimitsSpec,
  /// `[egress]`: where workers' `fetch()` may connect.
  #[serde(default)]
  pub egress: EgressConfig,
  /// Where this edge is, for the control plane's geo DNS.
  #[serde(default)]
  pub edge: SiteConfig,
  /// `[sandbox]`: the OS layer around the process (Linux).
  #[serde(default)]
  pub sandbox: SandboxConfig,
  /// OpenTelemetry export (`otlp_endpoint`, `service_name` — default
  /// `isola-edge` —, `sample_ratio` — default 1.0). Off by default.
  #[serde(default)]
  pub telemetry: TelemetryConfig,
  /// Folder holding the config file; relative paths resolve against it.
  #[serde(skip)]
  pub base_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
  /// HTTP/1.1 and h2c. Default: 127.0.0.1:8080.
  #[serde(default = "default_listen")]
  pub listen: SocketAddr,
  /// HTTPS (HTTP/1.1 and HTTP/2 via ALPN); needs `[[certificate]]` entries.
  pub listen_tls: Option<SocketAddr>,
  /// `/healthz`, `/readyz`, `/metrics`. Default: 127.0.0.1:9090.
  #[serde(default = "default_admin")]
  pub admin: Option<SocketAddr>,
  /// V8 threads. Default: one per core.
  pub threads: Option<usize>,
  /// Deployment store. Default: `.isola-edge` next to the config file.
  pub data_dir: Option<PathBuf>,
  /// Largest request head (request line and headers). Default: 64 KiB.
  #[serde(default = "default_max_header_bytes")]
  pub max_header_bytes: usize,
  /// Time a client has to send a request head (an HTTP/1 client is cut off
  /// up to a second after it). Default: 10 s.
  #[serde(default = "default_header_timeout_ms")]
  pub header_timeout_ms: u64,
  /// Time in-flight requests get to finish after SIGTERM. Default: 30 s.
  #[serde(default = "default_drain_ms")]
  pub drain_timeout_ms: u64,
}

impl Default for ServerConfig {
  fn default() -> Self {
    Self {
      listen: default_listen(),
      listen_tls: None,
      admin: default_admin(),
      threads: None,
      data_dir: None,
      max_header_bytes: default_max_header_bytes(),
      header_timeout_ms: default_header_timeout_ms(),
      drain_timeout_ms: default_drain_ms(),
    }
  }
}

fn default_listen() -> SocketAddr {
  SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin() -> Option<SocketAddr> {
  Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
}
fn default_max_header_bytes() -> usize {
  64 << 10
}
fn default_header_timeout_ms() -> u64 {
  10_000
}
fn default_drain_ms() -> u64 {
  30_000
}

/// `[egress]`. By default `fetch()` reaches no loopback, private,
/// link-local (cloud metadata), CGNAT, unique-local, multicast or reserved
/// address, in any spelling, nor this node's own listeners; `allow` makes
/// exceptions.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
  /// Default: true. `false` lets workers reach everything this host can.
  #[serde(default = "yes")]
  pub enabled: bool,
  /// `"10.1.2.0/24"`, `"10.1.2.3"`, `"10.1.2.3:5432"`, `"[fd00::1]:80"`,
  /// `"db.internal"`, `"db.internal:5432"`. Default: none.
  #[serde(default)]
  pub allow: Vec<String>,
}

impl Default for EgressConfig {
  fn default() -> Self {
    Self {
      enabled: true,
      allow: Vec::new(),
    }
  }
}

/// `[sandbox]`: on Linux, `serve` limits the process's file access
/// (Landlock) and system calls (seccomp) once it has started; see
/// `crate::sandbox` and deploy/README.md "Sandbox".
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
  /// Allow only the syscalls the edge needs; others fail with EPERM.
  /// Default: true.
  #[serde(default = "yes")]
  pub seccomp: bool,
  /// Limit file access to the data dir (read-write), the config folder,
  /// certificates and the system files TLS and DNS read. Default: true.
  #[serde(default = "yes")]
  pub landlock: bool,
}

impl Default for SandboxConfig {
  fn default() -> Self {
    Self {
      seccomp: true,
      landlock: true,
    }
  }
}

fn yes() -> bool {
  true
}

/// The node's own ceilings unless `[limits]` sets them: CPU 5 min, wall
/// 15 min, memory 1 GiB, 10,000 subrequests, bodies 512 MiB / 1 GiB,
/// scheduled CPU 15 min. Above the control plane's default per-account
/// ceilings, so they only bite when a control plane lets a tenant go far.
pub fn default_node_maxima() -> LimitsSpec {
  LimitsSpec {
    cpu_ms: Some(300_000),
    wall_ms: Some(900_000),
    memory_mb: Some(1024),
    subrequests: Some(10_000),
    request_body_bytes: Some(512 << 20),
    response_body_bytes: Some(1 << 30),
    scheduled_cpu_ms: Some(900_000),
  }
}

/// `[fairness]`; every key is optional (the runtime's `Fairness`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FairnessConfig {
  /// Throttle and quarantine abusive workers at all. Default: true.
  #[serde(default = "default_true")]
  pub enabled: bool,
  /// CPU ms per second a worker may burn in invocations a CPU or memory
  /// limit ended, before it is throttled. Default: 50.
  #[serde(default = "default_allowance_ms")]
  pub allowance_ms: u64,
  /// Debt (CPU ms of limit-ended invocations not yet drained) above which a
  /// worker is throttled. Default: 100.
  #[serde(default = "default_burst_ms")]
  pub burst_ms: u64,
  /// A worker throttled again within this long drains its debt at half the
  /// previous rate (down to 1/64); one free of debt this long starts over.
  /// Default: 60.
  #[serde(default = "default_forgive_after_s")]
  pub forgive_after_s: u64,
  /// How long a throttled request waits before its 503. Default: 250.
  #[serde(default = "default_hold_ms")]
  pub hold_ms: u64,
  /// Run workers with debt on the low-priority quarantine thread. Default:
  /// true.
  #[serde(default = "default_true")]
  pub quarantine: bool,
}

impl Default for FairnessConfig {
  fn default() -> Self {
    Self {
      enabled: true,
      allowance_ms: default_allowance_ms(),
      burst_ms: default_burst_ms(),
      forgive_after_s: default_forgive_after_s(),
      hold_ms: default_hold_ms(),
      quarantine: true,
    }
  }
}

fn default_true() -> bool {
  true
}
fn default_allowance_ms() -> u64 {
  50
}
fn default_burst_ms() -> u64 {
  100
}
fn default_forgive_after_s() -> u64 {
  60
}
fn default_hold_ms() -> u64 {
  250
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
  /// Host names (SNI) this certificate answers for; `*.example.test` allowed.
  pub hosts: Vec<String>,
  pub cert: PathBuf,
  pub key: PathBuf,
}

/// `[edge]`: where this edge is and how the internet reaches it. The edge
/// sends it in its hello; the control plane's geo DNS answers queries with
/// the public addresses of the nearest healthy edges. Every key is
/// optional; an edge without public addresses is never in a DNS answer.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
  /// Region name clients are matched against, like `eu-west`.
  pub region: Option<String>,
  /// `[latitude, longitude]` in degrees.
  pub location: Option<[f64; 2]>,
  /// Addresses DNS answers with (A records).
  #[serde(default)]
  pub public_ipv4: Vec<String>,
  /// Addresses DNS answers with (AAAA records).
  #[serde(default)]
  pub public_ipv6: Vec<String>,
}

impl SiteConfig {
  /// The checked section as the hello carries it (without the HTTP port,
  /// known once the listener is bound); the error says what to fix.
  pub fn site(&self) -> Result<crate::msg::EdgeSite, String> {
    if let Some(region) = &self.region {
      let ok = !region.is_empty()
        && region.len() <= 63
        && region
          .bytes()
          .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
      if !ok {
        return Err(format!(
          "[edge] region {region:?} is not a region name; use 1 to 63 of a-z, 0-9 and '-', like \"eu-west\""
        ));
      }
    }
    if let Some([lat, lon]) = self.location {
      if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(format!(
          "[edge] location [{lat}, {lon}] is off the globe; write [latitude, longitude] with \
           latitude in -90..90 and longitude in -180..180, like [50.11, 8.68]"
        ));
      }
    }
    let public_ipv4 = self
      .public_ipv4
      .iter()
      .map(|a| {
        a.parse().map_err(|_| {
          format!("[edge] public_ipv4: {a:?} is not an IPv4 address; write it like \"192.0.2.10\"")
        })
      })
      .collect::<Result<_, _>>()?;
    let public_ipv6 = self
      .public_ipv6
      .iter()
      .map(|a| {
        a.parse().map_err(|_| {
          format!(
            "[edge] public_ipv6: {a:?} is not an IPv6 address; write it like \"2001:db8::10\""
          )
        })
      })
      .collect::<Result<_, _>>()?;
    Ok(crate::msg::EdgeSite {
      region: self.region.clone(),
      location: self.location,
      public_ipv4,
      public_ipv6,
      http_port: None,
    })
  }
}

/// The control plane this node follows.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
  /// The control plane's QUIC address, `host:port`.
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub address: Option<String>,
  /// More addresses of the same control plane (its replicas). The edge
  /// uses one at a time, starting with `address`, and moves to the next
  /// when it cannot reach it or loses it. Default: none.
  #[serde(default, skip_serializing_if = "Vec::is_empty")]
  pub addresses: Vec<String>,
  /// This edge's name, as enrolled; its certificate must be issued for it.
  pub name: String,
  /// CA certificate the control plane's certificate must chain to.
  pub ca: PathBuf,
  /// This edge's client certificate and key (PEM).
  pub cert: PathBuf,
  pub key: PathBuf,
  /// Name the control plane's certificate is checked against. Default:
  /// `isola-control`, what `isola-control init` issues.
  #[serde(default = "default_server_name")]
  pub server_name: String,
  /// How often usage is collected and shipped. Default: 1 s.
  #[serde(default = "default_usage_interval_ms")]
  pub usage_interval_ms: u64,
  /// Whether invocations' trace events (live tail, invocation logs,
  /// analytics' quantiles) go to the control plane. `false` builds none:
  /// tail and logs stay empty for this edge; usage and billing are not
  /// affected. Default: true.
  #[serde(default = "default_true")]
  pub trace_events: bool,
  /// What the hello says of this edge: `[edge]`, and the HTTP port once
  /// bound.
  #[serde(skip)]
  pub site: crate::msg::EdgeSite,
}

impl ControlConfig {
  /// Every address to try, in order: `address`, then `addresses`.
  pub fn addresses(&self) -> Vec<&str> {
    self
      .address
      .iter()
      .chain(&self.addresses)
      .map(String::as_str)
      .collect()
  }
}

fn default_server_name() -> String {
  "isola-control".to_string()
}
fn default_usage_interval_ms() -> u64 {
  1000
}

/// A worker defined in the config file rather than pushed by a control plane.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticWorker {
  pub name: String,
  /// Main module; its folder holds the other modules.
  pub entry: PathBuf,
  #[serde(default)]
  pub vars: BTreeMap<String, toml::Value>,
  #[serde(default)]
  pub routes: Vec<String>,
  #[serde(default)]
  pub limits: LimitsSpec,
  /// `services = [{ binding = "B", service = "other" }]`: `env.B` calls the
  /// `[[worker]]` named `other` (wrangler's keys).
  #[serde(default)]
  pub services: Vec<crate::manifest::ServiceBinding>,
}

impl EdgeConfig {
  /// Parses and checks the text of an `edge.toml` found in folder
  /// `base_dir` (relative paths resolve against it). The error names the
  /// line, or the section and key, and what to write instead.
  pub fn parse(text: &str, base_dir: &Path) -> Result<Self, String> {
    let mut config: EdgeConfig = super::from_toml(text)?;
    config.base_dir = base_dir.to_path_buf();
    config
      .limits
      .validate()
      .map_err(|e| format!("[limits]: {e}"))?;
    for entry in &config.egress.allow {
      AllowEntry::parse(entry).map_err(|e| format!("[egress] {e}"))?;
    }
    config.telemetry.validate("[telemetry]")?;
    if config.server.listen_tls.is_some() && config.certificates.is_empty() {
      return Err(
        "[server] listen_tls is set but there is no [[certificate]]; add one or remove listen_tls"
          .into(),
      );
    }
    let mut names = std::collections::HashSet::new();
    for w in &config.workers {
      if !names.insert(&w.name) {
        return Err(format!("[[worker]] {:?} is defined twice", w.name));
      }
    }
    let site = config.edge.site()?;
    if let Some(control) = &mut config.control {
      control.site = site;
      for p in [&mut control.ca, &mut control.cert, &mut control.key] {
        if p.is_relative() {
          *p = config.base_dir.join(&*p);
        }
      }
      if control.usage_interval_ms == 0 {
        return Err("[control] usage_interval_ms is 0; leave it unset for 1000".into());
      }
      let all = control.addresses();
      if all.is_empty() {
        return Err(
          "[control] has no address; add `address = \"host:port\"` (or `addresses = [...]` \
           for several control-plane replicas)"
            .into(),
        );
      }
      for (i, a) in all.iter().enumerate() {
        if a.trim().is_empty() {
          return Err("[control] has an empty address; write host:port".into());
        }
        if all[..i].contains(a) {
          return Err(format!("[control] lists the address {a:?} twice"));
        }
      }
    }
    Ok(config)
  }

  /// The node's ceilings: the defaults overlaid by `[limits]`.
  pub fn node_maxima(&self) -> LimitsSpec {
    default_node_maxima().overlaid(&self.limits)
  }

  /// `p` resolved against the config file's folder.
  pub fn resolve(&self, p: &Path) -> PathBuf {
    if p.is_absolute() {
      p.to_path_buf()
    } else {
      self.base_dir.join(p)
    }
  }

  pub fn data_dir(&self) -> PathBuf {
    match &self.server.data_dir {
      Some(dir) => self.resolve(dir),
      None => self.base_dir.join(".isola-edge"),
    }
  }
}

/// A TOML var as the handler sees it: strings stay strings, tables and
/// arrays become JSON values.
pub fn toml_to_json(v: &toml::Value) -> serde_json::Value {
  match v {
    toml::Value::String(s) => serde_json::Value::String(s.clone()),
    toml::Value::Integer(i) => serde_json::Value::from(*i),
    toml::Value::Float(f) => serde_json::Value::from(*f),
    toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
    toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
    toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(toml_to_json).collect()),
    toml::Value::Table(t) => serde_json::Value::Object(
      t.iter()
        .map(|(k, v)| (k.clone(), toml_to_json(v)))
        .collect(),
    ),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_static_worker_binds_another_by_name() {
    let text = r#"
      [[worker]]
      name = "site"
      entry = "site/worker.js"
      services = [{ binding = "API", service = "api" }, { binding = "ADMIN", service = "api", entrypoint = "Admin" }]

      [[worker]]
      name = "api"
      entry = "api/worker.js"
    "#;
    let c: EdgeConfig = toml::from_str(text).unwrap();
    let s = &c.workers[0].services;
    assert_eq!(
      (s[0].binding.as_str(), s[0].service.as_str()),
      ("API", "api")
    );
    assert_eq!(s[1].entrypoint.as_deref(), Some("Admin"));
    // A typo in a binding is an error, not a silently missing binding.
    let typo = r#"
      [[worker]]
      name = "site"
      entry = "w.js"
      services = [{ binding = "API", servce = "api" }]
    "#;
    assert!(toml::from_str::<EdgeConfig>(typo).is_err());
  }

  #[test]
  fn the_documented_example_parses() {
    let text = r#"
      [server]
      listen = "127.0.0.1:8080"
      listen_tls = "127.0.0.1:8443"
      admin = "127.0.0.1:9090"

      [[certificate]]
      hosts = ["alpha.test"]
      cert = "certs/alpha.pem"
      key = "certs/alpha-key.pem"

      [[worker]]
      name = "alpha"
      entry = "alpha/worker.js"
      vars = { NAME = "A", CONF = { max = 3 } }
      routes = ["alpha.test/*", "*.alpha.test/*"]
    "#;
    let c: EdgeConfig = toml::from_str(text).unwrap();
    assert_eq!(c.workers[0].routes.len(), 2);
    assert!(c.workers[0].services.is_empty());
    assert_eq!(
      toml_to_json(&c.workers[0].vars["CONF"]),
      serde_json::json!({ "max": 3 })
    );
  }

  #[test]
  fn the_enrolled_control_section_parses() {
    let text = r#"
      [control]
      address = "127.0.0.1:8701"
      name = "edge-1"
      ca = "ca.pem"
      cert = "edge.pem"
      key = "edge-key.pem"
    "#;
    let c: EdgeConfig = toml::from_str(text).unwrap();
    let control = c.control.unwrap();
    assert_eq!(control.server_name, "isola-control");
    assert_eq!(control.usage_interval_ms, 1000);
    assert!(control.trace_events);
    assert_eq!(control.addresses(), ["127.0.0.1:8701"]);
  }

  #[test]
  fn control_replicas_are_tried_in_order_and_checked() {
    let base = Path::new("/etc/isola");
    let section = "[control]\nname = \"e\"\nca = \"ca.pem\"\ncert = \"e.pem\"\nkey = \"k.pem\"\n";
    let c = EdgeConfig::parse(
      &format!("{section}address = \"a:1\"\naddresses = [\"b:1\", \"c:1\"]\n"),
      base,
    )
    .unwrap();
    assert_eq!(c.control.unwrap().addresses(), ["a:1", "b:1", "c:1"]);
    let c = EdgeConfig::parse(&format!("{section}addresses = [\"b:1\"]\n"), base).unwrap();
    assert_eq!(c.control.unwrap().addresses(), ["b:1"]);
    let err = EdgeConfig::parse(section, base).unwrap_err();
    assert!(err.contains("no address"), "{err}");
    let err = EdgeConfig::parse(
      &format!("{section}address = \"a:1\"\naddresses = [\"a:1\"]\n"),
      base,
    )
    .unwrap_err();
    assert!(err.contains("twice"), "{err}");
  }

  #[test]
  fn node_limits_override_the_default_maxima_key_by_key() {
    let c: EdgeConfig = toml::from_str("[limits]\nmemory_mb = 256\n").unwrap();
    let max = c.node_maxima();
    assert_eq!(max.memory_mb, Some(256));
    assert_eq!(max.cpu_ms, default_node_maxima().cpu_ms);
    assert!(toml::from_str::<EdgeConfig>("[limits]\nmemory = 256\n").is_err());
  }

  #[test]
  fn egress_entries_are_checked_when_the_config_is_read() {
    let base = Path::new("/etc/isola");
    let c = EdgeConfig::parse(
      "[egress]\nallow = [\"10.1.2.0/24\", \"db.internal:5432\"]\n",
      base,
    )
    .unwrap();
    assert_eq!(c.egress.allow.len(), 2);
    let err = EdgeConfig::parse("[egress]\nallow = [\"10.1.2.0/33\"]\n", base).unwrap_err();
    assert!(
      err.starts_with("[egress]") && err.contains("10.1.2.0/33"),
      "{err}"
    );
  }

  #[test]
  fn errors_name_the_line_or_the_section() {
    let base = Path::new("/etc/isola");
    let err = EdgeConfig::parse("[server]\nthreads = 2\nlisten = 8080\n", base).unwrap_err();
    assert!(err.starts_with("line 3: "), "{err}");
    let err = EdgeConfig::parse("[limits]\ncpu_ms = 0\n", base).unwrap_err();
    assert!(err.starts_with("[limits]: "), "{err}");
    let err = EdgeConfig::parse("[server]\nlisten_tls = \"127.0.0.1:8443\"\n", base).unwrap_err();
    assert!(err.starts_with("[server] listen_tls"), "{err}");
  }

  #[test]
  fn a_parsed_config_serialises_to_toml_that_parses_the_same() {
    let base = Path::new("/etc/isola");
    let text = r#"
      [server]
      listen = "0.0.0.0:8080"
      threads = 4
      [[worker]]
      name = "alpha"
      entry = "alpha/worker.js"
      vars = { NAME = "A", CONF = { max = 3, ratio = 0.5 } }
      routes = ["alpha.test/*"]
      [control]
      address = "127.0.0.1:8701"
      name = "edge-1"
      ca = "ca.pem"
      cert = "edge.pem"
      key = "edge-key.pem"
      [edge]
      location = [50.11, 8.68]
      [egress]
      allow = ["10.1.2.0/24"]
    "#;
    let c = EdgeConfig::parse(text, base).unwrap();
    let again = toml::to_string(&c).unwrap();
    let c2 = EdgeConfig::parse(&again, base).unwrap();
    assert_eq!(toml::to_string(&c2).unwrap(), again);
    assert_eq!(c2.control.unwrap().ca, Path::new("/etc/isola/ca.pem"));
  }

  #[test]
  fn the_edge_section_is_checked() {
    let c: EdgeConfig = toml::from_str(
      "[edge]\nregion = \"eu-west\"\nlocation = [50.1, 8.7]\npublic_ipv4 = [\"192.0.2.1\"]\npublic_ipv6 = [\"2001:db8::1\"]\n",
    )
    .unwrap();
    let site = c.edge.site().unwrap();
    assert_eq!(site.region.as_deref(), Some("eu-west"));
    assert_eq!(site.location, Some([50.1, 8.7]));
    assert_eq!(
      site.public_ipv4,
      ["192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(site.public_ipv6.len(), 1);
    let err = |text: &str| {
      toml::from_str::<EdgeConfig>(text)
        .unwrap()
        .edge
        .site()
        .unwrap_err()
    };
    assert!(err("[edge]\nlocation = [91.0, 0.0]\n").contains("latitude in -90..90"));
    assert!(err("[edge]\nlocation = [0.0, 181.0]\n").contains("off the globe"));
    assert!(err("[edge]\npublic_ipv4 = [\"1.2.3\"]\n").contains("\"1.2.3\" is not an IPv4"));
    assert!(err("[edge]\npublic_ipv6 = [\"1.2.3.4\"]\n").contains("public_ipv6"));
    assert!(err("[edge]\nregion = \"EU West\"\n").contains("region"));
    assert!(toml::from_str::<EdgeConfig>("[edge]\nregoin = \"x\"\n")
      .unwrap_err()
      .to_string()
      .contains("regoin"));
  }

  #[test]
  fn the_sandbox_is_on_unless_turned_off() {
    let c: EdgeConfig = toml::from_str("").unwrap();
    assert!(c.sandbox.seccomp && c.sandbox.landlock);
    let c: EdgeConfig = toml::from_str("[sandbox]\nseccomp = false\n").unwrap();
    assert!(!c.sandbox.seccomp && c.sandbox.landlock);
    assert!(toml::from_str::<EdgeConfig>("[sandbox]\nlandlok = false\n").is_err());
  }

  #[test]
  fn a_typo_is_an_error_that_names_the_key() {
    let err = toml::from_str::<EdgeConfig>("[server]\nlisten_tsl = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(err.to_string().contains("listen_tsl"), "{err}");
  }
}
