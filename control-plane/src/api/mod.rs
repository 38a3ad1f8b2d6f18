//! The REST API: JSON in and out, `Authorization: Bearer TOKEN`, errors as
//! `{"error": {"code", "message"}}`. Each account sees only its own
//! workers, versions, routes, secrets and usage; anything else answers 404
//! as if it did not exist.
//!
//! A change edges must see is committed first, then the new desired state
//! is published to the QUIC layer before the request is answered, so a
//! client that got its answer knows the push is under way.

use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::DefaultBodyLimit;
use axum::extract::FromRequestParts;
use axum::extract::Multipart;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::routing::put;
use axum::routing::MethodRouter;
use axum::Json;
use axum::Router;
use bytes::Bytes;
use isola_proto::manifest::MAX_VERSION_BYTES;
use isola_proto::msg::DesiredState;
use isola_proto::msg::Usage;
use isola_proto::names;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;
use utoipa::OpenApi as _;

mod dashboard;
mod guard;
mod kv;
mod observe;
mod queues;

pub use self::guard::RateLimit;
pub use self::kv::METADATA_HEADER as KV_METADATA_HEADER;
pub use self::observe::BEARER_PROTOCOL_PREFIX;
pub use self::observe::TAIL_PROTOCOL;
use crate::scheduler::driver::Handle as SchedulerHandle;
use utoipa::ToSchema;

use crate::db;
use crate::db::blocking;
use crate::db::Caller;
use crate::db::Db;
use crate::validate;
use crate::validate::Validator;

/// Largest upload request: the modules' limit plus room for the metadata
/// part and multipart framing.
pub const UPLOAD_BODY_LIMIT: usize = MAX_VERSION_BYTES + validate::MAX_METADATA_BYTES + 64 * 1024;
/// Largest secret value (Cloudflare allows 5 KiB; a little more room here).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Longest route pattern (a host name is at most 253 bytes; the rest is path).
pub const MAX_PATTERN_BYTES: usize = 2048;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
  db: Db,
  blobs: crate::blobs::Blobs,
  state_tx: Arc<watch::Sender<Arc<DesiredState>>>,
  validator: Arc<Validator>,
  scheduler: SchedulerHandle,
  kv: crate::kv::Kv,
  queues: crate::queues::driver::Handle,
  prices: Arc<crate::billing::PriceSheet>,
  traces: crate::observe::Traces,
  ceilings: Arc<isola_proto::manifest::LimitsSpec>,
  limiter: Arc<guard::Limiter>,
  edges: crate::dns::Directory,
}

impl AppState {
  pub fn new(
    db: Db,
    blobs: crate::blobs::Blobs,
    state_tx: Arc<watch::Sender<Arc<DesiredState>>>,
    validator: Arc<Validator>,
  ) -> Self {
    Self {
      blobs,
      state_tx,
      validator,
      scheduler: SchedulerHandle::detached(),
      kv: crate::kv::Kv::new(db.clone()),
      queues: crate::queues::driver::Handle::detached(db.clone()),
      prices: Arc::default(),
      traces: crate::observe::Traces::detached(),
      ceilings: Arc::new(isola_proto::manifest::LimitsSpec::default_ceilings()),
      limiter: Arc::new(guard::Limiter::new(RateLimit::default())),
      edges: crate::dns::Directory::default(),
      db,
    }
  }

  /// What accounts' uploads may set unless an admin raised their own.
  /// Default: [`isola_proto::manifest::LimitsSpec::default_ceilings`].
  pub fn with_ceilings(mut self, ceilings: isola_proto::manifest::LimitsSpec) -> Self {
    self.ceilings = Arc::new(ceilings);
    self
  }

  /// Requests each token may send. Default: [`RateLimit::default`].
  pub fn with_rate_limit(mut self, rate: RateLimit) -> Self {
    self.limiter = Arc::new(guard::Limiter::new(rate));
    self
  }

  /// Where each edge is and its health, for `GET /v1/edges`. Default: no
  /// edge seen (each shows as down).
  pub fn with_edge_health(mut self, edges: crate::dns::Directory) -> Self {
    self.edges = edges;
    self
  }

  /// Prices invoices are made with. Default: everything free.
  pub fn with_prices(mut self, prices: crate::billing::PriceSheet) -> Self {
    self.prices = Arc::new(prices);
    self
  }

  /// The queues (shared with the edge connections, which deliver their
  /// batches). Default: messages are stored and never delivered.
  pub fn with_queues(mut self, queues: crate::queues::driver::Handle) -> Self {
    self.queues = queues;
    self
  }

  /// The trace hub (shared with the edge connections, which feed it).
  /// Default: tails and metrics work, nothing is stored.
  pub fn with_traces(mut self, traces: crate::observe::Traces) -> Self {
    self.traces = traces;
    self
  }

  /// The KV service (shared with the edge connections, which announce its
  /// changes). Default: values in the database, changes announced to no one.
  pub fn with_kv(mut self, kv: crate::kv::Kv) -> Self {
    self.kv = kv;
    self
  }

  /// The cron scheduler schedule changes are announced to. Default: none
  /// (changes are stored; nothing runs them).
  pub fn with_scheduler(mut self, scheduler: SchedulerHandle) -> Self {
    self.scheduler = scheduler;
    self
  }

  /// Publishes the current desired state, unless a newer one already went
  /// out (two changes committing and publishing concurrently may finish in
  /// either order).
  fn publish(&self) -> Result<(), ApiError> {
    let desired = self.db.desired_state()?;
    let revision = desired.revision;
    let sent = self.state_tx.send_if_modified(|current| {
      if desired.revision > current.revision {
        *current = Arc::new(desired);
        true
      } else {
        false
      }
    });
    if sent {
      tracing::debug!(revision, "published desired state");
    }
    Ok(())
  }
}

