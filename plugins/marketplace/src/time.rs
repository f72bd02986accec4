//! Timestamps (milliseconds since the Unix epoch, as `i64`) to and from
//! RFC 3339 / ISO 8601 text, and durations such as `10m` or `1h30m`.

use std::time::Duration;

use rollback_plugin_sdk::config;

/// Parses an RFC 3339 date-time such as `2024-05-01T10:00:00Z`,
/// `2024-05-01T10:00:00.123456+02:00` or `2024-05-01 10:00:00z`: fractional
/// seconds are cut to milliseconds; the offset is `Z` or `±hh:mm` (`±hhmm`
/// and `±hh` are accepted too, and one space before a numeric offset, as
/// Lazada writes `2024-05-01 17:58:12 +0800`).
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    parse_inner(text.trim())
        .ok_or_else(|| format!("`{text}` is not an RFC 3339 date-time like 2024-05-01T10:00:00Z"))
}

fn parse_inner(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        for (i, c) in frac.bytes().take(3).enumerate() {
            if i < len {
                millis += i64::from(c - b'0') * [100, 10, 1][i];
            }
        }
        rest = &frac[len..];
    }
    if let Some(offset) = rest.strip_prefix(' ') {
        if offset.starts_with(['+', '-']) {
            rest = offset;
        }
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hm = &rest[1..];
            let (h, m) = match hm.len() {
                2 => (hm, "00"),
                4 => hm.split_at(2),
                5 if hm.as_bytes()[2] == b':' => (&hm[..2], &hm[3..]),
                _ => return None,
            };
            let (h, m) = (digits(h.as_bytes(), 0, 2)?, digits(m.as_bytes(), 0, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(seconds * 1000 + millis)
}

/// The number made of `len` ASCII digits at `at`.
fn digits(b: &[u8], at: usize, len: usize) -> Option<i64> {
    let slice = b.get(at..at + len)?;
    slice.iter().try_fold(0i64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2024-05-01T10:00:00Z`: whole seconds, rounded down (so a query "after"
/// it never misses anything; callers filter the rest themselves).
pub fn format_rfc3339(ms: i64) -> String {
    let (date, _) = format_parts(ms);
    format!("{date}Z")
}

/// `2024-05-01T10:00:00.123Z`, with milliseconds (eBay's filters want them).
pub fn format_rfc3339_millis(ms: i64) -> String {
    let (date, millis) = format_parts(ms);
    format!("{date}.{millis:03}Z")
}

fn format_parts(ms: i64) -> (String, i64) {
    let seconds = ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let date = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    );
    (date, ms.rem_euclid(1000))
}

/// Parses a duration of one or more `<integer><unit>` parts, unit `ms`,
/// `s`, `m`, `h` or `d`: `10m`, `90s`, `1h30m`, `2d`. Each part other than
/// days is read by the SDK's [`config::parse_duration`], so single values
/// mean exactly what they mean for every other plugin.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("expected a duration like 10m, 90s, 1h30m or 2d".to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && !c.is_whitespace())
            .ok_or_else(|| format!("missing unit after `{}`", rest.trim()))?;
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let part = &rest[..digits + unit_len];
        rest = &rest[digits + unit_len..];
        let value = match part.trim().strip_suffix('d') {
            Some(number) => {
                let n: u64 = number
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{part}` is not a number of days"))?;
                n.checked_mul(86_400)
                    .map(Duration::from_secs)
                    .ok_or("too long")?
            }
            None => config::parse_duration(part)?,
        };
        total = total.checked_add(value).ok_or("too long")?;
    }
    if total.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(total)
}

