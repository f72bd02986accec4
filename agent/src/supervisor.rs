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
use crate::machine::{
    Answer, CheckSpec, Count, Effect, Facts, Flow, Input, Machine, Note, Refusal, Settings, Start,
    Tell, Veto,
};
pub use crate::machine::{DeployOutcome, RollbackDone};
use crate::plugin::{
    CallError, CallReport, CheckInput, LifecycleEvent, Phase, Plugin, ReleaseInfo, RollbackInfo,
    Sandbox, Status, Transition,
};
use crate::policy::{OnError, Outcome, Rule, Severity};
use crate::release::{AppDir, ReleaseError, StageLimits, Version};
use crate::snapshot::Snapshots;
use crate::store::{
    now_ms, Actor, App, AppState, CheckStatus, Event, EventKind, Release, ReleaseState, Store,
    StoreError,
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
    /// A fault of the agent itself.
    #[error("internal error: {0}")]
    Internal(String),
    /// The supervisor is gone (the agent is shutting down).
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// `promote` of an app that is neither held nor baking.
    #[error("app `{app}` is {state}: only a held or baking release can be promoted")]
    NotPromotable {
        /// The app.
        app: String,
        /// Its state.
        state: &'static str,
    },
    /// The app is not supervised (its state could not be repaired).
    #[error("app `{app}` is not supervised: {reason}; fix it, then reload the agent")]
    Unsupervised {
        /// The app.
        app: String,
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
    /// `--digest`: the content digest the staged tree must have.
    pub digest: Option<String>,
}

type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// A request to a supervisor.
pub enum Command {
    /// Activate and bake VERSION, staged earlier.
    DeployStaged {
        /// The staged version.
        version: Version,
        /// Who asked.
        actor: Actor,
        /// Reply only once the bake is decided.
        wait: bool,
        /// Where the outcome goes.
        reply: Reply<DeployOutcome>,
    },
    /// Stage SOURCE as VERSION, activate it and bake it.
    Deploy {
        /// A directory or archive: its absolute path, and the caller's
        /// descriptor of it when one was passed.
        source: Source,
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
    /// Stage SOURCE as VERSION beside the active release, not activated.
    Stage {
        /// A directory or archive, as for `Deploy`.
        source: Source,
        /// The new version.
        version: Version,
        /// Who asked.
        actor: Actor,
        /// Commit and message given with it.
        meta: DeployMeta,
        /// Where the staged version goes.
        reply: Reply<String>,
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
    /// Mark the held (or baking) release good.
    Promote {
        /// Why, in the operator's words.
        reason: Option<String>,
        /// Who asked.
        actor: Actor,
        /// The release promoted.
        reply: Reply<String>,
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
    pub severity: Severity,
    /// `pass`, `warn`, `fail` or `error`.
    pub outcome: Outcome,
    /// What it said.
    pub summary: String,
    /// Its metrics.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// How long it took.
    pub duration_ms: u64,
}

/// A check entry ready to run: its config, compiled plugin and sandbox.
#[derive(Clone)]
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
    /// Conclusive runs a bake needs from it.
    pub min_conclusive: u32,
    /// The compiled plugin.
    pub plugin: Arc<Plugin>,
    /// Its grants.
    pub sandbox: Arc<Sandbox>,
}

/// A rollback hook ready to run.
#[derive(Clone)]
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
        source: impl Into<Source>,
        version: Version,
        actor: Actor,
        wait: bool,
        meta: DeployMeta,
    ) -> Result<DeployOutcome, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::Deploy {
                source: source.into(),
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

    /// Activates and bakes a release staged earlier (after the bake when `wait`).
    pub async fn deploy_staged(
        &self,
        version: Version,
        actor: Actor,
        wait: bool,
    ) -> Result<DeployOutcome, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::DeployStaged {
                version,
                actor,
                wait,
                reply,
            },
            rx,
        )
        .await
    }

    /// Sends a stage and waits for the release to be staged and recorded.
    pub async fn stage(
        &self,
        source: impl Into<Source>,
        version: Version,
        actor: Actor,
        meta: DeployMeta,
    ) -> Result<String, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::Stage {
                source: source.into(),
                version,
                actor,
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

    /// Marks the held (or baking) release good; returns its version.
    pub async fn promote(
        &self,
        reason: Option<String>,
        actor: Actor,
    ) -> Result<String, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::Promote {
                reason,
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

/// A check call's result, on its way back to the task.
struct CheckDone {
    generation: u64,
    index: usize,
    report: CallReport,
    at_ms: u64,
}

/// The reply of the command being handled.
enum Pending {
    Deploy(Reply<DeployOutcome>),
    Switch(Reply<RollbackDone>),
    Pause(Reply<()>),
    Promote(Reply<String>),
    Stage(Reply<String>),
}

/// What a deploy in progress needs beyond its version (not the machine's).
struct DeploySource {
    path: PathBuf,
    /// The caller's descriptor of `path` (taken when staging).
    opened: Option<std::fs::File>,
    meta: DeployMeta,
    actor: Actor,
}

impl DeploySource {
    fn new(source: Source, meta: DeployMeta, actor: &Actor) -> Self {
        DeploySource {
            path: source.path,
            opened: source.opened,
            meta,
            actor: actor.clone(),
        }
    }
}

/// What a deploy stages from: a path, read with the agent's rights, or the
/// descriptor a caller opened with its own (`path` then names it).
#[derive(Debug)]
pub struct Source {
    /// Absolute path of the directory or archive.
    pub path: PathBuf,
    /// The caller's open descriptor of it, if passed.
    pub opened: Option<std::fs::File>,
}

impl Source {
    /// A file the agent opened itself (`path` names it in records).
    pub fn opened(path: PathBuf, file: std::fs::File) -> Source {
        Source {
            path,
            opened: Some(file),
        }
    }
}

impl From<PathBuf> for Source {
    fn from(path: PathBuf) -> Source {
        Source { path, opened: None }
    }
}

/// One app's supervisor: the shell around its `Machine`.
pub struct Supervisor {
    cfg: AppConfig,
    dir: AppDir,
    store: Store,
    checks: Vec<LoadedCheck>,
    hooks: Arc<Vec<LoadedHook>>,
    snapshots: Snapshots,
    journal: Journal,
    machine: Machine,
    /// The operation in progress, as journaled.
    intent: Option<Intent>,
    /// An interrupted operation that start-up left to the task.
    recovering: Option<Intent>,
    rec: App,
    /// The reply of the command being handled, and what its deploy stages.
    pending: Option<Pending>,
    source: Option<DeploySource>,
    /// The error behind the last failed effect, for the reply.
    failure: Option<CommandError>,
    /// The check result being fed to the machine (its text and figures).
    report: Option<(CallReport, u64)>,
    /// Each check's outcome as last written durably (results that repeat
    /// it stay in memory).
    saved_outcomes: std::collections::BTreeMap<String, Outcome>,
    /// The releases the current watch (its generation) tells its checks about.
    watch_info: Option<(u64, ReleaseInfo, Option<ReleaseInfo>)>,
    waiters: Vec<Reply<DeployOutcome>>,
    done_tx: mpsc::Sender<CheckDone>,
    done_rx: mpsc::Receiver<CheckDone>,
    limits: StageLimits,
    /// What it is built from, kept current by reloads: its monitor builds
    /// it again from these after a failure.
    parts: Arc<std::sync::Mutex<Parts>>,
}

fn info(app: &str, rec: Option<&Release>, version: &str) -> ReleaseInfo {
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
        Err(e) => Err(crate::fsutil::IoError::new(
            "run blocking task",
            PathBuf::new(),
            std::io::Error::other(e.to_string()),
        )
        .into()),
    }
}

/// What the machine sees of the store and the disk.
struct Known<'a> {
    app: &'a str,
    dir: &'a AppDir,
    store: &'a Store,
}

impl Facts for Known<'_> {
    fn on_disk(&self, version: &str) -> bool {
        Version::parse(version).is_ok_and(|v| self.dir.exists(&v))
    }

    fn recorded(&self, version: &str) -> bool {
        matches!(self.store.release(self.app, version), Ok(Some(_)))
    }

    fn newest_good(&self, except: Option<&str>) -> Option<String> {
        newest_good(self.store, self.app, except).unwrap_or_else(|e| {
            tracing::error!(app = %self.app, "state store: {e}");
            None
        })
    }
}

