//! The coordinator's decisions on a fake clock.
#![allow(clippy::unwrap_used)]

use super::*;

fn spec(waves: &str) -> Spec {
    Spec {
        id: "r1".into(),
        app: "shop".into(),
        version: "2.0".into(),
        digest: None,
        source: None,
        waves: waves.parse().unwrap(),
        gates: vec![Gate::Auto; waves.parse::<Waves>().unwrap().0.len()],
        max_failed: Share::Count(0),
        min_healthy: Share::Count(0),
        bake_ms: 1_000,
        wave_deadline_ms: None,
        on_abort: OnAbort::Rollback,
        started_by: "alice".into(),
        started_ms: 0,
    }
}

fn rollout(spec: Spec) -> Rollout {
    Rollout {
        progress: Progress::new(&spec),
        spec,
        intent: Intent::default(),
    }
}

fn healthy(version: &str) -> HostApp {
    HostApp {
        active: Some(version.into()),
        last_good: Some(version.into()),
        state: AppState::Healthy,
        reason: None,
        rollout: None,
        outcome: None,
        outcome_reason: None,
        digest: None,
    }
}

/// A fleet of hosts `h1..=hn`, all healthy on 1.0.
fn fleet(n: usize) -> Observed {
    let mut seen = Observed::default();
    for i in 1..=n {
        let h = format!("h{i}");
        seen.alive.insert(h.clone());
        seen.statuses.insert(h, healthy("1.0"));
    }
    seen
}

fn report(seen: &mut Observed, host: &str, outcome: Outcome) {
    let st = seen.statuses.get_mut(host).unwrap();
    st.rollout = Some("r1".into());
    st.outcome = Some(outcome);
    st.digest = Some("sha256:aa".into());
    match outcome {
        Outcome::Good => {
            st.active = Some("2.0".into());
            st.last_good = Some("2.0".into());
            st.state = AppState::Healthy;
        }
        Outcome::Baking => {
            st.active = Some("2.0".into());
            st.state = AppState::Baking;
        }
        Outcome::Reverted => {
            st.active = Some("1.0".into());
            st.state = AppState::Healthy;
        }
        _ => {}
    }
}

/// Applies a decision as the coordinator's shell would.
fn step(r: &mut Rollout, seen: &Observed, now: u64) -> Vec<String> {
    let d = reconcile(r, seen, now);
    r.progress = d.progress;
    d.assign.into_iter().map(|(h, _)| h).collect()
}

#[test]
fn waves_parse_and_end_with_everyone() {
    assert_eq!(
        DEFAULT_WAVES.parse::<Waves>().unwrap().to_string(),
        "1,25%,100%"
    );
    assert_eq!("1,10%".parse::<Waves>().unwrap().to_string(), "1,10%,100%");
    assert_eq!(
        "web-1+web-2,50%".parse::<Waves>().unwrap().0[0],
        WaveSize::Hosts(vec!["web-1".into(), "web-2".into()])
    );
    for bad in ["", "1,,2", "0", "0%", "101%", "a/b", "h1,h1", "-1"] {
        assert!(bad.parse::<Waves>().is_err(), "{bad:?} was accepted");
    }
    assert_eq!("10%".parse::<Share>().unwrap(), Share::Percent(10));
    assert!("x".parse::<Share>().is_err());
    assert_eq!(parse_gates("manual", 3).unwrap(), vec![Gate::Manual; 3]);
    assert!(parse_gates("auto,manual", 3).is_err());
    assert!(parse_gates("maybe", 1).is_err());
}

#[test]
fn waves_split_cumulatively_and_never_empty() {
    let hosts: Vec<String> = (1..=10).map(|i| format!("h{i:02}")).collect();
    let w: Waves = "1,25%,100%".parse().unwrap();
    let sizes: Vec<usize> = w.split(&hosts).iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![1, 2, 7]);
    let w: Waves = "h05,50%".parse().unwrap();
    let split = w.split(&hosts);
    assert_eq!(split[0], vec!["h05".to_string()]);
    assert_eq!(split[1].len(), 4);
    assert!(!split[1].contains(&"h05".to_string()));
    // A share that adds no host still takes one.
    let w: Waves = "1,1%,100%".parse().unwrap();
    assert_eq!(w.split(&hosts)[1].len(), 1);
}

