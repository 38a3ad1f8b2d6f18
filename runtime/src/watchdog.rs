//! Stops isolates that break their CPU or memory limit.
//!
//! CPU: each isolate thread's CPU clock is read when the runtime enters the
//! isolate and when it leaves; a watchdog thread checks, every millisecond,
//! every isolate currently inside JS against its deadline and terminates
//! execution past it. This stops JS and Wasm busy loops alike, without
//! touching the request path beyond two clock reads per turn. When no
//! isolate has run JS for [`REST_AFTER`] the watchdog parks until the next
//! turn begins, so an idle node does not wake a thousand times a second.
//!
//! Memory: the V8 heap has a hard limit (near it, execution is terminated),
//! and ArrayBuffer backing stores come from an allocator that counts them
//! per isolate and refuses to go past the same limit.
//!
//! The crate's only `unsafe` outside `worker/enter.rs` is here, and it is
//! all FFI that cannot be written otherwise: the libc thread CPU clock, and
//! the C callbacks V8 calls (the full-GC epilogue and the ArrayBuffer
//! allocator's vtable, whose `Guard` pointer is an `Arc` kept alive until
//! V8 calls `ab_drop`).

use std::ffi::c_void;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::Weak;
use std::time::Duration;

use deno_core::v8;

/// How often the watchdog looks; the most a busy loop can overrun its CPU
/// limit by, plus V8's time to honour the termination.
const TICK: Duration = Duration::from_millis(1);
const IDLE: u64 = u64::MAX;
/// Ticks with no turn running before the watchdog parks. Long enough that a
/// busy node, with gaps between turns, never pays for waking it.
const REST_AFTER: u32 = 100;

/// Why an isolate was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trip {
  None = 0,
  Cpu = 1,
  Memory = 2,
}

/// Limit state of one isolate, shared with the watchdog thread and the
/// ArrayBuffer allocator.
pub(crate) struct Guard {
  clock: libc::clockid_t,
  handle: OnceLock<v8::IsolateHandle>,
  /// CPU-clock nanoseconds past which the current turn is stopped; `IDLE`
  /// while the isolate is not running JS.
  deadline: AtomicU64,
  trip: AtomicU8,
  /// ArrayBuffer bytes allocated now.
  array_buffers: AtomicUsize,
  memory_limit: AtomicUsize,
  terminated: AtomicBool,
}

/// Gives the calling thread the lowest scheduling priority (nice 19), so
/// under contention the OS hands the CPU to every other thread first. Used
/// for the quarantine thread; failure only costs fairness, so it is logged.
pub(crate) fn lower_thread_priority() {
  // SAFETY: plain syscalls on the calling thread's own id; no memory is
  // shared with the kernel.
  let rc = unsafe {
    let tid = libc::gettid();
    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
  };
  if rc != 0 {
    tracing::warn!(
      error = %std::io::Error::last_os_error(),
      "cannot lower the quarantine thread's priority"
    );
  }
}

