//! The ops through which JS answers invocations.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::op2;
use deno_core::OpState;
use deno_core::ResourceId;
use deno_error::JsErrorBox;
use http::StatusCode;

use crate::body::ResponseBody;
use crate::invocation::Invocations;
use crate::invocation::InvocationsCell;
use crate::invocation::InvocationsRef;
use crate::invocation::Reply;
use crate::log::Level;
use crate::log::LogRecord;
use crate::log::LogSink;
use crate::meter::BodyMeter;
use crate::outcome::LimitExceeded;
use crate::WorkerName;

/// Adds a header to the response of invocation `id`, which one of the
/// `op_isola_respond_*` ops then sends. One fast call per header from
/// optimized JS, as deno's `op_http_set_response_header`: no array to
/// build or read back property by property. deno_fetch's `Headers` keeps
/// names as lowercase tokens and values as ByteStrings; a pair `http`
/// still refuses is dropped.
#[op2(fast)]
pub fn op_isola_response_header(
  #[cppgc] invocations: &InvocationsRef,
  #[smi] id: u32,
  #[string(onebyte)] name: Cow<'_, [u8]>,
  #[string(onebyte)] value: Cow<'_, [u8]>,
) {
  invocations
    .get()
    .add_response_header_bytes(id, &name, &value);
}

/// Sends the response of invocation `id` with a text body (UTF-8 on the
/// wire; an empty one for a null body) and content type `content_type`
/// unless it is empty: a static response's one header comes with its body,
/// one op call instead of two. With `last`, the invocation's JS is done too
/// (as [`op_isola_invocation_done`]).
#[op2(fast)]
pub fn op_isola_respond_text(
  #[cppgc] invocations: &InvocationsRef,
  #[smi] id: u32,
  #[smi] status: u32,
  #[string] body: Cow<'_, str>,
  #[string(onebyte)] content_type: Cow<'_, [u8]>,
  last: bool,
) -> Result<(), JsErrorBox> {
  let body = match body {
    // The slow form's conversion (a two-byte string): already a copy.
    Cow::Owned(text) => Bytes::from(text),
    Cow::Borrowed(text) => Bytes::copy_from_slice(text.as_bytes()),
  };
  respond_full(
    &mut invocations.get(),
    id,
    status,
    body,
    &content_type,
    last,
  )
}

/// Sends the response of invocation `id` with a copy of a `Uint8Array`'s
/// bytes (deno_fetch keeps every static body that is not text as one).
/// `content_type` and `last` as for [`op_isola_respond_text`].
#[op2(fast)]
pub fn op_isola_respond_bytes(
  #[cppgc] invocations: &InvocationsRef,
  #[smi] id: u32,
  #[smi] status: u32,
  #[buffer(copy)] body: Bytes,
  #[string(onebyte)] content_type: Cow<'_, [u8]>,
  last: bool,
) -> Result<(), JsErrorBox> {
  respond_full(
    &mut invocations.get(),
    id,
    status,
    body,
    &content_type,
    last,
  )
}

/// Sends the response of invocation `id` with the body of the
/// `ReadableStream` resource `rid`, metered as it is sent.
#[op2(fast)]
pub fn op_isola_respond_stream(
  state_rc: Rc<RefCell<OpState>>,
  #[smi] id: u32,
  #[smi] status: u32,
  #[smi] rid: ResourceId,
) -> Result<(), JsErrorBox> {
  let status = status_code(status)?;
  let mut state = state_rc.borrow_mut();
  let resource = state
    .resource_table
    .take_any(rid)
    .map_err(JsErrorBox::from_err)?;
  let limit = crate::invocations(&mut state).response_body_limit;
  drop(state);
  let meter = BodyMeter::response(Rc::downgrade(&state_rc), id, limit);
  let body = ResponseBody::pump(resource, meter);
  crate::invocations(&mut state_rc.borrow_mut()).respond(id, status, body);
  Ok(())
}

fn status_code(status: u32) -> Result<StatusCode, JsErrorBox> {
  u16::try_from(status)
    .ok()
    .and_then(|s| StatusCode::from_u16(s).ok())
    .ok_or_else(|| JsErrorBox::range_error(format!("invalid status {status}")))
}

/// A whole body: counted, held to the response body limit, sent, with
/// `content_type` unless it is empty.
fn respond_full(
  invocations: &mut Invocations,
  id: u32,
  status: u32,
  body: Bytes,
  content_type: &[u8],
  last: bool,
) -> Result<(), JsErrorBox> {
  let status = status_code(status)?;
  invocations.respond_full(id, status, body, content_type, last);
  Ok(())
}

/// Ends invocation `id` with an exception; `logged` carries the JS stack and
/// goes to the worker's log, never to the client. `name` and `message` are
/// the error's own, for its trace.
#[op2(fast)]
pub fn op_isola_fail(
  state: &mut OpState,
  #[smi] id: u32,
  #[string] logged: &str,
  #[string] name: &str,
  #[string] message: &str,
) {
  let worker = state.borrow::<WorkerName>().0.clone();
  state.borrow::<LogSink>().emit(LogRecord::new(
    worker,
    Some(id),
    Level::Error,
    logged.to_string(),
  ));
  let mut invocations = crate::invocations(state);
  trace_exception(&mut invocations, id, name, message, logged);
  invocations.reply(id, Reply::Exception(logged.to_string()));
}

