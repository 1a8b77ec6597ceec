//! Safetensors files: reading tensors and header entries (F32, F16 and BF16 read as f32) and
//! writing tensors. Linear weights are `[out, in]` here, as Hugging Face stores them.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::io::Write;

use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo, TensorView};

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
    metadata: &[(&str, String)],
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

/// A safetensors header: `__metadata__` by key, then the tensors in the order of their data.
struct Header<'a> {
    metadata: BTreeMap<&'a str, &'a str>,
    tensors: Vec<(&'a str, TensorInfo)>,
}

impl serde::Serialize for Header<'_> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if !self.metadata.is_empty() {
            map.serialize_entry("__metadata__", &self.metadata)?;
        }
        for (name, info) in &self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

/// Writes `tensors` of any dtype as one safetensors file, with the string pairs `metadata` in its
/// header. The file's bytes depend on the arguments alone: the data follows the crate's layout (by
/// descending dtype alignment, then name) and the header lists the metadata by key. (The crate's
/// own writer takes the metadata as a `HashMap`, which orders two keys differently from one
/// process to the next, so an init checkpoint built twice differed in its header.)
pub fn write_tensors(
    path: &Path,
    tensors: &[RawTensor],
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut ordered: Vec<&RawTensor> = tensors.iter().collect();
    ordered.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    let mut header = Header {
        metadata: BTreeMap::new(),
        tensors: Vec::with_capacity(ordered.len()),
    };
    for (key, value) in metadata {
        if header.metadata.insert(key, value).is_some() {
            return Err(Error::Internal(format!(
                "{}: metadata key {key} given twice",
                path.display()
            )));
        }
    }
    let mut offset = 0;
    let mut names = std::collections::HashSet::new();
    for t in &ordered {
        if !names.insert(t.name.as_str()) {
            return Err(Error::Internal(format!(
                "{}: tensor {} given twice",
                path.display(),
                t.name
            )));
        }
        TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
            .map_err(|e| Error::Internal(format!("{}: {e}", t.name)))?;
        let end = offset + t.bytes.len();
        header.tensors.push((
            &t.name,
            TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let mut json = serde_json::to_vec(&header)
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    // The data starts 8-byte aligned, as the crate writes it.
    json.resize(json.len().next_multiple_of(8), b' ');
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        for t in &ordered {
            out.write_all(&t.bytes)?;
        }
        out.flush()
    };
    write().map_err(|e| Error::io(path, e))
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

#[cfg(test)]
mod write_tests {
    use super::{RawTensor, write_tensors};
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    use std::collections::HashMap;

    fn tensors() -> Vec<RawTensor> {
        let raw = |name: &str, dtype, shape: Vec<usize>, bytes: Vec<u8>| RawTensor {
            name: name.into(),
            dtype,
            shape,
            bytes,
        };
        vec![
            raw("b.codes", Dtype::U8, vec![3], vec![7, 8, 9]),
            raw(
                "a.weight",
                Dtype::F32,
                vec![2],
                [1.5f32, -2.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            raw("c.half", Dtype::F16, vec![1], vec![0, 60]),
        ]
    }

    fn crate_bytes(metadata: Option<HashMap<String, String>>) -> Vec<u8> {
        let tensors = tensors();
        let views = tensors.iter().map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        });
        safetensors::serialize(views, metadata).unwrap()
    }

    /// With at most one metadata key the crate's writer is deterministic, and ours writes the
    /// same bytes; with two keys ours gives one file whatever their order, which the crate reads.
    #[test]
    fn writes_the_crates_layout_with_the_metadata_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, metadata: &[(&str, String)]| {
            let path = dir.path().join(name);
            write_tensors(&path, &tensors(), metadata).unwrap();
            std::fs::read(path).unwrap()
        };
        assert_eq!(write("none", &[]), crate_bytes(None));
        let one = [("format", "pt".to_string())];
        assert_eq!(
            write("one", &one),
            crate_bytes(Some(HashMap::from([("format".into(), "pt".into())])))
        );

        let (q, a) = (
            ("qpeft", "{}".to_string()),
            ("qpeft_adapters", "[]".to_string()),
        );
        let forward = write("forward", &[q.clone(), a.clone()]);
        assert_eq!(write("backward", &[a, q]), forward);
        let text = String::from_utf8_lossy(&forward);
        assert!(
            text.contains(r#"{"__metadata__":{"qpeft":"{}","qpeft_adapters":"[]"},"a.weight":"#),
            "{text}"
        );
        let (_, header) = SafeTensors::read_metadata(&forward).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap()["qpeft_adapters"], "[]");
        let file = SafeTensors::deserialize(&forward).unwrap();
        assert_eq!(file.tensor("b.codes").unwrap().data(), [7, 8, 9]);
        assert_eq!(file.tensor("c.half").unwrap().dtype(), Dtype::F16);

        let mut twice = tensors();
        twice.push(RawTensor {
            name: "b.codes".into(),
            dtype: Dtype::F32,
            shape: vec![1],
            bytes: vec![0; 4],
        });
        let err = write_tensors(&dir.path().join("twice"), &twice, &[]).unwrap_err();
        assert!(
            err.to_string().contains("tensor b.codes given twice"),
            "{err}"
        );
    }
}
