//! Cron schedules (not versioned: they apply to whatever version is
//! deployed) and the runs of their ticks, the last [`KEEP_RUNS`] per worker.

use super::sql::params;
use super::sql::OptionalExtension as _;
use isola_proto::cron::Schedule;
use isola_proto::msg::RunOutcome;
use isola_proto::names::edge_worker_name;
use isola_proto::names::split_edge_worker_name;
use serde::Serialize;

use super::require_worker;
use super::to_i64;
use super::to_u64;
use super::Db;
use super::Error;
use super::Result;
use crate::scheduler::CronKey;
use crate::scheduler::Entry;
use crate::scheduler::InFlight;
use crate::scheduler::Millis;
use crate::scheduler::RunRecord;

/// Runs kept per worker, as Cloudflare's Cron Events keeps.
pub const KEEP_RUNS: i64 = 100;

/// A run of a tick, as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleRun {
  pub id: u64,
  pub cron: String,
  /// The tick's nominal time, RFC 3339 with milliseconds (UTC).
  pub scheduled_time: String,
  /// 1 for the first try of a tick, 2.. for retries; 0 for a tick that never
  /// ran (skipped, missed, no edge).
  pub attempt: u32,
  /// The edge it ran on, if it was sent to one.
  pub edge: Option<String>,
  /// `ok`, `exception`, `exceededCpu`, `exceededMemory`, `exceededWallTime`,
  /// `exceededResources`, `unavailable`, `lost`, `skipped`, `missed`,
  /// `noEdge`, or `running`.
  pub outcome: String,
  /// When the scheduler sent it (or judged it), RFC 3339 with milliseconds.
  pub started_at: String,
  /// Manifest hash of the version that ran.
  pub version: Option<String>,
  pub duration_ms: f64,
  pub cpu_ms: f64,
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: Millis) -> String {
  time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
    .ok()
    .and_then(|t| {
      t.format(&time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
      ))
      .ok()
    })
    .unwrap_or_else(|| ms.to_string())
}

fn key_of(account: &str, worker: &str, cron: String) -> CronKey {
  CronKey {
    worker: edge_worker_name(account, worker),
    cron,
  }
}

fn split(key: &CronKey) -> Result<(&str, &str)> {
  split_edge_worker_name(&key.worker)
    .ok_or_else(|| Error::Corrupt(format!("worker name {:?} has no account", key.worker)))
}

