//! The encoder's elementwise and row-wise operations as fused backend operations (Burn's
//! backend-extension pattern): exact GELU, attention probabilities (scale, additive mask,
//! softmax, dropout) and residual add + LayerNorm, each with a closed-form backward.
//!
//! [`Backend`] extends Burn's backend trait. Its default bodies ([`composed`]) are the Burn-op
//! compositions the model used before, so a backend without its own kernels (CUDA) computes
//! exactly what it did. The CPU backends (ndarray, flex) override them with one-pass,
//! row-parallel slice kernels ([`cpu`]); `burn_autodiff::Autodiff` records each as one node
//! whose backward is the backend's own backward operation, not the autodiff of the
//! composition.
//!
//! Shapes: GELU works on any shape; LayerNorm on `[rows, hidden]` with `gamma`/`beta` `[hidden]`;
//! attention on scores `[batch, heads, queries, keys]` with the mask bias `[batch, 1, 1, keys]`.
//! The tensor-level functions below reshape to those ranks.

mod autodiff;
pub mod composed;
pub mod cpu;
mod host;

use burn::nn::LayerNorm;
use burn::tensor::backend::Backend as BurnBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

/// The forward pass of LayerNorm kept for its backward.
#[derive(Debug, Clone)]
pub struct LayerNormForward<B: BurnBackend> {
    /// `LayerNorm(x + residual)`, `[rows, hidden]`.
    pub output: FloatTensor<B>,
    /// `(x + residual − mean) / std`, `[rows, hidden]`.
    pub normalized: FloatTensor<B>,
    /// `1 / √(variance + eps)` per row, `[rows, 1]`.
    pub inv_std: FloatTensor<B>,
}

/// Gradients of `LayerNorm(x + residual)`: `input` is the gradient of both `x` and `residual`.
#[derive(Debug, Clone)]
pub struct LayerNormGrads<B: BurnBackend> {
    pub input: FloatTensor<B>,
    pub gamma: FloatTensor<B>,
    pub beta: FloatTensor<B>,
}

/// A Burn backend with qpeft's fused encoder operations.
pub trait Backend: BurnBackend {
    /// `x·(1 + erf(x/√2))/2`.
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu_erf::<Self>(x)
    }

    /// `grad · (Φ(x) + x·φ(x))`, the exact derivative of [`Backend::gelu_erf`].
    fn gelu_erf_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu_erf_backward::<Self>(x, grad)
    }

    /// `softmax(scores·scale + mask_bias)` over the keys.
    fn attention_probs(
        scores: FloatTensor<Self>,
        mask_bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        composed::attention_probs::<Self>(scores, mask_bias, scale)
    }

    /// [`Backend::attention_probs`] and its product with the dropout mask `keep` (0 or
    /// `1/(1 − p)`): `(probs, probs · keep)`.
    fn attention_probs_dropout(
        scores: FloatTensor<Self>,
        mask_bias: FloatTensor<Self>,
        scale: f32,
        keep: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::attention_probs_dropout::<Self>(scores, mask_bias, scale, keep)
    }

    /// The gradient of the scores from that of `probs · keep` (`keep` absent: of `probs`).
    fn attention_probs_backward(
        probs: FloatTensor<Self>,
        keep: Option<FloatTensor<Self>>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        composed::attention_probs_backward::<Self>(probs, keep, grad, scale)
    }

    /// `LayerNorm(x + residual)·gamma + beta` over the last dimension.
    fn add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        Self::add_layer_norm_forward(x, residual, gamma, beta, eps).output
    }

    /// [`Backend::add_layer_norm`] with what its backward needs.
    fn add_layer_norm_forward(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> LayerNormForward<Self> {
        composed::add_layer_norm_forward::<Self>(x, residual, gamma, beta, eps)
    }

    /// The gradients of [`Backend::add_layer_norm`] from that of its output.
    fn add_layer_norm_backward(
        grad: FloatTensor<Self>,
        normalized: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
    ) -> LayerNormGrads<Self> {
        composed::add_layer_norm_backward::<Self>(grad, normalized, inv_std, gamma)
    }
}

/// An autodiff backend whose inner backend has the fused operations too (the validation pass
/// runs on the inner one).
pub trait AutodiffBackend:
    Backend + burn::tensor::backend::AutodiffBackend<InnerBackend: Backend>
{
}

impl<B> AutodiffBackend for B where
    B: Backend + burn::tensor::backend::AutodiffBackend<InnerBackend: Backend>
{
}

/// CUDA keeps the compositions (no kernels of its own yet).
#[cfg(feature = "cuda")]
impl Backend for burn_cuda::Cuda<f32, i32> {}

fn primitive<B: BurnBackend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

fn tensor<B: BurnBackend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// Exact (erf) GELU, as torch's `nn.GELU()` and Hugging Face's `"gelu"`.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    tensor(B::gelu_erf(primitive(x)))
}

/// Attention probabilities `softmax(scores·scale + mask_bias)`, times the dropout mask `keep`
/// when one is given. `scores [b, heads, queries, keys]`, `mask_bias [b, 1, 1, keys]`.
pub fn attention_probs<B: Backend>(
    scores: Tensor<B, 4>,
    mask_bias: Tensor<B, 4>,
    scale: f32,
    keep: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let (scores, mask_bias) = (primitive(scores), primitive(mask_bias));
    tensor(match keep {
        Some(keep) => B::attention_probs_dropout(scores, mask_bias, scale, primitive(keep)).1,
        None => B::attention_probs(scores, mask_bias, scale),
    })
}

/// `LayerNorm(x + residual)` with `norm`'s weight and bias, over the last dimension.
pub fn add_layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    residual: Tensor<B, D>,
    norm: &LayerNorm<B>,
    eps: f64,
) -> Tensor<B, D> {
    let shape = x.shape();
    let hidden = shape[D - 1];
    let rows = shape.num_elements() / hidden.max(1);
    let gamma = norm.gamma.val();
    let beta = match &norm.beta {
        Some(beta) => beta.val(),
        None => gamma.zeros_like(),
    };
    let output = B::add_layer_norm(
        primitive(x.reshape([rows, hidden])),
        primitive(residual.reshape([rows, hidden])),
        primitive(gamma),
        primitive(beta),
        eps as f32,
    );
    tensor::<B, 2>(output).reshape(shape)
}

#[cfg(test)]
mod tests;
