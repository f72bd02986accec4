//! Inconclusive check results end to end: they never roll back and never
//! pass; a bake without a verdict is extended to `max_bake`, then the app is
//! held until an operator promotes (or rolls back) the release.

use std::path::Path;

use crate::hooks::Receiver;
use crate::support::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn kinds(agent: &Agent) -> Vec<String> {
    agent.json(&["history", "shop", "--limit", "1000"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

/// `shop` with a critical check that can never tell (a component built for
/// 0.2.0), a warning check that passes (one built for 0.1.0) and a hook
/// told about `held`.
fn held_config(hook_port: u16) -> String {
    format!(
        r#"[apps.shop]
root = "{{dir}}/shop"
bake = "600ms"
max_bake = "1200ms"

[[apps.shop.checks]]
name = "orders"
plugin = "{inconclusive}"
interval = "100ms"

[[apps.shop.checks]]
name = "legacy"
plugin = "{pass}"
interval = "100ms"
severity = "warning"

[[apps.shop.hooks]]
name = "notify"
plugin = "{webhook}"
on = ["held"]
allow_hosts = ["127.0.0.1:{hook_port}"]
config = {{ url = "http://127.0.0.1:{hook_port}/hook", format = "json" }}
"#,
        inconclusive = fixture("inconclusive.wat"),
        pass = fixture("pass.wat"),
        webhook = plugin("webhook-notify").display(),
    )
}

#[test]
fn a_bake_without_a_verdict_holds_the_app_until_an_operator_promotes_it() {
    let hook = Receiver::start();
    let mut agent = Agent::start(&held_config(hook.port));
    let plugins = agent.json(&["plugins", "shop"]);
    let contract = |name: &str| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["contract"].as_str().unwrap().to_string())
    };
    assert_eq!(contract("orders").as_deref(), Some("rollback:plugin@0.2.0"));
    assert_eq!(
        contract("legacy").as_deref(),
        Some("rollback:plugin@0.1.0"),
        "a 0.1.0 component still loads"
    );

    let release = example_release("1.0.0");
    let out = agent.ctl(&[
        "deploy",
        "shop",
        s(&release),
        "--version",
        "1.0.0",
        "--wait",
        "--json",
    ]);
    assert_eq!(out.code, 4, "held is exit 4: {out:?}");
    let reply: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(reply["outcome"], "held", "{reply}");

    let status = agent.json(&["status", "shop"]);
    assert_eq!(status["state"], "held", "{status}");
    let reason = status["reason"].as_str().unwrap();
    assert!(
        reason.contains("no verdict within max_bake (1s 200ms)")
            && reason.contains("check `orders` had 0 of 1 conclusive run(s)")
            && reason.contains("throttled (fixture)"),
        "{reason}"
    );
    assert_eq!(status["checks"]["orders"]["outcome"], "inconclusive");
    assert_eq!(status["checks"]["legacy"]["outcome"], "pass");
    assert_eq!(current(&agent.path().join("shop")), "1.0.0");
    let seen = kinds(&agent);
    assert!(
        seen.contains(&"bake-extended".into()) && seen.contains(&"held".into()),
        "{seen:?}"
    );
    assert!(!seen.contains(&"rolled-back".into()), "{seen:?}");
    assert!(!seen.contains(&"marked-good".into()), "{seen:?}");
    let (_, body) = hook.wait_for("\"event\":\"held\"");
    assert!(body.contains("\"version\":\"1.0.0\""), "{body}");
    let table = agent.ctl(&["status"]);
    assert!(table.stdout.contains("held"), "{table:?}");

    // Checks go on and still cannot tell: `check` says so with exit 4.
    let check = agent.ctl(&["check", "shop"]);
    assert_eq!(check.code, 4, "{check:?}");
    assert!(check.stdout.contains("inconclusive"), "{check:?}");

    // Held survives a restart of the agent.
    assert!(agent.stop().success());
    agent.spawn();
    let status = agent.json(&["status", "shop"]);
    assert_eq!(status["state"], "held", "{status}");
    assert!(status["reason"].as_str().unwrap().contains("no verdict"));

    // The operator decides.
    let out = agent.ctl(&["promote", "shop", "--reason", "orders checked by hand"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "shop: 1.0.0 promoted: marked good\n");
    let status = agent.json(&["status", "shop"]);
    assert_eq!(status["state"], "healthy", "{status}");
    let releases = agent.json(&["releases", "shop"]);
    assert_eq!(releases["releases"][0]["state"], "good", "{releases}");
    let history = agent.json(&["history", "shop"]);
    let promoted = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "promoted")
        .cloned()
        .unwrap_or_else(|| panic!("{history}"));
    assert_eq!(promoted["reason"], "orders checked by hand");
    assert_eq!(promoted["version"], "1.0.0");

    // Nothing left to promote.
    let out = agent.ctl(&["promote", "shop"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("app `shop` is healthy: only a held or baking release can be promoted"),
        "{out:?}"
    );
    let raw = raw_call(
        &agent.socket,
        b"{\"method\":\"io.rollback.Agent.Promote\",\"parameters\":{\"app\":\"shop\"}}\0",
    );
    assert!(raw.contains("io.rollback.Agent.NotPromotable"), "{raw}");
}

#[test]
fn plugin_test_exits_4_for_an_inconclusive_result() {
    let out = ctl_with(
        Path::new("/nonexistent/agent.sock"),
        &["plugin", "test", &fixture("inconclusive.wat"), "--json"],
    );
    assert_eq!(out.code, 4, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["status"], "inconclusive");
    assert_eq!(v["summary"], "throttled (fixture)");
}

#[test]
fn bad_verdict_settings_are_refused_with_their_key() {
    for (extra, key, says) in [
        (
            "max_bake = \"1s\"",
            "apps.shop.max_bake",
            "must be at least bake (5s)",
        ),
        (
            "min_conclusive = 0",
            "apps.shop.min_conclusive",
            "0 is out of range 1..=1000",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!(
                "[apps.shop]\nroot = \"{}/shop\"\nbake = \"5s\"\n{extra}\n",
                dir.path().display()
            ),
        );
        let (code, log) = rollbackd_run(&config, &[]);
        assert_ne!(code, Some(0), "{extra}: {log}");
        assert!(log.contains(key) && log.contains(says), "{extra}: {log}");
    }
}
