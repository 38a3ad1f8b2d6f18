//! The unit of deployment both sides agree on: a worker version's manifest,
//! named by the sha256 of its canonical JSON, so the control plane and every
//! edge compute the same id for the same upload.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest as _;
use sha2::Sha256;

use crate::egress::EgressSpec;

/// Largest module of a version (Cloudflare's per-module limit).
pub const MAX_MODULE_BYTES: usize = 10 << 20;
/// Largest version, all modules together (Cloudflare's worker size limit).
/// The control channel's frame cap is derived from it: a version travels in
/// one frame of its own.
pub const MAX_VERSION_BYTES: usize = 25 << 20;
/// Most modules in a version.
pub const MAX_MODULES: usize = 1000;

/// One worker version, immutable once written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
  pub worker: String,
  pub main_module: String,
  /// Sorted by name in the canonical form.
  pub modules: Vec<ModuleRef>,
  /// `env` bindings; text vars are JSON strings.
  #[serde(default)]
  pub vars: BTreeMap<String, serde_json::Value>,
  #[serde(default)]
  pub limits: LimitsSpec,
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub compatibility_date: Option<String>,
  /// Service bindings: `env.BINDING` calls another worker of the same
  /// account on the same edge. Left out of the JSON when empty, so versions
  /// without bindings keep their ids.
  #[serde(default, skip_serializing_if = "Vec::is_empty")]
  pub services: Vec<ServiceBinding>,
  /// KV bindings: `env.BINDING` reads and writes namespace `id`.
  #[serde(default, skip_serializing_if = "Vec::is_empty")]
  pub kv_namespaces: Vec<KvBinding>,
  /// Queue producer bindings: `env.BINDING.send()` writes to `queue`.
  #[serde(default, skip_serializing_if = "QueueBindings::is_empty")]
  pub queues: QueueBindings,
  /// The worker's own egress allow list, narrowing the node's. Left out of
  /// the JSON when unset, so versions without one keep their ids.
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub egress: Option<EgressSpec>,
}

/// `queues = { producers = [{ binding, queue }] }`, wrangler's keys. (A
/// consumer is set on the queue, not in a version.)
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueBindings {
  #[serde(default)]
  pub producers: Vec<QueueProducer>,
}

impl QueueBindings {
  pub fn is_empty(&self) -> bool {
    self.producers.is_empty()
  }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct QueueProducer {
  pub binding: String,
  /// The queue's name in the account.
  pub queue: String,
}

/// `kv_namespaces = [{ binding, id }]`, wrangler's keys.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct KvBinding {
  pub binding: String,
  /// The namespace's id (from `POST /v1/kv/namespaces`).
  pub id: String,
}

/// `services = [{ binding, service, entrypoint? }]`, wrangler's keys.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct ServiceBinding {
  /// The name in `env`.
  pub binding: String,
  /// The callee: a worker name in the caller's account.
  pub service: String,
  /// A named `WorkerEntrypoint` class export of the callee; its default
  /// export when unset.
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub entrypoint: Option<String>,
}

/// A module of a version: its name in the bundle and the blob holding it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModuleRef {
  pub name: String,
  /// Lowercase hex sha256 of the module's bytes.
  pub sha256: String,
  pub size: u64,
}

/// Per-version limits; unset fields take the runtime's defaults. Unset
/// fields are left out of the JSON so adding a field later keeps old ids.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub cpu_ms: Option<u64>,
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub wall_ms: Option<u64>,
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub memory_mb: Option<u64>,
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub subrequests: Option<u32>,
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub request_body_bytes: Option<u64>,
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub response_body_bytes: Option<u64>,
  /// CPU limit of a scheduled (cron) run. Unset: Cloudflare's rule, 30 s
  /// for a schedule that fires more than once an hour, 15 min otherwise.
  #[serde(default, skip_serializing_if = "Option::is_none")]
  pub scheduled_cpu_ms: Option<u64>,
}

impl LimitsSpec {
  /// What an account may set unless an operator says otherwise (the
  /// control plane's `[limits]`, or an admin's per-account ceiling): CPU
  /// 30 s, wall 15 min, memory 128 MiB, 1,000 subrequests, request bodies
  /// 100 MiB, response bodies 512 MiB, scheduled CPU 15 min. Without a
  /// ceiling a tenant could turn its own memory limit off.
  pub fn default_ceilings() -> Self {
    Self {
      cpu_ms: Some(30_000),
      wall_ms: Some(900_000),
      memory_mb: Some(128),
      subrequests: Some(1_000),
      request_body_bytes: Some(100 << 20),
      response_body_bytes: Some(512 << 20),
      scheduled_cpu_ms: Some(900_000),
    }
  }

