//! Quantization-error reconstruction (docs/algorithms.md §10 "further derived checks", §11) on
//! random layers and on real all-MiniLM-L6-v2 layers with R_xx from real RTE activations.

mod common;

use faer::{Mat, MatRef};
use qpeft::calibration::calibrate;
use qpeft::device::CpuBackend;
use qpeft::model::weights::linear_weight_out_in;
use qpeft::pipeline::calibrate::CalibrationSpec;
use qpeft::pipeline::init::{InitReport, InitSpec, build_init};
use qpeft::quant::gptq::GptqConfig;
use qpeft::quant::grid::{Bits, GridKind, GridSpec};
use qpeft::quant::layer::{Grouping, QuantizedLayer};
use qpeft::quant::solve::{Method, QuantMethod, solve_layer};
use qpeft::quant::spec::QuantizerSpec;
use qpeft::quant::stats::{LayerStats, StatsNeeded};
use qpeft::reconstruct::init::{InitConfig, InitName, Initializer, KRule, LayerInit, initialize};
use qpeft::reconstruct::lowrank::{squared_norm, tail_fractions};
use qpeft::reconstruct::scaling::{Scaling, ScalingKind};

type B = CpuBackend;

/// RTN on `kind` with static blocks of `group`.
fn blocks(kind: GridKind, bits: u8, group: usize) -> GptqConfig {
    GptqConfig {
        grouping: Grouping::Static(group),
        ..GptqConfig::new(GridSpec::new(Bits::new(bits).unwrap(), kind))
    }
}

/// MXINT RTN with blocks of `group` (the protocol's quantizer).
fn mxint(bits: u8, group: usize) -> GptqConfig {
    blocks(GridKind::MxInt, bits, group)
}

fn init(
    name: &str,
    w: MatRef<'_, f64>,
    stats: &LayerStats,
    quant: &GptqConfig,
    method: Initializer,
    rank: usize,
) -> LayerInit {
    let scaling = Scaling::from_stats(method.scaling(), stats).unwrap();
    init_scaled(name, w, stats, &scaling, quant, method, rank)
}

/// [`init`] with the scaling computed by the caller (one eigendecomposition per module).
fn init_scaled(
    name: &str,
    w: MatRef<'_, f64>,
    stats: &LayerStats,
    scaling: &Scaling,
    quant: &GptqConfig,
    init: Initializer,
    rank: usize,
) -> LayerInit {
    let mut quantize = |target: MatRef<'_, f64>| -> qpeft::Result<QuantizedLayer> {
        Ok(solve_layer(Method::Rtn, quant, target, stats)?.layer)
    };
    let config = InitConfig {
        init,
        rank,
        split: None,
        seed: 7,
    };
    initialize(name, w, scaling, &mut quantize, &config).unwrap()
}

fn srr(rule: KRule) -> Initializer {
    Initializer::Srr {
        rule,
        joint_refit: false,
    }
}

/// ‖(W − Ŵ)S‖²_F with S = R_xx^{1/2}, as tr((W − Ŵ)R_xx(W − Ŵ)ᵀ).
fn scaled_error_sq(w: MatRef<'_, f64>, w_hat: MatRef<'_, f64>, r_xx: MatRef<'_, f64>) -> f64 {
    let e = w - w_hat;
    let er = &e * r_xx;
    (0..e.nrows())
        .map(|i| (0..e.ncols()).map(|j| er[(i, j)] * e[(i, j)]).sum::<f64>())
        .sum()
}

/// A random layer whose R_xx comes from `tokens` correlated inputs, and whose W has planted
/// rank-`planted` structure of relative size `strength` on top of Gaussian noise.
fn random_layer(
    seed: u64,
    (m, n, tokens): (usize, usize, usize),
    planted: usize,
    strength: f64,
) -> (Mat<f64>, LayerStats) {
    let mut rng = qpeft::seed::substream_rng(seed, "reconstruct-layer");
    let mixing = common::normal_matrix(&mut rng, n, n);
    let x = common::normal_matrix(&mut rng, tokens, n) * &mixing;
    let r_xx = x.transpose() * &x * faer::Scale(1.0 / tokens as f64);
    let noise = common::normal_matrix(&mut rng, m, n);
    let left = common::normal_matrix(&mut rng, m, planted);
    let right = common::normal_matrix(&mut rng, planted, n);
    let w = noise + &left * &right * faer::Scale(strength);
    let stats = LayerStats {
        h: r_xx.clone(),
        d: None,
        r_xx: Some(r_xx),
        abs_mean: None,
        abs_mean_batch_max: None,
        d_sampled: None,
        tokens,
    };
    (w, stats)
}

