//! Queues (account-scoped), their consumer settings, counters and stored
//! messages. A message is written once, by id, so a producer that resends
//! after a lost answer does not store it twice; it is leased to one batch
//! at a time and deleted when acknowledged.

use super::sql::params;
use super::sql::OptionalExtension as _;
use super::sql::Sql;
use isola_proto::msg::Usage;
use isola_proto::msg::UsageRecord;
use isola_proto::queue::BatchReport;
use isola_proto::queue::ContentType;
use isola_proto::queue::Disposition;
use isola_proto::queue::Message;
use isola_proto::queue::NewMessage;
use serde::Deserialize;
use serde::Serialize;

use super::require_worker;
use super::to_i64;
use super::to_u64;
use super::Db;
use super::Error;
use super::Result;
use super::Timestamp;
use crate::queues::Backlog;
use crate::scheduler::Millis;

/// A queue's consumer, as configured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ConsumerSettings {
  /// The consumer worker (in the queue's account).
  pub worker: String,
  pub max_batch_size: u32,
  /// Seconds.
  pub max_batch_timeout: u32,
  pub max_retries: u32,
  /// Where messages go after `max_retries` failed deliveries; dropped (and
  /// counted) without one.
  pub dead_letter_queue: Option<String>,
  /// Seconds before a retried message is delivered again, unless the
  /// consumer's `retry()` says otherwise.
  pub retry_delay: u32,
}

/// A queue, as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct QueueInfo {
  pub name: String,
  pub created_at: Timestamp,
  pub consumer: Option<ConsumerSettings>,
  /// Messages ready for delivery.
  pub backlog: u64,
  /// Messages waiting for their delay to pass.
  pub delayed: u64,
  /// Messages in a batch a consumer has now.
  pub in_flight: u64,
  /// Messages acknowledged.
  pub delivered: u64,
  /// Deliveries that ended in a retry.
  pub retried: u64,
  pub dead_lettered: u64,
  /// Messages that failed `max_retries` times with no dead-letter queue.
  pub dropped: u64,
}

/// What settling a batch did, for the dispatcher and the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
  /// When each retried message is visible again.
  pub retry_at: Vec<Millis>,
  /// Dead-lettered messages: the dead-letter queue's key and when each is
  /// visible there.
  pub dead_lettered: Vec<(String, Millis)>,
}

/// A queue as the dispatcher loads it.
#[derive(Debug)]
pub struct QueueBacklog {
  /// `account/name`.
  pub key: String,
  /// The consumer: its worker's edge name and settings.
  pub consumer: Option<(String, ConsumerSettings)>,
  pub backlog: Backlog,
}

/// `account/name`: how the dispatcher names a queue.
pub fn queue_key(account: &str, name: &str) -> String {
  format!("{account}/{name}")
}

fn split_key(key: &str) -> Result<(&str, &str)> {
  key
    .split_once('/')
    .ok_or_else(|| Error::Corrupt(format!("queue key {key:?} has no account")))
}

fn not_found_queue(name: &str) -> Error {
  Error::NotFound(format!(
    "no queue named {name:?} in this account; create it with POST /v1/queues"
  ))
}

fn require_queue(conn: &Sql<'_>, account: &str, name: &str) -> Result<()> {
  let found: bool = conn.query_row(
    "SELECT EXISTS (SELECT 1 FROM queues WHERE account = ?1 AND name = ?2)",
    [account, name],
    |r| r.get(0),
  )?;
  if found {
    Ok(())
  } else {
    Err(not_found_queue(name))
  }
}

fn consumer_of(conn: &Sql<'_>, account: &str, name: &str) -> Result<Option<ConsumerSettings>> {
  let row = conn
    .query_row(
      "SELECT consumer, max_batch_size, max_batch_timeout, max_retries, dead_letter_queue, retry_delay
       FROM queues WHERE account = ?1 AND name = ?2",
      [account, name],
      |r| {
        Ok((
          r.get::<Option<String>>(0)?,
          r.get::<u32>(1)?,
          r.get::<u32>(2)?,
          r.get::<u32>(3)?,
          r.get::<Option<String>>(4)?,
          r.get::<u32>(5)?,
        ))
      },
    )
    .optional()?;
  let Some((worker, size, timeout, retries, dlq, delay)) = row else {
    return Err(not_found_queue(name));
  };
  Ok(worker.map(|worker| ConsumerSettings {
    worker,
    max_batch_size: size,
    max_batch_timeout: timeout,
    max_retries: retries,
    dead_letter_queue: dlq,
    retry_delay: delay,
  }))
}

