//! Drop-in deploys (`watch = true`): marked directories in `releases/`,
//! archives in `incoming/`, refusals into `incoming/failed/`.

use std::path::{Path, PathBuf};

use crate::support::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Writes a `.tar.gz` of `release` (files at the archive's root) to `dest`.
fn targz(release: &Path, dest: &Path) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(dest).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(".", release).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

/// Writes `name` in `incoming/` the documented way: a hidden file, then a rename.
fn drop_in(incoming: &Path, name: &str, write: impl FnOnce(&Path)) -> PathBuf {
    let tmp = incoming.join(".tmp-x");
    write(&tmp);
    let dest = incoming.join(name);
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

fn events(agent: &Agent) -> Vec<serde_json::Value> {
    agent.json(&["history", "shop", "--limit", "1000"])["events"]
        .as_array()
        .unwrap()
        .clone()
}

fn release_state(agent: &Agent, version: &str) -> Option<String> {
    agent.json(&["releases", "shop"])["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .map(|r| r["state"].as_str().unwrap_or_default().to_string())
}

#[test]
fn drop_ins_deploy_only_when_complete_and_bad_ones_land_in_failed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let agent = Agent::start_in(dir, &shop_config(app.port, "1s", "watch = true"));
    let incoming = root.join("incoming");
    assert!(incoming.is_dir(), "incoming/ is created at start-up");

    // (1) A directory without its marker is a copy in progress: left alone.
    let dropped = root.join("releases/1.0.0");
    copy_dir(&example_release("1.0.0"), &dropped);
    // A scan that has seen it: one that moves a name that is not a version
    // to failed/ (every scan looks at releases/ first).
    let failed = incoming.join("failed");
    drop_in(&incoming, "bad name!.tar.gz", |tmp| {
        targz(&example_release("1.0.0"), tmp)
    });
    wait_until("the bad name in failed/", || {
        failed.join("bad name!.tar.gz").exists()
    });
    assert!(!incoming.join("bad name!.tar.gz").exists());
    assert!(agent.json(&["status", "shop"])["active"].is_null());
    assert!(!events(&agent).iter().any(|e| e["kind"] == "staged"));
    assert!(dropped.join("app.py").exists(), "not moved");

    // The marker completes it: deployed, baked, good.
    std::fs::write(dropped.join(".ready"), "").unwrap();
    wait_until("1.0.0 good", || {
        let status = agent.json(&["status", "shop"]);
        status["active"] == "1.0.0" && release_state(&agent, "1.0.0").as_deref() == Some("good")
    });
    assert_eq!(current(&root), "1.0.0");
    let staged = events(&agent)
        .into_iter()
        .find(|e| e["kind"] == "staged" && e["version"] == "1.0.0")
        .expect("a staged event");
    assert_eq!(staged["actor"]["name"], "watch");
    assert!(staged["actor"]["uid"].is_null(), "{staged}");
    assert!(
        !root.join("releases/1.0.0/.ready").exists(),
        "the marker is not part of the release"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&incoming)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "failed")
        .collect();
    assert!(
        leftovers.is_empty(),
        "the moved copy is removed: {leftovers:?}"
    );

    // (2) A broken archive, uploaded under a hidden name and renamed:
    // deployed, then rolled back automatically.
    let archive = drop_in(&incoming, "1.1.0.tar.gz", |tmp| {
        targz(&example_release("1.1.0"), tmp)
    });
    wait_until("1.1.0 failed", || {
        release_state(&agent, "1.1.0").as_deref() == Some("failed")
    });
    wait_until("the archive removed", || !archive.exists());
    wait_until("1.0.0 active again", || {
        agent.json(&["status", "shop"])["active"] == "1.0.0"
    });
    assert_eq!(current(&root), "1.0.0");
    let history = events(&agent);
    assert!(
        history.iter().any(|e| e["kind"] == "staged"
            && e["version"] == "1.1.0"
            && e["actor"]["name"] == "watch"),
        "{history:?}"
    );
    assert!(history.iter().any(|e| e["kind"] == "rolled-back"));

    // (3) A hostile archive is refused, moved to failed/, and nothing escapes.
    drop_in(&incoming, "6.6.6.tar.gz", |tmp| {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(tmp).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        let name = b"../escape";
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, &b"hi"[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    });
    wait_until("the hostile archive in failed/", || {
        failed.join("6.6.6.tar.gz").exists()
    });
    assert!(!incoming.join("6.6.6.tar.gz").exists());
    for escaped in [
        root.join("escape"),
        root.join("releases/escape"),
        incoming.join("escape"),
    ] {
        assert!(!escaped.exists(), "{} escaped", escaped.display());
    }
    assert!(!root.join("releases/6.6.6").exists());
    assert_eq!(release_state(&agent, "6.6.6"), None);
    assert_eq!(current(&root), "1.0.0");

    // (4) Two archives at once: the second waits while the first bakes.
    for v in ["1.2.0", "1.3.0"] {
        drop_in(&incoming, &format!("{v}.tgz"), |tmp| {
            targz(&example_release("1.0.0"), tmp)
        });
    }
    wait_until("1.2.0 and 1.3.0 good", || {
        release_state(&agent, "1.2.0").as_deref() == Some("good")
            && release_state(&agent, "1.3.0").as_deref() == Some("good")
    });
    assert_eq!(current(&root), "1.3.0");
    assert!(!incoming.join("1.2.0.tgz").exists() && !incoming.join("1.3.0.tgz").exists());
    let log = agent.log();
    assert!(log.contains("picked up"), "pick-ups are logged");
    assert!(!log.contains("panicked"), "{log}");
}
