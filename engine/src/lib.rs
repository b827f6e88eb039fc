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
//! * [`event`] is the contract between triggers and the executor: an event's work,
//!   its acknowledgement, its dead letter.
//! * [`trigger`] turns buckets, schedules and Kafka topics into events, one folder per
//!   kind behind [`trigger::TriggerSpec`], listed in [`trigger::Triggers::builtin`];
//!   [`clock`] is the wall clock schedules follow, injectable for tests.
//! * [`executor`] runs events through the steps within concurrency limits, retries,
//!   dead-letters, and acknowledges only finished events. It knows no trigger.
//! * [`redrive`] runs dead letters again (`weir dlq redrive`, the status page).
//! * [`replay`] pushes history (a bucket's objects, a schedule's past ticks) through a
//!   pipeline: `weir replay`, resumable from its checkpoint in the ledger.
//! * [`state`] is the SQLite ledger: processed objects, runs, replay checkpoints, and
//!   the lock that keeps one writer per state directory.
//! * [`http`] serves health, readiness, [`metrics`], the [`status`] page and pushed
//!   events (bucket notifications) within limits; [`auth`] says who may push; [`health`] checks every
//!   source and output bucket at start-up.
//! * [`Engine`] wires them together; [`cli`] is the `weir` binary.
//!
//! To run your own functions, build a [`weir_functions::Registry`] with them and hand
//! it to [`Engine::new`] (see `examples/custom_function.rs`); your own triggers go in
//! a [`trigger::Triggers`] handed to [`Engine::triggers`] or [`cli::main_with`] (see
//! `examples/custom_trigger/`).

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
mod engine;
pub mod error;
pub mod event;
pub mod executor;
pub mod health;
pub mod http;
pub mod metrics;
pub mod redrive;
pub mod replay;
pub mod state;
pub mod status;
pub mod trigger;

pub use engine::{Engine, RunningEngine, RunningPipeline, Serve};
pub use weir_functions;
