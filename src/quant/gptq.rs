//! GPTQ / OPTQ (docs/algorithms.md §4; IST-DASLab/gptq `fasterquant`) and GPTAQ (§5): round one
//! column at a time in a fixed order and least-squares-refit the still-free columns through C,
//! the upper Cholesky factor of H_λ⁻¹, with lazy block updates. GPTAQ also projects each
//! column's input mismatch onto the free columns through P = α·triu(D Cᵀ, 1)·C; ResComp (§6)
//! adds the compensation-aware error (W_org − w) projected through P₂ = α₂·triu(G Cᵀ, 1)·C.
//!
//! Shapes: W is `[m, n]` = `[out, in]`, H and D are `[n, n]`; rows are independent.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

use super::grid::{Grid, GridSpec, Rounding};
use super::hessian::{DEFAULT_PERCDAMP, damped, dead_columns, inverse_cholesky_upper};
use super::layer::{Grouping, QuantizedLayer, fit_rows};
use crate::error::{Error, Result};

/// What dynamic groups are fitted on when the solver reaches their first column (§1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupFit {
    /// The current compensated values (recommended): independent of the block size.
    Current,
    /// The outer W, which lacks the current block's updates when g < B (the GPTQ reference).
    StaleOuter,
    /// The uncompensated target (CoreQ fits its grids on W_ref, §7.2).
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    pub grid: GridSpec,
    pub grouping: Grouping,
    /// Process columns by decreasing `H_jj` (§4 Choice: recommended on).
    pub act_order: bool,
    /// Lazy-batch block size B (speed only: every B gives the same result).
    pub block: usize,
    pub percdamp: f64,
    pub rounding: Rounding,
    pub group_fit: GroupFit,
}

impl GptqConfig {
    pub fn new(grid: GridSpec) -> Self {
        GptqConfig {
            grid,
            grouping: Grouping::PerRow,
            act_order: true,
            block: 128,
            percdamp: DEFAULT_PERCDAMP,
            rounding: Rounding::Nearest,
            group_fit: GroupFit::Current,
        }
    }
}

/// Which values GPTAQ's block flush multiplies P with (§5 Choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptaqFlush {
    /// Each column's value when it was rounded: blocked equals unblocked (recommended).
    Snapshot,
    /// The block's quantized values, as in the original code (reproduces the paper).
    Quantized,
    /// The block before any in-block update, as in Brevitas.
    Preblock,
    /// The snapshot clamped to each row's current grid range (ResComp's `allw` mode, §6 (b)).
    ClampedSnapshot,
}

/// GPTAQ's mismatch term: D = ΔX X_qᵀ/N, its weight α, and the flush variant.
#[derive(Debug, Clone, Copy)]
pub struct Mismatch<'a> {
    pub d: MatRef<'a, f64>,
    /// 0.25 in every published GPTAQ number; 1 in the derivation.
    pub alpha: f64,
    pub flush: GptaqFlush,
    /// ResComp's α₂ (0.25 in the reference): also propagate the compensation-aware error
    /// (W_org,j − w_j) through P₂ = α₂·triu(G Cᵀ, 1)·C with G = H + D undamped (§6).
    pub compensation: Option<f64>,
}

/// Quantizes `w` against the Hessian `h` (§4).
pub fn gptq(w: MatRef<'_, f64>, h: MatRef<'_, f64>, config: &GptqConfig) -> Result<QuantizedLayer> {
    solve_columns(w, h, None, config, None)
}

/// GPTQ on `w` with per-row, static and target-fitted grids taken from `grid_source` (same
/// shape) instead of `w`: Qronos rounds a refitted V on the original W's grids.
pub fn gptq_on_grids_of(
    w: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    grid_source: MatRef<'_, f64>,
    config: &GptqConfig,
) -> Result<QuantizedLayer> {
    assert_eq!(
        (grid_source.nrows(), grid_source.ncols()),
        (w.nrows(), w.ncols()),
        "the grid source must have the weight's shape"
    );
    solve_columns(w, h, None, config, Some(grid_source))
}

