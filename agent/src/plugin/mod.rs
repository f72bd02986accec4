//! The WebAssembly plugin host: engine, components, calls, sandbox.
//!
//! Owns one wasmtime `Engine` per agent (pooling allocator when the machine
//! allows it, an epoch ticker for deadlines, an on-disk cache of compiled
//! components), compiling each plugin once into an `InstancePre` of its world
//! (`health-check` or `rollback-hook`), and running every call in a fresh
//! `Store` with a memory cap and a deadline. The imports it serves live in
//! `host`; the cache in `cache`.
//!
//! Must never know about releases, the store, policy or supervisors: it runs a
//! component with the grants it is handed and reports what happened. A plugin
//! that traps, loops, exhausts memory or times out becomes a `CallError`; it
//! must never panic the agent or hold a thread beyond its deadline.

mod cache;
mod host;
mod outbound;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};

use crate::config::HostRule;
use host::HostState;
pub use host::{MAX_KV_KEY, MAX_KV_TOTAL, MAX_KV_VALUE};

mod bindings {
    pub mod check {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "health-check",
            imports: { "rollback:plugin/http.send": async },
            exports: { default: async },
        });
    }
    pub mod hook {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "rollback-hook",
            exports: { default: async },
            with: {
                "rollback:plugin/types": super::check::rollback::plugin::types,
                "rollback:plugin/http": super::check::rollback::plugin::http,
                "rollback:plugin/config": super::check::rollback::plugin::config,
                "rollback:plugin/kv": super::check::rollback::plugin::kv,
                "rollback:plugin/log": super::check::rollback::plugin::log,
                "rollback:plugin/clock": super::check::rollback::plugin::clock,
            },
        });
    }
    /// `rollback:plugin@0.1.0`, for components built before 0.2.0; its
    /// imports are served by the current ones (`host::legacy`).
    pub mod legacy {
        pub mod check {
            wasmtime::component::bindgen!({
                            path: "../wit/0.1.0",
                            world: "health-check",
                            imports: { "rollback:plugin/http.send": async },
                            exports: { default: async },
            });
        }
        pub mod hook {
            wasmtime::component::bindgen!({
                path: "../wit/0.1.0",
                world: "rollback-hook",
                exports: { default: async },
                with: {
                    "rollback:plugin/types": super::check::rollback::plugin::types,
                    "rollback:plugin/http": super::check::rollback::plugin::http,
                    "rollback:plugin/config": super::check::rollback::plugin::config,
                    "rollback:plugin/kv": super::check::rollback::plugin::kv,
                    "rollback:plugin/log": super::check::rollback::plugin::log,
                    "rollback:plugin/clock": super::check::rollback::plugin::clock,
                },
            });
        }
    }
}

use bindings::check::rollback::plugin::types;
use bindings::legacy::check::rollback::plugin::types as types_v1;

/// How often the engine's epoch advances: the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Slack granted beyond a call's deadline before the host gives up on it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);
/// Longest summary kept from a plugin.
pub const MAX_SUMMARY_BYTES: usize = 1024;
/// A summary or error text longer than this is refused as bad output.
pub const MAX_RETURNED_TEXT: usize = 64 * 1024;
/// Most metrics accepted from one result.
pub const MAX_METRICS: usize = 64;
/// Default cap on an HTTP response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = crate::config::DEFAULT_MAX_RESPONSE_BYTES;
/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Log lines one plugin entry may write per window, across calls.
const LOG_BUDGET: u32 = 200;
/// The window of `LOG_BUDGET`.
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// Errors loading a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The component file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid component, or does not fit the world.
    #[error("invalid plugin {path}: {message}")]
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong (wasmtime's words).
        message: String,
    },
    /// The file is not the one the config pinned with `sha256`.
    #[error(
        "plugin {path} has SHA-256 {actual}, but the config pins {expected}; refusing to load it"
    )]
    DigestMismatch {
        /// The plugin file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The HTTP client for the sandbox could not be built.
    #[error("plugin http client: {0}")]
    Http(String),
}

/// Why a call produced no verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The call did not finish within its deadline.
    Timeout(Duration),
    /// The plugin trapped (including memory or table limits hit).
    Trap(String),
    /// The plugin returned an error (`err` of its result).
    Plugin(String),
    /// The plugin returned something the host refuses.
    BadOutput(String),
    /// The host failed while serving the call (a bug caught at the call's
    /// boundary, so that it costs one result, never the agent).
    Host(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout(d) => {
                write!(f, "timed out after {}", humantime::format_duration(*d))
            }
            CallError::Trap(m) => write!(f, "plugin trapped: {m}"),
            CallError::Plugin(m) => write!(f, "plugin error: {m}"),
            CallError::BadOutput(m) => write!(f, "invalid plugin output: {m}"),
            CallError::Host(m) => write!(f, "host failure during the call: {m}"),
        }
    }
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Healthy.
    Pass,
    /// Healthy with a warning.
    Warn,
    /// Unhealthy.
    Fail,
    /// The check could not tell (what it reads was throttled, unavailable or
    /// refused its credentials).
    Inconclusive,
}

