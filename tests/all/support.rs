//! Shared fixtures: a running agent in a temp dir, the CLI, a fake app.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A release of the quick-start example app.
pub fn example_release(version: &str) -> PathBuf {
    repo().join("examples/quickstart/releases").join(version)
}

/// A fake of the example app: serves `GET /health` with the status code in
/// `<root>/current/release.json` field `health`, read on every request, so
/// the answer follows whatever release `current` points at.
pub struct FakeApp {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl FakeApp {
    pub fn start(root: &Path) -> FakeApp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &root),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeApp { port, stop }
    }
}

impl Drop for FakeApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream, root: &Path) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Drain the headers.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let release = std::fs::read_to_string(root.join("current/release.json")).unwrap_or_default();
    let status = serde_json::from_str::<serde_json::Value>(&release)
        .ok()
        .and_then(|v| v["health"].as_u64())
        .unwrap_or(503);
    let body = format!("{{\"health\":{status}}}");
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A `rollbackd` running on a config in its own temp dir; killed on drop.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Writes `config` (TOML, with `{dir}` replaced by the temp dir) and starts the agent.
    pub fn start(config: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        Agent::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Agent {
        let socket = dir.path().join("control.sock");
        let config_path = dir.path().join("agent.toml");
        let text = format!(
            "[agent]\nstate_dir = \"{}\"\nsocket = \"{}\"\n\n{}",
            dir.path().join("state").display(),
            socket.display(),
            config.replace("{dir}", &dir.path().display().to_string())
        );
        std::fs::write(&config_path, text).unwrap();
        let mut agent = Agent {
            dir,
            socket,
            config: config_path,
            child: None,
        };
        agent.spawn();
        agent
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(ROLLBACKD)
            .arg("--config")
            .arg(&self.config)
            .env("ROLLBACK_AGENT_LOG", "debug,sled=info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "rollbackd exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rollbackd did not become ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent not running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
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
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
    let out: Output = Command::new(ROLLBACKCTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The release `<root>/current` points at.
pub fn current(root: &Path) -> String {
    let target = std::fs::read_link(root.join("current")).unwrap();
    target.file_name().unwrap().to_string_lossy().into_owned()
}

/// Sends raw bytes to the socket and returns everything read until EOF or NUL.
pub fn raw_call(socket: &Path, bytes: &[u8]) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent may reply and close before reading everything (oversized input).
    let _ = s.write_all(bytes);
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
