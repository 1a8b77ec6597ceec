//! `qpeft export <checkpoint> --out DIR [--format dense|peft]`: a trained run merged to a dense
//! Hugging Face model (every adapted layer W = deq(Q) + s·B·A), loadable by transformers or
//! `--model DIR`; or as a PEFT LoRA adapter with its base (the dequantized Q model).
//! `--requantize METHOD --bits B …`: the merged model re-quantized by a PTQ solver, with the
//! run's dev score before and after.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use qpeft::adapters::export::{ExportFormat, export_merged, export_peft};
use qpeft::data::Task;
use qpeft::device::BackendTask;
use qpeft::pipeline::run::{head_for, load_trained};
use qpeft::quant::solve::QuantMethod;

use super::quantize::{CalibArgs, QuantizeArgs, QuantizerArgs};
use super::{DeviceArg, ModelArg};

/// Where `--requantize` keeps the merged dense model it quantizes (and scores as "before").
const MERGED_DIR: &str = "merged";

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A run directory (its latest checkpoint) or a checkpoint folder.
    pub checkpoint: PathBuf,
    /// The folder to write into: model.safetensors, config.json and tokenizer.json (dense), or
    /// adapter_config.json, adapter_model.safetensors and base/ (peft); with --requantize, the
    /// quantized model, report.json, report.md and the merged model in merged/.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = ExportFormat::Dense)]
    pub format: ExportFormat,
    /// Merge the adapters, then re-quantize every encoder linear of the merged model with this
    /// PTQ method (the quantizer flags below, calibrated on --calib, by default the run's own
    /// task) and score the run's task on dev before and after.
    #[arg(long, value_name = "METHOD", conflicts_with = "format")]
    pub requantize: Option<QuantMethod>,
    #[command(flatten)]
    pub quantizer: QuantizerArgs,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Truncation length of the --requantize dev examples.
    #[arg(long, default_value_t = 128)]
    pub eval_max_length: usize,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let Some(method) = args.requantize else {
        args.device.device.run(Export {
            checkpoint: &args.checkpoint,
            out: &args.out,
            format: args.format,
        })??;
        return Ok(());
    };
    let merged = args.out.join(MERGED_DIR);
    let task = args.device.device.run(Export {
        checkpoint: &args.checkpoint,
        out: &merged,
        format: ExportFormat::Dense,
    })??;
    let mut calib = args.calib;
    calib.calib.get_or_insert_with(|| task.name().to_string());
    super::quantize::run(QuantizeArgs {
        method,
        quantizer: args.quantizer,
        calib,
        out: args.out,
        eval: Some(task),
        eval_max_length: args.eval_max_length,
        model: ModelArg {
            model: merged.to_string_lossy().into_owned(),
        },
        device: args.device,
    })
}

/// Writes the export; gives the run's task.
struct Export<'a> {
    checkpoint: &'a Path,
    out: &'a Path,
    format: ExportFormat,
}

impl BackendTask for Export<'_> {
    type Output = anyhow::Result<Task>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let trained = load_trained::<Autodiff<B>>(self.checkpoint, &device)?;
        let task = trained.recipe.task()?;
        let head = head_for(task);
        let path = match self.format {
            ExportFormat::Dense => export_merged(&trained.model, &trained.base, head, self.out)?,
            ExportFormat::Peft => export_peft(&trained.model, &trained.base, head, self.out)?,
        };
        println!(
            "wrote {} ({} export of {})",
            path.display(),
            self.format,
            trained.checkpoint.display()
        );
        Ok(task)
    }
}
