//! The content digest of a release: one SHA-256 over every entry's path,
//! kind, permission bits and content (a file's bytes, a link's target), so
//! that two hosts can prove they run the same bits whatever the source was
//! (a directory or either archive format) and whenever it was staged.
//!
//! The text hashed is one line per entry below the root, in byte order of
//! the paths: `<kind> <mode in octal> <path>\0<sha256 of the content, or the
//! link target>\n`, kind being `d`, `f` or `l`. Times, owners and the
//! root's own metadata are left out: staging sets them. Shown as
//! `sha256:<hex>`.
//!
//! Reads only; must never change the tree.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::share::{hex, sha256_of, Hash, Indexed};
use super::{io_err, ReleaseError};

/// The digest of the tree at `root`, `sha256:<hex>`.
pub fn tree_digest(root: &Path) -> Result<String, ReleaseError> {
    digest_and_index(root, &HashMap::new()).map(|(digest, _)| digest)
}

/// The digest of the tree at `root`, taking a regular file's content hash
/// from `known` (by path below `root`) where it is there and reading the
/// file otherwise; and the index entry of every regular file.
pub(super) fn digest_and_index(
    root: &Path,
    known: &HashMap<PathBuf, Hash>,
) -> Result<(String, Vec<(PathBuf, Indexed)>), ReleaseError> {
    let mut index = Vec::new();
    let mut listing = Sha256::new();
    let mut pending = vec![Vec::<u8>::new()];
    let mut entries: Vec<Vec<u8>> = Vec::new();
    // Every path first (so that the order is the paths' byte order), then
    // their lines.
    while let Some(dir) = pending.pop() {
        let path = root.join(std::ffi::OsStr::from_bytes(&dir));
        for entry in fs::read_dir(&path).map_err(io_err("list", &path))? {
            let entry = entry.map_err(io_err("list", &path))?;
            let mut rel = dir.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(entry.file_name().as_bytes());
            let kind = entry
                .file_type()
                .map_err(io_err("inspect", &entry.path()))?;
            if kind.is_dir() {
                pending.push(rel.clone());
            }
            entries.push(rel);
        }
    }
    entries.sort_unstable();
    for rel in entries {
        let path = root.join(std::ffi::OsStr::from_bytes(&rel));
        let meta = fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
        let mode = meta.permissions().mode() & 0o7777;
        let (kind, content) = if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("read link", &path))?;
            ('l', target.as_os_str().as_bytes().to_vec())
        } else if meta.is_dir() {
            ('d', Vec::new())
        } else if meta.is_file() {
            let rel_path = PathBuf::from(std::ffi::OsStr::from_bytes(&rel));
            let hash = match known.get(&rel_path) {
                Some(h) => *h,
                None => {
                    let mut file = File::open(&path).map_err(io_err("open", &path))?;
                    sha256_of(&mut file, u64::MAX)
                        .map_err(io_err("read", &path))?
                        .0
                }
            };
            index.push((rel_path, Indexed::of(&meta, hash)));
            ('f', hex(&hash).into_bytes())
        } else {
            return Err(ReleaseError::Source {
                path,
                reason: "not a file, directory or symlink".into(),
            });
        };
        listing.update(format!("{kind} {mode:o} ").as_bytes());
        listing.update(&rel);
        listing.update(b"\0");
        listing.update(&content);
        listing.update(b"\n");
    }
    Ok((format!("sha256:{:x}", listing.finalize()), index))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(dir: &Path, files: &[(&str, &str, u32)]) {
        for (name, body, mode) in files {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, body).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
        }
    }

    #[test]
    fn the_digest_covers_paths_modes_contents_and_links() {
        let files = [
            ("app.py", "print('hi')\n", 0o755),
            ("lib/a.py", "A", 0o644),
            ("lib/b.py", "B", 0o644),
        ];
        let one = tempfile::tempdir().unwrap();
        tree(one.path(), &files);
        symlink("lib/a.py", one.path().join("main")).unwrap();
        let base = tree_digest(one.path()).unwrap();
        assert!(
            base.starts_with("sha256:") && base.len() == 7 + 64,
            "{base}"
        );

        // The same content made in another order, at another time: the same.
        let two = tempfile::tempdir().unwrap();
        symlink("lib/a.py", two.path().join("main")).unwrap();
        let mut reversed = files;
        reversed.reverse();
        tree(two.path(), &reversed);
        assert_eq!(tree_digest(two.path()).unwrap(), base);

        // Each kind of difference shows.
        let changed = |f: &dyn Fn(&Path)| {
            let t = tempfile::tempdir().unwrap();
            tree(t.path(), &files);
            symlink("lib/a.py", t.path().join("main")).unwrap();
            f(t.path());
            tree_digest(t.path()).unwrap()
        };
        for (what, digest) in [
            (
                "content",
                changed(&|p| fs::write(p.join("lib/b.py"), "b").unwrap()),
            ),
            (
                "mode",
                changed(&|p| {
                    fs::set_permissions(p.join("app.py"), fs::Permissions::from_mode(0o644))
                        .unwrap()
                }),
            ),
            (
                "name",
                changed(&|p| fs::rename(p.join("lib/b.py"), p.join("lib/c.py")).unwrap()),
            ),
            (
                "link",
                changed(&|p| {
                    fs::remove_file(p.join("main")).unwrap();
                    symlink("lib/b.py", p.join("main")).unwrap();
                }),
            ),
            (
                "empty dir",
                changed(&|p| fs::create_dir(p.join("data")).unwrap()),
            ),
        ] {
            assert_ne!(digest, base, "{what}");
        }
        // A file and a directory of the same name and the names of files
        // moved between directories cannot collide: paths are whole.
        let a = tempfile::tempdir().unwrap();
        tree(a.path(), &[("x/y", "1", 0o644)]);
        let b = tempfile::tempdir().unwrap();
        tree(b.path(), &[("x", "1", 0o644)]);
        assert_ne!(
            tree_digest(a.path()).unwrap(),
            tree_digest(b.path()).unwrap()
        );
    }
}
