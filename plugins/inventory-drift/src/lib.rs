//! `inventory-drift`: a health check that compares the app's stock for a
//! sample of SKUs with the marketplace's (Amazon FBA or Shopee) and fails
//! when too many of them differ.
//!
//! Each run:
//!
//! 1. `GET app_inventory_url`; the app answers
//!    `[{"sku": "..", "quantity": N}]` (for Shopee each entry also carries
//!    `"item_id"` and, for an item with variations, `"model_id"`).
//! 2. Picks `sample_size` SKUs: the SKUs sorted, starting after the last SKU
//!    compared by the previous run (kept in `kv` under `inventory-cursor`),
//!    wrapping around, so every SKU is compared in turn.
//! 3. Reads their quantities at the marketplace; a SKU is drifted when the
//!    two differ by more than `tolerance` units, or when the marketplace does
//!    not know it.
//! 4. Fails when drifted / checked > `max_drifted_ratio`.
//!
//! The app's side failing (unreachable, garbled) is an error; the
//! marketplace's (throttled, down, credentials refused, unreadable) is
//! `inconclusive`; neither is a pass, and the cursor only moves after a
//! completed comparison.
//!
//! The marketplace is read at most every `marketplace_interval` (default
//! 1m; its quota is the seller's) and after a 429 only when it says
//! (`marketplace::quota`, kv `inventory-next-call`). Its last answer is kept in kv
//! (`inventory-snapshot`) with the app's quantities then; the runs in
//! between re-read the app and judge the same SKUs by it: a SKU matches
//! when the app now says what the marketplace said, and stays drifted while
//! the app still says what it said when they disagreed; a SKU the app
//! changed since is not judged. An answer older than two intervals judges
//! nothing (`inconclusive`).
//!
//! Config keys: `provider` (`amazon` or `shopee`, required), `endpoint`,
//! `app_inventory_url` (required), `sample_size` (default 50), `tolerance`
//! (default 0), `max_drifted_ratio` (default 0.05; a fraction or a
//! percentage, at most 1), `marketplace_interval`, and the provider's keys
//! and secrets (see the
//! `marketplace` crate and docs/marketplaces.md).
//! Metrics: `skus_checked`, `skus_drifted`, `drifted_ratio`.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use marketplace::amazon::SpApi;
use marketplace::shopee::Shopee;
use marketplace::time::{self, format_duration_ms, format_rfc3339};
use marketplace::transport::{self, encode};
use marketplace::{Host, Provider, Transport};
use rollback_plugin_sdk::check::{self, CheckContext, CheckResult, Guest};
use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::{kv, log};
use serde::{Deserialize, Serialize};

/// The plugin; its `check` is the world's export.
struct InventoryDrift;

impl Guest for InventoryDrift {
    fn check(_ctx: CheckContext) -> Result<CheckResult, String> {
        marketplace::quota::use_key(QUOTA_KEY);
        let settings = Settings::from_config(&Config::host())?;
        settings.run(&Host)
    }
}

check::export_check!(InventoryDrift);

/// Where the last SKU compared is kept between runs.
const CURSOR_KEY: &str = "inventory-cursor";
/// This plugin's schedule of marketplace calls, apart from other checks
/// sharing its `kv`.
const QUOTA_KEY: &str = "inventory-next-call";
/// Where the marketplace's last answer is kept between runs.
const SNAPSHOT_KEY: &str = "inventory-snapshot";
/// The least time between two reads of the marketplace, by default.
const DEFAULT_INTERVAL_MS: u64 = 60_000;
/// SP-API's `sellerSkus` and Shopee's `item_id_list` take at most 50.
const BATCH: usize = 50;
/// A batch of at most 50 SKUs fits one page; more pages than this means
/// the server does not end its pagination.
const MAX_PAGES_PER_BATCH: u32 = 20;
/// How many drifted SKUs the summary names.
const WORST_SHOWN: usize = 5;

/// The marketplace and its client.
enum Source {
    Amazon(SpApi),
    Shopee(Shopee),
}

/// The parsed configuration. No `Debug`: the clients hold secrets.
struct Settings {
    provider: Provider,
    source: Source,
    app_inventory_url: String,
    sample_size: usize,
    tolerance: u64,
    max_drifted_ratio: f64,
    /// The least time between two reads of the marketplace.
    interval_ms: u64,
    /// What a kept answer belongs to (provider, endpoint, shop, ids).
    fingerprint: String,
}

