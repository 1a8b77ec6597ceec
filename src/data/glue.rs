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

/// The labels of a batch as one typed column.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelColumn {
    Classes(Vec<i64>),
    Scores(Vec<f32>),
}

impl LabelColumn {
    /// The labels of `labels`, all of one kind (the first decides); an unlabelled example or a
    /// mix of kinds is an error.
    pub fn new(labels: &[Option<Label>]) -> crate::error::Result<Self> {
        let unlabelled =
            || crate::error::Error::InvalidData("a training example has no label".into());
        match labels.first().copied().flatten() {
            Some(Label::Score(_)) => labels
                .iter()
                .map(|l| match l {
                    Some(Label::Score(s)) => Ok(*s),
                    _ => Err(unlabelled()),
                })
                .collect::<crate::error::Result<_>>()
                .map(LabelColumn::Scores),
            _ => labels
                .iter()
                .map(|l| match l {
                    Some(Label::Class(c)) => Ok(*c as i64),
                    _ => Err(unlabelled()),
                })
                .collect::<crate::error::Result<_>>()
                .map(LabelColumn::Classes),
        }
    }
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
    /// The header line, tab-separated; `None` for CoLA's headerless train/dev files.
    header: Option<&'static str>,
    columns: usize,
    /// The index/id column, if the file has one. Test-split ids are read from it (submissions
    /// refer to them); other splits number their rows from 0.
    index: Option<usize>,
    text_a: usize,
    text_b: Option<usize>,
    label: Option<usize>,
}

const MNLI_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2";
const MNLI_TRAIN_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label";
const MNLI_DEV_HEADER: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label";
const STSB_HEADER: &str =
    "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2";
