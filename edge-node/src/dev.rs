//! `isola-edge dev`: one worker from disk on one port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use isola_runtime::Bundle;
use isola_runtime::Config;
use isola_runtime::Fairness;
use isola_runtime::Limits;
use isola_runtime::Runtime;
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

pub fn run(args: DevArgs) -> anyhow::Result<()> {
  let name = args.name.clone().unwrap_or_else(|| {
    args
      .entry
      .file_stem()
      .and_then(|s| s.to_str())
      .unwrap_or("worker")
      .to_string()
  });
  let mut config = WorkerConfig::new(name.clone()).limits(
    Limits::default()
      .cpu(Duration::from_millis(args.cpu_ms))
      .memory_mib(args.memory_mb)
      .wall(Duration::from_millis(args.wall_ms)),
  );
  for (k, v) in args.vars {
    config = config.var(k, v);
  }
  for (k, v) in args.json_vars {
    config = config.json_var(k, v);
  }
  // Fail before listening if the entry cannot even be opened.
  let bundle = Bundle::from_entry_file(&args.entry)?;

  let runtime = Runtime::new(
    Config::default()
      .threads(1)
      .stock(1)
      .logs(crate::logs::stdio_sink())
      // One worker and no neighbours: a busy loop being fixed should fail
      // on its limit each time, not be throttled.
      .fairness(Fairness::default().enabled(false)),
  )?;
  let key = WorkerKey::new(name, "dev");
  let rt = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
  rt.block_on(runtime.preload(&key, bundle.clone(), config.clone()))
    .with_context(|| format!("cannot load {}", args.entry.display()))?;

  let listener = std::net::TcpListener::bind(args.listen)
    .with_context(|| format!("cannot listen on {}", args.listen))?;
  listener.set_nonblocking(true)?;
  let addr = listener.local_addr()?;
  // The banner is for the person at the terminal; the event is for
  // tools, which find the port there when `--listen` asked for port 0.
  println!(
    "isola-edge dev: serving {} at http://{addr}",
    args.entry.display()
  );
  tracing::info!(listener = "http", addr = %addr, entry = %args.entry.display(), "listening");

  // dev runs until the process is stopped: the sender is never used.
  let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
  let (done_tx, done_rx) = std::sync::mpsc::channel();
  let pool = runtime.clone();
  let handler = move |req| {
    let (pool, key) = (pool.clone(), key.clone());
    let source = (bundle.clone(), config.clone());
    async move {
      match pool.fetch(&key, move || Ok(source), req).await {
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
