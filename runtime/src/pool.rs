//! The node's isolates: V8 threads, a stock of blank isolates on each, and
//! an LRU of loaded workers keyed by (worker, version).
//!
//! Each V8 thread runs a current-thread tokio runtime. A worker lives on the
//! thread that loaded it; requests from any thread reach it through its
//! [`WorkerHandle`]. Code that accepts connections can run on the V8 threads
//! themselves ([`Runtime::spawn_on_each_thread`]); a request then prefers an
//! instance on its own thread and skips the cross-thread hop, and a thread
//! whose requests keep crossing to a worker elsewhere loads a replica.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::bundle::Bundle;
use crate::code_cache::CodeCache;
use crate::code_cache::CodeCacheConfig;
use crate::code_cache::CodeCacheStats;
use crate::error::Error;
use crate::error::ErrorKind;
use crate::fairness::Admission;
use crate::fairness::Fairness;
use crate::fairness::LedgerCell;
use crate::limits::MeterSink;
use crate::limits::Outcome;
use crate::placement::Placement;
use crate::scheduled::ScheduledEvent;
use crate::scheduled::ScheduledRun;
use crate::services::PoolLink;
use crate::services::Services;
use crate::services::ServicesHandle;
use crate::storage::Storage;
use crate::trace::TraceSink;
use crate::worker::Answer;
use crate::worker::Call;
use crate::worker::FetchRequest;
use crate::worker::Invocation;
use crate::worker::Isolate;
use crate::worker::Queued;
use crate::worker::WorkerConfig;
use crate::worker::WorkerHandle;
use isola_ext::egress::EgressPolicy;
use isola_ext::LogSink;
use isola_ext::RequestBody;
use isola_ext::ResponseBody;

/// Settings of a [`Runtime`].
#[derive(Clone, Debug)]
pub struct Config {
  threads: usize,
  max_isolates: usize,
  max_memory: u64,
  idle_ttl: Duration,
  stock: usize,
  max_concurrency: usize,
  logs: LogSink,
  meter: MeterSink,
  trace: TraceSink,
  fairness: Fairness,
  egress: Arc<EgressPolicy>,
  code_cache: CodeCacheConfig,
  pub(crate) services: ServicesHandle,
  pub(crate) storage: Storage,
}

impl Default for Config {
  fn default() -> Self {
    Self {
      threads: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
      max_isolates: 1000,
      max_memory: 2 << 30,
      idle_ttl: Duration::from_secs(300),
      stock: 2,
      max_concurrency: 64,
      logs: LogSink::discard(),
      meter: MeterSink::discard(),
      trace: TraceSink::discard(),
      fairness: Fairness::default(),
      egress: Arc::new(EgressPolicy::default()),
      code_cache: CodeCacheConfig::default(),
      services: ServicesHandle::default(),
      storage: Storage::default(),
    }
  }
}

impl Config {
  /// Where workers' `fetch()` may connect. Default:
  /// [`EgressPolicy::default`], nothing of the node's networks (loopback,
  /// private, link-local, ...).
  pub fn egress(mut self, policy: EgressPolicy) -> Self {
    self.egress = Arc::new(policy);
    self
  }

  /// How V8 code caches of worker modules are kept, so that only the first
  /// isolate of a version parses and compiles it (see
  /// [`CodeCacheConfig`]). That isolate makes the caches once its code is
  /// wanted again: it was preloaded ([`Runtime::preload`]), it starts a
  /// second invocation, or the same source compiled without a cache
  /// before. Code that runs once gets none. Default: on, 64 MiB in
  /// memory, modules of 1 KiB and more, no store.
  pub fn code_cache(mut self, code_cache: CodeCacheConfig) -> Self {
    self.code_cache = code_cache;
    self
  }

  /// V8 threads. Default: one per CPU core.
  pub fn threads(mut self, n: usize) -> Self {
    self.threads = n.max(1);
    self
  }

  /// Loaded worker isolates kept at most; the least recently used go first.
  /// Default: 1000.
  pub fn max_isolates(mut self, n: usize) -> Self {
    self.max_isolates = n.max(1);
    self
  }

  /// Memory of all loaded isolates together (as measured after loading and
  /// at eviction checks) before the least recently used go. Default: 2 GiB.
  pub fn max_memory(mut self, bytes: u64) -> Self {
    self.max_memory = bytes;
    self
  }

  /// A worker isolate unused this long is dropped. Default: 5 minutes.
  pub fn idle_ttl(mut self, ttl: Duration) -> Self {
    self.idle_ttl = ttl;
    self
  }

  /// Blank isolates kept ready on each thread, so the first request to an
  /// unseen worker only loads its code. Default: 2.
  pub fn stock(mut self, n: usize) -> Self {
    self.stock = n;
    self
  }

  /// Requests one isolate serves at once before another isolate of the same
  /// worker is started. Default: 64.
  pub fn max_concurrency(mut self, n: usize) -> Self {
    self.max_concurrency = n.max(1);
    self
  }

  /// Where worker `console.*` output goes. Default: dropped.
  pub fn logs(mut self, logs: LogSink) -> Self {
    self.logs = logs;
    self
  }

  /// Where invocation records go. Default: dropped.
  pub fn meter(mut self, meter: MeterSink) -> Self {
    self.meter = meter;
    self
  }

  /// Where trace events go: one per invocation (fetch, scheduled, queue,
  /// RPC), with its logs and exceptions. Default: none are built.
  pub fn trace(mut self, trace: TraceSink) -> Self {
    self.trace = trace;
    self
  }

