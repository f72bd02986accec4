//! Readable texts from the error bodies of the marketplaces and their token
//! endpoints, one parser for all of them:
//!
//! - SP-API and eBay: `{"errors":[{"code","message","details"?}]}` (eBay:
//!   `errorId`, `message`, `longMessage`);
//! - Walmart: `{"errors":{"error":[{"code","description","info"}]}}`, and
//!   from its API gateway `{"error":[{"code","description","info"}]}`;
//! - Shopee and OAuth token endpoints: `{"error":"..","message"|"error_description":".."}`.
//!
//! Anything else is quoted (its first 200 characters).

use serde_json::Value;

/// A one-line description of an error body.
pub fn describe(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        if let Some(text) = describe_json(&value) {
            return text;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty body".to_string();
    }
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// The description of a JSON error body; `None` when it has no known shape.
pub fn describe_json(value: &Value) -> Option<String> {
    let list = match (&value["errors"], &value["error"]) {
        (Value::Array(items), _) => Some(items.as_slice()),
        (Value::Object(map), _) => match map.get("error") {
            Some(Value::Array(items)) => Some(items.as_slice()),
            _ => None,
        },
        // Walmart's API gateway: `{"error":[{"code","description",...}]}`.
        (_, Value::Array(items)) => Some(items.as_slice()),
        _ => None,
    };
    if let Some(items) = list {
        let texts: Vec<String> = items.iter().filter_map(describe_item).collect();
        if !texts.is_empty() {
            return Some(texts.join("; "));
        }
    }
    describe_item(value)
}

/// `code: message (details)` from one error object.
fn describe_item(item: &Value) -> Option<String> {
    let code = text(item, &["code", "errorId", "error"]);
    let message = text(item, &["message", "description", "error_description"]);
    let details = text(item, &["details", "longMessage", "info"]);
    let mut out = match (code, message) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => return None,
    };
    if let Some(details) = details {
        if !out.contains(&details) {
            out.push_str(&format!(" ({details})"));
        }
    }
    if let Some(id) = text(item, &["request_id"]) {
        out.push_str(&format!(" [request_id {id}]"));
    }
    Some(out)
}

/// The first of `keys` that holds a non-empty string or a number.
fn text(item: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| match &item[*key] {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sp_api() {
        let body = br#"{"errors":[{"code":"Unauthorized","message":"Access to requested resource is denied.","details":"The access token you provided has expired."}]}"#;
        assert_eq!(
            describe(body),
            "Unauthorized: Access to requested resource is denied. (The access token you provided has expired.)"
        );
        let body = br#"{"errors":[{"code":"QuotaExceeded","message":"You exceeded your quota for the requested resource."}]}"#;
        assert_eq!(
            describe(body),
            "QuotaExceeded: You exceeded your quota for the requested resource."
        );
        let body =
            br#"{"errors":[{"code":"A","message":"a"},{"code":"B","message":"b","details":""}]}"#;
        assert_eq!(describe(body), "A: a; B: b");
    }

    #[test]
    fn walmart_ebay_shopee_oauth() {
        let walmart = br#"{"errors":{"error":[{"code":"UNAUTHORIZED.GMP_GATEWAY_API","field":"UNAUTHORIZED","description":"Unauthorized","info":"Unauthorized token or invalid service name","severity":"ERROR"}]}}"#;
        assert_eq!(
            describe(walmart),
            "UNAUTHORIZED.GMP_GATEWAY_API: Unauthorized (Unauthorized token or invalid service name)"
        );
        let ebay = br#"{"errors":[{"errorId":1001,"domain":"OAuth","category":"REQUEST","message":"Invalid access token","longMessage":"Invalid access token. Check the value of the Authorization HTTP request header."}]}"#;
        assert_eq!(
            describe(ebay),
            "1001: Invalid access token (Invalid access token. Check the value of the Authorization HTTP request header.)"
        );
        let shopee =
            br#"{"error":"error_auth","message":"Invalid access_token.","request_id":"abc"}"#;
        assert_eq!(
            describe(shopee),
            "error_auth: Invalid access_token. [request_id abc]"
        );
        let lwa = br#"{"error_description":"The request has an invalid grant parameter : refresh_token","error":"invalid_grant"}"#;
        assert_eq!(
            describe(lwa),
            "invalid_grant: The request has an invalid grant parameter : refresh_token"
        );
    }

    #[test]
    fn walmart_gateway() {
        let body = br#"{"error":[{"code":"UNAUTHORIZED.GMP_GATEWAY_API","field":"UNAUTHORIZED","description":"Unauthorized","info":"Unauthorized token or invalid service name","severity":"ERROR","category":"DATA","errorIdentifiers":{}}]}"#;
        assert_eq!(
            describe(body),
            "UNAUTHORIZED.GMP_GATEWAY_API: Unauthorized (Unauthorized token or invalid service name)"
        );
    }

    #[test]
    fn other_bodies_are_quoted() {
        assert_eq!(describe(b""), "empty body");
        assert_eq!(describe(b"  Bad Gateway\n"), "Bad Gateway");
        assert_eq!(describe(b"{\"ok\":true}"), "{\"ok\":true}");
        assert_eq!(describe(&[b'x'; 300]).len(), 203);
    }
}
