//! The authoritative server's answers: [`Responder::respond`] turns one
//! query packet into one answer packet (pure, so every rule is unit-tested
//! and fuzzed); the control plane's `dns::server` runs it on UDP and TCP.
//!
//! Built on `hickory-proto`'s wire format rather than on `hickory-server`:
//! that server's authority model wants stored record sets, while every
//! answer here is computed per client; and it sends nothing at all for a
//! query it cannot decode (such as a bogus client-subnet option), where
//! RFC 7871 asks for FORMERR.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::Edns;
use hickory_proto::op::Header;
use hickory_proto::op::Message;
use hickory_proto::op::MessageType;
use hickory_proto::op::OpCode;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::opt::ClientSubnet;
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::AAAA;
use hickory_proto::rr::rdata::NS;
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::DNSClass;
use hickory_proto::rr::Name;
use hickory_proto::rr::RData;
use hickory_proto::rr::Record;
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::BinDecodable;
use hickory_proto::serialize::binary::BinDecoder;

use crate::config::DnsConfig;
use crate::directory::Directory;
use crate::directory::EdgeView;
use crate::geo;
use crate::geo::Client;
use crate::geo::Geo;
use crate::names::Names;
use crate::names::NamesCache;
use crate::Error;

/// Largest UDP answer offered to EDNS clients (the DNS flag day 2020
/// value, which avoids IP fragmentation).
pub const MAX_UDP: u16 = 1232;

/// How the query came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
  Udp,
  Tcp,
}

/// One zone's fixed records.
#[derive(Debug)]
struct Zone {
  apex: String,
  name: Name,
  mname: Name,
  rname: Name,
  ns: Vec<Name>,
}

/// Answers queries from the current names and edges.
#[derive(Debug)]
pub struct Responder {
  config: Arc<DnsConfig>,
  zones: Vec<Zone>,
  geo: Geo,
  edges: Directory,
  names: NamesCache,
}

fn fqdn(name: &str) -> Result<Name, Error> {
  Name::from_ascii(format!("{name}.")).map_err(|e| Error::Config {
    path: "dns.toml".into(),
    message: format!("{name:?} is not a domain name ({e})"),
  })
}

impl Responder {
  pub fn new(
    config: Arc<DnsConfig>,
    geo: Geo,
    edges: Directory,
    names: NamesCache,
  ) -> Result<Self, Error> {
    let ns = config
      .nameservers
      .iter()
      .map(|n| fqdn(n))
      .collect::<Result<Vec<_>, _>>()?;
    let zones = config
      .zones
      .iter()
      .map(|apex| {
        let rname = match &config.hostmaster {
          Some(h) => fqdn(h)?,
          None => fqdn(&format!("hostmaster.{apex}"))?,
        };
        Ok(Zone {
          apex: apex.clone(),
          name: fqdn(apex)?,
          mname: ns[0].clone(),
          rname,
          ns: ns.clone(),
        })
      })
      .collect::<Result<Vec<_>, Error>>()?;
    Ok(Self {
      config,
      zones,
      geo,
      edges,
      names,
    })
  }

