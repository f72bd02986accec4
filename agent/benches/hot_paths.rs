//! Benchmarks of the hot paths, each printed as a ratio against a baseline
//! measured in the same run (no absolute thresholds: machines are noisy).
//!
//! - activation: `AppDir::activate` vs a bare symlink + rename + fsync.
//! - trivial plugin: instantiate + call of a component that only returns
//!   `pass` (fresh Store per call), vs a bare native async call.
//! - plugin check: the http-probe component (fresh Store per call) vs the
//!   same HTTP request made natively with reqwest.
//! - plugin load: from the compiled-component cache (warm) vs compiling
//!   (cold), for every plugin in target/plugins.
//!
//! - deploy (P9): staging a new version of a tree with one file changed
//!   (`link_unchanged`), vs `cp -al` + the changed file + `sync`, and the
//!   disk each takes; a first deploy of the tree vs `cp -a` + `sync`. The
//!   tree is `BENCH_TREE_MIB` MiB in `BENCH_TREE_FILES` files (520 and
//!   10,000; smaller for a quick run).
//!
//! Run with `make bench` (needs `make plugins` for the second one).

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use rollback_agent::config::HostRule;
use rollback_agent::plugin::{
    CheckInput, Grants, HostOptions, Phase, PluginHost, ReleaseInfo, Sandbox, World,
    DEFAULT_MAX_RESPONSE_BYTES,
};
use rollback_agent::release::{AppDir, Version};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn report(name: &str, subject: Duration, baseline: Duration, baseline_name: &str) {
    let ratio = subject.as_secs_f64() / baseline.as_secs_f64();
    let digits = if ratio < 0.1 { 4 } else { 2 };
    println!(
        "{name:<30} {subject:>10.1?} per op   {baseline_name}: {baseline:>10.1?}   ratio {ratio:.digits$}x"
    );
}

fn bare_swap(root: &Path, target: &str, i: usize) {
    let tmp = root.join(format!("bare.tmp-{i}"));
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, root.join("bare")).unwrap();
    std::fs::File::open(root).unwrap().sync_all().unwrap();
}

fn activation() {
    let dir = tempfile::tempdir().unwrap();
    let app = AppDir::new(dir.path());
    app.ensure_layout().unwrap();
    let versions = [
        Version::parse("1.0.0").unwrap(),
        Version::parse("1.1.0").unwrap(),
    ];
    for v in &versions {
        std::fs::create_dir(app.release_path(v)).unwrap();
    }
    let rounds = 300;
    let mut ours = Vec::with_capacity(rounds);
    let mut bare = Vec::with_capacity(rounds);
    for i in 0..rounds {
        // Interleave both so that disk noise hits them alike.
        let t = Instant::now();
        app.activate(&versions[i % 2]).unwrap();
        ours.push(t.elapsed());
        let t = Instant::now();
        bare_swap(dir.path(), &format!("releases/{}", versions[i % 2]), i);
        bare.push(t.elapsed());
    }
    report(
        "activation",
        median(ours),
        median(bare),
        "symlink+rename+fsync",
    );
}

fn serve(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    // One request per read is enough for these small GETs.
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let body = "{\"status\":\"ok\"}";
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = s.write_all(reply.as_bytes());
                        }
                    }
                }
            });
        }
    });
}

