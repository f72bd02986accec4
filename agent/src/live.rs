//! The live feed: every event the store records and every check result, fanned
//! out to whoever is watching (`rollbackctl watch`, `deploy --wait` progress).
//!
//! Owns the broadcast channel and the shape of a live item on the wire. It must
//! never block or fail a publisher: the supervisors publish from their loops, so
//! a watcher that falls behind loses the oldest items (and is told how many)
//! instead of slowing an app down. Nothing here is durable; the history is.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::domain::{Actor, Event, EventKind, Outcome};

/// How many items a slow watcher may fall behind before it loses some.
const CAPACITY: usize = 1024;

/// What a live item is; on the wire one word: a history event kind (as in
/// `History`), `check-result` or `lagged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    /// A recorded history event.
    Event(EventKind),
    /// A check run's result.
    CheckResult,
    /// The watcher fell behind and lost items.
    Lagged,
}

impl LiveKind {
    /// Its wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            LiveKind::Event(kind) => kind.as_str(),
            LiveKind::CheckResult => "check-result",
            LiveKind::Lagged => "lagged",
        }
    }
}

impl std::fmt::Display for LiveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for LiveKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "check-result" => Ok(LiveKind::CheckResult),
            "lagged" => Ok(LiveKind::Lagged),
            other => other
                .parse()
                .map(LiveKind::Event)
                .map_err(|_| format!("unknown live item kind {other:?}")),
        }
    }
}

impl Serialize for LiveKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LiveKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        word.parse().map_err(serde::de::Error::custom)
    }
}

/// One item of the feed, flat so that any client can print it: a recorded
/// history event, a check result, or the note that the watcher fell behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveEvent {
    /// What it is.
    pub kind: LiveKind,
    /// The app (empty for `lagged`).
    pub app: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `at_ms` as RFC 3339 (UTC).
    pub time: String,
    /// The history event's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Who acted (history events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// The release concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// For swaps: the version before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// For swaps: the version after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The check concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// The hook concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// Check results: `pass`, `warn`, `fail` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Check results: the plugin's summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Check results: how long the call took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl LiveEvent {
    fn bare(kind: LiveKind, app: &str, at_ms: u64) -> Self {
        LiveEvent {
            kind,
            app: app.to_string(),
            at_ms,
            time: crate::protocol::rfc3339(at_ms),
            id: None,
            actor: None,
            version: None,
            from: None,
            to: None,
            reason: None,
            check: None,
            hook: None,
            outcome: None,
            summary: None,
            duration_ms: None,
        }
    }

    /// A recorded history event.
    pub fn recorded(e: &Event) -> Self {
        LiveEvent {
            id: Some(e.id),
            actor: Some(e.actor.clone()),
            version: e.version.clone(),
            from: e.from.clone(),
            to: e.to.clone(),
            reason: e.reason.clone(),
            check: e.check.clone(),
            hook: e.hook.clone(),
            ..LiveEvent::bare(LiveKind::Event(e.kind), &e.app, e.at_ms)
        }
    }

    /// One check run's result.
    pub fn check_result(
        app: &str,
        version: &str,
        check: &str,
        outcome: Outcome,
        summary: &str,
        at_ms: u64,
        duration_ms: u64,
    ) -> Self {
        LiveEvent {
            version: Some(version.to_string()),
            check: Some(check.to_string()),
            outcome: Some(outcome),
            summary: Some(summary.to_string()),
            duration_ms: Some(duration_ms),
            ..LiveEvent::bare(LiveKind::CheckResult, app, at_ms)
        }
    }

    /// Told to a watcher that fell behind by `missed` items.
    pub fn lagged(missed: u64) -> Self {
        LiveEvent {
            reason: Some(format!("fell behind: {missed} events not shown")),
            ..LiveEvent::bare(LiveKind::Lagged, "", crate::domain::now_ms())
        }
    }
}

/// The sending side, cheap to clone; shared by the store and the supervisors.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<LiveEvent>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Feed {
    /// Sends to every current watcher; nobody watching is fine.
    pub fn publish(&self, event: LiveEvent) {
        let _ = self.tx.send(Arc::new(event));
    }

    /// A new watcher, seeing what is published from now on.
    pub fn subscribe(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
        }
    }
}

/// The receiving side of one watcher.
pub struct Watcher {
    rx: broadcast::Receiver<Arc<LiveEvent>>,
}

impl Watcher {
    /// The next item (a `lagged` note after a gap); `None` once the feed is gone.
    pub async fn next(&mut self) -> Option<Arc<LiveEvent>> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Arc::new(LiveEvent::lagged(n))),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// An item already waiting, without waiting for one.
    pub fn try_next(&mut self) -> Option<Arc<LiveEvent>> {
        match self.rx.try_recv() {
            Ok(e) => Some(e),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Arc::new(LiveEvent::lagged(n))),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_what_is_published_after_they_subscribe() {
        let feed = Feed::default();
        feed.publish(LiveEvent::lagged(0));
        let mut w = feed.subscribe();
        let e = LiveEvent::check_result("shop", "1.0.0", "health", Outcome::Pass, "ok", 5, 2);
        feed.publish(e.clone());
        assert_eq!(*w.next().await.expect("item"), e);
        assert!(w.try_next().is_none());
    }

    #[tokio::test]
    async fn a_slow_watcher_is_told_how_much_it_missed() {
        let feed = Feed::default();
        let mut w = feed.subscribe();
        for i in 0..(CAPACITY as u64 + 5) {
            feed.publish(LiveEvent::check_result(
                "shop",
                "1",
                "c",
                Outcome::Pass,
                "",
                i,
                0,
            ));
        }
        let first = w.next().await.expect("item");
        assert_eq!(first.kind, LiveKind::Lagged);
        assert!(first.reason.as_deref().unwrap_or("").contains("5 events"));
        assert_eq!(w.next().await.expect("item").at_ms, 5);
    }

    #[test]
    fn kinds_are_one_word_on_the_wire_and_unknown_ones_are_refused() {
        for kind in EventKind::ALL
            .iter()
            .map(|k| LiveKind::Event(*k))
            .chain([LiveKind::CheckResult, LiveKind::Lagged])
        {
            let text = serde_json::to_string(&kind).expect("serialises");
            assert_eq!(text, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<LiveKind>(&text).ok(), Some(kind));
        }
        assert!(serde_json::from_str::<LiveKind>("\"no-such-kind\"").is_err());
    }
}
