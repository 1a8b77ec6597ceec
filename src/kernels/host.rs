//! The CPU backends (burn-ndarray and burn-flex, f32) run the fused operations with
//! [`super::cpu`]'s kernels, through [`HostTensors`]: reading a tensor's elements as a
//! row-major slice and building one from a vector. A tensor that is not f32 (which these
//! backends do not make for the model; the f64 precision tests do) takes the composition.

use std::borrow::Cow;

use burn::tensor::backend::Backend as BurnBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorMetadata};
use burn_flex::{Flex, FlexTensor};
use burn_ndarray::{NdArray, NdArrayTensor};
use ndarray::{ArcArray, IxDyn};

use super::cpu::{self, AttentionShape};
use super::{Backend, LayerNormForward, LayerNormGrads, composed};

/// A backend whose float tensors live in host memory as f32 elements.
pub trait HostTensors: BurnBackend {
    /// The elements in row-major order, borrowed when the tensor is contiguous.
    fn f32_values(x: &FloatTensor<Self>) -> Cow<'_, [f32]>;

    /// A tensor of `shape` holding `values` in row-major order.
    fn from_f32(values: Vec<f32>, shape: &[usize]) -> FloatTensor<Self>;
}

impl HostTensors for NdArray<f32> {
    fn f32_values(x: &NdArrayTensor) -> Cow<'_, [f32]> {
        match x {
            NdArrayTensor::F32(storage) => {
                let view = storage.view();
                match view.to_slice() {
                    Some(values) => Cow::Borrowed(values),
                    None => Cow::Owned(view.iter().copied().collect()),
                }
            }
            other => unreachable!("checked by all_f32, got {:?}", other.dtype()),
        }
    }

    fn from_f32(values: Vec<f32>, shape: &[usize]) -> NdArrayTensor {
        NdArrayTensor::from(
            ArcArray::from_shape_vec(IxDyn(shape), values)
                .expect("the kernels return one value per element of the shape"),
        )
    }
}

impl HostTensors for Flex {
    fn f32_values(x: &FlexTensor) -> Cow<'_, [f32]> {
        match x.as_slice::<f32>() {
            Some(values) => Cow::Borrowed(values),
            None => Cow::Owned(x.to_contiguous().storage::<f32>().to_vec()),
        }
    }

    fn from_f32(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
    }
}

/// Whether every tensor holds f32 elements (the kernels' type).
fn all_f32<B: BurnBackend>(tensors: &[&FloatTensor<B>]) -> bool {
    tensors.iter().all(|x| x.dtype() == DType::F32)
}

fn dims<B: BurnBackend>(x: &FloatTensor<B>) -> Vec<usize> {
    x.shape().to_vec()
}

/// `[b, heads, queries, keys]` scores with a `[b, 1, 1, keys]` mask: the kernel's layout.
fn attention_shape(scores: &[usize], mask: &[usize]) -> AttentionShape {
    assert!(
        scores.len() == 4 && mask == [scores[0], 1, 1, scores[3]],
        "attention scores {scores:?} need a mask bias of shape [batch, 1, 1, keys], got {mask:?}"
    );
    AttentionShape {
        keys: scores[3],
        rows_per_batch: scores[1] * scores[2],
    }
}

