//! The table of invocations in flight in one isolate: pure data, with time
//! passed in, so it is tested without V8.

use std::cell::RefCell;
use std::cell::RefMut;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::rc::Rc;
use std::task::Context;

use std::time::Duration;
use std::time::Instant;

use deno_core::OpState;
use tokio::sync::oneshot;

use crate::body::ResponseBody;
use crate::outcome::LimitExceeded;
use crate::outcome::Outcome;
use crate::trace::Trace;

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
  /// A scheduled run ended without an error (its handler and every
  /// `waitUntil` promise settled).
  Done,
  /// An RPC method returned this value (V8-serialised).
  Value(Vec<u8>),
  /// An RPC method threw: the error's `name` and `message`, for the caller
  /// to rethrow (the stack went to the callee's log).
  Thrown { name: String, message: String },
  /// The worker has no handler for this kind of invocation; the text says
  /// which and how to add one.
  Missing(String),
}

/// Per-invocation settings that differ from the isolate's: a scheduled run
/// has its own CPU and wall limits, a service binding call its depth.
#[derive(Clone, Copy, Debug)]
pub struct InvocationSpec {
  /// Invocations in the chain up to and including this one (1: called from
  /// outside, 2: through one service binding, ...).
  pub depth: u32,
  /// CPU limit in ns; `None`: the isolate's.
  pub cpu_limit_ns: Option<u64>,
  /// Wall-clock limit; `None`: the isolate's.
  pub wall: Option<Duration>,
}

impl Default for InvocationSpec {
  fn default() -> Self {
    Self {
      depth: 1,
      cpu_limit_ns: None,
      wall: None,
    }
  }
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

/// Storage operations an invocation made, counted as Cloudflare bills
/// them: KV reads, writes, deletes and lists apart (a read an edge's cache
/// answers still counts), and queue operations per started 64 KB of each
/// message sent. Only operations that reached storage count: one refused
/// by a check or a limit, or whose call failed, does not; nor does one
/// that completes after its invocation is over (neither awaited nor
/// passed to `waitUntil`), like the CPU of such work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StorageOps {
  pub kv_reads: u32,
  pub kv_writes: u32,
  pub kv_deletes: u32,
  pub kv_lists: u32,
  pub queue_ops: u64,
}

/// What an invocation used, kept while it runs.
#[derive(Clone, Debug)]
pub struct Usage {
  pub start: Instant,
  pub start_time: std::time::SystemTime,
  pub cpu_ns: u64,
  pub peak_memory: u64,
  pub subrequests: u32,
  pub bytes_in: u64,
  pub bytes_out: u64,
  pub ops: StorageOps,
  pub outcome: Option<Outcome>,
  /// A scheduled handler called `controller.noRetry()`.
  pub no_retry: bool,
  /// What observers see of it; `None` unless [`Invocations::tracing`].
  pub trace: Option<Box<Trace>>,
}

impl Usage {
  fn new(start: Instant, start_time: std::time::SystemTime) -> Self {
    Self {
      start,
      start_time,
      cpu_ns: 0,
      peak_memory: 0,
      subrequests: 0,
      bytes_in: 0,
      bytes_out: 0,
      ops: StorageOps::default(),
      outcome: None,
      no_retry: false,
      trace: None,
    }
  }
}

/// Response header pairs kept parsed per isolate, and the longest value
/// kept: what an idle isolate holds stays small.
const RECENT_HEADERS: usize = 8;
const RECENT_HEADER_BYTES: usize = 256;

/// The last response header pairs a worker sent, parsed.
#[derive(Default)]
struct RecentHeaders {
  pairs: [Option<(http::HeaderName, http::HeaderValue)>; RECENT_HEADERS],
  /// Where the next new pair goes (the oldest is replaced).
  next: usize,
}

impl RecentHeaders {
  /// `name: value` (bytes as JS hands them over) parsed, from the pairs
  /// kept if it is one of them; `None` for a pair `http` refuses. A
  /// worker's responses repeat their headers, so a repeat costs a
  /// comparison and a reference count, where parsing the name and copying
  /// the value cost ~250 instructions.
  fn parse(&mut self, name: &[u8], value: &[u8]) -> Option<(http::HeaderName, http::HeaderValue)> {
    let found = self
      .pairs
      .iter()
      .flatten()
      .find(|(n, v)| n.as_str().as_bytes() == name && v.as_bytes() == value);
    if let Some(pair) = found {
      return Some(pair.clone());
    }
    let (Ok(name), Ok(value)) = (
      http::HeaderName::from_bytes(name),
      http::HeaderValue::from_bytes(value),
    ) else {
      return None;
    };
    if value.len() <= RECENT_HEADER_BYTES {
      self.pairs[self.next] = Some((name.clone(), value.clone()));
      self.next = (self.next + 1) % RECENT_HEADERS;
    }
    Some((name, value))
  }
}

/// Content types responses commonly have, ready-made: `new Response(text)`
/// and `Response.json()` set the first two. One of these goes into a
/// response as a static value, with no parse and no reference count (a
/// kept pair's value is shared: its count moved up here and down again
/// when hyper cleared the map for the connection's next request).
static COMMON_CONTENT_TYPES: [http::HeaderValue; 7] = [
  http::HeaderValue::from_static("text/plain;charset=UTF-8"),
  http::HeaderValue::from_static("application/json"),
  http::HeaderValue::from_static("text/html;charset=UTF-8"),
  http::HeaderValue::from_static("text/html; charset=utf-8"),
  http::HeaderValue::from_static("application/json; charset=utf-8"),
  http::HeaderValue::from_static("text/plain"),
  http::HeaderValue::from_static("text/html"),
];

