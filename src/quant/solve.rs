//! Solvers behind one interface for calibration: the method, its configuration, and a record
//! of what each module's quantization cost (output error and objectives from the statistics).

use std::collections::HashMap;
use std::time::Instant;

use faer::{Mat, MatRef};

use super::coreq::{
    AlphaMode, CoreqConfig, asymmetric_objective, coreq, frobenius_inner, kcoreq,
    symmetric_objective,
};
use super::gptq::{GptaqFlush, GptqConfig, Mismatch, gptaq, gptq};
use super::grid::GridKind;
use super::layer::{Grouping, QuantizedLayer, rtn};
use super::qronos::{QronosConfig, QronosLambda, qronos};
use super::stats::{LayerStats, StatsNeeded};
use crate::error::{Error, Result};

/// Decides the quantized weight of one module from its statistics.
pub trait ModuleSolver {
    /// `name` is the HF name (`encoder.layer.3.attention.self.query`), `weight` is `[out, in]`;
    /// returns the weight to install, `[out, in]`.
    fn solve(
        &mut self,
        name: &str,
        weight: MatRef<'_, f64>,
        stats: &LayerStats,
    ) -> Result<Mat<f64>>;

    /// Called once per group of modules that share `stats`, before their `solve` calls, so
    /// that work depending only on the input (an activation scaling) is done once.
    fn start_group(&mut self, _stats: &LayerStats) -> Result<()> {
        Ok(())
    }
}

/// CoreQ's α across the model (§7.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CoreqAlpha {
    /// Each module on its own: fixed, closed form or alternating (recommended, from 0.25).
    PerModule(AlphaMode),
    /// SNRQ-S: W_ref = W(H_λ + D_s)H_λ⁻¹ with D_s's per-sequence α_s, drawn from `seed`
    /// (§7.3 (b)).
    Sampled { seed: u64 },
    /// The reference's "fixed" mode: α = 0 in layer 0, `second_layer` in layer 1, and from
    /// then on the α* the same module reached one layer earlier (§7.3 (a)).
    Scheduled { second_layer: f64 },
}

/// A base quantizer by name (recipes' `quant.method`, `qpeft quantize --method`, `qpeft init
/// --quantizer`, `qpeft export --requantize`); `none` keeps the base in full precision.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum QuantMethod {
    None,
    Rtn,
    Gptq,
    Gptaq,
    Rescomp,
    Coreq,
    Kcoreq,
    Qronos,
}

crate::named!(QuantMethod);

impl QuantMethod {
    /// The grid each method's reference implementation uses; `None` for `none`.
    pub fn reference_grid(self) -> Option<GridKind> {
        match self {
            QuantMethod::None => None,
            QuantMethod::Rtn | QuantMethod::Gptq | QuantMethod::Qronos => {
                Some(GridKind::Asymmetric)
            }
            QuantMethod::Gptaq | QuantMethod::Rescomp => Some(GridKind::SymmetricQuarot),
            QuantMethod::Coreq | QuantMethod::Kcoreq => Some(GridKind::SymmetricGptq),
        }
    }
}

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
        alpha: CoreqAlpha,
        /// Coordinate-descent passes after rounding (§7.5).
        cd_passes: usize,
    },
    /// Qronos (§8) with its ridge λ.
    Qronos {
        lambda: QronosLambda,
    },
    /// K-CoreQ beam search with a fixed α (§7.4).
    Kcoreq {
        alpha: f64,
        beams: usize,
    },
}

impl Method {
    pub fn name(self) -> QuantMethod {
        match self {
            Method::Rtn => QuantMethod::Rtn,
            Method::Gptq => QuantMethod::Gptq,
            Method::Gptaq { .. } => QuantMethod::Gptaq,
            Method::Rescomp { .. } => QuantMethod::Rescomp,
            Method::Coreq { .. } => QuantMethod::Coreq,
            Method::Qronos { .. } => QuantMethod::Qronos,
            Method::Kcoreq { .. } => QuantMethod::Kcoreq,
        }
    }

