//! The `http` capability through the real http-probe plugin: allow-list on
//! the parsed URL, redirects re-checked, deadlines, body cap.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use rollback_agent::config::HostRule;
use rollback_agent::plugin::{
    CallError, CallReport, CheckInput, Grants, Phase, PluginHost, ReleaseInfo, Sandbox, Status,
};

use crate::support::{http_server, plugin, HttpReply};

async fn probe(url: &str, allow: &[String], timeout: Duration) -> CallReport {
    let host = PluginHost::new().unwrap();
    let p = host.load(&plugin("http-probe")).unwrap();
    let sandbox = Sandbox::new(
        Grants {
            app: "shop".into(),
            entry: "health".into(),
            plugin: "test.wasm".into(),
            allow_hosts: allow.iter().map(|a| HostRule::parse(a).unwrap()).collect(),
            config: BTreeMap::from([("url".to_string(), url.to_string())]),
            secrets: BTreeMap::new(),
            timeout,
            memory_limit: 32 << 20,
            max_response_bytes: 1 << 20,
        },
        std::sync::Arc::new(rollback_agent::plugin::MemoryKv::default()),
    )
    .unwrap();
    let input = CheckInput {
        app: "shop".into(),
        check: "health".into(),
        active: ReleaseInfo {
            app: "shop".into(),
            version: "1.0.0".into(),
            activated_at_ms: None,
        },
        previous: None,
        phase: Phase::Bake,
        now_ms: 0,
    };
    p.check(&sandbox, &input).await
}

const T: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_decide_and_latency_is_measured() {
    let port =
        http_server(|req| HttpReply::new(if req.path == "/health" { 200 } else { 503 }, "{}"));
    let allow = [format!("127.0.0.1:{port}")];
    let r = probe(&format!("http://127.0.0.1:{port}/health"), &allow, T).await;
    let result = r.result.unwrap();
    assert_eq!(result.status, Status::Pass, "{}", result.summary);
    assert_eq!(result.metrics["status_code"], 200.0);
    assert!(result.metrics["latency_ms"] > 0.0);
    assert_eq!(r.http_requests, 1);

    let result = probe(&format!("http://127.0.0.1:{port}/down"), &allow, T)
        .await
        .result
        .unwrap();
    assert_eq!(result.status, Status::Fail);
    assert!(result.summary.contains("503"), "{}", result.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_off_the_allow_list_are_refused_before_any_request() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = hits.clone();
    let port = http_server(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        HttpReply::new(200, "{}")
    });
    // Same host, other port; other host, same port; a look-alike name.
    for allow in [
        format!("127.0.0.1:{}", port + 1),
        format!("localhost:{port}"),
        "127.0.0.1".to_string(),
    ] {
        let r = probe(
            &format!("http://127.0.0.1:{port}/health"),
            std::slice::from_ref(&allow),
            T,
        )
        .await;
        match r.result {
            Err(CallError::Plugin(m)) => assert!(m.contains("not in allow_hosts"), "{allow}: {m}"),
            other => panic!("{allow}: expected a denial, got {other:?}"),
        }
    }
    // Userinfo in the URL does not change the host that is checked.
    let r = probe(
        &format!("http://127.0.0.1:{port}@localhost:{port}/"),
        &[format!("127.0.0.1:{port}")],
        T,
    )
    .await;
    assert!(
        matches!(r.result, Err(CallError::Plugin(_))),
        "{:?}",
        r.result
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_checked_against_the_allow_list() {
    let target = http_server(|_| HttpReply::new(200, "{}"));
    let redirector = http_server(move |req| {
        let to = if req.path == "/outside" {
            format!("http://localhost:{target}/")
        } else {
            format!("http://127.0.0.1:{target}/")
        };
        HttpReply::new(302, "").header("location", &to)
    });
    let allow = [
        format!("127.0.0.1:{redirector}"),
        format!("127.0.0.1:{target}"),
    ];
    let r = probe(&format!("http://127.0.0.1:{redirector}/inside"), &allow, T).await;
    assert_eq!(
        r.result.unwrap().status,
        Status::Pass,
        "an allowed redirect is followed"
    );
    let r = probe(&format!("http://127.0.0.1:{redirector}/outside"), &allow, T).await;
    match r.result {
        Err(CallError::Plugin(m)) => assert!(
            m.contains("redirect refused") && m.contains("localhost"),
            "{m}"
        ),
        other => panic!("expected a refused redirect, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_servers_end_at_the_deadline() {
    let port = http_server(|_| HttpReply::new(200, "").delay(Duration::from_secs(20)));
    let timeout = Duration::from_millis(700);
    let started = Instant::now();
    let r = probe(
        &format!("http://127.0.0.1:{port}/"),
        &[format!("127.0.0.1:{port}")],
        timeout,
    )
    .await;
    // The request is cut at the deadline: the probe reports a failed check,
    // or the call itself ran out of time; either way, promptly.
    match &r.result {
        Ok(res) => assert!(
            res.status == Status::Fail && res.summary.contains("timed out"),
            "{res:?}"
        ),
        Err(e) => assert!(matches!(e, CallError::Timeout(_)), "{e:?}"),
    }
    assert!(
        started.elapsed() < timeout + Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_dead_servers() {
    let port = http_server(|_| HttpReply::new(200, vec![b'x'; 2 << 20]));
    let r = probe(
        &format!("http://127.0.0.1:{port}/"),
        &[format!("127.0.0.1:{port}")],
        T,
    )
    .await;
    match r.result {
        Err(CallError::Plugin(m)) => {
            assert!(m.contains("too large") || m.contains("1048576"), "{m}")
        }
        other => panic!("expected the body cap to refuse, got {other:?}"),
    }
    // Nothing listens there: a failed check, not a plugin error.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = probe(
        &format!("http://127.0.0.1:{dead}/"),
        &[format!("127.0.0.1:{dead}")],
        T,
    )
    .await;
    let res = r.result.unwrap();
    assert_eq!(res.status, Status::Fail, "{}", res.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_any_size_ends_the_call_without_a_panic() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = hits.clone();
    let port = http_server(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        HttpReply::new(503, "busy").header("Retry-After", "18446744073709551615")
    });
    let allow = [format!("127.0.0.1:{port}")];
    let url = format!("http://127.0.0.1:{port}/health");
    let result = probe(&url, &allow, T).await.result.unwrap();
    // No retry can finish within the deadline: the 503 is the answer.
    assert_eq!(result.status, Status::Fail, "{}", result.summary);
    assert!(result.summary.contains("503"), "{}", result.summary);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The same through `rollbackctl plugin test`: a verdict, not exit 101.
    let out = crate::support::plugin_test("http-probe", &allow, &[("url", url.as_str())], &[], &[]);
    assert_eq!(out.code, 3, "{out:?}");
}
