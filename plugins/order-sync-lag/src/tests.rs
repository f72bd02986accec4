use marketplace::testing;
use marketplace::transport::fake::Fake;
use rollback_plugin_sdk::check::Status;

use super::*;

/// 2024-05-01T10:00:00Z.
const NOW: i64 = 1_714_557_600_000;
const MIN: i64 = 60_000;

fn settings(pairs: &[(&str, &str)]) -> Result<Settings, String> {
    Settings::from_config(&testing::config(pairs))
}

/// The settings of `pairs` and `app_status_url = http://app/status`.
fn valid(pairs: &[(&str, &str)]) -> Settings {
    let mut all = pairs.to_vec();
    all.push(("app_status_url", "http://app/status"));
    settings(&all).expect("valid")
}

/// Runs `s` at `NOW` against a fake that answers the app's status with
/// `last_order_update` = `position`, then `answers`.
fn run(
    s: &Settings,
    position: &str,
    answers: &[(u16, &str)],
) -> (Fake, Result<CheckResult, String>) {
    // Each run here is a fresh start: no schedule, no earlier answer.
    marketplace::quota::forget();
    rollback_plugin_sdk::kv::delete(SNAPSHOT_KEY);
    run_at(s, NOW, position, answers)
}

/// One run at `now` with the kv state earlier runs left.
fn run_at(
    s: &Settings,
    now: i64,
    position: &str,
    answers: &[(u16, &str)],
) -> (Fake, Result<CheckResult, String>) {
    let status = format!(r#"{{"last_order_update": "{position}"}}"#);
    let mut all = vec![(200, status.as_str())];
    all.extend_from_slice(answers);
    let fake = Fake::new(now as u64, &all);
    let result = s.run(&fake, now as u64);
    (fake, result)
}

/// The reason of a result without a verdict (the marketplace could not be
/// read); `None` when there was a verdict or an error.
fn no_verdict(r: Result<CheckResult, String>) -> Option<String> {
    let r = r.ok()?;
    assert_eq!(r.status, Status::Inconclusive, "{}", r.summary);
    let (_, why) = r
        .summary
        .split_once("the marketplace could not be read: ")?;
    Some(why.to_string())
}

/// [`run`], expecting a verdict.
fn verdict(s: &Settings, position: &str, answers: &[(u16, &str)]) -> (Fake, CheckResult) {
    let (fake, result) = run(s, position, answers);
    (fake, result.expect("verdict"))
}

#[test]
fn config() {
    let err = settings(&[("app_status_url", "http://app/s")]).err();
    assert_eq!(
        err.as_deref(),
        Some("config `provider` is required (amazon, shopee, walmart, ebay or lazada)")
    );
    let err = settings(&[("provider", "etsy"), ("app_status_url", "x")]).err();
    assert_eq!(
        err.as_deref(),
        Some("config `provider` = `etsy`: expected one of amazon, shopee, walmart, ebay, lazada")
    );
    let err = settings(&[("provider", "ebay")]).err();
    assert_eq!(err.as_deref(), Some("config `app_status_url` is required"));
    let s = settings(&[("provider", "ebay"), ("app_status_url", "http://app/s")]).expect("ok");
    assert_eq!((s.max_lag_ms, s.max_pages), (600_000, 10));
    let s = settings(&[
        ("provider", "walmart"),
        ("app_status_url", "http://app/s"),
        ("max_lag", "1h30m"),
        ("max_pages", "3"),
    ])
    .expect("ok");
    assert_eq!((s.max_lag_ms, s.max_pages), (5_400_000, 3));
    let err = settings(&[
        ("provider", "walmart"),
        ("app_status_url", "x"),
        ("max_pages", "0"),
    ])
    .err();
    assert_eq!(
        err.as_deref(),
        Some("config `max_pages` = `0`: must be at least 1")
    );
    let err = settings(&[("provider", "amazon"), ("app_status_url", "x")]).err();
    assert_eq!(err.as_deref(), Some("config `marketplace_ids` is required"));
    let err = settings(&[("provider", "shopee"), ("app_status_url", "x")]).err();
    assert_eq!(err.as_deref(), Some("config `partner_id` is required"));
}

#[test]
fn lag_is_measured_from_the_oldest_unsynced_order() {
    let mut scan = Scan::new(NOW - 30 * MIN, 10);
    assert_eq!(scan.behind, 0);
    let r = judge(Provider::Amazon, &scan, NOW, 600_000, 10);
    assert_eq!(r.status, Status::Pass);
    assert_eq!(
        r.summary,
        "amazon: in sync, no orders updated after 2024-05-01T09:30:00Z"
    );
    assert_eq!(
        (
            r.metric_value("lag_seconds"),
            r.metric_value("orders_behind")
        ),
        (Some(0.0), Some(0.0))
    );

    scan.add("synced", NOW - 30 * MIN); // the app's own position: not behind
    scan.add("new", NOW - 2 * MIN);
    scan.add("older", NOW - 5 * MIN - 500);
    scan.add("new", NOW - 2 * MIN); // a repeat on an overlapping page
    assert_eq!(scan.behind, 2);
    let r = judge(Provider::Amazon, &scan, NOW, 600_000, 10);
    assert_eq!(r.status, Status::Pass);
    assert_eq!(
        r.summary,
        "amazon: 2 orders behind, lag 5m within max_lag 10m; oldest unsynced order older updated 2024-05-01T09:54:59.500Z"
    );
    assert_eq!(r.metric_value("lag_seconds"), Some(300.5));
    assert_eq!(r.metric_value("orders_behind"), Some(2.0));

    scan.add("oldest", NOW - 25 * MIN);
    let r = judge(Provider::Shopee, &scan, NOW, 600_000, 10);
    assert_eq!(r.status, Status::Fail);
    assert_eq!(
        r.summary,
        "shopee: 3 orders behind, lag 25m > max_lag 10m; oldest unsynced order oldest updated 2024-05-01T09:35:00Z"
    );
    assert_eq!(r.metric_value("lag_seconds"), Some(1500.0));
    // Exactly max_lag is not more than it.
    let r = judge(Provider::Shopee, &scan, NOW, 1_500_000, 10);
    assert_eq!(r.status, Status::Pass);
}

#[test]
fn a_truncated_scan_is_only_as_sure_as_its_bounds() {
    // Position newer than max_lag: whatever is unread is younger still.
    let mut scan = Scan::new(NOW - 5 * MIN, 1);
    assert!(scan.next_page());
    assert!(!scan.next_page());
    scan.add("a", NOW - MIN);
    let r = judge(Provider::Ebay, &scan, NOW, 600_000, 1);
    assert_eq!(r.status, Status::Pass);
    // Position older than max_lag, orders read are recent: undecided.
    let mut scan = Scan::new(NOW - 60 * MIN, 1);
    scan.truncated = true;
    scan.add("a", NOW - MIN);
    let r = judge(Provider::Ebay, &scan, NOW, 600_000, 1);
    assert_eq!(r.status, Status::Warn);
    assert!(
        r.summary.contains("paging stopped at max_pages = 1"),
        "{}",
        r.summary
    );
    // An old order was read: lag is at least that.
    scan.add("b", NOW - 20 * MIN);
    let r = judge(Provider::Ebay, &scan, NOW, 600_000, 1);
    assert_eq!(r.status, Status::Fail);
    assert!(r
        .summary
        .starts_with("ebay: at least 2 orders behind, lag 20m"));
}

#[test]
fn the_app_position_must_be_readable() {
    let cases = [
        (200, r#"{"last_order_update": "2024-05-01T09:00:00+01:00"}"#, Ok(NOW - 120 * MIN)),
        (200, r#"{}"#, Err("GET http://app/status: the answer has no `last_order_update` (expected {\"last_order_update\": \"<RFC 3339>\"})")),
        (200, r#"{"last_order_update": null}"#, Err("GET http://app/status: `last_order_update` is null, expected an RFC 3339 date-time string")),
        (200, r#"{"last_order_update": "yesterday"}"#, Err("GET http://app/status: `last_order_update`: `yesterday` is not an RFC 3339 date-time like 2024-05-01T10:00:00Z")),
        (503, "down", Err("GET http://app/status -> HTTP 503: down")),
    ];
    for (status, body, expected) in cases {
        let fake = Fake::new(0, &[(status, body)]);
        assert_eq!(
            app_position(&fake, "http://app/status?token=x"),
            expected.map_err(str::to_string),
            "{body}"
        );
    }
    let fake = Fake::new(0, &[(200, "{not json")]);
    let err = app_position(&fake, "http://app/status").expect_err("malformed");
    assert!(
        err.starts_with("GET http://app/status: unexpected answer"),
        "{err}"
    );
}

// ---- Amazon ----------------------------------------------------------------

/// The sandbox and documentation examples of a 200 `getOrders` answer in
/// the SP-API model shipped with the tests.
fn orders_model() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/api-models/amazon-sp-api/ordersV0.json"
    );
    let text = std::fs::read_to_string(path).expect("the SP-API ordersV0 model");
    serde_json::from_str(&text).expect("JSON")
}

#[test]
fn every_get_orders_sandbox_example_parses() {
    let model = orders_model();
    let op = &model["paths"]["/orders/v0/orders"]["get"];
    assert_eq!(op["operationId"], "getOrders");
    let examples = op["responses"]["200"]["x-amzn-api-sandbox"]["static"]
        .as_array()
        .expect("static examples");
    assert!(!examples.is_empty());
    let mut with_token = 0;
    for example in examples {
        let page: AmazonOrders =
            serde_json::from_value(example["response"].clone()).expect("a getOrders answer");
        let (orders, next) = amazon_page(page).expect("valid orders");
        assert!(!orders.is_empty(), "{example}");
        for order in &orders {
            assert!(!order.id.is_empty());
            // Some sandbox dates are in January 1970, but valid.
            assert!(order.updated >= 0);
            assert!(
                !order.status.is_empty(),
                "the model's examples carry OrderStatus"
            );
        }
        with_token += usize::from(next.is_some());
    }
    assert_eq!(with_token, 1, "one example pages on");
    let doc: AmazonOrders =
        serde_json::from_value(op["responses"]["200"]["examples"]["application/json"].clone())
            .expect("the documented example");
    let (orders, next) = amazon_page(doc).expect("valid");
    let got: Vec<(&str, i64, &str, &str)> = orders
        .iter()
        .map(|o| {
            (
                o.id.as_str(),
                o.updated,
                o.status.as_str(),
                o.channel.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("902-3159896-1390916", 1_484_941_775_000, "Pending", "MFN")]
    );
    assert_eq!(next.as_deref(), Some("2YgYW55IGNhcm5hbCBwbGVhc3VyZS4"));
    // And the error example reads well.
    for example in op["responses"]["400"]["x-amzn-api-sandbox"]["static"]
        .as_array()
        .expect("400 examples")
    {
        let body = serde_json::to_vec(&example["response"]).expect("json");
        assert_eq!(errors::describe(&body), "InvalidInput: Invalid Input");
    }
}

#[test]
fn amazon_pages_and_filters() {
    let s = valid(&[
        ("provider", "amazon"),
        ("api", "v0"),
        ("endpoint", "http://sp"),
        ("token_url", "http://lwa/auth/o2/token"),
        ("marketplace_ids", "ATVPDKIKX0DER, A2EUQ1WTGCTBG2"),
        // Reading every 3 minutes leaves room for 3 pages a read.
        ("marketplace_interval", "3m"),
    ]);
    assert_eq!(s.max_pages, 3, "the rate's default");
    let page1 = r#"{"payload":{"NextToken":"a+b/c=","Orders":[
        {"AmazonOrderId":"1","LastUpdateDate":"2024-05-01T09:58:30Z"},
        {"AmazonOrderId":"0","LastUpdateDate":"2024-05-01T09:59:00Z"}]}}"#;
    let page2 = r#"{"payload":{"Orders":[
        {"AmazonOrderId":"2","LastUpdateDate":"2024-05-01T09:59:30Z"}]}}"#;
    let (fake, r) = verdict(
        &s,
        "2024-05-01T09:59:00Z",
        &[
            (
                200,
                r#"{"access_token":"Atza|t","token_type":"bearer","expires_in":3600}"#,
            ),
            (200, page1),
            (200, page2),
        ],
    );
    assert_eq!(r.status, Status::Pass);
    assert_eq!(
        r.summary,
        "amazon: 1 order behind, lag 30s within max_lag 10m; oldest unsynced order 2 updated 2024-05-01T09:59:30Z"
    );
    let urls = fake.urls();
    // P is later than now - 2 min, so the query starts there.
    assert_eq!(
        urls[2],
        "http://sp/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER,A2EUQ1WTGCTBG2&LastUpdatedAfter=2024-05-01T09%3A58%3A00Z"
    );
    assert_eq!(
        urls[3],
        "http://sp/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER,A2EUQ1WTGCTBG2&LastUpdatedAfter=2024-05-01T09%3A58%3A00Z&NextToken=a%2Bb%2Fc%3D"
    );
    assert_eq!(
        fake.calls()[3].header_value("x-amz-access-token"),
        Some("Atza|t")
    );
}

