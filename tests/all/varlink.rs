//! The wire format, proven with an independent Varlink client (the `varlink`
//! package from PyPI, installed by `make varlink-client`).

use std::process::Command;

use crate::support::*;

const CLIENT: &str = r#"
import json, sys, threading, time, varlink
sock, app = sys.argv[1], sys.argv[2]
with varlink.Client(address="unix:" + sock) as client:
    info = client.get_interfaces()
    with client.open("io.rollback.Agent", namespaced=False) as agent:
        out = {
            "interfaces": sorted(info),
            "status": agent.Status(app=app),
            "history": agent.History(app=app, limit=5),
        }
        try:
            agent.Releases(app="no-such-app")
        except varlink.VarlinkError as e:
            out["error"] = e.error()
    # Streaming (`more`): Watch on one connection while another pauses and
    # resumes the app until the watch has seen it.
    done = threading.Event()
    def steer():
        with client.open("io.rollback.Agent", namespaced=False) as agent:
            for _ in range(50):
                if done.is_set():
                    return
                agent.Pause(app=app)
                agent.Resume(app=app)
                time.sleep(0.2)
    threading.Thread(target=steer, daemon=True).start()
    with client.open("io.rollback.Agent", namespaced=False) as watcher:
        seen = []
        for reply in watcher.Watch(app=app, _more=True):
            seen.append(reply["event"]["kind"])
            if "resumed" in seen:
                break
        done.set()
        out["watched"] = seen
    print(json.dumps(out))
"#;

#[test]
fn an_independent_varlink_client_speaks_to_the_agent() {
    let python = repo().join("target/python-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make varlink-client`",
        python.display()
    );
    let agent = Agent::start("[apps.shop]\nroot = \"{dir}/shop\"\n");
    let out = Command::new(&python)
        .args(["-c", CLIENT])
        .arg(&agent.socket)
        .arg("shop")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The client parsed our interface description to build its proxy.
    let interfaces = v["interfaces"].to_string();
    assert!(
        interfaces.contains("io.rollback.Agent") && interfaces.contains("org.varlink.service"),
        "{v}"
    );
    assert_eq!(v["status"]["apps"][0]["app"], "shop");
    assert_eq!(v["status"]["apps"][0]["state"], "empty");
    assert_eq!(v["history"]["events"][0]["kind"], "agent-started");
    assert_eq!(v["error"], "io.rollback.Agent.NoSuchApp");
    let watched = v["watched"].to_string();
    assert!(watched.contains("\"resumed\""), "{v}");

    // GetInterfaceDescription serves the file shipped in docs/.
    let reply = raw_call(
        &agent.socket,
        b"{\"method\":\"org.varlink.service.GetInterfaceDescription\",\"parameters\":{\"interface\":\"io.rollback.Agent\"}}\0",
    );
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let shipped = std::fs::read_to_string(repo().join("docs/io.rollback.Agent.varlink")).unwrap();
    assert_eq!(v["parameters"]["description"], shipped.as_str());
    let reply = raw_call(
        &agent.socket,
        b"{\"method\":\"org.varlink.service.GetInfo\"}\0",
    );
    assert!(reply.contains("\"product\":\"rollbackd\""), "{reply}");
}
