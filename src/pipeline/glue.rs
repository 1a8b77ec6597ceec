//! The GLUE comparison of the papers as a library call ([`GlueSpec`] → [`glue_suite`]): one
//! training run per (row, task) from the task recipes — per (row, task, lr, seed) with a grid,
//! the lr selected per cell by its seeds' mean score (or the first seed's) — then a table with one row per
//! initialization, one column per task's main score and the average. Finished runs are reused
//! and killed ones continued, so the same call continues an interrupted suite; a run of another
//! recipe is refused; runs held by another process are waited for, so suites share the work.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::run::{RunDir, RunStart, run_recipe};
use crate::data::{Task, glue_dir};
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::eval::baseline::majority_class;
use crate::files::{FileLock, write_json};
use crate::plot::{BarChart, BarSeries, Reference, bar_chart_svg, write_svg};
use crate::quant::solve::QuantMethod;
use crate::recipe::Recipe;
use crate::reconstruct::init::{InitName, KRule};
use crate::train::checkpoint::{EpochRecord, LoadedCheckpoint};
use crate::train::optim::PreservedScaling;
use crate::train::report::RunReport;
use crate::train::trainer::latest_checkpoint;

/// A GLUE suite: the recipes folder (`<task>.toml`), the tasks, the rows (`--compare`: an
/// initialization with optional `+` modifiers), overrides for every recipe, and the lr × seed
/// grid (empty: the recipes' lr and seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlueSpec {
    pub recipes: PathBuf,
    pub tasks: Vec<Task>,
    pub compare: Vec<String>,
    pub overrides: Vec<String>,
    pub lrs: Vec<f64>,
    pub seeds: Vec<u64>,
    /// How each cell's lr is selected from `lrs`.
    #[serde(default)]
    pub select: LrSelection,
}

/// How a GLUE suite with an lr grid selects each (row, task)'s lr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LrSelection {
    /// Every lr runs with every seed; the best mean final dev score over the seeds selects
    /// (the papers': QERA averages 3 seeds at each method's best lr).
    #[default]
    Mean,
    /// Every lr runs with the first seed, whose best final score selects; only the selected lr
    /// runs with the other seeds (a third of the runs with 3 lrs).
    FirstSeed,
}

crate::named!(LrSelection);

impl GlueSpec {
    /// Whether the suite has an lr × seed grid (one run per (row, task) without).
    fn grid(&self) -> bool {
        !self.lrs.is_empty() || !self.seeds.is_empty()
    }

    /// Whether its cells average several seeds (and so have a spread).
    fn with_std(&self) -> bool {
        self.seeds.len() > 1
    }
}

/// What a suite wrote: the table (as in `glue.md`) and `glue.md`'s path.
#[derive(Debug, Clone)]
pub struct GlueOutcome {
    pub table: String,
    pub markdown: PathBuf,
}

/// A suite being run: its spec, where GLUE is, the device.
struct Suite<'a> {
    spec: &'a GlueSpec,
    data_dir: Option<&'a Path>,
    device: DeviceSpec,
}

/// The recipe overrides of a `--compare` row: an initializer (`lora`, any [`InitName`], `qera`
/// for `qera-exact`, `srr-<k rule>`), then `+`-joined modifiers, each a [`PreservedScaling`] or a
/// [`QuantMethod`].
pub fn row_overrides(row: &str) -> Result<Vec<String>> {
    let mut parts = row.split('+');
    let base = parts.next().unwrap_or_default();
    let (init, k_rule) = match base.strip_prefix("srr-") {
        Some(rule) => (
            InitName::Srr,
            Some(rule.parse::<KRule>().map_err(|e| {
                Error::Config(format!("--compare {row}: the k rule of '{base}': {e}"))
            })?),
        ),
        None if base == "qera" => (InitName::QeraExact, None),
        None => (
            InitName::from_str(base, false).map_err(|_| {
                Error::Config(format!(
                    "--compare {row}: unknown initialization '{base}' (expected {}, qera or \
                     srr-<k rule>)",
                    names::<InitName>()
                ))
            })?,
            None,
        ),
    };
    let mut overrides = Vec::new();
    if init == InitName::Lora {
        overrides.push(format!("quant.method={}", QuantMethod::None));
    }
    overrides.push(format!("adapter.init={init}"));
    if let Some(rule) = k_rule {
        overrides.push(format!("adapter.k_rule={rule}"));
    }
    for modifier in parts {
        overrides.push(
            if let Ok(scaling) = PreservedScaling::from_str(modifier, false) {
                format!("adapter.preserved_scaling={scaling}")
            } else if let Ok(method) = QuantMethod::from_str(modifier, false) {
                format!("quant.method={method}")
            } else {
                return Err(Error::Config(format!(
                    "--compare {row}: unknown modifier '{modifier}' (expected a preserved scaling, \
                 {}, or a quantizer, {})",
                    names::<PreservedScaling>(),
                    names::<QuantMethod>()
                )));
            },
        );
    }
    Ok(overrides)
}

