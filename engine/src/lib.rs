//! weir's engine: pipelines from TOML, triggers, the bounded executor, the state
//! ledger and the `weir` command line.
//!
//! ```text
//! trigger ──events──▶ bounded queue ──▶ executor (permits) ──▶ step graph ──▶ outputs
//!    ▲                                                               │
//!    └──────────────── ack (ledger, dead letter) ◀──────────────────┘
//! ```
//!
//! * [`config`] parses and validates pipeline files (`weir validate`).
//! * [`trigger`] turns buckets and schedules (and later Kafka) into [`trigger::Event`]s;
//!   [`clock`] is the wall clock schedules follow, injectable for tests.
//! * [`executor`] runs events through the steps within concurrency limits, retries,
//!   dead-letters, and acknowledges only finished events.
//! * [`replay`] pushes history (a bucket's objects, a schedule's past ticks) through a
//!   pipeline: `weir replay`, resumable from its checkpoint in the ledger.
//! * [`state`] is the SQLite ledger: processed objects, runs, replay checkpoints.
//! * [`Engine`] wires them together; [`cli`] is the `weir` binary.
//!
//! To run your own functions, build a [`weir_functions::Registry`] with them and hand
//! it to [`Engine::new`] (see `examples/custom_function.rs`).

pub mod cli;
pub mod clock;
pub mod config;
mod engine;
pub mod executor;
pub mod http;
pub mod replay;
pub mod state;
pub mod trigger;

pub use engine::{Engine, RunningEngine, RunningPipeline};
pub use weir_functions;
