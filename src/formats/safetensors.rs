//! Safetensors files: reading tensors and header entries (F32, F16 and BF16 read as f32) and
//! writing tensors. Linear weights are `[out, in]` here, as Hugging Face stores them.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::error::{Error, Result};

/// A safetensors file held in memory, with its header parsed once.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    metadata: Metadata,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::InvalidWeights {
                path: path.to_path_buf(),
                message: format!("not a valid safetensors file: {e}"),
            })?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            bytes,
            data_start: 8 + header_len,
            metadata,
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
    pub(crate) fn read_raw(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8]> {
        let (actual_dtype, actual_shape, bytes) = self.raw(name)?;
        if actual_dtype != dtype || actual_shape != shape {
            return Err(self.invalid(format!(
                "tensor '{name}' is {actual_dtype:?} {actual_shape:?}, expected {dtype:?} {shape:?}"
            )));
        }
        Ok(bytes)
    }

    /// The sha256 of the whole file: what a cache keyed by a model's content hashes.
    pub fn content_digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(&self.bytes).into()
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    pub(crate) fn invalid(&self, message: String) -> Error {
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

    /// The prefix in front of `embeddings.word_embeddings.weight` (or `.qcodes` where the table
    /// is stored quantized): `""`, `"bert."`, `"roberta."`…
    pub fn base_model_prefix(&self) -> Result<String> {
        const ANCHOR: &str = "embeddings.word_embeddings.weight";
        const PACKED_ANCHOR: &str = "embeddings.word_embeddings.qcodes";
        self.names()
            .into_iter()
            .filter_map(|name| {
                name.strip_suffix(ANCHOR)
                    .or_else(|| name.strip_suffix(PACKED_ANCHOR))
                    .map(str::to_string)
            })
            .min_by_key(String::len)
            .ok_or_else(|| {
                self.invalid(format!(
                    "no tensor named '*{ANCHOR}': not a BERT/RoBERTa checkpoint"
                ))
            })
    }
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

/// Parses the JSON of header entry `key` of the file at `path`.
pub(crate) fn parse_header_entry<T: serde::de::DeserializeOwned>(
    json: &str,
    key: &str,
    path: &Path,
) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::InvalidWeights {
        path: path.to_path_buf(),
        message: format!("invalid `{key}` metadata: {e}"),
    })
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
                .map_err(|e| Error::Internal(format!("{}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| write_error(path, e))
}

/// A failed safetensors write: an I/O error with its path, or a bug in what was written.
pub(crate) fn write_error(path: &Path, error: safetensors::SafeTensorError) -> Error {
    match error {
        safetensors::SafeTensorError::IoError(source) => Error::io(path, source),
        other => Error::Internal(format!("{}: {other}", path.display())),
    }
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
    use super::TensorFile;
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
        let file = TensorFile::open(&path).unwrap();
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
