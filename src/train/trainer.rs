//! The training loop: length-grouped batches in a seeded order, gradient accumulation, AdamW
//! on the trainable parameters with global-norm clipping and a warmup + decay schedule, SRR's
//! preserved-component scaling, evaluation on dev after every epoch, a checkpoint after every
//! epoch (and every N steps if asked), a JSONL metrics log and a progress bar.
//!
//! Determinism: the data order of epoch e and the dropout masks of optimizer step s come from
//! named sub-streams of the one seed (`data-order/epoch-e`, `dropout/step-s`), so a run resumed
//! from any checkpoint continues exactly as the uninterrupted run would have.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::kernels::AutodiffBackend;
use burn::module::{AutodiffModule, ParamId};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::checkpoint::{EpochRecord, LoadedCheckpoint, LoopState, save_checkpoint};
use super::hooks::{StepProgress, TrainEvent, TrainHooks};
use super::optim::{
    AccumulatedGrads, AdamW, AdamWConfig, ComponentScale, FactorPair, ParamTable, PreservedScaling,
    Schedule, learning_rate,
};
use super::step::{StepFailure, plan_micro_batches, train_step};
use super::trace::ObservedStep;
use crate::adapters::export::adapter_and_head_params;
use crate::adapters::surgery::decays;
use crate::data::batch::TokenizedSplit;
use crate::error::{Error, Result};
use crate::eval::dev::evaluate_dev;
use crate::eval::metrics::MnliMain;
use crate::formats::safetensors::NamedTensor;
use crate::layers::AdapterSpec;
use crate::layers::dropout::seed_dropout;
use crate::model::SequenceClassifier;
use crate::seed::substream_seed;

/// The shape of the per-component factor on SRR's preserved block (§12.2 "Choice (form)").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GammaForm {
    /// γ on every preserved component (the paper).
    Constant,
    /// a_i = (σ_max − σ_i)/(σ_max + 5σ_i) from the stored singular values (pre-release code;
    /// 0.1 where none are stored).
    PerRank,
}

crate::named!(GammaForm);

/// SRR's scaling of the preserved components.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreservedConfig {
    pub mode: PreservedScaling,
    pub gamma: f64,
    pub form: GammaForm,
}

impl PreservedConfig {
    /// The factor on each of the adapter's r components, or `None` when nothing is scaled.
    pub fn factors(&self, spec: &AdapterSpec) -> Option<Vec<f32>> {
        if self.mode == PreservedScaling::Off || spec.preserved == 0 {
            return None;
        }
        let sigma_max = spec.singular_values.iter().copied().fold(0.0, f64::max);
        Some(
            (0..spec.rank)
                .map(|i| {
                    if i >= spec.preserved {
                        return 1.0;
                    }
                    let factor = match (self.form, spec.singular_values.get(i)) {
                        (GammaForm::Constant, _) => self.gamma,
                        (GammaForm::PerRank, Some(&sigma)) if sigma_max > 0.0 => {
                            ((sigma_max - sigma) / (sigma_max + 5.0 * sigma)).clamp(0.0, 1.0)
                        }
                        (GammaForm::PerRank, _) => 0.1,
                    };
                    factor as f32
                })
                .collect(),
        )
    }
}

/// The optimization settings of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub learning_rate: f64,
    /// Examples per forward pass; an optimizer step sees `batch_size · grad_accum`.
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Batches per shuffled window sorted by length (1: plain shuffling).
    pub length_group_window: usize,
    /// Passes each batch is computed in, sorted by length (see [`plan_micro_batches`]).
    pub length_split: usize,
    pub epochs: usize,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    pub max_grad_norm: Option<f64>,
    pub adamw: AdamWConfig,
    pub seed: u64,
    pub eval_batch_size: usize,
    /// Also checkpoint every this many optimizer steps (0: only after each epoch).
    pub checkpoint_every: usize,
    /// Write a `step` line to the metrics log every this many optimizer steps.
    pub log_every: usize,
    pub mnli_main: MnliMain,
    pub preserved: PreservedConfig,
}

/// The tokenized splits of a run.
pub struct TrainData {
    pub train: TokenizedSplit,
    /// The task's dev split(s): MNLI matched then mismatched.
    pub dev: Vec<TokenizedSplit>,
}

/// How a run ended.
pub struct TrainOutcome<B: AutodiffBackend> {
    pub model: SequenceClassifier<B>,
    pub state: LoopState,
    /// False when the interrupter ended the run early.
    pub finished: bool,
    pub trainable_scalars: usize,
}

