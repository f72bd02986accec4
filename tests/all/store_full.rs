//! Safety before bookkeeping: with the state directory full, a release
//! whose health check fails is still rolled back on disk (swap and restart)
//! although its intent cannot be journaled, and the history has the
//! rollback once there is space again. Needs root (it mounts a small tmpfs
//! as the state dir).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use crate::support::*;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_dir_does_not_stop_a_rollback() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("store_full test needs root to mount a tmpfs; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    let _mount = Mount(state.clone());

    // The app answers what the test says.
    let health = Arc::new(AtomicU16::new(200));
    let answer = health.clone();
    let port = http_server(move |_| HttpReply::new(answer.load(Ordering::SeqCst), "{}"));
    let restarts = dir.path().join("restarts.log");
    let restart = format!(
        "restart = [\"sh\", \"-c\", \"echo \\\"$ROLLBACK_VERSION\\\" >> {}\"]",
        restarts.display()
    );
    let cfg = shop_config(port, "1s", &restart);
    let root = dir.path().join("shop");
    let mut agent = Agent::start_in(dir, &cfg);
    let src = example_release("1.0.0");
    let out = agent.deploy(src.to_str().unwrap(), "1.0.0", true);
    assert_eq!(out.code, 0, "{out:?}");
    // 1.1.0 goes live and bakes for an hour.
    let cfg_long = std::fs::read_to_string(&agent.config)
        .unwrap()
        .replace("bake = \"1s\"", "bake = \"1h\"");
    std::fs::write(&agent.config, cfg_long).unwrap();
    agent.stop();
    agent.spawn();
    let out = agent.deploy(src.to_str().unwrap(), "1.1.0", false);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(current(&root), "1.1.0");

    // Fill the state directory, then let the health check fail.
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", filler.display()))
        .status();
    health.store(500, Ordering::SeqCst);

    // The rollback happens on disk all the same: swap and restart.
    wait_until("the swap back to 1.0.0", || current(&root) == "1.0.0");
    wait_until("the restart of 1.0.0", || {
        std::fs::read_to_string(&restarts)
            .unwrap_or_default()
            .lines()
            .last()
            == Some("1.0.0")
    });
    // (sled keeps spare room in its own files, so the store may still take
    // these writes; the journal could not, and the rollback went ahead.)
    assert!(
        agent.log().contains("rolling back without a journal"),
        "the journal write failed on the full disk"
    );

    // Space again: the store catches up, the rollback is in the history.
    std::fs::remove_file(&filler).unwrap();
    wait_until("the store to be written again", || {
        let s = agent.json(&["status", "shop"]);
        s["store_unwritable"].is_null() && s["active"] == "1.0.0" && s["state"] == "healthy"
    });
    let history = agent.json(&["history", "shop", "--limit", "100"]);
    let rolled_back = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "rolled-back" && e["version"] == "1.1.0");
    assert!(
        rolled_back,
        "the queued rollback event was recorded: {history}"
    );
    agent.stop();
}
