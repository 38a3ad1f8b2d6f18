//! `isola-control`: the control plane binary. `init` makes a data
//! directory (database, CA, keys, admin token), `serve` runs the REST API
//! and the QUIC channel edges follow, `enroll-edge` issues an edge's
//! certificate and config.
//!
//! Operator messages are `tracing` events on stderr (see `--help`); stdout
//! carries only what a user must copy: the admin token, the enrolled edge's
//! files and the command that starts it.

#![forbid(unsafe_code)]

use isola_control::api;
use isola_control::blobs;
use isola_control::config::ControlConfig;
use isola_control::db;
use isola_control::pki;
use isola_control::quic;
use isola_control::scheduler;
use isola_control::scheduler::driver::Clock;
use isola_control::secrets;
use isola_control::validate;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use anyhow::Context as _;
use clap::Parser;
use clap::Subcommand;
use isola_io::log::LogFormat;
use tokio::sync::watch;

// mimalloc, as the edge: the control plane also starts isolates (upload
// checks), and its trace path allocates a few strings per event, where
// glibc's malloc and free took ~14 % of its CPU under a `serve` load.
#[global_allocator]
static ALLOCATOR: isola_alloc::Allocator = isola_alloc::Allocator;

#[derive(Parser)]
#[command(
  name = "isola-control",
  version,
  about = "Isola's control plane",
  after_help = "Logging: operator messages go to stderr as tracing events. ISOLA_LOG filters \
                them (EnvFilter syntax, e.g. ISOLA_LOG=debug or \
                ISOLA_LOG=isola_control=debug,warn; default: info). --log-format json writes \
                one JSON object per line (timestamp, level, target, fields) for log shippers \
                and scripts."
)]
struct Cli {
  /// How log lines on stderr are written: `text` for people, `json` (one
  /// object per line) for log shippers and scripts. The filter is ISOLA_LOG.
  #[arg(long, global = true, value_enum, default_value = "text")]
  log_format: LogFormat,
  /// The store: a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DB),
  /// shared by every replica of the control plane. Default: the SQLite file
  /// DATA_DIR/control.db. The data directory still holds the CA, the
  /// server certificate and the secrets key, which replicas share.
  #[arg(
    long,
    global = true,
    env = "ISOLA_DATABASE",
    value_name = "URL",
    hide_env_values = true
  )]
  database: Option<String>,
  #[command(subcommand)]
  command: Command,
}

#[derive(Subcommand)]
enum Command {
  /// Create a data directory: database, CA, server certificate, secrets key
  /// and the admin token of account `default` (printed to stdout).
  Init {
    #[arg(long)]
    data_dir: PathBuf,
  },
  /// Serve the REST API and the QUIC control channel.
  Serve {
    #[arg(long)]
    data_dir: PathBuf,
    /// Settings file (addresses, `[billing]` prices); flags beat it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// REST API address. Default: 127.0.0.1:8700.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// QUIC address edges connect to. Default: 127.0.0.1:8701.
    #[arg(long)]
    quic: Option<SocketAddr>,
    /// How old (seconds) a cron tick that came due while the control plane
    /// was down may be and still run when it is back; older ones are
    /// recorded as `missed`. Default: 300.
    #[arg(long)]
    cron_catch_up: Option<u64>,
    /// Tests only: the scheduler's clock reads ORIGIN_MS at real time
    /// ORIGIN_MS (ms since the epoch) and runs SCALE times faster.
    #[arg(long, hide = true, value_name = "ORIGIN_MS:SCALE", value_parser = parse_test_clock)]
    test_clock: Option<(i64, i64)>,
    /// Serve geo DNS (UDP and TCP) on this address, authoritative for the
    /// zones of --dns-config (port 0: one free port for both, shown in the
    /// `listening` event). Default: no DNS.
    #[arg(long, requires = "dns_config")]
    dns: Option<SocketAddr>,
    /// The DNS server's settings (zones, TTL, networks, health checks).
    #[arg(long, requires = "dns")]
    dns_config: Option<PathBuf>,
    /// Where module bytes are stored: a path, file:///PATH, or
    /// s3://BUCKET/PREFIX for S3-compatible storage (endpoint, region and
    /// credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY; AWS_ALLOW_HTTP=true for a plain-HTTP
    /// endpoint). Default: DATA_DIR/blobs.
    #[arg(long, value_name = "URL")]
    blobs: Option<blobs::Location>,
  },
  /// Invoices from the usage records and the price sheet.
  Billing {
    #[command(subcommand)]
    command: BillingCommand,
  },
  /// Enroll an edge: record it and write its certificate, key and edge.toml.
  EnrollEdge {
    #[arg(long)]
    data_dir: PathBuf,
    /// The edge's name: 1 to 63 characters of a-z, 0-9 and '-'.
    #[arg(long)]
    name: String,
    /// Folder to write edge.toml, edge.pem, edge-key.pem and ca.pem into.
    #[arg(long)]
    out: PathBuf,
    /// The control plane's QUIC address as the edge reaches it; repeat it
    /// for each replica of the control plane.
    #[arg(long, default_value = "127.0.0.1:8701")]
    control_address: Vec<String>,
  },
}

