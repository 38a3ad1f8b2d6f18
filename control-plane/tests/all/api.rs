//! The REST API in-process: a real router on 127.0.0.1:0 over a real
//! SQLite store and upload checker, driven over HTTP/1.1 with hyper.

use isola_control::api;
use isola_control::blobs::Blobs;
use isola_control::blobs::Location;
use isola_control::db;
use isola_control::secrets;
use isola_control::validate;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use isola_proto::manifest::MAX_MODULE_BYTES;
use isola_proto::msg::DesiredState;
use isola_proto::msg::Usage;
use isola_proto::msg::UsageBatch;
use isola_proto::msg::UsageRecord;
use serde_json::json;
use serde_json::Value;
use tokio::sync::watch;

struct Server {
  addr: SocketAddr,
  admin: String,
  db: db::Db,
  blobs: Blobs,
  state: watch::Receiver<Arc<DesiredState>>,
  _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Reply {
  status: u16,
  json: Value,
  text: String,
  /// The `x-request-id` header.
  request_id: Option<String>,
  retry_after: Option<String>,
}

impl Reply {
  fn error_code(&self) -> &str {
    self.json["error"]["code"].as_str().unwrap_or_default()
  }

  fn message(&self) -> &str {
    self.json["error"]["message"].as_str().unwrap_or_default()
  }
}

async fn start() -> Server {
  start_with(isola_control::billing::PriceSheet::default()).await
}

async fn start_with(prices: isola_control::billing::PriceSheet) -> Server {
  start_configured(|state| state.with_prices(prices)).await
}

async fn start_configured(configure: impl FnOnce(api::AppState) -> api::AppState) -> Server {
  let dir = tempfile::tempdir().unwrap();
  let db = db::test_support::open(
    &dir.path().join("control.db"),
    secrets::Cipher::new(&secrets::generate_key()),
  )
  .unwrap();
  let admin = db.create_account("default", true).unwrap();
  let (tx, rx) = watch::channel(Arc::new(db.desired_state().unwrap()));
  let validator = Arc::new(validate::Validator::new().unwrap());
  let blobs = Blobs::open(Location::default_in(dir.path())).await.unwrap();
  let app = api::router(configure(api::AppState::new(
    db.clone(),
    blobs.clone(),
    Arc::new(tx),
    validator,
  )))
  .into_make_service_with_connect_info::<SocketAddr>();
  let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
  let addr = listener.local_addr().unwrap();
  tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
  Server {
    addr,
    admin,
    db,
    blobs,
    state: rx,
    _dir: dir,
  }
}

impl Server {
  async fn call(
    &self,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
  ) -> Reply {
    let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
      .await
      .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
      .method(method)
      .uri(path)
      .header("host", "control.test");
    if let Some(token) = token {
      req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some(ct) = content_type {
      req = req.header("content-type", ct);
    }
    let res = sender
      .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
      .await
      .unwrap();
    let status = res.status().as_u16();
    let request_id = res
      .headers()
      .get(api::REQUEST_ID_HEADER)
      .map(|v| v.to_str().unwrap().to_string());
    let retry_after = res
      .headers()
      .get("retry-after")
      .map(|v| v.to_str().unwrap().to_string());
    let is_json = res
      .headers()
      .get("content-type")
      .is_some_and(|v| v.to_str().unwrap_or("").contains("json"));
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = if bytes.is_empty() || !is_json {
      Value::Null
    } else {
      serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
    };
    Reply {
      status,
      json,
      text,
      request_id,
      retry_after,
    }
  }

  async fn get(&self, path: &str, token: &str) -> Reply {
    self.call("GET", path, Some(token), None, Vec::new()).await
  }

  async fn send_json(&self, method: &str, path: &str, token: &str, body: Value) -> Reply {
    self
      .call(
        method,
        path,
        Some(token),
        Some("application/json"),
        body.to_string().into_bytes(),
      )
      .await
  }

  async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
    self.send_json("POST", path, token, body).await
  }

  /// Deploys `version` of `worker` at 100 %.
  async fn deploy(&self, token: &str, worker: &str, version: &str) -> Reply {
    let body = json!({"versions": [{"id": version, "percentage": 100}]});
    self
      .post(&format!("/v1/workers/{worker}/deployments"), token, body)
      .await
  }

  async fn delete(&self, path: &str, token: &str) -> Reply {
    self
      .call("DELETE", path, Some(token), None, Vec::new())
      .await
  }

  /// A new account and its token.
  async fn account(&self, name: &str) -> String {
    let r = self
      .post("/v1/accounts", &self.admin, json!({"name": name}))
      .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["account"], name);
    r.json["token"].as_str().unwrap().to_string()
  }

  async fn upload(
    &self,
    token: &str,
    worker: &str,
    metadata: Value,
    modules: &[(&str, &[u8])],
  ) -> Reply {
    let mut parts: Vec<(&str, Vec<u8>)> = vec![("metadata", metadata.to_string().into_bytes())];
    parts.extend(modules.iter().map(|(n, b)| (*n, b.to_vec())));
    let (ct, body) = multipart(&parts);
    self
      .call(
        "POST",
        &format!("/v1/workers/{worker}/versions"),
        Some(token),
        Some(&ct),
        body,
      )
      .await
  }

  /// Uploads a worker answering `text`; returns the version's id and hash.
  /// Uploads a version of `worker` answering `text` and deploys it at
  /// 100 %; returns its version id.
  async fn upload_and_deploy(&self, token: &str, worker: &str, text: &str) -> String {
    let (version, _) = self.upload_ok(token, worker, text).await;
    let r = self.deploy(token, worker, &version).await;
    assert_eq!(r.status, 201, "{r:?}");
    version
  }

  async fn upload_ok(&self, token: &str, worker: &str, text: &str) -> (String, String) {
    let src = format!(
      "import {{ greet }} from './lib/greet.js';\n\
       export default {{ fetch(req, env) {{ return new Response(greet({text:?})) }} }}"
    );
    let r = self
      .upload(
        token,
        worker,
        json!({"main_module": "worker.js", "vars": {"MODE": "test"}}),
        &[
          ("worker.js", src.as_bytes()),
          ("lib/greet.js", b"export const greet = (s) => `hi ${s}`;"),
        ],
      )
      .await;
    assert_eq!(r.status, 201, "{r:?}");
    (
      r.json["id"].as_str().unwrap().to_string(),
      r.json["hash"].as_str().unwrap().to_string(),
    )
  }
}

