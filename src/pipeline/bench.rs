//! `qpeft bench` as library calls: the training step or the evaluation forward pass of a
//! recipe's model timed on synthetic fixed-shape batches ([`StepBenchSpec`] → [`bench_step`]),
//! and a PTQ solver timed on a synthetic layer ([`SolverBenchSpec`] → [`bench_solver`]). The
//! reports are what `bench/run.py` and `bench/solver_run.py` compare with the PyTorch
//! references (docs/performance.md).

use std::path::{Path, PathBuf};

use crate::kernels::Backend;
use burn_autodiff::Autodiff;
use serde::{Deserialize, Serialize};

use super::init::recipe_init;
use super::run::{build_model, head_for};
use crate::device::{BackendTask, DeviceSpec};
use crate::error::{Error, Result};
use crate::model::{HubOptions, resolve_model};
use crate::quant::bench::{BenchSolver, synthetic_layer, time_solver};
use crate::quant::grid::Bits;
use crate::recipe::Recipe;
use crate::reconstruct::init::InitName;
use crate::train::bench::{BenchConfig, BenchTimings, time_evaluation, time_training};
use crate::train::report::peak_rss_bytes;

/// What a step benchmark times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BenchMode {
    /// Forward, backward and AdamW step.
    Train,
    /// Forward pass only, no autodiff, dropout off.
    Eval,
}

crate::named!(BenchMode);

/// A step benchmark of a recipe's model: the mode, the batches, and where to save the trained
/// state after a training benchmark (to measure the checkpoint's size).
#[derive(Debug, Clone)]
pub struct StepBenchSpec {
    pub mode: BenchMode,
    pub batch_size: usize,
    pub seq_len: usize,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    pub checkpoint: Option<PathBuf>,
}

/// What `qpeft bench train|eval` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StepBenchReport {
    pub implementation: &'static str,
    pub mode: BenchMode,
    pub device: String,
    pub timings: BenchTimings,
    pub peak_rss_bytes: Option<u64>,
    pub checkpoint_bytes: Option<u64>,
    pub model_file_bytes: Option<u64>,
}

/// Times `spec` on the model `recipe` trains (its init checkpoint built, with calibration text
/// from `data_dir`, or taken from the cache).
pub fn bench_step(
    recipe: &Recipe,
    spec: &StepBenchSpec,
    data_dir: &Path,
    device: DeviceSpec,
) -> Result<StepBenchReport> {
    if spec.batch_size == 0 || spec.seq_len == 0 || spec.timed_steps == 0 {
        return Err(Error::Config(
            "--batch-size, --seq-len and --steps must be positive".into(),
        ));
    }
    let base = if recipe.adapter.init == InitName::Lora {
        recipe.model.name.clone()
    } else {
        recipe_init(recipe, data_dir, device)?
            .to_string_lossy()
            .into_owned()
    };
    let files = resolve_model(&base, &HubOptions::from_env())?;
    let model_file_bytes = std::fs::metadata(&files.weights).ok().map(|m| m.len());
    let config = BenchConfig {
        batch_size: spec.batch_size,
        seq_len: spec.seq_len,
        warmup_steps: spec.warmup_steps,
        timed_steps: spec.timed_steps,
        learning_rate: recipe.train.learning_rate,
        seed: recipe.train.seed,
    };
    let timings = device.run(StepBench {
        recipe,
        files,
        spec,
        config,
    })??;
    Ok(StepBenchReport {
        implementation: "qpeft",
        mode: spec.mode,
        device: device.to_string(),
        timings,
        peak_rss_bytes: peak_rss_bytes(),
        checkpoint_bytes: spec
            .checkpoint
            .as_deref()
            .map(directory_bytes)
            .transpose()?,
        model_file_bytes,
    })
}

/// Total size of the files in `dir` (not recursive: checkpoints are flat).
fn directory_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let metadata = entry
            .and_then(|entry| entry.metadata())
            .map_err(|e| Error::io(dir, e))?;
        if metadata.is_file() {
            total += metadata.len();
        }
    }
    Ok(total)
}

struct StepBench<'a> {
    recipe: &'a Recipe,
    files: crate::model::ModelFiles,
    spec: &'a StepBenchSpec,
    config: BenchConfig,
}

impl BackendTask for StepBench<'_> {
    type Output = Result<BenchTimings>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let built = build_model::<Autodiff<B>>(self.recipe, self.files, &device)?;
        let num_labels = head_for(self.recipe.task()?).num_outputs();
        let vocab = built.base.config.vocab_size;
        eprintln!(
            "timing {} steps ({} warm-up) of {}, batch {} × {} tokens",
            self.config.timed_steps,
            self.config.warmup_steps,
            self.spec.mode,
            self.config.batch_size,
            self.config.seq_len
        );
        match self.spec.mode {
            BenchMode::Train => time_training(
                built.model,
                num_labels,
                vocab,
                &self.config,
                self.spec.checkpoint.as_deref(),
                &device,
            ),
            BenchMode::Eval => {
                time_evaluation(built.model, num_labels, vocab, &self.config, &device)
            }
        }
    }
}

/// A solver benchmark: the solver, the synthetic layer `[rows, cols]` and its seed, the bits,
/// the lazy-batch block and how many timed repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SolverBenchSpec {
    pub method: BenchSolver,
    pub rows: usize,
    pub cols: usize,
    pub bits: u8,
    pub block: usize,
    pub repeats: usize,
    pub seed: u64,
}

/// What `qpeft bench solver` prints.
#[derive(Debug, Clone, Serialize)]
pub struct SolverBenchReport {
    pub implementation: &'static str,
    pub method: BenchSolver,
    pub rows: usize,
    pub cols: usize,
    pub bits: u8,
    pub block: usize,
    pub precision: &'static str,
    /// Wall time of each repeat.
    pub seconds: Vec<f64>,
}

/// Times `spec.method` on its synthetic layer.
pub fn bench_solver(spec: &SolverBenchSpec) -> Result<SolverBenchReport> {
    if spec.rows == 0 || spec.cols == 0 || spec.block == 0 || spec.repeats == 0 {
        return Err(Error::Config(
            "--rows, --cols, --block and --repeats must be positive".into(),
        ));
    }
    let layer = synthetic_layer(spec.rows, spec.cols, spec.seed);
    let seconds = time_solver(
        spec.method,
        &layer,
        Bits::new(spec.bits)?,
        spec.block,
        spec.repeats,
    )?;
    Ok(SolverBenchReport {
        implementation: "qpeft",
        method: spec.method,
        rows: spec.rows,
        cols: spec.cols,
        bits: spec.bits,
        block: spec.block,
        precision: "f64",
        seconds,
    })
}
