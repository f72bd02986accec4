//! The control socket and the daemon's start-up: wire format and bad input.

use std::process::Command;

use crate::support::*;

#[test]
fn the_socket_speaks_varlink_and_survives_garbage() {
    let agent = Agent::start("[apps.shop]\nroot = \"{dir}/shop\"\n");
    let ok = raw_call(
        &agent.socket,
        b"{\"method\":\"io.rollback.Agent.Status\",\"parameters\":{}}\0",
    );
    let v: serde_json::Value = serde_json::from_str(&ok).unwrap();
    assert!(v.get("error").is_none(), "{ok}");
    assert_eq!(v["parameters"]["apps"][0]["state"], "empty");

    let cases: [(&[u8], &str); 5] = [
        (b"this is not json\0", "org.varlink.service.InvalidParameter"),
        (b"{\"method\":\"io.rollback.Agent.Nope\"}\0", "org.varlink.service.MethodNotFound"),
        (b"{\"method\":\"com.example.Other\"}\0", "org.varlink.service.InterfaceNotFound"),
        (b"{\"method\":\"io.rollback.Agent.Deploy\",\"parameters\":{\"app\":\"shop\"}}\0", "org.varlink.service.InvalidParameter"),
        (
            b"{\"method\":\"io.rollback.Agent.Deploy\",\"parameters\":{\"app\":\"shop\",\"source\":\"relative/dir\",\"version\":\"1\"}}\0",
            "org.varlink.service.InvalidParameter",
        ),
    ];
    for (input, error) in cases {
        let reply = raw_call(&agent.socket, input);
        let v: serde_json::Value =
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
        assert_eq!(v["error"], error, "{}", String::from_utf8_lossy(input));
        assert!(v["parameters"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        if error == "org.varlink.service.InvalidParameter" {
            assert!(v["parameters"]["parameter"].is_string(), "{reply}");
        }
    }
    let reply = raw_call(
        &agent.socket,
        b"{\"method\":\"io.rollback.Agent.Deploy\",\"parameters\":{\"app\":\"shop\"}}\0",
    );
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(v["parameters"]["parameter"], "source", "{reply}");

    // An oversized message is refused without reading it all.
    let mut big = vec![b' '; 2 * 1024 * 1024];
    big.push(0);
    let reply = raw_call(&agent.socket, &big);
    assert!(reply.contains("InvalidParameter"), "{reply}");

    // Two calls on one connection, the agent still serves others afterwards.
    let two = raw_call(
        &agent.socket,
        b"{\"method\":\"io.rollback.Agent.Nope\"}\0{\"method\":\"io.rollback.Agent.Status\"}\0",
    );
    assert!(two.contains("MethodNotFound"), "{two}");
    assert_eq!(agent.ctl(&["status"]).code, 0);
    assert!(!agent.path().join("shop/current").exists());
}

#[test]
fn a_second_agent_does_not_steal_the_socket() {
    let agent = Agent::start("[apps.shop]\nroot = \"{dir}/shop\"\n");
    let other_state = agent.path().join("other-state");
    let config = agent.path().join("second.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate_dir = \"{}\"\nsocket = \"{}\"\n",
            other_state.display(),
            agent.socket.display()
        ),
    )
    .unwrap();
    let out = Command::new(ROLLBACKD)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already listening"),
        "{out:?}"
    );
    assert_eq!(
        agent.ctl(&["status"]).code,
        0,
        "the first agent still answers"
    );
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // A socket file nobody listens on, as left by a crash.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("control.sock")).unwrap());
    let agent = Agent::start_in(dir, "[apps.shop]\nroot = \"{dir}/shop\"\n");
    assert_eq!(agent.ctl(&["status"]).code, 0);
}

fn rollbackd_with(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    rollbackd_run(&write_config(dir.path(), config), &[])
}

