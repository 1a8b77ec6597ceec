//! `qpeft init` as a library call: quantize every encoder linear layer and initialize its
//! low-rank adapters ([`InitSpec`] → [`build_init`]), writing the init checkpoint the trainer
//! starts from (docs/formats.md) with a report of reconstruction errors and SRR's k choices;
//! and the cache of init checkpoints that training runs share ([`cached_init`]), keyed by a
//! hash of the serialized spec, the calibration texts and the model's weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::calibrate::{CalibrationSpec, calibrate_model};
use crate::data::batch::default_cache_dir;
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::files::{self, write_json};
use crate::formats::adapters::{
    ADAPTER_FORMAT_VERSION, AdapterLayer, AdapterMetadata, write_init_checkpoint,
};
use crate::formats::packed::{FORMAT_VERSION, QuantMetadata};
use crate::model::{HubOptions, PretrainedModel, TextInput, resolve_model};
use crate::plot::{ERRORS_CHART, line_chart_svg, per_module_chart, write_svg};
use crate::quant::grid::GridKind;
use crate::quant::spec::QuantizerSpec;
use crate::recipe::Recipe;
use crate::reconstruct::init::{InitConfig, InitName, Initializer, KRule};
use crate::reconstruct::lowrank::FactorSplit;
use crate::reconstruct::solver::{InitSolver, ModuleInitReport};

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
    /// Absent: the default, `sqrt` (`InitName::default_split`).
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
            k_rule: a.k_rule,
            joint_refit: a.joint_refit,
            loftq_iters: a.loftq_iters,
            lqer_batch_max: false,
            factor_split: a.factor_split.or(a.init.default_split()),
            quantizer: QuantizerSpec {
                grid: Some(q.grid),
                group: Some(q.group),
                embeddings: q.embeddings,
                scale_dtype: q.scale_dtype,
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

/// `report.json` of an init checkpoint (docs/formats.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitReport {
    pub quantization: QuantMetadata,
    pub adapters: AdapterMetadata,
    pub summary: InitSummary,
    pub modules: Vec<ModuleInitReport>,
}

/// The initialization over all modules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitSummary {
    pub modules: usize,
    pub mean_scaled_error: f64,
    pub mean_unscaled_error: f64,
    pub mean_quantized_scaled_error: f64,
    /// How many modules kept each k.
    pub k_histogram: BTreeMap<usize, usize>,
    /// The same for the probe rule's k, when every module computed it.
    pub probe_k_histogram: Option<BTreeMap<usize, usize>>,
    pub k_comparison: Option<KComparison>,
    /// Calibration and initialization.
    pub seconds: f64,
    pub init_seconds: f64,
    pub scaling_seconds: f64,
    pub bits_per_weight: f64,
}

/// The mean over modules of each k's scaled error (exact rule), and of the error at the probe
/// rule's k: the comparison of qera-exact (k = 0), lqlora (k = r), srr-probe and srr-exact on
/// the same quantizer and statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KComparison {
    pub mean_scaled_error_by_k: Vec<f64>,
    pub mean_scaled_error_k0: f64,
    pub mean_scaled_error_kr: f64,
    pub mean_scaled_error_probe: f64,
    pub mean_scaled_error_exact: f64,
}

