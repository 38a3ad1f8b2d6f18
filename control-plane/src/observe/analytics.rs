//! Analytics: per (worker, version, minute), the count of each outcome and
//! DDSketches of CPU and wall time, built from trace events; and the time
//! buckets the API answers, which take counts from the exact usage records
//! where there are any. Sans-IO: the store reads rows and feeds them here.
//!
//! Quantiles come from DDSketch (`sketches-ddsketch`, α = 0.01, 2048
//! bins): a reported p50/p90/p99 is within 1 % of the true value of that
//! quantile among the events the control plane received (events are best
//! effort, so under load a share may be missing; counts are exact).

use std::collections::BTreeMap;

use isola_proto::msg::Usage;
use isola_proto::trace::TraceEvent;
use serde::Deserialize;
use serde::Serialize;
use sketches_ddsketch::Config;
use sketches_ddsketch::DDSketch;
use utoipa::ToSchema;

use crate::db::Timestamp;

/// Sketches' relative error (their α), stated in the API's answer.
pub const RELATIVE_ERROR: f64 = 0.01;

/// The finest step: sketches are kept per minute.
pub const MINUTE: i64 = 60;

/// Most buckets one analytics answer holds.
pub const MAX_BUCKETS: i64 = 1440;

fn sketch() -> DDSketch {
  DDSketch::new(Config::new(RELATIVE_ERROR, 2048, 1.0e-9))
}

/// One worker version's events of one minute.
#[derive(Clone, Serialize, Deserialize)]
pub struct MinuteStats {
  /// Events by outcome.
  pub outcomes: BTreeMap<String, u64>,
  /// CPU time, ms.
  pub cpu: DDSketch,
  /// Wall time, ms.
  pub wall: DDSketch,
}

impl Default for MinuteStats {
  fn default() -> Self {
    Self {
      outcomes: BTreeMap::new(),
      cpu: sketch(),
      wall: sketch(),
    }
  }
}

impl std::fmt::Debug for MinuteStats {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("MinuteStats")
      .field("outcomes", &self.outcomes)
      .field("events", &self.cpu.count())
      .finish()
  }
}

impl MinuteStats {
  pub fn add(&mut self, event: &TraceEvent) {
    *self.outcomes.entry(event.outcome.clone()).or_default() += 1;
    self.cpu.add(event.cpu_us as f64 / 1000.0);
    self.wall.add(event.wall_us as f64 / 1000.0);
  }

  pub fn merge(&mut self, other: &MinuteStats) {
    for (outcome, n) in &other.outcomes {
      *self.outcomes.entry(outcome.clone()).or_default() += n;
    }
    // Same configuration on both sides, so merging cannot fail.
    let _ = self.cpu.merge(&other.cpu);
    let _ = self.wall.merge(&other.wall);
  }

  pub fn events(&self) -> u64 {
    self.outcomes.values().sum()
  }
}

/// The minute an event's timestamp (ms) falls in, Unix seconds.
pub fn minute_of(timestamp_ms: i64) -> i64 {
  timestamp_ms.div_euclid(1000 * MINUTE) * MINUTE
}

/// The time range an answer covers, cut into steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
  /// Unix seconds, on a minute.
  pub since: i64,
  pub step: i64,
  pub count: i64,
}

impl Grid {
  /// `[since, until)` in steps of `step` seconds (a multiple of a minute):
  /// `since` goes back to its minute, `until` on to a whole step.
  pub fn new(since: i64, until: i64, step: i64) -> Result<Self, String> {
    if step < MINUTE || step % MINUTE != 0 {
      return Err(format!(
        "step={step} is not a whole number of minutes; give seconds, a multiple of 60"
      ));
    }
    if until <= since {
      return Err("until must be after since".into());
    }
    let since = since.div_euclid(MINUTE) * MINUTE;
    let count = (until - since + step - 1) / step;
    if count > MAX_BUCKETS {
      return Err(format!(
        "{count} buckets asked for, more than {MAX_BUCKETS}; use a larger step or a shorter range"
      ));
    }
    Ok(Self { since, step, count })
  }

  pub fn until(&self) -> i64 {
    self.since + self.step * self.count
  }

  /// The bucket `secs` falls in.
  pub fn index(&self, secs: i64) -> Option<usize> {
    if secs < self.since || secs >= self.until() {
      return None;
    }
    usize::try_from((secs - self.since) / self.step).ok()
  }
}

#[derive(Default)]
struct Acc {
  usage: Usage,
  /// Usage records fell in this bucket: counts come from them.
  usage_seen: bool,
  stats: MinuteStats,
}

impl Acc {
  fn merge(&mut self, other: &Acc) {
    self.usage += &other.usage;
    self.usage_seen |= other.usage_seen;
    self.stats.merge(&other.stats);
  }

