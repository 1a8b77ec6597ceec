//! What runs a model without training it, as library calls: a trained run's dev score
//! ([`evaluate_checkpoint`]), GLUE test-set submission files ([`predict_test`]), one input's
//! sentence embedding ([`embed`]), zero-shot STS-B similarity ([`zero_shot_sts`]) and a model's
//! architecture and parameter counts ([`inspect`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::kernels::Backend;
use burn::module::Module;
use burn_autodiff::Autodiff;
use serde::Serialize;

use super::run::{head_for, load_trained};
use crate::data::batch::{TokenizedSplit, default_cache_dir};
use crate::data::{Label, Split, Task, glue_dir, load};
use crate::device::{BackendTask, DeviceSpec};
use crate::error::{Error, Result};
use crate::eval::dev::evaluate_dev;
use crate::eval::metrics::{pearson, spearman};
use crate::eval::predict::{predict_split, write_submission};
use crate::eval::similarity::{Pooling, embed_texts, pair_cosines};
use crate::model::{HeadKind, ModelFiles, PretrainedModel, SequenceClassifier, TextInput};

/// A trained checkpoint's dev score (`qpeft eval --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointScore {
    /// The checkpoint folder scored.
    pub checkpoint: PathBuf,
    pub task: Task,
    pub main: f64,
    pub metrics: BTreeMap<&'static str, f64>,
}

/// Scores `checkpoint` (a run directory: its latest checkpoint) on its task's dev split(s),
/// with GLUE from `data_dir`, else the recipe's folder.
pub fn evaluate_checkpoint(
    checkpoint: &Path,
    data_dir: Option<&Path>,
    device: DeviceSpec,
) -> Result<CheckpointScore> {
    device.run(Evaluate {
        checkpoint,
        data_dir,
    })?
}

struct Evaluate<'a> {
    checkpoint: &'a Path,
    data_dir: Option<&'a Path>,
}

impl BackendTask for Evaluate<'_> {
    type Output = Result<CheckpointScore>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let trained = load_trained::<Autodiff<B>>(self.checkpoint, &device)?;
        let recipe = &trained.recipe;
        let task = recipe.task()?;
        let dir = glue_dir(self.data_dir.or(recipe.data.dir.as_deref()));
        let tokenizer = trained.base.tokenizer(recipe.train.max_length)?;
        let splits =
            TokenizedSplit::dev_splits(&dir, task, &tokenizer, Some(&default_cache_dir()))?;
        let score = evaluate_dev(
            &trained.model,
            task,
            &splits,
            recipe.train.eval_batch_size,
            recipe.train.mnli_main,
            &device,
        )?;
        Ok(CheckpointScore {
            checkpoint: trained.checkpoint,
            task,
            main: score.main,
            metrics: score.metrics,
        })
    }
}

/// The classifier whose test predictions are written.
#[derive(Debug, Clone)]
pub enum Classifier {
    /// A trained run directory (its latest checkpoint) or checkpoint folder.
    Checkpoint(PathBuf),
    /// A fine-tuned classifier model (an export) with its trained head, for `task`.
    Model { files: ModelFiles, task: Task },
}

/// How test predictions are made: truncation (models only; a checkpoint uses its recipe's),
/// batch size, and the folder for the submission files.
#[derive(Debug, Clone)]
pub struct PredictSpec {
    pub max_length: usize,
    pub batch_size: usize,
    pub out: PathBuf,
}

/// Writes the GLUE submission file of each test split of the classifier's task (MNLI: matched
/// and mismatched), with GLUE from `data_dir`; returns the files. `task`, if given, must be the
/// task a checkpoint was trained on.
pub fn predict_test(
    classifier: Classifier,
    task: Option<Task>,
    spec: &PredictSpec,
    data_dir: &Path,
    device: DeviceSpec,
) -> Result<Vec<PathBuf>> {
    device.run(Predict {
        classifier,
        task,
        spec,
        data_dir,
    })?
}

struct Predict<'a> {
    classifier: Classifier,
    task: Option<Task>,
    spec: &'a PredictSpec,
    data_dir: &'a Path,
}

impl BackendTask for Predict<'_> {
    type Output = Result<Vec<PathBuf>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let (model, tokenizer, task) = match self.classifier {
            Classifier::Checkpoint(path) => {
                let trained = load_trained::<Autodiff<B>>(&path, &device)?;
                let task = trained.recipe.task()?;
                if let Some(asked) = self.task.filter(|&t| t != task) {
                    return Err(Error::Config(format!(
                        "the checkpoint was trained on {task}, not {asked}"
                    )));
                }
                let tokenizer = trained.base.tokenizer(trained.recipe.train.max_length)?;
                (trained.model, tokenizer, task)
            }
            Classifier::Model { files, task } => {
                let location = files.weights.display().to_string();
                let pretrained = PretrainedModel::open(files)?;
                let head = head_for(task);
                if pretrained.config.head != head {
                    return Err(Error::Config(format!(
                        "{location} has a {} head, but {task} needs {head}: predict needs a \
                         model fine-tuned on {task}",
                        pretrained.config.head
                    )));
                }
                let (model, fresh) = pretrained.classifier::<B>(head, &device)?;
                if !fresh.is_empty() {
                    return Err(Error::Config(format!(
                        "{location} has no trained head ({} missing)",
                        fresh.join(", ")
                    )));
                }
                (model, pretrained.tokenizer(self.spec.max_length)?, task)
            }
        };
        let cache = default_cache_dir();
        let mut written = Vec::new();
        for &split in task.splits().iter().filter(|s| s.is_test()) {
            let dataset = load(self.data_dir, task, split)?;
            let tokenized = TokenizedSplit::new(&dataset, &tokenizer, Some(&cache))?;
            let predictions = predict_split(&model, &tokenized, self.spec.batch_size, &device)?;
            written.push(write_submission(
                &self.spec.out,
                task,
                split,
                &tokenized.ids,
                &predictions,
            )?);
        }
        Ok(written)
    }
}

