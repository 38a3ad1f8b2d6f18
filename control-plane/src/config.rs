//! `control.toml`: the control plane's settings file for `serve` (and
//! `billing report`). Every key is optional; a command-line flag beats the
//! file, and the file beats the default.
//!
//! ```toml
//! api = "0.0.0.0:8700"
//! quic = "0.0.0.0:8701"
//! cron_catch_up = 300
//!
//! [billing]
//! currency = "EUR"
//! per_million_requests = "0.30"
//! per_million_cpu_ms = "0.02"
//! per_gb_egress = "0.05"
//! included_requests = 10000000
//! per_million_kv_reads = "0.50"
//! per_million_queue_operations = "0.40"
//! included_kv_reads = 10000000
//!
//! [limits]            # what accounts may set; an admin raises one account's
//! cpu_ms = 60000
//! memory_mb = 256
//!
//! [rate_limit]        # per API token
//! per_second = 100
//! burst = 500
//!
//! [telemetry]
//! otlp_endpoint = "http://127.0.0.1:4318"
//!
//! [storage]
//! blobs = "s3://isola-fleet/blobs"   # or a path; default DATA_DIR/blobs
//! ```

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use isola_proto::manifest::LimitsSpec;

use crate::api::RateLimit;
use crate::billing::PriceSheet;
use crate::blobs::Location;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
  /// REST API address. Default: 127.0.0.1:8700.
  pub api: Option<SocketAddr>,
  /// QUIC address edges connect to. Default: 127.0.0.1:8701.
  pub quic: Option<SocketAddr>,
  /// Seconds a cron tick missed while down may be late. Default: 300.
  pub cron_catch_up: Option<u64>,
  pub billing: PriceSheet,
  /// What every account's uploads may set (the keys of a version's
  /// `limits`); keys left out keep the built-in ceilings (CPU 30 s, memory
  /// 128 MiB, ...: `LimitsSpec::default_ceilings`). An admin raises one
  /// account's with `PUT /v1/accounts/{id}/limits`.
  pub limits: LimitsSpec,
  /// Requests per token. Default: 100/s with bursts of 500.
  pub rate_limit: RateLimit,
  /// OpenTelemetry export of the API's spans (`otlp_endpoint`,
  /// `service_name` — default `isola-control` —, `sample_ratio` — default
  /// 1.0). Off by default.
  pub telemetry: isola_io::telemetry::TelemetryConfig,
  pub storage: StorageConfig,
}

/// `[storage]`: where module bytes live.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
  /// The blob store: a path, `file:///PATH` or `s3://BUCKET/PREFIX` (AWS
  /// variables give endpoint, region and credentials). Default:
  /// `DATA_DIR/blobs`.
  #[serde(deserialize_with = "blobs_location")]
  pub blobs: Option<Location>,
}

/// A bad value is an error on its line, saying how to fix it.
fn blobs_location<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Location>, D::Error> {
  let value = String::deserialize(d)?;
  value
    .parse()
    .map(Some)
    .map_err(|e| serde::de::Error::custom(format!("blobs {value:?}: {e}")))
}

impl ControlConfig {
  /// The ceilings accounts get: the built-in ones overlaid by `[limits]`.
  pub fn ceilings(&self) -> LimitsSpec {
    LimitsSpec::default_ceilings().overlaid(&self.limits)
  }
}

/// Why `control.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("cannot read {path}")]
  Read {
    path: String,
    #[source]
    source: std::io::Error,
  },
  #[error("{path}: {message}")]
  Invalid { path: String, message: String },
}

impl ControlConfig {
  pub fn load(path: &Path) -> Result<Self, Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
      path: shown.clone(),
      source,
    })?;
    Self::parse(&text).map_err(|message| Error::Invalid {
      path: shown,
      message,
    })
  }

  /// Parses the file's text; the error names the line and the key.
  pub fn parse(text: &str) -> Result<Self, String> {
    let config: Self = from_toml(text)?;
    config
      .limits
      .validate()
      .map_err(|e| format!("[limits]: {e}"))?;
    config.telemetry.validate("[telemetry]")?;
    Ok(config)
  }
}

