//! A control plane and edges as separate processes on loopback, driven
//! through the upload API the way a user would.

mod anycast;
mod billing;
mod blobs;
mod dns;
mod observe;
mod replicas;
mod storage;
mod telemetry;

use std::time::Duration;

use isola_integration::poll;
use isola_integration::Control;
use isola_integration::EdgeSetup;
use serde_json::json;

const ONE_SECOND: Duration = Duration::from_secs(1);

fn alpha(version: &str) -> String {
  format!(
    "export default {{\n  fetch(request, env) {{\n    \
     return new Response(`alpha {version} ${{env.GREETING}} ${{env.API_KEY}}`);\n  }},\n}};\n"
  )
}

fn setup_edges(control: &Control, dir: &std::path::Path, n: usize) -> Vec<EdgeSetup> {
  (0..n)
    .map(|i| control.enroll(&format!("edge-{i}"), &dir.join(format!("edge-{i}")), 200))
    .collect()
}

/// Waits until every edge applied the control plane's current revision:
/// connected and holding what was deployed (no request sent, so nothing
/// but the test's requests is counted).
fn wait_applied(control: &Control, edges: &[EdgeSetup]) {
  let revision = control.api("GET", "/v1/edges", None).json()["revision"]
    .as_u64()
    .expect("a revision");
  for (i, edge) in edges.iter().enumerate() {
    assert!(
      edge.wait_revision(revision, Duration::from_secs(10)),
      "edge {i} did not apply revision {revision}"
    );
  }
}

/// Asserts that every edge serves a `host` answer starting `prefix` within
/// `limit`, naming the edge and its last answer otherwise.
fn assert_all_serve(edges: &[EdgeSetup], host: &str, prefix: &str, limit: Duration) {
  for (i, edge) in edges.iter().enumerate() {
    assert!(
      edge.wait_for(host, prefix, limit).is_some(),
      "edge {i} does not serve {prefix:?} within {limit:?}: {:?}",
      edge.get(host, "/")
    );
  }
}

