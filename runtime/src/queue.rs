//! Queue consumer runs as the pool takes and reports them.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use isola_ext::Decisions;
use isola_proto::queue::Batch;
use isola_proto::queue::Disposition;

use crate::bundle::Bundle;
use crate::error::Error;
use crate::limits::Outcome;
use crate::pool::Runtime;
use crate::worker::Call;
use crate::worker::WorkerConfig;
use crate::WorkerKey;

/// How a consumer run went.
#[derive(Clone, Debug)]
pub struct QueueRun {
  pub outcome: Outcome,
  /// Per message of the batch, in order: its disposition (explicit, or
  /// implied by the outcome).
  pub messages: Vec<(String, Disposition)>,
  pub cpu: Duration,
  pub wall: Duration,
  /// The exception text / limit message if not ok (for logs).
  pub error: Option<String>,
}

impl Runtime {
  /// Runs the `queue` handler of worker `key` on one batch, as
  /// [`Runtime::scheduled`] runs a cron tick (same loading, fairness,
  /// metering and limits), and waits until its handler and every
  /// `waitUntil` promise settled. `Err` only when the run could not start
  /// (the worker does not load, is throttled, or has no queue handler).
  pub async fn queue(
    &self,
    key: &WorkerKey,
    source: impl FnOnce() -> Result<(Bundle, WorkerConfig), Error>,
    batch: Batch,
  ) -> Result<QueueRun, Error> {
    let start = Instant::now();
    let ids: Vec<String> = batch.messages.iter().map(|m| m.id.clone()).collect();
    let decisions = Arc::new(Mutex::new(Decisions::new(ids.len())));
    let call = Call::Queue {
      batch,
      decisions: decisions.clone(),
    };
    let (error, invocation) = match self.invoke_raw(key, source, call, 1).await? {
      (Ok(_), invocation) => (None, invocation),
      (Err(e), _) if e.is_code_error() => return Err(e),
      (Err(e), invocation) => (Some(e), invocation),
    };
    let usage = invocation.usage().await;
    self.shared.prune(key);
    let outcome = match (usage.as_ref().and_then(|u| u.outcome), &error) {
      (Some(outcome), _) => outcome,
      (None, None) => Outcome::Ok,
      (None, Some(e)) => e.limit().unwrap_or(if e.is_exception() {
        Outcome::Exception
      } else {
        Outcome::Stopped
      }),
    };
    let dispositions = decisions
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .resolve(outcome == Outcome::Ok);
    Ok(QueueRun {
      outcome,
      messages: ids.into_iter().zip(dispositions).collect(),
      cpu: Duration::from_nanos(usage.as_ref().map_or(0, |u| u.cpu_ns)),
      wall: start.elapsed(),
      error: error.map(|e| e.detail()),
    })
  }
}
