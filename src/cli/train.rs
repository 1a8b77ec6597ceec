//! `qpeft train <recipe>`: one QPEFT fine-tuning run from a recipe — build (or reuse from the
//! cache) the init checkpoint, attach the adapters, train with evaluation after every epoch,
//! and write the run directory's report. `--resume RUN` continues a killed run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use clap::Parser;
use qpeft::adapters::export::adapter_and_head_tensors;
use qpeft::data::batch::{TokenizedSplit, default_cache_dir};
use qpeft::data::{Split, glue_dir};
use qpeft::device::BackendTask;
use qpeft::pipeline::run::{RunDir, RunLock, build_model, train_config};
use qpeft::quant::solve::QuantMethod;
use qpeft::recipe::Recipe;
use qpeft::reconstruct::init::InitName;
use qpeft::train::checkpoint::LoadedCheckpoint;
use qpeft::train::hooks::{StopAfterSteps, TrainHooks};
use qpeft::train::report::{RunReport, peak_rss_bytes};
use qpeft::train::trace::StepDump;
use qpeft::train::trainer::{TrainData, latest_checkpoint, train};
use sha2::{Digest, Sha256};

use super::DeviceArg;
use super::quantize::calibration_texts;

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
    /// order, each step's loss and learning rate, the adapters and head before and after) for
    /// scripts/check_training.py to replay in PyTorch.
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
        &args.device,
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
        recipe.data.task.as_deref().unwrap_or("task"),
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

/// The `qpeft init` command line that builds the recipe's init checkpoint.
fn init_arguments(recipe: &Recipe) -> Vec<String> {
    let q = &recipe.quant;
    let a = &recipe.adapter;
    let method = q.method.to_string();
    let grid = q.grid.to_string();
    let init = a.init.to_string();
    let mut argv: Vec<String> = [
        "--model",
        &recipe.model.name,
        "--init",
        &init,
        "--rank",
        &a.rank.to_string(),
        "--lora-alpha",
        &a.alpha.to_string(),
        "--k-rule",
        &a.k_rule,
        "--loftq-iters",
        &a.loftq_iters.to_string(),
        "--quantizer",
        &method,
        "--bits",
        &q.bits.to_string(),
        "--grid",
        &grid,
        "--group",
        &q.group.to_string(),
        "--calib",
        recipe.calibration_source(),
        "--calib-samples",
        &q.calib_samples.to_string(),
        "--max-length",
        &q.calib_max_length.to_string(),
        "--seed",
        &q.calib_seed.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if a.joint_refit {
        argv.push("--joint-refit".into());
    }
    // Spelled out even when it is the default, so that the cache key changes with the default
    // (SRR's moved from sigma-right to sqrt) and never hands back an init made under another.
    if let Some(split) = a.factor_split.or(a.init.default_split()) {
        argv.extend(["--factor-split".into(), split.to_string()]);
    }
    argv
}

/// Builds the init checkpoint in the cache, once. The key covers everything that shapes it:
/// the init arguments and the calibration texts themselves, so that an edited calibration file
/// or another copy of GLUE builds anew. Concurrent builders of one key each write their own
/// partial folder; the first to finish places it, the others use it.
pub fn cached_init(
    recipe: &Recipe,
    data_dir: &Path,
    device: &DeviceArg,
) -> anyhow::Result<PathBuf> {
    #[derive(Parser)]
    struct InitCommand {
        #[command(flatten)]
        args: super::init::InitArgs,
    }
    let argv = init_arguments(recipe);
    let mut full = vec!["qpeft-init".to_string()];
    full.extend(argv.iter().cloned());
    full.extend([
        "--device".into(),
        device.device.to_string(),
        "--data-dir".into(),
        data_dir.to_string_lossy().into_owned(),
        "--out".into(),
        "<set once the key is known>".into(),
    ]);
    let mut args = InitCommand::try_parse_from(&full)
        .with_context(|| {
            format!(
                "the recipe gives an invalid init command: {}",
                full.join(" ")
            )
        })?
        .args;
    let mut key = Sha256::new().chain_update(argv.join("\u{0}").as_bytes());
    for text in calibration_texts(&args.calib)? {
        key.update(text.first.as_bytes());
        key.update([0]);
        key.update(text.second.unwrap_or_default().as_bytes());
        key.update([1]);
    }
    let key: String = key.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = default_cache_dir().with_file_name("inits");
    let dir = root.join(format!(
        "{}-{}-{}b-r{}-{key}",
        recipe.adapter.init, recipe.quant.method, recipe.quant.bits, recipe.adapter.rank
    ));
    let complete = |dir: &Path| dir.join("model.safetensors").is_file();
    if complete(&dir) {
        eprintln!("init checkpoint: {} (cached)", dir.display());
        return Ok(dir);
    }
    args.out = dir.with_extension(format!("partial-{}", std::process::id()));
    let shown = full.len() - 1;
    full[shown] = args.out.to_string_lossy().into_owned();
    eprintln!(
        "building the init checkpoint: qpeft init {}",
        full[1..].join(" ")
    );
    let partial = args.out.clone();
    super::init::run(args)?;
    if let Err(error) = std::fs::rename(&partial, &dir) {
        if !complete(&dir) {
            return Err(error).with_context(|| format!("moving {} into place", dir.display()));
        }
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    Ok(dir)
}

/// Hard-links (or copies) the files of `from` into `to`.
fn link_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let target = to.join(path.file_name().expect("a file has a name"));
            if std::fs::hard_link(&path, &target).is_err() {
                std::fs::copy(&path, &target).with_context(|| {
                    format!("copying {} to {}", path.display(), target.display())
                })?;
            }
        }
    }
    Ok(())
}

