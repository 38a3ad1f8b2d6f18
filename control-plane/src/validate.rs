//! Checks an upload before anything is stored, like Cloudflare does: names,
//! sizes and metadata first, then the worker is actually started in a V8
//! isolate so syntax errors, bad imports and top-level throws are refused
//! at upload rather than discovered on every edge.

use std::time::Duration;

use bytes::Bytes;
use isola_runtime::clean_message;
use isola_runtime::Config;
use isola_runtime::Runtime;
use isola_runtime::WorkerKey;

pub use isola_proto::upload::Upload;
use isola_proto::upload::UploadError;
pub use isola_proto::upload::MAX_MESSAGE_CHARS;
pub use isola_proto::upload::MAX_METADATA_BYTES;

/// How long a worker may take to evaluate its modules at upload.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an upload is refused; the message is meant for the uploader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("{0}")]
  Invalid(String),
  #[error("{0}")]
  TooLarge(String),
  /// The checker itself failed; not the upload's fault, so the API logs it
  /// and does not show it.
  #[error("cannot check the worker")]
  Internal(#[source] isola_runtime::Error),
}

/// Parses the metadata and checks every module of an upload for worker
/// `edge_name`: [`isola_proto::upload::check`], with this crate's errors.
pub fn check_upload(
  edge_name: &str,
  metadata: Option<&[u8]>,
  modules: Vec<(String, Bytes)>,
) -> Result<Upload, Error> {
  isola_proto::upload::check(edge_name, metadata, modules).map_err(|e| match e {
    UploadError::Invalid(m) => Error::Invalid(m),
    UploadError::TooLarge(m) => Error::TooLarge(m),
  })
}

/// Starts uploaded workers to see that they start. One V8 thread and no
/// stock of blank isolates: uploads are rare, memory is not.
pub struct Validator {
  runtime: Runtime,
}

impl Validator {
  pub fn new() -> Result<Self, isola_runtime::Error> {
    Ok(Self {
      // Only loads, never serves: no quarantine thread needed.
      runtime: Runtime::new(
        Config::default()
          .threads(1)
          .stock(0)
          .fairness(isola_runtime::Fairness::default().enabled(false)),
      )?,
    })
  }

  /// Loads `upload` into an isolate (evaluating every module it imports,
  /// under the runtime's startup CPU and memory limits) and drops it again.
  pub async fn check_starts(&self, upload: &Upload) -> Result<(), Error> {
    let manifest = &upload.manifest;
    let hash = manifest.version_id();
    let (bundle, config) = isola_runtime::from_manifest(manifest, &hash, upload.modules.clone())
      .map_err(|e| Error::Invalid(clean_message(&e.to_string())))?;
    // A key of its own, so a concurrent check of the same code cannot be
    // mistaken for this one having started.
    let key = WorkerKey::new(format!("check-{}", uuid::Uuid::new_v4().simple()), hash);
    let result =
      tokio::time::timeout(START_TIMEOUT, self.runtime.preload(&key, bundle, config)).await;
    self.runtime.evict(&key);
    match result {
      Ok(Ok(())) => Ok(()),
      Ok(Err(e)) if e.is_code_error() || e.limit().is_some() => {
        Err(Error::Invalid(clean_message(&e.to_string())))
      }
      Ok(Err(e)) => Err(Error::Internal(e)),
      Err(_) => Err(Error::Invalid(format!(
        "the worker did not finish starting within {} s (a top-level await that never \
         settles?); move slow work from the top level into the fetch handler",
        START_TIMEOUT.as_secs()
      ))),
    }
  }
}

#[cfg(test)]
mod tests {
  use isola_proto::manifest::MAX_MODULES;
  use isola_proto::manifest::MAX_MODULE_BYTES;

  use super::*;

  const WORKER: &str = "export default { fetch() { return new Response('ok') } }\n";
  const META: &[u8] = br#"{"main_module": "worker.js"}"#;

  fn module(name: &str, src: &str) -> (String, Bytes) {
    (name.to_string(), Bytes::from(src.to_string()))
  }

  fn invalid(result: Result<Upload, Error>) -> String {
    match result {
      Err(Error::Invalid(m)) => m,
      other => panic!("expected Invalid, got {other:?}"),
    }
  }

