//! Shopee Open Platform v2: signed shop-level calls.
//!
//! Every call carries the common query parameters `partner_id`,
//! `timestamp` (Unix seconds from the host clock; Shopee refuses ones more
//! than 5 minutes off), `access_token`, `shop_id` and
//! `sign = hex(HMAC-SHA256(partner_key, partner_id + path + timestamp + access_token + shop_id))`
//! in lower-case hex, `path` being e.g. `/api/v2/order/get_order_list`.
//!
//! Shopee answers errors with HTTP 200 or 4xx and
//! `{"error":"error_auth","message":"...","request_id":"..."}`: a non-empty
//! `error` is an error whatever the status. Data is under `response`.
//!
//! Config: `endpoint` (default `https://partner.shopeemobile.com`),
//! `partner_id`, `shop_id` (required integers). Secrets: `partner_key`,
//! `access_token`. Shopee access tokens live 4 hours; refreshing them (with
//! the refresh token) is left to the operator's secret management.

use hmac::{Hmac, KeyInit, Mac};
use rollback_plugin_sdk::config::Config;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::Sha256;

use crate::token::hex;
use crate::transport::{self, Call, Transport};
use crate::{errors, Provider};

/// `partner_id + path + timestamp + access_token + shop_id`, the text a
/// shop-level call signs.
pub fn base_string(
    partner_id: u64,
    path: &str,
    timestamp: u64,
    access_token: &str,
    shop_id: u64,
) -> String {
    format!("{partner_id}{path}{timestamp}{access_token}{shop_id}")
}