impl Db {
  pub fn create_queue(&self, account: &str, name: &str) -> Result<QueueInfo> {
    let now = Timestamp::now();
    self.write(|tx| {
      let taken: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM queues WHERE account = ?1 AND name = ?2)",
        [account, name],
        |r| r.get(0),
      )?;
      if taken {
        return Err(Error::Conflict(format!(
          "this account already has a queue named {name:?}"
        )));
      }
      tx.execute(
        "INSERT INTO queues (account, name, created_at) VALUES (?1, ?2, ?3)",
        params![account, name, now.0],
      )?;
      super::notify(tx, "queues")
    })?;
    self.queue_info(account, name, 0)
  }

  pub fn list_queues(&self, account: &str, now: Millis) -> Result<Vec<QueueInfo>> {
    let names: Vec<String> = {
      let conn = self.conn();
      let mut stmt = conn.prepare("SELECT name FROM queues WHERE account = ?1 ORDER BY name")?;
      let rows = stmt.query_map([account], |r| r.get(0))?;
      rows.collect::<super::sql::Result<_>>()?
    };
    names
      .iter()
      .map(|n| self.queue_info(account, n, now))
      .collect()
  }

  pub fn queue_info(&self, account: &str, name: &str, now: Millis) -> Result<QueueInfo> {
    let conn = self.conn();
    let consumer = consumer_of(&conn, account, name)?;
    let (created_at, delivered, retried, dead_lettered, dropped) = conn.query_row(
      "SELECT created_at, delivered, retried, dead_lettered, dropped FROM queues
       WHERE account = ?1 AND name = ?2",
      [account, name],
      |r| {
        Ok((
          r.get(0)?,
          r.get::<i64>(1)?,
          r.get::<i64>(2)?,
          r.get::<i64>(3)?,
          r.get::<i64>(4)?,
        ))
      },
    )?;
    let (backlog, delayed, in_flight) = conn.query_row(
      "SELECT
         COALESCE(SUM(CASE WHEN lease IS NULL AND visible_at <= ?3 THEN 1 ELSE 0 END), 0),
         COALESCE(SUM(CASE WHEN lease IS NULL AND visible_at > ?3 THEN 1 ELSE 0 END), 0),
         COALESCE(SUM(CASE WHEN lease IS NOT NULL THEN 1 ELSE 0 END), 0)
       FROM queue_messages WHERE account = ?1 AND queue = ?2",
      params![account, name, now],
      |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?, r.get::<i64>(2)?)),
    )?;
    Ok(QueueInfo {
      name: name.to_string(),
      created_at: Timestamp(created_at),
      consumer,
      backlog: to_u64(backlog),
      delayed: to_u64(delayed),
      in_flight: to_u64(in_flight),
      delivered: to_u64(delivered),
      retried: to_u64(retried),
      dead_lettered: to_u64(dead_lettered),
      dropped: to_u64(dropped),
    })
  }

  /// Deletes a queue and its messages; a queue that is another's
  /// dead-letter queue cannot go.
  pub fn delete_queue(&self, account: &str, name: &str) -> Result<()> {
    self.write(|tx| {
      require_queue(tx, account, name)?;
      let users: Option<String> = tx
        .query_row(
          "SELECT name FROM queues WHERE account = ?1 AND dead_letter_queue = ?2 AND name != ?2",
          [account, name],
          |r| r.get(0),
        )
        .optional()?;
      if let Some(user) = users {
        return Err(Error::Conflict(format!(
          "queue {name:?} is the dead-letter queue of {user:?}; change that consumer first"
        )));
      }
      tx.execute(
        "DELETE FROM queue_messages WHERE account = ?1 AND queue = ?2",
        [account, name],
      )?;
      tx.execute(
        "DELETE FROM queues WHERE account = ?1 AND name = ?2",
        [account, name],
      )?;
      super::notify(tx, "queues")
    })
  }

  /// Sets (or with `None` removes) a queue's consumer.
  pub fn set_consumer(
    &self,
    account: &str,
    name: &str,
    consumer: Option<&ConsumerSettings>,
  ) -> Result<()> {
    self.write(|tx| {
      require_queue(tx, account, name)?;
      let Some(c) = consumer else {
        // Its dead-letter queue goes with it, so that queue can be deleted.
        tx.execute(
          "UPDATE queues SET consumer = NULL, dead_letter_queue = NULL
           WHERE account = ?1 AND name = ?2",
          [account, name],
        )?;
        return super::notify(tx, "queues");
      };
      require_worker(tx, account, &c.worker)?;
      if let Some(dlq) = &c.dead_letter_queue {
        if dlq == name {
          return Err(Error::Invalid(
            "a queue cannot be its own dead-letter queue".into(),
          ));
        }
        require_queue(tx, account, dlq).map_err(|_| {
          Error::Invalid(format!(
            "dead_letter_queue {dlq:?} does not exist in this account; create it first"
          ))
        })?;
      }
      tx.execute(
        "UPDATE queues SET consumer = ?3, max_batch_size = ?4, max_batch_timeout = ?5,
           max_retries = ?6, dead_letter_queue = ?7, retry_delay = ?8
         WHERE account = ?1 AND name = ?2",
        params![
          account,
          name,
          c.worker,
          c.max_batch_size,
          c.max_batch_timeout,
          c.max_retries,
          c.dead_letter_queue,
          c.retry_delay
        ],
      )?;
      super::notify(tx, "queues")
    })
  }

  /// Stores messages (each once: an id already stored is skipped) and
  /// returns when each new one becomes visible.
  pub fn enqueue(
    &self,
    account: &str,
    name: &str,
    messages: &[(String, NewMessage)],
    now: Millis,
  ) -> Result<Vec<Millis>> {
    self.write(|tx| {
      require_queue(tx, account, name)?;
      let mut stmt = tx.prepare(
        "INSERT INTO queue_messages
           (id, account, queue, body, content_type, sent_at, visible_at, attempts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0) ON CONFLICT DO NOTHING",
      )?;
      let mut visible = Vec::new();
      for (id, m) in messages {
        let at = now + to_i64(m.delay_seconds.saturating_mul(1000));
        if stmt.execute(params![
          id,
          account,
          name,
          m.body,
          m.content_type.as_str(),
          now,
          at
        ])?
          > 0
        {
          visible.push(at);
        }
      }
      if !visible.is_empty() {
        super::notify(tx, "queues")?;
      }
      Ok(visible)
    })
  }

  /// Leases up to `max` ready messages of queue `key` to batch `batch`,
  /// oldest first (in the order they were sent), counting the delivery.
  pub fn lease(&self, key: &str, batch: u64, max: u32, now: Millis) -> Result<Vec<Message>> {
    let (account, name) = split_key(key)?;
    self.write(|tx| {
      tx.execute(
        "UPDATE queue_messages SET lease = ?3, attempts = attempts + 1
         WHERE id IN (SELECT id FROM queue_messages
                      WHERE account = ?1 AND queue = ?2 AND lease IS NULL AND visible_at <= ?4
                      ORDER BY visible_at, rowid LIMIT ?5)",
        params![account, name, to_i64(batch), now, max],
      )?;
      messages_of(tx, batch)
    })
  }

  /// The messages leased to batch `batch`.
  pub fn leased(&self, batch: u64) -> Result<Vec<Message>> {
    messages_of(&self.conn(), batch)
  }

  /// Hands batch `old`'s lease to batch `new`.
  pub fn move_lease(&self, old: u64, new: u64) -> Result<()> {
    self.write(|tx| {
      tx.execute(
        "UPDATE queue_messages SET lease = ?2 WHERE lease = ?1",
        [to_i64(old), to_i64(new)],
      )?;
      Ok(())
    })
  }

  /// Applies a consumer's report to batch `report.id` of queue `key`:
  /// acknowledged messages are deleted; retried ones become visible again
  /// after their delay, or go to the dead-letter queue (or are dropped)
  /// once they have failed `max_retries` times. Messages the report does
  /// not name count as retried. A second report of the same batch finds
  /// nothing leased and changes nothing.
  ///
  /// The batch's queue operations are billed to the consumer here, in the
  /// same transaction: every lease ends in exactly one settle (a report, or
  /// a release when the edge vanished), so counting at the settle is exact
  /// across restarts of either side, where an edge could count a delivery
  /// it never reported, or lose one it ran as it crashed. Per started
  /// 64 KB of each message: one read (this delivery attempt), one delete
  /// if acknowledged or dropped, one write if dead-lettered.
  pub fn settle(&self, key: &str, report: &BatchReport, now: Millis) -> Result<Settled> {
    let (account, name) = split_key(key)?;
    let consumer = consumer_of(&self.conn(), account, name)?;
    let billed = consumer
      .as_ref()
      .map(|c| isola_proto::names::edge_worker_name(account, &c.worker));
    let (max_retries, dlq, retry_delay) = consumer.map_or((3, None, 0), |c| {
      (c.max_retries, c.dead_letter_queue, c.retry_delay)
    });
    self.write(|tx| {
      let leased = messages_of(tx, report.id)?;
      let mut settled = Settled::default();
      let (mut acked, mut retried, mut dead, mut dropped) = (0i64, 0i64, 0i64, 0i64);
      let mut ops = 0u64;
      for m in &leased {
        let chunks = isola_proto::queue::operations(m.body.len());
        // The read of this delivery.
        ops += chunks;
        let disposition = report
          .messages
          .iter()
          .find(|(id, _)| *id == m.id)
          .map_or(Disposition::Retry(None), |(_, d)| *d);
        match disposition {
          Disposition::Ack => {
            tx.execute("DELETE FROM queue_messages WHERE id = ?1", [&m.id])?;
            acked += 1;
            ops += chunks;
          }
          Disposition::Retry(delay) if m.attempts <= max_retries => {
            let secs = delay.unwrap_or(u64::from(retry_delay));
            let at = now + to_i64(secs.saturating_mul(1000));
            tx.execute(
              "UPDATE queue_messages SET lease = NULL, visible_at = ?2 WHERE id = ?1",
              params![m.id, at],
            )?;
            settled.retry_at.push(at);
            retried += 1;
          }
          Disposition::Retry(_) => match &dlq {
            Some(dlq) => {
              // Into the dead-letter queue as a new delivery history.
              tx.execute(
                "UPDATE queue_messages SET queue = ?2, lease = NULL, visible_at = ?3, attempts = 0
                 WHERE id = ?1",
                params![m.id, dlq, now],
              )?;
              settled.dead_lettered.push((queue_key(account, dlq), now));
              dead += 1;
              ops += chunks;
            }
            None => {
              tx.execute("DELETE FROM queue_messages WHERE id = ?1", [&m.id])?;
              dropped += 1;
              ops += chunks;
            }
          },
        }
      }
      match &billed {
        Some(worker) if ops > 0 => {
          let secs = to_u64(now / 1000);
          let record = UsageRecord {
            worker: worker.clone(),
            version: report.version.clone().unwrap_or_default(),
            start: secs,
            end: secs,
            usage: Usage {
              queue_ops: ops,
              ..Usage::default()
            },
          };
          super::usage::store_counted(tx, &format!("queue-batch-{}", report.id), &record)?;
        }
        None if ops > 0 => tracing::warn!(
          queue = key,
          ops,
          "a batch settled after its queue lost its consumer; its operations are not billed"
        ),
        _ => {}
      }
      tx.execute(
        "UPDATE queues SET delivered = delivered + ?3, retried = retried + ?4,
           dead_lettered = dead_lettered + ?5, dropped = dropped + ?6
         WHERE account = ?1 AND name = ?2",
        params![account, name, acked, retried, dead, dropped],
      )?;
      if dropped > 0 {
        tracing::warn!(
          queue = key,
          dropped,
          "messages failed max_retries times with no dead-letter queue and were dropped"
        );
      }
      Ok(settled)
    })
  }

  /// Every queue with what the dispatcher needs: its consumer (worker as an
  /// edge name), the visible times of unleased messages, and the batches
  /// leased.
  pub fn queue_backlogs(&self) -> Result<Vec<QueueBacklog>> {
    let conn = self.conn();
    let queues: Vec<(String, String)> = {
      let mut stmt = conn.prepare("SELECT account, name FROM queues")?;
      let rows = stmt.query_map((), |r| Ok((r.get(0)?, r.get(1)?)))?;
      rows.collect::<super::sql::Result<_>>()?
    };
    let mut out = Vec::new();
    for (account, name) in queues {
      let consumer = consumer_of(&conn, &account, &name)?
        .map(|c| (isola_proto::names::edge_worker_name(&account, &c.worker), c));
      let mut backlog = Backlog::default();
      let mut stmt = conn.prepare(
        "SELECT visible_at FROM queue_messages WHERE account = ?1 AND queue = ?2 AND lease IS NULL",
      )?;
      for at in stmt.query_map([&account, &name], |r| r.get(0))? {
        backlog.visible_at.push(at?);
      }
      let mut stmt = conn.prepare(
        "SELECT DISTINCT lease FROM queue_messages WHERE account = ?1 AND queue = ?2 AND lease IS NOT NULL",
      )?;
      for lease in stmt.query_map([&account, &name], |r| r.get::<i64>(0))? {
        backlog.leased.push((to_u64(lease?), String::new()));
      }
      out.push(QueueBacklog {
        key: queue_key(&account, &name),
        consumer,
        backlog,
      });
    }
    Ok(out)
  }

  /// The highest batch id leased now (ids are kept in the batches table so
  /// they are never reused).
  pub fn last_batch_id(&self) -> Result<u64> {
    let id: Option<i64> = self
      .conn()
      .query_row(
        "SELECT value FROM meta WHERE key = 'last_batch_id'",
        (),
        |r| r.get(0),
      )
      .optional()?;
    Ok(to_u64(id.unwrap_or(0)))
  }

  /// Records that batch ids up to `id` are used.
  pub fn use_batch_id(&self, id: u64) -> Result<()> {
    self.write(|tx| {
      tx.execute(
        "INSERT INTO meta (key, value) VALUES ('last_batch_id', ?1)
         ON CONFLICT (key) DO UPDATE SET value =
           CASE WHEN excluded.value > meta.value THEN excluded.value ELSE meta.value END",
        [to_i64(id)],
      )?;
      Ok(())
    })
  }

  /// The account a queue key's consumer must match, for checks of calls.
  pub fn queue_exists(&self, account: &str, name: &str) -> Result<bool> {
    Ok(require_queue(&self.conn(), account, name).is_ok())
  }
}

