//! The packed-weight format: the quantized model directory `qpeft quantize` writes
//! (docs/formats.md), one safetensors file where each quantized linear `<name>` has
//! `<name>.qcodes` (U8 `[rows, packed row bytes]`, each row packed on its own) and its grids
//! instead of `<name>.weight`, stored at their real size (format version 3): MXINT as one E8M0
//! exponent per block (`.qexp`, U8), other uniform grids as a scale (F32, or F16 where the grids
//! were fitted with f16 scales) and a U8 zero per group, NF grids as a scale per group and the
//! codebook (`.qlevels`); `.qgroup` (I32 `[cols]`)
//! only where act-order makes the column → group map other than `column / group`. With
//! `quant.embeddings` the embedding tables are stored the same way, per row. Every other tensor
//! is kept as stored. The header's metadata holds a `qpeft` JSON entry with the format version,
//! method, bits, grid and calibration. [`FrozenWeight`] is one linear's weight as stored, and
//! [`crate::formats::checkpoint::WeightFile::frozen_weight`] reads it back, from this version
//! and from versions 1 and 2 (F32 scale and zero per group, I32 group of every column).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use faer::Mat;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use super::safetensors::{RawTensor, TensorFile, parse_header_entry, write_tensors};
use crate::error::{Error, Result};
use crate::quant::grid::{Bits, Grid, GridKind, GridSpec, Rounding};
use crate::quant::layer::{Grouping, QuantizedLayer, rtn};
use crate::quant::pack::{pack, unpack};

/// The format version this build writes: 3 stores grids at their real size (`.qexp`, U8
/// zeros, `.qgroup` only under act-order) and may quantize the embedding tables.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest version this build reads: 1 (uniform grids, F32 scale and zero, I32 `.qgroup`);
/// 2 added `.qlevels`.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// The key of qpeft's entry in the safetensors metadata.
pub const METADATA_KEY: &str = "qpeft";
/// The tensors a packed layer `<name>` may have, `<name>.<suffix>` (docs/formats.md).
pub const PACKED_SUFFIXES: [&str; 6] = ["qcodes", "qexp", "qscale", "qzero", "qgroup", "qlevels"];
/// E8M0's bias: an MXINT block's shared exponent E is stored as E + 127 (OCP MX v1.0).
const E8M0_BIAS: i32 = 127;

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
    /// Bits of the embedding tables, quantized per row on the symmetric grid (§1.3); absent when
    /// they are kept in full precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_bits: Option<u8>,
    pub calibration: String,
    pub qpeft_version: String,
}

impl QuantMetadata {
    /// Parses the metadata entry, rejecting format versions this build does not read.
    pub fn parse(json: &str, path: &Path) -> Result<Self> {
        let meta: QuantMetadata = parse_header_entry(json, METADATA_KEY, path)?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&meta.format_version) {
            return Err(Error::InvalidWeights {
                path: path.to_path_buf(),
                message: format!(
                    "quantized format version {} is not supported (this qpeft reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})",
                    meta.format_version
                ),
            });
        }
        for bits in std::iter::once(meta.bits).chain(meta.embedding_bits) {
            Bits::new(bits).map_err(|e| Error::InvalidWeights {
                path: path.to_path_buf(),
                message: format!("`{METADATA_KEY}` metadata: {e}"),
            })?;
        }
        Ok(meta)
    }

    /// The grid kind the `grid` entry names.
    pub fn grid_kind(&self) -> Result<GridKind> {
        <GridKind as clap::ValueEnum>::from_str(&self.grid, false)
            .map_err(|_| Error::Internal(format!("unknown grid {:?}", self.grid)))
    }
}

/// One stored tensor of a packed layer: the suffix after `<name>.`, dtype, shape, bytes.
pub struct StoredTensor {
    pub suffix: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// A layer's tensors as format version 3 stores them.
pub struct PackedLayer {
    pub tensors: Vec<StoredTensor>,
}

impl PackedLayer {
    /// Bytes the layer takes in the file.
    pub fn stored_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.bytes.len()).sum()
    }
}

/// The group width a reader assumes without `.qgroup`: `group`, or the whole row for 0.
pub(crate) fn group_width(group: usize, cols: usize) -> usize {
    if group == 0 { cols.max(1) } else { group }
}

/// An MXINT step `2^(E − (b − 2))` as its stored E8M0 byte `E + 127`.
fn mxint_exponent_byte(step: f64, bits: Bits) -> Option<u8> {
    let e = step.log2().round() as i32;
    let exact = 2f64.powi(e) == step;
    let stored = e + i32::from(bits.get()) - 2 + E8M0_BIAS;
    // 255 is E8M0's NaN.
    exact.then(|| u8::try_from(stored).ok().filter(|&b| b != u8::MAX))?
}

/// The step `2^(E − (b − 2))` of a stored E8M0 byte.
pub(crate) fn mxint_step(byte: u8, bits: Bits) -> f32 {
    2f32.powi(i32::from(byte) - E8M0_BIAS - (i32::from(bits.get()) - 2))
}