  /// The answer to `packet` from `src`; `None` when nothing should be sent
  /// (not a DNS query at all, or a response).
  pub fn respond(&self, packet: &[u8], src: IpAddr, transport: Transport) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
    if header.message_type() == MessageType::Response {
      return None;
    }
    let request = match Message::from_vec(packet) {
      Ok(m) => m,
      Err(_) => return Some(bare(&header, ResponseCode::FormErr)),
    };
    let mut response = Message::new();
    response
      .set_id(request.id())
      .set_message_type(MessageType::Response)
      .set_op_code(request.op_code())
      .set_recursion_desired(request.recursion_desired());
    let limit = match (transport, request.extensions()) {
      (Transport::Tcp, _) => usize::from(u16::MAX),
      (Transport::Udp, Some(edns)) => usize::from(edns.max_payload().clamp(512, MAX_UDP)),
      (Transport::Udp, None) => 512,
    };
    let code = self.fill(&request, src, &mut response);
    response.set_response_code(code);
    Some(encode(response, limit))
  }

  /// Fills in the answer to `request` and returns its response code.
  fn fill(&self, request: &Message, src: IpAddr, response: &mut Message) -> ResponseCode {
    if request.op_code() != OpCode::Query {
      return ResponseCode::NotImp;
    }
    let [query] = request.queries() else {
      return ResponseCode::FormErr;
    };
    response.add_query(query.clone());
    // Where the client is: its subnet if the resolver says, else the
    // resolver itself.
    let mut client_ip = Some(src);
    if let Some(edns) = request.extensions() {
      let mut reply = Edns::new();
      reply.set_max_payload(MAX_UDP);
      if let Some(EdnsOption::Subnet(subnet)) = edns.option(EdnsCode::Subnet) {
        if !subnet_is_valid(subnet) {
          return ResponseCode::FormErr;
        }
        client_ip = (subnet.source_prefix() > 0).then(|| subnet.addr());
        // The whole source prefix decided the answer.
        reply
          .options_mut()
          .insert(EdnsOption::Subnet(ClientSubnet::new(
            subnet.addr(),
            subnet.source_prefix(),
            subnet.source_prefix(),
          )));
      }
      response.set_edns(reply);
    }
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
      return ResponseCode::NotImp;
    }
    match query.query_type() {
      RecordType::AXFR | RecordType::IXFR => return ResponseCode::NotImp,
      RecordType::OPT => return ResponseCode::FormErr,
      _ => {}
    }
    let lower = query.name().to_lowercase().to_ascii();
    let name = lower.trim_end_matches('.');
    let Some(zone) = self.zone_of(name) else {
      return ResponseCode::Refused;
    };
    response.set_authoritative(true);
    let names = self.names.get();
    let apex = name == zone.apex;
    let covered = names.covers(name);
    if !covered && !apex {
      response.add_name_server(self.soa(zone, &names));
      return ResponseCode::NXDomain;
    }
    let ttl = self.config.ttl;
    let qname = query.name().clone();
    let mut answers = Vec::new();
    let qtype = query.query_type();
    if apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
      answers.push(self.soa(zone, &names));
    }
    if apex && matches!(qtype, RecordType::NS | RecordType::ANY) {
      for ns in &zone.ns {
        answers.push(Record::from_rdata(
          qname.clone(),
          ttl,
          RData::NS(NS(ns.clone())),
        ));
      }
    }
    if covered && matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
      let client = client_ip.map(|ip| self.geo.locate(ip)).unwrap_or_default();
      let edges = self.edges.get();
      if matches!(qtype, RecordType::A | RecordType::ANY) {
        for ip in self.pick(&edges, &client, false) {
          if let IpAddr::V4(ip) = ip {
            answers.push(Record::from_rdata(qname.clone(), ttl, RData::A(A(ip))));
          }
        }
      }
      if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
        for ip in self.pick(&edges, &client, true) {
          if let IpAddr::V6(ip) = ip {
            answers.push(Record::from_rdata(
              qname.clone(),
              ttl,
              RData::AAAA(AAAA(ip)),
            ));
          }
        }
      }
    }
    if answers.is_empty() {
      // NODATA: the name exists, not with this type.
      response.add_name_server(self.soa(zone, &names));
    } else {
      response.insert_answers(answers);
    }
    ResponseCode::NoError
  }

  fn zone_of(&self, name: &str) -> Option<&Zone> {
    let apex = self.config.zone_of(name)?;
    self.zones.iter().find(|z| z.apex == apex)
  }

  fn soa(&self, zone: &Zone, names: &Names) -> Record {
    // The revision is the serial: it moves whenever the covered names may
    // have.
    let serial = u32::try_from(names.revision % (1 << 32)).unwrap_or(0);
    Record::from_rdata(
      zone.name.clone(),
      self.config.ttl,
      RData::SOA(SOA::new(
        zone.mname.clone(),
        zone.rname.clone(),
        serial,
        3600,
        600,
        1_209_600,
        self.config.ttl,
      )),
    )
  }

  /// The addresses of one family to answer with: the `answers` nearest
  /// healthy edges, or, when none of the edges with such addresses is
  /// healthy, all of them (never an empty answer while any edge exists).
  fn pick(&self, edges: &[EdgeView], client: &Client, v6: bool) -> Vec<IpAddr> {
    let has = |e: &&EdgeView| {
      if v6 {
        !e.site.public_ipv6.is_empty()
      } else {
        !e.site.public_ipv4.is_empty()
      }
    };
    let candidates: Vec<&EdgeView> = edges.iter().filter(has).collect();
    let healthy: Vec<&EdgeView> = candidates
      .iter()
      .copied()
      .filter(|e| e.status.is_healthy())
      .collect();
    let fallback = healthy.is_empty();
    let mut pool = if fallback { candidates } else { healthy };
    geo::rank(client, &mut pool, |e| geo::Place {
      name: &e.name,
      region: e.site.region.as_deref(),
      location: e.site.location,
    });
    if !fallback {
      pool.truncate(self.config.answers);
    }
    pool
      .into_iter()
      .flat_map(|e| {
        let all: Vec<IpAddr> = if v6 {
          e.site.public_ipv6.iter().map(|&a| IpAddr::V6(a)).collect()
        } else {
          e.site.public_ipv4.iter().map(|&a| IpAddr::V4(a)).collect()
        };
        all
      })
      .collect()
  }
}

