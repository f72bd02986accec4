//! Access tokens: fetched from a provider's token endpoint, cached in `kv`
//! until shortly before they expire (every check run is a fresh instance, so
//! memory would not do), and replaced once when an API call answers 401 or
//! 403.
//!
//! A cached token is only reused by the same credentials: the entry stores a
//! SHA-256 fingerprint of the token URL and client id, so a changed config
//! fetches a new token at once.
//!
//! [`Cached`], [`load`] and [`store`] are the cache itself; providers whose
//! token exchange does not fit [`TokenSource`] (Shopee: a signed JSON call
//! and a refresh token that rotates) build on them, so every token shares
//! one expiry rule.

use rollback_plugin_sdk::http::Response;
use rollback_plugin_sdk::{kv, log};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::transport::{self, Call, Transport};

/// Tokens are dropped this long before they expire (at most half their
/// lifetime), so a call never starts with a token about to lapse.
pub const SAFETY_MARGIN_MS: u64 = 60_000;

/// A token as a token endpoint answers it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TokenAnswer {
    /// The bearer token.
    pub access_token: String,
    /// Its lifetime in seconds; 3600 when absent.
    #[serde(default = "default_expires_in")]
    pub expires_in: u64,
}

fn default_expires_in() -> u64 {
    3600
}

/// The `kv` entry of a cached token. No `Debug`: it holds secrets.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Cached {
    /// The access token.
    pub access_token: String,
    /// When it stops being reused: [`SAFETY_MARGIN_MS`] before it expires.
    pub expires_at_ms: u64,
    /// SHA-256 fingerprint of the credentials it belongs to.
    pub owner: String,
    /// The newest refresh token, for providers whose refresh tokens rotate
    /// (Shopee): after a refresh only this one is still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

impl Cached {
    /// An entry for `access_token`, valid for `lifetime_ms` from `now_ms`,
    /// belonging to `owner` (hashed here). It counts as expired
    /// [`SAFETY_MARGIN_MS`] early, or half its lifetime early for tokens
    /// shorter than twice that.
    pub fn new(access_token: &str, now_ms: u64, lifetime_ms: u64, owner: &str) -> Self {
        let margin = SAFETY_MARGIN_MS.min(lifetime_ms / 2);
        Cached {
            access_token: access_token.to_string(),
            expires_at_ms: now_ms.saturating_add(lifetime_ms - margin),
            owner: fingerprint(owner),
            refresh_token: None,
        }
    }

    /// Whether the access token may still be used at `now_ms`.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// The entry under `key` when it belongs to `owner` (unhashed), fresh or
/// not; an unreadable entry counts as none.
pub fn load(key: &str, owner: &str) -> Option<Cached> {
    let cached = kv::get_json::<Cached>(key).unwrap_or_else(|err| {
        log::warn!("ignoring the cached token: {err}");
        None
    })?;
    (cached.owner == fingerprint(owner)).then_some(cached)
}

/// Stores `entry` under `key`.
pub fn store(key: &str, entry: &Cached) -> Result<(), String> {
    kv::set_json(key, entry)
}

/// Something that can fetch an access token: one per provider.
pub trait TokenSource {
    /// The `kv` key the token is cached under, e.g. `lwa-token`.
    fn cache_key(&self) -> &str;

    /// Identifies the credentials (token URL and client id); hashed before
    /// it is stored.
    fn owner(&self) -> String;

