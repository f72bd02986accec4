//! A fleet rollout as data, and the decisions taken on it.
//!
//! Owns the rollout's spec (`Spec`: waves, failure budget, minimum healthy
//! hosts, per-wave bake and deadline, gates, what an abort does), its
//! progress (`Progress`, written by the coordinator only), the operators'
//! intent (`Intent`: pause, approvals, abort), what hosts report (`HostApp`)
//! and `reconcile`: given all of that and the time, the progress to store
//! and the assignments to write. Every decision is recomputed from stored
//! intent and observations, so a new coordinator resumes where the last one
//! stopped.
//!
//! Pure: no I/O, no clock (`now_ms` is an argument). Must never talk to etcd
//! or act on an app.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::{named, AppState, UnknownName};

/// A flag value that does not parse, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSpec(pub String);

fn bad(text: impl Into<String>) -> BadSpec {
    BadSpec(text.into())
}

/// How many hosts one wave adds up to: a count, a share of the rollout's
/// hosts, or named hosts (a canary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaveSize {
    /// This many hosts in all, counting the earlier waves.
    Count(u32),
    /// This share (1 to 100) of the hosts in all.
    Percent(u32),
    /// These hosts (besides the earlier waves').
    Hosts(Vec<String>),
}

/// A count or a share of the rollout's hosts (`--max-failed`, `--min-healthy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Share {
    /// This many hosts.
    Count(u32),
    /// This share (0 to 100) of the hosts.
    Percent(u32),
}

impl Share {
    /// The number of hosts out of `total`, rounding a share down (a budget
    /// of failures or of hosts that may be down is never overstated).
    pub fn floor_of(self, total: usize) -> usize {
        match self {
            Share::Count(n) => n as usize,
            Share::Percent(p) => total * p as usize / 100,
        }
    }

    /// The number of hosts out of `total`, rounding a share up (a minimum
    /// is never understated).
    pub fn ceil_of(self, total: usize) -> usize {
        match self {
            Share::Count(n) => (n as usize).min(total),
            Share::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

fn percent(text: &str) -> Option<Result<u32, BadSpec>> {
    let digits = text.strip_suffix('%')?;
    Some(match digits.parse::<u32>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(bad(format!("`{text}` is not a share from 0% to 100%"))),
    })
}

impl FromStr for Share {
    type Err = BadSpec;

    fn from_str(text: &str) -> Result<Self, BadSpec> {
        let text = text.trim();
        if let Some(p) = percent(text) {
            return p.map(Share::Percent);
        }
        text.parse::<u32>().map(Share::Count).map_err(|_| {
            bad(format!(
                "`{text}` is neither a host count nor a share like 10%"
            ))
        })
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::Count(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The waves of a rollout, in order; the last one always reaches every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waves(pub Vec<WaveSize>);

/// The waves when none are given.
pub const DEFAULT_WAVES: &str = "1,25%,100%";

/// Whether `name` may name a host (the fleet's key layout relies on it).
pub fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with(['.', '-'])
}

impl FromStr for Waves {
    type Err = BadSpec;

    /// `1,10%,50%,100%`; a wave of named hosts joins them with `+`
    /// (`web-1+web-2,50%,100%`). A last wave short of everyone gets `100%`
    /// after it.
    fn from_str(text: &str) -> Result<Self, BadSpec> {
        let mut waves = Vec::new();
        let mut named = BTreeSet::new();
        for item in text.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(bad(format!("`{text}`: an empty wave")));
            }
            let wave = if let Some(p) = percent(item) {
                match p? {
                    0 => return Err(bad("a wave of 0% reaches nobody")),
                    p => WaveSize::Percent(p),
                }
            } else if item.bytes().all(|b| b.is_ascii_digit()) {
                match item.parse::<u32>() {
                    Ok(0) => return Err(bad("a wave of 0 hosts reaches nobody")),
                    Ok(n) => WaveSize::Count(n),
                    Err(_) => return Err(bad(format!("`{item}` is too many hosts"))),
                }
            } else {
                let hosts: Vec<String> = item.split('+').map(|h| h.trim().to_string()).collect();
                for h in &hosts {
                    if !valid_host(h) {
                        return Err(bad(format!(
                            "`{h}` is not a host name (letters, digits, `-`, `_`, `.`)"
                        )));
                    }
                    if !named.insert(h.clone()) {
                        return Err(bad(format!("host `{h}` is named in two waves")));
                    }
                }
                WaveSize::Hosts(hosts)
            };
            waves.push(wave);
        }
        if waves.len() > 100 {
            return Err(bad("more than 100 waves"));
        }
        if !matches!(waves.last(), Some(WaveSize::Percent(100))) {
            waves.push(WaveSize::Percent(100));
        }
        Ok(Waves(waves))
    }
}

impl fmt::Display for Waves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match w {
                WaveSize::Count(n) => write!(f, "{n}")?,
                WaveSize::Percent(p) => write!(f, "{p}%")?,
                WaveSize::Hosts(h) => f.write_str(&h.join("+"))?,
            }
        }
        Ok(())
    }
}