/// The stored zero of MXINT-b, `2^{b−1} − 1` (§1.6).
pub(crate) fn mxint_zero(bits: Bits) -> f32 {
    ((1u32 << (bits.get() - 1)) - 1) as f32
}

/// Packs `layer` (quantized at `bits` on grids of `kind`, `group` as the spec gave it: 0 for
/// one grid per row) into format version 3's tensors.
pub fn pack_layer(
    layer: &QuantizedLayer,
    bits: Bits,
    kind: GridKind,
    group: usize,
) -> Result<PackedLayer> {
    let (rows, groups) = (layer.rows, layer.groups);
    let row_bytes = (layer.cols * usize::from(bits.get())).div_ceil(8);
    let mut codes = Vec::with_capacity(row_bytes * rows);
    for row in layer.codes.chunks(layer.cols) {
        codes.extend(pack(row, bits)?);
    }
    let unrepresentable = |what: &str, value: f64| {
        Error::Internal(format!(
            "a {kind} grid's {what} {value} cannot be stored in format version {FORMAT_VERSION}"
        ))
    };
    let mut tensors = vec![StoredTensor {
        suffix: "qcodes",
        dtype: Dtype::U8,
        shape: vec![rows, row_bytes],
        bytes: codes,
    }];
    let grid_tensor = |suffix, dtype, bytes| StoredTensor {
        suffix,
        dtype,
        shape: vec![rows, groups],
        bytes,
    };
    // F16 when every scale is one (`quant.scale_dtype = "f16"` fitted them so), which loses
    // nothing; else F32, as the fit in f64 has always been stored.
    let scale_tensor = || {
        let f16 = |g: &Grid| half::f16::from_f64(g.scale);
        if layer.grids.iter().all(|g| f16(g).to_f64() == g.scale) {
            grid_tensor(
                "qscale",
                Dtype::F16,
                le_bytes(&layer.grids, |g| f16(&g).to_le_bytes()),
            )
        } else {
            grid_tensor(
                "qscale",
                Dtype::F32,
                le_bytes(&layer.grids, |g| (g.scale as f32).to_le_bytes()),
            )
        }
    };
    match kind {
        GridKind::MxInt => {
            let half = f64::from(mxint_zero(bits));
            let exponents = layer
                .grids
                .iter()
                .map(|g| {
                    if g.zero != half {
                        return Err(unrepresentable("zero", g.zero));
                    }
                    mxint_exponent_byte(g.scale, bits)
                        .ok_or_else(|| unrepresentable("step", g.scale))
                })
                .collect::<Result<Vec<u8>>>()?;
            tensors.push(grid_tensor("qexp", Dtype::U8, exponents));
        }
        GridKind::NormalFloat => {
            if let Some(g) = layer.grids.iter().find(|g| g.zero != 0.0) {
                return Err(unrepresentable("zero", g.zero));
            }
            let levels = layer
                .codebook()
                .ok_or_else(|| Error::Internal("an NF layer without its codebook".into()))?;
            tensors.push(scale_tensor());
            tensors.push(StoredTensor {
                suffix: "qlevels",
                dtype: Dtype::F32,
                shape: vec![levels.len()],
                bytes: le_bytes(levels, |v| (v as f32).to_le_bytes()),
            });
        }
        GridKind::Asymmetric | GridKind::SymmetricGptq | GridKind::SymmetricQuarot => {
            let zeros = layer
                .grids
                .iter()
                .map(|g| {
                    (g.zero.fract() == 0.0 && (0.0..=255.0).contains(&g.zero))
                        .then_some(g.zero as u8)
                        .ok_or_else(|| unrepresentable("zero", g.zero))
                })
                .collect::<Result<Vec<u8>>>()?;
            tensors.push(scale_tensor());
            tensors.push(grid_tensor("qzero", Dtype::U8, zeros));
        }
    }
    let width = group_width(group, layer.cols);
    let in_order = layer
        .group_of_column
        .iter()
        .enumerate()
        .all(|(c, &g)| g == c / width);
    if !in_order {
        tensors.push(StoredTensor {
            suffix: "qgroup",
            dtype: Dtype::I32,
            shape: vec![layer.cols],
            bytes: le_bytes(&layer.group_of_column, |g| (g as i32).to_le_bytes()),
        });
    }
    Ok(PackedLayer { tensors })
}

/// The embedding tables' names below the base model (word, position, token type).
fn is_embedding_table(name: &str) -> bool {
    name.strip_prefix("embeddings.")
        .and_then(|n| n.strip_suffix("_embeddings"))
        .is_some_and(|n| !n.contains('.'))
}

/// The grid of a quantized embedding table: one symmetric grid per row (§1.3),
/// `s = max|w|/(2^{b−1} − 1)`, `z = 2^{b−1}`.
fn embedding_grid(bits: Bits) -> GridSpec {
    GridSpec::new(bits, GridKind::SymmetricQuarot)
}

