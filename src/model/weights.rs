//! Reading Hugging Face safetensors checkpoints into Burn parameters.
//!
//! This is the one boundary where HF's `[out, in]` linear weights become Burn's `[in, out]`
//! (see [`WeightScope::linear`]); everywhere else qpeft keeps `[out, in]`.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::adapters::FrozenWeight;
use crate::adapters::qlora_linear::add_low_rank;
use crate::error::{Error, Result};
use crate::quant::checkpoint::{METADATA_KEY, QuantMetadata};
use crate::quant::grid::Bits;
use crate::reconstruct::checkpoint::{ADAPTER_METADATA_KEY, AdapterMetadata};

/// A safetensors file held in memory, with its header parsed once.
pub struct WeightFile {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
    /// Present in files written by `qpeft quantize` and `qpeft init`.
    quantization: Option<QuantMetadata>,
    /// Present in files written by `qpeft init`.
    adapters: Option<AdapterMetadata>,
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::InvalidWeights {
                path: path.to_path_buf(),
                message: format!("not a valid safetensors file: {e}"),
            })?;
        let entry = |key: &str| metadata.metadata().as_ref().and_then(|m| m.get(key));
        let quantization = entry(METADATA_KEY)
            .map(|json| QuantMetadata::parse(json, path))
            .transpose()?;
        let adapters = entry(ADAPTER_METADATA_KEY)
            .map(|json| AdapterMetadata::parse(json, path))
            .transpose()?;
        Ok(WeightFile {
            path: path.to_path_buf(),
            bytes,
            data_start: 8 + header_len,
            metadata,
            quantization,
            adapters,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// An entry of the safetensors header's metadata.
    pub fn header_entry(&self, key: &str) -> Option<&str> {
        self.metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(key))
            .map(String::as_str)
    }

    /// The quantization recorded in the header, for files written by `qpeft quantize`.
    pub fn quantization(&self) -> Option<&QuantMetadata> {
        self.quantization.as_ref()
    }

    /// The adapters recorded in the header, for files written by `qpeft init`.
    pub fn adapters(&self) -> Option<&AdapterMetadata> {
        self.adapters.as_ref()
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.metadata
            .info(name)
            .map(|info| info.shape.clone())
            .ok_or_else(|| self.invalid(format!("tensor '{name}' is missing")))
    }

    /// Tensor `name` as stored: dtype, shape and little-endian bytes.
    pub fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| self.invalid(format!("tensor '{name}' is missing")))?;
        let (start, end) = info.data_offsets;
        Ok((
            info.dtype,
            info.shape.clone(),
            &self.bytes[self.data_start + start..self.data_start + end],
        ))
    }

    /// The raw little-endian bytes of tensor `name`, checking its dtype and shape.
    fn read_raw(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8]> {
        let (actual_dtype, actual_shape, bytes) = self.raw(name)?;
        if actual_dtype != dtype || actual_shape != shape {
            return Err(self.invalid(format!(
                "tensor '{name}' is {actual_dtype:?} {actual_shape:?}, expected {dtype:?} {shape:?}"
            )));
        }
        Ok(bytes)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    fn invalid(&self, message: String) -> Error {
        Error::InvalidWeights {
            path: self.path.clone(),
            message,
        }
    }

    /// Reads tensor `name` as f32 (F32, F16 and BF16 are accepted), checking its shape.
    pub fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (dtype, actual_shape, raw) = self.raw(name)?;
        if actual_shape != shape {
            return Err(self.invalid(format!(
                "tensor '{name}' has shape {actual_shape:?}, expected {shape:?}"
            )));
        }
        let values: Vec<f32> = match dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(self.invalid(format!(
                    "tensor '{name}' has dtype {other:?}, expected F32, F16 or BF16"
                )));
            }
        };
        Ok(values)
    }

    /// Scope for reading the tensors below `prefix` (e.g. `"bert."`).
    pub fn scope(&self, prefix: &str) -> WeightScope<'_> {
        WeightScope {
            file: self,
            prefix: prefix.to_string(),
        }
    }

    /// The prefix in front of `embeddings.word_embeddings.weight`: `""`, `"bert."`, `"roberta."`…
    pub fn base_model_prefix(&self) -> Result<String> {
        const ANCHOR: &str = "embeddings.word_embeddings.weight";
        self.names()
            .into_iter()
            .filter_map(|name| name.strip_suffix(ANCHOR).map(str::to_string))
            .min_by_key(String::len)
            .ok_or_else(|| {
                self.invalid(format!(
                    "no tensor named '*{ANCHOR}': not a BERT/RoBERTa checkpoint"
                ))
            })
    }
}

