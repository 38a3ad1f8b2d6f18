//! `isola-edge dev`: one worker from disk on one port, with the workers
//! its service bindings call, its scheduled handler on demand or on its
//! cron schedules, KV namespaces in memory and local queues.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use anyhow::Context as _;
use isola_proto::cron::Schedule;
use isola_proto::queue::Batch;
use isola_proto::queue::Disposition;
use isola_proto::queue::Message;
use isola_proto::queue::SendCall;
use isola_proto::queue::SendReply;
use isola_runtime::Bundle;
use isola_runtime::Config;
use isola_runtime::EgressPolicy;
use isola_runtime::Fairness;
use isola_runtime::Limits;
use isola_runtime::MemoryKv;
use isola_runtime::Outcome;
use isola_runtime::QueueService;
use isola_runtime::ResponseBody;
use isola_runtime::Runtime;
use isola_runtime::ScheduledEvent;
use isola_runtime::ServiceTarget;
use isola_runtime::Services;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;

#[derive(clap::Args)]
pub struct DevArgs {
  /// The worker's main module (an ES module with `export default { fetch }`).
  entry: PathBuf,
  /// Address to listen on (port 0: a free port, reported in the
  /// `listening` log event).
  #[arg(long, default_value = "127.0.0.1:8787")]
  listen: SocketAddr,
  /// A text var for `env`, as NAME=VALUE. May repeat.
  #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
  vars: Vec<(String, String)>,
  /// A JSON var for `env`, as NAME=JSON (e.g. --json-var 'LIMITS={"max":3}'). May repeat.
  #[arg(long = "json-var", value_name = "NAME=JSON", value_parser = parse_json_var)]
  json_vars: Vec<(String, serde_json::Value)>,
  /// Another worker, as BINDING=PATH: the worker at PATH runs as service
  /// BINDING, and `env.BINDING` of the main worker calls it. May repeat.
  #[arg(long = "service", value_name = "BINDING=PATH", value_parser = parse_service)]
  services: Vec<(String, PathBuf)>,
  /// Serve `GET /__scheduled?cron=<expr>`, which runs the scheduled
  /// handler once (as wrangler's `--test-scheduled`).
  #[arg(long)]
  test_scheduled: bool,
  /// A cron schedule (five fields, UTC, Cloudflare's syntax) on which the
  /// scheduled handler runs while dev runs. May repeat.
  #[arg(long = "cron", value_name = "EXPR", value_parser = parse_cron)]
  crons: Vec<Schedule>,
  /// Boxed: the command enum stays small.
  #[command(flatten)]
  storage: Box<StorageArgs>,
  /// Worker name shown in logs (default: the entry file's stem).
  #[arg(long)]
  name: Option<String>,
  /// CPU time per request, in milliseconds.
  #[arg(long, default_value_t = 50)]
  cpu_ms: u64,
  /// Memory of the worker's isolate, in MiB.
  #[arg(long, default_value_t = 128)]
  memory_mb: u64,
  /// Wall-clock time per request (response and waitUntil work), in milliseconds.
  #[arg(long, default_value_t = 30_000)]
  wall_ms: u64,
}

