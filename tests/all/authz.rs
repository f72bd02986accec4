//! Authorisation from the socket's peer credentials, with real users.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use crate::support::*;

/// Users and groups made for one test, removed on drop.
pub struct Accounts {
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

impl Accounts {
    fn run(args: &[&str]) {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn group(&mut self, name: &str) {
        Self::run(&["groupadd", name]);
        self.groups.push(name.into());
    }

    pub fn user(&mut self, name: &str, groups: &[&str]) {
        let mut args = vec!["useradd", "-M", "-s", "/usr/sbin/nologin"];
        let list = groups.join(",");
        if !groups.is_empty() {
            args.extend(["-G", &list]);
        }
        args.push(name);
        Self::run(&args);
        self.users.push(name.into());
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = Command::new("userdel").arg(u).output();
        }
        for g in &self.groups {
            let _ = Command::new("groupdel").arg(g).output();
        }
    }
}

pub fn as_user(user: &str, socket: &std::path::Path, args: &[&str]) -> Ctl {
    let out = Command::new("runuser")
        .args(["-u", user, "--", ROLLBACKCTL, "--socket"])
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn admins_change_readers_read_and_others_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("authz test needs root to create users; skipped");
        return;
    }
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let (readers, admins) = (format!("rbr{tag}"), format!("rba{tag}"));
    let (reader, admin, stranger) = (
        format!("rbu{tag}"),
        format!("rbw{tag}"),
        format!("rbn{tag}"),
    );
    let mut acc = Accounts {
        users: vec![],
        groups: vec![],
    };
    acc.group(&readers);
    acc.group(&admins);
    acc.user(&reader, &[&readers]);
    // Admins must reach the socket too: the socket belongs to socket_group.
    acc.user(&admin, &[&readers, &admins]);
    acc.user(&stranger, &[]);

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("shop");
    let app = FakeApp::start(&root);
    let mut agent = Agent::start_in(dir, &shop_config(app.port, "300ms", ""));
    let text = std::fs::read_to_string(&agent.config).unwrap().replacen(
        "[agent]\n",
        &format!("[agent]\nadmin_group = \"{admins}\"\nsocket_group = \"{readers}\"\n"),
        1,
    );
    std::fs::write(&agent.config, text).unwrap();
    agent.stop();
    agent.spawn();

    let meta = std::fs::metadata(&agent.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    let gid = nix::unistd::Group::from_name(&readers)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert_eq!(meta.gid(), gid, "the socket belongs to socket_group");

    let release = example_release("1.0.0");
    let release = release.to_str().unwrap();
    let out = as_user(&reader, &agent.socket, &["status", "--json"]);
    assert_eq!(out.code, 0, "readers read: {out:?}");
    let out = as_user(
        &reader,
        &agent.socket,
        &["deploy", "shop", release, "--version", "1.0.0"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("PermissionDenied") && out.stderr.contains(&reader),
        "{}",
        out.stderr
    );
    assert!(!root.join("releases/1.0.0").exists(), "nothing changed");

    let out = as_user(
        &admin,
        &agent.socket,
        &["deploy", "shop", release, "--version", "1.0.0", "--wait"],
    );
    assert_eq!(out.code, 0, "admins deploy: {out:?}");
    let staged = agent.json(&["history", "shop"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "staged")
        .cloned()
        .unwrap();
    assert_eq!(
        staged["actor"]["name"],
        admin.as_str(),
        "the event names the user"
    );
    let uid = nix::unistd::User::from_name(&admin)
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert_eq!(staged["actor"]["uid"], uid);

    // A source the admin cannot read stays unreadable: rollbackctl opens it
    // with the caller's rights and the agent reads only what it is passed.
    let secret = agent.path().join("secret-src");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("release.json"), "{\"health\": 200}").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = as_user(
        &admin,
        &agent.socket,
        &[
            "deploy",
            "shop",
            secret.to_str().unwrap(),
            "--version",
            "6.6.6",
        ],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("cannot open the source") && out.stderr.contains("ermission denied"),
        "{}",
        out.stderr
    );
    assert!(!root.join("releases/6.6.6").exists(), "nothing was read");
    // A plain Varlink client naming a path is refused: it would be read
    // with the agent's rights.
    let call = format!(
        "{{\"method\":\"io.rollback.Agent.Deploy\",\"parameters\":{{\"app\":\"shop\",\"source\":\"{}\",\"version\":\"6.6.7\"}}}}",
        secret.display()
    );
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(sys.argv[2].encode()+b'\\0')\nprint(s.recv(65536).decode(errors='replace'))";
    let raw = Command::new("runuser")
        .args(["-u", &admin, "--", "python3", "-c", script])
        .arg(&agent.socket)
        .arg(&call)
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&raw.stdout);
    assert!(
        reply.contains("PermissionDenied") && reply.contains("descriptor"),
        "{reply} {}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert!(!root.join("releases/6.6.7").exists(), "nothing was read");

    let out = as_user(&stranger, &agent.socket, &["status"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("ermission denied"), "{}", out.stderr);

    // A group that does not exist stops the agent with a clear error.
    let text = std::fs::read_to_string(&agent.config)
        .unwrap()
        .replace(&readers, "no-such-group-x");
    std::fs::write(&agent.config, text).unwrap();
    agent.stop();
    let out = Command::new(ROLLBACKD)
        .arg("--config")
        .arg(&agent.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("group `no-such-group-x` does not exist"));
}
