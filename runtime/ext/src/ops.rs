//! The ops through which JS answers invocations.

use bytes::Bytes;
use deno_core::op2;
use deno_core::v8;
use deno_core::JsRuntime;
use deno_core::OpState;
use deno_core::ResourceId;
use deno_error::JsErrorBox;
use http::HeaderName;
use http::HeaderValue;
use http::StatusCode;

use crate::body::ResponseBody;
use crate::invocation::Invocations;
use crate::invocation::Reply;
use crate::log::Level;
use crate::log::LogRecord;
use crate::log::LogSink;
use crate::meter::BodyMeter;
use crate::outcome::LimitExceeded;
use crate::WorkerName;

fn header_pair(
  scope: &mut v8::PinScope<'_, '_>,
  headers: &v8::Array,
  i: u32,
) -> Option<(HeaderName, HeaderValue)> {
  let name = headers.get_index(scope, i)?.to_string(scope)?;
  let value = headers.get_index(scope, i + 1)?.to_string(scope)?;
  // deno_fetch's `Headers` keeps names as lowercase tokens and values as
  // ByteStrings, so both are one-byte strings as a rule.
  let name = parse_byte_string(scope, name, |b| HeaderName::from_bytes(b).ok())?;
  let value = parse_byte_string(scope, value, |b| HeaderValue::from_bytes(b).ok())?;
  Some((name, value))
}

/// `parse` of a string's bytes, one per code unit: read in place, without a
/// copy, from a one-byte string; a two-byte one is narrowed to Latin-1, and
/// a unit past it gives `None`, as no header name or value may hold one.
fn parse_byte_string<T>(
  scope: &mut v8::PinScope<'_, '_>,
  s: v8::Local<'_, v8::String>,
  parse: impl FnOnce(&[u8]) -> Option<T>,
) -> Option<T> {
  let view = v8::ValueView::new(scope, s);
  match view.data() {
    v8::ValueViewData::OneByte(bytes) => parse(bytes),
    v8::ValueViewData::TwoByte(units) => {
      let bytes: Option<Vec<u8>> = units.iter().map(|&u| u8::try_from(u).ok()).collect();
      parse(&bytes?)
    }
  }
}

enum JsBody {
  Full(Bytes),
  Stream(ResourceId),
}

fn body_from_js(
  scope: &mut v8::PinScope<'_, '_>,
  body: v8::Local<'_, v8::Value>,
) -> Result<JsBody, JsErrorBox> {
  if body.is_null_or_undefined() {
    return Ok(JsBody::Full(Bytes::new()));
  }
  if let Ok(s) = v8::Local::<v8::String>::try_from(body) {
    return Ok(JsBody::Full(Bytes::from(s.to_rust_string_lossy(scope))));
  }
  if let Ok(view) = v8::Local::<v8::ArrayBufferView>::try_from(body) {
    let mut bytes = vec![0u8; view.byte_length()];
    view.copy_contents(&mut bytes);
    return Ok(JsBody::Full(Bytes::from(bytes)));
  }
  if let Some(rid) = body.uint32_value(scope) {
    return Ok(JsBody::Stream(rid as ResourceId));
  }
  Err(JsErrorBox::type_error("unsupported response body"))
}

/// Sends the response of invocation `id`: `headers` is a flat
/// `[name, value, name, value, ...]` array, `body` is null, a string, a
/// Uint8Array, or the rid of a `ReadableStream` resource.
#[op2(fast)]
pub fn op_isola_respond<'s>(
  scope: &mut v8::PinScope<'s, '_>,
  #[smi] id: u32,
  #[smi] status: u32,
  headers: &v8::Array,
  body: v8::Local<'s, v8::Value>,
) -> Result<(), JsErrorBox> {
  let state_rc = JsRuntime::op_state_from(scope);
  let mut state = state_rc.borrow_mut();
  let status = u16::try_from(status)
    .ok()
    .and_then(|s| StatusCode::from_u16(s).ok())
    .ok_or_else(|| JsErrorBox::range_error(format!("invalid status {status}")))?;
  let limit = state.borrow::<Invocations>().response_body_limit;
  let body = match body_from_js(scope, body)? {
    JsBody::Full(bytes) => {
      let invocations = state.borrow_mut::<Invocations>();
      invocations.add_bytes_out(id, bytes.len() as u64);
      if limit != 0 && bytes.len() as u64 > limit {
        invocations.limit(id, LimitExceeded::ResponseBody(limit));
        return Ok(());
      }
      ResponseBody::full(bytes)
    }
    JsBody::Stream(rid) => {
      let resource = state
        .resource_table
        .take_any(rid)
        .map_err(JsErrorBox::from_err)?;
      let meter = BodyMeter::response(std::rc::Rc::downgrade(&state_rc), id, limit);
      drop(state);
      let body = ResponseBody::pump(resource, meter);
      state = state_rc.borrow_mut();
      body
    }
  };
  let mut response = http::Response::new(body);
  *response.status_mut() = status;
  let map = response.headers_mut();
  let len = headers.length();
  map.reserve(len as usize / 2);
  let mut i = 0;
  while i + 1 < len {
    if let Some((name, value)) = header_pair(scope, headers, i) {
      map.append(name, value);
    }
    i += 2;
  }
  let invocations = state.borrow_mut::<Invocations>();
  invocations.reply(id, Reply::Response(response));
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
  let invocations = state.borrow_mut::<Invocations>();
  trace_exception(invocations, id, name, message, logged);
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
pub fn op_isola_invocation_done(state: &mut OpState, #[smi] id: u32) {
  state.borrow_mut::<Invocations>().js_finished(id);
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
  let invocations = state.borrow_mut::<Invocations>();
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
  state
    .borrow_mut::<Invocations>()
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
  if let Some(span) = state
    .borrow_mut::<Invocations>()
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
  state.borrow_mut::<Invocations>().reply(id, Reply::Done);
}

/// `controller.noRetry()` of scheduled run `id`.
#[op2(fast)]
pub fn op_isola_no_retry(state: &mut OpState, #[smi] id: u32) {
  state.borrow_mut::<Invocations>().set_no_retry(id);
}

/// The value an RPC method returned, V8-serialised.
#[op2(fast)]
pub fn op_isola_return(state: &mut OpState, #[smi] id: u32, #[buffer] value: &[u8]) {
  state
    .borrow_mut::<Invocations>()
    .reply(id, Reply::Value(value.to_vec()));
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
  let invocations = state.borrow_mut::<Invocations>();
  trace_exception(invocations, id, name, message, logged);
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
  state
    .borrow_mut::<Invocations>()
    .reply(id, Reply::Missing(message.to_string()));
}
