//! Isolates and the workers loaded into them.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use deno_core::v8;
use deno_core::JsRuntime;
use deno_core::ModuleSpecifier;
use deno_core::PollEventLoopOptions;
use deno_core::RuntimeOptions;
use http::Method;
use http_body::Body as _;
use isola_ext::Failure;
use isola_ext::Invocations;
use isola_ext::LimitExceeded;
use isola_ext::LogSink;
use isola_ext::Reply;
use isola_ext::RequestBodyResource;
use isola_ext::ResponseBody;
use isola_ext::WorkerEnv;
use isola_ext::WorkerName;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::bundle::Bundle;
use crate::error::describe_core_error;
use crate::error::describe_js_error;
use crate::error::Error;
use crate::error::ErrorKind;
use crate::error::JsException;
use crate::limits::InvocationRecord;
use crate::limits::Limits;
use crate::limits::MeterSink;
use crate::limits::Outcome;
use crate::loader::BundleLoader;
use crate::watchdog::Guard;
use crate::watchdog::Trip;
use crate::RequestBody;

static SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ISOLA_SNAPSHOT.bin"));
mod residual {
  include!(concat!(env!("OUT_DIR"), "/residual_lazy.rs"));
}

/// Takes the dispatcher out of the global scope and removes what worker
/// code must not see. Runs before any worker code.
const TAKE_INTERNALS: &str = r#"(() => {
  const internals = globalThis.__isolaInternals;
  delete globalThis.__isolaInternals;
  delete globalThis.__bootstrap;
  delete globalThis.Deno;
  return internals;
})()"#;

/// What the answer to a request that never gets one says.
const NEVER_RESPONDS: &str = "The worker's handler will never produce a response: its promise is still pending but nothing (timer, I/O) is left that could settle it";

/// Many isolates share one thread, so none stays entered between uses: each
/// synchronous use (and each poll of a future that drives one) enters it and
/// exits again. V8 also wants an isolate entered while it is dropped.
struct EnterGuard(*mut v8::Isolate);

impl EnterGuard {
  fn new(js: &mut JsRuntime) -> Self {
    let isolate: &mut v8::Isolate = js.v8_isolate();
    let ptr = isolate as *mut v8::Isolate;
    // SAFETY: the isolate outlives the guard (both are owned by the caller's
    // JsRuntime, and the guard is dropped before the runtime is used again).
    unsafe { (*ptr).enter() };
    Self(ptr)
  }
}

impl Drop for EnterGuard {
  fn drop(&mut self) {
    // SAFETY: entered in `new` on this thread; exits in LIFO order.
    unsafe { (*self.0).exit() };
  }
}

/// A `JsRuntime` that is entered only while in use (see [`EnterGuard`]).
struct JsCell(std::mem::ManuallyDrop<JsRuntime>);

impl std::ops::Deref for JsCell {
  type Target = JsRuntime;
  fn deref(&self) -> &JsRuntime {
    &self.0
  }
}

impl std::ops::DerefMut for JsCell {
  fn deref_mut(&mut self) -> &mut JsRuntime {
    &mut self.0
  }
}

impl Drop for JsCell {
  fn drop(&mut self) {
    // SAFETY: V8 exits the isolate as it drops it, so it must be entered
    // (and be the current isolate) first; the runtime is not used after.
    unsafe {
      self.0.v8_isolate().enter();
      std::mem::ManuallyDrop::drop(&mut self.0);
    }
  }
}

/// Polls `fut` with `isolate` entered during each poll only.
async fn entered<F: Future>(isolate: *mut v8::Isolate, fut: F) -> F::Output {
  let mut fut = std::pin::pin!(fut);
  poll_fn(|cx| {
    // SAFETY: the caller keeps the isolate alive across the await.
    unsafe { (*isolate).enter() };
    let r = fut.as_mut().poll(cx);
    unsafe { (*isolate).exit() };
    r
  })
  .await
}

/// Settings of one worker: its name (for logs) and the `env` its handler sees.
///
/// ```
/// # use isola_runtime::WorkerConfig;
/// let config = WorkerConfig::new("alpha")
///   .var("GREETING", "hello")
///   .json_var("LIMITS", serde_json::json!({ "max": 3 }));
/// ```
#[derive(Clone, Debug)]
pub struct WorkerConfig {
  name: String,
  version: Arc<str>,
  vars: BTreeMap<String, serde_json::Value>,
  limits: Limits,
  meter: MeterSink,
}

