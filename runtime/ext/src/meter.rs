//! Body metering against the invocation table: bytes in and out, and the
//! body limits.

use std::cell::RefCell;
use std::rc::Weak;

use deno_core::OpState;

use crate::body::Meter;
use crate::invocation::Invocations;
use crate::invocation::InvocationsCell;
use crate::outcome::LimitExceeded;

/// Counts one body's bytes into its invocation's usage and enforces its
/// limit. Holds the op state weakly: a body may outlive its isolate.
pub struct BodyMeter {
  state: Weak<RefCell<OpState>>,
  id: u32,
  /// 0: no limit.
  limit: u64,
  inbound: bool,
}

impl BodyMeter {
  /// The meter of invocation `id`'s request body.
  pub fn request(state: Weak<RefCell<OpState>>, id: u32, limit: u64) -> Self {
    Self {
      state,
      id,
      limit,
      inbound: true,
    }
  }

  /// The meter of invocation `id`'s response body.
  pub fn response(state: Weak<RefCell<OpState>>, id: u32, limit: u64) -> Self {
    Self {
      state,
      id,
      limit,
      inbound: false,
    }
  }

  fn with_invocations<R>(&self, f: impl FnOnce(&mut Invocations) -> R) -> Option<R> {
    let state = self.state.upgrade()?;
    let invocations = state.try_borrow().ok()?.borrow::<InvocationsCell>().clone();
    // As with `OpState` before: not counted while borrowed (a body is
    // polled by another task, so they are not).
    let mut invocations = invocations.try_borrow_mut().ok()?;
    Some(f(&mut invocations))
  }
}

impl Meter for BodyMeter {
  fn count(&self, total: u64, n: u64) -> bool {
    self.with_invocations(|inv| {
      if self.inbound {
        inv.add_bytes_in(self.id, n)
      } else {
        inv.add_bytes_out(self.id, n)
      }
    });
    self.limit == 0 || total <= self.limit
  }

  fn exceeded(&self) -> LimitExceeded {
    let limit = if self.inbound {
      LimitExceeded::RequestBody(self.limit)
    } else {
      LimitExceeded::ResponseBody(self.limit)
    };
    self.with_invocations(|inv| inv.limit(self.id, limit));
    limit
  }

  fn streaming(&self, on: bool) {
    self.with_invocations(|inv| inv.set_streaming(self.id, on));
  }
}