/// The names of a named enum, comma-separated.
fn names<T: ValueEnum + std::fmt::Display>() -> String {
    T::value_variants()
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One training run of the suite: a (row, task) cell, at an lr and a seed when the suite has a
/// grid (`None`: the recipe's).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct Job {
    row: usize,
    task: Task,
    lr: Option<f64>,
    seed: Option<u64>,
}

impl Job {
    /// `<row>/<task>`, and below it `lr-<lr>-seed-<seed>` in a grid.
    fn dir(&self, out: &Path, rows: &[String], recipe: &Recipe) -> PathBuf {
        let cell = out.join(&rows[self.row]).join(self.task.name());
        if self.lr.is_none() && self.seed.is_none() {
            return cell;
        }
        cell.join(format!(
            "lr-{:e}-seed-{}",
            recipe.train.learning_rate, recipe.train.seed
        ))
    }
}

/// The reports of a suite's runs, keyed by job.
type Reports = Vec<(Job, RunReport)>;

fn find_report<'a>(reports: &'a Reports, job: &Job) -> Option<&'a RunReport> {
    reports.iter().find(|(j, _)| j == job).map(|(_, r)| r)
}

/// A job's recipe (its task's, with the row's, the suite's and the job's overrides) and its run
/// directory.
fn job_run(spec: &GlueSpec, out: &Path, job: &Job) -> Result<(Recipe, RunDir)> {
    let row = &spec.compare[job.row];
    let mut overrides = row_overrides(row)?;
    overrides.extend(spec.overrides.iter().cloned());
    if let Some(lr) = job.lr {
        overrides.push(format!("train.learning_rate={lr:e}"));
    }
    if let Some(seed) = job.seed {
        overrides.push(format!("train.seed={seed}"));
    }
    let recipe_path = spec.recipes.join(format!("{}.toml", job.task.name()));
    let recipe = Recipe::load(&recipe_path, &overrides)
        .map_err(|e| e.context(format!("row {row}, task {}", job.task)))?;
    let run = RunDir {
        root: job.dir(out, &spec.compare, &recipe),
    };
    Ok((recipe, run))
}

/// Trains (or reads) every job. Runs held by another process (a second `qpeft glue` on the same
/// --out) are passed over and waited for at the end, so that parallel suites share the work.
fn run_jobs(suite: &Suite<'_>, out: &Path, jobs: &[Job]) -> Result<Reports> {
    let mut reports = Vec::new();
    let mut held_elsewhere = Vec::new();
    for job in jobs {
        let row = &suite.spec.compare[job.row];
        let (recipe, run) = job_run(suite.spec, out, job)?;
        match run.try_lock()? {
            Some(lock) => reports.push((
                *job,
                finish_run(suite, row, job.task, &recipe, &run, &lock)?,
            )),
            None => {
                eprintln!(
                    "== {}: another process is running it, coming back to it",
                    run.root.display()
                );
                held_elsewhere.push((*job, recipe, run));
            }
        }
    }
    for (job, recipe, run) in held_elsewhere {
        eprintln!("== {}: waiting for the other process", run.root.display());
        let lock = run.lock()?;
        let row = &suite.spec.compare[job.row];
        reports.push((job, finish_run(suite, row, job.task, &recipe, &run, &lock)?));
    }
    Ok(reports)
}

