//! Calibration statistics (ALGORITHMS.md §0, §3.1), accumulated in f64 from token batches:
//! H = X_q X_qᵀ/N, D = (X_f − X_q) X_qᵀ/N, R_xx = X_f X_fᵀ/N, G = H + D.
//!
//! Batches arrive token-major, `[tokens, n]` (one token per row), so the products are
//! `XᵀX`-shaped; padded positions must already be removed (§3.3).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// Which statistics a solver needs (§3 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsNeeded {
    /// D = ΔX X_qᵀ/N (GPTAQ, CoreQ, ResComp, Qronos).
    pub mismatch: bool,
    /// R_xx of the full-precision inputs (QERA-exact, SRR, LQ-LoRA).
    pub r_xx: bool,
}

/// Streaming sums for one module input of width n.
#[derive(Debug, Clone)]
pub struct StatsAccumulator {
    h: Mat<f64>,
    d: Option<Mat<f64>>,
    r_xx: Option<Mat<f64>>,
    tokens: usize,
}

/// The finished statistics, divided by the token count.
#[derive(Debug, Clone)]
pub struct LayerStats {
    pub h: Mat<f64>,
    pub d: Option<Mat<f64>>,
    pub r_xx: Option<Mat<f64>>,
    pub tokens: usize,
}

impl LayerStats {
    /// G = H + D = X_f X_qᵀ/N, if D was collected.
    pub fn g(&self) -> Option<Mat<f64>> {
        self.d.as_ref().map(|d| &self.h + d)
    }
}

impl StatsAccumulator {
    pub fn new(n: usize, needed: StatsNeeded) -> Self {
        StatsAccumulator {
            h: Mat::zeros(n, n),
            d: needed.mismatch.then(|| Mat::zeros(n, n)),
            r_xx: needed.r_xx.then(|| Mat::zeros(n, n)),
            tokens: 0,
        }
    }

    /// Adds a batch: `x_q` and `x_f` are `[tokens, n]`, the same tokens through the partly
    /// quantized and the full-precision model.
    pub fn add(&mut self, x_q: MatRef<'_, f64>, x_f: MatRef<'_, f64>) {
        assert_eq!(
            (x_q.nrows(), x_q.ncols()),
            (x_f.nrows(), x_f.ncols()),
            "stream shapes differ"
        );
        assert_eq!(
            x_q.ncols(),
            self.h.ncols(),
            "input width differs from the accumulator's"
        );
        let par = Par::rayon(0);
        // Hs += X_qᵀ X_q (in the spec's column-per-token notation: X_q X_qᵀ).
        matmul(self.h.as_mut(), Accum::Add, x_q.transpose(), x_q, 1.0, par);
        if let Some(d) = self.d.as_mut() {
            let delta = x_f - x_q;
            // Ds += ΔXᵀ X_q, i.e. D[i, j] = ⟨Δx_i, x_q,j⟩.
            matmul(d.as_mut(), Accum::Add, delta.transpose(), x_q, 1.0, par);
        }
        if let Some(r) = self.r_xx.as_mut() {
            matmul(r.as_mut(), Accum::Add, x_f.transpose(), x_f, 1.0, par);
        }
        self.tokens += x_q.nrows();
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn finish(self) -> LayerStats {
        let scale = faer::Scale(1.0 / self.tokens.max(1) as f64);
        LayerStats {
            h: &self.h * scale,
            d: self.d.map(|d| d * scale),
            r_xx: self.r_xx.map(|r| r * scale),
            tokens: self.tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statistics are sums over tokens: any split into batches gives the same result, and
    /// G = X_f X_qᵀ/N.
    #[test]
    fn batched_accumulation_equals_one_pass() {
        let x_q = Mat::from_fn(50, 4, |t, j| ((t * 7 + j * 3) as f64 * 0.21).sin());
        let x_f = Mat::from_fn(50, 4, |t, j| x_q[(t, j)] + 0.1 * ((t + j) as f64).cos());
        let needed = StatsNeeded {
            mismatch: true,
            r_xx: true,
        };
        let mut one = StatsAccumulator::new(4, needed);
        one.add(x_q.as_ref(), x_f.as_ref());
        let mut split = StatsAccumulator::new(4, needed);
        split.add(x_q.subrows(0, 17), x_f.subrows(0, 17));
        split.add(x_q.subrows(17, 33), x_f.subrows(17, 33));
        let (a, b) = (one.finish(), split.finish());
        assert_eq!(b.tokens, 50);
        let g = a.g().unwrap();
        let expected_g = x_f.transpose() * &x_q * faer::Scale(1.0 / 50.0);
        for i in 0..4 {
            for j in 0..4 {
                assert!((a.h[(i, j)] - b.h[(i, j)]).abs() < 1e-14);
                assert!(
                    (a.d.as_ref().unwrap()[(i, j)] - b.d.as_ref().unwrap()[(i, j)]).abs() < 1e-14
                );
                assert!((g[(i, j)] - expected_g[(i, j)]).abs() < 1e-14);
            }
        }
    }
}