/// One input's tokens and its pooled, L2-normalized sentence embedding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Embedding {
    pub tokens: Vec<String>,
    pub embedding: Vec<f32>,
}

/// The sentence embedding of `input`, truncated to `max_length` tokens.
pub fn embed(
    model: &PretrainedModel,
    input: &TextInput,
    pooling: Pooling,
    max_length: usize,
    device: DeviceSpec,
) -> Result<Embedding> {
    device.run(Embed {
        model,
        input,
        pooling,
        max_length,
    })?
}

struct Embed<'a> {
    model: &'a PretrainedModel,
    input: &'a TextInput,
    pooling: Pooling,
    max_length: usize,
}

impl BackendTask for Embed<'_> {
    type Output = Result<Embedding>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let tokenizer = self.model.tokenizer(self.max_length)?;
        let encoder = self.model.encoder::<B>(&device)?;
        let embeddings = embed_texts(
            &encoder,
            &tokenizer,
            std::slice::from_ref(self.input),
            self.pooling,
            1,
            &device,
        )?;
        Ok(Embedding {
            tokens: tokenizer.tokens(self.input)?,
            embedding: embeddings.into_iter().next().ok_or_else(|| {
                Error::Internal("embed_texts returned no embedding for one input".into())
            })?,
        })
    }
}

/// Zero-shot STS-B: the split, the pooling, and the cosine of each pair's embeddings with
/// Spearman and Pearson correlation against the gold scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StsScore {
    pub split: Split,
    pub pooling: Pooling,
    pub pairs: usize,
    pub spearman: f64,
    pub pearson: f64,
    pub cosines: Vec<f64>,
}

/// The cosine of the two sentences' `pooling` embeddings for every STS-B pair of `split` (from
/// `data_dir`), scored against the gold similarities.
pub fn zero_shot_sts(
    model: &PretrainedModel,
    split: Split,
    (pooling, max_length, batch_size): (Pooling, usize, usize),
    data_dir: &Path,
    device: DeviceSpec,
) -> Result<StsScore> {
    let dataset = load(data_dir, Task::Stsb, split)?;
    let mut pairs = Vec::with_capacity(dataset.examples.len());
    let mut gold = Vec::with_capacity(dataset.examples.len());
    for example in &dataset.examples {
        let (Some(second), Some(Label::Score(score))) = (&example.text_b, example.label) else {
            return Err(Error::InvalidData(format!(
                "{}:{}: an STS-B pair with a gold score was expected",
                dataset.path.display(),
                example.line
            )));
        };
        pairs.push((example.text_a.clone(), second.clone()));
        gold.push(f64::from(score));
    }
    let cosines = device.run(Cosines {
        model,
        pairs: &pairs,
        pooling,
        max_length,
        batch_size,
    })??;
    Ok(StsScore {
        split,
        pooling,
        pairs: pairs.len(),
        spearman: spearman(&cosines, &gold),
        pearson: pearson(&cosines, &gold),
        cosines,
    })
}

struct Cosines<'a> {
    model: &'a PretrainedModel,
    pairs: &'a [(String, String)],
    pooling: Pooling,
    max_length: usize,
    batch_size: usize,
}

impl BackendTask for Cosines<'_> {
    type Output = Result<Vec<f64>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let tokenizer = self.model.tokenizer(self.max_length)?;
        let encoder = self.model.encoder::<B>(&device)?;
        pair_cosines(
            &encoder,
            &tokenizer,
            self.pairs,
            self.pooling,
            self.batch_size,
            &device,
        )
    }
}

/// A model as `qpeft model inspect` shows it: its head, which head tensors the checkpoint
/// lacks, parameter counts and every linear layer with its `[out, in]` shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub head: HeadKind,
    /// Head tensors initialized fresh because the checkpoint has none.
    pub fresh: Vec<String>,
    pub embedding_parameters: usize,
    pub layer_parameters: usize,
    pub head_parameters: usize,
    pub linears: Vec<(String, [usize; 2])>,
}

/// Builds `model`'s classifier with its configured head and counts what it holds.
pub fn inspect(model: &PretrainedModel, device: DeviceSpec) -> Result<ModelSummary> {
    device.run(Inspect { model })?
}

struct Inspect<'a> {
    model: &'a PretrainedModel,
}

impl BackendTask for Inspect<'_> {
    type Output = Result<ModelSummary>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let head = self.model.config.head;
        let (classifier, fresh): (SequenceClassifier<B>, _) =
            self.model.classifier(head, &device)?;
        let linears = classifier
            .linear_names()
            .into_iter()
            .map(|name| {
                let linear = classifier.linear(&name).ok_or_else(|| {
                    Error::Internal(format!("listed linear layer {name} is missing"))
                })?;
                let [d_in, d_out] = linear.weight.dims();
                Ok((name, [d_out, d_in]))
            })
            .collect::<Result<_>>()?;
        Ok(ModelSummary {
            head,
            fresh: fresh.into_iter().map(str::to_string).collect(),
            embedding_parameters: classifier.encoder.embeddings.num_params(),
            layer_parameters: classifier
                .encoder
                .layers
                .iter()
                .map(Module::num_params)
                .sum(),
            head_parameters: classifier.head.num_params(),
            linears,
        })
    }
}
