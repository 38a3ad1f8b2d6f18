//! A worker loaded into its isolate: requests in, turns of the isolate
//! with their CPU, memory and wall-clock accounting, and the event loop.

use std::cell::Cell;
use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use deno_core::v8;
use deno_core::JsRuntime;
use deno_core::PollEventLoopOptions;
use http::Method;
use http_body::Body as _;
use isola_ext::Failure;
use isola_ext::InvocationSpec;
use isola_ext::InvocationsCell;
use isola_ext::LimitExceeded;
use isola_ext::LogSink;
use isola_ext::Reply;
use isola_ext::RequestBodyAtHand;
use isola_ext::ResponseBody;
use isola_ext::Usage;
use isola_proto::trace::EventInfo;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::enter::EnterGuard;
use super::enter::JsCell;
use super::handle::Call;
use super::handle::Command;
use super::handle::Fetch;
use super::handle::Invocation;
use super::handle::WorkerHandle;
use crate::error::describe_core_error;
use crate::error::Error;
use crate::error::ErrorKind;
use crate::limits::Limits;
use crate::loader::BundleLoader;
use crate::watchdog::Guard;
use crate::watchdog::Trip;
use isola_ext::RequestBody;

/// What the answer to a request that never gets one says.
const NEVER_RESPONDS: &str = "The worker's handler will never produce a response: its promise is still pending but nothing (timer, I/O) is left that could settle it";

/// One turn in this many reads V8's heap statistics.
const HEAP_SAMPLE_EVERY: u32 = 16;

/// How long after the wake-up from which they are wanted
/// ([`Worker::caches_wanted`]) the code caches of a worker's modules that
/// had none are made: long enough for the response to have left, so
/// making them (a few hundred µs for 1 KiB, milliseconds for a big
/// bundle) is not on its path, and they cover the functions that the
/// first request compiled.
const CACHE_DELAY: Duration = Duration::from_millis(10);

/// How long the V8 thread must have been quiet (no request started, no
/// worker loaded, no isolate made: [`note_busy`]) before deferred work (a
/// worker's code caches, an idle isolate's trim) is done, so that it does
/// not hold up a request that just arrived; and the most such work waits
/// past its time for that on a thread that is never quiet. Either way, one
/// piece is done at most every `QUIET` on a thread, so that work that
/// waited together (a hundred workers gone idle at once) is not done in
/// one go.
const QUIET: Duration = Duration::from_millis(5);
const QUIET_MAX_WAIT: Duration = Duration::from_millis(100);

/// How long a worker must have started nothing (and have nothing in
/// flight) before its isolate gives back what its traffic made it hold:
/// V8 grows an isolate's young generation under load (to 8 MiB on a
/// 128 MiB heap) and keeps it, and a worker that only serves small
/// requests never has the full GC after which V8's own memory reducer
/// would shrink it. The trim is a full, memory-reducing GC, so it waits
/// until the worker looks idle, not between two requests.
pub(super) const IDLE_TRIM: Duration = Duration::from_secs(10);

/// How much an idle isolate's heap (the memory V8 has committed for it)
/// must have grown since it was loaded or last trimmed for a trim to be
/// worth its GC: a fresh hello worker holds 3.0 MiB, 3.2 MiB after a few
/// thousand requests, up to 10 MiB after many (its young generation
/// grown to 8 MiB), and 2.0 MiB after a trim. A worker whose sparse
/// requests do not grow it is not trimmed again and again.
const TRIM_GROWTH: usize = 1 << 20;

thread_local! {
  /// When this V8 thread last started something that deferred work should
  /// not get in the way of.
  static LAST_BUSY: Cell<Option<tokio::time::Instant>> = const { Cell::new(None) };
  /// When a worker on this thread last did deferred work.
  static LAST_DEFERRED: Cell<Option<tokio::time::Instant>> = const { Cell::new(None) };
}

/// Notes that this V8 thread starts a request, a load or a new isolate at
/// `now` (the caller's clock read, which a request also starts its
/// invocation with).
pub(crate) fn note_busy(now: std::time::Instant) {
  LAST_BUSY.with(|busy| busy.set(Some(tokio::time::Instant::from_std(now))));
}

/// Lets time move for the isolate's JS (see `isola_ext::Clock`).
pub(super) fn tick_clock(js: &JsRuntime) {
  if let Some(clock) = clock(js) {
    clock.tick();
  }
}

/// The isolate's clock, once its bootstrap has set it.
pub(super) fn clock(js: &JsRuntime) -> Option<Rc<isola_ext::Clock>> {
  js.op_state()
    .borrow()
    .try_borrow::<Rc<isola_ext::Clock>>()
    .cloned()
}

/// The runtime's JS entry points, taken from the snapshot before any
/// worker code runs.
pub(super) struct Internals {
  pub(super) dispatch: v8::Global<v8::Function>,
  pub(super) dispatch_all: v8::Global<v8::Function>,
  pub(super) init: v8::Global<v8::Function>,
  pub(super) set_entry: v8::Global<v8::Function>,
  pub(super) scheduled: v8::Global<v8::Function>,
  pub(super) call: v8::Global<v8::Function>,
  pub(super) queue: v8::Global<v8::Function>,
  pub(super) warm: v8::Global<v8::Function>,
}

/// Wall-clock limit of a scheduled run, as on Workers.
const SCHEDULED_WALL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Writes into `url` (cleared first) the URL a handler's `request.url`
/// shows (UTF-8): `uri` as its `Display` writes it, on `http://localhost`
/// when it has no scheme.
fn request_url(url: &mut Vec<u8>, uri: &http::Uri) {
  url.clear();
  if uri.scheme().is_none() {
    url.extend_from_slice(b"http://localhost");
  }
  isola_ext::write_uri(url, uri);
}