/// Notes an uncaught exception in invocation `id`'s trace, if it has one;
/// `logged` is its stack unless it is only the message (a thrown non-Error).
fn trace_exception(
  invocations: &mut Invocations,
  id: u32,
  name: &str,
  message: &str,
  logged: &str,
) {
  if let Some(trace) = invocations.trace_mut(id) {
    let stack = (logged != message).then_some(logged);
    trace.exception(name, message, stack);
  }
}

/// Marks invocation `id` finished: its response is out and its `waitUntil`
/// promises have settled.
#[op2(fast)]
pub fn op_isola_invocation_done(#[cppgc] invocations: &InvocationsRef, #[smi] id: u32) {
  invocations.get().js_finished(id);
}

/// The isolate's invocations for the ops that take them as an argument;
/// `init` asks once per isolate.
#[op2]
#[cppgc]
pub fn op_isola_invocations(state: &mut OpState) -> InvocationsRef {
  InvocationsRef::new(state.borrow::<InvocationsCell>().clone())
}

/// Counts an outbound `fetch()` of invocation `id`; past the limit the
/// invocation ends with 503 and this returns 0 (fetch then rejects). Else
/// 1, or 2 when the invocation has a span: fetch then asks for a
/// subrequest span ([`op_isola_fetch_span`]).
#[op2(fast)]
#[smi]
pub fn op_isola_subrequest(state: &mut OpState, #[smi] id: i32) -> u32 {
  let Ok(id) = u32::try_from(id) else {
    return 1;
  };
  let mut invocations = crate::invocations(state);
  if invocations.count_subrequest(id) {
    let spans = invocations.spans && invocations.trace_mut(id).is_some_and(|t| t.span.is_some());
    return if spans { 2 } else { 1 };
  }
  let limit = invocations.subrequest_limit;
  invocations.limit(id, LimitExceeded::Subrequests(limit));
  0
}

/// Starts the span of a `fetch()` of invocation `id`: returns the
/// `traceparent` header that names it (empty if there is none to give).
#[op2]
#[string]
pub fn op_isola_fetch_span(
  state: &mut OpState,
  #[smi] id: u32,
  #[string] method: &str,
  #[string] url: &str,
) -> String {
  crate::invocations(state)
    .trace_mut(id)
    .and_then(|t| t.span.as_mut())
    .and_then(|s| s.subrequest(method, url, std::time::SystemTime::now()))
    .unwrap_or_default()
}

/// Ends the `fetch()` span named by `traceparent` with the response's
/// `status` (0: the fetch failed).
#[op2(fast)]
pub fn op_isola_fetch_span_done(
  state: &mut OpState,
  #[smi] id: u32,
  #[string] traceparent: &str,
  #[smi] status: u32,
) {
  if let Some(span) = crate::invocations(state)
    .trace_mut(id)
    .and_then(|t| t.span.as_mut())
  {
    let status = u16::try_from(status).unwrap_or(0);
    span.subrequest_done(traceparent, status, std::time::SystemTime::now());
  }
}

/// Ends invocation `id` without a response: a scheduled run whose handler
/// and `waitUntil` promises all settled.
#[op2(fast)]
pub fn op_isola_done_ok(state: &mut OpState, #[smi] id: u32) {
  crate::invocations(state).reply(id, Reply::Done);
}

/// `controller.noRetry()` of scheduled run `id`.
#[op2(fast)]
pub fn op_isola_no_retry(state: &mut OpState, #[smi] id: u32) {
  crate::invocations(state).set_no_retry(id);
}

/// The value an RPC method returned, V8-serialised.
#[op2(fast)]
pub fn op_isola_return(state: &mut OpState, #[smi] id: u32, #[buffer] value: &[u8]) {
  crate::invocations(state).reply(id, Reply::Value(value.to_vec()));
}

/// An RPC method threw: `name` and `message` go back to the caller,
/// `logged` (with the stack) to this worker's log.
#[op2(fast)]
pub fn op_isola_throw(
  state: &mut OpState,
  #[smi] id: u32,
  #[string] name: &str,
  #[string] message: &str,
  #[string] logged: &str,
) {
  let worker = state.borrow::<WorkerName>().0.clone();
  state.borrow::<LogSink>().emit(LogRecord::new(
    worker,
    Some(id),
    Level::Error,
    logged.to_string(),
  ));
  let mut invocations = crate::invocations(state);
  trace_exception(&mut invocations, id, name, message, logged);
  invocations.reply(
    id,
    Reply::Thrown {
      name: name.to_string(),
      message: message.to_string(),
    },
  );
}

/// The worker has no handler for invocation `id`'s kind; `message` says so.
#[op2(fast)]
pub fn op_isola_missing(state: &mut OpState, #[smi] id: u32, #[string] message: &str) {
  crate::invocations(state).reply(id, Reply::Missing(message.to_string()));
}
