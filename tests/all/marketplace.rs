//! The marketplace checks against local fakes of the providers' APIs: first
//! the fakes themselves (documented behaviour, Amazon bodies validated
//! against the official SP-API models), then `order-sync-lag` and
//! `inventory-drift` through `rollbackctl plugin test`, then a rollback by a
//! running agent when a release stops syncing orders.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::marketplace_fakes::*;
use crate::support::*;

const MIN: Duration = Duration::from_secs(60);

// ------------------------------------------------------------ the fakes

/// `application/x-www-form-urlencoded` text of `pairs`.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn lwa_token(m: &Marketplace) -> String {
    let a = call(
        m.port,
        "POST",
        "/auth/o2/token",
        &[FORM],
        &form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", AMAZON_REFRESH_TOKEN),
            ("client_id", AMAZON_CLIENT_ID),
            ("client_secret", AMAZON_CLIENT_SECRET),
        ]),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    a.value()["access_token"].as_str().unwrap().to_string()
}

/// `Basic base64(user:password)`.
fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{password}").as_bytes())
    )
}

fn amazon_get(m: &Marketplace, token: &str, target: &str) -> Answer {
    call(m.port, "GET", target, &[("x-amz-access-token", token)], "")
}

fn ago(d: Duration) -> i64 {
    now_ms() - d.as_millis() as i64
}

/// Gives `m` five orders `id(0)`..`id(4)`, updated a minute apart from two
/// hours ago (whole seconds), two to a page; returns the first update time.
fn five_orders(m: &Marketplace, id: impl Fn(i64) -> String) -> i64 {
    let t = ago(2 * 60 * MIN) / 1000 * 1000;
    m.set_orders((0..5).map(|i| Order::at(&id(i), t + i * 60_000)).collect());
    m.set_page_size(2);
    t
}

/// Reads the pages from `first` on, each of which must answer 200; `next`
/// finds the target of the following page in a page. Returns the pages.
fn follow_pages(
    first: &str,
    get: impl Fn(&str) -> Answer,
    next: impl Fn(&Value) -> Option<String>,
) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut target = first.to_string();
    loop {
        let a = get(&target);
        assert_eq!(a.status, 200, "{target}: {}", a.body);
        let page = a.value();
        let after = next(&page);
        pages.push(page);
        match after {
            Some(t) => target = t,
            None => return pages,
        }
    }
}

#[test]
fn marketplace_fakes_times_round_trip() {
    let t = parse_time("2024-02-29T23:59:58Z").unwrap();
    assert_eq!(rfc3339(t), "2024-02-29T23:59:58Z");
    assert_eq!(rfc3339_millis(t + 7), "2024-02-29T23:59:58.007Z");
    assert_eq!(parse_time("2024-02-29T23:59:58.007Z"), Some(t + 7));
    assert_eq!(parse_time("2024-03-01T01:59:58+02:00"), Some(t));
    assert_eq!(parse_time("2024-02-29T18:59:58-0500"), Some(t));
    assert_eq!(parse_time("2024-02-29"), Some(t - 86_398_000));
    assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
    for bad in [
        "yesterday",
        "2024-13-01T00:00:00Z",
        "2024-02-29T24:00:00Z",
        "",
    ] {
        assert_eq!(parse_time(bad), None, "{bad}");
    }
    let now = now_ms() / 1000 * 1000;
    assert_eq!(parse_time(&rfc3339(now)), Some(now));
    assert_eq!(base64_encode(b"id:secret"), "aWQ6c2VjcmV0");
}

