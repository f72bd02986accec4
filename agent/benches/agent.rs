//! The agent as a process: `rollbackd` started on generated configs, its
//! CPU, memory, disk writes and wake-ups read from /proc while it works,
//! each printed beside a baseline measured in the same run.
//!
//! - P7: 100 apps x 5 http-probe checks every second against a kept-alive
//!   HTTP server on 127.0.0.1 (another process): the agent's CPU (share of
//!   one core, and per check), RSS and bytes written per minute, vs the same
//!   requests made natively by this process with reqwest.
//! - P6: 10 apps x 3 checks every 10 s, between calls: wake-ups per second,
//!   RSS and bytes written, vs an agent with one app and no checks.
//! - START: 500 check entries from a warm plugin cache, spawn to `READY=1`
//!   (sd_notify), and the memory each entry adds, vs 20 entries.
//!
//! - P8: an agent whose history holds `BENCH_EVENTS` events (1,000,000):
//!   spawn to `READY=1`, RSS after a `history` query and its time, vs 1,000
//!   events.
//!
//! - P2: a release whose check fails (every 50 ms, `fail_after = 3`):
//!   from the moment the server wrote the 3rd failing answer to `current`
//!   naming the previous release again (medians of rounds), vs a bare
//!   symlink + rename + fsync of the directory.
//!
//! - P1: `Activate` over the socket (a Varlink call, two releases in turn,
//!   medians of interleaved rounds), vs a bare symlink + rename + fsync of
//!   the directory.
//!
//! `BENCH_SECONDS` sets each measuring window (20; smaller for a quick run);
//! `BENCH_ONLY` (e.g. `P1,P2`) runs only the rows it names.
//! Needs `make plugins` (http-probe). Run with `make bench`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROLLBACKD: &str = env!("CARGO_BIN_EXE_rollbackd");
const ROLLBACKCTL: &str = env!("CARGO_BIN_EXE_rollbackctl");

/// What the server answers: 200, or 500 while `failing` (noting when each
/// 500 was written, for P2).
#[derive(Default)]
struct Health {
    failing: AtomicBool,
    failed_at: Mutex<Vec<Instant>>,
}

/// Answers `GET` with a small 200 (or 500, see [`Health`]) on kept-alive
/// connections (a thread each).
fn serve(listener: TcpListener, health: Arc<Health>) -> ! {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let health = health.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut have = Vec::new();
            loop {
                let Ok(n) = s.read(&mut buf) else { return };
                if n == 0 {
                    return;
                }
                have.extend_from_slice(&buf[..n]);
                while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                    have.drain(..end + 4);
                    let failing = health.failing.load(Ordering::SeqCst);
                    // 500, not 503: the host retries a 503 (with backoff)
                    // within the same check.
                    let (status, body) = if failing {
                        ("500 Internal Server Error", "{\"status\":\"down\"}")
                    } else {
                        ("200 OK", "{\"status\":\"ok\"}")
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                    if failing {
                        health.failed_at.lock().unwrap().push(Instant::now());
                    }
                }
            }
        });
    }
    unreachable!()
}

/// The HTTP server as a child process (this binary again), so that its CPU
/// is neither the agent's nor the native baseline's.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("BENCH_HTTP_SERVER", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = child.stdout.take().unwrap();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        Server {
            child,
            port: line.trim().parse().unwrap(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `rollbackd` in its own temp dir; killed on drop.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    ready_after: Duration,
}

/// The shared plugin cache, so that only the first start compiles.
fn plugin_cache() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-plugin-cache");
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn http_probe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/http-probe.wasm")
}

/// A config of `apps` apps with `checks` http-probe checks each, every
/// `interval`, against 127.0.0.1:`port` (an app with no checks if 0).
fn config(dir: &Path, apps: usize, checks: usize, interval: &str, port: u16) -> String {
    let mut c = format!(
        "[agent]\nstate_dir = \"{0}/state\"\nsocket = \"{0}/control.sock\"\n\n",
        dir.display()
    );
    for a in 0..apps {
        let root = dir.join(format!("apps/app{a}"));
        // A release already active: adopted at start-up, checked once an
        // interval has passed.
        std::fs::create_dir_all(root.join("releases/1.0.0")).unwrap();
        std::os::unix::fs::symlink("releases/1.0.0", root.join("current")).unwrap();
        c.push_str(&format!("[apps.app{a}]\nroot = \"{}\"\n", root.display()));
        for k in 0..checks {
            c.push_str(&format!(
                "[[apps.app{a}.checks]]\nname = \"c{k}\"\nplugin = \"{}\"\ninterval = \"{interval}\"\n\
                 allow_hosts = [\"127.0.0.1:{port}\"]\nconfig = {{ url = \"http://127.0.0.1:{port}/health\" }}\n",
                http_probe().display()
            ));
        }
        c.push('\n');
    }
    c
}

