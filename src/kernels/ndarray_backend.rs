//! The CPU backend (`burn-ndarray`, f32) runs the fused operations with [`super::cpu`]'s
//! kernels. A tensor that is not f32 (which this backend does not make for the model) takes
//! the composition instead.

use burn::tensor::TensorMetadata;
use burn::tensor::ops::FloatTensor;
use burn_ndarray::{NdArray, NdArrayTensor};
use ndarray::{ArcArray, CowArray, IxDyn};

use super::cpu::{self, AttentionShape};
use super::{Backend, LayerNormForward, LayerNormGrads, composed};

type Cpu = NdArray<f32>;

/// Whether every tensor holds f32 elements (the kernels' type).
fn all_f32(tensors: &[&NdArrayTensor]) -> bool {
    tensors.iter().all(|x| matches!(x, NdArrayTensor::F32(_)))
}

/// The elements of an f32 tensor in row-major order (copied only when not contiguous).
fn values(x: &NdArrayTensor) -> CowArray<'_, f32, IxDyn> {
    match x {
        NdArrayTensor::F32(storage) => {
            let view = storage.view();
            if view.is_standard_layout() {
                CowArray::from(view)
            } else {
                CowArray::from(view.as_standard_layout().into_owned())
            }
        }
        other => unreachable!("checked by all_f32, got {:?}", other.dtype()),
    }
}

fn slice<'a>(x: &'a CowArray<'_, f32, IxDyn>) -> &'a [f32] {
    x.as_slice()
        .expect("as_standard_layout yields a contiguous row-major array")
}

fn from_vec(values: Vec<f32>, shape: &[usize]) -> NdArrayTensor {
    NdArrayTensor::from(
        ArcArray::from_shape_vec(IxDyn(shape), values)
            .expect("the kernels return one value per element of the shape"),
    )
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

impl Backend for Cpu {
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x]) {
            return composed::gelu_erf::<Self>(x);
        }
        let v = values(&x);
        from_vec(cpu::gelu_erf(slice(&v)), v.shape())
    }

    fn gelu_erf_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if !all_f32(&[&x, &grad]) {
            return composed::gelu_erf_backward::<Self>(x, grad);
        }
        let (v, g) = (values(&x), values(&grad));
        from_vec(cpu::gelu_erf_backward(slice(&v), slice(&g)), v.shape())
    }

    fn attention_probs(
        scores: FloatTensor<Self>,
        mask_bias: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&scores, &mask_bias]) {
            return composed::attention_probs::<Self>(scores, mask_bias, scale);
        }
        let (s, m) = (values(&scores), values(&mask_bias));
        let shape = attention_shape(s.shape(), m.shape());
        let (probs, _) = cpu::attention_probs(slice(&s), slice(&m), shape, scale, None);
        from_vec(probs, s.shape())
    }

    fn attention_probs_dropout(
        scores: FloatTensor<Self>,
        mask_bias: FloatTensor<Self>,
        scale: f32,
        keep: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32(&[&scores, &mask_bias, &keep]) {
            return composed::attention_probs_dropout::<Self>(scores, mask_bias, scale, keep);
        }
        let (s, m, k) = (values(&scores), values(&mask_bias), values(&keep));
        let shape = attention_shape(s.shape(), m.shape());
        let (probs, dropped) =
            cpu::attention_probs(slice(&s), slice(&m), shape, scale, Some(slice(&k)));
        let dropped = dropped.expect("the kernel returns probs ⊙ keep when given keep");
        (from_vec(probs, s.shape()), from_vec(dropped, s.shape()))
    }

    fn attention_probs_backward(
        probs: FloatTensor<Self>,
        keep: Option<FloatTensor<Self>>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&probs, &grad]) || keep.as_ref().is_some_and(|k| !all_f32(&[k])) {
            return composed::attention_probs_backward::<Self>(probs, keep, grad, scale);
        }
        let (p, g) = (values(&probs), values(&grad));
        let k = keep.as_ref().map(values);
        let keys = *p
            .shape()
            .last()
            .expect("attention probabilities have rank 4");
        let out =
            cpu::attention_probs_backward(slice(&p), k.as_ref().map(slice), slice(&g), keys, scale);
        from_vec(out, p.shape())
    }

    fn add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&x, &residual, &gamma, &beta]) {
            return composed::add_layer_norm_forward::<Self>(x, residual, gamma, beta, eps).output;
        }
        let (xv, r, g, b) = (values(&x), values(&residual), values(&gamma), values(&beta));
        let rows = cpu::add_layer_norm(slice(&xv), slice(&r), slice(&g), slice(&b), eps, false);
        from_vec(rows.output, xv.shape())
    }

    fn add_layer_norm_forward(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> LayerNormForward<Self> {
        if !all_f32(&[&x, &residual, &gamma, &beta]) {
            return composed::add_layer_norm_forward::<Self>(x, residual, gamma, beta, eps);
        }
        let (xv, r, g, b) = (values(&x), values(&residual), values(&gamma), values(&beta));
        let shape = xv.shape();
        let rows = cpu::add_layer_norm(slice(&xv), slice(&r), slice(&g), slice(&b), eps, true);
        let (normalized, inv_std) = rows.stats.expect("asked for the statistics");
        LayerNormForward {
            output: from_vec(rows.output, shape),
            normalized: from_vec(normalized, shape),
            inv_std: from_vec(inv_std, &[shape[0], 1]),
        }
    }

    fn add_layer_norm_backward(
        grad: FloatTensor<Self>,
        normalized: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
    ) -> LayerNormGrads<Self> {
        if !all_f32(&[&grad, &normalized, &inv_std, &gamma]) {
            return composed::add_layer_norm_backward::<Self>(grad, normalized, inv_std, gamma);
        }
        let (dy, n, s, g) = (
            values(&grad),
            values(&normalized),
            values(&inv_std),
            values(&gamma),
        );
        let (input, gamma_grad, beta_grad) =
            cpu::add_layer_norm_backward(slice(&dy), slice(&n), slice(&s), slice(&g));
        LayerNormGrads {
            input: from_vec(input, dy.shape()),
            gamma: from_vec(gamma_grad, g.shape()),
            beta: from_vec(beta_grad, g.shape()),
        }
    }
}