/// GPTAQ (§5): GPTQ plus the projection of each column's input mismatch.
pub fn gptaq(
    w: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    mismatch: Mismatch<'_>,
    config: &GptqConfig,
) -> Result<QuantizedLayer> {
    solve_columns(w, h, Some(mismatch), config, None)
}

fn check_square(name: &str, a: MatRef<'_, f64>, n: usize) {
    assert!(
        a.nrows() == n && a.ncols() == n,
        "{name} is {}×{}, expected {n}×{n}",
        a.nrows(),
        a.ncols()
    );
}

/// Strictly upper triangular part of `a`.
fn strict_upper(a: Mat<f64>) -> Mat<f64> {
    let n = a.nrows();
    Mat::from_fn(n, n, |i, j| if j > i { a[(i, j)] } else { 0.0 })
}

fn solve_columns(
    w: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    mismatch: Option<Mismatch<'_>>,
    config: &GptqConfig,
    grid_source: Option<MatRef<'_, f64>>,
) -> Result<QuantizedLayer> {
    let (m, n) = (w.nrows(), w.ncols());
    check_square("H", h, n);
    if let Some(mm) = &mismatch {
        check_square("D", mm.d, n);
    }
    let group = config.grouping.width(n)?;
    if config.block == 0 {
        return Err(Error::Config("block size must be positive".into()));
    }
    let dead = dead_columns(h);
    let mut w = w.to_owned();
    let mut grid_w = grid_source.unwrap_or(w.as_ref()).to_owned();
    for j in (0..n).filter(|&j| dead[j]) {
        w.col_mut(j).fill(0.0);
        grid_w.col_mut(j).fill(0.0);
    }
    let fit = |w: MatRef<'_, f64>| fit_rows(w, &config.grid);
    let groups = n.div_ceil(group);
    // Static grids: [group][row], fitted on the original W in original order.
    let static_grids: Vec<Vec<Grid>> = match config.grouping {
        Grouping::Static(g) => (0..groups)
            .map(|k| fit(grid_w.subcols(k * g, g.min(n - k * g))))
            .collect(),
        _ => Vec::new(),
    };

    let perm: Vec<usize> = if config.act_order {
        // Dead columns count with their fixed H_jj = 1 (§4 step 1 precedes step 2).
        let diag = |j: usize| if dead[j] { 1.0 } else { h[(j, j)] };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| diag(b).total_cmp(&diag(a)));
        order
    } else {
        (0..n).collect()
    };
    let mut w = Mat::from_fn(m, n, |r, j| w[(r, perm[j])]);
    let target = w.clone();
    let grid_w = Mat::from_fn(m, n, |r, j| grid_w[(r, perm[j])]);
    let h_perm = Mat::from_fn(n, n, |i, j| h[(perm[i], perm[j])]);
    let dead_perm: Vec<bool> = perm.iter().map(|&j| dead[j]).collect();
    let (c, damping_retries) =
        inverse_cholesky_upper(damped(h_perm.as_ref(), &dead_perm, config.percdamp).as_ref())?;
    // P = α·triu(D Cᵀ, 1)·C, with D permuted like H and dead columns zeroed (§5); ResComp's
    // P₂ = α₂·triu(G Cᵀ, 1)·C likewise from the undamped G = H + D (§6).
    let projection = mismatch.map(|mm| {
        let d = Mat::from_fn(n, n, |i, j| {
            if dead_perm[j] {
                0.0
            } else {
                mm.d[(perm[i], perm[j])]
            }
        });
        let p = strict_upper(&d * c.transpose()) * &c * faer::Scale(mm.alpha);
        let p2 = mm.compensation.map(|alpha2| {
            let g = Mat::from_fn(n, n, |i, j| {
                if dead_perm[j] {
                    0.0
                } else {
                    h_perm[(i, j)] + d[(i, j)]
                }
            });
            strict_upper(&g * c.transpose()) * &c * faer::Scale(alpha2)
        });
        Projection {
            p,
            p2,
            flush: mm.flush,
        }
    });

    let mut grids = vec![Grid::uniform(1.0, 0.0, 1); m * groups];
    let mut group_of_column = vec![0usize; n];
    let mut current: Vec<Grid> = match config.grouping {
        Grouping::PerRow => fit(grid_w.as_ref()),
        _ => Vec::new(),
    };
    let mut codes = vec![0u8; m * n];
    let mut q = Mat::<f64>::zeros(m, n);
    let mut loss = 0.0;

    for i1 in (0..n).step_by(config.block) {
        let i2 = (i1 + config.block).min(n);
        let count = i2 - i1;
        let mut w1 = w.subcols(i1, count).to_owned();
        let preblock = w1.clone();
        let mut snapshot = Mat::<f64>::zeros(m, count);
        let mut err1 = Mat::<f64>::zeros(m, count);
        for k in 0..count {
            let j = i1 + k;
            let processing_group = match config.grouping {
                Grouping::PerRow => 0,
                Grouping::Dynamic(g) => {
                    if j % g == 0 {
                        let width = g.min(n - j);
                        current = match config.group_fit {
                            GroupFit::StaleOuter => fit(w.subcols(j, width)),
                            GroupFit::Target => fit(grid_w.subcols(j, width)),
                            GroupFit::Current => {
                                let pending = Pending {
                                    err: &err1,
                                    snapshot: &snapshot,
                                    original: target.subcols(i1, count),
                                    c: c.as_ref(),
                                    projection: projection.as_ref(),
                                };
                                fit(pending.current_values(&w, &w1, i1, k, width).as_ref())
                            }
                        };
                    }
                    j / g
                }
                Grouping::Static(g) => {
                    let k = perm[j] / g;
                    current = static_grids[k].clone();
                    k
                }
            };
            let original = perm[j];
            group_of_column[original] = match config.grouping {
                Grouping::Static(g) => original / g,
                _ => processing_group,
            };
            let d = c[(j, j)];
            let mut e = vec![0.0; m];
            for r in 0..m {
                let value = w1[(r, k)];
                let grid = current[r];
                let code = grid.code(value, config.rounding, (r * n + original) as u64);
                let quantized = grid.dequantize(code);
                codes[r * n + original] = code as u8;
                q[(r, j)] = quantized;
                snapshot[(r, k)] = value;
                grids[r * groups + group_of_column[original]] = grid;
                e[r] = (value - quantized) / d;
                loss += (value - quantized).powi(2) / (2.0 * d * d);
            }
            // W1[:, k:] −= e ⊗ C[j, j:i2]  (+ w ⊗ P[j, j+1:i2] for GPTAQ, + (W_org − w) ⊗
            // P₂[j, j+1:i2] for ResComp; P[j, j] = P₂[j, j] = 0)
            match &projection {
                // Plain GPTQ: axpys on contiguous columns, compiled for the CPU's widest SIMD
                // (pulp's runtime dispatch). No fused multiply-add: the result stays
                // bit-identical to the reference's separate multiply and subtract.
                None => pulp::Arch::new().dispatch(|| {
                    for kk in k..count {
                        let factor = c[(j, i1 + kk)];
                        for (value, e) in w1.col_as_slice_mut(kk).iter_mut().zip(&e) {
                            *value -= e * factor;
                        }
                    }
                }),
                Some(pr) => {
                    for kk in k..count {
                        let factor = c[(j, i1 + kk)];
                        let (pfactor, p2factor) = pr.factors(j, i1 + kk);
                        for (r, value) in w1.col_as_slice_mut(kk).iter_mut().enumerate() {
                            let snap = snapshot[(r, k)];
                            *value +=
                                snap * pfactor + (target[(r, j)] - snap) * p2factor - e[r] * factor;
                        }
                    }
                }
            }
            for r in 0..m {
                err1[(r, k)] = e[r];
            }
        }
        if i2 < n {
            // The flush is the one large product of the loop; faer splits it over output
            // blocks, so results are the same on any number of threads (tested).
            let par = Par::rayon(0);
            // W[:, i2:] −= Err1·C[i1:i2, i2:] − M·P[i1:i2, i2:]
            matmul(
                w.subcols_mut(i2, n - i2),
                Accum::Add,
                err1.as_ref(),
                c.submatrix(i1, i2, count, n - i2),
                -1.0,
                par,
            );
            if let Some(pr) = &projection {
                let values = match pr.flush {
                    GptaqFlush::Snapshot => snapshot.clone(),
                    GptaqFlush::Preblock => preblock.clone(),
                    GptaqFlush::Quantized => q.subcols(i1, count).to_owned(),
                    GptaqFlush::ClampedSnapshot => Mat::from_fn(m, count, |r, k| {
                        let (low, high) = current[r].range();
                        snapshot[(r, k)].clamp(low, high)
                    }),
                };
                // W[:, i2:] += V·P[blk, i2:] + (W_org[:, blk] − V)·P₂[blk, i2:]
                matmul(
                    w.subcols_mut(i2, n - i2),
                    Accum::Add,
                    values.as_ref(),
                    pr.p.submatrix(i1, i2, count, n - i2),
                    1.0,
                    par,
                );
                if let Some(p2) = &pr.p2 {
                    let gap = target.subcols(i1, count) - &values;
                    matmul(
                        w.subcols_mut(i2, n - i2),
                        Accum::Add,
                        gap.as_ref(),
                        p2.submatrix(i1, i2, count, n - i2),
                        1.0,
                        par,
                    );
                }
            }
        }
    }
    let position = inverse(&perm);
    let dequantized = Mat::from_fn(m, n, |r, col| q[(r, position[col])]);
    Ok(QuantizedLayer {
        rows: m,
        cols: n,
        codes,
        grids,
        groups,
        group_of_column,
        dequantized,
        loss,
        damping_retries,
    })
}

