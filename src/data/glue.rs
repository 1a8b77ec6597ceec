//! The GLUE tasks in the standard `glue_data/<Task>/<split>.tsv` layout: which files exist,
//! how each is laid out, and loading them into [`Example`]s.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::tsv::{Row, parse_rows};
use crate::error::{Error, Result};

/// The nine GLUE tasks and the AX diagnostic set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    Cola,
    Sst2,
    Mrpc,
    Stsb,
    Qqp,
    Mnli,
    Qnli,
    Rte,
    Wnli,
    Ax,
}

/// A split of a task. MNLI has matched and mismatched dev and test sets; AX only `Test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Dev,
    Test,
    DevMatched,
    DevMismatched,
    TestMatched,
    TestMismatched,
}

/// What a task predicts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LabelKind {
    /// Class ids `0..names.len()`, written in the files as `names`.
    Classes(&'static [&'static str]),
    /// A similarity score in `[min, max]` (STS-B: 0–5).
    Score { min: f32, max: f32 },
}

/// A gold label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    Class(usize),
    Score(f32),
}

/// One row of a split: the text (or pair) and, except in test splits, its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The file's `index`/`id` column for test splits (what submissions refer to), else the
    /// 0-based row number.
    pub id: usize,
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: Option<Label>,
    /// 1-based line in the file.
    pub line: usize,
}

/// A loaded split.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub task: Task,
    pub split: Split,
    pub path: PathBuf,
    pub examples: Vec<Example>,
}

/// Column layout of one (task, split) file.
#[derive(Debug, Clone, Copy)]
struct Layout {
    header: bool,
    columns: usize,
    id: Option<usize>,
    text_a: usize,
    text_b: Option<usize>,
    label: Option<usize>,
}

const BINARY: &[&str] = &["0", "1"];
const NLI3: &[&str] = &["entailment", "neutral", "contradiction"];
const NLI2: &[&str] = &["entailment", "not_entailment"];

impl Task {
    pub const ALL: [Task; 10] = [
        Task::Cola,
        Task::Sst2,
        Task::Mrpc,
        Task::Stsb,
        Task::Qqp,
        Task::Mnli,
        Task::Qnli,
        Task::Rte,
        Task::Wnli,
        Task::Ax,
    ];

