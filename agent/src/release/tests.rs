//! The release module's unit tests: versions, staging, layout, manifests.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

#[test]
fn release_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let v = Version::parse("1.2.0").unwrap();
    assert_eq!(read_manifest(dir.path(), &v).unwrap(), None);
    std::fs::write(
        dir.path().join("release.toml"),
        "version = \"1.2.0\"\ncommit = \"9f2c1ab\"\ntag = \"v1.2.0\"\nsummary = \"faster price sync\"\n",
    )
    .unwrap();
    let m = read_manifest(dir.path(), &v).unwrap().unwrap();
    assert_eq!(m.commit.as_deref(), Some("9f2c1ab"));
    assert_eq!(m.summary.as_deref(), Some("faster price sync"));
    for (text, needle) in [
        ("version = \"1.3.0\"\n", "1.3.0"),
        ("comit = \"x\"\n", "comit"),
        ("commit = \"\"\n", "commit"),
        ("summary = 5\n", "summary"),
    ] {
        std::fs::write(dir.path().join("release.toml"), text).unwrap();
        let err = read_manifest(dir.path(), &v).unwrap_err().to_string();
        assert!(
            err.contains(needle) && err.contains("release.toml"),
            "{text}: {err}"
        );
    }
}

use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tar::{EntryType, Header};

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

/// A temp dir holding an app root `<tmp>/app` with its layout, plus room for sources.
fn app() -> (tempfile::TempDir, AppDir) {
    let tmp = tempfile::tempdir().unwrap();
    let app = AppDir::new(tmp.path().join("app"));
    app.ensure_layout().unwrap();
    (tmp, app)
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Names under releases/ starting with '.'.
/// Hidden entries of `releases/` other than the file index of a release
/// that exists: leftovers.
fn hidden_entries(app: &AppDir) -> Vec<String> {
    fs::read_dir(app.releases_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .filter(|n| {
            !n.strip_prefix(share::INDEX_PREFIX)
                .is_some_and(|v| app.releases_dir().join(v).is_dir())
        })
        .collect()
}

fn root_tmp_links(app: &AppDir) -> Vec<String> {
    fs::read_dir(app.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(CURRENT_TMP_PREFIX))
        .collect()
}

fn assert_no_trace(app: &AppDir, ver: &Version) {
    assert_eq!(
        hidden_entries(app),
        Vec::<String>::new(),
        "staging left behind"
    );
    assert!(
        fs::symlink_metadata(app.release_path(ver)).is_err(),
        "release directory exists"
    );
}

/// A release directory with a VERSION file, made directly (not via stage).
fn make_release(app: &AppDir, ver: &str) {
    let p = app.release_path(&v(ver));
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("VERSION"), ver).unwrap();
}

/// Header with raw name / link name bytes (bypasses tar's path validation).
fn raw_header(name: &[u8], ty: EntryType, size: u64, link: Option<&[u8]>) -> Header {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    }
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

/// Builds an uncompressed tar stream in memory.
type TarBuilder = tar::Builder<Vec<u8>>;

fn tar_bytes(build: impl FnOnce(&mut TarBuilder)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn write_targz(path: &Path, build: impl FnOnce(&mut TarBuilder)) {
    let mut enc =
        flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
    enc.write_all(&tar_bytes(build)).unwrap();
    enc.finish().unwrap().sync_all().unwrap();
}

/// Writes a `.tar.zst` with the zstd encoder (content checksum on, as the CLI does).
fn write_tarzst(path: &Path, build: impl FnOnce(&mut TarBuilder)) {
    let mut enc = zstd::stream::write::Encoder::new(File::create(path).unwrap(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(&tar_bytes(build)).unwrap();
    enc.finish().unwrap().sync_all().unwrap();
}

/// Writes the archive named `name` (its extension picks the codec).
fn write_archive(path: &Path, build: impl FnOnce(&mut TarBuilder)) {
    let name = path.to_string_lossy();
    if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
        write_tarzst(path, build);
    } else {
        write_targz(path, build);
    }
}

fn append_raw(b: &mut TarBuilder, name: &[u8], ty: EntryType, data: &[u8], link: Option<&[u8]>) {
    let h = raw_header(name, ty, data.len() as u64, link);
    b.append(&h, data).unwrap();
}

fn small_limits() -> StageLimits {
    StageLimits {
        max_entries: 5,
        max_bytes: 1000,
        ..StageLimits::default()
    }
}

#[test]
fn version_validation_table() {
    for good in [
        "1.0.0",
        "2024.11.26-rc1",
        "v1+build.5",
        "a_b",
        "1",
        &"x".repeat(128),
    ] {
        let parsed = Version::parse(good).unwrap();
        assert_eq!(parsed.as_str(), good);
        assert_eq!(parsed.to_string(), good);
        assert_eq!(good.parse::<Version>().unwrap(), parsed);
        assert_eq!(Version::try_from(good.to_owned()).unwrap(), parsed);
    }
    let long = "x".repeat(129);
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "../x",
        "a b",
        long.as_str(),
        "é",
        "/abs",
        "a\0b",
    ] {
        match Version::parse(bad) {
            Err(ReleaseError::InvalidVersion { version, reason }) => {
                assert_eq!(version, bad);
                assert!(!reason.is_empty());
            }
            other => panic!("{bad:?} accepted: {other:?}"),
        }
        assert!(Version::try_from(bad.to_owned()).is_err());
    }
    let e = Version::parse(".hidden").unwrap_err().to_string();
    assert!(e.contains("\".hidden\"") && e.contains("staging"), "{e}");
}

#[test]
fn version_serde_validates() {
    let ver: Version = serde_json::from_str("\"1.2.3\"").unwrap();
    assert_eq!(ver, v("1.2.3"));
    assert_eq!(serde_json::to_string(&ver).unwrap(), "\"1.2.3\"");
    assert!(serde_json::from_str::<Version>("\"../etc\"").is_err());
    assert!(serde_json::from_str::<Version>("\"..\"").is_err());
}

#[test]
fn ensure_layout_creates_missing_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let app = AppDir::new(tmp.path().join("a/b/app"));
    app.ensure_layout().unwrap();
    assert!(app.releases_dir().is_dir());
    app.ensure_layout().unwrap(); // idempotent
    assert_eq!(app.current().unwrap(), None);
    assert_eq!(app.list().unwrap(), Vec::<Version>::new());

    fs::write(tmp.path().join("file"), "x").unwrap();
    let bad = AppDir::new(tmp.path().join("file"));
    assert!(matches!(bad.ensure_layout(), Err(ReleaseError::Io(_))));
}

#[test]
fn activation_swaps_current_atomically() {
    let (_tmp, app) = app();
    make_release(&app, "1.0.0");
    make_release(&app, "2.0.0");
    assert_eq!(app.current().unwrap(), None);

    app.activate(&v("1.0.0")).unwrap();
    let link = app.current_link();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("releases/1.0.0"));
    assert_eq!(fs::read_to_string(link.join("VERSION")).unwrap(), "1.0.0");
    assert_eq!(app.current().unwrap(), Some(v("1.0.0")));
    assert!(root_tmp_links(&app).is_empty());

    app.activate(&v("2.0.0")).unwrap();
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("releases/2.0.0"));
    assert_eq!(app.current().unwrap(), Some(v("2.0.0")));
    assert!(root_tmp_links(&app).is_empty());

    // Re-activating the active version is harmless.
    app.activate(&v("2.0.0")).unwrap();
    assert_eq!(app.current().unwrap(), Some(v("2.0.0")));

    match app.activate(&v("9.9.9")) {
        Err(ReleaseError::NotFound { version, path }) => {
            assert_eq!(version, v("9.9.9"));
            assert_eq!(path, app.release_path(&v("9.9.9")));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("releases/2.0.0"));
    assert!(root_tmp_links(&app).is_empty());
}

