//! `webhook-notify`: a rollback hook that posts each lifecycle event it is
//! subscribed to (`on = [...]` in the hook's config) to a webhook, as a
//! Slack-compatible message or as a JSON object.
//!
//! Config keys (the plugin entry's `config` table, all strings):
//!
//! - `url` (required): the webhook's `http://` or `https://` URL; its host and
//!   port must be on the entry's `allow_hosts` list. A Slack webhook URL is a
//!   credential: it can be given as the secret `url` instead, which wins.
//! - `format` (optional, default `slack`): `slack` posts `{"text": "..."}`
//!   (plus `channel` and `username` when set); `json` posts an object with
//!   `event` (`pre-activate`, `activated`, `rolled-back`, `degraded` or `held`),
//!   `app`, `from`, `to`, `version`, `reason`, `check`, `actor` and `text`
//!   (`null` where an event has no such value).
//! - `channel`, `username` (optional): passed through in `slack` format.
//! - `headers` (optional): extra request headers, one `Name: value` per line.
//! - `timeout` (optional): per-request timeout such as `500ms`, `2s`, `1m`.
//! - `veto_on_failure` (optional, default `false`): when `true`, a failed
//!   delivery of `pre-activate` vetoes the activation. Otherwise it is only
//!   logged as a warning and the deploy goes ahead.
//!
//! Secrets: `token` adds `Authorization: Bearer <token>`; `url` as above.
//! Neither is ever logged or put in an error text (errors name the webhook by
//! its scheme and host only).
//!
//! A non-2xx answer or no answer is an error, which the agent records (and,
//! for `pre-activate` with `veto_on_failure = "true"`, treats as a veto).

use std::time::Duration;

use rollback_plugin_sdk::config::Config;
use rollback_plugin_sdk::hook::{self, Guest, LifecycleEvent};
use rollback_plugin_sdk::http::Request;
use rollback_plugin_sdk::log;
use serde_json::{json, Value};

/// The plugin; its `on_event` is the world's export.
struct WebhookNotify;

impl Guest for WebhookNotify {
    fn on_event(event: LifecycleEvent) -> Result<(), String> {
        handle(&event, &Config::host())
    }
}

/// Delivers `event`. A failure is an error, except for `pre-activate`
/// without `veto_on_failure = "true"`: then it is logged and let through.
fn handle(event: &LifecycleEvent, config: &Config) -> Result<(), String> {
    let result = Settings::from_config(config).and_then(|s| deliver(&s, event));
    match (result, event) {
        (Ok(()), _) => Ok(()),
        (Err(err), LifecycleEvent::PreActivate(_)) => {
            if config.parse::<bool>("veto_on_failure")?.unwrap_or(false) {
                Err(err)
            } else {
                log::warn!("{err} (not vetoing: veto_on_failure is off)");
                Ok(())
            }
        }
        (Err(err), _) => Err(err),
    }
}

hook::export_hook!(WebhookNotify);

/// The message shape.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Slack,
    Json,
}

/// The parsed configuration. No `Debug`: it holds the token and maybe a
/// secret URL.
struct Settings {
    url: String,
    format: Format,
    channel: Option<String>,
    username: Option<String>,
    headers: Vec<(String, String)>,
    timeout: Option<Duration>,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, String> {
        let url = match config.secret("url") {
            Some(url) => url,
            None => config
                .optional("url")
                .ok_or("config `url` (or secret `url`) is required")?,
        };
        let format = config
            .parse_with("format", |s| match s {
                "slack" => Ok(Format::Slack),
                "json" => Ok(Format::Json),
                _ => Err("expected `slack` or `json`"),
            })?
            .unwrap_or(Format::Slack);
        let mut headers = match config.get("headers") {
            Some(text) => parse_headers(&text)?,
            None => Vec::new(),
        };
        if let Some(token) = config.secret("token") {
            if headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            {
                return Err(
                    "config `headers` sets Authorization and secret `token` is set: use one"
                        .to_string(),
                );
            }
            headers.push(("Authorization".to_string(), format!("Bearer {token}")));
        }
        Ok(Settings {
            url,
            format,
            channel: config.optional("channel"),
            username: config.optional("username"),
            headers,
            timeout: config.duration("timeout")?,
        })
    }
}

/// Parses `Name: value` lines (blank lines are skipped). Errors name the
/// line, never its value.
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = line.split_once(':').and_then(|(name, value)| {
            let name = name.trim();
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            (!name.is_empty() && name.chars().all(token))
                .then(|| (name.to_string(), value.trim().to_string()))
        });
        match parsed {
            Some(header) => headers.push(header),
            None => {
                return Err(format!(
                    "config `headers` line {}: expected `Name: value`",
                    i + 1
                ))
            }
        }
    }
    Ok(headers)
}

