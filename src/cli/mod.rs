//! Command tree and dispatch; each subcommand lives in its own file.

mod bench;
mod data;
mod embed;
mod eval;
mod export;
mod glue;
mod init;
mod model;
mod predict;
mod quantize;
mod sts;
mod train;

use clap::{Parser, Subcommand};
use qpeft::device::DeviceSpec;
use qpeft::model::{DEFAULT_MODEL, HubOptions, ModelFiles, resolve_model};

/// Quantized parameter-efficient fine-tuning (QPEFT) of transformer encoders.
#[derive(Parser, Debug)]
#[command(name = "qpeft", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fetch and inspect pretrained models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Encode a sentence (or a sentence pair) and print its embedding.
    Embed(embed::EmbedArgs),
    /// Score a model's zero-shot sentence similarity on STS-B (cosine of pooled embeddings
    /// against the gold scores).
    Sts(sts::StsArgs),
    /// Fetch and verify the GLUE data.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Write GLUE test-set submission files with a fine-tuned classifier.
    Predict(predict::PredictArgs),
    /// Quantize every encoder linear layer (post-training, with calibration).
    Quantize(quantize::QuantizeArgs),
    /// Quantize every encoder linear layer and initialize its low-rank adapters (QLoRA,
    /// LoftQ, ZeroQuant-V2, LQER, QERA, LQ-LoRA, SRR).
    Init(init::InitArgs),
    /// Fine-tune a quantized model with low-rank adapters from a recipe file (QPEFT).
    Train(train::TrainArgs),
    /// Score a trained run (or one of its checkpoints) on the task's dev split(s).
    Eval(eval::EvalArgs),
    /// Export a trained run: a dense Hugging Face model (adapters merged) or a PEFT adapter and its base.
    Export(export::ExportArgs),
    /// Time the training step, the evaluation pass or a PTQ solver on synthetic data.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run the GLUE comparison: one fine-tuning run per initialization and task, then the table.
    Glue(glue::GlueArgs),
}

/// `--model`, shared by every command that loads one.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArg {
    /// A local model directory, or a Hugging Face hub id resolved through the hub cache.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
}

impl ModelArg {
    pub fn resolve(&self) -> anyhow::Result<ModelFiles> {
        Ok(resolve_model(&self.model, &HubOptions::from_env())?)
    }
}

/// `--device`, shared by every command that computes.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArg {
    /// Where to compute: cpu (burn-flex), ndarray (the CPU with burn-ndarray), cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Model(command) => model::run(command),
        Command::Embed(args) => embed::run(args),
        Command::Sts(args) => sts::run(args),
        Command::Data(command) => data::run(command),
        Command::Predict(args) => predict::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Init(args) => init::run(args),
        Command::Train(args) => train::run(args),
        Command::Glue(args) => glue::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Export(args) => export::run(args),
    }
}

/// Prints `report` as one JSON object with the model's name first.
fn print_with_model(model: &str, report: &impl serde::Serialize) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct WithModel<'a, T> {
        model: &'a str,
        #[serde(flatten)]
        report: &'a T,
    }
    println!("{}", serde_json::to_string(&WithModel { model, report })?);
    Ok(())
}
