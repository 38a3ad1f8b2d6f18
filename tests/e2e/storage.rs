//! KV and queues across a control plane and two edges, through workers'
//! bindings, the way users reach them.

use std::time::Duration;

use isola_integration::poll;
use isola_integration::Control;
use isola_integration::EdgeSetup;
use serde_json::json;

const KV_WORKER: &str = r#"
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const k = url.searchParams.get("k");
    switch (url.pathname) {
      case "/put":
        await env.NS.put(k, url.searchParams.get("v"));
        return new Response("stored");
      case "/get":
        return new Response(String(await env.NS.get(k)));
      case "/put-ttl":
        await env.NS.put(k, url.searchParams.get("v"), { expirationTtl: 60 });
        return new Response("stored");
      case "/list":
        return new Response((await env.NS.list()).keys.map((k) => k.name).join(","));
      case "/big": {
        const value = await env.NS.get(k, "arrayBuffer");
        return new Response(String(value === null ? -1 : value.byteLength));
      }
    }
    return new Response("ready");
  },
};
"#;

fn edges(control: &Control, dir: &std::path::Path, n: usize) -> Vec<EdgeSetup> {
  (0..n)
    .map(|i| control.enroll(&format!("edge-{i}"), &dir.join(format!("edge-{i}")), 200))
    .collect()
}

fn text(edge: &EdgeSetup, host: &str, path: &str) -> String {
  let r = edge.get(host, path).expect("the edge answers");
  r.text()
}

/// A control plane, two edges serving `KV_WORKER` on `kv.test` with a new
/// namespace bound as `NS`, both ready.
struct KvCluster {
  _dir: tempfile::TempDir,
  control: Control,
  setups: Vec<EdgeSetup>,
  procs: Vec<isola_integration::Proc>,
  ns: String,
}

fn kv_cluster(title: &str) -> KvCluster {
  let dir = tempfile::tempdir().unwrap();
  let control = Control::init_and_start(&dir.path().join("control"));
  let setups = edges(&control, dir.path(), 2);
  let procs: Vec<_> = setups.iter().map(EdgeSetup::start).collect();
  let r = control.api("POST", "/v1/kv/namespaces", Some(json!({ "title": title })));
  assert_eq!(r.status, 201, "{}", r.text());
  let ns = r.json()["id"].as_str().unwrap().to_string();
  let v = control.upload_with(
    "kvw",
    KV_WORKER,
    json!({"main_module": "worker.js", "kv_namespaces": [{"binding": "NS", "id": ns}]}),
  );
  control.route("kv.test/*", "kvw");
  control.deploy("kvw", &v);
  for e in &setups {
    assert!(e
      .wait_for("kv.test", "ready", Duration::from_secs(10))
      .is_some());
  }
  KvCluster {
    _dir: dir,
    control,
    setups,
    procs,
    ns,
  }
}

#[test]
fn a_kv_write_on_one_edge_is_read_on_another_and_reads_outlive_the_control_plane() {
  let KvCluster {
    _dir,
    mut control,
    setups,
    mut procs,
    ns,
  } = kv_cluster("cache");
  let (a, b) = (&setups[0], &setups[1]);
  // B has read the key (and cached that it is missing); A writes it; B sees
  // the write long before its 60 s cache would have let it.
  assert_eq!(text(b, "kv.test", "/get?k=color"), "null");
  assert_eq!(text(a, "kv.test", "/put?k=color&v=blue"), "stored");
  assert_eq!(
    text(a, "kv.test", "/get?k=color"),
    "blue",
    "the writer reads its write"
  );
  let seen = poll(Duration::from_secs(5), || {
    (text(b, "kv.test", "/get?k=color") == "blue").then_some(())
  });
  assert!(seen.is_some(), "edge B still reads the old value");
  // The REST API sees the binding's write, and the binding the API's.
  let r = control.api("GET", &format!("/v1/kv/namespaces/{ns}/values/color"), None);
  assert_eq!(r.text(), "blue");
  let big = vec![b'x'; 25 << 20];
  let r = isola_integration::http(
    control.api,
    "PUT",
    "control",
    &format!("/v1/kv/namespaces/{ns}/values/big"),
    &[("Authorization", &format!("Bearer {}", control.token))],
    &big,
  )
  .unwrap();
  assert_eq!(r.status, 204, "{}", r.text());
  assert_eq!(text(b, "kv.test", "/big?k=big"), (25 << 20).to_string());

  // Without the control plane: cached reads go on, writes fail and say so.
  control.proc.take().unwrap().kill();
  assert_eq!(text(b, "kv.test", "/get?k=color"), "blue");
  let r = a.get("kv.test", "/put?k=color&v=red").unwrap();
  assert_eq!(r.status, 500, "{}", r.text());
  // The exception is logged as the invocation ends, maybe after the
  // response went out.
  procs[0].expect_line("KV write failed");
  control.start();
  assert_eq!(
    control
      .api("GET", &format!("/v1/kv/namespaces/{ns}/values/color"), None)
      .text(),
    "blue",
    "the failed write changed nothing"
  );
}

