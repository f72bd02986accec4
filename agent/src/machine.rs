//! An app's lifecycle as a pure state machine: `Machine::step(input, now,
//! facts) -> effects`.
//!
//! Owns every decision of an app's life: whether a command is accepted,
//! which step of a deploy, rollback or activation comes next and what a
//! failed step means, when each check is due, what a result means for the
//! bake, when to roll back, degrade or only alert. The supervisor (the
//! shell) performs the effects in order and feeds their results back as
//! inputs; at most one effect of a batch has a result, and it is the last.
//!
//! Must never do I/O or read a clock: time comes with each input, facts
//! about releases through `Facts`, so every transition is tested with a fake
//! clock (`tests` below).
//!
//! ```text
//!            deploy                 journaled, staged, cleared by the hooks
//!  Empty ─────────────▶ Staging ─────────────────────────▶ Activating ──swapped──▶ Restarting
//!  Steady    ◀─refused/failed─┘ (back to the prior state)      │ failed: prior          │
//!  Degraded                                                    │                  restarted│ failed
//!     ▲                                                        │                        ▼  ▼
//!     │ restart/restore failed           rollback (operator)   │      Baking ──failed──▶ Activating
//!     │                               ┌────────────────────────┘        │ passed       (rollback)
//!     │                               ▼                                 ▼                 │ swapped
//!     └──────────── RollingBack ◀── Activating ◀── unhealthy ──── Steady ◀── restarted ── RollingBack
//!                  restore, restart  (rollback)    (steady, auto_rollback = always)
//!
//!  Baking ──window over, no verdict──▶ Baking (extended) ──max_bake over──▶ Held
//!  Held, Baking ──promote──▶ Steady         Held: no automatic action
//! ```

use std::time::{Duration, Instant};

use crate::config::AutoRollback;
use crate::lifecycle::{Intent, Op, Step};
use crate::plugin::Phase;
use crate::policy::{
    bake_verdict, steady_action, BakeCheck, BakeVerdict, BakeWindow, CheckTracker, Health, OnError,
    Outcome, Rule, Severity, SteadyAction,
};
use crate::store::{Actor, AppState, EventKind, ReleaseState};

/// How a deploy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployOutcome {
    /// Activated and baking (the caller did not wait).
    Baking,
    /// Passed its bake: marked good.
    Good,
    /// Failed and was rolled back to `to`.
    RolledBack {
        /// The release restored.
        to: String,
        /// Why.
        reason: String,
    },
    /// Failed and nothing could be restored; the app waits for an operator.
    Degraded {
        /// Why.
        reason: String,
    },
    /// The bake ended without a verdict; the app waits for an operator.
    Held {
        /// Why.
        reason: String,
    },
}

impl DeployOutcome {
    /// The name used in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeployOutcome::Baking => "baking",
            DeployOutcome::Good => "good",
            DeployOutcome::RolledBack { .. } => "rolled-back",
            DeployOutcome::Degraded { .. } => "degraded",
            DeployOutcome::Held { .. } => "held",
        }
    }
}

/// The result of a successful rollback or activation command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackDone {
    /// The release that was active.
    pub from: Option<String>,
    /// The release now active.
    pub to: String,
}

/// Why the machine refused or failed a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The app is in the middle of something.
    Busy(AppState),
    /// The version exists already.
    ReleaseExists(String),
    /// No release is active.
    NothingActive,
    /// No good release to go back to.
    NoTarget,
    /// The target is already active.
    AlreadyActive(String),
    /// No such release on disk.
    NotFound(String),
    /// A pre-activate hook said no.
    Vetoed {
        /// The hook.
        hook: String,
        /// The release refused.
        version: String,
        /// The hook's error.
        reason: String,
    },
    /// Only a held or baking release can be promoted.
    NotPromotable(AppState),
    /// The effect that failed (the shell holds its error).
    Failed,
}

/// A pre-activate hook's veto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veto {
    /// The hook.
    pub hook: String,
    /// Its error.
    pub reason: String,
}

/// One check as the machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    /// Its name.
    pub name: String,
    /// Time between runs.
    pub interval: Duration,
    /// How failures are counted.
    pub rule: Rule,
    /// How plugin errors count.
    pub on_error: OnError,
    /// What an unhealthy result does.
    pub severity: Severity,
    /// Conclusive runs a bake needs from it.
    pub min_conclusive: u32,
}

impl CheckSpec {
    /// Whether a tracker of `self` may go on counting for `other`.
    fn same_counting(&self, other: &CheckSpec) -> bool {
        self.name == other.name && self.rule == other.rule && self.on_error == other.on_error
    }

    /// How the rule reads in a reason: "failed 3 time(s) in a row".
    fn rule_text(&self) -> String {
        match self.rule {
            Rule::Consecutive(n) => format!("failed {n} time(s) in a row"),
            Rule::Ratio { ratio, window } => format!(
                "failed more than {}% of its runs over {}",
                (ratio * 100.0 * 1000.0).round() / 1000.0,
                humantime::format_duration(window)
            ),
        }
    }
}

/// The app settings that decisions depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The bake window of a new release.
    pub bake: Duration,
    /// The longest a bake may be extended to (at least `bake`).
    pub max_bake: Duration,
    /// When an unhealthy check rolls back.
    pub auto_rollback: AutoRollback,
    /// The app's checks, in config order.
    pub checks: Vec<CheckSpec>,
}

/// What the machine may ask about releases (the store and the disk).
pub trait Facts {
    /// `releases/<version>` exists.
    fn on_disk(&self, version: &str) -> bool;
    /// The store has a record of `version`.
    fn recorded(&self, version: &str) -> bool;
    /// The most recently activated good release other than `except`.
    fn newest_good(&self, except: Option<&str>) -> Option<String>;
}

/// Who hears how an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The deploy command being handled.
    Deploy,
    /// The rollback or activate command being handled.
    Switch,
    /// Deploys that wait for their bake (`deploy --wait`).
    Waiters,
    /// Nobody (start-up finishing an interrupted operation).
    Nobody,
}

/// An operation between its first side effect and its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// What is being done.
    pub op: Op,
    /// The release being activated.
    pub to: String,
    /// The release active when it began (a rollback's failed release).
    pub from: Option<String>,
    /// Why, in words.
    pub why: String,
    /// Who asked.
    pub actor: Actor,
    /// The check behind an automatic rollback.
    pub check: Option<String>,
    /// The rollback is the agent's own (the loop guard applies after it).
    pub automatic: bool,
    /// Who hears the outcome.
    pub caller: Caller,
    /// The journaled steps not yet done.
    pub steps: Vec<Step>,
    /// The state to return to when the operation ends before its swap.
    pub prior: Box<State>,
    /// A rollback whose state files could not be restored.
    pub restore_failed: bool,
    /// What is left of the bake (a deploy finished at start-up).
    pub bake_left: Option<Duration>,
    /// Finished at start-up, from the journal.
    pub recovering: bool,
    /// The deploy's bake answers the deploy command (`deploy --wait`).
    pub wait: bool,
    /// A deploy of a release staged before it began (nothing to stage,
    /// nothing to discard).
    pub staged: bool,
}