/// Whether `last` is the URL [`request_url`] writes for `uri`, compared in
/// pieces: a client asks for the same URL request after request, and
/// writing it out to compare was ~110 instructions a request.
fn is_request_url(mut last: &[u8], uri: &http::Uri) -> bool {
  let mut eat = |piece: &[u8]| match last.strip_prefix(piece) {
    Some(rest) => {
      last = rest;
      true
    }
    None => false,
  };
  let scheme = match uri.scheme_str() {
    None => eat(b"http://localhost"),
    Some("http") => eat(b"http://"),
    Some("https") => eat(b"https://"),
    Some(other) => eat(other.as_bytes()) && eat(b"://"),
  };
  scheme
    && uri.authority().is_none_or(|a| eat(a.as_str().as_bytes()))
    && eat(uri.path().as_bytes())
    && uri.query().is_none_or(|q| eat(b"?") && eat(q.as_bytes()))
    && last.is_empty()
}

/// Pushes a started request's arguments for the dispatcher: id, method,
/// URL (written into `url`, a reused buffer, unless it is the one held),
/// body resource, entrypoint, then (after their count if `counted`, for
/// `dispatchAll`) the headers as name, value, ...
fn request_args<'s>(
  scope: &mut v8::PinScope<'s, '_>,
  strings: &mut super::strings::RequestStrings,
  url: &mut Vec<u8>,
  request: &StartedFetch,
  args: &mut DispatchArgs<'s>,
  counted: bool,
) {
  let parts = &request.parts;
  args.push(v8::Integer::new(scope, request.id as i32).into());
  args.push(
    strings
      .method(scope, &parts.method)
      .expect("method fits")
      .into(),
  );
  let held = strings.held_url(scope, |last| is_request_url(last, &parts.uri));
  args.push(
    held
      .or_else(|| {
        request_url(url, &parts.uri);
        strings.url(scope, url)
      })
      .expect("url fits")
      .into(),
  );
  args.push(match &request.body {
    Some(BodyArg::Resource(rid)) => v8::Integer::new_from_unsigned(scope, *rid).into(),
    Some(BodyArg::Bytes(bytes)) => {
      let store = v8::ArrayBuffer::new_backing_store_from_vec(bytes.to_vec()).make_shared();
      let buffer = v8::ArrayBuffer::with_backing_store(scope, &store);
      v8::Uint8Array::new(scope, buffer, 0, bytes.len())
        .expect("a Uint8Array of a small body")
        .into()
    }
    None => v8::null(scope).into(),
  });
  args.push(match &request.entrypoint {
    Some(name) => v8::String::new(scope, name).expect("name fits").into(),
    None => v8::null(scope).into(),
  });
  let count_at = args.len();
  if counted {
    args.push(v8::null(scope).into());
  }
  for (place, (name, value)) in parts.headers.iter().enumerate() {
    if let Some((n, v)) = strings.header(scope, place, name, value.as_bytes()) {
      args.push(n.into());
      args.push(v.into());
    }
  }
  if counted {
    let count = args.len() - count_at - 1;
    args[count_at] = v8::Integer::new(scope, count as i32).into();
  }
}

/// The longest URL buffer a worker keeps for the next request.
const URL_KEPT: usize = 2048;

/// The dispatcher's arguments: five, then the request's headers as name,
/// value, ... (its rest parameter; V8 makes that array in optimized code
/// for a fraction of what `v8::Array::new_with_elements` cost). On the
/// stack for up to 16 headers (a batch's usually spill to the heap).
type DispatchArgs<'s> = smallvec::SmallVec<[v8::Local<'s, v8::Value>; 37]>;

/// At most this many requests go into the isolate in one call (see
/// [`Worker::dispatch_fetches`]): a turn's CPU budget widens with each
/// request in it, and one call's arguments should stay few.
const BATCH_MAX: usize = 64;

/// Room an idle worker keeps for the requests of one wake-up. A busy one
/// keeps what its wake-ups needed (at most [`BATCH_MAX`] each): shrunk
/// after each wake-up, the buffers grew again at the next (a `realloc` and
/// a copy into cold memory, ~150 instructions a request at 28 a wake-up).
const ARRIVED_KEPT: usize = 4;

/// A request whose invocation is registered, ready for its JS call.
pub(super) struct StartedFetch {
  id: u32,
  parts: http::request::Parts,
  body: Option<BodyArg>,
  entrypoint: Option<String>,
}

/// How a request's body goes to the dispatcher ([`RequestBodyAtHand`]).
enum BodyArg {
  /// The resource id of a body JS reads as it needs.
  Resource(u32),
  /// The whole body, a `Uint8Array` for JS.
  Bytes(bytes::Bytes),
}