/// Posts the event and checks the answer.
fn deliver(settings: &Settings, event: &LifecycleEvent) -> Result<(), String> {
    let endpoint = endpoint(&settings.url);
    let body = match settings.format {
        Format::Slack => slack_body(
            event,
            settings.channel.as_deref(),
            settings.username.as_deref(),
        ),
        Format::Json => json_body(event),
    };
    let mut request = Request::post(&settings.url).json(&body);
    for (name, value) in &settings.headers {
        request = request.header(name, value);
    }
    if let Some(timeout) = settings.timeout {
        request = request.timeout(timeout);
    }
    let response = request
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|err| {
            let err = redact(&err.to_string(), &settings.url);
            format!("webhook {endpoint}: {} not delivered: {err}", event.name())
        })?;
    log::debug!(
        "webhook {endpoint}: {} delivered ({})",
        event.name(),
        response.status()
    );
    Ok(())
}

/// `scheme://host[:port]` of `url`, without user info, path or query (a
/// webhook's path is often its secret).
fn endpoint(url: &str) -> String {
    let (scheme, rest) = url.trim().split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        host.to_string()
    } else {
        format!("{scheme}://{host}")
    }
}

/// `text` with the full webhook URL (which a transport error may quote)
/// cut down to its endpoint.
fn redact(text: &str, url: &str) -> String {
    let url = url.trim();
    if url.is_empty() {
        return text.to_string();
    }
    text.replace(url, &format!("{}/...", endpoint(url)))
}

/// ` by <actor>`, or nothing for the agent's own decisions.
fn by(actor: &str) -> String {
    match actor {
        "" | "agent" => String::new(),
        actor => format!(" by {actor}"),
    }
}

/// `: <reason>`, or nothing for an empty reason.
fn because(reason: &str) -> String {
    match reason.trim() {
        "" => String::new(),
        reason => format!(": {reason}"),
    }
}

/// The one-line, plain-text description of the event.
fn text(event: &LifecycleEvent) -> String {
    match event {
        LifecycleEvent::PreActivate(t) => format!("{}: about to activate {}", t.app, t.to.version),
        LifecycleEvent::Activated(t) => {
            let from = match &t.from {
                Some(from) => format!(" (from {})", from.version),
                None => String::new(),
            };
            format!(
                "{}: activated {}{from}{}",
                t.app,
                t.to.version,
                by(&t.actor)
            )
        }
        LifecycleEvent::RolledBack(r) => format!(
            "{}: rolled back {} -> {}{}{}",
            r.app,
            r.from.version,
            r.to.version,
            by(&r.actor),
            because(&r.reason)
        ),
        LifecycleEvent::Degraded(d) => format!("{}: degraded{}", d.app, because(&d.reason)),
        LifecycleEvent::Held(h) => format!(
            "{}: {} held, no verdict{}",
            h.app,
            h.version,
            because(&h.reason)
        ),
    }
}

/// A Slack incoming-webhook message.
fn slack_body(event: &LifecycleEvent, channel: Option<&str>, username: Option<&str>) -> Value {
    let text = match event {
        LifecycleEvent::RolledBack(_) => format!(":rotating_light: {}", text(event)),
        _ => text(event),
    };
    let mut body = json!({ "text": text });
    if let Some(channel) = channel {
        body["channel"] = json!(channel);
    }
    if let Some(username) = username {
        body["username"] = json!(username);
    }
    body
}

