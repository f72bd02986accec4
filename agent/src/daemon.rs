//! Bringing the agent up and down.
//!
//! Owns start-up order: compile every check's and hook's plugin (from the
//! compiled-component cache when it can; a bad plugin, pin mismatch or
//! missing secret refuses to start, naming it, before anything is written),
//! open the store, give each plugin entry its sandbox (grants, resolved
//! secrets, kv space), start one supervisor per app (each reconciles with
//! its directory first), serve the control socket, and only then report
//! ready. On `Signal::Shutdown` (SIGTERM or SIGINT in `rollbackd`) it stops
//! accepting calls, flushes the store and removes the socket; on
//! `Signal::Reload` (SIGHUP) it reloads. It never installs signal handlers
//! itself except in `main`, so that it can run inside another program.
//!
//! Must never act on an app itself: supervisors do that.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{AppConfig, Config, HookEvent, PluginEntry};
use crate::control::{self, Control};
use crate::plugin::{Grants, HostOptions, Kv, Plugin, PluginHost, Sandbox, World};
use crate::protocol::PluginView;
use crate::store::{KvSpace, Store};
use crate::supervisor::{AppHandle, LoadedCheck, LoadedHook, Supervisor};

impl Kv for KvSpace {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        KvSpace::get(self, key).map_err(|e| e.to_string())
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        KvSpace::set(self, key, value).map_err(|e| e.to_string())
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        KvSpace::delete(self, key).map_err(|e| e.to_string())
    }
    fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        KvSpace::keys(self, prefix).map_err(|e| e.to_string())
    }
    fn usage(&self) -> Result<u64, String> {
        KvSpace::usage(self).map_err(|e| e.to_string())
    }
}

/// What a plugin entry is for.
enum Role {
    Check {
        interval: std::time::Duration,
        fail_after: u32,
        rule: crate::policy::Rule,
        severity: crate::policy::Severity,
        on_error: crate::policy::OnError,
        min_conclusive: u32,
    },
    Hook {
        on: Vec<HookEvent>,
    },
}

/// One plugin entry of the config, compiled, with its secrets resolved.
struct Compiled {
    app: String,
    name: String,
    role: Role,
    entry: PluginEntry,
    plugin: Arc<Plugin>,
    secrets: BTreeMap<String, String>,
}

impl Compiled {
    fn kind(&self) -> &'static str {
        match self.role {
            Role::Check { .. } => "check",
            Role::Hook { .. } => "hook",
        }
    }

    fn sandbox(
        &self,
        store: &Store,
        turn: Option<Arc<tokio::sync::Mutex<()>>>,
        client: &crate::plugin::HttpClient,
    ) -> Arc<Sandbox> {
        // Entries of one app that name the same kv_scope share one store
        // (e.g. two checks refreshing one rotating marketplace token).
        let space = match &self.entry.kv_scope {
            Some(scope) => format!("scope:{scope}"),
            None => format!("{}:{}", self.kind(), self.name),
        };
        let kv = Arc::new(store.kv_space(&self.app, &space));
        let grants = Grants {
            app: self.app.clone(),
            entry: self.name.clone(),
            plugin: self
                .entry
                .plugin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            allow_hosts: self.entry.allow_hosts.clone(),
            config: self.entry.config.clone(),
            secrets: self.secrets.clone(),
            timeout: self.entry.timeout,
            memory_limit: self.entry.memory_limit,
            max_response_bytes: self.entry.max_response_bytes,
        };
        Sandbox::with_client(grants, kv, turn, client.clone())
    }

    fn view(&self) -> PluginView {
        PluginView {
            app: self.app.clone(),
            kind: self.kind().to_string(),
            name: self.name.clone(),
            plugin: self.entry.plugin.display().to_string(),
            sha256: self.plugin.digest().to_string(),
            pinned: self.entry.sha256.is_some(),
            cached: self.plugin.from_cache(),
            contract: format!("rollback:plugin@{}", self.plugin.wit_version()),
            allow_hosts: self
                .entry
                .allow_hosts
                .iter()
                .map(|h| h.to_string())
                .collect(),
            config: self.entry.config.clone(),
            secrets: self.secrets.keys().cloned().collect(),
            timeout_ms: self.entry.timeout.as_millis() as u64,
            memory_limit: self.entry.memory_limit,
            max_response_bytes: self.entry.max_response_bytes,
            kv_scope: self.entry.kv_scope.clone(),
            on: match &self.role {
                Role::Hook { on } => on.iter().map(|e| e.as_str().to_string()).collect(),
                Role::Check { .. } => Vec::new(),
            },
        }
    }
}