/// A worker loaded into its isolate, ready for requests.
///
/// It is `!Send`: it lives on one thread. [`Worker::spawn`] runs it as a
/// task on the current thread and returns a cloneable [`WorkerHandle`].
pub struct Worker {
  pub(super) js: JsCell,
  pub(super) internals: Internals,
  pub(super) loader: Rc<BundleLoader>,
  /// Armed while modules wait for their code caches ([`CACHE_DELAY`],
  /// [`QUIET`]).
  pub(super) cache_timer: Option<Deferred>,
  /// Armed while the isolate waits to be trimmed ([`IDLE_TRIM`]).
  pub(super) trim_timer: Option<Deferred>,
  /// When the worker last started an invocation, if it has since its
  /// isolate was last trimmed.
  pub(super) active: Option<std::time::Instant>,
  /// How long it must then be idle to be trimmed ([`IDLE_TRIM`] unless
  /// configured).
  pub(super) idle_trim: Duration,
  /// The heap's size ([`heap_committed`]) when the worker was loaded or
  /// its isolate last trimmed.
  pub(super) trimmed_at: usize,
  pub(super) name: Arc<str>,
  pub(super) guard: Arc<Guard>,
  pub(super) limits: Limits,
  /// Why the isolate stopped, once a limit or a failure stopped it; it
  /// then answers nothing more.
  pub(super) stopped: Option<String>,
  /// Set with `stopped`; shared with every [`WorkerHandle`].
  pub(super) halted: Arc<std::sync::atomic::AtomicBool>,
  /// Turns run so far, and the V8 heap size as last sampled.
  pub(super) turns: u32,
  pub(super) heap: usize,
  pub(super) wall_timer: Option<Pin<Box<tokio::time::Sleep>>>,
  /// The turn in progress: its start on the thread's CPU clock.
  pub(super) open_turn: Option<u64>,
  /// While the task of [`Worker::spawn`] handles one wake-up: the requests
  /// that arrived and the event loop's poll then share one turn.
  pub(super) batching: bool,
  /// The wake-up's monotonic clock read ([`Worker::now`]), while
  /// `batching`.
  pub(super) now: Option<std::time::Instant>,
  /// Invocations started so far (counted to 255): from the second, the
  /// worker's code is wanted again and its code caches are made.
  pub(super) started: u8,
  /// Loaded ahead of its requests ([`Worker::preloaded`]).
  pub(super) preloaded: bool,
  /// The last request's URL, kept for its buffer: each request writes
  /// its own there rather than allocate one.
  pub(super) url: Vec<u8>,
  /// The requests of the current wake-up, gathered for one call into the
  /// isolate (kept for its buffer).
  pub(super) arrived: Vec<Command>,
  /// Those requests registered, ready for the call (kept for its buffer).
  pub(super) ready: Vec<StartedFetch>,
  /// The isolate's main context, kept so that the worker's scopes do not
  /// clone it (`JsRuntime::main_context` makes a new global handle each
  /// time).
  pub(super) context: v8::Global<v8::Context>,
  /// The clock JS reads time from, ticked at each turn.
  pub(super) clock: Option<Rc<isola_ext::Clock>>,
  /// The isolate's invocations, also in its `OpState` for the ops.
  pub(super) invocations: InvocationsCell,
  /// The JS strings of request methods and header names, made once.
  pub(super) strings: super::strings::RequestStrings,
}

impl Worker {
  pub fn name(&self) -> &str {
    &self.name
  }

  /// Marks the worker as loaded ahead of its requests (a deployed
  /// version): its code caches are made once its thread is quiet, without
  /// waiting for its code to be wanted again.
  pub(crate) fn preloaded(&mut self) {
    self.preloaded = true;
  }

  /// Whether the caches of the modules compiled without one are worth
  /// making: the worker was preloaded, started a second invocation, or
  /// one of its modules was compiled without a cache before. Code that
  /// runs once (a never-seen worker with one request) gets none, as in
  /// Chrome, so a churn of one-shot workers does not pay for caches that
  /// no isolate reads.
  fn caches_wanted(&self) -> bool {
    self.preloaded || self.started > 1 || self.loader.deferred_wanted()
  }

  /// Hands `request` to the handler. Nothing happens until the event loop is
  /// polled ([`Worker::poll_event_loop`], [`Worker::fetch`] or the task of
  /// [`Worker::spawn`]). The request URI should be absolute.
  pub fn start(&mut self, request: http::Request<RequestBody>) -> Invocation {
    let (invocation, reply, done) = Invocation::new(true);
    let call = Fetch::new(request).into();
    self.dispatch(call, 1, reply, done);
    invocation
  }

  fn dispatch(
    &mut self,
    call: Call,
    depth: u32,
    reply: oneshot::Sender<Reply>,
    done: Option<oneshot::Sender<Usage>>,
  ) {
    let now = self.now();
    note_busy(now);
    self.active = Some(now);
    self.started = self.started.saturating_add(1);
    if let Some(why) = &self.stopped {
      let _ = reply.send(Reply::Stopped(why.clone()));
      return;
    }
    let spec = InvocationSpec {
      depth,
      ..InvocationSpec::default()
    };
    match call {
      Call::Fetch(fetch) => {
        if let Some(mut started) = self.start_fetch(fetch, spec, now, reply, done) {
          self.call_dispatcher(std::slice::from_mut(&mut started));
        }
      }
      Call::Scheduled {
        cron,
        scheduled_time,
        cpu_limit,
      } => {
        let cpu = cpu_limit.unwrap_or(self.limits.scheduled_cpu_limit());
        let spec = InvocationSpec {
          cpu_limit_ns: Some(cpu.as_nanos() as u64),
          wall: Some(SCHEDULED_WALL),
          ..spec
        };
        let id = self.insert(reply, done, spec, now);
        self.trace(id, || EventInfo::Scheduled {
          cron: cron.clone(),
          scheduled_time,
        });
        self.call_internal(
          |i| &i.scheduled,
          |scope| {
            vec![
              v8::Integer::new(scope, id as i32).into(),
              v8::String::new(scope, &cron).expect("cron fits").into(),
              v8::Number::new(scope, scheduled_time as f64).into(),
            ]
          },
        );
      }
      Call::Queue { batch, decisions } => {
        // Limits as a scheduled run's.
        let spec = InvocationSpec {
          cpu_limit_ns: Some(self.limits.scheduled_cpu_limit().as_nanos() as u64),
          wall: Some(SCHEDULED_WALL),
          ..spec
        };
        let id = self.insert(reply, done, spec, now);
        self.trace(id, || EventInfo::Queue {
          queue: batch.queue.clone(),
          batch_size: u32::try_from(batch.messages.len()).unwrap_or(u32::MAX),
        });
        isola_ext::start_consumer(&mut self.js.op_state().borrow_mut(), id, batch, decisions);
        self.call_internal(
          |i| &i.queue,
          |scope| vec![v8::Integer::new(scope, id as i32).into()],
        );
      }
      Call::Rpc {
        entrypoint,
        method,
        args,
      } => {
        let id = self.insert(reply, done, spec, now);
        self.trace(id, || EventInfo::Rpc {
          method: method.clone(),
        });
        self.call_internal(
          |i| &i.call,
          |scope| {
            let entrypoint = match &entrypoint {
              Some(name) => v8::String::new(scope, name).expect("name fits").into(),
              None => v8::null(scope).into(),
            };
            let len = args.len();
            let store = v8::ArrayBuffer::new_backing_store_from_vec(args).make_shared();
            let buffer = v8::ArrayBuffer::with_backing_store(scope, &store);
            let bytes = v8::Uint8Array::new(scope, buffer, 0, len).expect("view fits");
            vec![
              v8::Integer::new(scope, id as i32).into(),
              entrypoint,
              v8::String::new(scope, &method).expect("method fits").into(),
              bytes.into(),
            ]
          },
        );
      }
    }
  }