impl Waves {
    /// The hosts of each wave, out of `targets` (in the rollout's order):
    /// each wave adds hosts up to its size, never fewer than one.
    pub fn split(&self, targets: &[String]) -> Vec<Vec<String>> {
        let mut taken: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::new();
        for w in &self.0 {
            let mut wave = Vec::new();
            match w {
                WaveSize::Hosts(hosts) => {
                    for h in hosts {
                        if targets.contains(h) && taken.insert(h) {
                            wave.push(h.clone());
                        }
                    }
                }
                WaveSize::Count(_) | WaveSize::Percent(_) => {
                    let upto = match w {
                        WaveSize::Count(n) => (*n as usize).min(targets.len()),
                        _ => Share::Percent(match w {
                            WaveSize::Percent(p) => *p,
                            _ => 100,
                        })
                        .ceil_of(targets.len()),
                    };
                    let want = upto.saturating_sub(taken.len()).max(1);
                    for h in targets {
                        if wave.len() >= want {
                            break;
                        }
                        if taken.insert(h) {
                            wave.push(h.clone());
                        }
                    }
                }
            }
            out.push(wave);
        }
        // Named hosts go first: every other host is after them in order.
        out
    }
}

named! {
    /// Whether a wave waits for an operator before the next one starts.
    "gate" pub enum Gate {
        /// The next wave starts as soon as this one baked.
        Auto = "auto",
        /// The next wave waits for `fleet promote` by an approver.
        Manual = "manual",
    }
}

/// `--gate`: one gate for every wave, or one per wave.
pub fn parse_gates(text: &str, waves: usize) -> Result<Vec<Gate>, BadSpec> {
    let gates: Vec<Gate> = text
        .split(',')
        .map(|g| g.trim().parse::<Gate>())
        .collect::<Result<_, UnknownName>>()
        .map_err(|e| bad(e.to_string()))?;
    match gates.len() {
        1 => Ok(vec![gates[0]; waves]),
        n if n == waves => Ok(gates),
        n => Err(bad(format!(
            "{n} gates for {waves} waves: give one gate, or one per wave"
        ))),
    }
}

named! {
    /// What an abort does.
    "on-abort action" pub enum OnAbort {
        /// Every host that got the new version goes back to the one before.
        Rollback = "rollback",
        /// Nothing more starts; hosts keep what they run.
        Stop = "stop",
    }
}

named! {
    /// Where a rollout is.
    "rollout phase" pub enum Phase {
        /// Waves advance.
        Running = "running",
        /// An operator paused it: nothing new starts.
        Paused = "paused",
        /// A wave baked; the next one waits for an approver's promote.
        AwaitingApproval = "awaiting-approval",
        /// Aborted: the hosts that got the version are being sent back.
        RollingBack = "rolling-back",
        /// Over, without reaching every host.
        Aborted = "aborted",
        /// Every wave baked.
        Succeeded = "succeeded",
    }
}

impl Phase {
    /// Nothing more happens to the rollout.
    pub fn is_over(self) -> bool {
        matches!(self, Phase::Aborted | Phase::Succeeded)
    }
}

named! {
    /// What a host did with its assignment (reported in its status).
    "host outcome" pub enum Outcome {
        /// Its claim went through; the local deploy starts.
        Claimed = "claimed",
        /// The new version is active and baking.
        Baking = "baking",
        /// The new version passed the host's own bake.
        Good = "good",
        /// The new version failed there (rolled back locally).
        Failed = "failed",
        /// The host would not deploy it (not staged, another digest, busy).
        Refused = "refused",
        /// After an abort: back on the version it ran before.
        Reverted = "reverted",
    }
}

/// A release's bits to fetch (`--source URL --sha256 DIGEST`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Where each agent fetches the archive.
    pub url: String,
    /// The archive's SHA-256 (hex).
    pub sha256: String,
}