    /// The statistics the method reads.
    pub fn needs(self) -> StatsNeeded {
        match self {
            Method::Rtn => StatsNeeded::default(),
            Method::Gptq => StatsNeeded {
                quantized: true,
                ..StatsNeeded::default()
            },
            Method::Coreq {
                alpha: CoreqAlpha::Sampled { seed },
                ..
            } => StatsNeeded {
                quantized: true,
                mismatch: true,
                sampled_mismatch: Some(seed),
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModuleReport {
    pub name: String,
    /// ‖(Ŵ − W)X_q‖/‖W X_q‖ over the calibration tokens, from H.
    pub relative_output_error: f64,
    /// ‖ŴX_q − WX_f‖/‖WX_f‖: the output's distance from the full-precision model's, which
    /// the asymmetric methods minimise (needs G and R_xx of X_f).
    pub relative_error_to_full_precision: Option<f64>,
    /// tr((Ŵ − W)H(Ŵ − W)ᵀ).
    pub symmetric_objective: f64,
    /// ‖ŴX_q − WX_f‖²/N up to a Q-independent term, when D was collected.
    pub asymmetric_objective: Option<f64>,
    /// CoreQ's α (sampled α: the token-weighted mean of α_s).
    pub alpha: Option<f64>,
    /// CoreQ's closed form α* of its final rounding.
    pub alpha_star: Option<f64>,
    pub seconds: f64,
}

/// One module's solution: the layer, and CoreQ's α and α*.
#[derive(Debug, Clone)]
pub struct Solved {
    pub layer: QuantizedLayer,
    pub alpha: Option<f64>,
    pub alpha_star: Option<f64>,
}

impl From<QuantizedLayer> for Solved {
    fn from(layer: QuantizedLayer) -> Self {
        Solved {
            layer,
            alpha: None,
            alpha_star: None,
        }
    }
}

/// Runs `method` on each module and keeps the quantized layers and reports.
pub struct MethodSolver {
    pub method: Method,
    pub config: GptqConfig,
    pub reports: Vec<ModuleReport>,
    pub layers: Vec<(String, QuantizedLayer)>,
    /// Per module kind (`attention.self.query`, …): modules solved so far and the last α*,
    /// for CoreQ's scheduled α.
    schedule: HashMap<String, (usize, f64)>,
}

impl MethodSolver {
    pub fn new(method: Method, config: GptqConfig) -> Self {
        MethodSolver {
            method,
            config,
            reports: Vec::new(),
            layers: Vec::new(),
            schedule: HashMap::new(),
        }
    }

    /// The method for module `name`: a scheduled CoreQ α becomes this layer's fixed α.
    fn method_for(&self, name: &str) -> Method {
        match self.method {
            Method::Coreq {
                alpha: CoreqAlpha::Scheduled { second_layer },
                cd_passes,
            } => {
                let alpha = match self.schedule.get(module_kind(name)) {
                    None => 0.0,
                    Some((1, _)) => second_layer,
                    Some((_, alpha_star)) => *alpha_star,
                };
                Method::Coreq {
                    alpha: CoreqAlpha::PerModule(AlphaMode::Fixed(alpha)),
                    cd_passes,
                }
            }
            method => method,
        }
    }

    /// The method's statistics, and what the report reads for every method alike: H, G and
    /// R_xx of both streams, so each output error is measured on the same inputs.
    pub fn needs(&self) -> StatsNeeded {
        self.method.needs().union(StatsNeeded {
            quantized: true,
            mismatch: true,
            r_xx: true,
            ..StatsNeeded::default()
        })
    }
}

/// `attention.self.query` of `encoder.layer.3.attention.self.query`.
fn module_kind(name: &str) -> &str {
    name.splitn(4, '.').nth(3).unwrap_or(name)
}

/// Quantizes `weight` (`[out, in]`) with `method` on `stats`; returns the layer and, for
/// CoreQ, the α it used. Any target can be passed as `weight` (SRR quantizes a residual).
pub fn solve_layer(
    method: Method,
    config: &GptqConfig,
    weight: MatRef<'_, f64>,
    stats: &LayerStats,
) -> Result<Solved> {
    let d = || {
        stats.d.as_ref().ok_or_else(|| {
            Error::Internal(format!("{} needs the mismatch statistic D", method.name()))
        })
    };
    Ok(match method {
        Method::Rtn => {
            // RTN has no processing order, so a dynamic group is a static one.
            let grouping = match config.grouping {
                Grouping::Dynamic(g) => Grouping::Static(g),
                other => other,
            };
            rtn(weight, &config.grid, grouping, config.rounding)?.into()
        }
        Method::Gptq => gptq(weight, stats.h.as_ref(), config)?.into(),
        Method::Gptaq { alpha, flush } => {
            let mismatch = Mismatch {
                d: d()?.as_ref(),
                alpha,
                flush,
                compensation: None,
            };
            gptaq(weight, stats.h.as_ref(), mismatch, config)?.into()
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
            gptaq(weight, stats.h.as_ref(), mismatch, config)?.into()
        }
        Method::Qronos { lambda } => {
            let config = QronosConfig {
                gptq: *config,
                lambda,
            };
            qronos(weight, stats.h.as_ref(), d()?.as_ref(), &config)?.into()
        }
        Method::Coreq { alpha, cd_passes } => {
            let config = |alpha| CoreqConfig {
                gptq: *config,
                alpha,
                cd_passes,
            };
            match alpha {
                CoreqAlpha::PerModule(mode) => {
                    let result = coreq(weight, stats.h.as_ref(), d()?.as_ref(), &config(mode))?;
                    Solved {
                        layer: result.layer,
                        alpha: Some(result.alpha),
                        alpha_star: Some(result.alpha_star),
                    }
                }
                CoreqAlpha::Sampled { .. } => {
                    let sampled = stats.d_sampled.as_ref().ok_or_else(|| {
                        Error::Internal(
                            "CoreQ's sampled α needs the per-sequence mismatch D_s".into(),
                        )
                    })?;
                    // W_ref = W + (W·D_s)·H_λ⁻¹: the α_s are inside D_s.
                    let result = coreq(
                        weight,
                        stats.h.as_ref(),
                        sampled.d.as_ref(),
                        &config(AlphaMode::Fixed(1.0)),
                    )?;
                    Solved {
                        layer: result.layer,
                        alpha: Some(sampled.mean_alpha),
                        alpha_star: None,
                    }
                }
                CoreqAlpha::Scheduled { .. } => {
                    return Err(Error::Config(
                        "CoreQ's scheduled α follows each module from layer to layer; it runs \
                         in layer-sequential quantization (qpeft quantize), not on a lone layer"
                            .into(),
                    ));
                }
            }
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
            Solved {
                layer: result.layer,
                alpha: Some(alpha),
                alpha_star: Some(result.alpha_star),
            }
        }
    })
}

/// ‖ŴX_q − WX_f‖/‖WX_f‖ from H = X_qX_qᵀ/N, G = X_fX_qᵀ/N and R = X_fX_fᵀ/N:
/// ‖ŴX_q − WX_f‖²/N = ⟨ŴH, Ŵ⟩ − 2⟨WG, Ŵ⟩ + ⟨WR, W⟩.
pub fn relative_error_to_full_precision(
    w: MatRef<'_, f64>,
    w_hat: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    g: MatRef<'_, f64>,
    r_xx: MatRef<'_, f64>,
) -> f64 {
    let signal = frobenius_inner((w * r_xx).as_ref(), w);
    let error = frobenius_inner((w_hat * h).as_ref(), w_hat)
        - 2.0 * frobenius_inner((w * g).as_ref(), w_hat)
        + signal;
    (error.max(0.0) / signal).sqrt()
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
        let Solved {
            layer,
            alpha,
            alpha_star,
        } = solve_layer(self.method_for(name), &self.config, weight, stats)?;
        if let Some(alpha_star) = alpha_star {
            let seen = self
                .schedule
                .entry(module_kind(name).to_string())
                .or_default();
            *seen = (seen.0 + 1, alpha_star);
        }
        let q = layer.dequantized.as_ref();
        self.reports.push(ModuleReport {
            name: name.to_string(),
            relative_output_error: relative_error(weight, q, stats.h.as_ref()),
            relative_error_to_full_precision: stats.g().zip(stats.r_xx.as_ref()).map(|(g, r)| {
                relative_error_to_full_precision(
                    weight,
                    q,
                    stats.h.as_ref(),
                    g.as_ref(),
                    r.as_ref(),
                )
            }),
            symmetric_objective: symmetric_objective(weight, q, stats.h.as_ref()),
            asymmetric_objective: stats
                .d
                .as_ref()
                .map(|d| asymmetric_objective(weight, q, stats.h.as_ref(), d.as_ref())),
            alpha,
            alpha_star,
            seconds: started.elapsed().as_secs_f64(),
        });
        let dequantized = layer.dequantized.clone();
        self.layers.push((name.to_string(), layer));
        Ok(dequantized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::stats::StatsAccumulator;

    /// The error to full precision from the statistics equals ‖ŴX_q − WX_f‖/‖WX_f‖ computed on
    /// the tokens themselves.
    #[test]
    fn error_to_full_precision_matches_the_tokens() {
        let x_f = Mat::from_fn(40, 5, |t, j| ((t * 3 + j * 7) as f64 * 0.31).sin());
        let x_q = Mat::from_fn(40, 5, |t, j| {
            x_f[(t, j)] + 0.05 * ((t + 2 * j) as f64).cos()
        });
        let w = Mat::from_fn(3, 5, |i, j| ((i * 5 + j) as f64 * 0.7).cos());
        let w_hat = Mat::from_fn(3, 5, |i, j| (w[(i, j)] * 4.0).round() / 4.0);
        let mut acc = StatsAccumulator::new(
            5,
            StatsNeeded {
                quantized: true,
                mismatch: true,
                r_xx: true,
                ..StatsNeeded::default()
            },
        );
        acc.add(x_q.as_ref(), x_f.as_ref());
        let stats = acc.finish();
        let from_stats = relative_error_to_full_precision(
            w.as_ref(),
            w_hat.as_ref(),
            stats.h.as_ref(),
            stats.g().unwrap().as_ref(),
            stats.r_xx.as_ref().unwrap().as_ref(),
        );
        // Token-major: outputs are X·Wᵀ.
        let reference = &x_f * w.transpose();
        let direct = (&x_q * w_hat.transpose() - &reference).norm_l2() / reference.norm_l2();
        assert!(
            (from_stats - direct).abs() < 1e-12,
            "{from_stats} vs {direct}"
        );
    }
}