  fn insert(
    &mut self,
    reply: oneshot::Sender<Reply>,
    done: Option<oneshot::Sender<Usage>>,
    spec: InvocationSpec,
    now: std::time::Instant,
  ) -> u32 {
    self
      .invocations
      .borrow_mut()
      .insert_with(reply, done, now, spec)
  }

  /// Starts invocation `id`'s trace if the node keeps trace events;
  /// `event` is only built then.
  fn trace(&mut self, id: u32, event: impl FnOnce() -> EventInfo) {
    let mut invocations = self.invocations.borrow_mut();
    if invocations.tracing {
      invocations.trace(id, event(), None);
    }
  }

  /// Calls a dispatcher function in a turn of its own.
  fn call_internal(
    &mut self,
    pick: fn(&Internals) -> &v8::Global<v8::Function>,
    args: impl for<'s, 'i> FnOnce(&mut v8::PinScope<'s, 'i>) -> Vec<v8::Local<'s, v8::Value>>,
  ) {
    self.open_turn();
    {
      let _entered = EnterGuard::new(&mut self.js);
      let js: &mut JsRuntime = &mut self.js;
      v8::scope_with_context!(scope, &mut *js.v8_isolate(), &self.context);
      v8::tc_scope!(let scope, scope);
      let args = args(scope);
      let f = v8::Local::new(scope, pick(&self.internals));
      let undefined = v8::undefined(scope).into();
      // As in `call_dispatcher`: a failed call means termination.
      let _ = f.call(scope, undefined, &args);
    }
    self.close_turn();
  }

  /// Starts the requests gathered in `fetches` (all `Call::Fetch`), and
  /// empties it: one alone as [`Worker::dispatch`] does, several in one
  /// call into the isolate (`dispatchAll`), in the order they came.
  fn dispatch_fetches(&mut self, fetches: &mut Vec<Command>) {
    if fetches.len() <= 1 {
      if let Some(cmd) = fetches.pop() {
        self.dispatch(cmd.call, cmd.depth, cmd.reply, cmd.done);
      }
      return;
    }
    let now = self.now();
    note_busy(now);
    self.active = Some(now);
    let mut started = std::mem::take(&mut self.ready);
    for cmd in fetches.drain(..) {
      self.started = self.started.saturating_add(1);
      if let Some(why) = &self.stopped {
        let _ = cmd.reply.send(Reply::Stopped(why.clone()));
        continue;
      }
      let Call::Fetch(fetch) = cmd.call else {
        unreachable!("only requests are gathered");
      };
      let spec = InvocationSpec {
        depth: cmd.depth,
        ..InvocationSpec::default()
      };
      started.extend(self.start_fetch(fetch, spec, now, cmd.reply, cmd.done));
    }
    self.call_dispatcher(&mut started);
    started.clear();
    self.ready = started;
  }

  /// Calls the dispatcher in a turn of its own with `started`: one request
  /// as `dispatch`'s arguments, several through `dispatchAll`.
  fn call_dispatcher(&mut self, started: &mut [StartedFetch]) {
    if started.is_empty() {
      return;
    }
    let batch = started.len() > 1;
    let mut url = std::mem::take(&mut self.url);
    self.open_turn();
    {
      let _entered = EnterGuard::new(&mut self.js);
      let js: &mut JsRuntime = &mut self.js;
      v8::scope_with_context!(scope, &mut *js.v8_isolate(), &self.context);
      v8::tc_scope!(let scope, scope);
      let mut args = DispatchArgs::new();
      for request in started.iter() {
        request_args(
          scope,
          &mut self.strings,
          &mut url,
          request,
          &mut args,
          batch,
        );
      }
      // JS has the headers now: their maps go to the responses.
      let mut invocations = self.invocations.borrow_mut();
      for request in started.iter_mut() {
        invocations.recycle_headers(std::mem::take(&mut request.parts.headers));
      }
      drop(invocations);
      let dispatcher = if batch {
        &self.internals.dispatch_all
      } else {
        &self.internals.dispatch
      };
      let f = v8::Local::new(scope, dispatcher);
      let undefined = v8::undefined(scope).into();
      // The dispatcher catches handler errors itself; a failed call means the
      // isolate is being terminated, which `end_turn` reports (the requests
      // it did not reach fail with the isolate).
      let _ = f.call(scope, undefined, &args);
    }
    self.keep_url(url);
    self.close_turn();
  }

