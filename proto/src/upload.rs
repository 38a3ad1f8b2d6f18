//! The static checks of an upload, before anything is stored: the metadata
//! part, module names and kinds, sizes and bindings. No IO and no V8, so the
//! control plane runs them first and the fuzzer runs them on anything.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use bytes::Bytes;
use serde::Deserialize;

use crate::egress::EgressSpec;
use crate::manifest::sha256_hex;
use crate::manifest::KvBinding;
use crate::manifest::LimitsSpec;
use crate::manifest::Manifest;
use crate::manifest::ModuleRef;
use crate::manifest::QueueBindings;
use crate::manifest::ServiceBinding;
use crate::manifest::MAX_MODULES;
use crate::manifest::MAX_MODULE_BYTES;
use crate::manifest::MAX_VERSION_BYTES;
use crate::names::check_module_name;
use crate::names::ModuleKind;

/// Largest `metadata` part (default 1 MiB; it holds the vars).
pub const MAX_METADATA_BYTES: usize = 1 << 20;

/// Why an upload is refused; the message is meant for the uploader.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UploadError {
  #[error("{0}")]
  Invalid(String),
  #[error("{0}")]
  TooLarge(String),
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
  /// `egress = { allow = [...] }`: narrows the node's egress policy.
  #[serde(default)]
  egress: Option<EgressSpec>,
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
pub fn check(
  edge_name: &str,
  metadata: Option<&[u8]>,
  mut modules: Vec<(String, Bytes)>,
) -> Result<Upload, UploadError> {
  let invalid = |m: String| UploadError::Invalid(m);
  let Some(metadata) = metadata else {
    return Err(invalid(
      "the upload has no `metadata` part; add one with JSON like {\"main_module\": \"worker.js\"}"
        .into(),
    ));
  };
  if metadata.len() > MAX_METADATA_BYTES {
    return Err(UploadError::TooLarge(format!(
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
  if let Some(egress) = &metadata.egress {
    egress
      .entries()
      .map_err(|e| invalid(format!("invalid metadata: {e}")))?;
  }

  if modules.is_empty() {
    return Err(invalid(format!(
      "the upload has no modules; add a part named {:?} holding the main module",
      metadata.main_module
    )));
  }
  if modules.len() > MAX_MODULES {
    return Err(UploadError::TooLarge(format!(
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
      return Err(UploadError::TooLarge(format!(
        "module {name:?} is {} bytes, more than the limit of {MAX_MODULE_BYTES} bytes per module",
        bytes.len()
      )));
    }
    total += bytes.len();
  }
  if total > MAX_VERSION_BYTES {
    return Err(UploadError::TooLarge(format!(
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
    egress: metadata.egress,
  };
  Ok(Upload {
    manifest,
    message: metadata.message,
    modules,
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  fn upload(metadata: &str) -> Result<Upload, UploadError> {
    check(
      "acct--w",
      Some(metadata.as_bytes()),
      vec![("worker.js".into(), Bytes::from_static(b"export default {}"))],
    )
  }

  #[test]
  fn a_worker_egress_list_travels_in_the_manifest_and_a_bad_entry_is_named() {
    let ok = upload(
      r#"{"main_module": "worker.js", "egress": {"allow": ["api.example.com:443", "10.1.2.0/24"]}}"#,
    )
    .unwrap();
    assert_eq!(
      ok.manifest.egress.unwrap().allow,
      ["api.example.com:443", "10.1.2.0/24"]
    );
    let none = upload(r#"{"main_module": "worker.js"}"#).unwrap();
    assert_eq!(none.manifest.egress, None);
    let err = upload(
      r#"{"main_module": "worker.js", "egress": {"allow": ["api.example.com:443", "api.example.com:https"]}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
      err.starts_with("invalid metadata: egress.allow[1]: ")
        && err.contains("\"api.example.com:https\"")
        && err.contains("\"https\" is not a port"),
      "{err}"
    );
    let err = upload(r#"{"main_module": "worker.js", "egress": {"deny": []}}"#)
      .unwrap_err()
      .to_string();
    assert!(err.contains("unknown field `deny`"), "{err}");
  }
}