/// `dev`'s local stand-ins for KV and queues, and its egress policy.
#[derive(clap::Args)]
struct StorageArgs {
  /// A KV namespace for `env.BINDING`, in memory (in `--persist-to` if
  /// given). May repeat.
  #[arg(long = "kv", value_name = "BINDING")]
  kv: Vec<String>,
  /// Keep the `--kv` namespaces in a file in DIR, across restarts.
  #[arg(long = "persist-to", value_name = "DIR")]
  persist_to: Option<PathBuf>,
  /// A local queue QUEUE for `env.BINDING.send()`; if the worker has a
  /// `queue` handler, it consumes the queue (batches of up to 10, at most
  /// 1 s after a message is ready; a message is retried up to 3 times).
  /// May repeat.
  #[arg(long = "queue", value_name = "BINDING=QUEUE", value_parser = parse_var)]
  queues: Vec<(String, String)>,
  /// Apply `isola-edge serve`'s egress policy: `fetch()` cannot reach
  /// loopback, private or link-local addresses. Off by default in dev, so a
  /// worker can call services on this machine.
  #[arg(long)]
  egress_policy: bool,
  /// With `--egress-policy`: an exception (`10.1.2.0/24`, `127.0.0.1:5432`,
  /// `db.internal:5432`). May repeat.
  #[arg(
    long = "egress-allow",
    value_name = "ENTRY",
    requires = "egress_policy"
  )]
  egress_allow: Vec<String>,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
  let (name, value) = s
    .split_once('=')
    .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
  if name.is_empty() {
    return Err(format!("the var name is empty in {s:?}"));
  }
  Ok((name.to_string(), value.to_string()))
}

fn parse_json_var(s: &str) -> Result<(String, serde_json::Value), String> {
  let (name, value) = parse_var(s)?;
  let json =
    serde_json::from_str(&value).map_err(|e| format!("the value of {name} is not JSON: {e}"))?;
  Ok((name, json))
}

fn parse_service(s: &str) -> Result<(String, PathBuf), String> {
  let (binding, path) = parse_var(s)?;
  if path.is_empty() {
    return Err(format!("the path is empty in {s:?}"));
  }
  Ok((binding, PathBuf::from(path)))
}

fn parse_cron(s: &str) -> Result<Schedule, String> {
  Schedule::parse(s).map_err(|e| e.to_string())
}

/// A dev worker: its key and what loads it.
#[derive(Clone)]
struct DevWorker {
  key: WorkerKey,
  bundle: Bundle,
  config: WorkerConfig,
}

impl DevWorker {
  /// What loads the worker; it copies the bundle and config only when the
  /// pool has no isolate for it, not on every request.
  fn source(&self) -> impl FnOnce() -> Result<(Bundle, WorkerConfig), isola_runtime::Error> + '_ {
    move || Ok((self.bundle.clone(), self.config.clone()))
  }
}

/// `--service` workers by binding name: every binding names its own service.
struct DevServices(HashMap<String, DevWorker>);

impl Services for DevServices {
  fn resolve(&self, _caller: &str, service: &str) -> Option<ServiceTarget> {
    let worker = self.0.get(service)?.clone();
    Some(ServiceTarget {
      key: worker.key.clone(),
      source: Box::new(move || Ok((worker.bundle, worker.config))),
    })
  }
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
  let name = args.name.clone().unwrap_or_else(|| {
    args
      .entry
      .file_stem()
      .and_then(|s| s.to_str())
      .unwrap_or("worker")
      .to_string()
  });
  let limits = Limits::default()
    .cpu(Duration::from_millis(args.cpu_ms))
    .memory_mib(args.memory_mb)
    .wall(Duration::from_millis(args.wall_ms));
  let mut config = WorkerConfig::new(name.clone()).limits(limits.clone());
  for (k, v) in args.vars {
    config = config.var(k, v);
  }
  for (k, v) in args.json_vars {
    config = config.json_var(k, v);
  }
  for binding in &args.storage.kv {
    config = config.kv_namespace(binding.clone(), binding.clone());
  }
  for (binding, queue) in &args.storage.queues {
    config = config.queue_producer(binding.clone(), queue.clone());
  }
  let kv = match &args.storage.persist_to {
    Some(dir) => {
      std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
      MemoryKv::open(dir.join("kv.json"))?
    }
    None => MemoryKv::new(),
  };
  let queues = Arc::new(DevQueues::default());
  // Fail before listening if an entry cannot even be opened.
  let bundle = Bundle::from_entry_file(&args.entry)?;
  let mut services = HashMap::new();
  for (binding, path) in &args.services {
    let bundle = Bundle::from_entry_file(path)
      .with_context(|| format!("service {binding} ({})", path.display()))?;
    config = config.service(binding.clone(), binding.clone(), None);
    let worker = DevWorker {
      key: WorkerKey::new(binding.as_str(), "dev"),
      bundle,
      config: WorkerConfig::new(binding.clone()).limits(limits.clone()),
    };
    services.insert(binding.clone(), worker);
  }