  /// Registers a request's invocation and makes its body a resource;
  /// `None` if it ended already (a declared body over the limit).
  fn start_fetch(
    &mut self,
    fetch: Box<Fetch>,
    spec: InvocationSpec,
    now: std::time::Instant,
    reply: oneshot::Sender<Reply>,
    done: Option<oneshot::Sender<Usage>>,
  ) -> Option<StartedFetch> {
    let Fetch {
      request,
      entrypoint,
      client,
    } = *fetch;
    let (parts, body) = request.into_parts();
    let body_limit = self.limits.request_body_limit();
    // A body already at its end is empty whatever its length says; most
    // requests have none, and the lookup cost ~110 instructions.
    let declared = (!body.is_end_stream())
      .then(|| parts.headers.get(http::header::CONTENT_LENGTH))
      .flatten()
      .and_then(|v| v.to_str().ok())
      .and_then(|v| v.parse::<u64>().ok());
    let mut invocations = self.invocations.borrow_mut();
    let id = invocations.insert_with(reply, done, now, spec);
    if invocations.tracing {
      let traceparent = if invocations.spans {
        parts
          .headers
          .get("traceparent")
          .map(http::HeaderValue::as_bytes)
      } else {
        None
      };
      invocations.trace_fetch(id, &parts, client, traceparent);
    }
    if declared.is_some_and(|n| n > body_limit) {
      invocations.limit(id, LimitExceeded::RequestBody(body_limit));
      invocations.abandon(id);
      return None;
    }
    let has_body =
      !(parts.method == Method::GET || parts.method == Method::HEAD || body.is_end_stream());
    let body = has_body.then(|| {
      let state = self.js.op_state();
      let meter = isola_ext::BodyMeter::request(Rc::downgrade(&state), id, body_limit);
      let (body, taken) = RequestBodyAtHand::take(body, body_limit, meter);
      // Counted here: the meter would borrow the invocations held above.
      invocations.add_bytes_in(id, taken);
      match body {
        RequestBodyAtHand::Whole(bytes) => BodyArg::Bytes(bytes),
        RequestBodyAtHand::Stream(resource) => {
          BodyArg::Resource(state.borrow_mut().resource_table.add(resource))
        }
      }
    });
    Some(StartedFetch {
      id,
      parts,
      body,
      entrypoint,
    })
  }

  /// Keeps `url`'s buffer for the next request, unless a long URL grew it:
  /// idle isolates hold no more than a usual URL's worth.
  fn keep_url(&mut self, url: Vec<u8>) {
    if url.capacity() <= URL_KEPT {
      self.url = url;
    }
  }

  /// The clock's time for this wake-up: read once by the first thing that
  /// needs it (a request's start, the wall-clock check) and shared by the
  /// rest (the turn's start, the JS clock, the watchdog), since a read
  /// costs ~70 ns on a virtual machine and a request took several. Outside
  /// the task's wake-ups ([`Worker::start`], [`Worker::fetch`]) a fresh read.
  fn now(&mut self) -> std::time::Instant {
    if !self.batching {
      return std::time::Instant::now();
    }
    *self.now.get_or_insert_with(std::time::Instant::now)
  }

  /// Starts a turn in the isolate (time moves, the CPU watchdog arms), or,
  /// inside a batch that has one open already, widens its CPU budget to the
  /// invocations now in flight.
  ///
  /// Reading the thread's CPU clock is a system call (no vDSO for it) and
  /// was the largest single cost of a small request, so one wake-up of the
  /// worker's task reads it at most twice, however many requests it starts
  /// (once on a busy thread: [`Guard::begin_at`]): the
  /// turn's CPU is split evenly over every invocation in flight during it,
  /// as for any turn, so each isolate's total stays exact.
  fn open_turn(&mut self) {
    let limit = self.limits.cpu_limit().as_nanos() as u64;
    let budget = |invocations: &InvocationsCell, begin: bool| {
      let mut invocations = invocations.borrow_mut();
      if begin {
        invocations.begin_turn();
      }
      invocations.cpu_budget(limit)
    };
    match self.open_turn {
      Some(start) => self.guard.extend(start, budget(&self.invocations, false)),
      None => {
        let now = self.now();
        if let Some(clock) = &self.clock {
          clock.tick_at(now);
        }
        let budget = budget(&self.invocations, true);
        self.open_turn = Some(self.guard.begin_at(budget, now));
      }
    }
  }

  /// Ends the open turn, unless a batch keeps it open for more work and no
  /// limit has stopped the isolate's JS meanwhile.
  fn close_turn(&mut self) {
    if self.batching && self.guard.trip() == Trip::None {
      return;
    }
    if let Some(start) = self.open_turn.take() {
      self.end_turn(start);
    }
  }

  /// Ends a turn: charges its CPU and notes memory; stops the isolate if a
  /// limit was broken.
  fn end_turn(&mut self, start: u64) {
    let cpu = self.guard.end(start);
    // Heap statistics cost more than the rest of the accounting; they only
    // feed `peak_memory` (limits are enforced by the GC callback, V8's heap
    // limit and the ArrayBuffer allocator), so sample them every few turns.
    if self.turns.is_multiple_of(HEAP_SAMPLE_EVERY) {
      let _entered = EnterGuard::new(&mut self.js);
      self.heap = self.js.v8_isolate().get_heap_statistics().used_heap_size();
    }
    self.turns = self.turns.wrapping_add(1);
    let memory = self.heap + self.guard.array_buffer_bytes();
    let mut cpu_limit = LimitExceeded::Cpu(self.limits.cpu_limit());
    let over = {
      let mut invocations = self.invocations.borrow_mut();
      invocations.charge_turn(cpu, memory as u64, std::time::Instant::now);
      let over = invocations.over_cpu(self.limits.cpu_limit().as_nanos() as u64);
      for (id, limit) in &over {
        invocations.limit(*id, LimitExceeded::Cpu(Duration::from_nanos(*limit)));
      }
      over
    };
    for (i, (id, limit)) in over.into_iter().enumerate() {
      let limit = LimitExceeded::Cpu(Duration::from_nanos(limit));
      if i == 0 {
        // A watchdog stop below names the limit that was hit.
        cpu_limit = limit;
      }
      self.log_error(Some(id), &limit.to_string());
    }
    if self.stopped.is_some() {
      return;
    }
    let memory_limit = LimitExceeded::Memory(self.guard.memory_limit() as u64);
    let trip = match self.guard.trip() {
      Trip::Cpu => Some(cpu_limit),
      Trip::Memory => Some(memory_limit),
      Trip::None if memory > self.guard.memory_limit() => Some(memory_limit),
      Trip::None => None,
    };
    if let Some(limit) = trip {
      self.halt(limit.to_string());
      self.fail_pending(Failure::Limit(limit));
    }
  }