#[test]
fn marketplace_fake_amazon_follows_lwa_and_orders_v0() {
    let m = Marketplace::start(Provider::Amazon);
    // LWA: form body only, the right client, the right refresh token.
    let post = |body: &str, headers: &[(&str, &str)]| {
        call(m.port, "POST", "/auth/o2/token", headers, body)
    };
    let good = [
        ("grant_type", "refresh_token"),
        ("refresh_token", AMAZON_REFRESH_TOKEN),
        ("client_id", AMAZON_CLIENT_ID),
        ("client_secret", AMAZON_CLIENT_SECRET),
    ];
    let a = post(&form(&good), &[("content-type", "application/json")]);
    assert_eq!(
        (a.status, a.value()["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let mut wrong = good;
    wrong[3].1 = "nope";
    let a = post(&form(&wrong), &[FORM]);
    assert_eq!(a.status, 401);
    assert_eq!(a.value()["error"], "invalid_client");
    assert!(a.value()["error_description"].is_string());
    let mut wrong = good;
    wrong[1].1 = "Atzr|other";
    assert_eq!(
        post(&form(&wrong), &[FORM]).value()["error"],
        "invalid_grant"
    );
    m.set_expires_in(60);
    let a = post(&form(&good), &[FORM]);
    let v = a.value();
    assert!(v["access_token"].as_str().unwrap().starts_with("Atza|"));
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 60);
    assert!(a.header_value("x-amzn-RequestId").is_some());

    // Orders: token, marketplace and a time filter are required.
    let token = v["access_token"].as_str().unwrap().to_string();
    let since = rfc3339(ago(3 * 60 * MIN));
    let list =
        format!("/orders/v0/orders?MarketplaceIds={AMAZON_MARKETPLACE}&LastUpdatedAfter={since}");
    let a = call(m.port, "GET", &list, &[], "");
    assert_eq!(a.status, 403);
    assert_eq!(a.value()["errors"][0]["code"], "Unauthorized");
    let a = amazon_get(
        &m,
        &token,
        &format!("/orders/v0/orders?LastUpdatedAfter={since}"),
    );
    assert_eq!(
        (a.status, a.value()["errors"][0]["code"].as_str()),
        (400, Some("InvalidInput"))
    );
    let a = amazon_get(
        &m,
        &token,
        &format!("/orders/v0/orders?MarketplaceIds={AMAZON_MARKETPLACE}"),
    );
    assert_eq!(a.status, 400);
    let both = format!("{list}&CreatedAfter={since}");
    assert_eq!(amazon_get(&m, &token, &both).status, 400);

    // "After (or at)": an order updated exactly at the bound is listed.
    let bound = ago(60 * MIN) / 1000 * 1000;
    m.set_orders(vec![
        Order::at("111-0000001-0000001", bound - 1000),
        Order::at("111-0000001-0000002", bound),
        Order::at("111-0000001-0000003", bound + 60_000),
        Order::at("111-0000001-0000004", bound + 120_000),
        Order::at("111-0000001-0000005", bound + 180_000),
    ]);
    m.set_page_size(2);
    let first = format!(
        "/orders/v0/orders?MarketplaceIds={AMAZON_MARKETPLACE}&LastUpdatedAfter={}",
        encode(&rfc3339(bound))
    );
    let get = |target: &str| {
        let a = amazon_get(&m, &token, target);
        assert!(
            a.header_value("x-amzn-RateLimit-Limit").is_some(),
            "{}",
            a.body
        );
        a
    };
    let pages = follow_pages(&first, get, |v| {
        let next = v["payload"]["NextToken"].as_str()?;
        // Page tokens hold `+`, `/` and `=`: sent raw, `+` means a space.
        let raw = format!("{first}&NextToken={next}");
        assert_eq!(
            amazon_get(&m, &token, &raw).status,
            400,
            "unencoded NextToken"
        );
        // NextToken alone is refused: the model requires the query again.
        let alone = format!(
            "/orders/v0/orders?MarketplaceIds={AMAZON_MARKETPLACE}&NextToken={}",
            encode(next)
        );
        assert_eq!(
            amazon_get(&m, &token, &alone).status,
            400,
            "NextToken alone"
        );
        Some(format!("{first}&NextToken={}", encode(next)))
    });
    let ids: Vec<&str> = pages
        .iter()
        .flat_map(|v| v["payload"]["Orders"].as_array().unwrap())
        .map(|o| o["AmazonOrderId"].as_str().unwrap())
        .collect();
    assert_eq!(pages.len(), 2);
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(!ids.contains(&"111-0000001-0000001"));

    // LastUpdatedBefore must be at least two minutes old.
    let before = format!("{first}&LastUpdatedBefore={}", encode(&rfc3339(now_ms())));
    assert_eq!(amazon_get(&m, &token, &before).status, 400);

    // Expired tokens: the documented 403 with its details.
    m.expire_tokens();
    let a = amazon_get(&m, &token, &first);
    assert_eq!(a.status, 403);
    assert_eq!(
        a.value()["errors"][0]["details"],
        "The access token you provided has expired."
    );
    m.issue_expired_tokens(1);
    let born_dead = lwa_token(&m);
    assert_eq!(amazon_get(&m, &born_dead, &first).status, 403);
    let fresh = lwa_token(&m);
    assert_eq!(amazon_get(&m, &fresh, &first).status, 200);
    let a = amazon_get(&m, "Atza|made-up", &first);
    assert!(a.value()["errors"][0]["details"]
        .as_str()
        .unwrap()
        .contains("invalid"));

    // Programmed failures: a 429 burst in the documented shape.
    m.fail_next(
        "/orders/v0/orders",
        Failure::RateLimited {
            retry_after: Some(1),
        },
    );
    let a = amazon_get(&m, &fresh, &first);
    assert_eq!(a.status, 429);
    assert_eq!(a.value()["errors"][0]["code"], "QuotaExceeded");
    assert_eq!(a.header_value("retry-after"), Some("1"));
    assert!(a.header_value("x-amzn-RateLimit-Limit").is_some());
    assert_eq!(
        amazon_get(&m, &fresh, &first).status,
        200,
        "one failure only"
    );
    let errors = m.errors();
    assert!(errors.contains(&"QuotaExceeded".to_string()), "{errors:?}");
    assert!(m.requests("/auth/o2/token").len() >= 6);
}

#[test]
fn marketplace_fake_amazon_inventory_summaries() {
    let m = Marketplace::start(Provider::Amazon);
    m.set_stock(vec![
        Stock::new("SKU-A", 5).reserved(2),
        Stock::new("SKU-B", 0),
        Stock::new("SKU-C", 12),
    ]);
    let token = lwa_token(&m);
    let base = format!(
        "/fba/inventory/v1/summaries?granularityType=Marketplace&granularityId={AMAZON_MARKETPLACE}&marketplaceIds={AMAZON_MARKETPLACE}"
    );
    let a = amazon_get(
        &m,
        &token,
        &format!("{base}&details=true&sellerSkus=SKU-A,SKU-C"),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.value();
    let s = v["payload"]["inventorySummaries"].as_array().unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0]["sellerSku"], "SKU-A");
    assert_eq!(s[0]["inventoryDetails"]["fulfillableQuantity"], 5);
    assert_eq!(
        s[0]["totalQuantity"], 7,
        "reserved units count in the total"
    );
    assert_eq!(
        v["payload"]["granularity"]["granularityType"],
        "Marketplace"
    );
    // Without details=true there are no inventoryDetails.
    let v = amazon_get(&m, &token, &format!("{base}&sellerSkus=SKU-A")).value();
    assert!(v["payload"]["inventorySummaries"][0]["inventoryDetails"].is_null());
    let no_type = base.replace("granularityType=Marketplace&", "");
    assert_eq!(amazon_get(&m, &token, &no_type).status, 400);
    let two = base.replace(
        &format!("marketplaceIds={AMAZON_MARKETPLACE}"),
        &format!("marketplaceIds={AMAZON_MARKETPLACE},A2EUQ1WTGCTBG2"),
    );
    assert_eq!(amazon_get(&m, &token, &two).status, 400);
    // Paged with pagination.nextToken.
    m.set_page_size(2);
    let v = amazon_get(&m, &token, &format!("{base}&details=true")).value();
    let next = v["pagination"]["nextToken"].as_str().unwrap();
    let v = amazon_get(
        &m,
        &token,
        &format!("{base}&details=true&nextToken={}", encode(next)),
    )
    .value();
    assert_eq!(v["payload"]["inventorySummaries"][0]["sellerSku"], "SKU-C");
    assert!(v["pagination"]["nextToken"].is_null());
}

/// The response schema of `operation` for `status` in an SP-API model, with
/// the model's definitions, as a Draft 4 validator (Swagger 2.0 schemas are
/// a Draft 4 subset; `x-` extensions are ignored as unknown keywords).
fn sp_api_validator(model: &str, path: &str, status: u16) -> jsonschema::Validator {
    let file = repo().join("tests/api-models/amazon-sp-api").join(model);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let response = &doc["paths"][path]["get"]["responses"][status.to_string()];
    let reference = response["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("{model} {path} has no schema for {status}"));
    let schema = json!({
        "definitions": doc["definitions"],
        "allOf": [{"$ref": reference}],
    });
    jsonschema::draft4::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

pub(crate) fn assert_valid(model: &str, path: &str, what: &str, a: &Answer) {
    let v = a.value();
    let validator = sp_api_validator(model, path, a.status);
    let errors: Vec<String> = validator
        .iter_errors(&v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} ({}) does not match {model}: {errors:?}\n{}",
        a.status,
        a.body
    );
}

#[test]
fn marketplace_fake_amazon_bodies_match_the_sp_api_models() {
    const ORDERS: (&str, &str) = ("ordersV0.json", "/orders/v0/orders");
    const FBA: (&str, &str) = ("fbaInventory.json", "/fba/inventory/v1/summaries");

    // The validators do reject what the models forbid.
    let bad_order = json!({"payload": {"Orders": [{"AmazonOrderId": "1", "PurchaseDate": "x", "LastUpdateDate": "x", "OrderStatus": "Lost"}]}});
    assert!(!sp_api_validator(ORDERS.0, ORDERS.1, 200).is_valid(&bad_order));
    let no_status = json!({"payload": {"Orders": [{"AmazonOrderId": "1", "PurchaseDate": "x", "LastUpdateDate": "x"}]}});
    assert!(!sp_api_validator(ORDERS.0, ORDERS.1, 200).is_valid(&no_status));
    let bad_time = json!({"payload": {"granularity": {}, "inventorySummaries": [{"lastUpdatedTime": "yesterday"}]}});
    assert!(!sp_api_validator(FBA.0, FBA.1, 200).is_valid(&bad_time));
    let no_message = json!({"errors": [{"code": "InvalidInput"}]});
    assert!(!sp_api_validator(ORDERS.0, ORDERS.1, 400).is_valid(&no_message));

    let m = Marketplace::start(Provider::Amazon);
    m.set_orders(
        (0..5)
            .map(|i| Order::updated_ago(&format!("114-{i:07}-1234567"), i * MIN))
            .collect(),
    );
    m.set_stock(vec![
        Stock::new("SKU-A", 3).reserved(1),
        Stock::new("SKU-B", 9),
        Stock::new("SKU-C", 0),
    ]);
    m.set_page_size(2);
    let token = lwa_token(&m);
    let orders = format!(
        "/orders/v0/orders?MarketplaceIds={AMAZON_MARKETPLACE}&LastUpdatedAfter={}",
        encode(&rfc3339(ago(60 * MIN)))
    );
    let fba = format!(
        "/fba/inventory/v1/summaries?details=true&granularityType=Marketplace&granularityId={AMAZON_MARKETPLACE}&marketplaceIds={AMAZON_MARKETPLACE}"
    );
    let mut seen = std::collections::BTreeSet::new();
    for ((model, path), target) in [(ORDERS, orders.clone()), (FBA, fba.clone())] {
        let mut check = |what: &str, a: Answer| {
            assert_valid(model, path, what, &a);
            seen.insert((path, a.status));
        };
        let first = amazon_get(&m, &token, &target);
        let next = first.value()["payload"]["NextToken"]
            .as_str()
            .or(first.value()["pagination"]["nextToken"].as_str())
            .map(str::to_string)
            .expect("a second page");
        check("first page", first);
        let key = if path == ORDERS.1 {
            "NextToken"
        } else {
            "nextToken"
        };
        let last = if path == ORDERS.1 {
            format!(
                "/orders/v0/orders?MarketplaceIds={AMAZON_MARKETPLACE}&{key}={}",
                encode(&next)
            )
        } else {
            format!("{fba}&{key}={}", encode(&next))
        };
        check("next page", amazon_get(&m, &token, &last));
        check(
            "without details",
            amazon_get(&m, &token, &target.replace("details=true&", "")),
        );
        check(
            "bad input",
            amazon_get(
                &m,
                &token,
                &target.replace("arketplaceIds=", "arketplaceIds=XX"),
            ),
        );
        check("no token", call(m.port, "GET", &target, &[], ""));
        check(
            "unknown token",
            amazon_get(&m, &token.replace("Atza|", "Atza|x"), &target),
        );
        for status in [404, 500, 503, 400, 403] {
            m.fail_next(path, Failure::Status(status));
            check("programmed", amazon_get(&m, &token, &target));
        }
        m.fail_next(path, Failure::RateLimited { retry_after: None });
        check("throttled", amazon_get(&m, &token, &target));
    }
    // Empty results and expired tokens, for the orders.
    m.set_orders(Vec::new());
    assert_valid(
        ORDERS.0,
        ORDERS.1,
        "no orders",
        &amazon_get(&m, &token, &orders),
    );
    m.expire_tokens();
    assert_valid(
        ORDERS.0,
        ORDERS.1,
        "expired",
        &amazon_get(&m, &token, &orders),
    );
    for path in [ORDERS.1, FBA.1] {
        for status in [200, 400, 403, 404, 429, 500, 503] {
            assert!(
                seen.contains(&(path, status)),
                "{path} {status} not generated"
            );
        }
    }
}

#[test]
fn marketplace_fake_search_orders_bodies_match_the_2026_01_01_model() {
    const MODEL: &str = "orders_2026-01-01.json";
    const PATH: &str = "/orders/2026-01-01/orders";
    // The validator rejects what the model forbids.
    let bad =
        json!({"orders": [{"orderId": "1", "createdTime": "x", "lastUpdatedTime": "yesterday"}]});
    assert!(!sp_api_validator(MODEL, PATH, 200).is_valid(&bad));

    let m = Marketplace::start(Provider::Amazon);
    m.set_orders(vec![
        Order::updated_ago("114-2026101-0000001", 40 * MIN),
        Order::updated_ago("114-2026102-0000001", 30 * MIN).status("Pending"),
        Order::updated_ago("114-2026103-0000001", 20 * MIN).channel("AFN"),
        Order::updated_ago("114-2026104-0000001", 10 * MIN).status("Canceled"),
        Order::updated_ago("114-2026105-0000001", 5 * MIN).status("Shipped"),
    ]);
    m.set_page_size(2);
    let token = lwa_token(&m);
    let query = format!(
        "{PATH}?marketplaceIds={AMAZON_MARKETPLACE}&lastUpdatedAfter={}",
        encode(&rfc3339(ago(60 * MIN)))
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut check = |what: &str, a: Answer| {
        assert_valid(MODEL, PATH, what, &a);
        seen.insert(a.status);
        a
    };
    let mut target = query.clone();
    let mut statuses = Vec::new();
    for page in 1..=3 {
        let a = check(&format!("page {page}"), amazon_get(&m, &token, &target));
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.value();
        for o in v["orders"].as_array().unwrap() {
            statuses.push(
                o["fulfillment"]["fulfillmentStatus"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        match v["pagination"]["nextToken"].as_str() {
            Some(next) => target = format!("{query}&paginationToken={}", encode(next)),
            None => break,
        }
    }
    statuses.sort();
    statuses.dedup();
    assert!(statuses.len() >= 3, "several statuses: {statuses:?}");
    check(
        "no bound",
        amazon_get(
            &m,
            &token,
            &format!("{PATH}?marketplaceIds={AMAZON_MARKETPLACE}"),
        ),
    );
    check("no token", call(m.port, "GET", &query, &[], ""));
    check(
        "unknown token",
        amazon_get(&m, &token.replace("Atza|", "Atza|x"), &query),
    );
    for status in [404, 500, 503, 400, 403] {
        m.fail_next(PATH, Failure::Status(status));
        check("programmed", amazon_get(&m, &token, &query));
    }
    m.fail_next(PATH, Failure::RateLimited { retry_after: None });
    check("throttled", amazon_get(&m, &token, &query));
    m.set_orders(Vec::new());
    check("no orders", amazon_get(&m, &token, &query));
    m.expire_tokens();
    check("expired", amazon_get(&m, &token, &query));
    for status in [200, 400, 403, 404, 429, 500, 503] {
        assert!(seen.contains(&status), "{status} not generated");
    }
}

/// A signed Shopee shop-level call with the authorization's access token.
fn shopee_get(m: &Marketplace, path: &str, params: &str, key: &str, ts: i64) -> Answer {
    shopee_get_with(m, path, params, key, ts, SHOPEE_ACCESS_TOKEN)
}

/// A signed Shopee shop-level call with `token`.
fn shopee_get_with(
    m: &Marketplace,
    path: &str,
    params: &str,
    key: &str,
    ts: i64,
    token: &str,
) -> Answer {
    let sign = shopee_sign(key, SHOPEE_PARTNER_ID, path, ts, token, SHOPEE_SHOP_ID);
    let target = format!(
        "{path}?partner_id={SHOPEE_PARTNER_ID}&timestamp={ts}&access_token={token}&shop_id={SHOPEE_SHOP_ID}&sign={sign}&{params}"
    );
    call(m.port, "GET", &target, &[], "")
}

const SHOPEE_REFRESH: &str = "/api/v2/auth/access_token/get";

/// `POST` of `body` to Shopee's token refresh, signed as a public call
/// with `key` at `ts`.
fn shopee_refresh(m: &Marketplace, body: &Value, key: &str, ts: i64) -> Answer {
    let sign = shopee_public_sign(key, SHOPEE_PARTNER_ID, SHOPEE_REFRESH, ts);
    let target =
        format!("{SHOPEE_REFRESH}?partner_id={SHOPEE_PARTNER_ID}&timestamp={ts}&sign={sign}");
    call(
        m.port,
        "POST",
        &target,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
}

fn refresh_body(refresh_token: &str) -> Value {
    json!({"refresh_token": refresh_token, "partner_id": SHOPEE_PARTNER_ID, "shop_id": SHOPEE_SHOP_ID})
}

#[test]
fn marketplace_fake_shopee_refreshes_and_rotates_tokens() {
    let m = Marketplace::start(Provider::Shopee);
    let t0 = now_ms() / 1000;
    let refresh = |body: &Value| shopee_refresh(&m, body, SHOPEE_PARTNER_KEY, t0);
    let refused = |a: &Answer| {
        (
            a.status,
            a.value()["error"].as_str().unwrap_or("").to_string(),
            a.value()["message"].as_str().unwrap_or("").to_string(),
        )
    };
    let seed = refresh_body(SHOPEE_REFRESH_TOKEN);

    // The public signature: partner_id, path and timestamp, nothing else.
    let a = shopee_refresh(&m, &seed, "not-the-key", t0);
    assert_eq!(refused(&a).1, "error_sign");
    let shop_sign = shopee_sign(
        SHOPEE_PARTNER_KEY,
        SHOPEE_PARTNER_ID,
        SHOPEE_REFRESH,
        t0,
        SHOPEE_ACCESS_TOKEN,
        SHOPEE_SHOP_ID,
    );
    let a = call(
        m.port,
        "POST",
        &format!("{SHOPEE_REFRESH}?partner_id={SHOPEE_PARTNER_ID}&timestamp={t0}&sign={shop_sign}"),
        &[("content-type", "application/json")],
        &seed.to_string(),
    );
    assert_eq!(
        refused(&a).1,
        "error_sign",
        "a shop-level sign is not the public one"
    );
    let unsigned = format!("{SHOPEE_REFRESH}?partner_id={SHOPEE_PARTNER_ID}&timestamp={t0}");
    let a = call(
        m.port,
        "POST",
        &unsigned,
        &[("content-type", "application/json")],
        &seed.to_string(),
    );
    assert_eq!(
        refused(&a),
        (400, "error_param".into(), "Missing sign.".into())
    );
    // Stale timestamps, the body's ids and its type.
    let a = shopee_refresh(&m, &seed, SHOPEE_PARTNER_KEY, t0 - 301);
    assert_eq!(
        refused(&a),
        (403, "error_param".into(), "Invalid timestamp".into())
    );
    let mut body = seed.clone();
    body["partner_id"] = json!(SHOPEE_PARTNER_ID.to_string());
    assert_eq!(
        refused(&refresh(&body)).2,
        "Invalid partner_id.",
        "an integer"
    );
    let mut body = seed.clone();
    body["shop_id"] = json!(1);
    assert_eq!(refused(&refresh(&body)).2, "Invalid shop_id.");
    let sign = shopee_public_sign(SHOPEE_PARTNER_KEY, SHOPEE_PARTNER_ID, SHOPEE_REFRESH, t0);
    let as_form = call(
        m.port,
        "POST",
        &format!("{SHOPEE_REFRESH}?partner_id={SHOPEE_PARTNER_ID}&timestamp={t0}&sign={sign}"),
        &[FORM],
        &form(&[("refresh_token", SHOPEE_REFRESH_TOKEN)]),
    );
    assert_eq!(refused(&as_form).1, "error_param");
    let a = refresh(&refresh_body("made-up"));
    assert_eq!(
        refused(&a),
        (403, "error_auth".into(), "Invalid refresh_token".into())
    );
    assert_eq!(
        m.shopee_refresh_token(),
        SHOPEE_REFRESH_TOKEN,
        "nothing rotated yet"
    );

    // A refresh: a new access token and a new refresh token; the old one is dead.
    let a = refresh(&seed);
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.value();
    assert_eq!(
        (v["error"].as_str(), v["message"].as_str()),
        (Some(""), Some(""))
    );
    assert_eq!(v["expire_in"], 14_400);
    assert_eq!(
        (v["partner_id"].as_u64(), v["shop_id"].as_u64()),
        (Some(SHOPEE_PARTNER_ID), Some(SHOPEE_SHOP_ID))
    );
    assert!(v["request_id"].is_string());
    let token = v["access_token"].as_str().unwrap().to_string();
    let rotated = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(token, SHOPEE_ACCESS_TOKEN);
    assert_ne!(rotated, SHOPEE_REFRESH_TOKEN);
    assert_eq!(m.shopee_refresh_token(), rotated);
    assert_eq!(
        refused(&refresh(&seed)).2,
        "Invalid refresh_token",
        "used once"
    );
    m.set_orders(vec![Order::at("240501AAAA0001", (t0 - 60) * 1000)]);
    let list = "/api/v2/order/get_order_list";
    let params = format!(
        "time_range_field=update_time&time_from={}&time_to={t0}&page_size=50&cursor=",
        t0 - 600
    );
    let get = |token: &str| shopee_get_with(&m, list, &params, SHOPEE_PARTNER_KEY, t0, token);
    assert_eq!(get(&token).status, 200, "the new access token works");

    // The lifetime is configurable; access tokens expire server-side on demand.
    m.set_expires_in(60);
    let v = refresh(&refresh_body(&rotated)).value();
    assert_eq!(v["expire_in"], 60);
    let newest = v["access_token"].as_str().unwrap().to_string();
    m.expire_tokens();
    for t in [&token, &newest] {
        let a = get(t);
        assert_eq!(
            refused(&a),
            (403, "error_auth".into(), "Invalid access_token.".into())
        );
    }

    // Re-authorizing the shop replaces the refresh token.
    let current = m.shopee_refresh_token();
    let fresh = m.reauthorize_shopee();
    assert_eq!(refused(&refresh(&refresh_body(&current))).1, "error_auth");
    assert_eq!(refresh(&refresh_body(&fresh)).status, 200);
    let issued = m.issued_tokens();
    for t in [SHOPEE_REFRESH_TOKEN, &rotated, &fresh, &token, &newest] {
        assert!(issued.iter().any(|i| i == t), "{t} is listed as issued");
    }
}

#[test]
fn marketplace_fake_shopee_checks_signatures_and_parameters() {
    // The HMAC itself is the standard one: RFC 4231, test case 2.
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"Jefe").unwrap();
    hmac::Mac::update(&mut mac, b"what do ya want for nothing?");
    let digest: String = hmac::Mac::finalize(mac)
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );

    let m = Marketplace::start(Provider::Shopee);
    let t0 = now_ms() / 1000;
    m.set_orders(vec![
        Order::at("240501AAAA0001", (t0 - 7200) * 1000),
        Order::at("240501AAAA0002", (t0 - 3600) * 1000),
        Order::at("240501AAAA0003", (t0 - 1800) * 1000),
    ]);
    m.set_page_size(2);
    let list = "/api/v2/order/get_order_list";
    let range = format!(
        "time_range_field=update_time&time_from={}&time_to={t0}&page_size=50",
        t0 - 7200
    );
    let first_page = format!("{range}&cursor=");
    // Signed with the partner key, now.
    let signed = |path: &str, params: &str| shopee_get(&m, path, params, SHOPEE_PARTNER_KEY, t0);
    let a = signed(list, &first_page);
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.value();
    assert_eq!(v["error"], "");
    assert!(v["request_id"].is_string());
    assert_eq!(v["response"]["more"], true);
    assert_eq!(
        v["response"]["order_list"][0]["order_sn"], "240501AAAA0001",
        "time_from is inclusive"
    );
    let cursor = v["response"]["next_cursor"].as_str().unwrap();
    let v = signed(list, &format!("{range}&cursor={cursor}")).value();
    assert_eq!(v["response"]["more"], false);
    assert_eq!(v["response"]["next_cursor"], "");
    assert_eq!(v["response"]["order_list"][0]["order_sn"], "240501AAAA0003");

    // Sign, timestamp, token, range, page size and cursor are all checked.
    let a = shopee_get(&m, list, &first_page, "not-the-key", t0);
    assert_eq!(
        (a.status, a.value()["error"].as_str()),
        (403, Some("error_sign"))
    );
    assert_eq!(a.value()["message"], "Wrong sign.");
    let a = shopee_get(&m, list, &first_page, SHOPEE_PARTNER_KEY, t0 - 301);
    assert_eq!(a.value()["error"], "error_param");
    assert_eq!(a.value()["message"], "Invalid timestamp");
    let wide = format!(
        "time_range_field=update_time&time_from={}&time_to={t0}&page_size=50&cursor=",
        t0 - 16 * 86_400
    );
    assert_eq!(signed(list, &wide).value()["error"], "error_param");
    assert_eq!(signed(list, &range).value()["error"], "error_param");
    let big = range.replace("page_size=50", "page_size=101");
    assert_eq!(
        signed(list, &format!("{big}&cursor=")).value()["error"],
        "error_param"
    );
    let unsigned = format!("{list}?partner_id={SHOPEE_PARTNER_ID}&timestamp={t0}&shop_id={SHOPEE_SHOP_ID}&{range}&cursor=");
    assert_eq!(
        call(m.port, "GET", &unsigned, &[], "").value()["error"],
        "error_param"
    );

    // Details carry the update time in unix seconds.
    let detail = "/api/v2/order/get_order_detail";
    let v = signed(detail, "order_sn_list=240501AAAA0003,240501AAAA0001").value();
    let orders = v["response"]["order_list"].as_array().unwrap();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0]["update_time"], t0 - 1800);
    assert!(orders[0]["create_time"].is_i64());

    // Stock: per item, or per model for items with variations.
    m.set_stock(vec![
        Stock::new("TEE-S", 4).item(1001, Some(5001)),
        Stock::new("TEE-M", 6).reserved(1).item(1001, Some(5002)),
        Stock::new("MUG", 9).item(1002, None),
    ]);
    let v = signed(
        "/api/v2/product/get_item_base_info",
        "item_id_list=1001,1002",
    )
    .value();
    let items = v["response"]["item_list"].as_array().unwrap();
    assert_eq!(items[0]["has_model"], true);
    assert_eq!(items[1]["item_sku"], "MUG");
    assert_eq!(
        items[1]["stock_info_v2"]["summary_info"]["total_available_stock"],
        9
    );
    let v = signed("/api/v2/product/get_model_list", "item_id=1001").value();
    let models = v["response"]["model"].as_array().unwrap();
    assert_eq!(models[1]["model_sku"], "TEE-M");
    assert_eq!(
        models[1]["stock_info_v2"]["summary_info"]["total_available_stock"],
        6
    );

    // An expired access token is error_auth.
    m.expire_tokens();
    let a = signed(list, &first_page);
    assert_eq!(
        (a.status, a.value()["error"].as_str()),
        (403, Some("error_auth"))
    );
    assert_eq!(
        m.errors(),
        [
            "error_sign",
            "error_param",
            "error_param",
            "error_param",
            "error_param",
            "error_param",
            "error_auth"
        ]
    );
}

fn walmart_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("WM_SVC.NAME", "Walmart Marketplace"),
        ("WM_QOS.CORRELATION_ID", "0f8e9d7c-test"),
        ("Accept", "application/json"),
    ];
    h.extend_from_slice(extra);
    h
}

#[test]
fn marketplace_fake_walmart_token_headers_and_cursor_paging() {
    let m = Marketplace::start(Provider::Walmart);
    let basic = basic_auth(WALMART_CLIENT_ID, WALMART_CLIENT_SECRET);
    let body = "grant_type=client_credentials";
    let token_call = |headers: &[(&str, &str)]| call(m.port, "POST", "/v3/token", headers, body);
    // Each required header is named when it is missing.
    let a = token_call(&[
        ("Authorization", &basic),
        FORM,
        ("WM_QOS.CORRELATION_ID", "1"),
        ("Accept", "application/json"),
    ]);
    assert_eq!(a.status, 400);
    let e = &a.value()["error"][0];
    assert_eq!(e["code"], "INVALID_REQUEST_HEADER.GMP_GATEWAY_API");
    assert_eq!(e["field"], "WM_SVC.NAME");
    assert_eq!(e["severity"], "ERROR");
    let a = token_call(&[
        ("Authorization", &basic),
        FORM,
        ("WM_SVC.NAME", "x"),
        ("Accept", "application/json"),
    ]);
    assert_eq!(a.value()["error"][0]["field"], "WM_QOS.CORRELATION_ID");
    let a = token_call(&walmart_headers(&[
        ("Authorization", "Basic Zm9vOmJhcg=="),
        FORM,
    ]));
    assert_eq!(
        (a.status, a.value()["error"][0]["code"].as_str()),
        (401, Some("UNAUTHORIZED.GMP_GATEWAY_API"))
    );
    let a = token_call(&walmart_headers(&[("Authorization", &basic), FORM]));
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.value();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900);
    let token = v["access_token"].as_str().unwrap().to_string();
    let xml = token_call(&[
        ("WM_SVC.NAME", "x"),
        ("WM_QOS.CORRELATION_ID", "1"),
        ("Accept", "application/xml"),
        ("Authorization", &basic),
        FORM,
    ]);
    assert!(xml.body.starts_with("<?xml"), "{}", xml.body);

    // Orders: the token header; paged by nextCursor; nothing found is a 404.
    let t = five_orders(&m, |i| format!("CO-{i}"));
    let first = format!(
        "/v3/orders?lastModifiedStartDate={}&limit=100",
        rfc3339(t + 60_000)
    );
    let a = call(
        m.port,
        "GET",
        &first,
        &walmart_headers(&[("WM_SEC.ACCESS_TOKEN", "bogus")]),
        "",
    );
    assert_eq!(
        (a.status, a.value()["error"][0]["code"].as_str()),
        (401, Some("UNAUTHORIZED.GMP_GATEWAY_API"))
    );
    let get = |target: &str| {
        call(
            m.port,
            "GET",
            target,
            &walmart_headers(&[("WM_SEC.ACCESS_TOKEN", &token)]),
            "",
        )
    };
    let pages = follow_pages(&first, get, |v| {
        let next = v["list"]["meta"]["nextCursor"].as_str()?;
        assert!(next.starts_with('?'));
        Some(format!("/v3/orders{next}"))
    });
    let mut ids = Vec::new();
    for v in &pages {
        assert_eq!(v["list"]["meta"]["totalCount"], 4);
        for o in v["list"]["elements"]["order"].as_array().unwrap() {
            assert!(o["orderDate"].is_i64());
            let lines = o["orderLines"]["orderLine"].as_array().unwrap();
            assert!(lines.iter().all(|l| l["statusDate"].is_i64()));
            ids.push(o["customerOrderId"].as_str().unwrap());
        }
    }
    assert_eq!(ids, ["CO-1", "CO-2", "CO-3", "CO-4"]);
    let none = format!(
        "/v3/orders?lastModifiedStartDate={}",
        rfc3339(now_ms() + 60_000)
    );
    let a = get(&none);
    assert_eq!(a.status, 404);
    assert_eq!(
        a.value()["errors"]["error"][0]["code"],
        "CONTENT_NOT_FOUND.GMP_ORDER_API"
    );
    // The bucket's state in every answer; empty, a 429 saying when it refills.
    let count = |a: &Answer| -> f64 {
        a.header_value("x-current-token-count")
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(count(&get(&first)) > 4000.0);
    m.drain_walmart_quota(Duration::from_secs(30));
    let a = get(&first);
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(
        a.value()["error"][0]["code"],
        "REQUEST_THRESHOLD_VIOLATED.GMP_GATEWAY_API"
    );
    assert_eq!(count(&a), 0.0);
    let at: i64 = a
        .header_value("x-next-replenishment-time")
        .unwrap()
        .parse()
        .unwrap();
    assert!(at >= now_ms() + 29_000, "refills after the 30 s: {at}");
    m.expire_tokens();
    assert_eq!(get(&first).status, 401);
}

#[test]
fn marketplace_fake_ebay_token_scopes_and_offset_paging() {
    let m = Marketplace::start(Provider::Ebay);
    let basic = basic_auth(EBAY_CLIENT_ID, EBAY_CLIENT_SECRET);
    let token_call = |auth: &str, scope: &str| {
        let mut f = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", EBAY_REFRESH_TOKEN),
        ];
        if !scope.is_empty() {
            f.push(("scope", scope));
        }
        call(
            m.port,
            "POST",
            "/identity/v1/oauth2/token",
            &[("Authorization", auth), FORM],
            &form(&f),
        )
    };
    let a = token_call("Basic Zm9vOmJhcg==", "");
    assert_eq!(
        (a.status, a.value()["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let a = token_call(&basic, "https://api.ebay.com/oauth/api_scope/sell.finances");
    assert_eq!(a.value()["error"], "invalid_scope");
    let a = token_call(
        &basic,
        "https://api.ebay.com/oauth/api_scope/sell.inventory.readonly",
    );
    let no_orders = a.value()["access_token"].as_str().unwrap().to_string();
    let a = token_call(&basic, EBAY_GRANTED_SCOPES[1]);
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.value();
    assert_eq!(v["token_type"], "User Access Token");
    assert_eq!(v["expires_in"], 7200);
    let token = v["access_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("v^1.1#"));

    let t = five_orders(&m, |i| format!("12-0000{i}-00000"));
    let filter = format!("lastmodifieddate:%5B{}..%5D", rfc3339_millis(t + 60_000));
    let get = |target: &str, token: &str| {
        call(
            m.port,
            "GET",
            target,
            &[("Authorization", &format!("Bearer {token}"))],
            "",
        )
    };
    let first = format!("/sell/fulfillment/v1/order?filter={filter}&limit=50&offset=0");
    let a = get(&first, "v^1.1#made-up");
    assert_eq!(a.status, 401);
    assert_eq!(a.value()["errors"][0]["errorId"], 1001);
    assert_eq!(a.value()["errors"][0]["domain"], "OAuth");
    assert_eq!(
        get(&first, &no_orders).status,
        403,
        "a token without the fulfillment scope"
    );
    let seconds = format!(
        "/sell/fulfillment/v1/order?filter=lastmodifieddate:%5B{}..%5D",
        rfc3339(t)
    );
    assert_eq!(get(&seconds, &token).status, 400, "dates need milliseconds");
    let pages = follow_pages(
        &first,
        |target| get(target, &token),
        |v| {
            Some(
                v["next"]
                    .as_str()?
                    .strip_prefix(&m.url())
                    .unwrap()
                    .to_string(),
            )
        },
    );
    let mut ids = Vec::new();
    for v in &pages {
        assert_eq!(v["total"], 4);
        for o in v["orders"].as_array().unwrap() {
            assert!(o["lastModifiedDate"].as_str().unwrap().ends_with(".000Z"));
            ids.push(o["orderId"].as_str().unwrap());
        }
    }
    assert_eq!(ids.len(), 4);
    let offsets: Vec<String> = m
        .requests("/sell/fulfillment/v1/order")
        .iter()
        .filter(|l| l.status == 200)
        .filter_map(|l| l.param("offset").map(str::to_string))
        .collect();
    assert_eq!(offsets, ["0", "2"]);
}

// ------------------------------------------------------------ the plugins

/// What `rollbackctl plugin test --json` said.
#[derive(Debug)]
struct Run {
    code: i32,
    out: Value,
    stderr: String,
}

impl Run {
    fn status(&self) -> &str {
        self.out["status"].as_str().unwrap_or("")
    }

    fn metric(&self, name: &str) -> f64 {
        self.out["metrics"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("no metric {name}: {self:?}"))
    }

    fn retries(&self) -> u64 {
        self.out["http_retries"].as_u64().unwrap_or(0)
    }

    fn expect(&self, code: i32, status: &str, what: &str) {
        assert!(
            self.code == code && self.status() == status,
            "{what}: expected {status} (exit {code}), got exit {}: {}\n{}",
            self.code,
            self.out,
            self.stderr
        );
    }
}

/// Runs `rollbackctl plugin test PLUGIN` with the fake's config and secrets,
/// `config` on top (a key given again replaces the fake's), and the fake's
/// host plus `ports` allowed.
fn run_plugin(
    name: &str,
    m: &Marketplace,
    config: &[(&str, String)],
    secrets: &[(&str, &str)],
    ports: &[u16],
) -> Run {
    let secrets = overridden(m.secrets(), secrets);
    run_plugin_with(name, m, config, &secrets, ports, &[])
}

/// [`run_plugin`] with exactly `secrets` (none of the fake's added) and
/// `extra` arguments. No secret given, and no token the fake issued, may
/// show in the output.
fn run_plugin_with(
    name: &str,
    m: &Marketplace,
    config: &[(&str, String)],
    secrets: &[(String, String)],
    ports: &[u16],
    extra: &[&str],
) -> Run {
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = overridden(m.config(), &config);
    let mut hosts = vec![m.host()];
    hosts.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
    // Room for 429 back-off; every server here answers at once otherwise.
    let mut args = vec!["--timeout", "20s"];
    args.extend_from_slice(extra);
    let out = plugin_test(name, &hosts, &as_refs(&config), &as_refs(secrets), &args);
    let mut hidden = m.secrets();
    hidden.extend(secrets.iter().cloned());
    hidden.extend(
        m.issued_tokens()
            .into_iter()
            .map(|t| ("(a token the fake issued)".to_string(), t)),
    );
    for (name, value) in hidden {
        assert!(
            !out.stdout.contains(&value) && !out.stderr.contains(&value),
            "secret {name} shown: {}\n{}",
            out.stdout,
            out.stderr
        );
    }
    Run {
        code: out.code,
        out: serde_json::from_str(&out.stdout).unwrap_or(Value::Null),
        stderr: out.stderr,
    }
}

/// `base` with each pair of `over` in place of the pair of its key.
fn overridden(mut base: Vec<(String, String)>, over: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in over {
        base.retain(|(key, _)| key != k);
        base.push((k.to_string(), v.to_string()));
    }
    base
}

fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The app's sync status endpoint, answering `body` with `status`.
fn app_answering(status: u16, body: &str) -> u16 {
    let body = body.to_string();
    http_server(move |_| HttpReply::json(status, &body))
}

/// The app, in sync up to `last` (ms).
fn app_synced_to(last: i64) -> u16 {
    app_answering(
        200,
        &json!({"last_order_update": rfc3339(last)}).to_string(),
    )
}

fn sync_config(app: u16, max_lag: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "app_status_url",
            format!("http://127.0.0.1:{app}/sync/status"),
        ),
        ("max_lag", max_lag.to_string()),
    ]
}

fn order_sync(m: &Marketplace, app: u16, max_lag: &str) -> Run {
    run_plugin("order-sync-lag", m, &sync_config(app, max_lag), &[], &[app])
}

/// Orders listed in an order that is not by time, the newest `newest` ago.
fn scrambled_orders(prefix: &str, newest: Duration) -> Vec<Order> {
    vec![
        Order::updated_ago(&format!("{prefix}-0002"), 120 * MIN),
        Order::updated_ago(&format!("{prefix}-0004"), newest),
        Order::updated_ago(&format!("{prefix}-0001"), 180 * MIN),
        Order::updated_ago(&format!("{prefix}-0003"), 60 * MIN),
    ]
}

fn order_id(p: Provider, n: usize) -> String {
    match p {
        Provider::Amazon => format!("114-{n:07}-0000001"),
        Provider::Shopee => format!("2405{n:02}ABCD{n:04}"),
        Provider::Walmart => format!("{}", 1_581_000_000_000u64 + n as u64),
        Provider::Ebay => format!("14-{n:05}-12345"),
        Provider::Lazada => format!("{}", 491_253_082_180_000u64 + n as u64),
    }
}

/// A fake of `p` listing `scrambled_orders`, the newest updated `newest`
/// ago, and an app that has synced that order, to the second: an order
/// updated exactly then is listed ("after or at") but is not behind.
fn in_sync(p: Provider, newest: Duration) -> (Marketplace, u16) {
    let m = Marketplace::start(p);
    let orders = scrambled_orders(&order_id(p, 0), newest);
    let app = app_synced_to(orders[1].updated_ms);
    m.set_orders(orders);
    (m, app)
}

/// Runs `f` for each provider and reports every provider that failed, not
/// only the first.
fn each(providers: &[Provider], f: impl Fn(Provider)) {
    let failed: Vec<&str> = providers
        .iter()
        .filter(|&&p| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(p))).is_err())
        .map(|p| p.name())
        .collect();
    assert!(failed.is_empty(), "failed for {failed:?} (messages above)");
}

