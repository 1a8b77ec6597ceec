//! What every GPTQ-family solver does to H first (docs/algorithms.md §0, §3.4): dead columns,
//! damping on a private copy, and the upper Cholesky factor C of H_λ⁻¹ ("Hinv").

use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Mat, MatRef, Par, Side};

use crate::error::{Error, Result};

/// GPTQ's default relative damping: λ = 0.01·mean(diag H).
pub const DEFAULT_PERCDAMP: f64 = 0.01;

/// Columns with `H_jj = 0` (inputs that are always zero).
pub fn dead_columns(h: MatRef<'_, f64>) -> Vec<bool> {
    (0..h.ncols()).map(|j| h[(j, j)] == 0.0).collect()
}

/// A private copy of `h` with dead columns set to `H_jj = 1`, damped by
/// `percdamp·mean(diag H)` (the mean taken after the dead-column fix, as the reference does).
pub fn damped(h: MatRef<'_, f64>, dead: &[bool], percdamp: f64) -> Mat<f64> {
    let n = h.nrows();
    let mut out = h.to_owned();
    for j in (0..n).filter(|&j| dead[j]) {
        out[(j, j)] = 1.0;
    }
    let lambda = percdamp * (0..n).map(|j| out[(j, j)]).sum::<f64>() / n as f64;
    for j in 0..n {
        out[(j, j)] += lambda;
    }
    out
}

/// Upper triangular C with `H_λ⁻¹ = CᵀC`. On a failed factorization, `0.01·10^k·mean(diag)`
/// more damping is added for retry k = 1, 2, 3 (§3.4 Choice); the retry count is returned.
pub fn inverse_cholesky_upper(h_damped: MatRef<'_, f64>) -> Result<(Mat<f64>, u32)> {
    let n = h_damped.nrows();
    let base = (0..n).map(|j| h_damped[(j, j)]).sum::<f64>() / n as f64;
    let mut h = h_damped.to_owned();
    for retry in 0..=3u32 {
        if retry > 0 {
            let extra = base * 0.01 * 10f64.powi(retry as i32);
            for j in 0..n {
                h[(j, j)] += extra;
            }
        }
        // With J the reversal permutation and J·H·J = L'L'ᵀ, C = J·L'⁻¹·J is upper triangular
        // with a positive diagonal and CᵀC = J(J·H·J)⁻¹J = H⁻¹: the Cholesky factor the
        // reference gets from cholesky(cholesky_inverse(cholesky(H))), from one factorization
        // and one triangular inverse instead of two factorizations and a full inverse.
        let reversed = Mat::from_fn(n, n, |i, j| h[(n - 1 - i, n - 1 - j)]);
        let Ok(llt) = reversed.llt(Side::Lower) else {
            continue;
        };
        let mut l_inverse = Mat::zeros(n, n);
        invert_lower_triangular(l_inverse.as_mut(), llt.L(), Par::rayon(0));
        let c = Mat::from_fn(n, n, |i, j| l_inverse[(n - 1 - i, n - 1 - j)]);
        return Ok((c, retry));
    }
    Err(Error::Numeric(
        "H is not positive definite even with 1000× damping".into(),
    ))
}