  /// Ends invocations past their wall-clock limit, and arms the timer for
  /// the next one due.
  fn check_wall(&mut self, cx: &mut Context<'_>) {
    let wall = self.limits.wall_limit();
    // The wake-up's read first; after a timer that fired, a fresh one.
    let mut now = self.now();
    loop {
      let (expired, earliest) = self.invocations.borrow().past_wall(now, wall);
      for (id, wall) in expired {
        let limit = LimitExceeded::Wall(wall);
        {
          let mut invocations = self.invocations.borrow_mut();
          invocations.limit(id, limit);
          invocations.abandon(id);
        }
        self.log_error(Some(id), &limit.to_string());
      }
      let Some(earliest) = earliest else {
        self.wall_timer = None;
        return;
      };
      let deadline = tokio::time::Instant::from_std(earliest);
      match &mut self.wall_timer {
        Some(timer) => timer.as_mut().reset(deadline),
        None => self.wall_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
      }
      let timer = self.wall_timer.as_mut().expect("just set");
      if timer.as_mut().poll(cx).is_pending() {
        return;
      }
      now = std::time::Instant::now();
    }
  }

  /// Ends invocations called through a service binding whose caller has
  /// gone (its own invocation ended, or its isolate stopped).
  fn drop_orphans(&mut self, cx: &mut Context<'_>) {
    self.invocations.borrow_mut().drop_orphans(cx);
  }

  fn log_error(&self, invocation: Option<u32>, message: &str) {
    let state = self.js.op_state();
    let state = state.borrow();
    state.borrow::<LogSink>().emit(isola_ext::LogRecord::new(
      self.name.clone(),
      invocation,
      isola_ext::Level::Error,
      message.to_string(),
    ));
  }

  /// Runs the isolate's event loop (timers, I/O, promise jobs).
  ///
  /// `Ready(Ok(()))` means nothing is left to do; any invocation still
  /// waiting for its response then never gets one and is failed.
  pub fn poll_event_loop(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
    if let Some(why) = &self.stopped {
      return Poll::Ready(Err(ErrorKind::Stopped(why.clone()).into()));
    }
    self.check_wall(cx);
    self.drop_orphans(cx);
    self.open_turn();
    let polled = {
      let _entered = EnterGuard::new(&mut self.js);
      self.js.poll_event_loop(cx, PollEventLoopOptions::default())
    };
    self.close_turn();
    if let Some(why) = &self.stopped {
      return Poll::Ready(Err(ErrorKind::Stopped(why.clone()).into()));
    }
    match polled {
      Poll::Pending => Poll::Pending,
      Poll::Ready(Ok(())) => {
        self.fail_pending(Failure::Exception(NEVER_RESPONDS));
        Poll::Ready(Ok(()))
      }
      Poll::Ready(Err(e)) => {
        let msg = describe_core_error(&e);
        self.halt(msg.clone());
        self.fail_pending(Failure::Exception(&msg));
        Poll::Ready(Err(ErrorKind::Stopped(msg).into()))
      }
    }
  }

  /// Stops the isolate for good; handles see it closed before any caller
  /// learns why, so the pool never picks it again.
  fn halt(&mut self, why: String) {
    self
      .halted
      .store(true, std::sync::atomic::Ordering::Release);
    self.stopped = Some(why);
  }

  /// Invocations not finished yet.
  pub fn in_flight(&self) -> usize {
    self.invocations.borrow().len()
  }

  /// Memory the isolate holds now (V8 heap in use plus ArrayBuffers).
  pub fn memory_usage(&mut self) -> u64 {
    (self.js.heap_used() + self.guard.array_buffer_bytes()) as u64
  }

  /// Whether a limit (or a failure) stopped this isolate for good.
  pub fn is_stopped(&self) -> bool {
    self.stopped.is_some()
  }

  /// Fails every invocation still waiting for its response, logging why
  /// (the client only sees a plain 500).
  fn fail_pending(&mut self, failure: Failure<'_>) {
    let failed = self.invocations.borrow_mut().fail_all(failure);
    // The event loop ends idle after most requests: nothing to log then.
    if failed.is_empty() {
      return;
    }
    let why = match failure {
      Failure::Exception(why) => why.to_string(),
      Failure::Limit(limit) => limit.to_string(),
    };
    for id in failed {
      self.log_error(Some(id), &why);
    }
  }

  /// Sends one request and drives the event loop until its response head is
  /// ready. Convenient for tests and one-shot use; servers use
  /// [`Worker::spawn`].
  pub async fn fetch(
    &mut self,
    request: http::Request<RequestBody>,
  ) -> Result<http::Response<ResponseBody>, Error> {
    let mut invocation = self.start(request);
    poll_fn(|cx| {
      if let Poll::Ready(r) = invocation.poll_response(cx) {
        return Poll::Ready(r);
      }
      match self.poll_event_loop(cx) {
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Ready(Ok(())) => invocation.poll_response(cx),
        Poll::Pending => Poll::Pending,
      }
    })
    .await
  }

  /// Runs the worker as a task on the current thread (which must be inside a
  /// current-thread tokio runtime) and returns a handle to send it requests.
  pub fn spawn(self) -> WorkerHandle {
    self.spawn_with_exit(|| {})
  }

