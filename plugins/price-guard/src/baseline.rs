//! The baseline: the prices of the last release accepted as good, in the
//! entry's kv store.
//!
//! A kv value holds at most 64 KiB and an entry at most 1 MiB, so the
//! prices are written as compact text lines (`<price> <sku>\n`, the SKU
//! escaped) split over chunk keys `baseline.0`, `baseline.1`, ..., and a
//! small JSON record under `baseline.meta` that names the release, the
//! number of SKUs and of chunks. The record is written last and removed
//! first, so a baseline is either complete or absent.

use rollback_plugin_sdk::kv;
use rollback_plugin_sdk::serde_json::{self, json, Value};

use crate::prices::Prices;

/// The record naming the release and the chunks.
const META_KEY: &str = "baseline.meta";
/// Prefix of every key of the baseline (the record included).
const PREFIX: &str = "baseline.";
/// The host's cap on one value.
const CHUNK_MAX: usize = 64 * 1024;
/// The host's cap on all keys and values of the entry.
const STORE_MAX: usize = 1024 * 1024;
/// Room kept for the record (its JSON is well under this).
const META_ROOM: usize = 1024;

/// A stored baseline.
#[derive(Debug, PartialEq)]
pub struct Baseline {
    /// The release whose prices these are.
    pub version: String,
    /// When they were recorded, ms since the Unix epoch.
    pub recorded_at_ms: u64,
    /// The prices.
    pub prices: Prices,
}

fn chunk_key(i: usize) -> String {
    format!("{PREFIX}{i}")
}

/// Encodes `prices` as chunks of at most 64 KiB of whole lines. Errors when
/// one SKU alone would not fit a chunk or the whole would not fit the store.
pub fn encode(prices: &Prices) -> Result<Vec<String>, String> {
    let mut chunks = Vec::new();
    let mut chunk = String::new();
    let mut line = String::new();
    for (sku, price) in prices {
        line.clear();
        line.push_str(&price.to_string());
        line.push(' ');
        escape_into(sku, &mut line);
        line.push('\n');
        if line.len() > CHUNK_MAX {
            return Err(format!("SKU {sku:?} is too long to store"));
        }
        if chunk.len() + line.len() > CHUNK_MAX {
            chunks.push(std::mem::take(&mut chunk));
        }
        chunk.push_str(&line);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    let total: usize = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| chunk_key(i).len() + c.len())
        .sum::<usize>()
        + META_ROOM;
    if total > STORE_MAX {
        return Err(format!(
            "a baseline of {} SKUs takes {} KiB, more than the plugin's kv store holds (1 MiB); \
             lower max_skus or check fewer SKUs",
            prices.len(),
            total.div_ceil(1024)
        ));
    }
    Ok(chunks)
}

/// Decodes one chunk into `prices`.
fn decode_into(chunk: &str, prices: &mut Prices) -> Result<(), String> {
    for line in chunk.lines() {
        let (price, sku) = line
            .split_once(' ')
            .ok_or_else(|| format!("stored baseline line {line:?} is malformed"))?;
        let price: f64 = price
            .parse()
            .map_err(|_| format!("stored baseline line {line:?} is malformed"))?;
        let sku = unescape(sku)?;
        if prices.insert(sku, price).is_some() {
            return Err(format!("stored baseline lists {line:?} twice"));
        }
    }
    Ok(())
}

/// Backslash, line feed and carriage return are escaped, so every SKU stays
/// on its line.
fn escape_into(sku: &str, out: &mut String) {
    for c in sku.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            _ => return Err(format!("stored baseline SKU {text:?} is malformed")),
        }
    }
    Ok(out)
}

/// Stores `prices` as the baseline of `version`, replacing any other.
/// Returns the bytes written. On failure no baseline is left behind.
pub fn save(version: &str, now_ms: u64, prices: &Prices) -> Result<usize, String> {
    let chunks = encode(prices)?;
    clear();
    let mut written = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        if let Err(e) = kv::set(&chunk_key(i), chunk.as_bytes()) {
            clear();
            return Err(format!("cannot store the baseline: {e}"));
        }
        written += chunk.len();
    }
    let meta = json!({
        "version": version,
        "recorded_at_ms": now_ms,
        "skus": prices.len(),
        "chunks": chunks.len(),
    })
    .to_string();
    if let Err(e) = kv::set(META_KEY, meta.as_bytes()) {
        clear();
        return Err(format!("cannot store the baseline: {e}"));
    }
    Ok(written + meta.len())
}

