//! Module blobs in S3-compatible storage: a control plane started with
//! `--blobs s3://BUCKET/PREFIX` against a real S3 server on loopback
//! (moto's, from PyPI: `tests/support/s3-server.sh` installs it). Upload →
//! deploy → an edge serves it, the blob is listed in the bucket (and
//! nothing is in the data directory), a restarted control plane still
//! serves a new, empty edge from the bucket, and a blob changed in the
//! bucket is named in the control plane's log until the module is uploaded
//! again.
//!
//! Without moto_server (`ISOLA_S3_SERVER`, or the venv the script makes in
//! the target folder) the test says so and passes, unless
//! ISOLA_S3_REQUIRED is set: `.ci/run` installs the server and sets it (as
//! the anycast test does with BIRD and ISOLA_ANYCAST_REQUIRED).

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use isola_integration::bin;
use isola_integration::http;
use isola_integration::Control;
use isola_integration::Proc;
use isola_integration::Response;
use serde_json::json;

/// A bound on waits, not a timing claim: an edge starts V8 and connects.
const LIMIT: Duration = Duration::from_secs(30);
const BUCKET: &str = "isola-blobs";
const PREFIX: &str = "fleet-a";

const WORKER: &str =
  "export default {\n  fetch() {\n    return new Response(\"shop served from s3\\n\");\n  },\n};\n";

/// moto's server: `ISOLA_S3_SERVER`, else the venv `s3-server.sh` makes
/// beside the binaries' folder (`$CARGO_TARGET_DIR/s3-venv`).
pub(crate) fn moto_server() -> Option<PathBuf> {
  if let Some(path) = std::env::var_os("ISOLA_S3_SERVER") {
    return Some(PathBuf::from(path));
  }
  let control = bin("isola-control");
  let target = control.parent()?.parent()?;
  let path = target.join("s3-venv/bin/moto_server");
  path.exists().then_some(path)
}

/// The S3 server, on a port it picked and printed.
pub(crate) struct S3 {
  _proc: Proc,
  pub(crate) addr: SocketAddr,
}

impl S3 {
  pub(crate) fn start(program: &Path) -> S3 {
    let mut proc = Proc::spawn(Command::new(program).args(["-H", "127.0.0.1", "-p", "0"]));
    let line = proc.expect_line("Running on http://");
    let addr = line
      .split("http://")
      .nth(1)
      .and_then(|rest| {
        rest
          .split(|c: char| c.is_whitespace() || c == '\u{1b}')
          .next()
      })
      .and_then(|a| a.parse().ok())
      .unwrap_or_else(|| panic!("no address in {line:?}"));
    S3 { _proc: proc, addr }
  }

  /// A request with a made-up signature: moto does not check signatures,
  /// but takes an unsigned request as anonymous, which may not replace or
  /// delete objects.
  pub(crate) fn call(&self, method: &str, path: &str) -> Response {
    self.call_with(method, path, b"")
  }

  fn call_with(&self, method: &str, path: &str, body: &[u8]) -> Response {
    let auth = "AWS4-HMAC-SHA256 Credential=isola-test/20260101/us-east-1/s3/aws4_request, \
                SignedHeaders=host, Signature=00";
    http(
      self.addr,
      method,
      &self.addr.to_string(),
      path,
      &[("Authorization", auth)],
      body,
    )
    .unwrap_or_else(|| panic!("the S3 server did not answer {method} {path}"))
  }

  /// The keys in the bucket under `prefix`.
  fn keys(&self, prefix: &str) -> Vec<String> {
    let r = self.call("GET", &format!("/{BUCKET}?list-type=2&prefix={prefix}"));
    assert_eq!(r.status, 200, "list: {}", r.text());
    r.text()
      .split("<Key>")
      .skip(1)
      .filter_map(|s| s.split("</Key>").next())
      .map(str::to_string)
      .collect()
  }
}

