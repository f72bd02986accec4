//! Release directories of one application and the `current` symlink.
//!
//! This module owns the on-disk layout of an application root:
//!
//! ```text
//! <root>/releases/<version>/   one complete release each, never modified after staging
//! <root>/current -> releases/<version>   the only truth of what is active
//! ```
//!
//! It provides:
//! - [`Version`]: validated release names (SemVer or any `[A-Za-z0-9._+-]` name).
//! - staging ([`AppDir::stage`]): copying a directory or unpacking a `.tar.gz` /
//!   `.tgz` or `.tar.zst` / `.tzst` archive (both decoders feed one validated
//!   unpack path) into a hidden `releases/.staging-<id>` directory, refusing anything that could
//!   escape the release (`..`, absolute paths, links leaving the release, device
//!   files, fifos, oversized archives), fsyncing everything, then publishing it
//!   with a single `rename(2)`;
//! - atomic activation ([`AppDir::activate`]): a temporary symlink renamed over
//!   `current`, then an fsync of the application root;
//! - cleanup of leftovers of interrupted work ([`AppDir::clean_leftovers`]) and
//!   removal of inactive releases ([`AppDir::remove`]);
//!
//! Split by concern: `version` (validated names), `stage` (copying and
//! unpacking a source into a staging directory), `manifest` (`release.toml`),
//! `digest` (the content digest that proves two copies hold the same bits);
//! this file keeps the layout (`AppDir`) and its errors. Which releases
//! `keep_releases` removes is decided in `crate::policy`.
//!
//! Snapshots of application state files live in [`crate::snapshot`].
//!
//! What it must never do:
//! - know about plugins, the store, policy, sockets or supervisors (callers drive it);
//! - modify a release after it has been staged (it only ever removes whole releases);
//! - leave `current` missing or dangling: `current` is only ever replaced by
//!   `rename(2)` of a complete symlink onto it, never unlinked and re-created.

use crate::fsutil::{create_unique, is_real_dir, remove_tree, rename_noreplace, TempTree};
use std::ffi::{OsStr, OsString};
use std::fs::{self};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

mod digest;
mod manifest;
mod share;
mod stage;
mod version;

pub use digest::tree_digest;
pub use manifest::{parse_manifest, read_manifest, ReleaseManifest, MAX_SUMMARY};
use stage::*;
use version::shorten;
pub use version::Version;

/// Prefix of the hidden directories under `releases/` in which releases are built.
const STAGING_PREFIX: &str = ".staging-";
/// Prefix of the hidden directories under `releases/` that releases are moved to
/// before being deleted, so that a half-deleted release is never listed.
const REMOVING_PREFIX: &str = ".removing-";
/// Prefix of the temporary symlinks in the root that are renamed over `current`.
const CURRENT_TMP_PREFIX: &str = "current.tmp-";
/// Errors of release handling. Each names what and where.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A version name was refused.
    #[error("invalid release version {}: {reason}", shorten(version))]
    InvalidVersion {
        /// The refused text.
        version: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The release already exists.
    #[error("release {version} already exists at {}", path.display())]
    AlreadyExists {
        /// The version.
        version: Version,
        /// Its directory.
        path: PathBuf,
    },
    /// The release does not exist.
    #[error("release {version} not found: no directory {}", path.display())]
    NotFound {
        /// The version.
        version: Version,
        /// The directory that was expected.
        path: PathBuf,
    },
    /// The release is the active one (`current` points at it) and cannot be removed.
    #[error("release {version} at {} is active (current points at it); refusing to remove it", path.display())]
    Active {
        /// The version.
        version: Version,
        /// Its directory.
        path: PathBuf,
    },
    /// The staging source is missing, of an unsupported kind, or contains
    /// something that cannot be part of a release.
    #[error("cannot stage from {}: {reason}", path.display())]
    Source {
        /// The source, or the offending file inside a source directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An archive entry was refused (or the archive could not be read).
    #[error("archive {}: entry {entry:?} refused: {reason}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// The entry's name as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// `current` exists but is not a symlink to a release directory.
    #[error("{} is not a valid current link: {reason}", path.display())]
    CurrentInvalid {
        /// The `current` link.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
}

/// A closure naming `op` and `path` in an `io::Error`, for `map_err`.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReleaseError + 'a {
    move |source| crate::fsutil::IoError::new(op, path, source).into()
}

/// Limits applied while staging a release (from an archive or a directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageLimits {
    /// Most entries (files, directories, links) a release may contain.
    pub max_entries: u64,
    /// Most bytes of regular-file content a release may contain, in total.
    pub max_bytes: u64,
    /// Keep the source's permission bits as they are (the app's
    /// `keep_modes`); by default group and other write, setuid, setgid and
    /// sticky bits are dropped.
    pub keep_modes: bool,
    /// Unchanged files may be hard links to the previous release's (the
    /// app's `link_unchanged`) where the file system has no reflinks.
    pub link_unchanged: bool,
}

