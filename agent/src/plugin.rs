//! The WebAssembly plugin host: engine, components, host imports, sandbox.
//!
//! Owns one wasmtime `Engine` per agent (with an epoch ticker), compiling a
//! plugin component once into an `InstancePre`, and running each call in a
//! fresh `Store` with a memory cap and a deadline. It serves the imports of
//! `wit/plugin.wit`: `http` (through reqwest, only to allow-listed hosts,
//! re-checked on redirects, with a body cap), `config`, `log` and `clock`.
//! WASI p2 is linked with nothing granted, for guests built for WASI.
//!
//! Must never know about releases, the store, policy or supervisors: it runs a
//! component with the grants it is handed and reports what happened. A plugin
//! that traps, loops, exhausts memory or times out becomes a `CallError`; it
//! must never panic the agent or hold a thread beyond its deadline.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::HostRule;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "health-check",
        imports: {
            "rollback:plugin/http.send": async,
        },
        exports: { default: async },
    });
}

use bindings::rollback::plugin::{clock, config as wit_config, http, log as wit_log, types};

/// How often the engine's epoch advances: the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Slack granted beyond a call's deadline before the host gives up on it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);
/// Longest summary kept from a plugin.
pub const MAX_SUMMARY_BYTES: usize = 1024;
/// Most metrics accepted from one result.
pub const MAX_METRICS: usize = 64;
/// Most log lines kept from one call.
const MAX_LOG_LINES: usize = 100;
/// Longest log line kept.
const MAX_LOG_BYTES: usize = 2048;
/// Default cap on an HTTP response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

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
pub struct CallReport {
    /// The verdict or why there is none.
    pub result: Result<CheckResult, CallError>,
    /// Log lines, in order (capped).
    pub logs: Vec<LogLine>,
    /// HTTP requests made.
    pub http_requests: u32,
    /// Wall time of the call.
    pub elapsed: Duration,
}

/// What one plugin entry is allowed to do, and its limits.
#[derive(Debug, Clone)]
pub struct Grants {
    /// App name (for logs).
    pub app: String,
    /// Check name (for logs).
    pub check: String,
    /// Hosts reachable over HTTP.
    pub allow_hosts: Vec<HostRule>,
    /// Plain config values.
    pub config: BTreeMap<String, String>,
    /// Secret values (never logged).
    pub secrets: BTreeMap<String, String>,
    /// Deadline of one call.
    pub timeout: Duration,
    /// Linear memory cap of one call, in bytes.
    pub memory_limit: u64,
    /// Cap on one HTTP response body.
    pub max_response_bytes: u64,
}

/// A plugin entry's grants plus the HTTP client that enforces them.
pub struct Sandbox {
    grants: Arc<Grants>,
    client: reqwest::Client,
}

fn url_allowed(rules: &[HostRule], url: &url::Url) -> Result<(), String> {
    let scheme = url.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "scheme `{scheme}` is not allowed (http or https only)"
        ));
    }
    let host = url.host_str().ok_or_else(|| format!("{url} has no host"))?;
    let port = url.port_or_known_default().unwrap_or(0);
    let default = if scheme == "https" { 443 } else { 80 };
    if rules.iter().any(|r| r.matches(host, port, default)) {
        Ok(())
    } else {
        Err(format!("{host}:{port} is not in allow_hosts"))
    }
}

impl Sandbox {
    /// Builds the sandbox for one plugin entry.
    pub fn new(grants: Grants) -> Result<Sandbox, PluginError> {
        let rules = grants.allow_hosts.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match url_allowed(&rules, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(format!("redirect refused: {why}")),
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirect)
            .user_agent(concat!("rollback-agent/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()
            .map_err(|e| PluginError::Http(e.to_string()))?;
        Ok(Sandbox {
            grants: Arc::new(grants),
            client,
        })
    }

    /// The grants this sandbox enforces.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }
}

/// Per-call state inside a `Store`.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    grants: Arc<Grants>,
    client: reqwest::Client,
    deadline: Instant,
    logs: Vec<LogLine>,
    http_requests: u32,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl wit_config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.grants.config.get(&key).cloned()
    }

    fn secret(&mut self, name: String) -> Option<String> {
        self.grants.secrets.get(&name).cloned()
    }
}

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

impl wit_log::Host for HostState {
    fn log(&mut self, level: wit_log::Level, message: String) {
        if self.logs.len() >= MAX_LOG_LINES {
            return;
        }
        let message = truncate(message, MAX_LOG_BYTES);
        let (app, check) = (&self.grants.app, &self.grants.check);
        let level = match level {
            wit_log::Level::Trace => {
                tracing::trace!(app = %app, check = %check, "plugin: {message}");
                "trace"
            }
            wit_log::Level::Debug => {
                tracing::debug!(app = %app, check = %check, "plugin: {message}");
                "debug"
            }
            wit_log::Level::Info => {
                tracing::info!(app = %app, check = %check, "plugin: {message}");
                "info"
            }
            wit_log::Level::Warn => {
                tracing::warn!(app = %app, check = %check, "plugin: {message}");
                "warn"
            }
            wit_log::Level::Error => {
                tracing::error!(app = %app, check = %check, "plugin: {message}");
                "error"
            }
        };
        self.logs.push(LogLine { level, message });
    }
}

fn monotonic_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        crate::store::now_ms()
    }

    fn monotonic_ns(&mut self) -> u64 {
        monotonic_origin().elapsed().as_nanos() as u64
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error_text(std::iter::successors(Some(e), |e| e.source()))
}

