//! Every `unsafe` line of the worker: entering and exiting V8 isolates.
//!
//! Many isolates share one thread, so none stays entered between uses. The
//! invariants kept here:
//! - an isolate is entered only on the thread that owns its `JsRuntime`,
//!   and only while the runtime is alive (the raw pointers never outlive a
//!   borrow of it);
//! - every `enter` is matched by exactly one `exit`, in LIFO order, before
//!   control goes back to code that may use another isolate (guards exit on
//!   drop, `entered` exits after each poll);
//! - a runtime is dropped entered, because V8 exits the isolate it disposes.

use std::future::poll_fn;
use std::future::Future;

use deno_core::v8;
use deno_core::JsRuntime;

/// Many isolates share one thread, so none stays entered between uses: each
/// synchronous use (and each poll of a future that drives one) enters it and
/// exits again. V8 also wants an isolate entered while it is dropped.
pub(super) struct EnterGuard(*mut v8::Isolate);

impl EnterGuard {
  pub(super) fn new(js: &mut JsRuntime) -> Self {
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
    // SAFETY: V8 exits the isolate as it drops it, so it must be entered
    // (and be the current isolate) first; the runtime is not used after.
    unsafe {
      self.0.v8_isolate().enter();
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

/// Polls `fut` with `isolate` entered during each poll only.
pub(super) async fn entered<F: Future>(isolate: *mut v8::Isolate, fut: F) -> F::Output {
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

/// Leaves the isolate a fresh `JsRuntime` was created entered in, so the
/// next isolate on this thread can be used, and wraps it in a [`JsCell`].
pub(super) fn jscell_from_new(mut js: JsRuntime) -> JsCell {
  // SAFETY: a new runtime's isolate was entered by its creation on this
  // thread; this is the matching exit.
  unsafe { js.v8_isolate().exit() };
  JsCell(std::mem::ManuallyDrop::new(js))
}
