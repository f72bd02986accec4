//! One host's membership: its etcd session and what it does for rollouts.
//!
//! Owns the session (a lease kept alive at a third of its TTL, the host's
//! record and its per-app status under it, statuses written on change
//! only), the campaign task it runs for the coordinator, the host's claims
//! (a transaction that fails while the fleet is halted, the rollout does not
//! run, or the assignment changed) and the local deploy or revert that
//! follows, through the app's supervisor. Cut off from etcd it keeps every
//! change of status in an outbox in the store, starts nothing new, and
//! reports the outbox when a session is back.
//!
//! Must never start a deploy without a claim that went through, nor wait on
//! etcd for anything local safety needs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::plan::{Artifact, AssignKind, Assignment, HostApp, Outcome};
use super::{coordinator, decode, encode, timed, Fleet, FleetError, HostInfo, Report};
use crate::domain::{now_ms, Actor, AppState, ReleaseState};
use crate::release::Version;

/// How often statuses are compared with what was last written.
const STATUS_EVERY: Duration = Duration::from_millis(300);
/// How often assignments are read again besides the watch.
const ASSIGNMENTS_EVERY: Duration = Duration::from_secs(5);
/// The longest wait between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Most reports kept while cut off, per app (the oldest go first).
const MAX_OUTBOX: usize = 1_000;

/// What this host did with an app's last assignment (kept in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Acted {
    rollout: String,
    kind: AssignKind,
    version: String,
    /// Why the host would not, when it would not.
    refused: Option<String>,
}