impl Default for WorkerConfig {
  fn default() -> Self {
    Self::new("")
  }
}

impl WorkerConfig {
  /// A worker named `name` with no vars.
  pub fn new(name: impl Into<String>) -> Self {
    Self {
      name: name.into(),
      version: Arc::from(""),
      vars: BTreeMap::new(),
      limits: Limits::default(),
      meter: MeterSink::discard(),
    }
  }

  /// The version (content hash) in metering records. Default: empty.
  pub fn version(mut self, version: impl Into<Arc<str>>) -> Self {
    self.version = version.into();
    self
  }

  /// Limits per invocation. Default: [`Limits::default`].
  pub fn limits(mut self, limits: Limits) -> Self {
    self.limits = limits;
    self
  }

  /// Where invocation records go. Default: dropped.
  pub fn meter(mut self, meter: MeterSink) -> Self {
    self.meter = meter;
    self
  }

  pub fn limits_ref(&self) -> &Limits {
    &self.limits
  }

  /// Adds a text var: `env.NAME` is the string. Default: none.
  pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
    self
      .vars
      .insert(name.into(), serde_json::Value::String(value.into()));
    self
  }

  /// Adds a JSON var: `env.NAME` is the value, parsed. Default: none.
  pub fn json_var(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
    self.vars.insert(name.into(), value);
    self
  }

  pub fn name(&self) -> &str {
    &self.name
  }
}

struct Internals {
  dispatch: v8::Global<v8::Function>,
  init: v8::Global<v8::Function>,
  set_entry: v8::Global<v8::Function>,
}

/// A V8 isolate started from the snapshot, with no worker code in it yet.
///
/// Making one costs a few milliseconds; loading a worker into a ready one
/// costs only the worker's own module evaluation, so nodes keep a stock.
pub struct Isolate {
  js: JsCell,
  loader: Rc<BundleLoader>,
  internals: Internals,
  guard: Arc<Guard>,
}

impl Isolate {
  /// Starts an isolate from the snapshot. Logs of the worker later loaded
  /// into it go to `logs`.
  pub fn new(logs: LogSink) -> Result<Self, Error> {
    Self::with_memory_limit(logs, Limits::default().memory_bytes())
  }

  /// Starts an isolate whose memory (V8 heap and ArrayBuffers) may not grow
  /// past `bytes`; a worker loaded into it may set a lower limit, not a
  /// higher one.
  pub fn with_memory_limit(logs: LogSink, bytes: u64) -> Result<Self, Error> {
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    let guard = Guard::new(bytes);
    let params = v8::CreateParams::default()
      .heap_limits(0, bytes)
      .array_buffer_allocator(crate::watchdog::allocator(&guard));
    let loader = Rc::new(BundleLoader::default());
    let mut js = JsRuntime::try_new(RuntimeOptions {
      create_params: Some(params),
      startup_snapshot: Some(SNAPSHOT),
      residual_lazy_js_sources: residual::RESIDUAL_LAZY_JS,
      extensions: isola_ext::extensions(),
      module_loader: Some(loader.clone()),
      custom_module_evaluation_cb: Some(Box::new(isola_ext::evaluate_module_value)),
      ..Default::default()
    })
    .map_err(|e| ErrorKind::Stopped(format!("cannot start an isolate: {e}")))?;
    // Created entered; leave it so the next isolate on this thread can be used.
    // SAFETY: it was entered by its creation on this thread.
    unsafe { js.v8_isolate().exit() };
    guard.set_handle(js.v8_isolate().thread_safe_handle());
    js.v8_isolate().add_gc_epilogue_callback(
      crate::watchdog::after_full_gc,
      Arc::as_ptr(&guard) as *mut std::ffi::c_void,
      v8::GCType::kGCTypeMarkSweepCompact,
    );
    {
      let guard = guard.clone();
      js.add_near_heap_limit_callback(move |current, _initial| {
        guard.stop(Trip::Memory);
        // Room for the termination to unwind; the isolate is then dropped.
        current + (32 << 20)
      });
    }
    let _entered = EnterGuard::new(&mut js);
    isola_ext::install_state(
      &mut js.op_state().borrow_mut(),
      WorkerName(Arc::from("")),
      WorkerEnv::default(),
      logs,
    );
    let internals = js
      .execute_script("isola:internals", TAKE_INTERNALS)
      .map_err(|e| ErrorKind::Stopped(describe_js_error(&e)))?;
    let internals = {
      deno_core::scope!(scope, &mut js);
      let obj = v8::Local::new(scope, internals);
      let obj = v8::Local::<v8::Object>::try_from(obj)
        .map_err(|_| ErrorKind::Stopped("snapshot has no worker internals".into()))?;
      let get = |name: &str| -> Result<v8::Global<v8::Function>, Error> {
        let key = v8::String::new(scope, name).expect("short string");
        let f = obj
          .get(scope, key.into())
          .and_then(|v| v8::Local::<v8::Function>::try_from(v).ok())
          .ok_or_else(|| ErrorKind::Stopped(format!("snapshot lacks internals.{name}")))?;
        Ok(v8::Global::new(scope, f))
      };
      Internals {
        dispatch: get("dispatch")?,
        init: get("init")?,
        set_entry: get("setEntry")?,
      }
    };
    drop(_entered);
    Ok(Self {
      js: JsCell(std::mem::ManuallyDrop::new(js)),
      loader,
      internals,
      guard,
    })
  }

