//! Deploy, bake, automatic and manual rollback, end to end.

use std::path::Path;

use crate::support::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn events(agent: &Agent) -> Vec<serde_json::Value> {
    agent.json(&["history", "shop", "--limit", "100"])["events"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_good_release_is_kept_and_a_bad_one_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let restarts = dir.path().join("restarts.log");
    let restart = format!(
        "restart = [\"sh\", \"-c\", \"echo $ROLLBACK_VERSION >> {}\"]",
        restarts.display()
    );
    let agent = Agent::process_in(dir, &shop_config(app.port, "1500ms", &restart));

    let out = agent.deploy(s(&example_release("1.0.0")), "1.0.0", true);
    assert_eq!(out.code, 0, "good deploy: {out:?}");
    assert!(out.stdout.contains("marked good"), "{}", out.stdout);
    assert_eq!(current(&root), "1.0.0");

    let out = agent.deploy(s(&example_release("1.1.0")), "1.1.0", true);
    assert_eq!(out.code, 3, "bad deploy must report the rollback: {out:?}");
    assert!(
        out.stdout.contains("rolled back to 1.0.0"),
        "{}",
        out.stdout
    );
    assert_eq!(
        current(&root),
        "1.0.0",
        "current must point at the good release again"
    );
    assert!(
        root.join("current/release.json").exists(),
        "current must resolve to a complete release"
    );

    let status = agent.json(&["status"]);
    let shop = &status["apps"][0];
    assert_eq!(shop["app"], "shop");
    assert_eq!(shop["active"], "1.0.0");
    assert_eq!(shop["state"], "healthy");
    assert_eq!(shop["last_good"], "1.0.0");
    assert!(shop["reason"].as_str().unwrap().contains("1.1.0"), "{shop}");

    let releases = agent.json(&["releases", "shop"]);
    let state_of = |v: &str| {
        releases["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == v)
            .unwrap_or_else(|| panic!("no release {v}: {releases}"))
            .clone()
    };
    assert_eq!(state_of("1.0.0")["state"], "good");
    assert_eq!(state_of("1.0.0")["current"], true);
    assert!(
        state_of("1.1.0")["activated_at"].as_str().is_some(),
        "times as text too"
    );
    assert_eq!(state_of("1.1.0")["state"], "failed");
    assert!(state_of("1.1.0")["reason"]
        .as_str()
        .unwrap()
        .contains("health"));

    let history = events(&agent);
    let ids: Vec<u64> = history.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "history is newest first: {ids:?}"
    );
    assert!(history
        .iter()
        .all(|e| e["time"].as_str().is_some_and(|t| t.ends_with('Z'))));
    let rollback = history
        .iter()
        .find(|e| e["kind"] == "rolled-back")
        .expect("a rolled-back event");
    assert_eq!(rollback["from"], "1.1.0");
    assert_eq!(rollback["to"], "1.0.0");
    assert_eq!(rollback["actor"]["name"], "agent");
    let reason = rollback["reason"].as_str().unwrap();
    assert!(
        reason.contains("`health`") && reason.contains("500"),
        "reason names the check and its summary: {reason}"
    );
    let check_failed = history
        .iter()
        .find(|e| e["kind"] == "check-failed")
        .expect("a check-failed event");
    assert_eq!(check_failed["check"], "health");
    let deploy = history
        .iter()
        .rev()
        .find(|e| e["kind"] == "staged")
        .unwrap();
    assert_eq!(
        deploy["actor"]["uid"],
        nix::unistd::getuid().as_raw(),
        "operator identity from the socket"
    );
    assert!(history
        .iter()
        .any(|e| e["kind"] == "marked-good" && e["version"] == "1.0.0"));

    let text = agent.ctl(&["history", "shop"]);
    assert_eq!(text.code, 0);
    assert!(text.stdout.starts_with("TIME"), "{}", text.stdout);
    assert!(
        text.stdout.contains("rolled-back") && text.stdout.contains("1.1.0 -> 1.0.0"),
        "{}",
        text.stdout
    );
    let limited = agent.json(&["history", "shop", "--limit", "2"]);
    assert_eq!(limited["events"].as_array().unwrap().len(), 2);

    // The incident report tells the story of the rollback.
    let incident = agent.ctl(&["incident", "shop"]);
    assert_eq!(incident.code, 0, "{incident:?}");
    assert!(
        incident
            .stdout
            .starts_with("# Incident: shop rolled back 1.1.0 -> 1.0.0"),
        "{}",
        incident.stdout
    );
    for needle in [
        "| staged |",
        "| check-failed |",
        "| rolled-back |",
        "| restarted |",
        "Triggering check:** `health`",
        "## Now",
    ] {
        assert!(
            incident.stdout.contains(needle),
            "{needle}: {}",
            incident.stdout
        );
    }
    let v = agent.json(&["incident", "shop"]);
    assert_eq!(v["from"], "1.1.0");
    assert_eq!(v["to"], "1.0.0");
    assert_eq!(v["check"], "health");

    // The restart command ran for each activation, rollback included.
    let ran = std::fs::read_to_string(&restarts).unwrap();
    assert_eq!(ran.lines().collect::<Vec<_>>(), ["1.0.0", "1.1.0", "1.0.0"]);

    // The state survives a restart of the agent.
    let mut agent = agent;
    assert!(agent.stop().success(), "SIGTERM is a clean exit");
    assert!(!agent.socket.exists(), "the socket is removed on shutdown");
    agent.spawn();
    let shop = &agent.json(&["status", "shop"]);
    assert_eq!(shop["active"], "1.0.0");
    assert_eq!(shop["state"], "healthy");
    let after = events(&agent);
    assert_eq!(after[0]["kind"], "agent-started");
    assert!(after.len() > history.len());
}

#[test]
fn archives_deploy_and_operators_roll_back_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    // Pack 1.0.0 as a .tar.gz with its files at the archive's root.
    let archive = dir.path().join("shop-1.0.0.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&archive).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(".", example_release("1.0.0")).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let agent = Agent::start_in(dir, &shop_config(app.port, "600ms", ""));

    let out = agent.deploy(s(&archive), "1.0.0", true);
    assert_eq!(out.code, 0, "{out:?}");
    // Without --wait the deploy returns once the release is active and baking.
    let out = agent.deploy(s(&example_release("1.0.0")), "1.0.1", false);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("baking"), "{}", out.stdout);
    assert_eq!(current(&root), "1.0.1");
    // A second deploy while baking is refused and changes nothing.
    let out = agent.deploy(s(&example_release("1.0.0")), "1.0.2", false);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("baking"), "{}", out.stderr);
    assert!(!root.join("releases/1.0.2").exists());

    // The operator rolls back during the bake.
    let out = agent.ctl(&[
        "rollback",
        "shop",
        "--reason",
        "customer reports wrong prices",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("from 1.0.1 to 1.0.0"), "{}", out.stdout);
    assert_eq!(current(&root), "1.0.0");
    let history = events(&agent);
    let rb = history.iter().find(|e| e["kind"] == "rolled-back").unwrap();
    assert_eq!(rb["reason"], "customer reports wrong prices");
    assert_eq!(rb["actor"]["uid"], nix::unistd::getuid().as_raw());
    let releases = agent.json(&["releases", "shop"]);
    let failed: Vec<_> = releases["releases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["version"], "1.0.1");
    // The archive and the directory hold the same bits: one content digest.
    let digest = |v: &str| {
        releases["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == v)
            .and_then(|r| r["digest"].as_str())
            .unwrap_or_else(|| panic!("no digest for {v}: {releases}"))
            .to_string()
    };
    assert!(
        digest("1.0.0").starts_with("sha256:"),
        "{}",
        digest("1.0.0")
    );
    assert_eq!(digest("1.0.0").len(), 7 + 64);
    assert_eq!(digest("1.0.0"), digest("1.0.1"));
    let table = agent.ctl(&["releases", "shop"]);
    assert!(table.stdout.contains("DIGEST"), "{}", table.stdout);
    assert!(
        table.stdout.contains(&digest("1.0.0")[..19]),
        "{}",
        table.stdout
    );

    // Explicit --to a release that exists; then to the active one (refused).
    let out = agent.ctl(&["rollback", "shop", "--to", "1.0.1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(current(&root), "1.0.1");
    let out = agent.ctl(&["rollback", "shop", "--to", "1.0.1"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("already active"), "{}", out.stderr);
    let out = agent.ctl(&["rollback", "shop", "--to", "9.9.9"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("9.9.9"), "{}", out.stderr);
    assert_eq!(current(&root), "1.0.1");
}

#[test]
fn bad_deploys_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    // An archive that tries to escape the release directory.
    let evil = dir.path().join("evil.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&evil).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        let name = b"../escaped";
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, &b"hi"[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let agent = Agent::start_in(dir, &shop_config(app.port, "400ms", ""));
    let good = example_release("1.0.0");

    let out = agent.ctl(&["incident", "shop"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no rollback"), "{}", out.stderr);

    // Nothing to roll back to yet.
    let out = agent.ctl(&["rollback", "shop"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no good release") || out.stderr.contains("roll back"),
        "{}",
        out.stderr
    );

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["deploy", "nope", s(&good), "--version", "1.0.0"],
            "no app named `nope`",
        ),
        (
            vec!["deploy", "shop", s(&good), "--version", "../1"],
            "version",
        ),
        (
            vec!["deploy", "shop", s(&good), "--version", ".hidden"],
            "version",
        ),
        (
            vec!["deploy", "shop", s(&good), "--version", "a b"],
            "version",
        ),
        (
            vec!["deploy", "shop", "/does/not/exist", "--version", "1.0.0"],
            "/does/not/exist",
        ),
        (
            vec!["deploy", "shop", s(&evil), "--version", "6.6.6"],
            "escaped",
        ),
        (vec!["status", "nope"], "no app named `nope`"),
        (vec!["history", "nope"], "no app named `nope`"),
        (vec!["releases", "nope"], "no app named `nope`"),
    ];
    for (args, needle) in cases {
        let out = agent.ctl(&args);
        assert_eq!(out.code, 1, "{args:?} must fail: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: stderr should mention {needle:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    assert!(!root.join("current").exists(), "nothing was activated");
    let leftovers: Vec<_> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "no release or staging directory left: {leftovers:?}"
    );
    assert!(!agent.path().join("escaped").exists() && !root.join("escaped").exists());
    let history = events(&agent);
    assert!(history
        .iter()
        .any(|e| e["kind"] == "deploy-failed" && e["version"] == "6.6.6"));

    // Usage errors are exit 2 (clap), before anything is sent.
    let out = agent.ctl(&["deploy", "shop", s(&good)]);
    assert_eq!(out.code, 2, "{out:?}");

    // A version can be deployed once; the second time is refused.
    assert_eq!(agent.deploy(s(&good), "1.0.0", true).code, 0);
    let out = agent.deploy(s(&good), "1.0.0", false);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert_eq!(current(&root), "1.0.0");
}

#[test]
fn a_first_release_that_fails_leaves_the_app_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let agent = Agent::start_in(dir, &shop_config(app.port, "5s", ""));
    let out = agent.deploy(s(&example_release("1.1.0")), "1.1.0", true);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains("degraded"), "{}", out.stdout);
    let shop = &agent.json(&["status"])["apps"][0];
    assert_eq!(shop["state"], "degraded");
    assert!(
        shop["reason"].as_str().unwrap().contains("no good release"),
        "{shop}"
    );
    assert_eq!(
        current(&root),
        "1.1.0",
        "nothing to go back to: current stays"
    );
}

#[test]
fn a_restart_command_that_fails_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let restart = "restart = [\"sh\", \"-c\", \"test $ROLLBACK_VERSION != 2.0.0 || { echo cannot start 2.0.0 >&2; exit 7; }\"]";
    let agent = Agent::start_in(dir, &shop_config(app.port, "400ms", restart));
    assert_eq!(
        agent
            .deploy(s(&example_release("1.0.0")), "1.0.0", true)
            .code,
        0
    );
    let out = agent.deploy(s(&example_release("1.0.0")), "2.0.0", true);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains("cannot start 2.0.0"), "{}", out.stdout);
    assert_eq!(current(&root), "1.0.0");
    assert!(events(&agent)
        .iter()
        .any(|e| e["kind"] == "restart-failed" && e["version"] == "2.0.0"));
}

#[test]
fn a_release_rolled_back_by_hand_is_never_restored_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let agent = Agent::start_in(dir, &shop_config(app.port, "500ms", ""));
    let good = example_release("1.0.0");
    assert_eq!(agent.deploy(s(&good), "1.0.0", true).code, 0);
    assert_eq!(agent.deploy(s(&good), "1.0.1", true).code, 0);
    let out = agent.ctl(&["rollback", "shop", "--reason", "bad prices"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(current(&root), "1.0.0");
    assert_eq!(agent.json(&["status", "shop"])["last_good"], "1.0.0");

    // 1.0.1 passed its bake once but was rolled back: it is no target any more.
    let out = agent.deploy(s(&example_release("1.1.0")), "1.1.0", true);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(current(&root), "1.0.0");
}

#[test]
fn degraded_survives_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let mut agent = Agent::start_in(dir, &shop_config(app.port, "5s", ""));
    let out = agent.deploy(s(&example_release("1.1.0")), "1.1.0", true);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(agent.stop().success());
    agent.spawn();
    let shop = agent.json(&["status", "shop"]);
    assert_eq!(shop["state"], "degraded", "{shop}");
    assert!(
        shop["bake_until_ms"].is_null(),
        "no new bake of a failed release: {shop}"
    );
    let releases = agent.json(&["releases", "shop"]);
    assert_eq!(releases["releases"][0]["state"], "failed");
}

#[test]
fn the_restart_command_never_sees_the_agents_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let seen = dir.path().join("restart-env.txt");
    let restart = format!(
        "restart = [\"sh\", \"-c\", \"env > {}\"]\nrestart_env = {{ NODE_ENV = \"production\" }}",
        seen.display()
    );
    let agent = Agent::start_in_with_env(
        dir,
        &shop_config(app.port, "300ms", &restart),
        &[("SHOP_API_SECRET", "hunter2")],
    );
    let out = agent.deploy(s(&example_release("1.0.0")), "1.0.0", true);
    assert_eq!(out.code, 0, "{out:?}");
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(
        !env.contains("hunter2"),
        "a secret reached the restart command: {env}"
    );
    for line in [
        "NODE_ENV=production",
        "ROLLBACK_VERSION=1.0.0",
        "ROLLBACK_APP=shop",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing: {env}");
    }
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
}

#[test]
fn an_archive_declaring_a_2_gib_name_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let archive = dir.path().join("huge-name.tar.gz");
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::new(b'L'));
    h.set_size(2 << 30);
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&archive).unwrap(),
        flate2::Compression::best(),
    );
    use std::io::Write;
    gz.write_all(h.as_bytes()).unwrap();
    gz.write_all(&vec![b'a'; 1 << 20]).unwrap();
    gz.finish().unwrap();
    let agent = Agent::start_in(dir, &shop_config(app.port, "300ms", ""));
    let out = agent.deploy(s(&archive), "1.0.0", true);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("header extension"), "{}", out.stderr);
    let left: Vec<_> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "nothing staged is left: {left:?}");
    assert_eq!(agent.ctl(&["status"]).code, 0, "the agent goes on");
}

