//! Access tokens that come from a refresh token which may rotate (Shopee,
//! Lazada): every refresh may answer a new refresh token, after which only
//! the new one is sure to work. Each check run is a fresh instance, so the
//! newest refresh token lives in `kv` with the access token (one
//! [`Cached`] entry, tied to a fingerprint of the configured refresh token
//! and the shop) and is stored **before** the new access token is used: a
//! run that used it without keeping its refresh token would lock every
//! later run out.
//!
//! The configured `refresh_token` secret only seeds that state, again
//! whenever it changes (the seller authorised again). A configured
//! `access_token` is the first token tried; with no refresh token it is
//! used as it is (the operator keeps it current).
//!
//! Owns the state and its order of writes; never sends anything itself: the
//! provider's refresh call is handed in, so its signing and error texts stay
//! with the provider.

use std::cell::RefCell;

use rollback_plugin_sdk::log;
use serde::Deserialize;
use serde_json::Value;

use crate::token::{self, Cached};

/// What a provider's refresh call answered.
pub struct Fresh {
    /// The new access token (not empty).
    pub access_token: String,
    /// The new refresh token; empty: the one used stays current.
    pub refresh_token: String,
    /// The access token's lifetime in seconds.
    pub expires_in_s: u64,
}

impl Fresh {
    /// The tokens of a refresh answer's JSON `body`, from `target` (e.g.
    /// `POST https://...`): `access_token` (not empty), `refresh_token`,
    /// and the lifetime in `expires_in` (Shopee: `expire_in`), else
    /// `default_lifetime_s`. The body is never quoted: it holds tokens.
    pub fn from_answer(
        provider: &str,
        target: &str,
        body: Value,
        default_lifetime_s: u64,
    ) -> Result<Fresh, String> {
        /// No `Debug`: it holds secrets.
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            #[serde(default)]
            refresh_token: String,
            #[serde(default, alias = "expire_in")]
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_value(body).map_err(|_| {
            format!("refreshing the {provider} access token: {target}: the answer has no `access_token`")
        })?;
        if answer.access_token.is_empty() {
            return Err(format!(
                "refreshing the {provider} access token: {target}: empty `access_token`"
            ));
        }
        Ok(Fresh {
            access_token: answer.access_token,
            refresh_token: answer.refresh_token,
            expires_in_s: answer.expires_in.unwrap_or(default_lifetime_s),
        })
    }
}

/// Why a call made with an access token got no data.
pub struct Failure {
    /// The whole error text.
    pub text: String,
    /// The answer refused the token itself (expired or revoked early).
    pub token_refused: bool,
}

/// Where the access token comes from.
enum Auth {
    /// Only `access_token` is configured: used as it is.
    Fixed(String),
    /// `refresh_token` is configured: it seeds the state in `kv`, and
    /// `first` (a configured `access_token`) is the first token tried.
    Refresh { seed: String, first: Option<String> },
}

/// The access token of this run. `may_refresh`: it was not issued by a
/// refresh of this run, so a refusal may mean it expired.
struct Current {
    token: String,
    may_refresh: bool,
}

/// One shop's token state. No `Debug`: it holds secrets.
pub struct Rotating {
    provider: &'static str,
    key: &'static str,
    shop: String,
    lifetime_ms: u64,
    auth: Auth,
    current: RefCell<Option<Current>>,
}

impl Rotating {
    /// The state of `provider` (its name in texts) kept under `kv` key
    /// `key`, for `shop` (what tells one shop's state from another's:
    /// endpoint and ids). `lifetime_ms`: an access token's lifetime, the
    /// most a configured `access_token` of unknown age can have left.
    pub fn new(
        provider: &'static str,
        key: &'static str,
        shop: String,
        lifetime_ms: u64,
        refresh_token: Option<String>,
        access_token: Option<String>,
    ) -> Result<Self, String> {
        let auth = match refresh_token {
            Some(seed) => Auth::Refresh {
                seed,
                first: access_token,
            },
            None => Auth::Fixed(access_token.ok_or(
                "secret `refresh_token` (or an `access_token` kept current elsewhere) is required",
            )?),
        };
        Ok(Rotating {
            provider,
            key,
            shop,
            lifetime_ms,
            auth,
            current: RefCell::new(None),
        })
    }

