//! Text watermarks. The text is rendered once per font size into an alpha mask and
//! cached; applying it blends only the mask's rectangle, so a watermark costs a few
//! thousand pixel blends, not a full-frame composite.

use std::sync::Arc;

use ab_glyph::{Font, FontArc, Glyph, Point, ScaleFont};
use image::RgbImage;
use serde::Deserialize;

use crate::BuildError;

/// DejaVu Sans Bold (free licence, see functions/assets/DejaVuSans-Bold.LICENSE).
static DEFAULT_FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-Bold.ttf");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Position {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    Center,
}

/// The `watermark = { ... }` parameter table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkParams {
    pub text: String,
    #[serde(default = "default_opacity")]
    pub opacity: f32,
    #[serde(default = "default_position")]
    pub position: Position,
    /// Font size as a fraction of the image's long edge.
    #[serde(default = "default_size")]
    pub size: f32,
    /// Distance from the edges as a fraction of the long edge.
    #[serde(default = "default_margin")]
    pub margin: f32,
    #[serde(default = "default_color")]
    pub color: String,
}

fn default_opacity() -> f32 {
    0.5
}
fn default_position() -> Position {
    Position::BottomRight
}
fn default_size() -> f32 {
    0.05
}
fn default_margin() -> f32 {
    0.02
}
fn default_color() -> String {
    "#ffffff".into()
}

/// Coverage of the rendered text, 0–255, row-major.
#[derive(Debug)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    pub alpha: Vec<u8>,
}

/// A ready-to-apply text watermark.
pub struct Watermark {
    text: String,
    opacity: f32,
    position: Position,
    size: f32,
    margin: f32,
    color: [u8; 3],
    font: FontArc,
    masks: moka::sync::Cache<u32, Arc<Mask>>,
}

impl Watermark {
    pub fn new(params: WatermarkParams) -> Result<Self, BuildError> {
        let bad = |what: &str| BuildError::param("watermark", what.to_string());
        if params.text.trim().is_empty() {
            return Err(bad("watermark.text must not be empty"));
        }
        if !(0.0..=1.0).contains(&params.opacity) {
            return Err(bad("watermark.opacity must be between 0 and 1"));
        }
        if !(params.size > 0.0 && params.size <= 1.0) {
            return Err(bad("watermark.size must be a fraction of the long edge, in (0, 1]"));
        }
        if !(0.0..0.5).contains(&params.margin) {
            return Err(bad("watermark.margin must be in [0, 0.5)"));
        }
        let color = super::parse_color(&params.color)
            .ok_or_else(|| bad(&format!("watermark.color {:?} is not #rrggbb", params.color)))?;
        let font = FontArc::try_from_slice(DEFAULT_FONT).map_err(|e| BuildError::new(format!("bundled font: {e}")))?;
        Ok(Self {
            text: params.text,
            opacity: params.opacity,
            position: params.position,
            size: params.size,
            margin: params.margin,
            color,
            font,
            masks: moka::sync::Cache::new(64),
        })
    }

    /// The mask for a font size in pixels, rendered on first use.
    pub fn mask(&self, font_px: u32) -> Arc<Mask> {
        self.masks.get_with(font_px, || Arc::new(render(&self.font, &self.text, font_px as f32)))
    }

    /// Draws the watermark onto `image`. Text too big for a tiny image is shrunk; text
    /// that would be under 4 px is skipped rather than drawn as noise.
    pub fn apply(&self, image: &mut RgbImage) {
        let (w, h) = image.dimensions();
        let long = w.max(h) as f32;
        let margin = (self.margin * long).round() as u32;
        let mut font_px = (self.size * long).round().max(1.0) as u32;
        let mut mask = self.mask(font_px);
        let room_w = w.saturating_sub(2 * margin);
        let room_h = h.saturating_sub(2 * margin);
        if mask.width > room_w || mask.height > room_h {
            let shrink = (room_w as f32 / mask.width.max(1) as f32).min(room_h as f32 / mask.height.max(1) as f32);
            font_px = (font_px as f32 * shrink).floor() as u32;
            if font_px < 4 {
                return;
            }
            mask = self.mask(font_px);
            if mask.width > room_w || mask.height > room_h {
                return;
            }
        }
        let (x0, y0) = match self.position {
            Position::TopLeft => (margin, margin),
            Position::TopRight => (w - margin - mask.width, margin),
            Position::BottomLeft => (margin, h - margin - mask.height),
            Position::BottomRight => (w - margin - mask.width, h - margin - mask.height),
            Position::Center => ((w - mask.width) / 2, (h - mask.height) / 2),
        };
        blend(image, &mask, x0, y0, self.color, self.opacity);
    }
}

