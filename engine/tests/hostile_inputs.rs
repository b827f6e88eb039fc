//! Property tests of every parser an attacker can feed (the stable-toolchain stand-in
//! for fuzzing): notification bodies, pipeline files, key templates and images under
//! limits. Each takes whatever proptest generates — random bytes, and valid inputs
//! with bytes flipped, inserted and cut — and must answer with a value or an error,
//! never a panic or an abort. `PROPTEST_CASES=100000 cargo test --test hostile_inputs`
//! runs a longer campaign.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use weir_engine::trigger::{notification, Triggers};
use weir_functions::template::KeyTemplate;
use weir_functions::{Context, Item, Metadata, Payload, Registry, Stores};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// A valid input with some bytes flipped, some inserted and some cut.
fn mutated(seed: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..12);
    edits.prop_map(move |edits| {
        let mut bytes = seed.to_vec();
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                bytes.push(byte);
                continue;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.truncate(i.max(1));
                }
            }
        }
        bytes
    })
}

fn seed(bytes: Vec<u8>) -> &'static [u8] {
    Box::leak(bytes.into_boxed_slice())
}

fn notification_seed() -> &'static [u8] {
    static SEED: OnceLock<&'static [u8]> = OnceLock::new();
    SEED.get_or_init(|| {
        seed(
            serde_json::json!({"Type": "Notification", "Message": serde_json::json!({"Records": [{
                "eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "eventTime": "2026-11-24T10:00:00.000Z",
                "s3": {"bucket": {"name": "photos"}, "object": {"key": "inbox/a+b%20c.jpg", "size": 12, "eTag": "e"}}}]})
                .to_string()})
            .to_string()
            .into_bytes(),
        )
    })
}

fn pipeline_seed() -> &'static [u8] {
    static SEED: OnceLock<&'static [u8]> = OnceLock::new();
    SEED.get_or_init(|| seed(std::fs::read(repo().join("pipelines/thumbnails.toml")).unwrap()))
}

fn image_seed(format: image::ImageFormat) -> &'static [u8] {
    let img = image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([(x * 5) as u8, (y * 7) as u8, ((x + y) * 3) as u8]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), format).unwrap();
    seed(out)
}

fn jpeg_seed() -> &'static [u8] {
    static SEED: OnceLock<&'static [u8]> = OnceLock::new();
    SEED.get_or_init(|| image_seed(image::ImageFormat::Jpeg))
}

fn png_seed() -> &'static [u8] {
    static SEED: OnceLock<&'static [u8]> = OnceLock::new();
    SEED.get_or_init(|| image_seed(image::ImageFormat::Png))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

/// `image.resize` upscaling to 640 wide, under a 4-megapixel limit.
fn resize(bytes: Vec<u8>) -> Result<Vec<Item>, weir_functions::FunctionError> {
    static FUNCTION: OnceLock<std::sync::Arc<dyn weir_functions::Function>> = OnceLock::new();
    let function = FUNCTION.get_or_init(|| {
        let params = weir_functions::Params::parse("{ width = 640, upscale = true }").unwrap();
        Registry::builtin().build("image.resize", params).unwrap().function
    });
    let mut ctx = Context::standalone(Stores::new());
    ctx.limits.max_pixels = 4_000_000;
    let item = Item::new(Payload::Bytes(bytes.into()), Metadata::for_object("memory://fuzz", "in/x.jpg"));
    runtime().block_on(function.invoke(item, &ctx))
}

proptest! {
    #[test]
    fn notification_bodies_never_panic(body in prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), mutated(notification_seed())]) {
        let _ = notification::parse(&body);
    }

    #[test]
    fn pipeline_files_never_panic_and_errors_have_positions(text in mutated(pipeline_seed())) {
        let text = String::from_utf8_lossy(&text);
        let path = Path::new("fuzzed.toml");
        if let Err(diagnostics) = weir_engine::config::parse(path, &text, &Registry::builtin(), &Triggers::builtin()) {
            for line in diagnostics.to_string().lines().filter(|l| !l.starts_with(' ')) {
                prop_assert!(line.starts_with("fuzzed.toml:"), "{line}");
            }
        }
    }

    #[test]
    fn key_templates_never_render_an_unsafe_key(
        template in "[a-z{}./_ -]{0,24}(\\{(key|name|stem|ext|attr\\.[a-z]{1,6})\\})?[a-z./]{0,8}",
        key in "\\PC{1,40}",
    ) {
        if let Ok(template) = KeyTemplate::parse(&template) {
            let item = Item::new(Payload::Empty, Metadata::for_object("memory://fuzz", key));
            if let Ok(rendered) = template.render(&item, &Context::standalone(Stores::new())) {
                prop_assert!(weir_functions::store::check_key(&rendered).is_ok(), "{rendered:?}");
            }
        }
    }

    #[test]
    fn images_under_limits_never_abort(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        mutated(jpeg_seed()),
        mutated(png_seed()),
    ]) {
        let _ = resize(bytes);
    }
}
