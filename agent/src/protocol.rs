//! The control protocol: Varlink framing, method names, parameter and error types.
//!
//! Owns what travels over the control socket: one JSON object per message,
//! terminated by a NUL byte; calls `{"method": "io.rollback.Agent.X",
//! "parameters": {...}}`; replies `{"parameters": {...}}` or
//! `{"error": "io.rollback.Agent.Y", "parameters": {"message": ...}}`. It is
//! shared by the server (`control`) and the client (`ctl`).
//!
//! Must never perform actions or read state: types and framing only.

use std::collections::BTreeMap;

pub use crate::domain::{AppState, Event, Outcome, ReleaseState, Severity};
pub use crate::live::LiveEvent;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// The Varlink interface name.
pub const INTERFACE: &str = "io.rollback.Agent";
/// Largest message the agent accepts, in bytes.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Largest reply a client reads, in bytes: far above what the agent sends
/// (a `History` of 10,000 events, an incident of a long history).
pub const MAX_REPLY: usize = 256 * 1024 * 1024;

/// Bytes that messages being read may hold in memory at once, shared by
/// every connection, so that many slow clients cannot exhaust memory.
#[derive(Debug)]
pub struct Budget {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl Budget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Budget {
        Budget {
            used: std::sync::atomic::AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `n` bytes if they are left.
    fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// What one `read_message` holds of a `Budget`; given back on drop.
struct Held<'a> {
    budget: Option<&'a Budget>,
    bytes: usize,
}

impl Held<'_> {
    fn add(&mut self, n: usize) -> std::io::Result<()> {
        if let Some(b) = self.budget {
            if !b.take(n) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::OutOfMemory,
                    "the agent is holding too many incomplete messages; try again",
                ));
            }
        }
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.budget {
            b.give(self.bytes);
        }
    }
}

/// The interface description served by `org.varlink.service.GetInterfaceDescription`.
pub const INTERFACE_DESCRIPTION: &str = include_str!("../../docs/io.rollback.Agent.varlink");

/// The standard Varlink service interface.
pub const SERVICE_INTERFACE: &str = "org.varlink.service";

/// Fully qualified method names.
pub mod method {
    /// Apps and their state.
    pub const STATUS: &str = "io.rollback.Agent.Status";
    /// Releases of one app.
    pub const RELEASES: &str = "io.rollback.Agent.Releases";
    /// Stage, activate and bake a release.
    pub const DEPLOY: &str = "io.rollback.Agent.Deploy";
    /// Stage a release without activating it.
    pub const STAGE: &str = "io.rollback.Agent.Stage";
    /// Swap back to a good release.
    pub const ROLLBACK: &str = "io.rollback.Agent.Rollback";
    /// The audit log of one app.
    pub const HISTORY: &str = "io.rollback.Agent.History";
    /// The loaded plugins and their grants.
    pub const PLUGINS: &str = "io.rollback.Agent.Plugins";
    /// Operator switch to an existing release, skipping analysis.
    pub const ACTIVATE: &str = "io.rollback.Agent.Activate";
    /// Mark a held (or baking) release good.
    pub const PROMOTE: &str = "io.rollback.Agent.Promote";
    /// Freeze automatic actions.
    pub const PAUSE: &str = "io.rollback.Agent.Pause";
    /// Resume automatic actions.
    pub const RESUME: &str = "io.rollback.Agent.Resume";
    /// Run the checks now.
    pub const CHECK: &str = "io.rollback.Agent.Check";
    /// Streams live events (needs `more`).
    pub const WATCH: &str = "io.rollback.Agent.Watch";
    /// The fleet: rollouts, hosts, halt.
    pub const FLEET_STATUS: &str = "io.rollback.Agent.FleetStatus";
    /// The fleet's hosts.
    pub const FLEET_HOSTS: &str = "io.rollback.Agent.FleetHosts";
    /// Start a fleet rollout.
    pub const FLEET_ROLLOUT: &str = "io.rollback.Agent.FleetRollout";
    /// Pause a fleet rollout.
    pub const FLEET_PAUSE: &str = "io.rollback.Agent.FleetPause";
    /// Resume a paused fleet rollout.
    pub const FLEET_RESUME: &str = "io.rollback.Agent.FleetResume";
    /// Pass a fleet rollout's manual gate.
    pub const FLEET_PROMOTE: &str = "io.rollback.Agent.FleetPromote";
    /// Abort a fleet rollout.
    pub const FLEET_ABORT: &str = "io.rollback.Agent.FleetAbort";
    /// Stop every new start in the fleet.
    pub const FLEET_HALT: &str = "io.rollback.Agent.FleetHalt";
    /// Lift the fleet's halt.
    pub const FLEET_UNHALT: &str = "io.rollback.Agent.FleetUnhalt";
    /// Standard Varlink: who serves this socket.
    pub const GET_INFO: &str = "org.varlink.service.GetInfo";
    /// Standard Varlink: an interface's description.
    pub const GET_INTERFACE_DESCRIPTION: &str = "org.varlink.service.GetInterfaceDescription";
}

