//! Request and response bodies crossing between hyper and JS, streamed both
//! ways so that large bodies never sit whole in memory.

use std::borrow::Cow;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Context;
use std::task::Poll;

use bytes::Bytes;
use deno_core::AsyncRefCell;
use deno_core::AsyncResult;
use deno_core::BufView;
use deno_core::CancelFuture;
use deno_core::CancelHandle;
use deno_core::RcRef;
use deno_core::Resource;
use deno_error::JsErrorBox;
use http_body::Frame;
use http_body::SizeHint;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::outcome::LimitExceeded;

/// Counts a body's bytes for its invocation and enforces its size limit.
/// The invocation table implements it (`BodyMeter`); bodies only see this.
pub trait Meter {
  /// Adds `n` bytes (`total` so far); false once the total is past the limit.
  fn count(&self, total: u64, n: u64) -> bool;
  /// Ends the invocation for breaking the body limit; returns that limit.
  fn exceeded(&self) -> LimitExceeded;
  /// A streamed response body started (`true`) or ended (`false`).
  fn streaming(&self, on: bool);
}

/// Errors a body stream can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of an incoming request, as the runtime accepts it.
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// How much the response pump reads from a JS stream at once.
const RESPONSE_CHUNK: usize = 64 * 1024;
/// Chunks buffered between the JS stream and hyper; beyond this the JS side
/// waits, so a slow client slows the producer down (backpressure).
const RESPONSE_QUEUE: usize = 2;

/// An incoming request body exposed to JS as a resource; `request.body` is a
/// `ReadableStream` reading from it.
pub struct RequestBodyResource {
  inner: AsyncRefCell<RequestBodyInner>,
  cancel: CancelHandle,
  size_hint: (u64, Option<u64>),
  meter: Option<Box<dyn Meter>>,
}

struct RequestBodyInner {
  body: RequestBody,
  leftover: Option<Bytes>,
  /// An error met while the body was taken ([`RequestBodyAtHand::take`]),
  /// given after `leftover`.
  error: Option<BoxError>,
  total: u64,
}

/// Bodies declared at most this long are taken whole when they are at hand.
const AT_HAND_MAX: u64 = 64 << 10;

/// A request body as a started invocation hands it to JS.
pub enum RequestBodyAtHand {
  /// All of it: hyper hands a small body over with its head, so by the
  /// time the worker starts the request it is in the body's channel, and
  /// JS gets it as bytes, with no resource and no op to read it (a
  /// `Uint8Array` in a static body, as a `Response` made from bytes has).
  Whole(Bytes),
  /// A resource JS reads as it needs, with what was taken before it
  /// stopped (`read` bytes, counted already).
  Stream(RequestBodyResource),
}

impl RequestBodyAtHand {
  /// Takes what `body` has at hand, without waiting, if its declared
  /// length is small and at most `limit` (0: none); else (or if the rest
  /// is not there yet) it is a stream. Returns how many bytes were taken.
  pub fn take<M: Meter + 'static>(mut body: RequestBody, limit: u64, meter: M) -> (Self, u64) {
    let small = http_body::Body::size_hint(&body)
      .exact()
      .is_some_and(|n| n <= AT_HAND_MAX && (limit == 0 || n <= limit));
    let mut read = Bytes::new();
    let mut error = None;
    if small {
      let mut cx = Context::from_waker(std::task::Waker::noop());
      loop {
        match http_body::Body::poll_frame(Pin::new(&mut body), &mut cx) {
          Poll::Ready(None) => {
            let n = read.len() as u64;
            return (Self::Whole(read), n);
          }
          // A length-delimited body has no trailers: data is all there is.
          Poll::Ready(Some(Ok(frame))) => {
            if let Ok(data) = frame.into_data() {
              read = append(read, data);
            }
          }
          Poll::Ready(Some(Err(e))) => {
            error = Some(e);
            break;
          }
          // Polled again, with the reader's waker, when JS reads.
          Poll::Pending => break,
        }
      }
    }
    let n = read.len() as u64;
    let resource = RequestBodyResource::with_read(body, Some(meter), read, error);
    (Self::Stream(resource), n)
  }
}

/// `read` and then `data`, copying only when both have bytes.
fn append(read: Bytes, data: Bytes) -> Bytes {
  if read.is_empty() {
    return data;
  }
  let mut both = Vec::with_capacity(read.len() + data.len());
  both.extend_from_slice(&read);
  both.extend_from_slice(&data);
  both.into()
}

