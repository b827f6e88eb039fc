//! `image.watermark`: a text or logo watermark, decoded pixels out.

use std::sync::Arc;

use image::{DynamicImage, RgbaImage};
use serde::Deserialize;

use super::{image_item, input};
use crate::image::watermark::{Position, Watermark, WatermarkParams};
use crate::{cpu, BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    text: Option<WatermarkParams>,
    logo: Option<LogoParams>,
}

/// A logo overlay, read once when the step is built.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogoParams {
    /// A local PNG/JPEG/WebP file.
    path: String,
    #[serde(default = "half")]
    opacity: f32,
    #[serde(default = "bottom_right")]
    position: Position,
    /// Logo width as a fraction of the image's width.
    #[serde(default = "fifth")]
    scale: f32,
    /// Distance from the edges as a fraction of the long edge.
    #[serde(default = "margin")]
    margin: f32,
}

fn half() -> f32 {
    0.5
}
fn bottom_right() -> Position {
    Position::BottomRight
}
fn fifth() -> f32 {
    0.2
}
fn margin() -> f32 {
    0.02
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "image.watermark",
        "Draw a text watermark (bundled DejaVu Sans Bold) or overlay a logo; passes decoded pixels on.",
        &[
            Param { name: "text", kind: "{ text, opacity, position, size, margin, color }", default: Some("-"), doc: "Text watermark, as in image.resize_and_watermark." },
            Param { name: "logo", kind: "{ path, opacity, position, scale, margin }", default: Some("-"), doc: "Logo file overlaid at `scale` × the image width (default 0.2), opacity 0.5, bottom-right, margin 0.02." },
        ],
        |p: Params| match (p.text, p.logo) {
            (Some(text), None) => Ok(WatermarkFn { mark: Arc::new(Mark::Text(Watermark::new(text)?)) }),
            (None, Some(logo)) => Ok(WatermarkFn { mark: Arc::new(Mark::Logo(Logo::load(logo)?)) }),
            _ => Err(BuildError::new("give exactly one of `text` or `logo`")),
        },
    )
}

enum Mark {
    Text(Watermark),
    Logo(Logo),
}

struct Logo {
    image: RgbaImage,
    opacity: f32,
    position: Position,
    scale: f32,
    margin: f32,
    /// The logo resized per target width, made once per size.
    sized: moka::sync::Cache<u32, Arc<RgbaImage>>,
}

impl Logo {
    fn load(p: LogoParams) -> Result<Self, BuildError> {
        let bad = |m: String| BuildError::param("logo", m);
        let valid =
            (0.0..=1.0).contains(&p.opacity) && p.scale > 0.0 && p.scale <= 1.0 && (0.0..0.5).contains(&p.margin);
        if !valid {
            return Err(bad("logo: opacity in [0, 1], scale in (0, 1], margin in [0, 0.5)".into()));
        }
        let image = image::open(&p.path).map_err(|e| bad(format!("cannot read logo {}: {e}", p.path)))?.into_rgba8();
        Ok(Self {
            image,
            opacity: p.opacity,
            position: p.position,
            scale: p.scale,
            margin: p.margin,
            sized: moka::sync::Cache::new(32),
        })
    }

    fn apply(&self, target: &mut RgbaImage) {
        let (w, h) = target.dimensions();
        let lw = ((w as f32 * self.scale).round() as u32).max(1);
        let lh = ((self.image.height() as u64 * lw as u64) / self.image.width().max(1) as u64).max(1) as u32;
        let margin = (self.margin * w.max(h) as f32).round() as u32;
        if lw + 2 * margin > w || lh + 2 * margin > h {
            return;
        }
        let logo = self.sized.get_with(lw, || {
            Arc::new(image::imageops::resize(&self.image, lw, lh, image::imageops::FilterType::Lanczos3))
        });
        let (x0, y0) = match self.position {
            Position::TopLeft => (margin, margin),
            Position::TopRight => (w - margin - lw, margin),
            Position::BottomLeft => (margin, h - margin - lh),
            Position::BottomRight => (w - margin - lw, h - margin - lh),
            Position::Center => ((w - lw) / 2, (h - lh) / 2),
        };
        for (x, y, px) in logo.enumerate_pixels() {
            let a = px[3] as f32 / 255.0 * self.opacity;
            let dst = target.get_pixel_mut(x0 + x, y0 + y);
            for c in 0..3 {
                dst[c] = (dst[c] as f32 * (1.0 - a) + px[c] as f32 * a).round() as u8;
            }
        }
    }
}

