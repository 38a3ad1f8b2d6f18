//! What observers (live tail, invocation logs) see of one invocation,
//! collected while it runs. Only kept when the node ships trace events:
//! otherwise nothing here is ever built.

use std::time::SystemTime;

use isola_proto::trace::EventInfo;
use isola_proto::trace::ExceptionInfo;
use isola_proto::trace::LogLine;
use isola_proto::trace::MAX_LOG_BYTES;

use crate::log::Level;

/// One invocation's event info, logs and exceptions so far.
#[derive(Clone, Debug)]
pub struct Trace {
  pub event: EventInfo,
  pub logs: Vec<LogLine>,
  pub exceptions: Vec<ExceptionInfo>,
  /// Log lines past [`MAX_LOG_BYTES`] were left out.
  pub truncated: bool,
  log_bytes: usize,
}

impl Trace {
  pub fn new(event: EventInfo) -> Self {
    Self {
      event,
      logs: Vec::new(),
      exceptions: Vec::new(),
      truncated: false,
      log_bytes: 0,
    }
  }

  /// Keeps a `console.*` line, unless the invocation's log bytes would pass
  /// [`MAX_LOG_BYTES`]: then it and every later line are left out (a log
  /// with holes in it would mislead more than one cut short).
  pub fn log(&mut self, level: Level, message: &str, at: SystemTime) {
    if self.truncated {
      return;
    }
    let size = message.len();
    if self.log_bytes + size > MAX_LOG_BYTES {
      self.truncated = true;
      return;
    }
    self.log_bytes += size;
    self.logs.push(LogLine {
      level: level.as_str().to_string(),
      message: message.to_string(),
      timestamp: epoch_ms(at),
    });
  }

  /// Notes an uncaught exception (or a limit that ended the invocation).
  pub fn exception(&mut self, name: &str, message: &str, stack: Option<&str>) {
    self.exceptions.push(ExceptionInfo {
      name: name.to_string(),
      message: message.to_string(),
      stack: stack.map(str::to_string),
      timestamp: epoch_ms(SystemTime::now()),
    });
  }

  /// The response status of a fetch invocation.
  pub fn set_status(&mut self, code: u16) {
    if let EventInfo::Fetch { status, .. } = &mut self.event {
      *status = Some(code);
    }
  }
}

/// ms since the Unix epoch (0 before it).
pub fn epoch_ms(t: SystemTime) -> i64 {
  t.duration_since(SystemTime::UNIX_EPOCH)
    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
  use super::*;

  fn rpc() -> Trace {
    Trace::new(EventInfo::Rpc { method: "m".into() })
  }

  #[test]
  fn logs_stop_at_the_byte_cap_and_say_so() {
    let mut trace = rpc();
    let line = "x".repeat(1000);
    let now = SystemTime::now();
    for _ in 0..MAX_LOG_BYTES / 1000 {
      trace.log(Level::Log, &line, now);
    }
    assert!(!trace.truncated);
    // One more full line does not fit; a later short one is left out too.
    trace.log(Level::Warn, &line, now);
    trace.log(Level::Warn, "short", now);
    assert!(trace.truncated);
    assert_eq!(trace.logs.len(), MAX_LOG_BYTES / 1000);
    assert!(trace.logs.iter().all(|l| l.level == "log"));
  }

  #[test]
  fn only_a_fetch_has_a_status() {
    let mut trace = rpc();
    trace.set_status(200);
    assert_eq!(trace.event, EventInfo::Rpc { method: "m".into() });
    let mut fetch = Trace::new(EventInfo::Fetch {
      method: "GET".into(),
      url: "http://a.test/".into(),
      headers: vec![],
      client_ip: None,
      status: None,
    });
    fetch.set_status(204);
    assert!(matches!(
      fetch.event,
      EventInfo::Fetch {
        status: Some(204),
        ..
      }
    ));
  }
}
