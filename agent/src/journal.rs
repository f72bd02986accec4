//! The intent journal: one file per app, `<state_dir>/intents/<app>.json`,
//! holding the operation in progress and its remaining steps.
//!
//! Owns that directory. Every write reaches stable storage before it
//! returns (the file is fsynced, renamed over the old one, and the directory
//! fsynced), because crash recovery relies on it and the store's own flush
//! (`sync_file_range`) does not flush the device's write cache. Clearing is
//! not fsynced: a removal that a power loss undoes brings back a finished
//! operation, whose recovery finds its swap done (`current`) and at most
//! repeats its last journaled step, a restart of what `current` names. Kept apart
//! from the store so that a store that cannot be written does not stop a
//! rollback from being journaled.
//!
//! Must never decide anything: it keeps what it is given.

use std::io;
use std::path::{Path, PathBuf};

use crate::lifecycle::Intent;

/// Errors of the journal; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the file failed.
    #[error("intent journal {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file does not hold an intent.
    #[error("intent journal {}: not an intent: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The journals of every app.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journals under `<state_dir>/intents` (created on first write).
    pub fn new(state_dir: &Path) -> Self {
        Journal {
            dir: state_dir.join("intents"),
        }
    }

    fn path(&self, app: &str) -> PathBuf {
        self.dir.join(format!("{app}.json"))
    }

    /// The intent in progress for `app`, if any.
    pub fn load(&self, app: &str) -> Result<Option<Intent>, JournalError> {
        let path = self.path(app);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(JournalError::Io { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| JournalError::Corrupt { path, source })
    }

    /// Records `intent` durably, replacing the one before.
    pub fn save(&self, app: &str, intent: &Intent) -> Result<(), JournalError> {
        let path = self.path(app);
        let io_err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io_err)?;
        let bytes = serde_json::to_vec_pretty(intent).map_err(|e| io_err(io::Error::other(e)))?;
        crate::fsutil::write_durable(&path, &bytes).map_err(io_err)
    }

    /// Removes what a write of `app`'s journal cut short by a crash left
    /// (its temporary file); returns what it removed.
    pub fn clean(&self, app: &str) -> Vec<PathBuf> {
        crate::fsutil::remove_temps(&self.dir, &format!(".{app}.json."))
    }

    /// Ends the operation of `app` (nothing is in progress any more).
    pub fn clear(&self, app: &str) -> Result<(), JournalError> {
        let path = self.path(app);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(|source| JournalError::Io { path, source })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lifecycle::{Op, Step};

    #[test]
    fn save_load_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(tmp.path());
        assert!(j.load("shop").unwrap().is_none());
        j.clear("shop").unwrap();
        let mut i = Intent {
            op: Op::Deploy,
            from: None,
            to: Some("1.0.0".into()),
            why: "deploy".into(),
            actor: "root".into(),
            check: None,
            automatic: false,
            source: Some("/src".into()),
            steps: vec![Step::Stage, Step::Swap, Step::Restart],
            at_ms: 1,
            before: None,
            staged: false,
        };
        j.save("shop", &i).unwrap();
        assert_eq!(j.load("shop").unwrap().as_ref(), Some(&i));
        i.done(&Step::Swap);
        j.save("shop", &i).unwrap();
        assert_eq!(j.load("shop").unwrap().unwrap().steps, vec![Step::Restart]);
        assert!(j.load("other").unwrap().is_none(), "apps are apart");
        j.clear("shop").unwrap();
        assert!(j.load("shop").unwrap().is_none());
        // Nothing but the journal files themselves is left behind.
        assert_eq!(
            std::fs::read_dir(tmp.path().join("intents"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn clean_removes_only_the_apps_own_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(tmp.path());
        let dir = tmp.path().join("intents");
        std::fs::create_dir_all(&dir).unwrap();
        for name in [".shop.json.x1", ".other.json.x2", "shop.json"] {
            std::fs::write(dir.join(name), b"{}").unwrap();
        }
        assert_eq!(j.clean("shop"), vec![dir.join(".shop.json.x1")]);
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".other.json.x2", "shop.json"]);
    }

    #[test]
    fn a_damaged_journal_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(tmp.path());
        std::fs::create_dir_all(tmp.path().join("intents")).unwrap();
        std::fs::write(tmp.path().join("intents/shop.json"), b"{\"op\":").unwrap();
        assert!(matches!(j.load("shop"), Err(JournalError::Corrupt { .. })));
    }
}