  #[test]
  fn bad_module_names_are_refused() {
    for name in [
      "/abs.js",
      "a/../b.js",
      "./a.js",
      "a//b.js",
      "a\\b.js",
      "noext",
      "x.ts",
    ] {
      let msg = invalid(check_upload(
        "acme_api",
        Some(META),
        vec![module("worker.js", WORKER), module(name, "")],
      ));
      assert!(msg.contains("invalid module name"), "{name}: {msg}");
    }
    check_upload(
      "acme_api",
      Some(META),
      vec![module("worker.js", WORKER), module("lib/util.mjs", "")],
    )
    .unwrap();
  }

  #[test]
  fn metadata_is_checked() {
    let modules = || vec![module("worker.js", WORKER)];
    let msg = invalid(check_upload("acme_api", None, modules()));
    assert!(msg.contains("no `metadata` part"), "{msg}");
    let msg = invalid(check_upload("acme_api", Some(b"{}"), modules()));
    assert!(msg.contains("main_module"), "{msg}");
    let msg = invalid(check_upload(
      "acme_api",
      Some(br#"{"main_module": "worker.js", "bindings": []}"#),
      modules(),
    ));
    assert!(msg.contains("unknown field `bindings`"), "{msg}");
    let msg = invalid(check_upload(
      "acme_api",
      Some(br#"{"main_module": "worker.js", "vars": [1]}"#),
      modules(),
    ));
    assert!(msg.contains("invalid metadata part"), "{msg}");
    let msg = invalid(check_upload(
      "acme_api",
      Some(br#"{"main_module": "worker.js", "limits": {"cpu_ms": 0}}"#),
      modules(),
    ));
    assert!(msg.contains("limits.cpu_ms is 0"), "{msg}");
    let msg = invalid(check_upload(
      "acme_api",
      Some(br#"{"main_module": "worker.js", "compatibility_date": "soon"}"#),
      modules(),
    ));
    assert!(msg.contains("compatibility_date"), "{msg}");
    let upload = check_upload(
      "acme_api",
      Some(
        br#"{"main_module": "worker.js", "vars": {"A": "x", "B": {"n": 1}},
             "limits": {"cpu_ms": 50}, "compatibility_date": "2024-09-23"}"#,
      ),
      modules(),
    )
    .unwrap();
    assert_eq!(upload.manifest.worker, "acme_api");
    assert_eq!(upload.manifest.limits.cpu_ms, Some(50));
    assert_eq!(upload.manifest.vars["B"], serde_json::json!({"n": 1}));
  }

  #[test]
  fn main_module_must_be_uploaded() {
    let msg = invalid(check_upload(
      "acme_api",
      Some(br#"{"main_module": "index.js"}"#),
      vec![module("worker.js", WORKER)],
    ));
    assert!(
      msg.contains("\"index.js\" is not among the uploaded modules (worker.js)"),
      "{msg}"
    );
    let msg = invalid(check_upload(
      "acme_api",
      Some(br#"{"main_module": "data.json"}"#),
      vec![module("data.json", "{}")],
    ));
    assert!(msg.contains("must be JavaScript"), "{msg}");
    let msg = invalid(check_upload(
      "acme_api",
      Some(META),
      vec![module("worker.js", WORKER), module("worker.js", WORKER)],
    ));
    assert!(msg.contains("uploaded twice"), "{msg}");
  }

  #[test]
  fn sizes_are_limited() {
    let big = Bytes::from(vec![b' '; MAX_MODULE_BYTES + 1]);
    let result = check_upload(
      "acme_api",
      Some(META),
      vec![module("worker.js", WORKER), ("big.bin".into(), big)],
    );
    assert!(
      matches!(&result, Err(Error::TooLarge(m)) if m.contains("\"big.bin\"")),
      "{result:?}"
    );
    let chunk = Bytes::from(vec![b' '; MAX_MODULE_BYTES]);
    let mut modules = vec![module("worker.js", WORKER)];
    for i in 0..3 {
      modules.push((format!("{i}.bin"), chunk.clone()));
    }
    let result = check_upload("acme_api", Some(META), modules);
    assert!(
      matches!(&result, Err(Error::TooLarge(m)) if m.contains("per upload")),
      "{result:?}"
    );
    let modules = (0..=MAX_MODULES)
      .map(|i| (format!("m{i}.txt"), Bytes::new()))
      .collect();
    let result = check_upload("acme_api", Some(META), modules);
    assert!(
      matches!(&result, Err(Error::TooLarge(m)) if m.contains("modules")),
      "{result:?}"
    );
  }

  #[test]
  fn the_manifest_is_canonical() {
    let a = check_upload(
      "acme_api",
      Some(META),
      vec![module("worker.js", WORKER), module("a.txt", "x")],
    )
    .unwrap();
    let b = check_upload(
      "acme_api",
      Some(META),
      vec![module("a.txt", "x"), module("worker.js", WORKER)],
    )
    .unwrap();
    assert_eq!(a.manifest.version_id(), b.manifest.version_id());
    let names: Vec<&str> = a.modules.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a.txt", "worker.js"]);
    let c = check_upload("acme_web", Some(META), a.modules.clone()).unwrap();
    assert_ne!(a.manifest.version_id(), c.manifest.version_id());
  }

  async fn start(modules: Vec<(String, Bytes)>) -> Result<(), Error> {
    let upload = check_upload("acme_api", Some(META), modules)?;
    Validator::new().unwrap().check_starts(&upload).await
  }

  fn start_error(result: Result<(), Error>) -> String {
    match result {
      Err(Error::Invalid(m)) => m,
      other => panic!("expected Invalid, got {other:?}"),
    }
  }

  #[tokio::test]
  async fn a_good_worker_starts() {
    start(vec![
      module(
        "worker.js",
        "import greeting from './hello.txt';\nimport { n } from './lib/n.js';\n\
         export default { fetch() { return new Response(greeting + n) } }",
      ),
      module("hello.txt", "hi"),
      module("lib/n.js", "export const n = 1;"),
    ])
    .await
    .unwrap();
  }

  #[tokio::test]
  async fn a_syntax_error_names_module_line_and_column() {
    let msg = start_error(
      start(vec![
        module("worker.js", "import './lib.js';\n".to_string().as_str()),
        module(
          "lib.js",
          "export const a = 1;\nexport const b = 2;\nconst = ;\n",
        ),
      ])
      .await,
    );
    assert!(msg.contains("SyntaxError"), "{msg}");
    assert!(msg.contains(" lib.js:3:7"), "{msg}");
    assert!(!msg.contains("__isola"), "{msg}");
    let msg = start_error(
      start(vec![module(
        "worker.js",
        "export default {\n  fetch() {\n}",
      )])
      .await,
    );
    assert!(msg.contains(" worker.js:3:"), "{msg}");
  }

  #[tokio::test]
  async fn bad_imports_and_top_level_throws_are_refused() {
    let msg = start_error(
      start(vec![module(
        "worker.js",
        "import x from './missing.js';\nexport default { fetch() {} }",
      )])
      .await,
    );
    assert!(msg.contains("missing.js"), "{msg}");
    let msg = start_error(
      start(vec![module(
        "worker.js",
        "throw new Error('boom at startup');\nexport default { fetch() {} }",
      )])
      .await,
    );
    assert!(msg.contains("boom at startup"), "{msg}");
    let msg = start_error(start(vec![module("worker.js", "export const x = 1;")]).await);
    assert!(msg.contains("no fetch handler"), "{msg}");
    start(vec![module(
      "worker.js",
      "addEventListener('fetch', (e) => e.respondWith(new Response('sw')));",
    )])
    .await
    .unwrap();
  }

  #[tokio::test]
  async fn a_busy_loop_at_the_top_level_is_stopped() {
    let validator = Validator::new().unwrap();
    let busy = check_upload(
      "acme_api",
      Some(META),
      vec![module("worker.js", "while (true) {}\nexport default {}")],
    )
    .unwrap();
    let msg = start_error(validator.check_starts(&busy).await);
    assert!(msg.contains("cpu limit"), "{msg}");
    // The checker's V8 thread is free again.
    let good = check_upload("acme_api", Some(META), vec![module("worker.js", WORKER)]).unwrap();
    validator.check_starts(&good).await.unwrap();
  }
}