/// A run of the suite that has not finished: the epochs its latest checkpoint holds and what
/// it is doing.
struct Unfinished {
    job: Job,
    epochs: Vec<EpochRecord>,
    state: &'static str,
}

/// Reads the jobs' runs without training: the finished ones' reports, and where each other one
/// stands. A run of another recipe is refused, as a suite would.
fn read_jobs(spec: &GlueSpec, out: &Path, jobs: &[Job]) -> Result<(Reports, Vec<Unfinished>)> {
    let mut reports = Vec::new();
    let mut unfinished = Vec::new();
    for job in jobs {
        let (recipe, run) = job_run(spec, out, job)?;
        let begun = run.recipe_path().is_file();
        if begun {
            same_recipe(&run, &recipe)?;
            if let Some(report) = RunReport::read(&run.root)? {
                reports.push((*job, report));
                continue;
            }
        }
        // Taking the lock for a moment tells whether a process holds it; a suite that finds
        // it taken meanwhile comes back to the run.
        let training = run.root.is_dir() && run.try_lock()?.is_none();
        let epochs = match latest_checkpoint(&run.root)? {
            Some(checkpoint) => LoadedCheckpoint::open(&checkpoint)?.state.epochs,
            None => Vec::new(),
        };
        let state = match (training, begun) {
            (true, _) => "training",
            (false, true) => "stopped",
            (false, false) => "not started",
        };
        unfinished.push(Unfinished {
            job: *job,
            epochs,
            state,
        });
    }
    Ok((reports, unfinished))
}

/// A suite's runs: its (row, task) cells, the lrs and seeds (`None`: the recipe's), and how many
/// of the seeds (the first ones) run at every lr to select it.
struct Plan {
    cells: Vec<(usize, Task)>,
    lrs: Vec<Option<f64>>,
    seeds: Vec<Option<u64>>,
    selecting: usize,
}

impl Plan {
    fn new(spec: &GlueSpec) -> Self {
        let lrs: Vec<Option<f64>> = match spec.lrs.is_empty() {
            true => vec![None],
            false => spec.lrs.iter().copied().map(Some).collect(),
        };
        let seeds: Vec<Option<u64>> = match spec.seeds.is_empty() {
            true => vec![None],
            false => spec.seeds.iter().copied().map(Some).collect(),
        };
        let selecting = match spec.select {
            LrSelection::Mean => seeds.len(),
            LrSelection::FirstSeed => 1,
        };
        Plan {
            cells: (0..spec.compare.len())
                .flat_map(|row| spec.tasks.iter().map(move |&task| (row, task)))
                .collect(),
            lrs,
            seeds,
            selecting,
        }
    }

    /// Every lr with the seeds that select (all, or the first).
    fn selecting_jobs(&self) -> Vec<Job> {
        let seeds = &self.seeds[..self.selecting];
        self.cells
            .iter()
            .flat_map(|&(row, task)| {
                self.lrs.iter().flat_map(move |&lr| {
                    seeds.iter().map(move |&seed| Job {
                        row,
                        task,
                        lr,
                        seed,
                    })
                })
            })
            .collect()
    }

    /// The other seeds at each cell's selected lr; none for a cell still selecting.
    fn other_jobs(&self, selected: &[Option<usize>]) -> Vec<Job> {
        self.cells
            .iter()
            .zip(selected)
            .filter_map(|(&cell, &lr)| Some((cell, self.lrs[lr?])))
            .flat_map(|((row, task), lr)| {
                self.seeds[self.selecting..].iter().map(move |&seed| Job {
                    row,
                    task,
                    lr,
                    seed,
                })
            })
            .collect()
    }

