//! Every transition of `Machine::step`, fault included, on a fake clock
//! (instants made by adding to one base) and fake facts.

use super::*;

const S: Duration = Duration::from_secs(1);

/// The releases the fake store and disk hold; `good` is oldest first.
#[derive(Default)]
struct World {
    disk: Vec<&'static str>,
    good: Vec<&'static str>,
}

impl Facts for World {
    fn on_disk(&self, version: &str) -> bool {
        self.disk.contains(&version)
    }

    fn recorded(&self, version: &str) -> bool {
        self.disk.contains(&version)
    }

    fn newest_good(&self, except: Option<&str>) -> Option<String> {
        self.good
            .iter()
            .rev()
            .find(|g| Some(**g) != except)
            .map(|g| g.to_string())
    }
}

/// What the fake shell answers for each effect with a result.
#[derive(Clone)]
struct Script {
    journal: Result<(), String>,
    stage: Result<(), String>,
    veto: Option<&'static str>,
    swap: Result<(), String>,
    restore: bool,
    restart: Vec<Result<(), String>>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            journal: Ok(()),
            stage: Ok(()),
            veto: None,
            swap: Ok(()),
            restore: true,
            restart: Vec::new(),
        }
    }
}

impl Script {
    fn result(&mut self, effect: &Effect) -> Option<Input> {
        Some(match effect {
            Effect::Begin(_) => Input::Journaled(self.journal.clone()),
            Effect::Stage { .. } => Input::Staged(self.stage.clone()),
            Effect::Vet { .. } => Input::Cleared(match self.veto {
                Some(hook) => Err(Veto {
                    hook: hook.into(),
                    reason: "no".into(),
                }),
                None => Ok(()),
            }),
            Effect::Swap { .. } => Input::Swapped(self.swap.clone()),
            Effect::Restore { .. } => Input::Restored(self.restore),
            Effect::Restart { .. } => Input::Restarted(if self.restart.is_empty() {
                Ok(())
            } else {
                self.restart.remove(0)
            }),
            _ => return None,
        })
    }
}

/// Feeds `input` and every scripted result back, as the shell does; returns
/// all effects in order.
fn run(m: &mut Machine, input: Input, now: Instant, w: &World, script: &mut Script) -> Vec<Effect> {
    let mut all = Vec::new();
    let mut next = Some(input);
    while let Some(input) = next.take() {
        let fx = m.step(input, now, w);
        for (i, e) in fx.iter().enumerate() {
            if let Some(r) = script.result(e) {
                assert_eq!(i, fx.len() - 1, "only the last effect has a result: {fx:?}");
                next = Some(r);
            }
        }
        all.extend(fx);
    }
    all
}

fn check(name: &str, severity: Severity) -> CheckSpec {
    CheckSpec {
        name: name.into(),
        interval: 10 * S,
        rule: Rule::Consecutive(2),
        on_error: OnError::Fail,
        severity,
        min_conclusive: 1,
    }
}

fn settings(auto_rollback: AutoRollback) -> Settings {
    Settings {
        bake: 60 * S,
        max_bake: 120 * S,
        auto_rollback,
        checks: vec![check("health", Severity::Critical)],
    }
}

fn world() -> World {
    World {
        disk: vec!["1.0", "1.1"],
        good: vec!["1.0"],
    }
}

fn steady_on(version: &str, w: &World, t0: Instant) -> Machine {
    let start = Start::Steady {
        version: version.into(),
        note: None,
    };
    Machine::new(settings(AutoRollback::Bake), start, false, false, w, t0)
}

fn operator() -> Actor {
    Actor {
        uid: Some(1000),
        name: "ops".into(),
    }
}

fn deploy(version: &str, wait: bool) -> Input {
    Input::Deploy {
        version: version.into(),
        actor: operator(),
        wait,
        staged: false,
    }
}

