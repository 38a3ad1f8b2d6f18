//! Deployments: which versions of a worker serve, at what percentages, and
//! rollback to the previous deployment.

use super::sql::params;
use super::sql::OptionalExtension as _;
use super::sql::Sql;
use serde::Deserialize;
use serde::Serialize;

use isola_proto::msg::Revision;

use super::bump_revision;
use super::require_worker;
use super::Db;
use super::Error;
use super::Result;
use super::Timestamp;

/// A version of a deployment as stored: `[{"id", "percentage"}]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSplit {
  id: String,
  percentage: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeployedVersion {
  pub id: String,
  pub percentage: u8,
  pub hash: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Deployment {
  pub id: i64,
  pub worker: String,
  pub versions: Vec<DeployedVersion>,
  pub created_at: Timestamp,
  pub rolled_back: bool,
  pub active: bool,
  /// The revision the change took, on answers to a change.
  #[serde(skip_serializing_if = "Option::is_none")]
  #[schema(value_type = Option<u64>)]
  pub revision: Option<Revision>,
}

impl Db {
  /// Makes `versions` (id, percentage) the worker's active deployment. The
  /// split itself is checked by the caller; here, that each version belongs
  /// to this worker.
  pub fn deploy(
    &self,
    account: &str,
    worker: &str,
    versions: &[(String, u8)],
  ) -> Result<Deployment> {
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let mut deployed = Vec::with_capacity(versions.len());
      for (id, percentage) in versions {
        let hash: Option<String> = tx
          .query_row(
            "SELECT hash FROM versions WHERE id = ?1 AND account = ?2 AND worker = ?3",
            params![id, account, worker],
            |row| row.get(0),
          )
          .optional()?;
        let Some(hash) = hash else {
          return Err(Error::NotFound(format!(
            "worker {worker:?} has no version {id:?}; GET /v1/workers/{worker}/versions lists \
             its versions"
          )));
        };
        deployed.push(DeployedVersion {
          id: id.clone(),
          percentage: *percentage,
          hash,
        });
      }
      let stored: Vec<StoredSplit> = deployed
        .iter()
        .map(|v| StoredSplit {
          id: v.id.clone(),
          percentage: v.percentage,
        })
        .collect();
      let created_at = Timestamp::now();
      let id: i64 = tx.query_row(
        "INSERT INTO deployments (account, worker, versions, created_at) VALUES (?1, ?2, ?3, ?4)
         RETURNING id",
        params![
          account,
          worker,
          serde_json::to_string(&stored).expect("splits serialise"),
          created_at.0
        ],
        |row| row.get(0),
      )?;
      let revision = bump_revision(tx)?;
      Ok(Deployment {
        id,
        worker: worker.to_string(),
        versions: deployed,
        created_at,
        rolled_back: false,
        active: true,
        revision: Some(revision),
      })
    })
  }

  /// A worker's deployments, newest first.
  pub fn deployments(&self, account: &str, worker: &str) -> Result<Vec<Deployment>> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn.prepare(
      "SELECT id, versions, created_at, rolled_back FROM deployments
       WHERE account = ?1 AND worker = ?2 ORDER BY id DESC",
    )?;
    let rows = stmt
      .query_map([account, worker], deployment_row)?
      .collect::<super::sql::Result<Vec<_>>>()?;
    let mut active_seen = false;
    rows
      .into_iter()
      .map(|row| {
        // Newest first: the first not rolled back is the active one.
        let active = !active_seen && !row.3;
        active_seen |= active;
        load_deployment(&conn, worker, row, active)
      })
      .collect()
  }

  /// Marks the active deployment rolled back, so the newest earlier one not
  /// rolled back serves again; returns that one.
  pub fn rollback(&self, account: &str, worker: &str) -> Result<Deployment> {
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let Some(current) = active_deployment(tx, account, worker)? else {
        return Err(Error::Conflict(format!(
          "worker {worker:?} has no active deployment to roll back; deploy a version first"
        )));
      };
      let previous = tx
        .query_row(
          "SELECT id, versions, created_at, rolled_back FROM deployments
           WHERE account = ?1 AND worker = ?2 AND rolled_back = 0 AND id < ?3
           ORDER BY id DESC LIMIT 1",
          params![account, worker, current.id],
          deployment_row,
        )
        .optional()?;
      let Some(previous) = previous else {
        return Err(Error::Conflict(format!(
          "worker {worker:?} has no earlier deployment to roll back to (deployment {} is its \
           first); deploy the version you want instead",
          current.id
        )));
      };
      tx.execute(
        "UPDATE deployments SET rolled_back = 1 WHERE id = ?1",
        [current.id],
      )?;
      let revision = bump_revision(tx)?;
      let mut deployment = load_deployment(tx, worker, previous, true)?;
      deployment.revision = Some(revision);
      Ok(deployment)
    })
  }
}

/// (id, versions JSON, created_at, rolled_back)
type DeploymentRow = (i64, String, i64, bool);