/// Every endpoint: method, axum path and handler. The router is built from
/// this table alone, and a test checks the OpenAPI document against
/// [`endpoints`], so an undocumented route cannot slip in.
fn table() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
  vec![
    (Method::GET, "/healthz", get(healthz)),
    (Method::GET, "/v1/openapi.json", get(openapi_json)),
    (Method::POST, "/v1/accounts", post(create_account)),
    (Method::POST, "/v1/tokens", post(create_token)),
    (Method::GET, "/v1/whoami", get(whoami)),
    (Method::GET, "/v1/workers", get(list_workers)),
    (
      Method::POST,
      "/v1/workers/{name}/versions",
      post(upload).layer(DefaultBodyLimit::max(UPLOAD_BODY_LIMIT)),
    ),
    (
      Method::GET,
      "/v1/workers/{name}/versions",
      get(list_versions),
    ),
    (
      Method::GET,
      "/v1/workers/{name}/versions/{id}",
      get(view_version),
    ),
    (Method::POST, "/v1/workers/{name}/deployments", post(deploy)),
    (
      Method::GET,
      "/v1/workers/{name}/deployments",
      get(list_deployments),
    ),
    (Method::POST, "/v1/workers/{name}/rollback", post(rollback)),
    (Method::GET, "/v1/workers/{name}/secrets", get(list_secrets)),
    (Method::PUT, "/v1/workers/{name}/secrets", put(put_secrets)),
    (
      Method::PUT,
      "/v1/workers/{name}/secrets/{key}",
      put(put_secret),
    ),
    (
      Method::DELETE,
      "/v1/workers/{name}/secrets/{key}",
      delete(delete_secret),
    ),
    (Method::GET, "/v1/workers/{name}/usage", get(usage)),
    (
      Method::PUT,
      "/v1/workers/{name}/schedules",
      put(put_schedules),
    ),
    (
      Method::GET,
      "/v1/workers/{name}/schedules",
      get(get_schedules),
    ),
    (
      Method::GET,
      "/v1/workers/{name}/schedules/runs",
      get(schedule_runs),
    ),
    (Method::POST, "/v1/routes", post(add_route)),
    (Method::GET, "/v1/routes", get(list_routes)),
    (Method::DELETE, "/v1/routes", delete(delete_route_query)),
    (
      Method::DELETE,
      "/v1/routes/{*pattern}",
      delete(delete_route_path),
    ),
    (Method::GET, "/v1/edges", get(list_edges)),
    (
      Method::POST,
      "/v1/kv/namespaces",
      post(kv::create_namespace),
    ),
    (Method::GET, "/v1/kv/namespaces", get(kv::list_namespaces)),
    (
      Method::DELETE,
      "/v1/kv/namespaces/{id}",
      delete(kv::delete_namespace),
    ),
    (
      Method::PUT,
      "/v1/kv/namespaces/{id}/values/{*key}",
      put(kv::put_value).layer(DefaultBodyLimit::max(
        isola_proto::kv::MAX_VALUE_BYTES + 1024,
      )),
    ),
    (
      Method::GET,
      "/v1/kv/namespaces/{id}/values/{*key}",
      get(kv::get_value),
    ),
    (
      Method::DELETE,
      "/v1/kv/namespaces/{id}/values/{*key}",
      delete(kv::delete_value),
    ),
    (
      Method::GET,
      "/v1/kv/namespaces/{id}/keys",
      get(kv::list_keys),
    ),
    (
      Method::PUT,
      "/v1/kv/namespaces/{id}/bulk",
      put(kv::bulk_put).layer(DefaultBodyLimit::max(100 << 20)),
    ),
    (
      Method::POST,
      "/v1/kv/namespaces/{id}/bulk/delete",
      post(kv::bulk_delete).layer(DefaultBodyLimit::max(16 << 20)),
    ),
    (
      Method::GET,
      "/v1/accounts/{id}/invoices/{month}",
      get(get_invoice),
    ),
    (Method::POST, "/v1/queues", post(queues::create_queue)),
    (Method::GET, "/v1/queues", get(queues::list_queues)),
    (Method::GET, "/v1/queues/{name}", get(queues::get_queue)),
    (
      Method::DELETE,
      "/v1/queues/{name}",
      delete(queues::delete_queue),
    ),
    (
      Method::PUT,
      "/v1/queues/{name}/consumer",
      put(queues::put_consumer),
    ),
    (
      Method::DELETE,
      "/v1/queues/{name}/consumer",
      delete(queues::delete_consumer),
    ),
    (
      Method::POST,
      "/v1/queues/{name}/messages",
      post(queues::send_message),
    ),
    (
      Method::POST,
      "/v1/queues/{name}/messages/batch",
      post(queues::send_batch),
    ),
    (Method::GET, "/metrics", get(observe::metrics)),
    (
      Method::GET,
      "/v1/workers/{name}/observability",
      get(observe::get_observability),
    ),
    (
      Method::PUT,
      "/v1/workers/{name}/observability",
      put(observe::put_observability),
    ),
    (Method::GET, "/v1/workers/{name}/logs", get(observe::logs)),
    (
      Method::GET,
      "/v1/workers/{name}/analytics",
      get(observe::analytics),
    ),
    (Method::GET, "/v1/workers/{name}/tail", get(observe::tail)),
    (Method::GET, "/v1/audit", get(guard::list_audit)),
    (
      Method::GET,
      "/v1/accounts/{id}/limits",
      get(guard::get_limits),
    ),
    (
      Method::PUT,
      "/v1/accounts/{id}/limits",
      put(guard::put_limits),
    ),
  ]
}

/// The (method, axum path) of every route of [`router`].
pub fn endpoints() -> Vec<(Method, &'static str)> {
  table()
    .into_iter()
    .map(|(method, path, _)| (method, path))
    .collect()
}

pub fn router(state: AppState) -> Router {
  let mut router = Router::new();
  // Routes on one path merge their methods.
  for (_, path, handler) in table() {
    router = router.route(path, handler);
  }
  router
    .merge(dashboard::router())
    .fallback(no_endpoint)
    .method_not_allowed_fallback(wrong_method)
    .layer(axum::middleware::map_response(request_id_header))
    .layer(axum::middleware::from_fn_with_state(
      state.clone(),
      guard::audit,
    ))
    .with_state(state)
}

/// An error answer: `{"error": {"code", "message"}}` with its status. An
/// internal error adds a `request_id` and keeps its detail in the log: the
/// detail may hold SQLite or file-system text that is none of the client's
/// business.
#[derive(Debug)]
pub struct ApiError {
  status: StatusCode,
  code: &'static str,
  message: String,
  request_id: Option<RequestId>,
  /// Seconds, for a `Retry-After` header.
  retry_after: Option<u64>,
}

/// Names one API response, in its `x-request-id` header and, for internal
/// errors, in the body and the log line with the detail, so an operator can
/// find what went wrong from what a client reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
  fn new() -> Self {
    Self(uuid::Uuid::new_v4().simple().to_string())
  }
}

impl std::fmt::Display for RequestId {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(&self.0)
  }
}

/// The header every API response carries its [`RequestId`] in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

impl ApiError {
  fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
    Self {
      status,
      code,
      message: message.into(),
      request_id: None,
      retry_after: None,
    }
  }

  fn invalid(message: impl Into<String>) -> Self {
    Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
  }

  fn unauthorized(message: impl Into<String>) -> Self {
    Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
  }

  fn too_large(message: impl Into<String>) -> Self {
    Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
  }

  /// Logs `error` (with its sources) under a fresh request id and answers
  /// with that id only.
  fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
    let request_id = RequestId::new();
    tracing::error!(request_id = %request_id, error = %ErrorChain(error), "internal error");
    Self {
      status: StatusCode::INTERNAL_SERVER_ERROR,
      code: "internal",
      message: "internal error; the control plane's log has the details".to_string(),
      request_id: Some(request_id),
      retry_after: None,
    }
  }
}

