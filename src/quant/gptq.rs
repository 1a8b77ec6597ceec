//! GPTQ / OPTQ (ALGORITHMS.md §4; IST-DASLab/gptq `fasterquant`): round one column at a time
//! in a fixed order and least-squares-refit the still-free columns through C, the upper
//! Cholesky factor of H_λ⁻¹, with lazy block updates.
//!
//! Shapes: W is `[m, n]` = `[out, in]`, H is `[n, n]`; rows are independent.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

use super::grid::{GridSpec, Rounding, UniformGrid};
use super::hessian::{DEFAULT_PERCDAMP, damped, dead_columns, inverse_cholesky_upper};
use super::layer::{Grouping, QuantizedLayer, fit_rows};
use crate::error::{Error, Result};

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
    /// Reference quirk (§1.5 Choice): fit dynamic groups on the outer W, which lacks the
    /// current block's updates when g < B. Off: fit on the current compensated values.
    pub stale_group_fit: bool,
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
            stale_group_fit: false,
        }
    }
}

/// Quantizes `w` against the Hessian `h` (§4).
pub fn gptq(w: MatRef<'_, f64>, h: MatRef<'_, f64>, config: &GptqConfig) -> Result<QuantizedLayer> {
    let (m, n) = (w.nrows(), w.ncols());
    if h.nrows() != n || h.ncols() != n {
        return Err(Error::InvalidInput(format!(
            "H is {}×{}, expected {n}×{n}",
            h.nrows(),
            h.ncols()
        )));
    }
    let group = match config.grouping {
        Grouping::PerRow => n,
        Grouping::Dynamic(g) | Grouping::Static(g) => g,
    };
    if group == 0 || config.block == 0 {
        return Err(Error::InvalidInput(
            "group and block sizes must be positive".into(),
        ));
    }
    let dead = dead_columns(h);
    let mut w = w.to_owned();
    for j in (0..n).filter(|&j| dead[j]) {
        w.col_mut(j).fill(0.0);
    }
    let fit_rows = |w: MatRef<'_, f64>| fit_rows(w, &config.grid);
    let groups = n.div_ceil(group);
    // Static grids: [group][row], fitted on the original W in original order.
    let static_grids: Vec<Vec<UniformGrid>> = match config.grouping {
        Grouping::Static(g) => (0..groups)
            .map(|k| fit_rows(w.subcols(k * g, g.min(n - k * g))))
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
    let h_perm = Mat::from_fn(n, n, |i, j| h[(perm[i], perm[j])]);
    let dead_perm: Vec<bool> = perm.iter().map(|&j| dead[j]).collect();
    let (c, damping_retries) =
        inverse_cholesky_upper(damped(h_perm.as_ref(), &dead_perm, config.percdamp).as_ref())?;

    let mut grids = vec![
        UniformGrid {
            scale: 1.0,
            zero: 0.0,
            max_code: 1
        };
        m * groups
    ];
    let mut group_of_column = vec![0usize; n];
    let mut current: Vec<UniformGrid> = match config.grouping {
        Grouping::PerRow => fit_rows(w.as_ref()),
        _ => Vec::new(),
    };
    let mut codes = vec![0u8; m * n];
    let mut q = Mat::<f64>::zeros(m, n);
    let mut loss = 0.0;

    for i1 in (0..n).step_by(config.block) {
        let i2 = (i1 + config.block).min(n);
        let count = i2 - i1;
        let mut w1 = w.subcols(i1, count).to_owned();
        let mut err1 = Mat::<f64>::zeros(m, count);
        for k in 0..count {
            let j = i1 + k;
            let processing_group = match config.grouping {
                Grouping::PerRow => 0,
                Grouping::Dynamic(g) => {
                    if j % g == 0 {
                        let width = g.min(n - j);
                        current = if config.stale_group_fit {
                            fit_rows(w.subcols(j, width))
                        } else {
                            fit_rows(
                                current_values(&w, &w1, &err1, c.as_ref(), i1, k, width).as_ref(),
                            )
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
                grids[r * groups + group_of_column[original]] = grid;
                e[r] = (value - quantized) / d;
                loss += (value - quantized).powi(2) / (2.0 * d * d);
            }
            // W1[:, k:] −= e ⊗ C[j, j:i2]
            for kk in k..count {
                let factor = c[(j, i1 + kk)];
                let mut column = w1.col_mut(kk);
                for r in 0..m {
                    column[r] -= e[r] * factor;
                }
            }
            for r in 0..m {
                err1[(r, k)] = e[r];
            }
        }
        if i2 < n {
            // W[:, i2:] −= Err1 · C[i1:i2, i2:]
            matmul(
                w.subcols_mut(i2, n - i2),
                Accum::Add,
                err1.as_ref(),
                c.submatrix(i1, i2, count, n - i2),
                -1.0,
                Par::Seq,
            );
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

/// The compensated values of processing columns `i1+k .. i1+k+width` as the unblocked
/// algorithm would see them: the block's own columns from `w1`, later ones with the block's
/// pending flush applied.
fn current_values(
    w: &Mat<f64>,
    w1: &Mat<f64>,
    err1: &Mat<f64>,
    c: MatRef<'_, f64>,
    i1: usize,
    k: usize,
    width: usize,
) -> Mat<f64> {
    let m = w.nrows();
    let start = i1 + k;
    let mut out = Mat::<f64>::zeros(m, width);
    for t in 0..width {
        let j = start + t;
        if j < i1 + w1.ncols() {
            out.col_mut(t).copy_from(w1.col(j - i1));
        } else {
            for r in 0..m {
                let pending: f64 = (0..k).map(|kk| err1[(r, kk)] * c[(i1 + kk, j)]).sum();
                out[(r, t)] = w[(r, j)] - pending;
            }
        }
    }
    out
}

fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (position, &original) in perm.iter().enumerate() {
        inv[original] = position;
    }
    inv
}
