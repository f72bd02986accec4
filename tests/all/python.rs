//! The Python example (`examples/python-check`, built by `make python-example`):
//! a componentize-py component that bundles CPython and imports all of WASI
//! p2, checked against servers on 127.0.0.1.
//!
//! Compiling its ~18 MB takes ~20 s in a debug build, so the cases run
//! through the library on one compiled copy, and one case goes through
//! `rollbackctl plugin test --cache-dir` sharing that copy's cache.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rollback_agent::config::HostRule;
use rollback_agent::plugin::{
    CallError, CallReport, CheckInput, Grants, MemoryKv, Phase, Plugin, PluginHost, ReleaseInfo,
    Sandbox, Status, DEFAULT_MAX_RESPONSE_BYTES,
};

use crate::support::*;

/// The built component; a missing one fails the test rather than skipping it.
fn component() -> PathBuf {
    let p = repo().join("target/plugins/python-check.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `make python-example` first",
        p.display()
    );
    p
}

/// A server answering every request with `status` and the JSON `body`;
/// returns its port and how many requests it has seen.
fn counters(status: u16, body: &str) -> (u16, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let seen = hits.clone();
    let reply = HttpReply::json(status, body);
    let port = http_server(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        reply.clone()
    });
    (port, hits)
}

/// Calls the check once with `url = http://127.0.0.1:<port>/stats` (unless
/// `config` sets it), allowing the port only when `allow`.
async fn run(plugin: &Plugin, port: u16, allow: bool, config: &[(&str, &str)]) -> CallReport {
    let mut values: std::collections::BTreeMap<String, String> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    values
        .entry("url".into())
        .or_insert_with(|| format!("http://127.0.0.1:{port}/stats"));
    values.retain(|_, v| !v.is_empty());
    let grants = Grants {
        app: "shop".into(),
        entry: "errors".into(),
        plugin: "python-check.wasm".into(),
        allow_hosts: if allow {
            vec![HostRule::parse(&format!("127.0.0.1:{port}")).unwrap()]
        } else {
            Vec::new()
        },
        config: values,
        secrets: Default::default(),
        timeout: Duration::from_secs(5),
        memory_limit: 64 * 1024 * 1024,
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
    };
    let sandbox = Sandbox::new(grants, Arc::new(MemoryKv::default())).unwrap();
    let input = CheckInput {
        app: "shop".into(),
        check: "errors".into(),
        active: ReleaseInfo {
            app: "shop".into(),
            version: "v2".into(),
            activated_at_ms: Some(1_700_000_000_000),
        },
        previous: None,
        phase: Phase::Bake,
        now_ms: 1_700_000_060_000,
    };
    plugin.check(&sandbox, &input).await
}

fn plugin_error(report: CallReport) -> String {
    match report.result {
        Err(CallError::Plugin(m)) => m,
        other => panic!("expected a plugin error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only serialises whole tests; no other task of this test wants it.
#[allow(clippy::await_holding_lock)]
async fn python_check_verdicts_through_the_library() {
    let _heavy = crate::support::cpu_heavy();
    let path = component();
    // One compiled copy for both tests: the cache `plugin test --cache-dir` uses too.
    let host = PluginHost::with_options(rollback_agent::plugin::HostOptions {
        cache_dir: Some(plugin_cache()),
        ..Default::default()
    })
    .unwrap();
    let plugin = tokio::task::spawn_blocking(move || host.load(&path).map(|p| (host, p)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot load the Python check: {e}"))
        .1;

    // 1 % errors: pass, with its metrics and one debug log line.
    let (port, hits) = counters(200, r#"{"requests": 100, "errors": 1}"#);
    let report = run(&plugin, port, true, &[]).await;
    assert_eq!(report.http_requests, 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(report.logs.len(), 1, "{:?}", report.logs);
    assert_eq!(report.logs[0].level, "debug");
    let result = report.result.unwrap();
    assert_eq!(result.status, Status::Pass, "{}", result.summary);
    assert_eq!(result.metrics["error_ratio"], 0.01);
    assert_eq!(result.metrics["requests"], 100.0);

    // 10 % errors: fail by default, pass with a higher `max_error_ratio`.
    let (port, _) = counters(200, r#"{"requests": 100, "errors": 10}"#);
    let result = run(&plugin, port, true, &[]).await.result.unwrap();
    assert_eq!(result.status, Status::Fail, "{}", result.summary);
    assert_eq!(result.metrics["error_ratio"], 0.1);
    let relaxed = [("max_error_ratio", "0.2")];
    let result = run(&plugin, port, true, &relaxed).await.result.unwrap();
    assert_eq!(result.status, Status::Pass, "{}", result.summary);

    // No traffic is no evidence of health.
    let (port, _) = counters(200, r#"{"requests": 0, "errors": 0}"#);
    assert_eq!(
        plugin_error(run(&plugin, port, true, &[]).await),
        "no data: the app reported 0 requests"
    );

    // A non-2xx answer fails, naming the status.
    let (port, _) = counters(500, r#"{"error": "boom"}"#);
    let result = run(&plugin, port, true, &[]).await.result.unwrap();
    assert_eq!(result.status, Status::Fail);
    assert!(result.summary.contains("500"), "{}", result.summary);

    // Not allow-listed: the host refuses before any request.
    let (port, hits) = counters(200, r#"{"requests": 100, "errors": 1}"#);
    let message = plugin_error(run(&plugin, port, false, &[]).await);
    assert!(message.contains("allow_hosts"), "{message}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // Nobody listening: the http import's transport error, in words.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let message = plugin_error(run(&plugin, port, true, &[]).await);
    assert!(message.contains("transport"), "{message}");

    // Bad config and a body that is not the expected JSON.
    let (port, _) = counters(200, "<html>ok</html>");
    let message = plugin_error(run(&plugin, port, true, &[]).await);
    assert!(message.contains("expected JSON"), "{message}");
    let message = plugin_error(run(&plugin, port, true, &[("url", "")]).await);
    assert_eq!(message, "config `url` is required");
    let message = plugin_error(run(&plugin, port, true, &[("max_error_ratio", "lots")]).await);
    assert!(message.contains("max_error_ratio"), "{message}");
}

#[test]
fn python_check_through_rollbackctl_plugin_test() {
    let _heavy = crate::support::cpu_heavy();
    let path = component();
    let (port, hits) = counters(200, r#"{"requests": 100, "errors": 1}"#);
    let url = format!("url=http://127.0.0.1:{port}/stats");
    let allow = format!("127.0.0.1:{port}");
    // No agent: `plugin test` must not need the socket.
    let out = ctl_with(
        Path::new("/nonexistent/agent.sock"),
        &[
            "plugin",
            "test",
            path.to_str().unwrap(),
            "--config",
            &url,
            "--allow-host",
            &allow,
            "--cache-dir",
            plugin_cache().to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        std::fs::read_dir(plugin_cache()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".cwasm")),
        "the compiled component is kept"
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["status"], "pass", "{v}");
    assert_eq!(v["metrics"]["error_ratio"], 0.01, "{v}");
    assert_eq!(v["metrics"]["requests"], 100.0, "{v}");
    assert_eq!(v["logs"][0]["level"], "debug", "{v}");
    assert_eq!(v["http_requests"], 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
