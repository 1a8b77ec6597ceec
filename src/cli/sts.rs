//! `qpeft sts`: a model's zero-shot sentence similarity on STS-B — the cosine of the two
//! sentences' pooled embeddings against the gold scores (Spearman and Pearson), which shows
//! how much of the model a quantized or initialized checkpoint keeps before training.

use anyhow::Context;
use burn::tensor::backend::Backend;
use qpeft::data::{Label, Split, Task, load};
use qpeft::device::BackendTask;
use qpeft::eval::metrics::{pearson, spearman};
use qpeft::eval::similarity::{Pooling, pair_cosines};
use qpeft::model::PretrainedModel;

use super::data::DataDirArg;
use super::{DeviceArg, ModelArg};

#[derive(clap::Args, Debug)]
pub struct StsArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// The STS-B split with gold scores: dev or train.
    #[arg(long, default_value = "dev")]
    pub split: Split,
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// The sentence embedding: mean (of the token states; how all-MiniLM-L6-v2 is trained) or
    /// cls (the first token's state, which a classifier head reads).
    #[arg(long, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Print the scores and every pair's cosine as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub data: DataDirArg,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: StsArgs) -> anyhow::Result<()> {
    let dataset = load(&args.data.dir(), Task::Stsb, args.split)?;
    let mut pairs = Vec::with_capacity(dataset.examples.len());
    let mut gold = Vec::with_capacity(dataset.examples.len());
    for example in &dataset.examples {
        let (Some(second), Some(Label::Score(score))) = (&example.text_b, example.label) else {
            anyhow::bail!(
                "{}:{}: an STS-B pair with a gold score was expected",
                dataset.path.display(),
                example.line
            );
        };
        pairs.push((example.text_a.clone(), second.clone()));
        gold.push(f64::from(score));
    }
    let pretrained = PretrainedModel::open(args.model.resolve()?)
        .with_context(|| format!("loading model '{}'", args.model.model))?;
    let cosines = args.device.device.run(Cosines {
        pretrained: &pretrained,
        pairs: &pairs,
        pooling: args.pooling,
        max_length: args.max_length,
        batch_size: args.batch_size,
    })??;
    let (spearman, pearson) = (spearman(&cosines, &gold), pearson(&cosines, &gold));
    if args.json {
        let json = serde_json::json!({
            "model": args.model.model,
            "split": args.split.to_string(),
            "pooling": args.pooling.name(),
            "pairs": pairs.len(),
            "spearman": spearman,
            "pearson": pearson,
            "cosines": cosines,
        });
        println!("{json}");
    } else {
        println!(
            "{} STS-B {} ({} pairs), cosine of {}-pooled embeddings: Spearman {:.2}, Pearson {:.2}",
            args.model.model,
            args.split,
            pairs.len(),
            args.pooling,
            100.0 * spearman,
            100.0 * pearson
        );
    }
    Ok(())
}

struct Cosines<'a> {
    pretrained: &'a PretrainedModel,
    pairs: &'a [(String, String)],
    pooling: Pooling,
    max_length: usize,
    batch_size: usize,
}

impl BackendTask for Cosines<'_> {
    type Output = anyhow::Result<Vec<f64>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let tokenizer = self.pretrained.tokenizer(self.max_length)?;
        let encoder = self.pretrained.encoder::<B>(&device)?;
        Ok(pair_cosines(
            &encoder,
            &tokenizer,
            self.pairs,
            self.pooling,
            self.batch_size,
            &device,
        )?)
    }
}
