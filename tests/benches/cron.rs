//! Cron tick delay: from a tick's nominal time to its `scheduled` handler
//! starting on an edge, over a test clock 600 times faster than real time
//! (a tick every 100 ms), one control plane and one edge on loopback.
//!
//! ```text
//! cargo build --release -p isola-control -p isola-edge
//! cargo bench -p isola-integration --bench cron
//! ```
//! `ISOLA_BENCH_TICKS` sets how many ticks to measure (default 150).

use std::time::Duration;
use std::time::SystemTime;

use isola_integration::Control;
use serde_json::json;

const SCALE: i64 = 600;

fn main() {
  let ticks: usize = std::env::var("ISOLA_BENCH_TICKS")
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(150);
  let origin = SystemTime::now()
    .duration_since(SystemTime::UNIX_EPOCH)
    .unwrap()
    .as_millis() as i64;
  let dir = tempfile::tempdir().expect("a temp dir");
  let clock = format!("{origin}:{SCALE}");
  let control =
    Control::init_and_start_with(&dir.path().join("control"), &["--test-clock", &clock]);
  let edge = control.enroll("edge-0", &dir.path().join("e0"), 1000);
  let mut proc = edge.start();
  // The handler logs the real time it started and the tick's nominal time.
  let source = "export default {\n  scheduled(c) {\n    \
                console.log(`tick ${c.scheduledTime} ${Date.now()}`);\n  },\n};\n";
  let v = control.upload("ticker", source, json!({}));
  control.deploy("ticker", &v);
  let r = control.api(
    "PUT",
    "/v1/workers/ticker/schedules",
    Some(json!({ "crons": ["* * * * *"] })),
  );
  assert_eq!(r.status, 200, "{}", r.text());
  // Warm-up ticks (the first loads the isolate), then the measured ones.
  std::thread::sleep(Duration::from_millis(100 * (ticks as u64 + 20)));
  let output = proc.output();
  let mut delays: Vec<f64> = output
    .lines()
    .filter_map(|l| {
      let rest = &l[l.find("tick ")? + 5..];
      let mut parts = rest.split_whitespace();
      let nominal: i64 = parts.next()?.parse().ok()?;
      let started: i64 = parts.next()?.parse().ok()?;
      // The nominal time in real time: the clock reads `origin` at
      // `origin` and runs SCALE times faster.
      let due = origin as f64 + (nominal - origin) as f64 / SCALE as f64;
      Some(started as f64 - due)
    })
    .skip(10)
    .collect();
  let runs = control
    .api("GET", "/v1/workers/ticker/schedules/runs", None)
    .json();
  let outcomes: Vec<&str> = runs["runs"]
    .as_array()
    .unwrap()
    .iter()
    .map(|r| r["outcome"].as_str().unwrap_or(""))
    .collect();
  let ok = outcomes.iter().filter(|o| **o == "ok").count();
  assert!(
    delays.len() >= 100,
    "only {} ticks measured:\n{output}",
    delays.len()
  );
  delays.sort_by(|a, b| a.total_cmp(b));
  let p = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
  println!(
    "cron tick → handler start, {} ticks: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
     (last 100 runs: {ok} ok, {} other)",
    delays.len(),
    p(0.5),
    p(0.99),
    p(1.0),
    outcomes.len() - ok
  );
}
