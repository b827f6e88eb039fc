//! Kafka outputs (cargo feature `kafka`, on in the `weir` binary): [`RecordProducer`],
//! an idempotent producer whose sends complete only when the broker has the record,
//! and the `kafka.produce` function built on it. Off by default, so a crate that
//! only writes functions does not build librdkafka.

pub mod produce;
mod producer;

pub use producer::{Delivered, LogToTracing, Outgoing, RecordProducer, RESERVED};
