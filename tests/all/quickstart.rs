//! The quickstart's parts without the agent (`make demo` runs the whole
//! story): the SP-API fake `examples/quickstart/sp_api_fake.py` answers as
//! the Orders v0 and 2026-01-01 models say, `order-sync-lag` reads it, and the two releases
//! of the example app either keep up with it (1.0.0) or stand still while
//! `/health` stays 200 (1.1.0).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::marketplace::{assert_valid, form};
use crate::marketplace_fakes::{call, encode, now_ms, parse_time, rfc3339, Answer};
use crate::support::*;

const CLIENT_ID: &str = "amzn1.application-oa2-client.quickstart-test";
const CLIENT_SECRET: &str = "quickstart-test-client-secret";
const REFRESH_TOKEN: &str = "Atzr|quickstart-test-refresh-token";
const MARKETPLACE: &str = "ATVPDKIKX0DER";
const ORDERS: &str = "/orders/v0/orders";

fn quickstart(file: &str) -> PathBuf {
    repo().join("examples/quickstart").join(file)
}

/// A Python process of the example, killed on drop.
struct Py(Child);

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python(script: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .env("SPAPI_CLIENT_ID", CLIENT_ID)
        .env("SPAPI_CLIENT_SECRET", CLIENT_SECRET)
        .env("SPAPI_REFRESH_TOKEN", REFRESH_TOKEN)
        .stdin(Stdio::null());
    cmd
}

/// Starts the fake on a port of its choosing, logging to `log`.
fn start_fake(log: &Path) -> (Py, u16) {
    let mut child = python(&quickstart("sp_api_fake.py"))
        .arg("0")
        .arg("--log")
        .arg(log)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in the fake's first line {line:?}"));
    (Py(child), port)
}

/// `GET path` on 127.0.0.1:port, `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<Answer> {
    TcpStream::connect(("127.0.0.1", port)).ok()?;
    Some(call(port, "GET", path, &[], ""))
}

fn lwa(port: u16, client_secret: &str, refresh_token: &str) -> Answer {
    call(
        port,
        "POST",
        "/auth/o2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", CLIENT_ID),
            ("client_secret", client_secret),
        ]),
    )
}

fn orders(port: u16, token: &str, query: &str) -> Answer {
    call(
        port,
        "GET",
        &format!("{ORDERS}?{query}"),
        &[("x-amz-access-token", token)],
        "",
    )
}

/// The answer has a request id and a body that matches the Orders v0 model
/// for its status.
fn assert_model(what: &str, a: &Answer) -> Value {
    assert!(
        a.header_value("x-amzn-RequestId")
            .is_some_and(|v| !v.is_empty()),
        "{what}: no x-amzn-RequestId: {:?}",
        a.headers
    );
    assert_valid("ordersV0.json", ORDERS, what, a);
    a.value()
}

fn assert_error(what: &str, a: &Answer, status: u16, code: &str) {
    let v = assert_model(what, a);
    assert_eq!(a.status, status, "{what}: {}", a.body);
    assert_eq!(v["errors"][0]["code"], code, "{what}: {}", a.body);
}

/// Every order of a page walk, following NextToken; also the pages' count.
fn walk(port: u16, token: &str, query: &str) -> (Vec<Value>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut a = orders(port, token, query);
    loop {
        pages += 1;
        let v = assert_model(&format!("page {pages} of {query}"), &a);
        assert_eq!(a.status, 200, "{}", a.body);
        all.extend(v["payload"]["Orders"].as_array().unwrap().iter().cloned());
        match v["payload"]["NextToken"].as_str() {
            Some(next) => a = orders(port, token, &format!("{query}&NextToken={}", encode(next))),
            None => return (all, pages),
        }
    }
}

fn time_of(order: &Value, field: &str) -> i64 {
    parse_time(order[field].as_str().unwrap()).unwrap()
}

