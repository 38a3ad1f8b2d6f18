//! Invocation logs: trace events kept per worker at its head sampling
//! rate for its retention, with the per-minute analytics sketches built
//! from every event (sampled or not). Logs are stored in chunks, a row per
//! worker and minute of a stored batch: a row per log made SQLite's
//! per-row work most of the control plane's CPU per request.

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

/// Deletes the chunks whose newest log is past its worker's retention
/// (`?3` days if it has none) as of `?1` (`?2`: ms per day), among those
/// older than `?4`, and returns how many logs each held. A chunk spans at
/// most [`CHUNK_SPAN_MS`], so a log outlives its retention by at most that.
const PRUNE_LOGS: &str =
  "DELETE FROM log_chunks WHERE last_ts < ?4 AND last_ts < ?1 - ?2 * COALESCE(
     (SELECT retention_days FROM observability o
      WHERE o.account = log_chunks.account AND o.worker = log_chunks.worker),
     ?3)
   RETURNING logs";

/// Logs a chunk holds at most: a page read decodes whole chunks.
const CHUNK_LOGS: usize = 4096;
/// The span of log timestamps one chunk holds (retention is kept to it).
const CHUNK_SPAN_MS: i64 = 60_000;
/// A log's id is its chunk's id shifted by this, plus its place in it.
const CHUNK_ID_SHIFT: u32 = 24;
/// Chunks a page read fetches at once.
const CHUNKS_READ: usize = 8;
/// A chunk's body: a JSON array of [`ChunkEntry`]s.
const CODEC_JSON: i64 = 0;
/// A chunk's body: the same, LZ4 block-compressed (its size prepended).
const CODEC_LZ4_JSON: i64 = 1;
/// The largest chunk body a read decompresses (a corrupt size is refused,
/// not allocated).
const MAX_CHUNK_BYTES: usize = 256 << 20;

/// One log in a chunk: timestamp, outcome, version, edge, the message less
/// those columns, and the text `search` looks through: empty as chunks are
/// written now (the message holds it), whole in chunks the migration made.
#[derive(Debug, Deserialize)]
struct ChunkEntry(i64, String, String, String, StoredMessage, String);

impl ChunkEntry {
  /// Whether the log passes `f` (all but its cursor).
  fn matches(&self, f: &LogFilter) -> bool {
    let Self(timestamp, outcome, version, _, message, search) = self;
    f.since.is_none_or(|since| *timestamp >= since)
      && f.until.is_none_or(|until| *timestamp < until)
      && (f.status.is_empty() || f.status.contains(&Status::of(outcome)))
      && (f.version.is_empty() || f.version.contains(version))
      && f.search.as_deref().is_none_or(|text| {
        if search.is_empty() {
          message.search_text().contains(text)
        } else {
          search.contains(text)
        }
      })
  }
}

/// A chunk being written: its body so far, a JSON array left open.
#[derive(Default)]
struct ChunkWriter {
  json: Vec<u8>,
  logs: usize,
  first: i64,
  last: i64,
}

impl ChunkWriter {
  fn push(&mut self, e: &TraceEvent) -> Result<()> {
    if self.logs == 0 {
      // A log's JSON is a few hundred bytes: start past the first doublings.
      self.json.reserve(8 << 10);
      self.json.push(b'[');
      (self.first, self.last) = (e.timestamp, e.timestamp);
    } else {
      self.json.push(b',');
      self.first = self.first.min(e.timestamp);
      self.last = self.last.max(e.timestamp);
    }
    self.logs += 1;
    let entry = (
      e.timestamp,
      &e.outcome,
      &e.version,
      &e.edge,
      StoredMessage::from(e),
      // Made from the message when a search reads it: written here, it
      // repeated the URL and logs in every log.
      "",
    );
    serde_json::to_writer(&mut self.json, &entry).map_err(|e| Error::Corrupt(e.to_string()))
  }

  /// The body to store ([`CODEC_LZ4_JSON`]).
  fn finish(mut self) -> Vec<u8> {
    self.json.push(b']');
    lz4_flex::block::compress_prepend_size(&self.json)
  }
}

