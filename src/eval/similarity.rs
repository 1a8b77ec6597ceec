//! Zero-shot sentence similarity: the cosine of the pooled, L2-normalized embeddings of the
//! two sentences of a pair, scored against STS-B's gold similarities. Mean pooling is how
//! sentence-transformers models such as all-MiniLM-L6-v2 are trained and used; [CLS] pooling
//! reads the token a sequence classifier's head reads. With no training involved it measures
//! how much of a model's embedding geometry a quantized or initialized checkpoint keeps.

use crate::kernels::Backend;

use crate::error::{Error, Result};
use crate::model::{Encoder, TextInput, TextTokenizer, encoder_input, first_token, mean_pool};

/// How a sentence embedding is read from the encoder's last hidden states.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// The mean of the token states over the attention mask (sentence-transformers).
    #[default]
    Mean,
    /// The first token's state ([CLS]), before the pooler: what the classifier head reads.
    Cls,
}

crate::named!(Pooling);

/// The pooled, L2-normalized embedding of each text, `batch_size` texts per forward pass.
pub fn embed_texts<B: Backend>(
    encoder: &Encoder<B>,
    tokenizer: &TextTokenizer,
    texts: &[TextInput],
    pooling: Pooling,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Vec<f32>>> {
    let mut embeddings = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch_size.max(1)) {
        let batch = tokenizer.encode_batch(chunk)?;
        let input = encoder_input::<B>(&batch, device);
        let hidden = encoder.forward(&input);
        let pooled = match pooling {
            Pooling::Mean => mean_pool(hidden, &input.attention_mask),
            Pooling::Cls => first_token(hidden),
        };
        let [rows, width] = pooled.dims();
        let norm = pooled
            .clone()
            .powf_scalar(2.0)
            .sum_dim(1)
            .sqrt()
            .clamp_min(1e-12);
        let values = (pooled / norm)
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| Error::Internal(format!("reading embeddings back: {e:?}")))?;
        debug_assert_eq!(values.len(), rows * width);
        embeddings.extend(values.chunks(width).map(<[f32]>::to_vec));
    }
    Ok(embeddings)
}

/// The cosine similarity of the two sentences of each pair.
pub fn pair_cosines<B: Backend>(
    encoder: &Encoder<B>,
    tokenizer: &TextTokenizer,
    pairs: &[(String, String)],
    pooling: Pooling,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f64>> {
    let side = |pick: fn(&(String, String)) -> &String| -> Vec<TextInput> {
        pairs.iter().map(|p| TextInput::single(pick(p))).collect()
    };
    let embed = |texts: Vec<TextInput>| {
        embed_texts(encoder, tokenizer, &texts, pooling, batch_size, device)
    };
    let (first, second) = (embed(side(|p| &p.0))?, embed(side(|p| &p.1))?);
    Ok(first
        .iter()
        .zip(&second)
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum()
        })
        .collect())
}
