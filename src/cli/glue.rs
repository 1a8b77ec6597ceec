//! `qpeft glue`: the GLUE comparison of the papers — one training run per (initialization,
//! task) from the task recipes, then a table with one row per initialization, one column per
//! task's main score and the average. Finished runs are reused and killed ones continued, so
//! the same command continues an interrupted suite; a run of another recipe is refused.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use qpeft::data::Task;
use qpeft::recipe::Recipe;
use qpeft::train::report::RunReport;
use qpeft::train::setup::{RunDir, RunLock};

use super::DeviceArg;
use super::train::{RunStart, run_recipe};

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
    /// The suite's folder: <out>/<row>/<task>/ per run, glue.md and glue.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// The recipe overrides of a `--compare` row.
pub fn row_overrides(row: &str) -> anyhow::Result<Vec<String>> {
    let mut parts = row.split('+');
    let base = parts.next().unwrap_or_default();
    let set = |pairs: &[(&str, &str)]| -> Vec<String> {
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect()
    };
    let mut overrides = match base {
        "lora" => set(&[("quant.method", "none"), ("adapter.init", "lora")]),
        "qera" => set(&[("adapter.init", "qera-exact")]),
        "qlora" | "loftq" | "qera-approx" | "qera-exact" | "lqer" | "zeroquant-v2" | "lqlora"
        | "srr" => set(&[("adapter.init", base)]),
        "srr-probe" | "srr-exact" | "srr-prerelease" => set(&[
            ("adapter.init", "srr"),
            ("adapter.k_rule", base.trim_start_matches("srr-")),
        ]),
        other => anyhow::bail!(
            "--compare: unknown initialization '{other}' (expected lora, qlora, loftq, qera, qera-approx, lqer, zeroquant-v2, lqlora, srr, srr-probe, srr-exact or srr-prerelease)"
        ),
    };
    for modifier in parts {
        overrides.push(match modifier {
            "grad" | "update" | "off" => format!("adapter.preserved_scaling={modifier}"),
            "rtn" | "gptq" | "gptaq" | "rescomp" | "coreq" | "kcoreq" | "qronos" => {
                format!("quant.method={modifier}")
            }
            other => anyhow::bail!(
                "--compare {row}: unknown modifier '{other}' (expected grad, update, off or a quantizer)"
            ),
        });
    }
    Ok(overrides)
}

pub fn run(args: GlueArgs) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("glue-{}", super::train::now_stamp()))
    });
    // Runs held by another process (a second `qpeft glue` on the same --out) are passed over
    // and waited for at the end, so that parallel suites share the work and each writes the
    // whole table.
    let mut scores: BTreeMap<(usize, Task), RunReport> = BTreeMap::new();
    let mut held_elsewhere = Vec::new();
    for (row_index, row) in args.compare.iter().enumerate() {
        let mut overrides = row_overrides(row)?;
        overrides.extend(args.overrides.iter().cloned());
        for &task in &args.tasks {
            let recipe_path = args.recipes.join(format!("{}.toml", task.name()));
            let recipe = Recipe::load(&recipe_path, &overrides)
                .with_context(|| format!("row {row}, task {task}"))?;
            let run = RunDir {
                root: out.join(row).join(task.name()),
            };
            match run.try_lock()? {
                Some(lock) => {
                    let report = finish_run(&args, row, task, &recipe, &run, &lock)?;
                    scores.insert((row_index, task), report);
                }
                None => {
                    eprintln!(
                        "== {row} / {task}: another process is running it, coming back to it"
                    );
                    held_elsewhere.push((row_index, task, recipe, run));
                }
            }
        }
    }
    for (row_index, task, recipe, run) in held_elsewhere {
        let row = &args.compare[row_index];
        eprintln!("== {row} / {task}: waiting for the other process");
        let lock = run.lock()?;
        let report = finish_run(&args, row, task, &recipe, &run, &lock)?;
        scores.insert((row_index, task), report);
    }
    let table = format!(
        "{}\n{}",
        markdown_table(&args.compare, &args.tasks, &scores),
        per_epoch_table(&args.compare, &args.tasks, &scores)
    );
    println!("{table}");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("glue.md"), &table)?;
    let json: Vec<serde_json::Value> = args
        .compare
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let tasks: BTreeMap<String, serde_json::Value> = args
                .tasks
                .iter()
                .filter_map(|t| scores.get(&(i, *t)).map(|r| (t.name().to_string(), serde_json::json!({
                    "main": r.final_main, "best": r.best_main, "epochs": r.epochs,
                    "samples_per_second": r.samples_per_second, "train_seconds": r.train_seconds,
                }))))
                .collect();
            serde_json::json!({"row": row, "tasks": tasks, "average": average(i, &args.tasks, &scores)})
        })
        .collect();
    std::fs::write(out.join("glue.json"), serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", out.join("glue.md").display());
    Ok(())
}

