//! On-disk formats, below the model, from the bottom: safetensors reading and writing
//! ([`safetensors`]), the packed quantized-weight format ([`packed`]), the adapter checkpoint
//! format ([`adapters`]) and a checkpoint with its metadata validated, from which each linear's
//! weight is decoded ([`checkpoint`]). docs/formats.md describes every file.

pub mod adapters;
pub mod checkpoint;
pub mod packed;
pub mod safetensors;
