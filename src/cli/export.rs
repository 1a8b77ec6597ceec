//! `qpeft export <checkpoint> --out DIR [--format dense|peft]`: a trained run merged to a dense
//! Hugging Face model (every adapted layer W = deq(Q) + s·B·A), loadable by transformers or
//! `--model DIR`; or as a PEFT LoRA adapter with its base (the dequantized Q model).

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use qpeft::adapters::export::{ExportFormat, export_merged, export_peft};
use qpeft::device::BackendTask;
use qpeft::train::setup::{head_for, load_trained};

use super::DeviceArg;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A run directory (its latest checkpoint) or a checkpoint folder.
    pub checkpoint: PathBuf,
    /// The folder to write into: model.safetensors, config.json and tokenizer.json (dense), or
    /// adapter_config.json, adapter_model.safetensors and base/ (peft).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = ExportFormat::Dense)]
    pub format: ExportFormat,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    args.device.device.run(Export { args: &args })?
}

struct Export<'a> {
    args: &'a ExportArgs,
}

impl BackendTask for Export<'_> {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let trained = load_trained::<Autodiff<B>>(&self.args.checkpoint, &device)?;
        let head = head_for(trained.recipe.task()?);
        let path = match self.args.format {
            ExportFormat::Dense => {
                export_merged(&trained.model, &trained.base, head, &self.args.out)?
            }
            ExportFormat::Peft => export_peft(&trained.model, &trained.base, head, &self.args.out)?,
        };
        println!(
            "wrote {} ({} export of {})",
            path.display(),
            self.args.format,
            trained.checkpoint.display()
        );
        Ok(())
    }
}
