//! Activation scalings S for quantization-error reconstruction (docs/algorithms.md §11.4–§11.5):
//! the reconstruction minimises ‖(W − Q − LR)S‖_F, so S decides which input directions the
//! low-rank term serves. Weights are `[out, in]`; S is `[in, in]` and multiplies from the right.

use faer::{Mat, MatRef, Side};

use crate::error::{Error, Result};
use crate::quant::stats::{LayerStats, StatsNeeded};

/// Relative eigenvalue floor of §11.5: μ_i ← max(μ_i, 1e-6·μ_max, 1e-12).
pub const EIGENVALUE_FLOOR: f64 = 1e-6;
const ABSOLUTE_FLOOR: f64 = 1e-12;

/// Which scaling a method uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingKind {
    /// S = I (ZeroQuant-V2 / LoRC, LoftQ).
    Identity,
    /// LQER: S = diag(mean |x_i|) (the paper, recommended) or, with `batch_max`, the maximum
    /// over calibration batches of the batch mean (QERA's LQER code).
    Lqer { batch_max: bool },
    /// QERA-approx: S = diag(√R_xx,ii).
    QeraApprox,
    /// QERA-exact: S = R_xx^{1/2}.
    QeraExact,
}

impl ScalingKind {
    pub fn needs(self) -> StatsNeeded {
        match self {
            ScalingKind::Identity => StatsNeeded::default(),
            ScalingKind::Lqer { .. } => StatsNeeded {
                abs_mean: true,
                ..StatsNeeded::default()
            },
            ScalingKind::QeraApprox | ScalingKind::QeraExact => StatsNeeded {
                r_xx: true,
                ..StatsNeeded::default()
            },
        }
    }
}

/// A scaling S with its inverse, applied only in products (never an unguarded inverse).
#[derive(Debug, Clone)]
pub enum Scaling {
    Identity,
    /// S = diag(s), every s_i floored to be positive.
    Diagonal(Vec<f64>),
    /// Symmetric S and S⁻¹ from one eigendecomposition.
    Full {
        s: Mat<f64>,
        s_inv: Mat<f64>,
    },
}

/// Floors squared scales like the eigenvalues of §11.5, so diagonal and full S agree.
fn floor_squared(mu: f64, mu_max: f64) -> f64 {
    mu.max(EIGENVALUE_FLOOR * mu_max).max(ABSOLUTE_FLOOR)
}

fn diagonal(values: impl Iterator<Item = f64>) -> Scaling {
    let squared: Vec<f64> = values.map(|v| v * v).collect();
    let max = squared.iter().copied().fold(0.0, f64::max);
    Scaling::Diagonal(
        squared
            .into_iter()
            .map(|mu| floor_squared(mu, max).sqrt())
            .collect(),
    )
}

/// S = R^{1/2} and S⁻¹ = R^{−1/2} of a symmetric positive semi-definite R (§11.5): symmetrise,
/// eigendecompose, floor the eigenvalues, and check ‖S·S⁻¹ − I‖_max < 1e-8.
pub fn sqrt_psd(r: MatRef<'_, f64>) -> Result<(Mat<f64>, Mat<f64>)> {
    let n = r.nrows();
    assert_eq!(r.ncols(), n, "R_xx must be square");
    let symmetric = Mat::from_fn(n, n, |i, j| 0.5 * (r[(i, j)] + r[(j, i)]));
    let eigen = symmetric
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Numeric(format!("eigendecomposition of R_xx failed: {e:?}")))?;
    let psi = eigen.U();
    let mu: Vec<f64> = eigen.S().column_vector().iter().copied().collect();
    let mu_max = mu.iter().copied().fold(0.0, f64::max);
    let root: Vec<f64> = mu
        .iter()
        .map(|&m| floor_squared(m, mu_max).sqrt())
        .collect();
    let s = psi * Mat::from_fn(n, n, |i, j| if i == j { root[i] } else { 0.0 }) * psi.transpose();
    let s_inv =
        psi * Mat::from_fn(n, n, |i, j| if i == j { 1.0 / root[i] } else { 0.0 }) * psi.transpose();
    let product = &s * &s_inv;
    let mut worst = 0.0f64;
    for i in 0..n {
        for j in 0..n {
            let identity = if i == j { 1.0 } else { 0.0 };
            worst = worst.max((product[(i, j)] - identity).abs());
        }
    }
    if worst.is_nan() || worst >= 1e-8 {
        return Err(Error::Numeric(format!(
            "R_xx^(1/2) is too ill-conditioned: ‖S·S⁻¹ − I‖_max = {worst:.3e}"
        )));
    }
    Ok((s, s_inv))
}

