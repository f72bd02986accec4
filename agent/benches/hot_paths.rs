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

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    activation();
    trivial_call(&rt);
    plugin_check(&rt);
    cache_load();
}
