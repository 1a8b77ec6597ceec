//! Quantization-error reconstruction (docs/algorithms.md §11): the initial Q + L·R of every target
//! linear, from the PTQ quantizers of [`crate::quant`] and calibration statistics, written as
//! the init checkpoint the trainer starts from. Numerics are pure functions on faer matrices.

pub mod init;
pub mod lowrank;
pub mod scaling;
pub mod solver;
