//! Local fakes of the marketplace APIs that the `order-sync-lag` and
//! `inventory-drift` plugins call: Amazon (Login with Amazon, SP-API Orders
//! v0 and FBA Inventory v1), Shopee Open Platform v2 (token refresh, orders
//! and products), Walmart Marketplace, eBay (OAuth and Sell Fulfillment
//! v1) and Lazada Open Platform (signed GetOrders, token refresh).
//!
//! Each fake serves on 127.0.0.1 and is written from the providers' published
//! documents, not from the plugins: paths, parameters, authentication,
//! signatures, body and error shapes, and paging. A fake's state (orders,
//! stock, issued tokens, programmed failures, the log of every request and
//! what it was answered) can be read and changed while it serves.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::support::{header_in, http_server, HttpReply, HttpRequest};

/// Amazon LWA client and SP-API seller, as the fake knows them.
pub const AMAZON_CLIENT_ID: &str = "amzn1.application-oa2-client.5f3e0c4d2b1a";
pub const AMAZON_CLIENT_SECRET: &str = "amzn1.oa2-cs.v1.0a1b2c3d4e5f60718293a4b5c6d7e8f9";
pub const AMAZON_REFRESH_TOKEN: &str = "Atzr|IwEBIFakeRefreshToken-0123456789";
/// The US marketplace.
pub const AMAZON_MARKETPLACE: &str = "ATVPDKIKX0DER";

pub const SHOPEE_PARTNER_ID: u64 = 2_001_887;
pub const SHOPEE_PARTNER_KEY: &str =
    "4a6f6b65724b65792d666f722d74657374696e672d6f6e6c792d313233343536";
pub const SHOPEE_SHOP_ID: u64 = 600_112_233;
pub const SHOPEE_ACCESS_TOKEN: &str = "6b4a4e4f50515253545556575859";
/// The refresh token of the shop's authorization; it rotates on each use.
pub const SHOPEE_REFRESH_TOKEN: &str = "52656672657368546f6b656e2d73686f70";

pub const WALMART_CLIENT_ID: &str = "8f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b";
pub const WALMART_CLIENT_SECRET: &str = "AKfW-fake-walmart-client-secret-0123";

pub const EBAY_CLIENT_ID: &str = "RollbackA-orders-PRD-1a2b3c4d5-6e7f8a9b";
pub const EBAY_CLIENT_SECRET: &str = "PRD-1a2b3c4d5e6f-7a8b-9c0d-1e2f-3a4b";
pub const EBAY_REFRESH_TOKEN: &str = "v^1.1#i^1#r^1#I^3#p^3#f^0#t^Ul4xMF8yOkZBS0VSRUZSRVNI";
/// The scopes the seller consented to; a refresh may ask for these or fewer.
pub const EBAY_GRANTED_SCOPES: [&str; 3] = [
    "https://api.ebay.com/oauth/api_scope",
    "https://api.ebay.com/oauth/api_scope/sell.fulfillment.readonly",
    "https://api.ebay.com/oauth/api_scope/sell.inventory.readonly",
];

/// Lazada app and seller, as the fake knows them.
pub const LAZADA_APP_KEY: &str = "120437";
pub const LAZADA_APP_SECRET: &str = "Lz8Hq2Vx7Wm4Ke9Rb3Tn6Yc1Pa5Sd0Fg";
pub const LAZADA_ACCESS_TOKEN: &str =
    "50000601c30atpedfgu3LVvik87Ixlsvle3mSoB7701ceb156fPunYZ43GBg";
pub const LAZADA_REFRESH_TOKEN: &str =
    "50001600c30atpedfgu3LVvik87Ixlsvle3mSoB7701ceb156fRefreshToken";

/// Lazada refuses requests whose `timestamp` (ms) is further off than this.
const LAZADA_TIMESTAMP_WINDOW_MS: i64 = 7_200_000;

/// Shopee refuses requests whose `timestamp` is older than this (seconds).
const SHOPEE_TIMESTAMP_WINDOW: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Amazon,
    Shopee,
    Walmart,
    Ebay,
    Lazada,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::Amazon,
        Provider::Shopee,
        Provider::Walmart,
        Provider::Ebay,
        Provider::Lazada,
    ];

    /// The value of the plugins' `provider` key.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Amazon => "amazon",
            Provider::Shopee => "shopee",
            Provider::Walmart => "walmart",
            Provider::Ebay => "ebay",
            Provider::Lazada => "lazada",
        }
    }

    /// The path that lists orders.
    pub fn orders_path(self) -> &'static str {
        match self {
            Provider::Amazon => "/orders/v0/orders",
            Provider::Shopee => "/api/v2/order/get_order_list",
            Provider::Walmart => "/v3/orders",
            Provider::Ebay => "/sell/fulfillment/v1/order",
            Provider::Lazada => "/rest/orders/get",
        }
    }

    /// The path that issues access tokens.
    pub fn token_path(self) -> Option<&'static str> {
        match self {
            Provider::Amazon => Some("/auth/o2/token"),
            Provider::Shopee => Some("/api/v2/auth/access_token/get"),
            Provider::Walmart => Some("/v3/token"),
            Provider::Ebay => Some("/identity/v1/oauth2/token"),
            Provider::Lazada => Some("/rest/auth/token/refresh"),
        }
    }
}

/// One marketplace order. Times are whole seconds (in ms since the epoch), so
/// every provider's format (seconds, ms, `.000Z`) shows the same instant.
#[derive(Debug, Clone)]
pub struct Order {
    pub id: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The provider's status word; none: the usual one of an order to ship
    /// (Amazon `Unshipped`, Shopee `READY_TO_SHIP`).
    pub status: Option<&'static str>,
    /// Amazon's FulfillmentChannel; none: `MFN`.
    pub channel: Option<&'static str>,
}

impl Order {
    /// An order last updated at `updated_ms` (rounded down to the second),
    /// created an hour before.
    pub fn at(id: &str, updated_ms: i64) -> Order {
        let updated_ms = updated_ms.div_euclid(1000) * 1000;
        Order {
            id: id.to_string(),
            created_ms: updated_ms - 3_600_000,
            updated_ms,
            status: None,
            channel: None,
        }
    }

    /// The order in the provider's `status` (e.g. Amazon `Pending`,
    /// Shopee `UNPAID`, `CANCELLED`).
    pub fn status(mut self, status: &'static str) -> Order {
        self.status = Some(status);
        self
    }

    /// An Amazon order of this FulfillmentChannel (`AFN`: FBA).
    pub fn channel(mut self, channel: &'static str) -> Order {
        self.channel = Some(channel);
        self
    }

    /// An order last updated `ago` before now.
    pub fn updated_ago(id: &str, ago: Duration) -> Order {
        Order::at(id, now_ms() - ago.as_millis() as i64)
    }
}

/// Stock of one SKU: `quantity` is what can be sold now (Amazon's
/// fulfillable quantity, Shopee's available stock); `reserved` is held for
/// open orders and counts in Amazon's `totalQuantity` only.
#[derive(Debug, Clone)]
pub struct Stock {
    pub sku: String,
    pub quantity: i64,
    pub reserved: i64,
    pub item_id: u64,
    pub model_id: Option<u64>,
}

impl Stock {
    pub fn new(sku: &str, quantity: i64) -> Stock {
        Stock {
            sku: sku.to_string(),
            quantity,
            reserved: 0,
            item_id: 0,
            model_id: None,
        }
    }

    pub fn reserved(mut self, reserved: i64) -> Stock {
        self.reserved = reserved;
        self
    }

    /// Shopee: the listing (and variation) this SKU is.
    pub fn item(mut self, item_id: u64, model_id: Option<u64>) -> Stock {
        self.item_id = item_id;
        self.model_id = model_id;
        self
    }
}

/// A failure programmed for the next request to a path.
#[derive(Debug, Clone)]
pub enum Failure {
    /// 429 in the provider's shape, with `Retry-After: N` if given.
    RateLimited { retry_after: Option<u32> },
    /// The provider's error body for this status (400, 403, 404, 500, 503).
    Status(u16),
    /// 200 with a JSON content type and a truncated body.
    Malformed,
}

/// What a fake answers, with the provider's error code for the log
/// (`error_sign`, `Unauthorized`, ...).
struct Reply {
    reply: HttpReply,
    error: Option<String>,
}

impl From<HttpReply> for Reply {
    fn from(reply: HttpReply) -> Reply {
        Reply { reply, error: None }
    }
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        HttpReply::json(status, &body.to_string()).into()
    }

    fn header(self, name: &str, value: &str) -> Reply {
        Reply {
            reply: self.reply.header(name, value),
            ..self
        }
    }

    fn code(self, error: &str) -> Reply {
        Reply {
            error: Some(error.to_string()),
            ..self
        }
    }
}

/// An answer as a client read it (see [`call`]).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The body parsed; panics if it is not JSON.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header_value(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

/// One request the fake received and what it answered.
#[derive(Debug, Clone)]
pub struct Logged {
    pub request: HttpRequest,
    /// The query string's pairs, percent-decoded.
    query: Vec<(String, String)>,
    pub status: u16,
    pub error: Option<String>,
}

impl Logged {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.request.path_only()
    }

    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        lookup(&self.query, name)
    }

    /// A field of a form-encoded body.
    pub fn form(&self, name: &str) -> Option<String> {
        lookup(&self.request.form(), name).map(str::to_string)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.request.header(name)
    }
}

#[derive(Debug, Clone)]
struct Token {
    expires_ms: i64,
    scopes: Vec<String>,
}

/// Where a paged listing goes on: the first page's query and the next offset.
#[derive(Debug, Clone)]
struct Cursor {
    query: Vec<(String, String)>,
    offset: usize,
}

#[derive(Debug)]
struct State {
    orders: Vec<Order>,
    stock: Vec<Stock>,
    page_size: usize,
    expires_in: u64,
    born_expired: u32,
    /// The `error` Shopee answers a dead access token with.
    shopee_refused: &'static str,
    tokens: HashMap<String, Token>,
    failures: VecDeque<(String, Failure)>,
    cursors: HashMap<String, Cursor>,
    log: Vec<Logged>,
    seq: u64,
    /// The one Shopee refresh token accepted now.
    refresh: String,
    /// Every Shopee refresh token issued, the current one included.
    refresh_issued: Vec<String>,
    /// SP-API getOrders' token bucket: tokens, and when it was last filled.
    get_orders_bucket: (f64, i64),
    /// searchOrders' (Orders API 2026-01-01) bucket.
    search_orders_bucket: (f64, i64),
    /// Walmart's `GET /v3/orders` bucket.
    walmart_orders_bucket: (f64, i64),
}

/// searchOrders: 0.0056 requests per second, burst 20 (the 2026-01-01
/// model's usage plan).
const SEARCH_ORDERS_RATE: f64 = 0.0056;

/// getOrders: 0.0167 requests per second, burst 20 (the Orders v0 model's
/// usage plan), per seller and application.
const GET_ORDERS_RATE: f64 = 0.0167;
const GET_ORDERS_BURST: f64 = 20.0;