    /// An lr's selection score in a cell: the mean final score over the selecting seeds;
    /// `None` while one of their runs has not finished.
    fn lr_score(&self, reports: &Reports, row: usize, task: Task, lr: Option<f64>) -> Option<f64> {
        let seeds = &self.seeds[..self.selecting];
        let scores = seeds
            .iter()
            .map(|&seed| {
                find_report(
                    reports,
                    &Job {
                        row,
                        task,
                        lr,
                        seed,
                    },
                )
                .map(|r| r.final_main)
            })
            .collect::<Option<Vec<f64>>>()?;
        Some(scores.iter().sum::<f64>() / seeds.len() as f64)
    }

    /// Each cell's selected lr (an index into `lrs`): the best selection score, the first lr
    /// on ties; `None` while an lr has no score yet.
    fn select(&self, reports: &Reports) -> Vec<Option<usize>> {
        self.cells
            .iter()
            .map(|&(row, task)| {
                let scores = self
                    .lrs
                    .iter()
                    .map(|&lr| self.lr_score(reports, row, task, lr))
                    .collect::<Option<Vec<f64>>>()?;
                // A NaN score (a diverged run) ranks lowest; `max_by` keeps the last of equal
                // maxima: over the reversed list, the first lr.
                let rank = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
                (0..scores.len())
                    .rev()
                    .max_by(|&a, &b| rank(scores[a]).total_cmp(&rank(scores[b])))
            })
            .collect()
    }

    fn summary(&self, reports: &Reports, selected: &[Option<usize>]) -> Summary {
        self.cells
            .iter()
            .zip(selected)
            .map(|(&(row, task), &selected)| {
                let cell = Cell {
                    grid: self
                        .lrs
                        .iter()
                        .map(|&lr| (lr, self.lr_score(reports, row, task, lr)))
                        .collect(),
                    selected,
                    seeds: self
                        .seeds
                        .iter()
                        .map(|&seed| {
                            let score = selected.and_then(|i| {
                                let job = Job {
                                    row,
                                    task,
                                    lr: self.lrs[i],
                                    seed,
                                };
                                find_report(reports, &job).map(|r| r.final_main)
                            });
                            (seed, score)
                        })
                        .collect(),
                };
                ((row, task), cell)
            })
            .collect()
    }
}

/// The suite's cells by (row, task).
type Summary = BTreeMap<(usize, Task), Cell>;

/// A (row, task) cell of a suite: each lr's selection score, the lr selected and its seeds'
/// scores; `None` where a run has not finished.
struct Cell {
    /// Each lr's selection score: the mean final-epoch score of the selecting seeds (lr `None`:
    /// the recipe's).
    grid: Vec<(Option<f64>, Option<f64>)>,
    /// The selected lr's index in `grid`.
    selected: Option<usize>,
    /// Final-epoch score per seed at the selected lr.
    seeds: Vec<(Option<u64>, Option<f64>)>,
}

/// One row of `glue.json` (docs/formats.md): each task's cell and the average main score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlueRow {
    pub row: String,
    pub tasks: BTreeMap<String, GlueCell>,
    pub average: f64,
}

/// A (row, task) cell of `glue.json`: the mean final score over the seeds, the first seed's
/// run at the selected lr, and with an lr × seed grid the grid itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlueCell {
    pub main: f64,
    pub best: f64,
    pub epochs: Vec<EpochRecord>,
    pub samples_per_second: f64,
    pub train_seconds: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub grid: Option<GlueGrid>,
}

