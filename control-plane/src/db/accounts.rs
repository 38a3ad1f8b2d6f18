//! Accounts and their API tokens.

use rand::RngCore as _;
use rusqlite::params;
use rusqlite::OptionalExtension as _;
use rusqlite::Transaction;
use sha2::Digest as _;

use super::Db;
use super::Error;
use super::Result;
use super::Timestamp;

/// A new API token: `isola_` and 64 random hex digits. Only its sha256 is
/// stored, so a copy of the database grants nothing.
fn new_token() -> String {
  let mut bytes = [0u8; 32];
  rand::thread_rng().fill_bytes(&mut bytes);
  format!("isola_{}", hex::encode(bytes))
}

fn token_hash(token: &str) -> String {
  hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Who an API token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
  pub account: String,
  pub admin: bool,
}

impl Db {
  /// Creates `account` and returns its first token.
  pub fn create_account(&self, account: &str, admin: bool) -> Result<String> {
    self.write(|tx| {
      let now = Timestamp::now().0;
      let inserted = tx.execute(
        "INSERT OR IGNORE INTO accounts (name, created_at) VALUES (?1, ?2)",
        params![account, now],
      )?;
      if inserted == 0 {
        return Err(Error::Conflict(format!(
          "account {account:?} already exists; pick another name"
        )));
      }
      insert_token(tx, account, admin)
    })
  }

  /// A new token for `account`.
  pub fn issue_token(&self, account: &str, admin: bool) -> Result<String> {
    self.write(|tx| insert_token(tx, account, admin))
  }

  /// The owner of `token`, if it is one.
  pub fn authenticate(&self, token: &str) -> Result<Option<Caller>> {
    let conn = self.conn();
    let caller = conn
      .query_row(
        "SELECT account, admin FROM tokens WHERE sha256 = ?1",
        [token_hash(token)],
        |row| {
          Ok(Caller {
            account: row.get(0)?,
            admin: row.get(1)?,
          })
        },
      )
      .optional()?;
    Ok(caller)
  }
}

fn insert_token(tx: &Transaction<'_>, account: &str, admin: bool) -> Result<String> {
  let token = new_token();
  tx.execute(
    "INSERT INTO tokens (sha256, account, admin, created_at) VALUES (?1, ?2, ?3, ?4)",
    params![token_hash(&token), account, admin, Timestamp::now().0],
  )?;
  Ok(token)
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::db::testing::open;

  #[test]
  fn tokens_authenticate_their_account() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let admin = db.create_account("default", true).unwrap();
    assert!(admin.starts_with("isola_") && admin.len() == 6 + 64);
    let user = db.issue_token("default", false).unwrap();
    assert_eq!(
      db.authenticate(&admin).unwrap(),
      Some(Caller {
        account: "default".into(),
        admin: true
      })
    );
    assert!(!db.authenticate(&user).unwrap().unwrap().admin);
    assert_eq!(db.authenticate("isola_nope").unwrap(), None);
    // Only hashes are stored.
    let stored: String = db
      .conn()
      .query_row("SELECT group_concat(sha256) FROM tokens", [], |r| r.get(0))
      .unwrap();
    assert!(!stored.contains(&admin[6..]));
  }
}
