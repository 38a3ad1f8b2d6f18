//! The thread-safe-to-clone side of a running worker: handles that send it
//! requests, and the invocations that wait for its answers.

use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use isola_ext::Reply;
use isola_ext::ResponseBody;
use isola_ext::Usage;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::error::ErrorKind;
use crate::error::JsException;
use isola_ext::RequestBody;

/// What an invocation asks of the worker.
pub(crate) enum Call {
  /// A request for the fetch handler of the default export, or of a named
  /// entrypoint (a service binding's). Boxed ([`FetchRequest`]).
  Fetch(Box<Fetch>),
  /// A cron tick for the scheduled handler; `cpu_limit` `None`: the
  /// worker's scheduled CPU limit.
  Scheduled {
    cron: String,
    scheduled_time: i64,
    cpu_limit: Option<std::time::Duration>,
  },
  /// A batch for the queue handler; `decisions` collects what it decides
  /// about each message.
  Queue {
    batch: isola_proto::queue::Batch,
    decisions: std::sync::Arc<std::sync::Mutex<isola_ext::Decisions>>,
  },
  /// An RPC call through a service binding; `args` V8-serialised.
  Rpc {
    entrypoint: Option<String>,
    method: String,
    args: Vec<u8>,
  },
}

impl Call {
  /// Whether its caller reads the invocation's usage once it is over (a
  /// cron tick's and a queue batch's runs report theirs). A request's is
  /// only metered: a channel and a copy of its usage for nobody cost ~300
  /// instructions a request.
  fn reports_usage(&self) -> bool {
    matches!(self, Call::Scheduled { .. } | Call::Queue { .. })
  }
}

/// A request for a fetch handler.
pub(crate) struct Fetch {
  pub(crate) request: http::Request<RequestBody>,
  /// The named export a service binding calls; `None`: the default.
  pub(crate) entrypoint: Option<String>,
  /// The client's address, for the trace event.
  pub(crate) client: Option<std::net::IpAddr>,
}

impl Fetch {
  /// `request` for the default export, from no known client.
  pub(crate) fn new(request: http::Request<RequestBody>) -> Self {
    Self {
      request,
      entrypoint: None,
      client: None,
    }
  }
}

impl From<Fetch> for Call {
  fn from(fetch: Fetch) -> Self {
    Call::Fetch(Box::new(fetch))
  }
}

/// A request for [`crate::Runtime::fetch_from`], boxed once where it enters
/// the node: a request is ~240 bytes, and each future that carries it to
/// the worker (the server's, the router's, the pool's, the channel's slot)
/// was that much larger and copied it at every move.
pub struct FetchRequest(Box<Fetch>);

impl FetchRequest {
  /// `request`, from `client`, whose address its trace event shows.
  pub fn new(request: http::Request<RequestBody>, client: Option<std::net::IpAddr>) -> Self {
    Self(Box::new(Fetch {
      client,
      ..Fetch::new(request)
    }))
  }

  pub fn request(&self) -> &http::Request<RequestBody> {
    &self.0.request
  }
}

impl From<FetchRequest> for Call {
  fn from(request: FetchRequest) -> Self {
    Call::Fetch(request.0)
  }
}

pub(super) struct Command {
  pub(super) call: Call,
  /// Chain depth: 1 from outside, +1 per service binding hop.
  pub(super) depth: u32,
  pub(super) reply: oneshot::Sender<Reply>,
  pub(super) done: Option<oneshot::Sender<Usage>>,
}

/// How an invocation answered, short of an error.
pub(crate) enum Answer {
  Response(http::Response<ResponseBody>),
  /// A scheduled run ended without an error.
  Done,
  /// An RPC method's result, V8-serialised.
  Value(Vec<u8>),
  /// An RPC method threw.
  Thrown {
    name: String,
    message: String,
  },
}

/// Sends requests to a worker running on this thread. Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
  pub(super) tx: mpsc::UnboundedSender<Command>,
  /// The isolate was stopped by a limit or a failure.
  pub(super) halted: Arc<AtomicBool>,
}

impl WorkerHandle {
  /// Starts an invocation of the worker.
  pub fn invoke(&self, request: http::Request<RequestBody>) -> Invocation {
    let (invocation, reply, done) = Invocation::new(true);
    self.submit(Queued(Command {
      call: Fetch::new(request).into(),
      depth: 1,
      reply,
      done,
    }));
    invocation
  }