  /// The most memory a worker loaded into this isolate may use.
  pub fn memory_limit(&self) -> u64 {
    self.guard.memory_limit() as u64
  }

  /// Loads `bundle` into this isolate: builds `env`, evaluates the main
  /// module and finds its fetch handler.
  pub async fn load(mut self, bundle: Bundle, config: &WorkerConfig) -> Result<Worker, Error> {
    let name: Arc<str> = Arc::from(config.name.as_str());
    let memory = config
      .limits
      .memory_bytes()
      .min(self.guard.memory_limit() as u64);
    self.guard.set_memory_limit(memory as usize);
    {
      let state = self.js.op_state();
      let mut state = state.borrow_mut();
      state.put(WorkerName(name.clone()));
      state.put(WorkerEnv(config.vars.clone().into_iter().collect()));
      let invocations = state.borrow_mut::<Invocations>();
      invocations.subrequest_limit = config.limits.subrequest_limit();
      invocations.response_body_limit = config.limits.response_body_limit();
      let (worker, version, meter) = (name.clone(), config.version.clone(), config.meter.clone());
      invocations.set_finish_hook(Box::new(move |_id, usage| {
        meter.emit(InvocationRecord {
          worker: worker.clone(),
          version: version.clone(),
          start: usage.start_time,
          cpu_us: usage.cpu_ns / 1000,
          wall_us: usage.start.elapsed().as_micros() as u64,
          peak_memory: usage.peak_memory,
          bytes_in: usage.bytes_in,
          bytes_out: usage.bytes_out,
          subrequests: usage.subrequests,
          outcome: usage.outcome.unwrap_or(Outcome::Stopped),
        })
      }));
    }
    call_sync(&mut self.js, &self.internals.init, |_| vec![]).map_err(ErrorKind::Stopped)?;

    let specifier = ModuleSpecifier::parse(&bundle.main_specifier()).map_err(|e| {
      ErrorKind::Module(format!(
        "bad main module name {}: {e}",
        bundle.main_module()
      ))
    })?;
    self.loader.set_bundle(bundle);
    let isolate: *mut v8::Isolate = &mut **self.js.v8_isolate();
    let id = entered(isolate, self.js.load_main_es_module(&specifier))
      .await
      .map_err(|e| ErrorKind::Module(describe_core_error(&e)))?;
    // `mod_evaluate` runs the module's top level right away, so the startup
    // CPU limit must already be armed: `while (true) {}` at the top level
    // would otherwise hold the thread forever.
    let evaluation = {
      let _entered = EnterGuard::new(&mut self.js);
      tick_clock(&self.js);
      let turn = self.guard.begin(STARTUP_CPU.as_nanos() as u64);
      let evaluation = self.js.mod_evaluate(id);
      self.guard.end(turn);
      evaluation
    };
    let mut evaluation = std::pin::pin!(evaluation);
    let js = &mut *self.js;
    let guard = self.guard.clone();
    let startup = if guard.trip() == Trip::None {
      poll_fn(|cx| {
        let _entered = EnterGuard::new(js);
        tick_clock(js);
        let turn = guard.begin(STARTUP_CPU.as_nanos() as u64);
        let r = poll_evaluation(js, evaluation.as_mut(), cx);
        guard.end(turn);
        r
      })
      .await
    } else {
      Ok(())
    };
    match self.guard.trip() {
      Trip::Cpu => {
        return Err(
          ErrorKind::Startup(format!(
            "cpu limit: the main module used more than {} ms of CPU time while starting",
            STARTUP_CPU.as_millis()
          ))
          .into(),
        )
      }
      Trip::Memory => {
        return Err(
          ErrorKind::Startup(format!(
            "memory limit: the main module needed more than {} MiB while starting",
            self.guard.memory_limit() >> 20
          ))
          .into(),
        )
      }
      Trip::None => startup?,
    }

    let namespace = {
      let _entered = EnterGuard::new(&mut self.js);
      self
        .js
        .get_module_namespace(id)
        .map_err(|e| ErrorKind::Startup(describe_core_error(&e)))?
    };
    let verdict = call_sync(&mut self.js, &self.internals.set_entry, |scope| {
      vec![v8::Local::new(scope, &namespace).into()]
    })
    .map_err(ErrorKind::Startup)?;
    if let Some(problem) = verdict {
      return Err(ErrorKind::NoHandler(problem).into());
    }
    Ok(Worker {
      js: self.js,
      internals: self.internals,
      _loader: self.loader,
      name,
      guard: self.guard,
      limits: config.limits.clone(),
      stopped: None,
      turns: 0,
      heap: 0,
      wall_timer: None,
    })
  }
}

