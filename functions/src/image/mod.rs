//! Image functions.
//!
//! The stages are separate so every image function shares them, and a bench can time
//! each: [`decode`] (content sniffing, limits from the header before any pixel is
//! allocated, EXIF orientation), [`resize`] (SIMD resampling, never upscaling),
//! [`watermark`] (text rendered once per size into a cached alpha mask, blended over
//! its rectangle only) and [`encode`]. The functions themselves, one per file, are
//! in [`function`]; [`scratch`] bounds what decoders hold beyond their output.

pub mod decode;
pub mod encode;
pub mod function;
pub mod jpeg;
pub mod resize;
pub mod scratch;
pub mod watermark;

/// Parses `#rrggbb` or `#rgb`.
pub fn parse_color(text: &str) -> Option<[u8; 3]> {
    let hex = text.strip_prefix('#')?;
    let digit = |i: usize, len: usize| u8::from_str_radix(hex.get(i..i + len)?, 16).ok();
    match hex.len() {
        6 => Some([digit(0, 2)?, digit(2, 2)?, digit(4, 2)?]),
        3 => Some([digit(0, 1)? * 17, digit(1, 1)? * 17, digit(2, 1)? * 17]),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod test_images {
    //! Generated inputs for the image tests: no binary fixtures needed.

    use image::{ImageEncoder, RgbImage, RgbaImage};

    /// A photo-like image: smooth gradients and a few shapes.
    pub fn photo(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
            let circle = ((fx - 0.4).powi(2) + (fy - 0.5).powi(2)).sqrt() < 0.2;
            let r = (fx * 200.0) as u8 + if circle { 50 } else { 0 };
            let g = (fy * 220.0) as u8;
            let b = (((fx * 12.0).sin() * 0.5 + 0.5) * 180.0) as u8;
            image::Rgb([r, g, b])
        })
    }

    pub fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
            .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    /// A JPEG carrying an EXIF orientation tag.
    pub fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
        // Minimal little-endian TIFF: one IFD with one SHORT entry, tag 0x0112.
        let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&orientation.to_le_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
        encoder.set_exif_metadata(exif).unwrap();
        encoder.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8).unwrap();
        out
    }

    pub fn png_rgba(img: &RgbaImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgba8)
            .unwrap();
        out
    }

    /// A JPEG whose header claims 65000 × 65000 pixels (SOF0 patched in place).
    pub fn jpeg_claiming_65000() -> Vec<u8> {
        let mut bytes = jpeg(&photo(16, 16), 90);
        let sof = bytes.windows(2).position(|w| w == [0xff, 0xc0]).expect("baseline JPEG has SOF0");
        bytes[sof + 5..sof + 9].copy_from_slice(&[0xfd, 0xe8, 0xfd, 0xe8]);
        bytes
    }
}
