//! Bytes to pixels, refusing what should not be decoded before paying for it.
//!
//! Order matters: the format comes from the content (not the file name), the
//! dimensions from the header, and only when `width × height` is within
//! `max_pixels` are pixels allocated. A 900-megapixel PNG of a few hundred KB is
//! refused after reading a few dozen bytes.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::{FunctionError, Limits};

/// Formats weir decodes.
pub const SUPPORTED: [ImageFormat; 4] = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Gif, ImageFormat::WebP];

/// What the header says, before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// Recognises the format by content and reads the dimensions, checking limits.
/// `name` identifies the input in error messages.
pub fn probe(bytes: &[u8], limits: &Limits, name: &str) -> Result<Header, FunctionError> {
    if bytes.is_empty() {
        return Err(FunctionError::permanent(format!("{name}: empty file (0 bytes), not an image")));
    }
    if bytes.len() as u64 > limits.max_input_bytes {
        return Err(FunctionError::permanent(format!(
            "{name}: {} bytes, over max_input_bytes = {}",
            bytes.len(),
            limits.max_input_bytes
        )));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        FunctionError::permanent(format!(
            "{name}: not a supported image (content is not JPEG, PNG, GIF or WebP; starts with {:?})",
            String::from_utf8_lossy(&bytes[..bytes.len().min(12)])
        ))
    })?;
    if !SUPPORTED.contains(&format) {
        return Err(FunctionError::permanent(format!("{name}: {format:?} images are not supported")));
    }
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| FunctionError::permanent(format!("{name}: corrupt {format:?} header: {e}")))?;
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(FunctionError::permanent(format!(
            "{name}: {width}×{height} = {pixels} pixels, over max_pixels = {}",
            limits.max_pixels
        )));
    }
    if width == 0 || height == 0 {
        return Err(FunctionError::permanent(format!("{name}: image has no pixels ({width}×{height})")));
    }
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // Decoders happily return grey for missing scan data; a cut-off upload must
        // not become a half-grey thumbnail.
        return Err(FunctionError::permanent(format!(
            "{name}: truncated JPEG (no end-of-image marker after the last scan)"
        )));
    }
    Ok(Header { format, width, height })
}

/// Whether an end-of-image marker (FF D9) follows the start of the last scan (FF DA).
/// Inside entropy-coded data every FF byte is stuffed (FF 00) or a restart marker, so
/// FF D9 there means the real end.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xff, 0xda]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xff, 0xd9]),
        None => false,
    }
}

/// Decodes an image (the first frame of an animation) and applies its EXIF
/// orientation, so what comes out is what a viewer displays.
pub fn decode(bytes: &[u8], limits: &Limits, name: &str) -> Result<DynamicImage, FunctionError> {
    decode_covering(bytes, limits, name, u32::MAX).map(|d| d.image)
}

/// A decoded image that may be smaller than the original (shrink-on-load).
pub struct Decoded {
    pub image: DynamicImage,
    /// The full size, as displayed (after EXIF orientation): sizes of variants are
    /// computed from this, so they do not depend on the decode scale.
    pub width: u32,
    pub height: u32,
}

/// Like [`decode`], but a JPEG may be decoded at a reduced scale (n/8) as long as its
/// long edge still covers `cover` pixels: the cheapest decode that loses nothing for
/// variants up to `cover` px.
pub fn decode_covering(bytes: &[u8], limits: &Limits, name: &str, cover: u32) -> Result<Decoded, FunctionError> {
    let header = probe(bytes, limits, name)?;
    let (mut image, orientation) = if header.format == ImageFormat::Jpeg {
        super::jpeg::decode_scaled(bytes, cover, name)?
    } else {
        decode_with_image_crate(bytes, header, name)?
    };
    image.apply_orientation(orientation);
    let swapped = image.width() != image.height() && (image.width() > image.height()) != (header.width > header.height);
    let (width, height) = if swapped { (header.height, header.width) } else { (header.width, header.height) };
    Ok(Decoded { image, width, height })
}

