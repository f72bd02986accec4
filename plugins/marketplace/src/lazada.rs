//! Lazada Open Platform: signed calls to a country's gateway and their
//! access token.
//!
//! Every call carries the common parameters `app_key`, `timestamp` (Unix
//! milliseconds from the host clock; Lazada refuses ones more than 7,200 s
//! off), `sign_method=sha256`, `access_token` (API calls) and `sign` =
//! upper-case hex HMAC-SHA256, keyed with the app secret, of the API path
//! followed by every other parameter as `key` + `value`, sorted by key:
//! `/orders/getaccess_token..app_key..limit100...`. Values are signed as
//! they are and percent-encoded in the URL.
//!
//! Gateways, one per country: `https://api.lazada.<tld>/rest` ([`GATEWAYS`];
//! config `country`, or `endpoint` for another), the API path appended.
//! Lazada answers errors with HTTP 200 and a non-zero `code`
//! (`{"type":"ISV","code":"IllegalAccessToken","message":"..","request_id":".."}`;
//! `type` is `ISV` for the caller's mistakes, `ISP` for Lazada's backend,
//! `SYSTEM` for its gateway); data is under `data`.
//!
//! Access tokens come from the seller's authorisation (30 days for a live
//! app, 7 for one in test) and are renewed at [`DEFAULT_TOKEN_URL`]
//! (`token_url`): the same signed parameters with `refresh_token` instead of
//! `access_token` (signed over [`REFRESH_PATH`]), answered with a new
//! `access_token`, `expires_in` and a `refresh_token` that replaces the one
//! used: the state is kept in `kv` under [`TOKEN_KEY`]
//! ([`crate::rotating`]). An answer refusing the token
//! ([`TOKEN_REFUSED`]) to one that did not come from a refresh of this run
//! refreshes once and retries once. A throttling answer ([`THROTTLED`],
//! `ApiCallLimit`) sets when the next call may go ([`crate::quota`]): the
//! ban it names (`This ban will last N seconds`), else a minute.
//!
//! Config: `country` (`sg`, `my`, `th`, `ph`, `vn`, `id`) or `endpoint`,
//! `token_url` (or `auth_endpoint`, the auth host's base:
//! `https://auth.lazada.com/rest`). Secrets: `app_key`, `app_secret`, and `refresh_token` or
//! `access_token` (or both).

use hmac::{Hmac, KeyInit, Mac};
use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::http::Response;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::Sha256;

use crate::rotating::{Failure, Fresh, Rotating};
use crate::token::hex;
use crate::transport::{self, encode, Call, Transport};
use crate::{errors, quota};

/// The `kv` key of the token state.
pub const TOKEN_KEY: &str = "lazada-token";

/// The API that trades a refresh token for a new access token.
pub const REFRESH_PATH: &str = "/auth/token/refresh";

/// Where refreshes go unless `token_url` says otherwise.
pub const DEFAULT_TOKEN_URL: &str = "https://auth.lazada.com/rest/auth/token/refresh";

/// A live app's access-token lifetime (30 days): the most a configured
/// `access_token` of unknown age can have left.
pub const ACCESS_TOKEN_LIFETIME_S: u64 = 30 * 86_400;

/// The seller-facing gateway of each country Lazada serves.
pub const GATEWAYS: [(&str, &str); 6] = [
    ("sg", "https://api.lazada.sg/rest"),
    ("my", "https://api.lazada.com.my/rest"),
    ("th", "https://api.lazada.co.th/rest"),
    ("ph", "https://api.lazada.com.ph/rest"),
    ("vn", "https://api.lazada.vn/rest"),
    ("id", "https://api.lazada.co.id/rest"),
];

/// The `code` with which Lazada refuses an access token that expired or
/// was revoked ("The specified access token is invalid or expired").
pub const TOKEN_REFUSED: [&str; 1] = ["IllegalAccessToken"];

/// The `code`s with which Lazada throttles a caller.
pub const THROTTLED: [&str; 2] = ["ApiCallLimit", "AppCallLimit"];

/// `path` followed by `key` + `value` of every pair, sorted by key: the
/// text a call signs.
pub fn base_string(path: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut base = path.to_string();
    for (key, value) in sorted {
        base.push_str(key);
        base.push_str(value);
    }
    base
}