/// Facts of an app not yet looked at (the machine before `reconcile`).
struct NoFacts;

impl Facts for NoFacts {
    fn on_disk(&self, _: &str) -> bool {
        false
    }

    fn recorded(&self, _: &str) -> bool {
        false
    }

    fn newest_good(&self, _: Option<&str>) -> Option<String> {
        None
    }
}

/// The most recently activated good release other than `except`: the
/// rollback target, and what `last_good` shows.
fn newest_good(
    store: &Store,
    app: &str,
    except: Option<&str>,
) -> Result<Option<String>, StoreError> {
    Ok(store
        .releases(app)?
        .into_iter()
        .filter(|r| r.state == ReleaseState::Good && Some(r.version.as_str()) != except)
        .max_by_key(|r| r.activated_at_ms.or(r.decided_at_ms).unwrap_or(0))
        .map(|r| r.version))
}

/// The machine's view of an app's settings and checks.
fn settings(cfg: &AppConfig, checks: &[LoadedCheck]) -> Settings {
    Settings {
        bake: cfg.bake,
        max_bake: cfg.max_bake,
        auto_rollback: cfg.auto_rollback,
        checks: checks
            .iter()
            .map(|c| CheckSpec {
                name: c.name.clone(),
                interval: c.interval,
                rule: c.rule,
                on_error: c.on_error,
                severity: c.severity,
                min_conclusive: c.min_conclusive,
            })
            .collect(),
    }
}

impl Supervisor {
    /// Reconciles the app's store records with its directory and spawns its
    /// task (an app that cannot be reconciled is marked `error` there, never
    /// a failure here). Returns the handle to send commands to it.
    pub fn start(
        cfg: AppConfig,
        store: Store,
        checks: Vec<LoadedCheck>,
        hooks: Vec<LoadedHook>,
        snapshots: Snapshots,
        journal: Journal,
    ) -> AppHandle {
        let (tx, rx) = mpsc::channel(16);
        let parts = Arc::new(std::sync::Mutex::new(Parts {
            cfg,
            store,
            checks,
            hooks,
            snapshots,
            journal,
        }));
        // The first reconciliation happens before the agent reports ready.
        let first = Supervisor::build(&parts);
        tokio::spawn(supervise(parts, rx, first));
        AppHandle { tx }
    }

