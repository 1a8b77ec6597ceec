//! Solver timing on synthetic layers (issue #7 item 2, issue #4 item 7): a weight W `[out, in]`
//! with uniform entries and a Hessian H = X·Xᵀ/N from correlated inputs with unequal column
//! scales (like real activations), so that qpeft's solvers and the PyTorch loop of
//! `bench/solver_reference.py` do the same work on same-shaped data.

use std::time::Instant;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rand::Rng;

use super::coreq::{AlphaMode, CoreqConfig, coreq};
use super::gptq::{GptqConfig, gptq};
use super::grid::{Bits, GridKind, GridSpec};
use crate::error::Result;
use crate::seed::substream_rng;

/// The solvers the benchmark times.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum BenchSolver {
    Gptq,
    Coreq,
}

crate::named!(BenchSolver);

/// A synthetic layer: W `[rows, cols]`, H and D `[cols, cols]` (D from inputs perturbed by
/// 10%, the two-stream mismatch CoreQ reads).
pub struct SyntheticLayer {
    pub w: Mat<f64>,
    pub h: Mat<f64>,
    pub d: Mat<f64>,
}

pub fn synthetic_layer(rows: usize, cols: usize, seed: u64) -> SyntheticLayer {
    let mut rng = substream_rng(seed, "bench/solver");
    let w = Mat::from_fn(rows, cols, |_, _| rng.random_range(-1.0..1.0));
    let tokens = 2 * cols;
    let scales: Vec<f64> = (0..cols).map(|_| rng.random_range(0.2..3.0)).collect();
    let mut x = Mat::from_fn(cols, tokens, |i, _| scales[i] * rng.random_range(-1.0..1.0));
    for i in (1..cols).rev() {
        for t in 0..tokens {
            x[(i, t)] += 0.5 * x[(i - 1, t)];
        }
    }
    let noise = Mat::from_fn(cols, tokens, |i, _| {
        0.1 * scales[i] * rng.random_range(-1.0..1.0)
    });
    let n = tokens as f64;
    let mut h = Mat::zeros(cols, cols);
    matmul(
        h.as_mut(),
        Accum::Replace,
        &x,
        x.transpose(),
        1.0 / n,
        Par::rayon(0),
    );
    let mut d = Mat::zeros(cols, cols);
    matmul(
        d.as_mut(),
        Accum::Replace,
        &noise,
        x.transpose(),
        1.0 / n,
        Par::rayon(0),
    );
    SyntheticLayer { w, h, d }
}

/// Seconds of each of `repeats` runs of `solver` at `bits` (asymmetric min–max grid per row,
/// act-order, lazy-batch block `block`; CoreQ with its recommended alternating α).
pub fn time_solver(
    solver: BenchSolver,
    layer: &SyntheticLayer,
    bits: Bits,
    block: usize,
    repeats: usize,
) -> Result<Vec<f64>> {
    let config = GptqConfig {
        block,
        ..GptqConfig::new(GridSpec::new(bits, GridKind::Asymmetric))
    };
    let mut seconds = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        match solver {
            BenchSolver::Gptq => {
                gptq(layer.w.as_ref(), layer.h.as_ref(), &config)?;
            }
            BenchSolver::Coreq => {
                let config = CoreqConfig {
                    gptq: config,
                    alpha: AlphaMode::Alternate { initial: 0.25 },
                    cd_passes: 0,
                };
                coreq(
                    layer.w.as_ref(),
                    layer.h.as_ref(),
                    layer.d.as_ref(),
                    &config,
                )?;
            }
        }
        seconds.push(started.elapsed().as_secs_f64());
    }
    Ok(seconds)
}
