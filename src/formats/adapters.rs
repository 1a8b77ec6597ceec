//! The adapter format: the init checkpoint `qpeft init` writes and the trainer reads, the
//! quantized model directory of [`super::packed`] plus, for every target linear `<name>`, PEFT's
//! adapter pair `<name>.lora_A` = R (F32 `[r, in]`) and `<name>.lora_B` = L/s (F32
//! `[out, r]`) with s = α/r, so that s·lora_B·lora_A = L·R at step 0. The header entry
//! `qpeft_adapters` records the initializer, rank, α, split and each layer's preserved block
//! k and component singular values (§12.2). The task head is not stored: the trainer creates
//! it fresh (normal std 0.02, §12.1).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::packed::{ExtraTensor, ModelSource, QuantMetadata, WrittenModel, write_quantized_model};
use super::safetensors::parse_header_entry;
use crate::error::{Error, Result};
use crate::reconstruct::init::LayerInit;
use crate::reconstruct::lowrank::FactorSplit;

/// The header key of the adapter metadata.
pub const ADAPTER_METADATA_KEY: &str = "qpeft_adapters";
/// The only adapter format version this build reads and writes.
pub const ADAPTER_FORMAT_VERSION: u32 = 1;

/// What one adapted layer carries besides its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterLayer {
    /// The first `preserved` components are SRR's preserved block (0 for other methods).
    pub preserved: usize,
    /// The singular value behind each component (empty for QLoRA's random R).
    pub singular_values: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterMetadata {
    pub format_version: u32,
    /// The initializer and its settings, e.g. `srr (k: exact)` (files before 0.2: the Rust
    /// `Debug` form, `Srr { rule: Exact, joint_refit: false }`).
    pub init: String,
    pub rank: usize,
    pub lora_alpha: f64,
    pub factor_split: FactorSplit,
    /// Keyed by HF name relative to the base model.
    pub layers: BTreeMap<String, AdapterLayer>,
}

impl AdapterMetadata {
    /// s = α/r, the factor between lora_B·lora_A and L·R.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.rank as f64
    }

    pub fn parse(json: &str, path: &Path) -> Result<Self> {
        let meta: AdapterMetadata = parse_header_entry(json, ADAPTER_METADATA_KEY, path)?;
        if meta.format_version != ADAPTER_FORMAT_VERSION {
            return Err(Error::InvalidWeights {
                path: path.to_path_buf(),
                message: format!(
                    "adapter format version {} is not supported (this qpeft reads version {ADAPTER_FORMAT_VERSION})",
                    meta.format_version
                ),
            });
        }
        if meta.rank == 0 || !(meta.lora_alpha.is_finite() && meta.lora_alpha > 0.0) {
            return Err(Error::InvalidWeights {
                path: path.to_path_buf(),
                message: format!(
                    "adapter rank {} and alpha {} must be positive",
                    meta.rank, meta.lora_alpha
                ),
            });
        }
        Ok(meta)
    }
}

/// W += s·B·A for row-major W `[out, in]`, PEFT's B = lora_B `[out, r]` and A = lora_A
/// `[r, in]`; each entry of B·A is summed in f64.
pub fn add_low_rank(
    weight: &mut [f32],
    lora_b: &[f32],
    lora_a: &[f32],
    (d_out, rank, d_in): (usize, usize, usize),
    scale: f64,
) {
    for o in 0..d_out {
        for i in 0..d_in {
            let lr: f64 = (0..rank)
                .map(|j| f64::from(lora_b[o * rank + j]) * f64::from(lora_a[j * d_in + i]))
                .sum();
            weight[o * d_in + i] += (scale * lr) as f32;
        }
    }
}

fn to_f32(m: faer::MatRef<'_, f64>, scale: f64) -> Vec<f32> {
    (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| (m[(i, j)] * scale) as f32))
        .collect()
}

/// Writes the init checkpoint for `layers` (HF names relative to the base model) into `out`.
pub fn write_init_checkpoint(
    out: &Path,
    source: ModelSource<'_>,
    layers: &[(String, LayerInit)],
    quant: &QuantMetadata,
    adapters: &AdapterMetadata,
) -> Result<WrittenModel> {
    let scale = adapters.scale();
    let mut extras = Vec::with_capacity(2 * layers.len());
    for (name, init) in layers {
        extras.push(ExtraTensor {
            name: format!("{name}.lora_A"),
            shape: vec![init.r.nrows(), init.r.ncols()],
            values: to_f32(init.r.as_ref(), 1.0),
        });
        extras.push(ExtraTensor {
            name: format!("{name}.lora_B"),
            shape: vec![init.l.nrows(), init.l.ncols()],
            values: to_f32(init.l.as_ref(), 1.0 / scale),
        });
    }
    let json = serde_json::to_string(adapters).map_err(|e| Error::Internal(e.to_string()))?;
    write_quantized_model(
        out,
        source,
        layers
            .iter()
            .map(|(name, init)| (name.as_str(), &init.quantized)),
        quant,
        &extras,
        &[(ADAPTER_METADATA_KEY, json)],
    )
}