/// Upper-case hex HMAC-SHA256 of `base` keyed with `app_secret`.
pub fn sign(app_secret: &str, base: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(base.as_bytes());
    hex(&mac.finalize().into_bytes()).to_ascii_uppercase()
}

/// A Lazada answer that carries no data.
struct Failed {
    /// The whole error text: call, status and Lazada's error.
    text: String,
    /// Lazada's `code`, when it sent one.
    code: Option<String>,
}

impl Failed {
    /// A failure without Lazada's own code (transport, status, shape).
    fn other(text: String) -> Failed {
        Failed { text, code: None }
    }
}

/// A Lazada seller. No `Debug`: it holds secrets.
pub struct Lazada {
    /// The gateway, e.g. `https://api.lazada.sg/rest`, without a trailing `/`.
    pub endpoint: String,
    /// Where refresh requests go.
    pub token_url: String,
    app_key: String,
    app_secret: String,
    tokens: Rotating,
}

impl Lazada {
    /// Reads `country` or `endpoint`, `token_url` and the secrets
    /// `app_key`, `app_secret`, `refresh_token` and `access_token` (at
    /// least one of the two).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let country = config.parse_with("country", |c| {
            let c = c.trim().to_ascii_lowercase();
            GATEWAYS
                .iter()
                .find(|(code, _)| *code == c)
                .map(|(_, gateway)| (*gateway).to_string())
                .ok_or_else(|| {
                    let codes: Vec<&str> = GATEWAYS.iter().map(|(code, _)| *code).collect();
                    format!("expected one of {}", codes.join(", "))
                })
        })?;
        let endpoint = match (config.optional("endpoint"), country) {
            (Some(endpoint), _) => endpoint,
            (None, Some(gateway)) => gateway,
            (None, None) => {
                return Err(
                    "config `country` (sg, my, th, ph, vn or id) or `endpoint` is required"
                        .to_string(),
                )
            }
        };
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        // `auth_endpoint`: the auth host's `/rest` base, as the gateways'.
        let token_url = match (
            config.optional("token_url"),
            config.optional("auth_endpoint"),
        ) {
            (Some(url), _) => url,
            (None, Some(base)) => format!("{}{REFRESH_PATH}", base.trim().trim_end_matches('/')),
            (None, None) => DEFAULT_TOKEN_URL.to_string(),
        };
        let app_key = config.required_secret("app_key")?;
        let app_secret = config.required_secret("app_secret")?;
        let tokens = Rotating::new(
            "lazada",
            TOKEN_KEY,
            format!("{endpoint}\n{token_url}\n{app_key}"),
            ACCESS_TOKEN_LIFETIME_S * 1000,
            config.secret("refresh_token"),
            config.secret("access_token"),
        )?;
        Ok(Lazada {
            endpoint,
            token_url,
            app_key,
            app_secret,
            tokens,
        })
    }

    /// The query of a call to `path`: the common parameters (`token` is
    /// `("access_token", ..)` or `("refresh_token", ..)`), `params`, and
    /// `sign`, values percent-encoded.
    fn signed_query(
        &self,
        path: &str,
        timestamp_ms: u64,
        token: (&str, &str),
        params: &[(&str, &str)],
    ) -> String {
        let timestamp = timestamp_ms.to_string();
        let mut all = vec![
            ("app_key", self.app_key.as_str()),
            ("timestamp", timestamp.as_str()),
            ("sign_method", "sha256"),
            token,
        ];
        all.extend_from_slice(params);
        let sign = sign(&self.app_secret, &base_string(path, &all));
        let mut query: Vec<String> = all
            .iter()
            .map(|(key, value)| format!("{key}={}", encode(value)))
            .collect();
        query.push(format!("sign={sign}"));
        query.join("&")
    }

    /// The signed URL of API `path` with `access_token` and `params`.
    pub fn url(
        &self,
        path: &str,
        timestamp_ms: u64,
        access_token: &str,
        params: &[(&str, &str)],
    ) -> String {
        let query = self.signed_query(path, timestamp_ms, ("access_token", access_token), params);
        format!("{}{path}?{query}", self.endpoint)
    }

    /// The refresh request for `refresh_token`, signed at `timestamp_ms`:
    /// a form `POST` to `token_url`.
    pub fn refresh_call(&self, refresh_token: &str, timestamp_ms: u64) -> Call {
        let form = self.signed_query(
            REFRESH_PATH,
            timestamp_ms,
            ("refresh_token", refresh_token),
            &[],
        );
        Call {
            body: Some(form.into_bytes()),
            ..Call::post_form(&self.token_url, &[])
        }
        .header("Accept", "application/json")
    }

    /// `GET path` signed now, returning the answer's `data` as `T`. An
    /// `IllegalAccessToken` answer to a token that may have expired
    /// refreshes it and sends the call once more.
    pub fn get<T: DeserializeOwned>(
        &self,
        transport: &dyn Transport,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<T, String> {
        let refresh = |used: &str| self.refresh_with(transport, used);
        let send = |token: &str| {
            self.get_with(transport, path, params, token)
                .map_err(|f| Failure {
                    token_refused: f.code.as_deref().is_some_and(is_token_refused),
                    text: f.text,
                })
        };
        self.tokens.call(&|| transport.now_ms(), &refresh, &send)
    }

    fn get_with<T: DeserializeOwned>(
        &self,
        transport: &dyn Transport,
        path: &str,
        params: &[(&str, &str)],
        access_token: &str,
    ) -> Result<T, Failed> {
        let url = self.url(path, transport.now_ms(), access_token, params);
        let call = Call::get(url)
            .header("Accept", "application/json")
            .metered();
        let response = transport::send(transport, &call).map_err(Failed::other)?;
        let body = answer(&call, &response).inspect_err(|failed| {
            if failed
                .code
                .as_deref()
                .is_some_and(|c| THROTTLED.contains(&c))
            {
                let (wait, why) = ban(&response);
                quota::throttled_for(transport.now_ms(), wait, why);
            }
        })?;
        match body.get("data") {
            Some(data) if !data.is_null() => T::deserialize(data)
                .map_err(|e| Failed::other(format!("{}: unexpected `data`: {e}", call.target()))),
            _ => Err(Failed::other(format!(
                "{}: the answer has no `data`",
                call.target()
            ))),
        }
    }

    /// Trades the refresh token `used` for a new access token.
    fn refresh_with(&self, transport: &dyn Transport, used: &str) -> Result<Fresh, String> {
        let call = self.refresh_call(used, transport.now_ms());
        let response = transport::send(transport, &call)
            .map_err(|e| format!("refreshing the lazada access token: {e}"))?;
        let body = answer(&call, &response).map_err(|failed| match &failed.code {
            Some(code) if code.to_ascii_lowercase().contains("refresh") => format!(
                "lazada refresh token refused ({}): set a new `refresh_token` secret from the seller's re-authorisation",
                errors::describe(response.body())
            ),
            _ => format!("refreshing the lazada access token: {}", failed.text),
        })?;
        Fresh::from_answer("lazada", &call.target(), body, ACCESS_TOKEN_LIFETIME_S)
    }
}

