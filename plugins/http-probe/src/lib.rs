//! `http-probe`: a health check that sends one HTTP request and judges the
//! response by its status code and latency.
//!
//! Config keys (the plugin entry's `config` table, all strings):
//!
//! - `url` (required): absolute `http://` or `https://` URL to request. Its
//!   host and port must be on the entry's `allow_hosts` list.
//! - `expect_status` (optional, default `2xx`): the accepted status codes,
//!   as a single code (`200`), a class (`2xx`), or a comma-separated list of
//!   either (`200,204`, `2xx,304`).
//! - `max_latency` (optional): the slowest acceptable response, as an integer
//!   and a unit `ms`, `s` or `m` (`500ms`, `2s`, `1m`). Without it latency is
//!   only reported.
//! - `method` (optional, default `GET`): the request method.
//! - `timeout` (optional): per-request timeout in the same format as
//!   `max_latency`; the host caps it at the call's deadline.
//!
//! Verdicts: `pass` when the status is accepted and the latency within
//! `max_latency`; `fail` on any other status, on a slow response, and when no
//! response arrives (timeout, connection refused: a server that is down is a
//! failed check). Bad config, requests the host refuses (`denied`,
//! `invalid-request`) and a body over the host's size cap (`too-large`) are
//! errors. Metrics (when a response arrived): `latency_ms` and `status_code`.

use std::time::Duration;

use rollback_plugin_sdk::check::{self, CheckContext, CheckResult, Guest};
use rollback_plugin_sdk::config::{self, Config};
use rollback_plugin_sdk::http::{self, Request};
use rollback_plugin_sdk::log;

/// The plugin; its `check` is the world's export.
struct HttpProbe;

impl Guest for HttpProbe {
    fn check(_ctx: CheckContext) -> Result<CheckResult, String> {
        let probe = Probe::from_config(&Config::host())?;
        probe.run()
    }
}

check::export_check!(HttpProbe);

/// The parsed configuration of one probe.
#[derive(Debug, PartialEq)]
struct Probe {
    url: String,
    method: String,
    expect: Expect,
    max_latency_us: Option<u64>,
    timeout_ms: Option<u32>,
}

impl Probe {
    /// Reads and validates the config.
    fn from_config(config: &Config) -> Result<Self, String> {
        let url = config.required("url")?;
        let method = match config.get("method") {
            None => "GET".to_string(),
            Some(m) if m.trim_ascii().is_empty() => {
                return Err("config `method` must not be empty".to_string())
            }
            Some(m) => m.trim_ascii().to_ascii_uppercase(),
        };
        let expect = config
            .parse_with("expect_status", Expect::parse)?
            .unwrap_or_default();
        let max_latency_us = config.parse_with("max_latency", parse_duration_us)?;
        let timeout_ms = config.parse_with("timeout", |s| {
            parse_duration_us(s)
                .and_then(|us| u32::try_from(us.div_ceil(1000)).map_err(|_| "too long".to_string()))
        })?;
        Ok(Probe {
            url,
            method,
            expect,
            max_latency_us,
            timeout_ms,
        })
    }

    /// Sends the request and turns the outcome into a verdict.
    fn run(&self) -> Result<CheckResult, String> {
        let mut request = Request::new(&self.method, &self.url);
        if let Some(ms) = self.timeout_ms {
            request = request.timeout(Duration::from_millis(u64::from(ms)));
        }
        let target = format!("{} {}", self.method, self.url);
        match request.send() {
            Ok(response) => Ok(self.judge(&target, response.status(), response.elapsed_us())),
            Err(err) => self.no_response(&target, err),
        }
    }

    /// The verdict on a response with `status` that took `elapsed_us`.
    fn judge(&self, target: &str, status: u16, elapsed_us: u64) -> CheckResult {
        let latency = format_us(elapsed_us);
        log::debug!("{target} -> {status} in {latency}");
        let result = if !self.expect.matches(status) {
            CheckResult::fail(format!("{target} -> {status}, expected {}", self.expect))
        } else {
            match self.max_latency_us {
                Some(max) if elapsed_us > max => CheckResult::fail(format!(
                    "{target} -> {status} in {latency}, above max_latency {}",
                    format_us(max)
                )),
                _ => CheckResult::pass(format!("{target} -> {status} in {latency}")),
            }
        };
        result
            .metric("latency_ms", elapsed_us as f64 / 1000.0)
            .metric("status_code", f64::from(status))
    }

