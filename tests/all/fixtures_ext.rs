//! More hand-written `.wat` components from `tests/fixtures`, driven through
//! the library: host imports (config secrets and log redaction, kv
//! persistence), the `rollback-hook` world (veto and accept), world mismatches,
//! and an oversized result.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rollback_agent::plugin::{
    CallError, CheckInput, Grants, LifecycleEvent, MemoryKv, Phase, Plugin, PluginError,
    PluginHost, ReleaseInfo, RollbackInfo, Sandbox, Status, Transition, World,
    DEFAULT_MAX_RESPONSE_BYTES,
};

const LEAK_SECRET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/leak-secret.wat"
);
const KV_COUNTER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/kv-counter.wat"
);
const VETO_HOOK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/veto-hook.wat"
);
const OK_HOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/ok-hook.wat");
const OVERSIZED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/oversized.wat"
);
const PASS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/pass.wat");

const SECRET: &str = "s3cr3t-VALUE-42";

fn grants(secrets: BTreeMap<String, String>) -> Grants {
    Grants {
        app: "shop".into(),
        entry: "fixture".into(),
        plugin: "test.wasm".into(),
        allow_hosts: Vec::new(),
        config: Default::default(),
        secrets,
        timeout: Duration::from_secs(2),
        memory_limit: 16 * 1024 * 1024,
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
    }
}

fn sandbox() -> Arc<Sandbox> {
    Sandbox::new(grants(BTreeMap::new()), Arc::new(MemoryKv::default())).unwrap()
}

fn release(version: &str) -> ReleaseInfo {
    ReleaseInfo {
        app: "shop".into(),
        version: version.into(),
        activated_at_ms: Some(1_700_000_000_000),
    }
}

fn input() -> CheckInput {
    CheckInput {
        app: "shop".into(),
        check: "fixture".into(),
        active: release("v2"),
        previous: Some(release("v1")),
        phase: Phase::Bake,
        now_ms: 1_700_000_060_000,
    }
}

fn transition() -> Transition {
    Transition {
        app: "shop".into(),
        from: Some(release("v1")),
        to: release("v2"),
        actor: "alice".into(),
    }
}

/// One event of each kind.
fn events() -> Vec<LifecycleEvent> {
    vec![
        LifecycleEvent::PreActivate(transition()),
        LifecycleEvent::Activated(Transition {
            from: None,
            ..transition()
        }),
        LifecycleEvent::RolledBack(RollbackInfo {
            app: "shop".into(),
            from: release("v2"),
            to: release("v1"),
            reason: "latency_ms 900 > 500".into(),
            check: Some("latency".into()),
            actor: "agent".into(),
        }),
        LifecycleEvent::Degraded {
            app: "shop".into(),
            version: Some("v1".into()),
            reason: "restart command failed".into(),
        },
    ]
}

fn load(host: &PluginHost, path: &str, world: World) -> Plugin {
    host.load_world(Path::new(path), world, None)
        .unwrap_or_else(|e| panic!("cannot load {path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_redacted_from_logs_and_summary() {
    let host = PluginHost::new().unwrap();
    let plugin = load(&host, LEAK_SECRET, World::HealthCheck);
    let secrets = BTreeMap::from([("token".to_string(), SECRET.to_string())]);
    let sandbox = Sandbox::new(grants(secrets), Arc::new(MemoryKv::default())).unwrap();
    let report = plugin.check(&sandbox, &input()).await;
    let result = report.result.unwrap();
    assert_eq!(result.status, Status::Fail);
    assert!(result.summary.contains("***"), "{:?}", result.summary);
    assert!(!result.summary.contains(SECRET), "{:?}", result.summary);
    assert!(!report.logs.is_empty(), "the fixture logs the secret");
    for line in &report.logs {
        assert_eq!(line.level, "warn");
        assert!(!line.message.contains(SECRET), "{line:?}");
        assert!(line.message.contains("***"), "{line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_secret_is_none() {
    let host = PluginHost::new().unwrap();
    let plugin = load(&host, LEAK_SECRET, World::HealthCheck);
    let report = plugin.check(&sandbox(), &input()).await;
    assert_eq!(report.result.unwrap().summary, "no secret");
    assert!(report.logs.is_empty(), "{:?}", report.logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_persists_across_calls_of_one_sandbox() {
    let host = PluginHost::new().unwrap();
    let plugin = load(&host, KV_COUNTER, World::HealthCheck);
    let first = sandbox();
    for expected in 1..=3 {
        let result = plugin.check(&first, &input()).await.result.unwrap();
        assert_eq!(result.status, Status::Pass);
        assert_eq!(result.summary, "count");
        assert_eq!(result.metrics.get("count"), Some(&f64::from(expected)));
    }
    // Another entry with its own kv starts from scratch.
    let second = sandbox();
    let result = plugin.check(&second, &input()).await.result.unwrap();
    assert_eq!(result.metrics.get("count"), Some(&1.0));
    // And the first one keeps counting.
    let result = plugin.check(&first, &input()).await.result.unwrap();
    assert_eq!(result.metrics.get("count"), Some(&4.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_error_vetoes() {
    let host = PluginHost::new().unwrap();
    let plugin = load(&host, VETO_HOOK, World::RollbackHook);
    let sandbox = sandbox();
    for event in events() {
        let report = plugin.on_event(&sandbox, &event).await;
        assert_eq!(
            report.result,
            Err(CallError::Plugin("release freeze in effect".into())),
            "{event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_hook_accepts_every_event() {
    let host = PluginHost::new().unwrap();
    let plugin = load(&host, OK_HOOK, World::RollbackHook);
    let sandbox = sandbox();
    for event in events() {
        let report = plugin.on_event(&sandbox, &event).await;
        assert_eq!(report.result, Ok(()), "{event:?}");
    }
}

fn assert_wrong_world(err: PluginError, path: &str, world: &str) {
    let text = err.to_string();
    assert!(matches!(err, PluginError::Invalid { .. }), "{err:?}");
    assert!(text.contains(&format!("`{world}`")), "{text}");
    let file = Path::new(path).file_name().unwrap().to_str().unwrap();
    assert!(text.contains(file), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worlds_are_not_interchangeable() {
    let host = PluginHost::new().unwrap();
    let err = host
        .load_world(Path::new(VETO_HOOK), World::HealthCheck, None)
        .unwrap_err();
    assert_wrong_world(err, VETO_HOOK, "health-check");
    let err = host.load(Path::new(OK_HOOK)).unwrap_err();
    assert_wrong_world(err, OK_HOOK, "health-check");
    let err = host
        .load_world(Path::new(PASS), World::RollbackHook, None)
        .unwrap_err();
    assert_wrong_world(err, PASS, "rollback-hook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_summary_is_refused() {
    let host = PluginHost::new().unwrap();
    let plugin = load(&host, OVERSIZED, World::HealthCheck);
    match plugin.check(&sandbox(), &input()).await.result {
        Err(CallError::BadOutput(message)) => {
            assert!(message.contains("100000"), "{message}");
        }
        other => panic!("expected BadOutput, got {other:?}"),
    }
}
