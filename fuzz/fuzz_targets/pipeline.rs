//! Pipeline files: any text loads or fails with errors that carry file:line:column.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use weir_engine::trigger::Triggers;
use weir_functions::Registry;

libfuzzer_sys::fuzz_target!(|text: &[u8]| {
    static BUILTINS: OnceLock<(Registry, Triggers)> = OnceLock::new();
    let (registry, triggers) = BUILTINS.get_or_init(|| (Registry::builtin(), Triggers::builtin()));
    let text = String::from_utf8_lossy(text);
    if let Err(diagnostics) = weir_engine::config::parse(Path::new("fuzzed.toml"), &text, registry, triggers) {
        for line in diagnostics.to_string().lines().filter(|l| !l.starts_with(' ')) {
            assert!(line.starts_with("fuzzed.toml:"), "an error without a position: {line}");
        }
    }
});
