//! Pipelines: what a command does, from a typed spec to files and reports, above every other
//! layer. [`quantize`] and [`init`] quantize a model and build init checkpoints (with the cache
//! training runs share), both calibrating through [`calibrate`]; [`run`] builds a training
//! run's model from its recipe.

pub mod calibrate;
pub mod init;
pub mod quantize;
pub mod run;
