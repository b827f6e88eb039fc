//! `image.placeholder`: a ThumbHash (a ~25-byte blurry preview with aspect ratio and
//! alpha) for lazy-loading pages, as JSON.

use base64::Engine;
use serde::Deserialize;

use super::{input, json_item};
use crate::{cpu, BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    kind: Kind,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Thumbhash,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "image.placeholder",
        "A ThumbHash placeholder (base64) plus the image's size, as JSON.",
        &[Param { name: "kind", kind: "\"thumbhash\"", default: Some("\"thumbhash\""), doc: "Placeholder algorithm." }],
        |p: Params| match p.kind {
            Kind::Thumbhash => Ok::<_, BuildError>(Placeholder),
        },
    )
}

pub struct Placeholder;

#[async_trait::async_trait]
impl Function for Placeholder {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let (name, limits, payload) = (item.describe(), ctx.limits, item.payload.clone());
        let value = cpu::run(move || {
            // ThumbHash works on at most 100×100; decode no larger than needed.
            let decoded = input(payload, &limits, &name, 100)?;
            let small = decoded.image.thumbnail(100, 100).into_rgba8();
            let hash = thumbhash::rgba_to_thumb_hash(small.width() as usize, small.height() as usize, small.as_raw());
            Ok(serde_json::json!({
                "thumbhash": base64::engine::general_purpose::STANDARD.encode(hash),
                "width": decoded.width,
                "height": decoded.height,
            }))
        })
        .await?;
        Ok(vec![json_item(item, value)])
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::super::testing::run;
    use crate::image::test_images::{jpeg, photo};
    use crate::Payload;

    #[tokio::test]
    async fn makes_a_thumbhash_that_decodes_to_the_right_aspect() {
        let out = run("image.placeholder", "{}", Payload::Bytes(jpeg(&photo(1200, 600), 90).into())).await.unwrap();
        let Payload::Json(v) = &out[0].payload else { panic!() };
        let hash = base64::engine::general_purpose::STANDARD.decode(v["thumbhash"].as_str().unwrap()).unwrap();
        assert!(hash.len() < 40);
        let ratio = thumbhash::thumb_hash_to_approximate_aspect_ratio(&hash).unwrap();
        assert!((ratio - 2.0).abs() < 0.3, "{ratio}");
        assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(1200), Some(600)));
    }
}
