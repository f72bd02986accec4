//! Start-up reconciliation: the `current` symlink is the truth and the store
//! is corrected to match it, whatever an interrupted run left behind.

use std::path::Path;
use std::time::Duration;

use rollback_agent::config::AppConfig;
use rollback_agent::journal::Journal;
use rollback_agent::lifecycle::{Intent, Op, Step};
use rollback_agent::release::{AppDir, StageLimits, Version};
use rollback_agent::store::{now_ms, App, AppState, EventKind, Release, ReleaseState, Store};
use rollback_agent::supervisor::{AppHandle, Supervisor};

fn app_config(root: &Path, bake: Duration) -> AppConfig {
    AppConfig {
        name: "shop".into(),
        root: root.to_path_buf(),
        bake,
        max_bake: bake * 2,
        restart: None,
        restart_timeout: Duration::from_secs(5),
        restart_env: Vec::new(),
        keep_modes: false,
        link_unchanged: false,
        checks: Vec::new(),
        hooks: Vec::new(),
        snapshot: Vec::new(),
        keep_releases: None,
        auto_rollback: rollback_agent::config::AutoRollback::Bake,
        watch: false,
    }
}

fn record(version: &str, state: ReleaseState) -> Release {
    Release {
        activated_at_ms: Some(now_ms()),
        ..Release::new("shop", version, state)
    }
}

/// The journaled deploy of 1.0.1 over 1.0.0, with `steps` left.
fn deploy_of_1_0_1(steps: Vec<Step>) -> Intent {
    Intent {
        op: Op::Deploy,
        from: Some("1.0.0".into()),
        to: Some("1.0.1".into()),
        why: "deploy".into(),
        actor: "root".into(),
        check: None,
        automatic: false,
        source: Some("/src/1.0.1".into()),
        steps,
        at_ms: now_ms(),
        before: None,
        staged: false,
    }
}

/// Starts a supervisor without checks or hooks for the app at `root`.
fn start(tmp: &tempfile::TempDir, root: &Path, store: &Store, bake: Duration) -> AppHandle {
    let snapshots = rollback_agent::snapshot::Snapshots::new(tmp.path());
    Supervisor::start(
        app_config(root, bake),
        store.clone(),
        Vec::new(),
        Vec::new(),
        snapshots,
        Journal::new(tmp.path()),
    )
}

/// Two releases on disk, `current` at `active`.
fn layout(root: &Path, active: &str) -> AppDir {
    let dir = AppDir::new(root);
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("release.json"), "{}").unwrap();
    for v in ["1.0.0", "1.0.1"] {
        dir.stage(
            src.path(),
            &Version::parse(v).unwrap(),
            &StageLimits::default(),
        )
        .unwrap();
    }
    dir.activate(&Version::parse(active).unwrap()).unwrap();
    dir
}

async fn wait_for(store: &Store, pred: impl Fn(&App) -> bool) -> App {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rec = store.app("shop").unwrap().unwrap();
        if pred(&rec) {
            return rec;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_activation_interrupted_before_it_was_recorded_is_baked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shop");
    let dir = layout(&root, "1.0.1");
    // The crash came after the swap but before the store learned of it, and
    // left a temporary link and a staging directory behind.
    std::os::unix::fs::symlink("releases/1.0.0", root.join("current.tmp-dead")).unwrap();
    std::fs::create_dir(root.join("releases/.staging-dead")).unwrap();
    let store = Store::open(&tmp.path().join("db")).unwrap();
    store
        .put_release(&record("1.0.0", ReleaseState::Good))
        .unwrap();
    store
        .put_release(&record("1.0.1", ReleaseState::Staged))
        .unwrap();
    let mut rec = App::new("shop");
    rec.state = AppState::Deploying;
    rec.active = Some("1.0.0".into());
    store.put_app(rec).unwrap();
    // The deploy had swapped and was about to run the restart command.
    let journal = Journal::new(tmp.path());
    let intent = deploy_of_1_0_1(vec![Step::Restart]);
    journal.save("shop", &intent).unwrap();

    let _handle = start(&tmp, &root, &store, Duration::from_millis(300));
    let rec = store.app("shop").unwrap().unwrap();
    assert_eq!(rec.active.as_deref(), Some("1.0.1"), "the symlink wins");
    assert_eq!(rec.state, AppState::Baking, "an unbaked release is baked");
    assert_eq!(
        store.release("shop", "1.0.1").unwrap().unwrap().state,
        ReleaseState::Active
    );
    assert!(!root.join("current.tmp-dead").exists());
    assert!(!root.join("releases/.staging-dead").exists());
    assert_eq!(dir.current().unwrap().unwrap().as_str(), "1.0.1");
    // With no checks configured, the bake passes once its window is over.
    let rec = wait_for(&store, |r| r.state == AppState::Healthy).await;
    assert_eq!(rec.last_good.as_deref(), Some("1.0.1"));
    // Start-up finished what the journal named and said so.
    let history = store.history("shop", 20).unwrap();
    let note = history
        .iter()
        .find(|e| {
            e.kind == EventKind::Reconciled
                && e.reason.as_deref().unwrap_or_default().contains("finished")
        })
        .expect("a reconciled event");
    assert!(
        note.reason
            .as_deref()
            .unwrap()
            .contains("finished the interrupted deploy of 1.0.1: restart"),
        "{note:?}"
    );
    assert!(Journal::new(tmp.path()).load("shop").unwrap().is_none());
}

#[tokio::test]
async fn an_interrupted_deploy_that_never_went_live_is_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shop");
    // 1.0.1 was published by staging, but `current` still names 1.0.0.
    let dir = layout(&root, "1.0.0");
    let store = Store::open(&tmp.path().join("db")).unwrap();
    store
        .put_release(&record("1.0.0", ReleaseState::Good))
        .unwrap();
    let intent = deploy_of_1_0_1(vec![Step::Stage, Step::Swap, Step::Restart]);
    Journal::new(tmp.path()).save("shop", &intent).unwrap();

    let _handle = start(&tmp, &root, &store, Duration::from_secs(60));
    assert!(
        !dir.exists(&Version::parse("1.0.1").unwrap()),
        "the staged copy is removed, freeing its version"
    );
    assert!(store.release("shop", "1.0.1").unwrap().is_none());
    let rec = store.app("shop").unwrap().unwrap();
    assert_eq!(rec.active.as_deref(), Some("1.0.0"));
    assert_eq!(rec.state, AppState::Healthy);
    let note = store
        .history("shop", 10)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == EventKind::Reconciled)
        .expect("a reconciled event");
    assert!(
        note.reason
            .as_deref()
            .unwrap()
            .contains("before it went live"),
        "{note:?}"
    );
    assert!(Journal::new(tmp.path()).load("shop").unwrap().is_none());
}