/// The 12 target matrices of MiniLM's first and last layers with full-precision statistics
/// over 32 real RTE pairs.
fn minilm_modules() -> Vec<(String, Mat<f64>, LayerStats)> {
    let (model, batches) = common::minilm_with_rte();
    let mut encoder = model.encoder::<B>(&Default::default()).unwrap();
    let mut recorder = common::Recorder::default();
    let needed = StatsNeeded {
        r_xx: true,
        abs_mean: true,
        ..StatsNeeded::default()
    };
    calibrate(&mut encoder, &batches, needed, &mut recorder).unwrap();
    assert_eq!(recorder.modules.len(), 36);
    recorder
        .modules
        .into_iter()
        .filter(|(name, _, _)| {
            name.starts_with("encoder.layer.0.") || name.starts_with("encoder.layer.5.")
        })
        .collect()
}

fn assert_same_init(a: &LayerInit, b: &LayerInit, what: &str) {
    assert_eq!(a.quantized.codes, b.quantized.codes, "{what}: same codes");
    let (ab, bb) = (&a.l * &a.r, &b.l * &b.r);
    let diff = common::max_abs_diff_mat(ab.as_ref(), bb.as_ref());
    assert!(
        diff <= 1e-12 * ab.norm_max().max(1.0),
        "{what}: L·R differs by {diff:e}"
    );
}

/// §10: SRR with k = 0 is QERA-exact and with k = r is LQ-LoRA (same Q, same L·R), on random
/// and real layers.
#[test]
fn srr_ends_reproduce_qera_exact_and_lqlora() {
    let quant = mxint(2, 32);
    let (w, stats) = random_layer(1, (48, 64, 300), 0, 0.0);
    let mut layers = vec![("random".to_string(), w, stats)];
    layers.extend(minilm_modules().into_iter().take(6));
    for (name, w, stats) in &layers {
        let qera = init(name, w.as_ref(), stats, &quant, Initializer::QeraExact, 8);
        let k0 = init(name, w.as_ref(), stats, &quant, srr(KRule::Fixed(0)), 8);
        assert_same_init(&qera, &k0, &format!("{name}: k = 0 vs qera-exact"));
        let lqlora = init(name, w.as_ref(), stats, &quant, Initializer::Lqlora, 8);
        let kr = init(name, w.as_ref(), stats, &quant, srr(KRule::Fixed(8)), 8);
        assert_same_init(&lqlora, &kr, &format!("{name}: k = r vs lqlora"));
        assert_eq!(kr.k, 8);
    }
}

/// §11.7's identity on real layers, for every k: ‖(W − Ŵ(k))S‖²_F = ‖E_kS‖²_F·ρ_{r−k}(E_kS),
/// with E_k = W − P_k − Q_k and P_k the first k components; and the `exact` rule's error is
/// the smallest of them, so never above k = 0 (QERA) or k = r (LQ-LoRA).
#[test]
fn per_k_identity_and_exact_rule_on_real_layers() {
    let quant = mxint(2, 32);
    let rank = 8;
    let mut exact_wins = 0;
    let modules = minilm_modules();
    for (name, w, stats) in &modules {
        let r_xx = stats.r_xx.as_ref().unwrap();
        let scaling = Scaling::from_stats(ScalingKind::QeraExact, stats).unwrap();
        let total = squared_norm(scaling.apply(w.as_ref()).as_ref());
        let mut errors = Vec::new();
        for k in 0..=rank {
            let fixed = srr(KRule::Fixed(k));
            let layer = init_scaled(name, w.as_ref(), stats, &scaling, &quant, fixed, rank);
            let preserved = layer.l.subcols(0, k) * layer.r.subrows(0, k);
            let e_k = w - &layer.quantized.dequantized - preserved;
            let e_k_s = scaling.apply(e_k.as_ref());
            let sigma = e_k_s.singular_values().unwrap();
            let rho = tail_fractions(&sigma, squared_norm(e_k_s.as_ref()))[rank - k];
            let lhs = squared_norm(scaling.apply((w - layer.reconstructed()).as_ref()).as_ref());
            let rhs = squared_norm(e_k_s.as_ref()) * rho;
            assert!(
                (lhs - rhs).abs() <= 1e-9 * total,
                "{name} k = {k}: {lhs} vs {rhs}"
            );
            // The scaled error with the floored S agrees with the raw R_xx one.
            let raw = scaled_error_sq(w.as_ref(), layer.reconstructed().as_ref(), r_xx.as_ref());
            assert!((raw - lhs).abs() <= 1e-6 * total, "{name} k = {k}");
            errors.push((lhs / total).sqrt());
        }
        let exact = init_scaled(
            name,
            w.as_ref(),
            stats,
            &scaling,
            &quant,
            srr(KRule::Exact),
            rank,
        );
        let best = errors.iter().copied().fold(f64::INFINITY, f64::min);
        for (k, e) in errors.iter().enumerate() {
            assert!(
                (exact.scaled_error_by_k[k] - e).abs() <= 1e-9,
                "{name} k = {k}"
            );
        }
        // The chosen k is the argmin of the exact rule's own errors, ties to the smallest k.
        let by_k = &exact.scaled_error_by_k;
        assert!(
            by_k.iter()
                .enumerate()
                .all(|(k, &e)| e > by_k[exact.k] || k >= exact.k)
        );
        let exact_error = errors[exact.k];
        assert!(exact_error <= best + 1e-9, "{name}");
        assert!(
            exact_error <= errors[0] + 1e-9 && exact_error <= errors[rank] + 1e-9,
            "{name}"
        );
        exact_wins += usize::from(exact_error < errors[0].min(errors[rank]));
        let probe = exact.probe_k.unwrap();
        println!(
            "{name}: k=0 {:.4}  k=r {:.4}  probe k*={probe} {:.4}  exact k={} {:.4}",
            errors[0], errors[rank], errors[probe], exact.k, exact_error
        );
    }
    println!(
        "exact strictly below both ends on {exact_wins}/{}",
        modules.len()
    );
}