fn multipart(parts: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
  let boundary = "isola-test-boundary-7d1e";
  let mut body = Vec::new();
  for (name, bytes) in parts {
    body.extend_from_slice(
      format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
      )
      .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(b"\r\n");
  }
  body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
  (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn upload_deploy_list_and_roll_back() {
  let s = start().await;
  let acme = s.account("acme").await;
  let (v1, h1) = s.upload_ok(&acme, "alpha", "one").await;
  let (v2, h2) = s.upload_ok(&acme, "alpha", "two").await;
  assert_eq!(v1.len(), 36, "a uuid: {v1}");
  assert!(isola_proto::manifest::is_sha256_hex(&h1));
  assert_ne!(h1, h2);

  let r = s.get("/v1/workers/alpha/versions", &acme).await;
  assert_eq!(r.status, 200, "{r:?}");
  let versions = r.json["versions"].as_array().unwrap();
  assert_eq!(versions.len(), 2);
  assert_eq!(versions[0]["id"], v2.as_str(), "newest first");
  assert_eq!(versions[0]["main_module"], "worker.js");
  assert_eq!(versions[0]["modules"][0]["name"], "lib/greet.js");

  let r = s.get("/v1/workers", &acme).await;
  assert_eq!(r.json["workers"][0]["name"], "alpha");
  assert!(r.json["workers"][0]["active_deployment"].is_null());

  let r = s.deploy(&acme, "alpha", &v1).await;
  assert_eq!(r.status, 201, "{r:?}");
  let first = r.json["id"].as_i64().unwrap();
  // Published before the answer.
  let state = s.state.borrow().clone();
  assert_eq!(state.revision, r.json["revision"].as_u64().unwrap());
  assert_eq!(state.workers[0].name, "acme_alpha");
  assert_eq!(state.workers[0].versions[0].hash, h1);
  assert_eq!(state.workers[0].versions[0].percentage, 100);
  let bundle = s.blobs.bundle(&s.db, &h1).await.unwrap().unwrap();
  assert_eq!(bundle.modules.len(), 2);

  let r = s
    .post(
      "/v1/workers/alpha/deployments",
      &acme,
      json!({"versions": [{"id": v2, "percentage": 90}, {"id": v1, "percentage": 10}]}),
    )
    .await;
  assert_eq!(r.status, 201, "{r:?}");
  assert_eq!(s.state.borrow().workers[0].versions.len(), 2);

  for (body, want) in [
    (
      json!({"versions": [{"id": v1, "percentage": 50}]}),
      "add up to 50",
    ),
    (json!({"versions": []}), "1 or 2 versions"),
    (
      json!({"versions": [{"id": v1, "percentage": 100}], "extra": 1}),
      "unknown field",
    ),
  ] {
    let r = s.post("/v1/workers/alpha/deployments", &acme, body).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.message().contains(want), "{r:?}");
  }
  let r = s.deploy(&acme, "alpha", "nope").await;
  assert_eq!(r.status, 404, "{r:?}");

  let r = s.get("/v1/workers/alpha/deployments", &acme).await;
  let list = r.json["deployments"].as_array().unwrap();
  assert_eq!(list.len(), 2);
  assert_eq!(list[0]["active"], true);
  assert_eq!(list[1]["active"], false);

  let r = s.post("/v1/workers/alpha/rollback", &acme, json!({})).await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(r.json["id"].as_i64().unwrap(), first);
  assert_eq!(r.json["active"], true);
  let state = s.state.borrow().clone();
  assert_eq!(state.workers[0].versions.len(), 1);
  assert_eq!(state.workers[0].versions[0].hash, h1);
  let r = s.get("/v1/workers", &acme).await;
  assert_eq!(
    r.json["workers"][0]["active_deployment"]["id"].as_i64(),
    Some(first)
  );
  let r = s.post("/v1/workers/alpha/rollback", &acme, json!({})).await;
  assert_eq!(r.status, 409, "{r:?}");
  assert!(r.message().contains("no earlier deployment"), "{r:?}");

  // Usage as edges report it, summed per version over [since, until).
  let record = |end: u64, hash: &str| UsageRecord {
    worker: "acme_alpha".into(),
    version: hash.into(),
    start: end - 10,
    end,
    usage: Usage {
      requests: 5,
      errors: 1,
      cpu_us: 2500,
      wall_us: 10_000,
      ingress_bytes: 10,
      egress_bytes: 100,
      subrequests: 0,
      kv_reads: 4,
      kv_writes: 3,
      kv_deletes: 2,
      kv_lists: 1,
      queue_ops: 6,
    },
  };
  let batch = UsageBatch {
    id: "batch-1".into(),
    records: vec![
      record(1_700_000_000, &h1),
      record(1_700_000_100, &h2),
      record(1_700_000_200, &h1),
    ],
  };
  assert!(s.db.store_usage("edge-1", &batch).unwrap());
  assert!(!s.db.store_usage("edge-1", &batch).unwrap());
  let r = s.get("/v1/workers/alpha/usage", &acme).await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(r.json["requests"], 15);
  assert_eq!(r.json["cpu_ms"], 7.5);
  for (field, per_record) in [
    ("kv_reads", 4),
    ("kv_writes", 3),
    ("kv_deletes", 2),
    ("kv_lists", 1),
    ("queue_operations", 6),
  ] {
    assert_eq!(r.json[field], 3 * per_record, "{field}: {r:?}");
  }
  assert_eq!(r.json["by_version"].as_array().unwrap().len(), 2);
  let r = s
    .get(
      "/v1/workers/alpha/usage?since=2023-11-14T22:13:20Z&until=1700000200",
      &acme,
    )
    .await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(r.json["requests"], 10);
  assert_eq!(r.json["since"], "2023-11-14T22:13:20Z");
  let r = s
    .get("/v1/workers/alpha/usage?since=yesterday", &acme)
    .await;
  assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn accounts_cannot_see_each_other() {
  let s = start().await;
  let acme = s.account("acme").await;
  let evil = s.account("evil").await;
  let v1 = s.upload_and_deploy(&acme, "alpha", "one").await;
  let r = s
    .post(
      "/v1/routes",
      &acme,
      json!({"pattern": "alpha.test/*", "worker": "alpha"}),
    )
    .await;
  assert_eq!(r.status, 201, "{r:?}");

  for path in [
    "/v1/workers/alpha/versions",
    "/v1/workers/alpha/deployments",
    "/v1/workers/alpha/secrets",
    "/v1/workers/alpha/usage",
  ] {
    let r = s.get(path, &evil).await;
    assert_eq!(r.status, 404, "{path}: {r:?}");
    assert_eq!(r.error_code(), "not_found");
  }
  let r = s.deploy(&evil, "alpha", &v1).await;
  assert_eq!(r.status, 404, "{r:?}");
  let r = s.post("/v1/workers/alpha/rollback", &evil, json!({})).await;
  assert_eq!(r.status, 404, "{r:?}");
  let r = s
    .send_json(
      "PUT",
      "/v1/workers/alpha/secrets/TOKEN",
      &evil,
      json!({"value": "x"}),
    )
    .await;
  assert_eq!(r.status, 404, "{r:?}");
  let r = s.delete("/v1/routes?pattern=alpha.test%2F*", &evil).await;
  assert_eq!(r.status, 404, "{r:?}");

  // Evil's own worker of the same name is another worker.
  let (evil_v1, _) = s.upload_ok(&evil, "alpha", "evil").await;
  let r = s.deploy(&evil, "alpha", &v1).await;
  assert_eq!(r.status, 404, "acme's version on evil's worker: {r:?}");
  let r = s.get("/v1/workers", &evil).await;
  let workers = r.json["workers"].as_array().unwrap();
  assert_eq!(workers.len(), 1);
  assert!(workers[0]["active_deployment"].is_null());
  let r = s.get("/v1/workers/alpha/versions", &evil).await;
  assert_eq!(r.json["versions"].as_array().unwrap().len(), 1);
  assert_eq!(r.json["versions"][0]["id"], evil_v1.as_str());
  let r = s.get("/v1/routes", &evil).await;
  assert_eq!(r.json["routes"], json!([]));
  let r = s.get("/v1/routes", &acme).await;
  assert_eq!(r.json["routes"][0]["pattern"], "alpha.test/*");
}

#[tokio::test]
async fn tokens_are_checked() {
  let s = start().await;
  let r = s.call("GET", "/v1/workers", None, None, Vec::new()).await;
  assert_eq!(r.status, 401, "{r:?}");
  assert_eq!(r.error_code(), "unauthorized");
  assert!(r.message().contains("Authorization"), "{r:?}");
  let r = s.get("/v1/workers", "isola_0000").await;
  assert_eq!(r.status, 401, "{r:?}");
  assert!(r.message().contains("not valid"), "{r:?}");

  let acme = s.account("acme").await;
  assert!(acme.starts_with("isola_") && acme.len() == 70, "{acme}");
  let r = s.post("/v1/accounts", &acme, json!({"name": "x"})).await;
  assert_eq!(r.status, 403, "{r:?}");
  let r = s.get("/v1/edges", &acme).await;
  assert_eq!(r.status, 403, "{r:?}");
  let r = s
    .post("/v1/accounts", &s.admin, json!({"name": "acme"}))
    .await;
  assert_eq!(r.status, 409, "{r:?}");
  let r = s
    .post("/v1/accounts", &s.admin, json!({"name": "Bad_Name"}))
    .await;
  assert_eq!(r.status, 400, "{r:?}");

  let r = s.post("/v1/tokens", &acme, json!({})).await;
  assert_eq!(r.status, 201, "{r:?}");
  let second = r.json["token"].as_str().unwrap();
  assert_ne!(second, acme);
  assert_eq!(s.get("/v1/workers", second).await.status, 200);

  s.db.enroll_edge("edge-1").unwrap();
  let r = s.get("/v1/edges", &s.admin).await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(r.json["revision"], 0);
  assert_eq!(r.json["edges"][0]["name"], "edge-1");
  assert!(r.json["edges"][0]["revision"].is_null());

  let r = s.call("GET", "/healthz", None, None, Vec::new()).await;
  assert_eq!(r.status, 200, "{r:?}");
  let r = s.get("/v1/nope", &acme).await;
  assert_eq!(r.status, 404, "{r:?}");
  assert_eq!(r.error_code(), "not_found");
}

#[tokio::test]
async fn every_response_has_a_request_id() {
  let s = start().await;
  let a = s.call("GET", "/healthz", None, None, Vec::new()).await;
  let b = s.get("/v1/nope", &s.admin).await;
  let (a, b) = (a.request_id.unwrap(), b.request_id.unwrap());
  assert_eq!(a.len(), 32, "{a}");
  assert_ne!(a, b);
}

#[tokio::test]
async fn internal_errors_do_not_reach_clients() {
  let s = start().await;
  s.db.enroll_edge("edge-1").unwrap();
  // The store is broken behind the control plane's back: first a row it
  // cannot read, then a table it cannot find.
  let raw = |sql: &str| db::test_support::execute_batch(&s.db, sql).unwrap();
  raw("UPDATE edges SET errors = 'not json'");
  let missing = if db::test_support::postgres_server().is_some() {
    "does not exist"
  } else {
    "no such table"
  };
  for (breakage, internal_text) in [
    (None, "errors of edge"),
    (Some("ALTER TABLE edges RENAME TO edges_moved"), missing),
  ] {
    if let Some(sql) = breakage {
      raw(sql);
    }
    let r = s.get("/v1/edges", &s.admin).await;
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(r.error_code(), "internal", "{r:?}");
    assert_eq!(
      r.message(),
      "internal error; the control plane's log has the details"
    );
    let id = r.json["error"]["request_id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "{r:?}");
    assert_eq!(r.request_id.as_deref(), Some(id), "{r:?}");
    for leak in [internal_text, "edges", "database", "corrupt", "json"] {
      assert!(!r.text.contains(leak), "{leak:?} leaked: {}", r.text);
    }
  }
}

#[tokio::test]
async fn an_upload_whose_blobs_cannot_be_stored_records_no_version() {
  let s = start().await;
  // Blobs are written before the version row: with the blob folder made
  // unusable (a file where it was; root ignores permission bits), the
  // upload fails opaquely and leaves no version behind.
  let folder = s._dir.path().join("blobs");
  std::fs::remove_dir_all(&folder).unwrap();
  std::fs::write(&folder, b"not a folder").unwrap();
  let r = s
    .upload(
      &s.admin,
      "alpha",
      json!({"main_module": "worker.js"}),
      &[(
        "worker.js",
        b"export default { fetch() { return new Response('a') } }",
      )],
    )
    .await;
  assert_eq!(r.status, 500, "{r:?}");
  assert_eq!(r.error_code(), "internal", "{r:?}");
  for leak in ["blob", "folder", s._dir.path().to_str().unwrap()] {
    assert!(!r.text.contains(leak), "{leak:?} leaked: {}", r.text);
  }
  let r = s.get("/v1/workers/alpha/versions", &s.admin).await;
  assert_eq!(r.status, 404, "no worker was created: {r:?}");

  // Repaired, the same upload is stored and its bundle reads back.
  std::fs::remove_file(&folder).unwrap();
  std::fs::create_dir(&folder).unwrap();
  let (_, hash) = s.upload_ok(&s.admin, "alpha", "a").await;
  let bundle = s.blobs.bundle(&s.db, &hash).await.unwrap().unwrap();
  assert_eq!(bundle.modules.len(), 2);
}

#[tokio::test]
async fn routes_conflict_across_accounts() {
  let s = start().await;
  let acme = s.account("acme").await;
  let evil = s.account("evil").await;
  s.upload_ok(&acme, "alpha", "one").await;
  s.upload_ok(&evil, "beta", "two").await;
  let add = |token: &str, pattern: &str, worker: &str| {
    let (token, body) = (
      token.to_string(),
      json!({"pattern": pattern, "worker": worker}),
    );
    let s = &s;
    async move { s.post("/v1/routes", &token, body).await }
  };
  let r = add(&acme, "alpha.test/*", "alpha").await;
  assert_eq!(r.status, 201, "{r:?}");
  let revision = r.json["revision"].as_u64().unwrap();
  assert_eq!(s.state.borrow().revision, revision);
  assert_eq!(s.state.borrow().routes[0].worker, "acme_alpha");

  let r = add(&evil, "alpha.test/*", "beta").await;
  assert_eq!(r.status, 409, "{r:?}");
  assert_eq!(r.error_code(), "conflict");
  let r = add(&evil, "ALPHA.test/*", "beta").await;
  assert_eq!(r.status, 409, "{r:?}");
  assert!(r.message().contains("duplicate route"), "{r:?}");
  let r = add(&acme, "alpha.test/*", "alpha").await;
  assert_eq!(r.status, 409, "{r:?}");
  let r = add(&evil, "https://beta.test/*", "beta").await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(r.message().contains("no scheme"), "{r:?}");
  let r = add(&evil, "beta.test/*", "nope").await;
  assert_eq!(r.status, 404, "{r:?}");
  assert_eq!(
    s.state.borrow().revision,
    revision,
    "failures publish nothing"
  );

  let r = add(&evil, "beta.test/api/*", "beta").await;
  assert_eq!(r.status, 201, "{r:?}");
  let r = s.delete("/v1/routes?pattern=alpha.test%2F%2A", &acme).await;
  assert_eq!(r.status, 204, "{r:?}");
  let r = s.delete("/v1/routes/beta.test%2Fapi%2F*", &evil).await;
  assert_eq!(r.status, 204, "{r:?}");
  let r = s
    .delete("/v1/routes?pattern=beta.test%2Fapi%2F*", &evil)
    .await;
  assert_eq!(r.status, 404, "{r:?}");
  assert!(s.state.borrow().routes.is_empty());
  assert_eq!(s.state.borrow().revision, revision + 3);
  let r = add(&evil, "alpha.test/*", "beta").await;
  assert_eq!(r.status, 201, "freed: {r:?}");
}

#[tokio::test]
async fn secret_values_are_never_returned() {
  let s = start().await;
  let acme = s.account("acme").await;
  s.upload_and_deploy(&acme, "alpha", "one").await;
  let value = "sup3r-s3cret-value";
  let path = "/v1/workers/alpha/secrets/API_TOKEN";
  let r = s
    .send_json("PUT", path, &acme, json!({"value": value}))
    .await;
  assert_eq!(r.status, 201, "{r:?}");
  assert_eq!(r.json["key"], "API_TOKEN");
  let r = s
    .send_json("PUT", path, &acme, json!({"value": format!("{value}-2")}))
    .await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(
    s.state.borrow().workers[0].secrets["API_TOKEN"],
    format!("{value}-2")
  );

  for path in [
    "/v1/workers/alpha/secrets",
    "/v1/workers",
    "/v1/workers/alpha/versions",
    "/v1/workers/alpha/deployments",
  ] {
    let r = s.get(path, &acme).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
      !r.text.contains(value),
      "{path} leaks the value: {}",
      r.text
    );
  }
  let r = s.get("/v1/workers/alpha/secrets", &acme).await;
  assert_eq!(r.json["secrets"][0]["key"], "API_TOKEN");
  assert!(r.json["secrets"][0].get("value").is_none());

  let r = s
    .send_json(
      "PUT",
      "/v1/workers/alpha/secrets/9bad-name",
      &acme,
      json!({"value": "x"}),
    )
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  let r = s.delete(path, &acme).await;
  assert_eq!(r.status, 204, "{r:?}");
  let r = s.delete(path, &acme).await;
  assert_eq!(r.status, 404, "{r:?}");
  assert!(s.state.borrow().workers[0].secrets.is_empty());
}

#[tokio::test]
async fn bad_uploads_are_refused_with_reasons() {
  let s = start().await;
  let acme = s.account("acme").await;
  let meta = json!({"main_module": "worker.js"});

  let r = s
    .upload(
      &acme,
      "alpha",
      meta.clone(),
      &[(
        "worker.js",
        b"export default {\n  fetch() {\n    return new Response('x' +);\n  }\n}",
      )],
    )
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(r.message().contains("SyntaxError"), "{r:?}");
  assert!(r.message().contains("worker.js:3:"), "{r:?}");

  let r = s
    .upload(
      &acme,
      "alpha",
      json!({"main_module": "index.js"}),
      &[("worker.js", b"export default {}")],
    )
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(r.message().contains("\"index.js\" is not among"), "{r:?}");

  let r = s
    .upload(
      &acme,
      "alpha",
      meta.clone(),
      &[
        ("worker.js", b"export default { fetch() {} }"),
        ("../x.js", b""),
      ],
    )
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(r.message().contains("invalid module name"), "{r:?}");

  let big = vec![b'x'; MAX_MODULE_BYTES + 1];
  let r = s
    .upload(
      &acme,
      "alpha",
      meta.clone(),
      &[
        ("worker.js", b"export default { fetch() {} }"),
        ("big.bin", &big),
      ],
    )
    .await;
  assert_eq!(r.status, 413, "{r:?}");
  assert_eq!(r.error_code(), "too_large");

  let r = s
    .upload(
      &acme,
      "Alpha",
      meta.clone(),
      &[("worker.js", b"export default {}")],
    )
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(r.message().contains("invalid worker name"), "{r:?}");

  let r = s
    .call(
      "POST",
      "/v1/workers/alpha/versions",
      Some(&acme),
      Some("application/json"),
      b"{}".to_vec(),
    )
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(r.message().contains("multipart/form-data"), "{r:?}");

  // Nothing refused was stored.
  let r = s.get("/v1/workers", &acme).await;
  assert_eq!(r.json["workers"], json!([]));
}

/// `{*pattern}` (axum's catch-all) is `{pattern}` in OpenAPI.
fn openapi_path(axum_path: &str) -> String {
  axum_path.replace("{*", "{")
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
  let s = start().await;
  let r = s
    .call("GET", "/v1/openapi.json", None, None, Vec::new())
    .await;
  assert_eq!(r.status, 200, "{r:?}");
  let doc = &r.json;
  assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
  // What the document names must be what the served document names.
  assert_eq!(*doc, serde_json::to_value(api::openapi()).unwrap());
  let documented = documented_operations(doc);
  let routed: std::collections::BTreeSet<(String, String)> = api::endpoints()
    .into_iter()
    .map(|(method, path)| (method.as_str().to_lowercase(), openapi_path(path)))
    .collect();
  let undocumented: Vec<_> = routed.difference(&documented).collect();
  assert!(
    undocumented.is_empty(),
    "routes missing from the OpenAPI document: {undocumented:?}"
  );
  let unrouted: Vec<_> = documented.difference(&routed).collect();
  assert!(
    unrouted.is_empty(),
    "documented but not routed: {unrouted:?}"
  );

  // Every documented operation reaches a handler of the real router, not
  // its fallbacks: the table the test read is the one the router uses.
  for (method, path) in &documented {
    let concrete = path
      .replace("{name}", "alpha")
      .replace("{id}", "x")
      .replace("{key}", "K")
      .replace("{pattern}", "example.com/x");
    let r = s
      .call(
        &method.to_uppercase(),
        &concrete,
        Some(&s.admin),
        None,
        Vec::new(),
      )
      .await;
    assert!(
      !matches!(r.error_code(), "method_not_allowed") && !r.message().starts_with("no endpoint"),
      "{method} {path} is documented but not routed: {r:?}"
    );
  }

  // Shapes the CLI and other clients rely on.
  let schemas = &doc["components"]["schemas"];
  let error = &schemas["ErrorDetail"];
  for field in ["code", "message", "request_id"] {
    assert!(error["properties"].get(field).is_some(), "{error}");
  }
  assert_eq!(
    doc["components"]["securitySchemes"]["bearer"]["scheme"],
    "bearer"
  );
  assert!(
    doc["security"].is_array(),
    "bearer security applies by default"
  );
  assert_eq!(
    doc["paths"]["/v1/openapi.json"]["get"]["security"],
    json!([{}])
  );
  // Every authenticated operation documents the errors any of them can
  // answer, in the error shape; the public ones do not claim a 401.
  for (path, item) in doc["paths"].as_object().unwrap() {
    for (method, op) in item.as_object().unwrap() {
      let public = op["security"] == json!([{}]);
      for status in ["400", "401", "404", "500"] {
        let response = &op["responses"][status];
        if public {
          assert!(response.is_null(), "{method} {path} {status}: {op}");
        } else {
          assert_eq!(
            response["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{method} {path} {status}"
          );
        }
      }
    }
  }
  let upload = &doc["paths"]["/v1/workers/{name}/versions"]["post"]["requestBody"]["content"];
  let form = &upload["multipart/form-data"]["schema"];
  assert!(form.is_object(), "upload is multipart: {upload}");
  let form_name = form["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
  assert!(
    schemas[form_name]["properties"].get("metadata").is_some(),
    "{}",
    schemas[form_name]
  );
  let metadata = schemas["UploadMetadata"]["properties"].clone();
  assert!(metadata.get("message").is_some(), "{metadata}");
  let view = &doc["paths"]["/v1/workers/{name}/versions/{id}"]["get"];
  assert_eq!(view["parameters"].as_array().unwrap().len(), 2, "{view}");
  assert!(view["responses"]["404"].is_object(), "{view}");
}

/// The (lowercase method, path) of every operation in an OpenAPI document.
fn documented_operations(doc: &Value) -> std::collections::BTreeSet<(String, String)> {
  let mut out = std::collections::BTreeSet::new();
  for (path, item) in doc["paths"].as_object().unwrap() {
    for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
      if item.get(method).is_some() {
        out.insert((method.to_string(), path.clone()));
      }
    }
  }
  out
}

#[test]
fn a_missing_path_fails_the_completeness_check() {
  let mut doc = serde_json::to_value(api::openapi()).unwrap();
  doc["paths"]
    .as_object_mut()
    .unwrap()
    .remove("/v1/workers/{name}/secrets");
  let documented = documented_operations(&doc);
  let missing: Vec<_> = api::endpoints()
    .into_iter()
    .map(|(method, path)| (method.as_str().to_lowercase(), openapi_path(path)))
    .filter(|op| !documented.contains(op))
    .collect();
  assert_eq!(
    missing,
    [
      ("get".to_string(), "/v1/workers/{name}/secrets".to_string()),
      ("put".to_string(), "/v1/workers/{name}/secrets".to_string()),
    ]
  );
}

#[tokio::test]
async fn a_version_shows_its_message_and_details() {
  let s = start().await;
  let acme = s.account("acme").await;
  let worker = b"export default { fetch() { return new Response('hi') } }";
  let metadata = json!({
    "main_module": "worker.js",
    "vars": {"MODE": "test", "API_URL": "https://example.com"},
    "limits": {"cpu_ms": 20},
    "message": "first cut",
  });
  let r = s
    .upload(&acme, "alpha", metadata.clone(), &[("worker.js", worker)])
    .await;
  assert_eq!(r.status, 201, "{r:?}");
  assert_eq!(r.json["message"], "first cut");
  let id = r.json["id"].as_str().unwrap().to_string();
  let hash = r.json["hash"].as_str().unwrap().to_string();

  // The message is not in the manifest: the same code has the same hash.
  let mut other = metadata.clone();
  other["message"] = json!("same code, other words");
  let r = s
    .upload(&acme, "alpha", other, &[("worker.js", worker)])
    .await;
  assert_eq!(r.status, 201, "{r:?}");
  assert_eq!(r.json["hash"], hash.as_str());
  let mut none = metadata.clone();
  none.as_object_mut().unwrap().remove("message");
  let r = s
    .upload(&acme, "alpha", none, &[("worker.js", worker)])
    .await;
  assert_eq!(r.status, 201, "{r:?}");
  assert!(r.json["message"].is_null(), "{r:?}");

  let r = s.get("/v1/workers/alpha/versions", &acme).await;
  let messages: Vec<&Value> = r.json["versions"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| &v["message"])
    .collect();
  assert_eq!(
    messages,
    [
      &Value::Null,
      &json!("same code, other words"),
      &json!("first cut")
    ]
  );

  let r = s
    .get(&format!("/v1/workers/alpha/versions/{id}"), &acme)
    .await;
  assert_eq!(r.status, 200, "{r:?}");
  let v = &r.json;
  assert_eq!(v["id"], id.as_str());
  assert_eq!(v["hash"], hash.as_str());
  assert_eq!(v["message"], "first cut");
  assert_eq!(v["main_module"], "worker.js");
  assert_eq!(v["modules"][0]["name"], "worker.js");
  assert_eq!(v["modules"][0]["size"], worker.len());
  assert_eq!(v["vars"], json!(["API_URL", "MODE"]));
  assert!(
    !r.text.contains("example.com"),
    "var values stay out: {}",
    r.text
  );
  assert_eq!(v["limits"], json!({"cpu_ms": 20}));
  assert!(v["created_at"].as_str().unwrap().ends_with('Z'), "{v}");

  let r = s.get("/v1/workers/alpha/versions/nope", &acme).await;
  assert_eq!(r.status, 404, "{r:?}");
  assert_eq!(r.error_code(), "not_found");
  let other = s.account("other").await;
  let r = s
    .get(&format!("/v1/workers/alpha/versions/{id}"), &other)
    .await;
  assert_eq!(r.status, 404, "{r:?}");

  let mut long = metadata.clone();
  long["message"] = json!("é".repeat(1001));
  let r = s
    .upload(&acme, "alpha", long, &[("worker.js", worker)])
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(r.message().contains("1000"), "{r:?}");
  let mut fits = metadata;
  fits["message"] = json!("é".repeat(1000));
  let r = s
    .upload(&acme, "alpha", fits, &[("worker.js", worker)])
    .await;
  assert_eq!(r.status, 201, "1,000 characters, more bytes: {r:?}");
}

#[tokio::test]
async fn bulk_secrets_are_all_or_nothing() {
  let s = start().await;
  let acme = s.account("acme").await;
  s.upload_and_deploy(&acme, "alpha", "one").await;
  let before = s.state.borrow().revision;
  let path = "/v1/workers/alpha/secrets";

  let r = s
    .send_json("PUT", path, &acme, json!({"B_KEY": "b", "A_KEY": "a"}))
    .await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(r.json["keys"], json!(["A_KEY", "B_KEY"]));
  assert_eq!(r.json["revision"], before + 1, "one revision for the set");
  assert!(!r.text.contains("\"a\""), "{}", r.text);
  {
    let state = s.state.borrow();
    assert_eq!(state.revision, before + 1);
    assert_eq!(state.workers[0].secrets["A_KEY"], "a");
    assert_eq!(state.workers[0].secrets["B_KEY"], "b");
  }

  // One bad key refuses the whole set.
  let r = s
    .send_json("PUT", path, &acme, json!({"A_KEY": "new", "9bad": "x"}))
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  assert_eq!(s.state.borrow().workers[0].secrets["A_KEY"], "a");
  let r = s.get(path, &acme).await;
  assert_eq!(r.json["secrets"].as_array().unwrap().len(), 2, "{r:?}");

  let many: serde_json::Map<String, Value> =
    (0..101).map(|i| (format!("K{i}"), json!("v"))).collect();
  let r = s.send_json("PUT", path, &acme, Value::Object(many)).await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(r.message().contains("100"), "{r:?}");
  for body in [json!({}), json!(["A"]), json!({"A": 1})] {
    let r = s.send_json("PUT", path, &acme, body).await;
    assert_eq!(r.status, 400, "{r:?}");
  }
  let r = s
    .send_json(
      "PUT",
      path,
      &acme,
      json!({"A": "x".repeat(api::MAX_SECRET_BYTES + 1)}),
    )
    .await;
  assert_eq!(r.status, 413, "{r:?}");
  let other = s.account("other").await;
  let r = s.send_json("PUT", path, &other, json!({"A": "x"})).await;
  assert_eq!(r.status, 404, "{r:?}");
  assert_eq!(s.state.borrow().revision, before + 1);
}

#[tokio::test]
async fn schedules_are_checked_stored_and_scoped_to_the_account() {
  let s = start().await;
  let acme = s.account("acme").await;
  let other = s.account("other").await;
  s.upload_and_deploy(&acme, "ticker", "export default { scheduled() {} }")
    .await;
  let path = "/v1/workers/ticker/schedules";

  let r = s
    .send_json(
      "PUT",
      path,
      &acme,
      json!({"crons": ["*/5 * * * *", "0 9 * * MON-FRI"]}),
    )
    .await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(r.json, json!({"crons": ["*/5 * * * *", "0 9 * * MON-FRI"]}));
  assert_eq!(s.get(path, &acme).await.json, r.json);

  // A bad expression is refused whole, naming the entry and the field.
  for (crons, needle) in [
    (json!(["* * * * *", "* * * * ?"]), "crons[1]"),
    (json!(["61 * * * *"]), "minute field"),
    (json!(["0 0 * * 0"]), "1 or SUN"),
    (json!(["* * * *"]), "expected 5 fields"),
    (json!(["* * * * *", "* * * * *"]), "twice"),
  ] {
    let r = s
      .send_json("PUT", path, &acme, json!({ "crons": crons }))
      .await;
    assert_eq!(
      (r.status, r.error_code()),
      (400, "invalid_request"),
      "{r:?}"
    );
    assert!(r.message().contains(needle), "{needle}: {r:?}");
  }
  assert_eq!(
    s.get(path, &acme).await.json["crons"],
    json!(["*/5 * * * *", "0 9 * * MON-FRI"]),
    "a refused change changes nothing"
  );
  let r = s
    .send_json("PUT", path, &acme, json!({"cron": ["* * * * *"]}))
    .await;
  assert_eq!(r.status, 400, "{r:?}");

  // Another account sees no such worker; an unknown worker is a 404.
  assert_eq!(s.get(path, &other).await.status, 404);
  let r = s
    .send_json(
      "PUT",
      "/v1/workers/nope/schedules",
      &acme,
      json!({"crons": []}),
    )
    .await;
  assert_eq!(r.status, 404, "{r:?}");

  // An empty list removes them; no run has happened.
  let r = s.send_json("PUT", path, &acme, json!({"crons": []})).await;
  assert_eq!(r.json, json!({"crons": []}));
  let runs = s.get("/v1/workers/ticker/schedules/runs", &acme).await;
  assert_eq!((runs.status, runs.json.clone()), (200, json!({"runs": []})));
}

#[tokio::test]
async fn a_service_binding_must_name_a_worker_of_the_account() {
  let s = start().await;
  let acme = s.account("acme").await;
  let other = s.account("other").await;
  s.upload_and_deploy(
    &other,
    "billing",
    "export default { fetch() { return new Response('b') } }",
  )
  .await;
  let source: &[u8] = b"export default { fetch(r, env) { return env.BILLING.fetch(r) } }";
  let meta = json!({"main_module": "worker.js",
                    "services": [{"binding": "BILLING", "service": "billing"}]});
  let r = s
    .upload(&acme, "front", meta.clone(), &[("worker.js", source)])
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(
    r.message().contains("services[0]") && r.message().contains("deploy that worker first"),
    "{r:?}"
  );
  s.upload_and_deploy(
    &acme,
    "billing",
    "export default { fetch() { return new Response('b') } }",
  )
  .await;
  let r = s
    .upload(&acme, "front", meta, &[("worker.js", source)])
    .await;
  assert_eq!(r.status, 201, "{r:?}");

  for (services, needle) in [
    (
      json!([{"binding": "1X", "service": "billing"}]),
      "not a JavaScript identifier",
    ),
    (
      json!([{"binding": "B", "service": "billing"}, {"binding": "B", "service": "billing"}]),
      "used twice",
    ),
    (
      json!([{"binding": "B", "service": "billing", "props": {}}]),
      "props",
    ),
  ] {
    let meta = json!({"main_module": "worker.js", "services": services});
    let r = s
      .upload(&acme, "front", meta, &[("worker.js", source)])
      .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.message().contains(needle), "{needle}: {r:?}");
  }
}

#[tokio::test]
async fn kv_values_round_trip_page_in_byte_order_and_stay_in_their_account() {
  let s = start().await;
  let acme = s.account("acme").await;
  let other = s.account("other").await;
  let r = s
    .post("/v1/kv/namespaces", &acme, json!({"title": "users"}))
    .await;
  assert_eq!(r.status, 201, "{r:?}");
  let ns = r.json["id"].as_str().unwrap().to_string();
  let dup = s
    .post("/v1/kv/namespaces", &acme, json!({"title": "users"}))
    .await;
  assert_eq!(dup.status, 409, "{dup:?}");
  assert_eq!(
    s.get("/v1/kv/namespaces", &acme).await.json["namespaces"][0]["id"],
    json!(ns)
  );
  assert_eq!(
    s.get("/v1/kv/namespaces", &other).await.json["namespaces"],
    json!([])
  );

  let values = |key: &str| format!("/v1/kv/namespaces/{ns}/values/{key}");
  // A raw value with metadata; keys may hold '/' and need URL-encoding.
  let r = s
    .call(
      "PUT",
      &values("u%3A1%2Fa"),
      Some(&acme),
      Some("application/octet-stream"),
      b"alice".to_vec(),
    )
    .await;
  assert_eq!(r.status, 204, "{r:?}");
  let r = s.get(&values("u%3A1%2Fa"), &acme).await;
  assert_eq!((r.status, r.text.as_str()), (200, "alice"));
  assert_eq!(s.get(&values("u%3A1%2Fa"), &other).await.status, 404);
  assert_eq!(s.get(&values("missing"), &acme).await.status, 404);

  // Bulk, in byte order: "u:10" < "u:2" < "u:é".
  let pairs: Vec<Value> = ["u:2", "u:10", "u:\u{e9}", "v:1", "u:3"]
    .iter()
    .map(|k| json!({"key": k, "value": format!("val {k}"), "metadata": {"k": k}}))
    .collect();
  let r = s
    .send_json(
      "PUT",
      &format!("/v1/kv/namespaces/{ns}/bulk"),
      &acme,
      json!(pairs),
    )
    .await;
  assert_eq!(
    (r.status, r.json["count"].clone()),
    (200, json!(5)),
    "{r:?}"
  );
  let mut names = Vec::new();
  let mut cursor: Option<String> = None;
  let mut pages = 0;
  loop {
    let mut path = format!("/v1/kv/namespaces/{ns}/keys?prefix=u:&limit=2");
    if let Some(c) = &cursor {
      path.push_str(&format!("&cursor={c}"));
    }
    let page = s.get(&path, &acme).await.json;
    pages += 1;
    for k in page["keys"].as_array().unwrap() {
      names.push(k["name"].as_str().unwrap().to_string());
    }
    if page["list_complete"] == json!(true) {
      assert!(page.get("cursor").is_none(), "{page}");
      break;
    }
    cursor = Some(page["cursor"].as_str().unwrap().to_string());
  }
  assert_eq!(names, ["u:1/a", "u:10", "u:2", "u:3", "u:\u{e9}"]);
  assert_eq!(pages, 3);
  let page = s
    .get(&format!("/v1/kv/namespaces/{ns}/keys?prefix=v:"), &acme)
    .await
    .json;
  assert_eq!(
    page["keys"],
    json!([{"name": "v:1", "metadata": {"k": "v:1"}}])
  );

  // Cloudflare's limits, each named.
  for (path, body, needle) in [
    (values(&"k".repeat(513)), b"x".to_vec(), "414"),
    (values("%2E%2E"), b"x".to_vec(), "not allowed"),
    (
      format!("{}?expiration_ttl=59", values("t")),
      b"x".to_vec(),
      "at least 60",
    ),
  ] {
    let r = s
      .call(
        "PUT",
        &path,
        Some(&acme),
        Some("application/octet-stream"),
        body,
      )
      .await;
    assert_eq!(r.status, 400, "{path}: {r:?}");
    assert!(r.message().contains(needle), "{needle}: {r:?}");
  }
  let big = vec![7u8; isola_proto::kv::MAX_VALUE_BYTES];
  let r = s
    .call(
      "PUT",
      &values("big"),
      Some(&acme),
      Some("application/octet-stream"),
      big.clone(),
    )
    .await;
  assert_eq!(r.status, 204, "{}", r.text);
  let r = s
    .call("GET", &values("big"), Some(&acme), None, Vec::new())
    .await;
  assert_eq!(r.text.len(), big.len());
  let mut too_big = big;
  too_big.push(0);
  let r = s
    .call(
      "PUT",
      &values("big"),
      Some(&acme),
      Some("application/octet-stream"),
      too_big,
    )
    .await;
  assert!(r.status == 400 || r.status == 413, "{}", r.status);

  // Deletes, single and bulk; a namespace of another account is not found.
  assert_eq!(s.delete(&values("u%3A1%2Fa"), &acme).await.status, 204);
  assert_eq!(s.get(&values("u%3A1%2Fa"), &acme).await.status, 404);
  let r = s
    .post(
      &format!("/v1/kv/namespaces/{ns}/bulk/delete"),
      &acme,
      json!(["u:2", "u:3"]),
    )
    .await;
  assert_eq!(r.json["count"], json!(2));
  let r = s
    .post(
      &format!("/v1/kv/namespaces/{ns}/bulk/delete"),
      &other,
      json!(["u:10"]),
    )
    .await;
  assert_eq!(r.status, 404, "{r:?}");
  assert_eq!(
    s.delete(&format!("/v1/kv/namespaces/{ns}"), &other)
      .await
      .status,
    404
  );
  assert_eq!(
    s.delete(&format!("/v1/kv/namespaces/{ns}"), &acme)
      .await
      .status,
    204
  );
  assert_eq!(s.get(&values("u:10"), &acme).await.status, 404);
}

#[tokio::test]
async fn queues_take_messages_and_consumers_with_cloudflare_limits() {
  let s = start().await;
  let acme = s.account("acme").await;
  let other = s.account("other").await;
  assert_eq!(
    s.post("/v1/queues", &acme, json!({"name": "jobs"}))
      .await
      .status,
    201
  );
  assert_eq!(
    s.post("/v1/queues", &acme, json!({"name": "jobs"}))
      .await
      .status,
    409
  );
  assert_eq!(
    s.post("/v1/queues", &acme, json!({"name": "Bad Name"}))
      .await
      .status,
    400
  );
  assert_eq!(
    s.post("/v1/queues", &acme, json!({"name": "dlq"}))
      .await
      .status,
    201
  );

  let r = s
    .post("/v1/queues/jobs/messages", &acme, json!({"body": {"n": 1}}))
    .await;
  assert_eq!(r.status, 201, "{r:?}");
  let r = s
    .post(
      "/v1/queues/jobs/messages/batch",
      &acme,
      json!({"messages": [
        {"body": "hi", "content_type": "text"},
        {"body": "AAEC", "content_type": "bytes"},
        {"body": 1, "content_type": "json", "delay_seconds": 600},
      ]}),
    )
    .await;
  assert_eq!(r.json["ids"].as_array().map(Vec::len), Some(3), "{r:?}");
  let info = s.get("/v1/queues/jobs", &acme).await.json;
  assert_eq!(
    (info["backlog"].clone(), info["delayed"].clone()),
    (json!(3), json!(1)),
    "{info}"
  );
  assert_eq!(s.get("/v1/queues/jobs", &other).await.status, 404);
  let r = s
    .post("/v1/queues/jobs/messages", &other, json!({"body": 1}))
    .await;
  assert_eq!(r.status, 404, "{r:?}");

  for (body, needle) in [
    (
      json!({"body": 5, "content_type": "text"}),
      "must be a string",
    ),
    (
      json!({"body": "x", "content_type": "v8"}),
      "use json, text or bytes",
    ),
    (
      json!({"body": "x".repeat(128_001), "content_type": "text"}),
      "128 KB",
    ),
    (json!({"body": 1, "delay_seconds": 43_201}), "12 hours"),
  ] {
    let r = s.post("/v1/queues/jobs/messages", &acme, body).await;
    assert_eq!(r.status, 400, "{needle}: {r:?}");
    assert!(r.message().contains(needle), "{needle}: {r:?}");
  }
  let many: Vec<Value> = (0..101).map(|i| json!({"body": i})).collect();
  let r = s
    .post(
      "/v1/queues/jobs/messages/batch",
      &acme,
      json!({"messages": many}),
    )
    .await;
  assert!(r.message().contains("101"), "{r:?}");

  // Consumers: the worker and the dead-letter queue must exist here.
  let consumer = |worker: &str, dlq: &str| json!({"worker": worker, "dead_letter_queue": dlq});
  let r = s
    .send_json(
      "PUT",
      "/v1/queues/jobs/consumer",
      &acme,
      consumer("nope", "dlq"),
    )
    .await;
  assert_eq!(r.status, 404, "{r:?}");
  s.upload_and_deploy(&acme, "eater", "export default { queue() {} }")
    .await;
  let r = s
    .send_json(
      "PUT",
      "/v1/queues/jobs/consumer",
      &acme,
      consumer("eater", "jobs"),
    )
    .await;
  assert!(r.message().contains("its own dead-letter queue"), "{r:?}");
  let r = s
    .send_json(
      "PUT",
      "/v1/queues/jobs/consumer",
      &acme,
      consumer("eater", "gone"),
    )
    .await;
  assert!(r.message().contains("does not exist"), "{r:?}");
  let r = s
    .send_json(
      "PUT",
      "/v1/queues/jobs/consumer",
      &acme,
      json!({"worker": "eater", "max_batch_size": 101}),
    )
    .await;
  assert!(r.message().contains("max_batch_size is 101"), "{r:?}");
  let r = s
    .send_json(
      "PUT",
      "/v1/queues/jobs/consumer",
      &acme,
      consumer("eater", "dlq"),
    )
    .await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(
    r.json,
    json!({"worker": "eater", "max_batch_size": 10, "max_batch_timeout": 5, "max_retries": 3,
           "dead_letter_queue": "dlq", "retry_delay": 0})
  );
  assert_eq!(
    s.get("/v1/queues/jobs", &acme).await.json["consumer"],
    r.json
  );
  // The dead-letter queue is in use; the queue itself can go.
  assert_eq!(s.delete("/v1/queues/dlq", &acme).await.status, 409);
  assert_eq!(s.delete("/v1/queues/jobs", &acme).await.status, 204);
  assert_eq!(s.delete("/v1/queues/dlq", &acme).await.status, 204);
  assert_eq!(s.get("/v1/queues", &acme).await.json, json!({"queues": []}));
}

#[tokio::test]
async fn a_closed_month_s_invoice_is_computed_once_and_never_changes() {
  use std::str::FromStr as _;
  let prices = isola_control::billing::PriceSheet {
    currency: Some("EUR".into()),
    per_million_requests: rust_decimal::Decimal::from_str("0.50").unwrap(),
    per_million_cpu_ms: rust_decimal::Decimal::from_str("0.02").unwrap(),
    included_requests: 1_000,
    ..Default::default()
  };
  let s = start_with(prices).await;
  let acme = s.account("acme").await;
  let other = s.account("other").await;
  s.upload_and_deploy(
    &acme,
    "api",
    "export default { fetch() { return new Response('x') } }",
  )
  .await;
  s.db.enroll_edge("edge-1").unwrap();
  // 3,000 requests and 2,000 ms of CPU on 2026-10-03, 1,000 on 2026-10-31.
  let record = |end: u64, requests: u64, cpu_us: u64| UsageRecord {
    worker: "acme_api".into(),
    version: "h".into(),
    start: end - 1,
    end,
    usage: Usage {
      requests,
      cpu_us,
      ..Default::default()
    },
  };
  let batch = UsageBatch {
    id: "b1".into(),
    records: vec![
      record(1_791_000_000, 3_000, 2_000_000),
      record(1_793_480_000, 1_000, 0),
    ],
  };
  s.db.store_usage("edge-1", &batch).unwrap();
  let r = s.get("/v1/accounts/acme/invoices/2026-10", &acme).await;
  assert_eq!(r.status, 200, "{r:?}");
  // (4,000 − 1,000) × 0.50/M + 2,000 ms × 0.02/M = 0.0015 + 0.00004
  assert_eq!(r.json["total"], json!("0.00154"));
  assert_eq!(r.json["amount_due"], json!("0.00"));
  assert_eq!(r.json["currency"], json!("EUR"));
  assert_eq!(r.json["closed"], json!(true));
  let days: Vec<&str> = r.json["days"]
    .as_array()
    .unwrap()
    .iter()
    .map(|d| d["day"].as_str().unwrap())
    .collect();
  assert_eq!(days, ["2026-10-03", "2026-10-31"]);
  // Usage for October arriving now goes to this month's bill, not October's.
  let late = UsageBatch {
    id: "b2".into(),
    records: vec![record(1_793_400_000, 9_999, 0)],
  };
  s.db.store_usage("edge-1", &late).unwrap();
  let again = s.get("/v1/accounts/acme/invoices/2026-10", &acme).await;
  assert_eq!(again.json, r.json, "an issued invoice never changes");
  let csv = s.get("/v1/accounts/acme/invoices/2026-10.csv", &acme).await;
  assert!(
    csv
      .text
      .starts_with("worker,item,quantity,unit_price,amount,currency\n"),
    "{}",
    csv.text
  );
  assert!(
    csv.text.contains("api,requests,4000,0.0000005,0.002,EUR"),
    "{}",
    csv.text
  );
  // Another account cannot see it; a bad month is a 400.
  assert_eq!(
    s.get("/v1/accounts/acme/invoices/2026-10", &other)
      .await
      .status,
    404
  );
  assert_eq!(
    s.get("/v1/accounts/acme/invoices/2026-13", &acme)
      .await
      .status,
    400
  );
  assert_eq!(
    s.get("/v1/accounts/acme/invoices/2026-10", &s.admin)
      .await
      .json,
    r.json
  );
}

#[tokio::test]
async fn uploads_stay_under_their_account_s_ceilings_which_an_admin_can_raise() {
  let s = start().await;
  let acme = s.account("acme").await;
  let module: &[(&str, &[u8])] = &[(
    "worker.js",
    b"export default { fetch() { return new Response('x') } }",
  )];
  let greedy =
    json!({"main_module": "worker.js", "limits": {"memory_mb": 1_000_000_000u64, "cpu_ms": 20}});
  let r = s.upload(&acme, "alpha", greedy.clone(), module).await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(
    r.message()
      .contains("limits.memory_mb is 1000000000, above the ceiling of 128"),
    "{r:?}"
  );
  assert!(
    r.message().contains("PUT /v1/accounts/acme/limits"),
    "{r:?}"
  );

  let r = s.get("/v1/accounts/acme/limits", &acme).await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(r.json["ceilings"]["memory_mb"], 128);
  assert_eq!(r.json["ceilings"]["cpu_ms"], 30_000);
  assert_eq!(r.json["custom"], Value::Null);
  // Another account's ceilings do not exist for this caller; only admins set them.
  assert_eq!(
    s.get("/v1/accounts/default/limits", &acme).await.status,
    404
  );
  let raise = json!({"memory_mb": 2_000_000_000u64});
  let r = s
    .send_json("PUT", "/v1/accounts/acme/limits", &acme, raise.clone())
    .await;
  assert_eq!(r.status, 403, "{r:?}");
  let r = s
    .send_json("PUT", "/v1/accounts/nobody/limits", &s.admin, raise.clone())
    .await;
  assert_eq!(r.status, 404, "{r:?}");
  let r = s
    .send_json(
      "PUT",
      "/v1/accounts/acme/limits",
      &s.admin,
      json!({"memory_mb": 0}),
    )
    .await;
  assert_eq!(r.status, 400, "{r:?}");

  let r = s
    .send_json("PUT", "/v1/accounts/acme/limits", &s.admin, raise)
    .await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(r.json["ceilings"]["memory_mb"], 2_000_000_000u64);
  assert_eq!(r.json["ceilings"]["cpu_ms"], 30_000);
  let r = s.upload(&acme, "alpha", greedy.clone(), module).await;
  assert_eq!(r.status, 201, "{r:?}");

  // `{}` gives the account the operator's ceilings back.
  let r = s
    .send_json("PUT", "/v1/accounts/acme/limits", &s.admin, json!({}))
    .await;
  assert_eq!(r.json["custom"], Value::Null, "{r:?}");
  let r = s
    .upload(
      &acme,
      "alpha",
      json!({"main_module": "worker.js", "limits": {"cpu_ms": 40_000}}),
      module,
    )
    .await;
  assert_eq!(r.status, 400, "{r:?}");
  assert!(
    r.message()
      .contains("limits.cpu_ms is 40000, above the ceiling of 30000"),
    "{r:?}"
  );
}

#[tokio::test]
async fn a_token_past_its_rate_limit_gets_429_with_retry_after() {
  let s = start_configured(|state| {
    state.with_rate_limit(api::RateLimit {
      per_second: 1,
      burst: 3,
    })
  })
  .await;
  let token = s.db.create_account("acme", false).unwrap();
  for _ in 0..3 {
    assert_eq!(s.get("/v1/workers", &token).await.status, 200);
  }
  let r = s.get("/v1/workers", &token).await;
  assert_eq!(r.status, 429, "{r:?}");
  assert_eq!(r.error_code(), "rate_limited");
  let wait: u64 = r.retry_after.as_deref().unwrap().parse().unwrap();
  assert!((1..=2).contains(&wait), "{r:?}");
  // Each token has its own allowance.
  assert_eq!(s.get("/v1/workers", &s.admin).await.status, 200);
  // A bad token is not counted against anyone's: it never authenticates.
  assert_eq!(s.get("/v1/workers", "isola_bad").await.status, 401);
}

#[tokio::test]
async fn every_change_is_audited_and_only_admins_read_the_log() {
  let s = start().await;
  let acme = s.account("acme").await;
  s.upload_ok(&acme, "alpha", "one").await;
  let r = s.deploy(&acme, "alpha", "no-such-version").await;
  assert!(r.status >= 400, "{r:?}");
  assert_eq!(s.get("/v1/workers", &acme).await.status, 200);
  // An unauthenticated attempt leaves no entry (it names nobody).
  assert_eq!(
    s.post("/v1/accounts", "isola_bad", json!({"name": "x"}))
      .await
      .status,
    401
  );

  let r = s.get("/v1/audit", &acme).await;
  assert_eq!(r.status, 403, "{r:?}");
  let r = s.get("/v1/audit", &s.admin).await;
  assert_eq!(r.status, 200, "{r:?}");
  let entries = r.json["entries"].as_array().unwrap();
  let seen: Vec<(&str, &str, &str)> = entries
    .iter()
    .map(|e| {
      (
        e["account"].as_str().unwrap(),
        e["method"].as_str().unwrap(),
        e["path"].as_str().unwrap(),
      )
    })
    .collect();
  assert_eq!(
    seen,
    [
      ("acme", "POST", "/v1/workers/alpha/deployments"),
      ("acme", "POST", "/v1/workers/alpha/versions"),
      ("default", "POST", "/v1/accounts"),
    ],
    "{r:?}"
  );
  assert_eq!(entries[1]["status"], 201);
  assert!(entries[0]["status"].as_u64().unwrap() >= 400);
  assert!(
    entries[0]["client"]
      .as_str()
      .unwrap()
      .starts_with("127.0.0.1:"),
    "{r:?}"
  );
  assert_eq!(entries[0]["token"].as_str().unwrap().len(), 12);
  assert!(!r.text.contains(&acme[6..]), "the log holds no token");

  let r = s.get("/v1/audit?account=default&limit=1", &s.admin).await;
  assert_eq!(r.json["entries"].as_array().unwrap().len(), 1, "{r:?}");
  assert_eq!(r.json["entries"][0]["path"], "/v1/accounts");
  let r = s.get("/v1/audit?limit=5000", &s.admin).await;
  assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn json_bodies_are_limited() {
  let s = start().await;
  let big = format!("{{\"name\": \"{}\"}}", "a".repeat(3 << 20));
  let r = s
    .call(
      "POST",
      "/v1/accounts",
      Some(&s.admin),
      Some("application/json"),
      big.into_bytes(),
    )
    .await;
  assert_eq!(r.status, 413, "{r:?}");
  assert_eq!(r.error_code(), "too_large");
}

#[tokio::test]
async fn whoami_names_the_tokens_account_and_rights() {
  let s = start().await;
  let r = s.get("/v1/whoami", &s.admin).await;
  assert_eq!(r.status, 200, "{r:?}");
  assert_eq!(r.json, json!({"account": "default", "admin": true}));
  let acme = s.account("acme").await;
  let r = s.get("/v1/whoami", &acme).await;
  assert_eq!(r.json, json!({"account": "acme", "admin": false}));
  let r = s.get("/v1/whoami", "isola_0000").await;
  assert_eq!(r.status, 401, "{r:?}");
}

/// The dashboard at `/`: the embedded page and assets, with their types,
/// a CSP that allows no inline script, and ETags that answer 304.
#[tokio::test]
async fn the_dashboard_is_served_with_types_csp_and_etags() {
  let s = start().await;
  let get = |path: &'static str, etag: Option<String>| {
    let addr = s.addr;
    async move {
      let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
      let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
      tokio::spawn(conn);
      let mut req = hyper::Request::builder()
        .uri(path)
        .header("host", "control.test");
      if let Some(etag) = etag {
        req = req.header("if-none-match", etag);
      }
      let res = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
      let headers = res.headers().clone();
      let status = res.status().as_u16();
      let body = res.into_body().collect().await.unwrap().to_bytes();
      (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
  };
  let header = |h: &hyper::HeaderMap, name: &str| {
    h.get(name)
      .unwrap_or_else(|| panic!("no {name} header"))
      .to_str()
      .unwrap()
      .to_string()
  };
  let (status, h, html) = get("/", None).await;
  assert_eq!(status, 200);
  assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
  let csp = header(&h, "content-security-policy");
  assert!(csp.contains("script-src 'self';"), "{csp}");
  assert!(!csp.contains("unsafe-inline"), "{csp}");
  assert_eq!(header(&h, "x-content-type-options"), "nosniff");
  assert!(
    html.contains(r#"<script defer src="/assets/app.js"></script>"#),
    "{html}"
  );
  // No inline script: every <script> has a src and no body.
  assert_eq!(html.matches("<script").count(), 1, "{html}");

  let (status, h, js) = get("/assets/app.js", None).await;
  assert_eq!(status, 200);
  assert_eq!(header(&h, "content-type"), "text/javascript; charset=utf-8");
  assert!(header(&h, "content-security-policy").contains("default-src 'none'"));
  assert!(
    js.contains("/v1/whoami"),
    "the bundle signs in through the API"
  );
  let etag = header(&h, "etag");
  assert_eq!(header(&h, "cache-control"), "no-cache");
  let (status, h, body) = get("/assets/app.js", Some(etag.clone())).await;
  assert_eq!(status, 304);
  assert!(body.is_empty());
  assert_eq!(header(&h, "etag"), etag);

  let (status, h, _) = get("/assets/app.css", None).await;
  assert_eq!(status, 200);
  assert_eq!(header(&h, "content-type"), "text/css; charset=utf-8");
  let (status, h, _) = get("/assets/nope.js", None).await;
  assert_eq!(status, 404);
  assert!(header(&h, "content-type").contains("json"));
}