/// What an operator asked for (`fleet rollout`), fixed for its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Unique per rollout (hosts tell assignments of two rollouts apart).
    pub id: String,
    /// The app.
    pub app: String,
    /// The version every host is to run.
    pub version: String,
    /// The release's content digest every host must have, when known.
    pub digest: Option<String>,
    /// Where hosts fetch the release when they do not have it.
    pub source: Option<Artifact>,
    /// The waves.
    pub waves: Waves,
    /// One gate per wave, applied once it baked.
    pub gates: Vec<Gate>,
    /// Hosts whose deploy may fail (cumulatively) before the rollout aborts.
    pub max_failed: Share,
    /// Hosts that must stay healthy on a known-good version.
    pub min_healthy: Share,
    /// How long a wave stays baked (all hosts good) before the next one.
    pub bake_ms: u64,
    /// A wave not baked this long after it started aborts the rollout.
    pub wave_deadline_ms: Option<u64>,
    /// What an abort does.
    pub on_abort: OnAbort,
    /// Who started it.
    pub started_by: String,
    /// When.
    pub started_ms: u64,
}

/// An operator's mark on a rollout: who and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The user.
    pub by: String,
    /// When.
    pub at_ms: u64,
    /// Why, in words.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An approval of the gate before a wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The wave it lets start (0-based).
    pub wave: usize,
    /// Who approved, and when.
    pub mark: Mark,
}

/// What operators asked for since the start (written by the agents that
/// took the calls, read by the coordinator).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Paused, by whom.
    pub paused: Option<Mark>,
    /// Gates passed.
    pub approvals: Vec<Approval>,
    /// Aborted, by whom.
    pub abort: Option<Mark>,
}

/// One host's part in a rollout, as the coordinator keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPart {
    /// The wave that assigned it.
    pub wave: usize,
    /// What it ran before (where an abort sends it back).
    pub previous: Option<String>,
    /// What it reported, last.
    pub outcome: Option<Outcome>,
    /// Its reason (a refusal's, a failure's).
    #[serde(default)]
    pub reason: Option<String>,
    /// It was sent back after an abort.
    #[serde(default)]
    pub reverting: bool,
    /// It ran the version before the rollout reached it (nothing to undo).
    #[serde(default)]
    pub already: bool,
}

/// How far the rollout got (written by the coordinator only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Where it is.
    pub phase: Phase,
    /// The wave in progress (0-based).
    pub wave: usize,
    /// Every host of the rollout, in wave order, fixed at its first reconcile.
    pub targets: Vec<String>,
    /// When the current wave started.
    pub wave_started_ms: u64,
    /// When every host of the current wave was good (its bake started).
    pub wave_baked_ms: Option<u64>,
    /// Since when nothing may start (paused or halted): the wave's deadline
    /// does not run meanwhile.
    pub stalled_since_ms: Option<u64>,
    /// The hosts assigned so far.
    pub hosts: BTreeMap<String, HostPart>,
    /// The digest every host must have (the spec's, or the first host's).
    pub digest: Option<String>,
    /// Why it is where it is (an abort's cause).
    pub reason: Option<String>,
    /// When it ended.
    pub ended_ms: Option<u64>,
}

impl Progress {
    /// The progress of a rollout nobody reconciled yet.
    pub fn new(spec: &Spec) -> Self {
        Progress {
            phase: Phase::Running,
            wave: 0,
            targets: Vec::new(),
            wave_started_ms: spec.started_ms,
            wave_baked_ms: None,
            stalled_since_ms: None,
            hosts: BTreeMap::new(),
            digest: spec.digest.clone(),
            reason: None,
            ended_ms: None,
        }
    }
}

/// A rollout as stored: spec, operators' intent and progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// What was asked.
    pub spec: Spec,
    /// What operators asked since.
    pub intent: Intent,
    /// How far it got.
    pub progress: Progress,
}

named! {
    /// What an assignment asks of a host.
    "assignment kind" pub enum AssignKind {
        /// Deploy the rollout's version (after a claim).
        Deploy = "deploy",
        /// Go back to `version`, the one run before (after an abort).
        Revert = "revert",
    }
}

