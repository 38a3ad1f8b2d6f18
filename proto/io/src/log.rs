//! The operator log of both binaries: `tracing` events, filtered by one
//! variable, `ISOLA_LOG` (`tracing-subscriber`'s `EnvFilter` syntax, e.g.
//! `ISOLA_LOG=debug` or `ISOLA_LOG=isola_edge=debug,warn`), written to
//! stderr as text for people or as JSON lines for machines.

use std::io::IsTerminal as _;

/// The variable that filters the log.
pub const FILTER_VAR: &str = "ISOLA_LOG";

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
  /// One human-readable line per event. The default.
  #[default]
  Text,
  /// One JSON object per line: `timestamp`, `level`, `target`, `fields`
  /// (with `message`), for log shippers and tests.
  Json,
}

/// Installs the process-wide subscriber. `default_filter` applies when
/// `ISOLA_LOG` is unset or invalid (`info` shows what an operator needs:
/// listening addresses, deployments applied, peers connecting).
pub fn init(format: LogFormat, default_filter: &str) {
  let filter = tracing_subscriber::EnvFilter::try_from_env(FILTER_VAR)
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
  // Colour only for a terminal: piped or redirected logs stay plain text.
  let builder = tracing_subscriber::fmt()
    .with_env_filter(filter)
    .with_ansi(std::io::stderr().is_terminal())
    .with_writer(std::io::stderr);
  // A second init (tests that start a node twice in one process) keeps the
  // first subscriber.
  let _ = match format {
    LogFormat::Text => builder.try_init(),
    LogFormat::Json => builder.json().try_init(),
  };
}
