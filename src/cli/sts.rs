//! `qpeft sts`: a model's zero-shot sentence similarity on STS-B — the cosine of the two
//! sentences' pooled embeddings against the gold scores (Spearman and Pearson), which shows
//! how much of the model a quantized or initialized checkpoint keeps before training.

use anyhow::Context;
use qpeft::data::Split;
use qpeft::eval::similarity::Pooling;
use qpeft::model::PretrainedModel;
use qpeft::pipeline::infer::zero_shot_sts;

use super::data::DataDirArg;
use super::{DeviceArg, ModelArg, print_with_model};

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
    let pretrained = PretrainedModel::open(args.model.resolve()?)
        .with_context(|| format!("loading model '{}'", args.model.model))?;
    let score = zero_shot_sts(
        &pretrained,
        args.split,
        (args.pooling, args.max_length, args.batch_size),
        &args.data.dir(),
        args.device.device,
    )?;
    if args.json {
        print_with_model(&args.model.model, &score)?;
    } else {
        println!(
            "{} STS-B {} ({} pairs), cosine of {}-pooled embeddings: Spearman {:.2}, Pearson {:.2}",
            args.model.model,
            score.split,
            score.pairs,
            score.pooling,
            100.0 * score.spearman,
            100.0 * score.pearson
        );
    }
    Ok(())
}
