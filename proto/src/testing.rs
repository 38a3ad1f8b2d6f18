//! Test data for the channel's tests in this crate and in the crates that
//! drive it (feature `testing`).

use std::collections::BTreeMap;

use serde_bytes::ByteBuf;

use crate::manifest::MAX_MODULE_BYTES;
use crate::manifest::MAX_VERSION_BYTES;
use crate::msg::DesiredState;
use crate::msg::Revision;
use crate::msg::Split;
use crate::msg::VersionBundle;
use crate::msg::WorkerDeployment;

/// A state that serves each of `hashes` at 100 % from a worker of its own,
/// `acme_<hash>`, so a hash keeps its worker's name across revisions.
pub fn desired(revision: Revision, hashes: &[&str]) -> DesiredState {
  DesiredState {
    revision,
    workers: hashes
      .iter()
      .map(|h| WorkerDeployment {
        name: format!("acme_{h}"),
        versions: vec![Split {
          hash: h.to_string(),
          percentage: 100,
        }],
        secrets: BTreeMap::new(),
      })
      .collect(),
    routes: Vec::new(),
  }
}

/// A version exactly at the upload limit: two modules at the per-module
/// limit and one for the rest, filled with a byte that names the version.
pub fn full_bundle(hash: &str) -> VersionBundle {
  let fill = hash.bytes().last().expect("a hash is not empty");
  VersionBundle {
    manifest: hash.as_bytes().to_vec(),
    modules: [
      MAX_MODULE_BYTES,
      MAX_MODULE_BYTES,
      MAX_VERSION_BYTES - 2 * MAX_MODULE_BYTES,
    ]
    .into_iter()
    .map(|n| ByteBuf::from(vec![fill; n]))
    .collect(),
  }
}