impl<B: HostTensors> Backend for B {
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32::<B>(&[&x]) {
            return composed::gelu_erf::<Self>(x);
        }
        B::from_f32(cpu::gelu_erf(&B::f32_values(&x)), &dims::<B>(&x))
    }

    fn gelu_erf_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32::<B>(&[&x, &grad]) {
            return composed::gelu_erf_backward::<Self>(x, grad);
        }
        let out = cpu::gelu_erf_backward(&B::f32_values(&x), &B::f32_values(&grad));
        B::from_f32(out, &dims::<B>(&x))
    }

    fn attention_probs(
        scores: FloatTensor<Self>,
        mask_bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        if !all_f32::<B>(&[&scores, &mask_bias]) {
            return composed::attention_probs::<Self>(scores, mask_bias, scale);
        }
        let shape = dims::<B>(&scores);
        let layout = attention_shape(&shape, &dims::<B>(&mask_bias));
        let (s, m) = (B::f32_values(&scores), B::f32_values(&mask_bias));
        let (probs, _) = cpu::attention_probs(&s, &m, layout, scale, None);
        B::from_f32(probs, &shape)
    }

    fn attention_probs_dropout(
        scores: FloatTensor<Self>,
        mask_bias: FloatTensor<Self>,
        scale: f32,
        keep: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32::<B>(&[&scores, &mask_bias, &keep]) {
            return composed::attention_probs_dropout::<Self>(scores, mask_bias, scale, keep);
        }
        let shape = dims::<B>(&scores);
        let layout = attention_shape(&shape, &dims::<B>(&mask_bias));
        let (s, m) = (B::f32_values(&scores), B::f32_values(&mask_bias));
        let k = B::f32_values(&keep);
        let (probs, dropped) = cpu::attention_probs(&s, &m, layout, scale, Some(&k));
        let dropped = dropped.expect("the kernel returns probs ⊙ keep when given keep");
        (B::from_f32(probs, &shape), B::from_f32(dropped, &shape))
    }

    fn attention_probs_backward(
        probs: FloatTensor<Self>,
        keep: Option<FloatTensor<Self>>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        if !all_f32::<B>(&[&probs, &grad]) || keep.as_ref().is_some_and(|k| !all_f32::<B>(&[k])) {
            return composed::attention_probs_backward::<Self>(probs, keep, grad, scale);
        }
        let shape = dims::<B>(&probs);
        let keys = *shape.last().expect("attention probabilities have rank 4");
        let k = keep.as_ref().map(B::f32_values);
        let (p, g) = (B::f32_values(&probs), B::f32_values(&grad));
        let out = cpu::attention_probs_backward(&p, k.as_deref(), &g, keys, scale);
        B::from_f32(out, &shape)
    }

    fn add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        if !all_f32::<B>(&[&x, &residual, &gamma, &beta]) {
            return composed::add_layer_norm_forward::<Self>(x, residual, gamma, beta, eps).output;
        }
        let (xv, r) = (B::f32_values(&x), B::f32_values(&residual));
        let (g, b) = (B::f32_values(&gamma), B::f32_values(&beta));
        let rows = cpu::add_layer_norm(&xv, &r, &g, &b, eps, false);
        B::from_f32(rows.output, &dims::<B>(&x))
    }

    fn add_layer_norm_forward(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> LayerNormForward<Self> {
        if !all_f32::<B>(&[&x, &residual, &gamma, &beta]) {
            return composed::add_layer_norm_forward::<Self>(x, residual, gamma, beta, eps);
        }
        let shape = dims::<B>(&x);
        let (xv, r) = (B::f32_values(&x), B::f32_values(&residual));
        let (g, b) = (B::f32_values(&gamma), B::f32_values(&beta));
        let rows = cpu::add_layer_norm(&xv, &r, &g, &b, eps, true);
        let (normalized, inv_std) = rows.stats.expect("asked for the statistics");
        LayerNormForward {
            output: B::from_f32(rows.output, &shape),
            normalized: B::from_f32(normalized, &shape),
            inv_std: B::from_f32(inv_std, &[shape[0], 1]),
        }
    }

    fn add_layer_norm_backward(
        grad: FloatTensor<Self>,
        normalized: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
    ) -> LayerNormGrads<Self> {
        if !all_f32::<B>(&[&grad, &normalized, &inv_std, &gamma]) {
            return composed::add_layer_norm_backward::<Self>(grad, normalized, inv_std, gamma);
        }
        let (dy, n) = (B::f32_values(&grad), B::f32_values(&normalized));
        let (s, g) = (B::f32_values(&inv_std), B::f32_values(&gamma));
        let (input, gamma_grad, beta_grad) = cpu::add_layer_norm_backward(&dy, &n, &s, &g);
        let hidden = [g.len()];
        LayerNormGrads {
            input: B::from_f32(input, &dims::<B>(&grad)),
            gamma: B::from_f32(gamma_grad, &hidden),
            beta: B::from_f32(beta_grad, &hidden),
        }
    }
}
