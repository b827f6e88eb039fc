//! The image decode entry under limits: `image.resize` (upscaling to 640 wide, 4
//! megapixels at most) on any bytes answers with outputs or an error, never an abort
//! or an allocation past the limit.
#![no_main]

use std::sync::{Arc, OnceLock};

use weir_functions::{Context, Function, Item, Metadata, Params, Payload, Registry, Stores};

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    static SETUP: OnceLock<(Arc<dyn Function>, tokio::runtime::Runtime)> = OnceLock::new();
    let (function, runtime) = SETUP.get_or_init(|| {
        let params = Params::parse("{ width = 640, upscale = true }").unwrap();
        let function = Registry::builtin().build("image.resize", params).unwrap().function;
        (function, tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap())
    });
    let mut ctx = Context::standalone(Stores::new());
    ctx.limits.max_pixels = 4_000_000;
    let item = Item::new(Payload::Bytes(bytes.to_vec().into()), Metadata::for_object("memory://fuzz", "in/x.jpg"));
    let _ = runtime.block_on(function.invoke(item, &ctx));
});
