//! `qpeft embed`: run the encoder on one input and print its sentence embedding.

use anyhow::Context;
use burn::tensor::backend::Backend;
use qpeft::device::BackendTask;
use qpeft::eval::similarity::{Pooling, embed_texts};
use qpeft::model::{PretrainedModel, TextInput};

use super::{DeviceArg, ModelArg};

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
    let embedded = args.device.device.run(Embed {
        pretrained: &pretrained,
        input: &input,
        pooling: args.pooling,
        max_length: args.max_length,
    })??;
    if args.json {
        let json = serde_json::json!({
            "model": args.model.model,
            "tokens": embedded.tokens,
            "embedding": embedded.embedding,
        });
        println!("{json}");
    } else {
        let norm = embedded.embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        println!("model      {}", args.model.model);
        println!("device     {}", args.device.device);
        println!("tokens     {} {:?}", embedded.tokens.len(), embedded.tokens);
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

struct Embedded {
    tokens: Vec<String>,
    embedding: Vec<f32>,
}

struct Embed<'a> {
    pretrained: &'a PretrainedModel,
    input: &'a TextInput,
    pooling: Pooling,
    max_length: usize,
}

impl BackendTask for Embed<'_> {
    type Output = anyhow::Result<Embedded>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let tokenizer = self.pretrained.tokenizer(self.max_length)?;
        let encoder = self.pretrained.encoder::<B>(&device)?;
        let mut embeddings = embed_texts(
            &encoder,
            &tokenizer,
            std::slice::from_ref(self.input),
            self.pooling,
            1,
            &device,
        )?;
        Ok(Embedded {
            tokens: tokenizer.tokens(self.input)?,
            embedding: embeddings.pop().expect("one embedding per input"),
        })
    }
}
