//! KV namespaces (account-scoped) and their values, in the control plane's
//! SQLite file: the default [`KvStore`](crate::kv::KvStore).

use super::sql::params;
use super::sql::OptionalExtension as _;
use super::sql::Sql;
use base64::Engine as _;
use isola_proto::kv::KvEntry;
use isola_proto::kv::KvKey;
use isola_proto::kv::KvList;
use serde::Serialize;

use super::Db;
use super::Error;
use super::Result;
use super::Timestamp;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct KvNamespace {
  pub id: String,
  pub title: String,
  pub created_at: Timestamp,
}

fn not_found_namespace(id: &str) -> Error {
  Error::NotFound(format!(
    "no KV namespace {id:?} in this account; create one with POST /v1/kv/namespaces and use its id"
  ))
}

/// A cursor is the last key of the page, base64url, so any key fits in a
/// query string.
fn encode_cursor(key: &str) -> String {
  base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn decode_cursor(cursor: &str) -> Result<String> {
  base64::engine::general_purpose::URL_SAFE_NO_PAD
    .decode(cursor)
    .ok()
    .and_then(|b| String::from_utf8(b).ok())
    .ok_or_else(|| Error::Invalid(format!("cursor {cursor:?} is not one this API gave out")))
}

impl Db {
  pub fn create_kv_namespace(&self, account: &str, title: &str) -> Result<KvNamespace> {
    let id = hex::encode(rand::random::<[u8; 16]>());
    let now = Timestamp::now();
    self.write(|tx| {
      let taken: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM kv_namespaces WHERE account = ?1 AND title = ?2)",
        [account, title],
        |r| r.get(0),
      )?;
      if taken {
        return Err(Error::Conflict(format!(
          "this account already has a KV namespace titled {title:?}; pick another title"
        )));
      }
      tx.execute(
        "INSERT INTO kv_namespaces (id, account, title, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, account, title, now.0],
      )?;
      Ok(())
    })?;
    Ok(KvNamespace {
      id,
      title: title.to_string(),
      created_at: now,
    })
  }

  pub fn kv_namespaces(&self, account: &str) -> Result<Vec<KvNamespace>> {
    let conn = self.conn();
    let mut stmt = conn.prepare(
      "SELECT id, title, created_at FROM kv_namespaces WHERE account = ?1 ORDER BY title",
    )?;
    let rows = stmt.query_map([account], |r| {
      Ok(KvNamespace {
        id: r.get(0)?,
        title: r.get(1)?,
        created_at: Timestamp(r.get(2)?),
      })
    })?;
    Ok(rows.collect::<super::sql::Result<_>>()?)
  }

  /// Deletes a namespace and every value in it.
  pub fn delete_kv_namespace(&self, account: &str, id: &str) -> Result<()> {
    self.write(|tx| {
      require_namespace(tx, account, id)?;
      tx.execute("DELETE FROM kv_values WHERE namespace = ?1", [id])?;
      tx.execute("DELETE FROM kv_namespaces WHERE id = ?1", [id])?;
      Ok(())
    })
  }

  /// Whether namespace `id` is `account`'s (the check every value call
  /// makes first).
  pub fn require_kv_namespace(&self, account: &str, id: &str) -> Result<()> {
    require_namespace(&self.conn(), account, id)
  }

  /// The value of `key`, unless it is missing or expired at `now` (Unix
  /// seconds).
  pub fn kv_get(&self, namespace: &str, key: &str, now: u64) -> Result<Option<KvEntry>> {
    let conn = self.conn();
    let entry = conn
      .query_row(
        "SELECT value, metadata, expiration FROM kv_values
         WHERE namespace = ?1 AND key = ?2 AND (expiration IS NULL OR expiration > ?3)",
        params![namespace, key, now as i64],
        |r| {
          Ok(KvEntry {
            value: r.get(0)?,
            metadata: r.get(1)?,
            expiration: r.get::<Option<i64>>(2)?.map(|e| e as u64),
          })
        },
      )
      .optional()?;
    Ok(entry)
  }

  /// Writes many values in one transaction (last write wins).
  pub fn kv_put(&self, namespace: &str, entries: &[(String, KvEntry)]) -> Result<()> {
    let now = Timestamp::now().0;
    self.write(|tx| {
      let mut stmt = tx.prepare(
        "INSERT INTO kv_values (namespace, key, value, metadata, expiration, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value,
           metadata = excluded.metadata, expiration = excluded.expiration,
           updated_at = excluded.updated_at",
      )?;
      for (key, e) in entries {
        stmt.execute(params![
          namespace,
          key,
          e.value,
          e.metadata,
          e.expiration.map(|x| x as i64),
          now
        ])?;
      }
      Ok(())
    })
  }

  /// Deletes keys (missing ones are fine, as on Cloudflare).
  pub fn kv_delete(&self, namespace: &str, keys: &[String]) -> Result<()> {
    self.write(|tx| {
      let mut stmt = tx.prepare("DELETE FROM kv_values WHERE namespace = ?1 AND key = ?2")?;
      for key in keys {
        stmt.execute(params![namespace, key])?;
      }
      Ok(())
    })
  }

  /// A page of live keys in UTF-8 byte order (SQLite compares TEXT by
  /// bytes), after `cursor`.
  pub fn kv_list(
    &self,
    namespace: &str,
    prefix: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
    now: u64,
  ) -> Result<KvList> {
    let after = cursor.map(decode_cursor).transpose()?.unwrap_or_default();
    let prefix = prefix.unwrap_or("");
    let conn = self.conn();
    // `key >= prefix` and a prefix check in Rust: no LIKE escaping, and
    // the index range starts at the prefix.
    let start = if after.as_str() > prefix {
      after.clone()
    } else {
      prefix.to_string()
    };
    let mut stmt = conn.prepare(
      "SELECT key, metadata, expiration FROM kv_values
       WHERE namespace = ?1 AND key >= ?2 AND key > ?3 AND (expiration IS NULL OR expiration > ?4)
       ORDER BY key LIMIT ?5",
    )?;
    let mut rows = stmt.query(params![
      namespace,
      start,
      after,
      now as i64,
      i64::from(limit) + 1
    ])?;
    let mut keys = Vec::new();
    let mut more = false;
    while let Some(r) = rows.next()? {
      let name: String = r.get(0)?;
      if !name.starts_with(prefix) {
        break;
      }
      if keys.len() == limit as usize {
        more = true;
        break;
      }
      keys.push(KvKey {
        name,
        metadata: r.get(1)?,
        expiration: r.get::<Option<i64>>(2)?.map(|e| e as u64),
      });
    }
    let cursor = more.then(|| encode_cursor(&keys.last().expect("a full page").name));
    Ok(KvList {
      keys,
      list_complete: !more,
      cursor,
    })
  }

  /// Deletes values expired before `now`; returns how many.
  pub fn kv_sweep(&self, now: u64) -> Result<usize> {
    self.write(|tx| {
      Ok(tx.execute(
        "DELETE FROM kv_values WHERE expiration IS NOT NULL AND expiration <= ?1",
        [now as i64],
      )?)
    })
  }
}

