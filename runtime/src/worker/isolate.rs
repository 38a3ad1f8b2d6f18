//! Isolates started from the snapshot, and loading a worker into one.

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
use isola_ext::InvocationsCell;
use isola_ext::LogSink;
use isola_ext::WorkerEnv;
use isola_ext::WorkerName;

use super::config::WorkerConfig;
use super::enter::entered;
use super::enter::jscell_from_new;
use super::enter::EnterGuard;
use super::enter::JsCell;
use super::running::clock;
use super::running::tick_clock;
use super::running::Internals;
use super::running::Worker;
use crate::bundle::Bundle;
use crate::error::describe_core_error;
use crate::error::describe_js_error;
use crate::error::Error;
use crate::error::ErrorKind;
use crate::limits::InvocationRecord;
use crate::limits::Limits;
use crate::limits::Outcome;
use crate::loader::BundleLoader;
use crate::trace::TraceRecord;
use crate::watchdog::Guard;
use crate::watchdog::Trip;

static SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ISOLA_SNAPSHOT.bin"));
mod residual {
  include!(concat!(env!("OUT_DIR"), "/residual_lazy.rs"));
}

/// The snapshot's extensions, without their lazily loaded scripts' sources:
/// deno_core would wrap one of those, when a worker first loads it, into a
/// string on the isolate's heap (31 KB per worker that uses crypto,
/// URLPattern and CompressionStream), where the build script's table
/// ([`residual`]) has them wrapped, as static text, already.
fn runtime_extensions() -> Vec<deno_core::Extension> {
  let mut extensions = isola_ext::extensions();
  for ext in &mut extensions {
    ext.lazy_loaded_js_files = Default::default();
  }
  extensions
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

/// Compiled in each blank isolate of the stock ([`Isolate::prewarm`]).
const PREWARM_SOURCE: &str = include_str!("prewarm.js");

/// How often [`Isolate::prewarm`] runs the request path. V8 gives a
/// function a feedback vector on its 8th call (or a long loop) and then
/// queues it for baseline (Sparkplug) code, compiled in batches of about
/// 4 KB on a V8 worker thread. A fresh isolate's first batch (deno_core's
/// `setUpAsyncStub`, called for every async op while the context is made,
/// and the URL parser) fills during the first request otherwise, and its
/// compile job takes the core from that request. Three runs fill it here.
const PREWARM_RUNS: usize = 3;

/// CPU the main module may use while it is evaluated (top-level code and
/// top-level awaits), as on Workers.
const STARTUP_CPU: std::time::Duration = std::time::Duration::from_secs(1);

/// A V8 isolate started from the snapshot, with no worker code in it yet.
///
/// Making one costs a few milliseconds; loading a worker into a ready one
/// costs only the worker's own module evaluation, so nodes keep a stock.
pub struct Isolate {
  js: JsCell,
  /// Declared after `js`, so dropped after the V8 isolate is gone: V8
  /// reads module sources and code caches the loader holds in place.
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
    // `fetch()`'s request hook finds the calling worker's egress list by
    // the isolate in use (enter.rs).
    isola_ext::egress::set_caller_source(super::enter::current_caller);
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    let guard = Guard::new(bytes);
    // The guard enforces `bytes`, however small; V8's own limit stays
    // where V8 can still run, since reaching that one is a fatal error of
    // the whole process, not a worker's memory error.
    let params = v8::CreateParams::default()
      .heap_limits(0, bytes.max(V8_HEAP_FLOOR))
      .array_buffer_allocator(crate::watchdog::allocator(&guard));
    let loader = Rc::new(BundleLoader::default());
    let js = JsRuntime::try_new(RuntimeOptions {
      create_params: Some(params),
      startup_snapshot: Some(SNAPSHOT),
      residual_lazy_js_sources: residual::RESIDUAL_LAZY_JS,
      extensions: runtime_extensions(),
      module_loader: Some(loader.clone()),
      custom_module_evaluation_cb: Some(Box::new(isola_ext::evaluate_module_value)),
      // The ops' functions are the snapshot's: registering all of them
      // again cost each isolate 0.26 ms and 0.16 MiB. `init` (01_worker.js)
      // has deno_core give the ops with a fast API form that form.
      skip_op_registration: true,
      ..Default::default()
    })
    .map_err(|e| ErrorKind::Start {
      what: "cannot start an isolate",
      source: e.into(),
    })?;
    // Created entered; leave it so the next isolate on this thread can be used.
    let mut js = jscell_from_new(js);
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
        dispatch_all: get("dispatchAll")?,
        init: get("init")?,
        set_entry: get("setEntry")?,
        scheduled: get("scheduled")?,
        call: get("call")?,
        queue: get("queue")?,
        warm: get("warm")?,
      }
    };
    drop(_entered);
    Ok(Self {
      js,
      loader,
      internals,
      guard,
    })
  }

  /// Memory the isolate holds now (V8 heap in use plus ArrayBuffers), as
  /// [`Worker::memory_usage`] counts it.
  pub fn memory_usage(&mut self) -> u64 {
    (self.js.heap_used() + self.guard.array_buffer_bytes()) as u64
  }

  /// The most memory a worker loaded into this isolate may use.
  pub fn memory_limit(&self) -> u64 {
    self.guard.memory_limit() as u64
  }

  /// Does, in a blank isolate, the first-use work V8 does once per isolate
  /// (parser and bytecode-generator state, the maps of Request and
  /// Response objects, the worker's init path, the first batch of baseline
  /// code), so that a worker later loaded into it does not pay for it on
  /// its first request (about 0.1 ms of the density bench's ready-stock
  /// p50 for the parser, more at p99 for the baseline code). For isolates
  /// that wait in the stock, where it runs in a quiet moment; it leaves
  /// about 9 KiB more heap (compiled code, and what `warm` keeps), and the
  /// baseline code the first request would have made.
  pub fn prewarm(&mut self) -> Result<(), Error> {
    {
      let _entered = EnterGuard::new(&mut self.js);
      self
        .js
        .execute_script("isola:prewarm", PREWARM_SOURCE)
        .map_err(|e| ErrorKind::Stopped(describe_js_error(&e)))?;
    }
    for _ in 0..PREWARM_RUNS {
      call_sync(&mut self.js, &self.internals.warm, |_| vec![]).map_err(ErrorKind::Stopped)?;
    }
    // The isolate's part of it runs here, off any request's path; the
    // worker's part again when one is loaded.
    call_sync(&mut self.js, &self.internals.init, |_| vec![]).map_err(ErrorKind::Stopped)?;
    Ok(())
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
    let caller = {
      let state = self.js.op_state();
      let mut state = state.borrow_mut();
      if let Some(clock) = state.try_borrow::<Rc<isola_ext::Clock>>() {
        clock.restart();
      }
      state.put(WorkerName(name.clone()));
      state.put(WorkerEnv(config.vars.clone().into_iter().collect()));
      let caller = isola_ext::egress::install_worker_egress(&mut state, config.egress.clone());
      state.put(isola_ext::ServiceTable(Rc::new(
        crate::services::Dispatcher {
          caller: name.clone(),
          bindings: config.services.clone(),
          pool: config.pool.clone(),
        },
      )));
      state.put(isola_ext::KvBindings {
        worker: name.clone(),
        namespaces: config.kv.clone(),
        service: config.storage.kv.clone(),
      });
      state.put(isola_ext::QueueBindings {
        worker: name.clone(),
        queues: config.queues.clone(),
        service: config.storage.queues.clone(),
      });
      let mut invocations = isola_ext::invocations(&mut state);
      invocations.subrequest_limit = config.limits.subrequest_limit();
      invocations.response_body_limit = config.limits.response_body_limit();
      invocations.tracing = config.trace.is_enabled();
      invocations.spans = config.trace.spans();
      let (worker, version, meter) = (name.clone(), config.version.clone(), config.meter.clone());
      let trace_sink = config.trace.clone();
      // A record nothing reads is not built.
      let recorded = !meter.is_discard() || invocations.tracing;
      if recorded {
        invocations.set_finish_hook(Box::new(move |_id, mut usage, end| {
          let trace = usage.trace.take();
          let record = InvocationRecord {
            worker: worker.clone(),
            version: version.clone(),
            start: usage.start_time,
            cpu_us: usage.cpu_ns / 1000,
            wall_us: end.saturating_duration_since(usage.start).as_micros() as u64,
            peak_memory: usage.peak_memory,
            bytes_in: usage.bytes_in,
            bytes_out: usage.bytes_out,
            subrequests: usage.subrequests,
            ops: usage.ops,
            outcome: usage.outcome.unwrap_or(Outcome::Stopped),
          };
          let back = trace.and_then(|trace| {
            trace_sink.emit(TraceRecord {
              worker: worker.clone(),
              version: version.clone(),
              start: record.start,
              outcome: record.outcome,
              cpu_us: record.cpu_us,
              wall_us: record.wall_us,
              trace,
            })
          });
          meter.emit(record);
          back
        }));
      }
      caller
    };
    // Where the request hook finds it (enter.rs, `current_caller`).
    self.js.v8_isolate().set_slot(caller);
    call_sync(&mut self.js, &self.internals.init, |_| vec![]).map_err(ErrorKind::Stopped)?;

    let specifier = ModuleSpecifier::parse(&bundle.main_specifier()).map_err(|e| {
      ErrorKind::Module(format!(
        "bad main module name {}: {e}",
        bundle.main_module()
      ))
    })?;
    self.loader.set_bundle(bundle, config.code_cache.clone());
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
    let context = self.js.main_context();
    let clock = clock(&self.js);
    let trimmed_at = {
      let _entered = EnterGuard::new(&mut self.js);
      super::running::heap_committed(self.js.v8_isolate())
    };
    let invocations = self
      .js
      .op_state()
      .borrow()
      .borrow::<InvocationsCell>()
      .clone();
    Ok(Worker {
      clock,
      invocations,
      js: self.js,
      internals: self.internals,
      loader: self.loader,
      cache_timer: None,
      trim_timer: None,
      active: None,
      idle_trim: config.idle_trim,
      trimmed_at,
      name,
      guard: self.guard,
      limits: config.limits.clone(),
      stopped: None,
      halted: Arc::default(),
      turns: 0,
      heap: 0,
      wall_timer: None,
      open_turn: None,
      batching: false,
      now: None,
      started: 0,
      preloaded: false,
      url: Vec::new(),
      arrived: Vec::new(),
      ready: Vec::new(),
      context,
      strings: Default::default(),
    })
  }
}

/// The least heap V8 is given. A snapshot-started isolate uses about a MiB
/// before any worker code runs; with a 2 MiB limit V8 aborted the process
/// ("Fatal JavaScript out of memory") instead of calling the near-limit
/// callback.
const V8_HEAP_FLOOR: usize = 16 << 20;

impl Worker {
  /// Starts an isolate and loads `bundle` into it.
  pub async fn new(bundle: Bundle, config: &WorkerConfig, logs: LogSink) -> Result<Self, Error> {
    Isolate::new(logs)?.load(bundle, config).await
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

#[cfg(test)]
mod tests {
  /// deno_core hands a lazily loaded script's source to V8 as it is (an
  /// external string, no copy on the heap) only in the form it compiles:
  /// the body of a function.
  #[test]
  fn lazily_loaded_scripts_are_stored_wrapped() {
    assert!(!super::residual::RESIDUAL_LAZY_JS.is_empty());
    for (specifier, code) in super::residual::RESIDUAL_LAZY_JS {
      assert!(
        code.starts_with("\"use strict\"; return ("),
        "{specifier} is stored unwrapped"
      );
    }
    assert!(super::runtime_extensions()
      .iter()
      .all(|ext| ext.lazy_loaded_js_files.is_empty()));
  }
}