  fn counts(&self) -> Counts {
    let events = self.stats.events();
    let errors_by_outcome: BTreeMap<String, u64> = self
      .stats
      .outcomes
      .iter()
      .filter(|(o, _)| o.as_str() != "ok")
      .map(|(o, n)| (o.clone(), *n))
      .collect();
    let (requests, errors) = if self.usage_seen {
      (self.usage.requests, self.usage.errors)
    } else {
      (events, errors_by_outcome.values().sum())
    };
    let q = |s: &DDSketch, q: f64| {
      s.quantile(q)
        .ok()
        .flatten()
        .map(|v| (v * 1000.0).round() / 1000.0)
    };
    Counts {
      requests,
      errors,
      errors_by_outcome,
      subrequests: self.usage.subrequests,
      egress_bytes: self.usage.egress_bytes,
      events,
      cpu_ms: CpuQuantiles {
        p50: q(&self.stats.cpu, 0.5),
        p90: q(&self.stats.cpu, 0.9),
        p99: q(&self.stats.cpu, 0.99),
      },
      wall_ms: WallQuantiles {
        p50: q(&self.stats.wall, 0.5),
        p99: q(&self.stats.wall, 0.99),
      },
    }
  }
}

/// Counts of a bucket, overall or of one version.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Counts {
  /// Invocations: from the exact usage records where the bucket has any,
  /// else the trace events received.
  pub requests: u64,
  /// Invocations that did not end `ok` (same source as `requests`).
  pub errors: u64,
  /// Errors by outcome (`exception`, `exceededCpu`, ...), from trace events.
  pub errors_by_outcome: BTreeMap<String, u64>,
  /// From usage records.
  pub subrequests: u64,
  /// Response bytes, from usage records.
  pub egress_bytes: u64,
  /// Trace events received (best effort; `requests` is the exact count).
  pub events: u64,
  pub cpu_ms: CpuQuantiles,
  pub wall_ms: WallQuantiles,
}

/// CPU time quantiles, ms, within 1 % (DDSketch); null without events.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CpuQuantiles {
  pub p50: Option<f64>,
  pub p90: Option<f64>,
  pub p99: Option<f64>,
}

