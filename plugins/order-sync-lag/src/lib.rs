//! `order-sync-lag`: a health check that fails when the app has not synced
//! orders that changed at the marketplace (Amazon, Shopee, Walmart, eBay or
//! Lazada) for longer than `max_lag`.
//!
//! Each run:
//!
//! 1. `GET app_status_url`; the app answers `{"last_order_update": "<RFC 3339>"}`,
//!    the update time of the newest order it has synced: its position P.
//! 2. Asks the marketplace for the orders updated after P, following pages
//!    up to `max_pages`.
//! 3. `orders_behind` = the orders updated after P; `lag` = now minus the
//!    update time of the oldest of them (0 when there is none: no new orders
//!    at the marketplace is not lag).
//!
//! Verdicts: `fail` when lag > `max_lag`; `warn` when paging stopped at
//! `max_pages` before the answer was certain (lag within `max_lag` among the
//! orders read, but P itself older than `max_lag`); `pass` otherwise. A
//! problem on the app's side (its status unreachable or garbled, P ahead of
//! the clock) is an error; the marketplace's trouble (throttled, down,
//! credentials refused, an answer it cannot read) is `inconclusive`.
//!
//! The marketplace is read at most every `marketplace_interval` (its quota
//! is the seller's), its last answer kept in kv (`orders-snapshot`) and used
//! by the runs in between; a 429 (Lazada: `ApiCallLimit`) sets when the
//! next read may go (`marketplace::quota`).
//!
//! Config keys: `provider` (`amazon`, `shopee`, `walmart`, `ebay`,
//! `lazada`; required), `endpoint`, `app_status_url` (required), `max_lag`
//! (default `10m`), `max_pages` (Amazon: what the rate allows per interval;
//! else 10), `marketplace_interval` (Amazon v0 1m, 2026-01-01 3m, Lazada 5m,
//! else 1m), and the provider's keys and secrets (see the `marketplace`
//! crate and docs/marketplaces.md). Metrics: `lag_seconds`,
//! `orders_behind`.
use std::collections::BTreeSet;

use marketplace::amazon::SpApi;
use marketplace::ebay::Ebay;
use marketplace::lazada::Lazada;
use marketplace::shopee::Shopee;
use marketplace::time::{format_duration_ms, format_rfc3339, format_rfc3339_millis};
use marketplace::transport::{self, encode};
use marketplace::walmart::Walmart;
use marketplace::{errors, time, Host, Provider, Transport};
use rollback_plugin_sdk::check::Status;
use rollback_plugin_sdk::check::{self, CheckContext, CheckResult, Guest};
use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::http::Response;
use rollback_plugin_sdk::log;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The plugin; its `check` is the world's export.
struct OrderSyncLag;

impl Guest for OrderSyncLag {
    fn check(ctx: CheckContext) -> Result<CheckResult, String> {
        let settings = Settings::from_config(&Config::host())?;
        settings.run(&Host, ctx.now_ms)
    }
}

check::export_check!(OrderSyncLag);

/// How far ahead of this host's clock the app's position may be (clocks
/// drift a little) before it is an error.
const MAX_CLOCK_AHEAD_MS: i64 = 5_000;
/// SP-API refuses `LastUpdatedAfter` later than 2 minutes before now.
const AMAZON_MIN_AGE_MS: i64 = 120_000;
/// Shopee's `time_from` and `time_to` are at most 15 days apart; one
/// second less keeps clear of how the limit is counted.
const SHOPEE_WINDOW_S: i64 = 15 * 86_400 - 1;
/// `get_order_detail` takes at most 50 order numbers.
const SHOPEE_DETAIL_BATCH: usize = 50;

/// Which SP-API orders operation the check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AmazonApi {
    /// Orders API 2026-01-01 `searchOrders` (the default).
    V2026,
    /// Orders v0 `getOrders`, deprecated: Amazon removes it on 2027-03-27.
    V0,
}

impl AmazonApi {
    /// The operation's documented sustained rate, requests per second.
    fn rate(self) -> f64 {
        match self {
            AmazonApi::V2026 => AMAZON_2026_RATE,
            AmazonApi::V0 => AMAZON_V0_RATE,
        }
    }
}

/// The marketplace and its client.
enum Source {
    Amazon(SpApi, AmazonApi),
    Shopee(Shopee),
    /// With the `shipNodeType` asked for (none: Walmart's default,
    /// `SellerFulfilled`).
    Walmart(Walmart, Option<String>),
    Ebay(Ebay),
    Lazada(Lazada),
}

impl Source {
    fn provider(&self) -> Provider {
        match self {
            Source::Amazon(..) => Provider::Amazon,
            Source::Shopee(_) => Provider::Shopee,
            Source::Walmart(..) => Provider::Walmart,
            Source::Ebay(_) => Provider::Ebay,
            Source::Lazada(_) => Provider::Lazada,
        }
    }
}

/// The parsed configuration. No `Debug`: the clients hold secrets.
struct Settings {
    source: Source,
    app_status_url: String,
    max_lag_ms: u64,
    max_pages: u32,
    /// The least time between two reads of the marketplace.
    interval_ms: u64,
    /// What the marketplace snapshot in kv belongs to.
    fingerprint: String,
    /// Which listed orders the app is expected to have.
    filter: Filter,
    /// The dropped-orders check, when `app_orders_url` is set.
    completeness: Option<Completeness>,
}

/// Asks the app which of the marketplace's orders it has.
#[derive(Debug, Clone, PartialEq)]
struct Completeness {
    /// `POST {"order_ids": [...]}` -> `{"missing": [...]}`.
    url: String,
    /// Orders updated this recently are not asked about yet (the app may
    /// still be syncing them).
    grace_ms: i64,
    /// How far back before the grace the orders are asked about.
    window_ms: i64,
}

