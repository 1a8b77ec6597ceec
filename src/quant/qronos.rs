//! Qronos (docs/algorithms.md §8; Xilinx/brevitas `qronos.py`): minimise ‖W X_f − Q X_q‖ by
//! correcting the first column with the full-precision target, diffusing the rest by a ridge
//! least-squares refit toward W, then running GPTQ on the refitted weights.
//!
//! The correction and diffusion are folded into one GPTQ call: GPTQ's own first step on
//! Ṽ = [c | (W(G+λI)[:,J] − c⊗H[1,J])·H_λ[J,J]⁻¹] rounds c to q₁ and moves the other columns
//! by −(c − q₁)·H[1,J]·H_λ[J,J]⁻¹, which gives exactly the diffusion
//! V[:,J] = (W(G+λI)[:,J] − q₁⊗H[1,J])·H_λ[J,J]⁻¹. Grids are fitted on the original W.

use faer::linalg::solvers::Solve;
use faer::{Mat, MatRef, Side};

use super::gptq::{GptqConfig, gptq_on_grids_of};
use super::hessian::dead_columns;
use super::layer::QuantizedLayer;
use crate::error::{Error, Result};

/// Brevitas' λ = 1e-6·σ_max(H).
pub const REFERENCE_RELATIVE_LAMBDA: f64 = 1e-6;
const POWER_ITERATIONS: usize = 30;

/// The ridge λ of the diffusion step (§8 Choice).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QronosLambda {
    /// Brevitas' 1e-6·σ_max(H) (recommended).
    Reference,
    /// This fraction of mean(diag H), GPTQ's damping (the spec's alternative at 0.01).
    MeanDiagonal(f64),
    /// A given λ.
    Absolute(f64),
}

impl QronosLambda {
    fn value(self, h: MatRef<'_, f64>) -> f64 {
        match self {
            QronosLambda::Reference => REFERENCE_RELATIVE_LAMBDA * largest_eigenvalue(h),
            QronosLambda::MeanDiagonal(fraction) => {
                let n = h.nrows().max(1) as f64;
                fraction * (0..h.nrows()).map(|j| h[(j, j)]).sum::<f64>() / n
            }
            QronosLambda::Absolute(lambda) => lambda,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QronosConfig {
    /// Grid, grouping, act-order and block; its percdamp is unused (Qronos damps by λ).
    pub gptq: GptqConfig,
    pub lambda: QronosLambda,
}

/// σ_max of a symmetric positive semi-definite `h` by power iteration (as the reference).
pub fn largest_eigenvalue(h: MatRef<'_, f64>) -> f64 {
    let n = h.nrows();
    let mut v = Mat::<f64>::from_fn(n, 1, |_, _| 1.0 / (n as f64).sqrt());
    let mut estimate = 0.0;
    for _ in 0..POWER_ITERATIONS {
        let hv = h * &v;
        estimate = hv.norm_l2();
        if estimate == 0.0 {
            return 0.0;
        }
        v = hv * faer::Scale(1.0 / estimate);
    }
    estimate
}

/// Qronos on W `[m, n]` with H = X_q X_qᵀ/N and D = (X_f − X_q)X_qᵀ/N.
pub fn qronos(
    w: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
    config: &QronosConfig,
) -> Result<QuantizedLayer> {
    let (m, n) = (w.nrows(), w.ncols());
    assert_eq!(
        (h.nrows(), h.ncols(), d.nrows(), d.ncols()),
        (n, n, n, n),
        "Qronos needs H and D of {n}×{n} for a weight with {n} columns"
    );
    // §8 step 0: dead inputs get H_jj = 1 and zero weights; their G columns are zero already.
    let dead = dead_columns(h);
    let mut h = h.to_owned();
    let mut w = w.to_owned();
    for j in (0..n).filter(|&j| dead[j]) {
        h[(j, j)] = 1.0;
        w.col_mut(j).fill(0.0);
    }
    let g = &h + d;
    let lambda = config.lambda.value(h.as_ref());
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::Config(format!(
            "Qronos' λ must be finite and non-negative, got {lambda}"
        )));
    }
    // The first processed column: GPTQ's act-order puts the largest H_jj first (stable).
    let first = if config.gptq.act_order {
        (0..n).fold(
            0,
            |best, j| if h[(j, j)] > h[(best, best)] { j } else { best },
        )
    } else {
        0
    };
    let rest: Vec<usize> = (0..n).filter(|&j| j != first).collect();
    let h_first = h[(first, first)];
    // Step 1 (undamped): c = (W·G[:,1] − W[:,J]·H[J,1]) / H_11.
    let c: Vec<f64> = (0..m)
        .map(|r| {
            let fp: f64 = (0..n).map(|i| w[(r, i)] * g[(i, first)]).sum();
            let held: f64 = rest.iter().map(|&i| w[(r, i)] * h[(i, first)]).sum();
            (fp - held) / h_first
        })
        .collect();
    // Ṽ[:,J] = (W(G+λI)[:,J] − c⊗H[1,J])·H_λ[J,J]⁻¹, by a Cholesky solve.
    let k = rest.len();
    let rhs = Mat::from_fn(m, k, |r, t| {
        let j = rest[t];
        let wg: f64 = (0..n).map(|i| w[(r, i)] * g[(i, j)]).sum::<f64>() + lambda * w[(r, j)];
        wg - c[r] * h[(first, j)]
    });
    let h_rest = Mat::from_fn(k, k, |a, b| {
        h[(rest[a], rest[b])] + if a == b { lambda } else { 0.0 }
    });
    let llt = h_rest
        .llt(Side::Lower)
        .map_err(|_| Error::Numeric("Qronos: H_λ is not positive definite".into()))?;
    let v_rest = llt.solve(rhs.transpose().to_owned()).transpose().to_owned();
    let mut v = Mat::<f64>::zeros(m, n);
    for r in 0..m {
        v[(r, first)] = c[r];
        for (t, &j) in rest.iter().enumerate() {
            v[(r, j)] = v_rest[(r, t)];
        }
    }
    let h_lambda = Mat::from_fn(n, n, |i, j| h[(i, j)] + if i == j { lambda } else { 0.0 });
    let gptq = GptqConfig {
        percdamp: 0.0,
        ..config.gptq
    };
    gptq_on_grids_of(v.as_ref(), h_lambda.as_ref(), w.as_ref(), &gptq)
}