  /// Each field with its name, in a fixed order.
  pub fn fields(&self) -> [(&'static str, Option<u64>); 7] {
    [
      ("cpu_ms", self.cpu_ms),
      ("wall_ms", self.wall_ms),
      ("memory_mb", self.memory_mb),
      ("subrequests", self.subrequests.map(u64::from)),
      ("request_body_bytes", self.request_body_bytes),
      ("response_body_bytes", self.response_body_bytes),
      ("scheduled_cpu_ms", self.scheduled_cpu_ms),
    ]
  }

  /// The fields set here above the same field of `ceilings` (where that
  /// one is set), as (name, value, ceiling).
  pub fn above(&self, ceilings: &LimitsSpec) -> Vec<(&'static str, u64, u64)> {
    self
      .fields()
      .into_iter()
      .zip(ceilings.fields())
      .filter_map(|((name, value), (_, max))| match (value, max) {
        (Some(v), Some(m)) if v > m => Some((name, v, m)),
        _ => None,
      })
      .collect()
  }

  /// These fields, each replaced by `other`'s where that one is set.
  pub fn overlaid(&self, other: &LimitsSpec) -> LimitsSpec {
    LimitsSpec {
      cpu_ms: other.cpu_ms.or(self.cpu_ms),
      wall_ms: other.wall_ms.or(self.wall_ms),
      memory_mb: other.memory_mb.or(self.memory_mb),
      subrequests: other.subrequests.or(self.subrequests),
      request_body_bytes: other.request_body_bytes.or(self.request_body_bytes),
      response_body_bytes: other.response_body_bytes.or(self.response_body_bytes),
      scheduled_cpu_ms: other.scheduled_cpu_ms.or(self.scheduled_cpu_ms),
    }
  }

  /// A zero CPU, wall or memory limit would fail every request; better to
  /// refuse the upload.
  pub fn validate(&self) -> Result<(), String> {
    for (field, value) in [
      ("cpu_ms", self.cpu_ms),
      ("wall_ms", self.wall_ms),
      ("memory_mb", self.memory_mb),
      ("scheduled_cpu_ms", self.scheduled_cpu_ms),
    ] {
      if value == Some(0) {
        return Err(format!(
          "limits.{field} is 0; leave it unset for the default"
        ));
      }
    }
    if self.memory_mb.is_some_and(|mb| mb > u64::MAX >> 20) {
      return Err("limits.memory_mb is too large".to_string());
    }
    Ok(())
  }
}

impl Manifest {
  /// The version id: lowercase hex sha256 of the manifest's canonical JSON.
  pub fn version_id(&self) -> String {
    sha256_hex(&self.canonical_json())
  }

  /// `serde_json::to_vec` of the manifest with modules sorted by name and
  /// the keys of JSON vars sorted, so equal manifests hash equal whatever
  /// order they were built in (serde_json may preserve insertion order).
  pub fn canonical_json(&self) -> Vec<u8> {
    let mut manifest = self.clone();
    manifest.modules.sort();
    manifest.services.sort();
    manifest.kv_namespaces.sort();
    manifest.queues.producers.sort();
    for value in manifest.vars.values_mut() {
      sort_keys(value);
    }
    serde_json::to_vec(&manifest).expect("a manifest always serialises")
  }
}

fn sort_keys(value: &mut serde_json::Value) {
  match value {
    serde_json::Value::Object(map) => {
      let sorted: BTreeMap<String, serde_json::Value> = std::mem::take(map).into_iter().collect();
      for (key, mut v) in sorted {
        sort_keys(&mut v);
        map.insert(key, v);
      }
    }
    serde_json::Value::Array(items) => items.iter_mut().for_each(sort_keys),
    _ => {}
  }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
  hex::encode(Sha256::digest(bytes))
}

/// Whether `s` looks like a [`sha256_hex`] output.
pub fn is_sha256_hex(s: &str) -> bool {
  s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn limits_above_their_ceilings_are_named() {
    let asked = LimitsSpec {
      memory_mb: Some(1_000_000_000),
      cpu_ms: Some(10),
      subrequests: Some(5_000),
      ..Default::default()
    };
    let ceilings = LimitsSpec::default_ceilings();
    assert_eq!(
      asked.above(&ceilings),
      vec![
        ("memory_mb", 1_000_000_000, 128),
        ("subrequests", 5_000, 1_000)
      ]
    );
    let raised = ceilings.overlaid(&LimitsSpec {
      memory_mb: Some(2048),
      ..Default::default()
    });
    assert_eq!(raised.memory_mb, Some(2048));
    assert_eq!(raised.cpu_ms, Some(30_000));
    assert_eq!(
      asked.above(&raised),
      vec![
        ("memory_mb", 1_000_000_000, 2048),
        ("subrequests", 5_000, 1_000)
      ]
    );
    // No ceiling, nothing above it.
    assert!(asked.above(&LimitsSpec::default()).is_empty());
  }
}
