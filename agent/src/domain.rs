//! The lifecycle's vocabulary: app and release states, event kinds, check
//! outcomes and severities, actors and the audit event, each name defined
//! once (`named!`) and used alike by the store, the wire and the tables; and
//! what the agent knows of an app and its releases (`App`, `Release`,
//! `CheckStatus`), which the store keeps in rows of its own.
//!
//! Owns no behaviour: plain data with its names. Must never depend on the
//! store, the protocol or the supervisor (they all depend on it).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A name that is not one of an enum's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}` (expected one of: {expected})")]
pub struct UnknownName {
    /// Which enum.
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// The names it knows.
    pub expected: String,
}

/// An enum whose variants each have one kebab-case name: its serde name,
/// `as_str`, `Display` and `FromStr`.
macro_rules! named {
    ($(#[$m:meta])* $what:literal pub enum $name:ident {
        $($(#[$vm:meta])* $variant:ident = $text:literal,)*
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The name used on the wire, in the store and in tables.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| UnknownName {
                    what: $what,
                    name: s.to_string(),
                    expected: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        }
    };
}

pub(crate) use named;

named! {
    /// What an app is doing, as shown by `status`.
    "app state" pub enum AppState {
        /// No release has been activated yet.
        Empty = "empty",
        /// A release is being staged, activated or restarted.
        Deploying = "deploying",
        /// A new release is being watched during its bake window.
        Baking = "baking",
        /// The active release passed its bake (or was restored after a rollback).
        Healthy = "healthy",
        /// Swapping back to the previous release.
        RollingBack = "rolling-back",
        /// The agent stopped acting and waits for an operator.
        Degraded = "degraded",
        /// The bake ended without enough conclusive check runs: no automatic
        /// action until an operator promotes or rolls back the release.
        Held = "held",
        /// The app is not supervised: its state could not be repaired (at
        /// start-up or reload) or its supervisor failed; the reason says why.
        Error = "error",
    }
}

named! {
    /// Where a release is in its life.
    "release state" pub enum ReleaseState {
        /// Unpacked and complete, never activated.
        Staged = "staged",
        /// Activated and under watch (baking), not yet proven.
        Active = "active",
        /// Passed its bake at least once: a rollback target.
        Good = "good",
        /// Rolled back or refused: never re-activated automatically.
        Failed = "failed",
    }
}

named! {
    /// The outcome of one check run.
    "outcome" pub enum Outcome {
        /// The check passed.
        Pass = "pass",
        /// The check passed with a warning (counts as healthy).
        Warn = "warn",
        /// The check failed.
        Fail = "fail",
        /// The plugin could not decide (trap, timeout, bad config): counts as
        /// a failure unless `on_error = "ignore"`.
        Error = "error",
        /// The check could not tell (what it reads was throttled, down or
        /// refused its credentials): counts neither way.
        Inconclusive = "inconclusive",
    }
}

named! {
    /// What an unhealthy check does.
    "severity" pub enum Severity {
        /// Rolls back (during the bake, or always with `auto_rollback = "always"`).
        Critical = "critical",
        /// Only records and alerts.
        Warning = "warning",
    }
}

named! {
    /// What happened.
    "event kind" pub enum EventKind {
        /// The agent started (and reconciled with the disk).
        AgentStarted = "agent-started",
        /// A release was unpacked into `releases/`.
        Staged = "staged",
        /// A deploy was refused or failed before the bake.
        DeployFailed = "deploy-failed",
        /// `current` was swapped to a release.
        Activated = "activated",
        /// The restart command ran.
        Restarted = "restarted",
        /// The restart command failed or timed out.
        RestartFailed = "restart-failed",
        /// A check turned unhealthy (reached its failure rule).
        CheckFailed = "check-failed",
        /// A release passed its bake.
        MarkedGood = "marked-good",
        /// The bake window ended without a verdict and goes on (up to
        /// `max_bake`).
        BakeExtended = "bake-extended",
        /// The bake ended without a verdict: the app is held.
        Held = "held",
        /// An operator marked a held or baking release good.
        Promoted = "promoted",
        /// A release was rolled back.
        RolledBack = "rolled-back",
        /// The agent stopped acting on an app.
        Degraded = "degraded",
        /// The store was corrected to match the disk.
        Reconciled = "reconciled",
        /// A rollback hook ran successfully.
        HookRan = "hook-ran",
        /// A rollback hook failed (for pre-activate: vetoed the deploy).
        HookFailed = "hook-failed",
        /// Automatic actions were frozen.
        Paused = "paused",
        /// Automatic actions were resumed.
        Resumed = "resumed",
        /// State files were copied before an activation.
        SnapshotTaken = "snapshot-taken",
        /// State files were restored on a rollback.
        SnapshotRestored = "snapshot-restored",
        /// Taking or restoring a snapshot failed.
        SnapshotFailed = "snapshot-failed",
        /// Old releases (and their snapshots) were removed.
        Pruned = "pruned",
        /// The config was reloaded.
        Reloaded = "reloaded",
        /// The app is not supervised (see `AppState::Error`), or is again.
        AppError = "app-error",
        /// A fleet rollout of the app was started from this host.
        FleetRollout = "fleet-rollout",
        /// A fleet rollout was paused from this host.
        FleetPaused = "fleet-paused",
        /// A fleet rollout was resumed from this host.
        FleetResumed = "fleet-resumed",
        /// A manual gate of a fleet rollout was passed from this host.
        FleetPromoted = "fleet-promoted",
        /// A fleet rollout was aborted from this host.
        FleetAborted = "fleet-aborted",
        /// The fleet was halted from this host.
        FleetHalted = "fleet-halted",
        /// The fleet's halt was lifted from this host.
        FleetUnhalted = "fleet-unhalted",
    }
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The peer's uid, absent for the agent itself.
    pub uid: Option<u32>,
    /// The user name (or the uid as text), or `agent`.
    pub name: String,
}

impl Actor {
    /// The agent acting on its own.
    pub fn agent() -> Self {
        Actor {
            uid: None,
            name: "agent".into(),
        }
    }
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic id (assigned by the store).
    pub id: u64,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The app.
    pub app: String,
    /// Who.
    pub actor: Actor,
    /// What.
    pub kind: EventKind,
    /// The release concerned.
    pub version: Option<String>,
    /// For swaps: the version before.
    pub from: Option<String>,
    /// For swaps: the version after.
    pub to: Option<String>,
    /// Why, in words.
    pub reason: Option<String>,
    /// The check concerned, if any.
    pub check: Option<String>,
    /// The hook concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
}

impl Event {
    /// A new event for `app`, stamped now; fill the optional fields with the builders.
    pub fn new(app: &str, actor: Actor, kind: EventKind) -> Self {
        Event {
            id: 0,
            at_ms: now_ms(),
            app: app.to_string(),
            actor,
            kind,
            version: None,
            from: None,
            to: None,
            reason: None,
            check: None,
            hook: None,
        }
    }

    /// Sets the release concerned.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }

    /// Sets the swap's endpoints.
    pub fn swap(mut self, from: Option<String>, to: impl Into<String>) -> Self {
        self.from = from;
        self.to = Some(to.into());
        self
    }

    /// Sets the reason.
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = Some(r.into());
        self
    }

    /// Sets the check concerned.
    pub fn check(mut self, c: impl Into<String>) -> Self {
        self.check = Some(c.into());
        self
    }

    /// Sets the hook concerned.
    pub fn hook(mut self, h: impl Into<String>) -> Self {
        self.hook = Some(h.into());
        self
    }
}

/// The last result of one check, kept for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckStatus {
    /// `pass`, `warn`, `fail` or `error`.
    pub outcome: Outcome,
    /// The plugin's summary (or the error).
    pub summary: String,
    /// When it ran.
    pub at_ms: u64,
    /// How long the call took.
    pub duration_ms: u64,
    /// Failures (fail or error) in a row.
    pub consecutive_failures: u32,
    /// Runs since the release was activated.
    pub runs: u64,
    /// HTTP retries (after 429/503) in the last run.
    pub http_retries: u32,
    /// Metrics reported by the plugin.
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// What the agent knows of one app, kept durably between runs.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// The app's name.
    pub name: String,
    /// What the app is doing.
    pub state: AppState,
    /// The version `current` points at.
    pub active: Option<String>,
    /// The newest release that passed its bake.
    pub last_good: Option<String>,
    /// Why the app is in its state (e.g. the rollback reason).
    pub reason: Option<String>,
    /// When the bake of the active release ends (while baking).
    pub bake_until_ms: Option<u64>,
    /// Last result per check name.
    pub checks: std::collections::BTreeMap<String, CheckStatus>,
    /// Automatic actions are frozen (`rollbackctl pause`).
    pub paused: bool,
    /// The active release was restored by an automatic rollback: if it
    /// fails too, the agent degrades instead of swapping again.
    pub restored: bool,
    /// Last change (set by the store when it writes).
    pub updated_at_ms: u64,
}

impl App {
    /// A fresh app never seen before.
    pub fn new(name: &str) -> Self {
        App {
            name: name.to_string(),
            state: AppState::Empty,
            active: None,
            last_good: None,
            reason: None,
            bake_until_ms: None,
            checks: Default::default(),
            paused: false,
            restored: false,
            updated_at_ms: now_ms(),
        }
    }
}

/// What the agent knows of one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The app it belongs to.
    pub app: String,
    /// Its version.
    pub version: String,
    /// Where it is in its life.
    pub state: ReleaseState,
    /// Where it was staged from.
    pub source: Option<String>,
    /// When it was staged (or first seen on disk).
    pub created_at_ms: u64,
    /// When it was last activated.
    pub activated_at_ms: Option<u64>,
    /// When it became good or failed.
    pub decided_at_ms: Option<u64>,
    /// Why it failed.
    pub reason: Option<String>,
    /// The source commit, from `deploy --commit` or `release.toml`.
    pub commit: Option<String>,
    /// A tag, from `release.toml`.
    pub tag: Option<String>,
    /// What changed, from `deploy --message` or `release.toml`'s `summary`.
    pub message: Option<String>,
    /// The content digest (`sha256:<hex>` over paths, modes and contents),
    /// taken when it was staged.
    pub digest: Option<String>,
}