/// Walmart's `GET /v3/orders`: 5,000 calls a minute per seller (its
/// rate-limiting table), the whole minute's worth available at once.
const WALMART_ORDERS_RATE: f64 = 5000.0 / 60.0;
const WALMART_ORDERS_BURST: f64 = 5000.0;

/// One running fake marketplace.
pub struct Marketplace {
    pub provider: Provider,
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Marketplace {
    pub fn start(provider: Provider) -> Marketplace {
        let mut tokens = HashMap::new();
        // Shopee's and Lazada's access tokens come from the seller's
        // authorization; the fake treats them as issued: four hours
        // (Shopee), seven days (Lazada, an app in test).
        let authorized = match provider {
            Provider::Shopee => Some((SHOPEE_ACCESS_TOKEN, 4 * 3_600_000)),
            Provider::Lazada => Some((LAZADA_ACCESS_TOKEN, 7 * 86_400_000)),
            _ => None,
        };
        if let Some((token, life)) = authorized {
            tokens.insert(
                token.to_string(),
                Token {
                    expires_ms: now_ms() + life,
                    scopes: Vec::new(),
                },
            );
        }
        let first_refresh = match provider {
            Provider::Lazada => LAZADA_REFRESH_TOKEN,
            _ => SHOPEE_REFRESH_TOKEN,
        };
        let state = Arc::new(Mutex::new(State {
            orders: Vec::new(),
            stock: Vec::new(),
            page_size: 100,
            expires_in: match provider {
                Provider::Shopee => 14_400,
                Provider::Walmart => 900,
                Provider::Ebay => 7200,
                Provider::Lazada => 604_800,
                _ => 3600,
            },
            born_expired: 0,
            shopee_refused: "error_auth",
            tokens,
            failures: VecDeque::new(),
            cursors: HashMap::new(),
            log: Vec::new(),
            seq: 0,
            refresh: first_refresh.to_string(),
            refresh_issued: vec![first_refresh.to_string()],
            get_orders_bucket: (GET_ORDERS_BURST, now_ms()),
            search_orders_bucket: (GET_ORDERS_BURST, now_ms()),
            walmart_orders_bucket: (WALMART_ORDERS_BURST, now_ms()),
        }));
        let shared = state.clone();
        let port_cell = Arc::new(std::sync::OnceLock::<u16>::new());
        let port_seen = port_cell.clone();
        let port = http_server(move |req| {
            let port = port_seen.get().copied().unwrap_or(0);
            serve(&shared, provider, port, req)
        });
        port_cell.set(port).unwrap();
        Marketplace {
            provider,
            port,
            state,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `http://127.0.0.1:PORT`, the plugins' `endpoint`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, for `allow_hosts`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set_orders(&self, orders: Vec<Order>) {
        self.lock().orders = orders;
    }

    pub fn set_stock(&self, stock: Vec<Stock>) {
        self.lock().stock = stock;
    }

    /// The most entries one page holds, whatever the client asks for.
    pub fn set_page_size(&self, n: usize) {
        self.lock().page_size = n.max(1);
    }

    /// `expires_in` (Shopee: `expire_in`) of the tokens issued from now on.
    pub fn set_expires_in(&self, seconds: u64) {
        self.lock().expires_in = seconds;
    }

    /// The next `n` tokens are already expired on the server when issued
    /// (their `expires_in` still says otherwise), like a token revoked or
    /// expired early.
    pub fn issue_expired_tokens(&self, n: u32) {
        self.lock().born_expired = n;
    }

    /// Expires every access token issued so far (Shopee's too, the
    /// authorization's and refreshed ones; not its refresh token).
    pub fn expire_tokens(&self) {
        for t in self.lock().tokens.values_mut() {
            t.expires_ms = 0;
        }
    }

    /// Expires every access token, as [`Marketplace::expire_tokens`], and
    /// has Shopee refuse them with `code`: `error_auth`, or the early
    /// invalidation codes `invalid_access_token` and Shopee's own spelling
    /// `invalid_acceess_token`.
    pub fn expire_shopee_tokens_with(&self, code: &'static str) {
        self.lock().shopee_refused = code;
        self.expire_tokens();
    }

    /// The Shopee (or Lazada) refresh token the fake accepts now (the
    /// newest issued).
    pub fn shopee_refresh_token(&self) -> String {
        self.lock().refresh.clone()
    }

    /// The seller authorizes the Shopee app again: a new refresh token,
    /// returned; the previous one stops working.
    pub fn reauthorize_shopee(&self) -> String {
        let mut st = self.lock();
        let id = st.next_id();
        st.rotate_refresh(id)
    }

    /// Every access and refresh token the fake issued or accepts: none may
    /// show in a plugin's output.
    pub fn issued_tokens(&self) -> Vec<String> {
        let st = self.lock();
        let mut all: Vec<String> = st.tokens.keys().cloned().collect();
        all.extend(st.refresh_issued.iter().cloned());
        all
    }

    /// The seller's own app has just spent getOrders' burst: the bucket is
    /// empty and refills at the documented rate (one request a minute).
    pub fn drain_get_orders_quota(&self) {
        let mut st = self.lock();
        st.get_orders_bucket = (0.0, now_ms());
        st.search_orders_bucket = (0.0, now_ms());
    }

    /// Another app of the seller keeps Walmart's orders bucket empty for
    /// `busy` more; then it refills at the documented rate.
    pub fn drain_walmart_quota(&self, busy: Duration) {
        self.lock().walmart_orders_bucket = (0.0, now_ms() + busy.as_millis() as i64);
    }

    /// Answers the next request whose path is `path` with `failure`
    /// (queued: several calls fail several requests in order).
    pub fn fail_next(&self, path: &str, failure: Failure) {
        self.lock().failures.push_back((path.to_string(), failure));
    }

    pub fn log(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// The logged requests to `path`.
    pub fn requests(&self, path: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.path() == path)
            .collect()
    }

    /// The provider error codes answered so far, in order.
    pub fn errors(&self) -> Vec<String> {
        self.log().into_iter().filter_map(|l| l.error).collect()
    }

    /// The plugin config keys for this fake (endpoint and ids; no secrets).
    pub fn config(&self) -> Vec<(String, String)> {
        let mut c = vec![
            ("provider".to_string(), self.provider.name().to_string()),
            ("endpoint".to_string(), self.url()),
        ];
        let mut add = |k: &str, v: String| c.push((k.to_string(), v));
        match self.provider {
            Provider::Amazon => {
                // The tests written for getOrders (v0, kept until Amazon
                // removes it); the 2026-01-01 tests set `api` themselves.
                add("api", "v0".to_string());
                add("marketplace_ids", AMAZON_MARKETPLACE.to_string());
                add("token_url", format!("{}/auth/o2/token", self.url()));
            }
            Provider::Shopee => {
                add("partner_id", SHOPEE_PARTNER_ID.to_string());
                add("shop_id", SHOPEE_SHOP_ID.to_string());
            }
            Provider::Walmart => add("svc_name", "Walmart Marketplace".to_string()),
            Provider::Ebay => {
                add(
                    "token_url",
                    format!("{}/identity/v1/oauth2/token", self.url()),
                );
                add("scope", EBAY_GRANTED_SCOPES[1].to_string());
            }
            Provider::Lazada => {
                // One port serves the country gateway and the auth host.
                c[1].1 = format!("{}/rest", self.url());
                c.push((
                    "token_url".to_string(),
                    format!("{}/rest/auth/token/refresh", self.url()),
                ));
            }
        }
        c
    }

    /// The secrets the plugin needs for this fake.
    pub fn secrets(&self) -> Vec<(String, String)> {
        let pairs: &[(&str, &str)] = match self.provider {
            Provider::Amazon => &[
                ("client_id", AMAZON_CLIENT_ID),
                ("client_secret", AMAZON_CLIENT_SECRET),
                ("refresh_token", AMAZON_REFRESH_TOKEN),
            ],
            Provider::Shopee => &[
                ("partner_key", SHOPEE_PARTNER_KEY),
                ("access_token", SHOPEE_ACCESS_TOKEN),
            ],
            Provider::Walmart => &[
                ("client_id", WALMART_CLIENT_ID),
                ("client_secret", WALMART_CLIENT_SECRET),
            ],
            Provider::Ebay => &[
                ("client_id", EBAY_CLIENT_ID),
                ("client_secret", EBAY_CLIENT_SECRET),
                ("refresh_token", EBAY_REFRESH_TOKEN),
            ],
            Provider::Lazada => &[
                ("app_key", LAZADA_APP_KEY),
                ("app_secret", LAZADA_APP_SECRET),
                ("access_token", LAZADA_ACCESS_TOKEN),
            ],
        };
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

fn serve(state: &Mutex<State>, provider: Provider, port: u16, req: &HttpRequest) -> HttpReply {
    let path = req.path_only();
    let query = req.query();
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.seq += 1;
    let failure = st
        .failures
        .iter()
        .position(|(p, _)| p == path)
        .and_then(|i| st.failures.remove(i))
        .map(|(_, f)| f);
    let ctx = Ctx {
        req,
        path,
        query: &query,
        base: format!("http://127.0.0.1:{port}"),
        now: now_ms(),
    };
    let mut answer = match failure {
        Some(f) => failed(provider, &f),
        None => match provider {
            Provider::Amazon => amazon(&mut st, &ctx),
            Provider::Shopee => shopee(&mut st, &ctx),
            Provider::Walmart => walmart(&mut st, &ctx),
            Provider::Ebay => ebay(&mut st, &ctx),
            Provider::Lazada => lazada(&mut st, &ctx),
        },
    };
    if provider == Provider::Amazon {
        // Every SP-API and LWA answer carries a request id.
        let id = format!("7d6c5b4a-{:04x}-4e3f-9a8b-{:012x}", st.seq, st.seq);
        answer = answer.header("x-amzn-RequestId", &id);
    }
    st.log.push(Logged {
        request: req.clone(),
        query: query.clone(),
        status: answer.reply.status(),
        error: answer.error.clone(),
    });
    answer.reply
}

/// One request being answered.
struct Ctx<'a> {
    req: &'a HttpRequest,
    path: &'a str,
    query: &'a [(String, String)],
    /// `http://127.0.0.1:PORT`, for links the provider returns.
    base: String,
    now: i64,
}

impl Ctx<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        lookup(self.query, name)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.req.header(name)
    }

    fn form(&self) -> Vec<(String, String)> {
        self.req.form()
    }

    fn is_form(&self) -> bool {
        self.header("content-type")
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
    }

    /// `user:password` from `Authorization: Basic ...`.
    fn basic(&self) -> Option<(String, String)> {
        let v = self.header("authorization")?;
        let b64 = v.strip_prefix("Basic ")?;
        let text = String::from_utf8(base64_decode(b64.trim())?).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }
}

enum TokenState {
    Missing,
    Unknown,
    Expired,
    Live(Vec<String>),
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn issue_token(&mut self, token: String, scopes: Vec<String>, now: i64) -> String {
        let expires_ms = if self.born_expired > 0 {
            self.born_expired -= 1;
            0
        } else {
            now + self.expires_in as i64 * 1000
        };
        self.tokens
            .insert(token.clone(), Token { expires_ms, scopes });
        token
    }