/// `value` as a content type header value: a static one if it is common,
/// else parsed (or found among the kept pairs) as any header.
fn content_type_value(recent: &mut RecentHeaders, value: &[u8]) -> Option<http::HeaderValue> {
  match COMMON_CONTENT_TYPES.iter().find(|v| v.as_bytes() == value) {
    Some(common) => Some(common.clone()),
    None => recent.parse(b"content-type", value).map(|(_, value)| value),
  }
}

/// Request header maps kept for responses within one turn, and the most
/// headers such a map may have room for (a map grown by a request with
/// many headers is let go).
const SPARE_HEADERS_KEPT: usize = 256;
const SPARE_HEADERS_ROOM: usize = 32;

/// Traces given back by finished invocations kept for the next requests'
/// (about a wake-up's requests; see [`Invocations::spare_traces`]).
const SPARE_TRACES_KEPT: usize = 64;

/// Room an idle isolate keeps for invocations finishing in one turn (a
/// `Usage` is ~200 bytes; see [`Invocations::shrink`]).
const FINISHED_KEPT: usize = 16;

/// Called once per invocation when it is over: response sent (streamed
/// bodies included) and `waitUntil` work settled, with the time it was
/// found over (read once for the invocations a turn finished). It gives
/// back the usage's trace if nothing kept it, for the next request's.
pub type FinishHook = Box<dyn Fn(u32, Usage, Instant) -> Option<Box<crate::Trace>>>;

struct Pending {
  reply: Option<oneshot::Sender<Reply>>,
  done: Option<oneshot::Sender<Usage>>,
  spec: InvocationSpec,
  usage: Usage,
  /// JS is done with it (response out, `waitUntil` settled).
  js_done: bool,
  /// A streamed response body is still being sent.
  streaming: bool,
  /// Cancels the service binding calls it made when it ends.
  calls: Option<Rc<deno_core::CancelHandle>>,
  /// Headers JS added for its response, sent with it; `None` until the
  /// first (most responses add one or none, and even an empty map costs
  /// its drop).
  response_headers: Option<http::HeaderMap>,
}

impl Pending {
  /// Answers it; a second answer, or one whose caller went away, is
  /// dropped.
  fn reply(&mut self, reply: Reply) {
    let Some(tx) = self.reply.take() else {
      return;
    };
    let outcome = match &reply {
      Reply::Response(_) | Reply::Done | Reply::Value(_) => Outcome::Ok,
      Reply::Exception(_) | Reply::Thrown { .. } | Reply::Missing(_) => Outcome::Exception,
      Reply::Limit(limit) => limit.outcome(),
      Reply::Stopped(_) => Outcome::Stopped,
    };
    self.usage.outcome.get_or_insert(outcome);
    if let Some(trace) = &mut self.usage.trace {
      match &reply {
        Reply::Response(r) => trace.set_status(r.status().as_u16()),
        Reply::Stopped(why) => trace.exception("Error", why, None),
        _ => {}
      }
    }
    let _ = tx.send(reply);
  }

  /// Adds a header to its response, into a spare map if it has none yet.
  fn add_header(
    &mut self,
    name: http::HeaderName,
    value: http::HeaderValue,
    spare: &mut Vec<http::HeaderMap>,
  ) {
    self
      .response_headers
      .get_or_insert_with(|| spare.pop().unwrap_or_default())
      .append(name, value);
  }

  /// Answers it with `status`, `body` and `headers`.
  fn respond(&mut self, status: http::StatusCode, body: ResponseBody, headers: http::HeaderMap) {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    let empty = std::mem::replace(response.headers_mut(), headers);
    // `Response::new`'s map has no allocation (`HeaderMap::new` makes none):
    // forgotten rather than dropped, which cost ~50 instructions a response.
    debug_assert_eq!(empty.capacity(), 0);
    std::mem::forget(empty);
    self.reply(Reply::Response(response));
  }

  /// The headers added for its response, taken; a spare map if none were
  /// (hyper parses the connection's next request into it).
  fn take_headers(&mut self, spare: &mut Vec<http::HeaderMap>) -> http::HeaderMap {
    self
      .response_headers
      .take()
      .or_else(|| spare.pop())
      .unwrap_or_default()
  }
}

/// How an isolate's [`Invocations`] are held: in its `OpState` for the ops,
/// and by its worker, which reaches them several times a request. Looking
/// them up in `OpState` (a B-tree of type ids) cost 100–200 instructions
/// each time (`bench/instructions.py`), depending on where their type id
/// falls among the ~40 others there.
pub type InvocationsCell = Rc<RefCell<Invocations>>;

/// The invocations of the isolate whose `OpState` this is. Taking `&mut`
/// keeps what it did when they were borrowed from `OpState` directly: no
/// op holds them twice.
pub fn invocations(state: &mut OpState) -> RefMut<'_, Invocations> {
  state.borrow::<InvocationsCell>().borrow_mut()
}

/// The isolate's invocations as a JS object, which the ops of every
/// response take as their first argument: V8 hands it to them with the
/// call, where finding [`InvocationsCell`] in `OpState` cost each op 100–250
/// instructions.
pub struct InvocationsRef(InvocationsCell);

impl InvocationsRef {
  pub fn new(cell: InvocationsCell) -> Self {
    Self(cell)
  }

  /// The invocations; an op borrows them once.
  pub(crate) fn get(&self) -> RefMut<'_, Invocations> {
    self.0.borrow_mut()
  }
}

// SAFETY: it holds no V8 value, so there is nothing to trace.
unsafe impl deno_core::GarbageCollected for InvocationsRef {
  fn trace(&self, _visitor: &mut deno_core::v8::cppgc::Visitor) {}

  fn get_name(&self) -> &'static std::ffi::CStr {
    c"InvocationsRef"
  }
}

