//! The control plane's own CA: it signs the QUIC server certificate and one
//! client certificate per edge, so both ends of the control channel
//! authenticate each other with nothing but files from `init` and
//! `enroll-edge`.

use std::fs;
use std::io;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::path::PathBuf;

use rand::RngCore as _;
use rcgen::BasicConstraints;
use rcgen::Certificate;
use rcgen::CertificateParams;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::SerialNumber;
use time::Duration;
use time::OffsetDateTime;

/// The DNS name in the control plane's certificate; edges check it by default.
pub const SERVER_NAME: &str = "isola-control";

/// How long the CA stays valid. Rotating it means re-enrolling every edge,
/// so it is long.
const CA_VALIDITY: Duration = Duration::days(20 * 365);
/// How long server and edge certificates stay valid; `enroll-edge` again
/// re-issues an edge's.
const LEAF_VALIDITY: Duration = Duration::days(5 * 365);

/// The DNS name in edge `name`'s client certificate.
pub fn edge_dns_name(name: &str) -> String {
  format!("{name}.edge.isola")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("cannot {action} {}: {source}", path.display())]
  Io {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
  },
  #[error("cannot load the CA from {}: {source}; restore ca.pem and ca-key.pem from a backup", dir.display())]
  LoadCa {
    dir: PathBuf,
    #[source]
    source: rcgen::Error,
  },
  #[error("cannot make a certificate: {0}")]
  Rcgen(#[from] rcgen::Error),
}

/// The PKI files of a data directory.
#[derive(Clone, Debug)]
pub struct Files {
  pub ca: PathBuf,
  pub ca_key: PathBuf,
  /// The control plane's QUIC server certificate and key.
  pub cert: PathBuf,
  pub key: PathBuf,
}

pub fn files(dir: &Path) -> Files {
  Files {
    ca: dir.join("ca.pem"),
    ca_key: dir.join("ca-key.pem"),
    cert: dir.join("control.pem"),
    key: dir.join("control-key.pem"),
  }
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug)]
pub struct Issued {
  pub cert_pem: String,
  pub key_pem: String,
}

/// The CA, able to sign.
pub struct Ca {
  cert: Certificate,
  key: KeyPair,
  /// `ca.pem` as on disk: the rebuilt `cert` carries another signature, and
  /// edges should get the very file the control plane trusts.
  pem: String,
}

impl Ca {
  /// A new CA with a fresh key.
  pub fn generate() -> Result<Self, Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn("Isola control plane CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
      KeyUsagePurpose::KeyCertSign,
      KeyUsagePurpose::CrlSign,
      KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key)?;
    let pem = cert.pem();
    Ok(Self { cert, key, pem })
  }

  /// The CA of data directory `dir`. The certificate is rebuilt from
  /// `ca.pem`'s fields and the same key, so what it signs chains to the
  /// `ca.pem` on disk (same subject, same key identifier, same key).
  pub fn load(dir: &Path) -> Result<Self, Error> {
    let files = files(dir);
    let cert_pem = read(&files.ca)?;
    let key_pem = read(&files.ca_key)?;
    let load_err = |source| Error::LoadCa {
      dir: dir.to_path_buf(),
      source,
    };
    let key = KeyPair::from_pem(&key_pem).map_err(load_err)?;
    let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(load_err)?;
    let cert = params.self_signed(&key).map_err(load_err)?;
    Ok(Self {
      cert,
      key,
      pem: cert_pem,
    })
  }

  pub fn cert_pem(&self) -> &str {
    &self.pem
  }

  pub fn key_pem(&self) -> String {
    self.key.serialize_pem()
  }

  /// The control plane's QUIC server certificate, for [`SERVER_NAME`].
  pub fn issue_server(&self) -> Result<Issued, Error> {
    self.issue(
      SERVER_NAME,
      SERVER_NAME.to_string(),
      ExtendedKeyUsagePurpose::ServerAuth,
    )
  }

  /// Edge `name`'s client certificate: CN = name, SAN = [`edge_dns_name`].
  pub fn issue_edge(&self, name: &str) -> Result<Issued, Error> {
    self.issue(
      name,
      edge_dns_name(name),
      ExtendedKeyUsagePurpose::ClientAuth,
    )
  }

  fn issue(&self, cn: &str, san: String, usage: ExtendedKeyUsagePurpose) -> Result<Issued, Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![san])?;
    params.distinguished_name = dn(cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + LEAF_VALIDITY;
    let cert = params.signed_by(&key, &self.cert, &self.key)?;
    Ok(Issued {
      cert_pem: cert.pem(),
      key_pem: key.serialize_pem(),
    })
  }
}

