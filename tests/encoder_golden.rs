//! The encoder against Hugging Face transformers: tokenization, last hidden states and
//! classification logits, from fixtures written by `tests/fixtures/make_golden.py`.

mod common;

use std::path::Path;

use common::{Golden, fixture, max_abs_diff};
use qpeft::eval::similarity::{Pooling, embed_texts, pair_cosines};
use qpeft::kernels::Backend;
use qpeft::model::{
    DEFAULT_MODEL, HubOptions, PretrainedModel, TextInput, encoder_input, resolve_model,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct InputSpec {
    max_length: usize,
    inputs: Vec<Pair>,
}

#[derive(Deserialize)]
struct Pair {
    first: String,
    second: Option<String>,
}

fn read_inputs(path: &Path) -> (usize, Vec<TextInput>) {
    let text = std::fs::read_to_string(path).unwrap();
    let spec: InputSpec = serde_json::from_str(&text).unwrap();
    let inputs = spec
        .inputs
        .into_iter()
        .map(|p| TextInput {
            first: p.first,
            second: p.second,
        })
        .collect();
    (spec.max_length, inputs)
}

/// Max |difference| of hidden states and (if the golden file has them) logits.
struct Diffs {
    hidden: f32,
    logits: Option<f32>,
}

fn compare<B: Backend>(
    pretrained: &PretrainedModel,
    golden_dir: &Path,
    device: &B::Device,
) -> Diffs {
    let golden = Golden::open(&golden_dir.join("golden.safetensors"));
    let (max_length, inputs) = read_inputs(&golden_dir.join("inputs.json"));
    let tokenizer = pretrained.tokenizer(max_length).unwrap();
    let batch = tokenizer.encode_batch(&inputs).unwrap();

    let (shape, ids) = golden.i64("input_ids");
    assert_eq!(
        shape,
        [batch.batch_size, batch.seq_len],
        "padded batch shape"
    );
    assert_eq!(batch.input_ids, ids, "token ids differ from transformers'");
    assert_eq!(batch.attention_mask, golden.i64("attention_mask").1);
    assert_eq!(batch.token_type_ids, golden.i64("token_type_ids").1);

    let input = encoder_input::<B>(&batch, device);
    let (model, _) = pretrained
        .classifier::<B>(pretrained.config.head, device)
        .unwrap();
    let hidden = model.encoder.forward(&input);
    let (hidden_shape, expected_hidden) = golden.f32("last_hidden_state");
    assert_eq!(hidden.dims().to_vec(), hidden_shape);
    let hidden_values = hidden.clone().into_data().to_vec::<f32>().unwrap();
    let logits = golden.has("logits").then(|| {
        let (logit_shape, expected) = golden.f32("logits");
        let logits = model.head.forward(hidden);
        assert_eq!(logits.dims().to_vec(), logit_shape);
        max_abs_diff(&logits.into_data().to_vec::<f32>().unwrap(), &expected)
    });
    Diffs {
        hidden: max_abs_diff(&hidden_values, &expected_hidden),
        logits,
    }
}

fn tiny<B: Backend>(name: &str, device: &B::Device) {
    let dir = fixture(name);
    let options = HubOptions {
        cache_dir: dir.join("no-cache"),
        offline: true,
    };
    let files = resolve_model(dir.to_str().unwrap(), &options).unwrap();
    let pretrained = PretrainedModel::open(files).unwrap();
    let diffs = compare::<B>(&pretrained, &dir, device);
    let logits = diffs.logits.expect("tiny fixtures have logits");
    println!(
        "{name}: max |Δ hidden| = {:.3e}, max |Δ logits| = {logits:.3e}",
        diffs.hidden
    );
    assert!(
        diffs.hidden <= 1e-4,
        "{name}: hidden states differ by {}",
        diffs.hidden
    );
    assert!(logits <= 1e-4, "{name}: logits differ by {logits}");
}

fn minilm<B: Backend>(device: &B::Device) {
    let files = resolve_model(DEFAULT_MODEL, &HubOptions::from_env()).unwrap_or_else(|e| {
        panic!("{e}\n(this test needs the default model in the hub cache: `make model` or `qpeft model fetch`)")
    });
    let pretrained = PretrainedModel::open(files).unwrap();
    let diffs = compare::<B>(&pretrained, &fixture("minilm"), device);
    println!("all-MiniLM-L6-v2: max |Δ hidden| = {:.3e}", diffs.hidden);
    assert!(
        diffs.hidden <= 2e-4,
        "all-MiniLM-L6-v2 hidden states differ by {}",
        diffs.hidden
    );
}

/// `embed_texts` (mean and [CLS] pooling, L2 normalization, batching) against the same
/// computed from transformers' last hidden states, for every single-sentence input of the
/// MiniLM fixture; `pair_cosines` against their dot products.
fn minilm_sentence_embeddings<B: Backend>(device: &B::Device) {
    let files = resolve_model(DEFAULT_MODEL, &HubOptions::from_env()).unwrap();
    let pretrained = PretrainedModel::open(files).unwrap();
    let dir = fixture("minilm");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    let (max_length, inputs) = read_inputs(&dir.join("inputs.json"));
    let (shape, hidden) = golden.f32("last_hidden_state");
    let (_, mask) = golden.i64("attention_mask");
    let (seq, width) = (shape[1], shape[2]);
    let singles: Vec<usize> = (0..inputs.len())
        .filter(|&i| inputs[i].second.is_none())
        .collect();
    let state = |row: usize, t: usize| &hidden[(row * seq + t) * width..][..width];
    let normalized = |v: Vec<f64>| {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| x / norm).collect::<Vec<f64>>()
    };
    let texts: Vec<TextInput> = singles.iter().map(|&i| inputs[i].clone()).collect();
    let tokenizer = pretrained.tokenizer(max_length).unwrap();
    let encoder = pretrained.encoder::<B>(device).unwrap();
    for pooling in [Pooling::Mean, Pooling::Cls] {
        let expected: Vec<Vec<f64>> = singles
            .iter()
            .map(|&row| match pooling {
                Pooling::Mean => {
                    let tokens: Vec<usize> =
                        (0..seq).filter(|&t| mask[row * seq + t] == 1).collect();
                    let count = tokens.len() as f64;
                    normalized(
                        (0..width)
                            .map(|j| {
                                tokens
                                    .iter()
                                    .map(|&t| f64::from(state(row, t)[j]))
                                    .sum::<f64>()
                                    / count
                            })
                            .collect(),
                    )
                }
                Pooling::Cls => normalized(state(row, 0).iter().map(|&x| f64::from(x)).collect()),
            })
            .collect();
        // Batches of 3: the padding of a batch must not change its rows' embeddings.
        let ours = embed_texts(&encoder, &tokenizer, &texts, pooling, 3, device).unwrap();
        let worst = ours
            .iter()
            .flatten()
            .zip(expected.iter().flatten())
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 2e-5, "{pooling} embeddings differ by {worst}");
        let pairs: Vec<(String, String)> = (1..texts.len())
            .map(|i| (texts[0].first.clone(), texts[i].first.clone()))
            .collect();
        let cosines = pair_cosines(&encoder, &tokenizer, &pairs, pooling, 2, device).unwrap();
        for (i, cosine) in cosines.iter().enumerate() {
            let dot: f64 = expected[0]
                .iter()
                .zip(&expected[i + 1])
                .map(|(a, b)| a * b)
                .sum();
            assert!(
                (cosine - dot).abs() <= 2e-5,
                "{pooling} pair {i}: {cosine} vs {dot}"
            );
        }
    }
}

