//! Your own trigger, in your own binary: register it next to the built-ins and use the
//! whole `weir` command line with it.
//!
//! ```sh
//! cargo run --example custom_trigger -- validate engine/examples/custom_trigger/sequence.toml
//! cargo run --example custom_trigger -- run engine/examples/custom_trigger/sequence.toml
//! ```
//!
//! The trigger is `sequence.rs`: one file, and the one line below.

mod sequence;

use std::process::ExitCode;

use weir_engine::trigger::Triggers;
use weir_functions::Registry;

fn main() -> ExitCode {
    let mut triggers = Triggers::builtin();
    triggers.register::<sequence::SequenceKind>();
    weir_engine::cli::main_with(Registry::builtin(), triggers)
}