/// The marketplace's last answer: per SKU, the app's quantity and the
/// marketplace's when it was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Snapshot {
    fingerprint: String,
    read_at_ms: u64,
    /// (SKU, app quantity then, marketplace quantity or none).
    skus: Vec<(String, i64, Option<i64>)>,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, String> {
        let provider = Provider::from_config(config, &[Provider::Amazon, Provider::Shopee])?;
        let app_inventory_url = config.required("app_inventory_url")?;
        let sample_size = config.parse_in::<usize>("sample_size", 1..)?.unwrap_or(50);
        let tolerance = config.parse::<u64>("tolerance")?.unwrap_or(0);
        let max_drifted_ratio = config.ratio("max_drifted_ratio")?.unwrap_or(0.05);
        let interval_ms = config
            .parse_with("marketplace_interval", time::parse_duration)?
            .map_or(DEFAULT_INTERVAL_MS, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            });
        let fingerprint = format!(
            "{provider}\n{}\n{}\n{}\n{}",
            marketplace::endpoint(config, provider),
            config.optional("marketplace_ids").unwrap_or_default(),
            config.optional("shop_id").unwrap_or_default(),
            app_inventory_url,
        );
        let source = match provider {
            Provider::Shopee => Source::Shopee(Shopee::from_config(config)?),
            _ => Source::Amazon(SpApi::from_config(config)?),
        };
        Ok(Settings {
            provider,
            source,
            app_inventory_url,
            sample_size,
            tolerance,
            max_drifted_ratio,
            interval_ms,
            fingerprint,
        })
    }

    fn run(&self, transport: &dyn Transport) -> Result<CheckResult, String> {
        let items: Vec<AppItem> = transport::get_json(transport, &self.app_inventory_url)?;
        let total = items.len();
        let now = transport.now_ms();
        let kept = kv::get_json::<Snapshot>(SNAPSHOT_KEY)
            .ok()
            .flatten()
            .filter(|s| s.fingerprint == self.fingerprint);
        // The marketplace's quota is the seller's: read it at most every
        // marketplace_interval (sooner only without a kept answer), and
        // after a 429 only when it says.
        if let Err(wait) = marketplace::quota::allowed(now, kept.is_none()) {
            return Ok(match kept {
                Some(kept) => self.judge_kept(&kept, &items, total, now),
                None => CheckResult::inconclusive(format!(
                    "{}: no verdict yet, no marketplace data: {wait}",
                    self.provider
                )),
            });
        }
        let cursor = kv::get(CURSOR_KEY).map(|v| String::from_utf8_lossy(&v).into_owned());
        let sample = sample(items, self.sample_size, cursor.as_deref());
        let read = match &self.source {
            Source::Amazon(api) => amazon_quantities(api, transport, &sample),
            Source::Shopee(shop) => {
                // The app's side: an entry Shopee cannot be asked about.
                let ids = shopee_ids(&sample)?;
                shopee_quantities(shop, transport, &sample, ids)
            }
        };
        marketplace::quota::paced(now, self.interval_ms);
        // The marketplace's trouble says nothing about the release.
        let market = match read {
            Ok(market) => market,
            Err(e) => return Ok(marketplace::unreadable(self.provider, &e)),
        };
        let compared: Vec<Compared> = sample
            .iter()
            .zip(market)
            .map(|(item, market)| Compared {
                sku: item.sku.clone(),
                app: item.quantity,
                market,
            })
            .collect();
        if let Some(last) = sample.last() {
            if let Err(err) = kv::set(CURSOR_KEY, last.sku.as_bytes()) {
                log::warn!("could not store the sample cursor: {err}");
            }
        }
        let snapshot = Snapshot {
            fingerprint: self.fingerprint.clone(),
            read_at_ms: now,
            skus: compared
                .iter()
                .map(|c| (c.sku.clone(), c.app, c.market))
                .collect(),
        };
        if let Err(err) = kv::set_json(SNAPSHOT_KEY, &snapshot) {
            log::warn!("could not keep the marketplace's answer: {err}");
        }
        Ok(judge(
            self.provider,
            &compared,
            total,
            self.tolerance,
            self.max_drifted_ratio,
        ))
    }
}

