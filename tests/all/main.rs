//! End-to-end tests: the real `rollbackd` and `rollbackctl` binaries, real
//! sockets, real files and real HTTP servers on 127.0.0.1.

#![allow(clippy::unwrap_used, missing_docs)]

mod app_checks;
mod authz;
mod control;
mod crash;
mod deploy;
mod dropin;
mod etcd;
#[cfg(feature = "failpoints")]
mod failpoints;
mod fixtures_ext;
mod fleet;
mod hooks;
mod http;
mod lifecycle;
mod live;
mod marketplace;
mod marketplace_fakes;
mod metrics;
mod outbound;
mod platform;
mod python;
mod quickstart;
mod reconcile;
mod reload;
mod sandbox;
mod socket_limits;
mod store_full;
mod support;
mod varlink;
mod verdicts;
