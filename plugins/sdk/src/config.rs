//! Typed access to the plugin entry's `config` and `secrets` tables.
//!
//! The free functions read the host's tables; [`Config`] does the same over
//! any lookup, so config parsing can be unit-tested natively with
//! [`Config::from_pairs`].
//!
//! Values are trimmed of surrounding whitespace. [`required`] and
//! [`optional`] treat a blank value as absent; [`parse`], [`parse_with`],
//! [`parse_in`], [`duration`], [`share`] and [`ratio`] return `Ok(None)` only
//! for an absent key and hand anything else to the parser. Error texts name
//! the key and, for plain values, the value; never a secret's value.
//!
//! ```ignore
//! let url = config::required("url")?;
//! let retries: u32 = config::parse("retries")?.unwrap_or(3);
//! let pages: u32 = config::parse_in("max_pages", 1..)?.unwrap_or(10);
//! let timeout = config::duration("timeout")?.unwrap_or(Duration::from_secs(5));
//! let max_errors = config::ratio("max_error_ratio")?.unwrap_or(0.05);
//! let token = config::secret("token");
//! ```

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};
use std::str::FromStr;
use std::time::Duration;

type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// A source of config values and secrets: the host's, or a fixed one for tests.
pub struct Config<'a> {
    values: Lookup<'a>,
    secrets: Lookup<'a>,
}

impl Config<'static> {
    /// The entry's tables as the host has them.
    pub fn host() -> Self {
        Config {
            values: Box::new(host_get),
            secrets: Box::new(host_secret),
        }
    }
}

impl<'a> Config<'a> {
    /// Values from `lookup`, no secrets.
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Config {
            values: Box::new(lookup),
            secrets: Box::new(|_| None),
        }
    }

    /// Values from `(key, value)` pairs, no secrets.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Config {
            values: Box::new(pair_lookup(pairs)),
            secrets: Box::new(|_| None),
        }
    }

    /// Replaces the secrets with `(name, value)` pairs.
    #[must_use]
    pub fn with_secrets(self, pairs: &[(&str, &str)]) -> Self {
        Config {
            values: self.values,
            secrets: Box::new(pair_lookup(pairs)),
        }
    }

    /// The raw value of `key`, untrimmed; `None` when absent.
    pub fn get(&self, key: &str) -> Option<String> {
        (self.values)(key)
    }

    /// The trimmed value of `key`; `None` when absent or blank.
    pub fn optional(&self, key: &str) -> Option<String> {
        self.get(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The trimmed value of `key`; an error naming it when absent or blank.
    pub fn required(&self, key: &str) -> Result<String, String> {
        self.optional(key)
            .ok_or_else(|| format!("config `{key}` is required"))
    }

    /// The value of `key` parsed with `parse`; `Ok(None)` when absent.
    /// Errors read ``config `key` = `value`: <parser's error>``.
    pub fn parse_with<T, E: Display>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, String> {
        let Some(raw) = self.get(key) else {
            return Ok(None);
        };
        let text = raw.trim();
        parse(text)
            .map(Some)
            .map_err(|e| format!("config `{key}` = `{text}`: {e}"))
    }

    /// The value of `key` parsed with [`FromStr`] (numbers, `true`/`false`,
    /// ...); `Ok(None)` when absent.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.parse_with(key, str::parse::<T>)
    }

    /// The value of `key` parsed with [`FromStr`] and held to `bounds`
    /// (`1..`, `..=20`, `0.0..=1.0`); `Ok(None)` when absent. Errors read
    /// ``config `key` = `value`: must be at least 1`` (see [`check_bounds`]).
    pub fn parse_in<T>(&self, key: &str, bounds: impl RangeBounds<T>) -> Result<Option<T>, String>
    where
        T: FromStr + PartialOrd + Display,
        T::Err: Display,
    {
        self.parse_with(key, |text| {
            let value = text.parse::<T>().map_err(|e| e.to_string())?;
            check_bounds(value, &bounds)
        })
    }

    /// The value of `key` as a comma-separated list (the agent passes a TOML
    /// list so), each item trimmed, empty items dropped; `None` when absent.
    /// A blank value is an empty list: set, to nothing.
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        self.get(key).map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
    }

    /// The value of `key` as a duration (see [`parse_duration`]); `Ok(None)`
    /// when absent.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, String> {
        self.parse_with(key, parse_duration)
    }

    /// The value of `key` as a share of any size (see [`parse_share`]);
    /// `Ok(None)` when absent.
    pub fn share(&self, key: &str) -> Result<Option<f64>, String> {
        self.parse_with(key, parse_share)
    }

    /// The value of `key` as a ratio: a share (see [`parse_share`]) of at
    /// most 1 (`100%`); `Ok(None)` when absent.
    pub fn ratio(&self, key: &str) -> Result<Option<f64>, String> {
        self.parse_with(key, |text| {
            let share = parse_share(text)?;
            if share > 1.0 {
                return Err("must be at most 1 (100%)".to_string());
            }
            Ok(share)
        })
    }

    /// The trimmed secret `name`; `None` when absent or blank.
    pub fn secret(&self, name: &str) -> Option<String> {
        (self.secrets)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The trimmed secret `name`; an error naming it (not its value) when
    /// absent or blank.
    pub fn required_secret(&self, name: &str) -> Result<String, String> {
        self.secret(name)
            .ok_or_else(|| format!("secret `{name}` is required"))
    }
}

