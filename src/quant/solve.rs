//! Solvers behind one interface for calibration: the method, its configuration, and a record
//! of what each module's quantization cost (relative output error from H, time).

use std::time::Instant;

use faer::{Mat, MatRef};

use super::calib::ModuleSolver;
use super::gptq::{GptqConfig, gptq};
use super::grid::Rounding;
use super::layer::{Grouping, QuantizedLayer, rtn};
use super::stats::LayerStats;
use crate::error::Result;

/// A layer-wise PTQ method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    Rtn,
    Gptq,
}

/// What quantizing one module gave.
#[derive(Debug, Clone)]
pub struct ModuleReport {
    pub name: String,
    /// √(tr((Ŵ − W) H (Ŵ − W)ᵀ) / tr(W H Wᵀ)) = ‖(Ŵ − W)X_q‖/‖W X_q‖ over the calibration tokens.
    pub relative_output_error: f64,
    pub seconds: f64,
}

/// `tr(A H Aᵀ)`.
pub fn h_norm_squared(a: MatRef<'_, f64>, h: MatRef<'_, f64>) -> f64 {
    let ah = a * h;
    (0..a.nrows())
        .map(|r| (0..a.ncols()).map(|c| ah[(r, c)] * a[(r, c)]).sum::<f64>())
        .sum()
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
        let layer = match self.method {
            Method::Rtn => {
                let grouping = match self.config.grouping {
                    Grouping::Dynamic(g) => Grouping::Static(g),
                    other => other,
                };
                rtn(weight, &self.config.grid, grouping, Rounding::Nearest)?
            }
            Method::Gptq => gptq(weight, stats.h.as_ref(), &self.config)?,
        };
        let error = &layer.dequantized - weight;
        let relative = (h_norm_squared(error.as_ref(), stats.h.as_ref())
            / h_norm_squared(weight, stats.h.as_ref()))
        .sqrt();
        self.reports.push(ModuleReport {
            name: name.to_string(),
            relative_output_error: relative,
            seconds: started.elapsed().as_secs_f64(),
        });
        let dequantized = layer.dequantized.clone();
        self.layers.push((name.to_string(), layer));
        Ok(dequantized)
    }
}
