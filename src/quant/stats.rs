//! Calibration statistics (docs/algorithms.md §0, §3.1), accumulated in f64 from token batches:
//! H = X_q X_qᵀ/N, D = (X_f − X_q) X_qᵀ/N, R_xx = X_f X_fᵀ/N, G = H + D, LQER's
//! per-feature mean |x_f| (§11.4), and SNRQ-S's per-sequence weighted mismatch
//! D_s = Σ_s α_s ΔX_s X_q,sᵀ/N (§7.3 (b)).
//!
//! Batches arrive token-major, `[tokens, n]` (one token per row), so the products are
//! `XᵀX`-shaped; padded positions must already be removed (§3.3).

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

/// Which statistics a solver needs (§3 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsNeeded {
    /// H of the partly quantized stream (every PTQ solver but RTN). Without it only the
    /// full-precision stream runs, and H is that stream's second moment, i.e. R_xx.
    pub quantized: bool,
    /// D = ΔX X_qᵀ/N (GPTAQ, CoreQ, ResComp, Qronos).
    pub mismatch: bool,
    /// R_xx of the full-precision inputs (QERA-exact, SRR, LQ-LoRA).
    pub r_xx: bool,
    /// Per-feature mean |x_f| and the maximum of its per-batch values (LQER, §11.4).
    pub abs_mean: bool,
    /// D_s with per-sequence α_s = min(β_s, 1 − β_s), β_s ~ Beta(5, 5), drawn from this seed
    /// (CoreQ's sampled α, §7.3 (b)).
    pub sampled_mismatch: Option<u64>,
}

impl StatsNeeded {
    /// Whether anything is read from the full-precision stream.
    pub fn full_precision(self) -> bool {
        self.mismatch || self.sampled_mismatch.is_some() || self.r_xx || self.abs_mean
    }

    /// Whether the partly quantized stream must run.
    pub fn quantized_stream(self) -> bool {
        self.quantized || self.mismatch || self.sampled_mismatch.is_some()
    }

    /// Everything either side needs.
    pub fn union(self, other: StatsNeeded) -> StatsNeeded {
        StatsNeeded {
            quantized: self.quantized || other.quantized,
            mismatch: self.mismatch || other.mismatch,
            r_xx: self.r_xx || other.r_xx,
            abs_mean: self.abs_mean || other.abs_mean,
            sampled_mismatch: self.sampled_mismatch.or(other.sampled_mismatch),
        }
    }
}

/// Per-feature |x_f| sums: over all tokens, and the largest per-batch mean seen.
#[derive(Debug, Clone)]
struct AbsMeans {
    sum: Vec<f64>,
    batch_max: Vec<f64>,
}

/// Streaming sums for one module input of width n.
#[derive(Debug, Clone)]
pub struct StatsAccumulator {
    h: Mat<f64>,
    d: Option<Mat<f64>>,
    r_xx: Option<Mat<f64>>,
    abs: Option<AbsMeans>,
    /// Σ α_t Δx_t x_q,tᵀ and Σ α_t over tokens (α_t: the α of the token's sequence).
    d_sampled: Option<(Mat<f64>, f64)>,
    /// One stream only: H is R_xx, accumulated once.
    single_stream: bool,
    tokens: usize,
}

/// The finished statistics, divided by the token count.
#[derive(Debug, Clone)]
pub struct LayerStats {
    pub h: Mat<f64>,
    pub d: Option<Mat<f64>>,
    pub r_xx: Option<Mat<f64>>,
    /// Mean over tokens of |x_f,i|.
    pub abs_mean: Option<Vec<f64>>,
    /// The maximum over batches of the batch mean of |x_f,i| (QERA's LQER code).
    pub abs_mean_batch_max: Option<Vec<f64>>,
    /// D_s = Σ_s α_s ΔX_s X_q,sᵀ/N and the token-weighted mean of α_s (§7.3 (b)).
    pub d_sampled: Option<SampledMismatch>,
    pub tokens: usize,
}

/// SNRQ-S's mismatch: D with each sequence's tokens weighted by that sequence's α_s.
#[derive(Debug, Clone)]
pub struct SampledMismatch {
    pub d: Mat<f64>,
    /// Σ_t α_t / N: the α a fixed-α D would need to have the same total weight.
    pub mean_alpha: f64,
}

/// α = min(β, 1 − β) with β ~ Beta(5, 5) (§7.3 (b)). An integer-shape Beta(a, b) is the a-th
/// smallest of a + b − 1 uniforms, so Beta(5, 5) is the median of nine.
pub fn sample_sequence_alpha(rng: &mut impl rand::Rng) -> f64 {
    let mut u: [f64; 9] = std::array::from_fn(|_| rng.random::<f64>());
    u.sort_by(f64::total_cmp);
    u[4].min(1.0 - u[4])
}

