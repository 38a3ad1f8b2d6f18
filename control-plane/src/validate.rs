//! Checks an upload before anything is stored, like Cloudflare does: names,
//! sizes and metadata first, then the worker is actually started in a V8
//! isolate so syntax errors, bad imports and top-level throws are refused
//! at upload rather than discovered on every edge.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use isola_proto::manifest::sha256_hex;
use isola_proto::manifest::KvBinding;
use isola_proto::manifest::LimitsSpec;
use isola_proto::manifest::Manifest;
use isola_proto::manifest::ModuleRef;
use isola_proto::manifest::QueueBindings;
use isola_proto::manifest::ServiceBinding;
use isola_proto::manifest::MAX_MODULES;
use isola_proto::manifest::MAX_MODULE_BYTES;
use isola_proto::manifest::MAX_VERSION_BYTES;
use isola_proto::names::check_module_name;
use isola_proto::names::ModuleKind;
use isola_runtime::clean_message;
use isola_runtime::Config;
use isola_runtime::Runtime;
use isola_runtime::WorkerKey;
use serde::Deserialize;

/// Largest `metadata` part (default 1 MiB; it holds the vars).
pub const MAX_METADATA_BYTES: usize = 1 << 20;
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

/// The `metadata` part of an upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
  main_module: String,
  #[serde(default)]
  vars: BTreeMap<String, serde_json::Value>,
  #[serde(default)]
  limits: LimitsSpec,
  #[serde(default)]
  compatibility_date: Option<String>,
  #[serde(default)]
  services: Vec<ServiceBinding>,
  #[serde(default)]
  kv_namespaces: Vec<KvBinding>,
  #[serde(default)]
  queues: QueueBindings,
  /// Stored with the version, outside the manifest.
  #[serde(default)]
  message: Option<String>,
}

/// Bindings: each a JS identifier used once and not also a var; each
/// service a worker name. Whether services and namespaces exist is the
/// API's check (it needs the account's).
fn check_bindings(
  services: &[ServiceBinding],
  kv: &[KvBinding],
  vars: &BTreeMap<String, serde_json::Value>,
) -> Result<(), String> {
  let identifier = |s: &str| {
    let mut chars = s.chars();
    chars
      .next()
      .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
      && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
  };
  for (i, s) in services.iter().enumerate() {
    let at = format!("services[{i}]");
    if !identifier(&s.binding) {
      return Err(format!(
        "{at}.binding {:?} is not a JavaScript identifier (letters, digits, _ and $; not starting with a digit)",
        s.binding
      ));
    }
    if services[..i].iter().any(|o| o.binding == s.binding)
      || vars.contains_key(&s.binding)
      || kv.iter().any(|k| k.binding == s.binding)
    {
      return Err(format!(
        "{at}.binding {:?} is used twice (by another binding or a var); give each its own name",
        s.binding
      ));
    }
    if s.service.is_empty() || s.service.len() > 63 {
      return Err(format!("{at}.service {:?} is not a worker name", s.service));
    }
    if let Some(e) = &s.entrypoint {
      if !identifier(e) {
        return Err(format!("{at}.entrypoint {e:?} is not an export name"));
      }
    }
  }
  for (i, k) in kv.iter().enumerate() {
    let at = format!("kv_namespaces[{i}]");
    if !identifier(&k.binding) {
      return Err(format!(
        "{at}.binding {:?} is not a JavaScript identifier (letters, digits, _ and $; not starting with a digit)",
        k.binding
      ));
    }
    if kv[..i].iter().any(|o| o.binding == k.binding) || vars.contains_key(&k.binding) {
      return Err(format!(
        "{at}.binding {:?} is used twice (by another binding or a var); give each its own name",
        k.binding
      ));
    }
  }
  Ok(())
}

/// Longest version message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// An upload that passed the static checks.
#[derive(Debug)]
pub struct Upload {
  pub manifest: Manifest,
  /// The uploader's note about the version; not in the manifest, so it does
  /// not change the version's hash.
  pub message: Option<String>,
  /// Module bytes in the manifest's module order (sorted by name).
  pub modules: Vec<(String, Bytes)>,
}