    /// The verdict when the host could not get a response: timeouts and
    /// transport failures fail the check (the server is down or broken);
    /// requests the host refuses are configuration errors.
    fn no_response(&self, target: &str, err: http::Error) -> Result<CheckResult, String> {
        let reason = match err {
            http::Error::Timeout => match self.timeout_ms {
                Some(ms) => format!("timed out after {ms}ms"),
                None => "timed out".to_string(),
            },
            http::Error::Transport(text) => text,
            http::Error::Denied(text) => return Err(format!("{target}: denied by host: {text}")),
            http::Error::InvalidRequest(text) => {
                return Err(format!("{target}: invalid request: {text}"))
            }
            http::Error::TooLarge(cap) => {
                return Err(format!(
                    "{target}: response body larger than the host cap of {cap} bytes"
                ))
            }
            // Not produced by `send`; kept as errors should that change.
            err @ (http::Error::Status(..) | http::Error::Decode(_)) => {
                return Err(format!("{target}: {err}"))
            }
        };
        Ok(CheckResult::fail(format!("{target} failed: {reason}")))
    }
}

/// The accepted status codes.
#[derive(Debug, PartialEq)]
struct Expect(Vec<StatusPattern>);

#[derive(Debug, PartialEq)]
enum StatusPattern {
    /// One exact code, e.g. `204`.
    Code(u16),
    /// A class by its first digit, e.g. `2` for `2xx`.
    Class(u16),
}

impl Default for Expect {
    fn default() -> Self {
        Expect(vec![StatusPattern::Class(2)])
    }
}

impl Expect {
    fn parse(text: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for item in text.split(',') {
            let item = item.trim_ascii();
            let pattern =
                if let Some(digit) = item.strip_suffix("xx").or_else(|| item.strip_suffix("XX")) {
                    match digit {
                        "1" | "2" | "3" | "4" | "5" => {
                            StatusPattern::Class(u16::from(digit.as_bytes()[0] - b'0'))
                        }
                        _ => return Err(format!("`{item}` is not a status class (1xx to 5xx)")),
                    }
                } else {
                    match item.parse::<u16>() {
                        Ok(code) if (100..=599).contains(&code) && item.len() == 3 => {
                            StatusPattern::Code(code)
                        }
                        _ => {
                            return Err(format!(
                                "`{item}` is not a status code (100 to 599) or class (like 2xx)"
                            ))
                        }
                    }
                };
            patterns.push(pattern);
        }
        Ok(Expect(patterns))
    }

    fn matches(&self, status: u16) -> bool {
        self.0.iter().any(|p| match *p {
            StatusPattern::Code(code) => status == code,
            StatusPattern::Class(class) => status / 100 == class,
        })
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match p {
                StatusPattern::Code(code) => write!(f, "{code}")?,
                StatusPattern::Class(class) => write!(f, "{class}xx")?,
            }
        }
        Ok(())
    }
}

/// Parses `<integer><unit>` with unit `ms`, `s` or `m` into microseconds
/// (the SDK's parser, without its `h`: latencies and timeouts of hours make no
/// sense for a probe).
fn parse_duration_us(text: &str) -> Result<u64, String> {
    if text.trim_ascii().ends_with('h') {
        return Err("unknown unit `h`: use ms, s or m".to_string());
    }
    let duration = config::parse_duration(text)?;
    u64::try_from(duration.as_micros()).map_err(|_| "too long".to_string())
}

