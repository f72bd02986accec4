//! Shared fixtures: a running agent in a temp dir, the CLI, a fake app.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ROLLBACKD: &str = env!("CARGO_BIN_EXE_rollbackd");
pub const ROLLBACKCTL: &str = env!("CARGO_BIN_EXE_rollbackctl");

/// Held by tests that load the CPU for long (compiling an 18 MB component)
/// and by tests that measure pace, so that the two never overlap.
pub static CPU_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes `CPU_HEAVY`, even if a previous holder panicked.
pub fn cpu_heavy() -> std::sync::MutexGuard<'static, ()> {
    CPU_HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A compiled-component cache the tests share (`target/test-plugin-cache`).
pub fn plugin_cache() -> PathBuf {
    repo().join("target/test-plugin-cache")
}

/// A plugin built by `make plugins`.
pub fn plugin(name: &str) -> PathBuf {
    let p = repo().join("target/plugins").join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make plugins` first",
        p.display()
    );
    p
}

/// A hand-written component in tests/fixtures.
pub fn fixture(name: &str) -> String {
    repo()
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Writes `<dir>/agent.toml`: an `[agent]` table keeping the state and the
/// socket (`control.sock`) in `dir`, then `body`. Returns its path.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    let text = format!(
        "[agent]\nstate_dir = \"{0}/state\"\nsocket = \"{0}/control.sock\"\n\n{body}",
        dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `rollbackd --config CONFIG` to its end: (exit code, stderr).
pub fn rollbackd_run(config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(ROLLBACKD);
    cmd.arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A release of the test app (tests/fixtures/releases): `release.json`'s
/// `health` is what `FakeApp` answers, 200 for 1.0.0 and 500 for 1.1.0.
pub fn example_release(version: &str) -> PathBuf {
    repo().join("tests/fixtures/releases").join(version)
}

/// One request as the test server read it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    /// Names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path
            .split_once('?')
            .map_or(&self.path, |(path, _)| path)
    }

    /// The query string's pairs, percent-decoded (`+` is a space).
    pub fn query(&self) -> Vec<(String, String)> {
        parse_query(self.path.split_once('?').map_or("", |(_, query)| query))
    }

    /// The body's pairs, form-decoded (`+` is a space).
    pub fn form(&self) -> Vec<(String, String)> {
        parse_query(&String::from_utf8_lossy(&self.body))
    }
}

/// The first of `headers` called `name` (any case).
pub fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A query string or form body as `(name, value)` pairs, percent-decoded
/// (`+` is a space).
fn parse_query(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// What the test server answers: status, extra headers, body, and a delay
/// before answering.
#[derive(Debug, Clone)]
pub struct HttpReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl HttpReply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpReply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// A reply with `content-type: application/json`.
    pub fn json(status: u16, body: &str) -> Self {
        HttpReply::new(status, body).header("content-type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }
}

/// Serves on 127.0.0.1 (one thread per connection, `connection: close`,
/// reads the request line, headers and a content-length body), answering
/// each request with `handler`; returns the port.
pub fn http_server(handler: impl Fn(&HttpRequest) -> HttpReply + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let handler = handler.clone();
            std::thread::spawn(move || answer(stream, &*handler));
        }
    });
    port
}

fn answer(mut stream: TcpStream, handler: &dyn Fn(&HttpRequest) -> HttpReply) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(request) = read_request(&stream) else {
        return;
    };
    let reply = handler(&request);
    std::thread::sleep(reply.delay);
    let mut out = format!(
        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&reply.body);
    // One write, so the reply does not wait on Nagle and a delayed ACK.
    let _ = stream.write_all(&out);
}

fn read_request(stream: &TcpStream) -> Option<HttpRequest> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut request = HttpRequest {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    let length = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    request.body = vec![0; length];
    let _ = reader.read_exact(&mut request.body);
    Some(request)
}

/// A fake of the example app: serves `GET /health` with the status code in
/// `<root>/current/release.json` field `health`, read on every request, so
/// the answer follows whatever release `current` points at.
pub struct FakeApp {
    pub port: u16,
}

impl FakeApp {
    pub fn start(root: &Path) -> FakeApp {
        let release = root.join("current/release.json");
        let port = http_server(move |_| {
            let text = std::fs::read_to_string(&release).unwrap_or_default();
            let status = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["health"].as_u64())
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(503);
            HttpReply::json(status, &format!("{{\"health\":{status}}}"))
        });
        FakeApp { port }
    }
}

/// Polls `probe` every 20 ms until it yields a value; fails naming `what`
/// once `limit` has passed.
pub fn wait_for<T>(what: &str, limit: Duration, probe: impl FnMut() -> Option<T>) -> T {
    wait_for_opt(limit, probe).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// `wait_for` a condition, 30 s at most.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(30), || cond().then_some(()))
}

/// One plugin host for every agent run in this process: components compiled
/// once (and cached in `plugin_cache()` across runs), one engine, one pool.
fn shared_host() -> Arc<rollback_agent::plugin::PluginHost> {
    static HOST: std::sync::OnceLock<Arc<rollback_agent::plugin::PluginHost>> =
        std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let cache = plugin_cache();
        Arc::new(
            rollback_agent::plugin::PluginHost::with_options(rollback_agent::plugin::HostOptions {
                cache_dir: Some(cache),
                max_memory: Some(256 << 20),
            })
            .unwrap(),
        )
    })
    .clone()
}

/// Links `<dir>/state/plugin-cache` (where `rollbackd` keeps its compiled
/// plugins) to the cache the tests share.
fn share_plugin_cache(dir: &Path) {
    let cache = plugin_cache();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cache)
        .unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::os::unix::fs::symlink(&cache, dir.join("state/plugin-cache")).unwrap();
}

/// The log filter of the agents under test.
const LOG_FILTER: &str =
    "debug,sled=info,cranelift_codegen=info,wasmtime=info,wasmtime_cranelift=info";

/// An agent run in this process by `daemon::run` on its own runtime thread.
struct InProcess {
    signals: tokio::sync::mpsc::Sender<rollback_agent::daemon::Signal>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Starts the agent on `config` (logging to `log`) and waits until it
    /// serves `socket`, or fails with the reason it did not start.
    fn start(config: &Path, socket: &Path, log: std::fs::File) -> Result<InProcess, String> {
        use rollback_agent::daemon;
        let config = rollback_agent::config::Config::load(config).map_err(|e| e.to_string())?;
        let socket = socket.to_path_buf();
        let (signals, rx) = tokio::sync::mpsc::channel(4);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(LOG_FILTER))
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(log))
                .finish();
            let dispatch = tracing::Dispatch::new(subscriber);
            let _default = tracing::dispatcher::set_default(&dispatch);
            let each = dispatch.clone();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                // Every thread of this agent logs to its own file.
                .on_thread_start(move || {
                    std::mem::forget(tracing::dispatcher::set_default(&each));
                })
                .build()?;
            let result = rt.block_on(async move {
                let options = daemon::Options {
                    host: Some(shared_host()),
                };
                let started = daemon::start(config, options).await?;
                let listener = rollback_agent::control::bind(&socket, started.socket_gid())?;
                let _ = ready_tx.send(());
                started.serve(listener, rx).await
            });
            if let Err(e) = &result {
                tracing::error!("rollbackd: {e:#}");
            }
            rt.shutdown_timeout(Duration::from_secs(3));
            result
        });
        match ready_rx.recv() {
            Ok(()) => Ok(InProcess { signals, thread }),
            Err(_) => Err(match thread.join() {
                Ok(Err(e)) => format!("{e:#}"),
                Ok(Ok(())) => "it returned at once".to_string(),
                Err(_) => "it panicked".to_string(),
            }),
        }
    }

    /// Tells the agent to shut down and waits for it: whether it ended cleanly.
    fn stop(self) -> bool {
        let _ = self
            .signals
            .blocking_send(rollback_agent::daemon::Signal::Shutdown);
        matches!(self.thread.join(), Ok(Ok(())))
    }
}

/// How an agent under test runs.
enum Running {
    /// The `rollbackd` binary: for signals, crashes, fail points, the
    /// daemon's environment and its process-wide metrics.
    Process(Child),
    /// `daemon::run` in this process, on the shared warm plugin host.
    InProcess(InProcess),
}

/// How an agent under test ended.
#[derive(Debug)]
pub struct Stopped(bool);

impl Stopped {
    /// A clean exit (status 0, or `daemon::run` returning `Ok`).
    pub fn success(&self) -> bool {
        self.0
    }
}

/// An agent running on a config in its own temp dir, in this process (the
/// default) or as a `rollbackd` process (`Agent::process*`); stopped on drop.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    running: Option<Running>,
    /// Whether it runs as a process.
    process: bool,
    /// Extra environment of the daemon (e.g. for `env:` secrets).
    env: Vec<(String, String)>,
}

impl Agent {
    /// Writes `config` (TOML, with `{dir}` replaced by the temp dir) and
    /// starts the agent in this process.
    pub fn start(config: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        Agent::start_in(dir, config)
    }

    /// `start` in `dir`.
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Agent {
        Agent::new(dir, config, false, &[])
    }

    /// `start_in`, as a `rollbackd` process (sharing the tests' compiled
    /// plugins through `state/plugin-cache`, a link to `plugin_cache()`).
    pub fn process_in(dir: tempfile::TempDir, config: &str) -> Agent {
        share_plugin_cache(dir.path());
        Agent::new(dir, config, true, &[])
    }

    /// `process_in` with a plugin cache of its own, empty at first.
    pub fn process_with_own_cache_in(dir: tempfile::TempDir, config: &str) -> Agent {
        Agent::new(dir, config, true, &[])
    }

    /// `process_in`, with these variables in the daemon's environment.
    pub fn start_in_with_env(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Agent {
        share_plugin_cache(dir.path());
        Agent::new(dir, config, true, env)
    }

    fn new(dir: tempfile::TempDir, config: &str, process: bool, env: &[(&str, &str)]) -> Agent {
        let socket = dir.path().join("control.sock");
        let config_path = dir.path().join("agent.toml");
        write_config(
            dir.path(),
            &config.replace("{dir}", &dir.path().display().to_string()),
        );
        let mut agent = Agent {
            dir,
            socket,
            config: config_path,
            running: None,
            process,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        agent.spawn();
        agent
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap()
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn spawn(&mut self) {
        assert!(self.running.is_none(), "the agent is running already");
        if !self.process {
            match InProcess::start(&self.config, &self.socket, self.log_file()) {
                Ok(agent) => self.running = Some(Running::InProcess(agent)),
                Err(e) => panic!("the agent did not start: {e}\n{}", self.log()),
            }
            return;
        }
        let log = self.log_file();
        let child = Command::new(ROLLBACKD)
            .arg("--config")
            .arg(&self.config)
            .env("ROLLBACK_AGENT_LOG", LOG_FILTER)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut child = Some(child);
        wait_for(
            "rollbackd to become ready",
            Duration::from_secs(120),
            || {
                // Ready means answering a call, not only accepting a connection.
                if std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                    && raw_call(
                        &self.socket,
                        b"{\"method\":\"org.varlink.service.GetInfo\"}\0",
                    )
                    .contains("rollbackd")
                {
                    return Some(());
                }
                if let Some(status) = child.as_mut().unwrap().try_wait().unwrap() {
                    panic!(
                        "rollbackd exited with {status} before it was ready:\n{}",
                        self.log()
                    );
                }
                None
            },
        );
        self.running = child.map(Running::Process);
    }

    /// Stops the daemon (SIGTERM to a process, `Shutdown` in this process)
    /// and says how it ended.
    pub fn stop(&mut self) -> Stopped {
        match self.running.take().expect("agent not running") {
            Running::InProcess(agent) => Stopped(agent.stop()),
            Running::Process(child) => {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .unwrap();
                // A clean shutdown is prompt, even with a plugin spinning in a check.
                let status = self.wait_child(
                    child,
                    Duration::from_secs(30),
                    "exit within 30 s of SIGTERM",
                );
                Stopped(status.success())
            }
        }
    }

    /// The `rollbackd` process (panics for an agent run in this process).
    fn child(&mut self) -> Child {
        match self.running.take() {
            Some(Running::Process(child)) => child,
            _ => panic!("not a running `rollbackd` process: start it with Agent::process"),
        }
    }

    /// Waits for `child` to exit (killing it and failing past `patience`).
    fn wait_child(
        &self,
        mut child: Child,
        patience: Duration,
        what: &str,
    ) -> std::process::ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("rollbackd did not {what}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the daemon with SIGKILL (no cleanup at all) and waits for it.
    pub fn kill9(&mut self) {
        let mut child = self.child();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
    }

    /// Sets (or, with `None`, removes) a variable of the daemon's
    /// environment for its next start.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        assert!(self.process, "the environment is a process agent's");
        self.env.retain(|(k, _)| k != name);
        if let Some(v) = value {
            self.env.push((name.to_string(), v.to_string()));
        }
    }

    /// Waits for the daemon to exit by itself (60 s at most) and returns
    /// its status.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child();
        self.wait_child(child, Duration::from_secs(60), "exit by itself")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        match &self.running {
            Some(Running::Process(child)) => child.id(),
            _ => panic!("not a running `rollbackd` process: start it with Agent::process"),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Runs `rollbackctl --socket <socket> ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> Ctl {
        ctl_with(&self.socket, args)
    }

    /// `rollbackctl deploy shop SOURCE --version VERSION [--wait]`.
    pub fn deploy(&self, source: &str, version: &str, wait: bool) -> Ctl {
        let mut args = vec!["deploy", "shop", source, "--version", version];
        if wait {
            args.push("--wait");
        }
        self.ctl(&args)
    }

    /// `rollbackctl ... --json` parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all);
        assert_eq!(
            out.code,
            0,
            "rollbackctl {all:?} failed: {}\n{}",
            out.stderr,
            self.log()
        );
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
    }

    /// Polls `rollbackctl status shop --json` until `pred` holds (30 s at
    /// most) and returns that status.
    pub fn wait_for_status(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_for_status_of("shop", what, pred)
    }

    /// `wait_for_status` of another app.
    pub fn wait_for_status_of(
        &self,
        app: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let found = wait_for_opt(Duration::from_secs(30), || {
            last = self.json(&["status", app]);
            pred(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| panic!("timed out waiting for {what}: {last}"))
    }
}

/// `wait_for` that answers `None` instead of failing once `limit` has passed.
pub fn wait_for_opt<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        match self.running.take() {
            Some(Running::Process(mut c)) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Some(Running::InProcess(agent)) => {
                agent.stop();
            }
            None => {}
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// The outcome of one `rollbackctl` run.
#[derive(Debug)]
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn ctl_with(socket: &Path, args: &[&str]) -> Ctl {
    ctl_with_env(socket, args, &[])
}

/// `ctl_with`, with these variables added to rollbackctl's environment.
pub fn ctl_with_env(socket: &Path, args: &[&str], env: &[(&str, &str)]) -> Ctl {
    let out: Output = Command::new(ROLLBACKCTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `rollbackctl plugin test <name>.wasm --json` (the plugin runs here, no
/// agent; compiled once into the shared cache): `--allow-host` for each of `hosts`, `--config` and `--secret` for
/// each pair, then `extra` arguments.
pub fn plugin_test(
    name: &str,
    hosts: &[String],
    config: &[(&str, &str)],
    secrets: &[(&str, &str)],
    extra: &[&str],
) -> Ctl {
    plugin_test_with_env(name, hosts, config, secrets, extra, &[])
}

/// `plugin_test` with these variables added to its environment.
pub fn plugin_test_with_env(
    name: &str,
    hosts: &[String],
    config: &[(&str, &str)],
    secrets: &[(&str, &str)],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Ctl {
    let mut args = vec![
        "plugin".to_string(),
        "test".to_string(),
        plugin(name).display().to_string(),
        "--json".to_string(),
        "--cache-dir".to_string(),
        plugin_cache().display().to_string(),
    ];
    for host in hosts {
        args.extend(["--allow-host".to_string(), host.clone()]);
    }
    for (flag, pairs) in [("--config", config), ("--secret", secrets)] {
        for (k, v) in pairs {
            args.extend([flag.to_string(), format!("{k}={v}")]);
        }
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ctl_with_env(Path::new("/nonexistent/agent.sock"), &args, env)
}

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `<dir>/src/<version>/` with `files` and returns its path.
pub fn release_source(dir: &Path, version: &str, files: &[(&str, String)]) -> PathBuf {
    let path = dir.join("src").join(version);
    std::fs::create_dir_all(&path).unwrap();
    for (name, text) in files {
        std::fs::write(path.join(name), text).unwrap();
    }
    path
}

/// Deploys `good` as 1.0.0 of `shop` (must be kept), runs `between`, then
/// `bad` as 1.1.0 (must be rolled back); returns the history, newest first.
pub fn deploy_good_then_bad(
    agent: &Agent,
    good: &Path,
    bad: &Path,
    between: impl Fn(&Agent),
) -> Vec<serde_json::Value> {
    let out = agent.deploy(good.to_str().unwrap(), "1.0.0", true);
    assert_eq!(out.code, 0, "the good release is kept: {out:?}");
    between(agent);
    let out = agent.deploy(bad.to_str().unwrap(), "1.1.0", true);
    assert_eq!(out.code, 3, "the bad release is rolled back: {out:?}");
    assert!(
        out.stdout.contains("rolled back to 1.0.0"),
        "{}",
        out.stdout
    );
    assert_eq!(current(&agent.path().join("shop")), "1.0.0");
    agent.json(&["history", "shop", "--limit", "200"])["events"]
        .as_array()
        .unwrap()
        .clone()
}

/// In `history`: the `check-failed` event of 1.1.0 names `check`, the
/// `rolled-back` one (1.1.0 to 1.0.0) names it and its summary in its
/// reason. Returns the failed check's summary.
pub fn assert_rolled_back_by(history: &[serde_json::Value], check: &str) -> String {
    let failed = history
        .iter()
        .find(|e| e["kind"] == "check-failed" && e["version"] == "1.1.0")
        .unwrap_or_else(|| panic!("no check-failed event: {history:?}"));
    assert_eq!(failed["check"], check, "{failed}");
    let rolled = history
        .iter()
        .find(|e| e["kind"] == "rolled-back")
        .unwrap_or_else(|| panic!("no rolled-back event: {history:?}"));
    assert_eq!(
        (rolled["from"].as_str(), rolled["to"].as_str()),
        (Some("1.1.0"), Some("1.0.0"))
    );
    let reason = rolled["reason"].as_str().unwrap();
    let summary = reason
        .split_once(&format!("`{check}`"))
        .and_then(|(_, rest)| rest.split_once(": "))
        .map_or("", |(_, summary)| summary);
    assert!(
        !summary.trim().is_empty(),
        "the reason names the check and its summary: {reason}"
    );
    failed["reason"].as_str().unwrap_or_default().to_string()
}

/// The release `<root>/current` points at.
pub fn current(root: &Path) -> String {
    let target = std::fs::read_link(root.join("current")).unwrap();
    target.file_name().unwrap().to_string_lossy().into_owned()
}

/// Sends raw bytes to the socket and returns everything read until EOF or NUL.
pub fn raw_call(socket: &Path, bytes: &[u8]) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    // The agent may reply and close before reading everything (oversized input).
    let _ = s.write_all(bytes);
    read_reply(&mut s, Duration::from_secs(10))
}

/// What the agent sends on `s` up to EOF or a NUL (without it), waiting at
/// most `patience` for each read.
pub fn read_reply(s: &mut std::os::unix::net::UnixStream, patience: Duration) -> String {
    s.set_read_timeout(Some(patience)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.contains(&0) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out)
        .trim_end_matches('\0')
        .to_string()
}

/// A config for one app `shop` (root `{dir}/shop`, `bake`) with one check:
/// `name`, running the built plugin `plugin_name`, then `keys` (more TOML
/// lines of the entry: interval, failure rule, timeout, allow_hosts, config).
pub fn check_config(bake: &str, name: &str, plugin_name: &str, keys: &str) -> String {
    format!(
        "[apps.shop]\nroot = \"{{dir}}/shop\"\nbake = \"{bake}\"\n\n\
         [[apps.shop.checks]]\nname = \"{name}\"\nplugin = \"{}\"\n{keys}",
        plugin(plugin_name).display()
    )
}

/// A config for one app `shop` watched by http-probe against `port`.
pub fn shop_config(port: u16, bake: &str, extra: &str) -> String {
    format!(
        r#"[apps.shop]
root = "{{dir}}/shop"
bake = "{bake}"
{extra}

[[apps.shop.checks]]
name = "health"
plugin = "{plugin}"
interval = "200ms"
fail_after = 3
timeout = "2s"
allow_hosts = ["127.0.0.1:{port}"]
config = {{ url = "http://127.0.0.1:{port}/health" }}
"#,
        plugin = plugin("http-probe").display()
    )
}