    fn token_state(&self, token: Option<&str>, now: i64) -> TokenState {
        match token.filter(|t| !t.is_empty()) {
            None => TokenState::Missing,
            Some(t) => match self.tokens.get(t) {
                None => TokenState::Unknown,
                Some(t) if t.expires_ms <= now => TokenState::Expired,
                Some(t) => TokenState::Live(t.scopes.clone()),
            },
        }
    }

    /// Replaces the (Shopee or Lazada) refresh token with a new one,
    /// returned.
    fn rotate_refresh(&mut self, id: u64) -> String {
        let token = format!("{:016x}{id:016x}", fnv(&format!("refresh-{id}")));
        self.refresh = token.clone();
        self.refresh_issued.push(token.clone());
        token
    }

    /// A refresh: a new access token (starting with `prefix`) and a new
    /// refresh token, the used one dead from now on.
    fn refreshed(&mut self, prefix: &str, now: i64) -> (String, String) {
        let id = self.next_id();
        let refresh_token = self.rotate_refresh(id);
        let token = format!("{prefix}{:016x}{id:016x}", fnv(&format!("access-{id}")));
        (self.issue_token(token, Vec::new(), now), refresh_token)
    }

    /// Registers where the next page starts; returns an opaque token.
    fn cursor(&mut self, query: &[(String, String)], offset: usize) -> String {
        let id = self.next_id();
        // Like real page tokens: base64-ish, with `+`, `/` and `=` that a
        // client must percent-encode in a query string.
        let token = format!("Qk+{id:x}/T2s{offset}x/Y+Z==");
        self.cursors.insert(
            token.clone(),
            Cursor {
                query: query.to_vec(),
                offset,
            },
        );
        token
    }
}

/// The provider's answer to a programmed failure.
fn failed(provider: Provider, f: &Failure) -> Reply {
    if let Failure::Malformed = f {
        let body = match provider {
            Provider::Amazon => r#"{"payload":{"Orders":[{"AmazonOrderId":"#,
            Provider::Shopee => r#"{"error":"","response":{"order_list":[{"order_sn"#,
            Provider::Walmart => r#"{"list":{"meta":{"totalCount":3,"#,
            Provider::Ebay => r#"{"href":"x","total":2,"orders":[{"orderId":"#,
            Provider::Lazada => r#"{"code":"0","data":{"countTotal":"3","orders":[{"order_id":"#,
        };
        return Reply::from(HttpReply::json(200, body)).code("malformed");
    }
    let (status, mut retry_after) = match f {
        Failure::RateLimited { retry_after } => (429, *retry_after),
        Failure::Status(s) => (*s, None),
        Failure::Malformed => unreachable!(),
    };
    let mut a = match provider {
        Provider::Amazon => {
            let (code, message) = match status {
                400 => (
                    "InvalidInput",
                    "Request has missing or invalid parameters and cannot be parsed.",
                ),
                403 => ("Unauthorized", "Access to requested resource is denied."),
                404 => ("NotFound", "The resource specified does not exist."),
                429 => (
                    "QuotaExceeded",
                    "You exceeded your quota for the requested resource.",
                ),
                503 => (
                    "ServiceUnavailable",
                    "Temporary overloading or maintenance of the server.",
                ),
                _ => (
                    "InternalFailure",
                    "We encountered an internal error. Please try again.",
                ),
            };
            let a = amazon_error(status, code, message, "");
            if status == 429 {
                a.header("x-amzn-RateLimit-Limit", "0.0167")
            } else {
                a
            }
        }
        Provider::Shopee => {
            // Shopee's public docs do not fix these codes; the host retries
            // 429 and 503 on the status alone.
            let (code, message) = match status {
                429 => (
                    "error_rate_limit",
                    "Too many requests, please try again later.",
                ),
                400 => ("error_param", "Invalid parameter."),
                403 => ("error_auth", "Invalid access_token."),
                404 => ("error_not_found", "Not found."),
                _ => ("error_server", "Something wrong. Please try later."),
            };
            shopee_error(status, code, message)
        }
        Provider::Walmart => {
            let (code, description) = match status {
                429 => (
                    "REQUEST_THRESHOLD_VIOLATED.GMP_GATEWAY_API",
                    "Too Many Requests",
                ),
                400 => ("INVALID_REQUEST_CONTENT.GMP_ORDER_API", "Invalid request"),
                401 | 403 => ("UNAUTHORIZED.GMP_GATEWAY_API", "Unauthorized"),
                404 => (
                    "CONTENT_NOT_FOUND.GMP_ORDER_API",
                    "Requested content could not be found.",
                ),
                503 => ("SERVICE_UNAVAILABLE.GMP_GATEWAY_API", "Service Unavailable"),
                _ => ("SYSTEM_ERROR.GMP_ORDER_API", "Internal Server Error"),
            };
            walmart_errors(status, code, "data", description)
        }
        Provider::Ebay => {
            let (id, domain, message) = match status {
                429 => (2001, "ACCESS", "Too many requests. The request limit has been reached for the resource."),
                401 => (1001, "OAuth", "Invalid access token"),
                403 => (1100, "ACCESS", "Access denied"),
                400 => (30700, "API_FULFILLMENT", "Invalid request"),
                _ => (30500, "API_FULFILLMENT", "There was a problem with an eBay internal system or process. Contact eBay developer support for assistance."),
            };
            ebay_error(status, id, domain, message)
        }
        Provider::Lazada => {
            // Lazada answers its errors with HTTP 200 and a code; a ban
            // names its length in the message, never in a header.
            let secs = retry_after.take().unwrap_or(1);
            let (kind, code, message) = match status {
                429 => (
                    "ISV",
                    "ApiCallLimit",
                    format!(
                        "The request has exceeded the limit. This ban will last {secs} seconds"
                    ),
                ),
                400 => ("ISV", "InvalidParameter", "Invalid parameter".to_string()),
                403 => (
                    "ISV",
                    "InsufficientPermission",
                    "The app has no permission to call this api".to_string(),
                ),
                _ => (
                    "ISP",
                    "InternalError",
                    "The request processing has failed due to some unknown error.".to_string(),
                ),
            };
            lazada_error(kind, code, &message)
        }
    };
    if let Some(secs) = retry_after {
        a = a.header("retry-after", &secs.to_string());
    }
    a
}

// ---------------------------------------------------------------- Amazon

fn amazon_error(status: u16, code: &str, message: &str, details: &str) -> Reply {
    Reply::json(
        status,
        json!({"errors": [{"code": code, "message": message, "details": details}]}),
    )
    .code(code)
}

fn invalid_input(message: &str) -> Reply {
    amazon_error(400, "InvalidInput", message, "")
}

fn amazon(st: &mut State, cx: &Ctx) -> Reply {
    match (cx.req.method.as_str(), cx.path) {
        ("POST", "/auth/o2/token") => lwa_token(st, cx),
        ("GET", "/orders/v0/orders") => amazon_auth(st, cx).unwrap_or_else(|| get_orders(st, cx)),
        ("GET", "/orders/2026-01-01/orders") => {
            amazon_auth(st, cx).unwrap_or_else(|| search_orders(st, cx))
        }
        ("GET", "/fba/inventory/v1/summaries") => {
            amazon_auth(st, cx).unwrap_or_else(|| get_inventory_summaries(st, cx))
        }
        _ => amazon_error(
            404,
            "NotFound",
            "The resource specified does not exist.",
            "",
        ),
    }
}

/// An OAuth 2.0 token endpoint's error (RFC 6749, section 5.2).
fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": error, "error_description": description}),
    )
    .code(error)
}

/// Login with Amazon: refresh token grant, credentials in the form body.
fn lwa_token(st: &mut State, cx: &Ctx) -> Reply {
    if !cx.is_form() {
        return oauth_error(
            400,
            "invalid_request",
            "The Content-Type must be application/x-www-form-urlencoded",
        );
    }
    let form = cx.form();
    let field = |k: &str| lookup(&form, k).filter(|v| !v.is_empty());
    let Some(grant) = field("grant_type") else {
        return oauth_error(
            400,
            "invalid_request",
            "The request is missing a required parameter : grant_type",
        );
    };
    if grant != "refresh_token" {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server",
        );
    }
    for k in ["refresh_token", "client_id", "client_secret"] {
        if field(k).is_none() {
            return oauth_error(
                400,
                "invalid_request",
                &format!("The request is missing a required parameter : {k}"),
            );
        }
    }
    if field("client_id") != Some(AMAZON_CLIENT_ID)
        || field("client_secret") != Some(AMAZON_CLIENT_SECRET)
    {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    }
    if field("refresh_token") != Some(AMAZON_REFRESH_TOKEN) {
        return oauth_error(
            400,
            "invalid_grant",
            "The request has an invalid grant parameter : refresh_token",
        );
    }
    let id = st.next_id();
    let token = st.issue_token(
        format!("Atza|IwEBIA{id:08x}fakeAccessToken"),
        Vec::new(),
        cx.now,
    );
    Reply::json(
        200,
        json!({
            "access_token": token,
            "refresh_token": AMAZON_REFRESH_TOKEN,
            "token_type": "bearer",
            "expires_in": st.expires_in,
        }),
    )
}

/// `x-amz-access-token` must be a live LWA token; `None` means go on.
fn amazon_auth(st: &State, cx: &Ctx) -> Option<Reply> {
    let details = match st.token_state(cx.header("x-amz-access-token"), cx.now) {
        TokenState::Live(_) => return None,
        TokenState::Missing => "",
        TokenState::Unknown => "The access token you provided is revoked, malformed or invalid.",
        TokenState::Expired => "The access token you provided has expired.",
    };
    Some(amazon_error(
        403,
        "Unauthorized",
        "Access to requested resource is denied.",
        details,
    ))
}

/// Checks `MarketplaceIds`-style lists against the one marketplace the seller is in.
fn check_marketplaces(value: Option<&str>, name: &str, max: usize) -> Result<(), Reply> {
    let Some(list) = value.filter(|v| !v.is_empty()) else {
        return Err(invalid_input(&format!(
            "Missing required parameter '{name}'."
        )));
    };
    let ids: Vec<&str> = list.split(',').collect();
    if ids.len() > max {
        return Err(invalid_input(&format!(
            "{name} accepts at most {max} values."
        )));
    }
    for id in ids {
        if id != AMAZON_MARKETPLACE {
            return Err(invalid_input(&format!("Invalid {name}: {id}")));
        }
    }
    Ok(())
}

