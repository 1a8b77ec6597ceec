//! `qpeft quantize`: post-training quantization of every encoder linear layer with
//! two-stream calibration, writing a quantized model directory and a report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::ValueEnum;
use qpeft::data::{Split, Task, load};
use qpeft::device::BackendTask;
use qpeft::model::{PretrainedModel, TextInput, encoder_input};
use qpeft::quant::calib::calibrate;
use qpeft::quant::checkpoint::{FORMAT_VERSION, QuantMetadata, write_quantized_model};
use qpeft::quant::coreq::AlphaMode;
use qpeft::quant::gptq::{GptaqFlush, GptqConfig};
use qpeft::quant::grid::{Bits, GridSpec, MseSearch, UniformKind};
use qpeft::quant::layer::Grouping;
use qpeft::quant::solve::{Method, MethodSolver};
use qpeft::seed::substream_rng;
use rand::seq::SliceRandom;
use serde_json::json;

use super::data::DataDirArg;
use super::{DeviceArg, ModelArg};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MethodArg {
    Rtn,
    Gptq,
    Gptaq,
    Coreq,
    Kcoreq,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GridArg {
    /// Asymmetric min–max (§1.1).
    Asym,
    /// GPTQ-style symmetric (§1.2).
    Sym,
    /// QuaRot-style symmetric (§1.3).
    Quarot,
    /// MXINT, power-of-two exponent per group (§1.6; use with --group 32).
    Mxint,
}

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    #[arg(long)]
    pub method: MethodArg,
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// Grid (default: the method's reference grid: asym for rtn/gptq, quarot for gptaq, sym for coreq).
    #[arg(long)]
    pub grid: Option<GridArg>,
    /// Group size along the input dimension; 0 for one grid per row.
    #[arg(long, default_value_t = 0)]
    pub group: usize,
    /// Fit all group grids up front on the original weights.
    #[arg(long)]
    pub static_groups: bool,
    /// Process columns in their original order instead of by decreasing H_jj.
    #[arg(long)]
    pub no_act_order: bool,
    /// MSE clipping search for the grids (|e|^2.4).
    #[arg(long)]
    pub mse: bool,
    /// α: GPTAQ's mismatch weight (default 0.25); CoreQ's fixed α (default: alternate from
    /// 0.25); K-CoreQ's α (default 0.25).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// K-CoreQ's beam width K.
    #[arg(long, default_value_t = 4)]
    pub beams: usize,
    /// Calibration text: a GLUE task's training sentences, or a file with one text per line.
    #[arg(long, default_value = "rte")]
    pub calib: String,
    #[arg(long, default_value_t = 128)]
    pub calib_samples: usize,
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory for the quantized model and report.json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub data: DataDirArg,
}