fn is_token_refused(code: &str) -> bool {
    TOKEN_REFUSED.contains(&code)
}

/// `code` as Lazada sends it: `"0"`, `0` or an error word.
fn code_of(body: &Value) -> Option<String> {
    match &body["code"] {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The JSON body of a Lazada answer with data, or why there is none: a
/// `code` other than `0` (whatever the status), a non-2xx status, or a body
/// that is not JSON.
fn answer(call: &Call, response: &Response) -> Result<Value, Failed> {
    let body: Result<Value, _> = serde_json::from_slice(response.body());
    match body {
        Ok(body) if code_of(&body).is_some_and(|c| c != "0") => {
            let detail = errors::describe_json(&body).unwrap_or_default();
            let kind = match body["type"].as_str() {
                Some(kind) if !kind.is_empty() => format!(" ({kind})"),
                _ => String::new(),
            };
            Err(Failed {
                text: format!(
                    "{} -> HTTP {}: {detail}{kind}",
                    call.target(),
                    response.status()
                ),
                code: code_of(&body),
            })
        }
        _ if !response.is_success() => Err(Failed::other(transport::status_error(call, response))),
        Ok(body) if code_of(&body).is_none() => Err(Failed::other(format!(
            "{}: the answer has no `code`",
            call.target()
        ))),
        Ok(body) => Ok(body),
        Err(e) => Err(Failed::other(format!(
            "{}: unexpected answer: {e}",
            call.target()
        ))),
    }
}

/// How long a throttling answer bans the caller: the seconds its message
/// names ("This ban will last 12 seconds"), else a minute; capped at
/// [`quota::MAX_WAIT_MS`].
fn ban(response: &Response) -> (u64, String) {
    let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    let code = code_of(&body).unwrap_or_default();
    let message = body["message"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let seconds = message.split_once("last").and_then(|(_, rest)| {
        let rest = rest.trim_start();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u64>().ok()
    });
    match seconds {
        Some(s) => (
            s.saturating_mul(1000).clamp(1000, quota::MAX_WAIT_MS),
            format!("throttled ({code}, a ban of {s} s)"),
        ),
        None => (
            quota::DEFAULT_THROTTLE_WAIT_MS,
            format!("throttled ({code})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use rollback_plugin_sdk::kv;

    use super::*;
    use crate::token::Cached;
    use crate::transport::fake::Fake;

    const SECRET: &str = "lzd7Qm2Xc9Vb4Nn1Rt6Yu3Ii8Oo5Pp0A";
    /// 2024-05-01T10:00:00Z.
    const T0: u64 = 1_714_557_600_000;
    const OK: &str =
        r#"{"code":"0","data":{"count":"0","countTotal":0,"orders":[]},"request_id":"r"}"#;
    const EXPIRED: &str = r#"{"type":"ISV","code":"IllegalAccessToken","message":"The specified access token is invalid or expired","request_id":"x"}"#;

    fn config<'a>(pairs: &[(&'a str, &'a str)], secrets: &[(&str, &str)]) -> Config<'a> {
        let mut all = vec![("app_key", "120001"), ("app_secret", SECRET)];
        all.extend_from_slice(secrets);
        let mut keys = vec![("endpoint", "http://127.0.0.1:7/rest/")];
        keys.extend_from_slice(pairs);
        Config::from_pairs(&keys).with_secrets(&all)
    }

    fn seller(secrets: &[(&str, &str)]) -> Lazada {
        Lazada::from_config(&config(&[], secrets)).expect("valid")
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        let base = base_string(
            "/orders/get",
            &[
                ("timestamp", "1714557600000"),
                ("app_key", "120001"),
                ("sign_method", "sha256"),
                ("access_token", "50000601a2b"),
                ("update_after", "2024-05-01T09:00:00+00:00"),
                ("limit", "100"),
            ],
        );
        assert_eq!(
            base,
            "/orders/getaccess_token50000601a2bapp_key120001limit100sign_methodsha256\
             timestamp1714557600000update_after2024-05-01T09:00:00+00:00"
        );
        // python3: hmac.new(SECRET.encode(), base.encode(), hashlib.sha256).hexdigest().upper()
        assert_eq!(
            sign(SECRET, &base),
            "1259E46165B7FB6F743E3FF752525DC9182C4E415D56AC330A4E509862374312"
        );
    }

    #[test]
    fn signed_urls_and_config() {
        let s = seller(&[("access_token", "50000601a2b")]);
        let url = s.url(
            "/orders/get",
            T0,
            "50000601a2b",
            &[
                ("update_after", "2024-05-01T09:00:00+00:00"),
                ("limit", "100"),
            ],
        );
        let base = base_string(
            "/orders/get",
            &[
                ("app_key", "120001"),
                ("timestamp", "1714557600000"),
                ("sign_method", "sha256"),
                ("access_token", "50000601a2b"),
                ("update_after", "2024-05-01T09:00:00+00:00"),
                ("limit", "100"),
            ],
        );
        assert_eq!(
            url,
            format!(
                "http://127.0.0.1:7/rest/orders/get?app_key=120001&timestamp=1714557600000\
                 &sign_method=sha256&access_token=50000601a2b\
                 &update_after=2024-05-01T09%3A00%3A00%2B00%3A00&limit=100&sign={}",
                sign(SECRET, &base)
            )
        );
        let c = Config::from_pairs(&[("country", " TH ")]).with_secrets(&[
            ("app_key", "1"),
            ("app_secret", "s"),
            ("access_token", "a"),
        ]);
        let th = Lazada::from_config(&c).expect("valid");
        assert_eq!(th.endpoint, "https://api.lazada.co.th/rest");
        assert_eq!(th.token_url, DEFAULT_TOKEN_URL);
        let c = Config::from_pairs(&[
            ("country", "my"),
            ("auth_endpoint", "http://127.0.0.1:9/rest/"),
        ])
        .with_secrets(&[("app_key", "1"), ("app_secret", "s"), ("access_token", "a")]);
        let my = Lazada::from_config(&c).expect("valid");
        assert_eq!(my.token_url, "http://127.0.0.1:9/rest/auth/token/refresh");
        let err = |pairs: &[(&str, &str)], secrets: &[(&str, &str)]| {
            Lazada::from_config(&Config::from_pairs(pairs).with_secrets(secrets)).err()
        };
        let keys = [("app_key", "1"), ("app_secret", "s"), ("access_token", "a")];
        assert_eq!(
            err(&[], &keys).as_deref(),
            Some("config `country` (sg, my, th, ph, vn or id) or `endpoint` is required")
        );
        assert_eq!(
            err(&[("country", "uk")], &keys).as_deref(),
            Some("config `country` = `uk`: expected one of sg, my, th, ph, vn, id")
        );
        assert_eq!(
            err(&[("country", "sg")], &keys[1..]).as_deref(),
            Some("secret `app_key` is required")
        );
        assert_eq!(
            err(&[("country", "sg")], &keys[..2]).as_deref(),
            Some(
                "secret `refresh_token` (or an `access_token` kept current elsewhere) is required"
            )
        );
    }

    #[test]
    fn refresh_requests_are_signed_forms() {
        let call = seller(&[("refresh_token", "50001r")]).refresh_call("50001r", T0);
        assert_eq!(call.method, "POST");
        assert_eq!(call.url, DEFAULT_TOKEN_URL);
        assert_eq!(
            call.header_value("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let body = String::from_utf8(call.body.clone().expect("body")).expect("utf-8");
        let base = base_string(
            REFRESH_PATH,
            &[
                ("app_key", "120001"),
                ("timestamp", "1714557600000"),
                ("sign_method", "sha256"),
                ("refresh_token", "50001r"),
            ],
        );
        assert_eq!(
            body,
            format!(
                "app_key=120001&timestamp=1714557600000&sign_method=sha256&refresh_token=50001r&sign={}",
                sign(SECRET, &base)
            )
        );
    }

    #[test]
    fn answers_and_errors() {
        let fake = Fake::new(
            T0,
            &[
                (200, OK),
                (200, EXPIRED),
                (
                    200,
                    r#"{"type":"ISP","code":"InternalError","message":"The request processing has failed due to some unknown error.","request_id":"r3"}"#,
                ),
                (500, "oops"),
                (200, r#"{"code":"0","request_id":"r4"}"#),
                (200, r#"{"data":{}}"#),
                (200, "not json"),
            ],
        );
        let s = seller(&[("access_token", "50000601a2b")]);
        let v: Value = s.get(&fake, "/orders/get", &[]).expect("ok");
        assert_eq!(v["countTotal"], 0);
        assert!(fake.calls()[0].url.contains("&timestamp=1714557600000&"));
        let next_error = || s.get::<Value>(&fake, "/orders/get", &[]).err();
        let target = "GET http://127.0.0.1:7/rest/orders/get";
        for expected in [
            format!("{target} -> HTTP 200: IllegalAccessToken: The specified access token is invalid or expired [request_id x] (ISV)"),
            format!("{target} -> HTTP 200: InternalError: The request processing has failed due to some unknown error. [request_id r3] (ISP)"),
            format!("{target} -> HTTP 500: oops"),
            format!("{target}: the answer has no `data`"),
            format!("{target}: the answer has no `code`"),
        ] {
            assert_eq!(next_error(), Some(expected));
        }
        assert!(next_error().is_some());
        assert_eq!(fake.calls().len(), 7, "only an access token: no refresh");
        assert_eq!(kv::get(TOKEN_KEY), None, "nothing is stored");
        assert_eq!(quota::next(), None, "nothing throttled");
    }

    #[test]
    fn a_ban_sets_the_next_allowed_call() {
        let limited = r#"{"type":"ISV","code":"ApiCallLimit","message":"The request has exceeded the limit of the api. This ban will last 12 seconds","request_id":"b"}"#;
        let fake = Fake::new(T0, &[(200, limited)]);
        let s = seller(&[("access_token", "a")]);
        let err = s
            .get::<Value>(&fake, "/orders/get", &[])
            .expect_err("throttled");
        assert!(err.contains("ApiCallLimit"), "{err}");
        let next = quota::next().expect("scheduled");
        assert_eq!(next.at_ms, T0 + 12_000);
        assert!(next.throttled);
        assert_eq!(next.why, "throttled (ApiCallLimit, a ban of 12 s)");
        quota::forget();
        let fake = Fake::new(
            T0,
            &[(
                200,
                r#"{"code":"ApiCallLimit","message":"Too many requests"}"#,
            )],
        );
        assert!(s.get::<Value>(&fake, "/orders/get", &[]).is_err());
        let next = quota::next().expect("scheduled");
        assert_eq!(next.at_ms, T0 + quota::DEFAULT_THROTTLE_WAIT_MS);
        assert_eq!(next.why, "throttled (ApiCallLimit)");
        quota::forget();
    }

    fn refreshed(access_token: &str, refresh_token: &str) -> String {
        format!(
            r#"{{"access_token":"{access_token}","refresh_token":"{refresh_token}","expires_in":604800,"refresh_expires_in":1209600,"country":"sg","account_platform":"seller_center","code":"0","request_id":"t"}}"#
        )
    }

    fn sent(fake: &Fake) -> Vec<String> {
        fake.calls()
            .iter()
            .map(|call| match &call.body {
                Some(body) => {
                    let body = String::from_utf8_lossy(body).to_string();
                    let (_, rest) = body.split_once("refresh_token=").expect("token");
                    format!("refresh {}", rest.split('&').next().unwrap_or_default())
                }
                None => {
                    let (_, rest) = call.url.split_once("access_token=").expect("token");
                    format!("use {}", rest.split('&').next().unwrap_or_default())
                }
            })
            .collect()
    }

    #[test]
    fn illegal_access_token_refreshes_once_and_the_refresh_token_rotates() {
        let fake = Fake::new(T0, &[]);
        let answer = |bodies: &[&str]| {
            let mut answers = fake.answers.borrow_mut();
            answers.extend(bodies.iter().map(|b| (200, (*b).to_string())));
        };
        let run = || seller(&[("refresh_token", "seed")]);
        answer(&[&refreshed("a1", "r1"), OK]);
        run()
            .get::<Value>(&fake, "/orders/get", &[])
            .expect("first run");
        assert_eq!(sent(&fake), ["refresh seed", "use a1"]);
        let entry: Cached = kv::get_json(TOKEN_KEY).expect("json").expect("stored");
        assert_eq!(entry.refresh_token.as_deref(), Some("r1"));
        assert_eq!(entry.expires_at_ms, T0 + 604_800_000 - 60_000);
        // Revoked early: refreshed with the rotated token, sent again.
        answer(&[EXPIRED, &refreshed("a2", "r2"), OK]);
        run()
            .get::<Value>(&fake, "/orders/get", &[])
            .expect("retried");
        assert_eq!(sent(&fake)[2..], ["use a1", "refresh r1", "use a2"]);
        // Refused right after a refresh: that is the error, no loop.
        answer(&[EXPIRED, &refreshed("a3", "r3"), EXPIRED]);
        let err = run()
            .get::<Value>(&fake, "/orders/get", &[])
            .expect_err("refused");
        assert!(err.contains("IllegalAccessToken"), "{err}");
        assert_eq!(fake.calls().len(), 8);
    }

    #[test]
    fn a_refused_refresh_token_says_what_to_do() {
        let fake = Fake::new(
            T0,
            &[
                (
                    200,
                    r#"{"type":"ISV","code":"IllegalRefreshToken","message":"The specified refresh token is invalid or expired","request_id":"q"}"#,
                ),
                (200, r#"{"code":"0","access_token":"","refresh_token":"r"}"#),
            ],
        );
        let s = seller(&[("refresh_token", "seed-secret")]);
        assert_eq!(
            s.get::<Value>(&fake, "/orders/get", &[]).err().as_deref(),
            Some("lazada refresh token refused (IllegalRefreshToken: The specified refresh token is invalid or expired [request_id q]): set a new `refresh_token` secret from the seller's re-authorisation")
        );
        let s = seller(&[("refresh_token", "seed-secret")]);
        assert_eq!(
            s.get::<Value>(&fake, "/orders/get", &[]).err().as_deref(),
            Some(
                "refreshing the lazada access token: POST https://auth.lazada.com/rest/auth/token/refresh: empty `access_token`"
            )
        );
        assert_eq!(kv::get(TOKEN_KEY), None);
    }
}
