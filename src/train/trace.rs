//! The first optimizer steps of a run, written out so that an independent implementation can
//! replay them (`qpeft train --dump-batches N`; `scripts/check_training.py` replays them in
//! PyTorch and compares). The dump folder holds:
//! - `initial.safetensors` and `final.safetensors`: every adapter factor and the head before
//!   the first and after the last step, under PEFT's and HF's names and layouts
//!   ([`crate::adapters::export::adapter_and_head_tensors`]);
//! - `batches.safetensors`: `step-S.batch-M.input_ids`, `.attention_mask`, `.token_type_ids`
//!   (I64 `[batch, len]`) and `.labels` (I64 class ids or F32 scores, `[batch]`) for optimizer
//!   step S (1-based) and micro-batch M (0-based), exactly as the trainer fed them;
//! - `gradients.safetensors`: `step-S.<name>`, the gradient of every tensor of
//!   `initial.safetensors`, summed over the micro-batches, before SRR's scaling and clipping,
//!   for the steps whose starting parameters are on disk: step 1 (`initial.safetensors`) and
//!   the first step of every later epoch (the run's epoch checkpoints), so that another
//!   implementation can recompute them; every step's would make a whole-run dump gigabytes;
//! - `trace.json` ([`StepTrace`]): per step the learning rate, loss and gradient norm, the
//!   schedule's total and warmup steps, and the resolved recipe.

use std::path::Path;

use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use super::optim::StepStats;
use super::step::MicroBatch;
use crate::data::{Label, LabelColumn};
use crate::error::{Error, Result};
use crate::formats::safetensors::{NamedTensor, RawTensor, write_f32_tensors, write_tensors};

/// The version of the dump layout above.
/// 2: `gradients.safetensors` holds step 1 and each epoch's first step (1 held every step's).
pub const TRACE_FORMAT_VERSION: u32 = 2;

/// One finished optimizer step, as the training loop reports it.
pub struct ObservedStep<'a> {
    /// 1-based.
    pub step: usize,
    pub micro_batches: &'a [MicroBatch],
    pub learning_rate: f64,
    /// The step's loss (mean over its micro-batches).
    pub loss: f64,
    pub stats: StepStats,
    /// The step's summed gradients (before SRR's scaling and clipping) of the adapter factors and
    /// the head, named as in [`crate::adapters::export::adapter_and_head_params`]; present when
    /// the observer [wants them](StepObserver::wants_gradients).
    pub gradients: Option<&'a [NamedTensor]>,
    pub total_steps: usize,
    pub warmup_steps: usize,
}

/// Something the training loop tells about every optimizer step.
pub trait StepObserver {
    fn observe(&mut self, step: &ObservedStep<'_>) -> Result<()>;

    /// Whether the coming step's [`ObservedStep::gradients`] should be filled (it costs a copy);
    /// `first_of_epoch`: the step starts an epoch.
    fn wants_gradients(&self, _first_of_epoch: bool) -> bool {
        false
    }
}

/// An observer lent to the loop, so that its owner reads it after training.
impl<T: StepObserver + ?Sized> StepObserver for &mut T {
    fn observe(&mut self, step: &ObservedStep<'_>) -> Result<()> {
        (**self).observe(step)
    }

    fn wants_gradients(&self, first_of_epoch: bool) -> bool {
        (**self).wants_gradients(first_of_epoch)
    }
}

/// No observer.
impl StepObserver for () {
    fn observe(&mut self, _step: &ObservedStep<'_>) -> Result<()> {
        Ok(())
    }
}

/// What `trace.json` records of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracedStep {
    pub step: usize,
    pub learning_rate: f64,
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub clipped: bool,
    pub micro_batches: usize,
    /// What each micro-batch's mean loss was divided by.
    pub divisors: Vec<f64>,
    pub examples: usize,
}

/// `trace.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTrace {
    pub format_version: u32,
    pub total_steps: usize,
    pub warmup_steps: usize,
    pub steps: Vec<TracedStep>,
    /// The resolved recipe of the run.
    pub recipe: serde_json::Value,
}

/// Collects the batches and numbers of every observed step.
#[derive(Default)]
pub struct StepDump {
    steps: Vec<TracedStep>,
    batches: Vec<RawTensor>,
    gradients: Vec<NamedTensor>,
    schedule: (usize, usize),
}

fn i64_tensor(name: String, shape: Vec<usize>, values: &[i64]) -> RawTensor {
    RawTensor {
        name,
        dtype: Dtype::I64,
        shape,
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn label_tensor(name: String, labels: &[Option<Label>]) -> Result<RawTensor> {
    Ok(match LabelColumn::new(labels)? {
        LabelColumn::Scores(scores) => RawTensor {
            name,
            dtype: Dtype::F32,
            shape: vec![scores.len()],
            bytes: scores.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
        LabelColumn::Classes(classes) => i64_tensor(name, vec![classes.len()], &classes),
    })
}

impl StepObserver for StepDump {
    /// Step 1 starts the first epoch: a dump never resumes (`--dump-batches` conflicts with
    /// `--resume`).
    fn wants_gradients(&self, first_of_epoch: bool) -> bool {
        first_of_epoch
    }

    fn observe(&mut self, step: &ObservedStep<'_>) -> Result<()> {
        for (name, shape, values) in step.gradients.unwrap_or_default() {
            self.gradients.push((
                format!("step-{}.{name}", step.step),
                shape.clone(),
                values.clone(),
            ));
        }
        for (m, MicroBatch { batch, .. }) in step.micro_batches.iter().enumerate() {
            let encoded = &batch.encoded;
            let shape = vec![encoded.batch_size, encoded.seq_len];
            let key = |field: &str| format!("step-{}.batch-{m}.{field}", step.step);
            self.batches.extend([
                i64_tensor(key("input_ids"), shape.clone(), &encoded.input_ids),
                i64_tensor(
                    key("attention_mask"),
                    shape.clone(),
                    &encoded.attention_mask,
                ),
                i64_tensor(key("token_type_ids"), shape, &encoded.token_type_ids),
                label_tensor(key("labels"), &batch.labels)?,
            ]);
        }
        self.steps.push(TracedStep {
            step: step.step,
            learning_rate: step.learning_rate,
            loss: step.loss,
            grad_norm: step.stats.grad_norm,
            clipped: step.stats.clipped,
            micro_batches: step.micro_batches.len(),
            divisors: step.micro_batches.iter().map(|m| m.divisor).collect(),
            examples: step
                .micro_batches
                .iter()
                .map(|m| m.batch.labels.len())
                .sum(),
        });
        self.schedule = (step.total_steps, step.warmup_steps);
        Ok(())
    }
}

impl StepDump {
    /// Steps observed so far.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Writes the dump folder `dir` (see the module documentation).
    pub fn write(
        &self,
        dir: &Path,
        recipe: serde_json::Value,
        initial: &[NamedTensor],
        last: &[NamedTensor],
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_f32_tensors(&dir.join("initial.safetensors"), initial, &[])?;
        write_f32_tensors(&dir.join("final.safetensors"), last, &[])?;
        write_tensors(&dir.join("batches.safetensors"), &self.batches, &[])?;
        write_f32_tensors(&dir.join("gradients.safetensors"), &self.gradients, &[])?;
        let trace = StepTrace {
            format_version: TRACE_FORMAT_VERSION,
            total_steps: self.schedule.0,
            warmup_steps: self.schedule.1,
            steps: self.steps.clone(),
            recipe,
        };
        let path = dir.join("trace.json");
        let text = serde_json::to_string_pretty(&trace).expect("the trace serializes");
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    }
}
