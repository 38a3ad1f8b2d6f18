//! `isola-edge`: the edge node binary.

mod config;
mod control;
mod dev;
mod logs;
mod serve;
mod server;
mod store;
mod tls;

use clap::Parser;
use clap::Subcommand;

#[derive(Parser)]
#[command(
  name = "isola-edge",
  version,
  about = "Isola edge node: runs Workers-style handlers in V8 isolates"
)]
struct Cli {
  #[command(subcommand)]
  command: Command,
}

#[derive(Subcommand)]
enum Command {
  /// Serve one worker from a file on disk, for development.
  Dev(dev::DevArgs),
  /// Run an edge node from its config file (edge.toml).
  Serve(serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
  tracing_subscriber::fmt()
    .with_env_filter(
      tracing_subscriber::EnvFilter::try_from_env("ISOLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
    )
    .with_writer(std::io::stderr)
    .init();
  let cli = Cli::parse();
  let result = match cli.command {
    Command::Dev(args) => dev::run(args),
    Command::Serve(args) => serve::run(args),
  };
  match result {
    Ok(()) => std::process::ExitCode::SUCCESS,
    Err(e) => {
      eprintln!("error: {e:#}");
      std::process::ExitCode::FAILURE
    }
  }
}
