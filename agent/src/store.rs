//! The agent's persistent state in sled: apps, releases and the audit log.
//!
//! Owns three trees: `apps` (one record per app: state, active version, last
//! good version, last check results),
//! `releases` (one record per app and version) and `events` (an append-only
//! log, keyed by app and a monotonically increasing id, newest last).
//! Records are JSON so that they stay readable and forward compatible.
//!
//! Must never know about plugins, policy, sockets or supervisors, and never
//! decide anything: it stores what it is told. The `current` symlink, not this
//! store, is the truth about what is active; callers reconcile.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use crate::domain::{
    now_ms, Actor, App, AppState, CheckStatus, Event, EventKind, Outcome, Release, ReleaseState,
};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption, lock held by another process).
    #[error("state store: {0}")]
    Db(#[from] sled::Error),
    /// A record could not be encoded or decoded.
    #[error("state store record {key}: {source}")]
    Codec {
        /// The record's key, printable.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

// The stored form of the records: private, so that the encoding can evolve
// (new fields default) without the rest of the agent seeing it.

#[derive(Serialize, Deserialize)]
struct CheckRow {
    outcome: Outcome,
    summary: String,
    at_ms: u64,
    duration_ms: u64,
    consecutive_failures: u32,
    #[serde(default)]
    runs: u64,
    #[serde(default)]
    http_retries: u32,
    #[serde(default)]
    metrics: BTreeMap<String, f64>,
}

#[derive(Serialize, Deserialize)]
struct AppRow {
    name: String,
    state: AppState,
    active: Option<String>,
    last_good: Option<String>,
    reason: Option<String>,
    bake_until_ms: Option<u64>,
    #[serde(default)]
    checks: BTreeMap<String, CheckRow>,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    restored: bool,
    updated_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct ReleaseRow {
    app: String,
    version: String,
    state: ReleaseState,
    source: Option<String>,
    created_at_ms: u64,
    activated_at_ms: Option<u64>,
    decided_at_ms: Option<u64>,
    reason: Option<String>,
    #[serde(default)]
    commit: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

/// Moves fields between a domain type and its row, both ways.
macro_rules! row {
    ($domain:ident <-> $row:ident { $($field:ident),* } maps { $($mapped:ident),* }) => {
        impl From<$domain> for $row {
            fn from(d: $domain) -> Self {
                $row {
                    $($field: d.$field,)*
                    $($mapped: d.$mapped.into_iter().map(|(k, v)| (k, v.into())).collect(),)*
                }
            }
        }
        impl From<$row> for $domain {
            fn from(r: $row) -> Self {
                $domain {
                    $($field: r.$field,)*
                    $($mapped: r.$mapped.into_iter().map(|(k, v)| (k, v.into())).collect(),)*
                }
            }
        }
    };
}

row!(CheckStatus <-> CheckRow {
    outcome, summary, at_ms, duration_ms, consecutive_failures, runs, http_retries, metrics
} maps {});
row!(App <-> AppRow {
    name, state, active, last_good, reason, bake_until_ms, paused, restored, updated_at_ms
} maps { checks });
row!(Release <-> ReleaseRow {
    app, version, state, source, created_at_ms, activated_at_ms, decided_at_ms, reason,
    commit, tag, message, digest
} maps {});

/// The most memory sled's page cache holds (its default is 1 GiB, which a
/// long history filled): the agent's working set is its apps and the
/// newest events, a small part of the log.
const CACHE_BYTES: u64 = 8 << 20;

/// How often sled's flusher makes unflushed writes (plugin kv, a check's
/// change of outcome) durable: each round wakes a thread, and an idle agent
/// should sleep; everything that must survive a crash is flushed at once.
const FLUSH_EVERY_MS: u64 = 2_000;

/// How long start-up waits for the database lock. Right after a `kill -9`
/// of the agent the lock can still be held for a moment (the kill tests
/// saw a restart refused about half the time without this wait).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the database, waiting up to [`LOCK_WAIT`] while another process
/// holds its lock; any other error at once.
fn open_db(dir: &Path) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(Some(FLUSH_EVERY_MS))
            .open();
        match opened {
            Err(sled::Error::Io(e)) if lock_held(&e) && std::time::Instant::now() < deadline => {
                tracing::warn!(dir = %dir.display(), "the state store is locked by another process; waiting");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return Ok(other?),
        }
    }
}

/// Whether an open failed only because another process holds the lock.
/// sled reports that as `ErrorKind::Other` with the lock's `WouldBlock`
/// only in its message, so both are recognised.
fn lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().starts_with("could not acquire lock")
}

/// The sled database and its trees.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    apps: sled::Tree,
    releases: sled::Tree,
    events: sled::Tree,
    kv: sled::Tree,
    /// Every recorded event is also published here, for live watchers.
    feed: crate::live::Feed,
    /// Whether writes fail, and the events waiting for them to work again.
    health: std::sync::Arc<Health>,
    /// App records newer than their stored form, held in memory only (check
    /// results that changed no outcome); reads see these first.
    unsaved: std::sync::Arc<std::sync::Mutex<BTreeMap<String, App>>>,
    /// This handle's held flushes ([`Store::hold_flushes`]); not shared
    /// with its clones.
    hold: Hold,
}

/// Flushes a handle holds back until [`Store::commit`]: one flush (one
/// fsync) for the records of a whole lifecycle step instead of one each.
#[derive(Default)]
struct Hold {
    on: AtomicBool,
    owed: AtomicBool,
}

impl Clone for Hold {
    /// A clone flushes on its own: a task handed the store never waits for
    /// a commit that its giver owes.
    fn clone(&self) -> Hold {
        Hold::default()
    }
}

/// What one [`Store::prune_events`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Events removed.
    pub removed: usize,
    /// Events read (those removed and, per app, the one that ended its pass).
    pub read: usize,
}