/// Compiles every entry (each file once per world and pin) and resolves
/// secrets; the first failure names app, entry and file.
fn compile_all(host: &PluginHost, config: &Config) -> anyhow::Result<Vec<Compiled>> {
    let mut seen: BTreeMap<(PathBuf, &'static str), Arc<Plugin>> = BTreeMap::new();
    let mut out = Vec::new();
    for (app, cfg) in &config.apps {
        let checks = cfg.checks.iter().map(|c| {
            let role = Role::Check {
                interval: c.interval,
                fail_after: c.fail_after,
                rule: c.rule,
                severity: c.severity,
                on_error: c.on_error,
                min_conclusive: c.min_conclusive,
            };
            (&c.name, role, &c.entry)
        });
        let hooks = cfg
            .hooks
            .iter()
            .map(|h| (&h.name, Role::Hook { on: h.on.clone() }, &h.entry));
        for (name, role, entry) in checks.chain(hooks) {
            let (kind, world) = match role {
                Role::Check { .. } => ("check", World::HealthCheck),
                Role::Hook { .. } => ("hook", World::RollbackHook),
            };
            let what = || format!("app `{app}`, {kind} `{name}`");
            let plugin = match seen.get(&(entry.plugin.clone(), kind)) {
                Some(p) if entry.sha256.as_deref().is_none_or(|pin| pin == p.digest()) => p.clone(),
                _ => {
                    let p = Arc::new(
                        host.load_world(&entry.plugin, world, entry.sha256.as_deref())
                            .with_context(what)?,
                    );
                    tracing::info!(
                        plugin = %entry.plugin.display(),
                        digest = %p.digest(),
                        cached = p.from_cache(),
                        "plugin loaded"
                    );
                    seen.insert((entry.plugin.clone(), kind), p.clone());
                    p
                }
            };
            let mut secrets = BTreeMap::new();
            for (secret, reference) in &entry.secrets {
                let value = reference
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("{}: secret `{secret}`: {e}", what()))?;
                secrets.insert(secret.clone(), value);
            }
            out.push(Compiled {
                app: app.clone(),
                name: name.clone(),
                role,
                entry: entry.clone(),
                plugin,
                secrets,
            });
        }
    }
    Ok(out)
}

/// Per app: its checks and hooks, ready to hand to a supervisor.
type Loaded = BTreeMap<String, (Vec<LoadedCheck>, Vec<LoadedHook>)>;

/// Compiles (or takes from the cache) every plugin of `config`, off the
/// async runtime.
async fn compile(host: &Arc<PluginHost>, config: &Config) -> anyhow::Result<Vec<Compiled>> {
    let (host, cfg) = (host.clone(), config.clone());
    tokio::task::spawn_blocking(move || compile_all(&host, &cfg))
        .await
        .context("plugin compilation panicked")?
}

