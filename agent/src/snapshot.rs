//! Snapshots of an application's state files, under `<state_dir>/snapshots/`.
//!
//! This module owns `<state_dir>/snapshots/<app>/<version>/`: copies of an app's
//! configured state files (`snapshot = [...]` in the config) taken before an
//! activation, so that a rollback to `<version>` can restore the data that
//! release expects. Each snapshot directory holds the copies, named
//! `<n>-<file name>`, and a `manifest.json` (original path -> stored name, size,
//! sha256, permission bits and owner, or `"absent": true`).
//!
//! Guarantees:
//! - a snapshot is built in a hidden temporary directory (`.tmp~<version>~<random>`),
//!   every file and directory fsynced, then renamed into place; an older snapshot
//!   of the same app and version is replaced atomically (`renameat2(RENAME_EXCHANGE)`
//!   where the filesystem has it), so `<version>/` is always either the old or the
//!   new complete snapshot;
//! - restoring verifies every stored copy against its sha256 before touching any
//!   live file, then replaces each live file atomically (temporary file in the same
//!   directory, fsync, `rename(2)` over it, fsync of the directory): a concurrent
//!   reader sees the old or the restored content, never a mix;
//! - app names and versions are validated ([`crate::config::valid_name`],
//!   [`Version::parse`]): they are names, never paths.
//!
//! What it must never do: touch releases, `current` or the store (callers drive
//! it), or write anywhere but under `<state_dir>/snapshots/` except the live state
//! files it restores. Calls for one app must not run concurrently (the app's
//! supervisor serialises them).

use crate::fsutil::{create_unique, is_real_dir, remove_tree, TempTree};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::release::{ReleaseError, Version};

/// Name of the manifest inside a snapshot directory.
const MANIFEST: &str = "manifest.json";
/// Format number written into manifests.
const FORMAT: u32 = 1;
/// Prefix of snapshot directories being built (`.tmp~<version>~<random>`);
/// `~` never occurs in a version, so prefixes of two versions never overlap.
const TMP_PREFIX: &str = ".tmp~";
/// Prefix of replaced or removed snapshot directories being deleted.
const OLD_PREFIX: &str = ".old~";
/// Longest file name written (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;
/// The snapshots of every app: `<state_dir>/snapshots`.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

/// One snapshot: which files it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// The app.
    pub app: String,
    /// The release version the snapshot belongs to.
    pub version: String,
    /// The files, in the order they were listed when the snapshot was taken.
    pub files: Vec<SnapshotFile>,
}

/// One state file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotFile {
    /// The live file's path (absolute).
    pub path: PathBuf,
    /// Its size when the snapshot was taken (0 if absent).
    pub bytes: u64,
    /// The sha256 of its content, lowercase hex (empty if absent).
    pub sha256: String,
    /// The file did not exist when the snapshot was taken. Restoring leaves such
    /// a file as it is: it is not created, and a live one is not deleted.
    pub absent: bool,
}