/// What an init build wrote and measured.
#[derive(Debug, Clone)]
pub struct InitOutcome {
    pub report: InitReport,
    pub checkpoint: PathBuf,
    /// `report.json`.
    pub json: PathBuf,
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

fn k_comparison(reports: &[ModuleInitReport]) -> Option<KComparison> {
    let by_k: Vec<&Vec<f64>> = reports.iter().map(|r| &r.scaled_error_by_k).collect();
    let ks = by_k.first()?.len();
    if ks == 0 || by_k.iter().any(|e| e.len() != ks) {
        return None;
    }
    let at_probe = reports
        .iter()
        .map(|r| r.probe_k.map(|k| r.scaled_error_by_k[k]))
        .collect::<Option<Vec<f64>>>()?;
    Some(KComparison {
        mean_scaled_error_by_k: (0..ks).map(|k| mean(by_k.iter().map(|e| e[k]))).collect(),
        mean_scaled_error_k0: mean(by_k.iter().map(|e| e[0])),
        mean_scaled_error_kr: mean(by_k.iter().map(|e| e[ks - 1])),
        mean_scaled_error_probe: mean(at_probe.into_iter()),
        mean_scaled_error_exact: mean(
            by_k.iter()
                .map(|e| e.iter().copied().fold(f64::INFINITY, f64::min)),
        ),
    })
}

/// Builds the init checkpoint of `spec` for `model` (GLUE from `data_dir`) in the folder `out`.
pub fn build_init(
    model: &PretrainedModel,
    spec: &InitSpec,
    data_dir: &Path,
    out: &Path,
    device: DeviceSpec,
) -> Result<InitOutcome> {
    build(model, spec, &spec.calibration.texts(data_dir)?, out, device)
}

/// [`build_init`] on the calibration `texts` of `spec`.
fn build(
    model: &PretrainedModel,
    spec: &InitSpec,
    texts: &[TextInput],
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
    let calibrated = calibrate_model(
        model,
        texts,
        &spec.calibration,
        &mut solver,
        needs,
        (&quantizer, bits),
        device,
    )?;
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
    let written = write_init_checkpoint(
        out,
        model.source(),
        &solver.layers,
        &calibrated.metadata,
        &adapters,
    )?;
    let reports = &solver.reports;
    let summary = InitSummary {
        modules: reports.len(),
        mean_scaled_error: mean(reports.iter().map(|r| r.scaled_error)),
        mean_unscaled_error: mean(reports.iter().map(|r| r.unscaled_error)),
        mean_quantized_scaled_error: mean(reports.iter().map(|r| r.quantized_scaled_error)),
        k_histogram: histogram(reports.iter().map(|r| r.k)),
        probe_k_histogram: reports
            .iter()
            .all(|r| r.probe_k.is_some())
            .then(|| histogram(reports.iter().filter_map(|r| r.probe_k))),
        k_comparison: k_comparison(reports),
        seconds: calibrated.seconds,
        init_seconds: reports.iter().map(|r| r.seconds).sum(),
        scaling_seconds: solver.scaling_seconds,
        bits_per_weight: written.bits_per_weight,
    };
    let report = InitReport {
        quantization: calibrated.metadata,
        adapters,
        summary,
        modules: solver.reports,
    };
    let json = out.join("report.json");
    write_json(&json, &report)?;
    let reports = &report.modules;
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
        report,
        checkpoint: written.path,
        json,
    })
}

/// The init checkpoint of `spec` for `model` in the cache under `cache_root`, built once.
/// Its key hashes everything that shapes it: the file formats' versions (a checkpoint cached by an
/// older build would otherwise report that format's bits per weight), the serialized spec, the
/// calibration texts themselves (an edited calibration file or another copy of GLUE builds anew)
/// and the model's weights. One process builds a key at a time (`<key>.lock`): two `qpeft glue`
/// processes that reach the same init wait for one build instead of each running it (a CoreQ
/// init takes minutes). The build fills `<key>.partial` and renames it, so the key's folder
/// appears only complete; a crashed build's partial folder is cleared by the next.
pub fn cached_init(
    model: &PretrainedModel,
    spec: &InitSpec,
    data_dir: &Path,
    cache_root: &Path,
    device: DeviceSpec,
) -> Result<PathBuf> {
    let serialized = serde_json::to_string(spec)
        .map_err(|e| Error::Internal(format!("serializing the init spec: {e}")))?;
    let mut key = Sha256::new()
        .chain_update(FORMAT_VERSION.to_le_bytes())
        .chain_update(ADAPTER_FORMAT_VERSION.to_le_bytes())
        .chain_update(serialized.as_bytes());
    let texts = spec.calibration.texts(data_dir)?;
    for text in &texts {
        key.update(text.first.as_bytes());
        key.update([0]);
        key.update(text.second.as_deref().unwrap_or_default().as_bytes());
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
    let complete = || dir.join("model.safetensors").is_file();
    if !complete() {
        std::fs::create_dir_all(cache_root).map_err(|e| Error::io(cache_root, e))?;
        let lock_path = dir.with_extension("lock");
        let _lock = match files::try_lock(&lock_path)? {
            Some(lock) => lock,
            None => {
                eprintln!(
                    "waiting for another process to build the init checkpoint {}",
                    dir.display()
                );
                files::lock(&lock_path)?
            }
        };
        if !complete() {
            let partial = dir.with_extension("partial");
            if partial.exists() {
                std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
            }
            eprintln!(
                "building the init checkpoint {}: {serialized}",
                dir.display()
            );
            let outcome = build(model, spec, &texts, &partial, device)?;
            eprintln!("{}", outcome.summary_line(spec));
            std::fs::rename(&partial, &dir).map_err(|e| Error::io(&dir, e))?;
            return Ok(dir);
        }
    }
    eprintln!("init checkpoint: {} (cached)", dir.display());
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
        let (quantization, summary) = (&self.report.quantization, &self.report.summary);
        format!(
            "{} rank {} on {} {}-bit {}: {} modules, mean scaled error {:.4}, unscaled {:.4}, k {:?}, {:.1} s",
            self.report.adapters.init,
            spec.rank,
            quantization.method,
            quantization.bits,
            quantization.grid,
            summary.modules,
            summary.mean_scaled_error,
            summary.mean_unscaled_error,
            summary.k_histogram,
            summary.seconds
        )
    }
}
