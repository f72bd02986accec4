//! The agent's TOML configuration: parsing, defaults and validation.
//!
//! Owns turning `agent.toml` into typed, validated settings: durations
//! (`500ms`, `30s`, `5m`), sizes (`64MiB`), paths resolved against the config
//! file's directory, allow-list entries, and check policies. Every error names
//! the file and the key (and the line where the TOML parser knows it).
//!
//! Must never touch releases, the store or plugins: it only reads one file and
//! returns values or an error. A config that fails validation changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where `rollbackd` looks for its config when neither `--config` nor
/// `ROLLBACK_AGENT_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rollback-agent/agent.toml";
/// Default control socket path.
pub const DEFAULT_SOCKET_PATH: &str = "/run/rollback-agent/control.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rollback-agent";

const DEFAULT_BAKE: Duration = Duration::from_secs(300);
const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_FAIL_AFTER: u32 = 3;
const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
const MIN_HISTORY_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Upper bound of windows (bake, history retention, failure-ratio window).
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);
/// Upper bound of intervals and deadlines (check interval, timeouts).
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);
/// Default memory cap of one plugin call.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 * 1024 * 1024;
const MAX_MEMORY_LIMIT: u64 = 4 * 1024 * 1024 * 1024;
/// Default cap on one HTTP response body a plugin receives.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
const MAX_RESPONSE_LIMIT: u64 = 256 * 1024 * 1024;

/// A config that could not be loaded: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has keys of the wrong type or unknown keys.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The TOML parsed but a value is not acceptable.
    #[error("invalid config {}{}: {key}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The line of the key, where it can be found.
        line: Option<usize>,
        /// Dotted key path, e.g. `apps.shop.checks[0].fail_after`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (absolute).
    pub path: PathBuf,
    /// Agent-wide settings.
    pub agent: AgentConfig,
    /// Managed applications by name.
    pub apps: BTreeMap<String, AppConfig>,
    /// Fleet membership (`[fleet]`), when the agent is part of one.
    pub fleet: Option<FleetConfig>,
}

/// Default lease of a fleet member.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// The `[fleet]` table: membership of a fleet coordinated through etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// etcd endpoints, e.g. `http://10.0.0.5:2379`.
    pub etcd: Vec<String>,
    /// The fleet's name (its keys' prefix).
    pub name: String,
    /// This host's name in the fleet (default: the hostname).
    pub host: String,
    /// Labels published with the host.
    pub labels: BTreeMap<String, String>,
    /// How long the host stays a member without keep-alives.
    pub lease_ttl: Duration,
    /// etcd user, when the cluster has authentication on.
    pub user: Option<String>,
    /// That user's password.
    pub password: Option<SecretRef>,
    /// TLS to etcd (`https://` endpoints).
    pub tls: Option<FleetTls>,
    /// Members may pass manual gates (`fleet promote`).
    pub approver_group: Option<String>,
    /// An approver must be another user than the one who started the rollout.
    pub four_eyes: bool,
    /// Where `fleet rollout --source` may fetch releases from.
    pub artifact_hosts: Vec<HostRule>,
}

/// `[fleet.tls]`: the CA that signs etcd's certificate, and a client
/// certificate when etcd asks for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTls {
    /// PEM CA bundle.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate.
    pub cert_file: Option<PathBuf>,
    /// PEM client key.
    pub key_file: Option<PathBuf>,
}

/// The `[agent]` table.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the store, snapshots and plugin cache live.
    pub state_dir: PathBuf,
    /// The control socket path.
    pub socket: PathBuf,
    /// How long events are kept (at least 30 days).
    pub history_retention: Duration,
    /// Members may change state (deploy, rollback, activate, pause, resume).
    pub admin_group: Option<String>,
    /// Members may read (status, releases, history, plugins, check); the
    /// socket's group.
    pub socket_group: Option<String>,
    /// Where to write Prometheus metrics for node_exporter's textfile collector.
    pub metrics_textfile: Option<PathBuf>,
    /// Where to serve `GET /metrics`, e.g. `127.0.0.1:9187`.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// One variable of a restart command's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvVar {
    /// Passed through from the agent's own environment, if it is set there.
    Pass(String),
    /// Set to this value.
    Set(String, String),
}

/// `restart_env` as written: names to pass through, or `NAME = "value"` pairs.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawEnv {
    Names(Vec<String>),
    Values(BTreeMap<String, String>),
}

/// One `[apps.NAME]` table.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The application's name (the table key).
    pub name: String,
    /// The application root holding `releases/` and `current`.
    pub root: PathBuf,
    /// How long a new release is watched before it is marked good.
    pub bake: Duration,
    /// How long a bake may be extended while critical checks lack
    /// conclusive runs, counted from the activation (default twice `bake`);
    /// after it the app is held.
    pub max_bake: Duration,
    /// Command run after every activation (argv, no shell; a relative
    /// program path containing `/` is resolved against the config file).
    pub restart: Option<Vec<String>>,
    /// How long the restart command may take.
    pub restart_timeout: Duration,
    /// What the restart command gets in its environment besides `PATH`,
    /// `LANG` and the `ROLLBACK_*` variables (`restart_env`).
    pub restart_env: Vec<EnvVar>,
    /// Releases keep the source's permission bits as they are (group and
    /// other write, setuid, setgid, sticky), instead of losing those.
    pub keep_modes: bool,
    /// Unchanged files of a new release may be hard links to the previous
    /// release's where the file system has no reflinks (`link_unchanged`).
    pub link_unchanged: bool,
    /// Health checks, in config order.
    pub checks: Vec<CheckConfig>,
    /// Rollback hooks, in config order.
    pub hooks: Vec<HookConfig>,
    /// State files copied before each activation and restored on rollback.
    pub snapshot: Vec<PathBuf>,
    /// Most releases kept on disk (older ones are pruned), if set.
    pub keep_releases: Option<usize>,
    /// Whether critical check failures after the bake also roll back.
    pub auto_rollback: AutoRollback,
    /// Deploy releases dropped into `releases/` (with `.ready`) or `incoming/`.
    pub watch: bool,
}

/// What a critical check failure after the bake does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoRollback {
    /// Only during the bake; afterwards it records and alerts.
    Bake,
    /// During the bake and afterwards.
    Always,
}

/// How a check's failures are counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureRule {
    /// This many failed runs in a row.
    Consecutive(u32),
    /// More than this share of the runs within `window` failed.
    Ratio {
        /// 0 < ratio <= 1.
        ratio: f64,
        /// The sliding window.
        window: Duration,
    },
}

pub use crate::domain::Severity;

/// How plugin errors (trap, timeout, bad output) count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// As failures.
    Fail,
    /// Not at all (neither healthy nor failing).
    Ignore,
}

