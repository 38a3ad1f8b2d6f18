//! `isola-edge serve --config edge.toml`: the daemon operators run on every
//! edge machine.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use isola_proto::manifest::sha256_hex;
use isola_proto::msg::DesiredState;
use isola_proto::msg::VersionBundle;
use isola_proto::routes::RouteTable;
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

/// A worker's deployment: one version, or a split between two.
struct Deployed {
  /// Each version with the upper bound (exclusive) of its share of 0..100.
  versions: Vec<(u32, Arc<Active>)>,
}

impl Deployed {
  fn single(active: Active) -> Self {
    Self {
      versions: vec![(100, Arc::new(active))],
    }
  }

  /// The version for one request; a split picks at random per request, as
  /// Cloudflare's gradual deployments do.
  fn pick(&self) -> &Arc<Active> {
    if let [(_, only)] = self.versions.as_slice() {
      return only;
    }
    let roll = rand::random::<u32>() % 100;
    self
      .versions
      .iter()
      .find(|(upper, _)| roll < *upper)
      .map_or(&self.versions[self.versions.len() - 1].1, |(_, a)| a)
  }

  fn keys(&self) -> impl Iterator<Item = &WorkerKey> {
    self.versions.iter().map(|(_, a)| &a.key)
  }
}

/// Everything a request needs, swapped whole: a request is served entirely
/// by the state it started with, so a version switch is atomic.
#[derive(Default)]
struct State {
  routes: Option<RouteTable<Arc<str>>>,
  workers: HashMap<Arc<str>, Arc<Deployed>>,
}

/// Where the node's workers come from: its config file and the state the
/// control plane last pushed.
struct Sources {
  config: EdgeConfig,
  control: Option<DesiredState>,
}

/// What [`Node::switch`] did.
struct Switched {
  /// Workers now serving a different deployment.
  changed: usize,
  /// Workers that kept their previous deployment, and why.
  errors: Vec<String>,
}

/// The running node, shared by the listeners, the signal loop and the
/// control channel.
pub struct Node {
  config_path: PathBuf,
  store: Store,
  runtime: Runtime,
  state: ArcSwap<State>,
  /// Held while a new state is prepared, so reloads and pushes take turns.
  sources: tokio::sync::Mutex<Sources>,
  static_names: std::sync::RwLock<HashSet<String>>,
  control_revision: AtomicU64,
}

/// The `env` bindings of a control-plane worker are its version's vars plus
/// its secrets; the isolate key covers the secrets so that a changed secret
/// starts fresh isolates.
fn with_secrets(
  key: WorkerKey,
  mut config: WorkerConfig,
  secrets: &BTreeMap<String, String>,
) -> (WorkerKey, WorkerConfig) {
  if secrets.is_empty() {
    return (key, config);
  }
  for (k, v) in secrets {
    config = config.var(k.clone(), v.clone());
  }
  let digest = sha256_hex(&serde_json::to_vec(secrets).expect("strings serialise"));
  (key.with_secrets(&digest[..16]), config)
}

/// Builds the state the config and the control state describe. A static
/// worker that cannot be read is an error; a control-plane worker that
/// cannot be read is left out and named in the returned list.
fn build_state(
  config: &EdgeConfig,
  store: &Store,
  control: Option<&DesiredState>,
) -> anyhow::Result<(State, Vec<String>)> {
  let mut workers = HashMap::new();
  let mut routes = Vec::new();
  let mut errors = Vec::new();
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
      Arc::new(Deployed::single(Active {
        key: WorkerKey::new(name.clone(), version),
        bundle,
        config: worker_config,
      })),
    );
    for pattern in &w.routes {
      routes.push((pattern.clone(), name.clone()));
    }
  }
  for w in control.map_or(&[][..], |c| &c.workers[..]) {
    let name: Arc<str> = Arc::from(w.name.as_str());
    if workers.contains_key(&name) {
      errors.push(format!(
        "worker {}: a [[worker]] in the config has the same name; the config's wins",
        w.name
      ));
      continue;
    }
    let mut versions = Vec::new();
    let mut upper = 0;
    for split in &w.versions {
      match store.load(&w.name, &split.hash) {
        Ok((bundle, config)) => {
          let (key, config) = with_secrets(
            WorkerKey::new(name.clone(), split.hash.as_str()),
            config,
            &w.secrets,
          );
          upper += u32::from(split.percentage);
          versions.push((
            upper,
            Arc::new(Active {
              key,
              bundle,
              config,
            }),
          ));
        }
        Err(e) => errors.push(format!("worker {}: {e}", w.name)),
      }
    }
    if versions.len() == w.versions.len() && !versions.is_empty() {
      workers.insert(name, Arc::new(Deployed { versions }));
    }
  }
  for r in control.map_or(&[][..], |c| &c.routes[..]) {
    routes.push((r.pattern.clone(), Arc::from(r.worker.as_str())));
  }
  let routes = RouteTable::new(routes).context("invalid route")?;
  Ok((
    State {
      routes: Some(routes),
      workers,
    },
    errors,
  ))
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
  node: Arc<Node>,
  metrics: Metrics,
  req: http::Request<isola_runtime::RequestBody>,
) -> http::Response<ResponseBody> {
  let start = Instant::now();
  let state = node.state.load_full();
  let host = req.uri().authority().map_or("", |a| a.as_str()).to_string();
  let path = req.uri().path().to_string();
  let Some(worker) = state
    .routes
    .as_ref()
    .and_then(|r| r.lookup(&host, &path))
    .cloned()
  else {
    metrics.record_http("", 404, start.elapsed());
    return text_response(404, format!("No worker is routed for {host}{path}\n"));
  };
  let Some(deployed) = state.workers.get(&worker) else {
    metrics.record_http(&worker, 404, start.elapsed());
    return text_response(404, format!("Worker {worker} is not deployed\n"));
  };
  let active = deployed.pick().clone();
  let source = {
    let active = active.clone();
    move || Ok((active.bundle.clone(), active.config.clone()))
  };
  let response = match node.runtime.fetch(&active.key, source, req).await {
    Ok(r) => r,
    Err(e) => isola_runtime::error_response(&e),
  };
  metrics.record_http(&worker, response.status().as_u16(), start.elapsed());
  response
}