#[test]
fn bad_configs_and_plugins_stop_the_daemon_with_a_clear_error() {
    let (code, err) = rollbackd_with("[apps.shop]\nroot = \"/srv/shop\"\nbake = \"forever\"\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("apps.shop.bake") && err.contains("forever"),
        "{err}"
    );

    let (code, err) = rollbackd_with("[apps.shop]\nroot = \"/srv/shop\"\nbakee = \"5m\"\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("line 7") && err.contains("bakee"), "{err}");

    let check = "[apps.shop]\nroot = \"{root}\"\n[[apps.shop.checks]]\nname = \"h\"\nplugin = \"{plugin}\"\n";
    let root = tempfile::tempdir().unwrap();
    let missing = check
        .replace("{root}", &root.path().display().to_string())
        .replace("{plugin}", "/nonexistent/p.wasm");
    let (code, err) = rollbackd_with(&missing);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("/nonexistent/p.wasm") && err.contains("check `h`"),
        "{err}"
    );

    let junk = root.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let bad = check
        .replace("{root}", &root.path().display().to_string())
        .replace("{plugin}", &junk.display().to_string());
    let (code, err) = rollbackd_with(&bad);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("invalid plugin") && err.contains("junk.wasm"),
        "{err}"
    );

    let out = Command::new(ROLLBACKD)
        .arg("--config")
        .arg("/nonexistent/agent.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn rollbackctl_without_an_agent_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = ctl_with(&dir.path().join("none.sock"), &["status"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("is rollbackd running"),
        "{}",
        out.stderr
    );
    let out = Command::new(ROLLBACKCTL)
        .arg("status")
        .env("ROLLBACK_AGENT_SOCKET", dir.path().join("env.sock"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("env.sock"),
        "the socket comes from the environment"
    );
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let agent = Agent::start("[apps.shop]\nroot = \"{dir}/shop\"\n");
    let mut child = Command::new(ROLLBACKCTL)
        .args([
            "--socket",
            agent.socket.to_str().unwrap(),
            "status",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn systemd_hears_ready_status_and_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let shop = format!(
        "[apps.shop]
root = \"{}/shop\"
",
        dir.path().display()
    );
    let config = write_config(dir.path(), &shop);
    let mut child = Command::new(ROLLBACKD)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("READY=1")
        && seen.contains("WATCHDOG=1")
        && seen.contains("STATUS=1 app(s): shop empty"))
    {
        match notify.recv(&mut buf) {
            Ok(n) => {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
            Err(e) => {
                let _ = child.kill();
                panic!("{e}: heard only {seen:?}");
            }
        }
    }
    // READY comes once the socket is bound: it must answer by now.
    assert_eq!(
        ctl_with(&dir.path().join("control.sock"), &["status"]).code,
        0
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let shop = format!(
        "[apps.shop]
root = \"{}/shop\"
",
        dir.path().display()
    );
    let config = write_config(dir.path(), &shop);
    let child = Command::new(ROLLBACKD)
        .args(["--log-format", "json", "--config"])
        .arg(&config)
        .env("ROLLBACK_AGENT_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = dir.path().join("control.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ctl_with(&socket, &["status"]).code != 0 {
        assert!(std::time::Instant::now() < deadline, "agent not ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "ready" && l["level"] == "INFO"),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["app"] == "shop"),
        "structured fields: {text}"
    );
    let bad = Command::new(ROLLBACKD)
        .args(["--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn completions_and_man_page_need_no_agent() {
    let none = std::path::Path::new("/nonexistent/agent.sock");
    let out = ctl_with(none, &["completions", "bash"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("_rollbackctl") && out.stdout.contains("deploy"));
    let out = ctl_with(none, &["man"]);
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains(".TH rollbackctl") && out.stdout.contains("Exit status"),
        "{}",
        out.stdout
    );
    assert_eq!(ctl_with(none, &["completions", "tcsh"]).code, 2);
}

#[test]
fn status_without_apps_says_how_to_add_one() {
    let agent = Agent::start("");
    let out = agent.ctl(&["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("no apps"), "{}", out.stdout);
    assert_eq!(agent.json(&["status"])["apps"], serde_json::json!([]));
}

#[test]
fn rollbackctl_reads_a_history_of_the_documented_maximum() {
    // 10,000 events with long reasons: a reply of several MiB.
    let dir = tempfile::tempdir().unwrap();
    {
        use rollback_agent::store::{Actor, Event, EventKind, Store};
        let db = dir.path().join("state/db");
        std::fs::create_dir_all(&db).unwrap();
        let store = Store::open(&db).unwrap();
        let reason = "x".repeat(400);
        for i in 0..10_000 {
            let event = Event::new("shop", Actor::agent(), EventKind::CheckFailed)
                .reason(format!("{i} {reason}"));
            store.record(event).unwrap();
        }
        store.flush().unwrap();
    }
    let agent = Agent::start_in(dir, "[apps.shop]\nroot = \"{dir}/shop\"\n");
    let out = agent.ctl(&["history", "shop", "--limit", "10000", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.len() > 4 << 20, "{} bytes", out.stdout.len());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 10_000);
    let out = agent.ctl(&["incident", "shop"]);
    assert!(!out.stderr.contains("cannot read"), "{}", out.stderr);
}