fn replies(fx: &[Effect]) -> Vec<Answer> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Reply(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

/// A short name per effect, to compare sequences.
fn names(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .map(|e| match e {
            Effect::Begin(i) => format!("begin {}", i.op.as_str()),
            Effect::StepDone(s) => format!("done {}", s.name()),
            Effect::End => "end".into(),
            Effect::Stage { version } => format!("stage {version}"),
            Effect::Vet { version, .. } => format!("vet {version}"),
            Effect::Snapshot { of } => format!("snapshot {of}"),
            Effect::Swap { to, .. } => format!("swap {to}"),
            Effect::Restore { of } => format!("restore {of}"),
            Effect::Restart { version, .. } => format!("restart {version}"),
            Effect::Discard { version } => format!("discard {version}"),
            Effect::Release { version, state, .. } => format!("release {version} {state:?}"),
            Effect::Record(n) => format!("record {:?}", n.kind),
            Effect::Save => "save".into(),
            Effect::Watch { version, .. } => format!("watch {version}"),
            Effect::RunCheck { index, .. } => format!("run {index}"),
            Effect::RecordCheck { index, .. } => format!("result {index}"),
            Effect::Notify(t) => match t {
                Tell::Activated { .. } => "notify activated".into(),
                Tell::RolledBack { .. } => "notify rolled-back".into(),
                Tell::Degraded { .. } => "notify degraded".into(),
                Tell::Held { .. } => "notify held".into(),
            },
            Effect::Prune => "prune".into(),
            Effect::Count(c) => format!("count {c:?}"),
            Effect::Reply(_) => "reply".into(),
        })
        .collect()
}

fn has(fx: &[Effect], name: &str) -> bool {
    names(fx).iter().any(|n| n == name)
}

/// Runs the watch's checks at `now` with `outcome` each, returning the effects.
fn checks_at(m: &mut Machine, now: Instant, outcome: Outcome, w: &World) -> Vec<Effect> {
    let mut script = Script::default();
    let mut all = run(m, Input::Tick, now, w, &mut script);
    let runs: Vec<(usize, u64)> = all
        .iter()
        .filter_map(|e| match e {
            Effect::RunCheck {
                index, generation, ..
            } => Some((*index, *generation)),
            _ => None,
        })
        .collect();
    for (index, generation) in runs {
        let done = Input::CheckDone {
            generation,
            index,
            outcome,
            summary: format!("said {}", outcome.as_str()),
        };
        all.extend(run(m, done, now, w, &mut script));
    }
    all
}

/// A machine baking 1.1 (deployed at `t0`) over a steady 1.0.
fn baking(t0: Instant, w: &mut World) -> Machine {
    w.disk.retain(|v| *v != "1.1");
    let mut m = steady_on("1.0", w, t0);
    let fx = run(&mut m, deploy("1.1", false), t0, w, &mut Script::default());
    w.disk.push("1.1");
    assert!(matches!(m.state(), State::Baking { .. }), "{fx:?}");
    m
}

#[test]
fn a_deploy_goes_through_every_step_in_order() {
    let t0 = Instant::now();
    let mut w = world();
    w.disk.retain(|v| *v != "1.1");
    let mut m = steady_on("1.0", &w, t0);
    let fx = run(&mut m, deploy("1.1", false), t0, &w, &mut Script::default());
    assert_eq!(
        names(&fx),
        [
            "begin deploy",
            "save",
            "stage 1.1",
            "done stage",
            "vet 1.1",
            "snapshot 1.0",
            "swap 1.1",
            "done swap",
            "release 1.1 Active",
            "save",
            "restart 1.1",
            "done restart",
            "end",
            "notify activated",
            "watch 1.1",
            "save",
            "reply",
        ]
    );
    assert_eq!(replies(&fx), [Answer::Deploy(Ok(DeployOutcome::Baking))]);
    assert_eq!(
        m.state(),
        &State::Baking {
            version: "1.1".into(),
            until: t0 + 60 * S,
            max_until: t0 + 120 * S,
            extended: false,
        }
    );
    assert_eq!(m.active(), Some("1.1"));
    assert_eq!(
        m.watching().map(|w| w.1),
        Some(Some("1.0")),
        "checks learn the target"
    );
}

#[test]
fn a_deploy_that_waits_parks_its_reply_until_the_bake_ends() {
    let t0 = Instant::now();
    let mut w = world();
    w.disk.retain(|v| *v != "1.1");
    let mut m = steady_on("1.0", &w, t0);
    let fx = run(&mut m, deploy("1.1", true), t0, &w, &mut Script::default());
    assert_eq!(replies(&fx), [Answer::Park]);
    w.disk.push("1.1");
    let mut fx = Vec::new();
    for s in [10, 20, 30, 40, 50, 60] {
        fx = checks_at(&mut m, t0 + s * S, Outcome::Pass, &w);
    }
    assert_eq!(replies(&fx), [Answer::Waiters(DeployOutcome::Good)]);
    assert!(
        has(&fx, "release 1.1 Good") && has(&fx, "prune"),
        "{:?}",
        names(&fx)
    );
    assert_eq!(
        m.state(),
        &State::Steady {
            version: "1.1".into(),
            note: None
        }
    );
}

/// A deploy whose step fails before the release went live: the app is as it
/// was, the reply says why, and only a vetoed copy is kept.
#[test]
fn a_deploy_that_fails_before_its_swap_changes_nothing() {
    let t0 = Instant::now();
    let fail = || Err("boom".to_string());
    let cases: Vec<(&str, Script, Refusal, bool)> = vec![
        (
            "journal",
            Script {
                journal: fail(),
                ..Script::default()
            },
            Refusal::Failed,
            false,
        ),
        (
            "stage",
            Script {
                stage: fail(),
                ..Script::default()
            },
            Refusal::Failed,
            true,
        ),
        (
            "veto",
            Script {
                veto: Some("gate"),
                ..Script::default()
            },
            Refusal::Vetoed {
                hook: "gate".into(),
                version: "1.1".into(),
                reason: "no".into(),
            },
            false,
        ),
        (
            "swap",
            Script {
                swap: fail(),
                ..Script::default()
            },
            Refusal::Failed,
            true,
        ),
    ];
    for (what, mut script, refusal, discarded) in cases {
        let mut w = world();
        w.disk.retain(|v| *v != "1.1");
        let mut m = steady_on("1.0", &w, t0);
        let before = m.state().clone();
        let fx = run(&mut m, deploy("1.1", false), t0, &w, &mut script);
        assert_eq!(replies(&fx), [Answer::Deploy(Err(refusal))], "{what}");
        assert_eq!(m.state(), &before, "{what}: the prior state is back");
        assert_eq!(m.active(), Some("1.0"), "{what}");
        assert_eq!(
            has(&fx, "discard 1.1"),
            discarded,
            "{what}: {:?}",
            names(&fx)
        );
        assert!(!has(&fx, "restart 1.1"), "{what}");
        assert!(has(&fx, "count Deploy(\"refused\")"), "{what}");
        if what != "journal" {
            assert!(has(&fx, "end"), "{what}: the journal is cleared");
            assert!(has(&fx, "record DeployFailed"), "{what}");
        }
        if what == "veto" {
            assert!(
                has(&fx, "release 1.1 Failed"),
                "the vetoed release is failed"
            );
        }
    }
}

#[test]
fn a_restart_that_fails_rolls_the_deploy_back_or_degrades_without_a_target() {
    let t0 = Instant::now();
    let mut w = world();
    w.disk.retain(|v| *v != "1.1");
    let mut m = steady_on("1.0", &w, t0);
    let mut script = Script {
        restart: vec![Err("exit 1".into())],
        ..Script::default()
    };
    let fx = run(&mut m, deploy("1.1", true), t0, &w, &mut script);
    assert_eq!(
        names(&fx)[10..],
        [
            "restart 1.1",
            "begin rollback",
            "save",
            "swap 1.0",
            "done swap",
            "release 1.1 Failed",
            "record RolledBack",
            "notify rolled-back",
            "save",
            "restore 1.0",
            "done restore",
            "restart 1.0",
            "done restart",
            "end",
            "watch 1.0",
            "save",
            "count Rollback(\"automatic\")",
            "prune",
            "count Deploy(\"rolled-back\")",
            "reply",
        ]
    );
    assert_eq!(
        replies(&fx),
        [Answer::Deploy(Ok(DeployOutcome::RolledBack {
            to: "1.0".into(),
            reason: "exit 1".into()
        }))]
    );
    assert!(m.restored(), "the loop guard is set");
    assert!(
        matches!(m.state(), State::Steady { note: Some(n), .. } if n.contains("rolled back from 1.1"))
    );

    // No good release to go back to: the deploy's answer is degraded.
    let w = World {
        disk: vec!["1.0"],
        good: vec![],
    };
    let start = Start::Baking {
        version: "1.0".into(),
        left: 30 * S,
    };
    let mut m = Machine::new(settings(AutoRollback::Bake), start, false, false, &w, t0);
    let mut script = Script {
        restart: vec![Err("exit 1".into())],
        ..Script::default()
    };
    // 1.0 is still baking: a deploy waits.
    let fx = run(&mut m, deploy("1.1", false), t0, &w, &mut script);
    assert_eq!(
        replies(&fx),
        [Answer::Deploy(Err(Refusal::Busy(AppState::Baking)))]
    );
    let mut m = Machine::new(
        settings(AutoRollback::Bake),
        Start::Empty,
        false,
        false,
        &w,
        t0,
    );
    let w = World::default();
    let fx = run(&mut m, deploy("1.1", false), t0, &w, &mut script);
    let [Answer::Deploy(Ok(DeployOutcome::Degraded { reason }))] = &replies(&fx)[..] else {
        panic!("{fx:?}");
    };
    assert!(reason.contains("rollback impossible"), "{reason}");
    assert!(matches!(m.state(), State::Degraded { .. }));
    assert!(has(&fx, "end"), "the deploy's journal is cleared");
    let n = names(&fx);
    let at = |name: &str| n.iter().position(|x| x == name);
    assert!(
        at("notify degraded").is_some() && at("notify degraded") < at("prune"),
        "a degraded app still honours keep_releases: {n:?}"
    );
    assert_eq!(n.iter().filter(|x| *x == "prune").count(), 1, "{n:?}");
}

#[test]
fn commands_that_cannot_run_now_are_refused_with_the_reason() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = baking(t0, &mut w);
    let mut s = Script::default();
    let busy = Refusal::Busy(AppState::Baking);
    let fx = run(&mut m, deploy("1.2", false), t0, &w, &mut s);
    assert_eq!(replies(&fx), [Answer::Deploy(Err(busy.clone()))]);
    let activate = Input::Activate {
        version: "1.0".into(),
        actor: operator(),
    };
    let fx = run(&mut m, activate, t0, &w, &mut s);
    assert_eq!(replies(&fx), [Answer::Switch(Err(busy))]);

    let mut m = steady_on("1.1", &w, t0);
    let fx = run(&mut m, deploy("1.0", false), t0, &w, &mut s);
    assert_eq!(
        replies(&fx),
        [Answer::Deploy(Err(Refusal::ReleaseExists("1.0".into())))]
    );
    let rollback = |to: Option<&str>| Input::Rollback {
        to: to.map(str::to_string),
        reason: None,
        actor: operator(),
    };
    let fx = run(&mut m, rollback(Some("1.1")), t0, &w, &mut s);
    assert_eq!(
        replies(&fx),
        [Answer::Switch(Err(Refusal::AlreadyActive("1.1".into())))]
    );
    let fx = run(&mut m, rollback(Some("0.9")), t0, &w, &mut s);
    assert_eq!(
        replies(&fx),
        [Answer::Switch(Err(Refusal::NotFound("0.9".into())))]
    );
    let mut empty = Machine::new(
        settings(AutoRollback::Bake),
        Start::Empty,
        false,
        false,
        &w,
        t0,
    );
    let fx = run(&mut empty, rollback(None), t0, &w, &mut s);
    assert_eq!(replies(&fx), [Answer::Switch(Err(Refusal::NoTarget))]);
    let lonely = World {
        disk: vec!["1.1"],
        good: vec!["1.1"],
    };
    let mut m = steady_on("1.1", &lonely, t0);
    let fx = run(&mut m, rollback(None), t0, &lonely, &mut s);
    assert_eq!(replies(&fx), [Answer::Switch(Err(Refusal::NoTarget))]);
}

