//! Training: AdamW with global clipping and schedules ([`optim`]), the loop with evaluation
//! and checkpoints ([`trainer`], [`checkpoint`]), its pluggable metrics sink, progress,
//! interrupter and step observer ([`hooks`]) and the run report ([`report`]).

pub mod bench;
pub mod checkpoint;
pub mod hooks;
pub mod optim;
pub mod report;
pub mod step;
pub mod trace;
pub mod trainer;
