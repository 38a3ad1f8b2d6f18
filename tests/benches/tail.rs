//! Tail delay: from an invocation's start on an edge (its event's
//! `eventTimestamp`) to the event arriving on a live tail of the control
//! plane, one edge on loopback.
//!
//! ```text
//! cargo build --release -p isola-control -p isola-edge
//! cargo bench -p isola-integration --bench tail
//! ```

use std::time::Duration;
use std::time::SystemTime;

use isola_integration::Control;
use isola_integration::TailClient;
use serde_json::json;

fn main() {
  let dir = tempfile::tempdir().unwrap();
  let control = Control::init_and_start(&dir.path().join("control"));
  let edge = control.enroll("edge-0", &dir.path().join("e0"), 1000);
  let _proc = edge.start();
  let v = control.upload(
    "tailed",
    "export default { fetch() { console.log('hi'); return new Response('ok'); } };\n",
    json!({}),
  );
  control.route("t.test/*", "tailed");
  control.deploy("tailed", &v);
  edge
    .wait_for("t.test", "ok", Duration::from_secs(10))
    .expect("deployed");
  let mut tail = TailClient::open(&control, "tailed", "");
  let n = 300;
  let mut delays = Vec::with_capacity(n);
  for _ in 0..n {
    edge.get("t.test", "/").expect("the edge answers");
    let event = tail.next_event().expect("an event");
    let now = SystemTime::now()
      .duration_since(SystemTime::UNIX_EPOCH)
      .unwrap()
      .as_secs_f64()
      * 1000.0;
    delays.push(now - event["eventTimestamp"].as_f64().expect("a timestamp"));
    std::thread::sleep(Duration::from_millis(10));
  }
  delays.sort_by(|a, b| a.total_cmp(b));
  let p = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
  println!(
    "invocation start → event on the tail, {n} requests: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
    p(0.5),
    p(0.99),
    p(1.0)
  );
}
