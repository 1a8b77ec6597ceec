//! Quantization grids (docs/algorithms.md §1.1–§1.7) and rounding (§1.8).
//!
//! Every grid is `ŵ = s·(level(code) − z)` with `code ∈ [0, 2^b − 1]`. On the uniform grids
//! `level(code) = code`; on the normal-float grid `level` is the NF codebook (§1.7) and `z = 0`.
//! The kinds differ only in how `s` and `z` are fitted to a group of weights.

use super::codebook::nf_codebook;
use crate::error::{Error, Result};

/// Bits per code, 2 to 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bits(u8);

impl Bits {
    pub fn new(bits: u8) -> Result<Self> {
        if (2..=8).contains(&bits) {
            Ok(Bits(bits))
        } else {
            Err(Error::Config(format!("bits must be 2 to 8, got {bits}")))
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }

    /// The largest code, `2^b − 1`.
    pub fn max_code(self) -> u32 {
        (1u32 << self.0) - 1
    }
}

/// How a grid is fitted to a group of weights; named `asym`, `sym`, `quarot`, `mxint`, `nf`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum GridKind {
    /// §1.1: min–max over [min(w, 0), max(w, 0)], `z = round(−xmin/s)`.
    #[serde(rename = "asym")]
    #[value(name = "asym")]
    Asymmetric,
    /// §1.2: `s = 2·max|w|/(2^b − 1)`, `z = 2^{b−1}` (GPTQ's and CoreQ's symmetric grid).
    #[serde(rename = "sym")]
    #[value(name = "sym")]
    SymmetricGptq,
    /// §1.3: `s = max(max|w|/(2^{b−1} − 1), 1e-5)`, `z = 2^{b−1}` (GPTAQ's and ResComp's).
    #[serde(rename = "quarot")]
    #[value(name = "quarot")]
    SymmetricQuarot,
    /// §1.6: MXINT, a shared power-of-two exponent per group (block 32 in the format):
    /// levels `m·2^e/2^{b−2}` for `|m| ≤ 2^{b−1} − 1`, with `e = ⌊log₂ max|w|⌋`. Codes are stored
    /// offset by `2^{b−1} − 1` (code `2^b − 1` is never used), which packs like any uniform code.
    #[serde(rename = "mxint")]
    #[value(name = "mxint")]
    MxInt,
    /// §1.7: normal float (QLoRA's NF4, LoftQ's NF2): the asymmetric NF codebook scaled by the
    /// group's absmax (QLoRA's blocks of 64 are groups of 64 input columns when 64 divides
    /// the row length, as in every BERT linear).
    #[serde(rename = "nf")]
    #[value(name = "nf")]
    NormalFloat,
}

/// The precision a grid's scale is fitted and stored in; named `f32`, `f16`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleDtype {
    /// Fitted in f64, stored as F32 (32 bits per group).
    #[default]
    F32,
    /// Rounded to the nearest f16 inside the fit, so that the codes, every solver's and
    /// initializer's Q and the stored F16 scale agree exactly (16 bits per group: NF2 in blocks
    /// of 64 at 2.25 bits per weight).
    F16,
}

crate::named!(GridKind, ScaleDtype);

/// f16's largest finite value and smallest positive (subnormal) value.
const F16_MAX: f64 = 65504.0;
const F16_MIN_POSITIVE_SUBNORMAL: f64 = 5.960_464_477_539_063e-8; // 2^-24

/// `x > 0` rounded to the nearest f16 (ties to even), saturating to f16's positive range so a
/// scale never becomes 0 or ∞. Exact: the quantum `2^(e−10)` of x's binade (at least f16's
/// subnormal step 2^-24) divides and multiplies without rounding.
pub fn round_to_f16(x: f64) -> f64 {
    let binade = ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let quantum = 2f64.powi(binade.max(-14) - 10);
    ((x / quantum).round_ties_even() * quantum).clamp(F16_MIN_POSITIVE_SUBNORMAL, F16_MAX)
}

impl ScaleDtype {
    /// `scale` in this precision.
    fn round(self, scale: f64) -> f64 {
        match self {
            ScaleDtype::F32 => scale,
            ScaleDtype::F16 => round_to_f16(scale),
        }
    }
}

