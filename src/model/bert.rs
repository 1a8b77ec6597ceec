//! The BERT / RoBERTa encoder and its sequence-classification heads, as in Hugging Face
//! `modeling_bert.py` / `modeling_roberta.py`: post-LayerNorm layers, exact (erf) GELU,
//! additive attention mask on padded keys, dropout active only under autodiff (training).
//!
//! Module fields follow HF's names, so every linear layer is reachable by its HF name
//! (`encoder.layer.3.attention.self.query`, relative to the base model) through
//! [`Encoder::linear`] / [`Encoder::linear_mut`].

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::{Distribution, Int, Tensor, TensorData};

use super::config::{Architecture, EncoderConfig, HeadKind};
use super::weights::WeightScope;
use crate::error::Result;
use crate::formats::checkpoint::WeightFile;
use crate::kernels::{Backend, add_layer_norm, attention_probs, gelu};
use crate::layers::TargetLinear;
use crate::layers::dropout::Dropout;

/// The six linear layers of every encoder layer, by their HF names below `encoder.layer.N.`.
pub const LAYER_LINEARS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// Token ids, attention mask (1 = token, 0 = padding) and token types, each `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct EncoderInput<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub attention_mask: Tensor<B, 2, Int>,
    pub token_type_ids: Tensor<B, 2, Int>,
}

#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    pub layer_norm: LayerNorm<B>,
    layer_norm_eps: f64,
    dropout: Dropout,
    /// RoBERTa numbers positions from `pad + 1`, skipping padding; BERT from 0.
    roberta_positions: bool,
    /// With a single token type (RoBERTa) every token gets type 0, whatever the tokenizer says.
    single_token_type: bool,
    pad_token_id: usize,
}

impl<B: Backend> Embeddings<B> {
    fn load(w: &WeightScope, cfg: &EncoderConfig, device: &B::Device) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Embeddings {
            word_embeddings: w
                .child("word_embeddings")
                .embedding(cfg.vocab_size, h, device)?,
            position_embeddings: w.child("position_embeddings").embedding(
                cfg.max_position_embeddings,
                h,
                device,
            )?,
            token_type_embeddings: w.child("token_type_embeddings").embedding(
                cfg.type_vocab_size,
                h,
                device,
            )?,
            layer_norm: w
                .child("LayerNorm")
                .layer_norm(h, cfg.layer_norm_eps, device)?,
            layer_norm_eps: cfg.layer_norm_eps,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            roberta_positions: cfg.architecture == Architecture::Roberta,
            single_token_type: cfg.type_vocab_size == 1,
            pad_token_id: cfg.pad_token_id,
        })
    }

    fn position_ids(&self, input_ids: &Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        if self.roberta_positions {
            // HF `create_position_ids_from_input_ids`: cumsum of non-pad tokens, offset by pad.
            let pad = self.pad_token_id as i64;
            let not_pad = input_ids.clone().not_equal_elem(pad).int();
            not_pad.clone().cumsum(1) * not_pad + pad
        } else {
            Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
                .reshape([1, seq])
                .expand([batch, seq])
        }
    }

    pub fn forward(&self, input: &EncoderInput<B>) -> Tensor<B, 3> {
        let positions = self.position_ids(&input.input_ids);
        let token_types = if self.single_token_type {
            input.token_type_ids.zeros_like()
        } else {
            input.token_type_ids.clone()
        };
        let x = self.word_embeddings.forward(input.input_ids.clone())
            + self.position_embeddings.forward(positions);
        let token_types = self.token_type_embeddings.forward(token_types);
        self.dropout.forward(add_layer_norm(
            x,
            token_types,
            &self.layer_norm,
            self.layer_norm_eps,
        ))
    }
}

#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub query: TargetLinear<B>,
    pub key: TargetLinear<B>,
    pub value: TargetLinear<B>,
    dropout: Dropout,
    num_heads: usize,
}

#[derive(Module, Debug)]
pub struct DenseLayerNorm<B: Backend> {
    pub dense: TargetLinear<B>,
    pub layer_norm: LayerNorm<B>,
    layer_norm_eps: f64,
    dropout: Dropout,
}

