//! The durable shape of a multi-step operation and what start-up does with
//! one that was interrupted.
//!
//! Owns the `Intent` (the operation, its releases and the steps that remain)
//! and `recover`, the pure decision of how to finish an intent found at
//! start-up given what the disk says. The supervisor journals an intent
//! (`journal`) before the first side effect of each step, performs the steps
//! and feeds the facts back in here after a crash.
//!
//! Must never do I/O or read a clock: facts in, a plan out.

use serde::{Deserialize, Serialize};

/// The operations that take more than one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Stage a new release, swap to it, restart, bake.
    Deploy,
    /// Swap back to an earlier release, restore its state files, restart.
    Rollback,
    /// The operator's switch to an existing release (no bake).
    Activate,
    /// Remove releases beyond `keep_releases` with their snapshots.
    Prune,
    /// Stage a new release without activating it.
    Stage,
}

impl Op {
    /// The kebab-case name, as in the journal and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Deploy => "deploy",
            Op::Rollback => "rollback",
            Op::Activate => "activate",
            Op::Prune => "prune",
            Op::Stage => "stage",
        }
    }
}

/// One step of an operation. Each is idempotent: doing it again after a
/// crash gives the same result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Copy or unpack the source into `releases/<to>` (deploy only).
    Stage,
    /// Point `current` at `to`.
    Swap,
    /// Restore the state files saved when `to` was left.
    Restore,
    /// Run the restart command for `to`.
    Restart,
    /// Remove one release: its snapshot, its directory, its record.
    Remove {
        /// The release.
        version: String,
    },
}

impl Step {
    /// The kebab-case name, as in `reconciled` events.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Stage => "stage",
            Step::Swap => "swap",
            Step::Restore => "restore",
            Step::Restart => "restart",
            Step::Remove { .. } => "remove",
        }
    }
}

/// An operation in progress: recorded before its first side effect, updated
/// as each step is done, removed when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// What is being done.
    pub op: Op,
    /// The release active when it began.
    pub from: Option<String>,
    /// The release being activated (none for a prune).
    pub to: Option<String>,
    /// Why, in words (the rollback's reason, the operator's name).
    pub why: String,
    /// Who asked: a user name, or `agent`.
    pub actor: String,
    /// The check that caused an automatic rollback.
    #[serde(default)]
    pub check: Option<String>,
    /// The rollback was the agent's own (the loop guard applies after it).
    #[serde(default)]
    pub automatic: bool,
    /// Where a deploy's release comes from.
    #[serde(default)]
    pub source: Option<String>,
    /// The steps not yet done, in order.
    pub steps: Vec<Step>,
    /// When the operation began.
    pub at_ms: u64,
    /// The app's state and reason before it began: what it returns to if it
    /// ends without a swap (a deploy that never went live).
    #[serde(default)]
    pub before: Option<(crate::domain::AppState, Option<String>)>,
    /// A deploy of a release staged before it began: ending it before the
    /// swap keeps the release.
    #[serde(default)]
    pub staged: bool,
}

impl Intent {
    /// Marks `step` done (and every step before it).
    pub fn done(&mut self, step: &Step) {
        if let Some(i) = self.steps.iter().position(|s| s == step) {
            self.steps.drain(..=i);
        }
    }

    /// The intent's steps, as a short text for events: `swap, restart`.
    pub fn steps_text(steps: &[Step]) -> String {
        let names: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::Remove { version } => format!("remove {version}"),
                other => other.name().to_string(),
            })
            .collect();
        names.join(", ")
    }
}

/// How start-up finishes an interrupted operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing is left to do (the steps that remain no longer apply).
    Nothing,
    /// A deploy that never went live: remove the release it staged, which
    /// frees its version; the app stays on what `current` names.
    Abandon {
        /// The release staged by the interrupted deploy.
        version: String,
    },
    /// Do these steps, in order, then end the operation as it would have
    /// ended (a deploy bakes, a rollback marks `from` failed).
    Finish(Vec<Step>),
}

/// What start-up knows of the disk.
pub trait Disk {
    /// The release `current` names, if any.
    fn current(&self) -> Option<&str>;
    /// Whether `releases/<version>` is a complete release.
    fn has_release(&self, version: &str) -> bool;
}

