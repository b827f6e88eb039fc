//! `image.resize`: one size, four ways to fit, decoded pixels out.

use fast_image_resize as fr;
use image::{DynamicImage, RgbaImage};
use serde::Deserialize;

use super::{image_item, input};
use crate::{cpu, BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param};

/// How the image meets the requested box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Keep the aspect ratio, fit inside the box.
    #[default]
    Inside,
    /// Keep the aspect ratio, fill the box, crop the overflow (centred).
    Cover,
    /// Stretch to the box, ignoring the aspect ratio.
    Fill,
    /// Exactly the box: fit inside, then pad with `background`.
    Exact,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    long_edge: Option<u32>,
    width: Option<u32>,
    height: Option<u32>,
    #[serde(default)]
    fit: Fit,
    #[serde(default)]
    upscale: bool,
    #[serde(default = "white")]
    background: String,
}

fn white() -> String {
    "#ffffff".into()
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "image.resize",
        "Resize to a box (long_edge, or width and/or height); passes decoded pixels on (no re-encode).",
        &[
            Param { name: "long_edge", kind: "integer", default: Some("-"), doc: "Box of long_edge × long_edge (alternative to width/height)." },
            Param { name: "width", kind: "integer", default: Some("-"), doc: "Box width (height alone keeps the aspect ratio)." },
            Param { name: "height", kind: "integer", default: Some("-"), doc: "Box height." },
            Param { name: "fit", kind: "\"inside\" | \"cover\" | \"fill\" | \"exact\"", default: Some("\"inside\""), doc: "inside: keep aspect, fit in the box; cover: keep aspect, crop to the box; fill: stretch; exact: fit inside and pad to the box." },
            Param { name: "upscale", kind: "bool", default: Some("false"), doc: "Allow making images larger." },
            Param { name: "background", kind: "\"#rrggbb\"", default: Some("\"#ffffff\""), doc: "Padding colour for fit = \"exact\"." },
        ],
        |p: Params| {
            let background = crate::image::parse_color(&p.background)
                .ok_or_else(|| BuildError::param("background", format!("{:?} is not #rrggbb", p.background)))?;
            let (width, height) = match (p.long_edge, p.width, p.height) {
                (Some(l), None, None) => (Some(l), Some(l)),
                (None, w, h) if w.is_some() || h.is_some() => (w, h),
                _ => return Err(BuildError::new("give either long_edge, or width and/or height")),
            };
            if width == Some(0) || height == Some(0) {
                return Err(BuildError::new("sizes must be at least 1"));
            }
            if p.fit != Fit::Inside && (width.is_none() || height.is_none()) {
                return Err(BuildError::param("fit", "fit other than \"inside\" needs both width and height (or long_edge)"));
            }
            Ok(Resize { width, height, fit: p.fit, upscale: p.upscale, background })
        },
    )
}

#[derive(Clone, Copy)]
pub struct Resize {
    width: Option<u32>,
    height: Option<u32>,
    fit: Fit,
    upscale: bool,
    background: [u8; 3],
}

impl Resize {
    /// The box, with a missing side derived from the aspect ratio.
    fn target(&self, w: u32, h: u32) -> (u32, u32) {
        let scale_to = |from: u32, to: u32, other: u32| {
            ((other as u64 * to as u64 + from as u64 / 2) / from as u64).clamp(1, u32::MAX as u64) as u32
        };
        match (self.width, self.height) {
            (Some(bw), Some(bh)) => (bw, bh),
            (Some(bw), None) => (bw, scale_to(w, bw, h)),
            (None, Some(bh)) => (scale_to(h, bh, w), bh),
            (None, None) => (w, h),
        }
    }

    /// Resizes `image`; an output over `max_pixels` (a 1×60000 strip upscaled to 1600
    /// wide would be 96 gigapixels) is refused before anything is allocated.
    pub fn apply(&self, image: DynamicImage, max_pixels: u64) -> Result<DynamicImage, FunctionError> {
        let (w, h) = (image.width(), image.height());
        let (bw, bh) = self.target(w, h);
        let fail = |e: String| FunctionError::permanent(format!("resizing {w}×{h} to {bw}×{bh}: {e}"));
        let within = |ow: u32, oh: u32| match ow as u64 * oh as u64 {
            pixels if pixels > max_pixels => {
                Err(fail(format!("the output would be {ow}×{oh} = {pixels} pixels, over max_pixels = {max_pixels}")))
            }
            _ => Ok(()),
        };
        let rgba = image.into_rgba8();
        let out = match self.fit {
            Fit::Inside | Fit::Exact => {
                let (mut tw, mut th) = fit_box(w, h, bw, bh);
                if !self.upscale && (tw > w || th > h) {
                    (tw, th) = (w, h);
                }
                within(tw, th)?;
                let (pw, ph) = if self.upscale { (bw, bh) } else { (bw.max(tw), bh.max(th)) };
                if self.fit == Fit::Exact {
                    within(pw, ph)?;
                }
                let resized = resample(&rgba, tw, th, None).map_err(fail)?;
                if self.fit == Fit::Exact {
                    let [r, g, b] = self.background;
                    let mut canvas = RgbaImage::from_pixel(pw, ph, image::Rgba([r, g, b, 255]));
                    image::imageops::overlay(&mut canvas, &resized, ((pw - tw) / 2) as i64, ((ph - th) / 2) as i64);
                    canvas
                } else {
                    resized
                }
            }
            Fit::Fill => {
                let (tw, th) = if self.upscale { (bw, bh) } else { (bw.min(w), bh.min(h)) };
                within(tw, th)?;
                resample(&rgba, tw, th, None).map_err(fail)?
            }
            Fit::Cover => {
                let scale = (bw as f64 / w as f64).max(bh as f64 / h as f64);
                let scale = if self.upscale { scale } else { scale.min(1.0) };
                let (tw, th) = (
                    (bw as f64).min(w as f64 * scale).round() as u32,
                    (bh as f64).min(h as f64 * scale).round() as u32,
                );
                let (tw, th) = (tw.max(1), th.max(1));
                within(tw, th)?;
                let (cw, ch) = (tw as f64 / scale, th as f64 / scale);
                let crop = ((w as f64 - cw) / 2.0, (h as f64 - ch) / 2.0, cw, ch);
                resample(&rgba, tw, th, Some(crop)).map_err(fail)?
            }
        };
        Ok(DynamicImage::ImageRgba8(out))
    }
}