/// The statuses an app is not expected to have imported, per provider:
/// orders not yet paid or confirmed, and cancelled ones (the list cannot
/// tell a cancellation the app must process from an order it never had;
/// an app that acts on cancellations sets `skip_statuses` without them).
fn default_skip_statuses(provider: Provider) -> &'static [&'static str] {
    match provider {
        // v0 and 2026-01-01 spell them differently.
        Provider::Amazon => &["Pending", "PENDING_AVAILABILITY", "Canceled", "CANCELLED"],
        Provider::Shopee => &["UNPAID", "CANCELLED", "IN_CANCEL"],
        Provider::Walmart => &["Cancelled"],
        Provider::Ebay => &["CANCELED"],
        Provider::Lazada => &["unpaid", "canceled"],
    }
}

/// Most order ids asked about in one request to `app_orders_url`.
const APP_ORDERS_BATCH: usize = 500;
/// Most missing order ids named in a summary.
const MISSING_SHOWN: usize = 10;

/// Pages one read takes at most where no documented rate says fewer.
const DEFAULT_MAX_PAGES: u32 = 10;
/// Lazada's default `marketplace_interval`.
const LAZADA_INTERVAL_MS: u64 = 300_000;
/// SP-API getOrders (v0): 0.0167 requests per second per seller and
/// application, burst 20.
const AMAZON_V0_RATE: f64 = 0.0167;
/// Orders API 2026-01-01 searchOrders: 0.0056 requests per second, burst 20.
const AMAZON_2026_RATE: f64 = 0.0056;

impl Source {
    /// The documented pace at which the check reads the marketplace unless
    /// `marketplace_interval` says otherwise.
    fn default_interval_ms(&self) -> u64 {
        match self {
            // One call per request's worth of the sustained rate: a minute
            // for getOrders, three for searchOrders.
            Source::Amazon(_, AmazonApi::V0) => 60_000,
            Source::Amazon(_, AmazonApi::V2026) => 180_000,
            Source::Shopee(_) | Source::Walmart(..) | Source::Ebay(_) => 60_000,
            // Lazada warns that polling GetOrders in a loop can get an app
            // disabled: five minutes between reads.
            Source::Lazada(_) => LAZADA_INTERVAL_MS,
        }
    }

    /// The most pages one read may take so that reads every `interval_ms`
    /// never exceed the documented sustained rate (`None`: no documented
    /// rate that low; `max_pages` alone caps).
    fn pages_allowed(&self, interval_ms: u64) -> Option<u32> {
        match self {
            Source::Amazon(_, api) => {
                let pages = (interval_ms as f64 / 1000.0 * api.rate()).floor();
                Some((pages as u32).max(1))
            }
            Source::Shopee(_) | Source::Walmart(..) | Source::Ebay(_) | Source::Lazada(_) => None,
        }
    }
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, String> {
        let provider = Provider::from_config(config, &Provider::ALL)?;
        let app_status_url = config.required("app_status_url")?;
        let max_lag = config
            .parse_with("max_lag", time::parse_duration)?
            .unwrap_or(std::time::Duration::from_secs(600));
        let max_pages = config.parse_in::<u32>("max_pages", 1..)?;
        let interval = config.parse_with("marketplace_interval", time::parse_duration)?;
        let fingerprint = format!(
            "{provider}\n{}\n{}\n{}\n{}\n{}\n{}",
            config.optional("api").unwrap_or_default(),
            config.optional("country").unwrap_or_default(),
            marketplace::endpoint(config, provider),
            config.optional("marketplace_ids").unwrap_or_default(),
            config.optional("shop_id").unwrap_or_default(),
            config.optional("ship_node_type").unwrap_or_default()
        );
        let source = match provider {
            Provider::Amazon => {
                let api = config
                    .parse_with("api", |v| match v.trim() {
                        "2026-01-01" => Ok(AmazonApi::V2026),
                        "v0" => Ok(AmazonApi::V0),
                        _ => Err("expected 2026-01-01 or v0".to_string()),
                    })?
                    .unwrap_or(AmazonApi::V2026);
                Source::Amazon(SpApi::from_config(config)?, api)
            }
            Provider::Shopee => Source::Shopee(Shopee::from_config(config)?),
            Provider::Walmart => {
                let node = config.parse_with("ship_node_type", |v| match v.trim() {
                    n @ ("SellerFulfilled" | "WFSFulfilled" | "3PLFulfilled") => Ok(n.to_string()),
                    _ => Err("expected SellerFulfilled, WFSFulfilled or 3PLFulfilled".to_string()),
                })?;
                Source::Walmart(Walmart::from_config(config)?, node)
            }
            Provider::Ebay => Source::Ebay(Ebay::from_config(config)?),
            Provider::Lazada => Source::Lazada(Lazada::from_config(config)?),
        };
        let filter = Filter {
            skip_statuses: config.list("skip_statuses").unwrap_or_else(|| {
                default_skip_statuses(provider)
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }),
            channels: config.list("fulfillment_channels"),
        };
        let fingerprint = format!(
            "{fingerprint}\n{}\n{:?}",
            filter.skip_statuses.join(","),
            filter.channels
        );
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let completeness = match config.optional("app_orders_url") {
            None => None,
            Some(url) => Some(Completeness {
                url,
                grace_ms: ms(config
                    .parse_with("grace", time::parse_duration)?
                    .unwrap_or(std::time::Duration::from_secs(300))),
                window_ms: ms(config
                    .parse_with("completeness_window", time::parse_duration)?
                    .unwrap_or(std::time::Duration::from_secs(3600))),
            }),
        };
        let interval_ms = match interval {
            Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            None => source.default_interval_ms(),
        };
        // An explicit max_pages is the operator's decision; by default a
        // read takes no more pages than the documented rate allows.
        let max_pages = max_pages
            .or_else(|| source.pages_allowed(interval_ms))
            .unwrap_or(DEFAULT_MAX_PAGES);
        Ok(Settings {
            source,
            app_status_url,
            max_lag_ms: u64::try_from(max_lag.as_millis()).unwrap_or(u64::MAX),
            max_pages,
            interval_ms,
            fingerprint,
            filter,
            completeness,
        })
    }