/// An error and its sources, `outer: inner: ...`, for the log.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    write!(f, "{}", self.0)?;
    let mut source = self.0.source();
    while let Some(e) = source {
      write!(f, ": {e}")?;
      source = e.source();
    }
    Ok(())
  }
}

/// Every error answer's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
  pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
  /// Stable and machine-readable, e.g. `not_found`, `invalid_request`.
  pub code: String,
  /// For people: what went wrong and how to fix it.
  pub message: String,
  /// Only on internal errors: quote it to the operator, whose log has the
  /// details.
  #[serde(skip_serializing_if = "Option::is_none")]
  pub request_id: Option<String>,
}

impl IntoResponse for ApiError {
  fn into_response(self) -> Response {
    let body = ErrorBody {
      error: ErrorDetail {
        code: self.code.to_string(),
        message: self.message,
        request_id: self.request_id.as_ref().map(|id| id.0.clone()),
      },
    };
    let mut response = (self.status, Json(body)).into_response();
    if let Some(seconds) = self.retry_after {
      response
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    // The header layer reuses this id, so header, body and log agree.
    if let Some(id) = self.request_id {
      response.extensions_mut().insert(id);
    }
    response
  }
}

/// Gives every response an `x-request-id`: the one an internal error logged,
/// else a fresh one.
async fn request_id_header(response: Response) -> Response {
  let mut response = response;
  let id = response
    .extensions_mut()
    .remove::<RequestId>()
    .unwrap_or_else(RequestId::new);
  if let Ok(value) = HeaderValue::from_str(&id.0) {
    response.headers_mut().insert(REQUEST_ID_HEADER, value);
  }
  response
}

impl From<db::Error> for ApiError {
  fn from(e: db::Error) -> Self {
    match e {
      db::Error::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
      db::Error::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
      db::Error::Invalid(m) => Self::invalid(m),
      e => Self::internal(&e),
    }
  }
}

/// Blob store failures are the operator's business: logged, answered as
/// an internal error.
impl From<crate::blobs::Error> for ApiError {
  fn from(e: crate::blobs::Error) -> Self {
    match e {
      crate::blobs::Error::Db(e) => e.into(),
      e => Self::internal(&e),
    }
  }
}

impl From<validate::Error> for ApiError {
  fn from(e: validate::Error) -> Self {
    match e {
      validate::Error::Invalid(m) => Self::invalid(m),
      validate::Error::TooLarge(m) => Self::too_large(m),
      e @ validate::Error::Internal(_) => Self::internal(&e),
    }
  }
}

/// A JSON body, with rejections as JSON errors.
fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
  match body {
    Ok(Json(value)) => Ok(value),
    Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
      Err(ApiError::too_large(e.body_text()))
    }
    Err(e) => Err(ApiError::invalid(format!(
      "{}; send a JSON body with `Content-Type: application/json`",
      e.body_text()
    ))),
  }
}

/// The caller, from its bearer token.
pub struct Auth(pub Caller);

impl FromRequestParts<AppState> for Auth {
  type Rejection = ApiError;

  async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
    let Some(header) = parts.headers.get(AUTHORIZATION) else {
      return Err(ApiError::unauthorized(
        "missing Authorization header; send `Authorization: Bearer TOKEN` (`isola-control init` \
         wrote the admin token to DATA_DIR/admin-token)",
      ));
    };
    let token = header
      .to_str()
      .ok()
      .and_then(|h| h.split_once(' '))
      .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
      .map(|(_, token)| token.trim())
      .filter(|t| !t.is_empty())
      .ok_or_else(|| {
        ApiError::unauthorized("malformed Authorization header; expected `Bearer TOKEN`")
      })?
      .to_string();
    let caller = authenticate(state, token).await?;
    if let Some(slot) = parts.extensions.get::<guard::AuditSlot>() {
      slot.fill(&caller);
    }
    state.limiter.check(&caller)?;
    Ok(Auth(caller))
  }
}

/// The owner of `token`, or 401.
async fn authenticate(state: &AppState, token: String) -> Result<Caller, ApiError> {
  let db = state.db.clone();
  let caller = blocking(move || db.authenticate(&token)).await?;
  caller.ok_or_else(|| {
    ApiError::unauthorized("the token is not valid; check it, or create one with POST /v1/tokens")
  })
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
  if caller.admin {
    Ok(())
  } else {
    Err(ApiError::new(
      StatusCode::FORBIDDEN,
      "forbidden",
      "this needs an admin token (the one `isola-control init` wrote to DATA_DIR/admin-token)",
    ))
  }
}

/// Who a token belongs to.
#[derive(Serialize, ToSchema)]
struct WhoAmI {
  /// The token's account.
  account: String,
  /// Whether it is an admin token (fleet-wide endpoints such as `GET /v1/edges`).
  admin: bool,
}

#[utoipa::path(get, path = "/v1/whoami", tag = "accounts",
  responses((status = 200, description = "The caller's account and rights", body = WhoAmI)))]
async fn whoami(Auth(caller): Auth) -> Json<WhoAmI> {
  Json(WhoAmI {
    account: caller.account,
    admin: caller.admin,
  })
}

#[derive(Serialize, ToSchema)]
struct Health {
  ok: bool,
}

#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
  responses((status = 200, description = "The control plane is up", body = Health)))]
async fn healthz() -> Json<Health> {
  Json(Health { ok: true })
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", security(()),
  responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
  Json(openapi())
}

/// The OpenAPI document of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
  ApiDoc::openapi()
}

#[derive(utoipa::OpenApi)]
#[openapi(
  info(
    title = "Isola control plane",
    description = "Upload, deploy and route workers; manage secrets; read usage. Errors are \
                   `{\"error\": {\"code\", \"message\", \"request_id\"?}}`."
  ),
  paths(
    healthz, openapi_json, create_account, create_token, list_workers, upload, list_versions,
    view_version, deploy, list_deployments, rollback, list_secrets, put_secrets, put_secret,
    delete_secret, usage, put_schedules, get_schedules, schedule_runs, add_route, list_routes, delete_route_query, delete_route_path,
    list_edges, kv::create_namespace, kv::list_namespaces, kv::delete_namespace,
    kv::put_value, kv::get_value, kv::delete_value, kv::list_keys, kv::bulk_put,
    kv::bulk_delete, queues::create_queue, queues::list_queues, queues::get_queue,
    queues::delete_queue, queues::put_consumer, queues::delete_consumer, queues::send_message,
    queues::send_batch, get_invoice,
    observe::metrics, observe::get_observability, observe::put_observability, observe::logs,
    observe::analytics, observe::tail, whoami, guard::list_audit, guard::get_limits,
    guard::put_limits,
  ),
  components(schemas(ErrorBody, ErrorDetail)),
  modifiers(&BearerAuth, &CommonErrors),
  security(("bearer" = [])),
)]
struct ApiDoc;