const CONSUMER: &str = r#"
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const n = Number(url.searchParams.get("n"));
    if (n === 0) return new Response(`ready ${env.MODE}`);
    const from = Number(url.searchParams.get("from") ?? 0);
    const messages = [];
    for (let i = 0; i < n; i++) messages.push({ body: { i: from + i } });
    await env.JOBS.sendBatch(messages);
    return new Response("sent");
  },
  async queue(batch, env) {
    const first = batch.messages[0].body.i;
    // Logged: size of each batch, and each message with its attempt.
    console.log(`batch ${batch.messages.length}`);
    for (const m of batch.messages) console.log(`msg ${m.body.i} attempt ${m.attempts}`);
    if (env.MODE === "fail-after-3" && first === 200 && batch.messages[0].attempts === 1) {
      batch.messages[0].ack(); batch.messages[1].ack(); batch.messages[2].ack();
      throw new Error("boom");
    }
    if (env.MODE === "always-fail") throw new Error("never");
    if (env.MODE === "slow") await new Promise((r) => setTimeout(r, 3000));
  },
};
"#;

/// `(message, attempt)` pairs the edges' consumers logged, and the batch
/// sizes, in log order.
fn consumed(procs: &mut [isola_integration::Proc]) -> (Vec<(u32, u32)>, Vec<usize>) {
  let mut msgs = Vec::new();
  let mut batches = Vec::new();
  for p in procs {
    for line in p.output().lines() {
      if let Some(rest) = line.split("msg ").nth(1) {
        let mut it = rest.split(" attempt ");
        if let (Some(i), Some(a)) = (it.next(), it.next()) {
          msgs.push((i.trim().parse().unwrap(), a.trim().parse().unwrap()));
        }
      } else if let Some(rest) = line.split("batch ").nth(1) {
        batches.push(rest.trim().parse().unwrap());
      }
    }
  }
  (msgs, batches)
}

fn setup_queue(control: &Control, mode: &str, consumer: serde_json::Value) {
  for q in ["jobs", "dead"] {
    let r = control.api("POST", "/v1/queues", Some(json!({ "name": q })));
    assert!(r.status == 201 || r.status == 409, "{}", r.text());
  }
  let v = control.upload_with(
    "qw",
    CONSUMER,
    json!({"main_module": "worker.js", "vars": {"MODE": mode},
           "queues": {"producers": [{"binding": "JOBS", "queue": "jobs"}]}}),
  );
  control.route("q.test/*", "qw");
  control.deploy("qw", &v);
  let r = control.api("PUT", "/v1/queues/jobs/consumer", Some(consumer));
  assert_eq!(r.status, 200, "{}", r.text());
}

fn queue_info(control: &Control, q: &str) -> serde_json::Value {
  control.api("GET", &format!("/v1/queues/{q}"), None).json()
}

