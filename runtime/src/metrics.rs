//! Counters and histograms over invocation records, in Prometheus text
//! format, and per-worker usage totals kept for shipping to the control
//! plane.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::encoding::MetricEncoder;
use prometheus_client::encoding::NoLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;

use isola_proto::msg::Usage;

use crate::limits::InvocationRecord;
use crate::limits::MeterSink;
use crate::limits::Outcome;
use crate::pool::PoolStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
  worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
  worker: String,
  class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
  worker: String,
  outcome: String,
}

/// One invocation's contribution to its version's usage.
fn usage_of(r: &InvocationRecord) -> Usage {
  Usage {
    requests: 1,
    errors: u64::from(r.outcome != Outcome::Ok),
    cpu_us: r.cpu_us,
    wall_us: r.wall_us,
    ingress_bytes: r.bytes_in,
    egress_bytes: r.bytes_out,
    subrequests: u64::from(r.subrequests),
    kv_reads: u64::from(r.ops.kv_reads),
    kv_writes: u64::from(r.ops.kv_writes),
    kv_deletes: u64::from(r.ops.kv_deletes),
    kv_lists: u64::from(r.ops.kv_lists),
    queue_ops: r.ops.queue_ops,
  }
}

/// A Prometheus histogram whose bounds double from the first (the
/// buckets of `exponential_buckets(first, 2.0, n)`), kept in relaxed
/// atomics: an observation finds its bucket from its integer nanoseconds
/// with a division and a shift, and adds to that bucket and to the sum.
/// prometheus_client's `Histogram` took a lock, compared the bounds one by
/// one and looked for native buckets, ~100 instructions an observation,
/// three of them a served request. The count it shows is the buckets'
/// sum, so a scrape never sees a count its buckets do not add up to.
#[derive(Clone, Debug)]
struct Doubling(Arc<DoublingInner>);

#[derive(Debug)]
struct DoublingInner {
  first_ns: u64,
  /// The finite bounds in seconds, as the exposition prints them.
  bounds: Vec<f64>,
  /// Observations per bucket, `+Inf`'s last.
  counts: Box<[AtomicU64]>,
  /// The sum in seconds, an `f64`'s bits, as prometheus_client keeps it:
  /// nanoseconds in a `u64` would wrap after 584 years of summed time,
  /// which a worker's long-lived requests on a node up for months reach.
  sum: AtomicU64,
}

impl Doubling {
  fn new(first: Duration, n: u16) -> Self {
    Self(Arc::new(DoublingInner {
      first_ns: first.as_nanos().max(1) as u64,
      bounds: exponential_buckets(first.as_secs_f64(), 2.0, n).collect(),
      counts: (0..=n).map(|_| AtomicU64::new(0)).collect(),
      sum: AtomicU64::new(0f64.to_bits()),
    }))
  }

  fn observe(&self, d: Duration) {
    self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
  }

  fn observe_ns(&self, ns: u64) {
    let i = &self.0;
    let at = bucket_of(i.first_ns, i.counts.len() - 1, ns);
    i.counts[at].fetch_add(1, Ordering::Relaxed);
    let add = |sum: u64| Some((f64::from_bits(sum) + ns as f64 / 1e9).to_bits());
    // The closure never refuses.
    let _ = i
      .sum
      .fetch_update(Ordering::Relaxed, Ordering::Relaxed, add);
  }
}

/// The bucket of `ns` among `finite` bounds doubling from `first_ns` (the
/// first whose bound is at least `ns`), or `finite` for `+Inf`'s.
fn bucket_of(first_ns: u64, finite: usize, ns: u64) -> usize {
  // ns <= first * 2^i  <=>  ceil(ns / first) <= 2^i.
  let q = ns.div_ceil(first_ns);
  let i = if q <= 1 {
    0
  } else {
    (u64::BITS - (q - 1).leading_zeros()) as usize
  };
  i.min(finite)
}

impl TypedMetric for Doubling {
  const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Doubling {
  fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
    let i = &self.0;
    let buckets: Vec<(f64, u64)> = i
      .bounds
      .iter()
      .copied()
      .chain(std::iter::once(f64::INFINITY))
      .zip(i.counts.iter().map(|c| c.load(Ordering::Relaxed)))
      .collect();
    let count = buckets.iter().map(|(_, n)| n).sum();
    let sum = f64::from_bits(i.sum.load(Ordering::Relaxed));
    encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
  }

  fn metric_type(&self) -> MetricType {
    Self::TYPE
  }
}

