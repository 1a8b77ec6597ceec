//! Export of a trained QPEFT classifier for Hugging Face tools, in one of two formats:
//! - `dense`: every adapted layer merged, W = deq(Q) + s·B·A (§12.1), written with the HF names
//!   and `[out, in]` layout of `BertForSequenceClassification` /
//!   `RobertaForSequenceClassification`, so that transformers (or qpeft itself) loads it without
//!   knowing about quantization or adapters;
//! - `peft`: a PEFT LoRA adapter (`adapter_config.json`, `adapter_model.safetensors` with PEFT's
//!   names: `base_model.model.<module>.lora_A.weight`, and the trained head as `modules_to_save`)
//!   plus the base it applies to in `base/`: the dequantized Q model without its head.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::kernels::Backend;
use burn::module::ParamId;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::write_through_partial;
use crate::formats::safetensors::{NamedTensor, transpose, write_f32_tensors};
use crate::layers::TargetLinear;
use crate::layers::qlora_linear::to_vec;
use crate::model::Architecture;
use crate::model::bert::ClassifierHead;
use crate::model::{HeadKind, PretrainedModel, SequenceClassifier};

/// HF name → (shape, row-major values).
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn put_linear<B: Backend>(out: &mut Tensors, name: &str, linear: &Linear<B>) -> Result<()> {
    // Burn keeps linear weights as [in, out]; HF as [out, in].
    let [d_in, d_out] = linear.weight.dims();
    let weight = transpose(&to_vec(linear.weight.val())?, d_in, d_out);
    out.insert(format!("{name}.weight"), (vec![d_out, d_in], weight));
    if let Some(bias) = &linear.bias {
        out.insert(format!("{name}.bias"), (vec![d_out], to_vec(bias.val())?));
    }
    Ok(())
}

/// What an adapted layer's weight is in a dense export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdaptedWeight {
    /// deq(Q) + s·B·A.
    Merged,
    /// deq(Q): the base a PEFT adapter applies to.
    Base,
}

fn put_target<B: Backend>(
    out: &mut Tensors,
    name: &str,
    target: &TargetLinear<B>,
    weight: AdaptedWeight,
) -> Result<()> {
    match target {
        TargetLinear::Dense(linear) => put_linear(out, name, linear),
        TargetLinear::Adapted(adapted) => {
            let (d_out, d_in) = adapted.shape();
            let values = match weight {
                AdaptedWeight::Merged => adapted.merged_weight()?,
                AdaptedWeight::Base => adapted.frozen().dequantize()?,
            };
            out.insert(format!("{name}.weight"), (vec![d_out, d_in], values));
            if let Some(bias) = &adapted.bias {
                out.insert(format!("{name}.bias"), (vec![d_out], to_vec(bias.val())?));
            }
            Ok(())
        }
    }
}

fn put_layer_norm<B: Backend>(out: &mut Tensors, name: &str, norm: &LayerNorm<B>) -> Result<()> {
    let gamma = to_vec(norm.gamma.val())?;
    out.insert(format!("{name}.weight"), (vec![gamma.len()], gamma));
    if let Some(beta) = &norm.beta {
        let beta = to_vec(beta.val())?;
        out.insert(format!("{name}.bias"), (vec![beta.len()], beta));
    }
    Ok(())
}

/// Every tensor of `model` under its HF sequence-classification name.
fn dense_tensors<B: Backend>(
    model: &SequenceClassifier<B>,
    prefix: &str,
    weight: AdaptedWeight,
) -> Result<Tensors> {
    let mut out = Tensors::new();
    let embeddings = &model.encoder.embeddings;
    for (name, table) in [
        ("word_embeddings", &embeddings.word_embeddings),
        ("position_embeddings", &embeddings.position_embeddings),
        ("token_type_embeddings", &embeddings.token_type_embeddings),
    ] {
        let [rows, cols] = table.weight.dims();
        out.insert(
            format!("{prefix}embeddings.{name}.weight"),
            (vec![rows, cols], to_vec(table.weight.val())?),
        );
    }
    put_layer_norm(
        &mut out,
        &format!("{prefix}embeddings.LayerNorm"),
        &embeddings.layer_norm,
    )?;
    for name in model.encoder.linear_names() {
        let target = model
            .encoder
            .target(&name)
            .expect("linear_names lists the target slots");
        put_target(&mut out, &format!("{prefix}{name}"), target, weight)?;
    }
    for (index, layer) in model.encoder.layers.iter().enumerate() {
        let base = format!("{prefix}encoder.layer.{index}");
        put_layer_norm(
            &mut out,
            &format!("{base}.attention.output.LayerNorm"),
            &layer.attention.output.layer_norm,
        )?;
        put_layer_norm(
            &mut out,
            &format!("{base}.output.LayerNorm"),
            &layer.output.layer_norm,
        )?;
    }
    for (name, linear) in head_linears(model, prefix) {
        put_linear(&mut out, &name, linear)?;
    }
    Ok(out)
}