/// Gives each compiled entry its sandbox and groups them per app.
fn load(compiled: &[Compiled], store: &Store) -> anyhow::Result<Loaded> {
    let mut loaded: Loaded = BTreeMap::new();
    // One HTTP client (one connection pool, one TLS setup) for every entry.
    let client = crate::plugin::http_client()?;
    // One turn per (app, kv_scope): entries sharing a store run one at a time.
    let mut turns: BTreeMap<(&str, &str), Arc<tokio::sync::Mutex<()>>> = BTreeMap::new();
    for c in compiled {
        let turn = c
            .entry
            .kv_scope
            .as_deref()
            .map(|scope| turns.entry((c.app.as_str(), scope)).or_default().clone());
        let sandbox = c.sandbox(store, turn, &client);
        let (checks, hooks) = loaded.entry(c.app.clone()).or_default();
        match &c.role {
            Role::Check {
                interval,
                fail_after,
                rule,
                severity,
                on_error,
                min_conclusive,
            } => checks.push(LoadedCheck {
                name: c.name.clone(),
                interval: *interval,
                fail_after: *fail_after,
                rule: *rule,
                severity: *severity,
                on_error: *on_error,
                min_conclusive: *min_conclusive,
                plugin: c.plugin.clone(),
                sandbox,
            }),
            Role::Hook { on } => hooks.push(LoadedHook {
                name: c.name.clone(),
                on: on.clone(),
                plugin: c.plugin.clone(),
                sandbox,
            }),
        }
    }
    Ok(loaded)
}

/// The running agent: what a reload replaces.
struct Running {
    config: Config,
    host: Arc<PluginHost>,
    store: Store,
    apps: BTreeMap<String, AppHandle>,
    control: Arc<Control>,
    /// Drop-in deploys of apps with `watch = true`; dropping it stops them.
    watching: Option<crate::watch::WatchHandle>,
    /// The fleet membership, with `[fleet]`.
    fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl Running {
    /// (Re)starts the drop-in watchers for the current apps. The old ones go
    /// first, so that they release the handles of removed apps.
    fn rewatch(&mut self) -> Result<(), crate::watch::WatchError> {
        self.watching = None;
        let watched: Vec<_> = self
            .config
            .apps
            .values()
            .filter_map(|a| self.apps.get(&a.name).map(|h| (a.clone(), h.clone())))
            .collect();
        self.watching = Some(crate::watch::spawn(watched)?);
        Ok(())
    }

    fn start_app(&self, app: &AppConfig, loaded: &mut Loaded) -> AppHandle {
        let (checks, hooks) = loaded.remove(&app.name).unwrap_or_default();
        let snapshots = crate::snapshot::Snapshots::new(&self.config.agent.state_dir);
        let journal = crate::journal::Journal::new(&self.config.agent.state_dir);
        Supervisor::start(
            app.clone(),
            self.store.clone(),
            checks,
            hooks,
            snapshots,
            journal,
        )
    }

    /// Reads the config file again. An invalid config (or plugin) keeps the
    /// running one; a valid one is applied app by app: changed apps get their
    /// new settings and plugins without losing their checks' state, new apps
    /// start, removed apps stop. `[agent]` settings need a restart.
    async fn reload(&mut self) {
        let new = match Config::load(&self.config.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, keeping the running config: {e}");
                return;
            }
        };
        if new.agent.socket != self.config.agent.socket
            || new.agent.state_dir != self.config.agent.state_dir
        {
            tracing::warn!("changes to [agent] socket and state_dir take effect at the next start");
        }
        if new.fleet != self.config.fleet {
            tracing::warn!("changes to [fleet] take effect at the next start");
        }
        let compiled = match compile(&self.host, &new).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "reload refused, keeping the running config: {}",
                    crate::error_text(e.chain())
                );
                return;
            }
        };
        let mut loaded = match load(&compiled, &self.store) {
            Ok(l) => l,
            Err(e) => return tracing::error!("reload refused: {e:#}"),
        };
        let mut apps = BTreeMap::new();
        for (name, app) in &new.apps {
            let same_root = self
                .config
                .apps
                .get(name)
                .is_some_and(|old| old.root == app.root);
            let handle = match self.apps.remove(name) {
                Some(handle) if same_root => {
                    let (checks, hooks) = loaded.remove(name).unwrap_or_default();
                    if let Err(e) = handle.reload(app.clone(), checks, hooks).await {
                        tracing::error!(app = %name, "cannot reload: {e}");
                    }
                    handle
                }
                // New, or moved to another root: a supervisor of its own.
                _ => self.start_app(app, &mut loaded),
            };
            apps.insert(name.clone(), handle);
        }
        for gone in self.apps.keys() {
            tracing::info!(app = %gone, "no longer in the config: supervision stops");
        }
        // Dropping the old handles (here and in the control registry) ends
        // the supervisors of removed apps.
        self.control
            .replace(apps.clone(), compiled.iter().map(Compiled::view).collect());
        if let Some(fleet) = &self.fleet {
            fleet.replace_apps(apps.clone());
        }
        self.apps = apps;
        self.config = Config {
            agent: self.config.agent.clone(),
            fleet: self.config.fleet.clone(),
            ..new
        };
        if let Err(e) = self.rewatch() {
            tracing::error!("drop-in deploys stopped: {e}");
        }
        tracing::info!(apps = self.apps.len(), "config reloaded");
    }
}

