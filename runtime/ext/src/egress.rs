//! Where a worker's `fetch()` may connect. By default nothing of the node's
//! own networks: loopback, private, link-local (cloud metadata), CGNAT,
//! unique-local, multicast and reserved ranges, and the node's own listening
//! sockets, in every spelling an address can take. Two checks make it
//! hold:
//!
//! - before a request is sent (deno_fetch's request hook, on the isolate's
//!   thread, for every hop of a redirect): an IP-literal host is checked as
//!   is (the WHATWG URL parser has already turned `2130706433`, `0x7f.1` and
//!   `017700000001` into `127.0.0.1`), and a host name that the allow list
//!   names only for other ports is refused;
//! - when a host name is resolved (the fetch client's resolver): every
//!   address it resolves to is checked, and the connection goes only to the
//!   addresses checked, so a name that changes its answer between a check
//!   and the connect (DNS rebinding) gains nothing.
//!
//! Two policies apply, and a destination must pass both: the node's
//! ([`EgressPolicy`], edge.toml `[egress]`) and, when the worker's manifest
//! has one, the worker's own list ([`WorkerEgress`], `egress.allow`), which
//! can only narrow: it opens nothing the node denies, and it limits public
//! destinations too. Errors say which policy refused.
//!
//! Where each policy lives, and why: deno_fetch's request hook is a plain
//! `fn` without access to the isolate, and one V8 thread runs many
//! isolates, interleaved at every await (so "the policy of the running
//! invocation" is not a thread's state either). Hence:
//! - the node's policy is the V8 thread's (set by the pool when it starts
//!   the thread; every isolate on it shares the node);
//! - the worker's list is in its isolate's `OpState`, and reaches the two
//!   checks from there: the resolver is the fetch client's, and each
//!   isolate with a list gets its own client (deno_fetch builds the client
//!   lazily from the `Options` in `OpState`, so [`install_worker_egress`]
//!   puts a copy whose resolver holds the list); the request hook runs
//!   synchronously inside `op_fetch`, so in the isolate whose JS runs on
//!   the thread at that moment: the runtime, which knows that isolate,
//!   gives the hook the [`Caller`] kept in it ([`set_caller_source`]). When
//!   it cannot, the hook refuses the fetch rather than skip the worker's
//!   list. (An op-dispatch hook handed the list over before; it made every
//!   isolate register all its ops again instead of taking them from the
//!   snapshot.)

use std::cell::RefCell;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;
use std::sync::Arc;

use deno_core::OpState;
use deno_error::JsErrorBox;
use deno_fetch::dns::Resolve;
use deno_fetch::dns::Resolving;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use hyper_util::client::legacy::connect::dns::Name;
use isola_proto::egress::normal_host;
use isola_proto::egress::AllowEntry as Allow;
use isola_proto::egress::EgressSpec;
use tower_service::Service as _;

/// What `fetch()` may reach. [`EgressPolicy::default`] denies the node's
/// networks; [`EgressPolicy::allow_all`] turns the checks off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
  enabled: bool,
  allow: Vec<Allow>,
  own: Vec<SocketAddr>,
}

impl Default for EgressPolicy {
  fn default() -> Self {
    Self {
      enabled: true,
      allow: Vec::new(),
      own: Vec::new(),
    }
  }
}

impl EgressPolicy {
  /// No checks at all (`isola-edge dev` unless asked for the policy).
  pub fn allow_all() -> Self {
    Self {
      enabled: false,
      ..Self::default()
    }
  }

  pub fn is_enabled(&self) -> bool {
    self.enabled
  }

  /// Adds an exception: `10.1.2.0/24`, `10.1.2.3`, `10.1.2.3:5432`,
  /// `[fd00::1]:80`, `fd00::/8`, `db.internal` or `db.internal:5432`. The
  /// error says what is wrong with the entry.
  pub fn allow(mut self, entry: &str) -> Result<Self, String> {
    self.allow.push(Allow::parse(entry)?);
    Ok(self)
  }

  /// The node's own listening sockets: denied even where an `allow` entry
  /// covers their address (a worker calling its own edge's admin port, or
  /// looping through its public listener).
  pub fn own_sockets(mut self, sockets: impl IntoIterator<Item = SocketAddr>) -> Self {
    self.own.extend(sockets);
    self
  }