  let egress = if args.storage.egress_policy {
    let mut policy = EgressPolicy::default().own_sockets([args.listen]);
    for entry in &args.storage.egress_allow {
      policy = policy.allow(entry).map_err(anyhow::Error::msg)?;
    }
    policy
  } else {
    EgressPolicy::allow_all()
  };
  let runtime = Runtime::new(
    Config::default()
      .threads(1)
      .stock(1)
      .logs(crate::logs::stdio_sink())
      // One worker and no neighbours: a busy loop being fixed should fail
      // on its limit each time, not be throttled.
      .fairness(Fairness::default().enabled(false))
      .services(Arc::new(DevServices(services.clone())))
      .kv(Arc::new(kv))
      .queues(queues.clone())
      .egress(egress),
  )?;
  let main = Arc::new(DevWorker {
    key: WorkerKey::new(name, "dev"),
    bundle,
    config,
  });
  let rt = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
  // Bound before the worker loads: a client that connects while it loads
  // waits in the listen backlog for its response, instead of being refused
  // and retrying (the worker loads in a few milliseconds).
  let listener = std::net::TcpListener::bind(args.listen)
    .with_context(|| format!("cannot listen on {}", args.listen))?;
  listener.set_nonblocking(true)?;
  let addr = listener.local_addr()?;
  rt.block_on(runtime.preload(&main.key, main.bundle.clone(), main.config.clone()))
    .with_context(|| format!("cannot load {}", args.entry.display()))?;
  for (binding, path) in &args.services {
    let w = &services[binding];
    rt.block_on(runtime.preload(&w.key, w.bundle.clone(), w.config.clone()))
      .with_context(|| format!("cannot load service {binding} ({})", path.display()))?;
  }

  // The banner is for the person at the terminal; the event is for
  // tools, which find the port there when `--listen` asked for port 0.
  println!(
    "isola-edge dev: serving {} at http://{addr}",
    args.entry.display()
  );
  tracing::info!(listener = "http", addr = %addr, entry = %args.entry.display(), "listening");

  if !args.crons.is_empty() {
    let (pool, main, crons) = (runtime.clone(), main.clone(), args.crons.clone());
    runtime.spawn_on_each_thread(move |idx| {
      let (pool, main, crons) = (pool.clone(), main.clone(), crons.clone());
      async move {
        if idx == 0 {
          run_crons(pool, main, crons).await;
        }
      }
    });
  }

  if !args.storage.queues.is_empty() {
    let (pool, main) = (runtime.clone(), main.clone());
    runtime.spawn_on_each_thread(move |idx| {
      let (pool, main, queues) = (pool.clone(), main.clone(), queues.clone());
      async move {
        if idx == 0 {
          consume(pool, main, queues).await;
        }
      }
    });
  }

  // dev runs until the process is stopped: the sender is never used.
  let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
  let (done_tx, done_rx) = std::sync::mpsc::channel();
  // The pool and the worker behind one reference count, which each
  // request's future takes once.
  let served = Arc::new((runtime.clone(), main));
  let test_scheduled = args.test_scheduled;
  let handler = move |req: isola_runtime::FetchRequest| {
    let served = served.clone();
    async move {
      let (pool, main) = &*served;
      if test_scheduled && req.request().uri().path() == "/__scheduled" {
        let cron = req
          .request()
          .uri()
          .query()
          .and_then(|q| query_param(q, "cron"))
          .unwrap_or_default();
        // Boxed: kept inline, this rare path's future would make every
        // request's larger, and hyper moves it several times.
        return Box::pin(test_scheduled_run(pool, main, cron)).await;
      }
      match pool.fetch_from(&main.key, main.source(), req).await {
        Ok(response) => response,
        Err(e) => isola_runtime::error_response(&e),
      }
    }
  };
  let options = crate::server::HttpOptions::default();
  crate::server::serve_on_each_thread(
    &runtime,
    listener,
    None,
    options,
    shutdown_rx,
    handler,
    done_tx,
  );
  // The server runs on the V8 thread until the process is stopped.
  let _ = done_rx.recv();
  anyhow::bail!("the server stopped (see the log above)")
}

