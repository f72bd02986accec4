//! Turning check results over time into verdicts.
//!
//! Owns the rules that decide whether a check is healthy (`fail_after`
//! consecutive failures) and whether a bake has passed, failed or must go on.
//! It is pure: results and instants in, a verdict out. No I/O, no clocks of
//! its own, no knowledge of plugins or releases, so that every rule is tested
//! exhaustively with plain unit tests.

use std::time::Instant;

/// The outcome of one check run, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check passed with a warning (counts as healthy).
    Warn,
    /// The check failed.
    Fail,
    /// The plugin could not decide (trap, timeout, bad config): counts as a failure.
    Error,
}

impl Outcome {
    /// The lower-case name shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
            Outcome::Error => "error",
        }
    }

    fn is_failure(self) -> bool {
        matches!(self, Outcome::Fail | Outcome::Error)
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

/// Tracks one check's results for one activation.
#[derive(Debug, Clone)]
pub struct CheckTracker {
    fail_after: u32,
    consecutive_failures: u32,
    runs: u64,
    last: Option<Outcome>,
}

impl CheckTracker {
    /// A tracker for a check that is unhealthy after `fail_after` failures in a row.
    pub fn new(fail_after: u32) -> Self {
        CheckTracker {
            fail_after: fail_after.max(1),
            consecutive_failures: 0,
            runs: 0,
            last: None,
        }
    }

    /// Takes one result into account and returns the check's health after it.
    pub fn observe(&mut self, outcome: Outcome) -> Health {
        self.runs += 1;
        self.last = Some(outcome);
        if outcome.is_failure() {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        } else {
            self.consecutive_failures = 0;
        }
        self.health()
    }

    /// The check's health from the results seen so far.
    pub fn health(&self) -> Health {
        match self.last {
            None => Health::NoData,
            Some(_) if self.consecutive_failures >= self.fail_after => Health::Unhealthy,
            Some(o) if o.is_failure() => Health::Failing(self.consecutive_failures),
            Some(_) => Health::Healthy,
        }
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Results seen so far.
    pub fn runs(&self) -> u64 {
        self.runs
    }
}

/// What the bake of a release has come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BakeVerdict {
    /// Keep watching.
    Pending,
    /// Every check is healthy and the window is over: mark the release good.
    Passed,
    /// This check (its index) is unhealthy: roll back.
    Failed(usize),
}

/// Decides a bake from each check's health.
///
/// A bake fails as soon as one check is unhealthy. It passes only once the
/// window is over and every check's latest result is healthy: a check with
/// no data or that is failing below its threshold keeps the bake open until
/// it recovers or turns unhealthy.
pub fn bake_verdict(now: Instant, bake_until: Instant, checks: &[Health]) -> BakeVerdict {
    if let Some(i) = checks.iter().position(|h| *h == Health::Unhealthy) {
        return BakeVerdict::Failed(i);
    }
    if now < bake_until {
        return BakeVerdict::Pending;
    }
    if checks.iter().all(|h| *h == Health::Healthy) {
        BakeVerdict::Passed
    } else {
        BakeVerdict::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use Outcome::*;

    fn run(fail_after: u32, outcomes: &[Outcome]) -> Health {
        let mut t = CheckTracker::new(fail_after);
        let mut h = t.health();
        for o in outcomes {
            h = t.observe(*o);
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
    fn bake_verdicts() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(60);
        let after = end + Duration::from_secs(1);
        use Health::*;
        assert_eq!(
            bake_verdict(t0, end, &[Healthy, Unhealthy]),
            BakeVerdict::Failed(1)
        );
        assert_eq!(
            bake_verdict(after, end, &[Unhealthy]),
            BakeVerdict::Failed(0)
        );
        assert_eq!(
            bake_verdict(t0, end, &[Healthy]),
            BakeVerdict::Pending,
            "window not over"
        );
        assert_eq!(
            bake_verdict(after, end, &[Healthy, Healthy]),
            BakeVerdict::Passed
        );
        assert_eq!(
            bake_verdict(end, end, &[Healthy]),
            BakeVerdict::Passed,
            "the window's end is inclusive"
        );
        assert_eq!(
            bake_verdict(after, end, &[Healthy, NoData]),
            BakeVerdict::Pending,
            "no data is never healthy"
        );
        assert_eq!(
            bake_verdict(after, end, &[Failing(2)]),
            BakeVerdict::Pending,
            "a failing check must recover first"
        );
        assert_eq!(
            bake_verdict(after, end, &[]),
            BakeVerdict::Passed,
            "an app without checks passes on time"
        );
        assert_eq!(bake_verdict(t0, end, &[]), BakeVerdict::Pending);
    }
}
