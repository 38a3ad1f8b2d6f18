//! Secret values at rest: AES-256-GCM under a key kept in its own file
//! (`secrets.key`), so a copy of `control.db` alone reveals no secret.
//!
//! Each value gets a random 96-bit nonce, and its place
//! (`account/worker/key`) is authenticated as associated data, so a
//! ciphertext copied onto another secret's row fails to decrypt instead of
//! leaking into another worker's `env`.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use aes_gcm::aead::Aead as _;
use aes_gcm::aead::KeyInit as _;
use aes_gcm::aead::Payload;
use aes_gcm::Aes256Gcm;
use aes_gcm::Nonce;
use rand::RngCore as _;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error(
    "cannot read the secrets key {}: {source}; it is made by `isola-control init`, restore it \
     from a backup",
    path.display()
  )]
  Read {
    path: PathBuf,
    #[source]
    source: io::Error,
  },
  #[error(
    "the secrets key {} holds {len} bytes instead of {KEY_LEN}; restore it from a backup",
    path.display()
  )]
  BadKey { path: PathBuf, len: usize },
  #[error(
    "secret {0} cannot be decrypted: it was altered, or encrypted under another secrets.key; \
     put it again"
  )]
  Decrypt(String),
}

/// Encrypts and decrypts secret values.
#[derive(Clone)]
pub struct Cipher {
  aead: Aes256Gcm,
}

impl fmt::Debug for Cipher {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("Cipher(..)")
  }
}

/// A fresh random key.
pub fn generate_key() -> [u8; KEY_LEN] {
  let mut key = [0u8; KEY_LEN];
  rand::thread_rng().fill_bytes(&mut key);
  key
}

impl Cipher {
  pub fn new(key: &[u8; KEY_LEN]) -> Self {
    Self {
      aead: Aes256Gcm::new(key.into()),
    }
  }

  /// The cipher of the key file at `path` (32 raw bytes).
  pub fn load(path: &Path) -> Result<Self, Error> {
    let bytes = fs::read(path).map_err(|source| Error::Read {
      path: path.to_path_buf(),
      source,
    })?;
    let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| Error::BadKey {
      path: path.to_path_buf(),
      len: bytes.len(),
    })?;
    Ok(Self::new(&key))
  }

  /// Encrypts `value` for secret `key` of `account`'s `worker`; returns the
  /// nonce and the ciphertext (with its tag).
  pub fn seal(
    &self,
    account: &str,
    worker: &str,
    key: &str,
    value: &[u8],
  ) -> ([u8; NONCE_LEN], Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let aad = aad(account, worker, key);
    let ciphertext = self
      .aead
      .encrypt(
        Nonce::from_slice(&nonce),
        Payload {
          msg: value,
          aad: aad.as_bytes(),
        },
      )
      .expect("AES-GCM encrypts any value below 64 GiB");
    (nonce, ciphertext)
  }

  /// Decrypts what [`Cipher::seal`] made for the same secret.
  pub fn open(
    &self,
    account: &str,
    worker: &str,
    key: &str,
    nonce: &[u8],
    ciphertext: &[u8],
  ) -> Result<Vec<u8>, Error> {
    let aad = aad(account, worker, key);
    if nonce.len() != NONCE_LEN {
      return Err(Error::Decrypt(aad));
    }
    self
      .aead
      .decrypt(
        Nonce::from_slice(nonce),
        Payload {
          msg: ciphertext,
          aad: aad.as_bytes(),
        },
      )
      .map_err(|_| Error::Decrypt(aad))
  }
}

/// None of the three names may hold a '/', so this is unambiguous.
fn aad(account: &str, worker: &str, key: &str) -> String {
  format!("{account}/{worker}/{key}")
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn round_trip() {
    let cipher = Cipher::new(&generate_key());
    let (nonce, ct) = cipher.seal("acme", "api", "TOKEN", b"s3cret");
    assert_ne!(&ct[..6], b"s3cret");
    let pt = cipher.open("acme", "api", "TOKEN", &nonce, &ct).unwrap();
    assert_eq!(pt, b"s3cret");
    // A fresh nonce each time: equal values do not look equal at rest.
    let (nonce2, ct2) = cipher.seal("acme", "api", "TOKEN", b"s3cret");
    assert_ne!((nonce, ct), (nonce2, ct2));
  }

  #[test]
  fn tampering_is_detected() {
    let cipher = Cipher::new(&generate_key());
    let (nonce, mut ct) = cipher.seal("acme", "api", "TOKEN", b"s3cret");
    ct[0] ^= 1;
    let err = cipher
      .open("acme", "api", "TOKEN", &nonce, &ct)
      .unwrap_err();
    assert!(err.to_string().contains("acme/api/TOKEN"), "{err}");
    let (mut nonce, ct) = cipher.seal("acme", "api", "TOKEN", b"s3cret");
    nonce[0] ^= 1;
    assert!(cipher.open("acme", "api", "TOKEN", &nonce, &ct).is_err());
    assert!(cipher.open("acme", "api", "TOKEN", &[0; 3], &ct).is_err());
  }

  #[test]
  fn a_ciphertext_is_bound_to_its_secret() {
    let cipher = Cipher::new(&generate_key());
    let (nonce, ct) = cipher.seal("acme", "api", "TOKEN", b"s3cret");
    for (account, worker, key) in [
      ("evil", "api", "TOKEN"),
      ("acme", "web", "TOKEN"),
      ("acme", "api", "OTHER"),
    ] {
      assert!(cipher.open(account, worker, key, &nonce, &ct).is_err());
    }
    let other = Cipher::new(&generate_key());
    assert!(other.open("acme", "api", "TOKEN", &nonce, &ct).is_err());
  }

  #[test]
  fn key_file_must_hold_32_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.key");
    assert!(matches!(Cipher::load(&path), Err(Error::Read { .. })));
    fs::write(&path, [0u8; 16]).unwrap();
    assert!(matches!(
      Cipher::load(&path),
      Err(Error::BadKey { len: 16, .. })
    ));
    fs::write(&path, generate_key()).unwrap();
    Cipher::load(&path).unwrap();
  }
}
