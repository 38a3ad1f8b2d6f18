//! Workers and their uploaded versions: immutable manifests. Module bytes
//! live in the blob store (`crate::blobs`); the `blobs` table only holds
//! what older releases stored here, until `serve` moves it out.

use super::sql::params;
use super::sql::OptionalExtension as _;
use bytes::Bytes;
use isola_proto::manifest::LimitsSpec;
use isola_proto::manifest::Manifest;
use isola_proto::manifest::ModuleRef;
use serde::Serialize;

use super::deployments::active_deployment;
use super::require_worker;
use super::Db;
use super::Deployment;
use super::Error;
use super::Result;
use super::Timestamp;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VersionInfo {
  pub id: String,
  /// The manifest's hash: what edges know the version by.
  pub hash: String,
  pub worker: String,
  pub created_at: Timestamp,
  pub main_module: String,
  #[schema(value_type = Vec<ModuleDoc>)]
  pub modules: Vec<ModuleRef>,
  /// What the uploader said about the version; not part of the manifest.
  pub message: Option<String>,
}

/// A module of a version, as `ModuleRef` serializes (for the OpenAPI
/// document; the proto crate stays free of utoipa).
#[derive(utoipa::ToSchema)]
#[schema(as = Module)]
#[allow(dead_code)]
pub struct ModuleDoc {
  name: String,
  /// Lowercase hex sha256 of the module's bytes.
  sha256: String,
  size: u64,
}

/// One version in full: what `VersionInfo` has, plus its vars' names
/// (values may be sensitive to a reader of the list), limits and date.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VersionDetail {
  #[serde(flatten)]
  pub info: VersionInfo,
  pub vars: Vec<String>,
  #[schema(value_type = LimitsDoc)]
  pub limits: LimitsSpec,
  pub compatibility_date: Option<String>,
}

/// `LimitsSpec` as it serializes; unset limits are left out.
#[derive(utoipa::ToSchema)]
#[schema(as = Limits)]
#[allow(dead_code)]
pub struct LimitsDoc {
  cpu_ms: Option<u64>,
  wall_ms: Option<u64>,
  memory_mb: Option<u64>,
  subrequests: Option<u32>,
  request_body_bytes: Option<u64>,
  response_body_bytes: Option<u64>,
  scheduled_cpu_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WorkerInfo {
  pub name: String,
  pub created_at: Timestamp,
  pub active_deployment: Option<Deployment>,
}

impl Db {
  /// Stores a checked upload as a new version of `account`'s `worker`,
  /// creating the worker on its first upload. `modules` are in the
  /// manifest's order; their bytes must already be in the blob store.
  pub fn insert_version(
    &self,
    account: &str,
    worker: &str,
    manifest: &Manifest,
    modules: &[(String, Bytes)],
    message: Option<&str>,
  ) -> Result<VersionInfo> {
    let manifest_json = manifest.canonical_json();
    let stored: Manifest = serde_json::from_slice(&manifest_json)
      .map_err(|e| Error::Corrupt(format!("canonical manifest does not parse: {e}")))?;
    if stored.modules.len() != modules.len()
      || stored
        .modules
        .iter()
        .zip(modules)
        .any(|(m, (name, bytes))| m.name != *name || m.size != bytes.len() as u64)
    {
      return Err(Error::Invalid(
        "the modules do not match the manifest".to_string(),
      ));
    }
    let created_at = Timestamp::now();
    let id = uuid::Uuid::new_v4().to_string();
    let hash = manifest.version_id();
    self.write(|tx| {
      tx.execute(
        "INSERT INTO workers (account, name, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        params![account, worker, created_at.0],
      )?;
      tx.execute(
        "INSERT INTO versions (id, account, worker, hash, manifest, created_at, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
          id,
          account,
          worker,
          hash,
          manifest_json,
          created_at.0,
          message
        ],
      )?;
      Ok(())
    })?;
    Ok(VersionInfo {
      id,
      hash,
      worker: worker.to_string(),
      created_at,
      main_module: stored.main_module,
      modules: stored.modules,
      message: message.map(str::to_string),
    })
  }

  /// `account`'s workers by name, with their active deployments.
  pub fn workers(&self, account: &str) -> Result<Vec<WorkerInfo>> {
    let conn = self.conn();
    let mut stmt =
      conn.prepare("SELECT name, created_at FROM workers WHERE account = ?1 ORDER BY name")?;
    let rows = stmt
      .query_map([account], |row| Ok((row.get::<String>(0)?, row.get(1)?)))?
      .collect::<super::sql::Result<Vec<_>>>()?;
    rows
      .into_iter()
      .map(|(name, created_at)| {
        let active_deployment = active_deployment(&conn, account, &name)?;
        Ok(WorkerInfo {
          name,
          created_at: Timestamp(created_at),
          active_deployment,
        })
      })
      .collect()
  }

