//! `image.convert`: encode to JPEG, PNG or WebP.

use std::io::Cursor;

use image::ImageDecoder;
use serde::Deserialize;

use super::input;
use crate::image::encode::{encode_image, Format};
use crate::{cpu, BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum MetadataPolicy {
    /// Drop EXIF (location, camera serial numbers…): the default for published images.
    #[default]
    Strip,
    /// Keep the source's EXIF in JPEG output, orientation reset since pixels are upright.
    Keep,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    format: Format,
    #[serde(default = "eighty")]
    quality: u8,
    #[serde(default = "white")]
    background: String,
    #[serde(default)]
    metadata: MetadataPolicy,
}

fn eighty() -> u8 {
    80
}
fn white() -> String {
    "#ffffff".into()
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "image.convert",
        "Encode an image (bytes or pixels from a previous step) as JPEG, PNG or WebP (lossless).",
        &[
            Param {
                name: "format",
                kind: "\"jpeg\" | \"png\" | \"webp\"",
                default: Some("\"jpeg\""),
                doc: "Output format.",
            },
            Param { name: "quality", kind: "integer 1-100", default: Some("80"), doc: "JPEG quality." },
            Param {
                name: "background",
                kind: "\"#rrggbb\"",
                default: Some("\"#ffffff\""),
                doc: "JPEG has no alpha: transparent pixels are flattened onto this.",
            },
            Param {
                name: "metadata",
                kind: "\"strip\" | \"keep\"",
                default: Some("\"strip\""),
                doc: "keep: copy the source's EXIF into JPEG output (orientation reset to 1).",
            },
        ],
        |p: Params| {
            if !(1..=100).contains(&p.quality) {
                return Err(BuildError::param("quality", "quality must be between 1 and 100"));
            }
            let background = crate::image::parse_color(&p.background)
                .ok_or_else(|| BuildError::param("background", format!("{:?} is not #rrggbb", p.background)))?;
            if p.metadata == MetadataPolicy::Keep && p.format != Format::Jpeg {
                return Err(BuildError::param("metadata", "metadata = \"keep\" is supported for JPEG output only"));
            }
            Ok(Convert { format: p.format, quality: p.quality, background, keep: p.metadata == MetadataPolicy::Keep })
        },
    )
}

#[derive(Clone, Copy)]
pub struct Convert {
    format: Format,
    quality: u8,
    background: [u8; 3],
    keep: bool,
}

/// The EXIF block of an encoded image, if it has one.
fn exif_of(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok()?.into_decoder().ok()?;
    decoder.exif_metadata().ok().flatten()
}

#[async_trait::async_trait]
impl Function for Convert {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let (name, limits, payload, this) = (item.describe(), ctx.limits, item.payload.clone(), *self);
        let bytes = cpu::run(move || {
            let exif = match (&payload, this.keep) {
                (Payload::Bytes(b), true) => exif_of(b),
                _ => None,
            };
            let image = input(payload, &limits, &name, u32::MAX)?.image;
            encode_image(image, this.format, this.quality, this.background, exif.as_deref())
                .map_err(|e| FunctionError::permanent(format!("{name}: {e}")))
        })
        .await?;
        let mut meta = item.meta;
        meta.content_type = Some(self.format.content_type().into());
        meta.format_ext = Some(self.format.extension().into());
        Ok(vec![Item::new(Payload::Bytes(bytes.into()), meta)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::run;
    use super::*;
    use crate::image::test_images::{jpeg_with_orientation, photo, png_rgba};

    #[tokio::test]
    async fn converts_keeping_alpha_where_the_format_can() {
        let rgba = image::RgbaImage::from_pixel(10, 10, image::Rgba([0, 0, 255, 0]));
        let out = run("image.convert", "{ format = \"png\" }", Payload::Bytes(png_rgba(&rgba).into())).await.unwrap();
        let Payload::Bytes(b) = &out[0].payload else { panic!() };
        assert_eq!(image::load_from_memory(b).unwrap().into_rgba8().get_pixel(0, 0)[3], 0);
        let out =
            run("image.convert", "{ background = \"#00ff00\" }", Payload::Bytes(png_rgba(&rgba).into())).await.unwrap();
        let Payload::Bytes(b) = &out[0].payload else { panic!() };
        let px = image::load_from_memory(b).unwrap().into_rgb8().get_pixel(5, 5).0;
        assert!(px[1] > 240 && px[0] < 15 && px[2] < 15, "flattened onto green: {px:?}");
        assert_eq!(out[0].meta.content_type.as_deref(), Some("image/jpeg"));
    }

    #[tokio::test]
    async fn keeps_exif_with_orientation_reset_or_strips_it() {
        let source = jpeg_with_orientation(&photo(60, 40), 6);
        let kept =
            run("image.convert", "{ metadata = \"keep\" }", Payload::Bytes(source.clone().into())).await.unwrap();
        let Payload::Bytes(b) = &kept[0].payload else { panic!() };
        let exif = exif_of(b).expect("EXIF kept");
        assert_eq!(
            image::metadata::Orientation::from_exif_chunk(&exif),
            Some(image::metadata::Orientation::NoTransforms)
        );
        let img = image::load_from_memory(b).unwrap();
        assert_eq!((img.width(), img.height()), (40, 60), "upright pixels, not rotated twice");
        let stripped = run("image.convert", "{}", Payload::Bytes(source.into())).await.unwrap();
        let Payload::Bytes(b) = &stripped[0].payload else { panic!() };
        assert!(exif_of(b).is_none());
    }
}
