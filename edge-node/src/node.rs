//! The routing model of `isola-edge serve` and the [`Node`] that owns it:
//! which worker versions serve which routes, how a new state is built from
//! the config file and the control plane's pushes, and how the node
//! switches to it without dropping a request.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
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
use isola_proto::msg::RunOutcome;
use isola_proto::msg::Tick;
use isola_proto::msg::TickReport;
use isola_proto::msg::VersionBundle;
use isola_proto::names::edge_worker_name;
use isola_proto::names::split_edge_worker_name;
use isola_proto::queue::Batch;
use isola_proto::queue::BatchReport;
use isola_proto::routes::RouteTable;
use isola_runtime::Bundle;
use isola_runtime::FetchRequest;
use isola_runtime::Limits;
use isola_runtime::Metrics;
use isola_runtime::Outcome;
use isola_runtime::ResponseBody;
use isola_runtime::Runtime;
use isola_runtime::ScheduledEvent;
use isola_runtime::WorkerConfig;
use isola_runtime::WorkerKey;
use serde::Serialize;

use crate::config::toml_to_json;
use crate::config::EdgeConfig;
use crate::store::Store;
use http::StatusCode;
use isola_runtime::text_response;

/// A worker version ready to serve.
struct Active {
  key: WorkerKey,
  bundle: Bundle,
  config: WorkerConfig,
}

/// Why a request has no worker to go to (a 404).
enum Unrouted {
  /// No route covers its host and path.
  Path,
  /// The route names a worker with nothing deployed.
  Undeployed(Arc<str>),
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
  /// Looked up on every request: foldhash, as the route table.
  workers: foldhash::HashMap<Arc<str>, Arc<Deployed>>,
  /// Routes per worker name, for [`Node::snapshot`]; the table itself
  /// only answers lookups.
  route_counts: HashMap<Arc<str>, usize>,
  /// The `[[worker]]`s of the config file: their bindings reach each other.
  statics: HashSet<Arc<str>>,
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

/// What the node serves, as `GET /admin/state` shows it: enough for an
/// operator or a test to see that a version is live or a revision applied.
#[derive(Debug, Serialize)]
pub struct Snapshot {
  /// The control-plane revision applied; `None` (JSON `null`) for a node
  /// without a control plane, 0 until it applied its first state.
  pub control_revision: Option<u64>,
  /// Route patterns in the table, all workers together.
  pub routes: usize,
  /// Deployed workers by name, sorted.
  pub workers: BTreeMap<String, WorkerSnapshot>,
}

/// One deployed worker in a [`Snapshot`].
#[derive(Debug, Serialize)]
pub struct WorkerSnapshot {
  /// The versions serving it, each with its share of requests.
  pub versions: Vec<VersionSnapshot>,
  /// Route patterns that point at it.
  pub routes: usize,
}

/// One version of a [`WorkerSnapshot`].
#[derive(Debug, Serialize)]
pub struct VersionSnapshot {
  /// The version id (the manifest hash).
  pub version: String,
  /// Its share of the worker's requests, 1..=100.
  pub percentage: u32,
}

/// Writes an applied control state where the next start finds it. The
/// command hands it in, so that this module does not depend on the
/// control channel's (which depends on this one).
pub type SaveState = Box<dyn Fn(&DesiredState) -> anyhow::Result<()> + Send + Sync>;

/// The running node, shared by the listeners, the signal loop, the admin
/// The config file's worker names: their usage and trace events are not
/// the control plane's. Asked on every traced invocation, so a node with
/// none (the usual `serve`) answers from one atomic load.
pub struct StaticNames {
  any: AtomicBool,
  names: std::sync::RwLock<HashSet<String>>,
}

impl StaticNames {
  fn new(names: HashSet<String>) -> Self {
    Self {
      any: AtomicBool::new(!names.is_empty()),
      names: std::sync::RwLock::new(names),
    }
  }

  pub fn contains(&self, worker: &str) -> bool {
    self.any.load(Ordering::Acquire)
      && self
        .names
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains(worker)
  }