/// The histograms' first bounds: invocations' wall time and HTTP latency
/// from 100 µs, CPU time from 10 µs; 18 doublings each.
fn wall_histogram() -> Doubling {
  Doubling::new(Duration::from_micros(100), 18)
}

fn cpu_histogram() -> Doubling {
  Doubling::new(Duration::from_micros(10), 18)
}

struct Inner {
  registry: Registry,
  invocations: Family<OutcomeLabels, Counter>,
  cpu_seconds: Family<WorkerLabels, Counter<f64>>,
  wall_seconds: Family<WorkerLabels, Doubling>,
  cpu_histogram: Family<WorkerLabels, Doubling>,
  egress: Family<WorkerLabels, Counter>,
  ingress: Family<WorkerLabels, Counter>,
  subrequests: Family<WorkerLabels, Counter>,
  isolates: Gauge,
  pool_memory: Gauge,
  cold_starts: Counter,
  stock_hits: Counter,
  evictions: Counter,
  code_cache_hits: Counter,
  code_cache_misses: Counter,
  code_cache_rejections: Counter,
  code_cache_memory: Gauge,
  throttled: Family<WorkerLabels, Counter>,
  workers_throttled: Gauge,
  quarantined: Gauge,
  http_requests: Family<StatusLabels, Counter>,
  http_latency: Family<WorkerLabels, Doubling>,
  trace_dropped: Counter,
  /// Each worker's series, cloned out of the families above on its first
  /// record: a request then costs one lookup by name, not a labelled
  /// lookup and label strings for each of its nine series. foldhash
  /// (seeded per process): SipHash cost several times as much per lookup.
  series: Mutex<foldhash::HashMap<Arc<str>, Series>>,
}

/// One worker's series (handles onto the same values as the families').
/// Each is made on first use, as the families would make it, so the
/// exposition does not change.
#[derive(Default)]
struct Series {
  invocations: Option<InvocationSeries>,
  outcomes: Vec<(Outcome, Counter)>,
  http_classes: Vec<(&'static str, Counter)>,
  http_latency: Option<Doubling>,
  /// Usage per version since the last drain (a worker serves one or two
  /// versions at a time): kept here, a record takes one lock and one
  /// lookup by name, where a map by (worker, version) cost another lock
  /// and a hash of both names.
  usage: Vec<(Arc<str>, Usage)>,
}

/// The series every invocation record adds to.
struct InvocationSeries {
  cpu_seconds: Counter<f64>,
  cpu_histogram: Doubling,
  wall_seconds: Doubling,
  egress: Counter,
  ingress: Counter,
  subrequests: Counter,
}

impl InvocationSeries {
  fn new(i: &Inner, worker: &str) -> Self {
    let labels = WorkerLabels {
      worker: worker.to_string(),
    };
    Self {
      cpu_seconds: i.cpu_seconds.get_or_create(&labels).clone(),
      cpu_histogram: i.cpu_histogram.get_or_create(&labels).clone(),
      wall_seconds: i.wall_seconds.get_or_create(&labels).clone(),
      egress: i.egress.get_or_create(&labels).clone(),
      ingress: i.ingress.get_or_create(&labels).clone(),
      subrequests: i.subrequests.get_or_create(&labels).clone(),
    }
  }
}

/// The usage of `version` in a worker's `usage`, added on its first record.
fn version_usage<'u>(usage: &'u mut Vec<(Arc<str>, Usage)>, version: &Arc<str>) -> &'u mut Usage {
  let at = match usage.iter().position(|(v, _)| v == version) {
    Some(at) => at,
    None => {
      usage.push((version.clone(), Usage::default()));
      usage.len() - 1
    }
  };
  &mut usage[at].1
}

/// The counter kept under `key` in `counters`, made by `make` the first time.
fn counter_of<K: PartialEq>(
  counters: &mut Vec<(K, Counter)>,
  key: K,
  make: impl FnOnce() -> Counter,
) -> &Counter {
  let at = match counters.iter().position(|(k, _)| *k == key) {
    Some(at) => at,
    None => {
      counters.push((key, make()));
      counters.len() - 1
    }
  };
  &counters[at].1
}

impl Inner {
  /// `worker`'s series, made on its first record.
  fn series<R>(&self, worker: &str, f: impl FnOnce(&Inner, &mut Series) -> R) -> R {
    let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(series) = map.get_mut(worker) {
      return f(self, series);
    }
    f(self, map.entry(Arc::from(worker)).or_default())
  }
}

/// Metering of a node. Cheap to clone; feed it through [`Metrics::sink`].
#[derive(Clone)]
pub struct Metrics {
  inner: Arc<Inner>,
}