/// What the coordinator asks one host to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The rollout.
    pub rollout: String,
    /// Deploy or revert.
    pub kind: AssignKind,
    /// The version to run.
    pub version: String,
    /// The digest it must have (deploys).
    pub digest: Option<String>,
    /// Where to fetch it when it is not staged (deploys).
    pub source: Option<Artifact>,
    /// Why (a revert's: the abort's cause).
    #[serde(default)]
    pub reason: Option<String>,
}

/// What one host says of one app (its status key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostApp {
    /// The active version.
    pub active: Option<String>,
    /// The newest release that passed its bake.
    pub last_good: Option<String>,
    /// The app's state.
    pub state: AppState,
    /// Why.
    pub reason: Option<String>,
    /// The rollout it last acted on.
    pub rollout: Option<String>,
    /// What came of it.
    pub outcome: Option<Outcome>,
    /// Why (a refusal's or a failure's reason).
    #[serde(default)]
    pub outcome_reason: Option<String>,
    /// The content digest of the rollout's version on this host.
    pub digest: Option<String>,
}

impl HostApp {
    /// Healthy on a version that passed its bake.
    pub fn is_healthy(&self) -> bool {
        self.state == AppState::Healthy && self.active.is_some() && self.active == self.last_good
    }
}

/// What the coordinator read for one app's rollout.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Hosts whose lease is alive.
    pub alive: BTreeSet<String>,
    /// Each host's status of the app (alive hosts only).
    pub statuses: BTreeMap<String, HostApp>,
    /// A fleet-wide halt is set.
    pub halted: bool,
}

/// What `reconcile` decided: the progress to store and the assignments to
/// write (with the rollout's running key, present only while `Running`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The new progress.
    pub progress: Progress,
    /// New assignments, per host.
    pub assign: Vec<(String, Assignment)>,
    /// Things worth telling (history, hooks), in words.
    pub events: Vec<String>,
}

impl Decision {
    /// Whether claims may go through.
    pub fn running(&self) -> bool {
        self.progress.phase == Phase::Running
    }
}

/// Most assignments one decision makes: they go in one etcd transaction
/// with the progress, and etcd refuses transactions of more than 128
/// operations (`--max-txn-ops`). The rest follow in the next rounds.
pub const MAX_NEW_PER_ROUND: usize = 100;

