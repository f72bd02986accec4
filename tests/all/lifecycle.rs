//! The lifecycle end to end: loop guard, auto_rollback, pause, check now,
//! operator activate, snapshots, release metadata, retention, config check.

use std::path::Path;
use std::process::Command;

use crate::support::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Makes release `v` answer `status` on /health from now on (the fake app
/// reads the active release's release.json on every request).
fn set_health(root: &Path, v: &str, status: u16) {
    let file = root.join("releases").join(v).join("release.json");
    std::fs::write(
        file,
        format!("{{\"version\": \"{v}\", \"health\": {status}}}"),
    )
    .unwrap();
}

fn count(agent: &Agent, kind: &str) -> usize {
    agent.json(&["history", "shop", "--limit", "1000"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .count()
}

#[test]
fn a_restored_release_that_fails_too_degrades_the_app_without_more_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let agent = Agent::start_in(dir, &shop_config(app.port, "800ms", ""));
    assert_eq!(
        agent
            .deploy(s(&example_release("1.0.0")), "1.0.0", true)
            .code,
        0
    );
    assert_eq!(
        agent
            .deploy(s(&example_release("1.1.0")), "1.1.0", true)
            .code,
        3
    );
    assert_eq!(current(&root), "1.0.0");
    let swaps = count(&agent, "activated");

    // Now the restored release fails as well: no loop, no swap, degraded.
    set_health(&root, "1.0.0", 503);
    let status = agent.wait_for_status("degraded", |s| s["state"] == "degraded");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("restored by a rollback"),
        "{status}"
    );
    // Three more check runs later, nothing has moved.
    let runs = |s: &serde_json::Value| s["checks"]["health"]["runs"].as_u64().unwrap_or(0);
    let seen = runs(&status);
    agent.wait_for_status("three more check runs", |s| runs(s) >= seen + 3);
    assert_eq!(current(&root), "1.0.0", "current unchanged");
    assert_eq!(count(&agent, "activated"), swaps, "no further swaps");
    assert_eq!(count(&agent, "degraded"), 1);

    // The operator's emergency switch clears it (no bake).
    set_health(&root, "1.0.0", 200);
    let out = agent.ctl(&["activate", "shop", "1.0.0"]);
    assert_eq!(out.code, 0, "{out:?}");
    let status = agent.json(&["status", "shop"]);
    assert_eq!(status["state"], "healthy");
    assert!(status["reason"].is_null());
    let out = agent.ctl(&["activate", "shop", "9.9.9"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("9.9.9"), "{}", out.stderr);
}

#[test]
fn auto_rollback_always_acts_after_the_bake_and_pause_freezes_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let agent = Agent::start_in(
        dir,
        &shop_config(app.port, "500ms", "auto_rollback = \"always\""),
    );
    let good = example_release("1.0.0");
    assert_eq!(agent.deploy(s(&good), "1.0.0", true).code, 0);
    assert_eq!(agent.deploy(s(&good), "1.0.1", true).code, 0);

    // Paused: the failure is recorded, nothing is done.
    assert_eq!(agent.ctl(&["pause", "shop"]).code, 0);
    set_health(&root, "1.0.1", 500);
    wait_until("a paused check-failed event", || {
        agent
            .ctl(&["history", "shop", "--json"])
            .stdout
            .contains("[paused: no action]")
    });
    assert_eq!(current(&root), "1.0.1");
    let out = agent.ctl(&["check", "shop", "--json"]);
    assert_eq!(out.code, 3, "a failing critical check: {out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["checks"][0]["outcome"], "fail");
    assert_eq!(v["version"], "1.0.1");

    // Resumed: the next unhealthy verdict rolls back, after the bake.
    assert_eq!(agent.ctl(&["resume", "shop"]).code, 0);
    set_health(&root, "1.0.1", 200);
    agent.wait_for_status("a passing check after the resume", |s| {
        s["checks"]["health"]["outcome"] == "pass"
    });
    set_health(&root, "1.0.1", 500);
    agent.wait_for_status("rollback to 1.0.0", |s| s["active"] == "1.0.0");
    assert_eq!(current(&root), "1.0.0");
    let out = agent.ctl(&["check", "shop"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("pass"), "{}", out.stdout);
    let kinds: Vec<String> = agent.json(&["history", "shop", "--limit", "100"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains(&"paused".into()) && kinds.contains(&"resumed".into()),
        "{kinds:?}"
    );
}

#[test]
fn state_files_are_snapshotted_and_restored_on_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let state = dir.path().join("state.db");
    std::fs::write(&state, "schema v1").unwrap();
    let app = FakeApp::start(&root);
    // The restart "migrates" the state when 1.1.0 starts.
    let extra = format!(
        "snapshot = [\"{0}\"]\nrestart = [\"sh\", \"-c\", \"test $ROLLBACK_VERSION != 1.1.0 || echo 'schema v2' > {0}\"]",
        state.display()
    );
    let agent = Agent::start_in(dir, &shop_config(app.port, "600ms", &extra));
    assert_eq!(
        agent
            .deploy(s(&example_release("1.0.0")), "1.0.0", true)
            .code,
        0
    );
    assert_eq!(
        agent
            .deploy(s(&example_release("1.1.0")), "1.1.0", true)
            .code,
        3
    );
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "schema v1",
        "the state 1.0.0 expects is back"
    );
    let history = agent.json(&["history", "shop", "--limit", "100"]);
    let events = history["events"].as_array().unwrap();
    let taken = events
        .iter()
        .find(|e| e["kind"] == "snapshot-taken")
        .expect("snapshot taken");
    assert_eq!(taken["version"], "1.0.0");
    let restored = events
        .iter()
        .find(|e| e["kind"] == "snapshot-restored")
        .expect("snapshot restored");
    assert_eq!(restored["version"], "1.0.0");
    let pos = |kind: &str| events.iter().position(|e| e["kind"] == kind).unwrap();
    assert!(
        pos("snapshot-restored") > pos("restarted"),
        "restored before the restart (newest first)"
    );
}

#[test]
fn metadata_retention_and_archive_formats() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let src = dir.path().join("src");
    copy_dir(&example_release("1.0.0"), &src);
    let agent = Agent::start_in(dir, &shop_config(app.port, "300ms", "keep_releases = 2"));

    let out = agent.ctl(&[
        "deploy",
        "shop",
        s(&src),
        "--version",
        "1",
        "--wait",
        "--commit",
        "9f2c1ab",
        "--message",
        "faster price sync",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    // A manifest inside the release is read too; the CLI wins where both speak.
    std::fs::write(
        src.join("release.toml"),
        "version = \"2\"\ncommit = \"0000000\"\ntag = \"v2\"\nsummary = \"from the manifest\"\n",
    )
    .unwrap();
    assert_eq!(
        agent
            .ctl(&[
                "deploy",
                "shop",
                s(&src),
                "--version",
                "2",
                "--wait",
                "--commit",
                "abcdef0"
            ])
            .code,
        0
    );
    let releases = agent.json(&["releases", "shop"]);
    let find = |v: &str| {
        releases["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == v)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("1")["commit"], "9f2c1ab");
    assert_eq!(find("1")["message"], "faster price sync");
    assert_eq!(find("2")["commit"], "abcdef0");
    assert_eq!(find("2")["tag"], "v2");
    assert_eq!(find("2")["message"], "from the manifest");
    let staged = agent.json(&["history", "shop"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "staged")
        .cloned()
        .unwrap();
    assert!(
        staged["reason"].as_str().unwrap().contains("abcdef0"),
        "{staged}"
    );

    // A manifest that disagrees with the version is refused and leaves nothing.
    let out = agent.ctl(&["deploy", "shop", s(&src), "--version", "3"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("release.toml"), "{}", out.stderr);
    assert!(!root.join("releases/3").exists());
    std::fs::remove_file(src.join("release.toml")).unwrap();

    // .tar.zst works like .tar.gz; retention keeps two (active + rollback target).
    let zst = agent.path().join("r4.tar.zst");
    {
        let enc = zstd::Encoder::new(std::fs::File::create(&zst).unwrap(), 3)
            .unwrap()
            .auto_finish();
        let mut tar = tar::Builder::new(enc);
        tar.append_dir_all(".", &src).unwrap();
        tar.finish().unwrap();
    }
    assert_eq!(
        agent
            .ctl(&["deploy", "shop", s(&zst), "--version", "4", "--wait"])
            .code,
        0
    );
    let mut on_disk: Vec<String> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        [".index-2", ".index-4", "2", "4"],
        "the oldest release was pruned, its file index with it"
    );
    let listed: Vec<String> = agent.json(&["releases", "shop"])["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ["2", "4"]);
    assert_eq!(
        count(&agent, "pruned"),
        1,
        "one prune, after 4 passed its bake"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn check_config_validates_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("[apps.shop]\nroot = \"/srv/shop\"\n[[apps.shop.checks]]\nname = \"h\"\nplugin = \"{}\"\n", fixture("pass.wat"))).unwrap();
    let out = Command::new(ROLLBACKD)
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("config OK"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[apps.shop]\nroot = \"/srv/shop\"\n\n[[apps.shop.checks]]\nname = \"h\"\nplugin = \"p.wasm\"\nfailure_ratio = 2.0\nwindow = \"5m\"\n").unwrap();
    let out = Command::new(ROLLBACKD)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml")
            && err.contains("line 7")
            && err.contains("apps.shop.checks[0].failure_ratio"),
        "{err}"
    );
    let missing = dir.path().join("missing.toml");
    std::fs::write(&missing, "[apps.shop]\nroot = \"/srv/shop\"\n[[apps.shop.checks]]\nname = \"h\"\nplugin = \"nope.wasm\"\n").unwrap();
    let out = Command::new(ROLLBACKD)
        .args(["--check-config", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.wasm"));
    assert!(!dir.path().join("state").exists(), "nothing is written");
}

#[test]
fn an_app_whose_state_cannot_be_repaired_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    // `broken`'s current is a plain file: nothing the agent may repair.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("releases")).unwrap();
    std::fs::write(broken.join("current"), "not a link").unwrap();
    let config = format!(
        "{}\n[apps.broken]\nroot = \"{}\"\n",
        shop_config(app.port, "300ms", ""),
        broken.display()
    );
    let agent = Agent::start_in(dir, &config);
    let status = agent.json(&["status", "broken"]);
    assert_eq!(status["state"], "error", "{status}");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("current"),
        "{status}"
    );
    let out = agent.ctl(&[
        "deploy",
        "broken",
        s(&example_release("1.0.0")),
        "--version",
        "1.0.0",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not supervised"), "{}", out.stderr);
    // The other app runs as usual.
    assert_eq!(
        agent
            .deploy(s(&example_release("1.0.0")), "1.0.0", true)
            .code,
        0
    );
    assert_eq!(current(&root), "1.0.0");

    // Fixed by the operator, the app is supervised again at the next reload.
    std::fs::remove_file(broken.join("current")).unwrap();
    let text = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(&agent.config, format!("{text}\n# reload\n")).unwrap();
    agent.wait_for_status_of("broken", "supervised again", |s| s["state"] == "empty");
    let kinds: Vec<String> = agent.json(&["history", "broken"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "app-error")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        kinds.iter().any(|r| r.starts_with("not supervised")),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|r| r.starts_with("supervised again")),
        "{kinds:?}"
    );
}

/// Name, length and modification time of every file of the state store.
fn store_files(state: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut files = Vec::new();
    let mut dirs = vec![state.join("db")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dirs.push(e.path());
            } else {
                files.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_passing_check_whose_outcome_does_not_change_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let state = dir.path().join("state");
    let app = FakeApp::start(&root);
    let agent = Agent::start_in(dir, &shop_config(app.port, "300ms", ""));
    let good = example_release("1.0.0");
    assert_eq!(agent.deploy(s(&good), "1.0.0", true).code, 0);
    let runs = |s: &serde_json::Value| s["checks"]["health"]["runs"].as_u64().unwrap_or(0);
    let first = agent.wait_for_status("healthy with a passing check", |s| {
        s["state"] == "healthy" && s["checks"]["health"]["outcome"] == "pass" && runs(s) >= 2
    });
    // Marking the release good was written and flushed; from here on only
    // unchanged passing results come.
    let before = store_files(&state);
    let seen = agent.wait_for_status("ten more passing runs", |s| runs(s) >= runs(&first) + 10);
    // The results are visible at once, though not written.
    assert_eq!(seen["checks"]["health"]["outcome"], "pass");
    assert_eq!(
        store_files(&state),
        before,
        "ten passing results with no change of outcome wrote to the store"
    );

    // A change of outcome is written at once.
    set_health(&root, "1.0.0", 500);
    agent.wait_for_status("a failing check", |s| {
        s["checks"]["health"]["outcome"] == "fail"
    });
    wait_until("the failure written to the store", || {
        store_files(&state) != before
    });
}