#[tokio::test]
async fn a_deploy_that_never_went_live_leaves_a_degraded_app_degraded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shop");
    layout(&root, "1.0.0");
    let store = Store::open(&tmp.path().join("db")).unwrap();
    store
        .put_release(&record("1.0.0", ReleaseState::Failed))
        .unwrap();
    // The deploy saved `deploying` before it was cut short.
    let mut rec = App::new("shop");
    rec.active = Some("1.0.0".into());
    rec.state = AppState::Deploying;
    store.put_app(rec).unwrap();
    let why = "check `health` failed; rollback impossible".to_string();
    let mut intent = deploy_of_1_0_1(vec![Step::Stage, Step::Swap, Step::Restart]);
    intent.before = Some((AppState::Degraded, Some(why.clone())));
    Journal::new(tmp.path()).save("shop", &intent).unwrap();

    let _handle = start(&tmp, &root, &store, Duration::from_secs(60));
    let rec = store.app("shop").unwrap().unwrap();
    assert_eq!(rec.state, AppState::Degraded, "{rec:?}");
    assert_eq!(rec.reason.as_deref(), Some(why.as_str()));
}

#[tokio::test]
async fn releases_are_adopted_and_forgotten_to_match_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shop");
    layout(&root, "1.0.0");
    let store = Store::open(&tmp.path().join("db")).unwrap();
    // The store remembers a release that is gone from disk, and nothing else.
    store
        .put_release(&record("0.9.0", ReleaseState::Good))
        .unwrap();

    let _handle = start(&tmp, &root, &store, Duration::from_secs(60));
    let rec = store.app("shop").unwrap().unwrap();
    assert_eq!(rec.active.as_deref(), Some("1.0.0"));
    assert_eq!(
        rec.state,
        AppState::Healthy,
        "what ran before the agent is adopted"
    );
    assert_eq!(rec.last_good.as_deref(), Some("1.0.0"));
    let versions: Vec<_> = store
        .releases("shop")
        .unwrap()
        .into_iter()
        .map(|r| (r.version, r.state))
        .collect();
    assert_eq!(
        versions,
        [
            ("1.0.0".to_string(), ReleaseState::Good),
            ("1.0.1".to_string(), ReleaseState::Staged)
        ]
    );
}

#[tokio::test]
async fn a_degraded_app_stays_degraded_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shop");
    layout(&root, "1.0.1");
    let store = Store::open(&tmp.path().join("db")).unwrap();
    store
        .put_release(&record("1.0.1", ReleaseState::Failed))
        .unwrap();
    let mut rec = App::new("shop");
    rec.state = AppState::Degraded;
    rec.active = Some("1.0.1".into());
    rec.reason = Some("no good release to roll back to".into());
    store.put_app(rec).unwrap();

    let _handle = start(&tmp, &root, &store, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rec = store.app("shop").unwrap().unwrap();
    assert_eq!(rec.state, AppState::Degraded);
    assert!(
        rec.bake_until_ms.is_none(),
        "no new bake of a failed release"
    );
    assert_eq!(
        store.release("shop", "1.0.1").unwrap().unwrap().state,
        ReleaseState::Failed
    );
}
