//! The control socket: any bytes a client sends get error replies or
//! answers, on a real connection to a real `Control` (an empty agent over a
//! store in a temp dir), never a panic or a hang.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rollback_agent::control::{Authz, Control};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Agent {
    _tmp: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    control: Arc<Control>,
}

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let store = rollback_agent::store::Store::open(&tmp.path().join("db")).expect("a store");
        let authz = Authz::new(None, None).expect("no groups to look up");
        let control = Arc::new(Control::new(store, Default::default(), Vec::new(), authz));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Agent {
            _tmp: tmp,
            rt,
            control,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let a = agent();
    a.rt.block_on(async {
        let (mut client, server) = tokio::net::UnixStream::pair().expect("a socket pair");
        let control = a.control.clone();
        let served = tokio::spawn(async move { control.serve_stream(server).await });
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut replies = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut replies));
        assert!(read.await.is_ok(), "the agent did not finish answering");
        drop(client);
        assert!(served.await.is_ok(), "the connection task panicked");
    });
});