    /// A supervisor from `parts`, reconciled with its directory.
    fn build(parts: &Arc<std::sync::Mutex<Parts>>) -> Result<Supervisor, String> {
        let p = lock_parts(parts).clone();
        let (done_tx, done_rx) = mpsc::channel(64);
        let dir = AppDir::new(p.cfg.root.clone());
        let rec = p
            .store
            .app(&p.cfg.name)
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| App::new(&p.cfg.name));
        let machine = Machine::new(
            settings(&p.cfg, &p.checks),
            Start::Empty,
            rec.paused,
            rec.restored,
            &NoFacts,
            Instant::now(),
        );
        let mut sup = Supervisor {
            dir,
            store: p.store,
            checks: p.checks,
            hooks: Arc::new(p.hooks),
            snapshots: p.snapshots,
            journal: p.journal,
            machine,
            intent: None,
            recovering: None,
            rec,
            pending: None,
            source: None,
            failure: None,
            report: None,
            saved_outcomes: Default::default(),
            watch_info: None,
            waiters: Vec::new(),
            done_tx,
            done_rx,
            limits: StageLimits {
                keep_modes: p.cfg.keep_modes,
                link_unchanged: p.cfg.link_unchanged,
                ..StageLimits::default()
            },
            cfg: p.cfg,
            parts: parts.clone(),
        };
        sup.reconcile().map_err(|e| e.to_string())?;
        Ok(sup)
    }

    fn app(&self) -> &str {
        &self.cfg.name
    }

    fn event(&self, actor: Actor, kind: EventKind) -> Event {
        Event::new(&self.cfg.name, actor, kind)
    }

    /// Writes the app's record as the machine has it.
    fn save(&mut self) -> Result<(), StoreError> {
        let m = &self.machine;
        self.rec.state = m.state().app_state();
        self.rec.active = m.active().map(str::to_string);
        self.rec.reason = m.reason().map(str::to_string);
        self.rec.paused = m.paused();
        self.rec.restored = m.restored();
        self.rec.bake_until_ms = m.bake_until().map(|until| {
            now_ms() + until.saturating_duration_since(Instant::now()).as_millis() as u64
        });
        crate::metrics::global().state(&self.cfg.name, self.rec.state.as_str());
        self.store.put_app(self.rec.clone())?;
        self.checks_saved();
        Ok(())
    }

    /// Notes that the record's check results as they are now were written.
    fn checks_saved(&mut self) {
        self.saved_outcomes = self
            .rec
            .checks
            .iter()
            .map(|(name, c)| (name.clone(), c.outcome))
            .collect();
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

    fn log_err(&self, r: Result<(), StoreError>) {
        if let Err(e) = r {
            tracing::error!(app = %self.app(), "state store: {e}");
        }
    }

    /// Journals that `step` of the operation in progress is done.
    fn step_done(&mut self, step: &Step) {
        let Some(intent) = self.intent.as_mut() else {
            return;
        };
        intent.done(step);
        // Recovery reads whether the swap happened from `current`, and a
        // crash between the last restart and the end of the operation
        // repeats that restart, as a crash just before this write would:
        // neither needs a journal write (two fsyncs) of its own.
        if *step == Step::Swap || (*step == Step::Restart && intent.steps.is_empty()) {
            return;
        }
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

    fn release_rec(&self, version: &str) -> Result<Release, StoreError> {
        Ok(self
            .store
            .release(self.app(), version)?
            .unwrap_or_else(|| Release::new(self.app(), version, ReleaseState::Staged)))
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

    fn newest_good(&self, except: Option<&str>) -> Result<Option<String>, StoreError> {
        newest_good(&self.store, self.app(), except)
    }

    /// Makes the store agree with the disk: `current` is the truth. An
    /// operation the journal names as interrupted is planned here
    /// (`lifecycle::recover`); a deploy that never went live is undone at
    /// once, the steps that remain are done by the task before anything
    /// else (`finish_recovery`).
    fn reconcile(&mut self) -> Result<(), CommandError> {
        self.dir.ensure_layout()?;
        let journal_temps = self.journal.clean(self.app());
        for leftover in self.dir.clean_leftovers()?.into_iter().chain(journal_temps) {
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
                known: Known {
                    app: &self.cfg.name,
                    dir: &self.dir,
                    store: &self.store,
                },
                current: current.clone(),
            };
            let to = intent.to.clone().unwrap_or_default();
            // An operation that never swapped leaves the app as it was
            // before it (degraded stays degraded, with its reason).
            let back_to = intent
                .before
                .clone()
                .filter(|(state, _)| !state.is_transient() && current == intent.from);
            match crate::lifecycle::recover(&intent, &disk) {
                Recovery::Abandon { version } => {
                    if let Ok(v) = Version::parse(&version) {
                        self.dir.remove(&v)?;
                    }
                    if self.store.release(self.app(), &version)?.is_some() {
                        self.store.delete_release(self.app(), &version)?;
                    }
                    let again = if intent.op == Op::Stage {
                        "stage"
                    } else {
                        "deploy"
                    };
                    notes.push(format!(
                        "the {} of {version} was interrupted before it went live: \
                         its staged copy was removed, {again} it again",
                        intent.op.as_str()
                    ));
                    if let Some((state, reason)) = back_to {
                        (self.rec.state, self.rec.reason) = (state, reason);
                    }
                    self.journal.clear(self.app())?;
                }
                Recovery::Nothing => {
                    if let Some((state, reason)) = back_to {
                        (self.rec.state, self.rec.reason) = (state, reason);
                    }
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
                .last_event(self.app(), EventKind::Activated, 10_000)?;
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
        let start = match current {
            None => Start::Empty,
            Some(v) => {
                let r = self.release_rec(&v)?;
                // A staged release under `current` was swapped in just before a
                // crash, before it was marked active: it has not been baked.
                if r.state == ReleaseState::Active && self.rec.state == AppState::Held {
                    Start::Held {
                        version: v,
                        reason: self.rec.reason.clone().unwrap_or_default(),
                    }
                } else if matches!(r.state, ReleaseState::Active | ReleaseState::Staged) {
                    if r.state == ReleaseState::Staged {
                        self.set_release_state(&v, ReleaseState::Active, None)?;
                        self.rec.bake_until_ms = None;
                    }
                    Start::Baking {
                        version: v,
                        left: self.bake_left(),
                    }
                } else if self.rec.state == AppState::Degraded {
                    Start::Degraded {
                        version: v,
                        reason: self.rec.reason.clone().unwrap_or_default(),
                    }
                } else {
                    Start::Steady {
                        version: v,
                        note: self.rec.reason.clone(),
                    }
                }
            }
        };
        let facts = Known {
            app: &self.cfg.name,
            dir: &self.dir,
            store: &self.store,
        };
        self.machine = Machine::new(
            settings(&self.cfg, &self.checks),
            start,
            self.rec.paused,
            self.rec.restored,
            &facts,
            Instant::now(),
        );
        self.rec.checks.clear();
        self.save()?;
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
        match Flow::recovered(&intent, steps.clone(), self.bake_left()) {
            Some(flow) => self.drive(Input::Recover(flow)).await,
            None => {
                for step in &steps {
                    if let Step::Remove { version } = step {
                        self.remove_release(version).await;
                    }
                    self.step_done(step);
                }
                self.end_op();
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

    async fn run(mut self, rx: &mut mpsc::Receiver<Command>) {
        tracing::info!(app = %self.app(), active = ?self.rec.active, state = self.rec.state.as_str(), "supervising");
        self.finish_recovery().await;
        self.drive(Input::Started).await;
        loop {
            let wake = self.machine.next_wake();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                Some(done) = self.done_rx.recv() => self.on_result(done).await,
                _ = sleep_until_opt(wake) => self.drive(Input::Tick).await,
            }
        }
        tracing::info!(app = %self.app(), "supervisor stopped");
    }

    /// Feeds `input` to the machine and performs what it says, feeding each
    /// effect's result back, until the machine has nothing left to do.
    ///
    /// The store's flushes are held meanwhile (group commit): what the
    /// effects write is made durable in one flush before the journal ends
    /// the operation, before a step that waits on the world (a copy, a
    /// hook, a restart), and when the machine is done, after its reply.
    /// A crash before such a commit loses only records that the journal's
    /// redo and the start-up reconciliation with `current` write again.
    async fn drive(&mut self, input: Input) {
        self.store.hold_flushes();
        self.drive_held(input).await;
        let r = self.store.release_flushes();
        self.log_err(r);
    }

    async fn drive_held(&mut self, input: Input) {
        let mut next = Some(input);
        while let Some(input) = next.take() {
            let facts = Known {
                app: &self.cfg.name,
                dir: &self.dir,
                store: &self.store,
            };
            let effects = self.machine.step(input, Instant::now(), &facts);
            for effect in effects {
                if let Some(result) = self.perform(effect).await {
                    next = Some(result);
                }
            }
        }
    }

    /// Performs one effect; returns its result for the machine, if it has one.
    async fn perform(&mut self, effect: Effect) -> Option<Input> {
        if matches!(
            effect,
            Effect::End
                | Effect::Stage { .. }
                | Effect::Vet { .. }
                | Effect::Restore { .. }
                | Effect::Restart { .. }
                | Effect::Discard { .. }
                | Effect::Prune
        ) {
            let r = self.store.commit();
            self.log_err(r);
        }
        match effect {
            Effect::Begin(intent) => return Some(Input::Journaled(self.begin_op(intent))),
            Effect::StepDone(step) => self.step_done(&step),
            Effect::End => self.end_op(),
            Effect::Stage { version } => return Some(Input::Staged(self.stage(&version).await)),
            Effect::Vet {
                version,
                from,
                actor,
            } => {
                let r = self.pre_activate(&version, from.as_deref(), &actor).await;
                return Some(Input::Cleared(r));
            }
            Effect::Snapshot { of } => self.take_snapshot(&of),
            Effect::Swap { op, to, actor, why } => {
                return Some(Input::Swapped(self.swap(op, &to, actor, &why).await))
            }
            Effect::Restore { of } => {
                crate::failpoint::hit("rollback.before-restore");
                return Some(Input::Restored(self.restore_snapshot(&of)));
            }
            Effect::Restart { op, version } => {
                crate::failpoint::hit_in(op.as_str(), "before-restart");
                return Some(Input::Restarted(self.restart(&version).await));
            }
            Effect::Discard { version } => self.discard(&version).await,
            Effect::Release {
                version,
                state,
                reason,
            } => {
                let r = self.set_release_state(&version, state, reason);
                self.log_err(r);
                if matches!(state, ReleaseState::Good | ReleaseState::Failed) {
                    match self.newest_good(None) {
                        Ok(good) => self.rec.last_good = good,
                        Err(e) => self.log_err(Err(e)),
                    }
                }
                if state == ReleaseState::Good {
                    tracing::info!(app = %self.app(), %version, "release marked good");
                }
            }
            Effect::Record(note) => self.record_or_log(self.note_event(note)),
            Effect::Save => self.save_or_log(),
            Effect::Watch { .. } => self.rec.checks.clear(),
            Effect::RunCheck {
                index,
                generation,
                version,
                phase,
            } => self.run_check(index, generation, &version, phase),
            Effect::RecordCheck {
                index,
                outcome,
                consecutive_failures,
                runs,
            } => self.record_check(index, outcome, consecutive_failures, runs),
            Effect::Notify(tell) => self.notify(tell),
            Effect::Prune => self.prune_releases().await,
            Effect::Count(count) => {
                let metrics = crate::metrics::global();
                match count {
                    Count::Deploy(outcome) => metrics.deploy(&self.cfg.name, outcome),
                    Count::Rollback(kind) => metrics.rollback(&self.cfg.name, kind),
                }
            }
            Effect::Reply(answer) => self.answer(answer),
        }
        None
    }

    /// Journals an operation before its first side effect. A journal that
    /// cannot be written is cleared, so that no older entry is taken for it.
    fn begin_op(&mut self, mut intent: Intent) -> Result<(), String> {
        intent.at_ms = now_ms();
        if intent.op == Op::Deploy {
            intent.source = self.source.as_ref().map(|s| s.path.display().to_string());
        }
        match self.journal.save(&self.cfg.name, &intent) {
            Ok(()) => {
                self.intent = Some(intent);
                Ok(())
            }
            Err(e) => {
                if intent.op == Op::Rollback {
                    // The machine goes ahead all the same: safety first.
                    tracing::error!(app = %self.app(), "rolling back without a journal: {e}");
                } else {
                    tracing::error!(app = %self.app(), op = intent.op.as_str(), "cannot journal: {e}");
                }
                self.end_op();
                let text = e.to_string();
                self.failure = Some(e.into());
                Err(text)
            }
        }
    }

    fn note_event(&self, note: Note) -> Event {
        let mut ev = self.event(note.actor, note.kind).reason(note.reason);
        ev.version = note.version;
        ev.check = note.check;
        ev.hook = note.hook;
        if let Some((from, to)) = note.swap {
            ev = ev.swap(from, to);
        }
        ev
    }

    /// Stages the deploy's source as `version` and records the release; the
    /// error is kept for the reply.
    async fn stage(&mut self, version: &str) -> Result<(), String> {
        let r = self.stage_recorded(version).await;
        r.map_err(|e| {
            let text = e.to_string();
            self.failure = Some(e);
            text
        })
    }

    async fn stage_recorded(&mut self, version: &str) -> Result<(), CommandError> {
        let version = Version::parse(version)?;
        let Some(source) = self.source.as_mut() else {
            return Err(CommandError::Internal("a deploy without a source".into()));
        };
        let opened = source.opened.take();
        let (source, meta, actor) = (
            source.path.clone(),
            source.meta.clone(),
            source.actor.clone(),
        );
        crate::failpoint::hit("deploy.before-stage");
        let staged = {
            let (dir, src, v, limits) = (
                self.dir.clone(),
                source.clone(),
                version.clone(),
                self.limits.clone(),
            );
            blocking(move || dir.stage_opened(&src, opened, &v, &limits)).await
        };
        let staged = staged?;
        crate::failpoint::hit("deploy.after-stage");
        let manifest = crate::release::read_manifest(&staged.path, &version)?.unwrap_or_default();
        let digest = staged.digest;
        if let Some(want) = meta.digest.as_ref().filter(|want| **want != digest) {
            // The copy goes with the refusal: these are not the bits asked for.
            return Err(ReleaseError::Source {
                path: source,
                reason: format!("its content digest is {digest}, not the expected {want}"),
            }
            .into());
        }
        let mut r = self.release_rec(version.as_str())?;
        r.source = Some(source.display().to_string());
        r.commit = meta.commit.or(manifest.commit);
        r.tag = manifest.tag;
        r.message = meta.message.or(manifest.summary);
        r.digest = Some(digest);
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
            .event(actor, EventKind::Staged)
            .version(version.as_str())
            .reason(what);
        self.store.record(ev)?;
        Ok(())
    }

    /// Removes a deploy's copy that never went live, freeing its version.
    async fn discard(&mut self, version: &str) {
        let Ok(version) = Version::parse(version) else {
            return;
        };
        if self.dir.current().ok().flatten().as_ref() == Some(&version) {
            return;
        }
        if self.dir.exists(&version) {
            let (dir, v) = (self.dir.clone(), version.clone());
            if let Err(e) = blocking(move || dir.remove(&v)).await {
                tracing::warn!(app = %self.app(), "cannot remove refused release: {e}");
            }
        }
        if let Ok(Some(_)) = self.store.release(self.app(), version.as_str()) {
            let r = self.store.delete_release(self.app(), version.as_str());
            self.log_err(r);
        }
    }

    /// Points `current` at `to` and records the swap. Only a failed swap is
    /// an error: once `current` changed, bookkeeping failures are logged.
    async fn swap(&mut self, op: Op, to: &str, actor: Actor, why: &str) -> Result<(), String> {
        let from = self.rec.active.clone();
        let version = match Version::parse(to) {
            Ok(v) => v,
            Err(e) => {
                let text = e.to_string();
                self.failure = Some(e.into());
                return Err(text);
            }
        };
        crate::failpoint::hit_in(op.as_str(), "before-swap");
        let swapped = {
            let (dir, v) = (self.dir.clone(), version.clone());
            blocking(move || dir.activate(&v)).await
        };
        if let Err(e) = swapped {
            let text = e.to_string();
            self.failure = Some(e.into());
            return Err(text);
        }
        crate::failpoint::hit_in(op.as_str(), "after-swap");
        self.rec.active = Some(to.to_string());
        match self.release_rec(to) {
            Ok(mut r) => {
                r.activated_at_ms = Some(now_ms());
                let r = self.store.put_release(&r);
                self.log_err(r);
            }
            Err(e) => self.log_err(Err(e)),
        }
        let ev = self
            .event(actor, EventKind::Activated)
            .version(to)
            .swap(from, to)
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
            &self.cfg.restart_env,
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
        self.record_or_log(ev);
        r.map_err(|_| format!("restart failed: {reason}"))
    }

    /// The releases the current watch tells its checks about (looked up once
    /// per watch).
    fn watch_releases(&mut self) -> Option<(ReleaseInfo, Option<ReleaseInfo>)> {
        let (version, previous, generation) = self.machine.watching()?;
        if self.watch_info.as_ref().map(|w| w.0) != Some(generation) {
            let (version, previous) = (version.to_string(), previous.map(str::to_string));
            let active = self.release_info(&version);
            let previous = previous.map(|p| self.release_info(&p));
            self.watch_info = Some((generation, active, previous));
        }
        self.watch_info
            .as_ref()
            .map(|(_, a, p)| (a.clone(), p.clone()))
    }

    fn run_check(&mut self, index: usize, generation: u64, version: &str, phase: Phase) {
        let Some((active, previous)) = self.watch_releases() else {
            return;
        };
        let Some(check) = self.checks.get(index) else {
            return;
        };
        debug_assert_eq!(active.version, version);
        let input = CheckInput {
            app: self.cfg.name.clone(),
            check: check.name.clone(),
            active,
            previous,
            phase,
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
                    index,
                    report,
                    at_ms,
                })
                .await;
        });
    }

    async fn on_result(&mut self, done: CheckDone) {
        let (outcome, summary) = match &done.report.result {
            Ok(r) => (outcome_of(r.status), r.summary.clone()),
            Err(e) => (Outcome::Error, e.to_string()),
        };
        self.report = Some((done.report, done.at_ms));
        self.drive(Input::CheckDone {
            generation: done.generation,
            index: done.index,
            outcome,
            summary,
        })
        .await;
        self.report = None;
    }

    /// Stores a check's latest result and publishes it.
    fn record_check(
        &mut self,
        index: usize,
        outcome: Outcome,
        consecutive_failures: u32,
        runs: u64,
    ) {
        let (Some((report, at_ms)), Some(check)) = (self.report.as_ref(), self.checks.get(index))
        else {
            return;
        };
        let (summary, metrics) = match &report.result {
            Ok(r) => (r.summary.clone(), r.metrics.clone()),
            Err(e) => (e.to_string(), Default::default()),
        };
        let error_kind = match &report.result {
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
            report.elapsed,
            report.http_retries,
            error_kind,
        );
        tracing::debug!(app = %self.cfg.name, check = %check.name, outcome = outcome.as_str(), %summary, "check result");
        let duration_ms = report.elapsed.as_millis() as u64;
        let at_ms = *at_ms;
        self.rec.checks.insert(
            check.name.clone(),
            CheckStatus {
                outcome,
                summary: summary.clone(),
                at_ms,
                duration_ms,
                consecutive_failures,
                runs,
                http_retries: report.http_retries,
                metrics,
            },
        );
        // While the store cannot be written, every result tries a durable
        // save: the first that works writes the queued events too.
        let saved = self.saved_outcomes.get(&check.name).copied();
        let r = if self.store.unwritable().is_some() {
            self.store.put_app(self.rec.clone()).map(|()| true)
        } else if crate::policy::save_check_now(saved, outcome) {
            self.store.put_app_lazy(&self.rec).map(|()| true)
        } else {
            self.store.keep_app(&self.rec);
            Ok(false)
        };
        let version = self.machine.watching().map(|w| w.0).unwrap_or_default();
        self.store
            .feed()
            .publish(crate::live::LiveEvent::check_result(
                &self.cfg.name,
                version,
                &check.name,
                outcome,
                &summary,
                at_ms,
                duration_ms,
            ));
        match r {
            Ok(true) => self.checks_saved(),
            Ok(false) => {}
            Err(e) => tracing::error!(app = %self.cfg.name, "cannot record check result: {e}"),
        }
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
        let plan = crate::policy::prune_plan(&order, &protected, keep);
        if plan.is_empty() {
            return;
        }
        let intent = Intent {
            op: Op::Prune,
            from: self.rec.active.clone(),
            to: None,
            why: "keep_releases".into(),
            actor: Actor::agent().name,
            check: None,
            automatic: true,
            source: None,
            steps: plan
                .iter()
                .map(|v| Step::Remove {
                    version: v.to_string(),
                })
                .collect(),
            at_ms: now_ms(),
            before: None,
            staged: false,
        };
        if let Err(e) = self.journal.save(&self.cfg.name, &intent) {
            // Pruning can wait for a journal that works.
            tracing::warn!(app = %self.app(), "not pruning: {e}");
            return;
        }
        self.intent = Some(intent);
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

    /// Sends the machine's answer where it belongs.
    fn answer(&mut self, answer: Answer) {
        match (answer, self.pending.take()) {
            (Answer::Deploy(r), Some(Pending::Deploy(tx))) => {
                let r = r.map_err(|e| self.refusal(e));
                let _ = tx.send(r);
            }
            (Answer::Park, Some(Pending::Deploy(tx))) => self.waiters.push(tx),
            (Answer::Switch(r), Some(Pending::Switch(tx))) => {
                let r = r.map_err(|e| self.refusal(e));
                let _ = tx.send(r);
            }
            (Answer::Paused, Some(Pending::Pause(tx))) => {
                let _ = tx.send(Ok(()));
            }
            (Answer::Staged(r), Some(Pending::Stage(tx))) => {
                let r = r.map_err(|e| self.refusal(e));
                let _ = tx.send(r);
            }
            (Answer::Promoted(r), Some(Pending::Promote(tx))) => {
                let r = r.map_err(|e| self.refusal(e));
                let _ = tx.send(r);
            }
            (Answer::Waiters(outcome), pending) => {
                self.pending = pending;
                self.finish_waiters(outcome);
            }
            (_, pending) => self.pending = pending,
        }
    }

    fn refusal(&mut self, r: Refusal) -> CommandError {
        let app = self.cfg.name.clone();
        match r {
            Refusal::Busy(state) => CommandError::Busy {
                app,
                state: state.as_str(),
            },
            Refusal::ReleaseExists(version) => CommandError::ReleaseExists { app, version },
            Refusal::NothingActive => CommandError::NothingActive { app },
            Refusal::NoTarget => CommandError::NoRollbackTarget { app },
            Refusal::AlreadyActive(version) => CommandError::AlreadyActive { app, version },
            Refusal::NotPromotable(state) => CommandError::NotPromotable {
                app,
                state: state.as_str(),
            },
            Refusal::NotFound(v) => match Version::parse(&v) {
                Ok(version) => ReleaseError::NotFound {
                    path: self.dir.release_path(&version),
                    version,
                }
                .into(),
                Err(e) => e.into(),
            },
            Refusal::Vetoed {
                hook,
                version,
                reason,
            } => CommandError::Vetoed {
                hook,
                version,
                reason,
            },
            Refusal::Failed => self
                .failure
                .take()
                .unwrap_or_else(|| CommandError::Internal("the operation failed".into())),
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
            } => {
                self.pending = Some(Pending::Deploy(reply));
                self.source = Some(DeploySource::new(source, meta, &actor));
                let version = version.to_string();
                self.drive(Input::Deploy {
                    version,
                    actor,
                    wait,
                    staged: false,
                })
                .await;
                self.source = None;
            }
            Command::DeployStaged {
                version,
                actor,
                wait,
                reply,
            } => {
                self.pending = Some(Pending::Deploy(reply));
                self.drive(Input::Deploy {
                    version: version.to_string(),
                    actor,
                    wait,
                    staged: true,
                })
                .await;
            }
            Command::Stage {
                source,
                version,
                actor,
                meta,
                reply,
            } => {
                self.pending = Some(Pending::Stage(reply));
                self.source = Some(DeploySource::new(source, meta, &actor));
                let version = version.to_string();
                self.drive(Input::Stage { version, actor }).await;
                self.source = None;
            }
            Command::Rollback {
                to,
                reason,
                actor,
                reply,
            } => {
                self.pending = Some(Pending::Switch(reply));
                let to = to.map(|v| v.to_string());
                self.drive(Input::Rollback { to, reason, actor }).await;
            }
            Command::Activate {
                version,
                actor,
                reply,
            } => {
                self.pending = Some(Pending::Switch(reply));
                let version = version.to_string();
                self.drive(Input::Activate { version, actor }).await;
            }
            Command::Pause {
                paused,
                actor,
                reply,
            } => {
                self.pending = Some(Pending::Pause(reply));
                self.drive(Input::Pause { paused, actor }).await;
            }
            Command::Promote {
                reason,
                actor,
                reply,
            } => {
                self.pending = Some(Pending::Promote(reply));
                self.drive(Input::Promote { reason, actor }).await;
            }
            Command::Reload {
                cfg,
                checks,
                hooks,
                reply,
            } => {
                self.reload(*cfg, checks, hooks).await;
                let _ = reply.send(Ok(()));
            }
            Command::CheckNow { reply } => {
                crate::failpoint::panic_once("supervisor.check-now");
                let r = self.check_now().await;
                let _ = reply.send(r);
            }
        }
        self.failure = None;
        // Every command is answered, even one the machine left unanswered.
        let unanswered = CommandError::Internal("the command was not answered".into());
        match self.pending.take() {
            Some(Pending::Deploy(tx)) => drop(tx.send(Err(unanswered))),
            Some(Pending::Switch(tx)) => drop(tx.send(Err(unanswered))),
            Some(Pending::Pause(tx)) => drop(tx.send(Err(unanswered))),
            Some(Pending::Promote(tx)) | Some(Pending::Stage(tx)) => drop(tx.send(Err(unanswered))),
            None => {}
        }
    }

    /// Takes new settings, checks and hooks. Checks whose name and rule are
    /// unchanged keep their state (a changed plugin is swapped in between two
    /// runs); if the set of checks changed, the watch starts again with what
    /// is left of the bake.
    async fn reload(&mut self, cfg: AppConfig, checks: Vec<LoadedCheck>, hooks: Vec<LoadedHook>) {
        lock_parts(&self.parts).renew(cfg.clone(), checks.clone(), hooks.clone());
        self.limits.keep_modes = cfg.keep_modes;
        self.limits.link_unchanged = cfg.link_unchanged;
        self.cfg = cfg;
        self.hooks = Arc::new(hooks);
        self.checks = checks;
        self.drive(Input::Reload(settings(&self.cfg, &self.checks)))
            .await;
        let ev = self
            .event(Actor::agent(), EventKind::Reloaded)
            .reason(format!(
                "config reloaded ({} check(s), {} hook(s))",
                self.checks.len(),
                self.hooks.len()
            ));
        self.record_or_log(ev);
        tracing::info!(app = %self.app(), "config reloaded");
    }

    /// Runs every check once now, outside the policy (nothing is decided).
    async fn check_now(&mut self) -> Result<Vec<CheckRun>, CommandError> {
        let Some(active) = self.machine.active().map(str::to_string) else {
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
            phase: self.machine.phase(),
            now_ms: now_ms(),
        };
        let mut runs = Vec::with_capacity(self.checks.len());
        for c in &self.checks {
            let input = CheckInput {
                check: c.name.clone(),
                ..input.clone()
            };
            let report = c.plugin.check(&c.sandbox, &input).await;
            let (outcome, summary, metrics) = match report.result {
                Ok(r) => (outcome_of(r.status), r.summary, r.metrics),
                Err(e) => (Outcome::Error, e.to_string(), Default::default()),
            };
            runs.push(CheckRun {
                name: c.name.clone(),
                severity: c.severity,
                outcome,
                summary,
                metrics,
                duration_ms: report.elapsed.as_millis() as u64,
            });
        }
        Ok(runs)
    }

    /// The release as described to plugins.
    fn release_info(&self, version: &str) -> ReleaseInfo {
        let rec = self.store.release(self.app(), version).ok().flatten();
        info(self.app(), rec.as_ref(), version)
    }

    /// Copies the app's state files for the release about to be left (so a
    /// rollback to it can restore the data it expects).
    fn take_snapshot(&mut self, from: &str) {
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
        self.record_or_log(ev);
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
        self.record_or_log(ev);
        ok
    }

    /// Runs the pre-activate hooks in order; the first error (of any kind:
    /// a hook that traps or times out also vetoes) stops the activation.
    async fn pre_activate(
        &self,
        version: &str,
        from: Option<&str>,
        actor: &Actor,
    ) -> Result<(), Veto> {
        let t = Transition {
            app: self.cfg.name.clone(),
            from: from.map(|v| self.release_info(v)),
            to: self.release_info(version),
            actor: actor.name.clone(),
        };
        let event = LifecycleEvent::PreActivate(t);
        for h in self
            .hooks
            .iter()
            .filter(|h| h.on.contains(&HookEvent::PreActivate))
        {
            let report = h.plugin.on_event(&h.sandbox, &event).await;
            record_hook(
                &self.store,
                &self.cfg.name,
                version,
                h,
                HookEvent::PreActivate,
                &report.result,
            );
            if let Err(e) = report.result {
                return Err(Veto {
                    hook: h.name.clone(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Tells the hooks subscribed to the event about it, without waiting.
    fn notify(&self, tell: Tell) {
        let app = self.cfg.name.clone();
        let (kind, event) = match tell {
            Tell::Activated { from, to, actor } => (
                HookEvent::Activated,
                LifecycleEvent::Activated(Transition {
                    app,
                    from: from.as_deref().map(|v| self.release_info(v)),
                    to: self.release_info(&to),
                    actor,
                }),
            ),
            Tell::RolledBack {
                from,
                to,
                reason,
                check,
                actor,
            } => {
                tracing::warn!(app = %self.app(), %from, %to, "rolled back: {reason}");
                (
                    HookEvent::RolledBack,
                    LifecycleEvent::RolledBack(RollbackInfo {
                        app,
                        from: self.release_info(&from),
                        to: self.release_info(&to),
                        reason,
                        check,
                        actor,
                    }),
                )
            }
            Tell::Degraded { version, reason } => {
                tracing::error!(app = %self.app(), version = ?version, "degraded: {reason}");
                (
                    HookEvent::Degraded,
                    LifecycleEvent::Degraded {
                        app,
                        version,
                        reason,
                    },
                )
            }
            Tell::Held { version, reason } => {
                tracing::warn!(app = %self.app(), %version, "held: {reason}");
                (
                    HookEvent::Held,
                    LifecycleEvent::Held {
                        app,
                        version,
                        reason,
                    },
                )
            }
        };
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
            LifecycleEvent::Held { version, .. } => version.clone(),
        };
        tokio::spawn(async move {
            for h in hooks.iter().filter(|h| h.on.contains(&kind)) {
                if !h.plugin.knows(&event) {
                    tracing::info!(
                        %app,
                        hook = %h.name,
                        "not told about `{}`: the hook is built for rollback:plugin@{}",
                        kind.as_str(),
                        h.plugin.wit_version()
                    );
                    continue;
                }
                let report = h.plugin.on_event(&h.sandbox, &event).await;
                record_hook(&store, &app, &version, h, kind, &report.result);
            }
        });
    }
}

fn outcome_of(status: Status) -> Outcome {
    match status {
        Status::Pass => Outcome::Pass,
        Status::Warn => Outcome::Warn,
        Status::Fail => Outcome::Fail,
        Status::Inconclusive => Outcome::Inconclusive,
    }
}

/// What a supervisor is built from.
#[derive(Clone)]
struct Parts {
    cfg: AppConfig,
    store: Store,
    checks: Vec<LoadedCheck>,
    hooks: Vec<LoadedHook>,
    snapshots: Snapshots,
    journal: Journal,
}

impl Parts {
    /// What a reload hands the app.
    fn renew(&mut self, cfg: AppConfig, checks: Vec<LoadedCheck>, hooks: Vec<LoadedHook>) {
        (self.cfg, self.checks, self.hooks) = (cfg, checks, hooks);
    }
}

fn lock_parts(parts: &std::sync::Mutex<Parts>) -> std::sync::MutexGuard<'_, Parts> {
    parts.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often an unsupervised app is tried again (a reload tries at once).
const UNSUPERVISED_RETRY: Duration = Duration::from_secs(30);

/// One app's monitor: runs its supervisor, and when the supervisor cannot be
/// built (its state cannot be repaired) or its task fails, marks the app
/// `error` with the reason, answers its commands with `Unsupervised`, and
/// builds it again on a reload, every `UNSUPERVISED_RETRY`, or at once after
/// a failure. Ends when the handle is dropped.
async fn supervise(
    parts: Arc<std::sync::Mutex<Parts>>,
    mut rx: mpsc::Receiver<Command>,
    first: Result<Supervisor, String>,
) {
    use futures_util::FutureExt;
    let mut next = first;
    loop {
        let sup = match next {
            Ok(sup) => sup,
            Err(reason) => match unsupervised(&parts, &mut rx, reason).await {
                Some(sup) => sup,
                None => return,
            },
        };
        let app = sup.cfg.name.clone();
        match std::panic::AssertUnwindSafe(sup.run(&mut rx))
            .catch_unwind()
            .await
        {
            Ok(()) => return,
            Err(panic) => {
                let reason = format!(
                    "its supervisor failed ({}) and was started again",
                    crate::panic_text(panic.as_ref())
                );
                tracing::error!(app = %app, "{reason}");
                let store = lock_parts(&parts).store.clone();
                let ev =
                    Event::new(&app, Actor::agent(), EventKind::AppError).reason(reason.clone());
                if let Err(e) = store.record(ev) {
                    tracing::error!(app = %app, "state store: {e}");
                }
                next = Supervisor::build(&parts);
            }
        }
    }
}

/// The app while it cannot be supervised: recorded as `error`, commands
/// refused, built again on a reload or after `UNSUPERVISED_RETRY`. `None`
/// once the handle is dropped.
async fn unsupervised(
    parts: &Arc<std::sync::Mutex<Parts>>,
    rx: &mut mpsc::Receiver<Command>,
    mut reason: String,
) -> Option<Supervisor> {
    let (app, store) = {
        let p = lock_parts(parts);
        (p.cfg.name.clone(), p.store.clone())
    };
    let mark = |reason: &str| {
        tracing::error!(app = %app, "not supervised: {reason}");
        crate::metrics::global().state(&app, AppState::Error.as_str());
        let mut rec = store
            .app(&app)
            .ok()
            .flatten()
            .unwrap_or_else(|| App::new(&app));
        rec.state = AppState::Error;
        rec.reason = Some(reason.to_string());
        let ev = Event::new(&app, Actor::agent(), EventKind::AppError)
            .reason(format!("not supervised: {reason}"));
        if let Err(e) = store.put_app(rec).and_then(|()| store.record(ev).map(drop)) {
            tracing::error!(app = %app, "state store: {e}");
        }
    };
    mark(&reason);
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => return None,
                Some(Command::Reload { cfg, checks, hooks, reply }) => {
                    lock_parts(parts).renew(*cfg, checks, hooks);
                    let _ = reply.send(Ok(()));
                }
                Some(cmd) => {
                    refuse(cmd, CommandError::Unsupervised { app: app.clone(), reason: reason.clone() });
                    continue;
                }
            },
            _ = tokio::time::sleep(UNSUPERVISED_RETRY) => {}
        }
        match Supervisor::build(parts) {
            Ok(sup) => {
                tracing::info!(app = %app, "supervised again");
                let ev = Event::new(&app, Actor::agent(), EventKind::AppError)
                    .reason("supervised again: its state could be repaired");
                if let Err(e) = store.record(ev) {
                    tracing::error!(app = %app, "state store: {e}");
                }
                return Some(sup);
            }
            Err(again) if again != reason => {
                reason = again;
                mark(&reason);
            }
            Err(_) => {}
        }
    }
}

/// Answers `cmd` with `err`.
fn refuse(cmd: Command, err: CommandError) {
    match cmd {
        Command::Deploy { reply, .. } | Command::DeployStaged { reply, .. } => {
            drop(reply.send(Err(err)))
        }
        Command::Rollback { reply, .. } | Command::Activate { reply, .. } => {
            drop(reply.send(Err(err)))
        }
        Command::Pause { reply, .. } | Command::Reload { reply, .. } => drop(reply.send(Err(err))),
        Command::Promote { reply, .. } | Command::Stage { reply, .. } => drop(reply.send(Err(err))),
        Command::CheckNow { reply } => drop(reply.send(Err(err))),
    }
}

/// What `lifecycle::recover` is told about the app's directory.
struct DiskFacts<'a> {
    known: Known<'a>,
    current: Option<String>,
}

impl crate::lifecycle::Disk for DiskFacts<'_> {
    fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    fn has_release(&self, version: &str) -> bool {
        self.known.on_disk(version)
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

async fn sleep_until_opt(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
