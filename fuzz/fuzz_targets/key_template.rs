//! Output key templates and the keys they are fed: a rendered key is never unsafe
//! (`..`, absolute, hidden segments, control characters).
#![no_main]

use weir_functions::template::KeyTemplate;
use weir_functions::{Context, Item, Metadata, Payload, Stores};

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let (template, key) = text.split_once('\n').unwrap_or((&text, "in/x.jpg"));
    if key.is_empty() {
        return;
    }
    if let Ok(template) = KeyTemplate::parse(template) {
        let item = Item::new(Payload::Empty, Metadata::for_object("memory://fuzz", key));
        if let Ok(rendered) = template.render(&item, &Context::standalone(Stores::new())) {
            assert!(weir_functions::store::check_key(&rendered).is_ok(), "unsafe key rendered: {rendered:?}");
        }
    }
});
