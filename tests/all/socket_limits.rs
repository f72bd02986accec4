//! The control socket cannot be exhausted: a cap on connections (the next
//! one is told so and closed), a deadline for an incomplete message, and a
//! budget for the bytes all incomplete messages hold; meanwhile the app's
//! checks keep running. Bounded: a few hundred connections, about 15 s.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// What the agent sends before it closes `s` (15 s at most).
fn reply_of(s: &mut UnixStream) -> String {
    read_reply(s, Duration::from_secs(15))
}

#[test]
fn floods_of_connections_and_slow_messages_are_bounded_and_checks_go_on() {
    // The test holds a few hundred sockets of its own.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);

    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let port = http_server(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        HttpReply::new(200, "ok")
    });
    let agent = Agent::process_in(tempfile::tempdir().unwrap(), &shop_config(port, "1h", ""));
    let out = agent.deploy(example_release("1.0.0").to_str().unwrap(), "1.0.0", false);
    assert_eq!(out.code, 0, "{out:?}");

    // An unterminated message: an error once its deadline (10 s) passes.
    let mut slow = UnixStream::connect(&agent.socket).unwrap();
    slow.write_all(b"{\"method\":").unwrap();

    // More connections than the cap (256, one of them `slow`): the extra
    // ones are told so and closed, the others stay open.
    const TRIED: usize = 300;
    let conns: Vec<UnixStream> = (0..TRIED)
        .map(|_| {
            let s = UnixStream::connect(&agent.socket).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut answered: Vec<Option<String>> = vec![None; TRIED];
    let refusals = TRIED - (256 - 1);
    wait_for(
        "the connections over the cap to be refused",
        Duration::from_secs(15),
        || {
            for (i, mut s) in conns.iter().enumerate() {
                if answered[i].is_none() {
                    let mut buf = [0u8; 4096];
                    match s.read(&mut buf) {
                        Ok(n) => {
                            answered[i] = Some(String::from_utf8_lossy(&buf[..n]).into_owned())
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => answered[i] = Some(e.to_string()),
                    }
                }
            }
            (answered.iter().flatten().count() >= refusals).then_some(())
        },
    );
    let refused: Vec<&String> = answered.iter().flatten().collect();
    assert_eq!(refused.len(), refusals, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r.contains("io.rollback.Agent.TooManyConnections")),
        "{refused:?}"
    );
    let mut idle: Vec<UnixStream> = conns
        .into_iter()
        .zip(&answered)
        .filter(|(_, a)| a.is_none())
        .map(|(s, _)| s)
        .collect();

    // The app's check goes on meanwhile (it needs descriptors too).
    let before = hits.load(Ordering::SeqCst);
    wait_until("three more check runs during the flood", || {
        hits.load(Ordering::SeqCst) >= before + 3
    });

    // Closed connections free their slots.
    idle.truncate(idle.len() - 20);
    wait_until("status to answer again", || {
        agent.ctl(&["status"]).code == 0
    });
    drop(idle);

    // Connections that each hold an unterminated 1 MiB-ish message share
    // one budget: past it, the next is refused, and memory stays bounded.
    let chunk = vec![b' '; 1000 * 1000];
    let mut holders = Vec::new();
    let mut over_budget = String::new();
    for _ in 0..100 {
        let mut s = UnixStream::connect(&agent.socket).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        if s.write_all(&chunk).is_err() {
            over_budget = reply_of(&mut s);
            break;
        }
        holders.push(s);
    }
    if over_budget.is_empty() {
        // The agent read every byte it was sent; the last ones were refused.
        for s in holders.iter_mut().rev().take(40) {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut byte = [0u8; 1];
            if let Ok(1) = s.read(&mut byte) {
                over_budget = reply_of(s);
                break;
            }
        }
    }
    assert!(
        over_budget.contains("too many incomplete messages"),
        "no connection was refused for the budget: {over_budget:?}"
    );
    drop(holders);
    wait_until("status after the budget flood", || {
        agent.ctl(&["status"]).code == 0
    });

    let timed_out = reply_of(&mut slow);
    assert!(timed_out.contains("not complete within 10s"), "{timed_out}");
    let status = agent.json(&["status", "shop"]);
    assert_eq!(status["state"], "baking", "{status}");
    assert!(!agent.log().contains("panicked"));
}
