//! Prometheus metrics: the /metrics listener and the textfile.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::support::*;

fn scrape(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn deploys_rollbacks_and_checks_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut agent = Agent::process_in(dir, &shop_config(app.port, "400ms", ""));
    let textfile = agent.path().join("rollback_agent.prom");
    let text = std::fs::read_to_string(&agent.config).unwrap().replacen(
        "[agent]\n",
        &format!(
            "[agent]\nmetrics_listen = \"127.0.0.1:{port}\"\nmetrics_textfile = \"{}\"\n",
            textfile.display()
        ),
        1,
    );
    std::fs::write(&agent.config, text).unwrap();
    agent.stop();
    agent.spawn();

    assert_eq!(
        agent
            .deploy(example_release("1.0.0").to_str().unwrap(), "1.0.0", true)
            .code,
        0
    );
    assert_eq!(
        agent
            .deploy(example_release("1.1.0").to_str().unwrap(), "1.1.0", true)
            .code,
        3
    );
    let page = scrape(port, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    for needle in [
        "rollback_agent_deploys_total{app=\"shop\",outcome=\"good\"} 1",
        "rollback_agent_deploys_total{app=\"shop\",outcome=\"rolled-back\"} 1",
        "rollback_agent_rollbacks_total{app=\"shop\",trigger=\"automatic\"} 1",
        "rollback_agent_app_state{app=\"shop\",state=\"healthy\"} 1",
        "rollback_agent_check_results_total{app=\"shop\",check=\"health\",outcome=\"fail\"}",
        "rollback_agent_check_duration_seconds_bucket{",
    ] {
        assert!(page.contains(needle), "{needle} missing:\n{page}");
    }
    assert!(scrape(port, "/other").starts_with("HTTP/1.1 404"));
    // The textfile is written every 15 s, the first time at start.
    let file = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        file.contains("# TYPE rollback_agent_app_state gauge"),
        "{file}"
    );
}