#[derive(Subcommand)]
enum BillingCommand {
  /// Print each account's invoice for a month as CSV (the same numbers as
  /// `GET /v1/accounts/{id}/invoices/{month}`).
  Report {
    #[arg(long)]
    data_dir: PathBuf,
    /// `YYYY-MM`.
    #[arg(long)]
    month: String,
    /// One account; default: all.
    #[arg(long)]
    account: Option<String>,
    /// The settings file holding `[billing]`.
    #[arg(long)]
    config: Option<PathBuf>,
  },
}

fn main() -> ExitCode {
  let cli = Cli::parse();
  isola_io::log::init(cli.log_format, "info");
  let database = cli.database.as_deref();
  let result = match cli.command {
    Command::Init { data_dir } => init(&data_dir, database),
    Command::Serve {
      data_dir,
      config,
      api,
      quic,
      cron_catch_up,
      test_clock,
      dns,
      dns_config,
      blobs,
    } => (|| {
      let mut file = load_config(config.as_deref())?;
      file.storage.blobs = blobs.or(file.storage.blobs);
      let dns = match (dns, dns_config) {
        (Some(addr), Some(path)) => Some((addr, isola_control::dns::DnsConfig::load(&path)?)),
        _ => None,
      };
      let clock = match test_clock {
        Some((origin, scale)) => Clock::test(origin, scale),
        None => Clock::real(),
      };
      let catch_up = cron_catch_up.or(file.cron_catch_up).unwrap_or(300);
      let cron = scheduler::Config {
        catch_up: i64::try_from(catch_up.saturating_mul(1000)).unwrap_or(i64::MAX),
        ..Default::default()
      }
      .scaled(clock.scale());
      let api = api.or(file.api).unwrap_or(([127, 0, 0, 1], 8700).into());
      let quic = quic.or(file.quic).unwrap_or(([127, 0, 0, 1], 8701).into());
      let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
      let db = open_db(&data_dir, database)?;
      rt.block_on(serve(data_dir, db, api, quic, clock, cron, file, dns))
    })(),
    Command::Billing {
      command:
        BillingCommand::Report {
          data_dir,
          month,
          account,
          config,
        },
    } => open_db(&data_dir, database)
      .and_then(|db| billing_report(&db, &month, account.as_deref(), config.as_deref())),
    Command::EnrollEdge {
      data_dir,
      name,
      out,
      control_address,
    } => enroll_edge(&data_dir, database, &name, &out, &control_address),
  };
  match result {
    Ok(()) => ExitCode::SUCCESS,
    Err(e) => {
      tracing::error!(error = %format_args!("{e:#}"), "failed");
      ExitCode::FAILURE
    }
  }
}