  /// Whether `fetch()` may connect to `ip:port`; the error is the message
  /// the worker's `TypeError` carries.
  pub fn check_ip(&self, ip: IpAddr, port: u16) -> Result<(), String> {
    if !self.enabled {
      return Ok(());
    }
    let ip = canonical(ip);
    let shown = SocketAddr::new(ip, port);
    if self
      .own
      .iter()
      .any(|own| own.port() == port && canonical(own.ip()) == ip)
    {
      return Err(format!(
        "fetch() to {shown} is denied by the egress policy (node): it is one of this node's \
         own listening addresses"
      ));
    }
    let Some(reason) = denied_range(ip) else {
      return Ok(());
    };
    if self.allows_net(ip, Some(port)) {
      return Ok(());
    }
    Err(format!(
      "fetch() to {shown} is denied by the egress policy (node): {reason} addresses are not \
       reachable from workers (the node's operator can allow it with `[egress] allow` in \
       edge.toml)"
    ))
  }

  /// Whether a network entry opens canonical `ip` on `port` (`None`: on a
  /// port not known yet, so only entries for every port count).
  fn allows_net(&self, ip: IpAddr, port: Option<u16>) -> bool {
    self.allow.iter().any(|a| match a {
      Allow::Net(net, p) => net.contains(&ip) && (p.is_none() || *p == port),
      Allow::Host(..) => false,
    })
  }

  /// What the allow list says of host name `host` on `port` (see
  /// [`host_verdict`]).
  fn host_verdict(&self, host: &str, port: Option<u16>) -> Option<bool> {
    host_verdict(&self.allow, host, port)
  }
}

/// The address itself for IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible
/// IPv6 forms, so each is judged as the IPv4 address it reaches.
fn canonical(ip: IpAddr) -> IpAddr {
  match ip {
    IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
      Some(v4) => IpAddr::V4(v4),
      None => {
        let s = v6.segments();
        // `::a.b.c.d` (deprecated IPv4-compatible), but not `::` or `::1`.
        if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
          IpAddr::V4(Ipv4Addr::from(u32::from(s[6]) << 16 | u32::from(s[7])))
        } else {
          IpAddr::V6(v6)
        }
      }
    },
    v4 => v4,
  }
}

/// Why `ip` (canonical) is off limits by default, or `None` for a public
/// address.
fn denied_range(ip: IpAddr) -> Option<&'static str> {
  match ip {
    IpAddr::V4(v4) => denied_v4(v4),
    IpAddr::V6(v6) => denied_v6(v6),
  }
}

fn denied_v4(ip: Ipv4Addr) -> Option<&'static str> {
  let [a, b, c, _] = ip.octets();
  Some(match (a, b, c) {
    (0, ..) => "\"this network\" (0.0.0.0/8)",
    (10, ..) => "private (10.0.0.0/8)",
    (100, 64..=127, _) => "carrier-grade NAT (100.64.0.0/10)",
    (127, ..) => "loopback",
    (169, 254, _) => "link-local (incl. cloud metadata, 169.254.0.0/16)",
    (172, 16..=31, _) => "private (172.16.0.0/12)",
    (192, 0, 0) => "IETF protocol (192.0.0.0/24)",
    (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
    (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
    (192, 168, _) => "private (192.168.0.0/16)",
    (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
    (224..=239, ..) => "multicast",
    (240..=255, ..) => "reserved or broadcast",
    _ => return None,
  })
}

fn denied_v6(ip: Ipv6Addr) -> Option<&'static str> {
  let s = ip.segments();
  if ip.is_unspecified() {
    return Some("unspecified (::)");
  }
  if ip.is_loopback() {
    return Some("loopback");
  }
  // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address that a
  // gateway may reach for us: judge that one.
  if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
    let v4 = Ipv4Addr::from(u32::from(s[6]) << 16 | u32::from(s[7]));
    return denied_v4(v4).map(|_| "NAT64 of a denied IPv4");
  }
  if s[0] == 0x2002 {
    let v4 = Ipv4Addr::from(u32::from(s[1]) << 16 | u32::from(s[2]));
    return denied_v4(v4).map(|_| "6to4 of a denied IPv4");
  }
  Some(match s[0] {
    0x0064 if s[1] == 0xff9b && s[2] == 1 => "NAT64 local use (64:ff9b:1::/48)",
    0x0100 if s[1..4] == [0, 0, 0] => "discard (100::/64)",
    0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
    0x2001 if s[1] < 0x0200 => "IETF protocol (2001::/23)",
    0xfc00..=0xfdff => "unique local (fc00::/7)",
    0xfe80..=0xfebf => "link-local (fe80::/10)",
    0xfec0..=0xfeff => "site-local (fec0::/10)",
    0xff00..=0xffff => "multicast",
    _ => return None,
  })
}

