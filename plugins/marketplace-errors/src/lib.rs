//! `marketplace-errors`: a health check on the share of marketplace API
//! responses that are errors, from the counters the app exposes in the
//! Prometheus text format.
//!
//! Each run scrapes `metrics_url`, keeps the selected counter series in kv,
//! and compares them with the previous scrape: the increase of each series
//! is what happened in between. A value lower than before is a counter
//! reset (the app restarted) and counts whole, as Prometheus' `rate()` does;
//! a series that was not there before counts whole too (counters created on
//! first use). The ratio is errors (status code 400 and up, but neither 429
//! nor the codes in `exclude`) over all responses. Rate limiting (429) is the
//! marketplace's throttling, counted apart: it is judged only when
//! `max_rate_limited_ratio` is set.
//!
//! Config keys (the plugin entry's `config` table, all strings):
//!
//! - `metrics_url` (required): the app's exposition endpoint.
//! - `metric` (default `marketplace_api_responses_total`): the counter.
//! - `code_label` (default `code`): the label holding the HTTP status code
//!   (`503`) or class (`5xx`) of each series.
//! - `match` (optional): label filters, comma-separated, such as
//!   `marketplace="amazon",region="eu"` (quotes optional).
//! - `max_error_ratio` (default `0.05`): the check fails when the ratio is
//!   above this (a fraction or a percentage such as `5%`).
//! - `min_requests` (default `20`): with fewer responses between two
//!   scrapes the check passes, saying traffic is too low to judge.
//! - `exclude` (optional): codes or classes that are not errors, comma
//!   separated (`404`, `404,409`, `4xx`); they count as answered requests.
//!   Walmart answers "no orders" with 404: a quiet shop is not failing.
//! - `max_rate_limited_ratio` (optional): fail when the share of 429
//!   responses is above this (a release that hammers the API); unset, 429s
//!   are only reported.
//!
//! The first scrape (and the first of a newly active release, so a ratio
//! never spans two releases) is only recorded: `warn`. A missing metric, no
//! series matching `match`, a series without a readable code, a negative or
//! NaN counter and a malformed exposition are errors.
//!
//! Metrics: `error_ratio`, `requests`, `errors` and `rate_limited` (the 429
//! responses), all over the span between the two scrapes.

mod exposition;

use std::collections::BTreeMap;

use rollback_plugin_sdk::check::{self, CheckContext, CheckResult, Guest};
use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::http::Request;
use rollback_plugin_sdk::serde_json::{self, json, Map, Value};
use rollback_plugin_sdk::{kv, log};

use crate::exposition::{Cursor, Sample};

/// Where the previous scrape is kept.
const SCRAPE_KEY: &str = "scrape";

/// The plugin; its `check` is the world's export.
struct MarketplaceErrors;

impl Guest for MarketplaceErrors {
    fn check(ctx: CheckContext) -> Result<CheckResult, String> {
        let settings = Settings::from_config(&Config::host())?;
        let text = settings.fetch()?;
        let scrape = settings.select(&exposition::parse(&text)?)?;
        judge(&settings, &ctx.active.version, ctx.now_ms, &scrape)
    }
}

check::export_check!(MarketplaceErrors);

/// The parsed configuration.
#[derive(Debug, PartialEq)]
struct Settings {
    metrics_url: String,
    metric: String,
    code_label: String,
    matchers: Vec<(String, String)>,
    max_error_ratio: f64,
    min_requests: f64,
    /// Codes (`404`) or classes (`4xx`) that are not errors.
    exclude: Vec<String>,
    max_rate_limited_ratio: Option<f64>,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, String> {
        let metrics_url = config.required("metrics_url")?;
        let metric = config
            .optional("metric")
            .unwrap_or_else(|| "marketplace_api_responses_total".to_string());
        if !is_name(&metric, true) {
            return Err(format!("config `metric` = `{metric}`: not a metric name"));
        }
        let code_label = config
            .optional("code_label")
            .unwrap_or_else(|| "code".to_string());
        if !is_name(&code_label, false) {
            return Err(format!(
                "config `code_label` = `{code_label}`: not a label name"
            ));
        }
        let matchers = config
            .parse_with("match", parse_matchers)?
            .unwrap_or_default();
        let max_error_ratio = config.ratio("max_error_ratio")?.unwrap_or(0.05);
        let min_requests = config.parse::<u32>("min_requests")?.unwrap_or(20);
        let mut exclude = config.list("exclude").unwrap_or_default();
        for code in exclude.iter_mut() {
            if Class::of(code).is_none() {
                return Err(format!(
                    "config `exclude` = `{}`: `{code}` is not a status code or class like 404 or 4xx",
                    config.get("exclude").unwrap_or_default()
                ));
            }
            code.make_ascii_lowercase();
        }
        let max_rate_limited_ratio = config.ratio("max_rate_limited_ratio")?;
        Ok(Settings {
            exclude,
            max_rate_limited_ratio,
            metrics_url,
            metric,
            code_label,
            matchers,
            max_error_ratio,
            min_requests: f64::from(min_requests),
        })
    }

