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

use crate::body::BodyMeter;
use crate::body::ResponseBody;
use crate::log::Level;
use crate::log::LogRecord;
use crate::log::LogSink;
use crate::outcome::LimitExceeded;
use crate::outcome::Outcome;
use crate::WorkerName;

/// How an invocation answered.
#[derive(Debug)]
pub enum Reply {
  /// The handler produced a `Response`.
  Response(http::Response<ResponseBody>),
  /// The handler threw, rejected or returned something that is not a
  /// `Response`; the message (with the JS stack) has already been logged.
  Exception(String),
  /// A limit ended the invocation.
  Limit(LimitExceeded),
  /// The isolate was stopped (by a limit another invocation broke, or a
  /// failure) before this invocation answered; the text says why.
  Stopped(String),
}

/// Why every invocation still waiting is failed at once.
#[derive(Clone, Copy, Debug)]
pub enum Failure<'a> {
  /// JS can no longer answer (nothing left that could settle the handler's
  /// promise, or the event loop failed).
  Exception(&'a str),
  /// A limit stopped the isolate.
  Limit(LimitExceeded),
}

/// What an invocation used, kept while it runs.
#[derive(Debug)]
pub struct Usage {
  pub start: std::time::Instant,
  pub start_time: std::time::SystemTime,
  pub cpu_ns: u64,
  pub peak_memory: u64,
  pub subrequests: u32,
  pub bytes_in: u64,
  pub bytes_out: u64,
  pub outcome: Option<Outcome>,
}

impl Usage {
  fn new() -> Self {
    Self {
      start: std::time::Instant::now(),
      start_time: std::time::SystemTime::now(),
      cpu_ns: 0,
      peak_memory: 0,
      subrequests: 0,
      bytes_in: 0,
      bytes_out: 0,
      outcome: None,
    }
  }
}

/// Called once per invocation when it is over: response sent (streamed
/// bodies included) and `waitUntil` work settled.
pub type FinishHook = Box<dyn Fn(u32, Usage)>;

struct Pending {
  reply: Option<oneshot::Sender<Reply>>,
  done: Option<oneshot::Sender<()>>,
  usage: Usage,
  /// JS is done with it (response out, `waitUntil` settled).
  js_done: bool,
  /// A streamed response body is still being sent.
  streaming: bool,
}

