//! Rollback hooks, secrets and kv through the real daemon.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;

/// A webhook receiver on 127.0.0.1: records (headers, body) of each POST.
pub struct Receiver {
    pub port: u16,
    posts: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let posts = Arc::new(Mutex::new(Vec::new()));
        let seen = posts.clone();
        let port = http_server(move |req| {
            if req.method != "POST" {
                return HttpReply::new(405, "");
            }
            let head: String = req
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}\r\n"))
                .collect();
            seen.lock()
                .unwrap()
                .push((head, String::from_utf8_lossy(&req.body).into_owned()));
            HttpReply::new(200, "ok")
        });
        Receiver { port, posts }
    }

    /// Waits until a POST body contains `needle`; returns (headers, body).
    pub fn wait_for(&self, needle: &str) -> (String, String) {
        let found = wait_for_opt(Duration::from_secs(20), || {
            let posts = self.posts.lock().unwrap();
            posts.iter().find(|(_, b)| b.contains(needle)).cloned()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no webhook with {needle:?}: {:?}",
                self.posts.lock().unwrap()
            )
        })
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const TOKEN: &str = "tok-5ecret-7781";

#[test]
fn webhooks_announce_activations_and_rollbacks_and_secrets_stay_secret() {
    // Only this test reads this variable; the agent inherits it.
    std::env::set_var("ROLLBACK_TEST_HOOK_TOKEN", TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let hook = Receiver::start();
    // A second app, already running (adopted, so never baked), whose check
    // logs and returns the secret on every run.
    let spy = dir.path().join("spy");
    std::fs::create_dir_all(spy.join("releases/1")).unwrap();
    std::os::unix::fs::symlink("releases/1", spy.join("current")).unwrap();
    let extra = format!(
        r#"
[[apps.shop.hooks]]
plugin = "{plugin}"
on = ["activated", "rolled-back", "degraded"]
allow_hosts = ["127.0.0.1:{port}"]
config = {{ url = "http://127.0.0.1:{port}/hook" }}
secrets = {{ token = "env:ROLLBACK_TEST_HOOK_TOKEN" }}

[apps.spy]
root = "{spy_root}"

[[apps.spy.checks]]
name = "leaky"
plugin = "{leak}"
interval = "200ms"
secrets = {{ token = "env:ROLLBACK_TEST_HOOK_TOKEN" }}
"#,
        plugin = plugin("webhook-notify").display(),
        port = hook.port,
        leak = fixture("leak-secret.wat"),
        spy_root = spy.display(),
    );
    let config = format!("{}{extra}", shop_config(app.port, "1s", ""));
    let agent = Agent::start_in(dir, &config);

    assert_eq!(
        agent
            .deploy(s(&example_release("1.0.0")), "1.0.0", true)
            .code,
        0
    );
    let (head, body) = hook.wait_for("activated 1.0.0");
    assert!(
        head.contains(&format!("Bearer {TOKEN}")),
        "the secret reaches the webhook: {head}"
    );
    assert!(body.contains("\"text\""), "Slack-compatible body: {body}");

    let out = agent.deploy(s(&example_release("1.1.0")), "1.1.0", true);
    assert_eq!(out.code, 3, "{out:?}");
    let (_, body) = hook.wait_for("rolled back");
    assert!(
        body.contains("1.1.0") && body.contains("1.0.0") && body.contains("health"),
        "{body}"
    );

    let history = agent.json(&["history", "shop", "--limit", "200"]);
    let ran: Vec<_> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "hook-ran")
        .collect();
    assert!(ran.len() >= 2, "hook calls are in the history: {history}");
    assert_eq!(ran[0]["hook"], "webhook-notify");

    // The leaky check logged and returned the secret; nothing shows it.
    let status = agent.ctl(&["status", "--json"]).stdout;
    assert!(status.contains("leaked: ***"), "{status}");
    for (what, text) in [
        ("status", status),
        ("plugins", agent.ctl(&["plugins", "--json"]).stdout),
        ("plugins table", agent.ctl(&["plugins"]).stdout),
        (
            "history",
            agent
                .ctl(&["history", "shop", "--json", "--limit", "500"])
                .stdout,
        ),
        ("log", agent.log()),
    ] {
        assert!(!text.contains(TOKEN), "the secret shows in {what}");
    }
    assert!(
        agent.log().contains("leaked: ***"),
        "the redacted line is logged"
    );
}

#[test]
fn a_pre_activate_hook_can_veto_a_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let extra = format!(
        "[[apps.shop.hooks]]\nname = \"freeze\"\nplugin = \"{}\"\non = [\"pre-activate\"]\n",
        fixture("veto-hook.wat")
    );
    let config = format!("{}{extra}", shop_config(app.port, "300ms", ""));
    let agent = Agent::start_in(dir, &config);
    let out = agent.deploy(s(&example_release("1.0.0")), "1.0.0", true);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("freeze") && out.stderr.contains("release freeze in effect"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("io.rollback.Agent.Vetoed"),
        "{}",
        out.stderr
    );
    assert!(!root.join("current").exists(), "nothing was activated");
    let releases = agent.json(&["releases", "shop"]);
    assert_eq!(releases["releases"][0]["state"], "failed");
    let history = agent.json(&["history", "shop"]);
    assert!(history["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "hook-failed" && e["hook"] == "freeze"));
    let plugins = agent.json(&["plugins", "shop"]);
    assert_eq!(plugins["plugins"][1]["on"][0], "pre-activate", "{plugins}");
}

#[test]
fn kv_survives_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    std::fs::create_dir_all(root.join("releases/1")).unwrap();
    std::os::unix::fs::symlink("releases/1", root.join("current")).unwrap();
    let config = format!(
        "[apps.shop]\nroot = \"{}\"\n[[apps.shop.checks]]\nname = \"counter\"\nplugin = \"{}\"\ninterval = \"100ms\"\n",
        root.display(),
        fixture("kv-counter.wat")
    );
    let mut agent = Agent::start_in(dir, &config);
    let count = |agent: &Agent| {
        agent.json(&["status", "shop"])["checks"]["counter"]["metrics"]["count"]
            .as_f64()
            .unwrap_or(0.0)
    };
    wait_until("the counter to count", || count(&agent) >= 3.0);
    let before = count(&agent);
    assert!(agent.stop().success());
    agent.spawn();
    // The first value after the restart continues the old count (a fresh
    // counter would start again at 1).
    let first_after = wait_for(
        "a check result after the restart",
        Duration::from_secs(20),
        || Some(count(&agent)).filter(|&now| now > 0.0),
    );
    assert!(
        first_after > before,
        "kv kept its value across the restart: {before} then {first_after}"
    );
}
