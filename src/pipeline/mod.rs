//! Pipelines: what a command does, from a typed spec to files and reports, above every other
//! layer. [`quantize`] and [`init`] quantize a model and build init checkpoints (with the cache
//! training runs share), both calibrating through [`calibrate`]; [`run`] trains a run from its
//! recipe, [`glue`] runs a GLUE suite of them, [`export`] writes a trained run for other
//! tools or re-quantizes it, [`infer`] scores, predicts and embeds without training, and
//! [`bench`] times a training step, an evaluation pass or a solver.

pub mod bench;
pub mod calibrate;
pub mod export;
pub mod glue;
pub mod infer;
pub mod init;
pub mod quantize;
pub mod run;