/// What a check reported.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// The verdict.
    pub status: Status,
    /// One line for humans (capped at [`MAX_SUMMARY_BYTES`]).
    pub summary: String,
    /// Named measurements.
    pub metrics: BTreeMap<String, f64>,
}

/// A release as described to plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    /// Its app.
    pub app: String,
    /// Its version.
    pub version: String,
    /// When it was activated, ms since the epoch.
    pub activated_at_ms: Option<u64>,
}

/// Bake or steady state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Within the bake window.
    Bake,
    /// After a clean bake.
    Steady,
}

/// What a check is told about the moment it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInput {
    /// The app.
    pub app: String,
    /// The check's name.
    pub check: String,
    /// The active release.
    pub active: ReleaseInfo,
    /// The release before it.
    pub previous: Option<ReleaseInfo>,
    /// Bake or steady.
    pub phase: Phase,
    /// Wall-clock time, ms since the epoch.
    pub now_ms: u64,
}

/// A log line a plugin wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `trace` .. `error`.
    pub level: &'static str,
    /// The message (capped).
    pub message: String,
}

/// Everything one call produced.
#[derive(Debug, Clone)]
pub struct CallReport<T = CheckResult> {
    /// The verdict or why there is none.
    pub result: Result<T, CallError>,
    /// Log lines, in order (capped, secrets removed).
    pub logs: Vec<LogLine>,
    /// HTTP requests made.
    pub http_requests: u32,
    /// Retries after 429/503 across those requests.
    pub http_retries: u32,
    /// Wall time of the call.
    pub elapsed: Duration,
}

impl<T> CallReport<T> {
    /// A report for a call the host could not complete.
    pub fn host_failure(what: &str) -> Self {
        CallReport {
            result: Err(CallError::Host(what.to_string())),
            logs: Vec::new(),
            http_requests: 0,
            http_retries: 0,
            elapsed: Duration::ZERO,
        }
    }
}

/// A switch of `current`, as told to hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The app.
    pub app: String,
    /// The release before.
    pub from: Option<ReleaseInfo>,
    /// The release after.
    pub to: ReleaseInfo,
    /// A user name or `agent`.
    pub actor: String,
}

/// A rollback, as told to hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackInfo {
    /// The app.
    pub app: String,
    /// The release rolled back.
    pub from: ReleaseInfo,
    /// The release restored.
    pub to: ReleaseInfo,
    /// Why.
    pub reason: String,
    /// The check that triggered it.
    pub check: Option<String>,
    /// A user name or `agent`.
    pub actor: String,
}

/// A lifecycle event for rollback hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// Before a deploy's activation; an error vetoes it.
    PreActivate(Transition),
    /// After a deploy's activation and restart.
    Activated(Transition),
    /// After a rollback.
    RolledBack(RollbackInfo),
    /// The app is degraded: app, active version, reason.
    Degraded {
        /// The app.
        app: String,
        /// The release `current` points at.
        version: Option<String>,
        /// Why.
        reason: String,
    },
    /// The bake ended without a verdict: app, active version, reason.
    Held {
        /// The app.
        app: String,
        /// The release `current` points at.
        version: String,
        /// Why.
        reason: String,
    },
}

/// What one plugin entry is allowed to do, and its limits.
#[derive(Debug, Clone)]
pub struct Grants {
    /// App name (for logs and kv).
    pub app: String,
    /// The check's or hook's name (for logs).
    pub entry: String,
    /// The plugin's file name (for logs).
    pub plugin: String,
    /// Hosts reachable over HTTP.
    pub allow_hosts: Vec<HostRule>,
    /// Plain config values.
    pub config: BTreeMap<String, String>,
    /// Secret values by name (never logged).
    pub secrets: BTreeMap<String, String>,
    /// Deadline of one call.
    pub timeout: Duration,
    /// Linear memory cap of one call, in bytes.
    pub memory_limit: u64,
    /// Cap on one HTTP response body.
    pub max_response_bytes: u64,
}