/// Most events kept in memory while the store cannot be written.
const MAX_QUEUED_EVENTS: usize = 10_000;

#[derive(Default)]
struct Health {
    /// The last write error, while writes fail.
    unwritable: std::sync::Mutex<Option<String>>,
    /// Events that could not be written yet, oldest first.
    queued: std::sync::Mutex<std::collections::VecDeque<Event>>,
    /// Flushes of the log that reached the disk's sync (each an fsync).
    flushes: std::sync::atomic::AtomicU64,
    /// Held while events are appended: an append rewrites its app's last
    /// chunk, which two writers at once would each rewrite without the
    /// other's event.
    appending: std::sync::Mutex<()>,
}

/// One plugin entry's key-value space (tree `kv`, keys `app NUL entry NUL key`).
#[derive(Clone)]
pub struct KvSpace {
    tree: sled::Tree,
    prefix: Vec<u8>,
}

impl KvSpace {
    fn key(&self, key: &str) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(self.key(key))?.map(|v| v.to_vec()))
    }

    /// Stores `value` under `key` (not flushed: plugin state is best effort
    /// between two flushes of the store).
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.tree.insert(self.key(key), value)?;
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.tree.remove(self.key(key))?;
        Ok(())
    }

    /// Keys starting with `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.tree
            .scan_prefix(self.key(prefix))
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?[self.prefix.len()..]).into_owned()))
            .collect()
    }

    /// Bytes used by keys and values.
    pub fn usage(&self) -> Result<u64> {
        let mut total = 0u64;
        for kv in self.tree.scan_prefix(&self.prefix) {
            let (k, v) = kv?;
            total += (k.len() - self.prefix.len() + v.len()) as u64;
        }
        Ok(total)
    }
}

fn release_key(app: &str, version: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(app.len() + version.len() + 1);
    k.extend_from_slice(app.as_bytes());
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

fn app_prefix(app: &str) -> Vec<u8> {
    let mut k = app.as_bytes().to_vec();
    k.push(0);
    k
}

/// Events of one app stored together in one value (a JSON array), keyed by
/// the first one's id. sled splits its leaves at 16 entries whatever their
/// size, so one value per event made its page table grow with the history
/// (a million events: 100,000 pages, 20 MiB of memory and a slow open).
const CHUNK: usize = 16;

/// The key of the chunk whose first event is `id`.
fn event_key(app: &str, id: u64) -> Vec<u8> {
    let mut key = app_prefix(app);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// A stored chunk: a JSON array, or one event as stores before chunks wrote
/// them (a chunk of one). `T` is `Event`, or the part of it a reader needs.
fn decode_chunk<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<Vec<T>> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        decode(key, bytes)
    } else {
        decode(key, bytes).map(|one| vec![one])
    }
}

