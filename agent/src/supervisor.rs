//! One task per app: the deploy / bake / rollback state machine.
//!
//! Owns an app's lifecycle: on start it reconciles the store with the
//! `current` symlink; on `deploy` it stages, activates (recording the intent
//! first and the outcome after), restarts and bakes; it runs the app's checks
//! on their intervals, feeds results to `policy`, and rolls back to the last
//! good release when a check turns unhealthy during the bake. Every state
//! change is written to the store and the audit log.
//!
//! It drives `release`, `plugin`, `policy`, `restart` and `store`; nothing
//! drives it but the commands on its channel. It must never block its task on
//! long work (staging, renames and fsyncs run on the blocking pool; plugin
//! calls run in their own tasks) and never touch another app.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::config::{AppConfig, HookEvent};
use crate::journal::{Journal, JournalError};
use crate::lifecycle::{Intent, Op, Recovery, Step};
use crate::plugin::{
    CallError, CallReport, CheckInput, LifecycleEvent, Phase, Plugin, ReleaseInfo, RollbackInfo,
    Sandbox, Status, Transition,
};
use crate::policy::{
    bake_verdict, steady_action, BakeVerdict, CheckTracker, Health, OnError, Outcome, Rule,
    Severity, SteadyAction,
};
use crate::release::{AppDir, ReleaseError, StageLimits, Version};
use crate::snapshot::Snapshots;
use crate::store::{
    now_ms, Actor, AppRecord, AppState, CheckStatus, Event, EventKind, ReleaseRecord, ReleaseState,
    Store, StoreError,
};

/// Why a command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The app is in the middle of something that must finish first.
    #[error("app `{app}` is {state}; wait for it to finish or roll back first")]
    Busy {
        /// The app.
        app: String,
        /// Its state.
        state: &'static str,
    },
    /// A release with this version already exists.
    #[error("release {version} of `{app}` already exists; deploy a new version")]
    ReleaseExists {
        /// The app.
        app: String,
        /// The version.
        version: String,
    },
    /// The app has no active release.
    #[error("app `{app}` has no active release")]
    NothingActive {
        /// The app.
        app: String,
    },
    /// No release to go back to.
    #[error("app `{app}` has no good release to roll back to")]
    NoRollbackTarget {
        /// The app.
        app: String,
    },
    /// `--to` names the release that is already active.
    #[error("release {version} of `{app}` is already active")]
    AlreadyActive {
        /// The app.
        app: String,
        /// The version.
        version: String,
    },
    /// Staging, activation or the disk failed.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The intent journal could not be written (nothing was changed).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A pre-activate hook refused the activation.
    #[error("hook `{hook}` vetoed the activation of {version}: {reason}")]
    Vetoed {
        /// The hook.
        hook: String,
        /// The release that was not activated.
        version: String,
        /// The hook's error.
        reason: String,
    },
    /// The supervisor is gone (the agent is shutting down).
    #[error("the agent is shutting down")]
    ShuttingDown,
}

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
}

/// What the operator said about a release when deploying it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployMeta {
    /// `--commit`.
    pub commit: Option<String>,
    /// `--message`.
    pub message: Option<String>,
}

/// The result of a successful rollback command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackDone {
    /// The release that was active.
    pub from: Option<String>,
    /// The release now active.
    pub to: String,
}

type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// A request to a supervisor.
pub enum Command {
    /// Stage SOURCE as VERSION, activate it and bake it.
    Deploy {
        /// A directory or `.tar.gz`, absolute.
        source: PathBuf,
        /// The new version.
        version: Version,
        /// Who asked.
        actor: Actor,
        /// Reply only once the bake is decided.
        wait: bool,
        /// Commit and message given with the deploy.
        meta: DeployMeta,
        /// Where the outcome goes.
        reply: Reply<DeployOutcome>,
    },
    /// Swap back to the last good release (or `to`).
    Rollback {
        /// Explicit target.
        to: Option<Version>,
        /// Why, in the operator's words.
        reason: Option<String>,
        /// Who asked.
        actor: Actor,
        /// Where the outcome goes.
        reply: Reply<RollbackDone>,
    },
    /// Operator switch to an existing release, skipping analysis.
    Activate {
        /// The release.
        version: Version,
        /// Who asked.
        actor: Actor,
        /// Where the outcome goes.
        reply: Reply<RollbackDone>,
    },
    /// Freeze (or unfreeze) automatic actions.
    Pause {
        /// Freeze when true.
        paused: bool,
        /// Who asked.
        actor: Actor,
        /// Done.
        reply: Reply<()>,
    },
    /// Run every check once now and report.
    CheckNow {
        /// The results.
        reply: Reply<Vec<CheckRun>>,
    },
    /// New settings, checks and hooks from a reloaded config (same root).
    Reload {
        /// The app's new config.
        cfg: Box<AppConfig>,
        /// Its checks.
        checks: Vec<LoadedCheck>,
        /// Its hooks.
        hooks: Vec<LoadedHook>,
        /// Done.
        reply: Reply<()>,
    },
}

/// One check run on demand (`rollbackctl check`).
#[derive(Debug, Clone)]
pub struct CheckRun {
    /// The check.
    pub name: String,
    /// `critical` or `warning`.
    pub severity: &'static str,
    /// `pass`, `warn`, `fail` or `error`.
    pub outcome: String,
    /// What it said.
    pub summary: String,
    /// Its metrics.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// How long it took.
    pub duration_ms: u64,
}

/// A check entry ready to run: its config, compiled plugin and sandbox.
pub struct LoadedCheck {
    /// The check's name.
    pub name: String,
    /// Time between runs.
    pub interval: Duration,
    /// Consecutive failures that make it unhealthy.
    pub fail_after: u32,
    /// How failures are counted.
    pub rule: Rule,
    /// What an unhealthy result does.
    pub severity: Severity,
    /// How plugin errors count.
    pub on_error: OnError,
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// Its grants.
    pub sandbox: Arc<Sandbox>,
}

/// A rollback hook ready to run.
pub struct LoadedHook {
    /// The hook's name.
    pub name: String,
    /// The events it is called for.
    pub on: Vec<HookEvent>,
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// Its grants.
    pub sandbox: Arc<Sandbox>,
}

/// The sending side of a supervisor's command channel.
#[derive(Clone)]
pub struct AppHandle {
    tx: mpsc::Sender<Command>,
}

impl AppHandle {
    /// Sends a deploy and waits for its outcome (after the bake when `wait`).
    pub async fn deploy(
        &self,
        source: PathBuf,
        version: Version,
        actor: Actor,
        wait: bool,
        meta: DeployMeta,
    ) -> Result<DeployOutcome, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::Deploy {
                source,
                version,
                actor,
                wait,
                meta,
                reply,
            },
            rx,
        )
        .await
    }

    /// Sends a rollback and waits for it to be done.
    pub async fn rollback(
        &self,
        to: Option<Version>,
        reason: Option<String>,
        actor: Actor,
    ) -> Result<RollbackDone, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::Rollback {
                to,
                reason,
                actor,
                reply,
            },
            rx,
        )
        .await
    }

    /// Switches to `version` without analysis (operator emergency path).
    pub async fn activate(
        &self,
        version: Version,
        actor: Actor,
    ) -> Result<RollbackDone, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::Activate {
                version,
                actor,
                reply,
            },
            rx,
        )
        .await
    }

    /// Freezes (`true`) or resumes automatic actions.
    pub async fn set_paused(&self, paused: bool, actor: Actor) -> Result<(), CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::Pause {
                paused,
                actor,
                reply,
            },
            rx,
        )
        .await
    }

    /// Applies a reloaded config to this app.
    pub async fn reload(
        &self,
        cfg: AppConfig,
        checks: Vec<LoadedCheck>,
        hooks: Vec<LoadedHook>,
    ) -> Result<(), CommandError> {
        let (reply, rx) = oneshot::channel();
        let cfg = Box::new(cfg);
        self.send(
            Command::Reload {
                cfg,
                checks,
                hooks,
                reply,
            },
            rx,
        )
        .await
    }

    /// Runs every check once now.
    pub async fn check_now(&self) -> Result<Vec<CheckRun>, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::CheckNow { reply }, rx).await
    }

    async fn send<T>(
        &self,
        cmd: Command,
        rx: oneshot::Receiver<Result<T, CommandError>>,
    ) -> Result<T, CommandError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| CommandError::ShuttingDown)?;
        rx.await.map_err(|_| CommandError::ShuttingDown)?
    }
}

