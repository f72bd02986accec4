//! Fleet rollouts end to end: a real 3-member etcd cluster on 127.0.0.1
//! (Debian's `etcd` binary) and real `rollbackd` processes, each with its
//! own state dir, app root and health endpoint that fails on a marker file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::etcd::Etcd;
use crate::support::*;

/// One host of the fleet: a `rollbackd` process and its app's health
/// endpoint, which fails while `<dir>/fail` names the active version.
struct Host {
    name: String,
    agent: Agent,
}

/// The health endpoint of a host: 503 when the marker names the version
/// `current` points at, else 200.
fn marker_app(dir: &Path) -> u16 {
    let (root, marker) = (dir.join("shop"), dir.join("fail"));
    http_server(move |_| {
        let version = std::fs::read_to_string(root.join("current/release.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .unwrap_or_default();
        let failing = std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == version);
        let status = if failing { 503 } else { 200 };
        HttpReply::json(status, &format!("{{\"version\":\"{version}\"}}"))
    })
}

fn fleet_config(etcd: &Etcd, fleet: &str, host: &str, port: u16, extra: &str) -> String {
    format!(
        r#"[apps.shop]
root = "{{dir}}/shop"
bake = "3s"
auto_rollback = "always"

[[apps.shop.checks]]
name = "health"
plugin = "{plugin}"
interval = "200ms"
fail_after = 2
timeout = "2s"
allow_hosts = ["127.0.0.1:{port}"]
config = {{ url = "http://127.0.0.1:{port}/health" }}

[fleet]
etcd = [{endpoints}]
name = "{fleet}"
host = "{host}"
lease_ttl = "3s"
{extra}
"#,
        plugin = plugin("http-probe").display(),
        endpoints = etcd.endpoints(),
    )
}

/// A release `version` of the test app.
fn release(dir: &Path, version: &str) -> PathBuf {
    release_source(
        dir,
        version,
        &[("release.json", format!("{{\"version\":\"{version}\"}}"))],
    )
}

/// `n` hosts `h1..hn` of a fleet named after the test, each running 1.0
/// (good) with 2.0 staged beside it.
fn fleet(etcd: &Etcd, name: &str, n: usize, extra: &str) -> Vec<Host> {
    let _cpu = cpu_heavy();
    let fleet_name = format!("{name}-{}", std::process::id());
    let mut hosts = Vec::new();
    for i in 1..=n {
        let dir = tempfile::tempdir().unwrap();
        let port = marker_app(dir.path());
        let host = format!("h{i}");
        let cfg = fleet_config(etcd, &fleet_name, &host, port, extra);
        let agent = Agent::process_in(dir, &cfg);
        let out = agent.deploy(release(agent.path(), "1.0").to_str().unwrap(), "1.0", true);
        assert_eq!(
            out.code,
            0,
            "{host}: first deploy: {out:?}\n{}",
            agent.log()
        );
        let src = release(agent.path(), "2.0");
        let out = agent.ctl(&["stage", "shop", src.to_str().unwrap(), "--version", "2.0"]);
        assert_eq!(out.code, 0, "{host}: stage: {out:?}");
        hosts.push(Host { name: host, agent });
    }
    // Every host is seen in the fleet before anything starts.
    wait_for("every host in the fleet", Duration::from_secs(60), || {
        let v = hosts[0].agent.ctl(&["fleet", "hosts", "--json"]);
        let v: Value = serde_json::from_str(&v.stdout).ok()?;
        let seen = v["hosts"]
            .as_array()?
            .iter()
            .filter(|h| h["alive"] == true && h["apps"]["shop"]["state"] == "healthy")
            .count();
        (seen == n).then_some(())
    });
    hosts
}

fn fail_on(host: &Host, version: &str) {
    std::fs::write(host.agent.path().join("fail"), format!("{version}\n")).unwrap();
}

fn fleet_status(host: &Host) -> Value {
    host.agent.json(&["fleet", "status", "shop"])
}

/// Waits (60 s at most) until the rollout's phase is `phase`.
fn wait_phase(host: &Host, phase: &str) -> Value {
    let mut last = Value::Null;
    wait_for_opt(Duration::from_secs(60), || {
        last = fleet_status(host);
        (last["rollouts"][0]["rollout"]["progress"]["phase"] == phase).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("timed out waiting for the rollout to be {phase}: {last}"))
}

fn active(host: &Host) -> String {
    host.agent.json(&["status", "shop"])["active"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The `kind` events of `version` in a host's history, oldest first, as times.
fn times(host: &Host, kind: &str, version: &str) -> Vec<u64> {
    let mut t: Vec<u64> = host.agent.json(&["history", "shop", "--limit", "1000"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind && (e["version"] == version || e["to"] == version))
        .map(|e| e["at_ms"].as_u64().unwrap())
        .collect();
    t.sort();
    t
}

#[test]
fn fleet_waves_advance_only_after_the_previous_wave_baked() {
    let etcd = Etcd::start();
    let hosts = fleet(&etcd, "waves", 3, "");
    let out = hosts[1].agent.ctl(&[
        "fleet", "rollout", "shop", "2.0", "--waves", "1,100%", "--bake", "1s",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let done = wait_phase(&hosts[0], "succeeded");
    for h in &hosts {
        assert_eq!(active(h), "2.0", "{}", h.name);
    }
    // The canary (h1, first by name) was good before anyone else started.
    let canary_good = times(&hosts[0], "marked-good", "2.0")[0];
    for h in &hosts[1..] {
        let started = times(h, "activated", "2.0")[0];
        assert!(
            started > canary_good,
            "{} activated 2.0 before the canary's wave baked: {done}",
            h.name
        );
    }
    // Every host recorded who deployed it: the rollout.
    let id = done["rollouts"][0]["rollout"]["spec"]["id"]
        .as_str()
        .unwrap();
    let hist = hosts[2].agent.json(&["history", "shop"]);
    assert!(
        hist["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "activated" && e["actor"]["name"] == format!("fleet:{id}")),
        "{hist}"
    );
    // The operator's call is in the history of the host that took it.
    let hist = hosts[1].agent.json(&["history", "shop"]);
    assert!(hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "fleet-rollout"));
    // Over is over: a new rollout of the app can start.
    let again = hosts[0].agent.ctl(&["fleet", "rollout", "shop", "2.0"]);
    assert_eq!(again.code, 0, "{again:?}");
}

#[test]
fn fleet_a_failing_canary_aborts_and_nobody_else_gets_the_version() {
    let etcd = Etcd::start();
    let hosts = fleet(&etcd, "canary", 3, "");
    fail_on(&hosts[1], "2.0");
    let out = hosts[0]
        .agent
        .ctl(&["fleet", "rollout", "shop", "2.0", "--waves", "h2,100%"]);
    assert_eq!(out.code, 0, "{out:?}");
    let st = wait_phase(&hosts[0], "aborted");
    let reason = st["rollouts"][0]["rollout"]["progress"]["reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("1 of 3 hosts failed"), "{st}");
    // The canary rolled back by itself; nobody else ever activated 2.0.
    wait_until("the canary back on 1.0", || active(&hosts[1]) == "1.0");
    for h in [&hosts[0], &hosts[2]] {
        assert_eq!(active(h), "1.0");
        assert!(
            times(h, "activated", "2.0").is_empty(),
            "{} got 2.0",
            h.name
        );
    }
}

#[test]
fn fleet_failures_above_max_failed_in_wave_two_roll_back_every_host_that_got_it() {
    let etcd = Etcd::start();
    let hosts = fleet(&etcd, "maxfailed", 4, "");
    fail_on(&hosts[2], "2.0");
    let out = hosts[0].agent.ctl(&[
        "fleet",
        "rollout",
        "shop",
        "2.0",
        "--waves",
        "1,100%",
        "--max-failed",
        "0",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let st = wait_phase(&hosts[0], "aborted");
    for h in &hosts {
        wait_until(&format!("{} back on 1.0", h.name), || active(h) == "1.0");
    }
    // The canary had 2.0 and was sent back by the abort.
    assert!(!times(&hosts[0], "activated", "2.0").is_empty(), "{st}");
    assert!(
        !times(&hosts[0], "rolled-back", "1.0").is_empty()
            || !times(&hosts[0], "rolled-back", "2.0").is_empty()
    );
}

#[test]
fn fleet_halt_stops_every_new_start_and_unhalt_resumes() {
    let etcd = Etcd::start();
    let hosts = fleet(&etcd, "halt", 2, "");
    let out = hosts[0]
        .agent
        .ctl(&["fleet", "halt", "--reason", "payment provider down"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = hosts[1]
        .agent
        .ctl(&["fleet", "rollout", "shop", "2.0", "--waves", "100%"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The coordinator saw the rollout and the halt, and started nothing.
    let st = wait_for(
        "the coordinator to see the halt",
        Duration::from_secs(60),
        || {
            let st = fleet_status(&hosts[0]);
            let p = &st["rollouts"][0]["rollout"]["progress"];
            (!p["stalled_since_ms"].is_null() && !p["targets"].as_array()?.is_empty()).then_some(st)
        },
    );
    assert_eq!(
        st["halt"]["mark"]["reason"], "payment provider down",
        "{st}"
    );
    assert!(
        st["rollouts"][0]["rollout"]["progress"]["hosts"]
            .as_object()
            .unwrap()
            .is_empty(),
        "{st}"
    );
    for h in &hosts {
        assert_eq!(active(h), "1.0");
    }
    let out = hosts[1].agent.ctl(&["fleet", "unhalt"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_phase(&hosts[0], "succeeded");
    for h in &hosts {
        assert_eq!(active(h), "2.0");
    }
    let hist = hosts[0].agent.json(&["history", "shop"]);
    assert!(hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "fleet-halted"));
}

#[test]
fn fleet_a_killed_agent_counts_as_missing_and_the_coordinator_moves_on() {
    let etcd = Etcd::start();
    let mut hosts = fleet(&etcd, "kill", 3, "");
    let leader = fleet_status(&hosts[0])["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = hosts.iter().position(|h| h.name == leader).unwrap();
    hosts[victim].agent.kill9();
    // Missing within 2 x TTL (3 s), waited for with a bound, not a sleep.
    let watcher = (victim + 1) % hosts.len();
    wait_for(
        "the killed host counted missing",
        Duration::from_secs(6 + 10),
        || {
            let v = hosts[watcher].agent.json(&["fleet", "hosts"]);
            let alive = v["hosts"]
                .as_array()?
                .iter()
                .find(|h| h["host"] == leader)?["alive"]
                .clone();
            (alive == false).then_some(())
        },
    );
    // Another member leads now, and a rollout of the others goes through.
    wait_until("a new coordinator", || {
        fleet_status(&hosts[watcher])["leader"]
            .as_str()
            .is_some_and(|l| l != leader)
    });
    let out = hosts[watcher]
        .agent
        .ctl(&["fleet", "rollout", "shop", "2.0", "--waves", "100%"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_phase(&hosts[watcher], "succeeded");
    for (i, h) in hosts.iter().enumerate() {
        if i != victim {
            assert_eq!(active(h), "2.0", "{}", h.name);
        }
    }
}

#[test]
fn fleet_manual_gates_need_an_approver_other_than_the_starter_with_four_eyes() {
    let etcd = Etcd::start();
    let hosts = fleet(&etcd, "gate", 2, "four_eyes = true");
    let out = hosts[0].agent.ctl(&[
        "fleet", "rollout", "shop", "2.0", "--waves", "1,100%", "--gate", "manual",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_phase(&hosts[0], "awaiting-approval");
    // The user who started it (root here) may not approve its gate.
    let refused = hosts[1].agent.ctl(&["fleet", "promote", "shop"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("four eyes"), "{refused:?}");
    assert!(refused.stderr.contains("PermissionDenied"), "{refused:?}");
    assert_eq!(active(&hosts[1]), "1.0");
    // An abort still works, and sends the canary back.
    let out = hosts[1]
        .agent
        .ctl(&["fleet", "abort", "shop", "--reason", "no approver today"]);
    assert_eq!(out.code, 0, "{out:?}");
    let st = wait_phase(&hosts[0], "aborted");
    assert!(st["rollouts"][0]["rollout"]["progress"]["reason"]
        .as_str()
        .unwrap()
        .contains("no approver today"));
    wait_until("the canary back on 1.0", || active(&hosts[0]) == "1.0");
}

#[test]
fn fleet_calls_without_a_fleet_or_with_bad_flags_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::process_in(dir, &shop_config(1, "1s", ""));
    let out = agent.ctl(&["fleet", "status"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("FleetNotConfigured"), "{out:?}");

    let etcd = Etcd::start();
    let hosts = fleet(&etcd, "flags", 1, "");
    for (args, needle) in [
        (vec!["--waves", "0%"], "0%"),
        (vec!["--waves", "h1,h1"], "two waves"),
        (vec!["--max-failed", "many"], "host count"),
        (vec!["--gate", "auto,manual,auto,manual"], "gates"),
        (vec!["--on-abort", "pray"], "on-abort"),
        (vec!["--bake", "forever"], "duration"),
        (vec!["--digest", "md5:abc"], "content digest"),
        (
            vec![
                "--source",
                "https://elsewhere.example/r.tar.gz",
                "--sha256",
                &"a".repeat(64),
            ],
            "artifact_hosts",
        ),
    ] {
        let mut all = vec!["fleet", "rollout", "shop", "2.0"];
        all.extend(args.iter().copied());
        let out = hosts[0].agent.ctl(&all);
        assert_eq!(out.code, 1, "{all:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{all:?}: {out:?}");
    }
    // Nothing was stored by the refused calls.
    let out = hosts[0].agent.ctl(&["fleet", "status", "shop"]);
    assert!(
        out.stderr.contains("NoSuchRollout") || out.code == 0,
        "{out:?}"
    );
    let st = hosts[0].agent.json(&["fleet", "status"]);
    assert!(st["rollouts"].as_array().unwrap().is_empty(), "{st}");
}

#[test]
fn fleet_without_a_quorum_local_rollback_still_works_and_the_outbox_reports_it_later() {
    let mut etcd = Etcd::start();
    let hosts = fleet(&etcd, "partition", 3, "");
    // The canary bakes its wave for an hour: wave 2 cannot start meanwhile.
    let out = hosts[0].agent.ctl(&[
        "fleet", "rollout", "shop", "2.0", "--waves", "1,100%", "--bake", "1h",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_for("the canary good", Duration::from_secs(60), || {
        let st = fleet_status(&hosts[0]);
        (st["rollouts"][0]["rollout"]["progress"]["hosts"]["h1"]["outcome"] == "good").then_some(())
    });
    // Two of three members down: no quorum.
    etcd.stop_member(1);
    etcd.stop_member(2);
    // The canary's agent knows it is cut off (its session found no quorum).
    wait_until("the canary's agent cut off", || {
        hosts[0].agent.log().contains("fleet session ended")
    });
    // The canary fails now; its agent rolls back by itself.
    fail_on(&hosts[0], "2.0");
    wait_until("the canary rolled back locally", || {
        active(&hosts[0]) == "1.0"
    });
    // Nothing new can start: the fleet cannot even be asked.
    let refused = hosts[1].agent.ctl(&["fleet", "rollout", "shop", "2.0"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("FleetUnavailable"), "{refused:?}");
    for h in &hosts[1..] {
        assert_eq!(active(h), "1.0");
    }
    // The quorum is back: the report arrives and the rollout reacts.
    etcd.start_member(1, "existing");
    etcd.start_member(2, "existing");
    etcd.wait_healthy();
    let st = wait_phase(&hosts[1], "aborted");
    let reports = st["reports"].as_array().unwrap();
    assert!(
        reports
            .iter()
            .any(|r| r["host"] == "h1" && r["status"]["active"] == "1.0"),
        "no report from h1: {st}"
    );
    for h in &hosts[1..] {
        assert!(
            times(h, "activated", "2.0").is_empty(),
            "{} got 2.0",
            h.name
        );
    }
}

#[test]
fn fleet_a_killed_coordinator_is_replaced_and_waves_never_go_backwards() {
    let etcd = Etcd::start();
    let mut hosts = fleet(&etcd, "coord", 3, "");
    let leader = fleet_status(&hosts[0])["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = hosts.iter().position(|h| h.name == leader).unwrap();
    let watcher = (victim + 1) % hosts.len();
    // The coordinator is the canary, then one host per wave.
    let waves = format!("{leader},2,100%");
    let out = hosts[watcher].agent.ctl(&[
        "fleet", "rollout", "shop", "2.0", "--waves", &waves, "--bake", "2s",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let mut seen_waves = Vec::new();
    wait_for("wave 2", Duration::from_secs(60), || {
        let w =
            fleet_status(&hosts[watcher])["rollouts"][0]["rollout"]["progress"]["wave"].as_u64()?;
        seen_waves.push(w);
        (w >= 1).then_some(())
    });
    hosts[victim].agent.kill9();
    wait_until("another coordinator", || {
        fleet_status(&hosts[watcher])["leader"]
            .as_str()
            .is_some_and(|l| l != leader)
    });
    hosts[victim].agent.spawn();
    let done = wait_for("the rollout to succeed", Duration::from_secs(90), || {
        let st = fleet_status(&hosts[watcher]);
        let p = &st["rollouts"][0]["rollout"]["progress"];
        seen_waves.push(p["wave"].as_u64()?);
        (p["phase"] == "succeeded").then_some(st)
    });
    assert!(
        seen_waves.windows(2).all(|w| w[0] <= w[1]),
        "waves went back: {seen_waves:?}"
    );
    for h in &hosts {
        assert_eq!(active(h), "2.0", "{}: {done}", h.name);
        // Each host deployed once: nothing was redone by the new coordinator.
        assert_eq!(times(h, "activated", "2.0").len(), 1, "{}", h.name);
    }
}

#[test]
fn fleet_a_host_whose_release_has_other_bits_refuses() {
    let etcd = Etcd::start();
    let hosts = fleet(&etcd, "digest", 2, "");
    // h2's 2.0 is not h1's: another file crept in.
    let src = release_source(
        hosts[1].agent.path(),
        "2.0-other",
        &[
            ("release.json", "{\"version\":\"2.0\"}".into()),
            ("debug.log", "left over".into()),
        ],
    );
    let out = hosts[1]
        .agent
        .ctl(&["stage", "shop", src.to_str().unwrap(), "--version", "2.1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let h1 = release(hosts[0].agent.path(), "2.1");
    let out = hosts[0]
        .agent
        .ctl(&["stage", "shop", h1.to_str().unwrap(), "--version", "2.1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = hosts[0]
        .agent
        .ctl(&["fleet", "rollout", "shop", "2.1", "--waves", "1,100%"]);
    assert_eq!(out.code, 0, "{out:?}");
    let st = wait_phase(&hosts[0], "aborted");
    let h2 = &st["rollouts"][0]["rollout"]["progress"]["hosts"]["h2"];
    assert_eq!(h2["outcome"], "refused", "{st}");
    assert!(
        h2["reason"].as_str().unwrap().contains("content digest"),
        "{st}"
    );
    assert_eq!(active(&hosts[1]), "1.0");
}

#[test]
fn fleet_agents_fetch_a_release_from_an_allowed_artifact_host_and_check_its_sha256() {
    use sha2::Digest;
    let work = tempfile::tempdir().unwrap();
    let src = release(work.path(), "3.0");
    let archive = work.path().join("shop-3.0.tar.gz");
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let bytes = std::fs::read(&archive).unwrap();
    let sha = format!("{:x}", sha2::Sha256::digest(&bytes));
    let served = bytes.clone();
    let port = http_server(move |r| {
        if r.path_only() == "/shop-3.0.tar.gz" {
            HttpReply::new(200, served.clone())
        } else {
            HttpReply::new(404, "no")
        }
    });
    let etcd = Etcd::start();
    let rule = format!("artifact_hosts = [\"http://127.0.0.1:{port}\"]");
    let hosts = fleet(&etcd, "fetch", 2, &rule);
    let url = format!("http://127.0.0.1:{port}/shop-3.0.tar.gz");
    // A wrong digest: every host refuses what it fetched.
    let out = hosts[0].agent.ctl(&[
        "fleet",
        "rollout",
        "shop",
        "3.0",
        "--waves",
        "100%",
        "--max-failed",
        "1",
        "--source",
        &url,
        "--sha256",
        &"0".repeat(64),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let st = wait_phase(&hosts[0], "aborted");
    assert!(
        st["rollouts"][0]["rollout"]["progress"]["hosts"]["h1"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("SHA-256"),
        "{st}"
    );
    assert!(hosts[0].agent.json(&["releases", "shop"])["releases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["version"] != "3.0"));
    // The right one: fetched, staged, deployed everywhere.
    let out = hosts[0].agent.ctl(&[
        "fleet", "rollout", "shop", "3.0", "--waves", "100%", "--source", &url, "--sha256", &sha,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_phase(&hosts[0], "succeeded");
    for h in &hosts {
        assert_eq!(active(h), "3.0", "{}", h.name);
    }
}

#[test]
fn fleet_manual_gates_are_passed_by_approvers_only() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the approver test needs root to create users; skipped");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let (admins, approvers) = (format!("rfa{tag}"), format!("rfp{tag}"));
    let (approver, plain) = (format!("rfu{tag}"), format!("rfw{tag}"));
    let mut acc = crate::authz::Accounts {
        users: vec![],
        groups: vec![],
    };
    acc.group(&admins);
    acc.group(&approvers);
    acc.user(&approver, &[&admins, &approvers]);
    acc.user(&plain, &[&admins]);
    let etcd = Etcd::start();
    let extra = format!("approver_group = \"{approvers}\"\nfour_eyes = true");
    let hosts = fleet(&etcd, "approvers", 2, &extra);
    let h = &hosts[1];
    std::fs::set_permissions(h.agent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&h.agent.config).unwrap();
    let text = text.replacen(
        "[agent]\n",
        &format!("[agent]\nadmin_group = \"{admins}\"\n"),
        1,
    );
    std::fs::write(&h.agent.config, text).unwrap();
    let mut hosts = hosts;
    hosts[1].agent.stop();
    hosts[1].agent.spawn();
    let out = hosts[0].agent.ctl(&[
        "fleet", "rollout", "shop", "2.0", "--waves", "1,100%", "--gate", "manual",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_phase(&hosts[0], "awaiting-approval");
    let sock = hosts[1].agent.socket.clone();
    let out = crate::authz::as_user(&plain, &sock, &["fleet", "promote", "shop"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("may not pass a manual gate"), "{out:?}");
    let out = crate::authz::as_user(&approver, &sock, &["fleet", "promote", "shop"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_phase(&hosts[0], "succeeded");
    let hist = hosts[1].agent.json(&["history", "shop"]);
    assert!(
        hist["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "fleet-promoted" && e["actor"]["name"] == approver.as_str()),
        "{hist}"
    );
}
