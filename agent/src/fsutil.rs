//! Small filesystem primitives shared by the modules that write to disk
//! (`release`, `snapshot`, `watch`): directory fsync, unique temporary names, no-replace
//! renames, tree removal.
//!
//! Must never decide anything: it returns `io::Result`s and callers name the
//! operation and path in their own errors.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

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