/// How an orders operation spells its parameters: createdAfter,
/// createdBefore, lastUpdatedAfter, lastUpdatedBefore, maxResultsPerPage.
type OrderParams = [&'static str; 5];
const V0_NAMES: OrderParams = [
    "CreatedAfter",
    "CreatedBefore",
    "LastUpdatedAfter",
    "LastUpdatedBefore",
    "MaxResultsPerPage",
];
const V2026_NAMES: OrderParams = [
    "createdAfter",
    "createdBefore",
    "lastUpdatedAfter",
    "lastUpdatedBefore",
    "maxResultsPerPage",
];

/// The window of an orders search as both SP-API models document it:
/// exactly one of the `After` bounds, no mix of created and updated
/// bounds, a `Before` bound after the `After` one and at least two minutes
/// old, a page size of 1 to 100. Both bounds are inclusive ("after (or
/// at)", "before (or at)").
struct OrdersWindow {
    by_update: bool,
    lo: i64,
    hi: i64,
    per_page: usize,
}

impl OrdersWindow {
    fn of(query: &[(String, String)], names: OrderParams, now: i64) -> Result<Self, Reply> {
        let [ca, cb, ua, ub, size] = names;
        let p = |k: &str| lookup(query, k).filter(|v| !v.is_empty());
        let time = |k: &str| -> Result<Option<i64>, Reply> {
            match p(k) {
                None => Ok(None),
                Some(v) => parse_time(v).map(Some).ok_or_else(|| {
                    invalid_input(&format!("{k} is not a valid ISO 8601 date: {v}"))
                }),
            }
        };
        let (created_after, created_before, updated_after, updated_before) =
            (time(ca)?, time(cb)?, time(ua)?, time(ub)?);
        match (created_after, updated_after) {
            (None, None) => {
                return Err(invalid_input(&format!(
                    "Either {ca} or {ua} must be specified."
                )))
            }
            (Some(_), Some(_)) => {
                return Err(invalid_input(&format!("{ca} and {ua} cannot both be set.")))
            }
            _ => {}
        }
        if created_after.is_some() && updated_before.is_some()
            || updated_after.is_some() && created_before.is_some()
        {
            return Err(invalid_input(
                "Created and updated filters cannot be combined.",
            ));
        }
        let latest = now - 120_000;
        for (after, before, name) in [
            (created_after, created_before, cb),
            (updated_after, updated_before, ub),
        ] {
            if let (Some(a), Some(b)) = (after, before) {
                if b < a || b > latest {
                    return Err(invalid_input(&format!(
                        "{name} must be after the lower bound and at least two minutes before now."
                    )));
                }
            }
        }
        let per_page = match p(size).map(str::parse::<usize>) {
            None => 100,
            Some(Ok(n)) if (1..=100).contains(&n) => n,
            Some(_) => return Err(invalid_input(&format!("{size} must be between 1 and 100."))),
        };
        let by_update = updated_after.is_some();
        let (lo, hi) = if by_update {
            (updated_after.unwrap_or(0), updated_before.unwrap_or(now))
        } else {
            (created_after.unwrap_or(0), created_before.unwrap_or(now))
        };
        Ok(OrdersWindow {
            by_update,
            lo,
            hi,
            per_page,
        })
    }

    /// The orders in the window.
    fn select(&self, orders: &[Order]) -> Vec<Order> {
        orders
            .iter()
            .filter(|o| {
                let t = if self.by_update {
                    o.updated_ms
                } else {
                    o.created_ms
                };
                t >= self.lo && t <= self.hi
            })
            .cloned()
            .collect()
    }
}

/// Orders v0 getOrders.
fn get_orders(st: &mut State, cx: &Ctx) -> Reply {
    // The token bucket of the usage plan: a request without a token is
    // refused with 429 QuotaExceeded and the rate in x-amzn-RateLimit-Limit.
    if !take_token(&mut st.get_orders_bucket, GET_ORDERS_RATE, cx.now) {
        return failed(
            Provider::Amazon,
            &Failure::RateLimited { retry_after: None },
        );
    }
    if let Err(a) = check_marketplaces(cx.param("MarketplaceIds"), "MarketplaceIds", 50) {
        return a;
    }
    // The model requires CreatedAfter or LastUpdatedAfter on every call,
    // a call with NextToken included.
    let given = |k: &str| lookup(cx.query, k).is_some_and(|v| !v.is_empty());
    if !given("CreatedAfter") && !given("LastUpdatedAfter") {
        return invalid_input("Either CreatedAfter or LastUpdatedAfter must be specified.");
    }
    let (query, offset) = match cx.param("NextToken") {
        Some(t) => match st.cursors.get(t) {
            Some(c) => (c.query.clone(), c.offset),
            None => return invalid_input("Invalid NextToken."),
        },
        None => (cx.query.to_vec(), 0),
    };
    let window = match OrdersWindow::of(&query, V0_NAMES, cx.now) {
        Ok(w) => w,
        Err(e) => return e,
    };
    let (by_update, hi, per_page) = (window.by_update, window.hi, window.per_page);
    let matching = window.select(&st.orders);
    let n = per_page.min(st.page_size);
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(n)
        .map(amazon_order)
        .collect();
    let mut payload = json!({"Orders": page});
    if by_update {
        payload["LastUpdatedBefore"] = json!(rfc3339(hi));
    } else {
        payload["CreatedBefore"] = json!(rfc3339(hi));
    }
    if offset + n < matching.len() {
        payload["NextToken"] = json!(st.cursor(&query, offset + n));
    }
    Reply::json(200, json!({ "payload": payload })).header("x-amzn-RateLimit-Limit", "0.0167")
}

/// Takes a token from `bucket` (refilled at `rate`, burst 20) at `now`;
/// `false` when there is none.
fn take_token(bucket: &mut (f64, i64), rate: f64, now: i64) -> bool {
    take_from(bucket, rate, GET_ORDERS_BURST, now)
}

/// Takes one token from a bucket of `burst` refilled at `rate` a second
/// from its time on (a time to come: nothing refills before it).
fn take_from(bucket: &mut (f64, i64), rate: f64, burst: f64, now: i64) -> bool {
    let (tokens, at) = *bucket;
    let tokens = (tokens + (now - at).max(0) as f64 / 1000.0 * rate).min(burst);
    let at = at.max(now);
    if tokens < 1.0 {
        *bucket = (tokens, at);
        return false;
    }
    *bucket = (tokens - 1.0, at);
    true
}

/// Orders API 2026-01-01 searchOrders, as its model documents it: exactly
/// one of createdAfter and lastUpdatedAfter, the `Before` bounds at least two
/// minutes old, maxResultsPerPage 1 to 100, and a paginationToken only
/// with every other parameter as on the request that produced it
/// (maxResultsPerPage and includedData excepted).
fn search_orders(st: &mut State, cx: &Ctx) -> Reply {
    if !take_token(&mut st.search_orders_bucket, SEARCH_ORDERS_RATE, cx.now) {
        return amazon_error(
            429,
            "QuotaExceeded",
            "You exceeded your quota for the requested resource.",
            "",
        )
        .header("x-amzn-RateLimit-Limit", "0.0056");
    }
    if let Some(ids) = cx.param("marketplaceIds") {
        if let Err(a) = check_marketplaces(Some(ids), "marketplaceIds", 50) {
            return a;
        }
    }
    // The parameters a page token binds: all but the page size, includedData
    // and the token itself.
    let bound: Vec<(String, String)> = cx
        .query
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "maxResultsPerPage" | "includedData" | "paginationToken"
            )
        })
        .cloned()
        .collect();
    let offset = match cx.param("paginationToken") {
        Some(t) => match st.cursors.get(t) {
            Some(c) if c.query == bound => c.offset,
            Some(_) => {
                return invalid_input(
                    "All parameters must be the same as in the request that produced the paginationToken.",
                )
            }
            None => return invalid_input("Invalid paginationToken."),
        },
        None => 0,
    };
    let window = match OrdersWindow::of(cx.query, V2026_NAMES, cx.now) {
        Ok(w) => w,
        Err(e) => return e,
    };
    let (by_update, hi, per_page) = (window.by_update, window.hi, window.per_page);
    let mut matching = window.select(&st.orders);
    matching.sort_by_key(|o| (o.updated_ms, o.id.clone()));
    let n = per_page.min(st.page_size);
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(n)
        .map(search_order)
        .collect();
    let mut body = json!({ "orders": page });
    body[if by_update {
        "lastUpdatedBefore"
    } else {
        "createdBefore"
    }] = json!(rfc3339(hi));
    if offset + n < matching.len() {
        body["pagination"] = json!({ "nextToken": st.cursor(&bound, offset + n) });
    }
    Reply::json(200, body).header("x-amzn-RateLimit-Limit", "0.0056")
}

/// One order in the 2026-01-01 shape (the required fields and the ones a
/// check reads), from the fake's v0 words.
fn search_order(o: &Order) -> Value {
    let status = match o.status.unwrap_or("Unshipped") {
        "Pending" => "PENDING",
        "Canceled" => "CANCELLED",
        "Shipped" => "SHIPPED",
        "PartiallyShipped" => "PARTIALLY_SHIPPED",
        _ => "UNSHIPPED",
    };
    let by = match o.channel.unwrap_or("MFN") {
        "AFN" => "AMAZON",
        _ => "MERCHANT",
    };
    json!({
        "orderId": o.id,
        "createdTime": rfc3339(o.created_ms),
        "lastUpdatedTime": rfc3339(o.updated_ms),
        "salesChannel": {"channelName": "AMAZON", "marketplaceId": AMAZON_MARKETPLACE, "marketplaceName": "Amazon.com"},
        "orderItems": [],
        "fulfillment": {"fulfillmentStatus": status, "fulfilledBy": by},
    })
}

fn amazon_order(o: &Order) -> Value {
    json!({
        "AmazonOrderId": o.id,
        "SellerOrderId": o.id,
        "PurchaseDate": rfc3339(o.created_ms),
        "LastUpdateDate": rfc3339(o.updated_ms),
        "OrderStatus": o.status.unwrap_or("Unshipped"),
        "FulfillmentChannel": o.channel.unwrap_or("MFN"),
        "SalesChannel": "Amazon.com",
        "ShipServiceLevel": "Std US D2D Dom",
        "OrderTotal": {"CurrencyCode": "USD", "Amount": "24.99"},
        "NumberOfItemsShipped": 0,
        "NumberOfItemsUnshipped": 1,
        "PaymentMethod": "Other",
        "PaymentMethodDetails": ["Standard"],
        "MarketplaceId": AMAZON_MARKETPLACE,
        "ShipmentServiceLevelCategory": "Standard",
        "OrderType": "StandardOrder",
        "EarliestShipDate": rfc3339(o.created_ms + 86_400_000),
        "LatestShipDate": rfc3339(o.created_ms + 2 * 86_400_000),
        "IsBusinessOrder": false,
        "IsPrime": false,
        "IsPremiumOrder": false,
        "IsGlobalExpressEnabled": false,
        "IsReplacementOrder": false,
        "IsSoldByAB": false,
        "IsISPU": false,
        "IsAccessPointOrder": false,
        "HasRegulatedItems": false,
    })
}

