//! Geo DNS: queries/s and latency of the control plane's DNS server over
//! UDP from one client socket with a window of queries in flight, and
//! failover time (an edge killed → no longer in answers). Two edges on
//! 127.0.0.2 / 127.0.0.3.
//!
//! ```text
//! cargo build --release -p isola-control -p isola-edge
//! cargo bench -p isola-integration --bench dns
//! ```

use std::net::IpAddr;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use hickory_proto::rr::RecordType;
use isola_integration::dns_addresses;
use isola_integration::dns_packet;
use isola_integration::dns_query;
use isola_integration::Control;
use isola_integration::EdgeSetup;
use serde_json::json;

const EU: &str = "198.51.100.0/24";
const US: &str = "203.0.113.0/24";
const QUERIES: usize = 200_000;
const WINDOW: usize = 32;
const INTERVAL_MS: u64 = 200;
const FALL: u32 = 2;

fn edge(control: &Control, dir: &std::path::Path, name: &str, ip: &str, region: &str) -> EdgeSetup {
  let setup = control.enroll(name, &dir.join(name), 1000);
  let text = std::fs::read_to_string(&setup.config).unwrap();
  let text = text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{ip}:0\""));
  std::fs::write(
    &setup.config,
    format!("{text}\n[edge]\nregion = \"{region}\"\npublic_ipv4 = [\"{ip}\"]\n"),
  )
  .unwrap();
  setup
}

/// Keeps `WINDOW` queries in flight on one socket; returns the latencies
/// (µs) and how long the run took. A query lost for 1 s counts as lost.
fn load(server: SocketAddr) -> (Vec<f64>, Duration, usize) {
  let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
  socket.connect(server).unwrap();
  socket
    .set_read_timeout(Some(Duration::from_secs(1)))
    .unwrap();
  let packets = [
    dns_packet(0, "shop.apps.example.", RecordType::A, Some(EU)),
    dns_packet(0, "shop.apps.example.", RecordType::A, Some(US)),
  ];
  let origin = Instant::now();
  let sent: Arc<Vec<AtomicU64>> = Arc::new((0..65536).map(|_| AtomicU64::new(0)).collect());
  let (credit_tx, credit_rx) = std::sync::mpsc::sync_channel::<()>(WINDOW);
  for _ in 0..WINDOW {
    credit_tx.send(()).unwrap();
  }
  let sender = {
    let (socket, sent) = (socket.try_clone().unwrap(), sent.clone());
    std::thread::spawn(move || {
      for i in 0..QUERIES {
        if credit_rx.recv().is_err() {
          return;
        }
        let id = (i % 65536) as u16;
        let mut packet = packets[i % 2].clone();
        packet[..2].copy_from_slice(&id.to_be_bytes());
        sent[usize::from(id)].store(origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
        socket.send(&packet).unwrap();
      }
    })
  };
  let mut latencies = Vec::with_capacity(QUERIES);
  let mut lost = 0;
  let mut buf = [0u8; 1500];
  while latencies.len() + lost < QUERIES {
    match socket.recv(&mut buf) {
      Ok(len) if len >= 12 => {
        let id = u16::from_be_bytes([buf[0], buf[1]]);
        assert_eq!(buf[3] & 0x0f, 0, "an error answer");
        let at = sent[usize::from(id)].load(Ordering::Relaxed);
        latencies.push((origin.elapsed().as_nanos() as u64 - at) as f64 / 1000.0);
      }
      Ok(_) => panic!("a short answer"),
      Err(_) => lost += 1,
    }
    let _ = credit_tx.try_send(());
  }
  drop(credit_tx);
  sender.join().unwrap();
  (latencies, origin.elapsed(), lost)
}

fn first(server: SocketAddr, socket: &UdpSocket, id: u16) -> Option<IpAddr> {
  let answer = dns_query(
    socket,
    server,
    id,
    "shop.apps.example.",
    RecordType::A,
    Some(EU),
  )?;
  dns_addresses(&answer).first().copied()
}

fn main() {
  let dir = tempfile::tempdir().unwrap();
  let db = isola_integration::mmdb(&[
    ("198.51.100.0".parse().unwrap(), 24, 48.86, 2.35),
    ("203.0.113.0".parse().unwrap(), 24, 42.36, -71.06),
  ]);
  std::fs::write(dir.path().join("b.mmdb"), db).unwrap();
  let config = isola_integration::write(
    dir.path(),
    "dns.toml",
    &format!(
      "zones = [\"apps.example\"]\nnameservers = [\"ns1.example.net\"]\nanswers = 1\n\
       geoip_db = \"b.mmdb\"\n[health]\ninterval_ms = {INTERVAL_MS}\nrise = 2\nfall = {FALL}\n"
    ),
  );
  let config_arg = config.display().to_string();
  let mut control = Control::init_and_start_with(
    &dir.path().join("control"),
    &["--dns", "127.0.0.1:0", "--dns-config", &config_arg],
  );
  let server = control.listening("dns");
  let eu = edge(&control, dir.path(), "eu-1", "127.0.0.2", "eu-west");
  let us = edge(&control, dir.path(), "us-1", "127.0.0.3", "us-east");
  let eu_proc = eu.start();
  let _us_proc = us.start();
  let v = control.upload(
    "shop",
    "export default { fetch() { return new Response('shop'); } };\n",
    json!({}),
  );
  control.route("*.apps.example/*", "shop");
  control.deploy("shop", &v);
  let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
  let eu_ip: IpAddr = "127.0.0.2".parse().unwrap();
  isola_integration::poll(Duration::from_secs(30), || {
    (first(server, &socket, 1) == Some(eu_ip)).then_some(())
  })
  .expect("the EU edge is answered");

  // Warm up, then measure.
  let _ = load(server);
  let (mut latencies, took, lost) = load(server);
  latencies.sort_by(|a, b| a.total_cmp(b));
  let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
  println!(
    "UDP, one socket, {WINDOW} in flight, {QUERIES} queries: {:.0} queries/s; latency p50 {:.0} µs, \
     p99 {:.0} µs, max {:.0} µs; lost {lost}",
    latencies.len() as f64 / took.as_secs_f64(),
    p(0.5),
    p(0.99),
    p(1.0)
  );

  // Failover: the EU edge is killed; time until EU clients are answered
  // with another edge.
  let mut times = Vec::new();
  let mut eu_proc = Some(eu_proc);
  for round in 0..3 {
    eu_proc.take().expect("running").kill();
    let killed = Instant::now();
    let mut id = 100;
    while first(server, &socket, id) == Some(eu_ip) {
      id = id.wrapping_add(1);
      std::thread::sleep(Duration::from_millis(2));
      assert!(killed.elapsed() < Duration::from_secs(60), "no failover");
    }
    times.push(killed.elapsed());
    eu_proc = Some(eu.start());
    isola_integration::poll(Duration::from_secs(30), || {
      (first(server, &socket, 2) == Some(eu_ip)).then_some(())
    })
    .unwrap_or_else(|| panic!("round {round}: the EU edge does not return"));
  }
  println!(
    "failover (edge killed → no longer answered), interval {INTERVAL_MS} ms × fall {FALL}: {:?}",
    times
  );
}
