//! Fleet membership and rollouts through etcd.
//!
//! Owns the agent's part in a fleet (`[fleet]`): one etcd session (a lease
//! that carries the host's record and its per-app status), the host's
//! claims and local deploys of what the coordinator assigned (`member`),
//! the coordinator every member campaigns to be (`coordinator`), and the
//! operators' fleet calls (`Fleet::rollout`, `pause`, `halt`, ...), which
//! `control` forwards. Decisions are `plan`'s; key names are `keys`'.
//!
//! Local safety never waits on etcd: the supervisors check and roll back
//! without it, and a member cut off from etcd starts nothing new, keeps
//! what it saw happen in an outbox and reports it when it is back. Must
//! never act on an app except through its supervisor's handle, and never
//! write a decision outside a transaction fenced on leadership.

pub mod coordinator;
pub mod keys;
pub mod member;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::config::FleetConfig;
use crate::domain::{now_ms, Actor, Event, EventKind};
use crate::store::Store;
use crate::supervisor::AppHandle;

use keys::Keys;
use plan::{Approval, HostApp, Mark, Phase, Rollout, Spec};

/// How long one etcd request may take before the fleet call fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A fleet call that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// etcd cannot be reached (or answered with an error).
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    /// The app has no rollout.
    #[error("app `{0}` has no fleet rollout")]
    NoRollout(String),
    /// A rollout of the app is still going.
    #[error("app `{app}` has a rollout in progress ({id}, {phase}): abort it or let it finish")]
    InProgress {
        /// The app.
        app: String,
        /// The running rollout.
        id: String,
        /// Where it is.
        phase: Phase,
    },
    /// The call does not fit the rollout's state.
    #[error("{0}")]
    Refused(String),
    /// The caller may not do this (approver group, four eyes).
    #[error("{0}")]
    Denied(String),
    /// A parameter is wrong.
    #[error("{0}")]
    Invalid(String),
}

fn unavailable(e: impl std::fmt::Display) -> FleetError {
    FleetError::Unavailable(e.to_string())
}

/// The fleet-wide halt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    /// Who halted, when, why.
    pub mark: Mark,
}

/// A host's record (under its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's name in the fleet.
    pub host: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The agent's version.
    pub agent: String,
    /// When its session began.
    pub since_ms: u64,
    /// Its apps.
    pub apps: Vec<String>,
}

/// What a host did while it was cut off from etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The host.
    pub host: String,
    /// The app.
    pub app: String,
    /// When it happened.
    pub at_ms: u64,
    /// The app's status then.
    pub status: HostApp,
}

/// One host as `fleet hosts` and `fleet status` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    /// Its name.
    pub host: String,
    /// Its lease is alive.
    pub alive: bool,
    /// Its record, when alive.
    pub info: Option<HostInfo>,
    /// Its status per app.
    pub apps: BTreeMap<String, HostApp>,
}

/// One rollout as `fleet status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutView {
    /// The stored rollout.
    pub rollout: Rollout,
    /// Hosts of the rollout whose lease expired.
    pub missing: Vec<String>,
    /// The hosts of each wave.
    pub waves: Vec<Vec<String>>,
}

/// Everything `fleet status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// The fleet's name.
    pub fleet: String,
    /// This host.
    pub host: String,
    /// The coordinator, as etcd's election says.
    pub leader: Option<String>,
    /// The halt, when set.
    pub halt: Option<Halt>,
    /// Rollouts (one app's, or all).
    pub rollouts: Vec<RolloutView>,
    /// Every host, alive or named by a rollout.
    pub hosts: Vec<HostView>,
    /// Reports of hosts that were cut off.
    pub reports: Vec<Report>,
}

