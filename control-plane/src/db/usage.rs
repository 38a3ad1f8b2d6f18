//! Usage the edges report: stored once per batch, summed per worker.

use super::sql::params;
use super::sql::Sql;
use isola_proto::msg::Usage;
use isola_proto::msg::UsageBatch;
use isola_proto::msg::UsageRecord;
use isola_proto::names::split_edge_worker_name;

use super::require_worker;
use super::to_i64;
use super::to_u64;
use super::Db;
use super::Result;
use super::Timestamp;

/// One version's usage in a [`UsageSummary`].
#[derive(Clone, Debug, PartialEq)]
pub struct VersionUsage {
  pub hash: String,
  pub usage: Usage,
}

/// A worker's usage over a time range, in the stored units (µs, so sums are
/// exact); the API decides how to show it.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageSummary {
  pub worker: String,
  pub since: Option<Timestamp>,
  pub until: Option<Timestamp>,
  pub total: Usage,
  pub by_version: Vec<VersionUsage>,
}

impl Db {
  /// Sums a worker's usage over windows ending in `[since, until)`.
  pub fn usage(
    &self,
    account: &str,
    worker: &str,
    since: Option<i64>,
    until: Option<i64>,
  ) -> Result<UsageSummary> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn.prepare(
      "SELECT version_hash, SUM(requests), SUM(errors), SUM(cpu_us), SUM(wall_us),
              SUM(egress_bytes), SUM(ingress_bytes), SUM(subrequests), SUM(kv_reads),
              SUM(kv_writes), SUM(kv_deletes), SUM(kv_lists), SUM(queue_ops)
       FROM usage
       WHERE account = ?1 AND worker = ?2 AND window_end >= ?3 AND window_end < ?4
       GROUP BY version_hash ORDER BY version_hash",
    )?;
    let by_version = stmt
      .query_map(
        params![
          account,
          worker,
          since.unwrap_or(i64::MIN),
          until.unwrap_or(i64::MAX)
        ],
        |row| {
          Ok((
            row.get::<String>(0)?,
            Usage {
              requests: to_u64(row.get(1)?),
              errors: to_u64(row.get(2)?),
              cpu_us: to_u64(row.get(3)?),
              wall_us: to_u64(row.get(4)?),
              egress_bytes: to_u64(row.get(5)?),
              ingress_bytes: to_u64(row.get(6)?),
              subrequests: to_u64(row.get(7)?),
              kv_reads: to_u64(row.get(8)?),
              kv_writes: to_u64(row.get(9)?),
              kv_deletes: to_u64(row.get(10)?),
              kv_lists: to_u64(row.get(11)?),
              queue_ops: to_u64(row.get(12)?),
            },
          ))
        },
      )?
      .collect::<super::sql::Result<Vec<_>>>()?;
    let mut total = Usage::default();
    for (_, usage) in &by_version {
      total += usage;
    }
    let by_version = by_version
      .into_iter()
      .map(|(hash, usage)| VersionUsage { hash, usage })
      .collect();
    Ok(UsageSummary {
      worker: worker.to_string(),
      since: since.map(Timestamp),
      until: until.map(Timestamp),
      total,
      by_version,
    })
  }
  /// Stores a usage batch from edge `edge`, once: returns `false` (storing
  /// nothing) if its id was stored before. Durable when it returns.
  pub fn store_usage(&self, edge: &str, batch: &UsageBatch) -> Result<bool> {
    self.write(|tx| {
      let inserted = tx.execute(
        "INSERT INTO usage_batches (id, edge, stored_at) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        params![batch.id, edge, Timestamp::now().0],
      )?;
      if inserted == 0 {
        return Ok(false);
      }
      for r in &batch.records {
        let Some((account, worker)) = split_edge_worker_name(&r.worker) else {
          tracing::warn!(edge, worker = %r.worker, "usage for a worker name that is no account_worker; dropped");
          continue;
        };
        insert_usage(tx, &batch.id, edge, account, worker, r)?;
      }
      Ok(true)
    })
  }
}