/// What the agent is told from outside while it runs: by the binary from
/// SIGHUP, SIGTERM and SIGINT, by an embedding program (the tests) directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Read the config file again (as on SIGHUP).
    Reload,
    /// Stop accepting calls, flush the store and return.
    Shutdown,
}

/// How an agent is brought up besides its config.
#[derive(Default)]
pub struct Options {
    /// A plugin host to compile and run on instead of one of its own (with
    /// the state dir's cache): several agents in one process (the tests) share
    /// one warm host. Its memory pool must fit the config's limits.
    pub host: Option<Arc<PluginHost>>,
}

/// An agent brought up (plugins compiled, store open, supervisors started)
/// that does not serve calls yet.
pub struct Started {
    running: Running,
    socket_gid: Option<u32>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Most events one pruning pass removes before the next is scheduled (a
/// pass holds a blocking thread, not the runtime).
const PRUNE_BATCH: usize = 10_000;

/// Brings the agent up, in start-up order, without a socket: a bad plugin
/// refuses to start before the store is touched.
pub async fn start(config: Config, options: Options) -> anyhow::Result<Started> {
    let host = match options.host {
        Some(host) => host,
        None => {
            let max_memory = config
                .apps
                .values()
                .flat_map(|a| {
                    let checks = a.checks.iter().map(|c| c.entry.memory_limit);
                    checks.chain(a.hooks.iter().map(|h| h.entry.memory_limit))
                })
                .max();
            Arc::new(PluginHost::with_options(HostOptions {
                cache_dir: Some(config.agent.state_dir.join("plugin-cache")),
                // Room for later reloads that raise a limit.
                max_memory: max_memory.map(|m| m.max(crate::config::DEFAULT_MEMORY_LIMIT)),
            })?)
        }
    };
    // Plugins first: a bad plugin must refuse to start before the store is touched.
    let compiled = compile(&host, &config).await?;
    tracing::info!(
        compiled = host.compiled(),
        from_cache = host.cache_hits(),
        pooling = host.pooling(),
        "plugins ready"
    );

    let authz = control::Authz::new(
        config.agent.admin_group.as_deref(),
        config.agent.socket_group.as_deref(),
    )?;
    let socket_gid = authz.socket_gid();

    let db_dir = config.agent.state_dir.join("db");
    std::fs::create_dir_all(&db_dir)
        .with_context(|| format!("cannot create state directory {}", db_dir.display()))?;
    let store = Store::open(&db_dir)
        .with_context(|| format!("cannot open the state store in {}", db_dir.display()))?;

    let views = compiled.iter().map(Compiled::view).collect();
    let mut loaded = load(&compiled, &store)?;
    let control = Arc::new(Control::new(
        store.clone(),
        BTreeMap::new(),
        Vec::new(),
        authz,
    ));
    let mut running = Running {
        config: config.clone(),
        host,
        store: store.clone(),
        apps: BTreeMap::new(),
        control: control.clone(),
        watching: None,
        fleet: None,
    };
    for app in config.apps.values() {
        let handle = running.start_app(app, &mut loaded);
        running.apps.insert(app.name.clone(), handle);
    }
    control.replace(running.apps.clone(), views);

    running.rewatch().context("drop-in deploys")?;

    let mut tasks = Vec::new();
    // The fleet: a session of its own; local supervision never waits on it.
    if let Some(fleet_cfg) = config.fleet.clone() {
        let fleet = crate::fleet::Fleet::new(fleet_cfg, store.clone(), running.apps.clone());
        control.set_fleet(fleet.clone());
        tasks.push(fleet.start());
        running.fleet = Some(fleet);
    }
    // Events are kept `history_retention` (at least 30 days), then pruned,
    // off the runtime and in bounded batches.
    let retention = config.agent.history_retention;
    tasks.push({
        let store = store.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(6 * 3600));
            loop {
                every.tick().await;
                let cutoff = crate::store::now_ms().saturating_sub(retention.as_millis() as u64);
                let mut removed = 0;
                loop {
                    let store = store.clone();
                    let pass = tokio::task::spawn_blocking(move || {
                        store.prune_events(cutoff, PRUNE_BATCH)
                    })
                    .await;
                    match pass {
                        Ok(Ok(p)) => {
                            removed += p.removed;
                            if p.removed < PRUNE_BATCH {
                                break;
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::error!("cannot prune events: {e}");
                            break;
                        }
                        Err(e) => {
                            tracing::error!("event pruning failed: {e}");
                            break;
                        }
                    }
                }
                if removed > 0 {
                    tracing::info!(removed, "pruned old events");
                }
            }
        })
    });