/// The report of the run of `recipe` in `run`, whose lock the caller holds: read if the run
/// finished, else the run trained (continued, or begun).
fn finish_run(
    args: &GlueArgs,
    row: &str,
    task: Task,
    recipe: &Recipe,
    run: &RunDir,
    lock: &RunLock,
) -> anyhow::Result<RunReport> {
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
    run_recipe(
        recipe,
        run,
        lock,
        start,
        args.data_dir.as_deref(),
        None,
        &args.device,
    )
    .with_context(|| format!("row {row}, task {task}"))
}

/// Refuses to reuse or continue a run made from another recipe than the suite's now (e.g. after
/// a changed `--set`), which would put another protocol's score in the table.
fn same_recipe(run: &RunDir, recipe: &Recipe) -> anyhow::Result<()> {
    let saved = run
        .recipe()
        .with_context(|| format!("reading the recipe of run {}", run.root.display()))?;
    if &saved == recipe {
        return Ok(());
    }
    let (ours, theirs) = (serde_json::to_value(recipe)?, serde_json::to_value(&saved)?);
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
    anyhow::bail!(
        "{} holds a run of another recipe ({}): choose another --out, or remove that run",
        run.root.display(),
        differing.join("; ")
    )
}

fn average(row: usize, tasks: &[Task], scores: &BTreeMap<(usize, Task), RunReport>) -> f64 {
    100.0
        * tasks
            .iter()
            .map(|t| scores[&(row, *t)].final_main)
            .sum::<f64>()
        / tasks.len() as f64
}

/// Rows × task main scores (last epoch, in %) and their mean.
fn markdown_table(
    rows: &[String],
    tasks: &[Task],
    scores: &BTreeMap<(usize, Task), RunReport>,
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
            md.push_str(&format!(" {:.2} |", 100.0 * scores[&(i, *task)].final_main));
        }
        md.push_str(&format!(" {:.2} |\n", average(i, tasks, scores)));
    }
    md
}

/// Every run's dev main score (%) and training loss after each epoch, its best epoch and its
/// training time: what the final-epoch table hides (a run that peaked early, a loss that never
/// fell).
fn per_epoch_table(
    rows: &[String],
    tasks: &[Task],
    scores: &BTreeMap<(usize, Task), RunReport>,
) -> String {
    let epochs = scores.values().map(|r| r.epochs.len()).max().unwrap_or(0);
    let mut md = String::from("| init | task |");
    for epoch in 1..=epochs {
        md.push_str(&format!(" epoch {epoch}: dev (loss) |"));
    }
    md.push_str(" best epoch | training time |\n|---|---|");
    md.push_str(&"---|".repeat(epochs + 2));
    md.push('\n');
    for (i, row) in rows.iter().enumerate() {
        for task in tasks {
            let report = &scores[&(i, *task)];
            md.push_str(&format!("| {row} | {} |", task.name()));
            for epoch in 0..epochs {
                match report.epochs.get(epoch) {
                    Some(e) => {
                        md.push_str(&format!(" {:.2} ({:.4}) |", 100.0 * e.main, e.train_loss))
                    }
                    None => md.push_str(" – |"),
                }
            }
            md.push_str(&format!(
                " {} | {:.1} min |\n",
                report.best_epoch,
                report.train_seconds / 60.0
            ));
        }
    }
    md
}
