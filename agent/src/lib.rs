//! rollback-agent: atomic releases, WebAssembly health checks, automatic rollback.
//!
//! The library behind the `rollbackd` daemon and the `rollbackctl` client.
//! See `ARCHITECTURE.md` for the code map and the invariants; in short, the
//! supervisor drives `release`, `plugin`, `policy`, `restart` and `store`;
//! `control` only sends commands to supervisors and reads the store; `ctl`
//! shares only `protocol` with it.

pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod domain;
pub mod failpoint;
pub mod fdpass;
pub mod fleet;
mod fsutil;
pub mod incident;
pub mod journal;
pub mod lifecycle;
pub mod live;
pub mod machine;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod protocol;
pub mod release;
pub mod restart;
pub mod snapshot;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod watch;

/// The message a panic carried (`panic!` with a text), or `panic`.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// One line for an error and its sources, skipping a source whose text the
/// line already contains (many messages embed their cause).
pub fn error_text<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut text = String::new();
    for e in chain {
        let part = e.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
