//! Training: the optimizer step against PyTorch (AdamW, clip_grad_norm_, transformers'
//! schedules), the QPEFT linear layer against its dense merge and hand-derived gradients, SRR's
//! preserved-component scaling, recipe validation, and end-to-end runs on the tiny BERT
//! (loss falls, the metric is computed, `--resume` reproduces an uninterrupted run).

mod common;

use common::toy::{files, toy_data, toy_recipe, toy_setup};

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_ndarray::NdArray;
use qpeft::formats::packed::FrozenWeight;
use qpeft::layers::{AdapterSpec, DropoutPlacement, QLoraLinear};
use qpeft::recipe::Recipe;
use qpeft::reconstruct::init::KRule;
use qpeft::reconstruct::lowrank::FactorSplit;
use qpeft::train::optim::{
    AccumulatedGrads, AdamW, AdamWConfig, ComponentScale, ParamTable, PreservedScaling, Schedule,
    learning_rate,
};
use qpeft::train::trainer::{GammaForm, PreservedConfig};

type Cpu = NdArray<f32>;
type Ad = Autodiff<Cpu>;

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

#[derive(Module, Debug)]
struct Toy<B: burn::tensor::backend::Backend> {
    a: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 1>>,
    c: Param<Tensor<B, 2>>,
}

/// Seven AdamW steps with two decay groups, global clipping at 1.0 and a cosine schedule with
/// two warmup steps, against torch + transformers (`make_adamw_fixtures.py`).
#[test]
fn adamw_clipping_and_schedules_match_torch() {
    let golden = common::Golden::open(&common::fixture("adamw/adamw.safetensors"));
    let f = |name: &str| golden.f32(name).1;
    let mut toy = Toy::<Ad> {
        a: Param::from_tensor(tensor(f("a.init"), [4, 3])),
        b: Param::from_tensor(tensor(f("b.init"), [3])),
        c: Param::from_tensor(tensor(f("c.init"), [2, 5])),
    };
    let table = ParamTable::new::<Ad, _>(&toy, |path| path != "b", HashMap::new(), Vec::new());
    assert_eq!(table.len(), 3);
    let mut optimizer = AdamW::<Cpu>::new(AdamWConfig {
        weight_decay: 0.05,
        ..AdamWConfig::default()
    });
    let lrs = f("lr");
    let linear = f("lr_linear");
    for step in 0..7 {
        let lr = learning_rate(Schedule::Cosine, 2e-2, step, 7, 2);
        assert!(
            (lr - f64::from(lrs[step])).abs() < 1e-8,
            "step {step}: lr {lr} vs {}",
            lrs[step]
        );
        let lin = learning_rate(Schedule::Linear, 2e-2, step, 7, 2);
        assert!(
            (lin - f64::from(linear[step])).abs() < 1e-8,
            "linear lr at {step}"
        );
        // loss = Σ θ ⊙ G has gradient exactly G.
        let loss = (toy.a.val() * tensor::<Ad, 2>(f(&format!("a.grad.{step}")), [4, 3])).sum()
            + (toy.b.val() * tensor::<Ad, 1>(f(&format!("b.grad.{step}")), [3])).sum()
            + (toy.c.val() * tensor::<Ad, 2>(f(&format!("c.grad.{step}")), [2, 5])).sum();
        let mut grads = AccumulatedGrads::default();
        grads.add::<Ad, _>(loss.backward(), &toy, &table);
        let (next, stats) = optimizer
            .step::<Ad, _>(toy, grads, &table, lr, Some(1.0))
            .unwrap();
        toy = next;
        let norm = f64::from(f(&format!("norm.{step}"))[0]);
        assert!(
            (stats.grad_norm - norm).abs() < 1e-5 * norm,
            "step {step}: norm {} vs {norm}",
            stats.grad_norm
        );
        assert_eq!(stats.clipped, norm > 1.0, "step {step}");
        for (name, actual) in [
            ("a", values(toy.a.val().inner())),
            ("b", values(toy.b.val().inner())),
            ("c", values(toy.c.val().inner())),
        ] {
            let expected = f(&format!("{name}.step.{step}"));
            let worst = actual
                .iter()
                .zip(&expected)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 2e-6, "step {step} {name}: max |diff| {worst}");
        }
    }
}

/// The GELU the model trains with has the exact derivative Φ(x) + x·φ(x) (what torch's
/// `gelu_backward` computes), not the derivative of the tanh approximation.
#[test]
fn gelu_gradient_is_the_exact_derivative() {
    let xs: Vec<f32> = (-600..=600).map(|i| i as f32 / 100.0).collect();
    let x = tensor::<Ad, 1>(xs.clone(), [xs.len()]).require_grad();
    let grads = qpeft::kernels::gelu(x.clone()).sum().backward();
    let got = values(x.grad(&grads).unwrap());
    let worst = xs
        .iter()
        .zip(&got)
        .map(|(&x, &g)| {
            let x = f64::from(x);
            let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (f64::from(g) - (cdf + x * pdf)).abs()
        })
        .fold(0.0, f64::max);
    assert!(worst < 2e-6, "largest gradient error {worst}");
}

/// The gradients of the model's LayerNorm and softmax in f32 are as precise as f32 allows
/// (torch's are within 2e-7 of float64 on the same shapes): the CPU kernels in f32 agree with
/// the compositions in f64 (what the CPU backend runs for f64 tensors) within 1e-6 relative to
/// the largest entry. Burn's own LayerNorm and softmax miss this by 100× (2e-5, 4e-5), through
/// burn-ndarray's approximate f32 `recip` in the backward of a division.
#[test]
fn layer_norm_and_softmax_gradients_are_as_precise_as_f32() {
    use burn::tensor::DType;
    let dims = [4, 16, 384];
    let n: usize = dims.iter().product();
    let x: Vec<f32> = pseudo(n, 7).iter().map(|v| 3.0 * v).collect();
    let upstream = pseudo(n, 11);
    let norm = burn::nn::LayerNormConfig::new(dims[2])
        .with_epsilon(1e-12)
        .init::<Ad>(&Default::default());
    let gradient = |op: &str, dtype: DType| -> Vec<f64> {
        let input = tensor::<Ad, 3>(x.clone(), dims).cast(dtype).require_grad();
        let output = match op {
            "layer_norm" => {
                let norm = norm.clone().map(&mut CastParams(dtype));
                qpeft::kernels::add_layer_norm(input.clone(), input.zeros_like(), &norm, 1e-12)
            }
            _ => {
                let [batch, rows, keys] = dims;
                let scores = input.clone().reshape([batch, 1, rows, keys]);
                let mask = Tensor::<Ad, 4>::zeros([batch, 1, 1, keys], &input.device()).cast(dtype);
                qpeft::kernels::attention_probs(scores, mask, 1.0, None).reshape(dims)
            }
        };
        let loss = (output * tensor::<Ad, 3>(upstream.clone(), dims).cast(dtype)).sum();
        let grads = loss.backward();
        input
            .grad(&grads)
            .unwrap()
            .cast(DType::F64)
            .into_data()
            .to_vec::<f64>()
            .unwrap()
    };
    for op in ["layer_norm", "softmax"] {
        let (single, double) = (gradient(op, DType::F32), gradient(op, DType::F64));
        let scale = double.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = single
            .iter()
            .zip(&double)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst / scale < 1e-6,
            "{op}: relative error {:.2e}",
            worst / scale
        );
    }
}