  /// Like [`Worker::spawn`]; `on_exit` runs once the isolate is gone.
  pub fn spawn_with_exit(self, on_exit: impl FnOnce() + 'static) -> WorkerHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let halted = self.halted.clone();
    deno_core::unsync::spawn(async move {
      self.serve(rx).await;
      on_exit();
    });
    WorkerHandle { tx, halted }
  }

  async fn serve(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut closed = false;
    poll_fn(|cx| {
      // One isolate entry for the whole wake-up: the entries of each
      // request and of the event loop's poll inside it then only count
      // (V8 takes a lock and allocates for a first entry).
      let _entered = EnterGuard::new(&mut self.js);
      // The requests that arrived and the event loop's poll share a turn.
      self.batching = true;
      let polled = self.serve_once(&mut rx, &mut closed, cx);
      self.batching = false;
      self.now = None;
      self.close_turn();
      if self.stopped.is_none() && self.loader.has_deferred() && self.caches_wanted() {
        self.deferred_caches(polled.is_ready(), cx);
      }
      if self.stopped.is_none() && polled.is_pending() {
        self.trim_when_idle(cx);
      }
      match (&self.stopped, polled) {
        (_, Poll::Ready(())) => Poll::Ready(()),
        // A limit found as the turn closed: the isolate answers no more.
        (Some(why), Poll::Pending) => {
          tracing::error!(worker = %self.name, "worker isolate stopped: {why}");
          Poll::Ready(())
        }
        (None, Poll::Pending) => Poll::Pending,
      }
    })
    .await;
  }

  /// Makes the code caches of the modules compiled without one, once
  /// [`CACHE_DELAY`] has passed since they were first wanted and the
  /// thread is quiet ([`QUIET`]), or now if the worker is `ending`
  /// (evicted).
  fn deferred_caches(&mut self, ending: bool, cx: &mut Context<'_>) {
    if !ending {
      let timer = self
        .cache_timer
        .get_or_insert_with(|| Deferred::at(tokio::time::Instant::now() + CACHE_DELAY));
      if !timer.quiet_moment(cx) {
        return;
      }
    }
    done_deferred();
    self.cache_timer = None;
    let (Some(cache), modules) = self.loader.take_deferred() else {
      return;
    };
    let _entered = EnterGuard::new(&mut self.js);
    let js: &mut JsRuntime = &mut self.js;
    v8::scope_with_context!(scope, &mut *js.v8_isolate(), &self.context);
    for module in modules {
      if let Some(bytes) = module_code_cache(scope, &module) {
        cache.ready(module.source, &bytes, false);
      }
    }
  }

  /// Trims the isolate ([`IDLE_TRIM`]) once the worker has started nothing
  /// for that long, has nothing in flight and the thread is quiet.
  fn trim_when_idle(&mut self, cx: &mut Context<'_>) {
    let Some(active) = self.active else {
      return;
    };
    // Busy: the end of its last invocation wakes the task, which then
    // comes back here (no timer meanwhile, however long that takes).
    if self.in_flight() > 0 {
      self.trim_timer = None;
      return;
    }
    // Its time has not come: the timer wakes the task when it does.
    if self.trim_timer.as_ref().is_some_and(Deferred::waiting) {
      return;
    }
    let due = tokio::time::Instant::from_std(active) + self.idle_trim;
    loop {
      let timer = self.trim_timer.get_or_insert_with(|| Deferred::at(due));
      if !timer.quiet_moment(cx) {
        return;
      }
      if due <= tokio::time::Instant::now() {
        break;
      }
      // It started something since the timer was armed: from that start.
      self.trim_timer = None;
    }
    self.trim_timer = None;
    self.active = None;
    // A burst's room is not kept by a worker gone idle.
    self.arrived.shrink_to(ARRIVED_KEPT);
    self.ready = Vec::new();
    self.invocations.borrow_mut().shrink();
    let _entered = EnterGuard::new(&mut self.js);
    let isolate = self.js.v8_isolate();
    if heap_committed(isolate) < self.trimmed_at.saturating_add(TRIM_GROWTH) {
      return;
    }
    // A memory-reducing full GC (`low_memory_notification` runs at least
    // two: 5.6–7.9 ms of CPU per hello worker against 5.3 ms), then back
    // to no pressure, since V8 otherwise keeps favouring memory over speed.
    isolate.memory_pressure_notification(v8::MemoryPressureLevel::Critical);
    isolate.memory_pressure_notification(v8::MemoryPressureLevel::None);
    self.trimmed_at = heap_committed(isolate);
    // Spaced from its end: a thread that is never quiet is not handed
    // from one trim straight to the next.
    done_deferred();
  }

  /// One wake-up of the task of [`Worker::spawn`]: starts what arrived,
  /// then polls the event loop.
  fn serve_once(
    &mut self,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    closed: &mut bool,
    cx: &mut Context<'_>,
  ) -> Poll<()> {
    // The requests that came are gathered and go into the isolate in one
    // call; any other call first sends those before it, so the order holds.
    let mut fetches = std::mem::take(&mut self.arrived);
    while !*closed {
      match rx.poll_recv(cx) {
        // Alone (most wake-ups bring one request): straight in, not moved
        // through the list.
        Poll::Ready(Some(cmd)) if fetches.is_empty() && rx.is_empty() => {
          self.dispatch(cmd.call, cmd.depth, cmd.reply, cmd.done);
        }
        Poll::Ready(Some(cmd)) if matches!(cmd.call, Call::Fetch(_)) => {
          fetches.push(cmd);
          if fetches.len() == BATCH_MAX {
            self.dispatch_fetches(&mut fetches);
          }
        }
        Poll::Ready(Some(cmd)) => {
          self.dispatch_fetches(&mut fetches);
          self.dispatch(cmd.call, cmd.depth, cmd.reply, cmd.done);
        }
        Poll::Ready(None) => *closed = true,
        Poll::Pending => break,
      }
    }
    self.dispatch_fetches(&mut fetches);
    self.arrived = fetches;
    // Evicted (every handle dropped) and nothing in flight: background
    // timers do not keep the isolate alive.
    if *closed && self.in_flight() == 0 {
      return Poll::Ready(());
    }
    match self.poll_event_loop(cx) {
      Poll::Ready(Ok(())) if *closed => Poll::Ready(()),
      Poll::Ready(Ok(())) => Poll::Pending,
      Poll::Ready(Err(e)) => {
        tracing::error!(worker = %self.name, "worker isolate stopped: {e}");
        Poll::Ready(())
      }
      Poll::Pending => Poll::Pending,
    }
  }
}

