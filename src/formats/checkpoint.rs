//! A model checkpoint as qpeft reads it: a safetensors file whose header may carry qpeft's
//! quantization (`qpeft`) and adapter (`qpeft_adapters`) entries, validated when the file is
//! opened, and the decoding of each linear's weight from whatever is stored: dense, packed by
//! `qpeft quantize`, or an init checkpoint's Q + L·R (docs/formats.md).

use std::path::Path;

use safetensors::tensor::Dtype;

use super::adapters::{ADAPTER_METADATA_KEY, AdapterMetadata, add_low_rank};
use super::packed::{FrozenWeight, METADATA_KEY, QuantMetadata};
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
    /// stored: packed codes and grids (`.qcodes`, `.qscale`, `.qzero`, `.qgroup`, and
    /// `.qlevels` on NF grids, written by `qpeft quantize`/`init`) or a dense `weight [out, in]`.
    pub fn frozen_weight(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<FrozenWeight> {
        let key = |name: &str| format!("{prefix}{name}");
        if self.contains(&key("weight")) || !self.contains(&key("qcodes")) {
            return Ok(FrozenWeight::Dense {
                rows: d_out,
                cols: d_in,
                values: self.read_f32(&key("weight"), &[d_out, d_in])?,
            });
        }
        let meta = self.quantization().ok_or_else(|| {
            self.invalid(format!(
                "'{}' has packed codes but the file has no `{METADATA_KEY}` metadata",
                key("qcodes")
            ))
        })?;
        let bits = Bits::new(meta.bits)?;
        let groups = self.shape(&key("qscale"))?.get(1).copied().unwrap_or(0);
        let codes = self
            .read_raw(
                &key("qcodes"),
                Dtype::U8,
                &[d_out, (d_in * usize::from(meta.bits)).div_ceil(8)],
            )?
            .to_vec();
        let group_of_column: Vec<i32> = self
            .read_raw(&key("qgroup"), Dtype::I32, &[d_in])?
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(FrozenWeight::Packed {
            bits,
            rows: d_out,
            cols: d_in,
            codes,
            scale: self.read_f32(&key("qscale"), &[d_out, groups])?,
            zero: self.read_f32(&key("qzero"), &[d_out, groups])?,
            group_of_column,
            levels: self
                .contains(&key("qlevels"))
                .then(|| self.read_f32(&key("qlevels"), &[1 << meta.bits]))
                .transpose()?,
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