/// Largest size with the aspect of w×h inside bw×bh.
fn fit_box(w: u32, h: u32, bw: u32, bh: u32) -> (u32, u32) {
    scale_by(w, h, (bw as f64 / w as f64).min(bh as f64 / h as f64))
}

fn scale_by(w: u32, h: u32, s: f64) -> (u32, u32) {
    (((w as f64 * s).round() as u32).max(1), ((h as f64 * s).round() as u32).max(1))
}

fn resample(src: &RgbaImage, w: u32, h: u32, crop: Option<(f64, f64, f64, f64)>) -> Result<RgbaImage, String> {
    if (w, h) == src.dimensions() && crop.is_none() {
        return Ok(src.clone());
    }
    let mut dst = RgbaImage::new(w, h);
    let mut options = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3));
    if let Some((x, y, cw, ch)) = crop {
        options = options.crop(x, y, cw, ch);
    }
    fr::Resizer::new().resize(src, &mut dst, &options).map_err(|e| e.to_string())?;
    Ok(dst)
}

#[async_trait::async_trait]
impl Function for Resize {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let name = item.describe();
        let limits = ctx.limits;
        let payload = item.payload.clone();
        let cover = match (self.width, self.height) {
            _ if self.upscale || self.fit == Fit::Cover || self.fit == Fit::Fill => u32::MAX,
            (Some(w), Some(h)) => w.max(h),
            _ => u32::MAX,
        };
        let this = *self;
        let cancel = ctx.cancel.clone();
        let image = cpu::run(move || {
            let decoded = input(payload, &limits, &name, cover)?;
            cpu::check(&cancel, &name)?;
            this.apply(decoded.image, limits.max_pixels)
        })
        .await?;
        Ok(vec![image_item(&item, image)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{pixels, run};
    use crate::image::test_images::{jpeg, photo};
    use crate::Payload;

    async fn dims(params: &str, w: u32, h: u32) -> (u32, u32) {
        let out = run("image.resize", params, Payload::Bytes(jpeg(&photo(w, h), 90).into())).await.unwrap();
        let img = pixels(&out[0]);
        (img.width(), img.height())
    }

    #[tokio::test]
    async fn fits_four_ways_without_upscaling_unless_asked() {
        assert_eq!(dims("{ long_edge = 200 }", 1000, 500).await, (200, 100));
        assert_eq!(dims("{ width = 300 }", 1000, 500).await, (300, 150));
        assert_eq!(dims("{ height = 100 }", 1000, 500).await, (200, 100));
        assert_eq!(dims("{ width = 200, height = 200, fit = \"cover\" }", 1000, 500).await, (200, 200));
        assert_eq!(dims("{ width = 200, height = 50, fit = \"fill\" }", 1000, 500).await, (200, 50));
        assert_eq!(dims("{ width = 300, height = 300, fit = \"exact\" }", 1000, 500).await, (300, 300));
        assert_eq!(dims("{ long_edge = 2000 }", 1000, 500).await, (1000, 500), "never upscale");
        assert_eq!(dims("{ long_edge = 2000, upscale = true }", 1000, 500).await, (2000, 1000));
        assert_eq!(dims("{ long_edge = 100 }", 6000, 12).await, (100, 1), "never zero");
    }

    /// A 1×60000 strip upscaled to 1600 wide would be 1600×96,000,000 pixels (a 614 GB
    /// allocation that aborts the process): refused as an error about the input.
    #[tokio::test]
    async fn an_output_over_max_pixels_is_refused_before_it_is_allocated() {
        let strip = image::GrayImage::from_pixel(1, 60_000, image::Luma([128]));
        let mut png = Vec::new();
        strip.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        for params in [
            "{ width = 1600, upscale = true }",
            "{ width = 1600, height = 96000000, fit = \"fill\", upscale = true }",
            "{ width = 1600, height = 96000000, fit = \"exact\" }",
        ] {
            let error = run("image.resize", params, Payload::Bytes(png.clone().into())).await.unwrap_err();
            assert!(!error.is_retryable(), "{params}: {error}");
            assert!(error.to_string().contains("over max_pixels"), "{params}: {error}");
        }
    }

    #[tokio::test]
    async fn exact_pads_with_the_background() {
        let out = run(
            "image.resize",
            "{ width = 100, height = 100, fit = \"exact\", background = \"#ff0000\" }",
            Payload::Bytes(jpeg(&photo(400, 200), 90).into()),
        )
        .await
        .unwrap();
        let img = pixels(&out[0]).into_rgba8();
        assert_eq!(img.get_pixel(50, 2).0, [255, 0, 0, 255], "letterbox band");
    }
}