/// What every plugin entry (check or hook) has: the component, its grants
/// and its limits.
#[derive(Debug, Clone)]
pub struct PluginEntry {
    /// Path of the plugin component (absolute after loading).
    pub plugin: PathBuf,
    /// Expected SHA-256 of the component file (lower-case hex), if pinned.
    pub sha256: Option<String>,
    /// Deadline of one call.
    pub timeout: Duration,
    /// Memory cap of one call, in bytes.
    pub memory_limit: u64,
    /// Cap on one HTTP response body, in bytes.
    pub max_response_bytes: u64,
    /// A kv store shared with the app's other entries of the same scope;
    /// `None`: the entry's own.
    pub kv_scope: Option<String>,
    /// Hosts the plugin may reach over HTTP.
    pub allow_hosts: Vec<HostRule>,
    /// Plain values handed to the plugin.
    pub config: BTreeMap<String, String>,
    /// Secrets handed to the plugin, by name; resolved when the plugin is loaded.
    pub secrets: BTreeMap<String, SecretRef>,
}

/// Where a secret's value comes from: `env:NAME` or `file:PATH`.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable of the agent.
    Env(String),
    /// A file (its content, without a trailing newline).
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The reference, never the value (which is not known here anyway).
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl SecretRef {
    /// Reads the secret's value now.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            SecretRef::Env(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// One `[[apps.NAME.checks]]` entry.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// Unique within the app.
    pub name: String,
    /// Time between two runs.
    pub interval: Duration,
    /// Consecutive failures that make the check unhealthy (with `Consecutive`).
    pub fail_after: u32,
    /// How failures are counted.
    pub rule: FailureRule,
    /// What an unhealthy check does.
    pub severity: Severity,
    /// How plugin errors count.
    pub on_error: OnError,
    /// Conclusive runs (not inconclusive) a bake needs from this check
    /// (critical checks only; default the app's `min_conclusive`, else 1).
    pub min_conclusive: u32,
    /// The plugin, its grants and limits.
    pub entry: PluginEntry,
}

/// A lifecycle event a hook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookEvent {
    /// Before a deploy switches `current` (an error vetoes it).
    PreActivate,
    /// After a deploy switched `current` and restarted the app.
    Activated,
    /// After a rollback.
    RolledBack,
    /// When the app becomes degraded.
    Degraded,
    /// When a bake ends without a verdict and the app is held.
    Held,
}

impl HookEvent {
    /// Every event, in lifecycle order.
    pub const ALL: [HookEvent; 5] = [
        HookEvent::PreActivate,
        HookEvent::Activated,
        HookEvent::RolledBack,
        HookEvent::Degraded,
        HookEvent::Held,
    ];

    /// The name used in `on = [...]`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::PreActivate => "pre-activate",
            HookEvent::Activated => "activated",
            HookEvent::RolledBack => "rolled-back",
            HookEvent::Degraded => "degraded",
            HookEvent::Held => "held",
        }
    }
}

/// One `[[apps.NAME.hooks]]` entry.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// Unique among the app's hooks (default: the plugin file's stem).
    pub name: String,
    /// The events it is called for.
    pub on: Vec<HookEvent>,
    /// The plugin, its grants and limits.
    pub entry: PluginEntry,
}

/// One `allow_hosts` entry: `host`, `host:port` or `*.domain[:port]`,
/// optionally after `http://` or `https://`.
///
/// Without a port only the URL scheme's default port (80, 443) matches. A
/// bare DNS name allows `https` only (`http://name` allows plain HTTP as
/// well); an IP literal or `localhost` without a scheme allows both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    host: HostPattern,
    port: Option<u16>,
    /// Whether plain `http` is allowed (always `https`).
    plain_http: bool,
    /// The scheme the entry was written with, if any.
    written: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` matches any subdomain of `example.com`, not itself.
    Suffix(String),
}

impl HostRule {
    /// Parses an allow-list entry.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("empty entry".into());
        }
        let (written, rest) = match entry.split_once("://") {
            Some(("http", rest)) => (Some("http"), rest),
            Some(("https", rest)) => (Some("https"), rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "`{entry}`: only http:// and https:// may precede a host (not `{scheme}://`)"
                ))
            }
            None => (None, entry),
        };
        if rest.contains('/') || rest.contains("://") {
            return Err(format!(
                "`{entry}` must be a host or host:port (with an optional http:// or https://), not a URL with a path"
            ));
        }
        if rest.contains('@') {
            return Err(format!("`{entry}` must not contain credentials"));
        }
        let probe = rest.strip_prefix("*.").unwrap_or(rest);
        let (host, port) = split_host_port(probe).map_err(|m| format!("`{entry}`: {m}"))?;
        let parsed =
            url::Host::parse(host).map_err(|e| format!("`{entry}` is not a valid host: {e}"))?;
        let literal = !matches!(parsed, url::Host::Domain(_));
        let host = parsed.to_string();
        let local = literal || (host == "localhost" && !rest.starts_with("*."));
        let plain_http = match written {
            Some(scheme) => scheme == "http",
            None => local,
        };
        let host = if rest.starts_with("*.") {
            HostPattern::Suffix(host)
        } else {
            HostPattern::Exact(host)
        };
        Ok(HostRule {
            host,
            port,
            plain_http,
            written,
        })
    }

    /// Whether a parsed URL's host and port are allowed by this rule (the
    /// scheme is `allows_plain_http`'s).
    pub fn matches(&self, host: &str, port: u16, default_port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Suffix(s) => host.len() > s.len() + 1 && host.ends_with(&format!(".{s}")),
        };
        host_ok && port == self.port.unwrap_or(default_port)
    }

    /// Whether plain `http` is allowed (`https` always is).
    pub fn allows_plain_http(&self) -> bool {
        self.plain_http
    }
}

