//! The packed-weight format: the quantized model directory `qpeft quantize` writes
//! (docs/formats.md), one
//! safetensors file where each quantized linear `<name>` has `<name>.qcodes` (U8
//! `[rows, packed row bytes]`, each row packed on its own), `<name>.qscale` and `<name>.qzero`
//! (F32 `[rows, groups]`), `<name>.qgroup` (I32 `[cols]`, each column's group) and, on a
//! codebook grid (NF), `<name>.qlevels` (F32 `[2^bits]`) instead of `<name>.weight`; every
//! other tensor is kept as stored. The header's metadata holds a
//! `qpeft` JSON entry with the format version, method, bits, grid and calibration.
//! [`FrozenWeight`] is one linear's weight as stored, and
//! [`crate::formats::checkpoint::WeightFile::frozen_weight`] reads it back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use super::safetensors::{TensorFile, parse_header_entry, write_error};
use crate::error::{Error, Result};
use crate::quant::grid::{Bits, GridKind};
use crate::quant::layer::QuantizedLayer;
use crate::quant::pack::{pack, unpack};

/// The newest format version this build reads and writes: version 2 added `.qlevels`.
pub const FORMAT_VERSION: u32 = 2;
/// The version of files without codebooks, which builds that read only version 1 still load.
pub const UNIFORM_FORMAT_VERSION: u32 = 1;

/// The version a file quantized on `kind` is written with: the oldest that can hold it, so a
/// reader that ignored `.qlevels` could never load a codebook file as a uniform one.
pub fn format_version(kind: GridKind) -> u32 {
    match kind {
        GridKind::NormalFloat => FORMAT_VERSION,
        _ => UNIFORM_FORMAT_VERSION,
    }
}
/// The key of qpeft's entry in the safetensors metadata.
pub const METADATA_KEY: &str = "qpeft";

/// What the header records about the quantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantMetadata {
    pub format_version: u32,
    pub method: String,
    pub bits: u8,
    pub grid: String,
    /// 0 for per-row grids.
    pub group: usize,
    pub calibration: String,
    pub qpeft_version: String,
}

impl QuantMetadata {
    /// Parses the metadata entry, rejecting format versions this build does not read.
    pub fn parse(json: &str, path: &Path) -> Result<Self> {
        let meta: QuantMetadata = parse_header_entry(json, METADATA_KEY, path)?;
        if !(UNIFORM_FORMAT_VERSION..=FORMAT_VERSION).contains(&meta.format_version) {
            return Err(Error::InvalidWeights {
                path: path.to_path_buf(),
                message: format!(
                    "quantized format version {} is not supported (this qpeft reads versions {UNIFORM_FORMAT_VERSION} to {FORMAT_VERSION})",
                    meta.format_version
                ),
            });
        }
        Bits::new(meta.bits).map_err(|e| Error::InvalidWeights {
            path: path.to_path_buf(),
            message: format!("`{METADATA_KEY}` metadata: {e}"),
        })?;
        Ok(meta)
    }
}

/// Packed storage of one layer, row by row.
pub struct PackedLayer {
    pub codes: Vec<u8>,
    pub row_bytes: usize,
    pub scale: Vec<f32>,
    pub zero: Vec<f32>,
    pub group_of_column: Vec<i32>,
    /// The codebook of a codebook grid, `[2^bits]`.
    pub levels: Option<Vec<f32>>,
}

pub fn pack_layer(layer: &QuantizedLayer, bits: Bits) -> Result<PackedLayer> {
    let row_bytes = (layer.cols * usize::from(bits.get())).div_ceil(8);
    let mut codes = Vec::with_capacity(row_bytes * layer.rows);
    for row in layer.codes.chunks(layer.cols) {
        codes.extend(pack(row, bits)?);
    }
    Ok(PackedLayer {
        codes,
        row_bytes,
        scale: layer.grids.iter().map(|g| g.scale as f32).collect(),
        zero: layer.grids.iter().map(|g| g.zero as f32).collect(),
        group_of_column: layer.group_of_column.iter().map(|&g| g as i32).collect(),
        levels: layer
            .codebook()
            .map(|levels| levels.iter().map(|&v| v as f32).collect()),
    })
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

/// A packed layer's grids, as stored: `[rows, groups]` scales and zeros, each column's group,
/// and the codebook (`None`: uniform, `level(code) = code`).
#[derive(Debug, Clone, Copy)]
pub struct PackedGrids<'a> {
    pub scale: &'a [f32],
    pub zero: &'a [f32],
    pub group_of_column: &'a [i32],
    pub levels: Option<&'a [f32]>,
}

