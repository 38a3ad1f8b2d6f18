//! Per-invocation `console.*` capture.

use std::sync::Arc;
use std::time::SystemTime;

use deno_core::op2;
use deno_core::OpState;

use crate::WorkerName;

/// Severity of a log line, as the `console` method that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
  Debug,
  Log,
  Warn,
  Error,
}

impl Level {
  pub fn as_str(self) -> &'static str {
    match self {
      Level::Debug => "debug",
      Level::Log => "log",
      Level::Warn => "warn",
      Level::Error => "error",
    }
  }

  fn from_console(level: u32) -> Self {
    // deno_web's Console: 0 debug, 1 log/info, 2 warn, 3 error.
    match level {
      0 => Level::Debug,
      1 => Level::Log,
      2 => Level::Warn,
      _ => Level::Error,
    }
  }
}

/// One captured line of worker output.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogRecord {
  pub worker: Arc<str>,
  /// The invocation that wrote it; `None` for top-level module code.
  pub invocation: Option<u32>,
  pub level: Level,
  pub timestamp: SystemTime,
  pub message: String,
}

impl LogRecord {
  pub fn new(worker: Arc<str>, invocation: Option<u32>, level: Level, message: String) -> Self {
    Self {
      worker,
      invocation,
      level,
      timestamp: SystemTime::now(),
      message,
    }
  }
}

/// Where captured output goes. Cloned into every isolate of a node.
#[derive(Clone)]
pub struct LogSink(Arc<dyn Fn(LogRecord) + Send + Sync>);

impl LogSink {
  pub fn new(f: impl Fn(LogRecord) + Send + Sync + 'static) -> Self {
    Self(Arc::new(f))
  }

  /// A sink that drops everything.
  pub fn discard() -> Self {
    Self::new(|_| {})
  }

  pub fn emit(&self, record: LogRecord) {
    (self.0)(record)
  }
}

impl std::fmt::Debug for LogSink {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("LogSink")
  }
}

/// `console.*` output; `invocation` is negative outside any invocation.
#[op2(fast)]
pub fn op_isola_log(
  state: &mut OpState,
  #[smi] invocation: i32,
  #[smi] level: u32,
  #[string] message: &str,
) {
  let worker = state.borrow::<WorkerName>().0.clone();
  let message = message.strip_suffix('\n').unwrap_or(message).to_string();
  let record = LogRecord::new(
    worker,
    u32::try_from(invocation).ok(),
    Level::from_console(level),
    message,
  );
  if let Some(id) = record.invocation {
    let mut invocations = crate::invocations(state);
    if invocations.tracing {
      if let Some(trace) = invocations.trace_mut(id) {
        trace.log(record.level, &record.message, record.timestamp);
      }
    }
  }
  state.borrow::<LogSink>().emit(record);
}