/// GPTAQ's P and ResComp's P₂ (permuted), with the flush variant.
struct Projection {
    p: Mat<f64>,
    p2: Option<Mat<f64>>,
    flush: GptaqFlush,
}

impl Projection {
    /// (P[i, j], P₂[i, j]).
    fn factors(&self, i: usize, j: usize) -> (f64, f64) {
        (
            self.p[(i, j)],
            self.p2.as_ref().map_or(0.0, |p2| p2[(i, j)]),
        )
    }
}

/// The block's updates not yet flushed to the outer W.
struct Pending<'a> {
    err: &'a Mat<f64>,
    snapshot: &'a Mat<f64>,
    /// W_org's block columns.
    original: MatRef<'a, f64>,
    c: MatRef<'a, f64>,
    projection: Option<&'a Projection>,
}

impl Pending<'_> {
    /// The compensated values of processing columns `i1+k .. i1+k+width` as the unblocked
    /// algorithm sees them: the block's own columns from `w1`, later ones with the block's
    /// pending flush applied.
    fn current_values(
        &self,
        w: &Mat<f64>,
        w1: &Mat<f64>,
        i1: usize,
        k: usize,
        width: usize,
    ) -> Mat<f64> {
        let m = w.nrows();
        let start = i1 + k;
        Mat::from_fn(m, width, |r, t| {
            let j = start + t;
            if j < i1 + w1.ncols() {
                return w1[(r, j - i1)];
            }
            let mut value = w[(r, j)];
            for kk in 0..k {
                value -= self.err[(r, kk)] * self.c[(i1 + kk, j)];
                if let Some(pr) = self.projection {
                    let (p, p2) = pr.factors(i1 + kk, j);
                    let snapshot = self.snapshot[(r, kk)];
                    value += snapshot * p + (self.original[(r, kk)] - snapshot) * p2;
                }
            }
            value
        })
    }
}

fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (position, &original) in perm.iter().enumerate() {
        inv[original] = position;
    }
    inv
}
