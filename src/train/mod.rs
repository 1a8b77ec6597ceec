//! Training: AdamW with global clipping and schedules ([`optim`]), the loop with evaluation
//! and checkpoints ([`trainer`], [`checkpoint`]) and the run report ([`report`]).

pub mod bench;
pub mod checkpoint;
pub mod optim;
pub mod report;
pub mod setup;
pub mod step;
pub mod trace;
pub mod trainer;