/// Declares the `bearer` scheme every endpoint but the public ones uses.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
  fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::HttpAuthScheme;
    use utoipa::openapi::security::HttpBuilder;
    use utoipa::openapi::security::SecurityScheme;
    let components = openapi.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
      "bearer",
      SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
  }
}

/// The error answers every authenticated endpoint can give, added to each
/// such operation here rather than repeated in every handler's annotation
/// (an operation that documents one of these statuses itself keeps its own).
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
  fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::ContentBuilder;
    use utoipa::openapi::Ref;
    use utoipa::openapi::ResponseBuilder;
    let error = |description: &str| {
      ResponseBuilder::new()
        .description(description)
        .content(
          "application/json",
          ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
        )
        .build()
    };
    let common = [
      ("400", "Invalid request"),
      ("401", "Missing or invalid token"),
      (
        "429",
        "Too many requests from this token; `Retry-After` says when to retry",
      ),
      ("404", "No such worker (or not the caller's)"),
      ("500", "Internal error; `request_id` names it in the log"),
    ];
    let public = SecurityRequirement::default();
    for item in openapi.paths.paths.values_mut() {
      for op in [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
      ]
      .into_iter()
      .flatten()
      {
        if op.security.as_ref().is_some_and(|s| s.contains(&public)) {
          continue;
        }
        for (status, description) in common {
          op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| error(description).into());
        }
      }
    }
  }
}

async fn no_endpoint(method: Method, uri: Uri) -> ApiError {
  ApiError::new(
    StatusCode::NOT_FOUND,
    "not_found",
    format!("no endpoint {method} {}", uri.path()),
  )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
  ApiError::new(
    StatusCode::METHOD_NOT_ALLOWED,
    "method_not_allowed",
    format!("{} does not take {method}", uri.path()),
  )
}

// Accounts and tokens.

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewAccount {
  name: String,
}

#[derive(Serialize, ToSchema)]
struct AccountCreated {
  account: String,
  /// The new account's first token.
  token: String,
}

#[derive(Serialize, ToSchema)]
struct TokenCreated {
  token: String,
}

#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = NewAccount,
  responses(
    (status = 201, description = "Created", body = AccountCreated),
    (status = 403, description = "Needs an admin token", body = ErrorBody),
    (status = 409, description = "The account exists", body = ErrorBody),
  ))]
async fn create_account(
  State(state): State<AppState>,
  Auth(caller): Auth,
  req: Result<Json<NewAccount>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
  require_admin(&caller)?;
  let NewAccount { name } = body(req)?;
  names::check_account_name(&name).map_err(|e| ApiError::invalid(e.to_string()))?;
  let token = blocking({
    let name = name.clone();
    move || state.db.create_account(&name, false)
  })
  .await?;
  tracing::info!(account = %name, "created account");
  Ok((
    StatusCode::CREATED,
    Json(AccountCreated {
      account: name,
      token,
    }),
  ))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "accounts",
  responses((status = 201, description = "A new token of the caller's account", body = TokenCreated),
  ))]
async fn create_token(
  State(state): State<AppState>,
  Auth(caller): Auth,
) -> Result<impl IntoResponse, ApiError> {
  // New tokens never carry admin rights; the admin token is made once by init.
  let token = blocking(move || state.db.issue_token(&caller.account, false)).await?;
  Ok((StatusCode::CREATED, Json(TokenCreated { token })))
}

// Workers and versions.

#[derive(Serialize, ToSchema)]
struct WorkerList {
  workers: Vec<db::WorkerInfo>,
}

#[derive(Serialize, ToSchema)]
struct VersionList {
  /// Newest first.
  versions: Vec<db::VersionInfo>,
}

#[utoipa::path(get, path = "/v1/workers", tag = "workers",
  responses((status = 200, description = "The caller's workers", body = WorkerList),
  ))]
async fn list_workers(
  State(state): State<AppState>,
  Auth(caller): Auth,
) -> Result<Json<WorkerList>, ApiError> {
  let workers = blocking(move || state.db.workers(&caller.account)).await?;
  Ok(Json(WorkerList { workers }))
}

#[utoipa::path(get, path = "/v1/workers/{name}/versions", tag = "workers",
  params(("name" = String, Path, description = "Worker name")),
  responses((status = 200, description = "The worker's versions", body = VersionList),
  ))]
async fn list_versions(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
  let versions = blocking(move || state.db.versions(&caller.account, &name)).await?;
  Ok(Json(VersionList { versions }))
}

#[utoipa::path(get, path = "/v1/workers/{name}/versions/{id}", tag = "workers",
  params(
    ("name" = String, Path, description = "Worker name"),
    ("id" = String, Path, description = "Version id"),
  ),
  responses((status = 200, description = "The version", body = db::VersionDetail),
  ))]
async fn view_version(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path((name, id)): Path<(String, String)>,
) -> Result<Json<db::VersionDetail>, ApiError> {
  let version = blocking(move || state.db.version(&caller.account, &name, &id)).await?;
  Ok(Json(version))
}

/// The `metadata` part of an upload (JSON).
#[derive(ToSchema)]
#[allow(dead_code)]
struct UploadMetadata {
  /// The module the worker starts from; one of the uploaded parts.
  main_module: String,
  /// Plain-text environment: name to any JSON value.
  #[schema(value_type = Option<Object>)]
  vars: Option<()>,
  #[schema(value_type = Option<db::LimitsDoc>)]
  limits: Option<()>,
  /// A date like `2024-09-23`.
  compatibility_date: Option<String>,
  /// The worker's own egress allow list: its `fetch()` reaches only what
  /// both this list and the edge's `[egress]` policy allow.
  egress: Option<EgressDoc>,
  /// A note about the version, at most 1,000 characters; stored with the
  /// version but not in its manifest, so it does not change the hash.
  message: Option<String>,
}

/// `{"allow": [...]}` in upload metadata.
#[derive(ToSchema)]
#[allow(dead_code)]
struct EgressDoc {
  /// Networks (`10.1.2.0/24`), addresses (`203.0.113.7:443`) or hosts
  /// (`api.example.com:443`), any port unless one is given.
  allow: Vec<String>,
}