/// FBA Inventory v1 getInventorySummaries.
fn get_inventory_summaries(st: &mut State, cx: &Ctx) -> Reply {
    let (query, offset) = match cx.param("nextToken") {
        Some(t) => match st.cursors.get(t) {
            Some(c) => (c.query.clone(), c.offset),
            None => return invalid_input("Invalid nextToken."),
        },
        None => (cx.query.to_vec(), 0),
    };
    // Required on every call, the follow-up pages included.
    if cx.param("granularityType") != Some("Marketplace") {
        return invalid_input("granularityType is required and must be Marketplace.");
    }
    if cx.param("granularityId") != Some(AMAZON_MARKETPLACE) {
        return invalid_input("granularityId must be the marketplace ID.");
    }
    if let Err(a) = check_marketplaces(cx.param("marketplaceIds"), "marketplaceIds", 1) {
        return a;
    }
    let p = |k: &str| lookup(&query, k).filter(|v| !v.is_empty());
    let details = p("details") == Some("true");
    let skus: Option<Vec<String>> = p("sellerSkus")
        .map(|s| s.split(',').map(str::to_string).collect())
        .or_else(|| p("sellerSku").map(|s| vec![s.to_string()]));
    if skus.as_ref().is_some_and(|s| s.len() > 50) {
        return invalid_input("sellerSkus accepts at most 50 SKUs.");
    }
    let matching: Vec<Stock> = st
        .stock
        .iter()
        .filter(|s| skus.as_ref().is_none_or(|list| list.contains(&s.sku)))
        .cloned()
        .collect();
    let n = st.page_size.min(50);
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(n)
        .map(|s| fba_summary(s, details, cx.now))
        .collect();
    let mut body = json!({
        "payload": {
            "granularity": {"granularityType": "Marketplace", "granularityId": AMAZON_MARKETPLACE},
            "inventorySummaries": page,
        },
    });
    if offset + n < matching.len() {
        body["pagination"] = json!({"nextToken": st.cursor(&query, offset + n)});
    }
    Reply::json(200, body).header("x-amzn-RateLimit-Limit", "2.0")
}

fn fba_summary(s: &Stock, details: bool, now: i64) -> Value {
    let mut v = json!({
        "asin": format!("B0{:08}", fnv(&s.sku) % 100_000_000),
        "fnSku": format!("X00{:07}", fnv(&s.sku) % 10_000_000),
        "sellerSku": s.sku,
        "condition": "NewItem",
        "lastUpdatedTime": rfc3339(now - 3_600_000),
        "productName": format!("Product {}", s.sku),
        // Inbound plus everything in the fulfilment centres, reserved included.
        "totalQuantity": s.quantity + s.reserved,
    });
    // Documented: inventoryDetails only appears with details=true.
    if details {
        v["inventoryDetails"] = json!({
            "fulfillableQuantity": s.quantity,
            "inboundWorkingQuantity": 0,
            "inboundShippedQuantity": 0,
            "inboundReceivingQuantity": 0,
            "reservedQuantity": {
                "totalReservedQuantity": s.reserved,
                "pendingCustomerOrderQuantity": s.reserved,
                "pendingTransshipmentQuantity": 0,
                "fcProcessingQuantity": 0,
            },
            "researchingQuantity": {
                "totalResearchingQuantity": 0,
                "researchingQuantityBreakdown": [],
            },
            "unfulfillableQuantity": {
                "totalUnfulfillableQuantity": 0,
                "customerDamagedQuantity": 0,
                "warehouseDamagedQuantity": 0,
                "distributorDamagedQuantity": 0,
                "carrierDamagedQuantity": 0,
                "defectiveQuantity": 0,
                "expiredQuantity": 0,
            },
        });
    }
    v
}

// ---------------------------------------------------------------- Shopee

/// Status codes, as far as Shopee's public docs tell: 403 for failed
/// authentication (wrong sign, stale timestamp, bad token), 400 for bad
/// parameters. Clients are told to judge by the body's `error` either way.
fn shopee_error(status: u16, error: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": error, "message": message, "request_id": request_id()}),
    )
    .code(error)
}

fn shopee_param(message: &str) -> Reply {
    shopee_error(400, "error_param", message)
}

fn shopee_ok(response: Value) -> Reply {
    Reply::json(
        200,
        json!({"error": "", "message": "", "warning": "", "request_id": request_id(), "response": response}),
    )
}

/// `sign` of a shop-level call: lower-case hex HMAC-SHA256 with the partner
/// key over partner_id, path, timestamp, access_token and shop_id.
pub fn shopee_sign(
    partner_key: &str,
    partner_id: u64,
    path: &str,
    timestamp: i64,
    access_token: &str,
    shop_id: u64,
) -> String {
    hmac_hex(
        partner_key,
        &format!("{partner_id}{path}{timestamp}{access_token}{shop_id}"),
    )
}

/// Lower-case hex HMAC-SHA256.
fn hmac_hex(key: &str, data: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(data.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `sign` of a public call (no shop, no access token, such as the token
/// refresh): lower-case hex HMAC-SHA256 with the partner key over
/// partner_id, path and timestamp.
pub fn shopee_public_sign(
    partner_key: &str,
    partner_id: u64,
    path: &str,
    timestamp: i64,
) -> String {
    hmac_hex(partner_key, &format!("{partner_id}{path}{timestamp}"))
}

/// What every call must carry: the common parameters `required`, the
/// partner's id, and a timestamp at most 5 minutes off. `None` means go on.
fn shopee_common(cx: &Ctx, required: &[&str]) -> Option<Reply> {
    for k in required {
        if cx.param(k).is_none_or(str::is_empty) {
            return Some(shopee_param(&format!("Missing {k}.")));
        }
    }
    let partner_id = cx.param("partner_id").and_then(|v| v.parse::<u64>().ok());
    if partner_id != Some(SHOPEE_PARTNER_ID) {
        return Some(shopee_param("Invalid partner_id."));
    }
    let Some(timestamp) = cx.param("timestamp").and_then(|v| v.parse::<i64>().ok()) else {
        return Some(shopee_error(403, "error_param", "Invalid timestamp"));
    };
    if (cx.now / 1000 - timestamp).abs() > SHOPEE_TIMESTAMP_WINDOW {
        return Some(shopee_error(403, "error_param", "Invalid timestamp"));
    }
    None
}

fn shopee(st: &mut State, cx: &Ctx) -> Reply {
    if (cx.req.method.as_str(), cx.path) == ("POST", "/api/v2/auth/access_token/get") {
        return shopee_refresh(st, cx);
    }
    let known = [
        "/api/v2/order/get_order_list",
        "/api/v2/order/get_order_detail",
        "/api/v2/product/get_item_base_info",
        "/api/v2/product/get_model_list",
    ];
    if cx.req.method != "GET" || !known.contains(&cx.path) {
        return shopee_error(404, "error_not_found", "Wrong api path or method.");
    }
    let common = ["partner_id", "timestamp", "access_token", "shop_id", "sign"];
    if let Some(refused) = shopee_common(cx, &common) {
        return refused;
    }
    let token = cx.param("access_token").unwrap_or_default();
    let shop_id = cx.param("shop_id").unwrap_or_default();
    // The base string is made of the values exactly as sent.
    let expected = hmac_hex(
        SHOPEE_PARTNER_KEY,
        &format!(
            "{}{}{}{token}{shop_id}",
            cx.param("partner_id").unwrap_or_default(),
            cx.path,
            cx.param("timestamp").unwrap_or_default()
        ),
    );
    if cx.param("sign") != Some(expected.as_str()) {
        return shopee_error(403, "error_sign", "Wrong sign.");
    }
    match st.token_state(Some(token), cx.now) {
        TokenState::Live(_) => {}
        _ => {
            let code = st.shopee_refused;
            return shopee_error(403, code, "Invalid access_token.");
        }
    }
    if shop_id != SHOPEE_SHOP_ID.to_string() {
        return shopee_error(403, "error_auth", "Invalid shop_id.");
    }
    match cx.path {
        "/api/v2/order/get_order_list" => shopee_order_list(st, cx),
        "/api/v2/order/get_order_detail" => shopee_order_detail(st, cx),
        "/api/v2/product/get_item_base_info" => shopee_item_base_info(st, cx),
        _ => shopee_model_list(st, cx),
    }
}

/// `GetAccessToken` with a refresh token: a public call, signed over
/// partner_id, path and timestamp only, with a JSON body of
/// `refresh_token`, `partner_id` and `shop_id` (integers). The refresh
/// token must be the newest one; each use rotates it.
fn shopee_refresh(st: &mut State, cx: &Ctx) -> Reply {
    if let Some(refused) = shopee_common(cx, &["partner_id", "timestamp", "sign"]) {
        return refused;
    }
    let expected = hmac_hex(
        SHOPEE_PARTNER_KEY,
        &format!(
            "{}{}{}",
            cx.param("partner_id").unwrap_or_default(),
            cx.path,
            cx.param("timestamp").unwrap_or_default()
        ),
    );
    if cx.param("sign") != Some(expected.as_str()) {
        return shopee_error(403, "error_sign", "Wrong sign.");
    }
    let json = cx
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json"));
    let body: Value = match serde_json::from_slice(&cx.req.body) {
        Ok(v @ Value::Object(_)) if json => v,
        _ => return shopee_param("Request body must be a JSON object."),
    };
    let Some(refresh) = body["refresh_token"].as_str().filter(|t| !t.is_empty()) else {
        return shopee_param("Missing refresh_token.");
    };
    if body["partner_id"].as_u64() != Some(SHOPEE_PARTNER_ID) {
        return shopee_param("Invalid partner_id.");
    }
    match body["shop_id"].as_u64() {
        Some(SHOPEE_SHOP_ID) => {}
        Some(_) => return shopee_param("Invalid shop_id."),
        None => return shopee_param("Missing shop_id."),
    }
    if refresh != st.refresh {
        return shopee_error(403, "error_auth", "Invalid refresh_token");
    }
    let (access_token, refresh_token) = st.refreshed("", cx.now);
    Reply::json(
        200,
        json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expire_in": st.expires_in,
            "partner_id": SHOPEE_PARTNER_ID,
            "shop_id": SHOPEE_SHOP_ID,
            "request_id": request_id(),
            "error": "",
            "message": "",
        }),
    )
}

fn shopee_order_list(st: &mut State, cx: &Ctx) -> Reply {
    let field = match cx.param("time_range_field") {
        Some(f @ ("create_time" | "update_time")) => f,
        _ => return shopee_param("time_range_field must be create_time or update_time."),
    };
    let from = cx.param("time_from").and_then(|v| v.parse::<i64>().ok());
    let to = cx.param("time_to").and_then(|v| v.parse::<i64>().ok());
    let (Some(from), Some(to)) = (from, to) else {
        return shopee_param("time_from and time_to are required unix timestamps.");
    };
    if to < from || to - from > 15 * 86_400 {
        return shopee_param(
            "The time range between time_from and time_to must be at most 15 days.",
        );
    }
    let page_size = match cx.param("page_size").map(str::parse::<usize>) {
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        _ => return shopee_param("page_size must be between 1 and 100."),
    };
    let Some(cursor) = cx.param("cursor") else {
        return shopee_param("Missing cursor.");
    };
    let offset = if cursor.is_empty() {
        0
    } else {
        match cursor.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return shopee_param("Invalid cursor."),
        }
    };
    let with_status = cx
        .param("response_optional_fields")
        .is_some_and(|f| f.split(',').any(|x| x == "order_status"));
    // time_from and time_to are both inclusive, in seconds.
    let matching: Vec<&Order> = st
        .orders
        .iter()
        .filter(|o| {
            let t = if field == "update_time" {
                o.updated_ms
            } else {
                o.created_ms
            } / 1000;
            t >= from && t <= to
        })
        .collect();
    let n = page_size.min(st.page_size);
    let list: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(n)
        .map(|o| {
            let mut v = json!({"order_sn": o.id});
            if with_status {
                v["order_status"] = json!(o.status.unwrap_or("READY_TO_SHIP"));
            }
            v
        })
        .collect();
    let more = offset + n < matching.len();
    shopee_ok(json!({
        "more": more,
        "next_cursor": if more { (offset + n).to_string() } else { String::new() },
        "order_list": list,
    }))
}

