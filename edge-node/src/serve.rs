//! `isola-edge serve --config edge.toml`: the daemon operators run on every
//! edge machine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use isola_runtime::Bundle;
use isola_runtime::Config;
use isola_runtime::Metrics;
use isola_runtime::ResponseBody;
use isola_runtime::Runtime;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;
use tokio::sync::watch;

use crate::config::toml_to_json;
use crate::config::EdgeConfig;
use crate::routes::RouteTable;
use crate::server::HttpOptions;
use crate::store::Store;

#[derive(clap::Args)]
pub struct ServeArgs {
  /// The node's config file (TOML).
  #[arg(long)]
  config: PathBuf,
}

/// A worker version ready to serve.
struct Active {
  key: WorkerKey,
  bundle: Bundle,
  config: WorkerConfig,
}

/// Everything a request needs, swapped whole: a request is served entirely
/// by the state it started with, so a version switch is atomic.
struct State {
  routes: RouteTable<Arc<str>>,
  workers: HashMap<Arc<str>, Arc<Active>>,
}

/// Imports the config's static workers into the store and builds the state.
fn build_state(config: &EdgeConfig, store: &Store) -> anyhow::Result<State> {
  let mut workers = HashMap::new();
  let mut routes = Vec::new();
  for w in &config.workers {
    let vars = w
      .vars
      .iter()
      .map(|(k, v)| (k.clone(), toml_to_json(v)))
      .collect();
    let entry = config.resolve(&w.entry);
    let version = store
      .import_dir(&w.name, &entry, vars, w.limits.clone())
      .with_context(|| format!("worker {:?}", w.name))?;
    let (bundle, worker_config) = store
      .load(&w.name, &version)
      .with_context(|| format!("worker {:?} version {version}", w.name))?;
    let name: Arc<str> = Arc::from(w.name.as_str());
    workers.insert(
      name.clone(),
      Arc::new(Active {
        key: WorkerKey::new(name.clone(), version),
        bundle,
        config: worker_config,
      }),
    );
    for pattern in &w.routes {
      routes.push((pattern.clone(), name.clone()));
    }
  }
  let routes = RouteTable::new(routes).context("invalid route")?;
  Ok(State { routes, workers })
}

fn text_response(status: u16, text: String) -> http::Response<ResponseBody> {
  let mut response = http::Response::new(ResponseBody::full(text));
  *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
  response.headers_mut().insert(
    http::header::CONTENT_TYPE,
    http::HeaderValue::from_static("text/plain;charset=UTF-8"),
  );
  response
}

async fn handle(
  state: Arc<ArcSwap<State>>,
  runtime: Runtime,
  metrics: Metrics,
  req: http::Request<isola_runtime::RequestBody>,
) -> http::Response<ResponseBody> {
  let start = Instant::now();
  let state = state.load_full();
  let host = req.uri().authority().map_or("", |a| a.as_str()).to_string();
  let path = req.uri().path().to_string();
  let Some(worker) = state.routes.lookup(&host, &path).cloned() else {
    metrics.record_http("", 404, start.elapsed());
    return text_response(404, format!("No worker is routed for {host}{path}\n"));
  };
  let Some(active) = state.workers.get(&worker).cloned() else {
    metrics.record_http(&worker, 404, start.elapsed());
    return text_response(404, format!("Worker {worker} is not deployed\n"));
  };
  let source = {
    let active = active.clone();
    move || Ok((active.bundle.clone(), active.config.clone()))
  };
  let response = match runtime.fetch(&active.key, source, req).await {
    Ok(r) => r,
    Err(e) => isola_runtime::error_response(&e),
  };
  metrics.record_http(&worker, response.status().as_u16(), start.elapsed());
  response
}

/// Re-reads the config and switches every changed worker to its new version,
/// after loading it once; on any error the running state stays.
async fn reload(
  path: &std::path::Path,
  store: &Store,
  runtime: &Runtime,
  state: &ArcSwap<State>,
) -> anyhow::Result<usize> {
  let config = EdgeConfig::load(path)?;
  let next = build_state(&config, store)?;
  let current = state.load_full();
  let mut changed = Vec::new();
  for (name, active) in &next.workers {
    if current.workers.get(name).map(|a| &a.key) != Some(&active.key) {
      runtime
        .preload(&active.key, active.bundle.clone(), active.config.clone())
        .await
        .with_context(|| format!("the new version of worker {name} does not start"))?;
      changed.push(name.clone());
    }
  }
  state.store(Arc::new(next));
  // Old versions finish their in-flight requests, then their isolates go.
  for name in &changed {
    if let Some(old) = current.workers.get(name) {
      runtime.evict(&old.key);
    }
  }
  Ok(changed.len())
}