#[test]
fn deploy_rollback_and_catch_up_across_three_edges() {
  let dir = tempfile::tempdir().unwrap();
  let mut control = Control::init_and_start(&dir.path().join("control"));
  let edges = setup_edges(&control, dir.path(), 3);
  let mut procs: Vec<_> = edges.iter().map(EdgeSetup::start).collect();

  let v1 = control.upload("alpha", &alpha("v1"), json!({ "GREETING": "hi" }));
  let r = control.api(
    "PUT",
    "/v1/workers/alpha/secrets/API_KEY",
    Some(json!({ "value": "k-123" })),
  );
  assert!(r.status == 200 || r.status == 201, "secret: {}", r.text());
  control.route("alpha.test/*", "alpha");
  control.deploy("alpha", &v1);
  assert_all_serve(&edges, "alpha.test", "alpha v1 hi k-123", ONE_SECOND);
  // The secret reaches the handler but no API answer carries it.
  let listing = control.api("GET", "/v1/workers/alpha/secrets", None).text();
  assert!(
    listing.contains("API_KEY") && !listing.contains("k-123"),
    "{listing}"
  );

  let v2 = control.upload("alpha", &alpha("v2"), json!({ "GREETING": "hi" }));
  control.deploy("alpha", &v2);
  assert_all_serve(&edges, "alpha.test", "alpha v2 ", ONE_SECOND);

  let r = control.api("POST", "/v1/workers/alpha/rollback", None);
  assert_eq!(r.status, 200, "rollback: {}", r.text());
  assert_all_serve(&edges, "alpha.test", "alpha v1 ", ONE_SECOND);

  // An edge killed outright misses a deploy, then catches up on restart.
  procs.pop().unwrap().kill();
  control.deploy("alpha", &v2);
  assert_all_serve(&edges[..2], "alpha.test", "alpha v2 ", ONE_SECOND);
  let restarted = edges[2].start();
  // It serves what it had (v1) from disk at once, then catches up.
  assert!(
    edges[2]
      .wait_for("alpha.test", "alpha v2 ", Duration::from_secs(5))
      .is_some(),
    "the restarted edge did not catch up: {:?}",
    edges[2].get("alpha.test", "/")
  );
  procs.push(restarted);
  // Serving v2 comes just before the state is on disk; wait for the
  // revision, which the edge reports once it is saved.
  let revision = control.api("GET", "/v1/edges", None).json()["revision"]
    .as_u64()
    .expect("a revision");
  assert!(
    edges[2].wait_revision(revision, Duration::from_secs(5)),
    "the restarted edge did not apply revision {revision}: {:?}",
    edges[2].state()
  );

  // With the control plane gone, edges keep serving, even after a restart.
  control.proc.take().unwrap().kill();
  procs.pop().unwrap().kill();
  procs.push(edges[2].start());
  let r = edges[2].get("alpha.test", "/").expect("the edge answers");
  assert_eq!(
    (r.status, r.text()),
    (200, "alpha v2 hi k-123".to_string()),
    "an edge without its control plane serves its last state"
  );
  assert_eq!(edges[0].get("alpha.test", "/").unwrap().status, 200);

  // Back up, the control plane pushes again.
  control.start();
  let v3 = control.upload("alpha", &alpha("v3"), json!({ "GREETING": "yo" }));
  control.deploy("alpha", &v3);
  for (i, edge) in edges.iter().enumerate() {
    let procs = &mut procs;
    assert!(
      edge
        .wait_for("alpha.test", "alpha v3 yo", Duration::from_secs(15))
        .is_some(),
      "edge {i} did not reconnect and take v3; its output:\n{}\ncontrol:\n{}",
      procs[i].output(),
      control.proc.as_mut().unwrap().output()
    );
  }
  // Each edge acknowledges what it applied (just after it starts serving it).
  let setups = &edges;
  let deadline = std::time::Instant::now() + Duration::from_secs(5);
  loop {
    let status = control.api("GET", "/v1/edges", None).json();
    let revision = status["revision"].as_u64().unwrap();
    let edges = status["edges"].as_array().unwrap();
    let acked = edges
      .iter()
      .all(|e| e["revision"].as_u64() == Some(revision));
    if edges.len() == 3 && acked {
      // ...and says so itself.
      for (i, edge) in setups.iter().enumerate() {
        let state = edge.state().expect("the edge's admin port answers");
        assert_eq!(
          state["control_revision"].as_u64(),
          Some(revision),
          "edge {i}: {state}"
        );
        // One worker (named by its account on the edge), one route, v3 whole.
        let workers = state["workers"].as_object().expect("a workers map");
        let worker = workers.values().next().expect("a worker");
        assert_eq!(workers.len(), 1, "edge {i}: {state}");
        assert_eq!(worker["routes"], 1, "edge {i}: {state}");
        assert_eq!(
          worker["versions"][0]["percentage"], 100,
          "edge {i}: {state}"
        );
      }
      break;
    }
    assert!(
      std::time::Instant::now() < deadline,
      "edges did not acknowledge revision {revision}: {status}"
    );
    std::thread::sleep(Duration::from_millis(50));
  }
}

