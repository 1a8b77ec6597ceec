//! The report of a finished run, `report.json` and `report.md` in the run directory:
//! per-epoch metrics, the reported (last-epoch) and best metric, time, throughput, peak
//! memory and what was quantized how.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::EpochRecord;
use crate::data::Task;
use crate::error::{Error, Result};
use crate::files::replace_file;
use crate::plot::{LineChart, Series, line_chart_svg, write_svg};

/// How the base weights were quantized and the adapters initialized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantSummary {
    /// `none` for full-precision LoRA.
    pub method: String,
    pub bits: Option<u8>,
    pub grid: Option<String>,
    pub group: Option<usize>,
    /// Stored bits per quantized weight, grids included.
    pub bits_per_weight: Option<f64>,
    pub init: String,
    pub rank: usize,
    /// SRR's preserved k* per adapted layer (0 for other methods).
    pub preserved: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub task: Task,
    pub device: String,
    pub epochs: Vec<EpochRecord>,
    /// The metric the GLUE table reports: the last epoch's main score (§13 Choice).
    pub final_main: f64,
    pub best_epoch: usize,
    pub best_main: f64,
    pub wall_seconds: f64,
    pub train_seconds: f64,
    pub samples_per_second: f64,
    pub peak_rss_bytes: Option<u64>,
    pub trainable_parameters: usize,
    pub quantization: QuantSummary,
    /// The resolved recipe.
    pub recipe: serde_json::Value,
}

impl RunReport {
    /// The best epoch and its score (the first one on ties); NaN scores never win.
    pub fn best(epochs: &[EpochRecord]) -> (usize, f64) {
        epochs
            .iter()
            .filter(|e| !e.main.is_nan())
            .fold((0, f64::NEG_INFINITY), |best, e| {
                if e.main > best.1 {
                    (e.epoch, e.main)
                } else {
                    best
                }
            })
    }