/// Casts every float parameter of a module to one dtype.
struct CastParams(burn::tensor::DType);

impl<B: burn::tensor::backend::Backend> burn::module::ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, value, mapper) = param.consume();
        Param::from_mapped_value(id, value.cast(self.0), mapper)
    }
}

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// A packed 2-bit layer [6, 8] (one grid per row of 8), with its dequantized values.
fn packed_layer() -> (FrozenWeight, Vec<f32>) {
    let (rows, cols) = (6, 8);
    let codes: Vec<u8> = (0..rows * cols).map(|i| ((i * 7) % 4) as u8).collect();
    let scale: Vec<f32> = (0..rows).map(|r| 0.1 + 0.05 * r as f32).collect();
    let zero = vec![1.5f32; rows];
    let mut packed = Vec::new();
    for row in codes.chunks(cols) {
        packed.extend(
            qpeft::quant::pack::pack(row, qpeft::quant::grid::Bits::new(2).unwrap()).unwrap(),
        );
    }
    let dense = (0..rows * cols)
        .map(|i| scale[i / cols] * (f32::from(codes[i]) - 1.5))
        .collect();
    (
        FrozenWeight::Packed {
            bits: qpeft::quant::grid::Bits::new(2).unwrap(),
            rows,
            cols,
            codes: packed,
            scale,
            zero,
            group_of_column: vec![0; cols],
            levels: None,
            stored_bytes: 0,
        },
        dense,
    )
}

fn spec(preserved: usize) -> AdapterSpec {
    AdapterSpec {
        rank: 3,
        scale: 2.0,
        preserved,
        singular_values: vec![4.0, 2.0, 1.0],
        dropout: 0.0,
        placement: DropoutPlacement::Input,
    }
}

/// y = x·deq(Q)ᵀ + b + s·(x·Aᵀ)·Bᵀ equals the merged dense layer (and the layer merged for
/// inference computes it), and the gradients of A and B are the hand-derived ones; the frozen
/// base gets none.
#[test]
fn qlora_linear_forward_merge_and_gradients() {
    let (frozen, dense) = packed_layer();
    let (d_out, d_in, r) = (6, 8, 3);
    let lora_a = pseudo(r * d_in, 1);
    let lora_b = pseudo(d_out * r, 2);
    let bias = pseudo(d_out, 3);
    let layer = QLoraLinear::<Ad>::new(
        frozen,
        Some(bias.clone()),
        &lora_a,
        &lora_b,
        spec(0),
        &Default::default(),
    )
    .unwrap();
    let x_values = pseudo(2 * 5 * d_in, 4);
    let x = tensor::<Ad, 3>(x_values.clone(), [2, 5, d_in]);
    let y = layer.forward(x);
    let merged = layer.merged_weight().unwrap();
    let y_values = values(y.clone().inner());
    let c = pseudo(2 * 5 * d_out, 5);
    for t in 0..10 {
        for o in 0..d_out {
            let mut expected = f64::from(bias[o]);
            let mut base = f64::from(bias[o]);
            for i in 0..d_in {
                let xi = f64::from(x_values[t * d_in + i]);
                expected += xi * f64::from(merged[o * d_in + i]);
                base += xi * f64::from(dense[o * d_in + i]);
            }
            for j in 0..r {
                let h: f64 = (0..d_in)
                    .map(|i| f64::from(x_values[t * d_in + i]) * f64::from(lora_a[j * d_in + i]))
                    .sum();
                base += 2.0 * h * f64::from(lora_b[o * r + j]);
            }
            let actual = f64::from(y_values[t * d_out + o]);
            assert!(
                (actual - expected).abs() < 1e-5,
                "merged ({t},{o}): {actual} vs {expected}"
            );
            assert!(
                (actual - base).abs() < 1e-5,
                "by hand ({t},{o}): {actual} vs {base}"
            );
        }
    }
    // loss = Σ y ⊙ C: dB[o, j] = s·Σ_t C[t,o]·h[t,j], dA[j, i] = s·Σ_t (Σ_o C[t,o]·B[o,j])·x[t,i].
    let loss = (y * tensor::<Ad, 3>(c.clone(), [2, 5, d_out])).sum();
    let grads = loss.backward();
    let grad_a = values(layer.lora_a.val().grad(&grads).unwrap()); // [in, r]
    let grad_b = values(layer.lora_b.val().grad(&grads).unwrap()); // [r, out]
    for j in 0..r {
        for o in 0..d_out {
            let expected: f64 = (0..10)
                .map(|t| {
                    let h: f64 = (0..d_in)
                        .map(|i| {
                            f64::from(x_values[t * d_in + i]) * f64::from(lora_a[j * d_in + i])
                        })
                        .sum();
                    2.0 * f64::from(c[t * d_out + o]) * h
                })
                .sum();
            assert!((f64::from(grad_b[j * d_out + o]) - expected).abs() < 1e-4);
        }
        for i in 0..d_in {
            let expected: f64 = (0..10)
                .map(|t| {
                    let back: f64 = (0..d_out)
                        .map(|o| f64::from(c[t * d_out + o]) * f64::from(lora_b[o * r + j]))
                        .sum();
                    2.0 * back * f64::from(x_values[t * d_in + i])
                })
                .sum();
            assert!((f64::from(grad_a[i * r + j]) - expected).abs() < 1e-4);
        }
    }
    // Inference merges the adapter into one dense weight (`into_merged`): the same outputs.
    let merged_layer = burn::module::AutodiffModule::valid(&layer).into_merged();
    let y_merged = values(merged_layer.forward(tensor::<NdArray, 3>(x_values, [2, 5, d_in])));
    for (i, (m, y)) in y_merged.iter().zip(&y_values).enumerate() {
        assert!((m - y).abs() < 1e-5, "merged layer {i}: {m} vs {y}");
    }
    // The PEFT layouts read back exactly.
    assert_eq!(layer.lora_a_peft().unwrap(), lora_a);
    assert_eq!(layer.lora_b_peft().unwrap(), lora_b);
}

#[derive(Module, Debug)]
struct OneLayer<B: burn::tensor::backend::Backend> {
    layer: QLoraLinear<B>,
}

