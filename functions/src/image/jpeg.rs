//! JPEG through libjpeg-turbo's code (the `mozjpeg` crate builds it from source with
//! the C compiler; with `nasm` installed the build adds its SIMD kernels, about twice
//! as fast). Two things the pure-Rust decoder cannot do:
//!
//! * **shrink-on-load**: the inverse DCT can output the image at n/8 of its size, so a
//!   24-megapixel photo whose largest variant is 1600 px is decoded straight to the
//!   smallest n/8 scale that still covers 1600 px — less colour conversion,
//!   upsampling, memory and resampling afterwards;
//! * a fast baseline encoder (libjpeg-turbo's, not mozjpeg's slow trellis defaults).

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg::Marker;

use crate::FunctionError;

/// Whether libjpeg-turbo's SIMD kernels were built in (they need `nasm` at build
/// time on x86; see `functions/build.rs`).
pub const SIMD: bool = !cfg!(weir_jpeg_without_simd);

/// The smallest n/8 (n = 1..=8) at which the long edge still covers `cover` pixels.
pub fn scale_eighths(long_edge: u32, cover: u32) -> u8 {
    let target = cover.min(long_edge) as u64;
    (1..=8u8).find(|&n| (long_edge as u64 * n as u64).div_ceil(8) >= target).unwrap_or(8)
}

/// Decodes at the smallest n/8 scale whose long edge covers `cover` pixels, converted
/// to RGB or grey (CMYK, including Adobe's inverted CMYK, becomes RGB), with the EXIF
/// orientation returned for the caller to apply.
pub fn decode_scaled(bytes: &[u8], cover: u32, name: &str) -> Result<(DynamicImage, Orientation), FunctionError> {
    guarded(name, "decode", || decode_unguarded(bytes, cover, name))?
}

/// libjpeg reports fatal errors by unwinding out of the C code (the `mozjpeg` crate's
/// error manager); catch that here and turn it into a permanent error naming the input.
fn guarded<T>(name: &str, what: &str, work: impl FnOnce() -> T) -> Result<T, FunctionError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg error".into());
        FunctionError::permanent(format!("{name}: cannot {what} JPEG: {message}"))
    })
}

fn decode_unguarded(bytes: &[u8], cover: u32, name: &str) -> Result<(DynamicImage, Orientation), FunctionError> {
    let fail = |e: std::io::Error| FunctionError::permanent(format!("{name}: cannot decode JPEG: {e}"));
    let mut decoder =
        mozjpeg::Decompress::with_markers(&[Marker::APP(1), Marker::APP(14)]).from_mem(bytes).map_err(fail)?;
    let mut orientation = Orientation::NoTransforms;
    let mut adobe = false;
    for marker in decoder.markers() {
        match marker.marker {
            Marker::APP(1) if marker.data.starts_with(b"Exif\0\0") => {
                orientation = Orientation::from_exif_chunk(&marker.data[6..]).unwrap_or(orientation);
            }
            Marker::APP(14) if marker.data.starts_with(b"Adobe") => adobe = true,
            _ => {}
        }
    }
    let (w, h) = decoder.size();
    decoder.scale(scale_eighths(w.max(h) as u32, cover));
    let image = match decoder.image().map_err(fail)? {
        mozjpeg::decompress::Format::RGB(mut started) => {
            let (w, h) = (started.width() as u32, started.height() as u32);
            let pixels: Vec<u8> = started.read_scanlines().map_err(fail)?;
            started.finish().map_err(fail)?;
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, pixels).ok_or_else(|| short(name))?)
        }
        mozjpeg::decompress::Format::Gray(mut started) => {
            let (w, h) = (started.width() as u32, started.height() as u32);
            let pixels: Vec<u8> = started.read_scanlines().map_err(fail)?;
            started.finish().map_err(fail)?;
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, pixels).ok_or_else(|| short(name))?)
        }
        mozjpeg::decompress::Format::CMYK(mut started) => {
            let (w, h) = (started.width() as u32, started.height() as u32);
            let cmyk: Vec<u8> = started.read_scanlines().map_err(fail)?;
            started.finish().map_err(fail)?;
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, cmyk_to_rgb(&cmyk, adobe)).ok_or_else(|| short(name))?)
        }
    };
    Ok((image, orientation))
}

fn short(name: &str) -> FunctionError {
    FunctionError::permanent(format!("{name}: JPEG decoder returned fewer pixels than its header promised"))
}