    /// The report `write` left in `run`, if the run finished.
    pub fn read(run: &Path) -> Result<Option<Self>> {
        let path = run.join("report.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Json { path, source })
    }

    /// Writes the charts (`training.svg`: loss and learning rate per logged step from
    /// `metrics.jsonl`; `dev.svg`: the dev metrics per epoch), `report.md` and `report.json` into
    /// `run`, each complete or not at all, `report.json` last (a run with a report is finished:
    /// `qpeft glue` reuses it); returns the markdown path.
    pub fn write(&self, run: &Path) -> Result<PathBuf> {
        let json =
            serde_json::to_string_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        let steps = logged_steps(run)?;
        write_svg(
            &run.join(TRAINING_CHART),
            &line_chart_svg(&self.training_chart(&steps))?,
        )?;
        write_svg(&run.join(DEV_CHART), &line_chart_svg(&self.dev_chart())?)?;
        let md_path = run.join("report.md");
        replace_file(&md_path, self.markdown().as_bytes())?;
        replace_file(&run.join("report.json"), json.as_bytes())?;
        Ok(md_path)
    }

    /// Loss (left axis) and learning rate (right axis) per logged optimizer step.
    pub fn training_chart(&self, steps: &BTreeMap<usize, LoggedStep>) -> LineChart {
        let series = |name: &str, value: fn(&LoggedStep) -> f64| Series {
            name: name.to_string(),
            points: steps.iter().map(|(&s, l)| (s as f64, value(l))).collect(),
        };
        LineChart {
            title: format!("{}: training loss and learning rate", self.task),
            x_label: "optimizer step".into(),
            y_label: "training loss".into(),
            series: vec![series("loss", |l| l.loss)],
            secondary: Some((
                "learning rate".into(),
                vec![series("learning rate", |l| l.learning_rate)],
            )),
        }
    }

    /// The main dev score and each dev metric per epoch.
    pub fn dev_chart(&self) -> LineChart {
        let mut names: Vec<&String> = self.epochs.iter().flat_map(|e| e.metrics.keys()).collect();
        names.sort();
        names.dedup();
        let mut series = vec![Series {
            name: "main".into(),
            points: self
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, e.main))
                .collect(),
        }];
        series.extend(names.into_iter().map(|name| {
            Series {
                name: name.clone(),
                points: self
                    .epochs
                    .iter()
                    .filter_map(|e| Some((e.epoch as f64, *e.metrics.get(name)?)))
                    .collect(),
            }
        }));
        LineChart {
            title: format!("{}: dev metrics per epoch", self.task),
            x_label: "epoch".into(),
            y_label: "dev score".into(),
            series,
            secondary: None,
        }
    }

    pub fn markdown(&self) -> String {
        let q = &self.quantization;
        let mut md = format!(
            "# {} — {} on {}\n\n",
            self.task,
            q.init,
            match q.bits {
                Some(b) => format!("{b}-bit {}", q.method),
                None => "a full-precision base".to_string(),
            }
        );
        md.push_str(
            "| epoch | train loss | dev main | metrics | lr at end |\n|---|---|---|---|---|\n",
        );
        for e in &self.epochs {
            let metrics: Vec<String> = e
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            md.push_str(&format!(
                "| {} | {:.4} | {:.4} | {} | {:.2e} |\n",
                e.epoch,
                e.train_loss,
                e.main,
                metrics.join(", "),
                e.learning_rate
            ));
        }
        md.push_str(&format!(
            "\n![dev metrics per epoch]({DEV_CHART})\n\n![training loss and learning rate]({TRAINING_CHART})\n"
        ));
        md.push_str(&format!(
            "\n- reported (last epoch): **{:.4}**; best: {:.4} at epoch {}\n",
            self.final_main, self.best_main, self.best_epoch
        ));
        md.push_str(&format!(
            "- wall time {:.1} s, training {:.1} s, {:.1} samples/s, peak RSS {}\n",
            self.wall_seconds,
            self.train_seconds,
            self.samples_per_second,
            self.peak_rss_bytes.map_or("unknown".into(), |b| format!(
                "{:.0} MiB",
                b as f64 / 1048576.0
            ))
        ));
        md.push_str(&format!(
            "- device {}, {} trainable parameters\n",
            self.device, self.trainable_parameters
        ));
        md.push_str(&format!(
            "- quantization: {} {}, grid {}, group {}, {} bits/weight; adapters {} rank {}\n",
            q.method,
            q.bits.map_or("-".into(), |b| format!("{b}-bit")),
            q.grid.as_deref().unwrap_or("-"),
            q.group.map_or("-".into(), |g| g.to_string()),
            q.bits_per_weight.map_or("-".into(), |b| format!("{b:.3}")),
            q.init,
            q.rank
        ));
        if q.preserved.values().any(|&k| k > 0) {
            md.push_str("\n| layer | k* |\n|---|---|\n");
            for (name, k) in &q.preserved {
                md.push_str(&format!("| {name} | {k} |\n"));
            }
        }
        md
    }
}

/// A run's charts, beside `report.md`.
pub const TRAINING_CHART: &str = "training.svg";
pub const DEV_CHART: &str = "dev.svg";

/// What the metrics log says of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoggedStep {
    pub loss: f64,
    pub learning_rate: f64,
}

/// The logged steps of `run/metrics.jsonl` (none if there is no log). A step logged by several
/// attempts of a resumed run keeps its last value; a line a kill cut short is skipped.
pub fn logged_steps(run: &Path) -> Result<BTreeMap<usize, LoggedStep>> {
    let path = run.join("metrics.jsonl");
    if !path.is_file() {
        return Ok(BTreeMap::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut steps = BTreeMap::new();
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if value["type"] != "step" {
            continue;
        }
        let (Some(step), Some(loss), Some(learning_rate)) = (
            value["step"].as_u64(),
            value["loss"].as_f64(),
            value["learning_rate"].as_f64(),
        ) else {
            continue;
        };
        steps.insert(
            step as usize,
            LoggedStep {
                loss,
                learning_rate,
            },
        );
    }
    Ok(steps)
}

/// The process's peak resident memory (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
