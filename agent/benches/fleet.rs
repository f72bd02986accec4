//! The fleet at scale: many simulated hosts against a real 3-member etcd
//! cluster on 127.0.0.1, coordinated by the agent's own coordinator.
//!
//! Each simulated host holds a lease (kept alive at a third of its TTL),
//! publishes its record and its app's status under it, and answers its
//! assignments as a member does: the same claim transaction, then the
//! statuses a real host writes (claimed, baking, good), at once (a fake
//! local lifecycle). The coordinator runs on a thread of its own so that its
//! CPU time can be read apart. Printed per fleet size: etcd writes per host
//! per rollout, the time per wave against one bare read of the statuses (the
//! floor of a coordinator round, measured in the same run), the
//! coordinator's CPU and heap (its thread's allocations, counted by the
//! bench's allocator), what it reads per round, and the keep-alive load.
//!
//! `make bench` runs it; FLEET_BENCH_HOSTS (default 100,1000,5000) picks the
//! sizes.

#![allow(clippy::unwrap_used, missing_docs)]
// The counting allocator below implements `GlobalAlloc`.
#![allow(unsafe_code)]

// The bench uses part of the tests' cluster harness.
#[allow(dead_code)]
#[path = "../../tests/all/etcd.rs"]
mod etcd;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use rollback_agent::domain::AppState;
use rollback_agent::fleet::keys::Keys;
use rollback_agent::fleet::plan::{self, Assignment, HostApp, Outcome, Phase, Rollout};