  /// How workers whose invocations keep hitting their CPU or memory limit
  /// are kept from starving the others (see [`Fairness`]). Default: on,
  /// with [`Fairness::default`]'s settings.
  pub fn fairness(mut self, fairness: Fairness) -> Self {
    self.fairness = fairness;
    self
  }

  /// Which worker each service binding reaches. Default: none resolve.
  pub fn services(mut self, services: Arc<dyn Services>) -> Self {
    self.services = ServicesHandle(services);
    self
  }

  /// Where KV bindings go. Default: every call fails with "KV is not
  /// available on this node".
  pub fn kv(mut self, kv: Arc<dyn isola_ext::KvService>) -> Self {
    self.storage.kv = kv;
    self
  }

  /// Where queue producer bindings send. Default: every send fails with
  /// "Queues are not available on this node".
  pub fn queues(mut self, queues: Arc<dyn isola_ext::QueueService>) -> Self {
    self.storage.queues = queues;
    self
  }
}

/// Identifies a loaded worker: its name and version hash.
///
/// Every request looks its worker up by key, so the key's hash is made
/// once, where it is made, and equality first compares the strings'
/// pointers (the routing state hands out clones of one key): hashing and
/// comparing three strings per request cost ~250 instructions.
#[derive(Clone, Debug)]
pub struct WorkerKey {
  name: Arc<str>,
  version: Arc<str>,
  /// A digest of the secrets bound into the worker's `env`, if any: the
  /// same version with other secrets must not share isolates.
  secrets: Option<Arc<str>>,
  hash: u64,
}

impl WorkerKey {
  pub fn new(name: impl Into<Arc<str>>, version: impl Into<Arc<str>>) -> Self {
    Self::make(name.into(), version.into(), None)
  }

  /// The key of this version with secrets whose digest is `digest`.
  pub fn with_secrets(self, digest: impl Into<Arc<str>>) -> Self {
    Self::make(self.name, self.version, Some(digest.into()))
  }

  fn make(name: Arc<str>, version: Arc<str>, secrets: Option<Arc<str>>) -> Self {
    use std::hash::BuildHasher;
    let hash = foldhash::quality::FixedState::with_seed(0).hash_one((&name, &version, &secrets));
    Self {
      name,
      version,
      secrets,
      hash,
    }
  }

  /// The worker's name.
  pub fn name(&self) -> &Arc<str> {
    &self.name
  }

  /// The version's hash.
  pub fn version(&self) -> &Arc<str> {
    &self.version
  }

  /// The digest of the secrets bound into its `env`, if any.
  pub fn secrets(&self) -> Option<&Arc<str>> {
    self.secrets.as_ref()
  }
}

impl PartialEq for WorkerKey {
  fn eq(&self, other: &Self) -> bool {
    fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
      Arc::ptr_eq(a, b) || a == b
    }
    self.hash == other.hash
      && same(&self.name, &other.name)
      && same(&self.version, &other.version)
      && match (&self.secrets, &other.secrets) {
        (Some(a), Some(b)) => same(a, b),
        (None, None) => true,
        _ => false,
      }
  }
}

impl Eq for WorkerKey {}

impl std::hash::Hash for WorkerKey {
  fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
    state.write_u64(self.hash);
  }
}

/// Counts of the pool, for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
  /// Loaded worker isolates.
  pub isolates: usize,
  /// Their memory as last measured.
  pub memory: u64,
  /// Workers loaded into an isolate so far (cold starts).
  pub cold_starts: u64,
  /// Of those, how many found a ready blank isolate.
  pub stock_hits: u64,
  /// Isolates dropped by LRU, memory or idle TTL.
  pub evictions: u64,
  /// Worker isolates still alive on the V8 threads (evicted ones linger
  /// until their in-flight requests end).
  pub running: usize,
  /// Blank isolates ready in the stocks.
  pub stock: usize,
  /// Workers throttled right now (see [`Fairness`]).
  pub throttled_workers: usize,
  /// Worker isolates alive on the quarantine thread.
  pub quarantined: usize,
  /// Code cache hits, misses and rejections (all 0 with the cache off).
  pub code_cache: CodeCacheStats,
}

/// How long a V8 thread must have had no new command before it makes a
/// blank isolate for its stock.
const REFILL_QUIET: Duration = Duration::from_millis(10);

/// Requests that arrive on a V8 thread with no instance of their worker
/// within one [`REPLICA_WINDOW`] before that thread loads one of its own.
/// Each such request crosses to the other thread and back (a wake-up each
/// way, and the two threads wait on each other: with two threads and 100
/// workers, half the requests did, and the second thread added nothing to
/// the first's throughput); a replica costs one load and its memory.
const REPLICA_AFTER: u32 = 128;
const REPLICA_WINDOW: Duration = Duration::from_secs(1);
/// In [`Entry::remote`]: a replica is being loaded on that thread.
const REPLICA_LOADING: u32 = u32::MAX;

type TaskFactory = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

enum Command {
  Load {
    bundle: Bundle,
    config: Box<WorkerConfig>,
    /// The request that made the load: the worker gets it as soon as it
    /// is spawned.
    first: Option<Box<Queued>>,
    reply: oneshot::Sender<Result<(WorkerHandle, u64, bool), Error>>,
  },
  Spawn(TaskFactory),
}

struct Thread {
  tx: mpsc::UnboundedSender<Command>,
  isolates: Arc<AtomicUsize>,
  stock: Arc<AtomicUsize>,
  /// Requests its isolates served after their first: where new isolates
  /// would be in the way ([`Placement`]).
  served: AtomicU64,
}

