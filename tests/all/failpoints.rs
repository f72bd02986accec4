//! Crash safety at every effect boundary, deterministically: the agent is
//! built with fail points (`--features failpoints`, as `make test` does) and
//! killed with SIGKILL at one named point per round, during a deploy, an
//! automatic rollback, an operator activation or a prune. After the restart
//! the test checks what a user sees, not only the bookkeeping: `current`
//! names a complete release that the store agrees with, the restart command
//! ran for it after its last swap, the state files are those of the release
//! that runs, nothing temporary is left, no snapshot outlives its release,
//! and the history has the `activated` event of what runs.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::crash::{check_consistent, listing, settle};
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
];

const GOOD_DATA: &str = "data of the good release\n";

fn config(port: u16) -> String {
    // The restart command logs each restart; a bad release "migrates" the
    // state file as it starts, so only a restore brings the old data back.
    crate::crash::crash_config(port).replace(
        "bake = \"400ms\"\n",
        r#"bake = "300ms"
keep_releases = 1
snapshot = ["{dir}/state/state.db"]
restart = ["sh", "-c", "echo \"$ROLLBACK_VERSION\" >> {dir}/restarts.log; case \"$ROLLBACK_VERSION\" in *-bad) echo migrated > {dir}/state/state.db;; esac"]
"#,
    )
}

fn good() -> String {
    example_release("1.0.0").display().to_string()
}

/// Waits until no operation is journaled and the app is settled.
fn wait_until_done(agent: &Agent, ctx: &str) {
    let journal = agent.path().join("state/intents/shop.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        settle(agent, ctx);
        if !journal.exists() {
            settle(agent, ctx);
            if !journal.exists() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{ctx}: the interrupted operation was never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_round(point: &str, scenario: Scenario) {
    let ctx = format!("fail point {point}");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let state_file = dir.path().join("state/state.db");
    std::fs::write(&state_file, GOOD_DATA).unwrap();
    let app = FakeApp::start(&root);
    let mut agent = Agent::start_in(dir, &config(app.port));
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
    let status = agent.json(&["status", "shop"]);
    let active = status["active"].as_str().unwrap().to_string();
    assert!(
        !active.ends_with("-bad"),
        "{ctx}: a bad release runs: {status}"
    );
    assert_eq!(status["state"], "healthy", "{ctx}: {status}");

    // The restart command ran for what runs, after its last swap.
    let restarts = std::fs::read_to_string(agent.path().join("restarts.log")).unwrap();
    assert_eq!(
        restarts.lines().last(),
        Some(active.as_str()),
        "{ctx}: restarts were {restarts:?}, {active} runs"
    );
    // The state files are those of the release that runs.
    assert_eq!(
        std::fs::read_to_string(&state_file).unwrap(),
        GOOD_DATA,
        "{ctx}: state file"
    );
    // Nothing temporary is left, and no snapshot outlives its release.
    // (The state file lives in the state directory here; `db/`, `intents/`,
    // `snapshots/` and `plugin-cache/` are the agent's.)
    let beside: Vec<_> = listing(&agent.path().join("state"))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        beside.is_empty(),
        "{ctx}: temporaries beside the state file: {beside:?}"
    );
    let releases = listing(&root.join("releases"));
    for snap in listing(&agent.path().join("state/snapshots/shop")) {
        assert!(!snap.starts_with('.'), "{ctx}: snapshot temporary {snap}");
        assert!(
            releases.contains(&snap),
            "{ctx}: snapshot of {snap} without its release ({releases:?})"
        );
    }
    assert!(
        listing(&agent.path().join("state/intents")).is_empty(),
        "{ctx}: journal left"
    );
    // keep_releases = 1: at most the active release and its rollback target.
    assert!(releases.len() <= 2, "{ctx}: releases {releases:?}");
    // The history names the activation of what runs.
    let history = agent.json(&["history", "shop", "--limit", "1000"]);
    let last_activated = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "activated")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        last_activated["version"].as_str(),
        Some(active.as_str()),
        "{ctx}: last activated event {last_activated}"
    );
    // A deploy that never went live freed its version.
    if matches!(scenario, Scenario::Deploy) && !releases.contains(&"r2-good".to_string()) {
        let out = agent.deploy(&good(), "r2-good", true);
        assert_eq!(out.code, 0, "{ctx}: deploying the version again: {out:?}");
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
