//! What the control plane and edges agree on, without any IO.
//!
//! - [`config`]: settings files without IO: `edge.toml`, `[telemetry]`, and
//!   the TOML reader whose errors name the line.
//! - [`cron`]: cron expressions as Cloudflare Cron Triggers read them.
//! - [`egress`]: egress allow entries (a node's and a worker's lists).
//! - [`kv`]: Workers KV limits and checks, and the edge→store calls.
//! - [`manifest`]: a worker version and how its id is computed.
//! - [`queue`]: Queues' limits, messages, the producer's calls and the
//!   consumer's batches.
//! - [`names`]: the naming rules (accounts, workers, edges, secrets, modules).
//! - [`trace`]: trace events (one per invocation) for tail, logs and analytics.
//! - [`routes`]: route patterns and the table that matches requests to them.
//! - [`msg`] and [`codec`]: the control channel's messages and framing.
//! - [`EdgeSession`] and [`ControlSession`]: the two ends of one connection
//!   as state machines. They are fed messages and the current time and hand
//!   back messages to send, events for the caller, and when to wake them
//!   next; the quinn/tokio code around them only moves bytes and runs timers,
//!   so every protocol rule is tested here deterministically.
//! - [`Backoff`]: when an edge reconnects after losing the control plane.
//! - `testing` (feature `testing`): states and bundles for channel tests.

#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod cron;
pub mod egress;
pub mod kv;
pub mod manifest;
pub mod msg;
pub mod names;
pub mod queue;
pub mod routes;
mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace;
pub mod upload;

pub use session::Backoff;
pub use session::ControlEvent;
pub use session::ControlSession;
pub use session::EdgeEvent;
pub use session::EdgeSession;
pub use session::Session;
pub use session::Timing;

/// Why bytes from the peer could not be read as a message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
  #[error("a frame of {0} bytes is larger than the limit of {max} bytes", max = codec::MAX_FRAME)]
  FrameTooLarge(usize),
  #[error("malformed message: {0}")]
  Malformed(String),
}
