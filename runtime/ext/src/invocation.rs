//! The table of invocations in flight in one isolate, and the ops through
//! which JS answers them.

use std::collections::HashMap;

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
use tokio::sync::oneshot;

use crate::body::ResponseBody;
use crate::log::Level;
use crate::log::LogRecord;
use crate::log::LogSink;
use crate::WorkerName;

/// How an invocation answered.
#[derive(Debug)]
pub enum Reply {
  /// The handler produced a `Response`.
  Response(http::Response<ResponseBody>),
  /// The handler threw, rejected or returned something that is not a
  /// `Response`; the message (with the JS stack) has already been logged.
  Exception(String),
}

struct Pending {
  reply: Option<oneshot::Sender<Reply>>,
  done: Option<oneshot::Sender<()>>,
}

/// Invocations in flight in one isolate, by id. The id travels into JS with
/// the request and comes back with the response.
#[derive(Default)]
pub struct Invocations {
  next_id: u32,
  pending: HashMap<u32, Pending>,
}

impl Invocations {
  /// Registers an invocation. `done` fires once the response is sent and every
  /// `ctx.waitUntil()` promise has settled.
  pub fn insert(
    &mut self,
    reply: oneshot::Sender<Reply>,
    done: Option<oneshot::Sender<()>>,
  ) -> u32 {
    // Ids stay small integers so they travel as V8 Smis.
    self.next_id = (self.next_id + 1) & 0x3fff_ffff;
    let id = self.next_id;
    self.pending.insert(
      id,
      Pending {
        reply: Some(reply),
        done,
      },
    );
    id
  }

  /// Invocations not finished yet (response pending or `waitUntil` work).
  pub fn len(&self) -> usize {
    self.pending.len()
  }

  pub fn is_empty(&self) -> bool {
    self.pending.is_empty()
  }

  /// Answers invocation `id`. A second answer, or one for an invocation whose
  /// caller went away, is dropped.
  pub fn reply(&mut self, id: u32, reply: Reply) {
    if let Some(p) = self.pending.get_mut(&id) {
      if let Some(tx) = p.reply.take() {
        let _ = tx.send(reply);
      }
    }
  }

  fn finish(&mut self, id: u32) {
    if let Some(p) = self.pending.remove(&id) {
      if let Some(tx) = p.done {
        let _ = tx.send(());
      }
    }
  }

  /// Fails every invocation still waiting for its response (and ends those
  /// only waiting on `waitUntil` work); returns the ids that got no response.
  pub fn fail_all(&mut self, message: &str) -> Vec<u32> {
    let mut failed = Vec::new();
    for (id, mut p) in self.pending.drain() {
      if let Some(tx) = p.reply.take() {
        let _ = tx.send(Reply::Exception(message.to_string()));
        failed.push(id);
      }
      if let Some(done) = p.done.take() {
        let _ = done.send(());
      }
    }
    failed
  }
}

fn header_pair(
  scope: &mut v8::PinScope<'_, '_>,
  headers: &v8::Array,
  i: u32,
) -> Option<(HeaderName, HeaderValue)> {
  let name = headers.get_index(scope, i)?.to_rust_string_lossy(scope);
  let value = headers.get_index(scope, i + 1)?;
  let value = value.to_string(scope)?;
  // Header values are ByteStrings: every code unit fits in one byte.
  let mut bytes = vec![0u8; value.length()];
  value.write_one_byte_v2(scope, 0, &mut bytes, v8::WriteFlags::empty());
  Some((
    HeaderName::from_bytes(name.as_bytes()).ok()?,
    HeaderValue::from_bytes(&bytes).ok()?,
  ))
}

fn body_from_js(
  scope: &mut v8::PinScope<'_, '_>,
  state: &mut OpState,
  body: v8::Local<'_, v8::Value>,
) -> Result<ResponseBody, JsErrorBox> {
  if body.is_null_or_undefined() {
    return Ok(ResponseBody::empty());
  }
  if let Ok(s) = v8::Local::<v8::String>::try_from(body) {
    return Ok(ResponseBody::full(s.to_rust_string_lossy(scope)));
  }
  if let Ok(view) = v8::Local::<v8::ArrayBufferView>::try_from(body) {
    let mut bytes = vec![0u8; view.byte_length()];
    view.copy_contents(&mut bytes);
    return Ok(ResponseBody::full(Bytes::from(bytes)));
  }
  if let Some(rid) = body.uint32_value(scope) {
    let resource = state
      .resource_table
      .take_any(rid as ResourceId)
      .map_err(JsErrorBox::from_err)?;
    return Ok(ResponseBody::pump(resource));
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
  let state = JsRuntime::op_state_from(scope);
  let mut state = state.borrow_mut();
  let status = u16::try_from(status)
    .ok()
    .and_then(|s| StatusCode::from_u16(s).ok())
    .ok_or_else(|| JsErrorBox::range_error(format!("invalid status {status}")))?;
  let body = body_from_js(scope, &mut state, body)?;
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
  state
    .borrow_mut::<Invocations>()
    .reply(id, Reply::Response(response));
  Ok(())
}

/// Ends invocation `id` with an exception; `message` carries the JS stack and
/// goes to the worker's log, never to the client.
#[op2(fast)]
pub fn op_isola_fail(state: &mut OpState, #[smi] id: u32, #[string] message: &str) {
  let worker = state.borrow::<WorkerName>().0.clone();
  state.borrow::<LogSink>().emit(LogRecord::new(
    worker,
    Some(id),
    Level::Error,
    message.to_string(),
  ));
  state
    .borrow_mut::<Invocations>()
    .reply(id, Reply::Exception(message.to_string()));
}

/// Marks invocation `id` finished: its response is out and its `waitUntil`
/// promises have settled.
#[op2(fast)]
pub fn op_isola_invocation_done(state: &mut OpState, #[smi] id: u32) {
  state.borrow_mut::<Invocations>().finish(id);
}
