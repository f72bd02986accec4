//! Small filesystem primitives shared by the modules that write to disk
//! (`release`, `snapshot`, `watch`): directory fsync, unique temporary names, no-replace
//! renames, tree removal, reflink-or-copy, the SHA-256 of a file's content.
//!
//! Must never decide anything: it returns `io::Result`s; callers name the
//! operation and path with [`IoError`] (one error for every module's file
//! operations).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// A filesystem operation that failed: what was done, on which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct IoError {
    /// What was being done ("create directory", "fsync", ...).
    pub op: &'static str,
    /// On which path.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl IoError {
    /// `op` on `path` failed with `source`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> IoError {
        IoError {
            op,
            path: path.into(),
            source,
        }
    }
}

/// How many random names to try before giving up on a temporary name.
const TEMP_NAME_ATTEMPTS: usize = 16;

/// Whether `p` is a directory itself (not a symlink to one).
pub(crate) fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// fsyncs a directory, so that entries created, renamed or removed in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|f| f.sync_all())
}

/// Creates `<dir>/<prefix><random hex>` with `create`, retrying on name collisions.
pub(crate) fn create_unique(
    dir: &Path,
    prefix: &str,
    mut create: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<PathBuf> {
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let p = dir.join(format!("{prefix}{:016x}", rand::random::<u64>()));
        match create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no unused temporary name found",
    ))
}

/// Replaces `path` with `bytes` in one step: written to a fresh temporary file
/// beside it, then renamed over it, so a reader sees the old or the new file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, false)
}

/// Like [`write_atomic`], and durable when it returns: the temporary file is
/// fsynced before the rename and the directory after it.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, true)
}

fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let tmp = create_unique(dir, &prefix, |p| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .and_then(|mut f| {
                io::Write::write_all(&mut f, bytes)?;
                if durable {
                    f.sync_data()?;
                }
                Ok(())
            })
    })
    // A write that failed half way (a full disk) leaves no temporary behind.
    .inspect_err(|_| drop(remove_temps(dir, &prefix)))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    if durable {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Removes files in `dir` whose name starts with `prefix` (temporaries of
/// an interrupted write); best effort. Returns what it removed.
pub(crate) fn remove_temps(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in rd.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix)
            && entry.file_type().is_ok_and(|t| t.is_file())
            && fs::remove_file(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    removed
}

/// `rename(2)` that refuses to replace an existing `to` where the platform allows
/// (`renameat2(RENAME_NOREPLACE)`); elsewhere plain `rename(2)`, which still fails
/// on a non-empty directory.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            // Filesystem or kernel without RENAME_NOREPLACE: fall back below.
            Err(Errno::EINVAL) | Err(Errno::ENOSYS) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    // Best effort where the kernel cannot refuse for us.
    if to.symlink_metadata().is_ok() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    fs::rename(from, to)
}

/// Removes a file or a whole directory tree; a missing path is not an error.
///
/// Holds at most three descriptors whatever the depth: it walks down with
/// `openat` and back up with `..` (checking that `..` is the directory it
/// came from), so a tree deeper than the descriptor limit goes too. Never
/// follows a symlink; opens up directories without write or search
/// permission for us (they are being removed).
pub(crate) fn remove_tree(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(p);
    }
    let Some(name) = p.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to remove a root or `..`",
        ));
    };
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let top: OwnedFd = File::open(parent)?.into();
    let top_id = {
        let m = fs::metadata(parent)?;
        (m.dev(), m.ino())
    };
    // The names from `top` down to `cur`, and the identity of each parent.
    let mut names: Vec<(std::ffi::OsString, (u64, u64))> = vec![(name.to_owned(), top_id)];
    let mut cur = open_child(&top, name)?;
    loop {
        if let Some(sub) = clear_files(&cur)? {
            let child = open_child(&cur, &sub)?;
            names.push((sub, dir_id(&cur)?));
            cur = child;
            continue;
        }
        let Some((name, parent_id)) = names.pop() else {
            return Ok(());
        };
        let up = if names.is_empty() {
            top.try_clone()?
        } else {
            let up = open_child(&cur, std::ffi::OsStr::new(".."))?;
            if dir_id(&up)? != parent_id {
                return Err(io::Error::other(
                    "the tree was moved while it was being removed",
                ));
            }
            up
        };
        drop(cur);
        remove_entry(&up, &name, true)?;
        if names.is_empty() {
            return Ok(());
        }
        cur = up;
    }
}

use std::os::fd::{AsFd, OwnedFd};

fn dir_id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Opens the directory `name` in `dir` without following a symlink; one we
/// may not read is opened up first.
fn open_child(dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    use nix::errno::Errno;
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Err(Errno::EACCES) if name != ".." => {
            fchmodat(
                dir.as_fd(),
                name,
                Mode::from_bits_truncate(0o700),
                FchmodatFlags::FollowSymlink,
            )?;
            Ok(openat(dir.as_fd(), name, flags, Mode::empty())?)
        }
        r => Ok(r?),
    }
}

