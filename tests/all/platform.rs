//! The plugin platform end to end: the compiled-component cache, isolation
//! between apps, pinning, secrets at start-up, and `rollbackctl plugin test`.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// A server that answers 429 (Retry-After: 0) `throttled` times, then 200.
fn throttled_server(throttled: u32) -> (u16, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let seen = hits.clone();
    let port = http_server(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) < throttled {
            HttpReply::new(429, "").header("retry-after", "0")
        } else {
            HttpReply::new(200, "ok")
        }
    });
    (port, hits)
}

fn plugin_test(args: &[&str]) -> Ctl {
    // No agent: `plugin test` must not need the socket.
    ctl_with(
        Path::new("/nonexistent/agent.sock"),
        &[&["plugin", "test"], args].concat(),
    )
}

#[test]
fn plugin_test_runs_a_check_locally_with_documented_exit_codes() {
    let out = plugin_test(&[&fixture("pass.wat")]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("pass: fixture ok"), "{}", out.stdout);
    assert_eq!(plugin_test(&[&fixture("fail.wat")]).code, 3);
    let out = plugin_test(&[&fixture("loop.wat"), "--timeout", "300ms"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("timed out"), "{}", out.stdout);
    assert_eq!(plugin_test(&[&fixture("trap.wat")]).code, 1);
    let out = plugin_test(&[&fixture("not-a-component.wat")]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not-a-component.wat"), "{}", out.stderr);
    assert_eq!(plugin_test(&[]).code, 2, "usage");
    // A compiled-code cache others may write to is refused, never loaded from.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let cache = shared.path().to_str().unwrap();
    let out = plugin_test(&[&fixture("pass.wat"), "--cache-dir", cache]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("others may write"), "{}", out.stderr);
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    assert_eq!(
        plugin_test(&[&fixture("pass.wat"), "--cache-dir", cache]).code,
        0
    );
    assert_eq!(
        std::fs::read_dir(shared.path()).unwrap().count(),
        1,
        "one compiled copy"
    );
    assert_eq!(
        plugin_test(&[&fixture("pass.wat"), "--config", "novalue"]).code,
        2
    );

    // The real http-probe against a server that throttles twice: retried, then pass.
    let (port, hits) = throttled_server(2);
    let url = format!("url=http://127.0.0.1:{port}/health");
    let allow = format!("127.0.0.1:{port}");
    let probe = plugin("http-probe").display().to_string();
    let out = plugin_test(&[&probe, "--config", &url, "--allow-host", &allow, "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["status"], "pass");
    assert_eq!(v["http_retries"], 2, "{v}");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(v["metrics"]["status_code"], 200.0);

    // The same without the allow-list entry: denied before any request.
    let before = hits.load(Ordering::SeqCst);
    let out = plugin_test(&[&probe, "--config", &url]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("not in allow_hosts"), "{}", out.stdout);
    assert_eq!(hits.load(Ordering::SeqCst), before);
}

#[test]
fn plugin_test_keeps_kv_in_a_file_between_runs() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.json");
    let kv_arg = kv.to_str().unwrap();
    let counter = fixture("kv-counter.wat");
    for expected in [1.0, 2.0, 3.0] {
        let out = plugin_test(&[&counter, "--kv", kv_arg, "--json"]);
        assert_eq!(out.code, 0, "{out:?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["metrics"]["count"], expected, "{v}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kv).unwrap()).unwrap();
    assert!(saved.get("count").is_some(), "{saved}");
    // Without --kv every run starts empty.
    let out = plugin_test(&[&counter, "--json"]);
    assert!(out.stdout.contains("\"count\": 1.0"), "{}", out.stdout);

    // A file that is not a kv object is refused and left as it was.
    std::fs::write(&kv, "[1, 2").unwrap();
    let out = plugin_test(&[&counter, "--kv", kv_arg]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("kv.json"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&kv).unwrap(), "[1, 2");
    // Values may be byte arrays too.
    std::fs::write(&kv, r#"{"count": [41, 0, 0, 0]}"#).unwrap();
    let out = plugin_test(&[&counter, "--kv", kv_arg, "--json"]);
    assert!(out.stdout.contains("\"count\": 42.0"), "{}", out.stdout);
    // Phase and release are flags; a bad phase is a usage error.
    let out = plugin_test(&[&counter, "--phase", "steady", "--release", "1.2.3"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(plugin_test(&[&counter, "--phase", "later"]).code, 2);
}

fn two_apps(dir: &Path, port: u16) -> String {
    format!(
        r#"{shop}
[apps.spinner]
root = "{root}"
bake = "1h"

[[apps.spinner.checks]]
name = "busy"
plugin = "{busy}"
interval = "100ms"
timeout = "1s"
"#,
        shop = shop_config(port, "1h", ""),
        root = dir.join("spinner").display(),
        busy = fixture("loop.wat"),
    )
}

#[test]
fn a_hostile_plugin_does_not_slow_other_apps_and_the_cache_skips_compiling() {
    let _heavy = cpu_heavy();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let spinner = dir.path().join("spinner");
    std::fs::create_dir_all(spinner.join("releases/1")).unwrap();
    std::os::unix::fs::symlink("releases/1", spinner.join("current")).unwrap();
    let app = FakeApp::start(&root);
    let config = two_apps(dir.path(), app.port);
    let mut agent = Agent::process_with_own_cache_in(dir, &config);

    let plugins = agent.json(&["plugins"]);
    let list = plugins["plugins"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter().all(|p| p["cached"] == false),
        "first start compiles: {plugins}"
    );
    assert!(list
        .iter()
        .all(|p| p["sha256"].as_str().unwrap().len() == 64));

    // The spinner's check loops until its deadline, over and over; the shop's
    // check (every 200 ms) must keep its pace meanwhile.
    assert_eq!(
        agent
            .deploy(example_release("1.0.0").to_str().unwrap(), "1.0.0", false)
            .code,
        0
    );
    // Three spins to their deadline (1 s each) is time for ~15 shop runs.
    let started = Instant::now();
    wait_for(
        "three spins of the busy check",
        Duration::from_secs(30),
        || {
            let busy = agent.json(&["status", "spinner"]);
            (busy["checks"]["busy"]["runs"].as_u64().unwrap_or(0) >= 3).then_some(())
        },
    );
    let shop = agent.json(&["status", "shop"]);
    let runs = shop["checks"]["health"]["runs"].as_u64().unwrap_or(0);
    let elapsed = started.elapsed().as_secs_f64();
    // One run per 200 ms would be ~15; a starved runtime would manage a few.
    assert!(
        runs >= 8,
        "only {runs} shop checks in {elapsed:.1}s while another app's plugin spun"
    );
    assert_eq!(shop["checks"]["health"]["outcome"], "pass");
    let busy = agent.json(&["status", "spinner"]);
    assert_eq!(busy["checks"]["busy"]["outcome"], "error", "{busy}");
    assert!(busy["checks"]["busy"]["summary"]
        .as_str()
        .unwrap()
        .contains("timed out"));

    // A restart loads every component from the cache.
    assert!(agent.stop().success());
    agent.spawn();
    let plugins = agent.json(&["plugins"]);
    assert!(
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["cached"] == true),
        "second start must not compile: {plugins}"
    );
    assert!(
        agent.log().contains("compiled=0"),
        "the start-up log counts compilations"
    );
}

fn rollbackd_once(dir: &Path, config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    rollbackd_run(&write_config(dir, config), env)
}

#[test]
fn pins_and_secrets_are_checked_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &str| {
        format!(
            "[apps.shop]\nroot = \"{}\"\n[[apps.shop.checks]]\nname = \"h\"\nplugin = \"{}\"\n{extra}\n",
            dir.path().join("shop").display(),
            fixture("pass.wat")
        )
    };
    let wrong = "0".repeat(64);
    let (code, err) = rollbackd_once(dir.path(), &check(&format!("sha256 = \"{wrong}\"")), &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("pass.wat") && err.contains(&wrong) && err.contains("refusing"),
        "{err}"
    );
    assert!(
        !dir.path().join("state/db").exists(),
        "nothing written before the refusal"
    );

    let secret = "secrets = { token = \"env:ROLLBACK_TEST_TOKEN\" }";
    let (code, err) = rollbackd_once(dir.path(), &check(secret), &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("secret `token`") && err.contains("ROLLBACK_TEST_TOKEN"),
        "{err}"
    );

    let (code, err) = rollbackd_once(dir.path(), &check("secrets = { token = \"hunter2\" }"), &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("secrets.token") && !err.contains("hunter2"),
        "the value is never echoed: {err}"
    );

    // The right pin and a present secret: the agent starts.
    let digest = {
        use sha2::Digest;
        format!(
            "{:x}",
            sha2::Sha256::digest(std::fs::read(fixture("pass.wat")).unwrap())
        )
    };
    let config = check(&format!("sha256 = \"{digest}\"\n{secret}"));
    let mut agent = {
        let tmp = tempfile::tempdir().unwrap();
        std::env::set_var("ROLLBACK_TEST_TOKEN", "present");
        Agent::start_in(tmp, &config)
    };
    let plugins = agent.json(&["plugins"]);
    assert_eq!(plugins["plugins"][0]["pinned"], true);
    assert_eq!(plugins["plugins"][0]["secrets"][0], "token");
    assert!(
        !plugins.to_string().contains("present"),
        "secret values are never shown"
    );
    assert!(agent.stop().success());
}

/// `count` and `runs` of each check in `status shop --json`.
fn counts(agent: &Agent) -> Vec<(String, f64, u64)> {
    let status = agent.json(&["status", "shop"]);
    status["checks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, c)| {
            (
                name.clone(),
                c["metrics"]["count"].as_f64().unwrap_or(0.0),
                c["runs"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn entries_with_one_kv_scope_share_their_kv_store() {
    let counter = |name: &str, scope: &str| {
        format!(
            "[[apps.shop.checks]]\nname = \"{name}\"\nplugin = \"{}\"\ninterval = \"100ms\"\n{scope}\n",
            fixture("kv-counter.wat")
        )
    };
    let config = format!(
        "[apps.shop]\nroot = \"{{dir}}/shop\"\nbake = \"1h\"\n\n{}{}{}",
        counter("a", "kv_scope = \"tokens\""),
        counter("b", "kv_scope = \"tokens\""),
        counter("own", "")
    );
    let agent = Agent::start(&config);
    let release = example_release("1.0.0");
    assert_eq!(
        agent.deploy(release.to_str().unwrap(), "1.0.0", false).code,
        0
    );
    let seen = wait_for("three runs of each check", Duration::from_secs(30), || {
        let seen = counts(&agent);
        (seen.len() == 3 && seen.iter().all(|(_, _, runs)| *runs >= 3)).then_some(seen)
    });
    let get = |n: &str| seen.iter().find(|(name, _, _)| name == n).unwrap().clone();
    let ((_, a, runs_a), (_, b, runs_b), (_, own, runs_own)) = (get("a"), get("b"), get("own"));
    // Its own store counts only its own runs (the count of the last
    // recorded run: at most one run behind).
    assert!(
        own as u64 <= runs_own && own as u64 + 1 >= runs_own,
        "{seen:?}"
    );
    // A shared one counts the runs of both entries.
    assert!(a.max(b) as u64 > runs_a.max(runs_b), "{seen:?}");
    let plugins = agent.json(&["plugins", "shop"]);
    assert!(
        plugins.to_string().contains("\"kv_scope\":\"tokens\""),
        "{plugins}"
    );

    // A scope that is not a name is refused with the key.
    let dir = tempfile::tempdir().unwrap();
    let bad = write_config(dir.path(), &config.replace("\"tokens\"", "\"../x\""));
    let (code, err) = rollbackd_run(&bad, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("kv_scope"), "{err}");
}
