//! `qpeft predict`: GLUE test-set predictions of a classifier checkpoint, as submission files.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use qpeft::data::batch::{TokenizedSplit, default_cache_dir};
use qpeft::data::{Task, load};
use qpeft::device::BackendTask;
use qpeft::eval::predict::{predict_split, write_submission};
use qpeft::model::PretrainedModel;
use qpeft::pipeline::run::{head_for, load_trained};

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
    let written = args.device.device.run(Predict { args: &args })??;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

struct Predict<'a> {
    args: &'a PredictArgs,
}

impl BackendTask for Predict<'_> {
    type Output = anyhow::Result<Vec<PathBuf>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let args = self.args;
        let (model, tokenizer, task) = match &args.checkpoint {
            Some(path) => {
                let trained = load_trained::<Autodiff<B>>(path, &device)?;
                let task = trained.recipe.task()?;
                if args.task.is_some_and(|t| t != task) {
                    anyhow::bail!(
                        "the checkpoint was trained on {task}, not {}",
                        args.task.expect("checked")
                    );
                }
                let tokenizer = trained.base.tokenizer(trained.recipe.train.max_length)?;
                (trained.model, tokenizer, task)
            }
            None => {
                let task = args
                    .task
                    .context("--task is needed with --model (a checkpoint's recipe names it)")?;
                let pretrained = PretrainedModel::open(args.model.resolve()?)
                    .with_context(|| format!("loading model '{}'", args.model.model))?;
                let head = head_for(task);
                if pretrained.config.head != head {
                    anyhow::bail!(
                        "the checkpoint's head is {:?}, but {task} needs {head:?}: predict needs a model fine-tuned on {task}",
                        pretrained.config.head
                    );
                }
                let (model, fresh) = pretrained.classifier::<B>(head, &device)?;
                if !fresh.is_empty() {
                    anyhow::bail!(
                        "the checkpoint has no trained head ({} missing)",
                        fresh.join(", ")
                    );
                }
                (model, pretrained.tokenizer(args.max_length)?, task)
            }
        };
        let dir = args.data.dir();
        let cache = default_cache_dir();
        let mut written = Vec::new();
        for &split in task.splits().iter().filter(|s| s.is_test()) {
            let dataset = load(&dir, task, split)?;
            let tokenized = TokenizedSplit::new(&dataset, &tokenizer, Some(&cache))?;
            let predictions = predict_split(&model, &tokenized, args.batch_size, &device)?;
            written.push(write_submission(
                &args.out,
                task,
                split,
                &tokenized.ids,
                &predictions,
            )?);
        }
        Ok(written)
    }
}
