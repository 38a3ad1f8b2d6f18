//! Per-invocation limits, and what each invocation used.

use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

pub use isola_ext::Outcome;

/// Limits of one worker. Defaults follow Cloudflare Workers' standard plan.
///
/// ```
/// # use isola_runtime::Limits;
/// let limits = Limits::default().cpu(std::time::Duration::from_millis(10)).memory_mib(64);
/// assert_eq!(limits.cpu_limit().as_millis(), 10);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
  cpu: Duration,
  wall: Duration,
  memory: u64,
  subrequests: u32,
  request_body: u64,
  response_body: u64,
  scheduled_cpu: Duration,
}

impl Default for Limits {
  fn default() -> Self {
    Self {
      cpu: Duration::from_millis(50),
      wall: Duration::from_secs(30),
      memory: 128 << 20,
      subrequests: 50,
      request_body: 100 << 20,
      response_body: 512 << 20,
      scheduled_cpu: Duration::from_secs(30),
    }
  }
}

impl Limits {
  /// CPU time one invocation may use, measured on the isolate thread's CPU
  /// clock. Default: 50 ms.
  pub fn cpu(mut self, cpu: Duration) -> Self {
    self.cpu = cpu;
    self
  }

  /// Wall-clock time from the start of an invocation to its response and the
  /// end of its `waitUntil` work. Default: 30 s.
  pub fn wall(mut self, wall: Duration) -> Self {
    self.wall = wall;
    self
  }

  /// Memory of the isolate: the V8 heap plus ArrayBuffer backing stores.
  /// Default: 128 MiB.
  pub fn memory_mib(mut self, mib: u64) -> Self {
    self.memory = mib << 20;
    self
  }

  /// Outbound `fetch()` calls per invocation. Default: 50.
  pub fn subrequests(mut self, n: u32) -> Self {
    self.subrequests = n;
    self
  }

  /// Bytes of one request body. Default: 100 MiB.
  pub fn request_body_bytes(mut self, n: u64) -> Self {
    self.request_body = n;
    self
  }

  /// Bytes of one response body. Default: 512 MiB.
  pub fn response_body_bytes(mut self, n: u64) -> Self {
    self.response_body = n;
    self
  }

  /// CPU time of one scheduled (cron) run, unless its event sets one.
  /// Default: 30 s, Cloudflare's for schedules that fire often.
  pub fn scheduled_cpu(mut self, cpu: Duration) -> Self {
    self.scheduled_cpu = cpu;
    self
  }

  pub fn scheduled_cpu_limit(&self) -> Duration {
    self.scheduled_cpu
  }

  pub fn cpu_limit(&self) -> Duration {
    self.cpu
  }
  pub fn wall_limit(&self) -> Duration {
    self.wall
  }
  pub fn memory_bytes(&self) -> u64 {
    self.memory
  }
  pub fn subrequest_limit(&self) -> u32 {
    self.subrequests
  }
  pub fn request_body_limit(&self) -> u64 {
    self.request_body
  }
  pub fn response_body_limit(&self) -> u64 {
    self.response_body
  }
}

/// What one invocation used; one per request, for metering and billing.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InvocationRecord {
  pub worker: Arc<str>,
  /// The version's hash (empty for `isola-edge dev`).
  pub version: Arc<str>,
  pub start: SystemTime,
  pub cpu_us: u64,
  pub wall_us: u64,
  /// The isolate's memory (V8 heap + ArrayBuffers) at its highest during the
  /// invocation, as seen at the end of its turns (the V8 heap is sampled
  /// every 16th turn).
  pub peak_memory: u64,
  pub bytes_in: u64,
  pub bytes_out: u64,
  pub subrequests: u32,
  /// KV and queue operations that reached storage.
  pub ops: isola_ext::StorageOps,
  pub outcome: Outcome,
}

/// Where invocation records go. Cloned into every worker of a node.
#[derive(Clone)]
pub struct MeterSink(Option<Arc<dyn Fn(InvocationRecord) + Send + Sync>>);

impl MeterSink {
  pub fn new(f: impl Fn(InvocationRecord) + Send + Sync + 'static) -> Self {
    Self(Some(Arc::new(f)))
  }

  /// A sink that drops every record.
  pub fn discard() -> Self {
    Self(None)
  }

  /// Whether every record is dropped: a worker whose records go nowhere
  /// (`isola-edge dev`) does not build them (~200 instructions a request).
  pub fn is_discard(&self) -> bool {
    self.0.is_none()
  }

  pub fn emit(&self, record: InvocationRecord) {
    if let Some(f) = &self.0 {
      f(record)
    }
  }
}

impl std::fmt::Debug for MeterSink {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("MeterSink")
  }
}

