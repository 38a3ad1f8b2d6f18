//! OpenTelemetry export both binaries share: the `[telemetry]` settings
//! (`isola_proto::config::TelemetryConfig`), and a batch span processor that sends spans as OTLP over HTTP/protobuf
//! to `<otlp_endpoint>/v1/traces`. Off unless an endpoint is configured.
//! Export never blocks the caller: spans wait in the processor's bounded
//! queue (spans past it are dropped and counted by the processor) and its
//! own thread posts them through this process's tokio runtime.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_otlp::WithHttpConfig;
use opentelemetry_sdk::trace::BatchConfigBuilder;
use opentelemetry_sdk::trace::BatchSpanProcessor;
use opentelemetry_sdk::trace::SpanProcessor;
use opentelemetry_sdk::Resource;

/// Spans held for export at most; past it new spans are dropped.
pub const MAX_QUEUED_SPANS: usize = 8192;
/// Spans per OTLP request at most.
pub const MAX_BATCH_SPANS: usize = 512;
/// A batch leaves at least this often.
pub const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// One export may take this long; past it the batch is given up.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

pub use isola_proto::config::TelemetryConfig;

/// The resource of this process's spans: `config`'s service name, else
/// `default_name`.
pub fn resource(
  config: &TelemetryConfig,
  default_name: &str,
  attributes: Vec<KeyValue>,
) -> Resource {
  Resource::builder_empty()
    .with_service_name(
      config
        .service_name
        .clone()
        .unwrap_or_else(|| default_name.to_string()),
    )
    .with_attributes(attributes)
    .build()
}
/// A batch span processor exporting to `config`'s endpoint with `resource`;
/// `None` when no endpoint is configured. Call from within a tokio runtime:
/// exports run on it.
pub fn processor(
  config: &TelemetryConfig,
  resource: &Resource,
) -> Result<Option<BatchSpanProcessor>, crate::Error> {
  let Some(url) = config.traces_url() else {
    return Ok(None);
  };
  let client = TokioClient::new(tokio::runtime::Handle::current());
  let exporter = opentelemetry_otlp::SpanExporter::builder()
    .with_http()
    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
    .with_endpoint(url)
    .with_timeout(EXPORT_TIMEOUT)
    .with_http_client(client)
    .build()
    .map_err(|e| crate::Error::Telemetry(e.to_string()))?;
  let mut processor = BatchSpanProcessor::builder(exporter)
    .with_batch_config(
      BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUED_SPANS)
        .with_max_export_batch_size(MAX_BATCH_SPANS)
        .with_scheduled_delay(EXPORT_EVERY)
        .build(),
    )
    .build();
  processor.set_resource(resource);
  Ok(Some(processor))
}

/// The OTLP exporter's HTTP client: hyper on this process's tokio runtime.
/// The batch processor's thread waits for each request without running
/// it, so the request is spawned onto the runtime.
#[derive(Debug, Clone)]
struct TokioClient {
  handle: tokio::runtime::Handle,
  client: hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
  >,
}

impl TokioClient {
  fn new(handle: tokio::runtime::Handle) -> Self {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
      .build_http();
    Self { handle, client }
  }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for TokioClient {
  async fn send_bytes(
    &self,
    request: http::Request<Bytes>,
  ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
    let client = self.client.clone();
    let task = self.handle.spawn(async move {
      let (parts, body) = request.into_parts();
      let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
      let response = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request))
        .await
        .map_err(|_| "the OTLP receiver did not answer in time")??;
      let (parts, body) = response.into_parts();
      let body = tokio::time::timeout(EXPORT_TIMEOUT, body.collect())
        .await
        .map_err(|_| "the OTLP receiver did not answer in time")??
        .to_bytes();
      Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
    });
    task.await?
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn settings_are_checked_with_the_fix_in_the_message() {
    let ok = TelemetryConfig {
      otlp_endpoint: Some("http://127.0.0.1:4318/".into()),
      ..Default::default()
    };
    assert_eq!(ok.validate("x"), Ok(()));
    assert_eq!(
      ok.traces_url().as_deref(),
      Some("http://127.0.0.1:4318/v1/traces")
    );
    assert_eq!(ok.ratio(), 1.0);
    let https = TelemetryConfig {
      otlp_endpoint: Some("https://collector:4318".into()),
      ..Default::default()
    };
    assert!(https
      .validate("edge.toml [telemetry]")
      .unwrap_err()
      .contains("http://"));
    let ratio = TelemetryConfig {
      sample_ratio: Some(1.5),
      ..Default::default()
    };
    assert!(ratio.validate("x").unwrap_err().contains("0.0 to 1.0"));
    assert_eq!(TelemetryConfig::default().traces_url(), None);
  }
}
