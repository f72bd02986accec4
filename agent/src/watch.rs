//! Drop-in deploys for apps with `watch = true`.
//!
//! Owns `<root>/incoming/` and the `.ready` markers of `<root>/releases/<v>/`.
//! Two ways to hand a release to the agent without `rollbackctl`:
//!
//! - a directory copied to `releases/<v>/` (any way, any speed), then an
//!   empty `releases/<v>/.ready` file created last: a directory without the
//!   marker is a copy in progress and is never looked at. A marked directory
//!   is moved (one `rename(2)`, so `incoming/` must be on the same file
//!   system as `releases/`) to `incoming/.dropped-<v>-<random>`, its marker
//!   deleted, and deployed from there; the moved copy is removed afterwards.
//!   `.ready` at the top of a release is reserved for this: never deploy a
//!   directory that contains one. The release `current` points at is never
//!   moved.
//! - an archive `incoming/<v>.tar.gz` (`.tgz`, `.tar.zst`, `.tzst`). The safe
//!   way is to upload under a hidden name (`incoming/.tmp-x`) and rename it;
//!   an archive written in place is only taken once its size and mtime have
//!   not changed across scans at least a second apart. Deployed: removed;
//!   refused (or an invalid version name): moved to `incoming/failed/`.
//!
//! Events (inotify, through `notify`) on `releases/`, each `releases/<v>/`
//! and `incoming/` are debounced: a scan runs after a second of quiet (at the
//! latest ten seconds after the first event), every two seconds while
//! something waits (an upload that grows, an app that is baking), and once a
//! minute anyway in case an event was lost.
//!
//! It only sends deploy commands to supervisors (like `control`), with the
//! actor `watch`; the supervisor is the judge of what may be deployed. It
//! never touches the store, never stages or activates anything itself, and
//! never deploys a partial copy. Odd names, races and refusals are logged,
//! never a panic.

use crate::fsutil::rename_noreplace;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::AppConfig;
use crate::release::{AppDir, Version};
use crate::store::Actor;
use crate::supervisor::{AppHandle, CommandError, DeployMeta, DeployOutcome};

/// The marker that says a directory under `releases/` is complete.
pub const READY_MARKER: &str = ".ready";
/// The drop directory under the app root.
pub const INCOMING_DIR: &str = "incoming";
/// Where refused archives go, under `incoming/`.
pub const FAILED_DIR: &str = "failed";
/// Prefix of the directories moved from `releases/` into `incoming/`.
const DROPPED_PREFIX: &str = ".dropped-";
/// The archive suffixes `release::AppDir::stage` accepts.
const ARCHIVE_SUFFIXES: [&str; 4] = [".tar.gz", ".tgz", ".tar.zst", ".tzst"];

/// Quiet time after the last event before a scan.
const QUIET: Duration = Duration::from_secs(1);
/// Longest wait for quiet after the first event.
const MAX_SETTLE: Duration = Duration::from_secs(10);
/// How long an archive's size and mtime must stay the same.
const STABLE: Duration = Duration::from_secs(1);
/// Re-scan interval while something waits.
const RETRY: Duration = Duration::from_secs(2);
/// Re-scan interval otherwise (lost events).
const SAFETY_SCAN: Duration = Duration::from_secs(60);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A directory could not be created.
    #[error("app `{app}`: cannot create {path}: {source}")]
    Io {
        /// The app.
        app: String,
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// inotify refused (for example the `max_user_watches` limit).
    #[error("app `{app}`: cannot watch {path}: {source}")]
    Notify {
        /// The app.
        app: String,
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: notify::Error,
    },
}