/// With planted low-rank structure the best split lies strictly inside 0..r: `exact` is
/// strictly below both k = 0 and k = r.
#[test]
fn exact_rule_is_strictly_inside_on_planted_low_rank() {
    let quant = mxint(2, 16);
    for seed in 0..4 {
        let (w, stats) = random_layer(seed, (64, 96, 400), 4, 1.5);
        let exact = init("planted", w.as_ref(), &stats, &quant, srr(KRule::Exact), 12);
        let errors = &exact.scaled_error_by_k;
        assert!(exact.k > 0 && exact.k < 12, "seed {seed}: k = {}", exact.k);
        assert!(errors[exact.k] < errors[0] && errors[exact.k] < errors[12]);
        println!(
            "seed {seed}: k=0 {:.4} k=r {:.4} exact k={} {:.4} probe k*={:?}",
            errors[0], errors[12], exact.k, errors[exact.k], exact.probe_k
        );
    }
}

/// §10: the joint rank-r refit is never worse than the three-step reconstruction.
#[test]
fn joint_refit_is_never_worse() {
    let quant = mxint(2, 32);
    let (w, stats) = random_layer(3, (48, 64, 300), 3, 1.0);
    let mut layers = vec![("random".to_string(), w, stats)];
    layers.extend(minilm_modules().into_iter().take(6));
    for (name, w, stats) in &layers {
        let r_xx = stats.r_xx.as_ref().unwrap();
        for k in [2, 5] {
            let three = init(name, w.as_ref(), stats, &quant, srr(KRule::Fixed(k)), 8);
            let joint = Initializer::Srr {
                rule: KRule::Fixed(k),
                joint_refit: true,
            };
            let joint = init(name, w.as_ref(), stats, &quant, joint, 8);
            assert_eq!(three.quantized.codes, joint.quantized.codes);
            let e3 = scaled_error_sq(w.as_ref(), three.reconstructed().as_ref(), r_xx.as_ref());
            let ej = scaled_error_sq(w.as_ref(), joint.reconstructed().as_ref(), r_xx.as_ref());
            assert!(ej <= e3 * (1.0 + 1e-9), "{name} k = {k}: {ej} > {e3}");
        }
    }
}