    fn run(&self, transport: &dyn Transport, now_ms: u64) -> Result<CheckResult, String> {
        let now = i64::try_from(now_ms).map_err(|_| "clock out of range")?;
        // The app's side: a broken answer is the release's fault (an error).
        let position = app_position(transport, &self.app_status_url)?;
        if position > now + MAX_CLOCK_AHEAD_MS {
            return Err(format!(
                "the app's position {} is {} ahead of this host's clock ({}): \
                 the app or this host has a wrong clock",
                show_time(position),
                format_duration_ms(u64::try_from(position - now).unwrap_or(u64::MAX)),
                show_time(now)
            ));
        }
        let provider = self.source.provider();
        // What the marketplace said last, if it covers this position.
        let known = Snapshot::load(&self.fingerprint).filter(|s| position >= s.position);
        // The marketplace's quota is the seller's too: read it at most every
        // marketplace_interval (sooner only when no answer covers this
        // position), and after a 429 only when it says.
        if let Err(wait) = marketplace::quota::allowed(now_ms, known.is_none()) {
            return match &known {
                Some(s) => self.judge_known(s, position, now, transport),
                None => Ok(CheckResult::inconclusive(format!(
                    "{provider}: no verdict yet, no marketplace data: {wait}"
                ))),
            };
        }
        let mut scan = self.scan(position, now);
        let read = match &self.source {
            Source::Amazon(api, AmazonApi::V0) => amazon(api, transport, now, &mut scan),
            Source::Amazon(api, AmazonApi::V2026) => search_orders(api, transport, now, &mut scan),
            Source::Shopee(shop) => shopee(shop, transport, now, &mut scan),
            Source::Walmart(api, node) => walmart(api, node.as_deref(), transport, now, &mut scan),
            Source::Ebay(api) => ebay(api, transport, &mut scan),
            Source::Lazada(api) => lazada(api, transport, &mut scan),
        };
        marketplace::quota::paced(now_ms, self.interval_ms);
        // The marketplace's side: throttled, down, refusing the credentials
        // or answering what we cannot read says nothing about the release.
        if let Err(e) = read {
            // Orders it listed before and the app still lacks are still lag.
            if let Some(s) = &known {
                let r = self.judge_known(s, position, now, transport)?;
                if r.status == Status::Fail {
                    return Ok(r);
                }
            }
            return Ok(marketplace::unreadable(provider, &e));
        }
        Snapshot::of(&scan, now_ms).store(&self.fingerprint);
        log::debug!(
            "{}: {} page(s) read, {} order(s) updated after {}, {} left out by the filters",
            self.source.provider(),
            scan.pages,
            scan.behind,
            show_time(position),
            scan.skipped
        );
        self.verdict(&scan, now, now, transport)
    }

    /// A scan from `position`, reaching back to the completeness window.
    fn scan(&self, position: i64, now: i64) -> Scan {
        let mut scan = Scan::new(position, self.max_pages);
        scan.filter = self.filter.clone();
        if let Some(c) = &self.completeness {
            scan.bound = position.min(now - c.grace_ms - c.window_ms);
        }
        scan
    }

    /// The verdict on `scan`, read at `read_at`: lag, and with
    /// `app_orders_url` the orders the app dropped.
    fn verdict(
        &self,
        scan: &Scan,
        read_at: i64,
        now: i64,
        transport: &dyn Transport,
    ) -> Result<CheckResult, String> {
        let provider = self.source.provider();
        let lag = judge(provider, scan, now, self.max_lag_ms, self.max_pages);
        let Some(c) = &self.completeness else {
            return Ok(lag);
        };
        let from = (now - c.grace_ms - c.window_ms).max(scan.bound);
        let until = (now - c.grace_ms).min(read_at);
        let ids: Vec<&str> = scan
            .listed
            .iter()
            .filter(|(t, _, cancelled)| !cancelled && *t > from && *t <= until)
            .map(|(_, id, _)| id.as_str())
            .collect();
        let missing = app_missing(transport, &c.url, &ids)?;
        let span = format!("between {} and {}", show_time(from), show_time(until));
        let result = if missing.is_empty() {
            CheckResult {
                summary: format!(
                    "{}; all {} order(s) updated {span} are in the app",
                    lag.summary,
                    ids.len()
                ),
                ..lag
            }
        } else {
            let shown: Vec<&str> = missing
                .iter()
                .take(MISSING_SHOWN)
                .map(String::as_str)
                .collect();
            let more = missing.len().saturating_sub(MISSING_SHOWN);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            CheckResult {
                status: Status::Fail,
                summary: format!(
                    "{provider}: {} of {} order(s) updated {span} are missing from the app: {}{more}; {}",
                    missing.len(),
                    ids.len(),
                    shown.join(", "),
                    lag.summary
                ),
                metrics: lag.metrics,
            }
        };
        Ok(result
            .metric("orders_checked", ids.len() as f64)
            .metric("orders_missing", missing.len() as f64))
    }
}

/// Which of `ids` the app says it lacks: `POST url` with
/// `{"order_ids": [...]}` in batches, each answered `{"missing": [...]}`.
/// The app's side: any other answer (an id it was not asked about included)
/// is an error.
fn app_missing(transport: &dyn Transport, url: &str, ids: &[&str]) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Answer {
        missing: Vec<String>,
    }
    let target = format!("POST {}", transport::without_query(url));
    let mut missing = Vec::new();
    for batch in ids.chunks(APP_ORDERS_BATCH) {
        let call = marketplace::Call::post_json(url, &serde_json::json!({ "order_ids": batch }))
            .header("Accept", "application/json");
        let response = transport::send(transport, &call)?;
        let answer: Answer = transport::expect_json(&call, response)?;
        for id in answer.missing {
            if !batch.contains(&id.as_str()) {
                return Err(format!(
                    "{target}: the app says order {id} is missing, but it was not asked about it"
                ));
            }
            if !missing.contains(&id) {
                missing.push(id);
            }
        }
    }
    Ok(missing)
}

