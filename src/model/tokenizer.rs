//! Tokenization with Hugging Face `tokenizers` from a `tokenizer.json`: single sentences and
//! sentence pairs, longest-first truncation, and padding to the longest sequence of a batch.

use std::path::{Path, PathBuf};

use tokenizers::{
    EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Error, Result};

/// One model input: a sentence, or a sentence pair (token type 0 then 1).
#[derive(Debug, Clone, PartialEq)]
pub struct TextInput {
    pub first: String,
    pub second: Option<String>,
}

impl TextInput {
    pub fn single(text: impl Into<String>) -> Self {
        TextInput {
            first: text.into(),
            second: None,
        }
    }

    pub fn pair(first: impl Into<String>, second: impl Into<String>) -> Self {
        TextInput {
            first: first.into(),
            second: Some(second.into()),
        }
    }
}

/// A padded batch on the host, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedBatch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

/// A `tokenizer.json` tokenizer set up for qpeft: truncation to `max_length`, no padding of
/// its own (batches are padded here, to their longest row).
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    max_length: usize,
    path: PathBuf,
    /// sha256 of `tokenizer.json`, naming this tokenizer in caches.
    sha256: String,
}

/// One input's token ids and token types, before padding.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedRow {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, with longest-first truncation to `max_length` tokens.
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self> {
        let fail = |message: String| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let sha256 = crate::model::hub::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let mut inner = Tokenizer::from_bytes(&bytes).map_err(|e| fail(e.to_string()))?;
        // The file's own padding (all-MiniLM-L6-v2 ships Fixed(128)) would defeat dynamic padding.
        let pad_id = match inner.get_padding() {
            Some(padding) => padding.pad_id,
            None => ["[PAD]", "<pad>"]
                .iter()
                .find_map(|t| inner.token_to_id(t))
                .ok_or_else(|| {
                    fail("no padding token ([PAD] or <pad>) in the vocabulary".into())
                })?,
        };
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| fail(format!("cannot truncate to {max_length} tokens: {e}")))?;
        Ok(TextTokenizer {
            inner,
            pad_id,
            max_length,
            path: path.to_path_buf(),
            sha256,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token strings of one input (special tokens included), for display.
    pub fn tokens(&self, input: &TextInput) -> Result<Vec<String>> {
        Ok(self.encode_one(input)?.get_tokens().to_vec())
    }

    fn encode_one(&self, input: &TextInput) -> Result<tokenizers::Encoding> {
        let encode_input: EncodeInput = match &input.second {
            None => input.first.as_str().into(),
            Some(second) => (input.first.as_str(), second.as_str()).into(),
        };
        self.inner
            .encode(encode_input, true)
            .map_err(|e| Error::Encode(e.to_string()))
    }

    /// Encodes `inputs` without padding (in parallel).
    pub fn encode_rows(&self, inputs: &[TextInput]) -> Result<Vec<TokenizedRow>> {
        let encode_inputs: Vec<EncodeInput> = inputs
            .iter()
            .map(|input| match &input.second {
                None => input.first.as_str().into(),
                Some(second) => (input.first.as_str(), second.as_str()).into(),
            })
            .collect();
        let encodings = self
            .inner
            .encode_batch(encode_inputs, true)
            .map_err(|e| Error::Encode(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| TokenizedRow {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }

    /// Encodes `inputs` and pads them to the longest row.
    pub fn encode_batch(&self, inputs: &[TextInput]) -> Result<EncodedBatch> {
        if inputs.is_empty() {
            return Err(Error::InvalidData("cannot encode an empty batch".into()));
        }
        let rows = self.encode_rows(inputs)?;
        Ok(pad_rows(rows.iter(), self.pad_id))
    }
}

/// Pads `rows` on the right to the longest one: `pad_id`, mask 0, token type 0.
pub fn pad_rows<'a>(
    rows: impl ExactSizeIterator<Item = &'a TokenizedRow> + Clone,
    pad_id: u32,
) -> EncodedBatch {
    let batch_size = rows.len();
    let seq_len = rows.clone().map(|r| r.ids.len()).max().unwrap_or(0);
    let mut batch = EncodedBatch {
        batch_size,
        seq_len,
        input_ids: vec![i64::from(pad_id); batch_size * seq_len],
        attention_mask: vec![0; batch_size * seq_len],
        token_type_ids: vec![0; batch_size * seq_len],
    };
    for (row_index, row) in rows.enumerate() {
        let offset = row_index * seq_len;
        for (j, (&id, &type_id)) in row.ids.iter().zip(&row.type_ids).enumerate() {
            batch.input_ids[offset + j] = i64::from(id);
            batch.attention_mask[offset + j] = 1;
            batch.token_type_ids[offset + j] = i64::from(type_id);
        }
    }
    batch
}