/// Fully qualified error names.
pub mod error {
    /// The app is not in the config.
    pub const NO_SUCH_APP: &str = "io.rollback.Agent.NoSuchApp";
    /// The app is busy with another change.
    pub const BUSY: &str = "io.rollback.Agent.Busy";
    /// The version already exists.
    pub const RELEASE_EXISTS: &str = "io.rollback.Agent.ReleaseExists";
    /// The release does not exist.
    pub const NO_SUCH_RELEASE: &str = "io.rollback.Agent.NoSuchRelease";
    /// A pre-activate hook vetoed the deploy.
    pub const VETOED: &str = "io.rollback.Agent.Vetoed";
    /// The caller may not do this (socket peer credentials).
    pub const PERMISSION_DENIED: &str = "io.rollback.Agent.PermissionDenied";
    /// The app has no active release.
    pub const NO_ACTIVE_RELEASE: &str = "io.rollback.Agent.NoActiveRelease";
    /// Nothing to roll back to.
    pub const NO_ROLLBACK_TARGET: &str = "io.rollback.Agent.NoRollbackTarget";
    /// Staging, activation or restart failed.
    pub const DEPLOY_FAILED: &str = "io.rollback.Agent.DeployFailed";
    /// The agent failed internally (store, disk).
    pub const INTERNAL: &str = "io.rollback.Agent.InternalError";
    /// The agent is shutting down.
    pub const SHUTTING_DOWN: &str = "io.rollback.Agent.ShuttingDown";
    /// The app is not supervised (its state could not be repaired).
    pub const UNSUPERVISED: &str = "io.rollback.Agent.Unsupervised";
    /// Only a held or baking release can be promoted.
    pub const NOT_PROMOTABLE: &str = "io.rollback.Agent.NotPromotable";
    /// The agent serves as many connections as it will.
    pub const TOO_MANY_CONNECTIONS: &str = "io.rollback.Agent.TooManyConnections";
    /// The agent has no `[fleet]`.
    pub const FLEET_NOT_CONFIGURED: &str = "io.rollback.Agent.FleetNotConfigured";
    /// etcd cannot be reached.
    pub const FLEET_UNAVAILABLE: &str = "io.rollback.Agent.FleetUnavailable";
    /// The app has no fleet rollout.
    pub const NO_SUCH_ROLLOUT: &str = "io.rollback.Agent.NoSuchRollout";
    /// A fleet rollout of the app is in progress.
    pub const ROLLOUT_IN_PROGRESS: &str = "io.rollback.Agent.RolloutInProgress";
    /// The fleet call does not fit the rollout's state.
    pub const FLEET_REFUSED: &str = "io.rollback.Agent.FleetRefused";
    /// Standard Varlink: unknown method.
    pub const METHOD_NOT_FOUND: &str = "org.varlink.service.MethodNotFound";
    /// Standard Varlink: bad or missing parameter.
    pub const INVALID_PARAMETER: &str = "org.varlink.service.InvalidParameter";
    /// Standard Varlink: unknown interface.
    pub const INTERFACE_NOT_FOUND: &str = "org.varlink.service.InterfaceNotFound";
    /// Standard Varlink: the method streams and the call did not set `more`.
    pub const EXPECTED_MORE: &str = "org.varlink.service.ExpectedMore";
}

