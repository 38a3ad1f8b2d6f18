//! Deploy propagation: from the deploy call returning to every edge serving
//! the new version, for 1 and 10 edge processes on loopback (one control
//! plane on SQLite), and for 50 edges fed by two control-plane replicas on
//! one PostgreSQL (`tests/support/postgres.sh` starts it; skipped without
//! PostgreSQL's server binaries). With replicas, half the edges list A
//! first and half B, and deploys alternate between A and B.
//!
//! ```text
//! cargo build --release -p isola-control -p isola-edge
//! cargo bench -p isola-integration --bench propagation
//! ```
//! `ISOLA_BENCH_DEPLOYS` sets the deploys per fleet size (default 50; the
//! 50-edge fleet does 20 unless it is set).

use std::sync::Arc;
use std::sync::Barrier;
use std::time::Duration;
use std::time::Instant;

use isola_integration::Control;
use isola_integration::EdgeSetup;
use isola_integration::Postgres;
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

/// One fleet of `n` edges fed by `controls` (one, or replicas of one
/// control plane); returns the propagation time of each deploy.
fn run(dir: &std::path::Path, controls: &[Control], n: usize, deploys: usize) -> Vec<Duration> {
  let control = &controls[0];
  let edges: Vec<EdgeSetup> = (0..n)
    .map(|i| {
      // Replicas: each edge starts on another one.
      let mut addresses: Vec<_> = controls.iter().map(|c| c.quic).collect();
      addresses.rotate_left(i % controls.len());
      control.enroll_to(
        &format!("edge-{i}"),
        &dir.join(format!("e{i}")),
        1000,
        &addresses,
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
    controls[i % controls.len()].deploy("bench", &v);
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
  println!("| edges | control plane | deploys | p50 ms | p99 ms | max ms |");
  println!("|--:|---|--:|--:|--:|--:|");
  let report = |n: usize, what: &str, mut times: Vec<Duration>| {
    times.sort();
    println!(
      "| {n} | {what} | {} | {:.1} | {:.1} | {:.1} |",
      times.len(),
      ms(percentile(&times, 0.5)),
      ms(percentile(&times, 0.99)),
      ms(*times.last().expect("some deploys")),
    );
  };
  for n in [1, 10] {
    let dir = tempfile::tempdir().expect("a temp dir");
    let control = Control::init_and_start(&dir.path().join("control"));
    report(n, "1, SQLite", run(dir.path(), &[control], n, deploys));
  }
  let Some(pg) = Postgres::start() else {
    println!("(50 edges, 2 replicas: skipped, no PostgreSQL server binaries)");
    return;
  };
  let dir = tempfile::tempdir().expect("a temp dir");
  let mut a = Control::init_postgres(&dir.path().join("a"), &pg.url());
  a.serve_args = vec![
    "--blobs".into(),
    dir.path().join("blobs").display().to_string(),
  ];
  a.proc.take().expect("started").terminate();
  a.start();
  let b = a.replica(&dir.path().join("b"));
  let deploys = std::env::var("ISOLA_BENCH_DEPLOYS")
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(20);
  report(
    50,
    "2 replicas, PostgreSQL",
    run(dir.path(), &[a, b], 50, deploys),
  );
}