async fn admin(
  listener: tokio::net::TcpListener,
  runtime: Runtime,
  metrics: Metrics,
  ready: Arc<AtomicBool>,
  shutdown: watch::Receiver<bool>,
) {
  let handle = move |req: http::Request<isola_runtime::RequestBody>| {
    let (runtime, metrics, ready) = (runtime.clone(), metrics.clone(), ready.clone());
    async move {
      match req.uri().path() {
        "/healthz" => text_response(200, "ok\n".into()),
        "/readyz" if ready.load(Ordering::Acquire) => text_response(200, "ready\n".into()),
        "/readyz" => text_response(503, "not ready\n".into()),
        "/metrics" => {
          let mut r = text_response(200, metrics.encode(Some(runtime.stats())));
          r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(
              "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
          );
          r
        }
        _ => text_response(404, "try /healthz, /readyz or /metrics\n".into()),
      }
    }
  };
  crate::server::serve(listener, None, HttpOptions::default(), shutdown, handle).await;
}

fn bind(addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
  let listener =
    std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
  listener.set_nonblocking(true)?;
  Ok(listener)
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
  let config = EdgeConfig::load(&args.config)?;
  let options = HttpOptions {
    max_header_bytes: config.server.max_header_bytes,
    header_timeout: Duration::from_millis(config.server.header_timeout_ms),
    drain_timeout: Duration::from_millis(config.server.drain_timeout_ms),
  };
  let store = Store::open(&config.data_dir())?;
  let tls = match config.server.listen_tls {
    Some(_) => Some(crate::tls::server_config(&config)?),
    None => None,
  };
  let http = bind(config.server.listen)?;
  let https = config.server.listen_tls.map(bind).transpose()?;
  let admin_listener = config.server.admin.map(bind).transpose()?;

  let metrics = Metrics::new();
  let mut pool = Config::default()
    .logs(crate::logs::stdio_sink())
    .meter(metrics.sink());
  if let Some(threads) = config.server.threads {
    pool = pool.threads(threads);
  }
  let runtime = Runtime::new(pool)?;
  let ready = Arc::new(AtomicBool::new(false));
  let state = Arc::new(ArcSwap::from_pointee(build_state(&config, &store)?));

  let main_rt = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
  // Workers load before the node says it is ready.
  main_rt.block_on(async {
    for active in state.load().workers.values() {
      runtime
        .preload(&active.key, active.bundle.clone(), active.config.clone())
        .await
        .with_context(|| format!("worker {} does not start", active.key.name))?;
    }
    anyhow::Ok(())
  })?;

  let (shutdown_tx, shutdown_rx) = watch::channel(false);
  let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
  let threads = runtime.threads();
  for (listener, tls) in [(Some(http), None), (https, tls)] {
    let Some(listener) = listener else { continue };
    let (state, pool, metrics) = (state.clone(), runtime.clone(), metrics.clone());
    let handler = move |req| handle(state.clone(), pool.clone(), metrics.clone(), req);
    crate::server::serve_on_each_thread(
      &runtime,
      listener,
      tls,
      options.clone(),
      shutdown_rx.clone(),
      handler,
      done_tx.clone(),
    );
  }
  let loops = threads * (1 + usize::from(config.server.listen_tls.is_some()));
  drop(done_tx);
  ready.store(true, Ordering::Release);
  println!(
    "isola-edge serve: {} worker(s), {} route(s); http://{}{}{}",
    state.load().workers.len(),
    state.load().routes.len(),
    config.server.listen,
    config
      .server
      .listen_tls
      .map(|a| format!(", https://{a}"))
      .unwrap_or_default(),
    config
      .server
      .admin
      .map(|a| format!(", admin http://{a}"))
      .unwrap_or_default(),
  );

  main_rt.block_on(async {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    if let Some(listener) = admin_listener {
      let listener = tokio::net::TcpListener::from_std(listener)?;
      tokio::spawn(admin(
        listener,
        runtime.clone(),
        metrics.clone(),
        ready.clone(),
        shutdown_rx.clone(),
      ));
    }
    loop {
      tokio::select! {
        _ = term.recv() => break,
        _ = int.recv() => break,
        _ = hup.recv() => match reload(&args.config, &store, &runtime, &state).await {
          Ok(n) => println!("isola-edge serve: reloaded {}; {n} worker(s) switched version", args.config.display()),
          Err(e) => eprintln!("isola-edge serve: reload failed, still serving the previous state: {e:#}"),
        },
      }
    }
    println!("isola-edge serve: shutting down, draining in-flight requests");
    ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    anyhow::Ok(())
  })?;
  // Each accept loop reports once its connections have drained.
  for _ in 0..loops {
    if done_rx.recv().is_err() {
      break;
    }
  }
  Ok(())
}
