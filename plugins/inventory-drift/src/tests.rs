use marketplace::testing;
use marketplace::transport::fake::Fake;
use rollback_plugin_sdk::check::Status;
use serde_json::{json, Value};

use super::*;

fn settings(pairs: &[(&str, &str)]) -> Result<Settings, String> {
    Settings::from_config(&testing::config(pairs))
}

/// The settings of `pairs` and `app_inventory_url = http://app/inventory`.
fn valid(pairs: &[(&str, &str)]) -> Settings {
    let mut all = pairs.to_vec();
    all.push(("app_inventory_url", "http://app/inventory"));
    settings(&all).expect("valid")
}

/// What the config test compares: sample size, tolerance, ratio.
fn knobs(s: &Settings) -> (usize, u64, f64) {
    (s.sample_size, s.tolerance, s.max_drifted_ratio)
}

fn item(sku: &str, quantity: i64) -> AppItem {
    AppItem {
        sku: sku.to_string(),
        quantity,
        item_id: None,
        model_id: None,
    }
}

fn skus(items: &[AppItem]) -> Vec<&str> {
    items.iter().map(|i| i.sku.as_str()).collect()
}

#[test]
fn config() {
    let amazon = [
        ("provider", "amazon"),
        ("marketplace_ids", "ATVPDKIKX0DER"),
        ("app_inventory_url", "http://app/inventory"),
    ];
    assert_eq!(knobs(&settings(&amazon).expect("valid")), (50, 0, 0.05));
    let err = settings(&[("provider", "walmart"), ("app_inventory_url", "x")]).err();
    assert_eq!(
        err.as_deref(),
        Some("config `provider` = `walmart`: expected one of amazon, shopee")
    );
    let err = settings(&[("app_inventory_url", "x")]).err();
    assert_eq!(
        err.as_deref(),
        Some("config `provider` is required (amazon or shopee)")
    );
    for (key, value, expected) in [
        (
            "sample_size",
            "0",
            "config `sample_size` = `0`: must be at least 1",
        ),
        (
            "max_drifted_ratio",
            "1.5",
            "config `max_drifted_ratio` = `1.5`: must be at most 1 (100%)",
        ),
        (
            "max_drifted_ratio",
            "x",
            "config `max_drifted_ratio` = `x`: expected a fraction like 0.05 or a percentage like 5%",
        ),
    ] {
        let mut pairs = amazon.to_vec();
        pairs.push((key, value));
        assert_eq!(settings(&pairs).err().as_deref(), Some(expected));
    }
    let mut pairs = amazon.to_vec();
    pairs.extend([
        ("sample_size", "3"),
        ("tolerance", "2"),
        ("max_drifted_ratio", "0.25"),
    ]);
    assert_eq!(knobs(&settings(&pairs).expect("valid")), (3, 2, 0.25));
    let mut pairs = amazon.to_vec();
    pairs.push(("max_drifted_ratio", "10%"));
    assert_eq!(knobs(&settings(&pairs).expect("valid")), (50, 0, 0.1));
}

#[test]
fn samples_rotate_through_every_sku() {
    let items = vec![
        item("d", 1),
        item("b", 1),
        item("a", 1),
        item("c", 1),
        item("b", 9),
        item("e", 1),
    ];
    let first = sample(items.clone(), 2, None);
    assert_eq!(skus(&first), ["a", "b"]);
    assert_eq!(first[1].quantity, 1, "the first entry of a repeated SKU");
    assert_eq!(skus(&sample(items.clone(), 2, Some("b"))), ["c", "d"]);
    assert_eq!(skus(&sample(items.clone(), 2, Some("d"))), ["e", "a"]);
    // A cursor SKU that is gone: start at the next one.
    assert_eq!(skus(&sample(items.clone(), 2, Some("bb"))), ["c", "d"]);
    assert_eq!(skus(&sample(items.clone(), 2, Some("z"))), ["a", "b"]);
    assert_eq!(
        skus(&sample(items.clone(), 10, Some("c"))),
        ["d", "e", "a", "b", "c"]
    );
    assert!(sample(Vec::new(), 5, Some("a")).is_empty());
    // Run after run, every SKU comes up.
    let mut cursor: Option<String> = None;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let s = sample(items.clone(), 2, cursor.as_deref());
        seen.extend(s.iter().map(|i| i.sku.clone()));
        cursor = s.last().map(|i| i.sku.clone());
    }
    assert_eq!(seen.len(), 5);
}