/// Unlinks `name` in `dir` (a directory if `is_dir`); a missing one is fine.
fn remove_entry(dir: &OwnedFd, name: &std::ffi::OsStr, is_dir: bool) -> io::Result<()> {
    use nix::errno::Errno;
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let flag = if is_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    match unlinkat(dir.as_fd(), name, flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EACCES) | Err(Errno::EPERM) => {
            // A directory we may not write to: open it up and try again.
            let _ = nix::sys::stat::fchmod(
                dir.as_fd(),
                nix::sys::stat::Mode::from_bits_truncate(0o700),
            );
            match unlinkat(dir.as_fd(), name, flag) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes every entry of `dir` that is not a directory; returns the name
/// of one subdirectory left, if any.
fn clear_files(dir: &OwnedFd) -> io::Result<Option<std::ffi::OsString>> {
    use nix::dir::{Dir, Type};
    use nix::fcntl::OFlag;
    use nix::sys::stat::{fstatat, Mode, SFlag};
    use std::os::unix::ffi::OsStrExt;
    let _ = nix::sys::stat::fchmod(dir.as_fd(), Mode::from_bits_truncate(0o700));
    let mut listing = Dir::openat(
        dir.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut sub = None;
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = std::ffi::OsStr::from_bytes(name);
        let is_dir = match entry.file_type() {
            Some(t) => t == Type::Directory,
            None => fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(
                |st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR,
            ),
        };
        if is_dir {
            if sub.is_none() {
                sub = Some(name.to_owned());
            }
        } else {
            remove_entry(dir, name, false)?;
        }
    }
    Ok(sub)
}

/// A directory being built: removed with everything in it when dropped,
/// unless `keep` says it was published (renamed into place) or is wanted.
pub(crate) struct TempTree {
    path: PathBuf,
    kept: bool,
}

impl TempTree {
    /// Creates `<dir>/<prefix><random>` with `mode`.
    pub(crate) fn create(dir: &Path, prefix: &str, mode: u32) -> io::Result<TempTree> {
        use std::os::unix::fs::DirBuilderExt;
        let path = create_unique(dir, prefix, |p| fs::DirBuilder::new().mode(mode).create(p))?;
        Ok(TempTree { path, kept: false })
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// It stays: from now on it is someone else's (or no longer there).
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a temporary directory");
        }
    }
}

/// A SHA-256.
pub(crate) type Sha256Sum = [u8; 32];

/// The SHA-256 of everything `r` yields, at most `max` bytes, and how many
/// bytes that was (so that a caller can tell a file larger than it expects).
pub(crate) fn sha256_of(r: &mut dyn io::Read, max: u64) -> io::Result<(Sha256Sum, u64)> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let n = io::copy(&mut io::Read::take(r, max), &mut hasher)?;
    Ok((hasher.finalize().into(), n))
}

/// Lower-case hex of a SHA-256.
pub(crate) fn hex(sum: &Sha256Sum) -> String {
    use std::fmt::Write as _;
    sum.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Makes `dst` (empty, opened for writing) a copy of `src`: a reflink (shared
/// extents, copy-on-write) where the file system supports it, else a copy
/// (`copy_file_range` in the kernel). Says whether it was a reflink.
pub(crate) fn clone_or_copy(src: &mut File, dst: &mut File) -> io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    if reflink_copy::reflink_file(&*src, &*dst).is_ok() {
        return Ok(true);
    }
    dst.set_len(0)?;
    dst.seek(SeekFrom::Start(0))?;
    src.seek(SeekFrom::Start(0))?;
    io::copy(src, dst)?;
    Ok(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A chain of `depth` directories `d/d/d/...` under `root`, built with
    /// `openat` (its path is longer than PATH_MAX), a file at the bottom.
    fn deep(root: &Path, depth: usize) {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let mut cur: OwnedFd = File::open(root).unwrap().into();
        for _ in 0..depth {
            mkdirat(cur.as_fd(), "d", Mode::from_bits_truncate(0o755)).unwrap();
            cur = openat(
                cur.as_fd(),
                "d",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
        }
        let f = openat(
            cur.as_fd(),
            "leaf",
            OFlag::O_CREAT | OFlag::O_WRONLY,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        drop(f);
    }

    #[test]
    fn a_tree_deeper_than_the_descriptor_limit_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        fs::create_dir(&root).unwrap();
        // Deeper than a default soft limit of 1024 descriptors.
        deep(&root, 2500);
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_tree_is_removed_whatever_its_modes_and_links_outside_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let root = tmp.path().join("tree");
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::create_dir_all(root.join("wide")).unwrap();
        for i in 0..50 {
            fs::create_dir(root.join(format!("wide/{i}"))).unwrap();
            fs::write(root.join(format!("wide/{i}/f")), "y").unwrap();
        }
        fs::write(root.join("a/b/c/file"), "z").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), root.join("a/b/flink")).unwrap();
        fs::set_permissions(root.join("a/b/c"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "x");
        // A file, a symlink and a missing path.
        let f = tmp.path().join("f");
        fs::write(&f, "1").unwrap();
        remove_tree(&f).unwrap();
        assert!(!f.exists());
        let l = tmp.path().join("l");
        std::os::unix::fs::symlink(&outside, &l).unwrap();
        remove_tree(&l).unwrap();
        assert!(l.symlink_metadata().is_err() && outside.join("keep").exists());
        remove_tree(&tmp.path().join("missing")).unwrap();
    }

    #[test]
    fn a_temp_tree_goes_unless_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let t = TempTree::create(tmp.path(), ".t-", 0o700).unwrap();
        let p = t.path().to_path_buf();
        fs::create_dir(p.join("x")).unwrap();
        drop(t);
        assert!(!p.exists());
        let t = TempTree::create(tmp.path(), ".t-", 0o700).unwrap();
        let p = t.path().to_path_buf();
        t.keep();
        assert!(p.is_dir());
    }
}