/// The value of `key` in a short list, added (empty) if it is not there;
/// searched from the end, where the batch's latest key is.
fn entry<K: PartialEq, V: Default>(list: &mut Vec<(K, V)>, key: K) -> &mut V {
  let at = match list.iter().rposition(|(k, _)| *k == key) {
    Some(at) => at,
    None => {
      list.push((key, V::default()));
      list.len() - 1
    }
  };
  &mut list[at].1
}

/// What a batch being stored holds of one worker: its sampling rate, its
/// minutes' sketches by (version, minute) and its chunks by span, each a
/// short list (a second of batches spans one or two of each).
struct WorkerSlot<'a> {
  account: &'a str,
  worker: &'a str,
  rate: f64,
  minutes: Vec<((&'a str, i64), MinuteStats)>,
  chunks: Vec<(i64, Vec<ChunkWriter>)>,
}

impl<'a> WorkerSlot<'a> {
  fn stats(&mut self, version: &'a str, minute: i64) -> &mut MinuteStats {
    entry(&mut self.minutes, (version, minute))
  }

  fn writers(&mut self, span: i64) -> &mut Vec<ChunkWriter> {
    entry(&mut self.chunks, span)
  }
}

/// A stored chunk's logs.
fn decode_chunk(codec: i64, body: &[u8]) -> Result<Vec<ChunkEntry>> {
  let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("invocation log chunk: {e}"));
  let json = match codec {
    CODEC_JSON => std::borrow::Cow::Borrowed(body),
    CODEC_LZ4_JSON => {
      let (size, rest) = lz4_flex::block::uncompressed_size(body).map_err(|e| corrupt(&e))?;
      if size > MAX_CHUNK_BYTES {
        return Err(corrupt(&format!("{size} bytes uncompressed")));
      }
      std::borrow::Cow::Owned(lz4_flex::block::decompress(rest, size).map_err(|e| corrupt(&e))?)
    }
    other => return Err(corrupt(&format!("codec {other}"))),
  };
  serde_json::from_slice(&json).map_err(|e| corrupt(&e))
}

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
  pub fn store_traces<'a>(
    &self,
    events: impl IntoIterator<Item = &'a TraceEvent>,
    keep: &mut dyn FnMut(f64) -> bool,
  ) -> Result<usize> {
    self.write(|tx| {
      // One slot per worker of the batch, found by the event's own name
      // with foldhash: a batch holds thousands of events of a few workers,
      // and the maps keyed on (account, worker, version, minute) this
      // replaces compared those strings at each level of a tree, per event.
      let mut slots: foldhash::HashMap<&str, Option<WorkerSlot<'_>>> =
        foldhash::HashMap::default();
      let mut kept = 0;
      for e in events {
        let slot = match slots.entry(e.worker.as_str()) {
          std::collections::hash_map::Entry::Occupied(slot) => slot.into_mut(),
          std::collections::hash_map::Entry::Vacant(slot) => {
            let found = match split_edge_worker_name(&e.worker) {
              Some((account, worker)) => {
                let rate = tx
                  .query_row(
                    "SELECT head_sampling_rate FROM observability WHERE account = ?1 AND worker = ?2",
                    [account, worker],
                    |row| row.get(0),
                  )
                  .optional()?
                  .unwrap_or(DEFAULT_HEAD_SAMPLING_RATE);
                Some(WorkerSlot {
                  account,
                  worker,
                  rate,
                  minutes: Vec::new(),
                  chunks: Vec::new(),
                })
              }
              None => {
                tracing::warn!(worker = %e.worker, "trace events of a worker that is no account_worker; dropped");
                None
              }
            };
            slot.insert(found)
          }
        };
        let Some(slot) = slot else {
          continue;
        };
        slot.stats(&e.version, minute_of(e.timestamp)).add(e);
        if keep(slot.rate) {
          let writers = slot.writers(e.timestamp.div_euclid(CHUNK_SPAN_MS));
          match writers.last_mut() {
            Some(w) if w.logs < CHUNK_LOGS => w.push(e)?,
            _ => {
              let mut w = ChunkWriter::default();
              w.push(e)?;
              writers.push(w);
            }
          }
          kept += 1;
        }
      }
      // Rows go in the order the maps before kept (worker, then span or
      // version and minute), so chunk ids follow it as they did.
      let mut slots: Vec<WorkerSlot<'_>> = slots.into_values().flatten().collect();
      slots.sort_unstable_by_key(|s| (s.account, s.worker));
      let mut minutes = Vec::new();
      let mut insert = tx.prepare(
        "INSERT INTO log_chunks (account, worker, first_ts, last_ts, logs, codec, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
      )?;
      for mut slot in slots {
        let (account, worker) = (slot.account, slot.worker);
        slot.chunks.sort_unstable_by_key(|(span, _)| *span);
        for (_, writers) in slot.chunks {
          for w in writers {
            let (first, last, logs) = (w.first, w.last, w.logs as i64);
            insert.execute(params![
              account,
              worker,
              first,
              last,
              logs,
              CODEC_LZ4_JSON,
              w.finish()
            ])?;
          }
        }
        slot.minutes.sort_unstable_by_key(|((version, minute), _)| (*version, *minute));
        minutes.extend(
          slot
            .minutes
            .into_iter()
            .map(|((version, minute), stats)| ((account, worker, version, minute), stats)),
        );
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

  /// A page of a worker's logs, newest first. Walks the worker's chunks
  /// newest last log first, a few at a time, and stops once no chunk left
  /// can hold a log newer than the page's oldest.
  pub fn logs(&self, account: &str, worker: &str, f: &LogFilter) -> Result<LogPage> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let cursor = f.cursor.as_deref().map(parse_cursor).transpose()?;
    let mut sql = String::from(
      "SELECT id, last_ts, codec, body FROM log_chunks WHERE account = ? AND worker = ?",
    );
    let mut args: Vec<Value> = vec![account.to_string().into(), worker.to_string().into()];
    if let Some(since) = f.since {
      sql.push_str(" AND last_ts >= ?");
      args.push(since.into());
    }
    if let Some(until) = f.until {
      sql.push_str(" AND first_ts < ?");
      args.push(until.into());
    }
    if let Some((t, _)) = cursor {
      sql.push_str(" AND first_ts <= ?");
      args.push(t.into());
    }
    sql.push_str(&format!(
      " AND (last_ts, id) < (?, ?) ORDER BY last_ts DESC, id DESC LIMIT {CHUNKS_READ}"
    ));
    let want = f.limit.saturating_add(1);
    // The newest `want` logs that pass the filter (with their ids), by
    // (timestamp, id).
    let mut found: Vec<(i64, ChunkEntry)> = Vec::new();
    let mut after = (i64::MAX, i64::MAX);
    'chunks: loop {
      let mut page = args.clone();
      page.push(after.0.into());
      page.push(after.1.into());
      let rows = conn.rows(&sql, page)?;
      for row in &rows {
        let (id, last_ts) = (row.get::<i64>(0)?, row.get::<i64>(1)?);
        if found.len() >= want && found.last().is_some_and(|(_, e)| last_ts < e.0) {
          break 'chunks;
        }
        after = (last_ts, id);
        let entries = decode_chunk(row.get::<i64>(2)?, &row.get::<Vec<u8>>(3)?)?;
        for (i, entry) in entries.into_iter().enumerate() {
          let log_id = (id << CHUNK_ID_SHIFT) | i as i64;
          if entry.matches(f) && cursor.is_none_or(|c| (entry.0, log_id) < c) {
            found.push((log_id, entry));
          }
        }
        found.sort_unstable_by_key(|(id, e)| std::cmp::Reverse((e.0, *id)));
        found.truncate(want);
      }
      if rows.len() < CHUNKS_READ {
        break;
      }
    }
    let more = found.len() > f.limit;
    found.truncate(f.limit);
    let cursor = more
      .then(|| found.last().map(|(id, e)| format!("{}.{id}", e.0)))
      .flatten();
    let logs = found
      .into_iter()
      .map(
        |(_, ChunkEntry(timestamp, outcome, version, edge, stored, _))| {
          let columns = LogColumns {
            outcome,
            timestamp,
            worker: worker.to_string(),
            version,
            edge,
          };
          serde_json::to_value(TailMessage::from_stored(stored, columns))
            .map_err(|e| Error::Corrupt(format!("invocation log: {e}")))
        },
      )
      .collect::<Result<Vec<_>>>()?;
    Ok(LogPage { logs, cursor })
  }

  /// Deletes logs older than their worker's retention and sketches older
  /// than [`SKETCH_RETENTION_DAYS`], as of `now_ms`. Returns how many of
  /// each.
  pub fn prune_traces(&self, now_ms: i64) -> Result<(usize, usize)> {
    self.write(|tx| {
      // No log younger than the shortest retention goes. Bounded by it, the
      // DELETE walks `log_chunks_by_time` from its oldest end; with only
      // each row's own retention to go by it read the whole table, in a
      // write transaction that held the store's connection meanwhile.
      let shortest: Option<i64> =
        tx.query_row("SELECT MIN(retention_days) FROM observability", (), |row| {
          row.get(0)
        })?;
      let shortest = shortest.map_or(i64::from(DEFAULT_RETENTION_DAYS), |days| {
        days.min(i64::from(DEFAULT_RETENTION_DAYS))
      });
      let deleted = tx.rows(
        PRUNE_LOGS,
        params![
          now_ms,
          DAY_MS,
          DEFAULT_RETENTION_DAYS,
          now_ms.saturating_sub(DAY_MS.saturating_mul(shortest))
        ],
      )?;
      let mut logs = 0;
      for row in &deleted {
        logs += usize::try_from(row.get::<i64>(0)?).unwrap_or(0);
      }
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

  /// A chunk stores each message less what its entry's other fields hold,
  /// and reads back whole.
  #[test]
  fn a_chunk_stores_each_message_once() {
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
    let (codec, body, logs): (i64, Vec<u8>, i64) = db
      .conn()
      .query_row("SELECT codec, body, logs FROM log_chunks", (), |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
      })
      .unwrap();
    assert_eq!((codec, logs), (CODEC_LZ4_JSON, 2));
    let json = lz4_flex::block::decompress_size_prepended(&body).unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
    for field in [
      "outcome",
      "eventTimestamp",
      "scriptName",
      "scriptVersion",
      "edge",
    ] {
      assert!(
        !entries[0][4].to_string().contains(field),
        "{field} in {}",
        entries[0]
      );
    }
    // Nothing to say: no empty lists, no `truncated: false`.
    let message = entries[1][4].to_string();
    assert!(
      !message.contains("logs") && !message.contains("truncated"),
      "{message}"
    );
    let whole = |e: &TraceEvent| serde_json::to_value(TailMessage::from(e)).unwrap();
    let all = LogFilter {
      limit: 10,
      ..LogFilter::default()
    };
    assert_eq!(
      db.logs("acme", "api", &all).unwrap().logs,
      vec![whole(&plain), whole(&e)]
    );
  }

  /// Logs stored a row each by an older control plane (some with their
  /// message whole) move into chunks and read the same.
  #[test]
  fn logs_stored_a_row_each_move_into_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    let old: Vec<TraceEvent> = (0..5)
      .map(|i| event("ok", 1000 + i * 30_000, &format!("/{i}")))
      .collect();
    let conn = db.conn();
    let (migration, id) = match conn.dialect() {
      super::super::sql::Dialect::Sqlite => (super::super::MIGRATIONS, "INTEGER PRIMARY KEY"),
      super::super::sql::Dialect::Postgres => (
        super::super::postgres::MIGRATIONS,
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
      ),
    };
    conn
      .execute_batch(&format!(
        "DROP TABLE log_chunks;
         CREATE TABLE invocation_logs (id {id}, account TEXT NOT NULL, worker TEXT NOT NULL,
           version TEXT NOT NULL, edge TEXT NOT NULL, timestamp BIGINT NOT NULL,
           outcome TEXT NOT NULL, message TEXT NOT NULL, search TEXT NOT NULL);"
      ))
      .unwrap();
    for (i, e) in old.iter().enumerate() {
      // The first whole, as the oldest control planes stored it.
      let message = if i == 0 {
        serde_json::to_string(&TailMessage::from(e)).unwrap()
      } else {
        serde_json::to_string(&StoredMessage::from(e)).unwrap()
      };
      conn
        .execute(
          "INSERT INTO invocation_logs
             (account, worker, version, edge, timestamp, outcome, message, search)
           VALUES ('acme', 'api', ?1, ?2, ?3, ?4, ?5, ?6)",
          params![
            e.version,
            e.edge,
            e.timestamp,
            e.outcome,
            message,
            StoredMessage::from(e).search_text()
          ],
        )
        .unwrap();
    }
    conn.execute_batch(migration.last().unwrap()).unwrap();
    drop(conn);
    let chunks: i64 = db
      .conn()
      .query_row("SELECT COUNT(*) FROM log_chunks", (), |r| r.get(0))
      .unwrap();
    assert_eq!(chunks, 3, "a chunk per minute");
    let whole = |e: &TraceEvent| serde_json::to_value(TailMessage::from(e)).unwrap();
    let page = |f: LogFilter| db.logs("acme", "api", &f).unwrap().logs;
    assert_eq!(
      page(LogFilter {
        limit: 10,
        ..LogFilter::default()
      }),
      old.iter().rev().map(whole).collect::<Vec<_>>()
    );
    assert_eq!(
      page(LogFilter {
        search: Some("a.test/3".into()),
        limit: 10,
        ..LogFilter::default()
      }),
      vec![whole(&old[3])]
    );
    // New logs go beside them.
    db.store_traces(&[event("ok", 200_000, "/new")], &mut |_| true)
      .unwrap();
    assert_eq!(
      page(LogFilter {
        limit: 2,
        ..LogFilter::default()
      })
      .len(),
      2
    );
  }

  /// Pages walk logs spread over many chunks whose times overlap (batches
  /// of several edges), each log once, newest first, ties by id.
  #[test]
  fn pages_walk_overlapping_chunks_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "api", "1");
    let mut stored = 0;
    for batch in 0..12_i64 {
      // Every batch repeats timestamps of the others; one is over a chunk.
      let n = if batch == 5 {
        CHUNK_LOGS as i64 + 10
      } else {
        40
      };
      let events: Vec<_> = (0..n)
        .map(|i| {
          event(
            "ok",
            10_000 + (i * 7 + batch * 3) % 90,
            &format!("/{batch}/{i}"),
          )
        })
        .collect();
      stored += db.store_traces(&events, &mut |_| true).unwrap();
    }
    for limit in [7, 100, 5000] {
      let mut f = LogFilter {
        limit,
        ..LogFilter::default()
      };
      let mut seen = Vec::new();
      loop {
        let page = db.logs("acme", "api", &f).unwrap();
        assert!(page.logs.len() <= limit);
        seen.extend(page.logs.iter().map(|l| {
          (
            l["eventTimestamp"].as_i64().unwrap(),
            l["event"]["request"]["url"].as_str().unwrap().to_string(),
          )
        }));
        match page.cursor {
          Some(c) => f.cursor = Some(c),
          None => break,
        }
      }
      assert_eq!(seen.len(), stored, "limit {limit}");
      assert!(seen.windows(2).all(|w| w[0].0 >= w[1].0), "limit {limit}");
      let distinct: std::collections::HashSet<_> = seen.iter().map(|(_, url)| url).collect();
      assert_eq!(distinct.len(), stored, "limit {limit}");
    }
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
        .any(|s| s.starts_with("SEARCH log_chunks USING INDEX log_chunks_by_time")),
      "{steps:?}"
    );
    assert!(
      !steps.iter().any(|s| s.starts_with("SCAN log_chunks")),
      "{steps:?}"
    );
  }
}