/// Whether `url` may be fetched under `rules` (the list named `list` in
/// messages): http or https, a matching host and port, and plain HTTP only
/// where a rule allows it.
pub fn url_allowed(rules: &[HostRule], url: &url::Url, list: &str) -> Result<(), String> {
    let scheme = url.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "scheme `{scheme}` is not allowed (http or https only)"
        ));
    }
    let host = url.host_str().ok_or_else(|| format!("{url} has no host"))?;
    let port = url.port_or_known_default().unwrap_or(0);
    let default = if scheme == "https" { 443 } else { 80 };
    let mut hosts = rules.iter().filter(|r| r.matches(host, port, default));
    match hosts.clone().next() {
        None => Err(format!("{host}:{port} is not in {list}")),
        Some(_) if scheme == "https" || hosts.any(|r| r.allows_plain_http()) => Ok(()),
        Some(_) => Err(format!(
            "{host}:{port} is allowed over https only (allow plain HTTP with `http://{host}` in {list})"
        )),
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']').ok_or("unclosed `[`")?;
        let rest = &text[end + 1..];
        match rest.strip_prefix(':') {
            Some(p) => (&text[..=end], Some(p)),
            None if rest.is_empty() => (&text[..=end], None),
            None => return Err("unexpected text after `]`".into()),
        }
    } else {
        match text.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("IPv6 addresses need brackets, e.g. [::1]:8080".into())
            }
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("`{p}` is not a port (1-65535)")),
        },
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host, port))
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(scheme) = self.written {
            write!(f, "{scheme}://")?;
        }
        match &self.host {
            HostPattern::Exact(h) => write!(f, "{h}")?,
            HostPattern::Suffix(s) => write!(f, "*.{s}")?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
    fleet: Option<RawFleet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    etcd: Vec<String>,
    name: String,
    host: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    lease_ttl: Option<String>,
    user: Option<String>,
    password: Option<String>,
    tls: Option<RawFleetTls>,
    approver_group: Option<String>,
    four_eyes: Option<bool>,
    #[serde(default)]
    artifact_hosts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleetTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    history_retention: Option<String>,
    admin_group: Option<String>,
    socket_group: Option<String>,
    metrics_textfile: Option<PathBuf>,
    metrics_listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    root: PathBuf,
    bake: Option<String>,
    max_bake: Option<String>,
    min_conclusive: Option<i64>,
    restart: Option<Vec<String>>,
    restart_timeout: Option<String>,
    restart_env: Option<RawEnv>,
    keep_modes: Option<bool>,
    link_unchanged: Option<bool>,
    #[serde(default)]
    checks: Vec<RawCheck>,
    #[serde(default)]
    hooks: Vec<RawHook>,
    #[serde(default)]
    snapshot: Vec<PathBuf>,
    keep_releases: Option<i64>,
    auto_rollback: Option<String>,
    watch: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    interval: Option<String>,
    fail_after: Option<i64>,
    failure_ratio: Option<f64>,
    window: Option<String>,
    severity: Option<String>,
    on_error: Option<String>,
    min_conclusive: Option<i64>,
    plugin: PathBuf,
    sha256: Option<String>,
    timeout: Option<String>,
    memory_limit: Option<String>,
    max_response_bytes: Option<String>,
    kv_scope: Option<String>,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    name: Option<String>,
    on: Option<Vec<String>>,
    plugin: PathBuf,
    sha256: Option<String>,
    timeout: Option<String>,
    memory_limit: Option<String>,
    max_response_bytes: Option<String>,
    kv_scope: Option<String>,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
}

/// The fields every plugin entry shares, before validation.
struct RawEntry {
    plugin: PathBuf,
    sha256: Option<String>,
    timeout: Option<String>,
    memory_limit: Option<String>,
    max_response_bytes: Option<String>,
    kv_scope: Option<String>,
    allow_hosts: Vec<String>,
    config: BTreeMap<String, toml::Value>,
    secrets: BTreeMap<String, String>,
}

macro_rules! raw_entry {
    ($raw:ident) => {
        RawEntry {
            plugin: $raw.plugin,
            sha256: $raw.sha256,
            timeout: $raw.timeout,
            memory_limit: $raw.memory_limit,
            max_response_bytes: $raw.max_response_bytes,
            kv_scope: $raw.kv_scope,
            allow_hosts: $raw.allow_hosts,
            config: $raw.config,
            secrets: $raw.secrets,
        }
    };
}

/// Whether `name` is acceptable as an app or check name: `[A-Za-z0-9._-]`,
/// 1 to 64 characters, not starting with `.` or `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a duration like `500ms`, `30s`, `5m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 500ms, 30s or 5m ({e})"))
}

/// Parses a duration that must be greater than zero and at most `max`.
pub fn bounded_duration(text: &str, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d > max {
        return Err(format!(
            "`{}` is too long: at most {}",
            text.trim(),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Config::parse(&text, &abs)
    }

    /// Parses and validates config text; `path` names the file in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let v = Validator { path, base: &base };
        v.config(raw).map_err(|e| match e {
            ConfigError::Invalid {
                path,
                line: None,
                key,
                message,
            } => ConfigError::Invalid {
                line: locate(text, &key),
                path,
                key,
                message,
            },
            other => other,
        })
    }
}

/// The 1-based line where the dotted `key` (e.g. `apps.shop.checks[1].bake`)
/// is written, or of its nearest written ancestor. Best effort: a plain scan
/// of table headers and `key =` lines, enough for error messages.
fn locate(text: &str, key: &str) -> Option<usize> {
    let mut header = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(usize, usize)> = None;
    let unquote = |p: &str| p.trim().trim_matches('"').to_string();
    let mut consider = |path: &str, line: usize| {
        let matches = key == path
            || key.starts_with(&format!("{path}."))
            || key.starts_with(&format!("{path}["));
        if matches && best.is_none_or(|(len, _)| path.len() > len) {
            best = Some((path.len(), line));
        }
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(inner) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name: Vec<String> = inner.split('.').map(unquote).collect();
            let name = name.join(".");
            let n = arrays
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            header = format!("{name}[{n}]");
            consider(&header, i + 1);
        } else if let Some(inner) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            header = inner.split('.').map(unquote).collect::<Vec<_>>().join(".");
            consider(&header, i + 1);
        } else if let Some((k, _)) = line.split_once('=') {
            let k = unquote(k);
            let path = if header.is_empty() {
                k
            } else {
                format!("{header}.{k}")
            };
            consider(&path, i + 1);
        }
    }
    best.map(|(_, line)| line)
}