/// The watch over the active release: its checks' trackers and timers.
struct Watch {
    version: String,
    activated_at_ms: Option<u64>,
    previous: Option<ReleaseInfo>,
    phase: Phase,
    bake_until: Option<Instant>,
    trackers: Vec<CheckTracker>,
    next_due: Vec<Instant>,
    in_flight: Vec<bool>,
    /// Whether the unhealthy state of a check was already recorded (steady phase).
    reported: Vec<bool>,
}

struct CheckDone {
    generation: u64,
    index: usize,
    report: CallReport,
    at_ms: u64,
}

/// One app's supervisor.
pub struct Supervisor {
    cfg: AppConfig,
    dir: AppDir,
    store: Store,
    checks: Vec<LoadedCheck>,
    hooks: Arc<Vec<LoadedHook>>,
    snapshots: Snapshots,
    journal: Journal,
    /// The operation in progress, as journaled.
    intent: Option<Intent>,
    /// Steps of an interrupted operation that start-up left to the task
    /// (the restart command is async).
    recovering: Option<Intent>,
    rec: AppRecord,
    /// Bumped on every activation so that results of an older watch are dropped.
    generation: u64,
    watch: Option<Watch>,
    waiters: Vec<Reply<DeployOutcome>>,
    done_tx: mpsc::Sender<CheckDone>,
    done_rx: mpsc::Receiver<CheckDone>,
    limits: StageLimits,
}

