//! The encoder configuration, read from a Hugging Face `config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Encoder architectures qpeft can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Bert,
    Roberta,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::Roberta => "roberta",
        }
    }
}

/// What the classification head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// `num_labels` logits, trained with cross-entropy.
    Classification { num_labels: usize },
    /// One output, trained with mean squared error (STS-B).
    Regression,
}

/// `classification (N labels)` or `regression`.
impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadKind::Classification { num_labels } => {
                write!(f, "classification ({num_labels} labels)")
            }
            HeadKind::Regression => f.write_str("regression"),
        }
    }
}

impl HeadKind {
    pub fn num_outputs(self) -> usize {
        match self {
            HeadKind::Classification { num_labels } => num_labels,
            HeadKind::Regression => 1,
        }
    }
}

/// The fields of `config.json` that define a BERT or RoBERTa encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classifier; HF falls back to `hidden_dropout_prob`.
    pub classifier_dropout: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: usize,
    /// Head described by the checkpoint's config (`num_labels`/`id2label`, `problem_type`).
    pub head: HeadKind,
}

/// The raw JSON, before validation.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    attention_probs_dropout_prob: f64,
    classifier_dropout: Option<f64>,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: usize,
    position_embedding_type: Option<String>,
    num_labels: Option<usize>,
    id2label: Option<BTreeMap<String, String>>,
    problem_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl EncoderConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates a `config.json` text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| Error::InvalidConfig {
            path: path.to_path_buf(),
            message,
        };
        let architecture = match raw.model_type.as_deref() {
            Some("bert") => Architecture::Bert,
            Some("roberta") => Architecture::Roberta,
            other => {
                return Err(invalid(format!(
                    "model_type {other:?} is not supported (expected \"bert\" or \"roberta\")"
                )));
            }
        };
        // HF's "gelu" is the exact erf form; the tanh approximation would shift outputs.
        if raw.hidden_act != "gelu" {
            return Err(invalid(format!(
                "hidden_act {:?} is not supported (expected \"gelu\")",
                raw.hidden_act
            )));
        }
        if let Some(kind) = raw.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            return Err(invalid(format!(
                "position_embedding_type {kind:?} is not supported (expected \"absolute\")"
            )));
        }
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        if raw.pad_token_id >= raw.vocab_size {
            return Err(invalid(format!(
                "pad_token_id {} is outside the vocabulary of {}",
                raw.pad_token_id, raw.vocab_size
            )));
        }
        let classifier_dropout = raw.classifier_dropout.unwrap_or(raw.hidden_dropout_prob);
        for (key, prob) in [
            ("hidden_dropout_prob", raw.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                raw.attention_probs_dropout_prob,
            ),
            ("classifier_dropout", classifier_dropout),
        ] {
            if !(0.0..1.0).contains(&prob) {
                return Err(invalid(format!("{key} {prob} is outside [0, 1)")));
            }
        }
        let num_labels = raw
            .num_labels
            .or_else(|| raw.id2label.as_ref().map(BTreeMap::len))
            .unwrap_or(2);
        let head = match raw.problem_type.as_deref() {
            Some("regression") => HeadKind::Regression,
            _ if num_labels == 1 => HeadKind::Regression,
            _ => HeadKind::Classification { num_labels },
        };
        Ok(EncoderConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_dropout_prob: raw.hidden_dropout_prob,
            attention_probs_dropout_prob: raw.attention_probs_dropout_prob,
            classifier_dropout,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
            pad_token_id: raw.pad_token_id,
            head,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Longest sequence the position embeddings allow (RoBERTa reserves `pad + 1` slots).
    pub fn max_sequence_length(&self) -> usize {
        match self.architecture {
            Architecture::Bert => self.max_position_embeddings,
            Architecture::Roberta => self.max_position_embeddings - self.pad_token_id - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"architectures":["BertModel"],"attention_probs_dropout_prob":0.1,
        "hidden_act":"gelu","hidden_dropout_prob":0.1,"hidden_size":384,"initializer_range":0.02,
        "intermediate_size":1536,"layer_norm_eps":1e-12,"max_position_embeddings":512,
        "model_type":"bert","num_attention_heads":12,"num_hidden_layers":6,"pad_token_id":0,
        "position_embedding_type":"absolute","type_vocab_size":2,"vocab_size":30522}"#;

    #[test]
    fn reads_minilm_config() {
        let cfg = EncoderConfig::from_json(MINILM, Path::new("config.json")).unwrap();
        assert_eq!(cfg.architecture, Architecture::Bert);
        assert_eq!(cfg.head_dim(), 32);
        assert_eq!(cfg.head, HeadKind::Classification { num_labels: 2 });
        assert_eq!(cfg.classifier_dropout, 0.1);
        assert_eq!(cfg.max_sequence_length(), 512);
    }

    #[test]
    fn regression_from_problem_type_or_one_label() {
        let one = MINILM.replace("\"vocab_size\"", "\"num_labels\":1,\"vocab_size\"");
        let cfg = EncoderConfig::from_json(&one, Path::new("c.json")).unwrap();
        assert_eq!(cfg.head, HeadKind::Regression);
        let three = MINILM.replace(
            "\"vocab_size\"",
            "\"id2label\":{\"0\":\"a\",\"1\":\"b\",\"2\":\"c\"},\"vocab_size\"",
        );
        let cfg = EncoderConfig::from_json(&three, Path::new("c.json")).unwrap();
        assert_eq!(cfg.head, HeadKind::Classification { num_labels: 3 });
    }

    #[test]
    fn rejects_unsupported_settings_naming_the_key() {
        let tanh = MINILM.replace("\"gelu\"", "\"gelu_new\"");
        let err = EncoderConfig::from_json(&tanh, Path::new("x/config.json")).unwrap_err();
        assert!(err.to_string().contains("x/config.json"), "{err}");
        assert!(err.to_string().contains("hidden_act"), "{err}");
        let gpt = MINILM.replace("\"bert\"", "\"gpt2\"");
        let err = EncoderConfig::from_json(&gpt, Path::new("config.json")).unwrap_err();
        assert!(err.to_string().contains("model_type"), "{err}");
        let heads = MINILM.replace("\"num_attention_heads\":12", "\"num_attention_heads\":7");
        assert!(EncoderConfig::from_json(&heads, Path::new("c")).is_err());
    }
}
