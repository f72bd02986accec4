//! Crash safety: `kill -9` of rollbackd at random moments during deploys,
//! bakes and rollbacks. After every restart the disk and the store must
//! agree: `current` points at a complete release, no leftover of interrupted
//! work remains, `status` names the release `current` points at, and the
//! releases the store lists are exactly the directories under `releases/`.
//!
//! The round plan comes from a small PRNG seeded from the clock; the seed is
//! printed (set `CRASH_SEED` to replay the same plan). The kill moments still
//! land wherever the agent happens to be, so a replay is close, not exact.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::*;

/// Rounds of action (+ kill) + restart + checks.
const ROUNDS: u32 = 80;
/// `keep_releases` of the app.
const KEEP: usize = 2;
/// Percentage of rounds that end with a SIGKILL; the others finish normally.
const KILL_PERCENT: u64 = 75;
/// Longest wait between the action and the kill.
const MAX_KILL_DELAY_MS: u64 = 400;
/// Kills that wait for the disk to change (see [`Kill::OnDiskChange`]), in percent
/// of all kills: the interesting windows (staging, the swap of `current` and
/// the store updates around it) last a few milliseconds, which a plain sleep of
/// 0-400 ms almost never hits.
const ON_CHANGE_PERCENT: u64 = 40;
/// Liveness bound for the agent to settle or agree with itself (not a timing
/// assertion: it only turns a hang into a failure with a message).
const PATIENCE: Duration = Duration::from_secs(60);

/// SplitMix64: small, seedable, good enough to pick actions and delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) => s.trim().parse().expect("CRASH_SEED must be a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// What the state file holds while a good release runs.
pub(crate) const GOOD_DATA: &str = "data of the good release\n";

/// One app `shop` with a short bake, a fast health check, `keep_releases`,
/// and a state file that a bad release "migrates" as it starts (so only a
/// restore brings the good data back); the restart command logs each
/// restart to `{dir}/restarts.log`. `prepare` writes the state file first.
pub(crate) fn crash_config(port: u16, bake: &str, keep: usize) -> String {
    format!(
        r#"[apps.shop]
root = "{{dir}}/shop"
bake = "{bake}"
keep_releases = {keep}
snapshot = ["{{dir}}/state/state.db"]
restart = ["sh", "-c", "echo \"$ROLLBACK_VERSION\" >> {{dir}}/restarts.log; case \"$ROLLBACK_VERSION\" in *-bad) echo migrated > {{dir}}/state/state.db;; esac"]

[[apps.shop.checks]]
name = "health"
plugin = "{plugin}"
interval = "100ms"
fail_after = 2
timeout = "2s"
allow_hosts = ["127.0.0.1:{port}"]
config = {{ url = "http://127.0.0.1:{port}/health" }}
"#,
        plugin = plugin("http-probe").display()
    )
}

/// Writes the state file of `crash_config` with the good data.
pub(crate) fn prepare(dir: &Path) {
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(dir.join("state/state.db"), GOOD_DATA).unwrap();
}

