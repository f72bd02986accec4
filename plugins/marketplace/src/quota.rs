//! When a plugin entry may call its marketplace next, kept in `kv` so that
//! every run (a fresh instance) sees it.
//!
//! A marketplace's quota is shared with the seller's own app (SP-API's
//! getOrders allows one request a minute per seller and application, a
//! burst of 20), so a check must never spend it faster than its
//! `marketplace_interval`, and after a 429 must wait as long as the answer
//! says: `Retry-After` (seconds, capped at [`MAX_WAIT_MS`]), else
//! Walmart's `x-next-replenishment-time` (when its bucket refills: epoch
//! seconds or milliseconds, or RFC 3339), else one request's worth of
//! `x-amzn-RateLimit-Limit` (requests per second), else a minute. A throttled call is not retried at once: the plugin sends
//! marketplace calls with no host retries ([`crate::Call::metered`]) and
//! the next run waits for the slot.
//!
//! One schedule per plugin ([`use_key`]): checks of one shop may share a
//! `kv` (`kv_scope`), but they call different operations, each with its
//! own quota.
//!
//! Decides nothing about the release: it says "not yet" and why.

use rollback_plugin_sdk::http::Response;
use rollback_plugin_sdk::kv;
use serde::{Deserialize, Serialize};

use crate::time::{format_duration_ms, format_rfc3339};

/// The `kv` key of the schedule unless the plugin names another.
pub const KEY: &str = "market-next-call";

thread_local! {
    static SCHEDULE: std::cell::Cell<&'static str> = const { std::cell::Cell::new(KEY) };
}

/// Keeps this plugin's schedule under `key` (from now on, in this
/// instance): e.g. `inventory-next-call`, apart from `order-sync-lag`'s.
pub fn use_key(key: &'static str) {
    SCHEDULE.with(|k| k.set(key));
}

fn key() -> &'static str {
    SCHEDULE.with(std::cell::Cell::get)
}
/// The longest wait a marketplace answer can impose.
pub const MAX_WAIT_MS: u64 = 3_600_000;
/// The wait after a 429 that says nothing about when to come back.
pub const DEFAULT_THROTTLE_WAIT_MS: u64 = 60_000;

/// The next allowed call and why it is not sooner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Next {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// Why, in words.
    pub why: String,
    /// The marketplace said so (a 429), rather than the check's own pace.
    #[serde(default)]
    pub throttled: bool,
}

/// The stored schedule, if any.
pub fn next() -> Option<Next> {
    kv::get_json::<Next>(key()).ok().flatten()
}

/// `Ok` when a marketplace call is allowed at `now_ms`; else the text of
/// when it will be and why. An `urgent` call (the check has no usable
/// answer at all) only waits for the marketplace's own throttling, not for
/// the check's pace.
pub fn allowed(now_ms: u64, urgent: bool) -> Result<(), String> {
    match next() {
        Some(n) if n.at_ms > now_ms && (n.throttled || !urgent) => Err(format!(
            "the next marketplace call is allowed at {} (in {}): {}",
            format_rfc3339(i64::try_from(n.at_ms).unwrap_or(i64::MAX)),
            format_duration_ms(n.at_ms - now_ms),
            n.why
        )),
        _ => Ok(()),
    }
}

/// No call before `at_ms` (the check's pace), decided at `now_ms`; an
/// earlier stored time moves on, a later one stays (the longest wait wins).
pub fn wait_until(now_ms: u64, at_ms: u64, why: impl Into<String>) {
    set(now_ms, at_ms, why.into(), false);
}

/// No call for `interval_ms` after one at `now_ms`: the check's own pace,
/// its `marketplace_interval`.
pub fn paced(now_ms: u64, interval_ms: u64) {
    wait_until(
        now_ms,
        now_ms.saturating_add(interval_ms),
        format!("marketplace_interval {}", format_duration_ms(interval_ms)),
    );
}

fn set(now_ms: u64, at_ms: u64, why: String, throttled: bool) {
    let current = next();
    if current.as_ref().is_some_and(|n| n.at_ms >= at_ms) {
        return;
    }
    // A pending throttle stays binding under a longer pace.
    let still_throttled = current.is_some_and(|n| n.throttled && n.at_ms > now_ms);
    let entry = Next {
        at_ms,
        why,
        throttled: throttled || still_throttled,
    };
    if let Err(e) = kv::set_json(key(), &entry) {
        rollback_plugin_sdk::log::warn!("cannot store the marketplace schedule: {e}");
    }
}

/// Forgets the schedule (tests, or a changed config).
pub fn forget() {
    kv::delete(key());
}

/// When Walmart's `x-next-replenishment-time` says its bucket refills, in
/// ms: epoch seconds, epoch milliseconds or RFC 3339.
fn replenished_at(value: &str) -> Option<u64> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(n) if n >= 100_000_000_000 => Some(n),
        Ok(n) => Some(n.saturating_mul(1000)),
        Err(_) => crate::time::parse_rfc3339(value)
            .ok()
            .and_then(|ms| u64::try_from(ms).ok()),
    }
}

