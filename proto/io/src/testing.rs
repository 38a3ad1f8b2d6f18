//! For tests of both binaries' channel code: a CA, a control plane's
//! certificate and an edge's, made on the spot (feature `testing`).

use std::path::Path;
use std::path::PathBuf;

use rcgen::CertificateParams;
use rcgen::IsCa;
use rcgen::KeyPair;

use crate::channel::TlsFiles;

/// The name the test control plane's certificate is issued for.
pub const SERVER_NAME: &str = "control.isola.test";

/// PEM files of a fresh CA and two leaves it signed.
#[derive(Debug)]
pub struct Identity {
  pub ca: PathBuf,
  pub server_cert: PathBuf,
  pub server_key: PathBuf,
  /// Issued for `edge-1.edge.isola`.
  pub edge_cert: PathBuf,
  pub edge_key: PathBuf,
}

impl Identity {
  /// Makes the CA and certificates and writes them to `dir`.
  pub fn new(dir: &Path) -> Self {
    let write = |name: &str, pem: String| {
      let path = dir.join(name);
      std::fs::write(&path, pem).expect("the test folder is writable");
      path
    };
    let ca_key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).expect("a CA certificate");
    let leaf = |san: &str| {
      let key = KeyPair::generate().expect("a key");
      let cert = CertificateParams::new(vec![san.to_string()])
        .expect("leaf parameters")
        .signed_by(&key, &ca, &ca_key)
        .expect("a leaf certificate");
      (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(SERVER_NAME);
    let (edge_cert, edge_key) = leaf("edge-1.edge.isola");
    Self {
      ca: write("ca.pem", ca.pem()),
      server_cert: write("server.pem", server_cert),
      server_key: write("server.key", server_key),
      edge_cert: write("edge.pem", edge_cert),
      edge_key: write("edge.key", edge_key),
    }
  }

  pub fn server(&self) -> TlsFiles<'_> {
    TlsFiles {
      ca: &self.ca,
      cert: &self.server_cert,
      key: &self.server_key,
    }
  }

  pub fn edge(&self) -> TlsFiles<'_> {
    TlsFiles {
      ca: &self.ca,
      cert: &self.edge_cert,
      key: &self.edge_key,
    }
  }
}
