//! The incident report of an app's last rollback, from its audit log.
//!
//! Owns picking the events that tell the story of the last rollback (the
//! deploy of the failed release, each check result that led to it, the swap,
//! the snapshot restore, the hooks, the restart, and how the restored release
//! fared since) and rendering them as Markdown ready for a root-cause report.
//!
//! Pure: events in, a report out. It never talks to the agent itself
//! (`rollbackctl incident` fetches the history and the status).

use serde::Serialize;

use crate::domain::EventKind;
use crate::protocol::{rfc3339, AppStatus, EventView};

/// The last rollback of an app and what surrounded it.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// The app.
    pub app: String,
    /// The release rolled back.
    pub from: String,
    /// The release restored.
    pub to: String,
    /// Why.
    pub reason: String,
    /// The check that triggered it, for automatic rollbacks.
    pub check: Option<String>,
    /// `agent`, or the operator who asked.
    pub decided_by: String,
    /// When the failed release was deployed (staged), if still in the log.
    pub deployed_at: Option<String>,
    /// When the rollback happened.
    pub rolled_back_at: String,
    /// Oldest first: the deploy, its checks, the rollback and what followed.
    pub timeline: Vec<EventView>,
    /// The app as it is now.
    pub now: Option<AppStatus>,
}

/// Finds the last rollback in `events` (newest first, as `History` returns
/// them) and the events that belong to it.
pub fn last_rollback(app: &str, events: &[EventView], now: Option<AppStatus>) -> Option<Incident> {
    let idx = events
        .iter()
        .position(|e| e.event.kind == EventKind::RolledBack)?;
    let rb = &events[idx].event;
    let from = rb
        .from
        .clone()
        .or_else(|| rb.version.clone())
        .unwrap_or_default();
    let to = rb.to.clone().unwrap_or_default();
    // Back in time to the staging of the failed release (or the log's start).
    let start = events[idx..]
        .iter()
        .position(|e| {
            e.event.kind == EventKind::Staged && e.event.version.as_deref() == Some(from.as_str())
        })
        .map(|p| idx + p)
        .unwrap_or(events.len() - 1);
    // Forward until the next deploy (staging of another release), if any.
    let end = events[..idx]
        .iter()
        .rposition(|e| e.event.kind == EventKind::Staged)
        .map(|p| p + 1)
        .unwrap_or(0);
    let mut timeline: Vec<EventView> = events[end..=start].to_vec();
    timeline.reverse();
    Some(Incident {
        app: app.to_string(),
        deployed_at: events
            .get(start)
            .filter(|e| e.event.kind == EventKind::Staged)
            .map(|e| e.time.clone()),
        rolled_back_at: rfc3339(rb.at_ms),
        reason: rb.reason.clone().unwrap_or_default(),
        check: events[idx..start.max(idx)]
            .iter()
            .find(|e| e.event.kind == EventKind::CheckFailed)
            .and_then(|e| e.event.check.clone()),
        decided_by: rb.actor.name.clone(),
        from,
        to,
        timeline,
        now,
    })
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The incident as Markdown.
pub fn markdown(i: &Incident) -> String {
    let mut md = format!(
        "# Incident: {} rolled back {} -> {}\n\n",
        i.app, i.from, i.to
    );
    md.push_str(&format!("- **Rolled back at:** {}\n", i.rolled_back_at));
    if let Some(d) = &i.deployed_at {
        md.push_str(&format!("- **{} deployed at:** {d}\n", i.from));
    }
    md.push_str(&format!("- **Decided by:** {}\n", i.decided_by));
    if let Some(c) = &i.check {
        md.push_str(&format!("- **Triggering check:** `{c}`\n"));
    }
    md.push_str(&format!(
        "- **Reason:** {}\n\n## Timeline\n\n",
        cell(&i.reason)
    ));
    md.push_str("| time | actor | event | version | check/hook | detail |\n| --- | --- | --- | --- | --- | --- |\n");
    for e in &i.timeline {
        let ev = &e.event;
        let version = match (&ev.from, &ev.to) {
            (Some(f), Some(t)) => format!("{f} -> {t}"),
            (None, Some(t)) => format!("-> {t}"),
            _ => ev.version.clone().unwrap_or_default(),
        };
        let subject = ev
            .check
            .clone()
            .or_else(|| ev.hook.as_ref().map(|h| format!("hook {h}")))
            .unwrap_or_default();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            e.time,
            cell(&ev.actor.name),
            ev.kind.as_str(),
            cell(&version),
            cell(&subject),
            cell(ev.reason.as_deref().unwrap_or(""))
        ));
    }
    if let Some(now) = &i.now {
        md.push_str(&format!(
            "\n## Now\n\n{} is **{}** on {}.\n",
            now.app,
            now.state,
            now.active.as_deref().unwrap_or("no release")
        ));
        if !now.checks.is_empty() {
            md.push_str("\n| check | last result | failures in a row | runs | summary |\n| --- | --- | --- | --- | --- |\n");
            for (name, c) in &now.checks {
                md.push_str(&format!(
                    "| {name} | {} | {} | {} | {} |\n",
                    c.outcome,
                    c.consecutive_failures,
                    c.runs,
                    cell(&c.summary)
                ));
            }
        }
    }
    md
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{Actor, Event, EventKind};

    fn ev(at: u64, kind: EventKind, version: &str) -> EventView {
        let mut e = Event::new("shop", Actor::agent(), kind).version(version);
        e.at_ms = at;
        EventView {
            time: rfc3339(at),
            event: e,
        }
    }

    #[test]
    fn the_story_of_the_last_rollback() {
        // Newest first, as History returns them.
        let mut rb = ev(9_000, EventKind::RolledBack, "1.1.0");
        rb.event = rb
            .event
            .swap(Some("1.1.0".into()), "1.0.0")
            .reason("check `health` failed | 3 times");
        let mut failed = ev(8_000, EventKind::CheckFailed, "1.1.0");
        failed.event = failed.event.check("health");
        let events = vec![
            ev(12_000, EventKind::Staged, "1.2.0"),
            ev(10_000, EventKind::Restarted, "1.0.0"),
            rb,
            failed,
            ev(7_000, EventKind::Activated, "1.1.0"),
            ev(6_000, EventKind::Staged, "1.1.0"),
            ev(5_000, EventKind::MarkedGood, "1.0.0"),
        ];
        let i = last_rollback("shop", &events, None).unwrap();
        assert_eq!((i.from.as_str(), i.to.as_str()), ("1.1.0", "1.0.0"));
        assert_eq!(i.check.as_deref(), Some("health"));
        assert_eq!(i.decided_by, "agent");
        let kinds: Vec<&str> = i.timeline.iter().map(|e| e.event.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "staged",
                "activated",
                "check-failed",
                "rolled-back",
                "restarted"
            ]
        );
        let md = markdown(&i);
        assert!(
            md.starts_with("# Incident: shop rolled back 1.1.0 -> 1.0.0"),
            "{md}"
        );
        assert!(md.contains("failed \\| 3 times"), "pipes are escaped: {md}");
        assert!(md.contains("| 1.1.0 -> 1.0.0 |"), "{md}");
        assert!(
            last_rollback("shop", &events[4..], None).is_none(),
            "no rollback, no incident"
        );
    }
}
