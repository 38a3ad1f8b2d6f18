//! Guard rails on the API: limit ceilings per account, a rate limit per
//! token, and the audit log of every change.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use axum::extract::ConnectInfo;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::Request;
use axum::extract::State;
use axum::http::Method;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use governor::clock::Clock as _;
use governor::clock::DefaultClock;
use governor::DefaultKeyedRateLimiter;
use governor::Quota;
use isola_proto::manifest::LimitsSpec;
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use super::body as json_body;
use super::parse_time;
use super::require_admin;
use super::ApiError;
use super::AppState;
use super::Auth;
use crate::db;
use crate::db::blocking;
use crate::db::Caller;

/// Requests per token: a steady rate and a burst. Defaults: 100/s, 500.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
  pub per_second: u32,
  pub burst: u32,
}

impl Default for RateLimit {
  fn default() -> Self {
    Self {
      per_second: 100,
      burst: 500,
    }
  }
}

/// Counts each token's requests (in this process).
pub(crate) struct Limiter {
  limiter: DefaultKeyedRateLimiter<String>,
  clock: DefaultClock,
}

impl Limiter {
  pub(crate) fn new(rate: RateLimit) -> Self {
    let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(per_second);
    Self {
      limiter: governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
      clock: DefaultClock::default(),
    }
  }

  /// Takes one request of `caller`'s allowance, or says when to retry.
  pub(crate) fn check(&self, caller: &Caller) -> Result<(), ApiError> {
    // Keys are tokens that authenticated, so the map stays as small as the
    // token table; forget idle ones now and then all the same.
    if self.limiter.len() > 10_000 {
      self.limiter.retain_recent();
    }
    self.limiter.check_key(&caller.token).map_err(|not_until| {
      let wait = not_until.wait_time_from(self.clock.now());
      let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
      let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
          "this token sent more requests than its rate limit allows; retry in {seconds} s \
           (the operator sets the limit in control.toml's [rate_limit])"
        ),
      );
      error.retry_after = Some(seconds.max(1));
      error
    })
  }
}

/// Where [`Auth`] leaves the caller of a request the audit layer watches.
#[derive(Clone, Default)]
pub(crate) struct AuditSlot(Arc<Mutex<Option<Caller>>>);

impl AuditSlot {
  pub(crate) fn fill(&self, caller: &Caller) {
    *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(caller.clone());
  }

  fn take(&self) -> Option<Caller> {
    self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
  }
}

/// Keeps every authenticated request that can change something (any
/// method but GET, HEAD, OPTIONS) in the audit log, with its answer's
/// status, before the answer leaves.
pub(crate) async fn audit(
  State(state): State<AppState>,
  mut request: Request,
  next: Next,
) -> Response {
  if matches!(
    *request.method(),
    Method::GET | Method::HEAD | Method::OPTIONS
  ) {
    return next.run(request).await;
  }
  let slot = AuditSlot::default();
  request.extensions_mut().insert(slot.clone());
  let method = request.method().to_string();
  let path = request.uri().path().to_string();
  let client = request
    .extensions()
    .get::<ConnectInfo<SocketAddr>>()
    .map(|ConnectInfo(addr)| addr.to_string());
  let response = next.run(request).await;
  if let Some(caller) = slot.take() {
    let entry = db::AuditEntry {
      id: 0,
      at: db::Timestamp::now(),
      account: caller.account,
      admin: caller.admin,
      token: caller.token,
      method,
      path,
      status: response.status().as_u16(),
      client,
    };
    let db = state.db.clone();
    if let Err(e) = blocking(move || db.record_audit(&entry)).await {
      tracing::error!(error = ?e, "cannot write the audit log");
    }
  }
  response
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
  /// Unix seconds or RFC 3339.
  since: Option<String>,
  until: Option<String>,
  account: Option<String>,
  /// At most 1,000. Default: 100.
  limit: Option<u32>,
  /// The `cursor` of the previous page.
  cursor: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AuditPage {
  /// Newest first.
  entries: Vec<db::AuditEntry>,
  /// Pass as `cursor` for older entries; absent on the last page.
  #[serde(skip_serializing_if = "Option::is_none")]
  cursor: Option<i64>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "accounts",
  params(("since" = Option<String>, Query, description = "Unix seconds or RFC 3339"),
         ("until" = Option<String>, Query, description = "Unix seconds or RFC 3339"),
         ("account" = Option<String>, Query, description = "Only this account's changes"),
         ("limit" = Option<u32>, Query, description = "At most 1,000; default 100"),
         ("cursor" = Option<i64>, Query, description = "The previous page's cursor")),
  responses((status = 200, description = "Changes, newest first", body = AuditPage),
            (status = 403, description = "Needs an admin token", body = super::ErrorBody)))]
