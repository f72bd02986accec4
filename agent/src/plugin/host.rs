//! The host side of the plugin imports: what a guest can ask of the agent.
//!
//! Owns the per-call `HostState` and the implementations of `http`, `config`,
//! `kv`, `log` and `clock` from `wit/plugin.wit`, each enforcing its grant:
//! the HTTP allow-list (also on redirects), the body cap and 429/503 retries
//! within the deadline; secrets only by name and never in logs; kv size caps;
//! log truncation, rate limits and secret redaction.
//!
//! Must never give a guest anything that is not in its `Sandbox`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::check::rollback::plugin::{
    clock, config as wit_config, http, kv as wit_kv, log as wit_log, types,
};
use super::{outbound, LogLine, Sandbox, MAX_REDIRECTS};
use crate::config::url_allowed;

/// Most log lines kept from one call.
const MAX_LOG_LINES: usize = 100;
/// Longest log line kept.
const MAX_LOG_BYTES: usize = 2048;
/// Longest kv key.
pub const MAX_KV_KEY: usize = 256;
/// Largest kv value.
pub const MAX_KV_VALUE: usize = 64 * 1024;
/// Most bytes (keys and values) one plugin entry may keep in kv.
pub const MAX_KV_TOTAL: u64 = 1024 * 1024;
/// Most retries of one request after 429 or 503.
const MAX_RETRIES: u32 = 4;
/// First backoff step; doubled on each retry, with jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest single wait between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How much a guest may write to stdout and stderr in one call.
pub const STDIO_CAPACITY: usize = 16 * 1024;

/// Per-call state inside a wasmtime `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory, table and instance caps of the call.
    pub limits: StoreLimits,
    sandbox: Arc<Sandbox>,
    deadline: Instant,
    /// Log lines the guest wrote (capped).
    pub logs: Vec<LogLine>,
    /// HTTP requests made.
    pub http_requests: u32,
    /// Retries after 429/503 across those requests.
    pub http_retries: u32,
    /// The guest's stdout and stderr (WASI guests only).
    pub stdout: MemoryOutputPipe,
    /// See `stdout`.
    pub stderr: MemoryOutputPipe,
}

impl HostState {
    /// A fresh state for one call under `sandbox`, ending at `deadline`.
    pub fn new(sandbox: Arc<Sandbox>, limits: StoreLimits, deadline: Instant) -> HostState {
        let stdout = MemoryOutputPipe::new(STDIO_CAPACITY);
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        // WASI with nothing granted: no preopens, no env, no args, no sockets.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            sandbox,
            deadline,
            logs: Vec::new(),
            http_requests: 0,
            http_retries: 0,
            stdout,
            stderr,
        }
    }

    /// Records a log line from the guest (or its stdio), redacted and rate-limited.
    pub fn push_log(&mut self, level: &'static str, message: String) {
        if self.logs.len() >= MAX_LOG_LINES || !self.sandbox.log_allowed() {
            return;
        }
        // Redact first: a cut could leave part of a secret unrecognised.
        let message = super::truncate(self.sandbox.redact(&message), MAX_LOG_BYTES);
        let g = self.sandbox.grants();
        let (app, entry, plugin) = (&g.app, &g.entry, &g.plugin);
        match level {
            "trace" => tracing::trace!(%app, %entry, %plugin, "plugin: {message}"),
            "debug" => tracing::debug!(%app, %entry, %plugin, "plugin: {message}"),
            "info" => tracing::info!(%app, %entry, %plugin, "plugin: {message}"),
            "warn" => tracing::warn!(%app, %entry, %plugin, "plugin: {message}"),
            _ => tracing::error!(%app, %entry, %plugin, "plugin: {message}"),
        }
        self.logs.push(LogLine { level, message });
    }

    /// Moves what the guest wrote to stdout/stderr into the log.
    pub fn drain_stdio(&mut self) {
        for (level, pipe) in [("info", self.stdout.clone()), ("warn", self.stderr.clone())] {
            let bytes = pipe.contents();
            for line in String::from_utf8_lossy(&bytes).lines() {
                if !line.trim().is_empty() {
                    self.push_log(level, line.to_string());
                }
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl wit_config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.sandbox.grants().config.get(&key).cloned()
    }

    fn secret(&mut self, name: String) -> Option<String> {
        self.sandbox.grants().secrets.get(&name).cloned()
    }
}

impl wit_log::Host for HostState {
    fn log(&mut self, level: wit_log::Level, message: String) {
        let level = match level {
            wit_log::Level::Trace => "trace",
            wit_log::Level::Debug => "debug",
            wit_log::Level::Info => "info",
            wit_log::Level::Warn => "warn",
            wit_log::Level::Error => "error",
        };
        self.push_log(level, message);
    }
}

fn monotonic_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        crate::store::now_ms()
    }

    fn monotonic_ns(&mut self) -> u64 {
        monotonic_origin().elapsed().as_nanos() as u64
    }
}

