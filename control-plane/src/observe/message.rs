//! An event as tail and the logs API show it: the shape of `wrangler tail`'s
//! messages, so tools written for it read ours.

use std::collections::BTreeMap;

use isola_proto::names::split_edge_worker_name;
use isola_proto::trace::EventInfo;
use isola_proto::trace::TraceEvent;
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TailMessage {
  /// `ok`, `exception`, `exceededCpu`, `exceededMemory`, `exceededWall`,
  /// `exceededResources`, `canceled` or `unknown`.
  pub outcome: String,
  /// When the invocation started, ms since the Unix epoch.
  pub event_timestamp: i64,
  /// The worker's name in its account.
  pub script_name: String,
  pub script_version: ScriptVersion,
  pub event: TailEvent,
  pub logs: Vec<TailLog>,
  pub exceptions: Vec<TailException>,
  /// ms.
  pub cpu_time: f64,
  /// ms.
  pub wall_time: f64,
  /// The edge that ran it.
  pub edge: String,
  /// Logs past 128 KiB were left out.
  pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScriptVersion {
  /// The version's hash (as in `GET /v1/workers/{name}/versions`).
  pub id: String,
}

/// What started the invocation; one of the four shapes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TailEvent {
  Fetch {
    request: TailRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response: Option<TailResponse>,
  },
  #[serde(rename_all = "camelCase")]
  Scheduled { cron: String, scheduled_time: i64 },
  #[serde(rename_all = "camelCase")]
  Queue { queue: String, batch_size: u32 },
  #[serde(rename_all = "camelCase")]
  Rpc { rpc_method: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TailRequest {
  pub url: String,
  pub method: String,
  /// The headers the edge selected, lowercase names.
  pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TailResponse {
  pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TailLog {
  /// `log`, `debug`, `info`, `warn` or `error`.
  pub level: String,
  /// The `console.*` arguments, as one formatted string.
  pub message: Vec<String>,
  /// ms since the Unix epoch.
  pub timestamp: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TailException {
  pub name: String,
  pub message: String,
  pub stack: Option<String>,
  /// ms since the Unix epoch.
  pub timestamp: i64,
}

impl From<&TraceEvent> for TailMessage {
  fn from(e: &TraceEvent) -> Self {
    Self::from_stored(StoredMessage::from(e), LogColumns::from(e))
  }
}

/// What an invocation log row stores of its [`TailMessage`]: all but the
/// five fields the row's own columns hold (outcome, timestamp, worker,
/// version, edge), empty lists and `truncated: false` left out, so that
/// each row (written twice: to the WAL, then its page) is about half the
/// bytes. A row written whole by an older control plane reads the same:
/// its extra fields are ignored and the columns hold the same values.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
  event: TailEvent,
  #[serde(default, skip_serializing_if = "Vec::is_empty")]
  logs: Vec<TailLog>,
  #[serde(default, skip_serializing_if = "Vec::is_empty")]
  exceptions: Vec<TailException>,
  cpu_time: f64,
  wall_time: f64,
  #[serde(default, skip_serializing_if = "is_false")]
  truncated: bool,
}

fn is_false(b: &bool) -> bool {
  !*b
}

impl From<&TraceEvent> for StoredMessage {
  fn from(e: &TraceEvent) -> Self {
    let event = match &e.event {
      EventInfo::Fetch {
        method,
        url,
        headers,
        status,
        ..
      } => TailEvent::Fetch {
        request: TailRequest {
          url: url.clone(),
          method: method.clone(),
          headers: headers.iter().cloned().collect(),
        },
        response: status.map(|status| TailResponse { status }),
      },
      EventInfo::Scheduled {
        cron,
        scheduled_time,
      } => TailEvent::Scheduled {
        cron: cron.clone(),
        scheduled_time: *scheduled_time,
      },
      EventInfo::Queue { queue, batch_size } => TailEvent::Queue {
        queue: queue.clone(),
        batch_size: *batch_size,
      },
      EventInfo::Rpc { method } => TailEvent::Rpc {
        rpc_method: method.clone(),
      },
    };
    Self {
      event,
      logs: e
        .logs
        .iter()
        .map(|l| TailLog {
          level: l.level.clone(),
          message: vec![l.message.clone()],
          timestamp: l.timestamp,
        })
        .collect(),
      exceptions: e
        .exceptions
        .iter()
        .map(|x| TailException {
          name: x.name.clone(),
          message: x.message.clone(),
          stack: x.stack.clone(),
          timestamp: x.timestamp,
        })
        .collect(),
      cpu_time: e.cpu_us as f64 / 1000.0,
      wall_time: e.wall_us as f64 / 1000.0,
      truncated: e.truncated,
    }
  }
}

impl StoredMessage {
  /// What a log search looks through, one item a line: the URL, each log
  /// line, each exception's name and message. Chunks store it empty (it
  /// repeats the message), so a search makes it here; rows kept before
  /// chunks (moved in by the migration) hold it as this made it.
  pub fn search_text(&self) -> String {
    let mut text = String::new();
    if let TailEvent::Fetch { request, .. } = &self.event {
      text.push_str(&request.url);
      text.push('\n');
    }
    for log in &self.logs {
      log.message.iter().for_each(|m| text.push_str(m));
      text.push('\n');
    }
    for e in &self.exceptions {
      text.push_str(&e.name);
      text.push_str(": ");
      text.push_str(&e.message);
      text.push('\n');
    }
    text
  }
}

/// The columns of an invocation log row that its [`StoredMessage`] leaves
/// out.
#[derive(Debug)]
pub struct LogColumns {
  pub outcome: String,
  pub timestamp: i64,
  /// The worker's name in its account.
  pub worker: String,
  pub version: String,
  pub edge: String,
}

impl From<&TraceEvent> for LogColumns {
  fn from(e: &TraceEvent) -> Self {
    Self {
      outcome: e.outcome.clone(),
      timestamp: e.timestamp,
      worker: split_edge_worker_name(&e.worker)
        .map_or(e.worker.as_str(), |(_, w)| w)
        .to_string(),
      version: e.version.clone(),
      edge: e.edge.clone(),
    }
  }
}

impl TailMessage {
  /// The message a log row holds: its stored part and its columns.
  pub fn from_stored(stored: StoredMessage, columns: LogColumns) -> Self {
    Self {
      outcome: columns.outcome,
      event_timestamp: columns.timestamp,
      script_name: columns.worker,
      script_version: ScriptVersion {
        id: columns.version,
      },
      event: stored.event,
      logs: stored.logs,
      exceptions: stored.exceptions,
      cpu_time: stored.cpu_time,
      wall_time: stored.wall_time,
      edge: columns.edge,
      truncated: stored.truncated,
    }
  }
}

#[cfg(test)]
mod tests {
  use serde_json::json;

  use super::*;
  use crate::observe::filter::tests::fetch;

  #[test]
  fn shaped_like_wrangler_tail() {
    let e = fetch("ok", "GET", "https://a.test/x");
    let v = serde_json::to_value(TailMessage::from(&e)).unwrap();
    assert_eq!(
      v,
      json!({
        "outcome": "ok",
        "eventTimestamp": 1_700_000_000_000i64,
        "scriptName": "api",
        "scriptVersion": {"id": "h1"},
        "event": {
          "request": {"url": "https://a.test/x", "method": "GET", "headers": {"x-user": "alice"}},
          "response": {"status": 200}
        },
        "logs": [{"level": "log", "message": ["hello from the handler"], "timestamp": 1_700_000_000_001i64}],
        "exceptions": [],
        "cpuTime": 1.5,
        "wallTime": 3.0,
        "edge": "edge-0",
        "truncated": false
      })
    );
    let mut cron = e.clone();
    cron.event = EventInfo::Scheduled {
      cron: "*/5 * * * *".into(),
      scheduled_time: 5,
    };
    let v = serde_json::to_value(TailMessage::from(&cron)).unwrap();
    assert_eq!(
      v["event"],
      json!({"cron": "*/5 * * * *", "scheduledTime": 5})
    );
    let mut queue = e.clone();
    queue.event = EventInfo::Queue {
      queue: "jobs".into(),
      batch_size: 3,
    };
    let v = serde_json::to_value(TailMessage::from(&queue)).unwrap();
    assert_eq!(v["event"], json!({"queue": "jobs", "batchSize": 3}));
    let mut rpc = e;
    rpc.event = EventInfo::Rpc {
      method: "add".into(),
    };
    let v = serde_json::to_value(TailMessage::from(&rpc)).unwrap();
    assert_eq!(v["event"], json!({"rpcMethod": "add"}));
  }

  #[test]
  fn a_stored_message_gives_its_search_text_one_item_a_line() {
    let mut full = fetch("exception", "POST", "https://a.test/p?q=1");
    full.logs.push(isola_proto::trace::LogLine {
      level: "warn".into(),
      message: "second line".into(),
      timestamp: 2,
    });
    full.exceptions.push(isola_proto::trace::ExceptionInfo {
      name: "TypeError".into(),
      message: "x is not a function".into(),
      stack: None,
      timestamp: 3,
    });
    let mut bare = fetch("ok", "GET", "https://a.test/");
    bare.logs.clear();
    let mut cron = full.clone();
    cron.event = EventInfo::Scheduled {
      cron: "* * * * *".into(),
      scheduled_time: 5,
    };
    let mut quiet = cron.clone();
    quiet.logs.clear();
    quiet.exceptions.clear();
    let whole = "hello from the handler\nsecond line\nTypeError: x is not a function\n";
    for (e, text) in [
      (full, format!("https://a.test/p?q=1\n{whole}")),
      (bare, "https://a.test/\n".to_string()),
      (cron, whole.to_string()),
      (quiet, String::new()),
    ] {
      // As a search reads it: the message stored, then read back.
      let stored: StoredMessage =
        serde_json::from_str(&serde_json::to_string(&StoredMessage::from(&e)).unwrap()).unwrap();
      assert_eq!(stored.search_text(), text);
    }
  }
}
