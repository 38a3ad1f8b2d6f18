//! `isola-edge serve --config edge.toml`: the daemon operators run on every
//! edge machine. This file wires the process together (listeners, the
//! control channel, signals); what it serves is [`crate::node`]'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use isola_runtime::CodeCacheConfig;
use isola_runtime::CodeCacheKey;
use isola_runtime::Config;
use isola_runtime::Metrics;
use isola_runtime::Runtime;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::EdgeConfig;
use crate::node::Node;
use crate::server::HttpOptions;
use crate::store::Store;

#[derive(clap::Args)]
pub struct ServeArgs {
  /// The node's config file (TOML). A listen address with port 0 gets a
  /// free port, reported in the `listening` log event.
  #[arg(long)]
  config: PathBuf,
  /// After the sandbox is on, try to read this file and make a forbidden
  /// syscall, and log what happened (for tests and new kernels).
  #[arg(long, hide = true, value_name = "PATH")]
  sandbox_selftest: Option<PathBuf>,
}

/// Binds `addr` now, so a taken port fails the start rather than a later
/// accept loop.
fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
  let listener =
    std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
  listener.set_nonblocking(true)?;
  Ok(listener)
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
  let config = crate::config::load(&args.config)?;
  let mut options = HttpOptions {
    max_header_bytes: config.server.max_header_bytes,
    header_timeout: Duration::from_millis(config.server.header_timeout_ms),
    drain_timeout: Duration::from_millis(config.server.drain_timeout_ms),
    client_addr: false,
  };
  let store = Store::open(&config.data_dir())?;
  store.prune_code_caches(CodeCacheKey::current_engine());
  let tls = match config.server.listen_tls {
    Some(_) => Some(crate::tls::server_config(&config)?),
    None => None,
  };
  let http = bind(config.server.listen)?;
  let https = config.server.listen_tls.map(bind).transpose()?;
  let admin_listener = config.server.admin.map(bind).transpose()?;
  // File access is limited now, while this is the only thread: before
  // Landlock ABI 8 later threads inherit the ruleset, earlier ones do not.
  let landlock = apply_landlock(&config, &args.config)?;

  let metrics = Metrics::new();
  // KV and queue calls go to the control plane; without one, only cached KV
  // reads resolve.
  let upstream = Arc::new(crate::kv::Upstream::default());
  let kv = Arc::new(crate::kv::EdgeKv::new(
    upstream.clone(),
    crate::kv::DEFAULT_CACHE_BYTES,
  ));
  let queues = Arc::new(crate::queues::EdgeQueues::new(upstream.clone()));
  let mut pool = Config::default()
    .logs(crate::logs::stdio_sink())
    .meter(metrics.sink())
    .fairness(crate::config::fairness(&config.fairness))
    .kv(kv.clone())
    .queues(queues)
    .egress(crate::config::egress_policy(&config)?)
    // Compiled code next to the modules, so a restart starts warm.
    .code_cache(CodeCacheConfig::default().store(Arc::new(store.clone())));
  if let Some(threads) = config.server.threads {
    pool = pool.threads(threads);
  }
  // Trace events of the control plane's workers go to it; the config
  // file's workers are not its to show, and without a control plane no
  // event is built at all.
  let names_slot: Arc<OnceLock<Arc<crate::node::StaticNames>>> = Arc::default();
  // With `[telemetry] otlp_endpoint`, every worker's records come too, for
  // their OpenTelemetry spans.
  let spans = config.telemetry.otlp_endpoint.is_some();
  // `[control] trace_events = false`: no event goes to the control plane.
  let events = config.control.as_ref().is_some_and(|c| c.trace_events);
  let mut traces = (events || spans).then(|| {
    crate::trace::TraceBuffer::new(
      crate::trace::MAX_EVENTS,
      crate::trace::MAX_BYTES,
      metrics.clone(),
    )
  });
  // The client's address is only read for trace events and spans.
  options.client_addr = traces.is_some();
  if let Some((buffer, _)) = &traces {
    let slot = names_slot.clone();
    let shipped =
      move |worker: &str| events && slot.get().is_some_and(|names| !names.contains(worker));
    pool = pool.trace(buffer.sink(shipped, spans));
  }
  let runtime = Runtime::new(pool)?;
  let ready = Arc::new(AtomicBool::new(false));
  let control_state = match &config.control {
    Some(_) => crate::control::load_state(&store.control_dir())?,
    None => None,
  };
  let control_dir = store.control_dir();
  let node = Arc::new(Node::new(
    args.config.clone(),
    config.clone(),
    store.clone(),
    runtime.clone(),
    Box::new(move |state| crate::control::save_state(&control_dir, state)),
  ));
  let _ = names_slot.set(node.static_names());

  let main_rt = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
  // Workers load before the node says it is ready.
  main_rt.block_on(node.start(control_state))?;
  let seccomp = if config.sandbox.seccomp {
    crate::sandbox::seccomp().context(
      "cannot install the seccomp filter; `[sandbox] seccomp = false` in edge.toml runs without it",
    )?
  } else {
    crate::sandbox::Layer::Disabled
  };
  tracing::info!(
    seccomp = %seccomp,
    landlock = %landlock,
    "sandbox in force"
  );
  if let Some(path) = &args.sandbox_selftest {
    crate::sandbox::selftest(path);
  }

  let (shutdown_tx, shutdown_rx) = watch::channel(false);
  let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
  let threads = runtime.threads();
  let http_port = bound_addr(&http).port();
  let mut listening = vec![("http", bound_addr(&http))];
  if let Some(https) = &https {
    listening.push(("https", bound_addr(https)));
  }
  if let Some(admin) = &admin_listener {
    listening.push(("admin", bound_addr(admin)));
  }
  for (listener, tls) in [(Some(http), None), (https, tls)] {
    let Some(listener) = listener else { continue };
    let (node, metrics) = (node.clone(), metrics.clone());
    let handler = move |req| node.handle(&metrics, req);
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
  for (listener, addr) in listening {
    tracing::info!(listener, addr = %addr, "listening");
  }
  let snapshot = node.snapshot();
  tracing::info!(
    workers = snapshot.workers.len(),
    routes = snapshot.routes,
    "serving"
  );

  let usage = main_rt.block_on(async {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    if let Some((_, queue)) = traces.take() {
      let edge = config
        .control
        .as_ref()
        .map_or_else(String::new, |c| c.name.clone());
      let telemetry = crate::telemetry::Telemetry::start(&config.telemetry, &edge)?.map(Arc::new);
      let upstream = upstream.clone();
      let send = move |batch| {
        let upstream = upstream.clone();
        async move { crate::trace::send_upstream(&upstream, batch).await }
      };
      tokio::spawn(crate::trace::ship(queue, edge, telemetry, send));
    }
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
        let (mut control, node, kv) = (control.clone(), node.clone(), kv.clone());
        // The control plane health-checks the edge where users reach it.
        control.site.http_port = Some(http_port);
        let upstream = upstream.clone();
        tokio::spawn(async move {
          if let Err(e) = crate::control::run(control, node, spool, rx, kv, upstream).await {
            tracing::error!(error = format!("{e:#}"), "the control channel cannot start");
          }
        });
        Some(cutter)
      }
      None => None,
    };
    if let Some(listener) = admin_listener {
      let listener = tokio::net::TcpListener::from_std(listener)?;
      let admin = Admin {
        node: node.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
      };
      tokio::spawn(admin.serve(listener, shutdown_rx.clone()));
    }
    let path = args.config.display();
    loop {
      tokio::select! {
        _ = term.recv() => break,
        _ = int.recv() => break,
        _ = hup.recv() => match node.reload().await {
          Ok(changed) => tracing::info!(changed, path = %path, "reloaded"),
          Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            path = %path,
            "reload failed, still serving the previous state"
          ),
        },
      }
    }
    tracing::info!("shutting down, draining in-flight requests");
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

/// Landlock per `[sandbox]`; warns when threads already run that it cannot
/// cover.
fn apply_landlock(
  config: &EdgeConfig,
  config_path: &std::path::Path,
) -> anyhow::Result<crate::sandbox::Layer> {
  if !config.sandbox.landlock {
    return Ok(crate::sandbox::Layer::Disabled);
  }
  let threads = crate::sandbox::thread_count().unwrap_or(1);
  if threads > 1 {
    tracing::warn!(
      threads,
      "Landlock is applied with other threads running; on kernels before Landlock ABI 8 they stay unrestricted"
    );
  }
  let paths = crate::sandbox::Paths::for_config(config, config_path);
  crate::sandbox::landlock(&paths, threads > 1).context(
    "cannot apply the Landlock ruleset; `[sandbox] landlock = false` in edge.toml runs without it",
  )
}

/// The address a bound listener got (the OS picks the port for port 0);
/// the `listening` event reports it, so tests and supervisors need not
/// guess a free port.
fn bound_addr(socket: &std::net::TcpListener) -> SocketAddr {
  socket.local_addr().expect("a bound socket has an address")
}