impl Flow {
    fn new(
        op: Op,
        to: &str,
        from: Option<String>,
        why: String,
        actor: Actor,
        prior: State,
    ) -> Flow {
        let steps = match op {
            Op::Deploy => vec![Step::Stage, Step::Swap, Step::Restart],
            Op::Rollback => vec![Step::Swap, Step::Restore, Step::Restart],
            Op::Activate | Op::Prune => vec![Step::Swap, Step::Restart],
            Op::Stage => vec![Step::Stage],
        };
        Flow {
            op,
            to: to.to_string(),
            from,
            why,
            actor,
            check: None,
            automatic: false,
            caller: Caller::Nobody,
            steps,
            prior: Box::new(prior),
            restore_failed: false,
            bake_left: None,
            recovering: false,
            wait: false,
            staged: false,
        }
    }

    /// The journal entry for this operation (`at_ms` is the shell's to stamp).
    pub fn intent(&self) -> Intent {
        Intent {
            op: self.op,
            from: self.from.clone(),
            to: Some(self.to.clone()),
            why: self.why.clone(),
            actor: self.actor.name.clone(),
            check: self.check.clone(),
            automatic: self.automatic,
            source: None,
            steps: self.steps.clone(),
            at_ms: 0,
            staged: self.staged,
            before: Some((
                self.prior.app_state(),
                match &*self.prior {
                    State::Degraded { reason, .. } => Some(reason.clone()),
                    State::Steady { note, .. } => note.clone(),
                    _ => None,
                },
            )),
        }
    }

    /// The operation of an intent found at start-up, with the steps that
    /// `lifecycle::recover` left. None for what the machine does not run
    /// (prunes) or an intent without a release.
    pub fn recovered(intent: &Intent, steps: Vec<Step>, bake_left: Duration) -> Option<Flow> {
        let to = intent.to.clone()?;
        if intent.op == Op::Prune {
            return None;
        }
        let actor = if intent.actor == Actor::agent().name {
            Actor::agent()
        } else {
            Actor {
                uid: None,
                name: intent.actor.clone(),
            }
        };
        let mut f = Flow::new(
            intent.op,
            &to,
            intent.from.clone(),
            format!("{} (completed at start-up)", intent.why),
            actor,
            State::Empty,
        );
        f.check = intent.check.clone();
        f.automatic = intent.automatic;
        f.steps = steps;
        f.staged = intent.staged;
        f.recovering = true;
        f.bake_left = Some(bake_left);
        Some(f)
    }

    fn done(&mut self, step: &Step) -> Effect {
        if let Some(i) = self.steps.iter().position(|s| s == step) {
            self.steps.drain(..=i);
        }
        Effect::StepDone(step.clone())
    }
}

/// Where the app is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// No release was ever activated.
    Empty,
    /// A deploy before its swap: journal, staged copy, pre-activate hooks.
    Staging(Flow),
    /// The swap of a deploy, activation or rollback.
    Activating(Flow),
    /// The restart after the swap of a deploy or activation.
    Restarting(Flow),
    /// A new release under watch until `until`.
    Baking {
        /// The release.
        version: String,
        /// The end of its bake window.
        until: Instant,
        /// The latest it may be extended to.
        max_until: Instant,
        /// The window ended without a verdict and the bake goes on.
        extended: bool,
    },
    /// A rollback after its swap: restore, restart.
    RollingBack(Flow),
    /// The active release is watched, nothing is in progress.
    Steady {
        /// The release.
        version: String,
        /// Why the app is here (after a rollback: its reason).
        note: Option<String>,
    },
    /// The agent stopped acting and waits for an operator.
    Degraded {
        /// The active release.
        version: Option<String>,
        /// Why.
        reason: String,
    },
    /// The bake ended without a verdict: checks go on, no automatic action,
    /// until an operator promotes or rolls back the release.
    Held {
        /// The active release.
        version: String,
        /// Why.
        reason: String,
    },
}

impl State {
    /// The state as stored and shown.
    pub fn app_state(&self) -> AppState {
        match self {
            State::Empty => AppState::Empty,
            State::Staging(_) | State::Restarting(_) => AppState::Deploying,
            State::Activating(f) if f.op == Op::Rollback => AppState::RollingBack,
            State::Activating(_) => AppState::Deploying,
            State::RollingBack(_) => AppState::RollingBack,
            State::Baking { .. } => AppState::Baking,
            State::Steady { .. } => AppState::Healthy,
            State::Degraded { .. } => AppState::Degraded,
            State::Held { .. } => AppState::Held,
        }
    }

    fn flow(&self) -> Option<&Flow> {
        match self {
            State::Staging(f)
            | State::Activating(f)
            | State::Restarting(f)
            | State::RollingBack(f) => Some(f),
            _ => None,
        }
    }
}

/// An event for the history, as the machine knows it (the shell adds the
/// app and the time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// What happened.
    pub kind: EventKind,
    /// Who.
    pub actor: Actor,
    /// The release concerned.
    pub version: Option<String>,
    /// For swaps: before and after.
    pub swap: Option<(Option<String>, String)>,
    /// The check concerned.
    pub check: Option<String>,
    /// The hook concerned.
    pub hook: Option<String>,
    /// Why.
    pub reason: String,
}

impl Note {
    fn new(kind: EventKind, version: &str, reason: impl Into<String>) -> Note {
        Note {
            kind,
            actor: Actor::agent(),
            version: Some(version.to_string()),
            swap: None,
            check: None,
            hook: None,
            reason: reason.into(),
        }
    }

    fn by(mut self, actor: &Actor) -> Note {
        self.actor = actor.clone();
        self
    }

    fn check(mut self, check: Option<&str>) -> Note {
        self.check = check.map(str::to_string);
        self
    }
}

/// A hook notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tell {
    /// `to` went live.
    Activated {
        /// Before.
        from: Option<String>,
        /// After.
        to: String,
        /// Who.
        actor: String,
    },
    /// `from` was rolled back to `to`.
    RolledBack {
        /// The release left.
        from: String,
        /// The release restored.
        to: String,
        /// Why.
        reason: String,
        /// The check that caused it.
        check: Option<String>,
        /// Who.
        actor: String,
    },
    /// The app waits for an operator.
    Degraded {
        /// The active release.
        version: Option<String>,
        /// Why.
        reason: String,
    },
    /// The bake ended without a verdict.
    Held {
        /// The active release.
        version: String,
        /// Why.
        reason: String,
    },
}

/// Counters the metrics keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A deploy ended so (`refused` when it never went live).
    Deploy(&'static str),
    /// A rollback was done (`automatic` or `operator`).
    Rollback(&'static str),
}

/// Where the answer to a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// To the deploy command.
    Deploy(Result<DeployOutcome, Refusal>),
    /// The deploy command waits for its bake: keep its reply with the waiters.
    Park,
    /// To the rollback or activate command.
    Switch(Result<RollbackDone, Refusal>),
    /// To the pause command.
    Paused,
    /// To the promote command: the release marked good.
    Promoted(Result<String, Refusal>),
    /// To the stage command: the release staged.
    Staged(Result<String, Refusal>),
    /// To the deploys waiting for their bake.
    Waiters(DeployOutcome),
}

