//! The on-disk cache of compiled components.
//!
//! Owns `<state_dir>/plugin-cache/`: one file per component, named by the
//! SHA-256 of the component's bytes and a hash of everything that makes
//! compiled code incompatible (wasmtime's engine settings and version, and
//! this agent's version). A hit skips compilation entirely on restart.
//!
//! Must never trust a file it did not write: the directory is created with
//! mode 0700, files are written atomically, and an entry that fails to load
//! is removed and recompiled.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// A cache directory bound to one engine configuration.
pub struct Cache {
    dir: PathBuf,
    engine_key: String,
}

impl Cache {
    /// Opens (creating if needed) the cache in `dir` for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Cache> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // Compiled code is loaded from here as is: only we may write to it.
        let meta = std::fs::metadata(dir)?;
        let ours = meta.uid() == nix::unistd::geteuid().as_raw();
        if !ours || meta.mode() & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "refusing a cache directory that another user owns or others may write to",
            ));
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(Cache {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for `digest`, if a usable one is cached.
    pub fn get(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        if !path.exists() {
            return None;
        }
        match load(engine, &path) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "dropping unusable cache entry: {e:#}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled component under `digest` (best effort: a full disk
    /// only costs a recompilation next time).
    pub fn put(&self, digest: &str, component: &Component) {
        let result = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))
            .and_then(|bytes| {
                let path = self.path(digest);
                let tmp = self
                    .dir
                    .join(format!(".tmp-{digest}-{}", std::process::id()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), "cannot cache a compiled plugin: {e}");
        }
    }
}

#[allow(unsafe_code)]
fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was produced by `Component::serialize` of this agent
    // with an engine of the same compatibility hash (it is in the name), in a
    // directory only the agent can write. wasmtime still checks the header.
    unsafe { Component::deserialize_file(engine, path) }
}