fn shopee_order_detail(st: &mut State, cx: &Ctx) -> Reply {
    let Some(list) = cx.param("order_sn_list").filter(|v| !v.is_empty()) else {
        return shopee_param("order_sn_list is required.");
    };
    let sns: Vec<&str> = list.split(',').collect();
    if sns.len() > 50 {
        return shopee_param("order_sn_list accepts at most 50 order_sn.");
    }
    let orders: Vec<Value> = sns
        .iter()
        .filter_map(|sn| st.orders.iter().find(|o| o.id == *sn))
        .map(|o| {
            json!({
                "order_sn": o.id,
                "region": "SG",
                "currency": "SGD",
                "cod": false,
                "order_status": o.status.unwrap_or("READY_TO_SHIP"),
                "create_time": o.created_ms / 1000,
                "update_time": o.updated_ms / 1000,
                "days_to_ship": 3,
                "ship_by_date": o.created_ms / 1000 + 3 * 86_400,
                "message_to_seller": "",
                "reverse_shipping_fee": 0,
            })
        })
        .collect();
    shopee_ok(json!({ "order_list": orders }))
}

fn shopee_item_base_info(st: &mut State, cx: &Ctx) -> Reply {
    let Some(list) = cx.param("item_id_list").filter(|v| !v.is_empty()) else {
        return shopee_param("item_id_list is required.");
    };
    let ids: Result<Vec<u64>, _> = list.split(',').map(str::parse::<u64>).collect();
    let Ok(ids) = ids else {
        return shopee_param("item_id_list must hold item ids.");
    };
    if ids.len() > 50 {
        return shopee_param("item_id_list accepts at most 50 items.");
    }
    let mut items = Vec::new();
    for id in ids {
        let of_item: Vec<&Stock> = st.stock.iter().filter(|s| s.item_id == id).collect();
        let Some(first) = of_item.first() else {
            continue;
        };
        let has_model = of_item.iter().any(|s| s.model_id.is_some());
        let mut item = json!({
            "item_id": id,
            "category_id": 100_017,
            "item_name": format!("Item {id}"),
            "item_sku": if has_model { String::new() } else { first.sku.clone() },
            "create_time": 1_700_000_000,
            "update_time": 1_700_000_000,
            "item_status": "NORMAL",
            "has_model": has_model,
        });
        // Stock of an item with variations is per model (get_model_list).
        if !has_model {
            item["stock_info_v2"] = shopee_stock(first);
        }
        items.push(item);
    }
    shopee_ok(json!({ "item_list": items }))
}

fn shopee_stock(s: &Stock) -> Value {
    json!({
        "summary_info": {
            "total_reserved_stock": s.reserved,
            "total_available_stock": s.quantity,
        },
        "seller_stock": [{"location_id": "SGZ", "stock": s.quantity}],
    })
}

fn shopee_model_list(st: &mut State, cx: &Ctx) -> Reply {
    let Some(id) = cx.param("item_id").and_then(|v| v.parse::<u64>().ok()) else {
        return shopee_param("item_id is required.");
    };
    let models: Vec<&Stock> = st
        .stock
        .iter()
        .filter(|s| s.item_id == id && s.model_id.is_some())
        .collect();
    if !st.stock.iter().any(|s| s.item_id == id) {
        return shopee_error(400, "error_item_not_found", "Item not found.");
    }
    let options: Vec<String> = models.iter().map(|s| s.sku.clone()).collect();
    let list: Vec<Value> = models
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "model_id": s.model_id,
                "model_sku": s.sku,
                "tier_index": [i],
                "price_info": [{"current_price": 9.9, "original_price": 9.9, "currency": "SGD"}],
                "stock_info_v2": shopee_stock(s),
            })
        })
        .collect();
    shopee_ok(json!({
        "tier_variation": [{"name": "Variant", "option_list": options.iter().map(|o| json!({"option": o})).collect::<Vec<_>>()}],
        "model": list,
    }))
}

// ---------------------------------------------------------------- Walmart

/// The gateway's error list (`{"error": [...]}`), for token and header errors.
fn walmart_gateway(status: u16, code: &str, field: &str, description: &str) -> Reply {
    let error = walmart_error(code, field, description, false);
    Reply::json(status, json!({ "error": [error] })).code(code)
}

/// The Orders API's own errors (`{"errors": {"error": [...]}}`).
fn walmart_errors(status: u16, code: &str, field: &str, description: &str) -> Reply {
    let error = walmart_error(code, field, description, status == 404);
    Reply::json(status, json!({"errors": {"error": [error]}})).code(code)
}

/// One entry of Walmart's error lists; "not found" is information, not an
/// error in the data.
fn walmart_error(code: &str, field: &str, description: &str, not_found: bool) -> Value {
    json!({
        "code": code,
        "field": field,
        "description": description,
        "info": description,
        "severity": if not_found { "INFO" } else { "ERROR" },
        "category": if not_found { "APPLICATION" } else { "DATA" },
        "causes": [],
        "errorIdentifiers": {},
    })
}

fn walmart(st: &mut State, cx: &Ctx) -> Reply {
    for h in ["WM_SVC.NAME", "WM_QOS.CORRELATION_ID"] {
        if cx.header(h).is_none_or(str::is_empty) {
            return walmart_gateway(
                400,
                "INVALID_REQUEST_HEADER.GMP_GATEWAY_API",
                h,
                &format!("{h} set null or invalid"),
            );
        }
    }
    match (cx.req.method.as_str(), cx.path) {
        ("POST", "/v3/token") => walmart_token(st, cx),
        ("GET", "/v3/orders") => {
            if !matches!(
                st.token_state(cx.header("WM_SEC.ACCESS_TOKEN"), cx.now),
                TokenState::Live(_)
            ) {
                return walmart_gateway(
                    401,
                    "UNAUTHORIZED.GMP_GATEWAY_API",
                    "UNAUTHORIZED",
                    "Unauthorized token or token is expired",
                );
            }
            // The orders API's bucket: 5,000 calls a minute per seller,
            // refilled continuously, its state in every answer's headers.
            let bucket = &mut st.walmart_orders_bucket;
            let allowed = take_from(bucket, WALMART_ORDERS_RATE, WALMART_ORDERS_BURST, cx.now);
            let left = bucket.0.floor().max(0.0);
            let refill_ms = ((1.0 - bucket.0.fract()) / WALMART_ORDERS_RATE * 1000.0).ceil() as i64;
            let next = (bucket.1 + refill_ms).to_string();
            let reply = if allowed {
                walmart_orders(st, cx)
            } else {
                walmart_gateway(
                    429,
                    "REQUEST_THRESHOLD_VIOLATED.GMP_GATEWAY_API",
                    "REQUEST_THRESHOLD_VIOLATED",
                    "Too Many Requests",
                )
            };
            reply
                .header("x-current-token-count", &format!("{left}"))
                .header("x-next-replenishment-time", &next)
        }
        _ => walmart_errors(
            404,
            "CONTENT_NOT_FOUND.GMP_GATEWAY_API",
            "path",
            "Resource not found",
        ),
    }
}

fn walmart_token(st: &mut State, cx: &Ctx) -> Reply {
    let accept = cx.header("accept").unwrap_or_default();
    if accept.is_empty() {
        return walmart_gateway(
            400,
            "INVALID_REQUEST_HEADER.GMP_GATEWAY_API",
            "Accept",
            "Accept set null or invalid",
        );
    }
    if cx.basic() != Some((WALMART_CLIENT_ID.into(), WALMART_CLIENT_SECRET.into())) {
        return walmart_gateway(
            401,
            "UNAUTHORIZED.GMP_GATEWAY_API",
            "clientId",
            "Invalid client credentials",
        );
    }
    if !cx.is_form() || lookup(&cx.form(), "grant_type") != Some("client_credentials") {
        return walmart_gateway(
            400,
            "INVALID_REQUEST_CONTENT.GMP_GATEWAY_API",
            "grant_type",
            "grant_type must be client_credentials",
        );
    }
    let id = st.next_id();
    let token = st.issue_token(
        format!("eyJraWQiOiJmYWtlIn0.{id:08x}.c2lnbmF0dXJl"),
        Vec::new(),
        cx.now,
    );
    // The token API answers XML unless JSON is asked for.
    if !accept.contains("application/json") {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><OAuthTokenDTO><accessToken>{token}</accessToken><tokenType>Bearer</tokenType><expiresIn>{}</expiresIn></OAuthTokenDTO>",
            st.expires_in
        );
        return HttpReply::new(200, xml)
            .header("content-type", "application/xml")
            .into();
    }
    Reply::json(
        200,
        json!({"access_token": token, "token_type": "Bearer", "expires_in": st.expires_in}),
    )
}

/// An order's last modification: the latest status date of its lines.
fn walmart_modified(o: &Order) -> i64 {
    o.updated_ms.max(o.created_ms)
}

fn walmart_orders(st: &mut State, cx: &Ctx) -> Reply {
    let time = |k: &str| -> Result<Option<i64>, Reply> {
        match cx.param(k).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => parse_time(v).map(Some).ok_or_else(|| {
                walmart_errors(
                    400,
                    "INVALID_REQUEST_PARAM.GMP_ORDER_API",
                    k,
                    &format!("Invalid {k}: {v}"),
                )
            }),
        }
    };
    let bounds = (
        time("lastModifiedStartDate"),
        time("lastModifiedEndDate"),
        time("createdStartDate"),
        time("createdEndDate"),
    );
    let (mod_from, mod_to, created_from, created_to) = match bounds {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return e,
    };
    // Without createdStartDate Walmart searches the orders created in the
    // last 7 days only (and keeps 180 days).
    let created_from = created_from.or(Some(cx.now - 7 * 86_400_000));
    let limit = match cx.param("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=200).contains(&n) => n,
        Some(_) => {
            return walmart_errors(
                400,
                "INVALID_REQUEST_PARAM.GMP_ORDER_API",
                "limit",
                "limit must be 1 to 200",
            )
        }
    };
    // A follow-up page is the nextCursor query string: same filters plus
    // hasMoreElements and the index of the next order.
    let offset = if cx.param("hasMoreElements") == Some("true") {
        match cx.param("soIndex").and_then(|v| v.parse::<usize>().ok()) {
            Some(n) => n,
            None => {
                return walmart_errors(
                    400,
                    "INVALID_REQUEST_PARAM.GMP_ORDER_API",
                    "soIndex",
                    "Invalid cursor",
                )
            }
        }
    } else {
        0
    };
    let matching: Vec<&Order> = st
        .orders
        .iter()
        .filter(|o| {
            let m = walmart_modified(o);
            mod_from.is_none_or(|t| m >= t)
                && mod_to.is_none_or(|t| m <= t)
                && created_from.is_none_or(|t| o.created_ms >= t)
                && created_to.is_none_or(|t| o.created_ms <= t)
        })
        .collect();
    if matching.is_empty() {
        // Walmart answers an empty search with 404, not an empty list.
        return walmart_errors(
            404,
            "CONTENT_NOT_FOUND.GMP_ORDER_API",
            "data",
            "Failed when called getAllOrders. Orders not found for given search parameters",
        );
    }
    let n = limit.min(st.page_size);
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(n)
        .map(|o| walmart_order(o))
        .collect();
    let mut meta = json!({"totalCount": matching.len(), "limit": limit});
    if offset + n < matching.len() {
        let mut next = format!(
            "?limit={limit}&hasMoreElements=true&soIndex={}&poIndex={}&sellerId=101",
            offset + n,
            offset + n + 1
        );
        for k in [
            "lastModifiedStartDate",
            "lastModifiedEndDate",
            "createdStartDate",
            "createdEndDate",
        ] {
            if let Some(v) = cx.param(k) {
                next.push_str(&format!("&{k}={}", encode(v)));
            }
        }
        meta["nextCursor"] = json!(next);
    }
    Reply::json(
        200,
        json!({"list": {"meta": meta, "elements": {"order": page}}}),
    )
}