/// Renders `text` at `font_px` (the em size in pixels, like CSS and Pillow) into a
/// tight coverage mask.
fn render(font: &FontArc, text: &str, font_px: f32) -> Mask {
    let scale = font.pt_to_px_scale(font_px).unwrap_or(ab_glyph::PxScale::from(font_px));
    let scaled = font.as_scaled(scale);
    let mut caret = 0.0f32;
    let mut previous = None;
    let mut outlines = Vec::new();
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(prev) = previous {
            caret += scaled.kern(prev, id);
        }
        let glyph: Glyph = id.with_scale_and_position(scale, Point { x: caret, y: scaled.ascent() });
        caret += scaled.h_advance(id);
        previous = Some(id);
        if let Some(outline) = font.outline_glyph(glyph) {
            outlines.push(outline);
        }
    }
    let Some(first) = outlines.first() else { return Mask { width: 0, height: 0, alpha: Vec::new() } };
    let mut bounds = first.px_bounds();
    for o in &outlines[1..] {
        let b = o.px_bounds();
        bounds.min.x = bounds.min.x.min(b.min.x);
        bounds.min.y = bounds.min.y.min(b.min.y);
        bounds.max.x = bounds.max.x.max(b.max.x);
        bounds.max.y = bounds.max.y.max(b.max.y);
    }
    let width = (bounds.max.x - bounds.min.x).ceil().max(0.0) as u32;
    let height = (bounds.max.y - bounds.min.y).ceil().max(0.0) as u32;
    let mut alpha = vec![0u8; (width * height) as usize];
    for o in &outlines {
        let b = o.px_bounds();
        let (ox, oy) = ((b.min.x - bounds.min.x) as i64, (b.min.y - bounds.min.y) as i64);
        o.draw(|x, y, coverage| {
            let (px, py) = (ox + x as i64, oy + y as i64);
            if px >= 0 && py >= 0 && (px as u32) < width && (py as u32) < height {
                let cell = &mut alpha[(py as u32 * width + px as u32) as usize];
                *cell = (*cell).max((coverage.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        });
    }
    Mask { width, height, alpha }
}

fn blend(image: &mut RgbImage, mask: &Mask, x0: u32, y0: u32, color: [u8; 3], opacity: f32) {
    let strength = (opacity * 256.0).round() as u32;
    for my in 0..mask.height {
        let row = &mask.alpha[(my * mask.width) as usize..((my + 1) * mask.width) as usize];
        for (mx, &coverage) in row.iter().enumerate() {
            if coverage == 0 {
                continue;
            }
            let a = coverage as u32 * strength / 256; // 0..=255
            let pixel = image.get_pixel_mut(x0 + mx as u32, y0 + my);
            for c in 0..3 {
                pixel[c] = ((pixel[c] as u32 * (255 - a) + color[c] as u32 * a + 127) / 255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watermark() -> Watermark {
        Watermark::new(toml::from_str("text = \"MyStore\"").unwrap()).unwrap()
    }

    #[test]
    fn draws_in_the_bottom_right_only() {
        let mut img = RgbImage::from_pixel(800, 600, image::Rgb([0, 0, 0]));
        watermark().apply(&mut img);
        let lit = |x0: u32, y0: u32, x1: u32, y1: u32| {
            (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| img.get_pixel(x, y)[0] > 0).count()
        };
        assert!(lit(400, 450, 800, 600) > 500, "text drawn bottom-right");
        assert_eq!(lit(0, 0, 400, 300), 0, "nothing top-left");
        // 50% white over black: never brighter than half.
        assert!(img.pixels().all(|p| p[0] <= 128));
    }

    #[test]
    fn masks_are_rendered_once_per_size() {
        let w = watermark();
        let a = w.mask(40);
        let b = w.mask(40);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.width > a.height && a.height > 20, "{}×{}", a.width, a.height);
    }

    #[test]
    fn tiny_images_never_panic() {
        for (w, h) in [(1, 1), (200, 1), (1, 200), (12, 6000), (30, 20)] {
            let mut img = RgbImage::new(w, h);
            watermark().apply(&mut img);
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        for bad in
            ["text = \"\"", "text = \"x\"\nopacity = 2.0", "text = \"x\"\ncolor = \"blue\"", "text = \"x\"\nsize = 0.0"]
        {
            assert!(Watermark::new(toml::from_str(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