impl Settings {
    /// The verdict between two reads: the kept answer's SKUs against what
    /// the app says now.
    fn judge_kept(
        &self,
        kept: &Snapshot,
        items: &[AppItem],
        total: usize,
        now: u64,
    ) -> CheckResult {
        let age_ms = now.saturating_sub(kept.read_at_ms);
        let age = format_duration_ms(age_ms);
        let read_at = format_rfc3339(i64::try_from(kept.read_at_ms).unwrap_or(i64::MAX));
        if age_ms > self.interval_ms.saturating_mul(2) {
            return CheckResult::inconclusive(format!(
                "{}: no verdict, the marketplace's last answer is {age} old (read at {read_at})",
                self.provider
            ));
        }
        let mut changed = 0;
        let mut compared = Vec::with_capacity(kept.skus.len());
        for (sku, app_then, market) in &kept.skus {
            let Some(now) = items.iter().find(|i| &i.sku == sku).map(|i| i.quantity) else {
                changed += 1;
                continue;
            };
            let still = Compared {
                sku: sku.clone(),
                app: now,
                market: *market,
            };
            // Agreeing now, or disagreeing as when both were read: judged.
            // Moved since and disagreeing: the marketplace may have moved too.
            if !still.is_drifted(self.tolerance) || now == *app_then {
                compared.push(still);
            } else {
                changed += 1;
            }
        }
        if compared.is_empty() {
            return CheckResult::inconclusive(format!(
                "{}: no verdict until the next marketplace read: the app changed every SKU read at {read_at}",
                self.provider
            ));
        }
        let r = judge(
            self.provider,
            &compared,
            total.max(compared.len()),
            self.tolerance,
            self.max_drifted_ratio,
        );
        let unjudged = if changed > 0 {
            format!(", {changed} SKU(s) changed in the app since, not judged")
        } else {
            String::new()
        };
        let summary = format!("{} (marketplace read {age} ago{unjudged})", r.summary);
        CheckResult { summary, ..r }
    }
}

/// One entry of the app's inventory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct AppItem {
    sku: String,
    quantity: i64,
    /// Shopee's item id (required for Shopee).
    item_id: Option<u64>,
    /// Shopee's model id, for an item with variations.
    model_id: Option<u64>,
}

/// Up to `size` SKUs in SKU order, starting after `cursor` and wrapping
/// around. A SKU listed twice is compared once (its first entry).
fn sample(mut items: Vec<AppItem>, size: usize, cursor: Option<&str>) -> Vec<AppItem> {
    items.sort_by(|a, b| a.sku.cmp(&b.sku));
    items.dedup_by(|later, first| {
        let same = later.sku == first.sku;
        if same {
            log::warn!(
                "SKU {} is listed more than once; comparing its first entry",
                later.sku
            );
        }
        same
    });
    let start = cursor.map_or(0, |c| items.partition_point(|i| i.sku.as_str() <= c));
    let start = if start >= items.len() { 0 } else { start };
    let n = size.min(items.len());
    items.rotate_left(start);
    items.truncate(n);
    items
}

/// One SKU's two quantities; `market` is `None` when the marketplace does
/// not know it.
#[derive(Debug, Clone, PartialEq)]
struct Compared {
    sku: String,
    app: i64,
    market: Option<i64>,
}

impl Compared {
    fn is_drifted(&self, tolerance: u64) -> bool {
        self.market.is_none_or(|m| self.app.abs_diff(m) > tolerance)
    }

    /// For ordering the worst first: unknown SKUs, then the largest gap.
    fn badness(&self) -> u64 {
        self.market.map_or(u64::MAX, |m| self.app.abs_diff(m))
    }
}

