//! Queue producers on an edge: `env.Q.send()` stores its messages in the
//! control plane, on a stream of their own, and resolves once they are on
//! disk there. Each message gets its id here, so a send repeated after a
//! lost answer stores nothing twice.

use std::sync::Arc;

use isola_proto::msg::Call;
use isola_proto::msg::CallReply;
use isola_proto::queue::QueueError;
use isola_proto::queue::SendCall;
use isola_proto::queue::SendReply;

use crate::kv::Upstream;

pub struct EdgeQueues {
  upstream: Arc<Upstream>,
}

impl EdgeQueues {
  pub fn new(upstream: Arc<Upstream>) -> Self {
    Self { upstream }
  }

  pub async fn send(&self, call: SendCall) -> SendReply {
    let ids: Vec<String> = call
      .messages
      .iter()
      .map(|_| hex::encode(rand::random::<[u8; 16]>()))
      .collect();
    let call = Call::Send { call, ids };
    // One retry: the ids make a repeat harmless.
    for attempt in 0..2 {
      match self.upstream.call(&call).await {
        None => {
          return SendReply::Refused(QueueError(
            "Queue send failed: this edge has lost its control plane; the message was not sent"
              .into(),
          ))
        }
        Some(Ok(CallReply::Send(reply))) => return reply,
        Some(Ok(_)) => return SendReply::Refused(QueueError(
          "Queue send failed: the control plane does not support it; run the same release on both"
            .into(),
        )),
        Some(Err(e)) => {
          tracing::warn!(error = %e, attempt, "a queue send to the control plane failed")
        }
      }
    }
    SendReply::Refused(QueueError(
      "Queue send failed: the control plane did not answer; the message may or may not have been stored"
        .into(),
    ))
  }
}

impl isola_runtime::QueueService for EdgeQueues {
  fn send(
    &self,
    call: SendCall,
  ) -> std::pin::Pin<Box<dyn std::future::Future<Output = SendReply> + Send + '_>> {
    Box::pin(EdgeQueues::send(self, call))
  }
}
