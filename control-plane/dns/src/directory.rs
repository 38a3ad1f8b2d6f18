//! The edges the server may answer with: what the control plane's health
//! checks last published, cheap to read per packet.

use std::sync::Arc;
use std::sync::RwLock;

use isola_proto::msg::EdgeSite;
use serde::Serialize;

/// Whether an edge may be in answers, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
  Healthy,
  Down { reason: String },
}

impl Status {
  pub fn is_healthy(&self) -> bool {
    matches!(self, Status::Healthy)
  }
}

/// An edge as the DNS server and `GET /v1/edges` see it.
#[derive(Clone, Debug)]
pub struct EdgeView {
  pub name: String,
  pub site: EdgeSite,
  pub status: Status,
}

/// The last published view of every edge seen; cheap to read per packet.
#[derive(Clone, Debug, Default)]
pub struct Directory(Arc<RwLock<Arc<Vec<EdgeView>>>>);

impl Directory {
  pub fn get(&self) -> Arc<Vec<EdgeView>> {
    self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
  }

  pub fn set(&self, edges: Vec<EdgeView>) {
    *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(edges);
  }
}
