//! The desired state: the projection of the store that edges serve.

use isola_proto::msg::DesiredState;
use isola_proto::msg::Route;
use isola_proto::msg::Split;
use isola_proto::msg::WorkerDeployment;
use isola_proto::names::edge_worker_name;

use super::deployments::active_deployment;
use super::revision;
use super::sql::Sql;
use super::Db;
use super::Error;
use super::Result;

impl Db {
  /// Everything edges must serve as of the current revision: each worker's
  /// active deployment with its decrypted secrets, and every route.
  pub fn desired_state(&self) -> Result<DesiredState> {
    // One read transaction, so the revision matches what is read with it.
    self.read(|tx| self.desired_state_in(tx))
  }

  fn desired_state_in(&self, tx: &Sql<'_>) -> Result<DesiredState> {
    let revision = revision(tx)?;
    let mut stmt = tx.prepare("SELECT account, name FROM workers ORDER BY account, name")?;
    let names = stmt
      .query_map((), |row| Ok((row.get::<String>(0)?, row.get::<String>(1)?)))?
      .collect::<super::sql::Result<Vec<_>>>()?;
    drop(stmt);
    let mut workers = Vec::new();
    for (account, worker) in names {
      let Some(deployment) = active_deployment(tx, &account, &worker)? else {
        continue;
      };
      let mut stmt = tx
        .prepare("SELECT key, nonce, ciphertext FROM secrets WHERE account = ?1 AND worker = ?2")?;
      let rows = stmt
        .query_map([&account, &worker], |row| {
          Ok((
            row.get::<String>(0)?,
            row.get::<Vec<u8>>(1)?,
            row.get::<Vec<u8>>(2)?,
          ))
        })?
        .collect::<super::sql::Result<Vec<_>>>()?;
      let mut secrets = std::collections::BTreeMap::new();
      for (key, nonce, ciphertext) in rows {
        let plain = self
          .inner
          .cipher
          .open(&account, &worker, &key, &nonce, &ciphertext)?;
        let value = String::from_utf8(plain)
          .map_err(|_| Error::Corrupt(format!("secret {account}/{worker}/{key} is not UTF-8")))?;
        secrets.insert(key, value);
      }
      workers.push(WorkerDeployment {
        name: edge_worker_name(&account, &worker),
        versions: deployment
          .versions
          .into_iter()
          .map(|v| Split {
            hash: v.hash,
            percentage: v.percentage,
          })
          .collect(),
        secrets,
      });
    }
    let mut stmt = tx.prepare("SELECT pattern, account, worker FROM routes ORDER BY pattern")?;
    let routes = stmt
      .query_map((), |row| {
        Ok(Route {
          pattern: row.get(0)?,
          worker: edge_worker_name(&row.get::<String>(1)?, &row.get::<String>(2)?),
        })
      })?
      .collect::<super::sql::Result<Vec<_>>>()?;
    Ok(DesiredState {
      revision,
      workers,
      routes,
    })
  }
}

#[cfg(test)]
mod tests {

  use super::*;
  use crate::db::testing::upload;
  use crate::secrets::generate_key;
  use crate::secrets::Cipher;

  #[test]
  fn desired_state_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("control.db"), Cipher::new(&generate_key())).unwrap();
    db.create_account("acme", false).unwrap();
    let v = upload(&db, "acme", "api", "export default {}");
    upload(&db, "acme", "idle", "x");
    assert_eq!(db.desired_state().unwrap(), DesiredState::default());

    db.deploy("acme", "api", &[(v.id.clone(), 100)]).unwrap();
    db.put_secret("acme", "api", "TOKEN", "s3cret").unwrap();
    let (created, _) = db.put_secret("acme", "api", "TOKEN", "s3cret2").unwrap();
    assert!(!created);
    db.add_route("acme", "api.test/*", "api").unwrap();
    db.add_route("acme", "idle.test/*", "idle").unwrap();
    let state = db.desired_state().unwrap();
    assert_eq!(state.revision, 5);
    assert_eq!(
      state.workers.len(),
      1,
      "workers without deployment are left out"
    );
    assert_eq!(state.workers[0].name, "acme_api");
    assert_eq!(state.workers[0].secrets["TOKEN"], "s3cret2");
    assert_eq!(
      state.routes,
      [
        Route {
          pattern: "api.test/*".into(),
          worker: "acme_api".into()
        },
        Route {
          pattern: "idle.test/*".into(),
          worker: "acme_idle".into()
        }
      ]
    );
    assert_eq!(
      db.secrets("acme", "api").unwrap()[0].key,
      "TOKEN".to_string()
    );
    db.delete_secret("acme", "api", "TOKEN").unwrap();
    assert!(matches!(
      db.delete_secret("acme", "api", "TOKEN"),
      Err(Error::NotFound(_))
    ));
    assert!(db.desired_state().unwrap().workers[0].secrets.is_empty());

    let (json, manifest) = db.version_manifest(&v.hash).unwrap().unwrap();
    assert_eq!(manifest.version_id(), v.hash);
    assert_eq!(json, manifest.canonical_json());
    assert!(db.version_manifest(&"0".repeat(64)).unwrap().is_none());
  }
}
