//! Queues seen from inside an isolate: producer bindings (`env.Q.send`,
//! `sendBatch`) go through these ops to the node's [`QueueService`]; a
//! consumer run reads its batch and records each `ack()`/`retry()` here,
//! where they outlive the isolate if a limit stops it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::Mutex;

use deno_core::op2;
use deno_core::JsBuffer;
use deno_core::OpState;
use deno_core::ToJsBuffer;
use deno_error::JsErrorBox;
use isola_proto::queue::Batch;
use isola_proto::queue::ContentType;
use isola_proto::queue::Disposition;
use isola_proto::queue::NewMessage;
use isola_proto::queue::SendCall;
use isola_proto::queue::SendReply;
use isola_proto::queue::MAX_DELAY_SECONDS;

use crate::outcome::LimitExceeded;

/// Where a worker's queue producer bindings send: the edge implements it
/// over the control plane, `isola-edge dev` over a local queue.
pub trait QueueService: Send + Sync + 'static {
  /// Stores the messages; `Sent` only once they are durable.
  fn send(&self, call: SendCall) -> Pin<Box<dyn Future<Output = SendReply> + Send + '_>>;
}

/// One isolate's producer bindings (binding name → queue), in its
/// `OpState`.
pub struct QueueBindings {
  /// The worker's name, which the store checks the queue against.
  pub worker: Arc<str>,
  pub queues: BTreeMap<String, String>,
  pub service: Arc<dyn QueueService>,
}

/// What the handler of one consumer run decided, message by message.
/// Shared with whoever runs the batch, so decisions made before a limit
/// stopped the isolate still count.
#[derive(Debug, Default)]
pub struct Decisions {
  each: Vec<Option<Disposition>>,
  all: Option<Disposition>,
}

impl Decisions {
  /// A batch of `n` messages, nothing decided.
  pub fn new(n: usize) -> Self {
    Self {
      each: vec![None; n],
      all: None,
    }
  }

  /// `message.ack()` / `message.retry()`: the first call on a message wins.
  pub fn message(&mut self, index: usize, disposition: Disposition) {
    if let Some(slot @ None) = self.each.get_mut(index) {
      *slot = Some(disposition);
    }
  }

  /// `batch.ackAll()` / `batch.retryAll()`: the first wins, and a message's
  /// own call beats it.
  pub fn batch(&mut self, disposition: Disposition) {
    self.all.get_or_insert(disposition);
  }

  /// Every message's fate: its own decision, the batch's, or (undecided)
  /// acked if the run succeeded and retried if not.
  pub fn resolve(&self, ok: bool) -> Vec<Disposition> {
    let implied = if ok {
      Disposition::Ack
    } else {
      Disposition::Retry(None)
    };
    self
      .each
      .iter()
      .map(|d| d.or(self.all).unwrap_or(implied))
      .collect()
  }
}

/// Consumer runs in flight: their batch until JS takes it, and their
/// decisions.
#[derive(Default)]
struct ConsumerRuns {
  batches: HashMap<u32, Batch>,
  decisions: HashMap<u32, Arc<Mutex<Decisions>>>,
}

/// Hands consumer run `id` its batch and where its decisions go; the
/// runtime calls this before it calls the JS dispatcher.
pub fn start_consumer(
  state: &mut OpState,
  id: u32,
  batch: Batch,
  decisions: Arc<Mutex<Decisions>>,
) {
  let live = crate::invocations(state).ids();
  if !state.has::<ConsumerRuns>() {
    state.put(ConsumerRuns::default());
  }
  let runs = state.borrow_mut::<ConsumerRuns>();
  // Runs that are over are forgotten.
  runs.batches.retain(|id, _| live.contains(id));
  runs.decisions.retain(|id, _| live.contains(id));
  runs.batches.insert(id, batch);
  runs.decisions.insert(id, decisions);
}

#[op2]
#[serde]
pub fn op_isola_queue_bindings(state: &mut OpState) -> Vec<String> {
  state
    .try_borrow::<QueueBindings>()
    .map(|b| b.queues.keys().cloned().collect())
    .unwrap_or_default()
}

/// One message of a send, serialized by JS for its content type.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outgoing {
  body: JsBuffer,
  content_type: String,
  delay_seconds: f64,
}

