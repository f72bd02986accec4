//! The app-level checks `price-guard`, `marketplace-errors` and
//! `prometheus-query`, against fakes on 127.0.0.1:
//!
//! - runs through `rollbackctl plugin test`: verdicts, errors and exit
//!   codes, with a fresh kv store, or with `--kv FILE`, `--phase` and
//!   `--release` for the checks that compare with an earlier run;
//! - runs through the plugin host with a kv store kept between them, for
//!   what needs memory (baselines, the previous scrape);
//! - a running agent that deploys a good release, then a bad one, and
//!   rolls it back because of the check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollback_agent::config::HostRule;
use rollback_agent::plugin::{
    CheckInput, CheckResult, Grants, MemoryKv, Phase, Plugin, PluginHost, ReleaseInfo, Sandbox,
    Status,
};
use serde_json::{json, Value};

use crate::support::*;

// ---------------------------------------------------------------------------
// Helpers

/// `rollbackctl plugin test <plugin> --json` allowed to reach
/// 127.0.0.1:PORT, with `--config` and `--secret` pairs: the exit code and
/// the report.
fn plugin_report(
    name: &str,
    port: u16,
    config: &[(&str, &str)],
    secrets: &[(&str, &str)],
) -> (i32, Value) {
    let out = plugin_test(name, &[format!("127.0.0.1:{port}")], config, secrets, &[]);
    let report =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    (out.code, report)
}

/// A plugin loaded into a host of its own, with a kv store that is kept
/// from one run to the next (as the agent keeps an entry's store).
struct Runner {
    _host: PluginHost,
    plugin: Plugin,
    sandbox: Arc<Sandbox>,
}

impl Runner {
    fn new(name: &str, port: u16, config: &[(&str, &str)]) -> Runner {
        let host = PluginHost::new().unwrap();
        let plugin = host.load(&plugin(name)).unwrap();
        let sandbox = Sandbox::new(
            Grants {
                app: "shop".into(),
                entry: name.into(),
                plugin: format!("{name}.wasm"),
                allow_hosts: vec![HostRule::parse(&format!("127.0.0.1:{port}")).unwrap()],
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                secrets: BTreeMap::new(),
                timeout: Duration::from_secs(10),
                memory_limit: 64 << 20,
                max_response_bytes: 4 << 20,
            },
            Arc::new(MemoryKv::default()),
        )
        .unwrap();
        Runner {
            _host: host,
            plugin,
            sandbox,
        }
    }

    /// One run for release `version` in `phase` at `now_ms`: the verdict,
    /// or the error's text.
    async fn run(&self, version: &str, phase: Phase, now_ms: u64) -> Result<CheckResult, String> {
        let input = CheckInput {
            app: "shop".into(),
            check: "test".into(),
            active: ReleaseInfo {
                app: "shop".into(),
                version: version.into(),
                activated_at_ms: Some(now_ms),
            },
            previous: None,
            phase,
            now_ms,
        };
        self.plugin
            .check(&self.sandbox, &input)
            .await
            .result
            .map_err(|e| e.to_string())
    }
}

/// Reads `<root>/current/<file>` on every call, so fakes answer for the
/// release `current` points at.
fn current_file(root: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(root.join("current").join(file)).ok()
}

/// The config of the roll-back tests: app `shop` (bake 1s) with one check
/// `name` of plugin `plugin_name`, every 200ms with a 3s timeout, allowed to
/// reach 127.0.0.1:PORT; `rest` holds the failure rule, `config` and
/// `secrets`.
fn app_check_config(name: &str, plugin_name: &str, port: u16, rest: &str) -> String {
    check_config(
        "1s",
        name,
        plugin_name,
        &format!(
            "interval = \"200ms\"\ntimeout = \"3s\"\nallow_hosts = [\"127.0.0.1:{port}\"]\n{rest}"
        ),
    )
}

/// The summary of check `name` in a status reply.
fn check_summary<'a>(status: &'a Value, name: &str) -> &'a str {
    status["checks"][name]["summary"]
        .as_str()
        .unwrap_or_default()
}

/// A server that answers every request with `reply` of the text last given
/// to the returned setter (at first `text`).
fn text_server(
    text: String,
    reply: impl Fn(&str) -> HttpReply + Send + Sync + 'static,
) -> (u16, impl Fn(String)) {
    let text = Arc::new(Mutex::new(text));
    let served = text.clone();
    let port = http_server(move |_| reply(&served.lock().unwrap()));
    (port, move |new: String| *text.lock().unwrap() = new)
}