/// Persistent key-value space of one plugin entry (the `kv` import). The
/// host enforces key and size limits before calling it.
pub trait Kv: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Stores `value` under `key`.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Removes `key`.
    fn delete(&self, key: &str) -> Result<(), String>;
    /// Keys starting with `prefix`, sorted.
    fn keys(&self, prefix: &str) -> Result<Vec<String>, String>;
    /// Bytes used by all keys and values.
    fn usage(&self) -> Result<u64, String>;
}

/// A `Kv` in memory, for one-off runs (`rollbackctl plugin test`) and tests.
#[derive(Debug, Default)]
pub struct MemoryKv(Mutex<BTreeMap<String, Vec<u8>>>);

impl MemoryKv {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A store holding these entries.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        MemoryKv(Mutex::new(entries.into_iter().collect()))
    }

    /// Every entry, sorted by key.
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        self.map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Kv for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.map().get(key).cloned())
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.map().insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.map().remove(key);
        Ok(())
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        Ok(self
            .map()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
    fn usage(&self) -> Result<u64, String> {
        Ok(self
            .map()
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum())
    }
}

struct LogBudget {
    window_start: Instant,
    used: u32,
    dropped: u32,
}

/// The HTTP client plugin requests go through: redirects left to the host
/// (`host::send` checks each target and drops credentials across origins),
/// no proxy, no referer, the resolver that refuses link-local targets, the
/// shared TLS settings. Cheap to clone (one connection pool); what a
/// request may do is decided per entry, before it is sent.
#[derive(Clone)]
pub struct HttpClient(reqwest::Client);

/// Builds an [`HttpClient`]: one per agent (the daemon shares it between
/// all entries), or one per sandbox built with [`Sandbox::new`].
pub fn http_client() -> Result<HttpClient, PluginError> {
    let tls = outbound::tls().map_err(PluginError::Http)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .dns_resolver(Arc::new(outbound::Resolver))
        .user_agent(concat!("rollback-agent/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .build()
        .map(HttpClient)
        .map_err(|e| PluginError::Http(e.to_string()))
}

/// A plugin entry's grants plus what enforces them: the HTTP client (with
/// the allow-list on redirects), its kv space and its log budget.
pub struct Sandbox {
    grants: Grants,
    client: reqwest::Client,
    kv: Arc<dyn Kv>,
    log_budget: Mutex<LogBudget>,
    /// Held for the whole of each call by the entries that share a kv
    /// store, so that their read-modify-write sequences never interleave.
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Sandbox {
    /// Builds the sandbox for one plugin entry.
    pub fn new(grants: Grants, kv: Arc<dyn Kv>) -> Result<Arc<Sandbox>, PluginError> {
        Sandbox::build(grants, kv, None)
    }

    /// Builds the sandbox of an entry that shares `kv` with others: calls of
    /// sandboxes with the same `turn` run one at a time (waiting for the turn
    /// does not count against the call's deadline).
    pub fn new_shared(
        grants: Grants,
        kv: Arc<dyn Kv>,
        turn: Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Arc<Sandbox>, PluginError> {
        Sandbox::build(grants, kv, Some(turn))
    }

    /// `new` or `new_shared` (with a `turn`) with `client`, an
    /// [`http_client`] shared by the entries of one agent.
    pub fn with_client(
        grants: Grants,
        kv: Arc<dyn Kv>,
        turn: Option<Arc<tokio::sync::Mutex<()>>>,
        client: HttpClient,
    ) -> Arc<Sandbox> {
        Arc::new(Sandbox {
            grants,
            client: client.0,
            kv,
            log_budget: Mutex::new(LogBudget {
                window_start: Instant::now(),
                used: 0,
                dropped: 0,
            }),
            turn,
        })
    }

    fn build(
        grants: Grants,
        kv: Arc<dyn Kv>,
        turn: Option<Arc<tokio::sync::Mutex<()>>>,
    ) -> Result<Arc<Sandbox>, PluginError> {
        Ok(Sandbox::with_client(grants, kv, turn, http_client()?))
    }

    /// The grants this sandbox enforces.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    fn client(&self) -> &reqwest::Client {
        &self.client
    }

    fn kv(&self) -> &dyn Kv {
        self.kv.as_ref()
    }

    /// Whether one more log line fits this entry's budget; says once per
    /// window how many were dropped.
    fn log_allowed(&self) -> bool {
        let mut b = self.log_budget.lock().unwrap_or_else(|p| p.into_inner());
        if b.window_start.elapsed() >= LOG_WINDOW {
            if b.dropped > 0 {
                tracing::warn!(app = %self.grants.app, entry = %self.grants.entry, dropped = b.dropped, "plugin log lines dropped (rate limit)");
            }
            *b = LogBudget {
                window_start: Instant::now(),
                used: 0,
                dropped: 0,
            };
        }
        if b.used >= LOG_BUDGET {
            b.dropped += 1;
            return false;
        }
        b.used += 1;
        true
    }

    /// `text` with every secret value replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in self.grants.secrets.values() {
            if !value.is_empty() && out.contains(value.as_str()) {
                out = out.replace(value.as_str(), "***");
            }
        }
        out
    }
}

/// Advances the engine's epoch while a plugin call runs, and sleeps (no
/// wake-ups at all) while none does. The thread lives while the host or any
/// plugin it loaded is alive, and while a call still runs after they went,
/// so that such a call keeps reaching its deadline (and yielding) instead of
/// spinning forever on a worker thread.
#[derive(Clone)]
struct EpochTicker {
    owners: Arc<TickerOwners>,
}

/// What the ticker thread waits on: calls in flight, whether every owner is
/// gone, and (for tests) how often it ticked and whether it is parked.
#[derive(Default)]
struct TickerState {
    calls: usize,
    gone: bool,
    ticks: u64,
    parked: bool,
}

struct TickerShared {
    state: std::sync::Mutex<TickerState>,
    wake: std::sync::Condvar,
}

impl TickerShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, TickerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held by the host and its plugins; the last one dropped lets the thread end.
struct TickerOwners(Arc<TickerShared>);

impl Drop for TickerOwners {
    fn drop(&mut self) {
        self.0.lock().gone = true;
        self.0.wake.notify_all();
    }
}

/// One call in flight: the epoch advances while any exists.
struct Ticking(Arc<TickerShared>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.lock().calls -= 1;
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<EpochTicker, PluginError> {
        let shared = Arc::new(TickerShared {
            state: Default::default(),
            wake: std::sync::Condvar::new(),
        });
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                {
                    let mut st = thread.lock();
                    while st.calls == 0 && !st.gone {
                        st.parked = true;
                        st = thread.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    st.parked = false;
                    if st.calls == 0 {
                        return; // every owner is gone and no call runs
                    }
                    st.ticks += 1;
                }
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            })
            .map_err(|e| PluginError::Engine(format!("cannot start epoch thread: {e}")))?;
        Ok(EpochTicker {
            owners: Arc::new(TickerOwners(shared)),
        })
    }

    /// Marks a call in flight until the guard is dropped.
    fn ticking(&self) -> Ticking {
        let shared = self.owners.0.clone();
        shared.lock().calls += 1;
        shared.wake.notify_all();
        Ticking(shared)
    }

    /// (ticks so far, whether the thread is parked): for tests.
    #[cfg(test)]
    fn observe(&self) -> (u64, bool) {
        let st = self.owners.0.lock();
        (st.ticks, st.parked)
    }
}