/// After `check_consistent`, what a user of the app sees (with
/// `crash_config`, once the agent is settled): a good release runs and is
/// healthy, the restart command ran for it after its last swap, the state
/// file holds the good data, nothing temporary is left beside it or among
/// the snapshots, no snapshot outlives its release, no operation is left in
/// the journal, `keep_releases` holds (the active release and its rollback
/// target, here the last good one, are never pruned), and the history's last
/// `activated` event names what runs. Returns the active release.
///
/// One exception is the agent's own rule: a bad release deployed when no
/// good one is left to go back to (operators' rollbacks mark releases
/// failed) stays, `degraded`; from then on the state file holds what that
/// release made of it.
pub(crate) fn check_what_users_see(agent: &Agent, root: &Path, ctx: &str, keep: usize) -> String {
    let status = agent.json(&["status", "shop"]);
    let active = status["active"].as_str().unwrap_or_default().to_string();
    let history = agent.json(&["history", "shop", "--limit", "10000"]);
    let events = history["events"].as_array().unwrap();
    let no_target = |e: &Value| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no good release to roll back to"))
    };
    let stuck = status["state"] == "degraded" && no_target(&status);
    if !stuck {
        let recent: Vec<String> = events
            .iter()
            .take(12)
            .map(|e| format!("{} {} {}", e["kind"], e["version"], e["reason"]))
            .collect();
        assert!(
            active.ends_with("-good"),
            "{ctx}: a bad release (or none) runs: {status}\nrecent events: {recent:#?}"
        );
        assert_eq!(status["state"], "healthy", "{ctx}: {status}");
    }
    let restarts = std::fs::read_to_string(agent.path().join("restarts.log")).unwrap_or_default();
    assert_eq!(
        restarts.lines().last(),
        Some(active.as_str()),
        "{ctx}: restarts were {restarts:?}, {active} runs"
    );
    let ever_stuck = events
        .iter()
        .any(|e| e["kind"] == "degraded" && no_target(e));
    if !ever_stuck {
        assert_eq!(
            std::fs::read_to_string(agent.path().join("state/state.db")).unwrap(),
            GOOD_DATA,
            "{ctx}: the state file is not the good release's"
        );
    }
    // The state file lives in the state directory here; `db/`, `intents/`,
    // `snapshots/` and `plugin-cache/` are the agent's.
    let beside: Vec<_> = listing(&agent.path().join("state"))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        beside.is_empty(),
        "{ctx}: temporaries beside the state file: {beside:?}"
    );
    let bound = keep.max(2);
    let intents = agent.path().join("state/intents");
    // Releases only: their file indexes (`.index-<version>`) are checked
    // where the layout is.
    let releases: Vec<_> = listing(&root.join("releases"))
        .into_iter()
        .filter(|n| !n.starts_with(".index-"))
        .collect();
    for snap in listing(&agent.path().join("state/snapshots/shop")) {
        assert!(!snap.starts_with('.'), "{ctx}: snapshot temporary {snap}");
        assert!(
            releases.contains(&snap),
            "{ctx}: snapshot of {snap} without its release ({releases:?})"
        );
    }
    assert!(
        listing(&intents).is_empty(),
        "{ctx}: an operation is left in the journal: {:?}",
        std::fs::read_to_string(intents.join("shop.json"))
    );
    assert!(
        releases.len() <= bound,
        "{ctx}: keep_releases = {keep}, releases {releases:?}"
    );
    let last_activated = events
        .iter()
        .find(|e| e["kind"] == "activated")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        last_activated["version"].as_str(),
        Some(active.as_str()),
        "{ctx}: last activated event {last_activated}"
    );
    active
}

#[derive(Debug, Clone)]
enum Action {
    Deploy {
        version: String,
        good: bool,
        wait: bool,
    },
    Rollback {
        to: Option<String>,
    },
}

impl Action {
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        match self {
            Action::Deploy {
                version,
                good,
                wait,
            } => {
                let source = example_release(if *good { "1.0.0" } else { "1.1.0" });
                args.extend(["deploy".into(), "shop".into()]);
                args.push(source.display().to_string());
                args.extend(["--version".into(), version.clone()]);
                if *wait {
                    args.push("--wait".into());
                }
            }
            Action::Rollback { to } => {
                args.extend(["rollback", "shop", "--reason", "crash test"].map(String::from));
                if let Some(to) = to {
                    args.extend(["--to".into(), to.clone()]);
                }
            }
        }
        args
    }
}

/// When to SIGKILL the agent after the action was sent.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// Let the round finish normally.
    Never,
    /// After this many milliseconds.
    After(u64),
    /// As soon as something under the app root changes (a staging
    /// directory, a new release, `current` swapped; only `current` if
    /// `current_only`), plus `us` microseconds; after `MAX_KILL_DELAY_MS` if
    /// nothing changes.
    OnDiskChange { current_only: bool, us: u64 },
}

type DiskState = (Option<PathBuf>, Vec<String>, Vec<String>);

/// What the test can see of the app root: `current`'s target and the
/// entries of the root and of `releases/`.
fn disk_state(root: &Path) -> DiskState {
    (
        std::fs::read_link(root.join("current")).ok(),
        listing(root),
        listing(&root.join("releases")),
    )
}

