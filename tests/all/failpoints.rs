//! Crash safety at every effect boundary, deterministically: the agent is
//! built with fail points (`--features failpoints`, as `make test` does) and
//! killed with SIGKILL at one named point per round, during a deploy, an
//! automatic rollback, an operator activation, a prune or a staging. After the restart
//! the test checks what a user sees, not only the bookkeeping: `current`
//! names a complete release that the store agrees with, the restart command
//! ran for it after its last swap, the state files are those of the release
//! that runs, nothing temporary is left, no snapshot outlives its release,
//! and the history has the `activated` event of what runs.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::crash::{
    check_consistent, check_what_users_see, crash_config, listing, prepare, settle,
};
use crate::support::*;

/// What each round does once the point is armed.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// Deploy a good release.
    Deploy,
    /// Deploy a bad release: its health check fails, the agent rolls back.
    BadDeploy,
    /// Deploy a good release, then `activate` the first one by hand.
    Activate,
    /// Deploy two good releases: the second prunes the first.
    Prune,
    /// Stage a release beside the active one (it shares the deploy's
    /// staging points).
    Stage,
}

const POINTS: &[(&str, Scenario)] = &[
    ("deploy.before-stage", Scenario::Deploy),
    ("deploy.after-stage", Scenario::Deploy),
    ("deploy.before-swap", Scenario::Deploy),
    ("deploy.after-swap", Scenario::Deploy),
    ("deploy.before-restart", Scenario::Deploy),
    ("rollback.before-swap", Scenario::BadDeploy),
    ("rollback.after-swap", Scenario::BadDeploy),
    ("rollback.before-restore", Scenario::BadDeploy),
    ("rollback.before-restart", Scenario::BadDeploy),
    ("activate.before-swap", Scenario::Activate),
    ("activate.after-swap", Scenario::Activate),
    ("prune.before-remove", Scenario::Prune),
    ("deploy.before-stage", Scenario::Stage),
    ("deploy.after-stage", Scenario::Stage),
];

/// `keep_releases` of the app.
const KEEP: usize = 1;

fn good() -> String {
    example_release("1.0.0").display().to_string()
}

/// Waits until no operation is journaled and the app is settled.
fn wait_until_done(agent: &Agent, ctx: &str) {
    let journal = agent.path().join("state/intents/shop.json");
    let settled_without_journal = || {
        settle(agent, ctx);
        !journal.exists()
    };
    // Twice: a settled app may still be finishing its journal.
    let done = wait_for_opt(Duration::from_secs(60), || {
        (settled_without_journal() && settled_without_journal()).then_some(())
    });
    assert!(
        done.is_some(),
        "{ctx}: the interrupted operation was never finished"
    );
}

fn run_round(point: &str, scenario: Scenario) {
    let ctx = format!("fail point {point}");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    prepare(dir.path());
    let app = FakeApp::start(&root);
    let mut agent = Agent::process_in(dir, &crash_config(app.port, "300ms", KEEP));
    let out = agent.deploy(&good(), "r1-good", true);
    assert_eq!(out.code, 0, "{ctx}: first deploy: {out:?}");

    // Restart the agent with the point armed and do what reaches it.
    agent.stop();
    agent.set_env("ROLLBACK_AGENT_FAILPOINT", Some(point));
    agent.spawn();
    let bad = example_release("1.1.0").display().to_string();
    match scenario {
        Scenario::Deploy => drop(agent.deploy(&good(), "r2-good", true)),
        Scenario::BadDeploy => drop(agent.deploy(&bad, "r2-bad", true)),
        Scenario::Activate => {
            let out = agent.deploy(&good(), "r2-good", true);
            assert_eq!(out.code, 0, "{ctx}: {out:?}");
            drop(agent.ctl(&["activate", "shop", "r1-good"]));
        }
        Scenario::Prune => {
            let out = agent.deploy(&good(), "r2-good", true);
            assert_eq!(out.code, 0, "{ctx}: {out:?}");
            drop(agent.deploy(&good(), "r3-good", true));
        }
        Scenario::Stage => drop(agent.ctl(&["stage", "shop", &good(), "--version", "r2-good"])),
    }
    let status = agent.wait_exit();
    assert_eq!(
        status.signal(),
        Some(9),
        "{ctx}: the agent was not killed at the point: {status}\n{}",
        agent.log()
    );

    agent.set_env("ROLLBACK_AGENT_FAILPOINT", None);
    agent.spawn();
    wait_until_done(&agent, &ctx);
    check_consistent(&agent, &root, &ctx);
    check_what_users_see(&agent, &root, &ctx, KEEP);
    let releases = listing(&root.join("releases"));
    // A deploy that never went live freed its version.
    if matches!(scenario, Scenario::Deploy) && !releases.contains(&"r2-good".to_string()) {
        let out = agent.deploy(&good(), "r2-good", true);
        assert_eq!(out.code, 0, "{ctx}: deploying the version again: {out:?}");
    }
    // An interrupted staging left nothing of the release and nothing live.
    if matches!(scenario, Scenario::Stage) {
        assert!(
            !releases.contains(&"r2-good".to_string()),
            "{ctx}: {releases:?}"
        );
        assert_eq!(
            agent.json(&["status", "shop"])["active"],
            "r1-good",
            "{ctx}"
        );
        let out = agent.ctl(&["stage", "shop", &good(), "--version", "r2-good"]);
        assert_eq!(out.code, 0, "{ctx}: staging the version again: {out:?}");
    }
}

#[test]
fn a_kill_at_every_effect_boundary_leaves_the_app_as_users_expect() {
    let started = Instant::now();
    for (point, scenario) in POINTS {
        run_round(point, *scenario);
    }
    println!(
        "fail points: {} rounds, 0 violations, in {:.1?}",
        POINTS.len(),
        started.elapsed()
    );
}

#[test]
fn a_supervisor_that_panics_is_reported_and_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let mut agent = Agent::process_in(dir, &shop_config(app.port, "200ms", ""));
    assert_eq!(agent.deploy(&good(), "1.0.0", true).code, 0);
    agent.stop();
    agent.set_env("ROLLBACK_AGENT_PANIC", Some("supervisor.check-now"));
    agent.spawn();
    let out = agent.ctl(&["check", "shop"]);
    assert_ne!(out.code, 0, "the call that met the panic fails: {out:?}");
    let events = wait_for("the app-error event", Duration::from_secs(30), || {
        let h = agent.json(&["history", "shop"]);
        let found: Vec<serde_json::Value> = h["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "app-error")
            .cloned()
            .collect();
        (!found.is_empty()).then_some(found)
    });
    let reason = events[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("supervisor failed") && reason.contains("supervisor.check-now"),
        "{reason}"
    );
    // Started again: it answers and keeps supervising.
    let out = agent.ctl(&["check", "shop"]);
    assert_eq!(out.code, 0, "{out:?}");
    let status = agent.json(&["status", "shop"]);
    assert_eq!(status["state"], "healthy", "{status}");
    assert_eq!(status["active"], "1.0.0");
}
