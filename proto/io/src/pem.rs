//! Certificates and keys from PEM files, for every TLS setup of both
//! binaries (HTTPS listeners, the control channel's two ends), through
//! rustls-pki-types' own PEM reader.

use std::path::Path;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;

use crate::Error;

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
  std::fs::read(path).map_err(|source| Error::Read {
    what,
    path: path.to_path_buf(),
    source,
  })
}

/// Every certificate in `path` (a chain, or a CA bundle); at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
  const WHAT: &str = "certificate";
  let pem = read(path, WHAT)?;
  let certs = CertificateDer::pem_slice_iter(&pem)
    .collect::<Result<Vec<_>, _>>()
    .map_err(|source| Error::Pem {
      what: WHAT,
      path: path.to_path_buf(),
      source,
    })?;
  if certs.is_empty() {
    return Err(Error::Empty {
      what: WHAT,
      path: path.to_path_buf(),
    });
  }
  Ok(certs)
}

/// The private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
  const WHAT: &str = "private key";
  let pem = read(path, WHAT)?;
  PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
    rustls::pki_types::pem::Error::NoItemsFound => Error::Empty {
      what: WHAT,
      path: path.to_path_buf(),
    },
    source => Error::Pem {
      what: WHAT,
      path: path.to_path_buf(),
      source,
    },
  })
}
