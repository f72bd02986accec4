//! Log lines for the agent's log, tagged by the host with the app and the
//! plugin entry. The host rate-limits them, truncates long ones (2 KiB) and
//! removes secret values; do not log secrets anyway.
//!
//! Each level is a function taking a message and a macro taking `format!`
//! arguments:
//!
//! ```ignore
//! log::info("starting");
//! log::warn!("{url} answered {status}");
//! ```

pub use crate::bindings::rollback::plugin::log::Level;

/// Records `message` at `level`.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// Records a `trace` message.
pub fn trace(message: &str) {
    log(Level::Trace, message)
}

/// Records a `debug` message.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Records an `info` message.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Records a `warn` message.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Records an `error` message.
pub fn error(message: &str) {
    log(Level::Error, message)
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_trace {
    ($($arg:tt)*) => { $crate::log::trace(&::std::format!($($arg)*)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug {
    ($($arg:tt)*) => { $crate::log::debug(&::std::format!($($arg)*)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_info {
    ($($arg:tt)*) => { $crate::log::info(&::std::format!($($arg)*)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn {
    ($($arg:tt)*) => { $crate::log::warn(&::std::format!($($arg)*)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_error {
    ($($arg:tt)*) => { $crate::log::error(&::std::format!($($arg)*)) };
}

/// `trace!("...", args)`: [`trace`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_trace as trace;

/// `debug!("...", args)`: [`debug`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_debug as debug;

/// `info!("...", args)`: [`info`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_info as info;

/// `warn!("...", args)`: [`warn`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_warn as warn;

/// `error!("...", args)`: [`error`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_error as error;

#[cfg(target_arch = "wasm32")]
mod imp {
    pub use crate::bindings::rollback::plugin::log::log;
}

/// Native builds: lines go to stderr.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        eprintln!("[{level}] {message}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn functions_and_macros() {
        super::info("plain");
        let n = 3;
        crate::log::warn!("{n} formatted");
        super::debug!("and {}", "positional");
    }
}