#[test]
fn amazon_errors_are_inconclusive() {
    let s = valid(&[
        ("provider", "amazon"),
        ("api", "v0"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
    ]);
    let token = r#"{"access_token":"t","expires_in":3600}"#;
    let quota = r#"{"errors":[{"code":"QuotaExceeded","message":"You exceeded your quota for the requested resource."}]}"#;
    for (answer, expected) in [
        ((429, quota), "GET http://sp/orders/v0/orders -> HTTP 429: QuotaExceeded: You exceeded your quota for the requested resource."),
        ((200, "{\"payload\":"), "GET http://sp/orders/v0/orders: unexpected answer: EOF while parsing a value at line 1 column 11"),
        ((200, "{}"), "getOrders: the answer has no `payload`"),
        ((200, r#"{"payload":{"Orders":[{"AmazonOrderId":"1","LastUpdateDate":"soon"}]}}"#), "getOrders: order 1: `LastUpdateDate`: `soon` is not an RFC 3339 date-time like 2024-05-01T10:00:00Z"),
    ] {
        // Each run fetches its token (the kv store is the test thread's).
        rollback_plugin_sdk::kv::delete("lwa-token");
        let (_, r) = run(&s, "2024-05-01T09:00:00Z", &[(200, token), answer]);
        assert_eq!(no_verdict(r).as_deref(), Some(expected));
    }
}

#[test]
fn amazon_stops_at_max_pages() {
    let s = valid(&[
        ("provider", "amazon"),
        ("api", "v0"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
        ("max_pages", "2"),
    ]);
    assert_eq!(s.max_pages, 2, "an explicit max_pages wins");
    let page = r#"{"payload":{"NextToken":"more","Orders":[{"AmazonOrderId":"1","LastUpdateDate":"2024-05-01T09:55:00Z"}]}}"#;
    let (fake, r) = verdict(
        &s,
        "2024-05-01T09:00:00Z",
        &[
            (200, r#"{"access_token":"t","expires_in":3600}"#),
            (200, page),
            (200, page),
            (200, page),
        ],
    );
    assert_eq!(fake.calls().len(), 4);
    assert_eq!(r.status, Status::Warn);
    assert_eq!(r.metric_value("orders_behind"), Some(1.0));
}

// ---- Shopee ----------------------------------------------------------------

#[test]
fn shopee_windows_cover_the_gap_in_15_day_steps() {
    let now_s = NOW / 1000;
    assert_eq!(shopee_windows(NOW, now_s), vec![]);
    assert_eq!(shopee_windows(NOW - 1, now_s), vec![(now_s, now_s)]);
    assert_eq!(
        shopee_windows(NOW - 60_000, now_s),
        vec![(now_s - 59, now_s)]
    );
    let w = shopee_windows(NOW - 40 * 86_400_000, now_s);
    assert_eq!(w.len(), 3);
    assert_eq!(w[0].0, now_s - 40 * 86_400 + 1);
    assert_eq!(w[2].1, now_s);
    for pair in w.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0);
    }
    assert!(w.iter().all(|(from, to)| to - from <= SHOPEE_WINDOW_S));
}

#[test]
fn shopee_lists_then_reads_update_times() {
    let s = valid(&[
        ("provider", "shopee"),
        ("endpoint", "http://shopee"),
        ("partner_id", "2001887"),
        ("shop_id", "14701711"),
        ("max_lag", "5m"),
    ]);
    let list1 = r#"{"error":"","message":"","request_id":"a","response":{"more":true,"next_cursor":"2","order_list":[{"order_sn":"A","order_status":"READY_TO_SHIP"},{"order_sn":"B","order_status":"SHIPPED"}]}}"#;
    let list2 = r#"{"error":"","message":"","request_id":"b","response":{"more":false,"next_cursor":"","order_list":[{"order_sn":"C","order_status":"COMPLETED"}]}}"#;
    let detail = format!(
        r#"{{"error":"","message":"","request_id":"c","response":{{"order_list":[
        {{"order_sn":"A","update_time":{},"create_time":1}},
        {{"order_sn":"B","update_time":{},"create_time":1}},
        {{"order_sn":"C","update_time":{},"create_time":1}}]}}}}"#,
        (NOW - 8 * MIN) / 1000,
        (NOW - 3 * MIN) / 1000,
        (NOW - 10 * MIN) / 1000, // the app's own position: synced
    );
    let (fake, r) = verdict(
        &s,
        "2024-05-01T09:50:00Z",
        &[(200, list1), (200, list2), (200, &detail)],
    );
    assert_eq!(r.status, Status::Fail);
    assert_eq!(
        r.summary,
        "shopee: 2 orders behind, lag 8m > max_lag 5m; oldest unsynced order A updated 2024-05-01T09:52:00Z"
    );
    let urls = fake.urls();
    let from = NOW / 1000 - 600 + 1;
    let to = NOW / 1000;
    assert!(urls[1].starts_with("http://shopee/api/v2/order/get_order_list?partner_id=2001887&timestamp=1714557600&access_token=atoken&shop_id=14701711&sign="), "{}", urls[1]);
    assert!(urls[1].ends_with(&format!("&time_range_field=update_time&time_from={from}&time_to={to}&page_size=100&cursor=&response_optional_fields=order_status")), "{}", urls[1]);
    assert!(urls[2].contains("&cursor=2&"), "{}", urls[2]);
    assert!(urls[3].starts_with("http://shopee/api/v2/order/get_order_detail?"));
    assert!(urls[3].ends_with("&order_sn_list=A%2CB%2CC"), "{}", urls[3]);
}