mod cpu {
    use qpeft::device::CpuBackend;

    #[test]
    fn minilm_sentence_embeddings_match_transformers() {
        super::minilm_sentence_embeddings::<CpuBackend>(&Default::default());
    }

    #[test]
    fn tiny_bert_matches_transformers() {
        super::tiny::<CpuBackend>("tiny-bert", &Default::default());
    }

    #[test]
    fn tiny_roberta_matches_transformers() {
        super::tiny::<CpuBackend>("tiny-roberta", &Default::default());
    }

    #[test]
    fn minilm_matches_transformers() {
        super::minilm::<CpuBackend>(&Default::default());
    }
}

/// The same goldens on the other CPU backend (`--device ndarray`).
mod ndarray {
    use qpeft::device::NdArrayBackend;

    #[test]
    fn minilm_sentence_embeddings_match_transformers() {
        super::minilm_sentence_embeddings::<NdArrayBackend>(&Default::default());
    }

    #[test]
    fn tiny_bert_matches_transformers() {
        super::tiny::<NdArrayBackend>("tiny-bert", &Default::default());
    }

    #[test]
    fn tiny_roberta_matches_transformers() {
        super::tiny::<NdArrayBackend>("tiny-roberta", &Default::default());
    }

    #[test]
    fn minilm_matches_transformers() {
        super::minilm::<NdArrayBackend>(&Default::default());
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use qpeft::device::CudaBackend;

    #[test]
    fn tiny_bert_matches_transformers() {
        super::tiny::<CudaBackend>("tiny-bert", &Default::default());
    }

    #[test]
    fn tiny_roberta_matches_transformers() {
        super::tiny::<CudaBackend>("tiny-roberta", &Default::default());
    }

    #[test]
    fn minilm_matches_transformers() {
        super::minilm::<CudaBackend>(&Default::default());
    }
}
