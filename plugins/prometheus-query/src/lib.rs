//! `prometheus-query`: a health check that runs one PromQL instant query
//! against a Prometheus server's HTTP API and holds the result to
//! thresholds.
//!
//! Config keys (the plugin entry's `config` table, all strings):
//!
//! - `url` (required): the server's base URL, e.g. `http://prometheus:9090`
//!   (a path prefix is kept). The check sends
//!   `GET <url>/api/v1/query?query=<the query, URL-encoded>`.
//! - `query` (required): the PromQL expression.
//! - `max`, `min` (at least one): the check fails when the value is above
//!   `max` or below `min`.
//!
//! Secret: `bearer_token` is sent as `Authorization: Bearer <token>`.
//!
//! A scalar result is judged as it is. For an instant vector the worst
//! series decides: the one furthest above `max` or below `min` (or, when
//! all are within, closest to a limit); the summary names its labels.
//! Errors (never a pass): no data (an empty vector), a `NaN` value, a range
//! vector or string result, an `error` answer from Prometheus, any other
//! non-2xx answer, and no answer at all.
//!
//! Metric: `value`, the judged value (left out when infinite).

use rollback_plugin_sdk::check::{self, CheckContext, CheckResult, Guest};
use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::http::Request;
use rollback_plugin_sdk::log;
use rollback_plugin_sdk::serde_json::{self, Value};

/// The plugin; its `check` is the world's export.
struct PrometheusQuery;

impl Guest for PrometheusQuery {
    fn check(_ctx: CheckContext) -> Result<CheckResult, String> {
        let settings = Settings::from_config(&Config::host())?;
        let answer = settings.query()?;
        settings.judge(&answer)
    }
}

check::export_check!(PrometheusQuery);

/// The parsed configuration.
#[derive(Debug, PartialEq)]
struct Settings {
    url: String,
    query: String,
    max: Option<f64>,
    min: Option<f64>,
    token: Option<String>,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, String> {
        let url = config.required("url")?;
        let query = config.required("query")?;
        let threshold = |key: &str| {
            config.parse_with(key, |s| match s.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err("expected a number".to_string()),
            })
        };
        let (max, min) = (threshold("max")?, threshold("min")?);
        match (min, max) {
            (None, None) => return Err("config `max` or `min` is required".to_string()),
            (Some(lo), Some(hi)) if lo > hi => {
                return Err(format!("config `min` = {lo} is above `max` = {hi}"))
            }
            _ => {}
        }
        Ok(Settings {
            url,
            query,
            max,
            min,
            token: config.secret("bearer_token"),
        })
    }

    /// `<url>/api/v1/query?query=...`.
    fn query_url(&self) -> String {
        format!(
            "{}/api/v1/query?query={}",
            self.url.trim_end_matches('/'),
            encode(&self.query)
        )
    }

    /// Runs the query; anything but a usable answer is an error.
    fn query(&self) -> Result<Answer, String> {
        let mut request = Request::get(&self.query_url()).header("Accept", "application/json");
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let endpoint = format!("{}/api/v1/query", self.url.trim_end_matches('/'));
        let response = request.send().map_err(|e| format!("GET {endpoint}: {e}"))?;
        parse_answer(response.status(), response.body())
    }

    /// The verdict on an answer.
    fn judge(&self, answer: &Answer) -> Result<CheckResult, String> {
        let (value, what) = match answer {
            Answer::Scalar(v) => {
                if v.is_nan() {
                    return Err(format!("the query returned NaN: {}", short(&self.query)));
                }
                (*v, "scalar".to_string())
            }
            Answer::Vector(series) => {
                if series.is_empty() {
                    return Err(format!(
                        "no data: the query returned an empty vector: {}",
                        short(&self.query)
                    ));
                }
                if let Some(nan) = series.iter().find(|s| s.value.is_nan()) {
                    return Err(format!(
                        "the query returned NaN for {}: {}",
                        nan.name(),
                        short(&self.query)
                    ));
                }
                let mut worst = &series[0];
                for s in &series[1..] {
                    if self.badness(s.value) > self.badness(worst.value) {
                        worst = s;
                    }
                }
                let what = if series.len() == 1 {
                    worst.name()
                } else {
                    format!("{} (worst of {} series)", worst.name(), series.len())
                };
                (worst.value, what)
            }
        };
        let shown = num(value);
        let result = match (self.max, self.min) {
            (Some(max), _) if value > max => {
                CheckResult::fail(format!("{shown} > max {} for {what}", num(max)))
            }
            (_, Some(min)) if value < min => {
                CheckResult::fail(format!("{shown} < min {} for {what}", num(min)))
            }
            _ => CheckResult::pass(format!("{shown} within {} for {what}", self.limits())),
        };
        Ok(result.metric("value", value))
    }

    /// How far `value` is past the limits (negative when within them).
    fn badness(&self, value: f64) -> f64 {
        let over = self.max.map_or(f64::NEG_INFINITY, |max| value - max);
        let under = self.min.map_or(f64::NEG_INFINITY, |min| min - value);
        over.max(under)
    }

    /// `max 0.05`, `min 1`, or `min 1, max 5`.
    fn limits(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("min {}, max {}", num(min), num(max)),
            (Some(min), None) => format!("min {}", num(min)),
            (None, Some(max)) => format!("max {}", num(max)),
            (None, None) => String::new(),
        }
    }
}