/// What the shell performs. Only the last effect of a batch may have a
/// result, named after it.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Journal the operation (result: `Journaled`).
    Begin(Intent),
    /// Journal that a step is done.
    StepDone(Step),
    /// Clear the journal: the operation ended.
    End,
    /// Stage the deploy's source as `version` and record it (result: `Staged`).
    Stage {
        /// The new release.
        version: String,
    },
    /// Run the pre-activate hooks (result: `Cleared`).
    Vet {
        /// The release about to go live.
        version: String,
        /// The release active now.
        from: Option<String>,
        /// Who asked.
        actor: Actor,
    },
    /// Save the state files of the release about to be left.
    Snapshot {
        /// That release.
        of: String,
    },
    /// Point `current` at `to` and record it (result: `Swapped`).
    Swap {
        /// The operation.
        op: Op,
        /// The release.
        to: String,
        /// Who.
        actor: Actor,
        /// Why, for the `activated` event.
        why: String,
    },
    /// Restore the state files saved when `of` was left (result: `Restored`).
    Restore {
        /// The release.
        of: String,
    },
    /// Run the restart command for `version` (result: `Restarted`).
    Restart {
        /// The operation.
        op: Op,
        /// The release.
        version: String,
    },
    /// Remove a deploy's staged copy and its record (it never went live).
    Discard {
        /// The release.
        version: String,
    },
    /// Set a release's state.
    Release {
        /// The release.
        version: String,
        /// Its new state.
        state: ReleaseState,
        /// Why.
        reason: Option<String>,
    },
    /// Add an event to the history.
    Record(Note),
    /// Write the app's record (state, active, reason, flags).
    Save,
    /// A new watch began: forget the old check results.
    Watch {
        /// The release watched.
        version: String,
        /// Its rollback target, as told to checks.
        previous: Option<String>,
    },
    /// Start one check call; its result comes back as `CheckDone`.
    RunCheck {
        /// The check's index in `Settings::checks`.
        index: usize,
        /// The watch it belongs to.
        generation: u64,
        /// The release checked.
        version: String,
        /// Bake or steady.
        phase: Phase,
    },
    /// Store a check's latest result (the shell has its text and metrics).
    RecordCheck {
        /// The check's index.
        index: usize,
        /// Its outcome.
        outcome: Outcome,
        /// Failures in a row so far.
        consecutive_failures: u32,
        /// Runs in this watch.
        runs: u64,
    },
    /// Tell the hooks.
    Notify(Tell),
    /// Remove releases beyond `keep_releases`.
    Prune,
    /// Count for the metrics.
    Count(Count),
    /// Answer.
    Reply(Answer),
}

/// What happens to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `deploy VERSION` (the source is the shell's, unless `staged`).
    Deploy {
        /// The new version.
        version: String,
        /// Who.
        actor: Actor,
        /// Answer only once the bake is decided.
        wait: bool,
        /// The release is staged already (a fleet rollout's, or `stage`d):
        /// it is activated and baked as it is.
        staged: bool,
    },
    /// `stage VERSION`: staged and recorded, not activated (the source is
    /// the shell's).
    Stage {
        /// The new version.
        version: String,
        /// Who.
        actor: Actor,
    },
    /// `rollback [--to VERSION]`.
    Rollback {
        /// The explicit target.
        to: Option<String>,
        /// The operator's reason.
        reason: Option<String>,
        /// Who.
        actor: Actor,
    },
    /// `activate VERSION`.
    Activate {
        /// The release.
        version: String,
        /// Who.
        actor: Actor,
    },
    /// `pause` / `resume`.
    Pause {
        /// Freeze when true.
        paused: bool,
        /// Who.
        actor: Actor,
    },
    /// `promote`: mark the held (or baking) release good.
    Promote {
        /// The operator's reason.
        reason: Option<String>,
        /// Who.
        actor: Actor,
    },
    /// New settings from a reloaded config.
    Reload(Settings),
    /// Start-up found this operation interrupted: finish it.
    Recover(Flow),
    /// Start-up is over (an interrupted operation included): a prune that a
    /// crash cut short before it was planned is done now.
    Started,
    /// The journal was written (or not).
    Journaled(Result<(), String>),
    /// The release was staged and recorded (or not).
    Staged(Result<(), String>),
    /// The pre-activate hooks let the release through (or one vetoed it).
    Cleared(Result<(), Veto>),
    /// `current` was swapped (or not).
    Swapped(Result<(), String>),
    /// The state files were restored (or not).
    Restored(bool),
    /// The restart command succeeded (or not, with the reason).
    Restarted(Result<(), String>),
    /// Time passed: run due checks, decide the bake.
    Tick,
    /// A check call came back.
    CheckDone {
        /// The watch it was started for.
        generation: u64,
        /// The check's index.
        index: usize,
        /// Its outcome.
        outcome: Outcome,
        /// What it said.
        summary: String,
    },
}

/// One check under watch.
#[derive(Debug, Clone)]
struct Slot {
    tracker: CheckTracker,
    next_due: Instant,
    in_flight: bool,
    /// The unhealthy state was already acted on (steady phase).
    reported: bool,
    summary: String,
}

/// The watch over the active release.
#[derive(Debug, Clone)]
struct Watch {
    version: String,
    previous: Option<String>,
    slots: Vec<Slot>,
}

/// One app's lifecycle.
#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    active: Option<String>,
    paused: bool,
    /// The active release was restored by an automatic rollback.
    restored: bool,
    settings: Settings,
    watch: Option<Watch>,
    /// Bumped whenever a watch begins or ends: older results are dropped.
    generation: u64,
}

/// How the app was found at start-up.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Nothing active.
    Empty,
    /// `version` has not finished its bake: `left` remains.
    Baking {
        /// The release.
        version: String,
        /// What is left of its bake.
        left: Duration,
    },
    /// `version` is active and proven (or was vouched for).
    Steady {
        /// The release.
        version: String,
        /// The reason kept from before.
        note: Option<String>,
    },
    /// The app was waiting for an operator.
    Degraded {
        /// The release.
        version: String,
        /// Why.
        reason: String,
    },
    /// The app was held after a bake without a verdict.
    Held {
        /// The release.
        version: String,
        /// Why.
        reason: String,
    },
}

impl Machine {
    /// The machine of an app found as `start`, watching what is active.
    pub fn new(
        settings: Settings,
        start: Start,
        paused: bool,
        restored: bool,
        facts: &impl Facts,
        now: Instant,
    ) -> Machine {
        let mut m = Machine {
            state: State::Empty,
            active: None,
            paused,
            restored,
            settings,
            watch: None,
            generation: 0,
        };
        let version = match start {
            Start::Empty => return m,
            Start::Baking { version, left } => {
                m.state = m.baking(&version, now, left);
                version
            }
            Start::Steady { version, note } => {
                m.state = State::Steady {
                    version: version.clone(),
                    note,
                };
                version
            }
            Start::Degraded { version, reason } => {
                m.state = State::Degraded {
                    version: Some(version.clone()),
                    reason,
                };
                version
            }
            Start::Held { version, reason } => {
                m.state = State::Held {
                    version: version.clone(),
                    reason,
                };
                version
            }
        };
        m.active = Some(version.clone());
        let previous = facts.newest_good(Some(&version));
        m.begin_watch(&version, previous, now);
        m
    }

