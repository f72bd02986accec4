//! Reloading the config (file change or SIGHUP) without a restart.

use std::path::Path;

use crate::support::*;

fn replace_file(path: &Path, content: &[u8]) {
    // Atomically, as deploy tools and editors do.
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(agent_dir: &Path, port: u16, extra_check: bool, plugin: &Path) -> String {
    let mut text = format!(
        "[agent]\nstate_dir = \"{0}/state\"\nsocket = \"{0}/control.sock\"\n\n{1}\n[[apps.shop.checks]]\nname = \"swappable\"\nplugin = \"{2}\"\ninterval = \"100ms\"\nfail_after = 2\n",
        agent_dir.display(),
        shop_config(port, "400ms", "").replace("{dir}", &agent_dir.display().to_string()),
        plugin.display(),
    );
    if extra_check {
        text.push_str(&format!(
            "\n[[apps.shop.checks]]\nname = \"extra\"\nplugin = \"{}\"\ninterval = \"100ms\"\n",
            fixture("pass.wat")
        ));
    }
    text
}

#[test]
fn config_and_plugin_changes_are_picked_up_and_bad_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let plugin = dir.path().join("swappable.wat");
    std::fs::copy(fixture("pass.wat"), &plugin).unwrap();
    let initial = config(dir.path(), app.port, false, &plugin);
    let mut agent = Agent::process_in(dir, "");
    // Agent::process_in wrote a config with an empty body; replace it (and restart) with ours.
    std::fs::write(&agent.config, &initial).unwrap();
    agent.stop();
    agent.spawn();
    let names = |agent: &Agent| -> Vec<String> {
        agent.json(&["plugins"])["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&agent), ["health", "swappable"]);
    assert_eq!(
        agent
            .deploy(example_release("1.0.0").to_str().unwrap(), "1.0.0", true)
            .code,
        0
    );

    // A config change adds a check, without a restart.
    replace_file(
        &agent.config,
        config(agent.path(), app.port, true, &plugin).as_bytes(),
    );
    wait_until("the extra check", || names(&agent).len() == 3);
    let runs = |agent: &Agent, check: &str| {
        agent.json(&["status", "shop"])["checks"][check]["runs"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until("extra check results", || runs(&agent, "extra") >= 2);

    // A broken config is refused; the running one stays.
    replace_file(&agent.config, b"[apps.shop\nroot = \n");
    wait_until("the refusal in the log", || {
        agent.log().contains("reload refused")
    });
    assert_eq!(names(&agent).len(), 3);
    assert_eq!(agent.ctl(&["status"]).code, 0);

    // A changed plugin file is recompiled and swapped in; the check keeps running.
    replace_file(
        &agent.config,
        config(agent.path(), app.port, true, &plugin).as_bytes(),
    );
    wait_until("the good config again", || {
        agent.log().matches("config reloaded").count() >= 2
    });
    let before = runs(&agent, "swappable");
    let old_digest = agent.json(&["plugins"])["plugins"][1]["sha256"].clone();
    replace_file(&plugin, &std::fs::read(fixture("fail.wat")).unwrap());
    wait_until("the new digest", || {
        agent.json(&["plugins"])["plugins"][1]["sha256"] != old_digest
    });
    wait_until("the swapped plugin failing", || {
        agent.json(&["status", "shop"])["checks"]["swappable"]["outcome"] == "fail"
    });
    assert!(
        runs(&agent, "swappable") > before,
        "the check kept its count: not restarted"
    );
    assert_eq!(
        current(&root),
        "1.0.0",
        "after the bake a failure only alerts (auto_rollback = bake)"
    );

    // SIGHUP reloads too: back to one plugin check besides health.
    std::fs::write(
        &agent.config,
        config(agent.path(), app.port, false, &plugin),
    )
    .unwrap();
    let pid = agent.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_until("the extra check to go", || names(&agent).len() == 2);
    let history = agent.ctl(&["history", "shop", "--limit", "200"]).stdout;
    assert!(history.contains("reloaded"), "{history}");
}