/// `2d3h`, `1h30m`, `12m5s`, `0s`: at most the two largest units, so a
/// summary stays short.
pub fn format_duration_ms(ms: u64) -> String {
    let secs = ms / 1000;
    if secs == 0 {
        return if ms == 0 {
            "0s".to_string()
        } else {
            format!("{ms}ms")
        };
    }
    // Under a minute, tenths rounded up: a lag just over a limit never reads
    // as equal to it.
    let tenths = ms.div_ceil(100);
    if tenths < 600 && !ms.is_multiple_of(1000) {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut out = String::new();
    let mut rest = secs;
    let mut shown = 0;
    for (size, name) in units {
        if shown == 2 {
            break;
        }
        let n = rest / size;
        if n > 0 || shown > 0 {
            if n > 0 {
                out.push_str(&format!("{n}{name}"));
            }
            rest %= size;
            shown += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2024-05-01T10:00:00Z"), Ok(1_714_557_600_000));
        assert_eq!(
            parse_rfc3339("2024-05-01T10:00:00.5Z"),
            Ok(1_714_557_600_500)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T10:00:00.123987z"),
            Ok(1_714_557_600_123)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T12:30:00+02:30"),
            Ok(1_714_557_600_000)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T05:00:00-0500"),
            Ok(1_714_557_600_000)
        );
        assert_eq!(
            parse_rfc3339(" 2024-05-01 11:00:00+01 "),
            Ok(1_714_557_600_000)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.999Z"),
            Ok(1_709_251_199_999)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Ok(-1000));
        // Lazada's spelling: a space before the offset.
        assert_eq!(
            parse_rfc3339("2024-05-01 18:00:00 +0800"),
            Ok(1_714_557_600_000)
        );
        for bad in [
            "2024-05-01 18:00:00 Z",
            "2024-05-01 18:00:00  +0800",
            "",
            "2024-05-01",
            "2024-05-01T10:00:00",
            "2024-05-01T10:00Z",
            "2024-13-01T10:00:00Z",
            "2023-02-29T10:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T10:00:00.Z",
            "2024-05-01T10:00:00+2:00",
            "2024-05-01T10:00:00Zjunk",
            "2024/05/01T10:00:00Z",
            "１024-05-01T10:00:00Z",
            "1.569521782042E9",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(format_rfc3339(1_714_557_600_999), "2024-05-01T10:00:00Z");
        assert_eq!(
            format_rfc3339_millis(1_714_557_600_042),
            "2024-05-01T10:00:00.042Z"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        // Round trips over a range of days, leap years included.
        for day in (-25_000..800_000).step_by(997) {
            let ms = day * 86_400_000 + 45_296_789;
            assert_eq!(parse_rfc3339(&format_rfc3339_millis(ms)), Ok(ms));
        }
    }

    #[test]
    fn durations() {
        let s = Duration::from_secs;
        assert_eq!(parse_duration("10m"), Ok(s(600)));
        assert_eq!(parse_duration("90s"), Ok(s(90)));
        assert_eq!(parse_duration("1h30m"), Ok(s(5400)));
        assert_eq!(parse_duration(" 1h 30m "), Ok(s(5400)));
        assert_eq!(parse_duration("2d"), Ok(s(172_800)));
        assert_eq!(parse_duration("1d12h"), Ok(s(129_600)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "10", "m", "1x", "1h30", "-1m", "0d", "1.5h", "d"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(format_duration_ms(0), "0s");
        assert_eq!(format_duration_ms(450), "450ms");
        assert_eq!(format_duration_ms(725_000), "12m5s");
        assert_eq!(format_duration_ms(8_000), "8s");
        assert_eq!(format_duration_ms(8_001), "8.1s");
        assert_eq!(format_duration_ms(8_400), "8.4s");
        assert_eq!(format_duration_ms(59_950), "59s");
        assert_eq!(format_duration_ms(5_400_000), "1h30m");
        assert_eq!(format_duration_ms(3_600_000), "1h");
        assert_eq!(format_duration_ms(3_601_000), "1h");
        assert_eq!(format_duration_ms(183_600_000), "2d3h");
        assert_eq!(format_duration_ms(86_400_000 + 59_000), "1d");
    }
}
