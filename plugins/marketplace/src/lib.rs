//! `marketplace`: what the marketplace plugins (`order-sync-lag`,
//! `inventory-drift`, ...) share, so none of it is written twice.
//!
//! - [`amazon`]: Login with Amazon (LWA) refresh-token grant and SP-API calls
//!   with `x-amz-access-token`.
//! - [`shopee`]: Shopee Open Platform v2 request signing, its error shape and
//!   access tokens refreshed with a rotating refresh token.
//! - [`lazada`]: Lazada Open Platform request signing, its error shape and
//!   access tokens refreshed with a rotating refresh token.
//! - [`walmart`]: Walmart Marketplace client-credentials token and headers.
//! - [`ebay`]: eBay refresh-token grant and bearer calls.
//! - [`token`]: the access-token cache in `kv` (with expiry) and the "on
//!   401/403, drop the token, fetch another and retry once" rule.
//! - [`rotating`]: access tokens from a refresh token that rotates (Shopee,
//!   Lazada), the newest refresh token kept in the same `kv` entry.
//! - [`errors`]: readable texts from the providers' error bodies.
//! - [`quota`]: when the marketplace may be called next (its quota is the
//!   seller's too), after `marketplace_interval` or a 429.
//! - [`time`]: RFC 3339 parsing and formatting, durations like `1h30m`.
//! - [`transport`]: outbound calls behind a trait, so everything above can be
//!   unit-tested natively with a fake server.
//!
//! Config keys read here (all plugins use the same names): `provider`,
//! `endpoint`, `marketplace_ids`, `token_url`, `partner_id`, `shop_id`,
//! `svc_name`, `scope`, `country`; secrets `client_id`, `client_secret`,
//! `refresh_token`, `partner_key`, `access_token`, `app_key`, `app_secret`.

pub mod amazon;
pub mod ebay;
pub mod errors;
pub mod lazada;
pub mod quota;
pub mod rotating;
pub mod shopee;
pub mod time;
pub mod token;
pub mod transport;
pub mod walmart;

use std::fmt;

use rollback_plugin_sdk::config::Config;

pub use transport::{Call, Host, Transport};

/// A marketplace a plugin can talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Amazon Selling Partner API.
    Amazon,
    /// Shopee Open Platform v2.
    Shopee,
    /// Walmart Marketplace API.
    Walmart,
    /// eBay Sell APIs.
    Ebay,
    /// Lazada Open Platform.
    Lazada,
}

impl Provider {
    /// Every provider, in the order they are documented.
    pub const ALL: [Provider; 5] = [
        Provider::Amazon,
        Provider::Shopee,
        Provider::Walmart,
        Provider::Ebay,
        Provider::Lazada,
    ];

    /// The name used in config and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Amazon => "amazon",
            Provider::Shopee => "shopee",
            Provider::Walmart => "walmart",
            Provider::Ebay => "ebay",
            Provider::Lazada => "lazada",
        }
    }

    /// The production API base URL, used when `endpoint` is not set.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Provider::Amazon => "https://sellingpartnerapi-na.amazon.com",
            Provider::Shopee => "https://partner.shopeemobile.com",
            Provider::Walmart => "https://marketplace.walmartapis.com",
            Provider::Ebay => "https://api.ebay.com",
            // One gateway per country: `lazada::Lazada` takes it from
            // `country` and never falls back to this one.
            Provider::Lazada => "https://api.lazada.sg/rest",
        }
    }

    /// Parses `text` as one of `supported`; the error lists them.
    pub fn parse(text: &str, supported: &[Provider]) -> Result<Provider, String> {
        let text = text.trim();
        supported
            .iter()
            .copied()
            .find(|p| p.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                let names: Vec<&str> = supported.iter().map(|p| p.name()).collect();
                format!("expected one of {}", names.join(", "))
            })
    }

    /// The `provider` config value, one of `supported`; an error listing
    /// them when it is absent or another.
    pub fn from_config(config: &Config, supported: &[Provider]) -> Result<Provider, String> {
        config
            .parse_with("provider", |p| Provider::parse(p, supported))?
            .ok_or_else(|| {
                let names: Vec<&str> = supported.iter().map(|p| p.name()).collect();
                let list = match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} or {last}", rest.join(", "))
                    }
                    _ => names.join(""),
                };
                format!("config `provider` is required ({list})")
            })
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing {
    //! Helpers for the plugins' unit tests (cargo feature `testing`); the
    //! scripted server is [`crate::transport::fake`].

    use rollback_plugin_sdk::config::Config;

    /// Config of `pairs`, with a made-up value for every secret the
    /// providers read: `client_id` = `cid`, `client_secret` = `csecret`,
    /// `refresh_token` = `rtoken`, `partner_key` = `pkey`, `access_token` =
    /// `atoken`, `app_key` = `akey`, `app_secret` = `asecret`.
    pub fn config(pairs: &[(&str, &str)]) -> Config<'static> {
        Config::from_pairs(pairs).with_secrets(&[
            ("app_key", "akey"),
            ("app_secret", "asecret"),
            ("client_id", "cid"),
            ("client_secret", "csecret"),
            ("refresh_token", "rtoken"),
            ("partner_key", "pkey"),
            ("access_token", "atoken"),
        ])
    }
}

/// The result of a run the marketplace kept from a verdict (throttled,
/// down, credentials refused, an unreadable answer): `inconclusive`, never
/// a failure of the release, with `why` in the summary.
pub fn unreadable(provider: Provider, why: &str) -> rollback_plugin_sdk::types::CheckResult {
    rollback_plugin_sdk::types::CheckResult::inconclusive(format!(
        "{provider}: no verdict, the marketplace could not be read: {why}"
    ))
}

/// The `endpoint` config value without a trailing `/`, or `provider`'s
/// default.
pub fn endpoint(config: &Config, provider: Provider) -> String {
    config
        .optional("endpoint")
        .unwrap_or_else(|| provider.default_endpoint().to_string())
        .trim_end_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers() {
        assert_eq!(
            Provider::parse(" Amazon ", &Provider::ALL),
            Ok(Provider::Amazon)
        );
        assert_eq!(
            Provider::parse("ebay", &[Provider::Amazon, Provider::Shopee]),
            Err("expected one of amazon, shopee".to_string())
        );
        let two = [Provider::Amazon, Provider::Shopee];
        let c = Config::from_pairs(&[("provider", "shopee")]);
        assert_eq!(Provider::from_config(&c, &two), Ok(Provider::Shopee));
        let c = Config::from_pairs(&[]);
        assert_eq!(
            Provider::from_config(&c, &two),
            Err("config `provider` is required (amazon or shopee)".to_string())
        );
        assert_eq!(
            Provider::from_config(&c, &Provider::ALL),
            Err(
                "config `provider` is required (amazon, shopee, walmart, ebay or lazada)"
                    .to_string()
            )
        );
        assert_eq!(
            Provider::from_config(&c, &[Provider::Ebay]),
            Err("config `provider` is required (ebay)".to_string())
        );
        let c = Config::from_pairs(&[("endpoint", "http://127.0.0.1:9/ ")]);
        assert_eq!(endpoint(&c, Provider::Ebay), "http://127.0.0.1:9");
        let c = Config::from_pairs(&[]);
        assert_eq!(endpoint(&c, Provider::Ebay), "https://api.ebay.com");
    }
}
