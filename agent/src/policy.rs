//! Turning check results over time into verdicts.
//!
//! Owns the rules that decide whether a check is healthy (`fail_after`
//! consecutive failures) and whether a bake has passed, failed, must go on
//! (extended up to `max_bake` while critical checks lack conclusive runs) or
//! is held for an operator. An inconclusive result counts neither way.
//! It is pure: results and instants in, a verdict out. No I/O, no clocks of
//! its own, no knowledge of plugins or the disk, so that every rule is tested
//! exhaustively with plain unit tests. Also which releases `keep_releases`
//! prunes (`prune_plan`): versions in, versions out, and when a check
//! result is worth a durable write (`save_check_now`).

use std::time::Instant;

use crate::release::Version;

pub use crate::domain::Outcome;

/// A failure counts against a check (errors too, unless ignored).
fn is_failure(o: Outcome) -> bool {
    matches!(o, Outcome::Fail | Outcome::Error)
}

/// Whether a result says anything about the release: an inconclusive one
/// does not, nor an error the check's `on_error` ignores.
fn is_conclusive(o: Outcome, on_error: OnError) -> bool {
    match o {
        Outcome::Inconclusive => false,
        Outcome::Error => on_error != OnError::Ignore,
        Outcome::Pass | Outcome::Warn | Outcome::Fail => true,
    }
}

/// What one check says about the active release right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No result yet: never counts as healthy.
    NoData,
    /// The latest result passed.
    Healthy,
    /// The latest results failed, fewer times in a row than `fail_after`.
    Failing(u32),
    /// `fail_after` failures in a row: the release is unhealthy.
    Unhealthy,
}

pub use crate::config::{AutoRollback, FailureRule as Rule, OnError, Severity};

/// Fewest counted runs in the window before a ratio rule can judge.
pub const MIN_RATIO_SAMPLES: usize = 3;

/// Tracks one check's results for one activation.
#[derive(Debug, Clone)]
pub struct CheckTracker {
    rule: Rule,
    on_error: OnError,
    consecutive_failures: u32,
    runs: u64,
    conclusive: u64,
    last: Option<Outcome>,
    /// Counted results with their time, for ratio rules (oldest first).
    recent: std::collections::VecDeque<(Instant, bool)>,
}

impl CheckTracker {
    /// A tracker for `rule`; `on_error` says whether plugin errors count.
    pub fn new(rule: Rule, on_error: OnError) -> Self {
        let rule = match rule {
            Rule::Consecutive(n) => Rule::Consecutive(n.max(1)),
            r => r,
        };
        CheckTracker {
            rule,
            on_error,
            consecutive_failures: 0,
            runs: 0,
            conclusive: 0,
            last: None,
            recent: Default::default(),
        }
    }

    /// Takes one result at `at` into account and returns the check's health.
    pub fn observe(&mut self, at: Instant, outcome: Outcome) -> Health {
        self.runs += 1;
        // An inconclusive result or an ignored error is neither a success
        // nor a failure: no data.
        if is_conclusive(outcome, self.on_error) {
            self.conclusive += 1;
            self.last = Some(outcome);
            if is_failure(outcome) {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            } else {
                self.consecutive_failures = 0;
            }
            if let Rule::Ratio { window, .. } = self.rule {
                self.recent.push_back((at, is_failure(outcome)));
                while self
                    .recent
                    .front()
                    .is_some_and(|(t, _)| at.saturating_duration_since(*t) > window)
                {
                    self.recent.pop_front();
                }
            }
        }
        self.health(at)
    }

