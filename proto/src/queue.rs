//! Queues as both sides agree on them: Cloudflare's limits, messages as
//! they are stored and delivered, the producer's calls and the consumer's
//! batches.

use serde::Deserialize;
use serde::Serialize;

/// Largest message body, bytes (as serialized for its content type).
pub const MAX_MESSAGE_BYTES: usize = 128 * 1000;
/// Most messages in one `sendBatch`.
pub const MAX_BATCH_MESSAGES: usize = 100;
/// Largest `sendBatch`, all bodies together.
pub const MAX_BATCH_BYTES: usize = 256 * 1000;
/// Longest `delaySeconds` (12 hours).
pub const MAX_DELAY_SECONDS: u64 = 12 * 3600;
/// Consumer settings' bounds and defaults (Cloudflare's).
pub const MAX_BATCH_SIZE: u32 = 100;
pub const DEFAULT_BATCH_SIZE: u32 = 10;
pub const MAX_BATCH_TIMEOUT_SECONDS: u32 = 60;
pub const DEFAULT_BATCH_TIMEOUT_SECONDS: u32 = 5;
pub const DEFAULT_MAX_RETRIES: u32 = 3;
pub const MAX_RETRIES: u32 = 100;

/// Bytes of a message that make one billed queue operation (Cloudflare's
/// 64 KB, where a KB is 1,000 bytes, as in [`MAX_MESSAGE_BYTES`]).
pub const OPERATION_BYTES: usize = 64 * 1000;

/// Queue operations one write, read or delete of a message of `len` body
/// bytes counts: one per started [`OPERATION_BYTES`], at least one (an
/// empty body is still a message). Cloudflare also counts about 100 bytes
/// of its own metadata; Isola counts the body alone, so the count is exact.
pub fn operations(len: usize) -> u64 {
  len.div_ceil(OPERATION_BYTES).max(1) as u64
}

/// How a body was serialized, as `send(body, {contentType})` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
  /// `JSON.stringify`, UTF-8 (the default).
  Json,
  /// A string, UTF-8.
  Text,
  /// An ArrayBuffer or typed array, raw.
  Bytes,
  /// V8's structured clone serialization (every edge runs the same V8).
  V8,
}

impl ContentType {
  pub fn as_str(self) -> &'static str {
    match self {
      ContentType::Json => "json",
      ContentType::Text => "text",
      ContentType::Bytes => "bytes",
      ContentType::V8 => "v8",
    }
  }

  pub fn parse(s: &str) -> Option<Self> {
    [Self::Json, Self::Text, Self::Bytes, Self::V8]
      .into_iter()
      .find(|c| c.as_str() == s)
  }
}

/// A message as a producer hands it over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
  #[serde(with = "serde_bytes")]
  pub body: Vec<u8>,
  pub content_type: ContentType,
  /// Seconds before it may be delivered.
  pub delay_seconds: u64,
}

/// A refused send. The text is what the worker's error says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{0}")]
pub struct QueueError(pub String);

/// Cloudflare's limits on one `send` or `sendBatch`.
pub fn check_send(messages: &[NewMessage]) -> Result<(), QueueError> {
  if messages.is_empty() {
    return Err(QueueError("sendBatch() needs at least one message".into()));
  }
  if messages.len() > MAX_BATCH_MESSAGES {
    return Err(QueueError(format!(
      "sendBatch() of {} messages exceeds the limit of {MAX_BATCH_MESSAGES}",
      messages.len()
    )));
  }
  let mut total = 0;
  for (i, m) in messages.iter().enumerate() {
    if m.body.len() > MAX_MESSAGE_BYTES {
      return Err(QueueError(format!(
        "message {i} is {} bytes, more than the limit of {MAX_MESSAGE_BYTES} bytes (128 KB)",
        m.body.len()
      )));
    }
    if m.delay_seconds > MAX_DELAY_SECONDS {
      return Err(QueueError(format!(
        "message {i}: delaySeconds {} exceeds the limit of {MAX_DELAY_SECONDS} (12 hours)",
        m.delay_seconds
      )));
    }
    total += m.body.len();
  }
  if total > MAX_BATCH_BYTES {
    return Err(QueueError(format!(
      "sendBatch() of {total} bytes exceeds the limit of {MAX_BATCH_BYTES} bytes (256 KB)"
    )));
  }
  Ok(())
}

