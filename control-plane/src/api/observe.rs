//! Watching a worker: live tail (WebSocket), invocation logs, analytics,
//! observability settings, and the control plane's Prometheus metrics.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::CloseFrame;
use axum::extract::ws::Message;
use axum::extract::ws::WebSocket;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::FromRequestParts;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use isola_proto::names::edge_worker_name;
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use super::body;
use super::parse_time;
use super::require_admin;
use super::ApiError;
use super::AppState;
use super::Auth;
use crate::db;
use crate::db::blocking;
use crate::db::Caller;
use crate::db::Timestamp;
use crate::observe::analytics::Bucket;
use crate::observe::analytics::Grid;
use crate::observe::analytics::RELATIVE_ERROR;
use crate::observe::filter::LogQuery;
use crate::observe::filter::TailFilter;
use crate::observe::message::TailMessage;
use crate::observe::now_ms;
use crate::observe::Tail;

/// Logs one page holds unless `limit` says otherwise.
pub const DEFAULT_LOG_LIMIT: usize = 100;
/// Most logs one page holds.
pub const MAX_LOG_LIMIT: usize = 1000;

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn pairs(query: Pairs) -> Result<Vec<(String, String)>, ApiError> {
  query
    .map(|Query(pairs)| pairs)
    .map_err(|e| ApiError::invalid(e.body_text()))
}

/// Version ids or hashes as the hashes edges report.
async fn version_hashes(
  state: &AppState,
  caller: &Caller,
  worker: &str,
  versions: Vec<String>,
) -> Result<Vec<String>, ApiError> {
  let (db, account, worker) = (state.db.clone(), caller.account.clone(), worker.to_string());
  Ok(
    blocking(move || {
      db.worker_exists(&account, &worker)?
        .then_some(())
        .ok_or_else(|| {
          db::Error::NotFound(format!("no worker named {worker:?} in this account"))
        })?;
      versions
        .iter()
        .map(|v| db.version_hash(&account, &worker, v))
        .collect::<db::Result<Vec<_>>>()
    })
    .await?,
  )
}

// Settings.

/// A change of settings; what is left out stays as it is.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ObservabilityChange {
  /// Share of invocations whose logs are kept, in (0, 1]; default 1.
  head_sampling_rate: Option<f64>,
  /// Days logs are kept, 1 to 90; default 7.
  retention_days: Option<u32>,
}

#[utoipa::path(get, path = "/v1/workers/{name}/observability", tag = "observability",
  params(("name" = String, Path, description = "Worker name")),
  responses((status = 200, description = "The worker's log settings", body = db::Observability)))]
pub(super) async fn get_observability(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<Json<db::Observability>, ApiError> {
  Ok(Json(
    blocking(move || state.db.observability(&caller.account, &name)).await?,
  ))
}

#[utoipa::path(put, path = "/v1/workers/{name}/observability", tag = "observability",
  params(("name" = String, Path, description = "Worker name")),
  request_body = ObservabilityChange,
  responses((status = 200, description = "The settings now", body = db::Observability)))]
pub(super) async fn put_observability(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  req: Result<Json<ObservabilityChange>, JsonRejection>,
) -> Result<Json<db::Observability>, ApiError> {
  let change = body(req)?;
  let settings = blocking(move || {
    let mut settings = state.db.observability(&caller.account, &name)?;
    if let Some(rate) = change.head_sampling_rate {
      settings.head_sampling_rate = rate;
    }
    if let Some(days) = change.retention_days {
      settings.retention_days = days;
    }
    state
      .db
      .set_observability(&caller.account, &name, &settings)?;
    Ok::<_, db::Error>(settings)
  })
  .await?;
  Ok(Json(settings))
}

// Logs.

/// For the document only: the handler reads the pairs itself, since
/// `status` and `version` may repeat.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct LogParams {
  /// Unix seconds or RFC 3339; invocations that started at or after it.
  since: Option<String>,
  /// Unix seconds or RFC 3339; invocations that started before it.
  until: Option<String>,
  /// `ok`, `error` (any failure) or `canceled`; may repeat.
  status: Option<Vec<String>>,
  /// A version id or hash; may repeat.
  version: Option<Vec<String>>,
  /// Text found in a log line, an exception or the URL (case-sensitive).
  search: Option<String>,
  /// 1 to 1000; default 100.
  limit: Option<usize>,
  /// The `cursor` of the previous page.
  cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct LogList {
  /// Newest first, shaped like tail's messages.
  logs: Vec<TailMessage>,
  /// Pass as `cursor` for the next page; absent on the last page.
  #[serde(skip_serializing_if = "Option::is_none")]
  cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/workers/{name}/logs", tag = "observability",
  params(("name" = String, Path, description = "Worker name"), LogParams),
  responses((status = 200, description = "Invocation logs kept (at the head sampling rate)", body = LogList)))]
