use std::fmt;

use isola_ext::LimitExceeded;
use isola_ext::Outcome;

/// Why a worker could not be loaded or could not answer.
///
/// Opaque on purpose: match on the `is_*` helpers, print it for people.
#[derive(Debug)]
pub struct Error {
  kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ErrorKind {
  /// A module could not be found, read or compiled.
  #[error("{0}")]
  Module(String),
  /// The main module threw while it was evaluated.
  #[error("the worker threw while starting: {0}")]
  Startup(String),
  /// The main module exports no handler (for this kind of invocation).
  #[error("{0}")]
  NoHandler(String),
  /// The handler threw; details went to the worker's log.
  #[error("the worker threw an exception (see its log)")]
  Exception(#[source] JsException),
  /// A limit ended the invocation.
  #[error(transparent)]
  Limit(LimitExceeded),
  /// The isolate had already been stopped (a limit, or a failure) when the
  /// invocation came or before it answered; counts as [`Outcome::Stopped`].
  #[error("{0}")]
  Halted(String),
  /// The isolate is gone (shut down, or its event loop failed).
  #[error("the worker isolate stopped: {0}")]
  Stopped(String),
  /// A thread or an isolate of the runtime could not be started.
  #[error("the worker isolate stopped: {what}: {source}")]
  Start {
    what: &'static str,
    #[source]
    source: isola_ext::BoxError,
  },
  /// Tenant fairness: the worker's invocations keep hitting `limit`, so it
  /// is not run until its debt drains (see [`crate::Fairness`]).
  #[error(
    "throttled: this worker's invocations keep exceeding their {} limit; retry after {} s",
    limit_name(*.limit),
    retry_secs(*.retry_after)
  )]
  Throttled {
    limit: Outcome,
    retry_after: std::time::Duration,
  },
  /// Reading a dev worker's files failed.
  #[error("{what}: {source}")]
  Io {
    what: String,
    #[source]
    source: std::io::Error,
  },
}

fn limit_name(limit: Outcome) -> &'static str {
  match limit {
    Outcome::MemoryLimit => "memory",
    _ => "CPU",
  }
}

/// Whole seconds, rounded up, as `Retry-After` takes them.
pub(crate) fn retry_secs(d: std::time::Duration) -> u64 {
  d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A JS exception as the worker's log shows it: `Name: message` and the
/// stack, `file:///` dropped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct JsException(pub(crate) String);

impl Error {
  pub(crate) fn new(kind: ErrorKind) -> Self {
    Self { kind }
  }

  /// The worker's code is at fault (bad module, no handler, top-level throw):
  /// fix the code and upload again.
  pub fn is_code_error(&self) -> bool {
    matches!(
      self.kind,
      ErrorKind::Module(_) | ErrorKind::Startup(_) | ErrorKind::NoHandler(_)
    )
  }

  /// The handler threw, rejected or returned a non-Response.
  pub fn is_exception(&self) -> bool {
    matches!(self.kind, ErrorKind::Exception(_))
  }

  /// Which limit ended the invocation, if one did.
  pub fn limit(&self) -> Option<Outcome> {
    match &self.kind {
      ErrorKind::Limit(limit) => Some(limit.outcome()),
      ErrorKind::Halted(_) => Some(Outcome::Stopped),
      _ => None,
    }
  }

  /// When to retry, if the worker was not run because it is throttled for
  /// tenant fairness.
  pub fn throttled(&self) -> Option<std::time::Duration> {
    match &self.kind {
      ErrorKind::Throttled { retry_after, .. } => Some(*retry_after),
      _ => None,
    }
  }

  /// The text for logs: an exception's message and stack, else the
  /// `Display` text.
  pub(crate) fn detail(&self) -> String {
    match &self.kind {
      ErrorKind::Exception(JsException(text)) => text.clone(),
      _ => self.to_string(),
    }
  }

  /// The isolate stopped and will not answer again.
  pub fn is_stopped(&self) -> bool {
    matches!(self.kind, ErrorKind::Stopped(_) | ErrorKind::Start { .. })
  }
}

impl fmt::Display for Error {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    fmt::Display::fmt(&self.kind, f)
  }
}

impl std::error::Error for Error {
  fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
    self.kind.source()
  }
}

impl From<ErrorKind> for Error {
  fn from(kind: ErrorKind) -> Self {
    Self::new(kind)
  }
}

/// Renders a JS error as `Name: message` plus ` at module:line:column` for
/// the innermost frame in the worker's own code, with `file:///` dropped so
/// the location reads like the user's file tree.
pub(crate) fn describe_js_error(err: &deno_core::error::JsError) -> String {
  let mut out = err.exception_message.clone();
  if let Some(frame) = err.frames.first() {
    if let (Some(file), Some(line), Some(col)) =
      (&frame.file_name, frame.line_number, frame.column_number)
    {
      let file = crate::specifier::display_specifier(file);
      out.push_str(&format!("\n    at {file}:{line}:{col}"));
      for frame in err.frames.iter().skip(1).take(8) {
        if let (Some(file), Some(line), Some(col)) =
          (&frame.file_name, frame.line_number, frame.column_number)
        {
          let file = crate::specifier::display_specifier(file);
          let func = frame.function_name.as_deref().unwrap_or("<anonymous>");
          out.push_str(&format!("\n    at {func} ({file}:{line}:{col})"));
        }
      }
    }
  }
  if let Some(line) = &err.source_line {
    out.push_str(&format!("\n    {}", line.trim()));
  }
  out
}

/// Turns a deno_core error from module loading/evaluation into a readable
/// message with module, line and column.
pub(crate) fn describe_core_error(err: &deno_core::error::CoreError) -> String {
  use deno_core::error::CoreErrorKind;
  match &*err.0 {
    CoreErrorKind::Js(js) => describe_js_error(js),
    _ => crate::specifier::clean_message(&err.to_string()),
  }
}