struct Instance {
  thread: usize,
  /// On the quarantine thread.
  quarantined: bool,
  handle: WorkerHandle,
  inflight: Arc<AtomicUsize>,
  memory: u64,
}

struct Entry {
  instances: Vec<Instance>,
  last_used: Instant,
  /// Per V8 thread, its requests served by an instance on another thread
  /// since `window` began (or [`REPLICA_LOADING`]).
  remote: Vec<u32>,
  window: Instant,
}

impl Entry {
  /// Counts a request from V8 thread `thread` that an instance on another
  /// thread serves; true when `thread` should now load a replica (then
  /// marked loading until one is in).
  fn count_remote(&mut self, thread: usize, now: Instant) -> bool {
    if now.saturating_duration_since(self.window) >= REPLICA_WINDOW {
      self.window = now;
      for n in &mut self.remote {
        if *n != REPLICA_LOADING {
          *n = 0;
        }
      }
    }
    if self.remote.len() <= thread {
      self.remote.resize(thread + 1, 0);
    }
    let n = &mut self.remote[thread];
    if *n == REPLICA_LOADING {
      return false;
    }
    *n += 1;
    if *n < REPLICA_AFTER {
      return false;
    }
    *n = REPLICA_LOADING;
    true
  }

  /// Forgets instances whose isolate has stopped; returns their memory.
  fn drop_closed(&mut self) -> u64 {
    // Looked at on every pick: the `retain` pass only when one is closed.
    if !self.instances.iter().any(|i| i.handle.is_closed()) {
      return 0;
    }
    let mut freed = 0;
    self.instances.retain(|i| {
      let open = !i.handle.is_closed();
      if !open {
        freed += i.memory;
      }
      open
    });
    freed
  }
}

#[derive(Default)]
struct Index {
  lru: Option<lru::LruCache<WorkerKey, Entry>>,
  memory: u64,
  stats: PoolStats,
}

impl Index {
  fn lru(&mut self) -> &mut lru::LruCache<WorkerKey, Entry> {
    self.lru.get_or_insert_with(lru::LruCache::unbounded)
  }

  fn count(&mut self) -> usize {
    self.lru().iter().map(|(_, e)| e.instances.len()).sum()
  }

  fn drop_entry(&mut self, entry: Entry) {
    for i in entry.instances {
      self.memory = self.memory.saturating_sub(i.memory);
      self.stats.evictions += 1;
    }
  }

  /// The entry of `key`, marked used at `now` (and most recently used).
  fn touch(&mut self, key: &WorkerKey, now: Instant) -> Option<&mut Entry> {
    let entry = self.lru().get_mut(key)?;
    entry.last_used = now;
    Some(entry)
  }

  /// Adds a freshly loaded instance of `key`, used at `now`.
  fn insert(&mut self, key: &WorkerKey, instance: Instance, now: Instant) {
    self.memory += instance.memory;
    let entry = self.lru().get_or_insert_mut(key.clone(), || Entry {
      instances: Vec::new(),
      last_used: now,
      remote: Vec::new(),
      window: now,
    });
    entry.last_used = now;
    if let Some(remote) = entry.remote.get_mut(instance.thread) {
      *remote = 0;
    }
    entry.instances.push(instance);
  }

  /// Drops least recently used workers while over the count or memory
  /// limit; never `keep`, which was just used.
  fn evict_over_limits(&mut self, keep: &WorkerKey, max_isolates: usize, max_memory: u64) {
    while self.count() > max_isolates || self.memory > max_memory {
      let Some(victim) = self.lru().peek_lru().map(|(k, _)| k.clone()) else {
        break;
      };
      if &victim == keep {
        break;
      }
      if let Some(entry) = self.lru().pop(&victim) {
        self.drop_entry(entry);
      }
    }
  }

  /// Drops workers not used for longer than `ttl` before `now`.
  fn evict_idle(&mut self, now: Instant, ttl: Duration) {
    let stale: Vec<WorkerKey> = self
      .lru()
      .iter()
      .filter(|(_, e)| now.saturating_duration_since(e.last_used) > ttl)
      .map(|(k, _)| k.clone())
      .collect();
    for key in stale {
      if let Some(entry) = self.lru().pop(&key) {
        self.drop_entry(entry);
      }
    }
  }
}

pub(crate) struct Shared {
  pub(crate) config: Config,
  /// The request threads, then the quarantine thread if there is one.
  threads: Vec<Thread>,
  /// How many of `threads` serve requests (the rest is the quarantine).
  request_threads: usize,
  index: Mutex<Index>,
  ledger: Arc<LedgerCell>,
  code_cache: Option<Arc<CodeCache>>,
  /// `config.services`, or what [`Runtime::set_services`] put in later.
  services: std::sync::RwLock<Arc<dyn Services>>,
  placement: Mutex<Placement>,
}

