//! `rollbackd`: the rollback agent daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rollback_agent::config::{Config, DEFAULT_CONFIG_PATH};

/// Keeps releases, activates them atomically, watches them with WebAssembly
/// health checks and rolls back when they fail.
#[derive(Debug, Parser)]
#[command(
    name = "rollbackd",
    version,
    about,
    after_help = "Exit status: 0 stopped cleanly (SIGTERM, SIGINT) or --check-config found the config valid; \
1 the config, a plugin, the store or the socket could not be used (the message is on stderr).\n\n\
Files: /etc/rollback-agent/agent.toml (config), /run/rollback-agent/control.sock (control socket), \
/var/lib/rollback-agent (state). Signals: SIGHUP reloads the config."
)]
struct Args {
    /// The agent's config file.
    #[arg(long, env = "ROLLBACK_AGENT_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log format: `human`, `json` (one object per line) or `journald`
    /// (structured fields); `auto` picks journald when stderr is the journal.
    #[arg(long, default_value = "auto", value_parser = ["auto", "human", "json", "journald"])]
    log_format: String,
    /// Validate the config (and that every plugin file is there and matches
    /// its pin), print the result and exit: 0 valid, 1 invalid.
    #[arg(long)]
    check_config: bool,
    /// Print the man page (roff) and exit; packaging uses it.
    #[arg(long, hide = true)]
    man: bool,
}

/// `--check-config`: everything that can be checked without starting.
fn check_config(config: &Config) -> anyhow::Result<String> {
    rollback_agent::control::Authz::new(
        config.agent.admin_group.as_deref(),
        config.agent.socket_group.as_deref(),
    )?;
    let (mut checks, mut hooks) = (0, 0);
    for (app, a) in &config.apps {
        let entries = a
            .checks
            .iter()
            .map(|c| ("check", &c.name, &c.entry))
            .chain(a.hooks.iter().map(|h| ("hook", &h.name, &h.entry)));
        for (kind, name, entry) in entries {
            let bytes = std::fs::read(&entry.plugin).with_context(|| {
                format!(
                    "app `{app}`, {kind} `{name}`: cannot read plugin {}",
                    entry.plugin.display()
                )
            })?;
            if let Some(pin) = &entry.sha256 {
                use sha2::Digest;
                let actual = format!("{:x}", sha2::Sha256::digest(&bytes));
                if &actual != pin {
                    anyhow::bail!(
                        "app `{app}`, {kind} `{name}`: plugin {} has SHA-256 {actual}, the config pins {pin}",
                        entry.plugin.display()
                    );
                }
            }
            if kind == "check" {
                checks += 1;
            } else {
                hooks += 1;
            }
        }
    }
    Ok(format!(
        "config OK: {}: {} app(s), {checks} check(s), {hooks} hook(s)",
        config.path.display(),
        config.apps.len()
    ))
}

/// Whether stderr is connected to the journal (systemd sets `JOURNAL_STREAM`
/// to the device and inode of the stream it gave the service).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

fn init_logging(format: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLBACK_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = match format {
        "auto" if stderr_is_journal() => "journald",
        "auto" => "human",
        other => other,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        "journald" => match tracing_journald::layer() {
            Ok(layer) => registry
                .with(layer.with_syslog_identifier("rollbackd".into()))
                .init(),
            Err(e) => {
                registry
                    .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                    .init();
                tracing::warn!("journald unavailable ({e}); logging to stderr");
            }
        },
        "json" => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        _ => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        let mut page = Vec::new();
        let man = clap_mangen::Man::new(<Args as clap::CommandFactory>::command());
        return match man.render(&mut page) {
            Ok(()) => {
                use std::io::Write;
                let _ = std::io::stdout().write_all(&page);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rollbackd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check_config {
        return match Config::load(&args.config)
            .map_err(anyhow::Error::from)
            .and_then(|c| check_config(&c))
        {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rollbackd: {}", rollback_agent::error_text(e.chain()));
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&args.log_format);
    let result = Config::load(&args.config)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let result = rt.block_on(rollback_agent::daemon::main(config));
            // Calls still in flight get a moment to reach their deadline; a
            // task that never yields must not keep the process alive.
            rt.shutdown_timeout(std::time::Duration::from_secs(3));
            result
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollbackd: {}", rollback_agent::error_text(e.chain()));
            ExitCode::FAILURE
        }
    }
}