fn db_path(dir: &Path) -> PathBuf {
  dir.join("control.db")
}

fn secrets_key_path(dir: &Path) -> PathBuf {
  dir.join("secrets.key")
}

/// Opens an initialised data directory's database, or the PostgreSQL
/// database `--database` names.
fn open_db(dir: &Path, database: Option<&str>) -> anyhow::Result<db::Db> {
  if let Some(url) = database {
    let key = secrets_key_path(dir);
    if !key.exists() {
      bail!(
        "{} has no secrets.key; create the data directory with `isola-control init --data-dir {} \
         --database URL` once, then copy it to each replica",
        dir.display(),
        dir.display()
      );
    }
    let cipher = secrets::Cipher::load(&key)?;
    return db::Db::connect_postgres(url, cipher).context("cannot open the PostgreSQL database");
  }
  let path = db_path(dir);
  if !path.exists() {
    bail!(
      "{} has no control.db; create it with `isola-control init --data-dir {}`",
      dir.display(),
      dir.display()
    );
  }
  let cipher = secrets::Cipher::load(&secrets_key_path(dir))?;
  db::Db::open(&path, cipher).with_context(|| format!("cannot open {}", path.display()))
}

/// Writes the database last, through a temporary name: until it exists the
/// directory counts as uninitialised, so an interrupted init can be re-run.
/// With PostgreSQL the secrets key is the last file written instead.
fn init(dir: &Path, database: Option<&str>) -> anyhow::Result<()> {
  let db_file = db_path(dir);
  let done = match database {
    Some(_) => secrets_key_path(dir),
    None => db_file.clone(),
  };
  if done.exists() {
    bail!(
      "{} is already initialised (it has {}); use another --data-dir, or remove the folder to \
       start over (that forgets every worker, edge and token)",
      dir.display(),
      done.file_name().unwrap_or_default().to_string_lossy()
    );
  }
  // Only the control plane's user may look inside: keys, tokens, code.
  std::fs::DirBuilder::new()
    .recursive(true)
    .mode(0o700)
    .create(dir)
    .with_context(|| format!("cannot create {}", dir.display()))?;

  let key = secrets::generate_key();
  if database.is_none() {
    pki::write_file(&secrets_key_path(dir), &key, true)?;
  }
  let files = pki::files(dir);
  let ca = pki::Ca::generate()?;
  pki::write_file(&files.ca, ca.cert_pem().as_bytes(), false)?;
  pki::write_file(&files.ca_key, ca.key_pem().as_bytes(), true)?;
  let server = ca.issue_server()?;
  pki::write_file(&files.cert, server.cert_pem.as_bytes(), false)?;
  pki::write_file(&files.key, server.key_pem.as_bytes(), true)?;
  isola_control::quic::reset_key(dir)?;

  if let Some(url) = database {
    let db = db::Db::connect_postgres(url, secrets::Cipher::new(&key))
      .context("cannot open the PostgreSQL database")?;
    let token = match db.create_account("default", true) {
      Err(db::Error::Conflict(_)) => bail!(
        "the PostgreSQL database was initialised before (it has account `default`); copy that \
         data directory to this replica instead, or use an empty database"
      ),
      other => other?,
    };
    let token_path = dir.join("admin-token");
    pki::write_file(&token_path, format!("{token}\n").as_bytes(), true)?;
    pki::write_file(&secrets_key_path(dir), &key, true)?;
    tracing::info!(
      data_dir = %dir.display(),
      account = "default",
      token_file = %token_path.display(),
      "initialised the data directory and the PostgreSQL database; the admin token follows on \
       stdout"
    );
    println!("{token}");
    return Ok(());
  }
  let tmp = dir.join("control.db.init");
  for suffix in ["", "-wal", "-shm"] {
    let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
  }
  let db = db::Db::open(&tmp, secrets::Cipher::new(&key))
    .with_context(|| format!("cannot create {}", tmp.display()))?;
  let token = db.create_account("default", true)?;
  // Closing checkpoints the WAL into the file, so renaming it alone is whole.
  drop(db);
  let token_path = dir.join("admin-token");
  pki::write_file(&token_path, format!("{token}\n").as_bytes(), true)?;
  std::fs::rename(&tmp, &db_file)
    .with_context(|| format!("cannot rename {} to {}", tmp.display(), db_file.display()))?;
  std::fs::File::open(dir)
    .and_then(|d| d.sync_all())
    .with_context(|| format!("cannot sync {}", dir.display()))?;

  tracing::info!(
    data_dir = %dir.display(),
    account = "default",
    token_file = %token_path.display(),
    "initialised the data directory; the admin token follows on stdout"
  );
  println!("{token}");
  Ok(())
}

