//! One optimizer step — forward, loss and backward over each micro-batch, gradients summed,
//! one AdamW update — shared by the training loop and the throughput benchmark.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::cast::ToElement;

use super::optim::{AccumulatedGrads, AdamW, ParamTable, StepStats};
use super::trainer::task_loss;
use crate::data::batch::Batch;
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

/// Runs one optimizer step of `model` over `micro_batches` (gradient accumulation: each loss
/// is divided by their number, so the step sees the mean gradient); `keep_grads` returns the
/// gradients too.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: AutodiffBackend>(
    model: SequenceClassifier<B>,
    optimizer: &mut AdamW<B::InnerBackend>,
    table: &ParamTable<B::InnerBackend>,
    micro_batches: &[Batch],
    learning_rate: f64,
    max_grad_norm: Option<f64>,
    keep_grads: bool,
    device: &B::Device,
) -> Result<StepOutput<B>, StepFailure> {
    let mut grads = AccumulatedGrads::default();
    let mut loss_sum = 0.0;
    let mut examples = 0;
    for batch in micro_batches {
        let logits = model.forward(&encoder_input::<B>(&batch.encoded, device));
        let loss = task_loss(logits, &batch.labels, device)? / micro_batches.len() as f64;
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
