//! `[telemetry]` of `edge.toml` and `control.toml`: where OpenTelemetry
//! spans go (the export itself is `isola_io::telemetry`).

use serde::Deserialize;
use serde::Serialize;

/// `[telemetry]` of `edge.toml` and `control.toml`. Unknown keys are
/// errors.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
  /// Base URL of an OTLP/HTTP receiver (`http://host:4318`); spans go to
  /// its `/v1/traces`. Default: none, and nothing is exported.
  pub otlp_endpoint: Option<String>,
  /// `service.name` of the exported spans. Default: the binary's
  /// (`isola-edge`, `isola-control`).
  pub service_name: Option<String>,
  /// Share of traces exported, 0.0 to 1.0, decided by trace id so a trace
  /// is kept or left out whole. Default: 1.0.
  pub sample_ratio: Option<f64>,
}

impl TelemetryConfig {
  /// Checks the settings; `section` names them in errors
  /// (`edge.toml [telemetry]`).
  pub fn validate(&self, section: &str) -> Result<(), String> {
    if let Some(endpoint) = &self.otlp_endpoint {
      let uri: http::Uri = endpoint.parse().map_err(|e| {
        format!("{section} otlp_endpoint {endpoint:?} is not a URL ({e}); use http://host:port")
      })?;
      if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
          "{section} otlp_endpoint {endpoint:?} must be an http:// URL with a host \
           (an OTLP/HTTP receiver such as http://127.0.0.1:4318; https is not supported)"
        ));
      }
    }
    if let Some(ratio) = self.sample_ratio {
      if !(0.0..=1.0).contains(&ratio) {
        return Err(format!(
          "{section} sample_ratio {ratio} is out of range; use a number from 0.0 to 1.0"
        ));
      }
    }
    if self.service_name.as_deref() == Some("") {
      return Err(format!(
        "{section} service_name is empty; leave it out for the default"
      ));
    }
    Ok(())
  }

  /// The share of traces to export.
  pub fn ratio(&self) -> f64 {
    self.sample_ratio.unwrap_or(1.0)
  }

  /// Whether the trace `trace_id` is exported: the same rule as
  /// OpenTelemetry's trace-id-ratio sampler (the id's low 64 bits against
  /// the ratio), so every process keeps or leaves out the same traces.
  pub fn samples(&self, trace_id: u128) -> bool {
    let ratio = self.ratio();
    if ratio >= 1.0 {
      return true;
    }
    let x = (trace_id as u64) >> 1;
    x < (ratio * (1u64 << 63) as f64) as u64
  }

  /// Where spans go: the endpoint's `/v1/traces`.
  pub fn traces_url(&self) -> Option<String> {
    let base = self.otlp_endpoint.as_deref()?;
    Some(format!("{}/v1/traces", base.trim_end_matches('/')))
  }
}