#[test]
fn stage_puts_a_release_beside_the_active_one_without_activating_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let agent = Agent::start_in(dir, &shop_config(app.port, "600ms", ""));
    let out = agent.deploy(s(&example_release("1.0.0")), "1.0.0", true);
    assert_eq!(out.code, 0, "{out:?}");

    let out = agent.ctl(&[
        "stage",
        "shop",
        s(&example_release("1.0.0")),
        "--version",
        "1.1.0",
        "--commit",
        "9f2c1ab",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let reply: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(reply["version"], "1.1.0");
    let digest = reply["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{reply}");
    // Nothing went live: `current`, the state and the active release stay.
    assert_eq!(current(&root), "1.0.0");
    assert!(root.join("releases/1.1.0/release.json").exists());
    let status = agent.json(&["status", "shop"]);
    assert_eq!(status["active"], "1.0.0", "{status}");
    assert_eq!(status["state"], "healthy", "{status}");
    let releases = agent.json(&["releases", "shop"]);
    let staged = releases["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "1.1.0")
        .unwrap()
        .clone();
    assert_eq!(staged["state"], "staged");
    assert_eq!(staged["current"], false);
    assert_eq!(staged["commit"], "9f2c1ab");
    assert_eq!(staged["digest"], digest.as_str());
    let history = events(&agent);
    assert!(
        history
            .iter()
            .any(|e| e["kind"] == "staged" && e["version"] == "1.1.0"),
        "{history:?}"
    );
    assert!(
        !history
            .iter()
            .any(|e| e["version"] == "1.1.0" && e["kind"] != "staged"),
        "nothing but the staging happened to it: {history:?}"
    );

    // Refused, changing nothing: the same version again, a missing source,
    // an unknown app.
    let out = agent.ctl(&[
        "stage",
        "shop",
        s(&example_release("1.0.0")),
        "--version",
        "1.1.0",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("1.1.0"), "{}", out.stderr);
    let missing = agent.path().join("nope");
    let out = agent.ctl(&["stage", "shop", s(&missing), "--version", "1.2.0"]);
    assert_eq!(out.code, 1, "{out:?}");
    let out = agent.ctl(&[
        "stage",
        "nope",
        s(&example_release("1.0.0")),
        "--version",
        "1.2.0",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!root.join("releases/1.2.0").exists());
    assert_eq!(current(&root), "1.0.0");

    // With --digest, only those bits: another tree is refused and removed,
    // the expected one staged; a malformed digest is refused at once.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = agent.ctl(&[
        "stage",
        "shop",
        s(&example_release("1.0.0")),
        "--version",
        "1.3.0",
        "--digest",
        &wrong,
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "its content digest is {digest}, not the expected {wrong}"
        )),
        "{}",
        out.stderr
    );
    assert!(!root.join("releases/1.3.0").exists());
    let out = agent.ctl(&[
        "stage",
        "shop",
        s(&example_release("1.0.0")),
        "--version",
        "1.3.0",
        "--digest",
        &digest.to_uppercase().replace("SHA256:", "sha256:"),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    for bad in ["sha256:abc", "md5:0", "nonsense"] {
        let out = agent.ctl(&[
            "deploy",
            "shop",
            s(&example_release("1.0.0")),
            "--version",
            "1.4.0",
            "--digest",
            bad,
        ]);
        assert_eq!(out.code, 1, "{bad}: {out:?}");
        assert!(
            out.stderr.contains("digest must be sha256:"),
            "{}",
            out.stderr
        );
    }
    let out = agent.ctl(&[
        "deploy",
        "shop",
        s(&example_release("1.1.0")),
        "--version",
        "1.4.0",
        "--digest",
        &digest,
    ]);
    assert_eq!(out.code, 1, "a deploy of other bits is refused: {out:?}");
    assert!(out.stderr.contains("content digest"), "{}", out.stderr);
    assert!(!root.join("releases/1.4.0").exists());
    assert_eq!(current(&root), "1.0.0");

    // The staged release goes live by hand when wanted.
    let out = agent.ctl(&["activate", "shop", "1.1.0"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(current(&root), "1.1.0");
}

#[test]
fn with_link_unchanged_a_new_release_shares_the_active_ones_unchanged_files() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("assets")).unwrap();
    std::fs::write(src.join("assets/catalog.bin"), vec![3u8; 256 * 1024]).unwrap();
    std::fs::write(src.join("app.txt"), "one").unwrap();
    std::fs::write(src.join("release.json"), r#"{"health": 200}"#).unwrap();
    let agent = Agent::process_in(
        dir,
        &shop_config(app.port, "300ms", "link_unchanged = true"),
    );
    let out = agent.deploy(s(&src), "1", true);
    assert_eq!(out.code, 0, "{out:?}");
    std::fs::write(src.join("app.txt"), "two").unwrap();
    let out = agent.deploy(s(&src), "2", true);
    assert_eq!(out.code, 0, "{out:?}");
    let ino = |v: &str, rel: &str| {
        std::fs::metadata(root.join("releases").join(v).join(rel))
            .unwrap()
            .ino()
    };
    assert_eq!(
        ino("1", "assets/catalog.bin"),
        ino("2", "assets/catalog.bin")
    );
    assert_ne!(ino("1", "app.txt"), ino("2", "app.txt"));
    assert_eq!(
        std::fs::read_to_string(root.join("current/app.txt")).unwrap(),
        "two"
    );
    // The recorded digest is the tree's.
    let releases = agent.json(&["releases", "shop"]);
    let digest = releases["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "2")
        .map(|r| r["digest"].clone())
        .unwrap();
    assert_eq!(
        digest,
        rollback_agent::release::tree_digest(&root.join("releases/2")).unwrap()
    );
}
