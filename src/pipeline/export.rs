//! `qpeft export` as library calls: a trained run written for Hugging Face tools, as a dense
//! model (every adapted layer W = deq(Q) + s·B·A) or a PEFT LoRA adapter with its base
//! ([`export_run`]); or merged and re-quantized by a PTQ solver, with the run's dev score before
//! and after ([`requantize_run`]).

use std::path::{Path, PathBuf};

use crate::kernels::Backend;
use burn_autodiff::Autodiff;

use super::calibrate::CalibrationSpec;
use super::quantize::{QuantizeOutcome, QuantizeSpec, quantize};
use super::run::{head_for, load_trained};
use crate::adapters::export::{ExportFormat, export_merged, export_peft};
use crate::data::Task;
use crate::device::{BackendTask, DeviceSpec};
use crate::error::Result;
use crate::model::{HubOptions, resolve_model};
use crate::quant::spec::QuantizerSpec;

/// Where [`requantize_run`] keeps the merged dense model it quantizes (and scores as "before").
pub const MERGED_DIR: &str = "merged";

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    /// The run's task.
    pub task: Task,
    /// The checkpoint exported: the run's latest, or the one named.
    pub checkpoint: PathBuf,
}

/// Writes the run (its latest checkpoint) or checkpoint folder `checkpoint` into `out` in
/// `format`.
pub fn export_run(
    checkpoint: &Path,
    out: &Path,
    format: ExportFormat,
    device: DeviceSpec,
) -> Result<Exported> {
    device.run(Export {
        checkpoint,
        out,
        format,
    })?
}

/// Merges the run `checkpoint` into `out/merged` and re-quantizes every merged linear with
/// `quantizer`, calibrated on `calibration(task)` (the run's task is the natural default),
/// scoring the run's task on dev before and after; the quantized model folder is `out`.
pub fn requantize_run(
    checkpoint: &Path,
    quantizer: QuantizerSpec,
    calibration: impl FnOnce(Task) -> CalibrationSpec,
    eval_max_length: usize,
    data_dir: &Path,
    out: &Path,
    device: DeviceSpec,
) -> Result<(Exported, QuantizeOutcome)> {
    let merged = out.join(MERGED_DIR);
    let exported = export_run(checkpoint, &merged, ExportFormat::Dense, device)?;
    let spec = QuantizeSpec {
        quantizer,
        calibration: calibration(exported.task),
        eval: Some(exported.task),
        eval_max_length,
    };
    let model = resolve_model(&merged.to_string_lossy(), &HubOptions::from_env())?;
    let outcome = quantize(model, &spec, data_dir, out, device)?;
    Ok((exported, outcome))
}

struct Export<'a> {
    checkpoint: &'a Path,
    out: &'a Path,
    format: ExportFormat,
}

impl BackendTask for Export<'_> {
    type Output = Result<Exported>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let trained = load_trained::<Autodiff<B>>(self.checkpoint, &device)?;
        let task = trained.recipe.task()?;
        let head = head_for(task);
        let path = match self.format {
            ExportFormat::Dense => export_merged(&trained.model, &trained.base, head, self.out)?,
            ExportFormat::Peft => export_peft(&trained.model, &trained.base, head, self.out)?,
        };
        Ok(Exported {
            path,
            task,
            checkpoint: trained.checkpoint,
        })
    }
}