/// CMYK to RGB. Photoshop ("Adobe" marker) stores CMYK inverted (0 = full ink);
/// others store it plain. Getting this wrong gives a colour negative.
pub fn cmyk_to_rgb(cmyk: &[u8], adobe_inverted: bool) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let [c, m, y, k] = if adobe_inverted {
            [px[0], px[1], px[2], px[3]]
        } else {
            [255 - px[0], 255 - px[1], 255 - px[2], 255 - px[3]]
        };
        // Now 255 = no ink: channel = (1 - C)(1 - K).
        for v in [c, m, y] {
            rgb.push(((v as u32 * k as u32 + 127) / 255) as u8);
        }
    }
    rgb
}

/// Baseline JPEG, 4:2:0, libjpeg-turbo's fast path.
pub fn encode(image: &RgbImage, quality: u8) -> Result<Vec<u8>, FunctionError> {
    encode_with_exif(image, quality, None)
}

/// Like [`encode`], embedding an EXIF block (TIFF data, as `ImageDecoder::exif_metadata`
/// returns it) with its orientation reset to 1: the pixels are already upright.
pub fn encode_with_exif(image: &RgbImage, quality: u8, exif: Option<&[u8]>) -> Result<Vec<u8>, FunctionError> {
    let app1 = exif.filter(|e| e.len() < 65_000).map(|tiff| {
        let mut data = b"Exif\0\0".to_vec();
        data.extend_from_slice(tiff);
        reset_orientation(&mut data[6..]);
        data
    });
    let (w, h) = image.dimensions();
    let run = || -> std::io::Result<Vec<u8>> {
        let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        compress.set_fastest_defaults();
        compress.set_quality(quality as f32);
        compress.set_size(w as usize, h as usize);
        let mut started = compress.start_compress(Vec::with_capacity((w * h / 8) as usize))?;
        if let Some(app1) = &app1 {
            started.write_marker(Marker::APP(1), app1);
        }
        started.write_scanlines(image.as_raw())?;
        started.finish()
    };
    guarded("output", "encode", run)?.map_err(|e| FunctionError::permanent(format!("encoding {w}×{h} JPEG: {e}")))
}

/// Sets the orientation tag (0x0112) of IFD0 in TIFF-structured EXIF data to 1.
fn reset_orientation(tiff: &mut [u8]) {
    let big = tiff.starts_with(b"MM");
    let u16_at = |t: &[u8], i: usize| {
        t.get(i..i + 2).map(|b| if big { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) })
    };
    let u32_at = |t: &[u8], i: usize| {
        t.get(i..i + 4).map(|b| {
            if big {
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            } else {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
        })
    };
    let Some(ifd) = u32_at(tiff, 4).map(|o| o as usize) else { return };
    let Some(count) = u16_at(tiff, ifd) else { return };
    for entry in 0..count as usize {
        let at = ifd + 2 + entry * 12;
        if u16_at(tiff, at) == Some(0x0112) {
            let one = if big { [0, 1] } else { [1, 0] };
            if let Some(value) = tiff.get_mut(at + 8..at + 10) {
                value.copy_from_slice(&one);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_images::{jpeg, photo};

    #[test]
    fn picks_the_smallest_covering_scale() {
        assert_eq!(scale_eighths(5472, 1600), 3); // 2052 px
        assert_eq!(scale_eighths(3200, 1600), 4); // exactly half
        assert_eq!(scale_eighths(2560, 1600), 5); // 1600
        assert_eq!(scale_eighths(1000, 1600), 8); // never below full size when smaller
        assert_eq!(scale_eighths(1, 1600), 1, "a 1 px image stays 1 px");
    }

    #[test]
    fn decodes_scaled_and_encodes() {
        let source = photo(1600, 1200);
        let (img, orientation) = decode_scaled(&jpeg(&source, 90), 400, "p.jpg").unwrap();
        assert_eq!((img.width(), img.height()), (400, 300));
        assert_eq!(orientation, Orientation::NoTransforms);
        let bytes = encode(&img.into_rgb8(), 80).unwrap();
        let back = image::load_from_memory(&bytes).unwrap();
        assert_eq!((back.width(), back.height()), (400, 300));
    }

    #[test]
    fn cmyk_inversion_follows_the_adobe_marker() {
        // Plain CMYK: no ink is white. Adobe-inverted: 255 means no ink.
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 0], false), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255], true), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[0, 255, 255, 255], true), [0, 255, 255], "full cyan ink → cyan");
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 255], false), [0, 0, 0], "full black ink → black");
    }

    #[test]
    fn corrupt_data_is_an_error_not_a_crash() {
        let mut bytes = jpeg(&photo(64, 64), 90);
        let sof = bytes.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
        bytes[sof + 9] = 7; // seven components: nonsense
        assert!(decode_scaled(&bytes, 64, "x.jpg").is_err());
    }
}