impl LayerStats {
    /// G = H + D = X_f X_qᵀ/N, if D was collected.
    pub fn g(&self) -> Option<Mat<f64>> {
        self.d.as_ref().map(|d| &self.h + d)
    }
}

/// `lower(acc) += lower(XᵀX)`: Gram matrices are symmetric, so half the product suffices.
fn add_gram_lower(acc: faer::MatMut<'_, f64>, x: MatRef<'_, f64>, par: Par) {
    triangular::matmul(
        acc,
        BlockStructure::TriangularLower,
        Accum::Add,
        x.transpose(),
        BlockStructure::Rectangular,
        x,
        BlockStructure::Rectangular,
        1.0,
        par,
    );
}

fn symmetric_from_lower(lower: &Mat<f64>) -> Mat<f64> {
    Mat::from_fn(lower.nrows(), lower.ncols(), |i, j| {
        if i >= j { lower[(i, j)] } else { lower[(j, i)] }
    })
}

impl StatsAccumulator {
    pub fn new(n: usize, needed: StatsNeeded) -> Self {
        StatsAccumulator {
            h: Mat::zeros(n, n),
            d: needed.mismatch.then(|| Mat::zeros(n, n)),
            r_xx: (needed.r_xx && needed.quantized_stream()).then(|| Mat::zeros(n, n)),
            single_stream: !needed.quantized_stream(),
            abs: needed.abs_mean.then(|| AbsMeans {
                sum: vec![0.0; n],
                batch_max: vec![0.0; n],
            }),
            d_sampled: needed.sampled_mismatch.map(|_| (Mat::zeros(n, n), 0.0)),
            tokens: 0,
        }
    }

    /// Adds a batch: `x_q` and `x_f` are `[tokens, n]`, the same tokens through the partly
    /// quantized and the full-precision model (the same matrix when only the full-precision
    /// stream runs).
    pub fn add(&mut self, x_q: MatRef<'_, f64>, x_f: MatRef<'_, f64>) {
        self.add_weighted(x_q, x_f, None);
    }