#[test]
fn a_wave_advances_only_after_every_host_baked() {
    let mut r = rollout(spec("1,100%"));
    let mut seen = fleet(3);
    assert_eq!(step(&mut r, &seen, 10), vec!["h1"]);
    assert_eq!(r.progress.targets, vec!["h1", "h2", "h3"]);
    // Nothing more while the canary bakes.
    report(&mut seen, "h1", Outcome::Claimed);
    assert!(step(&mut r, &seen, 20).is_empty());
    report(&mut seen, "h1", Outcome::Baking);
    assert!(step(&mut r, &seen, 30).is_empty());
    report(&mut seen, "h1", Outcome::Good);
    assert!(
        step(&mut r, &seen, 40).is_empty(),
        "the wave's own bake runs first"
    );
    assert_eq!(r.progress.wave_baked_ms, Some(40));
    assert!(step(&mut r, &seen, 1_039).is_empty());
    assert!(
        step(&mut r, &seen, 1_040).is_empty(),
        "the next wave starts"
    );
    assert_eq!(r.progress.wave, 1);
    assert_eq!(step(&mut r, &seen, 1_041), vec!["h2", "h3"]);
    assert_eq!(r.progress.digest.as_deref(), Some("sha256:aa"));
    report(&mut seen, "h2", Outcome::Good);
    report(&mut seen, "h3", Outcome::Good);
    step(&mut r, &seen, 1_050);
    step(&mut r, &seen, 2_050);
    assert_eq!(r.progress.phase, Phase::Succeeded);
    assert_eq!(
        reconcile(&r, &seen, 9_000).progress,
        r.progress,
        "over is over"
    );
}

#[test]
fn a_failing_canary_aborts_and_nobody_else_gets_the_version() {
    let mut r = rollout(spec("1,100%"));
    let mut seen = fleet(3);
    step(&mut r, &seen, 0);
    report(&mut seen, "h1", Outcome::Failed);
    let sent = step(&mut r, &seen, 10);
    // h1 rolled back by itself: nothing to send, so the abort is over.
    assert!(sent.is_empty());
    assert_eq!(r.progress.phase, Phase::Aborted);
    assert!(r
        .progress
        .reason
        .as_deref()
        .unwrap()
        .contains("1 of 3 hosts failed"));
    assert!(step(&mut r, &seen, 5_000).is_empty());
}

#[test]
fn failures_above_the_budget_send_back_every_host_that_got_the_version() {
    let mut s = spec("1,100%");
    s.max_failed = Share::Count(1);
    let mut r = rollout(s);
    let mut seen = fleet(4);
    step(&mut r, &seen, 0);
    report(&mut seen, "h1", Outcome::Good);
    step(&mut r, &seen, 1);
    step(&mut r, &seen, 2_000);
    assert_eq!(step(&mut r, &seen, 2_001), vec!["h2", "h3", "h4"]);
    report(&mut seen, "h2", Outcome::Failed);
    step(&mut r, &seen, 2_002);
    assert_eq!(
        r.progress.phase,
        Phase::Running,
        "one failure is within the budget"
    );
    report(&mut seen, "h3", Outcome::Good);
    report(&mut seen, "h4", Outcome::Failed);
    let d = reconcile(&r, &seen, 2_003);
    r.progress = d.progress.clone();
    assert_eq!(r.progress.phase, Phase::RollingBack);
    let sent: Vec<_> = d
        .assign
        .iter()
        .map(|(h, a)| (h.as_str(), a.kind, a.version.as_str()))
        .collect();
    assert_eq!(
        sent,
        vec![
            ("h1", AssignKind::Revert, "1.0"),
            ("h3", AssignKind::Revert, "1.0")
        ]
    );
    assert!(step(&mut r, &seen, 2_004).is_empty(), "sent once");
    report(&mut seen, "h1", Outcome::Reverted);
    step(&mut r, &seen, 2_005);
    assert_eq!(r.progress.phase, Phase::RollingBack, "h3 is not back yet");
    report(&mut seen, "h3", Outcome::Reverted);
    step(&mut r, &seen, 2_006);
    assert_eq!(r.progress.phase, Phase::Aborted);
}

