//! Invocation logs: trace events kept per worker at its head sampling
//! rate for its retention, with the per-minute analytics sketches built
//! from every event (sampled or not).

use std::collections::BTreeMap;
use std::collections::HashMap;

use super::sql::params;
use super::sql::OptionalExtension as _;
use super::sql::Value;
use isola_proto::names::split_edge_worker_name;
use isola_proto::trace::TraceEvent;
use serde::Deserialize;
use serde::Serialize;

use super::require_worker;
use super::Db;
use super::Error;
use super::Result;
use crate::observe::analytics::minute_of;
use crate::observe::analytics::MinuteStats;
use crate::observe::filter::search_text;
use crate::observe::filter::Status;
use crate::observe::message::LogColumns;
use crate::observe::message::StoredMessage;
use crate::observe::message::TailMessage;

/// Head sampling rate of a worker without settings: every log kept.
pub const DEFAULT_HEAD_SAMPLING_RATE: f64 = 1.0;
/// Retention of a worker without settings.
pub const DEFAULT_RETENTION_DAYS: u32 = 7;
/// Longest retention one may set.
pub const MAX_RETENTION_DAYS: u32 = 90;
/// How long analytics sketches are kept, whatever the log retention.
pub const SKETCH_RETENTION_DAYS: i64 = 90;

const DAY_MS: i64 = 86_400_000;

/// A worker's observability settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Observability {
  /// Share of invocations whose logs are kept, in (0, 1]. Tails and
  /// analytics see every event.
  pub head_sampling_rate: f64,
  /// Days logs are kept, 1 to 90.
  pub retention_days: u32,
}

impl Default for Observability {
  fn default() -> Self {
    Self {
      head_sampling_rate: DEFAULT_HEAD_SAMPLING_RATE,
      retention_days: DEFAULT_RETENTION_DAYS,
    }
  }
}

/// Which logs, and which page of them.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
  /// ms since the epoch, `[since, until)`.
  pub since: Option<i64>,
  pub until: Option<i64>,
  pub status: Vec<Status>,
  /// Version hashes.
  pub version: Vec<String>,
  pub search: Option<String>,
  pub limit: usize,
  /// From a previous page's `cursor`.
  pub cursor: Option<String>,
}

/// Newest first; `cursor` asks for the next page, if there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct LogPage {
  pub logs: Vec<serde_json::Value>,
  pub cursor: Option<String>,
}

fn parse_cursor(cursor: &str) -> Result<(i64, i64)> {
  cursor
    .split_once('.')
    .and_then(|(t, id)| Some((t.parse().ok()?, id.parse().ok()?)))
    .ok_or_else(|| {
      Error::Invalid(format!(
        "cursor={cursor:?} is not one this API gave; pass the `cursor` of the previous page"
      ))
    })
}

/// Deletes the logs past their worker's retention (`?3` days if it has
/// none) as of `?1` (`?2`: ms per day), among those older than `?4`.
const PRUNE_LOGS: &str =
  "DELETE FROM invocation_logs WHERE timestamp < ?4 AND timestamp < ?1 - ?2 * COALESCE(
     (SELECT retention_days FROM observability o
      WHERE o.account = invocation_logs.account AND o.worker = invocation_logs.worker),
     ?3)";

