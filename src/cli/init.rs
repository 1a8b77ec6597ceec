//! `qpeft init`: quantize every encoder linear layer and initialize its low-rank adapters
//! (QLoRA, LoftQ, the QER family, LQ-LoRA, SRR), writing the init checkpoint the trainer
//! starts from and a report of reconstruction errors and SRR's k choices.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use qpeft::formats::adapters::{
    ADAPTER_FORMAT_VERSION, AdapterLayer, AdapterMetadata, write_init_checkpoint,
};
use qpeft::plot::{ERRORS_CHART, line_chart_svg, per_module_chart, write_svg};
use qpeft::quant::grid::GridKind;
use qpeft::quant::solve::QuantMethod;
use qpeft::reconstruct::init::{InitConfig, InitName, Initializer, KRule};
use qpeft::reconstruct::lowrank::FactorSplit;
use qpeft::reconstruct::solver::{InitReport, InitSolver};
use serde_json::json;

use super::quantize::{CalibArgs, Quantizer, QuantizerArgs, bits_per_weight, calibrate_model};
use super::{DeviceArg, ModelArg};

/// `--k-rule`: probe, prerelease, exact or a fixed k.
#[derive(Debug, Clone, Copy)]
pub struct KRuleArg(pub KRule);

impl FromStr for KRuleArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(KRuleArg(match s {
            "probe" => KRule::Probe,
            "prerelease" => KRule::Prerelease,
            "exact" => KRule::Exact,
            other => KRule::Fixed(other.parse().map_err(|_| {
                format!("expected probe, prerelease, exact or a number, got {other:?}")
            })?),
        }))
    }
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[arg(long)]
    pub init: InitName,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA α: the adapter is scaled by α/r (stored lora_B = L·r/α).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// SRR's split of the rank: probe (the paper), prerelease, exact (try every k), or k.
    #[arg(long, default_value = "probe")]
    pub k_rule: KRuleArg,
    /// SRR: refit all r components on W − Q_k after quantizing the residual.
    #[arg(long)]
    pub joint_refit: bool,
    /// LoftQ's alternating iterations T.
    #[arg(long, default_value_t = 5)]
    pub loftq_iters: usize,
    /// LQER: the maximum over batches of the batch-mean |x| (QERA's code) instead of the mean.
    #[arg(long)]
    pub lqer_batch_max: bool,
    /// How singular values are shared between L and R (default: the method's own).
    #[arg(long)]
    pub factor_split: Option<FactorSplit>,
    /// The base quantizer of Q (or of SRR's residual).
    #[arg(long, default_value = "rtn")]
    pub quantizer: QuantMethod,
    #[command(flatten)]
    pub quant: QuantizerArgs,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Output directory for the init checkpoint and report.json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
}

impl InitArgs {
    fn initializer(&self) -> anyhow::Result<Initializer> {
        Ok(match self.init {
            InitName::Lora => anyhow::bail!(
                "--init lora needs no init checkpoint: full-precision LoRA starts from the model itself (a recipe's adapter.init = \"lora\")"
            ),
            InitName::Qlora => Initializer::Qlora,
            InitName::Loftq => Initializer::Loftq {
                iters: self.loftq_iters,
            },
            InitName::ZeroquantV2 => Initializer::ZeroquantV2,
            InitName::Lqer => Initializer::Lqer {
                batch_max: self.lqer_batch_max,
            },
            InitName::QeraApprox => Initializer::QeraApprox,
            InitName::QeraExact => Initializer::QeraExact,
            InitName::Lqlora => Initializer::Lqlora,
            InitName::Srr => Initializer::Srr {
                rule: self.k_rule.0,
                joint_refit: self.joint_refit,
            },
        })
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    sum / count.max(1) as f64
}

fn histogram(values: impl Iterator<Item = usize>) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_insert(0) += 1;
    }
    counts
}

