//! Solvers behind one interface for calibration: the method, its configuration, and a record
//! of what each module's quantization cost (output error and objectives from the statistics).

use std::time::Instant;

use faer::{Mat, MatRef};

use super::calib::ModuleSolver;
use super::coreq::{
    AlphaMode, CoreqConfig, asymmetric_objective, coreq, frobenius_inner, kcoreq,
    symmetric_objective,
};
use super::gptq::{GptaqFlush, GptqConfig, Mismatch, gptaq, gptq};
use super::grid::Rounding;
use super::layer::{Grouping, QuantizedLayer, rtn};
use super::stats::{LayerStats, StatsNeeded};
use crate::error::{Error, Result};

/// A layer-wise PTQ method with its own settings; grids, groups and damping come from
/// [`GptqConfig`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    Rtn,
    Gptq,
    Gptaq {
        alpha: f64,
        flush: GptaqFlush,
    },
    Coreq {
        alpha: AlphaMode,
    },
    /// K-CoreQ beam search with a fixed α (§7.4).
    Kcoreq {
        alpha: f64,
        beams: usize,
    },
}

impl Method {
    /// The statistics the method needs besides H.
    pub fn needs(self) -> StatsNeeded {
        match self {
            Method::Rtn | Method::Gptq => StatsNeeded::default(),
            Method::Gptaq { .. } | Method::Coreq { .. } | Method::Kcoreq { .. } => StatsNeeded {
                mismatch: true,
                r_xx: false,
            },
        }
    }
}

/// What quantizing one module gave.
#[derive(Debug, Clone)]
pub struct ModuleReport {
    pub name: String,
    /// ‖(Ŵ − W)X_q‖/‖W X_q‖ over the calibration tokens, from H.
    pub relative_output_error: f64,
    /// tr((Ŵ − W)H(Ŵ − W)ᵀ).
    pub symmetric_objective: f64,
    /// ‖ŴX_q − WX_f‖²/N up to a Q-independent term, when D was collected.
    pub asymmetric_objective: Option<f64>,
    /// CoreQ's α.
    pub alpha: Option<f64>,
    pub seconds: f64,
}

/// Runs `method` on each module and keeps the quantized layers and reports.
pub struct MethodSolver {
    pub method: Method,
    pub config: GptqConfig,
    pub reports: Vec<ModuleReport>,
    pub layers: Vec<(String, QuantizedLayer)>,
}

impl MethodSolver {
    pub fn new(method: Method, config: GptqConfig) -> Self {
        MethodSolver {
            method,
            config,
            reports: Vec::new(),
            layers: Vec::new(),
        }
    }
}

impl ModuleSolver for MethodSolver {
    fn solve(
        &mut self,
        name: &str,
        weight: MatRef<'_, f64>,
        stats: &LayerStats,
    ) -> Result<Mat<f64>> {
        let started = Instant::now();
        let d = || {
            stats.d.as_ref().ok_or_else(|| {
                Error::InvalidInput(format!("{:?} needs the mismatch statistic D", self.method))
            })
        };
        let mut alpha = None;
        let layer = match self.method {
            Method::Rtn => {
                let grouping = match self.config.grouping {
                    Grouping::Dynamic(g) => Grouping::Static(g),
                    other => other,
                };
                rtn(weight, &self.config.grid, grouping, Rounding::Nearest)?
            }
            Method::Gptq => gptq(weight, stats.h.as_ref(), &self.config)?,
            Method::Gptaq { alpha, flush } => {
                let mismatch = Mismatch {
                    d: d()?.as_ref(),
                    alpha,
                    flush,
                };
                gptaq(weight, stats.h.as_ref(), mismatch, &self.config)?
            }
            Method::Coreq { alpha: mode } => {
                let config = CoreqConfig {
                    gptq: self.config,
                    alpha: mode,
                };
                let result = coreq(weight, stats.h.as_ref(), d()?.as_ref(), &config)?;
                alpha = Some(result.alpha);
                result.layer
            }
            Method::Kcoreq { alpha: a, beams } => {
                alpha = Some(a);
                kcoreq(
                    weight,
                    stats.h.as_ref(),
                    d()?.as_ref(),
                    a,
                    &self.config,
                    beams,
                )?
                .layer
            }
        };
        let q = layer.dequantized.as_ref();
        let symmetric = symmetric_objective(weight, q, stats.h.as_ref());
        let signal = frobenius_inner((weight * stats.h.as_ref()).as_ref(), weight);
        self.reports.push(ModuleReport {
            name: name.to_string(),
            relative_output_error: (symmetric / signal).sqrt(),
            symmetric_objective: symmetric,
            asymmetric_objective: stats
                .d
                .as_ref()
                .map(|d| asymmetric_objective(weight, q, stats.h.as_ref(), d.as_ref())),
            alpha,
            seconds: started.elapsed().as_secs_f64(),
        });
        let dequantized = layer.dequantized.clone();
        self.layers.push((name.to_string(), layer));
        Ok(dequantized)
    }
}