/// A call as sent by a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// `interface.Method`.
    pub method: String,
    /// The method's parameters (an object).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub parameters: serde_json::Value,
    /// The client wants no reply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oneway: bool,
    /// The client accepts several replies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// A reply as sent by the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// Set for error replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The results (or the error's parameters).
    #[serde(default)]
    pub parameters: serde_json::Value,
    /// More replies to this call follow (calls made with `more`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continues: bool,
}

/// An error reply: its Varlink name and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    /// E.g. `io.rollback.Agent.NoSuchApp`.
    pub name: String,
    /// What went wrong, for humans.
    pub message: String,
    /// For `org.varlink.service.InvalidParameter`: which parameter.
    pub parameter: Option<String>,
}

impl RemoteError {
    /// An error with a name and a message.
    pub fn new(name: &str, message: impl Into<String>) -> Self {
        RemoteError {
            name: name.to_string(),
            message: message.into(),
            parameter: None,
        }
    }

    /// The standard Varlink error for a bad or missing parameter.
    pub fn invalid_parameter(parameter: impl Into<String>, message: impl Into<String>) -> Self {
        RemoteError {
            name: error::INVALID_PARAMETER.to_string(),
            message: message.into(),
            parameter: Some(parameter.into()),
        }
    }

    /// The Varlink reply for this error.
    pub fn to_reply(&self) -> Reply {
        Reply {
            error: Some(self.name.clone()),
            parameters: match &self.parameter {
                Some(p) => serde_json::json!({ "parameter": p, "message": self.message }),
                None => serde_json::json!({ "message": self.message }),
            },
            continues: false,
        }
    }

    /// Reads an error reply back.
    pub fn from_reply(name: String, parameters: &serde_json::Value) -> Self {
        let message = parameters
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{name} {parameters}"));
        let parameter = parameters
            .get("parameter")
            .and_then(|p| p.as_str())
            .map(str::to_string);
        RemoteError {
            name,
            message,
            parameter,
        }
    }
}

/// Decodes a call's parameters into `T`, naming the bad parameter on failure.
pub fn parameters<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, RemoteError> {
    let value = if value.is_null() {
        serde_json::json!({})
    } else {
        value.clone()
    };
    serde_json::from_value(value).map_err(|e| {
        let text = e.to_string();
        // serde names the field between backticks ("missing field `source`").
        let parameter = text.split('`').nth(1).unwrap_or("parameters").to_string();
        RemoteError::invalid_parameter(parameter, format!("invalid parameters: {text}"))
    })
}

/// Reads one NUL-terminated message of at most `limit` bytes, holding what
/// it buffers against `budget` (if any); `Ok(None)` at a clean end of stream.
pub async fn read_message<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
    budget: Option<&Budget>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut held = Held { budget, bytes: 0 };
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "message not terminated by NUL",
                ))
            };
        }
        let (take, done) = match chunk.iter().position(|b| *b == 0) {
            Some(pos) => (pos, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("message larger than {limit} bytes"),
            ));
        }
        held.add(take)?;
        buf.extend_from_slice(&chunk[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(Some(buf));
        }
    }
}

/// Writes one message followed by its NUL terminator.
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    bytes.push(0);
    writer.write_all(&bytes).await?;
    writer.flush().await
}

/// `Status` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// One app, or all.
    #[serde(default)]
    pub app: Option<String>,
}

/// One app in a `Status` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    /// The app.
    pub app: String,
    /// `empty`, `deploying`, `baking`, `healthy`, `rolling-back`, `degraded`.
    pub state: AppState,
    /// The version `current` points at.
    pub active: Option<String>,
    /// The newest release that passed its bake.
    pub last_good: Option<String>,
    /// Why the app is in its state.
    pub reason: Option<String>,
    /// When the bake ends (while baking), ms since the epoch.
    pub bake_until_ms: Option<u64>,
    /// Last result per check.
    pub checks: BTreeMap<String, CheckView>,
    /// Automatic actions are frozen.
    #[serde(default)]
    pub paused: bool,
    /// Why the state store cannot be written, while that lasts: this
    /// status may be stale and events wait in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_unwritable: Option<String>,
}