    /// Reads the exposition; any trouble is an error.
    fn fetch(&self) -> Result<String, String> {
        let url = &self.metrics_url;
        let response = Request::get(url)
            .header("Accept", "text/plain;version=0.0.4")
            .send()
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("GET {url}: {e}"))?;
        String::from_utf8(response.body().to_vec())
            .map_err(|_| format!("GET {url}: the exposition is not UTF-8 text"))
    }

    /// What the scrape and the previous one must agree on to be compared.
    fn selector(&self) -> String {
        format!(
            "{}{} by {}",
            self.metric,
            series_key(&self.matchers),
            self.code_label
        )
    }

    /// The selected series of `samples`, checked.
    /// Whether `code` is one `exclude` names, itself or by its class.
    fn excluded(&self, code: &str) -> bool {
        let code = code.trim().to_ascii_lowercase();
        self.exclude.iter().any(|e| {
            *e == code || (e.ends_with("xx") && code.as_bytes().first() == e.as_bytes().first())
        })
    }

    fn select(&self, samples: &[Sample]) -> Result<Scrape, String> {
        let mut named = 0;
        let mut series = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == self.metric) {
            named += 1;
            if !self
                .matchers
                .iter()
                .all(|(k, v)| s.label(k).unwrap_or("") == v)
            {
                continue;
            }
            let mut labels = s.labels.clone();
            labels.sort();
            let key = series_key(&labels);
            if !s.value.is_finite() || s.value < 0.0 {
                return Err(format!(
                    "series {}{key} has value {}, not a counter's",
                    self.metric, s.value
                ));
            }
            let code = s.label(&self.code_label).ok_or_else(|| {
                format!(
                    "series {}{key} has no `{}` label (see config `code_label`)",
                    self.metric, self.code_label
                )
            })?;
            let class = Class::of(code).ok_or_else(|| {
                format!(
                    "series {}{key}: `{}` = {code:?} is not an HTTP status code",
                    self.metric, self.code_label
                )
            })?;
            let class = if self.excluded(code) {
                Class::Ok
            } else {
                class
            };
            if series.insert(key.clone(), (class, s.value)).is_some() {
                return Err(format!(
                    "series {}{key} appears twice in the exposition",
                    self.metric
                ));
            }
        }
        if named == 0 {
            return Err(format!(
                "metric `{}` is not in the exposition at {}",
                self.metric, self.metrics_url
            ));
        }
        if series.is_empty() {
            return Err(format!(
                "none of the {named} series of `{}` matches {}",
                self.metric,
                series_key(&self.matchers)
            ));
        }
        Ok(Scrape { series })
    }
}

/// Whether `name` is a metric (`:` allowed) or label name.
fn is_name(name: &str, metric: bool) -> bool {
    Cursor::new(name).ident(metric).as_deref() == Some(name)
}

/// `a="x", b=y` into pairs; values may be quoted (with the exposition's
/// escapes) or bare up to the next comma or blank.
fn parse_matchers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut c = Cursor::new(text);
    let mut out: Vec<(String, String)> = Vec::new();
    loop {
        c.skip_blanks();
        if c.at_end() {
            break;
        }
        let name = c
            .ident(false)
            .ok_or("expected label filters like marketplace=\"amazon\"")?;
        c.skip_blanks();
        if !c.eat('=') {
            return Err(format!(
                "expected `=` after `{name}` (only equality filters)"
            ));
        }
        c.skip_blanks();
        let value = if c.peek() == Some('"') {
            c.quoted()?
        } else {
            c.until(&[',', ' ', '\t']).to_string()
        };
        if out.iter().any(|(k, _)| *k == name) {
            return Err(format!("label `{name}` is filtered twice"));
        }
        out.push((name, value));
        c.skip_blanks();
        if !c.at_end() && !c.eat(',') {
            return Err("expected `,` between filters".to_string());
        }
    }
    Ok(out)
}

