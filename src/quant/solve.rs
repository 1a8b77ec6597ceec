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
use super::layer::{Grouping, QuantizedLayer, rtn};
use super::qronos::{QronosConfig, qronos};
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
    /// GPTAQ plus the compensation-aware error with weight α₂ (§6); the flush picks the
    /// mode: snapshot (recommended), clamped snapshot (`allw`), quantized (`org`).
    Rescomp {
        alpha: f64,
        alpha2: f64,
        flush: GptaqFlush,
    },
    Coreq {
        alpha: AlphaMode,
        /// Coordinate-descent passes after rounding (§7.5).
        cd_passes: usize,
    },
    /// Qronos (§8) with ridge λ (`None`: the reference 1e-6·σ_max(H)).
    Qronos {
        lambda: Option<f64>,
    },
    /// K-CoreQ beam search with a fixed α (§7.4).
    Kcoreq {
        alpha: f64,
        beams: usize,
    },
}

impl Method {
    /// The statistics the method reads.
    pub fn needs(self) -> StatsNeeded {
        match self {
            Method::Rtn => StatsNeeded::default(),
            Method::Gptq => StatsNeeded {
                quantized: true,
                ..StatsNeeded::default()
            },
            Method::Gptaq { .. }
            | Method::Rescomp { .. }
            | Method::Qronos { .. }
            | Method::Coreq { .. }
            | Method::Kcoreq { .. } => StatsNeeded {
                quantized: true,
                mismatch: true,
                ..StatsNeeded::default()
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

    /// The method's statistics, and the quantized stream's H for the report, so every
    /// method's output error is measured on the same inputs.
    pub fn needs(&self) -> StatsNeeded {
        self.method.needs().union(StatsNeeded {
            quantized: true,
            ..StatsNeeded::default()
        })
    }
}

/// Quantizes `weight` (`[out, in]`) with `method` on `stats`; returns the layer and, for
/// CoreQ, the α it used. Any target can be passed as `weight` (SRR quantizes a residual).
pub fn solve_layer(
    method: Method,
    config: &GptqConfig,
    weight: MatRef<'_, f64>,
    stats: &LayerStats,
) -> Result<(QuantizedLayer, Option<f64>)> {
    let d = || {
        stats.d.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!("{method:?} needs the mismatch statistic D"))
        })
    };
    Ok(match method {
        Method::Rtn => {
            // RTN has no processing order, so a dynamic group is a static one.
            let grouping = match config.grouping {
                Grouping::Dynamic(g) => Grouping::Static(g),
                other => other,
            };
            (rtn(weight, &config.grid, grouping, config.rounding)?, None)
        }
        Method::Gptq => (gptq(weight, stats.h.as_ref(), config)?, None),
        Method::Gptaq { alpha, flush } => {
            let mismatch = Mismatch {
                d: d()?.as_ref(),
                alpha,
                flush,
                compensation: None,
            };
            (gptaq(weight, stats.h.as_ref(), mismatch, config)?, None)
        }
        Method::Rescomp {
            alpha,
            alpha2,
            flush,
        } => {
            let mismatch = Mismatch {
                d: d()?.as_ref(),
                alpha,
                flush,
                compensation: Some(alpha2),
            };
            (gptaq(weight, stats.h.as_ref(), mismatch, config)?, None)
        }
        Method::Qronos { lambda } => {
            let config = QronosConfig {
                gptq: *config,
                lambda,
            };
            (
                qronos(weight, stats.h.as_ref(), d()?.as_ref(), &config)?,
                None,
            )
        }
        Method::Coreq {
            alpha: mode,
            cd_passes,
        } => {
            let config = CoreqConfig {
                gptq: *config,
                alpha: mode,
                cd_passes,
            };
            let result = coreq(weight, stats.h.as_ref(), d()?.as_ref(), &config)?;
            (result.layer, Some(result.alpha))
        }
        Method::Kcoreq { alpha, beams } => {
            let result = kcoreq(
                weight,
                stats.h.as_ref(),
                d()?.as_ref(),
                alpha,
                config,
                beams,
            )?;
            (result.layer, Some(alpha))
        }
    })
}

/// Relative output error ‖(Ŵ − W)X‖/‖WX‖ from a second moment `m` = XXᵀ/N.
pub fn relative_error(w: MatRef<'_, f64>, w_hat: MatRef<'_, f64>, m: MatRef<'_, f64>) -> f64 {
    let signal = frobenius_inner((w * m).as_ref(), w);
    (symmetric_objective(w, w_hat, m) / signal).sqrt()
}

impl ModuleSolver for MethodSolver {
    fn solve(
        &mut self,
        name: &str,
        weight: MatRef<'_, f64>,
        stats: &LayerStats,
    ) -> Result<Mat<f64>> {
        let started = Instant::now();
        let (layer, alpha) = solve_layer(self.method, &self.config, weight, stats)?;
        let q = layer.dequantized.as_ref();
        self.reports.push(ModuleReport {
            name: name.to_string(),
            relative_output_error: relative_error(weight, q, stats.h.as_ref()),
            symmetric_objective: symmetric_objective(weight, q, stats.h.as_ref()),
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