fn plugin_check(rt: &tokio::runtime::Runtime) {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/http-probe.wasm");
    if !wasm.exists() {
        println!(
            "plugin check: skipped ({} missing: run `make plugins`)",
            wasm.display()
        );
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    serve(listener);
    let url = format!("http://127.0.0.1:{port}/health");

    let host = PluginHost::new().unwrap();
    let t = Instant::now();
    let plugin = host.load(&wasm).unwrap();
    println!("plugin compile           {:>10.1?}", t.elapsed());
    let sandbox = Sandbox::new(
        Grants {
            app: "bench".into(),
            entry: "health".into(),
            plugin: "test.wasm".into(),
            allow_hosts: vec![HostRule::parse(&format!("127.0.0.1:{port}")).unwrap()],
            config: BTreeMap::from([("url".to_string(), url.clone())]),
            secrets: BTreeMap::new(),
            timeout: Duration::from_secs(5),
            memory_limit: 64 << 20,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        },
        std::sync::Arc::new(rollback_agent::plugin::MemoryKv::default()),
    )
    .unwrap();
    let input = CheckInput {
        app: "bench".into(),
        check: "health".into(),
        active: ReleaseInfo {
            app: "bench".into(),
            version: "1.0.0".into(),
            activated_at_ms: None,
        },
        previous: None,
        phase: Phase::Bake,
        now_ms: 0,
    };
    let native = reqwest::Client::builder().no_proxy().build().unwrap();
    let rounds = 300;
    let (mut wasm_t, mut native_t) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..20 {
            plugin.check(&sandbox, &input).await.result.unwrap();
            native
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
        }
        for _ in 0..rounds {
            let t = Instant::now();
            let r = plugin.check(&sandbox, &input).await;
            wasm_t.push(t.elapsed());
            assert!(r.result.is_ok(), "{:?}", r.result);
            let t = Instant::now();
            let resp = native.get(&url).send().await.unwrap();
            assert!(resp.status().is_success());
            resp.bytes().await.unwrap();
            native_t.push(t.elapsed());
        }
    });
    report(
        "plugin check (http)",
        median(wasm_t),
        median(native_t),
        "native reqwest GET",
    );
}

fn input() -> CheckInput {
    CheckInput {
        app: "bench".into(),
        check: "trivial".into(),
        active: ReleaseInfo {
            app: "bench".into(),
            version: "1.0.0".into(),
            activated_at_ms: None,
        },
        previous: None,
        phase: Phase::Bake,
        now_ms: 0,
    }
}

fn sandbox() -> std::sync::Arc<Sandbox> {
    Sandbox::new(
        Grants {
            app: "bench".into(),
            entry: "trivial".into(),
            plugin: "test.wasm".into(),
            allow_hosts: Vec::new(),
            config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            timeout: Duration::from_secs(5),
            memory_limit: 64 << 20,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        },
        std::sync::Arc::new(rollback_agent::plugin::MemoryKv::default()),
    )
    .unwrap()
}

#[inline(never)]
async fn native_trivial(i: u64) -> u64 {
    std::hint::black_box(i) + 1
}

fn trivial_call(rt: &tokio::runtime::Runtime) {
    let wat = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pass.wat");
    let host = PluginHost::new().unwrap();
    let plugin = host.load(&wat).unwrap();
    let sandbox = sandbox();
    let input = input();
    let rounds = 2000;
    let (mut wasm_t, mut native_t) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for i in 0..rounds {
            let t = Instant::now();
            let r = plugin.check(&sandbox, &input).await;
            wasm_t.push(t.elapsed());
            assert!(r.result.is_ok());
            let t = Instant::now();
            std::hint::black_box(native_trivial(i).await);
            native_t.push(t.elapsed());
        }
    });
    report(
        "trivial plugin call",
        median(wasm_t),
        median(native_t),
        "native async call",
    );
}

fn cache_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let mut plugins: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    plugins.retain(|p| p.extension().is_some_and(|e| e == "wasm"));
    plugins.sort();
    if plugins.is_empty() {
        println!(
            "plugin load: skipped (no plugins in {}: run `make plugins`)",
            dir.display()
        );
        return;
    }
    for path in plugins {
        let cache = tempfile::tempdir().unwrap();
        let opts = || HostOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            max_memory: None,
        };
        // Find the plugin's world with a host that caches nothing.
        let probe = PluginHost::new().unwrap();
        let world = if probe.load_world(&path, World::HealthCheck, None).is_ok() {
            World::HealthCheck
        } else {
            World::RollbackHook
        };
        let cold_host = PluginHost::with_options(opts()).unwrap();
        let t = Instant::now();
        let p = cold_host.load_world(&path, world, None).unwrap();
        let cold = t.elapsed();
        assert!(!p.from_cache());
        let warm_host = PluginHost::with_options(opts()).unwrap();
        let t = Instant::now();
        let p = warm_host.load_world(&path, world, None).unwrap();
        let warm = t.elapsed();
        assert!(p.from_cache());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        report(&format!("load {name} (warm)"), warm, cold, "cold (compile)");
    }
}