/// One step of the coordinator for `rollout`, at `now_ms`.
pub fn reconcile(rollout: &Rollout, seen: &Observed, now_ms: u64) -> Decision {
    let spec = &rollout.spec;
    let mut p = rollout.progress.clone();
    let mut assign = Vec::new();
    let mut events = Vec::new();
    if p.phase.is_over() {
        return Decision {
            progress: p,
            assign,
            events,
        };
    }

    // The hosts of the rollout: those that run the app when it begins.
    if p.targets.is_empty() {
        let mut hosts: Vec<String> = seen.statuses.keys().cloned().collect();
        hosts.sort();
        if hosts.is_empty() {
            end(&mut p, Phase::Aborted, "no live host runs the app", now_ms);
            events.push("aborted: no live host runs the app".into());
            return Decision {
                progress: p,
                assign,
                events,
            };
        }
        // Named hosts first, in wave order, then the rest by name.
        let mut ordered: Vec<String> = Vec::new();
        for w in &spec.waves.0 {
            if let WaveSize::Hosts(named) = w {
                ordered.extend(named.iter().filter(|h| hosts.contains(h)).cloned());
            }
        }
        for h in hosts {
            if !ordered.contains(&h) {
                ordered.push(h);
            }
        }
        let need = spec.min_healthy.ceil_of(ordered.len());
        if need >= ordered.len() {
            let cause = format!(
                "min-healthy {} of {} hosts leaves none to deploy to",
                spec.min_healthy,
                ordered.len()
            );
            events.push(format!("aborted: {cause}"));
            end(&mut p, Phase::Aborted, &cause, now_ms);
            return Decision {
                progress: p,
                assign,
                events,
            };
        }
        p.targets = ordered;
        p.wave_started_ms = now_ms;
    }
    let waves = spec.waves.split(&p.targets);

    // What hosts reported of this rollout.
    for (host, part) in p.hosts.iter_mut() {
        let Some(st) = seen.statuses.get(host) else {
            continue;
        };
        if st.rollout.as_deref() != Some(spec.id.as_str()) {
            continue;
        }
        if st.outcome != part.outcome {
            part.outcome = st.outcome;
            part.reason = st.outcome_reason.clone();
            if let Some(o) = st.outcome {
                events.push(format!("{host}: {o}"));
            }
        }
        if p.digest.is_none() && matches!(st.outcome, Some(Outcome::Baking | Outcome::Good)) {
            p.digest = st.digest.clone();
        }
    }

    // Aborts: asked for, or the failure budget spent.
    let failed = p
        .hosts
        .values()
        .filter(|h| matches!(h.outcome, Some(Outcome::Failed | Outcome::Refused)))
        .count();
    let budget = spec.max_failed.floor_of(p.targets.len());
    if p.phase != Phase::RollingBack {
        let cause = if let Some(m) = &rollout.intent.abort {
            Some(match &m.reason {
                Some(r) => format!("aborted by {}: {r}", m.by),
                None => format!("aborted by {}", m.by),
            })
        } else if failed > budget {
            Some(format!(
                "{failed} of {} hosts failed (max-failed {})",
                p.targets.len(),
                spec.max_failed
            ))
        } else {
            None
        };
        if let Some(cause) = cause {
            events.push(format!("aborted: {cause}"));
            match spec.on_abort {
                OnAbort::Rollback => {
                    p.phase = Phase::RollingBack;
                    p.reason = Some(cause);
                }
                OnAbort::Stop => end(&mut p, Phase::Aborted, &cause, now_ms),
            }
        }
    }

    if p.phase == Phase::RollingBack {
        roll_back(spec, &mut p, seen, &mut assign, &mut events, now_ms);
        return Decision {
            progress: p,
            assign,
            events,
        };
    }
    if p.phase.is_over() {
        return Decision {
            progress: p,
            assign,
            events,
        };
    }

    // Pause and halt stop new starts and the wave's deadline.
    let paused = rollout.intent.paused.is_some();
    match (paused, p.phase) {
        (true, Phase::Running | Phase::AwaitingApproval) => {
            p.phase = Phase::Paused;
            events.push("paused".into());
        }
        (false, Phase::Paused) => {
            p.phase = Phase::Running;
            events.push("resumed".into());
        }
        _ => {}
    }
    let stalled = p.phase == Phase::Paused || seen.halted;
    match (stalled, p.stalled_since_ms) {
        (true, None) => p.stalled_since_ms = Some(now_ms),
        (false, Some(since)) => {
            p.wave_started_ms += now_ms.saturating_sub(since);
            if let Some(b) = p.wave_baked_ms.as_mut() {
                *b += now_ms.saturating_sub(since);
            }
            p.stalled_since_ms = None;
        }
        _ => {}
    }
    if p.phase == Phase::Paused {
        return Decision {
            progress: p,
            assign,
            events,
        };
    }
    if p.phase == Phase::AwaitingApproval {
        if approved(rollout, p.wave + 1) {
            next_wave(&mut p, &mut events, now_ms);
        } else {
            return Decision {
                progress: p,
                assign,
                events,
            };
        }
    }

    let wave = p.wave.min(waves.len().saturating_sub(1));
    let members = &waves[wave];

    // New starts, within the minimum of healthy hosts.
    if !seen.halted {
        let need = spec.min_healthy.ceil_of(p.targets.len());
        let mut healthy = p
            .targets
            .iter()
            .filter(|h| {
                // A host assigned but not yet good is about to go down.
                seen.statuses.get(*h).is_some_and(HostApp::is_healthy)
                    && p.hosts
                        .get(*h)
                        .is_none_or(|part| part.outcome == Some(Outcome::Good))
            })
            .count();
        for host in members {
            if assign.len() >= MAX_NEW_PER_ROUND {
                break;
            }
            if p.hosts.contains_key(host) || !seen.alive.contains(host) {
                continue;
            }
            let Some(st) = seen.statuses.get(host) else {
                continue;
            };
            let takes_healthy = st.is_healthy();
            if takes_healthy && healthy <= need {
                break;
            }
            if takes_healthy {
                healthy -= 1;
            }
            if st.active.as_deref() == Some(spec.version.as_str()) && st.is_healthy() {
                // Already there: counts as good without a deploy.
                p.hosts.insert(
                    host.clone(),
                    HostPart {
                        wave,
                        previous: st.active.clone(),
                        outcome: Some(Outcome::Good),
                        reason: None,
                        reverting: false,
                        already: true,
                    },
                );
                continue;
            }
            p.hosts.insert(
                host.clone(),
                HostPart {
                    wave,
                    previous: st.active.clone(),
                    outcome: None,
                    reason: None,
                    reverting: false,
                    already: false,
                },
            );
            assign.push((
                host.clone(),
                Assignment {
                    rollout: spec.id.clone(),
                    kind: AssignKind::Deploy,
                    version: spec.version.clone(),
                    digest: p.digest.clone(),
                    source: spec.source.clone(),
                    reason: None,
                },
            ));
            events.push(format!("{host}: assigned in wave {}", wave + 1));
        }
    }

    // The wave bakes once every host in it is good.
    let all_good = members.iter().all(|h| {
        p.hosts
            .get(h)
            .is_some_and(|part| part.outcome == Some(Outcome::Good))
    });
    if all_good {
        let baked = *p.wave_baked_ms.get_or_insert(now_ms);
        if !seen.halted && now_ms.saturating_sub(baked) >= spec.bake_ms {
            if wave + 1 >= waves.len() {
                end(&mut p, Phase::Succeeded, "every wave baked", now_ms);
                events.push("succeeded".into());
            } else if spec.gates.get(wave) == Some(&Gate::Manual) && !approved(rollout, wave + 1) {
                if p.phase != Phase::AwaitingApproval {
                    p.phase = Phase::AwaitingApproval;
                    events.push(format!("wave {} baked: waiting for approval", wave + 1));
                }
            } else {
                next_wave(&mut p, &mut events, now_ms);
            }
        }
    } else if let Some(deadline) = spec.wave_deadline_ms {
        if !stalled && now_ms.saturating_sub(p.wave_started_ms) > deadline {
            let cause = format!(
                "wave {} did not finish within {}",
                wave + 1,
                humantime::format_duration(std::time::Duration::from_millis(deadline))
            );
            events.push(format!("aborted: {cause}"));
            match spec.on_abort {
                OnAbort::Rollback => {
                    p.phase = Phase::RollingBack;
                    p.reason = Some(cause);
                    roll_back(spec, &mut p, seen, &mut assign, &mut events, now_ms);
                }
                OnAbort::Stop => end(&mut p, Phase::Aborted, &cause, now_ms),
            }
        }
    }
    Decision {
        progress: p,
        assign,
        events,
    }
}

