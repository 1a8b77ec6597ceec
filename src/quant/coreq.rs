//! CoreQ / SNRQ (ALGORITHMS.md §7.1–§7.3): a shifted target W_ref(α) = W + α(WD)H_λ⁻¹ that
//! blends the symmetric objective ‖(Q−W)X_q‖² with the asymmetric ‖QX_q − WX_f‖², rounded by
//! successive rounding, which equals act-order GPTQ on W_ref with grids fitted on W_ref (§10 #5).

use faer::linalg::solvers::Solve;
use faer::{Mat, MatRef, Side};

use super::gptq::{GptqConfig, GroupFit, gptq};
use super::hessian::{damped, dead_columns};
use super::layer::QuantizedLayer;
use crate::error::{Error, Result};

/// How α is chosen (§7.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlphaMode {
    /// A fixed α (0 is GPTQ, 1 the asymmetric objective).
    Fixed(f64),
    /// Round with `initial`, set α to the closed form α* of that rounding, re-round, and keep
    /// the second result only if the symmetric objective decreased (§7.3 (d), recommended
    /// with `initial` = 0.25).
    Alternate { initial: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreqConfig {
    /// Grid, grouping, damping and block; act-order and target group fits are forced (§7.2).
    pub gptq: GptqConfig,
    pub alpha: AlphaMode,
}

/// CoreQ's result: the layer and the α it was rounded with.
#[derive(Debug, Clone)]
pub struct CoreqLayer {
    pub layer: QuantizedLayer,
    pub alpha: f64,
}

/// H with dead columns fixed and damped (a private copy), as the target uses it.
fn h_lambda(h: MatRef<'_, f64>, percdamp: f64) -> Mat<f64> {
    damped(h, &dead_columns(h), percdamp)
}

/// `A·H_λ⁻¹` by a Cholesky solve (never an explicit inverse).
fn right_solve(a: MatRef<'_, f64>, h_lambda: MatRef<'_, f64>) -> Result<Mat<f64>> {
    let llt = h_lambda
        .llt(Side::Lower)
        .map_err(|_| Error::InvalidInput("damped H is not positive definite".into()))?;
    // X·H = A  ⇔  H·Xᵀ = Aᵀ (H symmetric)
    Ok(llt.solve(a.transpose().to_owned()).transpose().to_owned())
}

/// W_ref(α) = W + α(WD)H_λ⁻¹ (§7.1).
pub fn shifted_target(
    w: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
    alpha: f64,
    percdamp: f64,
) -> Result<Mat<f64>> {
    let wd = w * d;
    let shift = right_solve(wd.as_ref(), h_lambda(h, percdamp).as_ref())?;
    Ok(w + shift * faer::Scale(alpha))
}

/// α* = clip(⟨Q−W, WD⟩ / tr(WD H_λ⁻¹ DᵀWᵀ), 0, 1) for a rounding Q (§7.3 (c)).
pub fn closed_form_alpha(
    w: MatRef<'_, f64>,
    q: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
    percdamp: f64,
) -> Result<f64> {
    let wd = w * d;
    let numerator = frobenius_inner((q - w).as_ref(), wd.as_ref());
    let denominator = frobenius_inner(
        right_solve(wd.as_ref(), h_lambda(h, percdamp).as_ref())?.as_ref(),
        wd.as_ref(),
    );
    Ok(if denominator > 0.0 {
        (numerator / denominator).clamp(0.0, 1.0)
    } else {
        0.0
    })
}

/// ⟨A, B⟩ = Σ A_ij B_ij.
pub fn frobenius_inner(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    (0..a.ncols())
        .map(|j| (0..a.nrows()).map(|i| a[(i, j)] * b[(i, j)]).sum::<f64>())
        .sum()
}

/// The symmetric objective tr((Q−W)H(Q−W)ᵀ) = ‖(Q−W)X_q‖²/N.
pub fn symmetric_objective(w: MatRef<'_, f64>, q: MatRef<'_, f64>, h: MatRef<'_, f64>) -> f64 {
    let e = q - w;
    frobenius_inner((&e * h).as_ref(), e.as_ref())
}

/// The asymmetric objective ‖QX_q − WX_f‖²/N up to a term that does not depend on Q:
/// tr((Q−W)H(Q−W)ᵀ) − 2⟨Q−W, WD⟩.
pub fn asymmetric_objective(
    w: MatRef<'_, f64>,
    q: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
) -> f64 {
    symmetric_objective(w, q, h) - 2.0 * frobenius_inner((q - w).as_ref(), (w * d).as_ref())
}

/// CoreQ with successive rounding (§7.2) and the α of `config.alpha`.
pub fn coreq(
    w: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
    config: &CoreqConfig,
) -> Result<CoreqLayer> {
    let solver = GptqConfig {
        act_order: true,
        group_fit: GroupFit::Target,
        ..config.gptq
    };
    let percdamp = solver.percdamp;
    let round = |alpha: f64| -> Result<QuantizedLayer> {
        let target = shifted_target(w, h, d, alpha, percdamp)?;
        gptq(target.as_ref(), h, &solver)
    };
    match config.alpha {
        AlphaMode::Fixed(alpha) => Ok(CoreqLayer {
            layer: round(alpha)?,
            alpha,
        }),
        AlphaMode::Alternate { initial } => {
            let first = round(initial)?;
            let alpha = closed_form_alpha(w, first.dequantized.as_ref(), h, d, percdamp)?;
            let second = round(alpha)?;
            let objective =
                |layer: &QuantizedLayer| symmetric_objective(w, layer.dequantized.as_ref(), h);
            Ok(if objective(&second) < objective(&first) {
                CoreqLayer {
                    layer: second,
                    alpha,
                }
            } else {
                CoreqLayer {
                    layer: first,
                    alpha: initial,
                }
            })
        }
    }
}