/// What an operator asks to start (`fleet rollout`).
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// The app.
    pub app: String,
    /// The version.
    pub version: String,
    /// `--waves`.
    pub waves: plan::Waves,
    /// `--gate`, one per wave.
    pub gates: Vec<plan::Gate>,
    /// `--max-failed`.
    pub max_failed: plan::Share,
    /// `--min-healthy`.
    pub min_healthy: plan::Share,
    /// `--bake`.
    pub bake: Duration,
    /// `--wave-deadline`.
    pub wave_deadline: Option<Duration>,
    /// `--on-abort`.
    pub on_abort: plan::OnAbort,
    /// `--source` and `--sha256`.
    pub source: Option<plan::Artifact>,
    /// `--digest`: the release's content digest every host must have.
    pub digest: Option<String>,
}

impl NewRollout {
    /// The rollout a `FleetRollout` call asks for, or the parameter that
    /// is wrong and why.
    pub fn from_params(
        p: &crate::protocol::FleetRolloutParams,
    ) -> Result<NewRollout, (&'static str, String)> {
        let waves: plan::Waves = p
            .waves
            .as_deref()
            .unwrap_or(plan::DEFAULT_WAVES)
            .parse()
            .map_err(|e: plan::BadSpec| ("waves", e.to_string()))?;
        let gates = plan::parse_gates(p.gate.as_deref().unwrap_or("auto"), waves.0.len())
            .map_err(|e| ("gate", e.to_string()))?;
        let share = |name: &'static str,
                     v: &Option<String>|
         -> Result<plan::Share, (&'static str, String)> {
            v.as_deref()
                .unwrap_or("0")
                .parse()
                .map_err(|e: plan::BadSpec| (name, e.to_string()))
        };
        let duration = |name: &'static str,
                        v: &Option<String>|
         -> Result<Option<Duration>, (&'static str, String)> {
            v.as_deref()
                .map(|t| crate::config::bounded_duration(t, crate::config::MAX_WINDOW))
                .transpose()
                .map_err(|e| (name, e))
        };
        let on_abort = p
            .on_abort
            .as_deref()
            .unwrap_or("rollback")
            .parse()
            .map_err(|e: crate::domain::UnknownName| ("on_abort", e.to_string()))?;
        let source = match (&p.source, &p.sha256) {
            (Some(url), Some(sha256)) => Some(plan::Artifact {
                url: url.clone(),
                sha256: sha256.to_ascii_lowercase(),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(("sha256", "--source needs --sha256".into())),
            (None, Some(_)) => return Err(("source", "--sha256 goes with --source".into())),
        };
        if let Some(d) = &p.digest {
            let hex = d.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err((
                    "digest",
                    format!("`{d}` is not a content digest like sha256:<64 hex digits>"),
                ));
            }
        }
        Ok(NewRollout {
            app: p.app.clone(),
            version: p.version.clone(),
            waves,
            gates,
            max_failed: share("max_failed", &p.max_failed)?,
            min_healthy: share("min_healthy", &p.min_healthy)?,
            bake: duration("bake", &p.bake)?.unwrap_or(Duration::ZERO),
            wave_deadline: duration("wave_deadline", &p.wave_deadline)?,
            on_abort,
            source,
            digest: p.digest.clone(),
        })
    }
}

/// What an operator does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing new starts until resumed.
    Pause,
    /// Undo a pause.
    Resume,
    /// Pass the manual gate before the next wave.
    Promote,
    /// Stop the rollout (and send hosts back, with `--on-abort rollback`).
    Abort,
}

impl Action {
    fn event(self) -> EventKind {
        match self {
            Action::Pause => EventKind::FleetPaused,
            Action::Resume => EventKind::FleetResumed,
            Action::Promote => EventKind::FleetPromoted,
            Action::Abort => EventKind::FleetAborted,
        }
    }
}

/// The agent's side of the fleet: its session with etcd and the calls
/// operators make through it.
pub struct Fleet {
    cfg: FleetConfig,
    keys: Keys,
    store: Store,
    apps: RwLock<BTreeMap<String, AppHandle>>,
    /// The session's client, while connected.
    client: RwLock<Option<Client>>,
}