fn now_ms() -> i64 {
  SystemTime::now()
    .duration_since(SystemTime::UNIX_EPOCH)
    .map_or(0, |d| d.as_millis() as i64)
}

/// `GET /__scheduled?cron=...`: one run, now; 200 `Ran scheduled event` or
/// 500 with why not.
async fn test_scheduled_run(
  pool: &Runtime,
  main: &DevWorker,
  cron: String,
) -> http::Response<ResponseBody> {
  let event = ScheduledEvent {
    cron,
    scheduled_time: now_ms(),
    cpu_limit: None,
  };
  match pool.scheduled(&main.key, main.source(), event).await {
    Ok(run) if run.outcome == Outcome::Ok => {
      isola_runtime::text_response(http::StatusCode::OK, "Ran scheduled event")
    }
    Ok(run) => isola_runtime::text_response(
      http::StatusCode::INTERNAL_SERVER_ERROR,
      format!(
        "Scheduled event failed ({}): {}\n",
        run.outcome.as_str(),
        run.error.unwrap_or_default()
      ),
    ),
    Err(e) => isola_runtime::text_response(
      http::StatusCode::INTERNAL_SERVER_ERROR,
      format!("Scheduled event not run: {e}\n"),
    ),
  }
}

/// Runs the scheduled handler at each tick of `crons`, on real time, with
/// the tick's time as `scheduledTime` and Cloudflare's CPU limit for the
/// schedule's frequency; logs each run.
async fn run_crons(pool: Runtime, main: Arc<DevWorker>, crons: Vec<Schedule>) {
  let mut after = now_ms();
  loop {
    let due: Vec<(&Schedule, i64)> = crons
      .iter()
      .filter_map(|cron| Some((cron, cron.next_after(after)?)))
      .collect();
    let Some(next) = due.iter().map(|(_, t)| *t).min() else {
      tracing::warn!("no cron schedule has a next tick");
      return;
    };
    let wait = u64::try_from(next - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    for (cron, _) in due.into_iter().filter(|(_, t)| *t == next) {
      let event = ScheduledEvent {
        cron: cron.as_str().to_string(),
        scheduled_time: next,
        cpu_limit: Some(cron.default_cpu()),
      };
      match pool.scheduled(&main.key, main.source(), event).await {
        Ok(run) => tracing::info!(
          cron = cron.as_str(),
          outcome = run.outcome.as_str(),
          cpu_ms = run.cpu.as_millis() as u64,
          error = run.error.as_deref(),
          "scheduled run"
        ),
        Err(e) => tracing::warn!(cron = cron.as_str(), error = %e, "scheduled run not started"),
      }
    }
    after = next;
  }
}

/// Messages in a batch at most.
const BATCH_SIZE: usize = 10;
/// How long a ready message waits for others to fill its batch.
const BATCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Retries of a message before it is dropped.
const MAX_RETRIES: u32 = 3;

/// A message of a local queue and when it may be delivered.
struct Queued {
  queue: String,
  message: Message,
  ready_at: Instant,
}

/// `--queue` queues, in memory: what producers send waits here until the
/// consumer loop takes it.
#[derive(Default)]
struct DevQueues {
  waiting: Mutex<VecDeque<Queued>>,
  changed: tokio::sync::Notify,
  next_id: AtomicU64,
}

impl DevQueues {
  fn push(&self, queue: &str, message: Message, delay: Duration) {
    let queued = Queued {
      queue: queue.to_string(),
      message,
      ready_at: Instant::now() + delay,
    };
    self
      .waiting
      .lock()
      .unwrap_or_else(|e| e.into_inner())
      .push_back(queued);
    self.changed.notify_one();
  }

  /// A batch that is due at `now` (a queue with `BATCH_SIZE` messages
  /// ready, or one ready for `BATCH_TIMEOUT`), or when to look again.
  fn take_due(&self, now: Instant) -> Result<(String, Vec<Message>), Option<Instant>> {
    let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
    let ready = |q: &Queued| q.ready_at <= now;
    let due = waiting.iter().filter(|q| ready(q)).find_map(|first| {
      let count = waiting
        .iter()
        .filter(|q| ready(q) && q.queue == first.queue)
        .count();
      (count >= BATCH_SIZE || first.ready_at + BATCH_TIMEOUT <= now).then(|| first.queue.clone())
    });
    let Some(queue) = due else {
      let next = waiting
        .iter()
        .map(|q| {
          if ready(q) {
            q.ready_at + BATCH_TIMEOUT
          } else {
            q.ready_at
          }
        })
        .min();
      return Err(next);
    };
    let mut batch = Vec::new();
    let mut rest = VecDeque::with_capacity(waiting.len());
    for q in waiting.drain(..) {
      if batch.len() < BATCH_SIZE && q.queue == queue && ready(&q) {
        batch.push(q.message);
      } else {
        rest.push_back(q);
      }
    }
    *waiting = rest;
    Ok((queue, batch))
  }
}

impl QueueService for DevQueues {
  fn send(
    &self,
    call: SendCall,
  ) -> std::pin::Pin<Box<dyn std::future::Future<Output = SendReply> + Send + '_>> {
    for m in call.messages {
      let id = self.next_id.fetch_add(1, Ordering::Relaxed);
      let message = Message {
        id: format!("{id:016x}"),
        timestamp: now_ms(),
        body: m.body,
        content_type: m.content_type,
        attempts: 1,
      };
      self.push(&call.queue, message, Duration::from_secs(m.delay_seconds));
    }
    Box::pin(async { SendReply::Sent })
  }
}

