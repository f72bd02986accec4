//! `rollbackctl`: the operator's client for the control socket.
//!
//! Owns the command line (clap), sending one Varlink call per command, and
//! printing the reply as aligned tables or, with `--json`, as the reply's
//! JSON parameters. Exit codes: 0 success, 1 error (message on stderr),
//! 2 usage, 3 a deploy that was rolled back or left the app degraded.
//!
//! Must never touch the agent's files or store: everything goes through the
//! socket, and it shares only `protocol` with the server. The one command
//! that needs no agent, `plugin test`, runs a component with the `plugin`
//! module directly.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Outcome, Severity};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use tokio::io::BufReader;
use tokio::net::UnixStream;

use crate::config::{HostRule, DEFAULT_SOCKET_PATH};
use crate::plugin::{
    CheckInput, Grants, MemoryKv, Phase, PluginHost, ReleaseInfo, Sandbox, Status,
};
use crate::protocol::LiveEvent;
use crate::protocol::{self, method, Call, RemoteError, Reply};

/// Exit code of a deploy that was rolled back (or left the app degraded).
pub const EXIT_ROLLED_BACK: u8 = 3;
/// Exit code when nothing failed but a (critical) result was inconclusive,
/// or a deploy's bake ended without a verdict (the app is held).
pub const EXIT_INCONCLUSIVE: u8 = 4;

/// Control the rollback agent.
#[derive(Debug, Parser)]
#[command(
    name = "rollbackctl",
    version,
    about = "Control the rollback agent (rollbackd) over its Unix socket",
    long_about = None,
    after_help = "Exit status: 0 success; 1 error (the message is on stderr); 2 usage; \
3 a deploy --wait that was rolled back or left the app degraded, a failing `check`, \
or a failing `plugin test`; 4 no verdict: a deploy --wait that left the app held, \
an inconclusive `check` or `plugin test`.\n\n\
Examples:\n  rollbackctl status\n  rollbackctl deploy shop ./build --version 1.4.2 --wait\n  \
rollbackctl rollback shop --reason \"wrong prices\"\n  rollbackctl history shop --limit 50\n  \
rollbackctl watch shop\n  rollbackctl incident shop > incident.md"
)]
pub struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, env = "ROLLBACK_AGENT_SOCKET", default_value = DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,
    /// Colour the output: `auto` (only on a terminal, and not when NO_COLOR
    /// is set), `always` or `never`.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// When to colour the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Commands sent to the agent.
    #[command(flatten)]
    Agent(AgentCommand),
    /// Work with plugin components locally (no agent needed).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of rollbackctl.
    Man,
}

mod fleet;