impl Db {
  /// Replaces a worker's crons. One already there keeps its next due time;
  /// a new one first fires after `now`.
  pub fn set_schedules(
    &self,
    account: &str,
    worker: &str,
    schedules: &[Schedule],
    now: Millis,
  ) -> Result<()> {
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let kept: Vec<&str> = schedules.iter().map(Schedule::as_str).collect();
      let old: Vec<String> = {
        let mut stmt =
          tx.prepare("SELECT cron FROM schedules WHERE account = ?1 AND worker = ?2")?;
        let rows = stmt.query_map([account, worker], |r| r.get(0))?;
        rows.collect::<super::sql::Result<_>>()?
      };
      for cron in &old {
        if !kept.contains(&cron.as_str()) {
          tx.execute(
            "DELETE FROM schedules WHERE account = ?1 AND worker = ?2 AND cron = ?3",
            [account, worker, cron],
          )?;
        }
      }
      for (position, schedule) in schedules.iter().enumerate() {
        let next = schedule.next_after(now).unwrap_or(Millis::MAX);
        tx.execute(
          "INSERT INTO schedules (account, worker, cron, position, next_due)
           VALUES (?1, ?2, ?3, ?4, ?5)
           ON CONFLICT (account, worker, cron) DO UPDATE SET position = excluded.position",
          params![account, worker, schedule.as_str(), position as i64, next],
        )?;
      }
      super::notify(tx, "schedules")
    })
  }

  /// A worker's crons, in the order they were given.
  pub fn schedules(&self, account: &str, worker: &str) -> Result<Vec<String>> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn
      .prepare("SELECT cron FROM schedules WHERE account = ?1 AND worker = ?2 ORDER BY position")?;
    let rows = stmt.query_map([account, worker], |r| r.get(0))?;
    Ok(rows.collect::<super::sql::Result<_>>()?)
  }

  /// Every schedule, for the scheduler.
  pub fn all_schedules(&self) -> Result<Vec<Entry>> {
    let conn = self.conn();
    let mut stmt = conn.prepare("SELECT account, worker, cron, next_due FROM schedules")?;
    let rows = stmt.query_map((), |r| {
      Ok((
        r.get::<String>(0)?,
        r.get::<String>(1)?,
        r.get::<String>(2)?,
        r.get::<i64>(3)?,
      ))
    })?;
    let mut entries = Vec::new();
    for row in rows {
      let (account, worker, cron, next_due) = row?;
      let schedule = Schedule::parse(&cron).map_err(|e| Error::Corrupt(e.to_string()))?;
      entries.push(Entry {
        key: key_of(&account, &worker, cron),
        schedule,
        next_due,
      });
    }
    Ok(entries)
  }

  /// Stores a cron's next due time (if the cron still exists).
  pub fn advance_schedule(&self, key: &CronKey, next_due: Millis) -> Result<()> {
    let (account, worker) = split(key)?;
    self.write(|tx| {
      tx.execute(
        "UPDATE schedules SET next_due = ?4 WHERE account = ?1 AND worker = ?2 AND cron = ?3",
        params![account, worker, key.cron, next_due],
      )?;
      Ok(())
    })
  }

  /// Stores an attempt that was sent, with no outcome yet.
  pub fn run_sent(&self, run: &InFlight) -> Result<()> {
    let (account, worker) = split(&run.key)?;
    self.write(|tx| {
      tx.execute(
        "INSERT INTO schedule_runs (id, account, worker, cron, scheduled_time, attempt, edge, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
          to_i64(run.id),
          account,
          worker,
          run.key.cron,
          run.scheduled_time,
          run.attempt,
          run.edge,
          run.dispatched_at
        ],
      )?;
      Ok(())
    })
  }

  /// Stores how an attempt or a tick ended, and keeps the worker's last
  /// [`KEEP_RUNS`] runs.
  pub fn run_ended(&self, record: &RunRecord) -> Result<()> {
    let (account, worker) = split(&record.key)?;
    self.write(|tx| {
      tx.execute(
        "INSERT INTO schedule_runs
           (id, account, worker, cron, scheduled_time, attempt, edge, started_at, outcome,
            version, cpu_us, wall_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (id) DO UPDATE SET outcome = excluded.outcome, version = excluded.version,
           cpu_us = excluded.cpu_us, wall_us = excluded.wall_us",
        params![
          to_i64(record.id),
          account,
          worker,
          record.key.cron,
          record.scheduled_time,
          record.attempt,
          record.edge,
          record.started_at,
          record.outcome.as_str(),
          record.version,
          to_i64(record.cpu_us),
          to_i64(record.wall_us)
        ],
      )?;
      tx.execute(
        "DELETE FROM schedule_runs WHERE account = ?1 AND worker = ?2 AND id <= (
           SELECT id FROM schedule_runs WHERE account = ?1 AND worker = ?2
           ORDER BY id DESC LIMIT 1 OFFSET ?3)",
        params![account, worker, KEEP_RUNS],
      )?;
      Ok(())
    })
  }

  /// Drops an attempt that is still in flight (it was handed to another
  /// edge under a new id).
  pub fn forget_run(&self, id: u64) -> Result<()> {
    self.write(|tx| {
      tx.execute(
        "DELETE FROM schedule_runs WHERE id = ?1 AND outcome IS NULL",
        [to_i64(id)],
      )?;
      Ok(())
    })
  }

  /// Attempts sent and not ended, for a scheduler starting up.
  pub fn runs_in_flight(&self) -> Result<Vec<InFlight>> {
    let conn = self.conn();
    let mut stmt = conn.prepare(
      "SELECT id, account, worker, cron, scheduled_time, attempt, edge, started_at
       FROM schedule_runs WHERE outcome IS NULL",
    )?;
    let rows = stmt.query_map((), |r| {
      Ok(InFlight {
        id: to_u64(r.get(0)?),
        key: key_of(&r.get::<String>(1)?, &r.get::<String>(2)?, r.get(3)?),
        scheduled_time: r.get(4)?,
        attempt: r.get(5)?,
        edge: r.get::<Option<String>>(6)?.unwrap_or_default(),
        dispatched_at: r.get(7)?,
      })
    })?;
    Ok(rows.collect::<super::sql::Result<_>>()?)
  }

  /// The highest run id stored. Old runs are trimmed oldest first, so the
  /// highest stays and ids are never reused.
  pub fn last_run_id(&self) -> Result<u64> {
    let conn = self.conn();
    let id: Option<i64> = conn
      .query_row("SELECT MAX(id) FROM schedule_runs", (), |r| r.get(0))
      .optional()?
      .flatten();
    Ok(to_u64(id.unwrap_or(0)))
  }

  /// A worker's last runs, newest first.
  pub fn schedule_runs(&self, account: &str, worker: &str) -> Result<Vec<ScheduleRun>> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn.prepare(
      "SELECT id, cron, scheduled_time, attempt, edge, outcome, started_at, version, cpu_us, wall_us
       FROM schedule_runs WHERE account = ?1 AND worker = ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![account, worker, KEEP_RUNS], |r| {
      let outcome: Option<String> = r.get(5)?;
      Ok(ScheduleRun {
        id: to_u64(r.get(0)?),
        cron: r.get(1)?,
        scheduled_time: rfc3339_ms(r.get(2)?),
        attempt: r.get(3)?,
        edge: r.get(4)?,
        outcome: outcome.unwrap_or_else(|| "running".into()),
        started_at: rfc3339_ms(r.get(6)?),
        version: r.get(7)?,
        cpu_ms: to_u64(r.get(8)?) as f64 / 1000.0,
        duration_ms: to_u64(r.get(9)?) as f64 / 1000.0,
      })
    })?;
    let runs: Vec<ScheduleRun> = rows.collect::<super::sql::Result<_>>()?;
    debug_assert!(runs
      .iter()
      .all(|r| r.outcome == "running" || RunOutcome::parse(&r.outcome).is_some()));
    Ok(runs)
  }
}
