//! Lease rows: which control-plane replica does the work that must happen
//! once (see `crate::lease`).

use super::sql::params;
use super::Db;
use super::Result;

impl Db {
  /// Writes lease `name` as `holder`'s until `until` if it is free, expired
  /// at `now`, or already `holder`'s; returns whether `holder` holds it.
  pub fn try_lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
    self.write(|tx| {
      tx.execute(
        "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
         WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
        params![name, holder, until, now],
      )?;
      let current: String =
        tx.query_row("SELECT holder FROM leases WHERE name = ?1", [name], |r| {
          r.get(0)
        })?;
      Ok(current == holder)
    })
  }

  /// Gives lease `name` up if `holder` has it, so another replica need not
  /// wait for it to expire.
  pub fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
    self.write(|tx| {
      tx.execute(
        "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
        [name, holder],
      )?;
      Ok(())
    })
  }
}

#[cfg(test)]
mod tests {
  use super::super::testing::open;

  #[test]
  fn one_holder_at_a_time_until_it_expires_or_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    assert!(db.try_lease("work", "a", 0, 5_000).unwrap());
    assert!(!db.try_lease("work", "b", 1_000, 6_000).unwrap());
    // A renews; B still waits.
    assert!(db.try_lease("work", "a", 1_000, 6_000).unwrap());
    assert!(!db.try_lease("work", "b", 5_999, 10_999).unwrap());
    // Expired: B takes it, and A's renewal is refused.
    assert!(db.try_lease("work", "b", 6_000, 11_000).unwrap());
    assert!(!db.try_lease("work", "a", 6_500, 11_500).unwrap());
    db.release_lease("work", "b").unwrap();
    assert!(db.try_lease("work", "a", 7_000, 12_000).unwrap());
    // Another lease is another row.
    assert!(db.try_lease("other", "b", 7_000, 12_000).unwrap());
  }
}
