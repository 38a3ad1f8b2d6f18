//! Watching a worker across a control plane and two edges: live tail,
//! analytics and head-sampled invocation logs, from the trace events edges
//! ship on their channel (`Call::Trace`).

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use isola_integration::poll;
use isola_integration::Control;
use isola_integration::EdgeSetup;
use isola_integration::TailClient;
use serde_json::json;
use serde_json::Value;

use crate::wait_applied;

const WATCHED: &str = r#"
export default {
  fetch(request) {
    const path = new URL(request.url).pathname;
    console.log(`handling ${path}`);
    if (path.startsWith("/t/throw")) throw new Error(`asked to throw at ${path}`);
    if (path.startsWith("/t/spin")) { for (;;) {} }
    return new Response("fine");
  },
};
"#;

fn setup(control: &Control, dir: &std::path::Path) -> Vec<EdgeSetup> {
  (0..2)
    .map(|i| control.enroll(&format!("edge-{i}"), &dir.join(format!("edge-{i}")), 200))
    .collect()
}

fn now_secs() -> u64 {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .unwrap()
    .as_secs()
}

/// Sums the analytics buckets of `worker` from `since` to now.
fn analytics_total(control: &Control, worker: &str, since: u64) -> Value {
  let until = now_secs() + 60;
  let a = control
    .api(
      "GET",
      &format!("/v1/workers/{worker}/analytics?since={since}&until={until}&step=60"),
      None,
    )
    .json();
  let mut requests = 0;
  let mut events = 0;
  let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
  for b in a["buckets"].as_array().expect("buckets") {
    requests += b["requests"].as_u64().unwrap();
    events += b["events"].as_u64().unwrap();
    for (o, n) in b["errors_by_outcome"].as_object().unwrap() {
      *by_outcome.entry(o.clone()).or_default() += n.as_u64().unwrap();
    }
  }
  json!({"requests": requests, "events": events, "errors_by_outcome": by_outcome})
}

