//! Amazon Selling Partner API: Login with Amazon (LWA) tokens and calls.
//!
//! The token comes from a refresh-token grant: `POST <token_url>` with the
//! form `grant_type=refresh_token&refresh_token=..&client_id=..&client_secret=..`,
//! answered with `{"access_token","token_type":"bearer","expires_in":3600}`.
//! It is cached in `kv` under `lwa-token` (see [`crate::token`]) and sent
//! as `x-amz-access-token`. SP-API no longer needs AWS SigV4 signing.
//!
//! Config: `endpoint` (default `https://sellingpartnerapi-na.amazon.com`),
//! `marketplace_ids` (comma-separated, required), `token_url` (default
//! [`DEFAULT_TOKEN_URL`]). Secrets: `client_id`, `client_secret`,
//! `refresh_token`.
//!
//! A 429 (`QuotaExceeded`) has already been retried by the host, honouring
//! `Retry-After`, when it reaches the plugin; it is then an error like any
//! other non-2xx answer.

use rollback_plugin_sdk::config::Config;
use serde::de::DeserializeOwned;

use crate::token::{self, TokenSource};
use crate::transport::{self, Call, Transport};
use crate::Provider;

/// Where LWA tokens come from unless `token_url` says otherwise.
pub const DEFAULT_TOKEN_URL: &str = "https://api.amazon.com/auth/o2/token";

/// LWA credentials. No `Debug`: it holds secrets.
pub struct Lwa {
    token_url: String,
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

impl Lwa {
    /// Reads `token_url` and the secrets `client_id`, `client_secret`,
    /// `refresh_token`.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        Ok(Lwa {
            token_url: config
                .optional("token_url")
                .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_string()),
            client_id: config.required_secret("client_id")?,
            client_secret: config.required_secret("client_secret")?,
            refresh_token: config.required_secret("refresh_token")?,
        })
    }
}

impl TokenSource for Lwa {
    fn cache_key(&self) -> &str {
        "lwa-token"
    }

    fn owner(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.token_url, self.client_id, self.refresh_token
        )
    }

    fn token_call(&self) -> Call {
        Call::post_form(
            &self.token_url,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &self.refresh_token),
                ("client_id", &self.client_id),
                ("client_secret", &self.client_secret),
            ],
        )
        .header("Accept", "application/json")
    }
}

/// An SP-API client for one seller.
pub struct SpApi {
    /// Base URL without a trailing `/`.
    pub endpoint: String,
    /// The `marketplace_ids` config value, split and trimmed.
    pub marketplace_ids: Vec<String>,
    lwa: Lwa,
}

impl SpApi {
    /// Reads `endpoint`, `marketplace_ids` and the LWA settings.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let ids = config.required("marketplace_ids")?;
        let marketplace_ids = config.list("marketplace_ids").unwrap_or_default();
        if marketplace_ids.is_empty() {
            return Err(format!(
                "config `marketplace_ids` = `{ids}`: no marketplace id"
            ));
        }
        Ok(SpApi {
            endpoint: crate::endpoint(config, Provider::Amazon),
            marketplace_ids,
            lwa: Lwa::from_config(config)?,
        })
    }

    /// `GET <endpoint><path_and_query>` with a token, expecting 2xx and JSON
    /// of type `T`. Errors carry SP-API's `code: message (details)`.
    pub fn get<T: DeserializeOwned>(
        &self,
        transport: &dyn Transport,
        path_and_query: &str,
    ) -> Result<T, String> {
        let url = format!("{}{path_and_query}", self.endpoint);
        let (call, response) =
            token::get_authorized(&self.lwa, transport, &url, &|call, token| {
                call.header("x-amz-access-token", token)
            })?;
        transport::expect_json(&call, response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::Fake;

    fn config<'a>(pairs: &[(&str, &str)]) -> Config<'a> {
        Config::from_pairs(pairs).with_secrets(&[
            ("client_id", "amzn1.application-oa2-client.x"),
            ("client_secret", "s3cret"),
            ("refresh_token", "Atzr|IwE"),
        ])
    }

    #[test]
    fn reads_config() {
        let api = SpApi::from_config(&config(&[("marketplace_ids", " A1, ,B2 ")])).expect("ok");
        assert_eq!(api.marketplace_ids, vec!["A1", "B2"]);
        assert_eq!(api.endpoint, "https://sellingpartnerapi-na.amazon.com");
        assert_eq!(api.lwa.token_url, DEFAULT_TOKEN_URL);
        assert_eq!(
            SpApi::from_config(&config(&[("marketplace_ids", ",")])).err(),
            Some("config `marketplace_ids` = `,`: no marketplace id".to_string())
        );
        assert_eq!(
            SpApi::from_config(&Config::from_pairs(&[("marketplace_ids", "A")])).err(),
            Some("secret `client_id` is required".to_string())
        );
    }

    #[test]
    fn token_then_call() {
        let fake = Fake::new(
            0,
            &[
                (
                    200,
                    r#"{"access_token":"Atza|1","token_type":"bearer","expires_in":3600,"refresh_token":"Atzr|IwE"}"#,
                ),
                (200, r#"{"n":1}"#),
                (
                    429,
                    r#"{"errors":[{"code":"QuotaExceeded","message":"You exceeded your quota for the requested resource."}]}"#,
                ),
            ],
        );
        let api = SpApi::from_config(&config(&[
            ("marketplace_ids", "A1"),
            ("endpoint", "http://127.0.0.1:1/"),
            ("token_url", "http://127.0.0.1:2/auth/o2/token"),
        ]))
        .expect("ok");
        let v: serde_json::Value = api.get(&fake, "/x?a=1").expect("answer");
        assert_eq!(v["n"], 1);
        let err = api
            .get::<serde_json::Value>(&fake, "/x?a=1")
            .expect_err("429");
        assert_eq!(
            err,
            "GET http://127.0.0.1:1/x -> HTTP 429: QuotaExceeded: You exceeded your quota for the requested resource."
        );
        let calls = fake.calls();
        assert_eq!(calls[0].method, "POST");
        assert_eq!(calls[0].url, "http://127.0.0.1:2/auth/o2/token");
        assert_eq!(
            String::from_utf8(calls[0].body.clone().expect("body")).expect("utf8"),
            "grant_type=refresh_token&refresh_token=Atzr%7CIwE&client_id=amzn1.application-oa2-client.x&client_secret=s3cret"
        );
        assert_eq!(
            calls[0].header_value("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(calls[1].url, "http://127.0.0.1:1/x?a=1");
        assert_eq!(calls[1].header_value("x-amz-access-token"), Some("Atza|1"));
        assert_eq!(calls[2].header_value("x-amz-access-token"), Some("Atza|1"));
    }
}
