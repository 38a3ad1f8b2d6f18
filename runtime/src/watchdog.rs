//! Stops isolates that break their CPU or memory limit.
//!
//! CPU: each isolate thread's CPU clock is read when the runtime leaves the
//! isolate, and when it enters unless the thread read it a moment before
//! ([`REUSE_READ`]); the turn gets a CPU deadline. A thread
//! cannot use CPU faster than the wall clock runs, so a turn with `b` ns of
//! budget left cannot reach its deadline sooner than `b` ns of wall time
//! from now: the watchdog thread sleeps until the earliest such moment of
//! the turns it knows, reads the CPU clock of those still running, stops
//! the ones past their deadline and sleeps again. A turn that begins with
//! an earlier moment than the one the watchdog sleeps until wakes it. Turns
//! that end within their budget, which is nearly all of them, never wake
//! it: a node serving short requests does not pay for a thousand wake-ups a
//! second (measured on this VM: ~20 µs of CPU each), and an idle one parks
//! it entirely.
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

/// The shortest the watchdog sleeps between two looks at a turn that is
/// near its deadline: the most a busy loop can overrun its CPU limit by,
/// plus V8's time to honour the termination. A thread that gets little of
/// its core (the quarantine) nears its deadline slowly; this keeps the
/// watchdog from waking ever more often as it does.
const RECHECK: Duration = Duration::from_micros(200);
const RECHECK_NS: u64 = RECHECK.as_nanos() as u64;
const IDLE: u64 = u64::MAX;

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
  watchdog: &'static Watchdog,
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

/// How soon after a read of its thread's CPU clock a turn may begin and
/// count from that read, the wall time between taken as CPU
/// ([`cpu_after`]). A read is a system call (~550 ns on this VM, where the
/// monotonic clock's vDSO read is ~23 ns), and with many workers taking
/// turns every request is a turn of its own: beginning each from the last
/// turn's end read halves the reads. A thread interrupted in that short
/// gap counts its turn short by the interruption, at most this much;
/// one descheduled longer leaves a longer gap, and the turn reads the
/// clock.
const REUSE_READ: Duration = Duration::from_micros(20);
const REUSE_READ_NS: u64 = REUSE_READ.as_nanos() as u64;

thread_local! {
  /// The last read of this thread's CPU clock: the clock, its ns, and the
  /// monotonic ns ([`monotonic_ns`]) just after it (`u64::MAX`: none).
  static LAST_READ: std::cell::Cell<(libc::clockid_t, u64, u64)> =
    const { std::cell::Cell::new((0, 0, u64::MAX)) };
}