/// What an instant query returned.
#[derive(Debug, PartialEq)]
enum Answer {
    Scalar(f64),
    Vector(Vec<Series>),
}

/// One series of an instant vector.
#[derive(Debug, PartialEq)]
struct Series {
    /// Label pairs, sorted by name (`__name__` included if present).
    labels: Vec<(String, String)>,
    value: f64,
}

impl Series {
    /// `name{a="x"}` as PromQL writes a series; `{}` without labels.
    fn name(&self) -> String {
        let mut out = String::new();
        let mut rest = Vec::new();
        for (k, v) in &self.labels {
            if k == "__name__" {
                out.push_str(v);
            } else {
                rest.push(format!("{k}={v:?}"));
            }
        }
        out.push('{');
        out.push_str(&rest.join(", "));
        out.push('}');
        out
    }
}

/// Reads Prometheus' answer (any HTTP status: errors come as JSON too).
fn parse_answer(status: u16, body: &[u8]) -> Result<Answer, String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let excerpt: String = text.trim().chars().take(200).collect();
        return Err(if (200..300).contains(&status) {
            format!("Prometheus answered HTTP {status} with a body that is not JSON: {excerpt}")
        } else {
            format!("Prometheus answered HTTP {status}: {excerpt}")
        });
    };
    for key in ["warnings", "infos"] {
        for w in v[key].as_array().into_iter().flatten() {
            log::warn!("Prometheus {key}: {}", w.as_str().unwrap_or_default());
        }
    }
    match v["status"].as_str() {
        Some("success") if (200..300).contains(&status) => {}
        Some("error") => {
            return Err(format!(
                "Prometheus answered HTTP {status}: {}: {}",
                v["errorType"].as_str().unwrap_or("error"),
                v["error"].as_str().unwrap_or("(no message)")
            ))
        }
        _ => {
            return Err(format!(
                "Prometheus answered HTTP {status} without a status: {}",
                short(&v.to_string())
            ))
        }
    }
    let data = &v["data"];
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("scalar") => Ok(Answer::Scalar(sample_value(result)?)),
        Some("vector") => {
            let items = result
                .as_array()
                .ok_or("the vector result is not a list")?;
            let mut series = Vec::with_capacity(items.len());
            for item in items {
                let mut labels: Vec<(String, String)> = item["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                labels.sort();
                if item.get("histogram").is_some() {
                    return Err(
                        "the query returned native histograms; reduce them to a number \
                         (histogram_quantile, histogram_count, ...)"
                            .to_string(),
                    );
                }
                let value = sample_value(&item["value"])?;
                series.push(Series { labels, value });
            }
            Ok(Answer::Vector(series))
        }
        Some("matrix") => Err(
            "the query returned a range vector; use an instant expression (e.g. wrap it in rate(...) or last_over_time(...))"
                .to_string(),
        ),
        Some("string") => Err("the query returned a string, not a number".to_string()),
        other => Err(format!("unexpected resultType {other:?}")),
    }
}