/// Bytes of the regular files and directories under `dir` whose inodes
/// are not in `shared` (what `dir` added on disk), and its inodes.
fn added_bytes(dir: &Path, shared: &std::collections::HashSet<u64>) -> (u64, Vec<u64>) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0, Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            inodes.push(m.ino());
            if !shared.contains(&m.ino()) {
                bytes += m.blocks() * 512;
            }
        }
    }
    (bytes, inodes)
}

fn sh(script: &str) {
    let ok = std::process::Command::new("sh")
        .args(["-c", script])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{script}");
}

fn deploy_tree() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (mib, files) = (
        env("BENCH_TREE_MIB", 520),
        env("BENCH_TREE_FILES", 10_000).max(1),
    );
    let per_file = (mib * 1024 * 1024 / files) as usize;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for i in 0..files {
        let sub = src.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&sub).unwrap();
        let mut body = vec![(i % 251) as u8; per_file];
        body[..8].copy_from_slice(&i.to_le_bytes());
        std::fs::write(sub.join(format!("f{i}")), body).unwrap();
    }
    // A build's output has settled by the time it is deployed: files changed
    // within the last 2 s are never trusted from metadata alone.
    std::thread::sleep(Duration::from_millis(2100));
    let changed = src.join("d000/f0");
    let limits = rollback_agent::release::StageLimits {
        link_unchanged: true,
        ..Default::default()
    };
    let (mut ours_first, mut ours_next, mut cp_first, mut cp_next) =
        (vec![], vec![], vec![], vec![]);
    let (mut ours_disk, mut cp_disk) = (0, 0);
    for round in 0..3u8 {
        std::fs::write(&changed, vec![round; per_file]).unwrap();
        sh("sync");
        let root = dir.path().join("app");
        let app = AppDir::new(&root);
        let (v1, v2) = (Version::parse("1").unwrap(), Version::parse("2").unwrap());
        let t = Instant::now();
        app.stage(&src, &v1, &limits).unwrap();
        ours_first.push(t.elapsed());
        app.activate(&v1).unwrap();
        std::fs::write(&changed, vec![round + 100; per_file]).unwrap();
        sh("sync");
        let t = Instant::now();
        app.stage(&src, &v2, &limits).unwrap();
        ours_next.push(t.elapsed());
        let (_, old) = added_bytes(&app.release_path(&v1), &Default::default());
        ours_disk = added_bytes(&app.release_path(&v2), &old.into_iter().collect()).0;
        std::fs::remove_dir_all(&root).unwrap();

        let base = dir.path().join("cp");
        std::fs::create_dir_all(&base).unwrap();
        let (s, b) = (src.display(), base.display());
        let t = Instant::now();
        sh(&format!("cp -a {s} {b}/1 && sync"));
        cp_first.push(t.elapsed());
        let t = Instant::now();
        sh(&format!(
            "cp -al {b}/1 {b}/2 && rm {b}/2/d000/f0 && cp -a {s}/d000/f0 {b}/2/d000/f0 && sync"
        ));
        cp_next.push(t.elapsed());
        let (_, old) = added_bytes(&base.join("1"), &Default::default());
        cp_disk = added_bytes(&base.join("2"), &old.into_iter().collect()).0;
        std::fs::remove_dir_all(&base).unwrap();
    }
    let label = format!("{mib} MiB / {files} files");
    report(
        &format!("deploy, first ({label})"),
        median(ours_first),
        median(cp_first),
        "cp -a + sync",
    );
    report(
        "deploy, 1 file changed",
        median(ours_next),
        median(cp_next),
        "cp -al + file + sync",
    );
    println!(
        "{:<30} {:>10.1} KiB added   cp -al + file: {:>10.1} KiB added",
        "deploy disk, 1 file changed",
        ours_disk as f64 / 1024.0,
        cp_disk as f64 / 1024.0
    );
}

fn main() {
    deploy_tree();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    activation();
    trivial_call(&rt);
    plugin_check(&rt);
    cache_load();
}
