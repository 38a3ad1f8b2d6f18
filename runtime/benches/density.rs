//! Node-level figures: memory per idle worker isolate, first-request latency
//! to an unseen worker, and how far a busy loop overruns its CPU limit.
//!
//! `cargo bench -p isola-runtime --bench density` (set `DENSITY_MAX=1000`,
//! the default, for the 1,000-worker figure). Prints a markdown table.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use isola_runtime::Bundle;
use isola_runtime::Config;
use isola_runtime::InvocationRecord;
use isola_runtime::Limits;
use isola_runtime::MeterSink;
use isola_runtime::Runtime;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;

const HELLO: &str = r#"export default { fetch() { return new Response("Hello, world!"); } };"#;
const SPIN: &str = r#"export default { fetch() { for (;;) {} } };"#;

fn rss() -> u64 {
  let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
  statm
    .split_whitespace()
    .nth(1)
    .unwrap()
    .parse::<u64>()
    .unwrap()
    * 4096
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
  let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
  sorted[i]
}

async fn hit(rt: &Runtime, name: &str, code: &'static str, limits: Limits) -> u16 {
  let key = WorkerKey::new(name.to_string(), "v1");
  let config = WorkerConfig::new(name).limits(limits);
  let source = move || {
    Bundle::from_modules(
      "worker.js",
      [("worker.js".to_string(), Bytes::from_static(code.as_bytes()))],
    )
    .map(|b| (b, config))
  };
  let req = isola_runtime::empty_request("http://bench.test/");
  match rt.fetch(&key, source, req).await {
    Ok(r) => {
      let status = r.status().as_u16();
      let _ = r.into_body().collect_bytes().await;
      status
    }
    Err(e) => isola_runtime::error_response(&e).status().as_u16(),
  }
}

async fn wait_for(mut f: impl FnMut() -> bool) {
  let start = Instant::now();
  while !f() && start.elapsed() < Duration::from_secs(30) {
    tokio::time::sleep(Duration::from_millis(2)).await;
  }
}

async fn density(max: usize) -> Vec<(usize, f64)> {
  let rt = Runtime::new(Config::default().threads(1).stock(0).max_isolates(max + 10)).unwrap();
  // One worker first, so that V8's process-wide setup is not counted.
  hit(&rt, "warmup", HELLO, Limits::default()).await;
  let base = rss();
  let mut out = Vec::new();
  let mut loaded = 0;
  for target in [100, max] {
    while loaded < target {
      hit(&rt, &format!("tenant-{loaded}"), HELLO, Limits::default()).await;
      loaded += 1;
    }
    let per = (rss() - base) as f64 / loaded as f64 / (1 << 20) as f64;
    out.push((loaded, per));
  }
  out
}

async fn first_request(stock: usize, n: usize) -> (f64, f64) {
  let rt = Runtime::new(Config::default().threads(1).stock(stock).max_isolates(100)).unwrap();
  hit(&rt, "warmup", HELLO, Limits::default()).await;
  let mut times = Vec::with_capacity(n);
  for i in 0..n {
    // A warm node: the stock has had time to refill since the last arrival.
    wait_for(|| rt.stats().stock >= stock).await;
    let start = Instant::now();
    assert_eq!(
      hit(
        &rt,
        &format!("unseen-{stock}-{i}"),
        HELLO,
        Limits::default()
      )
      .await,
      200
    );
    times.push(start.elapsed().as_secs_f64() * 1000.0);
  }
  times.sort_by(f64::total_cmp);
  (percentile(&times, 0.5), percentile(&times, 0.99))
}

async fn cpu_overshoot(n: usize) -> (f64, f64, f64) {
  let records: Arc<Mutex<Vec<InvocationRecord>>> = Arc::default();
  let sink = {
    let records = records.clone();
    MeterSink::new(move |r| records.lock().unwrap().push(r))
  };
  let rt = Runtime::new(Config::default().threads(1).meter(sink)).unwrap();
  let limits = Limits::default().cpu(Duration::from_millis(50));
  let mut walls = Vec::new();
  for i in 0..n {
    let start = Instant::now();
    assert_eq!(
      hit(&rt, &format!("spin-{i}"), SPIN, limits.clone()).await,
      503
    );
    walls.push(start.elapsed().as_secs_f64() * 1000.0);
  }
  wait_for(|| records.lock().unwrap().len() >= n).await;
  let mut over: Vec<f64> = records
    .lock()
    .unwrap()
    .iter()
    .map(|r| r.cpu_us as f64 / 1000.0 - 50.0)
    .collect();
  over.sort_by(f64::total_cmp);
  walls.sort_by(f64::total_cmp);
  (
    percentile(&over, 0.5),
    *over.last().unwrap(),
    percentile(&walls, 0.5),
  )
}

fn main() {
  // `cargo bench` passes --bench; `cargo test --benches` runs a quick pass.
  let quick = !std::env::args().any(|a| a == "--bench");
  let max: usize = std::env::var("DENSITY_MAX")
    .ok()
    .and_then(|v| v.parse().ok())
    .unwrap_or(if quick { 120 } else { 1000 });
  let samples = if quick { 10 } else { 200 };
  let rt = tokio::runtime::Builder::new_multi_thread()
    .worker_threads(1)
    .enable_all()
    .build()
    .unwrap();
  rt.block_on(async {
    println!("| figure | value |\n|---|---|");
    for (n, per) in density(max).await {
      println!("| RSS per idle worker isolate, {n} workers | {per:.2} MiB |");
    }
    let (p50, p99) = first_request(2, samples).await;
    println!("| first request to an unseen worker, ready-isolate stock: p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
    let (p50, p99) = first_request(0, samples.min(50)).await;
    println!("| first request to an unseen worker, no stock: p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
    let (over50, over_max, wall) = cpu_overshoot(if quick { 3 } else { 20 }).await;
    println!("| busy loop past a 50 ms CPU limit: median / max overrun (CPU) | {over50:.2} ms / {over_max:.2} ms |");
    println!("| busy loop: request → 503, median wall time | {wall:.1} ms |");
  });
}