/// Which world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `health-check`: exports `check`.
    HealthCheck,
    /// `rollback-hook`: exports `on-event`.
    RollbackHook,
}

impl World {
    fn name(self) -> &'static str {
        match self {
            World::HealthCheck => "health-check",
            World::RollbackHook => "rollback-hook",
        }
    }
}

/// How the engine is set up.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Where compiled components are cached; none: always compile.
    pub cache_dir: Option<PathBuf>,
    /// The largest `memory_limit` any entry has (sizes the instance pool).
    pub max_memory: Option<u64>,
}

/// The engine and linkers shared by every plugin of an agent.
pub struct PluginHost {
    engine: Engine,
    check_linker: Linker<HostState>,
    hook_linker: Linker<HostState>,
    cache: Option<cache::Cache>,
    pooling: bool,
    compiled: AtomicU64,
    cache_hits: AtomicU64,
    ticker: EpochTicker,
}

enum Pre {
    Check(bindings::check::HealthCheckPre<HostState>),
    Hook(bindings::hook::RollbackHookPre<HostState>),
    /// Built against `rollback:plugin@0.1.0`.
    CheckV1(bindings::legacy::check::HealthCheckPre<HostState>),
    /// Built against `rollback:plugin@0.1.0`.
    HookV1(bindings::legacy::hook::RollbackHookPre<HostState>),
}

impl Pre {
    fn engine(&self) -> &Engine {
        match self {
            Pre::Check(p) => p.engine(),
            Pre::Hook(p) => p.engine(),
            Pre::CheckV1(p) => p.engine(),
            Pre::HookV1(p) => p.engine(),
        }
    }
}

/// A compiled plugin, ready to be instantiated per call.
pub struct Plugin {
    pre: Pre,
    ticker: EpochTicker,
    path: PathBuf,
    digest: String,
    from_cache: bool,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("digest", &self.digest)
            .field("from_cache", &self.from_cache)
            .finish()
    }
}