impl Settings {
    /// The verdict from the marketplace's last answer: orders it listed that
    /// are still behind the app's position. A failure stands however old the
    /// answer is; anything else needs an answer younger than two intervals.
    fn judge_known(
        &self,
        known: &Snapshot,
        position: i64,
        now: i64,
        transport: &dyn Transport,
    ) -> Result<CheckResult, String> {
        let mut scan = Scan::new(position, self.max_pages);
        scan.bound = known.position;
        for (updated, id, cancelled) in &known.orders {
            scan.add_listed(id, *updated, *cancelled);
        }
        scan.truncated = known.truncated;
        let age_ms = u64::try_from(now - known.read_at_ms).unwrap_or(0);
        let age = format_duration_ms(age_ms);
        let r = self.verdict(&scan, known.read_at_ms, now, transport)?;
        if r.status != Status::Fail && age_ms > self.interval_ms.saturating_mul(2) {
            return Ok(CheckResult::inconclusive(format!(
                "{}: no verdict, the marketplace's last answer is {age} old ({})",
                self.source.provider(),
                r.summary
            )));
        }
        let summary = format!("{} (marketplace read {age} ago)", r.summary);
        Ok(CheckResult { summary, ..r })
    }
}

/// The marketplace's last answer, kept in kv between runs: the orders it
/// listed as updated after the app's position then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Snapshot {
    /// What it belongs to (provider, endpoint, marketplace, shop).
    fingerprint: String,
    /// When it was read.
    read_at_ms: i64,
    /// The app's position then: it covers any later position.
    position: i64,
    /// Paging stopped before the end, or orders were left out.
    truncated: bool,
    /// (update time, id, cancelled), oldest first, at most [`SNAPSHOT_ORDERS`].
    orders: Vec<(i64, String, bool)>,
}

/// Orders a snapshot keeps (the oldest: they decide the lag), so that it
/// fits a kv value.
const SNAPSHOT_ORDERS: usize = 1000;
/// The kv key of the snapshot.
const SNAPSHOT_KEY: &str = "orders-snapshot";

impl Snapshot {
    fn of(scan: &Scan, now_ms: u64) -> Snapshot {
        let mut orders = scan.listed.clone();
        orders.sort();
        let truncated = scan.truncated || orders.len() > SNAPSHOT_ORDERS;
        orders.truncate(SNAPSHOT_ORDERS);
        Snapshot {
            fingerprint: String::new(),
            read_at_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
            position: scan.bound,
            truncated,
            orders,
        }
    }

    fn load(fingerprint: &str) -> Option<Snapshot> {
        let s: Snapshot = rollback_plugin_sdk::kv::get_json(SNAPSHOT_KEY)
            .ok()
            .flatten()?;
        (s.fingerprint == fingerprint).then_some(s)
    }

    fn store(mut self, fingerprint: &str) {
        self.fingerprint = fingerprint.to_string();
        if let Err(e) = rollback_plugin_sdk::kv::set_json(SNAPSHOT_KEY, &self) {
            log::warn!("cannot keep the marketplace's answer: {e}");
        }
    }
}

/// The app's `last_order_update`, in ms since the epoch.
fn app_position(transport: &dyn Transport, url: &str) -> Result<i64, String> {
    let status: Value = transport::get_json(transport, url)?;
    let target = format!("GET {}", transport::without_query(url));
    match status.get("last_order_update") {
        Some(Value::String(text)) => time::parse_rfc3339(text)
            .map_err(|e| format!("{target}: `last_order_update`: {e}")),
        Some(other) => Err(format!(
            "{target}: `last_order_update` is {other}, expected an RFC 3339 date-time string"
        )),
        None => Err(format!(
            "{target}: the answer has no `last_order_update` (expected {{\"last_order_update\": \"<RFC 3339>\"}})"
        )),
    }
}

/// What the marketplace said about the orders updated after the position.
#[derive(Debug)]
struct Scan {
    /// The app's position (ms); only orders updated later count as behind.
    after_ms: i64,
    /// The query's bound (at most the position): orders updated later are
    /// listed (the completeness window may reach before the position).
    bound: i64,
    /// Order ids listed, so that overlapping pages list an order once.
    seen: BTreeSet<String>,
    /// The orders listed: (update time, id, cancelled).
    listed: Vec<(i64, String, bool)>,
    /// Orders the filters left out (statuses, channels).
    skipped: u64,
    /// Which orders count.
    filter: Filter,
    /// Orders updated after the position.
    behind: u64,
    /// The oldest of them: update time (ms) and id.
    oldest: Option<(i64, String)>,
    /// Pages read so far and the most allowed.
    pages: u32,
    max_pages: u32,
    /// Paging stopped at `max_pages` with more to read.
    truncated: bool,
}

impl Scan {
    fn new(after_ms: i64, max_pages: u32) -> Self {
        Scan {
            after_ms,
            bound: after_ms,
            seen: BTreeSet::new(),
            listed: Vec::new(),
            skipped: 0,
            filter: Filter::default(),
            behind: 0,
            oldest: None,
            pages: 0,
            max_pages,
            truncated: false,
        }
    }

    /// Counts an order updated at `updated_ms` if that is after the position.
    #[cfg(test)]
    fn add(&mut self, id: &str, updated_ms: i64) {
        self.add_listed(id, updated_ms, false);
    }