/// The run directory's layout.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// The checkpoint with the most optimizer steps in `run`, if any.
pub fn latest_checkpoint(run: &Path) -> Result<Option<PathBuf>> {
    let dir = checkpoints_dir(run);
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        if path.extension().is_some_and(|e| e == "partial") || !path.join("state.json").is_file() {
            continue;
        }
        let state = LoadedCheckpoint::open(&path)?.state;
        if best
            .as_ref()
            .is_none_or(|(steps, _)| state.global_step > *steps)
        {
            best = Some((state.global_step, path));
        }
    }
    Ok(best.map(|(_, path)| path))
}

fn component_scales<B: AutodiffBackend>(
    model: &SequenceClassifier<B>,
    preserved: &PreservedConfig,
    device: &B::Device,
) -> HashMap<ParamId, ComponentScale<B::InnerBackend>> {
    let mut scales = HashMap::new();
    for name in model.encoder.linear_names() {
        let Some(adapted) = model.encoder.target(&name).and_then(|t| t.adapted()) else {
            continue;
        };
        let Some(factors) = preserved.factors(adapted.spec()) else {
            continue;
        };
        let r = factors.len();
        let tensor = |shape: [usize; 2]| {
            Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(factors.clone(), shape), device)
        };
        scales.insert(
            adapted.lora_a.id,
            ComponentScale {
                factors: tensor([1, r]),
                mode: preserved.mode,
            },
        );
        scales.insert(
            adapted.lora_b.id,
            ComponentScale {
                factors: tensor([r, 1]),
                mode: preserved.mode,
            },
        );
    }
    scales
}

/// The factors of every adapter.
fn factor_pairs<B: AutodiffBackend>(model: &SequenceClassifier<B>) -> Vec<FactorPair> {
    model
        .encoder
        .linear_names()
        .iter()
        .filter_map(|name| model.encoder.target(name).and_then(|t| t.adapted()))
        .map(|adapted| FactorPair {
            a: adapted.lora_a.id,
            b: adapted.lora_b.id,
        })
        .collect()
}

/// The gradients of the adapter factors and the head under their PEFT/HF names and layouts.
fn named_gradients<B: AutodiffBackend>(
    model: &SequenceClassifier<B>,
    grads: &AccumulatedGrads<B::InnerBackend>,
) -> Result<Vec<NamedTensor>> {
    adapter_and_head_params(model)
        .into_iter()
        .filter_map(|p| {
            let grad = grads.get(&p.id)?.clone();
            Some(p.to_hf(grad).map(|(shape, values)| (p.name, shape, values)))
        })
        .collect()
}

