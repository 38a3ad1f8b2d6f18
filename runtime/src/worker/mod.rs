//! Isolates and the workers loaded into them.
//!
//! - `config`: [`WorkerConfig`], what a worker is loaded with;
//! - `isolate`: [`Isolate`], started from the snapshot, and loading a worker;
//! - `running`: [`Worker`], its turns, limits and event loop;
//! - `handle`: [`WorkerHandle`] and [`Invocation`], the caller's side;
//! - `strings`: the JS strings of a request's method and header names, held;
//! - `enter`: every `unsafe` line (entering and exiting V8 isolates).

mod config;
mod enter;
mod handle;
mod isolate;
mod running;
mod strings;

pub use config::WorkerConfig;
pub(crate) use handle::Answer;
pub(crate) use handle::Call;
pub(crate) use handle::Fetch;
pub use handle::FetchRequest;
pub use handle::Invocation;
pub(crate) use handle::Queued;
pub use handle::WorkerHandle;
pub use isolate::Isolate;
pub(crate) use running::note_busy;
pub use running::Worker;