impl Release {
    /// A release in `state` with only its name set, created now.
    pub fn new(app: &str, version: &str, state: ReleaseState) -> Self {
        Release {
            app: app.to_string(),
            version: version.to_string(),
            state,
            source: None,
            created_at_ms: now_ms(),
            activated_at_ms: None,
            decided_at_ms: None,
            reason: None,
            commit: None,
            tag: None,
            message: None,
            digest: None,
        }
    }
}

impl AppState {
    /// A state an operation passes through (never one it ends in).
    pub fn is_transient(self) -> bool {
        matches!(self, AppState::Deploying | AppState::RollingBack)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip<T>(all: &[T])
    where
        T: Copy
            + std::fmt::Display
            + std::str::FromStr
            + Serialize
            + serde::de::DeserializeOwned
            + PartialEq
            + std::fmt::Debug,
        T::Err: std::fmt::Debug,
    {
        for v in all {
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{v}\""), "serde and as_str agree");
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *v);
            assert_eq!(v.to_string().parse::<T>().unwrap(), *v);
        }
    }

    #[test]
    fn each_name_is_the_same_everywhere() {
        round_trip(AppState::ALL);
        round_trip(ReleaseState::ALL);
        round_trip(Outcome::ALL);
        round_trip(Severity::ALL);
        round_trip(EventKind::ALL);
        let e = "rolled-backk".parse::<EventKind>().unwrap_err();
        assert!(e.to_string().contains("rolled-back"), "{e}");
    }
}