/// Whether `run_recipe` begins a run or continues the one its directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStart {
    /// A new run: the directory must not hold one already.
    New,
    /// The run the directory holds, from its latest checkpoint, or from its beginning when it
    /// was stopped before the first checkpoint was written.
    Continue,
}

/// Where `--dump-batches` writes.
fn dump_dir(run: &RunDir) -> PathBuf {
    run.root.join("dump")
}

/// Runs (or continues) `recipe` in `run`, whose lock the caller holds; the report of the
/// finished run. With `dump`, stops after that many optimizer steps and writes them into
/// `<run>/dump` instead of a report.
pub fn run_recipe(
    recipe: &Recipe,
    run: &RunDir,
    _lock: &RunLock,
    start: RunStart,
    data_dir: Option<&Path>,
    dump: Option<usize>,
    device: &DeviceArg,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let data_dir = glue_dir(data_dir.or(recipe.data.dir.as_deref()));
    let resume = match start {
        RunStart::New => {
            set_up_run(recipe, run, &data_dir, device)?;
            None
        }
        RunStart::Continue => {
            if recipe.adapter.init != InitName::Lora && !run.init_dir().is_dir() {
                anyhow::bail!(
                    "{} holds no init/ folder: it is not a complete run directory",
                    run.root.display()
                );
            }
            let checkpoint = latest_checkpoint(&run.root)?;
            match &checkpoint {
                Some(dir) => eprintln!("resuming from {}", dir.display()),
                None => eprintln!(
                    "{} was stopped before its first checkpoint: starting it again",
                    run.root.display()
                ),
            }
            checkpoint
                .as_deref()
                .map(LoadedCheckpoint::open)
                .transpose()?
        }
    };
    let mut report = device.device.run(TrainTask {
        recipe,
        run,
        resume: resume.as_ref(),
        data_dir: &data_dir,
        dump,
    })??;
    report.wall_seconds = started.elapsed().as_secs_f64();
    report.device = device.device.to_string();
    if dump.is_none() {
        report.write(&run.root)?;
    }
    Ok(report)
}

