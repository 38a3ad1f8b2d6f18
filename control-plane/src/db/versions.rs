//! Workers and their uploaded versions: immutable manifests plus module
//! blobs stored once per content hash.

use bytes::Bytes;
use isola_proto::manifest::Manifest;
use isola_proto::manifest::ModuleRef;
use isola_proto::msg::VersionBundle;
use rusqlite::params;
use rusqlite::OptionalExtension as _;
use serde::Serialize;

use super::deployments::active_deployment;
use super::require_worker;
use super::Db;
use super::Deployment;
use super::Error;
use super::Result;
use super::Timestamp;

#[derive(Clone, Debug, Serialize)]
pub struct VersionInfo {
  pub id: String,
  pub hash: String,
  pub worker: String,
  pub created_at: Timestamp,
  pub main_module: String,
  pub modules: Vec<ModuleRef>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerInfo {
  pub name: String,
  pub created_at: Timestamp,
  pub active_deployment: Option<Deployment>,
}

impl Db {
  /// Stores a checked upload as a new version of `account`'s `worker`,
  /// creating the worker on its first upload. `modules` are in the
  /// manifest's order.
  pub fn insert_version(
    &self,
    account: &str,
    worker: &str,
    manifest: &Manifest,
    modules: &[(String, Bytes)],
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
        "INSERT OR IGNORE INTO workers (account, name, created_at) VALUES (?1, ?2, ?3)",
        params![account, worker, created_at.0],
      )?;
      for (module, (_, bytes)) in stored.modules.iter().zip(modules) {
        let have: bool = tx.query_row(
          "SELECT EXISTS (SELECT 1 FROM blobs WHERE sha256 = ?1)",
          [&module.sha256],
          |row| row.get(0),
        )?;
        if !have {
          tx.execute(
            "INSERT INTO blobs (sha256, bytes) VALUES (?1, ?2)",
            params![module.sha256, bytes.as_ref()],
          )?;
        }
      }
      tx.execute(
        "INSERT INTO versions (id, account, worker, hash, manifest, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, account, worker, hash, manifest_json, created_at.0],
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
    })
  }

  /// `account`'s workers by name, with their active deployments.
  pub fn workers(&self, account: &str) -> Result<Vec<WorkerInfo>> {
    let conn = self.conn();
    let mut stmt =
      conn.prepare("SELECT name, created_at FROM workers WHERE account = ?1 ORDER BY name")?;
    let rows = stmt
      .query_map([account], |row| Ok((row.get::<_, String>(0)?, row.get(1)?)))?
      .collect::<rusqlite::Result<Vec<_>>>()?;
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
      "SELECT id, hash, manifest, created_at FROM versions
       WHERE account = ?1 AND worker = ?2 ORDER BY created_at DESC, rowid DESC",
    )?;
    let rows = stmt
      .query_map([account, worker], |row| {
        Ok((
          row.get::<_, String>(0)?,
          row.get::<_, String>(1)?,
          row.get::<_, Vec<u8>>(2)?,
          row.get::<_, i64>(3)?,
        ))
      })?
      .collect::<rusqlite::Result<Vec<_>>>()?;
    rows
      .into_iter()
      .map(|(id, hash, manifest, created_at)| {
        let manifest = parse_manifest(&hash, &manifest)?;
        Ok(VersionInfo {
          id,
          hash,
          worker: worker.to_string(),
          created_at: Timestamp(created_at),
          main_module: manifest.main_module,
          modules: manifest.modules,
        })
      })
      .collect()
  }
  /// The canonical manifest and module bytes (in manifest order) of the
  /// version with manifest hash `hash`.
  pub fn bundle(&self, hash: &str) -> Result<Option<VersionBundle>> {
    let conn = self.conn();
    let manifest: Option<Vec<u8>> = conn
      .query_row(
        "SELECT manifest FROM versions WHERE hash = ?1 LIMIT 1",
        [hash],
        |row| row.get(0),
      )
      .optional()?;
    let Some(manifest_json) = manifest else {
      return Ok(None);
    };
    let manifest = parse_manifest(hash, &manifest_json)?;
    let mut stmt = conn.prepare("SELECT bytes FROM blobs WHERE sha256 = ?1")?;
    let mut modules = Vec::with_capacity(manifest.modules.len());
    for module in &manifest.modules {
      let bytes: Option<Vec<u8>> = stmt
        .query_row([&module.sha256], |row| row.get(0))
        .optional()?;
      let bytes = bytes.ok_or_else(|| {
        Error::Corrupt(format!(
          "blob {} of module {} of version {hash} is missing",
          module.sha256, module.name
        ))
      })?;
      modules.push(serde_bytes::ByteBuf::from(bytes));
    }
    Ok(Some(VersionBundle {
      manifest: manifest_json,
      modules,
    }))
  }
}

fn parse_manifest(hash: &str, json: &[u8]) -> Result<Manifest> {
  serde_json::from_slice(json)
    .map_err(|e| Error::Corrupt(format!("manifest of version {hash} does not parse: {e}")))
}