/// Trains `model` (its trainable parameters already marked) on `data`, writing checkpoints into
/// `run`, continuing from `resume` if given; `hooks` take the metrics, show the progress, see
/// every step and may stop the run after any step.
pub fn train<B: AutodiffBackend>(
    mut model: SequenceClassifier<B>,
    data: &TrainData,
    config: &TrainConfig,
    run: &Path,
    resume: Option<&LoadedCheckpoint>,
    mut hooks: TrainHooks<'_>,
    device: &B::Device,
) -> Result<TrainOutcome<B>> {
    if config.batch_size == 0 || config.grad_accum == 0 || config.epochs == 0 {
        return Err(Error::Config(
            "batch size, gradient accumulation and epochs must be positive".into(),
        ));
    }
    if data.train.is_empty() {
        return Err(Error::InvalidData("the training split is empty".into()));
    }
    let table = ParamTable::new::<B, _>(
        &model,
        decays,
        component_scales(&model, &config.preserved, device),
        factor_pairs(&model),
    );
    if table.is_empty() {
        return Err(Error::Config("the model has no trainable parameter".into()));
    }
    let mut optimizer = AdamW::new(config.adamw);
    let mut state = LoopState {
        epoch: 0,
        step_in_epoch: 0,
        global_step: 0,
        samples: 0,
        train_seconds: 0.0,
        epoch_loss_sum: 0.0,
        epochs: Vec::new(),
    };
    match resume {
        Some(checkpoint) => {
            model = checkpoint.restore_module(model)?;
            checkpoint.restore_optimizer(&mut optimizer, device)?;
            state = checkpoint.state.clone();
            hooks.metrics.record(&TrainEvent::Resume {
                from: &checkpoint.dir,
                global_step: state.global_step,
            })?;
        }
        None => hooks.metrics.record(&TrainEvent::Start)?,
    }
    let batches_per_epoch = data.train.len().div_ceil(config.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum);
    let total_steps = steps_per_epoch * config.epochs;
    let warmup = (config.warmup_ratio * total_steps as f64).ceil() as usize;
    hooks.progress.start(state.global_step, total_steps);
    let checkpoints = checkpoints_dir(run);
    let mut last_checkpoint: Option<PathBuf> = resume.map(|c| c.dir.clone());
    while state.epoch < config.epochs {
        let epoch = state.epoch;
        hooks.progress.epoch_start(epoch + 1, config.epochs);
        let order = data.train.train_batches(
            config.batch_size,
            config.length_group_window,
            config.seed,
            epoch,
        );
        let groups: Vec<&[Vec<usize>]> = order.chunks(config.grad_accum).collect();
        while state.step_in_epoch < groups.len() {
            let group = groups[state.step_in_epoch];
            let started = Instant::now();
            let lr = learning_rate(
                config.schedule,
                config.learning_rate,
                state.global_step,
                total_steps,
                warmup,
            );
            seed_dropout(substream_seed(
                config.seed,
                &format!("dropout/step-{}", state.global_step),
            ));
            let micro_batches = plan_micro_batches(&data.train, group, config.length_split);
            let step = match train_step(
                model,
                &mut optimizer,
                &table,
                &micro_batches,
                lr,
                config.max_grad_norm,
                hooks.observer.wants_gradients(state.step_in_epoch == 0),
                device,
            ) {
                Ok(step) => step,
                Err(StepFailure::Error(error)) => {
                    hooks.progress.end(false);
                    return Err(error);
                }
                Err(StepFailure::NonFiniteLoss(value)) => {
                    hooks.progress.end(false);
                    return Err(Error::Diverged {
                        loss: value,
                        epoch: epoch + 1,
                        step: state.global_step + 1,
                        last_checkpoint,
                    });
                }
            };
            model = step.model;
            let (step_loss, examples, stats) = (step.loss, step.examples, step.stats);
            let gradients = match &step.grads {
                Some(grads) => Some(named_gradients(&model, grads)?),
                None => None,
            };
            hooks.observer.observe(&ObservedStep {
                step: state.global_step + 1,
                micro_batches: &micro_batches,
                learning_rate: lr,
                loss: step_loss,
                stats,
                gradients: gradients.as_deref(),
                total_steps,
                warmup_steps: warmup,
            })?;
            let seconds = started.elapsed().as_secs_f64();
            state.train_seconds += seconds;
            state.samples += examples;
            state.global_step += 1;
            state.step_in_epoch += 1;
            state.epoch_loss_sum += step_loss;
            let rate = state.samples as f64 / state.train_seconds.max(1e-9);
            hooks.progress.step(&StepProgress {
                epoch: epoch + 1,
                epochs: config.epochs,
                step: state.global_step,
                total_steps,
                loss: step_loss,
                learning_rate: lr,
                samples_per_second: rate,
            });
            if config.log_every > 0 && state.global_step.is_multiple_of(config.log_every) {
                hooks.metrics.record(&TrainEvent::Step {
                    epoch: epoch + 1,
                    step: state.global_step,
                    loss: step_loss,
                    learning_rate: lr,
                    grad_norm: stats.grad_norm,
                    clipped: stats.clipped,
                    samples_per_second: examples as f64 / seconds.max(1e-9),
                })?;
            }
            let epoch_done = state.step_in_epoch == groups.len();
            if epoch_done {
                let valid = model.valid();
                let score = evaluate_dev(
                    &valid,
                    data.train.task,
                    &data.dev,
                    config.eval_batch_size,
                    config.mnli_main,
                    device,
                )?;
                let record = EpochRecord {
                    epoch: epoch + 1,
                    train_loss: state.epoch_loss_sum / state.step_in_epoch.max(1) as f64,
                    main: score.main,
                    metrics: score
                        .metrics
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect::<BTreeMap<_, _>>(),
                    learning_rate: lr,
                };
                let line = format!(
                    "epoch {}: train loss {:.4}, dev {} {:.4} ({})",
                    record.epoch,
                    record.train_loss,
                    data.train.task,
                    record.main,
                    record
                        .metrics
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                hooks.progress.epoch_end(&line);
                hooks.metrics.record(&TrainEvent::Epoch(&record))?;
                state.epochs.push(record);
                state.epoch += 1;
                state.step_in_epoch = 0;
                state.epoch_loss_sum = 0.0;
            }
            let step_due = config.checkpoint_every > 0
                && state.global_step.is_multiple_of(config.checkpoint_every);
            if epoch_done || step_due {
                let dir = if epoch_done {
                    checkpoints.join(format!("epoch-{}", state.epoch))
                } else {
                    checkpoints.join(format!("step-{}", state.global_step))
                };
                std::fs::create_dir_all(&checkpoints).map_err(|e| Error::io(&checkpoints, e))?;
                save_checkpoint::<B, _>(&dir, &model, &optimizer, &state)?;
                last_checkpoint = Some(dir);
            }
            if state.epoch < config.epochs && hooks.interrupter.should_stop(&state) {
                hooks.progress.end(false);
                return Ok(TrainOutcome {
                    model,
                    state,
                    finished: false,
                    trainable_scalars: table.num_scalars(),
                });
            }
            if epoch_done {
                break;
            }
        }
    }
    hooks.progress.end(true);
    Ok(TrainOutcome {
        model,
        state,
        finished: true,
        trainable_scalars: table.num_scalars(),
    })
}
