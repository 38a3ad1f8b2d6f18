//! The `isola_worker` deno_core extension.
//!
//! It turns a bare deno_core isolate (plus Deno's Web API extensions) into the
//! Cloudflare-Workers global scope, and carries requests in and responses out
//! without re-serialising HTTP. It lives in its own crate because the
//! runtime's build script needs the exact same extension list to make the
//! startup snapshot that worker isolates are created from.
//!
//! KV (`kv`, extension `isola_kv`) and queues (`queue`, `isola_queue`) are
//! extensions of their own, one per API surface as in deno's `ext/*`, but
//! modules of this crate: the snapshot needs the one extension list, and
//! each crate more would be one more build of everything that links V8.

mod body;
pub mod egress;
mod invocation;
mod kv;
mod log;
mod meter;
mod modules;
mod ops;
mod outcome;
mod queue;
mod service;
mod trace;

use deno_core::JsBuffer;
use deno_core::OpState;
use std::sync::Arc;

pub use body::BoxError;
pub use body::Meter;
pub use body::RequestBody;
pub use body::RequestBodyAtHand;
pub use body::RequestBodyResource;
pub use body::ResponseBody;
pub use invocation::invocations;
pub use invocation::Failure;
pub use invocation::FinishHook;
pub use invocation::InvocationSpec;
pub use invocation::Invocations;
pub use invocation::InvocationsCell;
pub use invocation::Reply;
pub use invocation::StorageOps;
pub use invocation::Usage;
pub use kv::KvBindings;
pub use kv::KvService;
pub use log::Level;
pub use log::LogRecord;
pub use log::LogSink;
pub use meter::BodyMeter;
pub use modules::evaluate as evaluate_module_value;
pub use modules::ModuleValueKind;
pub use outcome::LimitExceeded;
pub use outcome::Outcome;
pub use queue::start_consumer;
pub use queue::Decisions;
pub use queue::QueueBindings;
pub use queue::QueueService;
pub use service::CallOutcome;
pub use service::LocalFuture;
pub use service::ServiceDispatch;
pub use service::ServiceTable;
pub use trace::epoch_ms;
pub use trace::format_traceparent;
pub use trace::parse_traceparent;
pub use trace::write_uri;
pub use trace::FetchStart;
pub use trace::SpanContext;
pub use trace::Started;
pub use trace::SubrequestSpan;
pub use trace::Trace;
pub use trace::SHOWN_COUNT;
pub use trace::SHOWN_HEADERS;

/// Name of the worker, as shown in logs.
#[derive(Clone, Debug)]
pub struct WorkerName(pub Arc<str>);

/// The `env` object handed to handlers, as JSON (text vars are strings).
#[derive(Clone, Debug, Default)]
pub struct WorkerEnv(pub serde_json::Map<String, serde_json::Value>);

deno_core::extension!(
  isola_worker,
  deps = [deno_webidl, deno_web, deno_crypto, deno_fetch, isola_kv, isola_queue],
  ops = [
    ops::op_isola_response_header,
    ops::op_isola_respond_text,
    ops::op_isola_respond_bytes,
    ops::op_isola_respond_stream,
    ops::op_isola_fail,
    ops::op_isola_invocation_done,
    ops::op_isola_invocations,
    ops::op_isola_subrequest,
    ops::op_isola_fetch_span,
    ops::op_isola_fetch_span_done,
    ops::op_isola_done_ok,
    ops::op_isola_no_retry,
    ops::op_isola_return,
    ops::op_isola_throw,
    ops::op_isola_missing,
    service::op_isola_service_bindings,
    service::op_isola_service_fetch,
    service::op_isola_service_call,
    log::op_isola_log,
    op_isola_env,
    op_isola_set_clock,
    op_isola_user_agent,
  ],
  esm_entry_point = "ext:isola_worker/99_main.js",
  esm = [
    dir "js",
    "00_global_scope.js",
    "01_worker.js",
    "99_main.js",
  ],
  lazy_loaded_js = [dir "js", "90_fast_ops.js"],
);

// deno_fetch's `22_http_client.js` imports `ext:deno_net/02_tls.js`; Isola
// does not ship deno_net (sockets are not a Workers API), only this stand-in.
deno_core::extension!(
  deno_net,
  lazy_loaded_js = [dir "js/deno_net", "02_tls.js"],
);

