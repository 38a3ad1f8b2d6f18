//! Scheduled (cron) runs as the pool takes and reports them.

use std::time::Duration;

use crate::limits::Outcome;

/// One cron tick for a worker's scheduled handler.
#[derive(Clone, Debug)]
pub struct ScheduledEvent {
  /// The schedule, byte for byte as configured (`controller.cron`).
  pub cron: String,
  /// ms since the Unix epoch: the tick's nominal time
  /// (`controller.scheduledTime`), not when the run starts.
  pub scheduled_time: i64,
  /// CPU limit of this run; None: the worker's `Limits::scheduled_cpu`
  /// (default 30 s).
  pub cpu_limit: Option<Duration>,
}

/// How a scheduled run went.
#[derive(Clone, Debug)]
pub struct ScheduledRun {
  pub outcome: Outcome,
  /// The handler called `controller.noRetry()`.
  pub no_retry: bool,
  pub cpu: Duration,
  pub wall: Duration,
  /// The exception text / limit message if not ok (for logs).
  pub error: Option<String>,
}