    /// Lists an order the marketplace answered with, unless `filter` leaves
    /// it out.
    fn list(&mut self, order: &Listed) {
        if !self.filter.keeps(order) {
            self.skipped += 1;
            return;
        }
        self.add_listed(&order.id, order.updated, order.cancelled());
    }

    fn add_listed(&mut self, id: &str, updated_ms: i64, cancelled: bool) {
        if updated_ms <= self.bound || !self.seen.insert(id.to_string()) {
            return;
        }
        self.listed.push((updated_ms, id.to_string(), cancelled));
        if updated_ms <= self.after_ms {
            return;
        }
        self.behind += 1;
        if self.oldest.as_ref().is_none_or(|(t, _)| updated_ms < *t) {
            self.oldest = Some((updated_ms, id.to_string()));
        }
    }

    /// Takes one page from the budget; `false` (and marks the scan
    /// truncated) when it is used up.
    fn next_page(&mut self) -> bool {
        if self.pages >= self.max_pages {
            self.truncated = true;
            return false;
        }
        self.pages += 1;
        true
    }
}

/// The verdict on a finished scan.
fn judge(
    provider: Provider,
    scan: &Scan,
    now: i64,
    max_lag_ms: u64,
    max_pages: u32,
) -> CheckResult {
    let lag_ms = scan
        .oldest
        .as_ref()
        .map_or(0, |(t, _)| u64::try_from(now - t).unwrap_or(0));
    let lag = format_duration_ms(lag_ms);
    let max = format_duration_ms(max_lag_ms);
    let position = show_time(scan.after_ms);
    let n = scan.behind;
    let orders = if n == 1 { "order" } else { "orders" };
    let oldest = scan.oldest.as_ref().map_or(String::new(), |(t, id)| {
        format!("; oldest unsynced order {id} updated {}", show_time(*t))
    });
    let position_age_ms = u64::try_from(now - scan.after_ms).unwrap_or(0);
    let result = if lag_ms > max_lag_ms {
        let at_least = if scan.truncated { "at least " } else { "" };
        CheckResult::fail(format!(
            "{provider}: {at_least}{n} {orders} behind, lag {lag} > max_lag {max}{oldest}"
        ))
    } else if scan.truncated && position_age_ms > max_lag_ms {
        CheckResult::warn(format!(
            "{provider}: at least {n} {orders} behind, lag {lag} among the orders read{oldest}; \
             paging stopped at max_pages = {max_pages} and the app's position {position} is older \
             than max_lag {max}, so older unsynced orders may be unread"
        ))
    } else if n == 0 {
        CheckResult::pass(format!(
            "{provider}: in sync, no orders updated after {position}"
        ))
    } else {
        CheckResult::pass(format!(
            "{provider}: {n} {orders} behind, lag {lag} within max_lag {max}{oldest}"
        ))
    };
    result
        .metric("lag_seconds", lag_ms as f64 / 1000.0)
        .metric("orders_behind", n as f64)
}

/// RFC 3339, with milliseconds only when there are any.
fn show_time(ms: i64) -> String {
    if ms % 1000 == 0 {
        format_rfc3339(ms)
    } else {
        format_rfc3339_millis(ms)
    }
}

/// One order as a marketplace lists it.
#[derive(Debug, Clone, PartialEq)]
struct Listed {
    id: String,
    /// Update time, ms.
    updated: i64,
    /// The provider's status word (empty when the list does not say).
    status: String,
    /// Amazon's FulfillmentChannel (`MFN`, `AFN`); empty elsewhere.
    channel: String,
}

impl Listed {
    fn new(id: impl Into<String>, updated: i64) -> Listed {
        Listed {
            id: id.into(),
            updated,
            status: String::new(),
            channel: String::new(),
        }
    }

    /// Cancelled at the marketplace (any provider's spelling).
    fn cancelled(&self) -> bool {
        matches!(
            self.status.to_ascii_uppercase().as_str(),
            "CANCELED" | "CANCELLED" | "IN_CANCEL"
        )
    }
}

/// Which listed orders the app is expected to have: `skip_statuses` (per
/// provider by default: orders not yet paid or confirmed) and, for Amazon,
/// `fulfillment_channels`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Filter {
    skip_statuses: Vec<String>,
    channels: Option<Vec<String>>,
}

impl Filter {
    fn keeps(&self, order: &Listed) -> bool {
        let skipped = self
            .skip_statuses
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&order.status));
        let channel_ok = match &self.channels {
            Some(list) if !order.channel.is_empty() => list
                .iter()
                .any(|c| channel_name(c) == channel_name(&order.channel)),
            _ => true,
        };
        !skipped && channel_ok
    }
}

/// Amazon's fulfilment channel in v0's words: 2026-01-01 says `MERCHANT`
/// and `AMAZON` where v0 says `MFN` and `AFN`.
fn channel_name(c: &str) -> String {
    match c.trim().to_ascii_uppercase().as_str() {
        "MERCHANT" => "MFN".to_string(),
        "AMAZON" => "AFN".to_string(),
        other => other.to_string(),
    }
}

/// The orders of one page and where the next page is, if anywhere.
type Page = (Vec<Listed>, Option<String>);

// ---- Amazon ----------------------------------------------------------------