#[test]
fn the_bake_runs_checks_on_their_interval_and_passes_at_its_end() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = baking(t0, &mut w);
    assert_eq!(
        m.next_wake(),
        Some(t0 + 10 * S),
        "first run one interval after the restart"
    );
    let fx = run(&mut m, Input::Tick, t0 + 9 * S, &w, &mut Script::default());
    assert!(fx.is_empty(), "nothing due yet: {fx:?}");
    let fx = run(&mut m, Input::Tick, t0 + 10 * S, &w, &mut Script::default());
    assert_eq!(names(&fx), ["run 0"]);
    // In flight: not started again, and not what the next wake waits for.
    assert_eq!(m.next_wake(), Some(t0 + 60 * S));
    let fx = run(&mut m, Input::Tick, t0 + 25 * S, &w, &mut Script::default());
    assert!(fx.is_empty(), "{fx:?}");
    let Some((_, _, generation)) = m.watching() else {
        panic!("watching")
    };
    let done = Input::CheckDone {
        generation,
        index: 0,
        outcome: Outcome::Pass,
        summary: "ok".into(),
    };
    let fx = run(&mut m, done, t0 + 25 * S, &w, &mut Script::default());
    assert_eq!(names(&fx), ["result 0"]);
    assert_eq!(m.counters(0), Some((0, 1)));
    // The window is over and the check is healthy: good.
    let fx = checks_at(&mut m, t0 + 60 * S, Outcome::Pass, &w);
    assert!(has(&fx, "release 1.1 Good"), "{:?}", names(&fx));
    assert!(has(&fx, "record MarkedGood"));
    assert!(has(&fx, "count Deploy(\"good\")"));
    assert_eq!(m.bake_until(), None);
}