/// Invocations in flight in one isolate, by id. The id travels into JS with
/// the request and comes back with the response.
#[derive(Default)]
pub struct Invocations {
  next_id: u32,
  /// Looked up a dozen times per request: keyed by our own counter, so a
  /// fast hash has nothing to defend against.
  pending: HashMap<u32, Pending, foldhash::fast::FixedState>,
  on_finish: Option<FinishHook>,
  /// Finished during the current turn; reported once the turn's CPU is
  /// charged, so a handler that answers synchronously is not billed 0.
  finished: Vec<(u32, Usage, Option<oneshot::Sender<Usage>>)>,
  in_turn: bool,
  recent_headers: RecentHeaders,
  /// Header maps of requests whose headers JS has been handed, cleared:
  /// a response takes one rather than allocate its own. hyper keeps a
  /// response's map to parse its connection's next request into, so one
  /// map goes round from request to response. Let go when a turn ends.
  spare_headers: Vec<http::HeaderMap>,
  /// Fetch traces whose events are written, given back by the finish
  /// hook: a request's trace is made in one ([`Trace::fetch`]) rather than
  /// in a new box and copy, which cost the request two allocations, their
  /// frees and two copies of the event. Let go when the worker is idle.
  // The boxes themselves are what is reused: a trace travels boxed.
  #[allow(clippy::vec_box)]
  spare_traces: Vec<Box<crate::Trace>>,
  /// The last invocation's start and its system time: a wake-up's
  /// requests share one start, and the conversion reads a thread-local.
  last_start: Option<(Instant, std::time::SystemTime)>,
  /// Outbound `fetch()` calls allowed per invocation (0: no limit).
  pub subrequest_limit: u32,
  /// Response body bytes allowed per invocation (0: no limit).
  pub response_body_limit: u64,
  /// Trace events are kept: invocations collect their logs and exceptions.
  pub tracing: bool,
  /// Traced invocations also get a span (W3C trace context) and time
  /// their outgoing `fetch()` calls: the node exports OpenTelemetry spans.
  pub spans: bool,
}

impl Invocations {
  /// Registers an invocation starting at `now`. `done` gets its usage once
  /// the response is sent and every `ctx.waitUntil()` promise has settled.
  pub fn insert(
    &mut self,
    reply: oneshot::Sender<Reply>,
    done: Option<oneshot::Sender<Usage>>,
    now: Instant,
  ) -> u32 {
    self.insert_with(reply, done, now, InvocationSpec::default())
  }