/// The running watchers; dropping it stops them all.
pub struct WatchHandle {
    apps: Vec<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl WatchHandle {
    /// The apps being watched.
    pub fn apps(&self) -> &[String] {
        &self.apps
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts one watcher task per app with `watch = true` (others are skipped).
/// Creates `<root>/incoming/` when missing. Must be called inside the tokio
/// runtime, after the supervisors have started. Nothing is spawned if any
/// app fails.
pub fn spawn(apps: Vec<(AppConfig, AppHandle)>) -> Result<WatchHandle, WatchError> {
    let mut ready = Vec::new();
    for (cfg, handle) in apps.into_iter().filter(|(cfg, _)| cfg.watch) {
        ready.push(AppWatch::new(cfg, handle)?);
    }
    let apps = ready.iter().map(|(w, _)| w.app.clone()).collect();
    let tasks = ready
        .into_iter()
        .map(|(w, rx)| {
            tracing::info!(app = %w.app, incoming = %w.incoming.display(), "watching for drop-in releases");
            tokio::spawn(w.run(rx))
        })
        .collect();
    Ok(WatchHandle { apps, tasks })
}

/// What a scan leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Nothing waits: scan on the next event.
    Idle,
    /// Something waits: scan again soon.
    Retry,
    /// The agent is shutting down.
    Stop,
}

/// An archive's size and mtime, and since when they have not changed.
struct Seen {
    len: u64,
    mtime: Option<SystemTime>,
    since: Instant,
    announced: bool,
}

/// One app's watcher: its state lives in its task.
struct AppWatch {
    app: String,
    releases: PathBuf,
    incoming: PathBuf,
    dir: AppDir,
    handle: AppHandle,
    watcher: RecommendedWatcher,
    /// `releases/<v>/` directories with a watch of their own.
    watched: BTreeSet<PathBuf>,
    /// Directories this process moved from `releases/` and has not finished.
    moved_here: BTreeSet<PathBuf>,
    /// Archives in `incoming/` by name.
    seen: BTreeMap<OsString, Seen>,
    /// Paths already warned about (while they stay).
    warned: BTreeSet<PathBuf>,
}

impl AppWatch {
    fn new(
        cfg: AppConfig,
        handle: AppHandle,
    ) -> Result<(AppWatch, mpsc::Receiver<()>), WatchError> {
        let app = cfg.name.clone();
        let dir = AppDir::new(cfg.root.clone());
        let releases = dir.releases_dir();
        let incoming = cfg.root.join(INCOMING_DIR);
        for d in [&releases, &incoming] {
            std::fs::create_dir_all(d).map_err(|source| WatchError::Io {
                app: app.clone(),
                path: d.clone(),
                source,
            })?;
        }
        // Capacity 1 and `try_send`: a wake-up already queued covers later events.
        let (tx, rx) = mpsc::channel(1);
        let name = app.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let wake = match res {
                Ok(ev) => relevant(&ev),
                Err(e) => {
                    tracing::warn!(app = %name, "watch error (rescanning): {e}");
                    true
                }
            };
            if wake {
                let _ = tx.try_send(());
            }
        })
        .map_err(|source| WatchError::Notify {
            app: app.clone(),
            path: incoming.clone(),
            source,
        })?;
        for d in [&releases, &incoming] {
            watcher
                .watch(d, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Notify {
                    app: app.clone(),
                    path: d.clone(),
                    source,
                })?;
        }
        let w = AppWatch {
            app,
            releases,
            incoming,
            dir,
            handle,
            watcher,
            watched: BTreeSet::new(),
            moved_here: BTreeSet::new(),
            seen: BTreeMap::new(),
            warned: BTreeSet::new(),
        };
        Ok((w, rx))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<()>) {
        let mut next = self.scan().await;
        loop {
            let wait = match next {
                Next::Stop => return,
                Next::Retry => RETRY,
                Next::Idle => SAFETY_SCAN,
            };
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(None) => return,
                Ok(Some(())) => {
                    if !settle(&mut rx).await {
                        return;
                    }
                }
                Err(_) => {}
            }
            next = self.scan().await;
        }
    }

    async fn scan(&mut self) -> Next {
        let mut listed = BTreeSet::new();
        self.pick_up_directories(&mut listed);
        let mut next = self.deploy_dropped(&mut listed).await;
        if next != Next::Stop {
            next = worst(next, self.deploy_archives(&mut listed).await);
        }
        self.warned.retain(|p| listed.contains(p));
        next
    }

    fn warn_once(&mut self, path: &Path, what: &str) {
        if self.warned.insert(path.to_path_buf()) {
            tracing::warn!(app = %self.app, path = %path.display(), "{what}");
        }
    }

    /// Moves each `releases/<v>/` with a `.ready` marker into `incoming/`,
    /// and keeps one watch per release directory (for the markers).
    fn pick_up_directories(&mut self, listed: &mut BTreeSet<PathBuf>) {
        // Without a readable `current` the active release cannot be told apart: wait.
        let current = match self.dir.current() {
            Ok(c) => c,
            Err(e) => {
                let link = self.dir.current_link();
                listed.insert(link.clone());
                self.warn_once(&link, &format!("drop-in directories wait: {e}"));
                return;
            }
        };
        let entries = match std::fs::read_dir(&self.releases) {
            Ok(rd) => rd,
            Err(e) => {
                let path = self.releases.clone();
                listed.insert(path.clone());
                self.warn_once(&path, &format!("cannot read the directory: {e}"));
                return;
            }
        };
        let mut present = BTreeSet::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(version) = entry
                .file_name()
                .to_str()
                .and_then(|n| Version::parse(n).ok())
            else {
                continue; // hidden work of the agent, or not a release name
            };
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            present.insert(path.clone());
            // Watch before looking for the marker, so that none is missed.
            if !self.watched.contains(&path) {
                match self.watcher.watch(&path, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.watched.insert(path.clone());
                    }
                    Err(e) => {
                        tracing::debug!(app = %self.app, path = %path.display(), "cannot watch: {e}")
                    }
                }
            }
            if current.as_ref() == Some(&version) {
                continue;
            }
            if !std::fs::symlink_metadata(path.join(READY_MARKER)).is_ok_and(|m| m.is_file()) {
                continue; // a copy in progress
            }
            let dest = self.incoming.join(format!(
                "{DROPPED_PREFIX}{version}-{:016x}",
                rand::random::<u64>()
            ));
            match rename_noreplace(&path, &dest) {
                Ok(()) => {
                    tracing::info!(app = %self.app, %version, from = %path.display(), "picked up a release directory");
                    self.moved_here.insert(dest);
                    present.remove(&path);
                    self.watched.remove(&path);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    listed.insert(path.clone());
                    let why = if e.kind() == io::ErrorKind::CrossesDevices {
                        format!(
                            "cannot move a drop-in release to {}: incoming/ must be on the same file system as releases/",
                            self.incoming.display()
                        )
                    } else {
                        format!("cannot move a drop-in release to {}: {e}", dest.display())
                    };
                    self.warn_once(&path, &why);
                }
            }
        }
        let gone: Vec<PathBuf> = self.watched.difference(&present).cloned().collect();
        for path in gone {
            // The kernel drops the watch of a moved or deleted directory itself.
            let _ = self.watcher.unwatch(&path);
            self.watched.remove(&path);
        }
    }

    /// Deploys the directories waiting in `incoming/.dropped-*` (moved by this
    /// scan, waiting for a busy app, or left by an agent that stopped).
    async fn deploy_dropped(&mut self, listed: &mut BTreeSet<PathBuf>) -> Next {
        let mut dropped = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.incoming) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(version) = dropped_version(&entry.file_name()) else {
                    continue;
                };
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    dropped.push((version, path));
                }
            }
        }
        dropped.sort();
        let mut next = Next::Idle;
        for (version, path) in dropped {
            next = worst(next, self.deploy_dir(version, path, listed).await);
            if next == Next::Stop {
                break;
            }
        }
        next
    }

    /// Sends a deploy of `path` as `version` on the watcher's behalf (no
    /// wait). A drop-in archive is opened here without following a link
    /// (and without blocking on a fifo), and staged through that descriptor.
    async fn deploy(&self, path: &Path, version: &Version) -> Result<DeployOutcome, CommandError> {
        use std::os::unix::fs::OpenOptionsExt;
        let meta = DeployMeta::default();
        let opened = if path.is_dir() {
            None
        } else {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| crate::release::ReleaseError::Source {
                    path: path.to_path_buf(),
                    reason: format!("cannot open it without following a link: {e}"),
                })?;
            Some(file)
        };
        let source = crate::supervisor::Source {
            path: path.to_path_buf(),
            opened,
        };
        self.handle
            .deploy(source, version.clone(), watch_actor(), false, meta)
            .await
    }

    async fn deploy_dir(
        &mut self,
        version: Version,
        path: PathBuf,
        listed: &mut BTreeSet<PathBuf>,
    ) -> Next {
        // The marker must not end up in the release (it would be picked up again).
        match std::fs::remove_file(path.join(READY_MARKER)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                listed.insert(path.clone());
                self.warn_once(
                    &path,
                    &format!("cannot remove its {READY_MARKER} marker, not deployed: {e}"),
                );
                return Next::Idle;
            }
        }
        let outcome = self.deploy(&path, &version).await;
        match outcome {
            Ok(outcome) => {
                tracing::info!(app = %self.app, %version, outcome = outcome_text(&outcome), "drop-in release deployed");
            }
            Err(CommandError::Busy { state, .. }) => {
                tracing::debug!(app = %self.app, %version, state, "app busy: drop-in release waits");
                listed.insert(path);
                return Next::Retry;
            }
            Err(CommandError::ShuttingDown) => return Next::Stop,
            Err(e @ CommandError::ReleaseExists { .. }) => {
                let home = self.dir.release_path(&version);
                if self.moved_here.contains(&path) && rename_noreplace(&path, &home).is_ok() {
                    // Not ours to delete: it goes back where it was found, without its marker.
                    tracing::warn!(app = %self.app, %version, path = %home.display(), "drop-in not deployed, left in releases/ without its {READY_MARKER} marker: {}", error_text(&e));
                    self.moved_here.remove(&path);
                    return Next::Idle;
                }
                tracing::warn!(app = %self.app, %version, "drop-in release refused: {}", error_text(&e));
            }
            Err(e) => {
                tracing::warn!(app = %self.app, %version, "drop-in release refused: {}", error_text(&e));
            }
        }
        self.moved_here.remove(&path);
        remove_tree(&self.app, path).await;
        Next::Idle
    }

    /// Deploys the archives in `incoming/` whose size has settled.
    async fn deploy_archives(&mut self, listed: &mut BTreeSet<PathBuf>) -> Next {
        let entries = match std::fs::read_dir(&self.incoming) {
            Ok(rd) => rd,
            Err(e) => {
                let path = self.incoming.clone();
                listed.insert(path.clone());
                self.warn_once(&path, &format!("cannot read the directory: {e}"));
                return Next::Idle;
            }
        };
        let mut names: Vec<OsString> = entries.flatten().map(|e| e.file_name()).collect();
        names.sort();
        let mut next = Next::Idle;
        let mut present = BTreeSet::new();
        for name in names {
            let bytes = name.as_bytes();
            if bytes.starts_with(b".") || bytes == FAILED_DIR.as_bytes() {
                continue;
            }
            let path = self.incoming.join(&name);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue; // gone since the listing
            };
            listed.insert(path.clone());
            let Some(suffix) = ARCHIVE_SUFFIXES
                .iter()
                .find(|s| bytes.len() > s.len() && bytes.ends_with(s.as_bytes()))
            else {
                self.warn_once(&path, "ignored: incoming/ takes .tar.gz, .tgz, .tar.zst or .tzst archives (directories go to releases/<version>/ with a .ready marker)");
                continue;
            };
            if !meta.is_file() {
                self.warn_once(&path, "ignored: not a regular file");
                continue;
            }
            present.insert(name.clone());
            let (len, mtime) = (meta.len(), meta.modified().ok());
            let seen = self.seen.entry(name.clone()).or_insert(Seen {
                len,
                mtime,
                since: Instant::now(),
                announced: false,
            });
            if seen.len != len || seen.mtime != mtime {
                (seen.len, seen.mtime, seen.since) = (len, mtime, Instant::now());
            }
            if seen.since.elapsed() < STABLE {
                next = worst(next, Next::Retry); // still being written, or just seen
                continue;
            }
            let first = !std::mem::replace(&mut seen.announced, true);
            let stem = &bytes[..bytes.len() - suffix.len()];
            let version = std::str::from_utf8(stem)
                .map_err(|_| "it is not UTF-8".to_string())
                .and_then(|s| Version::parse(s).map_err(|e| e.to_string()));
            let version = match version {
                Ok(v) => v,
                Err(why) => {
                    tracing::warn!(app = %self.app, file = %path.display(), "archive name is not a release version ({why}): moved to {FAILED_DIR}/");
                    self.move_to_failed(&path, &name);
                    continue;
                }
            };
            if first {
                tracing::info!(app = %self.app, %version, file = %path.display(), "picked up an archive");
            }
            let outcome = self.deploy(&path, &version).await;
            match outcome {
                Ok(outcome) => {
                    tracing::info!(app = %self.app, %version, outcome = outcome_text(&outcome), "drop-in archive deployed");
                    if let Err(e) = std::fs::remove_file(&path) {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!(app = %self.app, file = %path.display(), "cannot remove the deployed archive: {e}");
                        }
                    }
                }
                Err(CommandError::Busy { state, .. }) => {
                    tracing::debug!(app = %self.app, %version, state, "app busy: drop-in archive waits");
                    next = worst(next, Next::Retry);
                }
                Err(CommandError::ShuttingDown) => return Next::Stop,
                Err(e) => {
                    tracing::warn!(app = %self.app, %version, file = %path.display(), "drop-in archive refused, moved to {FAILED_DIR}/: {}", error_text(&e));
                    self.move_to_failed(&path, &name);
                }
            }
        }
        self.seen.retain(|n, _| present.contains(n));
        next
    }

    /// Moves `incoming/<name>` to `incoming/failed/<name>` (never over another file).
    fn move_to_failed(&mut self, path: &Path, name: &OsString) {
        let failed = self.incoming.join(FAILED_DIR);
        if let Err(e) = std::fs::create_dir_all(&failed) {
            self.warn_once(path, &format!("cannot create {}: {e}", failed.display()));
            return;
        }
        let mut dest = failed.join(name);
        for _ in 0..8 {
            match rename_noreplace(path, &dest) {
                Ok(()) => {
                    self.seen.remove(name);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let mut other = name.clone();
                    other.push(format!(".{:08x}", rand::random::<u32>()));
                    dest = failed.join(other);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) => {
                    self.warn_once(path, &format!("cannot move to {}: {e}", dest.display()));
                    return;
                }
            }
        }
    }
}