#[test]
fn queue_batches_fill_or_time_out_and_failures_retry_then_dead_letter() {
  let dir = tempfile::tempdir().unwrap();
  let control = Control::init_and_start(&dir.path().join("control"));
  let setups = edges(&control, dir.path(), 2);
  let mut procs: Vec<_> = setups.iter().map(EdgeSetup::start).collect();
  setup_queue(
    &control,
    "ok",
    json!({"worker": "qw", "max_batch_size": 10, "max_batch_timeout": 2, "max_retries": 2,
           "dead_letter_queue": "dead"}),
  );
  let deploy = |mode: &str| {
    let v = control.upload_with(
      "qw",
      CONSUMER,
      json!({"main_module": "worker.js", "vars": {"MODE": mode},
             "queues": {"producers": [{"binding": "JOBS", "queue": "jobs"}]}}),
    );
    control.deploy("qw", &v);
    for e in &setups {
      let want = format!("ready {mode}");
      assert!(e
        .wait_for("q.test", &want, Duration::from_secs(10))
        .is_some());
    }
  };
  deploy("ok");
  // 25 messages, one send: batches of 10, 10 and 5 (the last after the
  // 2 s timeout).
  let r = setups[0].get("q.test", "/?n=25").unwrap();
  assert_eq!(r.text(), "sent");
  let delivered = |n: u64| {
    poll(Duration::from_secs(30), || {
      (queue_info(&control, "jobs")["delivered"] == json!(n)).then_some(())
    })
    .is_some()
  };
  assert!(delivered(25), "{:?}", queue_info(&control, "jobs"));
  let (msgs, batches) = consumed(&mut procs);
  assert_eq!(batches, [10, 10, 5], "{msgs:?}");
  assert!(msgs.iter().all(|(_, a)| *a == 1), "{msgs:?}");

  // A batch that acks its first three messages and throws: only the other
  // seven come back, as attempt 2.
  deploy("fail-after-3");
  let r = setups[0].get("q.test", "/?n=10&from=200").unwrap();
  assert_eq!(r.text(), "sent");
  assert!(delivered(35), "{:?}", queue_info(&control, "jobs"));
  let (msgs, _) = consumed(&mut procs);
  let second: Vec<u32> = msgs
    .iter()
    .filter(|(_, a)| *a == 2)
    .map(|(i, _)| *i)
    .collect();
  assert_eq!(second, (203..210).collect::<Vec<_>>(), "{msgs:?}");
  let info = queue_info(&control, "jobs");
  assert_eq!(
    (info["retried"].clone(), info["backlog"].clone()),
    (json!(7), json!(0)),
    "{info}"
  );

  // A message that always fails: delivered max_retries + 1 = 3 times, then
  // in the dead-letter queue.
  deploy("always-fail");
  assert_eq!(
    setups[0].get("q.test", "/?n=1&from=500").unwrap().text(),
    "sent"
  );
  let dead = poll(Duration::from_secs(30), || {
    (queue_info(&control, "dead")["backlog"] == json!(1)).then_some(())
  });
  assert!(dead.is_some(), "{:?}", queue_info(&control, "jobs"));
  assert_eq!(queue_info(&control, "jobs")["dead_lettered"], json!(1));
  let (msgs, _) = consumed(&mut procs);
  let tries: Vec<u32> = msgs
    .iter()
    .filter(|(i, _)| *i == 500)
    .map(|(_, a)| *a)
    .collect();
  assert_eq!(tries, [1, 2, 3], "{msgs:?}");
}

