//! Layers below the model: the frozen-Q + trainable L·R linear ([`QLoraLinear`]), the slot an
//! encoder layer keeps each target linear in ([`TargetLinear`]) and seeded dropout
//! ([`dropout`]). The model holds these; [`crate::adapters`] fills the slots.

pub mod dropout;
pub mod qlora_linear;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

pub use qlora_linear::{AdapterSpec, DropoutPlacement, QLoraLinear};

/// A target linear of an encoder layer: the pretrained dense layer, or its QPEFT replacement.
#[derive(Module, Debug)]
pub enum TargetLinear<B: Backend> {
    Dense(Linear<B>),
    Adapted(QLoraLinear<B>),
}

impl<B: Backend> TargetLinear<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            TargetLinear::Dense(linear) => linear.forward(x),
            TargetLinear::Adapted(adapted) => adapted.forward(x),
        }
    }

    /// This slot with its adapter merged into one dense weight ([`QLoraLinear::into_merged`]).
    pub fn merged(self) -> Self {
        match self {
            TargetLinear::Adapted(adapted) => TargetLinear::Dense(adapted.into_merged()),
            dense => dense,
        }
    }

    pub fn dense(&self) -> Option<&Linear<B>> {
        match self {
            TargetLinear::Dense(linear) => Some(linear),
            TargetLinear::Adapted(_) => None,
        }
    }

    pub fn dense_mut(&mut self) -> Option<&mut Linear<B>> {
        match self {
            TargetLinear::Dense(linear) => Some(linear),
            TargetLinear::Adapted(_) => None,
        }
    }

    pub fn adapted(&self) -> Option<&QLoraLinear<B>> {
        match self {
            TargetLinear::Dense(_) => None,
            TargetLinear::Adapted(adapted) => Some(adapted),
        }
    }
}