#[test]
fn marketplace_order_sync_passes_when_the_app_is_in_sync() {
    each(&Provider::ALL, |p| {
        let (m, app) = in_sync(p, 20 * MIN);
        let r = order_sync(&m, app, "10m");
        r.expect(0, "pass", p.name());
        assert_eq!(r.metric("orders_behind"), 0.0, "{}: {:?}", p.name(), r);
        assert_eq!(r.metric("lag_seconds"), 0.0, "{}", p.name());
    });
}

#[test]
fn marketplace_order_sync_passes_when_no_new_orders_exist() {
    each(&Provider::ALL, |p| {
        let m = Marketplace::start(p);
        let app = app_synced_to(ago(180 * MIN));
        let r = order_sync(&m, app, "10m");
        r.expect(0, "pass", p.name());
        assert_eq!(r.metric("orders_behind"), 0.0, "{}", p.name());
        assert_eq!(r.metric("lag_seconds"), 0.0, "{}", p.name());
        if p == Provider::Walmart {
            // Walmart answers "nothing found" with a 404, which means zero orders.
            assert!(m
                .errors()
                .contains(&"CONTENT_NOT_FOUND.GMP_ORDER_API".to_string()));
        }
    });
}

#[test]
fn marketplace_order_sync_fails_when_orders_wait_longer_than_max_lag() {
    each(&Provider::ALL, |p| {
        let m = Marketplace::start(p);
        let app = app_synced_to(ago(150 * MIN));
        // Behind but recent: within max_lag.
        let mut orders = vec![
            Order::updated_ago(&order_id(p, 1), 200 * MIN),
            Order::updated_ago(&order_id(p, 2), 2 * MIN),
        ];
        m.set_orders(orders.clone());
        let r = order_sync(&m, app, "10m");
        r.expect(0, "pass", &format!("{} within max_lag", p.name()));
        assert_eq!(r.metric("orders_behind"), 1.0, "{}", p.name());
        let lag = r.metric("lag_seconds");
        assert!((100.0..=300.0).contains(&lag), "{}: lag {lag}", p.name());

        // Waiting 90 minutes: past max_lag. The oldest waiting order is not first.
        orders.push(Order::updated_ago(&order_id(p, 3), 30 * MIN));
        orders.push(Order::updated_ago(&order_id(p, 4), 90 * MIN));
        m.set_orders(orders);
        let r = order_sync(&m, app, "10m");
        r.expect(3, "fail", &format!("{} past max_lag", p.name()));
        assert_eq!(r.metric("orders_behind"), 3.0, "{}", p.name());
        let lag = r.metric("lag_seconds");
        assert!((5400.0..=5600.0).contains(&lag), "{}: lag {lag}", p.name());
        assert!(!r.out["summary"].as_str().unwrap_or("").is_empty());

        // A wider max_lag tolerates the same backlog (config handling is
        // shared by the providers: one is enough).
        if p == Provider::Amazon {
            order_sync(&m, app, "2h").expect(0, "pass", "max_lag 2h");
        }
    });
}