/// A cell's lr × seed grid: each lr's selection score (the selecting seeds' mean), the lr
/// selected, and every seed's score at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlueGrid {
    pub std: f64,
    pub selected_lr: Option<f64>,
    pub grid: Vec<LrScore>,
    pub seeds: Vec<SeedScore>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrScore {
    pub lr: Option<f64>,
    pub main: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedScore {
    pub seed: Option<u64>,
    pub main: f64,
}

impl Cell {
    /// The cell as `glue.json` writes it, from its first seed's run at the selected lr.
    fn entry(&self, first: &RunReport, grid: bool) -> GlueCell {
        GlueCell {
            main: self.mean(),
            best: first.best_main,
            epochs: first.epochs.clone(),
            samples_per_second: first.samples_per_second,
            train_seconds: first.train_seconds,
            grid: grid.then(|| GlueGrid {
                std: self.std(),
                selected_lr: self.selected.and_then(|i| self.grid[i].0),
                grid: self
                    .grid
                    .iter()
                    .map(|&(lr, main)| LrScore {
                        lr,
                        main: main.unwrap_or(f64::NAN),
                    })
                    .collect(),
                seeds: self
                    .seeds
                    .iter()
                    .map(|&(seed, main)| SeedScore {
                        seed,
                        main: main.unwrap_or(f64::NAN),
                    })
                    .collect(),
            }),
        }
    }

    /// The final scores of the seeds that finished at the selected lr.
    fn finished(&self) -> Vec<f64> {
        self.seeds.iter().filter_map(|&(_, s)| s).collect()
    }

    /// Every seed finished at the selected lr.
    fn complete(&self) -> bool {
        self.seeds.iter().all(|(_, s)| s.is_some())
    }

    /// The mean over the finished seeds (NaN before any).
    fn mean(&self) -> f64 {
        let scores = self.finished();
        scores.iter().sum::<f64>() / scores.len() as f64
    }

    /// The sample standard deviation over the finished seeds (0 with one).
    fn std(&self) -> f64 {
        let scores = self.finished();
        let n = scores.len();
        if n < 2 {
            return 0.0;
        }
        let mean = self.mean();
        (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }

    /// The cell as the tables print it (in %): the mean, ± the standard deviation with
    /// `with_std` once two seeds finished; while seeds are still running, how many finished,
    /// or `…` before any did.
    fn text(&self, with_std: bool) -> String {
        let finished = self.finished().len();
        if finished == 0 {
            return "…".into();
        }
        let mut text = match with_std && finished > 1 {
            true => format!("{:.2} ± {:.2}", 100.0 * self.mean(), 100.0 * self.std()),
            false => format!("{:.2}", 100.0 * self.mean()),
        };
        if finished < self.seeds.len() {
            text.push_str(&format!(" ({finished} of {} seeds)", self.seeds.len()));
        }
        text
    }
}

/// Runs (or continues, or reads) every run of the suite `spec` in `out`, GLUE from `data_dir`
/// (else each recipe's, `$GLUE_DIR` or `datasets/glue`), and writes `glue.md`, `glue.json` and
/// `glue.svg` there.
pub fn glue_suite(
    spec: &GlueSpec,
    out: &Path,
    data_dir: Option<&Path>,
    device: DeviceSpec,
) -> Result<GlueOutcome> {
    let suite = Suite {
        spec,
        data_dir,
        device,
    };
    let plan = Plan::new(spec);
    let mut reports = run_jobs(&suite, out, &plan.selecting_jobs())?;
    let selected = plan.select(&reports);
    reports.extend(run_jobs(&suite, out, &plan.other_jobs(&selected))?);
    let summary = plan.summary(&reports, &selected);
    let baselines = baselines(spec, data_dir)?;
    let table = tables(spec, &summary, &reports, &[], &baselines, true);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_svg(
        &out.join(GLUE_CHART),
        &bar_chart_svg(&glue_chart(
            &spec.compare,
            &spec.tasks,
            &summary,
            &baselines,
            spec.with_std(),
        ))?,
    )?;
    let markdown = out.join("glue.md");
    std::fs::write(&markdown, &table).map_err(|e| Error::io(&markdown, e))?;
    let first_seed = plan.seeds[0];
    let rows = spec
        .compare
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let tasks = spec
                .tasks
                .iter()
                .map(|&task| {
                    let cell = &summary[&(i, task)];
                    let first = cell
                        .selected
                        .and_then(|lr| {
                            let job = Job {
                                row: i,
                                task,
                                lr: plan.lrs[lr],
                                seed: first_seed,
                            };
                            find_report(&reports, &job)
                        })
                        .ok_or_else(|| {
                            Error::Internal(format!("row {row}, task {task}: a run is missing"))
                        })?;
                    Ok((task.name().to_string(), cell.entry(first, spec.grid())))
                })
                .collect::<Result<_>>()?;
            Ok(GlueRow {
                row: row.clone(),
                tasks,
                average: average(i, &spec.tasks, &summary).unwrap_or(f64::NAN),
            })
        })
        .collect::<Result<Vec<GlueRow>>>()?;
    write_json(&out.join("glue.json"), &rows)?;
    Ok(GlueOutcome { table, markdown })
}

