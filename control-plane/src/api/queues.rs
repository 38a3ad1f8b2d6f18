//! Queues' REST endpoints: queues, their consumer, and sending from
//! outside the platform (an external event firing a trigger).

use axum::extract::rejection::JsonRejection;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine as _;
use isola_proto::queue::check_send;
use isola_proto::queue::ContentType;
use isola_proto::queue::NewMessage;
use isola_proto::queue::DEFAULT_BATCH_SIZE;
use isola_proto::queue::DEFAULT_BATCH_TIMEOUT_SECONDS;
use isola_proto::queue::DEFAULT_MAX_RETRIES;
use isola_proto::queue::MAX_BATCH_SIZE;
use isola_proto::queue::MAX_BATCH_TIMEOUT_SECONDS;
use isola_proto::queue::MAX_DELAY_SECONDS;
use isola_proto::queue::MAX_RETRIES;
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use super::body;
use super::ApiError;
use super::AppState;
use super::Auth;
use crate::db;
use crate::db::blocking;

/// Queue names: 1 to 63 of a-z, 0-9, '-' and '_' (they appear in configs
/// and URLs).
fn check_name(name: &str) -> Result<(), ApiError> {
  let ok = !name.is_empty()
    && name.len() <= 63
    && name
      .bytes()
      .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
  if ok {
    Ok(())
  } else {
    Err(ApiError::invalid(format!(
      "invalid queue name {name:?}: use 1 to 63 characters of a-z, 0-9, '-' and '_'"
    )))
  }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewQueue {
  name: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct QueueList {
  queues: Vec<db::QueueInfo>,
}

#[utoipa::path(post, path = "/v1/queues", tag = "queues", request_body = NewQueue,
  responses((status = 201, description = "Created", body = db::QueueInfo),
            (status = 409, description = "The name is taken in this account", body = super::ErrorBody)))]
pub(super) async fn create_queue(
  State(state): State<AppState>,
  Auth(caller): Auth,
  req: Result<Json<NewQueue>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
  let NewQueue { name } = body(req)?;
  check_name(&name)?;
  let info = blocking(move || state.db.create_queue(&caller.account, &name)).await?;
  Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(get, path = "/v1/queues", tag = "queues",
  responses((status = 200, description = "The account's queues with their counts", body = QueueList)))]
pub(super) async fn list_queues(
  State(state): State<AppState>,
  Auth(caller): Auth,
) -> Result<Json<QueueList>, ApiError> {
  let now = state.queues.clock().now();
  let queues = blocking(move || state.db.list_queues(&caller.account, now)).await?;
  Ok(Json(QueueList { queues }))
}

#[utoipa::path(get, path = "/v1/queues/{name}", tag = "queues",
  params(("name" = String, Path, description = "Queue name")),
  responses((status = 200, description = "Backlog, in flight, delivered, retried, dead-lettered, dropped", body = db::QueueInfo)))]
pub(super) async fn get_queue(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<Json<db::QueueInfo>, ApiError> {
  let now = state.queues.clock().now();
  let info = blocking(move || state.db.queue_info(&caller.account, &name, now)).await?;
  Ok(Json(info))
}

#[utoipa::path(delete, path = "/v1/queues/{name}", tag = "queues",
  params(("name" = String, Path, description = "Queue name")),
  responses((status = 204, description = "Deleted with its messages"),
            (status = 409, description = "It is another queue's dead-letter queue", body = super::ErrorBody)))]
pub(super) async fn delete_queue(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
  let queues = state.queues.clone();
  blocking(move || state.db.delete_queue(&caller.account, &name)).await?;
  queues.reload();
  Ok(StatusCode::NO_CONTENT)
}

/// A consumer's settings; unset fields take Cloudflare's defaults.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewConsumer {
  /// The consumer worker, in this account; it needs a `queue` handler.
  worker: String,
  /// 1 to 100; default 10.
  max_batch_size: Option<u32>,
  /// Seconds, 0 to 60; default 5.
  max_batch_timeout: Option<u32>,
  /// 0 to 100; default 3.
  max_retries: Option<u32>,
  dead_letter_queue: Option<String>,
  /// Seconds, up to 12 hours; default 0.
  retry_delay: Option<u32>,
}

#[utoipa::path(put, path = "/v1/queues/{name}/consumer", tag = "queues",
  params(("name" = String, Path, description = "Queue name")),
  request_body = NewConsumer,
  responses((status = 200, description = "The consumer now", body = db::ConsumerSettings)))]
