//! Writing files so that a crash never leaves one half-written.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `path` through a temporary file in its folder and a rename.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    write_through_partial(path, |partial| {
        std::fs::write(partial, contents).map_err(|e| Error::io(partial, e))
    })
}

/// Writes `value` as pretty JSON to `path`, through [`replace_file`].
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    replace_file(path, text.as_bytes())
}

/// Lets `write` fill `path` + `.partial-<pid>`, then renames it to `path`: `path` appears only
/// complete. The process id keeps two processes writing the same file (two `qpeft glue` on one
/// suite) from renaming each other's partial file away.
pub fn write_through_partial(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".partial-{}", std::process::id()));
    let partial = PathBuf::from(partial);
    write(&partial)?;
    std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))
}