impl Fleet {
    /// The fleet of `cfg`; `start` begins its session.
    pub fn new(cfg: FleetConfig, store: Store, apps: BTreeMap<String, AppHandle>) -> Arc<Fleet> {
        Arc::new(Fleet {
            keys: Keys::new(&cfg.name),
            cfg,
            store,
            apps: RwLock::new(apps),
            client: RwLock::new(None),
        })
    }

    /// Runs the session (and the campaign) until the task is dropped.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(member::run(self.clone()))
    }

    /// Swaps in the supervisors of a reloaded config.
    pub fn replace_apps(&self, apps: BTreeMap<String, AppHandle>) {
        *self.apps.write().unwrap_or_else(|p| p.into_inner()) = apps;
    }

    fn app_names(&self) -> Vec<String> {
        self.apps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn app(&self, name: &str) -> Option<AppHandle> {
        self.apps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// This host's name in the fleet.
    pub fn host(&self) -> &str {
        &self.cfg.host
    }

    /// The approver group and the four-eyes rule.
    pub fn approvers(&self) -> (Option<&str>, bool) {
        (self.cfg.approver_group.as_deref(), self.cfg.four_eyes)
    }

    fn set_client(&self, client: Option<Client>) {
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
    }

    /// The session's client, or a fresh connection for this call (an
    /// operator's call works while the session reconnects).
    async fn client(&self) -> Result<Client, FleetError> {
        let current = self
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match current {
            Some(c) => Ok(c),
            None => connect(&self.cfg).await,
        }
    }

    fn record(
        &self,
        app: &str,
        actor: &Actor,
        kind: EventKind,
        version: Option<&str>,
        reason: String,
    ) {
        let mut event = Event::new(app, actor.clone(), kind);
        event.version = version.map(str::to_string);
        event.reason = Some(reason);
        if let Err(e) = self.store.record(event) {
            tracing::error!(app, "cannot record a fleet event: {e}");
        }
    }

    /// `fleet status [APP]`.
    pub async fn status(&self, app: Option<&str>) -> Result<FleetView, FleetError> {
        let mut client = self.client().await?;
        let all = timed(client.get(self.keys.all(), Some(GetOptions::new().with_prefix()))).await?;
        let seen = Snapshot::read(&self.keys, all.kvs());
        let leader = match timed(client.leader(self.keys.leader())).await {
            Ok(r) => r
                .kv()
                .and_then(|kv| kv.value_str().ok())
                .map(str::to_string),
            Err(_) => None,
        };
        let rollouts: Vec<RolloutView> = seen
            .rollouts
            .values()
            .filter(|(r, _)| app.is_none_or(|a| a == r.spec.app))
            .map(|(r, _)| RolloutView {
                missing: r
                    .progress
                    .targets
                    .iter()
                    .filter(|h| !seen.hosts.contains_key(*h))
                    .cloned()
                    .collect(),
                waves: r.spec.waves.split(&r.progress.targets),
                rollout: r.clone(),
            })
            .collect();
        if let Some(a) = app {
            if rollouts.is_empty() && !seen.statuses.values().any(|s| s.contains_key(a)) {
                return Err(FleetError::NoRollout(a.to_string()));
            }
        }
        Ok(FleetView {
            fleet: self.cfg.name.clone(),
            host: self.cfg.host.clone(),
            leader,
            halt: seen.halt.clone(),
            hosts: seen.host_views(&rollouts, app),
            rollouts,
            reports: seen.reports.clone(),
        })
    }

    /// `fleet rollout APP VERSION ...`: stores a new rollout, unless one of
    /// the app is still going.
    pub async fn rollout(&self, new: NewRollout, actor: &Actor) -> Result<Rollout, FleetError> {
        if !crate::config::valid_name(&new.app) {
            return Err(FleetError::Invalid(format!(
                "`{}` is not an app name",
                new.app
            )));
        }
        crate::release::Version::parse(&new.version)
            .map_err(|e| FleetError::Invalid(e.to_string()))?;
        if let Some(source) = &new.source {
            member::check_source(&self.cfg, source).map_err(FleetError::Invalid)?;
        }
        let mut client = self.client().await?;
        let key = self.keys.rollout(&new.app);
        let now = now_ms();
        let spec = Spec {
            id: format!("{}-{now}-{:04x}", new.app, rand::random::<u16>()),
            app: new.app.clone(),
            version: new.version.clone(),
            digest: new.digest.clone(),
            source: new.source.clone(),
            waves: new.waves,
            gates: new.gates,
            max_failed: new.max_failed,
            min_healthy: new.min_healthy,
            bake_ms: new.bake.as_millis() as u64,
            wave_deadline_ms: new.wave_deadline.map(|d| d.as_millis() as u64),
            on_abort: new.on_abort,
            started_by: actor.name.clone(),
            started_ms: now,
        };
        let rollout = Rollout {
            progress: plan::Progress::new(&spec),
            spec,
            intent: plan::Intent::default(),
        };
        let existing = timed(client.get(key.clone(), None)).await?;
        let guard = match existing.kvs().first() {
            None => Compare::version(key.clone(), CompareOp::Equal, 0),
            Some(kv) => {
                let old: Rollout = decode(kv.value()).ok_or_else(|| {
                    FleetError::Refused(format!(
                        "the stored rollout of `{}` cannot be read",
                        new.app
                    ))
                })?;
                if !old.progress.phase.is_over() {
                    return Err(FleetError::InProgress {
                        app: new.app.clone(),
                        id: old.spec.id,
                        phase: old.progress.phase,
                    });
                }
                Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())
            }
        };
        // A new rollout starts from no assignments and no claims.
        let txn = Txn::new().when(vec![guard]).and_then(vec![
            TxnOp::put(key, encode(&rollout), None),
            TxnOp::delete(
                self.keys.assignments(&new.app),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
            TxnOp::delete(
                self.keys.claims(&new.app),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        ]);
        if !timed(client.txn(txn)).await?.succeeded() {
            return Err(FleetError::Refused(format!(
                "another rollout of `{}` was stored meanwhile",
                new.app
            )));
        }
        self.record(
            &new.app,
            actor,
            EventKind::FleetRollout,
            Some(&new.version),
            format!(
                "fleet rollout {} of {} (waves {})",
                rollout.spec.id, new.version, rollout.spec.waves
            ),
        );
        Ok(rollout)
    }

    /// `fleet pause|resume|promote|abort APP`: changes the operators'
    /// intent of the app's rollout (compare-and-swap on its revision).
    pub async fn act(
        &self,
        app: &str,
        action: Action,
        reason: Option<String>,
        actor: &Actor,
        approver: bool,
    ) -> Result<Rollout, FleetError> {
        let mut client = self.client().await?;
        let key = self.keys.rollout(app);
        for _ in 0..10 {
            let got = timed(client.get(key.clone(), None)).await?;
            let kv = got
                .kvs()
                .first()
                .ok_or_else(|| FleetError::NoRollout(app.to_string()))?;
            let mut r: Rollout = decode(kv.value()).ok_or_else(|| {
                FleetError::Refused(format!("the stored rollout of `{app}` cannot be read"))
            })?;
            if r.progress.phase.is_over() {
                return Err(FleetError::Refused(format!(
                    "the rollout of `{app}` is over ({})",
                    r.progress.phase
                )));
            }
            let mark = Mark {
                by: actor.name.clone(),
                at_ms: now_ms(),
                reason: reason.clone(),
            };
            match action {
                Action::Pause => {
                    if r.intent.paused.is_some() {
                        return Ok(r);
                    }
                    r.intent.paused = Some(mark);
                }
                Action::Resume => {
                    if r.intent.paused.is_none() {
                        return Err(FleetError::Refused(format!(
                            "the rollout of `{app}` is not paused"
                        )));
                    }
                    r.intent.paused = None;
                }
                Action::Abort => {
                    if r.intent.abort.is_some() {
                        return Ok(r);
                    }
                    r.intent.abort = Some(mark);
                }
                Action::Promote => {
                    if r.progress.phase != Phase::AwaitingApproval {
                        return Err(FleetError::Refused(format!(
                            "the rollout of `{app}` waits for no approval ({})",
                            r.progress.phase
                        )));
                    }
                    let (group, four_eyes) = self.approvers();
                    if !approver {
                        return Err(FleetError::Denied(format!(
                            "user {} may not pass a manual gate: approvers are the members of `{}`",
                            actor.name,
                            group.unwrap_or("admin_group")
                        )));
                    }
                    if four_eyes && actor.name == r.spec.started_by {
                        return Err(FleetError::Denied(format!(
                            "four eyes: {} started this rollout; another approver must pass its gate",
                            actor.name
                        )));
                    }
                    let wave = r.progress.wave + 1;
                    r.intent.approvals.push(Approval { wave, mark });
                }
            }
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then(vec![TxnOp::put(key.clone(), encode(&r), None)]);
            if timed(client.txn(txn)).await?.succeeded() {
                let words = match action {
                    Action::Pause => "paused",
                    Action::Resume => "resumed",
                    Action::Promote => "promoted (gate passed)",
                    Action::Abort => "aborted",
                };
                let why = reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                self.record(
                    app,
                    actor,
                    action.event(),
                    Some(&r.spec.version),
                    format!("fleet rollout {} {words}{why}", r.spec.id),
                );
                return Ok(r);
            }
            // The coordinator wrote meanwhile: read again.
        }
        Err(FleetError::Unavailable(
            "the rollout kept changing; try again".into(),
        ))
    }

    /// `fleet halt [--reason]`: no new start anywhere in the fleet.
    pub async fn halt(&self, reason: Option<String>, actor: &Actor) -> Result<Halt, FleetError> {
        let mut client = self.client().await?;
        let halt = Halt {
            mark: Mark {
                by: actor.name.clone(),
                at_ms: now_ms(),
                reason: reason.clone(),
            },
        };
        timed(client.put(self.keys.halt(), encode(&halt), None)).await?;
        for app in self.app_names() {
            let why = reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            self.record(
                &app,
                actor,
                EventKind::FleetHalted,
                None,
                format!("fleet halted{why}"),
            );
        }
        Ok(halt)
    }

    /// `fleet unhalt`.
    pub async fn unhalt(&self, actor: &Actor) -> Result<bool, FleetError> {
        let mut client = self.client().await?;
        let r = timed(client.delete(self.keys.halt(), None)).await?;
        let was = r.deleted() > 0;
        if was {
            for app in self.app_names() {
                self.record(
                    &app,
                    actor,
                    EventKind::FleetUnhalted,
                    None,
                    "fleet unhalted".into(),
                );
            }
        }
        Ok(was)
    }
}

/// Connects to etcd with the config's endpoints, credentials and TLS.
async fn connect(cfg: &FleetConfig) -> Result<Client, FleetError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        let password = password.resolve().map_err(FleetError::Unavailable)?;
        options = options.with_user(user.clone(), password);
    }
    if let Some(tls) = &cfg.tls {
        let mut t = etcd_client::TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                FleetError::Unavailable(format!("cannot read {}: {e}", ca.display()))
            })?;
            t = t.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| {
                    FleetError::Unavailable(format!("cannot read {}: {e}", p.display()))
                })
            };
            t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(t);
    }
    timed(Client::connect(cfg.etcd.clone(), Some(options))).await
}