/// A version's limits as uploaded: unset fields take [`Limits::default`].
impl From<&isola_proto::manifest::LimitsSpec> for Limits {
  fn from(spec: &isola_proto::manifest::LimitsSpec) -> Self {
    let mut limits = Limits::default();
    if let Some(ms) = spec.cpu_ms {
      limits = limits.cpu(Duration::from_millis(ms));
    }
    if let Some(ms) = spec.wall_ms {
      limits = limits.wall(Duration::from_millis(ms));
    }
    if let Some(mb) = spec.memory_mb {
      limits = limits.memory_mib(mb);
    }
    if let Some(n) = spec.subrequests {
      limits = limits.subrequests(n);
    }
    if let Some(n) = spec.request_body_bytes {
      limits = limits.request_body_bytes(n);
    }
    if let Some(n) = spec.response_body_bytes {
      limits = limits.response_body_bytes(n);
    }
    if let Some(ms) = spec.scheduled_cpu_ms {
      limits = limits.scheduled_cpu(Duration::from_millis(ms));
    }
    limits
  }
}

impl Limits {
  /// These limits, each lowered to `max`'s where that one is set and lower,
  /// with the names of those lowered. An edge applies its own maxima to
  /// whatever a control plane sends.
  pub fn at_most(&self, max: &isola_proto::manifest::LimitsSpec) -> (Limits, Vec<&'static str>) {
    let mut out = self.clone();
    let mut lowered = Vec::new();
    let ms = Duration::from_millis;
    let mut lower = |name, current: &mut u64, max: Option<u64>| {
      if let Some(max) = max.filter(|m| *current > *m) {
        *current = max;
        lowered.push(name);
      }
    };
    let mut cpu = self.cpu.as_millis() as u64;
    lower("cpu_ms", &mut cpu, max.cpu_ms);
    let mut wall = self.wall.as_millis() as u64;
    lower("wall_ms", &mut wall, max.wall_ms);
    let mut memory = self.memory >> 20;
    lower("memory_mb", &mut memory, max.memory_mb);
    let mut subrequests = u64::from(self.subrequests);
    lower(
      "subrequests",
      &mut subrequests,
      max.subrequests.map(u64::from),
    );
    lower(
      "request_body_bytes",
      &mut out.request_body,
      max.request_body_bytes,
    );
    lower(
      "response_body_bytes",
      &mut out.response_body,
      max.response_body_bytes,
    );
    let mut scheduled = self.scheduled_cpu.as_millis() as u64;
    lower("scheduled_cpu_ms", &mut scheduled, max.scheduled_cpu_ms);
    if lowered.contains(&"cpu_ms") {
      out.cpu = ms(cpu);
    }
    if lowered.contains(&"wall_ms") {
      out.wall = ms(wall);
    }
    if lowered.contains(&"memory_mb") {
      out.memory = memory << 20;
    }
    if lowered.contains(&"subrequests") {
      out.subrequests = u32::try_from(subrequests).unwrap_or(u32::MAX);
    }
    if lowered.contains(&"scheduled_cpu_ms") {
      out.scheduled_cpu = ms(scheduled);
    }
    (out, lowered)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn an_edge_lowers_limits_to_its_maxima_and_names_them() {
    let asked = Limits::default()
      .memory_mib(4096)
      .cpu(Duration::from_millis(10));
    let max = isola_proto::manifest::LimitsSpec {
      memory_mb: Some(512),
      cpu_ms: Some(1_000),
      subrequests: Some(10),
      ..Default::default()
    };
    let (clamped, lowered) = asked.at_most(&max);
    assert_eq!(lowered, ["memory_mb", "subrequests"]);
    assert_eq!(clamped.memory_bytes(), 512 << 20);
    assert_eq!(clamped.cpu_limit(), Duration::from_millis(10));
    assert_eq!(clamped.subrequest_limit(), 10);
    assert_eq!(clamped.wall_limit(), Duration::from_secs(30));
  }

  #[test]
  fn a_scheduled_cpu_limit_comes_from_the_manifest_or_defaults_to_30_s() {
    let spec = isola_proto::manifest::LimitsSpec::default();
    assert_eq!(
      Limits::from(&spec).scheduled_cpu_limit(),
      Duration::from_secs(30)
    );
    let spec = isola_proto::manifest::LimitsSpec {
      scheduled_cpu_ms: Some(120_000),
      cpu_ms: Some(10),
      ..Default::default()
    };
    let limits = Limits::from(&spec);
    assert_eq!(limits.scheduled_cpu_limit(), Duration::from_secs(120));
    assert_eq!(limits.cpu_limit(), Duration::from_millis(10));
  }
}