#[test]
fn shopee_errors_are_inconclusive() {
    let s = valid(&[
        ("provider", "shopee"),
        ("endpoint", "http://shopee"),
        ("partner_id", "1"),
        ("shop_id", "2"),
    ]);
    let check = |answers: &[(u16, &str)]| run(&s, "2024-05-01T09:50:00Z", answers);
    // The config has a refresh token: a refused token is refreshed once, and
    // the refusal of the new one is the error.
    let refused = r#"{"error":"error_auth","message":"Invalid access_token.","request_id":"r"}"#;
    let refreshed = r#"{"error":"","message":"","request_id":"t","access_token":"new","refresh_token":"rotated","expire_in":14400}"#;
    let (fake, r) = check(&[(200, refused), (200, refreshed), (200, refused)]);
    assert_eq!(
        no_verdict(r).as_deref(),
        Some("GET http://shopee/api/v2/order/get_order_list -> HTTP 200: error_auth: Invalid access_token. [request_id r]")
    );
    assert!(fake.urls()[2].starts_with("http://shopee/api/v2/auth/access_token/get?"));
    assert_eq!(fake.calls().len(), 4);
    let list = r#"{"error":"","response":{"more":false,"order_list":[{"order_sn":"A"}]}}"#;
    let (_, r) = check(&[
        (200, list),
        (200, r#"{"error":"","response":{"order_list":[]}}"#),
    ]);
    assert_eq!(
        no_verdict(r).as_deref(),
        Some("get_order_detail: order A was listed but has no detail")
    );
    // No orders: a pass without detail calls.
    let (fake, r) = check(&[(
        200,
        r#"{"error":"","response":{"more":false,"next_cursor":"","order_list":[]}}"#,
    )]);
    assert_eq!(r.expect("verdict").status, Status::Pass);
    assert_eq!(fake.calls().len(), 2);
}

// ---- Walmart ---------------------------------------------------------------

#[test]
fn walmart_pages_use_the_latest_line_status() {
    let s = valid(&[("provider", "walmart"), ("endpoint", "http://wm")]);
    let page1 = format!(
        r#"{{"list":{{"meta":{{"totalCount":3,"limit":100,"nextCursor":"?limit=100&hasMoreElements=true&soIndex=3&poIndex=2"}},
        "elements":{{"order":[
          {{"purchaseOrderId":"P1","customerOrderId":"C1","orderDate":{},"orderLines":{{"orderLine":[
             {{"statusDate":{}}},{{"statusDate":{}}}]}}}},
          {{"purchaseOrderId":"P2","customerOrderId":"C2","orderDate":{}}}]}}}}}}"#,
        NOW - 90 * MIN,
        NOW - 40 * MIN,
        NOW - 4 * MIN,
        NOW - 20 * MIN,
    );
    let page2 = r#"{"list":{"meta":{"totalCount":3,"limit":100},"elements":{"order":[]}}}"#;
    let (fake, r) = verdict(
        &s,
        "2024-05-01T09:30:00.250Z",
        &[
            (
                200,
                r#"{"access_token":"w","token_type":"Bearer","expires_in":900}"#,
            ),
            (200, &page1),
            (200, page2),
        ],
    );
    assert_eq!(r.status, Status::Fail);
    assert_eq!(
        r.summary,
        "walmart: 2 orders behind, lag 20m > max_lag 10m; oldest unsynced order P2 updated 2024-05-01T09:40:00Z"
    );
    let urls = fake.urls();
    assert_eq!(
        urls[2],
        "http://wm/v3/orders?createdStartDate=2023-11-03T10%3A00%3A00Z&lastModifiedStartDate=2024-05-01T09%3A30%3A00Z&limit=100"
    );
    assert_eq!(
        urls[3],
        "http://wm/v3/orders?limit=100&hasMoreElements=true&soIndex=3&poIndex=2"
    );
    let call = &fake.calls()[3];
    assert_eq!(call.header_value("WM_SEC.ACCESS_TOKEN"), Some("w"));
    assert_eq!(
        call.header_value("WM_SVC.NAME"),
        Some("Walmart Marketplace")
    );
}