fn valid_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KV_KEY {
        return Err(format!("kv keys are 1 to {MAX_KV_KEY} bytes"));
    }
    Ok(())
}

impl wit_kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        valid_key(&key).ok()?;
        match self.sandbox.kv().get(&key) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(app = %self.sandbox.grants().app, "plugin kv: {e}");
                None
            }
        }
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        valid_key(&key)?;
        if value.len() > MAX_KV_VALUE {
            return Err(format!("kv values are at most {MAX_KV_VALUE} bytes"));
        }
        let kv = self.sandbox.kv();
        let old = kv
            .get(&key)?
            .map(|v| (key.len() + v.len()) as u64)
            .unwrap_or(0);
        let total = kv.usage()? - old + (key.len() + value.len()) as u64;
        if total > MAX_KV_TOTAL {
            return Err(format!(
                "kv is limited to {MAX_KV_TOTAL} bytes per plugin entry"
            ));
        }
        kv.set(&key, &value)
    }

    fn delete(&mut self, key: String) {
        if valid_key(&key).is_ok() {
            if let Err(e) = self.sandbox.kv().delete(&key) {
                tracing::error!(app = %self.sandbox.grants().app, "plugin kv: {e}");
            }
        }
    }

    fn keys(&mut self, prefix: String) -> Vec<String> {
        self.sandbox.kv().keys(&prefix).unwrap_or_default()
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error_text(std::iter::successors(Some(e), |e| e.source()))
}

/// How long to wait before retrying a 429/503: `Retry-After` (seconds or an
/// HTTP date) if present, else exponential backoff with ±50% jitter.
fn retry_delay(headers: &reqwest::header::HeaderMap, attempt: u32) -> Duration {
    let from_header = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let v = v.trim();
            match v.parse::<u64>() {
                Ok(secs) => Some(Duration::from_secs(secs)),
                Err(_) => httpdate::parse_http_date(v).ok().map(|t| {
                    t.duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                }),
            }
        });
    match from_header {
        Some(d) => d,
        None => {
            let base = BACKOFF_BASE.saturating_mul(1 << attempt.min(10));
            let jitter = rand::rng().random_range(0.5..1.5);
            base.mul_f64(jitter).min(BACKOFF_CAP)
        }
    }
}

