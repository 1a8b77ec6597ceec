//! Truncated SVDs, tail energies ρ_k and the split of singular values between the factors
//! L `[out, r]` and R `[r, in]` (docs/algorithms.md §11.1, §11.8).

use faer::{Mat, MatRef};

use crate::error::{Error, Result};

/// The top `rank` singular triplets of a matrix A `[m, n]`: A ≈ U·diag(σ)·Vᵀ.
#[derive(Debug, Clone)]
pub struct TruncatedSvd {
    /// `[m, rank]`
    pub u: Mat<f64>,
    /// Non-increasing.
    pub sigma: Vec<f64>,
    /// `[rank, n]`
    pub v_t: Mat<f64>,
}

impl TruncatedSvd {
    pub fn rank(&self) -> usize {
        self.sigma.len()
    }

    /// The first `k` triplets.
    pub fn head(&self, k: usize) -> TruncatedSvd {
        TruncatedSvd {
            u: self.u.subcols(0, k).to_owned(),
            sigma: self.sigma[..k].to_vec(),
            v_t: self.v_t.subrows(0, k).to_owned(),
        }
    }

    /// U·diag(σ)·Vᵀ, `[m, n]`.
    pub fn product(&self) -> Mat<f64> {
        let us = Mat::from_fn(self.u.nrows(), self.rank(), |i, j| {
            self.u[(i, j)] * self.sigma[j]
        });
        us * &self.v_t
    }

    /// `self`'s triplets followed by `other`'s (a factorization, not an SVD: U is not
    /// orthonormal across the two blocks).
    pub fn concat(&self, other: &TruncatedSvd) -> TruncatedSvd {
        let (m, n) = (self.u.nrows(), self.v_t.ncols());
        let (a, b) = (self.rank(), other.rank());
        TruncatedSvd {
            u: Mat::from_fn(m, a + b, |i, j| {
                if j < a {
                    self.u[(i, j)]
                } else {
                    other.u[(i, j - a)]
                }
            }),
            sigma: self.sigma.iter().chain(&other.sigma).copied().collect(),
            v_t: Mat::from_fn(a + b, n, |i, j| {
                if i < a {
                    self.v_t[(i, j)]
                } else {
                    other.v_t[(i - a, j)]
                }
            }),
        }
    }
}

/// The top `rank` singular triplets of `a` (exact thin SVD: encoder matrices are small).
pub fn truncated_svd(a: MatRef<'_, f64>, rank: usize) -> Result<TruncatedSvd> {
    let full = a.nrows().min(a.ncols());
    assert!(rank <= full, "rank {rank} exceeds min(out, in) = {full}");
    let svd = a
        .thin_svd()
        .map_err(|e| Error::Numeric(format!("SVD did not converge: {e:?}")))?;
    Ok(TruncatedSvd {
        u: svd.U().subcols(0, rank).to_owned(),
        sigma: svd.S().column_vector().iter().take(rank).copied().collect(),
        v_t: svd.V().subcols(0, rank).transpose().to_owned(),
    })
}

/// ‖A‖²_F.
pub fn squared_norm(a: MatRef<'_, f64>) -> f64 {
    let norm = a.norm_l2();
    norm * norm
}

/// ρ_k = 1 − Σ_{i≤k} σ_i²/‖A‖²_F for k = 0..=σ.len() (ρ_0 = 1): the energy left after the
/// best rank-k approximation.
pub fn tail_fractions(sigma: &[f64], total: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(sigma.len() + 1);
    let mut kept = 0.0;
    out.push(1.0);
    for s in sigma {
        kept += s * s;
        out.push(if total > 0.0 { 1.0 - kept / total } else { 0.0 });
    }
    out
}

/// How Σ is shared between L and R (§11.1 table).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum FactorSplit {
    /// L = UΣ, R = VᵀS⁻¹ (QERA).
    SigmaLeft,
    /// L = UΣ^{1/2}, R = Σ^{1/2}VᵀS⁻¹ (LoftQ).
    Sqrt,
    /// L = U, R = ΣVᵀS⁻¹ (SRR).
    SigmaRight,
}

crate::named!(FactorSplit);

/// L `[m, r]` and R `[r, n]` with L·R = U·diag(σ)·`v_t_scaled` for a split of σ, where
/// `v_t_scaled` is Vᵀ already multiplied by S⁻¹.
pub fn split_factors(
    u: MatRef<'_, f64>,
    sigma: &[f64],
    v_t_scaled: MatRef<'_, f64>,
    split: FactorSplit,
) -> (Mat<f64>, Mat<f64>) {
    let (left, right): (Vec<f64>, Vec<f64>) = sigma
        .iter()
        .map(|&s| match split {
            FactorSplit::SigmaLeft => (s, 1.0),
            FactorSplit::Sqrt => (s.sqrt(), s.sqrt()),
            FactorSplit::SigmaRight => (1.0, s),
        })
        .unzip();
    let l = Mat::from_fn(u.nrows(), sigma.len(), |i, j| u[(i, j)] * left[j]);
    let r = Mat::from_fn(sigma.len(), v_t_scaled.ncols(), |i, j| {
        v_t_scaled[(i, j)] * right[i]
    });
    (l, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_split_gives_the_same_product() {
        let a = Mat::from_fn(5, 7, |i, j| ((i * 7 + j) as f64 * 0.7).sin());
        let svd = truncated_svd(a.as_ref(), 3).unwrap();
        let expected = svd.product();
        for split in [
            FactorSplit::SigmaLeft,
            FactorSplit::Sqrt,
            FactorSplit::SigmaRight,
        ] {
            let (l, r) = split_factors(svd.u.as_ref(), &svd.sigma, svd.v_t.as_ref(), split);
            assert!((&l * &r - &expected).norm_max() < 1e-14, "{split:?}");
        }
    }

    /// Eckart–Young: ‖A − A_k‖²_F = ρ_k·‖A‖²_F.
    #[test]
    fn tail_fraction_is_the_truncation_error() {
        let a = Mat::from_fn(6, 4, |i, j| {
            ((i + 2 * j) as f64).cos() + (i * j) as f64 * 0.1
        });
        let total = squared_norm(a.as_ref());
        let svd = truncated_svd(a.as_ref(), 4).unwrap();
        let rho = tail_fractions(&svd.sigma, total);
        for (k, rho_k) in rho.iter().enumerate() {
            let err = squared_norm((&a - svd.head(k).product()).as_ref());
            assert!((err - rho_k * total).abs() < 1e-12 * total, "k = {k}");
        }
    }
}