/// Rounding onto the grid (§1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Half to even, as `torch.round` (every reference) does.
    Nearest,
    /// Unbiased: up with probability equal to the fractional part, from a counter-based RNG
    /// keyed by `(seed, element)`.
    Stochastic { seed: u64 },
}

/// The error exponent of the MSE clipping search (§1.4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MseSearch {
    /// 2.4 in the reference (recommended); 2 for plain squared error.
    pub norm: f64,
}

impl Default for MseSearch {
    fn default() -> Self {
        MseSearch { norm: 2.4 }
    }
}

/// Everything that decides how a grid is fitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridSpec {
    pub bits: Bits,
    pub kind: GridKind,
    /// Shrink the range to minimize Σ|ŵ − w|^norm (§1.4); `None` is plain min–max.
    pub mse: Option<MseSearch>,
    /// GPTQ reference quirk (§1.2 Choice): a symmetric group without negative entries keeps
    /// `xmin = 0`, so `s = xmax/(2^b − 1)` and positives clip near `xmax/2`.
    pub sym_nonneg_quirk: bool,
    /// The scale's precision (not MXINT's, whose step is a power of two stored as its exponent).
    pub scale_dtype: ScaleDtype,
}

impl GridSpec {
    pub fn new(bits: Bits, kind: GridKind) -> Self {
        GridSpec {
            bits,
            kind,
            mse: None,
            sym_nonneg_quirk: false,
            scale_dtype: ScaleDtype::F32,
        }
    }
}

/// A fitted grid: `ŵ = scale·(level(code) − zero)`, `code ∈ [0, max_code]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub scale: f64,
    pub zero: f64,
    pub max_code: u32,
    /// The codebook, ascending, one level per code; `None` for a uniform grid (`level = code`).
    pub levels: Option<&'static [f64]>,
}

impl Grid {
    /// A uniform grid.
    pub fn uniform(scale: f64, zero: f64, max_code: u32) -> Self {
        Grid {
            scale,
            zero,
            max_code,
            levels: None,
        }
    }

    /// The code of `w`. Uniform: `clamp(round(w/s) + z)`; rounding before adding z matters at
    /// exact ties when z is odd (`torch.round(x / scale) + zero` in the references).
    pub fn code(&self, w: f64, rounding: Rounding, element: u64) -> u32 {
        let u = w / self.scale;
        if let Some(levels) = self.levels {
            return codebook_code(levels, u, rounding, element);
        }
        let rounded = match rounding {
            Rounding::Nearest => u.round_ties_even(),
            Rounding::Stochastic { seed } => {
                let floor = u.floor();
                if unit_uniform(seed, element) < u - floor {
                    floor + 1.0
                } else {
                    floor
                }
            }
        };
        (rounded + self.zero).clamp(0.0, f64::from(self.max_code)) as u32
    }

    pub fn dequantize(&self, code: u32) -> f64 {
        let level = self
            .levels
            .map_or(f64::from(code), |levels| levels[code as usize]);
        self.scale * (level - self.zero)
    }

    /// `rnd(w)`: the dequantized value of `w`'s code.
    pub fn round(&self, w: f64, rounding: Rounding, element: u64) -> f64 {
        self.dequantize(self.code(w, rounding, element))
    }

    /// The representable range `[lowest, highest]` (for clip-rate and clamp computations).
    pub fn range(&self) -> (f64, f64) {
        (self.dequantize(0), self.dequantize(self.max_code))
    }
}

/// The code of `u = w/s` on an ascending codebook. Nearest: the closest level, the lower one
/// at a tie (QLoRA's and LoftQ's argmin). Stochastic: one of the two levels around `u`, the
/// upper with probability proportional to `u`'s distance from the lower, so `E[ŵ] = w` inside
/// the codebook's range.
fn codebook_code(levels: &[f64], u: f64, rounding: Rounding, element: u64) -> u32 {
    // The first level above u; u at or below the lowest level, or above the highest, clamps.
    let above = levels.partition_point(|&v| v <= u);
    let code = match (above, rounding) {
        (0, _) => 0,
        (n, _) if n == levels.len() => n - 1,
        (n, Rounding::Nearest) => {
            if u - levels[n - 1] <= levels[n] - u {
                n - 1
            } else {
                n
            }
        }
        (n, Rounding::Stochastic { seed }) => {
            let fraction = (u - levels[n - 1]) / (levels[n] - levels[n - 1]);
            if unit_uniform(seed, element) < fraction {
                n
            } else {
                n - 1
            }
        }
    };
    code as u32
}

