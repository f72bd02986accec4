//! `release.toml`: what a release says about itself (version, commit, tag,
//! summary).
//!
//! Owns reading and validating it, bounded in size. Must never change a
//! release.

use std::io::{self};
use std::path::Path;

use super::*;

/// The optional `release.toml` at a release's root: what the release is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// Must equal the version it is deployed as, when given.
    pub version: Option<String>,
    /// The source commit.
    pub commit: Option<String>,
    /// A tag (e.g. `v1.4.2`).
    pub tag: Option<String>,
    /// What changed, in a sentence or a few lines.
    pub summary: Option<String>,
}

/// Longest `commit` or `tag` accepted.
const MAX_MANIFEST_FIELD: usize = 128;
/// Longest `summary` (or deploy message) accepted.
pub const MAX_SUMMARY: usize = 4096;

/// Reads `<release>/release.toml` if there is one. Errors name the file
/// (and the line, for TOML errors); `version` must match `expected`.
pub fn read_manifest(
    release: &Path,
    expected: &Version,
) -> Result<Option<ReleaseManifest>, ReleaseError> {
    let path = release.join("release.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(crate::fsutil::IoError::new("read release manifest", path, source).into())
        }
    };
    parse_manifest(&text, &path, expected).map(Some)
}

/// Parses and checks the text of a `release.toml` (at `path`, for errors).
pub fn parse_manifest(
    text: &str,
    path: &Path,
    expected: &Version,
) -> Result<ReleaseManifest, ReleaseError> {
    let bad = |reason: String| ReleaseError::Source {
        path: path.to_path_buf(),
        reason,
    };
    let m: ReleaseManifest =
        toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_string()))?;
    if let Some(v) = &m.version {
        if v != expected.as_str() {
            return Err(bad(format!(
                "says version `{v}` but is deployed as `{expected}`"
            )));
        }
    }
    for (name, value) in [("commit", &m.commit), ("tag", &m.tag)] {
        if let Some(v) = value {
            if v.is_empty() || v.len() > MAX_MANIFEST_FIELD || v.chars().any(char::is_control) {
                return Err(bad(format!(
                    "`{name}` must be 1 to {MAX_MANIFEST_FIELD} printable characters"
                )));
            }
        }
    }
    if m.summary.as_ref().is_some_and(|s| s.len() > MAX_SUMMARY) {
        return Err(bad(format!("`summary` is longer than {MAX_SUMMARY} bytes")));
    }
    Ok(m)
}