fn deployment_row(row: &super::sql::Row) -> super::sql::Result<DeploymentRow> {
  Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn load_deployment(
  conn: &Sql<'_>,
  worker: &str,
  (id, versions, created_at, rolled_back): DeploymentRow,
  active: bool,
) -> Result<Deployment> {
  let stored: Vec<StoredSplit> = serde_json::from_str(&versions)
    .map_err(|e| Error::Corrupt(format!("versions of deployment {id}: {e}")))?;
  let mut stmt = conn.prepare("SELECT hash FROM versions WHERE id = ?1")?;
  let versions = stored
    .into_iter()
    .map(|s| {
      let hash = stmt.query_row([&s.id], |row| row.get(0)).optional()?;
      let hash = hash
        .ok_or_else(|| Error::Corrupt(format!("deployment {id} names missing version {}", s.id)))?;
      Ok(DeployedVersion {
        id: s.id,
        percentage: s.percentage,
        hash,
      })
    })
    .collect::<Result<Vec<_>>>()?;
  Ok(Deployment {
    id,
    worker: worker.to_string(),
    versions,
    created_at: Timestamp(created_at),
    rolled_back,
    active,
    revision: None,
  })
}

/// The worker's latest deployment not rolled back.
pub(super) fn active_deployment(
  conn: &Sql<'_>,
  account: &str,
  worker: &str,
) -> Result<Option<Deployment>> {
  let row = conn
    .query_row(
      "SELECT id, versions, created_at, rolled_back FROM deployments
       WHERE account = ?1 AND worker = ?2 AND rolled_back = 0 ORDER BY id DESC LIMIT 1",
      [account, worker],
      deployment_row,
    )
    .optional()?;
  row
    .map(|row| load_deployment(conn, worker, row, true))
    .transpose()
}

#[cfg(test)]
mod tests {
  use isola_proto::msg::Split;

  use super::*;
  use crate::db::testing::open;
  use crate::db::testing::upload;

  #[test]
  fn rollback_returns_to_the_previous_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    let v1 = upload(&db, "acme", "api", "1");
    let v2 = upload(&db, "acme", "api", "2");
    let v3 = upload(&db, "acme", "api", "3");
    assert!(matches!(
      db.rollback("acme", "api"),
      Err(Error::Conflict(_))
    ));
    let d1 = db.deploy("acme", "api", &[(v1.id.clone(), 100)]).unwrap();
    let err = db.rollback("acme", "api").unwrap_err();
    assert!(
      matches!(&err, Error::Conflict(m) if m.contains("no earlier deployment")),
      "{err}"
    );
    let d2 = db
      .deploy("acme", "api", &[(v2.id.clone(), 90), (v1.id.clone(), 10)])
      .unwrap();
    let d3 = db.deploy("acme", "api", &[(v3.id.clone(), 100)]).unwrap();
    assert!(d3.revision > d2.revision);

    let back = db.rollback("acme", "api").unwrap();
    assert_eq!(back.id, d2.id);
    assert_eq!(back.versions[0].hash, v2.hash);
    assert!(back.revision > d3.revision);
    let state = db.desired_state().unwrap();
    assert_eq!(state.revision, back.revision.unwrap());
    assert_eq!(
      state.workers[0].versions,
      [
        Split {
          hash: v2.hash.clone(),
          percentage: 90
        },
        Split {
          hash: v1.hash.clone(),
          percentage: 10
        }
      ]
    );
    let back = db.rollback("acme", "api").unwrap();
    assert_eq!(back.id, d1.id);
    assert!(matches!(
      db.rollback("acme", "api"),
      Err(Error::Conflict(_))
    ));

    let list = db.deployments("acme", "api").unwrap();
    let flags: Vec<(i64, bool, bool)> = list
      .iter()
      .map(|d| (d.id, d.active, d.rolled_back))
      .collect();
    assert_eq!(
      flags,
      [
        (d3.id, false, true),
        (d2.id, false, true),
        (d1.id, true, false)
      ]
    );
    // A new deployment is active again, whatever was rolled back.
    let d4 = db.deploy("acme", "api", &[(v3.id.clone(), 100)]).unwrap();
    assert_eq!(
      db.workers("acme").unwrap()[0]
        .active_deployment
        .as_ref()
        .unwrap()
        .id,
      d4.id
    );
  }

  #[test]
  fn deployments_take_versions_of_their_own_worker_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    db.create_account("evil", false).unwrap();
    let api = upload(&db, "acme", "api", "1");
    upload(&db, "acme", "web", "1");
    upload(&db, "evil", "api", "1");
    assert!(matches!(
      db.deploy("acme", "web", &[(api.id.clone(), 100)]),
      Err(Error::NotFound(_))
    ));
    assert!(matches!(
      db.deploy("evil", "api", &[(api.id.clone(), 100)]),
      Err(Error::NotFound(_))
    ));
    assert!(matches!(
      db.versions("evil", "web"),
      Err(Error::NotFound(_))
    ));
    assert_eq!(db.revision().unwrap(), 0);
  }
}
