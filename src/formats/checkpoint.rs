//! A model checkpoint as qpeft reads it: a safetensors file whose header may carry qpeft's
//! quantization (`qpeft`) and adapter (`qpeft_adapters`) entries, validated when the file is
//! opened, and the decoding of each linear's weight from whatever is stored: dense, packed by
//! `qpeft quantize`, or an init checkpoint's Q + L·R (docs/formats.md).

use std::path::Path;

use safetensors::tensor::Dtype;

use super::adapters::{ADAPTER_METADATA_KEY, AdapterMetadata, add_low_rank};
use super::packed::{
    FrozenWeight, METADATA_KEY, PACKED_SUFFIXES, QuantMetadata, group_width, mxint_step, mxint_zero,
};
use super::safetensors::TensorFile;
use crate::error::Result;
use crate::quant::grid::Bits;

/// A checkpoint: its tensors (a [`TensorFile`], which it dereferences to) and the qpeft
/// metadata of its header.
pub struct WeightFile {
    tensors: TensorFile,
    /// Present in files written by `qpeft quantize` and `qpeft init`.
    quantization: Option<QuantMetadata>,
    /// Present in files written by `qpeft init`.
    adapters: Option<AdapterMetadata>,
}

impl std::ops::Deref for WeightFile {
    type Target = TensorFile;

    fn deref(&self) -> &TensorFile {
        &self.tensors
    }
}

impl WeightFile {
    /// Opens `path`, refusing metadata of a format version this build does not read.
    pub fn open(path: &Path) -> Result<Self> {
        let tensors = TensorFile::open(path)?;
        let quantization = tensors
            .header_entry(METADATA_KEY)
            .map(|json| QuantMetadata::parse(json, path))
            .transpose()?;
        let adapters = tensors
            .header_entry(ADAPTER_METADATA_KEY)
            .map(|json| AdapterMetadata::parse(json, path))
            .transpose()?;
        Ok(WeightFile {
            tensors,
            quantization,
            adapters,
        })
    }

    /// The tensors, for writers that copy them.
    pub fn tensors(&self) -> &TensorFile {
        &self.tensors
    }

    /// The quantization recorded in the header, for files written by `qpeft quantize`.
    pub fn quantization(&self) -> Option<&QuantMetadata> {
        self.quantization.as_ref()
    }

    /// The adapters recorded in the header, for files written by `qpeft init`.
    pub fn adapters(&self) -> Option<&AdapterMetadata> {
        self.adapters.as_ref()
    }