    /// [`add`](Self::add) with each token's α for D_s (its sequence's α_s); required exactly
    /// when the accumulator collects D_s.
    pub fn add_weighted(
        &mut self,
        x_q: MatRef<'_, f64>,
        x_f: MatRef<'_, f64>,
        token_alpha: Option<&[f64]>,
    ) {
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
        add_gram_lower(self.h.as_mut(), x_q, par);
        if let Some(d) = self.d.as_mut() {
            let delta = x_f - x_q;
            // Ds += ΔXᵀ X_q, i.e. D[i, j] = ⟨Δx_i, x_q,j⟩.
            matmul(d.as_mut(), Accum::Add, delta.transpose(), x_q, 1.0, par);
        }
        if let Some(r) = self.r_xx.as_mut() {
            add_gram_lower(r.as_mut(), x_f, par);
        }
        match (self.d_sampled.as_mut(), token_alpha) {
            (Some((d, alpha_sum)), Some(alpha)) => {
                assert_eq!(alpha.len(), x_q.nrows(), "one α per token");
                let weighted = Mat::from_fn(x_q.nrows(), x_q.ncols(), |t, j| {
                    alpha[t] * (x_f[(t, j)] - x_q[(t, j)])
                });
                matmul(d.as_mut(), Accum::Add, weighted.transpose(), x_q, 1.0, par);
                *alpha_sum += alpha.iter().sum::<f64>();
            }
            (None, None) => {}
            (Some(_), None) => panic!("D_s needs each token's α"),
            (None, Some(_)) => panic!("per-token α given but D_s is not collected"),
        }
        if let Some(abs) = self.abs.as_mut()
            && x_f.nrows() > 0
        {
            for j in 0..x_f.ncols() {
                let batch: f64 = x_f.col(j).iter().map(|v| v.abs()).sum();
                abs.sum[j] += batch;
                abs.batch_max[j] = abs.batch_max[j].max(batch / x_f.nrows() as f64);
            }
        }
        self.tokens += x_q.nrows();
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn finish(self) -> LayerStats {
        let inverse = 1.0 / self.tokens.max(1) as f64;
        let scale = faer::Scale(inverse);
        let h = symmetric_from_lower(&self.h) * scale;
        let r_xx = match self.r_xx {
            Some(r) => Some(symmetric_from_lower(&r) * scale),
            None if self.single_stream => Some(h.clone()),
            None => None,
        };
        let (abs_mean, abs_mean_batch_max) = match self.abs {
            Some(abs) => (
                Some(abs.sum.iter().map(|s| s * inverse).collect()),
                Some(abs.batch_max),
            ),
            None => (None, None),
        };
        LayerStats {
            h,
            d: self.d.map(|d| d * scale),
            r_xx,
            abs_mean,
            abs_mean_batch_max,
            d_sampled: self.d_sampled.map(|(d, alpha_sum)| SampledMismatch {
                d: d * scale,
                mean_alpha: alpha_sum * inverse,
            }),
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
            quantized: true,
            mismatch: true,
            r_xx: true,
            abs_mean: true,
            sampled_mismatch: None,
        };
        let mut one = StatsAccumulator::new(4, needed);
        one.add(x_q.as_ref(), x_f.as_ref());
        let mut split = StatsAccumulator::new(4, needed);
        split.add(x_q.subrows(0, 17), x_f.subrows(0, 17));
        split.add(x_q.subrows(17, 33), x_f.subrows(17, 33));
        let (a, b) = (one.finish(), split.finish());
        assert_eq!(b.tokens, 50);
        let mean_abs_0 = x_f.col(0).iter().map(|v| v.abs()).sum::<f64>() / 50.0;
        assert!((b.abs_mean.as_ref().unwrap()[0] - mean_abs_0).abs() < 1e-15);
        let first_batch = x_f.col(0).iter().take(17).map(|v| v.abs()).sum::<f64>() / 17.0;
        let second_batch = x_f.col(0).iter().skip(17).map(|v| v.abs()).sum::<f64>() / 33.0;
        assert_eq!(
            b.abs_mean_batch_max.as_ref().unwrap()[0],
            first_batch.max(second_batch)
        );
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

    /// D_s = ΔXᵀ diag(α) X_q / N, accumulated batch by batch, and its mean α.
    #[test]
    fn sampled_mismatch_weights_each_token_by_its_alpha() {
        let x_q = Mat::from_fn(30, 3, |t, j| ((t * 5 + j * 11) as f64 * 0.37).sin());
        let x_f = Mat::from_fn(30, 3, |t, j| x_q[(t, j)] + 0.2 * ((t * j) as f64).cos());
        // Three sequences of ten tokens.
        let alpha: Vec<f64> = (0..30).map(|t| [0.1, 0.3, 0.45][t / 10]).collect();
        let needed = StatsNeeded {
            quantized: true,
            sampled_mismatch: Some(7),
            ..StatsNeeded::default()
        };
        let mut acc = StatsAccumulator::new(3, needed);
        acc.add_weighted(x_q.subrows(0, 12), x_f.subrows(0, 12), Some(&alpha[..12]));
        acc.add_weighted(x_q.subrows(12, 18), x_f.subrows(12, 18), Some(&alpha[12..]));
        let stats = acc.finish();
        let sampled = stats.d_sampled.as_ref().unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let expected = (0..30)
                    .map(|t| alpha[t] * (x_f[(t, i)] - x_q[(t, i)]) * x_q[(t, j)])
                    .sum::<f64>()
                    / 30.0;
                assert!((sampled.d[(i, j)] - expected).abs() < 1e-15);
            }
        }
        assert!((sampled.mean_alpha - (0.1 + 0.3 + 0.45) / 3.0).abs() < 1e-15);
        assert!(stats.d.is_none());
    }

    /// α = min(β, 1 − β), β ~ Beta(5, 5): E[α] = 193/512 and P(α < 0.3) = 2·I_0.3(5, 5) =
    /// 0.19761732 (scipy), within four standard errors over 200,000 draws.
    #[test]
    fn sequence_alpha_is_the_folded_beta_5_5() {
        let mut rng = crate::seed::substream_rng(0, "test");
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| sample_sequence_alpha(&mut rng)).collect();
        assert!(draws.iter().all(|a| (0.0..=0.5).contains(a)));
        let mean = draws.iter().sum::<f64>() / n as f64;
        let standard_error = (0.00758673928 / n as f64).sqrt();
        assert!(
            (mean - 193.0 / 512.0).abs() < 4.0 * standard_error,
            "{mean}"
        );
        let below = draws.iter().filter(|&&a| a < 0.3).count() as f64 / n as f64;
        let p = 0.19761732;
        assert!(
            (below - p).abs() < 4.0 * (p * (1.0 - p) / n as f64).sqrt(),
            "{below}"
        );
    }
}