    /// The folder name in `glue_data`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Task::Cola => "CoLA",
            Task::Sst2 => "SST-2",
            Task::Mrpc => "MRPC",
            Task::Stsb => "STS-B",
            Task::Qqp => "QQP",
            Task::Mnli => "MNLI",
            Task::Qnli => "QNLI",
            Task::Rte => "RTE",
            Task::Wnli => "WNLI",
            Task::Ax => "diagnostic",
        }
    }

    /// The short lower-case name used on the command line and in recipes.
    pub fn name(self) -> &'static str {
        match self {
            Task::Cola => "cola",
            Task::Sst2 => "sst2",
            Task::Mrpc => "mrpc",
            Task::Stsb => "stsb",
            Task::Qqp => "qqp",
            Task::Mnli => "mnli",
            Task::Qnli => "qnli",
            Task::Rte => "rte",
            Task::Wnli => "wnli",
            Task::Ax => "ax",
        }
    }

    pub fn label_kind(self) -> LabelKind {
        match self {
            Task::Stsb => LabelKind::Score { min: 0.0, max: 5.0 },
            Task::Mnli | Task::Ax => LabelKind::Classes(NLI3),
            Task::Qnli | Task::Rte => LabelKind::Classes(NLI2),
            Task::Cola | Task::Sst2 | Task::Mrpc | Task::Qqp | Task::Wnli => {
                LabelKind::Classes(BINARY)
            }
        }
    }

    /// Number of model outputs: classes, or 1 for the regression task.
    pub fn num_outputs(self) -> usize {
        match self.label_kind() {
            LabelKind::Classes(names) => names.len(),
            LabelKind::Score { .. } => 1,
        }
    }

    pub fn splits(self) -> &'static [Split] {
        match self {
            Task::Mnli => &[
                Split::Train,
                Split::DevMatched,
                Split::DevMismatched,
                Split::TestMatched,
                Split::TestMismatched,
            ],
            Task::Ax => &[Split::Test],
            _ => &[Split::Train, Split::Dev, Split::Test],
        }
    }

    /// The file of `split`, relative to the GLUE folder, or `None` if the task has no such split.
    pub fn file(self, split: Split) -> Option<String> {
        if !self.splits().contains(&split) {
            return None;
        }
        let stem = match (self, split) {
            (Task::Ax, _) => "diagnostic",
            (_, Split::Train) => "train",
            (_, Split::Dev) => "dev",
            (_, Split::Test) => "test",
            (_, Split::DevMatched) => "dev_matched",
            (_, Split::DevMismatched) => "dev_mismatched",
            (_, Split::TestMatched) => "test_matched",
            (_, Split::TestMismatched) => "test_mismatched",
        };
        Some(format!("{}/{stem}.tsv", self.dir_name()))
    }

    /// The dev splits the task is evaluated on (MNLI: matched, then mismatched).
    pub fn dev_splits(self) -> &'static [Split] {
        match self {
            Task::Mnli => &[Split::DevMatched, Split::DevMismatched],
            Task::Ax => &[],
            _ => &[Split::Dev],
        }
    }

    fn layout(self, split: Split) -> Layout {
        let test = matches!(
            split,
            Split::Test | Split::TestMatched | Split::TestMismatched
        );
        let l = |header, columns, id, text_a, text_b, label| Layout {
            header,
            columns,
            id,
            text_a,
            text_b,
            label,
        };
        match (self, test) {
            // source, label, original label (or blank), sentence; no header
            (Task::Cola, false) => l(false, 4, None, 3, None, Some(1)),
            (Task::Cola, true) => l(true, 2, Some(0), 1, None, None),
            (Task::Sst2, false) => l(true, 2, None, 0, None, Some(1)),
            (Task::Sst2, true) => l(true, 2, Some(0), 1, None, None),
            // Quality, #1 ID, #2 ID, #1 String, #2 String
            (Task::Mrpc, false) => l(true, 5, None, 3, Some(4), Some(0)),
            (Task::Mrpc, true) => l(true, 5, Some(0), 3, Some(4), None),
            // index genre filename year old_index source1 source2 sentence1 sentence2 [score]
            (Task::Stsb, false) => l(true, 10, None, 7, Some(8), Some(9)),
            (Task::Stsb, true) => l(true, 9, Some(0), 7, Some(8), None),
            // id qid1 qid2 question1 question2 is_duplicate / id question1 question2
            (Task::Qqp, false) => l(true, 6, None, 3, Some(4), Some(5)),
            (Task::Qqp, true) => l(true, 3, Some(0), 1, Some(2), None),
            // index promptID pairID genre 4 parses sentence1 sentence2 label1 [label2-5] gold_label
            (Task::Mnli, false) if split == Split::Train => l(true, 12, None, 8, Some(9), Some(11)),
            (Task::Mnli, false) => l(true, 16, None, 8, Some(9), Some(15)),
            (Task::Mnli, true) => l(true, 10, Some(0), 8, Some(9), None),
            // index sentence1/question sentence2/sentence [label]
            (Task::Qnli | Task::Rte | Task::Wnli, false) => l(true, 4, None, 1, Some(2), Some(3)),
            (Task::Qnli | Task::Rte | Task::Wnli | Task::Ax, true) => {
                l(true, 3, Some(0), 1, Some(2), None)
            }
            (Task::Ax, false) => unreachable!("AX has only a test split"),
        }
    }

    /// Parses a gold label as written in the files.
    fn parse_label(self, field: &str) -> std::result::Result<Label, String> {
        match self.label_kind() {
            LabelKind::Classes(names) => names
                .iter()
                .position(|n| *n == field)
                .map(Label::Class)
                .ok_or_else(|| format!("label {field:?} is not one of {names:?}")),
            LabelKind::Score { min, max } => match field.parse::<f32>() {
                Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(Label::Score(v)),
                _ => Err(format!("score {field:?} is not a number in [{min}, {max}]")),
            },
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        Task::ALL
            .into_iter()
            .find(|t| t.name() == wanted || (wanted == "diagnostic" && *t == Task::Ax))
            .ok_or_else(|| {
                let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
                Error::InvalidInput(format!(
                    "unknown GLUE task {s:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
            Split::DevMatched => "dev_matched",
            Split::DevMismatched => "dev_mismatched",
            Split::TestMatched => "test_matched",
            Split::TestMismatched => "test_mismatched",
        }
    }

    pub fn is_test(self) -> bool {
        matches!(
            self,
            Split::Test | Split::TestMatched | Split::TestMismatched
        )
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        const ALL: [Split; 7] = [
            Split::Train,
            Split::Dev,
            Split::Test,
            Split::DevMatched,
            Split::DevMismatched,
            Split::TestMatched,
            Split::TestMismatched,
        ];
        ALL.into_iter()
            .find(|split| split.name() == s.trim())
            .ok_or_else(|| Error::InvalidInput(format!("unknown split {s:?}")))
    }
}

/// The GLUE folder: `flag` (`--data-dir`), else `$GLUE_DIR`, else `datasets/glue`.
pub fn glue_dir(flag: Option<&Path>) -> PathBuf {
    match (flag, std::env::var_os("GLUE_DIR")) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(env)) => PathBuf::from(env),
        (None, None) => PathBuf::from("datasets/glue"),
    }
}

/// Loads `task`'s `split` from the GLUE folder `dir`.
pub fn load(dir: &Path, task: Task, split: Split) -> Result<Dataset> {
    let relative = task.file(split).ok_or_else(|| {
        let splits: Vec<&str> = task.splits().iter().map(|s| s.name()).collect();
        Error::InvalidInput(format!(
            "{task} has no {split} split (it has {})",
            splits.join(", ")
        ))
    })?;
    let path = dir.join(relative);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let examples = parse_split(&bytes, task, split, &path)?;
    Ok(Dataset {
        task,
        split,
        path,
        examples,
    })
}

/// Parses the bytes of a split file; `path` is used in error messages.
pub fn parse_split(bytes: &[u8], task: Task, split: Split, path: &Path) -> Result<Vec<Example>> {
    let layout = task.layout(split);
    let rows = parse_rows(bytes, layout.columns, path)?;
    let data = if layout.header {
        rows.get(1..).unwrap_or(&[])
    } else {
        &rows[..]
    };
    if data.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            line: None,
            message: format!("{task} {split} has no data rows"),
        });
    }
    data.iter()
        .enumerate()
        .map(|(row_number, row)| example(task, layout, row, row_number, path))
        .collect()
}

fn example(
    task: Task,
    layout: Layout,
    row: &Row,
    row_number: usize,
    path: &Path,
) -> Result<Example> {
    let error = |message: String| Error::Data {
        path: path.to_path_buf(),
        line: Some(row.line),
        message,
    };
    let id = match layout.id {
        Some(column) => row.fields[column].parse().map_err(|_| {
            error(format!(
                "index {:?} is not a non-negative integer",
                row.fields[column]
            ))
        })?,
        None => row_number,
    };
    let label = layout
        .label
        .map(|column| task.parse_label(row.fields[column]).map_err(error))
        .transpose()?;
    Ok(Example {
        id,
        text_a: row.fields[layout.text_a].to_string(),
        text_b: layout.text_b.map(|column| row.fields[column].to_string()),
        label,
        line: row.line,
    })
}