/// One turn in this many reads V8's heap statistics.
const HEAP_SAMPLE_EVERY: u32 = 16;

/// CPU the main module may use while it is evaluated (top-level code and
/// top-level awaits), as on Workers.
const STARTUP_CPU: std::time::Duration = std::time::Duration::from_secs(1);

/// Lets time move for the isolate's JS (see `isola_ext::Clock`).
fn tick_clock(js: &JsRuntime) {
  if let Some(clock) = js.op_state().borrow().try_borrow::<isola_ext::Clock>() {
    clock.tick();
  }
}

/// One poll of the main module's evaluation and the event loop under it.
fn poll_evaluation(
  js: &mut JsRuntime,
  evaluation: Pin<&mut (impl Future<Output = Result<(), deno_core::error::CoreError>> + ?Sized)>,
  cx: &mut Context<'_>,
) -> Poll<Result<(), Error>> {
  let mut evaluation = evaluation;
  if let Poll::Ready(r) = evaluation.as_mut().poll(cx) {
    return Poll::Ready(r.map_err(|e| ErrorKind::Startup(describe_core_error(&e)).into()));
  }
  match js.poll_event_loop(cx, PollEventLoopOptions::default()) {
    Poll::Ready(Err(e)) => Poll::Ready(Err(ErrorKind::Startup(describe_core_error(&e)).into())),
    // Nothing left that could settle a pending top-level await.
    Poll::Ready(Ok(())) => match evaluation.as_mut().poll(cx) {
      Poll::Ready(r) => Poll::Ready(r.map_err(|e| ErrorKind::Startup(describe_core_error(&e)).into())),
      Poll::Pending => Poll::Ready(Err(
        ErrorKind::Startup(
          "a top-level await in the main module never settles (no timer or I/O is left that could settle it)".into(),
        )
        .into(),
      )),
    },
    Poll::Pending => Poll::Pending,
  }
}