thread_local! {
  static POLICY: RefCell<Option<Arc<EgressPolicy>>> = const { RefCell::new(None) };
}

/// Makes `policy` the one for every isolate on this thread. Threads that
/// never call it (a test running a worker on its own thread) apply none.
pub fn set_thread_policy(policy: Arc<EgressPolicy>) {
  POLICY.with(|p| *p.borrow_mut() = Some(policy));
}

fn thread_policy() -> Option<Arc<EgressPolicy>> {
  POLICY.with(|p| p.borrow().clone())
}

/// A worker's own allow list (its manifest's `egress.allow`). It narrows
/// the node's policy: a destination must also be in it. An address entry
/// opens literal addresses and the addresses names resolve to (a network
/// with a port: literal addresses on that port only, as the node's); a
/// host entry opens the name (on its port), whatever it resolves to that
/// the node allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerEgress {
  allow: Vec<Allow>,
}

impl WorkerEgress {
  /// The list of `spec`; the error names the bad entry.
  pub fn new(spec: &EgressSpec) -> Result<Self, String> {
    Ok(Self {
      allow: spec.entries()?,
    })
  }

  /// Whether the list lets `fetch()` send a request to `host` (an IP
  /// literal or a name) on `port`; a name may still be refused once
  /// resolved ([`Self::allows_resolved`]).
  fn check_request(&self, host: &str, ip: Option<IpAddr>, port: u16) -> Result<(), String> {
    let denied = |why: &str| {
      Err(format!(
        "fetch() to {} is denied by the egress policy (worker): {why}",
        match ip {
          Some(ip) => SocketAddr::new(canonical(ip), port).to_string(),
          None => format!("{host}:{port}"),
        }
      ))
    };
    if let Some(ip) = ip {
      let ip = canonical(ip);
      let listed = self.allow.iter().any(|a| match a {
        Allow::Net(net, p) => net.contains(&ip) && p.is_none_or(|p| p == port),
        Allow::Host(..) => false,
      });
      return if listed {
        Ok(())
      } else {
        denied("the worker's `egress.allow` does not list it")
      };
    }
    match host_verdict(&self.allow, host, Some(port)) {
      Some(true) => Ok(()),
      Some(false) => denied(&format!(
        "the worker's `egress.allow` lists {} on other ports only",
        normal_host(host)
      )),
      // The name may resolve into a listed network.
      None if self.allow.iter().any(|a| matches!(a, Allow::Net(_, None))) => Ok(()),
      None => denied("the worker's `egress.allow` does not list it"),
    }
  }

  /// Whether name `host`, resolved to canonical `ip`, may be connected to.
  fn allows_resolved(&self, host: &str, ip: IpAddr) -> bool {
    host_verdict(&self.allow, host, None) == Some(true)
      || self.allow.iter().any(|a| match a {
        Allow::Net(net, None) => net.contains(&ip),
        _ => false,
      })
  }
}

/// The worker list of an isolate, kept in the isolate (a V8 slot) for the
/// request hook; `None` inside: the worker has none, and the node's policy
/// alone applies.
#[derive(Clone, Debug)]
pub struct Caller(Option<Arc<WorkerEgress>>);

/// Gives the isolate of `state` the worker list `egress` (once, when a
/// worker is loaded into it) as the resolver of a fetch client of its own,
/// and returns the [`Caller`] to keep in the isolate for the request hook.
pub fn install_worker_egress(state: &mut OpState, egress: Option<Arc<WorkerEgress>>) -> Caller {
  if egress.is_some() {
    state.put(crate::fetch_options(egress.clone()));
    // A client made before (by the blank isolate) has the shared resolver.
    state.try_take::<deno_fetch::Client>();
  }
  Caller(egress)
}

/// Where the request hook learns the [`Caller`] of the isolate whose JS
/// runs on the calling thread (`None`: it cannot tell). Set once, by the
/// runtime; unset, every fetch is refused.
static CALLER_SOURCE: std::sync::OnceLock<fn() -> Option<Caller>> = std::sync::OnceLock::new();