/// An etcd call with the fleet's deadline.
async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(FleetError::Unavailable(format!(
            "no answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A stored value, or `None` when it is not what it should be (a value
/// written by something else is ignored, never trusted).
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

/// Everything under the fleet's prefix, read at one revision.
#[derive(Debug, Default)]
struct Snapshot {
    hosts: BTreeMap<String, HostInfo>,
    /// Every host ever seen (alive or not).
    known: BTreeMap<String, HostInfo>,
    /// Per host, per app.
    statuses: BTreeMap<String, BTreeMap<String, HostApp>>,
    /// Per app: the rollout and its key's mod revision.
    rollouts: BTreeMap<String, (Rollout, i64)>,
    halt: Option<Halt>,
    reports: Vec<Report>,
}

impl Snapshot {
    fn read(keys: &Keys, kvs: &[etcd_client::KeyValue]) -> Snapshot {
        let mut s = Snapshot::default();
        let (hosts, statuses, rollouts, reports) = (
            keys.hosts(),
            keys.statuses(),
            keys.rollouts(),
            keys.reports(),
        );
        let known = keys.known();
        let halt = keys.halt();
        for kv in kvs {
            let Ok(key) = kv.key_str() else { continue };
            if let Some(host) = Keys::rest(key, &hosts) {
                if let Some(info) = decode(kv.value()) {
                    s.hosts.insert(host.to_string(), info);
                }
            } else if let Some(host) = Keys::rest(key, &known) {
                if let Some(info) = decode(kv.value()) {
                    s.known.insert(host.to_string(), info);
                }
            } else if let Some(rest) = Keys::rest(key, &statuses) {
                if let (Some((host, app)), Some(st)) = (rest.split_once('/'), decode(kv.value())) {
                    s.statuses
                        .entry(host.to_string())
                        .or_default()
                        .insert(app.to_string(), st);
                }
            } else if let Some(app) = Keys::rest(key, &rollouts) {
                match decode::<Rollout>(kv.value()) {
                    Some(r) if r.spec.app == app => {
                        s.rollouts.insert(app.to_string(), (r, kv.mod_revision()));
                    }
                    _ => tracing::warn!(key, "a fleet rollout that cannot be read is ignored"),
                }
            } else if key == halt {
                // A halt that cannot be read still halts.
                s.halt = Some(decode(kv.value()).unwrap_or(Halt {
                    mark: Mark {
                        by: "?".into(),
                        at_ms: 0,
                        reason: Some("unreadable halt record".into()),
                    },
                }));
            } else if Keys::rest(key, &reports).is_some() {
                if let Some(r) = decode(kv.value()) {
                    s.reports.push(r);
                }
            }
        }
        s
    }

    /// What the coordinator sees of `app`.
    fn observed(&self, app: &str) -> plan::Observed {
        plan::Observed {
            alive: self.hosts.keys().cloned().collect(),
            statuses: self
                .statuses
                .iter()
                .filter(|(h, _)| self.hosts.contains_key(*h))
                .filter_map(|(h, apps)| apps.get(app).map(|st| (h.clone(), st.clone())))
                .collect(),
            halted: self.halt.is_some(),
        }
    }

    fn host_views(&self, rollouts: &[RolloutView], app: Option<&str>) -> Vec<HostView> {
        let mut names: std::collections::BTreeSet<String> = self
            .hosts
            .keys()
            .chain(self.known.keys())
            .cloned()
            .collect();
        for r in rollouts {
            names.extend(r.rollout.progress.targets.iter().cloned());
        }
        names
            .into_iter()
            .map(|h| HostView {
                alive: self.hosts.contains_key(&h),
                info: self.hosts.get(&h).or_else(|| self.known.get(&h)).cloned(),
                apps: self
                    .statuses
                    .get(&h)
                    .map(|a| {
                        a.iter()
                            .filter(|(name, _)| app.is_none_or(|x| x == name.as_str()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
                host: h,
            })
            .collect()
    }
}
