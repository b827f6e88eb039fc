//! The weir function contract and the built-in native functions.
//!
//! A *function* is built once per pipeline step from its TOML parameters and then
//! invoked many times, like a warm Lambda instance: expensive set-up (fonts,
//! encoders, lookup tables) belongs in the builder, not in [`Function::invoke`].
//!
//! ```text
//! Registry ──build(params)──▶ Arc<dyn Function> ──invoke(Item, &Context)──▶ Vec<Item> | FunctionError
//! ```
//!
//! * [`Item`] is what flows between steps: a payload (bytes, decoded image, JSON,
//!   or the collected items of a fan-in step) plus [`Metadata`] (source key, variant…).
//! * Returning several items fans out: each becomes its own invocation of the next step.
//! * [`FunctionError`] says whether a retry could help ([`ErrorKind::Retryable`]) or not.
//! * CPU-heavy work goes through [`cpu::run`], never on the async reactor.
//!
//! A function author depends on this crate only: no Kafka, no SQLite.

pub mod archive;
pub mod compress;
pub mod context;
pub mod cpu;
pub mod error;
pub mod flow;
pub mod function;
pub mod image;
pub mod item;
pub mod json;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod key_filter;
pub mod object;
pub mod ordered;
pub mod registry;
pub mod store;
pub mod stream;
pub mod table;
pub mod template;
pub mod trigger_event;
pub mod units;

pub use context::{Context, Limits};
pub use error::{BuildError, ErrorKind, FunctionError, PartialBatch};
pub use function::{Emitter, Function, FunctionSpec, Output, Param, Params};
pub use item::{Item, Metadata, Payload, SourceAttributes};
pub use key_filter::KeyFilter;
pub use registry::Registry;
pub use store::{Bucket, Stores};
pub use trigger_event::{LazyEvent, TriggerEvent};
