//! Prints captured worker logs for people.

use std::io::Write as _;

use isola_runtime::Level;
use isola_runtime::LogRecord;
use isola_runtime::LogSink;

/// One line per record: `time worker level message`; multi-line messages
/// (stacks) are indented under it.
pub fn format_record(record: &LogRecord) -> String {
  let time = humantime::format_rfc3339_millis(record.timestamp);
  let level = match record.level {
    Level::Debug => "debug",
    Level::Log => "log  ",
    Level::Warn => "warn ",
    Level::Error => "error",
  };
  let message = record.message.replace('\n', "\n    ");
  format!("{time} {} {level} {message}", record.worker)
}

/// Prints logs to stdout (debug and log) and stderr (warn and error).
pub fn stdio_sink() -> LogSink {
  LogSink::new(|record| {
    let line = format_record(&record);
    if record.level >= Level::Warn {
      let _ = writeln!(std::io::stderr().lock(), "{line}");
    } else {
      let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
  })
}