/// Sets the runtime's answer to "whose list applies now"; only the first
/// call counts.
pub fn set_caller_source(source: fn() -> Option<Caller>) {
  let _ = CALLER_SOURCE.set(source);
}

/// What the allow list `allow` says of host name `host` on `port`:
/// `Some(true)` when it allows the name there (`port` `None`: on some
/// port), `Some(false)` when it names the host for other ports only,
/// `None` when it does not name the host.
fn host_verdict(allow: &[Allow], host: &str, port: Option<u16>) -> Option<bool> {
  let host = normal_host(host);
  let mut named = false;
  for a in allow {
    if let Allow::Host(h, p) = a {
      if *h == host {
        named = true;
        if p.is_none() || port.is_none() || *p == port {
          return Some(true);
        }
      }
    }
  }
  named.then_some(false)
}

/// deno_fetch's request hook: runs in `op_fetch` on the isolate's thread
/// for each request and each redirect hop. The node's policy first, then
/// the worker's list.
pub(crate) fn request_hook(
  request: &mut http::Request<deno_fetch::ReqBody>,
) -> Result<(), JsErrorBox> {
  let Some(Caller(worker)) = CALLER_SOURCE.get().and_then(|source| source()) else {
    return Err(JsErrorBox::type_error(
      "fetch() is denied by the egress policy (worker): the runtime could not tell which \
       worker is calling",
    ));
  };
  let uri = request.uri();
  let Some(host) = uri.host() else {
    return Ok(());
  };
  let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
    Some("https") => 443,
    _ => 80,
  });
  let bare = host
    .strip_prefix('[')
    .and_then(|h| h.strip_suffix(']'))
    .unwrap_or(host);
  let ip = bare.parse::<IpAddr>().ok();
  if let Some(policy) = thread_policy().filter(|p| p.enabled) {
    match ip {
      Some(ip) => policy.check_ip(ip, port).map_err(JsErrorBox::type_error)?,
      None if policy.host_verdict(bare, Some(port)) == Some(false) => {
        return Err(JsErrorBox::type_error(format!(
          "fetch() to {bare}:{port} is denied by the egress policy (node): it allows {bare} on \
           other ports only"
        )));
      }
      None => {}
    }
  }
  if let Some(worker) = worker {
    worker
      .check_request(bare, ip, port)
      .map_err(JsErrorBox::type_error)?;
  }
  Ok(())
}

/// The fetch client's resolver: the system's (`getaddrinfo`, so
/// `/etc/hosts` applies), then the node's policy and the worker's list (of
/// the isolate whose client this is) on every address.
#[derive(Debug)]
pub(crate) struct EgressResolver {
  system: GaiResolver,
  worker: Option<Arc<WorkerEgress>>,
}

impl EgressResolver {
  pub(crate) fn new(worker: Option<Arc<WorkerEgress>>) -> Self {
    Self {
      system: GaiResolver::new(),
      worker,
    }
  }
}

impl Resolve for EgressResolver {
  fn resolve(&self, name: Name) -> Resolving {
    // Called inside the task deno_fetch spawns on the isolate thread's
    // current-thread runtime, so the thread's policy is the isolate's.
    let policy = thread_policy().filter(|p| p.enabled);
    let worker = self.worker.clone();
    let mut system = self.system.clone();
    Box::pin(async move {
      let addrs: Vec<SocketAddr> = system.call(name.clone()).await?.collect();
      let host = name.as_str();
      let mut denied = None;
      let kept: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| {
          let ip = canonical(a.ip());
          if let Some(policy) = &policy {
            if policy.host_verdict(host, None) != Some(true) {
              if let Some(reason) = denied_range(ip) {
                if !policy.allows_net(ip, None) {
                  denied.get_or_insert((ip, Denial::Node(reason)));
                  return false;
                }
              }
            }
          }
          if let Some(worker) = &worker {
            if !worker.allows_resolved(host, ip) {
              denied.get_or_insert((ip, Denial::Worker));
              return false;
            }
          }
          true
        })
        .collect();
      if kept.is_empty() {
        let message = match denied {
          Some((ip, Denial::Node(reason))) => format!(
            "fetch() to {host} is denied by the egress policy (node): it resolves to {ip}, and \
             {reason} addresses are not reachable from workers (the node's operator can allow \
             it with `[egress] allow` in edge.toml)"
          ),
          Some((ip, Denial::Worker)) => format!(
            "fetch() to {host} is denied by the egress policy (worker): it resolves to {ip}, \
             which the worker's `egress.allow` does not list"
          ),
          None => format!("fetch() to {host}: the name resolves to no address"),
        };
        return Err(std::io::Error::new(
          std::io::ErrorKind::PermissionDenied,
          message,
        ));
      }
      Ok(kept.into_iter())
    })
  }
}

