//! `qpeft init`: flags → [`InitSpec`] → [`build_init`] → a printed summary. The init
//! checkpoint holds Q and the adapters of QLoRA, LoftQ, the QER family, LQ-LoRA or SRR.

use std::path::PathBuf;

use anyhow::Context;
use qpeft::model::PretrainedModel;
use qpeft::pipeline::init::{InitSpec, build_init};
use qpeft::quant::solve::QuantMethod;
use qpeft::reconstruct::init::{InitName, KRule};
use qpeft::reconstruct::lowrank::FactorSplit;

use super::quantize::{CalibArgs, QuantizerArgs};
use super::{DeviceArg, ModelArg};

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[arg(long)]
    pub init: InitName,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA α: the adapter is scaled by α/r (stored lora_B = L·r/α).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// SRR's split of the rank: probe (the paper), prerelease, exact (try every k), or k.
    #[arg(long, default_value = "probe")]
    pub k_rule: KRule,
    /// SRR: refit all r components on W − Q_k after quantizing the residual.
    #[arg(long)]
    pub joint_refit: bool,
    /// LoftQ's alternating iterations T.
    #[arg(long, default_value_t = 5)]
    pub loftq_iters: usize,
    /// LQER: the maximum over batches of the batch-mean |x| (QERA's code) instead of the mean.
    #[arg(long)]
    pub lqer_batch_max: bool,
    /// How singular values are shared between L and R (default: sqrt, for every method).
    #[arg(long)]
    pub factor_split: Option<FactorSplit>,
    /// The base quantizer of Q (or of SRR's residual).
    #[arg(long, default_value = "rtn")]
    pub quantizer: QuantMethod,
    #[command(flatten)]
    pub quant: QuantizerArgs,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Output directory for the init checkpoint and report.json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
}

impl InitArgs {
    /// The spec these flags describe.
    pub fn spec(&self) -> InitSpec {
        InitSpec {
            init: self.init,
            rank: self.rank,
            lora_alpha: self.lora_alpha,
            k_rule: self.k_rule,
            joint_refit: self.joint_refit,
            loftq_iters: self.loftq_iters,
            lqer_batch_max: self.lqer_batch_max,
            factor_split: self.factor_split,
            quantizer: self.quant.spec(self.quantizer),
            calibration: self.calib.spec(),
        }
    }
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let spec = args.spec();
    let model = PretrainedModel::open(args.model.resolve()?)
        .with_context(|| format!("loading model '{}'", args.model.model))?;
    let outcome = build_init(
        &model,
        &spec,
        &args.calib.data.dir(),
        &args.out,
        args.device.device,
    )?;
    println!("{}", outcome.summary_line(&spec));
    println!(
        "wrote {} and {}",
        outcome.checkpoint.display(),
        outcome.json.display()
    );
    Ok(())
}