impl Node {
  /// The revision of the control state this node serves (0: none yet).
  pub fn control_revision(&self) -> u64 {
    self.control_revision.load(Ordering::Acquire)
  }

  /// Whether `worker` comes from the config file rather than the control
  /// plane (its usage is not the control plane's to bill).
  pub fn is_static(&self, worker: &str) -> bool {
    self
      .static_names
      .read()
      .unwrap_or_else(|e| e.into_inner())
      .contains(worker)
  }

  /// Loads every version of `next` that is not loaded yet, then switches
  /// to it. A worker whose new version does not start keeps its previous
  /// deployment (or stays undeployed), named in the returned errors; if
  /// `strict` says that worker matters, nothing switches and it is an error.
  async fn switch(
    &self,
    mut next: State,
    strict: impl Fn(&str) -> bool,
  ) -> anyhow::Result<Switched> {
    let current = self.state.load_full();
    let mut errors = Vec::new();
    let mut failed = Vec::new();
    let mut changed = 0;
    for (name, deployed) in &next.workers {
      let unchanged = current
        .workers
        .get(name)
        .is_some_and(|old| old.keys().eq(deployed.keys()));
      if unchanged {
        continue;
      }
      changed += 1;
      for (_, active) in &deployed.versions {
        if let Err(e) = self
          .runtime
          .preload(&active.key, active.bundle.clone(), active.config.clone())
          .await
        {
          if strict(name) {
            return Err(anyhow::anyhow!(e))
              .with_context(|| format!("the new version of worker {name} does not start"));
          }
          errors.push(format!(
            "worker {name}: the new version does not start: {e}"
          ));
          failed.push(name.clone());
          break;
        }
      }
    }
    changed -= failed.len();
    for name in failed {
      match current.workers.get(&name) {
        Some(old) => next.workers.insert(name, old.clone()),
        None => next.workers.remove(&name),
      };
    }
    let next = Arc::new(next);
    self.state.store(next.clone());
    // Old versions finish their in-flight requests, then their isolates go.
    let live: HashSet<&WorkerKey> = next.workers.values().flat_map(|d| d.keys()).collect();
    for key in current.workers.values().flat_map(|d| d.keys()) {
      if !live.contains(key) {
        self.runtime.evict(key);
      }
    }
    Ok(Switched { changed, errors })
  }

  /// Re-reads the config file and switches every changed worker, after
  /// loading it once; on any error the running state stays.
  async fn reload(&self) -> anyhow::Result<usize> {
    let mut sources = self.sources.lock().await;
    let config = EdgeConfig::load(&self.config_path)?;
    let (next, errors) = build_state(&config, &self.store, sources.control.as_ref())?;
    for e in errors {
      eprintln!("isola-edge serve: {e}");
    }
    let switched = self.switch(next, |_| true).await?;
    self.set_static_names(&config);
    sources.config = config;
    Ok(switched.changed)
  }

  fn set_static_names(&self, config: &EdgeConfig) {
    *self.static_names.write().unwrap_or_else(|e| e.into_inner()) =
      config.workers.iter().map(|w| w.name.clone()).collect();
  }