/// RFC 7871 §6: the prefix fits the family and no address bit past it is
/// set. (A prefix longer than the family's address does not even decode.)
fn subnet_is_valid(subnet: &ClientSubnet) -> bool {
  let prefix = u32::from(subnet.source_prefix());
  match subnet.addr() {
    IpAddr::V4(ip) => prefix <= 32 && u32::from(ip).checked_shl(prefix).unwrap_or(0) == 0,
    IpAddr::V6(ip) => prefix <= 128 && u128::from(ip).checked_shl(prefix).unwrap_or(0) == 0,
  }
}

/// A response with only a header: for queries that could not be read.
fn bare(request: &Header, code: ResponseCode) -> Vec<u8> {
  let mut response = Message::new();
  response
    .set_id(request.id())
    .set_message_type(MessageType::Response)
    .set_op_code(request.op_code())
    .set_recursion_desired(request.recursion_desired())
    .set_response_code(code);
  response.to_vec().unwrap_or_default()
}

/// `response` on the wire; over `limit` bytes, its records are dropped and
/// TC set, so the client asks again over TCP.
fn encode(mut response: Message, limit: usize) -> Vec<u8> {
  match response.to_vec() {
    Ok(bytes) if bytes.len() <= limit => return bytes,
    Ok(_) => {}
    Err(e) => {
      tracing::warn!(error = %e, "cannot encode a DNS answer");
      let id = response.id();
      let mut fail = Message::error_msg(id, response.op_code(), ResponseCode::ServFail);
      fail.set_message_type(MessageType::Response);
      return fail.to_vec().unwrap_or_default();
    }
  }
  response.take_answers();
  response.take_name_servers();
  response.take_additionals();
  response.set_truncated(true);
  response.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
  use std::net::Ipv4Addr;
  use std::net::Ipv6Addr;

  use isola_proto::msg::EdgeSite;
  use isola_proto::msg::Route;

  use hickory_proto::op::Query;

  use super::*;
  use crate::directory::Status;

  /// A query as a resolver sends it.
  fn query(id: u16, name: &str, qtype: RecordType, subnet: Option<ClientSubnet>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
      .set_message_type(MessageType::Query)
      .set_op_code(OpCode::Query)
      .set_recursion_desired(false);
    m.add_query(Query::query(
      Name::from_ascii(name).expect("a valid name"),
      qtype,
    ));
    if let Some(subnet) = subnet {
      let mut edns = Edns::new();
      edns.set_max_payload(MAX_UDP);
      edns.options_mut().insert(EdnsOption::Subnet(subnet));
      m.set_edns(edns);
    }
    m.to_vec().expect("a query encodes")
  }

  fn edge(name: &str, region: &str, location: [f64; 2], v4: &str, healthy: bool) -> EdgeView {
    EdgeView {
      name: name.into(),
      site: EdgeSite {
        region: Some(region.into()),
        location: Some(location),
        public_ipv4: vec![v4.parse().unwrap()],
        public_ipv6: vec![],
        http_port: Some(80),
      },
      status: if healthy {
        Status::Healthy
      } else {
        Status::Down {
          reason: "test".into(),
        }
      },
    }
  }

  fn responder(edges: Vec<EdgeView>, answers: usize) -> Responder {
    let config = DnsConfig::parse(&format!(
      "zones = [\"apps.example\"]\nnameservers = [\"ns1.example.net\"]\nanswers = {answers}\n\
       [[network]]\ncidr = \"198.51.100.0/24\"\nregion = \"eu-west\"\n\
       [[network]]\ncidr = \"203.0.113.0/24\"\nregion = \"us-east\"\n"
    ))
    .unwrap();
    let geo = Geo::new(config.networks.clone(), None).unwrap();
    let directory = Directory::default();
    directory.set(edges);
    let names = NamesCache::default();
    names.set(Names::from_routes(
      7,
      &[Route {
        pattern: "*.apps.example/*".into(),
        worker: "w".into(),
      }],
    ));
    Responder::new(Arc::new(config), geo, directory, names).unwrap()
  }

  fn two_edges() -> Vec<EdgeView> {
    vec![
      edge("eu", "eu-west", [50.1, 8.7], "127.0.0.2", true),
      edge("us", "us-east", [40.7, -74.0], "127.0.0.3", true),
    ]
  }

  const RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53));

  fn ask(r: &Responder, packet: &[u8]) -> Message {
    Message::from_vec(&r.respond(packet, RESOLVER, Transport::Udp).unwrap()).unwrap()
  }

  fn a_records(m: &Message) -> Vec<String> {
    m.answers()
      .iter()
      .filter_map(|r| match r.data() {
        RData::A(a) => Some(a.0.to_string()),
        _ => None,
      })
      .collect()
  }

  fn subnet(s: &str) -> Option<ClientSubnet> {
    Some(s.parse().unwrap())
  }

  #[test]
  fn the_client_subnet_picks_the_nearest_edge_and_is_echoed_with_its_scope() {
    let r = responder(two_edges(), 1);
    let m = ask(
      &r,
      &query(
        1,
        "shop.apps.example.",
        RecordType::A,
        subnet("198.51.100.0/24"),
      ),
    );
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    assert_eq!(a_records(&m), ["127.0.0.2"]);
    assert_eq!(m.answers()[0].ttl(), 30);
    let Some(EdnsOption::Subnet(echo)) = m.extensions().as_ref().unwrap().option(EdnsCode::Subnet)
    else {
      panic!("no ECS echo")
    };
    assert_eq!(
      (echo.addr(), echo.source_prefix(), echo.scope_prefix()),
      ("198.51.100.0".parse().unwrap(), 24, 24)
    );
    let m = ask(
      &r,
      &query(
        2,
        "Shop.Apps.Example.",
        RecordType::A,
        subnet("203.0.113.0/24"),
      ),
    );
    assert_eq!(a_records(&m), ["127.0.0.3"]);
    // Without ECS the resolver's address decides: unknown, the stable order.
    let m = ask(&r, &query(3, "shop.apps.example.", RecordType::A, None));
    assert_eq!(a_records(&m), ["127.0.0.2"]);
    assert!(m.extensions().is_none());
  }

  #[test]
  fn down_edges_leave_answers_and_all_down_answers_with_all() {
    let mut edges = two_edges();
    edges[0].status = Status::Down {
      reason: "test".into(),
    };
    let r = responder(edges, 2);
    let m = ask(
      &r,
      &query(
        1,
        "a.apps.example.",
        RecordType::A,
        subnet("198.51.100.0/24"),
      ),
    );
    assert_eq!(a_records(&m), ["127.0.0.3"]);
    let mut edges = two_edges();
    for e in &mut edges {
      e.status = Status::Down {
        reason: "test".into(),
      };
    }
    let r = responder(edges, 1);
    let m = ask(
      &r,
      &query(
        1,
        "a.apps.example.",
        RecordType::A,
        subnet("203.0.113.0/24"),
      ),
    );
    assert_eq!(a_records(&m), ["127.0.0.3", "127.0.0.2"]);
  }

  #[test]
  fn negative_answers_carry_the_soa_and_foreign_names_are_refused() {
    let r = responder(two_edges(), 2);
    // Not covered by any route.
    let m = ask(&r, &query(1, "apps.example.", RecordType::A, None));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    let m = ask(&r, &query(1, "a.b.other.example.", RecordType::A, None));
    assert_eq!(m.response_code(), ResponseCode::Refused);
    assert!(!m.authoritative());
    let m = ask(&r, &query(1, "x.apps.example.", RecordType::AAAA, None));
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    let RData::SOA(soa) = m.name_servers()[0].data() else {
      panic!("no SOA")
    };
    assert_eq!((soa.serial(), soa.minimum()), (7, 30));
    let m = ask(&r, &query(1, "apps.example.", RecordType::SOA, None));
    assert_eq!(m.answers().len(), 1);
    let m = ask(&r, &query(1, "apps.example.", RecordType::NS, None));
    assert_eq!(m.answers().len(), 1);
    let r = responder(two_edges(), 2);
    let mut names_only_shop = Names::from_routes(
      8,
      &[Route {
        pattern: "shop.apps.example/*".into(),
        worker: "w".into(),
      }],
    );
    names_only_shop.revision = 8;
    r.names.set(names_only_shop);
    let m = ask(&r, &query(1, "nope.apps.example.", RecordType::A, None));
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(matches!(m.name_servers()[0].data(), RData::SOA(_)));
  }

  #[test]
  fn bad_queries_get_formerr_or_notimp_and_garbage_gets_nothing() {
    let r = responder(two_edges(), 2);
    assert!(r.respond(b"short", RESOLVER, Transport::Udp).is_none());
    // A header and then garbage.
    let mut junk = query(9, "a.apps.example.", RecordType::A, None);
    junk.truncate(15);
    let m = ask(&r, &junk);
    assert_eq!((m.id(), m.response_code()), (9, ResponseCode::FormErr));
    // ECS with prefix 33 for IPv4 (RFC 7871 §7.1.1: FORMERR).
    let mut bogus = query(
      4,
      "a.apps.example.",
      RecordType::A,
      subnet("198.51.100.0/24"),
    );
    let at = bogus.len() - 5; // FAMILY(2) SOURCE(1) SCOPE(1) ADDRESS(3)
    assert_eq!(bogus[at - 2..at + 1], [0, 1, 24]);
    bogus[at] = 33;
    let m = ask(&r, &bogus);
    assert_eq!((m.id(), m.response_code()), (4, ResponseCode::FormErr));
    // Address bits past the prefix (100 = 0b0110_0100 has bits past /20).
    let past = ClientSubnet::new("198.51.100.0".parse().unwrap(), 20, 0);
    let m = ask(&r, &query(5, "a.apps.example.", RecordType::A, Some(past)));
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    // Another opcode, another class, a zone transfer.
    let mut notify = Message::from_vec(&query(6, "a.apps.example.", RecordType::A, None)).unwrap();
    notify.set_op_code(OpCode::Notify);
    let m = ask(&r, &notify.to_vec().unwrap());
    assert_eq!(m.response_code(), ResponseCode::NotImp);
    let mut chaos = Message::from_vec(&query(7, "a.apps.example.", RecordType::A, None)).unwrap();
    chaos.queries_mut()[0].set_query_class(DNSClass::CH);
    assert_eq!(
      ask(&r, &chaos.to_vec().unwrap()).response_code(),
      ResponseCode::NotImp
    );
    let axfr = query(8, "apps.example.", RecordType::AXFR, None);
    assert_eq!(ask(&r, &axfr).response_code(), ResponseCode::NotImp);
    // A response is never answered (no reflection loops).
    let mut reply = Message::from_vec(&query(9, "a.apps.example.", RecordType::A, None)).unwrap();
    reply.set_message_type(MessageType::Response);
    assert!(r
      .respond(&reply.to_vec().unwrap(), RESOLVER, Transport::Udp)
      .is_none());
    // And it still answers.
    assert_eq!(
      a_records(&ask(&r, &query(10, "a.apps.example.", RecordType::A, None))).len(),
      2
    );
  }

  #[test]
  fn large_answers_are_truncated_on_udp_only() {
    let edges = (0..40)
      .map(|i| {
        let mut e = edge(
          &format!("e{i:02}"),
          "eu-west",
          [50.0, 8.0],
          "127.0.0.2",
          true,
        );
        e.site.public_ipv6 = vec![Ipv6Addr::from(0x2001_0db8_u128 << 96 | i)];
        e
      })
      .collect();
    let r = responder(edges, 40);
    let packet = query(1, "a.apps.example.", RecordType::AAAA, None);
    let udp = r.respond(&packet, RESOLVER, Transport::Udp).unwrap();
    assert!(udp.len() <= 512);
    let m = Message::from_vec(&udp).unwrap();
    assert!(m.truncated() && m.answers().is_empty());
    let tcp = Message::from_vec(&r.respond(&packet, RESOLVER, Transport::Tcp).unwrap()).unwrap();
    assert!(!tcp.truncated());
    assert_eq!(tcp.answers().len(), 40);
  }
}
