//! The QPEFT linear layer (docs/algorithms.md §12.1): a frozen base weight (the packed quantized
//! Q, or a dense weight for full-precision LoRA) plus trainable PEFT factors,
//! y = x·deq(Q)ᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ with s = α/r, so that s·B·A = L·R.
//!
//! Layouts: PEFT's `lora_A` = R is `[r, in]` and `lora_B` = L/s is `[out, r]`; inside Burn
//! (like Burn's own `Linear`) they are kept transposed, A as `[in, r]` and B as `[r, out]`, and
//! [`QLoraLinear::lora_a_peft`] / [`QLoraLinear::lora_b_peft`] convert back.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{Tensor, TensorData};

use super::dropout::Dropout;
use crate::error::{Error, Result};
use crate::formats::adapters::add_low_rank;
use crate::formats::packed::FrozenWeight;
use crate::formats::safetensors::transpose;

/// Where dropout applies (§12.2 "Choice (dropout)").
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum DropoutPlacement {
    /// On the whole adapter input (PEFT; recommended).
    #[default]
    Input,
    /// Only on the residual components `k..r` (SRR's pre-release code).
    Residual,
}

crate::named!(DropoutPlacement);

/// What a layer's adapter is, besides its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    pub rank: usize,
    /// s = α/r.
    pub scale: f64,
    /// The first `preserved` components are SRR's preserved block.
    pub preserved: usize,
    /// The singular value behind each component (empty when unknown).
    pub singular_values: Vec<f64>,
    pub dropout: f64,
    pub placement: DropoutPlacement,
}

/// A linear layer with a frozen base weight and trainable low-rank factors.
#[derive(Module, Debug)]
pub struct QLoraLinear<B: Backend> {
    /// deq(Q) as `[in, out]`: a constant, never a parameter, so autodiff never builds a
    /// weight-shaped gradient for it.
    base: Tensor<B, 2>,
    /// The base layer's bias; trainable only if the recipe says so (§12.1 "Choice (biases)").
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// `[in, r]`: PEFT's `lora_A` transposed.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[r, out]`: PEFT's `lora_B` transposed.
    pub lora_b: Param<Tensor<B, 2>>,
    dropout: Dropout,
    /// Ones on the preserved components (`[in, r]` broadcast row), used when dropout hits only
    /// the residual branch; `None` with [`DropoutPlacement::Input`].
    preserved_mask: Option<Tensor<B, 2>>,
    #[module(skip)]
    frozen: Arc<FrozenWeight>,
    #[module(skip)]
    spec: AdapterSpec,
}

