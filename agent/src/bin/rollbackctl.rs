//! `rollbackctl`: control a running `rollbackd` over its Unix socket.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = rollback_agent::ctl::Cli::parse();
    match rollback_agent::ctl::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rollbackctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