impl Default for Metrics {
  fn default() -> Self {
    Self::new()
  }
}

impl Metrics {
  pub fn new() -> Self {
    let mut registry = Registry::with_prefix("isola");
    let invocations = Family::<OutcomeLabels, Counter>::default();
    registry.register(
      "invocations",
      "Invocations by worker and outcome",
      invocations.clone(),
    );
    let cpu_seconds = Family::<WorkerLabels, Counter<f64>>::default();
    registry.register(
      "cpu_seconds",
      "CPU time used by invocations",
      cpu_seconds.clone(),
    );
    let wall_seconds = Family::<WorkerLabels, Doubling>::new_with_constructor(wall_histogram as _);
    registry.register(
      "invocation_wall_seconds",
      "Wall-clock time per invocation",
      wall_seconds.clone(),
    );
    let cpu_histogram = Family::<WorkerLabels, Doubling>::new_with_constructor(cpu_histogram as _);
    registry.register(
      "invocation_cpu_seconds",
      "CPU time per invocation",
      cpu_histogram.clone(),
    );
    let egress = Family::<WorkerLabels, Counter>::default();
    registry.register("egress_bytes", "Response body bytes sent", egress.clone());
    let ingress = Family::<WorkerLabels, Counter>::default();
    registry.register("ingress_bytes", "Request body bytes read", ingress.clone());
    let subrequests = Family::<WorkerLabels, Counter>::default();
    registry.register("subrequests", "Outbound fetch() calls", subrequests.clone());
    let isolates = Gauge::default();
    registry.register("isolates_live", "Loaded worker isolates", isolates.clone());
    let pool_memory = Gauge::default();
    registry.register(
      "isolates_memory_bytes",
      "Memory of loaded isolates as last measured",
      pool_memory.clone(),
    );
    let cold_starts = Counter::default();
    registry.register(
      "cold_starts",
      "Workers loaded into an isolate",
      cold_starts.clone(),
    );
    let stock_hits = Counter::default();
    registry.register(
      "cold_starts_from_stock",
      "Cold starts that found a ready blank isolate",
      stock_hits.clone(),
    );
    let evictions = Counter::default();
    registry.register(
      "evictions",
      "Isolates dropped by LRU, memory or idle TTL",
      evictions.clone(),
    );
    let code_cache_hits = Counter::default();
    registry.register(
      "code_cache_hits",
      "Worker modules compiled with a V8 code cache (one V8 refused is also a rejection)",
      code_cache_hits.clone(),
    );
    let code_cache_misses = Counter::default();
    registry.register(
      "code_cache_misses",
      "Worker modules parsed and compiled without a code cache",
      code_cache_misses.clone(),
    );
    let code_cache_rejections = Counter::default();
    registry.register(
      "code_cache_rejections",
      "Code caches refused by V8 or found corrupt in the store",
      code_cache_rejections.clone(),
    );
    let code_cache_memory = Gauge::default();
    registry.register(
      "code_cache_memory_bytes",
      "Code caches held in memory",
      code_cache_memory.clone(),
    );
    let throttled = Family::<WorkerLabels, Counter>::default();
    registry.register(
      "throttled_requests",
      "Requests answered 503 without running because their worker is throttled",
      throttled.clone(),
    );
    let workers_throttled = Gauge::default();
    registry.register(
      "workers_throttled",
      "Workers throttled for repeatedly exceeding their CPU or memory limit",
      workers_throttled.clone(),
    );
    let quarantined = Gauge::default();
    registry.register(
      "isolates_quarantined",
      "Worker isolates on the low-priority quarantine thread",
      quarantined.clone(),
    );
    let http_requests = Family::<StatusLabels, Counter>::default();
    registry.register(
      "http_requests",
      "HTTP requests by worker and status class",
      http_requests.clone(),
    );
    let http_latency = Family::<WorkerLabels, Doubling>::new_with_constructor(wall_histogram as _);
    registry.register(
      "http_request_duration_seconds",
      "Time to the response head",
      http_latency.clone(),
    );
    let trace_dropped = Counter::default();
    registry.register(
      "trace_events_dropped",
      "Trace events left out (buffer full, or the control plane unreachable)",
      trace_dropped.clone(),
    );
    Self {
      inner: Arc::new(Inner {
        trace_dropped,
        http_requests,
        http_latency,
        registry,
        invocations,
        cpu_seconds,
        wall_seconds,
        cpu_histogram,
        egress,
        ingress,
        subrequests,
        isolates,
        pool_memory,
        cold_starts,
        stock_hits,
        evictions,
        code_cache_hits,
        code_cache_misses,
        code_cache_rejections,
        code_cache_memory,
        throttled,
        workers_throttled,
        quarantined,
        series: Mutex::default(),
      }),
    }
  }

