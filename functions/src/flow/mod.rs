//! Functions that shape the flow of items rather than transform them.

pub mod discard;