/// Formats microseconds as milliseconds with one decimal, e.g. `12.3ms`,
/// without pulling float formatting into the module.
fn format_us(us: u64) -> String {
    let tenths = us.saturating_add(50) / 100;
    format!("{}.{}ms", tenths / 10, tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(pairs: &[(&str, &str)]) -> Result<Probe, String> {
        Probe::from_config(&Config::from_pairs(pairs))
    }

    #[test]
    fn url_is_required() {
        assert_eq!(probe(&[]), Err("config `url` is required".to_string()));
        assert_eq!(
            probe(&[("url", " ")]),
            Err("config `url` is required".to_string())
        );
    }

    #[test]
    fn defaults() {
        let p = probe(&[("url", "http://127.0.0.1:8080/health")]).expect("valid");
        assert_eq!(p.method, "GET");
        assert_eq!(p.expect, Expect::default());
        assert_eq!(p.expect.to_string(), "2xx");
        assert_eq!(p.max_latency_us, None);
        assert_eq!(p.timeout_ms, None);
    }

    #[test]
    fn expect_status_forms() {
        let single = Expect::parse("200").expect("valid");
        assert!(single.matches(200) && !single.matches(204));
        let list = Expect::parse("200, 204").expect("valid");
        assert!(list.matches(204) && !list.matches(201));
        assert_eq!(list.to_string(), "200,204");
        let class = Expect::parse("3xx,200").expect("valid");
        assert!(class.matches(301) && class.matches(200) && !class.matches(201));
        for bad in [
            "", "20", "2000", "600", "099", "6xx", "xx", "200,", "ok", "+200",
        ] {
            assert!(Expect::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_us("500ms"), Ok(500_000));
        assert_eq!(parse_duration_us("2s"), Ok(2_000_000));
        assert_eq!(parse_duration_us("1m"), Ok(60_000_000));
        assert_eq!(parse_duration_us(" 3 s "), Ok(3_000_000));
        for bad in [
            "",
            "ms",
            "5",
            "5h",
            "1.5s",
            "-1s",
            "0s",
            "99999999999999999999ms",
        ] {
            assert!(parse_duration_us(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn bad_config_values_are_named() {
        let err = probe(&[("url", "http://x/"), ("max_latency", "fast")]).expect_err("invalid");
        assert!(err.starts_with("config `max_latency` = `fast`:"), "{err}");
        let err = probe(&[("url", "http://x/"), ("expect_status", "2x")]).expect_err("invalid");
        assert!(err.starts_with("config `expect_status` = `2x`:"), "{err}");
        let p = probe(&[
            ("url", "http://x/"),
            ("timeout", "1500ms"),
            ("method", "head"),
        ])
        .expect("valid");
        assert_eq!((p.timeout_ms, p.method.as_str()), (Some(1500), "HEAD"));
    }

    #[test]
    fn verdicts_and_summaries() {
        use rollback_plugin_sdk::check::Status;
        let p = probe(&[("url", "http://x/h"), ("max_latency", "100ms")]).expect("valid");
        let r = p.judge("GET http://x/h", 200, 12_345);
        assert_eq!(r.status, Status::Pass);
        assert_eq!(r.summary, "GET http://x/h -> 200 in 12.3ms");
        assert_eq!(r.metrics.len(), 2);
        assert_eq!(
            (r.metrics[0].name.as_str(), r.metrics[0].value),
            ("latency_ms", 12.345)
        );
        assert_eq!(
            (r.metrics[1].name.as_str(), r.metrics[1].value),
            ("status_code", 200.0)
        );
        let r = p.judge("GET http://x/h", 503, 1_000);
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.summary, "GET http://x/h -> 503, expected 2xx");
        let r = p.judge("GET http://x/h", 204, 150_000);
        assert_eq!(r.status, Status::Fail);
        assert_eq!(
            r.summary,
            "GET http://x/h -> 204 in 150.0ms, above max_latency 100.0ms"
        );
        let r = p
            .no_response("GET http://x/h", http::Error::Transport("refused".into()))
            .expect("a verdict");
        assert_eq!(
            (r.status, r.summary.as_str()),
            (Status::Fail, "GET http://x/h failed: refused")
        );
        let err = p
            .no_response("GET http://x/h", http::Error::Denied("x:80".into()))
            .expect_err("config error");
        assert_eq!(err, "GET http://x/h: denied by host: x:80");
    }

    #[test]
    fn formats_latency() {
        assert_eq!(format_us(0), "0.0ms");
        assert_eq!(format_us(12_345), "12.3ms");
        assert_eq!(format_us(999_960), "1000.0ms");
    }
}