/// One AdamW step on a layer with k = 2 preserved components, with the scaling `mode`;
/// returns (A before, A after) in PEFT layout and the step's gradient norm (clipping at
/// 1e9, i.e. measured, never acting).
fn one_step(mode: PreservedScaling) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, f64) {
    let (frozen, _) = packed_layer();
    let (d_out, d_in, r) = (6, 8, 3);
    let lora_a = pseudo(r * d_in, 11);
    let lora_b = pseudo(d_out * r, 12);
    let model = OneLayer {
        layer: QLoraLinear::<Ad>::new(frozen, None, &lora_a, &lora_b, spec(2), &Default::default())
            .unwrap(),
    };
    let preserved = PreservedConfig {
        mode,
        gamma: 0.1,
        form: GammaForm::Constant,
    };
    let factors = preserved.factors(model.layer.spec());
    let mut scales = HashMap::new();
    if let Some(f) = factors {
        assert_eq!(f, vec![0.1, 0.1, 1.0]);
        scales.insert(
            model.layer.lora_a.id,
            ComponentScale {
                factors: tensor::<Cpu, 2>(f.clone(), [1, r]),
                mode,
            },
        );
        scales.insert(
            model.layer.lora_b.id,
            ComponentScale {
                factors: tensor::<Cpu, 2>(f, [r, 1]),
                mode,
            },
        );
    }
    let table = ParamTable::new::<Ad, _>(&model, |_| true, scales, Vec::new());
    let x = tensor::<Ad, 3>(pseudo(4 * d_in, 13), [1, 4, d_in]);
    let loss =
        (model.layer.forward(x) * tensor::<Ad, 3>(pseudo(4 * d_out, 14), [1, 4, d_out])).sum();
    let mut grads = AccumulatedGrads::default();
    grads.add::<Ad, _>(loss.backward(), &model, &table);
    let mut optimizer = AdamW::<Cpu>::new(AdamWConfig::default());
    let (model, stats) = optimizer
        .step::<Ad, _>(model, grads, &table, 1e-2, Some(1e9))
        .unwrap();
    (
        lora_a,
        model.layer.lora_a_peft().unwrap(),
        lora_b,
        model.layer.lora_b_peft().unwrap(),
        stats.grad_norm,
    )
}

/// `grad` multiplies the preserved components' gradients by γ (visible in the clipping norm,
/// and, as §12.3 says, nearly cancelled by Adam's normalization); `update` multiplies their
/// step by γ; the residual components move as without scaling.
#[test]
fn preserved_scaling_modes() {
    let (a0, a_off, b0, b_off, norm_off) = one_step(PreservedScaling::Off);
    let (_, a_grad, _, b_grad, norm_grad) = one_step(PreservedScaling::Grad);
    let (_, a_upd, _, b_upd, norm_upd) = one_step(PreservedScaling::Update);
    assert_eq!(
        norm_off, norm_upd,
        "update scaling leaves the gradients alone"
    );
    assert!(
        norm_grad < norm_off,
        "grad scaling shrinks the gradient norm: {norm_grad} vs {norm_off}"
    );
    let (r, d_in, d_out) = (3, 8, 6);
    for j in 0..r {
        let gamma = if j < 2 { 0.1 } else { 1.0 };
        for i in 0..d_in {
            let k = j * d_in + i;
            let (off, upd, grad) = (a_off[k] - a0[k], a_upd[k] - a0[k], a_grad[k] - a0[k]);
            assert!(
                (upd - gamma * off).abs() < 1e-6,
                "A[{j},{i}]: update {upd} vs γ·{off}"
            );
            // Adam's first step is lr·g/(|g| + ε): scaling g by γ changes it only through ε.
            assert!(
                (grad - off).abs() < 1e-6,
                "A[{j},{i}]: grad mode {grad} vs {off}"
            );
        }
        for o in 0..d_out {
            let k = o * r + j;
            let (off, upd) = (b_off[k] - b0[k], b_upd[k] - b0[k]);
            assert!(
                (upd - gamma * off).abs() < 1e-6,
                "B[{o},{j}]: update {upd} vs γ·{off}"
            );
            assert!((b_grad[k] - b_off[k]).abs() < 1e-6);
        }
    }
    // The per-rank form: a_i = (σ_max − σ_i)/(σ_max + 5σ_i) on the preserved block.
    let per_rank = PreservedConfig {
        mode: PreservedScaling::Grad,
        gamma: 0.1,
        form: GammaForm::PerRank,
    };
    let f = per_rank.factors(&spec(2)).unwrap();
    assert_eq!(f[0], 0.0);
    assert!((f[1] - (4.0 - 2.0) / (4.0 + 10.0)).abs() < 1e-7);
    assert_eq!(f[2], 1.0);
    assert!(
        per_rank.factors(&spec(0)).is_none(),
        "nothing preserved, nothing scaled"
    );
}

fn parse(text: &str, overrides: &[&str]) -> Result<Recipe, String> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Recipe::parse(text, Path::new("recipes/test.toml"), &overrides).map_err(|e| e.to_string())
}

