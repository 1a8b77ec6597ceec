//! The majority-class baseline of a GLUE task, the line a fine-tuned row has to clear
//! (docs/results.md): every dev example predicted as the training split's most frequent class,
//! scored like a model's predictions.

use std::path::Path;

use super::metrics::{MnliMain, TaskPredictions, TaskScore, task_score};
use crate::data::{Label, LabelKind, Split, Task, load};
use crate::error::{Error, Result};

/// The class labels of `split`; an unlabelled or non-class example is an error naming its line.
fn class_labels(dir: &Path, task: Task, split: Split) -> Result<Vec<usize>> {
    let data = load(dir, task, split)?;
    data.examples
        .iter()
        .map(|e| match e.label {
            Some(Label::Class(c)) => Ok(c),
            _ => Err(Error::InvalidData(format!(
                "{task} {}: line {} has no class label",
                split.name(),
                e.line
            ))),
        })
        .collect()
}

/// The training split's most frequent class (ties: the smaller class id) scored on the dev
/// split(s) of `task` in `dir` (the whole training split, whatever subset a recipe trains on).
/// `None` for STS-B: a constant prediction has no correlation with the gold scores.
pub fn majority_class(task: Task, dir: &Path, mnli: MnliMain) -> Result<Option<TaskScore>> {
    let LabelKind::Classes(names) = task.label_kind() else {
        return Ok(None);
    };
    let mut counts = vec![0usize; names.len()];
    for c in class_labels(dir, task, Split::Train)? {
        counts[c] += 1;
    }
    // `max_by_key` keeps the last of equal maxima: over the reversed ids, the smallest.
    let (majority, _) = counts
        .iter()
        .enumerate()
        .rev()
        .max_by_key(|&(_, n)| *n)
        .ok_or_else(|| Error::InvalidData(format!("{task}: no classes")))?;
    let constant = |split| -> Result<(Vec<usize>, Vec<usize>)> {
        let labels = class_labels(dir, task, split)?;
        Ok((vec![majority; labels.len()], labels))
    };
    let predictions = match task.dev_splits() {
        [matched, mismatched] => TaskPredictions::Mnli {
            matched: constant(*matched)?,
            mismatched: constant(*mismatched)?,
        },
        [dev] => {
            let (predictions, labels) = constant(*dev)?;
            TaskPredictions::Classes {
                predictions,
                labels,
            }
        }
        other => {
            return Err(Error::Internal(format!(
                "{task} has {} dev splits",
                other.len()
            )));
        }
    };
    task_score(task, &predictions, mnli).map(Some)
}