/// A version upload: a `metadata` part and one part per module, each
/// named after its module (e.g. `worker.js`).
#[derive(ToSchema)]
#[allow(dead_code)]
struct UploadForm {
  metadata: UploadMetadata,
  /// Module parts: any other part name is a module name.
  #[schema(value_type = Option<String>, format = Binary, rename = "worker.js")]
  module: Option<()>,
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
  if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
    ApiError::too_large(format!(
      "the upload is larger than {UPLOAD_BODY_LIMIT} bytes; modules may total at most {} bytes",
      MAX_VERSION_BYTES
    ))
  } else {
    ApiError::invalid(format!("malformed multipart body: {}", e.body_text()))
  }
}

#[utoipa::path(post, path = "/v1/workers/{name}/versions", tag = "workers",
  params(("name" = String, Path, description = "Worker name; created on its first upload")),
  request_body(content = UploadForm, content_type = "multipart/form-data"),
  responses(
    (status = 201, description = "Stored (not yet deployed)", body = db::VersionInfo),
    (status = 413, description = "Too large", body = ErrorBody),
  ))]
async fn upload(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  multipart: Result<Multipart, MultipartRejection>,
) -> Result<impl IntoResponse, ApiError> {
  names::check_worker_name(&caller.account, &name).map_err(|e| ApiError::invalid(e.to_string()))?;
  let mut multipart = multipart.map_err(|e| {
    ApiError::invalid(format!(
      "{}; upload a version as multipart/form-data with a `metadata` part and one part per \
       module",
      e.body_text()
    ))
  })?;
  let mut metadata: Option<Bytes> = None;
  let mut modules: Vec<(String, Bytes)> = Vec::new();
  let mut total = 0usize;
  while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
    let part = field
      .name()
      .filter(|n| !n.is_empty())
      .or_else(|| field.file_name().filter(|n| !n.is_empty()))
      .map(str::to_string);
    let Some(part) = part else {
      return Err(ApiError::invalid(
        "a part has no name; name each module's part after the module, e.g. \
         `Content-Disposition: form-data; name=\"worker.js\"`",
      ));
    };
    let bytes = field.bytes().await.map_err(multipart_error)?;
    if part == "metadata" {
      if metadata.is_some() {
        return Err(ApiError::invalid(
          "the `metadata` part is sent twice; send it once",
        ));
      }
      metadata = Some(bytes);
      continue;
    }
    total += bytes.len();
    if total > MAX_VERSION_BYTES {
      return Err(ApiError::too_large(format!(
        "the modules total more than the limit of {} bytes per upload",
        MAX_VERSION_BYTES
      )));
    }
    modules.push((part, bytes));
  }
  let edge_name = names::edge_worker_name(&caller.account, &name);
  let checked = validate::check_upload(&edge_name, metadata.as_deref(), modules)?;
  let ceilings = guard::ceilings_of(&state, &caller.account).await?;
  guard::check_ceilings(&caller.account, &checked.manifest.limits, &ceilings)?;
  check_services_exist(&state, &caller.account, &name, &checked.manifest).await?;
  state.validator.check_starts(&checked).await?;
  // Blobs first: a crash before the version row commits leaves blobs no
  // version names, never a version without its blobs.
  for (module, (_, bytes)) in checked.manifest.modules.iter().zip(&checked.modules) {
    state.blobs.put(&module.sha256, bytes.clone()).await?;
  }
  let version = blocking(move || {
    state.db.insert_version(
      &caller.account,
      &name,
      &checked.manifest,
      &checked.modules,
      checked.message.as_deref(),
    )
  })
  .await?;
  tracing::info!(worker = %edge_name, id = %version.id, hash = %version.hash, "stored version");
  Ok((StatusCode::CREATED, Json(version)))
}

/// A service binding must name a worker of the account (or the worker
/// itself), and a KV binding a namespace of the account, so a deploy never
/// ships a binding that cannot resolve.
async fn check_services_exist(
  state: &AppState,
  account: &str,
  name: &str,
  manifest: &isola_proto::manifest::Manifest,
) -> Result<(), ApiError> {
  for (i, s) in manifest.services.iter().enumerate() {
    if s.service == name {
      continue;
    }
    let (db, account2, service) = (state.db.clone(), account.to_string(), s.service.clone());
    if !blocking(move || db.worker_exists(&account2, &service)).await? {
      return Err(ApiError::invalid(format!(
        "invalid metadata: services[{i}] binds {:?} to worker {:?}, which does not exist in \
         account {account:?}; deploy that worker first",
        s.binding, s.service
      )));
    }
  }
  for (i, k) in manifest.kv_namespaces.iter().enumerate() {
    if state.kv.require(account, &k.id).await.is_err() {
      return Err(ApiError::invalid(format!(
        "invalid metadata: kv_namespaces[{i}] binds {:?} to namespace {:?}, which does not \
         exist in account {account:?}; create it with `isola kv namespace create` (or POST \
         /v1/kv/namespaces) and use its id",
        k.binding, k.id
      )));
    }
  }
  Ok(())
}

// Billing.

#[utoipa::path(get, path = "/v1/accounts/{id}/invoices/{month}", tag = "billing",
  params(("id" = String, Path, description = "Account name"),
         ("month" = String, Path, description = "`YYYY-MM`, or `YYYY-MM.csv` for CSV")),
  responses((status = 200, description = "The month's invoice; a closed month's never changes", body = crate::billing::Invoice)))]
async fn get_invoice(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path((id, month)): Path<(String, String)>,
) -> Result<Response, ApiError> {
  // Another account's invoices do not exist, as far as this caller knows.
  if !caller.admin && caller.account != id {
    return Err(db::Error::NotFound(format!("no account named {id:?}")).into());
  }
  let (month, as_csv) = match month.strip_suffix(".csv") {
    Some(m) => (m.to_string(), true),
    None => (month, false),
  };
  let now = db::Timestamp::now().0;
  let invoice = crate::billing::invoice_for(&state.db, &state.prices, &id, &month, now).await?;
  if as_csv {
    let mut r = crate::billing::csv(&invoice).into_response();
    r.headers_mut().insert(
      axum::http::header::CONTENT_TYPE,
      HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    return Ok(r);
  }
  Ok(Json(invoice).into_response())
}

// Schedules (cron triggers).

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Crons {
  /// Cron expressions (five fields, UTC, Cloudflare's syntax); an empty list
  /// removes them all.
  crons: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct RunList {
  /// The last runs, newest first (at most 100).
  runs: Vec<db::ScheduleRun>,
}

#[utoipa::path(put, path = "/v1/workers/{name}/schedules", tag = "schedules",
  params(("name" = String, Path, description = "Worker name")),
  request_body = Crons,
  responses((status = 200, description = "The worker's crons now", body = Crons)))]
async fn put_schedules(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  req: Result<Json<Crons>, JsonRejection>,
) -> Result<Json<Crons>, ApiError> {
  let Crons { crons } = body(req)?;
  let schedules = isola_proto::cron::parse_all(&crons).map_err(ApiError::invalid)?;
  let now = state.scheduler.clock().now();
  let crons = blocking(move || {
    state
      .db
      .set_schedules(&caller.account, &name, &schedules, now)?;
    state.scheduler.reload();
    state.db.schedules(&caller.account, &name)
  })
  .await?;
  Ok(Json(Crons { crons }))
}