/// Labels as `{a="x",b="y"}`, escaped as in the exposition; `{}` if none.
fn series_key(labels: &[(String, String)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// What a series' status code says.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    /// Below 400.
    Ok,
    /// 429 Too Many Requests.
    RateLimited,
    /// Any other code from 400 up.
    Error,
}

impl Class {
    /// `503`, `429`, `200`, or a class such as `5xx`; `None` otherwise.
    fn of(code: &str) -> Option<Class> {
        let code = code.trim();
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !(b'1'..=b'5').contains(&bytes[0]) {
            return None;
        }
        let first = bytes[0] - b'0';
        if code[1..].eq_ignore_ascii_case("xx") {
            return Some(if first >= 4 { Class::Error } else { Class::Ok });
        }
        let n: u16 = code.parse().ok()?;
        Some(match n {
            429 => Class::RateLimited,
            400.. => Class::Error,
            _ => Class::Ok,
        })
    }
}

/// The selected series of one scrape: key to code class and value.
#[derive(Debug, PartialEq)]
struct Scrape {
    series: BTreeMap<String, (Class, f64)>,
}

/// A previous scrape as kept in kv.
#[derive(Debug, PartialEq)]
struct Previous {
    selector: String,
    version: String,
    at_ms: u64,
    values: BTreeMap<String, f64>,
}

impl Previous {
    fn load() -> Result<Option<Previous>, String> {
        let Some(bytes) = kv::get(SCRAPE_KEY) else {
            return Ok(None);
        };
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the stored scrape is unreadable: {e}"))?;
        let values = v["series"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Previous {
            selector: v["selector"].as_str().unwrap_or_default().to_string(),
            version: v["version"].as_str().unwrap_or_default().to_string(),
            at_ms: v["at_ms"].as_u64().unwrap_or(0),
            values,
        }))
    }

    fn save(selector: &str, version: &str, at_ms: u64, scrape: &Scrape) -> Result<(), String> {
        let series: Map<String, Value> = scrape
            .series
            .iter()
            .map(|(k, (_, v))| (k.clone(), json!(v)))
            .collect();
        let record = json!({
            "selector": selector,
            "version": version,
            "at_ms": at_ms,
            "series": series,
        });
        kv::set(SCRAPE_KEY, record.to_string().as_bytes()).map_err(|e| {
            format!(
                "cannot keep the scrape of {} series: {e}; select fewer with `match`",
                scrape.series.len()
            )
        })
    }
}

/// What happened between two scrapes.
#[derive(Debug, Default, PartialEq)]
struct Totals {
    requests: f64,
    errors: f64,
    rate_limited: f64,
    resets: usize,
    /// Error responses by series, for the summary.
    by_series: Vec<(String, f64)>,
}

impl Totals {
    fn between(previous: &BTreeMap<String, f64>, scrape: &Scrape) -> Totals {
        let mut t = Totals::default();
        for (key, &(class, now)) in &scrape.series {
            let delta = match previous.get(key) {
                Some(&before) if now >= before => now - before,
                Some(_) => {
                    t.resets += 1;
                    now
                }
                None => now,
            };
            t.requests += delta;
            if class == Class::Error {
                t.errors += delta;
                if delta > 0.0 {
                    t.by_series.push((key.clone(), delta));
                }
            }
            if class == Class::RateLimited {
                t.rate_limited += delta;
            }
        }
        t.by_series
            .sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        t
    }

    fn ratio(&self) -> f64 {
        if self.requests > 0.0 {
            self.errors / self.requests
        } else {
            0.0
        }
    }
}