#[test]
fn a_bake_stays_open_until_a_failing_check_recovers() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = baking(t0, &mut w);
    // One failure (below fail_after = 2) at the end of the window: pending.
    let fx = checks_at(&mut m, t0 + 60 * S, Outcome::Fail, &w);
    assert!(!has(&fx, "release 1.1 Good"), "{:?}", names(&fx));
    assert!(matches!(m.state(), State::Baking { .. }));
    let fx = checks_at(&mut m, t0 + 70 * S, Outcome::Pass, &w);
    assert!(has(&fx, "release 1.1 Good"), "{:?}", names(&fx));
}

#[test]
fn a_critical_check_failing_during_the_bake_rolls_back_and_tells_the_waiters() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = baking(t0, &mut w);
    checks_at(&mut m, t0 + 10 * S, Outcome::Fail, &w);
    let fx = checks_at(&mut m, t0 + 20 * S, Outcome::Fail, &w);
    let n = names(&fx);
    let at = |name: &str| n.iter().position(|x| x == name).unwrap_or(usize::MAX);
    assert!(at("record CheckFailed") < at("begin rollback"), "{n:?}");
    assert!(at("swap 1.0") < at("restore 1.0") && at("restore 1.0") < at("restart 1.0"));
    assert!(
        has(&fx, "prune") && at("restart 1.0") < at("prune"),
        "pruned after the rollback: {n:?}"
    );
    let [Answer::Waiters(DeployOutcome::RolledBack { to, reason })] = &replies(&fx)[..] else {
        panic!("{n:?}");
    };
    assert_eq!(to, "1.0");
    assert!(
        reason.contains("`health` failed 2 time(s) in a row: said fail"),
        "{reason}"
    );
    assert_eq!(m.active(), Some("1.0"));
    assert!(m.restored());
    // The release restored fails too (auto_rollback = always): degrade, no swap.
    let mut m2 = m.clone();
    m2.step(
        Input::Reload(settings(AutoRollback::Always)),
        t0 + 20 * S,
        &w,
    );
    checks_at(&mut m2, t0 + 30 * S, Outcome::Fail, &w);
    let fx = checks_at(&mut m2, t0 + 40 * S, Outcome::Fail, &w);
    assert!(!has(&fx, "begin rollback"), "{:?}", names(&fx));
    assert!(has(&fx, "notify degraded"));
    assert!(matches!(m2.state(), State::Degraded { reason, .. } if reason.contains("failed too")));
}

#[test]
fn a_result_from_an_older_watch_is_dropped() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = steady_on("1.0", &w, t0);
    let (_, _, old) = m.watching().unwrap_or(("", None, 0));
    w.disk.retain(|v| *v != "1.1");
    run(&mut m, deploy("1.1", false), t0, &w, &mut Script::default());
    let fx = m.step(
        Input::CheckDone {
            generation: old,
            index: 0,
            outcome: Outcome::Fail,
            summary: "stale".into(),
        },
        t0 + S,
        &w,
    );
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(m.counters(0), Some((0, 0)));
}

#[test]
fn paused_the_bake_records_failures_but_decides_nothing_until_resumed() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = baking(t0, &mut w);
    let pause = |paused| Input::Pause {
        paused,
        actor: operator(),
    };
    let fx = run(&mut m, pause(true), t0, &w, &mut Script::default());
    assert_eq!(names(&fx), ["save", "record Paused", "reply"]);
    let fx = run(&mut m, pause(true), t0, &w, &mut Script::default());
    assert_eq!(names(&fx), ["reply"], "pausing twice changes nothing");
    checks_at(&mut m, t0 + 10 * S, Outcome::Fail, &w);
    let fx = checks_at(&mut m, t0 + 20 * S, Outcome::Fail, &w);
    let reason = fx.iter().find_map(|e| match e {
        Effect::Record(n) if n.kind == EventKind::CheckFailed => Some(n.reason.clone()),
        _ => None,
    });
    assert!(
        reason.is_some_and(|r| r.contains("[paused: no action]")),
        "{fx:?}"
    );
    assert!(!has(&fx, "begin rollback"));
    let fx = checks_at(&mut m, t0 + 70 * S, Outcome::Pass, &w);
    assert!(
        !has(&fx, "release 1.1 Good"),
        "past the window, still paused"
    );
    run(
        &mut m,
        pause(false),
        t0 + 71 * S,
        &w,
        &mut Script::default(),
    );
    let fx = run(&mut m, Input::Tick, t0 + 72 * S, &w, &mut Script::default());
    assert!(has(&fx, "release 1.1 Good"), "{:?}", names(&fx));
}

#[test]
fn a_warning_check_alerts_but_never_decides_the_bake() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = baking(t0, &mut w);
    let mut s = settings(AutoRollback::Always);
    s.checks = vec![check("lag", Severity::Warning)];
    m.step(Input::Reload(s), t0, &w);
    checks_at(&mut m, t0 + 10 * S, Outcome::Fail, &w);
    let fx = checks_at(&mut m, t0 + 20 * S, Outcome::Fail, &w);
    assert!(
        has(&fx, "record CheckFailed") && !has(&fx, "begin rollback"),
        "{:?}",
        names(&fx)
    );
    let fx = checks_at(&mut m, t0 + 30 * S, Outcome::Fail, &w);
    assert!(
        !has(&fx, "record CheckFailed"),
        "recorded once while it stays unhealthy"
    );
    let fx = run(&mut m, Input::Tick, t0 + 60 * S, &w, &mut Script::default());
    assert!(has(&fx, "release 1.1 Good"), "{:?}", names(&fx));
}

