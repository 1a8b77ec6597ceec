//! The committed GLUE manifest (`datasets/glue.manifest`: row counts and sha256 sums),
//! verification of a GLUE folder against it, and filling a GLUE folder from a mirror.

use std::path::{Path, PathBuf};

use super::glue::{Task, load};
use super::hub::HUB_SOURCE_MARKER;
use crate::error::{Error, Result};
use crate::model::hub::sha256_file;

const MANIFEST: &str = include_str!("../../datasets/glue.manifest");

/// One file the manifest knows.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestEntry {
    pub task: Task,
    pub split: super::glue::Split,
    /// Relative to the GLUE folder, e.g. `CoLA/train.tsv`.
    pub path: String,
    /// Data rows, header excluded.
    pub rows: usize,
    /// `None` where no copy was available to checksum.
    pub sha256: Option<String>,
}

/// The entries of the committed manifest, in file order.
pub fn manifest() -> Vec<ManifestEntry> {
    let files: Vec<(Task, super::glue::Split, String)> = Task::ALL
        .iter()
        .flat_map(|&task| {
            task.splits()
                .iter()
                .filter_map(move |&split| Some((task, split, task.file(split)?)))
        })
        .collect();
    MANIFEST
        .lines()
        .filter(|line| !line.starts_with('#'))
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let (task, split, path) = files
                .iter()
                .find(|(_, _, path)| path == fields[0])
                .cloned()
                .unwrap_or_else(|| panic!("glue.manifest names an unknown file {}", fields[0]));
            ManifestEntry {
                task,
                split,
                path,
                rows: fields[1]
                    .parse()
                    .expect("glue.manifest: rows is an integer"),
                sha256: (fields[2] != "-").then(|| fields[2].to_string()),
            }
        })
        .collect()
}

/// What the sha256 check of a verified file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    Matched,
    /// The manifest has no sum for this file (no copy was available to checksum).
    Unknown,
    /// The file was converted from the hub's parquet, so the original's sum does not apply.
    Converted,
}

/// The outcome of checking one file.
#[derive(Debug, Clone, PartialEq)]
pub enum FileStatus {
    /// The row count matches, and so does the sha256 where it applies.
    Verified {
        rows: usize,
        checksum: Checksum,
    },
    Missing,
    /// What differs, in words.
    Mismatch(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileCheck {
    pub entry: ManifestEntry,
    pub status: FileStatus,
}

/// Checks every manifest file of `tasks` found under `dir`: sha256 (where known) and the
/// number of rows the loader reads (which also checks the format).
pub fn verify(dir: &Path, tasks: &[Task]) -> Vec<FileCheck> {
    manifest()
        .into_iter()
        .filter(|entry| tasks.contains(&entry.task))
        .map(|entry| {
            let status = check_file(dir, &entry);
            FileCheck { entry, status }
        })
        .collect()
}

fn check_file(dir: &Path, entry: &ManifestEntry) -> FileStatus {
    let path = dir.join(&entry.path);
    if !path.is_file() {
        return FileStatus::Missing;
    }
    let converted = dir
        .join(entry.task.dir_name())
        .join(HUB_SOURCE_MARKER)
        .exists();
    let checksum = match (&entry.sha256, converted) {
        (_, true) => Checksum::Converted,
        (None, false) => Checksum::Unknown,
        (Some(expected), false) => match sha256_file(&path) {
            Ok(actual) if &actual == expected => Checksum::Matched,
            Ok(actual) => {
                return FileStatus::Mismatch(format!("sha256 {actual}, expected {expected}"));
            }
            Err(e) => return FileStatus::Mismatch(e.to_string()),
        },
    };
    match load(dir, entry.task, entry.split) {
        Ok(dataset) if dataset.examples.len() == entry.rows => FileStatus::Verified {
            rows: entry.rows,
            checksum,
        },
        Ok(dataset) => FileStatus::Mismatch(format!(
            "{} rows, expected {}",
            dataset.examples.len(),
            entry.rows
        )),
        Err(e) => FileStatus::Mismatch(e.to_string()),
    }
}

/// What [`fetch_from_mirror`] did with each manifest file of the requested tasks.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchStatus {
    Copied,
    /// Already present and verified; left alone.
    Present,
    /// Not in the mirror.
    NotInMirror,
}

/// Copies the files of `tasks` from the GLUE folder `mirror` into `dest`, verifying each
/// copy against the manifest. A file already in `dest` that verifies is left alone. Fails if
/// a copied file does not verify (the bad copy is removed) or a task has no file in the mirror.
pub fn fetch_from_mirror(
    mirror: &Path,
    dest: &Path,
    tasks: &[Task],
) -> Result<Vec<(ManifestEntry, FetchStatus)>> {
    if !mirror.is_dir() {
        return Err(Error::io(
            mirror,
            std::io::Error::new(std::io::ErrorKind::NotFound, "mirror directory not found"),
        ));
    }
    let mut outcome = Vec::new();
    for entry in manifest().into_iter().filter(|e| tasks.contains(&e.task)) {
        let target = dest.join(&entry.path);
        if matches!(check_file(dest, &entry), FileStatus::Verified { .. }) {
            outcome.push((entry, FetchStatus::Present));
            continue;
        }
        let source = mirror.join(&entry.path);
        if !source.is_file() {
            outcome.push((entry, FetchStatus::NotInMirror));
            continue;
        }
        copy_atomically(&source, &target)?;
        // The task's files are originals again: their sums apply.
        let marker = dest.join(entry.task.dir_name()).join(HUB_SOURCE_MARKER);
        if marker.exists() {
            std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?;
        }
        if let FileStatus::Mismatch(why) = check_file(dest, &entry) {
            let _ = std::fs::remove_file(&target);
            return Err(Error::Data {
                path: source,
                line: None,
                message: format!("does not match the manifest: {why}"),
            });
        }
        outcome.push((entry, FetchStatus::Copied));
    }
    for task in tasks {
        let mut of_task = outcome.iter().filter(|(e, _)| e.task == *task);
        if of_task.all(|(_, s)| *s == FetchStatus::NotInMirror) {
            return Err(Error::Config(format!(
                "the mirror {} has no file of {task} ({}/)",
                mirror.display(),
                task.dir_name()
            )));
        }
    }
    Ok(outcome)
}

fn copy_atomically(source: &Path, target: &Path) -> Result<()> {
    let parent = target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let partial = target.with_extension("tsv.partial");
    std::fs::copy(source, &partial).map_err(|e| Error::io(source, e))?;
    std::fs::rename(&partial, target).map_err(|e| Error::io(target, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_covers_every_split_of_every_task() {
        let entries = manifest();
        let expected: usize = Task::ALL.iter().map(|t| t.splits().len()).sum();
        assert_eq!(entries.len(), expected);
        let cola_dev = entries.iter().find(|e| e.path == "CoLA/dev.tsv").unwrap();
        assert_eq!(cola_dev.rows, 1043);
        assert!(
            entries
                .iter()
                .find(|e| e.path == "QQP/train.tsv")
                .unwrap()
                .sha256
                .is_none()
        );
    }
}
