//! Quantization: grids, bit packing and the layer-wise PTQ solvers, as pure functions on
//! faer matrices (no Burn). Weights are `[out, in]`; Hessians `[in, in]`.

pub mod bench;
pub mod codebook;
pub mod coreq;
pub mod gptq;
pub mod grid;
pub mod hessian;
pub mod layer;
pub mod pack;
pub mod qronos;
pub mod solve;
pub mod spec;
pub mod stats;
