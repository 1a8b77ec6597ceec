//! GPTAQ and CoreQ on the §10 toy problem (m = 6, n = 12, N = 200, f64): the identities and
//! orderings of ALGORITHMS.md §10 #3–#5.

mod common;

use common::{ToyLayer, ToyNoise, max_abs_diff_mat, toy_layer};
use faer::{Mat, Side};
use qpeft::quant::coreq::{
    AlphaMode, CoreqConfig, asymmetric_objective, coreq, shifted_target, symmetric_objective,
};
use qpeft::quant::gptq::{GptaqFlush, GptqConfig, Mismatch, gptaq, gptq};
use qpeft::quant::grid::{Bits, GridSpec, Rounding, UniformKind, fit_grid};
use qpeft::quant::hessian::{damped, dead_columns};

const M: usize = 6;
const N: usize = 12;
const TOKENS: usize = 200;

fn toy(seed: u64) -> ToyLayer {
    toy_layer(seed, (M, N, TOKENS), ToyNoise::Independent(0.3))
}

fn toy_mixed(seed: u64) -> ToyLayer {
    toy_layer(seed, (M, N, TOKENS), ToyNoise::Mixed(0.3))
}

fn spec(bits: u8) -> GridSpec {
    GridSpec::new(Bits::new(bits).unwrap(), UniformKind::Asymmetric)
}

/// §10 #3: the snapshot flush makes blocked GPTAQ equal the unblocked algorithm; the
/// quantized and pre-block flushes (the reference's and Brevitas') differ from it.
#[test]
fn gptaq_snapshot_flush_is_exact_and_the_other_flushes_are_live() {
    let mut largest = [0.0f64; 2];
    for seed in 0..8 {
        let t = toy_mixed(seed);
        let run = |block, flush| {
            let config = GptqConfig {
                block,
                act_order: true,
                ..GptqConfig::new(spec(3))
            };
            let mismatch = Mismatch {
                d: t.d.as_ref(),
                alpha: 0.25,
                flush,
            };
            gptaq(t.w.as_ref(), t.h.as_ref(), mismatch, &config).unwrap()
        };
        let unblocked = run(1, GptaqFlush::Snapshot);
        let blocked = run(6, GptaqFlush::Snapshot);
        assert_eq!(unblocked.codes, blocked.codes, "seed {seed}");
        assert_eq!(
            max_abs_diff_mat(unblocked.dequantized.as_ref(), blocked.dequantized.as_ref()),
            0.0
        );
        for (k, flush) in [GptaqFlush::Quantized, GptaqFlush::Preblock]
            .into_iter()
            .enumerate()
        {
            let other = run(6, flush);
            largest[k] = largest[k].max(max_abs_diff_mat(
                unblocked.dequantized.as_ref(),
                other.dequantized.as_ref(),
            ));
        }
    }
    println!(
        "largest |Ŵ − Ŵ_unblocked| over 8 toys: quantized flush {:e}, pre-block flush {:e}",
        largest[0], largest[1]
    );
    assert!(
        largest.iter().all(|&d| d > 1e-4),
        "each alternative flush should change some result: {largest:?}"
    );
}

#[test]
fn gptaq_with_alpha_zero_is_gptq() {
    let t = toy(11);
    let config = GptqConfig {
        block: 4,
        ..GptqConfig::new(spec(3))
    };
    let plain = gptq(t.w.as_ref(), t.h.as_ref(), &config).unwrap();
    let mismatch = Mismatch {
        d: t.d.as_ref(),
        alpha: 0.0,
        flush: GptaqFlush::Snapshot,
    };
    let zero = gptaq(t.w.as_ref(), t.h.as_ref(), mismatch, &config).unwrap();
    assert_eq!(plain.codes, zero.codes);
}

