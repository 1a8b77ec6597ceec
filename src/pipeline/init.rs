//! `qpeft init` as a library call: quantize every encoder linear layer and initialize its
//! low-rank adapters ([`InitSpec`] → [`build_init`]), writing the init checkpoint the trainer
//! starts from (docs/formats.md) with a report of reconstruction errors and SRR's k choices;
//! and the cache of init checkpoints that training runs share ([`cached_init`]), keyed by a
//! hash of the serialized spec, the calibration texts and the model's weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::calibrate::{CalibrationSpec, calibrate_model};
use crate::data::batch::default_cache_dir;
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::formats::adapters::{
    ADAPTER_FORMAT_VERSION, AdapterLayer, AdapterMetadata, write_init_checkpoint,
};
use crate::formats::packed::bits_per_weight;
use crate::model::{HubOptions, PretrainedModel, resolve_model};
use crate::plot::{ERRORS_CHART, line_chart_svg, per_module_chart, write_svg};
use crate::quant::grid::GridKind;
use crate::quant::spec::QuantizerSpec;
use crate::recipe::Recipe;
use crate::reconstruct::init::{InitConfig, InitName, Initializer, KRule};
use crate::reconstruct::lowrank::FactorSplit;
use crate::reconstruct::solver::{InitReport, InitSolver};

/// What `qpeft init` builds: the initializer with its settings, the adapters' rank and α, the
/// base quantizer of Q (or of SRR's residual) and the calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitSpec {
    pub init: InitName,
    pub rank: usize,
    /// The adapter is scaled by α/r (stored lora_B = L·r/α).
    pub lora_alpha: f64,
    /// SRR's split of the rank.
    pub k_rule: KRule,
    /// SRR: refit all r components on W − Q_k after quantizing the residual.
    pub joint_refit: bool,
    /// LoftQ's alternating iterations T.
    pub loftq_iters: usize,
    /// LQER: the maximum over batches of the batch-mean |x| (QERA's code).
    pub lqer_batch_max: bool,
    /// Absent: the method's own (`InitName::default_split`).
    pub factor_split: Option<FactorSplit>,
    pub quantizer: QuantizerSpec,
    pub calibration: CalibrationSpec,
}

impl InitSpec {
    /// The init checkpoint a recipe trains from; the factor split is spelled out even when it
    /// is the method's default, so that a cached init made under another default is not reused.
    pub fn from_recipe(recipe: &Recipe) -> Result<Self> {
        let (q, a) = (&recipe.quant, &recipe.adapter);
        Ok(InitSpec {
            init: a.init,
            rank: a.rank,
            lora_alpha: a.alpha,
            k_rule: a.k_rule.parse()?,
            joint_refit: a.joint_refit,
            loftq_iters: a.loftq_iters,
            lqer_batch_max: false,
            factor_split: a.factor_split.or(a.init.default_split()),
            quantizer: QuantizerSpec {
                grid: Some(q.grid),
                group: Some(q.group),
                ..QuantizerSpec::new(q.method, q.bits)
            },
            calibration: CalibrationSpec {
                source: recipe.calibration_source().to_string(),
                samples: q.calib_samples,
                max_length: q.calib_max_length,
                batch_size: DEFAULT_CALIBRATION_BATCH,
                seed: q.calib_seed,
            },
        })
    }

    /// The initializer; `lora` has none (full-precision LoRA starts from the model itself).
    pub fn initializer(&self) -> Result<Initializer> {
        Ok(match self.init {
            InitName::Lora => {
                return Err(Error::Config(
                    "--init lora needs no init checkpoint: full-precision LoRA starts from the model itself (a recipe's adapter.init = \"lora\")".into(),
                ));
            }
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
                rule: self.k_rule,
                joint_refit: self.joint_refit,
            },
        })
    }
}

/// Calibration texts per batch when a recipe builds its init.
pub const DEFAULT_CALIBRATION_BATCH: usize = 16;

/// What an init build wrote and measured.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    /// The initializer with its settings, e.g. `srr (k: probe)`.
    pub init: String,
    pub quantizer: String,
    pub grid: GridKind,
    pub modules: usize,
    pub mean_scaled_error: f64,
    pub mean_unscaled_error: f64,
    pub k_histogram: BTreeMap<usize, usize>,
    pub seconds: f64,
    pub checkpoint: PathBuf,
    pub report: PathBuf,
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

