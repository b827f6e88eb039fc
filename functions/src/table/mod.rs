//! Table functions: CSV, JSON lines and Parquet, converted and split as streams.
//!
//! ```text
//! bytes ─▶ source (csv / json lines / parquet) ─▶ blocks of rows ─▶ rows (typed, in the CPU pool) ─▶ record batches ─▶ sink (parquet / csv / json, per partition) ─▶ objects
//! ```
//!
//! Arrow record batches are the currency between the two halves, so a new input or
//! output format is one side's concern only. Every stage runs on a blocking thread fed
//! by [`crate::stream`], or in the CPU pool, never on the async reactor. Rows are split
//! on one thread (where a CSV record ends depends on everything before it) and typed
//! in parallel, a block at a time ([`crate::ordered`]).

pub mod block;
pub mod convert;
pub mod csv;
pub mod rows;
pub mod schema;
pub mod sink;
pub mod source;
pub mod split;
