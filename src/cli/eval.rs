//! `qpeft eval <checkpoint>`: a trained run's dev metrics, from a run directory (its latest
//! checkpoint) or one of its checkpoints.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use qpeft::data::batch::{TokenizedSplit, default_cache_dir};
use qpeft::data::glue_dir;
use qpeft::device::BackendTask;
use qpeft::eval::dev::evaluate_dev;
use qpeft::pipeline::run::load_trained;

use super::DeviceArg;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A run directory (its latest checkpoint) or a checkpoint folder.
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    args.device.device.run(Eval { args: &args })?
}

struct Eval<'a> {
    args: &'a EvalArgs,
}

impl BackendTask for Eval<'_> {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let trained = load_trained::<Autodiff<B>>(&self.args.checkpoint, &device)?;
        let recipe = &trained.recipe;
        let task = recipe.task()?;
        let dir = glue_dir(self.args.data_dir.as_deref().or(recipe.data.dir.as_deref()));
        let tokenizer = trained.base.tokenizer(recipe.train.max_length)?;
        let cache = default_cache_dir();
        let splits = TokenizedSplit::dev_splits(&dir, task, &tokenizer, Some(&cache))?;
        let score = evaluate_dev(
            &trained.model,
            task,
            &splits,
            recipe.train.eval_batch_size,
            recipe.train.mnli_main,
            &device,
        )?;
        if self.args.json {
            println!(
                "{}",
                serde_json::json!({
                    "checkpoint": trained.checkpoint,
                    "task": task.name(),
                    "main": score.main,
                    "metrics": score.metrics,
                })
            );
        } else {
            let metrics: Vec<String> = score
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            println!(
                "{task} dev {:.4} ({}) — {}",
                score.main,
                metrics.join(", "),
                trained.checkpoint.display()
            );
        }
        Ok(())
    }
}
