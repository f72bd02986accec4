//! `price-guard`: a health check that catches a batch price update gone
//! wrong. It reads the app's price export and compares it with the prices
//! remembered when the last release was accepted as good.
//!
//! Config keys (the plugin entry's `config` table, all strings):
//!
//! - `prices_url` (required): the app's price export. `GET` answers a JSON
//!   array `[{"sku": "A1", "price": 12.5}, ...]`; a price is a JSON number
//!   or a decimal string (`"12.50"`).
//! - `max_change` (required): the relative move that counts as a changed
//!   price, as a fraction (`0.3`) or a percentage (`30%`).
//! - `max_changed_ratio` (default `0.05`): the check fails when more than
//!   this share of the baseline's SKUs changed (fraction or percentage).
//! - `worst` (default `5`, at most 20): how many changed SKUs the summary
//!   names, worst first: `SKU-9 19.99 -> 1.99 (-90%)`.
//! - `max_skus` (default `20000`): the most entries the export may list;
//!   more is an error (the baseline must fit the 1 MiB kv store).
//!
//! Phases: in `steady` (the release was accepted) the check records the
//! export as the baseline when the stored one belongs to another release or
//! is missing, and passes. In `bake` it compares the export with the
//! baseline: a SKU changed when its price moved by more than `max_change`
//! or it is missing from the export (a wiped catalogue is the failure this
//! guards against); SKUs new since the baseline never count. Without a
//! baseline it warns. In `steady` with the release's own baseline it
//! compares too, but only warns: prices may change after a release.
//!
//! Errors (never a pass): an unreachable export, a non-2xx answer, bad
//! JSON, negative or non-numeric prices, duplicate SKUs, too many SKUs.
//!
//! Metrics: `skus` (SKUs in the export) always; after a comparison also
//! `skus_changed`, `changed_ratio` (changed / SKUs in the baseline) and
//! `max_change_seen` (the largest relative move, `1` for a missing SKU).

mod baseline;
mod prices;

use std::cmp::Ordering;

use rollback_plugin_sdk::check::{self, CheckContext, CheckResult, Guest, Phase};
use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::http::Request;
use rollback_plugin_sdk::log;

use crate::baseline::Baseline;
use crate::prices::Prices;

/// The plugin; its `check` is the world's export.
struct PriceGuard;

impl Guest for PriceGuard {
    fn check(ctx: CheckContext) -> Result<CheckResult, String> {
        let settings = Settings::from_config(&Config::host())?;
        let prices = settings.fetch()?;
        judge(
            &settings,
            &ctx.active.version,
            ctx.phase,
            &prices,
            ctx.now_ms,
        )
    }
}

check::export_check!(PriceGuard);

/// The parsed configuration.
#[derive(Debug, PartialEq)]
struct Settings {
    prices_url: String,
    max_change: f64,
    max_changed_ratio: f64,
    worst: usize,
    max_skus: usize,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, String> {
        let prices_url = config.required("prices_url")?;
        let max_change = config
            .share("max_change")?
            .ok_or("config `max_change` is required (e.g. `0.3` or `30%`)")?;
        if max_change <= 0.0 {
            return Err("config `max_change` must be greater than zero".to_string());
        }
        let max_changed_ratio = config.ratio("max_changed_ratio")?.unwrap_or(0.05);
        let worst = config.parse_in::<usize>("worst", ..=20)?.unwrap_or(5);
        let max_skus = config.parse_in::<usize>("max_skus", 1..)?.unwrap_or(20_000);
        Ok(Settings {
            prices_url,
            max_change,
            max_changed_ratio,
            worst,
            max_skus,
        })
    }

    /// Reads the export; any trouble is an error.
    fn fetch(&self) -> Result<Prices, String> {
        let url = &self.prices_url;
        let response = Request::get(url)
            .header("Accept", "application/json")
            .send()
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("GET {url}: {e}"))?;
        prices::parse(response.body(), self.max_skus)
    }
}

/// The verdict on `prices`, the export of release `version` in `phase`.
fn judge(
    settings: &Settings,
    version: &str,
    phase: Phase,
    prices: &Prices,
    now_ms: u64,
) -> Result<CheckResult, String> {
    let skus = prices.len() as f64;
    let stored = baseline::load();
    if phase == Phase::Steady {
        let why = match &stored {
            Ok(Some(b)) if b.version == version => {
                let cmp = Comparison::new(b, prices, settings.max_change);
                return Ok(cmp.verdict(settings, true));
            }
            Ok(Some(b)) => format!("replacing the baseline of release {}", b.version),
            Ok(None) => "no baseline yet".to_string(),
            Err(e) => format!("replacing an unreadable baseline ({e})"),
        };
        if prices.is_empty() {
            return Ok(CheckResult::warn(format!(
                "the price export of release {version} is empty; not recording it as the baseline"
            ))
            .metric("skus", 0.0));
        }
        let bytes = baseline::save(version, now_ms, prices)?;
        log::info!("{why}: recorded {} SKUs ({bytes} bytes)", prices.len());
        return Ok(CheckResult::pass(format!(
            "recorded the baseline of release {version}: {} SKUs ({why})",
            prices.len()
        ))
        .metric("skus", skus));
    }
    match stored? {
        None => Ok(CheckResult::warn(format!(
            "no baseline from a good release yet; {} SKUs read, recorded once a release passes its bake",
            prices.len()
        ))
        .metric("skus", skus)),
        Some(b) => Ok(Comparison::new(&b, prices, settings.max_change).verdict(settings, false)),
    }
}