    if let Some(path) = config.agent.metrics_textfile.clone() {
        tasks.push(crate::metrics::spawn_textfile(
            path,
            std::time::Duration::from_secs(15),
        ));
    }
    if let Some(addr) = config.agent.metrics_listen {
        tasks.push(
            crate::metrics::serve(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        );
    }
    Ok(Started {
        running,
        socket_gid,
        tasks,
    })
}

impl Started {
    /// The group the control socket is to be given (`socket_group`).
    pub fn socket_gid(&self) -> Option<u32> {
        self.socket_gid
    }

    /// Serves calls on `listener` until `signals` says `Shutdown` (or is
    /// closed); `Reload`, or a change to the config or a plugin file, reloads.
    pub async fn serve(
        self,
        listener: tokio::net::UnixListener,
        mut signals: tokio::sync::mpsc::Receiver<Signal>,
    ) -> anyhow::Result<()> {
        let Started {
            mut running,
            mut tasks,
            ..
        } = self;
        let config = running.config.clone();
        let store = running.store.clone();
        tasks.push(tokio::spawn(running.control.clone().serve(listener)));
        tracing::info!(socket = %config.agent.socket.display(), apps = config.apps.len(), "ready");
        crate::systemd::ready(&format!("supervising {} app(s)", config.apps.len()));

        // STATUS= every few seconds, and WATCHDOG=1 at half the period systemd
        // expects when `WatchdogSec` is set (a stalled runtime stops the pings).
        tasks.push({
            let store = store.clone();
            let period = crate::systemd::watchdog_period()
                .map(|w| (w / 2).min(std::time::Duration::from_secs(10)))
                .unwrap_or(std::time::Duration::from_secs(10));
            let watchdog = crate::systemd::watchdog_period().is_some();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(period);
                loop {
                    every.tick().await;
                    if watchdog {
                        crate::systemd::watchdog();
                    }
                    if let Ok(apps) = store.apps() {
                        crate::systemd::status(&status_line(&apps));
                    }
                }
            })
        });