    /// The token request.
    fn token_call(&self) -> Call;
}

/// A token for `source`: the cached one if still valid, else a new one
/// (then cached). The flag says whether it came from the cache.
pub fn get(source: &dyn TokenSource, transport: &dyn Transport) -> Result<(String, bool), String> {
    if let Some(c) = load(source.cache_key(), &source.owner()) {
        if c.is_fresh(transport.now_ms()) {
            return Ok((c.access_token, true));
        }
    }
    let token = fetch(source, transport)?;
    Ok((token, false))
}

/// Fetches a new token from the token endpoint and caches it.
pub fn fetch(source: &dyn TokenSource, transport: &dyn Transport) -> Result<String, String> {
    let call = source.token_call();
    let response = transport::send(transport, &call)?;
    let response = transport::expect_success(&call, response)
        .map_err(|e| format!("getting an access token: {e}"))?;
    // Not `transport::decode`: its error would quote serde's text, which can
    // include part of the body, and this body holds the token.
    let answer: TokenAnswer = serde_json::from_slice(response.body()).map_err(|_| {
        format!(
            "getting an access token: {}: the answer has no `access_token`",
            call.target()
        )
    })?;
    if answer.access_token.is_empty() {
        return Err(format!(
            "getting an access token: {}: empty `access_token`",
            call.target()
        ));
    }
    let entry = Cached::new(
        &answer.access_token,
        transport.now_ms(),
        answer.expires_in.saturating_mul(1000),
        &source.owner(),
    );
    if let Err(err) = store(source.cache_key(), &entry) {
        // Still usable for this run; the next run fetches again.
        log::warn!("could not cache the access token: {err}");
    }
    Ok(answer.access_token)
}

/// Forgets the cached token of `source`.
pub fn forget(source: &dyn TokenSource) {
    kv::delete(source.cache_key());
}

/// Sends the call `build` makes with a token. When it answers 401 or 403
/// (the token expired early, was revoked, or was refused although just
/// issued), the cache is dropped, a new token fetched and the call sent once
/// more. The response is returned whatever its status.
pub fn send_authorized(
    source: &dyn TokenSource,
    transport: &dyn Transport,
    build: &dyn Fn(&str) -> Call,
) -> Result<(Call, Response), String> {
    let (token, cached) = get(source, transport)?;
    let call = build(&token).metered();
    let response = transport::send(transport, &call)?;
    if matches!(response.status(), 401 | 403) {
        let which = if cached { "a cached" } else { "a new" };
        log::info!(
            "{} -> HTTP {} with {which} token; fetching another and retrying once",
            call.target(),
            response.status()
        );
        forget(source);
        let token = fetch(source, transport)?;
        let call = build(&token).metered();
        let response = transport::send(transport, &call)?;
        return Ok((call, response));
    }
    Ok((call, response))
}

/// `GET url` with the headers `authorize` adds for a token and then
/// `Accept: application/json`, sent by [`send_authorized`]; the response is
/// returned whatever its status.
pub fn get_authorized(
    source: &dyn TokenSource,
    transport: &dyn Transport,
    url: &str,
    authorize: &dyn Fn(Call, &str) -> Call,
) -> Result<(Call, Response), String> {
    let build = |token: &str| authorize(Call::get(url), token).header("Accept", "application/json");
    send_authorized(source, transport, &build)
}

/// Lower-case hex SHA-256 of `text`.
fn fingerprint(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::Fake;

    struct Source(&'static str);

    impl TokenSource for Source {
        fn cache_key(&self) -> &str {
            "test-token"
        }
        fn owner(&self) -> String {
            self.0.to_string()
        }
        fn token_call(&self) -> Call {
            Call::post_form("http://auth/token", &[("grant_type", "x")])
        }
    }

    const T1: &str = r#"{"access_token":"t1","token_type":"bearer","expires_in":3600}"#;
    const T2: &str = r#"{"access_token":"t2","token_type":"bearer","expires_in":3600}"#;

    #[test]
    fn caches_until_expiry_minus_margin() {
        let fake = Fake::new(1_000_000, &[(200, T1), (200, T2)]);
        let source = Source("a");
        assert_eq!(get(&source, &fake), Ok(("t1".to_string(), false)));
        fake.now.set(1_000_000 + 3_540_000 - 1);
        assert_eq!(get(&source, &fake), Ok(("t1".to_string(), true)));
        fake.now.set(1_000_000 + 3_540_000);
        assert_eq!(get(&source, &fake), Ok(("t2".to_string(), false)));
        assert_eq!(fake.calls().len(), 2);
        // Other credentials do not reuse it.
        let fake = Fake::new(1_000_000, &[(200, T1)]);
        assert_eq!(get(&Source("b"), &fake), Ok(("t1".to_string(), false)));
    }

    #[test]
    fn short_tokens_keep_half_their_life() {
        let fake = Fake::new(0, &[(200, r#"{"access_token":"s","expires_in":60}"#)]);
        fetch(&Source("a"), &fake).expect("token");
        let cached: Cached = kv::get_json("test-token").expect("json").expect("cached");
        assert_eq!(cached.expires_at_ms, 30_000);
        assert_ne!(cached.owner, "a");
        assert!(!cached.is_fresh(30_000));
        let stored = kv::get("test-token").expect("stored");
        assert!(
            !String::from_utf8_lossy(&stored).contains("refresh_token"),
            "only rotating providers store a refresh token"
        );
        assert!(load("test-token", "a").is_some());
        assert!(load("test-token", "b").is_none(), "other credentials");
    }

    #[test]
    fn retries_once_with_a_new_token() {
        let expired = r#"{"errors":[{"code":"Unauthorized","message":"Access to requested resource is denied.","details":"The access token you provided has expired."}]}"#;
        let fake = Fake::new(
            0,
            &[
                (200, T1),
                (200, "{}"),
                (403, expired),
                (200, T2),
                (200, "ok"),
            ],
        );
        let source = Source("a");
        let build = |token: &str| Call::get("http://api/x").header("x-amz-access-token", token);
        let (_, first) = send_authorized(&source, &fake, &build).expect("sent");
        assert_eq!(first.status(), 200);
        let (call, second) = send_authorized(&source, &fake, &build).expect("sent");
        assert_eq!((second.status(), second.text().as_str()), (200, "ok"));
        assert_eq!(call.header_value("x-amz-access-token"), Some("t2"));
        let calls = fake.calls();
        assert_eq!(calls.len(), 5);
        assert_eq!(calls[2].header_value("x-amz-access-token"), Some("t1"));
        assert_eq!(calls[3].url, "http://auth/token");
    }

    #[test]
    fn a_refused_new_token_is_replaced_once() {
        let fake = Fake::new(0, &[(200, T1), (401, "{}"), (200, T2), (403, "{}")]);
        let build = |token: &str| Call::get("http://api/x").header("Authorization", token);
        let (call, response) = send_authorized(&Source("a"), &fake, &build).expect("sent");
        assert_eq!(response.status(), 403, "the second refusal is the answer");
        assert_eq!(call.header_value("Authorization"), Some("t2"));
        assert_eq!(fake.calls().len(), 4);
    }

    #[test]
    fn token_errors() {
        let fake = Fake::new(
            0,
            &[
                (
                    400,
                    r#"{"error_description":"The request has an invalid grant parameter : refresh_token","error":"invalid_grant"}"#,
                ),
                (200, r#"{"token":"x"}"#),
                (200, r#"{"access_token":""}"#),
            ],
        );
        let source = Source("a");
        assert_eq!(
            fetch(&source, &fake),
            Err("getting an access token: POST http://auth/token -> HTTP 400: invalid_grant: The request has an invalid grant parameter : refresh_token".to_string())
        );
        assert_eq!(
            fetch(&source, &fake),
            Err(
                "getting an access token: POST http://auth/token: the answer has no `access_token`"
                    .to_string()
            )
        );
        assert!(fetch(&source, &fake).is_err());
        assert_eq!(kv::get("test-token"), None);
    }

    #[test]
    fn hex_digits() {
        assert_eq!(hex(&[0, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