  /// Like [`Invocations::insert`], with limits or a depth of its own.
  pub fn insert_with(
    &mut self,
    reply: oneshot::Sender<Reply>,
    done: Option<oneshot::Sender<Usage>>,
    now: Instant,
    spec: InvocationSpec,
  ) -> u32 {
    // Ids stay small integers so they travel as V8 Smis.
    self.next_id = (self.next_id + 1) & 0x3fff_ffff;
    let id = self.next_id;
    let start_time = match self.last_start {
      Some((at, time)) if at == now => time,
      _ => {
        let time = crate::system_time_at(now);
        self.last_start = Some((now, time));
        time
      }
    };
    self.pending.insert(
      id,
      Pending {
        reply: Some(reply),
        done,
        spec,
        usage: Usage::new(now, start_time),
        js_done: false,
        streaming: false,
        calls: None,
        response_headers: None,
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
  /// reports the finished ones as over at `now()` (not called if none).
  pub fn charge_turn(&mut self, cpu_ns: u64, memory: u64, now: impl FnOnce() -> Instant) {
    self.in_turn = false;
    let n = (self.pending.len() + self.finished.len()) as u64;
    if let Some(share) = cpu_ns.checked_div(n) {
      let usages = self
        .pending
        .values_mut()
        .map(|p| &mut p.usage)
        .chain(self.finished.iter_mut().map(|(_, u, _)| u));
      for usage in usages {
        usage.cpu_ns += share;
        usage.peak_memory = usage.peak_memory.max(memory);
      }
    }
    // Drained in place: a Vec taken here would be allocated again by the
    // next turn's first finished invocation.
    let mut finished = std::mem::take(&mut self.finished);
    if !finished.is_empty() {
      let now = now();
      for (id, usage, done) in finished.drain(..) {
        self.report(id, usage, done, now);
      }
    }
    self.finished = finished;
    self.spare_headers.clear();
  }

  /// Gives back the room a burst of invocations made the table keep, for
  /// a worker gone idle. A busy worker keeps it: shrunk after every turn,
  /// it was grown again by the next.
  pub fn shrink(&mut self) {
    self.finished.shrink_to(FINISHED_KEPT);
    self.spare_headers.shrink_to(0);
    self.spare_traces = Vec::new();
  }

  /// Keeps `headers`, a request's that JS has been handed, for a response
  /// of this turn to send ([`Invocations::spare_headers`]).
  pub fn recycle_headers(&mut self, mut headers: http::HeaderMap) {
    if self.spare_headers.len() < SPARE_HEADERS_KEPT
      && (1..=SPARE_HEADERS_ROOM).contains(&headers.capacity())
    {
      headers.clear();
      self.spare_headers.push(headers);
    }
  }

  fn report(
    &mut self,
    id: u32,
    mut usage: Usage,
    done: Option<oneshot::Sender<Usage>>,
    now: Instant,
  ) {
    if let Some(tx) = done {
      // The trace goes to the hook alone: its logs are not copied.
      let trace = usage.trace.take();
      let _ = tx.send(usage.clone());
      usage.trace = trace;
    }
    let back = self
      .on_finish
      .as_ref()
      .and_then(|hook| hook(id, usage, now));
    if let Some(trace) = back {
      if self.spare_traces.len() < SPARE_TRACES_KEPT && trace.reusable() {
        self.spare_traces.push(trace);
      }
    }
  }

  /// Starts the trace of invocation `id` with what started it (callers
  /// check [`Invocations::tracing`] first, so as not to build `event`);
  /// with [`Invocations::spans`], its span is the child of `traceparent`
  /// (the request's header) or starts a new trace.
  pub fn trace(&mut self, id: u32, event: impl Into<crate::Started>, traceparent: Option<&[u8]>) {
    let spans = self.spans;
    if let Some(p) = self.pending.get_mut(&id) {
      let mut trace = Trace::new(event);
      if spans {
        trace.span = Some(crate::SpanContext::start(traceparent));
      }
      p.usage.trace = Some(Box::new(trace));
    }
  }

  /// Starts the trace of invocation `id`, `request` from `client` (callers
  /// check [`Invocations::tracing`] first), in a trace an earlier
  /// invocation gave back when there is one; spans as in
  /// [`Invocations::trace`].
  pub fn trace_fetch(
    &mut self,
    id: u32,
    request: &http::request::Parts,
    client: Option<std::net::IpAddr>,
    traceparent: Option<&[u8]>,
  ) {
    if let Some(p) = self.pending.get_mut(&id) {
      let mut trace = crate::Trace::fetch(
        self.spare_traces.pop(),
        &request.method,
        &request.uri,
        &request.headers,
        client,
      );
      if self.spans {
        trace.span = Some(crate::SpanContext::start(traceparent));
      }
      p.usage.trace = Some(trace);
    }
  }

  /// The trace of invocation `id`, if it is traced and not over.
  pub fn trace_mut(&mut self, id: u32) -> Option<&mut Trace> {
    self.pending.get_mut(&id)?.usage.trace.as_deref_mut()
  }

  /// The chain depth of invocation `id` (1 if it is unknown).
  pub fn depth(&self, id: u32) -> u32 {
    self.pending.get(&id).map_or(1, |p| p.spec.depth)
  }

  /// What cancels the service binding calls of invocation `id` once it
  /// ends (`None`: it has ended).
  pub fn calls_of(&mut self, id: u32) -> Option<Rc<deno_core::CancelHandle>> {
    let p = self.pending.get_mut(&id)?;
    Some(p.calls.get_or_insert_with(Default::default).clone())
  }

  /// Ends the invocations called through a service binding whose caller
  /// went away before they answered; returns their ids.
  pub fn drop_orphans(&mut self, cx: &mut Context<'_>) -> Vec<u32> {
    let orphans: Vec<u32> = self
      .pending
      .iter_mut()
      .filter(|(_, p)| p.spec.depth > 1)
      .filter_map(|(id, p)| {
        let tx = p.reply.as_mut()?;
        tx.poll_closed(cx).is_ready().then_some(*id)
      })
      .collect();
    for id in &orphans {
      if let Some(p) = self.pending.get_mut(id) {
        p.reply = None;
        p.usage.outcome.get_or_insert(Outcome::Canceled);
      }
      self.abandon(*id);
    }
    orphans
  }

  /// Notes that a scheduled run asked not to be retried.
  pub fn set_no_retry(&mut self, id: u32) {
    if let Some(p) = self.pending.get_mut(&id) {
      p.usage.no_retry = true;
    }
  }

  /// CPU the next isolate turn may use before the watchdog stops it: the
  /// smallest remaining allowance, times the invocations sharing the turn.
  pub fn cpu_budget(&self, limit_ns: u64) -> u64 {
    let n = self.pending.len() as u64;
    let min_left = self
      .pending
      .values()
      .map(|p| {
        p.spec
          .cpu_limit_ns
          .unwrap_or(limit_ns)
          .saturating_sub(p.usage.cpu_ns)
      })
      .min()
      .unwrap_or(limit_ns);
    min_left.saturating_mul(n.max(1)).max(1_000_000)
  }

  /// Invocations whose CPU use is past their limit (`limit_ns` unless
  /// their own) and that are not ended yet, each with its limit.
  pub fn over_cpu(&self, limit_ns: u64) -> Vec<(u32, u64)> {
    self
      .pending
      .iter()
      .map(|(id, p)| (*id, p, p.spec.cpu_limit_ns.unwrap_or(limit_ns)))
      .filter(|(_, p, limit)| p.usage.cpu_ns > *limit && p.usage.outcome != Some(Outcome::CpuLimit))
      .map(|(id, _, limit)| (id, limit))
      .collect()
  }

  /// Invocations past their wall-clock limit (`wall` unless their own) at
  /// `now`, each with its limit, and the earliest deadline of the others.
  pub fn past_wall(&self, now: Instant, wall: Duration) -> (Vec<(u32, Duration)>, Option<Instant>) {
    let mut expired = Vec::new();
    let mut earliest: Option<Instant> = None;
    for (id, p) in &self.pending {
      let wall = p.spec.wall.unwrap_or(wall);
      let deadline = p.usage.start + wall;
      if deadline <= now {
        expired.push((*id, wall));
      } else {
        earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
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

  /// Counts storage operations of invocation `id` that reached storage;
  /// an invocation already over is not charged.
  pub fn count_ops(&mut self, id: u32, count: impl FnOnce(&mut StorageOps)) {
    if let Some(p) = self.pending.get_mut(&id) {
      count(&mut p.usage.ops);
    }
  }

  pub fn add_bytes_in(&mut self, id: u32, n: u64) {
    if let Some(p) = self.pending.get_mut(&id) {
      p.usage.bytes_in += n;
    }
  }

  /// Adds a header to the response invocation `id` is about to send.
  pub fn add_response_header(&mut self, id: u32, name: http::HeaderName, value: http::HeaderValue) {
    if let Some(p) = self.pending.get_mut(&id) {
      p.add_header(name, value, &mut self.spare_headers);
    }
  }

  /// Adds header `name: value` (bytes as JS hands them over) to the
  /// response of invocation `id`; a pair `http` refuses is dropped.
  pub fn add_response_header_bytes(&mut self, id: u32, name: &[u8], value: &[u8]) {
    if let Some((name, value)) = self.recent_headers.parse(name, value) {
      self.add_response_header(id, name, value);
    }
  }

  /// The headers added for invocation `id`'s response, taken (the
  /// responses take theirs in [`Invocations::respond`] and
  /// [`Invocations::respond_full`]).
  #[cfg(test)]
  fn take_response_headers(&mut self, id: u32) -> http::HeaderMap {
    match self.pending.get_mut(&id) {
      Some(p) => p.take_headers(&mut self.spare_headers),
      None => http::HeaderMap::new(),
    }
  }

  /// Answers invocation `id` with `status`, `body` and the headers its JS
  /// added.
  pub(crate) fn respond(&mut self, id: u32, status: http::StatusCode, body: ResponseBody) {
    if let Some(p) = self.pending.get_mut(&id) {
      let headers = p.take_headers(&mut self.spare_headers);
      p.respond(status, body, headers);
    }
  }

  /// Answers invocation `id` with `status` and a whole `body`, with the
  /// headers its JS added and `content_type` unless it is empty; a body
  /// over the response body limit ends it instead. With `last`, its JS is
  /// done too. What the `op_isola_respond_*` ops do for a whole body, with
  /// the invocation looked up once.
  pub(crate) fn respond_full(
    &mut self,
    id: u32,
    status: http::StatusCode,
    body: bytes::Bytes,
    content_type: &[u8],
    last: bool,
  ) {
    let content_type = if content_type.is_empty() {
      None
    } else {
      content_type_value(&mut self.recent_headers, content_type)
    };
    let limit = self.response_body_limit;
    let Some(p) = self.pending.get_mut(&id) else {
      return;
    };
    let len = body.len() as u64;
    p.usage.bytes_out += len;
    if limit != 0 && len > limit {
      self.limit(id, LimitExceeded::ResponseBody(limit));
    } else {
      // The content type goes straight into the map the response takes,
      // not through the invocation's record.
      let mut headers = p.take_headers(&mut self.spare_headers);
      if let Some(value) = content_type {
        headers.append(http::header::CONTENT_TYPE, value);
      }
      p.respond(status, ResponseBody::full(body), headers);
    }
    if last {
      self.js_finished(id);
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
        if let Some(trace) = &mut p.usage.trace {
          trace.exception("Error", &limit.to_string(), None);
        }
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
    let Entry::Occupied(entry) = self.pending.entry(id) else {
      return;
    };
    let p = entry.get();
    if !p.js_done || p.streaming || p.reply.is_some() {
      return;
    }
    let mut p = entry.remove();
    if let Some(calls) = p.calls.take() {
      calls.cancel();
    }
    let done = p.done.take();
    if self.in_turn {
      self.finished.push((id, p.usage, done));
    } else {
      self.report(id, p.usage, done, Instant::now());
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
      p.reply(reply);
    }
  }

  /// JS is done with invocation `id` (response out, `waitUntil` settled).
  pub(crate) fn js_finished(&mut self, id: u32) {
    if let Some(p) = self.pending.get_mut(&id) {
      p.js_done = true;
    }
    self.maybe_finish(id);
  }

  /// Fails every invocation still waiting for its response (and ends those
  /// only waiting on `waitUntil` work); returns the ids that got no response.
  pub fn fail_all(&mut self, failure: Failure<'_>) -> Vec<u32> {
    let mut failed = Vec::new();
    if self.pending.is_empty() {
      return failed;
    }
    for id in self.ids() {
      let Some(p) = self.pending.get_mut(&id) else {
        continue;
      };
      if p.reply.is_some() {
        failed.push(id);
        match failure {
          Failure::Exception(message) => {
            if let Some(trace) = self.trace_mut(id) {
              trace.exception("Error", message, None);
            }
            self.reply(id, Reply::Exception(message.to_string()))
          }
          Failure::Limit(limit) => self.limit(id, limit),
        }
      }
      self.abandon(id);
    }
    failed
  }
}

#[cfg(test)]
mod tests {
  //! The table alone, with injected time: no V8, no sleeps.

  use std::cell::RefCell;
  use std::rc::Rc;
  use std::time::Duration;

  use super::*;

  struct Started {
    id: u32,
    reply: oneshot::Receiver<Reply>,
    done: oneshot::Receiver<Usage>,
  }

  fn start(table: &mut Invocations, now: Instant) -> Started {
    let (reply_tx, reply) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let id = table.insert(reply_tx, Some(done_tx), now);
    Started { id, reply, done }
  }

  fn respond(table: &mut Invocations, id: u32) {
    table.reply(
      id,
      Reply::Response(http::Response::new(ResponseBody::empty())),
    );
    table.js_finished(id);
  }

  /// Records what the finish hook reports.
  fn record(table: &mut Invocations) -> Rc<RefCell<Vec<(u32, Usage)>>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    table.set_finish_hook(Box::new(move |id, usage, _| {
      sink.borrow_mut().push((id, usage));
      None
    }));
    seen
  }

  #[test]
  fn response_headers_are_added_as_sent_whether_kept_parsed_or_not() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let long = "v".repeat(300);
    // Repeats, more distinct pairs than are kept, a name in capitals (kept
    // apart from its lowercase form), a long value, and pairs `http` refuses.
    let mut sent: Vec<(String, String)> = Vec::new();
    for round in 0..3 {
      for k in 0..12 {
        sent.push((format!("x-h{}", k % 10), format!("v{k}")));
      }
      sent.push(("content-type".into(), "text/plain".into()));
      sent.push(("Content-Type".into(), "text/plain".into()));
      sent.push(("x-long".into(), long.clone()));
      sent.push(("x-round".into(), format!("{round}")));
    }
    let refused = [("bad name", "v"), ("x-ok", "bad\nvalue")];
    for round in 0..2 {
      let a = start(&mut table, t0);
      for (name, value) in &sent {
        table.add_response_header_bytes(a.id, name.as_bytes(), value.as_bytes());
      }
      for (name, value) in refused {
        table.add_response_header_bytes(a.id, name.as_bytes(), value.as_bytes());
      }
      let headers = table.take_response_headers(a.id);
      let got: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
      let mut want: Vec<(String, String)> = sent
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
      // A HeaderMap groups a name's values in the order they came.
      let order: Vec<String> = want.iter().fold(Vec::new(), |mut o, (n, _)| {
        if !o.contains(n) {
          o.push(n.clone());
        }
        o
      });
      want.sort_by_key(|(n, _)| order.iter().position(|o| o == n));
      assert_eq!(got, want, "round {round}");
      respond(&mut table, a.id);
    }
  }

  fn response_of(reply: &mut oneshot::Receiver<Reply>) -> http::Response<ResponseBody> {
    match reply.try_recv() {
      Ok(Reply::Response(response)) => response,
      other => panic!("{other:?}"),
    }
  }

  #[test]
  fn a_request_s_header_map_carries_only_its_response_s_headers() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let seen = record(&mut table);
    table.response_body_limit = 5;
    table.begin_turn();
    let mut started: Vec<Started> = (0..4).map(|_| start(&mut table, t0)).collect();
    for _ in &started {
      let mut request = http::HeaderMap::new();
      request.insert("cookie", http::HeaderValue::from_static("secret"));
      request.insert("host", http::HeaderValue::from_static("a.test"));
      table.recycle_headers(request);
    }
    let long = b"more than five".to_vec();
    let ids: Vec<u32> = started.iter().map(|s| s.id).collect();
    // A header, then the whole body with its content type; no headers at
    // all; a body over the limit; a content type alone.
    table.add_response_header_bytes(ids[0], b"x-a", b"1");
    table.respond_full(
      ids[0],
      http::StatusCode::CREATED,
      "hi".into(),
      b"text/plain",
      true,
    );
    table.respond_full(ids[1], http::StatusCode::OK, "".into(), b"", true);
    table.respond_full(ids[2], http::StatusCode::OK, long.into(), b"", true);
    table.respond_full(
      ids[3],
      http::StatusCode::OK,
      "ok".into(),
      b"text/html",
      false,
    );
    let a = response_of(&mut started[0].reply);
    assert_eq!(a.status(), http::StatusCode::CREATED);
    let names: Vec<_> = a
      .headers()
      .iter()
      .map(|(n, v)| (n.as_str(), v.as_bytes()))
      .collect();
    assert_eq!(names, [("x-a", &b"1"[..]), ("content-type", b"text/plain")]);
    // An answer without headers still takes a spare map (hyper parses the
    // next request into it), emptied.
    let b = response_of(&mut started[1].reply);
    assert!(b.headers().is_empty());
    assert!(b.headers().capacity() > 0);
    assert!(matches!(
      started[2].reply.try_recv(),
      Ok(Reply::Limit(LimitExceeded::ResponseBody(5)))
    ));
    let d = response_of(&mut started[3].reply);
    assert_eq!(d.headers().len(), 1);
    assert_eq!(table.len(), 1, "the last one's JS is not done");
    table.charge_turn(1_000, 0, || t0);
    let seen = seen.borrow();
    let bytes_out: Vec<u64> = seen.iter().map(|(_, u)| u.bytes_out).collect();
    assert_eq!(bytes_out, [2, 0, 14]);
    // Spare maps do not outlive their turn.
    let e = start(&mut table, t0);
    assert_eq!(table.take_response_headers(e.id).capacity(), 0);
  }

  #[test]
  fn a_whole_response_s_content_type_is_sent_as_given_common_or_not() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let types: [&[u8]; 5] = [
      b"text/plain;charset=UTF-8",
      b"application/json",
      b"text/csv",
      b"text/csv",
      b"bad\ntype",
    ];
    for content_type in types {
      let mut a = start(&mut table, t0);
      table.respond_full(a.id, http::StatusCode::OK, "x".into(), content_type, true);
      let response = response_of(&mut a.reply);
      let sent: Vec<&[u8]> = response
        .headers()
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .map(http::HeaderValue::as_bytes)
        .collect();
      if content_type.contains(&b'\n') {
        assert!(sent.is_empty(), "a value http refuses is left out");
      } else {
        assert_eq!(sent, [content_type]);
      }
    }
  }

  #[test]
  fn a_burst_s_room_is_kept_while_busy_and_given_back_when_idle() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    for _ in 0..2 {
      table.begin_turn();
      for _ in 0..40 {
        let a = start(&mut table, t0);
        respond(&mut table, a.id);
      }
      table.charge_turn(1_000, 0, || t0);
      assert!(table.is_empty());
      assert!(table.finished.capacity() >= 40, "kept between turns");
    }
    table.shrink();
    assert!(table.finished.capacity() <= FINISHED_KEPT);
    assert_eq!(table.spare_headers.capacity(), 0);
  }

  #[test]
  fn a_turn_s_cpu_is_split_over_the_invocations_in_it() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let seen = record(&mut table);
    let a = start(&mut table, t0);
    let b = start(&mut table, t0);
    table.begin_turn();
    // `b` answers within the turn: it still shares its CPU, and is only
    // reported once the turn is charged.
    respond(&mut table, b.id);
    assert!(seen.borrow().is_empty());
    table.charge_turn(1_000, 4096, || t0);
    assert_eq!(table.usage(a.id).unwrap().cpu_ns, 500);
    assert_eq!(table.usage(a.id).unwrap().peak_memory, 4096);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, b.id);
    assert_eq!(seen[0].1.cpu_ns, 500);
    assert_eq!(seen[0].1.outcome, Some(Outcome::Ok));
  }

