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

/// An exclusive lock on a file, held until dropped. The operating system releases it when the
/// holder exits, however it exits, so a crash never leaves a stale lock behind.
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
}

/// Takes the lock on `path` (created if needed); `None` while another process holds it.
pub fn try_lock(path: &Path) -> Result<Option<FileLock>> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(FileLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// Waits for the lock on `path` (created if needed).
pub fn lock(path: &Path) -> Result<FileLock> {
    let file = open_lock_file(path)?;
    file.lock().map_err(|e| Error::io(path, e))?;
    Ok(FileLock { _file: file })
}

fn open_lock_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}