        let mut config_changed = watch_files(watched_files(&config));
        loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Some(Signal::Reload) => {
                        running.reload().await;
                        config_changed = watch_files(watched_files(&running.config));
                    }
                    Some(Signal::Shutdown) | None => break,
                },
                Some(()) = config_changed.recv() => {
                    tracing::info!("config or plugin file changed: reloading");
                    running.reload().await;
                    config_changed = watch_files(watched_files(&running.config));
                }
            }
        }
        crate::systemd::stopping();
        for task in tasks {
            task.abort();
        }
        let _ = std::fs::remove_file(&config.agent.socket);
        store.save_unsaved()?;
        Ok(())
    }
}

/// Brings the agent up and serves on `listener` until `signals` says
/// `Shutdown`: the whole agent, for a program that binds its own socket.
pub async fn run(
    config: Config,
    listener: tokio::net::UnixListener,
    signals: tokio::sync::mpsc::Receiver<Signal>,
    options: Options,
) -> anyhow::Result<()> {
    start(config, options).await?.serve(listener, signals).await
}

/// `rollbackd`: brings the agent up, only then binds the control socket
/// (so that a client that connects finds it ready), and runs until SIGTERM
/// or SIGINT; SIGHUP reloads the config.
pub async fn main(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    raise_fd_limit();
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let socket = config.agent.socket.clone();
    let started = start(config, Options::default()).await?;
    let listener = control::bind(&socket, started.socket_gid())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let signals = tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); Signal::Shutdown }
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); Signal::Shutdown }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading"); Signal::Reload }
            };
            if tx.send(signal).await.is_err() || signal == Signal::Shutdown {
                return;
            }
        }
    });
    let result = started.serve(listener, rx).await;
    signals.abort();
    result
}

/// Raises the soft limit on open files to the hard one: clients, checks and
/// staging all need descriptors, and the default soft limit (1024) is low.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!("cannot raise the open-file limit from {soft}: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

/// One line for `systemctl status`: each app's state and active release.
fn status_line(apps: &[crate::domain::App]) -> String {
    let parts: Vec<String> = apps
        .iter()
        .map(|a| {
            let paused = if a.paused { ", paused" } else { "" };
            format!(
                "{} {} {}{paused}",
                a.name,
                a.state.as_str(),
                a.active.as_deref().unwrap_or("-")
            )
        })
        .collect();
    format!("{} app(s): {}", apps.len(), parts.join("; "))
}

/// The config file and every plugin file it names.
fn watched_files(config: &Config) -> Vec<std::path::PathBuf> {
    let mut files = vec![config.path.clone()];
    for app in config.apps.values() {
        files.extend(app.checks.iter().map(|c| c.entry.plugin.clone()));
        files.extend(app.hooks.iter().map(|h| h.entry.plugin.clone()));
    }
    files.sort();
    files.dedup();
    files
}

/// Notifies (debounced) when one of `files` is written or replaced. Watches
/// their directories, since editors and deploy tools replace files by renaming.
fn watch_files(files: Vec<std::path::PathBuf>) -> tokio::sync::mpsc::Receiver<()> {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::unbounded_channel();
    let wanted = files.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let ours = ev.paths.iter().any(|p| wanted.contains(p));
            let change = matches!(
                ev.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_)
            );
            if ours && change {
                let _ = raw_tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch the config file (SIGHUP still reloads): {e}");
            return rx;
        }
    };
    let mut dirs: Vec<&std::path::Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!("cannot watch {} (SIGHUP still reloads): {e}", dir.display());
        }
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        while raw_rx.recv().await.is_some() {
            // Let a burst of writes settle before reading the files.
            loop {
                match tokio::time::timeout(std::time::Duration::from_millis(500), raw_rx.recv())
                    .await
                {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    rx
}