/// The plan for an interrupted `intent`. `current` is the truth: a swap
/// that happened is never undone, one that did not is redone only for a
/// rollback or an activation (a deploy that never went live is abandoned,
/// since its client was told nothing and its release was never checked).
pub fn recover(intent: &Intent, disk: &impl Disk) -> Recovery {
    if intent.op == Op::Prune {
        let steps: Vec<Step> = intent
            .steps
            .iter()
            .filter(|s| match s {
                Step::Remove { version } => {
                    disk.current() != Some(version.as_str())
                        && intent.to.as_deref() != Some(version)
                }
                _ => false,
            })
            .cloned()
            .collect();
        return if steps.is_empty() {
            Recovery::Nothing
        } else {
            Recovery::Finish(steps)
        };
    }
    let Some(to) = intent.to.as_deref() else {
        return Recovery::Nothing;
    };
    let swapped = disk.current() == Some(to);
    let after_swap = |steps: &[Step]| -> Vec<Step> {
        steps
            .iter()
            .filter(|s| matches!(s, Step::Restore | Step::Restart))
            .cloned()
            .collect()
    };
    match intent.op {
        Op::Deploy if swapped => {
            let steps = after_swap(&intent.steps);
            if steps.is_empty() {
                Recovery::Nothing
            } else {
                Recovery::Finish(steps)
            }
        }
        // Staging never touches `current`: a copy whose staging did not
        // finish is removed (its caller was told nothing).
        Op::Stage if !intent.steps.contains(&Step::Stage) => Recovery::Nothing,
        // A deploy of a release staged earlier ends where it began.
        Op::Deploy if intent.staged => Recovery::Nothing,
        Op::Deploy | Op::Stage => {
            if disk.has_release(to) {
                Recovery::Abandon {
                    version: to.to_string(),
                }
            } else {
                Recovery::Nothing
            }
        }
        Op::Rollback | Op::Activate => {
            let mut steps = after_swap(&intent.steps);
            if !swapped {
                if !disk.has_release(to) {
                    return Recovery::Nothing;
                }
                // The swap did not happen: the whole operation is still to do.
                steps = vec![Step::Swap];
                if intent.op == Op::Rollback {
                    steps.push(Step::Restore);
                }
                steps.push(Step::Restart);
            }
            if steps.is_empty() {
                Recovery::Nothing
            } else {
                Recovery::Finish(steps)
            }
        }
        Op::Prune => Recovery::Nothing,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct FakeDisk {
        current: Option<&'static str>,
        releases: &'static [&'static str],
    }

    impl Disk for FakeDisk {
        fn current(&self) -> Option<&str> {
            self.current
        }
        fn has_release(&self, version: &str) -> bool {
            self.releases.contains(&version)
        }
    }

    fn intent(op: Op, steps: Vec<Step>) -> Intent {
        Intent {
            op,
            from: Some("1".into()),
            to: (op != Op::Prune).then(|| "2".into()),
            why: "test".into(),
            actor: "agent".into(),
            check: None,
            automatic: true,
            source: None,
            steps,
            at_ms: 0,
            before: None,
            staged: false,
        }
    }

    fn remove(v: &str) -> Step {
        Step::Remove { version: v.into() }
    }

    #[test]
    fn a_staged_deploy_cut_short_before_its_swap_keeps_its_release() {
        let disk = FakeDisk {
            current: Some("1"),
            releases: &["1", "2"],
        };
        let mut i = intent(Op::Deploy, vec![Step::Swap, Step::Restart]);
        i.staged = true;
        assert_eq!(recover(&i, &disk), Recovery::Nothing);
        let live = FakeDisk {
            current: Some("2"),
            releases: &["1", "2"],
        };
        assert_eq!(recover(&i, &live), Recovery::Finish(vec![Step::Restart]));
    }

    #[test]
    fn recovery_table() {
        use Recovery::*;
        use Step::*;
        let on = |current| FakeDisk {
            current,
            releases: &["1", "2", "3"],
        };
        let cases: Vec<(Op, Vec<Step>, Option<&'static str>, Recovery)> = vec![
            // Deploys: live means finish the restart; not live means undo.
            (
                Op::Deploy,
                vec![Stage, Swap, Restart],
                Some("1"),
                Abandon {
                    version: "2".into(),
                },
            ),
            (
                Op::Deploy,
                vec![Swap, Restart],
                Some("1"),
                Abandon {
                    version: "2".into(),
                },
            ),
            (
                Op::Deploy,
                vec![Swap, Restart],
                Some("2"),
                Finish(vec![Restart]),
            ),
            (Op::Deploy, vec![Restart], Some("2"), Finish(vec![Restart])),
            (Op::Deploy, vec![], Some("2"), Nothing),
            (
                Op::Deploy,
                vec![Stage, Swap, Restart],
                None,
                Abandon {
                    version: "2".into(),
                },
            ),
            // Rollbacks always finish, the swap included.
            (
                Op::Rollback,
                vec![Swap, Restore, Restart],
                Some("1"),
                Finish(vec![Swap, Restore, Restart]),
            ),
            (
                Op::Rollback,
                vec![Swap, Restore, Restart],
                Some("2"),
                Finish(vec![Restore, Restart]),
            ),
            (
                Op::Rollback,
                vec![Restore, Restart],
                Some("2"),
                Finish(vec![Restore, Restart]),
            ),
            (
                Op::Rollback,
                vec![Restart],
                Some("2"),
                Finish(vec![Restart]),
            ),
            (Op::Rollback, vec![], Some("2"), Nothing),
            // Swapped elsewhere by hand since: the swap is redone with all steps.
            (
                Op::Rollback,
                vec![Restart],
                Some("3"),
                Finish(vec![Swap, Restore, Restart]),
            ),
            // Activations have no restore.
            (
                Op::Activate,
                vec![Swap, Restart],
                Some("1"),
                Finish(vec![Swap, Restart]),
            ),
            (
                Op::Activate,
                vec![Swap, Restart],
                Some("2"),
                Finish(vec![Restart]),
            ),
            // Prunes finish, never removing what `current` names.
            (
                Op::Prune,
                vec![remove("1"), remove("3")],
                Some("2"),
                Finish(vec![remove("1"), remove("3")]),
            ),
            (
                Op::Prune,
                vec![remove("1"), remove("2")],
                Some("2"),
                Finish(vec![remove("1")]),
            ),
            (Op::Prune, vec![remove("2")], Some("2"), Nothing),
            (Op::Prune, vec![], Some("2"), Nothing),
            // A staging that did not finish goes; a finished one stays.
            (
                Op::Stage,
                vec![Stage],
                Some("1"),
                Abandon {
                    version: "2".into(),
                },
            ),
            (Op::Stage, vec![], Some("1"), Nothing),
        ];
        for (op, steps, current, want) in cases {
            let i = intent(op, steps.clone());
            assert_eq!(
                recover(&i, &on(current)),
                want,
                "{op:?} {steps:?} at {current:?}"
            );
        }
    }

    #[test]
    fn a_target_that_is_gone_cannot_be_finished() {
        let disk = FakeDisk {
            current: Some("1"),
            releases: &["1"],
        };
        let i = intent(Op::Rollback, vec![Step::Swap, Step::Restore, Step::Restart]);
        assert_eq!(recover(&i, &disk), Recovery::Nothing);
        let i = intent(Op::Deploy, vec![Step::Stage, Step::Swap, Step::Restart]);
        assert_eq!(recover(&i, &disk), Recovery::Nothing);
        let i = intent(Op::Stage, vec![Step::Stage]);
        assert_eq!(
            recover(&i, &disk),
            Recovery::Nothing,
            "nothing was published"
        );
    }

    #[test]
    fn done_drops_the_step_and_those_before_it() {
        let mut i = intent(Op::Rollback, vec![Step::Swap, Step::Restore, Step::Restart]);
        i.done(&Step::Restore);
        assert_eq!(i.steps, vec![Step::Restart]);
        i.done(&Step::Swap);
        assert_eq!(
            i.steps,
            vec![Step::Restart],
            "a step already done changes nothing"
        );
        assert_eq!(
            Intent::steps_text(&[Step::Swap, remove("1")]),
            "swap, remove 1"
        );
    }

    #[test]
    fn intents_round_trip_through_json() {
        let i = intent(Op::Prune, vec![remove("1")]);
        let text = serde_json::to_string(&i).unwrap();
        assert!(text.contains(r#""op":"prune""#), "{text}");
        assert!(
            text.contains(r#"{"step":"remove","version":"1"}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Intent>(&text).unwrap(), i);
    }
}