/// The tables of the suite `spec` in `out` from the runs finished so far, trains nothing and
/// writes nothing: cells still running show how many seeds finished (or `…`), and every run
/// not finished is listed with the epochs its checkpoint holds and whether a process is
/// training it now. A cell whose lr is still being selected lists no runs at other seeds.
pub fn glue_progress(spec: &GlueSpec, out: &Path, data_dir: Option<&Path>) -> Result<String> {
    let plan = Plan::new(spec);
    let (mut reports, mut unfinished) = read_jobs(spec, out, &plan.selecting_jobs())?;
    let selected = plan.select(&reports);
    let (others, others_unfinished) = read_jobs(spec, out, &plan.other_jobs(&selected))?;
    reports.extend(others);
    unfinished.extend(others_unfinished);
    let summary = plan.summary(&reports, &selected);
    let baselines = baselines(spec, data_dir)?;
    Ok(tables(
        spec,
        &summary,
        &reports,
        &unfinished,
        &baselines,
        false,
    ))
}

/// Each task's majority-class score (`None`: STS-B, a regression).
fn baselines(spec: &GlueSpec, data_dir: Option<&Path>) -> Result<Vec<Option<f64>>> {
    spec.tasks
        .iter()
        .map(|&task| {
            let path = spec.recipes.join(format!("{}.toml", task.name()));
            let recipe = Recipe::load(&path, &spec.overrides)?;
            let dir = glue_dir(data_dir.or(recipe.data.dir.as_deref()));
            Ok(majority_class(task, &dir, recipe.train.mnli_main)?.map(|s| s.main))
        })
        .collect()
}

/// `glue.md`: the rows × tasks table above the majority class, the chart (`chart`: written
/// beside it), with a grid the grid table, then every run's epochs.
fn tables(
    spec: &GlueSpec,
    summary: &Summary,
    reports: &Reports,
    unfinished: &[Unfinished],
    baselines: &[Option<f64>],
    chart: bool,
) -> String {
    let (grid, with_std) = (spec.grid(), spec.with_std());
    let mut table = markdown_table(&spec.compare, &spec.tasks, summary, with_std);
    table.push_str(&baseline_row(baselines));
    if chart {
        table.push_str(&format!("\n![dev scores, rows × tasks]({GLUE_CHART})\n"));
    }
    if grid {
        table.push('\n');
        table.push_str(&grid_table(&spec.compare, &spec.tasks, summary));
    }
    table.push('\n');
    table.push_str(&per_epoch_table(&spec.compare, reports, unfinished, grid));
    table
}

/// The report of the run of `recipe` in `run`, whose lock the caller holds: read if the run
/// finished, else the run trained (continued, or begun).
fn finish_run(
    suite: &Suite<'_>,
    row: &str,
    task: Task,
    recipe: &Recipe,
    run: &RunDir,
    lock: &FileLock,
) -> Result<RunReport> {
    let start = if run.recipe_path().is_file() {
        same_recipe(run, recipe)?;
        RunStart::Continue
    } else {
        RunStart::New
    };
    if start == RunStart::Continue
        && let Some(report) = RunReport::read(&run.root)?
    {
        return Ok(report);
    }
    eprintln!("== {row} / {task} → {}", run.root.display());
    run_recipe(recipe, run, lock, start, suite.data_dir, None, suite.device)
        .map_err(|e| e.context(format!("row {row}, task {task}")))
}

