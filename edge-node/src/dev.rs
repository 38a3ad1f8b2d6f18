//! `isola-edge dev`: one worker from disk on one port.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use isola_runtime::Bundle;
use isola_runtime::Worker;
use isola_runtime::WorkerConfig;

#[derive(clap::Args)]
pub struct DevArgs {
  /// The worker's main module (an ES module with `export default { fetch }`).
  entry: PathBuf,
  /// Address to listen on.
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
  let rt = tokio::runtime::Builder::new_current_thread()
    .enable_all()
    .build()
    .context("cannot start the async runtime")?;
  rt.block_on(async move {
    let name = args.name.clone().unwrap_or_else(|| {
      args
        .entry
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("worker")
        .to_string()
    });
    let mut config = WorkerConfig::new(name);
    for (k, v) in args.vars {
      config = config.var(k, v);
    }
    for (k, v) in args.json_vars {
      config = config.json_var(k, v);
    }
    let bundle = Bundle::from_entry_file(&args.entry)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
      .await
      .with_context(|| format!("cannot listen on {}", args.listen))?;
    let worker = Worker::new(bundle, &config, crate::logs::stdio_sink())
      .await
      .with_context(|| format!("cannot load {}", args.entry.display()))?;
    println!(
      "isola-edge dev: serving {} at http://{}",
      args.entry.display(),
      listener.local_addr()?
    );
    crate::server::serve(listener, worker.spawn()).await?;
    Ok(())
  })
}