  #[test]
  fn the_cpu_budget_is_the_smallest_allowance_times_the_sharers() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    assert_eq!(table.cpu_budget(50_000_000), 50_000_000);
    let a = start(&mut table, t0);
    table.begin_turn();
    table.charge_turn(40_000_000, 0, || t0);
    let _b = start(&mut table, t0);
    // `a` has 10 ms left, and two invocations share the next turn.
    assert_eq!(table.cpu_budget(50_000_000), 20_000_000);
    assert!(table.over_cpu(50_000_000).is_empty());
    table.begin_turn();
    table.charge_turn(30_000_000, 0, || t0);
    assert_eq!(table.over_cpu(50_000_000), vec![(a.id, 50_000_000)]);
    table.limit(a.id, LimitExceeded::Cpu(Duration::from_millis(50)));
    assert!(table.over_cpu(50_000_000).is_empty(), "reported once");
  }

  #[test]
  fn invocations_expire_by_their_start_time() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let wall = Duration::from_millis(100);
    let ms = Duration::from_millis;
    let early = start(&mut table, t0);
    let late = start(&mut table, t0 + ms(10));
    let (expired, earliest) = table.past_wall(t0 + ms(105), wall);
    assert_eq!(expired, vec![(early.id, wall)]);
    assert_eq!(earliest, Some(t0 + ms(110)));
    let (mut expired, earliest) = table.past_wall(t0 + ms(110), wall);
    expired.sort();
    let mut both = vec![(early.id, wall), (late.id, wall)];
    both.sort();
    assert_eq!(expired, both);
    assert_eq!(earliest, None);
  }

  #[test]
  fn an_invocation_s_own_limits_override_the_isolate_s() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut table = Invocations::default();
    let (reply, _reply) = oneshot::channel();
    let spec = InvocationSpec {
      depth: 3,
      cpu_limit_ns: Some(30_000_000_000),
      wall: Some(ms(900_000)),
    };
    let long = table.insert_with(reply, None, t0, spec);
    let short = start(&mut table, t0);
    assert_eq!(table.depth(long), 3);
    assert_eq!(table.depth(short.id), 1);
    table.begin_turn();
    table.charge_turn(120_000_000, 0, || t0);
    // 60 ms each: past 50 ms, far from 30 s.
    assert_eq!(table.over_cpu(50_000_000), vec![(short.id, 50_000_000)]);
    let (expired, earliest) = table.past_wall(t0 + ms(30_000), ms(30_000));
    assert_eq!(expired, vec![(short.id, ms(30_000))]);
    assert_eq!(earliest, Some(t0 + ms(900_000)));
  }

  #[test]
  fn a_limit_answers_and_outranks_an_earlier_response() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let seen = record(&mut table);
    // Not answered yet: the limit is the answer.
    let mut a = start(&mut table, t0);
    table.limit(a.id, LimitExceeded::RequestBody(10));
    match a.reply.try_recv() {
      Ok(Reply::Limit(LimitExceeded::RequestBody(10))) => {}
      other => panic!("{other:?}"),
    }
    table.abandon(a.id);
    assert!(a.done.try_recv().is_ok());
    // Answered, then its streamed body broke the limit: it counts as that.
    let mut b = start(&mut table, t0);
    table.set_streaming(b.id, true);
    respond(&mut table, b.id);
    assert!(matches!(b.reply.try_recv(), Ok(Reply::Response(_))));
    table.limit(b.id, LimitExceeded::ResponseBody(10));
    table.set_streaming(b.id, false);
    assert!(table.is_empty());
    let seen = seen.borrow();
    assert_eq!(seen[0].1.outcome, Some(Outcome::RequestBodyLimit));
    assert_eq!(seen[1].1.outcome, Some(Outcome::ResponseBodyLimit));
  }

  #[test]
  fn failing_all_answers_only_those_still_waiting() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let mut waiting = start(&mut table, t0);
    let answered = start(&mut table, t0);
    table.reply(
      answered.id,
      Reply::Response(http::Response::new(ResponseBody::empty())),
    );
    let failed = table.fail_all(Failure::Limit(LimitExceeded::Memory(64 << 20)));
    assert_eq!(failed, vec![waiting.id]);
    match waiting.reply.try_recv() {
      Ok(Reply::Limit(limit)) => assert_eq!(limit.outcome(), Outcome::MemoryLimit),
      other => panic!("{other:?}"),
    }
    assert!(table.is_empty(), "waitUntil work is abandoned too");
  }

  #[test]
  fn a_called_invocation_whose_caller_left_is_canceled() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let seen = record(&mut table);
    let spec = InvocationSpec {
      depth: 2,
      ..InvocationSpec::default()
    };
    let (called_tx, called_rx) = oneshot::channel();
    let called = table.insert_with(called_tx, None, t0, spec);
    // A request from outside whose client left is not canceled here.
    let (outside_tx, outside_rx) = oneshot::channel();
    let outside = table.insert(outside_tx, None, t0);
    let waker = futures_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(table.drop_orphans(&mut cx).is_empty());
    drop(called_rx);
    drop(outside_rx);
    assert_eq!(table.drop_orphans(&mut cx), vec![called]);
    assert_eq!(table.len(), 1);
    assert!(table.usage(outside).is_some());
    assert_eq!(seen.borrow()[0].1.outcome, Some(Outcome::Canceled));
  }

  #[test]
  fn an_ended_invocation_cancels_its_binding_calls() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let a = start(&mut table, t0);
    let calls = table.calls_of(a.id).unwrap();
    assert!(!calls.is_canceled());
    respond(&mut table, a.id);
    assert!(calls.is_canceled());
    assert!(table.calls_of(a.id).is_none());
  }

  fn futures_waker() -> std::task::Waker {
    struct Noop;
    impl std::task::Wake for Noop {
      fn wake(self: std::sync::Arc<Self>) {}
    }
    std::task::Waker::from(std::sync::Arc::new(Noop))
  }

  #[test]
  fn a_trace_goes_to_the_hook_with_its_status_and_limit() {
    let t0 = Instant::now();
    let mut table = Invocations {
      tracing: true,
      ..Invocations::default()
    };
    let seen = record(&mut table);
    let mut a = start(&mut table, t0);
    table.trace(
      a.id,
      isola_proto::trace::EventInfo::Fetch {
        method: "GET".into(),
        url: "http://a.test/".into(),
        headers: vec![],
        client_ip: None,
        status: None,
      },
      None,
    );
    table.set_streaming(a.id, true);
    respond(&mut table, a.id);
    table.limit(a.id, LimitExceeded::ResponseBody(10));
    table.set_streaming(a.id, false);
    // The usage waiter gets no copy of the trace; the hook gets it.
    assert!(a.done.try_recv().unwrap().trace.is_none());
    let seen = seen.borrow();
    let trace = seen[0].1.trace.as_deref().unwrap();
    assert!(trace.span.is_none(), "no span unless the node exports them");
    assert!(matches!(
      trace.event.info(),
      isola_proto::trace::EventInfo::Fetch {
        status: Some(200),
        ..
      }
    ));
    assert_eq!(trace.exceptions.len(), 1);
    assert!(trace.exceptions[0].message.starts_with("body limit"));
  }

  #[test]
  fn a_request_s_trace_is_made_in_one_the_hook_gave_back_until_idle() {
    let t0 = Instant::now();
    let mut table = Invocations {
      tracing: true,
      ..Invocations::default()
    };
    // The hook keeps each trace's event, and gives the trace back as a
    // sink that wrote its row does.
    let seen: Rc<RefCell<Vec<crate::Started>>> = Rc::default();
    let sink = seen.clone();
    table.set_finish_hook(Box::new(move |_, mut usage, _| {
      let trace = usage.trace.take()?;
      sink.borrow_mut().push(trace.event.clone());
      Some(trace)
    }));
    let request = |uri: &str, agent: Option<&str>| {
      let mut request = http::Request::get(uri);
      if let Some(agent) = agent {
        request = request.header("user-agent", agent);
      }
      request.body(()).unwrap().into_parts().0
    };
    let long = format!("/{}", "x".repeat(300));
    let requests = [
      request("/a?b=c", Some("curl/8")),
      request("http://b.test/", None),
      request(&long, None),
      request("/d", None),
    ];
    // Kept after each: the first's; none (the second's was used for it,
    // and it logged); none (the third's URL was long); the fourth's.
    let mut kept = Vec::new();
    for (i, parts) in requests.iter().enumerate() {
      table.begin_turn();
      let a = start(&mut table, t0);
      table.trace_fetch(a.id, parts, None, None);
      assert_eq!(table.spare_traces.len(), 0, "a kept trace is used");
      if i == 1 {
        // A trace that logged is not kept for another.
        table
          .trace_mut(a.id)
          .unwrap()
          .log(crate::Level::Log, "hi", std::time::SystemTime::now());
      }
      respond(&mut table, a.id);
      table.charge_turn(1_000, 0, || t0);
      kept.push(table.spare_traces.len());
    }
    assert_eq!(kept, [1, 0, 0, 1]);
    let seen = seen.borrow();
    assert_eq!(seen.len(), requests.len());
    for (event, parts) in seen.iter().zip(&requests) {
      let fresh = crate::Trace::fetch(None, &parts.method, &parts.uri, &parts.headers, None);
      let mut want = fresh.event.info();
      if let isola_proto::trace::EventInfo::Fetch { status, .. } = &mut want {
        *status = Some(200);
      }
      assert_eq!(event.info(), want, "{}", parts.uri);
    }
    table.shrink();
    assert_eq!(table.spare_traces.capacity(), 0, "let go when idle");
  }

  #[test]
  fn storage_operations_are_reported_with_their_invocation_and_not_after_it() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let seen = record(&mut table);
    let mut a = start(&mut table, t0);
    table.count_ops(a.id, |o| o.kv_reads += 1);
    table.count_ops(a.id, |o| o.kv_reads += 1);
    table.count_ops(a.id, |o| o.kv_writes += 1);
    table.count_ops(a.id, |o| o.queue_ops += 3);
    respond(&mut table, a.id);
    // An operation that completes once the invocation is over is not billed.
    table.count_ops(a.id, |o| o.kv_deletes += 1);
    let want = StorageOps {
      kv_reads: 2,
      kv_writes: 1,
      queue_ops: 3,
      ..StorageOps::default()
    };
    assert_eq!(a.done.try_recv().unwrap().ops, want);
    assert_eq!(seen.borrow()[0].1.ops, want);
  }

  #[test]
  fn a_streaming_response_keeps_the_invocation_open() {
    let t0 = Instant::now();
    let mut table = Invocations::default();
    let mut a = start(&mut table, t0);
    table.set_streaming(a.id, true);
    respond(&mut table, a.id);
    assert_eq!(table.len(), 1);
    assert!(a.done.try_recv().is_err());
    table.set_streaming(a.id, false);
    assert!(table.is_empty());
    assert!(a.done.try_recv().is_ok());
  }
}