/// A timer for work a worker defers to a quiet moment of its thread.
pub(super) struct Deferred {
  /// When the work is done even if the thread never goes quiet.
  latest: tokio::time::Instant,
  sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Deferred {
  /// Work due at `due`.
  fn at(due: tokio::time::Instant) -> Self {
    Self {
      latest: due + QUIET_MAX_WAIT,
      sleep: Box::pin(tokio::time::sleep_until(due)),
    }
  }

  /// Whether the timer has yet to fire; one that has fired is looked at
  /// again by [`Deferred::quiet_moment`] (cheaper than polling it at every
  /// wake-up of a busy worker).
  fn waiting(&self) -> bool {
    !self.sleep.is_elapsed()
  }

  /// Whether the moment has come: the work is due, and the thread has been
  /// [`QUIET`] since it last started something (or `latest` has passed) and
  /// since deferred work was last done on it. If not, the timer is armed
  /// for the next moment it may be.
  fn quiet_moment(&mut self, cx: &mut Context<'_>) -> bool {
    loop {
      if self.sleep.as_mut().poll(cx).is_pending() {
        return false;
      }
      let now = tokio::time::Instant::now();
      let after = |last: Option<tokio::time::Instant>| last.map_or(now, |t| t + QUIET);
      let quiet = after(LAST_BUSY.with(Cell::get));
      let spaced = after(LAST_DEFERRED.with(Cell::get));
      let due = quiet.min(self.latest).max(spaced);
      if due <= now {
        return true;
      }
      self.sleep.as_mut().reset(due);
    }
  }
}

/// The memory V8 has committed for the isolate's heap.
pub(super) fn heap_committed(isolate: &mut v8::Isolate) -> usize {
  isolate.get_heap_statistics().total_physical_size()
}

/// Notes that deferred work was done on this thread now.
fn done_deferred() {
  LAST_DEFERRED.with(|last| last.set(Some(tokio::time::Instant::now())));
}

/// A new code cache for `module`, compiled again as deno_core compiled it
/// (same name, same origin), since deno_core does not hand out its module
/// handles. V8 finds the compiled module in its per-isolate compilation
/// cache, so this costs little more than serialising, and the cache holds
/// every function compiled so far, as Chrome's cache made after execution.
fn module_code_cache(
  scope: &mut v8::PinScope<'_, '_>,
  module: &crate::loader::DeferredModule,
) -> Option<Vec<u8>> {
  let name = v8::String::new(scope, module.specifier.as_str())?;
  let text = v8::String::new(scope, &module.text)?;
  let origin = v8::ScriptOrigin::new(
    scope,
    name.into(),
    0,
    0,
    false,
    0,
    None,
    false,
    false,
    true,
    None,
  );
  let mut source = v8::script_compiler::Source::new(text, Some(&origin));
  v8::tc_scope!(let scope, scope);
  let compiled = v8::script_compiler::compile_module(scope, &mut source)?;
  let cache = compiled
    .get_unbound_module_script(scope)
    .create_code_cache()?;
  Some(cache.to_vec())
}

#[cfg(test)]
mod tests {
  use super::is_request_url;
  use super::request_url;

  const URIS: [&str; 12] = [
    "https://shop.test/a/b?x=1&y=%20",
    "https://shop.test/a/b?x=1&y=%2",
    "https://shop.test/a/b",
    "http://shop.test/a/b",
    "ftp://shop.test/a/b",
    "http://[::1]:8080/",
    "http://user@api.test:81/v1?",
    "http://user@api.test:81/v1",
    "/relative/path?q",
    "/",
    "shop.test:443",
    "*",
  ];

  #[test]
  fn a_request_url_is_known_again_only_for_its_own_uri() {
    for uri in URIS {
      let parsed: http::Uri = uri.parse().unwrap();
      let mut url = Vec::new();
      request_url(&mut url, &parsed);
      for other in URIS {
        let other_parsed: http::Uri = other.parse().unwrap();
        let mut other_url = Vec::new();
        request_url(&mut other_url, &other_parsed);
        assert_eq!(
          is_request_url(&url, &other_parsed),
          url == other_url,
          "{uri} against {other}"
        );
      }
      // A URL with a byte more or less is not it.
      let mut longer = url.clone();
      longer.push(b'x');
      assert!(!is_request_url(&longer, &parsed), "{uri}");
      assert!(!is_request_url(&url[..url.len() - 1], &parsed), "{uri}");
    }
  }

  #[test]
  fn a_request_url_reads_as_the_uri_displays() {
    for uri in URIS {
      let parsed: http::Uri = uri.parse().unwrap();
      let shown = if parsed.scheme().is_some() {
        parsed.to_string()
      } else {
        format!("http://localhost{parsed}")
      };
      assert_eq!(
        {
          let mut url = Vec::new();
          request_url(&mut url, &parsed);
          String::from_utf8(url).unwrap()
        },
        shown,
        "{uri}"
      );
    }
  }
}