#[test]
fn on_abort_stop_sends_nobody_back() {
    let mut s = spec("1,100%");
    s.on_abort = OnAbort::Stop;
    let mut r = rollout(s);
    let mut seen = fleet(2);
    step(&mut r, &seen, 0);
    report(&mut seen, "h1", Outcome::Good);
    r.intent.abort = Some(Mark {
        by: "bob".into(),
        at_ms: 5,
        reason: Some("wrong prices".into()),
    });
    assert!(step(&mut r, &seen, 10).is_empty());
    assert_eq!(r.progress.phase, Phase::Aborted);
    assert_eq!(
        r.progress.reason.as_deref(),
        Some("aborted by bob: wrong prices")
    );
}

#[test]
fn a_halt_stops_new_starts_and_the_clock_of_the_wave() {
    let mut s = spec("1,100%");
    s.wave_deadline_ms = Some(100);
    let mut r = rollout(s);
    let mut seen = fleet(3);
    seen.halted = true;
    assert!(step(&mut r, &seen, 0).is_empty());
    assert!(
        step(&mut r, &seen, 10_000).is_empty(),
        "no deadline while halted"
    );
    assert_eq!(r.progress.phase, Phase::Running);
    seen.halted = false;
    assert_eq!(step(&mut r, &seen, 10_001), vec!["h1"]);
    assert!(step(&mut r, &seen, 10_050).is_empty());
    assert_eq!(r.progress.phase, Phase::Running);
    step(&mut r, &seen, 10_200);
    // h1 never claimed its assignment: nothing to send back.
    assert_eq!(r.progress.phase, Phase::Aborted, "the deadline runs again");
    assert!(r
        .progress
        .reason
        .as_deref()
        .unwrap()
        .contains("did not finish"));
}

#[test]
fn a_paused_rollout_starts_nothing_until_resumed() {
    let mut r = rollout(spec("1,100%"));
    let mut seen = fleet(2);
    step(&mut r, &seen, 0);
    report(&mut seen, "h1", Outcome::Good);
    r.intent.paused = Some(Mark {
        by: "bob".into(),
        at_ms: 1,
        reason: None,
    });
    step(&mut r, &seen, 1);
    assert_eq!(r.progress.phase, Phase::Paused);
    assert!(step(&mut r, &seen, 50_000).is_empty());
    assert_eq!(r.progress.wave, 0);
    r.intent.paused = None;
    step(&mut r, &seen, 50_001);
    assert_eq!(r.progress.phase, Phase::Running);
    step(&mut r, &seen, 50_001 + 1_000);
    assert_eq!(r.progress.wave, 1);
}

#[test]
fn a_manual_gate_waits_for_an_approval_of_the_next_wave() {
    let mut s = spec("1,100%");
    s.gates = vec![Gate::Manual, Gate::Auto];
    let mut r = rollout(s);
    let mut seen = fleet(2);
    step(&mut r, &seen, 0);
    report(&mut seen, "h1", Outcome::Good);
    step(&mut r, &seen, 1);
    step(&mut r, &seen, 2_000);
    assert_eq!(r.progress.phase, Phase::AwaitingApproval);
    assert!(step(&mut r, &seen, 90_000).is_empty());
    r.intent.approvals.push(Approval {
        wave: 1,
        mark: Mark {
            by: "carol".into(),
            at_ms: 90_000,
            reason: None,
        },
    });
    assert_eq!(step(&mut r, &seen, 90_001), vec!["h2"]);
    assert_eq!(r.progress.phase, Phase::Running);
}

