//! One optimizer step — forward, loss and backward over each micro-batch, gradients summed,
//! one AdamW update — shared by the training loop and the throughput benchmark.

use crate::kernels::{AutodiffBackend, Backend};
use burn::tensor::activation::log_softmax;
use burn::tensor::cast::ToElement;
use burn::tensor::{Int, Tensor, TensorData};

use super::optim::{AccumulatedGrads, AdamW, ParamTable, StepStats};
use crate::data::batch::{Batch, TokenizedSplit};
use crate::data::{Label, LabelColumn};
use crate::error::{Error, Result};
use crate::model::{SequenceClassifier, encoder_input};

/// What one optimizer step did.
#[derive(Debug)]
pub struct StepOutput<B: AutodiffBackend> {
    pub model: SequenceClassifier<B>,
    /// The loss of the step: the mean over its micro-batches.
    pub loss: f64,
    pub examples: usize,
    pub stats: StepStats,
    /// The summed gradients before scaling and clipping, when asked for.
    pub grads: Option<AccumulatedGrads<B::InnerBackend>>,
}

/// Why a step did not update the model.
#[derive(Debug)]
pub enum StepFailure {
    /// A micro-batch's loss was NaN or infinite.
    NonFiniteLoss(f64),
    Error(Error),
}

impl From<Error> for StepFailure {
    fn from(error: Error) -> Self {
        StepFailure::Error(error)
    }
}

/// A forward/backward pass of an optimizer step: its examples and the divisor of their mean loss.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    pub batch: Batch,
    pub divisor: f64,
}

/// The passes of one optimizer step over `batches` (its gradient-accumulation batches, example
/// indices into `data`). The step's gradient is the mean over the batches of each batch's mean
/// gradient. With `length_split` > 1 each batch is sorted by length and cut into that many
/// parts, each padded only to its own longest row; a part of n_c of the batch's n_b examples
/// divides its mean loss by M·n_b/n_c (M batches), so the parts add up to the same gradient as the
/// whole batch, with less padding. With `length_split` = 1 the divisor is M, as it always was.
pub fn plan_micro_batches(
    data: &TokenizedSplit,
    batches: &[Vec<usize>],
    length_split: usize,
) -> Vec<MicroBatch> {
    let accumulation = batches.len() as f64;
    let lengths = data.lengths();
    let mut out = Vec::new();
    for indices in batches {
        if length_split <= 1 {
            out.push(MicroBatch {
                batch: data.batch(indices),
                divisor: accumulation,
            });
            continue;
        }
        let mut sorted = indices.clone();
        sorted.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let part = sorted.len().div_ceil(length_split).max(1);
        for chunk in sorted.chunks(part) {
            out.push(MicroBatch {
                batch: data.batch(chunk),
                divisor: accumulation * indices.len() as f64 / chunk.len() as f64,
            });
        }
    }
    out
}

/// Runs one optimizer step of `model` over `micro_batches` (each mean loss divided by its
/// divisor, see [`plan_micro_batches`]); `keep_grads` returns the gradients too.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: AutodiffBackend>(
    model: SequenceClassifier<B>,
    optimizer: &mut AdamW<B::InnerBackend>,
    table: &ParamTable<B::InnerBackend>,
    micro_batches: &[MicroBatch],
    learning_rate: f64,
    max_grad_norm: Option<f64>,
    keep_grads: bool,
    device: &B::Device,
) -> Result<StepOutput<B>, StepFailure> {
    let mut grads = AccumulatedGrads::default();
    let mut loss_sum = 0.0;
    let mut examples = 0;
    for MicroBatch { batch, divisor } in micro_batches {
        let logits = model.forward(&encoder_input::<B>(&batch.encoded, device));
        let loss = task_loss(logits, &batch.labels, device)? / *divisor;
        let value = f64::from(loss.clone().into_scalar().to_f32());
        if !value.is_finite() {
            return Err(StepFailure::NonFiniteLoss(value));
        }
        loss_sum += value;
        examples += batch.labels.len();
        grads.add::<B, _>(loss.backward(), &model, table);
    }
    let kept = keep_grads.then(|| grads.clone());
    let (model, stats): (_, StepStats) =
        optimizer.step::<B, _>(model, grads, table, learning_rate, max_grad_norm)?;
    Ok(StepOutput {
        model,
        loss: loss_sum,
        examples,
        stats,
        grads: kept,
    })
}

/// Mean cross-entropy of class logits, or mean squared error of a one-output regression head.
pub fn task_loss<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[Option<Label>],
    device: &B::Device,
) -> Result<Tensor<B, 1>> {
    let [batch, outputs] = logits.dims();
    match LabelColumn::new(labels)? {
        LabelColumn::Classes(classes) => {
            if let Some(&c) = classes.iter().find(|&&c| c as usize >= outputs) {
                return Err(Error::InvalidData(format!(
                    "class label {c} for a head of {outputs} outputs"
                )));
            }
            let targets =
                Tensor::<B, 2, Int>::from_data(TensorData::new(classes, [batch, 1]), device);
            Ok(log_softmax(logits, 1).gather(1, targets).mean().neg())
        }
        LabelColumn::Scores(scores) => {
            let targets = Tensor::<B, 2>::from_data(TensorData::new(scores, [batch, 1]), device);
            Ok((logits - targets).powi_scalar(2).mean())
        }
    }
}