#[test]
fn tail_analytics_and_sampled_logs_of_115_invocations_over_two_edges() {
  let dir = tempfile::tempdir().unwrap();
  let control = Control::init_and_start(&dir.path().join("control"));
  let edges = setup(&control, dir.path());
  let _procs: Vec<_> = edges.iter().map(EdgeSetup::start).collect();
  let since = now_secs() - 60;
  let v = control.upload_with(
    "watched",
    WATCHED,
    json!({"main_module": "worker.js", "limits": {"cpu_ms": 50}}),
  );
  control.route("watched.test/*", "watched");
  control.deploy("watched", &v);
  wait_applied(&control, &edges);

  let mut tail = TailClient::open(&control, "watched", "");
  let mut errors_only = TailClient::open(&control, "watched", "?status=error");
  let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
  let plan = (0..100)
    .map(|i| ("ok", format!("/t/ok/{i}")))
    .chain((0..10).map(|i| ("exception", format!("/t/throw/{i}"))))
    .chain((0..5).map(|i| ("exceededCpu", format!("/t/spin/{i}"))));
  for (i, (outcome, path)) in plan.enumerate() {
    let r = edges[i % 2]
      .get("watched.test", &path)
      .expect("the edge answers");
    if outcome == "ok" {
      assert_eq!(r.status, 200, "{path}: {}", r.text());
    } else {
      assert!(r.status >= 500, "{path}: {} {}", r.status, r.text());
    }
    *sent.entry(outcome).or_default() += 1;
  }

  // The tail shows each invocation once, with its outcome and log line.
  let mut seen: BTreeMap<String, u64> = BTreeMap::new();
  let mut edges_seen = std::collections::BTreeSet::new();
  for n in 0..115 {
    let m = tail.next_event().unwrap_or_else(|| {
      panic!("no more tail events (closed, or none for 30 s) after {n}: {seen:?}")
    });
    let url = m["event"]["request"]["url"]
      .as_str()
      .expect("a fetch event");
    let path = url.split("watched.test").nth(1).unwrap();
    let outcome = m["outcome"].as_str().unwrap();
    let want = match path.split('/').nth(2) {
      Some("ok") => "ok",
      Some("throw") => "exception",
      Some("spin") => "exceededCpu",
      _ => panic!("an event for a request the test did not send: {m}"),
    };
    assert_eq!(outcome, want, "{m}");
    assert_eq!(m["scriptName"], "watched", "{m}");
    let logged = m["logs"]
      .as_array()
      .unwrap()
      .iter()
      .any(|l| l["message"] == json!([format!("handling {path}")]));
    assert!(logged, "no log line in {m}");
    if outcome == "exception" {
      assert!(
        m["exceptions"][0]["message"]
          .as_str()
          .is_some_and(|s| s.contains("asked to throw")),
        "{m}"
      );
    }
    edges_seen.insert(m["edge"].as_str().unwrap().to_string());
    *seen.entry(outcome.to_string()).or_default() += 1;
  }
  assert_eq!(
    seen,
    BTreeMap::from([
      ("ok".to_string(), 100),
      ("exception".to_string(), 10),
      ("exceededCpu".to_string(), 5)
    ])
  );
  assert_eq!(edges_seen.len(), 2, "{edges_seen:?}");
  for n in 0..15 {
    let m = errors_only
      .next_event()
      .unwrap_or_else(|| panic!("the error tail ended after {n}"));
    assert_ne!(m["outcome"], "ok", "{m}");
  }

  // Analytics: exact requests from usage, errors by outcome from events.
  let want = json!({
    "requests": 115,
    "events": 115,
    "errors_by_outcome": {"exception": 10, "exceededCpu": 5},
  });
  let got = poll(Duration::from_secs(20), || {
    let got = analytics_total(&control, "watched", since);
    (got == want).then_some(got)
  });
  assert!(
    got.is_some(),
    "analytics: {} (want {want})",
    analytics_total(&control, "watched", since)
  );

  // Head sampling 0.1 over 1,000 requests keeps about 100 logs.
  let v = control.upload("sampled", WATCHED, json!({}));
  control.route("sampled.test/*", "sampled");
  control.deploy("sampled", &v);
  let r = control.api(
    "PUT",
    "/v1/workers/sampled/observability",
    Some(json!({"head_sampling_rate": 0.1})),
  );
  assert_eq!(r.status, 200, "{}", r.text());
  wait_applied(&control, &edges);
  let started = Instant::now();
  for i in 0..1000 {
    let r = edges[i % 2]
      .get("sampled.test", &format!("/s/{i}"))
      .expect("the edge answers");
    assert_eq!(r.status, 200);
  }
  // Every event arrived (analytics count them all, sampled or not)...
  let arrived = poll(Duration::from_secs(30), || {
    let got = analytics_total(&control, "sampled", since);
    (got["events"] == 1000).then_some(())
  });
  assert!(
    arrived.is_some(),
    "events of 1,000 requests did not all arrive in {:?}: {}",
    started.elapsed(),
    analytics_total(&control, "sampled", since)
  );
  // ...and about one in ten was kept as a log.
  let mut kept = 0;
  let mut path = "/v1/workers/sampled/logs?limit=1000".to_string();
  loop {
    let page = control.api("GET", &path, None).json();
    kept += page["logs"].as_array().expect("logs").len();
    match page["cursor"].as_str() {
      Some(c) => path = format!("/v1/workers/sampled/logs?limit=1000&cursor={c}"),
      None => break,
    }
  }
  // The log store is best effort: a batch it could not take (its queue was
  // full, as on a loaded machine) is counted, not sampled.
  let metrics = control.api("GET", "/metrics", None).text();
  let unstored: usize = metrics
    .lines()
    .find(|l| l.starts_with("isola_trace_events_unstored_total{worker=\"sampled\"}"))
    .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    .unwrap_or(0);
  assert!(
    unstored < 500,
    "the log store took only {} of 1,000 events",
    1000 - unstored
  );
  let offered = 1000 - unstored;
  // 0.1 of them, within 4.5 standard deviations of a binomial draw (57..=143
  // at 1,000): a test that runs in every CI run must not fail by chance, and
  // the 3 deviations it allowed before fail about 1 run in 500 (one kept 131).
  // Keeping every log, none, or one in five still falls far outside.
  let mean = offered as f64 * 0.1;
  let spread = 4.5 * (mean * 0.9).sqrt();
  let (low, high) = (
    (mean - spread).floor() as usize,
    (mean + spread).ceil() as usize,
  );
  assert!(
    (low..=high).contains(&kept),
    "kept {kept} logs of the {offered} events the store took at 0.1 (want {low}..={high})"
  );
}