  /// Counts one invocation.
  pub fn record(&self, r: &InvocationRecord) {
    let i = &self.inner;
    i.series(&r.worker, |i, s| {
      let labels = || OutcomeLabels {
        worker: r.worker.to_string(),
        outcome: r.outcome.as_str().to_string(),
      };
      counter_of(&mut s.outcomes, r.outcome, || {
        i.invocations.get_or_create(&labels()).clone()
      })
      .inc();
      *version_usage(&mut s.usage, &r.version) += &usage_of(r);
      let s = s
        .invocations
        .get_or_insert_with(|| InvocationSeries::new(i, &r.worker));
      s.cpu_seconds.inc_by(r.cpu_us as f64 / 1e6);
      s.cpu_histogram.observe_ns(r.cpu_us.saturating_mul(1000));
      s.wall_seconds.observe_ns(r.wall_us.saturating_mul(1000));
      // Most invocations read no body and fetch nothing: a zero is not
      // written (with many workers taking turns, a write is a cold line).
      for (counter, n) in [
        (&s.egress, r.bytes_out),
        (&s.ingress, r.bytes_in),
        (&s.subrequests, u64::from(r.subrequests)),
      ] {
        if n > 0 {
          counter.inc_by(n);
        }
      }
    });
  }

  /// Counts one request of `worker` answered without running it because
  /// the worker is throttled (see [`crate::Fairness`]).
  pub fn record_throttled(&self, worker: &str) {
    self
      .inner
      .throttled
      .get_or_create(&WorkerLabels {
        worker: worker.to_string(),
      })
      .inc();
  }

  /// Counts one HTTP request answered for `worker` ("" when no route matched).
  pub fn record_http(&self, worker: &str, status: u16, elapsed: std::time::Duration) {
    const CLASSES: [&str; 10] = [
      "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
    ];
    let class = CLASSES[usize::from(status / 100).min(9)];
    self.inner.series(worker, |i, s| {
      let labels = || StatusLabels {
        worker: worker.to_string(),
        class,
      };
      counter_of(&mut s.http_classes, class, || {
        i.http_requests.get_or_create(&labels()).clone()
      })
      .inc();
      s.http_latency
        .get_or_insert_with(|| {
          let labels = WorkerLabels {
            worker: worker.to_string(),
          };
          i.http_latency.get_or_create(&labels).clone()
        })
        .observe(elapsed);
    });
  }

  /// Counts `n` trace events the node left out.
  pub fn record_trace_dropped(&self, n: u64) {
    self.inner.trace_dropped.inc_by(n);
  }

  /// A sink that counts every record it gets here.
  pub fn sink(&self) -> MeterSink {
    let metrics = self.clone();
    MeterSink::new(move |r| metrics.record(&r))
  }

  /// Usage totals per (worker, version) since the last drain, and resets
  /// them: what a node ships to the control plane.
  pub fn drain_usage(&self) -> Vec<(Arc<str>, Arc<str>, Usage)> {
    let mut series = self.inner.series.lock().unwrap_or_else(|e| e.into_inner());
    let mut drained = Vec::new();
    for (worker, s) in series.iter_mut() {
      drained.extend(s.usage.drain(..).map(|(v, t)| (worker.clone(), v, t)));
    }
    drained
  }

  /// The Prometheus text exposition, with the pool's gauges as of now.
  pub fn encode(&self, pool: Option<PoolStats>) -> String {
    let i = &self.inner;
    if let Some(stats) = pool {
      i.isolates.set(stats.isolates as i64);
      i.pool_memory.set(stats.memory as i64);
      i.workers_throttled.set(stats.throttled_workers as i64);
      i.quarantined.set(stats.quarantined as i64);
      catch_up(&i.cold_starts, stats.cold_starts);
      catch_up(&i.stock_hits, stats.stock_hits);
      catch_up(&i.evictions, stats.evictions);
      catch_up(&i.code_cache_hits, stats.code_cache.hits);
      catch_up(&i.code_cache_misses, stats.code_cache.misses);
      catch_up(&i.code_cache_rejections, stats.code_cache.rejections);
      i.code_cache_memory.set(stats.code_cache.memory as i64);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &i.registry);
    out
  }
}

/// Moves a counter up to a running total kept elsewhere.
fn catch_up(counter: &Counter, total: u64) {
  let now = counter.get();
  if total > now {
    counter.inc_by(total - now);
  }
}