/// Records `scrape` and judges it against the previous one.
fn judge(
    settings: &Settings,
    version: &str,
    now_ms: u64,
    scrape: &Scrape,
) -> Result<CheckResult, String> {
    let selector = settings.selector();
    let previous = Previous::load().unwrap_or_else(|e| {
        log::warn!("{e}; starting over");
        None
    });
    Previous::save(&selector, version, now_ms, scrape)?;
    let previous = match previous {
        Some(p) if p.selector == selector && p.version == version => p,
        Some(p) if p.selector == selector => {
            return Ok(CheckResult::warn(format!(
            "first scrape recorded; the ratio needs a second one (the previous was of release {})",
            p.version
        )))
        }
        _ => {
            return Ok(CheckResult::warn(
                "first scrape recorded; the ratio needs a second one",
            ))
        }
    };
    let t = Totals::between(&previous.values, scrape);
    let span = format_span(now_ms.saturating_sub(previous.at_ms));
    let ratio = t.ratio();
    let mut detail = format!(
        "{} of {} marketplace API responses, {} rate-limited",
        count(t.errors),
        count(t.requests),
        count(t.rate_limited)
    );
    if t.resets > 0 {
        detail.push_str(&format!("; {} counter reset(s)", t.resets));
    }
    let result = if t.requests < settings.min_requests {
        CheckResult::pass(format!(
            "traffic too low to judge: {} responses in {span}, fewer than min_requests = {} ({detail})",
            count(t.requests),
            count(settings.min_requests)
        ))
    } else if let Some(max) = settings
        .max_rate_limited_ratio
        .filter(|max| t.rate_limited / t.requests > *max)
    {
        CheckResult::fail(format!(
            "rate-limited ratio {} over {span} is above max_rate_limited_ratio {} ({detail})",
            pct(t.rate_limited / t.requests),
            pct(max)
        ))
    } else if ratio > settings.max_error_ratio {
        let worst: Vec<String> = t
            .by_series
            .iter()
            .take(3)
            .map(|(k, n)| format!("{k} {}", count(*n)))
            .collect();
        CheckResult::fail(format!(
            "error ratio {} over {span} is above max {} ({detail}); most: {}",
            pct(ratio),
            pct(settings.max_error_ratio),
            worst.join(", ")
        ))
    } else {
        CheckResult::pass(format!(
            "error ratio {} over {span}, max {} ({detail})",
            pct(ratio),
            pct(settings.max_error_ratio)
        ))
    };
    Ok(result
        .metric("error_ratio", ratio)
        .metric("requests", t.requests)
        .metric("errors", t.errors)
        .metric("rate_limited", t.rate_limited))
}

/// A counter increase: whole numbers without decimals.
fn count(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{:.1}", n)
    }
}

/// `0.0833` as `8.3%`.
fn pct(fraction: f64) -> String {
    format!("{}%", (fraction * 1000.0).round() / 10.0)
}