/// A producer's call, for worker `worker` (its edge name: the control plane
/// checks the queue is its account's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendCall {
  pub worker: String,
  pub queue: String,
  pub messages: Vec<NewMessage>,
}

/// The control plane's answer to a [`SendCall`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendReply {
  /// Stored durably.
  Sent,
  Refused(QueueError),
  Failed,
}

/// A message as the consumer receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
  pub id: String,
  /// When it was sent, ms since the Unix epoch.
  pub timestamp: i64,
  #[serde(with = "serde_bytes")]
  pub body: Vec<u8>,
  pub content_type: ContentType,
  /// 1 on the first delivery.
  pub attempts: u32,
}

/// A batch for a consumer, sent to one edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
  /// Unique in the control plane; the report carries it back.
  pub id: u64,
  /// Edge name of the consumer worker.
  pub worker: String,
  pub queue: String,
  pub messages: Vec<Message>,
}

/// What became of one message of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
  Ack,
  /// Deliver again, after this many seconds (`None`: the queue's
  /// retry delay).
  Retry(Option<u64>),
}

/// An edge's account of one [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReport {
  pub id: u64,
  /// Whether the handler (and its `waitUntil` work) finished without
  /// throwing; `false` when it threw, hit a limit, or could not run.
  pub ok: bool,
  /// Per message, in the batch's order: the explicit or implied outcome.
  /// Empty when the consumer could not run at all (every message retried).
  pub messages: Vec<(String, Disposition)>,
  /// The handler could not run on this edge (not deployed, no `queue`
  /// handler): the batch should go to another edge.
  pub unavailable: bool,
  pub cpu_us: u64,
  pub wall_us: u64,
  /// Manifest hash of the version that ran, so the control plane bills
  /// the batch's queue operations to it. Defaulted: an older edge's
  /// report still reads.
  #[serde(default)]
  pub version: Option<String>,
}

#[cfg(test)]
mod tests {
  use super::*;

  fn msg(n: usize) -> NewMessage {
    NewMessage {
      body: vec![b'x'; n],
      content_type: ContentType::Bytes,
      delay_seconds: 0,
    }
  }

  #[test]
  fn sends_follow_cloudflare_limits() {
    assert!(check_send(&[msg(MAX_MESSAGE_BYTES)]).is_ok());
    assert!(check_send(&[msg(MAX_MESSAGE_BYTES + 1)])
      .unwrap_err()
      .0
      .contains("128 KB"));
    assert!(check_send(&vec![msg(2000); 100]).is_ok());
    assert!(check_send(&vec![msg(10); 101])
      .unwrap_err()
      .0
      .contains("101"));
    assert!(check_send(&[msg(120_000), msg(120_000), msg(120_000)])
      .unwrap_err()
      .0
      .contains("256 KB"));
    let mut late = msg(1);
    late.delay_seconds = MAX_DELAY_SECONDS + 1;
    assert!(check_send(&[late]).unwrap_err().0.contains("12 hours"));
    assert!(check_send(&[]).is_err());
  }

  #[test]
  fn a_message_is_one_operation_per_started_64_kb() {
    assert_eq!(operations(0), 1);
    assert_eq!(operations(1), 1);
    assert_eq!(operations(64_000), 1);
    assert_eq!(operations(64_001), 2);
    assert_eq!(operations(65_000), 2);
    assert_eq!(operations(MAX_MESSAGE_BYTES), 2);
  }
}