/// Parses the metadata and checks every module of an upload for worker
/// `edge_name` (its name on edges, which the manifest carries).
pub fn check_upload(
  edge_name: &str,
  metadata: Option<&[u8]>,
  mut modules: Vec<(String, Bytes)>,
) -> Result<Upload, Error> {
  let invalid = |m: String| Error::Invalid(m);
  let Some(metadata) = metadata else {
    return Err(invalid(
      "the upload has no `metadata` part; add one with JSON like {\"main_module\": \"worker.js\"}"
        .into(),
    ));
  };
  if metadata.len() > MAX_METADATA_BYTES {
    return Err(Error::TooLarge(format!(
      "the metadata part is {} bytes, more than the limit of {MAX_METADATA_BYTES}; keep large \
       data in a module instead of vars",
      metadata.len()
    )));
  }
  let metadata: Metadata = serde_json::from_slice(metadata).map_err(|e| {
    invalid(format!(
      "invalid metadata part: {e}; expected JSON like {{\"main_module\": \"worker.js\", \"vars\": \
       {{}}, \"limits\": {{\"cpu_ms\": 50}}}}"
    ))
  })?;
  metadata
    .limits
    .validate()
    .map_err(|e| invalid(format!("invalid metadata: {e}")))?;
  if let Some(date) = &metadata.compatibility_date {
    let ok = date.len() == 10
      && date.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        _ => b.is_ascii_digit(),
      });
    if !ok {
      return Err(invalid(format!(
        "invalid metadata: compatibility_date {date:?} is not a date like \"2024-09-23\""
      )));
    }
  }
  if let Some(message) = &metadata.message {
    let chars = message.chars().count();
    if chars > MAX_MESSAGE_CHARS {
      return Err(invalid(format!(
        "invalid metadata: the message is {chars} characters, more than the limit of \
         {MAX_MESSAGE_CHARS}"
      )));
    }
  }
  if let Some(name) = metadata.vars.keys().find(|k| k.is_empty()) {
    return Err(invalid(format!(
      "invalid metadata: var name {name:?} is empty"
    )));
  }
  check_bindings(&metadata.services, &metadata.kv_namespaces, &metadata.vars)
    .map_err(|e| invalid(format!("invalid metadata: {e}")))?;

  if modules.is_empty() {
    return Err(invalid(format!(
      "the upload has no modules; add a part named {:?} holding the main module",
      metadata.main_module
    )));
  }
  if modules.len() > MAX_MODULES {
    return Err(Error::TooLarge(format!(
      "the upload has {} modules, more than the limit of {MAX_MODULES}; bundle them",
      modules.len()
    )));
  }
  let mut total = 0usize;
  let mut seen = BTreeSet::new();
  for (name, bytes) in &modules {
    check_module_name(name).map_err(|e| invalid(e.to_string()))?;
    if !seen.insert(name.as_str()) {
      return Err(invalid(format!(
        "module {name:?} is uploaded twice; send each module once"
      )));
    }
    if bytes.len() > MAX_MODULE_BYTES {
      return Err(Error::TooLarge(format!(
        "module {name:?} is {} bytes, more than the limit of {MAX_MODULE_BYTES} bytes per module",
        bytes.len()
      )));
    }
    total += bytes.len();
  }
  if total > MAX_VERSION_BYTES {
    return Err(Error::TooLarge(format!(
      "the modules total {total} bytes, more than the limit of {MAX_VERSION_BYTES} bytes per \
       upload"
    )));
  }
  if !seen.contains(metadata.main_module.as_str()) {
    let names: Vec<&str> = seen.iter().copied().collect();
    return Err(invalid(format!(
      "the main module {:?} is not among the uploaded modules ({}); name a part after it or fix \
       main_module",
      metadata.main_module,
      names.join(", ")
    )));
  }
  if !matches!(
    ModuleKind::from_name(&metadata.main_module),
    Some(ModuleKind::EsModule)
  ) {
    return Err(invalid(format!(
      "the main module {:?} must be JavaScript (.js or .mjs)",
      metadata.main_module
    )));
  }

  modules.sort_by(|a, b| a.0.cmp(&b.0));
  let manifest = Manifest {
    worker: edge_name.to_string(),
    main_module: metadata.main_module,
    modules: modules
      .iter()
      .map(|(name, bytes)| ModuleRef {
        name: name.clone(),
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
      })
      .collect(),
    vars: metadata.vars,
    limits: metadata.limits,
    compatibility_date: metadata.compatibility_date,
    services: metadata.services,
    kv_namespaces: metadata.kv_namespaces,
    queues: metadata.queues,
  };
  Ok(Upload {
    manifest,
    message: metadata.message,
    modules,
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