fn dn(cn: &str) -> DistinguishedName {
  let mut dn = DistinguishedName::new();
  dn.push(DnType::OrganizationName, "Isola");
  dn.push(DnType::CommonName, cn);
  dn
}

/// Random and positive (top bit clear), as RFC 5280 asks.
fn serial() -> SerialNumber {
  let mut bytes = [0u8; 16];
  rand::thread_rng().fill_bytes(&mut bytes);
  bytes[0] &= 0x7f;
  SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, Error> {
  fs::read_to_string(path).map_err(|source| Error::Io {
    action: "read",
    path: path.to_path_buf(),
    source,
  })
}

/// Writes `bytes` to `path` through a temp file, fsync and rename, so a
/// crash never leaves half a key. `private` files get mode 0600 from the
/// start, never a moment of wider permissions.
pub fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), Error> {
  let io_err = |action, path: &Path| {
    let path = path.to_path_buf();
    move |source| Error::Io {
      action,
      path,
      source,
    }
  };
  let dir = match path.parent() {
    Some(p) if !p.as_os_str().is_empty() => p,
    _ => Path::new("."),
  };
  let name = path.file_name().unwrap_or_default().to_string_lossy();
  let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
  let result = (|| {
    let mut file = fs::OpenOptions::new()
      .write(true)
      .create(true)
      .truncate(true)
      .mode(if private { 0o600 } else { 0o644 })
      .open(&tmp)
      .map_err(io_err("create", &tmp))?;
    file.write_all(bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("write", path))?;
    fs::File::open(dir)
      .and_then(|d| d.sync_all())
      .map_err(io_err("sync the folder", dir))
  })();
  if result.is_err() {
    let _ = fs::remove_file(&tmp);
  }
  result
}

#[cfg(test)]
mod tests {
  use std::os::unix::fs::PermissionsExt as _;
  use std::sync::Arc;

  use rustls::client::danger::ServerCertVerifier as _;
  use rustls::client::WebPkiServerVerifier;
  use rustls::pki_types::pem::PemObject as _;
  use rustls::pki_types::CertificateDer;
  use rustls::pki_types::ServerName;
  use rustls::pki_types::UnixTime;
  use rustls::server::WebPkiClientVerifier;
  use rustls::RootCertStore;

  use super::*;

  fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("one valid PEM certificate")
  }

  #[test]
  fn certificates_from_a_reloaded_ca_chain_to_the_ca_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate().unwrap();
    let f = files(dir.path());
    write_file(&f.ca, ca.cert_pem().as_bytes(), false).unwrap();
    write_file(&f.ca_key, ca.key_pem().as_bytes(), true).unwrap();
    let mode = fs::metadata(&f.ca_key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let ca = Ca::load(dir.path()).unwrap();
    assert_eq!(ca.cert_pem(), fs::read_to_string(&f.ca).unwrap());
    let server = ca.issue_server().unwrap();
    let edge = ca.issue_edge("edge-1").unwrap();

    // The CA as edges read it: through the PEM loader both binaries use.
    let mut roots = RootCertStore::empty();
    let (added, ignored) =
      roots.add_parsable_certificates(isola_io::pem::load_certs(&f.ca).unwrap());
    assert_eq!((added, ignored), (1, 0));
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let servers = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
      .build()
      .unwrap();
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    servers
      .verify_server_cert(&der(&server.cert_pem), &[], &name, &[], UnixTime::now())
      .unwrap();
    // An edge certificate is no server certificate.
    let edge_name = ServerName::try_from(edge_dns_name("edge-1")).unwrap();
    assert!(servers
      .verify_server_cert(&der(&edge.cert_pem), &[], &edge_name, &[], UnixTime::now())
      .is_err());

    let clients = WebPkiClientVerifier::builder_with_provider(roots, provider)
      .build()
      .unwrap();
    clients
      .verify_client_cert(&der(&edge.cert_pem), &[], UnixTime::now())
      .unwrap();
    // Nor may the server certificate act as an edge.
    assert!(clients
      .verify_client_cert(&der(&server.cert_pem), &[], UnixTime::now())
      .is_err());

    // The issued key loads the way the edge loads it.
    let key = dir.path().join("edge-key.pem");
    write_file(&key, edge.key_pem.as_bytes(), true).unwrap();
    isola_io::pem::load_key(&key).unwrap();
  }

  #[test]
  fn a_certificate_from_another_ca_is_refused() {
    let ca = Ca::generate().unwrap();
    let other = Ca::generate().unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der(ca.cert_pem())).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let clients = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
      .build()
      .unwrap();
    let edge = other.issue_edge("edge-1").unwrap();
    assert!(clients
      .verify_client_cert(&der(&edge.cert_pem), &[], UnixTime::now())
      .is_err());
  }
}
