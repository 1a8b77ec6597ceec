//! `qpeft glue`: flags → [`GlueSpec`] → [`glue_suite`] → the table. The same command continues
//! an interrupted suite.

use std::path::PathBuf;

use qpeft::data::Task;
use qpeft::pipeline::glue::{GlueSpec, LrSelection, glue_progress, glue_suite};

use super::DeviceArg;

#[derive(clap::Args, Debug)]
pub struct GlueArgs {
    /// The folder with <task>.toml recipes.
    #[arg(long, default_value = "recipes")]
    pub recipes: PathBuf,
    /// Tasks, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "rte,mrpc,stsb,cola")]
    pub tasks: Vec<Task>,
    /// Rows: an initialization (lora, qlora, loftq, qera, qera-approx, lqer, zeroquant-v2,
    /// lqlora, srr, srr-probe, srr-exact, srr-prerelease), optionally with modifiers after '+':
    /// grad, update, off (SRR's preserved scaling), or a base quantizer (rtn, gptq, coreq, …),
    /// e.g. srr-exact+update or srr-exact+coreq.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lora,qlora,loftq,qera,srr"
    )]
    pub compare: Vec<String>,
    /// Override a field of every recipe (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Learning rates to select from for each (row, task), the papers' way: the best mean
    /// final-epoch dev score over the seeds selects the lr (see --select).
    #[arg(long, value_delimiter = ',', value_name = "LR,…")]
    pub lrs: Vec<f64>,
    /// mean: every lr runs with every seed, the best mean selects; first-seed: every lr runs
    /// with the first seed, whose best score selects, and only that lr runs with the others.
    #[arg(long, default_value_t = LrSelection::Mean)]
    pub select: LrSelection,
    /// Seeds; the table reports each (row, task)'s mean ± standard deviation over them at the
    /// selected lr.
    #[arg(long, value_delimiter = ',', value_name = "SEED,…")]
    pub seeds: Vec<u64>,
    /// The suite's folder: <out>/<row>/<task>/ per run, glue.md and glue.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Train nothing: print the tables of the runs in --out finished so far (while suites run
    /// there), with every unfinished run's saved epochs and state; writes nothing.
    #[arg(long, requires = "out")]
    pub progress: bool,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: GlueArgs) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("glue-{}", super::train::now_stamp()))
    });
    let spec = GlueSpec {
        recipes: args.recipes,
        tasks: args.tasks,
        compare: args.compare,
        overrides: args.overrides,
        lrs: args.lrs,
        seeds: args.seeds,
        select: args.select,
    };
    if args.progress {
        print!("{}", glue_progress(&spec, &out, args.data_dir.as_deref())?);
        return Ok(());
    }
    let outcome = glue_suite(&spec, &out, args.data_dir.as_deref(), args.device.device)?;
    println!("{}", outcome.table);
    println!("wrote {}", outcome.markdown.display());
    Ok(())
}