#[test]
fn recipes_reject_unknown_keys_and_invalid_values_by_name() {
    let ok = parse("[data]\ntask = \"rte\"\n", &[]).unwrap();
    assert_eq!(ok.train.learning_rate, 3e-4);
    assert_eq!(ok.adapter.rank, 8);
    // Overrides are typed.
    let set = parse(
        "[data]\ntask = \"rte\"\n",
        &[
            "train.learning_rate=1e-4",
            "adapter.init=qera-exact",
            "data.max_train_samples=100",
        ],
    )
    .unwrap();
    assert_eq!(set.train.learning_rate, 1e-4);
    assert_eq!(set.data.max_train_samples, Some(100));
    // SRR's fixed k, as the docs spell it: a number, in the file or on the command line (where
    // TOML reads `3` as an integer), or quoted.
    for (file, sets) in [
        ("[adapter]\nk_rule = 3\n", vec![]),
        ("", vec!["adapter.k_rule=3"]),
        ("", vec!["adapter.k_rule=\"3\""]),
    ] {
        let recipe = parse(&format!("[data]\ntask = \"rte\"\n{file}"), &sets).unwrap();
        assert_eq!(recipe.adapter.k_rule, KRule::Fixed(3), "{file} {sets:?}");
        assert_eq!(parse(&recipe.to_toml().unwrap(), &[]).unwrap(), recipe);
    }
    // The factor split: absent by default (sqrt, the library's default), and left out of a resolved
    // recipe then, so that runs written before the key existed still compare equal.
    assert_eq!(ok.adapter.factor_split, None);
    assert!(!toml::to_string(&ok).unwrap().contains("factor_split"));
    let split = parse("[data]\ntask = \"rte\"\n", &["adapter.factor_split=sqrt"]).unwrap();
    assert_eq!(split.adapter.factor_split, Some(FactorSplit::Sqrt));
    let err = parse(
        "[data]\ntask = \"rte\"\n",
        &["adapter.init=qlora", "adapter.factor_split=sqrt"],
    )
    .unwrap_err();
    assert!(
        err.contains("adapter.factor_split") && err.contains("\"qlora\""),
        "{err}"
    );
    // An unknown key in the file: its line and the valid keys.
    let err = parse(
        "[data]\ntask = \"rte\"\n[train]\nlearnig_rate = 1e-4\n",
        &[],
    )
    .unwrap_err();
    assert!(
        err.contains("line 4") && err.contains("learnig_rate") && err.contains("learning_rate"),
        "{err}"
    );
    // An unknown key or section in --set.
    let err = parse("[data]\ntask = \"rte\"\n", &["train.lr=1"]).unwrap_err();
    assert!(
        err.contains("unknown key 'lr' in [train]") && err.contains("learning_rate"),
        "{err}"
    );
    let err = parse("[data]\ntask = \"rte\"\n", &["optim.lr=1"]).unwrap_err();
    assert!(err.contains("unknown section 'optim'"), "{err}");
    // Invalid values name their key.
    for (set, key) in [
        ("quant.bits=9", "quant.bits"),
        ("quant.bits=1", "quant.bits"),
        ("train.learning_rate=0", "train.learning_rate"),
        ("train.learning_rate=-1e-4", "train.learning_rate"),
        ("adapter.rank=0", "adapter.rank"),
        ("adapter.dropout=1.5", "adapter.dropout"),
        ("adapter.k_rule=9", "adapter.k_rule"),
        ("adapter.k_rule=-1", "adapter.k_rule"),
        ("adapter.k_rule=1.5", "adapter.k_rule"),
        ("adapter.factor_split=sigma", "factor_split"),
        (
            "adapter.targets=[\"attention.self.bogus\"]",
            "adapter.targets",
        ),
        ("train.batch_size=0", "train.batch_size"),
    ] {
        let err = parse("[data]\ntask = \"rte\"\n", &[set]).unwrap_err();
        assert!(err.contains(key), "{set}: {err}");
    }
    let err = parse("[data]\ntask = \"rte\"\n", &["adapter.init=srrr"]).unwrap_err();
    assert!(err.contains("srrr") && err.contains("qera-exact"), "{err}");
    let err = parse("[train]\nepochs = 3\n", &[]).unwrap_err();
    assert!(err.contains("data.task"), "{err}");
    let err = parse("[data]\ntask = \"glue\"\n", &[]).unwrap_err();
    assert!(err.contains("data.task"), "{err}");
    let err = parse("[data]\ntask = \"rte\"\n[quant]\nmethod = \"none\"\n", &[]).unwrap_err();
    assert!(err.contains("adapter.init"), "{err}");
    // Every shipped recipe parses.
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        Recipe::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // The rank is checked against the model's layers.
    assert!(ok.validate_rank(384).is_ok());
    let err = parse("[data]\ntask = \"rte\"\n", &["adapter.rank=500"])
        .unwrap()
        .validate_rank(384)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter.rank"), "{err}");
}

/// `qpeft train RECIPE --out RUN --data-dir GLUE`.
fn qpeft_train(recipe: &Path, run: &Path, glue: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .arg("train")
        .arg(recipe)
        .arg("--out")
        .arg(run)
        .arg("--data-dir")
        .arg(glue)
        .output()
        .unwrap()
}

/// The run's charts: the loss and the learning rate with one point per logged step, the main
/// dev score with one per epoch, all linked from report.md.
fn run_charts_show_the_log(run: &Path, epochs: usize) {
    let steps = qpeft::train::report::logged_steps(run).unwrap();
    assert!(steps.len() >= epochs, "{} logged steps", steps.len());
    let chart = |name: &str| std::fs::read_to_string(run.join(name)).unwrap();
    let longest = |svg: &str, series: usize| {
        common::svg_elements_by_colour(svg, "polyline", "stroke")
            .get(&common::palette_hex(series))
            .and_then(|lines| lines.iter().map(|p| p.split_whitespace().count()).max())
    };
    let training = chart("training.svg");
    assert_eq!(longest(&training, 0), Some(steps.len()), "loss");
    assert_eq!(longest(&training, 1), Some(steps.len()), "learning rate");
    assert_eq!(longest(&chart("dev.svg"), 0), Some(epochs), "dev main");
    let markdown = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(markdown.contains("](training.svg)") && markdown.contains("](dev.svg)"));
}

/// `qpeft train` on the tiny BERT: the loss falls, the dev metric is computed and beats
/// chance, and `qpeft eval` of the run reproduces the reported metric.
#[test]
fn train_command_learns_the_toy_task() {
    let tmp = tempfile::tempdir().unwrap();
    let (init, glue) = toy_setup(tmp.path());
    let recipe = tmp.path().join("toy.toml");
    std::fs::write(&recipe, toy_recipe(&init, "")).unwrap();
    let run = tmp.path().join("run");
    let output = qpeft_train(&recipe, &run, &glue);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // stderr is a pipe, not a terminal: progress comes as plain lines, the first step, every
    // 20th and every epoch.
    let progress: Vec<&str> = stderr.lines().filter(|l| l.contains(" step ")).collect();
    assert!(progress[0].starts_with("epoch 1/30 step 1/"), "{stderr}");
    assert!(
        progress[1].starts_with("epoch ") && progress[1].contains(" step 20/"),
        "{stderr}"
    );
    assert!(stderr.contains("\nepoch 30: train loss "), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let epochs = report["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 30);
    let loss = |i: usize| epochs[i]["train_loss"].as_f64().unwrap();
    assert!(loss(29) < 0.85 * loss(0), "loss {} → {}", loss(0), loss(29));
    let accuracy = report["final_main"].as_f64().unwrap();
    assert!(accuracy >= 0.65, "dev accuracy {accuracy} (chance 0.5)");
    assert!(report["quantization"]["bits_per_weight"].as_f64().unwrap() > 2.0);
    assert!(
        run.join("report.md").is_file() && run.join("checkpoints/epoch-30/state.json").is_file()
    );
    run_charts_show_the_log(&run, 30);
    let eval = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .arg("eval")
        .arg(&run)
        .arg("--json")
        .arg("--data-dir")
        .arg(&glue)
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let scored: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(scored["main"].as_f64().unwrap(), accuracy);
    exported_model_matches_the_run(&run, &recipe, &glue, &tmp.path().join("exported"));
    peft_export_is_the_dense_export_split(
        &run,
        &tmp.path().join("exported"),
        &tmp.path().join("peft"),
    );
    requantize_scores_the_classifier_before_and_after(
        &run,
        &glue,
        accuracy,
        &tmp.path().join("quantized"),
    );
    // A second run into the same folder is refused: nothing already saved is overwritten.
    let again = qpeft_train(&recipe, &run, &glue);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
}

/// A GLUE suite on the toy task: the toy GLUE folder, `recipes/sst2.toml` for the tiny BERT
/// (calibrated on the toy SST-2), and the init cache, all in one temporary folder.
struct ToySuite {
    root: tempfile::TempDir,
}

impl ToySuite {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        common::toy::write_toy_glue(&root.path().join("glue"));
        let recipes = root.path().join("recipes");
        std::fs::create_dir_all(&recipes).unwrap();
        std::fs::write(
            recipes.join("sst2.toml"),
            format!(
                "[model]\nname = {:?}\n[quant]\ncalib = \"sst2\"\ncalib_samples = 40\ncalib_max_length = 32\n\
                 [data]\ntask = \"sst2\"\n[adapter]\nrank = 4\n[train]\nlearning_rate = 3e-3\n\
                 batch_size = 16\nepochs = 3\nmax_length = 32\neval_batch_size = 64\n",
                common::fixture("tiny-bert").display().to_string()
            ),
        )
        .unwrap();
        ToySuite { root }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.root.path().join(name)
    }

    /// `qpeft glue --tasks sst2 --compare ROWS --out <root>/OUT` on the toy suite; more
    /// arguments may follow.
    fn glue(&self, out: &str, rows: &str) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"));
        command
            .env("QPEFT_CACHE", self.path("cache"))
            .args(["glue", "--tasks", "sst2", "--compare", rows])
            .arg("--recipes")
            .arg(self.path("recipes"))
            .arg("--out")
            .arg(self.path(out))
            .arg("--data-dir")
            .arg(self.path("glue"));
        command
    }
}

