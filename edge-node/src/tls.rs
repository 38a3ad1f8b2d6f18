//! HTTPS: rustls with the certificate picked per host name (SNI).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::server::ClientHello;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;

use crate::config::EdgeConfig;

/// Exact names first, then `*.suffix` wildcards; a client without SNI gets
/// the first certificate.
#[derive(Debug, Default)]
struct SniResolver {
  exact: HashMap<String, Arc<CertifiedKey>>,
  wildcard: HashMap<String, Arc<CertifiedKey>>,
  fallback: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
  fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
    let Some(name) = hello.server_name() else {
      return self.fallback.clone();
    };
    let name = name.to_ascii_lowercase();
    if let Some(key) = self.exact.get(&name) {
      return Some(key.clone());
    }
    let (_, parent) = name.split_once('.')?;
    self.wildcard.get(parent).cloned()
  }
}

/// The private key in `path`.
pub fn load_key(path: &Path) -> anyhow::Result<rustls::pki_types::PrivateKeyDer<'static>> {
  Ok(isola_io::pem::load_key(path)?)
}

/// The certificates in `path`, at least one.
pub fn load_chain(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
  Ok(isola_io::pem::load_certs(path)?)
}

/// The rustls server config of the node's HTTPS listener.
pub fn server_config(config: &EdgeConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
  let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
  let mut resolver = SniResolver::default();
  for cert in &config.certificates {
    let (cert_path, key_path) = (config.resolve(&cert.cert), config.resolve(&cert.key));
    let chain = load_chain(&cert_path)?;
    let key = provider
      .key_provider
      .load_private_key(load_key(&key_path)?)
      .with_context(|| format!("unsupported private key in {}", key_path.display()))?;
    let certified = Arc::new(CertifiedKey::new(chain, key));
    for host in &cert.hosts {
      let host = host.to_ascii_lowercase();
      match host.strip_prefix("*.") {
        Some(suffix) => resolver
          .wildcard
          .insert(suffix.to_string(), certified.clone()),
        None => resolver.exact.insert(host, certified.clone()),
      };
    }
    resolver.fallback.get_or_insert(certified);
  }
  let mut tls = rustls::ServerConfig::builder_with_provider(provider)
    .with_safe_default_protocol_versions()
    .context("TLS protocol setup")?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
  tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
  Ok(Arc::new(tls))
}
