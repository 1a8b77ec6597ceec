//! Normal-float codebooks (docs/algorithms.md §1.7; QLoRA's NF4, LoftQ's NF2): levels at normal
//! quantiles, applied with a per-block absmax scale by [`super::grid::GridKind::NormalFloat`].

use std::sync::OnceLock;

/// The offset δ of the normal-float construction (QLoRA, LoftQ).
pub const NF_OFFSET: f64 = 0.9677083;
/// Elements per absmax block (QLoRA, LoftQ, PEFT).
pub const NF_BLOCK: usize = 64;

/// Φ⁻¹, the standard normal quantile: Acklam's rational approximation refined by one Halley
/// step on erfc (|error| ≲ 1e-15).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let x = if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    let e = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

fn linspace(start: f64, end: f64, count: usize) -> Vec<f64> {
    (0..count)
        .map(|i| start + (end - start) * i as f64 / (count - 1) as f64)
        .collect()
}

/// The 2^b normal-float levels in [−1, 1], ascending. Asymmetric (LoftQ's default, one more
/// positive level; NF4 at b = 4): positives Φ⁻¹ of the first 2^{b−1} points of
/// linspace(δ, ½, 2^{b−1}+1), negatives −Φ⁻¹ of the first 2^{b−1}−1 points of
/// linspace(δ, ½, 2^{b−1}), and 0. Symmetric: midpoints of Φ⁻¹ at 2^b+1 points in [1−δ, δ].
/// `bits` is 2 to 8 (a validated [`super::grid::Bits`]).
pub fn nf_levels(bits: u8, symmetric: bool) -> Vec<f64> {
    assert!((2..=8).contains(&bits), "NF codebooks have 2 to 8 bits");
    let count = 1usize << bits;
    let mut levels: Vec<f64> = if symmetric {
        let v: Vec<f64> = linspace(1.0 - NF_OFFSET, NF_OFFSET, count + 1)
            .into_iter()
            .map(normal_quantile)
            .collect();
        v.windows(2).map(|w| 0.5 * w[0] + 0.5 * w[1]).collect()
    } else {
        let half = count / 2;
        let positives = linspace(NF_OFFSET, 0.5, half + 1);
        let negatives = linspace(NF_OFFSET, 0.5, half);
        positives[..half]
            .iter()
            .map(|&p| normal_quantile(p))
            .chain(std::iter::once(0.0))
            .chain(negatives[..half - 1].iter().map(|&p| -normal_quantile(p)))
            .collect()
    };
    levels.sort_by(f64::total_cmp);
    let max = levels[levels.len() - 1];
    levels.iter_mut().for_each(|v| *v /= max);
    levels
}

/// The asymmetric NF codebook of `bits` bits (2 to 8), built once per process: grids hold it
/// by reference, so a [`super::grid::Grid`] stays `Copy`.
pub fn nf_codebook(bits: u8) -> &'static [f64] {
    static CODEBOOKS: [OnceLock<Vec<f64>>; 7] = [const { OnceLock::new() }; 7];
    assert!((2..=8).contains(&bits), "NF codebooks have 2 to 8 bits");
    CODEBOOKS[usize::from(bits) - 2].get_or_init(|| nf_levels(bits, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QLoRA's NF4 table (bitsandbytes).
    const NF4: [f64; 16] = [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ];

    #[test]
    fn quantile_matches_known_values() {
        assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-13);
        assert!((normal_quantile(0.5)).abs() < 1e-15);
        assert!((normal_quantile(1e-6) + 4.753424308822899).abs() < 1e-11);
    }

    #[test]
    fn construction_reproduces_nf4_and_nf2() {
        let nf4 = nf_levels(4, false);
        let worst = nf4
            .iter()
            .zip(NF4)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // The published table was computed in f32.
        assert!(worst < 2e-7, "NF4 differs by {worst:e}");
        let nf2 = nf_levels(2, false);
        assert_eq!((nf2[0], nf2[1], nf2[3]), (-1.0, 0.0, 1.0));
        assert!((nf2[2] - 0.337915).abs() < 1e-6, "{nf2:?}");
        let sym = nf_levels(2, true);
        assert!(
            (sym[1] + 0.252568).abs() < 1e-6 && (sym[2] - 0.252568).abs() < 1e-6,
            "{sym:?}"
        );
    }

    #[test]
    fn rtn_on_the_nf_grid_picks_the_nearest_level_per_block() {
        use crate::quant::grid::{Bits, GridKind, GridSpec, Rounding};
        use crate::quant::layer::{Grouping, rtn};
        use faer::Mat;
        let levels = nf_codebook(2);
        assert_eq!(levels, nf_levels(2, false));
        let w = Mat::from_fn(2, 4, |r, c| {
            [[0.9, -0.1, 0.3, 2.0], [-4.0, 1.0, 0.0, 1.5]][r][c]
        });
        let spec = GridSpec::new(Bits::new(2).unwrap(), GridKind::NormalFloat);
        let q = rtn(w.as_ref(), &spec, Grouping::Static(4), Rounding::Nearest).unwrap();
        assert_eq!(
            q.grids.iter().map(|g| g.scale).collect::<Vec<_>>(),
            [2.0, 4.0]
        );
        assert_eq!(q.codes, [2, 1, 1, 3, 0, 2, 1, 2]);
        assert_eq!(q.dequantized[(0, 0)], 2.0 * levels[2]);
        assert_eq!(q.dequantized[(1, 0)], -4.0);
        // A tie between two levels takes the lower one (LoftQ's argmin), outside the range clamps.
        let grid = q.grids[0];
        let midpoint = 2.0 * 0.5 * (levels[1] + levels[2]);
        assert_eq!(grid.code(midpoint, Rounding::Nearest, 0), 1);
        assert_eq!(grid.code(-9.0, Rounding::Nearest, 0), 0);
        // Stochastic rounding between the two levels around w is unbiased.
        let w = 0.5;
        let n = 100_000;
        let mean = (0..n)
            .map(|e| grid.round(w, Rounding::Stochastic { seed: 5 }, e))
            .sum::<f64>()
            / n as f64;
        assert!((mean - w).abs() < 3e-3, "{mean}");
    }
}
