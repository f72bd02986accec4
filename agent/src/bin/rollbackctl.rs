//! `rollbackctl`: control a running `rollbackd` over its Unix socket.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = rollback_agent::ctl::Cli::parse();
    match rollback_agent::ctl::run(cli).await {
        Ok(code) => code,
        // A reader that went away (`rollbackctl history shop | head`) is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rollbackctl: {}", rollback_agent::error_text(e.chain()));
            ExitCode::FAILURE
        }
    }
}