/// The head's linears under their HF sequence-classification names.
fn head_linears<'a, B: Backend>(
    model: &'a SequenceClassifier<B>,
    prefix: &str,
) -> Vec<(String, &'a Linear<B>)> {
    match &model.head {
        ClassifierHead::Bert(head) => vec![
            (format!("{prefix}pooler.dense"), &head.pooler.dense),
            ("classifier".into(), &head.classifier),
        ],
        ClassifierHead::Roberta(head) => vec![
            ("classifier.dense".into(), &head.dense),
            ("classifier.out_proj".into(), &head.out_proj),
        ],
    }
}

/// The HF name prefix of the base model inside a sequence classifier.
pub fn hf_prefix(architecture: Architecture) -> &'static str {
    match architecture {
        Architecture::Bert => "bert.",
        Architecture::Roberta => "roberta.",
    }
}

/// A trainable tensor of the adapters or the head: its PEFT/HF name, its parameter id, and its
/// value as Burn keeps it, 2-D (`[in, out]` weights, `[in, r]` / `[r, out]` factors, `[1, n]`
/// biases).
pub struct NamedParam<B: Backend> {
    pub name: String,
    pub id: ParamId,
    pub value: Tensor<B, 2>,
}

impl<B: Backend> NamedParam<B> {
    /// `tensor` (this parameter's value, or its gradient, in Burn's layout) as PEFT/HF store it:
    /// matrices transposed to `[out, in]` (`[r, in]` for lora_A, `[out, r]` for lora_B),
    /// biases as vectors.
    pub fn to_hf<C: Backend>(&self, tensor: Tensor<C, 2>) -> Result<(Vec<usize>, Vec<f32>)> {
        let [rows, cols] = tensor.dims();
        let values = to_vec(tensor)?;
        Ok(if self.name.ends_with(".bias") {
            (vec![rows * cols], values)
        } else {
            (vec![cols, rows], transpose(&values, rows, cols))
        })
    }
}

/// Every adapter factor and head linear of `model` (see [`NamedParam`]): for each adapted linear
/// `<prefix><linear>.lora_A.weight` and `.lora_B.weight` (L/s), then the head's weights and
/// biases under their HF sequence-classification names.
pub fn adapter_and_head_params<B: Backend>(model: &SequenceClassifier<B>) -> Vec<NamedParam<B>> {
    let prefix = match model.head {
        ClassifierHead::Bert(_) => hf_prefix(Architecture::Bert),
        ClassifierHead::Roberta(_) => hf_prefix(Architecture::Roberta),
    };
    let mut out = Vec::new();
    for name in model.encoder.linear_names() {
        if let Some(adapted) = model.encoder.target(&name).and_then(TargetLinear::adapted) {
            for (factor, param) in [("lora_A", &adapted.lora_a), ("lora_B", &adapted.lora_b)] {
                out.push(NamedParam {
                    name: format!("{prefix}{name}.{factor}.weight"),
                    id: param.id,
                    value: param.val(),
                });
            }
        }
    }
    for (name, linear) in head_linears(model, prefix) {
        out.push(NamedParam {
            name: format!("{name}.weight"),
            id: linear.weight.id,
            value: linear.weight.val(),
        });
        if let Some(bias) = &linear.bias {
            out.push(NamedParam {
                name: format!("{name}.bias"),
                id: bias.id,
                value: bias.val().unsqueeze(),
            });
        }
    }
    out
}

/// The values of [`adapter_and_head_params`] in PEFT's and HF's layouts.
pub fn adapter_and_head_tensors<B: Backend>(
    model: &SequenceClassifier<B>,
) -> Result<Vec<NamedTensor>> {
    adapter_and_head_params(model)
        .into_iter()
        .map(|p| {
            let (shape, values) = p.to_hf(p.value.clone())?;
            Ok((p.name, shape, values))
        })
        .collect()
}

/// The base model's `config.json` with the head recorded the way transformers reads it.
fn classifier_config(base: &PretrainedModel, head: HeadKind) -> Result<serde_json::Value> {
    let path = &base.files.config;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.clone(),
        source: e,
    })?;
    let object = config.as_object_mut().ok_or_else(|| Error::InvalidConfig {
        path: path.clone(),
        message: "config.json is not a JSON object".into(),
    })?;
    let architecture = match base.config.architecture {
        Architecture::Bert => "BertForSequenceClassification",
        Architecture::Roberta => "RobertaForSequenceClassification",
    };
    let outputs = head.num_outputs();
    object.insert("architectures".into(), serde_json::json!([architecture]));
    object.insert(
        "id2label".into(),
        (0..outputs)
            .map(|i| (i.to_string(), serde_json::json!(format!("LABEL_{i}"))))
            .collect(),
    );
    object.insert(
        "label2id".into(),
        (0..outputs)
            .map(|i| (format!("LABEL_{i}"), serde_json::json!(i)))
            .collect(),
    );
    if head == HeadKind::Regression {
        object.insert("problem_type".into(), "regression".into());
    } else {
        object.insert("problem_type".into(), "single_label_classification".into());
    }
    Ok(config)
}

