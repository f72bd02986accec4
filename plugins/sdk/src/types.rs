//! The records and variants of the `types` interface, with constructors and
//! accessors for the common cases.

pub use crate::bindings::rollback::plugin::types::{
    CheckContext, CheckResult, DegradedInfo, HeldInfo, LifecycleEvent, Metric, Phase, Release,
    RollbackInfo, Status, Transition,
};

impl CheckResult {
    /// A result with `status`, `summary` and no metrics.
    pub fn new(status: Status, summary: impl Into<String>) -> Self {
        CheckResult {
            status,
            summary: summary.into(),
            metrics: Vec::new(),
        }
    }

    /// The release looks healthy by this check.
    pub fn pass(summary: impl Into<String>) -> Self {
        Self::new(Status::Pass, summary)
    }

    /// Something is off, but not bad enough to act on.
    pub fn warn(summary: impl Into<String>) -> Self {
        Self::new(Status::Warn, summary)
    }

    /// The release is unhealthy by this check.
    pub fn fail(summary: impl Into<String>) -> Self {
        Self::new(Status::Fail, summary)
    }

    /// The check could not tell: what it reads (a marketplace, a metrics
    /// server) was throttled, unavailable or refused the credentials. Never
    /// counts towards a rollback, never as a pass; say why in `summary`.
    /// A broken answer from the app itself is a `fail`, not this.
    pub fn inconclusive(summary: impl Into<String>) -> Self {
        Self::new(Status::Inconclusive, summary)
    }

    /// Adds a metric. Names should use `[a-z0-9_]`; a value that is not
    /// finite (NaN, infinity) is left out.
    #[must_use]
    pub fn metric(mut self, name: impl Into<String>, value: f64) -> Self {
        if value.is_finite() {
            self.metrics.push(Metric {
                name: name.into(),
                value,
            });
        }
        self
    }

    /// The value of the first metric called `name`, if any.
    pub fn metric_value(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }
}

impl Status {
    /// `pass`, `warn` or `fail`, as in the WIT file.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Inconclusive => "inconclusive",
        }
    }
}

impl Phase {
    /// `bake` or `steady`, as in the WIT file.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Bake => "bake",
            Phase::Steady => "steady",
        }
    }
}

impl LifecycleEvent {
    /// The event's WIT name: `pre-activate`, `activated`, `rolled-back`,
    /// `degraded` or `held`.
    pub fn name(&self) -> &'static str {
        match self {
            LifecycleEvent::PreActivate(_) => "pre-activate",
            LifecycleEvent::Activated(_) => "activated",
            LifecycleEvent::RolledBack(_) => "rolled-back",
            LifecycleEvent::Degraded(_) => "degraded",
            LifecycleEvent::Held(_) => "held",
        }
    }

    /// The application the event is about.
    pub fn app(&self) -> &str {
        match self {
            LifecycleEvent::PreActivate(t) | LifecycleEvent::Activated(t) => &t.app,
            LifecycleEvent::RolledBack(r) => &r.app,
            LifecycleEvent::Degraded(d) => &d.app,
            LifecycleEvent::Held(h) => &h.app,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_result_constructors() {
        let r = CheckResult::warn("slow")
            .metric("latency_ms", 12.5)
            .metric("bad", f64::NAN);
        assert_eq!(r.status, Status::Warn);
        assert_eq!(r.summary, "slow");
        assert_eq!(
            r.metrics,
            vec![Metric {
                name: "latency_ms".into(),
                value: 12.5
            }]
        );
        assert_eq!(r.metric_value("latency_ms"), Some(12.5));
        assert_eq!(r.metric_value("bad"), None);
        assert_eq!(CheckResult::pass("ok").status.as_str(), "pass");
        assert_eq!(CheckResult::fail("down").status.as_str(), "fail");
        assert_eq!(
            CheckResult::inconclusive("throttled").status.as_str(),
            "inconclusive"
        );
    }

    #[test]
    fn event_names() {
        let event = LifecycleEvent::Degraded(DegradedInfo {
            app: "shop".into(),
            version: None,
            reason: "x".into(),
        });
        assert_eq!((event.name(), event.app()), ("degraded", "shop"));
    }
}
