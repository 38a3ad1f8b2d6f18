//! The audit log: who changed what, when, and from where. Every
//! authenticated request that can change something is kept, whatever its
//! answer, so an operator can see attempts as well as changes.

use super::sql::params;
use serde::Serialize;

use super::Db;
use super::Result;
use super::Timestamp;

/// One audited request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
  /// Position in the log; pass the last one seen as `cursor` for older ones.
  pub id: i64,
  pub at: Timestamp,
  pub account: String,
  pub admin: bool,
  /// The first 12 hex digits of the token's sha256.
  pub token: String,
  pub method: String,
  /// The request's path, without its query.
  pub path: String,
  pub status: u16,
  /// The client's address as the control plane saw it.
  pub client: Option<String>,
}

/// Which entries [`Db::audit`] returns, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
  pub since: Option<i64>,
  pub until: Option<i64>,
  pub account: Option<String>,
  /// Only entries older than this id.
  pub before: Option<i64>,
  pub limit: u32,
}

impl Db {
  /// Appends one entry (its `id` is assigned).
  pub fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
    self.write(|tx| {
      tx.execute(
        "INSERT INTO audit (at, account, admin, token, method, path, status, client)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
          entry.at.0,
          entry.account,
          entry.admin,
          entry.token,
          entry.method,
          entry.path,
          entry.status,
          entry.client
        ],
      )?;
      Ok(())
    })
  }

  pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
    let conn = self.conn();
    let mut stmt = conn.prepare(
      "SELECT id, at, account, admin, token, method, path, status, client FROM audit
       WHERE (CAST(?1 AS BIGINT) IS NULL OR at >= ?1) AND (CAST(?2 AS BIGINT) IS NULL OR at < ?2)
         AND (CAST(?3 AS TEXT) IS NULL OR account = ?3) AND (CAST(?4 AS BIGINT) IS NULL OR id < ?4)
       ORDER BY id DESC LIMIT ?5",
    )?;
    let rows = stmt.query_map(
      params![q.since, q.until, q.account, q.before, q.limit],
      |row| {
        Ok(AuditEntry {
          id: row.get(0)?,
          at: Timestamp(row.get(1)?),
          account: row.get(2)?,
          admin: row.get(3)?,
          token: row.get(4)?,
          method: row.get(5)?,
          path: row.get(6)?,
          status: row.get(7)?,
          client: row.get(8)?,
        })
      },
    )?;
    Ok(rows.collect::<super::sql::Result<_>>()?)
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::db::testing::open;

  fn entry(at: i64, account: &str, path: &str) -> AuditEntry {
    AuditEntry {
      id: 0,
      at: Timestamp(at),
      account: account.into(),
      admin: false,
      token: "0123456789ab".into(),
      method: "POST".into(),
      path: path.into(),
      status: 201,
      client: Some("127.0.0.1:5000".into()),
    }
  }

  #[test]
  fn entries_come_back_newest_first_filtered_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    for (i, account) in ["a", "b", "a", "a"].iter().enumerate() {
      db.record_audit(&entry(100 + i as i64, account, &format!("/v1/x/{i}")))
        .unwrap();
    }
    let all = db
      .audit(&AuditQuery {
        limit: 10,
        ..Default::default()
      })
      .unwrap();
    let paths: Vec<_> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/v1/x/3", "/v1/x/2", "/v1/x/1", "/v1/x/0"]);
    let a = db
      .audit(&AuditQuery {
        account: Some("a".into()),
        limit: 2,
        ..Default::default()
      })
      .unwrap();
    assert_eq!(a.len(), 2);
    let older = db
      .audit(&AuditQuery {
        account: Some("a".into()),
        before: Some(a[1].id),
        limit: 2,
        ..Default::default()
      })
      .unwrap();
    assert_eq!(
      older.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
      ["/v1/x/0"]
    );
    let window = db
      .audit(&AuditQuery {
        since: Some(101),
        until: Some(103),
        limit: 10,
        ..Default::default()
      })
      .unwrap();
    assert_eq!(window.len(), 2);
  }
}
