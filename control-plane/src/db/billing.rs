//! What invoices are made of: each account's usage per worker and day, and
//! the invoices of closed months, kept as issued so they never change.
//!
//! A usage record belongs to the month its window ended in, unless that
//! month's invoice was already issued when the record arrived (an edge was
//! cut off across the month's end): then it is billed in the month it was
//! stored, so no usage is lost and no issued invoice moves.

use super::sql::params;
use super::sql::OptionalExtension as _;

use super::to_u64;
use super::Db;
use super::Error;
use super::Result;
use crate::billing::DayUsage;
use crate::billing::Invoice;

fn month_of(secs: i64) -> String {
  let t =
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
  format!("{:04}-{:02}", t.year(), u8::from(t.month()))
}

fn day_of(secs: i64) -> String {
  let t =
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
  format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

impl Db {
  /// `account`'s usage billed in `month` (`[start, end)` in Unix seconds),
  /// per worker and day.
  pub fn billable_usage(
    &self,
    account: &str,
    month: &str,
    start: i64,
    end: i64,
  ) -> Result<Vec<DayUsage>> {
    let conn = self.conn();
    let issued: std::collections::HashMap<String, i64> = {
      let mut stmt = conn.prepare("SELECT month, issued_at FROM invoices WHERE account = ?1")?;
      let rows = stmt.query_map([account], |r| Ok((r.get(0)?, r.get(1)?)))?;
      rows.collect::<super::sql::Result<_>>()?
    };
    let mut stmt = conn.prepare(
      "SELECT u.worker, u.window_end, b.stored_at, u.requests, u.cpu_us, u.egress_bytes,
              u.kv_reads, u.kv_writes, u.kv_deletes, u.kv_lists, u.queue_ops
       FROM usage u JOIN usage_batches b ON b.id = u.batch_id
       WHERE u.account = ?1
         AND ((u.window_end >= ?2 AND u.window_end < ?3) OR (b.stored_at >= ?2 AND b.stored_at < ?3))",
    )?;
    let mut rows = stmt.query(params![account, start, end])?;
    let mut days: std::collections::BTreeMap<(String, String), DayUsage> = Default::default();
    while let Some(r) = rows.next()? {
      let worker: String = r.get(0)?;
      let (window_end, stored_at): (i64, i64) = (r.get(1)?, r.get(2)?);
      let natural = month_of(window_end);
      let late = issued.get(&natural).is_some_and(|at| stored_at > *at);
      let billed_at = if late { stored_at } else { window_end };
      if month_of(billed_at) != month {
        continue;
      }
      let day = day_of(billed_at);
      let entry = days
        .entry((day.clone(), worker.clone()))
        .or_insert_with(|| DayUsage::new(day, worker));
      let n = |i: usize| r.get::<i64>(i).map(to_u64);
      entry.requests += n(3)?;
      entry.cpu_us += n(4)?;
      entry.egress_bytes += n(5)?;
      entry.kv_reads += n(6)?;
      entry.kv_writes += n(7)?;
      entry.kv_deletes += n(8)?;
      entry.kv_lists += n(9)?;
      entry.queue_ops += n(10)?;
    }
    Ok(days.into_values().collect())
  }

  /// The issued invoice of a closed month, if there is one.
  pub fn issued_invoice(&self, account: &str, month: &str) -> Result<Option<String>> {
    Ok(
      self
        .conn()
        .query_row(
          "SELECT body FROM invoices WHERE account = ?1 AND month = ?2",
          [account, month],
          |r| r.get(0),
        )
        .optional()?,
    )
  }

  /// Keeps a closed month's invoice as issued (the first one stored wins:
  /// two readers at once issue the same invoice once).
  pub fn issue_invoice(&self, invoice: &Invoice, issued_at: i64) -> Result<String> {
    let body = serde_json::to_string(invoice).map_err(|e| Error::Corrupt(e.to_string()))?;
    self.write(|tx| {
      tx.execute(
        "INSERT INTO invoices (account, month, issued_at, body) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT DO NOTHING",
        params![invoice.account, invoice.month, issued_at, body],
      )?;
      Ok(tx.query_row(
        "SELECT body FROM invoices WHERE account = ?1 AND month = ?2",
        [&invoice.account, &invoice.month],
        |r| r.get(0),
      )?)
    })
  }

  /// Every account's name, for the billing report.
  pub fn account_names(&self) -> Result<Vec<String>> {
    let conn = self.conn();
    let mut stmt = conn.prepare("SELECT name FROM accounts ORDER BY name")?;
    let rows = stmt.query_map((), |r| r.get(0))?;
    Ok(rows.collect::<super::sql::Result<_>>()?)
  }

  /// Whether `account` exists.
  pub fn account_exists(&self, account: &str) -> Result<bool> {
    Ok(self.conn().query_row(
      "SELECT EXISTS (SELECT 1 FROM accounts WHERE name = ?1)",
      [account],
      |r| r.get(0),
    )?)
  }
}