/// The mean over modules of each k's scaled error (exact rule), and of the error at the probe
/// rule's k: the comparison of qera-exact (k = 0), lqlora (k = r), srr-probe and srr-exact
/// on the same quantizer and statistics.
fn k_comparison(reports: &[InitReport]) -> Option<serde_json::Value> {
    let by_k: Vec<&Vec<f64>> = reports.iter().map(|r| &r.scaled_error_by_k).collect();
    let ks = by_k.first()?.len();
    if ks == 0 || by_k.iter().any(|e| e.len() != ks) {
        return None;
    }
    let at_probe = reports
        .iter()
        .map(|r| r.probe_k.map(|k| r.scaled_error_by_k[k]))
        .collect::<Option<Vec<f64>>>()?;
    Some(json!({
        "mean_scaled_error_by_k": (0..ks).map(|k| mean(by_k.iter().map(|e| e[k]))).collect::<Vec<_>>(),
        "mean_scaled_error_k0": mean(by_k.iter().map(|e| e[0])),
        "mean_scaled_error_kr": mean(by_k.iter().map(|e| e[ks - 1])),
        "mean_scaled_error_probe": mean(at_probe.into_iter()),
        "mean_scaled_error_exact": mean(by_k.iter().map(|e| e.iter().copied().fold(f64::INFINITY, f64::min))),
    }))
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let init = args.initializer()?;
    let Quantizer {
        method,
        config: quant,
        kind,
        group,
    } = args
        .quant
        .resolve(args.quantizer, GridKind::MxInt, 32, args.calib.seed)?;
    let config = InitConfig {
        init,
        rank: args.rank,
        split: args.factor_split,
        seed: args.calib.seed,
    };
    if !(args.lora_alpha.is_finite() && args.lora_alpha > 0.0) {
        anyhow::bail!("--lora-alpha must be positive, got {}", args.lora_alpha);
    }
    let mut solver = InitSolver::new(config, method, quant);
    let needs = solver.needs();
    let calibrated = calibrate_model(
        &args.model,
        &args.device,
        &args.calib,
        &mut solver,
        needs,
        (&method, kind, args.quant.bits, group),
    )?;
    let (pretrained, quant_meta, seconds) =
        (calibrated.model, calibrated.metadata, calibrated.seconds);
    let adapters = AdapterMetadata {
        format_version: ADAPTER_FORMAT_VERSION,
        init: init.to_string(),
        rank: args.rank,
        lora_alpha: args.lora_alpha,
        factor_split: config.split.unwrap_or(init.default_split()),
        layers: solver
            .layers
            .iter()
            .map(|(name, layer)| {
                let preserved = if init.has_preserved_block() {
                    layer.k
                } else {
                    0
                };
                (
                    name.clone(),
                    AdapterLayer {
                        preserved,
                        singular_values: layer.singular_values.clone(),
                    },
                )
            })
            .collect(),
    };
    let path = write_init_checkpoint(
        &args.out,
        pretrained.source(),
        &solver.layers,
        &quant_meta,
        &adapters,
    )?;
    let reports = &solver.reports;
    let scaled = mean(reports.iter().map(|r| r.scaled_error));
    let unscaled = mean(reports.iter().map(|r| r.unscaled_error));
    let bpw = bits_per_weight(
        solver.layers.iter().map(|(_, l)| &l.quantized),
        args.quant.bits,
    );
    let report = json!({
        "quantization": quant_meta,
        "adapters": adapters,
        "summary": {
            "modules": reports.len(),
            "mean_scaled_error": scaled,
            "mean_unscaled_error": unscaled,
            "mean_quantized_scaled_error": mean(reports.iter().map(|r| r.quantized_scaled_error)),
            "k_histogram": histogram(reports.iter().map(|r| r.k)),
            "probe_k_histogram": reports.iter().all(|r| r.probe_k.is_some())
                .then(|| histogram(reports.iter().filter_map(|r| r.probe_k))),
            "k_comparison": k_comparison(reports),
            "seconds": seconds,
            "init_seconds": reports.iter().map(|r| r.seconds).sum::<f64>(),
            "scaling_seconds": solver.scaling_seconds,
            "bits_per_weight": bpw,
        },
        "modules": reports,
    });
    let report_path = args.out.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    let chart = per_module_chart(
        format!(
            "{} rank {} on {}-bit {}: error per module",
            args.init, args.rank, args.quant.bits, args.quantizer
        ),
        "scaled relative error ‖(W − Ŵ)S‖/‖WS‖",
        vec![
            ("Q + L·R", reports.iter().map(|r| r.scaled_error).collect()),
            (
                "Q alone",
                reports.iter().map(|r| r.quantized_scaled_error).collect(),
            ),
        ],
    );
    write_svg(&args.out.join(ERRORS_CHART), &line_chart_svg(&chart)?)?;
    println!(
        "{init} rank {} on {} {}-bit {kind}: {} modules, mean scaled error {scaled:.4}, unscaled {unscaled:.4}, k {:?}, {seconds:.1} s",
        args.rank,
        method.name(),
        args.quant.bits,
        reports.len(),
        histogram(reports.iter().map(|r| r.k)),
    );
    println!("wrote {} and {}", path.display(), report_path.display());
    Ok(())
}
