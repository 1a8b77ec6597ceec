//! Initialization of every target linear during two-stream calibration: the scaling S is
//! computed once per group of modules sharing an input, each module is initialized with the
//! chosen base quantizer on its own statistics, and Ŵ = Q + L·R is installed so that later
//! layers are calibrated on the reconstructed model.

use std::time::Instant;

use faer::{Mat, MatRef};

use super::init::{InitConfig, LayerInit, initialize};
use super::lowrank::squared_norm;
use super::scaling::Scaling;
use crate::error::{Error, Result};
use crate::quant::gptq::GptqConfig;
use crate::quant::solve::ModuleSolver;
use crate::quant::solve::{Method, relative_error, solve_layer};
use crate::quant::stats::{LayerStats, StatsNeeded};

/// How one module's initialization came out.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModuleInitReport {
    pub name: String,
    /// Components preserving W·S (SRR's k; 0 for k = 0 methods, r for LQ-LoRA).
    pub k: usize,
    /// The probe rule's k* (SRR).
    pub probe_k: Option<usize>,
    /// ‖(W − Q − LR)S‖_F/‖WS‖_F with S = R_xx^{1/2} of the full-precision inputs, i.e. the
    /// relative output error on the calibration tokens (the same measure for every method).
    pub scaled_error: f64,
    /// ‖W − Q − LR‖_F/‖W‖_F.
    pub unscaled_error: f64,
    /// The scaled error of Q alone (no low-rank term).
    pub quantized_scaled_error: f64,
    /// SRR with the exact rule: the method's scaled error for k = 0..=r.
    pub scaled_error_by_k: Vec<f64>,
    /// LoftQ: the unscaled error after each iteration.
    pub loftq_errors: Vec<f64>,
    pub seconds: f64,
}

/// Runs an initializer on each module and keeps the layers and reports.
pub struct InitSolver {
    pub config: InitConfig,
    pub method: Method,
    pub quant: GptqConfig,
    pub layers: Vec<(String, LayerInit)>,
    pub reports: Vec<ModuleInitReport>,
    /// Seconds spent computing scalings (once per group).
    pub scaling_seconds: f64,
    scaling: Option<Scaling>,
}

impl InitSolver {
    pub fn new(config: InitConfig, method: Method, quant: GptqConfig) -> Self {
        InitSolver {
            config,
            method,
            quant,
            layers: Vec::new(),
            reports: Vec::new(),
            scaling_seconds: 0.0,
            scaling: None,
        }
    }

    /// What calibration must collect: the scaling's and the quantizer's statistics, and R_xx
    /// for the report.
    pub fn needs(&self) -> StatsNeeded {
        self.config
            .init
            .needs()
            .union(self.method.needs())
            .union(StatsNeeded {
                r_xx: true,
                ..StatsNeeded::default()
            })
    }
}

impl ModuleSolver for InitSolver {
    fn start_group(&mut self, stats: &LayerStats) -> Result<()> {
        let started = Instant::now();
        self.scaling = Some(Scaling::from_stats(self.config.init.scaling(), stats)?);
        self.scaling_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    fn solve(
        &mut self,
        name: &str,
        weight: MatRef<'_, f64>,
        stats: &LayerStats,
    ) -> Result<Mat<f64>> {
        let started = Instant::now();
        let scaling = self
            .scaling
            .as_ref()
            .ok_or_else(|| Error::Internal("start_group was not called".into()))?;
        let (method, quant) = (self.method, self.quant);
        let mut quantize =
            |target: MatRef<'_, f64>| solve_layer(method, &quant, target, stats).map(|s| s.layer);
        let init = initialize(name, weight, scaling, &mut quantize, &self.config)?;
        let seconds = started.elapsed().as_secs_f64();
        let reconstructed = init.reconstructed();
        let r_xx = stats
            .r_xx
            .as_ref()
            .ok_or_else(|| Error::Internal("the init report needs R_xx".into()))?;
        self.reports.push(ModuleInitReport {
            name: name.to_string(),
            k: init.k,
            probe_k: init.probe_k,
            scaled_error: relative_error(weight, reconstructed.as_ref(), r_xx.as_ref()),
            unscaled_error: (squared_norm((weight - &reconstructed).as_ref())
                / squared_norm(weight))
            .sqrt(),
            quantized_scaled_error: relative_error(
                weight,
                init.quantized.dequantized.as_ref(),
                r_xx.as_ref(),
            ),
            scaled_error_by_k: init.scaled_error_by_k.clone(),
            loftq_errors: init.loftq_errors.clone(),
            seconds,
        });
        self.layers.push((name.to_string(), init));
        Ok(reconstructed)
    }
}