/// Applies what other replicas change: a new revision goes to this
/// replica's edges, and changed schedules or queues reach this replica's
/// scheduler and deliveries (which act on them only while it leads).
async fn follow_replicas(
  mut changes: tokio::sync::mpsc::UnboundedReceiver<db::Changed>,
  db: db::Db,
  state_tx: Arc<watch::Sender<Arc<isola_proto::msg::DesiredState>>>,
  cron: scheduler::driver::Handle,
  queues: isola_control::queues::driver::Handle,
) {
  use db::Changed;
  while let Some(changed) = changes.recv().await {
    if matches!(changed, Changed::Everything | Changed::Schedules) {
      cron.reload();
    }
    if matches!(changed, Changed::Everything | Changed::Queues) {
      queues.reload();
    }
    if !matches!(changed, Changed::Everything | Changed::Revision) {
      continue;
    }
    let current = state_tx.borrow().revision;
    let db2 = db.clone();
    let newer = db::blocking(move || match db2.current_revision()? {
      r if r > current => db2.desired_state().map(Some),
      _ => Ok(None),
    })
    .await;
    match newer {
      Ok(Some(desired)) => {
        let revision = desired.revision;
        state_tx.send_if_modified(|current| {
          if desired.revision > current.revision {
            *current = Arc::new(desired);
            true
          } else {
            false
          }
        });
        tracing::debug!(revision, "published another replica's change");
      }
      Ok(None) => {}
      Err(e) => tracing::warn!(error = %e, "cannot read another replica's change"),
    }
  }
}

fn parse_test_clock(s: &str) -> Result<(i64, i64), String> {
  let (origin, scale) = s
    .split_once(':')
    .ok_or_else(|| "expected ORIGIN_MS:SCALE".to_string())?;
  let origin = origin.parse().map_err(|e| format!("ORIGIN_MS: {e}"))?;
  let scale = scale.parse().map_err(|e| format!("SCALE: {e}"))?;
  Ok((origin, scale))
}

fn load_config(path: Option<&Path>) -> anyhow::Result<ControlConfig> {
  Ok(match path {
    Some(path) => ControlConfig::load(path)?,
    None => ControlConfig::default(),
  })
}