/// `qpeft glue` trains one run per (row, task), builds the rows' init checkpoints from the
/// recipe, and tables the final scores; the same command continues a suite whose runs were
/// stopped — before their first checkpoint (trained again from the start) or after one
/// (resumed) — to the same epochs, bit for bit, and refuses a run made from another recipe.
#[test]
fn glue_command_tables_and_continues_a_suite() {
    let suite = ToySuite::new();
    let out = suite.path("suite");
    let first = suite.glue("suite", "lora,srr").output().unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("building the init checkpoint"), "{stderr}");
    let report = |row: &str| -> serde_json::Value {
        let path = out.join(row).join("sst2/report.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (lora, srr) = (report("lora"), report("srr"));
    assert_eq!(lora["recipe"]["adapter"]["init"], "lora");
    assert_eq!(srr["recipe"]["adapter"]["init"], "srr");
    let table = std::fs::read_to_string(out.join("glue.md")).unwrap();
    for (row, run) in [("lora", &lora), ("srr", &srr)] {
        let score = 100.0 * run["final_main"].as_f64().unwrap();
        let line = format!("| {row} | {score:.2} | {score:.2} |");
        assert!(table.contains(&line), "{line} not in\n{table}");
    }
    // The majority-class line: the toy training split's most frequent label (ties: 0), as a
    // share of the toy dev split, counted here from the TSV files.
    let labels = |split: &str| -> Vec<String> {
        std::fs::read_to_string(suite.path(&format!("glue/SST-2/{split}.tsv")))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.rsplit('\t').next().unwrap().to_string())
            .collect()
    };
    let train = labels("train");
    let ones = train.iter().filter(|l| *l == "1").count();
    let majority = if 2 * ones > train.len() { "1" } else { "0" };
    let dev = labels("dev");
    let share = 100.0 * dev.iter().filter(|l| *l == majority).count() as f64 / dev.len() as f64;
    let line = format!("| majority class | {share:.2} | {share:.2} |");
    assert!(table.contains(&line), "{line} not in\n{table}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("glue.json")).unwrap()).unwrap();
    assert_eq!(json[1]["tasks"]["sst2"]["main"], srr["final_main"]);

    // lora stopped after its second epoch's checkpoint, srr during its first epoch.
    let lora_run = out.join("lora/sst2");
    std::fs::remove_file(lora_run.join("report.json")).unwrap();
    std::fs::remove_dir_all(lora_run.join("checkpoints/epoch-3")).unwrap();
    let srr_run = out.join("srr/sst2");
    std::fs::remove_file(srr_run.join("report.json")).unwrap();
    std::fs::remove_dir_all(srr_run.join("checkpoints")).unwrap();
    let again = suite.glue("suite", "lora,srr").output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming from") && stderr.contains("epoch-2"),
        "{stderr}"
    );
    assert!(stderr.contains("starting it again"), "{stderr}");
    assert!(!stderr.contains("init checkpoint"), "{stderr}");
    assert_eq!(report("lora")["epochs"], lora["epochs"]);
    assert_eq!(report("srr")["epochs"], srr["epochs"]);
    let scores_table = |md: &str| md.split("\n\n").next().unwrap().to_string();
    assert_eq!(
        scores_table(&std::fs::read_to_string(out.join("glue.md")).unwrap()),
        scores_table(&table)
    );
    assert!(
        table.contains("| srr | sst2 |"),
        "the per-epoch table: {table}"
    );
    let log = std::fs::read_to_string(srr_run.join("metrics.jsonl")).unwrap();
    assert_eq!(log.matches("\"type\":\"start\"").count(), 2);

    // A run is trained by one process at a time.
    let held = qpeft::pipeline::run::RunDir {
        root: lora_run.clone(),
    }
    .try_lock()
    .unwrap()
    .unwrap();
    let busy = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .arg("train")
        .arg("--resume")
        .arg(&lora_run)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(!busy.status.success());
    assert!(
        stderr.contains("being trained by another process"),
        "{stderr}"
    );
    drop(held);

    // Another protocol in the same folder is refused, naming the field that differs.
    let other = suite
        .glue("suite", "lora,srr")
        .args(["--set", "train.epochs=4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success());
    assert!(
        stderr.contains("train.epochs = 4 here, 3 there") && stderr.contains("lora"),
        "{stderr}"
    );

    // The init cache is keyed by the calibration texts too: the same texts reuse the init,
    // an edited calibration set builds a new one.
    let suite_in = |name: &str| {
        let output = suite.glue(name, "lora,srr").output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        stderr
    };
    let stderr = suite_in("suite-2");
    assert!(stderr.contains("(cached)"), "{stderr}");
    let train_tsv = suite.path("glue/SST-2/train.tsv");
    let edited = std::fs::read_to_string(&train_tsv)
        .unwrap()
        .replace("people", "persons");
    std::fs::write(&train_tsv, edited).unwrap();
    let stderr = suite_in("suite-3");
    assert!(stderr.contains("building the init checkpoint"), "{stderr}");
    // Beside each init folder stays its (unlocked) lock file; no partial folder is left.
    let mut inits: Vec<String> = std::fs::read_dir(suite.path("cache/inits"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    inits.sort();
    assert_eq!(inits.len(), 4, "{inits:?}");
    for pair in inits.chunks(2) {
        assert_eq!(pair[1], format!("{}.lock", pair[0]), "{inits:?}");
        let folder = suite.path("cache/inits").join(&pair[0]);
        assert!(folder.join("model.safetensors").is_file(), "{inits:?}");
    }
}

/// Runs `command`, which must succeed (else the test fails with its stderr).
fn succeeded(command: &mut std::process::Command) -> std::process::Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The final dev score in a `qpeft glue` run's `report.json` (`<cell>/lr-<lr>-seed-<seed>`),
/// `None` when that run did not happen.
fn final_main(cell: &std::path::Path, lr: &str, seed: u64) -> Option<f64> {
    let path = cell.join(format!("lr-{lr}-seed-{seed}/report.json"));
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["final_main"].as_f64()
}

/// `qpeft glue --lrs … --seeds … --select first-seed`: every lr runs with the first seed, the
/// best final score selects each cell's lr, only that lr runs with the other seeds, and the table reports their
/// mean ± standard deviation, with the grid and the per-seed scores beside it.
#[test]
fn glue_selects_each_cells_lr_and_reports_the_seeds() {
    let suite = ToySuite::new();
    let glue_grid = || {
        let mut command = suite.glue("grid", "lora");
        command.args([
            "--lrs",
            "1e-4,3e-3",
            "--seeds",
            "42,1,2",
            "--select",
            "first-seed",
        ]);
        command
    };
    succeeded(&mut glue_grid());
    let cell = suite.path("grid/lora/sst2");
    let score = |lr: &str, seed: u64| final_main(&cell, lr, seed);
    let (low, high) = (score("1e-4", 42).unwrap(), score("3e-3", 42).unwrap());
    let (selected, other) = if high > low {
        ("3e-3", "1e-4")
    } else {
        ("1e-4", "3e-3")
    };
    assert!(score(other, 1).is_none() && score(other, 2).is_none());
    let seeds: Vec<f64> = [42, 1, 2]
        .iter()
        .map(|&s| 100.0 * score(selected, s).unwrap())
        .collect();
    let mean = seeds.iter().sum::<f64>() / 3.0;
    let std = (seeds.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    let table = std::fs::read_to_string(suite.path("grid/glue.md")).unwrap();
    let main = format!("| lora | {mean:.2} ± {std:.2} | {mean:.2} |");
    assert!(table.contains(&main), "{main} not in\n{table}");
    let grid = format!(
        "| lora | sst2 | {:.2} | {:.2} | {selected} | {:.2} | {:.2} | {:.2} | {mean:.2} ± {std:.2} |",
        100.0 * low,
        100.0 * high,
        seeds[0],
        seeds[1],
        seeds[2]
    );
    assert!(table.contains(&grid), "{grid} not in\n{table}");
    assert!(table.contains("| lora | sst2 | 1e-4 | 42 |"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(suite.path("grid/glue.json")).unwrap())
            .unwrap();
    let entry = &json[0]["tasks"]["sst2"];
    assert_eq!(
        entry["selected_lr"].as_f64().unwrap(),
        selected.parse::<f64>().unwrap()
    );
    assert!((100.0 * entry["main"].as_f64().unwrap() - mean).abs() < 1e-9);
    // One bar (and a legend swatch) for the one cell, with the seeds' spread as its error bar.
    let chart = std::fs::read_to_string(suite.path("grid/glue.svg")).unwrap();
    let bars = common::svg_elements_by_colour(&chart, "rect", "fill");
    assert_eq!(bars.get(&common::palette_hex(0)).map(Vec::len), Some(2));
    let w = qpeft::plot::WHISKER;
    let whisker = format!("#{:02X}{:02X}{:02X}", w.0, w.1, w.2);
    let lines = common::svg_elements_by_colour(&chart, "polyline", "stroke");
    assert_eq!(lines.get(&whisker).map(Vec::len), Some(1));
    assert!(table.contains("](glue.svg)"));

    // `--progress` trains nothing and prints the tables of glue.md (less its chart) from the
    // runs finished so far.
    let progress = || String::from_utf8(succeeded(glue_grid().arg("--progress")).stdout).unwrap();
    assert_eq!(
        progress(),
        table.replace("\n![dev scores, rows × tasks](glue.svg)\n", "")
    );
    // Seed 2 stopped after its second epoch's checkpoint: the cell holds the other two seeds, the
    // run its two saved epochs.
    let seed_2 = cell.join(format!("lr-{selected}-seed-2"));
    let report_2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(seed_2.join("report.json")).unwrap())
            .unwrap();
    std::fs::remove_file(seed_2.join("report.json")).unwrap();
    std::fs::remove_dir_all(seed_2.join("checkpoints/epoch-3")).unwrap();
    let two = &seeds[..2];
    let (mean_2, std_2) = (
        (two[0] + two[1]) / 2.0,
        (two[0] - two[1]).abs() / 2f64.sqrt(),
    );
    let now = progress();
    let main = format!("| lora | {mean_2:.2} ± {std_2:.2} (2 of 3 seeds) | … |");
    assert!(now.contains(&main), "{main} not in\n{now}");
    let epoch = |i: usize| {
        let e = &report_2["epochs"][i];
        format!(
            "{:.2} ({:.4})",
            100.0 * e["main"].as_f64().unwrap(),
            e["train_loss"].as_f64().unwrap()
        )
    };
    let stopped = format!(
        "| lora | sst2 | {selected} | 2 | {} | {} | – | – | stopped |",
        epoch(0),
        epoch(1)
    );
    assert!(now.contains(&stopped), "{stopped} not in\n{now}");
    // The other lr's run removed: the lr is selected again once it ran; held by a process, it
    // is training.
    let other_42 = cell.join(format!("lr-{other}-seed-42"));
    std::fs::remove_dir_all(&other_42).unwrap();
    let now = progress();
    assert!(now.contains("| lora | … | … |"), "{now}");
    let waiting = format!("| lora | sst2 | {other} | 42 | – | – | – | – | not started |");
    assert!(now.contains(&waiting), "{waiting} not in\n{now}");
    let held = qpeft::pipeline::run::RunDir { root: other_42 }
        .try_lock()
        .unwrap()
        .unwrap();
    assert!(progress().contains(&waiting.replace("not started", "training")));
    drop(held);
    assert_eq!(
        std::fs::read_to_string(suite.path("grid/glue.md")).unwrap(),
        table,
        "--progress writes nothing"
    );
}

/// `qpeft glue --lrs … --seeds …` (`--select mean`, the default): every lr runs with every
/// seed, the best mean final score selects each cell's lr, and the grid shows each lr's mean.
#[test]
fn glue_selects_the_lr_with_the_best_mean_over_the_seeds() {
    let suite = ToySuite::new();
    let output = suite
        .glue("mean", "lora")
        .args(["--lrs", "1e-4,3e-3", "--seeds", "42,1"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cell = suite.path("mean/lora/sst2");
    let score = |lr: &str, seed: u64| {
        final_main(&cell, lr, seed).unwrap_or_else(|| panic!("no report for lr {lr} seed {seed}"))
    };
    let mean = |lr: &str| (score(lr, 42) + score(lr, 1)) / 2.0;
    let (low, high) = (mean("1e-4"), mean("3e-3"));
    let selected = if high > low { "3e-3" } else { "1e-4" };
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(suite.path("mean/glue.json")).unwrap())
            .unwrap();
    let entry = &json[0]["tasks"]["sst2"];
    assert_eq!(
        entry["selected_lr"].as_f64().unwrap(),
        selected.parse::<f64>().unwrap()
    );
    assert_eq!(entry["grid"][0]["main"].as_f64().unwrap(), low);
    assert_eq!(entry["grid"][1]["main"].as_f64().unwrap(), high);
    assert_eq!(entry["main"].as_f64().unwrap(), mean(selected));
    let table = std::fs::read_to_string(suite.path("mean/glue.md")).unwrap();
    let grid = format!(
        "| lora | sst2 | {:.2} | {:.2} | {selected} | {:.2} | {:.2} |",
        100.0 * low,
        100.0 * high,
        100.0 * score(selected, 42),
        100.0 * score(selected, 1),
    );
    assert!(table.contains(&grid), "{grid} not in\n{table}");
}

/// Two `qpeft glue` commands on one folder share the runs: each run is trained by one of them,
/// once, and both print the whole table.
#[test]
fn parallel_glue_commands_share_the_runs() {
    let suite = ToySuite::new();
    let out = suite.path("suite");
    let spawn = || {
        suite
            .glue("suite", "lora,qlora,srr,loftq")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let (first, second) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    for output in [&first, &second] {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let table = |output: &std::process::Output| -> String {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.starts_with('|'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(table(&first), table(&second));
    for row in ["lora", "qlora", "srr", "loftq"] {
        let log = std::fs::read_to_string(out.join(row).join("sst2/metrics.jsonl")).unwrap();
        assert_eq!(log.matches("\"type\":\"start\"").count(), 1, "{row}");
        assert!(table(&first).contains(&format!("| {row} |")));
    }
}

/// `qpeft export` writes a dense HF classifier (no quantized tensors, no adapters) whose logits
/// equal the trained QPEFT model's up to the rounding of the merge.
fn exported_model_matches_the_run(run: &Path, recipe: &Path, glue: &Path, out: &Path) {
    let export = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .arg("export")
        .arg(run)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let device = Default::default();
    let trained = qpeft::pipeline::run::load_trained::<Ad>(run, &device).unwrap();
    let files =
        qpeft::model::resolve_model(out.to_str().unwrap(), &qpeft::model::HubOptions::from_env())
            .unwrap();
    let exported = qpeft::model::PretrainedModel::open(files).unwrap();
    assert_eq!(
        exported.config.head,
        qpeft::model::HeadKind::Classification { num_labels: 2 }
    );
    let names = exported.weights.names();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".weight") || n.ends_with(".bias")),
        "{names:?}"
    );
    assert!(names.contains(&"bert.encoder.layer.0.attention.self.query.weight".to_string()));
    let (dense, fresh) = exported
        .classifier::<Cpu>(exported.config.head, &device)
        .unwrap();
    assert!(
        fresh.is_empty(),
        "head layers missing from the export: {fresh:?}"
    );
    let data = toy_data(&Recipe::load(recipe, &[]).unwrap(), glue);
    let indices: Vec<usize> = (0..data.dev[0].len()).collect();
    let batch = data.dev[0].batch(&indices);
    let input = qpeft::model::encoder_input::<Cpu>(&batch.encoded, &device);
    let want = values(trained.model.forward(&input));
    let got = values(dense.forward(&input));
    let worst = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "largest logit difference {worst}");
}

/// `qpeft export --format peft`: PEFT's names, shapes and config keys (as `peft` 0.21 writes them
/// for `LoraConfig(target_modules=[…], modules_to_save=["classifier", "pooler"])`), a base
/// without the head, and base + (α/r)·lora_B·lora_A equal to the dense export's merged weight
/// for every target module.
fn peft_export_is_the_dense_export_split(run: &Path, dense: &Path, out: &Path) {
    let export = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .args(["export", "--format", "peft", "--out"])
        .arg(out)
        .arg(run)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["bias"], "none");
    assert_eq!(
        config["modules_to_save"],
        serde_json::json!(["classifier", "pooler"])
    );
    let r = config["r"].as_u64().unwrap() as usize;
    let scale = config["lora_alpha"].as_f64().unwrap() / r as f64;
    let targets: Vec<String> = config["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    // The tiny BERT: 2 layers × 6 linears.
    assert_eq!(targets.len(), 12, "{targets:?}");
    let read = |path: &Path| std::fs::read(path).unwrap();
    let (adapter_bytes, base_bytes, dense_bytes) = (
        read(&out.join("adapter_model.safetensors")),
        read(&out.join("base/model.safetensors")),
        read(&dense.join("model.safetensors")),
    );
    let adapter = safetensors::SafeTensors::deserialize(&adapter_bytes).unwrap();
    let base = safetensors::SafeTensors::deserialize(&base_bytes).unwrap();
    let dense = safetensors::SafeTensors::deserialize(&dense_bytes).unwrap();
    let tensor = |file: &safetensors::SafeTensors, name: &str| -> (Vec<usize>, Vec<f32>) {
        let view = file.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (view.shape().to_vec(), values)
    };
    let mut expected_names = Vec::new();
    for target in &targets {
        let (a_name, b_name) = (
            format!("base_model.model.{target}.lora_A.weight"),
            format!("base_model.model.{target}.lora_B.weight"),
        );
        let (a_shape, a) = tensor(&adapter, &a_name);
        let (b_shape, b) = tensor(&adapter, &b_name);
        let (w_shape, w) = tensor(&base, &format!("{target}.weight"));
        let (out_dim, in_dim) = (w_shape[0], w_shape[1]);
        assert_eq!((a_shape, b_shape), (vec![r, in_dim], vec![out_dim, r]));
        let (_, merged) = tensor(&dense, &format!("{target}.weight"));
        let worst = (0..out_dim * in_dim)
            .map(|k| {
                let (o, i) = (k / in_dim, k % in_dim);
                let low_rank: f64 = (0..r)
                    .map(|j| f64::from(b[o * r + j]) * f64::from(a[j * in_dim + i]))
                    .sum();
                (f64::from(w[k]) + scale * low_rank - f64::from(merged[k])).abs()
            })
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-6,
            "{target}: base + s·B·A is {worst} from the merged weight"
        );
        expected_names.extend([a_name, b_name]);
    }
    for head in ["bert.pooler.dense", "classifier"] {
        for leaf in ["weight", "bias"] {
            let name = format!("{head}.{leaf}");
            assert_eq!(
                tensor(&adapter, &format!("base_model.model.{name}")),
                tensor(&dense, &name)
            );
            assert!(base.tensor(&name).is_err(), "the base carries {name}");
            expected_names.push(format!("base_model.model.{name}"));
        }
    }
    let mut names: Vec<String> = adapter.names().into_iter().map(str::to_string).collect();
    names.sort();
    expected_names.sort();
    assert_eq!(names, expected_names);
    for file in ["config.json", "tokenizer.json"] {
        assert!(out.join("base").join(file).is_file(), "base/{file}");
    }
}

/// `qpeft export RUN --requantize gptq`: the run merged (kept in merged/) and re-quantized in
/// one command, calibrated by default on the run's own task's training text; "before" is the
/// run's own dev metric, "after" is what the written quantized folder scores when loaded and
/// run independently.
fn requantize_scores_the_classifier_before_and_after(
    run: &Path,
    glue: &Path,
    accuracy: f64,
    out: &Path,
) {
    let quantize = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .arg("export")
        .arg(run)
        .args(["--requantize", "gptq", "--bits", "2", "--group", "0"])
        .args(["--calib-samples", "40", "--max-length", "32"])
        .args(["--eval-max-length", "32"])
        .arg("--data-dir")
        .arg(glue)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        quantize.status.success(),
        "{}",
        String::from_utf8_lossy(&quantize.stderr)
    );
    assert!(out.join("merged/model.safetensors").is_file());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["eval"]["task"], "sst2", "the run's own task");
    let calibration = report["metadata"]["calibration"].as_str().unwrap();
    assert!(calibration.starts_with("sst2 (40 texts"), "{calibration}");
    assert_eq!(report["eval"]["before"]["main"].as_f64().unwrap(), accuracy);
    let after = report["eval"]["after"]["main"].as_f64().unwrap();
    let device = Default::default();
    let quantized = qpeft::model::PretrainedModel::open(
        qpeft::model::resolve_model(out.to_str().unwrap(), &qpeft::model::HubOptions::from_env())
            .unwrap(),
    )
    .unwrap();
    assert!(
        quantized
            .weights
            .names()
            .contains(&"bert.encoder.layer.0.attention.self.query.qcodes".to_string())
    );
    let (classifier, fresh) = quantized
        .classifier::<Cpu>(quantized.config.head, &device)
        .unwrap();
    assert!(fresh.is_empty());
    let tokenizer = quantized.tokenizer(32).unwrap();
    let dev = qpeft::data::batch::TokenizedSplit::new(
        &qpeft::data::load(glue, qpeft::data::Task::Sst2, qpeft::data::Split::Dev).unwrap(),
        &tokenizer,
        None,
    )
    .unwrap();
    let indices: Vec<usize> = (0..dev.len()).collect();
    let batch = dev.batch(&indices);
    let logits =
        values(classifier.forward(&qpeft::model::encoder_input::<Cpu>(&batch.encoded, &device)));
    let correct = dev
        .labels
        .iter()
        .enumerate()
        .filter(|(i, label)| {
            let predicted = usize::from(logits[2 * i + 1] > logits[2 * i]);
            **label == Some(qpeft::data::Label::Class(predicted))
        })
        .count();
    assert_eq!(after, correct as f64 / dev.len() as f64);
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("## sst2 dev"), "{markdown}");
    // A classifier whose head does not fit the task is refused before any calibration.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .args([
            "quantize", "--method", "rtn", "--bits", "4", "--eval", "sst2",
        ])
        .arg("--model")
        .arg(common::fixture("tiny-bert"))
        .arg("--data-dir")
        .arg(glue)
        .arg("--out")
        .arg(out.with_extension("refused"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--eval sst2") && err.contains("classifier.weight"),
        "{err}"
    );
    assert!(!out.with_extension("refused").join("report.json").exists());
}

/// A diverging run stops with a message naming the step and the last good checkpoint,
/// which stays on disk.
#[test]
fn non_finite_loss_stops_the_run_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (init, glue) = toy_setup(tmp.path());
    let text = toy_recipe(&init, "checkpoint_every = 1\n")
        .replace("learning_rate = 3e-3", "learning_rate = 1e30");
    let recipe = Recipe::parse(&text, Path::new("toy.toml"), &[]).unwrap();
    let data = toy_data(&recipe, &glue);
    let device = Default::default();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let model = qpeft::pipeline::run::build_model::<Ad>(&recipe, files(&recipe), &device)
        .unwrap()
        .model;
    let err = match qpeft::train::trainer::train(
        model,
        &data,
        &qpeft::pipeline::run::train_config(&recipe),
        &run,
        None,
        qpeft::train::hooks::TrainHooks::standard(&run).unwrap(),
        &device,
    ) {
        Ok(_) => panic!("a learning rate of 1e30 must diverge"),
        Err(e) => {
            // A typed error: the step and the checkpoint to go back to, for a caller to act on.
            let qpeft::Error::Diverged {
                step,
                last_checkpoint: Some(_),
                ..
            } = &e
            else {
                panic!("expected Error::Diverged, got {e:?}");
            };
            assert!(*step >= 1);
            e.to_string()
        }
    };
    assert!(
        err.contains("the loss is") && err.contains("last good checkpoint"),
        "{err}"
    );
    let good = qpeft::train::trainer::latest_checkpoint(&run)
        .unwrap()
        .unwrap();
    assert!(err.contains(&good.display().to_string()), "{err}");
    qpeft::train::checkpoint::LoadedCheckpoint::open(&good).unwrap();
}