/// The commands that talk to a running agent.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Fleet rollouts through etcd (the agent needs `[fleet]`).
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Show each app's state, active release and last check results.
    Status {
        /// Only this app.
        app: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List an app's releases.
    Releases {
        /// The app.
        app: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stage a release from a directory or an archive (.tar.gz, .tgz,
    /// .tar.zst, .tzst), activate it and bake it.
    #[command(
        after_help = "Exit status with --wait: 0 marked good, 3 rolled back (or degraded), 4 held (no verdict: promote or roll back), 1 error."
    )]
    Deploy {
        /// The app.
        app: String,
        /// A release directory or archive (on this host).
        source: PathBuf,
        /// The new release's version.
        #[arg(long)]
        version: String,
        /// Wait until the bake decides: good (exit 0), rolled back (exit 3) or
        /// held (exit 4).
        #[arg(long)]
        wait: bool,
        /// The source commit (recorded with the release).
        #[arg(long)]
        commit: Option<String>,
        /// What changed (recorded with the release).
        #[arg(long)]
        message: Option<String>,
        /// The content digest the release must have (sha256:<hex>, as
        /// `releases --json` shows it); another is refused.
        #[arg(long)]
        digest: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stage a release beside the active one without activating it (for
    /// `activate` later, or a fleet rollout).
    Stage {
        /// The app.
        app: String,
        /// A release directory or archive (on this host).
        source: PathBuf,
        /// The new release's version.
        #[arg(long)]
        version: String,
        /// The source commit (recorded with the release).
        #[arg(long)]
        commit: Option<String>,
        /// What changed (recorded with the release).
        #[arg(long)]
        message: Option<String>,
        /// The content digest the release must have (sha256:<hex>, as
        /// `releases --json` shows it); another is refused.
        #[arg(long)]
        digest: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Swap back to the last good release (or --to VERSION) and mark the active one failed.
    Rollback {
        /// The app.
        app: String,
        /// The release to restore.
        #[arg(long)]
        to: Option<String>,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The timeline of the app's last rollback, as Markdown for a
    /// root-cause report (or JSON).
    Incident {
        /// The app.
        app: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an app's events, newest first.
    History {
        /// The app.
        app: String,
        /// At most this many events.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch to an existing release now, without a bake (the emergency path);
    /// clears `degraded`.
    Activate {
        /// The app.
        app: String,
        /// The release to activate.
        version: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark the held (or still baking) release good, as if its bake had
    /// passed: the operator's verdict when the checks could not give one.
    Promote {
        /// The app.
        app: String,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Freeze automatic actions (checks keep running and recording).
    Pause {
        /// The app.
        app: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume automatic actions.
    Resume {
        /// The app.
        app: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the app's checks now and print the results (nothing is decided).
    #[command(
        after_help = "Exit status: 0 every critical check passed (or warned), 3 a critical check failed or errored, 4 a critical check was inconclusive and none failed, 1 error."
    )]
    Check {
        /// The app.
        app: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow what the agent does, live: events and check results, one line
    /// each, until interrupted.
    #[command(
        after_help = "Examples:\n  rollbackctl watch\n  rollbackctl watch shop --json | jq ."
    )]
    Watch {
        /// Only this app.
        app: Option<String>,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// List the loaded plugins, their digests and what they were granted.
    Plugins {
        /// Only this app's.
        app: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `rollbackctl plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a health check once, here, and print what it reports.
    #[command(
        after_help = "Exit status: 0 pass or warn, 3 fail, 4 inconclusive, 1 error (trap, timeout, denied host, bad plugin), 2 usage.\n\n\
Example:\n  rollbackctl plugin test target/plugins/http-probe.wasm \\\n    --config url=http://127.0.0.1:8080/health --allow-host 127.0.0.1:8080"
    )]
    Test {
        /// The component (.wasm, or .wat text).
        plugin: PathBuf,
        /// A config value, KEY=VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
        config: Vec<(String, String)>,
        /// A secret, KEY=VALUE (repeatable); never printed.
        #[arg(long = "secret", value_name = "KEY=VALUE", value_parser = key_value)]
        secret: Vec<(String, String)>,
        /// A host the plugin may reach, HOST[:PORT] (repeatable).
        #[arg(long = "allow-host", value_name = "HOST[:PORT]", value_parser = host_rule)]
        allow_host: Vec<HostRule>,
        /// Deadline of the call.
        #[arg(long, default_value = "5s", value_parser = duration)]
        timeout: Duration,
        /// Memory cap of the call.
        #[arg(long, default_value = "64MiB", value_parser = size)]
        memory_limit: u64,
        /// The phase the check is told: `bake` (right after a deploy) or
        /// `steady` (the release was accepted as good).
        #[arg(long, default_value = "bake", value_parser = ["bake", "steady"])]
        phase: String,
        /// The version of the active release the check is told.
        #[arg(long = "release", value_name = "VERSION", default_value = "0.0.0-test")]
        release: String,
        /// Keep the plugin's kv store in this JSON file between runs (read
        /// if it exists, written after the call), for checks that compare
        /// with an earlier run.
        #[arg(long, value_name = "FILE")]
        kv: Option<PathBuf>,
        /// Keep compiled components in this directory (created 0700; refused
        /// if another user owns it or others may write to it): a second run
        /// of the same component skips compiling.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What one `plugin test` run is told and where its kv lives.
struct TestRun {
    phase: Phase,
    release: String,
    kv: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn host_rule(s: &str) -> Result<HostRule, String> {
    HostRule::parse(s)
}

fn duration(s: &str) -> Result<Duration, String> {
    crate::config::bounded_duration(s, crate::config::MAX_DEADLINE)
}

fn size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("`{s}` is not a size like 64MiB ({e})"))
}

/// The agent's error reply as a command error: its message and Varlink name.
fn remote_error(e: RemoteError) -> anyhow::Error {
    anyhow::anyhow!("{} ({})", e.message, e.name)
}

/// A call that expects a reply (several with `more`).
fn call_of(method: &str, parameters: serde_json::Value, more: bool) -> Call {
    Call {
        method: method.to_string(),
        parameters,
        oneway: false,
        more,
    }
}

/// A connection to the agent.
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connects to the control socket.
    pub async fn connect(path: &Path) -> anyhow::Result<Client> {
        let stream = UnixStream::connect(path).await.with_context(|| {
            format!(
                "cannot connect to the agent at {} (is rollbackd running?)",
                path.display()
            )
        })?;
        let (r, w) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Sends one call; an error reply becomes an error naming the Varlink error.
    pub async fn request<T: DeserializeOwned>(
        &mut self,
        method: &str,
        parameters: serde_json::Value,
    ) -> anyhow::Result<(T, serde_json::Value)> {
        self.call(method, parameters).await?.map_err(remote_error)
    }

    /// Sends one call and reads its reply.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        method: &str,
        parameters: serde_json::Value,
    ) -> anyhow::Result<Result<(T, serde_json::Value), RemoteError>> {
        self.send(method, parameters, false).await?;
        Ok(match self.next_reply().await? {
            Ok((parameters, _)) => {
                let typed = serde_json::from_value(parameters.clone())
                    .context("the agent sent an unexpected reply")?;
                Ok((typed, parameters))
            }
            Err(e) => Err(e),
        })
    }

    /// Sends a call; with `more` the agent may answer with several replies,
    /// read with [`Client::next_reply`].
    pub async fn send(
        &mut self,
        method: &str,
        parameters: serde_json::Value,
        more: bool,
    ) -> anyhow::Result<()> {
        let call = call_of(method, parameters, more);
        protocol::write_message(&mut self.writer, &call)
            .await
            .context("cannot send to the agent")
    }

    /// `send`, with `file`'s descriptor passed along (`SCM_RIGHTS`).
    pub async fn send_with_fd(
        &mut self,
        method: &str,
        parameters: serde_json::Value,
        more: bool,
        file: &std::fs::File,
    ) -> anyhow::Result<()> {
        let call = call_of(method, parameters, more);
        let mut bytes = serde_json::to_vec(&call).context("cannot encode the call")?;
        bytes.push(0);
        crate::fdpass::send_with_fd(&mut self.writer, &bytes, std::os::fd::AsFd::as_fd(file))
            .await
            .context("cannot send to the agent")
    }

    /// The next reply: its parameters and whether more follow, or the
    /// agent's error.
    pub async fn next_reply(
        &mut self,
    ) -> anyhow::Result<Result<(serde_json::Value, bool), RemoteError>> {
        let bytes = protocol::read_message(&mut self.reader, protocol::MAX_REPLY, None)
            .await
            .context("cannot read the agent's reply")?
            .context("the agent closed the connection without replying")?;
        let reply: Reply =
            serde_json::from_slice(&bytes).context("the agent sent an invalid reply")?;
        Ok(match reply.error {
            Some(name) => Err(RemoteError::from_reply(name, &reply.parameters)),
            None => Ok((reply.parameters, reply.continues)),
        })
    }
}

use protocol::rfc3339 as time;

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

/// Whether stdout and stderr get colour; decided once, at start.
static COLOUR_OUT: AtomicBool = AtomicBool::new(false);
static COLOUR_ERR: AtomicBool = AtomicBool::new(false);

fn decide_colour(choice: ColorChoice) {
    use std::io::IsTerminal;
    let (out, err) = match choice {
        ColorChoice::Always => (true, true),
        ColorChoice::Never => (false, false),
        ColorChoice::Auto => {
            // https://no-color.org: set and not empty means no colour.
            let allowed = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            (
                allowed && std::io::stdout().is_terminal(),
                allowed && std::io::stderr().is_terminal(),
            )
        }
    };
    COLOUR_OUT.store(out, Ordering::Relaxed);
    COLOUR_ERR.store(err, Ordering::Relaxed);
}

/// The ANSI colour of a state, outcome or event word, if it has one.
fn tint_of(word: &str) -> Option<&'static str> {
    match word {
        "healthy" | "good" | "pass" | "marked-good" | "resumed" => Some("32"),
        "baking" | "deploying" | "warn" | "paused" | "staged" | "lagged" | "held"
        | "inconclusive" | "bake-extended" => Some("33"),
        "degraded" | "failed" | "fail" | "error" | "rolled-back" | "rolling-back"
        | "check-failed" | "deploy-failed" | "restart-failed" | "hook-failed"
        | "snapshot-failed" => Some("31"),
        _ => None,
    }
}

/// `text` in the colour of `word` when `on`; padding inside `text` is kept,
/// so columns stay aligned.
fn paint(text: &str, word: &str, on: bool) -> String {
    match tint_of(word.trim()) {
        Some(code) if on => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text.to_string(),
    }
}

/// Prints rows as columns separated by two spaces; the last column is not
/// padded. Cells that are a state or outcome word are coloured on a terminal.
fn table(rows: &[Vec<String>]) -> String {
    let colour = COLOUR_OUT.load(Ordering::Relaxed);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let cell = &cell.replace(['\n', '\r'], " ");
            let padded = if c + 1 == row.len() {
                cell.clone()
            } else {
                format!("{cell:<w$}", w = widths[c])
            };
            line.push_str(&paint(&padded, cell, colour));
            if c + 1 < row.len() {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Writes to stdout; a closed pipe (`| head`) surfaces as an io error.
fn out(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::io::stdout().lock().write_all(text.as_bytes())
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v)?))?;
    Ok(())
}

/// One live event as a line: time, app, kind, then what matters for the
/// kind (swap, check and result, hook, reason, who).
fn live_line(e: &LiveEvent, with_app: bool, colour: bool) -> String {
    let mut line = format!("{}  ", e.time);
    if with_app {
        line.push_str(&format!("{:<12}  ", e.app));
    }
    line.push_str(&paint(&format!("{:<17}", e.kind), e.kind.as_str(), colour));
    let mut parts: Vec<String> = Vec::new();
    match (&e.from, &e.to) {
        (None, None) => parts.extend(e.version.clone()),
        (from, to) => parts.push(format!("{} -> {}", opt(from), opt(to))),
    }
    if let Some(check) = &e.check {
        match &e.outcome {
            Some(o) => parts.push(format!(
                "{check}: {}",
                paint(o.as_str(), o.as_str(), colour)
            )),
            None => parts.push(format!("check {check}")),
        }
    }
    if let Some(hook) = &e.hook {
        parts.push(format!("hook {hook}"));
    }
    if let Some(ms) = e.duration_ms {
        parts.push(format!("{ms} ms"));
    }
    if let Some(summary) = e.summary.as_deref().filter(|s| !s.is_empty()) {
        parts.push(summary.to_string());
    }
    if let Some(reason) = &e.reason {
        parts.push(reason.clone());
    }
    if let Some(actor) = e.actor.as_ref().filter(|a| a.name != "agent") {
        parts.push(format!("by {}", actor.name));
    }
    line.push_str("  ");
    line.push_str(&parts.join("  ").replace(['\n', '\r'], " "));
    line.trim_end().to_string() + "\n"
}

/// `watch`: prints every reply of a `Watch` call until the agent ends it.
async fn watch(client: &mut Client, app: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    client
        .send(method::WATCH, serde_json::json!({ "app": app }), true)
        .await?;
    let colour = COLOUR_OUT.load(Ordering::Relaxed);
    loop {
        let (parameters, continues) = client.next_reply().await?.map_err(remote_error)?;
        let reply: protocol::WatchReply =
            serde_json::from_value(parameters).context("the agent sent an unexpected reply")?;
        if json {
            out(&format!("{}\n", serde_json::to_string(&reply.event)?))?;
        } else {
            out(&live_line(&reply.event, app.is_none(), colour))?;
        }
        if !continues {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    decide_colour(cli.color);
    match cli.command {
        Command::Plugin(PluginCommand::Test {
            plugin,
            config,
            secret,
            allow_host,
            timeout,
            memory_limit,
            phase,
            release,
            kv,
            cache_dir,
            json,
        }) => {
            let grants = Grants {
                app: "test".into(),
                entry: plugin
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "plugin".into()),
                plugin: plugin
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                allow_hosts: allow_host,
                config: config.into_iter().collect(),
                secrets: secret.into_iter().collect(),
                timeout,
                memory_limit,
                max_response_bytes: crate::config::DEFAULT_MAX_RESPONSE_BYTES,
            };
            let run = TestRun {
                phase: if phase == "steady" {
                    Phase::Steady
                } else {
                    Phase::Bake
                },
                release,
                kv,
                cache_dir,
            };
            plugin_test(&plugin, grants, run, json).await
        }
        Command::Agent(cmd) => agent_command(&cli.socket, cmd).await,
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "rollbackctl",
                &mut buf,
            );
            out(&String::from_utf8_lossy(&buf))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut buf)?;
            out(&String::from_utf8_lossy(&buf))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `pause` and `resume`: the same call to two methods.
async fn pause_or_resume(
    client: &mut Client,
    m: &str,
    app: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (r, raw): (protocol::PauseReply, _) =
        client.request(m, serde_json::json!({ "app": app })).await?;
    if json {
        print_json(&raw)?;
    } else if r.paused {
        out(&format!("{}: automatic actions paused\n", r.app))?;
    } else {
        out(&format!("{}: automatic actions resumed\n", r.app))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn agent_command(socket: &Path, command: AgentCommand) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(socket).await?;
    match command {
        AgentCommand::Fleet(cmd) => return fleet::run(&mut client, cmd).await,
        AgentCommand::Activate { app, version, json } => {
            let (r, raw): (protocol::RollbackReply, _) = client
                .request(
                    method::ACTIVATE,
                    serde_json::json!({ "app": app, "version": version }),
                )
                .await?;
            if json {
                print_json(&raw)?;
            } else {
                out(&format!(
                    "{}: activated {} (was {})\n",
                    r.app,
                    r.to,
                    opt(&r.from)
                ))?;
            }
        }
        AgentCommand::Promote { app, reason, json } => {
            let (r, raw): (protocol::PromoteReply, _) = client
                .request(
                    method::PROMOTE,
                    serde_json::json!({ "app": app, "reason": reason }),
                )
                .await?;
            if json {
                print_json(&raw)?;
            } else {
                out(&format!("{}: {} promoted: marked good\n", r.app, r.version))?;
            }
        }
        AgentCommand::Pause { app, json } => {
            return pause_or_resume(&mut client, method::PAUSE, &app, json).await;
        }
        AgentCommand::Resume { app, json } => {
            return pause_or_resume(&mut client, method::RESUME, &app, json).await;
        }
        AgentCommand::Check { app, json } => {
            let (r, raw): (protocol::CheckReply, _) = client
                .request(method::CHECK, serde_json::json!({ "app": app }))
                .await?;
            if json {
                print_json(&raw)?;
            } else {
                let mut rows = vec![["CHECK", "SEVERITY", "RESULT", "TIME", "SUMMARY"]
                    .map(String::from)
                    .to_vec()];
                for c in &r.checks {
                    rows.push(vec![
                        c.name.clone(),
                        c.severity.to_string(),
                        c.outcome.to_string(),
                        format!("{} ms", c.duration_ms),
                        c.summary.clone(),
                    ]);
                }
                out(&table(&rows))?;
            }
            let critical = |outcomes: &[Outcome]| {
                r.checks
                    .iter()
                    .any(|c| c.severity == Severity::Critical && outcomes.contains(&c.outcome))
            };
            return Ok(if critical(&[Outcome::Fail, Outcome::Error]) {
                ExitCode::from(EXIT_ROLLED_BACK)
            } else if critical(&[Outcome::Inconclusive]) {
                ExitCode::from(EXIT_INCONCLUSIVE)
            } else {
                ExitCode::SUCCESS
            });
        }
        AgentCommand::Watch { app, json } => return watch(&mut client, app, json).await,
        AgentCommand::Plugins { app, json } => {
            let (r, raw): (protocol::PluginsReply, _) = client
                .request(method::PLUGINS, serde_json::json!({ "app": app }))
                .await?;
            if json {
                print_json(&raw)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = vec![[
                "APP",
                "KIND",
                "NAME",
                "SHA256",
                "CACHED",
                "ALLOW HOSTS",
                "SECRETS",
                "PLUGIN",
            ]
            .map(String::from)
            .to_vec()];
            for p in &r.plugins {
                let mut kind = p.kind.clone();
                if !p.on.is_empty() {
                    kind = format!("{kind} ({})", p.on.join(","));
                }
                rows.push(vec![
                    p.app.clone(),
                    kind,
                    p.name.clone(),
                    format!(
                        "{}{}",
                        &p.sha256[..12.min(p.sha256.len())],
                        if p.pinned { " (pinned)" } else { "" }
                    ),
                    if p.cached { "yes" } else { "no" }.into(),
                    if p.allow_hosts.is_empty() {
                        "-".into()
                    } else {
                        p.allow_hosts.join(",")
                    },
                    if p.secrets.is_empty() {
                        "-".into()
                    } else {
                        p.secrets.join(",")
                    },
                    p.plugin.clone(),
                ]);
            }
            out(&table(&rows))?;
        }
        AgentCommand::Status { app, json } => {
            let (r, raw): (protocol::StatusReply, _) = client
                .request(method::STATUS, serde_json::json!({ "app": app }))
                .await?;
            if json {
                // One app: its object; all apps: `{"apps": [...]}`.
                print_json(if app.is_some() { &raw["apps"][0] } else { &raw })?;
                return Ok(ExitCode::SUCCESS);
            }
            if r.apps.is_empty() {
                out("no apps: add [apps.NAME] blocks to the agent's config\n")?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = vec![["APP", "STATE", "ACTIVE", "LAST GOOD", "REASON"]
                .map(String::from)
                .to_vec()];
            for a in &r.apps {
                rows.push(vec![
                    a.app.clone(),
                    a.state.to_string(),
                    opt(&a.active).into(),
                    opt(&a.last_good).into(),
                    opt(&a.reason).into(),
                ]);
            }
            out(&table(&rows))?;
            if let Some(why) = r.apps.iter().find_map(|a| a.store_unwritable.as_ref()) {
                out(&format!(
                    "\nwarning: the agent's state store cannot be written ({why}); \
                     this status may be stale, events are queued until it can\n"
                ))?;
            }
            for a in &r.apps {
                if a.checks.is_empty() {
                    continue;
                }
                out(&format!("\n{} checks:\n", a.app))?;
                let mut rows = vec![["CHECK", "RESULT", "FAILS", "AT", "SUMMARY"]
                    .map(String::from)
                    .to_vec()];
                for (name, c) in &a.checks {
                    rows.push(vec![
                        name.clone(),
                        c.outcome.to_string(),
                        c.consecutive_failures.to_string(),
                        time(c.at_ms),
                        c.summary.clone(),
                    ]);
                }
                out(&table(&rows))?;
            }
        }
        AgentCommand::Releases { app, json } => {
            let (r, raw): (protocol::ReleasesReply, _) = client
                .request(method::RELEASES, serde_json::json!({ "app": app }))
                .await?;
            if json {
                print_json(&raw)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = vec![[
                "VERSION",
                "STATE",
                "CURRENT",
                "CREATED",
                "ACTIVATED",
                "COMMIT",
                "DIGEST",
                "NOTE",
            ]
            .map(String::from)
            .to_vec()];
            for rel in &r.releases {
                rows.push(vec![
                    rel.version.clone(),
                    rel.state.to_string(),
                    if rel.current {
                        "*".into()
                    } else {
                        String::new()
                    },
                    time(rel.created_at_ms),
                    rel.activated_at_ms.map(time).unwrap_or_else(|| "-".into()),
                    opt(&rel.commit).into(),
                    // Enough of it to tell two apart; `--json` has it whole.
                    rel.digest
                        .as_deref()
                        .map(|d| d.chars().take(19).collect())
                        .unwrap_or_else(|| "-".into()),
                    // Why it failed, else what it changed.
                    rel.reason
                        .clone()
                        .or_else(|| rel.message.clone())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            out(&table(&rows))?;
        }
        AgentCommand::Stage {
            app,
            source,
            version,
            commit,
            message,
            digest,
            json,
        } => {
            let (source, opened) = open_source(&source)?;
            let params = serde_json::json!({
                "app": app, "source": source, "version": version,
                "commit": commit, "message": message, "digest": digest, "source_fd": true,
            });
            client
                .send_with_fd(method::STAGE, params, false, &opened)
                .await?;
            let (raw, _) = client.next_reply().await?.map_err(remote_error)?;
            let r: protocol::StageReply = serde_json::from_value(raw.clone())
                .context("the agent sent an unexpected reply")?;
            if json {
                print_json(&raw)?;
            } else {
                out(&format!(
                    "{} {}: staged, not active ({})\n",
                    r.app,
                    r.version,
                    opt(&r.digest)
                ))?;
            }
        }
        AgentCommand::Deploy {
            app,
            source,
            version,
            wait,
            commit,
            message,
            digest,
            json,
        } => {
            let (source, opened) = open_source(&source)?;
            let params = serde_json::json!({
                "app": app, "source": source, "version": version, "wait": wait,
                "commit": commit, "message": message, "digest": digest, "source_fd": true,
            });
            client
                .send_with_fd(method::DEPLOY, params, true, &opened)
                .await?;
            let colour = COLOUR_ERR.load(Ordering::Relaxed);
            // A check's result is shown when it changes, not on every run.
            let mut last_outcome = std::collections::HashMap::new();
            let raw = loop {
                let (parameters, continues) = client.next_reply().await?.map_err(remote_error)?;
                if !continues {
                    break parameters;
                }
                // Progress goes to stderr, so stdout holds only the result.
                if let (false, Some(event)) = (json, parameters.get("event")) {
                    if let Ok(event) = serde_json::from_value::<LiveEvent>(event.clone()) {
                        let changed = match (&event.check, &event.outcome) {
                            (Some(check), Some(outcome)) => {
                                last_outcome.insert(check.clone(), *outcome) != Some(*outcome)
                            }
                            _ => true,
                        };
                        if changed {
                            eprint!("{}", live_line(&event, false, colour));
                        }
                    }
                }
            };
            let r: protocol::DeployReply = serde_json::from_value(raw.clone())
                .context("the agent sent an unexpected reply")?;
            if json {
                print_json(&raw)?;
            } else {
                match r.outcome.as_str() {
                    "baking" => out(&format!("{} {}: activated, baking\n", r.app, r.version))?,
                    "good" => out(&format!(
                        "{} {}: passed its bake, marked good\n",
                        r.app, r.version
                    ))?,
                    "rolled-back" => out(&format!(
                        "{} {}: rolled back to {}: {}\n",
                        r.app,
                        r.version,
                        opt(&r.active),
                        opt(&r.reason)
                    ))?,
                    other => out(&format!(
                        "{} {}: {other}: {}\n",
                        r.app,
                        r.version,
                        opt(&r.reason)
                    ))?,
                }
            }
            return Ok(match r.outcome.as_str() {
                "rolled-back" | "degraded" => ExitCode::from(EXIT_ROLLED_BACK),
                "held" => ExitCode::from(EXIT_INCONCLUSIVE),
                _ => ExitCode::SUCCESS,
            });
        }
        AgentCommand::Rollback {
            app,
            to,
            reason,
            json,
        } => {
            let params = serde_json::json!({ "app": app, "to": to, "reason": reason });
            let (r, raw): (protocol::RollbackReply, _) =
                client.request(method::ROLLBACK, params).await?;
            if json {
                print_json(&raw)?;
            } else {
                out(&format!(
                    "{}: rolled back from {} to {}\n",
                    r.app,
                    opt(&r.from),
                    r.to
                ))?;
            }
        }
        AgentCommand::Incident { app, json } => {
            let (history, _): (protocol::HistoryReply, _) = client
                .request(
                    method::HISTORY,
                    serde_json::json!({ "app": app, "limit": 10_000 }),
                )
                .await?;
            let (status, _): (protocol::StatusReply, _) = client
                .request(method::STATUS, serde_json::json!({ "app": app }))
                .await?;
            let now = status.apps.into_iter().next();
            let Some(incident) = crate::incident::last_rollback(&app, &history.events, now) else {
                bail!("app `{app}` has no rollback in its history");
            };
            if json {
                print_json(&serde_json::to_value(&incident)?)?;
            } else {
                out(&crate::incident::markdown(&incident))?;
            }
        }
        AgentCommand::History { app, limit, json } => {
            let params = serde_json::json!({ "app": app, "limit": limit });
            let (r, raw): (protocol::HistoryReply, _) =
                client.request(method::HISTORY, params).await?;
            if json {
                print_json(&raw)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = vec![[
                "TIME",
                "ACTOR",
                "EVENT",
                "VERSION",
                "SWAP",
                "CHECK/HOOK",
                "REASON",
            ]
            .map(String::from)
            .to_vec()];
            for view in &r.events {
                let e = &view.event;
                let swap = match (&e.from, &e.to) {
                    (None, None) => "-".to_string(),
                    (from, to) => format!("{} -> {}", opt(from), opt(to)),
                };
                let subject = match (&e.check, &e.hook) {
                    (Some(c), _) => c.clone(),
                    (None, Some(h)) => format!("hook {h}"),
                    (None, None) => "-".into(),
                };
                rows.push(vec![
                    view.time.clone(),
                    e.actor.name.clone(),
                    e.kind.as_str().into(),
                    opt(&e.version).into(),
                    swap,
                    subject,
                    opt(&e.reason).into(),
                ]);
            }
            out(&table(&rows))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `rollbackctl plugin test`: one call of a health check, printed.
/// Reads `--kv FILE`: a JSON object of key to value, a value being a string
/// (UTF-8) or an array of bytes. A missing file is an empty store.
fn read_kv(path: &Path) -> anyhow::Result<MemoryKv> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Bytes(Vec<u8>),
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MemoryKv::default()),
        Err(e) => return Err(e).with_context(|| format!("--kv {}", path.display())),
    };
    let map: std::collections::BTreeMap<String, Value> =
        serde_json::from_str(&text).with_context(|| {
            format!(
                "--kv {}: not a JSON object of key to string or byte array",
                path.display()
            )
        })?;
    Ok(MemoryKv::from_entries(map.into_iter().map(|(k, v)| {
        let bytes = match v {
            Value::Text(t) => t.into_bytes(),
            Value::Bytes(b) => b,
        };
        (k, bytes)
    })))
}

/// Writes `--kv FILE` atomically (a temporary file renamed over it).
fn write_kv(path: &Path, kv: &MemoryKv) -> anyhow::Result<()> {
    let map: serde_json::Map<String, serde_json::Value> = kv
        .entries()
        .into_iter()
        .map(|(k, v)| {
            let value = match String::from_utf8(v) {
                Ok(t) => serde_json::Value::from(t),
                Err(e) => serde_json::Value::from(e.into_bytes()),
            };
            (k, value)
        })
        .collect();
    let text = serde_json::to_string_pretty(&map)? + "\n";
    crate::fsutil::write_atomic(path, text.as_bytes())
        .with_context(|| format!("--kv {}", path.display()))
}

async fn plugin_test(
    path: &Path,
    grants: Grants,
    run: TestRun,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let kv = Arc::new(match &run.kv {
        Some(file) => read_kv(file)?,
        None => MemoryKv::default(),
    });
    let host = PluginHost::with_options(crate::plugin::HostOptions {
        cache_dir: run.cache_dir.clone(),
        ..Default::default()
    })?;
    let loaded = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || host.load(&path).map(|p| (host, p))).await?
    };
    let (_host, plugin) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("rollbackctl: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let sandbox = Sandbox::new(grants, kv.clone())?;
    let now = crate::store::now_ms();
    let input = CheckInput {
        app: "test".into(),
        check: sandbox.grants().entry.clone(),
        active: ReleaseInfo {
            app: "test".into(),
            version: run.release,
            activated_at_ms: Some(now),
        },
        previous: None,
        phase: run.phase,
        now_ms: now,
    };
    let report = plugin.check(&sandbox, &input).await;
    if let Some(file) = &run.kv {
        write_kv(file, &kv)?;
    }
    let (status, summary, metrics, code) = match &report.result {
        Ok(r) => {
            let (name, code) = match r.status {
                Status::Pass => ("pass", ExitCode::SUCCESS),
                Status::Warn => ("warn", ExitCode::SUCCESS),
                Status::Fail => ("fail", ExitCode::from(EXIT_ROLLED_BACK)),
                Status::Inconclusive => ("inconclusive", ExitCode::from(EXIT_INCONCLUSIVE)),
            };
            (name, r.summary.clone(), r.metrics.clone(), code)
        }
        Err(e) => (
            "error",
            e.to_string(),
            Default::default(),
            ExitCode::FAILURE,
        ),
    };
    if json {
        let logs: Vec<_> = report
            .logs
            .iter()
            .map(|l| serde_json::json!({ "level": l.level, "message": l.message }))
            .collect();
        print_json(&serde_json::json!({
            "plugin": path.display().to_string(),
            "sha256": plugin.digest(),
            "status": status,
            "summary": summary,
            "metrics": metrics,
            "logs": logs,
            "http_requests": report.http_requests,
            "http_retries": report.http_retries,
            "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
        }))?;
    } else {
        let mut text = format!("{status}: {summary}\n");
        for (name, value) in &metrics {
            text.push_str(&format!("  metric {name} = {value}\n"));
        }
        for l in &report.logs {
            text.push_str(&format!("  log {}: {}\n", l.level, l.message));
        }
        text.push_str(&format!(
            "  {} HTTP request(s), {} retried; {:.1} ms\n",
            report.http_requests,
            report.http_retries,
            report.elapsed.as_secs_f64() * 1000.0
        ));
        out(&text)?;
    }
    Ok(code)
}

/// `source` made absolute and opened here, with the caller's rights, to be
/// passed to the agent, which reads only through it (never blocking on a
/// fifo).
fn open_source(source: &std::path::Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let source =
        std::fs::canonicalize(source).with_context(|| format!("source {}", source.display()))?;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&source)
        .with_context(|| format!("cannot open the source {}", source.display()))?;
    Ok((source, opened))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["A".to_string(), "LONG HEADER".into(), "x".into()],
            vec![
                "wide cell".to_string(),
                "b".into(),
                "last column is free".into(),
            ],
        ];
        let out = table(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "A          LONG HEADER  x");
        assert_eq!(lines[1], "wide cell  b            last column is free");
    }

    #[test]
    fn cli_parses_the_documented_commands() {
        let cli = Cli::try_parse_from([
            "rollbackctl",
            "--socket",
            "/tmp/s",
            "deploy",
            "shop",
            "./r",
            "--version",
            "1.0.0",
            "--wait",
        ])
        .map_err(|e| e.to_string());
        assert!(
            matches!(
                cli,
                Ok(Cli {
                    command: Command::Agent(AgentCommand::Deploy { wait: true, .. }),
                    ..
                })
            ),
            "{cli:?}"
        );
        assert!(Cli::try_parse_from([
            "rollbackctl",
            "plugin",
            "test",
            "p.wasm",
            "--config",
            "url=http://x/?a=b",
            "--allow-host",
            "127.0.0.1:80",
            "--timeout",
            "2s"
        ])
        .is_ok());
        for bad in [
            ["--config", "novalue"],
            ["--allow-host", "http://x/"],
            ["--timeout", "0s"],
        ] {
            let mut args = vec!["rollbackctl", "plugin", "test", "p.wasm"];
            args.extend(bad);
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
        assert!(
            Cli::try_parse_from(["rollbackctl", "deploy", "shop", "./r"]).is_err(),
            "--version is required"
        );
        assert!(Cli::try_parse_from(["rollbackctl", "history", "shop", "--limit", "x"]).is_err());
    }
}