/// The session, again and again, until the task is dropped.
pub(super) async fn run(fleet: Arc<Fleet>) {
    let mut last = BTreeMap::new();
    let mut backoff = Duration::from_millis(500);
    loop {
        let began = std::time::Instant::now();
        match session(&fleet, &mut last).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(host = %fleet.cfg.host, "fleet session ended: {e}"),
        }
        fleet.set_client(None);
        if began.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        // Cut off: local changes go to the outbox until the next session.
        let until = tokio::time::Instant::now() + backoff;
        while tokio::time::Instant::now() < until {
            keep_changes(&fleet, &mut last);
            tokio::time::sleep(STATUS_EVERY).await;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One session: lease, records, campaign, claims. Returns on any etcd error.
async fn session(
    fleet: &Arc<Fleet>,
    last: &mut BTreeMap<String, HostApp>,
) -> Result<(), FleetError> {
    let keys = &fleet.keys;
    let host = fleet.cfg.host.clone();
    let mut client = super::connect(&fleet.cfg).await?;
    let ttl = fleet.cfg.lease_ttl.as_secs().max(2) as i64;
    let lease = timed(client.lease_grant(ttl, None)).await?.id();
    let (mut keeper, mut acks) = timed(client.lease_keep_alive(lease)).await?;
    let leased = || Some(PutOptions::new().with_lease(lease));

    let info = HostInfo {
        host: host.clone(),
        labels: fleet.cfg.labels.clone(),
        agent: env!("CARGO_PKG_VERSION").to_string(),
        since_ms: now_ms(),
        apps: fleet.app_names(),
    };
    timed(client.put(keys.host(&host), encode(&info), leased())).await?;
    timed(client.put(keys.known_host(&host), encode(&info), None)).await?;
    // What changed since the last status this host published (while cut
    // off, or while this session was being set up) is history the outbox
    // keeps; a first session has nothing to report.
    if !last.is_empty() {
        keep_changes(fleet, last);
    }
    last.clear();
    publish(fleet, &mut client, lease, last).await?;
    flush_outbox(fleet, &mut client, lease).await?;
    fleet.set_client(Some(client.clone()));
    tracing::info!(host = %host, fleet = %fleet.cfg.name, "fleet session up");

    let campaign = Aborting(tokio::spawn({
        let (fleet, client) = (fleet.clone(), client.clone());
        async move {
            loop {
                let (keys, host) = (fleet.keys.clone(), fleet.cfg.host.clone());
                if let Err(e) = coordinator::run(keys, host, client.clone(), lease).await {
                    tracing::warn!("fleet coordinator stopped: {e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }));

    // Assignments: a watch per app, and a read every few seconds anyway.
    let changed = Arc::new(tokio::sync::Notify::new());
    let mut watches = Vec::new();
    for app in fleet.app_names() {
        let mut stream = timed(client.watch(keys.assignment(&app, &host), None)).await?;
        let changed = changed.clone();
        watches.push(Aborting(tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {
                changed.notify_one();
            }
        })));
    }

    let mut keep_alive = tokio::time::interval(Duration::from_secs((ttl as u64 / 3).max(1)));
    let mut status = tokio::time::interval(STATUS_EVERY);
    let mut reread = tokio::time::interval(ASSIGNMENTS_EVERY);
    loop {
        tokio::select! {
            _ = keep_alive.tick() => {
                timed(keeper.keep_alive()).await?;
                match timed(acks.message()).await? {
                    Some(ack) if ack.ttl() > 0 => {}
                    _ => return Err(FleetError::Unavailable("the lease expired".into())),
                }
            }
            _ = status.tick() => publish(fleet, &mut client, lease, last).await?,
            _ = changed.notified() => assignments(fleet, &mut client, lease, last).await?,
            _ = reread.tick() => assignments(fleet, &mut client, lease, last).await?,
        }
        if campaign.0.is_finished() {
            return Err(FleetError::Unavailable("the campaign stopped".into()));
        }
    }
}

/// A task aborted when this is dropped (the session's helpers end with it).
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes the statuses that changed since they were last written.
async fn publish(
    fleet: &Fleet,
    client: &mut Client,
    lease: i64,
    last: &mut BTreeMap<String, HostApp>,
) -> Result<(), FleetError> {
    for (app, st) in statuses(fleet) {
        if last.get(&app) == Some(&st) {
            continue;
        }
        let key = fleet.keys.status(&fleet.cfg.host, &app);
        timed(client.put(key, encode(&st), Some(PutOptions::new().with_lease(lease)))).await?;
        last.insert(app, st);
    }
    Ok(())
}

fn acted_space(fleet: &Fleet, app: &str) -> crate::store::KvSpace {
    fleet.store.kv_space(app, "fleet")
}

fn acted(fleet: &Fleet, app: &str) -> Option<Acted> {
    let bytes = acted_space(fleet, app).get("assignment").ok()??;
    decode(&bytes)
}

fn set_acted(fleet: &Fleet, app: &str, acted: &Acted) {
    if let Err(e) = acted_space(fleet, app).set("assignment", &encode(acted)) {
        tracing::error!(app, "cannot keep the fleet assignment acted on: {e}");
    }
}

/// Each local app's status, from the store.
fn statuses(fleet: &Fleet) -> BTreeMap<String, HostApp> {
    let mut out = BTreeMap::new();
    for name in fleet.app_names() {
        let app = match fleet.store.app(&name) {
            Ok(Some(a)) => a,
            Ok(None) => crate::domain::App::new(&name),
            Err(_) => continue,
        };
        let acted = acted(fleet, &name);
        let (outcome, outcome_reason, digest) = match &acted {
            None => (None, None, None),
            Some(a) => {
                let release = fleet.store.release(&name, &a.version).ok().flatten();
                let digest = release.as_ref().and_then(|r| r.digest.clone());
                let on_it = app.active.as_deref() == Some(a.version.as_str());
                let settled = !matches!(app.state, AppState::Deploying | AppState::RollingBack);
                let outcome = match (a.kind, &a.refused) {
                    (_, Some(_)) => Outcome::Refused,
                    (AssignKind::Revert, None) if on_it && settled => Outcome::Reverted,
                    (AssignKind::Revert, None) => Outcome::Claimed,
                    (AssignKind::Deploy, None) => match release.map(|r| r.state) {
                        Some(ReleaseState::Good) if on_it => Outcome::Good,
                        Some(ReleaseState::Failed) => Outcome::Failed,
                        // Held: no verdict yet (the wave waits, or its deadline ends it).
                        Some(_)
                            if on_it && matches!(app.state, AppState::Baking | AppState::Held) =>
                        {
                            Outcome::Baking
                        }
                        Some(_) if on_it && app.state == AppState::Healthy => Outcome::Good,
                        Some(_) if on_it && app.state == AppState::Degraded => Outcome::Failed,
                        _ => Outcome::Claimed,
                    },
                };
                let reason = match outcome {
                    Outcome::Refused => a.refused.clone(),
                    Outcome::Failed => app.reason.clone(),
                    _ => None,
                };
                (Some(outcome), reason, digest)
            }
        };
        out.insert(
            name,
            HostApp {
                active: app.active,
                last_good: app.last_good,
                state: app.state,
                reason: app.reason,
                rollout: acted.map(|a| a.rollout),
                outcome,
                outcome_reason,
                digest,
            },
        );
    }
    out
}

/// Keeps in the outbox every status that differs from `last`, and makes it
/// the last.
fn keep_changes(fleet: &Fleet, last: &mut BTreeMap<String, HostApp>) {
    for (app, st) in statuses(fleet) {
        if last.get(&app) != Some(&st) {
            keep_in_outbox(fleet, &app, &st);
            last.insert(app, st);
        }
    }
}

fn keep_in_outbox(fleet: &Fleet, app: &str, st: &HostApp) {
    let space = fleet.store.kv_space(app, "fleet-outbox");
    let report = Report {
        host: fleet.cfg.host.clone(),
        app: app.to_string(),
        at_ms: now_ms(),
        status: st.clone(),
    };
    let mut keys = space.keys("").unwrap_or_default();
    keys.sort();
    while keys.len() >= MAX_OUTBOX {
        let oldest = keys.remove(0);
        let _ = space.delete(&oldest);
    }
    let key = format!("{:013}-{:04}", report.at_ms, keys.len());
    if let Err(e) = space.set(&key, &encode(&report)) {
        tracing::error!(app, "cannot keep a fleet report: {e}");
    }
}

/// Writes what happened while cut off, then forgets it locally.
async fn flush_outbox(fleet: &Fleet, client: &mut Client, lease: i64) -> Result<(), FleetError> {
    for app in fleet.app_names() {
        let space = fleet.store.kv_space(&app, "fleet-outbox");
        let mut keys = space.keys("").unwrap_or_default();
        keys.sort();
        for (n, k) in keys.iter().enumerate() {
            let Some(report) = space
                .get(k)
                .ok()
                .flatten()
                .and_then(|b| decode::<Report>(&b))
            else {
                let _ = space.delete(k);
                continue;
            };
            let key = fleet.keys.report(&fleet.cfg.host, report.at_ms, n as u64);
            timed(client.put(
                key,
                encode(&report),
                Some(PutOptions::new().with_lease(lease)),
            ))
            .await?;
            let _ = space.delete(k);
        }
        if !keys.is_empty() {
            tracing::info!(app = %app, reports = keys.len(), "fleet: reported what happened while cut off");
        }
    }
    Ok(())
}

/// Reads this host's assignments and acts on new ones.
async fn assignments(
    fleet: &Arc<Fleet>,
    client: &mut Client,
    lease: i64,
    last: &mut BTreeMap<String, HostApp>,
) -> Result<(), FleetError> {
    let keys = &fleet.keys;
    let host = &fleet.cfg.host;
    for app in fleet.app_names() {
        let key = keys.assignment(&app, host);
        let got = timed(client.get(key.clone(), None)).await?;
        let Some(kv) = got.kvs().first() else {
            continue;
        };
        let Some(a) = decode::<Assignment>(kv.value()) else {
            tracing::warn!(app = %app, "a fleet assignment that cannot be read is ignored");
            continue;
        };
        let done = acted(fleet, &app);
        if done
            .as_ref()
            .is_some_and(|d| d.rollout == a.rollout && d.kind == a.kind && d.version == a.version)
        {
            continue;
        }
        if a.kind == AssignKind::Deploy {
            // The claim: only while nothing halts the fleet, the rollout
            // runs and the assignment is still this one.
            let claim = claim_txn(keys, &app, host, &a, kv.value());
            if !timed(client.txn(claim)).await?.succeeded() {
                tracing::debug!(app = %app, rollout = %a.rollout, "fleet claim refused (halted, not running or changed)");
                continue;
            }
        }
        let mut record = Acted {
            rollout: a.rollout.clone(),
            kind: a.kind,
            version: a.version.clone(),
            refused: None,
        };
        // Checked before anything starts: what is refused is said at once.
        if a.kind == AssignKind::Deploy {
            record.refused = refusal(fleet, &app, &a).err();
        }
        set_acted(fleet, &app, &record);
        publish(fleet, client, lease, last).await?;
        if record.refused.is_some() {
            tracing::warn!(app = %app, rollout = %a.rollout, "fleet deploy refused: {}", record.refused.as_deref().unwrap_or(""));
            continue;
        }
        tracing::info!(app = %app, rollout = %a.rollout, version = %a.version, kind = %a.kind, "fleet: acting on the assignment");
        let fleet = fleet.clone();
        tokio::spawn(async move {
            if let Err(why) = act(&fleet, &app, &a).await {
                tracing::warn!(app = %app, rollout = %a.rollout, "fleet {} failed: {why}", a.kind);
                let mut record = record;
                record.refused = Some(why);
                set_acted(&fleet, &app, &record);
            }
        });
    }
    Ok(())
}

/// The claim of deploy assignment `a` (stored as `raw`) by `host`: it
/// holds only while nothing halts the fleet, the rollout runs and the
/// assignment is still this one.
pub fn claim_txn(
    keys: &super::keys::Keys,
    app: &str,
    host: &str,
    a: &Assignment,
    raw: &[u8],
) -> Txn {
    Txn::new()
        .when(vec![
            Compare::version(keys.halt(), CompareOp::Equal, 0),
            Compare::value(keys.running(app), CompareOp::Equal, a.rollout.clone()),
            Compare::value(keys.assignment(app, host), CompareOp::Equal, raw.to_vec()),
        ])
        .and_then(vec![TxnOp::put(
            keys.claim(app, host),
            encode(&serde_json::json!({ "rollout": a.rollout, "version": a.version, "at_ms": now_ms() })),
            None,
        )])
}

/// Why this host will not deploy `a`, if it will not.
fn refusal(fleet: &Fleet, app: &str, a: &Assignment) -> Result<(), String> {
    if fleet.app(app).is_none() {
        return Err(format!(
            "app `{app}` is not supervised on {}",
            fleet.cfg.host
        ));
    }
    let release = fleet
        .store
        .release(app, &a.version)
        .map_err(|e| e.to_string())?;
    let Some(release) = release else {
        return match &a.source {
            Some(_) => Ok(()),
            None => Err(format!(
                "release {} is not staged on {} (rollbackctl stage, or fleet rollout --source)",
                a.version, fleet.cfg.host
            )),
        };
    };
    match (&a.digest, &release.digest) {
        (Some(want), Some(have)) if want != have => Err(format!(
            "release {} on {} has content digest {have}, the rollout's is {want}",
            a.version, fleet.cfg.host
        )),
        (Some(want), None) => Err(format!(
            "release {} on {} has no content digest to compare with {want}",
            a.version, fleet.cfg.host
        )),
        _ => Ok(()),
    }
}

/// The local part: a deploy of the staged (or fetched) release, or a
/// revert to the version run before, through the app's supervisor.
async fn act(fleet: &Fleet, app: &str, a: &Assignment) -> Result<(), String> {
    let handle = fleet
        .app(app)
        .ok_or_else(|| format!("app `{app}` is not supervised here"))?;
    let version = Version::parse(&a.version).map_err(|e| e.to_string())?;
    let actor = Actor {
        uid: None,
        name: format!("fleet:{}", a.rollout),
    };
    match a.kind {
        AssignKind::Deploy => {
            let staged = fleet
                .store
                .release(app, &a.version)
                .map_err(|e| e.to_string())?;
            if staged.is_none() {
                let source = a
                    .source
                    .as_ref()
                    .ok_or_else(|| format!("release {} is not staged", a.version))?;
                let file = fetch(&fleet.cfg, source).await?;
                let meta = crate::supervisor::DeployMeta {
                    digest: a.digest.clone(),
                    ..Default::default()
                };
                handle
                    .stage(
                        crate::supervisor::Source::opened(
                            file.path().to_path_buf(),
                            file.reopen().map_err(|e| e.to_string())?,
                        ),
                        version.clone(),
                        actor.clone(),
                        meta,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
            handle
                .deploy_staged(version, actor, false)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        AssignKind::Revert => {
            let now = fleet.store.app(app).ok().flatten().and_then(|a| a.active);
            if now.as_deref() == Some(a.version.as_str()) {
                return Ok(());
            }
            handle
                .rollback(
                    Some(version),
                    Some(match &a.reason {
                        Some(why) => format!("fleet rollout {} aborted: {why}", a.rollout),
                        None => format!("fleet rollout {} aborted", a.rollout),
                    }),
                    actor,
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

/// Whether `--source` may be fetched by this fleet's agents.
pub(super) fn check_source(
    cfg: &crate::config::FleetConfig,
    source: &Artifact,
) -> Result<(), String> {
    let url =
        url::Url::parse(&source.url).map_err(|e| format!("`{}` is not a URL: {e}", source.url))?;
    crate::config::url_allowed(&cfg.artifact_hosts, &url, "[fleet] artifact_hosts")?;
    archive_suffix(&url)?;
    if source.sha256.len() != 64 || !source.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`{}` is not a SHA-256 in hex (64 digits)",
            source.sha256
        ));
    }
    Ok(())
}

/// The archive kind a URL's path names (the stager goes by the name).
fn archive_suffix(url: &url::Url) -> Result<&'static str, String> {
    let path = url.path();
    [".tar.gz", ".tgz", ".tar.zst", ".tzst"]
        .into_iter()
        .find(|s| path.ends_with(s))
        .ok_or_else(|| format!("{url} does not name a .tar.gz, .tgz, .tar.zst or .tzst archive"))
}

/// Most bytes one release archive may have.
const MAX_ARTIFACT: u64 = 4 * 1024 * 1024 * 1024;

/// Downloads `source` into a temporary file, checking its SHA-256.
async fn fetch(
    cfg: &crate::config::FleetConfig,
    source: &Artifact,
) -> Result<tempfile::NamedTempFile, String> {
    use sha2::Digest;
    use std::io::Write;
    check_source(cfg, source)?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?;
    let mut answer = client
        .get(&source.url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {}: {e}", source.url))?;
    if !answer.status().is_success() {
        return Err(format!("{} answered {}", source.url, answer.status()));
    }
    let url = url::Url::parse(&source.url).map_err(|e| e.to_string())?;
    let mut file = tempfile::Builder::new()
        .prefix(".fleet-fetch-")
        .suffix(archive_suffix(&url)?)
        .tempfile()
        .map_err(|e| e.to_string())?;
    let mut hash = sha2::Sha256::new();
    let mut total = 0u64;
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| format!("cannot fetch {}: {e}", source.url))?
    {
        total += chunk.len() as u64;
        if total > MAX_ARTIFACT {
            return Err(format!("{} is larger than 4 GiB", source.url));
        }
        hash.update(&chunk);
        file.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    let got = format!("{:x}", hash.finalize());
    if !got.eq_ignore_ascii_case(&source.sha256) {
        return Err(format!(
            "{} has SHA-256 {got}, the rollout's is {}",
            source.url, source.sha256
        ));
    }
    file.flush().map_err(|e| e.to_string())?;
    Ok(file)
}