/// Removes the baseline: the record first, so a half-removed one is absent.
fn clear() {
    kv::delete(META_KEY);
    for key in kv::keys(PREFIX) {
        kv::delete(&key);
    }
}

/// The stored baseline; `Ok(None)` when there is none, an error when it is
/// incomplete or unreadable.
pub fn load() -> Result<Option<Baseline>, String> {
    let Some(meta) = kv::get(META_KEY) else {
        return Ok(None);
    };
    let meta: Value = serde_json::from_slice(&meta)
        .map_err(|e| format!("stored baseline record is unreadable: {e}"))?;
    let (Some(version), Some(recorded_at_ms), Some(skus), Some(chunks)) = (
        meta["version"].as_str(),
        meta["recorded_at_ms"].as_u64(),
        meta["skus"].as_u64(),
        meta["chunks"].as_u64(),
    ) else {
        return Err(format!("stored baseline record is incomplete: {meta}"));
    };
    let mut prices = Prices::new();
    for i in 0..chunks {
        let key = format!("{PREFIX}{i}");
        let bytes = kv::get(&key).ok_or_else(|| format!("stored baseline: `{key}` is missing"))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("stored baseline: `{key}` is not text"))?;
        decode_into(text, &mut prices)?;
    }
    if prices.len() as u64 != skus {
        return Err(format!(
            "stored baseline holds {} SKUs, its record says {skus}",
            prices.len()
        ));
    }
    Ok(Some(Baseline {
        version: version.to_string(),
        recorded_at_ms,
        prices,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(n: usize) -> Prices {
        (0..n)
            .map(|i| (format!("SKU-{i:05}"), (i % 1000) as f64 + 0.99))
            .collect()
    }

    #[test]
    fn round_trip_across_chunks() {
        let p = prices(20_000);
        let chunks = encode(&p).expect("fits");
        assert!(chunks.len() > 1, "{} chunk(s)", chunks.len());
        assert!(chunks
            .iter()
            .all(|c| c.len() <= CHUNK_MAX && c.ends_with('\n')));
        let bytes = save("1.0.0", 42, &p).expect("stored");
        assert!(bytes < STORE_MAX, "{bytes}");
        let b = load().expect("readable").expect("present");
        assert_eq!(
            (b.version.as_str(), b.recorded_at_ms, b.prices.len()),
            ("1.0.0", 42, 20_000)
        );
        assert_eq!(b.prices, p);
    }

    #[test]
    fn odd_skus_and_prices_survive() {
        let p: Prices = [
            ("a b\\c".to_string(), 0.1 + 0.2),
            ("line\nbreak\r".to_string(), 1e-7),
            ("ünï 🛒".to_string(), 123_456_789.125),
            ("zero".to_string(), 0.0),
        ]
        .into_iter()
        .collect();
        save("2", 1, &p).expect("stored");
        assert_eq!(load().expect("readable").expect("present").prices, p);
    }

    #[test]
    fn replacing_removes_stale_chunks() {
        save("1", 1, &prices(20_000)).expect("stored");
        let before = kv::keys(PREFIX).len();
        save("2", 2, &prices(3)).expect("stored");
        assert_eq!(kv::keys(PREFIX), vec!["baseline.0", "baseline.meta"]);
        assert!(before > 2);
        assert_eq!(load().expect("readable").expect("present").version, "2");
    }

    #[test]
    fn absent_incomplete_and_oversized() {
        assert_eq!(load(), Ok(None));
        save("1", 1, &prices(20_000)).expect("stored");
        kv::delete("baseline.1");
        let e = load().expect_err("a chunk is gone");
        assert!(e.contains("`baseline.1` is missing"), "{e}");
        kv::set(META_KEY, b"{}").expect("stored");
        assert!(load().expect_err("bad record").contains("incomplete"));

        // Long SKUs: 20 000 of them do not fit 1 MiB; nothing is written.
        clear();
        let long: Prices = (0..20_000).map(|i| (format!("{i:0>60}"), 1.0)).collect();
        let e = save("1", 1, &long).expect_err("too big");
        assert!(e.contains("20000 SKUs") && e.contains("1 MiB"), "{e}");
        assert_eq!(load(), Ok(None));
        let huge: Prices = [("x".repeat(70_000), 1.0)].into_iter().collect();
        assert!(encode(&huge).expect_err("too long").contains("too long"));
    }
}