thread_local! {
  /// The V8 thread index of the current thread, if it is one of ours.
  static CURRENT_THREAD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The node's isolate pool: start it once, send every request through it.
#[derive(Clone)]
pub struct Runtime {
  pub(crate) shared: Arc<Shared>,
}

impl Runtime {
  /// Starts the V8 threads (each fills its stock of blank isolates), and the
  /// quarantine thread unless [`Fairness::quarantine`] is off.
  pub fn new(config: Config) -> Result<Self, Error> {
    let quarantine = config.fairness.enabled && config.fairness.quarantine;
    let mut threads = Vec::with_capacity(config.threads + 1);
    for idx in 0..config.threads + usize::from(quarantine) {
      let quarantined = idx == config.threads;
      let (tx, rx) = mpsc::unbounded_channel();
      let isolates = Arc::new(AtomicUsize::new(0));
      // The quarantine makes isolates on demand: an abuser pays for its
      // own, at its own priority.
      let stock = if quarantined { 0 } else { config.stock };
      let logs = config.logs.clone();
      let egress = config.egress.clone();
      let counter = isolates.clone();
      let ready = Arc::new(AtomicUsize::new(0));
      let ready_counter = ready.clone();
      let name = if quarantined {
        "isola-v8-quarantine".to_string()
      } else {
        format!("isola-v8-{idx}")
      };
      std::thread::Builder::new()
        .name(name)
        .spawn(move || {
          if quarantined {
            crate::watchdog::lower_thread_priority();
          }
          isola_ext::egress::set_thread_policy(egress);
          thread_main(idx, rx, stock, logs, counter, ready_counter)
        })
        .map_err(|e| ErrorKind::Start {
          what: "cannot start a V8 thread",
          source: e.into(),
        })?;
      threads.push(Thread {
        tx,
        isolates,
        stock: ready,
        served: AtomicU64::new(0),
      });
    }
    let shared = Arc::new(Shared {
      request_threads: config.threads,
      services: std::sync::RwLock::new(config.services.0.clone()),
      ledger: Arc::new(LedgerCell::new(config.fairness.clone())),
      code_cache: CodeCache::new(&config.code_cache),
      config,
      threads,
      index: Mutex::new(Index::default()),
      placement: Mutex::default(),
    });
    let weak = Arc::downgrade(&shared);
    std::thread::Builder::new()
      .name("isola-pool-ttl".into())
      .spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let Some(shared) = weak.upgrade() else {
          return;
        };
        shared.evict_idle();
      })
      .map_err(|e| ErrorKind::Start {
        what: "cannot start the pool sweeper",
        source: e.into(),
      })?;
    Ok(Self { shared })
  }

  /// Runs `task` on every V8 thread (e.g. an accept loop per thread with
  /// `SO_REUSEPORT`), so requests start next to their isolates.
  pub fn spawn_on_each_thread<F, Fut>(&self, task: F)
  where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
  {
    let request_threads = &self.shared.threads[..self.shared.request_threads];
    for (idx, thread) in request_threads.iter().enumerate() {
      let task = task.clone();
      let _ = thread
        .tx
        .send(Command::Spawn(Box::new(move || Box::pin(task(idx)))));
    }
  }

  /// Sends `request` to worker `key`, loading it (from `source`) into an
  /// isolate first if none is loaded or all are busy. A worker throttled
  /// for tenant fairness is not run: after [`Fairness::hold`] the error says
  /// so ([`Error::throttled`]).
  pub fn fetch<'a, S>(
    &'a self,
    key: &'a WorkerKey,
    source: S,
    request: http::Request<RequestBody>,
  ) -> impl Future<Output = Result<http::Response<ResponseBody>, Error>> + 'a
  where
    S: FnOnce() -> Result<(Bundle, WorkerConfig), Error> + 'a,
  {
    self.fetch_from(key, source, FetchRequest::new(request, None))
  }

  /// [`Runtime::fetch`] for a request already boxed where it entered the
  /// node, with its client's address (which the trace event shows; not in
  /// the request's extensions, whose map cost two allocations a request).
  pub async fn fetch_from(
    &self,
    key: &WorkerKey,
    source: impl FnOnce() -> Result<(Bundle, WorkerConfig), Error>,
    request: FetchRequest,
  ) -> Result<http::Response<ResponseBody>, Error> {
    // `invoke_raw` straight: each nested future keeps its own copy of the
    // arguments.
    match self.invoke_raw(key, source, request.into(), 1).await?.0? {
      Answer::Response(response) => Ok(response),
      _ => {
        Err(ErrorKind::Stopped("the worker answered a request without a response".into()).into())
      }
    }
  }

  /// Runs the scheduled handler of worker `key` for one cron tick, as
  /// [`Runtime::fetch`] runs a request (same loading, fairness and
  /// metering), and waits until the run is over: its handler and every
  /// `waitUntil` promise settled. `Err` only when the run could not start
  /// (the worker does not load, is throttled, or has no scheduled handler).
  pub async fn scheduled(
    &self,
    key: &WorkerKey,
    source: impl FnOnce() -> Result<(Bundle, WorkerConfig), Error>,
    event: ScheduledEvent,
  ) -> Result<ScheduledRun, Error> {
    let start = Instant::now();
    let call = Call::Scheduled {
      cron: event.cron,
      scheduled_time: event.scheduled_time,
      cpu_limit: event.cpu_limit,
    };
    let (error, invocation) = match self.invoke_raw(key, source, call, 1).await? {
      (Ok(_), invocation) => (None, invocation),
      (Err(e), _) if e.is_code_error() => return Err(e),
      (Err(e), invocation) => (Some(e), invocation),
    };
    let usage = invocation.usage().await;
    self.shared.prune(key);
    let outcome = match (&usage, &error) {
      (Some(usage), _) if usage.outcome.is_some() => usage.outcome.unwrap_or(Outcome::Stopped),
      (_, None) => Outcome::Ok,
      (_, Some(e)) => e.limit().unwrap_or(if e.is_exception() {
        Outcome::Exception
      } else {
        Outcome::Stopped
      }),
    };
    Ok(ScheduledRun {
      outcome,
      no_retry: usage.as_ref().is_some_and(|u| u.no_retry),
      cpu: Duration::from_nanos(usage.as_ref().map_or(0, |u| u.cpu_ns)),
      wall: start.elapsed(),
      error: error.map(|e| e.detail()),
    })
  }

  /// An invocation of any kind, through admission and the pool; the
  /// answer, and the invocation for what follows it.
  pub(crate) async fn invoke(
    &self,
    key: &WorkerKey,
    source: impl FnOnce() -> Result<(Bundle, WorkerConfig), Error>,
    call: Call,
    depth: u32,
  ) -> Result<(Answer, Invocation), Error> {
    let (answer, invocation) = self.invoke_raw(key, source, call, depth).await?;
    Ok((answer?, invocation))
  }

  /// Like [`Runtime::invoke`]; `Err` only if it did not start.
  pub(crate) async fn invoke_raw(
    &self,
    key: &WorkerKey,
    source: impl FnOnce() -> Result<(Bundle, WorkerConfig), Error>,
    call: Call,
    depth: u32,
  ) -> Result<(Result<Answer, Error>, Invocation), Error> {
    let admitted = self.shared.ledger.admit(&key.name, Instant::now);
    let quarantine = match admitted {
      Admission::Run { quarantine } => {
        quarantine && self.shared.threads.len() > self.shared.request_threads
      }
      Admission::Throttled { limit, retry_after } => {
        // Boxed, as the start below: rare paths' futures kept inline would
        // make every request's future larger, and it is moved several times.
        Box::pin(tokio::time::sleep(self.shared.config.fairness.hold)).await;
        return Err(ErrorKind::Throttled { limit, retry_after }.into());
      }
    };
    // Booked as done however this ends, a dropped request included.
    let _admitted = Finish {
      ledger: &self.shared.ledger,
      worker: &key.name,
    };
    let (mut invocation, inflight) = match self.shared.pick(key, quarantine) {
      Some(picked) => {
        self.shared.threads[picked.thread]
          .served
          .fetch_add(1, Ordering::Relaxed);
        if let Some(thread) = picked.replica {
          self.shared.load_replica(key, source, thread);
        }
        (picked.handle.call(call, depth), picked.inflight)
      }
      None => {
        let (bundle, config) = source()?;
        let (invocation, first) = Invocation::queued(call, depth);
        let inflight = Box::pin(self.shared.start(
          key,
          bundle,
          config,
          Start {
            quarantine,
            first: Some(first),
            on: None,
          },
        ))
        .await?;
        (invocation, inflight)
      }
    };
    let result = invocation.answer().await;
    drop(inflight);
    if let Err(e) = &result {
      if e.is_stopped() || e.limit().is_some() {
        self.shared.prune(key);
      }
    }
    Ok((result, invocation))
  }

  pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
    Self { shared }
  }

  /// Loads worker `key` into an isolate now (e.g. on deploy, or to check that
  /// it starts), unless one is loaded already.
  pub async fn preload(
    &self,
    key: &WorkerKey,
    bundle: Bundle,
    config: WorkerConfig,
  ) -> Result<(), Error> {
    if let Some(picked) = self.shared.pick(key, false) {
      if let Some(thread) = picked.replica {
        self
          .shared
          .load_replica(key, || Ok((bundle, config)), thread);
      }
      return Ok(());
    }
    let start = Start {
      quarantine: false,
      first: None,
      on: None,
    };
    self.shared.start(key, bundle, config, start).await?;
    Ok(())
  }

  /// Replaces the [`Config::services`], for a node whose routing state
  /// (what bindings resolve against) is built after its runtime.
  pub fn set_services(&self, services: Arc<dyn Services>) {
    *self
      .shared
      .services
      .write()
      .unwrap_or_else(|e| e.into_inner()) = services;
  }

  /// Drops every isolate of worker `key` (e.g. its version was replaced).
  pub fn evict(&self, key: &WorkerKey) {
    let mut index = self.shared.lock();
    if let Some(entry) = index.lru().pop(key) {
      index.drop_entry(entry);
    }
  }

  pub fn stats(&self) -> PoolStats {
    let throttled_workers = self.shared.ledger.throttled();
    let mut index = self.shared.lock();
    let isolates = index.count();
    let threads = &self.shared.threads;
    PoolStats {
      throttled_workers,
      quarantined: threads[self.shared.request_threads..]
        .iter()
        .map(|t| t.isolates.load(Ordering::Relaxed))
        .sum(),
      isolates,
      memory: index.memory,
      running: threads
        .iter()
        .map(|t| t.isolates.load(Ordering::Relaxed))
        .sum(),
      stock: threads
        .iter()
        .map(|t| t.stock.load(Ordering::Relaxed))
        .sum(),
      code_cache: self
        .shared
        .code_cache
        .as_ref()
        .map(|c| c.stats())
        .unwrap_or_default(),
      ..index.stats
    }
  }

  pub fn config(&self) -> &Config {
    &self.shared.config
  }

  /// Number of V8 threads that serve requests (the quarantine thread not
  /// counted).
  pub fn threads(&self) -> usize {
    self.shared.request_threads
  }
}