impl<B: Backend> QLoraLinear<B> {
    /// Builds the layer from its frozen weight, bias `[out]` and PEFT factors `lora_A` `[r, in]`
    /// and `lora_B` `[out, r]` (row-major).
    pub fn new(
        frozen: FrozenWeight,
        bias: Option<Vec<f32>>,
        lora_a: &[f32],
        lora_b: &[f32],
        spec: AdapterSpec,
        device: &B::Device,
    ) -> Result<Self> {
        let (d_out, d_in) = frozen.shape();
        let r = spec.rank;
        if r == 0 || lora_a.len() != r * d_in || lora_b.len() != d_out * r {
            return Err(Error::InvalidData(format!(
                "adapter of rank {r} on a [{d_out}, {d_in}] layer needs lora_A [{r}, {d_in}] and lora_B [{d_out}, {r}], got {} and {} values",
                lora_a.len(),
                lora_b.len()
            )));
        }
        if spec.preserved > r {
            return Err(Error::InvalidData(format!(
                "{} preserved components exceed rank {r}",
                spec.preserved
            )));
        }
        let weight = frozen.dequantize()?;
        let base = Tensor::from_data(
            TensorData::new(transpose(&weight, d_out, d_in), [d_in, d_out]),
            device,
        );
        let bias = bias
            .map(|values| {
                if values.len() != d_out {
                    return Err(Error::InvalidData(format!(
                        "bias has {} values, the layer has {d_out} outputs",
                        values.len()
                    )));
                }
                Ok(Param::from_tensor(Tensor::from_data(
                    TensorData::new(values, [d_out]),
                    device,
                )))
            })
            .transpose()?;
        let param = |values: Vec<f32>, shape: [usize; 2]| {
            Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
        };
        let preserved_mask = (spec.placement == DropoutPlacement::Residual).then(|| {
            let ones: Vec<f32> = (0..r)
                .map(|i| if i < spec.preserved { 1.0 } else { 0.0 })
                .collect();
            Tensor::from_data(TensorData::new(ones, [1, r]), device)
        });
        Ok(QLoraLinear {
            base,
            bias,
            lora_a: param(transpose(lora_a, r, d_in), [d_in, r]),
            lora_b: param(transpose(lora_b, d_out, r), [r, d_out]),
            dropout: Dropout::new(spec.dropout),
            preserved_mask,
            frozen: Arc::new(frozen),
            spec,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // One [tokens, in] matrix product instead of one per batch row: the backends pack the
        // weight once, and the factors' gradients come out of one product each.
        let mut dims = x.dims();
        let d_in = dims[D - 1];
        let tokens = dims[..D - 1].iter().product();
        let y = self.forward_rows(x.reshape([tokens, d_in]));
        dims[D - 1] = y.dims()[1];
        y.reshape(dims)
    }

    fn forward_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let base = linear(
            x.clone(),
            self.base.clone(),
            self.bias.as_ref().map(Param::val),
        );
        let a = self.lora_a.val();
        let hidden = match &self.preserved_mask {
            None => linear(self.dropout.forward(x), a, None),
            Some(mask) => {
                // The preserved components see the clean input, the residual ones dropout.
                let residual = a.clone() * (mask.ones_like() - mask.clone());
                linear(x.clone(), a * mask.clone(), None)
                    + linear(self.dropout.forward(x), residual, None)
            }
        };
        base + linear(hidden, self.lora_b.val(), None) * self.spec.scale
    }

    /// The dense layer with weight deq(Q) + s·A·B (`[in, out]`) and the same bias: what the
    /// layer computes without dropout, in one product instead of three. For inference only:
    /// the factors are gone, so nothing can be trained or exported from it.
    pub fn into_merged(self) -> Linear<B> {
        let low_rank = self.lora_a.val().matmul(self.lora_b.val()) * self.spec.scale;
        Linear {
            weight: Param::from_tensor(self.base + low_rank),
            bias: self.bias,
        }
    }

    pub fn spec(&self) -> &AdapterSpec {
        &self.spec
    }

    pub fn frozen(&self) -> &FrozenWeight {
        &self.frozen
    }

    /// `[out, in]`.
    pub fn shape(&self) -> (usize, usize) {
        self.frozen.shape()
    }

    /// PEFT's `lora_A` = R, row-major `[r, in]`.
    pub fn lora_a_peft(&self) -> Result<Vec<f32>> {
        let [d_in, r] = self.lora_a.dims();
        Ok(transpose(&to_vec(self.lora_a.val())?, d_in, r))
    }

    /// PEFT's `lora_B` = L/s, row-major `[out, r]`.
    pub fn lora_b_peft(&self) -> Result<Vec<f32>> {
        let [r, d_out] = self.lora_b.dims();
        Ok(transpose(&to_vec(self.lora_b.val())?, r, d_out))
    }

    pub fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        self.bias.as_ref().map(|b| to_vec(b.val())).transpose()
    }

    /// The dense layer this one computes in evaluation: deq(Q) + s·B·A, row-major `[out, in]`.
    pub fn merged_weight(&self) -> Result<Vec<f32>> {
        let (d_out, d_in) = self.shape();
        let mut weight = self.frozen.dequantize()?;
        add_low_rank(
            &mut weight,
            &self.lora_b_peft()?,
            &self.lora_a_peft()?,
            (d_out, self.spec.rank, d_in),
            self.spec.scale,
        );
        Ok(weight)
    }
}

/// A float tensor's values on the host.
pub fn to_vec<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::Internal(format!("reading a tensor back: {e:?}")))
}
