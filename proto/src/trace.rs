//! Trace events: one per invocation (fetch, scheduled, queue, RPC), for
//! live tail, invocation logs and analytics. Shaped after the messages of
//! `wrangler tail`. Unlike usage, events are best effort: an edge buffers a
//! bounded number, samples when it overflows, and counts what it drops.

use serde::Deserialize;
use serde::Serialize;

/// Log bytes kept per invocation; past it the event says `truncated`.
pub const MAX_LOG_BYTES: usize = 128 * 1024;

/// What started an invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum EventInfo {
  Fetch {
    method: String,
    url: String,
    /// Selected request headers (lowercase names), as tail shows them.
    headers: Vec<(String, String)>,
    /// The client's address, if the edge knows it.
    client_ip: Option<String>,
    /// The response status, if one was sent.
    status: Option<u16>,
  },
  Scheduled {
    cron: String,
    /// ms since the Unix epoch.
    scheduled_time: i64,
  },
  Queue {
    queue: String,
    batch_size: u32,
  },
  /// A service binding's RPC call.
  Rpc {
    method: String,
  },
}

/// One `console.*` call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
  /// `log`, `debug`, `info`, `warn` or `error`.
  pub level: String,
  pub message: String,
  /// ms since the Unix epoch.
  pub timestamp: i64,
}

/// An uncaught exception of the invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionInfo {
  pub name: String,
  pub message: String,
  pub stack: Option<String>,
  /// ms since the Unix epoch.
  pub timestamp: i64,
}

/// One invocation, as observers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
  /// Edge name of the worker.
  pub worker: String,
  /// Manifest hash of the version.
  pub version: String,
  /// The edge it ran on (filled in by the edge before shipping).
  pub edge: String,
  /// When the invocation started, ms since the Unix epoch.
  pub timestamp: i64,
  pub event: EventInfo,
  /// `ok`, `exception`, `exceededCpu`, `exceededMemory`, `exceededWall`,
  /// `exceededResources`, `canceled`, `unknown` (tail's names).
  pub outcome: String,
  pub cpu_us: u64,
  pub wall_us: u64,
  pub logs: Vec<LogLine>,
  pub exceptions: Vec<ExceptionInfo>,
  /// Logs past [`MAX_LOG_BYTES`] were left out.
  pub truncated: bool,
}

/// Events shipped together on the edge's event stream, with how many the
/// edge dropped since the last batch (buffer full).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceBatch {
  pub events: Vec<TraceEvent>,
  pub dropped: u64,
}