#[test]
fn marketplace_order_sync_follows_every_page() {
    each(&Provider::ALL, |p| {
        let m = Marketplace::start(p);
        m.set_page_size(2);
        let app = app_synced_to(ago(150 * MIN));
        // Five waiting orders on three pages; the oldest is on the last one.
        let mut orders: Vec<Order> = [20, 40, 60, 80]
            .iter()
            .enumerate()
            .map(|(i, min)| Order::updated_ago(&order_id(p, i + 1), *min * MIN))
            .collect();
        orders.push(Order::updated_ago(&order_id(p, 9), 100 * MIN));
        m.set_orders(orders);
        // Amazon's default is one page a read (getOrders' rate): reading
        // every 3 minutes allows 3.
        let mut config = sync_config(app, "10m");
        config.push(("marketplace_interval", "3m".into()));
        let r = run_plugin("order-sync-lag", &m, &config, &[], &[app]);
        r.expect(3, "fail", p.name());
        assert_eq!(r.metric("orders_behind"), 5.0, "{}: {:?}", p.name(), r);
        let lag = r.metric("lag_seconds");
        assert!((6000.0..=6200.0).contains(&lag), "{}: lag {lag}", p.name());

        let pages: Vec<Logged> = m
            .requests(p.orders_path())
            .into_iter()
            .filter(|l| l.status == 200)
            .collect();
        assert_eq!(pages.len(), 3, "{}: {pages:#?}", p.name());
        let follow: Vec<Option<&str>> = pages
            .iter()
            .map(|l| match p {
                Provider::Amazon => l.param("NextToken"),
                Provider::Shopee => l.param("cursor"),
                Provider::Walmart => l.param("soIndex"),
                Provider::Ebay | Provider::Lazada => l.param("offset"),
            })
            .collect();
        match p {
            Provider::Amazon => {
                assert!(follow[0].is_none() && follow[1].is_some() && follow[2].is_some());
                assert_ne!(follow[1], follow[2]);
            }
            Provider::Shopee => assert_eq!(follow, [Some(""), Some("2"), Some("4")]),
            Provider::Walmart => {
                assert_eq!(follow, [None, Some("2"), Some("4")]);
                assert!(pages[1..]
                    .iter()
                    .all(|l| l.param("hasMoreElements") == Some("true")));
            }
            Provider::Ebay => {
                assert!(matches!(follow[0], None | Some("0")), "{follow:?}");
                assert_eq!(follow[1..], [Some("2"), Some("4")]);
            }
            Provider::Lazada => {
                assert_eq!(follow, [Some("0"), Some("2"), Some("4")]);
                assert!(pages
                    .iter()
                    .all(|l| l.param("sort_by") == Some("updated_at")
                        && l.param("update_after") == pages[0].param("update_after")));
            }
        }
    });
}