/// Stores usage the control plane counted itself (a queue batch's
/// deliveries), in the caller's transaction, under batch id `id`: once,
/// however often it is called with that id. The record's `worker` is the
/// edge name.
pub(super) fn store_counted(tx: &Sql<'_>, id: &str, record: &UsageRecord) -> Result<()> {
  let Some((account, worker)) = split_edge_worker_name(&record.worker) else {
    return Err(super::Error::Corrupt(format!(
      "usage for worker {:?}, which is no account_worker name",
      record.worker
    )));
  };
  let inserted = tx.execute(
    "INSERT INTO usage_batches (id, edge, stored_at) VALUES (?1, '', ?2) ON CONFLICT DO NOTHING",
    params![id, Timestamp::now().0],
  )?;
  if inserted > 0 {
    insert_usage(tx, id, "", account, worker, record)?;
  }
  Ok(())
}

fn insert_usage(
  tx: &Sql<'_>,
  batch: &str,
  edge: &str,
  account: &str,
  worker: &str,
  r: &UsageRecord,
) -> Result<()> {
  let u = &r.usage;
  let mut stmt = tx.prepare(
    "INSERT INTO usage (batch_id, edge, account, worker, version_hash, window_start,
       window_end, requests, errors, cpu_us, wall_us, ingress_bytes, egress_bytes, subrequests,
       kv_reads, kv_writes, kv_deletes, kv_lists, queue_ops)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
  )?;
  stmt.execute(params![
    batch,
    edge,
    account,
    worker,
    r.version,
    to_i64(r.start),
    to_i64(r.end),
    to_i64(u.requests),
    to_i64(u.errors),
    to_i64(u.cpu_us),
    to_i64(u.wall_us),
    to_i64(u.ingress_bytes),
    to_i64(u.egress_bytes),
    to_i64(u.subrequests),
    to_i64(u.kv_reads),
    to_i64(u.kv_writes),
    to_i64(u.kv_deletes),
    to_i64(u.kv_lists),
    to_i64(u.queue_ops),
  ])?;
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::db::testing::open;
  use crate::db::testing::upload;
  use crate::db::Error;

  #[test]
  fn a_usage_batch_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    db.enroll_edge("edge-1").unwrap();
    let record = |end, hash: &str| UsageRecord {
      worker: "acme_api".into(),
      version: hash.into(),
      start: end - 1,
      end,
      usage: Usage {
        requests: 10,
        errors: 1,
        cpu_us: 1500,
        wall_us: 20_000,
        ingress_bytes: 100,
        egress_bytes: 1000,
        subrequests: 2,
        kv_reads: 7,
        kv_writes: 3,
        kv_deletes: 1,
        kv_lists: 2,
        queue_ops: 5,
      },
    };
    let batch = UsageBatch {
      id: "b1".into(),
      records: vec![record(100, "h1"), record(200, "h2"), record(300, "h1")],
    };
    assert!(db.store_usage("edge-1", &batch).unwrap());
    assert!(!db.store_usage("edge-1", &batch).unwrap());
    let usage = db.usage("acme", "api", None, None).unwrap();
    assert_eq!(usage.total.requests, 30);
    assert_eq!(usage.total.cpu_us, 4500);
    assert_eq!(
      (
        usage.total.kv_reads,
        usage.total.kv_writes,
        usage.total.kv_deletes,
        usage.total.kv_lists,
        usage.total.queue_ops
      ),
      (21, 9, 3, 6, 15)
    );
    assert_eq!(usage.by_version.len(), 2);
    assert_eq!(usage.by_version[0].hash, "h1");
    assert_eq!(usage.by_version[0].usage.requests, 20);
    let usage = db.usage("acme", "api", Some(200), Some(300)).unwrap();
    assert_eq!(usage.total.requests, 10);
    assert_eq!(usage.by_version[0].hash, "h2");
    assert!(matches!(
      db.usage("acme", "web", None, None),
      Err(Error::NotFound(_))
    ));
  }
}