/// Calls a JS function synchronously; returns its result if it is a string.
fn call_sync(
  js: &mut JsCell,
  f: &v8::Global<v8::Function>,
  args: impl for<'s, 'i> FnOnce(&mut v8::PinScope<'s, 'i>) -> Vec<v8::Local<'s, v8::Value>>,
) -> Result<Option<String>, String> {
  let _entered = EnterGuard::new(js);
  let js: &mut JsRuntime = js;
  deno_core::scope!(scope, js);
  v8::tc_scope!(let scope, scope);
  let args = args(scope);
  let f = v8::Local::new(scope, f);
  let undefined = v8::undefined(scope).into();
  match f.call(scope, undefined, &args) {
    Some(v) if v.is_string() => Ok(Some(v.to_rust_string_lossy(scope))),
    Some(_) => Ok(None),
    None => {
      let msg = scope
        .exception()
        .map(|e| e.to_rust_string_lossy(scope))
        .unwrap_or_else(|| "execution terminated".to_string());
      Err(msg)
    }
  }
}

/// A worker loaded into its isolate, ready for requests.
///
/// It is `!Send`: it lives on one thread. [`Worker::spawn`] runs it as a
/// task on the current thread and returns a cloneable [`WorkerHandle`].
pub struct Worker {
  js: JsCell,
  internals: Internals,
  _loader: Rc<BundleLoader>,
  name: Arc<str>,
  guard: Arc<Guard>,
  limits: Limits,
  /// Why the isolate stopped, once a limit or a failure stopped it; it
  /// then answers nothing more.
  stopped: Option<String>,
  /// Turns run so far, and the V8 heap size as last sampled.
  turns: u32,
  heap: usize,
  wall_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Worker {
  /// Starts an isolate and loads `bundle` into it.
  pub async fn new(bundle: Bundle, config: &WorkerConfig, logs: LogSink) -> Result<Self, Error> {
    Isolate::new(logs)?.load(bundle, config).await
  }

  pub fn name(&self) -> &str {
    &self.name
  }

  /// Hands `request` to the handler. Nothing happens until the event loop is
  /// polled ([`Worker::poll_event_loop`], [`Worker::fetch`] or the task of
  /// [`Worker::spawn`]). The request URI should be absolute.
  pub fn start(&mut self, request: http::Request<RequestBody>) -> Invocation {
    let (invocation, reply, done) = Invocation::new();
    self.dispatch(request, reply, Some(done));
    invocation
  }

  fn dispatch(
    &mut self,
    request: http::Request<RequestBody>,
    reply: oneshot::Sender<Reply>,
    done: Option<oneshot::Sender<()>>,
  ) {
    if let Some(why) = &self.stopped {
      let _ = reply.send(Reply::Stopped(why.clone()));
      return;
    }
    let (parts, body) = request.into_parts();
    let body_limit = self.limits.request_body_limit();
    let declared = parts
      .headers
      .get(http::header::CONTENT_LENGTH)
      .and_then(|v| v.to_str().ok())
      .and_then(|v| v.parse::<u64>().ok());
    let (id, body_rid) = {
      let state_rc = self.js.op_state();
      let mut state = state_rc.borrow_mut();
      let invocations = state.borrow_mut::<Invocations>();
      let id = invocations.insert(reply, done);
      if declared.is_some_and(|n| n > body_limit) {
        invocations.limit(id, LimitExceeded::RequestBody(body_limit));
        invocations.abandon(id);
        return;
      }
      let has_body =
        !(parts.method == Method::GET || parts.method == Method::HEAD || body.is_end_stream());
      let rid = has_body.then(|| {
        let meter = isola_ext::BodyMeter {
          state: Rc::downgrade(&state_rc),
          id,
          limit: body_limit,
        };
        state
          .resource_table
          .add(RequestBodyResource::new(body, Some(meter)))
      });
      (id, rid)
    };
    let url = if parts.uri.scheme().is_some() {
      parts.uri.to_string()
    } else {
      format!("http://localhost{}", parts.uri)
    };

    let turn = self.begin_turn();
    {
      let _entered = EnterGuard::new(&mut self.js);
      let js: &mut JsRuntime = &mut self.js;
      deno_core::scope!(scope, js);
      v8::tc_scope!(let scope, scope);
      let id_v = v8::Integer::new(scope, id as i32).into();
      let method = v8::String::new(scope, parts.method.as_str())
        .expect("method fits")
        .into();
      let url_v = v8::String::new(scope, &url).expect("url fits").into();
      let mut flat: Vec<v8::Local<v8::Value>> = Vec::with_capacity(parts.headers.len() * 2);
      for (name, value) in &parts.headers {
        let n = v8::String::new_from_one_byte(
          scope,
          name.as_str().as_bytes(),
          v8::NewStringType::Internalized,
        );
        let v = v8::String::new_from_one_byte(scope, value.as_bytes(), v8::NewStringType::Normal);
        if let (Some(n), Some(v)) = (n, v) {
          flat.push(n.into());
          flat.push(v.into());
        }
      }
      let headers = v8::Array::new_with_elements(scope, &flat).into();
      let body_v = match body_rid {
        Some(rid) => v8::Integer::new_from_unsigned(scope, rid).into(),
        None => v8::null(scope).into(),
      };
      let f = v8::Local::new(scope, &self.internals.dispatch);
      let undefined = v8::undefined(scope).into();
      // The dispatcher catches handler errors itself; a failed call means the
      // isolate is being terminated, which `end_turn` reports.
      let _ = f.call(scope, undefined, &[id_v, method, url_v, headers, body_v]);
    }
    self.end_turn(turn);
  }

  /// Starts a turn in the isolate: time moves, the CPU watchdog arms.
  fn begin_turn(&mut self) -> u64 {
    tick_clock(&self.js);
    let limit = self.limits.cpu_limit().as_nanos() as u64;
    let budget = {
      let state = self.js.op_state();
      let mut state = state.borrow_mut();
      let invocations = state.borrow_mut::<Invocations>();
      invocations.begin_turn();
      invocations.cpu_budget(limit)
    };
    self.guard.begin(budget)
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
    let cpu_limit = LimitExceeded::Cpu(self.limits.cpu_limit());
    let over = {
      let state = self.js.op_state();
      let mut state = state.borrow_mut();
      let invocations = state.borrow_mut::<Invocations>();
      invocations.charge_turn(cpu, memory as u64);
      let over = invocations.over_cpu(self.limits.cpu_limit().as_nanos() as u64);
      for id in &over {
        invocations.limit(*id, cpu_limit);
      }
      over
    };
    for id in over {
      self.log_error(Some(id), &cpu_limit.to_string());
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
      self.fail_pending(Failure::Limit(limit));
      self.stopped = Some(limit.to_string());
    }
  }

  /// Ends invocations past their wall-clock limit, and arms the timer for
  /// the next one due.
  fn check_wall(&mut self, cx: &mut Context<'_>) {
    let wall = self.limits.wall_limit();
    loop {
      let now = std::time::Instant::now();
      let (expired, earliest) = {
        let state = self.js.op_state();
        let state = state.borrow();
        match now.checked_sub(wall) {
          Some(cutoff) => state.borrow::<Invocations>().started_before(cutoff),
          None => (Vec::new(), None),
        }
      };
      let limit = LimitExceeded::Wall(wall);
      for id in expired {
        {
          let state = self.js.op_state();
          let mut state = state.borrow_mut();
          let invocations = state.borrow_mut::<Invocations>();
          invocations.limit(id, limit);
          invocations.abandon(id);
        }
        self.log_error(Some(id), &limit.to_string());
      }
      let Some(earliest) = earliest else {
        self.wall_timer = None;
        return;
      };
      let deadline = tokio::time::Instant::from_std(earliest + wall);
      match &mut self.wall_timer {
        Some(timer) => timer.as_mut().reset(deadline),
        None => self.wall_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
      }
      let timer = self.wall_timer.as_mut().expect("just set");
      if timer.as_mut().poll(cx).is_pending() {
        return;
      }
    }
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
    let turn = self.begin_turn();
    let polled = {
      let _entered = EnterGuard::new(&mut self.js);
      self.js.poll_event_loop(cx, PollEventLoopOptions::default())
    };
    self.end_turn(turn);
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
        self.fail_pending(Failure::Exception(&msg));
        self.stopped = Some(msg.clone());
        Poll::Ready(Err(ErrorKind::Stopped(msg).into()))
      }
    }
  }

  /// Invocations not finished yet.
  pub fn in_flight(&self) -> usize {
    self.js.op_state().borrow().borrow::<Invocations>().len()
  }

  /// Memory the isolate holds now (V8 heap in use plus ArrayBuffers).
  pub fn memory_usage(&mut self) -> u64 {
    let heap = {
      let _entered = EnterGuard::new(&mut self.js);
      self.js.v8_isolate().get_heap_statistics().used_heap_size()
    };
    (heap + self.guard.array_buffer_bytes()) as u64
  }

  /// Whether a limit (or a failure) stopped this isolate for good.
  pub fn is_stopped(&self) -> bool {
    self.stopped.is_some()
  }

  /// Fails every invocation still waiting for its response, logging why
  /// (the client only sees a plain 500).
  fn fail_pending(&mut self, failure: Failure<'_>) {
    let failed = self
      .js
      .op_state()
      .borrow_mut()
      .borrow_mut::<Invocations>()
      .fail_all(failure);
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
    deno_core::unsync::spawn(async move {
      self.serve(rx).await;
      on_exit();
    });
    WorkerHandle { tx }
  }

  async fn serve(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut closed = false;
    poll_fn(|cx| {
      while !closed {
        match rx.poll_recv(cx) {
          Poll::Ready(Some(cmd)) => self.dispatch(cmd.request, cmd.reply, Some(cmd.done)),
          Poll::Ready(None) => closed = true,
          Poll::Pending => break,
        }
      }
      // Evicted (every handle dropped) and nothing in flight: background
      // timers do not keep the isolate alive.
      if closed && self.in_flight() == 0 {
        return Poll::Ready(());
      }
      match self.poll_event_loop(cx) {
        Poll::Ready(Ok(())) if closed => Poll::Ready(()),
        Poll::Ready(Ok(())) => Poll::Pending,
        Poll::Ready(Err(e)) => {
          tracing::error!(worker = %self.name, "worker isolate stopped: {e}");
          Poll::Ready(())
        }
        Poll::Pending => Poll::Pending,
      }
    })
    .await;
  }
}