pub struct WatermarkFn {
    mark: Arc<Mark>,
}

#[async_trait::async_trait]
impl Function for WatermarkFn {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let (name, limits, payload, mark) = (item.describe(), ctx.limits, item.payload.clone(), self.mark.clone());
        let image = cpu::run(move || {
            let image = input(payload, &limits, &name, u32::MAX)?.image;
            Ok(match &*mark {
                Mark::Text(text) if !image.color().has_alpha() => {
                    let mut rgb = image.into_rgb8();
                    text.apply(&mut rgb);
                    DynamicImage::ImageRgb8(rgb)
                }
                Mark::Text(text) => {
                    // Keep the alpha channel: draw on the colour, restore alpha.
                    let rgba = image.into_rgba8();
                    let mut rgb = DynamicImage::ImageRgba8(rgba.clone()).into_rgb8();
                    text.apply(&mut rgb);
                    let mut out = rgba;
                    for (o, c) in out.pixels_mut().zip(rgb.pixels()) {
                        o[0] = c[0];
                        o[1] = c[1];
                        o[2] = c[2];
                    }
                    DynamicImage::ImageRgba8(out)
                }
                Mark::Logo(logo) => {
                    let mut rgba = image.into_rgba8();
                    logo.apply(&mut rgba);
                    DynamicImage::ImageRgba8(rgba)
                }
            })
        })
        .await?;
        Ok(vec![image_item(&item, image)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{pixels, run};
    use crate::image::test_images::png_rgba;
    use crate::Payload;

    #[tokio::test]
    async fn text_and_logo_marks_land_bottom_right() {
        let black = png_rgba(&image::RgbaImage::from_pixel(400, 300, image::Rgba([0, 0, 0, 255])));
        let out = run("image.watermark", "{ text = { text = \"MyStore\" } }", Payload::Bytes(black.clone().into()))
            .await
            .unwrap();
        let img = pixels(&out[0]).into_rgb8();
        assert!(img.get_pixel(5, 5)[0] == 0 && (300..400).any(|x| (250..300).any(|y| img.get_pixel(x, y)[0] > 0)));

        let dir = tempfile::tempdir().unwrap();
        let logo = dir.path().join("logo.png");
        image::RgbaImage::from_pixel(50, 20, image::Rgba([255, 0, 0, 255])).save(&logo).unwrap();
        let params = format!("{{ logo = {{ path = {:?}, opacity = 1.0, scale = 0.25 }} }}", logo.display());
        let out = run("image.watermark", &params, Payload::Bytes(black.into())).await.unwrap();
        let img = pixels(&out[0]).into_rgba8();
        // 100 px wide logo, 8 px (2% of 400) from the right and bottom edges.
        assert_eq!(img.get_pixel(400 - 8 - 50, 300 - 8 - 10).0, [255, 0, 0, 255]);
        assert_eq!(img.get_pixel(10, 10).0, [0, 0, 0, 255]);
    }

    #[test]
    fn needs_exactly_one_mark() {
        let registry = crate::Registry::builtin();
        for bad in [
            "{}",
            "{ text = { text = \"a\" }, logo = { path = \"x.png\" } }",
            "{ logo = { path = \"/no/such/logo.png\" } }",
        ] {
            assert!(registry.build("image.watermark", crate::Params::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