/// Polls until the disk under `root` (or only `current`) differs from
/// `before`, or the deadline.
fn wait_for_disk_change(root: &Path, before: &DiskState, current_only: bool) -> bool {
    let deadline = Instant::now() + Duration::from_millis(MAX_KILL_DELAY_MS);
    while Instant::now() < deadline {
        let now = disk_state(root);
        if (current_only && now.0 != before.0) || (!current_only && now != *before) {
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    false
}

/// The content a release directory must hold, by the suffix of its name.
fn expected_release_json(version: &str) -> String {
    let source = if version.ends_with("-bad") {
        "1.1.0"
    } else {
        "1.0.0"
    };
    std::fs::read_to_string(example_release(source).join("release.json")).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// The sorted entry names of `dir` (none if it cannot be read).
pub(crate) fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `<root>/current`'s target; it must always exist and be a symlink.
fn current_link(root: &Path, ctx: &str) -> PathBuf {
    let link = root.join("current");
    let meta = std::fs::symlink_metadata(&link)
        .unwrap_or_else(|e| panic!("{ctx}: {} is missing: {e}", link.display()));
    assert!(
        meta.file_type().is_symlink(),
        "{ctx}: {} is not a symlink",
        link.display()
    );
    std::fs::read_link(&link).unwrap()
}

/// (active, state, last_good): what must not move while a snapshot is taken.
fn status_key(s: &Value) -> (Value, Value, Value) {
    (
        s["active"].clone(),
        s["state"].clone(),
        s["last_good"].clone(),
    )
}

/// Waits until the app is neither deploying, baking nor rolling back, and
/// its supervisor has finished what follows.
pub(crate) fn settle(agent: &Agent, ctx: &str) -> String {
    let mut last = Value::Null;
    let state = wait_for_opt(PATIENCE, || {
        last = agent.json(&["status", "shop"]);
        let state = last["state"].as_str().unwrap_or_default();
        matches!(state, "healthy" | "degraded" | "empty").then(|| state.to_string())
    })
    .unwrap_or_else(|| panic!("{ctx}: the app never settled: {last}"));
    // `check` is answered by the app's supervisor once it is done with what
    // it still does after saving the state (the prune that follows an
    // operation or a start-up).
    let _ = agent.ctl(&["check", "shop"]);
    state
}

/// Takes a snapshot of disk and store while nothing moves (an automatic
/// rollback of a resumed bake may be swapping `current` at the same time),
/// then checks that they agree. Returns what is odd but not required here:
/// releases `active` in the store that `current` does not point at (version,
/// description).
pub(crate) fn check_consistent(agent: &Agent, root: &Path, ctx: &str) -> Vec<(String, String)> {
    let deadline = Instant::now() + PATIENCE;
    let releases_dir = root.join("releases");
    loop {
        let link1 = current_link(root, ctx);
        let s1 = agent.json(&["status", "shop"]);
        let root_entries = names(root);
        // The file index beside each release (`.index-<version>`) is not a
        // release; one without its release is a leftover.
        let (indexes, disk_entries): (Vec<_>, Vec<_>) = names(&releases_dir)
            .into_iter()
            .partition(|n| n.starts_with(".index-"));
        let listed = agent.json(&["releases", "shop"]);
        let s2 = agent.json(&["status", "shop"]);
        let link2 = current_link(root, ctx);
        let state = s1["state"].as_str().unwrap_or_default();
        let moving = link1 != link2
            || status_key(&s1) != status_key(&s2)
            || matches!(state, "deploying" | "rolling-back");
        if moving {
            assert!(
                Instant::now() < deadline,
                "{ctx}: disk and store never held still: {link1:?} {s1} / {link2:?} {s2}"
            );
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }

        // `current` -> releases/<v>, a complete release.
        let mut comps = link1.components();
        let (Some(first), Some(second), None) = (comps.next(), comps.next(), comps.next()) else {
            panic!("{ctx}: current points at {link1:?}, not releases/<version>");
        };
        assert_eq!(
            first.as_os_str(),
            "releases",
            "{ctx}: current points at {link1:?}"
        );
        let active = second.as_os_str().to_string_lossy().into_owned();

        // No leftover of interrupted work.
        let tmp_links: Vec<_> = root_entries
            .iter()
            .filter(|n| n.starts_with("current.tmp-"))
            .collect();
        assert!(
            tmp_links.is_empty(),
            "{ctx}: temporary links left in the root: {tmp_links:?}"
        );
        let orphans: Vec<_> = indexes
            .iter()
            .filter(|i| !disk_entries.iter().any(|v| **i == format!(".index-{v}")))
            .collect();
        assert!(
            orphans.is_empty(),
            "{ctx}: file indexes without their release: {orphans:?}"
        );
        let hidden: Vec<_> = disk_entries.iter().filter(|n| n.starts_with('.')).collect();
        assert!(
            hidden.is_empty(),
            "{ctx}: staging or removal directories left in releases/: {hidden:?}"
        );

        // Every release directory is complete.
        for v in &disk_entries {
            let dir = releases_dir.join(v);
            let meta = std::fs::symlink_metadata(&dir).unwrap();
            assert!(meta.is_dir(), "{ctx}: releases/{v} is not a directory");
            let text = std::fs::read_to_string(dir.join("release.json"))
                .unwrap_or_else(|e| panic!("{ctx}: releases/{v}/release.json unreadable: {e}"));
            serde_json::from_str::<Value>(&text).unwrap_or_else(|e| {
                panic!("{ctx}: releases/{v}/release.json is not JSON ({e}): {text:?}")
            });
            assert_eq!(
                text,
                expected_release_json(v),
                "{ctx}: releases/{v}/release.json differs from its source"
            );
        }
        assert!(
            disk_entries.contains(&active),
            "{ctx}: current points at releases/{active}, which does not exist: {disk_entries:?}"
        );

        // The store agrees with the symlink.
        assert_eq!(
            s1["active"].as_str(),
            Some(active.as_str()),
            "{ctx}: status disagrees with current -> releases/{active}: {s1}"
        );
        assert!(
            matches!(state, "baking" | "healthy" | "degraded"),
            "{ctx}: unexpected app state with an active release: {s1}"
        );

        // The store lists exactly the directories on disk.
        let records = listed["releases"].as_array().unwrap();
        let mut stored = BTreeSet::new();
        let mut odd = Vec::new();
        for r in records {
            let v = r["version"].as_str().unwrap().to_string();
            let rstate = r["state"].as_str().unwrap_or_default();
            assert!(
                matches!(rstate, "staged" | "active" | "good" | "failed"),
                "{ctx}: release {v} has state {rstate:?}: {r}"
            );
            if rstate == "active" && v != active {
                odd.push((
                    v.clone(),
                    format!("{ctx}: release {v} is `active` in the store but current is {active}"),
                ));
            }
            assert!(
                stored.insert(v.clone()),
                "{ctx}: {v} listed twice: {listed}"
            );
        }
        let on_disk: BTreeSet<String> = disk_entries.iter().cloned().collect();
        assert_eq!(
            stored, on_disk,
            "{ctx}: `releases` (left) and releases/ on disk (right) differ: {listed}"
        );

        // last_good, when set, names a good release.
        if let Some(good) = s1["last_good"].as_str() {
            let r = records
                .iter()
                .find(|r| r["version"] == good)
                .unwrap_or_else(|| panic!("{ctx}: last_good {good} is not a release: {listed}"));
            assert_eq!(r["state"], "good", "{ctx}: last_good {good}: {r}");
        }

        // The whole audit log still decodes.
        let history = agent.json(&["history", "shop", "--limit", "10000"]);
        assert!(history["events"].as_array().is_some(), "{ctx}: {history}");
        return odd;
    }
}

#[test]
fn kill_9_at_random_moments_never_leaves_disk_and_store_apart() {
    let seed = seed();
    println!("crash test seed: {seed} (replay with CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    prepare(dir.path());
    let mut agent = Agent::process_in(dir, &crash_config(app.port, "400ms", KEEP));

    // A good release first, so that `current` exists from here on.
    let out = agent.deploy(example_release("1.0.0").to_str().unwrap(), "r0-good", true);
    assert_eq!(out.code, 0, "seed {seed}: first deploy: {out:?}");
    check_consistent(&agent, &root, &format!("seed {seed}, setup"));

    // Rollback targets: good releases (a bad one, activated by hand, would
    // rightly leave its migrated state file behind).
    let mut versions = vec!["r0-good".to_string()];
    let (mut kills, mut finished, mut changes_seen) = (0u32, 0u32, 0u32);
    // First sighting of each oddity, by version.
    let mut odd = BTreeMap::new();
    for round in 1..=ROUNDS {
        let action = match rng.below(10) {
            0..=3 => Action::Deploy {
                version: format!("r{round}-good"),
                good: true,
                wait: rng.percent(50),
            },
            4..=6 => Action::Deploy {
                version: format!("r{round}-bad"),
                good: false,
                wait: rng.percent(50),
            },
            7 | 8 => Action::Rollback { to: None },
            _ => Action::Rollback {
                to: Some(versions[rng.below(versions.len() as u64) as usize].clone()),
            },
        };
        if let Action::Deploy {
            version,
            good: true,
            ..
        } = &action
        {
            versions.push(version.clone());
        }
        let kill = if !rng.percent(KILL_PERCENT) {
            Kill::Never
        } else if rng.percent(ON_CHANGE_PERCENT) {
            Kill::OnDiskChange {
                current_only: rng.percent(50),
                us: rng.below(3001),
            }
        } else {
            Kill::After(rng.below(MAX_KILL_DELAY_MS + 1))
        };
        let ctx = format!("seed {seed}, round {round} ({action:?}, {kill:?})");

        let before = disk_state(&root);
        let args = action.args();
        let socket = agent.socket.clone();
        let client = std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl_with(&socket, &args)
        });
        match kill {
            Kill::After(_) | Kill::OnDiskChange { .. } => {
                match kill {
                    Kill::After(ms) => std::thread::sleep(Duration::from_millis(ms)),
                    Kill::OnDiskChange { current_only, us } => {
                        if wait_for_disk_change(&root, &before, current_only) {
                            changes_seen += 1;
                            std::thread::sleep(Duration::from_micros(us));
                        }
                    }
                    Kill::Never => unreachable!(),
                }
                agent.kill9();
                // The client may fail in any way now: that is expected.
                let _ = client.join();
                kills += 1;
                // Panics (with the log) if the store cannot be opened.
                agent.spawn();
            }
            Kill::Never => {
                let out = client.join().unwrap();
                assert!(
                    matches!(out.code, 0 | 1 | 3),
                    "{ctx}: rollbackctl ended unexpectedly: {out:?}"
                );
                settle(&agent, &ctx);
                finished += 1;
            }
        }
        settle(&agent, &ctx);
        for (version, note) in check_consistent(&agent, &root, &ctx) {
            odd.entry(version).or_insert(note);
        }
        check_what_users_see(&agent, &root, &ctx, KEEP);
    }

    let states: Vec<String> = agent.json(&["releases", "shop"])["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r["version"].as_str().unwrap(),
                r["state"].as_str().unwrap()
            )
        })
        .collect();
    let reconciled = agent.json(&["history", "shop", "--limit", "10000"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "reconciled")
        .count();
    let log = agent.log();
    let leftovers = log
        .lines()
        .filter(|l| l.contains("removed leftover of interrupted work") && l.contains("app"))
        .count();
    println!(
        "crash test seed {seed}: {ROUNDS} rounds, 0 violations ({kills} killed, {changes_seen} of them just \
         after a disk change; {finished} finished) in {:.1?}; \
         {reconciled} reconciliations, {leftovers} leftovers removed; releases: {}",
        started.elapsed(),
        states.join(" ")
    );
    // A release left `active` while `current` points elsewhere means an
    // interrupted rollback was not completed at start-up.
    assert!(
        odd.is_empty(),
        "seed {seed}: {:?}",
        odd.values().collect::<Vec<_>>()
    );
}