#[test]
fn marketplace_order_sync_reads_at_most_max_pages() {
    let m = Marketplace::start(Provider::Amazon);
    m.set_page_size(2);
    let app = app_synced_to(ago(150 * MIN));
    m.set_orders(
        (1..=7)
            .map(|i| Order::updated_ago(&order_id(Provider::Amazon, i), i as u32 * 10 * MIN))
            .collect(),
    );
    let mut config = sync_config(app, "10m");
    config.push(("max_pages", "2".into()));
    let r = run_plugin("order-sync-lag", &m, &config, &[], &[app]);
    assert_ne!(r.status(), "pass", "a backlog is never a pass: {r:?}");
    let listed = m.requests(Provider::Amazon.orders_path()).len();
    assert!(listed <= 2, "{listed} listing requests with max_pages = 2");
}

#[test]
fn marketplace_order_sync_refreshes_an_expired_token() {
    each(
        &[Provider::Amazon, Provider::Walmart, Provider::Ebay],
        |p| {
            let (m, app) = in_sync(p, 5 * MIN);
            // The first token is dead on the server although expires_in says not.
            m.issue_expired_tokens(1);
            let r = order_sync(&m, app, "10m");
            r.expect(0, "pass", p.name());
            let token_path = p.token_path().unwrap();
            let grants = m.requests(token_path);
            assert_eq!(grants.len(), 2, "{}: one refresh", p.name());
            for g in &grants {
                assert_eq!(g.request.method, "POST");
                match p {
                    Provider::Amazon => {
                        assert_eq!(g.form("grant_type").as_deref(), Some("refresh_token"))
                    }
                    Provider::Walmart => {
                        assert_eq!(g.form("grant_type").as_deref(), Some("client_credentials"))
                    }
                    _ => assert!(g
                        .header("authorization")
                        .is_some_and(|a| a.starts_with("Basic "))),
                }
            }
            let refused = m
                .requests(p.orders_path())
                .iter()
                .filter(|l| l.status == 401 || l.status == 403)
                .count();
            assert_eq!(refused, 1, "{}: {:?}", p.name(), m.errors());
        },
    );
}

#[test]
fn marketplace_order_sync_does_not_retry_a_429_at_once_and_waits_for_its_slot() {
    each(&Provider::ALL, |p| {
        let (m, app) = in_sync(p, 5 * MIN);
        m.fail_next(
            p.orders_path(),
            Failure::RateLimited {
                retry_after: Some(120),
            },
        );
        let kv = tempfile::tempdir().unwrap();
        let kv_file = kv.path().join("kv.json");
        let kv_arg = ["--kv", kv_file.to_str().unwrap()];
        // A pace shorter than the ban (Lazada's default is 5 minutes): the
        // ban is what keeps the next run away.
        let mut config = sync_config(app, "10m");
        config.push(("marketplace_interval", "1m".into()));
        let secrets = m.secrets();
        let r = run_plugin_with("order-sync-lag", &m, &config, &secrets, &[app], &kv_arg);
        r.expect(4, "inconclusive", p.name());
        assert_eq!(
            r.retries(),
            0,
            "{}: no quick retry spends the quota: {r:?}",
            p.name()
        );
        // Lazada throttles with HTTP 200 and `ApiCallLimit`, naming the ban.
        let (said, wait) = match p {
            Provider::Lazada => ("ApiCallLimit", "throttled (ApiCallLimit, a ban of 120 s)"),
            _ => ("HTTP 429", "throttled (HTTP 429, Retry-After: 120)"),
        };
        assert!(r.out["summary"].as_str().unwrap().contains(said), "{r:?}");
        // The next run keeps away from the marketplace until Retry-After.
        let r = run_plugin_with("order-sync-lag", &m, &config, &secrets, &[app], &kv_arg);
        r.expect(4, "inconclusive", p.name());
        assert!(
            r.out["summary"].as_str().unwrap().contains(wait),
            "{}: {r:?}",
            p.name()
        );
        let statuses: Vec<u16> = m
            .requests(p.orders_path())
            .iter()
            .map(|l| l.status)
            .collect();
        let throttled = if p == Provider::Lazada { 200 } else { 429 };
        assert_eq!(statuses, [throttled], "{}", p.name());
    });
}

#[test]
fn marketplace_order_sync_waits_for_walmarts_bucket_to_refill() {
    let (m, app) = in_sync(Provider::Walmart, 5 * MIN);
    order_sync(&m, app, "10m").expect(0, "pass", "walmart");
    m.drain_walmart_quota(Duration::from_secs(90));
    let dir = tempfile::tempdir().unwrap();
    let kv_file = dir.path().join("kv.json");
    let kv = ["--kv", kv_file.to_str().unwrap()];
    let mut config = sync_config(app, "10m");
    config.push(("marketplace_interval", "1s".into()));
    let run = || run_plugin_with("order-sync-lag", &m, &config, &m.secrets(), &[app], &kv);
    let r = run();
    r.expect(4, "inconclusive", "walmart throttled");
    assert_eq!(r.retries(), 0, "{r:?}");
    // The next run keeps away until the bucket refills, though the
    // check's own pace (1s) would allow a call.
    let r = run();
    r.expect(4, "inconclusive", "walmart still throttled");
    let summary = r.out["summary"].as_str().unwrap();
    assert!(
        summary.contains("throttled (HTTP 429, x-next-replenishment-time: "),
        "{summary}"
    );
    let statuses: Vec<u16> = m
        .requests(Provider::Walmart.orders_path())
        .iter()
        .map(|l| l.status)
        .collect();
    assert_eq!(statuses, [200, 429]);
    assert!(m
        .errors()
        .contains(&"REQUEST_THRESHOLD_VIOLATED.GMP_GATEWAY_API".to_string()));
}

#[test]
fn marketplace_order_sync_is_inconclusive_when_shopee_refuses_the_signature() {
    let m = Marketplace::start(Provider::Shopee);
    m.set_orders(scrambled_orders("2405ZZ", 5 * MIN));
    let app = app_synced_to(ago(60 * MIN));
    let r = run_plugin(
        "order-sync-lag",
        &m,
        &sync_config(app, "10m"),
        &[("partner_key", "0000-not-the-partner-key")],
        &[app],
    );
    r.expect(4, "inconclusive", "wrong partner_key");
    assert!(
        m.errors().contains(&"error_sign".to_string()),
        "{:?}",
        m.errors()
    );
    assert!(
        m.log().iter().all(|l| l.status != 200),
        "nothing was answered with data"
    );
}

/// The Shopee fake's partner key and `extra` secrets, nothing else.
fn shopee_secrets(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = vec![("partner_key".to_string(), SHOPEE_PARTNER_KEY.to_string())];
    all.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    all
}

/// The `shopee-token` state in a `--kv` file.
fn shopee_state(kv: &Path) -> Value {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(kv).unwrap()).unwrap();
    let state = file["shopee-token"].as_str().expect("shopee-token stored");
    serde_json::from_str(state).unwrap()
}

