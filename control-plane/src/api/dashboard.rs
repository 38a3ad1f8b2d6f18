//! The web dashboard at `/`: a static page, built from `control-plane/dashboard/`
//! into its committed `dist/` and embedded here, so `isola-control serve`
//! needs no other file. Everything it shows comes from the public API with
//! the token the user signs in with; these routes carry no data.

use std::sync::LazyLock;

use axum::http::header::CACHE_CONTROL;
use axum::http::header::CONTENT_SECURITY_POLICY;
use axum::http::header::CONTENT_TYPE;
use axum::http::header::ETAG;
use axum::http::header::IF_NONE_MATCH;
use axum::http::header::REFERRER_POLICY;
use axum::http::header::X_CONTENT_TYPE_OPTIONS;
use axum::http::header::X_FRAME_OPTIONS;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use sha2::Digest as _;

/// No inline script or style, nothing from another origin; the API and the
/// tail WebSocket are this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' \
                       data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

/// One embedded file, with its ETag (a hash of the bytes, so a new build
/// is never served from a stale cache).
struct Asset {
  bytes: &'static [u8],
  content_type: &'static str,
  etag: HeaderValue,
}

impl Asset {
  fn new(bytes: &'static [u8], content_type: &'static str) -> Self {
    let hash = hex::encode(&sha2::Sha256::digest(bytes)[..16]);
    Self {
      bytes,
      content_type,
      etag: HeaderValue::from_str(&format!("\"{hash}\"")).expect("hex is a valid header value"),
    }
  }

  /// The file, or 304 when the client's copy is this one. Always revalidated
  /// (`no-cache`): the names do not change between builds.
  fn serve(&self, headers: &HeaderMap) -> Response {
    let fresh = headers
      .get(IF_NONE_MATCH)
      .and_then(|v| v.to_str().ok())
      .is_some_and(|v| v.split(',').any(|tag| tag.trim() == self.etag));
    let mut response = if fresh {
      StatusCode::NOT_MODIFIED.into_response()
    } else {
      ([(CONTENT_TYPE, self.content_type)], self.bytes).into_response()
    };
    let h = response.headers_mut();
    h.insert(ETAG, self.etag.clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
  }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
  Asset::new(
    include_bytes!("../../dashboard/dist/index.html"),
    "text/html; charset=utf-8",
  )
});
static APP_JS: LazyLock<Asset> = LazyLock::new(|| {
  Asset::new(
    include_bytes!("../../dashboard/dist/app.js"),
    "text/javascript; charset=utf-8",
  )
});
static APP_CSS: LazyLock<Asset> = LazyLock::new(|| {
  Asset::new(
    include_bytes!("../../dashboard/dist/app.css"),
    "text/css; charset=utf-8",
  )
});

/// `GET /` and `GET /assets/app.js|app.css`; not part of the API (nor of its
/// OpenAPI document).
pub(super) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
  Router::new()
    .route("/", get(|h: HeaderMap| async move { INDEX.serve(&h) }))
    .route(
      "/assets/app.js",
      get(|h: HeaderMap| async move { APP_JS.serve(&h) }),
    )
    .route(
      "/assets/app.css",
      get(|h: HeaderMap| async move { APP_CSS.serve(&h) }),
    )
}