/// Dequantizes packed storage to `[out, in]` row-major f32: `scale·(level(code) − zero)`.
pub fn dequantize_packed(
    codes: &[u8],
    bits: Bits,
    (rows, cols): (usize, usize),
    grids: PackedGrids<'_>,
) -> Result<Vec<f32>> {
    let PackedGrids {
        scale,
        zero,
        group_of_column,
        levels,
    } = grids;
    let row_bytes = (cols * usize::from(bits.get())).div_ceil(8);
    let groups = scale.len() / rows.max(1);
    if codes.len() != rows * row_bytes || zero.len() != scale.len() || group_of_column.len() != cols
    {
        return Err(Error::InvalidData(
            "packed layer tensors have inconsistent shapes".into(),
        ));
    }
    if levels.is_some_and(|l| l.len() != 1 << bits.get()) {
        return Err(Error::InvalidData(format!(
            "a {}-bit codebook needs {} levels",
            bits.get(),
            1 << bits.get()
        )));
    }
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let row = unpack(&codes[r * row_bytes..(r + 1) * row_bytes], bits, cols)?;
        for (c, code) in row.into_iter().enumerate() {
            let g = usize::try_from(group_of_column[c])
                .ok()
                .filter(|&g| g < groups)
                .ok_or_else(|| {
                    Error::InvalidData(format!("column {c} names group {}", group_of_column[c]))
                })?;
            let k = r * groups + g;
            let level = levels.map_or(f32::from(code), |l| l[usize::from(code)]);
            out.push(scale[k] * (level - zero[k]));
        }
    }
    Ok(out)
}

fn le_bytes<T: Copy>(values: &[T], to: impl Fn(T) -> [u8; 4]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

/// The frozen weight as it is stored: packed codes with their grids, or dense `[out, in]`.
#[derive(Debug, Clone)]
pub enum FrozenWeight {
    Packed {
        bits: Bits,
        rows: usize,
        cols: usize,
        /// Row-major `[rows, ceil(cols·bits/8)]`, each row packed on its own.
        codes: Vec<u8>,
        /// `[rows, groups]`.
        scale: Vec<f32>,
        zero: Vec<f32>,
        /// The group of each input column.
        group_of_column: Vec<i32>,
        /// The codebook of an NF grid, `[2^bits]`; `None` on uniform grids.
        levels: Option<Vec<f32>>,
    },
    Dense {
        rows: usize,
        cols: usize,
        /// Row-major `[out, in]`.
        values: Vec<f32>,
    },
}

impl FrozenWeight {
    /// `[out, in]`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            FrozenWeight::Packed { rows, cols, .. } | FrozenWeight::Dense { rows, cols, .. } => {
                (*rows, *cols)
            }
        }
    }

    /// The weight the forward pass uses, row-major `[out, in]`.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        match self {
            FrozenWeight::Packed {
                bits,
                rows,
                cols,
                codes,
                scale,
                zero,
                group_of_column,
                levels,
            } => dequantize_packed(
                codes,
                *bits,
                (*rows, *cols),
                PackedGrids {
                    scale,
                    zero,
                    group_of_column,
                    levels: levels.as_deref(),
                },
            ),
            FrozenWeight::Dense { values, .. } => Ok(values.clone()),
        }
    }

    /// The weight the forward pass uses, consuming the storage (a dense weight is not copied).
    pub fn into_dequantized(self) -> Result<Vec<f32>> {
        match self {
            FrozenWeight::Dense { values, .. } => Ok(values),
            packed => packed.dequantize(),
        }
    }

    /// Bytes the frozen weight takes as stored.
    pub fn stored_bytes(&self) -> usize {
        match self {
            FrozenWeight::Packed {
                codes,
                scale,
                zero,
                group_of_column,
                levels,
                ..
            } => {
                codes.len()
                    + 4 * (scale.len()
                        + zero.len()
                        + group_of_column.len()
                        + levels.as_ref().map_or(0, Vec::len))
            }
            FrozenWeight::Dense { values, .. } => 4 * values.len(),
        }
    }
}

