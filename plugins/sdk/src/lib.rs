//! `rollback-plugin-sdk`: write rollback-agent plugins in Rust.
//!
//! A plugin is a WebAssembly component built for `wasm32-unknown-unknown`
//! from a `cdylib` crate. It implements one world of `wit/plugin.wit`, picked
//! with a cargo feature of this crate:
//!
//! - `check`: a health check. Implement [`check::Guest`] and export it with
//!   `check::export_check!`.
//! - `hook`: a rollback hook. Implement `hook::Guest` and export it with
//!   `hook::export_hook!`.
//!
//! Enable only the feature of the world the plugin implements. The world's
//! exports reach the component through the export macro only (the SDK's own
//! bindings just import), so a health check never has to export `on-event`;
//! with one feature it does not even carry the other world's types.
//!
//! The host interfaces come as plain Rust helpers, the same for both worlds:
//!
//! - [`config`]: typed access to the entry's `config` and `secrets` tables.
//! - [`http`]: outbound requests through the host ([`http::get`],
//!   [`http::post_json`], [`http::Request`]) and [`http::Response`] with JSON
//!   decoding.
//! - [`kv`]: the entry's small persistent store, raw or as JSON.
//! - [`log`]: `log::info("...")` or `log::info!("{x}")`, and the other levels.
//! - [`clock`]: wall-clock and monotonic time.
//! - [`types`]: the WIT records, with constructors such as
//!   [`CheckResult::pass`](types::CheckResult::pass).
//!
//! # Example: a health check
//!
//! ```no_run
//! # #[cfg(feature = "check")]
//! # mod example {
//! use rollback_plugin_sdk::check::{self, CheckContext, CheckResult, Guest};
//! use rollback_plugin_sdk::{config, http, serde_json::Value};
//!
//! struct QueueDepth;
//!
//! impl Guest for QueueDepth {
//!     fn check(_ctx: CheckContext) -> Result<CheckResult, String> {
//!         let url = config::required("url")?;
//!         let max: u64 = config::parse("max_depth")?.unwrap_or(1000);
//!         let stats: Value = http::get(&url)?.error_for_status()?.json()?;
//!         let depth = stats["depth"].as_u64().ok_or("no `depth` in the answer")?;
//!         let result = if depth > max {
//!             CheckResult::fail(format!("queue depth {depth} > {max}"))
//!         } else {
//!             CheckResult::pass(format!("queue depth {depth}"))
//!         };
//!         Ok(result.metric("queue_depth", depth as f64))
//!     }
//! }
//!
//! check::export_check!(QueueDepth);
//! # }
//! # fn main() {}
//! ```
//!
//! The crate needs `crate-type = ["cdylib"]` and
//! `rollback-plugin-sdk = { path = "../sdk", features = ["check"] }`; `build.sh`
//! turns it into `target/plugins/<name>.wasm`.
//!
//! Native builds (`cargo test` on the host) compile too, so a plugin's pure
//! logic can be unit-tested: there the helpers do not reach a host. Logging
//! goes to stderr, the clocks are the system's, [`kv`] is an in-memory map per
//! thread, [`config`] is empty (use [`config::Config::from_pairs`] in tests)
//! and every HTTP request fails with a transport error.

pub mod clock;
pub mod config;
pub mod http;
pub mod kv;
pub mod log;
pub mod types;

/// Re-exported for plugins' own (de)serialization.
pub use serde;
/// Re-exported for plugins' own JSON handling.
pub use serde_json;

/// The raw WIT bindings of the host interfaces, shared by both worlds.
///
/// The world here only imports, so linking it into a plugin adds no export.
/// Prefer the helper modules; these are for what they do not cover.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package rollback:sdk;

            world imports {
                import rollback:plugin/types@0.2.0;
                import rollback:plugin/http@0.2.0;
                import rollback:plugin/config@0.2.0;
                import rollback:plugin/kv@0.2.0;
                import rollback:plugin/log@0.2.0;
                import rollback:plugin/clock@0.2.0;
            }
        "#,
        path: "../../wit",
        world: "rollback:sdk/imports",
        additional_derives: [PartialEq],
        generate_all,
    });
}

/// The `health-check` world (cargo feature `check`).
///
/// Implement [`Guest`](check::Guest) and export it with
/// `check::export_check!(MyCheck);`. The helper modules are re-exported here.
#[cfg(feature = "check")]
#[allow(missing_docs, unsafe_code)]
pub mod check {
    wit_bindgen::generate!({
        world: "rollback:plugin/health-check",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_check",
        default_bindings_module: "rollback_plugin_sdk::check",
        with: {
            "rollback:plugin/types@0.2.0": crate::bindings::rollback::plugin::types,
            "rollback:plugin/http@0.2.0": crate::bindings::rollback::plugin::http,
            "rollback:plugin/config@0.2.0": crate::bindings::rollback::plugin::config,
            "rollback:plugin/kv@0.2.0": crate::bindings::rollback::plugin::kv,
            "rollback:plugin/log@0.2.0": crate::bindings::rollback::plugin::log,
            "rollback:plugin/clock@0.2.0": crate::bindings::rollback::plugin::clock,
        },
    });

    pub use crate::types::{Metric, Phase, Release, Status};
    pub use crate::{clock, config, http, kv, log};
}

/// The `rollback-hook` world (cargo feature `hook`).
///
/// Implement [`Guest`](hook::Guest) and export it with
/// `hook::export_hook!(MyHook);`. The helper modules are re-exported here.
#[cfg(feature = "hook")]
#[allow(missing_docs, unsafe_code)]
pub mod hook {
    wit_bindgen::generate!({
        world: "rollback:plugin/rollback-hook",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_hook",
        default_bindings_module: "rollback_plugin_sdk::hook",
        with: {
            "rollback:plugin/types@0.2.0": crate::bindings::rollback::plugin::types,
            "rollback:plugin/http@0.2.0": crate::bindings::rollback::plugin::http,
            "rollback:plugin/config@0.2.0": crate::bindings::rollback::plugin::config,
            "rollback:plugin/kv@0.2.0": crate::bindings::rollback::plugin::kv,
            "rollback:plugin/log@0.2.0": crate::bindings::rollback::plugin::log,
            "rollback:plugin/clock@0.2.0": crate::bindings::rollback::plugin::clock,
        },
    });

    pub use crate::types::{DegradedInfo, HeldInfo, Release, RollbackInfo, Transition};
    pub use crate::{clock, config, http, kv, log};
}
