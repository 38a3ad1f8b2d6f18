//! Enrolled edges and what each last reported applying.

use super::sql::params;
use isola_proto::msg::Revision;
use serde::Serialize;

use super::revision;
use super::to_i64;
use super::to_u64;
use super::Db;
use super::Error;
use super::Result;
use super::Timestamp;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct EdgeInfo {
  pub name: String,
  pub enrolled_at: Timestamp,
  /// Last revision the edge reported applied; none before it first did.
  #[schema(value_type = Option<u64>)]
  pub revision: Option<Revision>,
  pub last_seen: Option<Timestamp>,
  /// Workers whose last pushed version failed to start on the edge.
  pub errors: Vec<String>,
}

impl Db {
  /// Records edge `name`; returns whether it is new (else it is re-enrolled).
  pub fn enroll_edge(&self, name: &str) -> Result<bool> {
    self.write(|tx| {
      let now = Timestamp::now().0;
      let existed: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM edges WHERE name = ?1)",
        [name],
        |row| row.get(0),
      )?;
      tx.execute(
        "INSERT INTO edges (name, created_at, enrolled_at) VALUES (?1, ?2, ?2)
         ON CONFLICT (name) DO UPDATE SET enrolled_at = excluded.enrolled_at",
        params![name, now],
      )?;
      Ok(!existed)
    })
  }

  /// The current revision and every edge, by name.
  pub fn edges(&self) -> Result<(Revision, Vec<EdgeInfo>)> {
    let conn = self.conn();
    let mut stmt = conn
      .prepare("SELECT name, enrolled_at, revision, last_seen, errors FROM edges ORDER BY name")?;
    let edges = stmt
      .query_map((), |row| {
        Ok((
          row.get::<String>(0)?,
          row.get::<i64>(1)?,
          row.get::<Option<i64>>(2)?,
          row.get::<Option<i64>>(3)?,
          row.get::<String>(4)?,
        ))
      })?
      .collect::<super::sql::Result<Vec<_>>>()?
      .into_iter()
      .map(|(name, enrolled_at, revision, last_seen, errors)| {
        let errors = serde_json::from_str(&errors)
          .map_err(|e| Error::Corrupt(format!("errors of edge {name}: {e}")))?;
        Ok(EdgeInfo {
          name,
          enrolled_at: Timestamp(enrolled_at),
          revision: revision.map(to_u64),
          last_seen: last_seen.map(Timestamp),
          errors,
        })
      })
      .collect::<Result<Vec<_>>>()?;
    Ok((revision(&conn)?, edges))
  }

  pub fn edge_exists(&self, name: &str) -> Result<bool> {
    let exists = self.conn().query_row(
      "SELECT EXISTS (SELECT 1 FROM edges WHERE name = ?1)",
      [name],
      |row| row.get(0),
    )?;
    Ok(exists)
  }

  /// Edge `name` reports serving `revision`; `errors` names workers whose
  /// new version did not start there.
  pub fn edge_applied(&self, name: &str, revision: u64, errors: &[String]) -> Result<()> {
    let errors = serde_json::to_string(errors).expect("strings serialise");
    let updated = self.conn().execute(
      "UPDATE edges SET revision = ?1, errors = ?2, last_seen = ?3 WHERE name = ?4",
      params![to_i64(revision), errors, Timestamp::now().0, name],
    )?;
    if updated == 0 {
      return Err(Error::NotFound(format!("no edge named {name:?}")));
    }
    Ok(())
  }
}

#[cfg(test)]
mod tests {
  use crate::db::testing::open;

  #[test]
  fn edges_report_what_they_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    assert!(!db.edge_exists("edge-1").unwrap());
    assert!(db.enroll_edge("edge-1").unwrap());
    assert!(!db.enroll_edge("edge-1").unwrap());
    assert!(db.edge_exists("edge-1").unwrap());
    assert!(db.edge_applied("nope", 1, &[]).is_err());
    db.edge_applied("edge-1", 3, &["acme_api".into()]).unwrap();
    let (revision, edges) = db.edges().unwrap();
    assert_eq!(revision, 0);
    assert_eq!(edges[0].revision, Some(3));
    assert_eq!(edges[0].errors, ["acme_api"]);
    assert!(edges[0].last_seen.is_some());
  }
}
