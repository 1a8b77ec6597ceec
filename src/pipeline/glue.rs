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

use super::run::{RunDir, RunLock, RunStart, run_recipe};
use crate::data::{Task, glue_dir};
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::eval::baseline::majority_class;
use crate::files::write_json;
use crate::plot::{BarChart, BarSeries, bar_chart_svg, write_svg};
use crate::quant::solve::QuantMethod;
use crate::recipe::Recipe;
use crate::reconstruct::init::{InitName, KRule};
use crate::train::checkpoint::EpochRecord;
use crate::train::optim::PreservedScaling;
use crate::train::report::RunReport;

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

fn report<'a>(reports: &'a Reports, job: &Job) -> &'a RunReport {
    &reports
        .iter()
        .find(|(j, _)| j == job)
        .expect("every job of the suite has run")
        .1
}

/// Trains (or reads) every job. Runs held by another process (a second `qpeft glue` on the same
/// --out) are passed over and waited for at the end, so that parallel suites share the work.
fn run_jobs(suite: &Suite<'_>, out: &Path, jobs: &[Job]) -> Result<Reports> {
    let mut reports = Vec::new();
    let mut held_elsewhere = Vec::new();
    for job in jobs {
        let row = &suite.spec.compare[job.row];
        let mut overrides = row_overrides(row)?;
        overrides.extend(suite.spec.overrides.iter().cloned());
        if let Some(lr) = job.lr {
            overrides.push(format!("train.learning_rate={lr:e}"));
        }
        if let Some(seed) = job.seed {
            overrides.push(format!("train.seed={seed}"));
        }
        let recipe_path = suite.spec.recipes.join(format!("{}.toml", job.task.name()));
        let recipe = Recipe::load(&recipe_path, &overrides)
            .map_err(|e| e.context(format!("row {row}, task {}", job.task)))?;
        let run = RunDir {
            root: job.dir(out, &suite.spec.compare, &recipe),
        };
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

/// A (row, task) cell of a grid suite: the lr selected and its seeds' scores.
struct Cell {
    /// Each lr's selection score: the mean final-epoch score of the selecting seeds (`None`:
    /// the recipe's lr).
    grid: Vec<(Option<f64>, f64)>,
    selected: Option<f64>,
    /// Final-epoch score per seed at the selected lr.
    seeds: Vec<(Option<u64>, f64)>,
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
                selected_lr: self.selected,
                grid: self
                    .grid
                    .iter()
                    .map(|&(lr, main)| LrScore { lr, main })
                    .collect(),
                seeds: self
                    .seeds
                    .iter()
                    .map(|&(seed, main)| SeedScore { seed, main })
                    .collect(),
            }),
        }
    }

    fn mean(&self) -> f64 {
        self.seeds.iter().map(|(_, s)| s).sum::<f64>() / self.seeds.len() as f64
    }

    /// The sample standard deviation over the seeds (0 with one seed).
    fn std(&self) -> f64 {
        let n = self.seeds.len();
        if n < 2 {
            return 0.0;
        }
        let mean = self.mean();
        (self
            .seeds
            .iter()
            .map(|(_, s)| (s - mean).powi(2))
            .sum::<f64>()
            / (n - 1) as f64)
            .sqrt()
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
    let grid = !spec.lrs.is_empty() || !spec.seeds.is_empty();
    let lrs: Vec<Option<f64>> = match spec.lrs.is_empty() {
        true => vec![None],
        false => spec.lrs.iter().copied().map(Some).collect(),
    };
    let seeds: Vec<Option<u64>> = match spec.seeds.is_empty() {
        true => vec![None],
        false => spec.seeds.iter().copied().map(Some).collect(),
    };
    let cells: Vec<(usize, Task)> = (0..spec.compare.len())
        .flat_map(|row| spec.tasks.iter().map(move |&task| (row, task)))
        .collect();
    // Every lr with the seeds that select (all, or the first), then the other seeds at each
    // cell's selected lr.
    let first_seed = seeds[0];
    let selecting = match spec.select {
        LrSelection::Mean => &seeds[..],
        LrSelection::FirstSeed => &seeds[..1],
    };
    let first: Vec<Job> = cells
        .iter()
        .flat_map(|&(row, task)| {
            lrs.iter().flat_map(move |&lr| {
                selecting.iter().map(move |&seed| Job {
                    row,
                    task,
                    lr,
                    seed,
                })
            })
        })
        .collect();
    let mut reports = run_jobs(&suite, out, &first)?;
    // Each lr's selection score: the mean final score over the selecting seeds.
    let lr_score = |reports: &Reports, row: usize, task: Task, lr: Option<f64>| {
        selecting
            .iter()
            .map(|&seed| {
                report(
                    reports,
                    &Job {
                        row,
                        task,
                        lr,
                        seed,
                    },
                )
                .final_main
            })
            .sum::<f64>()
            / selecting.len() as f64
    };
    let selected: Vec<Option<f64>> = cells
        .iter()
        .map(|&(row, task)| {
            // A NaN score (a diverged run) ranks lowest.
            let score = |lr: &Option<f64>| {
                let main = lr_score(&reports, row, task, *lr);
                if main.is_nan() {
                    f64::NEG_INFINITY
                } else {
                    main
                }
            };
            // `max_by` keeps the last of equal maxima: over the reversed list, the first lr.
            *lrs.iter()
                .rev()
                .max_by(|a, b| score(a).total_cmp(&score(b)))
                .expect("at least one lr")
        })
        .collect();
    let rest: Vec<Job> = cells
        .iter()
        .zip(&selected)
        .flat_map(|(&(row, task), &lr)| {
            seeds[selecting.len()..].iter().map(move |&seed| Job {
                row,
                task,
                lr,
                seed,
            })
        })
        .collect();
    reports.extend(run_jobs(&suite, out, &rest)?);
    let summary: BTreeMap<(usize, Task), Cell> = cells
        .iter()
        .zip(&selected)
        .map(|(&(row, task), &lr)| {
            let cell = Cell {
                grid: lrs
                    .iter()
                    .map(|&l| (l, lr_score(&reports, row, task, l)))
                    .collect(),
                selected: lr,
                seeds: seeds
                    .iter()
                    .map(|&seed| {
                        (
                            seed,
                            report(
                                &reports,
                                &Job {
                                    row,
                                    task,
                                    lr,
                                    seed,
                                },
                            )
                            .final_main,
                        )
                    })
                    .collect(),
            };
            ((row, task), cell)
        })
        .collect();
    let with_std = seeds.len() > 1;
    let baselines = spec
        .tasks
        .iter()
        .map(|&task| {
            let path = spec.recipes.join(format!("{}.toml", task.name()));
            let recipe = Recipe::load(&path, &spec.overrides)?;
            let dir = glue_dir(data_dir.or(recipe.data.dir.as_deref()));
            Ok(majority_class(task, &dir, recipe.train.mnli_main)?.map(|s| s.main))
        })
        .collect::<Result<Vec<Option<f64>>>>()?;
    let mut table = markdown_table(&spec.compare, &spec.tasks, &summary, with_std);
    table.push_str(&baseline_row(&baselines));
    table.push_str(&format!("\n![dev scores, rows × tasks]({GLUE_CHART})\n"));
    if grid {
        table.push('\n');
        table.push_str(&grid_table(&spec.compare, &spec.tasks, &summary));
    }
    table.push('\n');
    table.push_str(&per_epoch_table(&spec.compare, &reports, grid));
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_svg(
        &out.join(GLUE_CHART),
        &bar_chart_svg(&glue_chart(&spec.compare, &spec.tasks, &summary, with_std))?,
    )?;
    let markdown = out.join("glue.md");
    std::fs::write(&markdown, &table).map_err(|e| Error::io(&markdown, e))?;
    let rows: Vec<GlueRow> = spec
        .compare
        .iter()
        .enumerate()
        .map(|(i, row)| GlueRow {
            row: row.clone(),
            tasks: spec
                .tasks
                .iter()
                .map(|&task| {
                    let cell = &summary[&(i, task)];
                    let first = report(
                        &reports,
                        &Job {
                            row: i,
                            task,
                            lr: cell.selected,
                            seed: first_seed,
                        },
                    );
                    (task.name().to_string(), cell.entry(first, grid))
                })
                .collect(),
            average: average(i, &spec.tasks, &summary),
        })
        .collect();
    write_json(&out.join("glue.json"), &rows)?;
    Ok(GlueOutcome { table, markdown })
}

