//! Release versions: the names a release may have.
//!
//! Owns the validation of a version (SemVer or any `[A-Za-z0-9._+-]` name)
//! and its text form. Must never touch the disk.

use std::fmt;
use std::str::FromStr;

use super::ReleaseError;

/// Longest accepted version name, in bytes (all accepted characters are ASCII).
const MAX_VERSION_LEN: usize = 128;

/// A validated release version: SemVer or any name of `[A-Za-z0-9._+-]`, 1..=128
/// characters, never `.` or `..`, never starting with `.` (hidden names are reserved
/// for staging), never a path.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

impl Version {
    /// Validates `s` as a release version.
    pub fn parse(s: &str) -> Result<Version, ReleaseError> {
        match version_problem(s) {
            None => Ok(Version(s.to_owned())),
            Some(reason) => Err(ReleaseError::InvalidVersion {
                version: s.to_owned(),
                reason,
            }),
        }
    }

    /// The version as text (also its directory name under `releases/`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why `s` is not a valid version, or `None` if it is one.
fn version_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("is empty")
    } else if s == "." || s == ".." {
        Some("is '.' or '..'")
    } else if s.starts_with('.') {
        Some("starts with '.' (hidden names are reserved for staging)")
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
    {
        Some("contains a character outside [A-Za-z0-9._+-] (a version is a name, not a path)")
    } else if s.len() > MAX_VERSION_LEN {
        Some("is longer than 128 characters")
    } else {
        None
    }
}

impl FromStr for Version {
    type Err = ReleaseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Version {
    type Error = ReleaseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match version_problem(&s) {
            None => Ok(Version(s)),
            Some(reason) => Err(ReleaseError::InvalidVersion { version: s, reason }),
        }
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.0
    }
}

impl AsRef<str> for Version {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Shortens user-supplied text for error messages.
pub(super) fn shorten(s: &str) -> String {
    const MAX: usize = 160;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}
