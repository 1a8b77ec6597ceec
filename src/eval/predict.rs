//! Running a classifier over a tokenized split, and writing GLUE-submission files
//! (`CoLA.tsv`, `MNLI-m.tsv`, `AX.tsv`, … with `index\tprediction` rows).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::kernels::Backend;
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::batch::TokenizedSplit;
use crate::data::{LabelKind, Split, Task};
use crate::error::{Error, Result};
use crate::model::{SequenceClassifier, encoder_input};

/// A model's prediction for one example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prediction {
    Class(usize),
    Score(f32),
}

/// Predictions for every example of `split`, in the split's order (batched longest first), by
/// the model with its adapters merged.
pub fn predict_split<B: Backend>(
    model: &SequenceClassifier<B>,
    split: &TokenizedSplit,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Prediction>> {
    let regression = matches!(split.task.label_kind(), LabelKind::Score { .. });
    let model = model.clone().merged();
    let mut predictions = vec![None; split.len()];
    let progress = ProgressBar::new(split.len() as u64).with_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed}<{eta}]")
            .expect("valid progress template"),
    );
    progress.set_message(format!("predicting {} {}", split.task, split.split));
    for indices in split.eval_batches(batch_size) {
        let batch = split.batch(&indices);
        let logits = model.forward(&encoder_input::<B>(&batch.encoded, device));
        let outputs = logits.dims()[1];
        let values = logits
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| Error::Internal(format!("reading logits back: {e:?}")))?;
        for (row, &index) in values.chunks_exact(outputs).zip(&indices) {
            predictions[index] = Some(if regression {
                Prediction::Score(row[0])
            } else {
                Prediction::Class(argmax(row))
            });
        }
        progress.inc(indices.len() as u64);
    }
    progress.finish_and_clear();
    Ok(predictions
        .into_iter()
        .map(|p| p.expect("every example is in one batch"))
        .collect())
}

/// Index of the largest value (the first one on ties, as torch.argmax does).
fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// The submission file name of a task's test split.
pub fn submission_file(task: Task, split: Split) -> Result<&'static str> {
    Ok(match (task, split) {
        (Task::Cola, Split::Test) => "CoLA.tsv",
        (Task::Sst2, Split::Test) => "SST-2.tsv",
        (Task::Mrpc, Split::Test) => "MRPC.tsv",
        (Task::Stsb, Split::Test) => "STS-B.tsv",
        (Task::Qqp, Split::Test) => "QQP.tsv",
        (Task::Mnli, Split::TestMatched) => "MNLI-m.tsv",
        (Task::Mnli, Split::TestMismatched) => "MNLI-mm.tsv",
        (Task::Qnli, Split::Test) => "QNLI.tsv",
        (Task::Rte, Split::Test) => "RTE.tsv",
        (Task::Wnli, Split::Test) => "WNLI.tsv",
        (Task::Ax, Split::Test) => "AX.tsv",
        _ => {
            return Err(Error::Config(format!(
                "{task} {split} is not a test split: submissions hold test-set predictions"
            )));
        }
    })
}

/// Writes `dir/<submission file>` with a header and one `id\tprediction` row per example,
/// predictions as the official label strings (STS-B: the score clipped to [0, 5], 3 decimals).
pub fn write_submission(
    dir: &Path,
    task: Task,
    split: Split,
    ids: &[usize],
    predictions: &[Prediction],
) -> Result<PathBuf> {
    if ids.len() != predictions.len() {
        return Err(Error::InvalidData(format!(
            "{} ids but {} predictions",
            ids.len(),
            predictions.len()
        )));
    }
    let path = dir.join(submission_file(task, split)?);
    let mut text = String::from("index\tprediction\n");
    for (id, prediction) in ids.iter().zip(predictions) {
        let value = match (task.label_kind(), prediction) {
            (LabelKind::Classes(names), Prediction::Class(c)) if *c < names.len() => {
                names[*c].to_string()
            }
            (LabelKind::Score { min, max }, Prediction::Score(s)) => {
                format!("{:.3}", s.clamp(min, max))
            }
            _ => {
                return Err(Error::InvalidData(format!(
                    "{task}: prediction {prediction:?} does not fit the task's labels"
                )));
            }
        };
        text.push_str(&format!("{id}\t{value}\n"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(&path, e))?;
    file.persist(&path).map_err(|e| Error::io(&path, e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_use_official_names_and_label_strings() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_submission(
            dir.path(),
            Task::Mnli,
            Split::TestMismatched,
            &[0, 1, 2],
            &[
                Prediction::Class(2),
                Prediction::Class(0),
                Prediction::Class(1),
            ],
        )
        .unwrap();
        assert!(path.ends_with("MNLI-mm.tsv"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "index\tprediction\n0\tcontradiction\n1\tentailment\n2\tneutral\n"
        );
        let path = write_submission(
            dir.path(),
            Task::Stsb,
            Split::Test,
            &[5, 9],
            &[Prediction::Score(5.2), Prediction::Score(2.34567)],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "index\tprediction\n5\t5.000\n9\t2.346\n"
        );
        assert!(
            write_submission(
                dir.path(),
                Task::Rte,
                Split::Dev,
                &[0],
                &[Prediction::Class(0)]
            )
            .is_err()
        );
        assert!(
            write_submission(
                dir.path(),
                Task::Rte,
                Split::Test,
                &[0],
                &[Prediction::Class(2)]
            )
            .is_err()
        );
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), 1);
        assert_eq!(argmax(&[-3.0]), 0);
    }
}
