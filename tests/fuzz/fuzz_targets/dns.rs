//! A DNS packet from arbitrary bytes, answered as the geo DNS server does
//! (`isola_dns::Responder`) for a fixed zone, routes and edges. The first
//! byte picks the transport and the client's address, the rest is the
//! query. Answering never panics; an answer always parses, carries the
//! query's id, and over UDP fits the size the query allows (512 bytes, or
//! its EDNS payload size up to 1232).
#![no_main]

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::OnceLock;

use hickory_proto::op::Message;
use isola_dns::directory::EdgeView;
use isola_dns::directory::Status;
use isola_dns::geo::Geo;
use isola_dns::responder::MAX_UDP;
use isola_dns::Directory;
use isola_dns::DnsConfig;
use isola_dns::Names;
use isola_dns::NamesCache;
use isola_dns::Responder;
use isola_dns::Transport;
use isola_proto::msg::EdgeSite;
use isola_proto::msg::Route;
use libfuzzer_sys::fuzz_target;

fn responder() -> &'static Responder {
  static R: OnceLock<Responder> = OnceLock::new();
  R.get_or_init(|| {
    let config = DnsConfig::parse(
      "zones = [\"apps.example\", \"example.org\"]\n\
       nameservers = [\"ns1.example.net\", \"ns2.example.net\"]\n\
       answers = 2\n\
       [[network]]\ncidr = \"198.51.100.0/24\"\nregion = \"eu-west\"\n\
       [[network]]\ncidr = \"2001:db8::/32\"\nlocation = [40.7, -74.0]\n",
    )
    .expect("the fixed dns.toml parses");
    let geo = Geo::new(config.networks.clone(), None).expect("no database");
    let edge = |name: &str, region: &str, location, n: u8, healthy: bool| EdgeView {
      name: name.into(),
      site: EdgeSite {
        region: Some(region.into()),
        location: Some(location),
        public_ipv4: (0..n).map(|i| Ipv4Addr::new(192, 0, 2, i + 1)).collect(),
        public_ipv6: (0..n)
          .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i) + 1))
          .collect(),
        http_port: Some(80),
      },
      status: if healthy {
        Status::Healthy
      } else {
        Status::Down {
          reason: "fuzz".into(),
        }
      },
    };
    let directory = Directory::default();
    // Enough addresses that an answer can outgrow 512 bytes.
    directory.set(vec![
      edge("fra", "eu-west", [50.1, 8.7], 40, true),
      edge("nyc", "us-east", [40.7, -74.0], 3, true),
      edge("syd", "ap-south", [-33.9, 151.2], 2, false),
    ]);
    let names = NamesCache::default();
    let route = |pattern: &str| Route {
      pattern: pattern.into(),
      worker: "w".into(),
    };
    names.set(Names::from_routes(
      1,
      &[
        route("*.apps.example/*"),
        route("shop.example.org/*"),
        route("*api.example.org/v1/*"),
      ],
    ));
    Responder::new(Arc::new(config), geo, directory, names).expect("the responder starts")
  })
}

fuzz_target!(|data: &[u8]| {
  let Some((&pick, packet)) = data.split_first() else {
    return;
  };
  let transport = if pick & 1 == 0 {
    Transport::Udp
  } else {
    Transport::Tcp
  };
  let src = match (pick >> 1) & 3 {
    0 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
    1 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
    2 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
    _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
  };
  let Some(answer) = responder().respond(packet, src, transport) else {
    return;
  };
  let parsed = Message::from_vec(&answer)
    .unwrap_or_else(|e| panic!("the answer does not parse ({e}): {answer:02x?}"));
  assert!(packet.len() >= 2, "an answer to a packet without an id");
  assert_eq!(
    parsed.id(),
    u16::from_be_bytes([packet[0], packet[1]]),
    "the answer carries the query's id"
  );
  if transport == Transport::Udp {
    let allowed = match Message::from_vec(packet)
      .ok()
      .and_then(|q| q.extensions().as_ref().map(|e| e.max_payload()))
    {
      Some(size) => usize::from(size.clamp(512, MAX_UDP)),
      None => 512,
    };
    assert!(
      answer.len() <= allowed,
      "a UDP answer of {} bytes where {allowed} are allowed",
      answer.len()
    );
  }
});