fn info(app: &str, rec: Option<&ReleaseRecord>, version: &str) -> ReleaseInfo {
    ReleaseInfo {
        app: app.to_string(),
        version: version.to_string(),
        activated_at_ms: rec.and_then(|r| r.activated_at_ms),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReleaseError> + Send + 'static,
) -> Result<T, ReleaseError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(ReleaseError::Io {
            op: "run blocking task",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

impl Supervisor {
    /// Reconciles the app's store records with its directory and spawns its
    /// task. Returns the handle to send commands to it.
    pub fn start(
        cfg: AppConfig,
        store: Store,
        checks: Vec<LoadedCheck>,
        hooks: Vec<LoadedHook>,
        snapshots: Snapshots,
        journal: Journal,
    ) -> Result<AppHandle, CommandError> {
        let (tx, rx) = mpsc::channel(16);
        let (done_tx, done_rx) = mpsc::channel(64);
        let dir = AppDir::new(cfg.root.clone());
        let rec = store
            .app(&cfg.name)?
            .unwrap_or_else(|| AppRecord::new(&cfg.name));
        let mut sup = Supervisor {
            dir,
            store,
            checks,
            hooks: Arc::new(hooks),
            snapshots,
            journal,
            intent: None,
            recovering: None,
            rec,
            generation: 0,
            watch: None,
            waiters: Vec::new(),
            done_tx,
            done_rx,
            limits: StageLimits::default(),
            cfg,
        };
        sup.reconcile()?;
        tokio::spawn(sup.run(rx));
        Ok(AppHandle { tx })
    }

    fn app(&self) -> &str {
        &self.cfg.name
    }

    fn event(&self, actor: Actor, kind: EventKind) -> Event {
        Event::new(&self.cfg.name, actor, kind)
    }

    fn save(&mut self) -> Result<(), StoreError> {
        crate::metrics::global().state(&self.cfg.name, self.rec.state.as_str());
        self.store.put_app(self.rec.clone())
    }

    /// Bookkeeping after the disk already changed: a store that cannot be
    /// written is logged (its events queued), never a reason to stop.
    fn save_or_log(&mut self) {
        let r = self.save();
        self.log_err(r);
    }

    fn record_or_log(&self, ev: Event) {
        self.log_err(self.store.record(ev).map(drop));
    }

    fn new_intent(
        &self,
        op: Op,
        to: Option<&str>,
        why: &str,
        actor: &Actor,
        steps: Vec<Step>,
    ) -> Intent {
        Intent {
            op,
            from: self.rec.active.clone(),
            to: to.map(str::to_string),
            why: why.to_string(),
            actor: actor.name.clone(),
            check: None,
            automatic: false,
            source: None,
            steps,
            at_ms: now_ms(),
        }
    }

    /// Journals an operation before its first side effect; only a
    /// journaled operation has its later steps journaled.
    fn begin_op(&mut self, intent: Intent) -> Result<(), JournalError> {
        self.journal.save(&self.cfg.name, &intent)?;
        self.intent = Some(intent);
        Ok(())
    }

    /// Journals that `step` of the operation in progress is done.
    fn step_done(&mut self, step: &Step) {
        let Some(intent) = self.intent.as_mut() else {
            return;
        };
        intent.done(step);
        if let Err(e) = self.journal.save(&self.cfg.name, intent) {
            tracing::error!(app = %self.cfg.name, "{e}");
        }
    }

    /// Ends the operation in progress.
    fn end_op(&mut self) {
        self.intent = None;
        if let Err(e) = self.journal.clear(&self.cfg.name) {
            tracing::error!(app = %self.cfg.name, "{e}");
        }
    }

    fn release_rec(&self, version: &str) -> Result<ReleaseRecord, StoreError> {
        Ok(self
            .store
            .release(self.app(), version)?
            .unwrap_or_else(|| ReleaseRecord {
                app: self.cfg.name.clone(),
                version: version.to_string(),
                state: ReleaseState::Staged,
                source: None,
                created_at_ms: now_ms(),
                activated_at_ms: None,
                decided_at_ms: None,
                reason: None,
                commit: None,
                tag: None,
                message: None,
            }))
    }

    fn set_release_state(
        &self,
        version: &str,
        state: ReleaseState,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        let mut r = self.release_rec(version)?;
        r.state = state;
        if matches!(state, ReleaseState::Good | ReleaseState::Failed) {
            r.decided_at_ms = Some(now_ms());
        }
        r.reason = reason;
        self.store.put_release(&r)
    }

    /// Makes the store agree with the disk: `current` is the truth. An
    /// operation the journal names as interrupted is planned here
    /// (`lifecycle::recover`); a deploy that never went live is undone at
    /// once, the steps that remain are done by the task before anything
    /// else (`finish_recovery`).
    fn reconcile(&mut self) -> Result<(), CommandError> {
        self.dir.ensure_layout()?;
        for leftover in self.dir.clean_leftovers()? {
            tracing::warn!(app = %self.app(), path = %leftover.display(), "removed leftover of interrupted work");
        }
        let mut notes = Vec::new();
        let current = self.dir.current()?.map(|v| v.to_string());
        let intent = match self.journal.load(self.app()) {
            Ok(i) => i,
            Err(e) => {
                notes.push(format!("unreadable intent journal ignored: {e}"));
                None
            }
        };
        let interrupted = intent.is_some();
        if let Some(intent) = intent {
            let disk = DiskFacts {
                dir: &self.dir,
                current: current.clone(),
            };
            let to = intent.to.clone().unwrap_or_default();
            match crate::lifecycle::recover(&intent, &disk) {
                Recovery::Abandon { version } => {
                    if let Ok(v) = Version::parse(&version) {
                        self.dir.remove(&v)?;
                    }
                    if self.store.release(self.app(), &version)?.is_some() {
                        self.store.delete_release(self.app(), &version)?;
                    }
                    notes.push(format!(
                        "the deploy of {version} was interrupted before it went live: \
                         its staged copy was removed, deploy it again"
                    ));
                    self.journal.clear(self.app())?;
                }
                Recovery::Nothing => {
                    notes.push(format!(
                        "interrupted {} of {}: nothing left to do",
                        intent.op.as_str(),
                        if to.is_empty() { "releases" } else { &to }
                    ));
                    self.journal.clear(self.app())?;
                }
                Recovery::Finish(steps) => {
                    self.recovering = Some(Intent { steps, ..intent });
                }
            }
        }
        let recovering_from = self
            .recovering
            .as_ref()
            .filter(|i| i.op == Op::Rollback)
            .and_then(|i| i.from.clone());
        let known = self.store.releases(self.app())?;
        let on_disk = self.dir.list()?;
        for v in &on_disk {
            // A drop-in waiting for the watcher is not a release yet.
            // With `watch`, unknown directories are the watcher's (complete once
            // their `.ready` marker appears); only what `current` runs is adopted.
            let drop_in = self.cfg.watch && current.as_deref() != Some(v.as_str());
            if !drop_in && !known.iter().any(|r| r.version == v.as_str()) {
                let mut r = self.release_rec(v.as_str())?;
                r.source = Some("found on disk".into());
                // A release already active when the agent first sees it was running before us.
                if current.as_deref() == Some(v.as_str()) {
                    r.state = ReleaseState::Good;
                    r.reason = Some("adopted: active before the agent managed it".into());
                }
                self.store.put_release(&r)?;
            }
        }
        for r in &known {
            if !self.dir.exists(&Version::parse(&r.version)?) {
                self.store.delete_release(self.app(), &r.version)?;
            }
        }
        let names: Vec<String> = on_disk.iter().map(|v| v.to_string()).collect();
        for removed in self.snapshots.clean(self.app(), &names, &self.cfg.snapshot) {
            tracing::warn!(app = %self.app(), path = %removed.display(), "removed leftover of interrupted work");
            notes.push(format!("removed {}", removed.display()));
        }
        // A release still marked active that `current` no longer points at was
        // being rolled back when the agent stopped: finish the bookkeeping
        // (the rollback being finished does its own).
        for r in self.store.releases(self.app())? {
            if r.state != ReleaseState::Active
                || current.as_deref() == Some(r.version.as_str())
                || recovering_from.as_deref() == Some(r.version.as_str())
            {
                continue;
            }
            let why = "left during an interrupted rollback".to_string();
            self.set_release_state(&r.version, ReleaseState::Failed, Some(why.clone()))?;
            let ev = self
                .event(Actor::agent(), EventKind::RolledBack)
                .version(r.version.as_str())
                .swap(Some(r.version.clone()), current.clone().unwrap_or_default())
                .reason(format!("{why} (completed at start-up)"));
            self.store.record(ev)?;
            notes.push(format!(
                "{} marked failed: it was being rolled back",
                r.version
            ));
        }
        // The swap's own `activated` event can only be lost to a crash of a
        // journaled operation, or before the agent kept a journal.
        let check_activated = interrupted || self.rec.active != current;
        if self.rec.active != current {
            notes.push(format!(
                "store said active {}, disk says {}",
                self.rec.active.as_deref().unwrap_or("none"),
                current.as_deref().unwrap_or("none")
            ));
            self.rec.active = current.clone();
        }
        // The history names what `current` runs, even if the swap's own
        // event was lost in the crash.
        if let Some(v) = current.as_ref().filter(|_| check_activated) {
            let last = self
                .store
                .history(self.app(), 10_000)?
                .into_iter()
                .find(|e| e.kind == EventKind::Activated);
            if last.as_ref().and_then(|e| e.version.as_deref()) != Some(v.as_str()) {
                let ev = self
                    .event(Actor::agent(), EventKind::Activated)
                    .version(v.as_str())
                    .swap(last.and_then(|e| e.version), v.as_str())
                    .reason("recorded at start-up: current names it");
                self.store.record(ev)?;
            }
        }
        self.rec.last_good = self.newest_good(None)?;
        self.store.record(
            self.event(Actor::agent(), EventKind::AgentStarted)
                .reason(format!("active: {}", current.as_deref().unwrap_or("none"))),
        )?;
        if !notes.is_empty() {
            let ev = self
                .event(Actor::agent(), EventKind::Reconciled)
                .reason(notes.join("; "));
            self.store.record(ev)?;
        }
        match current {
            None => {
                self.rec.state = AppState::Empty;
                self.rec.bake_until_ms = None;
                self.save()?;
            }
            Some(v) => {
                let r = self.release_rec(&v)?;
                let previous = self.rec.last_good.clone().filter(|g| *g != v);
                // A staged release under `current` was swapped in just before a
                // crash, before it was marked active: it has not been baked.
                if matches!(r.state, ReleaseState::Active | ReleaseState::Staged) {
                    if r.state == ReleaseState::Staged {
                        self.set_release_state(&v, ReleaseState::Active, None)?;
                        self.rec.bake_until_ms = None;
                    }
                    let left = self.bake_left();
                    self.begin_watch(&v, previous, Phase::Bake, left)?;
                    self.rec.state = AppState::Baking;
                } else {
                    self.begin_watch(&v, previous, Phase::Steady, Duration::ZERO)?;
                    self.rec.state = if self.rec.state == AppState::Degraded {
                        AppState::Degraded
                    } else {
                        AppState::Healthy
                    };
                    self.rec.bake_until_ms = None;
                }
                self.save()?;
            }
        }
        Ok(())
    }

    /// Does the steps of an interrupted operation that start-up left (see
    /// `reconcile`), before the task takes any command, and records what it
    /// completed as a `reconciled` event.
    async fn finish_recovery(&mut self) {
        let Some(intent) = self.recovering.take() else {
            return;
        };
        let steps = intent.steps.clone();
        let done = Intent::steps_text(&steps);
        let to = intent.to.clone().unwrap_or_default();
        tracing::warn!(app = %self.app(), op = intent.op.as_str(), steps = %done, "finishing an interrupted operation");
        self.intent = Some(intent.clone());
        let agent = Actor::agent();
        match intent.op {
            Op::Prune => {
                for step in &steps {
                    if let Step::Remove { version } = step {
                        self.remove_release(version).await;
                    }
                    self.step_done(step);
                }
                self.end_op();
            }
            Op::Deploy => {
                // The release is live but its restart never completed.
                self.stop_watch();
                match self.restart(&to).await {
                    Ok(()) => {
                        self.step_done(&Step::Restart);
                        self.end_op();
                        let left = self.bake_left();
                        let previous = self.rec.last_good.clone().filter(|g| *g != to);
                        let r = self.begin_watch(&to, previous, Phase::Bake, left);
                        self.log_err(r);
                        self.save_or_log();
                    }
                    Err(reason) => {
                        self.auto_rollback(&to, reason, None).await;
                    }
                }
            }
            Op::Rollback | Op::Activate => {
                if steps.contains(&Step::Swap) {
                    let Ok(v) = Version::parse(&to) else {
                        self.end_op();
                        return;
                    };
                    if let Err(e) = self
                        .activate(intent.op, &v, agent.clone(), &intent.why)
                        .await
                    {
                        self.end_op();
                        self.degrade(
                            &to,
                            &format!("cannot finish the interrupted {}: {e}", intent.op.as_str()),
                        );
                        return;
                    }
                    self.step_done(&Step::Swap);
                }
                if intent.op == Op::Rollback {
                    let Some(failed) = intent.from.clone().filter(|f| *f != to) else {
                        self.end_op();
                        return;
                    };
                    self.rec.state = AppState::RollingBack;
                    self.complete_rollback(
                        &failed,
                        &to,
                        Some(failed.clone()),
                        &format!("{} (completed at start-up)", intent.why),
                        agent,
                        intent.check.clone(),
                    )
                    .await;
                    self.rec.restored = intent.automatic;
                    self.save_or_log();
                } else {
                    self.stop_watch();
                    let restarted = self.restart(&to).await;
                    self.step_done(&Step::Restart);
                    self.end_op();
                    let r = self.begin_watch(&to, None, Phase::Steady, Duration::ZERO);
                    self.log_err(r);
                    if let Err(why) = restarted {
                        self.degrade(&to, &why);
                    }
                }
            }
        }
        let ev = self
            .event(Actor::agent(), EventKind::Reconciled)
            .reason(format!(
                "finished the interrupted {} of {}: {done}",
                intent.op.as_str(),
                if to.is_empty() { "releases" } else { &to }
            ));
        self.record_or_log(ev);
    }

    /// What is left of the recorded bake window (an interrupted bake
    /// resumes for that), or a whole bake if none is recorded.
    fn bake_left(&self) -> Duration {
        self.rec
            .bake_until_ms
            .map(|until| Duration::from_millis(until.saturating_sub(now_ms())))
            .unwrap_or(self.cfg.bake)
    }

    fn begin_watch(
        &mut self,
        version: &str,
        previous: Option<String>,
        phase: Phase,
        bake: Duration,
    ) -> Result<(), StoreError> {
        self.generation += 1;
        let now = Instant::now();
        let active = self.release_rec(version)?;
        let previous = match previous {
            Some(p) => Some(info(
                self.app(),
                self.store.release(self.app(), &p)?.as_ref(),
                &p,
            )),
            None => None,
        };
        let n = self.checks.len();
        self.watch = Some(Watch {
            version: version.to_string(),
            activated_at_ms: active.activated_at_ms,
            previous,
            phase,
            bake_until: (phase == Phase::Bake).then(|| now + bake),
            trackers: self
                .checks
                .iter()
                .map(|c| CheckTracker::new(c.rule, c.on_error))
                .collect(),
            // The first run waits one interval: the app was just (re)started.
            next_due: self.checks.iter().map(|c| now + c.interval).collect(),
            in_flight: vec![false; n],
            reported: vec![false; n],
        });
        self.rec.checks.clear();
        self.rec.bake_until_ms = (phase == Phase::Bake).then(|| now_ms() + bake.as_millis() as u64);
        Ok(())
    }

    /// Stops watching (results of calls in flight are dropped).
    fn stop_watch(&mut self) {
        self.generation += 1;
        self.watch = None;
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        tracing::info!(app = %self.app(), active = ?self.rec.active, state = self.rec.state.as_str(), "supervising");
        self.finish_recovery().await;
        loop {
            let wake = self.next_wake();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                Some(done) = self.done_rx.recv() => self.on_result(done).await,
                _ = sleep_until_opt(wake) => self.on_timer().await,
            }
        }
        tracing::info!(app = %self.app(), "supervisor stopped");
    }

    fn next_wake(&self) -> Option<Instant> {
        let w = self.watch.as_ref()?;
        let checks = w
            .next_due
            .iter()
            .zip(&w.in_flight)
            .filter(|(_, busy)| !**busy)
            .map(|(due, _)| *due);
        checks.chain(w.bake_until).min()
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let generation = self.generation;
        let app = self.cfg.name.clone();
        let Some(w) = self.watch.as_mut() else { return };
        for (i, check) in self.checks.iter().enumerate() {
            if w.in_flight[i] || w.next_due[i] > now {
                continue;
            }
            w.in_flight[i] = true;
            w.next_due[i] = now + check.interval;
            let input = CheckInput {
                app: app.clone(),
                check: check.name.clone(),
                active: ReleaseInfo {
                    app: app.clone(),
                    version: w.version.clone(),
                    activated_at_ms: w.activated_at_ms,
                },
                previous: w.previous.clone(),
                phase: w.phase,
                now_ms: now_ms(),
            };
            let plugin = check.plugin.clone();
            let sandbox = check.sandbox.clone();
            let tx = self.done_tx.clone();
            tokio::spawn(async move {
                let at_ms = now_ms();
                // Whatever happens in the call, a result comes back, so the
                // check's in-flight flag is always released.
                let report = std::panic::AssertUnwindSafe(plugin.check(&sandbox, &input))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| CallReport::host_failure("the check call panicked"));
                let _ = tx
                    .send(CheckDone {
                        generation,
                        index: i,
                        report,
                        at_ms,
                    })
                    .await;
            });
        }
        self.evaluate_bake().await;
    }

    async fn on_result(&mut self, done: CheckDone) {
        if done.generation != self.generation {
            return;
        }
        let Some(w) = self.watch.as_mut() else { return };
        let check = &self.checks[done.index];
        w.in_flight[done.index] = false;
        let (outcome, summary, metrics) = match &done.report.result {
            Ok(r) => (
                match r.status {
                    Status::Pass => Outcome::Pass,
                    Status::Warn => Outcome::Warn,
                    Status::Fail => Outcome::Fail,
                },
                r.summary.clone(),
                r.metrics.clone(),
            ),
            Err(e) => (Outcome::Error, e.to_string(), Default::default()),
        };
        let error_kind = match &done.report.result {
            Err(CallError::Timeout(_)) => Some("timeout"),
            Err(CallError::Trap(_)) => Some("trap"),
            Err(CallError::Plugin(_)) => Some("plugin"),
            Err(CallError::BadOutput(_)) => Some("bad-output"),
            Err(CallError::Host(_)) => Some("host"),
            Ok(_) => None,
        };
        crate::metrics::global().check(
            &self.cfg.name,
            &check.name,
            outcome.as_str(),
            done.report.elapsed,
            done.report.http_retries,
            error_kind,
        );
        let health = w.trackers[done.index].observe(Instant::now(), outcome);
        tracing::debug!(app = %self.cfg.name, check = %check.name, outcome = outcome.as_str(), %summary, "check result");
        self.rec.checks.insert(
            check.name.clone(),
            CheckStatus {
                outcome: outcome.as_str().to_string(),
                summary: summary.clone(),
                at_ms: done.at_ms,
                duration_ms: done.report.elapsed.as_millis() as u64,
                consecutive_failures: w.trackers[done.index].consecutive_failures(),
                runs: w.trackers[done.index].runs(),
                http_retries: done.report.http_retries,
                metrics,
            },
        );
        // While the store cannot be written, every result tries a durable
        // save: the first that works writes the queued events too.
        let r = if self.store.unwritable().is_some() {
            self.store.put_app(self.rec.clone())
        } else {
            self.store.put_app_lazy(&self.rec)
        };
        if let Err(e) = r {
            tracing::error!(app = %self.cfg.name, "cannot record check result: {e}");
        }
        self.store
            .feed()
            .publish(crate::live::LiveEvent::check_result(
                &self.cfg.name,
                &w.version,
                &check.name,
                outcome.as_str(),
                &summary,
                done.at_ms,
                done.report.elapsed.as_millis() as u64,
            ));
        let newly_unhealthy = health == Health::Unhealthy && !w.reported[done.index];
        w.reported[done.index] = health == Health::Unhealthy;
        let baking = w.phase == Phase::Bake;
        let version = w.version.clone();
        // During an active bake a critical failure is the bake's to decide;
        // paused, it is only recorded.
        if newly_unhealthy && (!baking || check.severity == Severity::Warning || self.rec.paused) {
            let (name, severity) = (check.name.clone(), check.severity);
            self.on_unhealthy(&version, &name, severity, &summary).await;
        }
        self.evaluate_bake().await;
    }

    /// A check turned unhealthy outside the bake (or a warning check did):
    /// alert, roll back or degrade, as the policy says.
    async fn on_unhealthy(
        &mut self,
        version: &str,
        check: &str,
        severity: Severity,
        summary: &str,
    ) {
        let acting = !self.rec.paused && self.rec.state != AppState::Degraded;
        let action = if acting {
            steady_action(severity, self.cfg.auto_rollback, self.rec.restored)
        } else {
            SteadyAction::Alert
        };
        let when = if self.rec.state == AppState::Baking {
            "during the bake"
        } else {
            "after the bake"
        };
        let mut why = format!("{when} ({}): {summary}", severity_name(severity));
        if !acting {
            why.push_str(if self.rec.paused {
                " [paused: no action]"
            } else {
                " [degraded: no action]"
            });
        }
        let ev = self
            .event(Actor::agent(), EventKind::CheckFailed)
            .version(version)
            .check(check)
            .reason(why);
        self.log_err(self.store.record(ev).map(drop));
        let reason = format!("check `{check}` {}: {summary}", self.rule_text(check));
        match action {
            SteadyAction::Alert => {}
            SteadyAction::Rollback => {
                self.auto_rollback(version, reason, Some(check.to_string()))
                    .await;
            }
            SteadyAction::Degrade => {
                let reason = format!("the release restored by a rollback failed too: {reason}");
                self.degrade(version, &reason);
            }
        }
    }

    /// How a check's rule reads in a reason: "failed 3 time(s) in a row".
    fn rule_text(&self, check: &str) -> String {
        match self.checks.iter().find(|c| c.name == check).map(|c| c.rule) {
            Some(Rule::Consecutive(n)) => format!("failed {n} time(s) in a row"),
            Some(Rule::Ratio { ratio, window }) => format!(
                "failed more than {}% of its runs over {}",
                (ratio * 100.0 * 1000.0).round() / 1000.0,
                humantime::format_duration(window)
            ),
            None => "failed".into(),
        }
    }

    async fn evaluate_bake(&mut self) {
        let Some(w) = self.watch.as_ref() else { return };
        let Some(until) = w.bake_until else { return };
        if self.rec.paused {
            return;
        }
        let now = Instant::now();
        let health: Vec<(Health, Severity)> = w
            .trackers
            .iter()
            .zip(&self.checks)
            .map(|(t, c)| (t.health(now), c.severity))
            .collect();
        match bake_verdict(now, until, &health) {
            BakeVerdict::Pending => {}
            BakeVerdict::Passed => {
                let version = w.version.clone();
                if let Err(e) = self.mark_good(&version) {
                    tracing::error!(app = %self.app(), "cannot mark {version} good: {e}");
                }
                // Prune before answering, so a waiting deploy sees the final layout.
                self.prune_releases().await;
                self.finish_waiters(DeployOutcome::Good);
            }
            BakeVerdict::Failed(i) => {
                let version = w.version.clone();
                let name = self.checks[i].name.clone();
                let summary = self
                    .rec
                    .checks
                    .get(&name)
                    .map(|c| c.summary.clone())
                    .unwrap_or_default();
                let reason = format!("check `{name}` {}: {summary}", self.rule_text(&name));
                let ev = self
                    .event(Actor::agent(), EventKind::CheckFailed)
                    .version(version.clone())
                    .check(name.clone())
                    .reason(summary);
                self.log_err(self.store.record(ev).map(drop));
                self.auto_rollback(&version, reason, Some(name)).await;
            }
        }
    }

    fn log_err(&self, r: Result<(), StoreError>) {
        if let Err(e) = r {
            tracing::error!(app = %self.app(), "state store: {e}");
        }
    }

    fn mark_good(&mut self, version: &str) -> Result<(), StoreError> {
        self.set_release_state(version, ReleaseState::Good, None)?;
        self.rec.last_good = Some(version.to_string());
        self.rec.state = AppState::Healthy;
        self.rec.reason = None;
        self.rec.bake_until_ms = None;
        if let Some(w) = self.watch.as_mut() {
            w.phase = Phase::Steady;
            w.bake_until = None;
        }
        self.save()?;
        self.store.record(
            self.event(Actor::agent(), EventKind::MarkedGood)
                .version(version)
                .reason("passed its bake"),
        )?;
        tracing::info!(app = %self.app(), %version, "release passed its bake");
        crate::metrics::global().deploy(&self.cfg.name, "good");
        Ok(())
    }

    /// Removes the oldest releases beyond `keep_releases` (and their
    /// snapshots), never the active one, the last good one or the rollback
    /// target.
    async fn prune_releases(&mut self) {
        let Some(keep) = self.cfg.keep_releases else {
            return;
        };
        let mut recs = match self.store.releases(self.app()) {
            Ok(r) => r,
            Err(e) => return tracing::error!(app = %self.app(), "state store: {e}"),
        };
        recs.sort_by(|a, b| (a.created_at_ms, &a.version).cmp(&(b.created_at_ms, &b.version)));
        let order: Vec<Version> = recs
            .iter()
            .filter_map(|r| Version::parse(&r.version).ok())
            .collect();
        let active = self.rec.active.clone();
        let target = active
            .as_deref()
            .and_then(|a| self.newest_good(Some(a)).ok().flatten());
        let protected: Vec<Version> = [active, self.rec.last_good.clone(), target]
            .into_iter()
            .flatten()
            .filter_map(|v| Version::parse(&v).ok())
            .collect();
        let plan = crate::release::prune_plan(&order, &protected, keep);
        if plan.is_empty() {
            return;
        }
        let steps = plan
            .iter()
            .map(|v| Step::Remove {
                version: v.to_string(),
            })
            .collect();
        let intent = self.new_intent(Op::Prune, None, "keep_releases", &Actor::agent(), steps);
        if let Err(e) = self.begin_op(intent) {
            // Pruning can wait for a journal that works.
            tracing::warn!(app = %self.app(), "not pruning: {e}");
            return;
        }
        let mut removed = Vec::new();
        for v in plan {
            if self.remove_release(v.as_str()).await {
                removed.push(v.to_string());
            }
            self.step_done(&Step::Remove {
                version: v.to_string(),
            });
        }
        self.end_op();
        if !removed.is_empty() {
            let ev = self
                .event(Actor::agent(), EventKind::Pruned)
                .reason(format!(
                    "removed {} (keep_releases = {keep})",
                    removed.join(", ")
                ));
            self.record_or_log(ev);
        }
    }

    /// Removes one release: its snapshot first (so that no snapshot outlives
    /// its release), then its directory, then its record. False if the
    /// directory could not be removed.
    async fn remove_release(&mut self, version: &str) -> bool {
        let Ok(v) = Version::parse(version) else {
            return false;
        };
        if let Err(e) = self.snapshots.remove(self.app(), version) {
            tracing::warn!(app = %self.app(), %version, "cannot remove snapshot: {e}");
        }
        crate::failpoint::hit("prune.before-remove");
        let dir = self.dir.clone();
        match blocking(move || dir.remove(&v)).await {
            Ok(()) | Err(ReleaseError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(app = %self.app(), %version, "cannot prune: {e}");
                return false;
            }
        }
        let r = self.store.delete_release(self.app(), version);
        self.log_err(r);
        true
    }

    fn finish_waiters(&mut self, outcome: DeployOutcome) {
        for w in self.waiters.drain(..) {
            let _ = w.send(Ok(outcome.clone()));
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Deploy {
                source,
                version,
                actor,
                wait,
                meta,
                reply,
            } => match self.deploy(source, version, actor, meta).await {
                Ok(None) if wait => self.waiters.push(reply),
                Ok(None) => {
                    let _ = reply.send(Ok(DeployOutcome::Baking));
                }
                Ok(Some(outcome)) => {
                    let _ = reply.send(Ok(outcome));
                }
                Err(e) => {
                    crate::metrics::global().deploy(&self.cfg.name, "refused");
                    let _ = reply.send(Err(e));
                }
            },
            Command::Rollback {
                to,
                reason,
                actor,
                reply,
            } => {
                let r = self.manual_rollback(to, reason, actor).await;
                let _ = reply.send(r);
            }
            Command::Activate {
                version,
                actor,
                reply,
            } => {
                let r = self.operator_activate(version, actor).await;
                let _ = reply.send(r);
            }
            Command::Pause {
                paused,
                actor,
                reply,
            } => {
                let r = self.set_paused(paused, actor);
                let _ = reply.send(r);
            }
            Command::Reload {
                cfg,
                checks,
                hooks,
                reply,
            } => {
                self.reload(*cfg, checks, hooks);
                let _ = reply.send(Ok(()));
            }
            Command::CheckNow { reply } => {
                let r = self.check_now().await;
                let _ = reply.send(r);
            }
        }
    }

    /// Takes new settings, checks and hooks. Checks whose name and rule are
    /// unchanged keep their state (a changed plugin is swapped in between two
    /// runs); if the set of checks changed, the watch starts again with what
    /// is left of the bake.
    fn reload(&mut self, cfg: AppConfig, checks: Vec<LoadedCheck>, hooks: Vec<LoadedHook>) {
        let same_checks = self.checks.len() == checks.len()
            && self
                .checks
                .iter()
                .zip(&checks)
                .all(|(a, b)| a.name == b.name && a.rule == b.rule && a.on_error == b.on_error);
        self.cfg = cfg;
        self.hooks = Arc::new(hooks);
        self.checks = checks;
        if !same_checks {
            if let (Some(active), Some(w)) = (self.rec.active.clone(), self.watch.as_ref()) {
                let phase = w.phase;
                let left = w
                    .bake_until
                    .map(|u| u.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                let previous = w.previous.as_ref().map(|p| p.version.clone());
                let r = self.begin_watch(&active, previous, phase, left);
                self.log_err(r);
                let r = self.save();
                self.log_err(r);
            }
        } else if let Some(w) = self.watch.as_mut() {
            // Intervals may have changed: due no later than one new interval from now.
            let now = Instant::now();
            for (due, c) in w.next_due.iter_mut().zip(&self.checks) {
                *due = (*due).min(now + c.interval);
            }
        }
        let ev = self
            .event(Actor::agent(), EventKind::Reloaded)
            .reason(format!(
                "config reloaded ({} check(s), {} hook(s))",
                self.checks.len(),
                self.hooks.len()
            ));
        self.log_err(self.store.record(ev).map(drop));
        tracing::info!(app = %self.app(), "config reloaded");
    }

    fn set_paused(&mut self, paused: bool, actor: Actor) -> Result<(), CommandError> {
        if self.rec.paused == paused {
            return Ok(());
        }
        self.rec.paused = paused;
        self.save()?;
        let (kind, what) = if paused {
            (EventKind::Paused, "automatic actions frozen")
        } else {
            (EventKind::Resumed, "automatic actions resumed")
        };
        let ev = self.event(actor, kind).reason(what);
        self.store.record(ev)?;
        Ok(())
    }

    /// Runs every check once now, outside the policy (nothing is decided).
    async fn check_now(&mut self) -> Result<Vec<CheckRun>, CommandError> {
        let Some(active) = self.rec.active.clone() else {
            return Err(CommandError::NothingActive {
                app: self.cfg.name.clone(),
            });
        };
        let input = CheckInput {
            app: self.cfg.name.clone(),
            check: String::new(),
            active: self.release_info(&active),
            previous: self
                .newest_good(Some(&active))?
                .map(|p| self.release_info(&p)),
            phase: if self.rec.state == AppState::Baking {
                Phase::Bake
            } else {
                Phase::Steady
            },
            now_ms: now_ms(),
        };
        let mut runs = Vec::with_capacity(self.checks.len());
        for c in &self.checks {
            let input = CheckInput {
                check: c.name.clone(),
                ..input.clone()
            };
            {
                let report = c.plugin.check(&c.sandbox, &input).await;
                let (outcome, summary, metrics) = match report.result {
                    Ok(r) => (
                        match r.status {
                            Status::Pass => "pass",
                            Status::Warn => "warn",
                            Status::Fail => "fail",
                        },
                        r.summary,
                        r.metrics,
                    ),
                    Err(e) => ("error", e.to_string(), Default::default()),
                };
                runs.push(CheckRun {
                    name: c.name.clone(),
                    severity: severity_name(c.severity),
                    outcome: outcome.to_string(),
                    summary,
                    metrics,
                    duration_ms: report.elapsed.as_millis() as u64,
                });
            }
        }
        Ok(runs)
    }

    /// The operator's emergency switch: activates `version` without a bake
    /// (the operator vouches for it), clearing `degraded`.
    async fn operator_activate(
        &mut self,
        version: Version,
        actor: Actor,
    ) -> Result<RollbackDone, CommandError> {
        if matches!(
            self.rec.state,
            AppState::Deploying | AppState::RollingBack | AppState::Baking
        ) {
            return Err(CommandError::Busy {
                app: self.cfg.name.clone(),
                state: self.rec.state.as_str(),
            });
        }
        if !self.dir.exists(&version) {
            return Err(ReleaseError::NotFound {
                path: self.dir.release_path(&version),
                version,
            }
            .into());
        }
        let from = self.rec.active.clone();
        self.begin_op(self.new_intent(
            Op::Activate,
            Some(version.as_str()),
            "activate (operator, no analysis)",
            &actor,
            vec![Step::Swap, Step::Restart],
        ))?;
        if from.as_deref() != Some(version.as_str()) {
            self.take_snapshot(from.as_deref());
            if let Err(e) = self
                .activate(
                    Op::Activate,
                    &version,
                    actor.clone(),
                    "activate (operator, no analysis)",
                )
                .await
            {
                self.end_op();
                return Err(e);
            }
        }
        self.step_done(&Step::Swap);
        let r = self.set_release_state(
            version.as_str(),
            ReleaseState::Good,
            Some(format!("activated by {}", actor.name)),
        );
        self.log_err(r);
        self.rec.last_good = self.newest_good(None).unwrap_or(self.rec.last_good.take());
        self.stop_watch();
        let restarted = self.restart(version.as_str()).await;
        self.step_done(&Step::Restart);
        self.end_op();
        let r = self.begin_watch(version.as_str(), None, Phase::Steady, Duration::ZERO);
        self.log_err(r);
        self.rec.state = AppState::Healthy;
        self.rec.reason = None;
        self.rec.restored = false;
        self.save_or_log();
        if let Err(why) = restarted {
            self.degrade(version.as_str(), &why);
        } else {
            self.notify(
                HookEvent::Activated,
                LifecycleEvent::Activated(Transition {
                    app: self.cfg.name.clone(),
                    from: from.as_deref().map(|v| self.release_info(v)),
                    to: self.release_info(version.as_str()),
                    actor: actor.name.clone(),
                }),
            );
        }
        self.prune_releases().await;
        Ok(RollbackDone {
            from,
            to: version.to_string(),
        })
    }

    fn busy(&self) -> Result<(), CommandError> {
        match self.rec.state {
            AppState::Deploying | AppState::Baking | AppState::RollingBack => {
                Err(CommandError::Busy {
                    app: self.cfg.name.clone(),
                    state: self.rec.state.as_str(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Stages, activates and restarts; `Ok(None)` means the bake has begun.
    /// Whatever fails before the release goes live leaves the app as it was
    /// (its state, and no trace of the release unless a hook vetoed it).
    async fn deploy(
        &mut self,
        source: PathBuf,
        version: Version,
        actor: Actor,
        meta: DeployMeta,
    ) -> Result<Option<DeployOutcome>, CommandError> {
        self.busy()?;
        if self.dir.exists(&version) || self.store.release(self.app(), version.as_str())?.is_some()
        {
            return Err(CommandError::ReleaseExists {
                app: self.cfg.name.clone(),
                version: version.to_string(),
            });
        }
        let prior_state = self.rec.state;
        let r = self.deploy_steps(source, &version, actor, meta).await;
        if r.is_err() {
            self.undo_deploy(&version, prior_state).await;
        }
        r
    }

    /// After a deploy failed before its swap: the app gets its state back, the
    /// journal is cleared and an unvetoed copy is removed, freeing its version.
    async fn undo_deploy(&mut self, version: &Version, prior: AppState) {
        if self.dir.current().ok().flatten().as_ref() == Some(version) {
            return;
        }
        let record = self
            .store
            .release(self.app(), version.as_str())
            .ok()
            .flatten();
        let vetoed = record
            .as_ref()
            .is_some_and(|r| r.state == ReleaseState::Failed);
        if !vetoed {
            if self.dir.exists(version) {
                let (dir, v) = (self.dir.clone(), version.clone());
                if let Err(e) = blocking(move || dir.remove(&v)).await {
                    tracing::warn!(app = %self.app(), "cannot remove refused release: {e}");
                }
            }
            if record.is_some() {
                let r = self.store.delete_release(self.app(), version.as_str());
                self.log_err(r);
            }
        }
        if self.rec.state == AppState::Deploying {
            self.rec.state = prior;
            self.save_or_log();
        }
        if self.intent.as_ref().is_some_and(|i| i.op == Op::Deploy) {
            self.end_op();
        }
    }

    async fn deploy_steps(
        &mut self,
        source: PathBuf,
        version: &Version,
        actor: Actor,
        meta: DeployMeta,
    ) -> Result<Option<DeployOutcome>, CommandError> {
        let mut intent = self.new_intent(
            Op::Deploy,
            Some(version.as_str()),
            "deploy",
            &actor,
            vec![Step::Stage, Step::Swap, Step::Restart],
        );
        intent.source = Some(source.display().to_string());
        // Nothing changes unless the deploy could be journaled first.
        self.begin_op(intent)?;
        self.rec.state = AppState::Deploying;
        self.save()?;
        crate::failpoint::hit("deploy.before-stage");
        let staged = {
            let (dir, src, v, limits) = (
                self.dir.clone(),
                source.clone(),
                version.clone(),
                self.limits.clone(),
            );
            blocking(move || dir.stage(&src, &v, &limits)).await
        };
        // A failed staging or a bad manifest is bad input: `undo_deploy`
        // removes the staged copy, nothing else changed.
        let manifest = staged.and_then(|_| {
            crate::failpoint::hit("deploy.after-stage");
            crate::release::read_manifest(&self.dir.release_path(version), version)
        });
        let manifest = match manifest {
            Ok(m) => m.unwrap_or_default(),
            Err(e) => {
                let ev = self
                    .event(actor, EventKind::DeployFailed)
                    .version(version.as_str())
                    .reason(e.to_string());
                self.record_or_log(ev);
                return Err(e.into());
            }
        };
        let mut r = self.release_rec(version.as_str())?;
        r.source = Some(source.display().to_string());
        r.commit = meta.commit.or(manifest.commit);
        r.tag = manifest.tag;
        r.message = meta.message.or(manifest.summary);
        self.store.put_release(&r)?;
        let mut what = format!("from {}", source.display());
        if let Some(c) = &r.commit {
            what.push_str(&format!("; commit {c}"));
        }
        if let Some(t) = &r.tag {
            what.push_str(&format!("; tag {t}"));
        }
        if let Some(m) = &r.message {
            what.push_str(&format!(": {m}"));
        }
        let ev = self
            .event(actor.clone(), EventKind::Staged)
            .version(version.as_str())
            .reason(what);
        self.store.record(ev)?;
        self.step_done(&Step::Stage);

        let from = self.rec.active.clone();
        let transition = Transition {
            app: self.cfg.name.clone(),
            from: from.as_deref().map(|v| self.release_info(v)),
            to: self.release_info(version.as_str()),
            actor: actor.name.clone(),
        };
        if let Err((hook, why)) = self.pre_activate(&transition).await {
            let reason = format!("vetoed by hook `{hook}`: {why}");
            self.mark_failed(version.as_str(), &reason)?;
            let ev = self
                .event(actor, EventKind::DeployFailed)
                .version(version.as_str())
                .hook(hook.clone())
                .reason(reason);
            self.record_or_log(ev);
            return Err(CommandError::Vetoed {
                hook,
                version: version.to_string(),
                reason: why,
            });
        }
        self.take_snapshot(from.as_deref());
        self.activate(Op::Deploy, version, actor.clone(), "deploy")
            .await?;
        crate::failpoint::hit("deploy.before-restart");
        self.step_done(&Step::Swap);
        // Live from here on: bookkeeping that fails is logged, never a reason to stop.
        let r = self.set_release_state(version.as_str(), ReleaseState::Active, None);
        self.log_err(r);
        // A new release is live: the loop guard of an earlier rollback no longer applies.
        self.rec.restored = false;
        // No check runs against a release that is still starting: watch after the restart.
        self.stop_watch();
        if let Err(reason) = self.restart(version.as_str()).await {
            return Ok(Some(
                self.auto_rollback(version.as_str(), reason, None).await,
            ));
        }
        self.step_done(&Step::Restart);
        self.end_op();
        self.notify(
            HookEvent::Activated,
            LifecycleEvent::Activated(Transition {
                to: self.release_info(version.as_str()),
                ..transition
            }),
        );
        // The previous good release is the rollback target the checks are told about.
        let previous = self
            .rec
            .last_good
            .clone()
            .filter(|g| g != version.as_str())
            .or(from);
        let r = self.begin_watch(version.as_str(), previous, Phase::Bake, self.cfg.bake);
        self.log_err(r);
        self.rec.state = AppState::Baking;
        self.rec.reason = None;
        self.save_or_log();
        tracing::info!(app = %self.app(), %version, bake = %humantime::format_duration(self.cfg.bake), "baking");
        Ok(None)
    }

    /// Points `current` at `version` and records it. Only a failed swap is
    /// an error: once `current` changed, bookkeeping failures are logged.
    async fn activate(
        &mut self,
        op: Op,
        version: &Version,
        actor: Actor,
        why: &str,
    ) -> Result<(), CommandError> {
        let from = self.rec.active.clone();
        crate::failpoint::hit_in(op.as_str(), "before-swap");
        let swapped = {
            let (dir, v) = (self.dir.clone(), version.clone());
            blocking(move || dir.activate(&v)).await
        };
        if let Err(e) = swapped {
            let ev = self
                .event(actor, EventKind::DeployFailed)
                .version(version.as_str())
                .reason(format!("activation failed: {e}"));
            self.record_or_log(ev);
            return Err(e.into());
        }
        crate::failpoint::hit_in(op.as_str(), "after-swap");
        self.rec.active = Some(version.to_string());
        self.save_or_log();
        match self.release_rec(version.as_str()) {
            Ok(mut r) => {
                r.activated_at_ms = Some(now_ms());
                let r = self.store.put_release(&r);
                self.log_err(r);
            }
            Err(e) => self.log_err(Err(e)),
        }
        let ev = self
            .event(actor, EventKind::Activated)
            .version(version.as_str())
            .swap(from, version.as_str())
            .reason(why);
        self.record_or_log(ev);
        Ok(())
    }

    /// Runs the restart command, recording the outcome; Err carries the reason.
    async fn restart(&mut self, version: &str) -> Result<(), String> {
        let Some(argv) = self.cfg.restart.clone() else {
            return Ok(());
        };
        let r = crate::restart::run(
            &argv,
            self.app(),
            version,
            &self.cfg.root,
            self.cfg.restart_timeout,
        )
        .await;
        let (kind, reason) = match &r {
            Ok(()) => (EventKind::Restarted, argv.join(" ")),
            Err(e) => (EventKind::RestartFailed, e.to_string()),
        };
        let ev = self
            .event(Actor::agent(), kind)
            .version(version)
            .reason(reason.clone());
        self.log_err(self.store.record(ev).map(drop));
        r.map_err(|_| format!("restart failed: {reason}"))
    }

    /// The most recently activated good release other than `except`: the
    /// rollback target, and what `last_good` shows.
    fn newest_good(&self, except: Option<&str>) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .releases(self.app())?
            .into_iter()
            .filter(|r| r.state == ReleaseState::Good && Some(r.version.as_str()) != except)
            .max_by_key(|r| r.activated_at_ms.or(r.decided_at_ms).unwrap_or(0))
            .map(|r| r.version))
    }

    /// Marks `version` failed; it is never chosen automatically again.
    fn mark_failed(&mut self, version: &str, reason: &str) -> Result<(), StoreError> {
        self.set_release_state(version, ReleaseState::Failed, Some(reason.to_string()))?;
        self.rec.last_good = self.newest_good(None)?;
        Ok(())
    }

    /// Swaps back after `failed` was judged unhealthy (or failed to restart).
    async fn auto_rollback(
        &mut self,
        failed: &str,
        reason: String,
        check: Option<String>,
    ) -> DeployOutcome {
        // A rollback during a deploy's bake or restart is that deploy's outcome.
        let deploying = matches!(self.rec.state, AppState::Baking | AppState::Deploying);
        let metrics = crate::metrics::global();
        let outcome = self.rollback_inner(failed, reason, check).await;
        if deploying {
            let name = match &outcome {
                DeployOutcome::RolledBack { .. } => "rolled-back",
                DeployOutcome::Degraded { .. } => "degraded",
                DeployOutcome::Good => "good",
                DeployOutcome::Baking => "baking",
            };
            metrics.deploy(&self.cfg.name, name);
        }
        if matches!(outcome, DeployOutcome::RolledBack { .. }) {
            metrics.rollback(&self.cfg.name, "automatic");
        }
        outcome
    }

    async fn rollback_inner(
        &mut self,
        failed: &str,
        reason: String,
        check: Option<String>,
    ) -> DeployOutcome {
        match self
            .rollback_to(failed, None, reason.clone(), Actor::agent(), check)
            .await
        {
            Ok(done) => {
                // Loop guard: if the restored release fails too, degrade, never swap again.
                self.rec.restored = true;
                let r = self.save();
                self.log_err(r);
                let outcome = DeployOutcome::RolledBack {
                    to: done.to,
                    reason,
                };
                self.finish_waiters(outcome.clone());
                outcome
            }
            Err(e) => {
                let reason = format!("{reason}; rollback impossible: {e}");
                let marked = self.mark_failed(failed, &reason);
                self.log_err(marked);
                self.degrade(failed, &reason);
                let outcome = DeployOutcome::Degraded { reason };
                self.finish_waiters(outcome.clone());
                outcome
            }
        }
    }

    fn degrade(&mut self, version: &str, reason: &str) {
        tracing::error!(app = %self.app(), %version, "degraded: {reason}");
        self.rec.state = AppState::Degraded;
        self.rec.reason = Some(reason.to_string());
        self.rec.bake_until_ms = None;
        if let Some(w) = self.watch.as_mut() {
            w.phase = Phase::Steady;
            w.bake_until = None;
        }
        let r = self.save();
        self.log_err(r);
        let ev = self
            .event(Actor::agent(), EventKind::Degraded)
            .version(version)
            .reason(reason);
        self.log_err(self.store.record(ev).map(drop));
        self.notify(
            HookEvent::Degraded,
            LifecycleEvent::Degraded {
                app: self.cfg.name.clone(),
                version: Some(version.to_string()),
                reason: reason.to_string(),
            },
        );
    }

    /// The release as described to plugins.
    fn release_info(&self, version: &str) -> ReleaseInfo {
        let rec = self.store.release(self.app(), version).ok().flatten();
        info(self.app(), rec.as_ref(), version)
    }

    /// Copies the app's state files for the release about to be left (so a
    /// rollback to it can restore the data it expects).
    fn take_snapshot(&mut self, from: Option<&str>) {
        let Some(from) = from else { return };
        if self.cfg.snapshot.is_empty() {
            return;
        }
        let (kind, reason) = match self.snapshots.take(self.app(), from, &self.cfg.snapshot) {
            Ok(info) => (
                EventKind::SnapshotTaken,
                format!("{} file(s) of {from}", info.files.len()),
            ),
            Err(e) => (
                EventKind::SnapshotFailed,
                format!("snapshot of {from}: {e}"),
            ),
        };
        let ev = self
            .event(Actor::agent(), kind)
            .version(from)
            .reason(reason);
        self.log_err(self.store.record(ev).map(drop));
    }

    /// Restores the state files saved when `to` was left; false if that failed.
    fn restore_snapshot(&mut self, to: &str) -> bool {
        if self.cfg.snapshot.is_empty() || !self.snapshots.exists(self.app(), to) {
            return true;
        }
        let (kind, reason, ok) = match self.snapshots.restore(self.app(), to) {
            Ok(info) => (
                EventKind::SnapshotRestored,
                format!("{} file(s) of {to}", info.files.len()),
                true,
            ),
            Err(e) => (
                EventKind::SnapshotFailed,
                format!("restore of {to}: {e}"),
                false,
            ),
        };
        let ev = self.event(Actor::agent(), kind).version(to).reason(reason);
        self.log_err(self.store.record(ev).map(drop));
        ok
    }

    /// Runs the pre-activate hooks in order; the first error (of any kind:
    /// a hook that traps or times out also vetoes) stops the activation.
    async fn pre_activate(&self, t: &Transition) -> Result<(), (String, String)> {
        let event = LifecycleEvent::PreActivate(t.clone());
        for h in self
            .hooks
            .iter()
            .filter(|h| h.on.contains(&HookEvent::PreActivate))
        {
            let report = h.plugin.on_event(&h.sandbox, &event).await;
            record_hook(
                &self.store,
                &self.cfg.name,
                &t.to.version,
                h,
                HookEvent::PreActivate,
                &report.result,
            );
            if let Err(e) = report.result {
                return Err((h.name.clone(), e.to_string()));
            }
        }
        Ok(())
    }

    /// Tells the hooks subscribed to `kind` about `event`, without waiting.
    fn notify(&self, kind: HookEvent, event: LifecycleEvent) {
        if !self.hooks.iter().any(|h| h.on.contains(&kind)) {
            return;
        }
        let (hooks, store, app) = (
            self.hooks.clone(),
            self.store.clone(),
            self.cfg.name.clone(),
        );
        let version = match &event {
            LifecycleEvent::PreActivate(t) | LifecycleEvent::Activated(t) => t.to.version.clone(),
            LifecycleEvent::RolledBack(r) => r.from.version.clone(),
            LifecycleEvent::Degraded { version, .. } => version.clone().unwrap_or_default(),
        };
        tokio::spawn(async move {
            for h in hooks.iter().filter(|h| h.on.contains(&kind)) {
                let report = h.plugin.on_event(&h.sandbox, &event).await;
                record_hook(&store, &app, &version, h, kind, &report.result);
            }
        });
    }

    async fn manual_rollback(
        &mut self,
        to: Option<Version>,
        reason: Option<String>,
        actor: Actor,
    ) -> Result<RollbackDone, CommandError> {
        if matches!(self.rec.state, AppState::Deploying | AppState::RollingBack) {
            return Err(CommandError::Busy {
                app: self.cfg.name.clone(),
                state: self.rec.state.as_str(),
            });
        }
        let Some(active) = self.rec.active.clone() else {
            return Err(CommandError::NoRollbackTarget {
                app: self.cfg.name.clone(),
            });
        };
        let reason = reason.unwrap_or_else(|| format!("requested by {}", actor.name));
        let done = self
            .rollback_to(&active, to, reason.clone(), actor, None)
            .await?;
        crate::metrics::global().rollback(&self.cfg.name, "operator");
        // The operator chose the target: automatic rollbacks may act again.
        self.rec.restored = false;
        self.save_or_log();
        self.finish_waiters(DeployOutcome::RolledBack {
            to: done.to.clone(),
            reason,
        });
        Ok(done)
    }

    /// Marks `failed` failed and activates `to` (or the last good release).
    async fn rollback_to(
        &mut self,
        failed: &str,
        to: Option<Version>,
        reason: String,
        actor: Actor,
        check: Option<String>,
    ) -> Result<RollbackDone, CommandError> {
        let target = match to {
            Some(v) if v.as_str() == failed => {
                return Err(CommandError::AlreadyActive {
                    app: self.cfg.name.clone(),
                    version: v.to_string(),
                })
            }
            Some(v) => {
                if !self.dir.exists(&v) {
                    return Err(ReleaseError::NotFound {
                        path: self.dir.release_path(&v),
                        version: v,
                    }
                    .into());
                }
                v
            }
            None => match self.newest_good(Some(failed))? {
                Some(v) => Version::parse(&v)?,
                None => {
                    return Err(CommandError::NoRollbackTarget {
                        app: self.cfg.name.clone(),
                    })
                }
            },
        };
        let prior_state = self.rec.state;
        let mut intent = self.new_intent(
            Op::Rollback,
            Some(target.as_str()),
            &reason,
            &actor,
            vec![Step::Swap, Step::Restore, Step::Restart],
        );
        intent.from = Some(failed.to_string());
        intent.check = check.clone();
        intent.automatic = actor == Actor::agent();
        // Safety first: a rollback goes ahead even if it cannot be journaled.
        if let Err(e) = self.begin_op(intent) {
            tracing::error!(app = %self.app(), "rolling back without a journal: {e}");
        }
        self.rec.state = AppState::RollingBack;
        self.save_or_log();
        let from = self.rec.active.clone();
        if let Err(e) = self
            .activate(
                Op::Rollback,
                &target,
                actor.clone(),
                &format!("rollback: {reason}"),
            )
            .await
        {
            self.rec.state = prior_state;
            self.save_or_log();
            self.end_op();
            return Err(e);
        }
        self.step_done(&Step::Swap);
        self.complete_rollback(failed, target.as_str(), from, &reason, actor, check)
            .await;
        Ok(RollbackDone {
            from: Some(failed.to_string()),
            to: target.to_string(),
        })
    }

    /// What follows the swap of a rollback: the release left is marked
    /// failed, the state files `target` expects are restored, its restart
    /// command runs, and the journal is cleared. Restore or restart failing
    /// degrades the app.
    async fn complete_rollback(
        &mut self,
        failed: &str,
        target: &str,
        from: Option<String>,
        reason: &str,
        actor: Actor,
        check: Option<String>,
    ) {
        let r = self.mark_failed(failed, reason);
        self.log_err(r);
        let mut ev = self
            .event(actor.clone(), EventKind::RolledBack)
            .version(failed)
            .swap(from, target)
            .reason(reason);
        // An automatic rollback names the check that caused it.
        if let Some(c) = &check {
            ev = ev.check(c.clone());
        }
        self.record_or_log(ev);
        self.notify(
            HookEvent::RolledBack,
            LifecycleEvent::RolledBack(RollbackInfo {
                app: self.cfg.name.clone(),
                from: self.release_info(failed),
                to: self.release_info(target),
                reason: reason.to_string(),
                check,
                actor: actor.name,
            }),
        );
        tracing::warn!(app = %self.app(), from = %failed, to = %target, "rolled back: {reason}");
        self.stop_watch();
        crate::failpoint::hit("rollback.before-restore");
        let restored = self.restore_snapshot(target);
        self.step_done(&Step::Restore);
        crate::failpoint::hit("rollback.before-restart");
        let restarted = self.restart(target).await;
        self.step_done(&Step::Restart);
        self.end_op();
        let r = self.begin_watch(target, None, Phase::Steady, Duration::ZERO);
        self.log_err(r);
        self.rec.state = AppState::Healthy;
        self.rec.reason = Some(format!("rolled back from {failed}: {reason}"));
        self.save_or_log();
        if let Err(why) = restarted {
            self.degrade(target, &why);
        } else if !restored {
            let why = format!("the state files of {target} could not be restored (see history)");
            self.degrade(target, &why);
        }
    }
}

/// What `lifecycle::recover` is told about the app's directory.
struct DiskFacts<'a> {
    dir: &'a AppDir,
    current: Option<String>,
}

impl crate::lifecycle::Disk for DiskFacts<'_> {
    fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    fn has_release(&self, version: &str) -> bool {
        Version::parse(version).is_ok_and(|v| self.dir.exists(&v))
    }
}

/// Records a hook call in the audit log.
fn record_hook(
    store: &Store,
    app: &str,
    version: &str,
    hook: &LoadedHook,
    kind: HookEvent,
    result: &Result<(), crate::plugin::CallError>,
) {
    let (event_kind, reason) = match result {
        Ok(()) => (EventKind::HookRan, format!("{}: ok", kind.as_str())),
        Err(e) => {
            // One line: hook errors may quote a whole response body.
            let text: String = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let text = if text.len() > 512 {
                let mut end = 512;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…", &text[..end])
            } else {
                text
            };
            tracing::warn!(%app, hook = %hook.name, "hook failed on {}: {text}", kind.as_str());
            (EventKind::HookFailed, format!("{}: {text}", kind.as_str()))
        }
    };
    let mut ev = Event::new(app, Actor::agent(), event_kind)
        .hook(hook.name.clone())
        .reason(reason);
    if !version.is_empty() {
        ev = ev.version(version);
    }
    if let Err(e) = store.record(ev) {
        tracing::error!(%app, "state store: {e}");
    }
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
    }
}

async fn sleep_until_opt(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
