//! JPEG through libjpeg-turbo's code (the `mozjpeg` crate builds it from source with
//! the C compiler; with `nasm` installed the build adds its SIMD kernels, about twice
//! as fast). Two things the pure-Rust decoder cannot do:
//!
//! * **shrink-on-load**: the inverse DCT can output the image at n/8 of its size, so a
//!   24-megapixel photo whose largest variant is 1600 px is decoded straight to the
//!   smallest n/8 scale that still covers 1600 px — less colour conversion,
//!   upsampling, memory and resampling afterwards;
//! * a fast baseline encoder (libjpeg-turbo's, not mozjpeg's slow trellis defaults).
//!
//! Without `nasm` the decoder loses little (its time is entropy decoding, scalar
//! either way: 40.5 against 39.3 ms a photo on the corpus) but libjpeg's scalar
//! encoder is 4.7× slower than its SIMD one (24 against 5.1 ms for the three
//! variants). Such a build encodes with `jpeg-encoder` instead, pure Rust with AVX2
//! kernels chosen at run time (12.9 ms): same quality scale, same 4:2:0, baseline.

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg::Marker;

use super::scratch;
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
    // Held until the decoder is finished with; dropped on every return path.
    let _scratch = needs_whole_image_coefficients(bytes).then(|| scratch::reserve(coefficient_bytes(&decoder)));
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

/// Whether libjpeg must buffer every coefficient of the image before it can output a
/// row: progressive JPEGs, and sequential ones whose first scan lacks a component (its
/// `has_multiple_scans`). Walks the marker segments up to the first scan, so an EXIF
/// thumbnail (a whole JPEG inside APP1) is skipped rather than mistaken for a scan.
pub fn needs_whole_image_coefficients(bytes: &[u8]) -> bool {
    let (mut at, mut components, mut progressive) = (2, 0usize, false);
    while let Some(&[0xff, marker]) = bytes.get(at..at + 2) {
        if marker == 0xff || marker == 0x01 || (0xd0..=0xd7).contains(&marker) {
            at += if marker == 0xff { 1 } else { 2 }; // fill byte, or a marker without a segment
            continue;
        }
        let Some(&[hi, lo]) = bytes.get(at + 2..at + 4) else { return false };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        let Some(segment) = bytes.get(at + 4..at + 2 + len.max(2)) else { return false };
        match marker {
            0xc0..=0xcf if !matches!(marker, 0xc4 | 0xc8 | 0xcc) => {
                progressive = matches!(marker, 0xc2 | 0xc6 | 0xca | 0xce);
                components = segment.get(5).copied().unwrap_or(0) as usize;
            }
            0xda => return progressive || segment.first().is_some_and(|&n| (n as usize) < components),
            _ => {}
        }
        at += 2 + len;
    }
    false
}

/// The whole-image coefficient buffer libjpeg allocates (`jdcoefct.c`): every block
/// of every component, padded to whole MCUs, 64 coefficients of 2 bytes each.
fn coefficient_bytes<R>(decoder: &mozjpeg::Decompress<R>) -> u64 {
    let round_up = |n: u32, m: i32| (n as u64).div_ceil(m.max(1) as u64) * m.max(1) as u64;
    decoder
        .components()
        .iter()
        .map(|c| round_up(c.width_in_blocks, c.h_samp_factor) * round_up(c.height_in_blocks, c.v_samp_factor) * 128)
        .sum()
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
    if SIMD {
        guarded("output", "encode", || encode_libjpeg(image, quality, app1.as_deref()))?
            .map_err(|e| FunctionError::permanent(format!("encoding {w}×{h} JPEG: {e}")))
    } else {
        guarded("output", "encode", || encode_rust(image, quality, app1.as_deref()))?
            .map_err(|e| FunctionError::permanent(format!("encoding {w}×{h} JPEG: {e}")))
    }
}

fn encode_libjpeg(image: &RgbImage, quality: u8, app1: Option<&[u8]>) -> std::io::Result<Vec<u8>> {
    let (w, h) = image.dimensions();
    let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    compress.set_fastest_defaults();
    compress.set_quality(quality as f32);
    compress.set_size(w as usize, h as usize);
    let mut started = compress.start_compress(Vec::with_capacity((w * h / 8) as usize))?;
    if let Some(app1) = app1 {
        started.write_marker(Marker::APP(1), app1);
    }
    started.write_scanlines(image.as_raw())?;
    started.finish()
}