/// §10: LoftQ with T = 1 is ZeroQuant-V2 up to the split; on real layers its error falls
/// over the iterations.
#[test]
fn loftq_matches_zeroquant_at_one_iteration_and_improves_on_real_layers() {
    let quant = mxint(2, 32);
    let (w, stats) = random_layer(4, (40, 56, 200), 0, 0.0);
    let one = init(
        "r",
        w.as_ref(),
        &stats,
        &quant,
        Initializer::Loftq { iters: 1 },
        8,
    );
    let zq = init("r", w.as_ref(), &stats, &quant, Initializer::ZeroquantV2, 8);
    assert_same_init(&one, &zq, "LoftQ T = 1 vs ZeroQuant-V2");
    for (name, w, stats) in minilm_modules() {
        let loftq = init(
            &name,
            w.as_ref(),
            &stats,
            &quant,
            Initializer::Loftq { iters: 5 },
            8,
        );
        let e = &loftq.loftq_errors;
        assert_eq!(e.len(), 5);
        let reconstructed = squared_norm((&w - loftq.reconstructed()).as_ref()).sqrt()
            / squared_norm(w.as_ref()).sqrt();
        assert!((reconstructed - e[4]).abs() < 1e-12, "{name}");
        assert!(e[4] < e[0], "{name}: {e:?}");
        println!("{name}: LoftQ errors {e:.4?}");
    }
}

/// The scalings of §11.4 on real statistics: QERA-approx is the diagonal of R_xx^{1/2}'s
/// square, LQER is the mean |x|, and every method's k = 0 reconstruction beats Q alone.
#[test]
fn every_qer_scaling_reconstructs_below_the_quantization_error() {
    let quant = mxint(2, 32);
    for (name, w, stats) in minilm_modules().into_iter().take(6) {
        let r_xx = stats.r_xx.as_ref().unwrap();
        for method in [
            Initializer::ZeroquantV2,
            Initializer::Lqer { batch_max: false },
            Initializer::Lqer { batch_max: true },
            Initializer::QeraApprox,
            Initializer::QeraExact,
        ] {
            let layer = init(&name, w.as_ref(), &stats, &quant, method, 8);
            let q_only = scaled_error_sq(
                w.as_ref(),
                layer.quantized.dequantized.as_ref(),
                r_xx.as_ref(),
            );
            let with_lr =
                scaled_error_sq(w.as_ref(), layer.reconstructed().as_ref(), r_xx.as_ref());
            assert!(with_lr < q_only, "{name} {method:?}");
        }
        // QERA-exact minimises the scaled error for its Q, so no other S does better there.
        let exact = init(&name, w.as_ref(), &stats, &quant, Initializer::QeraExact, 8);
        let approx = init(
            &name,
            w.as_ref(),
            &stats,
            &quant,
            Initializer::QeraApprox,
            8,
        );
        assert_eq!(exact.quantized.codes, approx.quantized.codes);
        let e = scaled_error_sq(w.as_ref(), exact.reconstructed().as_ref(), r_xx.as_ref());
        let a = scaled_error_sq(w.as_ref(), approx.reconstructed().as_ref(), r_xx.as_ref());
        assert!(e <= a * (1.0 + 1e-6), "{name}: exact {e} vs approx {a}");
    }
}

/// QLoRA starts at Ŵ = Q: L = 0 and R ~ Uniform(±1/√in), reproducible by seed.
#[test]
fn qlora_starts_at_the_quantized_weight() {
    let quant = mxint(2, 32);
    let (w, stats) = random_layer(5, (32, 64, 100), 0, 0.0);
    let a = init("q", w.as_ref(), &stats, &quant, Initializer::Qlora, 8);
    let b = init("q", w.as_ref(), &stats, &quant, Initializer::Qlora, 8);
    assert_eq!(a.l.norm_max(), 0.0);
    let bound = 1.0 / 8.0;
    assert!(a.r.norm_max() < bound && a.r.norm_max() > 0.5 * bound);
    assert_eq!(common::max_abs_diff_mat(a.r.as_ref(), b.r.as_ref()), 0.0);
    assert_eq!(
        common::max_abs_diff_mat(a.reconstructed().as_ref(), a.quantized.dequantized.as_ref()),
        0.0
    );
}