fn engine_error(e: wasmtime::Error) -> PluginError {
    PluginError::Engine(format!("{e:#}"))
}

/// Bytes of a pooled linear memory kept resident between calls (zeroed by
/// the host instead of unmapped): a typical check's working set.
const KEEP_RESIDENT: usize = 2 << 20;

fn engine_config(pool_memory: Option<u64>) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    cfg.epoch_interruption(true);
    if let Some(max) = pool_memory {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(64)
            .total_core_instances(256)
            .total_memories(128)
            .total_tables(128)
            .total_stacks(64)
            .max_memory_size(usize::try_from(max).unwrap_or(usize::MAX))
            // A check's instance lives for one call: reset its memory and
            // tables by hand (only the pages it touched, where the kernel
            // can say which) and return slots to the kernel in batches,
            // rather than an madvise and a TLB shootdown per call.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .decommit_batch_size(16);
        cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        // Explicit bounds checks instead of guard pages and signal
        // handlers: a memory the guest grew during a call is then not
        // protected again when its slot is reused, which cost an mprotect
        // and a TLB shootdown of every core per call (a quarter of the CPU
        // per check).
        cfg.signals_based_traps(false).memory_guard_size(0);
    }
    cfg
}

impl PluginHost {
    /// An engine with default options (no cache).
    pub fn new() -> Result<PluginHost, PluginError> {
        PluginHost::with_options(HostOptions::default())
    }

    /// Sets up the engine (pooling allocator if the machine allows it, else
    /// on-demand), the linkers, the cache and the epoch ticker.
    pub fn with_options(opts: HostOptions) -> Result<PluginHost, PluginError> {
        let pool_memory = opts
            .max_memory
            .unwrap_or(crate::config::DEFAULT_MEMORY_LIMIT);
        let (engine, pooling) = match Engine::new(&engine_config(Some(pool_memory))) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::info!("pooling allocator unavailable ({e:#}); allocating on demand");
                (
                    Engine::new(&engine_config(None)).map_err(engine_error)?,
                    false,
                )
            }
        };
        // Each linker serves both versions of the package: the imports of
        // 0.1.0 and 0.2.0 have different names, so they never collide.
        let mut check_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut check_linker).map_err(engine_error)?;
        bindings::check::HealthCheck::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut check_linker,
            |s| s,
        )
        .map_err(engine_error)?;
        bindings::legacy::check::HealthCheck::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut check_linker,
            |s| s,
        )
        .map_err(engine_error)?;
        let mut hook_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut hook_linker).map_err(engine_error)?;
        bindings::hook::RollbackHook::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut hook_linker,
            |s| s,
        )
        .map_err(engine_error)?;
        bindings::legacy::hook::RollbackHook::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut hook_linker,
            |s| s,
        )
        .map_err(engine_error)?;
        let cache = match &opts.cache_dir {
            Some(dir) => Some(cache::Cache::open(dir, &engine).map_err(|e| {
                PluginError::Engine(format!("cannot open plugin cache {}: {e}", dir.display()))
            })?),
            None => None,
        };
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(PluginHost {
            engine,
            check_linker,
            hook_linker,
            cache,
            pooling,
            compiled: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            ticker,
        })
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Components compiled so far (cache misses).
    pub fn compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Components loaded from the cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// Reads a component (binary or text format), checks its pinned digest,
    /// compiles it (or takes it from the cache) and checks that it fits
    /// `health-check`. CPU-heavy: call it off the async runtime.
    pub fn load(&self, path: &Path) -> Result<Plugin, PluginError> {
        self.load_world(path, World::HealthCheck, None)
    }

    /// Like `load`, for `world`, refusing a file whose SHA-256 is not `pin`.
    pub fn load_world(
        &self,
        path: &Path,
        world: World,
        pin: Option<&str>,
    ) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let digest = format!("{:x}", Sha256::digest(&bytes));
        if let Some(expected) = pin {
            if !expected.eq_ignore_ascii_case(&digest) {
                return Err(PluginError::DigestMismatch {
                    path: path.to_path_buf(),
                    expected: expected.to_string(),
                    actual: digest,
                });
            }
        }
        let invalid = |e: wasmtime::Error| PluginError::Invalid {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.get(&self.engine, &digest));
        let from_cache = cached.is_some();
        let component = match cached {
            Some(c) => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                c
            }
            None => {
                let c = Component::new(&self.engine, &bytes).map_err(invalid)?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                if let Some(cache) = &self.cache {
                    cache.put(&digest, &c);
                }
                c
            }
        };
        let wrong_world = |e: wasmtime::Error| PluginError::Invalid {
            path: path.to_path_buf(),
            message: format!("not a `{}` plugin: {e:#}", world.name()),
        };
        // The current version first; a component that does not fit it may be
        // one built against 0.1.0. The error shown is the current version's.
        let pre = match world {
            World::HealthCheck => {
                let ip = self
                    .check_linker
                    .instantiate_pre(&component)
                    .map_err(invalid)?;
                match bindings::check::HealthCheckPre::new(ip.clone()) {
                    Ok(p) => Pre::Check(p),
                    Err(e) => match bindings::legacy::check::HealthCheckPre::new(ip) {
                        Ok(p) => Pre::CheckV1(p),
                        Err(_) => return Err(wrong_world(e)),
                    },
                }
            }
            World::RollbackHook => {
                let ip = self
                    .hook_linker
                    .instantiate_pre(&component)
                    .map_err(invalid)?;
                match bindings::hook::RollbackHookPre::new(ip.clone()) {
                    Ok(p) => Pre::Hook(p),
                    Err(e) => match bindings::legacy::hook::RollbackHookPre::new(ip) {
                        Ok(p) => Pre::HookV1(p),
                        Err(_) => return Err(wrong_world(e)),
                    },
                }
            }
        };
        Ok(Plugin {
            pre,
            path: path.to_path_buf(),
            digest,
            from_cache,
            ticker: self.ticker.clone(),
        })
    }
}