impl RequestBodyResource {
  pub fn new<M: Meter + 'static>(body: RequestBody, meter: Option<M>) -> Self {
    Self::with_read(body, meter, Bytes::new(), None)
  }

  /// A body of which `read` (counted already) and then `error` came first.
  fn with_read<M: Meter + 'static>(
    body: RequestBody,
    meter: Option<M>,
    read: Bytes,
    error: Option<BoxError>,
  ) -> Self {
    let hint = http_body::Body::size_hint(&body);
    let total = read.len() as u64;
    Self {
      size_hint: (hint.lower() + total, hint.upper().map(|u| u + total)),
      inner: AsyncRefCell::new(RequestBodyInner {
        body,
        leftover: (!read.is_empty()).then_some(read),
        error,
        total,
      }),
      cancel: CancelHandle::default(),
      meter: meter.map(|m| Box::new(m) as Box<dyn Meter>),
    }
  }

  async fn read_chunk(self: Rc<Self>, limit: usize) -> Result<BufView, JsErrorBox> {
    let mut inner = RcRef::map(&self, |r| &r.inner).borrow_mut().await;
    let cancel = RcRef::map(&self, |r| &r.cancel);
    loop {
      if let Some(mut chunk) = inner.leftover.take() {
        if chunk.len() > limit {
          inner.leftover = Some(chunk.split_off(limit));
        }
        return Ok(BufView::from(chunk));
      }
      if let Some(e) = inner.error.take() {
        return Err(JsErrorBox::type_error(format!(
          "request body could not be read: {e}"
        )));
      }
      let frame = inner
        .body
        .frame()
        .or_cancel(cancel.clone())
        .await
        .map_err(|_| JsErrorBox::generic("request body read was cancelled"));
      match frame {
        Err(e) => return Err(e),
        Ok(None) => return Ok(BufView::empty()),
        Ok(Some(Ok(frame))) => {
          if let Ok(data) = frame.into_data() {
            if !data.is_empty() {
              inner.total += data.len() as u64;
              if let Some(meter) = &self.meter {
                if !meter.count(inner.total, data.len() as u64) {
                  let limit = meter.exceeded();
                  return Err(JsErrorBox::type_error(limit.to_string()));
                }
              }
              inner.leftover = Some(data);
            }
          }
        }
        Ok(Some(Err(e))) => {
          return Err(JsErrorBox::type_error(format!(
            "request body could not be read: {e}"
          )))
        }
      }
    }
  }
}

impl Resource for RequestBodyResource {
  fn name(&self) -> Cow<'_, str> {
    Cow::Borrowed("isolaRequestBody")
  }

  fn read(self: Rc<Self>, limit: usize) -> AsyncResult<BufView> {
    Box::pin(self.read_chunk(limit))
  }

  fn size_hint(&self) -> (u64, Option<u64>) {
    self.size_hint
  }

  fn close(self: Rc<Self>) {
    self.cancel.cancel();
  }
}

/// The body of a worker's response, handed to hyper.
///
/// Static bodies (a string or bytes given to `new Response`) travel in one
/// piece; streams are pumped chunk by chunk through a small bounded queue.
pub struct ResponseBody {
  kind: BodyKind,
}

enum BodyKind {
  Full(Option<Bytes>),
  Stream(mpsc::Receiver<Result<Bytes, BoxError>>),
}

impl std::fmt::Debug for ResponseBody {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match &self.kind {
      BodyKind::Full(b) => f
        .debug_struct("ResponseBody")
        .field("len", &b.as_ref().map_or(0, Bytes::len))
        .finish(),
      BodyKind::Stream(_) => f.write_str("ResponseBody(stream)"),
    }
  }
}

impl ResponseBody {
  pub fn empty() -> Self {
    Self {
      kind: BodyKind::Full(None),
    }
  }

  pub fn full(bytes: impl Into<Bytes>) -> Self {
    let bytes = bytes.into();
    Self {
      kind: BodyKind::Full((!bytes.is_empty()).then_some(bytes)),
    }
  }

  /// Streams a JS `ReadableStream` resource (from `resourceForReadableStream`)
  /// out. Must be called on the isolate's thread, inside its tokio runtime.
  pub(crate) fn pump(resource: Rc<dyn Resource>, meter: impl Meter + 'static) -> Self {
    let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
    meter.streaming(true);
    deno_core::unsync::spawn(async move {
      let mut total = 0u64;
      loop {
        // Wait for room first: a client that stops reading stops the pump.
        let Ok(permit) = tx.reserve().await else {
          break;
        };
        match resource.clone().read(RESPONSE_CHUNK).await {
          Ok(buf) if buf.is_empty() => break,
          Ok(buf) => {
            total += buf.len() as u64;
            if !meter.count(total, buf.len() as u64) {
              let limit = meter.exceeded();
              permit.send(Err(limit.into()));
              break;
            }
            permit.send(Ok(Bytes::copy_from_slice(&buf)))
          }
          Err(e) => {
            permit.send(Err(e.to_string().into()));
            break;
          }
        }
      }
      resource.close();
      meter.streaming(false);
    });
    Self {
      kind: BodyKind::Stream(rx),
    }
  }

  /// Reads the whole body; for tests and small bodies.
  pub async fn collect_bytes(self) -> Result<Bytes, BoxError> {
    Ok(BodyExt::collect(self).await?.to_bytes())
  }
}

impl http_body::Body for ResponseBody {
  type Data = Bytes;
  type Error = BoxError;

  fn poll_frame(
    self: Pin<&mut Self>,
    cx: &mut Context<'_>,
  ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    match &mut self.get_mut().kind {
      BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
      BodyKind::Stream(rx) => rx
        .poll_recv(cx)
        .map(|item| item.map(|chunk| chunk.map(Frame::data))),
    }
  }

  fn is_end_stream(&self) -> bool {
    matches!(self.kind, BodyKind::Full(None))
  }

  fn size_hint(&self) -> SizeHint {
    match &self.kind {
      BodyKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
      BodyKind::Stream(_) => SizeHint::default(),
    }
  }
}
