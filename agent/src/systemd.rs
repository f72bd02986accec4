//! Talking to systemd: readiness and status notifications.
//!
//! Owns sd_notify messages (`READY=1`, `STATUS=`, `WATCHDOG=1`,
//! `STOPPING=1`). Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.
//!
//! Must never fail the agent: a notification that cannot be sent is logged.

use sd_notify::NotifyState;

fn notify(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// The socket is bound and every app reconciled.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutting down.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(line: &str) {
    notify(&[NotifyState::Status(line)]);
}

/// The watchdog period systemd expects pings within, if `WatchdogSec` is set.
pub fn watchdog_period() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
}

/// Tells systemd the agent is alive.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}
