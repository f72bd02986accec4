//! eBay Sell APIs: user access tokens from a refresh token, bearer calls.
//!
//! The token: `POST <token_url>` (default
//! `<endpoint>/identity/v1/oauth2/token`) with
//! `Authorization: Basic base64(client_id:client_secret)` and the form
//! `grant_type=refresh_token&refresh_token=..&scope=..`; answered with
//! `{"access_token","expires_in":7200,"token_type":"User Access Token"}` and
//! cached in `kv` under `ebay-token`. API calls send
//! `Authorization: Bearer <token>`.
//!
//! Config: `endpoint` (default `https://api.ebay.com`), `token_url`,
//! `scope` (space-separated, default [`DEFAULT_SCOPE`]). Secrets:
//! `client_id`, `client_secret`, `refresh_token`.

use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::http::Response;

use crate::token::{self, TokenSource};
use crate::transport::{self, Call, Transport};
use crate::Provider;

/// The scope asked for unless `scope` says otherwise: reading orders.
pub const DEFAULT_SCOPE: &str = "https://api.ebay.com/oauth/api_scope/sell.fulfillment.readonly";

/// An eBay seller account. No `Debug`: it holds secrets.
pub struct Ebay {
    /// Base URL without a trailing `/`.
    pub endpoint: String,
    token_url: String,
    scope: String,
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

impl Ebay {
    /// Reads `endpoint`, `token_url`, `scope` and the secrets `client_id`,
    /// `client_secret` and `refresh_token`.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let endpoint = crate::endpoint(config, Provider::Ebay);
        Ok(Ebay {
            token_url: config
                .optional("token_url")
                .unwrap_or_else(|| format!("{endpoint}/identity/v1/oauth2/token")),
            endpoint,
            scope: config
                .optional("scope")
                .unwrap_or_else(|| DEFAULT_SCOPE.to_string()),
            client_id: config.required_secret("client_id")?,
            client_secret: config.required_secret("client_secret")?,
            refresh_token: config.required_secret("refresh_token")?,
        })
    }

    /// `GET url` with a bearer token; the response whatever its status.
    pub fn get(&self, transport: &dyn Transport, url: &str) -> Result<(Call, Response), String> {
        token::get_authorized(self, transport, url, &|call, token| {
            call.header("Authorization", &format!("Bearer {token}"))
        })
    }
}

impl TokenSource for Ebay {
    fn cache_key(&self) -> &str {
        "ebay-token"
    }

    fn owner(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.token_url, self.client_id, self.refresh_token, self.scope
        )
    }

    fn token_call(&self) -> Call {
        Call::post_form(
            &self.token_url,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &self.refresh_token),
                ("scope", &self.scope),
            ],
        )
        .header(
            "Authorization",
            &transport::basic_auth(&self.client_id, &self.client_secret),
        )
        .header("Accept", "application/json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::Fake;

    #[test]
    fn token_and_bearer() {
        let config = Config::from_pairs(&[("endpoint", "http://127.0.0.1:4/")]).with_secrets(&[
            ("client_id", "app"),
            ("client_secret", "cert"),
            ("refresh_token", "v^1.1#i^1"),
        ]);
        let e = Ebay::from_config(&config).expect("valid");
        assert_eq!(e.token_url, "http://127.0.0.1:4/identity/v1/oauth2/token");
        let fake = Fake::new(
            0,
            &[
                (
                    200,
                    r#"{"access_token":"v^1.1#t","expires_in":7200,"token_type":"User Access Token"}"#,
                ),
                (200, "{}"),
            ],
        );
        let (_, response) = e.get(&fake, "http://127.0.0.1:4/sell/x").expect("sent");
        assert_eq!(response.status(), 200);
        let calls = fake.calls();
        assert_eq!(
            calls[0].body.as_deref(),
            Some(&b"grant_type=refresh_token&refresh_token=v%5E1.1%23i%5E1&scope=https%3A%2F%2Fapi.ebay.com%2Foauth%2Fapi_scope%2Fsell.fulfillment.readonly"[..])
        );
        assert_eq!(
            calls[0].header_value("Authorization"),
            Some("Basic YXBwOmNlcnQ=")
        );
        assert_eq!(
            calls[1].header_value("Authorization"),
            Some("Bearer v^1.1#t")
        );
    }
}