#[test]
fn usage_totals_equal_the_requests_sent_across_a_control_plane_restart() {
  let dir = tempfile::tempdir().unwrap();
  let mut control = Control::init_and_start(&dir.path().join("control"));
  let edges = setup_edges(&control, dir.path(), 3);
  let _procs: Vec<_> = edges.iter().map(EdgeSetup::start).collect();

  let source = "export default {\n  fetch(request) {\n    \
                if (new URL(request.url).pathname === '/fail') throw new Error('asked to');\n    \
                return new Response('metered');\n  },\n};\n";
  let v1 = control.upload("meter", source, json!({}));
  control.route("meter.test/*", "meter");
  control.deploy("meter", &v1);
  assert_all_serve(&edges, "meter.test", "metered", ONE_SECOND);
  // wait_for sent requests too: one answered 200 per edge.
  let mut sent_ok = 3u64;
  let mut sent_err = 0u64;
  let send = |round: usize, sent_ok: &mut u64, sent_err: &mut u64| {
    for i in 0..30 {
      let edge = &edges[(round + i) % 3];
      let path = if i % 10 == 0 { "/fail" } else { "/" };
      let r = edge.get("meter.test", path).expect("the edge answers");
      match r.status {
        200 => *sent_ok += 1,
        500 => *sent_err += 1,
        s => panic!("unexpected status {s}: {}", r.text()),
      }
    }
  };
  send(0, &mut sent_ok, &mut sent_err);
  // Killed outright, with usage in flight; requests go on meanwhile.
  control.proc.take().unwrap().kill();
  send(1, &mut sent_ok, &mut sent_err);
  std::thread::sleep(Duration::from_millis(500));
  control.start();
  send(2, &mut sent_ok, &mut sent_err);

  let total = sent_ok + sent_err;
  let deadline = std::time::Instant::now() + Duration::from_secs(20);
  let usage = loop {
    let usage = control.api("GET", "/v1/workers/meter/usage", None).json();
    if usage["requests"].as_u64() == Some(total) || std::time::Instant::now() > deadline {
      break usage;
    }
    std::thread::sleep(Duration::from_millis(100));
  };
  assert_eq!(usage["requests"].as_u64(), Some(total), "{usage}");
  assert_eq!(usage["errors"].as_u64(), Some(sent_err), "{usage}");
  assert_eq!(
    usage["egress_bytes"].as_u64(),
    Some(sent_ok * "metered".len() as u64),
    "{usage}"
  );
  assert!(usage["cpu_ms"].as_f64().unwrap() > 0.0, "{usage}");
  // Nothing more arrives later (no batch stored twice).
  std::thread::sleep(Duration::from_millis(800));
  let again = control.api("GET", "/v1/workers/meter/usage", None).json();
  assert_eq!(again["requests"].as_u64(), Some(total), "{again}");
  // A window in the future holds nothing.
  let later = control
    .api("GET", "/v1/workers/meter/usage?since=4102444800", None)
    .json();
  assert_eq!(later["requests"].as_u64(), Some(0), "{later}");
}

#[test]
fn an_edge_without_a_valid_certificate_is_refused() {
  let dir = tempfile::tempdir().unwrap();
  let control = Control::init_and_start(&dir.path().join("control"));
  let v1 = control.upload("alpha", &alpha("v1"), json!({ "GREETING": "hi" }));
  control.route("alpha.test/*", "alpha");
  control.deploy("alpha", &v1);

  // Enrolled with another control plane's CA: the handshake fails.
  let other = Control::init_and_start(&dir.path().join("other"));
  let stranger = other.enroll("edge-x", &dir.path().join("stranger"), 200);
  let text = std::fs::read_to_string(&stranger.config).unwrap();
  std::fs::write(
    &stranger.config,
    text.replace(&other.quic.to_string(), &control.quic.to_string()),
  )
  .unwrap();
  let mut proc = stranger.start();
  proc.expect_line("unreachable");

  // A real certificate, but claiming another edge's name: refused.
  let honest = control.enroll("edge-a", &dir.path().join("edge-a"), 200);
  let text = std::fs::read_to_string(&honest.config).unwrap();
  std::fs::write(
    &honest.config,
    text.replace("name = \"edge-a\"", "name = \"edge-b\""),
  )
  .unwrap();
  let mut liar = honest.start();
  liar.expect_line("refused");

  std::thread::sleep(Duration::from_millis(500));
  for edge in [&stranger, &honest] {
    assert_eq!(
      edge.get("alpha.test", "/").map(|r| r.status),
      Some(404),
      "a refused edge got the deployment"
    );
  }
}

