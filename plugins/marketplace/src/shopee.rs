//! Shopee Open Platform v2: signed shop-level calls and their access token.
//!
//! Every shop-level call carries the common query parameters `partner_id`,
//! `timestamp` (Unix seconds from the host clock; Shopee refuses ones more
//! than 5 minutes off), `access_token`, `shop_id` and
//! `sign = hex(HMAC-SHA256(partner_key, partner_id + path + timestamp + access_token + shop_id))`
//! in lower-case hex, `path` being e.g. `/api/v2/order/get_order_list`.
//!
//! Shopee answers errors with HTTP 200 or 4xx and
//! `{"error":"error_auth","message":"...","request_id":"..."}`: a non-empty
//! `error` is an error whatever the status. Data is under `response`.
//!
//! Access tokens live 4 hours. With only the secret `access_token`, it is
//! used as it is (the operator keeps it current). With the secret
//! `refresh_token`, tokens come from the public API [`REFRESH_PATH`]:
//! `POST ?partner_id=..&timestamp=..&sign=..`, signed over
//! `partner_id + path + timestamp` only, with the JSON body
//! `{"refresh_token","partner_id","shop_id"}`, answered with an
//! `access_token`, its `expire_in` and a new `refresh_token`. Refresh tokens
//! rotate: the one just used stops working, so the newest is kept in `kv`
//! under [`TOKEN_KEY`] ([`crate::rotating`]). An answer refusing the
//! token ([`TOKEN_REFUSED`]: `error_auth`, `invalid_access_token` and the
//! misspelt `invalid_acceess_token`) to a token that did not come from a
//! refresh of this run refreshes once and retries once.
//!
//! Config: `endpoint` (default `https://partner.shopeemobile.com`),
//! `partner_id`, `shop_id` (required integers). Secrets: `partner_key`, and
//! `refresh_token` or `access_token` (or both).

use hmac::{Hmac, KeyInit, Mac};
use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::http::Response;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::rotating::{Failure, Fresh, Rotating};
use crate::token::hex;
use crate::transport::{self, Call, Transport};
use crate::{errors, Provider};

/// The `kv` key of the token state (refresh-token mode only).
pub const TOKEN_KEY: &str = "shopee-token";

/// The public API that trades a refresh token for a new access token.
pub const REFRESH_PATH: &str = "/api/v2/auth/access_token/get";

/// A Shopee access token's lifetime, in seconds: also the most a configured
/// `access_token` of unknown age can have left.
pub const ACCESS_TOKEN_LIFETIME_S: u64 = 14_400;

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