#[test]
fn walmart_not_found_means_no_orders() {
    let s = valid(&[("provider", "walmart"), ("endpoint", "http://wm")]);
    let check = |answers: &[(u16, &str)]| run(&s, "2024-05-01T09:30:00Z", answers);
    let none = r#"{"errors":{"error":[{"code":"CONTENT_NOT_FOUND.GMP_ORDER_API","field":"data","description":"No Orders found","info":"Requested content could not be found.","severity":"INFO","category":"APPLICATION"}]}}"#;
    let (_, r) = check(&[
        (200, r#"{"access_token":"w","expires_in":900}"#),
        (404, none),
    ]);
    assert_eq!(r.expect("verdict").status, Status::Pass);
    // The token is cached from here on.
    let (_, r) = check(&[(404, "Not Found")]);
    assert_eq!(
        no_verdict(r).as_deref(),
        Some("GET http://wm/v3/orders -> HTTP 404: Not Found")
    );
    let page = r#"{"list":{"elements":{"order":[{"purchaseOrderId":"P"}]}}}"#;
    let (_, r) = check(&[(200, page)]);
    assert_eq!(
        no_verdict(r).as_deref(),
        Some("GET /v3/orders: order P has no statusDate or orderDate")
    );
}

// ---- eBay ------------------------------------------------------------------

#[test]
fn ebay_paging_state() {
    let page = |json: &str| -> EbayOrders { serde_json::from_str(json).expect("page") };
    let (orders, next) = ebay_page(
        page(r#"{"href":"h","total":3,"limit":200,"offset":0,"next":"https://api.ebay.com/sell/fulfillment/v1/order?offset=200","orders":[{"orderId":"1","lastModifiedDate":"2024-05-01T09:55:00.000Z","creationDate":"2024-05-01T09:00:00.000Z"}]}"#),
        "http://e",
        0,
    )
    .expect("valid");
    assert_eq!(orders, vec![Listed::new("1", NOW - 5 * MIN)]);
    assert_eq!(
        next.as_deref(),
        Some("https://api.ebay.com/sell/fulfillment/v1/order?offset=200")
    );
    let (_, next) = ebay_page(
        page(r#"{"total":450,"limit":200,"offset":200,"orders":[{"orderId":"1","lastModifiedDate":"2024-05-01T09:55:00.000Z"}]}"#),
        "http://e",
        NOW,
    )
    .expect("valid");
    assert_eq!(
        next.as_deref(),
        Some("http://e/sell/fulfillment/v1/order?filter=lastmodifieddate:%5B2024-05-01T10:00:00.000Z..%5D&limit=200&offset=400")
    );
    let (_, next) = ebay_page(page(r#"{"total":450,"offset":400,"orders":[{"orderId":"1","lastModifiedDate":"2024-05-01T09:55:00Z"}]}"#), "http://e", 0).expect("valid");
    assert_eq!(next, None);
    let (_, next) = ebay_page(
        page(r#"{"total":450,"offset":0,"next":"/sell/x?offset=200","orders":[]}"#),
        "http://e",
        0,
    )
    .expect("valid");
    assert_eq!(next.as_deref(), Some("http://e/sell/x?offset=200"));
    let (_, next) = ebay_page(page(r#"{"total":0,"orders":[]}"#), "http://e", 0).expect("valid");
    assert_eq!(next, None);
    assert!(ebay_page(
        page(r#"{"orders":[{"orderId":"1","lastModifiedDate":"x"}]}"#),
        "http://e",
        0
    )
    .is_err());
}

#[test]
fn ebay_end_to_end() {
    let s = valid(&[("provider", "ebay"), ("endpoint", "http://e")]);
    let page1 = r#"{"href":"h","total":2,"limit":1,"offset":0,"next":"http://e/sell/fulfillment/v1/order?offset=1","orders":[{"orderId":"11-1","lastModifiedDate":"2024-05-01T09:58:00.000Z"}]}"#;
    let page2 = r#"{"href":"h","total":2,"limit":1,"offset":1,"orders":[{"orderId":"11-2","lastModifiedDate":"2024-05-01T09:57:00.000Z"}]}"#;
    let (fake, r) = verdict(
        &s,
        "2024-05-01T09:56:59.999Z",
        &[
            (
                200,
                r#"{"access_token":"v^1.1#i","expires_in":7200,"token_type":"User Access Token"}"#,
            ),
            (200, page1),
            (200, page2),
        ],
    );
    assert_eq!(r.status, Status::Pass);
    assert_eq!(
        r.summary,
        "ebay: 2 orders behind, lag 3m within max_lag 10m; oldest unsynced order 11-2 updated 2024-05-01T09:57:00Z"
    );
    let urls = fake.urls();
    assert_eq!(urls[1], "http://e/identity/v1/oauth2/token");
    assert_eq!(
        urls[2],
        "http://e/sell/fulfillment/v1/order?filter=lastmodifieddate:%5B2024-05-01T09:56:59.999Z..%5D&limit=200&offset=0"
    );
    assert_eq!(urls[3], "http://e/sell/fulfillment/v1/order?offset=1");
    assert_eq!(
        fake.calls()[2].header_value("Authorization"),
        Some("Bearer v^1.1#i")
    );
}

fn lazada_orders(total: u64, orders: &[(&str, &str, &str)]) -> String {
    let orders: Vec<Value> = orders
        .iter()
        .map(|(id, updated, status)| {
            serde_json::json!({
                "order_id": id.parse::<u64>().map_or(Value::from(*id), Value::from),
                "order_number": id,
                "created_at": "2024-05-01 08:00:00 +0800",
                "updated_at": updated,
                "statuses": status.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "code": "0",
        "data": {"count": orders.len().to_string(), "countTotal": total.to_string(), "orders": orders},
        "request_id": "0ba2887315178178017221014",
    })
    .to_string()
}

#[test]
fn lazada_reads_get_orders_by_update_time_and_pages_by_offset() {
    let s = valid(&[
        ("provider", "lazada"),
        ("endpoint", "http://l/rest"),
        ("max_lag", "5m"),
    ]);
    assert_eq!(s.interval_ms, 300_000, "Lazada is read every 5 minutes");
    let page1 = lazada_orders(
        3,
        &[
            ("491253082180001", "2024-05-01 17:50:00 +0800", "pending"),
            ("491253082180002", "2024-05-01T17:52:00+08:00", "unpaid"),
        ],
    );
    let page2 = lazada_orders(
        3,
        &[(
            "491253082180003",
            "2024-05-01 17:58:12 +0800",
            "canceled,pending",
        )],
    );
    let (fake, r) = verdict(&s, "2024-05-01T09:45:00Z", &[(200, &page1), (200, &page2)]);
    assert_eq!(r.status, Status::Fail, "{}", r.summary);
    assert_eq!(
        r.summary,
        "lazada: 2 orders behind, lag 10m > max_lag 5m; oldest unsynced order 491253082180001 updated 2024-05-01T09:50:00Z"
    );
    let calls = fake.calls();
    let query = |i: usize, key: &str| -> Option<String> {
        let (_, q) = calls[i].url.split_once('?')?;
        q.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    };
    assert!(calls[1].url.starts_with("http://l/rest/orders/get?"));
    assert_eq!(
        query(1, "update_after").as_deref(),
        Some("2024-05-01T09%3A45%3A00%2B00%3A00")
    );
    assert_eq!(query(1, "sort_by").as_deref(), Some("updated_at"));
    assert_eq!(query(1, "sort_direction").as_deref(), Some("ASC"));
    assert_eq!(query(1, "limit").as_deref(), Some("100"));
    assert_eq!(query(1, "offset").as_deref(), Some("0"));
    assert_eq!(query(2, "offset").as_deref(), Some("2"));
    assert_eq!(query(2, "update_after"), query(1, "update_after"));
    assert_eq!(query(1, "access_token").as_deref(), Some("atoken"));
    assert_eq!(query(1, "app_key").as_deref(), Some("akey"));
    assert!(query(1, "sign").is_some_and(|s| s.len() == 64 && s == s.to_ascii_uppercase()));
    assert_eq!(calls.len(), 3, "countTotal reached: no more pages");
}

#[test]
fn lazada_goes_on_from_the_last_update_past_the_largest_offset() {
    let s = valid(&[
        ("provider", "lazada"),
        ("endpoint", "http://l/rest"),
        ("max_pages", "60"),
    ]);
    // 5,000 orders at the same place would need offset 5,000: the scan
    // goes on with update_after at the last update read, offset 0.
    let pages: Vec<String> = (0..50)
        .map(|p| {
            let orders: Vec<(String, String)> = (0..100)
                .map(|i| {
                    let n = p * 100 + i;
                    (
                        format!("{}", 400_000_000 + n),
                        format!(
                            "2024-05-01T0{}:{:02}:{:02}Z",
                            8 + n / 3600,
                            (n / 60) % 60,
                            n % 60
                        ),
                    )
                })
                .collect();
            let refs: Vec<(&str, &str, &str)> = orders
                .iter()
                .map(|(id, t)| (id.as_str(), t.as_str(), "pending"))
                .collect();
            lazada_orders(5_001, &refs)
        })
        .collect();
    let last = lazada_orders(
        2,
        &[
            ("400004999", "2024-05-01T09:23:19Z", "pending"),
            ("400005000", "2024-05-01T09:23:20Z", "pending"),
        ],
    );
    let mut answers: Vec<(u16, &str)> = pages.iter().map(|p| (200, p.as_str())).collect();
    answers.push((200, &last));
    let (fake, r) = verdict(&s, "2024-05-01T07:59:59Z", &answers);
    assert_eq!(
        r.metric_value("orders_behind"),
        Some(5_001.0),
        "{}",
        r.summary
    );
    let urls = fake.urls();
    assert!(urls[50].contains("&offset=4900&"), "{}", urls[50]);
    assert!(
        urls[51].contains("update_after=2024-05-01T09%3A23%3A19%2B00%3A00")
            && urls[51].contains("&offset=0&"),
        "{}",
        urls[51]
    );
}

#[test]
fn lazada_without_count_total_reads_on_after_a_full_page() {
    let s = valid(&[("provider", "lazada"), ("endpoint", "http://l/rest")]);
    let page = |n: u64, from: u64| -> String {
        let orders: Vec<Value> = (from..from + n)
            .map(|i| serde_json::json!({"order_id": i, "updated_at": "2024-05-01 17:00:00 +0800", "statuses": ["pending"]}))
            .collect();
        serde_json::json!({"code": "0", "data": {"orders": orders}}).to_string()
    };
    let (full, last) = (page(100, 1), page(3, 101));
    let (fake, r) = verdict(&s, "2024-05-01T08:00:00Z", &[(200, &full), (200, &last)]);
    assert_eq!(
        r.metric_value("orders_behind"),
        Some(103.0),
        "{}",
        r.summary
    );
    assert_eq!(
        fake.calls().len(),
        3,
        "a full page without countTotal reads on"
    );
    assert!(fake.urls()[2].contains("&offset=100&"));
}

#[test]
fn lazada_trouble_is_inconclusive_and_its_filters_skip_unpaid_and_cancelled() {
    let s = valid(&[("provider", "lazada"), ("endpoint", "http://l/rest")]);
    for (body, expected) in [
        (
            r#"{"type":"ISV","code":"ApiCallLimit","message":"The request has exceeded the limit. This ban will last 30 seconds","request_id":"x"}"#,
            "/orders/get -> HTTP 200: ApiCallLimit",
        ),
        (
            r#"{"type":"ISP","code":"InternalError","message":"The request processing has failed due to some unknown error.","request_id":"x"}"#,
            "/orders/get -> HTTP 200: InternalError",
        ),
        // Refused: one refresh, which cannot reach the auth host here.
        (
            r#"{"type":"ISV","code":"IllegalAccessToken","message":"The specified access token is invalid or expired","request_id":"x"}"#,
            "refreshing the lazada access token",
        ),
        (
            r#"{"code":"0","data":{"countTotal":1,"orders":[{"order_id":1,"updated_at":"yesterday"}]}}"#,
            "order 1: `updated_at`",
        ),
    ] {
        let (_, r) = run(&s, "2024-05-01T09:00:00Z", &[(200, body)]);
        let why = no_verdict(r).expect("inconclusive");
        assert!(why.contains(expected), "{why}");
    }
    // Unpaid and cancelled orders are not the app's to import.
    let page = lazada_orders(
        2,
        &[
            ("1001", "2024-05-01 17:00:00 +0800", "unpaid"),
            ("1002", "2024-05-01 17:01:00 +0800", "canceled"),
        ],
    );
    let (_, r) = verdict(&s, "2024-05-01T08:00:00Z", &[(200, &page)]);
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert_eq!(r.metric_value("orders_behind"), Some(0.0));
}

#[test]
fn the_app_side_stays_an_error_and_a_position_in_the_future_is_one() {
    let s = valid(&[("provider", "walmart"), ("endpoint", "http://wm")]);
    let fake = Fake::new(NOW as u64, &[(503, "down")]);
    assert_eq!(
        s.run(&fake, NOW as u64).err().as_deref(),
        Some("GET http://app/status -> HTTP 503: down"),
        "the app's own endpoint failing is the release's fault"
    );
    let (_, r) = run(&s, "2024-05-01T10:03:00Z", &[]);
    assert_eq!(
        r.err().as_deref(),
        Some(
            "the app's position 2024-05-01T10:03:00Z is 3m ahead of this host's clock \
             (2024-05-01T10:00:00Z): the app or this host has a wrong clock"
        )
    );
    // A few seconds of drift are not an error.
    let (_, r) = run(&s, "2024-05-01T10:00:04Z", &[(404, "{}")]);
    assert!(r.is_ok(), "{r:?}");
}

fn ebay_orders(orders: &[(&str, &str)]) -> String {
    let list: Vec<String> = orders
        .iter()
        .map(|(id, at)| format!(r#"{{"orderId":"{id}","lastModifiedDate":"{at}"}}"#))
        .collect();
    format!(
        r#"{{"total":{},"orders":[{}]}}"#,
        orders.len(),
        list.join(",")
    )
}

#[test]
fn the_marketplace_is_read_at_most_every_marketplace_interval() {
    let s = valid(&[
        ("provider", "ebay"),
        ("endpoint", "http://eb"),
        ("marketplace_interval", "1m"),
    ]);
    let token = r#"{"access_token":"e","expires_in":7200}"#;
    let page = ebay_orders(&[
        ("A", "2024-05-01T09:55:00.000Z"),
        ("B", "2024-05-01T09:58:00.000Z"),
    ]);
    let (fake, r) = run(&s, "2024-05-01T09:50:00Z", &[(200, token), (200, &page)]);
    let r = r.expect("verdict");
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert_eq!(fake.calls().len(), 3, "app, token, one page");
    // 30 s later: the app moved past A; the marketplace is not asked again.
    let (fake, r) = run_at(&s, NOW + 30_000, "2024-05-01T09:55:00Z", &[]);
    let r = r.expect("verdict");
    assert_eq!(fake.calls().len(), 1, "only the app: {:?}", fake.urls());
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert!(
        r.summary.contains("1 order behind") && r.summary.ends_with("(marketplace read 30s ago)"),
        "{}",
        r.summary
    );
    // Stuck for 20 minutes: B is 22 minutes old; still no new read needed to
    // fail... but the interval is over, so it reads again (and the read wins).
    let later = NOW + 20 * MIN;
    let (fake, r) = run_at(&s, later, "2024-05-01T09:55:00Z", &[(200, &page)]);
    let r = r.expect("verdict");
    assert_eq!(fake.calls().len(), 2, "{:?}", fake.urls());
    assert_eq!(r.status, Status::Fail, "{}", r.summary);
}

#[test]
fn a_throttled_marketplace_is_left_alone_until_it_says() {
    let s = valid(&[
        ("provider", "amazon"),
        ("api", "v0"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
    ]);
    assert_eq!(
        s.max_pages, 1,
        "one page a minute is getOrders' sustained rate"
    );
    let token = r#"{"access_token":"t","expires_in":3600}"#;
    let quota = r#"{"errors":[{"code":"QuotaExceeded","message":"You exceeded your quota for the requested resource."}]}"#;
    rollback_plugin_sdk::kv::delete("lwa-token");
    let (fake, r) = run(&s, "2024-05-01T09:00:00Z", &[(200, token), (429, quota)]);
    assert!(no_verdict(r).is_some_and(|e| e.contains("HTTP 429")));
    assert_eq!(fake.calls().len(), 3);
    // 10 s later: no call at all, and it says when the next one may go.
    let (fake, r) = run_at(&s, NOW + 10_000, "2024-05-01T09:00:00Z", &[]);
    let r = r.expect("a result");
    assert_eq!(fake.calls().len(), 1, "{:?}", fake.urls());
    assert_eq!(r.status, Status::Inconclusive);
    assert!(
        r.summary
            .contains("no marketplace data: the next marketplace call is allowed at"),
        "{}",
        r.summary
    );
}

#[test]
fn an_old_answer_can_still_fail_but_never_pass() {
    let s = valid(&[
        ("provider", "ebay"),
        ("endpoint", "http://eb"),
        ("marketplace_interval", "1m"),
        ("max_lag", "10m"),
    ]);
    let token = r#"{"access_token":"e","expires_in":7200}"#;
    let page = ebay_orders(&[("A", "2024-05-01T09:55:00.000Z")]);
    let (_, r) = run(&s, "2024-05-01T09:50:00Z", &[(200, token), (200, &page)]);
    assert_eq!(r.expect("verdict").status, Status::Pass);
    // Three minutes on, the marketplace is down: A is 8 minutes old, within
    // max_lag, but the answer that says so is 3 minutes old: no verdict.
    let (_, r) = run_at(&s, NOW + 3 * MIN, "2024-05-01T09:50:00Z", &[(503, "{}")]);
    let r = r.expect("a result");
    assert_eq!(r.status, Status::Inconclusive, "{}", r.summary);
    // Ten minutes on, still down: A is 15 minutes behind. The app has not
    // synced an order the marketplace listed: that is lag, whatever the age.
    let (_, r) = run_at(&s, NOW + 10 * MIN, "2024-05-01T09:50:00Z", &[(503, "{}")]);
    let r = r.expect("a result");
    assert_eq!(r.status, Status::Fail, "{}", r.summary);
    assert!(
        r.summary.contains("oldest unsynced order A"),
        "{}",
        r.summary
    );
}

fn amazon_orders(orders: &[(&str, &str, &str)]) -> String {
    let list: Vec<String> = orders
        .iter()
        .map(|(id, at, status)| {
            format!(
                r#"{{"AmazonOrderId":"{id}","LastUpdateDate":"{at}","OrderStatus":"{status}","FulfillmentChannel":"MFN"}}"#
            )
        })
        .collect();
    format!(r#"{{"payload":{{"Orders":[{}]}}}}"#, list.join(","))
}

fn completeness(extra: &[(&str, &str)]) -> Settings {
    let mut pairs = vec![
        ("provider", "amazon"),
        ("api", "v0"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
        ("app_orders_url", "http://app/orders"),
        ("grace", "5m"),
        ("completeness_window", "1h"),
    ];
    pairs.extend_from_slice(extra);
    valid(&pairs)
}

#[test]
fn dropped_orders_fail_and_are_named() {
    let s = completeness(&[]);
    let token = r#"{"access_token":"t","expires_in":3600}"#;
    // The app's position is recent (09:58): lag alone would pass, but it
    // skipped 2 of the orders updated between 09:00 and 09:55.
    let page = amazon_orders(&[
        ("111-1", "2024-05-01T09:10:00Z", "Unshipped"),
        ("111-2", "2024-05-01T09:20:00Z", "Shipped"),
        ("111-3", "2024-05-01T09:30:00Z", "Unshipped"),
        ("111-4", "2024-05-01T09:40:00Z", "Canceled"),
        ("111-5", "2024-05-01T09:45:00Z", "Pending"),
        ("111-6", "2024-05-01T09:57:00Z", "Unshipped"),
        ("111-7", "2024-05-01T09:59:00Z", "Unshipped"),
    ]);
    rollback_plugin_sdk::kv::delete("lwa-token");
    let (fake, r) = run(
        &s,
        "2024-05-01T09:58:00Z",
        &[
            (200, token),
            (200, &page),
            (200, r#"{"missing":["111-1","111-3"]}"#),
        ],
    );
    let r = r.expect("verdict");
    assert_eq!(r.status, Status::Fail, "{}", r.summary);
    assert!(
        r.summary.starts_with(
            "amazon: 2 of 3 order(s) updated between 2024-05-01T08:55:00Z and \
             2024-05-01T09:55:00Z are missing from the app: 111-1, 111-3; amazon: 1 order behind"
        ),
        "{}",
        r.summary
    );
    assert_eq!(r.metric_value("orders_missing"), Some(2.0));
    assert_eq!(r.metric_value("orders_checked"), Some(3.0));
    let calls = fake.calls();
    // The query reached back to the window, not only to the position.
    assert!(
        calls[2]
            .url
            .contains("LastUpdatedAfter=2024-05-01T08%3A55%3A00Z"),
        "{}",
        calls[2].url
    );
    // Asked about the orders in the window only: not the cancelled one, not
    // the Pending one (skipped by default), not those inside the grace.
    let asked: serde_json::Value =
        serde_json::from_slice(calls[3].body.as_deref().expect("a body")).expect("JSON");
    assert_eq!(
        asked,
        serde_json::json!({"order_ids": ["111-1", "111-2", "111-3"]})
    );
    assert_eq!(calls[3].method, "POST");
    assert_eq!(calls[3].url, "http://app/orders");

    // All there: the lag verdict stands, with the completeness said.
    let (_, r) = run(
        &s,
        "2024-05-01T09:58:00Z",
        &[(200, &page), (200, r#"{"missing":[]}"#)],
    );
    let r = r.expect("verdict");
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert!(
        r.summary.ends_with("; all 3 order(s) updated between 2024-05-01T08:55:00Z and 2024-05-01T09:55:00Z are in the app"),
        "{}",
        r.summary
    );
}

#[test]
fn the_apps_answer_about_orders_is_the_apps_responsibility() {
    let s = completeness(&[]);
    let page = amazon_orders(&[("111-1", "2024-05-01T09:10:00Z", "Unshipped")]);
    let token = r#"{"access_token":"t","expires_in":3600}"#;
    for (status, body, expected) in [
        (200, r#"{"missing":["999"]}"#, "POST http://app/orders: the app says order 999 is missing, but it was not asked about it"),
        (500, "down", "POST http://app/orders -> HTTP 500: down"),
        (200, r#"{"have":[]}"#, "POST http://app/orders: unexpected answer: missing field `missing` at line 1 column 11"),
    ] {
        rollback_plugin_sdk::kv::delete("lwa-token");
        let (_, r) = run(&s, "2024-05-01T09:58:00Z", &[(200, token), (200, &page), (status, body)]);
        assert_eq!(r.err().as_deref(), Some(expected));
    }
}

#[test]
fn orders_the_app_rightly_ignores_are_not_lag() {
    // Night: nothing but a Pending order (not paid yet) and an FBA order
    // for an app that only syncs its own fulfilment.
    let s = valid(&[
        ("provider", "amazon"),
        ("api", "v0"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
        ("fulfillment_channels", "MFN"),
        ("max_lag", "10m"),
    ]);
    let token = r#"{"access_token":"t","expires_in":3600}"#;
    let page = r#"{"payload":{"Orders":[
        {"AmazonOrderId":"1","LastUpdateDate":"2024-05-01T09:00:00Z","OrderStatus":"Pending","FulfillmentChannel":"MFN"},
        {"AmazonOrderId":"2","LastUpdateDate":"2024-05-01T09:05:00Z","OrderStatus":"Shipped","FulfillmentChannel":"AFN"}]}}"#;
    rollback_plugin_sdk::kv::delete("lwa-token");
    let (_, r) = run(&s, "2024-05-01T08:00:00Z", &[(200, token), (200, page)]);
    let r = r.expect("verdict");
    assert_eq!(r.status, Status::Pass, "{}", r.summary);
    assert_eq!(r.metric_value("orders_behind"), Some(0.0));
    // With no status skipped, the Pending MFN order is an hour of lag.
    let s = valid(&[
        ("provider", "amazon"),
        ("api", "v0"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
        ("skip_statuses", ""),
        ("fulfillment_channels", "MFN"),
        ("max_lag", "10m"),
    ]);
    let (_, r) = run(&s, "2024-05-01T08:00:00Z", &[(200, page)]);
    let r = r.expect("verdict");
    assert_eq!(r.status, Status::Fail, "{}", r.summary);
    assert!(
        r.summary.contains("oldest unsynced order 1 "),
        "{}",
        r.summary
    );
}

#[test]
fn search_orders_of_the_2026_01_01_api_is_the_default() {
    let s = valid(&[
        ("provider", "amazon"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "ATVPDKIKX0DER,A2EUQ1WTGCTBG2"),
        ("marketplace_interval", "10m"),
    ]);
    assert_eq!(s.interval_ms, 600_000);
    assert_eq!(s.max_pages, 3, "10 minutes of 0.0056 requests a second");
    let d = valid(&[
        ("provider", "amazon"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
    ]);
    assert_eq!(
        (d.interval_ms, d.max_pages),
        (180_000, 1),
        "searchOrders' rate"
    );
    let token = r#"{"access_token":"t","expires_in":3600}"#;
    let page1 = r#"{"orders":[
        {"orderId":"1","createdTime":"2024-05-01T09:00:00Z","lastUpdatedTime":"2024-05-01T09:50:00Z","salesChannel":{"channelName":"AMAZON"},"orderItems":[],"fulfillment":{"fulfillmentStatus":"UNSHIPPED","fulfilledBy":"MERCHANT"}},
        {"orderId":"2","createdTime":"2024-05-01T09:00:00Z","lastUpdatedTime":"2024-05-01T09:40:00Z","salesChannel":{"channelName":"AMAZON"},"orderItems":[],"fulfillment":{"fulfillmentStatus":"PENDING","fulfilledBy":"MERCHANT"}}],
        "pagination":{"nextToken":"p+2/="}}"#;
    let page2 = r#"{"orders":[
        {"orderId":"3","createdTime":"2024-05-01T09:00:00Z","lastUpdatedTime":"2024-05-01T09:45:00Z","salesChannel":{"channelName":"AMAZON"},"orderItems":[],"fulfillment":{"fulfillmentStatus":"SHIPPED","fulfilledBy":"AMAZON"}}]}"#;
    rollback_plugin_sdk::kv::delete("lwa-token");
    let (fake, r) = run(
        &s,
        "2024-05-01T09:30:00Z",
        &[(200, token), (200, page1), (200, page2)],
    );
    let r = r.expect("verdict");
    assert_eq!(
        r.metric_value("orders_behind"),
        Some(2.0),
        "PENDING is skipped: {}",
        r.summary
    );
    assert_eq!(r.status, Status::Fail, "{}", r.summary);
    let urls = fake.urls();
    let first = "http://sp/orders/2026-01-01/orders?marketplaceIds=ATVPDKIKX0DER,A2EUQ1WTGCTBG2&lastUpdatedAfter=2024-05-01T09%3A30%3A00Z&maxResultsPerPage=100";
    assert_eq!(urls[2], first);
    assert_eq!(
        urls[3],
        format!("{first}&paginationToken=p%2B2%2F%3D"),
        "every page repeats the query"
    );
    // fulfilledBy AMAZON is AFN: left out for an MFN-only app.
    let mfn = valid(&[
        ("provider", "amazon"),
        ("endpoint", "http://sp"),
        ("marketplace_ids", "A1"),
        ("max_pages", "5"),
        ("fulfillment_channels", "MFN"),
    ]);
    let (_, r) = run(&mfn, "2024-05-01T09:30:00Z", &[(200, page1), (200, page2)]);
    assert_eq!(r.expect("verdict").metric_value("orders_behind"), Some(1.0));
    let err = settings(&[
        ("provider", "amazon"),
        ("app_status_url", "x"),
        ("marketplace_ids", "A"),
        ("api", "v1"),
    ])
    .err();
    assert_eq!(
        err.as_deref(),
        Some("config `api` = `v1`: expected 2026-01-01 or v0")
    );
}

#[test]
fn the_2026_01_01_models_example_reads() {
    let model: serde_json::Value = serde_json::from_str(include_str!(
        "../../../tests/api-models/amazon-sp-api/orders_2026-01-01.json"
    ))
    .expect("the model");
    let example = model["paths"]["/orders/2026-01-01/orders"]["get"]["responses"]["200"]
        ["examples"]["application/json"]
        .clone();
    let page: SearchOrders = serde_json::from_value(example).expect("a searchOrders answer");
    let (orders, _) = search_orders_page(page).expect("valid");
    assert!(!orders.is_empty());
    assert_eq!(orders[0].id, "123-4567890-1234567");
    assert_eq!(
        orders[0].updated,
        time::parse_rfc3339("2024-12-25T14:45:00Z").expect("a time")
    );
    assert!(!orders[0].status.is_empty());
}

#[test]
fn walmart_asks_for_its_ship_node_type() {
    let s = valid(&[
        ("provider", "walmart"),
        ("endpoint", "http://wm"),
        ("ship_node_type", "WFSFulfilled"),
    ]);
    let token = r#"{"access_token":"w","expires_in":900}"#;
    let none = r#"{"errors":{"error":[{"code":"CONTENT_NOT_FOUND.GMP_ORDER_API","description":"No Orders found"}]}}"#;
    let (fake, r) = run(&s, "2024-05-01T09:30:00Z", &[(200, token), (404, none)]);
    assert_eq!(r.expect("verdict").status, Status::Pass);
    assert!(
        fake.urls()[2].ends_with("&limit=100&shipNodeType=WFSFulfilled"),
        "{:?}",
        fake.urls()
    );
    let err = settings(&[
        ("provider", "walmart"),
        ("app_status_url", "x"),
        ("ship_node_type", "Drone"),
    ])
    .err();
    assert_eq!(
        err.as_deref(),
        Some("config `ship_node_type` = `Drone`: expected SellerFulfilled, WFSFulfilled or 3PLFulfilled")
    );
}