pub(super) async fn logs(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  query: Pairs,
) -> Result<Response, ApiError> {
  let q = LogQuery::from_pairs(&pairs(query)?).map_err(ApiError::invalid)?;
  let ms = |field: &str, v: &Option<String>| {
    v.as_deref()
      .map(|v| parse_time(field, v).map(|s| s.saturating_mul(1000)))
      .transpose()
  };
  let limit = match &q.limit {
    None => DEFAULT_LOG_LIMIT,
    Some(l) => match l.parse::<usize>() {
      Ok(n) if (1..=MAX_LOG_LIMIT).contains(&n) => n,
      _ => {
        return Err(ApiError::invalid(format!(
          "limit={l:?} is not a number from 1 to {MAX_LOG_LIMIT}"
        )))
      }
    },
  };
  let filter = db::LogFilter {
    since: ms("since", &q.since)?,
    until: ms("until", &q.until)?,
    status: q.status,
    version: version_hashes(&state, &caller, &name, q.version).await?,
    search: q.search,
    limit,
    cursor: q.cursor,
  };
  let page = blocking(move || state.db.logs(&caller.account, &name, &filter)).await?;
  // The stored messages go out as stored.
  let mut out = serde_json::json!({ "logs": page.logs });
  if let Some(cursor) = page.cursor {
    out["cursor"] = cursor.into();
  }
  Ok(Json(out).into_response())
}

// Analytics.

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AnalyticsParams {
  /// Unix seconds or RFC 3339; default an hour before `until`. Goes back
  /// to its minute.
  since: Option<String>,
  /// Unix seconds or RFC 3339; default now.
  until: Option<String>,
  /// Bucket width in seconds, a multiple of 60; default 60. At most 1440
  /// buckets.
  step: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct AnalyticsView {
  worker: String,
  since: Timestamp,
  until: Timestamp,
  step: i64,
  /// The quantiles' relative error (DDSketch's α): a p99 of 20 ms is the
  /// true p99 of the events received within 1 %.
  quantile_relative_error: f64,
  buckets: Vec<Bucket>,
}

#[utoipa::path(get, path = "/v1/workers/{name}/analytics", tag = "observability",
  params(("name" = String, Path, description = "Worker name"), AnalyticsParams),
  responses((status = 200, description = "Time buckets, overall and per version", body = AnalyticsView)))]
pub(super) async fn analytics(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  query: Result<Query<AnalyticsParams>, QueryRejection>,
) -> Result<Json<AnalyticsView>, ApiError> {
  let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
  let until = match &q.until {
    Some(v) => parse_time("until", v)?,
    None => now_ms() / 1000 + 1,
  };
  let since = match &q.since {
    Some(v) => parse_time("since", v)?,
    None => until - 3600,
  };
  let step = q.step.unwrap_or(60);
  let grid = Grid::new(since, until, step).map_err(ApiError::invalid)?;
  let buckets = blocking({
    let name = name.clone();
    move || state.db.analytics(&caller.account, &name, grid)
  })
  .await?;
  Ok(Json(AnalyticsView {
    worker: name,
    since: Timestamp(grid.since),
    until: Timestamp(grid.until()),
    step,
    quantile_relative_error: RELATIVE_ERROR,
    buckets,
  }))
}

// Live tail.

/// For the document only: the handler reads the pairs itself, since most
/// filters may repeat.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct TailParams {
  /// `ok`, `error` (exception, exceeded*, unknown) or `canceled`; may repeat.
  status: Option<Vec<String>>,
  /// HTTP method of fetch events; may repeat.
  method: Option<Vec<String>>,
  /// `name:value` a fetch event's request header must have; may repeat
  /// (all must match).
  header: Option<Vec<String>>,
  /// The client's IP address; may repeat.
  client_ip: Option<Vec<String>>,
  /// Text found in a log line, an exception or the URL (case-sensitive).
  search: Option<String>,
  /// Share of matching events sent, in (0, 1]; default 1.
  sampling_rate: Option<f64>,
  /// A version id or hash; may repeat.
  version: Option<Vec<String>>,
}

/// Close code of a tail cut off for reading too slowly (policy violation).
pub const SLOW_TAIL_CLOSE_CODE: u16 = 1008;