  /// Versions of a worker, newest first.
  pub fn versions(&self, account: &str, worker: &str) -> Result<Vec<VersionInfo>> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let mut stmt = conn.prepare(
      "SELECT id, hash, manifest, created_at, message FROM versions
       WHERE account = ?1 AND worker = ?2 ORDER BY created_at DESC, rowid DESC",
    )?;
    let rows = stmt
      .query_map([account, worker], StoredVersion::from_row)?
      .collect::<super::sql::Result<Vec<_>>>()?;
    rows
      .into_iter()
      .map(|row| Ok(row.into_detail(worker)?.info))
      .collect()
  }

  /// Version `id` of a worker.
  pub fn version(&self, account: &str, worker: &str, id: &str) -> Result<VersionDetail> {
    let conn = self.conn();
    require_worker(&conn, account, worker)?;
    let row = conn
      .query_row(
        "SELECT id, hash, manifest, created_at, message FROM versions
         WHERE account = ?1 AND worker = ?2 AND id = ?3",
        [account, worker, id],
        StoredVersion::from_row,
      )
      .optional()?;
    let Some(row) = row else {
      return Err(Error::NotFound(format!(
        "worker {worker:?} has no version {id:?}; GET /v1/workers/{worker}/versions lists them"
      )));
    };
    row.into_detail(worker)
  }
  /// The canonical manifest of the version with manifest hash `hash`, as
  /// stored and parsed.
  pub fn version_manifest(&self, hash: &str) -> Result<Option<(Vec<u8>, Manifest)>> {
    let manifest: Option<Vec<u8>> = self
      .conn()
      .query_row(
        "SELECT manifest FROM versions WHERE hash = ?1 LIMIT 1",
        [hash],
        |row| row.get(0),
      )
      .optional()?;
    manifest
      .map(|json| {
        let parsed = parse_manifest(hash, &json)?;
        Ok((json, parsed))
      })
      .transpose()
  }

  /// The keys of the module blobs older releases kept in this database.
  pub fn legacy_blob_keys(&self) -> Result<Vec<String>> {
    let conn = self.conn();
    let mut stmt = conn.prepare("SELECT sha256 FROM blobs ORDER BY sha256")?;
    let keys = stmt
      .query_map((), |row| row.get(0))?
      .collect::<super::sql::Result<Vec<String>>>()?;
    Ok(keys)
  }

  /// The bytes of legacy blob `sha256`, unchecked.
  pub fn legacy_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
    Ok(
      self
        .conn()
        .query_row(
          "SELECT bytes FROM blobs WHERE sha256 = ?1",
          [sha256],
          |row| row.get(0),
        )
        .optional()?,
    )
  }

  /// Deletes legacy blob `sha256`, once the blob store holds it.
  pub fn forget_legacy_blob(&self, sha256: &str) -> Result<()> {
    self.write(|tx| {
      tx.execute("DELETE FROM blobs WHERE sha256 = ?1", [sha256])?;
      Ok(())
    })
  }

  /// A blob as releases before the blob store kept it.
  #[cfg(test)]
  pub fn insert_legacy_blob(&self, sha256: &str, bytes: &[u8]) -> Result<()> {
    self.write(|tx| {
      tx.execute(
        "INSERT INTO blobs (sha256, bytes) VALUES (?1, ?2)",
        params![sha256, bytes],
      )?;
      Ok(())
    })
  }
}

/// A row of `versions`, as the list and the view read it.
struct StoredVersion {
  id: String,
  hash: String,
  manifest: Vec<u8>,
  created_at: i64,
  message: Option<String>,
}

impl StoredVersion {
  fn from_row(row: &super::sql::Row) -> super::sql::Result<Self> {
    Ok(Self {
      id: row.get(0)?,
      hash: row.get(1)?,
      manifest: row.get(2)?,
      created_at: row.get(3)?,
      message: row.get(4)?,
    })
  }

  fn into_detail(self, worker: &str) -> Result<VersionDetail> {
    let manifest = parse_manifest(&self.hash, &self.manifest)?;
    Ok(VersionDetail {
      info: VersionInfo {
        id: self.id,
        hash: self.hash,
        worker: worker.to_string(),
        created_at: Timestamp(self.created_at),
        main_module: manifest.main_module,
        modules: manifest.modules,
        message: self.message,
      },
      vars: manifest.vars.into_keys().collect(),
      limits: manifest.limits,
      compatibility_date: manifest.compatibility_date,
    })
  }
}

fn parse_manifest(hash: &str, json: &[u8]) -> Result<Manifest> {
  serde_json::from_slice(json)
    .map_err(|e| Error::Corrupt(format!("manifest of version {hash} does not parse: {e}")))
}
