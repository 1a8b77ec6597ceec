//! GLUE data: reading the standard `glue_data` files, verifying them against the committed
//! manifest, and turning examples into tokenized, length-grouped batches.

pub mod batch;
pub mod glue;
pub mod hub;
pub mod manifest;
pub mod tsv;

pub use glue::{Dataset, Example, Label, LabelColumn, LabelKind, Split, Task, glue_dir, load};
