//! Routes: URL patterns, global across accounts, each to one worker.

use super::sql::params;
use super::sql::OptionalExtension as _;
use isola_proto::msg::Revision;
use isola_proto::routes::RouteError;
use isola_proto::routes::RouteTable;
use serde::Serialize;

use super::bump_revision;
use super::require_worker;
use super::Db;
use super::Error;
use super::Result;
use super::Timestamp;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RouteInfo {
  pub pattern: String,
  pub worker: String,
  pub created_at: Timestamp,
}

impl Db {
  /// Routes `pattern` to `account`'s `worker`. Patterns are global: one
  /// taken by any account (or matching the same requests as one) conflicts.
  pub fn add_route(
    &self,
    account: &str,
    pattern: &str,
    worker: &str,
  ) -> Result<(RouteInfo, Revision)> {
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let owner: Option<(String, String)> = tx
        .query_row(
          "SELECT account, worker FROM routes WHERE pattern = ?1",
          [pattern],
          |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
      if let Some((owner, to)) = owner {
        return Err(Error::Conflict(if owner == account {
          format!(
            "route {pattern:?} already exists and goes to worker {to:?}; delete it first \
             (DELETE /v1/routes?pattern=...)"
          )
        } else {
          format!("route {pattern:?} is taken by another account; pick another host or path")
        }));
      }
      let mut stmt = tx.prepare("SELECT pattern FROM routes ORDER BY created_at, pattern")?;
      let mut all = stmt
        .query_map((), |row| Ok((row.get::<String>(0)?, ())))?
        .collect::<super::sql::Result<Vec<_>>>()?;
      all.push((pattern.to_string(), ()));
      match RouteTable::new(all) {
        Ok(_) => {}
        Err(e @ RouteError::Invalid { .. }) => return Err(Error::Invalid(e.to_string())),
        Err(e @ RouteError::Duplicate { .. }) => return Err(Error::Conflict(e.to_string())),
      }
      let created_at = Timestamp::now();
      tx.execute(
        "INSERT INTO routes (pattern, account, worker, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![pattern, account, worker, created_at.0],
      )?;
      let revision = bump_revision(tx)?;
      Ok((
        RouteInfo {
          pattern: pattern.to_string(),
          worker: worker.to_string(),
          created_at,
        },
        revision,
      ))
    })
  }

  pub fn routes(&self, account: &str) -> Result<Vec<RouteInfo>> {
    let conn = self.conn();
    let mut stmt = conn.prepare(
      "SELECT pattern, worker, created_at FROM routes WHERE account = ?1 ORDER BY pattern",
    )?;
    let routes = stmt
      .query_map([account], |row| {
        Ok(RouteInfo {
          pattern: row.get(0)?,
          worker: row.get(1)?,
          created_at: Timestamp(row.get(2)?),
        })
      })?
      .collect::<super::sql::Result<Vec<_>>>()?;
    Ok(routes)
  }

  pub fn delete_route(&self, account: &str, pattern: &str) -> Result<Revision> {
    self.write(|tx| {
      let deleted = tx.execute(
        "DELETE FROM routes WHERE pattern = ?1 AND account = ?2",
        [pattern, account],
      )?;
      if deleted == 0 {
        return Err(Error::NotFound(format!(
          "no route {pattern:?} in this account; GET /v1/routes lists them"
        )));
      }
      bump_revision(tx)
    })
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::db::testing::open;
  use crate::db::testing::upload;

  #[test]
  fn routes_are_checked_and_global() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    db.create_account("evil", false).unwrap();
    upload(&db, "acme", "api", "1");
    upload(&db, "evil", "api", "1");
    db.add_route("acme", "api.test/*", "api").unwrap();
    let err = db.add_route("evil", "api.test/*", "api").unwrap_err();
    assert!(
      matches!(&err, Error::Conflict(m) if m.contains("another account")),
      "{err}"
    );
    let err = db.add_route("evil", "API.test/*", "api").unwrap_err();
    assert!(
      matches!(&err, Error::Conflict(m) if m.contains("duplicate route")),
      "{err}"
    );
    let err = db.add_route("acme", "api.test", "api").unwrap_err();
    assert!(
      matches!(&err, Error::Invalid(m) if m.contains("has no path")),
      "{err}"
    );
    assert!(matches!(
      db.add_route("acme", "x.test/*", "nope"),
      Err(Error::NotFound(_))
    ));
    assert!(matches!(
      db.delete_route("evil", "api.test/*"),
      Err(Error::NotFound(_))
    ));
    assert_eq!(db.routes("evil").unwrap().len(), 0);
    db.delete_route("acme", "api.test/*").unwrap();
    db.add_route("evil", "api.test/*", "api").unwrap();
  }
}
