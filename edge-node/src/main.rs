//! `isola-edge`: the edge node binary.

#![forbid(unsafe_code)]

mod admin;
mod config;
mod control;
mod dev;
mod healthcheck;
mod kv;
mod logs;
mod node;
mod queues;
mod sandbox;
mod serve;
mod server;
mod store;
mod telemetry;
mod tls;
mod trace;

#[global_allocator]
static ALLOCATOR: isola_alloc::Allocator = isola_alloc::Allocator;

use clap::Parser;
use clap::Subcommand;
use isola_io::log::LogFormat;

#[derive(Parser)]
#[command(
  name = "isola-edge",
  version,
  about = "Isola edge node: runs Workers-style handlers in V8 isolates",
  after_help = "The operator log goes to stderr, filtered by ISOLA_LOG (default: info; \
                e.g. ISOLA_LOG=debug or ISOLA_LOG=isola_edge=debug,warn). Worker console \
                output is printed apart from it."
)]
struct Cli {
  /// How the operator log is written: text lines for people, or JSON lines
  /// (`timestamp`, `level`, `target`, `fields`) for log shippers and tests.
  #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
  log_format: LogFormat,
  #[command(subcommand)]
  command: Command,
}

#[derive(Subcommand)]
enum Command {
  /// Serve one worker from a file on disk, for development.
  Dev(dev::DevArgs),
  /// Run an edge node from its config file (edge.toml).
  Serve(serve::ServeArgs),
  /// Poll an edge's /readyz and announce or withdraw its anycast route
  /// (BIRD) as its health changes; see deploy/anycast/.
  Healthcheck(healthcheck::HealthcheckArgs),
}

fn main() -> std::process::ExitCode {
  let cli = Cli::parse();
  isola_io::log::init(cli.log_format, "info");
  let result = match cli.command {
    Command::Dev(args) => dev::run(args),
    Command::Serve(args) => serve::run(args),
    Command::Healthcheck(args) => healthcheck::run(args),
  };
  match result {
    Ok(()) => std::process::ExitCode::SUCCESS,
    Err(e) => {
      // People read the reason on stderr as it stands; log shippers get it
      // as an event like any other.
      match cli.log_format {
        LogFormat::Text => eprintln!("error: {e:#}"),
        LogFormat::Json => tracing::error!(error = format!("{e:#}"), "stopped"),
      }
      std::process::ExitCode::FAILURE
    }
  }
}