    /// What identifies the state in `kv`: the shop and the configured
    /// refresh token. Not the configured `access_token`: changing only that
    /// must not throw away the rotated refresh token.
    fn owner(&self, seed: &str) -> String {
        format!("{}\n{seed}", self.shop)
    }

    /// The `kv` state of the configured refresh token, if any.
    fn stored(&self, seed: &str) -> Option<Cached> {
        token::load(self.key, &self.owner(seed)).filter(|c| c.refresh_token.is_some())
    }

    /// The access token to use at `now_ms`, and whether a refusal of it may
    /// be cured by a refresh; `refresh` trades a refresh token for a new
    /// access token when none is usable.
    pub fn access_token(
        &self,
        now_ms: u64,
        refresh: &dyn Fn(&str) -> Result<Fresh, String>,
    ) -> Result<(String, bool), String> {
        let (seed, first) = match &self.auth {
            Auth::Fixed(access_token) => return Ok((access_token.clone(), false)),
            Auth::Refresh { seed, first } => (seed, first),
        };
        if let Some(current) = self.current.borrow().as_ref() {
            return Ok((current.token.clone(), current.may_refresh));
        }
        let access_token = match (self.stored(seed), first) {
            (Some(entry), _) if entry.is_fresh(now_ms) => entry.access_token,
            (Some(_), _) | (None, None) => return Ok((self.refresh(now_ms, refresh)?, false)),
            (None, Some(first)) => {
                // Its age is unknown, but it cannot have more than a new
                // token's lifetime left.
                let mut entry = Cached::new(first, now_ms, self.lifetime_ms, &self.owner(seed));
                entry.refresh_token = Some(seed.clone());
                if let Err(err) = token::store(self.key, &entry) {
                    log::warn!("could not store the {} token state: {err}", self.provider);
                }
                first.clone()
            }
        };
        self.remember(&access_token, true);
        Ok((access_token, true))
    }

    /// `send` with the access token of this run (`now` tells the time,
    /// `refresh` gets a new token). When the answer refuses a token that
    /// may have expired, the token is refreshed once and `send` called
    /// again; a second refusal is the error.
    pub fn call<T>(
        &self,
        now: &dyn Fn() -> u64,
        refresh: &dyn Fn(&str) -> Result<Fresh, String>,
        send: &dyn Fn(&str) -> Result<T, Failure>,
    ) -> Result<T, String> {
        let (access_token, may_refresh) = self.access_token(now(), refresh)?;
        match send(&access_token) {
            Err(failed) if failed.token_refused && may_refresh => {
                log::info!(
                    "{}; refreshing the stored {} access token and retrying once",
                    failed.text,
                    self.provider
                );
                let access_token = self.refresh(now(), refresh)?;
                send(&access_token).map_err(|f| f.text)
            }
            result => result.map_err(|f| f.text),
        }
    }

    fn remember(&self, access_token: &str, may_refresh: bool) {
        *self.current.borrow_mut() = Some(Current {
            token: access_token.to_string(),
            may_refresh,
        });
    }

    /// A new access token from `refresh`, called with the newest refresh
    /// token held (the one in `kv`, else the configured one). The rotated
    /// refresh token is stored before the access token is returned.
    pub fn refresh(
        &self,
        now_ms: u64,
        refresh: &dyn Fn(&str) -> Result<Fresh, String>,
    ) -> Result<String, String> {
        let Auth::Refresh { seed, .. } = &self.auth else {
            return Err(format!(
                "no `refresh_token` secret to refresh the {} access token with",
                self.provider
            ));
        };
        let used = self
            .stored(seed)
            .and_then(|c| c.refresh_token)
            .unwrap_or_else(|| seed.clone());
        let fresh = refresh(&used)?;
        let mut entry = Cached::new(
            &fresh.access_token,
            now_ms,
            fresh.expires_in_s.saturating_mul(1000),
            &self.owner(seed),
        );
        entry.refresh_token = Some(if fresh.refresh_token.is_empty() {
            used
        } else {
            fresh.refresh_token
        });
        token::store(self.key, &entry).map_err(|e| {
            format!(
                "{} issued a new refresh token that could not be kept ({e}); the old one may no longer work: set a new `refresh_token` secret from the seller's re-authorisation",
                self.provider
            )
        })?;
        log::debug!(
            "{} access token refreshed, valid for {}s",
            self.provider,
            fresh.expires_in_s
        );
        self.remember(&fresh.access_token, false);
        Ok(fresh.access_token)
    }
}