#[test]
fn after_the_bake_an_unhealthy_check_alerts_or_rolls_back_as_configured() {
    let t0 = Instant::now();
    for (auto, rolls_back) in [(AutoRollback::Bake, false), (AutoRollback::Always, true)] {
        let w = world();
        let start = Start::Steady {
            version: "1.1".into(),
            note: None,
        };
        let mut m = Machine::new(settings(auto), start, false, false, &w, t0);
        checks_at(&mut m, t0 + 10 * S, Outcome::Fail, &w);
        let fx = checks_at(&mut m, t0 + 20 * S, Outcome::Fail, &w);
        assert!(has(&fx, "record CheckFailed"), "{auto:?}");
        assert_eq!(
            has(&fx, "swap 1.0"),
            rolls_back,
            "{auto:?}: {:?}",
            names(&fx)
        );
        assert!(
            !has(&fx, "count Deploy(\"rolled-back\")"),
            "no deploy was in progress"
        );
    }
}

#[test]
fn an_operator_rollback_and_its_faults() {
    let t0 = Instant::now();
    let w = world();
    let rollback = Input::Rollback {
        to: None,
        reason: Some("bad prices".into()),
        actor: operator(),
    };
    let mut m = steady_on("1.1", &w, t0);
    let fx = run(&mut m, rollback.clone(), t0, &w, &mut Script::default());
    assert_eq!(
        replies(&fx),
        [
            Answer::Waiters(DeployOutcome::RolledBack {
                to: "1.0".into(),
                reason: "bad prices".into()
            }),
            Answer::Switch(Ok(RollbackDone {
                from: Some("1.1".into()),
                to: "1.0".into()
            }))
        ]
    );
    assert!(
        !m.restored(),
        "the operator chose: automatic rollbacks may act again"
    );
    assert!(has(&fx, "count Rollback(\"operator\")"));

    // The swap fails: nothing changed.
    let mut m = steady_on("1.1", &w, t0);
    let before = m.state().clone();
    let mut s = Script {
        swap: Err("EIO".into()),
        ..Script::default()
    };
    let fx = run(&mut m, rollback.clone(), t0, &w, &mut s);
    assert_eq!(replies(&fx), [Answer::Switch(Err(Refusal::Failed))]);
    assert_eq!(m.state(), &before);
    assert!(has(&fx, "end"));

    // Without a journal the rollback still happens.
    let mut m = steady_on("1.1", &w, t0);
    let mut s = Script {
        journal: Err("ENOSPC".into()),
        ..Script::default()
    };
    let fx = run(&mut m, rollback.clone(), t0, &w, &mut s);
    assert!(
        has(&fx, "swap 1.0") && has(&fx, "restart 1.0"),
        "{:?}",
        names(&fx)
    );

    // Restore or restart failing: rolled back, but degraded.
    for (restore, restart, why) in [
        (false, Ok(()), "could not be restored"),
        (true, Err("exit 3".to_string()), "exit 3"),
    ] {
        let mut m = steady_on("1.1", &w, t0);
        let mut s = Script {
            restore,
            restart: vec![restart],
            ..Script::default()
        };
        let fx = run(&mut m, rollback.clone(), t0, &w, &mut s);
        assert_eq!(m.active(), Some("1.0"));
        assert!(
            matches!(m.state(), State::Degraded { reason, .. } if reason.contains(why)),
            "{:?}",
            m.state()
        );
        assert!(matches!(replies(&fx).last(), Some(Answer::Switch(Ok(_)))));
    }
}

#[test]
fn an_operator_activation_skips_the_bake() {
    let t0 = Instant::now();
    let w = world();
    let mut m = steady_on("1.1", &w, t0);
    let activate = |v: &str| Input::Activate {
        version: v.into(),
        actor: operator(),
    };
    let fx = run(&mut m, activate("1.0"), t0, &w, &mut Script::default());
    assert_eq!(
        names(&fx),
        [
            "begin activate",
            "save",
            "snapshot 1.1",
            "swap 1.0",
            "done swap",
            "release 1.0 Good",
            "save",
            "restart 1.0",
            "done restart",
            "end",
            "watch 1.0",
            "save",
            "notify activated",
            "prune",
            "reply",
        ]
    );
    assert_eq!(
        m.state(),
        &State::Steady {
            version: "1.0".into(),
            note: None
        }
    );
    // The active release again: only its restart (clears a degraded state).
    let fx = run(&mut m, activate("1.0"), t0, &w, &mut Script::default());
    assert!(
        !has(&fx, "swap 1.0") && has(&fx, "restart 1.0"),
        "{:?}",
        names(&fx)
    );
    let fx = run(&mut m, activate("2.0"), t0, &w, &mut Script::default());
    assert_eq!(
        replies(&fx),
        [Answer::Switch(Err(Refusal::NotFound("2.0".into())))]
    );
}

fn intent(op: Op, from: &str, to: &str) -> Intent {
    Intent {
        op,
        from: Some(from.into()),
        to: Some(to.into()),
        why: "check failed".into(),
        actor: "agent".into(),
        check: Some("health".into()),
        automatic: true,
        source: None,
        steps: Vec::new(),
        at_ms: 0,
        before: None,
        staged: false,
    }
}

