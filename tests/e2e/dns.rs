//! Geo DNS: the control plane answers for routed names with the nearest
//! healthy edge, over real UDP and TCP, placing clients by their ECS subnet
//! with a MaxMind-format database built here and `[[network]]` rules.

use std::io::Read as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::time::Duration;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::RecordType;
use isola_integration::dns_addresses;
use isola_integration::dns_packet;
use isola_integration::dns_query;
use isola_integration::poll;
use isola_integration::Control;
use isola_integration::EdgeSetup;
use serde_json::json;

const EU: &str = "198.51.100.0/24";
const US: &str = "203.0.113.0/24";
/// Placed by a `[[network]]` rule, not the database.
const US_BY_RULE: &str = "192.0.2.0/24";
const EU_EDGE: &str = "127.0.0.2";
const US_EDGE: &str = "127.0.0.3";
/// Generous: failover itself takes interval × fall (0.4 s) here.
const LIMIT: Duration = Duration::from_secs(30);

/// Enrolls an edge listening on `ip` that says it is in `region`.
fn edge(
  control: &Control,
  dir: &std::path::Path,
  name: &str,
  ip: &str,
  region: &str,
  at: [f64; 2],
) -> EdgeSetup {
  let setup = control.enroll(name, &dir.join(name), 200);
  let text = std::fs::read_to_string(&setup.config).unwrap();
  let text = text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{ip}:0\""));
  let text = format!(
    "{text}\n[edge]\nregion = \"{region}\"\nlocation = [{}, {}]\npublic_ipv4 = [\"{ip}\"]\n",
    at[0], at[1]
  );
  std::fs::write(&setup.config, text).unwrap();
  setup
}

fn first(server: SocketAddr, socket: &UdpSocket, subnet: &str) -> Option<IpAddr> {
  let answer = dns_query(
    socket,
    server,
    7,
    "shop.apps.example.",
    RecordType::A,
    Some(subnet),
  )?;
  dns_addresses(&answer).first().copied()
}

fn health_of(control: &Control, edge: &str) -> serde_json::Value {
  let list = control.api("GET", "/v1/edges", None).json();
  list["edges"]
    .as_array()
    .unwrap()
    .iter()
    .find(|e| e["name"] == edge)
    .cloned()
    .unwrap_or_default()
}

