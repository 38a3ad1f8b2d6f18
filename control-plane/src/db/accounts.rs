//! Accounts and their API tokens.

use super::sql::params;
use super::sql::OptionalExtension as _;
use super::sql::Sql;
use isola_proto::manifest::LimitsSpec;
use rand::RngCore as _;
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
  /// The first 12 hex digits of the token's sha256: names the token in the
  /// audit log and the rate limiter without being usable as one.
  pub token: String,
}

impl Db {
  /// Creates `account` and returns its first token.
  pub fn create_account(&self, account: &str, admin: bool) -> Result<String> {
    self.write(|tx| {
      let now = Timestamp::now().0;
      let inserted = tx.execute(
        "INSERT INTO accounts (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
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
    let hash = token_hash(token);
    let caller = conn
      .query_row(
        "SELECT account, admin FROM tokens WHERE sha256 = ?1",
        [&hash],
        |row| {
          Ok(Caller {
            account: row.get(0)?,
            admin: row.get(1)?,
            token: hash[..12].to_string(),
          })
        },
      )
      .optional()?;
    Ok(caller)
  }

  /// The limit ceilings an admin set for `account`, if any.
  pub fn account_limits(&self, account: &str) -> Result<Option<LimitsSpec>> {
    let text: Option<String> = self
      .conn()
      .query_row(
        "SELECT limits FROM account_limits WHERE account = ?1",
        [account],
        |row| row.get(0),
      )
      .optional()?;
    text
      .map(|t| {
        serde_json::from_str(&t)
          .map_err(|e| Error::Invalid(format!("stored limits of {account:?}: {e}")))
      })
      .transpose()
  }

  /// Sets (or, with `None`, drops) the ceilings of an existing `account`.
  pub fn set_account_limits(&self, account: &str, limits: Option<&LimitsSpec>) -> Result<()> {
    self.write(|tx| {
      let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE name = ?1)",
        [account],
        |row| row.get(0),
      )?;
      if !exists {
        return Err(Error::NotFound(format!("no account named {account:?}")));
      }
      match limits {
        Some(limits) => {
          let text = serde_json::to_string(limits).expect("limits serialise");
          tx.execute(
            "INSERT INTO account_limits (account, limits) VALUES (?1, ?2)
             ON CONFLICT (account) DO UPDATE SET limits = excluded.limits",
            params![account, text],
          )?;
        }
        None => {
          tx.execute("DELETE FROM account_limits WHERE account = ?1", [account])?;
        }
      }
      Ok(())
    })
  }
}

fn insert_token(tx: &Sql<'_>, account: &str, admin: bool) -> Result<String> {
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
        admin: true,
        token: token_hash(&admin)[..12].to_string(),
      })
    );
    assert!(!db.authenticate(&user).unwrap().unwrap().admin);
    assert_eq!(db.authenticate("isola_nope").unwrap(), None);
    // Only hashes are stored.
    let stored: String = db
      .conn()
      .rows("SELECT sha256 FROM tokens", ())
      .unwrap()
      .iter()
      .map(|r| r.get::<String>(0).unwrap())
      .collect::<Vec<_>>()
      .join(",");
    assert!(!stored.contains(&admin[6..]));
  }

  #[test]
  fn ceilings_belong_to_existing_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    assert_eq!(db.account_limits("acme").unwrap(), None);
    let raised = LimitsSpec {
      memory_mb: Some(512),
      ..Default::default()
    };
    db.set_account_limits("acme", Some(&raised)).unwrap();
    assert_eq!(db.account_limits("acme").unwrap(), Some(raised));
    db.set_account_limits("acme", None).unwrap();
    assert_eq!(db.account_limits("acme").unwrap(), None);
    assert!(matches!(
      db.set_account_limits("nobody", None),
      Err(Error::NotFound(_))
    ));
  }
}