/// The one TOML reader whose errors name the line (`isola_proto::config`).
pub(crate) use isola_proto::config::from_toml;

#[cfg(test)]
mod tests {
  use std::str::FromStr;

  use rust_decimal::Decimal;

  use super::*;

  #[test]
  fn a_file_sets_addresses_and_prices_and_unknown_keys_are_named() {
    let c = ControlConfig::parse(
      "api = \"0.0.0.0:9000\"\n[billing]\ncurrency = \"EUR\"\nper_million_requests = \"0.30\"\nincluded_requests = 5\n",
    )
    .unwrap();
    assert_eq!(c.api, Some("0.0.0.0:9000".parse().unwrap()));
    assert_eq!(
      c.billing.per_million_requests,
      Decimal::from_str("0.30").unwrap()
    );
    assert_eq!(c.billing.included_requests, 5);
    assert_eq!(c.billing.per_gb_egress, Decimal::ZERO);
    let err = ControlConfig::parse("[billing]\nper_million_request = \"1\"\n").unwrap_err();
    assert!(
      err.starts_with("line 2:") && err.contains("per_million_request"),
      "{err}"
    );
    assert_eq!(ControlConfig::parse("").unwrap(), ControlConfig::default());
    let c = ControlConfig::parse(
      "[billing]\nper_million_kv_reads = \"0.50\"\nper_million_kv_writes = \"5\"\n\
       per_million_kv_deletes = \"5\"\nper_million_kv_lists = \"5\"\n\
       per_million_queue_operations = \"0.40\"\nincluded_kv_reads = 10000000\n\
       included_queue_operations = 1000000\n",
    )
    .unwrap();
    let b = &c.billing;
    assert_eq!(b.per_million_kv_reads, Decimal::from_str("0.50").unwrap());
    assert_eq!(b.per_million_kv_lists, Decimal::from(5));
    assert_eq!(
      b.per_million_queue_operations,
      Decimal::from_str("0.4").unwrap()
    );
    assert_eq!(
      (
        b.included_kv_reads,
        b.included_kv_writes,
        b.included_queue_operations
      ),
      (10_000_000, 0, 1_000_000)
    );
    let err = ControlConfig::parse("[billing]\nper_million_kv_read = \"1\"\n").unwrap_err();
    assert!(err.contains("per_million_kv_read"), "{err}");
    let t =
      ControlConfig::parse("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n").unwrap();
    assert_eq!(
      t.telemetry.otlp_endpoint.as_deref(),
      Some("http://127.0.0.1:4318")
    );
    let err = ControlConfig::parse("[telemetry]\notlp_endpont = \"http://a\"\n").unwrap_err();
    assert!(err.contains("otlp_endpont"), "{err}");
    let err = ControlConfig::parse("[telemetry]\nsample_ratio = 2.0\n").unwrap_err();
    assert!(err.contains("0.0 to 1.0"), "{err}");
  }

  #[test]
  fn storage_names_the_blob_store_and_a_bad_one_is_an_error_on_its_line() {
    let c = ControlConfig::parse("[storage]\nblobs = \"s3://isola-fleet/prod\"\n").unwrap();
    assert_eq!(
      c.storage.blobs,
      Some(Location::S3 {
        bucket: "isola-fleet".into(),
        prefix: "prod".into()
      })
    );
    assert_eq!(ControlConfig::parse("").unwrap().storage.blobs, None);
    let err =
      ControlConfig::parse("api = \"127.0.0.1:1\"\n[storage]\nblobs = \"s4://x\"\n").unwrap_err();
    assert!(
      err.starts_with("line 3:")
        && err.contains("blobs \"s4://x\": unknown scheme \"s4\"; use a path"),
      "{err}"
    );
    let err = ControlConfig::parse("[storage]\nblob = \"x\"\n").unwrap_err();
    assert!(err.starts_with("line 2:") && err.contains("blob"), "{err}");
  }
}
