//! Every `unsafe` line of the worker: entering and exiting V8 isolates, and
//! reading what the one in use keeps for `fetch()`.
//!
//! Many isolates share one thread, so each use enters its isolate. The
//! last one used stays entered until another is used or it is dropped: a
//! first entry takes V8's thread-data lock and lookup, and entering and
//! exiting once per wake-up took ~560 instructions of a ~25,000-instruction
//! `isola-edge dev` hello request (`bench/instructions.py`; 373 fewer now),
//! where a thread that serves one worker never switches. The invariants:
//! - an isolate is entered only on the thread that owns its `JsRuntime`,
//!   and only while the runtime is alive (a guard's pointer never outlives
//!   a borrow of it; [`KEPT`]'s is cleared as its runtime is dropped);
//! - every `enter` is matched by exactly one `exit`, in LIFO order, before
//!   another isolate is used: at most one isolate stays entered between
//!   uses ([`KEPT`]), on top of the thread's entry stack; a use of another
//!   exits it first, and a use inside a use (nested) of another isolate
//!   exits as it ends; a nested use of the isolate in use ([`CURRENT`])
//!   enters nothing (it already is V8's current isolate; two such uses
//!   took ~200 instructions of each request);
//! - a runtime is dropped entered, because V8 exits the isolate it disposes.
//!
//! [`CURRENT`] also tells `fetch()`'s request hook, which has no other way
//! to know, whose egress list applies ([`current_caller`]): JS runs only
//! inside a use, so the hook runs in the isolate of the innermost one.

use std::cell::Cell;
use std::future::poll_fn;
use std::future::Future;

use deno_core::v8;
use deno_core::JsRuntime;
use isola_ext::egress::Caller;

/// An isolate as V8 knows it: its own pointer, which stays put when the
/// `JsRuntime` that owns it moves (a `&v8::Isolate` points into the runtime).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Real(*mut v8::RealIsolate);

impl Real {
  const NONE: Self = Self(std::ptr::null_mut());

  fn of(isolate: &v8::Isolate) -> Self {
    // SAFETY: `UnsafeRawIsolatePtr` is a transparent wrapper of this
    // pointer; nothing is dereferenced.
    Self(unsafe {
      std::mem::transmute::<v8::UnsafeRawIsolatePtr, *mut v8::RealIsolate>(
        isolate.as_raw_isolate_ptr(),
      )
    })
  }

  /// Enters the isolate; it must be alive, on this thread.
  unsafe fn enter(self) {
    // SAFETY: as the caller promises; the handle made here owns nothing.
    unsafe { v8::Isolate::from_raw_ptr(self.0).enter() }
  }

  /// The egress list kept in the isolate (none before a worker is loaded:
  /// the hook then refuses the fetch); it must be alive, on this thread.
  unsafe fn caller(self) -> Option<Caller> {
    // SAFETY: as the caller promises; the handle made here owns nothing.
    unsafe { v8::Isolate::from_raw_ptr(self.0) }
      .get_slot::<Caller>()
      .cloned()
  }

  /// Exits the isolate; it must be alive and the current one.
  unsafe fn exit(self) {
    // SAFETY: as the caller promises; the handle made here owns nothing.
    unsafe { v8::Isolate::from_raw_ptr(self.0).exit() }
  }
}

thread_local! {
  /// The isolate this thread left entered after its last use (NONE: none);
  /// NONE while a use is open (that use's guard holds it).
  static KEPT: Cell<Real> = const { Cell::new(Real::NONE) };
  /// The isolate of the innermost open use; NONE while no use is open
  /// (only the outermost use keeps its isolate entered).
  static CURRENT: Cell<Real> = const { Cell::new(Real::NONE) };
}

/// One use of an isolate: it is entered while the guard lives. The
/// outermost use leaves it entered (see the module docs); a nested one of
/// another isolate exits as it ends.
pub(super) struct EnterGuard {
  isolate: Real,
  how: Use,
}

enum Use {
  /// The outermost use: its isolate stays entered ([`KEPT`]) after it.
  Outermost,
  /// A nested use of another isolate than `outer`'s: exited as it ends.
  Nested { outer: Real },
  /// A nested use of the isolate already in use: entered nothing.
  Again,
}