fn approved(rollout: &Rollout, wave: usize) -> bool {
    rollout.intent.approvals.iter().any(|a| a.wave == wave)
}

fn next_wave(p: &mut Progress, events: &mut Vec<String>, now_ms: u64) {
    p.wave += 1;
    p.phase = Phase::Running;
    p.wave_started_ms = now_ms;
    p.wave_baked_ms = None;
    events.push(format!("wave {} started", p.wave + 1));
}

fn end(p: &mut Progress, phase: Phase, reason: &str, now_ms: u64) {
    p.phase = phase;
    p.reason.get_or_insert_with(|| reason.to_string());
    p.ended_ms = Some(now_ms);
}

/// Sends back every host that got the new version; ends once each live one
/// is back (a missing host acts on its assignment when it returns).
fn roll_back(
    spec: &Spec,
    p: &mut Progress,
    seen: &Observed,
    assign: &mut Vec<(String, Assignment)>,
    events: &mut Vec<String>,
    now_ms: u64,
) {
    let mut waiting = false;
    let cause = p.reason.clone();
    for (host, part) in p.hosts.iter_mut() {
        // A host that failed rolled back by itself; one that never claimed
        // has nothing to undo.
        let got_it = matches!(
            part.outcome,
            Some(Outcome::Claimed | Outcome::Baking | Outcome::Good | Outcome::Reverted)
        ) && !part.already;
        let Some(previous) = part.previous.clone() else {
            continue;
        };
        if !got_it {
            continue;
        }
        if !part.reverting && assign.len() >= MAX_NEW_PER_ROUND {
            // The next round sends the rest back.
            waiting = true;
            continue;
        }
        if !part.reverting {
            part.reverting = true;
            assign.push((
                host.clone(),
                Assignment {
                    rollout: spec.id.clone(),
                    kind: AssignKind::Revert,
                    version: previous,
                    digest: None,
                    source: None,
                    reason: cause.clone(),
                },
            ));
            events.push(format!("{host}: sent back"));
        }
        if part.outcome != Some(Outcome::Reverted) && seen.alive.contains(host) {
            waiting = true;
        }
    }
    if !waiting {
        let cause = p.reason.clone().unwrap_or_else(|| "aborted".into());
        end(p, Phase::Aborted, &cause, now_ms);
        events.push("rolled back".into());
    }
}

#[cfg(test)]
mod tests;