/// The conversions into one version's WIT types: the same code for each
/// version (0.2.0 only added to 0.1.0), `$held` saying what a `held` event
/// becomes (`None`: the version has no such event).
macro_rules! to_wit {
    ($name:ident, $t:ident, |$app:ident, $version:ident, $reason:ident| $held:expr) => {
        mod $name {
            use super::*;

            fn release(r: &ReleaseInfo) -> $t::Release {
                $t::Release {
                    app: r.app.clone(),
                    version: r.version.clone(),
                    activated_at_ms: r.activated_at_ms,
                }
            }

            fn transition(t: &Transition) -> $t::Transition {
                $t::Transition {
                    app: t.app.clone(),
                    from: t.from.as_ref().map(release),
                    to: release(&t.to),
                    actor: t.actor.clone(),
                }
            }

            pub(super) fn context(input: &CheckInput) -> $t::CheckContext {
                $t::CheckContext {
                    app: input.app.clone(),
                    check: input.check.clone(),
                    active: release(&input.active),
                    previous: input.previous.as_ref().map(release),
                    phase: match input.phase {
                        Phase::Bake => $t::Phase::Bake,
                        Phase::Steady => $t::Phase::Steady,
                    },
                    now_ms: input.now_ms,
                }
            }

            pub(super) fn event(e: &LifecycleEvent) -> Option<$t::LifecycleEvent> {
                Some(match e {
                    LifecycleEvent::PreActivate(t) => {
                        $t::LifecycleEvent::PreActivate(transition(t))
                    }
                    LifecycleEvent::Activated(t) => $t::LifecycleEvent::Activated(transition(t)),
                    LifecycleEvent::RolledBack(r) => {
                        $t::LifecycleEvent::RolledBack($t::RollbackInfo {
                            app: r.app.clone(),
                            from: release(&r.from),
                            to: release(&r.to),
                            reason: r.reason.clone(),
                            check: r.check.clone(),
                            actor: r.actor.clone(),
                        })
                    }
                    LifecycleEvent::Degraded {
                        app,
                        version,
                        reason,
                    } => $t::LifecycleEvent::Degraded($t::DegradedInfo {
                        app: app.clone(),
                        version: version.clone(),
                        reason: reason.clone(),
                    }),
                    LifecycleEvent::Held {
                        app: $app,
                        version: $version,
                        reason: $reason,
                    } => $held?,
                })
            }
        }
    };
}

to_wit!(wit_now, types, |app, version, reason| Some(
    types::LifecycleEvent::Held(types::HeldInfo {
        app: app.clone(),
        version: version.clone(),
        reason: reason.clone(),
    })
));
to_wit!(wit_v1, types_v1, |_app, _version, _reason| None::<
    types_v1::LifecycleEvent,
>);
/// A 0.1.0 result in the current types (0.1.0 had no `inconclusive`).
fn from_wit_result_v1(r: types_v1::CheckResult) -> types::CheckResult {
    types::CheckResult {
        status: match r.status {
            types_v1::Status::Pass => types::Status::Pass,
            types_v1::Status::Warn => types::Status::Warn,
            types_v1::Status::Fail => types::Status::Fail,
        },
        summary: r.summary,
        metrics: r
            .metrics
            .into_iter()
            .map(|m| types::Metric {
                name: m.name,
                value: m.value,
            })
            .collect(),
    }
}

