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

/// Bindings generated from `wit/plugin.wit`; the export glue needs `unsafe`.
#[allow(unsafe_code, missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "health-check",
        path: "../../wit",
    });

    use super::HttpProbe;
    export!(HttpProbe);
}

use bindings::rollback::plugin::config;
use bindings::rollback::plugin::http::{self, Request};
use bindings::rollback::plugin::log::{self, Level};
use bindings::rollback::plugin::types::{Metric, Status};
use bindings::{CheckContext, CheckResult, Guest};

/// The plugin; its `check` is the world's export.
struct HttpProbe;

impl Guest for HttpProbe {
    fn check(_ctx: CheckContext) -> Result<CheckResult, String> {
        let probe = Probe::from_config(config::get)?;
        probe.run()
    }
}

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
    /// Reads and validates the config through `get`.
    fn from_config(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let url = get("url")
            .map(|u| u.trim_ascii().to_string())
            .filter(|u| !u.is_empty())
            .ok_or("config `url` is required")?;
        let method = match get("method") {
            None => "GET".to_string(),
            Some(m) if m.trim_ascii().is_empty() => {
                return Err("config `method` must not be empty".to_string())
            }
            Some(m) => m.trim_ascii().to_ascii_uppercase(),
        };
        let expect = match get("expect_status") {
            None => Expect::default(),
            Some(s) => {
                Expect::parse(&s).map_err(|e| format!("config `expect_status` = `{s}`: {e}"))?
            }
        };
        let max_latency_us = get("max_latency")
            .map(|s| {
                parse_duration_us(&s).map_err(|e| format!("config `max_latency` = `{s}`: {e}"))
            })
            .transpose()?;
        let timeout_ms = get("timeout")
            .map(|s| {
                parse_duration_us(&s)
                    .and_then(|us| {
                        u32::try_from(us.div_ceil(1000)).map_err(|_| "too long".to_string())
                    })
                    .map_err(|e| format!("config `timeout` = `{s}`: {e}"))
            })
            .transpose()?;
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
        let request = Request {
            method: self.method.clone(),
            url: self.url.clone(),
            headers: Vec::new(),
            body: None,
            timeout_ms: self.timeout_ms,
        };
        let target = format!("{} {}", self.method, self.url);
        let response = match http::send(&request) {
            Ok(response) => response,
            Err(err) => return self.no_response(&target, err),
        };
        let latency = format_us(response.elapsed_us);
        log::log(
            Level::Debug,
            &format!("{target} -> {} in {latency}", response.status),
        );
        let metrics = vec![
            Metric {
                name: "latency_ms".to_string(),
                value: response.elapsed_us as f64 / 1000.0,
            },
            Metric {
                name: "status_code".to_string(),
                value: f64::from(response.status),
            },
        ];
        let (status, summary) = if !self.expect.matches(response.status) {
            (
                Status::Fail,
                format!("{target} -> {}, expected {}", response.status, self.expect),
            )
        } else {
            match self.max_latency_us {
                Some(max) if response.elapsed_us > max => (
                    Status::Fail,
                    format!(
                        "{target} -> {} in {latency}, above max_latency {}",
                        response.status,
                        format_us(max)
                    ),
                ),
                _ => (
                    Status::Pass,
                    format!("{target} -> {} in {latency}", response.status),
                ),
            }
        };
        Ok(CheckResult {
            status,
            summary,
            metrics,
        })
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
        };
        Ok(CheckResult {
            status: Status::Fail,
            summary: format!("{target} failed: {reason}"),
            metrics: Vec::new(),
        })
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

/// Parses `<integer><unit>` with unit `ms`, `s` or `m` into microseconds.
fn parse_duration_us(text: &str) -> Result<u64, String> {
    let text = text.trim_ascii();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err("expected an integer and a unit ms, s or m, like 500ms".to_string());
    }
    let unit_us: u64 = match unit.trim_ascii() {
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "" => return Err("missing unit: use ms, s or m, like 500ms".to_string()),
        other => return Err(format!("unknown unit `{other}`: use ms, s or m")),
    };
    let value: u64 = number.parse().map_err(|_| "number too large".to_string())?;
    if value == 0 {
        return Err("must be greater than zero".to_string());
    }
    value
        .checked_mul(unit_us)
        .ok_or_else(|| "too long".to_string())
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
        Probe::from_config(|key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
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
    fn formats_latency() {
        assert_eq!(format_us(0), "0.0ms");
        assert_eq!(format_us(12_345), "12.3ms");
        assert_eq!(format_us(999_960), "1000.0ms");
    }
}
