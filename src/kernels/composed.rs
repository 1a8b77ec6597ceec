//! The fused operations as compositions of Burn operations: the default bodies of
//! [`super::Backend`] and the reference the CPU kernels are tested against.
//!
//! The forward compositions are the model's operations before fusion, in the same order
//! (Hugging Face's `modeling_bert.py`): softmax as exp(x − max)·(1/Σ), LayerNorm with the
//! biased variance and (variance + eps)^(−1/2).
//!
//! Why not Burn's LayerNorm and softmax: burn-autodiff 0.21 differentiates a division a/b with
//! respect to a as grad·recip(b), and burn-ndarray's f32 `recip` is the SIMD approximate
//! reciprocal (relative error 5.4e-5), so gradients through them were 100× less precise than
//! torch's, which showed as adapters drifting from PyTorch's step by step (docs/results.md).
//! Here no division has a differentiated left side, and the backward passes are closed forms.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorMetadata};

use super::{LayerNormForward, LayerNormGrads, primitive, tensor};

/// 1/√(2π), the standard normal density at 0.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `x` as a vector, and its shape.
fn flat<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 1>, Shape) {
    let shape = x.shape();
    let len = shape.num_elements();
    (tensor(B::float_reshape(x, Shape::new([len]))), shape)
}

pub fn gelu_erf<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let (x, shape) = flat::<B>(x);
    let cdf = (x.clone() / std::f64::consts::SQRT_2).erf() + 1.0;
    B::float_reshape(primitive((x * cdf) / 2.0), shape)
}

pub fn gelu_erf_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let (x, shape) = flat::<B>(x);
    let (grad, _) = flat::<B>(grad);
    let cdf = ((x.clone() / std::f64::consts::SQRT_2).erf() + 1.0) / 2.0;
    let pdf = (x.clone() * x.clone() * -0.5).exp() * INV_SQRT_2PI;
    B::float_reshape(primitive(grad * (cdf + x * pdf)), shape)
}

pub fn attention_probs<B: Backend>(
    scores: FloatTensor<B>,
    mask_bias: FloatTensor<B>,
    scale: f32,
) -> FloatTensor<B> {
    let x = tensor::<B, 4>(scores) * f64::from(scale) + tensor::<B, 4>(mask_bias);
    let max = x.clone().detach().max_dim(3);
    let exp = (x - max).exp();
    let sum = exp.clone().sum_dim(3);
    primitive(exp * (sum.ones_like() / sum))
}

pub fn attention_probs_dropout<B: Backend>(
    scores: FloatTensor<B>,
    mask_bias: FloatTensor<B>,
    scale: f32,
    keep: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let probs = attention_probs::<B>(scores, mask_bias, scale);
    let dropped = B::float_mul(probs.clone(), keep);
    (probs, dropped)
}

/// d scores = scale · p ⊙ (g − Σ_keys g ⊙ p), with g the gradient of `probs` (through `keep`).
pub fn attention_probs_backward<B: Backend>(
    probs: FloatTensor<B>,
    keep: Option<FloatTensor<B>>,
    grad: FloatTensor<B>,
    scale: f32,
) -> FloatTensor<B> {
    let probs = tensor::<B, 4>(probs);
    let mut grad = tensor::<B, 4>(grad);
    if let Some(keep) = keep {
        grad = grad * tensor::<B, 4>(keep);
    }
    let dot = (grad.clone() * probs.clone()).sum_dim(3);
    primitive(probs * (grad - dot) * f64::from(scale))
}

pub fn add_layer_norm_forward<B: Backend>(
    x: FloatTensor<B>,
    residual: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f32,
) -> LayerNormForward<B> {
    let x = tensor::<B, 2>(x) + tensor::<B, 2>(residual);
    let centered = x.clone() - x.mean_dim(1);
    let variance = (centered.clone() * centered.clone()).mean_dim(1);
    let inv_std = (variance + f64::from(eps)).powf_scalar(-0.5);
    let normalized = centered * inv_std.clone();
    let output = normalized.clone() * tensor::<B, 1>(gamma).unsqueeze::<2>()
        + tensor::<B, 1>(beta).unsqueeze::<2>();
    LayerNormForward {
        output: primitive(output),
        normalized: primitive(normalized),
        inv_std: primitive(inv_std),
    }
}

/// With g = grad ⊙ gamma and n the normalized input:
/// d input = inv_std · (g − mean(g) − n · mean(g ⊙ n)), d gamma = Σ_rows grad ⊙ n,
/// d beta = Σ_rows grad.
pub fn add_layer_norm_backward<B: Backend>(
    grad: FloatTensor<B>,
    normalized: FloatTensor<B>,
    inv_std: FloatTensor<B>,
    gamma: FloatTensor<B>,
) -> LayerNormGrads<B> {
    let grad = tensor::<B, 2>(grad);
    let normalized = tensor::<B, 2>(normalized);
    let g = grad.clone() * tensor::<B, 1>(gamma).unsqueeze::<2>();
    let mean_g = g.clone().mean_dim(1);
    let mean_gn = (g.clone() * normalized.clone()).mean_dim(1);
    let input = (g - mean_g - normalized.clone() * mean_gn) * tensor::<B, 2>(inv_std);
    let gamma_grad: Tensor<B, 1> = (grad.clone() * normalized).sum_dim(0).squeeze_dim(0);
    let beta_grad: Tensor<B, 1> = grad.sum_dim(0).squeeze_dim(0);
    LayerNormGrads {
        input: primitive(input),
        gamma: primitive(gamma_grad),
        beta: primitive(beta_grad),
    }
}
