//! Pretrained encoders: configuration, weights, tokenizer and where they come from.

pub mod bert;
pub mod config;
pub mod hub;
pub mod tokenizer;
pub mod weights;

use crate::kernels::Backend;

pub use bert::{Encoder, EncoderInput, SequenceClassifier, encoder_input, first_token, mean_pool};
pub use config::{Architecture, EncoderConfig, HeadKind};
pub use hub::{DEFAULT_MODEL, HubOptions, ModelFiles, resolve_model};
pub use tokenizer::{EncodedBatch, TextInput, TextTokenizer, TokenizedRow, pad_rows};

use crate::error::Result;
use crate::formats::checkpoint::WeightFile;
use crate::formats::packed::ModelSource;
use weights::WeightScope;

/// A resolved model on the host: its config, weights and tokenizer, ready to build modules.
pub struct PretrainedModel {
    pub files: ModelFiles,
    pub config: EncoderConfig,
    pub weights: WeightFile,
}

impl PretrainedModel {
    pub fn open(files: ModelFiles) -> Result<Self> {
        let config = EncoderConfig::from_file(&files.config)?;
        let weights = WeightFile::open(&files.weights)?;
        Ok(PretrainedModel {
            files,
            config,
            weights,
        })
    }

    /// The weights and the files a quantized copy of this model keeps beside them.
    pub fn source(&self) -> ModelSource<'_> {
        ModelSource {
            weights: self.weights.tensors(),
            config: &self.files.config,
            tokenizer: &self.files.tokenizer,
        }
    }

    /// The tokenizer, truncating to `max_length` (capped by the position embeddings).
    pub fn tokenizer(&self, max_length: usize) -> Result<TextTokenizer> {
        TextTokenizer::from_file(
            &self.files.tokenizer,
            max_length.min(self.config.max_sequence_length()),
        )
    }

    /// The base encoder (no head).
    pub fn encoder<B: Backend>(&self, device: &B::Device) -> Result<Encoder<B>> {
        let prefix = self.weights.base_model_prefix()?;
        Encoder::load(
            &WeightScope::new(&self.weights, &prefix),
            &self.config,
            device,
        )
    }

    /// The encoder with a head for `head` (the checkpoint's own head if it has one), and
    /// the head layers that were initialized fresh.
    pub fn classifier<B: Backend>(
        &self,
        head: HeadKind,
        device: &B::Device,
    ) -> Result<(SequenceClassifier<B>, Vec<&'static str>)> {
        SequenceClassifier::load(&self.weights, &self.config, head, false, device)
    }

    /// The encoder with a freshly initialized task head for `head` (BERT keeps its
    /// pretrained pooler): what fine-tuning starts from.
    pub fn classifier_for_finetuning<B: Backend>(
        &self,
        head: HeadKind,
        device: &B::Device,
    ) -> Result<SequenceClassifier<B>> {
        Ok(SequenceClassifier::load(&self.weights, &self.config, head, true, device)?.0)
    }
}