impl EnterGuard {
  pub(super) fn new(js: &mut JsRuntime) -> Self {
    Self::enter(Real::of(js.v8_isolate()))
  }

  /// Enters `isolate`, which must be alive for as long as the guard.
  fn enter(isolate: Real) -> Self {
    let outer = CURRENT.with(|c| c.get());
    if outer != Real::NONE {
      if outer == isolate {
        return Self {
          isolate,
          how: Use::Again,
        };
      }
      // SAFETY: the caller keeps the isolate alive; exited in `drop`.
      unsafe { isolate.enter() };
      CURRENT.with(|c| c.set(isolate));
      return Self {
        isolate,
        how: Use::Nested { outer },
      };
    }
    let kept = KEPT.with(|k| k.replace(Real::NONE));
    if kept != isolate {
      // SAFETY: `kept` is alive (a runtime clears KEPT as it is dropped)
      // and entered once, on top of this thread's entry stack (no use is
      // open); then the caller's isolate is entered in its place.
      unsafe {
        if kept != Real::NONE {
          kept.exit();
        }
        isolate.enter();
      }
    }
    CURRENT.with(|c| c.set(isolate));
    Self {
      isolate,
      how: Use::Outermost,
    }
  }
}

impl Drop for EnterGuard {
  fn drop(&mut self) {
    match self.how {
      Use::Outermost => {
        CURRENT.with(|c| c.set(Real::NONE));
        KEPT.with(|k| k.set(self.isolate));
      }
      Use::Nested { outer } => {
        CURRENT.with(|c| c.set(outer));
        // SAFETY: entered in `enter` on this thread; exits in LIFO order.
        unsafe { self.isolate.exit() };
      }
      Use::Again => {}
    }
  }
}

/// The egress list of the isolate of the innermost open use on this thread
/// (`None` outside every use), for `fetch()`'s request hook
/// (`isola_ext::egress::set_caller_source`).
pub(super) fn current_caller() -> Option<Caller> {
  let isolate = CURRENT.with(Cell::get);
  if isolate == Real::NONE {
    return None;
  }
  // SAFETY: an open use keeps its isolate alive, on this thread.
  unsafe { isolate.caller() }
}

/// A `JsRuntime` that is entered while in use (see [`EnterGuard`]).
pub(super) struct JsCell(std::mem::ManuallyDrop<JsRuntime>);

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
    let isolate = Real::of(self.0.v8_isolate());
    let kept = KEPT.with(|k| {
      let kept = k.get() == isolate;
      if kept {
        k.set(Real::NONE);
      }
      kept
    });
    // SAFETY: V8 exits the isolate as it drops it, so it must be entered
    // (and be the current isolate) first: it is if it was kept entered
    // (then on top of the entry stack), else it is entered here. The runtime
    // is not used after.
    unsafe {
      if !kept {
        isolate.enter();
      }
      std::mem::ManuallyDrop::drop(&mut self.0);
    }
  }
}

impl JsCell {
  /// Bytes of V8 heap in use now (entered for the read).
  pub(super) fn heap_used(&mut self) -> usize {
    let _entered = EnterGuard::new(self);
    self.v8_isolate().get_heap_statistics().used_heap_size()
  }
}

/// Polls `fut` with `isolate` entered during each poll (each poll is a use).
pub(super) async fn entered<F: Future>(isolate: *mut v8::Isolate, fut: F) -> F::Output {
  // SAFETY: the caller keeps the isolate alive (and its runtime in place)
  // across the await.
  let isolate = Real::of(unsafe { &*isolate });
  let mut fut = std::pin::pin!(fut);
  poll_fn(|cx| {
    let _entered = EnterGuard::enter(isolate);
    fut.as_mut().poll(cx)
  })
  .await
}

/// Leaves the isolate a fresh `JsRuntime` was created entered in, so the
/// next isolate on this thread can be used, and wraps it in a [`JsCell`].
pub(super) fn jscell_from_new(mut js: JsRuntime) -> JsCell {
  // SAFETY: a new runtime's isolate was entered by its creation on this
  // thread; this is the matching exit.
  unsafe { js.v8_isolate().exit() };
  JsCell(std::mem::ManuallyDrop::new(js))
}