#[test]
fn geo_dns_answers_with_the_nearest_healthy_edge() {
  let dir = tempfile::tempdir().unwrap();
  let db = isola_integration::mmdb(&[
    ("198.51.100.0".parse().unwrap(), 24, 48.86, 2.35),
    ("203.0.113.0".parse().unwrap(), 24, 42.36, -71.06),
  ]);
  std::fs::write(dir.path().join("test.mmdb"), db).unwrap();
  let config = isola_integration::write(
    dir.path(),
    "dns.toml",
    &format!(
      "zones = [\"apps.example\"]\nnameservers = [\"ns1.example.net\"]\nttl = 1\nanswers = 1\n\
       geoip_db = \"test.mmdb\"\n[[network]]\ncidr = \"{US_BY_RULE}\"\nregion = \"us-east\"\n\
       [health]\ninterval_ms = 200\nrise = 2\nfall = 2\ngrace_ms = 1000\n"
    ),
  );
  let config_arg = config.display().to_string();
  let mut control = Control::init_and_start_with(
    &dir.path().join("control"),
    &["--dns", "127.0.0.1:0", "--dns-config", &config_arg],
  );
  let server = control.listening("dns");
  let eu = edge(
    &control,
    dir.path(),
    "eu-1",
    EU_EDGE,
    "eu-west",
    [50.11, 8.68],
  );
  let us = edge(
    &control,
    dir.path(),
    "us-1",
    US_EDGE,
    "us-east",
    [40.71, -74.01],
  );
  let mut eu_proc = Some(eu.start());
  let _us_proc = us.start();

  let v1 = control.upload(
    "shop",
    "export default { fetch() { return new Response('shop'); } };\n",
    json!({}),
  );
  control.route("*.apps.example/*", "shop");
  control.deploy("shop", &v1);
  for e in [&eu, &us] {
    assert!(e.wait_for("shop.apps.example", "shop", LIMIT).is_some());
  }
  // Both edges report where they are, and are healthy.
  let healthy = poll(LIMIT, || {
    let (e, u) = (health_of(&control, "eu-1"), health_of(&control, "us-1"));
    (e["health"]["state"] == "healthy" && u["health"]["state"] == "healthy").then_some(e)
  })
  .expect("both edges turn healthy");
  assert_eq!(healthy["region"], "eu-west");
  assert_eq!(healthy["public_ipv4"], json!([EU_EDGE]));
  assert_eq!(healthy["location"], json!([50.11, 8.68]));
  assert_eq!(healthy["http_port"], json!(eu.http().port()));

  let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
  // EU clients get the EU edge, US clients the US edge; the scope is echoed.
  let answer = dns_query(
    &socket,
    server,
    1,
    "shop.apps.example.",
    RecordType::A,
    Some(EU),
  )
  .unwrap();
  assert_eq!(answer.response_code(), ResponseCode::NoError);
  assert!(answer.authoritative());
  assert_eq!(dns_addresses(&answer), [EU_EDGE.parse::<IpAddr>().unwrap()]);
  let Some(EdnsOption::Subnet(echo)) = answer
    .extensions()
    .as_ref()
    .unwrap()
    .option(EdnsCode::Subnet)
  else {
    panic!("the client subnet is not echoed: {answer:?}")
  };
  assert_eq!((echo.source_prefix(), echo.scope_prefix()), (24, 24));
  assert_eq!(first(server, &socket, US), Some(US_EDGE.parse().unwrap()));
  assert_eq!(
    first(server, &socket, US_BY_RULE),
    Some(US_EDGE.parse().unwrap())
  );
  // Names no route covers, and names outside the zone.
  let answer = dns_query(&socket, server, 2, "apps.example.", RecordType::A, None).unwrap();
  assert_eq!(answer.response_code(), ResponseCode::NoError);
  assert!(answer.answers().is_empty() && !answer.name_servers().is_empty());
  let answer = dns_query(&socket, server, 3, "www.example.org.", RecordType::A, None).unwrap();
  assert_eq!(answer.response_code(), ResponseCode::Refused);
  // TCP answers too.
  let packet = dns_packet(4, "shop.apps.example.", RecordType::A, Some(EU));
  let mut tcp = std::net::TcpStream::connect(server).unwrap();
  tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
  let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
  framed.extend_from_slice(&packet);
  tcp.write_all(&framed).unwrap();
  let mut len = [0u8; 2];
  tcp.read_exact(&mut len).unwrap();
  let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
  tcp.read_exact(&mut reply).unwrap();
  let reply = hickory_proto::op::Message::from_vec(&reply).unwrap();
  assert_eq!(dns_addresses(&reply), [EU_EDGE.parse::<IpAddr>().unwrap()]);

  // The EU edge dies: EU clients are sent to the US edge.
  eu_proc.take().unwrap().kill();
  let failover = Instant::now();
  poll(LIMIT, || {
    (first(server, &socket, EU) == Some(US_EDGE.parse().unwrap())).then_some(())
  })
  .expect("the dead EU edge leaves the answers");
  eprintln!("failover: {:?}", failover.elapsed());
  let down = health_of(&control, "eu-1");
  assert_eq!(down["health"]["state"], "down", "{down}");
  assert!(down["health"]["reason"].as_str().is_some(), "{down}");
  // It comes back after `rise` passed checks.
  let _eu_proc = eu.start();
  poll(LIMIT, || {
    (first(server, &socket, EU) == Some(EU_EDGE.parse().unwrap())).then_some(())
  })
  .expect("the EU edge returns to the answers");

  // 10 s of 1,000 queries/s: every one answered, with an address.
  let start = Instant::now();
  for i in 0..10_000u32 {
    let due = start + Duration::from_millis(u64::from(i));
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
      std::thread::sleep(wait);
    }
    let subnet = if i % 2 == 0 { EU } else { US };
    let id = (i % 60_000) as u16;
    let answer = dns_query(
      &socket,
      server,
      id,
      "shop.apps.example.",
      RecordType::A,
      Some(subnet),
    )
    .unwrap_or_else(|| panic!("query {i} got no answer"));
    assert_eq!(answer.response_code(), ResponseCode::NoError, "query {i}");
    assert_eq!(dns_addresses(&answer).len(), 1, "query {i}: {answer:?}");
  }
}
