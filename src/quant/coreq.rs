//! CoreQ / SNRQ (docs/algorithms.md §7.1–§7.3): a shifted target W_ref(α) = W + α(WD)H_λ⁻¹ that
//! blends the symmetric objective ‖(Q−W)X_q‖² with the asymmetric ‖QX_q − WX_f‖², rounded by
//! successive rounding, which equals act-order GPTQ on W_ref with grids fitted on W_ref (§10 #5).

use faer::linalg::solvers::Solve;
use faer::{Mat, MatRef, Side};

use super::gptq::{GptqConfig, GroupFit, gptq};
use super::grid::Rounding;
use super::hessian::{damped, dead_columns};
use super::layer::QuantizedLayer;
use crate::error::{Error, Result};

/// How α is chosen (§7.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlphaMode {
    /// A fixed α (0 is GPTQ, 1 the asymmetric objective).
    Fixed(f64),
    /// Round with `initial`, then re-round with the closed form α* of that rounding
    /// (§7.3 (c)), unconditionally.
    Closed { initial: f64 },
    /// Round with `initial`, set α to the closed form α* of that rounding, re-round, and keep
    /// the second result only if the symmetric objective decreased (§7.3 (d), recommended
    /// with `initial` = 0.25).
    Alternate { initial: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreqConfig {
    /// Grid, grouping, damping and block; act-order and target group fits are forced (§7.2).
    pub gptq: GptqConfig,
    pub alpha: AlphaMode,
    /// Coordinate-descent passes after rounding (§7.5; 0, the default, turns it off).
    pub cd_passes: usize,
}

/// CoreQ's result: the layer, the α it was rounded with, and the closed form α* of that
/// rounding (what the reference's schedule hands to the same module one layer later).
#[derive(Debug, Clone)]
pub struct CoreqLayer {
    pub layer: QuantizedLayer,
    pub alpha: f64,
    pub alpha_star: f64,
}

/// H with dead columns fixed and damped (a private copy), as the target uses it.
fn h_lambda(h: MatRef<'_, f64>, percdamp: f64) -> Mat<f64> {
    damped(h, &dead_columns(h), percdamp)
}

/// `A·H_λ⁻¹` by a Cholesky solve (never an explicit inverse).
fn right_solve(a: MatRef<'_, f64>, h_lambda: MatRef<'_, f64>) -> Result<Mat<f64>> {
    let llt = h_lambda
        .llt(Side::Lower)
        .map_err(|_| Error::Numeric("damped H is not positive definite".into()))?;
    // X·H = A  ⇔  H·Xᵀ = Aᵀ (H symmetric)
    Ok(llt.solve(a.transpose().to_owned()).transpose().to_owned())
}

/// WD and the shift (WD)·H_λ⁻¹ of one layer: every α's target and α* read these, so a solver
/// that tries several α computes the two products once.
struct Mismatch {
    wd: Mat<f64>,
    shift: Mat<f64>,
}

impl Mismatch {
    fn new(
        w: MatRef<'_, f64>,
        h: MatRef<'_, f64>,
        d: MatRef<'_, f64>,
        percdamp: f64,
    ) -> Result<Self> {
        let wd = w * d;
        let shift = right_solve(wd.as_ref(), h_lambda(h, percdamp).as_ref())?;
        Ok(Mismatch { wd, shift })
    }

    /// W_ref(α) = W + α·shift.
    fn target(&self, w: MatRef<'_, f64>, alpha: f64) -> Mat<f64> {
        w + &self.shift * faer::Scale(alpha)
    }

    /// α* = clip(⟨Q−W, WD⟩ / tr(WD H_λ⁻¹ DᵀWᵀ), 0, 1) of the rounding `q` (§7.3 (c)); the
    /// denominator is ⟨shift, WD⟩.
    fn closed_form_alpha(&self, w: MatRef<'_, f64>, q: MatRef<'_, f64>) -> f64 {
        let numerator = frobenius_inner((q - w).as_ref(), self.wd.as_ref());
        let denominator = frobenius_inner(self.shift.as_ref(), self.wd.as_ref());
        if denominator > 0.0 {
            (numerator / denominator).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// W_ref(α) = W + α(WD)H_λ⁻¹ (§7.1).
pub fn shifted_target(
    w: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
    alpha: f64,
    percdamp: f64,
) -> Result<Mat<f64>> {
    Ok(Mismatch::new(w, h, d, percdamp)?.target(w, alpha))
}

/// ⟨A, B⟩ = Σ A_ij B_ij.
pub fn frobenius_inner(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    (0..a.ncols())
        .map(|j| (0..a.nrows()).map(|i| a[(i, j)] * b[(i, j)]).sum::<f64>())
        .sum()
}

/// The symmetric objective tr((Q−W)H(Q−W)ᵀ) = ‖(Q−W)X_q‖²/N.
pub fn symmetric_objective(w: MatRef<'_, f64>, q: MatRef<'_, f64>, h: MatRef<'_, f64>) -> f64 {
    let e = q - w;
    frobenius_inner((&e * h).as_ref(), e.as_ref())
}

/// The asymmetric objective ‖QX_q − WX_f‖²/N up to a term that does not depend on Q:
/// tr((Q−W)H(Q−W)ᵀ) − 2⟨Q−W, WD⟩.
pub fn asymmetric_objective(
    w: MatRef<'_, f64>,
    q: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
) -> f64 {
    symmetric_objective(w, q, h) - 2.0 * frobenius_inner((q - w).as_ref(), (w * d).as_ref())
}

/// Coordinate descent on tr((Q − W_ref)H_λ(Q − W_ref)ᵀ) (§7.5), each element on its own grid:
/// columns by decreasing (H_λ)_ii, Q_i ← rnd(Q_i − (ΔH_λ)_i/(H_λ)_ii), at most `passes`
/// sweeps or until nothing moves. Each step takes the grid point nearest the coordinate's
/// exact minimiser, so no step increases the objective. Returns how many elements moved.
pub fn coordinate_descent(
    layer: &mut QuantizedLayer,
    w_ref: MatRef<'_, f64>,
    h_lambda: MatRef<'_, f64>,
    passes: usize,
) -> usize {
    let (m, n) = (layer.rows, layer.cols);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| h_lambda[(b, b)].total_cmp(&h_lambda[(a, a)]));
    let mut moved = 0;
    for r in 0..m {
        let delta: Vec<f64> = (0..n)
            .map(|j| layer.dequantized[(r, j)] - w_ref[(r, j)])
            .collect();
        // g = Δ·H_λ, kept up to date as coordinates move.
        let mut g: Vec<f64> = (0..n)
            .map(|j| (0..n).map(|i| delta[i] * h_lambda[(i, j)]).sum())
            .collect();
        for _ in 0..passes {
            let mut changed = false;
            for &i in &order {
                let current = layer.dequantized[(r, i)];
                let grid = *layer.grid(r, i);
                let code = grid.code(current - g[i] / h_lambda[(i, i)], Rounding::Nearest, 0);
                let value = grid.dequantize(code);
                let step = value - current;
                if step != 0.0 {
                    layer.dequantized[(r, i)] = value;
                    layer.codes[r * n + i] = code as u8;
                    for (j, gj) in g.iter_mut().enumerate() {
                        *gj += step * h_lambda[(i, j)];
                    }
                    moved += 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }
    moved
}

/// CoreQ with successive rounding (§7.2), the α of `config.alpha`, and optional coordinate
/// descent (§7.5).
pub fn coreq(
    w: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
    config: &CoreqConfig,
) -> Result<CoreqLayer> {
    let solver = GptqConfig {
        act_order: true,
        group_fit: GroupFit::Target,
        ..config.gptq
    };
    let percdamp = solver.percdamp;
    let mismatch = Mismatch::new(w, h, d, percdamp)?;
    let round = |alpha: f64| gptq(mismatch.target(w, alpha).as_ref(), h, &solver);
    let (mut layer, alpha) = match config.alpha {
        AlphaMode::Fixed(alpha) => (round(alpha)?, alpha),
        AlphaMode::Closed { initial } => {
            let first = round(initial)?;
            let alpha = mismatch.closed_form_alpha(w, first.dequantized.as_ref());
            (round(alpha)?, alpha)
        }
        AlphaMode::Alternate { initial } => {
            let first = round(initial)?;
            let alpha = mismatch.closed_form_alpha(w, first.dequantized.as_ref());
            let second = round(alpha)?;
            let objective =
                |layer: &QuantizedLayer| symmetric_objective(w, layer.dequantized.as_ref(), h);
            if objective(&second) < objective(&first) {
                (second, alpha)
            } else {
                (first, initial)
            }
        }
    };
    if config.cd_passes > 0 {
        let target = mismatch.target(w, alpha);
        let h_damped = h_lambda(h, percdamp);
        coordinate_descent(
            &mut layer,
            target.as_ref(),
            h_damped.as_ref(),
            config.cd_passes,
        );
    }
    let alpha_star = mismatch.closed_form_alpha(w, layer.dequantized.as_ref());
    Ok(CoreqLayer {
        layer,
        alpha,
        alpha_star,
    })
}

/// K-CoreQ (§7.4): per row, a beam of `beams` partial roundings in successive-rounding order
/// (ascending diag H_λ, last to first). Column i contributes Lh_ii²·(Q_i − Ŵ_i)², with
/// Ŵ_i = W_ref,i + Σ_{j>i} (W_ref,j − Q_j)·Lh_ji/Lh_ii depending only on the decided suffix,
/// so beam scores are exact partial objectives. Every level of the grid is a candidate; the
/// best `beams` of `beams·2^b` survive. Grids are fitted on W_ref, so beams share them.
/// `beams = 1` is greedy CoreQ.
pub fn kcoreq(
    w: MatRef<'_, f64>,
    h: MatRef<'_, f64>,
    d: MatRef<'_, f64>,
    alpha: f64,
    config: &GptqConfig,
    beams: usize,
) -> Result<CoreqLayer> {
    use super::grid::Grid;
    use super::layer::{Grouping, fit_rows};

    if beams == 0 {
        return Err(Error::Config("K-CoreQ needs at least one beam".into()));
    }
    let (m, n) = (w.nrows(), w.ncols());
    let group = config.grouping.width(n)?;
    let dead = dead_columns(h);
    let mismatch = Mismatch::new(w, h, d, config.percdamp)?;
    let mut target = mismatch.target(w, alpha);
    for j in (0..n).filter(|&j| dead[j]) {
        target.col_mut(j).fill(0.0);
    }
    let h_lambda = h_lambda(h, config.percdamp);
    // Successive rounding runs over ascending diag H_λ from the last; `processing[p]` is the
    // original column decided p-th (the act-order of GPTQ).
    let mut ascending: Vec<usize> = (0..n).collect();
    ascending.sort_by(|&a, &b| h_lambda[(a, a)].total_cmp(&h_lambda[(b, b)]));
    let h_asc = Mat::from_fn(n, n, |i, j| h_lambda[(ascending[i], ascending[j])]);
    let lh = h_asc
        .llt(Side::Lower)
        .map_err(|_| Error::Numeric("damped H is not positive definite".into()))?
        .L()
        .to_owned();
    let groups = n.div_ceil(group);
    // Grids per (row, group), on W_ref; the group of each original column.
    let mut group_of_column = vec![0usize; n];
    let mut grids = vec![Grid::uniform(1.0, 0.0, 1); m * groups];
    let processing: Vec<usize> = ascending.iter().rev().copied().collect();
    for k in 0..groups {
        let columns: Vec<usize> = match config.grouping {
            Grouping::Static(_) => (k * group..((k + 1) * group).min(n)).collect(),
            _ => processing[k * group..((k + 1) * group).min(n)].to_vec(),
        };
        let block = Mat::from_fn(m, columns.len(), |r, t| target[(r, columns[t])]);
        for (r, grid) in fit_rows(block.as_ref(), &config.grid)
            .into_iter()
            .enumerate()
        {
            grids[r * groups + k] = grid;
        }
        for c in columns {
            group_of_column[c] = k;
        }
    }

    struct Beam {
        score: f64,
        codes: Vec<u32>,
        /// tail[i] = Σ over decided j of (W_ref,j − Q_j)·Lh_ji, for undecided i.
        tail: Vec<f64>,
    }
    let mut codes = vec![0u8; m * n];
    let mut dequantized = Mat::<f64>::zeros(m, n);
    let mut loss = 0.0;
    for r in 0..m {
        let mut beam = vec![Beam {
            score: 0.0,
            codes: vec![0; n],
            tail: vec![0.0; n],
        }];
        for i in (0..n).rev() {
            let column = ascending[i];
            let grid = grids[r * groups + group_of_column[column]];
            let diag = lh[(i, i)];
            let mut candidates: Vec<(f64, usize, u32)> =
                Vec::with_capacity(beam.len() * (grid.max_code as usize + 1));
            for (b, state) in beam.iter().enumerate() {
                let hat = target[(r, column)] + state.tail[i] / diag;
                for code in 0..=grid.max_code {
                    let residual = grid.dequantize(code) - hat;
                    candidates.push((state.score + diag * diag * residual * residual, b, code));
                }
            }
            candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
            candidates.truncate(beams);
            beam = candidates
                .into_iter()
                .map(|(score, parent, code)| {
                    let mut codes = beam[parent].codes.clone();
                    codes[i] = code;
                    let mut tail = beam[parent].tail.clone();
                    let residual = target[(r, column)] - grid.dequantize(code);
                    for (k, t) in tail.iter_mut().enumerate().take(i) {
                        *t += residual * lh[(i, k)];
                    }
                    Beam { score, codes, tail }
                })
                .collect();
        }
        let best = &beam[0];
        loss += best.score;
        for (&column, &code) in ascending.iter().zip(&best.codes) {
            let grid = grids[r * groups + group_of_column[column]];
            codes[r * n + column] = code as u8;
            dequantized[(r, column)] = grid.dequantize(code);
        }
    }
    let alpha_star = mismatch.closed_form_alpha(w, dequantized.as_ref());
    Ok(CoreqLayer {
        layer: QuantizedLayer {
            rows: m,
            cols: n,
            codes,
            grids,
            groups,
            group_of_column,
            dequantized,
            loss,
            damping_retries: 0,
        },
        alpha,
        alpha_star,
    })
}