/// How long a thread's wall-clock anchor ([`system_time_at`]) serves
/// before the system time is read again.
const WALL_ANCHOR_FOR: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
  static WALL_ANCHOR: std::cell::Cell<Option<Anchor>> = const { std::cell::Cell::new(None) };
}

/// A monotonic instant and the system time read just after it.
#[derive(Clone, Copy)]
struct Anchor {
  at: std::time::Instant,
  system: std::time::SystemTime,
  /// `system` in nanoseconds since the Unix epoch (`None` before it), so
  /// that the JS clock's tick adds integers instead of `SystemTime`s.
  epoch_ns: Option<u64>,
}

/// This thread's anchor (read again once [`WALL_ANCHOR_FOR`] old at `now`)
/// and how far `now` is past it: `Err` with how far before it, for a `now`
/// older than an anchor just read.
fn anchor_for(
  now: std::time::Instant,
) -> (Anchor, Result<std::time::Duration, std::time::Duration>) {
  WALL_ANCHOR.with(|cell| {
    if let Some(anchor) = cell.get() {
      match now.checked_duration_since(anchor.at) {
        Some(since) if since < WALL_ANCHOR_FOR => return (anchor, Ok(since)),
        _ => {}
      }
    }
    // Read now, not at `now`: the caller's read may be a turn old.
    let (at, system) = (std::time::Instant::now(), std::time::SystemTime::now());
    let epoch_ns = system
      .duration_since(std::time::UNIX_EPOCH)
      .ok()
      .and_then(|d| u64::try_from(d.as_nanos()).ok());
    let anchor = Anchor {
      at,
      system,
      epoch_ns,
    };
    cell.set(Some(anchor));
    (
      anchor,
      now.checked_duration_since(at).ok_or_else(|| at - now),
    )
  })
}

/// The system (wall-clock) time at `now`, from this thread's anchor: a
/// monotonic read the caller already has then costs no second clock read.
/// The anchor is read again after [`WALL_ANCHOR_FOR`], so a step of the
/// system clock shows within a second, and the drift between the two clocks
/// meanwhile (slewing, at most 0.5 ms a second) stays under the
/// millisecond `Date.now()` and usage records show.
pub fn system_time_at(now: std::time::Instant) -> std::time::SystemTime {
  let (anchor, since) = anchor_for(now);
  anchor.system_time(since)
}

/// [`system_time_at`] in whole milliseconds since the Unix epoch, as
/// `Date.now()` shows it (0 before the epoch), in u64 arithmetic: through
/// `SystemTime` and `as_millis` it was half of the clock's tick.
fn epoch_ms_at(now: std::time::Instant) -> f64 {
  let (anchor, since) = anchor_for(now);
  anchor.epoch_ms(since)
}

impl Anchor {
  /// The system time `since` past the anchor (`Err`: that far before it).
  fn system_time(
    &self,
    since: Result<std::time::Duration, std::time::Duration>,
  ) -> std::time::SystemTime {
    match since {
      Ok(since) => self.system + since,
      Err(before) => self.system.checked_sub(before).unwrap_or(self.system),
    }
  }

  /// [`Anchor::system_time`] in whole milliseconds since the Unix epoch.
  fn epoch_ms(&self, since: Result<std::time::Duration, std::time::Duration>) -> f64 {
    let Some(epoch_ns) = self.epoch_ns else {
      return 0.0;
    };
    let ns = match since {
      Ok(since) => epoch_ns.saturating_add(since.as_nanos() as u64),
      Err(before) => epoch_ns.saturating_sub(before.as_nanos() as u64),
    };
    (ns / 1_000_000) as f64
  }
}

/// The frozen clock JS reads `Date.now()` and `performance.now()` from.
pub struct Clock {
  /// Keeps the Float64Array(2) JS reads alive; `slots` points into it.
  _buffer: JsBuffer,
  /// Its two numbers (`None` if it is not that): read once, since each
  /// read of a backing store's address and length is a call into V8.
  slots: Option<std::ptr::NonNull<f64>>,
  /// What `performance.now()` counts from: the worker's start.
  origin: std::cell::Cell<std::time::Instant>,
}

