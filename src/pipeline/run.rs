//! Building the trainable model of a run from its recipe: the classifier on a base (an init
//! checkpoint, or the pretrained model for full-precision LoRA), QPEFT layers in the target
//! slots, the trainable set marked, and the summary of what was quantized.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::kernels::{AutodiffBackend, Backend};
use burn_autodiff::Autodiff;

use crate::adapters::export::adapter_and_head_tensors;
use crate::adapters::surgery::{
    AdapterSource, SurgeryOptions, TrainableSet, attach_adapters, set_trainable,
};
use crate::data::batch::{TokenizedSplit, default_cache_dir};
use crate::data::{Split, Task, glue_dir};
use crate::device::{BackendTask, DeviceSpec};
use crate::error::{Error, Result};
use crate::files::{self, FileLock};
use crate::model::{HeadKind, ModelFiles, PretrainedModel, SequenceClassifier};
use crate::pipeline::init::recipe_init;
use crate::recipe::Recipe;
use crate::reconstruct::init::InitName;
use crate::seed::substream_seed;
use crate::train::checkpoint::LoadedCheckpoint;
use crate::train::hooks::{StopAfterSteps, TrainHooks};
use crate::train::optim::{AdamWConfig, OptimizerKind};
use crate::train::report::QuantSummary;
use crate::train::report::{RunReport, peak_rss_bytes};
use crate::train::trace::StepDump;
use crate::train::trainer::{PreservedConfig, TrainConfig, TrainData, latest_checkpoint, train};

/// The head a task trains: STS-B one regression output, the others one logit per class.
pub fn head_for(task: Task) -> HeadKind {
    match task.num_outputs() {
        1 => HeadKind::Regression,
        n => HeadKind::Classification { num_labels: n },
    }
}

/// The optimization settings a recipe describes.
pub fn train_config(recipe: &Recipe) -> TrainConfig {
    let t = &recipe.train;
    let a = &recipe.adapter;
    TrainConfig {
        learning_rate: t.learning_rate,
        batch_size: t.batch_size,
        grad_accum: t.grad_accum,
        length_group_window: t.length_group_window,
        length_split: t.length_split,
        epochs: t.epochs,
        schedule: t.schedule,
        warmup_ratio: t.warmup_ratio,
        max_grad_norm: (t.max_grad_norm > 0.0).then_some(t.max_grad_norm),
        adamw: AdamWConfig {
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
            precondition_delta: (t.optimizer == OptimizerKind::RiemannianAdamw)
                .then_some(t.riemannian_delta),
        },
        seed: t.seed,
        eval_batch_size: t.eval_batch_size,
        checkpoint_every: t.checkpoint_every,
        log_every: t.log_every,
        mnli_main: t.mnli_main,
        preserved: PreservedConfig {
            mode: a.preserved_scaling,
            gamma: a.gamma,
            form: a.gamma_form,
        },
    }
}

/// The model of a run, ready to train.
pub struct RunModel<B: AutodiffBackend> {
    pub model: SequenceClassifier<B>,
    pub base: PretrainedModel,
    pub summary: QuantSummary,
}

/// Loads `base` (an init checkpoint unless the recipe asks for full-precision LoRA), attaches
/// the adapters and marks what trains. The fresh head is drawn from the recipe's seed.
pub fn build_model<B: AutodiffBackend>(
    recipe: &Recipe,
    base: ModelFiles,
    device: &B::Device,
) -> Result<RunModel<B>> {
    let task = recipe.task()?;
    let mut base = PretrainedModel::open(base)?;
    if let Some(p) = recipe.model.dropout {
        let config = &mut base.config;
        config.hidden_dropout_prob = p;
        config.attention_probs_dropout_prob = p;
        config.classifier_dropout = p;
    }
    let seed = recipe.train.seed;
    B::seed(device, substream_seed(seed, "head-init"));
    let mut model = base.classifier_for_finetuning::<B>(head_for(task), device)?;
    let adapter = &recipe.adapter;
    let options = SurgeryOptions {
        targets: adapter.targets.clone(),
        source: if adapter.init == InitName::Lora {
            AdapterSource::Fresh {
                rank: adapter.rank,
                alpha: adapter.alpha,
                seed,
            }
        } else {
            AdapterSource::Checkpoint
        },
        dropout: adapter.dropout,
        placement: adapter.dropout_placement,
    };
    let smallest = model
        .encoder
        .linear_names()
        .iter()
        .filter(|n| adapter.targets.iter().any(|t| n.ends_with(t.as_str())))
        .filter_map(|n| model.encoder.linear(n))
        .map(|l| l.weight.dims().into_iter().min().unwrap_or(0))
        .min()
        .unwrap_or(0);
    recipe.validate_rank(smallest)?;
    let adapted = attach_adapters(&mut model, &base.weights, &options, device)?;
    let model = set_trainable(
        model,
        TrainableSet {
            biases: adapter.train_biases,
            layer_norms: adapter.train_layer_norms,
            pooler: adapter.train_pooler,
        },
    );
    let summary = summarize(&model, &base, recipe, &adapted);
    Ok(RunModel {
        model,
        base,
        summary,
    })
}