/// Invocations in flight in one isolate, by id. The id travels into JS with
/// the request and comes back with the response.
#[derive(Default)]
pub struct Invocations {
  next_id: u32,
  pending: HashMap<u32, Pending>,
  on_finish: Option<FinishHook>,
  /// Finished during the current turn; reported once the turn's CPU is
  /// charged, so a handler that answers synchronously is not billed 0.
  finished: Vec<(u32, Usage)>,
  in_turn: bool,
  /// Outbound `fetch()` calls allowed per invocation (0: no limit).
  pub subrequest_limit: u32,
  /// Response body bytes allowed per invocation (0: no limit).
  pub response_body_limit: u64,
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
        usage: Usage::new(),
        js_done: false,
        streaming: false,
      },
    );
    id
  }

  /// Sets what runs when an invocation is over (metering).
  pub fn set_finish_hook(&mut self, hook: FinishHook) {
    self.on_finish = Some(hook);
  }

  /// Ids of invocations not finished yet.
  pub fn ids(&self) -> Vec<u32> {
    self.pending.keys().copied().collect()
  }

  /// Ids of invocations still waiting for their response.
  pub fn awaiting_response(&self) -> Vec<u32> {
    self
      .pending
      .iter()
      .filter(|(_, p)| p.reply.is_some())
      .map(|(id, _)| *id)
      .collect()
  }

  pub fn usage(&self, id: u32) -> Option<&Usage> {
    self.pending.get(&id).map(|p| &p.usage)
  }

  /// A turn of the isolate starts; invocations finishing in it are
  /// reported at [`Invocations::charge_turn`].
  pub fn begin_turn(&mut self) {
    self.in_turn = true;
  }

  /// Splits `cpu_ns` of one isolate turn evenly over the invocations in
  /// flight or finished during it, notes the isolate's memory after it, and
  /// reports the finished ones.
  pub fn charge_turn(&mut self, cpu_ns: u64, memory: u64) {
    self.in_turn = false;
    let n = (self.pending.len() + self.finished.len()) as u64;
    if let Some(share) = cpu_ns.checked_div(n) {
      let usages = self
        .pending
        .values_mut()
        .map(|p| &mut p.usage)
        .chain(self.finished.iter_mut().map(|(_, u)| u));
      for usage in usages {
        usage.cpu_ns += share;
        usage.peak_memory = usage.peak_memory.max(memory);
      }
    }
    for (id, usage) in std::mem::take(&mut self.finished) {
      if let Some(hook) = &self.on_finish {
        hook(id, usage);
      }
    }
  }

  /// CPU the next isolate turn may use before the watchdog stops it: the
  /// smallest remaining allowance, times the invocations sharing the turn.
  pub fn cpu_budget(&self, limit_ns: u64) -> u64 {
    let n = self.pending.len() as u64;
    let min_left = self
      .pending
      .values()
      .map(|p| limit_ns.saturating_sub(p.usage.cpu_ns))
      .min()
      .unwrap_or(limit_ns);
    min_left.saturating_mul(n.max(1)).max(1_000_000)
  }

  /// Invocations whose CPU use is past `limit_ns` and that are not ended yet.
  pub fn over_cpu(&self, limit_ns: u64) -> Vec<u32> {
    self
      .pending
      .iter()
      .filter(|(_, p)| p.usage.cpu_ns > limit_ns && p.usage.outcome != Some(Outcome::CpuLimit))
      .map(|(id, _)| *id)
      .collect()
  }

  /// The earliest start among invocations not finished, and those started
  /// before `cutoff`.
  pub fn started_before(
    &self,
    cutoff: std::time::Instant,
  ) -> (Vec<u32>, Option<std::time::Instant>) {
    let mut expired = Vec::new();
    let mut earliest: Option<std::time::Instant> = None;
    for (id, p) in &self.pending {
      if p.usage.start <= cutoff {
        expired.push(*id);
      } else {
        earliest = Some(earliest.map_or(p.usage.start, |e| e.min(p.usage.start)));
      }
    }
    (expired, earliest)
  }

  /// Counts one outbound `fetch()`; false once past the limit.
  pub fn count_subrequest(&mut self, id: u32) -> bool {
    let limit = self.subrequest_limit;
    match self.pending.get_mut(&id) {
      Some(p) => {
        p.usage.subrequests += 1;
        limit == 0 || p.usage.subrequests <= limit
      }
      None => true,
    }
  }

  pub fn add_bytes_in(&mut self, id: u32, n: u64) {
    if let Some(p) = self.pending.get_mut(&id) {
      p.usage.bytes_in += n;
    }
  }

  pub fn add_bytes_out(&mut self, id: u32, n: u64) {
    if let Some(p) = self.pending.get_mut(&id) {
      p.usage.bytes_out += n;
    }
  }

  /// Ends invocation `id` because it broke `limit`: an error naming the
  /// limit if it had not answered yet, and it counts as the limit's outcome
  /// either way.
  pub fn limit(&mut self, id: u32, limit: LimitExceeded) {
    if let Some(p) = self.pending.get_mut(&id) {
      if p.usage.outcome.is_none() || p.usage.outcome == Some(Outcome::Ok) {
        p.usage.outcome = Some(limit.outcome());
      }
      if let Some(tx) = p.reply.take() {
        let _ = tx.send(Reply::Limit(limit));
      }
    }
  }

  /// Finishes invocation `id` now, whatever it still had going on (its
  /// wall-clock limit passed, or the isolate is going away).
  pub fn abandon(&mut self, id: u32) {
    if let Some(p) = self.pending.get_mut(&id) {
      p.js_done = true;
      p.streaming = false;
    }
    self.maybe_finish(id);
  }

  fn maybe_finish(&mut self, id: u32) {
    let ready =
      matches!(self.pending.get(&id), Some(p) if p.js_done && !p.streaming && p.reply.is_none());
    if !ready {
      return;
    }
    if let Some(mut p) = self.pending.remove(&id) {
      if let Some(tx) = p.done.take() {
        let _ = tx.send(());
      }
      if self.in_turn {
        self.finished.push((id, p.usage));
      } else if let Some(hook) = &self.on_finish {
        hook(id, p.usage);
      }
    }
  }

  pub(crate) fn set_streaming(&mut self, id: u32, streaming: bool) {
    if let Some(p) = self.pending.get_mut(&id) {
      p.streaming = streaming;
    }
    if !streaming {
      self.maybe_finish(id);
    }
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
        let outcome = match &reply {
          Reply::Response(_) => Outcome::Ok,
          Reply::Exception(_) => Outcome::Exception,
          Reply::Limit(limit) => limit.outcome(),
          Reply::Stopped(_) => Outcome::Stopped,
        };
        p.usage.outcome.get_or_insert(outcome);
        let _ = tx.send(reply);
      }
    }
  }

  fn js_finished(&mut self, id: u32) {
    if let Some(p) = self.pending.get_mut(&id) {
      p.js_done = true;
    }
    self.maybe_finish(id);
  }

  /// Fails every invocation still waiting for its response (and ends those
  /// only waiting on `waitUntil` work); returns the ids that got no response.
  pub fn fail_all(&mut self, failure: Failure<'_>) -> Vec<u32> {
    let mut failed = Vec::new();
    for id in self.ids() {
      let Some(p) = self.pending.get_mut(&id) else {
        continue;
      };
      if p.reply.is_some() {
        failed.push(id);
        match failure {
          Failure::Exception(message) => self.reply(id, Reply::Exception(message.to_string())),
          Failure::Limit(limit) => self.limit(id, limit),
        }
      }
      self.abandon(id);
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
      let meter = BodyMeter {
        state: std::rc::Rc::downgrade(&state_rc),
        id,
        limit,
      };
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
  state.borrow_mut::<Invocations>().js_finished(id);
}

/// Counts an outbound `fetch()` of invocation `id`; past the limit the
/// invocation ends with 503 and this returns false (fetch then rejects).
#[op2(fast)]
pub fn op_isola_subrequest(state: &mut OpState, #[smi] id: i32) -> bool {
  let Ok(id) = u32::try_from(id) else {
    return true;
  };
  let invocations = state.borrow_mut::<Invocations>();
  if invocations.count_subrequest(id) {
    return true;
  }
  let limit = invocations.subrequest_limit;
  invocations.limit(id, LimitExceeded::Subrequests(limit));
  false
}
