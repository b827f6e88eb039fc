//! Fitting and resampling. SIMD convolution (fast_image_resize, Lanczos3), in the
//! image's own gamma space like every peer does.

use fast_image_resize as fr;
use image::RgbImage;

use crate::FunctionError;

/// The size of an image fitted inside `long_edge` × `long_edge`, keeping the aspect
/// ratio, never larger than the original and never zero on either side.
pub fn fit_inside(width: u32, height: u32, long_edge: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= long_edge {
        return (width, height);
    }
    let scale = |side: u32| (((side as u64 * long_edge as u64) + long as u64 / 2) / long as u64).max(1) as u32;
    if width >= height {
        (long_edge, scale(height))
    } else {
        (scale(width), long_edge)
    }
}

/// Resamples to exactly `width` × `height` (a copy when the size is unchanged).
pub fn resize(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage, FunctionError> {
    if (width, height) == src.dimensions() {
        return Ok(src.clone());
    }
    let mut dst = RgbImage::new(width, height);
    let options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3));
    fr::Resizer::new()
        .resize(src, &mut dst, &options)
        .map_err(|e| FunctionError::permanent(format!("resizing to {width}×{height}: {e}")))?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_inside_without_upscaling_or_zero_sides() {
        assert_eq!(fit_inside(4000, 3000, 1600), (1600, 1200));
        assert_eq!(fit_inside(3000, 4000, 1600), (1200, 1600));
        assert_eq!(fit_inside(2000, 2000, 200), (200, 200));
        assert_eq!(fit_inside(640, 480, 1600), (640, 480), "never upscale");
        assert_eq!(fit_inside(6000, 12, 200), (200, 1), "never zero");
        assert_eq!(fit_inside(1, 1, 200), (1, 1));
    }

    #[test]
    fn resizes_to_the_requested_size() {
        let src = RgbImage::from_pixel(300, 200, image::Rgb([10, 200, 30]));
        let out = resize(&src, 150, 100).unwrap();
        assert_eq!(out.dimensions(), (150, 100));
        assert_eq!(out.get_pixel(75, 50).0, [10, 200, 30]);
    }
}