#[test]
fn a_split_deployment_serves_both_versions_and_shows_their_shares() {
  let dir = tempfile::tempdir().unwrap();
  let control = Control::init_and_start(&dir.path().join("control"));
  let edge = control.enroll("edge-0", &dir.path().join("edge-0"), 200);
  let _proc = edge.start();
  let v1 = control.upload("alpha", &alpha("v1"), json!({ "GREETING": "hi" }));
  let v2 = control.upload("alpha", &alpha("v2"), json!({ "GREETING": "hi" }));
  control.route("alpha.test/*", "alpha");
  let r = control.api(
    "POST",
    "/v1/workers/alpha/deployments",
    Some(json!({ "versions": [
      { "id": v1, "percentage": 30 },
      { "id": v2, "percentage": 70 },
    ] })),
  );
  assert_eq!(r.status, 201, "deploy: {}", r.text());
  let state = isola_integration::poll(Duration::from_secs(10), || {
    let state = edge.state()?;
    let worker = state["workers"].as_object()?.values().next()?.clone();
    (worker["versions"].as_array()?.len() == 2).then_some((state, worker))
  });
  let (state, worker) = state.expect("the edge never served the split");
  let versions = worker["versions"].as_array().unwrap();
  let shares: Vec<_> = versions.iter().map(|v| &v["percentage"]).collect();
  assert_eq!(shares, [30, 70], "{state}");
  assert_ne!(versions[0]["version"], versions[1]["version"], "{state}");
  assert!(state["control_revision"].as_u64() > Some(0), "{state}");
  // Each request picks one version; 200 requests see both (a miss of
  // either has a chance below 1e-30).
  let mut seen = [0; 2];
  for _ in 0..200 {
    let body = edge
      .get("alpha.test", "/")
      .expect("the edge answers")
      .text();
    match body.as_str() {
      "alpha v1 hi undefined" => seen[0] += 1,
      "alpha v2 hi undefined" => seen[1] += 1,
      other => panic!("unexpected answer {other:?}"),
    }
  }
  assert!(seen[0] > 0 && seen[1] > 0, "both versions served: {seen:?}");
}

/// Runs of worker `ticker`'s schedule: (scheduled time, outcome, edge, attempt).
fn runs(control: &Control) -> Vec<(String, String, Option<String>, u64)> {
  let r = control.api("GET", "/v1/workers/ticker/schedules/runs", None);
  assert_eq!(r.status, 200, "runs: {}", r.text());
  r.json()["runs"]
    .as_array()
    .expect("a runs list")
    .iter()
    .map(|run| {
      (
        run["scheduled_time"].as_str().unwrap().to_string(),
        run["outcome"].as_str().unwrap().to_string(),
        run["edge"].as_str().map(str::to_string),
        run["attempt"].as_u64().unwrap(),
      )
    })
    .collect()
}

/// Ticks with an `ok` run, and whether any tick has two.
fn ok_ticks(runs: &[(String, String, Option<String>, u64)]) -> Vec<(String, String)> {
  let mut ok: Vec<(String, String)> = runs
    .iter()
    .filter(|r| r.1 == "ok")
    .map(|r| (r.0.clone(), r.2.clone().unwrap_or_default()))
    .collect();
  ok.sort();
  let mut times: Vec<&String> = ok.iter().map(|(t, _)| t).collect();
  times.dedup();
  assert_eq!(times.len(), ok.len(), "a tick ran twice: {runs:#?}");
  ok
}