/// An instance [`Shared::pick`] found, with the request counted in.
struct Picked {
  handle: WorkerHandle,
  inflight: InFlight,
  thread: usize,
  /// The request thread that should load an instance of its own.
  replica: Option<usize>,
}

/// Where [`Shared::start`] loads a new instance: on the quarantine thread
/// if `quarantine` (and there is one), else on request thread `on` if
/// given, else on the request thread where it is least in the way of warm
/// requests ([`Placement`]).
struct Start {
  quarantine: bool,
  /// The call that made the load, which the instance gets first.
  first: Option<Queued>,
  on: Option<usize>,
}

/// One request counted into an instance's in-flight count, and counted out
/// when dropped: when its answer came, or when its caller went away first
/// (a client that disconnected). Counted out only on an answer, each
/// dropped request kept a place taken for good, and every
/// `max_concurrency` of them made the pool start another isolate.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
  fn count_in(count: &Arc<AtomicUsize>) -> Self {
    count.fetch_add(1, Ordering::Relaxed);
    Self(count.clone())
  }
}

impl Drop for InFlight {
  fn drop(&mut self) {
    self.0.fetch_sub(1, Ordering::Relaxed);
  }
}

/// Tells the ledger an admitted invocation is over when dropped.
struct Finish<'a> {
  ledger: &'a LedgerCell,
  worker: &'a str,
}