fn require_namespace(conn: &Sql<'_>, account: &str, id: &str) -> Result<()> {
  let found: bool = conn.query_row(
    "SELECT EXISTS (SELECT 1 FROM kv_namespaces WHERE id = ?1 AND account = ?2)",
    [id, account],
    |r| r.get(0),
  )?;
  if found {
    Ok(())
  } else {
    Err(not_found_namespace(id))
  }
}

#[cfg(test)]
mod tests {
  use isola_proto::kv::KvEntry;

  use crate::db::testing::open;

  fn entry(v: &str, expiration: Option<u64>) -> KvEntry {
    KvEntry {
      value: v.as_bytes().to_vec(),
      metadata: None,
      expiration,
    }
  }

  #[test]
  fn an_expired_key_is_gone_from_get_and_list_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_account("acme", false).unwrap();
    let ns = db.create_kv_namespace("acme", "n").unwrap().id;
    db.kv_put(
      &ns,
      &[
        ("a".into(), entry("1", Some(1_000))),
        ("b".into(), entry("2", None)),
      ],
    )
    .unwrap();
    assert!(db.kv_get(&ns, "a", 999).unwrap().is_some());
    assert!(db.kv_get(&ns, "a", 1_000).unwrap().is_none());
    let names = |now| -> Vec<String> {
      db.kv_list(&ns, None, 10, None, now)
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.name)
        .collect()
    };
    assert_eq!(names(999), ["a", "b"]);
    assert_eq!(names(1_000), ["b"]);
    assert_eq!(db.kv_sweep(1_000).unwrap(), 1);
    assert_eq!(db.kv_sweep(1_000).unwrap(), 0);
    // A bad cursor is the caller's error.
    assert!(db.kv_list(&ns, None, 10, Some("!!"), 0).is_err());
  }
}
