//! Evaluation: GLUE metrics and scores, and GLUE-submission prediction files.

pub mod dev;
pub mod metrics;
pub mod predict;
