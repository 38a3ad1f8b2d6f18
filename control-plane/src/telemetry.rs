//! OpenTelemetry spans of the API: one server span per request, named by
//! its route (`GET /v1/workers/{name}`), the child of the request's W3C
//! `traceparent` if it has one. Exported over OTLP when `control.toml`
//! `[telemetry] otlp_endpoint` is set; off (no layer at all) otherwise.

use std::sync::Arc;

use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use isola_io::telemetry::TelemetryConfig;
use opentelemetry::propagation::Extractor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::Span as _;
use opentelemetry::trace::SpanKind;
use opentelemetry::trace::Status;
use opentelemetry::trace::Tracer as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::Sampler;
use opentelemetry_sdk::trace::SdkTracer;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The API's span exporter.
#[derive(Clone)]
pub struct ApiTelemetry {
  provider: SdkTracerProvider,
  tracer: SdkTracer,
  propagator: Arc<TraceContextPropagator>,
}

impl ApiTelemetry {
  /// The exporter `config` asks for, or `None` (no endpoint). Call from
  /// within the tokio runtime that serves the API.
  pub fn start(config: &TelemetryConfig) -> Result<Option<Self>, isola_io::Error> {
    let resource = isola_io::telemetry::resource(config, "isola-control", Vec::new());
    let Some(processor) = isola_io::telemetry::processor(config, &resource)? else {
      return Ok(None);
    };
    let provider = SdkTracerProvider::builder()
      .with_span_processor(processor)
      .with_sampler(Sampler::TraceIdRatioBased(config.ratio()))
      .with_resource(resource)
      .build();
    let tracer = provider.tracer("isola-control");
    tracing::info!(
      endpoint = config.otlp_endpoint.as_deref().unwrap_or_default(),
      sample_ratio = config.ratio(),
      "exporting spans over OTLP"
    );
    Ok(Some(Self {
      provider,
      tracer,
      propagator: Arc::new(TraceContextPropagator::new()),
    }))
  }

  /// Adds the span layer to `router`.
  pub fn layer(&self, router: Router) -> Router {
    router.layer(axum::middleware::from_fn_with_state(self.clone(), span))
  }

  /// Exports what is queued and stops (waits for the receiver: call from
  /// a blocking thread).
  pub fn shutdown(&self) {
    if let Err(e) = self.provider.shutdown() {
      tracing::debug!(error = %e, "spans were not all exported at shutdown");
    }
  }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
  fn get(&self, key: &str) -> Option<&str> {
    self.0.get(key).and_then(|v| v.to_str().ok())
  }
  fn keys(&self) -> Vec<&str> {
    self.0.keys().map(http::HeaderName::as_str).collect()
  }
}

async fn span(State(t): State<ApiTelemetry>, request: Request, next: Next) -> Response {
  let parent = t.propagator.extract(&Headers(request.headers()));
  let route = request
    .extensions()
    .get::<MatchedPath>()
    .map(|m| m.as_str().to_string());
  let method = request.method().to_string();
  let name = match &route {
    Some(route) => format!("{method} {route}"),
    None => method.clone(),
  };
  let mut attributes = vec![
    KeyValue::new("http.request.method", method),
    KeyValue::new("url.path", request.uri().path().to_string()),
  ];
  if let Some(route) = route {
    attributes.push(KeyValue::new("http.route", route));
  }
  let mut span = t
    .tracer
    .span_builder(name)
    .with_kind(SpanKind::Server)
    .with_attributes(attributes)
    .start_with_context(&t.tracer, &parent);
  let response = next.run(request).await;
  let status = response.status();
  span.set_attribute(KeyValue::new(
    "http.response.status_code",
    i64::from(status.as_u16()),
  ));
  if status.is_server_error() {
    span.set_status(Status::error(status.to_string()));
  }
  span.end();
  response
}