/// `partner_id + path + timestamp`, the text a public (not shop-level) call
/// such as [`REFRESH_PATH`] signs.
pub fn public_base_string(partner_id: u64, path: &str, timestamp: u64) -> String {
    format!("{partner_id}{path}{timestamp}")
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

/// A Shopee answer that carries no data.
struct Failed {
    /// The whole error text: call, status and Shopee's error.
    text: String,
    /// Shopee's `error: message [request_id]`, when it sent one.
    detail: Option<String>,
    /// Shopee said `error_auth`.
    auth: bool,
}

impl Failed {
    fn other(text: String) -> Failed {
        Failed {
            text,
            detail: None,
            auth: false,
        }
    }
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
    tokens: Rotating,
}

impl Shopee {
    /// Reads `endpoint`, `partner_id`, `shop_id` and the secrets
    /// `partner_key`, `refresh_token` and `access_token` (at least one of
    /// the two).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let id = |key: &str| -> Result<u64, String> {
            config
                .parse::<u64>(key)?
                .ok_or_else(|| format!("config `{key}` is required"))
        };
        let endpoint = crate::endpoint(config, Provider::Shopee);
        let partner_id = id("partner_id")?;
        let shop_id = id("shop_id")?;
        let partner_key = config.required_secret("partner_key")?;
        let tokens = Rotating::new(
            "shopee",
            TOKEN_KEY,
            format!("{endpoint}\n{partner_id}\n{shop_id}"),
            ACCESS_TOKEN_LIFETIME_S * 1000,
            config.secret("refresh_token"),
            config.secret("access_token"),
        )?;
        Ok(Shopee {
            endpoint,
            partner_id,
            shop_id,
            partner_key,
            tokens,
        })
    }

    /// The signed URL of `path` with `access_token` and the `query` pairs
    /// (values encoded here) after the common parameters.
    pub fn url(
        &self,
        path: &str,
        timestamp: u64,
        access_token: &str,
        query: &[(&str, &str)],
    ) -> String {
        let base = base_string(self.partner_id, path, timestamp, access_token, self.shop_id);
        let sign = sign(&self.partner_key, &base);
        let mut url = format!(
            "{}{path}?partner_id={}&timestamp={timestamp}&access_token={}&shop_id={}&sign={sign}",
            self.endpoint,
            self.partner_id,
            transport::encode(access_token),
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

    /// The refresh request for `refresh_token`, signed at `timestamp`.
    pub fn refresh_call(&self, refresh_token: &str, timestamp: u64) -> Call {
        let base = public_base_string(self.partner_id, REFRESH_PATH, timestamp);
        let url = format!(
            "{}{REFRESH_PATH}?partner_id={}&timestamp={timestamp}&sign={}",
            self.endpoint,
            self.partner_id,
            sign(&self.partner_key, &base)
        );
        let body = json!({
            "refresh_token": refresh_token,
            "partner_id": self.partner_id,
            "shop_id": self.shop_id,
        });
        Call::post_json(url, &body).header("Accept", "application/json")
    }

    /// `GET path` signed now, returning the answer's `response` as `T`.
    /// With a refresh token, an `error_auth` answer to a stored token
    /// refreshes it and sends the call once more.
    pub fn get<T: DeserializeOwned>(
        &self,
        transport: &dyn Transport,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, String> {
        let refresh = |used: &str| self.refresh_with(transport, used);
        let send = |token: &str| {
            self.get_with(transport, path, query, token)
                .map_err(|f| Failure {
                    text: f.text,
                    token_refused: f.auth,
                })
        };
        self.tokens.call(&|| transport.now_ms(), &refresh, &send)
    }

    fn get_with<T: DeserializeOwned>(
        &self,
        transport: &dyn Transport,
        path: &str,
        query: &[(&str, &str)],
        access_token: &str,
    ) -> Result<T, Failed> {
        let url = self.url(path, transport.now_ms() / 1000, access_token, query);
        let call = Call::get(url)
            .header("Accept", "application/json")
            .metered();
        let response = transport::send(transport, &call).map_err(Failed::other)?;
        let body = answer(&call, &response)?;
        match body.get("response") {
            Some(data) if !data.is_null() => T::deserialize(data).map_err(|e| {
                Failed::other(format!("{}: unexpected `response`: {e}", call.target()))
            }),
            _ => Err(Failed::other(format!(
                "{}: the answer has no `response`",
                call.target()
            ))),
        }
    }

    /// Trades the refresh token `used` for a new access token.
    fn refresh_with(&self, transport: &dyn Transport, used: &str) -> Result<Fresh, String> {
        let call = self.refresh_call(used, transport.now_ms() / 1000);
        let response = transport::send(transport, &call)
            .map_err(|e| format!("refreshing the shopee access token: {e}"))?;
        let body = answer(&call, &response).map_err(|failed| match failed.detail {
            Some(detail) if failed.auth || detail.to_ascii_lowercase().contains("refresh_token") => {
                format!(
                    "shopee refresh token refused ({detail}): set a new `refresh_token` secret from the seller's re-authorisation"
                )
            }
            _ => format!("refreshing the shopee access token: {}", failed.text),
        })?;
        Fresh::from_answer("shopee", &call.target(), body, ACCESS_TOKEN_LIFETIME_S)
    }
}

/// The `error` codes with which Shopee refuses an access token that expired
/// or was invalidated early; `invalid_acceess_token` is Shopee's own
/// spelling, seen beside the correct one.
pub const TOKEN_REFUSED: [&str; 3] = [
    "error_auth",
    "invalid_access_token",
    "invalid_acceess_token",
];

fn is_token_refused(code: &str) -> bool {
    TOKEN_REFUSED.contains(&code)
}

/// The JSON body of a Shopee answer with data, or why there is none: a
/// non-empty `error` (whatever the status), a non-2xx status, or a body that
/// is not JSON.
fn answer(call: &Call, response: &Response) -> Result<Value, Failed> {
    let body: Result<Value, _> = serde_json::from_slice(response.body());
    match body {
        Ok(body) if body["error"].as_str().is_some_and(|e| !e.is_empty()) => {
            let detail = errors::describe_json(&body).unwrap_or_default();
            Err(Failed {
                text: format!("{} -> HTTP {}: {detail}", call.target(), response.status()),
                auth: body["error"].as_str().is_some_and(is_token_refused),
                detail: Some(detail),
            })
        }
        _ if !response.is_success() => Err(Failed::other(transport::status_error(call, response))),
        Ok(body) => Ok(body),
        Err(e) => Err(Failed::other(format!(
            "{}: unexpected answer: {e}",
            call.target()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use rollback_plugin_sdk::kv;

    use super::*;
    use crate::token::Cached;
    use crate::transport::fake::Fake;

    const KEY: &str = "shpk4e6f5a4b7c8d9e0f1a2b3c4d5e6f7a8b";
    /// 2024-05-01T10:00:00Z.
    const T0: u64 = 1_714_557_600_000;
    const OK: &str = r#"{"error":"","message":"","request_id":"r","response":{"more":false}}"#;
    const EXPIRED: &str =
        r#"{"error":"error_auth","message":"Invalid access_token.","request_id":"x"}"#;

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

    #[test]
    fn public_signature_matches_an_independent_hmac() {
        let base = public_base_string(2_001_887, REFRESH_PATH, 1_714_557_600);
        assert_eq!(base, "2001887/api/v2/auth/access_token/get1714557600");
        // python3: hmac.new(KEY.encode(), base.encode(), hashlib.sha256).hexdigest()
        assert_eq!(
            sign(KEY, &base),
            "839e7ca3dc2dc73b76fef9e5a011f4931476673cff2d674c333a2434c8a098e9"
        );
    }

    fn config<'a>(secrets: &[(&str, &str)]) -> Config<'a> {
        let mut all = vec![("partner_key", KEY)];
        all.extend_from_slice(secrets);
        Config::from_pairs(&[
            ("partner_id", "2001887"),
            ("shop_id", " 14701711 "),
            ("endpoint", "http://127.0.0.1:7/"),
        ])
        .with_secrets(&all)
    }

    fn shop() -> Shopee {
        Shopee::from_config(&config(&[("access_token", "6c6f6e67746f6b656e")])).expect("valid")
    }

    /// A client with `secrets`: a new one per run, as the plugins make.
    fn refreshing(secrets: &[(&str, &str)]) -> Shopee {
        Shopee::from_config(&config(secrets)).expect("valid")
    }

    #[test]
    fn signed_urls() {
        assert_eq!(
            shop().url(
                "/api/v2/order/get_order_list",
                1_714_557_600,
                "6c6f6e67746f6b656e",
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
        assert_eq!(
            Shopee::from_config(&config(&[])).err(),
            Some(
                "secret `refresh_token` (or an `access_token` kept current elsewhere) is required"
                    .to_string()
            )
        );
    }

    #[test]
    fn refresh_requests_are_signed_public_calls() {
        let call = refreshing(&[("refresh_token", "seed")]).refresh_call("r|1", 1_714_557_600);
        assert_eq!(call.method, "POST");
        assert_eq!(
            call.url,
            "http://127.0.0.1:7/api/v2/auth/access_token/get?partner_id=2001887&timestamp=1714557600\
             &sign=839e7ca3dc2dc73b76fef9e5a011f4931476673cff2d674c333a2434c8a098e9"
        );
        assert_eq!(call.header_value("content-type"), Some("application/json"));
        let body: Value =
            serde_json::from_slice(call.body.as_deref().expect("body")).expect("json");
        assert_eq!(
            body,
            json!({"refresh_token": "r|1", "partner_id": 2_001_887, "shop_id": 14_701_711})
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
        // Only an access token: an error_auth answer is an error, no refresh.
        for expected in [
            "GET http://127.0.0.1:7/api/v2/x -> HTTP 200: error_auth: Invalid access_token. [request_id r2]",
            "GET http://127.0.0.1:7/api/v2/x -> HTTP 403: error_sign: Wrong sign. [request_id r3]",
            "GET http://127.0.0.1:7/api/v2/x -> HTTP 500: oops",
            "GET http://127.0.0.1:7/api/v2/x: the answer has no `response`",
        ] {
            assert_eq!(next_error().as_deref(), Some(expected));
        }
        assert!(next_error().is_some());
        assert_eq!(fake.calls().len(), 6);
        assert_eq!(kv::get(TOKEN_KEY), None, "nothing is stored");
    }

    fn refreshed(access_token: &str, refresh_token: &str) -> String {
        format!(
            r#"{{"access_token":"{access_token}","refresh_token":"{refresh_token}","expire_in":14400,"partner_id":2001887,"shop_id":14701711,"request_id":"t","error":"","message":""}}"#
        )
    }

    /// A scripted server that also notes, at each call, the refresh token
    /// `kv` held.
    struct Watched {
        fake: Fake,
        stored: RefCell<Vec<Option<String>>>,
    }

    impl Watched {
        fn new(now_ms: u64) -> Self {
            Watched {
                fake: Fake::new(now_ms, &[]),
                stored: RefCell::new(Vec::new()),
            }
        }

        /// Answers the next calls with `bodies`, all HTTP 200.
        fn answer(&self, bodies: &[&str]) {
            let mut answers = self.fake.answers.borrow_mut();
            answers.extend(bodies.iter().map(|b| (200, (*b).to_string())));
        }

        /// Per call: the refresh token sent, or the access token used.
        fn sent(&self) -> Vec<String> {
            self.fake
                .calls()
                .iter()
                .map(|call| match &call.body {
                    Some(body) => {
                        let body: Value = serde_json::from_slice(body).expect("json");
                        format!("refresh {}", body["refresh_token"].as_str().expect("token"))
                    }
                    None => {
                        let (_, rest) = call.url.split_once("access_token=").expect("token");
                        format!("use {}", rest.split('&').next().unwrap_or_default())
                    }
                })
                .collect()
        }

        fn stored(&self) -> Vec<Option<String>> {
            self.stored.borrow().clone()
        }
    }

    impl Transport for Watched {
        fn send(&self, call: &Call) -> Result<Response, rollback_plugin_sdk::http::Error> {
            self.stored.borrow_mut().push(stored_refresh_token());
            self.fake.send(call)
        }

        fn now_ms(&self) -> u64 {
            self.fake.now_ms()
        }
    }

    fn stored_refresh_token() -> Option<String> {
        kv::get_json::<Cached>(TOKEN_KEY)
            .expect("json")
            .and_then(|c| c.refresh_token)
    }

    fn get(shop: &Shopee, transport: &dyn Transport) -> Result<Value, String> {
        shop.get(transport, "/api/v2/x", &[])
    }

    #[test]
    fn the_refresh_token_rotates_through_kv() {
        let w = Watched::new(T0);
        let run = || refreshing(&[("refresh_token", "seed")]);
        w.answer(&[&refreshed("a1", "r1"), OK]);
        get(&run(), &w).expect("first run");
        assert_eq!(w.sent(), ["refresh seed", "use a1"]);
        assert_eq!(
            w.stored(),
            [None, Some("r1".to_string())],
            "the rotated refresh token is stored before the new access token is used"
        );
        // An hour later: the stored token, no refresh.
        w.fake.now.set(T0 + 3_600_000);
        w.answer(&[OK]);
        get(&run(), &w).expect("second run");
        assert_eq!(w.sent()[2..], ["use a1"]);
        // At expiry minus the margin: refreshed with the rotated token, not
        // the configured one.
        w.fake.now.set(T0 + 14_400_000 - 60_000);
        w.answer(&[&refreshed("a2", "r2"), OK]);
        get(&run(), &w).expect("third run");
        assert_eq!(w.sent()[3..], ["refresh r1", "use a2"]);
        assert_eq!(w.stored()[4], Some("r2".to_string()));
        let entry: Cached = kv::get_json(TOKEN_KEY).expect("json").expect("stored");
        assert_eq!(entry.access_token, "a2");
        assert_eq!(entry.expires_at_ms, T0 + 2 * (14_400_000 - 60_000));
    }

    #[test]
    fn error_auth_refreshes_once_and_retries_once() {
        let w = Watched::new(T0);
        let run = || refreshing(&[("refresh_token", "seed")]);
        w.answer(&[&refreshed("a1", "r1"), OK]);
        get(&run(), &w).expect("first run");
        // a1 expired early: refreshed once, the call sent again, and the
        // rest of the run uses the new token.
        let shop = run();
        w.answer(&[EXPIRED, &refreshed("a2", "r2"), OK, OK]);
        get(&shop, &w).expect("retried");
        get(&shop, &w).expect("same run");
        assert_eq!(w.sent()[2..], ["use a1", "refresh r1", "use a2", "use a2"]);
        // Refused again right after a refresh: that is the error.
        let shop = run();
        w.answer(&[EXPIRED, &refreshed("a3", "r3"), EXPIRED, EXPIRED]);
        assert_eq!(
            get(&shop, &w).err().as_deref(),
            Some("GET http://127.0.0.1:7/api/v2/x -> HTTP 200: error_auth: Invalid access_token. [request_id x]")
        );
        assert!(get(&shop, &w).is_err(), "no second refresh in a run");
        assert_eq!(w.sent()[6..], ["use a2", "refresh r2", "use a3", "use a3"]);
        assert_eq!(stored_refresh_token().as_deref(), Some("r3"));
    }

    #[test]
    fn a_configured_access_token_is_tried_first() {
        let w = Watched::new(T0);
        let secrets = [("refresh_token", "seed"), ("access_token", "first")];
        w.answer(&[OK]);
        get(&refreshing(&secrets), &w).expect("first run");
        assert_eq!(w.sent(), ["use first"]);
        let entry: Cached = kv::get_json(TOKEN_KEY).expect("json").expect("seeded");
        assert_eq!(entry.refresh_token.as_deref(), Some("seed"));
        assert_eq!(
            entry.expires_at_ms,
            T0 + 14_400_000 - 60_000,
            "4 hours at most"
        );
        // Refused: refreshed with the configured refresh token.
        w.answer(&[EXPIRED, &refreshed("a1", "r1"), OK]);
        get(&refreshing(&secrets), &w).expect("refreshed");
        assert_eq!(w.sent()[1..], ["use first", "refresh seed", "use a1"]);
        // A changed `access_token` alone keeps the state (and its rotated
        // refresh token).
        w.answer(&[OK]);
        get(
            &refreshing(&[("refresh_token", "seed"), ("access_token", "other")]),
            &w,
        )
        .expect("stored token");
        assert_eq!(w.sent()[4..], ["use a1"]);
    }

    #[test]
    fn a_new_refresh_token_secret_seeds_again() {
        let w = Watched::new(T0);
        w.answer(&[&refreshed("a1", "r1"), OK]);
        get(&refreshing(&[("refresh_token", "seed")]), &w).expect("first run");
        // The seller authorised again: the new secret replaces the state.
        w.answer(&[&refreshed("b1", "s1"), OK]);
        get(&refreshing(&[("refresh_token", "seed2")]), &w).expect("new seed");
        assert_eq!(w.sent()[2..], ["refresh seed2", "use b1"]);
        assert_eq!(stored_refresh_token().as_deref(), Some("s1"));
        // The same secret again: the stored state, rotated from it.
        w.answer(&[OK]);
        get(&refreshing(&[("refresh_token", "seed2")]), &w).expect("stored");
        assert_eq!(w.sent()[4..], ["use b1"]);
    }

    #[test]
    fn a_refused_refresh_token_says_what_to_do() {
        let refused =
            r#"{"error":"error_auth","message":"Invalid refresh_token","request_id":"q"}"#;
        let fake = Fake::new(T0, &[(403, refused)]);
        let shop = refreshing(&[("refresh_token", "seed-secret")]);
        assert_eq!(
            get(&shop, &fake).err().as_deref(),
            Some("shopee refresh token refused (error_auth: Invalid refresh_token [request_id q]): set a new `refresh_token` secret from the seller's re-authorisation")
        );
        assert_eq!(kv::get(TOKEN_KEY), None);
        let fake = Fake::new(
            T0,
            &[
                (
                    400,
                    r#"{"error":"error_param","message":"Invalid shop_id.","request_id":"p"}"#,
                ),
                (500, "busy"),
                (
                    200,
                    r#"{"error":"","message":"","refresh_token":"seed-secret-2"}"#,
                ),
                (200, r#"{"error":"","access_token":"","refresh_token":"r"}"#),
            ],
        );
        let target = "POST http://127.0.0.1:7/api/v2/auth/access_token/get";
        for expected in [
            format!("refreshing the shopee access token: {target} -> HTTP 400: error_param: Invalid shop_id. [request_id p]"),
            format!("refreshing the shopee access token: {target} -> HTTP 500: busy"),
            format!("refreshing the shopee access token: {target}: the answer has no `access_token`"),
            format!("refreshing the shopee access token: {target}: empty `access_token`"),
        ] {
            let shop = refreshing(&[("refresh_token", "seed-secret")]);
            assert_eq!(get(&shop, &fake).err(), Some(expected));
        }
        assert_eq!(kv::get(TOKEN_KEY), None);
        let shop = refreshing(&[("refresh_token", "seed-secret")]);
        let err = get(&shop, &fake).expect_err("no answer");
        assert_eq!(
            err,
            format!(
                "refreshing the shopee access token: {target}: transport error: connection refused"
            )
        );
    }
}