/// Wall time quantiles, ms, within 1 % (DDSketch); null without events.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct WallQuantiles {
  pub p50: Option<f64>,
  pub p99: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct VersionCounts {
  /// The version's hash.
  pub version: String,
  #[serde(flatten)]
  pub counts: Counts,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Bucket {
  /// The bucket covers `[start, start + step)`.
  pub start: Timestamp,
  #[serde(flatten)]
  pub counts: Counts,
  /// Versions with usage or events in the bucket.
  pub by_version: Vec<VersionCounts>,
}

/// Buckets being filled.
pub struct Buckets {
  grid: Grid,
  /// Per bucket, per version hash.
  cells: Vec<BTreeMap<String, Acc>>,
}

impl Buckets {
  pub fn new(grid: Grid) -> Self {
    let cells = (0..grid.count).map(|_| BTreeMap::new()).collect();
    Self { grid, cells }
  }

  fn cell(&mut self, secs: i64, version: &str) -> Option<&mut Acc> {
    let i = self.grid.index(secs)?;
    Some(self.cells[i].entry(version.to_string()).or_default())
  }

  /// A usage record whose window starts at `window_start`.
  pub fn add_usage(&mut self, window_start: i64, version: &str, usage: &Usage) {
    if let Some(acc) = self.cell(window_start, version) {
      acc.usage += usage;
      acc.usage_seen = true;
    }
  }

  /// A version's events of the minute starting `minute`.
  pub fn add_minute(&mut self, minute: i64, version: &str, stats: &MinuteStats) {
    if let Some(acc) = self.cell(minute, version) {
      acc.stats.merge(stats);
    }
  }

  pub fn finish(self) -> Vec<Bucket> {
    let grid = self.grid;
    self
      .cells
      .into_iter()
      .enumerate()
      .map(|(i, versions)| {
        let mut total = Acc::default();
        for acc in versions.values() {
          total.merge(acc);
        }
        Bucket {
          start: Timestamp(grid.since + grid.step * i as i64),
          counts: total.counts(),
          by_version: versions
            .iter()
            .map(|(version, acc)| VersionCounts {
              version: version.clone(),
              counts: acc.counts(),
            })
            .collect(),
        }
      })
      .collect()
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::observe::filter::tests::fetch;

  fn event(outcome: &str, cpu_us: u64) -> TraceEvent {
    let mut e = fetch(outcome, "GET", "https://a.test/");
    e.cpu_us = cpu_us;
    e.wall_us = cpu_us * 2;
    e
  }

  #[test]
  fn grids_cover_whole_minutes() {
    let g = Grid::new(125, 300, 60).unwrap();
    assert_eq!((g.since, g.count, g.until()), (120, 3, 300));
    assert_eq!(g.index(119), None);
    assert_eq!(g.index(120), Some(0));
    assert_eq!(g.index(179), Some(0));
    assert_eq!(g.index(180), Some(1));
    assert_eq!(g.index(299), Some(2));
    assert_eq!(g.index(300), None);
    let g = Grid::new(0, 301, 300).unwrap();
    assert_eq!(g.count, 2);
    assert!(Grid::new(0, 100, 30)
      .unwrap_err()
      .contains("multiple of 60"));
    assert!(Grid::new(0, 100, 90).is_err());
    assert!(Grid::new(100, 100, 60).is_err());
    assert!(Grid::new(0, 60 * 1441, 60).unwrap_err().contains("1440"));
    assert_eq!(minute_of(1_700_000_039_999), 1_699_999_980);
    assert_eq!(minute_of(1_700_000_040_000), 1_700_000_040);
    assert_eq!(minute_of(1_700_000_099_999), 1_700_000_040);
  }

  #[test]
  fn merged_sketches_answer_like_one() {
    // 1..=1000 ms split over three minutes' sketches, merged.
    let mut parts = [
      MinuteStats::default(),
      MinuteStats::default(),
      MinuteStats::default(),
    ];
    let mut whole = MinuteStats::default();
    for ms in 1..=1000u64 {
      let e = event("ok", ms * 1000);
      parts[(ms % 3) as usize].add(&e);
      whole.add(&e);
    }
    let mut merged = MinuteStats::default();
    for p in &parts {
      // Through their stored form, as the database keeps them.
      let stored = serde_json::to_string(p).unwrap();
      merged.merge(&serde_json::from_str(&stored).unwrap());
    }
    assert_eq!(merged.events(), 1000);
    for q in [0.5, 0.9, 0.99] {
      let got = merged.cpu.quantile(q).unwrap().unwrap();
      assert_eq!(got, whole.cpu.quantile(q).unwrap().unwrap());
      // Within the stated relative error of the exact value.
      let exact = (q * 999.0).floor() + 1.0;
      assert!(
        (got - exact).abs() <= exact * RELATIVE_ERROR,
        "p{q}: {got} vs {exact}"
      );
    }
  }

  #[test]
  fn buckets_take_counts_from_usage_where_there_is_some() {
    let grid = Grid::new(0, 180, 60).unwrap();
    let mut b = Buckets::new(grid);
    let mut m0 = MinuteStats::default();
    for _ in 0..8 {
      m0.add(&event("ok", 1000));
    }
    m0.add(&event("exception", 1000));
    m0.add(&event("exceededCpu", 50_000));
    b.add_minute(0, "h1", &m0);
    // Usage says 12 requests (2 events were lost), 2 errors.
    let usage = Usage {
      requests: 12,
      errors: 2,
      subrequests: 3,
      egress_bytes: 100,
      ..Usage::default()
    };
    b.add_usage(5, "h1", &usage);
    // Minute 1: another version, events only.
    let mut m1 = MinuteStats::default();
    m1.add(&event("ok", 2000));
    b.add_minute(60, "h2", &m1);
    b.add_usage(
      59,
      "h2",
      &Usage {
        requests: 1,
        ..Usage::default()
      },
    );
    // Out of range: ignored.
    b.add_usage(180, "h1", &usage);
    let buckets = b.finish();
    assert_eq!(buckets.len(), 3);
    let first = &buckets[0];
    assert_eq!(first.start, Timestamp(0));
    assert_eq!(first.counts.requests, 13);
    assert_eq!(first.counts.errors, 2);
    assert_eq!(first.counts.events, 10);
    assert_eq!(
      first.counts.errors_by_outcome,
      BTreeMap::from([("exception".into(), 1), ("exceededCpu".into(), 1)])
    );
    assert_eq!(first.counts.subrequests, 3);
    assert_eq!(first.by_version.len(), 2);
    assert_eq!(first.by_version[0].version, "h1");
    assert_eq!(first.by_version[0].counts.requests, 12);
    // h2's usage fell in minute 0 but its events in minute 1.
    assert_eq!(first.by_version[1].counts.requests, 1);
    assert_eq!(first.by_version[1].counts.events, 0);
    let p50 = first.counts.cpu_ms.p50.unwrap();
    // Within 1 % (and the µs rounding of the answer).
    assert!((p50 - 1.0).abs() <= 0.011, "{p50}");
    let second = &buckets[1];
    assert_eq!(second.counts.requests, 1, "events stand in for usage");
    assert_eq!(second.counts.errors, 0);
    assert_eq!(buckets[2].counts.requests, 0);
    assert_eq!(buckets[2].counts.cpu_ms.p50, None);
    // Per version sums to the total.
    for b in &buckets {
      let sum: u64 = b.by_version.iter().map(|v| v.counts.requests).sum();
      assert_eq!(sum, b.counts.requests);
    }
  }
}
