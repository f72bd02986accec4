//! `agent.toml` text: any input is a `Config` or a `ConfigError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = std::path::Path::new("/etc/rollback-agent/agent.toml");
        if let Err(e) = rollback_agent::config::Config::parse(text, path) {
            // The error's text is what an operator sees: building it must not panic.
            let _ = e.to_string();
        }
    }
});