/// §10 #5: CoreQ's reverse successive rounding, Q_i = rnd(W_ref,i + Σ_{j>i}(W_ref,j − Q_j)·L̃_ji)
/// with H_λ = Lh Lhᵀ in ascending-diagonal order, equals the act-order GPTQ CoreQ runs.
#[test]
fn successive_rounding_equals_act_order_gptq_on_the_shifted_target() {
    for seed in 0..4 {
        let t = toy(seed);
        for alpha in [0.0, 0.25, 1.0] {
            let target =
                shifted_target(t.w.as_ref(), t.h.as_ref(), t.d.as_ref(), alpha, 0.01).unwrap();
            let grids: Vec<_> = (0..M)
                .map(|r| fit_grid(&target.row(r).iter().copied().collect::<Vec<_>>(), &spec(3)))
                .collect();
            let h_lambda = damped(t.h.as_ref(), &dead_columns(t.h.as_ref()), 0.01);
            let mut order: Vec<usize> = (0..N).collect();
            order.sort_by(|&a, &b| h_lambda[(a, a)].total_cmp(&h_lambda[(b, b)]));
            let h_p = Mat::from_fn(N, N, |i, j| h_lambda[(order[i], order[j])]);
            let lh = h_p.llt(Side::Lower).unwrap().L().to_owned();
            let mut q = Mat::<f64>::zeros(M, N); // in `order` positions
            for r in 0..M {
                for i in (0..N).rev() {
                    let tail: f64 = (i + 1..N)
                        .map(|j| (target[(r, order[j])] - q[(r, j)]) * lh[(j, i)] / lh[(i, i)])
                        .sum();
                    q[(r, i)] = grids[r].round(target[(r, order[i])] + tail, Rounding::Nearest, 0);
                }
            }
            let successive = Mat::from_fn(M, N, |r, c| {
                q[(r, order.iter().position(|&o| o == c).unwrap())]
            });
            let config = CoreqConfig {
                gptq: GptqConfig {
                    block: 5,
                    ..GptqConfig::new(spec(3))
                },
                alpha: AlphaMode::Fixed(alpha),
            };
            let ours = coreq(t.w.as_ref(), t.h.as_ref(), t.d.as_ref(), &config).unwrap();
            let diff = max_abs_diff_mat(successive.as_ref(), ours.layer.dequantized.as_ref());
            assert!(diff <= 1e-12, "seed {seed} α {alpha}: {diff:e}");
        }
    }
}

/// §10 #4: on the asymmetric objective, GPTQ on W_ref(1) (CoreQ, α = 1) beats GPTAQ with
/// α = 1, which beats GPTQ. The spec also saw the symmetric objective order them the other way
/// round on its toy; GPTQ is only a greedy minimizer, and on this toy (2 bits, X_q noise 0.3)
/// CoreQ is lower on both, so only the asymmetric order is asserted; both are printed.
#[test]
fn objectives_order_coreq_gptaq_gptq() {
    let (mut asym, mut sym) = ([0.0; 3], [0.0; 3]);
    for seed in 0..20 {
        let t = toy(seed);
        let config = GptqConfig {
            act_order: true,
            ..GptqConfig::new(spec(2))
        };
        let coreq_q = coreq(
            t.w.as_ref(),
            t.h.as_ref(),
            t.d.as_ref(),
            &CoreqConfig {
                gptq: config,
                alpha: AlphaMode::Fixed(1.0),
            },
        )
        .unwrap()
        .layer
        .dequantized;
        let mismatch = Mismatch {
            d: t.d.as_ref(),
            alpha: 1.0,
            flush: GptaqFlush::Snapshot,
        };
        let gptaq_q = gptaq(t.w.as_ref(), t.h.as_ref(), mismatch, &config)
            .unwrap()
            .dequantized;
        let gptq_q = gptq(t.w.as_ref(), t.h.as_ref(), &config)
            .unwrap()
            .dequantized;
        for (k, q) in [coreq_q, gptaq_q, gptq_q].iter().enumerate() {
            asym[k] +=
                asymmetric_objective(t.w.as_ref(), q.as_ref(), t.h.as_ref(), t.d.as_ref()) / 20.0;
            sym[k] += symmetric_objective(t.w.as_ref(), q.as_ref(), t.h.as_ref()) / 20.0;
        }
    }
    println!(
        "mean over 20 toys, [CoreQ(α=1), GPTAQ(α=1), GPTQ]: asymmetric {asym:?}, symmetric {sym:?}"
    );
    assert!(
        asym[0] < asym[1] && asym[1] < asym[2],
        "asymmetric order {asym:?}"
    );
}