impl<B: Backend> DenseLayerNorm<B> {
    fn load(w: &WeightScope, d_in: usize, cfg: &EncoderConfig, device: &B::Device) -> Result<Self> {
        Ok(DenseLayerNorm {
            dense: TargetLinear::Dense(w.child("dense").linear(d_in, cfg.hidden_size, device)?),
            layer_norm: w.child("LayerNorm").layer_norm(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                device,
            )?,
            layer_norm_eps: cfg.layer_norm_eps,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    /// `LayerNorm(dropout(dense(x)) + residual)`: HF's BertSelfOutput / BertOutput.
    fn forward(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        add_layer_norm(
            self.dropout.forward(self.dense.forward(x)),
            residual,
            &self.layer_norm,
            self.layer_norm_eps,
        )
    }
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub self_attention: SelfAttention<B>,
    pub output: DenseLayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct Intermediate<B: Backend> {
    pub dense: TargetLinear<B>,
}

#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    pub attention: Attention<B>,
    pub intermediate: Intermediate<B>,
    pub output: DenseLayerNorm<B>,
}

impl<B: Backend> SelfAttention<B> {
    fn load(w: &WeightScope, cfg: &EncoderConfig, device: &B::Device) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(SelfAttention {
            query: TargetLinear::Dense(w.child("query").linear(h, h, device)?),
            key: TargetLinear::Dense(w.child("key").linear(h, h, device)?),
            value: TargetLinear::Dense(w.child("value").linear(h, h, device)?),
            dropout: Dropout::new(cfg.attention_probs_dropout_prob),
            num_heads: cfg.num_attention_heads,
        })
    }

    /// `x [b, t, h]`, `mask_bias [b, 1, 1, t]` (0 for tokens, a huge negative for padding).
    fn forward(&self, x: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        let split_heads = |t: Tensor<B, 3>| {
            t.reshape([batch, seq, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = split_heads(self.query.forward(x.clone()));
        let k = split_heads(self.key.forward(x.clone()));
        let v = split_heads(self.value.forward(x));
        let scores = q.matmul(k.transpose());
        let keep = self.dropout.keep_mask(scores.shape(), &scores.device());
        let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
        let probs = attention_probs(scores, mask_bias, scale, keep);
        probs
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, seq, hidden])
    }
}

impl<B: Backend> EncoderLayer<B> {
    fn load(w: &WeightScope, cfg: &EncoderConfig, device: &B::Device) -> Result<Self> {
        let attention = w.child("attention");
        Ok(EncoderLayer {
            attention: Attention {
                self_attention: SelfAttention::load(&attention.child("self"), cfg, device)?,
                output: DenseLayerNorm::load(
                    &attention.child("output"),
                    cfg.hidden_size,
                    cfg,
                    device,
                )?,
            },
            intermediate: Intermediate {
                dense: TargetLinear::Dense(w.child("intermediate").child("dense").linear(
                    cfg.hidden_size,
                    cfg.intermediate_size,
                    device,
                )?),
            },
            output: DenseLayerNorm::load(&w.child("output"), cfg.intermediate_size, cfg, device)?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>, mask_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let context = self.attention.self_attention.forward(x.clone(), mask_bias);
        let attended = self.attention.output.forward(context, x);
        let inner = gelu(self.intermediate.dense.forward(attended.clone()));
        self.output.forward(inner, attended)
    }

    /// The layer's forward pass one group of linear layers at a time, so that each group can
    /// be changed (quantized) before the next one runs: [`LayerStages::input`] is the input of
    /// the current group (0: query/key/value, 1: attention output, 2: intermediate,
    /// 3: output dense); [`LayerStages::advance`] runs the current group with the layer's
    /// weights as they are now. Together this is exactly [`EncoderLayer::forward`].
    pub fn stages(&self, x: Tensor<B, 3>) -> LayerStages<B> {
        LayerStages {
            x: x.clone(),
            attended: None,
            input: x,
            group: 0,
        }
    }

    /// The dense linear layer with HF name `suffix` (one of [`LAYER_LINEARS`]); `None` once
    /// adapted.
    pub fn linear(&self, suffix: &str) -> Option<&Linear<B>> {
        self.target(suffix)?.dense()
    }

    pub fn linear_mut(&mut self, suffix: &str) -> Option<&mut Linear<B>> {
        self.target_mut(suffix)?.dense_mut()
    }

    /// The target slot with HF name `suffix` (one of [`LAYER_LINEARS`]).
    pub fn target(&self, suffix: &str) -> Option<&TargetLinear<B>> {
        Some(match suffix {
            "attention.self.query" => &self.attention.self_attention.query,
            "attention.self.key" => &self.attention.self_attention.key,
            "attention.self.value" => &self.attention.self_attention.value,
            "attention.output.dense" => &self.attention.output.dense,
            "intermediate.dense" => &self.intermediate.dense,
            "output.dense" => &self.output.dense,
            _ => return None,
        })
    }

    pub fn target_mut(&mut self, suffix: &str) -> Option<&mut TargetLinear<B>> {
        Some(match suffix {
            "attention.self.query" => &mut self.attention.self_attention.query,
            "attention.self.key" => &mut self.attention.self_attention.key,
            "attention.self.value" => &mut self.attention.self_attention.value,
            "attention.output.dense" => &mut self.attention.output.dense,
            "intermediate.dense" => &mut self.intermediate.dense,
            "output.dense" => &mut self.output.dense,
            _ => return None,
        })
    }
}

/// An encoder layer's forward pass in progress (see [`EncoderLayer::stages`]).
#[derive(Debug, Clone)]
pub struct LayerStages<B: Backend> {
    x: Tensor<B, 3>,
    /// The post-attention LayerNorm output, needed again by the last residual.
    attended: Option<Tensor<B, 3>>,
    input: Tensor<B, 3>,
    group: usize,
}

impl<B: Backend> LayerStages<B> {
    /// The input of the current group.
    pub fn input(&self) -> &Tensor<B, 3> {
        &self.input
    }

    /// Runs the current group through `layer`; after the fourth group, `input()` is the
    /// layer's output.
    pub fn advance(&mut self, layer: &EncoderLayer<B>, mask_bias: Tensor<B, 4>) {
        let current = self.input.clone();
        self.input = match self.group {
            0 => layer.attention.self_attention.forward(current, mask_bias),
            1 => {
                let attended = layer.attention.output.forward(current, self.x.clone());
                self.attended = Some(attended.clone());
                attended
            }
            2 => gelu(layer.intermediate.dense.forward(current)),
            _ => layer.output.forward(
                current,
                self.attended
                    .clone()
                    .expect("set by the attention output stage"),
            ),
        };
        self.group += 1;
    }
}

/// The base model: embeddings and the stack of encoder layers.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub embeddings: Embeddings<B>,
    pub layers: Vec<EncoderLayer<B>>,
}

impl<B: Backend> Encoder<B> {
    /// Loads the base model from `w` (already scoped to the base-model prefix).
    pub fn load(w: &WeightScope, cfg: &EncoderConfig, device: &B::Device) -> Result<Self> {
        let layers = w.child("encoder").child("layer");
        Ok(Encoder {
            embeddings: Embeddings::load(&w.child("embeddings"), cfg, device)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::load(&layers.child(&i.to_string()), cfg, device))
                .collect::<Result<_>>()?,
        })
    }

    /// Last hidden state `[batch, seq, hidden]`.
    pub fn forward(&self, input: &EncoderInput<B>) -> Tensor<B, 3> {
        let mask_bias = attention_mask_bias(&input.attention_mask);
        let mut x = self.embeddings.forward(input);
        for layer in &self.layers {
            x = layer.forward(x, mask_bias.clone());
        }
        x
    }

    /// HF names of all encoder linear layers, in forward order.
    pub fn linear_names(&self) -> Vec<String> {
        (0..self.layers.len())
            .flat_map(|i| {
                LAYER_LINEARS
                    .iter()
                    .map(move |s| format!("encoder.layer.{i}.{s}"))
            })
            .collect()
    }

    pub fn linear(&self, name: &str) -> Option<&Linear<B>> {
        let (index, suffix) = parse_layer_linear(name)?;
        self.layers.get(index)?.linear(suffix)
    }

    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear<B>> {
        let (index, suffix) = parse_layer_linear(name)?;
        self.layers.get_mut(index)?.linear_mut(suffix)
    }

    /// The encoder with every adapted linear merged into one dense weight, for inference:
    /// the same function without dropout, one matrix product per linear instead of three
    /// (docs/performance.md, "Merged adapters in evaluation").
    pub fn merged(mut self) -> Self {
        for layer in &mut self.layers {
            for suffix in LAYER_LINEARS {
                if let Some(slot) = layer.target_mut(suffix) {
                    *slot = slot.clone().merged();
                }
            }
        }
        self
    }

    /// The target slot with HF name `name` (`encoder.layer.N.<one of LAYER_LINEARS>`).
    pub fn target(&self, name: &str) -> Option<&TargetLinear<B>> {
        let (index, suffix) = parse_layer_linear(name)?;
        self.layers.get(index)?.target(suffix)
    }

    pub fn target_mut(&mut self, name: &str) -> Option<&mut TargetLinear<B>> {
        let (index, suffix) = parse_layer_linear(name)?;
        self.layers.get_mut(index)?.target_mut(suffix)
    }
}

/// `"encoder.layer.3.output.dense"` → `(3, "output.dense")`.
fn parse_layer_linear(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("encoder.layer.")?;
    let (index, suffix) = rest.split_once('.')?;
    Some((index.parse().ok()?, suffix))
}

/// `[b, t]` 0/1 mask → additive `[b, 1, 1, t]` bias: 0 for tokens, `f32::MIN` for padding,
/// as HF's eager attention does (`(1 - mask) * finfo.min`).
pub fn attention_mask_bias<B: Backend>(mask: &Tensor<B, 2, Int>) -> Tensor<B, 4> {
    let [batch, seq] = mask.dims();
    ((mask.clone().float() - 1.0) * f64::from(f32::MAX)).reshape([batch, 1, 1, seq])
}

/// `[b, t, h]` → the first token's state `[b, h]` ([CLS] / `<s>`).
pub fn first_token<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, _, h] = hidden.dims();
    hidden.narrow(1, 0, 1).reshape([batch, h])
}

/// Mean of the token states over the attention mask, `[b, t, h]` → `[b, h]`
/// (the sentence-transformers pooling of all-MiniLM-L6-v2).
pub fn mean_pool<B: Backend>(hidden: Tensor<B, 3>, mask: &Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [batch, seq, h] = hidden.dims();
    let weights = mask.clone().float().reshape([batch, seq, 1]);
    let summed = (hidden * weights.clone()).sum_dim(1).reshape([batch, h]);
    let counts = weights.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
    summed / counts
}

/// BERT's pooler: dense + tanh on [CLS].
#[derive(Module, Debug)]
pub struct Pooler<B: Backend> {
    pub dense: Linear<B>,
}

/// BERT: pooler, dropout, classifier.
#[derive(Module, Debug)]
pub struct BertHead<B: Backend> {
    pub pooler: Pooler<B>,
    pub classifier: Linear<B>,
    dropout: Dropout,
}

/// RoBERTa: dropout, dense, tanh, dropout, out_proj on `<s>`.
#[derive(Module, Debug)]
pub struct RobertaHead<B: Backend> {
    pub dense: Linear<B>,
    pub out_proj: Linear<B>,
    dropout: Dropout,
}

/// The sequence-classification (or regression) head.
#[derive(Module, Debug)]
pub enum ClassifierHead<B: Backend> {
    Bert(BertHead<B>),
    Roberta(RobertaHead<B>),
}

impl<B: Backend> ClassifierHead<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let cls = first_token(hidden);
        match self {
            ClassifierHead::Bert(head) => {
                let pooled = head.pooler.dense.forward(cls).tanh();
                head.classifier.forward(head.dropout.forward(pooled))
            }
            ClassifierHead::Roberta(head) => {
                let x = head.dense.forward(head.dropout.forward(cls)).tanh();
                head.out_proj.forward(head.dropout.forward(x))
            }
        }
    }
}

