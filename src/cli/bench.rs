//! `qpeft bench train|eval <recipe>`: times the training step or the evaluation forward pass
//! of the recipe's model on synthetic fixed-shape batches; `qpeft bench solver`: times a PTQ
//! solver on a synthetic layer. Each prints one JSON object — what `bench/run.py` and
//! `bench/solver_run.py` compare with the PyTorch references.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use qpeft::data::glue_dir;
use qpeft::device::BackendTask;
use qpeft::model::resolve_model;
use qpeft::pipeline::run::{build_model, head_for};
use qpeft::quant::bench::{BenchSolver, synthetic_layer, time_solver};
use qpeft::quant::grid::Bits;
use qpeft::recipe::Recipe;
use qpeft::reconstruct::init::InitName;
use qpeft::train::bench::{BenchConfig, BenchTimings, time_evaluation, time_training};
use qpeft::train::report::peak_rss_bytes;

use super::DeviceArg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BenchMode {
    /// Forward, backward and AdamW step.
    Train,
    /// Forward pass only, no autodiff, dropout off.
    Eval,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Time the training step (forward, backward, AdamW) of a recipe's model.
    Train(BenchArgs),
    /// Time the evaluation forward pass (no autodiff, dropout off) of a recipe's model.
    Eval(BenchArgs),
    /// Time a PTQ solver on a synthetic layer.
    Solver(SolverArgs),
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverArg {
    Gptq,
    Coreq,
}

#[derive(clap::Args, Debug)]
pub struct SolverArgs {
    #[arg(long, value_enum, default_value = "gptq")]
    pub method: SolverArg,
    /// Output features (rows of W).
    #[arg(long, default_value_t = 3072)]
    pub rows: usize,
    /// Input features (columns of W, the size of H).
    #[arg(long, default_value_t = 768)]
    pub cols: usize,
    #[arg(long, default_value_t = 2)]
    pub bits: u8,
    /// Lazy-batch block size.
    #[arg(long, default_value_t = 128)]
    pub block: usize,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The recipe whose model is timed (its init checkpoint is built or taken from the cache).
    pub recipe: PathBuf,
    /// Override a recipe field: --set quant.bits=2 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Save the trained state here after a training benchmark (to measure checkpoint size).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The GLUE folder, if the init checkpoint must be built (calibration data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Train(args) => run_step(args, BenchMode::Train),
        BenchCommand::Eval(args) => run_step(args, BenchMode::Eval),
        BenchCommand::Solver(args) => run_solver(args),
    }
}

fn run_solver(args: SolverArgs) -> anyhow::Result<()> {
    if args.rows == 0 || args.cols == 0 || args.block == 0 || args.repeats == 0 {
        anyhow::bail!("--rows, --cols, --block and --repeats must be positive");
    }
    let bits = Bits::new(args.bits)?;
    let solver = match args.method {
        SolverArg::Gptq => BenchSolver::Gptq,
        SolverArg::Coreq => BenchSolver::Coreq,
    };
    let layer = synthetic_layer(args.rows, args.cols, args.seed);
    let seconds = time_solver(solver, &layer, bits, args.block, args.repeats)?;
    println!(
        "{}",
        serde_json::json!({
            "implementation": "qpeft",
            "method": format!("{:?}", args.method).to_lowercase(),
            "rows": args.rows,
            "cols": args.cols,
            "bits": args.bits,
            "block": args.block,
            "precision": "f64",
            "seconds": seconds,
        })
    );
    Ok(())
}

fn run_step(args: BenchArgs, mode: BenchMode) -> anyhow::Result<()> {
    let recipe = Recipe::load(&args.recipe, &args.overrides)?;
    if args.batch_size == 0 || args.seq_len == 0 || args.steps == 0 {
        anyhow::bail!("--batch-size, --seq-len and --steps must be positive");
    }
    let base = if recipe.adapter.init == InitName::Lora {
        recipe.model.name.clone()
    } else {
        let data_dir = glue_dir(args.data_dir.as_deref().or(recipe.data.dir.as_deref()));
        let init = qpeft::pipeline::init::recipe_init(&recipe, &data_dir, args.device.device)?;
        init.to_string_lossy().into_owned()
    };
    let config = BenchConfig {
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        warmup_steps: args.warmup,
        timed_steps: args.steps,
        learning_rate: recipe.train.learning_rate,
        seed: recipe.train.seed,
    };
    let timings = args.device.device.run(BenchTask {
        recipe: &recipe,
        base: &base,
        mode,
        config,
        checkpoint: args.checkpoint.clone(),
    })??;
    let checkpoint_bytes = args
        .checkpoint
        .as_deref()
        .map(directory_bytes)
        .transpose()?;
    let model_bytes = resolve_model(&base, &qpeft::model::HubOptions::from_env())
        .ok()
        .and_then(|files| std::fs::metadata(files.weights).ok())
        .map(|m| m.len());
    let report = serde_json::json!({
        "implementation": "qpeft",
        "mode": format!("{mode:?}").to_lowercase(),
        "device": args.device.device.to_string(),
        "timings": timings,
        "peak_rss_bytes": peak_rss_bytes(),
        "checkpoint_bytes": checkpoint_bytes,
        "model_file_bytes": model_bytes,
    });
    println!("{report}");
    Ok(())
}

/// Total size of the files in `dir` (not recursive: checkpoints are flat).
fn directory_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

struct BenchTask<'a> {
    recipe: &'a Recipe,
    base: &'a str,
    mode: BenchMode,
    config: BenchConfig,
    checkpoint: Option<PathBuf>,
}

impl BackendTask for BenchTask<'_> {
    type Output = anyhow::Result<BenchTimings>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let files = resolve_model(self.base, &qpeft::model::HubOptions::from_env())?;
        let built = build_model::<Autodiff<B>>(self.recipe, files, &device)?;
        let num_labels = head_for(self.recipe.task()?).num_outputs();
        let vocab = built.base.config.vocab_size;
        eprintln!(
            "timing {} steps ({} warm-up) of {:?}, batch {} × {} tokens",
            self.config.timed_steps,
            self.config.warmup_steps,
            self.mode,
            self.config.batch_size,
            self.config.seq_len
        );
        Ok(match self.mode {
            BenchMode::Train => time_training(
                built.model,
                num_labels,
                vocab,
                &self.config,
                self.checkpoint.as_deref(),
                &device,
            )?,
            BenchMode::Eval => {
                time_evaluation(built.model, num_labels, vocab, &self.config, &device)?
            }
        })
    }
}