    /// The check's health at `now` from the results seen so far.
    pub fn health(&self, now: Instant) -> Health {
        let Some(last) = self.last else {
            return Health::NoData;
        };
        let unhealthy = match self.rule {
            Rule::Consecutive(n) => self.consecutive_failures >= n,
            Rule::Ratio { ratio, window } => {
                let in_window = self
                    .recent
                    .iter()
                    .filter(|(t, _)| now.saturating_duration_since(*t) <= window);
                let (total, failed) = in_window.fold((0usize, 0usize), |(n, f), (_, bad)| {
                    (n + 1, f + usize::from(*bad))
                });
                if total == 0 {
                    return Health::NoData;
                }
                total >= MIN_RATIO_SAMPLES && failed as f64 / total as f64 > ratio
            }
        };
        if unhealthy {
            Health::Unhealthy
        } else if is_failure(last) {
            Health::Failing(self.consecutive_failures)
        } else {
            Health::Healthy
        }
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Results seen so far (ignored errors and inconclusive ones included).
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Results that said something about the release (pass, warn, fail,
    /// counted errors).
    pub fn conclusive(&self) -> u64 {
        self.conclusive
    }
}

/// What the bake of a release has come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BakeVerdict {
    /// Keep watching.
    Pending,
    /// Every critical check is healthy with enough conclusive runs and the
    /// window is over: mark the release good.
    Passed,
    /// This critical check (its index) is unhealthy: roll back.
    Failed(usize),
    /// The window is over but these critical checks are not ready (too few
    /// conclusive runs, or failing below their threshold): keep watching
    /// until `max_bake`.
    Extended(Vec<usize>),
    /// `max_bake` is over and these critical checks are still not ready: no
    /// automatic action; an operator decides.
    Held(Vec<usize>),
}

/// The bake's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BakeWindow {
    /// The end of the bake window.
    pub until: Instant,
    /// The latest the bake may be extended to (at least `until`).
    pub max_until: Instant,
}

/// One check as a bake sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BakeCheck {
    /// Its health now.
    pub health: Health,
    /// Whether it decides the bake.
    pub severity: Severity,
    /// Its conclusive runs so far.
    pub conclusive: u64,
    /// The conclusive runs it needs (`min_conclusive`).
    pub min_conclusive: u32,
}

impl BakeCheck {
    fn ready(&self) -> bool {
        self.health == Health::Healthy && self.conclusive >= u64::from(self.min_conclusive)
    }
}

/// Decides a bake from each check's health, severity and conclusive runs.
///
/// A bake fails as soon as one critical check is unhealthy. It passes only
/// once the window is over and every critical check is ready: its latest
/// conclusive result healthy and at least `min_conclusive` conclusive runs.
/// A check that is not ready (no data, only inconclusive results, failing
/// below its threshold) extends the bake up to `max_until`; after that the
/// bake is held. Warning checks never decide a bake.
pub fn bake_verdict(now: Instant, window: BakeWindow, checks: &[BakeCheck]) -> BakeVerdict {
    let critical = || {
        checks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.severity == Severity::Critical)
    };
    if let Some((i, _)) = critical().find(|(_, c)| c.health == Health::Unhealthy) {
        return BakeVerdict::Failed(i);
    }
    if now < window.until {
        return BakeVerdict::Pending;
    }
    let waiting: Vec<usize> = critical()
        .filter(|(_, c)| !c.ready())
        .map(|(i, _)| i)
        .collect();
    if waiting.is_empty() {
        BakeVerdict::Passed
    } else if now < window.max_until {
        BakeVerdict::Extended(waiting)
    } else {
        BakeVerdict::Held(waiting)
    }
}

/// What to do when a check turns unhealthy outside a bake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteadyAction {
    /// Record and alert only.
    Alert,
    /// Roll back to the last good release.
    Rollback,
    /// Stop acting: the app is degraded and waits for an operator.
    Degrade,
}

/// The action for an unhealthy check after the bake. `restored` is true when
/// the active release was restored by a rollback: if it fails too, the agent
/// must not swap again (no loops), whatever `auto_rollback` says.
pub fn steady_action(
    severity: Severity,
    auto_rollback: AutoRollback,
    restored: bool,
) -> SteadyAction {
    match (severity, restored, auto_rollback) {
        (Severity::Warning, _, _) => SteadyAction::Alert,
        (Severity::Critical, true, _) => SteadyAction::Degrade,
        (Severity::Critical, false, AutoRollback::Always) => SteadyAction::Rollback,
        (Severity::Critical, false, AutoRollback::Bake) => SteadyAction::Alert,
    }
}

