//! Deterministic crash points for the crash tests.
//!
//! Built with the `failpoints` feature (the test build), `hit(NAME)` kills
//! the process with `SIGKILL` when the environment variable
//! `ROLLBACK_AGENT_FAILPOINT` equals NAME: the same as `kill -9` at that
//! instant, with no destructor or flush run. Without the feature `hit` is
//! empty and the variable is never read.
//!
//! Must never change behaviour otherwise: a point that is not named does
//! nothing.

/// Kills the process here if the fail point `name` is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("ROLLBACK_AGENT_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("fail point {name}: SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// `hit("OP.POINT")`, e.g. `deploy.after-swap`.
#[cfg(feature = "failpoints")]
pub fn hit_in(op: &str, point: &str) {
    hit(&format!("{op}.{point}"));
}

/// Does nothing: fail points are compiled out.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit_in(_op: &str, _point: &str) {}

/// Does nothing: fail points are compiled out.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