/// Waits for a second without events (at most `MAX_SETTLE`); false if the
/// watcher is gone.
async fn settle(rx: &mut mpsc::Receiver<()>) -> bool {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(QUIET, rx.recv()).await {
            Ok(Some(())) if start.elapsed() < MAX_SETTLE => continue,
            Ok(Some(())) | Err(_) => return true,
            Ok(None) => return false,
        }
    }
}

/// Whether an event can change what a scan finds: creations, removals,
/// renames and writes of visible names or of a `.ready` marker (opens, and
/// the agent's own hidden work, are not).
fn relevant(ev: &notify::Event) -> bool {
    use notify::EventKind;
    if ev.need_rescan() {
        return true;
    }
    let kind = matches!(
        ev.kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    kind && ev.paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n == READY_MARKER || !n.as_bytes().starts_with(b"."))
    })
}

/// The version in `.dropped-<v>-<random>`.
fn dropped_version(name: &std::ffi::OsStr) -> Option<Version> {
    let rest = name.to_str()?.strip_prefix(DROPPED_PREFIX)?;
    let (version, tag) = rest.rsplit_once('-')?;
    if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Version::parse(version).ok()
}

fn worst(a: Next, b: Next) -> Next {
    match (a, b) {
        (Next::Stop, _) | (_, Next::Stop) => Next::Stop,
        (Next::Retry, _) | (_, Next::Retry) => Next::Retry,
        _ => Next::Idle,
    }
}

