//! `qpeft predict`: GLUE test-set predictions of a classifier checkpoint, as submission files.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::Backend;
use qpeft::data::batch::{TokenizedSplit, default_cache_dir};
use qpeft::data::{Task, load};
use qpeft::device::BackendTask;
use qpeft::eval::predict::{predict_split, write_submission};
use qpeft::model::{HeadKind, PretrainedModel};

use super::data::DataDirArg;
use super::{DeviceArg, ModelArg};

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// The task whose test split(s) to predict (MNLI: matched and mismatched).
    #[arg(long)]
    pub task: Task,
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
    let pretrained = PretrainedModel::open(args.model.resolve()?)
        .with_context(|| format!("loading model '{}'", args.model.model))?;
    let written = args.device.device.run(Predict {
        pretrained: &pretrained,
        args: &args,
    })??;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

struct Predict<'a> {
    pretrained: &'a PretrainedModel,
    args: &'a PredictArgs,
}

impl BackendTask for Predict<'_> {
    type Output = anyhow::Result<Vec<PathBuf>>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let args = self.args;
        let task = args.task;
        let head = match task.num_outputs() {
            1 => HeadKind::Regression,
            n => HeadKind::Classification { num_labels: n },
        };
        if self.pretrained.config.head != head {
            anyhow::bail!(
                "the checkpoint's head is {:?}, but {task} needs {head:?}: predict needs a model fine-tuned on {task}",
                self.pretrained.config.head
            );
        }
        let (model, fresh) = self.pretrained.classifier::<B>(head, &device)?;
        if !fresh.is_empty() {
            anyhow::bail!(
                "the checkpoint has no trained head ({} missing)",
                fresh.join(", ")
            );
        }
        let tokenizer = self.pretrained.tokenizer(args.max_length)?;
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