/// One SKU that moved by more than `max_change`, or disappeared.
#[derive(Debug, PartialEq)]
struct Change {
    sku: String,
    old: f64,
    /// `None`: missing from the export.
    new: Option<f64>,
    /// The relative move: infinite for a price that was zero, -1 for a
    /// missing SKU.
    rel: f64,
}

impl Change {
    /// How bad it is, for ordering: the size of the move.
    fn severity(&self) -> f64 {
        self.rel.abs()
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.new {
            None => write!(f, "{} {} -> missing", self.sku, self.old),
            Some(new) if self.rel.is_infinite() => {
                write!(f, "{} {} -> {new} (from zero)", self.sku, self.old)
            }
            Some(new) => write!(
                f,
                "{} {} -> {new} ({})",
                self.sku,
                self.old,
                signed_pct(self.rel)
            ),
        }
    }
}

/// The export against a baseline.
#[derive(Debug)]
struct Comparison {
    baseline_version: String,
    baseline_skus: usize,
    skus: usize,
    new_skus: usize,
    /// Worst first.
    changed: Vec<Change>,
    max_change_seen: f64,
}

impl Comparison {
    fn new(baseline: &Baseline, prices: &Prices, max_change: f64) -> Self {
        let mut changed = Vec::new();
        let mut max_change_seen: f64 = 0.0;
        for (sku, &old) in &baseline.prices {
            let (new, rel) = match prices.get(sku) {
                None => (None, -1.0),
                Some(&new) if old == 0.0 && new == 0.0 => (Some(new), 0.0),
                Some(&new) if old == 0.0 => (Some(new), f64::INFINITY),
                Some(&new) => (Some(new), (new - old) / old),
            };
            if rel.is_finite() {
                max_change_seen = max_change_seen.max(rel.abs());
            }
            // The epsilon keeps an exact 30% move at a 30% limit unchanged.
            if rel.abs() > max_change + 1e-9 {
                changed.push(Change {
                    sku: sku.clone(),
                    old,
                    new,
                    rel,
                });
            }
        }
        changed.sort_by(|a, b| {
            b.severity()
                .partial_cmp(&a.severity())
                .unwrap_or(Ordering::Equal)
                .then_with(|| a.sku.cmp(&b.sku))
        });
        let new_skus = prices
            .keys()
            .filter(|s| !baseline.prices.contains_key(*s))
            .count();
        Comparison {
            baseline_version: baseline.version.clone(),
            baseline_skus: baseline.prices.len(),
            skus: prices.len(),
            new_skus,
            changed,
            max_change_seen,
        }
    }

    /// Changed SKUs over the baseline's SKUs.
    fn ratio(&self) -> f64 {
        if self.baseline_skus == 0 {
            0.0
        } else {
            self.changed.len() as f64 / self.baseline_skus as f64
        }
    }

    /// Fails over `max_changed_ratio`; `steady` only warns.
    fn verdict(&self, settings: &Settings, steady: bool) -> CheckResult {
        let ratio = self.ratio();
        let mut summary = format!(
            "{} of {} SKUs ({}) moved more than {} since release {} (max {})",
            self.changed.len(),
            self.baseline_skus,
            pct(ratio),
            pct(settings.max_change),
            self.baseline_version,
            pct(settings.max_changed_ratio),
        );
        if self.new_skus > 0 {
            summary.push_str(&format!("; {} new", self.new_skus));
        }
        let named: Vec<String> = self
            .changed
            .iter()
            .take(settings.worst)
            .map(Change::to_string)
            .collect();
        if !named.is_empty() {
            summary.push_str(": ");
            summary.push_str(&named.join(", "));
            let more = self.changed.len() - named.len();
            if more > 0 {
                summary.push_str(&format!(" and {more} more"));
            }
        }
        let over = ratio > settings.max_changed_ratio;
        let result = match (over, steady) {
            (false, _) => CheckResult::pass(summary),
            (true, false) => CheckResult::fail(summary),
            (true, true) => CheckResult::warn(format!("{summary} (after the bake: not judged)")),
        };
        result
            .metric("skus", self.skus as f64)
            .metric("skus_changed", self.changed.len() as f64)
            .metric("changed_ratio", ratio)
            .metric("max_change_seen", self.max_change_seen)
    }
}

