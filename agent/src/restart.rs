//! Running an app's `restart` command after an activation.
//!
//! Owns spawning the configured argv (no shell), with the app root as working
//! directory, a clean environment (`PATH`, `LANG`, `ROLLBACK_APP`,
//! `ROLLBACK_VERSION`, `ROLLBACK_ROOT` and what the app's `restart_env`
//! names), no stdin, a timeout after which the process is killed, and the
//! tail of its output kept for the error message.
//!
//! Must never decide what a failure means (the supervisor does), never pass
//! on the agent's own environment (it holds secrets) and never leave a child
//! running past its timeout.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::config::EnvVar;

/// `PATH` when the agent itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How much of the command's output is kept for an error message.
const OUTPUT_TAIL: usize = 512;

/// Why a restart command failed.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// The program could not be started.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// argv\[0].
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It exited non-zero (or by a signal).
    #[error("`{program}` exited with {status}{}", tail_suffix(.output))]
    Failed {
        /// argv\[0].
        program: String,
        /// The exit status.
        status: std::process::ExitStatus,
        /// The end of its combined output.
        output: String,
    },
    /// It ran past its timeout and was killed.
    #[error("`{program}` did not finish within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// argv\[0].
        program: String,
        /// The limit.
        timeout: Duration,
    },
}

fn tail_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text.len().saturating_sub(OUTPUT_TAIL);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].replace('\n', " | ")
}

/// The environment of a restart command: `PATH` and `LANG` (the agent's, or
/// defaults), then `extra` (passed through from `own`, the agent's
/// environment, or set), then the `ROLLBACK_*` variables.
pub fn environment(
    own: impl Fn(&str) -> Option<String>,
    extra: &[EnvVar],
    app: &str,
    version: &str,
    root: &Path,
) -> Vec<(String, String)> {
    let mut env = vec![(
        "PATH".to_string(),
        own("PATH").unwrap_or_else(|| DEFAULT_PATH.to_string()),
    )];
    env.extend(own("LANG").map(|v| ("LANG".to_string(), v)));
    for var in extra {
        match var {
            EnvVar::Pass(name) => env.extend(own(name).map(|v| (name.clone(), v))),
            EnvVar::Set(name, value) => env.push((name.clone(), value.clone())),
        }
    }
    env.extend([
        ("ROLLBACK_APP".to_string(), app.to_string()),
        ("ROLLBACK_VERSION".to_string(), version.to_string()),
        ("ROLLBACK_ROOT".to_string(), root.display().to_string()),
    ]);
    env
}

/// Runs `argv` for `app` at `version` in `environment(.., extra, ..)`; Ok
/// when it exits 0 within `timeout`.
pub async fn run(
    argv: &[String],
    extra: &[EnvVar],
    app: &str,
    version: &str,
    root: &Path,
    timeout: Duration,
) -> Result<(), RestartError> {
    let program = argv.first().cloned().unwrap_or_default();
    let own = |name: &str| std::env::var(name).ok();
    let mut child = tokio::process::Command::new(&program)
        .args(&argv[1..])
        .current_dir(root)
        .env_clear()
        .envs(environment(own, extra, app, version, root))
        .env("ROLLBACK_VERSION", version)
        .env("ROLLBACK_ROOT", root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RestartError::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let wait = async {
        // Drain both pipes while waiting so a chatty command cannot block on a full pipe.
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        let (status, _, _) = tokio::join!(child.wait(), read_out, read_err);
        out.extend_from_slice(&err);
        (status, out)
    };
    match tokio::time::timeout(timeout, wait).await {
        Err(_) => Err(RestartError::Timeout { program, timeout }),
        Ok((Err(source), _)) => Err(RestartError::Spawn { program, source }),
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), output)) => Err(RestartError::Failed {
            program,
            status,
            output: tail(&output),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn success_failure_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(10);
        run(
            &argv(&[
                "sh",
                "-c",
                "test \"$ROLLBACK_VERSION\" = 1.2.3 && test \"$ROLLBACK_APP\" = shop",
            ]),
            &[],
            "shop",
            "1.2.3",
            dir.path(),
            t,
        )
        .await
        .unwrap();
        let err = run(
            &argv(&["sh", "-c", "echo boom >&2; exit 4"]),
            &[],
            "shop",
            "1",
            dir.path(),
            t,
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("boom") && text.contains('4'), "{text}");
        let err = run(
            &argv(&["sleep", "30"]),
            &[],
            "shop",
            "1",
            dir.path(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RestartError::Timeout { .. }), "{err}");
        let err = run(
            &argv(&["/nonexistent/restart"]),
            &[],
            "shop",
            "1",
            dir.path(),
            t,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RestartError::Spawn { .. }), "{err}");
    }

    #[test]
    fn the_environment_is_clean_but_for_what_is_listed() {
        let own = |name: &str| match name {
            "PATH" => Some("/bin".to_string()),
            "HOME" => Some("/root".to_string()),
            "SHOP_TOKEN" => Some("hunter2".to_string()),
            _ => None,
        };
        let extra = [
            EnvVar::Pass("HOME".into()),
            EnvVar::Pass("UNSET".into()),
            EnvVar::Set("NODE_ENV".into(), "production".into()),
        ];
        let env = environment(own, &extra, "shop", "1.2", Path::new("/srv/shop"));
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "NODE_ENV",
                "ROLLBACK_APP",
                "ROLLBACK_VERSION",
                "ROLLBACK_ROOT"
            ]
        );
        assert!(env.iter().all(|(_, v)| v != "hunter2"), "{env:?}");
        let bare = environment(|_| None, &[], "shop", "1", Path::new("/srv"));
        assert_eq!(bare[0], ("PATH".to_string(), DEFAULT_PATH.to_string()));
    }

    #[tokio::test]
    async fn the_command_sees_only_that_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env.txt");
        let script = format!("env > {}", out.display());
        run(
            &argv(&["sh", "-c", &script]),
            &[EnvVar::Set("NODE_ENV".into(), "production".into())],
            "shop",
            "1.2.3",
            dir.path(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let text = std::fs::read_to_string(out).unwrap();
        assert!(text.contains("NODE_ENV=production"), "{text}");
        assert!(text.contains("ROLLBACK_VERSION=1.2.3"), "{text}");
        // The test runner's own variables (CARGO_*, RUST_*) are not passed on.
        assert!(!text.contains("CARGO_"), "{text}");
    }
}