#[cfg(test)]
thread_local! {
  /// Reads of the CPU clock made on this thread (tests count them).
  static READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The thread's CPU clock at monotonic `now` from its read of `cpu` at
/// `at`, if that was at most [`REUSE_READ`] before: the time since counts
/// as CPU, which is exact unless the thread was interrupted meanwhile (then
/// it is more than the clock would say, and the turn that begins now is
/// counted short by the difference). Sans-IO, for tests.
fn cpu_after(cpu: u64, at: u64, now: u64) -> Option<u64> {
  let since = now.checked_sub(at)?;
  (since <= REUSE_READ_NS).then(|| cpu.saturating_add(since))
}

/// `clock`'s time in nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
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
    Self::watched_by(watchdog(), memory_limit)
  }

  fn watched_by(watchdog: &'static Watchdog, memory_limit: usize) -> Arc<Self> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if rc != 0 {
      clock = libc::CLOCK_THREAD_CPUTIME_ID;
    }
    let guard = Arc::new(Self {
      clock,
      watchdog,
      handle: OnceLock::new(),
      deadline: AtomicU64::new(IDLE),
      trip: AtomicU8::new(Trip::None as u8),
      array_buffers: AtomicUsize::new(0),
      memory_limit: AtomicUsize::new(memory_limit),
      terminated: AtomicBool::new(false),
    });
    watchdog.register(&guard);
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

  /// This thread's CPU time, in nanoseconds (a read of its clock, noted
  /// for the next turn's [`Guard::cpu_at_begin`]).
  pub(crate) fn cpu_now(&self) -> u64 {
    let cpu = clock_ns(self.clock).unwrap_or(0);
    // Noted just after the read: a turn that counts from it then includes
    // the read's return, as one that read the clock itself included it.
    LAST_READ.set((self.clock, cpu, monotonic_ns()));
    #[cfg(test)]
    READS.set(READS.get() + 1);
    cpu
  }

  /// This thread's CPU time where a turn begins: from the thread's last
  /// read if it was a moment ago ([`REUSE_READ`]), else read.
  fn cpu_at_begin(&self) -> u64 {
    let (clock, cpu, at) = LAST_READ.get();
    // A fresh monotonic read, not `begin_at`'s `now` (the wake-up's, maybe
    // older than the read): an earlier `now` would count the turn from
    // before the read, and charge it CPU it did not use.
    let reused = (clock == self.clock)
      .then(|| cpu_after(cpu, at, monotonic_ns()))
      .flatten();
    reused.unwrap_or_else(|| self.cpu_now())
  }

  /// Starts a turn that may use `budget_ns` of CPU; returns the start time
  /// on the thread's CPU clock ([`Guard::cpu_at_begin`]: a read, or the
  /// last one's plus the moment since).
  pub(crate) fn begin(&self, budget_ns: u64) -> u64 {
    self.begin_at(budget_ns, std::time::Instant::now())
  }

  /// [`Guard::begin`] with the caller's monotonic clock read `now`.
  pub(crate) fn begin_at(&self, budget_ns: u64, now: std::time::Instant) -> u64 {
    let cpu = self.cpu_at_begin();
    self
      .deadline
      .store(cpu.saturating_add(budget_ns), Ordering::SeqCst);
    self
      .watchdog
      .look_by(monotonic_ns_at(now).saturating_add(budget_ns));
    cpu
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
    self.deadline.store(IDLE, Ordering::Release);
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

/// Nanoseconds on the monotonic clock (vDSO: no system call).
/// Read directly: through `Instant` each read also paid a subtraction from
/// a base (~37 instructions), and a busy thread reads it a few times a
/// turn.
fn monotonic_ns() -> u64 {
  clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
}

/// [`monotonic_ns`] at `now` (`Instant` reads the same clock), from one
/// reading of both taken on the first call; a time before that reading
/// counts as that reading's.
fn monotonic_ns_at(now: std::time::Instant) -> u64 {
  static BASE: OnceLock<(std::time::Instant, u64)> = OnceLock::new();
  let (instant, ns) = *BASE.get_or_init(|| (std::time::Instant::now(), monotonic_ns()));
  ns.saturating_add(now.saturating_duration_since(instant).as_nanos() as u64)
}

/// What the watchdog does about one running turn, from its CPU deadline
/// and the thread's CPU clock now (sans-IO, so tests need no clocks).
#[derive(Debug, PartialEq, Eq)]
enum Look {
  /// Past its deadline: stop it.
  Stop,
  /// Look again this many wall-clock ns from now, the soonest it could
  /// reach the deadline (never sooner than [`RECHECK`]).
  Again(u64),
}

fn look(deadline: u64, cpu_now: u64) -> Look {
  if cpu_now > deadline {
    Look::Stop
  } else {
    Look::Again((deadline - cpu_now).max(RECHECK_NS))
  }
}

struct Watchdog {
  guards: Mutex<Vec<Weak<Guard>>>,
  /// Monotonic ns by which the watchdog looks next; `IDLE` while it is
  /// parked with nothing to watch (or working out when to look next).
  wake_at: AtomicU64,
  thread: OnceLock<std::thread::Thread>,
  /// Times it looked at the running turns (tests read it).
  wakes: AtomicU64,
}

impl Watchdog {
  fn new() -> Self {
    Self {
      guards: Mutex::new(Vec::new()),
      wake_at: AtomicU64::new(IDLE),
      thread: OnceLock::new(),
      wakes: AtomicU64::new(0),
    }
  }

  /// A watchdog on its own thread, for the life of the process.
  fn spawn(thread: std::thread::Builder) -> std::io::Result<&'static Self> {
    let dog: &'static Self = Box::leak(Box::new(Self::new()));
    let handle = thread.spawn(move || dog.run())?;
    let _ = dog.thread.set(handle.thread().clone());
    Ok(dog)
  }

  /// A turn began that must be looked at by `at` (monotonic ns) if it is
  /// still running then. One load when the watchdog already looks sooner,
  /// as it nearly always does on a busy node; else a wake-up.
  fn look_by(&self, at: u64) {
    // Late by up to RECHECK is within the limit's precision; it saves the
    // wake-up for turns that begin in step with the one it waits for.
    let at_latest = at.saturating_add(RECHECK_NS);
    if self.wake_at.load(Ordering::SeqCst) <= at_latest {
      return;
    }
    if self.wake_at.fetch_min(at, Ordering::SeqCst) > at_latest {
      if let Some(thread) = self.thread.get() {
        thread.unpark();
      }
    }
  }

  fn register(&self, guard: &Arc<Guard>) {
    let mut guards = self.guards.lock().unwrap_or_else(|e| e.into_inner());
    guards.retain(|g| g.strong_count() > 0);
    guards.push(Arc::downgrade(guard));
  }

  fn run(&self) {
    loop {
      let at = self.wake_at.load(Ordering::SeqCst);
      let now = monotonic_ns();
      if at == IDLE {
        // A turn that begins from here on unparks this thread (or has
        // already left its token, and `park` returns at once).
        std::thread::park();
        continue;
      }
      if now < at {
        std::thread::park_timeout(Duration::from_nanos(at - now));
        continue;
      }
      self.wakes.fetch_add(1, Ordering::Relaxed);
      // From here on a turn that begins tells the watchdog (it sees IDLE);
      // one that began before has its deadline stored, which the look
      // below reads.
      self.wake_at.store(IDLE, Ordering::SeqCst);
      let mut next = IDLE;
      let guards = self.guards.lock().unwrap_or_else(|e| e.into_inner());
      for guard in guards.iter().filter_map(Weak::upgrade) {
        let deadline = guard.deadline.load(Ordering::SeqCst);
        if deadline == IDLE || guard.terminated.load(Ordering::Acquire) {
          continue;
        }
        // Fails only for a thread that has exited, whose isolates are gone.
        let Some(cpu) = clock_ns(guard.clock) else {
          continue;
        };
        match look(deadline, cpu) {
          Look::Stop => {
            // The same turn still, not the next one begun meanwhile.
            if guard.deadline.load(Ordering::SeqCst) == deadline {
              guard.stop(Trip::Cpu);
            }
          }
          // From the scan's start: a little early, never late.
          Look::Again(after) => next = next.min(now.saturating_add(after)),
        }
      }
      drop(guards);
      self.wake_at.fetch_min(next, Ordering::SeqCst);
    }
  }
}