/// Refuses to reuse or continue a run made from another recipe than the suite's now (e.g. after
/// a changed `--set`), which would put another protocol's score in the table.
fn same_recipe(run: &RunDir, recipe: &Recipe) -> Result<()> {
    let saved = run
        .recipe()
        .map_err(|e| e.context(format!("reading the recipe of run {}", run.root.display())))?;
    if &saved == recipe {
        return Ok(());
    }
    let as_json = |r: &Recipe| {
        serde_json::to_value(r).map_err(|e| Error::Internal(format!("the recipe as JSON: {e}")))
    };
    let (ours, theirs) = (as_json(recipe)?, as_json(&saved)?);
    let mut differing = Vec::new();
    for (section, fields) in ours.as_object().into_iter().flatten() {
        for (key, value) in fields.as_object().into_iter().flatten() {
            let saved_value = &theirs[section][key];
            if saved_value != value {
                differing.push(format!(
                    "{section}.{key} = {value} here, {saved_value} there"
                ));
            }
        }
    }
    Err(Error::Config(format!(
        "{} holds a run of another recipe ({}): choose another --out, or remove that run",
        run.root.display(),
        differing.join("; ")
    )))
}

/// The average of a row's means over the tasks, once every cell has all its seeds.
fn average(row: usize, tasks: &[Task], summary: &Summary) -> Option<f64> {
    let cells: Vec<&Cell> = tasks.iter().map(|t| &summary[&(row, *t)]).collect();
    cells
        .iter()
        .all(|c| c.complete())
        .then(|| 100.0 * cells.iter().map(|c| c.mean()).sum::<f64>() / tasks.len() as f64)
}

/// The suite's chart, beside glue.md.
const GLUE_CHART: &str = "glue.svg";

/// One bar per (row, task): the mean dev score and, over several seeds, ± their standard
/// deviation; each task's majority-class score as the reference level.
fn glue_chart(
    rows: &[String],
    tasks: &[Task],
    summary: &Summary,
    baselines: &[Option<f64>],
    with_std: bool,
) -> BarChart {
    BarChart {
        title: match with_std {
            true => "GLUE dev scores (mean ± std over the seeds)".into(),
            false => "GLUE dev scores".into(),
        },
        y_label: "dev score × 100".into(),
        groups: tasks.iter().map(|t| t.name().to_string()).collect(),
        series: rows
            .iter()
            .enumerate()
            .map(|(i, row)| BarSeries {
                name: row.clone(),
                values: tasks
                    .iter()
                    .map(|t| {
                        // A diverged cell (NaN) has no bar.
                        let cell = &summary[&(i, *t)];
                        let mean = 100.0 * cell.mean();
                        mean.is_finite()
                            .then(|| (mean, with_std.then(|| 100.0 * cell.std())))
                    })
                    .collect(),
            })
            .collect(),
        // STS-B alone has no majority class: no line and no legend entry.
        reference: baselines.iter().any(Option::is_some).then(|| Reference {
            name: "majority class".into(),
            levels: baselines.iter().map(|b| b.map(|b| 100.0 * b)).collect(),
        }),
    }
}

/// Rows × task main scores (last epoch, in %; the mean ± standard deviation over the seeds when
/// there are several) and the average of the means.
fn markdown_table(rows: &[String], tasks: &[Task], summary: &Summary, with_std: bool) -> String {
    let mut md = String::from("| init |");
    for task in tasks {
        md.push_str(&format!(" {} |", task.name()));
    }
    md.push_str(" avg |\n|---|");
    md.push_str(&"---|".repeat(tasks.len() + 1));
    md.push('\n');
    for (i, row) in rows.iter().enumerate() {
        md.push_str(&format!("| {row} |"));
        for task in tasks {
            md.push_str(&format!(" {} |", summary[&(i, *task)].text(with_std)));
        }
        match average(i, tasks, summary) {
            Some(average) => md.push_str(&format!(" {average:.2} |\n")),
            None => md.push_str(" … |\n"),
        }
    }
    md
}

/// The table's last line: each task's majority-class score (STS-B: –), averaged where every
/// task has one.
fn baseline_row(baselines: &[Option<f64>]) -> String {
    let mut md = String::from("| majority class |");
    for score in baselines {
        match score {
            Some(s) => md.push_str(&format!(" {:.2} |", 100.0 * s)),
            None => md.push_str(" – |"),
        }
    }
    match baselines.iter().copied().collect::<Option<Vec<f64>>>() {
        Some(all) => md.push_str(&format!(
            " {:.2} |\n",
            100.0 * all.iter().sum::<f64>() / all.len().max(1) as f64
        )),
        None => md.push_str(" – |\n"),
    }
    md
}

