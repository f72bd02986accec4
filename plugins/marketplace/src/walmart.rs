//! Walmart Marketplace API: client-credentials tokens and calls.
//!
//! The token: `POST <endpoint>/v3/token` with
//! `Authorization: Basic base64(client_id:client_secret)`, `WM_SVC.NAME`,
//! `WM_QOS.CORRELATION_ID`, `Accept: application/json` and the form body
//! `grant_type=client_credentials`; answered with
//! `{"access_token","token_type":"Bearer","expires_in":900}` and cached in
//! `kv` under `walmart-token`. API calls send `WM_SEC.ACCESS_TOKEN`,
//! `WM_SVC.NAME`, a fresh `WM_QOS.CORRELATION_ID` and
//! `Accept: application/json`.
//!
//! Config: `endpoint` (default `https://marketplace.walmartapis.com`),
//! `svc_name` (default `Walmart Marketplace`), `market` (`us`, the default;
//! `ca` or `mx` send `WM_MARKET` with every request, as Walmart Canada and
//! Mexico require). Secrets: `client_id`, `client_secret`.

use std::sync::atomic::{AtomicU32, Ordering};

use rollback_plugin_sdk::clock;
use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::http::Response;

use crate::token::{self, TokenSource};
use crate::transport::{self, Call, Transport};
use crate::Provider;

/// `WM_SVC.NAME` unless `svc_name` says otherwise.
pub const DEFAULT_SVC_NAME: &str = "Walmart Marketplace";

/// A Walmart seller account. No `Debug`: it holds secrets.
pub struct Walmart {
    /// Base URL without a trailing `/`.
    pub endpoint: String,
    svc_name: String,
    /// `WM_MARKET` for Canada and Mexico; none for the US.
    market: Option<&'static str>,
    client_id: String,
    client_secret: String,
}

impl Walmart {
    /// Reads `endpoint`, `svc_name` and the secrets `client_id` and
    /// `client_secret`.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        Ok(Walmart {
            endpoint: crate::endpoint(config, Provider::Walmart),
            svc_name: config
                .optional("svc_name")
                .unwrap_or_else(|| DEFAULT_SVC_NAME.to_string()),
            market: config
                .parse_with("market", |m| match m.trim().to_ascii_lowercase().as_str() {
                    "us" => Ok(None),
                    "ca" => Ok(Some("ca")),
                    "mx" => Ok(Some("mx")),
                    _ => Err("expected us, ca or mx".to_string()),
                })?
                .flatten(),
            client_id: config.required_secret("client_id")?,
            client_secret: config.required_secret("client_secret")?,
        })
    }

    /// `GET url` with a token and the Walmart headers; the response is
    /// returned whatever its status (Walmart answers "no orders" with 404).
    pub fn get(&self, transport: &dyn Transport, url: &str) -> Result<(Call, Response), String> {
        token::get_authorized(self, transport, url, &|call, token| {
            self.market_header(
                call.header("WM_SEC.ACCESS_TOKEN", token)
                    .header("WM_SVC.NAME", &self.svc_name)
                    .header("WM_QOS.CORRELATION_ID", &correlation_id(transport.now_ms())),
            )
        })
    }

    fn market_header(&self, call: Call) -> Call {
        match self.market {
            Some(market) => call.header("WM_MARKET", market),
            None => call,
        }
    }
}

impl TokenSource for Walmart {
    fn cache_key(&self) -> &str {
        "walmart-token"
    }

    fn owner(&self) -> String {
        format!("{}\n{}", self.endpoint, self.client_id)
    }

    fn token_call(&self) -> Call {
        let call = Call::post_form(
            format!("{}/v3/token", self.endpoint),
            &[("grant_type", "client_credentials")],
        );
        self.market_header(call)
            .header(
                "Authorization",
                &transport::basic_auth(&self.client_id, &self.client_secret),
            )
            .header("WM_SVC.NAME", &self.svc_name)
            .header("WM_QOS.CORRELATION_ID", &correlation_id(0))
            .header("Accept", "application/json")
    }
}

/// A UUID-shaped id unique per request: wall clock (`now_ms`, or the host
/// clock when 0), the monotonic clock and a counter.
pub fn correlation_id(now_ms: u64) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = if now_ms == 0 { clock::now_ms() } else { now_ms };
    let mono = clock::monotonic_ns();
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (now >> 16) as u32,
        (now & 0xffff) as u16,
        (n & 0xffff) as u16,
        ((mono >> 48) & 0xffff) as u16,
        mono & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::Fake;

    #[test]
    fn token_and_headers() {
        let config = Config::from_pairs(&[("endpoint", "http://127.0.0.1:3")])
            .with_secrets(&[("client_id", "cid"), ("client_secret", "csecret")]);
        let w = Walmart::from_config(&config).expect("valid");
        let fake = Fake::new(
            0,
            &[
                (
                    200,
                    r#"{"access_token":"eyJ","token_type":"Bearer","expires_in":900}"#,
                ),
                (200, "{}"),
                (200, "{}"),
            ],
        );
        w.get(&fake, "http://127.0.0.1:3/v3/orders?limit=100")
            .expect("sent");
        w.get(&fake, "http://127.0.0.1:3/v3/orders?limit=100")
            .expect("sent");
        let calls = fake.calls();
        assert_eq!(calls.len(), 3, "the token is reused");
        let t = &calls[0];
        assert_eq!(
            (t.method.as_str(), t.url.as_str()),
            ("POST", "http://127.0.0.1:3/v3/token")
        );
        assert_eq!(
            t.body.as_deref(),
            Some(&b"grant_type=client_credentials"[..])
        );
        assert_eq!(
            t.header_value("authorization"),
            Some("Basic Y2lkOmNzZWNyZXQ=")
        );
        assert_eq!(t.header_value("WM_SVC.NAME"), Some("Walmart Marketplace"));
        assert_eq!(t.header_value("accept"), Some("application/json"));
        let a = &calls[1];
        assert_eq!(a.header_value("WM_SEC.ACCESS_TOKEN"), Some("eyJ"));
        let ids: Vec<_> = calls
            .iter()
            .map(|c| {
                c.header_value("WM_QOS.CORRELATION_ID")
                    .expect("id")
                    .to_string()
            })
            .collect();
        assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");
        assert_eq!(ids[1].len(), 36);
        assert!(calls.iter().all(|c| c.header_value("WM_MARKET").is_none()));
    }

    #[test]
    fn canada_and_mexico_send_their_market() {
        let config = |m: &str| {
            Config::from_pairs(&[("endpoint", "http://127.0.0.1:3"), ("market", m)])
                .with_secrets(&[("client_id", "cid"), ("client_secret", "csecret")])
        };
        let w = Walmart::from_config(&config("MX")).expect("valid");
        let fake = Fake::new(
            0,
            &[
                (200, r#"{"access_token":"a","expires_in":900}"#),
                (200, "{}"),
            ],
        );
        w.get(&fake, "http://127.0.0.1:3/v3/orders").expect("sent");
        assert!(fake
            .calls()
            .iter()
            .all(|c| c.header_value("WM_MARKET") == Some("mx")));
        let err = Walmart::from_config(&config("uk")).err();
        assert_eq!(
            err.as_deref(),
            Some("config `market` = `uk`: expected us, ca or mx")
        );
    }
}