impl Drop for Finish<'_> {
  fn drop(&mut self) {
    self.ledger.finish(self.worker, Instant::now);
  }
}

impl Shared {
  fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
    self.index.lock().unwrap_or_else(|e| e.into_inner())
  }

  /// Which worker each service binding reaches.
  pub(crate) fn services(&self) -> Arc<dyn Services> {
    self
      .services
      .read()
      .unwrap_or_else(|e| e.into_inner())
      .clone()
  }

  /// An instance of `key` with room for one more request, on the
  /// quarantine thread if `quarantine` and on a request thread (preferring
  /// the current one) if not; counts the request in. When requests keep
  /// coming to the current thread for instances elsewhere, it also asks for
  /// a replica here (see [`REPLICA_AFTER`]).
  fn pick(&self, key: &WorkerKey, quarantine: bool) -> Option<Picked> {
    let here = CURRENT_THREAD.with(Cell::get);
    let max = self.config.max_concurrency;
    let now = Instant::now();
    let mut index = self.lock();
    let memory = index.memory;
    let entry = index.touch(key, now)?;
    let freed = entry.drop_closed();
    let best = entry
      .instances
      .iter()
      .filter(|i| i.quarantined == quarantine && i.inflight.load(Ordering::Relaxed) < max)
      .min_by_key(|i| (Some(i.thread) != here, i.inflight.load(Ordering::Relaxed)));
    let picked = best.map(|best| Picked {
      handle: best.handle.clone(),
      inflight: InFlight::count_in(&best.inflight),
      thread: best.thread,
      replica: None,
    });
    let picked = match (picked, here) {
      (Some(mut picked), Some(here))
        if !quarantine && here < self.request_threads && picked.thread != here =>
      {
        let size = entry.instances.first().map_or(0, |i| i.memory);
        let room = self.running() < self.config.max_isolates
          && memory.saturating_sub(freed) + size <= self.config.max_memory;
        if room && entry.count_remote(here, now) {
          picked.replica = Some(here);
        }
        Some(picked)
      }
      (picked, _) => picked,
    };
    index.memory = index.memory.saturating_sub(freed);
    picked
  }

  /// Worker isolates alive on the V8 threads.
  fn running(&self) -> usize {
    self
      .threads
      .iter()
      .map(|t| t.isolates.load(Ordering::Relaxed))
      .sum()
  }

  /// Loads an instance of `key` on V8 thread `thread` in the background;
  /// requests go on to the instances there are meanwhile.
  fn load_replica(
    self: &Arc<Self>,
    key: &WorkerKey,
    source: impl FnOnce() -> Result<(Bundle, WorkerConfig), Error>,
    thread: usize,
  ) {
    let forget = move |shared: &Self, key: &WorkerKey, e: Error| {
      tracing::debug!(worker = %key.name, thread, "no replica: {e}");
      if let Some(entry) = shared.lock().lru().peek_mut(key) {
        if let Some(remote) = entry.remote.get_mut(thread) {
          *remote = 0;
        }
      }
    };
    let (bundle, config) = match source() {
      Ok(loaded) => loaded,
      Err(e) => return forget(self, key, e),
    };
    let (shared, key) = (self.clone(), key.clone());
    let start = Start {
      quarantine: false,
      first: None,
      on: Some(thread),
    };
    tokio::spawn(async move {
      if let Err(e) = shared.start(&key, bundle, config, start).await {
        forget(&shared, &key, e);
      }
    });
  }

  /// Loads a new instance of `key` (see [`Start`] for where). Returns one
  /// place counted into the new instance: `first`'s, if any.
  async fn start(
    self: &Arc<Self>,
    key: &WorkerKey,
    bundle: Bundle,
    config: WorkerConfig,
    start: Start,
  ) -> Result<InFlight, Error> {
    let Start {
      quarantine,
      first,
      on,
    } = start;
    let here = CURRENT_THREAD.with(Cell::get);
    let quarantined = quarantine && self.threads.len() > self.request_threads;
    let thread = if quarantined {
      self.request_threads
    } else if let Some(on) = on.filter(|&t| t < self.request_threads) {
      on
    } else {
      let threads = &self.threads[..self.request_threads];
      let served: Vec<u64> = threads
        .iter()
        .map(|t| t.served.load(Ordering::Relaxed))
        .collect();
      let isolates: Vec<usize> = threads
        .iter()
        .map(|t| t.isolates.load(Ordering::Relaxed))
        .collect();
      self
        .placement
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .choose(Instant::now(), &served, &isolates, here)
    };
    // Every record of this worker also books its cost with the ledger.
    let (ledger, name, meter) = (
      self.ledger.clone(),
      key.name.clone(),
      self.config.meter.clone(),
    );
    let link = PoolLink(Some(Arc::downgrade(self)));
    let config = config
      .storage(self.config.storage.clone())
      .code_cache(self.code_cache.clone())
      .trace(self.config.trace.clone());
    // Without fairness and a meter, nothing reads the records.
    let metered = self.config.fairness.enabled || !meter.is_discard();
    let config = config.pool(link).meter(if metered {
      MeterSink::new(move |record| {
        if crate::fairness::charges(record.outcome) {
          ledger.charge(
            &name,
            record.outcome,
            Duration::from_micros(record.cpu_us),
            Instant::now(),
          );
        }
        meter.emit(record);
      })
    } else {
      MeterSink::discard()
    });
    let (tx, rx) = oneshot::channel();
    self.threads[thread]
      .tx
      .send(Command::Load {
        bundle,
        config: Box::new(config),
        first: first.map(Box::new),
        reply: tx,
      })
      .map_err(|_| ErrorKind::Stopped("the V8 thread is gone".into()))?;
    let (handle, memory, from_stock) = rx
      .await
      .map_err(|_| ErrorKind::Stopped("the V8 thread is gone".into()))??;
    let inflight = Arc::new(AtomicUsize::new(0));
    let counted = InFlight::count_in(&inflight);
    let mut index = self.lock();
    index.stats.cold_starts += 1;
    index.stats.stock_hits += u64::from(from_stock);
    let instance = Instance {
      thread,
      quarantined,
      handle,
      inflight,
      memory,
    };
    index.insert(key, instance, Instant::now());
    index.evict_over_limits(key, self.config.max_isolates, self.config.max_memory);
    Ok(counted)
  }

  fn evict_idle(&self) {
    self.lock().evict_idle(Instant::now(), self.config.idle_ttl);
  }

  /// Forgets instances of `key` whose isolate stopped.
  pub(crate) fn prune(&self, key: &WorkerKey) {
    let mut index = self.lock();
    let freed = index.lru().get_mut(key).map_or(0, Entry::drop_closed);
    index.memory = index.memory.saturating_sub(freed);
  }
}