/// Writes `model` merged to dense f32 into `out`: `model.safetensors`, `config.json` (the
/// base's, with the head) and `tokenizer.json`. The weights file appears only once complete.
pub fn export_merged<B: Backend>(
    model: &SequenceClassifier<B>,
    base: &PretrainedModel,
    head: HeadKind,
    out: &Path,
) -> Result<PathBuf> {
    let prefix = hf_prefix(base.config.architecture);
    let tensors = dense_tensors(model, prefix, AdaptedWeight::Merged)?;
    write_dense_folder(tensors, base, head, out)
}

/// `config.json` (the base's, with the head), `tokenizer.json` and, last and whole,
/// `model.safetensors` of `tensors` in `out`.
fn write_dense_folder(
    tensors: Tensors,
    base: &PretrainedModel,
    head: HeadKind,
    out: &Path,
) -> Result<PathBuf> {
    let tensors: Vec<NamedTensor> = tensors
        .into_iter()
        .map(|(name, (shape, values))| (name, shape, values))
        .collect();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let config = classifier_config(base, head)?;
    let config_path = out.join("config.json");
    let pretty = serde_json::to_string_pretty(&config).expect("a JSON value serializes");
    std::fs::write(&config_path, pretty).map_err(|e| Error::io(&config_path, e))?;
    let tokenizer = out.join("tokenizer.json");
    std::fs::copy(&base.files.tokenizer, &tokenizer)
        .map_err(|e| Error::io(&base.files.tokenizer, e))?;
    write_whole(&out.join("model.safetensors"), &tensors)
}

/// Writes `tensors` as a torch-flavoured safetensors file at `path`, which appears only once
/// complete.
fn write_whole(path: &Path, tensors: &[NamedTensor]) -> Result<PathBuf> {
    write_through_partial(path, |partial| {
        write_f32_tensors(partial, tensors, &[("format", "pt".to_string())])
    })?;
    Ok(path.to_path_buf())
}

/// The export formats of `qpeft export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// One dense HF model, the adapters merged.
    #[default]
    Dense,
    /// A PEFT LoRA adapter and its base (the dequantized Q model).
    Peft,
}

crate::named!(ExportFormat);

/// PEFT's prefix of every adapter tensor name (`PeftModel` → `LoraModel` → the HF model).
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The HF modules PEFT saves whole (`modules_to_save`): the head, and BERT's pooler (which the
/// head trains).
fn peft_modules_to_save(architecture: Architecture) -> Vec<&'static str> {
    match architecture {
        Architecture::Bert => vec!["classifier", "pooler"],
        Architecture::Roberta => vec!["classifier"],
    }
}

/// Writes `model` as a PEFT LoRA adapter in `out` (`adapter_config.json`,
/// `adapter_model.safetensors`) and the base it applies to in `out/base/` (the dequantized Q
/// model without its head, which the adapter carries); returns the adapter file's path.
pub fn export_peft<B: Backend>(
    model: &SequenceClassifier<B>,
    base: &PretrainedModel,
    head: HeadKind,
    out: &Path,
) -> Result<PathBuf> {
    let architecture = base.config.architecture;
    let prefix = hf_prefix(architecture);
    let mut adapted = Vec::new();
    for name in model.encoder.linear_names() {
        if let Some(layer) = model.encoder.target(&name).and_then(TargetLinear::adapted) {
            adapted.push((format!("{prefix}{name}"), layer.spec().clone()));
        }
    }
    let Some((_, spec)) = adapted.first() else {
        return Err(Error::Config(
            "the model has no adapter to export in the PEFT format".into(),
        ));
    };
    if let Some((name, other)) = adapted
        .iter()
        .find(|(_, s)| (s.rank, s.scale) != (spec.rank, spec.scale))
    {
        return Err(Error::Config(format!(
            "{name} has rank {} and scale {}, the first adapter rank {} and scale {}: PEFT's config holds one",
            other.rank, other.scale, spec.rank, spec.scale
        )));
    }
    let mut base_tensors = dense_tensors(model, prefix, AdaptedWeight::Base)?;
    for (name, _) in head_linears(model, prefix) {
        base_tensors.retain(|key, _| !key.starts_with(&format!("{name}.")));
    }
    write_dense_folder(base_tensors, base, head, &out.join("base"))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": out.join("base"),
        "r": spec.rank,
        "lora_alpha": spec.scale * spec.rank as f64,
        "lora_dropout": spec.dropout,
        "target_modules": adapted.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        "modules_to_save": peft_modules_to_save(architecture),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
    });
    let config_path = out.join("adapter_config.json");
    let pretty = serde_json::to_string_pretty(&config).expect("a JSON value serializes");
    std::fs::write(&config_path, pretty).map_err(|e| Error::io(&config_path, e))?;
    let tensors: Vec<NamedTensor> = adapter_and_head_tensors(model)?
        .into_iter()
        .map(|(name, shape, values)| (format!("{PEFT_PREFIX}{name}"), shape, values))
        .collect();
    write_whole(&out.join("adapter_model.safetensors"), &tensors)
}
