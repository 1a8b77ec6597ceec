//! Zero-shot sentence similarity: the cosine of the mean-pooled, L2-normalized embeddings of
//! the two sentences of a pair (how sentence-transformers models such as all-MiniLM-L6-v2 are
//! trained and used), scored against STS-B's gold similarities. With no training involved it
//! measures how much of a model's embedding geometry a quantized or initialized checkpoint
//! keeps.

use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::model::{Encoder, TextInput, TextTokenizer, encoder_input, mean_pool};

/// The mean-pooled, L2-normalized embedding of each text, `batch_size` texts per forward pass.
pub fn embed_texts<B: Backend>(
    encoder: &Encoder<B>,
    tokenizer: &TextTokenizer,
    texts: &[TextInput],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Vec<f32>>> {
    let mut embeddings = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch_size.max(1)) {
        let batch = tokenizer.encode_batch(chunk)?;
        let input = encoder_input::<B>(&batch, device);
        let pooled = mean_pool(encoder.forward(&input), &input.attention_mask);
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
            .map_err(|e| Error::InvalidInput(format!("reading embeddings back: {e:?}")))?;
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
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f64>> {
    let side = |pick: fn(&(String, String)) -> &String| -> Vec<TextInput> {
        pairs.iter().map(|p| TextInput::single(pick(p))).collect()
    };
    let first = embed_texts(encoder, tokenizer, &side(|p| &p.0), batch_size, device)?;
    let second = embed_texts(encoder, tokenizer, &side(|p| &p.1), batch_size, device)?;
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
