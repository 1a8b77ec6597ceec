//! Adapters on a loaded model: the surgery that puts QPEFT layers into the model's target
//! slots from an init checkpoint ([`surgery`]) and the export of a trained classifier for
//! Hugging Face tools ([`export`]).

pub mod export;
pub mod surgery;