/// HF `_init_weights` for a fresh linear layer: N(0, 0.02) weights, zero bias.
fn fresh_linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(Tensor::random(
            [d_in, d_out],
            Distribution::Normal(0.0, 0.02),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

/// Loads the head linear `name` below `w` when the checkpoint has it (and `reuse`); otherwise
/// initializes it fresh and records `label` in `fresh`.
fn load_or_fresh<B: Backend>(
    w: &WeightScope,
    (name, label): (&str, &'static str),
    (d_in, d_out): (usize, usize),
    reuse: bool,
    fresh: &mut Vec<&'static str>,
    device: &B::Device,
) -> Result<Linear<B>> {
    if reuse && w.contains(&format!("{name}.weight")) {
        w.child(name).linear(d_in, d_out, device)
    } else {
        fresh.push(label);
        Ok(fresh_linear(d_in, d_out, device))
    }
}

/// An encoder with a sequence-classification or regression head.
#[derive(Module, Debug)]
pub struct SequenceClassifier<B: Backend> {
    pub encoder: Encoder<B>,
    pub head: ClassifierHead<B>,
}

impl<B: Backend> SequenceClassifier<B> {
    /// The classifier with its encoder's adapters merged ([`Encoder::merged`]), for inference.
    pub fn merged(self) -> Self {
        SequenceClassifier {
            encoder: self.encoder.merged(),
            head: self.head,
        }
    }

    /// Loads the encoder and, where the checkpoint has them, the head weights for `head`;
    /// with `fresh_task_head` the task layers (BERT's classifier, RoBERTa's whole head) are
    /// initialized fresh whatever the checkpoint holds, as fine-tuning starts (§12.1), while
    /// BERT's pretrained pooler is kept. Also returns the HF names of the head layers
    /// initialized fresh (N(0, 0.02) weights, zero biases, as HF does).
    pub fn load(
        file: &WeightFile,
        cfg: &EncoderConfig,
        head: HeadKind,
        fresh_task_head: bool,
        device: &B::Device,
    ) -> Result<(Self, Vec<&'static str>)> {
        let reuse = !fresh_task_head;
        let prefix = file.base_model_prefix()?;
        let encoder = Encoder::load(&WeightScope::new(file, &prefix), cfg, device)?;
        let h = cfg.hidden_size;
        let outputs = head.num_outputs();
        let root = WeightScope::new(file, "");
        let dropout = Dropout::new(cfg.classifier_dropout);
        let mut fresh = Vec::new();
        let head = match cfg.architecture {
            Architecture::Bert => {
                let pooler = WeightScope::new(file, &prefix).child("pooler");
                ClassifierHead::Bert(BertHead {
                    pooler: Pooler {
                        dense: load_or_fresh(
                            &pooler,
                            ("dense", "pooler.dense"),
                            (h, h),
                            true,
                            &mut fresh,
                            device,
                        )?,
                    },
                    classifier: load_or_fresh(
                        &root,
                        ("classifier", "classifier"),
                        (h, outputs),
                        reuse,
                        &mut fresh,
                        device,
                    )?,
                    dropout,
                })
            }
            Architecture::Roberta => {
                let classifier = root.child("classifier");
                ClassifierHead::Roberta(RobertaHead {
                    dense: load_or_fresh(
                        &classifier,
                        ("dense", "classifier.dense"),
                        (h, h),
                        reuse,
                        &mut fresh,
                        device,
                    )?,
                    out_proj: load_or_fresh(
                        &classifier,
                        ("out_proj", "classifier.out_proj"),
                        (h, outputs),
                        reuse,
                        &mut fresh,
                        device,
                    )?,
                    dropout,
                })
            }
        };
        Ok((SequenceClassifier { encoder, head }, fresh))
    }

    /// Logits `[batch, num_outputs]`.
    pub fn forward(&self, input: &EncoderInput<B>) -> Tensor<B, 2> {
        self.head.forward(self.encoder.forward(input))
    }

    /// HF names (relative to the base model for the encoder) of every linear layer.
    pub fn linear_names(&self) -> Vec<String> {
        let mut names = self.encoder.linear_names();
        names.extend(
            match &self.head {
                ClassifierHead::Bert(_) => ["pooler.dense", "classifier"].as_slice(),
                ClassifierHead::Roberta(_) => {
                    ["classifier.dense", "classifier.out_proj"].as_slice()
                }
            }
            .iter()
            .map(|s| s.to_string()),
        );
        names
    }

    pub fn linear(&self, name: &str) -> Option<&Linear<B>> {
        match (&self.head, name) {
            (ClassifierHead::Bert(h), "pooler.dense") => Some(&h.pooler.dense),
            (ClassifierHead::Bert(h), "classifier") => Some(&h.classifier),
            (ClassifierHead::Roberta(h), "classifier.dense") => Some(&h.dense),
            (ClassifierHead::Roberta(h), "classifier.out_proj") => Some(&h.out_proj),
            _ => self.encoder.linear(name),
        }
    }
}

/// Host-side token batch → device tensors.
pub fn encoder_input<B: Backend>(
    batch: &crate::model::tokenizer::EncodedBatch,
    device: &B::Device,
) -> EncoderInput<B> {
    let shape = [batch.batch_size, batch.seq_len];
    let int = |values: &[i64]| Tensor::from_data(TensorData::new(values.to_vec(), shape), device);
    EncoderInput {
        input_ids: int(&batch.input_ids),
        attention_mask: int(&batch.attention_mask),
        token_type_ids: int(&batch.token_type_ids),
    }
}
