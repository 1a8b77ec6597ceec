//! GLUE from the Hugging Face hub: the parquet files of `nyu-mll/glue`, resolved through
//! `hf-hub` (the cache first, then a download unless offline) and written into the GLUE
//! folder in the official `glue_data` layout, marked as converted.

use std::fs::File;
use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::glue::{Example, Label, LabelKind, Split, Task, write_split};
use crate::error::{Error, Result};
use crate::model::HubOptions;

/// The hub dataset GLUE is fetched from.
pub const GLUE_HUB_REPO: &str = "nyu-mll/glue";
/// Written into a task folder filled from the hub: its files are conversions, so the
/// manifest's sha256 sums (of the original glue_data files) do not apply to them.
pub const HUB_SOURCE_MARKER: &str = ".source-hub";

fn hub_config(task: Task) -> &'static str {
    task.name()
}

fn hub_split(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Dev => "validation",
        Split::Test => "test",
        Split::DevMatched => "validation_matched",
        Split::DevMismatched => "validation_mismatched",
        Split::TestMatched => "test_matched",
        Split::TestMismatched => "test_mismatched",
    }
}

/// The hub's text columns for a task.
fn text_columns(task: Task) -> (&'static str, Option<&'static str>) {
    match task {
        Task::Cola | Task::Sst2 => ("sentence", None),
        Task::Mrpc | Task::Stsb | Task::Rte | Task::Wnli => ("sentence1", Some("sentence2")),
        Task::Qqp => ("question1", Some("question2")),
        Task::Mnli | Task::Ax => ("premise", Some("hypothesis")),
        Task::Qnli => ("question", Some("sentence")),
    }
}

/// The parquet file of (task, split) inside the hub repo.
pub fn hub_file(task: Task, split: Split) -> String {
    format!(
        "{}/{}-00000-of-00001.parquet",
        hub_config(task),
        hub_split(split)
    )
}

/// Resolves a file of [`GLUE_HUB_REPO`]: the cache, else a download unless offline.
fn resolve(options: &HubOptions, file: &str) -> Result<PathBuf> {
    let repo = Repo::new(GLUE_HUB_REPO.to_string(), RepoType::Dataset);
    let cache = Cache::new(options.cache_dir.clone());
    if let Some(path) = cache.repo(repo.clone()).get(file) {
        return Ok(path);
    }
    let missing = |why: String| {
        Error::Fetch(format!(
            "{GLUE_HUB_REPO}/{file} is not in the hub cache at {} and {why}; use `qpeft data fetch --from <glue_data folder>` instead",
            options.cache_dir.display()
        ))
    };
    if options.offline {
        return Err(missing("HF_HUB_OFFLINE is set".into()));
    }
    hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(true)
        .build()
        .map_err(|e| missing(format!("the hub client failed: {e}")))?
        .repo(repo)
        .get(file)
        .map_err(|e| missing(format!("the download failed: {e}")))
}

/// Reads a `nyu-mll/glue` parquet file into examples (test labels, -1 there, become `None`).
pub fn read_parquet(path: &Path, task: Task, split: Split) -> Result<Vec<Example>> {
    let fail = |message: String| Error::Data {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| fail(format!("not a readable parquet file: {e}")))?;
    let (first, second) = text_columns(task);
    let rows = reader.get_row_iter(None).map_err(|e| fail(e.to_string()))?;
    let mut examples = Vec::new();
    for (row_number, row) in rows.enumerate() {
        let row = row.map_err(|e| fail(format!("row {row_number}: {e}")))?;
        let mut text_a = None;
        let mut text_b = None;
        let mut label = None;
        let mut idx = None;
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                (n, Field::Str(s)) if n == first => text_a = Some(s.clone()),
                (n, Field::Str(s)) if Some(n) == second => text_b = Some(s.clone()),
                ("label", Field::Long(v)) => label = Some(*v as f64),
                ("label", Field::Int(v)) => label = Some(f64::from(*v)),
                ("label", Field::Float(v)) => label = Some(f64::from(*v)),
                ("label", Field::Double(v)) => label = Some(*v),
                ("idx", Field::Int(v)) => idx = Some(i64::from(*v)),
                ("idx", Field::Long(v)) => idx = Some(*v),
                _ => {}
            }
        }
        let column = |what: &str| fail(format!("row {row_number}: no {what} column"));
        let label = match (split.is_test(), task.label_kind(), label) {
            (true, _, _) => None,
            (false, LabelKind::Classes(names), Some(v))
                if v >= 0.0 && (v as usize) < names.len() && v.fract() == 0.0 =>
            {
                Some(Label::Class(v as usize))
            }
            (false, LabelKind::Score { min, max }, Some(v))
                if (f64::from(min)..=f64::from(max)).contains(&v) =>
            {
                Some(Label::Score(v as f32))
            }
            (false, _, Some(v)) => {
                return Err(fail(format!(
                    "row {row_number}: label {v} does not fit {task}"
                )));
            }
            (false, _, None) => return Err(column("label")),
        };
        let idx = idx.ok_or_else(|| column("idx"))?;
        examples.push(Example {
            id: usize::try_from(idx)
                .map_err(|_| fail(format!("row {row_number}: idx {idx} is negative")))?,
            text_a: text_a.ok_or_else(|| column(first))?,
            text_b: match second {
                Some(name) => Some(text_b.ok_or_else(|| column(name))?),
                None => None,
            },
            label,
            line: row_number + 1,
        });
    }
    if examples.is_empty() {
        return Err(fail(format!("{task} {split} has no rows")));
    }
    Ok(examples)
}

/// Fetches `files` from the hub into the GLUE folder `dest`, returning each file's row count.
pub fn fetch_from_hub(
    options: &HubOptions,
    dest: &Path,
    files: &[(Task, Split)],
) -> Result<Vec<(String, usize)>> {
    let mut written = Vec::new();
    for &(task, split) in files {
        let parquet = resolve(options, &hub_file(task, split))?;
        let examples = read_parquet(&parquet, task, split)?;
        let relative = task
            .file(split)
            .ok_or_else(|| Error::Config(format!("{task} has no {split} split")))?;
        let target = dest.join(&relative);
        write_split(&target, task, split, &examples)?;
        let marker = dest.join(task.dir_name()).join(HUB_SOURCE_MARKER);
        std::fs::write(
            &marker,
            format!("{GLUE_HUB_REPO} {}\n", hub_file(task, split)),
        )
        .map_err(|e| Error::io(&marker, e))?;
        written.push((relative, examples.len()));
    }
    Ok(written)
}
