//! An invoice from real usage: a control plane with a price sheet in
//! `control.toml`, two edges, and a worker whose KV and queue operations
//! are known, billed to the cent as a hand computation says.

use std::time::Duration;

use isola_integration::poll;
use isola_integration::Control;
use isola_integration::EdgeSetup;
use serde_json::json;
use serde_json::Value;

/// Per `/work`: 2 KV writes, 3 reads (one of them likely from the edge's
/// cache), 1 delete, 1 list, and sends of a small and a 100 KB message
/// (1 + 2 queue operations). `/refused` makes calls that checks refuse
/// before they reach storage. The consumer acknowledges every message and
/// reads one key per message.
const SHOP: &str = r#"
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const i = url.searchParams.get("i");
    if (url.pathname === "/work") {
      await env.NS.put(`k${i}`, "v");
      await env.NS.put(`tmp${i}`, "t");
      await env.NS.get(`k${i}`);
      await env.NS.get(`k${i}`);
      await env.NS.getWithMetadata("missing");
      await env.NS.delete(`tmp${i}`);
      await env.NS.list({ prefix: "k" });
      await env.JOBS.send({ i });
      await env.JOBS.send("x".repeat(100000), { contentType: "text" });
      return new Response("done");
    }
    if (url.pathname === "/refused") {
      let refused = 0;
      try { await env.NS.put("", "empty key"); } catch { refused++; }
      try { await env.JOBS.send("x".repeat(200000), { contentType: "text" }); } catch { refused++; }
      return new Response(`refused ${refused}`);
    }
    return new Response("ready");
  },
  async queue(batch, env) {
    for (const m of batch.messages) {
      await env.NS.get("k0");
      m.ack();
    }
  },
};
"#;

const PRICES: &str = r#"
[billing]
currency = "EUR"
per_million_requests = "1000"
per_million_kv_reads = "500"
per_million_kv_writes = "5000"
per_million_kv_deletes = "5000"
per_million_kv_lists = "5000"
per_million_queue_operations = "400"
included_kv_reads = 5
included_queue_operations = 10
"#;

/// `YYYY-MM` of now, UTC (days to civil date, as in Howard Hinnant's
/// `civil_from_days`).
fn this_month() -> String {
  let secs = std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .unwrap()
    .as_secs() as i64;
  let z = secs.div_euclid(86_400) + 719_468;
  let era = z.div_euclid(146_097);
  let doe = z - era * 146_097;
  let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
  let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  let mp = (5 * doy + 2) / 153;
  let month = if mp < 10 { mp + 3 } else { mp - 9 };
  let year = yoe + era * 400 + i64::from(month <= 2);
  format!("{year:04}-{month:02}")
}

fn usage_counts(control: &Control) -> Value {
  let u = control.api("GET", "/v1/workers/shop/usage", None).json();
  json!({
    "requests": u["requests"], "kv_reads": u["kv_reads"], "kv_writes": u["kv_writes"],
    "kv_deletes": u["kv_deletes"], "kv_lists": u["kv_lists"],
    "queue_operations": u["queue_operations"],
  })
}