/// How long a 429 `response` answered at `now_ms` asks to wait, and the
/// reason in words.
pub fn throttle_wait(now_ms: u64, response: &Response) -> (u64, String) {
    let retry_after = response
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let replenished = response
        .header("x-next-replenishment-time")
        .and_then(replenished_at);
    let rate = response
        .header("x-amzn-ratelimit-limit")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r > 0.0);
    let (ms, why) = match (retry_after, replenished, rate) {
        (Some(s), ..) => (
            s.saturating_mul(1000),
            format!("throttled (HTTP 429, Retry-After: {s})"),
        ),
        (None, Some(at), _) => (
            at.saturating_sub(now_ms),
            format!(
                "throttled (HTTP 429, x-next-replenishment-time: {})",
                format_rfc3339(i64::try_from(at).unwrap_or(i64::MAX))
            ),
        ),
        (None, None, Some(r)) => (
            (1000.0 / r).ceil() as u64,
            format!("throttled (HTTP 429, x-amzn-RateLimit-Limit: {r} requests/s)"),
        ),
        (None, None, None) => (DEFAULT_THROTTLE_WAIT_MS, "throttled (HTTP 429)".to_string()),
    };
    (ms.clamp(1000, MAX_WAIT_MS), why)
}

/// Notes a 429 answered at `now_ms`: no call before it says.
pub fn throttled(now_ms: u64, response: &Response) {
    let (wait, why) = throttle_wait(now_ms, response);
    throttled_for(now_ms, wait, why);
}

/// Notes that the marketplace throttled us at `now_ms` for `wait_ms` (in
/// its own words: Lazada's `ApiCallLimit` arrives as HTTP 200).
pub fn throttled_for(now_ms: u64, wait_ms: u64, why: String) {
    set(now_ms, now_ms.saturating_add(wait_ms), why, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(headers: &[(&str, &str)]) -> Response {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Response::new(429, headers, "")
    }

    #[test]
    fn waits_follow_the_answer() {
        assert_eq!(
            throttle_wait(0, &answer(&[("Retry-After", "30")])),
            (30_000, "throttled (HTTP 429, Retry-After: 30)".to_string())
        );
        assert_eq!(
            throttle_wait(0, &answer(&[("x-amzn-RateLimit-Limit", "0.0167")])).0,
            59_881,
            "one request's worth of the rate"
        );
        assert_eq!(
            throttle_wait(0, &answer(&[("x-amzn-RateLimit-Limit", "0.0056")])).0,
            178_572
        );
        assert_eq!(throttle_wait(0, &answer(&[])).0, DEFAULT_THROTTLE_WAIT_MS);
        // Walmart: when its bucket refills, in any of its spellings.
        let now = 1_714_557_600_000;
        for at in ["1714557645000", "1714557645", "2024-05-01T10:00:45Z"] {
            let (wait, why) = throttle_wait(now, &answer(&[("x-next-replenishment-time", at)]));
            assert_eq!(wait, 45_000, "{at}");
            assert_eq!(
                why,
                "throttled (HTTP 429, x-next-replenishment-time: 2024-05-01T10:00:45Z)"
            );
        }
        let past = answer(&[("x-next-replenishment-time", "1714557500000")]);
        assert_eq!(
            throttle_wait(now, &past).0,
            1000,
            "a time gone by: the least wait"
        );
        let junk = answer(&[("x-next-replenishment-time", "soon")]);
        assert_eq!(throttle_wait(now, &junk).0, DEFAULT_THROTTLE_WAIT_MS);
        // Hostile or silly values are capped, never a panic or a spin.
        assert_eq!(
            throttle_wait(0, &answer(&[("Retry-After", "18446744073709551615")])).0,
            MAX_WAIT_MS
        );
        assert_eq!(throttle_wait(0, &answer(&[("Retry-After", "0")])).0, 1000);
        for bad in ["0", "-1", "NaN", "inf", "x"] {
            assert_eq!(
                throttle_wait(0, &answer(&[("x-amzn-RateLimit-Limit", bad)])).0,
                DEFAULT_THROTTLE_WAIT_MS,
                "{bad}"
            );
        }
        assert_eq!(
            throttle_wait(0, &answer(&[("x-amzn-RateLimit-Limit", "1e-9")])).0,
            MAX_WAIT_MS
        );
    }

    #[test]
    fn the_longest_wait_wins() {
        forget();
        assert_eq!(allowed(0, false), Ok(()));
        wait_until(0, 60_000, "marketplace_interval 1m");
        assert_eq!(allowed(1_000, true), Ok(()), "the pace yields to need");
        let err = allowed(1_000, false).expect_err("paced");
        assert!(
            err.contains("1970-01-01T00:01:00Z (in 59s): marketplace_interval 1m"),
            "{err}"
        );
        wait_until(0, 30_000, "shorter");
        assert_eq!(next().map(|n| n.at_ms), Some(60_000));
        throttled(1_000, &answer(&[("Retry-After", "120")]));
        assert_eq!(next().map(|n| n.at_ms), Some(121_000));
        assert!(allowed(2_000, true).is_err(), "a 429 binds even the urgent");
        wait_until(2_000, 150_000, "marketplace_interval 2m28s");
        assert!(
            allowed(130_000, true).is_err(),
            "a longer pace keeps a pending throttle binding"
        );
        assert_eq!(allowed(150_000, false), Ok(()));
        forget();
    }
}
