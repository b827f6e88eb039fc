//! Pixels to bytes.

use image::{ImageEncoder, RgbImage};
use serde::Deserialize;

use crate::FunctionError;

/// Output formats. WebP is lossless: the `image` crate has no lossy WebP encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Jpeg,
    Png,
    Webp,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
        }
    }
}

/// Encodes any image: JPEG flattens alpha onto `background`, PNG and WebP keep it.
pub fn encode_image(
    image: image::DynamicImage,
    format: Format,
    quality: u8,
    background: [u8; 3],
    exif: Option<&[u8]>,
) -> Result<Vec<u8>, FunctionError> {
    match format {
        Format::Jpeg => super::jpeg::encode_with_exif(&super::decode::flatten(image, background), quality, exif),
        _ if image.color().has_alpha() => {
            let rgba = image.into_rgba8();
            let (w, h) = rgba.dimensions();
            let mut out = Vec::new();
            let result = if format == Format::Png {
                image::codecs::png::PngEncoder::new(&mut out).write_image(
                    rgba.as_raw(),
                    w,
                    h,
                    image::ExtendedColorType::Rgba8,
                )
            } else {
                image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(
                    rgba.as_raw(),
                    w,
                    h,
                    image::ExtendedColorType::Rgba8,
                )
            };
            result.map_err(|e| FunctionError::permanent(format!("encoding {w}×{h} {format:?}: {e}")))?;
            Ok(out)
        }
        _ => encode(&image.into_rgb8(), format, quality),
    }
}

/// Encodes 8-bit RGB. `quality` (1–100) applies to JPEG.
pub fn encode(image: &RgbImage, format: Format, quality: u8) -> Result<Vec<u8>, FunctionError> {
    let (w, h) = image.dimensions();
    let mut out = Vec::with_capacity((w * h / 4) as usize);
    let result = match format {
        Format::Jpeg => return super::jpeg::encode(image, quality),
        Format::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
            image.as_raw(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        ),
        Format::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(
            image.as_raw(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        ),
    };
    result.map_err(|e| FunctionError::permanent(format!("encoding {w}×{h} {format:?}: {e}")))?;
    Ok(out)
}