pub(crate) async fn list_audit(
  State(state): State<AppState>,
  Auth(caller): Auth,
  query: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
  require_admin(&caller)?;
  let Query(p) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
  let limit = p.limit.unwrap_or(100);
  if !(1..=1000).contains(&limit) {
    return Err(ApiError::invalid(format!(
      "limit is {limit}; ask for 1 to 1000 entries"
    )));
  }
  let q = db::AuditQuery {
    since: p
      .since
      .as_deref()
      .map(|v| parse_time("since", v))
      .transpose()?,
    until: p
      .until
      .as_deref()
      .map(|v| parse_time("until", v))
      .transpose()?,
    account: p.account,
    before: p.cursor,
    limit,
  };
  let entries = blocking(move || state.db.audit(&q)).await?;
  let cursor = (entries.len() == limit as usize)
    .then(|| entries.last().map(|e| e.id))
    .flatten();
  Ok(Json(AuditPage { entries, cursor }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AccountLimits {
  account: String,
  /// What the account's uploads may set: the admin's ceilings where set,
  /// the operator's defaults otherwise.
  #[schema(value_type = Object)]
  ceilings: LimitsSpec,
  /// The ceilings an admin set for this account, if any.
  #[schema(value_type = Option<Object>)]
  custom: Option<LimitsSpec>,
}

/// An account's ceilings: the operator's defaults overlaid by its own.
pub(crate) async fn ceilings_of(state: &AppState, account: &str) -> Result<LimitsSpec, ApiError> {
  Ok(account_limits(state, account.to_string()).await?.ceilings)
}

/// A version whose limits pass an account's ceilings, or a 400 naming each
/// one it passes.
pub(crate) fn check_ceilings(
  account: &str,
  limits: &LimitsSpec,
  ceilings: &LimitsSpec,
) -> Result<(), ApiError> {
  let above = limits.above(ceilings);
  if above.is_empty() {
    return Ok(());
  }
  let list = above
    .iter()
    .map(|(name, value, max)| format!("limits.{name} is {value}, above the ceiling of {max}"))
    .collect::<Vec<_>>()
    .join("; ");
  Err(ApiError::invalid(format!(
    "invalid metadata: {list} for account {account:?}; lower it (or leave it unset for the \
     default), or ask an operator to raise the account's ceiling with PUT \
     /v1/accounts/{account}/limits"
  )))
}

async fn account_limits(state: &AppState, account: String) -> Result<AccountLimits, ApiError> {
  let (db, name) = (state.db.clone(), account.clone());
  let custom = blocking(move || db.account_limits(&name)).await?;
  let ceilings = match &custom {
    Some(c) => state.ceilings.overlaid(c),
    None => (*state.ceilings).clone(),
  };
  Ok(AccountLimits {
    account,
    ceilings,
    custom,
  })
}

#[utoipa::path(get, path = "/v1/accounts/{id}/limits", tag = "accounts",
  params(("id" = String, Path, description = "Account name")),
  responses((status = 200, description = "The limits the account's uploads may set", body = AccountLimits)))]
pub(crate) async fn get_limits(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(id): Path<String>,
) -> Result<Json<AccountLimits>, ApiError> {
  if !caller.admin && caller.account != id {
    return Err(db::Error::NotFound(format!("no account named {id:?}")).into());
  }
  Ok(Json(account_limits(&state, id).await?))
}

#[utoipa::path(put, path = "/v1/accounts/{id}/limits", tag = "accounts",
  params(("id" = String, Path, description = "Account name")),
  request_body(content = Object, description = "Ceilings, with the keys of a version's `limits`; \
    unset keys take the operator's defaults, `{}` drops the account's own"),
  responses((status = 200, description = "The account's limits now", body = AccountLimits),
            (status = 403, description = "Needs an admin token", body = super::ErrorBody)))]
pub(crate) async fn put_limits(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(id): Path<String>,
  body: Result<Json<LimitsSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<AccountLimits>, ApiError> {
  require_admin(&caller)?;
  let limits = json_body(body)?;
  limits
    .validate()
    .map_err(|e| ApiError::invalid(format!("invalid ceilings: {e}")))?;
  let custom = (limits != LimitsSpec::default()).then_some(limits);
  let (db, name) = (state.db.clone(), id.clone());
  blocking(move || db.set_account_limits(&name, custom.as_ref())).await?;
  tracing::info!(account = %id, by = %caller.account, "account limit ceilings set");
  Ok(Json(account_limits(&state, id).await?))
}