/// The report of the run of `recipe` in `run`, whose lock the caller holds: read if the run
/// finished, else the run trained (continued, or begun).
fn finish_run(
    suite: &Suite<'_>,
    row: &str,
    task: Task,
    recipe: &Recipe,
    run: &RunDir,
    lock: &RunLock,
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

fn average(row: usize, tasks: &[Task], summary: &BTreeMap<(usize, Task), Cell>) -> f64 {
    100.0
        * tasks
            .iter()
            .map(|t| summary[&(row, *t)].mean())
            .sum::<f64>()
        / tasks.len() as f64
}

/// The suite's chart, beside glue.md.
const GLUE_CHART: &str = "glue.svg";

/// One bar per (row, task): the mean dev score and, over several seeds, ± their standard
/// deviation.
fn glue_chart(
    rows: &[String],
    tasks: &[Task],
    summary: &BTreeMap<(usize, Task), Cell>,
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
    }
}

/// Rows × task main scores (last epoch, in %; the mean ± standard deviation over the seeds when
/// there are several) and the average of the means.
fn markdown_table(
    rows: &[String],
    tasks: &[Task],
    summary: &BTreeMap<(usize, Task), Cell>,
    with_std: bool,
) -> String {
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
            let cell = &summary[&(i, *task)];
            match with_std {
                true => md.push_str(&format!(
                    " {:.2} ± {:.2} |",
                    100.0 * cell.mean(),
                    100.0 * cell.std()
                )),
                false => md.push_str(&format!(" {:.2} |", 100.0 * cell.mean())),
            }
        }
        md.push_str(&format!(" {:.2} |\n", average(i, tasks, summary)));
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