fn messages_of(conn: &Sql<'_>, batch: u64) -> Result<Vec<Message>> {
  let mut stmt = conn.prepare(
    "SELECT id, sent_at, body, content_type, attempts FROM queue_messages
     WHERE lease = ?1 ORDER BY visible_at, rowid",
  )?;
  let rows = stmt.query_map([to_i64(batch)], |r| {
    Ok((
      r.get::<String>(0)?,
      r.get::<i64>(1)?,
      r.get::<Vec<u8>>(2)?,
      r.get::<String>(3)?,
      r.get::<u32>(4)?,
    ))
  })?;
  let mut out = Vec::new();
  for row in rows {
    let (id, timestamp, body, content_type, attempts) = row?;
    let content_type = ContentType::parse(&content_type)
      .ok_or_else(|| Error::Corrupt(format!("message {id} has content type {content_type:?}")))?;
    out.push(Message {
      id,
      timestamp,
      body,
      content_type,
      attempts,
    });
  }
  Ok(out)
}

impl Db {
  /// The queue (as `account/name`) batch `batch` holds messages of.
  pub fn lease_queue(&self, batch: u64) -> Result<Option<String>> {
    let row: Option<(String, String)> = self
      .conn()
      .query_row(
        "SELECT account, queue FROM queue_messages WHERE lease = ?1 LIMIT 1",
        [to_i64(batch)],
        |r| Ok((r.get(0)?, r.get(1)?)),
      )
      .optional()?;
    Ok(row.map(|(a, q)| queue_key(&a, &q)))
  }
}