// Kept out of line: `bench/instructions.py` counts the V8 thread by its name.
#[inline(never)]
fn thread_main(
  idx: usize,
  mut rx: mpsc::UnboundedReceiver<Command>,
  stock_target: usize,
  logs: LogSink,
  isolates: Arc<AtomicUsize>,
  ready: Arc<AtomicUsize>,
) {
  CURRENT_THREAD.with(|c| c.set(Some(idx)));
  let rt = match tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
  {
    Ok(rt) => rt,
    Err(e) => {
      tracing::error!("V8 thread {idx} cannot start its async runtime: {e}");
      return;
    }
  };
  rt.block_on(async move {
    let mut stock: VecDeque<Isolate> = VecDeque::new();
    loop {
      // Refill the stock while nothing else is waiting.
      let cmd = if stock.len() < stock_target {
        // Refill only in a quiet moment: making an isolate blocks this thread
        // for a few milliseconds, and the worker just loaded is about to get
        // its first request.
        match tokio::time::timeout(REFILL_QUIET, rx.recv()).await {
          Ok(Some(cmd)) => cmd,
          Ok(None) => return,
          Err(_) => {
            match Isolate::new(logs.clone()).and_then(|mut isolate| {
              isolate.prewarm()?;
              Ok(isolate)
            }) {
              Ok(isolate) => {
                stock.push_back(isolate);
                ready.store(stock.len(), Ordering::Relaxed);
                crate::worker::note_busy(Instant::now());
              }
              Err(e) => tracing::error!("cannot make a blank isolate: {e}"),
            }
            continue;
          }
        }
      } else {
        match rx.recv().await {
          Some(cmd) => cmd,
          None => return,
        }
      };
      match cmd {
        Command::Spawn(factory) => {
          deno_core::unsync::spawn(factory());
        }
        Command::Load {
          bundle,
          config,
          first,
          reply,
        } => {
          crate::worker::note_busy(Instant::now());
          let taken = stock.pop_front();
          ready.store(stock.len(), Ordering::Relaxed);
          let (isolate, from_stock) = match taken {
            Some(isolate) if config.limits_ref().memory_bytes() <= isolate.memory_limit() => {
              (Ok(isolate), true)
            }
            other => {
              if let Some(isolate) = other {
                stock.push_front(isolate);
                ready.store(stock.len(), Ordering::Relaxed);
              }
              let limit = config.limits_ref().memory_bytes();
              (Isolate::with_memory_limit(logs.clone(), limit), false)
            }
          };
          let loaded = match isolate {
            Ok(isolate) => isolate.load(bundle, &config).await,
            Err(e) => Err(e),
          };
          let result = loaded.map(|mut worker| {
            if first.is_none() {
              worker.preloaded();
            }
            let memory = worker.memory_usage();
            let counter = isolates.clone();
            counter.fetch_add(1, Ordering::Relaxed);
            let handle = worker.spawn_with_exit(move || {
              counter.fetch_sub(1, Ordering::Relaxed);
            });
            if let Some(first) = first {
              handle.submit(*first);
            }
            (handle, memory, from_stock)
          });
          let _ = reply.send(result);
        }
      }
    }
  });
}

#[cfg(test)]
mod tests {
  //! The index alone, with injected time: no V8 threads, no sleeps.

  use super::*;

  struct Fixture {
    index: Index,
    t0: Instant,
    _open: Vec<Box<dyn std::any::Any>>,
  }

  impl Fixture {
    fn new() -> Self {
      Self {
        index: Index::default(),
        t0: Instant::now(),
        _open: Vec::new(),
      }
    }