#[test]
fn activation_refuses_to_replace_a_non_symlink_current() {
    let (_tmp, app) = app();
    make_release(&app, "1.0.0");
    fs::create_dir(app.current_link()).unwrap();
    fs::write(app.current_link().join("data"), "keep").unwrap();
    assert!(matches!(
        app.activate(&v("1.0.0")),
        Err(ReleaseError::CurrentInvalid { .. })
    ));
    assert_eq!(
        fs::read_to_string(app.current_link().join("data")).unwrap(),
        "keep"
    );
    assert!(root_tmp_links(&app).is_empty());
}

#[test]
fn reader_never_sees_current_missing_or_dangling() {
    let (_tmp, app) = app();
    make_release(&app, "a");
    make_release(&app, "b");
    app.activate(&v("a")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    // Two readers: a hot loop resolving `current` (stat through the link), and one
    // reading a file through it and checking `current()`.
    let readers: Vec<_> = (0..2)
        .map(|kind| {
            let (stop, reads, app) = (stop.clone(), reads.clone(), app.clone());
            std::thread::spawn(move || {
                let link = app.current_link();
                let marker = link.join("VERSION");
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if kind == 0 {
                        if let Err(e) = fs::metadata(&link) {
                            failures.push(format!("stat current: {e}"));
                        }
                    } else {
                        match fs::read_to_string(&marker) {
                            Ok(s) if s == "a" || s == "b" => {}
                            other => failures.push(format!("read: {other:?}")),
                        }
                        if let Err(e) = app.current() {
                            failures.push(format!("current(): {e}"));
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    // Start swapping only once the readers are running.
    while reads.load(Ordering::Relaxed) < 100 {
        std::thread::yield_now();
    }
    for i in 0..200 {
        let ver = if i % 2 == 0 { "b" } else { "a" };
        app.activate(&v(ver)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed reads, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(app.current().unwrap(), Some(v("a")));
    assert!(root_tmp_links(&app).is_empty());
}

#[test]
fn stage_from_directory_copies_content_permissions_links() {
    let (tmp, app) = app();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::create_dir_all(src.join("nested/deep")).unwrap();
    fs::write(src.join("a.txt"), "hello").unwrap();
    fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(src.join("bin/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("nested/deep/x"), "deep").unwrap();
    fs::set_permissions(src.join("nested"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("bin/run.sh", src.join("run")).unwrap();
    symlink("../../a.txt", src.join("nested/deep/up")).unwrap();
    symlink("missing-but-inside", src.join("dangling")).unwrap();

    let ver = v("1.0.0");
    let path = app.stage(&src, &ver, &StageLimits::default()).unwrap();
    assert_eq!(path, app.release_path(&ver));
    assert_eq!(fs::read_to_string(path.join("a.txt")).unwrap(), "hello");
    assert_eq!(mode_of(&path.join("a.txt")), 0o640);
    assert_eq!(mode_of(&path.join("bin/run.sh")), 0o755);
    assert_eq!(mode_of(&path.join("nested")), 0o750);
    assert_eq!(
        fs::read_to_string(path.join("nested/deep/x")).unwrap(),
        "deep"
    );
    assert_eq!(
        fs::read_link(path.join("run")).unwrap(),
        Path::new("bin/run.sh")
    );
    assert_eq!(
        fs::read_to_string(path.join("run")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        fs::read_link(path.join("nested/deep/up")).unwrap(),
        Path::new("../../a.txt")
    );
    assert_eq!(
        fs::read_to_string(path.join("nested/deep/up")).unwrap(),
        "hello"
    );
    assert!(fs::symlink_metadata(path.join("dangling"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(app.list().unwrap(), vec![ver.clone()]);
    assert!(app.exists(&ver));
    assert!(hidden_entries(&app).is_empty());
}

#[test]
fn stage_already_exists_leaves_release_untouched() {
    let (tmp, app) = app();
    let ver = v("1.0.0");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("f"), "first").unwrap();
    fs::write(b.join("f"), "second").unwrap();
    app.stage(&a, &ver, &StageLimits::default()).unwrap();
    match app.stage(&b, &ver, &StageLimits::default()) {
        Err(ReleaseError::AlreadyExists { version, path }) => {
            assert_eq!(version, ver);
            assert_eq!(path, app.release_path(&ver));
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        fs::read_to_string(app.release_path(&ver).join("f")).unwrap(),
        "first"
    );
    assert!(hidden_entries(&app).is_empty());
}

#[test]
fn publish_never_replaces_an_existing_release() {
    // The check after the work: the target appears while staging ran.
    let (_tmp, app) = app();
    let ver = v("1.0.0");
    for existing_is_empty in [false, true] {
        let target = app.release_path(&ver);
        fs::create_dir(&target).unwrap();
        if !existing_is_empty {
            fs::write(target.join("old"), "old").unwrap();
        }
        let staging = app.releases_dir().join(".staging-test");
        fs::create_dir(&staging).unwrap();
        fs::write(staging.join("new"), "new").unwrap();
        assert!(matches!(
            publish(&staging, &target, &ver),
            Err(ReleaseError::AlreadyExists { .. })
        ));
        assert!(!target.join("new").exists());
        assert_eq!(target.join("old").exists(), !existing_is_empty);
        fs::remove_dir_all(&staging).unwrap();
        fs::remove_dir_all(&target).unwrap();
    }
}

#[test]
fn stage_from_targz() {
    let (tmp, app) = app();
    let archive = tmp.path().join("rel.tar.gz");
    write_targz(&archive, |b| {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o750);
        h.set_size(0);
        b.append_data(&mut h, "app/", io::empty()).unwrap();
        let data = b"#!/bin/sh\nexit 0\n";
        let mut h = Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "app/bin/start", &data[..]).unwrap();
        let mut h = Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(6);
        b.append_data(&mut h, "./README", &b"readme"[..]).unwrap();
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "app/start", "bin/start").unwrap();
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "README.hard", "README").unwrap();
    });
    let ver = v("2024.11.26-rc1");
    let path = app.stage(&archive, &ver, &StageLimits::default()).unwrap();
    // The single top-level directory is not stripped.
    assert_eq!(mode_of(&path.join("app")), 0o750);
    assert_eq!(mode_of(&path.join("app/bin/start")), 0o755);
    assert_eq!(
        fs::read_to_string(path.join("app/bin/start")).unwrap(),
        "#!/bin/sh\nexit 0\n"
    );
    assert_eq!(mode_of(&path.join("README")), 0o644);
    assert_eq!(
        fs::read_link(path.join("app/start")).unwrap(),
        Path::new("bin/start")
    );
    assert_eq!(
        fs::read_to_string(path.join("README.hard")).unwrap(),
        "readme"
    );
    assert!(hidden_entries(&app).is_empty());
    assert_eq!(app.list().unwrap(), vec![ver]);
}

/// Stages the archive built by `build`, once as `.tgz` and once as `.tar.zst`
/// (the same validation must hold for both), and expects it refused naming `entry`.
fn assert_archive_refused(limits: &StageLimits, entry: &str, build: impl Fn(&mut TarBuilder)) {
    for name in ["bad.tgz", "bad.tar.zst"] {
        assert_archive_refused_as(limits, entry, name, &build);
    }
}

fn assert_archive_refused_as(
    limits: &StageLimits,
    entry: &str,
    file_name: &str,
    build: &dyn Fn(&mut TarBuilder),
) {
    let (tmp, app) = app();
    let archive = tmp.path().join(file_name);
    write_archive(&archive, build);
    let ver = v("1.0.0");
    match app.stage(&archive, &ver, limits) {
        Err(e @ ReleaseError::Archive { .. }) => {
            let ReleaseError::Archive {
                path, entry: got, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(got, entry, "{e}");
            assert_eq!(path, &archive);
            assert!(e.to_string().contains(entry), "{e}");
        }
        other => panic!("{file_name} with {entry:?} not refused as expected: {other:?}"),
    }
    assert_no_trace(&app, &ver);
    assert!(!tmp.path().join("evil").exists());
}

fn ok_file(b: &mut TarBuilder, name: &str) {
    let mut h = Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(2);
    b.append_data(&mut h, name, &b"ok"[..]).unwrap();
}

#[test]
fn archive_with_parent_path_is_refused() {
    assert_archive_refused(&StageLimits::default(), "../evil", |b| {
        ok_file(b, "fine");
        append_raw(b, b"../evil", EntryType::Regular, b"pwned", None);
    });
    assert_archive_refused(&StageLimits::default(), "a/../../evil", |b| {
        append_raw(b, b"a/../../evil", EntryType::Regular, b"pwned", None);
    });
}

#[test]
fn archive_with_absolute_path_is_refused() {
    assert_archive_refused(&StageLimits::default(), "/abs", |b| {
        ok_file(b, "fine");
        append_raw(b, b"/abs", EntryType::Regular, b"pwned", None);
    });
}

#[test]
fn archive_with_escaping_symlinks_is_refused() {
    assert_archive_refused(&StageLimits::default(), "etc/pw", |b| {
        append_raw(
            b,
            b"etc/pw",
            EntryType::Symlink,
            b"",
            Some(b"../../etc/passwd"),
        );
    });
    assert_archive_refused(&StageLimits::default(), "pw", |b| {
        append_raw(b, b"pw", EntryType::Symlink, b"", Some(b"/etc/passwd"));
    });
    // Lexically inside, physically outside: d/y -> .. is the root, d/z -> y/.. climbs above it.
    assert_archive_refused(&StageLimits::default(), "d/z", |b| {
        append_raw(b, b"d/y", EntryType::Symlink, b"", Some(b".."));
        append_raw(b, b"d/z", EntryType::Symlink, b"", Some(b"y/.."));
    });
    // Writing through a symlink created by an earlier entry.
    assert_archive_refused(&StageLimits::default(), "l/evil", |b| {
        append_raw(b, b"sub/x", EntryType::Regular, b"x", None);
        append_raw(b, b"l", EntryType::Symlink, b"", Some(b"sub"));
        append_raw(b, b"l/evil", EntryType::Regular, b"x", None);
    });
}

#[test]
fn archive_with_escaping_hardlinks_is_refused() {
    assert_archive_refused(&StageLimits::default(), "h", |b| {
        append_raw(b, b"h", EntryType::Link, b"", Some(b"../outside"));
    });
    assert_archive_refused(&StageLimits::default(), "h2", |b| {
        append_raw(b, b"h2", EntryType::Link, b"", Some(b"/etc/passwd"));
    });
    // A hard link to a symlink pointing outside would not be caught by link checks.
    assert_archive_refused(&StageLimits::default(), "h3", |b| {
        append_raw(b, b"s", EntryType::Symlink, b"", Some(b"x"));
        append_raw(b, b"h3", EntryType::Link, b"", Some(b"s"));
    });
}

#[test]
fn archive_with_device_or_fifo_is_refused() {
    assert_archive_refused(&StageLimits::default(), "dev/null", |b| {
        let mut h = raw_header(b"dev/null", EntryType::Char, 0, None);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    });
    assert_archive_refused(&StageLimits::default(), "pipe", |b| {
        append_raw(b, b"pipe", EntryType::Fifo, b"", None);
    });
}

#[test]
fn archive_over_limits_is_refused() {
    assert_archive_refused(&small_limits(), "f6", |b| {
        for i in 1..=8 {
            ok_file(b, &format!("f{i}"));
        }
    });
    assert_archive_refused(&small_limits(), "big2", |b| {
        let data = vec![7u8; 600];
        for name in ["big1", "big2"] {
            let mut h = Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
    });
}

#[test]
fn archive_at_limits_is_accepted() {
    let (tmp, app) = app();
    let archive = tmp.path().join("ok.tgz");
    write_targz(&archive, |b| {
        let data = vec![7u8; 500];
        for name in ["big1", "big2"] {
            let mut h = Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
    });
    app.stage(&archive, &v("1"), &small_limits()).unwrap();
}

#[test]
fn corrupt_archive_is_refused_without_trace() {
    let (tmp, app) = app();
    let archive = tmp.path().join("junk.tar.gz");
    fs::write(&archive, b"this is not gzip").unwrap();
    assert!(matches!(
        app.stage(&archive, &v("1"), &StageLimits::default()),
        Err(ReleaseError::Archive { .. })
    ));
    assert_no_trace(&app, &v("1"));
}

#[test]
fn directory_with_escaping_symlink_is_refused() {
    for (link, target) in [("evil", "../../outside"), ("sub/abs", "/etc/passwd")] {
        let (tmp, app) = app();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("ok"), "ok").unwrap();
        symlink(target, src.join(link)).unwrap();
        match app.stage(&src, &v("1.0.0"), &StageLimits::default()) {
            Err(ReleaseError::Source { path, reason }) => {
                assert_eq!(path, src.join(link), "{reason}");
            }
            other => panic!("link {link} -> {target} not refused: {other:?}"),
        }
        assert_no_trace(&app, &v("1.0.0"));
    }
}

#[test]
fn directory_with_fifo_is_refused() {
    let (tmp, app) = app();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    nix::unistd::mkfifo(&src.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    match app.stage(&src, &v("1"), &StageLimits::default()) {
        Err(ReleaseError::Source { path, .. }) => assert_eq!(path, src.join("pipe")),
        other => panic!("fifo not refused: {other:?}"),
    }
    assert_no_trace(&app, &v("1"));
}

#[test]
fn unsupported_or_missing_source_is_refused() {
    let (tmp, app) = app();
    let zip = tmp.path().join("release.zip");
    fs::write(&zip, "PK").unwrap();
    let missing = tmp.path().join("nope.tar.gz");
    for src in [&zip, &missing] {
        match app.stage(src, &v("1"), &StageLimits::default()) {
            Err(ReleaseError::Source { path, .. }) => assert_eq!(&path, src),
            other => panic!("{} not refused: {other:?}", src.display()),
        }
        assert_no_trace(&app, &v("1"));
    }
    // The app root itself (contains releases/) cannot be a source.
    assert!(matches!(
        app.stage(app.root(), &v("1"), &StageLimits::default()),
        Err(ReleaseError::Source { .. })
    ));
    assert_no_trace(&app, &v("1"));
}

#[test]
fn clean_leftovers_removes_crafted_leftovers() {
    let (_tmp, app) = app();
    make_release(&app, "1.0.0");
    app.activate(&v("1.0.0")).unwrap();
    let tmp_link = app.root().join("current.tmp-deadbeef");
    symlink("releases/1.0.0", &tmp_link).unwrap();
    let staging = app.releases_dir().join(".staging-0123");
    fs::create_dir_all(staging.join("sub")).unwrap();
    fs::write(staging.join("sub/f"), "x").unwrap();
    fs::set_permissions(staging.join("sub"), fs::Permissions::from_mode(0o500)).unwrap();
    let removing = app.releases_dir().join(".removing-42");
    fs::create_dir_all(&removing).unwrap();

    let mut expected = vec![tmp_link, staging, removing];
    expected.sort();
    assert_eq!(app.clean_leftovers().unwrap(), expected);
    for p in &expected {
        assert!(fs::symlink_metadata(p).is_err(), "{} left", p.display());
    }
    assert_eq!(app.current().unwrap(), Some(v("1.0.0")));
    assert_eq!(app.list().unwrap(), vec![v("1.0.0")]);
    assert_eq!(app.clean_leftovers().unwrap(), Vec::<PathBuf>::new());
}

#[test]
fn current_rejects_invalid_links() {
    let (_tmp, app) = app();
    make_release(&app, "1.0.0");
    let link = app.current_link();

    fs::write(&link, "not a link").unwrap();
    assert!(matches!(
        app.current(),
        Err(ReleaseError::CurrentInvalid { .. })
    ));
    fs::remove_file(&link).unwrap();

    for bad in [
        "/etc",
        "releases/../releases/1.0.0",
        "elsewhere/1.0.0",
        "releases",
        "releases/missing",
        "releases/.staging-x",
    ] {
        symlink(bad, &link).unwrap();
        match app.current() {
            Err(ReleaseError::CurrentInvalid { path, reason }) => {
                assert_eq!(path, link);
                assert!(!reason.is_empty());
            }
            other => panic!("current -> {bad} accepted: {other:?}"),
        }
        fs::remove_file(&link).unwrap();
    }

    // Absolute links into releases/ are understood.
    symlink(app.release_path(&v("1.0.0")), &link).unwrap();
    assert_eq!(app.current().unwrap(), Some(v("1.0.0")));
}

#[test]
fn list_skips_hidden_files_and_invalid_names() {
    let (_tmp, app) = app();
    make_release(&app, "2.0.0");
    make_release(&app, "1.0.0");
    fs::create_dir(app.releases_dir().join(".staging-1")).unwrap();
    fs::create_dir(app.releases_dir().join("not valid")).unwrap();
    fs::write(app.releases_dir().join("3.0.0"), "a file").unwrap();
    symlink("1.0.0", app.releases_dir().join("4.0.0")).unwrap();
    assert_eq!(app.list().unwrap(), vec![v("1.0.0"), v("2.0.0")]);
    assert!(!app.exists(&v("3.0.0")));
    assert!(!app.exists(&v("4.0.0")));
}

#[test]
fn remove_refuses_active_and_removes_others() {
    let (_tmp, app) = app();
    make_release(&app, "1.0.0");
    make_release(&app, "2.0.0");
    app.activate(&v("2.0.0")).unwrap();
    assert!(matches!(
        app.remove(&v("2.0.0")),
        Err(ReleaseError::Active { .. })
    ));
    assert!(app.exists(&v("2.0.0")));
    app.remove(&v("1.0.0")).unwrap();
    assert_eq!(app.list().unwrap(), vec![v("2.0.0")]);
    assert!(hidden_entries(&app).is_empty());
    assert!(matches!(
        app.remove(&v("1.0.0")),
        Err(ReleaseError::NotFound { .. })
    ));
}

/// Entries of a small release with a directory, an executable, a symlink and a
/// hard link.
fn sample_release(b: &mut TarBuilder) {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Directory);
    h.set_mode(0o750);
    h.set_size(0);
    b.append_data(&mut h, "app/", io::empty()).unwrap();
    let data = b"#!/bin/sh\nexit 0\n";
    let mut h = Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "app/bin/start", &data[..]).unwrap();
    ok_file(b, "README");
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "app/start", "bin/start").unwrap();
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "README.hard", "README").unwrap();
}

#[test]
fn stage_from_tarzst_and_tzst() {
    for name in ["rel.tar.zst", "rel.tzst"] {
        let (tmp, app) = app();
        let archive = tmp.path().join(name);
        write_tarzst(&archive, sample_release);
        let ver = v("3.1.4");
        let path = app.stage(&archive, &ver, &StageLimits::default()).unwrap();
        assert_eq!(mode_of(&path.join("app")), 0o750, "{name}");
        assert_eq!(mode_of(&path.join("app/bin/start")), 0o755);
        assert_eq!(
            fs::read_to_string(path.join("app/bin/start")).unwrap(),
            "#!/bin/sh\nexit 0\n"
        );
        assert_eq!(fs::read_to_string(path.join("README")).unwrap(), "ok");
        assert_eq!(
            fs::read_link(path.join("app/start")).unwrap(),
            Path::new("bin/start")
        );
        assert_eq!(fs::read_to_string(path.join("README.hard")).unwrap(), "ok");
        assert!(hidden_entries(&app).is_empty());
        assert_eq!(app.list().unwrap(), vec![ver]);
    }
}

#[test]
fn tarzst_with_parent_path_is_refused_without_trace() {
    // Also covered for every hostile case by assert_archive_refused; spelled out
    // here for the zstd decoder alone.
    let build = |b: &mut TarBuilder| {
        ok_file(b, "fine");
        append_raw(b, b"../x", EntryType::Regular, b"pwned", None);
    };
    assert_archive_refused_as(&StageLimits::default(), "../x", "bad.tar.zst", &build);
}

#[test]
fn corrupt_tarzst_is_refused_without_trace() {
    let (tmp, app) = app();
    let junk = tmp.path().join("junk.tar.zst");
    fs::write(&junk, b"this is not zstd at all").unwrap();
    // A valid archive with one flipped byte in the middle of the frame.
    let flipped = tmp.path().join("flipped.tzst");
    write_tarzst(&flipped, |b| {
        for i in 0..4 {
            ok_file(b, &format!("f{i}"));
        }
    });
    let mut bytes = fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&flipped, &bytes).unwrap();
    for archive in [&junk, &flipped] {
        match app.stage(archive, &v("1"), &StageLimits::default()) {
            Err(ReleaseError::Archive { path, .. }) => assert_eq!(&path, archive),
            other => panic!("{} not refused: {other:?}", archive.display()),
        }
        assert_no_trace(&app, &v("1"));
    }
}

/// Bytes that do not compress, so that truncating the archive cuts file content.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn archive_failing_midway_leaves_no_trace() {
    // The decoder fails while a file's content is being written, after other
    // entries were already unpacked: a failure independent of StageLimits.
    for name in ["cut.tar.gz", "cut.tar.zst"] {
        let (tmp, app) = app();
        make_release(&app, "1.0.0");
        app.activate(&v("1.0.0")).unwrap();
        let archive = tmp.path().join(name);
        let data = noise(256 * 1024);
        write_archive(&archive, |b| {
            ok_file(b, "first");
            let mut h = Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, "big", &data[..]).unwrap();
        });
        let len = fs::metadata(&archive).unwrap().len();
        File::options()
            .write(true)
            .open(&archive)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        match app.stage(&archive, &v("2.0.0"), &StageLimits::default()) {
            Err(e @ ReleaseError::Archive { .. }) => {
                assert!(e.to_string().contains("cannot read the archive"), "{e}");
            }
            other => panic!("{name} cut midway not refused: {other:?}"),
        }
        assert_no_trace(&app, &v("2.0.0"));
        assert_eq!(app.current().unwrap(), Some(v("1.0.0")));
    }
}

/// Runs `f` with writes of file content failing with ENOSPC after `bytes`.
fn with_disk_full_after<T>(bytes: u64, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FAIL_WRITES_AFTER.set(None);
        }
    }
    let _reset = Reset;
    FAIL_WRITES_AFTER.set(Some(bytes));
    f()
}

#[test]
fn disk_full_while_staging_removes_staging_and_keeps_active_release() {
    let (tmp, app) = app();
    make_release(&app, "1.0.0");
    app.activate(&v("1.0.0")).unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..5 {
        fs::write(src.join(format!("sub/f{i}")), vec![b'x'; 4000]).unwrap();
    }
    let archive = tmp.path().join("rel.tar.zst");
    write_tarzst(&archive, |b| {
        let data = vec![b'y'; 4000];
        for i in 0..5 {
            let mut h = Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, format!("d/f{i}"), &data[..]).unwrap();
        }
    });
    for source in [&src, &archive] {
        // Fails in the middle of the third file, after two complete ones.
        let result = with_disk_full_after(10_000, || {
            app.stage(source, &v("2.0.0"), &StageLimits::default())
        });
        match result {
            Err(
                e @ ReleaseError::Io(crate::fsutil::IoError {
                    op: "write file", ..
                }),
            ) => {
                let ReleaseError::Io(crate::fsutil::IoError { source: io_e, .. }) = &e else {
                    unreachable!()
                };
                assert_eq!(io_e.raw_os_error(), Some(nix::errno::Errno::ENOSPC as i32));
                assert!(e.to_string().contains(".staging-"), "{e}");
            }
            other => panic!("{}: disk full not reported: {other:?}", source.display()),
        }
        assert_no_trace(&app, &v("2.0.0"));
        assert_eq!(app.current().unwrap(), Some(v("1.0.0")));
        assert_eq!(
            fs::read_to_string(app.current_link().join("VERSION")).unwrap(),
            "1.0.0"
        );
        assert_eq!(app.list().unwrap(), vec![v("1.0.0")]);
    }
    // The hook is off again: the same sources stage fine.
    app.stage(&src, &v("2.0.0"), &StageLimits::default())
        .unwrap();
    app.stage(&archive, &v("3.0.0"), &StageLimits::default())
        .unwrap();
}

#[test]
fn copy_content_reports_a_real_enospc_as_a_write_error() {
    // /dev/full fails every write with ENOSPC, like a full filesystem.
    let Ok(mut full) = File::options().write(true).open("/dev/full") else {
        return; // not on this system
    };
    match copy_content(&mut &b"some content"[..], &mut full, 100) {
        Err(CopyError::Write(e)) => {
            assert_eq!(e.raw_os_error(), Some(nix::errno::Errno::ENOSPC as i32));
        }
        other => panic!("expected a write error, got {other:?}"),
    }
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("device gone"))
        }
    }
    assert!(matches!(
        copy_content(&mut Broken, &mut io::sink(), 100),
        Err(CopyError::Read(_))
    ));
    let mut out = Vec::new();
    assert_eq!(
        copy_content(&mut &[1u8; 10][..], &mut out, 4).unwrap(),
        4,
        "copies at most max"
    );
    assert_eq!(out, [1u8; 4]);
}

/// Stages `archive` and returns the refusal's text; nothing may be left.
fn refusal_of(app: &AppDir, archive: &Path) -> String {
    let ver = v("1.0.0");
    let err = app
        .stage(archive, &ver, &StageLimits::default())
        .expect_err("refused");
    assert_no_trace(app, &ver);
    err.to_string()
}

#[test]
fn a_huge_header_extension_is_refused_before_it_is_read() {
    for (kind, what) in [
        (b'L', "long name"),
        (b'K', "long link"),
        (b'x', "PAX"),
        (b'g', "PAX global"),
    ] {
        let (tmp, app) = app();
        let archive = tmp.path().join("ext.tar.gz");
        // A header that declares 2 GiB of extension, followed by a little of it.
        let mut raw = Vec::new();
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(EntryType::new(kind));
        h.set_size(2 << 30);
        h.set_mode(0o644);
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(&[b'a'; 4096]);
        let mut enc = flate2::write::GzEncoder::new(
            File::create(&archive).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&raw).unwrap();
        enc.finish().unwrap();
        let text = refusal_of(&app, &archive);
        assert!(
            text.contains("header extension of 2147483648 bytes"),
            "{what}: {text}"
        );
    }
}

#[test]
fn paths_too_deep_or_too_long_are_refused_and_quoted_short() {
    let (tmp, app) = app();
    let deep = tmp.path().join("deep.tgz");
    let name = vec!["d"; 200].join("/") + "/f";
    write_targz(&deep, |b| ok_file(b, &name));
    let text = refusal_of(&app, &deep);
    assert!(text.contains("deeper than 128 levels"), "{text}");

    let long = tmp.path().join("long.tgz");
    let name = "n".repeat(5000);
    write_targz(&long, |b| ok_file(b, &name));
    let text = refusal_of(&app, &long);
    assert!(text.contains("longer than 4096 bytes"), "{text}");
    assert!(
        text.len() < 1000,
        "the name is cut in the message: {} bytes",
        text.len()
    );

    // A source tree deeper than the limit is refused too.
    let src = tmp.path().join("src");
    let mut dir = src.clone();
    for _ in 0..130 {
        dir.push("d");
    }
    fs::create_dir_all(&dir).unwrap();
    let err = app
        .stage(&src, &v("2.0.0"), &StageLimits::default())
        .expect_err("refused");
    assert!(err.to_string().contains("deeper than 128 levels"), "{err}");
    assert_no_trace(&app, &v("2.0.0"));
}

#[test]
fn modes_lose_group_and_other_write_and_special_bits() {
    let (tmp, app) = app();
    let archive = tmp.path().join("modes.tgz");
    write_targz(&archive, |b| {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o1777);
        h.set_size(0);
        b.append_data(&mut h, "shared/", io::empty()).unwrap();
        let mut h = Header::new_gnu();
        h.set_mode(0o6777);
        h.set_size(2);
        b.append_data(&mut h, "shared/suid", &b"ok"[..]).unwrap();
        let mut h = Header::new_gnu();
        h.set_mode(0o666);
        h.set_size(2);
        b.append_data(&mut h, "open", &b"ok"[..]).unwrap();
    });
    let path = app
        .stage(&archive, &v("1.0.0"), &StageLimits::default())
        .unwrap();
    assert_eq!(mode_of(&path.join("shared")), 0o755);
    assert_eq!(mode_of(&path.join("shared/suid")), 0o755);
    assert_eq!(mode_of(&path.join("open")), 0o644);

    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("w")).unwrap();
    fs::set_permissions(src.join("w"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(src.join("w/f"), "x").unwrap();
    fs::set_permissions(src.join("w/f"), fs::Permissions::from_mode(0o666)).unwrap();
    let path = app
        .stage(&src, &v("1.0.1"), &StageLimits::default())
        .unwrap();
    assert_eq!(mode_of(&path.join("w")), 0o755);
    assert_eq!(mode_of(&path.join("w/f")), 0o644);
}

#[test]
fn the_header_guard_reads_numbers_as_tar_writes_them() {
    use super::stage::tar_number as n;
    assert_eq!(n(b"0000644\0"), Some(0o644));
    assert_eq!(n(b"       \0"), Some(0));
    assert_eq!(n(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
    assert_eq!(n(&[0xff; 12]), None, "too large for u64");
    assert_eq!(n(b"12x\0"), None);
}

#[test]
fn a_fifo_in_place_of_an_archive_is_refused_without_blocking() {
    let (tmp, app) = app();
    let fifo = tmp.path().join("1.0.0.tar.gz");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Refused (by its type, before or after opening it), never waited on.
    let text = refusal_of(&app, &fifo);
    assert!(text.contains("archive"), "{text}");
}

#[test]
fn directories_below_the_source_are_never_reached_through_a_link() {
    let (tmp, _app) = app();
    let src = tmp.path().join("src");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(src.join("real")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, src.join("swapped")).unwrap();
    let root = File::open(&src).unwrap();
    assert!(super::stage::open_below(&root, Path::new("real")).is_ok());
    let err = super::stage::open_below(&root, Path::new("swapped")).unwrap_err();
    // With O_DIRECTORY Linux says ENOTDIR for a link; ELOOP elsewhere.
    assert!(
        matches!(
            err.raw_os_error(),
            Some(nix::libc::ENOTDIR | nix::libc::ELOOP)
        ),
        "{err}"
    );
}

/// A source tree of three files (one large), a link and a directory.
fn shareable_source(dir: &Path) {
    fs::create_dir_all(dir.join("lib")).unwrap();
    fs::write(dir.join("app.py"), "print('v1')\n").unwrap();
    fs::write(dir.join("lib/big.bin"), vec![7u8; 300 * 1024]).unwrap();
    fs::write(dir.join("run"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("lib/big.bin", dir.join("data")).unwrap();
}

/// A shareable source staged as release 1 "later" (every file settled and
/// remembered) and activated; with `link_unchanged`.
fn deployed_once() -> (tempfile::TempDir, AppDir, PathBuf, StageLimits) {
    let (tmp, app) = app();
    let src = tmp.path().join("src");
    shareable_source(&src);
    let linked = linked();
    app.stage_opened_at(&src, None, &v("1"), &linked, later())
        .unwrap();
    app.activate(&v("1")).unwrap();
    (tmp, app, src, linked)
}

/// Limits of an app with `link_unchanged = true`.
fn linked() -> StageLimits {
    StageLimits {
        link_unchanged: true,
        ..StageLimits::default()
    }
}

fn ino(app: &AppDir, version: &str, rel: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(app.release_path(&v(version)).join(rel))
        .unwrap()
        .ino()
}

#[test]
fn a_new_release_shares_its_unchanged_files_with_the_active_one() {
    let (tmp, app) = app();
    let src = tmp.path().join("src");
    shareable_source(&src);
    let linked = linked();
    let first = app.stage_opened(&src, None, &v("1"), &linked).unwrap();
    assert_eq!(first.shared, (0, 0), "nothing to share with yet");
    app.activate(&v("1")).unwrap();

    // One file changed, one mode changed: the rest is the same inode.
    fs::write(src.join("app.py"), "print('v2')\n").unwrap();
    fs::set_permissions(src.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
    let second = app.stage_opened(&src, None, &v("2"), &linked).unwrap();
    assert_eq!(second.shared, (1, 300 * 1024), "{second:?}");
    assert_eq!(ino(&app, "1", "lib/big.bin"), ino(&app, "2", "lib/big.bin"));
    assert_ne!(ino(&app, "1", "app.py"), ino(&app, "2", "app.py"));
    assert_ne!(ino(&app, "1", "run"), ino(&app, "2", "run"));
    assert_eq!(mode_of(&app.release_path(&v("2")).join("run")), 0o700);
    assert_eq!(mode_of(&app.release_path(&v("1")).join("run")), 0o755);
    assert_eq!(
        fs::read_to_string(app.release_path(&v("2")).join("app.py")).unwrap(),
        "print('v2')\n"
    );
    // The digest given is the tree's, whatever was shared.
    assert_eq!(second.digest, tree_digest(&second.path).unwrap());
    assert_eq!(first.digest, tree_digest(&first.path).unwrap());
    assert_ne!(first.digest, second.digest);

    // Without link_unchanged a file system without reflinks copies: never
    // the same inode, the same bytes.
    app.activate(&v("2")).unwrap();
    let third = app
        .stage_opened(&src, None, &v("3"), &StageLimits::default())
        .unwrap();
    assert_ne!(ino(&app, "2", "lib/big.bin"), ino(&app, "3", "lib/big.bin"));
    assert_eq!(
        fs::read(app.release_path(&v("3")).join("lib/big.bin")).unwrap(),
        vec![7u8; 300 * 1024]
    );
    assert_eq!(third.digest, second.digest);
    assert!(
        hidden_entries(&app).is_empty(),
        "{:?}",
        hidden_entries(&app)
    );
}

#[test]
fn a_missing_or_stale_index_is_never_trusted() {
    use std::os::unix::fs::MetadataExt;
    let (tmp, app) = app();
    let src = tmp.path().join("src");
    shareable_source(&src);
    let linked = linked();
    app.stage(&src, &v("1"), &StageLimits::default()).unwrap();
    app.activate(&v("1")).unwrap();
    // Without an index the files are hashed: still shared.
    fs::remove_file(app.releases_dir().join(".index-1")).unwrap();
    app.stage(&src, &v("2"), &linked).unwrap();
    assert_eq!(ino(&app, "1", "lib/big.bin"), ino(&app, "2", "lib/big.bin"));

    // The active release changed in place, with the same size and
    // modification time: its index no longer describes it, so it is not
    // taken for the source's file.
    app.activate(&v("1")).unwrap();
    let old = app.release_path(&v("1")).join("lib/big.bin");
    let mtime = fs::metadata(&old).unwrap().modified().unwrap();
    let before = fs::metadata(&old).unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&old, vec![9u8; 300 * 1024]).unwrap();
    File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(fs::metadata(&old).unwrap().len(), before.len());
    assert_eq!(fs::metadata(&old).unwrap().mtime(), before.mtime());
    app.stage(&src, &v("3"), &linked).unwrap();
    assert_ne!(ino(&app, "1", "lib/big.bin"), ino(&app, "3", "lib/big.bin"));
    assert_eq!(
        fs::read(app.release_path(&v("3")).join("lib/big.bin")).unwrap(),
        vec![7u8; 300 * 1024]
    );
    // A damaged index is no worse than none.
    fs::write(
        app.releases_dir().join(".index-1"),
        b"garbage\0\xff\xfe 1 2\0",
    )
    .unwrap();
    fs::write(&old, vec![7u8; 300 * 1024]).unwrap();
    app.stage(&src, &v("4"), &linked).unwrap();
    assert_eq!(ino(&app, "1", "lib/big.bin"), ino(&app, "4", "lib/big.bin"));
}

#[test]
fn archives_share_their_unchanged_entries_too() {
    let (tmp, app) = app();
    let build = |body: &'static [u8]| {
        move |b: &mut TarBuilder| {
            for (name, data) in [("app.py", body), ("lib/big.bin", &[5u8; 200 * 1024][..])] {
                let mut h = Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, data).unwrap();
            }
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Link);
            h.set_size(0);
            h.set_cksum();
            b.append_link(&mut h, "lib/same.bin", "lib/big.bin")
                .unwrap();
        }
    };
    let one = tmp.path().join("one.tar.gz");
    let two = tmp.path().join("two.tar.zst");
    write_archive(&one, build(b"v1"));
    write_archive(&two, build(b"v2"));
    let linked = linked();
    app.stage(&one, &v("1"), &linked).unwrap();
    app.activate(&v("1")).unwrap();
    let staged = app.stage_opened(&two, None, &v("2"), &linked).unwrap();
    assert_eq!(ino(&app, "1", "lib/big.bin"), ino(&app, "2", "lib/big.bin"));
    assert_ne!(ino(&app, "1", "app.py"), ino(&app, "2", "app.py"));
    assert_eq!(staged.digest, tree_digest(&staged.path).unwrap());
    assert!(
        hidden_entries(&app).is_empty(),
        "{:?}",
        hidden_entries(&app)
    );
}

#[test]
fn a_release_takes_its_index_with_it_and_orphans_are_leftovers() {
    let (tmp, app) = app();
    let src = tmp.path().join("src");
    shareable_source(&src);
    app.stage(&src, &v("1"), &StageLimits::default()).unwrap();
    app.stage(&src, &v("2"), &StageLimits::default()).unwrap();
    let index = |n: &str| app.releases_dir().join(format!(".index-{n}"));
    assert!(index("1").is_file() && index("2").is_file());
    app.remove(&v("1")).unwrap();
    assert!(!index("1").exists());
    // An index left by a crash before its release was published.
    fs::write(index("9"), b"").unwrap();
    let removed = app.clean_leftovers().unwrap();
    assert_eq!(removed, vec![index("9")]);
    assert!(index("2").is_file());
}

/// A clock past the moment every file just written has settled.
fn later() -> std::time::SystemTime {
    std::time::SystemTime::now() + std::time::Duration::from_secs(10)
}

/// The size in bytes of `shareable_source`'s regular files.
const SHAREABLE_BYTES: u64 = 12 + 300 * 1024 + 10;

#[test]
fn a_directory_deployed_again_is_read_only_where_it_changed() {
    let (tmp, app) = app();
    let src = tmp.path().join("src");
    shareable_source(&src);
    let linked = linked();
    // Staged "later": every source file has settled and is remembered.
    let first = app
        .stage_opened_at(&src, None, &v("1"), &linked, later())
        .unwrap();
    assert_eq!(
        first.read, SHAREABLE_BYTES,
        "a first deploy reads everything"
    );
    app.activate(&v("1")).unwrap();

    // Nothing changed: nothing is read, everything is shared.
    let second = app
        .stage_opened_at(&src, None, &v("2"), &linked, later())
        .unwrap();
    assert_eq!(second.read, 0, "{second:?}");
    assert_eq!(second.shared.0, 3, "{second:?}");
    assert_eq!(second.digest, first.digest);
    app.activate(&v("2")).unwrap();

    // One file rewritten with the same size and its old modification time:
    // its change time gives it away and it alone is read (hashed to compare
    // with the active release's, then copied), and the new bytes are what
    // the release holds.
    let old = fs::metadata(src.join("app.py"))
        .unwrap()
        .modified()
        .unwrap();
    fs::write(src.join("app.py"), "print('v3')\n").unwrap();
    File::options()
        .write(true)
        .open(src.join("app.py"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let third = app
        .stage_opened_at(&src, None, &v("3"), &linked, later())
        .unwrap();
    assert_eq!(third.read, 2 * 12, "{third:?}");
    assert_eq!(
        fs::read_to_string(app.release_path(&v("3")).join("app.py")).unwrap(),
        "print('v3')\n"
    );
    assert_eq!(third.digest, tree_digest(&third.path).unwrap());
    assert_ne!(third.digest, second.digest);
}

#[test]
fn an_unchanged_source_file_is_shared_without_being_opened() {
    use notify::{EventKind, RecursiveMode, Watcher};
    let (_tmp, app, src, linked) = deployed_once();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).unwrap();
    watcher.watch(&src, RecursiveMode::Recursive).unwrap();
    let second = app
        .stage_opened_at(&src, None, &v("2"), &linked, later())
        .unwrap();
    assert_eq!((second.read, second.shared.0), (0, 3), "{second:?}");
    // inotify keeps order: every open the staging made arrives before the
    // creation of this marker.
    let marker = src.join("marker");
    fs::write(&marker, "m").unwrap();
    let mut opened = Vec::new();
    loop {
        let event = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the marker's events")
            .unwrap();
        if event.paths.contains(&marker) {
            break;
        }
        if matches!(
            event.kind,
            EventKind::Access(notify::event::AccessKind::Open(_))
        ) {
            opened.extend(event.paths.into_iter().filter(|p| p.is_file()));
        }
    }
    assert!(opened.is_empty(), "source files opened: {opened:?}");
}

#[test]
fn source_files_changed_just_before_a_deploy_are_read_again_next_time() {
    let (tmp, app) = app();
    let src = tmp.path().join("src");
    shareable_source(&src);
    let linked = linked();
    // Staged now: the files changed within the last moments, so the next
    // deploy cannot trust their times and reads them again.
    app.stage_opened(&src, None, &v("1"), &linked).unwrap();
    app.activate(&v("1")).unwrap();
    let second = app.stage_opened(&src, None, &v("2"), &linked).unwrap();
    assert_eq!(second.read, SHAREABLE_BYTES, "{second:?}");
    assert_eq!(second.shared.0, 3, "still shared, after reading");
}

#[test]
fn a_damaged_source_index_only_costs_a_read() {
    let (_tmp, app, src, linked) = deployed_once();
    // A garbage device in the source mark: the source's part is dropped.
    let index = app.releases_dir().join(".index-1");
    let mut bytes = fs::read(&index).unwrap();
    let mark = bytes
        .windows(12)
        .position(|w| w == b"source-files")
        .unwrap();
    bytes[mark + 13] = b'x';
    fs::write(&index, &bytes).unwrap();
    let second = app
        .stage_opened_at(&src, None, &v("2"), &linked, later())
        .unwrap();
    assert_eq!(second.read, SHAREABLE_BYTES, "{second:?}");
    assert_eq!(second.digest, tree_digest(&second.path).unwrap());
}