/// A score in % with two decimals, `…` for a run not finished.
fn percent(score: Option<f64>) -> String {
    score.map_or("…".into(), |s| format!("{:.2}", 100.0 * s))
}

fn lr_name(lr: Option<f64>) -> String {
    lr.map_or("recipe".into(), |lr| format!("{lr:e}"))
}

/// Per (row, task): each lr's selection score, the selected lr, and every seed's score
/// at it.
fn grid_table(rows: &[String], tasks: &[Task], summary: &Summary) -> String {
    let Some(any) = summary.values().next() else {
        return String::new();
    };
    let mut md = String::from("| init | task |");
    for (lr, _) in &any.grid {
        md.push_str(&format!(" lr {} |", lr_name(*lr)));
    }
    md.push_str(" selected lr |");
    for (seed, _) in &any.seeds {
        md.push_str(&format!(
            " seed {} |",
            seed.map_or("recipe".into(), |s| s.to_string())
        ));
    }
    md.push_str(" mean ± std |\n|---|---|");
    md.push_str(&"---|".repeat(any.grid.len() + any.seeds.len() + 2));
    md.push('\n');
    for (i, row) in rows.iter().enumerate() {
        for task in tasks {
            let cell = &summary[&(i, *task)];
            md.push_str(&format!("| {row} | {} |", task.name()));
            for (_, score) in &cell.grid {
                md.push_str(&format!(" {} |", percent(*score)));
            }
            match cell.selected {
                Some(i) => md.push_str(&format!(" {} |", lr_name(cell.grid[i].0))),
                None => md.push_str(" … |"),
            }
            for (_, score) in &cell.seeds {
                md.push_str(&format!(" {} |", percent(*score)));
            }
            md.push_str(&format!(" {} |\n", cell.text(true)));
        }
    }
    md
}

/// Every run's dev main score (%) and training loss after each epoch, its best epoch and its
/// training time: what the final-epoch table hides (a run that peaked early, a loss that never
/// fell). In a grid, one line per (lr, seed). A run not finished shows the epochs it has saved
/// and its state in place of the last two.
fn per_epoch_table(
    rows: &[String],
    reports: &Reports,
    unfinished: &[Unfinished],
    grid: bool,
) -> String {
    let mut lines: Vec<(Job, &[EpochRecord], String, String)> = reports
        .iter()
        .map(|(job, r)| {
            let time = format!("{:.1} min", r.train_seconds / 60.0);
            (*job, &r.epochs[..], r.best_epoch.to_string(), time)
        })
        .chain(
            unfinished
                .iter()
                .map(|u| (u.job, &u.epochs[..], "–".to_string(), u.state.to_string())),
        )
        .collect();
    lines.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    let epochs = lines.iter().map(|l| l.1.len()).max().unwrap_or(0);
    let mut md = String::from("| init | task |");
    if grid {
        md.push_str(" lr | seed |");
    }
    for epoch in 1..=epochs {
        md.push_str(&format!(" epoch {epoch}: dev (loss) |"));
    }
    md.push_str(" best epoch | training time |\n|---|---|");
    md.push_str(&"---|".repeat(epochs + 2 + if grid { 2 } else { 0 }));
    md.push('\n');
    for (job, records, best, time) in lines {
        md.push_str(&format!("| {} | {} |", rows[job.row], job.task.name()));
        if grid {
            md.push_str(&format!(
                " {} | {} |",
                lr_name(job.lr),
                job.seed.map_or("recipe".into(), |s| s.to_string())
            ));
        }
        for epoch in 0..epochs {
            match records.get(epoch) {
                Some(e) => md.push_str(&format!(" {:.2} ({:.4}) |", 100.0 * e.main, e.train_loss)),
                None => md.push_str(" – |"),
            }
        }
        md.push_str(&format!(" {best} | {time} |\n"));
    }
    md
}
