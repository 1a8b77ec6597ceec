//! What every solver returns: a layer's codes and grids, and how columns share grids.

use faer::{Mat, MatRef};

use super::grid::{Grid, GridSpec, Rounding, fit_grid};
use crate::error::{Error, Result};

/// Which weights share a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// One grid per row.
    PerRow,
    /// Groups of g processing-order columns, fitted when the solver reaches them (§1.5).
    Dynamic(usize),
    /// Groups of g original columns, all fitted on the original W up front (§1.5).
    Static(usize),
}

impl Grouping {
    /// The group width for `cols` columns; an error for a zero width.
    pub fn width(self, cols: usize) -> Result<usize> {
        match self {
            Grouping::PerRow => Ok(cols.max(1)),
            Grouping::Dynamic(0) | Grouping::Static(0) => {
                Err(Error::Config("group size must be positive".into()))
            }
            Grouping::Dynamic(g) | Grouping::Static(g) => Ok(g),
        }
    }
}

/// A quantized layer: codes and grids in the original column order.
#[derive(Debug, Clone)]
pub struct QuantizedLayer {
    pub rows: usize,
    pub cols: usize,
    /// Row-major `[rows, cols]`.
    pub codes: Vec<u8>,
    /// Row-major `[rows, groups]`: the grid of each row's groups.
    pub grids: Vec<Grid>,
    pub groups: usize,
    /// The group of each original column (GPTQ's `g_idx`).
    pub group_of_column: Vec<usize>,
    /// The dequantized weight Ŵ `[rows, cols]`.
    pub dequantized: Mat<f64>,
    /// The solver's own loss (GPTQ: Σ (w − q)² / (2·C_jj²); RTN: 0).
    pub loss: f64,
    /// Damping retries needed for the Cholesky factorization.
    pub damping_retries: u32,
}

impl QuantizedLayer {
    pub fn grid(&self, row: usize, col: usize) -> &Grid {
        &self.grids[row * self.groups + self.group_of_column[col]]
    }

    /// The codebook every grid of the layer shares; `None` on uniform grids.
    pub fn codebook(&self) -> Option<&'static [f64]> {
        self.grids.first().and_then(|g| g.levels)
    }
}

/// One grid per row of `w`.
pub fn fit_rows(w: MatRef<'_, f64>, spec: &GridSpec) -> Vec<Grid> {
    (0..w.nrows())
        .map(|r| fit_grid(&w.row(r).iter().copied().collect::<Vec<_>>(), spec))
        .collect()
}

/// Round-to-nearest (or stochastic) quantization of every group on its own grid.
pub fn rtn(
    w: MatRef<'_, f64>,
    spec: &GridSpec,
    grouping: Grouping,
    rounding: Rounding,
) -> Result<QuantizedLayer> {
    let (m, n) = (w.nrows(), w.ncols());
    let g = grouping.width(n)?;
    let groups = n.div_ceil(g);
    let mut grids = Vec::with_capacity(m * groups);
    let mut codes = vec![0u8; m * n];
    let mut dequantized = Mat::<f64>::zeros(m, n);
    for r in 0..m {
        for k in 0..groups {
            let columns = k * g..((k + 1) * g).min(n);
            let values: Vec<f64> = columns.clone().map(|c| w[(r, c)]).collect();
            let grid = fit_grid(&values, spec);
            for c in columns {
                let code = grid.code(w[(r, c)], rounding, (r * n + c) as u64);
                codes[r * n + c] = code as u8;
                dequantized[(r, c)] = grid.dequantize(code);
            }
            grids.push(grid);
        }
    }
    Ok(QuantizedLayer {
        rows: m,
        cols: n,
        codes,
        grids,
        groups,
        group_of_column: (0..n).map(|c| c / g).collect(),
        dequantized,
        loss: 0.0,
        damping_retries: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::grid::{Bits, GridKind};

    #[test]
    fn rtn_mxint2_is_ternary_per_block_of_32() {
        let w = Mat::from_fn(3, 64, |r, c| {
            ((r * 64 + c) as f64 * 0.37).sin() * (1.0 + c as f64 / 16.0)
        });
        let spec = GridSpec::new(Bits::new(2).unwrap(), GridKind::MxInt);
        let q = rtn(w.as_ref(), &spec, Grouping::Static(32), Rounding::Nearest).unwrap();
        assert_eq!(q.groups, 2);
        for r in 0..3 {
            for c in 0..64 {
                let s = q.grid(r, c).scale;
                let v = q.dequantized[(r, c)];
                assert!(v == 0.0 || v == s || v == -s, "({r},{c}): {v} with s = {s}");
                assert!(s.log2().fract() == 0.0, "power-of-two scale");
            }
        }
    }
}