/// `qpeft init` on the tiny BERT writes a checkpoint whose layers load back, through the
/// normal model path, as Q + s·lora_B·lora_A = Ŵ of the report, with its metadata.
#[test]
fn init_checkpoint_loads_back_as_q_plus_lr() {
    let work = tempfile::tempdir().unwrap();
    let calib = work.path().join("calib.txt");
    std::fs::write(
        &calib,
        "The quick brown fox.\nA man is playing a guitar.\nIs this grammatical?\nDogs run in the field.\n",
    )
    .unwrap();
    let out = work.path().join("init");
    let spec = InitSpec {
        init: InitName::Srr,
        rank: 4,
        lora_alpha: 16.0,
        k_rule: KRule::Exact,
        joint_refit: false,
        loftq_iters: 5,
        lqer_batch_max: false,
        factor_split: None,
        quantizer: QuantizerSpec::new(QuantMethod::Rtn, 2),
        calibration: CalibrationSpec {
            source: calib.display().to_string(),
            samples: 128,
            max_length: 128,
            batch_size: 16,
            seed: 0,
        },
    };
    let tiny = qpeft::model::PretrainedModel::open(
        qpeft::model::resolve_model(
            common::fixture("tiny-bert").to_str().unwrap(),
            &qpeft::model::HubOptions::from_env(),
        )
        .unwrap(),
    )
    .unwrap();
    let outcome = build_init(&tiny, &spec, work.path(), &out, Default::default()).unwrap();
    let written: InitReport =
        serde_json::from_str(&std::fs::read_to_string(&outcome.json).unwrap()).unwrap();
    assert_eq!(written, outcome.report);
    let options = qpeft::model::HubOptions {
        cache_dir: out.join("none"),
        offline: true,
    };
    let model = qpeft::model::PretrainedModel::open(
        qpeft::model::resolve_model(out.to_str().unwrap(), &options).unwrap(),
    )
    .unwrap();
    let adapters = model.weights.adapters().expect("adapter metadata").clone();
    assert_eq!((adapters.rank, adapters.lora_alpha), (4, 16.0));
    assert_eq!(adapters.layers.len(), 12);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    // Q + L·R and Q alone.
    common::assert_per_module_chart(&out, 12, 2);
    let encoder = model.encoder::<B>(&Default::default()).unwrap();
    let original = qpeft::model::PretrainedModel::open(
        qpeft::model::resolve_model(common::fixture("tiny-bert").to_str().unwrap(), &options)
            .unwrap(),
    )
    .unwrap();
    let full = original.encoder::<B>(&Default::default()).unwrap();
    for (i, module) in report["modules"].as_array().unwrap().iter().enumerate() {
        let name = module["name"].as_str().unwrap();
        let (w_hat, w) = (
            linear_weight_out_in(encoder.linear(name).unwrap()).unwrap(),
            linear_weight_out_in(full.linear(name).unwrap()).unwrap(),
        );
        let k = module["k"].as_u64().unwrap() as usize;
        assert_eq!(adapters.layers[name].preserved, k, "{name}");
        let unscaled =
            squared_norm((&w - &w_hat).as_ref()).sqrt() / squared_norm(w.as_ref()).sqrt();
        let reported = module["unscaled_error"].as_f64().unwrap();
        assert!(
            (unscaled - reported).abs() < 1e-5,
            "{i} {name}: {unscaled} vs {reported}"
        );
    }
}