fn billing_report(
  db: &db::Db,
  month: &str,
  account: Option<&str>,
  config: Option<&Path>,
) -> anyhow::Result<()> {
  let sheet = load_config(config)?.billing;
  let accounts = match account {
    Some(a) => vec![a.to_string()],
    None => db.account_names()?,
  };
  let now = db::Timestamp::now().0;
  let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
  for account in accounts {
    let invoice = rt.block_on(isola_control::billing::invoice_for(
      db, &sheet, &account, month, now,
    ))?;
    println!(
      "# account {account}, {month}{}",
      if invoice.closed {
        ""
      } else {
        " (month not over)"
      }
    );
    print!("{}", isola_control::billing::csv(&invoice));
  }
  Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve(
  dir: PathBuf,
  db: db::Db,
  api_addr: SocketAddr,
  quic_addr: SocketAddr,
  clock: Clock,
  config: scheduler::Config,
  settings: isola_control::config::ControlConfig,
  dns: Option<(SocketAddr, isola_control::dns::DnsConfig)>,
) -> anyhow::Result<()> {
  let location = settings.storage.blobs.clone();
  if db.is_shared() && location.is_none() {
    tracing::warn!(
      "the database is shared but module blobs are kept in this replica's data directory; \
       give every replica the same --blobs (s3://BUCKET/PREFIX or a shared folder), or edges \
       connected to another replica cannot load what was uploaded here"
    );
  }
  let blobs =
    blobs::Blobs::open(location.unwrap_or_else(|| blobs::Location::default_in(&dir))).await?;
  blobs
    .adopt_legacy(&db)
    .await
    .context("cannot move module blobs from the database into the blob store")?;
  tracing::info!(store = %blobs.location(), "blob store");
  let validator =
    Arc::new(validate::Validator::new().context("cannot start the runtime that checks uploads")?);
  let initial = db::blocking({
    let db = db.clone();
    move || db.desired_state()
  })
  .await
  .context("cannot read the desired state")?;
  let revision = initial.revision;
  let (state_tx, state_rx) = watch::channel(Arc::new(initial));
  let state_tx = Arc::new(state_tx);
  let fleet = isola_control::fleet::Fleet::default();
  // Replicas on one PostgreSQL database: one of them runs cron and queue
  // deliveries at a time.
  let replica = format!("{api_addr}/{}", uuid::Uuid::new_v4().simple());
  let leading = isola_control::lease::start(db.clone(), replica, Default::default());
  let cron = scheduler::driver::start(db.clone(), fleet.clone(), clock, config, leading.clone())
    .await
    .context("cannot start the cron scheduler")?;
  let kv = isola_control::kv::Kv::new(db.clone());
  // Queue timing is real time even under a test clock: batch timeouts are
  // seconds.
  let queues = isola_control::queues::driver::start(
    db.clone(),
    fleet.clone(),
    Clock::real(),
    isola_control::queues::Config::default(),
    leading,
  )
  .await
  .context("cannot start the queues")?;
  if let Some(changes) = db.follow() {
    tokio::spawn(follow_replicas(
      changes,
      db.clone(),
      state_tx.clone(),
      cron.clone(),
      queues.clone(),
    ));
  }
  tokio::spawn(kv.clone().sweep_forever());
  let traces = isola_control::observe::Traces::start(db.clone());
  // Edge health for the API always; active checks only for DNS answers.
  let edges = isola_control::dns::health::start(
    fleet.clone(),
    dns.as_ref().map(|(_, c)| c.health).unwrap_or_default(),
    dns.is_some(),
  );
  if let Some((addr, config)) = dns {
    isola_control::dns::Dns::start(addr, config, edges.clone(), state_rx.clone())
      .await
      .context("cannot start the DNS server")?;
  }
  let app = api::router(
    api::AppState::new(db.clone(), blobs.clone(), state_tx, validator)
      .with_scheduler(cron.clone())
      .with_kv(kv.clone())
      .with_queues(queues.clone())
      .with_prices(settings.billing.clone())
      .with_ceilings(settings.ceilings())
      .with_rate_limit(settings.rate_limit)
      .with_traces(traces.clone())
      .with_edge_health(edges),
  );
  let telemetry = isola_control::telemetry::ApiTelemetry::start(&settings.telemetry)?;
  let app = match &telemetry {
    Some(t) => t.layer(app),
    None => app,
  };
  let listener = tokio::net::TcpListener::bind(api_addr)
    .await
    .with_context(|| format!("cannot listen on {api_addr} for the API; pick another --api"))?;
  let api_addr = listener.local_addr()?;
  tracing::info!(listener = "api", addr = %api_addr, "listening");
  tracing::info!(api = %api_addr, quic = %quic_addr, revision, "serving");

  // The peer address goes into the audit log.
  let app = app.into_make_service_with_connect_info::<SocketAddr>();
  let api = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
  tokio::select! {
    result = api => result.context("the API server failed")?,
    result = quic::serve(quic_addr, &dir, quic::Shared {
      db,
      blobs,
      state: state_rx,
      scheduler: cron,
      kv,
      fleet,
      queues,
      traces,
    }) => {
      result.context("the QUIC control channel failed")?;
    }
  }
  if let Some(t) = telemetry {
    let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
  }
  tracing::info!("stopped");
  Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
  use tokio::signal::unix::signal;
  use tokio::signal::unix::SignalKind;
  let mut term = match signal(SignalKind::terminate()) {
    Ok(s) => s,
    Err(e) => {
      tracing::error!(error = %e, "cannot listen for SIGTERM");
      std::future::pending().await
    }
  };
  tokio::select! {
    _ = term.recv() => {}
    _ = tokio::signal::ctrl_c() => {}
  }
  tracing::info!("shutting down");
}

fn enroll_edge(
  dir: &Path,
  database: Option<&str>,
  name: &str,
  out: &Path,
  control_address: &[String],
) -> anyhow::Result<()> {
  isola_proto::names::check_edge_name(name)?;
  for a in control_address {
    if a.trim().is_empty() || a.contains(['"', '\\', '\n']) {
      bail!("invalid --control-address {a:?}; use host:port, like 127.0.0.1:8701");
    }
  }
  let (first, replicas) = control_address
    .split_first()
    .context("give --control-address")?;
  let replicas = if replicas.is_empty() {
    String::new()
  } else {
    let list: Vec<String> = replicas.iter().map(|a| format!("\"{a}\"")).collect();
    format!("addresses = [{}]\n", list.join(", "))
  };
  let db = open_db(dir, database)?;
  let ca = pki::Ca::load(dir)?;
  let issued = ca.issue_edge(name)?;
  std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
  pki::write_file(&out.join("ca.pem"), ca.cert_pem().as_bytes(), false)?;
  pki::write_file(&out.join("edge-key.pem"), issued.key_pem.as_bytes(), true)?;
  pki::write_file(&out.join("edge.pem"), issued.cert_pem.as_bytes(), false)?;
  let config = format!(
    "# Written by `isola-control enroll-edge`. Add a [server] section to choose where this edge\n\
     # serves HTTP (default 127.0.0.1:8080), e.g.:\n\
     #   [server]\n\
     #   listen = \"0.0.0.0:8080\"\n\
     # For geo DNS, say where it is and how the internet reaches it:\n\
     #   [edge]\n\
     #   region = \"eu-west\"\n\
     #   location = [50.11, 8.68]\n\
     #   public_ipv4 = [\"192.0.2.10\"]\n\
     \n\
     [control]\n\
     address = \"{first}\"\n\
     {replicas}\
     name = \"{name}\"\n\
     ca = \"ca.pem\"\n\
     cert = \"edge.pem\"\n\
     key = \"edge-key.pem\"\n"
  );
  let config_path = out.join("edge.toml");
  // An existing edge.toml may hold the operator's [server] section: keep it.
  let kept = config_path.exists();
  if !kept {
    pki::write_file(&config_path, config.as_bytes(), false)?;
  }
  // Recorded last: an edge the database knows always has its files.
  let new = db.enroll_edge(name)?;
  tracing::info!(
    edge = name,
    new,
    out = %out.display(),
    config = %config_path.display(),
    config_kept = kept,
    "enrolled edge"
  );
  println!(
    "isola-control enroll-edge: {} edge {name}; wrote edge.pem, edge-key.pem and ca.pem to {}",
    if new {
      "enrolled"
    } else {
      "re-issued the certificate of"
    },
    out.display()
  );
  if kept {
    println!(
      "isola-control enroll-edge: kept the existing {}; check its [control] section",
      config_path.display()
    );
  } else {
    println!(
      "isola-control enroll-edge: wrote {}; add a [server] section to it, then run \
       `isola-edge serve --config {}`",
      config_path.display(),
      config_path.display()
    );
  }
  Ok(())
}