    fn at(&self, secs: u64) -> Instant {
      self.t0 + Duration::from_secs(secs)
    }

    fn load(&mut self, name: &str, memory: u64, secs: u64) {
      let (handle, open) = WorkerHandle::detached();
      self._open.push(open);
      let instance = Instance {
        thread: 0,
        quarantined: false,
        handle,
        inflight: Arc::new(AtomicUsize::new(0)),
        memory,
      };
      let now = self.at(secs);
      self.index.insert(&key(name), instance, now);
    }

    fn keys(&mut self) -> Vec<String> {
      let mut keys: Vec<String> = self
        .index
        .lru()
        .iter()
        .map(|(k, _)| k.name.to_string())
        .collect();
      keys.sort();
      keys
    }
  }

  #[test]
  fn keys_are_equal_by_their_strings_and_hash_alike() {
    use std::hash::BuildHasher;
    let a = WorkerKey::new("api", "v1");
    // Equal strings in other allocations: the same key.
    let b = WorkerKey::new(String::from("api"), String::from("v1"));
    assert!(!Arc::ptr_eq(a.name(), b.name()));
    assert_eq!(a, b);
    let state = std::hash::RandomState::new();
    assert_eq!(state.hash_one(&a), state.hash_one(&b));
    assert_eq!(a, a.clone());
    assert_ne!(a, WorkerKey::new("api", "v2"));
    assert_ne!(a, WorkerKey::new("apj", "v1"));
    let secret = a.clone().with_secrets("d1");
    assert_ne!(a, secret, "secrets start fresh isolates");
    assert_eq!(secret, b.with_secrets(String::from("d1")));
    assert_ne!(secret, a.with_secrets("d2"));
  }

  #[test]
  fn a_thread_asks_for_a_replica_once_its_requests_keep_crossing() {
    let mut f = Fixture::new();
    f.load("a", 1, 0);
    let at = f.at(0);
    let entry = f.index.touch(&key("a"), at).unwrap();
    // Thread 1's requests go to thread 0's instance.
    let asks = (0..REPLICA_AFTER)
      .filter(|_| entry.count_remote(1, at))
      .count();
    assert_eq!(asks, 1, "the {REPLICA_AFTER}th asks");
    // While it loads, no second ask, even in a later window.
    let later = at + REPLICA_WINDOW;
    assert!(!(0..2 * REPLICA_AFTER).any(|_| entry.count_remote(1, later)));
    // Fewer than that per window never ask.
    let (b, c) = (at + 3 * REPLICA_WINDOW, at + 4 * REPLICA_WINDOW);
    assert!(!(0..REPLICA_AFTER - 1).any(|_| entry.count_remote(2, b)));
    assert!(!(0..REPLICA_AFTER - 1).any(|_| entry.count_remote(2, c)));
    // The replica is in: thread 1 counts afresh.
    let (handle, open) = WorkerHandle::detached();
    f._open.push(open);
    let replica = Instance {
      thread: 1,
      quarantined: false,
      handle,
      inflight: Arc::new(AtomicUsize::new(0)),
      memory: 1,
    };
    f.index.insert(&key("a"), replica, c);
    let entry = f.index.touch(&key("a"), c).unwrap();
    assert_eq!(entry.remote[1], 0);
    assert_eq!(entry.instances.len(), 2);
  }

  fn key(name: &str) -> WorkerKey {
    WorkerKey::new(name, "v1")
  }

  #[test]
  fn the_least_recently_used_worker_goes_first() {
    let mut f = Fixture::new();
    f.load("a", 1, 0);
    f.load("b", 1, 1);
    f.load("c", 1, 2);
    // Using `a` again makes `b` the least recently used.
    let at = f.at(3);
    assert!(f.index.touch(&key("a"), at).is_some());
    f.index.evict_over_limits(&key("c"), 2, u64::MAX);
    assert_eq!(f.keys(), ["a", "c"]);
    assert_eq!(f.index.stats.evictions, 1);
  }

  #[test]
  fn the_worker_just_used_is_never_evicted() {
    let mut f = Fixture::new();
    f.load("a", 1, 0);
    f.index.evict_over_limits(&key("a"), 0, 0);
    assert_eq!(f.keys(), ["a"]);
  }

  #[test]
  fn idle_workers_expire_after_the_ttl() {
    let mut f = Fixture::new();
    f.load("a", 1, 0);
    f.load("b", 1, 5);
    let ttl = Duration::from_secs(10);
    let at = f.at(10);
    f.index.evict_idle(at, ttl);
    assert_eq!(f.keys(), ["a", "b"], "exactly the TTL is not past it");
    let at = f.at(11);
    f.index.evict_idle(at, ttl);
    assert_eq!(f.keys(), ["b"]);
    // Use renews the lease.
    let at = f.at(14);
    f.index.touch(&key("b"), at);
    let at = f.at(20);
    f.index.evict_idle(at, ttl);
    assert_eq!(f.keys(), ["b"]);
    let at = f.at(25);
    f.index.evict_idle(at, ttl);
    assert!(f.keys().is_empty());
    assert_eq!(f.index.memory, 0);
  }

  #[test]
  fn memory_over_the_limit_evicts_the_oldest() {
    let mut f = Fixture::new();
    f.load("a", 60, 0);
    f.load("b", 30, 1);
    f.load("c", 30, 2);
    assert_eq!(f.index.memory, 120);
    f.index.evict_over_limits(&key("c"), usize::MAX, 100);
    assert_eq!(f.keys(), ["b", "c"]);
    assert_eq!(f.index.memory, 60);
  }
}
