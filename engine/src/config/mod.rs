//! Pipeline files: parsing, validation and the typed [`Pipeline`] the engine runs.
//!
//! * [`diagnostics`], [`document`], [`units`]: positions, TOML values, durations and
//!   sizes — what every section's parser (triggers' included) builds on;
//! * [`pipeline`]: the typed pipeline; [`steps`]: `[[step]]` tables;
//! * [`loader`]: files → pipelines, with every error at once.

pub mod diagnostics;
pub mod document;
mod loader;
pub mod pipeline;
mod steps;
pub mod units;

pub use diagnostics::{Diagnostic, Diagnostics, Reporter};
pub(crate) use loader::valid_name;
pub use loader::{load_file, load_paths, parse};
pub use pipeline::{Limits, Pipeline, Retry, Step};