/// The last result of one check in a `Status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckView {
    /// `pass`, `warn`, `fail` or `error`.
    pub outcome: Outcome,
    /// The plugin's summary (or the error).
    pub summary: String,
    /// When it ran, ms since the epoch.
    pub at_ms: u64,
    /// How long the call took.
    pub duration_ms: u64,
    /// Failures (fail or error) in a row.
    pub consecutive_failures: u32,
    /// Runs since the release was activated.
    #[serde(default)]
    pub runs: u64,
    /// HTTP retries (after 429/503) in the last run.
    #[serde(default)]
    pub http_retries: u32,
    /// Metrics reported by the plugin.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// `Status` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    /// The apps, by name.
    pub apps: Vec<AppStatus>,
}

/// `Releases` and `History` take an app; `History` a limit too.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppParams {
    /// The app.
    pub app: String,
    /// At most this many entries (History only).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One release in a `Releases` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseView {
    /// Its version.
    pub version: String,
    /// `staged`, `active`, `good` or `failed`.
    pub state: ReleaseState,
    /// Whether `current` points at it.
    pub current: bool,
    /// Where it came from.
    pub source: Option<String>,
    /// When it was staged, ms since the epoch.
    pub created_at_ms: u64,
    /// The same as RFC 3339 text.
    pub created_at: String,
    /// When it was last activated.
    pub activated_at_ms: Option<u64>,
    /// The same as RFC 3339 text.
    pub activated_at: Option<String>,
    /// When it became good or failed.
    pub decided_at_ms: Option<u64>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Its source commit.
    #[serde(default)]
    pub commit: Option<String>,
    /// Its tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// What changed.
    #[serde(default)]
    pub message: Option<String>,
    /// The content digest, `sha256:<hex>` (none for a release found on
    /// disk rather than staged).
    #[serde(default)]
    pub digest: Option<String>,
}

/// `Releases` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleasesReply {
    /// The app.
    pub app: String,
    /// Its releases, oldest first.
    pub releases: Vec<ReleaseView>,
}

/// `Deploy` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployParams {
    /// The app.
    pub app: String,
    /// Absolute path of a directory or archive on the agent's host.
    pub source: String,
    /// The source is the descriptor passed with this call (`SCM_RIGHTS`),
    /// opened by the caller with its own rights; `source` is its path.
    /// Required from callers other than root and the agent's user.
    #[serde(default)]
    pub source_fd: bool,
    /// The new version.
    pub version: String,
    /// Reply only once the bake is decided.
    #[serde(default)]
    pub wait: bool,
    /// The source commit of the release.
    #[serde(default)]
    pub commit: Option<String>,
    /// What changed.
    #[serde(default)]
    pub message: Option<String>,
    /// The content digest the staged release must have (`sha256:<hex>`).
    #[serde(default)]
    pub digest: Option<String>,
}

/// `Stage` parameters: those of `Deploy` without `wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageParams {
    /// The app.
    pub app: String,
    /// Absolute path of a directory or archive on the agent's host.
    pub source: String,
    /// The source is the descriptor passed with this call, as for `Deploy`.
    #[serde(default)]
    pub source_fd: bool,
    /// The new version.
    pub version: String,
    /// The source commit of the release.
    #[serde(default)]
    pub commit: Option<String>,
    /// What changed.
    #[serde(default)]
    pub message: Option<String>,
    /// The content digest the staged release must have (`sha256:<hex>`).
    #[serde(default)]
    pub digest: Option<String>,
}

/// A method without parameters (any given are refused).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `FleetStatus` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetStatusParams {
    /// Only this app's rollout.
    #[serde(default)]
    pub app: Option<String>,
}