#[utoipa::path(get, path = "/v1/workers/{name}/schedules", tag = "schedules",
  params(("name" = String, Path, description = "Worker name")),
  responses((status = 200, description = "The worker's crons", body = Crons)))]
async fn get_schedules(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<Json<Crons>, ApiError> {
  let crons = blocking(move || state.db.schedules(&caller.account, &name)).await?;
  Ok(Json(Crons { crons }))
}

#[utoipa::path(get, path = "/v1/workers/{name}/schedules/runs", tag = "schedules",
  params(("name" = String, Path, description = "Worker name")),
  responses((status = 200, description = "The last 100 runs, newest first", body = RunList)))]
async fn schedule_runs(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<Json<RunList>, ApiError> {
  let runs = blocking(move || state.db.schedule_runs(&caller.account, &name)).await?;
  Ok(Json(RunList { runs }))
}

// Deployments.

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewDeployment {
  /// One version at 100, or two whose percentages add up to 100.
  versions: Vec<NewSplit>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewSplit {
  id: String,
  percentage: i64,
}

/// One version at 100 %, or two whose whole percentages add up to 100.
fn check_splits(splits: &[NewSplit]) -> Result<Vec<(String, u8)>, String> {
  let example = "e.g. {\"versions\": [{\"id\": \"...\", \"percentage\": 100}]}";
  if splits.is_empty() || splits.len() > 2 {
    return Err(format!(
      "a deployment has 1 or 2 versions, not {}; {example}",
      splits.len()
    ));
  }
  let mut out = Vec::with_capacity(splits.len());
  for split in splits {
    let percentage = u8::try_from(split.percentage)
      .ok()
      .filter(|p| (1..=100).contains(p))
      .ok_or_else(|| {
        format!(
          "version {:?} has percentage {}; use a whole number from 1 to 100",
          split.id, split.percentage
        )
      })?;
    if out.iter().any(|(id, _)| *id == split.id) {
      return Err(format!(
        "version {:?} is listed twice; list each version once",
        split.id
      ));
    }
    out.push((split.id.clone(), percentage));
  }
  let sum: u32 = out.iter().map(|(_, p)| u32::from(*p)).sum();
  if sum != 100 {
    return Err(format!(
      "the percentages add up to {sum}; they must add up to 100"
    ));
  }
  Ok(out)
}

#[utoipa::path(post, path = "/v1/workers/{name}/deployments", tag = "deployments",
  params(("name" = String, Path, description = "Worker name")),
  request_body = NewDeployment,
  responses((status = 201, description = "Deployed; the push to edges is under way", body = db::Deployment),
  ))]
async fn deploy(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  req: Result<Json<NewDeployment>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
  let req = body(req)?;
  let splits = check_splits(&req.versions).map_err(ApiError::invalid)?;
  let deployment = blocking(move || {
    let deployment = state.db.deploy(&caller.account, &name, &splits)?;
    state.publish()?;
    tracing::info!(account = %caller.account, worker = %name, id = deployment.id, revision = ?deployment.revision, "deployed");
    Ok::<_, ApiError>(deployment)
  })
  .await?;
  Ok((StatusCode::CREATED, Json(deployment)))
}

#[derive(Serialize, ToSchema)]
struct DeploymentList {
  deployments: Vec<db::Deployment>,
}

#[utoipa::path(get, path = "/v1/workers/{name}/deployments", tag = "deployments",
  params(("name" = String, Path, description = "Worker name")),
  responses((status = 200, description = "The worker's deployments", body = DeploymentList),
  ))]
async fn list_deployments(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<Json<DeploymentList>, ApiError> {
  let deployments = blocking(move || state.db.deployments(&caller.account, &name)).await?;
  Ok(Json(DeploymentList { deployments }))
}

#[utoipa::path(post, path = "/v1/workers/{name}/rollback", tag = "deployments",
  params(("name" = String, Path, description = "Worker name")),
  responses(
    (status = 200, description = "The deployment now active", body = db::Deployment),
    (status = 409, description = "Nothing to roll back to", body = ErrorBody),
  ))]
async fn rollback(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<Json<db::Deployment>, ApiError> {
  let deployment = blocking(move || {
    let deployment = state.db.rollback(&caller.account, &name)?;
    state.publish()?;
    tracing::info!(account = %caller.account, worker = %name, id = deployment.id, "rolled back");
    Ok::<_, ApiError>(deployment)
  })
  .await?;
  Ok(Json(deployment))
}

// Routes.

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewRoute {
  /// E.g. `example.com/api/*`.
  pattern: String,
  worker: String,
}

#[derive(Serialize, ToSchema)]
struct RouteAdded {
  pattern: String,
  worker: String,
  created_at: db::Timestamp,
  revision: u64,
}

#[derive(Serialize, ToSchema)]
struct RouteList {
  routes: Vec<db::RouteInfo>,
}

#[utoipa::path(post, path = "/v1/routes", tag = "routes", request_body = NewRoute,
  responses(
    (status = 201, description = "Added", body = RouteAdded),
    (status = 409, description = "The pattern is taken", body = ErrorBody),
  ))]
async fn add_route(
  State(state): State<AppState>,
  Auth(caller): Auth,
  req: Result<Json<NewRoute>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
  let NewRoute { pattern, worker } = body(req)?;
  if pattern.len() > MAX_PATTERN_BYTES {
    return Err(ApiError::invalid(format!(
      "the route pattern is {} bytes long, more than the limit of {MAX_PATTERN_BYTES}",
      pattern.len()
    )));
  }
  let (route, revision) = blocking(move || {
    let added = state.db.add_route(&caller.account, &pattern, &worker)?;
    state.publish()?;
    Ok::<_, ApiError>(added)
  })
  .await?;
  Ok((
    StatusCode::CREATED,
    Json(RouteAdded {
      pattern: route.pattern,
      worker: route.worker,
      created_at: route.created_at,
      revision,
    }),
  ))
}

#[utoipa::path(get, path = "/v1/routes", tag = "routes",
  responses((status = 200, description = "The caller's routes", body = RouteList),
  ))]