impl Clock {
  fn new(buffer: JsBuffer) -> Self {
    let ptr = buffer.as_ptr() as *mut f64;
    let fits = buffer.len() >= 2 * std::mem::size_of::<f64>()
      && (ptr as usize).is_multiple_of(std::mem::align_of::<f64>());
    Self {
      slots: if fits {
        std::ptr::NonNull::new(ptr)
      } else {
        None
      },
      _buffer: buffer,
      origin: std::cell::Cell::new(std::time::Instant::now()),
    }
  }

  /// Advances the clock to now; called each time the runtime enters the
  /// isolate, which is when Workers let time move.
  pub fn tick(&self) {
    self.tick_at(std::time::Instant::now());
  }

  /// Counts `performance.now()` from now: a worker loaded into an isolate
  /// of the stock starts its own time, not the isolate's.
  pub fn restart(&self) {
    let now = std::time::Instant::now();
    self.origin.set(now);
    self.tick_at(now);
  }

  /// Advances the clock to `now`, a clock read the caller made for this
  /// turn anyway (a read costs ~70 ns on a virtual machine's TSC, and a
  /// request took a dozen).
  pub fn tick_at(&self, now: std::time::Instant) {
    let Some(ptr) = self.slots else {
      return;
    };
    let epoch_ms = epoch_ms_at(now);
    let since_origin = now
      .saturating_duration_since(self.origin.get())
      .as_secs_f64()
      * 1000.0;
    // SAFETY: two aligned f64s of the Float64Array's backing store, which
    // `_buffer` keeps alive and V8 never moves; JS is not running while the
    // runtime ticks the clock (same thread).
    unsafe {
      ptr.as_ptr().write(epoch_ms);
      ptr.as_ptr().add(1).write(since_origin);
    }
  }
}

#[deno_core::op2]
fn op_isola_set_clock(state: &mut OpState, #[buffer] buffer: JsBuffer) {
  let clock = Clock::new(buffer);
  clock.tick();
  // Shared: each worker keeps a handle, so ticking it takes no lookup.
  state.put(std::rc::Rc::new(clock));
}

#[deno_core::op2]
#[serde]
fn op_isola_env(state: &mut OpState) -> serde_json::Value {
  let env = state.try_borrow::<WorkerEnv>().cloned().unwrap_or_default();
  serde_json::Value::Object(env.0)
}

/// The user agent for outbound `fetch()` and `navigator.userAgent`. Libraries
/// detect the Workers runtime by this exact string (hono's `getRuntimeKey`).
pub const USER_AGENT: &str = "Cloudflare-Workers";

/// `navigator.userAgent` reads it from here, so the string has one home.
#[deno_core::op2]
#[string]
fn op_isola_user_agent() -> &'static str {
  USER_AGENT
}

/// deno_fetch's settings: the egress checks (the request hook, and a
/// resolver holding the worker's own list, if any: see [`egress`]).
pub(crate) fn fetch_options(worker: Option<Arc<egress::WorkerEgress>>) -> deno_fetch::Options {
  deno_fetch::Options {
    user_agent: USER_AGENT.to_string(),
    request_builder_hook: Some(egress::request_hook),
    resolver: deno_fetch::dns::Resolver::custom(Arc::new(egress::EgressResolver::new(worker))),
    ..Default::default()
  }
}

/// The classes deno_web implements in Rust that a worker isolate gets.
/// The others (`DOMMatrix`, `DOMPoint`, `DOMRect`, `DOMQuad`, `ImageData`,
/// `CSSStyleSheet`, `CSSRule`) are browser APIs that Workers do not have and
/// whose scripts the global scope never loads; each of their ~400 methods
/// and accessors would be a V8 function template in the snapshot and a
/// function made again in every isolate.
const WEB_CLASSES: [&str; 1] = ["Console"];

/// Every extension of a worker isolate, in load order. The build script and
/// the runtime must call this with the same list, or the snapshot's op table
/// does not match.
pub fn extensions() -> Vec<deno_core::Extension> {
  let fetch_options = fetch_options(None);
  let mut web = deno_web::deno_web::init(
    Arc::new(deno_web::BlobStore::default()),
    None,
    false,
    deno_web::InMemoryBroadcastChannel::default(),
  );
  web.objects = web
    .objects
    .iter()
    .filter(|class| WEB_CLASSES.contains(&class.name.0))
    .copied()
    .collect();
  vec![
    deno_webidl::deno_webidl::init(),
    web,
    deno_crypto::deno_crypto::init(None),
    deno_net::init(),
    deno_fetch::deno_fetch::init(fetch_options),
    kv::isola_kv::init(),
    queue::isola_queue::init(),
    isola_worker::init(),
  ]
}