/// Errors of snapshot handling. Each names the app, version or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An app name was refused.
    #[error("invalid app name {app:?}: app names use A-Z a-z 0-9 . _ - (1 to 64, not starting with . or -)")]
    InvalidApp {
        /// The refused text.
        app: String,
    },
    /// A version was refused.
    #[error(transparent)]
    InvalidVersion(ReleaseError),
    /// A listed state file cannot be snapshotted (nothing was written).
    #[error("state file {}: {reason}", path.display())]
    Refused {
        /// The listed path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or replacing a live state file failed.
    #[error("cannot {op} state file {}: {source}", path.display())]
    File {
        /// What was being done ("copy", "write a temporary copy of", ...).
        op: &'static str,
        /// The live file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// There is no snapshot of this app and version.
    #[error("no snapshot of app {app} version {version} (no {})", dir.display())]
    NotFound {
        /// The app.
        app: String,
        /// The version.
        version: String,
        /// The directory that was expected.
        dir: PathBuf,
    },
    /// The snapshot is damaged (unreadable manifest, copy not matching its sha256).
    #[error("snapshot {} is corrupt: {reason}", dir.display())]
    Corrupt {
        /// The snapshot directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A filesystem operation under the snapshots directory failed.
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
}

/// A closure naming `op` and `path` in an `io::Error`, for `map_err`.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| crate::fsutil::IoError::new(op, path, source).into()
}

/// Builds a closure mapping an `io::Error` to [`SnapshotError::File`].
fn file_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::File {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The manifest of one snapshot, as stored in `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    app: String,
    version: String,
    taken_at_unix_ms: u64,
    files: Vec<Entry>,
}

/// One file in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// The live file's absolute path.
    path: PathBuf,
    /// The copy's name in the snapshot directory (`None` if absent).
    stored: Option<String>,
    bytes: u64,
    sha256: String,
    absent: bool,
    /// Permission bits (`0o7777`) of the live file.
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Manifest {
    fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            app: self.app.clone(),
            version: self.version.clone(),
            files: self
                .files
                .iter()
                .map(|e| SnapshotFile {
                    path: e.path.clone(),
                    bytes: e.bytes,
                    sha256: e.sha256.clone(),
                    absent: e.absent,
                })
                .collect(),
        }
    }
}

impl Snapshots {
    /// The snapshots kept under `<state_dir>/snapshots` (nothing is touched on disk).
    pub fn new(state_dir: &Path) -> Self {
        Snapshots {
            dir: state_dir.join("snapshots"),
        }
    }

    /// `<state_dir>/snapshots`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies each file (reflink when the filesystem supports it, else a byte
    /// copy) into `<dir>/<app>/<version>/<n>-<file name>` plus a manifest (JSON:
    /// original path -> stored name, size, sha256, mode, owner), every file and
    /// directory fsynced; written into a temporary directory, then renamed into
    /// place, replacing an older snapshot of the same app and version atomically.
    ///
    /// Each path must be absolute and name a regular file (a symlink is refused:
    /// list the file it points at) or nothing: a file that does not exist is
    /// recorded as `absent`, and restoring leaves it as it is then (it does not
    /// delete the live file). The size and sha256 are those of the stored copy.
    /// Errors name the file; on error nothing is left behind and an older
    /// snapshot of the same version is kept.
    pub fn take(
        &self,
        app: &str,
        version: &str,
        files: &[PathBuf],
    ) -> Result<SnapshotInfo, SnapshotError> {
        let (app, version) = validate(app, version)?;
        check_paths(files)?;
        let app_dir = self.dir.join(app);
        ensure_dir(&app_dir)?;
        clean_leftovers(&app_dir, version.as_str());
        let guard = TempTree::create(&app_dir, &format!("{TMP_PREFIX}{version}~"), 0o700)
            .map_err(io_err("create temporary snapshot directory in", &app_dir))?;
        let tmp = guard.path().to_path_buf();
        let built = (|| -> Result<Manifest, SnapshotError> {
            let mut entries = Vec::with_capacity(files.len());
            for (n, path) in files.iter().enumerate() {
                entries.push(copy_in(path, n, &tmp)?);
            }
            let manifest = Manifest {
                format: FORMAT,
                app: app.to_owned(),
                version: version.as_str().to_owned(),
                taken_at_unix_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                files: entries,
            };
            write_manifest(&tmp, &manifest)?;
            fsync_dir(&tmp)?;
            let target = app_dir.join(version.as_str());
            publish(&tmp, &target, &app_dir, version.as_str())?;
            Ok(manifest)
        })();
        // On error the guard removes the temporary directory; once published
        // it no longer exists (or holds the replaced snapshot, removed already).
        let manifest = built?;
        guard.keep();
        tracing::info!(app, version = %version, files = manifest.files.len(), "state files snapshotted");
        Ok(manifest.info())
    }

    /// Restores every file of the snapshot to its original path atomically (write
    /// a temporary file in the same directory, fsync, rename over, fsync the
    /// directory), verifying every sha256 first; returns what it restored.
    ///
    /// Files recorded as absent are left as they are (neither created nor
    /// deleted). A damaged snapshot is refused before any live file is touched.
    /// The restored files get their recorded permission bits and, where the agent
    /// may set it, their recorded owner. Files are replaced one by one, each
    /// atomically; if replacing one fails, those before it are already restored.
    pub fn restore(&self, app: &str, version: &str) -> Result<SnapshotInfo, SnapshotError> {
        let (app, version) = validate(app, version)?;
        let dir = self.dir.join(app).join(version.as_str());
        let manifest = read_manifest(&dir, app, version.as_str())?;
        // Verify everything before touching anything.
        for entry in &manifest.files {
            if let Some(stored) = &entry.stored {
                let p = dir.join(stored);
                let mut f = open_nofollow(&p).map_err(|e| SnapshotError::Corrupt {
                    dir: dir.clone(),
                    reason: format!(
                        "cannot open the copy {stored} of {}: {e}",
                        entry.path.display()
                    ),
                })?;
                check_digest(&dir, entry, &mut f)?;
            }
        }
        for entry in &manifest.files {
            if let Some(stored) = &entry.stored {
                restore_file(&dir, entry, &dir.join(stored))?;
            }
        }
        tracing::info!(app, version = %version, files = manifest.files.len(), "state files restored");
        Ok(manifest.info())
    }

    /// Whether a complete snapshot of `app` at `version` exists (false for
    /// invalid names).
    pub fn exists(&self, app: &str, version: &str) -> bool {
        let Ok((app, version)) = validate(app, version) else {
            return false;
        };
        let dir = self.dir.join(app).join(version.as_str());
        is_real_dir(&dir) && fs::symlink_metadata(dir.join(MANIFEST)).is_ok_and(|m| m.is_file())
    }

    /// Deletes the snapshot of `app` at `version` (moved to a hidden name first, so
    /// a half-deleted snapshot never looks complete). Removing a snapshot that does
    /// not exist is not an error.
    pub fn remove(&self, app: &str, version: &str) -> Result<(), SnapshotError> {
        let (app, version) = validate(app, version)?;
        let app_dir = self.dir.join(app);
        let dir = app_dir.join(version.as_str());
        match fs::symlink_metadata(&dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                clean_leftovers(&app_dir, version.as_str());
                return Ok(());
            }
            Err(e) => return Err(io_err("inspect", &dir)(e)),
        }
        let trash = create_unique(&app_dir, &format!("{OLD_PREFIX}{version}~"), |p| {
            if p.symlink_metadata().is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::rename(&dir, p)
        })
        .map_err(io_err("move away for removal", &dir))?;
        fsync_dir(&app_dir)?;
        remove_tree(&trash).map_err(io_err("remove", &trash))?;
        fsync_dir(&app_dir)?;
        tracing::info!(app, version = %version, "snapshot removed");
        Ok(())
    }

    /// Removes what interrupted work left for `app`: snapshot directories
    /// being built or deleted, snapshots of releases not in `releases` (a
    /// snapshot never outlives its release), and the temporary files of an
    /// interrupted restore beside each of the live `files`. Returns what it
    /// removed; best effort (what cannot be removed now is tried next time).
    pub fn clean(&self, app: &str, releases: &[String], files: &[PathBuf]) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        if crate::config::valid_name(app) {
            if let Ok(rd) = fs::read_dir(self.dir.join(app)) {
                for entry in rd.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let stale = name.starts_with(TMP_PREFIX)
                        || name.starts_with(OLD_PREFIX)
                        || (Version::parse(&name).is_ok() && !releases.contains(&name));
                    if stale && remove_tree(&entry.path()).is_ok() {
                        removed.push(entry.path());
                    }
                }
            }
        }
        for live in files {
            if let (Some(parent), Some(prefix)) = (live.parent(), restore_prefix(live)) {
                removed.extend(crate::fsutil::remove_temps(parent, &prefix));
            }
        }
        removed
    }

    /// The versions that have a complete snapshot of `app`, sorted by name.
    pub fn list(&self, app: &str) -> Result<Vec<String>, SnapshotError> {
        if !crate::config::valid_name(app) {
            return Err(SnapshotError::InvalidApp {
                app: app.to_owned(),
            });
        }
        let app_dir = self.dir.join(app);
        let rd = match fs::read_dir(&app_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read directory", &app_dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err("read directory", &app_dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if Version::parse(&name).is_ok() && self.exists(app, &name) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Validates an app name and a version.
fn validate<'a>(app: &'a str, version: &str) -> Result<(&'a str, Version), SnapshotError> {
    if !crate::config::valid_name(app) {
        return Err(SnapshotError::InvalidApp {
            app: app.to_owned(),
        });
    }
    let version = Version::parse(version).map_err(SnapshotError::InvalidVersion)?;
    Ok((app, version))
}

/// Refuses relative, non-UTF-8, nameless and duplicate paths before any work.
fn check_paths(files: &[PathBuf]) -> Result<(), SnapshotError> {
    let refuse = |path: &Path, reason: &str| SnapshotError::Refused {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let mut seen = HashSet::new();
    for path in files {
        if !path.is_absolute() {
            return Err(refuse(path, "the path is not absolute"));
        }
        if path.to_str().is_none() {
            return Err(refuse(path, "the path is not valid UTF-8"));
        }
        if path.file_name().is_none() {
            return Err(refuse(path, "the path does not end in a file name"));
        }
        if !seen.insert(path) {
            return Err(refuse(path, "it is listed twice"));
        }
    }
    Ok(())
}

/// Opens `p` for reading without following a final symlink (`ELOOP` then) and
/// without blocking on a fifo.
fn open_nofollow(p: &Path) -> io::Result<File> {
    use nix::fcntl::OFlag;
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(p)
}

/// `<n>-<file name>`, the file name shortened (at a character boundary) to fit
/// `NAME_MAX`.
fn stored_name(n: usize, path: &Path) -> String {
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("file");
    let prefix = format!("{n}-");
    let mut end = name.len().min(NAME_MAX - prefix.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{prefix}{}", &name[..end])
}

/// Copies the live file `path` into the snapshot directory `tmp` as entry `n`.
fn copy_in(path: &Path, n: usize, tmp: &Path) -> Result<Entry, SnapshotError> {
    let refuse = |reason: &str| SnapshotError::Refused {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Entry {
                path: path.to_path_buf(),
                stored: None,
                bytes: 0,
                sha256: String::new(),
                absent: true,
                mode: 0,
                uid: 0,
                gid: 0,
            })
        }
        Err(e) => return Err(file_err("inspect", path)(e)),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(refuse(
                "it is a symlink; list the file it points at (restoring would replace the link)",
            ))
        }
        Ok(m) if !m.is_file() => return Err(refuse("it is not a regular file")),
        Ok(_) => {}
    }
    let mut src = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return Err(refuse("it is a symlink; list the file it points at"))
        }
        Err(e) => return Err(file_err("open", path)(e)),
    };
    let meta = src.metadata().map_err(file_err("inspect", path))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    let stored = stored_name(n, path);
    let dst_path = tmp.join(&stored);
    let mut dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&dst_path)
        .map_err(io_err("create", &dst_path))?;
    crate::fsutil::clone_or_copy(&mut src, &mut dst).map_err(file_err("copy", path))?;
    // Size and digest of what was stored, read back from the copy.
    dst.seek(SeekFrom::Start(0))
        .map_err(io_err("read back", &dst_path))?;
    let (bytes, sha256) = digest(&mut dst).map_err(io_err("read back", &dst_path))?;
    dst.sync_all().map_err(io_err("fsync", &dst_path))?;
    Ok(Entry {
        path: path.to_path_buf(),
        stored: Some(stored),
        bytes,
        sha256,
        absent: false,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Size and sha256 (lowercase hex) of everything `r` yields.
fn digest(r: &mut dyn Read) -> io::Result<(u64, String)> {
    let (sum, total) = crate::fsutil::sha256_of(r, u64::MAX)?;
    Ok((total, crate::fsutil::hex(&sum)))
}

/// Refuses `f` unless its content has the size and sha256 `entry` records.
fn check_digest(dir: &Path, entry: &Entry, f: &mut File) -> Result<(), SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        dir: dir.to_path_buf(),
        reason,
    };
    let stored = entry.stored.as_deref().unwrap_or_default();
    let (bytes, sha256) = digest(f).map_err(|e| {
        corrupt(format!(
            "cannot read the copy {stored} of {}: {e}",
            entry.path.display()
        ))
    })?;
    if bytes != entry.bytes || sha256 != entry.sha256 {
        return Err(corrupt(format!(
            "the copy {stored} of {} has {bytes} bytes with sha256 {sha256}, the manifest says {} bytes with sha256 {}",
            entry.path.display(),
            entry.bytes,
            entry.sha256
        )));
    }
    Ok(())
}

/// Writes `manifest.json` into `dir` and fsyncs it.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), SnapshotError> {
    let path = dir.join(MANIFEST);
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| crate::fsutil::IoError::new("encode", &path, io::Error::other(e)))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("create", &path))?;
    f.write_all(&json).map_err(io_err("write", &path))?;
    f.sync_all().map_err(io_err("fsync", &path))
}

/// Reads and checks the manifest of the snapshot directory `dir`.
fn read_manifest(dir: &Path, app: &str, version: &str) -> Result<Manifest, SnapshotError> {
    let path = dir.join(MANIFEST);
    let corrupt = |reason: String| SnapshotError::Corrupt {
        dir: dir.to_path_buf(),
        reason,
    };
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SnapshotError::NotFound {
                app: app.to_owned(),
                version: version.to_owned(),
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let m: Manifest = serde_json::from_slice(&text)
        .map_err(|e| corrupt(format!("{MANIFEST} is not a valid manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(corrupt(format!(
            "{MANIFEST} has format {}, this agent reads format {FORMAT}",
            m.format
        )));
    }
    if m.app != app || m.version != version {
        return Err(corrupt(format!(
            "{MANIFEST} is for app {:?} version {:?}",
            m.app, m.version
        )));
    }
    let mut seen = HashSet::new();
    for e in &m.files {
        if !e.path.is_absolute() || e.path.file_name().is_none() {
            return Err(corrupt(format!(
                "{MANIFEST} lists {:?}, which is not an absolute file path",
                e.path
            )));
        }
        if !seen.insert(&e.path) {
            return Err(corrupt(format!(
                "{MANIFEST} lists {} twice",
                e.path.display()
            )));
        }
        match (&e.stored, e.absent) {
            (None, true) => {}
            (Some(s), false) if is_plain_name(s) => {}
            _ => {
                return Err(corrupt(format!(
                    "{MANIFEST} has an invalid stored name for {}",
                    e.path.display()
                )))
            }
        }
    }
    Ok(m)
}

/// A single, visible path component (never `..`, a path or the manifest).
fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && !s.contains('/') && s != MANIFEST && s.len() <= NAME_MAX
}

/// The name prefix of the temporary files a restore of `live` writes beside
/// it: `.<name>.restore-` (the name cut to 200 bytes).
fn restore_prefix(live: &Path) -> Option<String> {
    let name = live.file_name()?.to_str()?;
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!(".{}.restore-", &name[..end]))
}

/// Replaces the live file `entry.path` with the verified copy at `stored`
/// atomically: temporary file beside it, fsync, rename over it, fsync its directory.
fn restore_file(dir: &Path, entry: &Entry, stored: &Path) -> Result<(), SnapshotError> {
    let live = &entry.path;
    let parent = live.parent().unwrap_or(Path::new("/"));
    let prefix = restore_prefix(live).unwrap_or_else(|| ".file.restore-".into());
    let (tmp, mut out) = {
        let mut file = None;
        let tmp = create_unique(parent, &prefix, |p| {
            file = Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(p)?,
            );
            Ok(())
        })
        .map_err(file_err("create a temporary file next to", live))?;
        match file {
            Some(f) => (tmp, f),
            None => {
                return Err(file_err("create a temporary file next to", live)(
                    io::Error::other("no file created"),
                ))
            }
        }
    };
    let result = (|| {
        let mut src = open_nofollow(stored).map_err(io_err("open", stored))?;
        crate::fsutil::clone_or_copy(&mut src, &mut out)
            .map_err(file_err("write a temporary copy of", live))?;
        // What is about to be renamed into place is what the manifest describes.
        out.seek(SeekFrom::Start(0))
            .map_err(file_err("read back the temporary copy of", live))?;
        check_digest(dir, entry, &mut out)?;
        if let Err(e) = std::os::unix::fs::fchown(&out, Some(entry.uid), Some(entry.gid)) {
            tracing::warn!(path = %live.display(), uid = entry.uid, gid = entry.gid, error = %e, "cannot restore the owner of a state file; it keeps the agent's");
        }
        out.set_permissions(fs::Permissions::from_mode(entry.mode))
            .map_err(file_err("set permissions of the temporary copy of", live))?;
        out.sync_all()
            .map_err(file_err("fsync the temporary copy of", live))?;
        fs::rename(&tmp, live).map_err(file_err("rename the restored copy over", live))?;
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(file_err("fsync the directory of", live))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Moves the complete snapshot `tmp` to `target`, replacing an older one
/// atomically where the platform allows, then fsyncs `app_dir`.
fn publish(tmp: &Path, target: &Path, app_dir: &Path, version: &str) -> Result<(), SnapshotError> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::rename(tmp, target).map_err(io_err("rename snapshot directory to", target))?;
        }
        Err(e) => return Err(io_err("inspect", target)(e)),
        Ok(_) => {
            if exchange(tmp, target).map_err(io_err("replace snapshot directory", target))? {
                // `tmp` now holds the old snapshot.
                fsync_dir(app_dir)?;
                if let Err(e) = remove_tree(tmp) {
                    tracing::warn!(path = %tmp.display(), error = %e, "could not remove replaced snapshot");
                }
            } else {
                // No atomic exchange here: move the old one away first (briefly no
                // snapshot; a crash then leaves it in `.old~*`, removed later).
                let old = create_unique(app_dir, &format!("{OLD_PREFIX}{version}~"), |p| {
                    if p.symlink_metadata().is_ok() {
                        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                    }
                    fs::rename(target, p)
                })
                .map_err(io_err("move away the older snapshot", target))?;
                fs::rename(tmp, target).map_err(io_err("rename snapshot directory to", target))?;
                fsync_dir(app_dir)?;
                if let Err(e) = remove_tree(&old) {
                    tracing::warn!(path = %old.display(), error = %e, "could not remove replaced snapshot");
                }
            }
        }
    }
    fsync_dir(app_dir)
}

/// Atomically exchanges `a` and `b` (`renameat2(RENAME_EXCHANGE)`). `Ok(false)`
/// where the platform or filesystem cannot.
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        match renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => Ok(true),
            Err(Errno::EINVAL) | Err(Errno::ENOSYS) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

/// Removes leftovers of interrupted work on `version` in `app_dir` (best effort).
fn clean_leftovers(app_dir: &Path, version: &str) {
    let Ok(rd) = fs::read_dir(app_dir) else {
        return;
    };
    let prefixes = [
        format!("{TMP_PREFIX}{version}~"),
        format!("{OLD_PREFIX}{version}~"),
    ];
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            let p = entry.path();
            match remove_tree(&p) {
                Ok(()) => {
                    tracing::info!(path = %p.display(), "removed leftover of an interrupted snapshot")
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "could not remove leftover snapshot directory")
                }
            }
        }
    }
}

/// Creates `dir` and its missing parents with mode 0700 (state files may hold
/// secrets), fsyncing the parent of each directory created.
fn ensure_dir(dir: &Path) -> Result<(), SnapshotError> {
    let mut missing = Vec::new();
    let mut p = dir;
    while !is_real_dir(p) {
        missing.push(p);
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_real_dir(d) => continue,
            Err(e) => return Err(io_err("create directory", d)(e)),
        }
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// fsyncs a directory (see `fsutil::fsync_dir`), naming it in the error.
fn fsync_dir(dir: &Path) -> Result<(), SnapshotError> {
    crate::fsutil::fsync_dir(dir).map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// A temp dir with a state dir `<tmp>/state` and live files under `<tmp>/live`.
    fn setup() -> (tempfile::TempDir, Snapshots, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = Snapshots::new(&tmp.path().join("state"));
        let live = tmp.path().join("live");
        fs::create_dir_all(&live).unwrap();
        (tmp, snaps, live)
    }

    fn sha_hex(data: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        format!("{:x}", Sha256::digest(data))
    }

    /// Names in the app's snapshot directory starting with '.'.
    fn hidden(snaps: &Snapshots, app: &str) -> Vec<String> {
        match fs::read_dir(snaps.dir().join(app)) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Names in the live directory starting with '.' (temporary restore files).
    fn live_hidden(live: &Path) -> Vec<String> {
        fs::read_dir(live)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[test]
    fn take_modify_restore_gives_the_old_bytes() {
        let (_tmp, snaps, live) = setup();
        let db = live.join("state.db");
        let cfg = live.join("app.conf");
        fs::write(&db, b"orders v1").unwrap();
        fs::set_permissions(&db, fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(&cfg, b"").unwrap();

        let info = snaps
            .take("shop-sync", "1.0.0", &[db.clone(), cfg.clone()])
            .unwrap();
        assert_eq!(info.app, "shop-sync");
        assert_eq!(info.version, "1.0.0");
        assert_eq!(
            info.files,
            vec![
                SnapshotFile {
                    path: db.clone(),
                    bytes: 9,
                    sha256: sha_hex(b"orders v1"),
                    absent: false
                },
                SnapshotFile {
                    path: cfg.clone(),
                    bytes: 0,
                    sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                        .into(),
                    absent: false
                },
            ]
        );
        let dir = snaps.dir().join("shop-sync/1.0.0");
        assert_eq!(fs::read(dir.join("0-state.db")).unwrap(), b"orders v1");
        assert!(dir.join("1-app.conf").is_file());
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest["files"][0]["path"], db.to_str().unwrap());
        assert_eq!(manifest["files"][0]["stored"], "0-state.db");
        assert_eq!(manifest["files"][0]["sha256"], sha_hex(b"orders v1"));
        assert!(snaps.exists("shop-sync", "1.0.0"));
        assert!(hidden(&snaps, "shop-sync").is_empty());

        fs::write(&db, b"orders v2 with a new schema").unwrap();
        fs::set_permissions(&db, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&cfg, b"new=1").unwrap();
        let restored = snaps.restore("shop-sync", "1.0.0").unwrap();
        assert_eq!(restored, info);
        assert_eq!(fs::read(&db).unwrap(), b"orders v1");
        assert_eq!(
            fs::metadata(&db).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(fs::read(&cfg).unwrap(), b"");
        assert!(live_hidden(&live).is_empty());
        // The snapshot stays: it can be restored again.
        assert!(snaps.exists("shop-sync", "1.0.0"));
    }

    #[test]
    fn restore_keeps_the_owner_when_root() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (_tmp, snaps, live) = setup();
        let f = live.join("owned");
        fs::write(&f, b"x").unwrap();
        std::os::unix::fs::chown(&f, Some(4321), Some(4322)).unwrap();
        snaps.take("a", "1", std::slice::from_ref(&f)).unwrap();
        fs::remove_file(&f).unwrap();
        fs::write(&f, b"y").unwrap();
        snaps.restore("a", "1").unwrap();
        let m = fs::metadata(&f).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322));
        assert_eq!(fs::read(&f).unwrap(), b"x");
    }

    #[test]
    fn take_replaces_an_older_snapshot_of_the_same_version() {
        let (_tmp, snaps, live) = setup();
        let f = live.join("s");
        fs::write(&f, b"first").unwrap();
        snaps.take("a", "1", std::slice::from_ref(&f)).unwrap();
        fs::write(&f, b"second").unwrap();
        let info = snaps.take("a", "1", std::slice::from_ref(&f)).unwrap();
        assert_eq!(info.files[0].sha256, sha_hex(b"second"));
        assert!(hidden(&snaps, "a").is_empty(), "{:?}", hidden(&snaps, "a"));
        fs::write(&f, b"third").unwrap();
        snaps.restore("a", "1").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"second");
        assert_eq!(snaps.list("a").unwrap(), vec!["1".to_owned()]);
    }

    #[test]
    fn restore_is_atomic_for_a_concurrent_reader() {
        let (_tmp, snaps, live) = setup();
        let f = live.join("big.db");
        let a: Arc<Vec<u8>> = Arc::new((0..1 << 20).map(|i| (i % 251) as u8).collect());
        let b: Arc<Vec<u8>> = Arc::new((0..1 << 20).map(|i| (i % 241) as u8 ^ 0xff).collect());
        fs::write(&f, &*a).unwrap();
        snaps.take("a", "1", std::slice::from_ref(&f)).unwrap();
        fs::write(&f, &*b).unwrap();
        snaps.take("a", "2", std::slice::from_ref(&f)).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let reader = {
            let (stop, reads, f, a, b) =
                (stop.clone(), reads.clone(), f.clone(), a.clone(), b.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match fs::read(&f) {
                        Ok(data) if data == *a || data == *b => {}
                        Ok(data) => {
                            failures.push(format!("partial or mixed: {} bytes", data.len()))
                        }
                        Err(e) => failures.push(format!("read: {e}")),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        };
        while reads.load(Ordering::Relaxed) < 5 {
            std::thread::yield_now();
        }
        for i in 0..50 {
            let version = if i % 2 == 0 { "1" } else { "2" };
            snaps.restore("a", version).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let failures = reader.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} bad reads of {}, e.g. {:?}",
            failures.len(),
            reads.load(Ordering::Relaxed),
            &failures[..failures.len().min(3)]
        );
        assert_eq!(fs::read(&f).unwrap(), *b);
        assert!(live_hidden(&live).is_empty());
    }

    #[test]
    fn absent_files_are_recorded_and_left_alone_on_restore() {
        let (_tmp, snaps, live) = setup();
        let present = live.join("present");
        let missing = live.join("created-later");
        fs::write(&present, b"p1").unwrap();
        let info = snaps
            .take("a", "1", &[missing.clone(), present.clone()])
            .unwrap();
        assert_eq!(
            info.files[0],
            SnapshotFile {
                path: missing.clone(),
                bytes: 0,
                sha256: String::new(),
                absent: true
            }
        );
        assert!(!info.files[1].absent);
        // Stored names keep their list position.
        assert!(snaps.dir().join("a/1/1-present").is_file());

        // The new release created the file: restoring does not delete it.
        fs::write(&missing, b"made by 2.0").unwrap();
        fs::write(&present, b"p2").unwrap();
        let restored = snaps.restore("a", "1").unwrap();
        assert!(restored.files[0].absent);
        assert_eq!(fs::read(&missing).unwrap(), b"made by 2.0");
        assert_eq!(fs::read(&present).unwrap(), b"p1");
        // And an absent file that is still absent is not created.
        fs::remove_file(&missing).unwrap();
        snaps.restore("a", "1").unwrap();
        assert!(!missing.exists());
    }

    #[test]
    fn corrupt_snapshot_is_refused_without_touching_live_files() {
        let (_tmp, snaps, live) = setup();
        let first = live.join("first");
        let second = live.join("second");
        fs::write(&first, b"old first").unwrap();
        fs::write(&second, b"old second").unwrap();
        snaps
            .take("a", "1", &[first.clone(), second.clone()])
            .unwrap();
        fs::write(&first, b"live first").unwrap();
        fs::write(&second, b"live second").unwrap();
        let dir = snaps.dir().join("a/1");

        // The second copy altered (same size): nothing restored, the first included.
        fs::write(dir.join("1-second"), b"OLD second").unwrap();
        match snaps.restore("a", "1") {
            Err(e @ SnapshotError::Corrupt { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("1-second") && text.contains(second.to_str().unwrap()),
                    "{text}"
                );
            }
            other => panic!("corrupt copy not refused: {other:?}"),
        }
        assert_eq!(fs::read(&first).unwrap(), b"live first");
        assert_eq!(fs::read(&second).unwrap(), b"live second");

        // A copy gone.
        fs::remove_file(dir.join("1-second")).unwrap();
        assert!(matches!(
            snaps.restore("a", "1"),
            Err(SnapshotError::Corrupt { .. })
        ));

        // A manifest that says another sha256, or is not a manifest at all, or
        // points outside the snapshot.
        fs::write(dir.join("1-second"), b"old second").unwrap();
        let manifest = fs::read_to_string(dir.join(MANIFEST)).unwrap();
        let bad_sha = manifest.replace(&sha_hex(b"old first"), &sha_hex(b"evil"));
        let escaping = manifest.replace("\"0-first\"", "\"../../../live/second\"");
        for bad in [bad_sha.as_str(), "{not json", escaping.as_str()] {
            fs::write(dir.join(MANIFEST), bad).unwrap();
            assert!(
                matches!(snaps.restore("a", "1"), Err(SnapshotError::Corrupt { .. })),
                "{bad}"
            );
            assert_eq!(fs::read(&first).unwrap(), b"live first");
            assert_eq!(fs::read(&second).unwrap(), b"live second");
        }
        assert!(live_hidden(&live).is_empty());

        // Intact again: restores.
        fs::write(dir.join(MANIFEST), manifest).unwrap();
        snaps.restore("a", "1").unwrap();
        assert_eq!(fs::read(&first).unwrap(), b"old first");
    }

    #[test]
    fn names_are_validated_and_never_paths() {
        let (tmp, snaps, live) = setup();
        let f = live.join("f");
        fs::write(&f, b"x").unwrap();
        let files = std::slice::from_ref(&f);
        for app in ["", "../x", "a/b", ".hidden", "-a", "/abs", ".."] {
            assert!(matches!(
                snaps.take(app, "1", files),
                Err(SnapshotError::InvalidApp { .. })
            ));
            assert!(matches!(
                snaps.restore(app, "1"),
                Err(SnapshotError::InvalidApp { .. })
            ));
            assert!(matches!(
                snaps.remove(app, "1"),
                Err(SnapshotError::InvalidApp { .. })
            ));
            assert!(matches!(
                snaps.list(app),
                Err(SnapshotError::InvalidApp { .. })
            ));
            assert!(!snaps.exists(app, "1"));
        }
        for version in ["", ".", "..", "../x", "a/b", ".staging-1", "/abs", "1~2"] {
            match snaps.take("a", version, files) {
                Err(e @ SnapshotError::InvalidVersion(_)) => {
                    assert!(e.to_string().contains("invalid release version"), "{e}");
                }
                other => panic!("version {version:?} accepted: {other:?}"),
            }
            assert!(matches!(
                snaps.restore("a", version),
                Err(SnapshotError::InvalidVersion(_))
            ));
            assert!(matches!(
                snaps.remove("a", version),
                Err(SnapshotError::InvalidVersion(_))
            ));
            assert!(!snaps.exists("a", version));
        }
        assert!(
            !snaps.dir().exists(),
            "nothing may be created for invalid names"
        );
        assert!(!tmp.path().join("x").exists());
    }

    #[test]
    fn unsuitable_files_are_refused_by_name_without_trace() {
        let (_tmp, snaps, live) = setup();
        let ok = live.join("ok");
        fs::write(&ok, b"ok").unwrap();
        let link = live.join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        let dir = live.join("dir");
        fs::create_dir(&dir).unwrap();
        let fifo = live.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let cases: Vec<(Vec<PathBuf>, PathBuf)> = vec![
            (
                vec![ok.clone(), PathBuf::from("relative/state.db")],
                PathBuf::from("relative/state.db"),
            ),
            (vec![ok.clone(), link.clone()], link.clone()),
            (vec![dir.clone()], dir.clone()),
            (vec![fifo.clone()], fifo.clone()),
            (vec![ok.clone(), ok.clone()], ok.clone()),
        ];
        for (files, culprit) in cases {
            match snaps.take("a", "1", &files) {
                Err(e @ SnapshotError::Refused { .. }) => {
                    let SnapshotError::Refused { path, .. } = &e else {
                        unreachable!()
                    };
                    assert_eq!(path, &culprit);
                    assert!(e.to_string().contains(culprit.to_str().unwrap()), "{e}");
                }
                other => panic!("{files:?} not refused: {other:?}"),
            }
            assert!(!snaps.exists("a", "1"));
            assert!(hidden(&snaps, "a").is_empty());
        }
        // A refused take keeps an older snapshot of the same version.
        snaps.take("a", "1", std::slice::from_ref(&ok)).unwrap();
        assert!(snaps.take("a", "1", &[ok.clone(), link]).is_err());
        assert!(snaps.exists("a", "1"));
        assert_eq!(fs::read(snaps.dir().join("a/1/0-ok")).unwrap(), b"ok");
    }

    #[test]
    fn list_remove_and_missing_snapshots() {
        let (_tmp, snaps, live) = setup();
        let f = live.join("f");
        fs::write(&f, b"x").unwrap();
        assert_eq!(snaps.list("a").unwrap(), Vec::<String>::new());
        assert!(matches!(
            snaps.restore("a", "1"),
            Err(SnapshotError::NotFound { .. })
        ));
        for v in ["2.0.0", "1.0.0", "1.1.0"] {
            snaps.take("a", v, std::slice::from_ref(&f)).unwrap();
        }
        snaps.take("b", "9", std::slice::from_ref(&f)).unwrap();
        // Leftovers and stray entries are not listed.
        fs::create_dir(snaps.dir().join("a/.tmp~3.0.0~0123")).unwrap();
        fs::create_dir(snaps.dir().join("a/4.0.0")).unwrap(); // no manifest
        assert_eq!(snaps.list("a").unwrap(), ["1.0.0", "1.1.0", "2.0.0"]);
        snaps.remove("a", "1.1.0").unwrap();
        assert!(!snaps.exists("a", "1.1.0"));
        assert_eq!(snaps.list("a").unwrap(), ["1.0.0", "2.0.0"]);
        snaps.remove("a", "1.1.0").unwrap(); // idempotent
        assert_eq!(snaps.list("b").unwrap(), ["9"]);
        // Taking 3.0.0 cleans its own leftover.
        snaps.take("a", "3.0.0", std::slice::from_ref(&f)).unwrap();
        assert!(hidden(&snaps, "a").is_empty());
        // Live files are never touched by take, list or remove.
        assert_eq!(fs::read(&f).unwrap(), b"x");
    }

    #[test]
    fn long_file_names_fit() {
        let (_tmp, snaps, live) = setup();
        let name = "é".repeat(127); // 254 bytes
        let f = live.join(&name);
        fs::write(&f, b"long").unwrap();
        snaps.take("a", "1", std::slice::from_ref(&f)).unwrap();
        // "0-" + 254 bytes is too long: cut at a character boundary.
        assert_eq!(stored_name(0, &f), format!("0-{}", "é".repeat(126)));
        let stored = stored_name(10, &f);
        assert!(stored.len() <= NAME_MAX && stored.starts_with("10-"));
        fs::write(&f, b"changed").unwrap();
        snaps.restore("a", "1").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"long");
    }
}