#[test]
fn a_cron_tick_runs_once_on_one_edge_through_edge_and_control_plane_failures() {
  // A test clock sixty times faster than real time: a minute a second.
  let origin = std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .unwrap()
    .as_millis()
    .to_string();
  let clock = format!("{origin}:60");
  let dir = tempfile::tempdir().unwrap();
  let mut control = Control::init_and_start_with(
    &dir.path().join("control"),
    &["--test-clock", &clock, "--cron-catch-up", "900"],
  );
  let edges = setup_edges(&control, dir.path(), 3);
  let mut procs: Vec<_> = edges.iter().map(EdgeSetup::start).collect();
  let source = "export default {\n  async scheduled(controller, env, ctx) {\n    \
                if (controller.cron !== \"* * * * *\") throw new Error(\"cron: \" + controller.cron);\n    \
                ctx.waitUntil(new Promise((r) => setTimeout(r, 10)));\n  },\n};\n";
  let v1 = control.upload("ticker", source, json!({}));
  control.deploy("ticker", &v1);
  // Every edge connected first: a tick goes to the worker's first-ranked
  // connected edge, so one that joins later may take the next ticks.
  wait_applied(&control, &edges);
  let bad = control.api(
    "PUT",
    "/v1/workers/ticker/schedules",
    Some(json!({ "crons": ["* * * * *", "0 0 * * 0"] })),
  );
  assert_eq!(bad.status, 400, "{}", bad.text());
  assert!(
    bad.text().contains("crons[1]") && bad.text().contains("day of week"),
    "{}",
    bad.text()
  );
  let r = control.api(
    "PUT",
    "/v1/workers/ticker/schedules",
    Some(json!({ "crons": ["* * * * *"] })),
  );
  assert_eq!(r.status, 200, "{}", r.text());
  assert_eq!(r.json()["crons"], json!(["* * * * *"]));

  // Three ticks run, each once, all on the same edge.
  let first = poll(Duration::from_secs(20), || {
    let ok = ok_ticks(&runs(&control));
    (ok.len() >= 3).then_some(ok)
  })
  .unwrap_or_else(|| panic!("no three ok runs: {:#?}", runs(&control)));
  let edge = first[0].1.clone();
  assert!(first.iter().all(|(_, e)| *e == edge), "{first:?}");

  // Kill that edge: the next ticks run elsewhere.
  let index: usize = edge.trim_start_matches("edge-").parse().unwrap();
  procs.remove(index).kill();
  let moved = poll(Duration::from_secs(30), || {
    let ok = ok_ticks(&runs(&control));
    ok.iter().any(|(_, e)| *e != edge).then_some(ok)
  })
  .unwrap_or_else(|| panic!("no run moved off {edge}: {:#?}", runs(&control)));
  assert!(moved.iter().any(|(_, e)| *e != edge));

  // Stop the control plane across a tick or two; they run once when it is
  // back (inside the catch-up window).
  let before = ok_ticks(&runs(&control));
  control.proc.take().unwrap().kill();
  std::thread::sleep(Duration::from_millis(2500));
  control.start();
  let last_before = before.last().unwrap().0.clone();
  let after = poll(Duration::from_secs(40), || {
    let ok = ok_ticks(&runs(&control));
    (ok.iter().filter(|(t, _)| *t > last_before).count() >= 4).then_some(ok)
  })
  .unwrap_or_else(|| {
    panic!(
      "no runs after the restart: {:#?}\ncontrol: {}",
      runs(&control),
      control.proc.as_mut().unwrap().output()
    )
  });
  // Every minute after the restart's gap ran exactly once: consecutive
  // minutes from the last tick before the stop, none missing, none twice
  // (ok_ticks asserts the latter).
  let all = runs(&control);
  let chain: Vec<&String> = std::iter::once(&last_before)
    .chain(after.iter().map(|(t, _)| t).filter(|t| **t > last_before))
    .collect();
  for pair in chain.windows(2) {
    let gap = minutes_between(pair[0], pair[1]);
    let skipped_between = all
      .iter()
      .filter(|r| r.1 == "skipped" && r.0 > *pair[0] && r.0 < *pair[1])
      .count() as i64;
    assert_eq!(
      gap - 1,
      skipped_between,
      "a tick between {pair:?} vanished: {all:#?}"
    );
  }
  let missed = all
    .iter()
    .filter(|r| r.1 == "missed" || r.1 == "noEdge")
    .count();
  assert_eq!(missed, 0, "the catch-up window covers the stop: {all:#?}");
  assert!(
    after
      .iter()
      .filter(|(t, _)| *t > last_before)
      .all(|(_, e)| *e != edge),
    "a run after the kill is credited to the killed edge: {after:?}"
  );
}

/// Whole minutes between two RFC 3339 times of the same hour or day.
fn minutes_between(a: &str, b: &str) -> i64 {
  let minutes = |t: &str| -> i64 {
    let day: i64 = t[8..10].parse().unwrap();
    let h: i64 = t[11..13].parse().unwrap();
    let m: i64 = t[14..16].parse().unwrap();
    day * 1440 + h * 60 + m
  };
  minutes(b) - minutes(a)
}