fn pair_lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[cfg(target_arch = "wasm32")]
fn host_get(key: &str) -> Option<String> {
    crate::bindings::rollback::plugin::config::get(key)
}

#[cfg(target_arch = "wasm32")]
fn host_secret(name: &str) -> Option<String> {
    crate::bindings::rollback::plugin::config::secret(name)
}

#[cfg(not(target_arch = "wasm32"))]
fn host_get(_key: &str) -> Option<String> {
    None
}

#[cfg(not(target_arch = "wasm32"))]
fn host_secret(_name: &str) -> Option<String> {
    None
}

/// The raw value of `key` from the host, untrimmed; `None` when absent.
pub fn get(key: &str) -> Option<String> {
    host_get(key)
}

/// See [`Config::optional`].
pub fn optional(key: &str) -> Option<String> {
    Config::host().optional(key)
}

/// See [`Config::required`].
pub fn required(key: &str) -> Result<String, String> {
    Config::host().required(key)
}

/// See [`Config::parse`].
pub fn parse<T>(key: &str) -> Result<Option<T>, String>
where
    T: FromStr,
    T::Err: Display,
{
    Config::host().parse(key)
}

/// See [`Config::parse_with`].
pub fn parse_with<T, E: Display>(
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, String> {
    Config::host().parse_with(key, parse)
}

/// See [`Config::parse_in`].
pub fn parse_in<T>(key: &str, bounds: impl RangeBounds<T>) -> Result<Option<T>, String>
where
    T: FromStr + PartialOrd + Display,
    T::Err: Display,
{
    Config::host().parse_in(key, bounds)
}

/// See [`Config::duration`].
pub fn duration(key: &str) -> Result<Option<Duration>, String> {
    Config::host().duration(key)
}

/// See [`Config::share`].
pub fn share(key: &str) -> Result<Option<f64>, String> {
    Config::host().share(key)
}

/// See [`Config::ratio`].
pub fn ratio(key: &str) -> Result<Option<f64>, String> {
    Config::host().ratio(key)
}

/// See [`Config::secret`].
pub fn secret(name: &str) -> Option<String> {
    Config::host().secret(name)
}

/// See [`Config::required_secret`].
pub fn required_secret(name: &str) -> Result<String, String> {
    Config::host().required_secret(name)
}

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h` (`500ms`, `2s`,
/// `1m`, `1h`; blanks around and between are allowed). Zero is rejected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err("expected an integer and a unit ms, s, m or h, like 500ms".to_string());
    }
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err("missing unit: use ms, s, m or h, like 500ms".to_string()),
        other => return Err(format!("unknown unit `{other}`: use ms, s, m or h")),
    };
    let value: u64 = number.parse().map_err(|_| "number too large".to_string())?;
    if value == 0 {
        return Err("must be greater than zero".to_string());
    }
    value
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| "too long".to_string())
}

/// `value` when it is within `bounds`; else `must be at least 1`, `must be
/// at most 20` or `must be between 0 and 1` (an exclusive bound reads
/// `greater than` or `less than`). NaN is never within bounds.
pub fn check_bounds<T: PartialOrd + Display>(
    value: T,
    bounds: &impl RangeBounds<T>,
) -> Result<T, String> {
    if bounds.contains(&value) {
        return Ok(value);
    }
    if let (Bound::Included(low), Bound::Included(high)) =
        (bounds.start_bound(), bounds.end_bound())
    {
        return Err(format!("must be between {low} and {high}"));
    }
    let low = match bounds.start_bound() {
        Bound::Included(low) => Some(format!("at least {low}")),
        Bound::Excluded(low) => Some(format!("greater than {low}")),
        Bound::Unbounded => None,
    };
    let high = match bounds.end_bound() {
        Bound::Included(high) => Some(format!("at most {high}")),
        Bound::Excluded(high) => Some(format!("less than {high}")),
        Bound::Unbounded => None,
    };
    let limits: Vec<String> = low.into_iter().chain(high).collect();
    Err(format!("must be {}", limits.join(" and ")))
}

/// Parses a share: a fraction (`0.05`) or a percentage (`5%`), finite and not
/// negative, as a fraction. Greater than 1 is allowed (a `150%` move).
pub fn parse_share(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (text, 1.0),
    };
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v / scale),
        _ => Err("expected a fraction like 0.05 or a percentage like 5%".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let c = Config::from_pairs(&[("a", " 404, ,4xx "), ("blank", ""), ("one", "x")]);
        assert_eq!(
            c.list("a"),
            Some(vec!["404".to_string(), "4xx".to_string()])
        );
        assert_eq!(c.list("blank"), Some(vec![]), "set, to nothing");
        assert_eq!(c.list("one"), Some(vec!["x".to_string()]));
        assert_eq!(c.list("absent"), None);
    }

    #[test]
    fn required_and_optional() {
        let c = Config::from_pairs(&[("url", " http://x/ "), ("blank", "  ")]);
        assert_eq!(c.required("url"), Ok("http://x/".to_string()));
        assert_eq!(
            c.required("blank"),
            Err("config `blank` is required".to_string())
        );
        assert_eq!(
            c.required("nope"),
            Err("config `nope` is required".to_string())
        );
        assert_eq!(c.optional("blank"), None);
        assert_eq!(c.get("blank").as_deref(), Some("  "));
    }

    #[test]
    fn typed_values() {
        let c = Config::from_pairs(&[("n", " 42 "), ("bad", "x"), ("flag", "true")]);
        assert_eq!(c.parse::<u32>("n"), Ok(Some(42)));
        assert_eq!(c.parse::<u32>("absent"), Ok(None));
        assert_eq!(c.parse::<bool>("flag"), Ok(Some(true)));
        let err = c.parse::<u32>("bad").expect_err("not a number");
        assert!(err.starts_with("config `bad` = `x`: "), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 3 s "), Ok(Duration::from_secs(3)));
        for bad in [
            "",
            "ms",
            "5",
            "5d",
            "1.5s",
            "-1s",
            "0s",
            "99999999999999999999ms",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
        let c = Config::from_pairs(&[("t", "2x")]);
        let err = c.duration("t").expect_err("bad unit");
        assert!(err.starts_with("config `t` = `2x`: unknown unit"), "{err}");
    }

    #[test]
    fn bounded_numbers() {
        let c = Config::from_pairs(&[("n", "0"), ("m", "21"), ("r", "1.5"), ("x", "x")]);
        assert_eq!(
            c.parse_in::<u32>("n", 1..),
            Err("config `n` = `0`: must be at least 1".to_string())
        );
        assert_eq!(c.parse_in::<u32>("m", 1..), Ok(Some(21)));
        assert_eq!(
            c.parse_in::<u32>("m", ..=20),
            Err("config `m` = `21`: must be at most 20".to_string())
        );
        assert_eq!(
            c.parse_in::<f64>("r", 0.0..=1.0),
            Err("config `r` = `1.5`: must be between 0 and 1".to_string())
        );
        assert_eq!(c.parse_in::<u32>("absent", 1..), Ok(None));
        let err = c.parse_in::<u32>("x", 1..).expect_err("not a number");
        assert!(err.starts_with("config `x` = `x`: "), "{err}");
        assert_eq!(
            check_bounds(f64::NAN, &(0.0..=1.0)),
            Err("must be between 0 and 1".to_string())
        );
        assert_eq!(check_bounds(0, &(0..10)), Ok(0));
        assert_eq!(
            check_bounds(10, &(0..10)),
            Err("must be at least 0 and less than 10".to_string())
        );
    }

    #[test]
    fn shares_and_ratios() {
        assert_eq!(parse_share("30%"), Ok(0.3));
        assert_eq!(parse_share(" 30 % "), Ok(0.3));
        assert_eq!(parse_share("0.3"), Ok(0.3));
        assert_eq!(parse_share("150%"), Ok(1.5));
        for bad in ["NaN", "inf", "-5%", "lots", "%", ""] {
            assert!(parse_share(bad).is_err(), "{bad} should be rejected");
        }
        let c = Config::from_pairs(&[("a", "5%"), ("b", "150%"), ("c", "x")]);
        assert_eq!(c.ratio("a"), Ok(Some(0.05)));
        assert_eq!(c.share("b"), Ok(Some(1.5)));
        assert_eq!(
            c.ratio("b"),
            Err("config `b` = `150%`: must be at most 1 (100%)".to_string())
        );
        assert_eq!(
            c.ratio("c"),
            Err(
                "config `c` = `x`: expected a fraction like 0.05 or a percentage like 5%"
                    .to_string()
            )
        );
        assert_eq!(c.ratio("absent"), Ok(None));
    }

    #[test]
    fn secrets_are_not_echoed() {
        let c = Config::from_pairs(&[]).with_secrets(&[("token", " s3cret\n"), ("empty", "")]);
        assert_eq!(c.secret("token").as_deref(), Some("s3cret"));
        assert_eq!(c.secret("empty"), None);
        assert_eq!(
            c.required_secret("other"),
            Err("secret `other` is required".to_string())
        );
    }
}