/// Against a numpy transcription of §1.6, §1.7, §11.3–§11.8 (`tests/fixtures/make_qer_fixtures.py`):
/// the same Q, L·R and scaled error for every scaling, every SRR k at 2 and 3 bits and LoftQ,
/// LoftQ, QERA and SRR on NF2 and NF4 (LoftQ's NFQuantizer), and the same probe k* for the same
/// probe matrix.
#[test]
fn initializers_match_the_numpy_reference() {
    let bytes = std::fs::read(common::fixture("qer/qer.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("qer/cases.json")).unwrap())
            .unwrap();
    let w = common::f64_matrix(&tensors, "W");
    let r_xx = common::f64_matrix(&tensors, "R_xx");
    let abs_mean = common::f64_matrix(&tensors, "abs_mean");
    let stats = LayerStats {
        h: r_xx.clone(),
        d: None,
        r_xx: Some(r_xx),
        abs_mean: Some(abs_mean.row(0).iter().copied().collect()),
        abs_mean_batch_max: None,
        d_sampled: None,
        tokens: 300,
    };
    let rank = spec["rank"].as_u64().unwrap() as usize;
    let cases = spec["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 34);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let bits = case["bits"].as_u64().unwrap() as u8;
        let k = case["k"].as_u64().unwrap() as usize;
        let method = match case["init"].as_str().unwrap() {
            "qera-exact" => Initializer::QeraExact,
            "qera-approx" => Initializer::QeraApprox,
            "lqer" => Initializer::Lqer { batch_max: false },
            "zeroquant-v2" => Initializer::ZeroquantV2,
            "loftq" => Initializer::Loftq { iters: 5 },
            "srr" => srr(KRule::Fixed(k)),
            other => panic!("unknown case {other}"),
        };
        let nf = case["grid"].as_str() == Some("nf");
        let kind = if nf {
            GridKind::NormalFloat
        } else {
            GridKind::MxInt
        };
        let layer = init(
            name,
            w.as_ref(),
            &stats,
            &blocks(kind, bits, 32),
            method,
            rank,
        );
        let q = common::f64_matrix(&tensors, &format!("{name}/Q"));
        let lr = common::f64_matrix(&tensors, &format!("{name}/LR"));
        let q_diff = common::max_abs_diff_mat(layer.quantized.dequantized.as_ref(), q.as_ref());
        let lr_diff = common::max_abs_diff_mat((&layer.l * &layer.r).as_ref(), lr.as_ref());
        // MXINT levels are exact powers of two; NF levels are normal quantiles, computed by
        // another algorithm in the reference, so they agree to rounding, and so does Q.
        let q_bound = if nf { 1e-13 } else { 0.0 };
        assert!(q_diff <= q_bound, "{name}: Q differs by {q_diff:e}");
        assert!(lr_diff < 1e-10, "{name}: L·R differs by {lr_diff:e}");
        if let Some(expected) = case["scaled_error"].as_f64() {
            let scaling = Scaling::from_stats(ScalingKind::QeraExact, &stats).unwrap();
            let ours = (squared_norm(
                scaling
                    .apply((&w - layer.reconstructed()).as_ref())
                    .as_ref(),
            ) / squared_norm(scaling.apply(w.as_ref()).as_ref()))
            .sqrt();
            if matches!(method, Initializer::Srr { .. } | Initializer::QeraExact) {
                assert!(
                    (ours - expected).abs() < 1e-10,
                    "{name}: {ours} vs {expected}"
                );
            }
        }
    }
    // The probe rule on the fixture's probe matrix.
    let probe = common::f64_matrix(&tensors, "probe");
    let scaling = Scaling::from_stats(ScalingKind::QeraExact, &stats).unwrap();
    let rho = |a: Mat<f64>| {
        let sigma = qpeft::reconstruct::lowrank::truncated_svd(a.as_ref(), rank)
            .unwrap()
            .sigma;
        tail_fractions(&sigma, squared_norm(a.as_ref()))
    };
    let k = qpeft::reconstruct::init::probe_rule(
        &rho(scaling.apply(w.as_ref())),
        &rho(scaling.apply(probe.as_ref())),
    );
    assert_eq!(k as u64, spec["probe_k"].as_u64().unwrap());
}

/// §11.8, the pre-release rule: k = min(r, ⌊r·(1 − ρ_r(WS))⌋), computed here without S from
/// the eigenvalues of W·R_xx·Wᵀ (the squared singular values of WS, as SSᵀ = R_xx), and the
/// result equals SRR with that fixed k. Planted structure of growing strength moves k up.
#[test]
fn prerelease_rule_keeps_the_energy_share_of_the_top_r_directions() {
    let quant = mxint(2, 32);
    let rank = 8;
    let mut layers: Vec<(String, Mat<f64>, LayerStats)> = [0.0, 0.5, 1.5, 4.0]
        .iter()
        .enumerate()
        .map(|(seed, &strength)| {
            let (w, stats) = random_layer(seed as u64, (48, 64, 400), 4, strength);
            (format!("planted ×{strength}"), w, stats)
        })
        .collect();
    layers.extend(minilm_modules().into_iter().take(6));
    let mut chosen = Vec::new();
    for (name, w, stats) in &layers {
        let r_xx = stats.r_xx.as_ref().unwrap();
        let gram = w * r_xx * w.transpose();
        let mut energy = gram.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
        energy.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = energy.iter().sum();
        let share = energy[..rank].iter().sum::<f64>() / total;
        let expected = ((rank as f64 * share).floor() as usize).min(rank);
        let margin = (rank as f64 * share - (rank as f64 * share).round()).abs();
        let prerelease = init(
            name,
            w.as_ref(),
            stats,
            &quant,
            srr(KRule::Prerelease),
            rank,
        );
        if margin > 1e-6 {
            assert_eq!(prerelease.k, expected, "{name}: share {share}");
        }
        let fixed = init(
            name,
            w.as_ref(),
            stats,
            &quant,
            srr(KRule::Fixed(prerelease.k)),
            rank,
        );
        assert_same_init(
            &prerelease,
            &fixed,
            &format!("{name}: prerelease vs fixed k"),
        );
        chosen.push(prerelease.k);
    }
    println!("prerelease k: {chosen:?}");
    assert!(
        chosen[3] > chosen[0],
        "planted strength raises k: {chosen:?}"
    );
}