fn walmart_order(o: &Order) -> Value {
    let line = |number: &str, status_date: i64, status: &str| {
        json!({
            "lineNumber": number,
            "item": {"productName": format!("Product of {}", o.id), "sku": format!("SKU-{number}")},
            "charges": {"charge": [{
                "chargeType": "PRODUCT",
                "chargeName": "ItemPrice",
                "chargeAmount": {"currency": "USD", "amount": 12.5},
                "tax": {"taxName": "Tax1", "taxAmount": {"currency": "USD", "amount": 1.0}},
            }]},
            "orderLineQuantity": {"unitOfMeasurement": "EACH", "amount": "1"},
            "statusDate": status_date,
            "orderLineStatuses": {"orderLineStatus": [{
                "status": status,
                "statusQuantity": {"unitOfMeasurement": "EACH", "amount": "1"},
            }]},
            "fulfillment": {"fulfillmentOption": "S2H", "shipMethod": "STANDARD"},
        })
    };
    // Line 1 still carries the creation date; line 2 the latest change, so
    // the order's last modification is the newest line status date.
    json!({
        "purchaseOrderId": format!("10{}", fnv(&o.id) % 100_000_000),
        "customerOrderId": o.id,
        "customerEmailId": "relay@relay.walmart.com",
        "orderType": "REGULAR",
        "orderDate": o.created_ms,
        "shippingInfo": {
            "phone": "5555555555",
            "estimatedDeliveryDate": o.created_ms + 5 * 86_400_000,
            "estimatedShipDate": o.created_ms + 86_400_000,
            "methodCode": "Standard",
            "postalAddress": {"name": "A Buyer", "address1": "1 Main St", "city": "Bentonville", "state": "AR", "postalCode": "72712", "country": "USA", "addressType": "RESIDENTIAL"},
        },
        "orderLines": {"orderLine": [
            line("1", o.created_ms, "Created"),
            line("2", walmart_modified(o), "Acknowledged"),
        ]},
        "shipNode": {"type": "SellerFulfilled"},
    })
}

// ---------------------------------------------------------------- eBay

fn ebay_error(status: u16, id: u32, domain: &str, message: &str) -> Reply {
    ebay_error_long(status, id, domain, message, message)
}

fn ebay_error_long(status: u16, id: u32, domain: &str, message: &str, long: &str) -> Reply {
    Reply::json(
        status,
        json!({"errors": [{
            "errorId": id,
            "domain": domain,
            "category": "REQUEST",
            "message": message,
            "longMessage": long,
        }]}),
    )
    .code(&id.to_string())
}

fn ebay(st: &mut State, cx: &Ctx) -> Reply {
    match (cx.req.method.as_str(), cx.path) {
        ("POST", "/identity/v1/oauth2/token") => ebay_token(st, cx),
        ("GET", "/sell/fulfillment/v1/order") => {
            let token = cx
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "));
            match st.token_state(token, cx.now) {
                TokenState::Live(scopes) => {
                    let fulfillment = scopes.iter().any(|s| {
                        s.ends_with("/sell.fulfillment") || s.ends_with("/sell.fulfillment.readonly")
                    });
                    if !fulfillment {
                        return ebay_error_long(
                            403,
                            1100,
                            "ACCESS",
                            "Access denied",
                            "Insufficient permissions to fulfill the request.",
                        );
                    }
                    ebay_orders(st, cx)
                }
                _ => ebay_error_long(
                    401,
                    1001,
                    "OAuth",
                    "Invalid access token",
                    "Invalid access token. Check the value of the Authorization HTTP request header.",
                ),
            }
        }
        _ => ebay_error(404, 2002, "ACCESS", "Resource not found"),
    }
}

/// Refresh token grant: client credentials in Basic auth, scopes optional
/// but no wider than the consent.
fn ebay_token(st: &mut State, cx: &Ctx) -> Reply {
    if cx.basic() != Some((EBAY_CLIENT_ID.into(), EBAY_CLIENT_SECRET.into())) {
        return oauth_error(401, "invalid_client", "client authentication failed");
    }
    if !cx.is_form() {
        return oauth_error(
            400,
            "invalid_request",
            "request is missing a required parameter or malformed",
        );
    }
    let form = cx.form();
    match lookup(&form, "grant_type") {
        Some("refresh_token") => {}
        Some(_) => {
            return oauth_error(
                400,
                "unsupported_grant_type",
                "grant type in request is not supported by the authorization server",
            )
        }
        None => {
            return oauth_error(
                400,
                "invalid_request",
                "request is missing a required parameter or malformed",
            )
        }
    }
    if lookup(&form, "refresh_token") != Some(EBAY_REFRESH_TOKEN) {
        return oauth_error(
            400,
            "invalid_grant",
            "the provided authorization refresh token is invalid or was issued to another client",
        );
    }
    let scopes: Vec<String> = match lookup(&form, "scope").filter(|s| !s.trim().is_empty()) {
        None => EBAY_GRANTED_SCOPES.iter().map(|s| s.to_string()).collect(),
        Some(s) => s.split_whitespace().map(str::to_string).collect(),
    };
    if scopes
        .iter()
        .any(|s| !EBAY_GRANTED_SCOPES.contains(&s.as_str()))
    {
        return oauth_error(400, "invalid_scope", "The requested scope is invalid, unknown, malformed, or exceeds the scope granted to the client");
    }
    let id = st.next_id();
    let token = st.issue_token(
        format!("v^1.1#i^1#p^3#I^3#r^0#f^0#t^H4sIAAAA{id:08x}"),
        scopes,
        cx.now,
    );
    Reply::json(
        200,
        json!({"access_token": token, "expires_in": st.expires_in, "token_type": "User Access Token"}),
    )
}

/// eBay filter dates: exactly `YYYY-MM-DDThh:mm:ss.sssZ`.
fn ebay_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let shape = b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    if shape {
        parse_time(s)
    } else {
        None
    }
}

fn ebay_orders(st: &mut State, cx: &Ctx) -> Reply {
    let bad = |message: &str| ebay_error(400, 30800, "API_FULFILLMENT", message);
    let mut modified: Option<(i64, Option<i64>)> = None;
    let mut created: Option<(i64, Option<i64>)> = None;
    if let Some(filter) = cx.param("filter").filter(|f| !f.is_empty()) {
        for part in filter.split(',') {
            let Some((name, value)) = part.split_once(':') else {
                return bad(&format!("Invalid filter: {part}"));
            };
            let range = || -> Option<(i64, Option<i64>)> {
                let inner = value.strip_prefix('[')?.strip_suffix(']')?;
                let (from, to) = inner.split_once("..")?;
                let from = ebay_date(from)?;
                let to = if to.is_empty() {
                    None
                } else {
                    Some(ebay_date(to)?)
                };
                Some((from, to))
            };
            match name {
                "lastmodifieddate" => match range() {
                    Some(r) => modified = Some(r),
                    None => {
                        return bad(&format!(
                            "Invalid filter value for lastmodifieddate: {value}"
                        ))
                    }
                },
                "creationdate" => match range() {
                    Some(r) => created = Some(r),
                    None => return bad(&format!("Invalid filter value for creationdate: {value}")),
                },
                "orderfulfillmentstatus" => {}
                _ => return bad(&format!("Invalid filter name: {name}")),
            }
        }
    }
    if modified.is_some() && created.is_some() {
        return bad("creationdate and lastmodifieddate cannot be used together.");
    }
    let limit = match cx.param("limit").map(str::parse::<usize>) {
        None => 50,
        Some(Ok(n)) if (1..=200).contains(&n) => n,
        Some(_) => return bad("limit must be between 1 and 200."),
    };
    let offset = match cx.param("offset").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return bad("offset must be a non-negative integer."),
    };
    let within = |t: i64, r: Option<(i64, Option<i64>)>| {
        r.is_none_or(|(from, to)| t >= from && to.is_none_or(|to| t <= to))
    };
    let matching: Vec<&Order> = st
        .orders
        .iter()
        .filter(|o| within(o.updated_ms, modified) && within(o.created_ms, created))
        .collect();
    let n = limit.min(st.page_size);
    let link = |offset: usize| {
        let mut q = String::new();
        if let Some(f) = cx.param("filter") {
            q.push_str(&format!("filter={}&", encode(f)));
        }
        format!(
            "{}/sell/fulfillment/v1/order?{q}limit={limit}&offset={offset}",
            cx.base
        )
    };
    let orders: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(n)
        .map(|o| {
            json!({
                "orderId": o.id,
                "legacyOrderId": format!("{}-{}", fnv(&o.id) % 1_000_000_000_000, 10_000 + fnv(&o.id) % 90_000),
                "creationDate": rfc3339_millis(o.created_ms),
                "lastModifiedDate": rfc3339_millis(o.updated_ms),
                "orderFulfillmentStatus": "NOT_STARTED",
                "orderPaymentStatus": "PAID",
                "sellerId": "rollback_seller",
                "buyer": {"username": "a_buyer"},
                "pricingSummary": {"total": {"value": "24.99", "currency": "USD"}},
                "lineItems": [{"lineItemId": format!("{}1", fnv(&o.id) % 100_000_000), "sku": "SKU-1", "quantity": 1}],
            })
        })
        .collect();
    let mut body = json!({
        "href": link(offset),
        "total": matching.len(),
        "limit": limit,
        "offset": offset,
        "orders": orders,
        "warnings": [],
    });
    if offset + n < matching.len() {
        body["next"] = json!(link(offset + n));
    }
    if offset > 0 {
        body["prev"] = json!(link(offset.saturating_sub(limit)));
    }
    Reply::json(200, body)
}

// ---------------------------------------------------------------- Lazada

