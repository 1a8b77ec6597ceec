//! The calibration set of `qpeft quantize` and `qpeft init`, and calibrating a pretrained model
//! with a module solver on a device: the texts are loaded, tokenized and run through both
//! streams (docs/algorithms.md §3), and the quantization is described for the file header.

use std::path::Path;
use std::time::Instant;

use crate::kernels::Backend;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::calibration::calibrate;
use crate::data::{Split, Task, load};
use crate::device::{BackendTask, DeviceSpec};
use crate::error::{Error, Result};
use crate::formats::packed::{FORMAT_VERSION, QuantMetadata};
use crate::model::{PretrainedModel, TextInput, encoder_input};
use crate::quant::grid::Bits;
use crate::quant::solve::ModuleSolver;
use crate::quant::spec::Quantizer;
use crate::quant::stats::StatsNeeded;
use crate::seed::substream_rng;

/// Calibration text and how much of it: a GLUE task's training pairs, pooled GLUE text
/// ([`POOLED_CALIBRATION`]) or a file with one text per line, shuffled by `seed` and truncated to
/// `samples` texts of at most `max_length` tokens, run in batches of `batch_size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    pub source: String,
    pub samples: usize,
    pub max_length: usize,
    pub batch_size: usize,
    pub seed: u64,
}

/// The calibration source that pools generic GLUE text: the training pairs of
/// [`POOLED_TASKS`], taken in turn (one of each task, then the next of each, …), so that every
/// task gives an equal share however large its training set (SST-2's 67,349 sentences
/// against RTE's 2,490 pairs).
pub const POOLED_CALIBRATION: &str = "glue";

/// The tasks [`POOLED_CALIBRATION`] pools: those of GLUE's training sets that are public in
/// the `glue_data` layout here (QQP, MNLI and QNLI are not), WNLI (635 pairs made to defeat
/// sentence models) left out.
pub const POOLED_TASKS: [Task; 5] = [Task::Cola, Task::Sst2, Task::Mrpc, Task::Stsb, Task::Rte];

impl CalibrationSpec {
    /// How the file header describes the calibration.
    pub fn describe(&self, texts: usize) -> String {
        format!(
            "{} ({texts} texts, max length {}, seed {})",
            self.source, self.max_length, self.seed
        )
    }

    /// The texts: a file's non-empty lines, a GLUE task's training pairs from `data_dir`
    /// (AX, which has no training split, its test pairs), or [`POOLED_CALIBRATION`]'s.
    pub fn texts(&self, data_dir: &Path) -> Result<Vec<TextInput>> {
        let path = Path::new(&self.source);
        // A file of that name wins over a task or the pooled source.
        let texts = if !path.is_file() && self.source == POOLED_CALIBRATION {
            let shuffled = POOLED_TASKS
                .iter()
                .map(|&task| {
                    let mut texts = task_texts(data_dir, task)?;
                    let stream = format!("calibration/{}", task.name());
                    texts.shuffle(&mut substream_rng(self.seed, &stream));
                    Ok(texts)
                })
                .collect::<Result<Vec<_>>>()?;
            interleave(shuffled, self.samples)
        } else {
            let mut texts = if path.is_file() {
                std::fs::read_to_string(path)
                    .map_err(|e| Error::io(path, e))?
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(TextInput::single)
                    .collect()
            } else {
                let task: Task = self.source.parse().map_err(|_| {
                    Error::Config(format!(
                        "calibration source {:?} is neither a file, a GLUE task nor {POOLED_CALIBRATION:?} (pooled GLUE text)",
                        self.source
                    ))
                })?;
                task_texts(data_dir, task)?
            };
            texts.shuffle(&mut substream_rng(self.seed, "calibration"));
            texts
        };
        if texts.is_empty() {
            return Err(Error::Config(format!(
                "no calibration text in {}",
                self.source
            )));
        }
        Ok(texts.into_iter().take(self.samples).collect())
    }
}

/// A GLUE task's training pairs (AX's test pairs) as calibration texts.
fn task_texts(data_dir: &Path, task: Task) -> Result<Vec<TextInput>> {
    let split = match task {
        Task::Ax => Split::Test,
        _ => Split::Train,
    };
    Ok(load(data_dir, task, split)?
        .examples
        .into_iter()
        .map(|e| TextInput {
            first: e.text_a,
            second: e.text_b,
        })
        .collect())
}

/// The first `n` items of `lists` taken in turn, one from each list that still has one.
fn interleave<T>(lists: Vec<Vec<T>>, n: usize) -> Vec<T> {
    let mut iters: Vec<_> = lists.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let before = out.len();
        out.extend(
            iters
                .iter_mut()
                .filter_map(Iterator::next)
                .take(n - out.len()),
        );
        if out.len() == before {
            break;
        }
    }
    out
}

/// The quantization a calibration made, as the file header records it, and its wall time.
pub struct Calibrated {
    pub metadata: QuantMetadata,
    pub seconds: f64,
}

/// Runs two-stream calibration of `model` on `texts` with `solver`, collecting the statistics
/// it `needs`, on `device`, and describes
/// the base `quantizer` at `bits` for the header.
pub fn calibrate_model<S: ModuleSolver>(
    model: &PretrainedModel,
    texts: &[TextInput],
    spec: &CalibrationSpec,
    solver: &mut S,
    needs: StatsNeeded,
    (quantizer, bits): (&Quantizer, u8),
    device: DeviceSpec,
) -> Result<Calibrated> {
    let started = Instant::now();
    device.run(Calibrate {
        model,
        texts,
        spec,
        needs,
        solver,
    })??;
    Ok(Calibrated {
        metadata: QuantMetadata {
            format_version: FORMAT_VERSION,
            method: quantizer.method.name().to_string(),
            bits,
            grid: quantizer.kind.to_string(),
            group: quantizer.group,
            embedding_bits: quantizer.embedding_bits.map(Bits::get),
            calibration: spec.describe(texts.len()),
            qpeft_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Tokenizes the texts and runs the calibration on the chosen backend.
struct Calibrate<'a, S: ModuleSolver> {
    model: &'a PretrainedModel,
    texts: &'a [TextInput],
    spec: &'a CalibrationSpec,
    needs: StatsNeeded,
    solver: &'a mut S,
}

impl<S: ModuleSolver> BackendTask for Calibrate<'_, S> {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let tokenizer = self.model.tokenizer(self.spec.max_length)?;
        let batches = self
            .texts
            .chunks(self.spec.batch_size.max(1))
            .map(|chunk| Ok(encoder_input::<B>(&tokenizer.encode_batch(chunk)?, &device)))
            .collect::<Result<Vec<_>>>()?;
        let mut encoder = self.model.encoder::<B>(&device)?;
        calibrate(&mut encoder, &batches, self.needs, self.solver)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::interleave;

    #[test]
    fn interleave_takes_one_of_each_list_in_turn_until_n_or_all_are_spent() {
        let lists = || vec![vec![1, 2, 3], vec![10], vec![20, 21]];
        assert_eq!(interleave(lists(), 4), vec![1, 10, 20, 2]);
        assert_eq!(interleave(lists(), 6), vec![1, 10, 20, 2, 21, 3]);
        assert_eq!(interleave(lists(), 99), vec![1, 10, 20, 2, 21, 3]);
        assert_eq!(interleave(Vec::<Vec<u8>>::new(), 3), Vec::<u8>::new());
    }
}
