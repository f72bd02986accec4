//! `rollbackd`: the rollback agent daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rollback_agent::config::{Config, DEFAULT_CONFIG_PATH};

/// Keeps releases, activates them atomically, watches them with WebAssembly
/// health checks and rolls back when they fail.
#[derive(Debug, Parser)]
#[command(name = "rollbackd", version, about)]
struct Args {
    /// The agent's config file.
    #[arg(long, env = "ROLLBACK_AGENT_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLBACK_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let result = Config::load(&args.config)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(rollback_agent::daemon::run(config))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollbackd: {}", rollback_agent::error_text(e.chain()));
            ExitCode::FAILURE
        }
    }
}