/// `FleetRollout` parameters (the flags of `fleet rollout`, as written).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetRolloutParams {
    /// The app.
    pub app: String,
    /// The version every host is to run.
    pub version: String,
    /// `1,25%,100%`, or named hosts joined by `+` for a canary.
    #[serde(default)]
    pub waves: Option<String>,
    /// A count or share of hosts that may fail (default 0).
    #[serde(default)]
    pub max_failed: Option<String>,
    /// A count or share of hosts that must stay healthy (default 0).
    #[serde(default)]
    pub min_healthy: Option<String>,
    /// How long each wave stays baked before the next (default 0s).
    #[serde(default)]
    pub bake: Option<String>,
    /// A wave not baked this long after it started aborts.
    #[serde(default)]
    pub wave_deadline: Option<String>,
    /// `auto` or `manual`, or one per wave, comma-separated (default auto).
    #[serde(default)]
    pub gate: Option<String>,
    /// `rollback` (default) or `stop`.
    #[serde(default)]
    pub on_abort: Option<String>,
    /// An archive's URL each agent fetches when it lacks the release.
    #[serde(default)]
    pub source: Option<String>,
    /// The archive's SHA-256 (hex), with `source`.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The release's content digest (`sha256:<hex>`) every host must have.
    #[serde(default)]
    pub digest: Option<String>,
}

/// `FleetPause`, `FleetResume`, `FleetPromote`, `FleetAbort` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetActParams {
    /// The app.
    pub app: String,
    /// Why, recorded with the change.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `FleetHalt` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetHaltParams {
    /// Why, shown by `fleet status`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `Stage` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReply {
    /// The app.
    pub app: String,
    /// The version staged.
    pub version: String,
    /// Its content digest, `sha256:<hex>`.
    #[serde(default)]
    pub digest: Option<String>,
}

/// `Deploy` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployReply {
    /// The app.
    pub app: String,
    /// The version deployed.
    pub version: String,
    /// `baking` (no wait), `good`, `rolled-back` or `degraded`.
    pub outcome: String,
    /// The release active after a rollback.
    #[serde(default)]
    pub active: Option<String>,
    /// Why it was rolled back or degraded.
    #[serde(default)]
    pub reason: Option<String>,
    /// In the progress replies of a `more` call (outcome `running`): what
    /// just happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<LiveEvent>,
}

/// `Watch` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchParams {
    /// One app, or all.
    #[serde(default)]
    pub app: Option<String>,
}

/// One `Watch` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchReply {
    /// What happened.
    pub event: LiveEvent,
}

/// `Rollback` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackParams {
    /// The app.
    pub app: String,
    /// The release to go back to (default: the last good one).
    #[serde(default)]
    pub to: Option<String>,
    /// Why, recorded in the history.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `Rollback` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackReply {
    /// The app.
    pub app: String,
    /// The release that was active.
    pub from: Option<String>,
    /// The release now active.
    pub to: String,
}

/// One event in a `History` reply: the stored event plus its time as text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// `at_ms` as RFC 3339 (UTC, seconds).
    pub time: String,
}

/// `History` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryReply {
    /// The app.
    pub app: String,
    /// Events, newest first.
    pub events: Vec<EventView>,
}