/// `train.length_split`: a batch computed as length-sorted parts gives the step the whole
/// batch's gradient (each part's mean loss divided by M·n_b/n_c), for every parameter.
#[test]
fn length_split_parts_add_up_to_the_whole_batch() {
    use qpeft::train::optim::{AdamW, AdamWConfig, ParamTable};
    use qpeft::train::step::{plan_micro_batches, train_step};
    let tmp = tempfile::tempdir().unwrap();
    let (init, glue) = toy_setup(tmp.path());
    let text = toy_recipe(&init, "").replace("[adapter]\n", "[adapter]\ndropout = 0.0\n");
    let text = text.replace("[model]\n", "[model]\ndropout = 0.0\n");
    let recipe = Recipe::parse(&text, Path::new("toy.toml"), &[]).unwrap();
    let data = toy_data(&recipe, &glue);
    let device = Default::default();
    let model = qpeft::pipeline::run::build_model::<Ad>(&recipe, files(&recipe), &device)
        .unwrap()
        .model;
    let table = ParamTable::new::<Ad, _>(
        &model,
        qpeft::adapters::surgery::decays,
        Default::default(),
        Vec::new(),
    );
    // Two accumulation batches of different sizes, so the divisors differ between parts.
    let group = vec![(0..24).collect::<Vec<_>>(), (24..37).collect()];
    let gradients = |split: usize| {
        let parts = plan_micro_batches(&data.train, &group, split);
        let mut optimizer = AdamW::new(AdamWConfig::default());
        let step = train_step(
            model.clone(),
            &mut optimizer,
            &table,
            &parts,
            1e-3,
            None,
            true,
            &device,
        )
        .unwrap();
        (parts.len(), step.loss, step.grads.unwrap())
    };
    let (whole_parts, whole_loss, whole) = gradients(1);
    let (split_parts, split_loss, split) = gradients(4);
    assert_eq!((whole_parts, split_parts), (2, 8));
    assert!((whole_loss - split_loss).abs() < 1e-6 * whole_loss.abs());
    for id in &table.order {
        let a = values(whole.get(id).unwrap().clone());
        let b = values(split.get(id).unwrap().clone());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let diff = common::max_abs_diff(&a, &b);
        assert!(
            diff / scale < 1e-5,
            "{}: {}",
            table.params[id].path,
            diff / scale
        );
    }
}