#[cfg(test)]
mod tests {
  use std::time::SystemTime;

  use super::*;

  fn record(outcome: Outcome, cpu_us: u64) -> InvocationRecord {
    InvocationRecord {
      worker: Arc::from("alpha"),
      version: Arc::from("v1"),
      start: SystemTime::now(),
      cpu_us,
      wall_us: 2 * cpu_us,
      peak_memory: 1 << 20,
      bytes_in: 10,
      bytes_out: 100,
      subrequests: 1,
      ops: isola_ext::StorageOps {
        kv_reads: 3,
        kv_writes: 2,
        kv_deletes: 1,
        kv_lists: 1,
        queue_ops: 4,
      },
      outcome,
    }
  }

  /// The exposition of one histogram registered alone.
  fn exposition(metric: impl prometheus_client::registry::Metric) -> String {
    let mut registry = Registry::default();
    registry.register("h", "h", metric);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
  }

  #[test]
  fn a_doubling_histogram_shows_what_prometheus_clients_shows() {
    use prometheus_client::metrics::histogram::Histogram;
    let ours = Doubling::new(Duration::from_micros(10), 18);
    let theirs = Histogram::new(exponential_buckets(0.00001, 2.0, 18));
    // Each bound and either side of it, zero, and far past the last.
    let mut values_us = vec![0, 1, 4_000_000_000];
    for i in 0..19 {
      let bound = 10u64 << i;
      values_us.extend([bound - 1, bound, bound + 1]);
    }
    for &us in &values_us {
      ours.observe_ns(us * 1000);
      theirs.observe(us as f64 / 1e6);
    }
    let (ours, theirs) = (exposition(ours), exposition(theirs));
    let without_sum = |text: &str| -> Vec<String> {
      text
        .lines()
        .filter(|l| !l.starts_with("h_sum"))
        .map(str::to_string)
        .collect()
    };
    assert_eq!(without_sum(&ours), without_sum(&theirs));
    assert!(ours.contains("h_count 60\n"), "{ours}");
    let sum = |text: &str| -> f64 {
      let line = text.lines().find(|l| l.starts_with("h_sum")).unwrap();
      line.split(' ').nth(1).unwrap().parse().unwrap()
    };
    let (a, b) = (sum(&ours), sum(&theirs));
    assert!((a - b).abs() < 1e-9 * b, "{a} against {b}");
  }

  #[test]
  fn a_bucket_is_the_first_bound_at_least_the_value() {
    let bucket = |ns| bucket_of(100, 3, ns);
    // Bounds 100, 200, 400, then +Inf (3).
    let cases = [
      (0, 0),
      (100, 0),
      (101, 1),
      (200, 1),
      (201, 2),
      (400, 2),
      (401, 3),
    ];
    for (ns, at) in cases {
      assert_eq!(bucket(ns), at, "{ns} ns");
    }
    assert_eq!(bucket(u64::MAX), 3);
  }

  #[test]
  fn records_add_up_per_worker_and_drain() {
    let m = Metrics::new();
    m.record(&record(Outcome::Ok, 300));
    m.record(&record(Outcome::CpuLimit, 700));
    let usage = m.drain_usage();
    assert_eq!(usage.len(), 1);
    let (_, _, t) = &usage[0];
    assert_eq!(
      (t.requests, t.errors, t.cpu_us, t.egress_bytes),
      (2, 1, 1000, 200)
    );
    assert_eq!(
      (
        t.kv_reads,
        t.kv_writes,
        t.kv_deletes,
        t.kv_lists,
        t.queue_ops
      ),
      (6, 4, 2, 2, 8)
    );
    assert!(m.drain_usage().is_empty(), "draining resets");
    let text = m.encode(Some(PoolStats {
      isolates: 3,
      cold_starts: 5,
      ..Default::default()
    }));
    assert!(
      text.contains(r#"isola_invocations_total{worker="alpha",outcome="cpu_limit"} 1"#),
      "{text}"
    );
    assert!(text.contains("isola_isolates_live 3"), "{text}");
    assert!(text.contains("isola_cold_starts_total 5"), "{text}");
    m.record_throttled("alpha");
    let text = m.encode(Some(PoolStats {
      throttled_workers: 1,
      ..Default::default()
    }));
    assert!(
      text.contains(r#"isola_throttled_requests_total{worker="alpha"} 1"#),
      "{text}"
    );
    assert!(text.contains("isola_workers_throttled 1"), "{text}");
  }
}