#[test]
fn start_up_finishes_what_the_journal_left() {
    use Step::*;
    let t0 = Instant::now();
    let w = world();
    let cases: Vec<(Op, Vec<Step>, &str, Vec<&str>)> = vec![
        (
            Op::Deploy,
            vec![Restart],
            "1.1",
            vec![
                "restart 1.1",
                "done restart",
                "end",
                "notify activated",
                "watch 1.1",
                "save",
                "reply",
            ],
        ),
        (
            Op::Rollback,
            vec![Swap, Restore, Restart],
            "1.1",
            vec![
                "swap 1.0",
                "done swap",
                "release 1.1 Failed",
                "record RolledBack",
                "notify rolled-back",
                "save",
                "restore 1.0",
                "done restore",
                "restart 1.0",
                "done restart",
                "end",
                "watch 1.0",
                "save",
                "prune",
                "reply",
            ],
        ),
        (
            Op::Rollback,
            vec![Restart],
            "1.0",
            vec![
                "release 1.1 Failed",
                "record RolledBack",
                "notify rolled-back",
                "save",
                "restart 1.0",
                "done restart",
                "end",
                "watch 1.0",
                "save",
                "prune",
                "reply",
            ],
        ),
        (
            Op::Activate,
            vec![Restart],
            "1.0",
            vec![
                "restart 1.0",
                "done restart",
                "end",
                "watch 1.0",
                "save",
                "notify activated",
                "prune",
                "reply",
            ],
        ),
    ];
    for (op, steps, current, expected) in cases {
        let (from, to) = if op == Op::Deploy {
            ("1.0", "1.1")
        } else {
            ("1.1", "1.0")
        };
        let flow = Flow::recovered(&intent(op, from, to), steps.clone(), 20 * S)
            .unwrap_or_else(|| panic!("{op:?}"));
        let mut m = steady_on(current, &w, t0);
        let fx = run(&mut m, Input::Recover(flow), t0, &w, &mut Script::default());
        assert_eq!(names(&fx), expected, "{op:?} {steps:?}");
        assert_eq!(m.active(), Some(to), "{op:?}");
        if op == Op::Deploy {
            assert_eq!(
                m.bake_until(),
                Some(t0 + 20 * S),
                "the bake resumes with what was left"
            );
        }
        if op == Op::Rollback {
            assert!(m.restored(), "an automatic rollback keeps its loop guard");
        }
    }
    assert!(Flow::recovered(&intent(Op::Prune, "1.0", "1.0"), vec![], S).is_none());

    // A swap that cannot be finished degrades the app.
    let flow = Flow::recovered(&intent(Op::Activate, "1.1", "1.0"), vec![Swap, Restart], S);
    let mut m = steady_on("1.1", &w, t0);
    let mut s = Script {
        swap: Err("EIO".into()),
        ..Script::default()
    };
    let fx = run(
        &mut m,
        Input::Recover(flow.unwrap_or_else(|| panic!())),
        t0,
        &w,
        &mut s,
    );
    assert!(
        has(&fx, "end") && has(&fx, "notify degraded"),
        "{:?}",
        names(&fx)
    );
    assert!(matches!(m.state(), State::Degraded { version: Some(v), .. } if v == "1.1"));
}

#[test]
fn a_steady_start_prunes_and_a_start_into_a_bake_leaves_it_to_the_bake() {
    let (w, t0) = (world(), Instant::now());
    let mut script = Script::default();
    let mut m = steady_on("1.0", &w, t0);
    let fx = run(&mut m, Input::Started, t0, &w, &mut script);
    assert_eq!(names(&fx), ["prune"]);
    let mut w = world();
    let mut m = baking(t0, &mut w);
    let fx = run(&mut m, Input::Started, t0, &w, &mut script);
    assert!(!has(&fx, "prune"), "{:?}", names(&fx));
    assert!(matches!(m.state(), State::Baking { .. }));
}

#[test]
fn a_reload_keeps_counting_unchanged_checks_and_restarts_a_changed_watch() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = baking(t0, &mut w);
    checks_at(&mut m, t0 + 10 * S, Outcome::Fail, &w);
    let mut s = settings(AutoRollback::Bake);
    s.checks[0].interval = 2 * S;
    let fx = m.step(Input::Reload(s.clone()), t0 + 11 * S, &w);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(m.counters(0), Some((1, 1)), "same check, same counters");
    assert_eq!(
        m.next_wake(),
        Some(t0 + 13 * S),
        "due within one new interval"
    );
    s.checks.push(check("orders", Severity::Critical));
    let fx = m.step(Input::Reload(s), t0 + 12 * S, &w);
    assert_eq!(names(&fx), ["watch 1.1", "save"]);
    assert_eq!(
        m.counters(0),
        Some((0, 0)),
        "a new set of checks starts again"
    );
    assert_eq!(
        m.bake_until(),
        Some(t0 + 60 * S),
        "the bake keeps its deadline"
    );
}

#[test]
fn every_state_is_stored_under_its_name() {
    let t0 = Instant::now();
    let w = world();
    let flow = |op| Flow::new(op, "1.1", None, String::new(), Actor::agent(), State::Empty);
    let cases = [
        (State::Empty, AppState::Empty),
        (State::Staging(flow(Op::Deploy)), AppState::Deploying),
        (State::Activating(flow(Op::Deploy)), AppState::Deploying),
        (State::Activating(flow(Op::Rollback)), AppState::RollingBack),
        (State::Restarting(flow(Op::Activate)), AppState::Deploying),
        (
            State::RollingBack(flow(Op::Rollback)),
            AppState::RollingBack,
        ),
        (
            State::Baking {
                version: "1".into(),
                until: t0,
                max_until: t0,
                extended: false,
            },
            AppState::Baking,
        ),
        (
            State::Held {
                version: "1".into(),
                reason: String::new(),
            },
            AppState::Held,
        ),
        (
            State::Steady {
                version: "1".into(),
                note: None,
            },
            AppState::Healthy,
        ),
        (
            State::Degraded {
                version: None,
                reason: String::new(),
            },
            AppState::Degraded,
        ),
    ];
    for (state, stored) in cases {
        assert_eq!(state.app_state(), stored, "{state:?}");
    }
    let m = Machine::new(
        settings(AutoRollback::Bake),
        Start::Degraded {
            version: "1.1".into(),
            reason: "restart failed".into(),
        },
        true,
        true,
        &w,
        t0,
    );
    assert_eq!(m.reason(), Some("restart failed"));
    assert!(m.paused() && m.restored());
}