/// Round-to-nearest quantization of an embedding table `[rows, cols]` at `bits`.
fn quantize_embedding(
    values: &[f32],
    (rows, cols): (usize, usize),
    bits: Bits,
) -> Result<QuantizedLayer> {
    let table = Mat::from_fn(rows, cols, |r, c| f64::from(values[r * cols + c]));
    rtn(
        table.as_ref(),
        &embedding_grid(bits),
        Grouping::PerRow,
        Rounding::Nearest,
    )
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

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
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
        /// Bytes the layer's tensors take in the file it was read from.
        stored_bytes: usize,
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
                ..
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
            FrozenWeight::Packed { stored_bytes, .. } => *stored_bytes,
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

/// What [`write_quantized_model`] wrote.
pub struct WrittenModel {
    /// `model.safetensors`.
    pub path: PathBuf,
    /// The quantized linears' bits per weight as written, every tensor of theirs counted.
    pub bits_per_weight: f64,
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
) -> Result<WrittenModel> {
    let bits = Bits::new(meta.bits)?;
    let kind = meta.grid_kind()?;
    if meta.format_version != FORMAT_VERSION {
        return Err(Error::Internal(format!(
            "this build writes format version {FORMAT_VERSION}, the metadata says {}",
            meta.format_version
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let prefix = source.weights.base_model_prefix()?;
    let quantized: HashMap<String, &QuantizedLayer> = layers
        .into_iter()
        .map(|(n, l)| (format!("{prefix}{n}"), l))
        .collect();
    let mut buffers: Vec<RawTensor> = Vec::new();
    let raw = |name: String, dtype, shape, bytes| RawTensor {
        name,
        dtype,
        shape,
        bytes,
    };
    let push_packed = |buffers: &mut Vec<_>, base: &str, packed: PackedLayer| {
        for t in packed.tensors {
            buffers.push(raw(
                format!("{base}.{}", t.suffix),
                t.dtype,
                t.shape,
                t.bytes,
            ));
        }
    };
    let embedding_bits = meta.embedding_bits.map(Bits::new).transpose()?;
    let (mut linear_bytes, mut linear_weights) = (0usize, 0usize);
    for name in source.weights.names() {
        let Some(base) = name.strip_suffix(".weight") else {
            let (dtype, shape, bytes) = source.weights.raw(&name)?;
            buffers.push(raw(name, dtype, shape, bytes.to_vec()));
            continue;
        };
        if let Some(layer) = quantized.get(base) {
            let packed = pack_layer(layer, bits, kind, meta.group)?;
            linear_bytes += packed.stored_bytes();
            linear_weights += layer.rows * layer.cols;
            push_packed(&mut buffers, base, packed);
            continue;
        }
        match embedding_bits {
            Some(table_bits) if base.strip_prefix(&prefix).is_some_and(is_embedding_table) => {
                let shape = source.weights.shape(&name)?;
                let [rows, cols] = shape[..] else {
                    return Err(Error::Internal(format!(
                        "{name}: an embedding table of shape {shape:?}"
                    )));
                };
                let values = source.weights.read_f32(&name, &shape)?;
                let table = quantize_embedding(&values, (rows, cols), table_bits)?;
                let packed = pack_layer(&table, table_bits, GridKind::SymmetricQuarot, 0)?;
                push_packed(&mut buffers, base, packed);
            }
            _ => {
                let (dtype, shape, bytes) = source.weights.raw(&name)?;
                buffers.push(raw(name, dtype, shape, bytes.to_vec()));
            }
        }
    }
    if let Some(missing) = quantized
        .keys()
        .find(|base| !source.weights.contains(&format!("{base}.weight")))
    {
        return Err(Error::Internal(format!(
            "{missing}.weight is not in the source model"
        )));
    }
    for extra in extras {
        buffers.push(raw(
            format!("{prefix}{}", extra.name),
            Dtype::F32,
            extra.shape.clone(),
            le_bytes(&extra.values, f32::to_le_bytes),
        ));
    }
    let json = serde_json::to_string(meta).map_err(|e| Error::Internal(e.to_string()))?;
    let mut metadata = vec![(METADATA_KEY, json)];
    metadata.extend(
        extra_metadata
            .iter()
            .map(|(key, value)| (*key, value.clone())),
    );
    let path = out.join("model.safetensors");
    let partial = out.join("model.safetensors.partial");
    write_tensors(&partial, &buffers, &metadata)?;
    std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))?;
    for (from, name) in [
        (source.config, "config.json"),
        (source.tokenizer, "tokenizer.json"),
    ] {
        std::fs::copy(from, out.join(name)).map_err(|e| Error::io(from, e))?;
    }
    Ok(WrittenModel {
        path,
        bits_per_weight: 8.0 * linear_bytes as f64 / linear_weights.max(1) as f64,
    })
}