pub(super) async fn put_consumer(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  req: Result<Json<NewConsumer>, JsonRejection>,
) -> Result<Json<db::ConsumerSettings>, ApiError> {
  let c = body(req)?;
  let range = |field: &str, value: u32, min: u32, max: u32| {
    if (min..=max).contains(&value) {
      Ok(value)
    } else {
      Err(ApiError::invalid(format!(
        "{field} is {value}; use {min} to {max}"
      )))
    }
  };
  let settings = db::ConsumerSettings {
    worker: c.worker,
    max_batch_size: range(
      "max_batch_size",
      c.max_batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
      1,
      MAX_BATCH_SIZE,
    )?,
    max_batch_timeout: range(
      "max_batch_timeout",
      c.max_batch_timeout.unwrap_or(DEFAULT_BATCH_TIMEOUT_SECONDS),
      0,
      MAX_BATCH_TIMEOUT_SECONDS,
    )?,
    max_retries: range(
      "max_retries",
      c.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
      0,
      MAX_RETRIES,
    )?,
    dead_letter_queue: c.dead_letter_queue,
    retry_delay: range(
      "retry_delay",
      c.retry_delay.unwrap_or(0),
      0,
      MAX_DELAY_SECONDS as u32,
    )?,
  };
  let queues = state.queues.clone();
  let out = settings.clone();
  blocking(move || {
    state
      .db
      .set_consumer(&caller.account, &name, Some(&settings))
  })
  .await?;
  queues.reload();
  Ok(Json(out))
}

#[utoipa::path(delete, path = "/v1/queues/{name}/consumer", tag = "queues",
  params(("name" = String, Path, description = "Queue name")),
  responses((status = 204, description = "No consumer; messages wait")))]
pub(super) async fn delete_consumer(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
  let queues = state.queues.clone();
  blocking(move || state.db.set_consumer(&caller.account, &name, None)).await?;
  queues.reload();
  Ok(StatusCode::NO_CONTENT)
}

/// One message sent from outside (Cloudflare's REST shape).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OutsideMessage {
  /// For `json`, any JSON value; for `text`, a string; for `bytes`, base64.
  #[schema(value_type = Object)]
  body: serde_json::Value,
  /// `json` (default), `text` or `bytes`.
  content_type: Option<String>,
  delay_seconds: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OutsideBatch {
  messages: Vec<OutsideMessage>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct Sent {
  /// The stored messages' ids.
  ids: Vec<String>,
}

fn to_message(i: usize, m: OutsideMessage) -> Result<NewMessage, ApiError> {
  let at = |e: String| ApiError::invalid(format!("messages[{i}]: {e}"));
  let kind = m.content_type.as_deref().unwrap_or("json");
  let content_type = ContentType::parse(kind)
    .filter(|c| *c != ContentType::V8)
    .ok_or_else(|| at(format!("content_type {kind:?}: use json, text or bytes")))?;
  let body = match (content_type, m.body) {
    (ContentType::Json, v) => v.to_string().into_bytes(),
    (ContentType::Text, serde_json::Value::String(s)) => s.into_bytes(),
    (ContentType::Bytes, serde_json::Value::String(s)) => base64::engine::general_purpose::STANDARD
      .decode(s)
      .map_err(|e| at(format!("body is not base64: {e}")))?,
    (c, _) => return Err(at(format!("a {} body must be a string", c.as_str()))),
  };
  if m.delay_seconds.is_some_and(|d| d > MAX_DELAY_SECONDS) {
    return Err(at(format!(
      "delay_seconds is more than {MAX_DELAY_SECONDS} (12 hours)"
    )));
  }
  Ok(NewMessage {
    body,
    content_type,
    delay_seconds: m.delay_seconds.unwrap_or(0),
  })
}

async fn send(
  state: AppState,
  account: &str,
  name: &str,
  messages: Vec<NewMessage>,
) -> Result<(StatusCode, Json<Sent>), ApiError> {
  check_send(&messages).map_err(|e| ApiError::invalid(e.0))?;
  let with_ids: Vec<(String, NewMessage)> = messages
    .into_iter()
    .map(|m| (uuid::Uuid::new_v4().simple().to_string(), m))
    .collect();
  let ids = with_ids.iter().map(|(id, _)| id.clone()).collect();
  state.queues.send(account, name, with_ids).await?;
  Ok((StatusCode::CREATED, Json(Sent { ids })))
}

#[utoipa::path(post, path = "/v1/queues/{name}/messages", tag = "queues",
  params(("name" = String, Path, description = "Queue name")),
  request_body = OutsideMessage,
  responses((status = 201, description = "Stored durably", body = Sent)))]
pub(super) async fn send_message(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  req: Result<Json<OutsideMessage>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
  let message = to_message(0, body(req)?)?;
  send(state, &caller.account, &name, vec![message]).await
}

#[utoipa::path(post, path = "/v1/queues/{name}/messages/batch", tag = "queues",
  params(("name" = String, Path, description = "Queue name")),
  request_body = OutsideBatch,
  responses((status = 201, description = "All stored durably, or none", body = Sent)))]
pub(super) async fn send_batch(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  req: Result<Json<OutsideBatch>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
  let messages = body(req)?
    .messages
    .into_iter()
    .enumerate()
    .map(|(i, m)| to_message(i, m))
    .collect::<Result<Vec<_>, _>>()?;
  send(state, &caller.account, &name, messages).await
}
