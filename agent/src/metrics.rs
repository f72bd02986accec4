//! Prometheus metrics: what the agent counts, and how it is exported.
//!
//! Owns one process-wide registry (deploys, rollbacks, app state, check
//! results and latency, plugin errors by kind, HTTP retries), its text
//! encoding, and the two exports: a file for node_exporter's textfile
//! collector (written atomically) and an optional `/metrics` listener.
//!
//! Must never decide anything or block a caller: supervisors record into it,
//! exporters read from it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Every state an app can be in, for the one-hot state gauge.
fn states() -> impl Iterator<Item = &'static str> {
    crate::domain::AppState::ALL.iter().map(|s| s.as_str())
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    deploys: Family<Labels, Counter>,
    rollbacks: Family<Labels, Counter>,
    app_state: Family<Labels, Gauge>,
    checks: Family<Labels, Counter>,
    check_seconds: Histograms,
    plugin_errors: Family<Labels, Counter>,
    http_retries: Family<Labels, Counter>,
    store_writable: Gauge,
}

fn check_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rollback_agent");
        let deploys = Family::<Labels, Counter>::default();
        let rollbacks = Family::<Labels, Counter>::default();
        let app_state = Family::<Labels, Gauge>::default();
        let checks = Family::<Labels, Counter>::default();
        let check_seconds = Histograms::new_with_constructor(check_histogram as fn() -> Histogram);
        let plugin_errors = Family::<Labels, Counter>::default();
        let http_retries = Family::<Labels, Counter>::default();
        let store_writable = Gauge::default();
        store_writable.set(1);
        registry.register(
            "store_writable",
            "1 while the state store can be written, 0 after a write failed (events are queued)",
            store_writable.clone(),
        );
        registry.register(
            "deploys",
            "Deploys by outcome (good, rolled-back, degraded, refused)",
            deploys.clone(),
        );
        registry.register(
            "rollbacks",
            "Rollbacks by trigger (automatic, operator)",
            rollbacks.clone(),
        );
        registry.register(
            "app_state",
            "1 for the state each app is in, 0 for the others",
            app_state.clone(),
        );
        registry.register(
            "check_results",
            "Check runs by outcome (pass, warn, fail, error)",
            checks.clone(),
        );
        registry.register(
            "check_duration_seconds",
            "Duration of check runs",
            check_seconds.clone(),
        );
        registry.register(
            "plugin_errors",
            "Plugin calls that produced no verdict, by kind (timeout, trap, plugin, bad-output, host)",
            plugin_errors.clone(),
        );
        registry.register(
            "http_retries",
            "HTTP requests of plugins retried after 429 or 503",
            http_retries.clone(),
        );
        Metrics {
            registry,
            deploys,
            rollbacks,
            app_state,
            checks,
            check_seconds,
            plugin_errors,
            http_retries,
            store_writable,
        }
    }

    /// Whether the last write to the state store worked.
    pub fn store_writable(&self, ok: bool) {
        self.store_writable.set(i64::from(ok));
    }

    /// A deploy of `app` ended with `outcome`.
    pub fn deploy(&self, app: &str, outcome: &str) {
        self.deploys
            .get_or_create(&labels(&[("app", app), ("outcome", outcome)]))
            .inc();
    }

    /// `app` was rolled back (`trigger`: automatic or operator).
    pub fn rollback(&self, app: &str, trigger: &str) {
        self.rollbacks
            .get_or_create(&labels(&[("app", app), ("trigger", trigger)]))
            .inc();
    }

    /// `app` is now in `state`.
    pub fn state(&self, app: &str, state: &str) {
        for s in states() {
            let v = i64::from(s == state);
            self.app_state
                .get_or_create(&labels(&[("app", app), ("state", s)]))
                .set(v);
        }
    }

    /// One check run: its outcome, duration, HTTP retries and error kind.
    pub fn check(
        &self,
        app: &str,
        check: &str,
        outcome: &str,
        took: Duration,
        retries: u32,
        error: Option<&str>,
    ) {
        let base = [("app", app), ("check", check)];
        self.checks
            .get_or_create(&labels(&[base[0], base[1], ("outcome", outcome)]))
            .inc();
        self.check_seconds
            .get_or_create(&labels(&base))
            .observe(took.as_secs_f64());
        if retries > 0 {
            self.http_retries
                .get_or_create(&labels(&base))
                .inc_by(u64::from(retries));
        }
        if let Some(kind) = error {
            self.plugin_errors
                .get_or_create(&labels(&[base[0], base[1], ("kind", kind)]))
                .inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Writes the exposition to `path` atomically (temp file + rename), as
/// node_exporter's textfile collector expects.
pub fn write_textfile(path: &Path) -> std::io::Result<()> {
    crate::fsutil::write_atomic(path, global().encode().as_bytes())
}

/// Writes the textfile every `every` until the task is dropped.
pub fn spawn_textfile(path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let p = path.clone();
            match tokio::task::spawn_blocking(move || write_textfile(&p)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(path = %path.display(), "cannot write metrics: {e}"),
                Err(e) => tracing::warn!("metrics writer failed: {e}"),
            }
        }
    })
}

/// Serves `GET /metrics` on `addr` (any other path: 404) until dropped.
pub async fn serve(addr: SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                // Read the request head (bounded in size and time).
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        match stream.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(m) => n += m,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let mut parts = head.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let reply = if method == "GET"
                    && (path == "/metrics" || path.starts_with("/metrics?"))
                {
                    let body = global().encode();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_encodes() {
        let m = Metrics::new();
        m.deploy("shop", "good");
        m.rollback("shop", "automatic");
        m.state("shop", "healthy");
        m.check(
            "shop",
            "health",
            "error",
            Duration::from_millis(30),
            2,
            Some("timeout"),
        );
        let text = m.encode();
        for needle in [
            "rollback_agent_deploys_total{app=\"shop\",outcome=\"good\"} 1",
            "rollback_agent_rollbacks_total{app=\"shop\",trigger=\"automatic\"} 1",
            "rollback_agent_app_state{app=\"shop\",state=\"healthy\"} 1",
            "rollback_agent_app_state{app=\"shop\",state=\"degraded\"} 0",
            "rollback_agent_check_results_total{app=\"shop\",check=\"health\",outcome=\"error\"} 1",
            "rollback_agent_plugin_errors_total{app=\"shop\",check=\"health\",kind=\"timeout\"} 1",
            "rollback_agent_http_retries_total{app=\"shop\",check=\"health\"} 2",
            "rollback_agent_check_duration_seconds_count{app=\"shop\",check=\"health\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing in:\n{text}");
        }
    }
}