  /// Applies a state pushed by the control plane: stores the versions it
  /// brings, switches to it, and records it on disk so a restart serves it
  /// before the control plane is reachable again. Returns what did not
  /// apply; workers named there keep what they served before.
  pub async fn apply_control(&self, state: DesiredState) -> Vec<String> {
    let mut sources = self.sources.lock().await;
    let mut errors = Vec::new();
    let (next, build_errors) = match build_state(&sources.config, &self.store, Some(&state)) {
      Ok(built) => built,
      Err(e) => {
        errors.push(format!("revision {} not applied: {e:#}", state.revision));
        return errors;
      }
    };
    errors.extend(build_errors);
    match self.switch(next, |_| false).await {
      Ok(switched) => errors.extend(switched.errors),
      Err(e) => errors.push(format!("{e:#}")),
    }
    if let Err(e) = crate::control::save_state(&self.store.control_dir(), &state) {
      errors.push(format!("the state is applied but not saved: {e:#}"));
    }
    self
      .control_revision
      .store(state.revision, Ordering::Release);
    for e in &errors {
      eprintln!("isola-edge serve: revision {}: {e}", state.revision);
    }
    println!(
      "isola-edge serve: applied revision {} ({} worker(s), {} route(s))",
      state.revision,
      state.workers.len(),
      state.routes.len()
    );
    sources.control = Some(state);
    errors
  }
}

impl crate::control::Target for Node {
  fn revision(&self) -> u64 {
    self.control_revision()
  }

  fn versions(&self) -> anyhow::Result<Vec<String>> {
    Ok(self.store.all_versions()?)
  }

  fn store_bundle(&self, bundle: &VersionBundle) -> anyhow::Result<()> {
    let modules: Vec<&[u8]> = bundle.modules.iter().map(|m| m.as_slice()).collect();
    self.store.put_pushed(&bundle.manifest, &modules)?;
    Ok(())
  }

  async fn apply(&self, state: DesiredState) -> Vec<String> {
    self.apply_control(state).await
  }

  fn is_static(&self, worker: &str) -> bool {
    Node::is_static(self, worker)
  }
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
  let control_state = match &config.control {
    Some(_) => crate::control::load_state(&store.control_dir())?,
    None => None,
  };
  let (initial, errors) = build_state(&config, &store, control_state.as_ref())?;
  for e in errors {
    eprintln!("isola-edge serve: {e}");
  }
  let node = Arc::new(Node {
    config_path: args.config.clone(),
    store: store.clone(),
    runtime: runtime.clone(),
    state: ArcSwap::from_pointee(State::default()),
    sources: tokio::sync::Mutex::new(Sources {
      config: config.clone(),
      control: None,
    }),
    static_names: Default::default(),
    control_revision: AtomicU64::new(control_state.as_ref().map_or(0, |s| s.revision)),
  });
  node.set_static_names(&config);

  let main_rt = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
  // Workers load before the node says it is ready. A control-plane worker
  // that does not start is logged and left out, never fatal.
  main_rt.block_on(async {
    for e in node
      .switch(initial, |name| node.is_static(name))
      .await?
      .errors
    {
      eprintln!("isola-edge serve: {e}");
    }
    node.sources.lock().await.control = control_state;
    anyhow::Ok(())
  })?;

  let (shutdown_tx, shutdown_rx) = watch::channel(false);
  let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
  let threads = runtime.threads();
  for (listener, tls) in [(Some(http), None), (https, tls)] {
    let Some(listener) = listener else { continue };
    let (node, metrics) = (node.clone(), metrics.clone());
    let handler = move |req| handle(node.clone(), metrics.clone(), req);
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
    node.state.load().workers.len(),
    node.state.load().routes.as_ref().map_or(0, |r| r.len()),
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

  let usage = main_rt.block_on(async {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let usage = match &config.control {
      Some(control) => {
        let spool = crate::control::Spool::open(&store.control_dir())?;
        let cutter = Arc::new(crate::control::UsageCutter::new(
          node.clone(),
          metrics.clone(),
          spool.clone(),
        ));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(
          cutter
            .clone()
            .run(Duration::from_millis(control.usage_interval_ms), tx),
        );
        let (control, node) = (control.clone(), node.clone());
        tokio::spawn(async move {
          if let Err(e) = crate::control::run(control, node, spool, rx).await {
            eprintln!("isola-edge serve: the control channel cannot start: {e:#}");
          }
        });
        Some(cutter)
      }
      None => None,
    };
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
        _ = hup.recv() => match node.reload().await {
          Ok(n) => println!("isola-edge serve: reloaded {}; {n} worker(s) switched version", args.config.display()),
          Err(e) => eprintln!("isola-edge serve: reload failed, still serving the previous state: {e:#}"),
        },
      }
    }
    println!("isola-edge serve: shutting down, draining in-flight requests");
    ready.store(false, Ordering::Release);
    let _ = shutdown_tx.send(true);
    anyhow::Ok(usage)
  })?;
  // Each accept loop reports once its connections have drained.
  for _ in 0..loops {
    if done_rx.recv().is_err() {
      break;
    }
  }
  // What the drained requests used goes to disk, for the next start to ship.
  if let Some(cutter) = usage {
    cutter.cut();
  }
  Ok(())
}
