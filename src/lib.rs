//! qpeft: quantized parameter-efficient fine-tuning of transformer encoders, built on Burn.
//!
//! Modules form layers, and each imports only from the layers below it (checked by
//! `tests/repository.rs`), from the bottom:
//! 1. [`error`], [`files`], [`names`], [`seed`], [`kernels`], [`device`], [`plot`]: shared
//!    utilities and the backend's fused operations;
//! 2. [`quant`], then [`reconstruct`]: the numerics, pure functions on faer matrices;
//! 3. [`formats`]: safetensors, the packed-weight and adapter checkpoint formats;
//! 4. [`layers`], then [`model`]: Burn layers and the encoders built from them;
//! 5. [`data`], then [`eval`], [`adapters`] and [`calibration`]: tokenized GLUE data,
//!    metrics, adapter surgery and export, and the calibration that drives the encoder;
//! 6. [`train`], then [`recipe`], then [`pipeline`]: the trainer, the run configuration, and
//!    the pipelines that turn a spec into files and reports.
//!
//! The `qpeft` binary is a thin CLI over the library. Linear weights are `[out, in]` (Hugging
//! Face layout) everywhere except inside Burn's `Linear`, which stores `[in, out]`;
//! [`model::weights`] is the one place that converts.

pub mod adapters;
pub mod calibration;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod files;
pub mod formats;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod names;
pub mod pipeline;
pub mod plot;
pub mod quant;
pub mod recipe;
pub mod reconstruct;
pub mod seed;
pub mod train;

pub use error::{Error, Result};
