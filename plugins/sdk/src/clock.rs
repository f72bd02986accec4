//! Time from the host (`wasm32-unknown-unknown` has no clock of its own).

/// Wall-clock time, milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// A monotonic clock in nanoseconds, for measuring durations only.
pub fn monotonic_ns() -> u64 {
    imp::monotonic_ns()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    pub use crate::bindings::rollback::plugin::clock::{monotonic_ns, now_ms};
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn monotonic_ns() -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        let elapsed = START.get_or_init(Instant::now).elapsed();
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clocks_move() {
        let a = super::monotonic_ns();
        assert!(super::now_ms() > 1_600_000_000_000);
        assert!(super::monotonic_ns() >= a);
    }
}
