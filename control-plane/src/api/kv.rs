//! KV's REST endpoints: namespaces, values (raw bodies, as Cloudflare's
//! API takes them), listings and bulk writes.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine as _;
use isola_proto::kv::check_key;
use isola_proto::kv::check_write;
use isola_proto::kv::KvEntry;
use isola_proto::kv::KvList;
use isola_proto::kv::MAX_BULK;
use isola_proto::kv::MAX_LIST_LIMIT;
use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::ToSchema;

use super::body;
use super::ApiError;
use super::AppState;
use super::Auth;
use crate::db;
use crate::kv::unix_now;

/// The header a value's metadata travels in (JSON), on writes and reads.
pub const METADATA_HEADER: &str = "isola-kv-metadata";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewNamespace {
  title: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct NamespaceList {
  namespaces: Vec<db::KvNamespace>,
}

#[utoipa::path(post, path = "/v1/kv/namespaces", tag = "kv", request_body = NewNamespace,
  responses((status = 201, description = "Created", body = db::KvNamespace),
            (status = 409, description = "The title is taken in this account", body = super::ErrorBody)))]
pub(super) async fn create_namespace(
  State(state): State<AppState>,
  Auth(caller): Auth,
  req: Result<Json<NewNamespace>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
  let NewNamespace { title } = body(req)?;
  if title.trim().is_empty() || title.len() > 512 {
    return Err(ApiError::invalid(
      "a namespace title is 1 to 512 bytes and not only spaces",
    ));
  }
  let ns = db::blocking(move || state.db.create_kv_namespace(&caller.account, &title)).await?;
  Ok((StatusCode::CREATED, Json(ns)))
}

#[utoipa::path(get, path = "/v1/kv/namespaces", tag = "kv",
  responses((status = 200, description = "The account's namespaces", body = NamespaceList)))]
pub(super) async fn list_namespaces(
  State(state): State<AppState>,
  Auth(caller): Auth,
) -> Result<Json<NamespaceList>, ApiError> {
  let namespaces = db::blocking(move || state.db.kv_namespaces(&caller.account)).await?;
  Ok(Json(NamespaceList { namespaces }))
}

#[utoipa::path(delete, path = "/v1/kv/namespaces/{id}", tag = "kv",
  params(("id" = String, Path, description = "Namespace id")),
  responses((status = 204, description = "Deleted with every value in it")))]
pub(super) async fn delete_namespace(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
  db::blocking(move || state.db.delete_kv_namespace(&caller.account, &id)).await?;
  Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
pub(super) struct WriteQuery {
  /// Absolute expiry, Unix seconds (at least 60 s ahead).
  expiration: Option<u64>,
  /// Expiry in seconds from now (at least 60).
  expiration_ttl: Option<u64>,
}

fn key_checked(key: &str) -> Result<(), ApiError> {
  check_key(key).map_err(|e| ApiError::invalid(e.0))
}

fn metadata_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
  let Some(value) = headers.get(METADATA_HEADER) else {
    return Ok(None);
  };
  let text = value
    .to_str()
    .map_err(|_| ApiError::invalid(format!("the {METADATA_HEADER} header is not text")))?;
  serde_json::from_str::<serde_json::Value>(text)
    .map_err(|e| ApiError::invalid(format!("the {METADATA_HEADER} header is not JSON: {e}")))?;
  Ok(Some(text.to_string()))
}

#[utoipa::path(put, path = "/v1/kv/namespaces/{id}/values/{key}", tag = "kv",
  params(("id" = String, Path, description = "Namespace id"),
         ("key" = String, Path, description = "The key, URL-encoded"), WriteQuery,
         ("isola-kv-metadata" = Option<String>, Header, description = "Metadata, JSON (≤ 1024 bytes)")),
  request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The value, raw (≤ 25 MiB)"),
  responses((status = 204, description = "Stored; edges see it within a second")))]
pub(super) async fn put_value(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path((id, key)): Path<(String, String)>,
  query: Result<Query<WriteQuery>, QueryRejection>,
  headers: HeaderMap,
  value: Bytes,
) -> Result<StatusCode, ApiError> {
  let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
  key_checked(&key)?;
  let metadata = metadata_of(&headers)?;
  let expiration = check_write(
    value.len(),
    metadata.as_deref(),
    q.expiration,
    q.expiration_ttl,
    unix_now(),
  )
  .map_err(|e| ApiError::invalid(e.0))?;
  state.kv.require(&caller.account, &id).await?;
  let entry = KvEntry {
    value: value.to_vec(),
    metadata,
    expiration,
  };
  state.kv.put(&id, vec![(key, entry)]).await?;
  Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/kv/namespaces/{id}/values/{key}", tag = "kv",
  params(("id" = String, Path, description = "Namespace id"), ("key" = String, Path, description = "The key, URL-encoded")),
  responses((status = 200, description = "The value, raw; its metadata in the `isola-kv-metadata` header and its expiry (Unix seconds) in `isola-kv-expiration`", body = Vec<u8>, content_type = "application/octet-stream"),
            (status = 404, description = "No such key", body = super::ErrorBody)))]
pub(super) async fn get_value(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path((id, key)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
  key_checked(&key)?;
  state.kv.require(&caller.account, &id).await?;
  let Some(entry) = state.kv.get(&id, &key).await? else {
    return Err(db::Error::NotFound(format!("no key {key:?} in KV namespace {id}")).into());
  };
  let mut headers = HeaderMap::new();
  headers.insert(
    axum::http::header::CONTENT_TYPE,
    axum::http::HeaderValue::from_static("application/octet-stream"),
  );
  if let Some(m) = entry.metadata.as_deref().and_then(|m| m.parse().ok()) {
    headers.insert(METADATA_HEADER, m);
  }
  if let Some(e) = entry.expiration {
    headers.insert("isola-kv-expiration", e.into());
  }
  Ok((headers, entry.value))
}

#[utoipa::path(delete, path = "/v1/kv/namespaces/{id}/values/{key}", tag = "kv",
  params(("id" = String, Path, description = "Namespace id"), ("key" = String, Path, description = "The key, URL-encoded")),
  responses((status = 204, description = "Deleted (or was not there)")))]