#[test]
fn a_consumer_edge_killed_mid_batch_has_it_delivered_again_and_a_control_plane_restart_loses_nothing(
) {
  let dir = tempfile::tempdir().unwrap();
  let mut control = Control::init_and_start(&dir.path().join("control"));
  let setups = edges(&control, dir.path(), 2);
  let mut procs: Vec<_> = setups.iter().map(EdgeSetup::start).collect();
  setup_queue(
    &control,
    "slow",
    json!({"worker": "qw", "max_batch_size": 5, "max_batch_timeout": 1}),
  );
  for e in &setups {
    assert!(e
      .wait_for("q.test", "ready slow", Duration::from_secs(10))
      .is_some());
  }
  let r = setups[0].get("q.test", "/?n=5").unwrap();
  assert_eq!(r.text(), "sent");
  // The batch is being consumed (3 s each) on one edge: kill that edge.
  let busy = poll(Duration::from_secs(15), || {
    let (_, batches) = consumed(&mut procs[..1]);
    if !batches.is_empty() {
      return Some(0);
    }
    let (_, batches) = consumed(&mut procs[1..]);
    (!batches.is_empty()).then_some(1)
  })
  .expect("a batch started");
  procs.remove(busy).kill();
  let other = &setups[1 - busy];
  let done = poll(Duration::from_secs(40), || {
    (queue_info(&control, "jobs")["delivered"] == json!(5)).then_some(())
  });
  assert!(done.is_some(), "{:?}", queue_info(&control, "jobs"));
  let (msgs, _) = consumed(&mut procs);
  let mut again: Vec<u32> = msgs.iter().map(|(i, _)| *i).collect();
  again.sort();
  assert_eq!(
    again,
    [0, 1, 2, 3, 4],
    "the other edge consumed every message: {msgs:?}"
  );
  assert!(
    msgs.iter().all(|(_, a)| *a == 2),
    "redelivered as attempt 2: {msgs:?}"
  );

  // Sends across a control plane restart: none lost, none stored twice.
  let r = other.get("q.test", "/?n=10&from=100").unwrap();
  assert_eq!(r.text(), "sent");
  control.proc.take().unwrap().kill();
  control.start();
  // Sends fail (and store nothing) until the edge is back in touch.
  let back = poll(Duration::from_secs(20), || {
    other
      .get("q.test", "/?n=1&from=110")
      .filter(|r| r.text() == "sent")
      .map(|_| ())
  });
  assert!(back.is_some(), "the edge did not reconnect");
  assert_eq!(
    other.get("q.test", "/?n=9&from=111").unwrap().text(),
    "sent"
  );
  let done = poll(Duration::from_secs(60), || {
    (queue_info(&control, "jobs")["delivered"] == json!(25)).then_some(())
  });
  assert!(done.is_some(), "{:?}", queue_info(&control, "jobs"));
  let (msgs, _) = consumed(&mut procs);
  let mut late: Vec<u32> = msgs.iter().map(|(i, _)| *i).filter(|i| *i >= 100).collect();
  late.sort();
  late.dedup();
  assert_eq!(late, (100..120).collect::<Vec<_>>());
}

#[test]
fn an_expired_kv_key_is_gone_from_get_and_list_on_every_edge() {
  let KvCluster {
    _dir,
    control,
    setups,
    procs: _procs,
    ns,
  } = kv_cluster("ttl");
  let (a, b) = (&setups[0], &setups[1]);
  let start = std::time::Instant::now();
  assert_eq!(text(a, "kv.test", "/put-ttl?k=short&v=1"), "stored");
  assert_eq!(text(a, "kv.test", "/put?k=long&v=2"), "stored");
  // Both edges read it (and cache it) while it lives.
  for e in [a, b] {
    assert_eq!(text(e, "kv.test", "/get?k=short"), "1");
    assert_eq!(text(e, "kv.test", "/list"), "long,short");
  }
  // Cloudflare's shortest expiry is 60 s: wait it out, then it is gone
  // everywhere, cached or not.
  std::thread::sleep(Duration::from_secs(61).saturating_sub(start.elapsed()));
  for e in [a, b] {
    assert_eq!(text(e, "kv.test", "/get?k=short"), "null");
    assert_eq!(text(e, "kv.test", "/list"), "long");
  }
  let r = control.api("GET", &format!("/v1/kv/namespaces/{ns}/keys"), None);
  assert_eq!(r.json()["keys"], json!([{"name": "long"}]));
}
