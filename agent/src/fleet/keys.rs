//! The fleet's key layout in etcd, in one place.
//!
//! Everything lives under `/rollback-agent/<fleet>/`:
//!
//! ```text
//! hosts/<host>                 HostInfo, under the host's lease
//! known/<host>                 HostInfo when its session began (no lease:
//!                              a host that went away shows as missing)
//! status/<host>/<app>          HostApp, under the host's lease
//! rollouts/<app>               Rollout (spec, operators' intent, progress)
//! running/<app>                the rollout id, present only while it runs
//! assign/<app>/<host>          Assignment, written by the coordinator
//! claims/<app>/<host>          Claim, written by the host's claim
//! halt                         Halt, present while the fleet is halted
//! reports/<host>/<at>-<n>      Report, what a host did while cut off
//! leader                       the election
//! ```
//!
//! Owns only names: must never read or write etcd.

/// The root of one fleet's keys.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// The keys of fleet `name`.
    pub fn new(name: &str) -> Self {
        Keys {
            root: format!("/rollback-agent/{name}/"),
        }
    }

    /// Every key of the fleet.
    pub fn all(&self) -> String {
        self.root.clone()
    }

    /// The prefix of every host's record.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.root)
    }

    /// A host's record.
    pub fn host(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.root)
    }

    /// The prefix of every host ever seen.
    pub fn known(&self) -> String {
        format!("{}known/", self.root)
    }

    /// A host ever seen.
    pub fn known_host(&self, host: &str) -> String {
        format!("{}known/{host}", self.root)
    }

    /// The prefix of every status.
    pub fn statuses(&self) -> String {
        format!("{}status/", self.root)
    }

    /// A host's status of one app.
    pub fn status(&self, host: &str, app: &str) -> String {
        format!("{}status/{host}/{app}", self.root)
    }

    /// The prefix of every rollout.
    pub fn rollouts(&self) -> String {
        format!("{}rollouts/", self.root)
    }

    /// An app's rollout.
    pub fn rollout(&self, app: &str) -> String {
        format!("{}rollouts/{app}", self.root)
    }

    /// Present (with the rollout id) while an app's rollout runs.
    pub fn running(&self, app: &str) -> String {
        format!("{}running/{app}", self.root)
    }

    /// The prefix of an app's assignments.
    pub fn assignments(&self, app: &str) -> String {
        format!("{}assign/{app}/", self.root)
    }

    /// The prefix of every assignment.
    pub fn all_assignments(&self) -> String {
        format!("{}assign/", self.root)
    }

    /// One host's assignment for an app.
    pub fn assignment(&self, app: &str, host: &str) -> String {
        format!("{}assign/{app}/{host}", self.root)
    }

    /// The prefix of an app's claims.
    pub fn claims(&self, app: &str) -> String {
        format!("{}claims/{app}/", self.root)
    }

    /// One host's claim of an app's assignment.
    pub fn claim(&self, app: &str, host: &str) -> String {
        format!("{}claims/{app}/{host}", self.root)
    }

    /// The fleet-wide halt.
    pub fn halt(&self) -> String {
        format!("{}halt", self.root)
    }

    /// The prefix of every host's reports.
    pub fn reports(&self) -> String {
        format!("{}reports/", self.root)
    }

    /// One report of a host.
    pub fn report(&self, host: &str, at_ms: u64, n: u64) -> String {
        format!("{}reports/{host}/{at_ms:013}-{n}", self.root)
    }

    /// The election's name.
    pub fn leader(&self) -> String {
        format!("{}leader", self.root)
    }

    /// What follows `prefix` in `key`, when `key` starts with it.
    pub fn rest<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
        key.strip_prefix(prefix)
    }
}