/// Delivers due batches to the worker's `queue` handler until it turns out
/// to have none; retried messages go back with one more attempt, and are
/// dropped after `MAX_RETRIES` retries.
async fn consume(pool: Runtime, main: Arc<DevWorker>, queues: Arc<DevQueues>) {
  let mut batch_id = 0;
  loop {
    let (queue, messages) = match queues.take_due(Instant::now()) {
      Ok(due) => due,
      Err(next) => {
        let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
          () = queues.changed.notified() => {}
          () = tokio::time::sleep_until(wake.into()) => {}
        }
        continue;
      }
    };
    batch_id += 1;
    let batch = Batch {
      id: batch_id,
      worker: main.config.name().to_string(),
      queue: queue.clone(),
      messages: messages.clone(),
    };
    let dispositions: Vec<Disposition> = match pool.queue(&main.key, main.source(), batch).await {
      Ok(run) => {
        tracing::info!(
          queue = %queue,
          messages = messages.len(),
          outcome = run.outcome.as_str(),
          error = run.error.as_deref(),
          "queue batch"
        );
        run.messages.into_iter().map(|(_, d)| d).collect()
      }
      Err(e) if e.is_code_error() => {
        tracing::warn!(queue = %queue, error = %e, "the worker does not consume its queues");
        return;
      }
      Err(e) => {
        tracing::warn!(queue = %queue, error = %e, "queue batch not run");
        vec![Disposition::Retry(None); messages.len()]
      }
    };
    for (mut message, disposition) in messages.into_iter().zip(dispositions) {
      let Disposition::Retry(delay) = disposition else {
        continue;
      };
      if message.attempts > MAX_RETRIES {
        tracing::warn!(queue = %queue, id = %message.id, "message dropped after {MAX_RETRIES} retries");
        continue;
      }
      message.attempts += 1;
      queues.push(&queue, message, Duration::from_secs(delay.unwrap_or(0)));
    }
  }
}

