//! Evaluation: GLUE metrics and scores, the majority-class baseline, GLUE-submission prediction
//! files, and zero-shot sentence similarity.

pub mod baseline;
pub mod dev;
pub mod metrics;
pub mod predict;
pub mod similarity;