/// A view of a [`WeightFile`] below a name prefix.
pub struct WeightScope<'a> {
    file: &'a WeightFile,
    prefix: String,
}

impl<'a> WeightScope<'a> {
    /// The scope `prefix + name + "."`.
    pub fn child(&self, name: &str) -> WeightScope<'a> {
        WeightScope {
            file: self.file,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.file.contains(&self.key(name))
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let values = self.file.read_f32(&self.key(name), &shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// The first of `names` present in the file (old checkpoints say `gamma`/`beta`).
    fn tensor_alias<B: Backend>(
        &self,
        names: &[&str],
        len: usize,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>> {
        let name = names
            .iter()
            .find(|n| self.contains(n))
            .copied()
            .unwrap_or(names[0]);
        self.tensor(name, [len], device)
    }

    /// The f32 tensor `name` below this scope (F32, F16 or BF16 stored), checking its shape.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.file.read_f32(&self.key(name), shape)
    }

    /// The frozen weight of the linear below this scope, as stored: packed codes and grids
    /// (`.qcodes`, `.qscale`, `.qzero`, `.qgroup`, and `.qlevels` on NF grids, written by
    /// `qpeft quantize`/`init`) or a dense `weight [out, in]`.
    pub fn frozen_weight(&self, d_in: usize, d_out: usize) -> Result<FrozenWeight> {
        if self.contains("weight") || !self.contains("qcodes") {
            return Ok(FrozenWeight::Dense {
                rows: d_out,
                cols: d_in,
                values: self.values("weight", &[d_out, d_in])?,
            });
        }
        let file = self.file;
        let meta = file.quantization().ok_or_else(|| {
            file.invalid(format!(
                "'{}' has packed codes but the file has no `{METADATA_KEY}` metadata",
                self.key("qcodes")
            ))
        })?;
        let bits = Bits::new(meta.bits)?;
        let groups = file
            .shape(&self.key("qscale"))?
            .get(1)
            .copied()
            .unwrap_or(0);
        let codes = file
            .read_raw(
                &self.key("qcodes"),
                Dtype::U8,
                &[d_out, (d_in * usize::from(meta.bits)).div_ceil(8)],
            )?
            .to_vec();
        let group_of_column: Vec<i32> = file
            .read_raw(&self.key("qgroup"), Dtype::I32, &[d_in])?
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(FrozenWeight::Packed {
            bits,
            rows: d_out,
            cols: d_in,
            codes,
            scale: self.values("qscale", &[d_out, groups])?,
            zero: self.values("qzero", &[d_out, groups])?,
            group_of_column,
            levels: self
                .contains("qlevels")
                .then(|| self.values("qlevels", &[1 << meta.bits]))
                .transpose()?,
        })
    }

    /// W += s·lora_B·lora_A: a layer of an init checkpoint read as a dense model is Q + L·R.
    fn merge_adapter(
        &self,
        weight_out_in: &mut [f32],
        adapters: &AdapterMetadata,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        let rank = adapters.rank;
        let a = self.values("lora_A", &[rank, d_in])?;
        let b = self.values("lora_B", &[d_out, rank])?;
        add_low_rank(weight_out_in, &b, &a, (d_out, rank, d_in), adapters.scale());
        Ok(())
    }

    /// A linear layer stored by HF as `weight [out, in]` and `bias [out]`, or quantized by
    /// `qpeft quantize` (dequantized here); an init checkpoint's adapter is merged in.
    pub fn linear<B: Backend>(
        &self,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let mut weight_out_in = self
            .frozen_weight(d_in, d_out)?
            .into_dequantized()
            .map_err(|e| self.file.invalid(format!("{}: {e}", self.key("qcodes"))))?;
        if let Some(adapters) = self.file.adapters()
            && self.contains("lora_A")
        {
            self.merge_adapter(&mut weight_out_in, adapters, d_in, d_out)?;
        }
        let weight_in_out = transpose(&weight_out_in, d_out, d_in);
        let weight = Tensor::from_data(TensorData::new(weight_in_out, [d_in, d_out]), device);
        let bias = self.tensor("bias", [d_out], device)?;
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        })
    }