    /// Where the app is.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The release `current` points at, as far as the machine knows.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// Automatic actions are frozen.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The loop guard of an automatic rollback is set.
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// The app's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Why the app is where it is, for status.
    pub fn reason(&self) -> Option<&str> {
        match &self.state {
            State::Steady { note, .. } => note.as_deref(),
            State::Degraded { reason, .. } | State::Held { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Baking `version` from `now` with `left` of its window; the extension
    /// allowed beyond it is what `max_bake` adds to `bake`.
    fn baking(&self, version: &str, now: Instant, left: Duration) -> State {
        let until = now + left;
        State::Baking {
            version: version.to_string(),
            until,
            max_until: until + self.settings.max_bake.saturating_sub(self.settings.bake),
            extended: false,
        }
    }

    /// The end of the bake (of its extension, once extended), while baking.
    pub fn bake_until(&self) -> Option<Instant> {
        match &self.state {
            State::Baking {
                until, extended, ..
            } if !*extended => Some(*until),
            State::Baking { max_until, .. } => Some(*max_until),
            _ => None,
        }
    }

    /// The phase checks are told about: a held release never passed its bake.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Baking { .. } | State::Held { .. } => Phase::Bake,
            _ => Phase::Steady,
        }
    }

    /// The release under watch, its rollback target and the watch's generation.
    pub fn watching(&self) -> Option<(&str, Option<&str>, u64)> {
        self.watch
            .as_ref()
            .map(|w| (w.version.as_str(), w.previous.as_deref(), self.generation))
    }

    /// Failures in a row and runs of check `index` in this watch.
    pub fn counters(&self, index: usize) -> Option<(u32, u64)> {
        let s = self.watch.as_ref()?.slots.get(index)?;
        Some((s.tracker.consecutive_failures(), s.tracker.runs()))
    }

    /// When the shell should next send `Tick`: the earliest due check not in
    /// flight, or the end of the bake.
    pub fn next_wake(&self) -> Option<Instant> {
        let w = self.watch.as_ref()?;
        let due = w.slots.iter().filter(|s| !s.in_flight).map(|s| s.next_due);
        due.chain(self.bake_until()).min()
    }

    /// Takes one input at `now`; returns what to do, in order.
    pub fn step(&mut self, input: Input, now: Instant, facts: &impl Facts) -> Vec<Effect> {
        let mut fx = Vec::new();
        match input {
            Input::Deploy {
                version,
                actor,
                wait,
                staged,
            } => self.deploy(version, actor, wait, staged, facts, &mut fx),
            Input::Stage { version, actor } => self.stage(version, actor, facts, &mut fx),
            Input::Rollback { to, reason, actor } => {
                self.manual_rollback(to, reason, actor, facts, &mut fx)
            }
            Input::Activate { version, actor } => self.activate(version, actor, facts, &mut fx),
            Input::Pause { paused, actor } => self.pause(paused, actor, &mut fx),
            Input::Promote { reason, actor } => self.promote(reason, actor, &mut fx),
            Input::Reload(settings) => self.reload(settings, now, &mut fx),
            Input::Recover(flow) => self.recover(flow, &mut fx),
            Input::Started => {
                if matches!(self.state, State::Steady { .. }) {
                    fx.push(Effect::Prune);
                }
            }
            Input::Tick => self.tick(now, facts, &mut fx),
            Input::CheckDone {
                generation,
                index,
                outcome,
                summary,
            } => self.check_done(generation, index, outcome, summary, now, facts, &mut fx),
            result => self.advance(result, now, facts, &mut fx),
        }
        fx
    }

    /// Refuses what cannot start now. A deploy or an activation waits for a
    /// bake; a rollback may interrupt one.
    fn refuse_busy(&self, during_bake: bool) -> Option<Refusal> {
        let busy = self.state.flow().is_some()
            || (during_bake && matches!(self.state, State::Baking { .. }));
        busy.then(|| Refusal::Busy(self.state.app_state()))
    }

    fn deploy(
        &mut self,
        version: String,
        actor: Actor,
        wait: bool,
        staged: bool,
        facts: &impl Facts,
        fx: &mut Vec<Effect>,
    ) {
        let made = if staged {
            self.staged_release(&version, actor, facts)
        } else {
            self.new_release(Op::Deploy, &version, actor, facts)
        };
        let mut f = match made {
            Ok(f) => f,
            Err(r) => {
                fx.push(Effect::Count(Count::Deploy("refused")));
                fx.push(Effect::Reply(Answer::Deploy(Err(r))));
                return;
            }
        };
        f.caller = Caller::Deploy;
        f.wait = wait;
        fx.push(Effect::Begin(f.intent()));
        self.state = State::Staging(f);
    }

    /// The flow of a deploy or a stage of `version`, unless one cannot
    /// start now: another operation or a bake runs, or the version is
    /// already there.
    fn new_release(
        &self,
        op: Op,
        version: &str,
        actor: Actor,
        facts: &impl Facts,
    ) -> Result<Flow, Refusal> {
        if let Some(r) = self.refuse_busy(true) {
            return Err(r);
        }
        if facts.on_disk(version) || facts.recorded(version) {
            return Err(Refusal::ReleaseExists(version.to_string()));
        }
        Ok(Flow::new(
            op,
            version,
            self.active.clone(),
            op.as_str().into(),
            actor,
            self.state.clone(),
        ))
    }

    /// The flow of a deploy of `version` as staged, unless one cannot start
    /// now: another operation or a bake runs, the release is not there, or
    /// it is the active one.
    fn staged_release(
        &self,
        version: &str,
        actor: Actor,
        facts: &impl Facts,
    ) -> Result<Flow, Refusal> {
        if let Some(r) = self.refuse_busy(true) {
            return Err(r);
        }
        if !(facts.on_disk(version) && facts.recorded(version)) {
            return Err(Refusal::NotFound(version.to_string()));
        }
        if self.active.as_deref() == Some(version) {
            return Err(Refusal::AlreadyActive(version.to_string()));
        }
        let mut f = Flow::new(
            Op::Deploy,
            version,
            self.active.clone(),
            "deploy (staged)".into(),
            actor,
            self.state.clone(),
        );
        f.steps.retain(|s| *s != Step::Stage);
        f.staged = true;
        Ok(f)
    }

    /// Stages a release beside the active one. Refused while another
    /// operation or a bake runs (its state would be set aside meanwhile).
    fn stage(&mut self, version: String, actor: Actor, facts: &impl Facts, fx: &mut Vec<Effect>) {
        match self.new_release(Op::Stage, &version, actor, facts) {
            Ok(f) => {
                fx.push(Effect::Begin(f.intent()));
                self.state = State::Staging(f);
            }
            Err(r) => fx.push(Effect::Reply(Answer::Staged(Err(r)))),
        }
    }

    fn manual_rollback(
        &mut self,
        to: Option<String>,
        reason: Option<String>,
        actor: Actor,
        facts: &impl Facts,
        fx: &mut Vec<Effect>,
    ) {
        let target = match (self.refuse_busy(false), self.active.clone()) {
            (Some(r), _) => Err(r),
            (None, None) => Err(Refusal::NoTarget),
            (None, Some(active)) => match to {
                Some(v) if v == active => Err(Refusal::AlreadyActive(v)),
                Some(v) if !facts.on_disk(&v) => Err(Refusal::NotFound(v)),
                Some(v) => Ok((active, v)),
                None => facts
                    .newest_good(Some(&active))
                    .map(|v| (active, v))
                    .ok_or(Refusal::NoTarget),
            },
        };
        let (failed, target) = match target {
            Ok(t) => t,
            Err(r) => return fx.push(Effect::Reply(Answer::Switch(Err(r)))),
        };
        let why = reason.unwrap_or_else(|| format!("requested by {}", actor.name));
        let mut f = Flow::new(
            Op::Rollback,
            &target,
            Some(failed),
            why,
            actor,
            self.state.clone(),
        );
        f.caller = Caller::Switch;
        fx.push(Effect::Begin(f.intent()));
        self.state = State::Activating(f);
    }

    fn activate(
        &mut self,
        version: String,
        actor: Actor,
        facts: &impl Facts,
        fx: &mut Vec<Effect>,
    ) {
        let refusal = self
            .refuse_busy(true)
            .or_else(|| (!facts.on_disk(&version)).then(|| Refusal::NotFound(version.clone())));
        if let Some(r) = refusal {
            return fx.push(Effect::Reply(Answer::Switch(Err(r))));
        }
        let mut f = Flow::new(
            Op::Activate,
            &version,
            self.active.clone(),
            "activate (operator, no analysis)".into(),
            actor,
            self.state.clone(),
        );
        f.caller = Caller::Switch;
        fx.push(Effect::Begin(f.intent()));
        self.state = State::Activating(f);
    }

    fn pause(&mut self, paused: bool, actor: Actor, fx: &mut Vec<Effect>) {
        if self.paused != paused {
            self.paused = paused;
            let (kind, what) = if paused {
                (EventKind::Paused, "automatic actions frozen")
            } else {
                (EventKind::Resumed, "automatic actions resumed")
            };
            fx.push(Effect::Save);
            fx.push(Effect::Record(Note {
                kind,
                actor,
                version: None,
                swap: None,
                check: None,
                hook: None,
                reason: what.into(),
            }));
        }
        fx.push(Effect::Reply(Answer::Paused));
    }

    /// Checks whose name and counting are unchanged keep their state (due
    /// no later than one new interval from now); if the set changed, the
    /// watch starts again (the bake keeps its deadline).
    fn reload(&mut self, settings: Settings, now: Instant, fx: &mut Vec<Effect>) {
        let same = self.settings.checks.len() == settings.checks.len()
            && self
                .settings
                .checks
                .iter()
                .zip(&settings.checks)
                .all(|(a, b)| a.same_counting(b));
        self.settings = settings;
        if same {
            if let Some(w) = self.watch.as_mut() {
                for (s, c) in w.slots.iter_mut().zip(&self.settings.checks) {
                    s.next_due = s.next_due.min(now + c.interval);
                }
            }
        } else if let Some(w) = self.watch.take() {
            self.begin_watch(&w.version, w.previous.clone(), now);
            fx.push(Effect::Watch {
                version: w.version,
                previous: w.previous,
            });
            fx.push(Effect::Save);
        }
    }

    fn recover(&mut self, mut f: Flow, fx: &mut Vec<Effect>) {
        f.prior = Box::new(self.state.clone());
        f.caller = Caller::Nobody;
        let swap_left = f.steps.contains(&Step::Swap);
        match f.op {
            Op::Deploy => {
                self.stop_watch();
                fx.push(Effect::Restart {
                    op: f.op,
                    version: f.to.clone(),
                });
                self.state = State::Restarting(f);
            }
            Op::Rollback | Op::Activate if swap_left => {
                fx.push(self.swap_effect(&f));
                self.state = State::Activating(f);
            }
            Op::Rollback => self.after_rollback_swap(f, fx),
            // Nothing is left to finish of a staging (start-up removes an
            // unfinished copy).
            Op::Stage => fx.push(Effect::End),
            Op::Activate | Op::Prune => {
                self.stop_watch();
                fx.push(Effect::Restart {
                    op: f.op,
                    version: f.to.clone(),
                });
                self.state = State::Restarting(f);
            }
        }
    }

    fn swap_effect(&self, f: &Flow) -> Effect {
        let why = match f.op {
            Op::Rollback => format!("rollback: {}", f.why),
            _ => f.why.clone(),
        };
        Effect::Swap {
            op: f.op,
            to: f.to.clone(),
            actor: f.actor.clone(),
            why,
        }
    }

    /// The result of an effect, for the operation in progress.
    fn advance(&mut self, input: Input, now: Instant, facts: &impl Facts, fx: &mut Vec<Effect>) {
        let state = std::mem::replace(&mut self.state, State::Empty);
        self.state = match (state, input) {
            (State::Staging(f), Input::Journaled(Ok(()))) if f.staged => {
                fx.push(Effect::Save);
                fx.push(Effect::Vet {
                    version: f.to.clone(),
                    from: f.from.clone(),
                    actor: f.actor.clone(),
                });
                State::Staging(f)
            }
            (State::Staging(f), Input::Journaled(Ok(()))) => {
                fx.push(Effect::Save);
                fx.push(Effect::Stage {
                    version: f.to.clone(),
                });
                State::Staging(f)
            }
            (State::Staging(f), Input::Journaled(Err(_))) if f.op == Op::Stage => {
                fx.push(Effect::Reply(Answer::Staged(Err(Refusal::Failed))));
                *f.prior
            }
            (State::Staging(mut f), Input::Staged(Ok(()))) if f.op == Op::Stage => {
                fx.push(f.done(&Step::Stage));
                fx.push(Effect::End);
                fx.push(Effect::Save);
                fx.push(Effect::Reply(Answer::Staged(Ok(f.to.clone()))));
                *f.prior
            }
            (State::Staging(f), Input::Staged(Err(_))) if f.op == Op::Stage => {
                fx.push(Effect::Discard {
                    version: f.to.clone(),
                });
                fx.push(Effect::End);
                fx.push(Effect::Save);
                fx.push(Effect::Reply(Answer::Staged(Err(Refusal::Failed))));
                *f.prior
            }
            (State::Staging(f), Input::Journaled(Err(_))) => {
                fx.push(Effect::Count(Count::Deploy("refused")));
                fx.push(Effect::Reply(Answer::Deploy(Err(Refusal::Failed))));
                *f.prior
            }
            (State::Staging(mut f), Input::Staged(Ok(()))) => {
                fx.push(f.done(&Step::Stage));
                fx.push(Effect::Vet {
                    version: f.to.clone(),
                    from: f.from.clone(),
                    actor: f.actor.clone(),
                });
                State::Staging(f)
            }
            (State::Staging(f), Input::Staged(Err(e))) => self.deploy_failed(f, e, fx),
            (State::Staging(f), Input::Cleared(Err(veto))) => {
                let reason = format!("vetoed by hook `{}`: {}", veto.hook, veto.reason);
                fx.push(Effect::Release {
                    version: f.to.clone(),
                    state: ReleaseState::Failed,
                    reason: Some(reason.clone()),
                });
                let mut note = Note::new(EventKind::DeployFailed, &f.to, reason).by(&f.actor);
                note.hook = Some(veto.hook.clone());
                fx.push(Effect::Record(note));
                fx.push(Effect::End);
                fx.push(Effect::Save);
                fx.push(Effect::Count(Count::Deploy("refused")));
                fx.push(Effect::Reply(Answer::Deploy(Err(Refusal::Vetoed {
                    hook: veto.hook,
                    version: f.to.clone(),
                    reason: veto.reason,
                }))));
                *f.prior
            }
            (State::Staging(f), Input::Cleared(Ok(()))) => {
                if let Some(from) = &f.from {
                    fx.push(Effect::Snapshot { of: from.clone() });
                }
                fx.push(self.swap_effect(&f));
                State::Activating(f)
            }
            (State::Activating(f), Input::Journaled(r)) => {
                // A rollback goes ahead even without a journal: safety first.
                if r.is_err() && f.op != Op::Rollback {
                    fx.push(Effect::Reply(Answer::Switch(Err(Refusal::Failed))));
                    *f.prior
                } else if f.op == Op::Activate && f.from.as_deref() == Some(f.to.as_str()) {
                    // Already active: only the restart is left.
                    self.after_swap(f, fx)
                } else {
                    fx.push(Effect::Save);
                    if f.op == Op::Activate {
                        if let Some(from) = &f.from {
                            fx.push(Effect::Snapshot { of: from.clone() });
                        }
                    }
                    fx.push(self.swap_effect(&f));
                    State::Activating(f)
                }
            }
            (State::Activating(f), Input::Swapped(Ok(()))) => {
                self.active = Some(f.to.clone());
                self.after_swap(f, fx)
            }
            (State::Activating(f), Input::Swapped(Err(e))) => self.swap_failed(f, e, fx),
            (State::Restarting(f), Input::Restarted(r)) => self.restarted(f, r, now, facts, fx),
            (State::RollingBack(mut f), Input::Restored(ok)) => {
                f.restore_failed = !ok;
                fx.push(f.done(&Step::Restore));
                fx.push(Effect::Restart {
                    op: f.op,
                    version: f.to.clone(),
                });
                State::RollingBack(f)
            }
            (State::RollingBack(f), Input::Restarted(r)) => self.rolled_back(f, r, now, fx),
            // A result that does not belong to the state (cannot happen
            // with a shell that performs effects in order): ignored.
            (state, _) => state,
        };
    }

    fn deploy_failed(&mut self, f: Flow, reason: String, fx: &mut Vec<Effect>) -> State {
        fx.push(Effect::Record(
            Note::new(EventKind::DeployFailed, &f.to, reason).by(&f.actor),
        ));
        // A release staged before the deploy stays staged.
        if !f.staged {
            fx.push(Effect::Discard {
                version: f.to.clone(),
            });
        }
        fx.push(Effect::End);
        fx.push(Effect::Save);
        fx.push(Effect::Count(Count::Deploy("refused")));
        fx.push(Effect::Reply(Answer::Deploy(Err(Refusal::Failed))));
        *f.prior
    }

    fn swap_failed(&mut self, f: Flow, error: String, fx: &mut Vec<Effect>) -> State {
        match f.op {
            Op::Deploy => self.deploy_failed(f, format!("activation failed: {error}"), fx),
            _ if f.recovering => {
                fx.push(Effect::End);
                let reason = format!("cannot finish the interrupted {}: {error}", f.op.as_str());
                self.state = *f.prior;
                self.degrade(None, reason, fx);
                std::mem::replace(&mut self.state, State::Empty)
            }
            Op::Rollback if f.automatic => {
                fx.push(Effect::End);
                let failed = f.from.clone().unwrap_or_default();
                let reason = format!("{}; rollback impossible: {error}", f.why);
                self.state = *f.prior;
                self.cannot_roll_back(&failed, reason, f.caller, fx);
                std::mem::replace(&mut self.state, State::Empty)
            }
            _ => {
                fx.push(Effect::End);
                fx.push(Effect::Save);
                fx.push(Effect::Reply(Answer::Switch(Err(Refusal::Failed))));
                *f.prior
            }
        }
    }

    /// `current` names `f.to`: what follows the swap.
    fn after_swap(&mut self, mut f: Flow, fx: &mut Vec<Effect>) -> State {
        fx.push(f.done(&Step::Swap));
        self.stop_watch();
        match f.op {
            Op::Rollback => {
                self.after_rollback_swap(f, fx);
                std::mem::replace(&mut self.state, State::Empty)
            }
            // A staging never swaps; should one come here, it only ends.
            Op::Stage => {
                fx.push(Effect::End);
                *f.prior
            }
            Op::Deploy | Op::Activate | Op::Prune => {
                if f.op == Op::Deploy {
                    fx.push(Effect::Release {
                        version: f.to.clone(),
                        state: ReleaseState::Active,
                        reason: None,
                    });
                    // A new release is live: the loop guard no longer applies.
                    self.restored = false;
                } else {
                    fx.push(Effect::Release {
                        version: f.to.clone(),
                        state: ReleaseState::Good,
                        reason: Some(format!("activated by {}", f.actor.name)),
                    });
                }
                fx.push(Effect::Save);
                fx.push(Effect::Restart {
                    op: f.op,
                    version: f.to.clone(),
                });
                State::Restarting(f)
            }
        }
    }

    /// A rollback's swap is done: the release left is failed, then restore
    /// and restart.
    fn after_rollback_swap(&mut self, f: Flow, fx: &mut Vec<Effect>) {
        self.stop_watch();
        let failed = f.from.clone().unwrap_or_default();
        if failed != f.to && !failed.is_empty() {
            fx.push(Effect::Release {
                version: failed.clone(),
                state: ReleaseState::Failed,
                reason: Some(f.why.clone()),
            });
            let mut note = Note::new(EventKind::RolledBack, &failed, f.why.clone())
                .by(&f.actor)
                .check(f.check.as_deref());
            note.swap = Some((Some(failed.clone()), f.to.clone()));
            fx.push(Effect::Record(note));
            fx.push(Effect::Notify(Tell::RolledBack {
                from: failed,
                to: f.to.clone(),
                reason: f.why.clone(),
                check: f.check.clone(),
                actor: f.actor.name.clone(),
            }));
        }
        fx.push(Effect::Save);
        if f.steps.contains(&Step::Restore) {
            fx.push(Effect::Restore { of: f.to.clone() });
        } else {
            fx.push(Effect::Restart {
                op: f.op,
                version: f.to.clone(),
            });
        }
        self.state = State::RollingBack(f);
    }

    fn restarted(
        &mut self,
        mut f: Flow,
        r: Result<(), String>,
        now: Instant,
        facts: &impl Facts,
        fx: &mut Vec<Effect>,
    ) -> State {
        match (f.op, r) {
            (Op::Deploy, Err(reason)) => {
                // The journal stays until the rollback replaces it.
                self.state = State::Restarting(f.clone());
                self.auto_rollback(&f.to, reason, None, f.caller, facts, fx);
                std::mem::replace(&mut self.state, State::Empty)
            }
            (Op::Deploy, Ok(())) => {
                fx.push(f.done(&Step::Restart));
                fx.push(Effect::End);
                fx.push(Effect::Notify(Tell::Activated {
                    from: f.from.clone(),
                    to: f.to.clone(),
                    actor: f.actor.name.clone(),
                }));
                let previous = facts.newest_good(Some(&f.to)).or(f.from.clone());
                let bake = f.bake_left.unwrap_or(self.settings.bake);
                self.state = self.baking(&f.to, now, bake);
                self.begin_watch(&f.to, previous.clone(), now);
                fx.push(Effect::Watch {
                    version: f.to.clone(),
                    previous,
                });
                fx.push(Effect::Save);
                fx.push(Effect::Reply(match (f.caller, f.wait) {
                    (Caller::Deploy, true) => Answer::Park,
                    _ => Answer::Deploy(Ok(DeployOutcome::Baking)),
                }));
                std::mem::replace(&mut self.state, State::Empty)
            }
            (_, r) => {
                fx.push(f.done(&Step::Restart));
                fx.push(Effect::End);
                self.restored = false;
                self.state = State::Steady {
                    version: f.to.clone(),
                    note: None,
                };
                self.begin_watch(&f.to, None, now);
                fx.push(Effect::Watch {
                    version: f.to.clone(),
                    previous: None,
                });
                fx.push(Effect::Save);
                match r {
                    // Degrading prunes too.
                    Err(why) => self.degrade(Some(&f.to), why, fx),
                    Ok(()) => {
                        fx.push(Effect::Notify(Tell::Activated {
                            from: f.from.clone(),
                            to: f.to.clone(),
                            actor: f.actor.name.clone(),
                        }));
                        fx.push(Effect::Prune);
                    }
                }
                fx.push(Effect::Reply(Answer::Switch(Ok(RollbackDone {
                    from: f.from.clone(),
                    to: f.to.clone(),
                }))));
                std::mem::replace(&mut self.state, State::Empty)
            }
        }
    }

    fn rolled_back(
        &mut self,
        mut f: Flow,
        r: Result<(), String>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> State {
        fx.push(f.done(&Step::Restart));
        fx.push(Effect::End);
        let failed = f.from.clone().unwrap_or_default();
        // Loop guard: if the restored release fails too, degrade, never swap again.
        self.restored = f.automatic;
        self.state = State::Steady {
            version: f.to.clone(),
            note: Some(format!("rolled back from {failed}: {}", f.why)),
        };
        self.begin_watch(&f.to, None, now);
        fx.push(Effect::Watch {
            version: f.to.clone(),
            previous: None,
        });
        fx.push(Effect::Save);
        let degraded = if let Err(why) = r {
            self.degrade(Some(&f.to), why, fx);
            true
        } else if f.restore_failed {
            let why = format!(
                "the state files of {} could not be restored (see history)",
                f.to
            );
            self.degrade(Some(&f.to), why, fx);
            true
        } else {
            false
        };
        if !f.recovering {
            let kind = if f.automatic { "automatic" } else { "operator" };
            fx.push(Effect::Count(Count::Rollback(kind)));
        }
        // The failed release now counts against `keep_releases`; pruned
        // before answering, so a waiting deploy sees the final layout
        // (degrading has pruned already).
        if !degraded {
            fx.push(Effect::Prune);
        }
        let outcome = DeployOutcome::RolledBack {
            to: f.to.clone(),
            reason: f.why.clone(),
        };
        self.answer_outcome(&f, outcome, fx);
        std::mem::replace(&mut self.state, State::Empty)
    }

    /// Tells an operation's caller (and, for deploys, the waiters) how it ended.
    fn answer_outcome(&self, f: &Flow, outcome: DeployOutcome, fx: &mut Vec<Effect>) {
        if f.automatic && matches!(f.caller, Caller::Deploy | Caller::Waiters) {
            fx.push(Effect::Count(Count::Deploy(outcome.as_str())));
        }
        match f.caller {
            Caller::Deploy => fx.push(Effect::Reply(Answer::Deploy(Ok(outcome)))),
            Caller::Switch => {
                fx.push(Effect::Reply(Answer::Waiters(outcome)));
                fx.push(Effect::Reply(Answer::Switch(Ok(RollbackDone {
                    from: f.from.clone(),
                    to: f.to.clone(),
                }))));
            }
            Caller::Waiters | Caller::Nobody => fx.push(Effect::Reply(Answer::Waiters(outcome))),
        }
    }

    /// Swaps back from `failed` (judged unhealthy, or whose restart failed).
    fn auto_rollback(
        &mut self,
        failed: &str,
        reason: String,
        check: Option<String>,
        caller: Caller,
        facts: &impl Facts,
        fx: &mut Vec<Effect>,
    ) {
        // A rollback during a bake answers the deploys waiting for it.
        let caller = match (caller, &self.state) {
            (Caller::Nobody, State::Baking { .. } | State::Restarting(_)) => Caller::Waiters,
            (c, _) => c,
        };
        let Some(target) = facts.newest_good(Some(failed)) else {
            let reason =
                format!("{reason}; rollback impossible: there is no good release to roll back to");
            return self.cannot_roll_back(failed, reason, caller, fx);
        };
        let mut f = Flow::new(
            Op::Rollback,
            &target,
            Some(failed.to_string()),
            reason,
            Actor::agent(),
            self.state.clone(),
        );
        f.check = check;
        f.automatic = true;
        f.caller = caller;
        fx.push(Effect::Begin(f.intent()));
        self.state = State::Activating(f);
    }

    /// An automatic rollback that cannot happen: the release is failed and
    /// the app degraded.
    fn cannot_roll_back(
        &mut self,
        failed: &str,
        reason: String,
        caller: Caller,
        fx: &mut Vec<Effect>,
    ) {
        if matches!(self.state, State::Restarting(_)) {
            fx.push(Effect::End);
        }
        fx.push(Effect::Release {
            version: failed.to_string(),
            state: ReleaseState::Failed,
            reason: Some(reason.clone()),
        });
        self.degrade(Some(failed), reason.clone(), fx);
        let f = Flow {
            caller,
            automatic: true,
            ..Flow::new(
                Op::Rollback,
                failed,
                Some(failed.into()),
                reason.clone(),
                Actor::agent(),
                State::Empty,
            )
        };
        self.answer_outcome(&f, DeployOutcome::Degraded { reason }, fx);
    }

    fn degrade(&mut self, version: Option<&str>, reason: String, fx: &mut Vec<Effect>) {
        let version = version.map(str::to_string).or(self.active.clone());
        self.state = State::Degraded {
            version: version.clone(),
            reason: reason.clone(),
        };
        fx.push(Effect::Save);
        fx.push(Effect::Record(Note {
            version: version.clone(),
            ..Note::new(EventKind::Degraded, "", reason.clone())
        }));
        fx.push(Effect::Notify(Tell::Degraded { version, reason }));
        // An operation ends here too: `keep_releases` holds (the active
        // release and any rollback target are never pruned).
        fx.push(Effect::Prune);
    }

    fn begin_watch(&mut self, version: &str, previous: Option<String>, now: Instant) {
        self.generation += 1;
        self.watch = Some(Watch {
            version: version.to_string(),
            previous,
            slots: self
                .settings
                .checks
                .iter()
                .map(|c| Slot {
                    tracker: CheckTracker::new(c.rule, c.on_error),
                    // The first run waits one interval: the app was just (re)started.
                    next_due: now + c.interval,
                    in_flight: false,
                    reported: false,
                    summary: String::new(),
                })
                .collect(),
        });
    }

    fn stop_watch(&mut self) {
        self.generation += 1;
        self.watch = None;
    }

    fn tick(&mut self, now: Instant, facts: &impl Facts, fx: &mut Vec<Effect>) {
        let phase = self.phase();
        let generation = self.generation;
        let Some(w) = self.watch.as_mut() else { return };
        for (index, (s, c)) in w.slots.iter_mut().zip(&self.settings.checks).enumerate() {
            if s.in_flight || s.next_due > now {
                continue;
            }
            s.in_flight = true;
            s.next_due = now + c.interval;
            fx.push(Effect::RunCheck {
                index,
                generation,
                version: w.version.clone(),
                phase,
            });
        }
        self.evaluate_bake(now, facts, fx);
    }

    #[allow(clippy::too_many_arguments)]
    fn check_done(
        &mut self,
        generation: u64,
        index: usize,
        outcome: Outcome,
        summary: String,
        now: Instant,
        facts: &impl Facts,
        fx: &mut Vec<Effect>,
    ) {
        if generation != self.generation {
            return;
        }
        let Some(w) = self.watch.as_mut() else { return };
        let (Some(s), Some(c)) = (w.slots.get_mut(index), self.settings.checks.get(index)) else {
            return;
        };
        s.in_flight = false;
        s.summary = summary.clone();
        let health = s.tracker.observe(now, outcome);
        fx.push(Effect::RecordCheck {
            index,
            outcome,
            consecutive_failures: s.tracker.consecutive_failures(),
            runs: s.tracker.runs(),
        });
        let newly_unhealthy = health == Health::Unhealthy && !s.reported;
        s.reported = health == Health::Unhealthy;
        let version = w.version.clone();
        let baking = matches!(self.state, State::Baking { .. });
        // During an active bake a critical failure is the bake's to decide;
        // paused, it is only recorded.
        if newly_unhealthy && (!baking || c.severity == Severity::Warning || self.paused) {
            let c = c.clone();
            self.unhealthy(&version, &c, &summary, facts, fx);
        }
        self.evaluate_bake(now, facts, fx);
    }

    /// A check turned unhealthy outside the bake (or a warning check did):
    /// alert, roll back or degrade, as the policy says.
    fn unhealthy(
        &mut self,
        version: &str,
        check: &CheckSpec,
        summary: &str,
        facts: &impl Facts,
        fx: &mut Vec<Effect>,
    ) {
        let degraded = matches!(self.state, State::Degraded { .. });
        let held = matches!(self.state, State::Held { .. });
        let busy = self.state.flow().is_some();
        let acting = !self.paused && !degraded && !held && !busy;
        let action = if acting {
            steady_action(check.severity, self.settings.auto_rollback, self.restored)
        } else {
            SteadyAction::Alert
        };
        let when = if matches!(self.state, State::Baking { .. }) {
            "during the bake"
        } else {
            "after the bake"
        };
        let mut why = format!("{when} ({}): {summary}", check.severity.as_str());
        if !acting {
            why.push_str(if self.paused {
                " [paused: no action]"
            } else if degraded {
                " [degraded: no action]"
            } else if held {
                " [held: no action]"
            } else {
                " [busy: no action]"
            });
        }
        fx.push(Effect::Record(
            Note::new(EventKind::CheckFailed, version, why).check(Some(&check.name)),
        ));
        let reason = format!("check `{}` {}: {summary}", check.name, check.rule_text());
        match action {
            SteadyAction::Alert => {}
            SteadyAction::Rollback => self.auto_rollback(
                version,
                reason,
                Some(check.name.clone()),
                Caller::Nobody,
                facts,
                fx,
            ),
            SteadyAction::Degrade => {
                let reason = format!("the release restored by a rollback failed too: {reason}");
                self.degrade(Some(version), reason, fx);
            }
        }
    }

    fn evaluate_bake(&mut self, now: Instant, facts: &impl Facts, fx: &mut Vec<Effect>) {
        let State::Baking {
            version,
            until,
            max_until,
            extended,
        } = &self.state
        else {
            return;
        };
        let (Some(w), false) = (self.watch.as_ref(), self.paused) else {
            return;
        };
        let checks: Vec<BakeCheck> = w
            .slots
            .iter()
            .zip(&self.settings.checks)
            .map(|(s, c)| BakeCheck {
                health: s.tracker.health(now),
                severity: c.severity,
                conclusive: s.tracker.conclusive(),
                min_conclusive: c.min_conclusive,
            })
            .collect();
        let window = BakeWindow {
            until: *until,
            max_until: *max_until,
        };
        let (version, extended) = (version.clone(), *extended);
        match bake_verdict(now, window, &checks) {
            BakeVerdict::Pending => {}
            BakeVerdict::Passed => self.mark_good(&version, "passed its bake", fx),
            BakeVerdict::Extended(_) if extended => {}
            BakeVerdict::Extended(waiting) => {
                let why = format!(
                    "the bake window ended without a verdict ({}); watching up to max_bake ({})",
                    self.waiting_text(&waiting),
                    humantime::format_duration(self.settings.max_bake)
                );
                if let State::Baking { extended, .. } = &mut self.state {
                    *extended = true;
                }
                fx.push(Effect::Save);
                fx.push(Effect::Record(Note::new(
                    EventKind::BakeExtended,
                    &version,
                    why,
                )));
            }
            BakeVerdict::Held(waiting) => {
                let reason = format!(
                    "no verdict within max_bake ({}): {}; promote or roll back",
                    humantime::format_duration(self.settings.max_bake),
                    self.waiting_text(&waiting)
                );
                self.state = State::Held {
                    version: version.clone(),
                    reason: reason.clone(),
                };
                fx.push(Effect::Save);
                fx.push(Effect::Record(Note::new(
                    EventKind::Held,
                    &version,
                    reason.clone(),
                )));
                fx.push(Effect::Notify(Tell::Held {
                    version,
                    reason: reason.clone(),
                }));
                fx.push(Effect::Count(Count::Deploy("held")));
                fx.push(Effect::Reply(Answer::Waiters(DeployOutcome::Held {
                    reason,
                })));
            }
            BakeVerdict::Failed(i) => {
                let check = self.settings.checks[i].clone();
                let summary = w.slots[i].summary.clone();
                let reason = format!("check `{}` {}: {summary}", check.name, check.rule_text());
                fx.push(Effect::Record(
                    Note::new(EventKind::CheckFailed, &version, summary).check(Some(&check.name)),
                ));
                self.auto_rollback(
                    &version,
                    reason,
                    Some(check.name),
                    Caller::Waiters,
                    facts,
                    fx,
                );
            }
        }
    }

    /// What the critical checks a bake waits for lack, in words.
    fn waiting_text(&self, waiting: &[usize]) -> String {
        let Some(w) = self.watch.as_ref() else {
            return String::new();
        };
        waiting
            .iter()
            .filter_map(|&i| Some((w.slots.get(i)?, self.settings.checks.get(i)?)))
            .map(|(s, c)| {
                let last = if s.summary.is_empty() {
                    "no result yet".to_string()
                } else {
                    format!("last: {}", s.summary)
                };
                if s.tracker.conclusive() < u64::from(c.min_conclusive) {
                    format!(
                        "check `{}` had {} of {} conclusive run(s) in {} ({last})",
                        c.name,
                        s.tracker.conclusive(),
                        c.min_conclusive,
                        s.tracker.runs()
                    )
                } else {
                    format!("check `{}` is failing below its threshold ({last})", c.name)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The active release is good: by its bake or by an operator.
    fn mark_good(&mut self, version: &str, why: &str, fx: &mut Vec<Effect>) {
        fx.push(Effect::Release {
            version: version.to_string(),
            state: ReleaseState::Good,
            reason: None,
        });
        self.state = State::Steady {
            version: version.to_string(),
            note: None,
        };
        fx.push(Effect::Save);
        fx.push(Effect::Record(Note::new(
            EventKind::MarkedGood,
            version,
            why,
        )));
        fx.push(Effect::Count(Count::Deploy("good")));
        // Prune before answering, so a waiting deploy sees the final layout.
        fx.push(Effect::Prune);
        fx.push(Effect::Reply(Answer::Waiters(DeployOutcome::Good)));
    }

    /// `promote`: a held release (or one still baking) is marked good now.
    fn promote(&mut self, reason: Option<String>, actor: Actor, fx: &mut Vec<Effect>) {
        let version = match &self.state {
            State::Held { version, .. } | State::Baking { version, .. } => version.clone(),
            other => {
                let refusal = Refusal::NotPromotable(other.app_state());
                return fx.push(Effect::Reply(Answer::Promoted(Err(refusal))));
            }
        };
        let why = reason.unwrap_or_else(|| format!("promoted by {}", actor.name));
        fx.push(Effect::Record(
            Note::new(EventKind::Promoted, &version, why).by(&actor),
        ));
        self.mark_good(&version, "promoted by an operator", fx);
        fx.push(Effect::Reply(Answer::Promoted(Ok(version))));
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
