//! Running an app's `restart` command after an activation.
//!
//! Owns spawning the configured argv (no shell), with the app root as working
//! directory, `ROLLBACK_APP`, `ROLLBACK_VERSION` and `ROLLBACK_ROOT` in its
//! environment, no stdin, a timeout after which the process is killed, and the
//! tail of its output kept for the error message.
//!
//! Must never decide what a failure means (the supervisor does) and never
//! leave a child running past its timeout.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

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

/// Runs `argv` for `app` at `version`; Ok when it exits 0 within `timeout`.
pub async fn run(
    argv: &[String],
    app: &str,
    version: &str,
    root: &Path,
    timeout: Duration,
) -> Result<(), RestartError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut child = tokio::process::Command::new(&program)
        .args(&argv[1..])
        .current_dir(root)
        .env("ROLLBACK_APP", app)
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
            "shop",
            "1.2.3",
            dir.path(),
            t,
        )
        .await
        .unwrap();
        let err = run(
            &argv(&["sh", "-c", "echo boom >&2; exit 4"]),
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
            "shop",
            "1",
            dir.path(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RestartError::Timeout { .. }), "{err}");
        let err = run(&argv(&["/nonexistent/restart"]), "shop", "1", dir.path(), t)
            .await
            .unwrap_err();
        assert!(matches!(err, RestartError::Spawn { .. }), "{err}");
    }
}