/// An f32 tensor stored beside the quantized layers (the adapters of an init checkpoint).
pub struct ExtraTensor {
    /// HF name relative to the base model.
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The model a quantized folder is made from: its weights and the files copied beside them.
#[derive(Clone, Copy)]
pub struct ModelSource<'a> {
    pub weights: &'a TensorFile,
    pub config: &'a Path,
    pub tokenizer: &'a Path,
}

/// Writes `out/model.safetensors` (with `layers` quantized, HF names relative to the base
/// model, plus `extras` and the `extra_metadata` header entries), `config.json` and
/// `tokenizer.json` copied from `source`. The file appears only once complete.
pub fn write_quantized_model<'a>(
    out: &Path,
    source: ModelSource<'_>,
    layers: impl IntoIterator<Item = (&'a str, &'a QuantizedLayer)>,
    meta: &QuantMetadata,
    extras: &[ExtraTensor],
    extra_metadata: &[(&str, String)],
) -> Result<PathBuf> {
    let bits = Bits::new(meta.bits)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let prefix = source.weights.base_model_prefix()?;
    let quantized: HashMap<String, &QuantizedLayer> = layers
        .into_iter()
        .map(|(n, l)| (format!("{prefix}{n}"), l))
        .collect();
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in source.weights.names() {
        if let Some(base) = name.strip_suffix(".weight")
            && quantized.contains_key(base)
        {
            continue;
        }
        let (dtype, shape, bytes) = source.weights.raw(&name)?;
        buffers.push((name, dtype, shape, bytes.to_vec()));
    }
    for (base, layer) in &quantized {
        let packed = pack_layer(layer, bits)?;
        buffers.push((
            format!("{base}.qcodes"),
            Dtype::U8,
            vec![layer.rows, packed.row_bytes],
            packed.codes,
        ));
        buffers.push((
            format!("{base}.qscale"),
            Dtype::F32,
            vec![layer.rows, layer.groups],
            le_bytes(&packed.scale, f32::to_le_bytes),
        ));
        buffers.push((
            format!("{base}.qzero"),
            Dtype::F32,
            vec![layer.rows, layer.groups],
            le_bytes(&packed.zero, f32::to_le_bytes),
        ));
        buffers.push((
            format!("{base}.qgroup"),
            Dtype::I32,
            vec![layer.cols],
            le_bytes(&packed.group_of_column, i32::to_le_bytes),
        ));
        if let Some(levels) = &packed.levels {
            if meta.format_version < FORMAT_VERSION {
                return Err(Error::Internal(format!(
                    "{base}: a codebook grid needs format version {FORMAT_VERSION}, the metadata says {}",
                    meta.format_version
                )));
            }
            buffers.push((
                format!("{base}.qlevels"),
                Dtype::F32,
                vec![levels.len()],
                le_bytes(levels, f32::to_le_bytes),
            ));
        }
    }
    for extra in extras {
        buffers.push((
            format!("{prefix}{}", extra.name),
            Dtype::F32,
            extra.shape.clone(),
            le_bytes(&extra.values, f32::to_le_bytes),
        ));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| Error::Internal(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let json = serde_json::to_string(meta).map_err(|e| Error::Internal(e.to_string()))?;
    let mut metadata = HashMap::from([(METADATA_KEY.to_string(), json)]);
    metadata.extend(
        extra_metadata
            .iter()
            .map(|(key, value)| (key.to_string(), value.clone())),
    );
    let path = out.join("model.safetensors");
    let partial = out.join("model.safetensors.partial");
    safetensors::serialize_to_file(views, Some(metadata), &partial)
        .map_err(|e| write_error(&partial, e))?;
    std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))?;
    for (from, name) in [
        (source.config, "config.json"),
        (source.tokenizer, "tokenizer.json"),
    ] {
        std::fs::copy(from, out.join(name)).map_err(|e| Error::io(from, e))?;
    }
    Ok(path)
}