/// The value of `name` in a query string, `+` and `%XX` decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
  query.split('&').find_map(|pair| {
    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
    (k == name).then(|| percent_decode(v))
  })
}

fn percent_decode(s: &str) -> String {
  let hex = |b: u8| (b as char).to_digit(16);
  let bytes = s.as_bytes();
  let mut out = Vec::with_capacity(bytes.len());
  let mut i = 0;
  while i < bytes.len() {
    let escaped = match bytes[i] {
      b'%' if i + 2 < bytes.len() => hex(bytes[i + 1]).zip(hex(bytes[i + 2])),
      _ => None,
    };
    match (bytes[i], escaped) {
      (_, Some((hi, lo))) => {
        out.push((hi * 16 + lo) as u8);
        i += 2;
      }
      (b'+', None) => out.push(b' '),
      (b, None) => out.push(b),
    }
    i += 1;
  }
  String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_cron_query_is_decoded_as_wrangler_sends_it() {
    assert_eq!(
      query_param("cron=*%2F5+*+*+*+*", "cron").as_deref(),
      Some("*/5 * * * *")
    );
    assert_eq!(
      query_param("a=1&cron=0%201%20*%20*%20MON", "cron").as_deref(),
      Some("0 1 * * MON")
    );
    assert_eq!(query_param("a=1", "cron"), None);
    assert_eq!(percent_decode("100%"), "100%");
    assert_eq!(percent_decode("%zz"), "%zz");
  }

  fn message(n: u8) -> Message {
    Message {
      id: n.to_string(),
      timestamp: 0,
      body: vec![n],
      content_type: isola_proto::queue::ContentType::Bytes,
      attempts: 1,
    }
  }

  #[test]
  fn a_batch_is_due_when_full_or_after_its_timeout() {
    let queues = DevQueues::default();
    let t0 = Instant::now();
    for n in 0..12 {
      queues.push("a", message(n), Duration::ZERO);
    }
    queues.push("b", message(99), Duration::ZERO);
    queues.push("a", message(50), Duration::from_secs(30));
    // Ten ready messages of `a` make a batch at once, in order.
    let now = Instant::now();
    let (queue, batch) = queues.take_due(now).ok().unwrap();
    assert_eq!(queue, "a");
    let ids: Vec<_> = batch.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    // The rest waits for the timeout of its oldest ready message.
    let next = queues.take_due(now).unwrap_err().unwrap();
    assert!(next >= t0 + BATCH_TIMEOUT && next <= now + BATCH_TIMEOUT);
    let (queue, batch) = queues.take_due(next).ok().unwrap();
    assert_eq!((queue.as_str(), batch.len()), ("a", 2));
    // `b`'s message came last: its timeout is its own.
    let (queue, batch) = queues.take_due(now + BATCH_TIMEOUT).ok().unwrap();
    assert_eq!((queue.as_str(), batch.len()), ("b", 1));
    // A delayed message is not ready before its delay.
    let later = queues.take_due(next).unwrap_err().unwrap();
    assert!(later >= t0 + Duration::from_secs(30));
    assert!(queues.take_due(later).is_err());
    assert_eq!(
      queues.take_due(later + BATCH_TIMEOUT).ok().unwrap().1[0].id,
      "50"
    );
  }

  #[test]
  fn cron_expressions_are_checked_on_the_command_line() {
    assert!(parse_cron("*/5 * * * *").is_ok());
    assert!(parse_cron("0 0 L * *").is_ok());
    let err = parse_cron("61 * * * *").unwrap_err();
    assert!(err.contains("minute"), "{err}");
  }
}