impl Scaling {
    /// The scaling of `kind` from one module input's calibration statistics.
    pub fn from_stats(kind: ScalingKind, stats: &LayerStats) -> Result<Scaling> {
        let missing =
            |what: &str| Error::Internal(format!("{kind:?} scaling needs the {what} statistic"));
        Ok(match kind {
            ScalingKind::Identity => Scaling::Identity,
            ScalingKind::Lqer { batch_max } => {
                let values = if batch_max {
                    stats.abs_mean_batch_max.as_ref()
                } else {
                    stats.abs_mean.as_ref()
                };
                diagonal(values.ok_or_else(|| missing("mean |x|"))?.iter().copied())
            }
            ScalingKind::QeraApprox => {
                let r = stats.r_xx.as_ref().ok_or_else(|| missing("R_xx"))?;
                diagonal((0..r.nrows()).map(|i| r[(i, i)].max(0.0).sqrt()))
            }
            ScalingKind::QeraExact => {
                let r = stats.r_xx.as_ref().ok_or_else(|| missing("R_xx"))?;
                let (s, s_inv) = sqrt_psd(r.as_ref())?;
                Scaling::Full { s, s_inv }
            }
        })
    }

    /// `A·S` for `A` `[m, n]`.
    pub fn apply(&self, a: MatRef<'_, f64>) -> Mat<f64> {
        match self {
            Scaling::Identity => a.to_owned(),
            Scaling::Diagonal(s) => Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] * s[j]),
            Scaling::Full { s, .. } => a * s,
        }
    }

    /// `A·S⁻¹` for `A` `[m, n]`.
    pub fn apply_inverse(&self, a: MatRef<'_, f64>) -> Mat<f64> {
        match self {
            Scaling::Identity => a.to_owned(),
            Scaling::Diagonal(s) => Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] / s[j]),
            Scaling::Full { s_inv, .. } => a * s_inv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moment(n: usize) -> Mat<f64> {
        let x = Mat::from_fn(40, n, |t, j| {
            ((t * 13 + j * 7) as f64 * 0.31).sin() + 0.1 * j as f64
        });
        // Well conditioned, so the eigenvalue floor does not act.
        x.transpose() * &x * faer::Scale(1.0 / 40.0) + Mat::<f64>::identity(n, n)
    }

    #[test]
    fn square_root_squares_back_and_inverts() {
        let r = moment(6);
        let (s, s_inv) = sqrt_psd(r.as_ref()).unwrap();
        let squared = &s * &s;
        for i in 0..6 {
            for j in 0..6 {
                assert!((squared[(i, j)] - r[(i, j)]).abs() < 1e-12);
                assert!((s[(i, j)] - s[(j, i)]).abs() < 1e-14, "S is symmetric");
            }
        }
        let a = Mat::from_fn(3, 6, |i, j| (i as f64 + 1.0) * (j as f64 - 2.0));
        let scaling = Scaling::Full { s, s_inv };
        let back = scaling.apply_inverse(scaling.apply(a.as_ref()).as_ref());
        for i in 0..3 {
            for j in 0..6 {
                assert!((back[(i, j)] - a[(i, j)]).abs() < 1e-10);
            }
        }
    }

    /// A rank-deficient R_xx (fewer tokens than features) is floored, not inverted blindly.
    #[test]
    fn rank_deficient_moment_is_floored() {
        let x = Mat::from_fn(3, 8, |t, j| ((t * 5 + j) as f64).cos());
        let r = x.transpose() * &x;
        let (s, s_inv) = sqrt_psd(r.as_ref()).unwrap();
        assert!(s_inv.norm_max().is_finite());
        assert!((&s * &s_inv - Mat::<f64>::identity(8, 8)).norm_max() < 1e-8);
    }

    #[test]
    fn diagonal_scaling_floors_dead_features() {
        let Scaling::Diagonal(s) = diagonal([2.0, 0.0, 1.0].into_iter()) else {
            unreachable!()
        };
        assert_eq!(s[0], 2.0);
        assert_eq!(s[1], (4.0 * EIGENVALUE_FLOOR).sqrt());
    }
}