/// The verdict on a comparison.
fn judge(
    provider: Provider,
    compared: &[Compared],
    total: usize,
    tolerance: u64,
    max_ratio: f64,
) -> CheckResult {
    let checked = compared.len();
    let mut drifted: Vec<&Compared> = compared
        .iter()
        .filter(|c| c.is_drifted(tolerance))
        .collect();
    let ratio = if checked == 0 {
        0.0
    } else {
        drifted.len() as f64 / checked as f64
    };
    drifted.sort_by(|a, b| b.badness().cmp(&a.badness()).then(a.sku.cmp(&b.sku)));
    let worst: Vec<String> = drifted
        .iter()
        .take(WORST_SHOWN)
        .map(|c| {
            let market = c.market.map_or("missing".to_string(), |m| m.to_string());
            format!("{} app {} vs {provider} {market}", c.sku, c.app)
        })
        .collect();
    let mut worst = worst.join(", ");
    if drifted.len() > WORST_SHOWN {
        worst.push_str(&format!(", and {} more", drifted.len() - WORST_SHOWN));
    }
    let of = if checked < total {
        format!("{checked} sampled of {total}")
    } else {
        checked.to_string()
    };
    let result = if checked == 0 {
        CheckResult::warn(format!("{provider}: the app reported no SKUs to compare"))
    } else if drifted.is_empty() {
        CheckResult::pass(format!(
            "{provider}: all {of} SKUs match within {tolerance} units"
        ))
    } else {
        let n = drifted.len();
        let (verdict, cmp): (fn(String) -> CheckResult, &str) = if ratio > max_ratio {
            (CheckResult::fail, ">")
        } else {
            (CheckResult::pass, "<=")
        };
        verdict(format!(
            "{provider}: {n} of {of} SKUs drifted ({} {cmp} max {}): {worst}",
            percent(ratio),
            percent(max_ratio)
        ))
    };
    result
        .metric("skus_checked", checked as f64)
        .metric("skus_drifted", drifted.len() as f64)
        .metric("drifted_ratio", ratio)
}

/// `12.5%`, one decimal.
fn percent(ratio: f64) -> String {
    let tenths = (ratio * 1000.0).round() as u64;
    format!("{}.{}%", tenths / 10, tenths % 10)
}

/// The quantities of one page (seller SKU, quantity) and its next token.
type Page = (Vec<(String, i64)>, Option<String>);

// ---- Amazon ----------------------------------------------------------------

