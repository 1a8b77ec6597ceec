//! `qpeft quantize`: post-training quantization of every encoder linear layer with
//! two-stream calibration, writing a quantized model directory and a report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::ValueEnum;
use qpeft::calibration::calibrate;
use qpeft::data::batch::{TokenizedSplit, default_cache_dir};
use qpeft::data::{Split, Task, load};
use qpeft::device::BackendTask;
use qpeft::eval::dev::evaluate_dev;
use qpeft::eval::metrics::{MnliMain, TaskScore};
use qpeft::formats::packed::{QuantMetadata, format_version, write_quantized_model};
use qpeft::model::{
    HubOptions, ModelFiles, PretrainedModel, TextInput, encoder_input, resolve_model,
};
use qpeft::pipeline::run::head_for;
use qpeft::plot::{ERRORS_CHART, line_chart_svg, per_module_chart, write_svg};
use qpeft::quant::coreq::AlphaMode;
use qpeft::quant::gptq::{GptaqFlush, GptqConfig};
use qpeft::quant::grid::{Bits, GridKind, GridSpec, MseSearch, Rounding};
use qpeft::quant::layer::{Grouping, QuantizedLayer};
use qpeft::quant::qronos::QronosLambda;
use qpeft::quant::solve::ModuleSolver;
use qpeft::quant::solve::{CoreqAlpha, Method, MethodSolver, ModuleReport, QuantMethod};
use qpeft::quant::stats::StatsNeeded;
use qpeft::seed::{substream_rng, substream_seed};
use rand::seq::SliceRandom;
use serde_json::json;

use super::data::DataDirArg;
use super::{DeviceArg, ModelArg};

/// CoreQ's α rule (§7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlphaModeArg {
    /// --alpha for every module.
    Fixed,
    /// The reference's schedule: 0 in layer 0, --alpha in layer 1 (default 0.25 per row,
    /// 0.5 with groups), then each module's α* from one layer earlier.
    Scheduled,
    /// SNRQ-S: per-sequence α_s = min(β, 1 − β), β ~ Beta(5, 5), seeded by --seed.
    Sampled,
    /// Round with --alpha (default 0.25), re-round with that rounding's closed-form α*.
    Closed,
    /// Like closed, but keep the second rounding only if it lowers the objective
    /// (recommended).
    Alternate,
}

/// ResComp's flush (§6 Choice).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RescompModeArg {
    /// Snapshot flush without clamp: blocked equals unblocked (recommended).
    Snapshot,
    /// The reference's `allw`: snapshot clamped to the grid range (its 3-bit setting).
    Allw,
    /// The reference's `org`: the block's quantized values (its 2-bit setting).
    Org,
}

/// The base quantizer's settings, shared by `quantize` and `init`.
#[derive(clap::Args, Debug)]
pub struct QuantizerArgs {
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// Grid (default: the method's reference grid: asym for rtn/gptq/qronos, quarot for
    /// gptaq/rescomp, sym for coreq/kcoreq; `init` defaults to mxint).
    #[arg(long)]
    pub grid: Option<GridKind>,
    /// Group size along the input dimension; 0 for one grid per row (`init` defaults to 32).
    #[arg(long)]
    pub group: Option<usize>,
    /// Fit all group grids up front on the original weights (always so for MXINT blocks).
    #[arg(long)]
    pub static_groups: bool,
    /// Process columns in their original order instead of by decreasing H_jj.
    #[arg(long)]
    pub no_act_order: bool,
    /// MSE clipping search for the grids (|e|^2.4).
    #[arg(long)]
    pub mse: bool,
    /// Unbiased stochastic rounding, seeded by --seed (stochastic OPTQ with gptq, §9).
    #[arg(long)]
    pub stochastic: bool,
    /// α: GPTAQ's mismatch weight (default 0.25); CoreQ's fixed, initial or layer-1 α (see
    /// --alpha-mode); K-CoreQ's α (default 0.25).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// CoreQ's α rule (§7.3; default alternate).
    #[arg(long)]
    pub alpha_mode: Option<AlphaModeArg>,
    /// K-CoreQ's beam width K (default 4).
    #[arg(long)]
    pub beams: Option<usize>,
    /// CoreQ's coordinate-descent passes after rounding (§7.5; default 0).
    #[arg(long)]
    pub cd_passes: Option<usize>,
    /// ResComp's α₂, the weight of the compensation-aware error (default 0.25).
    #[arg(long)]
    pub alpha2: Option<f64>,
    /// ResComp's flush (default snapshot).
    #[arg(long)]
    pub rescomp_mode: Option<RescompModeArg>,
    /// Qronos' ridge λ (default: 1e-6·σ_max(H), the reference).
    #[arg(long, conflicts_with = "qronos_damp")]
    pub qronos_lambda: Option<f64>,
    /// Qronos' ridge λ as this fraction of mean(diag H), like GPTQ's damping (e.g. 0.01).
    #[arg(long)]
    pub qronos_damp: Option<f64>,
}