/// Runs every check at each of `seconds` after `t0` with `outcome`; returns
/// the effects of the last round.
fn rounds(
    m: &mut Machine,
    t0: Instant,
    seconds: &[u32],
    outcome: Outcome,
    w: &World,
) -> Vec<Effect> {
    let mut fx = Vec::new();
    for s in seconds {
        fx = checks_at(m, t0 + *s * S, outcome, w);
    }
    fx
}

#[test]
fn inconclusive_results_never_roll_back_and_hold_the_app_after_max_bake() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = baking(t0, &mut w);
    // Throttled for the whole window: nothing counts, nothing is decided.
    let fx = rounds(&mut m, t0, &[10, 20, 30, 40, 50], Outcome::Inconclusive, &w);
    assert!(!has(&fx, "begin rollback"), "{:?}", names(&fx));
    let fx = rounds(&mut m, t0, &[60], Outcome::Inconclusive, &w);
    assert!(has(&fx, "record BakeExtended"), "{:?}", names(&fx));
    assert!(matches!(m.state(), State::Baking { extended: true, .. }));
    assert_eq!(m.bake_until(), Some(t0 + 120 * S), "now waits for max_bake");
    let fx = rounds(&mut m, t0, &[70, 80], Outcome::Inconclusive, &w);
    assert!(
        !has(&fx, "record BakeExtended"),
        "extended once: {:?}",
        names(&fx)
    );
    let fx = rounds(&mut m, t0, &[90, 100, 110, 120], Outcome::Inconclusive, &w);
    assert!(
        has(&fx, "record Held") && has(&fx, "notify held") && has(&fx, "count Deploy(\"held\")"),
        "{:?}",
        names(&fx)
    );
    let State::Held { version, reason } = m.state() else {
        panic!("{:?}", m.state());
    };
    assert_eq!(version, "1.1");
    assert!(
        reason.contains("`health` had 0 of 1 conclusive run(s) in 11"),
        "{reason}"
    );
    assert_eq!(m.reason(), Some(reason.as_str()));
    assert!(matches!(
        replies(&fx).as_slice(),
        [Answer::Waiters(DeployOutcome::Held { .. })]
    ));
    // Held: even a failing check takes no automatic action.
    let fx = rounds(&mut m, t0, &[130, 140], Outcome::Fail, &w);
    assert!(!has(&fx, "begin rollback"), "{:?}", names(&fx));
    let notes: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Record(n) if n.kind == EventKind::CheckFailed => Some(n.reason.clone()),
            _ => None,
        })
        .collect();
    assert!(
        notes.iter().any(|r| r.contains("[held: no action]")),
        "{notes:?}"
    );
    assert_eq!(m.phase(), Phase::Bake, "a held release was never accepted");
}

#[test]
fn a_bake_passes_once_conclusive_runs_arrive_within_max_bake() {
    let t0 = Instant::now();
    let mut w = world();
    let mut m = baking(t0, &mut w);
    rounds(
        &mut m,
        t0,
        &[10, 20, 30, 40, 50, 60],
        Outcome::Inconclusive,
        &w,
    );
    assert!(matches!(m.state(), State::Baking { extended: true, .. }));
    let fx = rounds(&mut m, t0, &[70], Outcome::Pass, &w);
    assert!(has(&fx, "release 1.1 Good"), "{:?}", names(&fx));
    assert_eq!(replies(&fx), [Answer::Waiters(DeployOutcome::Good)]);
    // A pass followed by inconclusive runs still counts: the last conclusive
    // result decides.
    let mut m = baking(t0, &mut w);
    rounds(&mut m, t0, &[10], Outcome::Pass, &w);
    let fx = rounds(&mut m, t0, &[20, 30, 40, 50, 60], Outcome::Inconclusive, &w);
    assert!(has(&fx, "release 1.1 Good"), "{:?}", names(&fx));
}

#[test]
fn min_conclusive_asks_for_more_runs() {
    let t0 = Instant::now();
    let mut w = world();
    let mut s = settings(AutoRollback::Bake);
    s.checks[0].min_conclusive = 3;
    let mut m = baking(t0, &mut w);
    let fx = run(&mut m, Input::Reload(s), t0, &w, &mut Script::default());
    assert!(fx.is_empty(), "same counting: the watch goes on");
    rounds(&mut m, t0, &[10, 20], Outcome::Pass, &w);
    let fx = rounds(&mut m, t0, &[30, 40, 50, 60], Outcome::Inconclusive, &w);
    assert!(has(&fx, "record BakeExtended"), "2 of 3: {:?}", names(&fx));
    let fx = rounds(&mut m, t0, &[70], Outcome::Pass, &w);
    assert!(has(&fx, "release 1.1 Good"), "{:?}", names(&fx));
}

#[test]
fn promote_marks_a_held_or_baking_release_good_and_nothing_else() {
    let t0 = Instant::now();
    let mut w = world();
    let promote = || Input::Promote {
        reason: Some("orders verified by hand".into()),
        actor: operator(),
    };
    let mut m = baking(t0, &mut w);
    rounds(
        &mut m,
        t0,
        &(1..=12).map(|i| i * 10).collect::<Vec<u32>>(),
        Outcome::Inconclusive,
        &w,
    );
    assert!(matches!(m.state(), State::Held { .. }));
    let fx = run(&mut m, promote(), t0 + 130 * S, &w, &mut Script::default());
    assert_eq!(
        names(&fx),
        [
            "record Promoted",
            "release 1.1 Good",
            "save",
            "record MarkedGood",
            "count Deploy(\"good\")",
            "prune",
            "reply",
            "reply"
        ]
    );
    assert_eq!(
        replies(&fx).last(),
        Some(&Answer::Promoted(Ok("1.1".into())))
    );
    assert!(matches!(m.state(), State::Steady { .. }));
    assert_eq!(m.phase(), Phase::Steady);
    // Steady: nothing to promote.
    let fx = run(&mut m, promote(), t0 + 131 * S, &w, &mut Script::default());
    assert_eq!(
        replies(&fx),
        [Answer::Promoted(Err(Refusal::NotPromotable(
            AppState::Healthy
        )))]
    );
    // A release still baking can be promoted early.
    let mut m = baking(t0, &mut w);
    let fx = run(&mut m, promote(), t0 + S, &w, &mut Script::default());
    assert!(has(&fx, "release 1.1 Good"), "{:?}", names(&fx));
}

