//! Scoring a classifier on a task's dev split(s) with the task's GLUE metrics.

use crate::kernels::Backend;

use super::metrics::{MnliMain, TaskPredictions, TaskScore, task_score};
use super::predict::{Prediction, predict_split};
use crate::data::batch::TokenizedSplit;
use crate::data::{Label, Task};
use crate::error::{Error, Result};
use crate::model::SequenceClassifier;

/// Predictions and gold labels of one split as class ids or scores.
fn pair_up(split: &TokenizedSplit, predictions: &[Prediction]) -> Result<TaskPredictions> {
    let missing = || {
        Error::InvalidData(format!(
            "{} {} has unlabelled examples: only dev splits can be scored",
            split.task, split.split
        ))
    };
    let mut classes = (Vec::new(), Vec::new());
    let mut scores = (Vec::new(), Vec::new());
    for (prediction, label) in predictions.iter().zip(&split.labels) {
        match (prediction, label.ok_or_else(missing)?) {
            (Prediction::Class(p), Label::Class(l)) => {
                classes.0.push(*p);
                classes.1.push(l);
            }
            (Prediction::Score(p), Label::Score(l)) => {
                scores.0.push(f64::from(*p));
                scores.1.push(f64::from(l));
            }
            _ => {
                return Err(Error::InvalidData(format!(
                    "{}: the head's outputs do not match the task's labels",
                    split.task
                )));
            }
        }
    }
    Ok(if scores.0.is_empty() {
        TaskPredictions::Classes {
            predictions: classes.0,
            labels: classes.1,
        }
    } else {
        TaskPredictions::Scores {
            predictions: scores.0,
            labels: scores.1,
        }
    })
}

/// The task's metrics on its dev split(s) (MNLI: matched then mismatched).
pub fn evaluate_dev<B: Backend>(
    model: &SequenceClassifier<B>,
    task: Task,
    splits: &[TokenizedSplit],
    batch_size: usize,
    mnli: MnliMain,
    device: &B::Device,
) -> Result<TaskScore> {
    let mut scored = Vec::with_capacity(splits.len());
    for split in splits {
        let predictions = predict_split(model, split, batch_size, device)?;
        scored.push(pair_up(split, &predictions)?);
    }
    let predictions = match (task, scored.as_slice()) {
        (
            Task::Mnli,
            [
                TaskPredictions::Classes {
                    predictions: pm,
                    labels: lm,
                },
                TaskPredictions::Classes {
                    predictions: pmm,
                    labels: lmm,
                },
            ],
        ) => TaskPredictions::Mnli {
            matched: (pm.clone(), lm.clone()),
            mismatched: (pmm.clone(), lmm.clone()),
        },
        (_, [single]) => single.clone(),
        _ => {
            return Err(Error::InvalidData(format!(
                "{task}: expected its dev split(s), got {} splits",
                splits.len()
            )));
        }
    };
    task_score(task, &predictions, mnli)
}