/// Milliseconds as `12.3s`.
fn format_span(ms: u64) -> String {
    let tenths = (ms + 50) / 100;
    format!("{}.{}s", tenths / 10, tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollback_plugin_sdk::check::Status;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let mut all = vec![("metrics_url", "http://127.0.0.1:1/metrics")];
        all.extend_from_slice(pairs);
        Settings::from_config(&Config::from_pairs(&all))
    }

    fn scrape(s: &Settings, text: &str) -> Result<Scrape, String> {
        s.select(&exposition::parse(text)?)
    }

    /// An exposition with `ok` 200s, `bad` 503s and `limited` 429s.
    fn counters(ok: u32, bad: u32, limited: u32) -> String {
        format!(
            "# TYPE marketplace_api_responses_total counter\n\
             marketplace_api_responses_total{{marketplace=\"amazon\",code=\"200\"}} {ok}\n\
             marketplace_api_responses_total{{marketplace=\"amazon\",code=\"503\"}} {bad}\n\
             marketplace_api_responses_total{{marketplace=\"amazon\",code=\"429\"}} {limited}\n\
             marketplace_api_responses_total{{marketplace=\"ebay\",code=\"500\"}} 7\n"
        )
    }

    fn run(s: &Settings, version: &str, at: u64, text: &str) -> CheckResult {
        judge(s, version, at, &scrape(s, text).expect("valid")).expect("verdict")
    }

    #[test]
    fn config_keys_and_defaults() {
        let s = settings(&[]).expect("valid");
        assert_eq!(s.metric, "marketplace_api_responses_total");
        assert_eq!(s.code_label, "code");
        assert_eq!(s.matchers, []);
        assert_eq!((s.max_error_ratio, s.min_requests), (0.05, 20.0));
        let s = settings(&[
            ("metric", "api_calls_total"),
            ("code_label", "status"),
            ("match", r#"marketplace="amazon", region = eu-west"#),
            ("max_error_ratio", "2%"),
            ("min_requests", "100"),
        ])
        .expect("valid");
        assert_eq!(
            s.matchers,
            [
                ("marketplace".to_string(), "amazon".to_string()),
                ("region".to_string(), "eu-west".to_string())
            ]
        );
        assert_eq!((s.max_error_ratio, s.min_requests), (0.02, 100.0));
        assert_eq!(
            Settings::from_config(&Config::from_pairs(&[])),
            Err("config `metrics_url` is required".to_string())
        );
        for (key, bad) in [
            ("metric", "no spaces"),
            ("code_label", "a:b"),
            ("match", "marketplace!=\"amazon\""),
            ("match", "a=1 b=2"),
            ("match", "a=1,a=2"),
            ("max_error_ratio", "1.5"),
            ("min_requests", "-1"),
        ] {
            let e = settings(&[(key, bad)]).expect_err(bad);
            assert!(e.contains(key), "{key} = {bad}: {e}");
        }
    }

    #[test]
    fn codes() {
        assert_eq!(Class::of("200"), Some(Class::Ok));
        assert_eq!(Class::of("399"), Some(Class::Ok));
        assert_eq!(Class::of("400"), Some(Class::Error));
        assert_eq!(Class::of("429"), Some(Class::RateLimited));
        assert_eq!(Class::of("503"), Some(Class::Error));
        assert_eq!(Class::of("5xx"), Some(Class::Error));
        assert_eq!(Class::of("2XX"), Some(Class::Ok));
        for bad in ["", "ok", "20", "2000", "600", "6xx", "x00", "timeout"] {
            assert_eq!(Class::of(bad), None, "{bad}");
        }
    }

    #[test]
    fn first_scrape_warns_then_the_ratio_decides() {
        let s = settings(&[("match", "marketplace=amazon")]).expect("valid");
        let r = run(&s, "1.0.0", 1_000, &counters(100, 0, 0));
        assert_eq!(r.status, Status::Warn);
        assert_eq!(
            r.summary,
            "first scrape recorded; the ratio needs a second one"
        );
        assert!(r.metrics.is_empty());

        // +190 OK, +2 errors and 4 rate-limited (counted apart): 1% of 196.
        let r = run(&s, "1.0.0", 11_000, &counters(290, 2, 4));
        assert_eq!(r.status, Status::Pass, "{}", r.summary);
        assert_eq!(
            r.summary,
            "error ratio 1% over 10.0s, max 5% (2 of 196 marketplace API responses, 4 rate-limited)"
        );
        assert_eq!(r.metric_value("requests"), Some(196.0));
        assert_eq!(r.metric_value("errors"), Some(2.0));
        assert_eq!(r.metric_value("rate_limited"), Some(4.0));

        // +10 OK, +20 errors and +10 rate-limited: 50%.
        let r = run(&s, "1.0.0", 21_000, &counters(300, 22, 14));
        assert_eq!(r.status, Status::Fail);
        assert_eq!(
            r.summary,
            "error ratio 50% over 10.0s is above max 5% (20 of 40 marketplace API responses, \
             10 rate-limited); most: {code=\"503\",marketplace=\"amazon\"} 20"
        );
        assert_eq!(r.metric_value("error_ratio"), Some(0.5));
    }

    #[test]
    fn low_traffic_passes_and_resets_count_whole() {
        let s = settings(&[("match", "marketplace=\"amazon\"")]).expect("valid");
        run(&s, "1", 0, &counters(1000, 50, 10));
        let r = run(&s, "1", 5_000, &counters(1005, 55, 10));
        assert_eq!(r.status, Status::Pass);
        assert!(
            r.summary.starts_with(
                "traffic too low to judge: 10 responses in 5.0s, fewer than min_requests = 20"
            ),
            "{}",
            r.summary
        );
        assert_eq!(r.metric_value("error_ratio"), Some(0.5));

        // The app restarted: every counter is lower, so each counts whole.
        let r = run(&s, "1", 10_000, &counters(40, 9, 1));
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.metric_value("requests"), Some(50.0));
        assert_eq!(
            r.metric_value("errors"),
            Some(9.0),
            "the 429 is counted apart"
        );
        assert!(r.summary.contains("3 counter reset(s)"), "{}", r.summary);
    }

    #[test]
    fn excluded_codes_and_rate_limits_are_not_errors_unless_asked() {
        let exposition = |ok: u32, not_found: u32, limited: u32| {
            format!(
                "marketplace_api_responses_total{{code=\"200\"}} {ok}\n\
                 marketplace_api_responses_total{{code=\"404\"}} {not_found}\n\
                 marketplace_api_responses_total{{code=\"429\"}} {limited}\n"
            )
        };
        // A quiet Walmart shop: most answers are 404 "no orders".
        let quiet = settings(&[("exclude", "404")]).expect("valid");
        run(&quiet, "1", 0, &exposition(0, 0, 0));
        let r = run(&quiet, "1", 10_000, &exposition(10, 90, 0));
        assert_eq!(r.status, Status::Pass, "{}", r.summary);
        assert_eq!(r.metric_value("errors"), Some(0.0));
        let strict = settings(&[]).expect("valid");
        run(&strict, "1", 0, &exposition(0, 0, 0));
        let r = run(&strict, "1", 10_000, &exposition(10, 90, 0));
        assert_eq!(r.status, Status::Fail, "without exclude: {}", r.summary);
        // 429s only fail with max_rate_limited_ratio.
        run(&strict, "1", 0, &exposition(0, 0, 0));
        let r = run(&strict, "1", 10_000, &exposition(50, 0, 50));
        assert_eq!(r.status, Status::Pass, "{}", r.summary);
        let hammer = settings(&[("max_rate_limited_ratio", "10%")]).expect("valid");
        run(&hammer, "1", 0, &exposition(0, 0, 0));
        let r = run(&hammer, "1", 10_000, &exposition(50, 0, 50));
        assert_eq!(r.status, Status::Fail, "{}", r.summary);
        assert!(
            r.summary.starts_with(
                "rate-limited ratio 50% over 10.0s is above max_rate_limited_ratio 10%"
            ),
            "{}",
            r.summary
        );
        // Classes and lists.
        let s = settings(&[("exclude", "404, 4xx")]).expect("valid");
        assert!(s.excluded("409") && s.excluded("404") && !s.excluded("500"));
        let e = settings(&[("exclude", "404,nope")]).expect_err("not a code");
        assert!(e.contains("`nope` is not a status code or class"), "{e}");
    }

    #[test]
    fn a_new_release_or_selector_starts_over() {
        let s = settings(&[]).expect("valid");
        run(&s, "1.0.0", 0, &counters(100, 0, 0));
        let r = run(&s, "1.1.0", 1_000, &counters(100, 90, 0));
        assert_eq!(r.status, Status::Warn);
        assert!(r.summary.contains("the previous was of release 1.0.0"));
        let other = settings(&[("match", "marketplace=ebay")]).expect("valid");
        let r = run(&other, "1.1.0", 2_000, &counters(100, 90, 0));
        assert_eq!(r.status, Status::Warn);
        // New series count whole: the ebay 500s appear between two scrapes.
        let r = run(&s, "1.1.0", 3_000, &counters(100, 90, 0));
        assert_eq!(
            r.status,
            Status::Warn,
            "selector changed back: {}",
            r.summary
        );
        let r = run(
            &s,
            "1.1.0",
            4_000,
            &format!(
                "{}marketplace_api_responses_total{{code=\"502\"}} 3\n",
                counters(130, 90, 0)
            ),
        );
        assert_eq!(r.metric_value("requests"), Some(33.0));
        assert_eq!(r.metric_value("errors"), Some(3.0));
    }

    #[test]
    fn unusable_expositions_are_errors() {
        let s = settings(&[]).expect("valid");
        let e = scrape(&s, "other_total 1\n").expect_err("absent");
        assert_eq!(
            e,
            "metric `marketplace_api_responses_total` is not in the exposition at http://127.0.0.1:1/metrics"
        );
        let m = settings(&[("match", "marketplace=walmart")]).expect("valid");
        let e = scrape(&m, &counters(1, 1, 1)).expect_err("no match");
        assert_eq!(
            e,
            "none of the 4 series of `marketplace_api_responses_total` matches {marketplace=\"walmart\"}"
        );
        for (text, why) in [
            ("marketplace_api_responses_total{code=\"200\"} NaN\n", "has value NaN"),
            ("marketplace_api_responses_total{code=\"200\"} -1\n", "has value -1"),
            ("marketplace_api_responses_total{code=\"200\"} +Inf\n", "has value inf"),
            ("marketplace_api_responses_total{status=\"200\"} 1\n", "has no `code` label"),
            ("marketplace_api_responses_total{code=\"OK\"} 1\n", "is not an HTTP status code"),
            (
                "marketplace_api_responses_total{code=\"200\"} 1\nmarketplace_api_responses_total{code=\"200\"} 2\n",
                "appears twice",
            ),
            ("marketplace_api_responses_total{code=\"200\" 1\n", "line 1:"),
        ] {
            let e = scrape(&s, text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(count(12.0), "12");
        assert_eq!(count(2.5), "2.5");
        assert_eq!(pct(1.0 / 12.0), "8.3%");
        assert_eq!(format_span(12_345), "12.3s");
    }
}
