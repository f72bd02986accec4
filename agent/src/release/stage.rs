//! Staging: a directory tree or a `.tar.gz`/`.tar.zst` archive copied into
//! a staging directory, every entry validated.
//!
//! Owns what may enter a release (no `..`, no absolute paths, no links
//! leaving it, no devices or fifos, sizes within `StageLimits`) and the
//! hashes of what it wrote; an unchanged file (same size, mode and content
//! as in the release it follows) is shared with that release instead of
//! written again (`share`). Durability is the caller's one `syncfs`, not a
//! fsync per file. Must never write outside the staging directory it is
//! given, nor publish it (`AppDir::stage` does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::share::{Base, Hash, Indexed, Shared};
use super::*;

/// Most symlinks followed while checking where a link inside a release leads.
const MAX_SYMLINK_HOPS: usize = 40;

/// What kind of thing is being staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SourceKind {
    Dir,
    Archive(Codec),
}

/// How a tar archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    /// `.tar.gz` / `.tgz`.
    Gzip,
    /// `.tar.zst` / `.tzst`.
    Zstd,
}

/// Largest Zstandard window accepted (log2): 128 MiB of decoder memory, the
/// decoder's default limit, stated here so that it cannot silently grow.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Largest tar header extension (GNU long name or link, PAX records) read
/// into memory: checked before the tar reader buffers it.
pub(super) const MAX_HEADER_EXTENSION: u64 = 64 * 1024;
/// Deepest path in a release, in components.
pub(super) const MAX_DEPTH: usize = 128;
/// Longest path in a release, in bytes.
pub(super) const MAX_PATH_BYTES: usize = 4096;
/// Permission bits a release keeps: no group or other write, no setuid,
/// setgid or sticky bit (a release is immutable and shared), unless the app
/// says `keep_modes`.
const MODE_MASK: u32 = 0o755;
/// Every permission bit, for `keep_modes`.
const ALL_MODES: u32 = 0o7777;
/// Longest entry name quoted in an error message.
const SHOWN_NAME: usize = 200;

/// Decides whether `source` is a directory or a `.tar.gz` / `.tgz` /
/// `.tar.zst` / `.tzst` archive.
pub(super) fn classify_source(
    source: &Path,
    opened: Option<&File>,
) -> Result<SourceKind, ReleaseError> {
    let refuse = |reason: &str| ReleaseError::Source {
        path: source.to_path_buf(),
        reason: reason.to_owned(),
    };
    let meta = match opened.map_or_else(|| fs::metadata(source), File::metadata) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(refuse("it does not exist")),
        Err(e) => return Err(io_err("inspect staging source", source)(e)),
    };
    if meta.is_dir() {
        return Ok(SourceKind::Dir);
    }
    let name = source.file_name().map(OsStr::as_bytes).unwrap_or_default();
    if meta.is_file() {
        if name.ends_with(b".tar.gz") || name.ends_with(b".tgz") {
            return Ok(SourceKind::Archive(Codec::Gzip));
        }
        if name.ends_with(b".tar.zst") || name.ends_with(b".tzst") {
            return Ok(SourceKind::Archive(Codec::Zstd));
        }
    }
    Err(refuse(
        "it is neither a directory nor a .tar.gz / .tgz / .tar.zst / .tzst archive",
    ))
}

/// Splits an archive path into normal components; refuses absolute paths,
/// `..`, and paths deeper or longer than a release may hold. `.` and empty
/// components are dropped, so the root itself is an empty path.
fn archive_rel_path(bytes: &[u8]) -> Result<PathBuf, &'static str> {
    if bytes.starts_with(b"/") {
        return Err("absolute path");
    }
    if bytes.len() > MAX_PATH_BYTES {
        return Err("path longer than 4096 bytes");
    }
    let mut out = PathBuf::new();
    let mut depth = 0;
    for comp in bytes.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            name => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err("path deeper than 128 levels");
                }
                out.push(OsStr::from_bytes(name));
            }
        }
    }
    Ok(out)
}

/// `name` cut to at most `SHOWN_NAME` characters for an error message.
fn shown(name: &str) -> String {
    if name.chars().count() <= SHOWN_NAME {
        return name.to_owned();
    }
    let head: String = name.chars().take(SHOWN_NAME / 2).collect();
    let tail: Vec<char> = name.chars().rev().take(SHOWN_NAME / 2).collect();
    let tail: String = tail.into_iter().rev().collect();
    format!("{head}…{tail} ({} bytes)", name.len())
}