pub(super) async fn delete_value(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
  key_checked(&key)?;
  state.kv.require(&caller.account, &id).await?;
  state.kv.delete(&id, vec![key]).await?;
  Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
pub(super) struct ListQuery {
  prefix: Option<String>,
  /// 1 to 1000; default 1000.
  limit: Option<u32>,
  /// From the previous page.
  cursor: Option<String>,
}

/// A page of keys, as the binding's `list()` returns it.
#[derive(Serialize, ToSchema)]
pub(super) struct KeyPage {
  keys: Vec<KeyDoc>,
  list_complete: bool,
  #[serde(skip_serializing_if = "Option::is_none")]
  cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct KeyDoc {
  name: String,
  #[serde(skip_serializing_if = "Option::is_none")]
  expiration: Option<u64>,
  #[serde(skip_serializing_if = "Option::is_none")]
  metadata: Option<serde_json::Value>,
}

impl From<KvList> for KeyPage {
  fn from(list: KvList) -> Self {
    Self {
      keys: list
        .keys
        .into_iter()
        .map(|k| KeyDoc {
          name: k.name,
          expiration: k.expiration,
          metadata: k.metadata.and_then(|m| serde_json::from_str(&m).ok()),
        })
        .collect(),
      list_complete: list.list_complete,
      cursor: list.cursor,
    }
  }
}

#[utoipa::path(get, path = "/v1/kv/namespaces/{id}/keys", tag = "kv",
  params(("id" = String, Path, description = "Namespace id"), ListQuery),
  responses((status = 200, description = "Keys in UTF-8 byte order", body = KeyPage)))]
pub(super) async fn list_keys(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(id): Path<String>,
  query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
  let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
  let limit = q.limit.unwrap_or(MAX_LIST_LIMIT);
  if !(1..=MAX_LIST_LIMIT).contains(&limit) {
    return Err(ApiError::invalid(format!(
      "limit {limit} is out of range: use 1 to {MAX_LIST_LIMIT}"
    )));
  }
  state.kv.require(&caller.account, &id).await?;
  let list = state.kv.list(&id, q.prefix, limit, q.cursor).await?;
  Ok(Json(list.into()))
}

/// One pair of a bulk write (Cloudflare's shape).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkPair {
  key: String,
  /// Text, or base64 when `base64` is true.
  value: String,
  #[serde(default)]
  base64: bool,
  expiration: Option<u64>,
  expiration_ttl: Option<u64>,
  metadata: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct BulkDone {
  /// How many keys were written or deleted.
  count: usize,
}

#[utoipa::path(put, path = "/v1/kv/namespaces/{id}/bulk", tag = "kv",
  params(("id" = String, Path, description = "Namespace id")),
  request_body = Vec<BulkPair>,
  responses((status = 200, description = "All written, or none", body = BulkDone)))]
pub(super) async fn bulk_put(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(id): Path<String>,
  req: Result<Json<Vec<BulkPair>>, JsonRejection>,
) -> Result<Json<BulkDone>, ApiError> {
  let pairs = body(req)?;
  if pairs.len() > MAX_BULK {
    return Err(ApiError::invalid(format!(
      "{} pairs; at most {MAX_BULK} per request, split them",
      pairs.len()
    )));
  }
  let now = unix_now();
  let mut entries = Vec::with_capacity(pairs.len());
  for (i, p) in pairs.into_iter().enumerate() {
    let at = |m: String| ApiError::invalid(format!("[{i}] (key {:?}): {m}", p.key));
    check_key(&p.key).map_err(|e| at(e.0))?;
    let value = if p.base64 {
      base64::engine::general_purpose::STANDARD
        .decode(&p.value)
        .map_err(|e| at(format!("value is not base64: {e}")))?
    } else {
      p.value.clone().into_bytes()
    };
    let metadata = p.metadata.as_ref().map(|m| m.to_string());
    let expiration = check_write(
      value.len(),
      metadata.as_deref(),
      p.expiration,
      p.expiration_ttl,
      now,
    )
    .map_err(|e| at(e.0))?;
    entries.push((
      p.key,
      KvEntry {
        value,
        metadata,
        expiration,
      },
    ));
  }
  state.kv.require(&caller.account, &id).await?;
  let count = entries.len();
  state.kv.put(&id, entries).await?;
  Ok(Json(BulkDone { count }))
}

#[utoipa::path(post, path = "/v1/kv/namespaces/{id}/bulk/delete", tag = "kv",
  params(("id" = String, Path, description = "Namespace id")),
  request_body = Vec<String>,
  responses((status = 200, description = "Deleted", body = BulkDone)))]
pub(super) async fn bulk_delete(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(id): Path<String>,
  req: Result<Json<Vec<String>>, JsonRejection>,
) -> Result<Json<BulkDone>, ApiError> {
  let keys = body(req)?;
  if keys.len() > MAX_BULK {
    return Err(ApiError::invalid(format!(
      "{} keys; at most {MAX_BULK} per request, split them",
      keys.len()
    )));
  }
  for (i, k) in keys.iter().enumerate() {
    check_key(k).map_err(|e| ApiError::invalid(format!("[{i}]: {}", e.0)))?;
  }
  state.kv.require(&caller.account, &id).await?;
  let count = keys.len();
  state.kv.delete(&id, keys).await?;
  Ok(Json(BulkDone { count }))
}
