//! From a deployed version's manifest to what the runtime runs. The edge's
//! store and the control plane's upload check both start workers from
//! manifests; this is the one place that turns one into the other.

use bytes::Bytes;
use isola_ext::egress::WorkerEgress;
use isola_proto::manifest::Manifest;

use crate::bundle::Bundle;
use crate::error::Error;
use crate::error::ErrorKind;
use crate::limits::Limits;
use crate::worker::WorkerConfig;

/// The bundle and config of version `version` (its manifest id) of a
/// worker, from its manifest and the bytes of its modules: the manifest's
/// main module, vars (as JSON values), service, KV and queue producer
/// bindings, limits (unset ones take [`Limits::default`]) and egress allow
/// list.
pub fn from_manifest(
  manifest: &Manifest,
  version: &str,
  modules: impl IntoIterator<Item = (String, Bytes)>,
) -> Result<(Bundle, WorkerConfig), Error> {
  let bundle = Bundle::from_modules(manifest.main_module.clone(), modules)?;
  let mut config = WorkerConfig::new(manifest.worker.clone())
    .version(version)
    .limits(Limits::from(&manifest.limits));
  for (name, value) in &manifest.vars {
    config = config.json_var(name.clone(), value.clone());
  }
  for s in &manifest.services {
    config = config.service(s.binding.clone(), s.service.clone(), s.entrypoint.clone());
  }
  for kv in &manifest.kv_namespaces {
    config = config.kv_namespace(kv.binding.clone(), kv.id.clone());
  }
  for q in &manifest.queues.producers {
    config = config.queue_producer(q.binding.clone(), q.queue.clone());
  }
  if let Some(spec) = &manifest.egress {
    let egress = WorkerEgress::new(spec).map_err(ErrorKind::Module)?;
    config = config.egress(egress);
  }
  Ok((bundle, config))
}
