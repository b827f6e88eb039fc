//! `image.resize_and_watermark`: the headline job. One photo in, one watermarked
//! variant per size out (fan-out), from a single decode.

use std::collections::HashSet;
use std::sync::Arc;

use rayon::prelude::*;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::super::decode::{decode_covering, flatten, Decoded};
use super::super::encode::{encode, Format};
use super::super::resize::{fit_inside, resize};
use super::super::watermark::{Watermark, WatermarkParams};
use crate::{cpu, BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Size {
    pub name: String,
    pub long_edge: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "standard_sizes")]
    sizes: Vec<Size>,
    #[serde(default)]
    watermark: Option<WatermarkParams>,
    #[serde(default)]
    format: Format,
    #[serde(default = "default_quality")]
    quality: u8,
    #[serde(default = "default_background")]
    background: String,
}

/// thumb 200, medium 800, large 1600: the usual product-photo set.
fn standard_sizes() -> Vec<Size> {
    [("thumb", 200), ("medium", 800), ("large", 1600)]
        .map(|(name, long_edge)| Size { name: name.into(), long_edge })
        .to_vec()
}

fn default_quality() -> u8 {
    80
}
fn default_background() -> String {
    "#ffffff".into()
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "image.resize_and_watermark",
        "Decode once, then per size: fit inside long_edge (never upscale), watermark, encode. One item per size.",
        &[
            Param { name: "sizes", kind: "[{ name, long_edge }]", default: Some("thumb 200, medium 800, large 1600"), doc: "Variants to make; `name` becomes {variant}." },
            Param { name: "watermark", kind: "{ text, opacity, position, size, margin, color }", default: Some("none"), doc: "Text watermark; opacity 0.5, position \"bottom-right\" (top-left, top-right, bottom-left, center), size 0.05 and margin 0.02 of the long edge, color \"#ffffff\"." },
            Param { name: "format", kind: "\"jpeg\" | \"png\" | \"webp\"", default: Some("\"jpeg\""), doc: "Output format (WebP is lossless)." },
            Param { name: "quality", kind: "integer 1-100", default: Some("80"), doc: "JPEG quality." },
            Param { name: "background", kind: "\"#rrggbb\"", default: Some("\"#ffffff\""), doc: "Colour transparent pixels are flattened onto." },
        ],
        build,
    )
}

fn build(p: Params) -> Result<ResizeAndWatermark, BuildError> {
    if p.sizes.is_empty() {
        return Err(BuildError::param("sizes", "sizes must list at least one { name, long_edge }"));
    }
    let mut names = HashSet::new();
    for s in &p.sizes {
        if s.long_edge == 0 {
            return Err(BuildError::param("sizes", format!("size {:?}: long_edge must be at least 1", s.name)));
        }
        if s.name.is_empty() || s.name.contains(['/', '\\']) || s.name.starts_with('.') {
            return Err(BuildError::param(
                "sizes",
                format!("size name {:?} must be a plain word (it becomes part of keys)", s.name),
            ));
        }
        if !names.insert(s.name.clone()) {
            return Err(BuildError::param("sizes", format!("size name {:?} is used twice", s.name)));
        }
    }
    if !(1..=100).contains(&p.quality) {
        return Err(BuildError::param("quality", "quality must be between 1 and 100"));
    }
    let background = super::super::parse_color(&p.background)
        .ok_or_else(|| BuildError::param("background", format!("background {:?} is not #rrggbb", p.background)))?;
    let watermark = p.watermark.map(Watermark::new).transpose()?;
    Ok(ResizeAndWatermark {
        inner: Arc::new(Inner { sizes: p.sizes, watermark, format: p.format, quality: p.quality, background }),
    })
}

struct Inner {
    sizes: Vec<Size>,
    watermark: Option<Watermark>,
    format: Format,
    quality: u8,
    background: [u8; 3],
}

pub struct ResizeAndWatermark {
    inner: Arc<Inner>,
}

impl Inner {
    /// The largest variant's long edge: what a shrink-on-load decode must still cover.
    fn cover(&self) -> u32 {
        self.sizes.iter().map(|s| s.long_edge).max().unwrap_or(u32::MAX)
    }