/// A release just staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// `releases/<version>`.
    pub path: PathBuf,
    /// Its content digest (see [`tree_digest`]).
    pub digest: String,
    /// Files shared with the release it follows, and their bytes.
    pub shared: (u64, u64),
    /// Bytes read from the source's regular files (a directory's files
    /// unchanged since the last deploy from it are not read).
    pub read: u64,
}

impl Default for StageLimits {
    fn default() -> Self {
        StageLimits {
            max_entries: 100_000,
            max_bytes: 8 * 1024 * 1024 * 1024,
            keep_modes: false,
            link_unchanged: false,
        }
    }
}

/// The on-disk layout of one application: `<root>/releases/<version>`, `<root>/current`.
#[derive(Debug, Clone)]
pub struct AppDir {
    root: PathBuf,
}

impl AppDir {
    /// An application rooted at `root` (nothing is touched on disk).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        AppDir { root: root.into() }
    }

    /// The application root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/releases`.
    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    /// `<root>/releases/<v>`.
    pub fn release_path(&self, v: &Version) -> PathBuf {
        self.releases_dir().join(v.as_str())
    }

    /// `<root>/current`.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// Creates `<root>` and `<root>/releases` if missing (fsyncs the parent
    /// directories of what it created).
    pub fn ensure_layout(&self) -> Result<(), ReleaseError> {
        let releases = self.releases_dir();
        let mut missing = Vec::new();
        let mut p: &Path = &releases;
        loop {
            match fs::metadata(p) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => {
                    return Err(crate::fsutil::IoError::new(
                        "use as a directory",
                        p,
                        io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                    )
                    .into())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing.push(p.to_path_buf());
                    match p.parent() {
                        Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                        _ => break,
                    }
                }
                Err(e) => return Err(io_err("inspect", p)(e)),
            }
        }
        for dir in missing.iter().rev() {
            match fs::create_dir(dir) {
                Ok(()) => fsync_dir(parent_or_dot(dir))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(io_err("create directory", dir)(e)),
            }
        }
        Ok(())
    }

    /// The version `current` points at; `None` if `current` does not exist.
    ///
    /// `Err(CurrentInvalid)` if it is not a symlink, points outside `releases/`, at
    /// a name that is not a valid version, or at a missing directory.
    pub fn current(&self) -> Result<Option<Version>, ReleaseError> {
        let link = self.current_link();
        let invalid = |reason: String| ReleaseError::CurrentInvalid {
            path: link.clone(),
            reason,
        };
        let meta = match fs::symlink_metadata(&link) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("inspect", &link)(e)),
        };
        if !meta.file_type().is_symlink() {
            return Err(invalid(
                "it is not a symlink (a file or directory is in the way)".into(),
            ));
        }
        let target = fs::read_link(&link).map_err(io_err("read symlink", &link))?;
        let Some(name) = self.release_name_of_target(&target) else {
            return Err(invalid(format!(
                "it points at {}, which is not a directory directly under {}",
                target.display(),
                self.releases_dir().display()
            )));
        };
        let Some(version) = name.to_str().and_then(|n| Version::parse(n).ok()) else {
            return Err(invalid(format!(
                "it points at {}, whose name is not a valid version",
                target.display()
            )));
        };
        if !is_real_dir(&self.release_path(&version)) {
            return Err(invalid(format!(
                "it points at {}, which is not an existing release directory",
                target.display()
            )));
        }
        Ok(Some(version))
    }

    /// The release name a `current` target designates, if it is `releases/<name>`
    /// (relative to the root) or the absolute path of `<root>/releases/<name>`.
    fn release_name_of_target(&self, target: &Path) -> Option<OsString> {
        if target.is_absolute() {
            let name = target.file_name()?;
            let parent = target.parent()?;
            let releases = self.releases_dir();
            if parent == releases {
                return Some(name.to_owned());
            }
            let same = match (fs::canonicalize(parent), fs::canonicalize(&releases)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
            return same.then(|| name.to_owned());
        }
        let mut comps = target
            .components()
            .filter(|c| !matches!(c, Component::CurDir));
        match (comps.next(), comps.next(), comps.next()) {
            (Some(Component::Normal(r)), Some(Component::Normal(name)), None)
                if r == OsStr::new("releases") =>
            {
                Some(name.to_owned())
            }
            _ => None,
        }
    }

    /// Complete releases (directories under `releases/` with valid version names;
    /// hidden entries such as `.staging-*` skipped), sorted by name. An absent
    /// `releases/` directory has no releases.
    pub fn list(&self) -> Result<Vec<Version>, ReleaseError> {
        let dir = self.releases_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read directory", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err("read directory", &dir))?;
            let Some(version) = entry
                .file_name()
                .to_str()
                .and_then(|n| Version::parse(n).ok())
            else {
                continue;
            };
            let ft = entry
                .file_type()
                .map_err(io_err("inspect", &entry.path()))?;
            if ft.is_dir() {
                out.push(version);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether `releases/<v>` is a directory.
    pub fn exists(&self, v: &Version) -> bool {
        is_real_dir(&self.release_path(v))
    }

    /// Stages `source` as release `v` and returns the release's path.
    ///
    /// `source` is a directory (copied recursively: regular files with their
    /// permission bits, directories, symlinks kept as symlinks but refused if
    /// absolute or leaving the release; other file types refused) or an archive
    /// whose root is the release's root (no top-level directory is stripped):
    /// `.tar.gz` / `.tgz` (gzip) or `.tar.zst` / `.tzst` (Zstandard, decoder
    /// window at most 128 MiB). Both kinds of archive go through the same entry
    /// validation and limits. Refused: entries with `..`, absolute paths, links leaving the
    /// release, absolute link targets, device files, fifos, and content over
    /// `limits`. Only the permission bits `0o777` are kept (no setuid, setgid or
    /// sticky bits); ownership is the agent's.
    ///
    /// Work happens in `releases/.staging-<random>`; every file and directory is
    /// fsynced, then one `rename(2)` publishes `releases/<v>` and `releases/` is
    /// fsynced. On any error the staging directory is removed and nothing else is
    /// changed (except that `<root>/releases` is created if it was missing); the
    /// active release and `current` are never touched by staging.
    ///
    /// A full disk takes exactly that path: `ENOSPC` (or `EDQUOT`, `EIO`) from
    /// creating, writing or fsyncing anything in the staging directory is an
    /// [`ReleaseError::Io`] naming the file, the partial staging directory is
    /// removed (which also frees the space it took), and nothing is published.
    /// If the fsync of `releases/` after the publishing rename fails, the new
    /// release is moved away and deleted again, so an error always means "not
    /// staged".
    pub fn stage(
        &self,
        source: &Path,
        v: &Version,
        limits: &StageLimits,
    ) -> Result<PathBuf, ReleaseError> {
        self.stage_opened(source, None, v, limits).map(|s| s.path)
    }

    /// `stage`, reading the source through `opened` when given (a
    /// descriptor the caller opened with its own rights; `source` is then
    /// only its name, for messages and the archive's suffix).
    pub fn stage_opened(
        &self,
        source: &Path,
        opened: Option<fs::File>,
        v: &Version,
        limits: &StageLimits,
    ) -> Result<Staged, ReleaseError> {
        self.stage_opened_at(source, opened, v, limits, std::time::SystemTime::now())
    }

    /// `stage_opened` at `now` (the clock that decides which source files
    /// have settled long enough to be remembered for the next deploy).
    pub(crate) fn stage_opened_at(
        &self,
        source: &Path,
        opened: Option<fs::File>,
        v: &Version,
        limits: &StageLimits,
        now: std::time::SystemTime,
    ) -> Result<Staged, ReleaseError> {
        let kind = classify_source(source, opened.as_ref())?;
        self.ensure_layout()?;
        let target = self.release_path(v);
        let already = || ReleaseError::AlreadyExists {
            version: v.clone(),
            path: target.clone(),
        };
        match fs::symlink_metadata(&target) {
            Ok(_) => return Err(already()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", &target)(e)),
        }
        let releases = self.releases_dir();
        if kind == SourceKind::Dir {
            // Where the directory really is: the descriptor's, if one was given.
            let real = match &opened {
                Some(f) => fs::read_link(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(f)
                )),
                None => fs::canonicalize(source),
            };
            let inside = match (real, fs::canonicalize(&releases)) {
                (Ok(s), Ok(r)) => r.starts_with(s),
                _ => false,
            };
            if inside {
                return Err(ReleaseError::Source {
                    path: source.to_path_buf(),
                    reason: format!("it contains the releases directory {}", releases.display()),
                });
            }
        }

        // Every failure, a full disk included, drops the guard: the partial work goes.
        let staging = TempTree::create(&releases, STAGING_PREFIX, 0o700)
            .map_err(io_err("create staging directory in", &releases))?;
        // The active release is the one whose unchanged files are shared.
        let base = self
            .current()
            .ok()
            .flatten()
            .and_then(|cur| share::Base::open(&releases, &cur));
        let mut stager = Stager::new(staging.path(), limits, source, opened, kind, base, now);
        match kind {
            SourceKind::Dir => stager.copy_dir()?,
            SourceKind::Archive(codec) => stager.unpack(codec)?,
        }
        stager.verify_links()?;
        stager.finish_dirs()?;
        let (digest, index) = digest::digest_and_index(staging.path(), &stager.hashes)?;
        let index_tmp = releases.join(format!("{STAGING_PREFIX}index-{v}"));
        let sources = stager.sources.as_ref().map(|(dev, f)| (*dev, f.as_slice()));
        share::write_index(
            &index_tmp,
            &share::index_path(&releases, v),
            &index,
            sources,
        )
        .map_err(io_err("write the file index", &index_tmp))?;
        // One sync of the file system instead of one per file: the tree and
        // its index are durable before the release is published.
        let synced = std::fs::File::open(staging.path())
            .and_then(|d| nix::unistd::syncfs(&d).map_err(io::Error::from));
        if let Err(e) = synced {
            let _ = fs::remove_file(share::index_path(&releases, v));
            return Err(io_err("sync the file system of", staging.path())(e));
        }
        let (shared, read) = (stager.shared, stager.read);
        drop(stager);
        if let Err(e) = publish(staging.path(), &target, v) {
            let _ = fs::remove_file(share::index_path(&releases, v));
            return Err(e);
        }
        staging.keep();
        if let Err(e) = fsync_dir(&releases) {
            // Published but not durable: take it back so that an error means "not staged".
            discard_published(&releases, &target);
            return Err(e);
        }
        tracing::info!(version = %v, path = %target.display(), source = %source.display(),
            shared_files = shared.0, shared_bytes = shared.1, read_bytes = read, "release staged");
        Ok(Staged {
            path: target,
            digest,
            shared,
            read,
        })
    }

    /// Atomically points `current` at `releases/<v>`: creates the symlink
    /// `current.tmp-<random>` with the relative target `releases/<v>`, renames it
    /// over `current`, and fsyncs the root. `current` is never missing in between.
    ///
    /// `Err(NotFound)` if the release directory does not exist;
    /// `Err(CurrentInvalid)` if something other than a symlink is named `current`
    /// (it is not replaced). The temporary link is removed on error.
    pub fn activate(&self, v: &Version) -> Result<(), ReleaseError> {
        let release = self.release_path(v);
        if !is_real_dir(&release) {
            return Err(ReleaseError::NotFound {
                version: v.clone(),
                path: release,
            });
        }
        let link = self.current_link();
        match fs::symlink_metadata(&link) {
            Ok(m) if !m.file_type().is_symlink() => {
                return Err(ReleaseError::CurrentInvalid {
                    path: link,
                    reason: "it is not a symlink (a file or directory is in the way); refusing to replace it".into(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", &link)(e)),
        }
        // Everything the swap needs is opened before it: once `rename(2)` has
        // happened, no failure to get a descriptor may report it as undone.
        let root_dir = fs::File::open(&self.root).map_err(io_err("open", &self.root))?;
        let target = Path::new("releases").join(v.as_str());
        let tmp = create_unique(&self.root, CURRENT_TMP_PREFIX, |p| {
            std::os::unix::fs::symlink(&target, p)
        })
        .map_err(io_err("create temporary symlink in", &self.root))?;
        if let Err(e) = fs::rename(&tmp, &link) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("rename temporary symlink over", &link)(e));
        }
        // The swap is done (readers see the new target); a failed fsync only
        // means it may not survive a power loss, which start-up reconciles.
        if let Err(e) = root_dir.sync_all() {
            tracing::warn!(link = %link.display(), "cannot fsync the swap of current: {e}");
        }
        tracing::info!(version = %v, link = %link.display(), "release activated");
        Ok(())
    }

    /// Removes leftovers of interrupted work: `<root>/current.tmp-*`,
    /// `releases/.staging-*` and `releases/.removing-*`. Returns what it removed.
    ///
    /// Call it only while no staging, activation or removal is in progress for this
    /// application (at start-up), since it removes their work in progress.
    pub fn clean_leftovers(&self) -> Result<Vec<PathBuf>, ReleaseError> {
        let mut removed = Vec::new();
        for p in read_names(&self.root, &[CURRENT_TMP_PREFIX])? {
            let meta = fs::symlink_metadata(&p).map_err(io_err("inspect", &p))?;
            if meta.is_dir() {
                continue; // never created by us
            }
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
            removed.push(p);
        }
        if !removed.is_empty() {
            fsync_dir(&self.root)?;
        }
        let before = removed.len();
        let releases = self.releases_dir();
        for p in read_names(&releases, &[STAGING_PREFIX, REMOVING_PREFIX])? {
            remove_tree(&p).map_err(io_err("remove", &p))?;
            removed.push(p);
        }
        // An index whose release is gone (a crash before it was published).
        for p in read_names(&releases, &[share::INDEX_PREFIX])? {
            let release = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(share::INDEX_PREFIX))
                .map(|n| releases.join(n));
            if release.is_some_and(|r| !is_real_dir(&r)) {
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
                removed.push(p);
            }
        }
        if removed.len() > before {
            fsync_dir(&releases)?;
        }
        for p in &removed {
            tracing::info!(path = %p.display(), "removed leftover of interrupted work");
        }
        removed.sort();
        Ok(removed)
    }

    /// Deletes release `v`, which must not be the active one.
    ///
    /// The directory is first renamed to `releases/.removing-<random>` (so a
    /// half-deleted release is never listed; [`AppDir::clean_leftovers`] finishes an
    /// interrupted removal), then deleted. `Err(NotFound)` if it does not exist,
    /// `Err(Active)` if `current` points at it, and the error of
    /// [`AppDir::current`] if `current` is invalid (nothing is removed then).
    pub fn remove(&self, v: &Version) -> Result<(), ReleaseError> {
        let path = self.release_path(v);
        if !is_real_dir(&path) {
            return Err(ReleaseError::NotFound {
                version: v.clone(),
                path,
            });
        }
        if self.current()?.as_ref() == Some(v) {
            return Err(ReleaseError::Active {
                version: v.clone(),
                path,
            });
        }
        let releases = self.releases_dir();
        let trash = create_unique(&releases, REMOVING_PREFIX, |p| {
            // rename(2) onto a fresh name; fails with EEXIST/ENOTEMPTY only if taken.
            if p.symlink_metadata().is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            fs::rename(&path, p)
        })
        .map_err(io_err("move away for removal", &path))?;
        fsync_dir(&releases)?;
        remove_tree(&trash).map_err(io_err("remove", &trash))?;
        let index = share::index_path(&releases, v);
        remove_tree(&index).map_err(io_err("remove", &index))?;
        fsync_dir(&releases)?;
        tracing::info!(version = %v, "release removed");
        Ok(())
    }
}

/// The parent of `p`, or `.` for a bare relative name.
fn parent_or_dot(p: &Path) -> &Path {
    match p.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// fsyncs a directory (see `fsutil::fsync_dir`), naming it in the error.
fn fsync_dir(dir: &Path) -> Result<(), ReleaseError> {
    crate::fsutil::fsync_dir(dir).map_err(io_err("fsync directory", dir))
}

fn read_names(dir: &Path, prefixes: &[&str]) -> Result<Vec<PathBuf>, ReleaseError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if prefixes.iter().any(|p| bytes.starts_with(p.as_bytes())) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Moves a just-published release away (to `.removing-*`, which
/// [`AppDir::clean_leftovers`] finishes after a crash) and deletes it; best effort.
fn discard_published(releases: &Path, target: &Path) {
    let moved = create_unique(releases, REMOVING_PREFIX, |p| {
        if p.symlink_metadata().is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        fs::rename(target, p)
    });
    let outcome = moved.and_then(|trash| remove_tree(&trash));
    if let Err(e) = outcome {
        tracing::warn!(path = %target.display(), error = %e, "could not take back a release whose publication failed");
    }
}

/// Renames the complete staging directory to `target`, never replacing anything.
fn publish(staging: &Path, target: &Path, v: &Version) -> Result<(), ReleaseError> {
    let already = || ReleaseError::AlreadyExists {
        version: v.clone(),
        path: target.to_path_buf(),
    };
    match rename_noreplace(staging, target) {
        Ok(()) => Ok(()),
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists
                || e.kind() == io::ErrorKind::DirectoryNotEmpty
                || e.kind() == io::ErrorKind::NotADirectory
                || e.kind() == io::ErrorKind::IsADirectory =>
        {
            Err(already())
        }
        Err(e) => Err(io_err("rename staging directory to", target)(e)),
    }
}

#[cfg(test)]
mod tests;