/// The directory `rel` below `root`, opened one component at a time
/// without following a symlink.
pub(super) fn open_below(root: &File, rel: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur = openat(root.as_fd(), ".", flags, Mode::empty())?;
    for comp in rel.components() {
        cur = openat(cur.as_fd(), comp.as_os_str(), flags, Mode::empty())?;
    }
    Ok(cur)
}

/// The regular file `name` in `dir`, opened without following a symlink and
/// without blocking on a fifo.
pub(super) fn open_file_below(dir: &std::os::fd::OwnedFd, name: &OsStr) -> io::Result<File> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    Ok(File::from(openat(dir.as_fd(), name, flags, Mode::empty())?))
}

/// The names in `dir` (not `.` and `..`), sorted.
fn list_dir(dir: &std::os::fd::OwnedFd) -> io::Result<Vec<OsString>> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let mut listing = nix::dir::Dir::openat(
        dir.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    names.sort();
    Ok(names)
}

/// A tar stream checked block by block before the tar reader sees it: a
/// header extension (GNU `L`/`K`, PAX `x`/`g`) larger than
/// `MAX_HEADER_EXTENSION` is an error before any of it is buffered, and GNU
/// sparse entries (whose headers continue in further blocks) are refused.
pub(super) struct HeaderGuard<R> {
    inner: R,
    /// The header block being assembled.
    block: [u8; 512],
    /// Bytes of `block` seen.
    filled: usize,
    /// Bytes of entry data (rounded to whole blocks) still to pass.
    data_left: u64,
    /// The end-of-archive block was seen: what follows is padding.
    ended: bool,
}

impl<R: Read> HeaderGuard<R> {
    pub(super) fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            block: [0; 512],
            filled: 0,
            data_left: 0,
            ended: false,
        }
    }

    /// Looks at a complete header block: how much data follows it.
    fn header(&self) -> io::Result<u64> {
        let h = &self.block;
        if h.iter().all(|b| *b == 0) {
            return Ok(0);
        }
        let size = tar_number(&h[124..136])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "corrupt size field"))?;
        let kind = h[156];
        if matches!(kind, b'L' | b'K' | b'x' | b'g') && size > MAX_HEADER_EXTENSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a header extension of {size} bytes (a long name, link or PAX records; at most {MAX_HEADER_EXTENSION})"
                ),
            ));
        }
        if kind == b'S' {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "sparse files are not supported",
            ));
        }
        Ok(size.div_ceil(512).saturating_mul(512))
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut seen = &buf[..n];
        while !seen.is_empty() && !self.ended {
            if self.data_left > 0 {
                let skip = seen
                    .len()
                    .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                self.data_left -= skip as u64;
                seen = &seen[skip..];
                continue;
            }
            let take = seen.len().min(512 - self.filled);
            self.block[self.filled..self.filled + take].copy_from_slice(&seen[..take]);
            self.filled += take;
            seen = &seen[take..];
            if self.filled == 512 {
                self.filled = 0;
                // The tar reader stops at the first all-zero block.
                self.ended = self.block.iter().all(|b| *b == 0);
                self.data_left = self.header()?;
            }
        }
        Ok(n)
    }
}

