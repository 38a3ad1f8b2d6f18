//! Analytics of one worker: its usage records and per-minute sketches in a
//! time range, cut into buckets by [`Buckets`].

use super::sql::params;
use isola_proto::msg::Usage;

use super::require_worker;
use super::to_u64;
use super::Db;
use super::Error;
use super::Result;
use crate::observe::analytics::Bucket;
use crate::observe::analytics::Buckets;
use crate::observe::analytics::Grid;
use crate::observe::analytics::MinuteStats;

impl Db {
  /// `worker`'s buckets over `grid`: usage records by the start of their
  /// window, sketches by their minute.
  pub fn analytics(&self, account: &str, worker: &str, grid: Grid) -> Result<Vec<Bucket>> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut buckets = Buckets::new(grid);
    let mut stmt = conn.prepare(
      "SELECT window_start, version_hash, requests, errors, cpu_us, wall_us, ingress_bytes,
              egress_bytes, subrequests
       FROM usage
       WHERE account = ?1 AND worker = ?2 AND window_end > ?3 AND window_start < ?4
         AND requests > 0",
    )?;
    let mut rows = stmt.query(params![account, worker, grid.since, grid.until()])?;
    while let Some(row) = rows.next()? {
      let usage = Usage {
        requests: to_u64(row.get(2)?),
        errors: to_u64(row.get(3)?),
        cpu_us: to_u64(row.get(4)?),
        wall_us: to_u64(row.get(5)?),
        ingress_bytes: to_u64(row.get(6)?),
        egress_bytes: to_u64(row.get(7)?),
        subrequests: to_u64(row.get(8)?),
        ..Usage::default()
      };
      buckets.add_usage(row.get(0)?, &row.get::<String>(1)?, &usage);
    }
    let mut stmt = conn.prepare(
      "SELECT minute, version, stats FROM trace_minutes
       WHERE account = ?1 AND worker = ?2 AND minute >= ?3 AND minute < ?4",
    )?;
    let mut rows = stmt.query(params![account, worker, grid.since, grid.until()])?;
    while let Some(row) = rows.next()? {
      let stats: MinuteStats = serde_json::from_str(&row.get::<String>(2)?)
        .map_err(|e| Error::Corrupt(format!("analytics sketch: {e}")))?;
      buckets.add_minute(row.get(0)?, &row.get::<String>(1)?, &stats);
    }
    Ok(buckets.finish())
  }
}

#[cfg(test)]
mod tests {
  use isola_proto::msg::UsageBatch;
  use isola_proto::msg::UsageRecord;

  use super::*;
  use crate::db::testing::open;
  use crate::db::testing::upload;
  use crate::observe::filter::tests::fetch;

  #[test]
  fn buckets_hold_usage_and_events_of_their_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    db.enroll_edge("edge-1").unwrap();
    let usage = |start: u64| UsageRecord {
      worker: "acme_api".into(),
      version: "h1".into(),
      start,
      end: start + 1,
      usage: Usage {
        requests: 3,
        errors: 1,
        egress_bytes: 30,
        ..Usage::default()
      },
    };
    db.store_usage(
      "edge-1",
      &UsageBatch {
        id: "b".into(),
        records: vec![usage(120), usage(150), usage(185), usage(300)],
      },
    )
    .unwrap();
    let mut events = Vec::new();
    for (ts, outcome) in [(121_000, "ok"), (122_000, "exception"), (190_000, "ok")] {
      let mut e = fetch(outcome, "GET", "https://a.test/");
      e.timestamp = ts;
      events.push(e);
    }
    db.store_traces(&events, &mut |_| true).unwrap();
    let buckets = db
      .analytics("acme", "api", Grid::new(120, 240, 60).unwrap())
      .unwrap();
    assert_eq!(buckets.len(), 2);
    assert_eq!(buckets[0].counts.requests, 6);
    assert_eq!(buckets[0].counts.errors, 2);
    assert_eq!(buckets[0].counts.events, 2);
    assert_eq!(buckets[0].counts.errors_by_outcome["exception"], 1);
    assert_eq!(buckets[0].counts.egress_bytes, 60);
    assert_eq!(buckets[1].counts.requests, 3);
    assert_eq!(buckets[1].counts.events, 1);
    assert_eq!(buckets[1].by_version[0].version, "h1");
  }
}