/// Lazada's error shape, always with HTTP 200: `type` is `ISV` for the
/// caller's mistakes, `ISP` for its backend.
fn lazada_error(kind: &str, code: &str, message: &str) -> Reply {
    Reply::json(
        200,
        json!({"type": kind, "code": code, "message": message, "request_id": request_id()}),
    )
    .code(code)
}

fn lazada_ok(data: Value) -> Reply {
    Reply::json(
        200,
        json!({"code": "0", "data": data, "request_id": request_id()}),
    )
}

/// `sign`: upper-case hex HMAC-SHA256 with the app secret over the API
/// path followed by every other parameter's key and value, sorted by key.
pub fn lazada_sign(app_secret: &str, api_path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "sign").collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut base = api_path.to_string();
    for (k, v) in sorted {
        base.push_str(k);
        base.push_str(v);
    }
    hmac_hex(app_secret, &base).to_ascii_uppercase()
}

/// Lazada's time: `2024-05-01 17:58:12 +0800`, as its live API writes
/// `created_at` and `updated_at` (Singapore time).
pub fn lazada_time(ms: i64) -> String {
    let local = rfc3339(ms + 8 * 3_600_000);
    format!("{} {} +0800", &local[..10], &local[11..19])
}

/// GetOrders' dates: ISO 8601 with a numeric offset,
/// `YYYY-MM-DDTHH:mm:ss±HH:MM`, nothing else.
fn lazada_query_time(v: &str) -> Option<i64> {
    let b = v.as_bytes();
    let shaped = b.len() == 25 && b[10] == b'T' && matches!(b[19], b'+' | b'-') && b[22] == b':';
    shaped.then(|| parse_time(v)).flatten()
}

/// The common parameters of every call (from the query, or a form body):
/// the app, a timestamp within two hours, `sign_method` and a valid `sign`
/// over `api_path`. `None` means go on.
fn lazada_common(cx: &Ctx, api_path: &str, params: &[(String, String)]) -> Option<Reply> {
    for k in ["app_key", "timestamp", "sign_method", "sign"] {
        if lookup(params, k).is_none_or(str::is_empty) {
            return Some(lazada_error(
                "ISV",
                "MissingParameter",
                &format!("The input parameter \"{k}\" that is mandatory for processing this request is not supplied"),
            ));
        }
    }
    if lookup(params, "app_key") != Some(LAZADA_APP_KEY) {
        return Some(lazada_error(
            "ISV",
            "InvalidAppKey",
            "The specified app key is invalid",
        ));
    }
    let fresh = lookup(params, "timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|t| (cx.now - t).abs() <= LAZADA_TIMESTAMP_WINDOW_MS);
    if !fresh {
        return Some(lazada_error(
            "ISV",
            "InvalidTimestamp",
            "The specified timestamp is invalid or out of the allowed range",
        ));
    }
    if lookup(params, "sign_method") != Some("sha256") {
        return Some(lazada_error(
            "ISV",
            "InvalidSignMethod",
            "The specified sign method is not supported",
        ));
    }
    if lookup(params, "sign") != Some(lazada_sign(LAZADA_APP_SECRET, api_path, params).as_str()) {
        return Some(lazada_error(
            "ISV",
            "IncompleteSignature",
            "The request signature does not conform to platform standards",
        ));
    }
    None
}

fn lazada(st: &mut State, cx: &Ctx) -> Reply {
    match (cx.req.method.as_str(), cx.path) {
        ("GET" | "POST", "/rest/auth/token/refresh") => lazada_refresh(st, cx),
        ("GET", "/rest/orders/get") => {
            let params = cx.query.to_vec();
            if let Some(refused) = lazada_common(cx, "/orders/get", &params) {
                return refused;
            }
            match st.token_state(cx.param("access_token"), cx.now) {
                TokenState::Live(_) => lazada_orders(st, cx),
                TokenState::Missing => lazada_error(
                    "ISV",
                    "MissingParameter",
                    "The input parameter \"access_token\" that is mandatory for processing this request is not supplied",
                ),
                _ => lazada_error(
                    "ISV",
                    "IllegalAccessToken",
                    "The specified access token is invalid or expired",
                ),
            }
        }
        _ => lazada_error("ISV", "InvalidApiPath", "The specified API path is invalid"),
    }
}

/// `/auth/token/refresh`: signed like any call, with `refresh_token`
/// instead of an access token. The refresh token must be the newest one;
/// each use rotates it.
fn lazada_refresh(st: &mut State, cx: &Ctx) -> Reply {
    let mut params = cx.query.to_vec();
    if cx.is_form() {
        params.extend(cx.form());
    }
    if let Some(refused) = lazada_common(cx, "/auth/token/refresh", &params) {
        return refused;
    }
    let Some(refresh) = lookup(&params, "refresh_token").filter(|t| !t.is_empty()) else {
        return lazada_error(
            "ISV",
            "MissingParameter",
            "The input parameter \"refresh_token\" that is mandatory for processing this request is not supplied",
        );
    };
    if refresh != st.refresh {
        return lazada_error(
            "ISV",
            "IllegalRefreshToken",
            "The specified refresh token is invalid or expired",
        );
    }
    let (access_token, refresh_token) = st.refreshed("50000", cx.now);
    Reply::json(
        200,
        json!({
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expires_in": st.expires_in,
            "refresh_expires_in": 1_209_600,
            "country": "sg",
            "account_platform": "seller_center",
            "account": "seller@example.com",
            "country_user_info": [{"country": "sg", "user_id": "100001", "seller_id": "1000010001", "short_code": "SG1A2B3C"}],
            "code": "0",
            "request_id": request_id(),
        }),
    )
}

/// GetOrders: `update_after` or `created_after` (ISO 8601), `sort_by`
/// `created_at`|`updated_at`, `sort_direction` `ASC`|`DESC`, `limit` at most
/// 100, `offset` at most 5,000, an optional `status`; `count` and
/// `countTotal` as strings, as the documented example answers.
fn lazada_orders(st: &mut State, cx: &Ctx) -> Reply {
    let date = |name: &str| -> Result<Option<i64>, Reply> {
        match cx.param(name) {
            None => Ok(None),
            Some(v) => lazada_query_time(v).map(Some).ok_or_else(|| {
                lazada_error("ISV", "17", &format!("E017: \"{v}\" Invalid Date Format"))
            }),
        }
    };
    let (update_after, created_after) = match (date("update_after"), date("created_after")) {
        (Ok(u), Ok(c)) => (u, c),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let (update_before, created_before) = match (date("update_before"), date("created_before")) {
        (Ok(u), Ok(c)) => (u, c),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if update_after.is_none() && created_after.is_none() {
        return lazada_error(
            "ISV",
            "MissingParameter",
            "Either UpdatedAfter or CreatedAfter is mandatory",
        );
    }
    let limit = match cx.param("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            let v = cx.param("limit").unwrap_or_default();
            return lazada_error("ISV", "19", &format!("E019: \"{v}\" Invalid Limit"));
        }
    };
    let offset = match cx.param("offset").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= 5000 => n,
        Some(_) => {
            let v = cx.param("offset").unwrap_or_default();
            return lazada_error("ISV", "14", &format!("E014: \"{v}\" Invalid Offset"));
        }
    };
    let by_update = match cx.param("sort_by") {
        None | Some("created_at") => false,
        Some("updated_at") => true,
        Some(_) => return lazada_error("ISV", "75", "E075: Invalid sort filter."),
    };
    let descending = match cx.param("sort_direction") {
        None | Some("DESC") => true,
        Some("ASC") => false,
        Some(_) => return lazada_error("ISV", "74", "E074: Invalid sort direction."),
    };
    let status = cx.param("status");
    let status_of = |o: &Order| o.status.unwrap_or("pending");
    // The bounds are inclusive ("after or on"), in whole seconds.
    let mut matching: Vec<&Order> = st
        .orders
        .iter()
        .filter(|o| update_after.is_none_or(|t| o.updated_ms >= t))
        .filter(|o| update_before.is_none_or(|t| o.updated_ms <= t))
        .filter(|o| created_after.is_none_or(|t| o.created_ms >= t))
        .filter(|o| created_before.is_none_or(|t| o.created_ms <= t))
        .filter(|o| status.is_none_or(|s| status_of(o) == s))
        .collect();
    matching.sort_by_key(|o| {
        let t = if by_update {
            o.updated_ms
        } else {
            o.created_ms
        };
        (t, o.id.clone())
    });
    if descending {
        matching.reverse();
    }
    let n = limit.min(st.page_size);
    let orders: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(n)
        .map(|o| {
            let id =
                o.id.parse::<u64>()
                    .map_or_else(|_| json!(o.id), |n| json!(n));
            json!({
                "order_id": id,
                "order_number": id,
                "created_at": lazada_time(o.created_ms),
                "updated_at": lazada_time(o.updated_ms),
                "statuses": [status_of(o)],
                "items_count": 1,
                "price": "106.00",
                "payment_method": "COD",
                "warehouse_code": "dropshipping",
            })
        })
        .collect();
    lazada_ok(json!({
        "count": orders.len().to_string(),
        "countTotal": matching.len().to_string(),
        "orders": orders,
    }))
}

// ---------------------------------------------------------------- helpers

fn lookup<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("e3e3b8e9c0f14d2a{:016x}", N.fetch_add(1, Ordering::Relaxed))
}

/// A stable number from a string (made-up ASINs and ids).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

pub fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("a time after 1970"))
}

/// `2024-05-01T12:00:00Z` (whole seconds, rounded down).
pub fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(ms)).to_string()
}

/// `2024-05-01T12:00:00.000Z` (eBay).
pub fn rfc3339_millis(ms: i64) -> String {
    humantime::format_rfc3339_millis(system_time(ms)).to_string()
}

/// ISO 8601 as the providers accept it: a date, or a date and time with
/// optional seconds, fraction and zone (`Z` or `+hh:mm`; none means UTC).
/// Milliseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let num = |t: &str| -> Option<i64> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (date, rest) = match s.split_once('T') {
        Some((d, r)) => (d, Some(r)),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let (y, m, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if dp.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || date.len() != 10 {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    let Some(rest) = rest else {
        return Some(ms);
    };
    let (clock, offset_ms) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (c, z) = rest.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let z = z[1..].replace(':', "");
        if z.len() != 4 {
            return None;
        }
        (
            c,
            sign * (num(&z[..2])? * 3_600_000 + num(&z[2..])? * 60_000),
        )
    } else {
        (rest, 0)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((h, f)) => (h, Some(f)),
        None => (clock, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let (h, mi) = (num(parts[0])?, num(parts[1])?);
    let sec = parts.get(2).map_or(Some(0), |p| num(p))?;
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    ms += (h * 3600 + mi * 60 + sec) * 1000;
    if let Some(f) = frac {
        num(f)?;
        let f3: String = f.chars().chain("000".chars()).take(3).collect();
        ms += num(&f3)?;
    }
    Some(ms - offset_ms)
}

/// A plain HTTP/1.1 call to a fake (for the fakes' own tests): the answer
/// as the fake sent it.
pub fn call(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}
