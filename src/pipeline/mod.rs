//! Pipelines: what a command does, from a typed spec to files and reports, above every other
//! layer. [`run`] builds a training run's model from its recipe.

pub mod run;
