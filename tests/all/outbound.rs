//! Outbound HTTP a guest cannot bend, through real plugins and servers on
//! 127.0.0.1: the host owns `Host` and the framing, credentials do not
//! follow a redirect to another origin, and names allow https only unless
//! the rule says `http://`.

use std::sync::{Arc, Mutex};

use crate::support::*;

/// A server that records each request's headers and answers `reply`.
fn recorder(
    reply: impl Fn(&HttpRequest) -> HttpReply + Send + Sync + 'static,
) -> (u16, Arc<Mutex<Vec<HttpRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let port = http_server(move |req| {
        log.lock().unwrap().push(req.clone());
        reply(req)
    });
    (port, seen)
}

/// An app `shop` without checks whose `webhook-notify` hook posts to `url`
/// on every activation, with `extra` TOML lines in the hook's entry.
fn hook_config(url: &str, allow: &[u16], extra: &str) -> String {
    let hosts: Vec<String> = allow.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[apps.shop]\nroot = \"{{dir}}/shop\"\nbake = \"100ms\"\n\n\
         [[apps.shop.hooks]]\nplugin = \"{}\"\non = [\"activated\"]\n\
         allow_hosts = [{}]\n{extra}\n",
        plugin("webhook-notify").display(),
        hosts.join(", "),
    )
    .replace("URL", url)
}

fn hook_events(agent: &Agent) -> Vec<serde_json::Value> {
    agent.json(&["history", "shop", "--limit", "100"])["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "hook-ran" || e["kind"] == "hook-failed")
        .cloned()
        .collect()
}

#[test]
fn a_guest_cannot_set_host_or_framing_headers() {
    let (port, seen) = recorder(|_| HttpReply::new(200, "ok"));
    let config = hook_config(
        "URL",
        &[port],
        "config = { url = \"URL\", headers = \"Host: admin.internal\" }",
    );
    let agent = Agent::start(&config.replace("URL", &format!("http://127.0.0.1:{port}/hook")));
    let out = agent.deploy(example_release("1.0.0").to_str().unwrap(), "1.0.0", true);
    assert_eq!(out.code, 0, "{out:?}");
    let events = wait_for(
        "the hook's outcome",
        std::time::Duration::from_secs(20),
        || {
            let e = hook_events(&agent);
            (!e.is_empty()).then_some(e)
        },
    );
    assert_eq!(events[0]["kind"], "hook-failed", "{events:?}");
    let reason = events[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("`Host`"),
        "the refusal names the header: {reason}"
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
}

#[test]
fn credentials_do_not_follow_a_redirect_to_another_origin() {
    let (elsewhere, landed) = recorder(|_| HttpReply::new(200, "ok"));
    let (same, same_seen) = recorder(move |req| {
        if req.path_only() == "/away" {
            HttpReply::new(307, "").header("location", &format!("http://127.0.0.1:{elsewhere}/in"))
        } else if req.path_only() == "/here" {
            HttpReply::new(307, "").header("location", "/stay")
        } else {
            HttpReply::new(200, "ok")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token").unwrap();
    let extra = format!(
        "config = {{ url = \"URL\", headers = \"Referer: https://shop.example/admin\" }}\n\
         secrets = {{ token = \"file:{}\" }}",
        token.display()
    );
    for (path, target) in [("/here", "same"), ("/away", "elsewhere")] {
        let url = format!("http://127.0.0.1:{same}{path}");
        let config = hook_config(&url, &[same, elsewhere], &extra);
        let sub = tempfile::tempdir().unwrap();
        let agent = Agent::start_in(sub, &config);
        let out = agent.deploy(example_release("1.0.0").to_str().unwrap(), "1.0.0", true);
        assert_eq!(out.code, 0, "{out:?}");
        let seen = if target == "same" {
            &same_seen
        } else {
            &landed
        };
        let want = if target == "same" { "/stay" } else { "/in" };
        let req = wait_for(
            "the redirected request",
            std::time::Duration::from_secs(20),
            || {
                seen.lock()
                    .unwrap()
                    .iter()
                    .find(|r| r.path_only() == want)
                    .cloned()
            },
        );
        if target == "same" {
            assert_eq!(req.header("authorization"), Some("Bearer s3cret-token"));
            assert!(req.header("referer").is_some());
        } else {
            assert_eq!(req.header("authorization"), None, "{req:?}");
            assert_eq!(req.header("referer"), None, "{req:?}");
        }
        assert_eq!(req.method, "POST", "307 keeps the method");
    }
}

#[test]
fn plain_http_needs_an_ip_a_loopback_name_or_an_http_rule() {
    let port = http_server(|_| HttpReply::new(200, "{}"));
    let url = format!("http://127.0.0.1:{port}/health");
    let run = |rule: &str| {
        plugin_test(
            "http-probe",
            &[rule.to_string()],
            &[("url", url.as_str())],
            &[],
            &[],
        )
    };
    let out = run(&format!("127.0.0.1:{port}"));
    assert_eq!(out.code, 0, "an IP literal allows both schemes: {out:?}");
    let out = run(&format!("http://127.0.0.1:{port}"));
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(&format!("https://127.0.0.1:{port}"));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("https only") || out.stderr.contains("https only"),
        "{out:?}"
    );
}

/// `openssl s_server -www` on 127.0.0.1 with a certificate for that
/// address, signed by a fresh test CA (`ca`); killed on drop.
struct TlsServer {
    child: std::process::Child,
    port: u16,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs `openssl ARGS` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let done = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (Debian's openssl package)");
    assert!(done.success(), "openssl {args:?}");
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_args = ["req", "-x509", "-days", "2", "-subj", "/CN=test CA"];
        let ca_out = ["-keyout", "ca.key", "-out", "ca.pem"];
        openssl(d, &[&ca_args[..], &ec, &ca_out].concat());
        let csr = [
            "req",
            "-new",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "csr.pem",
        ];
        openssl(d, &[&csr[..], &ec].concat());
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "csr.pem",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "cert.pem",
            ],
        );
        let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
        let port = free_port();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-www", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until("s_server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        TlsServer {
            child,
            port,
            ca: dir.path().join("ca.pem"),
            _dir: dir,
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_is_verified_against_the_system_roots() {
    let server = TlsServer::start();
    let url = format!("https://127.0.0.1:{}/", server.port);
    let hosts = [format!("127.0.0.1:{}", server.port)];
    let run = |env: &[(&str, &str)]| {
        plugin_test_with_env(
            "http-probe",
            &hosts,
            &[("url", url.as_str())],
            &[],
            &[],
            env,
        )
    };
    // A certificate no root vouches for: the request never happens.
    let out = run(&[]);
    assert_ne!(
        out.code, 0,
        "an untrusted certificate was accepted: {out:?}"
    );
    let text = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(text.contains("certificate"), "{out:?}");
    // The same server once its CA is a root (SSL_CERT_FILE names the
    // system's roots): the check passes over TLS.
    let ca = server.ca.display().to_string();
    let out = run(&[("SSL_CERT_FILE", ca.as_str())]);
    assert_eq!(out.code, 0, "{out:?}");
}
