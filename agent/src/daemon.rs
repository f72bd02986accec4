//! Bringing the agent up and down.
//!
//! Owns start-up order: compile every check's and hook's plugin (from the
//! compiled-component cache when it can; a bad plugin, pin mismatch or
//! missing secret refuses to start, naming it, before anything is written),
//! open the store, give each plugin entry its sandbox (grants, resolved
//! secrets, kv space), start one supervisor per app (each reconciles with
//! its directory first), bind the control socket, and only then report
//! ready. On SIGTERM or SIGINT it stops accepting calls, flushes the store
//! and removes the socket.
//!
//! Must never act on an app itself: supervisors do that.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, HookEvent, PluginEntry};
use crate::control::{self, Control};
use crate::plugin::{Grants, HostOptions, Kv, Plugin, PluginHost, Sandbox, World};
use crate::protocol::PluginView;
use crate::store::{KvSpace, Store};
use crate::supervisor::{LoadedCheck, LoadedHook, Supervisor};

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

    fn sandbox(&self, store: &Store) -> anyhow::Result<Arc<Sandbox>> {
        let kv = store.kv_space(&self.app, &format!("{}:{}", self.kind(), self.name));
        Ok(Sandbox::new(
            Grants {
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
            },
            Arc::new(kv),
        )?)
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

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let max_memory = config
        .apps
        .values()
        .flat_map(|a| {
            let checks = a.checks.iter().map(|c| c.entry.memory_limit);
            checks.chain(a.hooks.iter().map(|h| h.entry.memory_limit))
        })
        .max();
    let host = PluginHost::with_options(HostOptions {
        cache_dir: Some(config.agent.state_dir.join("plugin-cache")),
        max_memory,
    })?;
    // Plugins first: a bad plugin must refuse to start before the store is touched.
    let cfg = config.clone();
    let (host, compiled) =
        tokio::task::spawn_blocking(move || compile_all(&host, &cfg).map(|c| (host, c)))
            .await
            .context("plugin compilation panicked")??;
    tracing::info!(
        compiled = host.compiled(),
        from_cache = host.cache_hits(),
        pooling = host.pooling(),
        "plugins ready"
    );

    let db_dir = config.agent.state_dir.join("db");
    std::fs::create_dir_all(&db_dir)
        .with_context(|| format!("cannot create state directory {}", db_dir.display()))?;
    let store = Store::open(&db_dir)
        .with_context(|| format!("cannot open the state store in {}", db_dir.display()))?;

    let views = compiled.iter().map(Compiled::view).collect();
    let mut checks: BTreeMap<&str, Vec<LoadedCheck>> = BTreeMap::new();
    let mut hooks: BTreeMap<&str, Vec<LoadedHook>> = BTreeMap::new();
    for c in &compiled {
        let sandbox = c.sandbox(&store)?;
        match &c.role {
            Role::Check {
                interval,
                fail_after,
                rule,
                severity,
                on_error,
            } => checks.entry(&c.app).or_default().push(LoadedCheck {
                name: c.name.clone(),
                interval: *interval,
                fail_after: *fail_after,
                rule: *rule,
                severity: *severity,
                on_error: *on_error,
                plugin: c.plugin.clone(),
                sandbox,
            }),
            Role::Hook { on } => hooks.entry(&c.app).or_default().push(LoadedHook {
                name: c.name.clone(),
                on: on.clone(),
                plugin: c.plugin.clone(),
                sandbox,
            }),
        }
    }
    let mut apps = BTreeMap::new();
    for (name, app) in &config.apps {
        let app_checks = checks.remove(name.as_str()).unwrap_or_default();
        let app_hooks = hooks.remove(name.as_str()).unwrap_or_default();
        let snapshots = crate::snapshot::Snapshots::new(&config.agent.state_dir);
        let handle =
            Supervisor::start(app.clone(), store.clone(), app_checks, app_hooks, snapshots)
                .with_context(|| format!("app `{name}` (root {})", app.root.display()))?;
        apps.insert(name.clone(), handle);
    }

    // Events are kept `history_retention` (at least 30 days), then pruned.
    let retention = config.agent.history_retention;
    let pruner = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(6 * 3600));
            loop {
                every.tick().await;
                let cutoff = crate::store::now_ms().saturating_sub(retention.as_millis() as u64);
                match store.prune_events(cutoff) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "pruned old events"),
                    Err(e) => tracing::error!("cannot prune events: {e}"),
                }
            }
        })
    };

    let listener = control::bind(&config.agent.socket)?;
    let server = Arc::new(Control::new(store.clone(), apps, views));
    let serving = tokio::spawn(server.serve(listener));
    tracing::info!(socket = %config.agent.socket.display(), apps = config.apps.len(), "ready");
    crate::systemd::ready(&format!("supervising {} app(s)", config.apps.len()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    crate::systemd::stopping();
    serving.abort();
    pruner.abort();
    let _ = std::fs::remove_file(&config.agent.socket);
    store.flush()?;
    drop(host);
    Ok(())
}
