//! The fused operations against their compositions: values and every gradient, on the CPU
//! kernels and through autodiff, with padding and dropout.

use burn::module::Module;
use burn::nn::LayerNormConfig;
use burn::tensor::{Distribution, Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_ndarray::NdArray;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

type Cpu = NdArray<f32>;
type Ad = Autodiff<Cpu>;

fn max_abs_diff<const D: usize, B: burn::tensor::backend::Backend>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> f32 {
    let a = a.into_data().to_vec::<f32>().expect("f32 tensor");
    let b = b.into_data().to_vec::<f32>().expect("f32 tensor");
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn exp_matches_f64_to_two_ulps_and_saturates() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * f64::from(i) / 200_000.0;
        let got = f64::from(cpu::exp(x as f32));
        let want = (f64::from(x as f32)).exp();
        worst = worst.max(((got - want) / want).abs());
    }
    assert!(worst < 2.4e-7, "worst relative error {worst}");
    assert_eq!(cpu::exp(-88.0), 0.0);
    assert_eq!(cpu::exp(f32::MIN), 0.0);
    assert_eq!(cpu::exp(0.0), 1.0);
    assert!(cpu::exp(f32::NAN).is_nan());
}

/// Abramowitz & Stegun 7.1.26 is within 1.5e-7 of erf; evaluating it in f32 adds a few ulps of
/// 1 (6e-8 each) in 1 − p·e^(−x²).
#[test]
fn erf_matches_libm_to_six_in_ten_million() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -6.0 + 12.0 * f64::from(i) / 200_000.0;
        let got = f64::from(cpu::erf(x as f32));
        worst = worst.max((got - libm::erf(f64::from(x as f32))).abs());
    }
    assert!(worst < 6e-7, "worst absolute error {worst}");
    assert_eq!(cpu::erf(0.0), 0.0);
    assert_eq!(cpu::erf(-10.0), -1.0);
}

/// A tensor of normal values, tracked for gradients.
fn normal<const D: usize>(shape: [usize; D], std: f64) -> Tensor<Ad, D> {
    Tensor::<Ad, D>::random(shape, Distribution::Normal(0.0, std), &Default::default())
        .require_grad()
}

#[test]
fn gelu_matches_the_composition_with_its_derivative() {
    <Cpu as burn::tensor::backend::Backend>::seed(&Default::default(), 11);
    let x = normal([4, 7, 300], 3.0);
    let upstream =
        Tensor::<Ad, 3>::random([4, 7, 300], Distribution::Normal(0.0, 1.0), &x.device());
    let fused = gelu(x.clone());
    let reference = tensor::<Ad, 3>(composed::gelu_erf::<Ad>(primitive(x.clone())));
    assert!(max_abs_diff(fused.clone(), reference.clone()) < 1e-5);
    let grad_fused = (fused * upstream.clone()).sum().backward();
    let grad_reference = (reference * upstream).sum().backward();
    let diff = max_abs_diff(
        x.grad(&grad_fused).expect("gradient"),
        x.grad(&grad_reference).expect("gradient"),
    );
    assert!(diff < 1e-5, "gradient differs by {diff}");
}

