//! Throughput measurement (issue #7): the training step (forward, backward, AdamW) and the
//! evaluation forward pass timed on synthetic fixed-shape batches — every row `seq_len` real
//! tokens, no padding — so that qpeft and the PyTorch reference in `bench/` do identical work.

use std::path::Path;
use std::time::Instant;

use crate::kernels::AutodiffBackend;
use burn::module::AutodiffModule;
use rand::Rng;
use serde::Serialize;

use super::checkpoint::{LoopState, save_checkpoint};
use super::optim::{AdamW, AdamWConfig, ParamTable};
use super::step::{MicroBatch, StepFailure, train_step};
use crate::adapters::surgery::decays;
use crate::data::Label;
use crate::data::batch::Batch;
use crate::error::{Error, Result};
use crate::model::tokenizer::EncodedBatch;
use crate::model::{SequenceClassifier, encoder_input};
use crate::seed::substream_rng;

/// What one benchmark run does.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    pub batch_size: usize,
    pub seq_len: usize,
    /// Untimed steps first (allocator and thread-pool warm-up).
    pub warmup_steps: usize,
    pub timed_steps: usize,
    pub learning_rate: f64,
    pub seed: u64,
}

/// Seconds per timed step and the samples/s they give.
#[derive(Debug, Clone, Serialize)]
pub struct BenchTimings {
    pub batch_size: usize,
    pub seq_len: usize,
    pub step_seconds: Vec<f64>,
    pub samples_per_second: f64,
}

impl BenchTimings {
    fn new(config: &BenchConfig, step_seconds: Vec<f64>) -> Self {
        let total: f64 = step_seconds.iter().sum();
        BenchTimings {
            batch_size: config.batch_size,
            seq_len: config.seq_len,
            samples_per_second: (config.batch_size * step_seconds.len()) as f64 / total.max(1e-12),
            step_seconds,
        }
    }
}

/// A batch of `batch_size` rows of `seq_len` uniform random token ids (segment 0, full
/// attention mask) with random labels among `num_labels` classes.
pub fn synthetic_batch(
    vocab_size: usize,
    num_labels: usize,
    config: &BenchConfig,
    name: &str,
) -> Batch {
    let mut rng = substream_rng(config.seed, name);
    let tokens = config.batch_size * config.seq_len;
    let input_ids = (0..tokens)
        .map(|_| rng.random_range(0..vocab_size as i64))
        .collect();
    let labels = (0..config.batch_size)
        .map(|_| Some(Label::Class(rng.random_range(0..num_labels.max(1)))))
        .collect();
    Batch {
        encoded: EncodedBatch {
            batch_size: config.batch_size,
            seq_len: config.seq_len,
            input_ids,
            attention_mask: vec![1; tokens],
            token_type_ids: vec![0; tokens],
        },
        indices: (0..config.batch_size).collect(),
        labels,
    }
}

/// Times `timed_steps` optimizer steps of `model` (its trainable set already marked) on one
/// synthetic batch, after `warmup_steps` untimed ones. Dropout stays on, as in training.
/// With `checkpoint`, the trained state is then saved there as the trainer saves it.
pub fn time_training<B: AutodiffBackend>(
    mut model: SequenceClassifier<B>,
    num_labels: usize,
    vocab_size: usize,
    config: &BenchConfig,
    checkpoint: Option<&Path>,
    device: &B::Device,
) -> Result<BenchTimings> {
    let table = ParamTable::new::<B, _>(&model, decays, Default::default(), Vec::new());
    // torch.optim.AdamW's defaults, as in the reference script.
    let mut optimizer = AdamW::new(AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    });
    let batch = [MicroBatch {
        batch: synthetic_batch(vocab_size, num_labels, config, "bench/train"),
        divisor: 1.0,
    }];
    let mut seconds = Vec::with_capacity(config.timed_steps);
    for step in 0..config.warmup_steps + config.timed_steps {
        let started = Instant::now();
        let output = train_step(
            model,
            &mut optimizer,
            &table,
            &batch,
            config.learning_rate,
            Some(1.0),
            false,
            device,
        )
        .map_err(|failure| match failure {
            StepFailure::Error(error) => error,
            StepFailure::NonFiniteLoss(value) => {
                Error::Numeric(format!("benchmark step {step}: the loss is {value}"))
            }
        })?;
        model = output.model;
        if step >= config.warmup_steps {
            seconds.push(started.elapsed().as_secs_f64());
        }
    }
    if let Some(dir) = checkpoint {
        let steps = config.warmup_steps + config.timed_steps;
        let state = LoopState {
            epoch: 0,
            step_in_epoch: steps,
            global_step: steps,
            samples: steps * config.batch_size,
            train_seconds: seconds.iter().sum(),
            epoch_loss_sum: 0.0,
            epochs: Vec::new(),
        };
        save_checkpoint::<B, _>(dir, &model, &optimizer, &state)?;
    }
    Ok(BenchTimings::new(config, seconds))
}

/// Times the evaluation forward pass (no autodiff, dropout off, adapters merged) of `model` on one synthetic
/// batch; each step reads the logits back, so the time covers the whole computation.
pub fn time_evaluation<B: AutodiffBackend>(
    model: SequenceClassifier<B>,
    num_labels: usize,
    vocab_size: usize,
    config: &BenchConfig,
    device: &B::Device,
) -> Result<BenchTimings> {
    // What `predict_split` runs: the adapters merged into the frozen weights.
    let model = model.valid().merged();
    let batch = synthetic_batch(vocab_size, num_labels, config, "bench/eval");
    let mut seconds = Vec::with_capacity(config.timed_steps);
    for step in 0..config.warmup_steps + config.timed_steps {
        let started = Instant::now();
        let logits = model.forward(&encoder_input::<B::InnerBackend>(&batch.encoded, device));
        let values = logits.into_data();
        if values
            .as_slice::<f32>()
            .is_ok_and(|v| v.iter().any(|x| !x.is_finite()))
        {
            return Err(Error::Numeric(format!(
                "benchmark step {step}: the logits are not finite"
            )));
        }
        if step >= config.warmup_steps {
            seconds.push(started.elapsed().as_secs_f64());
        }
    }
    Ok(BenchTimings::new(config, seconds))
}