/// Which policy refused a resolved address.
enum Denial {
  Node(&'static str),
  Worker,
}

#[cfg(test)]
mod tests {
  use super::*;

  /// Each host as `new URL()` (the WHATWG parser fetch uses) leaves it,
  /// then the policy's verdict. Every spelling of a denied address must be
  /// denied.
  #[test]
  fn every_spelling_of_a_denied_address_is_denied() {
    let policy = EgressPolicy::default();
    let denied = [
      "http://127.0.0.1/",
      "http://127.0.0.1:9090/admin",
      "http://127.1/",
      "http://127.0.1/",
      "http://2130706433/",
      "http://0x7f000001/",
      "http://0x7f.0.0.1/",
      "http://0177.0.0.1/",
      "http://017700000001/",
      "http://0/",
      "http://0.0.0.0/",
      "http://[::1]/",
      "http://[::]/",
      "http://[0:0:0:0:0:0:0:1]/",
      "http://[::ffff:127.0.0.1]/",
      "http://[::ffff:7f00:1]/",
      "http://[::127.0.0.1]/",
      "http://[0:0:0:0:0:ffff:a00:1]/",
      "http://10.0.0.1/",
      "http://10.255.255.255/",
      "http://012.0.0.1/",
      "http://167772161/",
      "http://172.16.0.1/",
      "http://172.31.255.254/",
      "http://192.168.1.1/",
      "http://0xc0a80101/",
      "http://169.254.169.254/latest/meta-data/",
      "http://0xa9fea9fe/",
      "http://[::ffff:169.254.169.254]/",
      "http://100.64.0.1/",
      "http://100.127.255.255/",
      "http://224.0.0.1/",
      "http://239.255.255.250/",
      "http://255.255.255.255/",
      "http://240.0.0.1/",
      "http://198.18.0.1/",
      "http://192.0.2.1/",
      "http://[fc00::1]/",
      "http://[fd12:3456::1]/",
      "http://[fe80::1]/",
      "http://[fec0::1]/",
      "http://[ff02::1]/",
      "http://[64:ff9b::7f00:1]/",
      "http://[64:ff9b::a9fe:a9fe]/",
      "http://[2002:7f00:1::]/",
      "http://[2001:db8::1]/",
      "https://127.0.0.1:8443/",
      "http://127.255.255.254:1/",
    ];
    for spelling in denied {
      let url = deno_core::url::Url::parse(spelling).unwrap_or_else(|e| panic!("{spelling}: {e}"));
      let ip = match url.host().unwrap() {
        deno_core::url::Host::Ipv4(v4) => IpAddr::V4(v4),
        deno_core::url::Host::Ipv6(v6) => IpAddr::V6(v6),
        deno_core::url::Host::Domain(d) => panic!("{spelling} parsed as the name {d}"),
      };
      let port = url.port_or_known_default().unwrap();
      assert!(
        policy.check_ip(ip, port).is_err(),
        "{spelling} ({ip}) is not denied"
      );
    }
    let public = [
      "http://1.1.1.1/",
      "http://8.8.8.8:53/",
      "http://[2606:4700:4700::1111]/",
      "http://100.128.0.1/",
      "http://172.32.0.1/",
      "http://[::ffff:1.1.1.1]/",
      "http://[64:ff9b::808:808]/",
    ];
    for spelling in public {
      let url = deno_core::url::Url::parse(spelling).unwrap();
      let ip = match url.host().unwrap() {
        deno_core::url::Host::Ipv4(v4) => IpAddr::V4(v4),
        deno_core::url::Host::Ipv6(v6) => IpAddr::V6(v6),
        deno_core::url::Host::Domain(d) => panic!("{spelling} parsed as the name {d}"),
      };
      assert_eq!(policy.check_ip(ip, 80), Ok(()), "{spelling} is denied");
    }
  }

