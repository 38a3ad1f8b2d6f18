//! Workers KV as both sides agree on it: Cloudflare's limits, the checks
//! that enforce them (one wording for the binding and the REST API), and
//! the calls an edge makes to the control plane's store.

use serde::Deserialize;
use serde::Serialize;

/// Longest key, UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value.
pub const MAX_VALUE_BYTES: usize = 25 << 20;
/// Largest metadata, as serialized JSON.
pub const MAX_METADATA_BYTES: usize = 1024;
/// Expirations closer than this are refused.
pub const MIN_EXPIRATION_TTL: u64 = 60;
/// Most keys one `list` returns (and its default).
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Most KV operations one invocation may make.
pub const MAX_OPS_PER_INVOCATION: u32 = 1000;
/// Most pairs in one bulk write or delete.
pub const MAX_BULK: usize = 10_000;
/// Shortest time an edge caches a read (Cloudflare's `cacheTtl` minimum and
/// default), seconds.
pub const MIN_CACHE_TTL: u64 = 60;

/// A refused KV operation. The text is what the worker's error says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{0}")]
pub struct KvError(pub String);

/// Key rules (Cloudflare's): not empty, not `.` or `..`, at most 512 bytes.
pub fn check_key(key: &str) -> Result<(), KvError> {
  if key.is_empty() {
    return Err(KvError("KV key must not be empty".into()));
  }
  if key == "." || key == ".." {
    return Err(KvError(format!("KV key {key:?} is not allowed")));
  }
  if key.len() > MAX_KEY_BYTES {
    return Err(KvError(format!(
      "KV key is too long: 414 UTF-8 encoded length of {} exceeds key length limit of {MAX_KEY_BYTES}",
      key.len()
    )));
  }
  Ok(())
}

/// Value, metadata and expiration rules of a write at `now` (Unix seconds):
/// returns the absolute expiration, if any.
pub fn check_write(
  value_len: usize,
  metadata: Option<&str>,
  expiration: Option<u64>,
  expiration_ttl: Option<u64>,
  now: u64,
) -> Result<Option<u64>, KvError> {
  if value_len > MAX_VALUE_BYTES {
    return Err(KvError(format!(
      "KV value is too large: {value_len} bytes exceeds the limit of {MAX_VALUE_BYTES} bytes (25 MiB)"
    )));
  }
  if let Some(m) = metadata {
    if m.len() > MAX_METADATA_BYTES {
      return Err(KvError(format!(
        "KV metadata is too large: {} bytes serialized exceeds the limit of {MAX_METADATA_BYTES}",
        m.len()
      )));
    }
  }
  let absolute = match (expiration, expiration_ttl) {
    (_, Some(ttl)) => {
      if ttl < MIN_EXPIRATION_TTL {
        return Err(KvError(format!(
          "KV expirationTtl of {ttl} s is too short: it must be at least {MIN_EXPIRATION_TTL} s"
        )));
      }
      Some(now.saturating_add(ttl))
    }
    (Some(at), None) => {
      if at < now.saturating_add(MIN_EXPIRATION_TTL) {
        return Err(KvError(format!(
          "KV expiration {at} is too soon: it must be at least {MIN_EXPIRATION_TTL} s in the future (now is {now})"
        )));
      }
      Some(at)
    }
    (None, None) => None,
  };
  Ok(absolute)
}

/// A stored value with its metadata (serialized JSON) and expiration (Unix
/// seconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
  #[serde(with = "serde_bytes")]
  pub value: Vec<u8>,
  pub metadata: Option<String>,
  pub expiration: Option<u64>,
}

/// One key of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvKey {
  pub name: String,
  pub expiration: Option<u64>,
  pub metadata: Option<String>,
}

/// A page of keys, in UTF-8 byte order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvList {
  pub keys: Vec<KvKey>,
  pub list_complete: bool,
  /// Where the next page starts; `None` on the last page.
  pub cursor: Option<String>,
}

/// What an edge asks of the control plane's store, for worker `worker` (its
/// edge name: the control plane checks the namespace is its account's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvCall {
  pub worker: String,
  pub namespace: String,
  pub op: KvOp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KvOp {
  Get {
    key: String,
  },
  Put {
    key: String,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    metadata: Option<String>,
    /// Absolute, Unix seconds (already checked by the edge).
    expiration: Option<u64>,
  },
  Delete {
    key: String,
  },
  List {
    prefix: Option<String>,
    limit: u32,
    cursor: Option<String>,
  },
}

/// The control plane's answer to a [`KvCall`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KvReply {
  Value(Option<KvEntry>),
  Done,
  Keys(KvList),
  /// The call was refused; the text is the worker's error.
  Refused(KvError),
  /// The store failed; the worker's error says only that.
  Failed,
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn keys_follow_cloudflare_rules() {
    assert!(check_key("a").is_ok());
    assert!(check_key(&"k".repeat(512)).is_ok());
    let long = check_key(&"k".repeat(513)).unwrap_err().0;
    assert!(long.contains("414") && long.contains("512"), "{long}");
    for bad in ["", ".", ".."] {
      assert!(check_key(bad).is_err(), "{bad:?}");
    }
    assert!(check_key("...").is_ok());
  }

  #[test]
  fn writes_follow_cloudflare_limits() {
    let now = 1_000_000;
    assert_eq!(check_write(3, None, None, None, now), Ok(None));
    assert_eq!(
      check_write(3, None, None, Some(60), now),
      Ok(Some(now + 60))
    );
    assert!(check_write(3, None, None, Some(59), now)
      .unwrap_err()
      .0
      .contains("at least 60"));
    assert!(check_write(3, None, Some(now + 59), None, now).is_err());
    assert_eq!(
      check_write(3, None, Some(now + 60), None, now),
      Ok(Some(now + 60))
    );
    assert!(check_write(MAX_VALUE_BYTES + 1, None, None, None, now).is_err());
    assert!(check_write(MAX_VALUE_BYTES, None, None, None, now).is_ok());
    let meta = "x".repeat(1025);
    assert!(check_write(1, Some(&meta), None, None, now)
      .unwrap_err()
      .0
      .contains("1024"));
  }
}