impl QuantizerArgs {
    /// CoreQ's α from --alpha-mode and --alpha; `default_group` decides the scheduled mode's
    /// layer-1 α when --group is not given.
    fn coreq_alpha(&self, default_group: usize, seed: u64) -> anyhow::Result<CoreqAlpha> {
        let initial = self.alpha.unwrap_or(0.25);
        Ok(match self.alpha_mode.unwrap_or(AlphaModeArg::Alternate) {
            AlphaModeArg::Fixed => CoreqAlpha::PerModule(AlphaMode::Fixed(
                self.alpha
                    .ok_or_else(|| anyhow::anyhow!("--alpha-mode fixed needs --alpha"))?,
            )),
            AlphaModeArg::Closed => CoreqAlpha::PerModule(AlphaMode::Closed { initial }),
            AlphaModeArg::Alternate => CoreqAlpha::PerModule(AlphaMode::Alternate { initial }),
            AlphaModeArg::Sampled => {
                if self.alpha.is_some() {
                    anyhow::bail!("--alpha has no meaning with --alpha-mode sampled");
                }
                CoreqAlpha::Sampled {
                    seed: substream_seed(seed, "coreq-sampled-alpha"),
                }
            }
            AlphaModeArg::Scheduled => CoreqAlpha::Scheduled {
                second_layer: self
                    .alpha
                    .unwrap_or(if self.group.unwrap_or(default_group) == 0 {
                        0.25
                    } else {
                        0.5
                    }),
            },
        })
    }
}

impl QuantizerArgs {
    /// A method-specific flag given with another method would be silently ignored: refuse it.
    fn reject_flags_of_other_methods(&self, method: QuantMethod) -> anyhow::Result<()> {
        use QuantMethod::*;
        let flags: [(&str, bool, &[QuantMethod]); 8] = [
            (
                "--alpha",
                self.alpha.is_some(),
                &[Gptaq, Rescomp, Coreq, Kcoreq],
            ),
            ("--alpha-mode", self.alpha_mode.is_some(), &[Coreq]),
            ("--cd-passes", self.cd_passes.is_some(), &[Coreq]),
            ("--beams", self.beams.is_some(), &[Kcoreq]),
            ("--alpha2", self.alpha2.is_some(), &[Rescomp]),
            ("--rescomp-mode", self.rescomp_mode.is_some(), &[Rescomp]),
            ("--qronos-lambda", self.qronos_lambda.is_some(), &[Qronos]),
            ("--qronos-damp", self.qronos_damp.is_some(), &[Qronos]),
        ];
        for (flag, given, methods) in flags {
            if given && !methods.contains(&method) {
                let names: Vec<String> = methods.iter().map(QuantMethod::to_string).collect();
                anyhow::bail!(
                    "{flag} applies to {} only, not to {}",
                    names.join(", "),
                    method
                );
            }
        }
        Ok(())
    }
}

/// A fully resolved base quantizer.
pub struct Quantizer {
    pub method: Method,
    pub config: GptqConfig,
    pub kind: GridKind,
    pub group: usize,
}