/// Lower-case hex HMAC-SHA256 of `base` keyed with `partner_key`.
pub fn sign(partner_key: &str, base: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(partner_key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(base.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// A Shopee shop. No `Debug`: it holds secrets.
pub struct Shopee {
    /// Base URL without a trailing `/`.
    pub endpoint: String,
    /// The app's partner id.
    pub partner_id: u64,
    /// The shop's id.
    pub shop_id: u64,
    partner_key: String,
    access_token: String,
}

impl Shopee {
    /// Reads `endpoint`, `partner_id`, `shop_id` and the secrets
    /// `partner_key` and `access_token`.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let id = |key: &str| -> Result<u64, String> {
            config
                .parse::<u64>(key)?
                .ok_or_else(|| format!("config `{key}` is required"))
        };
        Ok(Shopee {
            endpoint: crate::endpoint(config, Provider::Shopee),
            partner_id: id("partner_id")?,
            shop_id: id("shop_id")?,
            partner_key: config.required_secret("partner_key")?,
            access_token: config.required_secret("access_token")?,
        })
    }

    /// The signed URL of `path` with the `query` pairs (values encoded here)
    /// after the common parameters.
    pub fn url(&self, path: &str, timestamp: u64, query: &[(&str, &str)]) -> String {
        let base = base_string(
            self.partner_id,
            path,
            timestamp,
            &self.access_token,
            self.shop_id,
        );
        let sign = sign(&self.partner_key, &base);
        let mut url = format!(
            "{}{path}?partner_id={}&timestamp={timestamp}&access_token={}&shop_id={}&sign={sign}",
            self.endpoint,
            self.partner_id,
            transport::encode(&self.access_token),
            self.shop_id,
        );
        for (key, value) in query {
            url.push('&');
            url.push_str(key);
            url.push('=');
            url.push_str(&transport::encode(value));
        }
        url
    }

    /// `GET path` signed now, returning the answer's `response` as `T`.
    pub fn get<T: DeserializeOwned>(
        &self,
        transport: &dyn Transport,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, String> {
        let call = Call::get(self.url(path, transport.now_ms() / 1000, query))
            .header("Accept", "application/json");
        let response = transport::send(transport, &call)?;
        let body: Result<Value, _> = serde_json::from_slice(response.body());
        let body = match body {
            Ok(body) if body["error"].as_str().is_some_and(|e| !e.is_empty()) => {
                return Err(format!(
                    "{} -> HTTP {}: {}",
                    call.target(),
                    response.status(),
                    errors::describe_json(&body).unwrap_or_default()
                ));
            }
            _ if !response.is_success() => {
                return Err(transport::status_error(&call, &response));
            }
            Ok(body) => body,
            Err(e) => return Err(format!("{}: unexpected answer: {e}", call.target())),
        };
        match body.get("response") {
            Some(data) if !data.is_null() => T::deserialize(data)
                .map_err(|e| format!("{}: unexpected `response`: {e}", call.target())),
            _ => Err(format!("{}: the answer has no `response`", call.target())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::Fake;

    const KEY: &str = "shpk4e6f5a4b7c8d9e0f1a2b3c4d5e6f7a8b";

    #[test]
    fn signature_matches_an_independent_hmac() {
        let base = base_string(
            2_001_887,
            "/api/v2/order/get_order_list",
            1_714_557_600,
            "6c6f6e67746f6b656e",
            14_701_711,
        );
        assert_eq!(
            base,
            "2001887/api/v2/order/get_order_list17145576006c6f6e67746f6b656e14701711"
        );
        // python3: hmac.new(KEY.encode(), base.encode(), hashlib.sha256).hexdigest()
        assert_eq!(
            sign(KEY, &base),
            "68e8d30584eae150420f969ead474988fa8db17662cc8d9292fd0e118727060f"
        );
    }

    fn shop() -> Shopee {
        let config = Config::from_pairs(&[
            ("partner_id", "2001887"),
            ("shop_id", " 14701711 "),
            ("endpoint", "http://127.0.0.1:7/"),
        ])
        .with_secrets(&[("partner_key", KEY), ("access_token", "6c6f6e67746f6b656e")]);
        Shopee::from_config(&config).expect("valid")
    }

    #[test]
    fn signed_urls() {
        assert_eq!(
            shop().url(
                "/api/v2/order/get_order_list",
                1_714_557_600,
                &[("cursor", ""), ("time_range_field", "update_time")]
            ),
            "http://127.0.0.1:7/api/v2/order/get_order_list?partner_id=2001887&timestamp=1714557600\
             &access_token=6c6f6e67746f6b656e&shop_id=14701711\
             &sign=68e8d30584eae150420f969ead474988fa8db17662cc8d9292fd0e118727060f\
             &cursor=&time_range_field=update_time"
        );
        let err = Shopee::from_config(&Config::from_pairs(&[("partner_id", "x")]))
            .err()
            .expect("invalid");
        assert!(err.starts_with("config `partner_id` = `x`: "), "{err}");
        assert_eq!(
            Shopee::from_config(&Config::from_pairs(&[("partner_id", "1")])).err(),
            Some("config `shop_id` is required".to_string())
        );
    }

    #[test]
    fn answers_and_errors() {
        let fake = Fake::new(
            1_714_557_600_999,
            &[
                (
                    200,
                    r#"{"error":"","message":"","request_id":"r1","response":{"more":false}}"#,
                ),
                (
                    200,
                    r#"{"error":"error_auth","message":"Invalid access_token.","request_id":"r2"}"#,
                ),
                (
                    403,
                    r#"{"error":"error_sign","message":"Wrong sign.","request_id":"r3"}"#,
                ),
                (500, "oops"),
                (200, r#"{"error":"","request_id":"r4"}"#),
                (200, "not json"),
            ],
        );
        let s = shop();
        let v: Value = s.get(&fake, "/api/v2/x", &[]).expect("ok");
        assert_eq!(v["more"], false);
        assert!(fake.calls()[0].url.contains("&timestamp=1714557600&"));
        let next_error = || s.get::<Value>(&fake, "/api/v2/x", &[]).err();
        for expected in [
            "GET http://127.0.0.1:7/api/v2/x -> HTTP 200: error_auth: Invalid access_token. [request_id r2]",
            "GET http://127.0.0.1:7/api/v2/x -> HTTP 403: error_sign: Wrong sign. [request_id r3]",
            "GET http://127.0.0.1:7/api/v2/x -> HTTP 500: oops",
            "GET http://127.0.0.1:7/api/v2/x: the answer has no `response`",
        ] {
            assert_eq!(next_error().as_deref(), Some(expected));
        }
        assert!(next_error().is_some());
    }
}
