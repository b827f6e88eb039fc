//! Notification bodies as posted to the endpoint: any bytes parse to a value or an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    let _ = weir_engine::trigger::notification::parse(body);
});
