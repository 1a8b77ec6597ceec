//! `qpeft bench train|eval <recipe>` and `qpeft bench solver`: flags → a bench spec →
//! [`bench_step`] or [`bench_solver`] → one JSON object on stdout, what `bench/run.py` and
//! `bench/solver_run.py` compare with the PyTorch references.

use std::path::PathBuf;

use qpeft::data::glue_dir;
use qpeft::pipeline::bench::{BenchMode, SolverBenchSpec, StepBenchSpec, bench_solver, bench_step};
use qpeft::quant::bench::BenchSolver;
use qpeft::recipe::Recipe;

use super::DeviceArg;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Time the training step (forward, backward, AdamW) of a recipe's model.
    Train(BenchArgs),
    /// Time the evaluation forward pass (no autodiff, dropout off) of a recipe's model.
    Eval(BenchArgs),
    /// Time a PTQ solver on a synthetic layer.
    Solver(SolverArgs),
}

#[derive(clap::Args, Debug)]
pub struct SolverArgs {
    #[arg(long, default_value_t = BenchSolver::Gptq)]
    pub method: BenchSolver,
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
    let report = match command {
        BenchCommand::Train(args) => step(args, BenchMode::Train)?,
        BenchCommand::Eval(args) => step(args, BenchMode::Eval)?,
        BenchCommand::Solver(args) => serde_json::to_value(bench_solver(&SolverBenchSpec {
            method: args.method,
            rows: args.rows,
            cols: args.cols,
            bits: args.bits,
            block: args.block,
            repeats: args.repeats,
            seed: args.seed,
        })?)?,
    };
    println!("{report}");
    Ok(())
}

fn step(args: BenchArgs, mode: BenchMode) -> anyhow::Result<serde_json::Value> {
    let recipe = Recipe::load(&args.recipe, &args.overrides)?;
    let spec = StepBenchSpec {
        mode,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        warmup_steps: args.warmup,
        timed_steps: args.steps,
        checkpoint: args.checkpoint,
    };
    let data_dir = glue_dir(args.data_dir.as_deref().or(recipe.data.dir.as_deref()));
    let report = bench_step(&recipe, &spec, &data_dir, args.device.device)?;
    Ok(serde_json::to_value(report)?)
}