fn lr_name(lr: Option<f64>) -> String {
    lr.map_or("recipe".into(), |lr| format!("{lr:e}"))
}

/// Per (row, task): each lr's selection score, the selected lr, and every seed's score
/// at it.
fn grid_table(rows: &[String], tasks: &[Task], summary: &BTreeMap<(usize, Task), Cell>) -> String {
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
                md.push_str(&format!(" {:.2} |", 100.0 * score));
            }
            md.push_str(&format!(" {} |", lr_name(cell.selected)));
            for (_, score) in &cell.seeds {
                md.push_str(&format!(" {:.2} |", 100.0 * score));
            }
            md.push_str(&format!(
                " {:.2} ± {:.2} |\n",
                100.0 * cell.mean(),
                100.0 * cell.std()
            ));
        }
    }
    md
}

/// Every run's dev main score (%) and training loss after each epoch, its best epoch and its
/// training time: what the final-epoch table hides (a run that peaked early, a loss that never
/// fell). In a grid, one line per (lr, seed).
fn per_epoch_table(rows: &[String], reports: &Reports, grid: bool) -> String {
    let mut sorted: Vec<&(Job, RunReport)> = reports.iter().collect();
    sorted.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    let epochs = reports
        .iter()
        .map(|(_, r)| r.epochs.len())
        .max()
        .unwrap_or(0);
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
    for (job, report) in sorted {
        md.push_str(&format!("| {} | {} |", rows[job.row], job.task.name()));
        if grid {
            md.push_str(&format!(
                " {} | {} |",
                lr_name(job.lr),
                job.seed.map_or("recipe".into(), |s| s.to_string())
            ));
        }
        for epoch in 0..epochs {
            match report.epochs.get(epoch) {
                Some(e) => md.push_str(&format!(" {:.2} ({:.4}) |", 100.0 * e.main, e.train_loss)),
                None => md.push_str(" – |"),
            }
        }
        md.push_str(&format!(
            " {} | {:.1} min |\n",
            report.best_epoch,
            report.train_seconds / 60.0
        ));
    }
    md
}