/// The `json` format: every field present, `null` where not applicable.
/// `version` is the release the event is about: the one being or just
/// activated, the one rolled back, or the one current when degraded.
fn json_body(event: &LifecycleEvent) -> Value {
    let (from, to, version, reason, check, actor) = match event {
        LifecycleEvent::PreActivate(t) | LifecycleEvent::Activated(t) => (
            t.from.as_ref().map(|r| r.version.as_str()),
            Some(t.to.version.as_str()),
            Some(t.to.version.as_str()),
            None,
            None,
            Some(t.actor.as_str()),
        ),
        LifecycleEvent::RolledBack(r) => (
            Some(r.from.version.as_str()),
            Some(r.to.version.as_str()),
            Some(r.from.version.as_str()),
            Some(r.reason.as_str()),
            r.check.as_deref(),
            Some(r.actor.as_str()),
        ),
        LifecycleEvent::Degraded(d) => (
            None,
            None,
            d.version.as_deref(),
            Some(d.reason.as_str()),
            None,
            None,
        ),
        LifecycleEvent::Held(h) => (
            None,
            None,
            Some(h.version.as_str()),
            Some(h.reason.as_str()),
            None,
            None,
        ),
    };
    json!({
        "event": event.name(),
        "app": event.app(),
        "from": from,
        "to": to,
        "version": version,
        "reason": reason,
        "check": check,
        "actor": actor,
        "text": text(event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollback_plugin_sdk::hook::{DegradedInfo, Release, RollbackInfo, Transition};

    fn release(version: &str) -> Release {
        Release {
            app: "shop".into(),
            version: version.into(),
            activated_at_ms: None,
        }
    }

    fn transition(from: Option<&str>, actor: &str) -> Transition {
        Transition {
            app: "shop".into(),
            from: from.map(release),
            to: release("1.1.0"),
            actor: actor.into(),
        }
    }

    fn automatic_rollback() -> LifecycleEvent {
        LifecycleEvent::RolledBack(RollbackInfo {
            app: "shop".into(),
            from: release("1.1.0"),
            to: release("1.0.0"),
            reason: "check `health` failed 3 time(s) in a row: GET http://x/ -> 503".into(),
            check: Some("health".into()),
            actor: "agent".into(),
        })
    }

    #[test]
    fn texts() {
        assert_eq!(
            text(&LifecycleEvent::PreActivate(transition(
                Some("1.0.0"),
                "alice"
            ))),
            "shop: about to activate 1.1.0"
        );
        assert_eq!(
            text(&LifecycleEvent::Activated(transition(
                Some("1.0.0"),
                "alice"
            ))),
            "shop: activated 1.1.0 (from 1.0.0) by alice"
        );
        assert_eq!(
            text(&LifecycleEvent::Activated(transition(None, "agent"))),
            "shop: activated 1.1.0"
        );
        assert_eq!(
            text(&automatic_rollback()),
            "shop: rolled back 1.1.0 -> 1.0.0: check `health` failed 3 time(s) in a row: \
             GET http://x/ -> 503"
        );
        let manual = LifecycleEvent::RolledBack(RollbackInfo {
            app: "shop".into(),
            from: release("1.1.0"),
            to: release("1.0.0"),
            reason: " ".into(),
            check: None,
            actor: "bob".into(),
        });
        assert_eq!(text(&manual), "shop: rolled back 1.1.0 -> 1.0.0 by bob");
        let degraded = LifecycleEvent::Degraded(DegradedInfo {
            app: "shop".into(),
            version: Some("1.0.0".into()),
            reason: "restart command failed".into(),
        });
        assert_eq!(text(&degraded), "shop: degraded: restart command failed");
    }

    #[test]
    fn slack_bodies() {
        assert_eq!(
            slack_body(&automatic_rollback(), None, None),
            json!({
                "text": ":rotating_light: shop: rolled back 1.1.0 -> 1.0.0: check `health` \
                         failed 3 time(s) in a row: GET http://x/ -> 503"
            })
        );
        let event = LifecycleEvent::PreActivate(transition(None, "alice"));
        assert_eq!(
            slack_body(&event, Some("#deploys"), Some("rollback-agent")),
            json!({
                "text": "shop: about to activate 1.1.0",
                "channel": "#deploys",
                "username": "rollback-agent"
            })
        );
    }

    #[test]
    fn json_bodies() {
        assert_eq!(
            json_body(&automatic_rollback()),
            json!({
                "event": "rolled-back",
                "app": "shop",
                "from": "1.1.0",
                "to": "1.0.0",
                "version": "1.1.0",
                "reason": "check `health` failed 3 time(s) in a row: GET http://x/ -> 503",
                "check": "health",
                "actor": "agent",
                "text": "shop: rolled back 1.1.0 -> 1.0.0: check `health` failed 3 time(s) \
                         in a row: GET http://x/ -> 503"
            })
        );
        assert_eq!(
            json_body(&LifecycleEvent::Activated(transition(None, "alice"))),
            json!({
                "event": "activated",
                "app": "shop",
                "from": null,
                "to": "1.1.0",
                "version": "1.1.0",
                "reason": null,
                "check": null,
                "actor": "alice",
                "text": "shop: activated 1.1.0 by alice"
            })
        );
        let degraded = LifecycleEvent::Degraded(DegradedInfo {
            app: "shop".into(),
            version: None,
            reason: "no release to roll back to".into(),
        });
        let body = json_body(&degraded);
        assert_eq!(body["event"], "degraded");
        assert_eq!(body["version"], Value::Null);
        assert_eq!(body["text"], "shop: degraded: no release to roll back to");
    }

    #[test]
    fn settings() {
        let c = Config::from_pairs(&[("url", "https://hooks.example/T/B/x")]);
        let s = Settings::from_config(&c).expect("valid");
        assert_eq!(s.format, Format::Slack);
        assert!(s.headers.is_empty() && s.channel.is_none() && s.timeout.is_none());

        let c = Config::from_pairs(&[
            ("url", "https://ops.example/hook"),
            ("format", "json"),
            ("headers", "X-Team: ops\n\nX-Env:  prod "),
            ("timeout", "2s"),
        ])
        .with_secrets(&[("token", "t0k")]);
        let s = Settings::from_config(&c).expect("valid");
        assert_eq!(s.format, Format::Json);
        assert_eq!(s.timeout, Some(Duration::from_secs(2)));
        let headers: Vec<(&str, &str)> = s
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            headers,
            [
                ("X-Team", "ops"),
                ("X-Env", "prod"),
                ("Authorization", "Bearer t0k")
            ]
        );

        let c = Config::from_pairs(&[("url", "http://config/")])
            .with_secrets(&[("url", "https://secret/")]);
        assert_eq!(
            Settings::from_config(&c).map(|s| s.url),
            Ok("https://secret/".to_string())
        );
    }

    #[test]
    fn bad_settings() {
        let err = |pairs: &[(&str, &str)]| {
            Settings::from_config(&Config::from_pairs(pairs).with_secrets(&[("token", "t0k")]))
                .err()
                .expect("invalid")
        };
        assert_eq!(err(&[]), "config `url` (or secret `url`) is required");
        assert_eq!(
            err(&[("url", "http://x/"), ("format", "xml")]),
            "config `format` = `xml`: expected `slack` or `json`"
        );
        let e = err(&[
            ("url", "http://x/"),
            ("headers", "X-A: 1\nsecret-without-colon"),
        ]);
        assert_eq!(e, "config `headers` line 2: expected `Name: value`");
        let e = err(&[
            ("url", "http://x/"),
            ("headers", "authorization: Basic abc"),
        ]);
        assert!(
            e.contains("use one") && !e.contains("t0k") && !e.contains("abc"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_hide_paths_and_credentials() {
        assert_eq!(
            endpoint("https://hooks.slack.com/services/T0/B0/XYZ"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            endpoint("http://user:pw@10.0.0.1:8080/h?k=v"),
            "http://10.0.0.1:8080"
        );
        assert_eq!(endpoint("weird"), "weird");
        assert_eq!(
            redact(
                "error sending request for url (https://h.example/T0/XYZ)",
                "https://h.example/T0/XYZ"
            ),
            "error sending request for url (https://h.example/...)"
        );
    }

    #[test]
    fn delivery_errors_name_the_endpoint_only() {
        // Natively there is no host: every request fails with a transport error.
        let settings = Settings::from_config(&Config::from_pairs(&[(
            "url",
            "https://hooks.slack.com/services/T0/B0/XYZ",
        )]))
        .expect("valid");
        let err = deliver(&settings, &automatic_rollback()).expect_err("no host");
        assert!(
            err.starts_with("webhook https://hooks.slack.com: rolled-back not delivered: "),
            "{err}"
        );
        assert!(!err.contains("XYZ"), "{err}");
    }

    #[test]
    fn only_pre_activate_may_let_a_failure_through() {
        // Natively every delivery fails (no host).
        let url = ("url", "http://hooks.example/x");
        let pre = LifecycleEvent::PreActivate(transition(Some("1.0.0"), "alice"));
        assert_eq!(handle(&pre, &Config::from_pairs(&[url])), Ok(()));
        assert_eq!(
            handle(
                &pre,
                &Config::from_pairs(&[url, ("veto_on_failure", "false")])
            ),
            Ok(())
        );
        let err = handle(
            &pre,
            &Config::from_pairs(&[url, ("veto_on_failure", "true")]),
        )
        .expect_err("veto");
        assert!(err.contains("pre-activate not delivered"), "{err}");
        let err = handle(
            &pre,
            &Config::from_pairs(&[url, ("veto_on_failure", "yes")]),
        )
        .expect_err("unclear");
        assert!(
            err.starts_with("config `veto_on_failure` = `yes`:"),
            "{err}"
        );
        // A config error is a delivery failure too.
        assert_eq!(handle(&pre, &Config::from_pairs(&[])), Ok(()));
        let err = handle(&automatic_rollback(), &Config::from_pairs(&[url])).expect_err("failed");
        assert!(err.contains("rolled-back not delivered"), "{err}");
    }
}
