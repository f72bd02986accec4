//! The app's price export, `[{"sku": "A1", "price": 12.5}, ...]`, read
//! strictly: anything that is not a clean list of SKUs with prices is an
//! error, so a broken export can never pass the check.

use std::collections::BTreeMap;

use rollback_plugin_sdk::serde_json::{self, Value};

/// Prices by SKU, sorted by SKU.
pub type Prices = BTreeMap<String, f64>;

/// Parses and validates an export. SKUs are strings (or integers, taken as
/// their decimal text); prices are JSON numbers or decimal strings such as
/// `"19.99"`, finite and not negative. Duplicate SKUs and more than
/// `max_skus` entries are errors.
pub fn parse(body: &[u8], max_skus: usize) -> Result<Prices, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the price export is not valid JSON: {e}"))?;
    let Value::Array(rows) = value else {
        return Err(format!(
            "the price export must be a JSON array of {{\"sku\", \"price\"}} objects, not {}",
            kind(&value)
        ));
    };
    if rows.len() > max_skus {
        return Err(format!(
            "the price export lists {} entries, more than max_skus = {max_skus}; \
             raise max_skus if the baseline still fits the plugin's 1 MiB store",
            rows.len()
        ));
    }
    let mut prices = Prices::new();
    for (i, row) in rows.iter().enumerate() {
        let Value::Object(fields) = row else {
            return Err(format!(
                "price export entry {i}: expected an object, not {}",
                kind(row)
            ));
        };
        let sku = match fields.get("sku") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            Some(Value::String(_)) => return Err(format!("price export entry {i}: empty `sku`")),
            Some(other) => {
                return Err(format!(
                    "price export entry {i}: `sku` must be a string, not {}",
                    kind(other)
                ))
            }
            None => return Err(format!("price export entry {i}: no `sku`")),
        };
        let price = match fields.get("price") {
            Some(v) => price(v).map_err(|e| format!("price export, SKU {sku:?}: {e}"))?,
            None => return Err(format!("price export, SKU {sku:?}: no `price`")),
        };
        if prices.insert(sku.clone(), price).is_some() {
            return Err(format!("price export: SKU {sku:?} is listed twice"));
        }
    }
    Ok(prices)
}

/// A price from a JSON number or a decimal string.
fn price(value: &Value) -> Result<f64, String> {
    let p = match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("price {n} is out of range"))?,
        Value::String(s) => decimal(s)?,
        other => {
            return Err(format!(
                "price must be a number or a decimal string, not {}",
                kind(other)
            ))
        }
    };
    if !p.is_finite() {
        return Err(format!("price {p} is not finite"));
    }
    if p < 0.0 {
        return Err(format!("price {p} is negative"));
    }
    Ok(p)
}

/// `12`, `12.5`, `-3.10`: digits with at most one point. Exponents, `NaN`,
/// `Infinity`, commas and currency signs are refused: an export that
/// writes them is broken, whatever the parser would make of them.
fn decimal(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        if t.eq_ignore_ascii_case("nan") {
            return Err("price is NaN".to_string());
        }
        return Err(format!("price {text:?} is not a decimal number"));
    }
    t.parse::<f64>()
        .map_err(|_| format!("price {text:?} is not a decimal number"))
}

/// A JSON value's kind, for error texts.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Prices {
        parse(text.as_bytes(), 100).expect("valid export")
    }

    fn err(text: &str) -> String {
        parse(text.as_bytes(), 100).expect_err("invalid export")
    }

    #[test]
    fn numbers_and_decimal_strings() {
        let p = ok(
            r#"[{"sku": "A1", "price": 12.5}, {"sku": "B2", "price": "19.99"},
                       {"sku": 7, "price": 0}, {"sku": "C3", "price": " 4 ", "name": "x"}]"#,
        );
        assert_eq!(p.len(), 4);
        assert_eq!(p["A1"], 12.5);
        assert_eq!(p["B2"], 19.99);
        assert_eq!(p["7"], 0.0);
        assert_eq!(p["C3"], 4.0);
        assert!(ok("[]").is_empty());
    }

    #[test]
    fn broken_exports_are_errors() {
        assert!(err("[{\"sku\": \"A1\", \"price\": 1}").contains("not valid JSON"));
        assert!(err("<html>oops</html>").contains("not valid JSON"));
        assert!(err("{\"prices\": []}").contains("JSON array"));
        assert!(err("[1]").contains("entry 0: expected an object"));
        assert!(err("[{\"price\": 1}]").contains("no `sku`"));
        assert!(err("[{\"sku\": \" \", \"price\": 1}]").contains("empty `sku`"));
        assert!(err("[{\"sku\": 1.5, \"price\": 1}]").contains("`sku` must be a string"));
        assert!(err("[{\"sku\": \"A\"}]").contains("no `price`"));
        assert!(err("[{\"sku\": \"A\", \"price\": null}]").contains("not null"));
        assert!(err("[{\"sku\": \"A\", \"price\": 1e999}]").contains("not valid JSON"));
    }

    #[test]
    fn bad_prices_and_duplicates_are_errors() {
        let e = err(r#"[{"sku": "A", "price": -1.5}]"#);
        assert_eq!(e, "price export, SKU \"A\": price -1.5 is negative");
        assert!(err(r#"[{"sku": "A", "price": "-0.01"}]"#).contains("negative"));
        assert!(err(r#"[{"sku": "A", "price": "NaN"}]"#).contains("NaN"));
        for bad in ["inf", "1e3", "12,50", "$5", "", ".", "1.2.3", "0x10"] {
            let text = format!(r#"[{{"sku": "A", "price": "{bad}"}}]"#);
            assert!(
                err(&text).contains("not a decimal number"),
                "{bad}: {}",
                err(&text)
            );
        }
        let e = err(
            r#"[{"sku": "A", "price": 1}, {"sku": "B", "price": 2}, {"sku": "A", "price": 1}]"#,
        );
        assert_eq!(e, "price export: SKU \"A\" is listed twice");
    }

    #[test]
    fn sku_cap() {
        let body = br#"[{"sku": "A", "price": 1}, {"sku": "B", "price": 2}]"#;
        assert_eq!(parse(body, 2).map(|p| p.len()), Ok(2));
        let e = parse(body, 1).expect_err("over the cap");
        assert!(e.contains("2 entries, more than max_skus = 1"), "{e}");
    }
}
