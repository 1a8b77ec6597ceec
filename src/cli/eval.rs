//! `qpeft eval <checkpoint>`: a trained run's dev metrics, from a run directory (its latest
//! checkpoint) or one of its checkpoints.

use std::path::PathBuf;

use qpeft::pipeline::infer::evaluate_checkpoint;

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
    let score = evaluate_checkpoint(
        &args.checkpoint,
        args.data_dir.as_deref(),
        args.device.device,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&score)?);
    } else {
        let metrics: Vec<String> = score
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        println!(
            "{} dev {:.4} ({}) — {}",
            score.task,
            score.main,
            metrics.join(", "),
            score.checkpoint.display()
        );
    }
    Ok(())
}