impl http::Host for HostState {
    async fn send(&mut self, req: http::Request) -> Result<http::Response, http::Error> {
        self.http_requests += 1;
        let url = url::Url::parse(&req.url)
            .map_err(|e| http::Error::InvalidRequest(format!("bad URL `{}`: {e}", req.url)))?;
        url_allowed(&self.grants.allow_hosts, &url).map_err(http::Error::Denied)?;
        let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| http::Error::InvalidRequest(format!("bad method `{}`", req.method)))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for h in req.headers {
            let name =
                reqwest::header::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    http::Error::InvalidRequest(format!("bad header name `{}`", h.name))
                })?;
            let value = reqwest::header::HeaderValue::from_str(&h.value).map_err(|_| {
                http::Error::InvalidRequest(format!("bad value for header `{name}`"))
            })?;
            headers.append(name, value);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = match req.timeout_ms {
            Some(ms) => left.min(Duration::from_millis(u64::from(ms))),
            None => left,
        };
        if timeout.is_zero() {
            return Err(http::Error::Timeout);
        }
        let mut builder = self
            .client
            .request(method, url.clone())
            .headers(headers)
            .timeout(timeout);
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let started = Instant::now();
        let map_err = |e: reqwest::Error| {
            if e.is_timeout() {
                http::Error::Timeout
            } else if e.is_redirect() {
                http::Error::Denied(error_chain(&e))
            } else {
                http::Error::Transport(error_chain(&e))
            }
        };
        let mut resp = builder.send().await.map_err(map_err)?;
        let cap = self.grants.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(http::Error::TooLarge(cap));
        }
        let status = resp.status().as_u16();
        let resp_headers = resp
            .headers()
            .iter()
            .map(|(k, v)| http::Header {
                name: k.as_str().to_string(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(map_err)? {
            if body.len() as u64 + chunk.len() as u64 > cap {
                return Err(http::Error::TooLarge(cap));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(http::Response {
            status,
            headers: resp_headers,
            body,
            elapsed_us: started.elapsed().as_micros() as u64,
        })
    }
}

/// Advances the engine's epoch until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<EpochTicker, PluginError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start epoch thread: {e}")))?;
        Ok(EpochTicker { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The engine and linker shared by every plugin of an agent.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    _ticker: EpochTicker,
}

/// A compiled plugin, ready to be instantiated per call.
pub struct Plugin {
    pre: bindings::HealthCheckPre<HostState>,
    path: PathBuf,
    digest: String,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("digest", &self.digest)
            .finish()
    }
}

impl PluginHost {
    /// Sets up the engine, the linker and the epoch ticker.
    pub fn new() -> Result<PluginHost, PluginError> {
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true);
        cfg.epoch_interruption(true);
        let engine = Engine::new(&cfg).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        bindings::HealthCheck::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(PluginHost {
            engine,
            linker,
            _ticker: ticker,
        })
    }

    /// Reads and compiles a component (binary or text format) and checks that
    /// it fits the `health-check` world. CPU-heavy: call it off the async runtime.
    pub fn load(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |e: wasmtime::Error| PluginError::Invalid {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let digest = format!("{:x}", Sha256::digest(&bytes));
        let component = Component::new(&self.engine, &bytes).map_err(invalid)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = bindings::HealthCheckPre::new(instance_pre).map_err(invalid)?;
        Ok(Plugin {
            pre,
            path: path.to_path_buf(),
            digest,
        })
    }
}

fn to_wit_release(r: &ReleaseInfo) -> types::Release {
    types::Release {
        app: r.app.clone(),
        version: r.version.clone(),
        activated_at_ms: r.activated_at_ms,
    }
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
        },
        summary: truncate(r.summary, MAX_SUMMARY_BYTES),
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

impl Plugin {
    /// The component's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 of the component's bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Runs `check` once in a fresh sandboxed instance.
    pub async fn check(&self, sandbox: &Sandbox, input: &CheckInput) -> CallReport {
        let started = Instant::now();
        let grants = &sandbox.grants;
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
        let state = HostState {
            wasi: WasiCtx::builder().allow_tcp(false).allow_udp(false).build(),
            table: ResourceTable::new(),
            limits,
            grants: grants.clone(),
            client: sandbox.client.clone(),
            deadline,
            logs: Vec::new(),
            http_requests: 0,
        };
        let mut store = Store::new(self.pre.engine(), state);
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
        let ctx = types::CheckContext {
            app: input.app.clone(),
            check: input.check.clone(),
            active: to_wit_release(&input.active),
            previous: input.previous.as_ref().map(to_wit_release),
            phase: match input.phase {
                Phase::Bake => types::Phase::Bake,
                Phase::Steady => types::Phase::Steady,
            },
            now_ms: input.now_ms,
        };
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance.call_check(&mut store, &ctx).await
        };
        let result = match tokio::time::timeout(timeout + DEADLINE_MARGIN, call).await {
            Err(_) => Err(CallError::Timeout(timeout)),
            Ok(Err(e)) => Err(describe_trap(&e, timeout, grants.memory_limit)),
            Ok(Ok(Err(message))) => Err(CallError::Plugin(truncate(message, MAX_SUMMARY_BYTES))),
            Ok(Ok(Ok(r))) => from_wit_result(r),
        };
        let state = store.into_data();
        CallReport {
            result,
            logs: state.logs,
            http_requests: state.http_requests,
            elapsed: started.elapsed(),
        }
    }
}