/// Fills `<dir>/state/db` with `n` events of 10 apps, recent enough that
/// none is pruned, and the records an agent that ran them leaves (each app
/// healthy on 1.0.0, which is good).
fn fill_history(dir: &Path, n: usize) {
    use rollback_agent::store::{
        Actor, App, AppState, Event, EventKind, Release, ReleaseState, Store,
    };
    let store = Store::open(&dir.join("state/db")).unwrap();
    for a in 0..10 {
        let name = format!("app{a}");
        let mut app = App::new(&name);
        app.state = AppState::Healthy;
        app.active = Some("1.0.0".into());
        app.last_good = Some("1.0.0".into());
        store.put_app(app).unwrap();
        let mut release = Release::new(&name, "1.0.0", ReleaseState::Good);
        release.source = Some("found on disk".into());
        store.put_release(&release).unwrap();
    }
    let mut left = n;
    while left > 0 {
        let batch = left.min(10_000);
        let events = (0..batch)
            .map(|i| {
                Event::new(
                    &format!("app{}", i % 10),
                    Actor::agent(),
                    EventKind::CheckFailed,
                )
                .version("1.0.0")
                .reason("check `c0` failed: GET http://127.0.0.1/health answered 503")
            })
            .collect();
        store.record_all(events).unwrap();
        left -= batch;
    }
}