/// Permissions for the fetch extension: outbound HTTP(S) anywhere, nothing on
/// the file system (`fetch("file://...")` is refused).
pub fn permissions() -> deno_permissions::PermissionsContainer {
  use deno_permissions::Permissions;
  use deno_permissions::PermissionsOptions;
  use deno_permissions::RuntimePermissionDescriptorParser;
  let parser = Arc::new(RuntimePermissionDescriptorParser::new(
    sys_traits::impls::RealSys,
  ));
  let options = PermissionsOptions {
    allow_net: Some(vec![]),
    prompt: false,
    ..Default::default()
  };
  let perms = Permissions::from_options(parser.as_ref(), &options)
    .expect("static permission options are valid");
  deno_permissions::PermissionsContainer::new(parser, perms)
}

/// Puts the per-isolate state the ops read into a fresh runtime's `OpState`.
pub fn install_state(state: &mut OpState, name: WorkerName, env: WorkerEnv, sink: LogSink) {
  state.put(permissions());
  state.put(name);
  state.put(env);
  state.put(sink);
  state.put(InvocationsCell::default());
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::time::Duration;
  use std::time::Instant;
  use std::time::SystemTime;

  #[test]
  fn wall_time_follows_the_monotonic_reads_and_is_read_again_after_a_second() {
    let t0 = Instant::now();
    let at0 = system_time_at(t0);
    let skew = |a: SystemTime, b: SystemTime| a.duration_since(b).unwrap_or_else(|e| e.duration());
    assert!(skew(at0, SystemTime::now()) < Duration::from_millis(100));
    // Inside the anchor's second: exactly the monotonic distance, no read.
    let later = t0 + Duration::from_millis(500);
    assert_eq!(
      system_time_at(later).duration_since(at0).unwrap(),
      Duration::from_millis(500)
    );
    // One past the anchor's second reads the system clock again (a stepped
    // clock shows within a second), and maps by the new anchor.
    let far = t0 + Duration::from_secs(5);
    let at_far = system_time_at(far);
    assert!(skew(at_far, SystemTime::now() + Duration::from_secs(5)) < Duration::from_millis(100));
    // So does one before the anchor; it maps to its own time.
    assert!(skew(system_time_at(t0), at0) < Duration::from_millis(100));
  }

  #[test]
  fn the_js_clock_counts_the_milliseconds_of_the_system_time() {
    let system = SystemTime::UNIX_EPOCH + Duration::new(1_764_000_000, 123_456_789);
    let anchor = Anchor {
      at: Instant::now(),
      system,
      epoch_ns: Some(1_764_000_000_123_456_789),
    };
    // Inside the anchor's second, across millisecond and second edges, and
    // before the anchor (a caller's read older than a fresh anchor).
    for since in [
      Ok(Duration::ZERO),
      Ok(Duration::from_nanos(543_210)),
      Ok(Duration::from_nanos(543_211)),
      Ok(Duration::from_nanos(876_543_210)),
      Ok(Duration::from_nanos(876_543_211)),
      Ok(Duration::from_millis(999)),
      Err(Duration::from_nanos(456_789)),
      Err(Duration::from_nanos(456_790)),
      Err(Duration::from_millis(250)),
    ] {
      let by_system_time = trace::epoch_ms(anchor.system_time(since)) as f64;
      assert_eq!(anchor.epoch_ms(since), by_system_time, "{since:?}");
    }
    // Before the epoch, `Date.now()` reads 0, as it did.
    let early = Anchor {
      epoch_ns: None,
      system: SystemTime::UNIX_EPOCH - Duration::from_secs(1),
      ..anchor
    };
    let since = Ok(Duration::from_millis(5));
    assert_eq!(early.epoch_ms(since), 0.0);
    assert_eq!(trace::epoch_ms(early.system_time(since)), 0);
  }
}