const STSB_LABELLED_HEADER: &str =
    "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore";

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
        let test = split.is_test();
        let l = |header, columns, index, text_a, text_b, label| Layout {
            header,
            columns,
            index,
            text_a,
            text_b,
            label,
        };
        match (self, test) {
            // source, label, original label (or blank), sentence; no header
            (Task::Cola, false) => l(None, 4, None, 3, None, Some(1)),
            (Task::Cola, true) => l(Some("index\tsentence"), 2, Some(0), 1, None, None),
            (Task::Sst2, false) => l(Some("sentence\tlabel"), 2, None, 0, None, Some(1)),
            (Task::Sst2, true) => l(Some("index\tsentence"), 2, Some(0), 1, None, None),
            (Task::Mrpc, false) => l(
                Some("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"),
                5,
                None,
                3,
                Some(4),
                Some(0),
            ),
            (Task::Mrpc, true) => l(
                Some("index\t#1 ID\t#2 ID\t#1 String\t#2 String"),
                5,
                Some(0),
                3,
                Some(4),
                None,
            ),
            (Task::Stsb, false) => l(Some(STSB_LABELLED_HEADER), 10, Some(0), 7, Some(8), Some(9)),
            (Task::Stsb, true) => l(Some(STSB_HEADER), 9, Some(0), 7, Some(8), None),
            (Task::Qqp, false) => l(
                Some("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"),
                6,
                Some(0),
                3,
                Some(4),
                Some(5),
            ),
            (Task::Qqp, true) => l(
                Some("id\tquestion1\tquestion2"),
                3,
                Some(0),
                1,
                Some(2),
                None,
            ),
            (Task::Mnli, false) if split == Split::Train => {
                l(Some(MNLI_TRAIN_HEADER), 12, Some(0), 8, Some(9), Some(11))
            }
            (Task::Mnli, false) => l(Some(MNLI_DEV_HEADER), 16, Some(0), 8, Some(9), Some(15)),
            (Task::Mnli, true) => l(Some(MNLI_HEADER), 10, Some(0), 8, Some(9), None),
            (Task::Qnli, false) => l(
                Some("index\tquestion\tsentence\tlabel"),
                4,
                Some(0),
                1,
                Some(2),
                Some(3),
            ),
            (Task::Qnli, true) => l(
                Some("index\tquestion\tsentence"),
                3,
                Some(0),
                1,
                Some(2),
                None,
            ),
            (Task::Rte | Task::Wnli, false) => l(
                Some("index\tsentence1\tsentence2\tlabel"),
                4,
                Some(0),
                1,
                Some(2),
                Some(3),
            ),
            (Task::Rte | Task::Wnli | Task::Ax, true) => l(
                Some("index\tsentence1\tsentence2"),
                3,
                Some(0),
                1,
                Some(2),
                None,
            ),
            (Task::Ax, false) => unreachable!("AX has only a test split"),
        }
    }

    /// Formats a label as the files write it.
    fn format_label(self, label: Label) -> Option<String> {
        match (self.label_kind(), label) {
            (LabelKind::Classes(names), Label::Class(c)) => names.get(c).map(|n| n.to_string()),
            (LabelKind::Score { min, max }, Label::Score(s)) if (min..=max).contains(&s) => {
                Some(s.to_string())
            }
            _ => None,
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

/// Written as its name (`stsb`), as recipes and flags spell it.
impl serde::Serialize for Task {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Task {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
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
                Error::Config(format!(
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

/// Written as its name (`dev_matched`), as flags spell it.
impl serde::Serialize for Split {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
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
            .ok_or_else(|| Error::Config(format!("unknown split {s:?}")))
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
        Error::Config(format!(
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
    let data = if layout.header.is_some() {
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
        .map(|(row_number, row)| example(task, split, layout, row, row_number, path))
        .collect()
}

fn example(
    task: Task,
    split: Split,
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
    let id = match layout.index.filter(|_| split.is_test()) {
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

/// Writes `examples` as `task`'s `split` file in the official layout (columns qpeft does not
/// read are left empty), so that files from other sources load like `glue_data` ones.
/// Fails, writing nothing, on a text with a tab or line break or a label the task lacks.
pub fn write_split(path: &Path, task: Task, split: Split, examples: &[Example]) -> Result<()> {
    let layout = task.layout(split);
    let invalid = |e: &Example, message: String| Error::Data {
        path: path.to_path_buf(),
        line: None,
        message: format!("example {}: {message}", e.id),
    };
    let mut text = String::new();
    if let Some(header) = layout.header {
        text.push_str(header);
        text.push('\n');
    }
    for e in examples {
        let mut fields = vec![String::new(); layout.columns];
        if let Some(column) = layout.index {
            fields[column] = e.id.to_string();
        }
        let texts = [
            (Some(layout.text_a), Some(&e.text_a)),
            (layout.text_b, e.text_b.as_ref()),
        ];
        for (column, value) in texts {
            match (column, value) {
                (Some(column), Some(value)) => {
                    if value.contains(['\t', '\n', '\r']) {
                        return Err(invalid(
                            e,
                            "text holds a tab or line break, which TSV cannot".into(),
                        ));
                    }
                    fields[column] = value.clone();
                }
                (Some(_), None) => return Err(invalid(e, format!("{task} needs a sentence pair"))),
                (None, _) => {}
            }
        }
        if let Some(column) = layout.label {
            let label = e
                .label
                .ok_or_else(|| invalid(e, format!("{task} {split} needs labels")))?;
            fields[column] = task
                .format_label(label)
                .ok_or_else(|| invalid(e, format!("label {label:?} does not fit {task}")))?;
        }
        text.push_str(&fields.join("\t"));
        text.push('\n');
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| Error::io(path, e))?;
    file.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_have_as_many_fields_as_rows() {
        for task in Task::ALL {
            for &split in task.splits() {
                let layout = task.layout(split);
                if let Some(header) = layout.header {
                    assert_eq!(header.split('\t').count(), layout.columns, "{task} {split}");
                }
            }
        }
    }

    #[test]
    fn written_splits_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        for task in Task::ALL {
            for &split in task.splits() {
                let label = match task.label_kind() {
                    _ if split.is_test() => None,
                    LabelKind::Classes(names) => Some(Label::Class(names.len() - 1)),
                    LabelKind::Score { .. } => Some(Label::Score(3.8)),
                };
                let pair = !matches!(task, Task::Cola | Task::Sst2);
                let examples: Vec<Example> = (0..3)
                    .map(|i| Example {
                        id: i,
                        text_a: format!("a \"quoted\" sentence {i}"),
                        text_b: pair.then(|| format!("second {i}")),
                        label,
                        line: i + if task.layout(split).header.is_some() {
                            2
                        } else {
                            1
                        },
                    })
                    .collect();
                let path = dir.path().join(task.file(split).unwrap());
                write_split(&path, task, split, &examples).unwrap();
                assert_eq!(
                    load(dir.path(), task, split).unwrap().examples,
                    examples,
                    "{task} {split}"
                );
            }
        }
        let bad = Example {
            id: 7,
            text_a: "tab\there".into(),
            text_b: None,
            label: Some(Label::Class(0)),
            line: 1,
        };
        let err =
            write_split(&dir.path().join("x.tsv"), Task::Sst2, Split::Train, &[bad]).unwrap_err();
        assert!(
            err.to_string().contains("example 7: text holds a tab"),
            "{err}"
        );
    }
}