/// A server that answers 429 (`Retry-After: 0`) `throttled` times, then
/// `reply` for good; with the number of requests it got.
fn throttled_then(throttled: u32, reply: HttpReply) -> (u16, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let seen = hits.clone();
    let port = http_server(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) < throttled {
            HttpReply::new(429, "slow down").header("retry-after", "0")
        } else {
            reply.clone()
        }
    });
    (port, hits)
}

// ---------------------------------------------------------------------------
// price-guard

/// A price export of `n` SKUs, `SKU-0` .. at `price(i)`.
fn price_export(n: usize, price: impl Fn(usize) -> f64) -> String {
    let rows: Vec<Value> = (0..n)
        .map(|i| json!({"sku": format!("SKU-{i}"), "price": price(i)}))
        .collect();
    Value::Array(rows).to_string()
}

/// The catalogue at the good release: 19.99 for every SKU.
fn good_prices(n: usize) -> String {
    price_export(n, |_| 19.99)
}

/// A botched batch update: 9 of 10 prices cut by 90%.
fn botched_prices(n: usize) -> String {
    price_export(n, |i| if i % 10 == 0 { 19.99 } else { 1.99 })
}

#[test]
fn price_guard_in_plugin_test_warns_without_baseline_and_errors_on_bad_exports() {
    let (port, hits) = throttled_then(2, HttpReply::json(200, &good_prices(50)));
    let bodies: BTreeMap<&str, &str> = [
        ("/truncated", r#"[{"sku": "A1", "price": 12.5}, {"sku": "#),
        ("/html", "<html>maintenance</html>"),
        ("/negative", r#"[{"sku": "A1", "price": -12.5}]"#),
        ("/nan", r#"[{"sku": "A1", "price": "NaN"}]"#),
        (
            "/duplicate",
            r#"[{"sku": "A1", "price": 1}, {"sku": "A1", "price": "2.50"}]"#,
        ),
    ]
    .into_iter()
    .collect();
    let bad = http_server(move |req| match bodies.get(req.path.as_str()) {
        Some(body) => HttpReply::json(200, body),
        None => HttpReply::new(500, "boom"),
    });
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");

    // No baseline in a fresh store: warn (exit 0), after two 429s retried
    // by the host.
    let (code, r) = plugin_report(
        "price-guard",
        port,
        &[("prices_url", &url(port, "/prices")), ("max_change", "30%")],
        &[],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["status"], "warn", "{r}");
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .starts_with("no baseline from a good release yet"),
        "{r}"
    );
    assert_eq!(r["metrics"], json!({"skus": 50.0}));
    assert_eq!(
        (r["http_retries"].as_u64(), hits.load(Ordering::SeqCst)),
        (Some(2), 3)
    );

    // Broken exports are errors (exit 1), never a pass.
    for (path, why) in [
        ("/truncated", "not valid JSON"),
        ("/html", "not valid JSON"),
        ("/negative", "negative"),
        ("/nan", "NaN"),
        ("/duplicate", "listed twice"),
        ("/gone", "HTTP status 500"),
    ] {
        let (code, r) = plugin_report(
            "price-guard",
            bad,
            &[("prices_url", &url(bad, path)), ("max_change", "0.3")],
            &[],
        );
        assert_eq!(
            (code, r["status"].as_str()),
            (1, Some("error")),
            "{path}: {r}"
        );
        assert!(r["summary"].as_str().unwrap().contains(why), "{path}: {r}");
    }

    // Config mistakes are errors too.
    let (code, r) = plugin_report("price-guard", bad, &[("prices_url", &url(bad, "/x"))], &[]);
    assert_eq!(code, 1);
    assert!(r["summary"].as_str().unwrap().contains("max_change"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_guard_records_when_steady_and_compares_during_the_bake() {
    let (port, set) = text_server(good_prices(200), |text| HttpReply::json(200, text));
    let guard = Runner::new(
        "price-guard",
        port,
        &[
            ("prices_url", &format!("http://127.0.0.1:{port}/prices")),
            ("max_change", "30%"),
            ("worst", "2"),
        ],
    );

    let r = guard.run("1.0.0", Phase::Bake, 1).await.unwrap();
    assert_eq!(r.status, Status::Warn, "{}", r.summary);
    let r = guard.run("1.0.0", Phase::Steady, 2).await.unwrap();
    assert_eq!(r.status, Status::Pass);
    assert_eq!(
        r.summary,
        "recorded the baseline of release 1.0.0: 200 SKUs (no baseline yet)"
    );

    // 1.1.0 moves 5 prices (2.5%) and adds a SKU: within the limits.
    set(price_export(201, |i| if i < 5 { 29.99 } else { 19.99 }));
    let r = guard.run("1.1.0", Phase::Bake, 3).await.unwrap();
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert!(
        r.summary.starts_with(
            "5 of 200 SKUs (2.5%) moved more than 30% since release 1.0.0 (max 5%); 1 new"
        ),
        "{}",
        r.summary
    );

    // 1.2.0 cuts 90% of the prices by 90%: fail, the worst named.
    set(botched_prices(200));
    let r = guard.run("1.2.0", Phase::Bake, 4).await.unwrap();
    assert_eq!(r.status, Status::Fail);
    assert!(
        r.summary.starts_with(
            "180 of 200 SKUs (90%) moved more than 30% since release 1.0.0 (max 5%): \
             SKU-1 19.99 -> 1.99 (-90%), SKU-101 19.99 -> 1.99 (-90%) and 178 more"
        ),
        "{}",
        r.summary
    );
    let names: Vec<&str> = r.metrics.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["changed_ratio", "max_change_seen", "skus", "skus_changed"]
    );
    assert_eq!(r.metrics["skus_changed"], 180.0);
    assert_eq!(r.metrics["changed_ratio"], 0.9);

    // A wiped catalogue fails: missing SKUs count as changed.
    set("[]".into());
    let r = guard.run("1.2.0", Phase::Bake, 5).await.unwrap();
    assert_eq!(r.status, Status::Fail);
    assert!(
        r.summary.contains("SKU-0 19.99 -> missing"),
        "{}",
        r.summary
    );

    // A malformed export is an error, never a pass.
    set("[{\"sku\": \"A\", \"price\": 1.5},".into());
    let e = guard.run("1.2.0", Phase::Bake, 6).await.unwrap_err();
    assert!(e.contains("not valid JSON"), "{e}");

    // The baseline stays 1.0.0's until another release is accepted.
    set(good_prices(200));
    let r = guard.run("1.0.0", Phase::Steady, 7).await.unwrap();
    assert_eq!(r.status, Status::Pass);
    assert!(r.summary.starts_with("0 of 200 SKUs"), "{}", r.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_guard_keeps_a_large_baseline_within_the_kv_limits() {
    // 20 000 SKUs: about 500 KiB of baseline, over many 64 KiB values.
    let (port, set) = text_server(
        price_export(20_000, |i| 10.0 + (i % 997) as f64 / 100.0),
        |text| HttpReply::json(200, text),
    );
    let guard = Runner::new(
        "price-guard",
        port,
        &[
            ("prices_url", &format!("http://127.0.0.1:{port}/prices")),
            ("max_change", "0.3"),
        ],
    );
    let r = guard.run("1.0.0", Phase::Steady, 1).await.unwrap();
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    let r = guard.run("1.1.0", Phase::Bake, 2).await.unwrap();
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert_eq!(r.metrics["skus"], 20_000.0);
    assert_eq!(r.metrics["skus_changed"], 0.0);

    set(price_export(20_001, |_| 1.0));
    let e = guard.run("1.1.0", Phase::Bake, 3).await.unwrap_err();
    assert!(
        e.contains("20001 entries, more than max_skus = 20000"),
        "{e}"
    );
}

#[test]
fn price_guard_rolls_back_a_botched_price_update() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app_root = root.clone();
    // The fake app serves the price export of the release `current` is.
    let port = http_server(move |req| match current_file(&app_root, "prices.json") {
        Some(body) if req.path == "/prices" => HttpReply::json(200, &body),
        _ => HttpReply::new(503, "not ready"),
    });
    let good = release_source(dir.path(), "1.0.0", &[("prices.json", good_prices(100))]);
    let bad = release_source(dir.path(), "1.1.0", &[("prices.json", botched_prices(100))]);
    let config = app_check_config(
        "prices",
        "price-guard",
        port,
        &format!(
            r#"fail_after = 2
config = {{ prices_url = "http://127.0.0.1:{port}/prices", max_change = "30%", max_changed_ratio = 0.05 }}
"#
        ),
    );
    let agent = Agent::start_in(dir, &config);

    let history = deploy_good_then_bad(&agent, &good, &bad, |agent| {
        // Accepted: the next (steady) run records 1.0.0's prices; the runs
        // after it compare with them ("... since release 1.0.0").
        agent.wait_for_status("the baseline of 1.0.0", |s| {
            check_summary(s, "prices").contains("release 1.0.0")
        });
    });
    let summary = assert_rolled_back_by(&history, "prices");
    assert!(
        summary.contains("90 of 100 SKUs (90%) moved more than 30% since release 1.0.0")
            && summary.contains("SKU-1 19.99 -> 1.99 (-90%)"),
        "{summary}"
    );

    // Healed: 1.0.0 serves its own prices again and the check passes.
    let status = agent.wait_for_status("a passing check on 1.0.0", |s| {
        check_summary(s, "prices").starts_with("0 of 100 SKUs")
    });
    assert_eq!(status["checks"]["prices"]["outcome"], "pass");
    assert_eq!(status["active"], "1.0.0");
}

// ---------------------------------------------------------------------------
// marketplace-errors

/// An exposition of the default counter for amazon (`ok` 200s, `limited`
/// 429s, `failed` 503s) and an ebay series, with the noise apps have.
fn exposition(ok: u64, limited: u64, failed: u64) -> String {
    format!(
        "# HELP marketplace_api_responses_total Responses from marketplace APIs.\n\
         # TYPE marketplace_api_responses_total counter\n\
         marketplace_api_responses_total{{marketplace=\"amazon\",code=\"200\"}} {ok}\n\
         marketplace_api_responses_total{{marketplace=\"amazon\",code=\"429\"}} {limited} 1712345678000\n\
         marketplace_api_responses_total{{marketplace=\"amazon\",code=\"503\"}} {failed}\n\
         marketplace_api_responses_total{{marketplace=\"ebay\",code=\"500\",note=\"say \\\"hi\\\"\\n\"}} 5\n\
         # TYPE go_gc_duration_seconds summary\n\
         go_gc_duration_seconds{{quantile=\"0.5\"}} NaN\n\
         http_request_duration_seconds_bucket{{le=\"+Inf\"}} 12\n"
    )
}

#[test]
fn marketplace_errors_in_plugin_test_records_a_first_scrape_and_errors_on_bad_text() {
    let (port, hits) = throttled_then(3, HttpReply::new(200, exposition(100, 0, 0)));
    let (code, r) = plugin_report(
        "marketplace-errors",
        port,
        &[("metrics_url", &format!("http://127.0.0.1:{port}/metrics"))],
        &[],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["status"], "warn");
    assert_eq!(
        r["summary"],
        "first scrape recorded; the ratio needs a second one"
    );
    assert_eq!(
        (r["http_retries"].as_u64(), hits.load(Ordering::SeqCst)),
        (Some(3), 4)
    );

    let bodies: BTreeMap<&str, String> = [
        (
            "/unterminated",
            "marketplace_api_responses_total{code=\"200} 1\n".to_string(),
        ),
        ("/garbage", "<html>oops</html>\n".to_string()),
        ("/other", "# TYPE up gauge\nup 1\n".to_string()),
        (
            "/nan",
            "marketplace_api_responses_total{code=\"200\"} NaN\n".to_string(),
        ),
        (
            "/nocode",
            "marketplace_api_responses_total{status=\"200\"} 4\n".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let bad = http_server(move |req| match bodies.get(req.path.as_str()) {
        Some(body) => HttpReply::new(200, body.clone()),
        None => HttpReply::new(404, "no such page"),
    });
    for (path, extra, why) in [
        ("/unterminated", None, "line 1: unterminated quoted string"),
        ("/garbage", None, "line 1: expected a metric name"),
        (
            "/other",
            None,
            "metric `marketplace_api_responses_total` is not in the exposition",
        ),
        ("/nan", None, "has value NaN"),
        ("/nocode", None, "has no `code` label"),
        ("/missing", None, "HTTP status 404"),
        (
            "/other",
            Some(("match", "marketplace=\"amazon\"")),
            "is not in the exposition",
        ),
    ] {
        let url = format!("http://127.0.0.1:{bad}{path}");
        let mut config = vec![("metrics_url", url.as_str())];
        config.extend(extra);
        let (code, r) = plugin_report("marketplace-errors", bad, &config, &[]);
        assert_eq!(
            (code, r["status"].as_str()),
            (1, Some("error")),
            "{path}: {r}"
        );
        assert!(r["summary"].as_str().unwrap().contains(why), "{path}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketplace_errors_judges_the_ratio_between_scrapes_and_survives_resets() {
    let (port, set) = text_server(exposition(1000, 10, 10), |text| HttpReply::new(200, text));
    let check = Runner::new(
        "marketplace-errors",
        port,
        &[
            ("metrics_url", &format!("http://127.0.0.1:{port}/metrics")),
            ("match", "marketplace=\"amazon\""),
        ],
    );
    let r = check.run("1.0.0", Phase::Bake, 0).await.unwrap();
    assert_eq!(r.status, Status::Warn);
    assert!(r.metrics.is_empty());

    // +97 OK, +2 rate-limited (counted apart), +1 failed: 1%.
    set(exposition(1097, 12, 11));
    let r = check.run("1.0.0", Phase::Bake, 10_000).await.unwrap();
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert_eq!(
        r.summary,
        "error ratio 1% over 10.0s, max 5% (1 of 100 marketplace API responses, 2 rate-limited)"
    );
    let m = |r: &CheckResult| {
        (
            r.metrics["requests"],
            r.metrics["errors"],
            r.metrics["rate_limited"],
            r.metrics["error_ratio"],
        )
    };
    assert_eq!(m(&r), (100.0, 1.0, 2.0, 0.01));

    // +40 OK, +30 rate-limited, +30 failed: 30%.
    set(exposition(1137, 42, 41));
    let r = check.run("1.0.0", Phase::Bake, 20_000).await.unwrap();
    assert_eq!(r.status, Status::Fail);
    assert!(
        r.summary
            .starts_with("error ratio 30% over 10.0s is above max 5%"),
        "{}",
        r.summary
    );
    assert_eq!(m(&r), (100.0, 30.0, 30.0, 0.3));

    // The app restarted (counters back near zero): the new values count.
    set(exposition(95, 1, 4));
    let r = check.run("1.0.0", Phase::Bake, 30_000).await.unwrap();
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert_eq!(m(&r), (100.0, 4.0, 1.0, 0.04));
    assert!(r.summary.contains("3 counter reset(s)"), "{}", r.summary);

    // Too little traffic to judge: pass, said so.
    set(exposition(100, 1, 9));
    let r = check.run("1.0.0", Phase::Bake, 40_000).await.unwrap();
    assert_eq!(r.status, Status::Pass);
    assert!(
        r.summary.starts_with("traffic too low to judge"),
        "{}",
        r.summary
    );

    // Malformed text is an error; the metric gone is an error.
    set("marketplace_api_responses_total{code=\"200\"} one\n".into());
    let e = check.run("1.0.0", Phase::Bake, 50_000).await.unwrap_err();
    assert!(e.contains("not a number"), "{e}");
    set("up 1\n".into());
    let e = check.run("1.0.0", Phase::Bake, 60_000).await.unwrap_err();
    assert!(e.contains("is not in the exposition"), "{e}");
}

/// A fake app whose counters follow the release `current` points at:
/// every scrape adds 100 responses, `error_share` of them errors (half
/// 429s, half 503s); a new release starts from zero, as after a restart.
fn counting_app(root: PathBuf) -> u16 {
    let state: Mutex<(String, u64, u64, u64)> = Mutex::new((String::new(), 0, 0, 0));
    http_server(move |_| {
        let Some(release) = current_file(&root, "release.json") else {
            return HttpReply::new(503, "no release");
        };
        let release: Value = serde_json::from_str(&release).unwrap();
        let version = release["version"].as_str().unwrap().to_string();
        let errors = (release["error_share"].as_f64().unwrap() * 100.0).round() as u64;
        let mut s = state.lock().unwrap();
        if s.0 != version {
            *s = (version, 0, 0, 0);
        }
        s.1 += 100 - errors;
        s.2 += errors / 2;
        s.3 += errors - errors / 2;
        HttpReply::new(200, exposition(s.1, s.2, s.3))
            .header("content-type", "text/plain; version=0.0.4")
    })
}

#[test]
fn marketplace_errors_rolls_back_a_release_whose_api_calls_fail() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let port = counting_app(root.clone());
    let good = release_source(
        dir.path(),
        "1.0.0",
        &[(
            "release.json",
            r#"{"version": "1.0.0", "error_share": 0.01}"#.into(),
        )],
    );
    let bad = release_source(
        dir.path(),
        "1.1.0",
        &[(
            "release.json",
            r#"{"version": "1.1.0", "error_share": 0.4}"#.into(),
        )],
    );
    // The docs' "error rate above 5% for a while" rule, on a short clock.
    let config = app_check_config(
        "marketplace-errors",
        "marketplace-errors",
        port,
        &format!(
            r#"failure_ratio = 0.5
window = "1s"
config = {{ metrics_url = "http://127.0.0.1:{port}/metrics", match = 'marketplace="amazon"', max_error_ratio = 0.05, min_requests = 20 }}
"#
        ),
    );
    let agent = Agent::start_in(dir, &config);
    let history = deploy_good_then_bad(&agent, &good, &bad, |_| {});
    let summary = assert_rolled_back_by(&history, "marketplace-errors");
    assert!(
        summary.contains("error ratio 20% over") && summary.contains("above max 5%"),
        "{summary}"
    );
    // Healed: 1.0.0's 1% is judged again.
    agent.wait_for_status("1.0.0 judged again", |s| {
        check_summary(s, "marketplace-errors").starts_with("error ratio 1% over")
    });
}

// ---------------------------------------------------------------------------
// prometheus-query

/// A fake Prometheus: answers `/api/v1/query` with `answer(query)` when the
/// bearer token is right, 401 otherwise; with the raw paths it was asked.
fn fake_prometheus(
    answer: impl Fn(&str) -> HttpReply + Send + Sync + 'static,
) -> (u16, Arc<Mutex<Vec<String>>>) {
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = paths.clone();
    let port = http_server(move |req| {
        seen.lock().unwrap().push(req.path.clone());
        if req.header("authorization") != Some("Bearer s3cret-token") {
            return HttpReply::new(401, "Unauthorized");
        }
        match (req.path_only(), req.query().as_slice()) {
            ("/api/v1/query", [(name, query)]) if name == "query" => answer(query),
            _ => HttpReply::new(404, "404 page not found"),
        }
    });
    (port, paths)
}

/// A vector answer with `(labels, value)` series.
fn vector(series: &[(Value, &str)]) -> HttpReply {
    let result: Vec<Value> = series
        .iter()
        .map(|(metric, v)| json!({"metric": metric, "value": [1712345678.781, v]}))
        .collect();
    let body = json!({"status": "success", "data": {"resultType": "vector", "result": result}});
    HttpReply::json(200, &body.to_string())
}

fn prometheus_error(status: u16, kind: &str, error: &str) -> HttpReply {
    let body = json!({"status": "error", "errorType": kind, "error": error});
    HttpReply::json(status, &body.to_string())
}

const RATIO_QUERY: &str = r#"sum by (marketplace) (rate(marketplace_api_responses_total{code=~"4..|5.."}[5m])) / sum by (marketplace) (rate(marketplace_api_responses_total[5m]))"#;

#[test]
fn prometheus_query_in_plugin_test_passes_fails_and_errors() {
    let throttled = Arc::new(AtomicU32::new(0));
    let count = throttled.clone();
    let (port, paths) = fake_prometheus(move |query| match query {
        RATIO_QUERY => vector(&[
            (json!({"marketplace": "amazon"}), "0.012"),
            (json!({"marketplace": "ebay"}), "0.031"),
        ]),
        "failing" => vector(&[
            (json!({"marketplace": "amazon"}), "0.01"),
            (json!({"marketplace": "walmart"}), "0.2"),
        ]),
        "scalar(0.5)" => HttpReply::json(
            200,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1712345678.781,"0.5"]}}"#,
        ),
        "absent" => vector(&[]),
        "nan" => vector(&[(json!({"__name__": "ratio"}), "NaN")]),
        "broken(" => prometheus_error(
            400,
            "bad_data",
            "invalid parameter \"query\": 1:8: parse error: unclosed left parenthesis",
        ),
        "busy" => {
            if count.fetch_add(1, Ordering::SeqCst) < 2 {
                HttpReply::new(429, "").header("retry-after", "0")
            } else {
                vector(&[(json!({}), "0.001")])
            }
        }
        "garbage" => HttpReply::json(200, "{\"status\":\"success\",\"data\":"),
        _ => prometheus_error(422, "execution", "unexpected query"),
    });
    let url = format!("http://127.0.0.1:{port}");
    let token = [("bearer_token", "s3cret-token")];
    let run = |query: &str, limits: &[(&'static str, &'static str)], secrets: &[(&str, &str)]| {
        let mut config = vec![("url", url.as_str()), ("query", query)];
        config.extend_from_slice(limits);
        plugin_report("prometheus-query", port, &config, secrets)
    };
    let max = [("max", "0.05")];

    let (code, r) = run(RATIO_QUERY, &max, &token);
    assert_eq!((code, r["status"].as_str()), (0, Some("pass")), "{r}");
    assert_eq!(
        r["summary"],
        "0.031 within max 0.05 for {marketplace=\"ebay\"} (worst of 2 series)"
    );
    assert_eq!(r["metrics"], json!({"value": 0.031}));
    let asked = paths.lock().unwrap()[0].clone();
    assert!(
        asked.starts_with("/api/v1/query?query=sum%20by%20%28marketplace%29%20%28rate%28"),
        "{asked}"
    );
    assert!(
        !r.to_string().contains("s3cret-token"),
        "the token is never shown"
    );

    let (code, r) = run("failing", &max, &token);
    assert_eq!((code, r["status"].as_str()), (3, Some("fail")), "{r}");
    assert_eq!(
        r["summary"],
        "0.2 > max 0.05 for {marketplace=\"walmart\"} (worst of 2 series)"
    );
    let (code, r) = run("scalar(0.5)", &[("min", "1")], &token);
    assert_eq!(
        (code, r["summary"].as_str()),
        (3, Some("0.5 < min 1 for scalar"))
    );

    // The host retries the 429s; the answer then passes.
    let (code, r) = run("busy", &max, &token);
    assert_eq!((code, r["status"].as_str()), (0, Some("pass")), "{r}");
    assert_eq!(r["http_retries"], 2);

    for (query, secrets, why) in [
        (
            "absent",
            &token[..],
            "no data: the query returned an empty vector: absent",
        ),
        ("nan", &token[..], "NaN for ratio{}"),
        (
            "broken(",
            &token[..],
            "Prometheus answered HTTP 400: bad_data: invalid parameter",
        ),
        ("garbage", &token[..], "not JSON"),
        (
            RATIO_QUERY,
            &[][..],
            "Prometheus answered HTTP 401: Unauthorized",
        ),
    ] {
        let (code, r) = run(query, &max, secrets);
        assert_eq!(
            (code, r["status"].as_str()),
            (1, Some("error")),
            "{query}: {r}"
        );
        assert!(r["summary"].as_str().unwrap().contains(why), "{query}: {r}");
    }
    let (code, r) = run("absent", &[], &token);
    assert_eq!(code, 1);
    assert!(
        r["summary"].as_str().unwrap().contains("`max` or `min`"),
        "{r}"
    );
}

#[test]
fn prometheus_query_rolls_back_when_the_error_ratio_climbs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    // The ratio Prometheus reports follows the release `current` points at.
    let (port, _) = fake_prometheus(move |query| {
        if query != RATIO_QUERY {
            return prometheus_error(422, "execution", "unexpected query");
        }
        match current_file(&root, "release.json") {
            Some(text) => {
                let release: Value = serde_json::from_str(&text).unwrap();
                let amazon = release["amazon_error_ratio"].as_str().unwrap().to_string();
                vector(&[
                    (json!({"marketplace": "amazon"}), amazon.as_str()),
                    (json!({"marketplace": "ebay"}), "0.01"),
                ])
            }
            None => vector(&[]),
        }
    });
    let good = release_source(
        dir.path(),
        "1.0.0",
        &[("release.json", r#"{"amazon_error_ratio": "0.02"}"#.into())],
    );
    let bad = release_source(
        dir.path(),
        "1.1.0",
        &[("release.json", r#"{"amazon_error_ratio": "0.25"}"#.into())],
    );
    std::fs::write(dir.path().join("prom-token"), "s3cret-token\n").unwrap();
    let config = app_check_config(
        "api-error-ratio",
        "prometheus-query",
        port,
        &format!(
            r#"fail_after = 2
config = {{ url = "http://127.0.0.1:{port}", query = '{RATIO_QUERY}', max = 0.05 }}
secrets = {{ bearer_token = "file:{{dir}}/prom-token" }}
"#
        ),
    );
    let agent = Agent::start_in(dir, &config);
    let history = deploy_good_then_bad(&agent, &good, &bad, |_| {});
    let summary = assert_rolled_back_by(&history, "api-error-ratio");
    assert_eq!(
        summary,
        "0.25 > max 0.05 for {marketplace=\"amazon\"} (worst of 2 series)"
    );
    agent.wait_for_status("1.0.0 passing again", |s| {
        check_summary(s, "api-error-ratio").starts_with("0.02 within max 0.05")
    });
}

// ---------------------------------------------------------------------------
// Stateful checks through `rollbackctl plugin test --kv`

/// `plugin test NAME --kv FILE --phase PHASE --release VERSION`: exit code and report.
fn stateful_run(
    name: &str,
    port: u16,
    config: &[(&str, &str)],
    kv: &Path,
    phase: &str,
    release: &str,
) -> (i32, Value) {
    let kv = kv.to_str().unwrap();
    let extra = ["--kv", kv, "--phase", phase, "--release", release];
    let out = plugin_test(name, &[format!("127.0.0.1:{port}")], config, &[], &extra);
    let report =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    (out.code, report)
}

#[test]
fn price_guard_passes_and_fails_through_plugin_test_with_a_kv_file() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("price-guard.json");
    let (port, set_prices) = text_server(good_prices(40), |text| HttpReply::json(200, text));
    let url = format!("http://127.0.0.1:{port}/prices");
    let config = [("prices_url", url.as_str()), ("max_change", "30%")];

    // Release 1.0.0 accepted as good: its prices become the baseline.
    let (code, r) = stateful_run("price-guard", port, &config, &kv, "steady", "1.0.0");
    assert_eq!((code, r["status"].as_str()), (0, Some("pass")), "{r}");
    assert!(kv.exists(), "the baseline is kept in the file");
    // 1.1.0 baking with the same prices: pass.
    let (code, r) = stateful_run("price-guard", port, &config, &kv, "bake", "1.1.0");
    assert_eq!((code, r["status"].as_str()), (0, Some("pass")), "{r}");
    assert_eq!(r["metrics"]["skus_changed"], 0.0, "{r}");
    // 1.1.0 after a botched batch update: fail (exit 3), the worst SKU named.
    set_prices(botched_prices(40));
    let (code, r) = stateful_run("price-guard", port, &config, &kv, "bake", "1.1.0");
    assert_eq!((code, r["status"].as_str()), (3, Some("fail")), "{r}");
    assert!(r["summary"].as_str().unwrap().contains("SKU-1"), "{r}");
    assert_eq!(r["metrics"]["skus_changed"], 36.0, "{r}");
}

#[test]
fn marketplace_errors_passes_and_fails_through_plugin_test_with_a_kv_file() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("marketplace-errors.json");
    let (port, set_metrics) = text_server(exposition(1000, 0, 0), |text| HttpReply::new(200, text));
    let url = format!("http://127.0.0.1:{port}/metrics");
    let config = [("metrics_url", url.as_str())];
    let run = || stateful_run("marketplace-errors", port, &config, &kv, "bake", "1.1.0");

    // First scrape: recorded, nothing to judge yet.
    let (code, r) = run();
    assert_eq!((code, r["status"].as_str()), (0, Some("warn")), "{r}");
    // 200 more calls, 2 of them 429: 1% errors, under the default 5%.
    set_metrics(exposition(1198, 2, 0));
    let (code, r) = run();
    assert_eq!((code, r["status"].as_str()), (0, Some("pass")), "{r}");
    assert_eq!(r["metrics"]["requests"], 200.0, "{r}");
    assert_eq!(r["metrics"]["rate_limited"], 2.0, "{r}");
    // 100 more, 30 of them 503 and 10 429: 30% errors, the 429s apart.
    set_metrics(exposition(1258, 12, 30));
    let (code, r) = run();
    assert_eq!((code, r["status"].as_str()), (3, Some("fail")), "{r}");
    assert_eq!(r["metrics"]["errors"], 30.0, "{r}");
    assert_eq!(r["metrics"]["rate_limited"], 10.0, "{r}");
}