/// Scores, a mask bias with each batch row's last `pad[b]` keys padded, a dropout mask.
fn attention_inputs(
    shape: [usize; 4],
    pad: &[usize],
) -> (Tensor<Ad, 4>, Tensor<Ad, 4>, Tensor<Ad, 4>) {
    let [batch, heads, queries, keys] = shape;
    let scores = normal(shape, 4.0);
    let mut mask = vec![0.0f32; batch * keys];
    for (b, &p) in pad.iter().enumerate() {
        for k in keys - p..keys {
            mask[b * keys + k] = -f32::MAX;
        }
    }
    let mask = Tensor::<Ad, 4>::from_data(
        TensorData::new(mask, [batch, 1, 1, keys]),
        &Default::default(),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let keep: Vec<f32> = (0..batch * heads * queries * keys)
        .map(|_| {
            if rng.random::<f32>() < 0.1 {
                0.0
            } else {
                1.0 / 0.9
            }
        })
        .collect();
    let keep = Tensor::<Ad, 4>::from_data(TensorData::new(keep, shape), &Default::default());
    (scores, mask, keep)
}

#[test]
fn attention_probs_match_the_composition_with_padding_and_dropout() {
    <Cpu as burn::tensor::backend::Backend>::seed(&Default::default(), 12);
    let shape = [3, 4, 9, 9];
    let (scores, mask, keep) = attention_inputs(shape, &[0, 3, 8]);
    let upstream = Tensor::<Ad, 4>::random(shape, Distribution::Normal(0.0, 1.0), &scores.device());
    let scale = 0.125;
    for keep in [None, Some(keep)] {
        let fused = attention_probs(scores.clone(), mask.clone(), scale, keep.clone());
        let reference = {
            let probs = tensor::<Ad, 4>(composed::attention_probs::<Ad>(
                primitive(scores.clone()),
                primitive(mask.clone()),
                scale,
            ));
            match &keep {
                Some(keep) => probs * keep.clone(),
                None => probs,
            }
        };
        assert!(max_abs_diff(fused.clone(), reference.clone()) < 1e-6);
        // Padded keys get exactly zero probability.
        let values = fused.clone().into_data().to_vec::<f32>().expect("f32");
        assert!(
            values[2 * 4 * 81..]
                .chunks(9)
                .all(|row| row[1..].iter().all(|&p| p == 0.0))
        );
        let grad_fused = (fused * upstream.clone()).sum().backward();
        let grad_reference = (reference * upstream.clone()).sum().backward();
        let diff = max_abs_diff(
            scores.grad(&grad_fused).expect("gradient"),
            scores.grad(&grad_reference).expect("gradient"),
        );
        assert!(diff < 1e-5, "score gradient differs by {diff}");
    }
}

#[test]
fn add_layer_norm_matches_the_composition_with_every_gradient() {
    <Cpu as burn::tensor::backend::Backend>::seed(&Default::default(), 13);
    let device = Default::default();
    let hidden = 384;
    let x = normal([2, 5, hidden], 2.0);
    let residual = normal([2, 5, hidden], 1.0);
    let norm = LayerNormConfig::new(hidden).init::<Ad>(&device);
    let norm = norm.map(&mut RandomizeParams(ChaCha8Rng::seed_from_u64(3)));
    let upstream = Tensor::<Ad, 3>::random([2, 5, hidden], Distribution::Normal(0.0, 1.0), &device);
    let eps = 1e-12;
    let fused = add_layer_norm(x.clone(), residual.clone(), &norm, eps);
    let beta = norm.beta.as_ref().expect("LayerNorm has a bias").val();
    let reference = tensor::<Ad, 2>(
        composed::add_layer_norm_forward::<Ad>(
            primitive(x.clone().reshape([10, hidden])),
            primitive(residual.clone().reshape([10, hidden])),
            primitive(norm.gamma.val()),
            primitive(beta),
            eps as f32,
        )
        .output,
    )
    .reshape([2, 5, hidden]);
    assert!(max_abs_diff(fused.clone(), reference.clone()) < 1e-5);
    let grad_fused = (fused * upstream.clone()).sum().backward();
    let grad_reference = (reference * upstream).sum().backward();
    for (name, a, b) in [
        ("x", x.grad(&grad_fused), x.grad(&grad_reference)),
        (
            "residual",
            residual.grad(&grad_fused),
            residual.grad(&grad_reference),
        ),
    ] {
        let diff = max_abs_diff(a.expect("gradient"), b.expect("gradient"));
        assert!(diff < 1e-5, "{name} gradient differs by {diff}");
    }
    let gamma = norm.gamma.val();
    let beta = norm.beta.as_ref().expect("bias").val();
    for (name, a, b) in [
        (
            "gamma",
            gamma.grad(&grad_fused),
            gamma.grad(&grad_reference),
        ),
        ("beta", beta.grad(&grad_fused), beta.grad(&grad_reference)),
    ] {
        let (a, b) = (a.expect("gradient"), b.expect("gradient"));
        // Sums over ten rows: compare relative to the largest entry.
        let scale = b.clone().abs().max().into_scalar().max(1.0);
        let diff = max_abs_diff(a, b) / scale;
        assert!(diff < 1e-5, "{name} gradient differs by {diff} (relative)");
    }
}

/// Gives a LayerNorm's parameters random values (gamma around 1, beta around 0).
struct RandomizeParams(ChaCha8Rng);

impl burn::module::ModuleMapper<Ad> for RandomizeParams {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<Ad, D>>,
    ) -> burn::module::Param<Tensor<Ad, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let values: Vec<f32> = (0..shape.num_elements())
            .map(|_| 1.0 + self.0.random::<f32>() - 0.5)
            .collect();
        let value = Tensor::<Ad, D>::from_data(TensorData::new(values, shape), &tensor.device())
            .require_grad();
        burn::module::Param::from_mapped_value(id, value, mapper)
    }
}