impl QuantizerArgs {
    /// The method and its configuration; `default_grid` and `default_group` fill what the
    /// command line left out.
    pub fn resolve(
        &self,
        method: QuantMethod,
        default_grid: GridKind,
        default_group: usize,
        seed: u64,
    ) -> anyhow::Result<Quantizer> {
        self.reject_flags_of_other_methods(method)?;
        let bits = Bits::new(self.bits)?;
        let kind = self.grid.unwrap_or(default_grid);
        let method = match method {
            QuantMethod::None => anyhow::bail!(
                "`none` is no quantizer: it keeps the weights in full precision (a recipe's quant.method = \"none\" with adapter.init = \"lora\")"
            ),
            QuantMethod::Rtn => Method::Rtn,
            QuantMethod::Gptq => Method::Gptq,
            QuantMethod::Gptaq => Method::Gptaq {
                alpha: self.alpha.unwrap_or(0.25),
                flush: GptaqFlush::Snapshot,
            },
            QuantMethod::Rescomp => Method::Rescomp {
                alpha: self.alpha.unwrap_or(0.25),
                alpha2: self.alpha2.unwrap_or(0.25),
                flush: match self.rescomp_mode.unwrap_or(RescompModeArg::Snapshot) {
                    RescompModeArg::Snapshot => GptaqFlush::Snapshot,
                    RescompModeArg::Allw => GptaqFlush::ClampedSnapshot,
                    RescompModeArg::Org => GptaqFlush::Quantized,
                },
            },
            QuantMethod::Qronos => Method::Qronos {
                lambda: match (self.qronos_lambda, self.qronos_damp) {
                    (Some(lambda), _) => QronosLambda::Absolute(lambda),
                    (None, Some(fraction)) => QronosLambda::MeanDiagonal(fraction),
                    (None, None) => QronosLambda::Reference,
                },
            },
            QuantMethod::Coreq => Method::Coreq {
                alpha: self.coreq_alpha(default_group, seed)?,
                cd_passes: self.cd_passes.unwrap_or(0),
            },
            QuantMethod::Kcoreq => Method::Kcoreq {
                alpha: self.alpha.unwrap_or(0.25),
                beams: self.beams.unwrap_or(4),
            },
        };
        let grid = GridSpec {
            mse: self.mse.then(MseSearch::default),
            ..GridSpec::new(bits, kind)
        };
        let group = self.group.unwrap_or(default_group);
        let config = GptqConfig {
            // An MXINT or NF block is consecutive input features by definition, so it is static.
            grouping: match (
                group,
                self.static_groups || matches!(kind, GridKind::MxInt | GridKind::NormalFloat),
            ) {
                (0, _) => Grouping::PerRow,
                (g, false) => Grouping::Dynamic(g),
                (g, true) => Grouping::Static(g),
            },
            act_order: !self.no_act_order,
            rounding: if self.stochastic {
                Rounding::Stochastic {
                    seed: substream_seed(seed, "stochastic-rounding"),
                }
            } else {
                Rounding::Nearest
            },
            ..GptqConfig::new(grid)
        };
        Ok(Quantizer {
            method,
            config,
            kind,
            group,
        })
    }
}

/// The calibration set, shared by `quantize` and `init`.
#[derive(clap::Args, Debug)]
pub struct CalibArgs {
    /// Calibration text: a GLUE task's training sentences, or a file with one text per line
    /// (default: rte; `export --requantize`: the run's own task).
    #[arg(long)]
    pub calib: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub calib_samples: usize,
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataDirArg,
}

/// `--calib` when the command has no task of its own to calibrate on.
const DEFAULT_CALIBRATION: &str = "rte";

impl CalibArgs {
    /// `--calib`, or its default.
    pub fn source(&self) -> &str {
        self.calib.as_deref().unwrap_or(DEFAULT_CALIBRATION)
    }

    /// How the header describes the calibration.
    pub fn describe(&self, texts: usize) -> String {
        format!(
            "{} ({texts} texts, max length {}, seed {})",
            self.source(),
            self.max_length,
            self.seed
        )
    }
}

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    #[arg(long)]
    pub method: QuantMethod,
    #[command(flatten)]
    pub quantizer: QuantizerArgs,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Output directory for the quantized model, report.json and report.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Score a fine-tuned classifier (e.g. a `qpeft export` folder) on this task's dev split
    /// before and after quantization.
    #[arg(long, value_name = "TASK")]
    pub eval: Option<Task>,
    /// Truncation length of the --eval dev examples.
    #[arg(long, default_value_t = 128)]
    pub eval_max_length: usize,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// `--calib` as texts: a file's lines or a GLUE task's training pairs, shuffled by the seed
