//! The control plane's Prometheus counters: trace events received and
//! dropped, tails, and per-worker invocations, times and usage.

use std::sync::atomic::AtomicU64;

use isola_proto::msg::UsageBatch;
use isola_proto::trace::TraceEvent;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type Seconds = Family<Labels, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
  // 0.5 ms to ~16 s.
  Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
  registry: Registry,
  pub received: Family<Labels, Counter>,
  pub edge_dropped: Family<Labels, Counter>,
  pub store_dropped: Family<Labels, Counter>,
  pub tails_open: Gauge,
  pub tails_cut_off: Counter,
  invocations: Family<Labels, Counter>,
  cpu: Seconds,
  wall: Seconds,
  requests: Family<Labels, Counter>,
  errors: Family<Labels, Counter>,
  cpu_total: Family<Labels, Counter<f64, AtomicU64>>,
  subrequests: Family<Labels, Counter>,
  egress: Family<Labels, Counter>,
}

fn worker(w: &str) -> Labels {
  vec![("worker".into(), w.into())]
}

fn version(w: &str, v: &str) -> Labels {
  vec![("worker".into(), w.into()), ("version".into(), v.into())]
}

impl Default for Metrics {
  fn default() -> Self {
    let mut registry = Registry::with_prefix("isola");
    let m = Self {
      received: Family::default(),
      edge_dropped: Family::default(),
      store_dropped: Family::default(),
      tails_open: Gauge::default(),
      tails_cut_off: Counter::default(),
      invocations: Family::default(),
      cpu: Family::new_with_constructor(seconds),
      wall: Family::new_with_constructor(seconds),
      requests: Family::default(),
      errors: Family::default(),
      cpu_total: Family::default(),
      subrequests: Family::default(),
      egress: Family::default(),
      registry: Registry::default(),
    };
    registry.register(
      "trace_events_received",
      "Trace events edges sent, by worker",
      m.received.clone(),
    );
    registry.register(
      "trace_events_dropped",
      "Trace events edges dropped (their buffer was full), by edge",
      m.edge_dropped.clone(),
    );
    registry.register(
      "trace_events_unstored",
      "Trace events the log store could not take (its queue was full), by worker",
      m.store_dropped.clone(),
    );
    registry.register("tails_open", "Live tails open now", m.tails_open.clone());
    registry.register(
      "tails_cut_off",
      "Live tails closed because their client read too slowly",
      m.tails_cut_off.clone(),
    );
    registry.register(
      "worker_invocations",
      "Invocations by worker, version and outcome (trace events)",
      m.invocations.clone(),
    );
    registry.register(
      "worker_cpu_seconds",
      "CPU time per invocation (trace events)",
      m.cpu.clone(),
    );
    registry.register(
      "worker_wall_seconds",
      "Wall time per invocation (trace events)",
      m.wall.clone(),
    );
    registry.register(
      "worker_requests",
      "Invocations by worker and version (exact usage records)",
      m.requests.clone(),
    );
    registry.register(
      "worker_errors",
      "Invocations that did not end ok (exact usage records)",
      m.errors.clone(),
    );
    registry.register(
      "worker_cpu_seconds_used",
      "CPU time (exact usage records)",
      m.cpu_total.clone(),
    );
    registry.register(
      "worker_subrequests",
      "Subrequests (exact usage records)",
      m.subrequests.clone(),
    );
    registry.register(
      "worker_egress_bytes",
      "Response bytes (exact usage records)",
      m.egress.clone(),
    );
    Self { registry, ..m }
  }
}

impl Metrics {
  /// Counts a batch's events; `edge` reported `dropped` more.
  ///
  /// A batch holds many events of few series: each series is looked up
  /// once per batch. Looked up per event (a label vector allocated and
  /// hashed four times), counting cost the control plane about as much as
  /// decoding the events.
  pub fn batch(&self, edge: &str, events: &[TraceEvent], dropped: u64) {
    if dropped > 0 {
      self
        .edge_dropped
        .get_or_create(&vec![("edge".into(), edge.into())])
        .inc_by(dropped);
    }
    let mut series: foldhash::HashMap<(&str, &str, &str), Vec<&TraceEvent>> =
      foldhash::HashMap::default();
    for e in events {
      series
        .entry((&e.worker, &e.version, &e.outcome))
        .or_default()
        .push(e);
    }
    for ((worker_name, version_id, outcome), events) in series {
      let n = events.len() as u64;
      self.received.get_or_create(&worker(worker_name)).inc_by(n);
      let mut labels = version(worker_name, version_id);
      {
        let cpu = self.cpu.get_or_create(&labels);
        let wall = self.wall.get_or_create(&labels);
        for e in &events {
          cpu.observe(e.cpu_us as f64 / 1e6);
          wall.observe(e.wall_us as f64 / 1e6);
        }
      }
      labels.push(("outcome".into(), outcome.into()));
      self.invocations.get_or_create(&labels).inc_by(n);
    }
  }

  /// Counts a usage batch once it is stored (the first time only).
  pub fn usage(&self, batch: &UsageBatch) {
    for r in &batch.records {
      let labels = version(&r.worker, &r.version);
      self
        .requests
        .get_or_create(&labels)
        .inc_by(r.usage.requests);
      self.errors.get_or_create(&labels).inc_by(r.usage.errors);
      self
        .cpu_total
        .get_or_create(&labels)
        .inc_by(r.usage.cpu_us as f64 / 1e6);
      self
        .subrequests
        .get_or_create(&labels)
        .inc_by(r.usage.subrequests);
      self
        .egress
        .get_or_create(&labels)
        .inc_by(r.usage.egress_bytes);
    }
  }

  /// The Prometheus text exposition.
  pub fn encode(&self) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
    out
  }
}

#[cfg(test)]
mod tests {
  use isola_proto::msg::Usage;
  use isola_proto::msg::UsageRecord;

  use super::*;
  use crate::observe::filter::tests::fetch;

  #[test]
  fn counts_show_in_the_exposition() {
    let m = Metrics::default();
    m.batch(
      "edge-0",
      &[
        fetch("ok", "GET", "https://a.test/"),
        fetch("exception", "GET", "https://a.test/"),
      ],
      3,
    );
    m.usage(&UsageBatch {
      id: "b".into(),
      records: vec![UsageRecord {
        worker: "acme_api".into(),
        version: "h1".into(),
        start: 0,
        end: 1,
        usage: Usage {
          requests: 2,
          egress_bytes: 10,
          ..Usage::default()
        },
      }],
    });
    let text = m.encode();
    for line in [
      "isola_trace_events_received_total{worker=\"acme_api\"} 2",
      "isola_trace_events_dropped_total{edge=\"edge-0\"} 3",
      "isola_worker_invocations_total{worker=\"acme_api\",version=\"h1\",outcome=\"exception\"} 1",
      "isola_worker_requests_total{worker=\"acme_api\",version=\"h1\"} 2",
      "isola_worker_egress_bytes_total{worker=\"acme_api\",version=\"h1\"} 10",
      "isola_tails_open 0",
    ] {
      assert!(text.contains(line), "{line} not in\n{text}");
    }
  }
}