async fn list_routes(
  State(state): State<AppState>,
  Auth(caller): Auth,
) -> Result<Json<RouteList>, ApiError> {
  let routes = blocking(move || state.db.routes(&caller.account)).await?;
  Ok(Json(RouteList { routes }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PatternQuery {
  /// The route's pattern, URL-encoded.
  pattern: String,
}

#[utoipa::path(delete, path = "/v1/routes", tag = "routes", params(PatternQuery),
  responses((status = 204, description = "Deleted"),
  ))]
async fn delete_route_query(
  State(state): State<AppState>,
  Auth(caller): Auth,
  query: Result<Query<PatternQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
  let Query(PatternQuery { pattern }) = query.map_err(|_| {
    ApiError::invalid("name the route to delete: DELETE /v1/routes?pattern=<URL-encoded pattern>")
  })?;
  delete_route(state, caller, pattern).await
}

#[utoipa::path(delete, path = "/v1/routes/{pattern}", tag = "routes",
  params(("pattern" = String, Path, description = "The route's pattern; its slashes may stay unencoded")),
  responses((status = 204, description = "Deleted"),
  ))]
async fn delete_route_path(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(pattern): Path<String>,
) -> Result<StatusCode, ApiError> {
  delete_route(state, caller, pattern).await
}

async fn delete_route(
  state: AppState,
  caller: Caller,
  pattern: String,
) -> Result<StatusCode, ApiError> {
  blocking(move || {
    state.db.delete_route(&caller.account, &pattern)?;
    state.publish()
  })
  .await?;
  Ok(StatusCode::NO_CONTENT)
}

// Secrets.

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SecretValue {
  value: String,
}

#[derive(Serialize, ToSchema)]
struct SecretSet {
  key: String,
  revision: u64,
}

#[derive(Serialize, ToSchema)]
struct SecretsSet {
  /// The keys set, sorted.
  keys: Vec<String>,
  revision: u64,
}

#[derive(Serialize, ToSchema)]
struct SecretList {
  secrets: Vec<db::SecretInfo>,
}

/// Most keys one bulk request may set.
pub const MAX_BULK_SECRETS: usize = 100;

#[utoipa::path(put, path = "/v1/workers/{name}/secrets/{key}", tag = "secrets",
  params(
    ("name" = String, Path, description = "Worker name"),
    ("key" = String, Path, description = "Secret name"),
  ),
  request_body = SecretValue,
  responses(
    (status = 200, description = "Replaced", body = SecretSet),
    (status = 201, description = "Created", body = SecretSet),
    (status = 413, description = "The value is too large", body = ErrorBody),
  ))]
async fn put_secret(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path((name, key)): Path<(String, String)>,
  req: Result<Json<SecretValue>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
  names::check_secret_key(&key).map_err(|e| ApiError::invalid(e.to_string()))?;
  let SecretValue { value } = body(req)?;
  if value.len() > MAX_SECRET_BYTES {
    return Err(ApiError::too_large(format!(
      "the value of secret {key:?} is {} bytes, more than the limit of {MAX_SECRET_BYTES}",
      value.len()
    )));
  }
  let (created, revision, key) = blocking(move || {
    let (created, revision) = state.db.put_secret(&caller.account, &name, &key, &value)?;
    state.publish()?;
    Ok::<_, ApiError>((created, revision, key))
  })
  .await?;
  let status = if created {
    StatusCode::CREATED
  } else {
    StatusCode::OK
  };
  Ok((status, Json(SecretSet { key, revision })))
}

#[utoipa::path(put, path = "/v1/workers/{name}/secrets", tag = "secrets",
  params(("name" = String, Path, description = "Worker name")),
  request_body(content = std::collections::BTreeMap<String, String>,
    description = "Secret names to values; all are set, or none"),
  responses(
    (status = 200, description = "All set, in one revision", body = SecretsSet),
    (status = 413, description = "A value is too large", body = ErrorBody),
  ))]
async fn put_secrets(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  req: Result<Json<std::collections::BTreeMap<String, String>>, JsonRejection>,
) -> Result<Json<SecretsSet>, ApiError> {
  let secrets = body(req)?;
  if secrets.is_empty() {
    return Err(ApiError::invalid(
      "no secrets given; send a JSON object like {\"KEY\": \"value\"}",
    ));
  }
  if secrets.len() > MAX_BULK_SECRETS {
    return Err(ApiError::invalid(format!(
      "{} secrets given, more than the limit of {MAX_BULK_SECRETS} per request; split them",
      secrets.len()
    )));
  }
  for (key, value) in &secrets {
    names::check_secret_key(key).map_err(|e| ApiError::invalid(e.to_string()))?;
    if value.len() > MAX_SECRET_BYTES {
      return Err(ApiError::too_large(format!(
        "the value of secret {key:?} is {} bytes, more than the limit of {MAX_SECRET_BYTES}",
        value.len()
      )));
    }
  }
  let secrets: Vec<(String, String)> = secrets.into_iter().collect();
  let keys: Vec<String> = secrets.iter().map(|(k, _)| k.clone()).collect();
  let revision = blocking(move || {
    let revision = state.db.put_secrets(&caller.account, &name, &secrets)?;
    state.publish()?;
    Ok::<_, ApiError>(revision)
  })
  .await?;
  Ok(Json(SecretsSet { keys, revision }))
}

#[utoipa::path(get, path = "/v1/workers/{name}/secrets", tag = "secrets",
  params(("name" = String, Path, description = "Worker name")),
  responses((status = 200, description = "The secrets' names (never their values)", body = SecretList),
  ))]
async fn list_secrets(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
) -> Result<Json<SecretList>, ApiError> {
  let secrets = blocking(move || state.db.secrets(&caller.account, &name)).await?;
  Ok(Json(SecretList { secrets }))
}

#[utoipa::path(delete, path = "/v1/workers/{name}/secrets/{key}", tag = "secrets",
  params(
    ("name" = String, Path, description = "Worker name"),
    ("key" = String, Path, description = "Secret name"),
  ),
  responses((status = 204, description = "Deleted"),
  ))]