fn returned_text(s: String, what: &str) -> Result<String, CallError> {
    if s.len() > MAX_RETURNED_TEXT {
        return Err(CallError::BadOutput(format!(
            "{what} of {} bytes (at most {MAX_RETURNED_TEXT})",
            s.len()
        )));
    }
    Ok(truncate(s, MAX_SUMMARY_BYTES))
}

fn from_wit_result(r: types::CheckResult) -> Result<CheckResult, CallError> {
    if r.metrics.len() > MAX_METRICS {
        return Err(CallError::BadOutput(format!(
            "{} metrics (at most {MAX_METRICS})",
            r.metrics.len()
        )));
    }
    let mut metrics = BTreeMap::new();
    for m in r.metrics {
        if !m.value.is_finite() {
            return Err(CallError::BadOutput(format!(
                "metric `{}` is not a finite number",
                m.name
            )));
        }
        let name_ok = !m.name.is_empty()
            && m.name.len() <= 64
            && m.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(CallError::BadOutput(format!(
                "metric name `{}` must be 1 to 64 characters of a-z, 0-9 and _",
                truncate(m.name, 80)
            )));
        }
        metrics.insert(m.name, m.value);
    }
    Ok(CheckResult {
        status: match r.status {
            types::Status::Pass => Status::Pass,
            types::Status::Warn => Status::Warn,
            types::Status::Fail => Status::Fail,
            types::Status::Inconclusive => Status::Inconclusive,
        },
        summary: returned_text(r.summary, "a summary")?,
        metrics,
    })
}

fn describe_trap(e: &wasmtime::Error, timeout: Duration, memory_limit: u64) -> CallError {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::Interrupt {
            return CallError::Timeout(timeout);
        }
    }
    // The outer contexts are wasm backtraces; the root cause says what happened.
    let cause = e.root_cause().to_string();
    let text = if cause.contains("growing memory") {
        format!(
            "memory limit of {} exceeded ({cause})",
            bytesize::ByteSize::b(memory_limit)
        )
    } else {
        cause
    };
    CallError::Trap(truncate(text, MAX_SUMMARY_BYTES))
}

type CallFuture<'a, T> =
    Pin<Box<dyn Future<Output = wasmtime::Result<Result<T, String>>> + Send + 'a>>;