  #[test]
  fn allow_entries_open_networks_addresses_ports_and_hosts() {
    let policy = EgressPolicy::default()
      .allow("10.1.2.0/24")
      .unwrap()
      .allow("192.168.1.5:5432")
      .unwrap()
      .allow("[fd00::1]:80")
      .unwrap()
      .allow("DB.Internal.:5432")
      .unwrap()
      .own_sockets(["10.1.2.9:9090".parse().unwrap()]);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(policy.check_ip(ip("10.1.2.3"), 443), Ok(()));
    assert!(policy.check_ip(ip("10.1.3.3"), 443).is_err());
    assert_eq!(policy.check_ip(ip("192.168.1.5"), 5432), Ok(()));
    assert!(policy.check_ip(ip("192.168.1.5"), 22).is_err());
    assert_eq!(policy.check_ip(ip("fd00::1"), 80), Ok(()));
    assert_eq!(policy.check_ip(ip("::ffff:10.1.2.3"), 80), Ok(()));
    // The node's own socket stays denied inside an allowed network.
    let own = policy.check_ip(ip("10.1.2.9"), 9090).unwrap_err();
    assert!(own.contains("own listening"), "{own}");
    assert_eq!(policy.host_verdict("db.internal", Some(5432)), Some(true));
    assert_eq!(policy.host_verdict("db.internal", Some(80)), Some(false));
    assert_eq!(policy.host_verdict("example.com", Some(80)), None);
    let msg = EgressPolicy::default()
      .check_ip(ip("169.254.169.254"), 80)
      .unwrap_err();
    assert!(
      msg.contains("169.254.169.254:80") && msg.contains("link-local") && msg.contains("[egress]"),
      "{msg}"
    );
    assert!(EgressPolicy::allow_all()
      .check_ip(ip("127.0.0.1"), 1)
      .is_ok());
  }

  #[test]
  fn a_worker_list_opens_only_what_it_names() {
    let spec = EgressSpec {
      allow: vec![
        "api.example.com:443".into(),
        "203.0.113.0/24".into(),
        "198.51.100.7:8443".into(),
      ],
    };
    let worker = WorkerEgress::new(&spec).unwrap();
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert_eq!(worker.check_request("api.example.com", None, 443), Ok(()));
    let other_port = worker
      .check_request("API.example.com.", None, 80)
      .unwrap_err();
    assert!(
      other_port.contains("(worker)") && other_port.contains("on other ports only"),
      "{other_port}"
    );
    // Another name may still resolve into 203.0.113.0/24: the resolver decides.
    assert_eq!(worker.check_request("cdn.example.net", None, 443), Ok(()));
    assert!(worker.allows_resolved("cdn.example.net", "203.0.113.9".parse().unwrap()));
    assert!(!worker.allows_resolved("cdn.example.net", "1.1.1.1".parse().unwrap()));
    assert!(worker.allows_resolved("api.example.com", "1.1.1.1".parse().unwrap()));
    assert_eq!(
      worker.check_request("", ip("::ffff:203.0.113.5"), 1),
      Ok(())
    );
    assert_eq!(worker.check_request("", ip("198.51.100.7"), 8443), Ok(()));
    let err = worker
      .check_request("", ip("198.51.100.7"), 443)
      .unwrap_err();
    assert!(
      err.starts_with("fetch() to 198.51.100.7:443 is denied by the egress policy (worker)"),
      "{err}"
    );
    // Without networks, an unlisted name is refused before it is resolved.
    let names_only = WorkerEgress::new(&EgressSpec {
      allow: vec!["api.example.com".into()],
    })
    .unwrap();
    assert!(names_only
      .check_request("cdn.example.net", None, 443)
      .is_err());
    let err = WorkerEgress::new(&EgressSpec {
      allow: vec!["10.0.0.0/40".into()],
    })
    .unwrap_err();
    assert!(err.starts_with("egress.allow[0]: "), "{err}");
  }

  #[test]
  fn bad_allow_entries_say_what_to_write() {
    for bad in [
      "",
      "10.0.0.0/33",
      "db internal",
      "host:port",
      "10.0.0.1:99999",
      "-.-:1a",
    ] {
      let err = EgressPolicy::default().allow(bad).unwrap_err();
      assert!(err.contains("write a network"), "{bad:?}: {err}");
    }
  }
}
