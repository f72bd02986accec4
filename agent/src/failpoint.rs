//! Deterministic crash points for the crash tests.
//!
//! Built with the `failpoints` feature (the test build), `hit(NAME)` kills
//! the process with `SIGKILL` when the environment variable
//! `ROLLBACK_AGENT_FAILPOINT` equals NAME: the same as `kill -9` at that
//! instant, with no destructor or flush run. `panic_once(NAME)` panics the
//! first time it is reached when `ROLLBACK_AGENT_PANIC` equals NAME (a bug
//! in a task, for the tests of what survives one). Without the feature both
//! are empty and the variables are never read.
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

/// Panics here, once per process, if `ROLLBACK_AGENT_PANIC` names `name`.
#[cfg(feature = "failpoints")]
pub fn panic_once(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let armed = ARMED.get_or_init(|| std::env::var("ROLLBACK_AGENT_PANIC").ok());
    if armed.as_deref() == Some(name) && !FIRED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        panic!("fail point {name}");
    }
}

/// Does nothing: fail points are compiled out.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn panic_once(_name: &str) {}

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
