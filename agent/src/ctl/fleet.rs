//! `rollbackctl fleet ...`: the fleet calls, sent to the local agent (which
//! holds the etcd session), and their tables.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{out, print_json, table, Client};
use crate::protocol::method;

/// The fleet commands.
// Parsed once per run: the size of the rollout variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// The fleet's rollouts (one app's, or all), their waves and hosts, who
    /// is missing, and the halt.
    Status {
        /// Only this app.
        app: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The fleet's hosts: alive or missing, labels, each app's state.
    Hosts {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Roll VERSION out to every host that runs APP, wave by wave.
    Rollout {
        /// The app.
        app: String,
        /// The version (staged on each host, or fetched with --source).
        version: String,
        /// Cumulative wave sizes: counts, shares, or hosts joined by `+`
        /// for a canary (e.g. `web-1,50%,100%`).
        #[arg(long, default_value = crate::fleet::plan::DEFAULT_WAVES)]
        waves: String,
        /// Hosts whose deploy may fail, all waves together (a count or a
        /// share, e.g. 10%); one more aborts the rollout.
        #[arg(long, default_value = "0")]
        max_failed: String,
        /// Hosts that must stay healthy on a known-good version at all
        /// times (a count or a share).
        #[arg(long, default_value = "0")]
        min_healthy: String,
        /// How long each wave stays good before the next one starts, on
        /// top of each host's own bake.
        #[arg(long)]
        bake: Option<String>,
        /// A wave not done this long after it started aborts the rollout.
        #[arg(long)]
        wave_deadline: Option<String>,
        /// `auto` or `manual` (fleet promote by an approver), for every
        /// wave or one per wave, comma-separated.
        #[arg(long, default_value = "auto")]
        gate: String,
        /// What an abort does: `rollback` (hosts that got the version go
        /// back) or `stop`.
        #[arg(long, default_value = "rollback")]
        on_abort: String,
        /// An archive's URL each agent fetches when it lacks the release
        /// (a host in [fleet] artifact_hosts).
        #[arg(long, requires = "sha256")]
        source: Option<String>,
        /// The archive's SHA-256, with --source.
        #[arg(long, requires = "source")]
        sha256: Option<String>,
        /// The release's content digest (sha256:<hex>) every host must have.
        #[arg(long)]
        digest: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Nothing new starts in APP's rollout until resumed.
    Pause(Act),
    /// Resume a paused rollout.
    Resume(Act),
    /// Pass the manual gate before the next wave (approvers only).
    Promote(Act),
    /// Stop APP's rollout; with --on-abort rollback, every host that got
    /// the version goes back.
    Abort(Act),
    /// Stop every new start in the fleet at once.
    Halt {
        /// Why (shown by fleet status).
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift the halt.
    Unhalt {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The arguments of pause, resume, promote and abort.
#[derive(Debug, clap::Args)]
pub struct Act {
    /// The app.
    app: String,
    /// Why, recorded with the change.
    #[arg(long)]
    reason: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One line per rollout, then one per host of it.
fn rollout_text(r: &Value, missing: &[Value], waves: &[Value]) -> String {
    let spec = &r["spec"];
    let p = &r["progress"];
    let wave = p["wave"].as_u64().unwrap_or(0) + 1;
    let mut text = format!(
        "{} {} -> {}: {} (wave {wave} of {}), by {}\n",
        s(&spec["id"]),
        s(&spec["app"]),
        s(&spec["version"]),
        s(&p["phase"]),
        waves.len().max(1),
        s(&spec["started_by"]),
    );
    if !p["reason"].is_null() {
        text.push_str(&format!("  reason: {}\n", s(&p["reason"])));
    }
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(s).collect();
        text.push_str(&format!("  missing: {}\n", names.join(", ")));
    }
    let mut rows = vec![vec![
        "WAVE".to_string(),
        "HOST".into(),
        "OUTCOME".into(),
        "WAS".into(),
        "REASON".into(),
    ]];
    for (i, hosts) in waves.iter().enumerate() {
        for h in hosts.as_array().into_iter().flatten() {
            let name = s(h);
            let part = &p["hosts"][&name];
            rows.push(vec![
                (i + 1).to_string(),
                name,
                if part.is_null() {
                    "-".into()
                } else {
                    s(&part["outcome"]).replace("null", "assigned")
                },
                s(&part["previous"]),
                s(&part["reason"]),
            ]);
        }
    }
    if rows.len() > 1 {
        for line in table(&rows).lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

fn hosts_text(hosts: &[Value]) -> String {
    let mut rows = vec![vec![
        "HOST".to_string(),
        "ALIVE".into(),
        "APP".into(),
        "STATE".into(),
        "ACTIVE".into(),
        "ROLLOUT".into(),
        "OUTCOME".into(),
    ]];
    for h in hosts {
        let alive = if h["alive"].as_bool() == Some(true) {
            "yes"
        } else {
            "MISSING"
        };
        let apps = h["apps"].as_object().cloned().unwrap_or_default();
        if apps.is_empty() {
            rows.push(vec![
                s(&h["host"]),
                alive.into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for (app, st) in apps {
            rows.push(vec![
                s(&h["host"]),
                alive.into(),
                app,
                s(&st["state"]),
                s(&st["active"]),
                s(&st["rollout"]),
                s(&st["outcome"]),
            ]);
        }
    }
    table(&rows)
}

/// Runs one fleet command.
pub async fn run(client: &mut Client, cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    let (m, params, json) = match cmd {
        FleetCommand::Status { app, json } => (method::FLEET_STATUS, json!({ "app": app }), json),
        FleetCommand::Hosts { json } => (method::FLEET_HOSTS, json!({}), json),
        FleetCommand::Rollout {
            app,
            version,
            waves,
            max_failed,
            min_healthy,
            bake,
            wave_deadline,
            gate,
            on_abort,
            source,
            sha256,
            digest,
            json,
        } => (
            method::FLEET_ROLLOUT,
            json!({
                "app": app, "version": version, "waves": waves, "max_failed": max_failed,
                "min_healthy": min_healthy, "bake": bake, "wave_deadline": wave_deadline,
                "gate": gate, "on_abort": on_abort, "source": source, "sha256": sha256,
                "digest": digest,
            }),
            json,
        ),
        FleetCommand::Pause(a) => (
            method::FLEET_PAUSE,
            json!({ "app": a.app, "reason": a.reason }),
            a.json,
        ),
        FleetCommand::Resume(a) => (
            method::FLEET_RESUME,
            json!({ "app": a.app, "reason": a.reason }),
            a.json,
        ),
        FleetCommand::Promote(a) => (
            method::FLEET_PROMOTE,
            json!({ "app": a.app, "reason": a.reason }),
            a.json,
        ),
        FleetCommand::Abort(a) => (
            method::FLEET_ABORT,
            json!({ "app": a.app, "reason": a.reason }),
            a.json,
        ),
        FleetCommand::Halt { reason, json } => {
            (method::FLEET_HALT, json!({ "reason": reason }), json)
        }
        FleetCommand::Unhalt { json } => (method::FLEET_UNHALT, json!({}), json),
    };
    let (reply, raw): (Value, Value) = client.request(m, params).await?;
    if json {
        print_json(&raw)?;
        return Ok(ExitCode::SUCCESS);
    }
    let text = match m {
        method::FLEET_STATUS => {
            let mut text = format!(
                "fleet {} (this host: {}, coordinator: {})\n",
                s(&reply["fleet"]),
                s(&reply["host"]),
                s(&reply["leader"])
            );
            if let Some(h) = reply["halt"].as_object() {
                text.push_str(&format!(
                    "HALTED by {}: {}\n",
                    s(&h["mark"]["by"]),
                    s(&h["mark"]["reason"])
                ));
            }
            for r in reply["rollouts"].as_array().into_iter().flatten() {
                let missing = r["missing"].as_array().cloned().unwrap_or_default();
                let waves = r["waves"].as_array().cloned().unwrap_or_default();
                text.push_str(&rollout_text(&r["rollout"], &missing, &waves));
            }
            text.push_str(&hosts_text(
                reply["hosts"].as_array().map(Vec::as_slice).unwrap_or(&[]),
            ));
            for rep in reply["reports"].as_array().into_iter().flatten() {
                text.push_str(&format!(
                    "report from {} ({}): {} on {}\n",
                    s(&rep["host"]),
                    s(&rep["app"]),
                    s(&rep["status"]["state"]),
                    s(&rep["status"]["active"])
                ));
            }
            text
        }
        method::FLEET_HOSTS => {
            hosts_text(reply["hosts"].as_array().map(Vec::as_slice).unwrap_or(&[]))
        }
        method::FLEET_HALT => {
            "fleet halted: no new start anywhere until `rollbackctl fleet unhalt`\n".to_string()
        }
        method::FLEET_UNHALT => {
            if reply["was_halted"].as_bool() == Some(true) {
                "fleet unhalted\n".to_string()
            } else {
                "the fleet was not halted\n".to_string()
            }
        }
        _ => rollout_text(&reply["rollout"], &[], &[]),
    };
    out(&text)?;
    Ok(ExitCode::SUCCESS)
}