/// `getInventorySummaries` answer (SP-API FBA Inventory v1).
#[derive(Debug, Deserialize)]
struct AmazonInventory {
    payload: Option<InventoryPayload>,
    pagination: Option<Pagination>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InventoryPayload {
    #[serde(default)]
    inventory_summaries: Vec<InventorySummary>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InventorySummary {
    seller_sku: Option<String>,
    inventory_details: Option<InventoryDetails>,
    total_quantity: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InventoryDetails {
    fulfillable_quantity: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pagination {
    next_token: Option<String>,
}

impl InventorySummary {
    /// What can be sold: `fulfillableQuantity` when given, else
    /// `totalQuantity`, else 0.
    fn quantity(&self) -> i64 {
        self.inventory_details
            .as_ref()
            .and_then(|d| d.fulfillable_quantity)
            .or(self.total_quantity)
            .unwrap_or(0)
    }
}

/// The quantities of a page by seller SKU (first entry wins) and its
/// `nextToken`.
fn amazon_page(page: AmazonInventory) -> Result<Page, String> {
    let payload = page
        .payload
        .ok_or("getInventorySummaries: the answer has no `payload`")?;
    let quantities = payload
        .inventory_summaries
        .iter()
        .filter_map(|s| Some((s.seller_sku.clone()?, s.quantity())))
        .collect();
    let next = page
        .pagination
        .and_then(|p| p.next_token)
        .filter(|t| !t.is_empty());
    Ok((quantities, next))
}

fn amazon_quantities(
    api: &SpApi,
    transport: &dyn Transport,
    sample: &[AppItem],
) -> Result<Vec<Option<i64>>, String> {
    let marketplace = encode(&api.marketplace_ids[0]);
    let mut found: BTreeMap<String, i64> = BTreeMap::new();
    for batch in sample.chunks(BATCH) {
        let skus: Vec<String> = batch.iter().map(|i| encode(&i.sku)).collect();
        let query = format!(
            "/fba/inventory/v1/summaries?details=true&granularityType=Marketplace\
             &granularityId={marketplace}&marketplaceIds={marketplace}&sellerSkus={}",
            skus.join(",")
        );
        let mut path = query.clone();
        let mut pages = 0;
        loop {
            pages += 1;
            if pages > MAX_PAGES_PER_BATCH {
                return Err(format!(
                    "getInventorySummaries: still paging after {MAX_PAGES_PER_BATCH} pages for {} SKUs",
                    batch.len()
                ));
            }
            let (quantities, next) = amazon_page(api.get(transport, &path)?)?;
            for (sku, quantity) in quantities {
                found.entry(sku).or_insert(quantity);
            }
            match next {
                Some(token) => path = format!("{query}&nextToken={}", encode(&token)),
                None => break,
            }
        }
    }
    Ok(sample.iter().map(|i| found.get(&i.sku).copied()).collect())
}

// ---- Shopee ----------------------------------------------------------------

/// `get_item_base_info` `response`.
#[derive(Debug, Deserialize)]
struct ShopeeItems {
    #[serde(default)]
    item_list: Vec<ShopeeItem>,
}

#[derive(Debug, Deserialize)]
struct ShopeeItem {
    item_id: u64,
    #[serde(default)]
    has_model: bool,
    stock_info_v2: Option<StockInfo>,
}

#[derive(Debug, Deserialize)]
struct StockInfo {
    summary_info: Option<StockSummary>,
}

#[derive(Debug, Deserialize)]
struct StockSummary {
    total_available_stock: Option<i64>,
}

/// `get_model_list` `response`.
#[derive(Debug, Deserialize)]
struct ShopeeModels {
    #[serde(default)]
    model: Vec<ShopeeModel>,
}

#[derive(Debug, Deserialize)]
struct ShopeeModel {
    model_id: u64,
    stock_info_v2: Option<StockInfo>,
}

fn available(stock: Option<&StockInfo>) -> Option<i64> {
    stock?.summary_info.as_ref()?.total_available_stock
}

/// Each sampled entry's Shopee `item_id`; an entry without one is the app's
/// error.
fn shopee_ids(sample: &[AppItem]) -> Result<Vec<u64>, String> {
    sample
        .iter()
        .map(|item| {
            item.item_id.ok_or_else(|| {
                format!(
                    "app inventory: SKU {} has no `item_id` (needed for shopee)",
                    item.sku
                )
            })
        })
        .collect()
}

/// The marketplace quantity of each sampled entry: the item's
/// `total_available_stock` from `get_item_base_info`, or for an entry with
/// `model_id` the model's from `get_model_list`. An entry without `model_id`
/// whose item has models but no item-level stock gets the sum of its models.
fn shopee_quantities(
    shop: &Shopee,
    transport: &dyn Transport,
    sample: &[AppItem],
    ids: Vec<u64>,
) -> Result<Vec<Option<i64>>, String> {
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    let mut items: BTreeMap<u64, ShopeeItem> = BTreeMap::new();
    for batch in unique.chunks(BATCH) {
        let list: Vec<String> = batch.iter().map(u64::to_string).collect();
        let answer: ShopeeItems = shop.get(
            transport,
            "/api/v2/product/get_item_base_info",
            &[("item_id_list", &list.join(","))],
        )?;
        for item in answer.item_list {
            items.entry(item.item_id).or_insert(item);
        }
    }
    let mut models: BTreeMap<u64, Vec<ShopeeModel>> = BTreeMap::new();
    let mut out = Vec::with_capacity(sample.len());
    for (entry, id) in sample.iter().zip(ids) {
        let Some(item) = items.get(&id) else {
            out.push(None);
            continue;
        };
        let item_stock = available(item.stock_info_v2.as_ref());
        let quantity = match (entry.model_id, item_stock) {
            (None, Some(stock)) => Some(stock),
            (None, None) if !item.has_model => None,
            (model_id, _) => {
                let list = match models.entry(id) {
                    Entry::Occupied(known) => known.into_mut(),
                    Entry::Vacant(slot) => {
                        let answer: ShopeeModels = shop.get(
                            transport,
                            "/api/v2/product/get_model_list",
                            &[("item_id", &id.to_string())],
                        )?;
                        slot.insert(answer.model)
                    }
                };
                match model_id {
                    Some(model_id) => list
                        .iter()
                        .find(|m| m.model_id == model_id)
                        .and_then(|m| available(m.stock_info_v2.as_ref())),
                    None if list.is_empty() => None,
                    None => Some(
                        list.iter()
                            .filter_map(|m| available(m.stock_info_v2.as_ref()))
                            .sum(),
                    ),
                }
            }
        };
        out.push(quantity);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
