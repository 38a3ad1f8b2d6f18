//! The thread-safe-to-clone side of a running worker: handles that send it
//! requests, and the invocations that wait for its answers.

use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use isola_ext::Reply;
use isola_ext::ResponseBody;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::error::ErrorKind;
use crate::error::JsException;
use isola_ext::RequestBody;

pub(super) struct Command {
  pub(super) request: http::Request<RequestBody>,
  pub(super) reply: oneshot::Sender<Reply>,
  pub(super) done: oneshot::Sender<()>,
}

/// Sends requests to a worker running on this thread. Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
  pub(super) tx: mpsc::UnboundedSender<Command>,
}

impl WorkerHandle {
  /// Starts an invocation of the worker.
  pub fn invoke(&self, request: http::Request<RequestBody>) -> Invocation {
    let (invocation, reply, done) = Invocation::new();
    // If the worker is gone the receivers report it.
    let _ = self.tx.send(Command {
      request,
      reply,
      done,
    });
    invocation
  }

  /// Sends `request` and waits for the response head.
  pub async fn fetch(
    &self,
    request: http::Request<RequestBody>,
  ) -> Result<http::Response<ResponseBody>, Error> {
    self.invoke(request).response().await
  }

  /// Whether the worker task has stopped.
  pub fn is_closed(&self) -> bool {
    self.tx.is_closed()
  }
}

/// One request in flight.
pub struct Invocation {
  reply: Option<oneshot::Receiver<Reply>>,
  done: oneshot::Receiver<()>,
}

impl Invocation {
  /// An invocation and the two ends the isolate answers through.
  pub(super) fn new() -> (Self, oneshot::Sender<Reply>, oneshot::Sender<()>) {
    let (reply_tx, reply_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let invocation = Self {
      reply: Some(reply_rx),
      done: done_rx,
    };
    (invocation, reply_tx, done_tx)
  }

  pub(super) fn poll_response(
    &mut self,
    cx: &mut Context<'_>,
  ) -> Poll<Result<http::Response<ResponseBody>, Error>> {
    let Some(rx) = self.reply.as_mut() else {
      return Poll::Ready(Err(
        ErrorKind::Stopped("the response was already taken".into()).into(),
      ));
    };
    let reply = std::task::ready!(Pin::new(rx).poll(cx));
    self.reply = None;
    Poll::Ready(match reply {
      Ok(Reply::Response(r)) => Ok(r),
      Ok(Reply::Exception(msg)) => Err(ErrorKind::Exception(JsException(msg)).into()),
      Ok(Reply::Limit(limit)) => Err(ErrorKind::Limit(limit).into()),
      Ok(Reply::Stopped(why)) => Err(ErrorKind::Halted(why).into()),
      Err(_) => Err(ErrorKind::Stopped("the isolate went away before answering".into()).into()),
    })
  }

  /// Waits for the response head (status and headers; the body streams).
  pub async fn response(&mut self) -> Result<http::Response<ResponseBody>, Error> {
    poll_fn(|cx| self.poll_response(cx)).await
  }

  /// Waits until the invocation is over: response sent and every
  /// `ctx.waitUntil()` promise settled (or the isolate gone).
  pub async fn finished(self) {
    let _ = self.done.await;
  }
}

#[cfg(test)]
impl WorkerHandle {
  /// A handle to no worker, open while the returned guard lives; for tests
  /// of code that only keeps handles (the pool's index).
  pub(crate) fn detached() -> (Self, Box<dyn std::any::Any>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Self { tx }, Box::new(rx))
  }
}
