//! The identities of docs/algorithms.md §10 that the solvers rest on, each on random f64 layers
//! (m = 6, n = 12, N = 200; X_q = X_f + noise).

mod common;

use common::{ToyLayer, ToyNoise, max_abs_diff_mat, toy_layer};
use faer::linalg::solvers::Solve;
use faer::{Mat, MatRef, Side};
use qpeft::quant::gptq::{GptqConfig, GroupFit, gptq};
use qpeft::quant::grid::{Bits, GridKind, GridSpec, Rounding, fit_grid};
use qpeft::quant::hessian::{damped, dead_columns, inverse_cholesky_upper};
use qpeft::quant::layer::Grouping;

const M: usize = 6;
const N: usize = 12;
const TOKENS: usize = 200;

fn toy(seed: u64) -> ToyLayer {
    toy_layer(seed, (M, N, TOKENS), ToyNoise::Independent(0.1))
}

/// `A[J, J]⁻¹` applied from the right to the row vector `a[J]`, by a dense solve.
fn ls_project(row: MatRef<'_, f64>, h: MatRef<'_, f64>, free: usize) -> Mat<f64> {
    let n = h.nrows();
    let hj = h.submatrix(free, free, n - free, n - free).to_owned();
    // x·H_JJ = a  ⇔  H_JJ·xᵀ = aᵀ (H symmetric)
    hj.llt(Side::Lower)
        .unwrap()
        .solve(row.transpose().to_owned())
        .transpose()
        .to_owned()
}

/// §10 #1: row j of triu(D Cᵀ, 1)·C is D[j, J_j]·H_λ[J_j, J_j]⁻¹, and with H_λ in place of D
/// it is −C[j, J_j]/C_jj.
#[test]
fn projection_through_c_is_the_least_squares_refit() {
    let t = toy(1);
    let h_lambda = damped(t.h.as_ref(), &dead_columns(t.h.as_ref()), 0.01);
    let (c, retries) = inverse_cholesky_upper(h_lambda.as_ref()).unwrap();
    assert_eq!(retries, 0);
    let strict_upper = |a: Mat<f64>| Mat::from_fn(N, N, |i, j| if j > i { a[(i, j)] } else { 0.0 });
    let p_d = strict_upper(&t.d * c.transpose()) * &c;
    let p_h = strict_upper(&h_lambda * c.transpose()) * &c;
    let mut worst: f64 = 0.0;
    for j in 0..N - 1 {
        let expected = ls_project(
            t.d.submatrix(j, j + 1, 1, N - j - 1),
            h_lambda.as_ref(),
            j + 1,
        );
        worst = worst.max(max_abs_diff_mat(
            p_d.submatrix(j, j + 1, 1, N - j - 1),
            expected.as_ref(),
        ));
        let from_c = Mat::from_fn(1, N - j - 1, |_, k| -c[(j, j + 1 + k)] / c[(j, j)]);
        worst = worst.max(max_abs_diff_mat(
            p_h.submatrix(j, j + 1, 1, N - j - 1),
            from_c.as_ref(),
        ));
    }
    println!("§10 #1: max difference {worst:e}");
    assert!(worst <= 1e-12, "max difference {worst:e}");
}

/// Round column j onto its row's grid, then refit the free columns exactly by least squares
/// over H_λ: the definition GPTQ implements.
fn round_then_refit(w: MatRef<'_, f64>, h_lambda: MatRef<'_, f64>, spec: &GridSpec) -> Mat<f64> {
    let grids: Vec<_> = (0..M)
        .map(|r| fit_grid(&w.row(r).iter().copied().collect::<Vec<_>>(), spec))
        .collect();
    let mut current = w.to_owned();
    let mut q = Mat::<f64>::zeros(M, N);
    for j in 0..N {
        for r in 0..M {
            q[(r, j)] = grids[r].round(current[(r, j)], Rounding::Nearest, 0);
        }
        if j + 1 == N {
            break;
        }
        // With columns < j fixed, minimize (v − w)H(v − w)ᵀ over v_J given v_j = q_j:
        // v_J = w_J + (w_j − q_j)·H[j, J]·H[J, J]⁻¹.
        let direction = ls_project(h_lambda.submatrix(j, j + 1, 1, N - j - 1), h_lambda, j + 1);
        for r in 0..M {
            let delta = current[(r, j)] - q[(r, j)];
            for k in 0..N - j - 1 {
                current[(r, j + 1 + k)] += delta * direction[(0, k)];
            }
        }
    }
    q
}

/// §10 #2: GPTQ with B = 4 equals B = 1, and both equal round-then-exact-LS-refit.
#[test]
fn gptq_is_blocking_invariant_and_equals_the_exact_greedy_refit() {
    for seed in 0..5 {
        let t = toy(seed);
        let spec = GridSpec::new(Bits::new(3).unwrap(), GridKind::Asymmetric);
        let run = |block| {
            let config = GptqConfig {
                block,
                act_order: false,
                ..GptqConfig::new(spec)
            };
            gptq(t.w.as_ref(), t.h.as_ref(), &config).unwrap()
        };
        let (b1, b4) = (run(1), run(4));
        assert_eq!(b1.codes, b4.codes, "seed {seed}");
        let blocked = max_abs_diff_mat(b1.dequantized.as_ref(), b4.dequantized.as_ref());
        let h_lambda = damped(t.h.as_ref(), &dead_columns(t.h.as_ref()), 0.01);
        let reference = round_then_refit(t.w.as_ref(), h_lambda.as_ref(), &spec);
        let greedy = max_abs_diff_mat(b1.dequantized.as_ref(), reference.as_ref());
        println!("§10 #2, seed {seed}: B=1 vs B=4 {blocked:e}, vs exact LS refit {greedy:e}");
        assert!(
            blocked == 0.0 && greedy <= 1e-12,
            "seed {seed}: B=1 vs 4 {blocked:e}, vs LS refit {greedy:e}"
        );
    }
}

/// Dynamic groups fitted on current values do not depend on the block size either (the stale
/// reference fit does, when g < B).
#[test]
fn grouped_gptq_on_current_values_is_blocking_invariant() {
    let t = toy(7);
    let spec = GridSpec::new(Bits::new(2).unwrap(), GridKind::SymmetricGptq);
    let run = |block, stale: bool| {
        let config = GptqConfig {
            block,
            grouping: Grouping::Dynamic(4),
            group_fit: if stale {
                GroupFit::StaleOuter
            } else {
                GroupFit::Current
            },
            ..GptqConfig::new(spec)
        };
        gptq(t.w.as_ref(), t.h.as_ref(), &config).unwrap()
    };
    let (small, large) = (run(4, false), run(12, false));
    assert_eq!(small.codes, large.codes);
    assert!(max_abs_diff_mat(small.dequantized.as_ref(), large.dequantized.as_ref()) <= 1e-12);
    assert_eq!(
        run(4, true).codes,
        small.codes,
        "g = B: the stale fit is the current one"
    );
}
