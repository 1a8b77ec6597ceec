//! The training loop: length-grouped batches in a seeded order, gradient accumulation, AdamW
//! on the trainable parameters with global-norm clipping and a warmup + decay schedule, SRR's
//! preserved-component scaling, evaluation on dev after every epoch, a checkpoint after every
//! epoch (and every N steps if asked), a JSONL metrics log and a progress bar.
//!
//! Determinism: the data order of epoch e and the dropout masks of optimizer step s come from
//! named sub-streams of the one seed (`data-order/epoch-e`, `dropout/step-s`), so a run resumed
//! from any checkpoint continues exactly as the uninterrupted run would have.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, ParamId};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::checkpoint::{EpochRecord, LoadedCheckpoint, LoopState, save_checkpoint};
use super::optim::{
    AccumulatedGrads, AdamW, AdamWConfig, ComponentScale, FactorPair, ParamTable, PreservedScaling,
    Schedule, learning_rate,
};
use super::step::{StepFailure, plan_micro_batches, train_step};
use super::trace::{ObservedStep, StepObserver};
use crate::adapters::AdapterSpec;
use crate::adapters::export::adapter_and_head_params;
use crate::adapters::surgery::decays;
use crate::data::batch::TokenizedSplit;
use crate::data::{Label, LabelColumn};
use crate::error::{Error, Result};
use crate::eval::dev::evaluate_dev;
use crate::eval::metrics::MnliMain;
use crate::model::SequenceClassifier;
use crate::model::dropout::seed_dropout;
use crate::model::weights::NamedTensor;
use crate::seed::substream_seed;

/// Steps between progress lines when stderr is not a terminal.
const PLAIN_EVERY: usize = 20;

/// The shape of the per-component factor on SRR's preserved block (§12.2 "Choice (form)").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GammaForm {
    /// γ on every preserved component (the paper).
    Constant,
    /// a_i = (σ_max − σ_i)/(σ_max + 5σ_i) from the stored singular values (pre-release code;
    /// 0.1 where none are stored).
    PerRank,
}

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
    /// End the run after this many optimizer steps without finishing it, as if killed (for
    /// testing `--resume`).
    pub stop_after_steps: Option<usize>,
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
    /// False when `stop_after_steps` ended the run early.
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
                return Err(Error::InvalidInput(format!(
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

/// Appends JSON lines to `<run>/metrics.jsonl`.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn open(run: &Path) -> Result<Self> {
        let path = run.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { file, path })
    }

    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Trains `model` (its trainable parameters already marked) on `data`, writing checkpoints and
/// the metrics log into `run`, continuing from `resume` if given; `observer` sees every step.
pub fn train<B: AutodiffBackend>(
    mut model: SequenceClassifier<B>,
    data: &TrainData,
    config: &TrainConfig,
    run: &Path,
    resume: Option<&LoadedCheckpoint>,
    observer: &mut dyn StepObserver,
    device: &B::Device,
) -> Result<TrainOutcome<B>> {
    if config.batch_size == 0 || config.grad_accum == 0 || config.epochs == 0 {
        return Err(Error::InvalidInput(
            "batch size, gradient accumulation and epochs must be positive".into(),
        ));
    }
    if data.train.is_empty() {
        return Err(Error::InvalidInput("the training split is empty".into()));
    }
    let table = ParamTable::new::<B, _>(
        &model,
        decays,
        component_scales(&model, &config.preserved, device),
        factor_pairs(&model),
    );
    if table.is_empty() {
        return Err(Error::InvalidInput(
            "the model has no trainable parameter".into(),
        ));
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
    // Every attempt opens with a start or resume line: the lines of an attempt stopped before
    // its first checkpoint stay in the log, and the next `start` line says they were dropped.
    let mut log = MetricsLog::open(run)?;
    match resume {
        Some(checkpoint) => {
            model = checkpoint.restore_module(model)?;
            checkpoint.restore_optimizer(&mut optimizer, device)?;
            state = checkpoint.state.clone();
            log.write(serde_json::json!({
                "type": "resume",
                "from": checkpoint.dir,
                "global_step": state.global_step,
            }))?;
        }
        None => log.write(serde_json::json!({"type": "start", "global_step": 0}))?,
    }
    let batches_per_epoch = data.train.len().div_ceil(config.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum);
    let total_steps = steps_per_epoch * config.epochs;
    let warmup = (config.warmup_ratio * total_steps as f64).ceil() as usize;
    // A bar on a terminal; plain lines when stderr is redirected (the bar would draw nothing),
    // so that a log shows the run as it goes.
    let plain = !std::io::stderr().is_terminal();
    let progress = ProgressBar::new(total_steps as u64).with_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} steps [{elapsed}<{eta}] {msg}")
            .expect("valid progress template"),
    );
    progress.set_position(state.global_step as u64);
    let checkpoints = checkpoints_dir(run);
    let mut last_checkpoint: Option<PathBuf> = resume.map(|c| c.dir.clone());
    while state.epoch < config.epochs {
        let epoch = state.epoch;
        progress.set_prefix(format!("epoch {}/{}", epoch + 1, config.epochs));
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
                observer.wants_gradients(),
                device,
            ) {
                Ok(step) => step,
                Err(StepFailure::Error(error)) => return Err(error),
                Err(StepFailure::NonFiniteLoss(value)) => {
                    progress.abandon();
                    return Err(Error::InvalidInput(format!(
                        "the loss is {value} at epoch {}, step {}: training stopped; {}",
                        epoch + 1,
                        state.global_step + 1,
                        match &last_checkpoint {
                            Some(dir) => format!("the last good checkpoint is {}", dir.display()),
                            None => "no checkpoint was written yet".into(),
                        }
                    )));
                }
            };
            model = step.model;
            let (step_loss, examples, stats) = (step.loss, step.examples, step.stats);
            let gradients = match &step.grads {
                Some(grads) => Some(named_gradients(&model, grads)?),
                None => None,
            };
            observer.observe(&ObservedStep {
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
            progress.set_message(format!(
                "loss {step_loss:.4} lr {lr:.2e} {rate:.1} samples/s"
            ));
            progress.inc(1);
            if plain && (state.global_step == 1 || state.global_step.is_multiple_of(PLAIN_EVERY)) {
                eprintln!(
                    "epoch {}/{} step {}/{total_steps}: loss {step_loss:.4} lr {lr:.2e} {rate:.1} samples/s",
                    epoch + 1,
                    config.epochs,
                    state.global_step
                );
            }
            if config.log_every > 0 && state.global_step.is_multiple_of(config.log_every) {
                log.write(serde_json::json!({
                    "type": "step",
                    "epoch": epoch + 1,
                    "step": state.global_step,
                    "loss": step_loss,
                    "learning_rate": lr,
                    "grad_norm": stats.grad_norm,
                    "clipped": stats.clipped,
                    "samples_per_second": examples as f64 / seconds.max(1e-9),
                }))?;
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
                if plain {
                    eprintln!("{line}");
                } else {
                    progress.println(line);
                }
                log.write(serde_json::json!({"type": "epoch", "record": record}))?;
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
            if config
                .stop_after_steps
                .is_some_and(|limit| state.global_step >= limit)
                && state.epoch < config.epochs
            {
                progress.abandon();
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
    progress.finish_and_clear();
    Ok(TrainOutcome {
        model,
        state,
        finished: true,
        trainable_scalars: table.num_scalars(),
    })
}
