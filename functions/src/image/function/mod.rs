//! The image functions, one per file. Each takes encoded bytes or decoded pixels
//! (`Payload::Image`, what [`resize`] and [`watermark`] pass on, so a chain of image
//! steps decodes once and encodes once) and runs its pixel work on the CPU pool.

pub mod convert;
pub mod metadata;
pub mod placeholder;
pub mod resize;
pub mod resize_and_watermark;
pub mod watermark;

use std::sync::Arc;

use image::DynamicImage;

use super::decode::{decode_covering, Decoded};
use crate::{FunctionError, Item, Limits, Payload};

/// The item's image, decoded (bytes) or as passed on (pixels). `cover`: see
/// [`decode_covering`].
pub(crate) fn input(payload: Payload, limits: &Limits, name: &str, cover: u32) -> Result<Decoded, FunctionError> {
    match payload {
        Payload::Bytes(bytes) => decode_covering(&bytes, limits, name, cover),
        Payload::Image(image) => Ok(Decoded {
            width: image.width(),
            height: image.height(),
            image: Arc::try_unwrap(image).unwrap_or_else(|shared| (*shared).clone()),
        }),
        other => Err(FunctionError::permanent(format!("{name}: expected an image, got a {} payload", other.kind()))),
    }
}

/// An item carrying pixels to the next step.
pub(crate) fn image_item(item: &Item, image: DynamicImage) -> Item {
    let mut meta = item.meta.clone();
    meta.content_type = None;
    meta.format_ext = None;
    Item::new(Payload::Image(Arc::new(image)), meta)
}

/// An item carrying a JSON result (metadata, placeholder…).
pub(crate) fn json_item(item: Item, value: serde_json::Value) -> Item {
    let mut meta = item.meta;
    meta.content_type = Some("application/json".into());
    meta.format_ext = Some("json".into());
    Item::new(Payload::Json(value), meta)
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use crate::{Context, Function, FunctionError, Item, Metadata, Params, Payload, Registry, Stores};

    pub fn build(name: &str, params: &str) -> Arc<dyn Function> {
        Registry::builtin().build(name, Params::parse(params).unwrap()).unwrap_or_else(|e| panic!("{e}")).function
    }

    pub async fn run(name: &str, params: &str, payload: Payload) -> Result<Vec<Item>, FunctionError> {
        let item = Item::new(payload, Metadata::for_object("memory://t", "in/p.jpg"));
        build(name, params).invoke(item, &Context::standalone(Stores::new())).await
    }

    pub fn pixels(item: &Item) -> image::DynamicImage {
        match &item.payload {
            Payload::Image(i) => (**i).clone(),
            Payload::Bytes(b) => image::load_from_memory(b).unwrap(),
            other => panic!("no image in a {} payload", other.kind()),
        }
    }
}