impl Db {
  pub fn observability(&self, account: &str, worker: &str) -> Result<Observability> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let row = conn
      .query_row(
        "SELECT head_sampling_rate, retention_days FROM observability
         WHERE account = ?1 AND worker = ?2",
        [account, worker],
        |row| {
          Ok(Observability {
            head_sampling_rate: row.get(0)?,
            retention_days: row.get(1)?,
          })
        },
      )
      .optional()?;
    Ok(row.unwrap_or_default())
  }

  pub fn set_observability(&self, account: &str, worker: &str, o: &Observability) -> Result<()> {
    if !(o.head_sampling_rate > 0.0 && o.head_sampling_rate <= 1.0) {
      return Err(Error::Invalid(format!(
        "head_sampling_rate {} is not in (0, 1]; e.g. 0.1 keeps the logs of one invocation in ten",
        o.head_sampling_rate
      )));
    }
    if !(1..=MAX_RETENTION_DAYS).contains(&o.retention_days) {
      return Err(Error::Invalid(format!(
        "retention_days {} is not from 1 to {MAX_RETENTION_DAYS}",
        o.retention_days
      )));
    }
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      tx.execute(
        "INSERT INTO observability (account, worker, head_sampling_rate, retention_days)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (account, worker) DO UPDATE SET
           head_sampling_rate = excluded.head_sampling_rate,
           retention_days = excluded.retention_days",
        params![account, worker, o.head_sampling_rate, o.retention_days],
      )?;
      Ok(())
    })
  }

  /// Stores trace events in one transaction: each event's log if `keep`
  /// says so given its worker's head sampling rate, and every event into
  /// its minute's sketches. Returns how many logs were kept.
  pub fn store_traces(
    &self,
    events: &[TraceEvent],
    keep: &mut dyn FnMut(f64) -> bool,
  ) -> Result<usize> {
    self.write(|tx| {
      // Keyed on the events' own strings: a batch holds thousands of events
      // of a few workers, and copying the keys cost more than the lookups.
      let mut rates: HashMap<(&str, &str), f64> = HashMap::new();
      let mut minutes: BTreeMap<(&str, &str, &str, i64), MinuteStats> = BTreeMap::new();
      let mut kept = 0;
      let mut insert = tx.prepare(
        "INSERT INTO invocation_logs
           (account, worker, version, edge, timestamp, outcome, message, search)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
      )?;
      for e in events {
        let Some((account, worker)) = split_edge_worker_name(&e.worker) else {
          tracing::warn!(worker = %e.worker, "a trace event of a worker that is no account_worker; dropped");
          continue;
        };
        let key = (account, worker);
        let rate = match rates.get(&key) {
          Some(rate) => *rate,
          None => {
            let rate = tx
              .query_row(
                "SELECT head_sampling_rate FROM observability WHERE account = ?1 AND worker = ?2",
                [account, worker],
                |row| row.get(0),
              )
              .optional()?
              .unwrap_or(DEFAULT_HEAD_SAMPLING_RATE);
            rates.insert(key, rate);
            rate
          }
        };
        minutes
          .entry((account, worker, &e.version, minute_of(e.timestamp)))
          .or_default()
          .add(e);
        if keep(rate) {
          let message = serde_json::to_string(&StoredMessage::from(e))
            .map_err(|e| Error::Corrupt(e.to_string()))?;
          insert.execute(params![
            account,
            worker,
            e.version,
            e.edge,
            e.timestamp,
            e.outcome,
            message,
            search_text(e),
          ])?;
          kept += 1;
        }
      }
      for ((account, worker, version, minute), mut stats) in minutes {
        let old: Option<String> = tx
          .query_row(
            "SELECT stats FROM trace_minutes
             WHERE account = ?1 AND worker = ?2 AND version = ?3 AND minute = ?4",
            params![account, worker, version, minute],
            |row| row.get(0),
          )
          .optional()?;
        if let Some(old) = old {
          let old: MinuteStats = serde_json::from_str(&old)
            .map_err(|e| Error::Corrupt(format!("analytics sketch: {e}")))?;
          stats.merge(&old);
        }
        let stats =
          serde_json::to_string(&stats).map_err(|e| Error::Corrupt(e.to_string()))?;
        tx.execute(
          "INSERT INTO trace_minutes (account, worker, version, minute, stats)
           VALUES (?1, ?2, ?3, ?4, ?5)
           ON CONFLICT (account, worker, version, minute) DO UPDATE SET stats = excluded.stats",
          params![account, worker, version, minute, stats],
        )?;
      }
      Ok(kept)
    })
  }

  /// A page of a worker's logs, newest first.
  pub fn logs(&self, account: &str, worker: &str, f: &LogFilter) -> Result<LogPage> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut sql = String::from(
      "SELECT timestamp, id, message, outcome, version, edge FROM invocation_logs
       WHERE account = ? AND worker = ?",
    );
    let mut args: Vec<Value> = vec![account.to_string().into(), worker.to_string().into()];
    if let Some(since) = f.since {
      sql.push_str(" AND timestamp >= ?");
      args.push(since.into());
    }
    if let Some(until) = f.until {
      sql.push_str(" AND timestamp < ?");
      args.push(until.into());
    }
    if !f.status.is_empty() {
      let any: Vec<&str> = f
        .status
        .iter()
        .map(|s| match s {
          Status::Ok => "outcome = 'ok'",
          Status::Canceled => "outcome = 'canceled'",
          Status::Error => "outcome NOT IN ('ok', 'canceled')",
        })
        .collect();
      sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    if !f.version.is_empty() {
      sql.push_str(&format!(
        " AND version IN ({})",
        vec!["?"; f.version.len()].join(", ")
      ));
      args.extend(f.version.iter().map(|v| Value::from(v.clone())));
    }
    if let Some(search) = &f.search {
      sql.push_str(" AND instr(search, ?) > 0");
      args.push(search.clone().into());
    }
    if let Some(cursor) = &f.cursor {
      let (t, id) = parse_cursor(cursor)?;
      sql.push_str(" AND (timestamp, id) < (?, ?)");
      args.push(t.into());
      args.push(id.into());
    }
    sql.push_str(" ORDER BY timestamp DESC, id DESC LIMIT ?");
    args.push(i64::try_from(f.limit + 1).unwrap_or(i64::MAX).into());
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt
      .query_map(args, |row| {
        Ok((
          row.get::<i64>(0)?,
          row.get::<i64>(1)?,
          row.get::<String>(2)?,
          (
            row.get::<String>(3)?,
            row.get::<String>(4)?,
            row.get::<String>(5)?,
          ),
        ))
      })?
      .collect::<super::sql::Result<Vec<_>>>()?;
    let more = rows.len() > f.limit;
    rows.truncate(f.limit);
    let cursor = more
      .then(|| rows.last().map(|(t, id, ..)| format!("{t}.{id}")))
      .flatten();
    let logs = rows
      .into_iter()
      .map(|(timestamp, _, stored, (outcome, version, edge))| {
        let corrupt = |e: serde_json::Error| Error::Corrupt(format!("invocation log: {e}"));
        let stored = serde_json::from_str(&stored).map_err(corrupt)?;
        let columns = LogColumns {
          outcome,
          timestamp,
          worker: worker.to_string(),
          version,
          edge,
        };
        serde_json::to_value(TailMessage::from_stored(stored, columns)).map_err(corrupt)
      })
      .collect::<Result<Vec<_>>>()?;
    Ok(LogPage { logs, cursor })
  }

  /// Deletes logs older than their worker's retention and sketches older
  /// than [`SKETCH_RETENTION_DAYS`], as of `now_ms`. Returns how many of
  /// each.
  pub fn prune_traces(&self, now_ms: i64) -> Result<(usize, usize)> {
    self.write(|tx| {
      // No log younger than the shortest retention goes. Bounded by it, the
      // DELETE walks `invocation_logs_by_time` from its oldest end; with only
      // each row's own retention to go by it read the whole table, in a
      // write transaction that held the store's connection meanwhile.
      let shortest: Option<i64> =
        tx.query_row("SELECT MIN(retention_days) FROM observability", (), |row| {
          row.get(0)
        })?;
      let shortest = shortest.map_or(i64::from(DEFAULT_RETENTION_DAYS), |days| {
        days.min(i64::from(DEFAULT_RETENTION_DAYS))
      });
      let logs = tx.execute(
        PRUNE_LOGS,
        params![
          now_ms,
          DAY_MS,
          DEFAULT_RETENTION_DAYS,
          now_ms.saturating_sub(DAY_MS.saturating_mul(shortest))
        ],
      )?;
      let minutes = tx.execute(
        "DELETE FROM trace_minutes WHERE minute < ?1",
        [now_ms / 1000 - SKETCH_RETENTION_DAYS * 86_400],
      )?;
      Ok((logs, minutes))
    })
  }

  /// The hash of `worker`'s version `id` (a version id or hash), for
  /// filters: edges know versions by hash.
  pub fn version_hash(&self, account: &str, worker: &str, id: &str) -> Result<String> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    conn
      .query_row(
        "SELECT hash FROM versions WHERE account = ?1 AND worker = ?2 AND (id = ?3 OR hash = ?3)
         LIMIT 1",
        [account, worker, id],
        |row| row.get(0),
      )
      .optional()?
      .ok_or_else(|| {
        Error::Invalid(format!(
          "version={id:?} is no version of worker {worker:?}; give an id or hash from GET \
           /v1/workers/{worker}/versions"
        ))
      })
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::db::testing::open;
  use crate::db::testing::upload;
  use crate::observe::filter::tests::fetch;

  fn event(outcome: &str, timestamp: i64, path: &str) -> TraceEvent {
    let mut e = fetch(outcome, "GET", &format!("https://a.test{path}"));
    e.timestamp = timestamp;
    e
  }

  #[test]
  fn logs_page_newest_first_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    let events: Vec<_> = (0..25)
      .map(|i| {
        event(
          if i % 5 == 0 { "exception" } else { "ok" },
          1000 + i,
          &format!("/{i}"),
        )
      })
      .collect();
    assert_eq!(db.store_traces(&events, &mut |_| true).unwrap(), 25);
    let mut f = LogFilter {
      limit: 10,
      ..LogFilter::default()
    };
    let mut seen = Vec::new();
    loop {
      let page = db.logs("acme", "api", &f).unwrap();
      seen.extend(
        page
          .logs
          .iter()
          .map(|l| l["eventTimestamp"].as_i64().unwrap()),
      );
      match page.cursor {
        Some(c) => f.cursor = Some(c),
        None => break,
      }
    }
    assert_eq!(seen, (1000..1025).rev().collect::<Vec<_>>());
    let errors = db
      .logs(
        "acme",
        "api",
        &LogFilter {
          status: vec![Status::Error],
          limit: 100,
          ..LogFilter::default()
        },
      )
      .unwrap();
    assert_eq!(errors.logs.len(), 5);
    assert!(errors.logs.iter().all(|l| l["outcome"] == "exception"));
    let found = db
      .logs(
        "acme",
        "api",
        &LogFilter {
          search: Some("a.test/13".into()),
          since: Some(1010),
          until: Some(1020),
          limit: 100,
          ..LogFilter::default()
        },
      )
      .unwrap();
    assert_eq!(found.logs.len(), 1);
    let none = db
      .logs(
        "acme",
        "api",
        &LogFilter {
          version: vec!["other".into()],
          limit: 100,
          ..LogFilter::default()
        },
      )
      .unwrap();
    assert!(none.logs.is_empty() && none.cursor.is_none());
    assert!(matches!(
      db.logs(
        "acme",
        "api",
        &LogFilter {
          cursor: Some("nonsense".into()),
          limit: 1,
          ..LogFilter::default()
        }
      ),
      Err(Error::Invalid(_))
    ));
  }

  /// A row stores its message less what its columns hold, and reads back
  /// whole; a row an older control plane wrote whole reads the same.
  #[test]
  fn a_log_row_stores_its_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    let mut e = event("exception", 1000, "/x");
    e.exceptions.push(isola_proto::trace::ExceptionInfo {
      name: "TypeError".into(),
      message: "boom".into(),
      stack: None,
      timestamp: 1001,
    });
    let mut plain = event("ok", 1002, "/y");
    plain.logs.clear();
    db.store_traces(&[e.clone(), plain.clone()], &mut |_| true)
      .unwrap();
    let stored: Vec<String> = db
      .conn()
      .prepare("SELECT message FROM invocation_logs ORDER BY id")
      .unwrap()
      .query_map(params![], |row| row.get::<String>(0))
      .unwrap()
      .collect::<crate::db::sql::Result<_>>()
      .unwrap();
    for field in [
      "outcome",
      "eventTimestamp",
      "scriptName",
      "scriptVersion",
      "edge",
    ] {
      assert!(!stored[0].contains(field), "{field} in {}", stored[0]);
    }
    // Nothing to say: no empty lists, no `truncated: false`.
    assert!(!stored[1].contains("logs") && !stored[1].contains("truncated"));
    let whole = |e: &TraceEvent| serde_json::to_value(TailMessage::from(e)).unwrap();
    let all = LogFilter {
      limit: 10,
      ..LogFilter::default()
    };
    assert_eq!(
      db.logs("acme", "api", &all).unwrap().logs,
      vec![whole(&plain), whole(&e)]
    );

    let old = event("ok", 1003, "/old");
    db.write(|tx| {
      tx.execute(
        "INSERT INTO invocation_logs
           (account, worker, version, edge, timestamp, outcome, message, search)
         VALUES ('acme', 'api', ?1, ?2, ?3, ?4, ?5, '')",
        params![
          old.version,
          old.edge,
          old.timestamp,
          old.outcome,
          serde_json::to_string(&TailMessage::from(&old)).unwrap(),
        ],
      )?;
      Ok(())
    })
    .unwrap();
    assert_eq!(db.logs("acme", "api", &all).unwrap().logs[0], whole(&old));
  }

  #[test]
  fn sampling_keeps_logs_but_sketches_count_all() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    assert_eq!(
      db.observability("acme", "api").unwrap(),
      Observability::default()
    );
    db.set_observability(
      "acme",
      "api",
      &Observability {
        head_sampling_rate: 0.5,
        retention_days: 3,
      },
    )
    .unwrap();
    let events: Vec<_> = (0..10).map(|i| event("ok", 60_000 + i, "/")).collect();
    let mut rates = Vec::new();
    let mut n = 0;
    let kept = db
      .store_traces(&events, &mut |rate| {
        rates.push(rate);
        n += 1;
        n % 2 == 0
      })
      .unwrap();
    assert_eq!(kept, 5);
    assert!(rates.iter().all(|r| *r == 0.5));
    let stats: String = db
      .conn()
      .query_row(
        "SELECT stats FROM trace_minutes WHERE minute = 60",
        (),
        |r| r.get(0),
      )
      .unwrap();
    let stats: MinuteStats = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats.events(), 10);
    for bad in [
      Observability {
        head_sampling_rate: 0.0,
        retention_days: 7,
      },
      Observability {
        head_sampling_rate: 1.5,
        retention_days: 7,
      },
      Observability {
        head_sampling_rate: 1.0,
        retention_days: 0,
      },
      Observability {
        head_sampling_rate: 1.0,
        retention_days: 91,
      },
    ] {
      assert!(matches!(
        db.set_observability("acme", "api", &bad),
        Err(Error::Invalid(_))
      ));
    }
    assert!(matches!(
      db.observability("acme", "web"),
      Err(Error::NotFound(_))
    ));
  }

  #[test]
  fn pruning_follows_each_workers_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    upload(&db, "acme", "web", "1");
    db.set_observability(
      "acme",
      "web",
      &Observability {
        head_sampling_rate: 1.0,
        retention_days: 1,
      },
    )
    .unwrap();
    let now = 100 * DAY_MS;
    let mut events = Vec::new();
    for age_days in [0, 2, 8] {
      for worker in ["acme_api", "acme_web"] {
        let mut e = event("ok", now - age_days * DAY_MS - 1, "/");
        e.worker = worker.into();
        events.push(e);
      }
    }
    db.store_traces(&events, &mut |_| true).unwrap();
    let (logs, _) = db.prune_traces(now).unwrap();
    // api (7 days) loses the 8-day-old log; web (1 day) the 2- and 8-day-old.
    assert_eq!(logs, 3);
    let all = LogFilter {
      limit: 100,
      ..LogFilter::default()
    };
    assert_eq!(db.logs("acme", "api", &all).unwrap().logs.len(), 2);
    assert_eq!(db.logs("acme", "web", &all).unwrap().logs.len(), 1);
  }

  /// The prune runs every few minutes in a write transaction: it must walk
  /// the time index, not read every log kept. (SQLite's plan: PostgreSQL
  /// plans by its statistics, so an empty table proves nothing there.)
  #[test]
  fn pruning_walks_the_time_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
      &dir.path().join("control.db"),
      crate::secrets::Cipher::new(&[7; 32]),
    )
    .unwrap();
    let plan = db
      .conn()
      .rows(
        &format!("EXPLAIN QUERY PLAN {PRUNE_LOGS}"),
        params![0_i64, DAY_MS, DEFAULT_RETENTION_DAYS, 0_i64],
      )
      .unwrap();
    let steps: Vec<String> = plan.iter().map(|row| row.get(3).unwrap()).collect();
    assert!(
      steps
        .iter()
        .any(|s| s.starts_with("SEARCH invocation_logs USING INDEX invocation_logs_by_time")),
      "{steps:?}"
    );
    assert!(
      !steps.iter().any(|s| s.starts_with("SCAN invocation_logs")),
      "{steps:?}"
    );
  }
}
