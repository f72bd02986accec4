//! A release's `release.toml`: a manifest or an error naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollback_agent::release::{parse_manifest, Version};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let version = Version::parse("1.2.0").expect("a valid version");
        let path = std::path::Path::new("/srv/shop/releases/1.2.0/release.toml");
        if let Err(e) = parse_manifest(text, path, &version) {
            let _ = e.to_string();
        }
    }
});
