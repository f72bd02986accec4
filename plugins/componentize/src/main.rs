//! `componentize IN.wasm OUT.wasm`: turns a plugin's core WebAssembly module
//! into a component.
//!
//! The core module must already carry its world (the custom section that
//! `wit_bindgen::generate!` embeds), so no WIT files are needed here. The
//! component is validated, then written to a temporary file next to `OUT` and
//! renamed into place, so a reader never sees a half-written plugin.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: componentize IN.wasm OUT.wasm";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("componentize: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        bail!("expected two arguments\n{USAGE}");
    };
    let module = fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let component =
        encode(&module).with_context(|| format!("turning {} into a component", input.display()))?;
    write_atomically(output, &component)
        .with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

/// Encodes a core module tagged with its world as a validated component.
fn encode(module: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(module)?
        .validate(true)
        .encode()
}

/// Writes `bytes` to a temporary file in `path`'s directory, then renames it
/// over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .context("the output path has no file name")?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| -> Result<()> {
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        // Best effort: the temporary file may not even exist.
        let _ = fs::remove_file(&tmp);
    }
    result
}