fn decode_with_image_crate(
    bytes: &[u8],
    header: Header,
    name: &str,
) -> Result<(DynamicImage, image::metadata::Orientation), FunctionError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), header.format);
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(header.width);
    decoder_limits.max_image_height = Some(header.height);
    // Room for the widest pixel type (RGBA, 16-bit) plus decoder scratch space.
    decoder_limits.max_alloc = Some(header.width as u64 * header.height as u64 * 8 + (64 << 20));
    reader.limits(decoder_limits);
    let fail =
        |e: image::ImageError| FunctionError::permanent(format!("{name}: cannot decode {:?}: {e}", header.format));
    let mut decoder = reader.into_decoder().map_err(fail)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(fail)?;
    Ok((image, orientation))
}

/// 8-bit RGB, with any alpha composited over `background`.
pub fn flatten(image: DynamicImage, background: [u8; 3]) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as u32;
        for c in 0..3 {
            dst[c] = ((src[c] as u32 * a + background[c] as u32 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_images::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn formats_are_recognised_by_content() {
        let jpeg = jpeg(&photo(40, 30), 90);
        assert_eq!(probe(&jpeg, &limits(), "a.png").unwrap().format, ImageFormat::Jpeg);
        let png = png_rgba(&image::RgbaImage::new(3, 2));
        let h = probe(&png, &limits(), "b.jpg").unwrap();
        assert_eq!((h.format, h.width, h.height), (ImageFormat::Png, 3, 2));
    }

    #[test]
    fn hostile_inputs_are_permanent_errors_naming_the_input() {
        let good = jpeg(&photo(64, 48), 90);
        let mut bad_crc = png_rgba(&image::RgbaImage::new(8, 8));
        let ihdr_crc = 8 + 8 + 13; // signature, IHDR length+type, IHDR data
        bad_crc[ihdr_crc] ^= 0xff;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty.jpg", vec![]),
            ("page.jpg", b"<!DOCTYPE html><html><body>hi</body></html>".to_vec()),
            ("truncated.jpg", good[..good.len() / 2].to_vec()),
            ("header-only.jpg", good[..200].to_vec()),
            ("bad-crc.png", bad_crc),
        ];
        for (name, bytes) in cases {
            let Err(err) = decode(&bytes, &limits(), name) else { panic!("{name} decoded") };
            assert!(!err.is_retryable(), "{name}");
            assert!(err.message().starts_with(name), "{}", err.message());
            assert!(!err.message().contains('\n'), "one line: {}", err.message());
        }
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        // (The PNG bomb is in tests/hostile_inputs.rs, with a peak-RSS check.)
        let err = decode(&jpeg_claiming_65000(), &limits(), "huge.jpg").unwrap_err();
        assert!(err.message().contains("65000×65000"), "{}", err.message());
    }

    #[test]
    fn exif_orientation_is_applied() {
        let img = photo(60, 40);
        for orientation in 1..=8u16 {
            let decoded = decode(&jpeg_with_orientation(&img, orientation), &limits(), "o.jpg").unwrap();
            let expected = if orientation >= 5 { (40, 60) } else { (60, 40) };
            assert_eq!((decoded.width(), decoded.height()), expected, "orientation {orientation}");
        }
        // Orientation 3 is a half turn: the top-left pixel comes from the bottom-right.
        let turned = decode(&jpeg_with_orientation(&img, 3), &limits(), "o.jpg").unwrap().into_rgb8();
        let plain = decode(&jpeg_with_orientation(&img, 1), &limits(), "o.jpg").unwrap().into_rgb8();
        let (a, b) = (turned.get_pixel(0, 0), plain.get_pixel(59, 39));
        assert!(a.0.iter().zip(b.0).all(|(x, y)| x.abs_diff(y) < 12), "{a:?} vs {b:?}");
    }

    #[test]
    fn alpha_is_flattened_onto_the_background() {
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, image::Rgba([0, 0, 0, 128]));
        let flat = flatten(DynamicImage::ImageRgba8(rgba), [255, 0, 0]);
        assert_eq!(flat.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(flat.get_pixel(1, 0).0, [127, 0, 0]);
    }
}
