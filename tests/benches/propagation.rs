//! Deploy propagation: from the deploy call returning to every edge serving
//! the new version, for 1 and 10 edge processes on loopback.
//!
//! ```text
//! cargo build --release -p isola-control -p isola-edge
//! cargo bench -p isola-integration --bench propagation
//! ```
//! `ISOLA_BENCH_DEPLOYS` sets the deploys per fleet size (default 50).

use std::sync::Arc;
use std::sync::Barrier;
use std::time::Duration;
use std::time::Instant;

use isola_integration::Control;
use isola_integration::EdgeSetup;
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
  let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
  sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
  d.as_secs_f64() * 1000.0
}

fn source(i: usize) -> String {
  format!("export default {{ fetch() {{ return new Response('v{i}'); }} }};\n")
}

/// One fleet of `n` edges; returns the propagation time of each deploy.
fn run(n: usize, deploys: usize) -> Vec<Duration> {
  let dir = tempfile::tempdir().expect("a temp dir");
  let control = Control::init_and_start(&dir.path().join("control"));
  let edges: Vec<EdgeSetup> = (0..n)
    .map(|i| {
      control.enroll(
        &format!("edge-{i}"),
        &dir.path().join(format!("e{i}")),
        1000,
      )
    })
    .collect();
  let _procs: Vec<_> = edges.iter().map(EdgeSetup::start).collect();
  // Warm-up deploy, not measured.
  let v = control.upload("bench", &source(0), json!({}));
  control.route("bench.test/*", "bench");
  control.deploy("bench", &v);
  for e in &edges {
    e.wait_for("bench.test", "v0", Duration::from_secs(10))
      .expect("warm-up deploy arrives");
  }

  let mut times = Vec::with_capacity(deploys);
  for i in 1..=deploys {
    let v = control.upload("bench", &source(i), json!({}));
    let want = format!("v{i}");
    // One poller per edge, released together right after the deploy call.
    let start = Arc::new(Barrier::new(n + 1));
    let pollers: Vec<_> = edges
      .iter()
      .cloned()
      .map(|edge| {
        let (start, want) = (start.clone(), want.clone());
        std::thread::spawn(move || {
          start.wait();
          let t0 = Instant::now();
          loop {
            if let Some(r) = edge.get("bench.test", "/") {
              if r.body == want.as_bytes() {
                return t0.elapsed();
              }
            }
            assert!(
              t0.elapsed() < Duration::from_secs(10),
              "deploy {want} never arrived"
            );
            std::thread::sleep(Duration::from_micros(500));
          }
        })
      })
      .collect();
    control.deploy("bench", &v);
    start.wait();
    let slowest = pollers
      .into_iter()
      .map(|p| p.join().expect("poller"))
      .max()
      .expect("at least one edge");
    times.push(slowest);
  }
  times
}

fn main() {
  // `cargo bench` passes `--bench`; a filter argument is not supported.
  let deploys = std::env::var("ISOLA_BENCH_DEPLOYS")
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(50);
  println!("deploy propagation (deploy call returned → every edge serves the new version)");
  println!("| edges | deploys | p50 ms | p99 ms | max ms |");
  println!("|--:|--:|--:|--:|--:|");
  for n in [1, 10] {
    let mut times = run(n, deploys);
    times.sort();
    println!(
      "| {n} | {deploys} | {:.1} | {:.1} | {:.1} |",
      ms(percentile(&times, 0.5)),
      ms(percentile(&times, 0.99)),
      ms(*times.last().expect("some deploys")),
    );
  }
}
