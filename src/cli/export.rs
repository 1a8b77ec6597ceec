//! `qpeft export <checkpoint> --out DIR`: a trained run merged to a dense Hugging Face model
//! (every adapted layer W = deq(Q) + s·B·A), loadable by transformers or `--model DIR`.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use qpeft::adapters::export::export_merged;
use qpeft::device::BackendTask;
use qpeft::train::setup::{head_for, load_trained};

use super::DeviceArg;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A run directory (its latest checkpoint) or a checkpoint folder.
    pub checkpoint: PathBuf,
    /// The folder to write model.safetensors, config.json and tokenizer.json into.
    #[arg(long)]
    pub out: PathBuf,
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
        let path = export_merged(&trained.model, &trained.base, head, &self.args.out)?;
        println!(
            "wrote {} (merged from {})",
            path.display(),
            trained.checkpoint.display()
        );
        Ok(())
    }
}