fn encode<T: Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| StoreError::Codec {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        source,
    })
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Codec {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        source,
    })
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        let db = open_db(dir)?;
        Ok(Store {
            apps: db.open_tree("apps")?,
            releases: db.open_tree("releases")?,
            events: db.open_tree("events")?,
            kv: db.open_tree("kv")?,
            db,
            feed: crate::live::Feed::default(),
            health: Default::default(),
            unsaved: Default::default(),
            hold: Hold::default(),
        })
    }

    /// Why the store cannot be written, while that lasts (the last write
    /// failed); `None` when the last write worked.
    pub fn unwritable(&self) -> Option<String> {
        lock(&self.health.unwritable).clone()
    }

    /// Notes the outcome of a write.
    fn wrote<T>(&self, r: Result<T>) -> Result<T> {
        let was = {
            let mut u = lock(&self.health.unwritable);
            match &r {
                Ok(_) => u.take(),
                Err(e) => {
                    if u.is_none() {
                        tracing::error!("the state store cannot be written: {e}");
                        crate::metrics::global().store_writable(false);
                    }
                    *u = Some(e.to_string());
                    None
                }
            }
        };
        if was.is_some() {
            tracing::info!("the state store can be written again");
            crate::metrics::global().store_writable(true);
        }
        r
    }

    /// The live feed: recorded events, and what the supervisors publish.
    pub fn feed(&self) -> &crate::live::Feed {
        &self.feed
    }

    /// Makes everything written so far durable; on a handle holding its
    /// flushes, only notes that a flush is owed. A store that failed its
    /// last write is flushed at once all the same, so that each write finds
    /// out whether the disk took it (and queues its events if not).
    pub fn flush(&self) -> Result<()> {
        if self.hold.on.load(Relaxed) && self.unwritable().is_none() {
            self.hold.owed.store(true, Relaxed);
            return Ok(());
        }
        self.sync()
    }

    fn sync(&self) -> Result<()> {
        self.health.flushes.fetch_add(1, Relaxed);
        self.db.flush()?;
        Ok(())
    }

    /// How many times the store was flushed to disk so far (by any handle).
    pub fn flushes(&self) -> u64 {
        self.health.flushes.load(Relaxed)
    }

    /// From now on this handle's writes are durable only at the next
    /// [`Store::commit`] (or [`Store::release_flushes`]). For a caller that
    /// writes several records of one step and has a journal to redo the
    /// step should it crash before the commit.
    pub fn hold_flushes(&self) {
        self.hold.on.store(true, Relaxed);
    }

    /// Makes what this handle wrote durable, if a flush is owed (one fsync).
    pub fn commit(&self) -> Result<()> {
        if self.hold.owed.swap(false, Relaxed) {
            let r = self.sync();
            self.wrote(r)?;
        }
        Ok(())
    }

    /// Ends [`Store::hold_flushes`]: commits, and flushes at once again.
    pub fn release_flushes(&self) -> Result<()> {
        self.hold.on.store(false, Relaxed);
        self.commit()
    }

    /// Writes the records held only in memory ([`Store::keep_app`]) and
    /// flushes (at shutdown).
    pub fn save_unsaved(&self) -> Result<()> {
        let unsaved = std::mem::take(&mut *lock(&self.unsaved));
        for app in unsaved.values() {
            self.put_app_lazy(app)?;
        }
        self.flush()
    }

    /// The app's record, if it was ever written (or kept).
    pub fn app(&self, name: &str) -> Result<Option<App>> {
        if let Some(app) = lock(&self.unsaved).get(name) {
            return Ok(Some(app.clone()));
        }
        self.apps
            .get(name.as_bytes())?
            .map(|v| decode::<AppRow>(name.as_bytes(), &v).map(App::from))
            .transpose()
    }

    /// Every app record, by name.
    pub fn apps(&self) -> Result<Vec<App>> {
        let mut apps: BTreeMap<String, App> = self
            .apps
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let app = App::from(decode::<AppRow>(&k, &v)?);
                Ok((app.name.clone(), app))
            })
            .collect::<Result<_>>()?;
        // Kept records are newer than their stored form (or have none yet).
        apps.extend(lock(&self.unsaved).clone());
        Ok(apps.into_values().collect())
    }

    /// Writes the app's record durably.
    pub fn put_app(&self, mut app: App) -> Result<()> {
        app.updated_at_ms = now_ms();
        let key = app.name.as_bytes().to_vec();
        lock(&self.unsaved).remove(&app.name);
        let row = AppRow::from(app);
        let r = (|| {
            self.apps.insert(&key, encode(&key, &row)?)?;
            self.flush()
        })();
        self.wrote(r)?;
        self.write_queued();
        Ok(())
    }

    /// Writes the app's record without waiting for the disk (for check results).
    pub fn put_app_lazy(&self, app: &App) -> Result<()> {
        let key = app.name.as_bytes();
        lock(&self.unsaved).remove(&app.name);
        self.apps
            .insert(key, encode(key, &AppRow::from(app.clone()))?)?;
        Ok(())
    }

    /// Keeps the app's record in memory only: readers see it, nothing is
    /// written (a check result that changed no outcome). The next
    /// [`Store::put_app`] or [`Store::put_app_lazy`] of the app writes it.
    pub fn keep_app(&self, app: &App) {
        lock(&self.unsaved).insert(app.name.clone(), app.clone());
    }

    /// One release's record.
    pub fn release(&self, app: &str, version: &str) -> Result<Option<Release>> {
        let key = release_key(app, version);
        self.releases
            .get(&key)?
            .map(|v| decode::<ReleaseRow>(&key, &v).map(Release::from))
            .transpose()
    }

    /// All release records of an app, by version name.
    pub fn releases(&self, app: &str) -> Result<Vec<Release>> {
        self.releases
            .scan_prefix(app_prefix(app))
            .map(|kv| {
                let (k, v) = kv?;
                decode::<ReleaseRow>(&k, &v).map(Release::from)
            })
            .collect()
    }

    /// Writes a release record durably.
    pub fn put_release(&self, release: &Release) -> Result<()> {
        let key = release_key(&release.app, &release.version);
        let row = ReleaseRow::from(release.clone());
        let r = (|| {
            self.releases.insert(&key, encode(&key, &row)?)?;
            self.flush()
        })();
        self.wrote(r)
    }

    /// Removes a release record (its directory is gone).
    pub fn delete_release(&self, app: &str, version: &str) -> Result<()> {
        let r = (|| {
            self.releases.remove(release_key(app, version))?;
            self.flush()
        })();
        self.wrote(r)
    }

    /// The key-value space of one plugin entry (`check:NAME`, `hook:NAME`) of an app.
    pub fn kv_space(&self, app: &str, entry: &str) -> KvSpace {
        let mut prefix = app_prefix(app);
        prefix.extend_from_slice(entry.as_bytes());
        prefix.push(0);
        KvSpace {
            tree: self.kv.clone(),
            prefix,
        }
    }

    /// Appends an event durably and returns it with its id.
    ///
    /// An event that cannot be written is logged, published and queued in
    /// memory (at most 10,000, the oldest dropped first); queued events are
    /// written, in order, before the next event or app record that can be.
    pub fn record(&self, event: Event) -> Result<Event> {
        self.write_queued();
        match self.insert_event(event.clone(), true) {
            Ok(event) => Ok(event),
            Err(e) => {
                tracing::warn!(
                    app = %event.app,
                    kind = event.kind.as_str(),
                    version = event.version.as_deref().unwrap_or(""),
                    reason = event.reason.as_deref().unwrap_or(""),
                    "event not recorded yet (store unwritable), queued"
                );
                self.feed.publish(crate::live::LiveEvent::recorded(&event));
                let mut q = lock(&self.health.queued);
                if q.len() >= MAX_QUEUED_EVENTS {
                    q.pop_front();
                }
                q.push_back(event);
                Err(e)
            }
        }
    }

    /// Appends events durably, in order, with one flush; returns them with
    /// their ids. For a batch (the agent benchmark fills a history with
    /// it); `record` is the way for one event.
    pub fn record_all(&self, mut events: Vec<Event>) -> Result<Vec<Event>> {
        self.write_queued();
        self.insert_events(&mut events, true)?;
        Ok(events)
    }

    /// Writes one event; `publish` it to the live feed once written.
    fn insert_event(&self, mut event: Event, publish: bool) -> Result<Event> {
        self.insert_events(std::slice::from_mut(&mut event), publish)?;
        Ok(event)
    }

    /// Writes `events` (giving each its id) and flushes once; `publish`
    /// them to the live feed once written.
    fn insert_events(&self, events: &mut [Event], publish: bool) -> Result<()> {
        let r = (|| {
            self.append_events(events)?;
            self.flush()
        })();
        self.wrote(r)?;
        if publish {
            for event in events.iter() {
                self.feed.publish(crate::live::LiveEvent::recorded(event));
            }
        }
        Ok(())
    }

    /// Gives each event its id and adds it to its app's last chunk, or
    /// starts a chunk when that one is full (not flushed).
    fn append_events(&self, events: &mut [Event]) -> Result<()> {
        /// An app's last chunk: its key, its events, whether it changed.
        struct Open {
            key: Vec<u8>,
            events: Vec<Event>,
            changed: bool,
        }
        let _one_writer = lock(&self.health.appending);
        let mut open: BTreeMap<String, Open> = BTreeMap::new();
        for event in events.iter_mut() {
            event.id = self.db.generate_id()?;
            let chunk = match open.entry(event.app.clone()) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let last = self.events.scan_prefix(app_prefix(&event.app)).next_back();
                    let (key, events) = match last {
                        Some(kv) => {
                            let (k, bytes) = kv?;
                            let events = decode_chunk(&k, &bytes)?;
                            (k.to_vec(), events)
                        }
                        None => (Vec::new(), Vec::new()),
                    };
                    v.insert(Open {
                        key,
                        events,
                        changed: false,
                    })
                }
            };
            if chunk.key.is_empty() || chunk.events.len() >= CHUNK {
                if chunk.changed {
                    self.events
                        .insert(&chunk.key, encode(&chunk.key, &chunk.events)?)?;
                }
                chunk.key = event_key(&event.app, event.id);
                chunk.events.clear();
            }
            chunk.events.push(event.clone());
            chunk.changed = true;
        }
        for chunk in open.values().filter(|c| c.changed) {
            self.events
                .insert(&chunk.key, encode(&chunk.key, &chunk.events)?)?;
        }
        Ok(())
    }

    /// Writes queued events, oldest first, in one batch; all stay queued
    /// if it fails.
    fn write_queued(&self) {
        let mut queued: Vec<Event> = lock(&self.health.queued).drain(..).collect();
        if queued.is_empty() {
            return;
        }
        // Published when they happened; only written now.
        if self.insert_events(&mut queued, false).is_err() {
            let mut q = lock(&self.health.queued);
            for event in queued.into_iter().rev() {
                q.push_front(event);
            }
        }
    }

    /// Removes events older than `cutoff_ms` (any app), at most `budget` of
    /// them. Incremental, never a scan of the whole log: an app's event ids
    /// grow with time, so its oldest come first and its first event at or
    /// after the cutoff ends its pass; the next app is found by seeking past
    /// the last one's keys. It reads the events it removes and one more per
    /// app. `Pruned::removed == budget` means there may be more.
    pub fn prune_events(&self, cutoff_ms: u64, budget: usize) -> Result<Pruned> {
        /// The one field pruning needs (the rest of an event is not decoded).
        #[derive(Deserialize)]
        struct At {
            at_ms: u64,
        }
        let mut pruned = Pruned::default();
        let mut from: Vec<u8> = Vec::new();
        let _one_writer = lock(&self.health.appending);
        'apps: while let Some(first) = self.events.range(from.as_slice()..).next() {
            let (key, _) = first?;
            let Some(end) = key.iter().position(|b| *b == 0) else {
                // Not an event key (never written by this store): step over it.
                from = key.to_vec();
                from.push(0);
                continue;
            };
            for kv in self.events.scan_prefix(&key[..=end]) {
                let (k, v) = kv?;
                let times: Vec<At> = decode_chunk(&k, &v)?;
                pruned.read += times.len();
                let old = times.iter().take_while(|t| t.at_ms < cutoff_ms).count();
                let take = old.min(budget - pruned.removed);
                if take == times.len() {
                    self.events.remove(&k)?;
                } else if take > 0 {
                    // The chunk keeps its key: its first event is newer, and
                    // still older than the next chunk's.
                    let mut events: Vec<Event> = decode_chunk(&k, &v)?;
                    events.drain(..take);
                    self.events.insert(&k, encode(&k, &events)?)?;
                }
                pruned.removed += take;
                if take < old {
                    break 'apps;
                }
                if old < times.len() {
                    break;
                }
            }
            from = key[..end].to_vec();
            from.push(1);
        }
        if pruned.removed > 0 {
            self.flush()?;
        }
        Ok(pruned)
    }

    /// The app's newest event of `kind` among its newest `within` events;
    /// reads only up to it.
    pub fn last_event(&self, app: &str, kind: EventKind, within: usize) -> Result<Option<Event>> {
        for event in self.newest_first(app).take(within) {
            let event = event?;
            if event.kind == kind {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// The app's events, newest first, decoded a chunk at a time as the
    /// caller goes on.
    fn newest_first(&self, app: &str) -> impl Iterator<Item = Result<Event>> {
        self.events
            .scan_prefix(app_prefix(app))
            .rev()
            .flat_map(|kv| {
                let chunk = kv
                    .map_err(StoreError::from)
                    .and_then(|(k, v)| decode_chunk::<Event>(&k, &v));
                match chunk {
                    Ok(events) => events.into_iter().rev().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                }
            })
    }

    /// The app's events, newest first, at most `limit`.
    pub fn history(&self, app: &str, limit: usize) -> Result<Vec<Event>> {
        self.newest_first(app).take(limit).collect()
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn release(app: &str, v: &str, state: ReleaseState) -> Release {
        Release::new(app, v, state)
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut app = App::new("shop");
            app.active = Some("1.0.0".into());
            app.state = AppState::Healthy;
            s.put_app(app).unwrap();
            s.put_release(&release("shop", "1.0.0", ReleaseState::Good))
                .unwrap();
            s.record(Event::new("shop", Actor::agent(), EventKind::MarkedGood).version("1.0.0"))
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let app = s.app("shop").unwrap().unwrap();
        assert_eq!(app.state, AppState::Healthy);
        assert_eq!(app.active.as_deref(), Some("1.0.0"));
        assert_eq!(
            s.release("shop", "1.0.0").unwrap().unwrap().state,
            ReleaseState::Good
        );
        assert_eq!(
            s.history("shop", 10).unwrap()[0].kind,
            EventKind::MarkedGood
        );
        assert!(s.app("other").unwrap().is_none());
    }

    #[test]
    fn a_held_handle_flushes_once_at_its_commit_and_its_clones_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.hold_flushes();
        let before = s.flushes();
        let mut app = App::new("shop");
        app.active = Some("1.0.0".into());
        s.put_app(app).unwrap();
        s.put_release(&release("shop", "1.0.0", ReleaseState::Active))
            .unwrap();
        s.record(Event::new("shop", Actor::agent(), EventKind::Activated).version("1.0.0"))
            .unwrap();
        assert_eq!(s.flushes(), before, "held: nothing flushed yet");
        // Readers see the writes at once.
        assert_eq!(
            s.app("shop").unwrap().unwrap().active.as_deref(),
            Some("1.0.0")
        );
        assert_eq!(s.history("shop", 1).unwrap()[0].kind, EventKind::Activated);
        // A clone is not held.
        let other = s.clone();
        other
            .put_release(&release("shop", "0.9.0", ReleaseState::Good))
            .unwrap();
        assert_eq!(s.flushes(), before + 1, "the clone flushed at once");
        s.commit().unwrap();
        assert_eq!(s.flushes(), before + 2, "one flush for the three records");
        s.commit().unwrap();
        assert_eq!(s.flushes(), before + 2, "nothing owed: no flush");
        s.put_release(&release("shop", "1.0.0", ReleaseState::Good))
            .unwrap();
        s.release_flushes().unwrap();
        assert_eq!(s.flushes(), before + 3);
        s.put_release(&release("shop", "1.0.0", ReleaseState::Good))
            .unwrap();
        assert_eq!(
            s.flushes(),
            before + 4,
            "released: each write flushes again"
        );
        drop((s, other));
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.releases("shop").unwrap().len(), 2);
        assert_eq!(s.history("shop", 1).unwrap()[0].kind, EventKind::Activated);
    }

    #[test]
    fn a_kept_record_is_read_at_once_but_written_only_when_saved() {
        let dir = tempfile::tempdir().unwrap();
        let pass = |summary: &str| CheckStatus {
            outcome: Outcome::Pass,
            summary: summary.into(),
            at_ms: 1,
            duration_ms: 1,
            consecutive_failures: 0,
            runs: 1,
            http_retries: 0,
            metrics: Default::default(),
        };
        {
            let s = Store::open(dir.path()).unwrap();
            let mut app = App::new("shop");
            app.checks.insert("http".into(), pass("written"));
            s.put_app(app.clone()).unwrap();
            app.checks.insert("http".into(), pass("kept"));
            s.keep_app(&app);
            let mut other = App::new("cart");
            other.checks.insert("http".into(), pass("kept"));
            s.keep_app(&other);
            // Readers see the newest record, stored or kept.
            assert_eq!(
                s.app("shop").unwrap().unwrap().checks["http"].summary,
                "kept"
            );
            let names: Vec<_> = s.apps().unwrap().into_iter().map(|a| a.name).collect();
            assert_eq!(names, ["cart", "shop"]);
            s.flush().unwrap();
        }
        {
            // Nothing kept reached the disk.
            let s = Store::open(dir.path()).unwrap();
            let app = s.app("shop").unwrap().unwrap();
            assert_eq!(app.checks["http"].summary, "written");
            assert!(s.app("cart").unwrap().is_none());
            // A later write replaces what was kept; shutdown saves the rest.
            let mut app2 = app.clone();
            app2.checks.insert("http".into(), pass("kept again"));
            s.keep_app(&app2);
            s.put_app_lazy(&app).unwrap();
            assert_eq!(
                s.app("shop").unwrap().unwrap().checks["http"].summary,
                "written"
            );
            s.keep_app(&app2);
            s.save_unsaved().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.app("shop").unwrap().unwrap().checks["http"].summary,
            "kept again"
        );
    }

    #[test]
    fn open_waits_for_a_lock_another_holder_lets_go_of() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            // Let go only once the second open has been refused at least once.
            rx.recv().unwrap();
            drop(first);
        });
        let path = dir.path().to_path_buf();
        let second = std::thread::spawn(move || Store::open(&path));
        // The second open is refused (and retrying) while the first holds it.
        let refused = sled::Config::new().path(dir.path()).open();
        let Err(sled::Error::Io(e)) = refused else {
            panic!("a held store opened twice");
        };
        assert!(lock_held(&e), "{e}");
        tx.send(()).unwrap();
        holder.join().unwrap();
        second.join().unwrap().unwrap();
    }

    #[test]
    fn releases_and_history_are_scoped_per_app() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // "shop" is a prefix of "shop2": the NUL separator must keep them apart.
        s.put_release(&release("shop", "1", ReleaseState::Good))
            .unwrap();
        s.put_release(&release("shop2", "1", ReleaseState::Failed))
            .unwrap();
        s.put_release(&release("shop", "2", ReleaseState::Staged))
            .unwrap();
        let shop: Vec<_> = s
            .releases("shop")
            .unwrap()
            .into_iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(shop, ["1", "2"]);
        assert_eq!(s.releases("shop2").unwrap().len(), 1);
        s.delete_release("shop", "2").unwrap();
        assert_eq!(s.releases("shop").unwrap().len(), 1);

        for i in 0..5 {
            s.record(
                Event::new("shop", Actor::agent(), EventKind::Activated).version(i.to_string()),
            )
            .unwrap();
            s.record(Event::new("shop2", Actor::agent(), EventKind::Staged))
                .unwrap();
        }
        let h = s.history("shop", 3).unwrap();
        let versions: Vec<_> = h.iter().map(|e| e.version.clone().unwrap()).collect();
        assert_eq!(versions, ["4", "3", "2"], "newest first");
        assert!(h.windows(2).all(|w| w[0].id > w[1].id));
        assert!(h.iter().all(|e| e.app == "shop"));
        // The newest of a kind, looked for among the newest few only.
        s.record(Event::new("shop", Actor::agent(), EventKind::Staged))
            .unwrap();
        let last = s.last_event("shop", EventKind::Activated, 10).unwrap();
        assert_eq!(last.unwrap().version.as_deref(), Some("4"));
        assert!(s
            .last_event("shop", EventKind::Activated, 1)
            .unwrap()
            .is_none());
        assert!(s
            .last_event("shop2", EventKind::Activated, 100)
            .unwrap()
            .is_none());
    }

    #[test]
    fn kv_spaces_are_private_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let a = s.kv_space("shop", "check:price");
            let b = s.kv_space("shop", "check:price2");
            let c = s.kv_space("shop2", "check:price");
            a.set("last", b"1").unwrap();
            a.set("last-good", b"22").unwrap();
            b.set("last", b"x").unwrap();
            c.set("last", b"y").unwrap();
            assert_eq!(a.keys("").unwrap(), ["last", "last-good"]);
            assert_eq!(a.keys("last-").unwrap(), ["last-good"]);
            assert_eq!(a.usage().unwrap(), 4 + 1 + 9 + 2);
            assert_eq!(b.keys("").unwrap(), ["last"]);
            a.delete("last").unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let a = s.kv_space("shop", "check:price");
        assert_eq!(a.get("last").unwrap(), None);
        assert_eq!(a.get("last-good").unwrap().unwrap(), b"22");
        assert_eq!(
            s.kv_space("shop2", "check:price")
                .get("last")
                .unwrap()
                .unwrap(),
            b"y"
        );
    }

    #[test]
    fn old_events_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut old = Event::new("shop", Actor::agent(), EventKind::Staged);
        old.at_ms = 1_000;
        s.record(old).unwrap();
        s.record(Event::new("shop", Actor::agent(), EventKind::Activated))
            .unwrap();
        s.record(Event::new("other", Actor::agent(), EventKind::Activated))
            .unwrap();
        assert_eq!(s.prune_events(2_000, 100).unwrap().removed, 1);
        let h = s.history("shop", 10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].kind, EventKind::Activated);
        assert_eq!(s.prune_events(2_000, 100).unwrap().removed, 0);
    }

    #[test]
    fn pruning_reads_only_what_it_removes_and_one_chunk_per_app() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let at = |app: &str, at_ms| {
            let mut e = Event::new(app, Actor::agent(), EventKind::CheckFailed);
            e.at_ms = at_ms;
            s.record(e).unwrap();
        };
        // "shop" is a prefix of "shop2": each is pruned on its own.
        for app in ["cart", "shop", "shop2"] {
            for t in 0..5 {
                at(app, 1_000 + t);
            }
            for t in 0..200 {
                at(app, 10_000 + t);
            }
        }
        // A budget stops a pass early and the next goes on.
        let first = s.prune_events(5_000, 7).unwrap();
        assert_eq!(first.removed, 7);
        let rest = s.prune_events(5_000, 100).unwrap();
        assert_eq!(rest.removed, 8);
        // Per app, only the chunk that ends its pass is read (600 recent
        // events in later chunks are never looked at): cart's first chunk
        // (5 pruned before), shop's (2 pruned before), shop2's whole.
        assert_eq!(rest.read, (CHUNK - 5) + (CHUNK - 2) + CHUNK, "{rest:?}");
        for app in ["cart", "shop", "shop2"] {
            let h = s.history(app, 1_000).unwrap();
            assert_eq!(h.len(), 200, "{app}");
            assert!(h.iter().all(|e| e.at_ms >= 10_000), "{app}");
        }
        let none = s.prune_events(5_000, 100).unwrap();
        assert_eq!(
            none,
            Pruned {
                removed: 0,
                read: 3 * (CHUNK - 5)
            }
        );
    }

    #[test]
    fn events_are_stored_in_chunks_and_older_single_rows_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        // Two events as a store before chunks wrote them: one value each.
        for version in ["0.1", "0.2"] {
            let mut e = Event::new("shop", Actor::agent(), EventKind::Activated).version(version);
            e.id = s.db.generate_id().unwrap();
            let key = event_key("shop", e.id);
            s.events.insert(&key, encode(&key, &e).unwrap()).unwrap();
        }
        let events: Vec<Event> = (0..40)
            .map(|i| Event::new("shop", Actor::agent(), EventKind::Staged).version(i.to_string()))
            .collect();
        let written = s.record_all(events).unwrap();
        assert!(written.windows(2).all(|w| w[0].id < w[1].id));
        // The last old row takes events until it is full, then come chunks
        // of CHUNK: [0.1], [0.2 + 15], [16], [9].
        assert_eq!(s.events.len(), 4);
        let h = s.history("shop", 100).unwrap();
        assert_eq!(h.len(), 42);
        assert!(h.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert_eq!(h[0].version.as_deref(), Some("39"));
        assert_eq!(h[41].version.as_deref(), Some("0.1"));
        let last = s.last_event("shop", EventKind::Activated, 100).unwrap();
        assert_eq!(last.unwrap().version.as_deref(), Some("0.2"));
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.history("shop", 5).unwrap()[0].version.as_deref(),
            Some("39")
        );
    }

    #[test]
    fn records_written_before_newer_fields_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let old = br#"{"name":"shop","state":"healthy","active":"1.0.0","last_good":"1.0.0",
            "reason":null,"bake_until_ms":null,"updated_at_ms":5}"#;
        s.apps.insert("shop", &old[..]).unwrap();
        let app = s.app("shop").unwrap().unwrap();
        assert_eq!(app.state, AppState::Healthy);
        assert!(app.checks.is_empty() && !app.paused && !app.restored);
        let old = br#"{"app":"shop","version":"1.0.0","state":"good","source":null,
            "created_at_ms":1,"activated_at_ms":2,"decided_at_ms":3,"reason":null}"#;
        s.releases
            .insert(release_key("shop", "1.0.0"), &old[..])
            .unwrap();
        let r = s.release("shop", "1.0.0").unwrap().unwrap();
        assert_eq!((r.state, r.commit), (ReleaseState::Good, None));
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.apps.insert("shop", &b"{not json"[..]).unwrap();
        let err = s.app("shop").unwrap_err().to_string();
        assert!(err.contains("shop"), "{err}");
    }
}
