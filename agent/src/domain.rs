//! The lifecycle's vocabulary: app and release states, event kinds, check
//! outcomes and severities, actors and the audit event, each name defined
//! once (`named!`) and used alike by the store, the wire and the tables.
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