/// The encoder of a build without libjpeg's SIMD kernels (see the module documentation).
pub fn encode_rust(image: &RgbImage, quality: u8, app1: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let (w, h) = image.dimensions();
    let (Ok(width), Ok(height)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err("over the 65535 px a JPEG side can have".into());
    };
    let mut out = Vec::with_capacity((w * h / 8) as usize);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    if let Some(app1) = app1 {
        encoder.add_app_segment(1, app1).map_err(|e| e.to_string())?;
    }
    encoder.encode(image.as_raw(), width, height, jpeg_encoder::ColorType::Rgb).map_err(|e| e.to_string())?;
    Ok(out)
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

    fn progressive_jpeg(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        compress.set_size(width as usize, height as usize);
        compress.set_progressive_mode();
        let mut started = compress.start_compress(&mut out).unwrap();
        started.write_scanlines(photo(width, height).as_raw()).unwrap();
        started.finish().unwrap();
        out
    }

    #[test]
    fn progressive_jpegs_are_told_from_baseline_ones_by_their_markers() {
        let baseline = jpeg(&photo(64, 48), 90);
        assert!(!needs_whole_image_coefficients(&baseline));
        let progressive = progressive_jpeg(64, 48);
        assert!(needs_whole_image_coefficients(&progressive));
        // A progressive JPEG as the EXIF thumbnail of a baseline one is not a scan of it.
        let mut with_thumbnail = baseline[..2].to_vec();
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&progressive);
        with_thumbnail.extend_from_slice(&[0xff, 0xe1]);
        with_thumbnail.extend_from_slice(&(app1.len() as u16 + 2).to_be_bytes());
        with_thumbnail.extend_from_slice(&app1);
        with_thumbnail.extend_from_slice(&baseline[2..]);
        assert!(!needs_whole_image_coefficients(&with_thumbnail));
        assert!(decode_scaled(&with_thumbnail, 64, "t.jpg").is_ok());
        // Cut-off or garbage headers are simply not progressive (the decoder reports them).
        for cut in [0, 1, 3, 5, 20] {
            needs_whole_image_coefficients(&progressive[..cut]);
        }
        assert!(!needs_whole_image_coefficients(&[0xff, 0xd8, 0xff, 0xc2, 0, 0]));
    }

    #[test]
    fn the_coefficient_buffer_of_a_progressive_photo_is_counted_at_full_size() {
        let progressive = progressive_jpeg(1600, 1200);
        let decoder = mozjpeg::Decompress::new_mem(&progressive).unwrap();
        // 4:2:0: a full luma plane and two quarter chroma planes, 2 bytes a coefficient.
        assert_eq!(coefficient_bytes(&decoder), 1600 * 1200 * 2 * 3 / 2);
    }

    /// The encoder of builds without nasm: CI builds with nasm, so it is tested here.
    #[test]
    fn the_pure_rust_encoder_keeps_size_quality_and_exif() {
        let source = photo(400, 300);
        let exif = b"Exif\0\0II*\0\x08\0\0\0\0\0".to_vec();
        let bytes = encode_rust(&source, 80, Some(&exif)).unwrap();
        assert!(bytes.windows(6).any(|w| w == b"Exif\0\0"), "EXIF block kept");
        let back = image::load_from_memory(&bytes).unwrap().into_rgb8();
        assert_eq!(back.dimensions(), (400, 300));
        let libjpeg = image::load_from_memory(&encode_libjpeg(&source, 80, None).unwrap()).unwrap().into_rgb8();
        let mean_error = |a: &RgbImage| {
            a.as_raw().iter().zip(source.as_raw()).map(|(x, y)| x.abs_diff(*y) as f64).sum::<f64>()
                / source.as_raw().len() as f64
        };
        let (rust, c) = (mean_error(&back), mean_error(&libjpeg));
        assert!(rust < 2.0 && rust < c * 1.5, "mean error {rust:.2} (libjpeg's {c:.2})");
        let size_ratio = bytes.len() as f64 / encode_libjpeg(&source, 80, None).unwrap().len() as f64;
        assert!((0.7..1.4).contains(&size_ratio), "size {size_ratio:.2} of libjpeg's");
        assert!(encode_rust(&RgbImage::new(70_000, 1), 80, None).is_err(), "wider than JPEG allows");
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