#[test]
fn a_held_app_restarts_held_and_can_be_rolled_back() {
    let t0 = Instant::now();
    let mut w = world();
    let start = Start::Held {
        version: "1.1".into(),
        reason: "no verdict".into(),
    };
    let mut m = Machine::new(settings(AutoRollback::Bake), start, false, false, &w, t0);
    assert_eq!(m.state().app_state(), AppState::Held);
    assert_eq!(m.reason(), Some("no verdict"));
    w.good = vec!["1.0"];
    let fx = run(
        &mut m,
        Input::Rollback {
            to: None,
            reason: None,
            actor: operator(),
        },
        t0,
        &w,
        &mut Script::default(),
    );
    assert!(has(&fx, "swap 1.0"), "{:?}", names(&fx));
    assert!(has(&fx, "release 1.1 Failed"), "{:?}", names(&fx));
}

fn stage(version: &str) -> Input {
    Input::Stage {
        version: version.into(),
        actor: operator(),
    }
}

#[test]
fn a_stage_journals_stages_and_ends_where_it_began() {
    let t0 = Instant::now();
    let w = World {
        disk: vec!["1.0"],
        good: vec!["1.0"],
    };
    let mut m = steady_on("1.0", &w, t0);
    let fx = run(&mut m, stage("1.2"), t0, &w, &mut Script::default());
    assert_eq!(
        names(&fx),
        [
            "begin stage",
            "save",
            "stage 1.2",
            "done stage",
            "end",
            "save",
            "reply"
        ]
    );
    assert_eq!(replies(&fx), [Answer::Staged(Ok("1.2".into()))]);
    assert!(
        matches!(m.state(), State::Steady { version, .. } if version == "1.0"),
        "{:?}",
        m.state()
    );
    // Nothing of a swap, a restart, a hook or a check.
    for name in ["swap 1.2", "restart 1.2", "vet 1.2", "watch 1.2"] {
        assert!(!has(&fx, name), "{name}: {fx:?}");
    }

    // A refused source: its copy is discarded, the state stays.
    let mut script = Script {
        stage: Err("bad archive".into()),
        ..Script::default()
    };
    let fx = run(&mut m, stage("1.3"), t0, &w, &mut script);
    assert!(has(&fx, "discard 1.3"), "{fx:?}");
    assert_eq!(replies(&fx), [Answer::Staged(Err(Refusal::Failed))]);
    assert!(matches!(m.state(), State::Steady { .. }));
    // A journal that cannot be written: nothing is staged.
    let mut script = Script {
        journal: Err("disk full".into()),
        ..Script::default()
    };
    let fx = run(&mut m, stage("1.3"), t0, &w, &mut script);
    assert!(!has(&fx, "stage 1.3"), "{fx:?}");
    assert_eq!(replies(&fx), [Answer::Staged(Err(Refusal::Failed))]);

    // Refused: a version already there, and during a bake.
    let fx = run(&mut m, stage("1.0"), t0, &w, &mut Script::default());
    assert_eq!(
        replies(&fx),
        [Answer::Staged(Err(Refusal::ReleaseExists("1.0".into())))]
    );
    let mut w = world();
    let mut m = baking(t0, &mut w);
    let fx = run(&mut m, stage("1.4"), t0, &w, &mut Script::default());
    assert!(
        matches!(replies(&fx)[..], [Answer::Staged(Err(Refusal::Busy(_)))]),
        "{fx:?}"
    );
    assert!(
        matches!(m.state(), State::Baking { .. }),
        "the bake goes on"
    );
}

fn deploy_staged(version: &str) -> Input {
    Input::Deploy {
        version: version.into(),
        actor: operator(),
        wait: false,
        staged: true,
    }
}

#[test]
fn a_staged_deploy_swaps_and_bakes_without_staging_and_keeps_the_release_when_it_fails() {
    let t0 = Instant::now();
    let w = World {
        disk: vec!["1.0", "1.2"],
        good: vec!["1.0"],
    };
    let mut m = steady_on("1.0", &w, t0);
    let fx = run(&mut m, deploy_staged("1.2"), t0, &w, &mut Script::default());
    assert!(!has(&fx, "stage 1.2"), "{fx:?}");
    for name in ["vet 1.2", "swap 1.2", "restart 1.2", "watch 1.2"] {
        assert!(has(&fx, name), "{name}: {fx:?}");
    }
    let begin = fx
        .iter()
        .find_map(|e| match e {
            Effect::Begin(i) => Some(i.clone()),
            _ => None,
        })
        .expect("the deploy begins an operation");
    assert!(
        begin.staged && !begin.steps.contains(&Step::Stage),
        "{begin:?}"
    );

    // A swap that fails: the staged release stays (nothing discarded).
    let mut m = steady_on("1.0", &w, t0);
    let mut script = Script {
        swap: Err("disk full".into()),
        ..Script::default()
    };
    let fx = run(&mut m, deploy_staged("1.2"), t0, &w, &mut script);
    assert!(!has(&fx, "discard 1.2"), "{fx:?}");

    // Not there, or already active: refused before anything starts.
    let mut m = steady_on("1.0", &w, t0);
    let fx = run(&mut m, deploy_staged("9.9"), t0, &w, &mut Script::default());
    assert_eq!(
        replies(&fx),
        [Answer::Deploy(Err(Refusal::NotFound("9.9".into())))]
    );
    let fx = run(&mut m, deploy_staged("1.0"), t0, &w, &mut Script::default());
    assert_eq!(
        replies(&fx),
        [Answer::Deploy(Err(Refusal::AlreadyActive("1.0".into())))]
    );
}