/// `[<unix time>, "<value>"]` to the value; `NaN` and `±Inf` included.
fn sample_value(pair: &Value) -> Result<f64, String> {
    let text = pair.get(1).and_then(Value::as_str).ok_or_else(|| {
        format!(
            "expected [<time>, \"<value>\"], got {}",
            short(&pair.to_string())
        )
    })?;
    text.parse::<f64>()
        .map_err(|_| format!("the value {text:?} is not a number"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

/// A text cut to 200 characters for a summary.
fn short(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// A value for humans: integers as such, others to 4 significant digits.
fn num(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 15) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollback_plugin_sdk::check::Status;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let mut all = vec![
            ("url", "http://127.0.0.1:9090/"),
            ("query", "sum(rate(x[5m]))"),
        ];
        all.extend_from_slice(pairs);
        Settings::from_config(&Config::from_pairs(&all))
    }

    fn vector(body: &str) -> String {
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{body}}}}}"#)
    }

    #[test]
    fn config_and_url() {
        let s = settings(&[("max", "0.05")]).expect("valid");
        assert_eq!((s.max, s.min, s.token.as_deref()), (Some(0.05), None, None));
        assert_eq!(
            s.query_url(),
            "http://127.0.0.1:9090/api/v1/query?query=sum%28rate%28x%5B5m%5D%29%29"
        );
        assert_eq!(
            encode("a{b=\"c d\"} / ü+1"),
            "a%7Bb%3D%22c%20d%22%7D%20%2F%20%C3%BC%2B1"
        );
        let s = Settings::from_config(
            &Config::from_pairs(&[("url", "http://p/prom"), ("query", "up"), ("min", "1")])
                .with_secrets(&[("bearer_token", "t0k")]),
        )
        .expect("valid");
        assert_eq!(s.token.as_deref(), Some("t0k"));
        assert_eq!(s.query_url(), "http://p/prom/api/v1/query?query=up");
        assert_eq!(
            settings(&[]),
            Err("config `max` or `min` is required".to_string())
        );
        assert!(settings(&[("max", "NaN")])
            .expect_err("nan")
            .contains("`max`"));
        assert!(settings(&[("min", "lots")])
            .expect_err("text")
            .contains("`min`"));
        assert!(settings(&[("min", "5"), ("max", "1")])
            .expect_err("crossed")
            .contains("above"));
        let e = Settings::from_config(&Config::from_pairs(&[("url", "http://p")]))
            .expect_err("no query");
        assert_eq!(e, "config `query` is required");
    }

    #[test]
    fn the_worst_series_decides() {
        let s = settings(&[("max", "0.05")]).expect("valid");
        let answer = parse_answer(
            200,
            vector(
                r#"[{"metric":{"marketplace":"ebay"},"value":[1712345678.123,"0.01"]},
                    {"metric":{"marketplace":"amazon","code":"5xx"},"value":[1712345678.123,"0.0833333"]},
                    {"metric":{},"value":[1712345678.123,"0.02"]}]"#,
            )
            .as_bytes(),
        )
        .expect("answer");
        let r = s.judge(&answer).expect("verdict");
        assert_eq!(r.status, Status::Fail);
        assert_eq!(
            r.summary,
            "0.08333 > max 0.05 for {code=\"5xx\", marketplace=\"amazon\"} (worst of 3 series)"
        );
        assert_eq!(r.metrics[0].name, "value");
        assert_eq!(r.metrics[0].value, 0.0833333);

        let answer = parse_answer(
            200,
            vector(r#"[{"metric":{"__name__":"up","job":"shop"},"value":[1,"1"]}]"#).as_bytes(),
        )
        .expect("answer");
        let r = settings(&[("min", "1")])
            .expect("valid")
            .judge(&answer)
            .expect("verdict");
        assert_eq!(r.status, Status::Pass);
        assert_eq!(r.summary, "1 within min 1 for up{job=\"shop\"}");
    }

    #[test]
    fn both_limits_and_scalars() {
        let s = settings(&[("min", "10"), ("max", "20")]).expect("valid");
        let v = |text: &str| parse_answer(200, vector(text).as_bytes()).expect("answer");
        // 2 is 8 under min, 25 is 5 over max: the 2 is worse.
        let r = s
            .judge(&v(
                r#"[{"metric":{"a":"1"},"value":[1,"25"]},{"metric":{"a":"2"},"value":[1,"2"]}]"#,
            ))
            .expect("verdict");
        assert_eq!(r.summary, "2 < min 10 for {a=\"2\"} (worst of 2 series)");
        let r = s
            .judge(&v(r#"[{"metric":{"a":"1"},"value":[1,"+Inf"]}]"#))
            .expect("verdict");
        assert_eq!((r.status, r.metrics.len()), (Status::Fail, 0));
        assert_eq!(r.summary, "+Inf > max 20 for {a=\"1\"}");
        let scalar = parse_answer(
            200,
            br#"{"status":"success","data":{"resultType":"scalar","result":[1712345678.5,"12.5"]}}"#,
        )
        .expect("answer");
        assert_eq!(scalar, Answer::Scalar(12.5));
        let r = s.judge(&scalar).expect("verdict");
        assert_eq!(r.status, Status::Pass);
        assert_eq!(r.summary, "12.5 within min 10, max 20 for scalar");
    }

    #[test]
    fn no_data_nan_and_error_answers_are_errors() {
        let s = settings(&[("max", "1")]).expect("valid");
        let empty = parse_answer(200, vector("[]").as_bytes()).expect("answer");
        let e = s.judge(&empty).expect_err("no data");
        assert!(
            e.starts_with("no data:") && e.contains("sum(rate(x[5m]))"),
            "{e}"
        );
        let nan = parse_answer(
            200,
            vector(r#"[{"metric":{"a":"b"},"value":[1,"NaN"]}]"#).as_bytes(),
        )
        .expect("answer");
        assert!(s
            .judge(&nan)
            .expect_err("NaN")
            .contains("NaN for {a=\"b\"}"));
        let scalar_nan = parse_answer(
            200,
            br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#,
        )
        .expect("answer");
        assert!(s.judge(&scalar_nan).is_err());

        let e = parse_answer(
            400,
            br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error"}"#,
        )
        .expect_err("bad query");
        assert_eq!(
            e,
            "Prometheus answered HTTP 400: bad_data: invalid parameter \"query\": 1:5: parse error"
        );
        for (status, body, why) in [
            (200, &b"<html>"[..], "not JSON"),
            (502, b"Bad Gateway", "HTTP 502: Bad Gateway"),
            (200, b"{}", "without a status"),
            (
                200,
                br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
                "range vector",
            ),
            (
                200,
                br#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#,
                "a string",
            ),
            (
                200,
                br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"abc"]}]}}"#,
                "not a number",
            ),
            (
                200,
                br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{}]}]}}"#,
                "native histograms",
            ),
        ] {
            let e = parse_answer(status, body).expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn numbers_for_humans() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(0.05), "0.05");
        assert_eq!(num(1.0 / 12.0), "0.08333");
        assert_eq!(num(12345.678), "12346");
        assert_eq!(num(-2.5), "-2.5");
        assert_eq!(num(f64::NEG_INFINITY), "-Inf");
        assert_eq!(short(&"x".repeat(300)).len(), 203);
    }
}
