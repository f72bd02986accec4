//! The plugin sandbox, driven through the library with hand-written `.wat`
//! components from `tests/fixtures`: verdicts, plugin errors, and hostile
//! plugins (loop, memory growth, trap, recursion, bad output) that must become
//! `CallError`s within their deadline without holding the runtime's threads.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollback_agent::plugin::{
    CallError, CallReport, CheckInput, Grants, MemoryKv, Phase, Plugin, PluginError, PluginHost,
    ReleaseInfo, Sandbox, Status, DEFAULT_MAX_RESPONSE_BYTES,
};

const PASS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/pass.wat");
const FAIL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/fail.wat");
const ERROR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/error.wat");
const LOOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/loop.wat");
const GROW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/grow.wat");
const TRAP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/trap.wat");
const RECURSION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/recursion.wat"
);
const BAD_METRIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/bad-metric.wat"
);
const NOT_A_COMPONENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/not-a-component.wat"
);

/// Deadline of one call in most tests.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Generous allowance for noisy machines on top of a deadline.
const SLACK: Duration = Duration::from_secs(2);

fn grants(timeout: Duration) -> Grants {
    Grants {
        app: "shop".into(),
        entry: "fixture".into(),
        plugin: "test.wasm".into(),
        allow_hosts: Vec::new(),
        config: Default::default(),
        secrets: Default::default(),
        timeout,
        memory_limit: 16 * 1024 * 1024,
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
    }
}

fn sandbox(timeout: Duration) -> Arc<Sandbox> {
    Sandbox::new(grants(timeout), Arc::new(MemoryKv::default())).unwrap()
}

fn input() -> CheckInput {
    CheckInput {
        app: "shop".into(),
        check: "fixture".into(),
        active: ReleaseInfo {
            app: "shop".into(),
            version: "v2".into(),
            activated_at_ms: Some(1_700_000_000_000),
        },
        previous: Some(ReleaseInfo {
            app: "shop".into(),
            version: "v1".into(),
            activated_at_ms: None,
        }),
        phase: Phase::Bake,
        now_ms: 1_700_000_060_000,
    }
}

fn load(host: &PluginHost, path: &str) -> Plugin {
    host.load(Path::new(path))
        .unwrap_or_else(|e| panic!("cannot load {path}: {e}"))
}

/// Loads `path` in a fresh host and calls it once with the default grants.
async fn run(path: &str) -> CallReport {
    let host = PluginHost::new().unwrap();
    let plugin = load(&host, path);
    plugin.check(&sandbox(TIMEOUT), &input()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_fixture_passes() {
    let report = run(PASS).await;
    let result = report.result.unwrap();
    assert_eq!(result.status, Status::Pass);
    assert_eq!(result.summary, "fixture ok");
    assert!(result.metrics.is_empty(), "{:?}", result.metrics);
    assert!(report.logs.is_empty());
    assert_eq!(report.http_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fixture_fails() {
    let result = run(FAIL).await.result.unwrap();
    assert_eq!(result.status, Status::Fail);
    assert_eq!(result.summary, "fixture says fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_error_is_reported_as_such() {
    let result = run(ERROR).await.result;
    assert_eq!(result, Err(CallError::Plugin("fixture error".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_times_out() {
    let report = run(LOOP).await;
    assert_eq!(report.result, Err(CallError::Timeout(TIMEOUT)));
    assert!(
        report.elapsed >= TIMEOUT,
        "stopped early: {:?}",
        report.elapsed
    );
    assert!(
        report.elapsed < TIMEOUT + SLACK,
        "stopped late: {:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_growth_is_capped() {
    let report = run(GROW).await;
    match &report.result {
        Err(CallError::Trap(message)) => {
            let m = message.to_lowercase();
            assert!(
                m.contains("memory"),
                "trap message does not name memory: {message:?}"
            );
        }
        other => panic!("expected a trap for memory growth, got {other:?}"),
    }
    assert!(
        report.elapsed < TIMEOUT + SLACK,
        "took {:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_traps() {
    let result = run(TRAP).await.result;
    assert!(
        matches!(&result, Err(CallError::Trap(m)) if m.contains("unreachable")),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_traps() {
    let report = run(RECURSION).await;
    assert!(
        matches!(&report.result, Err(CallError::Trap(m)) if m.contains("stack")),
        "{:?}",
        report.result
    );
    assert!(
        report.elapsed < TIMEOUT + SLACK,
        "took {:?}",
        report.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_metric_is_refused() {
    let result = run(BAD_METRIC).await.result;
    match result {
        Err(CallError::BadOutput(message)) => assert!(message.contains("latency_ms"), "{message}"),
        other => panic!("expected BadOutput, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_module_is_not_a_plugin() {
    let host = PluginHost::new().unwrap();
    let err = host.load(Path::new(NOT_A_COMPONENT)).unwrap_err();
    assert!(
        matches!(&err, PluginError::Invalid { path, .. } if path == &PathBuf::from(NOT_A_COMPONENT)),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("not-a-component.wat"),
        "error does not name the file: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_is_a_read_error() {
    let host = PluginHost::new().unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/does-not-exist.wat"
    );
    let err = host.load(Path::new(path)).unwrap_err();
    assert!(matches!(err, PluginError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist.wat"), "{err}");
}

/// Two plugins spinning on a two-thread runtime must not starve a third task:
/// the host yields to the executor on every epoch tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_plugins_do_not_hold_worker_threads() {
    let host = PluginHost::new().unwrap();
    let looping = Arc::new(load(&host, LOOP));
    let passing = Arc::new(load(&host, PASS));
    let loop_timeout = Duration::from_secs(2);
    let loop_sandbox = Arc::new(sandbox(loop_timeout));
    let pass_sandbox = Arc::new(sandbox(TIMEOUT));

    let started = Instant::now();
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let plugin = looping.clone();
            let sandbox = loop_sandbox.clone();
            tokio::spawn(async move { plugin.check(&sandbox, &input()).await })
        })
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU32::new(0));
    let counter = {
        let (done, completed) = (done.clone(), completed.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let report = passing.check(&pass_sandbox, &input()).await;
                assert_eq!(report.result.map(|r| r.status), Ok(Status::Pass));
                completed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    for handle in loops {
        let report = handle.await.unwrap();
        assert_eq!(report.result, Err(CallError::Timeout(loop_timeout)));
    }
    // Count only the calls that completed while the loops were running.
    let count = completed.load(Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let loops_took = started.elapsed();
    counter.await.unwrap();
    assert!(
        loops_took < loop_timeout + SLACK,
        "looping plugins took {loops_took:?}"
    );
    assert!(
        count >= 3,
        "only {count} pass calls completed in {loops_took:?} beside two looping plugins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_one_host_keep_working() {
    let host = PluginHost::new().unwrap();
    let plugin = load(&host, PASS);
    let sandbox = sandbox(TIMEOUT);
    let input = input();
    for i in 0..200 {
        let report = plugin.check(&sandbox, &input).await;
        match report.result {
            Ok(r) => {
                assert_eq!(r.status, Status::Pass, "call {i}");
                assert_eq!(r.summary, "fixture ok", "call {i}");
            }
            Err(e) => panic!("call {i} failed: {e}"),
        }
    }
}
