//! qpeft: quantized parameter-efficient fine-tuning of transformer encoders, built on Burn.
//!
//! The pipeline runs data → model → quantization → reconstruction → adapters → training →
//! evaluation. This crate holds all of it as a library; the `qpeft` binary is a thin CLI
//! over it. Linear weights are `[out, in]` (Hugging Face layout) everywhere except inside
//! Burn's `Linear`, which stores `[in, out]`; [`model::weights`] is the one place that converts.

pub mod adapters;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod files;
pub mod model;
pub mod names;
pub mod plot;
pub mod quant;
pub mod recipe;
pub mod reconstruct;
pub mod seed;
pub mod train;

pub use error::{Error, Result};
