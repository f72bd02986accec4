//! End-to-end tests: the real `rollbackd` and `rollbackctl` binaries, real
//! sockets, real files and real HTTP servers on 127.0.0.1.

#![allow(clippy::unwrap_used, missing_docs)]

mod control;
mod deploy;
mod fixtures_ext;
mod http;
mod platform;
mod reconcile;
mod sandbox;
mod support;