/// and truncated to `--calib-samples`.
pub fn calibration_texts(args: &CalibArgs) -> anyhow::Result<Vec<TextInput>> {
    let source = args.source();
    let path = Path::new(source);
    let mut texts: Vec<TextInput> = if path.is_file() {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading calibration file {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(TextInput::single)
            .collect()
    } else {
        let task: Task = source
            .parse()
            .with_context(|| format!("--calib {source:?} is neither a file nor a GLUE task"))?;
        let split = if task == Task::Ax {
            Split::Test
        } else {
            Split::Train
        };
        load(&args.data.dir(), task, split)?
            .examples
            .into_iter()
            .map(|e| TextInput {
                first: e.text_a,
                second: e.text_b,
            })
            .collect()
    };
    if texts.is_empty() {
        anyhow::bail!("no calibration text in {source}");
    }
    texts.shuffle(&mut substream_rng(args.seed, "calibration"));
    texts.truncate(args.calib_samples);
    Ok(texts)
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let default_grid = args.method.reference_grid().unwrap_or(GridKind::Asymmetric);
    let Quantizer {
        method,
        config,
        kind,
        group,
    } = args
        .quantizer
        .resolve(args.method, default_grid, 0, args.calib.seed)?;
    let dev_score = |model: ModelFiles, task: Task| {
        args.device.device.run(DevScore {
            model,
            task,
            max_length: args.eval_max_length,
            data_dir: args.calib.data.dir(),
        })?
    };
    // Before calibration, so that a model without a trained head fails at once.
    let before = args
        .eval
        .map(|task| dev_score(args.model.resolve()?, task))
        .transpose()?;
    let mut solver = MethodSolver::new(method, config);
    let needs = solver.needs();
    let calibrated = calibrate_model(
        &args.model,
        &args.device,
        &args.calib,
        &mut solver,
        needs,
        (&method, kind, args.quantizer.bits, group),
    )?;
    let (pretrained, meta, seconds) = (calibrated.model, calibrated.metadata, calibrated.seconds);
    let path = write_quantized_model(
        &args.out,
        pretrained.source(),
        solver.layers.iter().map(|(n, l)| (n.as_str(), l)),
        &meta,
        &[],
        &[],
    )?;
    let bpw = bits_per_weight(solver.layers.iter().map(|(_, l)| l), args.quantizer.bits);
    let mean = |error: fn(&ModuleReport) -> f64| {
        solver.reports.iter().map(error).sum::<f64>() / solver.reports.len() as f64
    };
    let mean_error = mean(|r| r.relative_output_error);
    let mean_error_to_full_precision =
        mean(|r| r.relative_error_to_full_precision.unwrap_or(f64::NAN));
    let after = args
        .eval
        .map(|task| {
            let quantized = resolve_model(&args.out.to_string_lossy(), &HubOptions::from_env())?;
            dev_score(quantized, task)
        })
        .transpose()?;
    let eval = before.zip(after);
    let report = json!({
        "metadata": meta,
        "eval": eval.as_ref().map(|(before, after)| json!({
            "task": before.task.name(),
            "max_length": args.eval_max_length,
            "before": {"main": before.main, "metrics": before.metrics},
            "after": {"main": after.main, "metrics": after.metrics},
        })),
        "summary": {
            "modules": solver.reports.len(),
            "mean_relative_output_error": mean_error,
            "mean_relative_error_to_full_precision": mean_error_to_full_precision,
            "seconds": seconds,
            "solver_seconds": solver.reports.iter().map(|r| r.seconds).sum::<f64>(),
            "bits_per_weight": bpw,
        },
        "modules": solver.reports.iter().map(|r| json!({
            "name": r.name,
            "relative_output_error": r.relative_output_error,
            "relative_error_to_full_precision": r.relative_error_to_full_precision,
            "symmetric_objective": r.symmetric_objective,
            "asymmetric_objective": r.asymmetric_objective,
            "alpha": r.alpha,
            "alpha_star": r.alpha_star,
            "seconds": r.seconds,
        })).collect::<Vec<_>>(),
    });
    let report_path = args.out.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    println!(
        "{} {}-bit {kind}: {} modules, mean relative output error {mean_error:.4} (to full precision {mean_error_to_full_precision:.4}), {bpw:.3} bits/weight, {seconds:.1} s",
        method.name(),
        args.quantizer.bits,
        solver.reports.len()
    );
    if let Some((before, after)) = &eval {
        println!(
            "{} dev: {:.4} before, {:.4} after quantization",
            before.task, before.main, after.main
        );
    }
    let mut series = vec![(
        "relative output error",
        solver
            .reports
            .iter()
            .map(|r| r.relative_output_error)
            .collect(),
    )];
    if solver
        .reports
        .iter()
        .all(|r| r.relative_error_to_full_precision.is_some())
    {
        series.push((
            "error to full precision",
            solver
                .reports
                .iter()
                .filter_map(|r| r.relative_error_to_full_precision)
                .collect(),
        ));
    }
    let chart = per_module_chart(
        format!(
            "{} {}-bit: error per module",
            args.method, args.quantizer.bits
        ),
        "relative output error",
        series,
    );
    write_svg(&args.out.join(ERRORS_CHART), &line_chart_svg(&chart)?)?;
    let markdown_path = args.out.join("report.md");
    std::fs::write(
        &markdown_path,
        markdown_report(
            &meta,
            &solver.reports,
            (mean_error, mean_error_to_full_precision, bpw, seconds),
            eval.as_ref(),
        ),
    )
    .with_context(|| format!("writing {}", markdown_path.display()))?;
    println!(
        "wrote {}, {} and {}",
        path.display(),
        report_path.display(),
        markdown_path.display()
    );
    Ok(())
}

/// report.md: the header, the summary, the dev scores, one row per module.
fn markdown_report(
    meta: &QuantMetadata,
    reports: &[ModuleReport],
    (mean_error, mean_error_to_full_precision, bits_per_weight, seconds): (f64, f64, f64, f64),
    eval: Option<&(TaskScore, TaskScore)>,
) -> String {
    let mut md = format!(
        "# qpeft quantize: {} {}-bit, {} grid, group {}\n\n\
         Calibration: {}. qpeft {}.\n\n\
         | modules | mean relative output error | to full precision | bits/weight | time |\n\
         |---|---|---|---|---|\n\
         | {} | {mean_error:.4} | {mean_error_to_full_precision:.4} | {bits_per_weight:.3} | \
         {seconds:.1} s |\n",
        meta.method,
        meta.bits,
        meta.grid,
        meta.group,
        meta.calibration,
        meta.qpeft_version,
        reports.len(),
    );
    if let Some((before, after)) = eval {
        md += &format!(
            "\n## {} dev\n\n| | main |{}\n|---|---|{}\n",
            before.task,
            before
                .metrics
                .keys()
                .map(|k| format!(" {k} |"))
                .collect::<String>(),
            "---|".repeat(before.metrics.len()),
        );
        for (label, score) in [
            ("before quantization", before),
            ("after quantization", after),
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
    let optional = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
    for r in reports {
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

/// A fine-tuned classifier's dev score for `--eval`.
struct DevScore {
    model: ModelFiles,
    task: Task,
    max_length: usize,
    data_dir: PathBuf,
}

impl BackendTask for DevScore {
    type Output = anyhow::Result<TaskScore>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let location = self.model.weights.display().to_string();
        let pretrained = PretrainedModel::open(self.model)?;
        let (classifier, fresh) = pretrained
            .classifier::<B>(head_for(self.task), &device)
            .with_context(|| format!("--eval {}: loading the classifier", self.task))?;
        if !fresh.is_empty() {
            anyhow::bail!(
                "--eval needs a fine-tuned classifier, but {location} has no trained {} \
                 (a `qpeft export` folder has one)",
                fresh.join(", ")
            );
        }
        let tokenizer = pretrained.tokenizer(self.max_length)?;
        let cache = default_cache_dir();
        let splits =
            TokenizedSplit::dev_splits(&self.data_dir, self.task, &tokenizer, Some(&cache))?;
        Ok(evaluate_dev(
            &classifier,
            self.task,
            &splits,
            64,
            MnliMain::default(),
            &device,
        )?)
    }
}

/// Bits per weight of packed layers, counting the stored metadata: f32 scale and zero per
/// group and row, an i32 group index per column.
pub fn bits_per_weight<'a>(layers: impl Iterator<Item = &'a QuantizedLayer>, bits: u8) -> f64 {
    let (mut stored, mut weights) = (0usize, 0usize);
    for layer in layers {
        let row_bytes = (layer.cols * usize::from(bits)).div_ceil(8);
        let codebook = layer.codebook().map_or(0, <[f64]>::len);
        stored += layer.rows * row_bytes * 8
            + 64 * layer.rows * layer.groups
            + 32 * layer.cols
            + 32 * codebook;
        weights += layer.rows * layer.cols;
    }
    stored as f64 / weights.max(1) as f64
}

/// A model after calibration, with the quantization header that describes it.
pub struct Calibrated {
    pub model: PretrainedModel,
    pub metadata: QuantMetadata,
    pub seconds: f64,
}

/// Loads `--model`, runs two-stream calibration with `solver` on `--device`, and describes
/// the base quantizer `(method, grid, bits, group)` for the header.
pub fn calibrate_model<S: ModuleSolver>(
    model: &ModelArg,
    device: &DeviceArg,
    calib: &CalibArgs,
    solver: &mut S,
    needs: StatsNeeded,
    (method, kind, bits, group): (&Method, GridKind, u8, usize),
) -> anyhow::Result<Calibrated> {
    let pretrained = PretrainedModel::open(model.resolve()?)
        .with_context(|| format!("loading model '{}'", model.model))?;
    let texts = calibration_texts(calib)?;
    let started = Instant::now();
    device.device.run(Calibrate {
        pretrained: &pretrained,
        texts: &texts,
        calib,
        needs,
        solver,
    })??;
    let seconds = started.elapsed().as_secs_f64();
    let metadata = QuantMetadata {
        format_version: format_version(kind),
        method: method.name().to_string(),
        bits,
        grid: kind.to_string(),
        group,
        calibration: calib.describe(texts.len()),
        qpeft_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    Ok(Calibrated {
        model: pretrained,
        metadata,
        seconds,
    })
}

/// Tokenizes the calibration texts and runs two-stream calibration with `solver` on the
/// chosen backend.
struct Calibrate<'a, S: ModuleSolver> {
    pretrained: &'a PretrainedModel,
    texts: &'a [TextInput],
    calib: &'a CalibArgs,
    needs: StatsNeeded,
    solver: &'a mut S,
}

impl<S: ModuleSolver> BackendTask for Calibrate<'_, S> {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let tokenizer = self.pretrained.tokenizer(self.calib.max_length)?;
        let batches = self
            .texts
            .chunks(self.calib.batch_size.max(1))
            .map(|chunk| Ok(encoder_input::<B>(&tokenizer.encode_batch(chunk)?, &device)))
            .collect::<qpeft::Result<Vec<_>>>()?;
        let mut encoder = self.pretrained.encoder::<B>(&device)?;
        calibrate(&mut encoder, &batches, self.needs, self.solver)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use qpeft::quant::solve::{CoreqAlpha, Method};

    use super::{GridKind, QuantMethod, QuantizerArgs};

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        quant: QuantizerArgs,
    }

    fn resolve(method: QuantMethod, flags: &[&str]) -> Result<Method, String> {
        let argv = std::iter::once("qpeft").chain(flags.iter().copied());
        let args = Command::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .quant;
        args.resolve(method, GridKind::Asymmetric, 128, 0)
            .map(|q| q.method)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_of_other_methods_are_refused_by_name() {
        let err = resolve(QuantMethod::Gptq, &["--alpha-mode", "closed"]).unwrap_err();
        assert_eq!(err, "--alpha-mode applies to coreq only, not to gptq");
        let err = resolve(QuantMethod::Rtn, &["--alpha", "0.3"]).unwrap_err();
        assert_eq!(
            err,
            "--alpha applies to gptaq, rescomp, coreq, kcoreq only, not to rtn"
        );
        let err = resolve(QuantMethod::Coreq, &["--beams", "8"]).unwrap_err();
        assert_eq!(err, "--beams applies to kcoreq only, not to coreq");
        let err = resolve(QuantMethod::Gptaq, &["--qronos-damp", "0.01"]).unwrap_err();
        assert_eq!(err, "--qronos-damp applies to qronos only, not to gptaq");
        let err = resolve(
            QuantMethod::Coreq,
            &["--alpha-mode", "sampled", "--alpha", "0.3"],
        )
        .unwrap_err();
        assert!(err.contains("no meaning"), "{err}");
    }

    #[test]
    fn method_flags_reach_their_method() {
        assert!(matches!(
            resolve(QuantMethod::Kcoreq, &["--beams", "8"]),
            Ok(Method::Kcoreq { beams: 8, alpha }) if alpha == 0.25
        ));
        assert!(matches!(
            resolve(QuantMethod::Coreq, &["--alpha-mode", "scheduled", "--cd-passes", "2"]),
            Ok(Method::Coreq { alpha: CoreqAlpha::Scheduled { second_layer }, cd_passes: 2 })
                if second_layer == 0.5
        ));
        assert!(matches!(
            resolve(QuantMethod::Rescomp, &["--alpha2", "0.5"]),
            Ok(Method::Rescomp { alpha, alpha2, .. }) if alpha == 0.25 && alpha2 == 0.5
        ));
    }
}
