//! `qpeft train <recipe>`: flags → a recipe and a run directory → [`run_recipe`] → a printed
//! summary. `--resume RUN` continues a killed run.

use std::path::PathBuf;

use anyhow::Context;
use qpeft::data::Task;
use qpeft::pipeline::run::{RunDir, RunStart, dump_dir, run_recipe};
use qpeft::quant::solve::QuantMethod;
use qpeft::recipe::Recipe;

use super::DeviceArg;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The recipe file (e.g. recipes/rte.toml); not needed with --resume.
    pub recipe: Option<PathBuf>,
    /// Override a recipe field: --set train.learning_rate=1e-4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// The run directory (default: runs/<task>-<init>-<bits>b-r<rank>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint.
    #[arg(long, conflicts_with_all = ["recipe", "out"])]
    pub resume: Option<PathBuf>,
    /// The GLUE folder (default: the recipe's data.dir, $GLUE_DIR, else datasets/glue).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stop after N optimizer steps and write them into <run>/dump (the batches in training
    /// order, each step's loss and learning rate, the gradients of step 1 and of each epoch's
    /// first step, the adapters and head before and after) for scripts/check_training.py to
    /// replay in PyTorch.
    #[arg(long, value_name = "N", conflicts_with = "resume")]
    pub dump_batches: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let (run_dir, recipe, start) = match (&args.resume, &args.recipe) {
        (Some(dir), _) => {
            let run = RunDir { root: dir.clone() };
            let recipe = run
                .recipe()
                .with_context(|| format!("reading the recipe of run {}", dir.display()))?;
            (run, recipe, RunStart::Continue)
        }
        (None, Some(path)) => {
            let recipe = Recipe::load(path, &args.overrides)?;
            let root = args.out.clone().unwrap_or_else(|| default_run_dir(&recipe));
            (RunDir { root }, recipe, RunStart::New)
        }
        (None, None) => {
            anyhow::bail!("name a recipe (qpeft train recipes/rte.toml) or --resume RUN")
        }
    };
    let lock = run_dir.try_lock()?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} is being trained by another process",
            run_dir.root.display()
        )
    })?;
    let report = run_recipe(
        &recipe,
        &run_dir,
        &lock,
        start,
        args.data_dir.as_deref(),
        args.dump_batches,
        args.device.device,
    )?;
    if args.dump_batches.is_some() {
        println!("dump: {}", dump_dir(&run_dir).display());
        return Ok(());
    }
    println!(
        "{} dev {:.4} (last epoch; best {:.4} at epoch {}), {:.1} samples/s, {:.0} s",
        report.task,
        report.final_main,
        report.best_main,
        report.best_epoch,
        report.samples_per_second,
        report.wall_seconds
    );
    println!("report: {}", run_dir.root.join("report.md").display());
    Ok(())
}

/// `runs/<task>-<init>-<bits>b-r<rank>-<UTC time>`.
pub fn default_run_dir(recipe: &Recipe) -> PathBuf {
    let bits = match recipe.quant.method {
        QuantMethod::None => "fp".to_string(),
        _ => format!("{}b", recipe.quant.bits),
    };
    PathBuf::from("runs").join(format!(
        "{}-{}-{bits}-r{}-{}",
        recipe.data.task.map_or("task", Task::name),
        recipe.adapter.init,
        recipe.adapter.rank,
        now_stamp()
    ))
}

/// The current UTC time as `YYYYMMDD-HHMMSS`.
pub fn now_stamp() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_stamp(seconds)
}

/// `YYYYMMDD-HHMMSS` in UTC (Howard Hinnant's civil-from-days).
fn utc_stamp(seconds: u64) -> String {
    let days = (seconds / 86400) as i64;
    let rest = seconds % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc_stamp;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_795_000_000), "20261118-110640");
    }
}
