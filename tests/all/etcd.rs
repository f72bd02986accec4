//! A 3-member etcd cluster on 127.0.0.1 for the fleet tests and the fleet
//! benchmark: Debian's `etcd` binary, distinct ports per cluster, data in a
//! temp dir, every member stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary: `ETCD_BIN`, else `etcd` on the PATH, else the copy
/// `.ci/run` extracts into `target/etcd`.
pub fn etcd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return p.into();
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("etcd");
        if p.is_file() {
            return p;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/etcd/usr/bin/etcd")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A 3-member etcd cluster on loopback, stopped on drop.
pub struct Etcd {
    dir: tempfile::TempDir,
    clients: Vec<u16>,
    peers: Vec<u16>,
    members: Vec<Option<Child>>,
}

impl Etcd {
    /// Starts the three members and waits until they are healthy. A member
    /// that exits at once (its port taken meanwhile by another test) makes
    /// a new cluster on other ports, three times at most.
    pub fn start() -> Etcd {
        let mut tries = 0;
        loop {
            tries += 1;
            let dir = tempfile::tempdir().unwrap();
            let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
            let mut etcd = Etcd {
                dir,
                clients,
                peers,
                members: vec![None, None, None],
            };
            for i in 0..3 {
                etcd.start_member(i, "new");
            }
            match etcd.healthy_within(Duration::from_secs(60)) {
                Ok(()) => return etcd,
                Err(why) if tries < 3 && why.contains("exited") => continue,
                Err(why) => panic!("etcd did not become healthy: {why}"),
            }
        }
    }

    /// Starts member `i` (`state`: `new` or `existing`).
    pub fn start_member(&mut self, i: usize, state: &str) {
        let cluster: Vec<String> = (0..3)
            .map(|j| format!("m{j}=http://127.0.0.1:{}", self.peers[j]))
            .collect();
        let log = std::fs::File::create(self.dir.path().join(format!("m{i}.log"))).unwrap();
        let child = Command::new(etcd_bin())
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("m{i}")))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", self.clients[i]),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", self.clients[i]),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peers[i]),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peers[i]),
                "--initial-cluster",
                &cluster.join(","),
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                &format!("t{}", self.peers[0]),
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", etcd_bin().display()));
        self.members[i] = Some(child);
    }

    /// Kills member `i`.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The client URLs (the fleet benchmark's; the tests use `endpoints`).
    #[allow(dead_code)]
    pub fn urls(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// The client URLs, quoted and comma-separated (a TOML list's inside).
    pub fn endpoints(&self) -> String {
        self.clients
            .iter()
            .map(|p| format!("\"http://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Waits until every running member answers `GET /health` with true.
    pub fn wait_healthy(&mut self) {
        if let Err(why) = self.healthy_within(Duration::from_secs(60)) {
            panic!("etcd did not become healthy: {why}");
        }
    }

    /// `wait_healthy`, or why not (a member that exited, with its log).
    fn healthy_within(&mut self, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        loop {
            for i in 0..3 {
                if let Some(Some(status)) = self.members[i]
                    .as_mut()
                    .map(|c| c.try_wait().ok().flatten())
                {
                    self.members[i] = None;
                    return Err(format!("member m{i} exited ({status}): {}", self.log(i)));
                }
            }
            let all = (0..3)
                .filter(|i| self.members[*i].is_some())
                .all(|i| http_get(self.clients[i], "/health").contains("\"true\""));
            if all {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "not within {limit:?}: {}",
                    (0..3).map(|i| self.log(i)).collect::<Vec<_>>().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of member `i`'s log.
    fn log(&self, i: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("m{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..3 {
            self.stop_member(i);
        }
    }
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}