struct Command {
  request: http::Request<RequestBody>,
  reply: oneshot::Sender<Reply>,
  done: oneshot::Sender<()>,
}

/// Sends requests to a worker running on this thread. Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
  tx: mpsc::UnboundedSender<Command>,
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
  fn new() -> (Self, oneshot::Sender<Reply>, oneshot::Sender<()>) {
    let (reply_tx, reply_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let invocation = Self {
      reply: Some(reply_rx),
      done: done_rx,
    };
    (invocation, reply_tx, done_tx)
  }

  fn poll_response(
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
mod tests {
  use bytes::Bytes;

  use super::*;

  fn bundle(code: &str) -> Bundle {
    Bundle::from_modules(
      "worker.js",
      [("worker.js".to_string(), Bytes::from(code.to_string()))],
    )
    .unwrap()
  }

  async fn text(worker: &mut Worker, url: &str) -> Result<String, Error> {
    let response = worker.fetch(crate::empty_request(url)).await?;
    let body = response.into_body().collect_bytes().await.unwrap();
    Ok(String::from_utf8(body.to_vec()).unwrap())
  }

  fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
      .enable_all()
      .build()
      .unwrap()
  }

  #[test]
  fn one_isolate_serves_concurrent_requests() {
    rt().block_on(async {
      let code = r#"
        let inFlight = 0, maxInFlight = 0;
        export default {
          async fetch(request) {
            inFlight++; maxInFlight = Math.max(maxInFlight, inFlight);
            await new Promise((r) => setTimeout(r, 20));
            inFlight--;
            return new Response(String(maxInFlight));
          },
        };
      "#;
      let worker = Worker::new(bundle(code), &WorkerConfig::new("c"), LogSink::discard())
        .await
        .unwrap()
        .spawn();
      let calls = (0..10).map(|_| worker.fetch(crate::empty_request("http://c.test/")));
      let responses = futures::future::join_all(calls).await;
      let mut max = 0;
      for r in responses {
        let body = r.unwrap().into_body().collect_bytes().await.unwrap();
        max = max.max(std::str::from_utf8(&body).unwrap().parse::<u32>().unwrap());
      }
      assert_eq!(max, 10, "all ten requests were in flight at once");
    });
  }

  #[test]
  fn isolates_do_not_share_globals() {
    rt().block_on(async {
      let code = r#"
        export default {
          fetch(request) {
            const url = new URL(request.url);
            if (url.pathname === "/set") globalThis.secret = url.search;
            return new Response(String(globalThis.secret));
          },
        };
      "#;
      let config = WorkerConfig::new("iso");
      let mut a = Worker::new(bundle(code), &config, LogSink::discard())
        .await
        .unwrap();
      let mut b = Worker::new(bundle(code), &config, LogSink::discard())
        .await
        .unwrap();
      assert_eq!(text(&mut a, "http://a.test/set?x").await.unwrap(), "?x");
      assert_eq!(
        text(&mut b, "http://b.test/get").await.unwrap(),
        "undefined"
      );
      assert_eq!(text(&mut a, "http://a.test/get").await.unwrap(), "?x");
      // Isolates on one thread may be dropped in any order.
      drop(a);
      assert_eq!(
        text(&mut b, "http://b.test/get").await.unwrap(),
        "undefined"
      );
      let mut c = Worker::new(bundle(code), &config, LogSink::discard())
        .await
        .unwrap();
      assert_eq!(text(&mut c, "http://c.test/set?c").await.unwrap(), "?c");
      drop(b);
      assert_eq!(text(&mut c, "http://c.test/get").await.unwrap(), "?c");
    });
  }

  #[test]
  fn runtime_internals_are_hidden_from_workers() {
    rt().block_on(async {
      let code = r#"
        export default {
          fetch() {
            const names = ["isola.respondWith", "isola.moduleValue"];
            return Response.json([typeof Deno, typeof __bootstrap, typeof __isolaInternals,
              Object.getOwnPropertyNames(globalThis).filter((n) => n.startsWith("__")).length,
              Object.getOwnPropertySymbols(globalThis).length,
              names.filter((n) => globalThis[Symbol.for(n)] !== undefined).length]);
          },
        };
      "#;
      let mut w = Worker::new(bundle(code), &WorkerConfig::new("h"), LogSink::discard())
        .await
        .unwrap();
      assert_eq!(
        text(&mut w, "http://h.test/").await.unwrap(),
        r#"["undefined","undefined","undefined",0,0,0]"#
      );
    });
  }

  #[test]
  fn a_promise_that_can_never_settle_is_an_exception() {
    rt().block_on(async {
      let code = "export default { fetch() { return new Promise(() => {}); } };";
      let mut w = Worker::new(bundle(code), &WorkerConfig::new("n"), LogSink::discard())
        .await
        .unwrap();
      let err = w
        .fetch(crate::empty_request("http://n.test/"))
        .await
        .unwrap_err();
      assert!(err.is_exception(), "{err}");
    });
  }

  #[test]
  fn invocation_finishes_after_wait_until_settles() {
    rt().block_on(async {
      let code = r#"
        let done = false;
        export default {
          fetch(request, env, ctx) {
            if (new URL(request.url).pathname === "/check") return new Response(String(done));
            ctx.waitUntil(new Promise((r) => setTimeout(() => { done = true; r(); }, 30)));
            return new Response("sent");
          },
        };
      "#;
      let worker = Worker::new(bundle(code), &WorkerConfig::new("w"), LogSink::discard())
        .await
        .unwrap()
        .spawn();
      let mut inv = worker.invoke(crate::empty_request("http://w.test/"));
      let body = inv
        .response()
        .await
        .unwrap()
        .into_body()
        .collect_bytes()
        .await
        .unwrap();
      assert_eq!(&body[..], b"sent");
      inv.finished().await;
      let body = worker
        .fetch(crate::empty_request("http://w.test/check"))
        .await
        .unwrap()
        .into_body()
        .collect_bytes()
        .await
        .unwrap();
      assert_eq!(
        &body[..],
        b"true",
        "waitUntil work ran before `finished` resolved"
      );
    });
  }

  #[test]
  fn a_stopped_worker_reports_it() {
    rt().block_on(async {
      let code = "export default { fetch() { return new Response('x'); } };";
      let worker = Worker::new(bundle(code), &WorkerConfig::new("s"), LogSink::discard())
        .await
        .unwrap();
      let (tx, rx) = mpsc::unbounded_channel();
      drop(rx);
      let handle = WorkerHandle { tx };
      drop(worker);
      let err = handle
        .fetch(crate::empty_request("http://s.test/"))
        .await
        .unwrap_err();
      assert!(err.is_stopped(), "{err}");
    });
  }
}
