//! Secrets: values sealed with the data directory's key, bound to their
//! account, worker and name.

use super::sql::params;
use super::sql::Sql;
use isola_proto::msg::Revision;
use serde::Serialize;

use super::bump_revision;
use super::require_worker;
use super::Db;
use super::Error;
use super::Result;
use super::Timestamp;

/// Writes one sealed secret (`[account, worker, key]`), replacing its value.
fn upsert(
  tx: &Sql<'_>,
  [account, worker, key]: [&str; 3],
  nonce: &[u8],
  ciphertext: &[u8],
  now: i64,
) -> super::sql::Result<usize> {
  tx.execute(
    "INSERT INTO secrets (account, worker, key, nonce, ciphertext, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (account, worker, key) DO UPDATE
     SET nonce = excluded.nonce, ciphertext = excluded.ciphertext,
         updated_at = excluded.updated_at",
    params![account, worker, key, nonce, ciphertext, now],
  )
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SecretInfo {
  pub key: String,
  pub updated_at: Timestamp,
}

impl Db {
  /// Sets secret `key` of a worker; returns whether it is new.
  pub fn put_secret(
    &self,
    account: &str,
    worker: &str,
    key: &str,
    value: &str,
  ) -> Result<(bool, Revision)> {
    let (nonce, ciphertext) = self
      .inner
      .cipher
      .seal(account, worker, key, value.as_bytes());
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let existed: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM secrets WHERE account = ?1 AND worker = ?2 AND key = ?3)",
        [account, worker, key],
        |row| row.get(0),
      )?;
      upsert(
        tx,
        [account, worker, key],
        &nonce,
        &ciphertext,
        Timestamp::now().0,
      )?;
      Ok((!existed, bump_revision(tx)?))
    })
  }

  /// Sets all of `secrets` (key, value) of a worker in one transaction and
  /// one revision, so edges never see half of a set.
  pub fn put_secrets(
    &self,
    account: &str,
    worker: &str,
    secrets: &[(String, String)],
  ) -> Result<Revision> {
    let sealed: Vec<_> = secrets
      .iter()
      .map(|(key, value)| {
        let (nonce, ciphertext) = self
          .inner
          .cipher
          .seal(account, worker, key, value.as_bytes());
        (key, nonce, ciphertext)
      })
      .collect();
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let now = Timestamp::now().0;
      for (key, nonce, ciphertext) in &sealed {
        upsert(tx, [account, worker, key], nonce, ciphertext, now)?;
      }
      bump_revision(tx)
    })
  }

  /// The names of a worker's secrets (never their values).
  pub fn secrets(&self, account: &str, worker: &str) -> Result<Vec<SecretInfo>> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn.prepare(
      "SELECT key, updated_at FROM secrets WHERE account = ?1 AND worker = ?2 ORDER BY key",
    )?;
    let secrets = stmt
      .query_map([account, worker], |row| {
        Ok(SecretInfo {
          key: row.get(0)?,
          updated_at: Timestamp(row.get(1)?),
        })
      })?
      .collect::<super::sql::Result<Vec<_>>>()?;
    Ok(secrets)
  }

  pub fn delete_secret(&self, account: &str, worker: &str, key: &str) -> Result<Revision> {
    self.write(|tx| {
      require_worker(tx, account, worker)?;
      let deleted = tx.execute(
        "DELETE FROM secrets WHERE account = ?1 AND worker = ?2 AND key = ?3",
        [account, worker, key],
      )?;
      if deleted == 0 {
        return Err(Error::NotFound(format!(
          "worker {worker:?} has no secret {key:?}; GET /v1/workers/{worker}/secrets lists them"
        )));
      }
      bump_revision(tx)
    })
  }
}

#[cfg(test)]
mod tests {
  use crate::db::testing::open;
  use crate::db::testing::upload;

  #[test]
  fn a_secret_moved_to_another_row_does_not_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    let v = upload(&db, "acme", "api", "1");
    db.deploy("acme", "api", &[(v.id, 100)]).unwrap();
    db.put_secret("acme", "api", "A", "a").unwrap();
    db.put_secret("acme", "api", "B", "b").unwrap();
    db.conn()
      .execute_batch(
        "UPDATE secrets SET (nonce, ciphertext) =
           (SELECT nonce, ciphertext FROM secrets WHERE key = 'A') WHERE key = 'B'",
      )
      .unwrap();
    let err = db.desired_state().unwrap_err();
    assert!(err.to_string().contains("acme/api/B"), "{err}");
  }
}
