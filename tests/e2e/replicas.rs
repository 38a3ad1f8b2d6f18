//! Two control-plane replicas on one PostgreSQL database (Debian's server,
//! started by the test through `tests/support/postgres.sh`) and one
//! S3-compatible blob store (moto's, as in `blobs.rs`), and three edges:
//! two list replica A first, one lists B first.
//!
//! - A deploy through A reaches every edge, the one on B too (B hears it
//!   through PostgreSQL's LISTEN/NOTIFY).
//! - A is killed (SIGKILL) in the middle of a stream of deploys and
//!   requests: the edges move to B, every deploy made through either
//!   replica is served in the end, usage totals are exact (no loss, no
//!   double count), and a cron tick that comes due while A is gone runs
//!   once (B takes over the lease on once-only work).
//!
//! Without PostgreSQL's server binaries the test says so and passes,
//! unless ISOLA_POSTGRES_REQUIRED is set (`.ci/run` sets it).

use std::time::Duration;
use std::time::Instant;

use isola_integration::poll;
use isola_integration::Control;
use isola_integration::EdgeSetup;
use isola_integration::Postgres;
use serde_json::json;
use serde_json::Value;

/// A bound on waits, not a timing claim.
const LIMIT: Duration = Duration::from_secs(30);
/// The cron clock runs this many times faster than real time: a minute's
/// tick every 6 s.
const SCALE: i64 = 10;

fn source(version: &str) -> String {
  format!(
    "export default {{\n  fetch() {{\n    return new Response(\"shop {version}\");\n  }},\n  \
     scheduled(c) {{\n    console.log(`tick ${{c.scheduledTime}}`);\n  }},\n}};\n"
  )
}

fn deploy(control: &Control, version: &str) {
  let id = control.upload("shop", &source(version), json!({}));
  control.deploy("shop", &id);
}

/// Requests to the `meter` worker on every edge (nothing else calls it);
/// returns how many it answered (each is one request in its usage).
fn traffic(edges: &[EdgeSetup], rounds: usize) -> u64 {
  let mut sent = 0;
  for _ in 0..rounds {
    for edge in edges {
      if edge.get("meter.test", "/").is_some_and(|r| r.status == 200) {
        sent += 1;
      }
    }
  }
  sent
}

/// The nominal times of a worker's cron runs with outcome `ok` (RFC 3339
/// in UTC with ms, so they sort as times), and the latest of any outcome.
fn ok_ticks(control: &Control) -> (Vec<String>, Option<String>) {
  let runs = control
    .api("GET", "/v1/workers/shop/schedules/runs", None)
    .json();
  let runs = runs["runs"].as_array().cloned().unwrap_or_default();
  let time = |r: &Value| r["scheduled_time"].as_str().map(str::to_string);
  let ok = runs
    .iter()
    .filter(|r| r["outcome"] == "ok")
    .filter_map(time)
    .collect();
  (ok, runs.iter().filter_map(time).max())
}

fn usage_requests(control: &Control) -> Option<u64> {
  control
    .api("GET", "/v1/workers/meter/usage", None)
    .json()
    .get("requests")
    .and_then(Value::as_u64)
}

