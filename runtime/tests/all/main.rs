//! The runtime's one integration test binary, in wasmtime's `tests/all`
//! style: V8 is linked once instead of once per test file, which is most of
//! the build time on small machines. libtest-mimic runs every trial:
//! fixture cases (`fixtures.rs`), pool tests (`pool.rs`), code caches
//! (`code_cache.rs`), scheduled runs
//! and service bindings through the pool (`events.rs`), KV and queue
//! bindings and consumers (`storage.rs`), the egress policy (`egress.rs`), trace events of every kind of
//! invocation (`trace.rs`) and tests of one
//! worker driven directly (`worker.rs`).
//!
//! `cargo test -p isola-runtime --test all -- pool::` runs one group.

mod code_cache;
mod egress;
mod events;
mod fixtures;
mod pool;
mod storage;
mod trace;
mod worker;

use std::path::PathBuf;

use isola_runtime::Bundle;
use isola_runtime::Error;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;
use libtest_mimic::Arguments;

/// A worker of the pool tests (`events`, `storage`): its file, its config.
#[derive(Clone)]
pub struct Spec {
  pub file: PathBuf,
  pub config: WorkerConfig,
}

impl Spec {
  pub fn source(&self) -> impl FnOnce() -> Result<(Bundle, WorkerConfig), Error> + Send + 'static {
    let spec = self.clone();
    move || Ok((Bundle::from_entry_file(&spec.file)?, spec.config))
  }

  pub fn key(&self) -> WorkerKey {
    WorkerKey::new(self.config.name(), "v1")
  }
}

/// A trial named `name` that runs `test` on a current-thread tokio runtime
/// of its own.
pub fn async_trial<F: std::future::Future<Output = ()> + 'static>(
  name: &str,
  test: fn() -> F,
) -> libtest_mimic::Trial {
  libtest_mimic::Trial::test(name, move || {
    tokio::runtime::Builder::new_current_thread()
      .enable_all()
      .build()
      .expect("a tokio runtime starts")
      .block_on(test());
    Ok(())
  })
}

fn main() {
  let args = Arguments::from_args();
  // Process-wide measurements first, alone, so that no other trial's
  // allocations blur them.
  let alone = Arguments {
    test_threads: Some(1),
    ..args.clone()
  };
  let first = libtest_mimic::run(&alone, pool::exclusive_trials());
  let mut trials = fixtures::trials();
  trials.extend(pool::trials());
  trials.extend(code_cache::trials());
  trials.extend(events::trials());
  trials.extend(egress::trials());
  trials.extend(storage::trials());
  trials.extend(trace::trials());
  trials.extend(worker::trials());
  let rest = libtest_mimic::run(&args, trials);
  if first.has_failed() || rest.has_failed() {
    std::process::exit(101);
  }
}
