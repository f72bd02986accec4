//! The live feed: `rollbackctl watch` and the progress of `deploy --wait`,
//! both Varlink calls with `more`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::*;

/// A running `rollbackctl watch ... --json`, its lines read on a thread.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Watch {
    fn start(agent: &Agent, args: &[&str]) -> Watch {
        let mut child = Command::new(ROLLBACKCTL)
            .arg("--socket")
            .arg(&agent.socket)
            .arg("watch")
            .args(args)
            .arg("--json")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("watch printed a non-JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut watch = Watch { child, lines };
        // The watch sees what happens after it subscribed: pause and resume
        // until it reports one, so nothing later can be missed.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "the watch never reported");
            assert_eq!(agent.ctl(&["pause", "shop"]).code, 0);
            assert_eq!(agent.ctl(&["resume", "shop"]).code, 0);
            if watch
                .until(|e| e["kind"] == "resumed", Duration::from_millis(500))
                .is_some()
            {
                return watch;
            }
        }
    }

    /// Every event up to and including the first that matches, or `None`
    /// when none came within `within`.
    fn until(
        &mut self,
        done: impl Fn(&serde_json::Value) -> bool,
        within: Duration,
    ) -> Option<Vec<serde_json::Value>> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(e) = self.lines.recv_timeout(left) else {
                break;
            };
            let last = done(&e);
            seen.push(e);
            if last {
                return Some(seen);
            }
        }
        None
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kinds(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn position(kinds: &[String], kind: &str) -> usize {
    kinds
        .iter()
        .position(|k| k == kind)
        .unwrap_or_else(|| panic!("no `{kind}` in {kinds:?}"))
}

#[test]
fn watch_follows_deploys_live_and_deploy_wait_shows_the_phases() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let agent = Agent::start_in(dir, &shop_config(app.port, "1500ms", ""));
    let mut watch = Watch::start(&agent, &[]);

    let good = example_release("1.0.0");
    let out = agent.deploy(good.to_str().unwrap(), "1.0.0", true);
    assert_eq!(out.code, 0, "{out:?}");
    // The result alone on stdout, the phases on stderr as they happened.
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    let phases: Vec<&str> = out.stderr.lines().collect();
    for kind in ["staged", "activated", "check-result", "marked-good"] {
        assert!(
            phases.iter().any(|l| l.contains(kind)),
            "no {kind} in the progress:\n{}",
            out.stderr
        );
    }
    // A check's result is shown when it changes, not on every run.
    assert_eq!(
        out.stderr.matches("health: pass").count(),
        1,
        "{}",
        out.stderr
    );

    let seen = watch
        .until(|e| e["kind"] == "marked-good", Duration::from_secs(30))
        .expect("the watch saw the release marked good");
    let k = kinds(&seen);
    assert!(position(&k, "staged") < position(&k, "activated"), "{k:?}");
    assert!(
        position(&k, "activated") < position(&k, "check-result"),
        "{k:?}"
    );
    let check = seen.iter().find(|e| e["kind"] == "check-result").unwrap();
    assert_eq!(check["app"], "shop");
    assert_eq!(check["check"], "health");
    assert_eq!(check["outcome"], "pass");
    assert_eq!(check["version"], "1.0.0");
    let activated = seen.iter().find(|e| e["kind"] == "activated").unwrap();
    assert_eq!(activated["to"], "1.0.0");
    assert!(activated["actor"]["name"].is_string(), "{activated}");

    let bad = example_release("1.1.0");
    let out = agent.deploy(bad.to_str().unwrap(), "1.1.0", true);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("health: fail"), "{}", out.stderr);
    assert!(out.stderr.contains("rolled-back"), "{}", out.stderr);
    let seen = watch
        .until(|e| e["kind"] == "rolled-back", Duration::from_secs(30))
        .expect("the watch saw the rollback");
    let rolled = seen.last().unwrap();
    assert_eq!(rolled["from"], "1.1.0");
    assert_eq!(rolled["to"], "1.0.0");
    assert!(
        seen.iter()
            .any(|e| e["check"] == "health" && e["kind"] != "check-result"),
        "the event naming the failed check: {seen:?}"
    );
    assert!(seen
        .iter()
        .any(|e| e["kind"] == "check-result" && e["outcome"] == "fail"));

    // `deploy --json` keeps stdout one JSON document.
    let out = agent.ctl(&[
        "deploy",
        "shop",
        good.to_str().unwrap(),
        "--version",
        "1.0.1",
        "--wait",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "good");
    assert!(v.get("event").is_none(), "{v}");
}

#[test]
fn watch_refuses_unknown_apps_and_calls_without_more() {
    let agent =
        Agent::start("[apps.shop]\nroot = \"{dir}/shop\"\n[apps.other]\nroot = \"{dir}/other\"\n");
    let out = agent.ctl(&["watch", "nope"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NoSuchApp"), "{}", out.stderr);

    let reply = raw_call(&agent.socket, b"{\"method\":\"io.rollback.Agent.Watch\"}\0");
    assert!(
        reply.contains("org.varlink.service.ExpectedMore"),
        "{reply}"
    );
    let reply = raw_call(
        &agent.socket,
        b"{\"method\":\"io.rollback.Agent.Watch\",\"parameters\":{\"app\":7},\"more\":true}\0",
    );
    assert!(reply.contains("InvalidParameter"), "{reply}");

    // A watch of one app does not see the others.
    let mut watch = Watch::start(&agent, &["shop"]);
    assert_eq!(agent.ctl(&["pause", "other"]).code, 0);
    assert_eq!(agent.ctl(&["pause", "shop"]).code, 0);
    let seen = watch
        .until(|e| e["kind"] == "paused", Duration::from_secs(10))
        .expect("the pause of shop");
    assert!(seen.iter().all(|e| e["app"] == "shop"), "{seen:?}");

    // Watchers come and go; the agent stays usable.
    drop(watch);
    for _ in 0..3 {
        drop(Watch::start(&agent, &[]));
    }
    assert_eq!(agent.ctl(&["status"]).code, 0);
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let agent = Agent::start_in(dir, &shop_config(app.port, "300ms", ""));
    let out = agent.deploy(example_release("1.0.0").to_str().unwrap(), "1.0.0", true);
    assert_eq!(out.code, 0, "{out:?}");
    // Piped: plain text.
    let plain = agent.ctl(&["status"]);
    assert!(!plain.stdout.contains('\x1b'), "{}", plain.stdout);
    let coloured = agent.ctl(&["status", "--color", "always"]);
    assert!(
        coloured.stdout.contains("\x1b[32mhealthy"),
        "{}",
        coloured.stdout
    );
    // Columns stay aligned: the same text once the escapes are removed.
    let stripped = coloured
        .stdout
        .replace("\x1b[32m", "")
        .replace("\x1b[31m", "")
        .replace("\x1b[33m", "")
        .replace("\x1b[0m", "");
    let again = agent.ctl(&["status", "--color", "never"]);
    assert_eq!(stripped, again.stdout);
    assert_eq!(again.stdout, plain.stdout.replace("\x1b", ""));
}