fn compared(sku: &str, app: i64, market: Option<i64>) -> Compared {
    Compared {
        sku: sku.to_string(),
        app,
        market,
    }
}

#[test]
fn drift_is_counted_and_judged() {
    let mut list: Vec<Compared> = (0..18)
        .map(|i| compared(&format!("ok{i:02}"), 5, Some(5)))
        .collect();
    list.push(compared("near", 10, Some(9)));
    list.push(compared("far", 10, Some(2)));
    // Tolerance 1: only `far` drifted, 1 of 20 = 5%, not above 5%.
    let r = judge(Provider::Amazon, &list, 20, 1, 0.05);
    assert_eq!(r.status, Status::Pass);
    assert_eq!(
        r.summary,
        "amazon: 1 of 20 SKUs drifted (5.0% <= max 5.0%): far app 10 vs amazon 2"
    );
    assert_eq!(
        (
            r.metric_value("skus_checked"),
            r.metric_value("skus_drifted"),
            r.metric_value("drifted_ratio")
        ),
        (Some(20.0), Some(1.0), Some(0.05))
    );
    // Tolerance 0: `near` too, and an unknown SKU: 3 of 21.
    list.push(compared("gone", 4, None));
    let r = judge(Provider::Shopee, &list, 400, 0, 0.05);
    assert_eq!(r.status, Status::Fail);
    assert_eq!(
        r.summary,
        "shopee: 3 of 21 sampled of 400 SKUs drifted (14.3% > max 5.0%): gone app 4 vs shopee missing, far app 10 vs shopee 2, near app 10 vs shopee 9"
    );
    assert_eq!(r.metric_value("skus_drifted"), Some(3.0));
    let ratio = r.metric_value("drifted_ratio").expect("drifted_ratio");
    assert!((ratio - 3.0 / 21.0).abs() < 1e-12);
    // All match.
    let r = judge(Provider::Amazon, &list[..18], 18, 0, 0.05);
    assert_eq!(
        (r.status, r.summary.as_str()),
        (Status::Pass, "amazon: all 18 SKUs match within 0 units")
    );
    // Nothing to compare.
    let r = judge(Provider::Amazon, &[], 0, 0, 0.05);
    assert_eq!(r.status, Status::Warn);
    assert_eq!(r.metric_value("skus_checked"), Some(0.0));
    // Only the worst five are named.
    let many: Vec<Compared> = (0..8)
        .map(|i| compared(&format!("s{i}"), 10 + i, Some(0)))
        .collect();
    let r = judge(Provider::Amazon, &many, 8, 0, 0.5);
    assert!(r.summary.ends_with("s7 app 17 vs amazon 0, s6 app 16 vs amazon 0, s5 app 15 vs amazon 0, s4 app 14 vs amazon 0, s3 app 13 vs amazon 0, and 3 more"), "{}", r.summary);
    assert_eq!(percent(2.0 / 3.0), "66.7%");
}

// ---- Amazon ----------------------------------------------------------------

fn inventory_model() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/api-models/amazon-sp-api/fbaInventory.json"
    );
    let text = std::fs::read_to_string(path).expect("the SP-API fbaInventory model");
    serde_json::from_str(&text).expect("JSON")
}

