//! What a worker is loaded with: its name, version, `env`, limits and meter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use isola_ext::egress::WorkerEgress;

use crate::code_cache::CodeCache;
use crate::limits::Limits;
use crate::limits::MeterSink;
use crate::services::Binding;
use crate::services::PoolLink;
use crate::storage::Storage;
use crate::trace::TraceSink;

/// Settings of one worker: its name (for logs) and the `env` its handler sees.
///
/// ```
/// # use isola_runtime::WorkerConfig;
/// let config = WorkerConfig::new("alpha")
///   .var("GREETING", "hello")
///   .json_var("LIMITS", serde_json::json!({ "max": 3 }));
/// ```
#[derive(Clone, Debug)]
pub struct WorkerConfig {
  pub(super) name: String,
  pub(super) version: Arc<str>,
  pub(super) vars: BTreeMap<String, serde_json::Value>,
  pub(super) limits: Limits,
  pub(super) meter: MeterSink,
  pub(super) trace: TraceSink,
  pub(super) services: BTreeMap<String, Binding>,
  pub(super) pool: PoolLink,
  /// KV bindings: binding name → namespace id.
  pub(super) kv: BTreeMap<String, String>,
  /// Queue producer bindings: binding name → queue.
  pub(super) queues: BTreeMap<String, String>,
  pub(super) storage: Storage,
  /// The worker's own egress allow list, narrowing the node's.
  pub(super) egress: Option<Arc<WorkerEgress>>,
  /// The pool's code caches, if it keeps them.
  pub(super) code_cache: Option<Arc<CodeCache>>,
  pub(super) idle_trim: Duration,
}

impl Default for WorkerConfig {
  fn default() -> Self {
    Self::new("")
  }
}

impl WorkerConfig {
  /// A worker named `name` with no vars.
  pub fn new(name: impl Into<String>) -> Self {
    Self {
      name: name.into(),
      version: Arc::from(""),
      vars: BTreeMap::new(),
      limits: Limits::default(),
      meter: MeterSink::discard(),
      trace: TraceSink::discard(),
      services: BTreeMap::new(),
      pool: PoolLink::default(),
      kv: BTreeMap::new(),
      queues: BTreeMap::new(),
      storage: Storage::default(),
      egress: None,
      code_cache: None,
      idle_trim: super::running::IDLE_TRIM,
    }
  }

  /// The worker's own egress allow list (its manifest's `egress.allow`):
  /// its `fetch()` reaches only what both this list and the node's policy
  /// allow.
  pub fn egress(mut self, egress: WorkerEgress) -> Self {
    self.egress = Some(Arc::new(egress));
    self
  }

  /// The version (content hash) in metering records. Default: empty.
  pub fn version(mut self, version: impl Into<Arc<str>>) -> Self {
    self.version = version.into();
    self
  }

  /// Limits per invocation. Default: [`Limits::default`].
  pub fn limits(mut self, limits: Limits) -> Self {
    self.limits = limits;
    self
  }

  /// How long the worker must have started nothing, with nothing in
  /// flight, before its isolate gives back the memory its traffic grew
  /// (one memory-reducing GC, if its heap grew by 1 MiB or more since it
  /// was loaded or last trimmed). Default: 10 s.
  pub fn idle_trim(mut self, after: Duration) -> Self {
    self.idle_trim = after;
    self
  }

  /// Where invocation records go. Default: dropped.
  pub fn meter(mut self, meter: MeterSink) -> Self {
    self.meter = meter;
    self
  }

  /// Where trace events go (a [`crate::Runtime`] sets its own). Default:
  /// none are built.
  pub fn trace(mut self, trace: TraceSink) -> Self {
    self.trace = trace;
    self
  }

  pub fn limits_ref(&self) -> &Limits {
    &self.limits
  }

  /// Adds a text var: `env.NAME` is the string. Default: none.
  pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
    self
      .vars
      .insert(name.into(), serde_json::Value::String(value.into()));
    self
  }

  /// Adds a JSON var: `env.NAME` is the value, parsed. Default: none.
  pub fn json_var(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
    self.vars.insert(name.into(), value);
    self
  }

  /// Adds a service binding: `env.BINDING` calls worker `service` (its
  /// named export `entrypoint`, or its default export), as the runtime's
  /// `Services` resolve it. Default: none.
  pub fn service(
    mut self,
    binding: impl Into<String>,
    service: impl Into<String>,
    entrypoint: Option<String>,
  ) -> Self {
    self.services.insert(
      binding.into(),
      Binding {
        service: service.into(),
        entrypoint,
      },
    );
    self
  }

  /// The pool that loads this worker, for its bindings to call into.
  pub(crate) fn pool(mut self, pool: PoolLink) -> Self {
    self.pool = pool;
    self
  }

  /// Adds a KV binding: `env.BINDING` reads and writes namespace
  /// `namespace_id` through the runtime's KV service. Default: none.
  pub fn kv_namespace(
    mut self,
    binding: impl Into<String>,
    namespace_id: impl Into<String>,
  ) -> Self {
    self.kv.insert(binding.into(), namespace_id.into());
    self
  }

  /// Adds a queue producer binding: `env.BINDING.send()` writes to
  /// `queue` through the runtime's queue service. Default: none.
  pub fn queue_producer(mut self, binding: impl Into<String>, queue: impl Into<String>) -> Self {
    self.queues.insert(binding.into(), queue.into());
    self
  }

  /// The code caches of the pool that loads this worker.
  pub(crate) fn code_cache(mut self, code_cache: Option<Arc<CodeCache>>) -> Self {
    self.code_cache = code_cache;
    self
  }

  /// The storage services of the pool that loads this worker.
  pub(crate) fn storage(mut self, storage: Storage) -> Self {
    self.storage = storage;
    self
  }

  pub fn name(&self) -> &str {
    &self.name
  }
}