fn watchdog() -> &'static Watchdog {
  static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
  WATCHDOG.get_or_init(|| {
    let thread = std::thread::Builder::new().name("isola-watchdog".into());
    Watchdog::spawn(thread).expect("the watchdog thread starts")
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

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_turn_is_looked_at_when_it_could_first_reach_its_deadline() {
    let ms = 1_000_000;
    assert_eq!(look(50 * ms, 10 * ms), Look::Again(40 * ms));
    // Close to it: not sooner than RECHECK, so a starved thread does not
    // wake the watchdog ever more often.
    assert_eq!(look(50 * ms, 50 * ms - 10), Look::Again(RECHECK_NS));
    assert_eq!(look(50 * ms, 50 * ms), Look::Again(RECHECK_NS));
    assert_eq!(look(50 * ms, 50 * ms + 1), Look::Stop);
  }

  #[test]
  fn a_turn_counts_from_a_read_a_moment_before_it() {
    let us = 1_000;
    // 5 µs after a read: the read plus those 5 µs.
    assert_eq!(cpu_after(700 * us, 1_000 * us, 1_005 * us), Some(705 * us));
    assert_eq!(
      cpu_after(700 * us, 1_000 * us, 1_000 * us + REUSE_READ_NS),
      Some(700 * us + REUSE_READ_NS)
    );
    // Longer (the thread may have slept or been descheduled), or a read
    // noted after `now` was taken: the clock is read.
    assert_eq!(
      cpu_after(700 * us, 1_000 * us, 1_000 * us + REUSE_READ_NS + 1),
      None
    );
    assert_eq!(cpu_after(700 * us, 1_000 * us, 999 * us), None);
  }

  /// A turn that begins right after a read counts from it: what it is
  /// charged is what the thread's clock says it ran, give or take the
  /// gap's interruptions; one after a sleep reads the clock again and is
  /// not charged the sleep.
  #[test]
  fn turns_that_reuse_a_read_are_charged_what_they_ran() {
    let guard = Guard::watched_by(own_watchdog(), usize::MAX);
    let budget = Duration::from_secs(10).as_nanos() as u64;
    let spin = |d: Duration| {
      let began = std::time::Instant::now();
      while began.elapsed() < d {
        std::hint::black_box(0);
      }
    };
    let mut charged = 0;
    let clock_before = guard.cpu_now();
    let reads_before = READS.get();
    for _ in 0..200 {
      let start = guard.begin(budget);
      spin(Duration::from_micros(50));
      charged += guard.end(start);
    }
    // One read a turn, at its end (two if the thread lost its core in
    // the moment between two turns).
    let reads = READS.get() - reads_before;
    assert!(reads < 300, "{reads} reads for 200 turns");
    let ran = guard.cpu_now() - clock_before;
    // Every turn began right after the last one's end read: the turns were
    // the whole time but for those moments between them.
    assert!(charged <= ran, "charged {charged} ns of {ran}");
    assert!(charged >= ran / 2, "charged {charged} ns of {ran}");
    // After a sleep the clock is read: the sleep is not charged.
    let start = guard.begin(budget);
    std::thread::sleep(Duration::from_millis(5));
    let slept = guard.end(start);
    assert!(
      slept < Duration::from_millis(4).as_nanos() as u64,
      "charged {slept} ns for a sleep"
    );
    let end_read = guard.cpu_now();
    std::thread::sleep(Duration::from_millis(5));
    let start = guard.begin(budget);
    assert!(start < end_read + Duration::from_millis(1).as_nanos() as u64);
    guard.end(start);
  }

  fn own_watchdog() -> &'static Watchdog {
    Watchdog::spawn(std::thread::Builder::new()).unwrap()
  }

  /// Short turns within their budget, as on a node serving small requests,
  /// wake the watchdog about once per budget, not once per millisecond.
  #[test]
  fn short_turns_do_not_wake_the_watchdog() {
    let dog = own_watchdog();
    let guard = Guard::watched_by(dog, usize::MAX);
    let budget = Duration::from_millis(100).as_nanos() as u64;
    let began = std::time::Instant::now();
    while began.elapsed() < Duration::from_millis(300) {
      let start = guard.begin(budget);
      guard.end(start);
      std::thread::sleep(Duration::from_micros(100));
    }
    let wakes = dog.wakes.load(Ordering::Relaxed);
    // One look per 100 ms budget at most, with room for a slow machine to
    // stretch the loop; ticking every millisecond would be ~300.
    assert!(wakes <= 10, "the watchdog woke {wakes} times in 300 ms");
    assert_eq!(guard.trip(), Trip::None);
  }

  /// A turn past its CPU budget is stopped, also when it begins while the
  /// watchdog is parked or sleeps until a later turn's deadline.
  #[test]
  fn a_busy_turn_is_stopped() {
    let dog = own_watchdog();
    let sleeper = Guard::watched_by(dog, usize::MAX);
    let busy = Guard::watched_by(dog, usize::MAX);
    for (long, short) in [(None, 5), (Some(10_000), 5)] {
      // With a long turn open elsewhere, the watchdog sleeps until its
      // deadline; the short budget below must wake it sooner.
      let open = long.map(|ms| sleeper.begin(Duration::from_millis(ms).as_nanos() as u64));
      std::thread::sleep(Duration::from_millis(20));
      let start = busy.begin(Duration::from_millis(short).as_nanos() as u64);
      let began = std::time::Instant::now();
      while busy.trip() == Trip::None && began.elapsed() < Duration::from_secs(10) {
        std::hint::black_box(busy.cpu_now());
      }
      assert_eq!(busy.trip(), Trip::Cpu, "the busy turn was not stopped");
      busy.end(start);
      if let Some(start) = open {
        sleeper.end(start);
      }
      assert_eq!(sleeper.trip(), Trip::None);
      busy.trip.store(Trip::None as u8, Ordering::Release);
      busy.terminated.store(false, Ordering::Release);
    }
  }
}