/// Alternating α never returns a rounding worse, on the symmetric objective, than its first.
#[test]
fn alternating_alpha_keeps_the_better_rounding() {
    for seed in 0..6 {
        let t = toy(seed);
        let config = GptqConfig::new(spec(3));
        let first = coreq(
            t.w.as_ref(),
            t.h.as_ref(),
            t.d.as_ref(),
            &CoreqConfig {
                gptq: config,
                alpha: AlphaMode::Fixed(0.25),
            },
        )
        .unwrap();
        let alternate = coreq(
            t.w.as_ref(),
            t.h.as_ref(),
            t.d.as_ref(),
            &CoreqConfig {
                gptq: config,
                alpha: AlphaMode::Alternate { initial: 0.25 },
            },
        )
        .unwrap();
        assert!((0.0..=1.0).contains(&alternate.alpha));
        let objective = |q: &Mat<f64>| symmetric_objective(t.w.as_ref(), q.as_ref(), t.h.as_ref());
        assert!(objective(&alternate.layer.dequantized) <= objective(&first.layer.dequantized));
    }
}

/// K-CoreQ with one beam is greedy CoreQ; more beams lower the exact objective
/// tr((Q − W_ref)H_λ(Q − W_ref)ᵀ) for nearly every row and on average.
#[test]
fn kcoreq_one_beam_is_greedy_and_more_beams_help() {
    use qpeft::quant::coreq::kcoreq;
    use qpeft::quant::layer::Grouping;
    let (mut rows, mut better_or_equal, mut greedy_total, mut beam_total) = (0, 0, 0.0, 0.0);
    for seed in 0..10 {
        let t = toy(seed);
        for grouping in [Grouping::PerRow, Grouping::Dynamic(4)] {
            let config = GptqConfig {
                grouping,
                ..GptqConfig::new(spec(2))
            };
            let greedy = coreq(
                t.w.as_ref(),
                t.h.as_ref(),
                t.d.as_ref(),
                &CoreqConfig {
                    gptq: config,
                    alpha: AlphaMode::Fixed(0.5),
                },
            )
            .unwrap();
            let one = kcoreq(t.w.as_ref(), t.h.as_ref(), t.d.as_ref(), 0.5, &config, 1).unwrap();
            assert_eq!(
                one.layer.codes, greedy.layer.codes,
                "seed {seed} {grouping:?}"
            );
            let four = kcoreq(t.w.as_ref(), t.h.as_ref(), t.d.as_ref(), 0.5, &config, 4).unwrap();
            let target =
                shifted_target(t.w.as_ref(), t.h.as_ref(), t.d.as_ref(), 0.5, 0.01).unwrap();
            let h_lambda = damped(t.h.as_ref(), &dead_columns(t.h.as_ref()), 0.01);
            for r in 0..M {
                let objective = |q: &Mat<f64>| {
                    symmetric_objective(target.subrows(r, 1), q.subrows(r, 1), h_lambda.as_ref())
                };
                let (g, b) = (
                    objective(&one.layer.dequantized),
                    objective(&four.layer.dequantized),
                );
                rows += 1;
                better_or_equal += usize::from(b <= g + 1e-12);
                greedy_total += g;
                beam_total += b;
            }
        }
    }
    println!(
        "K=4 vs greedy: ≤ on {better_or_equal}/{rows} rows; mean objective {:.4} vs {:.4}",
        beam_total / rows as f64,
        greedy_total / rows as f64
    );
    assert!(better_or_equal * 100 >= rows * 95);
    assert!(beam_total < greedy_total);
}