fn calibration_texts(args: &QuantizeArgs) -> anyhow::Result<Vec<TextInput>> {
    let path = Path::new(&args.calib);
    let mut texts: Vec<TextInput> = if path.is_file() {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading calibration file {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(TextInput::single)
            .collect()
    } else {
        let task: Task = args.calib.parse().with_context(|| {
            format!("--calib {:?} is neither a file nor a GLUE task", args.calib)
        })?;
        let split = if task == Task::Ax {
            Split::Test
        } else {
            Split::Train
        };
        load(&args.data.dir(), task, split)?
            .examples
            .into_iter()
            .map(|e| TextInput {
                first: e.text_a,
                second: e.text_b,
            })
            .collect()
    };
    if texts.is_empty() {
        anyhow::bail!("no calibration text in {}", args.calib);
    }
    texts.shuffle(&mut substream_rng(args.seed, "calibration"));
    texts.truncate(args.calib_samples);
    Ok(texts)
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let bits = Bits::new(args.bits)?;
    let kind = match args.grid.unwrap_or(match args.method {
        MethodArg::Rtn | MethodArg::Gptq => GridArg::Asym,
        MethodArg::Gptaq => GridArg::Quarot,
        MethodArg::Coreq | MethodArg::Kcoreq => GridArg::Sym,
    }) {
        GridArg::Asym => UniformKind::Asymmetric,
        GridArg::Sym => UniformKind::SymmetricGptq,
        GridArg::Quarot => UniformKind::SymmetricQuarot,
        GridArg::Mxint => UniformKind::MxInt,
    };
    let method = match args.method {
        MethodArg::Rtn => Method::Rtn,
        MethodArg::Gptq => Method::Gptq,
        MethodArg::Gptaq => Method::Gptaq {
            alpha: args.alpha.unwrap_or(0.25),
            flush: GptaqFlush::Snapshot,
        },
        MethodArg::Coreq => Method::Coreq {
            alpha: args
                .alpha
                .map_or(AlphaMode::Alternate { initial: 0.25 }, AlphaMode::Fixed),
        },
        MethodArg::Kcoreq => Method::Kcoreq {
            alpha: args.alpha.unwrap_or(0.25),
            beams: args.beams,
        },
    };
    let grid = GridSpec {
        mse: args.mse.then(MseSearch::default),
        ..GridSpec::new(bits, kind)
    };
    let config = GptqConfig {
        grouping: match (args.group, args.static_groups) {
            (0, _) => Grouping::PerRow,
            (g, false) => Grouping::Dynamic(g),
            (g, true) => Grouping::Static(g),
        },
        act_order: !args.no_act_order,
        ..GptqConfig::new(grid)
    };
    let pretrained = PretrainedModel::open(args.model.resolve()?)
        .with_context(|| format!("loading model '{}'", args.model.model))?;
    let texts = calibration_texts(&args)?;
    let started = Instant::now();
    let solver = args.device.device.run(Quantize {
        pretrained: &pretrained,
        texts: &texts,
        args: &args,
        solver: MethodSolver::new(method, config),
    })??;
    let seconds = started.elapsed().as_secs_f64();
    let meta = QuantMetadata {
        format_version: FORMAT_VERSION,
        method: format!("{method:?}"),
        bits: args.bits,
        grid: format!("{kind:?}"),
        group: args.group,
        calibration: format!(
            "{} ({} texts, max length {}, seed {})",
            args.calib,
            texts.len(),
            args.max_length,
            args.seed
        ),
        qpeft_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let path = write_quantized_model(&args.out, &pretrained, &solver.layers, &meta)?;
    let (mut bits_total, mut weights) = (0usize, 0usize);
    for (_, layer) in &solver.layers {
        let row_bytes = (layer.cols * usize::from(args.bits)).div_ceil(8);
        bits_total += layer.rows * row_bytes * 8 + 64 * layer.rows * layer.groups + 32 * layer.cols;
        weights += layer.rows * layer.cols;
    }
    let bpw = bits_total as f64 / weights as f64;
    let mean_error = solver
        .reports
        .iter()
        .map(|r| r.relative_output_error)
        .sum::<f64>()
        / solver.reports.len() as f64;
    let report = json!({
        "metadata": meta,
        "summary": {
            "modules": solver.reports.len(),
            "mean_relative_output_error": mean_error,
            "seconds": seconds,
            "solver_seconds": solver.reports.iter().map(|r| r.seconds).sum::<f64>(),
            "bits_per_weight": bpw,
        },
        "modules": solver.reports.iter().map(|r| json!({
            "name": r.name,
            "relative_output_error": r.relative_output_error,
            "symmetric_objective": r.symmetric_objective,
            "asymmetric_objective": r.asymmetric_objective,
            "alpha": r.alpha,
            "seconds": r.seconds,
        })).collect::<Vec<_>>(),
    });
    let report_path = args.out.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    println!(
        "{method:?} {}-bit {kind:?}: {} modules, mean relative output error {mean_error:.4}, {bpw:.3} bits/weight, {seconds:.1} s",
        args.bits,
        solver.reports.len()
    );
    println!("wrote {} and {}", path.display(), report_path.display());
    Ok(())
}

struct Quantize<'a> {
    pretrained: &'a PretrainedModel,
    texts: &'a [TextInput],
    args: &'a QuantizeArgs,
    solver: MethodSolver,
}

impl BackendTask for Quantize<'_> {
    type Output = anyhow::Result<MethodSolver>;

    fn run<B: Backend>(mut self, device: B::Device) -> Self::Output {
        let tokenizer = self.pretrained.tokenizer(self.args.max_length)?;
        let batches = self
            .texts
            .chunks(self.args.batch_size.max(1))
            .map(|chunk| Ok(encoder_input::<B>(&tokenizer.encode_batch(chunk)?, &device)))
            .collect::<qpeft::Result<Vec<_>>>()?;
        let mut encoder = self.pretrained.encoder::<B>(&device)?;
        let needs = self.solver.method.needs();
        calibrate(&mut encoder, &batches, needs, &mut self.solver)?;
        Ok(self.solver)
    }
}