#[utoipa::path(get, path = "/v1/workers/{name}/tail", tag = "observability",
  params(("name" = String, Path, description = "Worker name"), TailParams),
  responses(
    (status = 101, description = "A WebSocket: one text message per invocation, a JSON \
      object shaped like wrangler tail's. A client that reads too slowly is closed with code \
      1008 and a reason. A client that cannot set `Authorization` (a browser) offers the \
      subprotocols `isola.tail` and `isola.bearer.TOKEN` instead; the answer selects \
      `isola.tail`.", body = TailMessage),
  ))]
pub(super) async fn tail(
  State(state): State<AppState>,
  TailAuth(caller): TailAuth,
  Path(name): Path<String>,
  query: Pairs,
  ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
  let mut filter = TailFilter::from_pairs(&pairs(query)?).map_err(ApiError::invalid)?;
  filter.version =
    version_hashes(&state, &caller, &name, std::mem::take(&mut filter.version)).await?;
  let ws = ws.map_err(|e| {
    ApiError::invalid(format!(
      "{}; open the tail as a WebSocket (e.g. `isola tail`, or any WebSocket client)",
      e.body_text()
    ))
  })?;
  // Open before answering, so every event after the handshake is seen.
  let tail = state
    .traces
    .tail(&edge_worker_name(&caller.account, &name), filter);
  tracing::debug!(account = %caller.account, worker = %name, "tail opened");
  // Browsers must see one of the protocols they offered selected; the
  // bearer one is never echoed.
  Ok(
    ws.protocols([TAIL_PROTOCOL])
      .on_upgrade(move |socket| run_tail(socket, tail)),
  )
}

/// The WebSocket subprotocol a tail answers with when the client offers it
/// (browsers, which cannot set `Authorization` on a WebSocket, offer it
/// beside their token; see [`TailAuth`]).
pub const TAIL_PROTOCOL: &str = "isola.tail";

/// Prefix of the subprotocol that carries a token: `isola.bearer.TOKEN`.
pub const BEARER_PROTOCOL_PREFIX: &str = "isola.bearer.";

/// The caller of a tail: from `Authorization: Bearer TOKEN` like every
/// endpoint, or, without that header, from a `Sec-WebSocket-Protocol` entry
/// `isola.bearer.TOKEN` (offered with `isola.tail`), since a browser's
/// `WebSocket` can set no other header.
pub(super) struct TailAuth(Caller);

impl FromRequestParts<AppState> for TailAuth {
  type Rejection = ApiError;

  async fn from_request_parts(
    parts: &mut axum::http::request::Parts,
    state: &AppState,
  ) -> Result<Self, ApiError> {
    if parts
      .headers
      .contains_key(axum::http::header::AUTHORIZATION)
    {
      return Auth::from_request_parts(parts, state)
        .await
        .map(|Auth(caller)| Self(caller));
    }
    let token = parts
      .headers
      .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
      .iter()
      .filter_map(|v| v.to_str().ok())
      .flat_map(|v| v.split(','))
      .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL_PREFIX))
      .filter(|t| !t.is_empty())
      .map(str::to_string);
    match token {
      Some(token) => super::authenticate(state, token).await.map(Self),
      // Answers as every endpoint does without a token.
      None => Auth::from_request_parts(parts, state)
        .await
        .map(|Auth(caller)| Self(caller)),
    }
  }
}

async fn run_tail(mut socket: WebSocket, mut tail: Tail) {
  loop {
    tokio::select! {
      message = tail.receiver.rx.recv() => {
        let Some(json) = message.filter(|_| !tail.receiver.was_cut_off()) else {
          break;
        };
        if socket.send(Message::Text(json.as_ref().into())).await.is_err() {
          return;
        }
      }
      incoming = socket.recv() => match incoming {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
        Some(Ok(_)) => {}
      },
    }
  }
  // Cut off: say why, but do not wait long on a client that does not read.
  let close = Message::Close(Some(CloseFrame {
    code: SLOW_TAIL_CLOSE_CODE,
    reason: format!(
      "tail closed: the client fell {} events behind; reconnect, or filter or sample more",
      crate::observe::TAIL_QUEUE
    )
    .into(),
  }));
  let _ = tokio::time::timeout(Duration::from_secs(5), socket.send(close)).await;
}

// Metrics.

#[utoipa::path(get, path = "/metrics", tag = "meta",
  responses(
    (status = 200, description = "Prometheus text: trace events received and dropped, tails, \
      and per-worker invocations, CPU and wall time, requests, subrequests and egress",
      content_type = "text/plain"),
    (status = 403, description = "Needs an admin token", body = super::ErrorBody),
  ))]
pub(super) async fn metrics(
  State(state): State<AppState>,
  Auth(caller): Auth,
) -> Result<Response, ApiError> {
  require_admin(&caller)?;
  Ok(
    (
      [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
      state.traces.metrics(),
    )
      .into_response(),
  )
}