impl http::Host for HostState {
    async fn send(&mut self, req: http::Request) -> Result<http::Response, http::Error> {
        self.http_requests += 1;
        let url = url::Url::parse(&req.url)
            .map_err(|e| http::Error::InvalidRequest(format!("bad URL `{}`: {e}", req.url)))?;
        url_allowed(&self.sandbox.grants().allow_hosts, &url, "allow_hosts")
            .map_err(http::Error::Denied)?;
        let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| http::Error::InvalidRequest(format!("bad method `{}`", req.method)))?;
        let mut headers = outbound::guest_headers(
            req.headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_str())),
        )
        .map_err(http::Error::InvalidRequest)?;
        let per_request = req
            .timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms)));
        let started = Instant::now();
        let map_err = |e: reqwest::Error| {
            // Redirects are followed here, not by the client: none of its
            // errors is a redirect's.
            if e.is_timeout() {
                http::Error::Timeout
            } else {
                http::Error::Transport(error_chain(&e))
            }
        };
        let cap = self.sandbox.grants().max_response_bytes;
        let (mut url, mut method, mut body) = (url, method, req.body);
        let mut redirects = 0;
        let mut retries = 0;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let timeout = per_request.map_or(left, |t| t.min(left));
            if timeout.is_zero() {
                return Err(http::Error::Timeout);
            }
            let mut builder = self
                .sandbox
                .client()
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .timeout(timeout);
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            let mut resp = builder.send().await.map_err(map_err)?;
            if outbound::is_redirect(resp.status()) {
                if let Some(location) = resp.headers().get(reqwest::header::LOCATION) {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(http::Error::Denied(format!(
                            "more than {MAX_REDIRECTS} redirects"
                        )));
                    }
                    let next = location
                        .to_str()
                        .ok()
                        .and_then(|l| url.join(l).ok())
                        .ok_or_else(|| {
                            http::Error::Transport(format!(
                                "{url}: redirect to an invalid location"
                            ))
                        })?;
                    url_allowed(&self.sandbox.grants().allow_hosts, &next, "allow_hosts")
                        .map_err(|why| http::Error::Denied(format!("redirect refused: {why}")))?;
                    let (next_method, keeps_body) = outbound::method_after(resp.status(), &method);
                    outbound::headers_after(&mut headers, &url, &next, keeps_body);
                    if !keeps_body {
                        body = None;
                    }
                    (url, method) = (next, next_method);
                    continue;
                }
            }
            let status = resp.status().as_u16();
            let max_retries = req
                .max_retries
                .map_or(MAX_RETRIES, u32::from)
                .min(MAX_RETRIES);
            if matches!(status, 429 | 503) && retries < max_retries {
                let wait = retry_delay(resp.headers(), retries);
                // Only wait if a retry can still finish before the deadline
                // (a server's `Retry-After` may be any number).
                if Instant::now()
                    .checked_add(wait)
                    .is_some_and(|at| at < self.deadline)
                {
                    drop(resp);
                    tracing::debug!(app = %self.sandbox.grants().app, %status, ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    retries += 1;
                    self.http_retries += 1;
                    continue;
                }
            }
            if resp.content_length().is_some_and(|n| n > cap) {
                return Err(http::Error::TooLarge(cap));
            }
            let resp_headers = resp
                .headers()
                .iter()
                .map(|(k, v)| http::Header {
                    name: k.as_str().to_string(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(map_err)? {
                if body.len() as u64 + chunk.len() as u64 > cap {
                    return Err(http::Error::TooLarge(cap));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(http::Response {
                status,
                headers: resp_headers,
                body,
                elapsed_us: started.elapsed().as_micros() as u64,
                retries,
            });
        }
    }
}

/// The imports of `rollback:plugin@0.1.0`: unchanged in 0.2.0, so each
/// delegates to the current one (the types are the same shapes, in another
/// module).
mod legacy {
    use super::super::bindings::check::rollback::plugin as now;
    use super::super::bindings::legacy::check::rollback::plugin::{
        clock, config, http, kv, log, types,
    };
    use super::HostState;

    impl types::Host for HostState {}

    impl config::Host for HostState {
        fn get(&mut self, key: String) -> Option<String> {
            now::config::Host::get(self, key)
        }

        fn secret(&mut self, name: String) -> Option<String> {
            now::config::Host::secret(self, name)
        }
    }

    impl log::Host for HostState {
        fn log(&mut self, level: log::Level, message: String) {
            let level = match level {
                log::Level::Trace => now::log::Level::Trace,
                log::Level::Debug => now::log::Level::Debug,
                log::Level::Info => now::log::Level::Info,
                log::Level::Warn => now::log::Level::Warn,
                log::Level::Error => now::log::Level::Error,
            };
            now::log::Host::log(self, level, message)
        }
    }

    impl clock::Host for HostState {
        fn now_ms(&mut self) -> u64 {
            now::clock::Host::now_ms(self)
        }

        fn monotonic_ns(&mut self) -> u64 {
            now::clock::Host::monotonic_ns(self)
        }
    }

    impl kv::Host for HostState {
        fn get(&mut self, key: String) -> Option<Vec<u8>> {
            now::kv::Host::get(self, key)
        }

        fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
            now::kv::Host::set(self, key, value)
        }

        fn delete(&mut self, key: String) {
            now::kv::Host::delete(self, key)
        }

        fn keys(&mut self, prefix: String) -> Vec<String> {
            now::kv::Host::keys(self, prefix)
        }
    }

    impl http::Host for HostState {
        async fn send(&mut self, req: http::Request) -> Result<http::Response, http::Error> {
            let req = now::http::Request {
                method: req.method,
                url: req.url,
                headers: req
                    .headers
                    .into_iter()
                    .map(|h| now::http::Header {
                        name: h.name,
                        value: h.value,
                    })
                    .collect(),
                body: req.body,
                timeout_ms: req.timeout_ms,
                max_retries: None,
            };
            match now::http::Host::send(self, req).await {
                Ok(r) => Ok(http::Response {
                    status: r.status,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|h| http::Header {
                            name: h.name,
                            value: h.value,
                        })
                        .collect(),
                    body: r.body,
                    elapsed_us: r.elapsed_us,
                    retries: r.retries,
                }),
                Err(e) => Err(match e {
                    now::http::Error::Denied(m) => http::Error::Denied(m),
                    now::http::Error::InvalidRequest(m) => http::Error::InvalidRequest(m),
                    now::http::Error::Timeout => http::Error::Timeout,
                    now::http::Error::Transport(m) => http::Error::Transport(m),
                    now::http::Error::TooLarge(n) => http::Error::TooLarge(n),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_over_backoff() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::RETRY_AFTER,
            "2".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(retry_delay(&h, 3), Duration::from_secs(2));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        h.insert(
            reqwest::header::RETRY_AFTER,
            soon.parse().unwrap_or_else(|_| unreachable!()),
        );
        let d = retry_delay(&h, 0);
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let none = reqwest::header::HeaderMap::new();
        for attempt in 0..8 {
            let d = retry_delay(&none, attempt);
            let base = BACKOFF_BASE.saturating_mul(1 << attempt);
            assert!(
                d >= base.mul_f64(0.5).min(BACKOFF_CAP) && d <= base.mul_f64(1.5).min(BACKOFF_CAP),
                "{attempt}: {d:?}"
            );
        }
    }
}