fn watch_actor() -> Actor {
    Actor {
        uid: None,
        name: "watch".into(),
    }
}

fn outcome_text(o: &DeployOutcome) -> String {
    match o {
        DeployOutcome::Baking => "baking".into(),
        DeployOutcome::Good => "good".into(),
        DeployOutcome::RolledBack { to, reason } => format!("rolled back to {to}: {reason}"),
        DeployOutcome::Degraded { reason } => format!("degraded: {reason}"),
        DeployOutcome::Held { reason } => format!("held: {reason}"),
    }
}

fn error_text(e: &CommandError) -> String {
    crate::error_text(std::iter::successors(
        Some(e as &(dyn std::error::Error + 'static)),
        |e| e.source(),
    ))
}

/// Removes a directory tree on the blocking pool; failures are logged.
async fn remove_tree(app: &str, path: PathBuf) {
    let p = path.clone();
    let r = tokio::task::spawn_blocking(move || crate::fsutil::remove_tree(&p)).await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
        Ok(Err(e)) => tracing::warn!(app, path = %path.display(), "cannot remove: {e}"),
        Err(e) => tracing::warn!(app, path = %path.display(), "cannot remove: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};
    use notify::{Event, EventKind};

    #[test]
    fn dropped_names_carry_their_version() {
        let v = |s: &str| dropped_version(std::ffi::OsStr::new(s)).map(|v| v.to_string());
        assert_eq!(
            v(".dropped-1.2.3-00ff00ff00ff00ff").as_deref(),
            Some("1.2.3")
        );
        assert_eq!(v(".dropped-1.2.3-rc-1-0a").as_deref(), Some("1.2.3-rc-1"));
        for bad in [
            ".dropped-",
            ".dropped-1.0",
            ".dropped-1.0-",
            ".dropped--0a",
            ".dropped-..-0a",
            "1.0-0a",
            ".dropped-1.0-xyz",
        ] {
            assert_eq!(v(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_visible_changes_and_markers_wake_a_scan() {
        let ev = |kind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        let create = EventKind::Create(CreateKind::File);
        assert!(relevant(&ev(create, "/r/incoming/1.0.tar.gz")));
        assert!(relevant(&ev(create, "/r/releases/1.0/.ready")));
        assert!(!relevant(&ev(create, "/r/incoming/.tmp-x")));
        assert!(!relevant(&ev(create, "/r/releases/.staging-1")));
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!relevant(&ev(open, "/r/releases/1.0/app.py")));
        let renamed = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path(PathBuf::from("/r/incoming/.tmp-x"))
            .add_path(PathBuf::from("/r/incoming/1.1.tar.gz"));
        assert!(relevant(&renamed));
    }

    #[test]
    fn waits_combine_to_the_most_urgent() {
        assert_eq!(worst(Next::Idle, Next::Idle), Next::Idle);
        assert_eq!(worst(Next::Idle, Next::Retry), Next::Retry);
        assert_eq!(worst(Next::Retry, Next::Stop), Next::Stop);
    }
}