async fn delete_secret(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path((name, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
  blocking(move || {
    state.db.delete_secret(&caller.account, &name, &key)?;
    state.publish()
  })
  .await?;
  Ok(StatusCode::NO_CONTENT)
}

// Usage.

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
  /// Unix seconds or RFC 3339.
  since: Option<String>,
  /// Unix seconds or RFC 3339.
  until: Option<String>,
}

/// Unix seconds or RFC 3339.
fn parse_time(field: &str, value: &str) -> Result<i64, ApiError> {
  if let Ok(secs) = value.parse::<i64>() {
    return Ok(secs);
  }
  time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
    .map(|t| t.unix_timestamp())
    .map_err(|_| {
      ApiError::invalid(format!(
        "{field}={value:?} is not a time; use Unix seconds or RFC 3339, like \
         2024-09-23T00:00:00Z"
      ))
    })
}

/// `Usage` as the API shows it: times in ms (stored and summed in µs,
/// so sums are exact).
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
struct UsageTotals {
  requests: u64,
  errors: u64,
  cpu_ms: f64,
  wall_ms: f64,
  egress_bytes: u64,
  ingress_bytes: u64,
  subrequests: u64,
  /// KV `get`/`getWithMetadata` calls (edge cache hits too).
  kv_reads: u64,
  kv_writes: u64,
  kv_deletes: u64,
  kv_lists: u64,
  /// Queue operations: each 64 KB of a message sent, delivered (once per
  /// attempt), acknowledged or dropped, or dead-lettered.
  queue_operations: u64,
}

impl From<&Usage> for UsageTotals {
  fn from(u: &Usage) -> Self {
    Self {
      requests: u.requests,
      errors: u.errors,
      cpu_ms: u.cpu_us as f64 / 1000.0,
      wall_ms: u.wall_us as f64 / 1000.0,
      egress_bytes: u.egress_bytes,
      ingress_bytes: u.ingress_bytes,
      subrequests: u.subrequests,
      kv_reads: u.kv_reads,
      kv_writes: u.kv_writes,
      kv_deletes: u.kv_deletes,
      kv_lists: u.kv_lists,
      queue_operations: u.queue_ops,
    }
  }
}

#[derive(Serialize, ToSchema)]
struct VersionUsageView {
  hash: String,
  #[serde(flatten)]
  totals: UsageTotals,
}

/// A `db::UsageSummary` as the API shows it.
#[derive(Serialize, ToSchema)]
struct UsageView {
  worker: String,
  since: Option<db::Timestamp>,
  until: Option<db::Timestamp>,
  #[serde(flatten)]
  totals: UsageTotals,
  by_version: Vec<VersionUsageView>,
}

impl From<db::UsageSummary> for UsageView {
  fn from(s: db::UsageSummary) -> Self {
    Self {
      worker: s.worker,
      since: s.since,
      until: s.until,
      totals: UsageTotals::from(&s.total),
      by_version: s
        .by_version
        .into_iter()
        .map(|v| VersionUsageView {
          hash: v.hash,
          totals: UsageTotals::from(&v.usage),
        })
        .collect(),
    }
  }
}

#[utoipa::path(get, path = "/v1/workers/{name}/usage", tag = "usage",
  params(("name" = String, Path, description = "Worker name"), UsageQuery),
  responses((status = 200, description = "Usage totals, overall and per version", body = UsageView),
  ))]
async fn usage(
  State(state): State<AppState>,
  Auth(caller): Auth,
  Path(name): Path<String>,
  query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<UsageView>, ApiError> {
  let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
  let since = query
    .since
    .as_deref()
    .map(|v| parse_time("since", v))
    .transpose()?;
  let until = query
    .until
    .as_deref()
    .map(|v| parse_time("until", v))
    .transpose()?;
  let summary = blocking(move || state.db.usage(&caller.account, &name, since, until)).await?;
  Ok(Json(UsageView::from(summary)))
}

// Edges.

#[derive(Serialize, ToSchema)]
struct EdgeList {
  /// The current desired-state revision.
  revision: u64,
  edges: Vec<EdgeEntry>,
}

/// An enrolled edge, where it said it is when it last connected, and
/// whether DNS answers with it.
#[derive(Serialize, ToSchema)]
struct EdgeEntry {
  #[serde(flatten)]
  info: db::EdgeInfo,
  region: Option<String>,
  /// `[latitude, longitude]`.
  #[schema(value_type = Option<Vec<f64>>)]
  location: Option<[f64; 2]>,
  #[schema(value_type = Vec<String>)]
  public_ipv4: Vec<std::net::Ipv4Addr>,
  #[schema(value_type = Vec<String>)]
  public_ipv6: Vec<std::net::Ipv6Addr>,
  /// The edge's HTTP port, where health checks go.
  http_port: Option<u16>,
  health: crate::dns::health::Status,
}

#[utoipa::path(get, path = "/v1/edges", tag = "edges",
  responses(
    (status = 200, description = "Enrolled edges and what each applied", body = EdgeList),
    (status = 403, description = "Needs an admin token", body = ErrorBody),
  ))]
async fn list_edges(
  State(state): State<AppState>,
  Auth(caller): Auth,
) -> Result<Json<EdgeList>, ApiError> {
  require_admin(&caller)?;
  let seen = state.edges.get();
  let (revision, edges) = blocking(move || state.db.edges()).await?;
  let edges = edges
    .into_iter()
    .map(|info| {
      let view = seen.iter().find(|v| v.name == info.name);
      let site = view.map(|v| v.site.clone()).unwrap_or_default();
      let health = match view {
        Some(v) => v.status.clone(),
        None => crate::dns::health::Status::Down {
          reason: "not connected since the control plane started".into(),
        },
      };
      EdgeEntry {
        info,
        region: site.region,
        location: site.location,
        public_ipv4: site.public_ipv4,
        public_ipv6: site.public_ipv6,
        http_port: site.http_port,
        health,
      }
    })
    .collect();
  Ok(Json(EdgeList { revision, edges }))
}

#[cfg(test)]
mod tests {
  use super::*;

  fn split(id: &str, percentage: i64) -> NewSplit {
    NewSplit {
      id: id.into(),
      percentage,
    }
  }

  #[test]
  fn splits() {
    assert_eq!(
      check_splits(&[split("a", 100)]).unwrap(),
      [("a".to_string(), 100)]
    );
    check_splits(&[split("a", 90), split("b", 10)]).unwrap();
    for (splits, want) in [
      (vec![], "1 or 2 versions"),
      (
        vec![split("a", 50), split("b", 25), split("c", 25)],
        "1 or 2 versions",
      ),
      (vec![split("a", 0), split("b", 100)], "from 1 to 100"),
      (vec![split("a", 101)], "from 1 to 100"),
      (vec![split("a", -5)], "from 1 to 100"),
      (vec![split("a", 50)], "add up to 50"),
      (vec![split("a", 50), split("a", 50)], "listed twice"),
    ] {
      let err = check_splits(&splits).unwrap_err();
      assert!(err.contains(want), "{err}");
    }
  }

  #[test]
  fn usage_shows_times_in_ms() {
    let totals = UsageTotals::from(&Usage {
      requests: 3,
      cpu_us: 4500,
      wall_us: 1,
      kv_reads: 2,
      queue_ops: 5,
      ..Usage::default()
    });
    assert_eq!(totals.requests, 3);
    assert_eq!((totals.kv_reads, totals.queue_operations), (2, 5));
    assert_eq!(totals.cpu_ms, 4.5);
    assert_eq!(totals.wall_ms, 0.001);
  }

  #[test]
  fn times() {
    assert_eq!(parse_time("since", "1700000000").unwrap(), 1_700_000_000);
    assert_eq!(
      parse_time("since", "2023-11-14T22:13:20Z").unwrap(),
      1_700_000_000
    );
    assert!(parse_time("since", "yesterday").is_err());
  }
}