/// Milliseconds since the epoch as RFC 3339 text (UTC, seconds).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_on_nul_and_reject_garbage() {
        let data = b"{\"a\":1}\0{\"b\":2}\0{\"c\"".to_vec();
        let mut r = tokio::io::BufReader::with_capacity(3, &data[..]);
        let next = read_message(&mut r, MAX_MESSAGE, None).await;
        assert_eq!(next.unwrap().unwrap(), b"{\"a\":1}");
        let next = read_message(&mut r, MAX_MESSAGE, None).await;
        assert_eq!(next.unwrap().unwrap(), b"{\"b\":2}");
        let next = read_message(&mut r, MAX_MESSAGE, None).await;
        assert!(next.is_err(), "unterminated message");
        let mut empty = tokio::io::BufReader::new(&b""[..]);
        assert!(read_message(&mut empty, MAX_MESSAGE, None)
            .await
            .unwrap()
            .is_none());
        let big = vec![b'x'; MAX_MESSAGE + 10];
        let mut r = tokio::io::BufReader::new(&big[..]);
        assert!(
            read_message(&mut r, MAX_MESSAGE, None).await.is_err(),
            "oversized message"
        );
    }

    #[tokio::test]
    async fn messages_hold_a_shared_budget_while_they_are_read() {
        let budget = Budget::new(10);
        let data = b"12345678\0abcdefghijklm\0".to_vec();
        let mut r = tokio::io::BufReader::with_capacity(4, &data[..]);
        let first = read_message(&mut r, MAX_MESSAGE, Some(&budget))
            .await
            .unwrap();
        assert_eq!(first.unwrap(), b"12345678");
        assert_eq!(budget.used(), 0, "given back once read");
        let err = read_message(&mut r, MAX_MESSAGE, Some(&budget))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::OutOfMemory);
        assert_eq!(budget.used(), 0, "given back on failure too");
    }

    #[test]
    fn parameters_name_what_is_wrong() {
        let e = parameters::<DeployParams>(&serde_json::json!({"app": "shop"})).unwrap_err();
        assert_eq!(e.name, error::INVALID_PARAMETER);
        assert!(e.message.contains("source"), "{}", e.message);
        let e = parameters::<StatusParams>(&serde_json::json!({"bogus": 1})).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        let p: StatusParams = parameters(&serde_json::Value::Null).unwrap();
        assert!(p.app.is_none());
    }
}

/// One loaded plugin entry in a `Plugins` reply. Secrets appear by name only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginView {
    /// The app.
    pub app: String,
    /// `check` or `hook`.
    pub kind: String,
    /// The check's or hook's name.
    pub name: String,
    /// The component file.
    pub plugin: String,
    /// SHA-256 of the component.
    pub sha256: String,
    /// Whether the config pins that digest.
    pub pinned: bool,
    /// Whether it was loaded from the compiled-component cache.
    pub cached: bool,
    /// The contract it was built against: `rollback:plugin@0.2.0` or
    /// `rollback:plugin@0.1.0`.
    #[serde(default)]
    pub contract: String,
    /// Hosts it may reach over HTTP.
    pub allow_hosts: Vec<String>,
    /// Its plain config.
    pub config: BTreeMap<String, String>,
    /// The names of the secrets it was given.
    pub secrets: Vec<String>,
    /// Deadline of one call, ms.
    pub timeout_ms: u64,
    /// Memory cap of one call, bytes.
    pub memory_limit: u64,
    /// Cap on one HTTP response body, bytes.
    pub max_response_bytes: u64,
    /// The shared kv store it uses, if not its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_scope: Option<String>,
    /// For hooks: the events it is called for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
}

/// `Plugins` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginsReply {
    /// Every check and hook of every app.
    pub plugins: Vec<PluginView>,
}

/// `Activate` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateParams {
    /// The app.
    pub app: String,
    /// The release to switch to.
    pub version: String,
}

/// `Pause`, `Resume` and `Check` take an app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppOnly {
    /// The app.
    pub app: String,
}

/// `Promote` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteParams {
    /// The app.
    pub app: String,
    /// Why, in the operator's words (recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `Promote` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromoteReply {
    /// The app.
    pub app: String,
    /// The release marked good.
    pub version: String,
}

/// `Pause` and `Resume` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseReply {
    /// The app.
    pub app: String,
    /// Whether automatic actions are frozen now.
    pub paused: bool,
}

/// One check's result in a `Check` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckRunView {
    /// The check.
    pub name: String,
    /// `critical` or `warning`.
    pub severity: Severity,
    /// `pass`, `warn`, `fail` or `error`.
    pub outcome: Outcome,
    /// What it said.
    pub summary: String,
    /// Its metrics.
    pub metrics: BTreeMap<String, f64>,
    /// How long it took, ms.
    pub duration_ms: u64,
}

/// `Check` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReply {
    /// The app.
    pub app: String,
    /// The version checked.
    pub version: Option<String>,
    /// Each check's result, in config order.
    pub checks: Vec<CheckRunView>,
}