#[test]
fn two_replicas_share_one_postgres_and_an_edge_moves_when_its_replica_dies() {
  let Some(pg) = Postgres::start() else {
    assert!(
      std::env::var_os("ISOLA_POSTGRES_REQUIRED").is_none(),
      "ISOLA_POSTGRES_REQUIRED is set but no PostgreSQL server could be started"
    );
    eprintln!("skipped: no PostgreSQL server binaries (apt-get install postgresql)");
    return;
  };
  let dir = tempfile::tempdir().unwrap();
  let origin = std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .unwrap()
    .as_millis();
  let mut a = Control::init_postgres(&dir.path().join("a"), &pg.url());
  // Replicas share the blob store as they share the database: an
  // S3-compatible server (moto's, as in the blob test) where it is
  // installed, else a shared folder.
  let s3 = crate::blobs::moto_server().map(|moto| crate::blobs::S3::start(&moto));
  assert!(
    s3.is_some() || std::env::var_os("ISOLA_S3_REQUIRED").is_none(),
    "ISOLA_S3_REQUIRED is set, but moto_server is missing (tests/support/s3-server.sh)"
  );
  let blobs = match &s3 {
    Some(s3) => {
      let r = s3.call("PUT", "/isola-replicas");
      assert_eq!(r.status, 200, "create the bucket: {}", r.text());
      a.serve_env.extend(
        [
          ("AWS_ENDPOINT_URL", format!("http://{}", s3.addr)),
          ("AWS_ALLOW_HTTP", "true".into()),
          ("AWS_REGION", "us-east-1".into()),
          ("AWS_ACCESS_KEY_ID", "isola-test".into()),
          ("AWS_SECRET_ACCESS_KEY", "isola-test-secret".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
      );
      "s3://isola-replicas/fleet".to_string()
    }
    None => dir.path().join("blobs").display().to_string(),
  };
  a.serve_args = vec![
    "--test-clock".into(),
    format!("{origin}:{SCALE}"),
    "--blobs".into(),
    blobs,
  ];
  a.proc.take().unwrap().terminate();
  a.start();
  let b = a.replica(&dir.path().join("b"));

  let edges: Vec<EdgeSetup> = (0..3)
    .map(|i| {
      let order = if i < 2 {
        [a.quic, b.quic]
      } else {
        [b.quic, a.quic]
      };
      a.enroll_to(
        &format!("edge-{i}"),
        &dir.path().join(format!("edge-{i}")),
        200,
        &order,
      )
    })
    .collect();
  let mut procs: Vec<_> = edges.iter().map(EdgeSetup::start).collect();

  // A deploy through A reaches all three, the one following B too.
  deploy(&a, "v1");
  a.route("shop.test/*", "shop");
  let meter = a.upload(
    "meter",
    "export default { fetch() { return new Response(\"metered\"); } };\n",
    json!({}),
  );
  a.deploy("meter", &meter);
  a.route("meter.test/*", "meter");
  let t0 = Instant::now();
  for (i, edge) in edges.iter().enumerate() {
    assert!(
      edge.wait_for("shop.test", "shop v1", LIMIT).is_some(),
      "edge {i} does not serve v1"
    );
  }
  println!(
    "deploy through A → served on all 3 edges: {:?}",
    t0.elapsed()
  );
  let mut sent = 0;
  for (i, edge) in edges.iter().enumerate() {
    let served = poll(LIMIT, || {
      edge
        .get("meter.test", "/")
        .filter(|r| r.status == 200)
        .map(|_| sent += 1)
    });
    assert!(served.is_some(), "edge {i} does not serve meter");
  }
  // And one through B reaches the edges on A.
  deploy(&b, "v2");
  let t0 = Instant::now();
  for (i, edge) in edges.iter().enumerate() {
    assert!(
      edge.wait_for("shop.test", "shop v2", LIMIT).is_some(),
      "edge {i} does not serve v2 deployed through B"
    );
  }
  println!(
    "deploy through B → served on all 3 edges: {:?}",
    t0.elapsed()
  );
  let r = a.api(
    "PUT",
    "/v1/workers/shop/schedules",
    Some(json!({ "crons": ["* * * * *"] })),
  );
  assert_eq!(r.status, 200, "{}", r.text());

  // Ticks run (on A's edges: A leads, having started first).
  assert!(
    poll(LIMIT, || (!ok_ticks(&a).0.is_empty()).then_some(())).is_some(),
    "no tick ran before the failover: {:?}",
    ok_ticks(&a)
  );

  // A stream of deploys and requests; A dies in the middle of it.
  sent += traffic(&edges, 20);
  deploy(&a, "v3");
  sent += traffic(&edges, 20);
  let before = ok_ticks(&a).1;
  a.proc.take().unwrap().kill();
  let killed = Instant::now();
  sent += traffic(&edges, 20);
  deploy(&b, "v4");
  let moved = edges
    .iter()
    .map(|e| e.wait_for("shop.test", "shop v4", LIMIT))
    .collect::<Vec<_>>();
  assert!(moved.iter().all(Option::is_some), "{moved:?}");
  println!(
    "A killed → a deploy through B served on all 3 edges: {:?}",
    killed.elapsed()
  );
  sent += traffic(&edges, 20);

  // Every deploy is there, in order.
  let deployments = b.api("GET", "/v1/workers/shop/deployments", None).json();
  assert_eq!(
    deployments["deployments"].as_array().map(Vec::len),
    Some(4),
    "{deployments}"
  );

  // Usage: every request once.
  let total = poll(LIMIT, || (usage_requests(&b) == Some(sent)).then_some(()));
  assert!(
    total.is_some(),
    "usage {:?} != {sent} requests sent",
    usage_requests(&b)
  );
  std::thread::sleep(Duration::from_millis(1_000));
  assert_eq!(usage_requests(&b), Some(sent), "counted twice");

  // Cron: B took over the lease; the ticks due from the failover on ran,
  // and no tick ran twice.
  let after = |ticks: &Vec<String>| {
    ticks
      .iter()
      .filter(|t| before.as_ref().is_none_or(|b| *t > b))
      .count()
  };
  let ticks = poll(LIMIT, || {
    let (ok, _) = ok_ticks(&b);
    (after(&ok) >= 2).then_some(ok)
  })
  .unwrap_or_else(|| {
    panic!(
      "ticks did not resume on B: {:?} after {before:?}",
      ok_ticks(&b)
    )
  });
  let mut unique = ticks.clone();
  unique.sort();
  unique.dedup();
  assert_eq!(unique.len(), ticks.len(), "a tick ran twice: {ticks:?}");
  for p in &mut procs {
    p.signal("TERM");
  }
}