/// A tar numeric field: octal text (NUL or space padded), or GNU base-256
/// (high bit of the first byte set).
pub(super) fn tar_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(n);
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// Checks a symlink target lexically: relative, and resolving (from the link's own
/// directory `link_rel.parent()`) to a place inside the release.
fn check_link_target(link_rel: &Path, target: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(target);
    if target.is_empty() {
        return Err("symlink with an empty target".into());
    }
    if target.starts_with(b"/") {
        return Err(format!("symlink target {shown:?} is absolute"));
    }
    let mut depth = link_rel.parent().map_or(0, |p| p.components().count());
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if depth == 0 {
                    return Err(format!("symlink target {shown:?} leaves the release"));
                }
                depth -= 1;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// One step of a path being resolved.
enum Step {
    Parent,
    Name(OsString),
}

/// Pushes the steps of `target` in front of `queue`. Returns false if `target` is
/// absolute.
fn push_front_steps(queue: &mut VecDeque<Step>, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let steps: Vec<Step> = target
        .components()
        .filter_map(|c| match c {
            Component::ParentDir => Some(Step::Parent),
            Component::Normal(n) => Some(Step::Name(n.to_owned())),
            _ => None,
        })
        .collect();
    for s in steps.into_iter().rev() {
        queue.push_front(s);
    }
    true
}

/// Resolves the symlink at `root/link_rel` physically, following the symlinks it
/// meets inside `root`; refuses if the path ever climbs above `root`. Targets that
/// do not exist (dangling links) are fine as long as they stay inside.
fn check_link_resolution(root: &Path, link_rel: &Path) -> Result<(), String> {
    let mut pos: Vec<OsString> = link_rel
        .parent()
        .map(|p| p.iter().map(OsStr::to_owned).collect())
        .unwrap_or_default();
    let mut queue = VecDeque::new();
    let target = fs::read_link(root.join(link_rel)).map_err(|e| e.to_string())?;
    let escapes = || {
        format!(
            "symlink target {:?} leaves the release through other symlinks",
            target.display().to_string()
        )
    };
    if !push_front_steps(&mut queue, &target) {
        return Err(escapes());
    }
    let mut hops = 1;
    while let Some(step) = queue.pop_front() {
        match step {
            Step::Parent => {
                if pos.pop().is_none() {
                    return Err(escapes());
                }
            }
            Step::Name(n) => {
                pos.push(n);
                let here: PathBuf = root.join(pos.iter().collect::<PathBuf>());
                if fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_symlink()) {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(format!(
                            "symlink target {:?}: too many levels of symlinks",
                            target.display().to_string()
                        ));
                    }
                    let next = fs::read_link(&here).map_err(|e| e.to_string())?;
                    pos.pop();
                    if !push_front_steps(&mut queue, &next) {
                        return Err(escapes());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Why copying file content failed: reading the source or writing the copy.
#[derive(Debug)]
pub(super) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

#[cfg(test)]
thread_local! {
    /// Test hook simulating a full disk: once set, writes of file content on this
    /// thread fail with `ENOSPC` after this many more bytes.
    pub(super) static FAIL_WRITES_AFTER: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Copies at most `max` bytes from `from` to `to`; returns how many were copied.
pub(super) fn copy_content(
    from: &mut dyn Read,
    to: &mut dyn Write,
    max: u64,
) -> Result<u64, CopyError> {
    let mut buf = [0u8; 128 * 1024];
    let mut total = 0u64;
    while total < max {
        let want = usize::try_from(max - total).map_or(buf.len(), |m| m.min(buf.len()));
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        #[cfg(test)]
        if let Some(left) = FAIL_WRITES_AFTER.get() {
            let room = usize::try_from(left).unwrap_or(usize::MAX);
            if n > room {
                to.write_all(&buf[..room]).map_err(CopyError::Write)?;
                FAIL_WRITES_AFTER.set(Some(0));
                return Err(CopyError::Write(io::Error::from(nix::errno::Errno::ENOSPC)));
            }
            FAIL_WRITES_AFTER.set(Some(left - n as u64));
        }
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
    Ok(total)
}

/// Builds the content of one staging directory.
pub(super) struct Stager<'a> {
    staging: &'a Path,
    limits: &'a StageLimits,
    source: &'a Path,
    /// The source, opened by the caller (read through this when given).
    opened: Option<File>,
    kind: SourceKind,
    entries: u64,
    bytes: u64,
    /// Directories created (relative, `""` is the root) and their final modes.
    dirs: BTreeMap<PathBuf, u32>,
    /// Symlinks created (relative path, name to report).
    links: Vec<(PathBuf, String)>,
    /// The release this one follows, whose unchanged files it shares.
    base: Option<Base>,
    /// The SHA-256 of every regular file staged, by relative path.
    pub(super) hashes: HashMap<PathBuf, Hash>,
    /// Files shared with `base`, and their bytes.
    pub(super) shared: (u64, u64),
    /// Bytes read from the source's regular files.
    pub(super) read: u64,
    /// A directory source's device and its regular files as they were read
    /// (those settled before `settled_before`), for the next deploy.
    pub(super) sources: Option<(u64, Vec<(PathBuf, Indexed)>)>,
    settled_before: (i64, i64),
}

impl<'a> Stager<'a> {
    pub(super) fn new(
        staging: &'a Path,
        limits: &'a StageLimits,
        source: &'a Path,
        opened: Option<File>,
        kind: SourceKind,
        base: Option<Base>,
        now: SystemTime,
    ) -> Self {
        let settled = now
            .checked_sub(super::share::RACY)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::new(), 0o755);
        Stager {
            staging,
            limits,
            source,
            opened,
            kind,
            entries: 0,
            bytes: 0,
            dirs,
            links: Vec::new(),
            base,
            hashes: HashMap::new(),
            shared: (0, 0),
            read: 0,
            sources: None,
            settled_before: (settled.as_secs() as i64, i64::from(settled.subsec_nanos())),
        }
    }

    /// Remembers source file `rel` (its metadata as read, its hash) for the
    /// next deploy, unless it changed too recently to be trusted later.
    fn remember_source(&mut self, rel: &Path, dev: u64, entry: impl FnOnce(Hash) -> Indexed) {
        let Some((source_dev, files)) = self.sources.as_mut() else {
            return;
        };
        let Some(hash) = self.hashes.get(rel) else {
            return;
        };
        let entry = entry(*hash);
        if dev == *source_dev
            && entry.mtime < self.settled_before
            && entry.ctime < self.settled_before
        {
            files.push((rel.to_path_buf(), entry));
        }
    }

    /// The permission bits staged files and directories keep.
    fn mode_mask(&self) -> u32 {
        if self.limits.keep_modes {
            ALL_MODES
        } else {
            MODE_MASK
        }
    }

    /// The error for refusing entry `name` (archive entry name, or path relative
    /// to the source directory).
    fn refuse(&self, name: &str, reason: impl Into<String>) -> ReleaseError {
        match self.kind {
            SourceKind::Dir => ReleaseError::Source {
                path: self.source.join(shown(name)),
                reason: reason.into(),
            },
            SourceKind::Archive(_) => ReleaseError::Archive {
                path: self.source.to_path_buf(),
                entry: shown(name),
                reason: reason.into(),
            },
        }
    }

    /// The error for a failed read of entry `name`'s content: an I/O error on the
    /// source file, or an unreadable (corrupt, truncated) archive.
    fn read_failed(&self, name: &str, e: io::Error) -> ReleaseError {
        match self.kind {
            SourceKind::Dir => io_err("read", &self.source.join(name))(e),
            SourceKind::Archive(_) => self.unreadable(name, e),
        }
    }

    /// The error for an archive that cannot be decoded at `at` (an entry name or a
    /// description such as `(start of archive)`).
    fn unreadable(&self, at: &str, e: io::Error) -> ReleaseError {
        ReleaseError::Archive {
            path: self.source.to_path_buf(),
            entry: shown(at),
            reason: format!("cannot read the archive: {e}"),
        }
    }

    fn count_entry(&mut self, name: &str) -> Result<(), ReleaseError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.refuse(
                name,
                format!("more than {} entries (limit)", self.limits.max_entries),
            ));
        }
        Ok(())
    }

    fn over_size(&self, name: &str) -> ReleaseError {
        self.refuse(
            name,
            format!(
                "more than {} bytes of content in total (limit)",
                self.limits.max_bytes
            ),
        )
    }

    /// Copies the source directory tree into the staging directory.
    pub(super) fn copy_dir(&mut self) -> Result<(), ReleaseError> {
        use nix::sys::stat::{fstatat, SFlag};
        let src_root = self.source;
        // The source itself is the path given; everything below it is
        // reached through directory descriptors, never through a symlink,
        // so a directory swapped for a link while it is read is refused.
        let root = match self.opened.take() {
            Some(f) => f,
            None => File::open(src_root).map_err(io_err("open", src_root))?,
        };
        let meta = root.metadata().map_err(io_err("inspect", src_root))?;
        if !meta.is_dir() {
            return Err(self.refuse("", "it is no longer a directory"));
        }
        self.dirs
            .insert(PathBuf::new(), meta.permissions().mode() & self.mode_mask());
        self.sources = Some((meta.dev(), Vec::new()));
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            let src_dir = src_root.join(&rel_dir);
            let dir = open_below(&root, &rel_dir).map_err(|e| {
                if e.raw_os_error() == Some(nix::libc::ELOOP)
                    || e.raw_os_error() == Some(nix::libc::ENOTDIR)
                {
                    self.refuse(
                        &rel_dir.to_string_lossy(),
                        "it was replaced while it was read (a directory became a link)",
                    )
                } else {
                    io_err("open directory", &src_dir)(e)
                }
            })?;
            for file_name in list_dir(&dir).map_err(io_err("read directory", &src_dir))? {
                let rel = rel_dir.join(&file_name);
                let name = rel.to_string_lossy().into_owned();
                let src = src_root.join(&rel);
                let dst = self.staging.join(&rel);
                self.count_entry(&name)?;
                let st = fstatat(
                    dir.as_fd(),
                    file_name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err("inspect", &src)(e.into()))?;
                let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                let mode = st.st_mode & self.mode_mask();
                if kind == SFlag::S_IFDIR {
                    let too_deep = rel.components().count() > MAX_DEPTH
                        || rel.as_os_str().len() > MAX_PATH_BYTES;
                    if too_deep {
                        return Err(self.refuse(
                            &name,
                            "deeper than 128 levels or longer than 4096 bytes (limit)",
                        ));
                    }
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&dst)
                        .map_err(io_err("create directory", &dst))?;
                    self.dirs.insert(rel.clone(), mode);
                    stack.push(rel);
                } else if kind == SFlag::S_IFREG {
                    if self.share_known_source(&rel, &name, &st)? {
                        continue;
                    }
                    // O_NONBLOCK: a file swapped for a fifo cannot block us;
                    // the descriptor's own type is what counts.
                    let mut file = open_file_below(&dir, &file_name).map_err(|e| {
                        if e.raw_os_error() == Some(nix::libc::ELOOP) {
                            self.refuse(&name, "it was replaced by a link while it was read")
                        } else {
                            io_err("open", &src)(e)
                        }
                    })?;
                    let meta = file.metadata().map_err(io_err("inspect", &src))?;
                    if !meta.is_file() {
                        return Err(self.refuse(&name, "it is no longer a regular file"));
                    }
                    let mode = meta.permissions().mode() & self.mode_mask();
                    let mtime = meta.modified().ok();
                    let known = self.base.as_ref().and_then(|b| b.known_source(&rel, &meta));
                    if !self.share_unchanged_source(
                        &rel,
                        &name,
                        Some(&mut file),
                        (meta.len(), mode, mtime),
                        known,
                    )? {
                        self.write_file(&rel, &name, &mut file, mode, mtime)?;
                    }
                    self.remember_source(&rel, meta.dev(), |hash| Indexed::of(&meta, hash));
                } else if kind == SFlag::S_IFLNK {
                    let target = nix::fcntl::readlinkat(dir.as_fd(), file_name.as_os_str())
                        .map_err(|e| io_err("read symlink", &src)(e.into()))?;
                    check_link_target(&rel, target.as_bytes())
                        .map_err(|r| self.refuse(&name, r))?;
                    std::os::unix::fs::symlink(&target, &dst)
                        .map_err(io_err("create symlink", &dst))?;
                    self.links.push((rel, name));
                } else {
                    return Err(self.refuse(
                        &name,
                        "it is a device, fifo or socket; a release holds only regular files, directories and symlinks",
                    ));
                }
            }
        }
        Ok(())
    }

    /// A source file whose `stat` (from the listing) matches what the last
    /// deploy read, and which the previous release has unchanged, is
    /// shared without opening it: its content cannot have changed without
    /// its change time. Says whether it was.
    fn share_known_source(
        &mut self,
        rel: &Path,
        name: &str,
        st: &nix::sys::stat::FileStat,
    ) -> Result<bool, ReleaseError> {
        let Some(hash) = self
            .base
            .as_ref()
            .and_then(|b| b.known_source_stat(rel, st))
        else {
            return Ok(false);
        };
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let mode = st.st_mode & self.mode_mask();
        let mtime = u32::try_from(st.st_mtime_nsec)
            .ok()
            .zip(u64::try_from(st.st_mtime).ok())
            .map(|(ns, s)| SystemTime::UNIX_EPOCH + std::time::Duration::new(s, ns));
        if !self.share_unchanged_source(rel, name, None, (size, mode, mtime), Some(hash))? {
            return Ok(false);
        }
        self.remember_source(rel, st.st_dev, |hash| Indexed::of_stat(st, hash));
        Ok(true)
    }

    /// Creates regular file `rel` from `content` (counting its bytes against the
    /// limit), with permission bits `mode`, and keeps its hash. Not synced:
    /// the caller syncs the whole tree once.
    fn write_file(
        &mut self,
        rel: &Path,
        name: &str,
        content: &mut dyn Read,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), ReleaseError> {
        let dst = self.staging.join(rel);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dst)
            .map_err(io_err("create file", &dst))?;
        let budget = self.limits.max_bytes.saturating_sub(self.bytes);
        // A full disk shows up here (or at the caller's sync) as ENOSPC: an
        // Io error naming the file, after which `stage` removes the staging
        // directory.
        let mut hashing = HashingReader::new(content);
        let copied = copy_content(&mut hashing, &mut file, budget.saturating_add(1)).map_err(
            |e| match e {
                CopyError::Read(e) => self.read_failed(name, e),
                CopyError::Write(e) => io_err("write file", &dst)(e),
            },
        )?;
        if copied > budget {
            return Err(self.over_size(name));
        }
        self.bytes += copied;
        self.read += copied;
        let hash = hashing.finish();
        set_mode_and_time(&file, &dst, mode, mtime)?;
        drop(file);
        self.hashes.insert(rel.to_path_buf(), hash);
        Ok(())
    }

    /// For a directory source: when the release this one follows has `rel`
    /// with the same size, mode and content as `file`, shares it and says
    /// so; otherwise leaves `file` at its start for an ordinary copy. The
    /// content is `known` (the hash the last deploy read, its metadata
    /// unchanged since) or read and hashed now.
    /// `file` is `None` only with a `known` hash (the file was not opened).
    fn share_unchanged_source(
        &mut self,
        rel: &Path,
        name: &str,
        file: Option<&mut File>,
        (size, mode, mtime): (u64, u32, Option<SystemTime>),
        known: Option<Hash>,
    ) -> Result<bool, ReleaseError> {
        let Some(mut found) = self
            .base
            .as_ref()
            .and_then(|b| b.candidate(rel, size, mode))
        else {
            return Ok(false);
        };
        if size > self.limits.max_bytes.saturating_sub(self.bytes) {
            return Err(self.over_size(name));
        }
        let (hash, read, file) = match (known, file) {
            (Some(hash), file) => (hash, size, file),
            (None, Some(file)) => {
                let (hash, read) = super::share::sha256_of(file, size.saturating_add(1))
                    .map_err(|e| self.read_failed(name, e))?;
                self.read += read;
                (hash, read, Some(file))
            }
            (None, None) => return Ok(false),
        };
        if read != size || hash != found.hash {
            if let Some(file) = file {
                file.rewind().map_err(|e| self.read_failed(name, e))?;
            }
            return Ok(false);
        }
        self.place_shared(&mut found, rel, mode, mtime)?;
        self.bytes += size;
        self.hashes.insert(rel.to_path_buf(), hash);
        Ok(true)
    }

    /// For an archive entry just written: when the release this one follows
    /// has the same file, the copy gives way to the shared one.
    fn share_unchanged_written(
        &mut self,
        rel: &Path,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), ReleaseError> {
        let Some(hash) = self.hashes.get(rel).copied() else {
            return Ok(());
        };
        let dst = self.staging.join(rel);
        let size = fs::symlink_metadata(&dst)
            .map_err(io_err("inspect", &dst))?
            .len();
        let Some(mut found) = self
            .base
            .as_ref()
            .and_then(|b| b.candidate(rel, size, mode))
        else {
            return Ok(());
        };
        if found.hash != hash {
            return Ok(());
        }
        fs::remove_file(&dst).map_err(io_err("replace", &dst))?;
        self.place_shared(&mut found, rel, mode, mtime)
    }

    /// Puts the previous release's file at `rel` (see `share`).
    fn place_shared(
        &mut self,
        found: &mut super::share::Candidate,
        rel: &Path,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), ReleaseError> {
        let dst = self.staging.join(rel);
        let how = found
            .share(&dst, self.limits.link_unchanged)
            .map_err(io_err("share unchanged file as", &dst))?;
        if how != Shared::HardLink {
            let file = OpenOptions::new()
                .write(true)
                .open(&dst)
                .map_err(io_err("open", &dst))?;
            set_mode_and_time(&file, &dst, mode, mtime)?;
        }
        self.shared.0 += 1;
        self.shared.1 += found.size;
        Ok(())
    }

    /// Makes sure every parent of `rel` is a real directory inside the staging
    /// directory (creating missing ones), never going through a symlink.
    fn ensure_parents(&mut self, rel: &Path, name: &str) -> Result<(), ReleaseError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for comp in parent.iter() {
            prefix.push(comp);
            let p = self.staging.join(&prefix);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(self.refuse(
                        name,
                        format!(
                            "its parent {} is a file or symlink in the archive, not a directory",
                            prefix.display()
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&p)
                        .map_err(io_err("create directory", &p))?;
                    self.dirs.insert(prefix.clone(), 0o755);
                }
                Err(e) => return Err(io_err("inspect", &p)(e)),
            }
        }
        Ok(())
    }

    /// Refuses `rel` if something already exists there (duplicate entry).
    fn ensure_absent(&self, rel: &Path, name: &str) -> Result<(), ReleaseError> {
        let p = self.staging.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(_) => Err(self.refuse(name, "duplicate entry: the path already exists")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("inspect", &p)(e)),
        }
    }

    /// Unpacks the archive source, decompressed with `codec`, into the staging
    /// directory. The decoder is the only difference between archive kinds:
    /// everything after it is [`Stager::unpack_tar`].
    pub(super) fn unpack(&mut self, codec: Codec) -> Result<(), ReleaseError> {
        let path = self.source;
        // Opened without blocking (a fifo in its place cannot hang the
        // agent); what counts is the type of what was opened.
        let file = match self.opened.take() {
            Some(f) => f,
            None => OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(path)
                .map_err(io_err("open archive", path))?,
        };
        if !file.metadata().map_err(io_err("inspect", path))?.is_file() {
            return Err(self.refuse("", "the archive is not a regular file"));
        }
        let file = BufReader::new(file);
        let decoder: Box<dyn Read> = match codec {
            Codec::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
            Codec::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(file)
                    .map_err(|e| self.unreadable("(start of archive)", e))?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| self.unreadable("(start of archive)", e))?;
                Box::new(d)
            }
        };
        self.unpack_tar(decoder)
    }

    /// Unpacks a decompressed tar stream into the staging directory, validating
    /// every entry and counting it against the limits.
    fn unpack_tar(&mut self, decompressed: Box<dyn Read>) -> Result<(), ReleaseError> {
        let mut archive = tar::Archive::new(HeaderGuard::new(decompressed));
        let mut last = String::new();
        let entries = archive
            .entries()
            .map_err(|e| self.unreadable("(start of archive)", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                let at = if last.is_empty() {
                    "(first entry)".to_owned()
                } else {
                    format!("(entry after {last})")
                };
                self.unreadable(&at, e)
            })?;
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw).into_owned();
            last.clone_from(&name);
            let ty = entry.header().entry_type();
            if ty.is_pax_global_extensions() {
                continue;
            }
            self.count_entry(&name)?;
            let rel = archive_rel_path(&raw).map_err(|r| self.refuse(&name, r))?;
            // Permission bits matter for files and directories only (not for links).
            let mask = self.mode_mask();
            let mode = || {
                entry
                    .header()
                    .mode()
                    .map(|m| m & mask)
                    .map_err(|e| self.refuse(&name, format!("corrupt mode field: {e}")))
            };
            if ty.is_file() || ty.is_contiguous() {
                if rel.as_os_str().is_empty() {
                    return Err(self.refuse(&name, "a regular file cannot be the release root"));
                }
                let mode = mode()?;
                let size = entry.size();
                if size > self.limits.max_bytes.saturating_sub(self.bytes) {
                    return Err(self.over_size(&name));
                }
                self.ensure_parents(&rel, &name)?;
                self.ensure_absent(&rel, &name)?;
                let mtime = entry
                    .header()
                    .mtime()
                    .ok()
                    .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
                self.write_file(&rel, &name, &mut entry, mode, mtime)?;
                self.share_unchanged_written(&rel, mode, mtime)?;
            } else if ty.is_dir() {
                let mode = mode()?;
                if !rel.as_os_str().is_empty() {
                    self.ensure_parents(&rel, &name)?;
                    let p = self.staging.join(&rel);
                    match fs::symlink_metadata(&p) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            return Err(self.refuse(
                                &name,
                                "duplicate entry: the path already exists and is not a directory",
                            ))
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            fs::DirBuilder::new()
                                .mode(0o700)
                                .create(&p)
                                .map_err(io_err("create directory", &p))?;
                        }
                        Err(e) => return Err(io_err("inspect", &p)(e)),
                    }
                }
                self.dirs.insert(rel, mode);
            } else if ty.is_symlink() {
                if rel.as_os_str().is_empty() {
                    return Err(self.refuse(&name, "a symlink cannot be the release root"));
                }
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                check_link_target(&rel, &target).map_err(|r| self.refuse(&name, r))?;
                self.ensure_parents(&rel, &name)?;
                self.ensure_absent(&rel, &name)?;
                let dst = self.staging.join(&rel);
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dst)
                    .map_err(io_err("create symlink", &dst))?;
                self.links.push((rel, name));
            } else if ty.is_hard_link() {
                if rel.as_os_str().is_empty() {
                    return Err(self.refuse(&name, "a hard link cannot be the release root"));
                }
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let shown = String::from_utf8_lossy(&target).into_owned();
                let target_rel = archive_rel_path(&target).map_err(|r| {
                    self.refuse(
                        &name,
                        format!("hard link target {shown:?} leaves the release ({r})"),
                    )
                })?;
                if !self.is_staged_file(&target_rel) {
                    return Err(self.refuse(
                        &name,
                        format!(
                            "hard link target {shown:?} is not a regular file unpacked earlier from this archive"
                        ),
                    ));
                }
                self.ensure_parents(&rel, &name)?;
                self.ensure_absent(&rel, &name)?;
                let dst = self.staging.join(&rel);
                fs::hard_link(self.staging.join(&target_rel), &dst)
                    .map_err(io_err("create hard link", &dst))?;
                if let Some(h) = self.hashes.get(&target_rel).copied() {
                    self.hashes.insert(rel, h);
                }
            } else if ty.is_character_special() || ty.is_block_special() {
                return Err(self.refuse(&name, "device files are not allowed in a release"));
            } else if ty.is_fifo() {
                return Err(self.refuse(&name, "fifos are not allowed in a release"));
            } else if ty.is_gnu_sparse() {
                return Err(self.refuse(&name, "sparse files are not supported"));
            } else {
                return Err(self.refuse(
                    &name,
                    format!("unsupported entry type {:?}", ty.as_byte() as char),
                ));
            }
        }
        // Read the rest of the compressed stream so that its checksum (gzip CRC,
        // zstd content checksum) is verified.
        let mut rest = archive.into_inner().take(self.limits.max_bytes);
        io::copy(&mut rest, &mut io::sink()).map_err(|e| self.unreadable("(end of archive)", e))?;
        Ok(())
    }

    /// Whether `rel` is a regular file in the staging directory reached through
    /// real directories only.
    fn is_staged_file(&self, rel: &Path) -> bool {
        if rel.as_os_str().is_empty() {
            return false;
        }
        let mut p = self.staging.to_path_buf();
        let n = rel.components().count();
        for (i, comp) in rel.iter().enumerate() {
            p.push(comp);
            let Ok(m) = fs::symlink_metadata(&p) else {
                return false;
            };
            let ok = if i + 1 == n { m.is_file() } else { m.is_dir() };
            if !ok {
                return false;
            }
        }
        true
    }

    /// Checks every symlink of the release physically: following the other
    /// symlinks of the release, none may lead outside it.
    pub(super) fn verify_links(&self) -> Result<(), ReleaseError> {
        for (rel, name) in &self.links {
            check_link_resolution(self.staging, rel).map_err(|r| self.refuse(name, r))?;
        }
        Ok(())
    }

    /// Gives every directory its final mode, deepest first (synced with the
    /// rest of the tree by the caller).
    pub(super) fn finish_dirs(&self) -> Result<(), ReleaseError> {
        for (rel, mode) in self.dirs.iter().rev() {
            let p = self.staging.join(rel);
            let dir = File::open(&p).map_err(io_err("open directory", &p))?;
            dir.set_permissions(fs::Permissions::from_mode(*mode))
                .map_err(io_err("set permissions of", &p))?;
        }
        Ok(())
    }
}

/// Gives a staged file (open for writing, at `dst`) its permission bits and,
/// best effort, its modification time (keeping it helps caches; it is not
/// required).
fn set_mode_and_time(
    file: &File,
    dst: &Path,
    mode: u32,
    mtime: Option<SystemTime>,
) -> Result<(), ReleaseError> {
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("set permissions of", dst))?;
    if let Some(t) = mtime {
        let _ = file.set_modified(t);
    }
    Ok(())
}

/// A reader that hashes what passes through it.
struct HashingReader<'r> {
    inner: &'r mut dyn Read,
    hasher: sha2::Sha256,
}

impl<'r> HashingReader<'r> {
    fn new(inner: &'r mut dyn Read) -> Self {
        HashingReader {
            inner,
            hasher: sha2::Digest::new(),
        }
    }

    fn finish(self) -> Hash {
        sha2::Digest::finalize(self.hasher).into()
    }
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }
}