#[cfg(test)]
mod tests {
  use isola_proto::queue::BatchReport;
  use isola_proto::queue::ContentType;
  use isola_proto::queue::Disposition;
  use isola_proto::queue::NewMessage;

  use super::ConsumerSettings;
  use crate::db::testing::open;
  use crate::db::testing::upload;

  fn msgs(n: usize) -> Vec<(String, NewMessage)> {
    (0..n)
      .map(|i| {
        (
          format!("m{i}"),
          NewMessage {
            body: vec![i as u8],
            content_type: ContentType::Bytes,
            delay_seconds: 0,
          },
        )
      })
      .collect()
  }

  fn report(id: u64, messages: Vec<(String, Disposition)>) -> BatchReport {
    BatchReport {
      id,
      ok: false,
      messages,
      unavailable: false,
      cpu_us: 0,
      wall_us: 0,
      version: Some("h1".into()),
    }
  }

  #[test]
  fn acks_delete_retries_come_back_and_the_last_failure_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    upload(&db, "acme", "eater", "export default { queue() {} }");
    db.create_queue("acme", "jobs").unwrap();
    db.create_queue("acme", "dlq").unwrap();
    db.set_consumer(
      "acme",
      "jobs",
      Some(&ConsumerSettings {
        worker: "eater".into(),
        max_batch_size: 10,
        max_batch_timeout: 1,
        max_retries: 1,
        dead_letter_queue: Some("dlq".into()),
        retry_delay: 5,
      }),
    )
    .unwrap();
    // Stored once per id, whatever the repeats.
    assert_eq!(db.enqueue("acme", "jobs", &msgs(4), 0).unwrap().len(), 4);
    assert_eq!(db.enqueue("acme", "jobs", &msgs(4), 0).unwrap().len(), 0);

