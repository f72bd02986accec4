//! Bringing the agent up and down.
//!
//! Owns start-up order: open the store, compile every check's plugin (a bad
//! plugin or config refuses to start, naming it), start one supervisor per
//! app (each reconciles with its directory first), bind the control socket,
//! and only then report ready. On SIGTERM or SIGINT it stops accepting calls,
//! flushes the store and removes the socket.
//!
//! Must never act on an app itself: supervisors do that.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::control::{self, Control};
use crate::plugin::{Grants, PluginHost, Sandbox, DEFAULT_MAX_RESPONSE_BYTES};
use crate::store::Store;
use crate::supervisor::{LoadedCheck, Supervisor};

/// Compiles every check of every app; the first failure names app, check and file.
fn load_checks(
    host: &PluginHost,
    config: &Config,
) -> anyhow::Result<BTreeMap<String, Vec<LoadedCheck>>> {
    let mut cache: BTreeMap<std::path::PathBuf, Arc<crate::plugin::Plugin>> = BTreeMap::new();
    let mut all = BTreeMap::new();
    for (name, app) in &config.apps {
        let mut checks = Vec::new();
        for c in &app.checks {
            let plugin = match cache.get(&c.plugin) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(
                        host.load(&c.plugin)
                            .with_context(|| format!("app `{name}`, check `{}`", c.name))?,
                    );
                    tracing::info!(plugin = %c.plugin.display(), digest = %p.digest(), "plugin compiled");
                    cache.insert(c.plugin.clone(), p.clone());
                    p
                }
            };
            let sandbox = Sandbox::new(Grants {
                app: name.clone(),
                check: c.name.clone(),
                allow_hosts: c.allow_hosts.clone(),
                config: c.config.clone(),
                secrets: BTreeMap::new(),
                timeout: c.timeout,
                memory_limit: c.memory_limit,
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            })?;
            checks.push(LoadedCheck {
                name: c.name.clone(),
                interval: c.interval,
                fail_after: c.fail_after,
                plugin,
                sandbox: Arc::new(sandbox),
            });
        }
        all.insert(name.clone(), checks);
    }
    Ok(all)
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Plugins first: a bad plugin must refuse to start before anything is written.
    let host = PluginHost::new()?;
    let cfg = config.clone();
    let (host, mut checks) =
        tokio::task::spawn_blocking(move || load_checks(&host, &cfg).map(|c| (host, c)))
            .await
            .context("plugin compilation panicked")??;

    let db_dir = config.agent.state_dir.join("db");
    std::fs::create_dir_all(&db_dir)
        .with_context(|| format!("cannot create state directory {}", db_dir.display()))?;
    let store = Store::open(&db_dir)
        .with_context(|| format!("cannot open the state store in {}", db_dir.display()))?;

    let mut apps = BTreeMap::new();
    for (name, app) in &config.apps {
        let handle = Supervisor::start(
            app.clone(),
            store.clone(),
            checks.remove(name).unwrap_or_default(),
        )
        .with_context(|| format!("app `{name}` (root {})", app.root.display()))?;
        apps.insert(name.clone(), handle);
    }

    let listener = control::bind(&config.agent.socket)?;
    let server = Arc::new(Control::new(store.clone(), apps));
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
    let _ = std::fs::remove_file(&config.agent.socket);
    store.flush()?;
    drop(host);
    Ok(())
}