/// Makes `run` a run directory: its `init/` (linked from the recipe's init checkpoint, built in
/// the cache if needed), then `recipe.toml`, written last so that a directory with a recipe
/// always has its complete base.
fn set_up_run(
    recipe: &Recipe,
    run: &RunDir,
    data_dir: &Path,
    device: &DeviceArg,
) -> anyhow::Result<()> {
    let recipe_path = run.recipe_path();
    if recipe_path.exists() {
        anyhow::bail!(
            "{} already holds a run: continue it with --resume {0}, or choose another --out",
            run.root.display()
        );
    }
    std::fs::create_dir_all(&run.root)
        .with_context(|| format!("creating {}", run.root.display()))?;
    if recipe.adapter.init != InitName::Lora {
        let init = match &recipe.model.init_checkpoint {
            Some(dir) => dir.clone(),
            None => cached_init(recipe, data_dir, device)?,
        };
        // Left by a setup that stopped before writing the recipe: no run has used it.
        let linked = run.init_dir();
        let partial = linked.with_extension("partial");
        for stale in [&linked, &partial] {
            if stale.exists() {
                std::fs::remove_dir_all(stale)
                    .with_context(|| format!("removing {}", stale.display()))?;
            }
        }
        link_dir(&init, &partial)?;
        std::fs::rename(&partial, &linked)
            .with_context(|| format!("moving {} into place", linked.display()))?;
    }
    std::fs::write(&recipe_path, recipe.to_toml()?)
        .with_context(|| format!("writing {}", recipe_path.display()))
}

struct TrainTask<'a> {
    recipe: &'a Recipe,
    run: &'a RunDir,
    resume: Option<&'a LoadedCheckpoint>,
    data_dir: &'a Path,
    dump: Option<usize>,
}

impl BackendTask for TrainTask<'_> {
    type Output = anyhow::Result<RunReport>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let recipe = self.recipe;
        let task = recipe.task()?;
        let built = build_model::<Autodiff<B>>(recipe, self.run.base_files(recipe)?, &device)?;
        let tokenizer = built.base.tokenizer(recipe.train.max_length)?;
        let cache = default_cache_dir();
        let mut train_split =
            TokenizedSplit::load(self.data_dir, task, Split::Train, &tokenizer, Some(&cache))?;
        if let Some(n) = recipe.data.max_train_samples {
            train_split = train_split.subsample(n, recipe.train.seed);
        }
        let data = TrainData {
            train: train_split,
            dev: TokenizedSplit::dev_splits(self.data_dir, task, &tokenizer, Some(&cache))?,
        };
        let config = train_config(recipe);
        let mut dump = StepDump::default();
        let initial = match self.dump {
            Some(_) => adapter_and_head_tensors(&built.model)?,
            None => Vec::new(),
        };
        eprintln!(
            "training {task}: {} examples, {} dev, {} → run {}",
            data.train.len(),
            data.dev.iter().map(TokenizedSplit::len).sum::<usize>(),
            built.summary.init,
            self.run.root.display()
        );
        let mut hooks = TrainHooks::standard(&self.run.root)?;
        if let Some(steps) = self.dump {
            hooks.interrupter = Box::new(StopAfterSteps(steps));
            hooks.observer = Box::new(&mut dump);
        }
        let outcome = train(
            built.model,
            &data,
            &config,
            &self.run.root,
            self.resume,
            hooks,
            &device,
        )?;
        if self.dump.is_some() {
            let last = adapter_and_head_tensors(&outcome.model)?;
            dump.write(
                &dump_dir(self.run),
                serde_json::to_value(recipe)?,
                &initial,
                &last,
            )?;
            eprintln!("dumped {} optimizer steps", dump.len());
        }
        let state = outcome.state;
        let (best_epoch, best_main) = RunReport::best(&state.epochs);
        Ok(RunReport {
            task: task.to_string(),
            device: String::new(),
            final_main: state.epochs.last().map_or(f64::NAN, |e| e.main),
            best_epoch,
            best_main,
            wall_seconds: 0.0,
            train_seconds: state.train_seconds,
            samples_per_second: state.samples as f64 / state.train_seconds.max(1e-9),
            peak_rss_bytes: peak_rss_bytes(),
            trainable_parameters: outcome.trainable_scalars,
            quantization: built.summary,
            recipe: serde_json::to_value(recipe)?,
            epochs: state.epochs,
        })
    }
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