  /// Starts an invocation of any kind at chain depth `depth`.
  pub(crate) fn call(&self, call: Call, depth: u32) -> Invocation {
    let (invocation, queued) = Invocation::queued(call, depth);
    self.submit(queued);
    invocation
  }

  /// Sends a call made before this handle existed.
  pub(crate) fn submit(&self, queued: Queued) {
    // If the worker is gone the receivers report it.
    let _ = self.tx.send(queued.0);
  }

  /// Sends `request` and waits for the response head.
  pub async fn fetch(
    &self,
    request: http::Request<RequestBody>,
  ) -> Result<http::Response<ResponseBody>, Error> {
    self.invoke(request).response().await
  }

  /// Whether the worker task has stopped (or is about to: its isolate
  /// will answer nothing more).
  pub fn is_closed(&self) -> bool {
    self.tx.is_closed() || self.halted.load(Ordering::Acquire)
  }
}

/// One request in flight.
pub struct Invocation {
  reply: Option<oneshot::Receiver<Reply>>,
  /// The usage once it is over; made only for callers that wait for it.
  done: Option<oneshot::Receiver<Usage>>,
}

/// A call whose worker is not loaded yet. It travels with the load to the
/// V8 thread, which hands it to the worker as soon as it is spawned: the
/// first request skips a second hop to that thread and back.
pub(crate) struct Queued(Command);

impl Invocation {
  /// `call` ready to be submitted to a worker, and the invocation that
  /// waits for its answer.
  pub(crate) fn queued(call: Call, depth: u32) -> (Self, Queued) {
    // The call is moved once, into its command.
    let (invocation, reply, done) = Self::new(call.reports_usage());
    let command = Command {
      call,
      depth,
      reply,
      done,
    };
    (invocation, Queued(command))
  }

  /// An invocation and the ends the isolate answers through (the usage's
  /// if `usage`).
  pub(super) fn new(usage: bool) -> (Self, oneshot::Sender<Reply>, Option<oneshot::Sender<Usage>>) {
    let (reply_tx, reply_rx) = oneshot::channel();
    let (done_tx, done_rx) = usage.then(oneshot::channel).unzip();
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
    self.poll_answer(cx).map(|answer| match answer? {
      Answer::Response(r) => Ok(r),
      _ => {
        Err(ErrorKind::Stopped("the worker answered a request without a response".into()).into())
      }
    })
  }

  fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Result<Answer, Error>> {
    let Some(rx) = self.reply.as_mut() else {
      return Poll::Ready(Err(
        ErrorKind::Stopped("the response was already taken".into()).into(),
      ));
    };
    let reply = std::task::ready!(Pin::new(rx).poll(cx));
    self.reply = None;
    Poll::Ready(match reply {
      Ok(Reply::Response(r)) => Ok(Answer::Response(r)),
      Ok(Reply::Done) => Ok(Answer::Done),
      Ok(Reply::Value(v)) => Ok(Answer::Value(v)),
      Ok(Reply::Thrown { name, message }) => Ok(Answer::Thrown { name, message }),
      Ok(Reply::Missing(why)) => Err(ErrorKind::NoHandler(why).into()),
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

  /// Waits for the answer of any kind of invocation.
  pub(crate) async fn answer(&mut self) -> Result<Answer, Error> {
    poll_fn(|cx| self.poll_answer(cx)).await
  }

  /// Waits until the invocation is over: response sent and every
  /// `ctx.waitUntil()` promise settled (or the isolate gone). For the
  /// invocations of [`WorkerHandle::invoke`] and [`Worker::start`](super::Worker::start).
  pub async fn finished(self) {
    if let Some(done) = self.done {
      let _ = done.await;
    }
  }

  /// Like [`Invocation::finished`], with what the invocation used (`None`
  /// if the isolate went away first).
  pub(crate) async fn usage(self) -> Option<Usage> {
    self.done?.await.ok()
  }
}

#[cfg(test)]
impl WorkerHandle {
  /// A handle to no worker, open while the returned guard lives; for tests
  /// of code that only keeps handles (the pool's index).
  pub(crate) fn detached() -> (Self, Box<dyn std::any::Any>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
      Self {
        tx,
        halted: Arc::default(),
      },
      Box::new(rx),
    )
  }
}