struct Validator<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    fn group(&self, key: &str, name: Option<String>) -> Result<Option<String>, ConfigError> {
        match name {
            None => Ok(None),
            Some(n)
                if !n.is_empty()
                    && n.len() <= 32
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) =>
            {
                Ok(Some(n))
            }
            Some(n) => Err(self.err(key, format!("`{n}` is not a group name"))),
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        };
        // Drop `.` components so paths read cleanly in logs and history.
        joined
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    }

    /// A positive duration of at most `max` (so that no clock arithmetic on
    /// it can overflow).
    fn duration(
        &self,
        key: &str,
        text: Option<String>,
        default: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = text else { return Ok(default) };
        let d = bounded_duration(&text, max).map_err(|m| self.err(key, m))?;
        Ok(d)
    }

    /// A secret reference: `env:NAME` or `file:PATH`, never a value.
    fn secret(&self, key: &str, reference: &str) -> Result<SecretRef, ConfigError> {
        if let Some(var) = reference.strip_prefix("env:") {
            if var.is_empty() || var.contains('=') {
                return Err(self.err(key, "env: needs a variable name"));
            }
            Ok(SecretRef::Env(var.to_string()))
        } else if let Some(path) = reference.strip_prefix("file:") {
            if path.is_empty() {
                return Err(self.err(key, "file: needs a path"));
            }
            Ok(SecretRef::File(self.resolve(Path::new(path))))
        } else {
            // Never echo the value: it may be a secret written in by mistake.
            Err(self.err(
                key,
                "must be `env:NAME` or `file:PATH` (secrets are not written in the config)",
            ))
        }
    }

    /// `restart_env`: valid variable names, none of the agent's own
    /// (`PATH`, `LANG`, `ROLLBACK_*` are always set), values without NUL.
    fn restart_env(&self, key: &str, raw: Option<RawEnv>) -> Result<Vec<EnvVar>, ConfigError> {
        let vars: Vec<EnvVar> = match raw {
            None => return Ok(Vec::new()),
            Some(RawEnv::Names(names)) => names.into_iter().map(EnvVar::Pass).collect(),
            Some(RawEnv::Values(pairs)) => {
                pairs.into_iter().map(|(k, v)| EnvVar::Set(k, v)).collect()
            }
        };
        let mut seen = BTreeSet::new();
        for var in &vars {
            let (EnvVar::Pass(name) | EnvVar::Set(name, _)) = var;
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(self.err(
                    key,
                    format!("`{name}` is not a variable name (A-Z a-z 0-9 _, not starting with a digit)"),
                ));
            }
            if name.starts_with("ROLLBACK_") || name == "PATH" || name == "LANG" {
                return Err(self.err(
                    key,
                    format!("`{name}` is set by the agent; it cannot be listed"),
                ));
            }
            if let EnvVar::Set(_, value) = var {
                if value.contains('\0') {
                    return Err(self.err(key, format!("the value of `{name}` contains a NUL byte")));
                }
            }
            if !seen.insert(name.clone()) {
                return Err(self.err(key, format!("`{name}` is listed twice")));
            }
        }
        Ok(vars)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let history_retention = self.duration(
            "agent.history_retention",
            raw.agent.history_retention.clone(),
            DEFAULT_HISTORY_RETENTION,
            MAX_WINDOW,
        )?;
        if history_retention < MIN_HISTORY_RETENTION {
            return Err(self.err(
                "agent.history_retention",
                "must be at least 30d: events are kept at least 30 days",
            ));
        }
        let agent = AgentConfig {
            state_dir: self.resolve(
                raw.agent
                    .state_dir
                    .as_deref()
                    .unwrap_or(Path::new(DEFAULT_STATE_DIR)),
            ),
            socket: self.resolve(
                raw.agent
                    .socket
                    .as_deref()
                    .unwrap_or(Path::new(DEFAULT_SOCKET_PATH)),
            ),
            history_retention,
            admin_group: self.group("agent.admin_group", raw.agent.admin_group.clone())?,
            socket_group: self.group("agent.socket_group", raw.agent.socket_group.clone())?,
            metrics_textfile: raw
                .agent
                .metrics_textfile
                .as_deref()
                .map(|p| self.resolve(p)),
            metrics_listen: match &raw.agent.metrics_listen {
                None => None,
                Some(a) => Some(a.parse().map_err(|_| {
                    self.err(
                        "agent.metrics_listen",
                        format!("`{a}` is not an address like 127.0.0.1:9187"),
                    )
                })?),
            },
        };
        let mut apps = BTreeMap::new();
        let mut roots = BTreeMap::<PathBuf, String>::new();
        for (name, app) in raw.apps {
            let app = self.app(&name, app)?;
            if let Some(other) = roots.insert(app.root.clone(), name.clone()) {
                return Err(self.err(
                    format!("apps.{name}.root"),
                    format!("{} is also the root of app `{other}`", app.root.display()),
                ));
            }
            apps.insert(name, app);
        }
        let fleet = raw.fleet.map(|f| self.fleet(f)).transpose()?;
        Ok(Config {
            path: self.path.to_path_buf(),
            agent,
            apps,
            fleet,
        })
    }

    fn fleet(&self, raw: RawFleet) -> Result<FleetConfig, ConfigError> {
        if raw.etcd.is_empty() {
            return Err(self.err("fleet.etcd", "needs at least one endpoint"));
        }
        let mut tls_wanted = false;
        for (i, e) in raw.etcd.iter().enumerate() {
            let key = format!("fleet.etcd[{i}]");
            let url = url::Url::parse(e).map_err(|_| {
                self.err(
                    &key,
                    format!("`{e}` is not a URL like http://10.0.0.5:2379"),
                )
            })?;
            match url.scheme() {
                "http" => {}
                "https" => tls_wanted = true,
                other => {
                    return Err(self.err(
                        &key,
                        format!("`{other}://`: etcd is reached over http:// or https://"),
                    ))
                }
            }
            if url.host_str().is_none() || url.path() != "/" || !url.username().is_empty() {
                return Err(self.err(
                    &key,
                    format!("`{e}` must be scheme://host:port, without a path or credentials"),
                ));
            }
        }
        if !valid_name(&raw.name) {
            return Err(self.err(
                "fleet.name",
                "fleet names use A-Z a-z 0-9 . _ - (1 to 64, not starting with . or -)",
            ));
        }
        let host = match raw.host {
            Some(h) => h,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .ok_or_else(|| {
                    self.err("fleet.host", "the hostname cannot be read: set fleet.host")
                })?,
        };
        if !crate::fleet::plan::valid_host(&host) {
            return Err(self.err(
                "fleet.host",
                format!("`{host}` is not a host name (letters, digits, `-`, `_`, `.`)"),
            ));
        }
        for (k, v) in &raw.labels {
            if !valid_name(k) || v.len() > 256 || v.chars().any(char::is_control) {
                return Err(self.err(
                    format!("fleet.labels.{k}"),
                    "label names use A-Z a-z 0-9 . _ -; values are one line of at most 256 bytes",
                ));
            }
        }
        let lease_ttl = self.duration(
            "fleet.lease_ttl",
            raw.lease_ttl,
            DEFAULT_LEASE_TTL,
            MAX_DEADLINE,
        )?;
        if lease_ttl < Duration::from_secs(2) {
            return Err(self.err(
                "fleet.lease_ttl",
                "must be at least 2s (etcd's own minimum is about 2 x its election timeout)",
            ));
        }
        let password = raw
            .password
            .as_deref()
            .map(|p| self.secret("fleet.password", p))
            .transpose()?;
        if password.is_some() != raw.user.is_some() {
            return Err(self.err("fleet.user", "user and password go together"));
        }
        let tls = raw.tls.map(|t| FleetTls {
            ca_file: t.ca_file.as_deref().map(|p| self.resolve(p)),
            cert_file: t.cert_file.as_deref().map(|p| self.resolve(p)),
            key_file: t.key_file.as_deref().map(|p| self.resolve(p)),
        });
        if let Some(t) = &tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err(self.err("fleet.tls", "cert_file and key_file go together"));
            }
            if !tls_wanted {
                return Err(self.err("fleet.tls", "TLS needs https:// endpoints"));
            }
        }
        let mut artifact_hosts = Vec::with_capacity(raw.artifact_hosts.len());
        for (i, entry) in raw.artifact_hosts.iter().enumerate() {
            artifact_hosts.push(
                HostRule::parse(entry)
                    .map_err(|m| self.err(format!("fleet.artifact_hosts[{i}]"), m))?,
            );
        }
        Ok(FleetConfig {
            etcd: raw.etcd,
            name: raw.name,
            host,
            labels: raw.labels,
            lease_ttl,
            user: raw.user,
            password,
            tls,
            approver_group: self.group("fleet.approver_group", raw.approver_group)?,
            four_eyes: raw.four_eyes.unwrap_or(false),
            artifact_hosts,
        })
    }

    fn app(&self, name: &str, raw: RawApp) -> Result<AppConfig, ConfigError> {
        let key = format!("apps.{name}");
        if !valid_name(name) {
            return Err(self.err(
                &key,
                "app names use A-Z a-z 0-9 . _ - (1 to 64, not starting with . or -)",
            ));
        }
        if raw.root.as_os_str().is_empty() {
            return Err(self.err(format!("{key}.root"), "must not be empty"));
        }
        let restart = match raw.restart {
            Some(argv) if argv.is_empty() || argv[0].trim().is_empty() => {
                return Err(self.err(format!("{key}.restart"), "must be a non-empty command, e.g. [\"systemctl\", \"restart\", \"shop.service\"]"));
            }
            // A relative program path (`./restart.sh`, `bin/restart`) is relative to the config file.
            Some(mut argv) => {
                if argv[0].contains('/') {
                    argv[0] = self.resolve(Path::new(&argv[0])).display().to_string();
                }
                Some(argv)
            }
            None => None,
        };
        let restart_env = self.restart_env(&format!("{key}.restart_env"), raw.restart_env)?;
        let bake = self.duration(&format!("{key}.bake"), raw.bake, DEFAULT_BAKE, MAX_WINDOW)?;
        let max_bake = self.duration(
            &format!("{key}.max_bake"),
            raw.max_bake,
            bake.saturating_mul(2).min(MAX_WINDOW),
            MAX_WINDOW,
        )?;
        if max_bake < bake {
            return Err(self.err(
                format!("{key}.max_bake"),
                format!(
                    "must be at least bake ({})",
                    humantime::format_duration(bake)
                ),
            ));
        }
        let min_conclusive =
            self.min_conclusive(&format!("{key}.min_conclusive"), raw.min_conclusive, 1)?;
        let mut checks = Vec::with_capacity(raw.checks.len());
        let mut names = BTreeSet::new();
        for (i, c) in raw.checks.into_iter().enumerate() {
            let ckey = format!("{key}.checks[{i}]");
            let check = self.check(&ckey, c, min_conclusive)?;
            if !names.insert(check.name.clone()) {
                return Err(self.err(
                    format!("{ckey}.name"),
                    format!("duplicate check name `{}`", check.name),
                ));
            }
            checks.push(check);
        }
        let mut hooks = Vec::with_capacity(raw.hooks.len());
        let mut names = BTreeSet::new();
        for (i, h) in raw.hooks.into_iter().enumerate() {
            let hkey = format!("{key}.hooks[{i}]");
            let hook = self.hook(&hkey, h)?;
            if !names.insert(hook.name.clone()) {
                return Err(self.err(
                    format!("{hkey}.name"),
                    format!(
                        "duplicate hook name `{}` (name hooks that share a plugin)",
                        hook.name
                    ),
                ));
            }
            hooks.push(hook);
        }
        Ok(AppConfig {
            name: name.to_string(),
            root: self.resolve(&raw.root),
            bake,
            max_bake,
            restart,
            restart_timeout: self.duration(
                &format!("{key}.restart_timeout"),
                raw.restart_timeout,
                DEFAULT_RESTART_TIMEOUT,
                MAX_DEADLINE,
            )?,
            restart_env,
            keep_modes: raw.keep_modes.unwrap_or(false),
            link_unchanged: raw.link_unchanged.unwrap_or(false),
            checks,
            hooks,
            snapshot: raw.snapshot.iter().map(|p| self.resolve(p)).collect(),
            keep_releases: match raw.keep_releases {
                None => None,
                Some(n) if (1..=10_000).contains(&n) => Some(n as usize),
                Some(n) => {
                    return Err(self.err(
                        format!("{key}.keep_releases"),
                        format!("{n} is out of range 1..=10000"),
                    ))
                }
            },
            auto_rollback: match raw.auto_rollback.as_deref() {
                None | Some("bake") => AutoRollback::Bake,
                Some("always") => AutoRollback::Always,
                Some(other) => {
                    return Err(self.err(
                        format!("{key}.auto_rollback"),
                        format!("`{other}` is not \"bake\" or \"always\""),
                    ))
                }
            },
            watch: raw.watch.unwrap_or(false),
        })
    }

    /// A `min_conclusive` value: 1 to 1000 conclusive runs.
    fn min_conclusive(
        &self,
        key: &str,
        raw: Option<i64>,
        default: u32,
    ) -> Result<u32, ConfigError> {
        match raw {
            None => Ok(default),
            Some(n) if (1..=1000).contains(&n) => Ok(n as u32),
            Some(n) => Err(self.err(key, format!("{n} is out of range 1..=1000"))),
        }
    }

    fn check(
        &self,
        key: &str,
        raw: RawCheck,
        app_min_conclusive: u32,
    ) -> Result<CheckConfig, ConfigError> {
        if !valid_name(&raw.name) {
            return Err(self.err(
                format!("{key}.name"),
                "check names use A-Z a-z 0-9 . _ - (1 to 64, not starting with . or -)",
            ));
        }
        let fail_after = match raw.fail_after {
            None => DEFAULT_FAIL_AFTER,
            Some(n) if (1..=1000).contains(&n) => n as u32,
            Some(n) => {
                return Err(self.err(
                    format!("{key}.fail_after"),
                    format!("{n} is out of range 1..=1000"),
                ))
            }
        };
        let interval = self.duration(
            &format!("{key}.interval"),
            raw.interval,
            DEFAULT_INTERVAL,
            MAX_DEADLINE,
        )?;
        let rule = match (raw.failure_ratio, raw.window) {
            (None, None) => FailureRule::Consecutive(fail_after),
            (Some(_), _) if raw.fail_after.is_some() => {
                return Err(self.err(
                    format!("{key}.failure_ratio"),
                    "use fail_after or failure_ratio, not both",
                ))
            }
            (Some(ratio), window) => {
                if !(ratio > 0.0 && ratio <= 1.0) {
                    return Err(self.err(
                        format!("{key}.failure_ratio"),
                        format!("{ratio} is not in (0, 1]"),
                    ));
                }
                let window = window.ok_or_else(|| {
                    self.err(
                        format!("{key}.window"),
                        "failure_ratio needs a window, e.g. \"5m\"",
                    )
                })?;
                let window = self.duration(
                    &format!("{key}.window"),
                    Some(window),
                    DEFAULT_INTERVAL,
                    MAX_WINDOW,
                )?;
                if window < interval {
                    return Err(self.err(
                        format!("{key}.window"),
                        "must be at least one interval long",
                    ));
                }
                FailureRule::Ratio { ratio, window }
            }
            (None, Some(_)) => {
                return Err(self.err(format!("{key}.window"), "window goes with failure_ratio"))
            }
        };
        let severity = match raw.severity.as_deref() {
            None | Some("critical") => Severity::Critical,
            Some("warning") => Severity::Warning,
            Some(other) => {
                return Err(self.err(
                    format!("{key}.severity"),
                    format!("`{other}` is not \"critical\" or \"warning\""),
                ))
            }
        };
        let on_error = match raw.on_error.as_deref() {
            None | Some("fail") => OnError::Fail,
            Some("ignore") => OnError::Ignore,
            Some(other) => {
                return Err(self.err(
                    format!("{key}.on_error"),
                    format!("`{other}` is not \"fail\" or \"ignore\""),
                ))
            }
        };
        let min_conclusive = self.min_conclusive(
            &format!("{key}.min_conclusive"),
            raw.min_conclusive,
            app_min_conclusive,
        )?;
        Ok(CheckConfig {
            name: raw.name,
            interval,
            fail_after,
            rule,
            severity,
            on_error,
            min_conclusive,
            entry: self.entry(key, raw_entry!(raw))?,
        })
    }

    fn hook(&self, key: &str, raw: RawHook) -> Result<HookConfig, ConfigError> {
        let name = match raw.name {
            Some(n) => n,
            None => raw
                .plugin
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if !valid_name(&name) {
            return Err(self.err(
                format!("{key}.name"),
                "hook names use A-Z a-z 0-9 . _ - (1 to 64, not starting with . or -)",
            ));
        }
        let on = match raw.on {
            None => vec![
                HookEvent::Activated,
                HookEvent::RolledBack,
                HookEvent::Degraded,
                HookEvent::Held,
            ],
            Some(list) if list.is_empty() => {
                return Err(self.err(format!("{key}.on"), "must name at least one event"))
            }
            Some(list) => {
                let mut on = Vec::new();
                for (i, text) in list.iter().enumerate() {
                    let event = HookEvent::ALL
                        .into_iter()
                        .find(|e| e.as_str() == text)
                        .ok_or_else(|| {
                            self.err(
                                format!("{key}.on[{i}]"),
                                format!("`{text}` is not one of pre-activate, activated, rolled-back, degraded, held"),
                            )
                        })?;
                    if !on.contains(&event) {
                        on.push(event);
                    }
                }
                on.sort();
                on
            }
        };
        Ok(HookConfig {
            name,
            on,
            entry: self.entry(key, raw_entry!(raw))?,
        })
    }

    fn size(
        &self,
        key: &str,
        text: Option<String>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(text) = text else { return Ok(default) };
        let size: bytesize::ByteSize = text
            .parse()
            .map_err(|e| self.err(key, format!("`{text}` is not a size like 64MiB ({e})")))?;
        if size.as_u64() < min || size.as_u64() > max {
            return Err(self.err(
                key,
                format!(
                    "must be between {} and {}",
                    bytesize::ByteSize::b(min),
                    bytesize::ByteSize::b(max)
                ),
            ));
        }
        Ok(size.as_u64())
    }

    fn entry(&self, key: &str, raw: RawEntry) -> Result<PluginEntry, ConfigError> {
        if raw.plugin.as_os_str().is_empty() {
            return Err(self.err(format!("{key}.plugin"), "must name a .wasm component"));
        }
        let sha256 = match raw.sha256 {
            None => None,
            Some(h) => {
                let h = h.trim().to_ascii_lowercase();
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(self.err(format!("{key}.sha256"), "must be 64 hex digits"));
                }
                Some(h)
            }
        };
        let memory_limit = self.size(
            &format!("{key}.memory_limit"),
            raw.memory_limit,
            DEFAULT_MEMORY_LIMIT,
            1024 * 1024,
            MAX_MEMORY_LIMIT,
        )?;
        let max_response_bytes = self.size(
            &format!("{key}.max_response_bytes"),
            raw.max_response_bytes,
            DEFAULT_MAX_RESPONSE_BYTES,
            1024,
            MAX_RESPONSE_LIMIT,
        )?;
        if let Some(scope) = &raw.kv_scope {
            if !valid_name(scope) {
                return Err(self.err(
                    format!("{key}.kv_scope"),
                    "must be a name: [A-Za-z0-9._-], 1 to 64 characters, not starting with . or -",
                ));
            }
        }
        let mut allow_hosts = Vec::with_capacity(raw.allow_hosts.len());
        for (i, entry) in raw.allow_hosts.iter().enumerate() {
            allow_hosts.push(
                HostRule::parse(entry)
                    .map_err(|m| self.err(format!("{key}.allow_hosts[{i}]"), m))?,
            );
        }
        let mut config = BTreeMap::new();
        for (k, v) in raw.config {
            let scalar = |v: toml::Value| match v {
                toml::Value::String(s) => Some(s),
                toml::Value::Integer(i) => Some(i.to_string()),
                toml::Value::Float(f) => Some(f.to_string()),
                toml::Value::Boolean(b) => Some(b.to_string()),
                toml::Value::Datetime(d) => Some(d.to_string()),
                toml::Value::Array(_) | toml::Value::Table(_) => None,
            };
            // A list of scalars reaches the plugin comma-separated.
            let value = match v {
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(scalar)
                    .collect::<Option<Vec<_>>>()
                    .map(|items| items.join(",")),
                v => scalar(v),
            };
            let Some(value) = value else {
                return Err(self.err(
                    format!("{key}.config.{k}"),
                    "values must be strings, numbers, booleans or lists of them",
                ));
            };
            config.insert(k, value);
        }
        let mut secrets = BTreeMap::new();
        for (name, reference) in raw.secrets {
            let secret = self.secret(&format!("{key}.secrets.{name}"), &reference)?;
            secrets.insert(name, secret);
        }
        Ok(PluginEntry {
            plugin: self.resolve(&raw.plugin),
            sha256,
            timeout: self.duration(
                &format!("{key}.timeout"),
                raw.timeout,
                DEFAULT_TIMEOUT,
                MAX_DEADLINE,
            )?,
            memory_limit,
            max_response_bytes,
            kv_scope: raw.kv_scope,
            allow_hosts,
            config,
            secrets,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[agent]
state_dir = "/var/lib/rollback-agent"
socket = "/run/rollback-agent/control.sock"

[apps.shop]
root = "/srv/shop"
bake = "5m"
restart = ["systemctl", "restart", "shop.service"]

[[apps.shop.checks]]
name = "health"
plugin = "plugins/http-probe.wasm"
interval = "10s"
fail_after = 3
timeout = "5s"
allow_hosts = ["127.0.0.1:8080"]
config = { url = "http://127.0.0.1:8080/health", expect_status = 200 }
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/rollback-agent/agent.toml"))
    }

    #[test]
    fn parses_the_documented_example() {
        let c = parse(FULL).unwrap();
        assert_eq!(
            c.agent.socket,
            Path::new("/run/rollback-agent/control.sock")
        );
        let shop = &c.apps["shop"];
        assert_eq!(shop.bake, Duration::from_secs(300));
        assert_eq!(shop.restart.as_deref().unwrap()[2], "shop.service");
        let check = &shop.checks[0];
        assert_eq!(
            check.entry.plugin,
            Path::new("/etc/rollback-agent/plugins/http-probe.wasm")
        );
        assert_eq!(check.interval, Duration::from_secs(10));
        assert_eq!(check.fail_after, 3);
        assert_eq!(check.entry.config["expect_status"], "200");
        assert!(check.entry.allow_hosts[0].matches("127.0.0.1", 8080, 80));
        assert!(!check.entry.allow_hosts[0].matches("127.0.0.1", 8081, 80));
    }

    #[test]
    fn defaults_apply() {
        let c = parse("[apps.a]\nroot = \"srv/a\"\n").unwrap();
        assert_eq!(c.agent.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.apps["a"].root, Path::new("/etc/rollback-agent/srv/a"));
        assert_eq!(c.apps["a"].bake, DEFAULT_BAKE);
        assert!(c.apps["a"].restart.is_none());
        let c =
            parse("[apps.a]\nroot = \"./srv/a\"\nrestart = [\"./restart.sh\", \"now\"]\n").unwrap();
        assert_eq!(c.apps["a"].root, Path::new("/etc/rollback-agent/srv/a"));
        assert_eq!(
            c.apps["a"].restart.as_deref().unwrap(),
            ["/etc/rollback-agent/restart.sh", "now"]
        );
    }

    #[test]
    fn validation_errors_name_the_line() {
        let text = "[agent]\nsocket = \"/s\"\n\n[apps.shop]\nroot = \"/srv\"\n\n[[apps.shop.checks]]\nname = \"a\"\nplugin = \"p\"\n\n[[apps.shop.checks]]\nname = \"b\"\nplugin = \"p\"\nfail_after = 0\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.contains("line 14") && err.contains("apps.shop.checks[1].fail_after"),
            "{err}"
        );
        assert_eq!(locate(text, "apps.shop.checks[0].name"), Some(8));
        assert_eq!(
            locate(text, "apps.shop.bake"),
            Some(4),
            "an absent key points at its table"
        );
        assert_eq!(locate("[apps.\"a/b\"]\nroot = 1\n", "apps.a/b"), Some(1));
    }

    fn invalid_key(text: &str) -> String {
        match parse(text).unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected a validation error, got {other}"),
        }
    }

    #[test]
    fn restart_env_takes_names_or_pairs_and_refuses_the_agents_own() {
        let base = "[apps.shop]\nroot = \"/srv/shop\"\n";
        let c = parse(&format!("{base}restart_env = [\"HOME\", \"NODE_ENV\"]\n")).unwrap();
        assert_eq!(
            c.apps["shop"].restart_env,
            [EnvVar::Pass("HOME".into()), EnvVar::Pass("NODE_ENV".into())]
        );
        let c = parse(&format!(
            "{base}restart_env = {{ NODE_ENV = \"production\" }}\n"
        ))
        .unwrap();
        assert_eq!(
            c.apps["shop"].restart_env,
            [EnvVar::Set("NODE_ENV".into(), "production".into())]
        );
        assert!(parse(base).unwrap().apps["shop"].restart_env.is_empty());
        for bad in [
            "[\"ROLLBACK_VERSION\"]",
            "[\"PATH\"]",
            "[\"1X\"]",
            "[\"A-B\"]",
            "[\"\"]",
            "[\"HOME\", \"HOME\"]",
        ] {
            assert_eq!(
                invalid_key(&format!("{base}restart_env = {bad}\n")),
                "apps.shop.restart_env",
                "{bad}"
            );
        }
        assert!(parse(&format!("{base}restart_env = 3\n")).is_err());
    }

    #[test]
    fn plugin_config_lists_arrive_comma_separated() {
        let base = "[apps.shop]\nroot = \"/srv/shop\"\n\n[[apps.shop.checks]]\nname = \"e\"\nplugin = \"p.wasm\"\n";
        let c = parse(&format!(
            "{base}config = {{ exclude = [\"404\", 409], one = \"x\" }}\n"
        ))
        .unwrap();
        let entry = &c.apps["shop"].checks[0].entry;
        assert_eq!(entry.config["exclude"], "404,409");
        assert_eq!(entry.config["one"], "x");
        assert_eq!(
            invalid_key(&format!("{base}config = {{ exclude = [[1]] }}\n")),
            "apps.shop.checks[0].config.exclude"
        );
        assert_eq!(
            invalid_key(&format!("{base}config = {{ t = {{ a = 1 }} }}\n")),
            "apps.shop.checks[0].config.t"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = "[apps.shop]\nroot = \"/srv/shop\"\n";
        assert_eq!(
            invalid_key(&format!("{base}bake = \"soon\"\n")),
            "apps.shop.bake"
        );
        assert_eq!(
            invalid_key(&format!("{base}bake = \"0s\"\n")),
            "apps.shop.bake"
        );
        // Durations that would overflow clock arithmetic are refused up front.
        for (key, text) in [
            ("bake", "18446744073709551615s"),
            ("bake", "100000000000h"),
            ("bake", "367d"),
            ("restart_timeout", "25h"),
        ] {
            assert_eq!(
                invalid_key(&format!("{base}{key} = \"{text}\"\n")),
                format!("apps.shop.{key}")
            );
        }
        assert_eq!(
            invalid_key(&format!("{base}restart = []\n")),
            "apps.shop.restart"
        );
        let check = "[[apps.shop.checks]]\nname = \"h\"\nplugin = \"p.wasm\"\n";
        assert_eq!(
            invalid_key(&format!("{base}{check}fail_after = 0\n")),
            "apps.shop.checks[0].fail_after"
        );
        assert_eq!(
            invalid_key(&format!("{base}{check}interval = \"-1s\"\n")),
            "apps.shop.checks[0].interval"
        );
        for (key, text) in [("interval", "2d"), ("timeout", "18446744073709551615s")] {
            assert_eq!(
                invalid_key(&format!("{base}{check}{key} = \"{text}\"\n")),
                format!("apps.shop.checks[0].{key}")
            );
        }
        assert_eq!(
            invalid_key(&format!("{base}{check}memory_limit = \"lots\"\n")),
            "apps.shop.checks[0].memory_limit"
        );
        assert_eq!(
            invalid_key(&format!("{base}{check}allow_hosts = [\"http://x/\"]\n")),
            "apps.shop.checks[0].allow_hosts[0]"
        );
        assert_eq!(
            invalid_key(&format!("{base}{check}config = {{ a = [[1]] }}\n")),
            "apps.shop.checks[0].config.a"
        );
        assert_eq!(
            invalid_key(&format!("{base}{check}{check}")),
            "apps.shop.checks[1].name"
        );
        assert_eq!(invalid_key("[apps.\"a/b\"]\nroot = \"/x\"\n"), "apps.a/b");
        assert_eq!(
            invalid_key("[apps.a]\nroot = \"/x\"\n[apps.b]\nroot = \"/x\"\n"),
            "apps.b.root"
        );
    }

    #[test]
    fn lifecycle_options() {
        let c = parse(
            "[agent]\nhistory_retention = \"45d\"\n[apps.a]\nroot = \"/a\"\nsnapshot = [\"state.db\"]\nkeep_releases = 4\nauto_rollback = \"always\"\nwatch = true\n[[apps.a.checks]]\nname = \"e\"\nplugin = \"p.wasm\"\nfailure_ratio = 0.05\nwindow = \"5m\"\nseverity = \"warning\"\non_error = \"ignore\"\n",
        )
        .unwrap();
        assert_eq!(c.agent.history_retention, Duration::from_secs(45 * 86400));
        let a = &c.apps["a"];
        assert_eq!(a.snapshot, [Path::new("/etc/rollback-agent/state.db")]);
        assert_eq!(a.keep_releases, Some(4));
        assert_eq!(a.auto_rollback, AutoRollback::Always);
        assert!(a.watch);
        let ch = &a.checks[0];
        assert_eq!(
            ch.rule,
            FailureRule::Ratio {
                ratio: 0.05,
                window: Duration::from_secs(300)
            }
        );
        assert_eq!(ch.severity, Severity::Warning);
        assert_eq!(ch.on_error, OnError::Ignore);
        let d = parse(
            "[apps.a]\nroot = \"/a\"\n[[apps.a.checks]]\nname = \"e\"\nplugin = \"p.wasm\"\n",
        )
        .unwrap();
        assert_eq!(d.apps["a"].auto_rollback, AutoRollback::Bake);
        assert_eq!(d.apps["a"].checks[0].rule, FailureRule::Consecutive(3));
        assert_eq!(d.apps["a"].checks[0].severity, Severity::Critical);
        assert_eq!(d.agent.history_retention, DEFAULT_HISTORY_RETENTION);

        assert_eq!(
            invalid_key("[agent]\nhistory_retention = \"7d\"\n"),
            "agent.history_retention"
        );
        let base = "[apps.a]\nroot = \"/a\"\n";
        assert_eq!(
            invalid_key(&format!("{base}keep_releases = 0\n")),
            "apps.a.keep_releases"
        );
        assert_eq!(
            invalid_key(&format!("{base}auto_rollback = \"never\"\n")),
            "apps.a.auto_rollback"
        );
        let check = "[[apps.a.checks]]\nname = \"e\"\nplugin = \"p.wasm\"\n";
        for (extra, key) in [
            (
                "failure_ratio = 1.5\nwindow = \"5m\"",
                "apps.a.checks[0].failure_ratio",
            ),
            ("failure_ratio = 0.1", "apps.a.checks[0].window"),
            ("window = \"5m\"", "apps.a.checks[0].window"),
            (
                "failure_ratio = 0.1\nwindow = \"5m\"\nfail_after = 2",
                "apps.a.checks[0].failure_ratio",
            ),
            (
                "failure_ratio = 0.1\nwindow = \"1s\"",
                "apps.a.checks[0].window",
            ),
            ("severity = \"fatal\"", "apps.a.checks[0].severity"),
            ("on_error = \"retry\"", "apps.a.checks[0].on_error"),
        ] {
            assert_eq!(
                invalid_key(&format!("{base}{check}{extra}\n")),
                key,
                "{extra}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_syntax_errors_give_line_numbers() {
        let err = parse("[apps.shop]\nroot = \"/srv\"\nbak = \"5m\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("bak"), "{err}");
        let err = parse("[apps.shop\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn host_rules() {
        let r = HostRule::parse("api.example.com").unwrap();
        assert!(r.matches("API.example.com", 443, 443));
        assert!(!r.matches("api.example.com", 8443, 443));
        let r = HostRule::parse("*.example.com:8443").unwrap();
        assert!(r.matches("a.b.example.com", 8443, 443));
        assert!(!r.matches("example.com", 8443, 443));
        assert!(!r.matches("evilexample.com", 8443, 443));
        let r = HostRule::parse("[::1]:9000").unwrap();
        assert!(r.matches("[::1]", 9000, 80));
        let r = HostRule::parse("localhost:80").unwrap();
        assert!(r.matches("localhost", 80, 80));
        assert_eq!(r.to_string(), "localhost:80");
        for bad in [
            "",
            "http://x/path",
            "ftp://x",
            "a/b",
            "user@host",
            "https://user@host",
            "host:99999",
            "host:abc",
        ] {
            assert!(HostRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_allow_https_only_unless_written_with_http() {
        let plain = |entry: &str| HostRule::parse(entry).unwrap().allows_plain_http();
        assert!(!plain("api.example.com"));
        assert!(!plain("*.example.com"));
        assert!(!plain("https://127.0.0.1:8080"));
        assert!(plain("http://legacy.example.com"));
        assert!(plain("127.0.0.1:8080"));
        assert!(plain("[::1]:9000"));
        assert!(plain("localhost:8080"));
        let r = HostRule::parse("http://legacy.example.com:8080").unwrap();
        assert!(r.matches("legacy.example.com", 8080, 80));
        assert_eq!(r.to_string(), "http://legacy.example.com:8080");
    }
}