/// A value for `schema` with every property filled in, `$ref`s resolved
/// against the model's `definitions`.
fn example_of(schema: &Value, model: &Value, depth: usize) -> Value {
    assert!(depth < 20, "schema too deep");
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/definitions/");
        return example_of(&model["definitions"][name], model, depth + 1);
    }
    match schema["type"].as_str() {
        Some("object") | None if schema["properties"].is_object() => {
            let mut out = serde_json::Map::new();
            for (key, property) in schema["properties"].as_object().into_iter().flatten() {
                out.insert(key.clone(), example_of(property, model, depth + 1));
            }
            Value::Object(out)
        }
        Some("array") => json!([example_of(&schema["items"], model, depth + 1)]),
        Some("integer") => json!(7),
        Some("number") => json!(7.5),
        Some("boolean") => json!(true),
        Some("string") if schema["format"] == "date-time" => json!("2024-05-01T10:00:00Z"),
        Some("string") => schema["enum"][0]
            .clone()
            .as_str()
            .map_or(json!("x"), |e| json!(e)),
        _ => json!({}),
    }
}

#[test]
fn every_get_inventory_summaries_example_parses() {
    let model = inventory_model();
    let path = &model["paths"]["/fba/inventory/v1/summaries"];
    let op = &path["get"];
    assert_eq!(op["operationId"], "getInventorySummaries");
    let ok = &op["responses"]["200"];
    // Static sandbox examples, where the model has any (this version's
    // sandbox for the path is `dynamic` only, so there may be none).
    let mut examples: Vec<Value> = Vec::new();
    for sandbox in [&ok["x-amzn-api-sandbox"], &path["x-amzn-api-sandbox"]] {
        for e in sandbox["static"].as_array().into_iter().flatten() {
            examples.push(e["response"].clone());
        }
    }
    if let Some(doc) = ok["examples"]["application/json"].as_object() {
        examples.push(Value::Object(doc.clone()));
    }
    for example in &examples {
        let page: AmazonInventory =
            serde_json::from_value(example.clone()).expect("a getInventorySummaries answer");
        amazon_page(page).expect("valid");
    }
    // And an answer with every field of the 200 schema filled in.
    let full = example_of(&ok["schema"], &model, 0);
    assert_eq!(
        full["payload"]["inventorySummaries"][0]["inventoryDetails"]["fulfillableQuantity"],
        7
    );
    let page: AmazonInventory = serde_json::from_value(full).expect("the full schema");
    let (quantities, next) = amazon_page(page).expect("valid");
    assert_eq!(quantities, vec![("x".to_string(), 7)]);
    assert_eq!(next.as_deref(), Some("x"));
}

#[test]
fn amazon_quantity_prefers_fulfillable() {
    let page: AmazonInventory = serde_json::from_value(json!({
        "payload": {"granularity": {"granularityType": "Marketplace", "granularityId": "A"},
            "inventorySummaries": [
                {"sellerSku": "a", "inventoryDetails": {"fulfillableQuantity": 3}, "totalQuantity": 9},
                {"sellerSku": "b", "totalQuantity": 9},
                {"sellerSku": "c"},
                {"asin": "no-sku", "totalQuantity": 1}
            ]},
        "pagination": {"nextToken": ""}
    }))
    .expect("page");
    let (quantities, next) = amazon_page(page).expect("valid");
    assert_eq!(
        quantities,
        vec![
            ("a".to_string(), 3),
            ("b".to_string(), 9),
            ("c".to_string(), 0)
        ]
    );
    assert_eq!(next, None);
}