  fn set(&self, names: HashSet<String>) {
    let mut held = self.names.write().unwrap_or_else(|e| e.into_inner());
    self.any.store(!names.is_empty(), Ordering::Release);
    *held = names;
  }
}

/// endpoints and the control channel.
pub struct Node {
  config_path: PathBuf,
  store: Store,
  runtime: Runtime,
  /// Shared with the runtime's [`NodeServices`].
  state: Arc<ArcSwap<State>>,
  /// Held while a new state is prepared, so reloads and pushes take turns.
  sources: tokio::sync::Mutex<Sources>,
  static_names: Arc<StaticNames>,
  /// Whether the config has a `[control]` section; the revision means
  /// nothing without one.
  controlled: bool,
  control_revision: AtomicU64,
  save_state: SaveState,
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

/// A control-plane version's config with its limits lowered to the node's
/// maxima; the control plane caps tenants too, but a node does not rely on
/// it.
fn within_node_maxima(
  config: WorkerConfig,
  maxima: &isola_proto::manifest::LimitsSpec,
  worker: &str,
  version: &str,
) -> WorkerConfig {
  let (limits, lowered) = config.limits_ref().at_most(maxima);
  if lowered.is_empty() {
    return config;
  }
  tracing::warn!(
    worker,
    version,
    lowered = ?lowered,
    "a version asks for more than this node's [limits] allow; it runs with the node's maxima"
  );
  config.limits(limits)
}

/// Builds the state the config and the control state describe. A static
/// worker that cannot be read is an error; a control-plane worker that
/// cannot be read is left out and named in the returned list.
fn build_state(
  config: &EdgeConfig,
  store: &Store,
  control: Option<&DesiredState>,
) -> anyhow::Result<(State, Vec<String>)> {
  let mut workers = foldhash::HashMap::default();
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
    let (bundle, mut worker_config) = store
      .load(&w.name, &version)
      .with_context(|| format!("worker {:?} version {version}", w.name))?;
    for s in &w.services {
      worker_config =
        worker_config.service(s.binding.clone(), s.service.clone(), s.entrypoint.clone());
    }
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
  let maxima = config.node_maxima();
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
        Ok((bundle, version_config)) => {
          let config = within_node_maxima(version_config, &maxima, &w.name, &split.hash);
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
  let mut route_counts = HashMap::new();
  for (_, worker) in &routes {
    *route_counts.entry(worker.clone()).or_default() += 1;
  }
  let routes = RouteTable::new(routes).context("invalid route")?;
  let statics = config
    .workers
    .iter()
    .map(|w| Arc::from(w.name.as_str()))
    .collect();
  Ok((
    State {
      routes: Some(routes),
      workers,
      route_counts,
      statics,
    },
    errors,
  ))
}

/// Logs what a state change left out: the workers concerned keep what
/// they served before, so the node goes on, but the operator must know.
fn warn_all(errors: &[String], revision: Option<u64>) {
  for e in errors {
    tracing::warn!(error = %e, revision, "part of the state was not applied");
  }
}

impl Node {
  /// A node serving nothing yet; [`Node::start`] loads its first state.
  /// `save_state` keeps each control state applied.
  pub fn new(
    config_path: PathBuf,
    config: EdgeConfig,
    store: Store,
    runtime: Runtime,
    save_state: SaveState,
  ) -> Self {
    let static_names = config.workers.iter().map(|w| w.name.clone()).collect();
    let state = Arc::new(ArcSwap::from_pointee(State::default()));
    runtime.set_services(Arc::new(NodeServices(state.clone())));
    Self {
      config_path,
      store,
      runtime,
      state,
      static_names: Arc::new(StaticNames::new(static_names)),
      controlled: config.control.is_some(),
      control_revision: AtomicU64::new(0),
      save_state,
      sources: tokio::sync::Mutex::new(Sources {
        config,
        control: None,
      }),
    }
  }

  /// Loads the first state before the node says it is ready: the config's
  /// workers and `control`, the control state last applied (as saved on
  /// disk), so a restart serves before the control plane is reachable. A
  /// static worker that does not start is fatal; a control-plane worker
  /// that does not start is logged and left out.
  pub async fn start(&self, control: Option<DesiredState>) -> anyhow::Result<()> {
    let mut sources = self.sources.lock().await;
    let (initial, errors) = build_state(&sources.config, &self.store, control.as_ref())?;
    let revision = control.as_ref().map(|s| s.revision);
    warn_all(&errors, revision);
    let switched = self.switch(initial, |name| self.is_static(name)).await?;
    warn_all(&switched.errors, revision);
    self
      .control_revision
      .store(revision.unwrap_or(0), Ordering::Release);
    sources.control = control;
    Ok(())
  }

  /// The revision of the control state this node serves (0: none yet).
  /// It moves only after the state's save to disk (a failed save is among
  /// the errors `apply_control` returns), so whoever sees it can restart
  /// the node and have it serve that state.
  pub fn control_revision(&self) -> u64 {
    self.control_revision.load(Ordering::Acquire)
  }

  /// Whether `worker` comes from the config file rather than the control
  /// plane (its usage is not the control plane's to bill).
  pub fn is_static(&self, worker: &str) -> bool {
    self.static_names.contains(worker)
  }

  /// The config file's worker names, as they change with reloads.
  pub fn static_names(&self) -> Arc<StaticNames> {
    self.static_names.clone()
  }

  /// The isolate pool's counts, for `/metrics`.
  pub fn runtime_stats(&self) -> isola_runtime::PoolStats {
    self.runtime.stats()
  }

  /// What the node serves right now.
  pub fn snapshot(&self) -> Snapshot {
    let state = self.state.load_full();
    let workers = state
      .workers
      .iter()
      .map(|(name, deployed)| {
        let mut lower = 0;
        let versions = deployed
          .versions
          .iter()
          .map(|(upper, active)| {
            let v = VersionSnapshot {
              version: active.key.version().to_string(),
              percentage: upper - lower,
            };
            lower = *upper;
            v
          })
          .collect();
        let routes = state.route_counts.get(name).copied().unwrap_or(0);
        (name.to_string(), WorkerSnapshot { versions, routes })
      })
      .collect();
    Snapshot {
      control_revision: self.controlled.then(|| self.control_revision()),
      routes: state.routes.as_ref().map_or(0, |r| r.len()),
      workers,
    }
  }

  /// Serves one request with the worker its host and path route to. The
  /// route is found before the future is made, and the future owns what
  /// it needs: the server moves it several times, so it should be small.
  pub fn handle(
    self: &Arc<Self>,
    metrics: &Metrics,
    req: FetchRequest,
  ) -> impl Future<Output = http::Response<ResponseBody>> + Send + 'static {
    let start = Instant::now();
    let uri = req.request().uri();
    let routed = self.route(uri).map_err(|unrouted| {
      let (worker, message) = match unrouted {
        Unrouted::Path => {
          let host = uri.authority().map_or("", |a| a.as_str());
          (
            None,
            format!("No worker is routed for {host}{}\n", uri.path()),
          )
        }
        Unrouted::Undeployed(worker) => {
          let message = format!("Worker {worker} is not deployed\n");
          (Some(worker), message)
        }
      };
      metrics.record_http(worker.as_deref().unwrap_or(""), 404, start.elapsed());
      // Boxed: the future below holds it, and hyper moves that future
      // several times per request.
      Box::new(text_response(StatusCode::NOT_FOUND, message))
    });
    let (node, metrics) = (self.clone(), metrics.clone());
    async move {
      let (worker, active) = match routed {
        Ok(routed) => routed,
        Err(response) => return *response,
      };
      let source = {
        let active = active.clone();
        move || Ok((active.bundle.clone(), active.config.clone()))
      };
      let response = match node.runtime.fetch_from(&active.key, source, req).await {
        Ok(r) => r,
        Err(e) => {
          if e.throttled().is_some() {
            metrics.record_throttled(&worker);
          }
          isola_runtime::error_response(&e)
        }
      };
      metrics.record_http(&worker, response.status().as_u16(), start.elapsed());
      response
    }
  }

  /// The worker `uri` routes to, and the version for this request.
  fn route(&self, uri: &http::Uri) -> Result<(Arc<str>, Arc<Active>), Unrouted> {
    let state = self.state.load();
    let host = uri.authority().map_or("", |a| a.as_str());
    let worker = state
      .routes
      .as_ref()
      .and_then(|r| r.lookup(host, uri.path()))
      .ok_or(Unrouted::Path)?;
    match state.workers.get(worker) {
      Some(deployed) => Ok((worker.clone(), deployed.pick().clone())),
      None => Err(Unrouted::Undeployed(worker.clone())),
    }
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
  pub async fn reload(&self) -> anyhow::Result<usize> {
    let mut sources = self.sources.lock().await;
    let config = crate::config::load(&self.config_path)?;
    let (next, errors) = build_state(&config, &self.store, sources.control.as_ref())?;
    warn_all(&errors, None);
    let switched = self.switch(next, |_| true).await?;
    self.set_static_names(&config);
    sources.config = config;
    Ok(switched.changed)
  }

  fn set_static_names(&self, config: &EdgeConfig) {
    self
      .static_names
      .set(config.workers.iter().map(|w| w.name.clone()).collect());
  }

  /// Applies a state pushed by the control plane (its versions were stored
  /// as they arrived): switches to it, and records it on disk so a restart
  /// serves it before the control plane is reachable again. Returns what
  /// did not apply; workers named there keep what they served before.
  pub async fn apply_control(&self, state: DesiredState) -> Vec<String> {
    let mut sources = self.sources.lock().await;
    let mut errors = Vec::new();
    let (next, build_errors) = match build_state(&sources.config, &self.store, Some(&state)) {
      Ok(built) => built,
      Err(e) => {
        errors.push(format!("revision {} not applied: {e:#}", state.revision));
        warn_all(&errors, Some(state.revision));
        return errors;
      }
    };
    errors.extend(build_errors);
    match self.switch(next, |_| false).await {
      Ok(switched) => errors.extend(switched.errors),
      Err(e) => errors.push(format!("{e:#}")),
    }
    if let Err(e) = (self.save_state)(&state) {
      errors.push(format!("the state is applied but not saved: {e:#}"));
    }
    self
      .control_revision
      .store(state.revision, Ordering::Release);
    warn_all(&errors, Some(state.revision));
    tracing::info!(
      revision = state.revision,
      workers = state.workers.len(),
      routes = state.routes.len(),
      "applied revision"
    );
    sources.control = Some(state);
    errors
  }
}

/// Service bindings over the routing state: a control-plane worker
/// (`account_worker`) reaches the workers of its account, a `[[worker]]` of
/// the config the other `[[worker]]`s; a split deployment picks a version
/// per call, as it does per request.
struct NodeServices(Arc<ArcSwap<State>>);

impl NodeServices {
  /// The edge name of the worker `service` that `caller` means.
  fn callee(state: &State, caller: &str, service: &str) -> Option<Arc<str>> {
    if state.statics.contains(caller) {
      return state.statics.get(service).cloned();
    }
    let (account, _) = split_edge_worker_name(caller)?;
    let name = edge_worker_name(account, service);
    // Never a static worker: those are not the account's.
    (!state.statics.contains(name.as_str())).then(|| Arc::from(name))
  }
}

impl isola_runtime::Services for NodeServices {
  fn resolve(&self, caller: &str, service: &str) -> Option<isola_runtime::ServiceTarget> {
    let state = self.0.load();
    let name = Self::callee(&state, caller, service)?;
    let active = state.workers.get(&name)?.pick().clone();
    Some(isola_runtime::ServiceTarget {
      key: active.key.clone(),
      source: Box::new(move || Ok((active.bundle.clone(), active.config.clone()))),
    })
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

  async fn scheduled(&self, tick: Tick) -> TickReport {
    self.run_scheduled(tick).await
  }

  async fn consume(&self, batch: Batch) -> BatchReport {
    self.run_batch(batch).await
  }
}

impl Node {
  /// Runs a queue consumer on a batch, on the version a request would get
  /// now. A consumer this edge cannot run (not deployed here, fails to
  /// start, no `queue` handler) is reported unavailable, so the batch goes
  /// to another edge.
  pub async fn run_batch(&self, batch: Batch) -> BatchReport {
    let mut report = BatchReport {
      id: batch.id,
      ok: false,
      messages: Vec::new(),
      unavailable: true,
      cpu_us: 0,
      wall_us: 0,
      version: None,
    };
    let state = self.state.load_full();
    let Some(deployed) = state.workers.get(batch.worker.as_str()) else {
      tracing::warn!(
        worker = batch.worker,
        "a queue batch for a worker this edge does not serve"
      );
      return report;
    };
    let active = deployed.pick().clone();
    report.version = Some(active.key.version().to_string());
    let source = {
      let active = active.clone();
      move || Ok((active.bundle.clone(), active.config.clone()))
    };
    let (worker, queue) = (batch.worker.clone(), batch.queue.clone());
    match self.runtime.queue(&active.key, source, batch).await {
      Ok(run) => {
        report.unavailable = false;
        report.ok = run.outcome == Outcome::Ok;
        report.messages = run.messages;
        report.cpu_us = run.cpu.as_micros() as u64;
        report.wall_us = run.wall.as_micros() as u64;
        if let Some(error) = run.error {
          tracing::info!(worker, queue, "queue consumer failed: {error}");
        }
      }
      Err(e) => tracing::warn!(worker, queue, error = %e, "cannot run a queue consumer"),
    }
    report
  }

  /// Runs a scheduled tick on the version a request would get now (a split
  /// deployment picks per tick).
  pub async fn run_scheduled(&self, tick: Tick) -> TickReport {
    let mut report = TickReport {
      id: tick.id,
      outcome: RunOutcome::Unavailable,
      no_retry: false,
      version: None,
      cpu_us: 0,
      wall_us: 0,
    };
    let state = self.state.load_full();
    let Some(deployed) = state.workers.get(tick.worker.as_str()) else {
      tracing::warn!(
        worker = tick.worker,
        "a scheduled tick for a worker this edge does not serve"
      );
      return report;
    };
    let active = deployed.pick().clone();
    report.version = Some(active.key.version().to_string());
    // A version that sets its own scheduled CPU limit keeps it; otherwise
    // the control plane's (Cloudflare's rule by interval) applies.
    let own = active.config.limits_ref().scheduled_cpu_limit();
    let cpu_limit =
      (own == Limits::default().scheduled_cpu_limit()).then(|| Duration::from_millis(tick.cpu_ms));
    let event = ScheduledEvent {
      cron: tick.cron.clone(),
      scheduled_time: tick.scheduled_time,
      cpu_limit,
    };
    let source = {
      let active = active.clone();
      move || Ok((active.bundle.clone(), active.config.clone()))
    };
    match self.runtime.scheduled(&active.key, source, event).await {
      Ok(run) => {
        report.outcome = match run.outcome {
          Outcome::Ok => RunOutcome::Ok,
          Outcome::Exception => RunOutcome::Exception,
          Outcome::CpuLimit => RunOutcome::ExceededCpu,
          Outcome::MemoryLimit => RunOutcome::ExceededMemory,
          Outcome::WallLimit => RunOutcome::ExceededWallTime,
          Outcome::Stopped => RunOutcome::Lost,
          _ => RunOutcome::ExceededResources,
        };
        report.no_retry = run.no_retry;
        report.cpu_us = run.cpu.as_micros() as u64;
        report.wall_us = run.wall.as_micros() as u64;
        if let Some(error) = run.error {
          tracing::info!(
            worker = tick.worker,
            cron = tick.cron,
            "scheduled run failed: {error}"
          );
        }
      }
      Err(e) => {
        tracing::warn!(worker = tick.worker, cron = tick.cron, error = %e, "cannot run a scheduled tick");
      }
    }
    report
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
      .iter()
      .map(|(k, v)| (k.to_string(), v.to_string()))
      .collect()
  }

  #[test]
  fn a_version_asking_past_the_node_s_maxima_gets_the_maxima() {
    let asked =
      WorkerConfig::new("greedy").limits(isola_runtime::Limits::default().memory_mib(1 << 20));
    let config = within_node_maxima(asked, &crate::config::default_node_maxima(), "greedy", "v1");
    assert_eq!(config.limits_ref().memory_bytes(), 1024 << 20);
  }

  #[test]
  fn bindings_reach_the_same_account_or_the_other_static_workers() {
    let state = State {
      statics: ["site", "api", "acme_billing"]
        .into_iter()
        .map(Arc::from)
        .collect(),
      ..State::default()
    };
    let callee = |caller: &str, service: &str| {
      NodeServices::callee(&state, caller, service).map(|n| n.to_string())
    };
    assert_eq!(callee("acme_web", "auth").as_deref(), Some("acme_auth"));
    assert_eq!(callee("site", "api").as_deref(), Some("api"));
    // A static worker reaches no account's worker, and no account reaches
    // a static one or another account's.
    assert_eq!(callee("site", "acme_auth"), None);
    assert_eq!(callee("acme_web", "billing"), None);
    assert_eq!(callee("nounderscore", "auth"), None);
  }

  #[test]
  fn secrets_change_the_isolate_key_and_nothing_else_does() {
    let key = || WorkerKey::new("alpha", "0123");
    let config = || WorkerConfig::new("alpha");
    let (plain, _) = with_secrets(key(), config(), &secrets(&[]));
    assert_eq!(plain.secrets(), None);
    let (a, _) = with_secrets(key(), config(), &secrets(&[("API_KEY", "one")]));
    let (b, _) = with_secrets(key(), config(), &secrets(&[("API_KEY", "two")]));
    let (a2, _) = with_secrets(key(), config(), &secrets(&[("API_KEY", "one")]));
    let digest = a.secrets().map(|d| &**d).expect("a digest");
    assert_eq!(digest.len(), 16);
    assert!(digest.bytes().all(|c| c.is_ascii_hexdigit()), "{digest}");
    assert_ne!(a, b, "another secret value starts fresh isolates");
    assert_eq!(a, a2, "the same secrets share isolates");
    assert_eq!((&**a.name(), &**a.version()), ("alpha", "0123"));
  }
}