/// Which releases to prune to keep at most `keep` (>=1) releases: oldest first by
/// the given order, never any in `protected` (active, last good, rollback target).
///
/// Pure: `releases_oldest_first` is the caller's order (e.g. by staging time),
/// not sorted here. A `keep` of 0 counts as 1. A version listed twice counts
/// once; protected versions that are not in the list are ignored. If the
/// protected releases alone reach `keep`, every unprotected one is pruned (the
/// result can then leave more than `keep`). The result is in the given order,
/// oldest first, without duplicates.
pub fn prune_plan(
    releases_oldest_first: &[Version],
    protected: &[Version],
    keep: usize,
) -> Vec<Version> {
    let keep = keep.max(1);
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<&Version> = releases_oldest_first
        .iter()
        .filter(|v| seen.insert(*v))
        .collect();
    let excess = distinct.len().saturating_sub(keep);
    distinct
        .into_iter()
        .filter(|v| !protected.contains(v))
        .take(excess)
        .cloned()
        .collect()
}

/// Whether a check result must be written durably now: only when its
/// outcome differs from the one last written for that check (`saved`,
/// `None` if never). A result that repeats the outcome is kept in memory:
/// nothing reads the store while the agent is down, and a restarted agent
/// runs every check again at once, so writing it would buy nothing.
pub fn save_check_now(saved: Option<Outcome>, outcome: Outcome) -> bool {
    saved != Some(outcome)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;
    use Outcome::*;

    #[test]
    fn a_check_result_is_written_only_on_a_change_of_outcome() {
        assert!(save_check_now(None, Pass), "never written: written");
        assert!(!save_check_now(Some(Pass), Pass));
        assert!(!save_check_now(Some(Fail), Fail));
        for (was, now) in [
            (Pass, Fail),
            (Fail, Pass),
            (Pass, Inconclusive),
            (Error, Warn),
        ] {
            assert!(save_check_now(Some(was), now), "{was:?} -> {now:?}");
        }
    }

    fn run(fail_after: u32, outcomes: &[Outcome]) -> Health {
        let mut t = CheckTracker::new(Rule::Consecutive(fail_after), OnError::Fail);
        let now = Instant::now();
        let mut h = t.health(now);
        for o in outcomes {
            h = t.observe(now, *o);
        }
        h
    }

    /// Feeds (seconds after start, outcome) pairs to a ratio rule.
    fn ratio(ratio: f64, window_s: u64, on_error: OnError, events: &[(u64, Outcome)]) -> Health {
        let t0 = Instant::now();
        let window = Duration::from_secs(window_s);
        let mut t = CheckTracker::new(Rule::Ratio { ratio, window }, on_error);
        let mut h = t.health(t0);
        for (s, o) in events {
            h = t.observe(t0 + Duration::from_secs(*s), *o);
        }
        h
    }

    #[test]
    fn fail_after_counts_consecutive_failures_only() {
        assert_eq!(run(3, &[]), Health::NoData);
        assert_eq!(run(3, &[Pass]), Health::Healthy);
        assert_eq!(run(3, &[Warn]), Health::Healthy);
        assert_eq!(run(3, &[Fail]), Health::Failing(1));
        assert_eq!(run(3, &[Fail, Error]), Health::Failing(2));
        assert_eq!(run(3, &[Fail, Fail, Fail]), Health::Unhealthy);
        assert_eq!(
            run(3, &[Fail, Error, Fail]),
            Health::Unhealthy,
            "errors count as failures"
        );
        assert_eq!(
            run(3, &[Fail, Fail, Pass, Fail, Fail]),
            Health::Failing(2),
            "a pass resets"
        );
        assert_eq!(
            run(3, &[Fail, Fail, Warn, Fail, Fail]),
            Health::Failing(2),
            "a warning resets"
        );
        assert_eq!(run(1, &[Pass, Fail]), Health::Unhealthy);
        assert_eq!(
            run(0, &[Fail]),
            Health::Unhealthy,
            "fail_after 0 behaves as 1"
        );
    }

    #[test]
    fn exhaustive_sequences_agree_with_a_direct_count() {
        let all = [Pass, Warn, Fail, Error];
        for fail_after in 1..=4u32 {
            for len in 0..=6u32 {
                for code in 0..4usize.pow(len) {
                    let seq: Vec<Outcome> =
                        (0..len).map(|i| all[(code / 4usize.pow(i)) % 4]).collect();
                    let trailing = seq
                        .iter()
                        .rev()
                        .take_while(|o| matches!(o, Fail | Error))
                        .count() as u32;
                    let expected = if seq.is_empty() {
                        Health::NoData
                    } else if trailing >= fail_after {
                        Health::Unhealthy
                    } else if trailing > 0 {
                        Health::Failing(trailing)
                    } else {
                        Health::Healthy
                    };
                    assert_eq!(run(fail_after, &seq), expected, "{fail_after} {seq:?}");
                }
            }
        }
    }

    #[test]
    fn failure_ratio_over_a_window() {
        // 1 failure in 20 is 5%: not above 5%.
        let mut ev: Vec<(u64, Outcome)> = (0..19).map(|i| (i, Pass)).collect();
        ev.push((19, Fail));
        assert_eq!(ratio(0.05, 300, OnError::Fail, &ev), Health::Failing(1));
        ev.push((20, Fail));
        assert_eq!(
            ratio(0.05, 300, OnError::Fail, &ev),
            Health::Unhealthy,
            "2 in 21 > 5%"
        );
        // Old failures slide out of the window.
        let ev = [
            (0, Fail),
            (1, Fail),
            (2, Fail),
            (400, Pass),
            (401, Pass),
            (402, Pass),
        ];
        assert_eq!(ratio(0.5, 300, OnError::Fail, &ev), Health::Healthy);
        // Too few samples to judge, however bad.
        assert_eq!(
            ratio(0.1, 300, OnError::Fail, &[(0, Fail), (1, Fail)]),
            Health::Failing(2)
        );
        assert_eq!(
            ratio(0.1, 300, OnError::Fail, &[(0, Fail), (1, Fail), (2, Fail)]),
            Health::Unhealthy
        );
        // Errors count as failures, or not at all.
        let ev = [(0, Error), (1, Error), (2, Error)];
        assert_eq!(ratio(0.5, 300, OnError::Fail, &ev), Health::Unhealthy);
        assert_eq!(
            ratio(0.5, 300, OnError::Ignore, &ev),
            Health::NoData,
            "no data is never healthy"
        );
        assert_eq!(
            ratio(0.5, 300, OnError::Ignore, &[(0, Pass), (1, Error)]),
            Health::Healthy
        );
        // The health is judged at `now`: with nothing in the window there is no data.
        let t0 = Instant::now();
        let mut t = CheckTracker::new(
            Rule::Ratio {
                ratio: 0.5,
                window: Duration::from_secs(10),
            },
            OnError::Fail,
        );
        t.observe(t0, Pass);
        assert_eq!(t.health(t0 + Duration::from_secs(60)), Health::NoData);
    }

    #[test]
    fn ignored_errors_neither_fail_nor_pass() {
        let mut t = CheckTracker::new(Rule::Consecutive(2), OnError::Ignore);
        let now = Instant::now();
        assert_eq!(t.observe(now, Error), Health::NoData);
        assert_eq!(t.observe(now, Fail), Health::Failing(1));
        assert_eq!(
            t.observe(now, Error),
            Health::Failing(1),
            "an ignored error changes nothing"
        );
        assert_eq!(t.observe(now, Fail), Health::Unhealthy);
        assert_eq!(t.runs(), 4);
    }

    #[test]
    fn steady_actions() {
        use AutoRollback::*;
        use Severity::*;
        assert_eq!(steady_action(Warning, Always, false), SteadyAction::Alert);
        assert_eq!(steady_action(Warning, Always, true), SteadyAction::Alert);
        assert_eq!(steady_action(Critical, Bake, false), SteadyAction::Alert);
        assert_eq!(
            steady_action(Critical, Always, false),
            SteadyAction::Rollback
        );
        assert_eq!(
            steady_action(Critical, Always, true),
            SteadyAction::Degrade,
            "no loops"
        );
        assert_eq!(steady_action(Critical, Bake, true), SteadyAction::Degrade);
    }

    #[test]
    fn bake_verdicts() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(60);
        let max = t0 + Duration::from_secs(120);
        let after = end + Duration::from_secs(1);
        let w = BakeWindow {
            until: end,
            max_until: max,
        };
        use Health::*;
        let crit = |health| BakeCheck {
            health,
            severity: Severity::Critical,
            conclusive: 1,
            min_conclusive: 1,
        };
        let warn = |health| BakeCheck {
            severity: Severity::Warning,
            ..crit(health)
        };
        let v = |now, checks: &[BakeCheck]| bake_verdict(now, w, checks);
        assert_eq!(
            v(t0, &[crit(Healthy), crit(Unhealthy)]),
            BakeVerdict::Failed(1)
        );
        assert_eq!(v(after, &[crit(Unhealthy)]), BakeVerdict::Failed(0));
        assert_eq!(v(max, &[crit(Unhealthy)]), BakeVerdict::Failed(0));
        assert_eq!(
            v(t0, &[crit(Healthy)]),
            BakeVerdict::Pending,
            "window not over"
        );
        assert_eq!(
            v(after, &[crit(Healthy), crit(Healthy)]),
            BakeVerdict::Passed
        );
        assert_eq!(
            v(end, &[crit(Healthy)]),
            BakeVerdict::Passed,
            "the window's end is inclusive"
        );
        assert_eq!(
            v(after, &[crit(Healthy), crit(NoData)]),
            BakeVerdict::Extended(vec![1]),
            "no data is never healthy"
        );
        assert_eq!(
            v(after, &[crit(Failing(2))]),
            BakeVerdict::Extended(vec![0]),
            "a failing check must recover first"
        );
        assert_eq!(
            v(max, &[crit(Failing(2)), crit(NoData)]),
            BakeVerdict::Held(vec![0, 1]),
            "max_bake's end is inclusive"
        );
        assert_eq!(
            v(after, &[]),
            BakeVerdict::Passed,
            "an app without checks passes on time"
        );
        assert_eq!(v(t0, &[]), BakeVerdict::Pending);
        assert_eq!(
            v(after, &[crit(Healthy), warn(Unhealthy)]),
            BakeVerdict::Passed,
            "warning checks never decide a bake"
        );
        assert_eq!(v(after, &[warn(NoData)]), BakeVerdict::Passed);
        let few = BakeCheck {
            conclusive: 2,
            min_conclusive: 3,
            ..crit(Healthy)
        };
        assert_eq!(v(after, &[few]), BakeVerdict::Extended(vec![0]));
        assert_eq!(v(max, &[few]), BakeVerdict::Held(vec![0]));
        let enough = BakeCheck {
            conclusive: 3,
            ..few
        };
        assert_eq!(v(after, &[enough]), BakeVerdict::Passed);
    }

    #[test]
    fn inconclusive_results_count_neither_way() {
        let t0 = Instant::now();
        let mut t = CheckTracker::new(Rule::Consecutive(2), OnError::Fail);
        assert_eq!(t.observe(t0, Inconclusive), Health::NoData);
        assert_eq!(t.observe(t0, Fail), Health::Failing(1));
        assert_eq!(
            t.observe(t0, Inconclusive),
            Health::Failing(1),
            "does not reset the count"
        );
        assert_eq!(
            t.observe(t0, Fail),
            Health::Unhealthy,
            "and does not break the run of failures"
        );
        assert_eq!((t.runs(), t.conclusive()), (4, 2));
        let mut t = CheckTracker::new(Rule::Consecutive(1), OnError::Ignore);
        t.observe(t0, Error);
        t.observe(t0, Inconclusive);
        assert_eq!((t.health(t0), t.conclusive()), (Health::NoData, 0));
        t.observe(t0, Pass);
        t.observe(t0, Inconclusive);
        assert_eq!((t.health(t0), t.conclusive()), (Health::Healthy, 1));
        // A ratio rule does not see them either.
        let window = Duration::from_secs(60);
        let mut t = CheckTracker::new(Rule::Ratio { ratio: 0.5, window }, OnError::Fail);
        for _ in 0..10 {
            t.observe(t0, Inconclusive);
        }
        t.observe(t0, Fail);
        t.observe(t0, Pass);
        assert_eq!(
            t.observe(t0, Pass),
            Health::Healthy,
            "1 of 3 counted failed"
        );
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn vs(names: &[&str]) -> Vec<Version> {
        names.iter().map(|n| v(n)).collect()
    }

    #[test]
    fn prune_plan_table() {
        let all = vs(&["1", "2", "3", "4", "5"]);
        let cases: &[(&[&str], usize, &[&str])] = &[
            (&[], 5, &[]),
            (&[], 6, &[]),
            (&[], 3, &["1", "2"]),
            (&[], 1, &["1", "2", "3", "4"]),
            (&[], 0, &["1", "2", "3", "4"]), // keep 0 counts as 1
            (&["5"], 2, &["1", "2", "3"]),
            (&["1"], 2, &["2", "3", "4"]), // the oldest is protected: skip it
            (&["1", "3"], 3, &["2", "4"]),
            (&["1", "3", "5"], 2, &["2", "4"]), // protected alone exceed keep
            (&["1", "3", "5"], 3, &["2", "4"]), // protected alone reach keep
            (&["1", "2", "3", "4", "5"], 1, &[]),
            (&["9"], 4, &["1"]), // unknown protected versions are ignored
        ];
        for (protected, keep, expected) in cases {
            assert_eq!(
                prune_plan(&all, &vs(protected), *keep),
                vs(expected),
                "protected {protected:?}, keep {keep}"
            );
        }
        assert_eq!(prune_plan(&[], &[], 3), Vec::<Version>::new());
        // The caller's order is the age order (not sorted by name).
        assert_eq!(
            prune_plan(&vs(&["b", "a", "c"]), &vs(&["c"]), 1),
            vs(&["b", "a"])
        );
        // Duplicates count once and are returned once.
        assert_eq!(prune_plan(&vs(&["1", "1", "2", "3"]), &[], 2), vs(&["1"]));
    }

    #[test]
    fn prune_plan_exhaustive() {
        // Every protected subset of up to 6 releases, every keep 0..=7.
        for n in 0..=6usize {
            let all: Vec<Version> = (0..n).map(|i| v(&format!("r{i}"))).collect();
            for mask in 0..(1u32 << n) {
                let protected: Vec<Version> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, r)| r.clone())
                    .collect();
                let unprotected: Vec<Version> = all
                    .iter()
                    .filter(|r| !protected.contains(r))
                    .cloned()
                    .collect();
                for keep in 0..=7usize {
                    let plan = prune_plan(&all, &protected, keep);
                    let ctx = format!("n {n}, protected {protected:?}, keep {keep}: {plan:?}");
                    // Never a protected one; the oldest unprotected ones, in order.
                    assert!(plan.iter().all(|r| !protected.contains(r)), "{ctx}");
                    assert_eq!(plan[..], unprotected[..plan.len()], "{ctx}");
                    let left = n - plan.len();
                    let keep1 = keep.max(1);
                    // Exactly as many as needed to get down to `keep`, limited
                    // by what is unprotected.
                    assert_eq!(
                        plan.len(),
                        unprotected.len().min(n.saturating_sub(keep1)),
                        "{ctx}"
                    );
                    // At most `keep` remain unless only protected ones remain.
                    assert!(left <= keep1 || plan.len() == unprotected.len(), "{ctx}");
                    // Never below `keep` through pruning.
                    assert!(plan.is_empty() || left >= keep1, "{ctx}");
                }
            }
        }
    }
}