#[test]
fn quickstart_sp_api_fake_follows_lwa_and_the_orders_v0_model() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sp-api.log");
    let (_fake, port) = start_fake(&log);

    // Login with Amazon.
    let a = lwa(port, "wrong", REFRESH_TOKEN);
    assert_eq!(
        (a.status, a.value()["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let a = lwa(port, CLIENT_SECRET, "Atzr|wrong");
    assert_eq!(
        (a.status, a.value()["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(a.value()["error_description"].is_string());
    let a = call(
        port,
        "POST",
        "/auth/o2/token",
        &[],
        "grant_type=refresh_token",
    );
    assert_eq!(a.status, 400, "not a form: {}", a.body);
    let a = lwa(port, CLIENT_SECRET, REFRESH_TOKEN);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.header_value("x-amzn-RequestId").is_some());
    let v = a.value();
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 3600);
    let token = v["access_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("Atza|"), "{token}");

    // Refusals, each in the model's error shape.
    let after = rfc3339(now_ms() - 10 * 60_000);
    let query = format!(
        "MarketplaceIds={MARKETPLACE}&LastUpdatedAfter={}",
        encode(&after)
    );
    let a = call(port, "GET", &format!("{ORDERS}?{query}"), &[], "");
    assert_error("no token", &a, 403, "Unauthorized");
    assert_eq!(
        a.value()["errors"][0]["message"],
        "Access to requested resource is denied."
    );
    assert_error(
        "unknown token",
        &orders(port, "Atza|nope", &query),
        403,
        "Unauthorized",
    );
    for (what, q) in [
        ("no date", format!("MarketplaceIds={MARKETPLACE}")),
        (
            "no marketplace",
            format!("LastUpdatedAfter={}", encode(&after)),
        ),
        (
            "other marketplace",
            format!(
                "MarketplaceIds=A1F83G8C2ARO7P&LastUpdatedAfter={}",
                encode(&after)
            ),
        ),
        (
            "garbled date",
            format!("MarketplaceIds={MARKETPLACE}&LastUpdatedAfter=yesterday"),
        ),
        (
            "both dates",
            format!("{query}&CreatedAfter={}", encode(&after)),
        ),
        (
            "before too late",
            format!("{query}&LastUpdatedBefore={}", encode(&rfc3339(now_ms()))),
        ),
        ("page size", format!("{query}&MaxResultsPerPage=101")),
        ("unknown NextToken", format!("{query}&NextToken=bm9wZQ")),
        (
            "NextToken without the query",
            format!("MarketplaceIds={MARKETPLACE}&NextToken=bm9wZQ"),
        ),
    ] {
        assert_error(what, &orders(port, &token, &q), 400, "InvalidInput");
    }
    let a = call(
        port,
        "GET",
        "/orders/v0/nothing",
        &[("x-amz-access-token", &token)],
        "",
    );
    assert_error("unknown path", &a, 404, "NotFound");

    // Ten minutes of orders: several pages of at most 100, each order once,
    // oldest update first, none updated before the bound.
    let (all, pages) = walk(port, &token, &query);
    assert!(pages >= 3, "{pages} page(s) for {} orders", all.len());
    assert!(all.len() > 250, "only {} orders in ten minutes", all.len());
    let ids: std::collections::BTreeSet<&str> = all
        .iter()
        .map(|o| o["AmazonOrderId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), all.len(), "an order on two pages");
    let bound = parse_time(&after).unwrap();
    let updates: Vec<i64> = all.iter().map(|o| time_of(o, "LastUpdateDate")).collect();
    assert!(
        updates.windows(2).all(|w| w[0] <= w[1]),
        "not by LastUpdateDate"
    );
    assert!(updates[0] >= bound);
    let statuses: std::collections::BTreeSet<&str> = all
        .iter()
        .map(|o| o["OrderStatus"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains("Shipped") && statuses.contains("Unshipped"),
        "{statuses:?}"
    );
    for o in &all {
        assert!(
            time_of(o, "PurchaseDate") <= time_of(o, "LastUpdateDate"),
            "{o}"
        );
    }

    // LastUpdatedAfter is inclusive; MaxResultsPerPage is honoured.
    let middle = all[all.len() / 2]["LastUpdateDate"]
        .as_str()
        .unwrap()
        .to_string();
    let a = orders(
        port,
        &token,
        &format!(
            "MarketplaceIds={MARKETPLACE}&LastUpdatedAfter={}&MaxResultsPerPage=5",
            encode(&middle)
        ),
    );
    let v = assert_model("inclusive", &a);
    let page = v["payload"]["Orders"].as_array().unwrap();
    assert_eq!(page.len(), 5);
    assert_eq!(page[0]["LastUpdateDate"].as_str(), Some(middle.as_str()));
    assert!(v["payload"]["NextToken"].is_string());
    assert!(v["payload"]["LastUpdatedBefore"].is_string());

    // The clock: a new order within a few seconds, found by CreatedAfter.
    let since = rfc3339(now_ms());
    let fresh = wait_for("a new order", Duration::from_secs(15), || {
        let a = orders(
            port,
            &token,
            &format!(
                "MarketplaceIds={MARKETPLACE}&CreatedAfter={}",
                encode(&since)
            ),
        );
        let v = assert_model("created after", &a);
        assert!(v["payload"]["CreatedBefore"].is_string());
        v["payload"]["Orders"].as_array().unwrap().first().cloned()
    });
    assert_eq!(fresh["OrderStatus"], "Pending", "{fresh}");
    assert!(time_of(&fresh, "PurchaseDate") >= parse_time(&since).unwrap());

    // One log line per request, without secrets.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("GET /orders/v0/orders?") && l.contains("-> 200")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("POST /auth/o2/token -> 401")),
        "{text}"
    );
    for secret in [CLIENT_SECRET, REFRESH_TOKEN, token.as_str()] {
        assert!(!text.contains(secret), "the log shows a secret: {text}");
    }
}

const SEARCH: &str = "/orders/2026-01-01/orders";

/// A searchOrders answer, checked against the Orders API 2026-01-01 model.
fn search(port: u16, token: &str, query: &str) -> (Answer, Value) {
    let a = call(
        port,
        "GET",
        &format!("{SEARCH}?{query}"),
        &[("x-amz-access-token", token)],
        "",
    );
    assert!(a.header_value("x-amzn-RequestId").is_some(), "{query}");
    assert_valid("orders_2026-01-01.json", SEARCH, query, &a);
    let v = a.value();
    (a, v)
}

#[test]
fn quickstart_sp_api_fake_search_orders_follows_the_2026_01_01_model() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, port) = start_fake(&dir.path().join("sp-api.log"));
    let a = lwa(port, CLIENT_SECRET, REFRESH_TOKEN);
    let token = a.value()["access_token"].as_str().unwrap().to_string();
    let after = rfc3339(now_ms() - 30 * 60_000);
    let query = format!(
        "marketplaceIds={MARKETPLACE}&lastUpdatedAfter={}&maxResultsPerPage=5",
        encode(&after)
    );
    // Two pages, the second asked with the whole query and the token.
    let (a, first) = search(port, &token, &query);
    assert_eq!(a.status, 200, "{}", a.body);
    let orders = first["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 5);
    for o in orders {
        assert!(
            parse_time(o["lastUpdatedTime"].as_str().unwrap()).unwrap()
                >= parse_time(&after).unwrap()
        );
        assert!(o["fulfillment"]["fulfillmentStatus"].is_string(), "{o}");
    }
    let next = first["pagination"]["nextToken"]
        .as_str()
        .unwrap()
        .to_string();
    let (a, second) = search(
        port,
        &token,
        &format!("{query}&paginationToken={}", encode(&next)),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_ne!(
        second["orders"][0]["orderId"],
        first["orders"][0]["orderId"]
    );
    // Refused, in the model's error shape: the token alone, no bound, no token.
    for (what, q, status) in [
        (
            "token alone",
            format!(
                "marketplaceIds={MARKETPLACE}&paginationToken={}",
                encode(&next)
            ),
            400,
        ),
        ("no bound", format!("marketplaceIds={MARKETPLACE}"), 400),
    ] {
        let (a, v) = search(port, &token, &q);
        assert_eq!(a.status, status, "{what}: {}", a.body);
        assert_eq!(v["errors"][0]["code"], "InvalidInput", "{what}");
    }
    let (a, _) = search(port, "Atza|nope", &query);
    assert_eq!(a.status, 403);
}

/// `rollbackctl plugin test order-sync-lag` against the fake, with an app
/// that reports `position`.
fn order_sync_lag(fake: u16, position: i64) -> Value {
    let body = json!({"last_order_update": rfc3339(position)}).to_string();
    let app = http_server(move |_| HttpReply::json(200, &body));
    let out = Command::new(ROLLBACKCTL)
        .args(["plugin", "test"])
        .arg(plugin("order-sync-lag"))
        .args(["--config", "provider=amazon"])
        .arg("--config")
        .arg(format!("endpoint=http://127.0.0.1:{fake}"))
        .arg("--config")
        .arg(format!("token_url=http://127.0.0.1:{fake}/auth/o2/token"))
        .args(["--config", &format!("marketplace_ids={MARKETPLACE}")])
        .arg("--config")
        .arg(format!("app_status_url=http://127.0.0.1:{app}/status"))
        .args(["--config", "max_lag=8s"])
        // As in the quickstart's agent.toml: the fake has no quota.
        .args(["--config", "max_pages=10"])
        .args(["--secret", &format!("client_id={CLIENT_ID}")])
        .args(["--secret", &format!("client_secret={CLIENT_SECRET}")])
        .args(["--secret", &format!("refresh_token={REFRESH_TOKEN}")])
        .args(["--allow-host", &format!("127.0.0.1:{fake}")])
        .args(["--allow-host", &format!("127.0.0.1:{app}")])
        .args(["--timeout", "20s", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "plugin test printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn quickstart_order_sync_lag_reads_the_sp_api_fake() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sp-api.log");
    let (_fake, port) = start_fake(&log);

    let run = order_sync_lag(port, now_ms());
    assert_eq!(run["status"], "pass", "{run}");

    // Five minutes behind: about 150 new orders and as many status changes,
    // on more than one page.
    let run = order_sync_lag(port, now_ms() - 5 * 60_000);
    assert_eq!(run["status"], "fail", "{run}");
    assert!(
        run["metrics"]["orders_behind"].as_f64().unwrap() > 100.0,
        "{run}"
    );
    assert!(
        run["metrics"]["lag_seconds"].as_f64().unwrap() > 250.0,
        "{run}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("&paginationToken="),
        "the plugin did not page: {text}"
    );
}

/// One release of the example app on a free port, syncing from the fake,
/// keeping its position in `data`.
fn start_app(version: &str, fake: u16, data: &Path) -> (Py, u16) {
    let port = free_port();
    let child = python(&quickstart("releases").join(version).join("app.py"))
        .env("PORT", port.to_string())
        .env("SPAPI_ENDPOINT", format!("http://127.0.0.1:{fake}"))
        .env("SHOP_DATA_DIR", data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let app = Py(child);
    wait_for("the app to answer", Duration::from_secs(15), || {
        get(port, "/health")
    });
    (app, port)
}

/// `/status` of the app: (position in ms, last sync in ms), once known.
fn app_status(port: u16) -> Option<(i64, i64, Value)> {
    let a = get(port, "/status")?;
    if a.status != 200 {
        return None;
    }
    let v = a.value();
    Some((
        parse_time(v["last_order_update"].as_str()?)?,
        parse_time(v["last_sync"].as_str()?)?,
        v,
    ))
}

#[test]
fn quickstart_release_1_0_0_syncs_and_1_1_0_stands_still_while_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, fake) = start_fake(&dir.path().join("sp-api.log"));
    let data = dir.path().join("shop-data");

    // 1.0.0 keeps its position within a couple of seconds of now.
    let (good, port) = start_app("1.0.0", fake, &data);
    let (position, _, _) = wait_for("1.0.0 in sync", Duration::from_secs(20), || {
        app_status(port).filter(|(p, _, _)| now_ms() - p < 5_000)
    });
    let health = get(port, "/health").unwrap();
    assert_eq!(health.status, 200);
    drop(good);
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("sync-position.json")).unwrap())
            .unwrap();
    let saved = parse_time(saved["last_order_update"].as_str().unwrap()).unwrap();
    assert!(saved >= position, "saved {saved} < served {position}");

    // 1.1.0 resumes from there, polls without an error, healthy, and never
    // moves while orders keep arriving.
    let (_broken, port) = start_app("1.1.0", fake, &data);
    let started = now_ms();
    let (stuck, _, v) = wait_for("1.1.0 to sync for 4 s", Duration::from_secs(20), || {
        app_status(port).filter(|(_, synced, _)| *synced >= started + 4_000)
    });
    assert_eq!(stuck, saved, "1.1.0 moved: {v}");
    assert!(v["last_error"].is_null(), "{v}");
    assert_eq!(v["version"], "1.1.0");
    let health = get(port, "/health").unwrap();
    assert_eq!(
        (health.status, health.value()["version"].as_str()),
        (200, Some("1.1.0"))
    );
    drop(_broken);

    // 1.0.0 again catches up from the same position.
    let (_good, port) = start_app("1.0.0", fake, &data);
    wait_for("1.0.0 to catch up", Duration::from_secs(20), || {
        app_status(port).filter(|(p, _, _)| *p > stuck && now_ms() - p < 5_000)
    });
}