/// `send` / `sendBatch` of invocation `id`: one subrequest, checked
/// against Cloudflare's limits, resolved once the queue has stored it.
#[op2]
pub async fn op_isola_queue_send(
  state: Rc<RefCell<OpState>>,
  #[smi] id: i32,
  #[string] binding: String,
  #[serde] messages: Vec<Outgoing>,
) -> Result<(), JsErrorBox> {
  let (call, service, id, ops) = {
    let mut state = state.borrow_mut();
    let (worker, queue, service) = {
      let bindings = state
        .try_borrow::<QueueBindings>()
        .ok_or_else(|| JsErrorBox::generic(format!("env.{binding} is not a queue binding")))?;
      let queue = bindings
        .queues
        .get(&binding)
        .ok_or_else(|| JsErrorBox::generic(format!("env.{binding} is not a queue binding")))?;
      (
        bindings.worker.to_string(),
        queue.clone(),
        bindings.service.clone(),
      )
    };
    let messages = messages
      .into_iter()
      .map(|m| {
        let content_type = ContentType::parse(&m.content_type).ok_or_else(|| {
          JsErrorBox::type_error(format!("unknown contentType {:?}", m.content_type))
        })?;
        Ok(NewMessage {
          body: m.body.to_vec(),
          content_type,
          delay_seconds: m.delay_seconds.max(0.0) as u64,
        })
      })
      .collect::<Result<Vec<_>, JsErrorBox>>()?;
    isola_proto::queue::check_send(&messages).map_err(|e| JsErrorBox::type_error(e.0))?;
    let Ok(id) = u32::try_from(id) else {
      return Err(JsErrorBox::generic(
        "a queue can only be sent to while a handler runs (not at the top level of a module)",
      ));
    };
    let mut invocations = crate::invocations(&mut state);
    if !invocations.count_subrequest(id) {
      let limit = invocations.subrequest_limit;
      invocations.limit(id, LimitExceeded::Subrequests(limit));
      return Err(JsErrorBox::type_error(
        "Too many subrequests: this invocation reached its limit of fetch(), service binding and queue calls",
      ));
    }
    // Counted once stored: a refused or failed send wrote nothing.
    let ops: u64 = messages
      .iter()
      .map(|m| isola_proto::queue::operations(m.body.len()))
      .sum();
    let call = SendCall {
      worker,
      queue,
      messages,
    };
    (call, service, id, ops)
  };
  match service.send(call).await {
    SendReply::Sent => {
      crate::invocations(&mut state.borrow_mut()).count_ops(id, |o| o.queue_ops += ops);
      Ok(())
    }
    SendReply::Refused(e) => Err(JsErrorBox::generic(e.0)),
    SendReply::Failed => Err(JsErrorBox::generic("Queue send failed")),
  }
}

/// One message of a batch as the consumer's JS gets it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Incoming {
  id: String,
  timestamp: f64,
  body: ToJsBuffer,
  content_type: &'static str,
  attempts: u32,
}

#[derive(serde::Serialize)]
pub struct IncomingBatch {
  queue: String,
  messages: Vec<Incoming>,
}

/// The batch of consumer run `id` (once).
#[op2]
#[serde]
pub fn op_isola_queue_batch(state: &mut OpState, #[smi] id: u32) -> Option<IncomingBatch> {
  let batch = state
    .try_borrow_mut::<ConsumerRuns>()?
    .batches
    .remove(&id)?;
  Some(IncomingBatch {
    queue: batch.queue,
    messages: batch
      .messages
      .into_iter()
      .map(|m| Incoming {
        id: m.id,
        timestamp: m.timestamp as f64,
        body: m.body.into(),
        content_type: m.content_type.as_str(),
        attempts: m.attempts,
      })
      .collect(),
  })
}

/// A retry's delay from JS: `None` is the queue's own.
fn retry(delay: Option<f64>) -> Result<Disposition, JsErrorBox> {
  match delay {
    None => Ok(Disposition::Retry(None)),
    Some(d) if d >= 0.0 && d <= MAX_DELAY_SECONDS as f64 => Ok(Disposition::Retry(Some(d as u64))),
    Some(d) => Err(JsErrorBox::type_error(format!(
      "retry delaySeconds {d} is out of range: it must be between 0 and {MAX_DELAY_SECONDS} (12 hours)"
    ))),
  }
}

fn decide(state: &mut OpState, id: u32, f: impl FnOnce(&mut Decisions)) {
  let decisions = state
    .try_borrow::<ConsumerRuns>()
    .and_then(|runs| runs.decisions.get(&id).cloned());
  // A run that is over keeps what it had.
  if let Some(decisions) = decisions {
    f(&mut decisions.lock().unwrap_or_else(|e| e.into_inner()));
  }
}

/// `ack()` or `retry({delaySeconds})` (`delay` negative: unset) of message
/// `index` of run `id`, or (`index` -1) of the whole batch.
#[op2(fast)]
pub fn op_isola_queue_decide(
  state: &mut OpState,
  #[smi] id: u32,
  #[smi] index: i32,
  retrying: bool,
  delay: f64,
) -> Result<(), JsErrorBox> {
  let disposition = if retrying {
    retry(Some(delay).filter(|d| *d >= 0.0))?
  } else {
    Disposition::Ack
  };
  decide(state, id, |d| match usize::try_from(index) {
    Ok(i) => d.message(i, disposition),
    Err(_) => d.batch(disposition),
  });
  Ok(())
}

deno_core::extension!(
  isola_queue,
  deps = [deno_web],
  ops = [
    op_isola_queue_bindings,
    op_isola_queue_send,
    op_isola_queue_batch,
    op_isola_queue_decide,
  ],
  esm = [dir "js/queue", "01_queue.js"],
);

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_message_s_own_first_call_wins_over_everything() {
    let mut d = Decisions::new(4);
    d.message(0, Disposition::Retry(Some(5)));
    d.message(0, Disposition::Ack);
    d.batch(Disposition::Ack);
    d.batch(Disposition::Retry(None));
    d.message(1, Disposition::Retry(None));
    assert_eq!(
      d.resolve(true),
      [
        Disposition::Retry(Some(5)),
        Disposition::Retry(None),
        Disposition::Ack,
        Disposition::Ack
      ]
    );
  }

  #[test]
  fn undecided_messages_follow_the_run() {
    let mut d = Decisions::new(3);
    d.message(0, Disposition::Ack);
    assert_eq!(
      d.resolve(false),
      [
        Disposition::Ack,
        Disposition::Retry(None),
        Disposition::Retry(None)
      ]
    );
    assert_eq!(d.resolve(true), [Disposition::Ack; 3]);
    // An index past the batch changes nothing.
    d.message(7, Disposition::Retry(None));
    assert_eq!(d.resolve(true).len(), 3);
  }
}