/// `0.947` as `94.7%`.
fn pct(fraction: f64) -> String {
    let tenths = (fraction * 1000.0).round() / 10.0;
    format!("{tenths}%")
}

/// A relative move as `-90%` or `+4.5%`: whole percents from 10% up.
fn signed_pct(rel: f64) -> String {
    let p = rel * 100.0;
    let shown = if p.abs() >= 10.0 {
        p.round()
    } else {
        (p * 10.0).round() / 10.0
    };
    if shown > 0.0 {
        format!("+{shown}%")
    } else {
        format!("{shown}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollback_plugin_sdk::check::Status;
    use rollback_plugin_sdk::kv;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        Settings::from_config(&Config::from_pairs(pairs))
    }

    fn standard() -> Settings {
        settings(&[
            ("prices_url", "http://127.0.0.1:1/prices"),
            ("max_change", "30%"),
        ])
        .expect("valid")
    }

    fn prices(pairs: &[(&str, f64)]) -> Prices {
        pairs.iter().map(|(s, p)| (s.to_string(), *p)).collect()
    }

    /// 100 SKUs at 10.0 each.
    fn catalogue() -> Prices {
        (0..100).map(|i| (format!("SKU-{i}"), 10.0)).collect()
    }

    #[test]
    fn config_keys_and_defaults() {
        let s = standard();
        assert_eq!(s.max_change, 0.3);
        assert_eq!(
            (s.max_changed_ratio, s.worst, s.max_skus),
            (0.05, 5, 20_000)
        );
        let s = settings(&[
            ("prices_url", "http://x/"),
            ("max_change", "0.25"),
            ("max_changed_ratio", "10%"),
            ("worst", "2"),
            ("max_skus", "50"),
        ])
        .expect("valid");
        assert_eq!(
            (s.max_change, s.max_changed_ratio, s.worst, s.max_skus),
            (0.25, 0.1, 2, 50)
        );
        assert_eq!(
            settings(&[("max_change", "0.3")]),
            Err("config `prices_url` is required".to_string())
        );
        let e = settings(&[("prices_url", "http://x/")]).expect_err("no max_change");
        assert!(e.contains("`max_change` is required"), "{e}");
        for (key, bad) in [
            ("max_change", "0"),
            ("max_change", "-5%"),
            ("max_change", "lots"),
            ("max_changed_ratio", "150%"),
            ("worst", "21"),
            ("max_skus", "0"),
        ] {
            let mut pairs = vec![("prices_url", "http://x/"), ("max_change", "30%")];
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, bad));
            let e = settings(&pairs).expect_err(bad);
            assert!(e.contains(key), "{key} = {bad}: {e}");
        }
    }

    #[test]
    fn percent_texts() {
        assert_eq!(pct(0.05), "5%");
        assert_eq!(pct(2.0 / 3.0), "66.7%");
        assert_eq!(signed_pct((1.99 - 19.99) / 19.99), "-90%");
        assert_eq!(signed_pct(0.045), "+4.5%");
        assert_eq!(signed_pct(2.5), "+250%");
    }

    #[test]
    fn steady_records_then_bake_compares() {
        let s = standard();
        let r = judge(&s, "1.0.0", Phase::Bake, &catalogue(), 1).expect("verdict");
        assert_eq!(r.status, Status::Warn);
        assert!(
            r.summary.starts_with("no baseline from a good release yet"),
            "{}",
            r.summary
        );

        let r = judge(&s, "1.0.0", Phase::Steady, &catalogue(), 2).expect("verdict");
        assert_eq!(r.status, Status::Pass);
        assert_eq!(
            r.summary,
            "recorded the baseline of release 1.0.0: 100 SKUs (no baseline yet)"
        );
        assert_eq!(r.metric_value("skus"), Some(100.0));

        // The next release moved 3 prices by 50% (3% < 5%): pass.
        let mut p = catalogue();
        for i in 0..3 {
            p.insert(format!("SKU-{i}"), 15.0);
        }
        p.insert("NEW-1".to_string(), 99.0);
        let r = judge(&s, "1.1.0", Phase::Bake, &p, 3).expect("verdict");
        assert_eq!(r.status, Status::Pass, "{}", r.summary);
        assert_eq!(
            r.summary,
            "3 of 100 SKUs (3%) moved more than 30% since release 1.0.0 (max 5%); 1 new: \
             SKU-0 10 -> 15 (+50%), SKU-1 10 -> 15 (+50%), SKU-2 10 -> 15 (+50%)"
        );
        assert_eq!(r.metric_value("skus"), Some(101.0));
        assert_eq!(r.metric_value("skus_changed"), Some(3.0));
        assert_eq!(r.metric_value("changed_ratio"), Some(0.03));
        assert_eq!(r.metric_value("max_change_seen"), Some(0.5));

        // Accepted: steady replaces the baseline with 1.1.0's prices.
        let r = judge(&s, "1.1.0", Phase::Steady, &p, 4).expect("verdict");
        assert!(
            r.summary
                .contains("replacing the baseline of release 1.0.0"),
            "{}",
            r.summary
        );
        assert_eq!(
            baseline::load().expect("ok").expect("some").version,
            "1.1.0"
        );
    }

    #[test]
    fn a_botched_batch_update_fails_worst_first() {
        let s = standard();
        let mut base = catalogue();
        base.insert("SKU-9".to_string(), 19.99);
        baseline::save("1.0.0", 1, &base).expect("stored");
        let mut p = catalogue();
        for i in 10..60 {
            p.insert(format!("SKU-{i}"), 1.0);
        }
        p.insert("SKU-9".to_string(), 1.99);
        p.insert("SKU-5".to_string(), 100.0);
        p.remove("SKU-7");
        let r = judge(&s, "1.1.0", Phase::Bake, &p, 2).expect("verdict");
        assert_eq!(r.status, Status::Fail);
        assert_eq!(
            r.summary,
            "53 of 100 SKUs (53%) moved more than 30% since release 1.0.0 (max 5%): \
             SKU-5 10 -> 100 (+900%), SKU-7 10 -> missing, SKU-9 19.99 -> 1.99 (-90%), \
             SKU-10 10 -> 1 (-90%), SKU-11 10 -> 1 (-90%) and 48 more"
        );
        assert_eq!(r.metric_value("skus_changed"), Some(53.0));
        assert_eq!(r.metric_value("changed_ratio"), Some(0.53));
        assert_eq!(r.metric_value("max_change_seen"), Some(9.0));

        // The same prices after the bake of the baseline's own release: warn.
        let r = judge(&s, "1.0.0", Phase::Steady, &p, 3).expect("verdict");
        assert_eq!(r.status, Status::Warn);
        assert!(r.summary.ends_with("(after the bake: not judged)"));
    }

    #[test]
    fn a_wiped_catalogue_fails_and_is_never_recorded() {
        let s = standard();
        baseline::save("1.0.0", 1, &catalogue()).expect("stored");
        let r = judge(&s, "1.1.0", Phase::Bake, &Prices::new(), 2).expect("verdict");
        assert_eq!(r.status, Status::Fail);
        assert!(
            r.summary.starts_with("100 of 100 SKUs (100%)"),
            "{}",
            r.summary
        );
        assert_eq!(r.metric_value("max_change_seen"), Some(1.0));
        let r = judge(&s, "1.1.0", Phase::Steady, &Prices::new(), 3).expect("verdict");
        assert_eq!(r.status, Status::Warn);
        assert_eq!(
            baseline::load().expect("ok").expect("kept").version,
            "1.0.0"
        );
    }

    #[test]
    fn limits_and_zero_prices() {
        let s = settings(&[
            ("prices_url", "http://x/"),
            ("max_change", "30%"),
            ("worst", "0"),
        ])
        .expect("valid");
        baseline::save("1", 1, &prices(&[("A", 10.0), ("B", 0.0), ("C", 0.0)])).expect("stored");
        // Exactly 30% is not more than 30%; 0 -> 0 is no move; 0 -> 5 is.
        let r = judge(
            &s,
            "2",
            Phase::Bake,
            &prices(&[("A", 13.0), ("B", 0.0), ("C", 5.0)]),
            2,
        )
        .expect("verdict");
        assert_eq!(r.status, Status::Fail);
        assert_eq!(
            r.summary,
            "1 of 3 SKUs (33.3%) moved more than 30% since release 1 (max 5%)"
        );
        assert_eq!(r.metric_value("max_change_seen"), Some(0.3));
        let change = Change {
            sku: "C".into(),
            old: 0.0,
            new: Some(5.0),
            rel: f64::INFINITY,
        };
        assert_eq!(change.to_string(), "C 0 -> 5 (from zero)");
    }

    #[test]
    fn an_unreadable_baseline_is_an_error_in_the_bake_and_replaced_after() {
        let s = standard();
        baseline::save("1", 1, &catalogue()).expect("stored");
        kv::delete("baseline.0");
        let e = judge(&s, "2", Phase::Bake, &catalogue(), 2).expect_err("unreadable");
        assert!(e.contains("missing"), "{e}");
        let r = judge(&s, "1", Phase::Steady, &catalogue(), 3).expect("verdict");
        assert_eq!(r.status, Status::Pass);
        assert!(r.summary.contains("unreadable"), "{}", r.summary);
        assert!(baseline::load().expect("readable").is_some());
    }
}
