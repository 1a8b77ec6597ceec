//! `qpeft export <checkpoint> --out DIR [--format dense|peft]`: a trained run merged to a dense
//! Hugging Face model (every adapted layer W = deq(Q) + s·B·A), loadable by transformers or
//! `--model DIR`; or as a PEFT LoRA adapter with its base (the dequantized Q model).
//! `--requantize METHOD --bits B …`: the merged model re-quantized by a PTQ solver, with the
//! run's dev score before and after.

use std::path::PathBuf;

use qpeft::adapters::export::ExportFormat;
use qpeft::pipeline::export::{Exported, export_run, requantize_run};
use qpeft::quant::solve::QuantMethod;

use super::DeviceArg;
use super::quantize::{CalibArgs, QuantizerArgs, print_quantized};

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
    let device = args.device.device;
    let Some(method) = args.requantize else {
        let exported = export_run(&args.checkpoint, &args.out, args.format, device)?;
        print_export(&exported, args.format);
        return Ok(());
    };
    let (exported, outcome) = requantize_run(
        &args.checkpoint,
        args.quantizer.spec(method),
        |task| args.calib.spec_or(task.name()),
        args.eval_max_length,
        &args.calib.data.dir(),
        &args.out,
        device,
    )?;
    print_export(&exported, ExportFormat::Dense);
    print_quantized(&outcome);
    Ok(())
}

fn print_export(exported: &Exported, format: ExportFormat) {
    println!(
        "wrote {} ({format} export of {})",
        exported.path.display(),
        exported.checkpoint.display()
    );
}
