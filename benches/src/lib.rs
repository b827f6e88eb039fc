//! Benchmarks for weir: criterion benches (`cargo bench -p weir-benches`) and the
//! side-by-side comparison with the peer implementations (`benches/compare.sh`).
//!
//! This library only holds the generated inputs the benches share, so no photo
//! with a restrictive licence is ever committed.

use image::{ImageEncoder, RgbImage};

/// A photo-like JPEG (gradients, shapes and fine texture, so the entropy coder has
/// real work), `width` × `height`, quality 90.
pub fn photo_jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let texture = ((x * 7 + y * 13) % 17) as f32 * 2.0;
        let r = fx * 200.0 + texture;
        let g = fy * 220.0 + texture * 0.5;
        let b = ((fx * 23.0).sin() * 0.5 + 0.5) * 180.0 + ((fy * 31.0).cos() * 20.0);
        image::Rgb([r.min(255.0) as u8, g.min(255.0) as u8, b.clamp(0.0, 255.0) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgb8)
        .expect("encoding to memory cannot fail");
    out
}
