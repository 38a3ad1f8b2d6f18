//! KV and queue latencies on loopback: one control plane, two edges.
//!
//! - KV read through a binding, edge cache hit and miss (request latency
//!   minus that of a request that reads nothing), medians and p99.
//! - Cross-edge visibility: from a write's response on edge A to edge B
//!   first answering the new value (B polls), p50/p99.
//! - Queue send → consumer handler start, one message per batch, p50/p99.
//! - Queue throughput: messages/s from the first send to the last ack, in
//!   batches of 100.
//!
//! ```text
//! cargo build --release -p isola-control -p isola-edge
//! cargo bench -p isola-integration --bench storage
//! ```

use std::time::Duration;
use std::time::Instant;

use isola_integration::poll;
use isola_integration::Control;
use isola_integration::EdgeSetup;
use serde_json::json;

const WORKER: &str = r#"
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const k = url.searchParams.get("k");
    switch (url.pathname) {
      case "/noop": return new Response("x");
      case "/get": return new Response(String(await env.NS.get(k)));
      case "/put": await env.NS.put(k, url.searchParams.get("v")); return new Response("ok");
      case "/send": {
        const n = Number(url.searchParams.get("n") ?? 1);
        const msgs = [];
        for (let i = 0; i < n; i++) msgs.push({ body: { t: Date.now() } });
        await env.Q.sendBatch(msgs);
        return new Response("sent");
      }
    }
    return new Response("ready");
  },
  async queue(batch) {
    const now = Date.now();
    for (const m of batch.messages) console.log(`lag ${now - m.body.t}`);
  },
};
"#;

fn stats(mut v: Vec<f64>) -> String {
  v.sort_by(|a, b| a.total_cmp(b));
  let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
  format!(
    "p50 {:.2} ms, p99 {:.2} ms (n = {})",
    p(0.5),
    p(0.99),
    v.len()
  )
}

fn timed(edge: &EdgeSetup, path: &str) -> f64 {
  let t = Instant::now();
  let r = edge.get("s.test", path).expect("the edge answers");
  assert_eq!(r.status, 200, "{path}: {}", r.text());
  t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
  let dir = tempfile::tempdir().unwrap();
  let control = Control::init_and_start(&dir.path().join("control"));
  let setups: Vec<EdgeSetup> = (0..2)
    .map(|i| {
      control.enroll(
        &format!("edge-{i}"),
        &dir.path().join(format!("e{i}")),
        1000,
      )
    })
    .collect();
  let mut procs: Vec<_> = setups.iter().map(EdgeSetup::start).collect();
  let ns = control
    .api("POST", "/v1/kv/namespaces", Some(json!({"title": "bench"})))
    .json()["id"]
    .as_str()
    .unwrap()
    .to_string();
  control.api("POST", "/v1/queues", Some(json!({"name": "bench"})));
  let v = control.upload_with(
    "bench",
    WORKER,
    json!({"main_module": "worker.js", "kv_namespaces": [{"binding": "NS", "id": ns}],
           "queues": {"producers": [{"binding": "Q", "queue": "bench"}]}}),
  );
  control.route("s.test/*", "bench");
  control.deploy("bench", &v);
  for e in &setups {
    e.wait_for("s.test", "ready", Duration::from_secs(10))
      .expect("deployed");
  }
  let (a, b) = (&setups[0], &setups[1]);

  // KV reads.
  timed(a, "/put?k=hot&v=1");
  for _ in 0..50 {
    timed(a, "/noop");
    timed(a, "/get?k=hot");
  }
  let base: Vec<f64> = (0..500).map(|_| timed(a, "/noop")).collect();
  let hit: Vec<f64> = (0..500).map(|_| timed(a, "/get?k=hot")).collect();
  let miss: Vec<f64> = (0..500)
    .map(|i| timed(a, &format!("/get?k=cold{i}")))
    .collect();
  let median = |v: &[f64]| {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
  };
  let b0 = median(&base);
  println!("request with no KV read: {}", stats(base.clone()));
  println!(
    "KV read, edge cache hit: {} (median over the no-read request: +{:.2} ms)",
    stats(hit.clone()),
    median(&hit) - b0
  );
  println!(
    "KV read, miss (edge → control plane): {} (median +{:.2} ms)",
    stats(miss.clone()),
    median(&miss) - b0
  );

  // Cross-edge visibility.
  let mut seen = Vec::new();
  for i in 0..100 {
    timed(b, "/get?k=vis"); // B has the old value cached
    let want = format!("v{i}");
    timed(a, &format!("/put?k=vis&v={want}"));
    let t = Instant::now();
    poll(Duration::from_secs(5), || {
      (b.get("s.test", "/get?k=vis").map(|r| r.text()) == Some(want.clone())).then_some(())
    })
    .expect("B sees the write");
    seen.push(t.elapsed().as_secs_f64() * 1000.0);
  }
  println!(
    "cross-edge visibility (A's put answered → B reads it): {}",
    stats(seen)
  );

  // Queue latency: batches of one, sent one at a time.
  let r = control.api(
    "PUT",
    "/v1/queues/bench/consumer",
    Some(json!({"worker": "bench", "max_batch_size": 1, "max_batch_timeout": 0})),
  );
  assert_eq!(r.status, 200, "{}", r.text());
  std::thread::sleep(Duration::from_millis(300));
  for _ in 0..120 {
    timed(a, "/send");
    std::thread::sleep(Duration::from_millis(20));
  }
  poll(Duration::from_secs(30), || {
    (control.api("GET", "/v1/queues/bench", None).json()["delivered"] == json!(120)).then_some(())
  })
  .expect("all delivered");
  let lags: Vec<f64> = procs
    .iter_mut()
    .flat_map(|p| {
      p.output()
        .lines()
        .filter_map(|l| l.split("lag ").nth(1)?.trim().parse::<f64>().ok())
        .collect::<Vec<_>>()
    })
    .skip(20)
    .collect();
  println!(
    "queue send → consumer start (ms clock of the isolates): {}",
    stats(lags)
  );

  // Queue throughput: batches of 100.
  let r = control.api(
    "PUT",
    "/v1/queues/bench/consumer",
    Some(json!({"worker": "bench", "max_batch_size": 100, "max_batch_timeout": 1})),
  );
  assert_eq!(r.status, 200, "{}", r.text());
  std::thread::sleep(Duration::from_millis(300));
  let n = 5000;
  let t = Instant::now();
  for _ in 0..n / 100 {
    timed(a, "/send?n=100");
  }
  let sent = t.elapsed();
  poll(Duration::from_secs(120), || {
    (control.api("GET", "/v1/queues/bench", None).json()["delivered"] == json!(120 + n))
      .then_some(())
  })
  .expect("all delivered");
  let all = t.elapsed();
  println!(
    "queue throughput: {n} messages sent in {:.2} s ({:.0}/s), all consumed and acked after {:.2} s ({:.0}/s)",
    sent.as_secs_f64(),
    n as f64 / sent.as_secs_f64(),
    all.as_secs_f64(),
    n as f64 / all.as_secs_f64()
  );
}