/// `getOrders` answer (SP-API Orders v0).
#[derive(Debug, Deserialize)]
struct AmazonOrders {
    payload: Option<AmazonPayload>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AmazonPayload {
    #[serde(default)]
    orders: Vec<AmazonOrder>,
    next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AmazonOrder {
    amazon_order_id: String,
    last_update_date: String,
    #[serde(default)]
    order_status: String,
    #[serde(default)]
    fulfillment_channel: String,
}

/// The orders (id, update time) of a page and its `NextToken`.
fn amazon_page(page: AmazonOrders) -> Result<Page, String> {
    let payload = page
        .payload
        .ok_or("getOrders: the answer has no `payload`")?;
    let mut orders = Vec::with_capacity(payload.orders.len());
    for order in payload.orders {
        let updated = time::parse_rfc3339(&order.last_update_date).map_err(|e| {
            format!(
                "getOrders: order {}: `LastUpdateDate`: {e}",
                order.amazon_order_id
            )
        })?;
        orders.push(Listed {
            status: order.order_status,
            channel: order.fulfillment_channel,
            ..Listed::new(order.amazon_order_id, updated)
        });
    }
    Ok((orders, payload.next_token.filter(|t| !t.is_empty())))
}

fn amazon(api: &SpApi, transport: &dyn Transport, now: i64, scan: &mut Scan) -> Result<(), String> {
    let ids: Vec<String> = api.marketplace_ids.iter().map(|id| encode(id)).collect();
    let ids = ids.join(",");
    // Later than now - 2 min is refused; the orders in between are then
    // read and filtered by their LastUpdateDate.
    let after = scan.bound.min(now - AMAZON_MIN_AGE_MS);
    // Every page repeats the query: the model requires CreatedAfter or
    // LastUpdatedAfter on each call, the NextToken included.
    let query = format!(
        "/orders/v0/orders?MarketplaceIds={ids}&LastUpdatedAfter={}",
        encode(&format_rfc3339(after))
    );
    let mut path = query.clone();
    while scan.next_page() {
        let (orders, next) = amazon_page(api.get(transport, &path)?)?;
        for order in &orders {
            scan.list(order);
        }
        match next {
            Some(token) => {
                path = format!("{query}&NextToken={}", encode(&token));
            }
            None => return Ok(()),
        }
    }
    Ok(())
}

/// `searchOrders` answer (Orders API 2026-01-01).
#[derive(Debug, Deserialize)]
struct SearchOrders {
    orders: Option<Vec<SearchOrder>>,
    pagination: Option<SearchPagination>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchPagination {
    next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchOrder {
    order_id: String,
    last_updated_time: String,
    fulfillment: Option<SearchFulfillment>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchFulfillment {
    #[serde(default)]
    fulfillment_status: String,
    #[serde(default)]
    fulfilled_by: String,
}

/// The orders of a `searchOrders` page and its `pagination.nextToken`.
fn search_orders_page(page: SearchOrders) -> Result<Page, String> {
    let list = page
        .orders
        .ok_or("searchOrders: the answer has no `orders`")?;
    let mut orders = Vec::with_capacity(list.len());
    for order in list {
        let updated = time::parse_rfc3339(&order.last_updated_time).map_err(|e| {
            format!(
                "searchOrders: order {}: `lastUpdatedTime`: {e}",
                order.order_id
            )
        })?;
        let (status, by) = order
            .fulfillment
            .map(|f| (f.fulfillment_status, f.fulfilled_by))
            .unwrap_or_default();
        orders.push(Listed {
            status,
            channel: by,
            ..Listed::new(order.order_id, updated)
        });
    }
    let next = page
        .pagination
        .and_then(|p| p.next_token)
        .filter(|t| !t.is_empty());
    Ok((orders, next))
}

/// Orders API 2026-01-01: every page repeats the whole query with the
/// previous page's `pagination.nextToken` as `paginationToken`.
fn search_orders(
    api: &SpApi,
    transport: &dyn Transport,
    now: i64,
    scan: &mut Scan,
) -> Result<(), String> {
    let ids: Vec<String> = api.marketplace_ids.iter().map(|id| encode(id)).collect();
    let after = scan.bound.min(now - AMAZON_MIN_AGE_MS);
    let query = format!(
        "/orders/2026-01-01/orders?marketplaceIds={}&lastUpdatedAfter={}&maxResultsPerPage=100",
        ids.join(","),
        encode(&format_rfc3339(after))
    );
    let mut path = query.clone();
    while scan.next_page() {
        let (orders, next) = search_orders_page(api.get(transport, &path)?)?;
        for order in &orders {
            scan.list(order);
        }
        match next {
            Some(token) => path = format!("{query}&paginationToken={}", encode(&token)),
            None => return Ok(()),
        }
    }
    Ok(())
}

// ---- Shopee ----------------------------------------------------------------

/// `get_order_list` `response`.
#[derive(Debug, Deserialize)]
struct ShopeeList {
    #[serde(default)]
    more: bool,
    #[serde(default)]
    next_cursor: String,
    #[serde(default)]
    order_list: Vec<ShopeeListed>,
}

#[derive(Debug, Deserialize)]
struct ShopeeListed {
    order_sn: String,
    #[serde(default)]
    order_status: String,
}

/// `get_order_detail` `response`.
#[derive(Debug, Deserialize)]
struct ShopeeDetails {
    #[serde(default)]
    order_list: Vec<ShopeeDetail>,
}

#[derive(Debug, Deserialize)]
struct ShopeeDetail {
    order_sn: String,
    update_time: i64,
}

/// The `[time_from, time_to]` windows (Unix seconds, at most 15 days each,
/// oldest first) that cover the updates after `after_ms` up to `now_s`.
/// Shopee times are whole seconds, so "after P" starts at the next second.
fn shopee_windows(after_ms: i64, now_s: i64) -> Vec<(i64, i64)> {
    let mut windows = Vec::new();
    let mut from = after_ms.div_euclid(1000) + 1;
    while from <= now_s {
        let to = (from + SHOPEE_WINDOW_S).min(now_s);
        windows.push((from, to));
        from = to + 1;
    }
    windows
}

fn shopee(
    shop: &Shopee,
    transport: &dyn Transport,
    now: i64,
    scan: &mut Scan,
) -> Result<(), String> {
    // Oldest window first: the oldest unsynced order is what lag is about.
    let mut listed: Vec<(String, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    'windows: for (from, to) in shopee_windows(scan.bound, now.div_euclid(1000)) {
        let (from, to) = (from.to_string(), to.to_string());
        let mut cursor = String::new();
        loop {
            if !scan.next_page() {
                break 'windows;
            }
            let page: ShopeeList = shop.get(
                transport,
                "/api/v2/order/get_order_list",
                &[
                    ("time_range_field", "update_time"),
                    ("time_from", &from),
                    ("time_to", &to),
                    ("page_size", "100"),
                    ("cursor", &cursor),
                    ("response_optional_fields", "order_status"),
                ],
            )?;
            for order in page.order_list {
                if seen.insert(order.order_sn.clone()) {
                    listed.push((order.order_sn, order.order_status));
                }
            }
            if !page.more || page.next_cursor.is_empty() || page.next_cursor == cursor {
                break;
            }
            cursor = page.next_cursor;
        }
    }
    // The list has no update times: read them in batches.
    for batch in listed.chunks(SHOPEE_DETAIL_BATCH) {
        let sns: Vec<&str> = batch.iter().map(|(sn, _)| sn.as_str()).collect();
        let details: ShopeeDetails = shop.get(
            transport,
            "/api/v2/order/get_order_detail",
            &[("order_sn_list", &sns.join(","))],
        )?;
        for (sn, status) in batch {
            let detail = details
                .order_list
                .iter()
                .find(|d| &d.order_sn == sn)
                .ok_or_else(|| {
                    format!("get_order_detail: order {sn} was listed but has no detail")
                })?;
            scan.list(&Listed {
                status: status.clone(),
                ..Listed::new(sn.clone(), detail.update_time.saturating_mul(1000))
            });
        }
    }
    Ok(())
}

// ---- Walmart ---------------------------------------------------------------

/// `GET /v3/orders` answer.
#[derive(Debug, Deserialize)]
struct WalmartOrders {
    list: WalmartList,
}

#[derive(Debug, Deserialize)]
struct WalmartList {
    meta: Option<WalmartMeta>,
    elements: Option<WalmartElements>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WalmartMeta {
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WalmartElements {
    #[serde(default)]
    order: Vec<WalmartOrder>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WalmartOrder {
    purchase_order_id: String,
    #[serde(default)]
    order_date: Value,
    order_lines: Option<WalmartLines>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WalmartLines {
    #[serde(default)]
    order_line: Vec<WalmartLine>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WalmartLine {
    #[serde(default)]
    status_date: Value,
}

/// A Walmart time: epoch milliseconds (a number or digits), or RFC 3339.
fn walmart_time(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s
            .parse::<i64>()
            .ok()
            .or_else(|| time::parse_rfc3339(s).ok()),
        _ => None,
    }
}

/// The orders of a page, each with the latest `statusDate` of its lines
/// (or its `orderDate`) as update time, and the `nextCursor`.
fn walmart_page(page: WalmartOrders) -> Result<Page, String> {
    let mut orders = Vec::new();
    for order in page.list.elements.map(|e| e.order).unwrap_or_default() {
        let lines = order.order_lines.map(|l| l.order_line).unwrap_or_default();
        let updated = lines
            .iter()
            .filter_map(|line| walmart_time(&line.status_date))
            .max()
            .or_else(|| walmart_time(&order.order_date))
            .ok_or_else(|| {
                format!(
                    "GET /v3/orders: order {} has no statusDate or orderDate",
                    order.purchase_order_id
                )
            })?;
        orders.push(Listed::new(order.purchase_order_id, updated));
    }
    let next = page
        .list
        .meta
        .and_then(|m| m.next_cursor)
        .filter(|c| !c.trim().is_empty());
    Ok((orders, next))
}

/// Walmart answers "no orders" with 404 `CONTENT_NOT_FOUND`.
fn walmart_no_content(response: &Response) -> bool {
    response.status() == 404 && errors::describe(response.body()).contains("CONTENT_NOT_FOUND")
}

/// How far back Walmart keeps orders: `createdStartDate` reaches back this
/// far, so that an update to an older order is not hidden by the default
/// window of the last 7 days.
const WALMART_KEEPS_MS: i64 = 180 * 86_400_000;

fn walmart(
    api: &Walmart,
    ship_node: Option<&str>,
    transport: &dyn Transport,
    now: i64,
    scan: &mut Scan,
) -> Result<(), String> {
    let mut url = format!(
        "{}/v3/orders?createdStartDate={}&lastModifiedStartDate={}&limit=100",
        api.endpoint,
        encode(&format_rfc3339(now - WALMART_KEEPS_MS)),
        encode(&format_rfc3339(scan.bound))
    );
    if let Some(node) = ship_node {
        url.push_str(&format!("&shipNodeType={node}"));
    }
    while scan.next_page() {
        let (call, response) = api.get(transport, &url)?;
        if walmart_no_content(&response) {
            return Ok(());
        }
        let (orders, next) = walmart_page(transport::expect_json(&call, response)?)?;
        for order in &orders {
            scan.list(order);
        }
        match next {
            Some(cursor) if cursor.starts_with('?') => {
                url = format!("{}/v3/orders{cursor}", api.endpoint);
            }
            Some(cursor) => url = format!("{}/v3/orders?{cursor}", api.endpoint),
            None => return Ok(()),
        }
    }
    Ok(())
}

// ---- eBay ------------------------------------------------------------------

/// eBay's page size for `getOrders` (its maximum).
const EBAY_LIMIT: u64 = 200;

/// `getOrders` answer (Sell Fulfillment API).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EbayOrders {
    #[serde(default)]
    total: u64,
    limit: Option<u64>,
    #[serde(default)]
    offset: u64,
    next: Option<String>,
    #[serde(default)]
    orders: Vec<EbayOrder>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EbayOrder {
    order_id: String,
    last_modified_date: String,
    #[serde(default)]
    order_fulfillment_status: String,
    #[serde(default)]
    cancel_status: Option<EbayCancel>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EbayCancel {
    #[serde(default)]
    cancel_state: String,
}

fn ebay_url(endpoint: &str, after_ms: i64, offset: u64) -> String {
    format!(
        "{endpoint}/sell/fulfillment/v1/order?filter=lastmodifieddate:%5B{}..%5D&limit={EBAY_LIMIT}&offset={offset}",
        format_rfc3339_millis(after_ms)
    )
}

/// The orders of a page and the URL of the next one: `next` if given (a
/// relative one is joined to `endpoint`), else the next offset while
/// `total` says there is more.
fn ebay_page(page: EbayOrders, endpoint: &str, after_ms: i64) -> Result<Page, String> {
    let mut orders = Vec::with_capacity(page.orders.len());
    for order in &page.orders {
        let updated = time::parse_rfc3339(&order.last_modified_date).map_err(|e| {
            format!(
                "getOrders: order {}: `lastModifiedDate`: {e}",
                order.order_id
            )
        })?;
        let status = match &order.cancel_status {
            Some(c) if c.cancel_state == "CANCELED" => "CANCELED".to_string(),
            _ => order.order_fulfillment_status.clone(),
        };
        orders.push(Listed {
            status,
            ..Listed::new(order.order_id.clone(), updated)
        });
    }
    let next = match page.next.filter(|n| !n.trim().is_empty()) {
        Some(next) if next.starts_with('/') => Some(format!("{endpoint}{next}")),
        Some(next) => Some(next),
        None => {
            let limit = page.limit.unwrap_or(EBAY_LIMIT).max(1);
            let read_to = page.offset.saturating_add(limit);
            (!page.orders.is_empty() && read_to < page.total)
                .then(|| ebay_url(endpoint, after_ms, read_to))
        }
    };
    Ok((orders, next))
}

fn ebay(api: &Ebay, transport: &dyn Transport, scan: &mut Scan) -> Result<(), String> {
    let mut url = ebay_url(&api.endpoint, scan.bound, 0);
    while scan.next_page() {
        let (call, response) = api.get(transport, &url)?;
        let page: EbayOrders = transport::expect_json(&call, response)?;
        let (orders, next) = ebay_page(page, &api.endpoint, scan.bound)?;
        for order in &orders {
            scan.list(order);
        }
        match next {
            Some(next) if next != url => url = next,
            _ => return Ok(()),
        }
    }
    Ok(())
}

// ---- Lazada ----------------------------------------------------------------

/// GetOrders' page size (its maximum).
const LAZADA_LIMIT: u64 = 100;
/// The largest `offset` GetOrders accepts.
const LAZADA_MAX_OFFSET: u64 = 5000;

/// GetOrders `data`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LazadaOrders {
    #[serde(default)]
    count_total: Value,
    #[serde(default)]
    orders: Vec<LazadaOrder>,
}

#[derive(Debug, Deserialize)]
struct LazadaOrder {
    order_id: Value,
    updated_at: String,
    #[serde(default)]
    statuses: Vec<String>,
}

/// A number Lazada may send as a string (`"500"`) or a number.
fn lazada_number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An order id: digits, as a number or a string.
fn lazada_id(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// The orders of a GetOrders page and the total the filter matches.
fn lazada_page(page: LazadaOrders) -> Result<(Vec<Listed>, Option<u64>), String> {
    let mut orders = Vec::with_capacity(page.orders.len());
    for order in page.orders {
        let id = lazada_id(&order.order_id).ok_or("GET /orders/get: an order has no `order_id`")?;
        let updated = time::parse_rfc3339(&order.updated_at)
            .map_err(|e| format!("GET /orders/get: order {id}: `updated_at`: {e}"))?;
        // One status per item: the order's is theirs when they agree (an
        // order of cancelled and live items is neither).
        let mut statuses = order.statuses;
        statuses.sort_unstable();
        statuses.dedup();
        orders.push(Listed {
            status: statuses.join(","),
            ..Listed::new(id, updated)
        });
    }
    Ok((orders, lazada_number(&page.count_total)))
}

/// ISO 8601 with a numeric offset, as GetOrders asks
/// (`YYYY-MM-DDTHH:mm:ss±HH:MM`).
fn lazada_time(ms: i64) -> String {
    let text = format_rfc3339(ms);
    match text.strip_suffix('Z') {
        Some(t) => format!("{t}+00:00"),
        None => text,
    }
}

/// GetOrders by update time, oldest first, `offset` paging; past Lazada's
/// largest offset the query goes on from the last update time read.
fn lazada(api: &Lazada, transport: &dyn Transport, scan: &mut Scan) -> Result<(), String> {
    let mut after = scan.bound;
    let mut offset = 0;
    while scan.next_page() {
        let (update_after, at) = (lazada_time(after), offset.to_string());
        let page: LazadaOrders = api.get(
            transport,
            "/orders/get",
            &[
                ("update_after", &update_after),
                ("sort_by", "updated_at"),
                ("sort_direction", "ASC"),
                ("limit", &LAZADA_LIMIT.to_string()),
                ("offset", &at),
            ],
        )?;
        let (orders, total) = lazada_page(page)?;
        for order in &orders {
            scan.list(order);
        }
        let read = offset + orders.len() as u64;
        // Without `countTotal`, a full page may have more behind it.
        let more = match total {
            Some(total) => read < total,
            None => orders.len() as u64 >= LAZADA_LIMIT,
        };
        if orders.is_empty() || !more {
            return Ok(());
        }
        if read + LAZADA_LIMIT <= LAZADA_MAX_OFFSET {
            offset = read;
            continue;
        }
        // Sorted by update time: the rest are updated at or after the last
        // one read ("after or on": it is listed again, and counted once).
        let last = orders.iter().map(|o| o.updated).max().unwrap_or(after);
        if last.div_euclid(1000) <= after.div_euclid(1000) {
            // More than 5,000 orders in one second: no query reaches past.
            scan.truncated = true;
            return Ok(());
        }
        after = last;
        offset = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
