//! Evaluation: GLUE metrics and scores, GLUE-submission prediction files, and zero-shot
//! sentence similarity.

pub mod dev;
pub mod metrics;
pub mod predict;
pub mod similarity;
