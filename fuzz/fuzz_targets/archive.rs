//! The archive unpacker: the input is a tar stream (gzip-wrapped here, so
//! that the fuzzer spends its time on tar headers, not on gzip's checksum).
//! Staging either publishes a release or refuses it, leaving nothing behind;
//! it never panics, never writes outside the app root.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rollback_agent::release::{AppDir, StageLimits, Version};

struct Place {
    _tmp: tempfile::TempDir,
    app: AppDir,
    archive: std::path::PathBuf,
}

fn place() -> &'static Place {
    static PLACE: OnceLock<Place> = OnceLock::new();
    PLACE.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let app = AppDir::new(tmp.path().join("shop"));
        let archive = tmp.path().join("in.tar.gz");
        Place {
            _tmp: tmp,
            app,
            archive,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let p = place();
    let file = std::fs::File::create(&p.archive).expect("the archive file");
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    if gz
        .write_all(data)
        .and_then(|()| gz.finish().map(drop))
        .is_err()
    {
        return;
    }
    let version = Version::parse("1.0.0").expect("a valid version");
    let limits = StageLimits {
        max_entries: 1000,
        max_bytes: 4 << 20,
        keep_modes: false,
        link_unchanged: false,
    };
    match p.app.stage(&p.archive, &version, &limits) {
        Ok(_) => p.app.remove(&version).expect("the release can be removed"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // Nothing of a refused or removed release stays.
    let left = std::fs::read_dir(p.app.releases_dir())
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "staging left something behind");
});