impl Plugin {
    /// The component's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 of the component's bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether it was loaded from the compiled-component cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// Runs one call in a fresh store under `sandbox`'s limits and deadline.
    async fn run<T>(
        &self,
        sandbox: &Arc<Sandbox>,
        call: impl for<'a> FnOnce(&'a mut Store<HostState>) -> CallFuture<'a, T>,
    ) -> CallReport<T> {
        let _turn = match &sandbox.turn {
            Some(turn) => Some(turn.clone().lock_owned().await),
            None => None,
        };
        // The epoch advances for this call's deadline only while it runs.
        let _ticking = self.ticker.ticking();
        let started = Instant::now();
        let grants = sandbox.grants();
        let timeout = grants.timeout;
        let deadline = started + timeout;
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(grants.memory_limit).unwrap_or(usize::MAX))
            .instances(16)
            .tables(16)
            .memories(4)
            .table_elements(100_000)
            .trap_on_grow_failure(true)
            .build();
        let engine = self.pre.engine().clone();
        let mut store = Store::new(&engine, HostState::new(sandbox.clone(), limits, deadline));
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        // Yield to the executor every tick so that a busy plugin never holds a
        // worker thread, and interrupt it once its deadline has passed.
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        // A panic in a host import (a bug, or a value we failed to bound)
        // ends this call with an error instead of unwinding into the caller.
        let guarded = std::panic::AssertUnwindSafe(call(&mut store)).catch_unwind();
        let outcome = tokio::time::timeout(timeout + DEADLINE_MARGIN, guarded).await;
        let result = match outcome {
            Err(_) => Err(CallError::Timeout(timeout)),
            Ok(Err(panic)) => {
                let what = crate::panic_text(panic.as_ref());
                tracing::error!(app = %grants.app, "host panic during a plugin call: {what}");
                Err(CallError::Host(what))
            }
            Ok(Ok(Err(e))) => Err(describe_trap(&e, timeout, grants.memory_limit)),
            Ok(Ok(Ok(Err(message)))) => {
                match returned_text(sandbox.redact(&message), "an error text") {
                    Ok(m) => Err(CallError::Plugin(m)),
                    Err(e) => Err(e),
                }
            }
            Ok(Ok(Ok(Ok(value)))) => Ok(value),
        };
        let mut state = store.into_data();
        state.drain_stdio();
        CallReport {
            result,
            logs: state.logs,
            http_requests: state.http_requests,
            http_retries: state.http_retries,
            elapsed: started.elapsed(),
        }
    }

    /// Runs `check` once (a `health-check` plugin).
    pub async fn check(&self, sandbox: &Arc<Sandbox>, input: &CheckInput) -> CallReport {
        let report = match &self.pre {
            Pre::Check(pre) => {
                let pre = pre.clone();
                let ctx = wit_now::context(input);
                self.run(sandbox, |store| {
                    Box::pin(async move {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        instance.call_check(&mut *store, &ctx).await
                    })
                })
                .await
            }
            Pre::CheckV1(pre) => {
                let pre = pre.clone();
                let ctx = wit_v1::context(input);
                self.run(sandbox, |store| {
                    Box::pin(async move {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        let r = instance.call_check(&mut *store, &ctx).await?;
                        Ok(r.map(from_wit_result_v1))
                    })
                })
                .await
            }
            Pre::Hook(_) | Pre::HookV1(_) => return wrong_world(World::HealthCheck),
        };
        let CallReport {
            result,
            logs,
            http_requests,
            http_retries,
            elapsed,
        } = report;
        let result = result.and_then(|mut r| {
            // Redact before `from_wit_result` truncates the summary.
            r.summary = sandbox.redact(&r.summary);
            from_wit_result(r)
        });
        CallReport {
            result,
            logs,
            http_requests,
            http_retries,
            elapsed,
        }
    }

    /// Runs `on-event` once (a `rollback-hook` plugin).
    pub async fn on_event(&self, sandbox: &Arc<Sandbox>, event: &LifecycleEvent) -> CallReport<()> {
        // An event the component's version does not have: nothing to tell.
        let skipped = || CallReport {
            result: Ok(()),
            ..CallReport::host_failure("")
        };
        match &self.pre {
            Pre::Hook(pre) => {
                let Some(event) = wit_now::event(event) else {
                    return skipped();
                };
                let pre = pre.clone();
                self.run(sandbox, |store| {
                    Box::pin(async move {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        instance.call_on_event(&mut *store, &event).await
                    })
                })
                .await
            }
            Pre::HookV1(pre) => {
                let Some(event) = wit_v1::event(event) else {
                    return skipped();
                };
                let pre = pre.clone();
                self.run(sandbox, |store| {
                    Box::pin(async move {
                        let instance = pre.instantiate_async(&mut *store).await?;
                        instance.call_on_event(&mut *store, &event).await
                    })
                })
                .await
            }
            Pre::Check(_) | Pre::CheckV1(_) => wrong_world(World::RollbackHook),
        }
    }

    /// Whether the component's version of the contract has `event` (a hook
    /// built against 0.1.0 is never told about `held`).
    pub fn knows(&self, event: &LifecycleEvent) -> bool {
        match self.pre {
            Pre::HookV1(_) => wit_v1::event(event).is_some(),
            _ => true,
        }
    }

    /// The version of `rollback:plugin` the component was built against.
    pub fn wit_version(&self) -> &'static str {
        match self.pre {
            Pre::Check(_) | Pre::Hook(_) => "0.2.0",
            Pre::CheckV1(_) | Pre::HookV1(_) => "0.1.0",
        }
    }
}

fn wrong_world<T>(world: World) -> CallReport<T> {
    CallReport {
        result: Err(CallError::BadOutput(format!(
            "the plugin was not loaded as a `{}` plugin",
            world.name()
        ))),
        ..CallReport::host_failure("")
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary, marking the cut.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod ticker_tests {
    use super::*;

    fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_epoch_ticker_parks_while_no_call_runs() {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true);
        let ticker = EpochTicker::start(Engine::new(&cfg).unwrap()).unwrap();
        until("parked at start", || ticker.observe().1);
        let idle = ticker.observe().0;
        // A call in flight: it ticks.
        let call = ticker.ticking();
        until("ticks during a call", || ticker.observe().0 >= idle + 3);
        // Two at once, one ends: it goes on ticking for the other.
        let other = ticker.ticking();
        drop(call);
        let now = ticker.observe().0;
        until("ticks for the other call", || ticker.observe().0 >= now + 3);
        drop(other);
        // None left: parked again, ticks no more while parked.
        until("parked after the calls", || ticker.observe().1);
        let parked = ticker.observe().0;
        let clone = ticker.clone();
        drop(ticker);
        assert_eq!(clone.observe(), (parked, true));
    }
}
