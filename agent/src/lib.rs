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
pub mod plugin;
pub mod policy;
pub mod protocol;
pub mod release;
pub mod restart;
pub mod store;
pub mod supervisor;
pub mod systemd;