    /// The frozen weight of the linear whose tensors are named `prefix` + `weight`, …, as
    /// stored: packed codes and grids (written by `qpeft quantize`/`init`, docs/formats.md)
    /// or a dense `weight [out, in]`.
    pub fn frozen_weight(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<FrozenWeight> {
        let packed =
            !self.contains(&format!("{prefix}weight")) && self.contains(&format!("{prefix}qcodes"));
        if !packed {
            return self.dense(prefix, d_out, d_in);
        }
        let meta = self.quantization().ok_or_else(|| {
            self.invalid(format!(
                "'{prefix}qcodes' has packed codes but the file has no `{METADATA_KEY}` metadata"
            ))
        })?;
        self.packed(prefix, (d_out, d_in), Bits::new(meta.bits)?, meta.group)
    }

    /// The `[rows, cols]` embedding table named `prefix` + `weight`: dequantized when the file
    /// stores it quantized (`quant.embeddings`, one grid per row), else as stored.
    pub fn embedding_table(&self, prefix: &str, rows: usize, cols: usize) -> Result<Vec<f32>> {
        let bits = self.quantization().and_then(|m| m.embedding_bits);
        match bits {
            Some(bits) if !self.contains(&format!("{prefix}weight")) => self
                .packed(prefix, (rows, cols), Bits::new(bits)?, 0)?
                .into_dequantized()
                .map_err(|e| self.invalid(format!("{prefix}qcodes: {e}"))),
            _ => self.read_f32(&format!("{prefix}weight"), &[rows, cols]),
        }
    }

    fn dense(&self, prefix: &str, rows: usize, cols: usize) -> Result<FrozenWeight> {
        Ok(FrozenWeight::Dense {
            rows,
            cols,
            values: self.read_f32(&format!("{prefix}weight"), &[rows, cols])?,
        })
    }

    /// A packed layer in any format version this build reads. Version 3 stores MXINT blocks as
    /// `.qexp`, zeros as U8 and `.qgroup` only under act-order; versions 1 and 2 store F32
    /// scales and zeros and every column's group. `group` is the width a missing `.qgroup`
    /// implies (0: one grid per row).
    fn packed(
        &self,
        prefix: &str,
        (rows, cols): (usize, usize),
        bits: Bits,
        group: usize,
    ) -> Result<FrozenWeight> {
        let key = |name: &str| format!("{prefix}{name}");
        let raw = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<Vec<u8>> {
            Ok(self.read_raw(&key(name), dtype, shape)?.to_vec())
        };
        let codes = raw(
            "qcodes",
            Dtype::U8,
            &[rows, (cols * usize::from(bits.get())).div_ceil(8)],
        )?;
        let grids_of = |name: &str| -> Result<usize> {
            Ok(self.shape(&key(name))?.get(1).copied().unwrap_or(0))
        };
        let (scale, zero, groups) = if self.contains(&key("qexp")) {
            let groups = grids_of("qexp")?;
            let exponents = raw("qexp", Dtype::U8, &[rows, groups])?;
            let scale = exponents.iter().map(|&e| mxint_step(e, bits)).collect();
            (scale, vec![mxint_zero(bits); rows * groups], groups)
        } else {
            let groups = grids_of("qscale")?;
            let scale: Vec<f32> = self.read_f32(&key("qscale"), &[rows, groups])?;
            let zero_key = key("qzero");
            let zero = if !self.contains(&zero_key) {
                // NF grids have no zero (format version 3); a uniform grid without one is
                // a damaged file.
                if !self.contains(&key("qlevels")) {
                    return Err(self.invalid(format!(
                        "'{}' has neither a '{zero_key}' nor a '{}'",
                        key("qscale"),
                        key("qlevels")
                    )));
                }
                vec![0.0; scale.len()]
            } else if self.raw(&zero_key)?.0 == Dtype::U8 {
                raw("qzero", Dtype::U8, &[rows, groups])?
                    .into_iter()
                    .map(f32::from)
                    .collect()
            } else {
                self.read_f32(&zero_key, &[rows, groups])?
            };
            (scale, zero, groups)
        };
        let group_of_column: Vec<i32> = if self.contains(&key("qgroup")) {
            raw("qgroup", Dtype::I32, &[cols])?
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            let width = group_width(group, cols);
            if groups != cols.div_ceil(width) {
                return Err(self.invalid(format!(
                    "'{}' holds {groups} groups per row, but {cols} columns in groups of {width} make {} (and there is no '{}')",
                    key("qcodes"),
                    cols.div_ceil(width),
                    key("qgroup")
                )));
            }
            (0..cols).map(|c| (c / width) as i32).collect()
        };
        let levels = self
            .contains(&key("qlevels"))
            .then(|| self.read_f32(&key("qlevels"), &[1 << bits.get()]))
            .transpose()?;
        let mut stored_bytes = 0;
        for suffix in PACKED_SUFFIXES {
            if self.contains(&key(suffix)) {
                stored_bytes += self.raw(&key(suffix))?.2.len();
            }
        }
        Ok(FrozenWeight::Packed {
            bits,
            rows,
            cols,
            codes,
            scale,
            zero,
            group_of_column,
            levels,
            stored_bytes,
        })
    }

    /// The dense `[out, in]` weight of the linear named `prefix` + …: dequantized if packed,
    /// and, in an init checkpoint, with its adapter merged in (W = Q + s·lora_B·lora_A), so
    /// that a reader that knows nothing of quantization or adapters gets the model's weight.
    pub fn dense_weight(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Vec<f32>> {
        let mut weight = self
            .frozen_weight(prefix, d_in, d_out)?
            .into_dequantized()
            .map_err(|e| self.invalid(format!("{prefix}qcodes: {e}")))?;
        if let Some(adapters) = self.adapters()
            && self.contains(&format!("{prefix}lora_A"))
        {
            let rank = adapters.rank;
            let a = self.read_f32(&format!("{prefix}lora_A"), &[rank, d_in])?;
            let b = self.read_f32(&format!("{prefix}lora_B"), &[d_out, rank])?;
            add_low_rank(&mut weight, &b, &a, (d_out, rank, d_in), adapters.scale());
        }
        Ok(weight)
    }
}
