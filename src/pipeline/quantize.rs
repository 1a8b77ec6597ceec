//! `qpeft quantize` as a library call: post-training quantization of every encoder linear
//! layer with two-stream calibration ([`QuantizeSpec`] → [`quantize`]), writing the quantized
//! model folder (docs/formats.md) with `report.json`, `report.md` and `errors.svg`, and
//! optionally scoring a fine-tuned classifier on a task's dev split before and after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::kernels::Backend;
use serde::{Deserialize, Serialize};

use super::calibrate::{CalibrationSpec, calibrate_model};
use super::run::head_for;
use crate::data::Task;
use crate::data::batch::{TokenizedSplit, default_cache_dir};
use crate::device::{BackendTask, DeviceSpec};
use crate::error::{Error, Result};
use crate::eval::dev::evaluate_dev;
use crate::eval::metrics::{MnliMain, TaskScore};
use crate::files::write_json;
use crate::formats::packed::{QuantMetadata, write_quantized_model};
use crate::model::{HubOptions, ModelFiles, PretrainedModel, resolve_model};
use crate::plot::{ERRORS_CHART, line_chart_svg, per_module_chart, write_svg};
use crate::quant::grid::GridKind;
use crate::quant::solve::{MethodSolver, ModuleReport};
use crate::quant::spec::QuantizerSpec;

/// What `qpeft quantize` does: the quantizer, its calibration, and optionally the task whose
/// dev split a fine-tuned classifier is scored on before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeSpec {
    pub quantizer: QuantizerSpec,
    pub calibration: CalibrationSpec,
    pub eval: Option<Task>,
    /// Truncation length of the dev examples of `eval`.
    pub eval_max_length: usize,
}

/// `report.json` of a quantized model folder (docs/formats.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizeReport {
    pub metadata: QuantMetadata,
    pub eval: Option<DevComparison>,
    pub summary: QuantizeSummary,
    pub modules: Vec<ModuleReport>,
}

/// The quantization over all modules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizeSummary {
    pub modules: usize,
    pub mean_relative_output_error: f64,
    /// Absent unless every module measured it.
    pub mean_relative_error_to_full_precision: Option<f64>,
    /// Calibration and solving.
    pub seconds: f64,
    pub solver_seconds: f64,
    pub bits_per_weight: f64,
}

/// A fine-tuned classifier's dev score before and after quantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevComparison {
    pub task: Task,
    pub max_length: usize,
    pub before: Score,
    pub after: Score,
}

/// A dev score: the task's main score and every metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub main: f64,
    pub metrics: BTreeMap<String, f64>,
}