/// Builds the init checkpoint of `spec` for `model` (GLUE from `data_dir`) in the folder `out`.
pub fn build_init(
    model: &PretrainedModel,
    spec: &InitSpec,
    data_dir: &Path,
    out: &Path,
    device: DeviceSpec,
) -> Result<InitOutcome> {
    let init = spec.initializer()?;
    let quantizer = spec
        .quantizer
        .resolve(GridKind::MxInt, 32, spec.calibration.seed)?;
    if !(spec.lora_alpha.is_finite() && spec.lora_alpha > 0.0) {
        return Err(Error::Config(format!(
            "--lora-alpha must be positive, got {}",
            spec.lora_alpha
        )));
    }
    let config = InitConfig {
        init,
        rank: spec.rank,
        split: spec.factor_split,
        seed: spec.calibration.seed,
    };
    let bits = spec.quantizer.bits;
    let mut solver = InitSolver::new(config, quantizer.method, quantizer.config);
    let needs = solver.needs();
    let texts = spec.calibration.texts(data_dir)?;
    let calibrated = calibrate_model(
        model,
        &texts,
        &spec.calibration,
        &mut solver,
        needs,
        (&quantizer, bits),
        device,
    )?;
    let (quant_meta, seconds) = (calibrated.metadata, calibrated.seconds);
    let adapters = AdapterMetadata {
        format_version: ADAPTER_FORMAT_VERSION,
        init: init.to_string(),
        rank: spec.rank,
        lora_alpha: spec.lora_alpha,
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
    let checkpoint =
        write_init_checkpoint(out, model.source(), &solver.layers, &quant_meta, &adapters)?;
    let reports = &solver.reports;
    let scaled = mean(reports.iter().map(|r| r.scaled_error));
    let unscaled = mean(reports.iter().map(|r| r.unscaled_error));
    let bpw = bits_per_weight(solver.layers.iter().map(|(_, l)| &l.quantized), bits);
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
    let report_path = out.join("report.json");
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Internal(format!("report.json: {e}")))?;
    std::fs::write(&report_path, text).map_err(|e| Error::io(&report_path, e))?;
    let chart = per_module_chart(
        format!(
            "{} rank {} on {bits}-bit {}: error per module",
            spec.init, spec.rank, spec.quantizer.method
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
    write_svg(&out.join(ERRORS_CHART), &line_chart_svg(&chart)?)?;
    Ok(InitOutcome {
        init: init.to_string(),
        quantizer: quantizer.method.name().to_string(),
        grid: quantizer.kind,
        modules: reports.len(),
        mean_scaled_error: scaled,
        mean_unscaled_error: unscaled,
        k_histogram: histogram(reports.iter().map(|r| r.k)),
        seconds,
        checkpoint,
        report: report_path,
    })
}

/// The init checkpoint of `spec` for `model` in the cache under `cache_root`, built once.
/// Its key hashes everything that shapes it: the serialized spec, the calibration texts
/// themselves (an edited calibration file or another copy of GLUE builds anew) and the model's
/// weights. Concurrent builders of one key each write their own partial folder; the first to
/// finish places it, the others use it.
pub fn cached_init(
    model: &PretrainedModel,
    spec: &InitSpec,
    data_dir: &Path,
    cache_root: &Path,
    device: DeviceSpec,
) -> Result<PathBuf> {
    let serialized = serde_json::to_string(spec)
        .map_err(|e| Error::Internal(format!("serializing the init spec: {e}")))?;
    let mut key = Sha256::new().chain_update(serialized.as_bytes());
    for text in spec.calibration.texts(data_dir)? {
        key.update(text.first.as_bytes());
        key.update([0]);
        key.update(text.second.unwrap_or_default().as_bytes());
        key.update([1]);
    }
    key.update(model.weights.content_digest());
    let key: String = key.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = cache_root.join(format!(
        "{}-{}-{}b-r{}-{key}",
        spec.init, spec.quantizer.method, spec.quantizer.bits, spec.rank
    ));
    let complete = |dir: &Path| dir.join("model.safetensors").is_file();
    if complete(&dir) {
        eprintln!("init checkpoint: {} (cached)", dir.display());
        return Ok(dir);
    }
    let partial = dir.with_extension(format!("partial-{}", std::process::id()));
    eprintln!(
        "building the init checkpoint {}: {serialized}",
        dir.display()
    );
    let outcome = build_init(model, spec, data_dir, &partial, device)?;
    eprintln!("{}", outcome.summary_line(spec));
    if let Err(error) = std::fs::rename(&partial, &dir) {
        if !complete(&dir) {
            return Err(Error::io(&dir, error));
        }
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    Ok(dir)
}

/// The init checkpoint a recipe trains from: its `model.init_checkpoint`, or the one built for
/// it in qpeft's cache (`~/.cache/qpeft/inits`, or under `$QPEFT_CACHE`).
pub fn recipe_init(recipe: &Recipe, data_dir: &Path, device: DeviceSpec) -> Result<PathBuf> {
    if let Some(dir) = &recipe.model.init_checkpoint {
        return Ok(dir.clone());
    }
    let model = PretrainedModel::open(resolve_model(&recipe.model.name, &HubOptions::from_env())?)?;
    cached_init(
        &model,
        &InitSpec::from_recipe(recipe)?,
        data_dir,
        &default_cache_dir().with_file_name("inits"),
        device,
    )
}

impl InitOutcome {
    /// One line for people: the initializer, the quantizer, the errors, SRR's k choices.
    pub fn summary_line(&self, spec: &InitSpec) -> String {
        format!(
            "{} rank {} on {} {}-bit {}: {} modules, mean scaled error {:.4}, unscaled {:.4}, k {:?}, {:.1} s",
            self.init,
            spec.rank,
            self.quantizer,
            spec.quantizer.bits,
            self.grid,
            self.modules,
            self.mean_scaled_error,
            self.mean_unscaled_error,
            self.k_histogram,
            self.seconds
        )
    }
}