/// A uniform draw in [0, 1) from `(seed, element)`: SplitMix64 of the pair, so every element
/// has its own reproducible draw whatever order elements are visited in.
fn unit_uniform(seed: u64, element: u64) -> f64 {
    let mut z = seed ^ element.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The grid of `kind` for the range `[xmin, xmax]` (already including 0, §1.1 step 1), its
/// scale in `spec.scale_dtype` before the zero is fitted to it.
fn grid_for_range(spec: &GridSpec, xmin: f64, xmax: f64) -> Grid {
    let max_code = spec.bits.max_code();
    let half = f64::from(1u32 << (spec.bits.get() - 1));
    let scale = |s: f64| spec.scale_dtype.round(s);
    match spec.kind {
        GridKind::Asymmetric => {
            let scale = scale((xmax - xmin) / f64::from(max_code));
            Grid::uniform(scale, (-xmin / scale).round_ties_even(), max_code)
        }
        GridKind::SymmetricGptq => {
            Grid::uniform(scale((xmax - xmin) / f64::from(max_code)), half, max_code)
        }
        GridKind::SymmetricQuarot => Grid::uniform(
            scale((xmax.max(-xmin) / (half - 1.0)).max(1e-5)),
            half,
            max_code,
        ),
        // §1.7: the levels span [−1, 1], so the scale is the absmax.
        GridKind::NormalFloat => Grid {
            levels: Some(nf_codebook(spec.bits.get())),
            ..Grid::uniform(scale(xmax.max(-xmin)), 0.0, max_code)
        },
        GridKind::MxInt => unreachable!("MXINT grids are fitted by mxint_grid"),
    }
}

/// Below this magnitude MXINT flushes values to zero (f32's smallest normal, §1.6 step 1).
const MXINT_SUBNORMAL: f64 = 1.1754943508222875e-38;

/// §1.6: `s = 2^e` with `e` the binary exponent of the largest magnitude; element step `s/2^{b−2}`.
fn mxint_grid(values: &[f64], bits: Bits) -> Grid {
    let b = i32::from(bits.get());
    let max_magnitude = values
        .iter()
        .map(|v| v.abs())
        .filter(|&v| v >= MXINT_SUBNORMAL)
        .fold(0.0f64, f64::max);
    let half = f64::from((1u32 << (b - 1)) - 1);
    let step = if max_magnitude == 0.0 {
        1.0 // an all-zero block stays zero whatever the scale
    } else {
        let exponent = max_magnitude.log2().floor() as i32;
        // log2 can round up just below a power of two; the exponent field is exact.
        let exponent = if 2f64.powi(exponent) > max_magnitude {
            exponent - 1
        } else {
            exponent
        };
        2f64.powi(exponent - (b - 2))
    };
    Grid::uniform(step, half, 2 * ((1u32 << (b - 1)) - 1))
}

/// Fits a grid to one group of weights (a row, or g columns of a row).
pub fn fit_grid(values: &[f64], spec: &GridSpec) -> Grid {
    if spec.kind == GridKind::MxInt {
        return mxint_grid(values, spec.bits);
    }
    let mut xmin = values.iter().copied().fold(0.0f64, f64::min);
    let mut xmax = values.iter().copied().fold(0.0f64, f64::max);
    if spec.kind != GridKind::Asymmetric {
        xmax = xmax.max(xmin.abs());
        if xmin < 0.0 || !spec.sym_nonneg_quirk {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        (xmin, xmax) = (-1.0, 1.0);
    }
    let mut best = grid_for_range(spec, xmin, xmax);
    if let Some(mse) = spec.mse {
        let mut best_err = f64::INFINITY;
        for i in 0..80 {
            let p = 1.0 - f64::from(i) / 100.0;
            // Symmetric kinds keep z = 2^{b−1} as the range shrinks; asymmetric refits it.
            let grid = grid_for_range(spec, p * xmin, p * xmax);
            let err: f64 = values
                .iter()
                .map(|&w| {
                    (grid.round(w, Rounding::Nearest, 0) - w)
                        .abs()
                        .powf(mse.norm)
                })
                .sum();
            if err < best_err {
                best_err = err;
                best = grid;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bits: u8, kind: GridKind) -> GridSpec {
        GridSpec::new(Bits::new(bits).unwrap(), kind)
    }

    #[test]
    fn asymmetric_represents_zero_exactly() {
        let grid = fit_grid(&[0.3, -1.1, 2.5, 0.7], &spec(3, GridKind::Asymmetric));
        assert_eq!(grid.round(0.0, Rounding::Nearest, 0), 0.0);
        assert!((grid.scale - 3.6 / 7.0).abs() < 1e-15);
    }

    #[test]
    fn gptq_symmetric_two_bit_levels() {
        // b = 2: {−4/3, −2/3, 0, 2/3}·xmax (§1.2).
        let grid = fit_grid(&[1.5, -0.2], &spec(2, GridKind::SymmetricGptq));
        let levels: Vec<f64> = (0..4).map(|c| grid.dequantize(c) / 1.5).collect();
        for (got, want) in levels.iter().zip([-4.0 / 3.0, -2.0 / 3.0, 0.0, 2.0 / 3.0]) {
            assert!((got - want).abs() < 1e-12, "{levels:?}");
        }
        // The quirk: no negatives → xmin stays 0, s = xmax/3, positives clip near xmax/2.
        let quirk = GridSpec {
            sym_nonneg_quirk: true,
            ..spec(2, GridKind::SymmetricGptq)
        };
        let grid = fit_grid(&[1.5, 0.2], &quirk);
        assert!((grid.range().1 - 0.5).abs() < 1e-12);
    }

    #[test]
    fn quarot_symmetric_three_bit_levels() {
        // b = 3: {−4…3}·max|w|/3 (§1.3).
        let grid = fit_grid(&[0.9, -0.6], &spec(3, GridKind::SymmetricQuarot));
        assert!((grid.dequantize(0) + 1.2).abs() < 1e-12);
        assert!((grid.dequantize(7) - 0.9).abs() < 1e-12);
    }

    #[test]
    fn mxint_levels_follow_the_table() {
        // A block whose largest magnitude is 1.7: e = 0, s = 1.
        let values = [1.7, -0.3, 0.55, -1.2];
        let levels = |bits: u8| -> Vec<f64> {
            let grid = fit_grid(&values, &spec(bits, GridKind::MxInt));
            (0..=grid.max_code).map(|c| grid.dequantize(c)).collect()
        };
        assert_eq!(levels(2), [-1.0, 0.0, 1.0], "MXINT-2 is ternary");
        assert_eq!(levels(3), [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
        assert_eq!(levels(4).last(), Some(&1.75));
        let grid = fit_grid(&values, &spec(2, GridKind::MxInt));
        // |x| ≤ s/2 → 0 (0.5 ties to even), everything else up to 2s → ±s.
        let round = |x| grid.round(x, Rounding::Nearest, 0);
        assert_eq!(
            [round(0.5), round(0.51), round(-1.9), round(1.7)],
            [0.0, 1.0, -1.0, 1.0]
        );
        // Exponents: a block max of exactly 2^k, just below it, and an all-zero block.
        assert_eq!(fit_grid(&[4.0, 1.0], &spec(2, GridKind::MxInt)).scale, 4.0);
        assert_eq!(
            fit_grid(&[3.999_999, 1.0], &spec(2, GridKind::MxInt)).scale,
            2.0
        );
        let zero = fit_grid(&[0.0, 1e-40], &spec(3, GridKind::MxInt));
        assert_eq!(zero.round(1e-40, Rounding::Nearest, 0), 0.0);
    }

    #[test]
    fn f16_rounding_matches_half_and_saturates() {
        // Correctly rounded f32 → f16 conversion (`half`) as the reference, over the binades
        // a scale can take, subnormals included.
        let mut rng = crate::seed::substream_rng(5, "f16-test");
        for _ in 0..20_000 {
            use rand::Rng;
            let x = 2f32.powf(rng.random_range(-30.0..15.0f32));
            let want = half::f16::from_f32(x).to_f64();
            assert_eq!(
                round_to_f16(f64::from(x)),
                want.max(2f64.powi(-24)),
                "{x:e}"
            );
        }
        // Ties to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10.
        assert_eq!(round_to_f16(1.0 + 2f64.powi(-11)), 1.0);
        assert_eq!(
            round_to_f16(1.0 + 3.0 * 2f64.powi(-11)),
            1.0 + 2f64.powi(-9)
        );
        assert_eq!(round_to_f16(3.0 * 2f64.powi(-25)), 2f64.powi(-23));
        assert_eq!(round_to_f16(1e-30), 2f64.powi(-24));
        assert_eq!(round_to_f16(1e9), 65504.0);
    }

    #[test]
    fn f16_scales_are_fitted_before_the_zero() {
        let values = [0.3, -1.1, 2.5, 0.7];
        let f16 = GridSpec {
            scale_dtype: ScaleDtype::F16,
            ..spec(3, GridKind::Asymmetric)
        };
        let grid = fit_grid(&values, &f16);
        let s = half::f16::from_f64(3.6 / 7.0).to_f64();
        assert_eq!((grid.scale, grid.zero), (s, (1.1 / s).round_ties_even()));
        assert_ne!(grid.scale, 3.6 / 7.0);
        let nf = fit_grid(
            &values,
            &GridSpec {
                scale_dtype: ScaleDtype::F16,
                ..spec(2, GridKind::NormalFloat)
            },
        );
        assert_eq!(nf.scale, 2.5, "2.5 is an f16");
        // MXINT's step is a power of two whatever the scale dtype says.
        let mx = GridSpec {
            scale_dtype: ScaleDtype::F16,
            ..spec(2, GridKind::MxInt)
        };
        assert_eq!(fit_grid(&values, &mx).scale, 2.0);
    }

    #[test]
    fn rounding_is_half_to_even() {
        let grid = Grid::uniform(1.0, 4.0, 15);
        assert_eq!(grid.code(0.5, Rounding::Nearest, 0), 4);
        assert_eq!(grid.code(1.5, Rounding::Nearest, 0), 6);
        assert_eq!(grid.code(-0.5, Rounding::Nearest, 0), 4);
        // An odd zero point: round(w/s) first, then add z.
        let odd = Grid { zero: 3.0, ..grid };
        assert_eq!(odd.code(0.5, Rounding::Nearest, 0), 3);
        assert_eq!(odd.code(1.5, Rounding::Nearest, 0), 5);
        assert_eq!(grid.code(100.0, Rounding::Nearest, 0), 15);
    }

    #[test]
    fn stochastic_rounding_is_unbiased_and_reproducible() {
        let grid = Grid::uniform(0.5, 4.0, 15);
        let w = 0.3; // between levels 0.0 and 0.5, expected value 0.3
        let n = 200_000;
        let mean: f64 = (0..n)
            .map(|e| grid.round(w, Rounding::Stochastic { seed: 9 }, e))
            .sum::<f64>()
            / n as f64;
        assert!((mean - w).abs() < 3e-3, "{mean}");
        let a: Vec<u32> = (0..64)
            .map(|e| grid.code(w, Rounding::Stochastic { seed: 9 }, e))
            .collect();
        let b: Vec<u32> = (0..64)
            .map(|e| grid.code(w, Rounding::Stochastic { seed: 9 }, e))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn mse_search_never_increases_the_error_and_helps_on_gaussian_weights() {
        use rand::Rng;
        let mut rng = crate::seed::substream_rng(3, "mse-test");
        let gaussian: Vec<f64> = (0..512)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
            })
            .collect();
        for kind in [
            GridKind::Asymmetric,
            GridKind::SymmetricGptq,
            GridKind::SymmetricQuarot,
        ] {
            for bits in [2, 3, 4] {
                let plain = spec(bits, kind);
                let mse = GridSpec {
                    mse: Some(MseSearch::default()),
                    ..plain
                };
                let err = |g: Grid| -> f64 {
                    gaussian
                        .iter()
                        .map(|&w| (g.round(w, Rounding::Nearest, 0) - w).abs().powf(2.4))
                        .sum()
                };
                let (e_plain, e_mse) = (
                    err(fit_grid(&gaussian, &plain)),
                    err(fit_grid(&gaussian, &mse)),
                );
                assert!(e_mse < e_plain, "{kind:?} b={bits}: {e_mse} !< {e_plain}");
            }
        }
    }
}
