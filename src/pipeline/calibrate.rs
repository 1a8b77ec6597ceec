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

/// Calibration text and how much of it: a GLUE task's training pairs or a file with one text
/// per line, shuffled by `seed` and truncated to `samples` texts of at most `max_length`
/// tokens, run in batches of `batch_size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    pub source: String,
    pub samples: usize,
    pub max_length: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl CalibrationSpec {
    /// How the file header describes the calibration.
    pub fn describe(&self, texts: usize) -> String {
        format!(
            "{} ({texts} texts, max length {}, seed {})",
            self.source, self.max_length, self.seed
        )
    }

    /// The texts: a file's non-empty lines, or a GLUE task's training pairs from `data_dir`
    /// (AX, which has no training split, its test pairs).
    pub fn texts(&self, data_dir: &Path) -> Result<Vec<TextInput>> {
        let path = Path::new(&self.source);
        let mut texts: Vec<TextInput> = if path.is_file() {
            std::fs::read_to_string(path)
                .map_err(|e| Error::io(path, e))?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(TextInput::single)
                .collect()
        } else {
            let task: Task = self.source.parse().map_err(|_| {
                Error::Config(format!(
                    "calibration source {:?} is neither a file nor a GLUE task",
                    self.source
                ))
            })?;
            let split = if task == Task::Ax {
                Split::Test
            } else {
                Split::Train
            };
            load(data_dir, task, split)?
                .examples
                .into_iter()
                .map(|e| TextInput {
                    first: e.text_a,
                    second: e.text_b,
                })
                .collect()
        };
        if texts.is_empty() {
            return Err(Error::Config(format!(
                "no calibration text in {}",
                self.source
            )));
        }
        texts.shuffle(&mut substream_rng(self.seed, "calibration"));
        texts.truncate(self.samples);
        Ok(texts)
    }
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
