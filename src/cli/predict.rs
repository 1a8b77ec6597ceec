//! `qpeft predict`: flags → [`PredictSpec`] → [`predict_test`]: GLUE test-set predictions of a
//! classifier checkpoint, as submission files.

use std::path::PathBuf;

use anyhow::Context;
use qpeft::data::Task;
use qpeft::pipeline::infer::{Classifier, PredictSpec, predict_test};

use super::data::DataDirArg;
use super::{DeviceArg, ModelArg};

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// A trained run directory (its latest checkpoint) or checkpoint folder; without it,
    /// --model names a fine-tuned classifier.
    pub checkpoint: Option<PathBuf>,
    /// The task whose test split(s) to predict (MNLI: matched and mismatched); a checkpoint's
    /// recipe names it.
    #[arg(long)]
    pub task: Option<Task>,
    /// Folder for the submission files.
    #[arg(long, default_value = "predictions")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub data: DataDirArg,
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let classifier = match args.checkpoint {
        Some(path) => Classifier::Checkpoint(path),
        None => Classifier::Model {
            files: args.model.resolve()?,
            task: args
                .task
                .context("--task is needed with --model (a checkpoint's recipe names it)")?,
        },
    };
    let spec = PredictSpec {
        max_length: args.max_length,
        batch_size: args.batch_size,
        out: args.out,
    };
    let written = predict_test(
        classifier,
        args.task,
        &spec,
        &args.data.dir(),
        args.device.device,
    )?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}
