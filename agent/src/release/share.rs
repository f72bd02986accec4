//! What a new release shares with the one it follows: the file index kept
//! beside each release (`releases/.index-<version>`: size, mode, inode,
//! times and SHA-256 of every regular file, written when it is staged), the
//! unchanged check (same size, mode and content hash) and the sharing
//! itself: a reflink (`FICLONE`) where the file system has them, else a hard
//! link when the app allows it (`link_unchanged`), else a kernel-side copy
//! (`copy_file_range`).
//!
//! The index is a cache, never the truth: an entry whose file changed since
//! (another size, inode, modification or change time) or that cannot be
//! read is not trusted, and the file is hashed instead. The index of a
//! release staged from a directory also says what that directory's files
//! were when they were read (device, inode, size, mode, times, hash): the
//! next deploy from it takes the hash of a source file whose metadata still
//! match instead of reading it (the quick check of git and rsync; files
//! changed less than `RACY` before a deploy are never remembered, since a
//! later change within their times' granularity would not show). Must
//! never write into the previous release (only read it and link to it).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{FileStat, SFlag};

pub(super) use crate::fsutil::{hex, sha256_of, Sha256Sum as Hash};

use super::stage::{open_below, open_file_below};
use super::Version;

/// Names of the index files in `releases/`: `.index-<version>`.
pub(super) const INDEX_PREFIX: &str = ".index-";
/// Largest index read (a release of 100,000 files has one of about 30 MiB
/// with its source's records).
const MAX_INDEX: u64 = 64 * 1024 * 1024;
/// The record that starts the source's part of an index: `source-files <dev>`.
const SOURCE_MARK: &[u8] = b"source-files";
/// How long before a deploy a source file must have last changed for the
/// next deploy to trust its recorded hash (coarser than any file system's
/// timestamp granularity).
pub(super) const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// What the index says of one regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Indexed {
    pub hash: Hash,
    pub size: u64,
    pub mode: u32,
    pub ino: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Indexed {
    pub(super) fn of(meta: &fs::Metadata, hash: Hash) -> Self {
        Indexed {
            hash,
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The same from a `stat(2)` record (a directory listing's `fstatat`).
    pub(super) fn of_stat(st: &FileStat, hash: Hash) -> Self {
        Indexed {
            hash,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
            ino: st.st_ino,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// Whether `meta` is still the file this entry describes.
    fn still(&self, meta: &fs::Metadata) -> bool {
        Indexed::of(meta, self.hash) == *self
    }

    fn still_stat(&self, st: &FileStat) -> bool {
        Indexed::of_stat(st, self.hash) == *self
    }
}

/// The path of release `v`'s index.
pub(super) fn index_path(releases: &Path, v: &Version) -> PathBuf {
    releases.join(format!("{INDEX_PREFIX}{}", v.as_str()))
}

/// What an index file holds.
#[derive(Debug, Default)]
pub(super) struct IndexFile {
    /// The release's regular files.
    pub files: HashMap<PathBuf, Indexed>,
    /// When it was staged from a directory: that directory's device and its
    /// regular files as they were read.
    pub sources: Option<(u64, HashMap<PathBuf, Indexed>)>,
}

/// Reads an index; a missing or unreadable one is empty, a damaged record
/// is skipped (nothing in it is trusted without a match on the file), and a
/// damaged source mark drops the source's part.
pub(super) fn read_index(path: &Path) -> IndexFile {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|f| f.take(MAX_INDEX).read_to_end(&mut bytes));
    let mut out = IndexFile::default();
    if read.is_err() {
        return out;
    }
    let mut in_sources = false;
    for rec in bytes.split(|b| *b == 0) {
        if let Some(rest) = rec.strip_prefix(SOURCE_MARK) {
            in_sources = true;
            out.sources = std::str::from_utf8(rest)
                .ok()
                .and_then(|d| d.trim().parse().ok())
                .map(|dev| (dev, HashMap::new()));
            continue;
        }
        let Some((path, entry)) = parse_record(rec) else {
            continue;
        };
        match (&mut out.sources, in_sources) {
            (_, false) => {
                out.files.insert(path, entry);
            }
            (Some((_, sources)), true) => {
                sources.insert(path, entry);
            }
            (None, true) => {}
        }
    }
    out
}

/// One record: `<hex sha256> <size> <mode> <ino> <mtime> <ctime> <path>`,
/// times as `<seconds>.<nanoseconds>`.
fn parse_record(rec: &[u8]) -> Option<(PathBuf, Indexed)> {
    let mut parts = rec.splitn(7, |b| *b == b' ');
    let mut field = || std::str::from_utf8(parts.next()?).ok().map(str::to_owned);
    let hex = field()?;
    let size = field()?.parse().ok()?;
    let mode = u32::from_str_radix(&field()?, 8).ok()?;
    let ino = field()?.parse().ok()?;
    let time = |t: String| -> Option<(i64, i64)> {
        let (s, ns) = t.split_once('.')?;
        Some((s.parse().ok()?, ns.parse().ok()?))
    };
    let mtime = time(field()?)?;
    let ctime = time(field()?)?;
    let path = parts.next()?;
    if path.is_empty() || hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    let entry = Indexed {
        hash,
        size,
        mode,
        ino,
        mtime,
        ctime,
    };
    Some((PathBuf::from(OsStr::from_bytes(path)), entry))
}

/// Writes an index in one piece: to `tmp`, renamed to `target` (made
/// durable with the release by the caller's `syncfs`); `sources`, the
/// directory's device and files when the release came from one.
pub(super) fn write_index(
    tmp: &Path,
    target: &Path,
    entries: &[(PathBuf, Indexed)],
    sources: Option<(u64, &[(PathBuf, Indexed)])>,
) -> io::Result<()> {
    let count = entries.len() + sources.map_or(0, |s| s.1.len());
    let mut text = Vec::with_capacity(count * 160);
    let records = |text: &mut Vec<u8>, entries: &[(PathBuf, Indexed)]| -> io::Result<()> {
        for (path, e) in entries {
            write!(
                text,
                "{} {} {:o} {} {}.{} {}.{} ",
                hex(&e.hash),
                e.size,
                e.mode,
                e.ino,
                e.mtime.0,
                e.mtime.1,
                e.ctime.0,
                e.ctime.1
            )?;
            text.extend_from_slice(path.as_os_str().as_bytes());
            text.push(0);
        }
        Ok(())
    };
    records(&mut text, entries)?;
    if let Some((dev, files)) = sources {
        text.extend_from_slice(SOURCE_MARK);
        write!(text, " {dev}")?;
        text.push(0);
        records(&mut text, files)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(&text)?;
    drop(f);
    fs::rename(tmp, target)
}

/// How an unchanged file came into the new release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shared {
    /// Its extents are the previous release's (`FICLONE`).
    Reflink,
    /// It is the previous release's inode (`link_unchanged`).
    HardLink,
    /// Copied in the kernel from the previous release.
    Copy,
}

/// The release a new one follows, opened for reading.
pub(super) struct Base {
    root: File,
    index: IndexFile,
    /// The directory of the last candidate: files come directory by
    /// directory, so most lookups reuse it instead of walking the path.
    last_dir: std::cell::RefCell<Option<(PathBuf, std::sync::Arc<OwnedFd>)>>,
    /// Cleared when a reflink failed: the file system has none, and hard
    /// links need no trial file (created and removed) each.
    reflinks: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Base {
    /// Release `v` in `releases/`, with its index (possibly empty).
    pub(super) fn open(releases: &Path, v: &Version) -> Option<Base> {
        let root = File::open(releases.join(v.as_str())).ok()?;
        Some(Base {
            root,
            index: read_index(&index_path(releases, v)),
            last_dir: Default::default(),
            reflinks: std::rc::Rc::new(std::cell::Cell::new(true)),
        })
    }

    /// The previous release's `rel` when it is a regular file of `size`
    /// bytes and permission bits `mode`: its directory's descriptor and its
    /// hash (from the index when the index still describes it, else read
    /// now; only then is the file opened here). `None` when it cannot be
    /// the same file.
    pub(super) fn candidate(&self, rel: &Path, size: u64, mode: u32) -> Option<Candidate> {
        let name = rel.file_name()?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = {
            let mut last = self.last_dir.borrow_mut();
            match &*last {
                Some((p, fd)) if p == parent => fd.clone(),
                _ => {
                    let fd = std::sync::Arc::new(open_below(&self.root, parent).ok()?);
                    *last = Some((parent.to_path_buf(), fd.clone()));
                    fd
                }
            }
        };
        let st =
            nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()?;
        let regular = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
        if !regular || u64::try_from(st.st_size).ok()? != size || st.st_mode & 0o7777 != mode {
            return None;
        }
        let indexed = self.index.files.get(rel).filter(|e| e.still_stat(&st));
        let (hash, file) = match indexed {
            Some(e) => (e.hash, None),
            None => {
                let mut file = open_file_below(&dir, name).ok()?;
                let meta = file.metadata().ok()?;
                if !meta.is_file() || meta.len() != size || meta.mode() & 0o7777 != mode {
                    return None;
                }
                (
                    sha256_of(&mut file, size.saturating_add(1)).ok()?.0,
                    Some(file),
                )
            }
        };
        Some(Candidate {
            reflinks: self.reflinks.clone(),
            dir,
            name: name.to_os_string(),
            file,
            hash,
            size,
        })
    }

    /// The hash of source file `rel` when the directory this release was
    /// staged from had it with exactly these metadata (`meta`, read from
    /// the open source file): the file has not changed since it was read.
    pub(super) fn known_source(&self, rel: &Path, meta: &fs::Metadata) -> Option<Hash> {
        let (dev, sources) = self.index.sources.as_ref()?;
        if meta.dev() != *dev {
            return None;
        }
        sources.get(rel).filter(|e| e.still(meta)).map(|e| e.hash)
    }

    /// The same from the `stat(2)` of the source's listing, so that an
    /// unchanged file is shared without being opened.
    pub(super) fn known_source_stat(&self, rel: &Path, st: &FileStat) -> Option<Hash> {
        let (dev, sources) = self.index.sources.as_ref()?;
        if st.st_dev != *dev {
            return None;
        }
        sources
            .get(rel)
            .filter(|e| e.still_stat(st))
            .map(|e| e.hash)
    }
}

/// A file of the previous release that may be shared.
pub(super) struct Candidate {
    /// The base's: whether reflinks may work here.
    reflinks: std::rc::Rc<std::cell::Cell<bool>>,
    dir: std::sync::Arc<OwnedFd>,
    name: std::ffi::OsString,
    /// Open only if it had to be read for its hash.
    file: Option<File>,
    pub hash: Hash,
    pub size: u64,
}

impl Candidate {
    fn file(&mut self) -> io::Result<&mut File> {
        match &mut self.file {
            Some(f) => Ok(f),
            slot => Ok(slot.insert(open_file_below(&self.dir, &self.name)?)),
        }
    }

    /// Puts this file at `dst` (which must not exist): a reflink, else a
    /// hard link if `link_ok`, else a copy. The caller sets the mode and
    /// times of a reflink or copy.
    pub(super) fn share(&mut self, dst: &Path, link_ok: bool) -> io::Result<Shared> {
        if link_ok && !self.reflinks.get() {
            return self.link(dst);
        }
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)?;
        if !link_ok {
            return Ok(
                match crate::fsutil::clone_or_copy(self.file()?, &mut out)? {
                    true => Shared::Reflink,
                    false => Shared::Copy,
                },
            );
        }
        if reflink_copy::reflink_file(&*self.file()?, &out).is_ok() {
            return Ok(Shared::Reflink);
        }
        self.reflinks.set(false);
        drop(out);
        fs::remove_file(dst)?;
        self.link(dst)
    }

    fn link(&self, dst: &Path) -> io::Result<Shared> {
        nix::unistd::linkat(
            self.dir.as_fd(),
            self.name.as_os_str(),
            nix::fcntl::AT_FDCWD,
            dst,
            nix::fcntl::AtFlags::empty(),
        )?;
        Ok(Shared::HardLink)
    }
}