fn summarize<B: AutodiffBackend>(
    model: &SequenceClassifier<B>,
    base: &PretrainedModel,
    recipe: &Recipe,
    adapted: &[String],
) -> QuantSummary {
    let layers: Vec<_> = adapted
        .iter()
        .filter_map(|name| Some((name, model.encoder.target(name)?.adapted()?)))
        .collect();
    let (stored, weights) = layers.iter().fold((0usize, 0usize), |(s, w), (_, l)| {
        let (rows, cols) = l.shape();
        (s + l.frozen().stored_bytes(), w + rows * cols)
    });
    let quant = base.weights.quantization();
    QuantSummary {
        method: quant.map_or("none".to_string(), |q| q.method.clone()),
        bits: quant.map(|q| q.bits),
        grid: quant.map(|q| q.grid.clone()),
        group: quant.map(|q| q.group),
        bits_per_weight: quant.map(|_| 8.0 * stored as f64 / weights.max(1) as f64),
        init: base
            .weights
            .adapters()
            .map_or_else(|| recipe.adapter.init.to_string(), |a| a.init.clone()),
        rank: recipe.adapter.rank,
        preserved: layers
            .iter()
            .map(|(name, l)| (name.to_string(), l.spec().preserved))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A run directory: `recipe.toml` (resolved), `init/` (the base it started from, absent for
/// full-precision LoRA, whose base is the recipe's model), `checkpoints/`, `metrics.jsonl`,
/// `report.{json,md}`.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: std::path::PathBuf,
}

impl RunDir {
    pub fn recipe_path(&self) -> std::path::PathBuf {
        self.root.join("recipe.toml")
    }

    pub fn init_dir(&self) -> std::path::PathBuf {
        self.root.join("init")
    }

    pub fn recipe(&self) -> Result<Recipe> {
        Recipe::load_resolved(&self.recipe_path())
    }

    /// Takes the run's lock (`<run>/.lock`, created with the directory if needed), which
    /// keeps a second process from training the same run; `None` while another process holds
    /// it.
    pub fn try_lock(&self) -> Result<Option<FileLock>> {
        files::try_lock(&self.lock_path()?)
    }

    /// Waits for the run's lock.
    pub fn lock(&self) -> Result<FileLock> {
        files::lock(&self.lock_path()?)
    }

    fn lock_path(&self) -> Result<std::path::PathBuf> {
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        Ok(self.root.join(".lock"))
    }

    /// The model files the run started from.
    pub fn base_files(&self, recipe: &Recipe) -> Result<ModelFiles> {
        let init = self.init_dir();
        let name = if init.is_dir() {
            init.to_string_lossy().into_owned()
        } else {
            recipe.model.name.clone()
        };
        crate::model::resolve_model(&name, &crate::model::HubOptions::from_env())
    }

    /// `path` is a run directory (its latest checkpoint) or one of its checkpoints.
    pub fn locate(path: &std::path::Path) -> Result<(RunDir, std::path::PathBuf)> {
        if path.join("state.json").is_file() {
            let root = path.parent().and_then(|p| p.parent()).ok_or_else(|| {
                Error::Config(format!(
                    "{}: a checkpoint outside a run directory",
                    path.display()
                ))
            })?;
            return Ok((
                RunDir {
                    root: root.to_path_buf(),
                },
                path.to_path_buf(),
            ));
        }
        let run = RunDir {
            root: path.to_path_buf(),
        };
        if !run.recipe_path().is_file() {
            return Err(Error::Config(format!(
                "{}: neither a run directory (no recipe.toml) nor a checkpoint (no state.json)",
                path.display()
            )));
        }
        let checkpoint = crate::train::trainer::latest_checkpoint(path)?.ok_or_else(|| {
            Error::Config(format!("{}: the run has no checkpoint yet", path.display()))
        })?;
        Ok((run, checkpoint))
    }
}

/// A trained model read back from a checkpoint, for evaluation and prediction.
pub struct TrainedModel<B: AutodiffBackend> {
    pub model: SequenceClassifier<B::InnerBackend>,
    pub recipe: Recipe,
    pub base: PretrainedModel,
    pub checkpoint: std::path::PathBuf,
}

/// Rebuilds the run's model and loads the trainable parameters of the checkpoint at `path`
/// (a run directory means its latest checkpoint).
pub fn load_trained<B: AutodiffBackend>(
    path: &std::path::Path,
    device: &B::Device,
) -> Result<TrainedModel<B>> {
    use burn::module::AutodiffModule;
    let (run, checkpoint) = RunDir::locate(path)?;
    let recipe = run.recipe()?;
    let built = build_model::<B>(&recipe, run.base_files(&recipe)?, device)?;
    let loaded = crate::train::checkpoint::LoadedCheckpoint::open(&checkpoint)?;
    let model = loaded.restore_module(built.model)?.valid();
    Ok(TrainedModel {
        model,
        recipe,
        base: built.base,
        checkpoint,
    })
}

/// Hard-links (or copies) the files of `from` into `to`.
fn link_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let path = entry.map_err(|e| Error::io(from, e))?.path();
        if path.is_file() {
            let target = to.join(path.file_name().expect("a file has a name"));
            if std::fs::hard_link(&path, &target).is_err() {
                std::fs::copy(&path, &target).map_err(|e| Error::io(&target, e))?;
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
pub fn dump_dir(run: &RunDir) -> PathBuf {
    run.root.join("dump")
}

/// The resolved recipe as JSON, as reports and dumps record it.
fn recipe_json(recipe: &Recipe) -> Result<serde_json::Value> {
    serde_json::to_value(recipe).map_err(|e| Error::Internal(format!("the recipe as JSON: {e}")))
}

/// Runs (or continues) `recipe` in `run`, whose lock the caller holds; the report of the
/// finished run. With `dump`, stops after that many optimizer steps and writes them into
/// `<run>/dump` instead of a report.
pub fn run_recipe(
    recipe: &Recipe,
    run: &RunDir,
    _lock: &FileLock,
    start: RunStart,
    data_dir: Option<&Path>,
    dump: Option<usize>,
    device: DeviceSpec,
) -> Result<RunReport> {
    let started = Instant::now();
    let data_dir = glue_dir(data_dir.or(recipe.data.dir.as_deref()));
    let resume = match start {
        RunStart::New => {
            set_up_run(recipe, run, &data_dir, device)?;
            None
        }
        RunStart::Continue => {
            if recipe.adapter.init != InitName::Lora && !run.init_dir().is_dir() {
                return Err(Error::Config(format!(
                    "{} holds no init/ folder: it is not a complete run directory",
                    run.root.display()
                )));
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
    let mut report = device.run(TrainTask {
        recipe,
        run,
        resume: resume.as_ref(),
        data_dir: &data_dir,
        dump,
    })??;
    report.wall_seconds = started.elapsed().as_secs_f64();
    report.device = device.to_string();
    if dump.is_none() {
        report.write(&run.root)?;
    }
    Ok(report)
}

/// Makes `run` a run directory: its `init/` (linked from the recipe's init checkpoint, built in
/// the cache if needed), then `recipe.toml`, written last so that a directory with a recipe
/// always has its complete base.
fn set_up_run(recipe: &Recipe, run: &RunDir, data_dir: &Path, device: DeviceSpec) -> Result<()> {
    let recipe_path = run.recipe_path();
    if recipe_path.exists() {
        return Err(Error::Config(format!(
            "{} already holds a run: continue it with --resume {0}, or choose another --out",
            run.root.display()
        )));
    }
    std::fs::create_dir_all(&run.root).map_err(|e| Error::io(&run.root, e))?;
    if recipe.adapter.init != InitName::Lora {
        let init = recipe_init(recipe, data_dir, device)?;
        // Left by a setup that stopped before writing the recipe: no run has used it.
        let linked = run.init_dir();
        let partial = linked.with_extension("partial");
        for stale in [&linked, &partial] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(|e| Error::io(stale, e))?;
            }
        }
        link_dir(&init, &partial)?;
        std::fs::rename(&partial, &linked).map_err(|e| Error::io(&linked, e))?;
    }
    std::fs::write(&recipe_path, recipe.to_toml()?).map_err(|e| Error::io(&recipe_path, e))
}

struct TrainTask<'a> {
    recipe: &'a Recipe,
    run: &'a RunDir,
    resume: Option<&'a LoadedCheckpoint>,
    data_dir: &'a Path,
    dump: Option<usize>,
}

impl BackendTask for TrainTask<'_> {
    type Output = Result<RunReport>;

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
            dump.write(&dump_dir(self.run), recipe_json(recipe)?, &initial, &last)?;
            eprintln!("dumped {} optimizer steps", dump.len());
        }
        let state = outcome.state;
        let (best_epoch, best_main) = RunReport::best(&state.epochs);
        Ok(RunReport {
            task,
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
            recipe: recipe_json(recipe)?,
            epochs: state.epochs,
        })
    }
}
