//! `image.metadata`: format, dimensions, orientation and selected EXIF as a JSON item.
//! Reads headers only: no pixels are decoded.

use std::io::Cursor;

use image::ImageDecoder;
use serde::Deserialize;

use super::json_item;
use crate::image::decode::probe;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Payload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

/// The EXIF fields reported, by the name they get in the JSON.
const EXIF_FIELDS: [(exif::Tag, &str); 8] = [
    (exif::Tag::Make, "make"),
    (exif::Tag::Model, "model"),
    (exif::Tag::DateTimeOriginal, "date_time_original"),
    (exif::Tag::ExposureTime, "exposure_time"),
    (exif::Tag::FNumber, "f_number"),
    (exif::Tag::PhotographicSensitivity, "iso"),
    (exif::Tag::FocalLength, "focal_length"),
    (exif::Tag::LensModel, "lens_model"),
];

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "image.metadata",
        "Format, stored and displayed dimensions, EXIF orientation and selected EXIF fields, as JSON (headers only).",
        &[],
        |_: Params| Ok::<_, BuildError>(Metadata),
    )
}

pub struct Metadata;

#[async_trait::async_trait]
impl Function for Metadata {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let name = item.describe();
        let Payload::Bytes(bytes) = item.payload.clone() else {
            return Err(FunctionError::permanent(format!(
                "{name}: image.metadata reads encoded bytes, got a {} payload",
                item.payload.kind()
            )));
        };
        let header = probe(&bytes, &ctx.limits, &name)?;
        let mut decoder = image::ImageReader::with_format(Cursor::new(&bytes[..]), header.format)
            .into_decoder()
            .map_err(|e| FunctionError::permanent(format!("{name}: {e}")))?;
        let orientation = decoder.orientation().ok();
        let has_alpha = decoder.color_type().has_alpha();
        let turned = matches!(
            orientation,
            Some(
                image::metadata::Orientation::Rotate90
                    | image::metadata::Orientation::Rotate270
                    | image::metadata::Orientation::Rotate90FlipH
                    | image::metadata::Orientation::Rotate270FlipH
            )
        );
        let mut exif_json = serde_json::Map::new();
        if let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(&bytes[..])) {
            for (tag, key) in EXIF_FIELDS {
                if let Some(field) = exif.get_field(tag, exif::In::PRIMARY) {
                    let text = field.display_value().with_unit(&exif).to_string();
                    exif_json.insert(key.into(), serde_json::Value::String(text.trim_matches('"').to_string()));
                }
            }
        }
        let (display_w, display_h) = if turned { (header.height, header.width) } else { (header.width, header.height) };
        let value = serde_json::json!({
            "format": format!("{:?}", header.format).to_lowercase(),
            "width": display_w,
            "height": display_h,
            "stored_width": header.width,
            "stored_height": header.height,
            "orientation": orientation.map(|o| format!("{o:?}")),
            "has_alpha": has_alpha,
            "bytes": bytes.len(),
            "exif": exif_json,
        });
        Ok(vec![json_item(item, value)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::run;
    use crate::image::test_images::{jpeg_with_orientation, photo};
    use crate::Payload;

    #[tokio::test]
    async fn reports_displayed_dimensions_and_orientation() {
        let out =
            run("image.metadata", "{}", Payload::Bytes(jpeg_with_orientation(&photo(60, 40), 6).into())).await.unwrap();
        let Payload::Json(v) = &out[0].payload else { panic!() };
        assert_eq!(
            (v["format"].as_str(), v["width"].as_u64(), v["height"].as_u64()),
            (Some("jpeg"), Some(40), Some(60))
        );
        assert_eq!(v["stored_width"], 60);
        assert_eq!(v["orientation"], "Rotate90");
        let err = run("image.metadata", "{}", Payload::Bytes(b"GIF87a".to_vec().into())).await.unwrap_err();
        assert!(!err.is_retryable());
    }
}