impl From<&TaskScore> for Score {
    fn from(score: &TaskScore) -> Self {
        Score {
            main: score.main,
            metrics: score
                .metrics
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

/// What a quantization wrote and measured.
#[derive(Debug, Clone)]
pub struct QuantizeOutcome {
    pub report: QuantizeReport,
    pub model: PathBuf,
    /// `report.json` and `report.md`.
    pub json: PathBuf,
    pub markdown: PathBuf,
}

/// Quantizes `model` as `spec` says (GLUE from `data_dir`) into the folder `out`.
pub fn quantize(
    model: ModelFiles,
    spec: &QuantizeSpec,
    data_dir: &Path,
    out: &Path,
    device: DeviceSpec,
) -> Result<QuantizeOutcome> {
    let default_grid = spec
        .quantizer
        .method
        .reference_grid()
        .unwrap_or(GridKind::Asymmetric);
    let quantizer = spec
        .quantizer
        .resolve(default_grid, 0, spec.calibration.seed)?;
    let bits = spec.quantizer.bits;
    let dev_score = |model: ModelFiles, task: Task| {
        device.run(DevScore {
            model,
            task,
            max_length: spec.eval_max_length,
            data_dir: data_dir.to_path_buf(),
        })?
    };
    // Before calibration, so that a model without a trained head fails at once.
    let before = spec
        .eval
        .map(|task| dev_score(model.clone(), task))
        .transpose()?;
    let pretrained = PretrainedModel::open(model)?;
    let texts = spec.calibration.texts(data_dir)?;
    let mut solver = MethodSolver::new(quantizer.method, quantizer.config);
    let needs = solver.needs();
    let calibrated = calibrate_model(
        &pretrained,
        &texts,
        &spec.calibration,
        &mut solver,
        needs,
        (&quantizer, bits),
        device,
    )?;
    let written = write_quantized_model(
        out,
        pretrained.source(),
        solver.layers.iter().map(|(n, l)| (n.as_str(), l)),
        &calibrated.metadata,
        &[],
        &[],
    )?;
    let mean = |error: fn(&ModuleReport) -> f64| {
        solver.reports.iter().map(error).sum::<f64>() / solver.reports.len() as f64
    };
    let after = spec
        .eval
        .map(|task| {
            let quantized = resolve_model(&out.to_string_lossy(), &HubOptions::from_env())?;
            dev_score(quantized, task)
        })
        .transpose()?;
    let report = QuantizeReport {
        metadata: calibrated.metadata,
        eval: before.zip(after).map(|(before, after)| DevComparison {
            task: before.task,
            max_length: spec.eval_max_length,
            before: (&before).into(),
            after: (&after).into(),
        }),
        summary: QuantizeSummary {
            modules: solver.reports.len(),
            mean_relative_output_error: mean(|r| r.relative_output_error),
            mean_relative_error_to_full_precision: solver
                .reports
                .iter()
                .map(|r| r.relative_error_to_full_precision)
                .sum::<Option<f64>>()
                .map(|sum| sum / solver.reports.len() as f64),
            seconds: calibrated.seconds,
            solver_seconds: solver.reports.iter().map(|r| r.seconds).sum(),
            bits_per_weight: written.bits_per_weight,
        },
        modules: solver.reports,
    };
    let json = out.join("report.json");
    write_json(&json, &report)?;
    let reports = &report.modules;
    let mut series = vec![(
        "relative output error",
        reports.iter().map(|r| r.relative_output_error).collect(),
    )];
    if reports
        .iter()
        .all(|r| r.relative_error_to_full_precision.is_some())
    {
        series.push((
            "error to full precision",
            reports
                .iter()
                .filter_map(|r| r.relative_error_to_full_precision)
                .collect(),
        ));
    }
    let chart = per_module_chart(
        format!("{} {bits}-bit: error per module", spec.quantizer.method),
        "relative output error",
        series,
    );
    write_svg(&out.join(ERRORS_CHART), &line_chart_svg(&chart)?)?;
    let markdown = out.join("report.md");
    std::fs::write(&markdown, markdown_report(&report)).map_err(|e| Error::io(&markdown, e))?;
    Ok(QuantizeOutcome {
        report,
        model: written.path,
        json,
        markdown,
    })
}

/// report.md: the header, the summary, the dev scores, one row per module.
fn markdown_report(report: &QuantizeReport) -> String {
    let optional = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
    let (meta, summary) = (&report.metadata, &report.summary);
    let mut md = format!(
        "# qpeft quantize: {} {}-bit, {} grid, group {}\n\n\
         Calibration: {}. qpeft {}.\n\n\
         | modules | mean relative output error | to full precision | bits/weight | time |\n\
         |---|---|---|---|---|\n\
         | {} | {:.4} | {} | {:.3} | {:.1} s |\n",
        meta.method,
        meta.bits,
        meta.grid,
        meta.group,
        meta.calibration,
        meta.qpeft_version,
        summary.modules,
        summary.mean_relative_output_error,
        optional(summary.mean_relative_error_to_full_precision),
        summary.bits_per_weight,
        summary.seconds,
    );
    if let Some(eval) = &report.eval {
        md += &format!(
            "\n## {} dev\n\n| | main |{}\n|---|---|{}\n",
            eval.task,
            eval.before
                .metrics
                .keys()
                .map(|k| format!(" {k} |"))
                .collect::<String>(),
            "---|".repeat(eval.before.metrics.len()),
        );
        for (label, score) in [
            ("before quantization", &eval.before),
            ("after quantization", &eval.after),
        ] {
            md += &format!(
                "| {label} | {:.4} |{}\n",
                score.main,
                score
                    .metrics
                    .values()
                    .map(|v| format!(" {v:.4} |"))
                    .collect::<String>()
            );
        }
    }
    md += &format!("\n## Modules\n\n![relative output error per module]({ERRORS_CHART})\n\n");
    md += "Relative output error ‖(Ŵ − W)X_q‖/‖WX_q‖ on the calibration tokens, and to full \
           precision ‖ŴX_q − WX_f‖/‖WX_f‖; objectives tr((Ŵ − W)H(Ŵ − W)ᵀ) and \
           ‖ŴX_q − WX_f‖²/N up to a constant.\n\n\
           | module | relative error | to full precision | symmetric objective | \
           asymmetric objective | α | α* | time |\n\
           |---|---|---|---|---|---|---|---|\n";
    for r in &report.modules {
        md += &format!(
            "| {} | {:.4} | {} | {:.4e} | {} | {} | {} | {:.2} s |\n",
            r.name,
            r.relative_output_error,
            optional(r.relative_error_to_full_precision),
            r.symmetric_objective,
            r.asymmetric_objective
                .map_or("–".to_string(), |v| format!("{v:.4e}")),
            optional(r.alpha),
            optional(r.alpha_star),
            r.seconds
        );
    }
    md
}

/// A fine-tuned classifier's dev score, for `eval`.
struct DevScore {
    model: ModelFiles,
    task: Task,
    max_length: usize,
    data_dir: PathBuf,
}

impl BackendTask for DevScore {
    type Output = Result<TaskScore>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let location = self.model.weights.display().to_string();
        let pretrained = PretrainedModel::open(self.model)?;
        let (classifier, fresh) = pretrained
            .classifier::<B>(head_for(self.task), &device)
            .map_err(|e| e.context(format!("--eval {}: loading the classifier", self.task)))?;
        if !fresh.is_empty() {
            return Err(Error::Config(format!(
                "scoring {} needs a fine-tuned classifier, but {location} has no trained {} \
                 (a `qpeft export` folder has one)",
                self.task,
                fresh.join(", ")
            )));
        }
        let tokenizer = pretrained.tokenizer(self.max_length)?;
        let cache = default_cache_dir();
        let splits =
            TokenizedSplit::dev_splits(&self.data_dir, self.task, &tokenizer, Some(&cache))?;
        evaluate_dev(
            &classifier,
            self.task,
            &splits,
            64,
            MnliMain::default(),
            &device,
        )
    }
}