impl Daemon {
    /// Starts `rollbackd` on `config(dir)` and waits for its `READY=1`.
    fn start(make_config: impl FnOnce(&Path) -> String) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let text = make_config(dir.path());
        let cfg = dir.path().join("agent.toml");
        std::fs::write(&cfg, text).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::os::unix::fs::symlink(plugin_cache(), dir.path().join("state/plugin-cache")).unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(300)))
            .unwrap();
        let t = Instant::now();
        let child = Command::new(ROLLBACKD)
            .arg("--config")
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            let n = notify.recv(&mut buf).expect("rollbackd never said READY=1");
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break;
            }
        }
        Daemon {
            child,
            dir,
            ready_after: t.elapsed(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `rollbackctl ARGS` against this agent, its stdout.
    fn ctl(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(ROLLBACKCTL)
            .arg("--socket")
            .arg(self.dir.path().join("control.sock"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "rollbackctl {args:?}");
        out.stdout
    }

    /// The run count of every check of every app (`rollbackctl status --json`).
    fn check_runs(&self) -> Vec<u64> {
        let v: serde_json::Value =
            serde_json::from_slice(&self.ctl(&["status", "--json"])).unwrap();
        v["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["checks"].as_object().into_iter().flatten())
            .map(|(_, c)| c["runs"].as_u64().unwrap_or(0))
            .collect()
    }

    /// Waits until each of `checks` checks has a result (its first outcome,
    /// which is written, falls before any window).
    fn wait_all_ran(&self, checks: usize) {
        while self.check_runs().iter().filter(|r| **r > 0).count() < checks {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// How many check runs the agent has done, summed over apps and checks.
    fn runs(&self) -> u64 {
        self.check_runs().iter().sum()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What /proc says about a process at one instant.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    cpu: Duration,
    rss_kib: u64,
    written: Option<u64>,
    switches: u64,
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn sample(pid: u32) -> Sample {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after `) `.
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu = Duration::from_secs_f64((f[11] + f[12]) as f64 / tck);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let written = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| field(&io, "write_bytes:"));
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
                switches += field(&s, "voluntary_ctxt_switches:").unwrap_or(0)
                    + field(&s, "nonvoluntary_ctxt_switches:").unwrap_or(0);
            }
        }
    }
    Sample {
        at: Instant::now(),
        cpu,
        rss_kib: field(&status, "VmRSS:").unwrap_or(0),
        written,
        switches,
    }
}

/// What a process did between two samples.
struct Window {
    secs: f64,
    cpu: Duration,
    rss_kib: u64,
    written_per_min: Option<f64>,
    wakeups_per_s: f64,
}

fn between(a: Sample, b: Sample) -> Window {
    let secs = (b.at - a.at).as_secs_f64();
    Window {
        secs,
        cpu: b.cpu.saturating_sub(a.cpu),
        rss_kib: b.rss_kib,
        written_per_min: a
            .written
            .zip(b.written)
            .map(|(x, y)| y.saturating_sub(x) as f64 * 60.0 / secs),
        wakeups_per_s: b.switches.saturating_sub(a.switches) as f64 / secs,
    }
}

/// Waits (at most 30 s) until `pid` has written nothing for 3 s: the
/// writes of start-up and of the first results (sled flushes them a little
/// later) end before a window opens.
fn settle(pid: u32) {
    let end = Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (sample(pid).written, Instant::now());
    while Instant::now() < end && since.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(250));
        let now = sample(pid).written;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// Samples `pid` now and after `secs` (the measured process runs on its
/// own meanwhile; this one only waits).
fn measure(pid: u32, secs: f64) -> Window {
    let a = sample(pid);
    std::thread::sleep(Duration::from_secs_f64(secs));
    between(a, sample(pid))
}

fn seconds() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn written(w: &Window) -> String {
    w.written_per_min
        .map_or("n/a (no /proc/PID/io)".into(), |b| {
            format!("{:.1} KiB/min", b / 1024.0)
        })
}

/// The same requests as the agent's checks, made by this process with
/// reqwest (one kept-alive client per check, as the agent has one per
/// entry), for `secs`: CPU per request.
fn native_checks(port: u16, checks: usize, secs: f64) -> (Duration, u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let usage = || {
        let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
        };
        t(u.user_time()) + t(u.system_time())
    };
    rt.block_on(async {
        let clients: Vec<reqwest::Client> = (0..checks)
            .map(|_| reqwest::Client::builder().no_proxy().build().unwrap())
            .collect();
        let before = usage();
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for c in clients {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while Instant::now() < end {
                    tick.tick().await;
                    let r = c.get(&url).send().await.unwrap();
                    assert!(r.status().is_success());
                    r.bytes().await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        (usage().saturating_sub(before), n)
    })
}

fn p7(server: &Server) {
    let secs = seconds();
    let (apps, checks) = (100, 5);
    let d = Daemon::start(|dir| config(dir, apps, checks, "1s", server.port));
    d.wait_all_ran(apps * checks);
    settle(d.pid());
    let runs_before = d.runs();
    let w = measure(d.pid(), secs);
    let runs = d.runs().saturating_sub(runs_before).max(1) as f64;
    drop(d);
    let per_check = w.cpu.as_secs_f64() / runs;
    let (native_cpu, native_n) = native_checks(server.port, apps * checks, secs);
    let native_per = native_cpu.as_secs_f64() / native_n.max(1) as f64;
    let share = |cpu: Duration, s: f64| cpu.as_secs_f64() / s * 100.0;
    println!(
        "P7 100x5 checks @ 1s: CPU {:.1} % of a core   native: {:.1} %   ratio {:.2}x",
        share(w.cpu, w.secs),
        share(native_cpu, secs),
        w.cpu.as_secs_f64() / native_cpu.as_secs_f64().max(1e-9)
    );
    println!(
        "P3 CPU per HTTP check (agent): {:.0} us   native kept-alive GET: {:.0} us   ratio {:.2}x",
        per_check * 1e6,
        native_per * 1e6,
        per_check / native_per
    );
    println!(
        "P7 RSS {:.1} MiB   written {}   checks run {:.0}/s   (goal: under 60 MiB, under 1 MiB/min)",
        mib(w.rss_kib),
        written(&w),
        runs / w.secs
    );
}

fn p6(server: &Server) {
    let secs = seconds().max(10.0) * 1.5;
    let idle = Daemon::start(|dir| config(dir, 10, 3, "10s", server.port));
    idle.wait_all_ran(30);
    settle(idle.pid());
    let w = measure(idle.pid(), secs);
    drop(idle);
    let empty = Daemon::start(|dir| config(dir, 1, 0, "10s", server.port));
    settle(empty.pid());
    let e = measure(empty.pid(), secs);
    drop(empty);
    println!(
        "P6 10x3 checks @ 10s: {:.1} wake-ups/s   an agent without checks: {:.1}/s   ratio {:.2}x",
        w.wakeups_per_s,
        e.wakeups_per_s,
        w.wakeups_per_s / e.wakeups_per_s.max(1e-9)
    );
    println!(
        "P6 RSS {:.1} MiB (without checks {:.1} MiB)   written {}   (goal: under 25 MiB, nothing written)",
        mib(w.rss_kib),
        mib(e.rss_kib),
        written(&w)
    );
}

fn start(server: &Server) {
    // Fill the plugin cache first: the rows are about a warm start.
    drop(Daemon::start(|dir| config(dir, 1, 1, "1h", server.port)));
    let few = Daemon::start(|dir| config(dir, 4, 5, "1h", server.port));
    let few_rss = sample(few.pid()).rss_kib;
    let few_t = few.ready_after;
    drop(few);
    let many = Daemon::start(|dir| config(dir, 100, 5, "1h", server.port));
    let many_rss = sample(many.pid()).rss_kib;
    let many_t = many.ready_after;
    drop(many);
    println!(
        "START 500 entries, warm cache: ready in {many_t:.1?}   20 entries: {few_t:.1?}   ratio {:.2}x",
        many_t.as_secs_f64() / few_t.as_secs_f64()
    );
    println!(
        "START memory per entry: {:.1} KiB   (RSS {:.1} MiB with 500, {:.1} MiB with 20)",
        many_rss.saturating_sub(few_rss) as f64 / 480.0,
        mib(many_rss),
        mib(few_rss)
    );
}

/// An agent on a history of `n` events: time to ready, RSS after a query
/// of the newest 100 events of one app, and that query's time.
fn with_history(n: usize, port: u16) -> (Duration, u64, Duration) {
    let d = Daemon::start(|dir| {
        std::fs::create_dir_all(dir.join("state")).unwrap();
        fill_history(dir, n);
        config(dir, 10, 0, "1h", port)
    });
    let t = Instant::now();
    d.ctl(&["history", "app3", "--limit", "100", "--json"]);
    let query = t.elapsed();
    (d.ready_after, sample(d.pid()).rss_kib, query)
}

fn p8(server: &Server) {
    let n = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let (t, rss, q) = with_history(n, server.port);
    let (t0, rss0, q0) = with_history(1_000, server.port);
    println!(
        "P8 {n} events: RSS {:.1} MiB   1,000 events: {:.1} MiB   ratio {:.2}x   (goal: under 40 MiB)",
        mib(rss),
        mib(rss0),
        rss as f64 / rss0 as f64
    );
    println!(
        "P8 ready in {t:.1?} (1,000 events: {t0:.1?}); history query {q:.1?} ({q0:.1?}; both through rollbackctl)"
    );
}

/// One Varlink call on a connected socket; its reply, without the NUL.
fn call(s: &mut std::os::unix::net::UnixStream, method: &str, params: &str) -> String {
    let msg = format!("{{\"method\":\"io.rollback.Agent.{method}\",\"parameters\":{params}}}\0");
    s.write_all(msg.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        s.read_exact(&mut byte).unwrap();
        if byte[0] == 0 {
            break;
        }
        reply.push(byte[0]);
    }
    String::from_utf8(reply).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p1(server: &Server) {
    let d = Daemon::start(|dir| {
        let text = config(dir, 1, 0, "1h", server.port);
        std::fs::create_dir_all(dir.join("apps/app0/releases/1.1.0")).unwrap();
        text
    });
    let mut sock =
        std::os::unix::net::UnixStream::connect(d.dir.path().join("control.sock")).unwrap();
    let bare_root = d.dir.path().join("bare");
    std::fs::create_dir_all(&bare_root).unwrap();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let v = if i % 2 == 0 { "1.1.0" } else { "1.0.0" };
        let t = Instant::now();
        let reply = call(
            &mut sock,
            "Activate",
            &format!("{{\"app\":\"app0\",\"version\":\"{v}\"}}"),
        );
        ours.push(t.elapsed());
        assert!(!reply.contains("\"error\""), "{reply}");
        bare.push(bare_swap(&bare_root, &format!("releases/{v}")));
    }
    let (o, b) = (median(ours), median(bare));
    println!(
        "P1 Activate over the socket: {o:.1?}   symlink + rename + fsync: {b:.1?}   ratio {:.2}x   (goal: 1.5x)",
        o.as_secs_f64() / b.as_secs_f64()
    );
}

/// The bare swap of P1 and P2's baseline: symlink, rename over
/// `current`, fsync of the directory.
fn bare_swap(root: &Path, target: &str) -> Duration {
    let t = Instant::now();
    let tmp = root.join("current.tmp");
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, root.join("current")).unwrap();
    std::fs::File::open(root).unwrap().sync_all().unwrap();
    t.elapsed()
}

fn current(root: &Path) -> PathBuf {
    std::fs::read_link(root.join("current")).unwrap()
}

/// Polls `current` (every 100 µs) until it names `target`; when it did.
fn wait_current(root: &Path, target: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if current(root) == Path::new(target) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "current never named {target}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn p2() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let health = Arc::new(Health::default());
    let served = health.clone();
    std::thread::spawn(move || serve(listener, served));
    let d = Daemon::start(|dir| {
        let root = dir.join("apps/app0");
        std::fs::create_dir_all(root.join("releases/1.0.0")).unwrap();
        std::os::unix::fs::symlink("releases/1.0.0", root.join("current")).unwrap();
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/app.txt"), "v").unwrap();
        format!(
            "[agent]\nstate_dir = \"{0}/state\"\nsocket = \"{0}/control.sock\"\n\n\
             [apps.app0]\nroot = \"{1}\"\nbake = \"1h\"\n\n\
             [[apps.app0.checks]]\nname = \"c0\"\nplugin = \"{2}\"\ninterval = \"50ms\"\nfail_after = 3\n\
             allow_hosts = [\"127.0.0.1:{port}\"]\nconfig = {{ url = \"http://127.0.0.1:{port}/health\" }}\n",
            dir.display(),
            root.display(),
            http_probe().display()
        )
    });
    let root = d.dir.path().join("apps/app0");
    let src = d.dir.path().join("src");
    let bare_root = d.dir.path().join("bare");
    std::fs::create_dir_all(&bare_root).unwrap();
    let rounds = 10;
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for i in 1..=rounds {
        health.failing.store(false, Ordering::SeqCst);
        health.failed_at.lock().unwrap().clear();
        let version = format!("1.{i}.0");
        // `--wait` returns once the bake is decided: here, rolled back.
        let mut deploy = Command::new(ROLLBACKCTL)
            .arg("--socket")
            .arg(d.dir.path().join("control.sock"))
            .args(["deploy", "app0"])
            .arg(&src)
            .args(["--version", &version, "--wait"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_current(&root, &format!("releases/{version}"));
        health.failing.store(true, Ordering::SeqCst);
        let swapped = wait_current(&root, "releases/1.0.0");
        // The release rolled back to is healthy again at once.
        health.failing.store(false, Ordering::SeqCst);
        let third = health.failed_at.lock().unwrap().get(2).copied();
        deploy.wait().unwrap();
        let third = third.expect("the swap came before three failed checks");
        ours.push(swapped.saturating_duration_since(third));
        bare.push(bare_swap(&bare_root, &format!("releases/{version}")));
    }
    let (o, b) = (median(ours), median(bare));
    println!(
        "P2 3rd failed check to the swap: {o:.1?} (median of {rounds})   symlink + rename + fsync: {b:.1?}   ratio {:.2}x   (goal: under 20 ms)",
        o.as_secs_f64() / b.as_secs_f64()
    );
}

fn main() {
    if std::env::var_os("BENCH_HTTP_SERVER").is_some() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        std::io::stdout().flush().unwrap();
        serve(listener, Arc::default());
    }
    if !http_probe().exists() {
        println!(
            "agent benchmarks: skipped ({} missing: run `make plugins`)",
            http_probe().display()
        );
        return;
    }
    // BENCH_ONLY=P1,P8 runs only those rows.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |row: &str| only.is_empty() || only.split(',').any(|r| r.trim() == row);
    let server = Server::start();
    if run("P1") {
        p1(&server);
    }
    if run("P2") {
        p2();
    }
    if run("START") {
        start(&server);
    }
    if run("P7") {
        p7(&server);
    }
    if run("P6") {
        p6(&server);
    }
    if run("P8") {
        p8(&server);
    }
}
