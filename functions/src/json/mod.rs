//! JSON functions: `json.transform` (a jq filter, by the `jaq` crates) and `json.split`.
//! Both read JSON lines as a stream, one value per line, so errors name their line.

pub mod lines;
pub mod split;
pub mod transform;