    let batch = db.lease("acme/jobs", 1, 10, 0).unwrap();
    assert_eq!(batch.len(), 4);
    assert!(batch.iter().all(|m| m.attempts == 1));
    // Ack m0, retry m1 after 30 s, say nothing of m2 and m3 (retried with
    // the queue's 5 s).
    let settled = db
      .settle(
        "acme/jobs",
        &report(
          1,
          vec![
            ("m0".into(), Disposition::Ack),
            ("m1".into(), Disposition::Retry(Some(30))),
          ],
        ),
        1_000,
      )
      .unwrap();
    assert_eq!(settled.retry_at, [31_000, 6_000, 6_000]);
    // A repeated report changes nothing.
    assert_eq!(
      db.settle("acme/jobs", &report(1, vec![]), 2_000).unwrap(),
      Default::default()
    );
    let info = db.queue_info("acme", "jobs", 7_000).unwrap();
    assert_eq!(
      (info.backlog, info.delayed, info.delivered, info.retried),
      (2, 1, 1, 3)
    );

    // Second delivery of m2, m3: they fail again and go to the DLQ.
    let batch = db.lease("acme/jobs", 2, 10, 7_000).unwrap();
    assert_eq!(batch.iter().map(|m| m.attempts).collect::<Vec<_>>(), [2, 2]);
    let settled = db.settle("acme/jobs", &report(2, vec![]), 8_000).unwrap();
    assert_eq!(settled.dead_lettered.len(), 2);
    assert_eq!(settled.dead_lettered[0].0, "acme/dlq");
    let dlq = db.queue_info("acme", "dlq", 8_000).unwrap();
    assert_eq!(dlq.backlog, 2);
    assert_eq!(
      db.queue_info("acme", "jobs", 8_000).unwrap().dead_lettered,
      2
    );

    // Billed to the consumer, per started 64 KB: batch 1 read 4 and
    // deleted 1 (the repeat added nothing), batch 2 read 2 and wrote 2 to
    // the dead-letter queue; a 100 KB message read and acknowledged is 4.
    let big = NewMessage {
      body: vec![0; 100_000],
      content_type: ContentType::Bytes,
      delay_seconds: 0,
    };
    db.enqueue("acme", "jobs", &[("big".into(), big)], 8_000)
      .unwrap();
    assert_eq!(db.lease("acme/jobs", 3, 10, 8_000).unwrap().len(), 1);
    let mut last = report(3, vec![("big".into(), Disposition::Ack)]);
    last.version = None;
    db.settle("acme/jobs", &last, 9_000).unwrap();
    let usage = db.usage("acme", "eater", None, None).unwrap();
    assert_eq!(usage.total.queue_ops, 5 + 4 + 4);
    assert_eq!(
      usage.total.requests, 0,
      "an invocation is the edge's to count"
    );
    let by: Vec<(&str, u64)> = usage
      .by_version
      .iter()
      .map(|v| (v.hash.as_str(), v.usage.queue_ops))
      .collect();
    assert_eq!(by, [("", 4), ("h1", 9)]);
  }
}