fn thread_cpu_ns(clock: libc::clockid_t) -> Option<u64> {
  let mut ts = libc::timespec {
    tv_sec: 0,
    tv_nsec: 0,
  };
  // SAFETY: a valid clock id and a valid out pointer.
  let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
  (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

impl Guard {
  /// A guard for an isolate that will run on the current thread.
  pub(crate) fn new(memory_limit: usize) -> Arc<Self> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if rc != 0 {
      clock = libc::CLOCK_THREAD_CPUTIME_ID;
    }
    let guard = Arc::new(Self {
      clock,
      handle: OnceLock::new(),
      deadline: AtomicU64::new(IDLE),
      trip: AtomicU8::new(Trip::None as u8),
      array_buffers: AtomicUsize::new(0),
      memory_limit: AtomicUsize::new(memory_limit),
      terminated: AtomicBool::new(false),
    });
    watchdog().register(&guard);
    guard
  }

  pub(crate) fn set_handle(&self, handle: v8::IsolateHandle) {
    let _ = self.handle.set(handle);
  }

  pub(crate) fn set_memory_limit(&self, bytes: usize) {
    self.memory_limit.store(bytes, Ordering::Relaxed);
  }

  pub(crate) fn memory_limit(&self) -> usize {
    self.memory_limit.load(Ordering::Relaxed)
  }

  /// This thread's CPU time, in nanoseconds.
  pub(crate) fn cpu_now(&self) -> u64 {
    thread_cpu_ns(self.clock).unwrap_or(0)
  }

  /// Starts a turn that may use `budget_ns` of CPU; returns the start time.
  pub(crate) fn begin(&self, budget_ns: u64) -> u64 {
    let now = self.cpu_now();
    let before = self
      .deadline
      .swap(now.saturating_add(budget_ns), Ordering::AcqRel);
    if before == IDLE {
      watchdog().turn_began();
    }
    now
  }

  /// Lets the turn begun at `start` use `budget_ns` in all (more
  /// invocations joined it); reads no clock.
  pub(crate) fn extend(&self, start: u64, budget_ns: u64) {
    let _ = self
      .deadline
      .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
        (d != IDLE).then(|| d.max(start.saturating_add(budget_ns)))
      });
  }

  /// Ends the turn begun at `start`; returns the CPU it used.
  pub(crate) fn end(&self, start: u64) -> u64 {
    if self.deadline.swap(IDLE, Ordering::AcqRel) != IDLE {
      watchdog().turn_ended();
    }
    self.cpu_now().saturating_sub(start)
  }

  pub(crate) fn array_buffer_bytes(&self) -> usize {
    self.array_buffers.load(Ordering::Relaxed)
  }

  pub(crate) fn trip(&self) -> Trip {
    match self.trip.load(Ordering::Acquire) {
      1 => Trip::Cpu,
      2 => Trip::Memory,
      _ => Trip::None,
    }
  }

  /// Stops the isolate's JS for `why`; the first reason sticks.
  pub(crate) fn stop(&self, why: Trip) {
    let _ = self.trip.compare_exchange(
      Trip::None as u8,
      why as u8,
      Ordering::AcqRel,
      Ordering::Acquire,
    );
    if !self.terminated.swap(true, Ordering::AcqRel) {
      if let Some(handle) = self.handle.get() {
        handle.terminate_execution();
      }
    }
  }
}

impl Drop for Guard {
  fn drop(&mut self) {
    // An isolate dropped in the middle of a turn (a kill) ends it here.
    if *self.deadline.get_mut() != IDLE {
      watchdog().turn_ended();
    }
  }
}

struct Watchdog {
  guards: Mutex<Vec<Weak<Guard>>>,
  /// Turns running now, across all isolates.
  running: AtomicUsize,
  thread: OnceLock<std::thread::Thread>,
}

impl Watchdog {
  fn turn_began(&self) {
    if self.running.fetch_add(1, Ordering::AcqRel) == 0 {
      // Cheap unless the watchdog is parked; then it wakes for this turn.
      if let Some(thread) = self.thread.get() {
        thread.unpark();
      }
    }
  }

  fn turn_ended(&self) {
    self.running.fetch_sub(1, Ordering::AcqRel);
  }

  fn register(&self, guard: &Arc<Guard>) {
    let mut guards = self.guards.lock().unwrap_or_else(|e| e.into_inner());
    guards.retain(|g| g.strong_count() > 0);
    guards.push(Arc::downgrade(guard));
  }

  fn run(&self) {
    let mut quiet = 0u32;
    loop {
      if self.running.load(Ordering::Acquire) == 0 {
        quiet += 1;
        if quiet >= REST_AFTER {
          // A turn that begins from here on unparks this thread (or has
          // already left its token, and `park` returns at once).
          while self.running.load(Ordering::Acquire) == 0 {
            std::thread::park();
          }
          quiet = 0;
        }
      } else {
        quiet = 0;
      }
      std::thread::sleep(TICK);
      let guards = self.guards.lock().unwrap_or_else(|e| e.into_inner());
      for guard in guards.iter().filter_map(Weak::upgrade) {
        let deadline = guard.deadline.load(Ordering::Acquire);
        if deadline == IDLE {
          continue;
        }
        if let Some(now) = thread_cpu_ns(guard.clock) {
          if now > deadline && guard.deadline.load(Ordering::Acquire) == deadline {
            guard.stop(Trip::Cpu);
          }
        }
      }
    }
  }
}

