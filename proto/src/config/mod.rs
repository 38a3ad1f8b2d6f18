//! Settings files, parsed and checked without IO: [`edge`] (`edge.toml`)
//! and [`telemetry`] (the `[telemetry]` section both binaries share), and
//! [`from_toml`], the one TOML reader whose errors name the line.

pub mod edge;
pub mod telemetry;

pub use telemetry::TelemetryConfig;

/// `text` as TOML into `T`; the error names the line (and serde's message
/// names the key), for every settings file of both binaries.
pub fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
  toml::from_str(text).map_err(|e| {
    let line = e
      .span()
      .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    match line {
      Some(line) => format!("line {line}: {}", e.message()),
      None => e.message().to_string(),
    }
  })
}