#[test]
fn blobs_in_s3_serve_edges_across_a_control_plane_restart() {
  let Some(moto) = moto_server() else {
    assert!(
      std::env::var_os("ISOLA_S3_REQUIRED").is_none(),
      "ISOLA_S3_REQUIRED is set, but moto_server is missing; install it with \
       tests/support/s3-server.sh or name it in ISOLA_S3_SERVER"
    );
    eprintln!(
      "S3 blob store test skipped: no moto_server (run tests/support/s3-server.sh, or set \
       ISOLA_S3_SERVER)"
    );
    return;
  };
  let s3 = S3::start(&moto);
  let r = s3.call("PUT", &format!("/{BUCKET}"));
  assert_eq!(r.status, 200, "create the bucket: {}", r.text());

  let dir = tempfile::tempdir().unwrap();
  let endpoint = format!("http://{}", s3.addr);
  let env = [
    ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ("AWS_ALLOW_HTTP", "true"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_ACCESS_KEY_ID", "isola-test"),
    ("AWS_SECRET_ACCESS_KEY", "isola-test-secret"),
  ];
  let blobs = format!("s3://{BUCKET}/{PREFIX}");
  let mut control =
    Control::init_and_start_env(&dir.path().join("control"), &["--blobs", &blobs], &env);
  let store = control
    .proc
    .as_mut()
    .unwrap()
    .expect_event("blob store")
    .field("store");
  assert_eq!(store.as_deref(), Some(blobs.as_str()));

  let edge0 = control.enroll("edge-0", &dir.path().join("edge-0"), 200);
  let _edge0_proc = edge0.start();
  let v1 = control.upload("shop", WORKER, json!({}));
  control.route("shop.test/*", "shop");
  control.deploy("shop", &v1);
  assert!(
    edge0
      .wait_for("shop.test", "shop served from s3", LIMIT)
      .is_some(),
    "edge-0: {:?}",
    edge0.get("shop.test", "/")
  );

  // The module is in the bucket under the prefix, as ab/cdef…, and not
  // in the data directory.
  let version = control.api("GET", &format!("/v1/workers/shop/versions/{v1}"), None);
  let sha = version.json()["modules"][0]["sha256"]
    .as_str()
    .expect("a module hash")
    .to_string();
  let key = format!("{PREFIX}/{}/{}", &sha[..2], &sha[2..]);
  assert_eq!(s3.keys(&format!("{PREFIX}/")), std::slice::from_ref(&key));
  assert!(!control.dir.join("blobs").exists());

  // Restarted, the control plane serves a new edge (empty store) from the
  // bucket; the first edge keeps serving.
  control.proc.take().unwrap().terminate();
  control.start();
  let edge1 = control.enroll("edge-1", &dir.path().join("edge-1"), 200);
  let _edge1_proc = edge1.start();
  assert!(
    edge1
      .wait_for("shop.test", "shop served from s3", LIMIT)
      .is_some(),
    "edge-1 after the restart: {:?}",
    edge1.get("shop.test", "/")
  );
  assert!(edge0
    .wait_for("shop.test", "shop served from s3", LIMIT)
    .is_some());

  // A blob changed in the bucket: the log names blob, version and store.
  let r = s3.call_with("PUT", &format!("/{BUCKET}/{key}"), b"export default {};\n");
  assert_eq!(r.status, 200, "overwrite: {}", r.text());
  let edge2 = control.enroll("edge-2", &dir.path().join("edge-2"), 200);
  let _edge2_proc = edge2.start();
  let event = control.proc.as_mut().unwrap().expect_event(
    "cannot read a version's bundle; upload the version again to repair a missing or corrupt \
     blob",
  );
  let error = event.field("error").unwrap_or_default();
  assert!(
    error.contains(&sha) && error.contains(&blobs) && error.contains("corrupt"),
    "{error}"
  );
  assert_eq!(event.field("store").as_deref(), Some(blobs.as_str()));
  assert!(event.field("version").is_some_and(|v| !v.is_empty()));
  // Uploading the module again repairs it; the deploy brings edge-2 along.
  let v2 = control.upload("shop", WORKER, json!({}));
  control.deploy("shop", &v2);
  assert_eq!(s3.keys(&format!("{PREFIX}/")), [key]);
  assert!(
    edge2
      .wait_for("shop.test", "shop served from s3", LIMIT)
      .is_some(),
    "edge-2 after the repair: {:?}",
    edge2.get("shop.test", "/")
  );
}
