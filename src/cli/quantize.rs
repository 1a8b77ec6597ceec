//! `qpeft quantize`: flags → [`QuantizeSpec`] → [`quantize`] → a printed summary. The flags of
//! the base quantizer and of the calibration set are shared with `init` and `export`.

use std::path::PathBuf;

use qpeft::data::Task;
use qpeft::pipeline::calibrate::CalibrationSpec;
use qpeft::pipeline::quantize::{QuantizeOutcome, QuantizeSpec, quantize};
use qpeft::quant::grid::{GridKind, ScaleDtype};
use qpeft::quant::solve::QuantMethod;
use qpeft::quant::spec::{CoreqAlphaMode, QuantizerSpec, RescompMode};

use super::data::DataDirArg;
use super::{DeviceArg, ModelArg};

/// The base quantizer's settings, shared by `quantize` and `init`.
#[derive(clap::Args, Debug)]
pub struct QuantizerArgs {
    #[arg(long, default_value_t = 4)]
    pub bits: u8,
    /// Grid (default: the method's reference grid: asym for rtn/gptq/qronos, quarot for
    /// gptaq/rescomp, sym for coreq/kcoreq; `init` defaults to mxint).
    #[arg(long)]
    pub grid: Option<GridKind>,
    /// Group size along the input dimension; 0 for one grid per row (`init` defaults to 32).
    #[arg(long)]
    pub group: Option<usize>,
    /// Fit all group grids up front on the original weights (always so for MXINT blocks).
    #[arg(long)]
    pub static_groups: bool,
    /// Process columns in their original order instead of by decreasing H_jj.
    #[arg(long)]
    pub no_act_order: bool,
    /// MSE clipping search for the grids (|e|^2.4).
    #[arg(long)]
    pub mse: bool,
    /// Unbiased stochastic rounding, seeded by --seed (stochastic OPTQ with gptq, §9).
    #[arg(long)]
    pub stochastic: bool,
    /// α: GPTAQ's mismatch weight (default 0.25); CoreQ's fixed, initial or layer-1 α (see
    /// --alpha-mode); K-CoreQ's α (default 0.25).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// CoreQ's α rule (§7.3; default alternate).
    #[arg(long)]
    pub alpha_mode: Option<CoreqAlphaMode>,
    /// K-CoreQ's beam width K (default 4).
    #[arg(long)]
    pub beams: Option<usize>,
    /// CoreQ's coordinate-descent passes after rounding (§7.5; default 0).
    #[arg(long)]
    pub cd_passes: Option<usize>,
    /// ResComp's α₂, the weight of the compensation-aware error (default 0.25).
    #[arg(long)]
    pub alpha2: Option<f64>,
    /// ResComp's flush (default snapshot).
    #[arg(long)]
    pub rescomp_mode: Option<RescompMode>,
    /// Qronos' ridge λ (default: 1e-6·σ_max(H), the reference).
    #[arg(long, conflicts_with = "qronos_damp")]
    pub qronos_lambda: Option<f64>,
    /// Qronos' ridge λ as this fraction of mean(diag H), like GPTQ's damping (e.g. 0.01).
    #[arg(long)]
    pub qronos_damp: Option<f64>,
    /// Quantize the embedding tables too, per row on the symmetric grid at these bits (8 makes
    /// a 2-bit MiniLM file about a sixth of the fp32 one; default: kept in full precision).
    #[arg(long, value_name = "BITS")]
    pub embeddings: Option<u8>,
    /// The precision of the uniform and NF grids' scales, fitted and stored (f16: NF2 in blocks
    /// of 64 at 2.25 bits per weight; default f32; not for mxint).
    #[arg(long)]
    pub scale_dtype: Option<ScaleDtype>,
}

impl QuantizerArgs {
    /// The spec these flags describe for `method`.
    pub fn spec(&self, method: QuantMethod) -> QuantizerSpec {
        QuantizerSpec {
            method,
            bits: self.bits,
            grid: self.grid,
            group: self.group,
            static_groups: self.static_groups,
            no_act_order: self.no_act_order,
            mse: self.mse,
            stochastic: self.stochastic,
            alpha: self.alpha,
            alpha_mode: self.alpha_mode,
            beams: self.beams,
            cd_passes: self.cd_passes,
            alpha2: self.alpha2,
            rescomp_mode: self.rescomp_mode,
            qronos_lambda: self.qronos_lambda,
            qronos_damp: self.qronos_damp,
            embeddings: self.embeddings,
            scale_dtype: self.scale_dtype,
        }
    }
}

/// The calibration set, shared by `quantize` and `init`.
#[derive(clap::Args, Debug)]
pub struct CalibArgs {
    /// Calibration text: a GLUE task's training sentences, `glue` (CoLA, SST-2, MRPC, STS-B
    /// and RTE training text in equal shares), or a file with one text per line (default: rte;
    /// `export --requantize`: the run's own task).
    #[arg(long)]
    pub calib: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub calib_samples: usize,
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataDirArg,
}