/// The system allocator, counting what the coordinator's thread holds.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call goes to the system allocator unchanged; the counters
// only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && counted() {
            let now =
                LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed) + layout.size() as i64;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        if counted() {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const TTL: i64 = 15;
const WAVES: &str = "1,10%,50%,100%";

fn status(active: &str, good: &str, rollout: Option<&str>, outcome: Option<Outcome>) -> Vec<u8> {
    serde_json::to_vec(&HostApp {
        active: Some(active.into()),
        last_good: Some(good.into()),
        state: if outcome == Some(Outcome::Baking) {
            AppState::Baking
        } else {
            AppState::Healthy
        },
        reason: None,
        rollout: rollout.map(str::to_string),
        outcome,
        outcome_reason: None,
        digest: Some(format!("sha256:{}", "ab".repeat(32))),
    })
    .unwrap()
}

async fn revision(client: &mut Client) -> i64 {
    let (got, _) = retry("revision", || {
        let mut c = client.clone();
        async move { c.get("/", None).await }
    })
    .await;
    got.header().unwrap().revision()
}

/// An etcd call retried across a leader change or a dropped connection, as
/// a member retries; the count of failed tries comes back with the answer.
async fn retry<T, F, Fut>(what: &str, mut call: F) -> (T, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut failed = 0;
    loop {
        match call().await {
            Ok(v) => return (v, failed),
            Err(e) if failed < 50 => {
                failed += 1;
                if failed == 1 {
                    eprintln!("{what}: {e}; retrying");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// What a member does with its assignment: the claim, then the statuses
/// of a deploy that passes its bake at once.
async fn answer(c: Client, keys: Keys, kv: etcd_client::KeyValue) {
    let a: Assignment = serde_json::from_slice(kv.value()).unwrap();
    let host = kv
        .key_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let txn = rollback_agent::fleet::member::claim_txn(&keys, "shop", &host, &a, kv.value());
    let (claimed, failed) = retry("claim", || {
        let (mut c, txn) = (c.clone(), txn.clone());
        async move { c.txn(txn).await }
    })
    .await;
    // After a failed try the claim may have applied already; the retry then
    // sees its own claim and goes on.
    if !claimed.succeeded() && failed == 0 {
        return;
    }
    let key = keys.status(&host, "shop");
    let (record, _) = retry("host record", || {
        let (mut c, k) = (c.clone(), keys.host(&host));
        async move { c.get(k, None).await }
    })
    .await;
    let lease = record.kvs()[0].lease();
    for (active, good, outcome) in [
        ("1.0", "1.0", Outcome::Claimed),
        ("2.0", "1.0", Outcome::Baking),
        ("2.0", "2.0", Outcome::Good),
    ] {
        let value = status(active, good, Some(&a.rollout), Some(outcome));
        retry("status", || {
            let (mut c, k, v) = (c.clone(), key.clone(), value.clone());
            async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }
        })
        .await;
    }
}

/// A lease kept alive at a third of its TTL, the stream opened again after
/// a leader change; each acknowledged renewal is counted.
async fn keep_alive(c: Client, lease: i64, count: Arc<AtomicU64>) {
    loop {
        let (mut keeper, mut acks) = retry("keep-alive", || {
            let mut c = c.clone();
            async move { c.lease_keep_alive(lease).await }
        })
        .await
        .0;
        loop {
            tokio::time::sleep(Duration::from_secs(TTL as u64 / 3)).await;
            if keeper.keep_alive().await.is_err() || !matches!(acks.message().await, Ok(Some(_))) {
                break;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Thread CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

struct Figures {
    hosts: usize,
    rollout: Duration,
    waves: usize,
    bare_read: Duration,
    writes_per_host: f64,
    coordinator_cpu: Duration,
    coordinator_heap: usize,
    read_per_round: usize,
    keepalives_per_s: f64,
}

async fn one_size(urls: &[String], n: usize) -> Figures {
    let name = format!("bench-{n}-{}", std::process::id());
    let keys = Keys::new(&name);
    let mut client = Client::connect(urls, None).await.unwrap();

    // The hosts: a lease each, the record and the status under it.
    let leases: Vec<i64> = {
        let mut out = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
            let futs = chunk.iter().map(|i| {
                let (c, keys) = (client.clone(), keys.clone());
                async move {
                    let host = format!("h{i:05}");
                    let (grant, _) = retry("lease", || {
                        let mut c = c.clone();
                        async move { c.lease_grant(TTL, None).await }
                    })
                    .await;
                    let lease = grant.id();
                    let record = format!(
                        "{{\"host\":\"{host}\",\"labels\":{{}},\"agent\":\"bench\",\"since_ms\":0,\"apps\":[\"shop\"]}}"
                    );
                    for (k, v) in [
                        (keys.host(&host), record.into_bytes()),
                        (keys.status(&host, "shop"), status("1.0", "1.0", None, None)),
                    ] {
                        retry("host put", || {
                            let (mut c, k, v) = (c.clone(), k.clone(), v.clone());
                            async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }
                        })
                        .await;
                    }
                    lease
                }
            });
            out.extend(futures_util::future::join_all(futs).await);
        }
        out
    };
    let keepalives = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for lease in &leases {
        let (c, lease, count) = (client.clone(), *lease, keepalives.clone());
        tasks.push(tokio::spawn(keep_alive(c, lease, count)));
    }

    // The floor of a round: one bare linearizable read of every status.
    let mut reads = Vec::new();
    let mut read_bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let (got, _) = retry("bare read", || {
            let (mut c, k) = (client.clone(), keys.statuses());
            async move { c.get(k, Some(GetOptions::new().with_prefix())).await }
        })
        .await;
        reads.push(t.elapsed());
        read_bytes = got
            .kvs()
            .iter()
            .map(|kv| kv.key().len() + kv.value().len())
            .sum();
    }
    reads.sort();
    let bare_read = reads[reads.len() / 2];

    // The simulated hosts answer their assignments as members do.
    let (mut watch, _) = retry("watch", || {
        let (mut c, k) = (client.clone(), keys.assignments("shop"));
        async move { c.watch(k, Some(WatchOptions::new().with_prefix())).await }
    })
    .await;
    let sim = {
        let (c, keys) = (client.clone(), keys.clone());
        tokio::spawn(async move {
            while let Ok(Some(resp)) = watch.message().await {
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    if ev.event_type() != EventType::Put {
                        continue;
                    }
                    // Hosts act side by side, as real ones do.
                    tokio::spawn(answer(c.clone(), keys.clone(), kv.clone()));
                }
            }
        })
    };

    // The coordinator, on a thread of its own.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let coordinator = {
        let (urls, keys) = (urls.to_vec(), keys.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut c = Client::connect(&urls, None).await.unwrap();
                let lease = c.lease_grant(TTL, None).await.unwrap().id();
                let keeper = tokio::spawn(keep_alive(c.clone(), lease, Arc::default()));
                LIVE.store(0, Ordering::Relaxed);
                PEAK.store(0, Ordering::Relaxed);
                COUNTED.with(|c| c.set(true));
                let before = thread_cpu();
                let run =
                    rollback_agent::fleet::coordinator::run(keys, "coordinator".into(), c, lease);
                tokio::pin!(run);
                let mut stop = stop_rx;
                tokio::select! {
                    r = &mut run => panic!("the coordinator stopped: {r:?}"),
                    _ = &mut stop => {}
                }
                keeper.abort();
                let cpu = thread_cpu() - before;
                COUNTED.with(|c| c.set(false));
                (cpu, PEAK.load(Ordering::Relaxed).max(0) as usize)
            })
        })
    };

    // The rollout, as `fleet rollout` stores it.
    let rev0 = revision(&mut client).await;
    let waves: plan::Waves = WAVES.parse().unwrap();
    let spec = plan::Spec {
        id: format!("bench-{n}"),
        app: "shop".into(),
        version: "2.0".into(),
        digest: None,
        source: None,
        gates: vec![plan::Gate::Auto; waves.0.len()],
        waves,
        max_failed: plan::Share::Count(0),
        min_healthy: plan::Share::Count(0),
        bake_ms: 0,
        wave_deadline_ms: None,
        on_abort: plan::OnAbort::Rollback,
        started_by: "bench".into(),
        started_ms: rollback_agent::domain::now_ms(),
    };
    let rollout = Rollout {
        progress: plan::Progress::new(&spec),
        spec,
        intent: plan::Intent::default(),
    };
    let started = Instant::now();
    let k0 = keepalives.load(Ordering::Relaxed);
    let body = serde_json::to_vec(&rollout).unwrap();
    retry("start the rollout", || {
        let (mut c, k, v) = (client.clone(), keys.rollout("shop"), body.clone());
        async move { c.put(k, v, None).await }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let (got, _) = retry("rollout", || {
            let (mut c, k) = (client.clone(), keys.rollout("shop"));
            async move { c.get(k, None).await }
        })
        .await;
        let r: Rollout = serde_json::from_slice(got.kvs()[0].value()).unwrap();
        match r.progress.phase {
            Phase::Succeeded => break,
            Phase::Running => {}
            other => panic!(
                "the rollout of {n} hosts ended {other}: {:?}",
                r.progress.reason
            ),
        }
        assert!(
            Instant::now() < deadline,
            "the rollout of {n} hosts did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let k1 = keepalives.load(Ordering::Relaxed);
    // The coordinator's writes and the hosts' writes, the rollout's own excepted.
    let rev1 = revision(&mut client).await;
    stop_tx.send(()).unwrap();
    let (coordinator_cpu, coordinator_heap) = coordinator.join().unwrap();
    sim.abort();
    for t in tasks {
        t.abort();
    }
    for lease in leases {
        let _ = client.lease_revoke(lease).await;
    }
    retry("clean up", || {
        let (mut c, k) = (client.clone(), keys.all());
        async move {
            c.delete(k, Some(etcd_client::DeleteOptions::new().with_prefix()))
                .await
        }
    })
    .await;
    Figures {
        hosts: n,
        rollout: took,
        waves: 4,
        bare_read,
        writes_per_host: (rev1 - rev0 - 1) as f64 / n as f64,
        coordinator_cpu,
        coordinator_heap,
        read_per_round: read_bytes,
        keepalives_per_s: (k1 - k0) as f64 / took.as_secs_f64().max(1e-9),
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FLEET_BENCH_HOSTS")
        .unwrap_or_else(|_| "100,1000,5000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let cluster = etcd::Etcd::start();
    let urls = cluster.urls();
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!(
        "fleet rollout ({WAVES}, no bake, hosts answer at once) on a 3-member etcd on loopback"
    );
    for n in sizes {
        let f = rt.block_on(one_size(&urls, n));
        let per_wave = f.rollout / f.waves as u32;
        println!(
            "{:>5} hosts: {:>8.2?} a wave ({:.1}x one bare read of every status, {:.1?}); \
             {:.2} etcd writes per host; coordinator CPU {:.2?} ({:.0} us per host), \
             heap peak {} KiB ({:.1}x what it reads per round, {} KiB); \
             keep-alives {:.0}/s (one per host every {} s; {:.0}/s seen)",
            f.hosts,
            per_wave,
            per_wave.as_secs_f64() / f.bare_read.as_secs_f64(),
            f.bare_read,
            f.writes_per_host,
            f.coordinator_cpu,
            f.coordinator_cpu.as_secs_f64() * 1e6 / f.hosts as f64,
            f.coordinator_heap / 1024,
            f.coordinator_heap as f64 / f.read_per_round.max(1) as f64,
            f.read_per_round / 1024,
            f.hosts as f64 / (TTL as f64 / 3.0),
            TTL / 3,
            f.keepalives_per_s,
        );
    }
}