    pub fn embedding<B: Backend>(
        &self,
        n: usize,
        d: usize,
        device: &B::Device,
    ) -> Result<Embedding<B>> {
        Ok(Embedding {
            weight: Param::from_tensor(self.tensor("weight", [n, d], device)?),
        })
    }

    pub fn layer_norm<B: Backend>(
        &self,
        d: usize,
        epsilon: f64,
        device: &B::Device,
    ) -> Result<LayerNorm<B>> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(epsilon).init(device);
        norm.gamma = Param::from_tensor(self.tensor_alias(&["weight", "gamma"], d, device)?);
        norm.beta = Some(Param::from_tensor(self.tensor_alias(
            &["bias", "beta"],
            d,
            device,
        )?));
        Ok(norm)
    }
}

/// A Burn linear layer's weight as an `[out, in]` f64 matrix (the reverse boundary).
pub fn linear_weight_out_in<B: Backend>(linear: &Linear<B>) -> Result<faer::Mat<f64>> {
    let [d_in, d_out] = linear.weight.dims();
    let values = linear
        .weight
        .val()
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| Error::InvalidInput(format!("reading a weight back: {e:?}")))?;
    // Burn stores [in, out] row-major: element (i, o) at i·out + o.
    Ok(faer::Mat::from_fn(d_out, d_in, |o, i| {
        f64::from(values[i * d_out + o])
    }))
}

/// Replaces a Burn linear layer's weight with an `[out, in]` matrix (rounded to f32).
pub fn set_linear_weight_out_in<B: Backend>(
    linear: &mut Linear<B>,
    weight: faer::MatRef<'_, f64>,
) -> Result<()> {
    let [d_in, d_out] = linear.weight.dims();
    if weight.nrows() != d_out || weight.ncols() != d_in {
        return Err(Error::InvalidInput(format!(
            "weight is {}×{}, the layer needs [out, in] = {d_out}×{d_in}",
            weight.nrows(),
            weight.ncols()
        )));
    }
    let values: Vec<f32> = (0..d_in * d_out)
        .map(|k| weight[(k % d_out, k / d_out)] as f32)
        .collect();
    let device = linear.weight.device();
    linear.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(values, [d_in, d_out]),
        &device,
    ));
    Ok(())
}

/// Row-major `[rows, cols]` → row-major `[cols, rows]`.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for (r, row) in values.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_is_an_involution() {
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let t = transpose(&a, 2, 3);
        assert_eq!(t, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(transpose(&t, 3, 2), a);
    }
}

#[cfg(test)]
mod dtype_tests {
    use super::WeightFile;
    use safetensors::tensor::{Dtype, TensorView};

    /// F16 and BF16 tensors read back as the f32 values they encode.
    #[test]
    fn reads_half_precision_as_f32() {
        let values = [1.5f32, -0.25, 3.0, 65504.0];
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let tensors = [
            ("a", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
            (
                "b",
                TensorView::new(Dtype::BF16, vec![2, 2], &bf16).unwrap(),
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
        let file = WeightFile::open(&path).unwrap();
        assert_eq!(file.read_f32("a", &[2, 2]).unwrap(), values);
        // bf16 keeps 8 mantissa bits: 65504 rounds to 65536.
        assert_eq!(
            file.read_f32("b", &[2, 2]).unwrap(),
            [1.5, -0.25, 3.0, 65536.0]
        );
        let err = file.read_f32("a", &[4]).unwrap_err().to_string();
        assert!(err.contains("'a' has shape [2, 2], expected [4]"), "{err}");
        let err = file.read_f32("missing", &[1]).unwrap_err().to_string();
        assert!(err.contains("'missing' is missing"), "{err}");
    }
}

/// An f32 tensor: name, shape, row-major values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Writes f32 tensors and the header `metadata` to a safetensors file at `path`.
pub fn write_f32_tensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let raw: Vec<RawTensor> = tensors
        .iter()
        .map(|(name, shape, values)| RawTensor {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: shape.clone(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
        .collect();
    write_tensors(path, &raw, metadata)
}

/// A tensor as safetensors stores it: little-endian bytes of `dtype`.
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Writes `tensors` of any dtype as one safetensors file.
pub fn write_tensors(
    path: &Path,
    tensors: &[RawTensor],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, metadata, path)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
}