#[test]
fn min_healthy_limits_how_many_hosts_deploy_at_once() {
    let mut s = spec("100%");
    s.min_healthy = Share::Count(2);
    let mut r = rollout(s);
    let mut seen = fleet(4);
    assert_eq!(step(&mut r, &seen, 0), vec!["h1", "h2"]);
    assert!(step(&mut r, &seen, 1).is_empty(), "two must stay healthy");
    report(&mut seen, "h1", Outcome::Good);
    assert_eq!(step(&mut r, &seen, 2), vec!["h3"]);
    // A host that goes missing is not healthy either.
    seen.alive.remove("h2");
    seen.statuses.remove("h2");
    assert!(step(&mut r, &seen, 3).is_empty());
}

#[test]
fn a_min_healthy_of_every_host_aborts_at_once() {
    let mut s = spec("100%");
    s.min_healthy = Share::Percent(100);
    let mut r = rollout(s);
    assert!(step(&mut r, &fleet(3), 0).is_empty());
    assert_eq!(r.progress.phase, Phase::Aborted);
}

#[test]
fn a_missing_host_holds_its_wave_until_the_deadline() {
    let mut s = spec("100%");
    s.wave_deadline_ms = Some(1_000);
    s.on_abort = OnAbort::Stop;
    let mut r = rollout(s);
    let mut seen = fleet(2);
    step(&mut r, &seen, 0);
    seen.alive.remove("h2");
    seen.statuses.remove("h2");
    report(&mut seen, "h1", Outcome::Good);
    step(&mut r, &seen, 500);
    assert_eq!(r.progress.phase, Phase::Running);
    step(&mut r, &seen, 1_001);
    assert_eq!(r.progress.phase, Phase::Aborted);
    assert!(r
        .progress
        .reason
        .as_deref()
        .unwrap()
        .contains("did not finish within 1s"));
}

#[test]
fn a_new_coordinator_decides_the_same_from_what_is_stored() {
    let mut r = rollout(spec("1,100%"));
    let mut seen = fleet(3);
    step(&mut r, &seen, 0);
    report(&mut seen, "h1", Outcome::Good);
    step(&mut r, &seen, 10);
    let stored = serde_json::to_string(&r).unwrap();
    let again: Rollout = serde_json::from_str(&stored).unwrap();
    assert_eq!(reconcile(&again, &seen, 2_000), reconcile(&r, &seen, 2_000));
    // And it never goes back: the hosts already assigned are not assigned again.
    assert!(step(&mut r, &seen, 11).is_empty());
}

#[test]
fn a_host_already_on_the_version_counts_as_good() {
    let mut r = rollout(spec("100%"));
    let mut seen = fleet(2);
    *seen.statuses.get_mut("h2").unwrap() = healthy("2.0");
    assert_eq!(step(&mut r, &seen, 0), vec!["h1"]);
    assert!(r.progress.hosts["h2"].already);
    report(&mut seen, "h1", Outcome::Good);
    step(&mut r, &seen, 1);
    step(&mut r, &seen, 1_001);
    assert_eq!(r.progress.phase, Phase::Succeeded);
}

#[test]
fn nobody_running_the_app_aborts() {
    let mut r = rollout(spec("100%"));
    step(&mut r, &Observed::default(), 0);
    assert_eq!(r.progress.phase, Phase::Aborted);
}

#[test]
fn a_large_wave_is_assigned_a_hundred_hosts_a_round() {
    let mut r = rollout(spec("100%"));
    let seen = fleet(250);
    assert_eq!(step(&mut r, &seen, 0).len(), MAX_NEW_PER_ROUND);
    assert_eq!(step(&mut r, &seen, 1).len(), MAX_NEW_PER_ROUND);
    assert_eq!(step(&mut r, &seen, 2).len(), 50);
    assert!(step(&mut r, &seen, 3).is_empty());
    assert_eq!(r.progress.hosts.len(), 250);
}