#[test]
fn amazon_end_to_end() {
    let s = valid(&[
        ("provider", "amazon"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "ATVPDKIKX0DER,A2EUQ1WTGCTBG2"),
        ("sample_size", "52"),
        ("max_drifted_ratio", "0.03"),
    ]);
    let mut app: Vec<Value> = (0..53)
        .map(|i| json!({"sku": format!("S{i:02}"), "quantity": 10}))
        .collect();
    app.push(json!({"sku": "A&B", "quantity": 1}));
    let app = Value::Array(app).to_string();
    // First batch: 50 SKUs ("A&B", S00..S48), over two pages; S00 differs.
    let page1 = json!({"payload": {"inventorySummaries": [
        {"sellerSku": "A&B", "inventoryDetails": {"fulfillableQuantity": 1}},
        {"sellerSku": "S00", "inventoryDetails": {"fulfillableQuantity": 4}}]},
        "pagination": {"nextToken": "t/1"}});
    let rest: Vec<Value> = (1..49)
        .map(|i| json!({"sellerSku": format!("S{i:02}"), "totalQuantity": 10}))
        .collect();
    let page2 = json!({"payload": {"inventorySummaries": rest}});
    // Second batch: S49 and S50; S50 unknown.
    let page3 =
        json!({"payload": {"inventorySummaries": [{"sellerSku": "S49", "totalQuantity": 10}]}});
    let answers = [
        (200, app.clone()),
        (
            200,
            r#"{"access_token":"Atza|t","expires_in":3600}"#.to_string(),
        ),
        (200, page1.to_string()),
        (200, page2.to_string()),
        (200, page3.to_string()),
    ];
    let answers: Vec<(u16, &str)> = answers.iter().map(|(s, b)| (*s, b.as_str())).collect();
    let fake = Fake::new(0, &answers);
    let r = s.run(&fake).expect("verdict");
    assert_eq!(r.status, Status::Fail);
    assert_eq!(
        r.summary,
        "amazon: 2 of 52 sampled of 54 SKUs drifted (3.8% > max 3.0%): S50 app 10 vs amazon missing, S00 app 10 vs amazon 4"
    );
    assert_eq!(r.metric_value("skus_checked"), Some(52.0));
    let urls = fake.urls();
    let first = format!(
        "http://sp/fba/inventory/v1/summaries?details=true&granularityType=Marketplace\
         &granularityId=ATVPDKIKX0DER&marketplaceIds=ATVPDKIKX0DER&sellerSkus=A%26B,{}",
        (0..49)
            .map(|i| format!("S{i:02}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(urls[2], first);
    assert_eq!(urls[3], format!("{first}&nextToken=t%2F1"));
    assert!(urls[4].ends_with("&sellerSkus=S49,S50"), "{}", urls[4]);
    assert_eq!(kv::get(CURSOR_KEY).as_deref(), Some(&b"S50"[..]));
    // The next run, once a read is due, starts after S50 and wraps around.
    marketplace::quota::forget();
    let empty = r#"{"payload":{"inventorySummaries":[]}}"#;
    let fake = Fake::new(0, &[(200, &app), (200, empty), (200, empty)]);
    let r = s.run(&fake).expect("verdict");
    assert!(fake.urls()[1].ends_with("&sellerSkus=S51,S52,A%26B,S00,S01,S02,S03,S04,S05,S06,S07,S08,S09,S10,S11,S12,S13,S14,S15,S16,S17,S18,S19,S20,S21,S22,S23,S24,S25,S26,S27,S28,S29,S30,S31,S32,S33,S34,S35,S36,S37,S38,S39,S40,S41,S42,S43,S44,S45,S46"), "{}", fake.urls()[1]);
    assert_eq!(r.metric_value("skus_drifted"), Some(52.0));
}

#[test]
fn problems_are_errors_and_keep_the_cursor() {
    let s = valid(&[
        ("provider", "amazon"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
    ]);
    let token = r#"{"access_token":"t","expires_in":3600}"#;
    let app = r#"[{"sku":"a","quantity":1}]"#;
    let denied = r#"{"errors":[{"code":"Unauthorized","message":"Access to requested resource is denied."}]}"#;
    // The app's answers are errors (the release's fault).
    for (answers, expected) in [
        (vec![(200, r#"{"sku":"a"}"#)], "GET http://app/inventory: unexpected answer: invalid type: map, expected a sequence at line 1 column 0"),
        (vec![(200, r#"[{"sku":"a","quantity":"many"}]"#)], "GET http://app/inventory: unexpected answer: invalid type: string \"many\", expected i64 at line 1 column 29"),
    ] {
        kv::delete("lwa-token");
        let fake = Fake::new(0, &answers);
        assert_eq!(s.run(&fake).err().as_deref(), Some(expected));
        assert_eq!(kv::get(CURSOR_KEY), None);
    }
    // The marketplace's are inconclusive: they say nothing about the release.
    for (answers, expected) in [
        (vec![(200, app), (200, token), (403, denied), (200, token), (403, denied)], "GET http://sp/fba/inventory/v1/summaries -> HTTP 403: Unauthorized: Access to requested resource is denied."),
        (vec![(200, app), (200, token), (200, "{}")], "getInventorySummaries: the answer has no `payload`"),
        (vec![(200, app), (200, token), (200, "[")], "GET http://sp/fba/inventory/v1/summaries: unexpected answer: EOF while parsing a list at line 1 column 1"),
    ] {
        kv::delete("lwa-token");
        marketplace::quota::forget();
        let fake = Fake::new(0, &answers);
        let r = s.run(&fake).expect("a result");
        assert_eq!(r.status, Status::Inconclusive);
        assert_eq!(
            r.summary,
            format!("amazon: no verdict, the marketplace could not be read: {expected}")
        );
        assert_eq!(kv::get(CURSOR_KEY), None);
    }
    marketplace::quota::forget();
    let fake = Fake::new(0, &[(200, "[]")]);
    assert_eq!(s.run(&fake).expect("verdict").status, Status::Warn);
}

#[test]
fn between_reads_the_kept_answer_judges_the_app_now() {
    let s = valid(&[
        ("provider", "amazon"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
        ("max_drifted_ratio", "0.5"),
        ("marketplace_interval", "1m"),
    ]);
    let app = |a: i64, b: i64, c: i64| {
        json!([{"sku": "a", "quantity": a}, {"sku": "b", "quantity": b}, {"sku": "c", "quantity": c}])
            .to_string()
    };
    let token = r#"{"access_token":"t","expires_in":3600}"#;
    let market = json!({"payload": {"inventorySummaries": [
        {"sellerSku": "a", "totalQuantity": 5},
        {"sellerSku": "b", "totalQuantity": 6},
        {"sellerSku": "c", "totalQuantity": 3}]}})
    .to_string();
    let first = app(5, 7, 3);
    let fake = Fake::new(0, &[(200, &first), (200, token), (200, &market)]);
    let r = s.run(&fake).expect("verdict");
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert_eq!(r.metric_value("skus_drifted"), Some(1.0));

    // 10 s later: the app only. `a` still matches, `b` still says what it
    // said when they disagreed, `c` moved since and is not judged.
    let now = app(5, 7, 4);
    let fake = Fake::new(10_000, &[(200, &now)]);
    let r = s.run(&fake).expect("verdict");
    assert_eq!(
        fake.calls().len(),
        1,
        "no marketplace call before the interval"
    );
    assert_eq!(
        r.summary,
        "amazon: 1 of 2 sampled of 3 SKUs drifted (50.0% <= max 50.0%): b app 7 vs amazon 6 (marketplace read 10s ago, 1 SKU(s) changed in the app since, not judged)"
    );
    assert_eq!(r.metric_value("skus_checked"), Some(2.0));
    // The app fixed `b`: it now agrees with what the marketplace said.
    let fixed = app(5, 6, 3);
    let fake = Fake::new(20_000, &[(200, &fixed)]);
    let r = s.run(&fake).expect("verdict");
    assert_eq!(r.metric_value("skus_drifted"), Some(0.0), "{}", r.summary);

    // A minute on, a read is due; throttled, it says when the next may go.
    let fake = Fake::new(61_000, &[(200, &fixed), (429, "{}")]);
    fake.answers.borrow_mut()[1] = (429, r#"{"errors":[{"code":"QuotaExceeded","message":"You exceeded your quota for the requested resource."}]}"#.to_string());
    let r = s.run(&fake).expect("a result");
    assert_eq!(r.status, Status::Inconclusive, "{}", r.summary);
    // Still throttled (a minute from the 429), and past two intervals:
    // the kept answer judges nothing.
    let fake = Fake::new(120_500, &[(200, &fixed)]);
    let r = s.run(&fake).expect("a result");
    assert_eq!(r.status, Status::Inconclusive);
    assert!(
        r.summary
            .starts_with("amazon: no verdict, the marketplace's last answer is 2m"),
        "{}",
        r.summary
    );
    assert!(
        r.summary.ends_with(" old (read at 1970-01-01T00:00:00Z)"),
        "{}",
        r.summary
    );
    assert_eq!(fake.calls().len(), 1);
}

// ---- Shopee ----------------------------------------------------------------

#[test]
fn shopee_items_and_models() {
    let s = valid(&[
        ("provider", "shopee"),
        ("endpoint", "http://shopee"),
        ("partner_id", "1"),
        ("shop_id", "2"),
    ]);
    let app = json!([
        {"sku": "plain", "quantity": 5, "item_id": 100},
        {"sku": "red", "quantity": 3, "item_id": 200, "model_id": 21},
        {"sku": "blue", "quantity": 4, "item_id": 200, "model_id": 22},
        {"sku": "gone-model", "quantity": 1, "item_id": 200, "model_id": 23},
        {"sku": "all-colours", "quantity": 7, "item_id": 200},
        {"sku": "gone-item", "quantity": 2, "item_id": 300}
    ])
    .to_string();
    let items = json!({"error": "", "message": "", "request_id": "a", "response": {"item_list": [
        {"item_id": 100, "item_sku": "plain", "has_model": false,
         "stock_info_v2": {"summary_info": {"total_reserved_stock": 0, "total_available_stock": 5}}},
        {"item_id": 200, "item_sku": "shirt", "has_model": true}
    ]}})
    .to_string();
    let models = json!({"error": "", "message": "", "request_id": "b", "response": {
        "tier_variation": [],
        "model": [
            {"model_id": 21, "model_sku": "red", "stock_info_v2": {"summary_info": {"total_available_stock": 3}}},
            {"model_id": 22, "model_sku": "blue", "stock_info_v2": {"summary_info": {"total_available_stock": 1}}}
        ]}})
    .to_string();
    let fake = Fake::new(
        1_714_557_600_000,
        &[(200, &app), (200, &items), (200, &models)],
    );
    let r = s.run(&fake).expect("verdict");
    assert_eq!(r.status, Status::Fail);
    assert_eq!(
        r.summary,
        "shopee: 4 of 6 SKUs drifted (66.7% > max 5.0%): gone-item app 2 vs shopee missing, gone-model app 1 vs shopee missing, all-colours app 7 vs shopee 4, blue app 4 vs shopee 1"
    );
    let urls = fake.urls();
    assert_eq!(urls.len(), 3, "one model list per item");
    assert!(urls[1].starts_with("http://shopee/api/v2/product/get_item_base_info?partner_id=1&timestamp=1714557600&access_token=atoken&shop_id=2&sign="));
    assert!(
        urls[1].ends_with("&item_id_list=100%2C200%2C300"),
        "{}",
        urls[1]
    );
    assert!(urls[2].starts_with("http://shopee/api/v2/product/get_model_list?"));
    assert!(urls[2].ends_with("&item_id=200"), "{}", urls[2]);
}

#[test]
fn shopee_needs_item_ids() {
    let s = valid(&[
        ("provider", "shopee"),
        ("partner_id", "1"),
        ("shop_id", "2"),
    ]);
    let fake = Fake::new(0, &[(200, r#"[{"sku":"x","quantity":1}]"#)]);
    assert_eq!(
        s.run(&fake).err().as_deref(),
        Some("app inventory: SKU x has no `item_id` (needed for shopee)")
    );
    let fake = Fake::new(
        0,
        &[
            (200, r#"[{"sku":"x","quantity":1,"item_id":1}]"#),
            (
                200,
                r#"{"error":"error_param","message":"item_id_list is invalid","request_id":"r"}"#,
            ),
        ],
    );
    let r = s.run(&fake).expect("a result");
    assert_eq!(r.status, Status::Inconclusive);
    assert!(
        r.summary.ends_with("could not be read: GET https://partner.shopeemobile.com/api/v2/product/get_item_base_info -> HTTP 200: error_param: item_id_list is invalid [request_id r]"),
        "{}",
        r.summary
    );
}