/// `--calib` when the command has no task of its own to calibrate on.
const DEFAULT_CALIBRATION: &str = "rte";

impl CalibArgs {
    /// The calibration these flags describe.
    pub fn spec(&self) -> CalibrationSpec {
        self.spec_or(DEFAULT_CALIBRATION)
    }

    /// The calibration these flags describe, calibrating on `source` unless `--calib` names one.
    pub fn spec_or(&self, source: &str) -> CalibrationSpec {
        CalibrationSpec {
            source: self.calib.clone().unwrap_or_else(|| source.to_string()),
            samples: self.calib_samples,
            max_length: self.max_length,
            batch_size: self.batch_size,
            seed: self.seed,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    #[arg(long)]
    pub method: QuantMethod,
    #[command(flatten)]
    pub quantizer: QuantizerArgs,
    #[command(flatten)]
    pub calib: CalibArgs,
    /// Output directory for the quantized model, report.json and report.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Score a fine-tuned classifier (e.g. a `qpeft export` folder) on this task's dev split
    /// before and after quantization.
    #[arg(long, value_name = "TASK")]
    pub eval: Option<Task>,
    /// Truncation length of the --eval dev examples.
    #[arg(long, default_value_t = 128)]
    pub eval_max_length: usize,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let spec = QuantizeSpec {
        quantizer: args.quantizer.spec(args.method),
        calibration: args.calib.spec(),
        eval: args.eval,
        eval_max_length: args.eval_max_length,
    };
    let outcome = quantize(
        args.model.resolve()?,
        &spec,
        &args.calib.data.dir(),
        &args.out,
        args.device.device,
    )?;
    print_quantized(&outcome);
    Ok(())
}

/// The summary of a quantization, its dev scores and the files it wrote.
pub fn print_quantized(outcome: &QuantizeOutcome) {
    let (meta, summary) = (&outcome.report.metadata, &outcome.report.summary);
    println!(
        "{} {}-bit {}: {} modules, mean relative output error {:.4}{}, {:.3} bits/weight, {:.1} s",
        meta.method,
        meta.bits,
        meta.grid,
        summary.modules,
        summary.mean_relative_output_error,
        summary
            .mean_relative_error_to_full_precision
            .map_or(String::new(), |e| format!(" (to full precision {e:.4})")),
        summary.bits_per_weight,
        summary.seconds
    );
    if let Some(eval) = &outcome.report.eval {
        println!(
            "{} dev: {:.4} before, {:.4} after quantization",
            eval.task, eval.before.main, eval.after.main
        );
    }
    println!(
        "wrote {}, {} and {}",
        outcome.model.display(),
        outcome.json.display(),
        outcome.markdown.display()
    );
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use qpeft::quant::solve::{CoreqAlpha, Method};

    use super::{GridKind, QuantMethod, QuantizerArgs};

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        quant: QuantizerArgs,
    }

    fn resolve(method: QuantMethod, flags: &[&str]) -> Result<Method, String> {
        let argv = std::iter::once("qpeft").chain(flags.iter().copied());
        let args = Command::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .quant;
        args.spec(method)
            .resolve(GridKind::Asymmetric, 128, 0)
            .map(|q| q.method)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_of_other_methods_are_refused_by_name() {
        let err = resolve(QuantMethod::Gptq, &["--alpha-mode", "closed"]).unwrap_err();
        assert_eq!(err, "--alpha-mode applies to coreq only, not to gptq");
        let err = resolve(QuantMethod::Rtn, &["--alpha", "0.3"]).unwrap_err();
        assert_eq!(
            err,
            "--alpha applies to gptaq, rescomp, coreq, kcoreq only, not to rtn"
        );
        let err = resolve(QuantMethod::Coreq, &["--beams", "8"]).unwrap_err();
        assert_eq!(err, "--beams applies to kcoreq only, not to coreq");
        let err = resolve(QuantMethod::Gptaq, &["--qronos-damp", "0.01"]).unwrap_err();
        assert_eq!(err, "--qronos-damp applies to qronos only, not to gptaq");
        let err = resolve(
            QuantMethod::Coreq,
            &["--alpha-mode", "sampled", "--alpha", "0.3"],
        )
        .unwrap_err();
        assert!(err.contains("no meaning"), "{err}");
    }

    #[test]
    fn method_flags_reach_their_method() {
        assert!(matches!(
            resolve(QuantMethod::Kcoreq, &["--beams", "8"]),
            Ok(Method::Kcoreq { beams: 8, alpha }) if alpha == 0.25
        ));
        assert!(matches!(
            resolve(QuantMethod::Coreq, &["--alpha-mode", "scheduled", "--cd-passes", "2"]),
            Ok(Method::Coreq { alpha: CoreqAlpha::Scheduled { second_layer }, cd_passes: 2 })
                if second_layer == 0.5
        ));
        assert!(matches!(
            resolve(QuantMethod::Rescomp, &["--alpha2", "0.5"]),
            Ok(Method::Rescomp { alpha, alpha2, .. }) if alpha == 0.25 && alpha2 == 0.5
        ));
    }
}
