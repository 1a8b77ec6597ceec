//! `qpeft embed`: run the encoder on one input and print its sentence embedding.

use anyhow::Context;
use qpeft::eval::similarity::Pooling;
use qpeft::model::{PretrainedModel, TextInput};
use qpeft::pipeline::infer::embed;

use super::{DeviceArg, ModelArg, print_with_model};

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// The sentence to encode.
    pub text: String,
    /// A second sentence, encoded with the first as a pair (token type 1).
    pub pair: Option<String>,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Truncate the input to this many tokens.
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    /// The sentence embedding: mean (of the token states) or cls (the first token's state).
    #[arg(long, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Print the whole embedding as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let pretrained = PretrainedModel::open(args.model.resolve()?)
        .with_context(|| format!("loading model '{}'", args.model.model))?;
    let input = match &args.pair {
        Some(pair) => TextInput::pair(&args.text, pair),
        None => TextInput::single(&args.text),
    };
    let embedded = embed(
        &pretrained,
        &input,
        args.pooling,
        args.max_length,
        args.device.device,
    )?;
    if args.json {
        print_with_model(&args.model.model, &embedded)?;
    } else {
        let norm = embedded.embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        println!("model      {}", args.model.model);
        println!("device     {}", args.device.device);
        println!(
            "tokens     {} [{}]",
            embedded.tokens.len(),
            embedded.tokens.join(" ")
        );
        let head: Vec<String> = embedded
            .embedding
            .iter()
            .take(8)
            .map(|v| format!("{v:+.5}"))
            .collect();
        println!(
            "embedding  dim {} ({} pooled, L2-normalized), norm {norm:.6}, first 8: [{}]",
            embedded.embedding.len(),
            args.pooling,
            head.join(", ")
        );
    }
    Ok(())
}