    /// All variants of one image, in the order of `sizes`.
    ///
    /// Resampling cascades from the largest variant down (800 px is made from the
    /// 1600 px variant, not from the 20 MP original), which costs a fraction of
    /// resampling each from the source and keeps Lanczos quality; sizes come from the
    /// full-size dimensions, so they do not depend on the decode scale. Watermarking
    /// and encoding, the other half of the work, run in parallel.
    fn variants(
        &self,
        decoded: Decoded,
        background: [u8; 3],
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<Vec<u8>>, FunctionError> {
        let (full_w, full_h) = (decoded.width, decoded.height);
        let source = flatten(decoded.image, background);
        let mut order: Vec<usize> = (0..self.sizes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.sizes[i].long_edge));
        let mut resized: Vec<Option<image::RgbImage>> = vec![None; self.sizes.len()];
        let mut previous: Option<usize> = None;
        for &i in &order {
            let (w, h) = fit_inside(full_w, full_h, self.sizes[i].long_edge);
            let (w, h) = (w.min(source.width()), h.min(source.height()));
            let base = match previous.and_then(|p| resized[p].as_ref()) {
                Some(larger) if larger.width() >= w && larger.height() >= h => larger,
                _ => &source,
            };
            cpu::check(cancel, name)?;
            let image = resize(base, w, h).map_err(|e| FunctionError::permanent(format!("{name}: {e}")))?;
            resized[i] = Some(image);
            previous = Some(i);
        }
        // The decoded frame is the largest buffer of the job; the encodes do not need it.
        drop(source);
        resized
            .into_par_iter()
            .map(|variant| {
                cpu::check(cancel, name)?;
                let mut variant = variant.expect("every size was resized");
                if let Some(watermark) = &self.watermark {
                    watermark.apply(&mut variant);
                }
                encode(&variant, self.format, self.quality)
                    .map_err(|e| FunctionError::permanent(format!("{name}: {e}")))
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Function for ResizeAndWatermark {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let name = item.describe();
        let inner = self.inner.clone();
        let limits = ctx.limits;
        let payload = item.payload.clone();
        let cancel = ctx.cancel.clone();
        let encoded = cpu::run(move || {
            let decoded = match payload {
                Payload::Bytes(bytes) => decode_covering(&bytes, &limits, &name, inner.cover())?,
                Payload::Image(image) => {
                    Decoded { width: image.width(), height: image.height(), image: (*image).clone() }
                }
                other => {
                    return Err(FunctionError::permanent(format!(
                        "{name}: expected image bytes, got a {} payload",
                        other.kind()
                    )))
                }
            };
            inner.variants(decoded, inner.background, &name, &cancel)
        })
        .await?;
        Ok(self
            .inner
            .sizes
            .iter()
            .zip(encoded)
            .map(|(size, bytes)| {
                let mut meta = item.meta.clone();
                meta.variant = Some(size.name.clone());
                meta.content_type = Some(self.inner.format.content_type().into());
                meta.format_ext = Some(self.inner.format.extension().into());
                Item::new(Payload::Bytes(bytes.into()), meta)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_images::*;
    use crate::{Metadata, Params as FnParams, Registry, Stores};

    /// A timed-out or abandoned invocation's job stops at its next stage.
    #[tokio::test]
    async fn a_cancelled_invocation_stops_between_stages() {
        let function =
            Registry::builtin().build("image.resize_and_watermark", FnParams::parse(PARAMS).unwrap()).unwrap();
        let ctx = Context::standalone(Stores::new());
        ctx.cancel.cancel();
        let item =
            Item::new(Payload::Bytes(jpeg(&photo(2000, 1500), 90).into()), Metadata::for_object("memory://t", "a.jpg"));
        let error = function.function.invoke(item, &ctx).await.unwrap_err();
        assert!(error.is_retryable() && error.message().contains("stopped"), "{error}");
    }

    const PARAMS: &str = r#"{ sizes = [{ name = "thumb", long_edge = 200 }, { name = "medium", long_edge = 800 }, { name = "large", long_edge = 1600 }], watermark = { text = "MyStore" }, quality = 80 }"#;

    fn function(params: &str) -> Arc<dyn Function> {
        Registry::builtin().build("image.resize_and_watermark", FnParams::parse(params).unwrap()).unwrap().function
    }

    async fn run(params: &str, bytes: Vec<u8>) -> Result<Vec<Item>, FunctionError> {
        let item = Item::new(Payload::Bytes(bytes.into()), Metadata::for_object("memory://t", "in/p.jpg"));
        function(params).invoke(item, &Context::standalone(Stores::new())).await
    }

    fn dims(item: &Item) -> (u32, u32) {
        let Payload::Bytes(b) = &item.payload else { panic!("bytes expected") };
        let img = image::load_from_memory(b).unwrap();
        (img.width(), img.height())
    }

    #[tokio::test]
    async fn makes_one_variant_per_size_never_upscaling() {
        let out = run(PARAMS, jpeg(&photo(2000, 1500), 90)).await.unwrap();
        let got: Vec<_> = out.iter().map(|i| (i.meta.variant.clone().unwrap(), dims(i))).collect();
        assert_eq!(got, [("thumb".into(), (200, 150)), ("medium".into(), (800, 600)), ("large".into(), (1600, 1200))]);
        assert!(
            out.iter()
                .all(|i| i.meta.content_type.as_deref() == Some("image/jpeg")
                    && i.meta.key.as_deref() == Some("in/p.jpg"))
        );
        let small = run(PARAMS, jpeg(&photo(300, 500), 90)).await.unwrap();
        assert_eq!(small.iter().map(dims).collect::<Vec<_>>(), [(120, 200), (300, 500), (300, 500)]);
    }

    #[tokio::test]
    async fn extreme_and_tiny_inputs_give_valid_outputs() {
        for (w, h) in [(1, 1), (6000, 12), (12, 6000)] {
            let png = png_rgba(&image::RgbaImage::from_pixel(w, h, image::Rgba([9, 99, 199, 255])));
            let out = run(PARAMS, png).await.unwrap();
            for item in &out {
                let (ow, oh) = dims(item);
                assert!(ow >= 1 && oh >= 1 && ow.max(oh) <= 1600, "{w}×{h} → {ow}×{oh}");
            }
        }
    }

    #[tokio::test]
    async fn portrait_photos_from_phones_come_out_upright() {
        let out = run(PARAMS, jpeg_with_orientation(&photo(1200, 900), 6)).await.unwrap();
        assert_eq!(dims(&out[1]), (600, 800));
    }

    #[tokio::test]
    async fn png_gif_and_webp_inputs_work_and_formats_out() {
        let rgba = image::RgbaImage::from_fn(320, 240, |x, y| {
            image::Rgba([x as u8, y as u8, 90, if x < 160 { 0 } else { 255 }])
        });
        let mut gif = Vec::new();
        image::DynamicImage::ImageRgba8(rgba.clone())
            .write_to(&mut std::io::Cursor::new(&mut gif), image::ImageFormat::Gif)
            .unwrap();
        let mut webp = Vec::new();
        image::DynamicImage::ImageRgba8(rgba.clone())
            .write_to(&mut std::io::Cursor::new(&mut webp), image::ImageFormat::WebP)
            .unwrap();
        for input in [png_rgba(&rgba), gif, webp] {
            let out = run(PARAMS, input).await.unwrap();
            assert_eq!(dims(&out[0]), (200, 150));
            // The transparent left half is flattened onto white.
            let Payload::Bytes(b) = &out[2].payload else { panic!() };
            let large = image::load_from_memory(b).unwrap().into_rgb8();
            assert!(large.get_pixel(10, 10).0.iter().all(|&c| c > 240), "{:?}", large.get_pixel(10, 10));
        }
        for (format, expected) in [("png", image::ImageFormat::Png), ("webp", image::ImageFormat::WebP)] {
            let params = PARAMS.replace("quality = 80", &format!("format = \"{format}\""));
            let out = run(&params, jpeg(&photo(400, 300), 90)).await.unwrap();
            let Payload::Bytes(b) = &out[0].payload else { panic!() };
            assert_eq!(image::guess_format(b).unwrap(), expected);
            assert_eq!(out[0].meta.format_ext.as_deref(), Some(format));
        }
    }

    /// PSNR of `a` against `b` over the rows above `rows`.
    fn psnr(a: &image::RgbImage, b: &image::RgbImage, rows: u32) -> f64 {
        let mut sum = 0.0f64;
        let mut n = 0u64;
        for y in 0..rows {
            for x in 0..a.width() {
                for c in 0..3 {
                    let d = a.get_pixel(x, y)[c] as f64 - b.get_pixel(x, y)[c] as f64;
                    sum += d * d;
                    n += 1;
                }
            }
        }
        10.0 * (255.0f64 * 255.0 / (sum / n as f64)).log10()
    }

    #[tokio::test]
    async fn variants_match_a_high_quality_reference_outside_the_watermark() {
        let source = photo(2000, 1500);
        let out = run(PARAMS, jpeg(&source, 95)).await.unwrap();
        for item in &out {
            let Payload::Bytes(b) = &item.payload else { panic!() };
            let got = image::load_from_memory(b).unwrap().into_rgb8();
            let reference =
                image::imageops::resize(&source, got.width(), got.height(), image::imageops::FilterType::Lanczos3);
            // The watermark sits in the bottom-right, within the bottom 10% of rows.
            let score = psnr(&got, &reference, got.height() * 9 / 10);
            assert!(score >= 32.0, "{:?}: PSNR {score:.1} dB", item.meta.variant);
        }
    }

    #[tokio::test]
    async fn hostile_inputs_are_permanent_errors() {
        for bytes in [vec![], b"<html></html>".to_vec(), jpeg_claiming_65000()] {
            let err = run(PARAMS, bytes).await.unwrap_err();
            assert!(!err.is_retryable());
            assert!(err.message().starts_with("in/p.jpg"), "{}", err.message());
        }
    }

    #[test]
    fn bad_parameters_are_refused_at_build_time() {
        for bad in [
            "{ sizes = [] }",
            "{ sises = [] }",
            "{ sizes = [{ name = \"a\", long_edge = 0 }] }",
            "{ sizes = [{ name = \"a\", long_edge = 9 }, { name = \"a\", long_edge = 8 }] }",
            "{ sizes = [{ name = \"../a\", long_edge = 9 }] }",
            "{ sizes = [{ name = \"a\", long_edge = 9 }], quality = 0 }",
            "{ sizes = [{ name = \"a\", long_edge = 9 }], watermark = { text = \"x\", opacity = 2.0 } }",
            "{ sizes = [{ name = \"a\", long_edge = 9 }], colour = \"red\" }",
            "{ sizes = [{ name = \"a\", long_edge = 9 }], format = \"bmp\" }",
        ] {
            assert!(
                Registry::builtin().build("image.resize_and_watermark", FnParams::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