#[test]
fn kv_and_queue_operations_are_billed_exactly_on_the_invoice() {
  let dir = tempfile::tempdir().unwrap();
  let config = isola_integration::write(dir.path(), "control.toml", PRICES);
  let data = dir.path().join("control");
  let control = Control::init_and_start_with(&data, &["--config", config.to_str().unwrap()]);
  let edges: Vec<EdgeSetup> = (0..2)
    .map(|i| {
      control.enroll(
        &format!("edge-{i}"),
        &dir.path().join(format!("edge-{i}")),
        200,
      )
    })
    .collect();
  let _procs: Vec<_> = edges.iter().map(EdgeSetup::start).collect();

  let r = control.api("POST", "/v1/kv/namespaces", Some(json!({"title": "shop"})));
  assert_eq!(r.status, 201, "{}", r.text());
  let ns = r.json()["id"].as_str().unwrap().to_string();
  let r = control.api("POST", "/v1/queues", Some(json!({"name": "orders"})));
  assert_eq!(r.status, 201, "{}", r.text());
  let v = control.upload_with(
    "shop",
    SHOP,
    json!({"main_module": "worker.js", "kv_namespaces": [{"binding": "NS", "id": ns}],
           "queues": {"producers": [{"binding": "JOBS", "queue": "orders"}]}}),
  );
  control.route("shop.test/*", "shop");
  control.deploy("shop", &v);
  // One batch of all ten messages: full at ten, long before its timeout.
  let r = control.api(
    "PUT",
    "/v1/queues/orders/consumer",
    Some(json!({"worker": "shop", "max_batch_size": 10, "max_batch_timeout": 60})),
  );
  assert_eq!(r.status, 200, "{}", r.text());
  // Ready without a request to the worker, so every request is the test's.
  let revision = control.api("GET", "/v1/edges", None).json()["revision"]
    .as_u64()
    .unwrap();
  for (i, edge) in edges.iter().enumerate() {
    assert!(
      edge.wait_revision(revision, Duration::from_secs(10)),
      "edge {i} did not apply revision {revision}"
    );
  }

  for i in 0..5 {
    let r = edges[i % 2]
      .get("shop.test", &format!("/work?i={i}"))
      .unwrap();
    assert_eq!((r.status, r.text()), (200, "done".to_string()));
  }
  let r = edges[0].get("shop.test", "/refused").unwrap();
  assert_eq!(r.text(), "refused 2");

  // 5 × /work, /refused and one consumer batch = 7 requests; KV reads
  // 5 × 3 + 10 by the consumer; queue operations: 5 × (1 + 2) sent, then
  // 15 read and 15 deleted (acknowledged) by the delivery.
  let want = json!({
    "requests": 7, "kv_reads": 25, "kv_writes": 10, "kv_deletes": 5, "kv_lists": 5,
    "queue_operations": 45,
  });
  let settled = poll(Duration::from_secs(30), || {
    (usage_counts(&control) == want).then_some(())
  });
  assert!(
    settled.is_some(),
    "usage {} (want {want}); queue {}",
    usage_counts(&control),
    control.api("GET", "/v1/queues/orders", None).text()
  );

  let month = this_month();
  let r = control.api(
    "GET",
    &format!("/v1/accounts/default/invoices/{month}"),
    None,
  );
  assert_eq!(r.status, 200, "{}", r.text());
  let invoice = r.json();
  let line = |worker: Value, item: &str| {
    invoice["lines"]
      .as_array()
      .unwrap()
      .iter()
      .find(|l| l["worker"] == worker && l["item"] == item)
      .map(|l| {
        [
          l["quantity"].clone(),
          l["unit_price"].clone(),
          l["amount"].clone(),
        ]
      })
      .unwrap_or_else(|| panic!("no {item} line for {worker} in {invoice}"))
  };
  let shop = || json!("shop");
  assert_eq!(line(shop(), "requests"), ["7", "0.001", "0.007"]);
  assert_eq!(line(shop(), "kv_reads"), ["25", "0.0005", "0.0125"]);
  assert_eq!(line(shop(), "kv_writes"), ["10", "0.005", "0.05"]);
  assert_eq!(line(shop(), "kv_deletes"), ["5", "0.005", "0.025"]);
  assert_eq!(line(shop(), "kv_lists"), ["5", "0.005", "0.025"]);
  assert_eq!(line(shop(), "queue_operations"), ["45", "0.0004", "0.018"]);
  assert_eq!(line(Value::Null, "kv_reads"), ["-5", "0.0005", "-0.0025"]);
  assert_eq!(
    line(Value::Null, "queue_operations"),
    ["-10", "0.0004", "-0.004"]
  );
  // 0.007 + 0.0125 − 0.0025 + 0.05 + 0.025 + 0.025 + 0.018 − 0.004
  assert_eq!(invoice["total"], "0.131", "{invoice}");
  assert_eq!(invoice["amount_due"], "0.13", "{invoice}");
  assert_eq!(invoice["currency"], "EUR");

  // The CSV and `isola-control billing report` say the same.
  let csv = control
    .api(
      "GET",
      &format!("/v1/accounts/default/invoices/{month}.csv"),
      None,
    )
    .text();
  for row in [
    "shop,kv_reads,25,0.0005,0.0125,EUR\n",
    "shop,queue_operations,45,0.0004,0.018,EUR\n",
    "(included allowance),queue_operations,-10,0.0004,-0.004,EUR\n",
    "amount_due,,,,0.13,EUR\n",
  ] {
    assert!(csv.contains(row), "no {row:?} in {csv}");
  }
  let out = std::process::Command::new(isola_integration::bin("isola-control"))
    .args(["billing", "report", "--data-dir"])
    .arg(&data)
    .args(["--month", &month, "--account", "default", "--config"])
    .arg(&config)
    .output()
    .unwrap();
  assert!(
    out.status.success(),
    "{}",
    String::from_utf8_lossy(&out.stderr)
  );
  let report = String::from_utf8(out.stdout).unwrap();
  assert!(report.ends_with(&csv), "report:\n{report}\nAPI:\n{csv}");
}