/// The refresh token each refresh request sent, in order.
fn refreshes_sent(m: &Marketplace) -> Vec<String> {
    m.requests(SHOPEE_REFRESH)
        .iter()
        .map(|l| {
            let body: Value = serde_json::from_slice(&l.request.body).unwrap();
            body["refresh_token"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn marketplace_shopee_refresh_token_rotates_through_kv() {
    let (m, app) = in_sync(Provider::Shopee, 5 * MIN);
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.json");
    // Every run reads the marketplace (the fake has no quota): each one
    // shows what happens to the tokens.
    let mut config = sync_config(app, "10m");
    config.push(("marketplace_interval", "1ms".into()));
    let sync = |secrets: &[(String, String)], kv: &Path| {
        let kv = ["--kv", kv.to_str().unwrap()];
        run_plugin_with("order-sync-lag", &m, &config, secrets, &[app], &kv)
    };
    let only_refresh = shopee_secrets(&[("refresh_token", SHOPEE_REFRESH_TOKEN)]);

    // Only a refresh token: one refresh, then the orders with the new token.
    sync(&only_refresh, &kv).expect(0, "pass", "first run");
    assert_eq!(refreshes_sent(&m), [SHOPEE_REFRESH_TOKEN]);
    let rotated = m.shopee_refresh_token();
    assert_ne!(rotated, SHOPEE_REFRESH_TOKEN);
    let state = shopee_state(&kv);
    assert_eq!(
        state["refresh_token"], rotated,
        "kv holds the live refresh token"
    );
    let token = state["access_token"].as_str().unwrap().to_string();
    let listed = m.requests(Provider::Shopee.orders_path());
    assert!(!listed.is_empty());
    assert!(listed
        .iter()
        .all(|l| l.param("access_token") == Some(token.as_str())));

    // The next run reuses the stored token.
    sync(&only_refresh, &kv).expect(0, "pass", "second run");
    assert_eq!(m.requests(SHOPEE_REFRESH).len(), 1, "no refresh");

    // Expired at Shopee: one refused call, one refresh with the rotated
    // token from kv (not the configured one), then a pass.
    m.expire_tokens();
    sync(&only_refresh, &kv).expect(0, "pass", "after expiry");
    assert_eq!(refreshes_sent(&m), [SHOPEE_REFRESH_TOKEN, rotated.as_str()]);
    assert_eq!(m.errors(), ["error_auth"]);
    assert_eq!(shopee_state(&kv)["refresh_token"], m.shopee_refresh_token());

    // Invalidated early, in either of Shopee's spellings: refreshed too.
    for code in ["invalid_access_token", "invalid_acceess_token"] {
        let before = refreshes_sent(&m).len();
        m.expire_shopee_tokens_with(code);
        sync(&only_refresh, &kv).expect(0, "pass", code);
        assert_eq!(refreshes_sent(&m).len(), before + 1, "{code}");
        assert_eq!(m.errors().last().map(String::as_str), Some(code));
    }

    // A store without that state (a renamed entry, say) starts from the
    // configured token, rotated away since: an error naming the cause.
    let r = sync(&only_refresh, &dir.path().join("empty.json"));
    r.expect(4, "inconclusive", "refused refresh token");
    let summary = r.out["summary"].as_str().unwrap();
    assert!(
        summary.contains("shopee refresh token refused (error_auth: Invalid refresh_token"),
        "{summary}"
    );
    assert!(
        summary.ends_with("set a new `refresh_token` secret from the seller's re-authorisation"),
        "{summary}"
    );

    // The seller authorised again: the new secret seeds the state again,
    // although kv holds a live token of the old one.
    let fresh = m.reauthorize_shopee();
    sync(&shopee_secrets(&[("refresh_token", &fresh)]), &kv).expect(0, "pass", "new secret");
    assert_eq!(refreshes_sent(&m).last(), Some(&fresh));
    assert_eq!(shopee_state(&kv)["refresh_token"], m.shopee_refresh_token());
}

/// A signed Lazada call to `api_path` (under `/rest`) with `params` and
/// the common parameters, signed with `secret`; `token` is the
/// `access_token` (or, for the refresh, the `refresh_token`) pair.
fn lazada_call(
    m: &Marketplace,
    api_path: &str,
    params: &[(&str, &str)],
    token: (&str, &str),
    secret: &str,
    timestamp_ms: i64,
) -> Answer {
    let ts = timestamp_ms.to_string();
    let mut all: Vec<(String, String)> = [
        ("app_key", LAZADA_APP_KEY),
        ("timestamp", ts.as_str()),
        ("sign_method", "sha256"),
        token,
    ]
    .iter()
    .chain(params)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sign = lazada_sign(secret, api_path, &all);
    all.push(("sign".to_string(), sign));
    let query: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let target = format!("/rest{api_path}?{}", query.join("&"));
    call(m.port, "GET", &target, &[], "")
}

#[test]
fn marketplace_fake_lazada_checks_signatures_parameters_and_rotates_refresh_tokens() {
    let m = Marketplace::start(Provider::Lazada);
    let t = ago(30 * MIN) / 1000 * 1000;
    m.set_orders(vec![
        Order::at("491253082180001", t),
        Order::at("491253082180002", t + 60_000).status("unpaid"),
    ]);
    let access = ("access_token", LAZADA_ACCESS_TOKEN);
    // `2024-05-01 17:58:12 +0800` as GetOrders asks: `2024-05-01T17:58:12+08:00`.
    let local = lazada_time(t - 1000);
    let after = format!("{}T{}+08:00", &local[..10], &local[11..19]);
    let orders = |params: &[(&str, &str)], secret: &str, ts: i64| {
        lazada_call(&m, "/orders/get", params, access, secret, ts)
    };
    let code = |a: &Answer| {
        assert_eq!(
            a.status, 200,
            "Lazada answers errors with HTTP 200: {}",
            a.body
        );
        a.value()["code"].as_str().unwrap_or_default().to_string()
    };
    let now = now_ms();
    let ok = orders(
        &[
            ("update_after", &after),
            ("sort_by", "updated_at"),
            ("sort_direction", "ASC"),
        ],
        LAZADA_APP_SECRET,
        now,
    );
    assert_eq!(code(&ok), "0", "{}", ok.body);
    let data = &ok.value()["data"];
    assert_eq!(data["countTotal"], "2");
    assert_eq!(data["orders"][0]["order_id"], 491_253_082_180_001u64);
    assert_eq!(data["orders"][0]["updated_at"], lazada_time(t));
    assert_eq!(data["orders"][1]["statuses"], json!(["unpaid"]));
    assert!(lazada_time(t).ends_with(" +0800"));
    // Every refusal, each with its documented code.
    for (params, secret, ts, expected) in [
        (
            vec![("update_after", after.as_str())],
            "wrong-secret",
            now,
            "IncompleteSignature",
        ),
        (
            vec![("update_after", after.as_str())],
            LAZADA_APP_SECRET,
            now - 7_300_000,
            "InvalidTimestamp",
        ),
        (vec![], LAZADA_APP_SECRET, now, "MissingParameter"),
        (
            vec![("update_after", "2024-05-01T09:00:00Z")],
            LAZADA_APP_SECRET,
            now,
            "17",
        ),
        (
            vec![("update_after", after.as_str()), ("limit", "101")],
            LAZADA_APP_SECRET,
            now,
            "19",
        ),
        (
            vec![("update_after", after.as_str()), ("offset", "5001")],
            LAZADA_APP_SECRET,
            now,
            "14",
        ),
        (
            vec![("update_after", after.as_str()), ("sort_by", "id")],
            LAZADA_APP_SECRET,
            now,
            "75",
        ),
    ] {
        let a = orders(&params, secret, ts);
        assert_eq!(code(&a), expected, "{params:?}: {}", a.body);
    }
    let a = lazada_call(
        &m,
        "/orders/get",
        &[("update_after", &after)],
        ("access_token", "nope"),
        LAZADA_APP_SECRET,
        now,
    );
    assert_eq!(code(&a), "IllegalAccessToken");

    // The refresh: signed the same way, rotating the refresh token.
    let refresh = |token: &str| {
        lazada_call(
            &m,
            "/auth/token/refresh",
            &[],
            ("refresh_token", token),
            LAZADA_APP_SECRET,
            now_ms(),
        )
    };
    let a = refresh(LAZADA_REFRESH_TOKEN);
    assert_eq!(code(&a), "0", "{}", a.body);
    let fresh = a.value();
    let new_access = fresh["access_token"].as_str().unwrap().to_string();
    assert_eq!(fresh["refresh_token"], m.shopee_refresh_token());
    assert_eq!(code(&refresh(LAZADA_REFRESH_TOKEN)), "IllegalRefreshToken");
    let a = lazada_call(
        &m,
        "/orders/get",
        &[("update_after", &after)],
        ("access_token", &new_access),
        LAZADA_APP_SECRET,
        now_ms(),
    );
    assert_eq!(code(&a), "0", "{}", a.body);
}

/// The `lazada-token` state in a `--kv` file.
fn lazada_state(kv: &Path) -> Value {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(kv).unwrap()).unwrap();
    serde_json::from_str(file["lazada-token"].as_str().expect("lazada-token stored")).unwrap()
}

#[test]
fn marketplace_lazada_refreshes_a_revoked_token_and_keeps_the_rotated_refresh_token() {
    let (m, app) = in_sync(Provider::Lazada, 5 * MIN);
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.json");
    let mut config = sync_config(app, "10m");
    config.push(("marketplace_interval", "1ms".into()));
    let secrets: Vec<(String, String)> = [
        ("app_key", LAZADA_APP_KEY),
        ("app_secret", LAZADA_APP_SECRET),
        ("access_token", LAZADA_ACCESS_TOKEN),
        ("refresh_token", LAZADA_REFRESH_TOKEN),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sync = |kv: &Path| {
        let kv = ["--kv", kv.to_str().unwrap()];
        run_plugin_with("order-sync-lag", &m, &config, &secrets, &[app], &kv)
    };
    let refreshes = || m.requests(Provider::Lazada.token_path().unwrap()).len();
    // The configured access token first: no refresh.
    sync(&kv).expect(0, "pass", "first run");
    assert_eq!(refreshes(), 0);
    // Revoked early: one refused call, one refresh, the call again.
    m.expire_tokens();
    sync(&kv).expect(0, "pass", "after revocation");
    assert_eq!(refreshes(), 1);
    assert_eq!(m.errors(), ["IllegalAccessToken"]);
    let rotated = m.shopee_refresh_token();
    assert_ne!(rotated, LAZADA_REFRESH_TOKEN);
    assert_eq!(
        lazada_state(&kv)["refresh_token"],
        rotated,
        "kv holds the live refresh token"
    );
    // Again: refreshed with the rotated token from kv, not the configured one.
    m.expire_tokens();
    sync(&kv).expect(0, "pass", "second revocation");
    assert_eq!(refreshes(), 2);
    let sent = m.requests("/rest/auth/token/refresh")[1].form("refresh_token");
    assert_eq!(sent.as_deref(), Some(rotated.as_str()));
    // A store without the state starts from the configured refresh token,
    // rotated away since: inconclusive, saying what to do.
    m.expire_tokens();
    let r = sync(&dir.path().join("empty.json"));
    r.expect(4, "inconclusive", "refused refresh token");
    let summary = r.out["summary"].as_str().unwrap();
    assert!(
        summary.contains("lazada refresh token refused (IllegalRefreshToken"),
        "{summary}"
    );
}

#[test]
fn marketplace_shopee_access_token_is_tried_before_a_refresh() {
    let p = Provider::Shopee;
    let m = Marketplace::start(p);
    let stock = catalogue(p);
    m.set_stock(stock.clone());
    let app = inventory_app(&stock, p);
    let dir = tempfile::tempdir().unwrap();
    // Every run reads the marketplace (the fake has no quota).
    let config = [
        (
            "app_inventory_url",
            format!("http://127.0.0.1:{app}/inventory"),
        ),
        ("marketplace_interval", "1ms".to_string()),
    ];
    let check = |secrets: &[(String, String)], kv: &Path| {
        let kv = ["--kv", kv.to_str().unwrap()];
        run_plugin_with("inventory-drift", &m, &config, secrets, &[app], &kv)
    };

    // Only an access token: used as it is, nothing stored for it.
    let kv = dir.path().join("access-only.json");
    check(
        &shopee_secrets(&[("access_token", SHOPEE_ACCESS_TOKEN)]),
        &kv,
    )
    .expect(0, "pass", "access token only");
    let file = std::fs::read_to_string(&kv).unwrap();
    assert!(!file.contains("shopee-token"), "{file}");

    // Both: the access token first, no refresh while Shopee accepts it.
    let kv = dir.path().join("both.json");
    let both = shopee_secrets(&[
        ("access_token", SHOPEE_ACCESS_TOKEN),
        ("refresh_token", SHOPEE_REFRESH_TOKEN),
    ]);
    check(&both, &kv).expect(0, "pass", "configured access token");
    assert!(m.requests(SHOPEE_REFRESH).is_empty());
    assert!(m
        .log()
        .iter()
        .all(|l| l.param("access_token") == Some(SHOPEE_ACCESS_TOKEN)));

    // Expired: refused once, refreshed with the configured refresh token.
    m.expire_tokens();
    check(&both, &kv).expect(0, "pass", "refreshed");
    assert_eq!(refreshes_sent(&m), [SHOPEE_REFRESH_TOKEN]);
    assert_eq!(m.errors(), ["error_auth"]);
    assert_eq!(shopee_state(&kv)["refresh_token"], m.shopee_refresh_token());

    // With only the access token, an expired one stays an error.
    let kv = dir.path().join("access-only.json");
    check(
        &shopee_secrets(&[("access_token", SHOPEE_ACCESS_TOKEN)]),
        &kv,
    )
    .expect(4, "inconclusive", "expired access token, no refresh token");
    assert_eq!(m.requests(SHOPEE_REFRESH).len(), 1);
}

#[test]
fn marketplace_order_sync_beyond_shopees_15_day_window_still_fails() {
    // A sync stuck for 20 days: Shopee lists at most 15 days per call.
    let m = Marketplace::start(Provider::Shopee);
    m.set_orders(vec![
        Order::updated_ago("240401OLD0001", 19 * 24 * 60 * MIN),
        Order::updated_ago("240520NEW0001", 60 * MIN),
    ]);
    let app = app_synced_to(ago(20 * 24 * 60 * MIN));
    let r = order_sync(&m, app, "10m");
    r.expect(3, "fail", "stuck 20 days");
    assert!(r.metric("orders_behind") >= 1.0);
    assert!(
        !m.errors().contains(&"error_param".to_string()),
        "every listing stayed within the documented limits: {:?}",
        m.errors()
    );
}

#[test]
fn marketplace_order_sync_is_inconclusive_on_the_marketplaces_trouble_and_errors_on_the_apps() {
    each(&Provider::ALL, |p| {
        let m = Marketplace::start(p);
        m.set_orders(scrambled_orders(&order_id(p, 0), 5 * MIN));
        let app = app_synced_to(ago(60 * MIN));

        m.fail_next(p.orders_path(), Failure::Malformed);
        order_sync(&m, app, "10m").expect(
            4,
            "inconclusive",
            &format!("{}: malformed listing", p.name()),
        );

        m.fail_next(p.orders_path(), Failure::Status(500));
        order_sync(&m, app, "10m").expect(4, "inconclusive", &format!("{}: 500", p.name()));

        let wrong: &[(&str, &str)] = match p {
            Provider::Amazon | Provider::Walmart | Provider::Ebay => &[("client_secret", "wrong")],
            Provider::Shopee => &[("access_token", "wrong")],
            Provider::Lazada => &[("app_secret", "wrong")],
        };
        run_plugin(
            "order-sync-lag",
            &m,
            &sync_config(app, "10m"),
            wrong,
            &[app],
        )
        .expect(
            4,
            "inconclusive",
            &format!("{}: wrong credentials", p.name()),
        );
    });
    // The app's side: broken JSON, a time that is not RFC 3339, a 500.
    let m = Marketplace::start(Provider::Amazon);
    m.set_orders(scrambled_orders("114-0000000", 5 * MIN));
    for (status, body) in [
        (200, r#"{"last_order_update": "2024-05-01T1"#),
        (200, r#"{"last_order_update": "yesterday"}"#),
        (200, r#"{"orders": 3}"#),
        (500, r#"{"error": "down"}"#),
    ] {
        let app = app_answering(status, body);
        order_sync(&m, app, "10m").expect(1, "error", &format!("app answering {status} {body}"));
    }
}

// ------------------------------------------------------------ inventory

fn inventory_app(stock: &[Stock], provider: Provider) -> u16 {
    app_answering(200, &inventory_json(stock, provider))
}

/// The app's inventory export of `stock`, as `provider`'s entries need it.
fn inventory_json(stock: &[Stock], provider: Provider) -> String {
    let list: Vec<Value> = stock
        .iter()
        .map(|s| {
            let mut v = json!({"sku": s.sku, "quantity": s.quantity});
            if provider == Provider::Shopee {
                v["item_id"] = json!(s.item_id);
                if let Some(m) = s.model_id {
                    v["model_id"] = json!(m);
                }
            }
            v
        })
        .collect();
    Value::Array(list).to_string()
}

fn inventory(m: &Marketplace, app: u16, extra: &[(&str, String)]) -> Run {
    let mut config = vec![(
        "app_inventory_url",
        format!("http://127.0.0.1:{app}/inventory"),
    )];
    config.extend(extra.iter().cloned());
    run_plugin("inventory-drift", m, &config, &[], &[app])
}

/// Ten SKUs; on Shopee, three items with variations and four without.
fn catalogue(provider: Provider) -> Vec<Stock> {
    (0..10)
        .map(|i| {
            let s = Stock::new(&format!("SKU-{i:03}"), 10 + i).reserved(i % 3);
            match provider {
                Provider::Shopee if i < 6 => s.item(7000 + i as u64 / 2, Some(9000 + i as u64)),
                Provider::Shopee => s.item(8000 + i as u64, None),
                _ => s,
            }
        })
        .collect()
}

#[test]
fn marketplace_inventory_drift_reads_the_marketplace_at_most_every_interval() {
    each(&[Provider::Amazon, Provider::Shopee], |p| {
        let m = Marketplace::start(p);
        let stock = catalogue(p);
        m.set_stock(stock.clone());
        let app = inventory_app(&stock, p);
        let dir = tempfile::tempdir().unwrap();
        let kv = dir.path().join("kv.json");
        let kv = ["--kv", kv.to_str().unwrap()];
        let config = [
            (
                "app_inventory_url",
                format!("http://127.0.0.1:{app}/inventory"),
            ),
            ("marketplace_interval", "10m".to_string()),
        ];
        let run = || run_plugin_with("inventory-drift", &m, &config, &m.secrets(), &[app], &kv);
        run().expect(0, "pass", p.name());
        let calls = m.log().len();
        assert!(
            calls > 0,
            "{}: the first run reads the marketplace",
            p.name()
        );
        // The next run judges the app against the kept answer, no call.
        let r = run();
        r.expect(0, "pass", p.name());
        assert_eq!(m.log().len(), calls, "{}: no marketplace call", p.name());
        assert!(
            r.out["summary"]
                .as_str()
                .unwrap()
                .contains("(marketplace read "),
            "{}: {r:?}",
            p.name()
        );
        assert_eq!(r.metric("skus_checked"), 10.0, "{}", p.name());
    });
}

#[test]
fn marketplace_inventory_drift_pass_fail_and_error() {
    each(&[Provider::Amazon, Provider::Shopee], |p| {
        let m = Marketplace::start(p);
        let stock = catalogue(p);
        m.set_stock(stock.clone());
        m.set_page_size(4);

        // Same quantities (reserved units are not sellable): pass.
        let app = inventory_app(&stock, p);
        let r = inventory(&m, app, &[]);
        r.expect(0, "pass", p.name());
        assert_eq!(r.metric("skus_checked"), 10.0, "{}", p.name());
        assert_eq!(r.metric("skus_drifted"), 0.0, "{}", p.name());
        assert_eq!(r.metric("drifted_ratio"), 0.0, "{}", p.name());

        // Two of ten off by 3: 20 % > 5 %.
        let mut off = stock.clone();
        off[1].quantity += 3;
        off[7].quantity -= 3;
        let app = inventory_app(&off, p);
        let r = inventory(&m, app, &[]);
        r.expect(3, "fail", p.name());
        assert_eq!(r.metric("skus_drifted"), 2.0, "{}", p.name());
        assert!((r.metric("drifted_ratio") - 0.2).abs() < 1e-9, "{r:?}");
        // ...within a tolerance of 3 units, or a ratio of 25 %: pass (the
        // comparison is shared by the providers: one is enough).
        if p == Provider::Amazon {
            inventory(&m, app, &[("tolerance", "3".into())]).expect(0, "pass", "tolerance 3");
            inventory(&m, app, &[("max_drifted_ratio", "0.25".into())]).expect(
                0,
                "pass",
                "ratio 0.25",
            );
        }

        // Errors, never a pass: broken JSON from either side.
        let path = match p {
            Provider::Amazon => "/fba/inventory/v1/summaries",
            _ => "/api/v2/product/get_item_base_info",
        };
        m.fail_next(path, Failure::Malformed);
        inventory(&m, app, &[]).expect(4, "inconclusive", &format!("{}: malformed", p.name()));
        let broken = app_answering(200, r#"[{"sku": "SKU-000", "quantity": "#);
        inventory(&m, broken, &[]).expect(1, "error", &format!("{}: app JSON", p.name()));
    });
}

#[test]
fn marketplace_inventory_drift_samples_at_most_sample_size() {
    let m = Marketplace::start(Provider::Amazon);
    let stock: Vec<Stock> = (0..60)
        .map(|i| Stock::new(&format!("S-{i:02}"), i))
        .collect();
    m.set_stock(stock.clone());
    let app = inventory_app(&stock, Provider::Amazon);
    let r = inventory(&m, app, &[]);
    r.expect(0, "pass", "60 SKUs");
    assert_eq!(r.metric("skus_checked"), 50.0);
    for l in m.requests("/fba/inventory/v1/summaries") {
        let asked = l.param("sellerSkus").map_or(0, |s| s.split(',').count());
        assert!(asked <= 50, "sellerSkus holds at most 50: {asked}");
    }
    let r = inventory(&m, app, &[("sample_size", "5".into())]);
    assert_eq!(r.metric("skus_checked"), 5.0, "{r:?}");
}

// ------------------------------------------------------------ end to end

/// The app of the shop: its sync status follows the release `current`
/// points at (`sync` in release.json, read on every request): "ok" is in
/// sync up to `synced`, anything else is stuck at `stuck`.
fn sync_app(root: &Path, synced: i64, stuck: i64) -> u16 {
    let release = root.join("current/release.json");
    http_server(move |_| {
        let text = std::fs::read_to_string(&release).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let last = if v["sync"] == "ok" { synced } else { stuck };
        HttpReply::json(
            200,
            &json!({"last_order_update": rfc3339(last)}).to_string(),
        )
    })
}

#[test]
fn marketplace_order_sync_lag_rolls_back_a_release_that_stops_syncing() {
    let m = Marketplace::start(Provider::Amazon);
    let orders = scrambled_orders("114-7000000", 5 * MIN);
    let synced = orders[1].updated_ms;
    m.set_orders(orders);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let [good, bad] = [("1.0.0", "ok"), ("1.1.0", "stuck")].map(|(v, sync)| {
        let release = json!({"version": v, "sync": sync}).to_string();
        release_source(dir.path(), v, &[("release.json", release)])
    });
    let app = sync_app(&root, synced, ago(61 * MIN));
    let config = check_config(
        "1500ms",
        "order-sync",
        "order-sync-lag",
        &format!(
            r#"interval = "300ms"
fail_after = 2
timeout = "5s"
allow_hosts = ["{market}", "127.0.0.1:{app}"]
config = {{ provider = "amazon", endpoint = "{url}", token_url = "{url}/auth/o2/token", marketplace_ids = "{AMAZON_MARKETPLACE}", app_status_url = "http://127.0.0.1:{app}/sync/status", max_lag = "10m" }}
secrets = {{ client_id = "env:SHOP_LWA_CLIENT_ID", client_secret = "env:SHOP_LWA_CLIENT_SECRET", refresh_token = "env:SHOP_LWA_REFRESH_TOKEN" }}
"#,
            market = m.host(),
            url = m.url(),
        ),
    );
    let agent = Agent::start_in_with_env(
        dir,
        &config,
        &[
            ("SHOP_LWA_CLIENT_ID", AMAZON_CLIENT_ID),
            ("SHOP_LWA_CLIENT_SECRET", AMAZON_CLIENT_SECRET),
            ("SHOP_LWA_REFRESH_TOKEN", AMAZON_REFRESH_TOKEN),
        ],
    );
    let history = deploy_good_then_bad(&agent, &good, &bad, |_| {});
    assert_rolled_back_by(&history, "order-sync");
    // The secrets reached the plugin: tokens were issued with them.
    assert!(m.requests("/auth/o2/token").iter().any(|l| l.status == 200));
    assert_eq!(agent.json(&["status", "shop"])["active"], "1.0.0");
}

/// The `allow_hosts`, `config` and `secrets` lines of an agent config entry
/// against `m` (plus `config` and the app `ports`), secrets as `env:`
/// references named with `prefix`; and the environment they need.
fn agent_entry(
    m: &Marketplace,
    prefix: &str,
    config: &[(&str, String)],
    secrets: &[(String, String)],
    ports: &[u16],
) -> (String, Vec<(String, String)>) {
    let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let values: Vec<String> = overridden(m.config(), &config)
        .iter()
        .map(|(k, v)| format!("{k} = {}", json!(v)))
        .collect();
    let var = |k: &str| format!("SHOP_{prefix}{}", k.to_uppercase());
    let refs: Vec<String> = secrets
        .iter()
        .map(|(k, _)| format!("{k} = \"env:{}\"", var(k)))
        .collect();
    let env = secrets.iter().map(|(k, v)| (var(k), v.clone())).collect();
    let mut hosts = vec![format!("{:?}", m.host())];
    hosts.extend(ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")));
    let lines = format!(
        "allow_hosts = [{}]\nconfig = {{ {} }}\nsecrets = {{ {} }}\n",
        hosts.join(", "),
        values.join(", "),
        refs.join(", ")
    );
    (lines, env)
}

#[test]
fn marketplace_inventory_drift_rolls_back_a_release_that_miscounts_stock() {
    let p = Provider::Shopee;
    let m = Marketplace::start(p);
    let stock = catalogue(p);
    m.set_stock(stock.clone());
    // 1.1.0 double-counts every other SKU: half the sample drifts.
    let mut miscounted = stock.clone();
    for s in miscounted.iter_mut().step_by(2) {
        s.quantity *= 2;
    }
    let (good_json, bad_json) = (inventory_json(&stock, p), inventory_json(&miscounted, p));
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("shop/current/release.json");
    // The app's export follows the release `current` points at.
    let app = http_server(move |_| {
        let text = std::fs::read_to_string(&release).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let body = if v["stock"] == "ok" {
            &good_json
        } else {
            &bad_json
        };
        HttpReply::json(200, body)
    });
    let [good, bad] = [("1.0.0", "ok"), ("1.1.0", "miscounted")].map(|(v, stock)| {
        let release = json!({"version": v, "stock": stock}).to_string();
        release_source(dir.path(), v, &[("release.json", release)])
    });
    let (entry, env) = agent_entry(
        &m,
        "",
        &[
            (
                "app_inventory_url",
                format!("http://127.0.0.1:{app}/inventory"),
            ),
            // Each run reads the marketplace: the bad release's counts are
            // compared at once, not judged by an answer read before it.
            ("marketplace_interval", "1ms".to_string()),
        ],
        &m.secrets(),
        &[app],
    );
    let config = check_config(
        "1500ms",
        "stock",
        "inventory-drift",
        &format!("interval = \"300ms\"\nfail_after = 2\ntimeout = \"5s\"\n{entry}"),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = Agent::start_in_with_env(dir, &config, &env);
    let history = deploy_good_then_bad(&agent, &good, &bad, |_| {});
    let summary = assert_rolled_back_by(&history, "stock");
    assert!(
        summary.contains("SKU-"),
        "the summary names SKUs: {summary}"
    );
    // Every call was signed correctly: the fake refused none.
    assert!(m
        .requests("/api/v2/product/get_item_base_info")
        .iter()
        .all(|l| l.status == 200));
    assert_eq!(agent.json(&["status", "shop"])["active"], "1.0.0");
}

#[test]
fn marketplace_shopee_checks_of_one_shop_share_rotating_tokens_through_kv_scope() {
    let p = Provider::Shopee;
    let (m, sync) = in_sync(p, 5 * MIN);
    let stock = catalogue(p);
    m.set_stock(stock.clone());
    let stock_app = inventory_app(&stock, p);
    // Tokens that live 2 s: the bake sees several refreshes, each rotating
    // the refresh token that both checks depend on.
    m.set_expires_in(2);
    let secrets = shopee_secrets(&[("refresh_token", SHOPEE_REFRESH_TOKEN)]);
    let entry = |name: &str, plugin: &str, config: &[(&str, String)], app: u16| {
        let (lines, env) = agent_entry(&m, "SHOPEE_", config, &secrets, &[app]);
        let text = format!(
            "[[apps.shop.checks]]\nname = \"{name}\"\nplugin = \"{}\"\ninterval = \"250ms\"\n\
             fail_after = 2\ntimeout = \"5s\"\nkv_scope = \"shopee-shop\"\n{lines}\n",
            crate::support::plugin(plugin).display()
        );
        (text, env)
    };
    let (orders, env) = entry("orders", "order-sync-lag", &sync_config(sync, "10m"), sync);
    let inventory_url = format!("http://127.0.0.1:{stock_app}/inventory");
    let (stock_entry, _) = entry(
        "stock",
        "inventory-drift",
        &[
            ("app_inventory_url", inventory_url),
            ("marketplace_interval", "1ms".to_string()),
        ],
        stock_app,
    );
    let config =
        format!("[apps.shop]\nroot = \"{{dir}}/shop\"\nbake = \"5s\"\n\n{orders}{stock_entry}");
    let dir = tempfile::tempdir().unwrap();
    let release = release_source(dir.path(), "1.0.0", &[("release.json", "{}".into())]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = Agent::start_in_with_env(dir, &config, &env);
    let out = agent.deploy(release.to_str().unwrap(), "1.0.0", true);
    assert_eq!(out.code, 0, "both checks pass through the bake: {out:?}");
    let refreshes = m.requests(SHOPEE_REFRESH);
    assert!(refreshes.len() >= 2, "tokens were refreshed: {refreshes:?}");
    assert!(
        refreshes.iter().all(|l| l.status == 200),
        "no refresh token was refused: {refreshes:?}"
    );
}

/// The seller's own app has spent getOrders' burst: through the whole bake
/// every call would get 429 QuotaExceeded. The check must neither roll the
/// release back nor pass it, and must not spend the quota further: one
/// getOrders request for the whole bake, no host retries.
#[test]
fn marketplace_a_throttled_bake_holds_the_app_and_spends_one_request() {
    let m = Marketplace::start(Provider::Amazon);
    let orders = scrambled_orders("114-7100000", 5 * MIN);
    let synced = orders[1].updated_ms;
    m.set_orders(orders);
    m.drain_get_orders_quota();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let release = json!({"version": "1.0.0", "sync": "ok"}).to_string();
    let source = release_source(dir.path(), "1.0.0", &[("release.json", release)]);
    let app = sync_app(&root, synced, synced);
    let (entry, env) = agent_entry(
        &m,
        "",
        &[
            (
                "app_status_url",
                format!("http://127.0.0.1:{app}/sync/status"),
            ),
            ("max_lag", "10m".into()),
        ],
        &m.secrets(),
        &[app],
    );
    let config = format!(
        "[apps.shop]\nroot = \"{{dir}}/shop\"\nbake = \"1s\"\nmax_bake = \"2s\"\n\n\
         [[apps.shop.checks]]\nname = \"order-sync\"\nplugin = \"{}\"\n\
         interval = \"200ms\"\ntimeout = \"5s\"\n{entry}",
        plugin("order-sync-lag").display()
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = Agent::start_in_with_env(dir, &config, &env);
    let out = agent.deploy(source.to_str().unwrap(), "1.0.0", true);
    assert_eq!(out.code, 4, "held: {out:?}\n{}", agent.log());
    let status = agent.json(&["status", "shop"]);
    assert_eq!(status["state"], "held", "{status}");
    let check = &status["checks"]["order-sync"];
    assert_eq!(check["outcome"], "inconclusive", "{status}");
    assert!(check["runs"].as_u64().unwrap() >= 5, "{status}");
    let reason = status["reason"].as_str().unwrap();
    assert!(
        reason.contains("QuotaExceeded") || reason.contains("next marketplace call is allowed"),
        "{reason}"
    );
    let calls = m.requests("/orders/v0/orders");
    assert_eq!(
        calls.len(),
        1,
        "one getOrders request in the whole bake: {calls:?}"
    );
    assert_eq!(calls[0].status, 429);
    let history = agent.json(&["history", "shop", "--limit", "100"]);
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"rolled-back"), "{kinds:?}");
    assert!(!kinds.contains(&"marked-good"), "{kinds:?}");
    assert!(kinds.contains(&"held"), "{kinds:?}");
}

/// The shop's app for the completeness check: `GET /sync/status` answers a
/// position of now (it keeps up), `POST /orders` says which of the asked
/// ids it lacks. A release with `"drops": true` skipped every third order
/// the marketplace has (by id order); the others have them all.
fn orders_app(root: &Path, ids: Vec<String>) -> u16 {
    let release = root.join("current/release.json");
    let mut sorted = ids;
    sorted.sort();
    let dropped: Vec<String> = sorted.iter().step_by(3).cloned().collect();
    http_server(move |req| {
        let text = std::fs::read_to_string(&release).unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match (req.method.as_str(), req.path_only()) {
            ("GET", "/sync/status") => HttpReply::json(
                200,
                &json!({"last_order_update": rfc3339(now_ms() - 1000)}).to_string(),
            ),
            ("POST", "/orders") => {
                let asked: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let missing: Vec<&str> = asked["order_ids"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|id| v["drops"] == true && dropped.iter().any(|d| d == id))
                    .collect();
                HttpReply::json(200, &json!({ "missing": missing }).to_string())
            }
            _ => HttpReply::new(404, ""),
        }
    })
}

fn completeness_agent(m: &Marketplace, app: u16, dir: tempfile::TempDir) -> Agent {
    let (entry, env) = agent_entry(
        m,
        "",
        &[
            (
                "app_status_url",
                format!("http://127.0.0.1:{app}/sync/status"),
            ),
            ("app_orders_url", format!("http://127.0.0.1:{app}/orders")),
            ("max_lag", "10m".into()),
            ("grace", "5m".into()),
            ("completeness_window", "1h".into()),
        ],
        &m.secrets(),
        &[app],
    );
    let config = check_config(
        "1500ms",
        "orders",
        "order-sync-lag",
        &format!("interval = \"300ms\"\nfail_after = 2\ntimeout = \"5s\"\n{entry}"),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Agent::start_in_with_env(dir, &config, &env)
}

/// The seed's first failure: a release that drops orders while its position
/// keeps moving on. Lag alone passes it; the completeness check names the
/// orders it lacks and rolls it back.
#[test]
fn marketplace_a_release_that_drops_every_third_order_is_rolled_back() {
    let m = Marketplace::start(Provider::Amazon);
    let orders: Vec<Order> = (0..9)
        .map(|i| Order::updated_ago(&format!("114-8{i:06}-0000001"), (10 + 5 * i) * MIN))
        .collect();
    let ids: Vec<String> = orders.iter().map(|o| o.id.clone()).collect();
    m.set_orders(orders);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let [good, bad] = [("1.0.0", false), ("1.1.0", true)].map(|(v, drops)| {
        let release = json!({"version": v, "drops": drops}).to_string();
        release_source(dir.path(), v, &[("release.json", release)])
    });
    let app = orders_app(&root, ids.clone());
    let agent = completeness_agent(&m, app, dir);
    let history = deploy_good_then_bad(&agent, &good, &bad, |_| {});
    let summary = assert_rolled_back_by(&history, "orders");
    let mut sorted = ids;
    sorted.sort();
    let dropped: Vec<&str> = sorted.iter().step_by(3).map(String::as_str).collect();
    assert!(
        summary.contains("3 of 9 order(s) updated between")
            && summary.contains("are missing from the app: ")
            && dropped.iter().all(|id| summary.contains(id)),
        "names {dropped:?}: {summary}"
    );
    let kept = sorted.iter().filter(|id| !dropped.contains(&id.as_str()));
    assert!(
        kept.clone().all(|id| !summary.contains(id.as_str())),
        "{summary}"
    );
    // Quota: the marketplace was read once a minute at most, not per run.
    let reads = m.requests("/orders/v0/orders").len();
    assert!(reads <= 2, "{reads} getOrders requests");
}

/// Quiet hours: the only orders are ones the app rightly ignores (not paid
/// yet, fulfilled by Amazon for an app that ships its own). No lag, nothing
/// missing: a release is not failed for them.
#[test]
fn marketplace_quiet_hours_with_only_skipped_orders_pass() {
    let m = Marketplace::start(Provider::Amazon);
    m.set_orders(vec![
        Order::updated_ago("114-9000001-0000001", 40 * MIN).status("Pending"),
        Order::updated_ago("114-9000002-0000001", 30 * MIN).channel("AFN"),
        Order::updated_ago("114-9000003-0000001", 20 * MIN).status("Canceled"),
    ]);
    // An app that syncs nothing at night and has none of them.
    let app = http_server(|req| match (req.method.as_str(), req.path_only()) {
        ("GET", "/sync/status") => HttpReply::json(
            200,
            &json!({"last_order_update": rfc3339(ago(60 * MIN))}).to_string(),
        ),
        ("POST", "/orders") => {
            let asked: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            HttpReply::json(200, &json!({ "missing": asked["order_ids"] }).to_string())
        }
        _ => HttpReply::new(404, ""),
    });
    let mut config = sync_config(app, "10m");
    config.push(("app_orders_url", format!("http://127.0.0.1:{app}/orders")));
    config.push(("fulfillment_channels", "MFN".into()));
    let r = run_plugin("order-sync-lag", &m, &config, &[], &[app]);
    r.expect(0, "pass", "quiet hours");
    assert_eq!(r.metric("orders_behind"), 0.0, "{r:?}");
    assert_eq!(r.metric("orders_missing"), 0.0, "{r:?}");
    assert_eq!(r.metric("orders_checked"), 0.0, "{r:?}");
}

/// Orders API 2026-01-01 searchOrders, the default: every page repeats the
/// whole query with `paginationToken`, the fake refuses a token without it,
/// and the 2026 spellings of statuses and channels are filtered like v0's.
#[test]
fn marketplace_order_sync_reads_orders_api_2026_01_01() {
    let m = Marketplace::start(Provider::Amazon);
    m.set_page_size(2);
    m.set_orders(vec![
        Order::updated_ago("114-2026001-0000001", 50 * MIN),
        Order::updated_ago("114-2026002-0000001", 45 * MIN).status("Pending"),
        Order::updated_ago("114-2026003-0000001", 40 * MIN).channel("AFN"),
        Order::updated_ago("114-2026004-0000001", 35 * MIN).status("Shipped"),
        Order::updated_ago("114-2026005-0000001", 30 * MIN),
    ]);
    let app = app_synced_to(ago(60 * MIN));
    let mut config = sync_config(app, "10m");
    config.extend([
        ("api", "2026-01-01".to_string()),
        ("max_pages", "5".to_string()),
        ("fulfillment_channels", "MFN".to_string()),
    ]);
    let r = run_plugin("order-sync-lag", &m, &config, &[], &[app]);
    r.expect(3, "fail", "2026-01-01");
    assert_eq!(
        r.metric("orders_behind"),
        3.0,
        "PENDING and AMAZON left out: {r:?}"
    );
    let pages = m.requests("/orders/2026-01-01/orders");
    assert_eq!(pages.len(), 3, "{pages:#?}");
    assert!(pages.iter().all(|p| p.status == 200), "{pages:#?}");
    for p in &pages {
        assert_eq!(p.param("marketplaceIds"), Some(AMAZON_MARKETPLACE));
        assert!(
            p.param("lastUpdatedAfter").is_some(),
            "every page repeats the query"
        );
    }
    assert!(pages[0].param("paginationToken").is_none());
    assert!(pages[1].param("paginationToken").is_some());
    assert!(m.requests("/orders/v0/orders").is_empty());

    // The fake holds clients to the model.
    let token = lwa_token(&m);
    let after = encode(&rfc3339(ago(60 * MIN)));
    let base = format!("/orders/2026-01-01/orders?marketplaceIds={AMAZON_MARKETPLACE}");
    let first = amazon_get(
        &m,
        &token,
        &format!("{base}&lastUpdatedAfter={after}&maxResultsPerPage=2"),
    );
    assert_eq!(first.status, 200, "{}", first.body);
    let next = first.value()["pagination"]["nextToken"]
        .as_str()
        .unwrap()
        .to_string();
    for (what, target) in [
        (
            "token alone",
            format!("{base}&paginationToken={}", encode(&next)),
        ),
        (
            "another bound",
            format!(
                "{base}&lastUpdatedAfter={}&paginationToken={}",
                encode(&rfc3339(ago(59 * MIN))),
                encode(&next)
            ),
        ),
        (
            "both bounds",
            format!("{base}&lastUpdatedAfter={after}&createdAfter={after}"),
        ),
        ("no bound", base.clone()),
        (
            "page size",
            format!("{base}&lastUpdatedAfter={after}&maxResultsPerPage=101"),
        ),
    ] {
        let a = amazon_get(&m, &token, &target);
        assert_eq!(a.status, 400, "{what}: {}", a.body);
        assert_eq!(a.value()["errors"][0]["code"], "InvalidInput", "{what}");
    }
    let same = amazon_get(
        &m,
        &token,
        &format!(
            "{base}&lastUpdatedAfter={after}&maxResultsPerPage=1&paginationToken={}",
            encode(&next)
        ),
    );
    assert_eq!(
        same.status, 200,
        "maxResultsPerPage may change: {}",
        same.body
    );
}

/// Walmart searches the last 7 days of orders unless told otherwise: an
/// update to an order placed 10 days ago must still be seen.
#[test]
fn marketplace_walmart_sees_updates_to_orders_older_than_its_default_window() {
    let m = Marketplace::start(Provider::Walmart);
    let mut old = Order::updated_ago("108829000000001", 30 * MIN);
    old.created_ms = ago(10 * 24 * 60 * MIN);
    m.set_orders(vec![old]);
    let app = app_synced_to(ago(60 * MIN));
    let r = order_sync(&m, app, "10m");
    r.expect(3, "fail", "an old order's new update is lag");
    assert_eq!(r.metric("orders_behind"), 1.0, "{r:?}");
    let asked = m.requests(Provider::Walmart.orders_path());
    assert!(asked[0].param("createdStartDate").is_some(), "{asked:?}");
}