fn watchdog() -> &'static Watchdog {
  static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
  WATCHDOG.get_or_init(|| {
    let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
      guards: Mutex::new(Vec::new()),
      running: AtomicUsize::new(0),
      thread: OnceLock::new(),
    }));
    let thread = std::thread::Builder::new()
      .name("isola-watchdog".into())
      .spawn(move || dog.run())
      .expect("the watchdog thread starts");
    let _ = dog.thread.set(thread.thread().clone());
    dog
  })
}

/// After each full GC: if the live heap plus ArrayBuffers still exceeds the
/// limit, the isolate is out of memory. Stopping here is much sooner than
/// V8's near-heap-limit callback, which comes only after a long stretch of
/// back-to-back GCs.
pub(crate) unsafe extern "C" fn after_full_gc(
  isolate: v8::UnsafeRawIsolatePtr,
  _type: v8::GCType,
  _flags: v8::GCCallbackFlags,
  data: *mut c_void,
) {
  // SAFETY: `data` is the isolate's guard, which outlives the isolate; the
  // callback runs on the isolate's thread while it is entered.
  let guard = unsafe { &*(data as *const Guard) };
  let mut isolate = unsafe { v8::Isolate::from_raw_isolate_ptr(isolate) };
  let live = isolate.get_heap_statistics().used_heap_size() + guard.array_buffer_bytes();
  if live > guard.memory_limit() {
    guard.stop(Trip::Memory);
  }
}

// ------------------------------------------------------ ArrayBuffer memory --

unsafe extern "C" fn ab_allocate(guard: &Guard, len: usize) -> *mut c_void {
  if !ab_reserve(guard, len) {
    return std::ptr::null_mut();
  }
  // SAFETY: plain allocation; null is handled by V8 as a failed allocation.
  let ptr = unsafe { libc::calloc(len.max(1), 1) };
  if ptr.is_null() {
    guard.array_buffers.fetch_sub(len, Ordering::Relaxed);
  }
  ptr
}

unsafe extern "C" fn ab_allocate_uninitialized(guard: &Guard, len: usize) -> *mut c_void {
  if !ab_reserve(guard, len) {
    return std::ptr::null_mut();
  }
  // SAFETY: as above.
  let ptr = unsafe { libc::malloc(len.max(1)) };
  if ptr.is_null() {
    guard.array_buffers.fetch_sub(len, Ordering::Relaxed);
  }
  ptr
}

fn ab_reserve(guard: &Guard, len: usize) -> bool {
  let limit = guard.memory_limit();
  let before = guard.array_buffers.fetch_add(len, Ordering::Relaxed);
  if before.saturating_add(len) > limit {
    guard.array_buffers.fetch_sub(len, Ordering::Relaxed);
    guard.stop(Trip::Memory);
    return false;
  }
  true
}

unsafe extern "C" fn ab_free(guard: &Guard, data: *mut c_void, len: usize) {
  guard.array_buffers.fetch_sub(len, Ordering::Relaxed);
  // SAFETY: `data` came from calloc/malloc above.
  unsafe { libc::free(data) };
}

unsafe extern "C" fn ab_drop(guard: *const Guard) {
  // SAFETY: the allocator owns one strong count, taken in `allocator`.
  drop(unsafe { Arc::from_raw(guard) });
}

static AB_VTABLE: v8::RustAllocatorVtable<Guard> = v8::RustAllocatorVtable {
  allocate: ab_allocate,
  allocate_uninitialized: ab_allocate_uninitialized,
  free: ab_free,
  drop: ab_drop,
};

/// An ArrayBuffer allocator that counts into `guard`.
pub(crate) fn allocator(guard: &Arc<Guard>) -> v8::UniqueRef<v8::Allocator> {
  let raw = Arc::into_raw(guard.clone());
  // SAFETY: the vtable's functions match the handle type; `ab_drop` releases
  // the strong count taken here.
  unsafe { v8::new_rust_allocator(raw, &AB_VTABLE) }
}
