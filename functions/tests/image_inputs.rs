//! Every input kind weir promises to read, generated here: JPEG (baseline,
//! progressive, greyscale, CMYK from Photoshop), PNG (8/16-bit, palette, alpha), GIF,
//! WebP — all through `image.resize_and_watermark`, the headline function.

mod common;

use image::ImageEncoder;
use weir_functions::{Context, Item, Metadata, Params, Payload, Registry, Stores};

async fn large_variant(bytes: Vec<u8>) -> image::RgbImage {
    let function = Registry::builtin()
        .build(
            "image.resize_and_watermark",
            Params::parse(r#"{ sizes = [{ name = "large", long_edge = 64 }] }"#).unwrap(),
        )
        .unwrap()
        .function;
    let item = Item::new(Payload::Bytes(bytes.into()), Metadata::for_object("memory://t", "in.bin"));
    let out = function.invoke(item, &Context::standalone(Stores::new())).await.unwrap_or_else(|e| panic!("{e}"));
    let Payload::Bytes(b) = &out[0].payload else { panic!("bytes expected") };
    image::load_from_memory(b).unwrap().into_rgb8()
}

fn mozjpeg(color: mozjpeg::ColorSpace, w: usize, h: usize, pixels: &[u8], progressive: bool) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(color);
    c.set_size(w, h);
    c.set_quality(95.0);
    if progressive {
        c.set_progressive_mode();
    }
    let mut started = c.start_compress(Vec::new()).unwrap();
    started.write_scanlines(pixels).unwrap();
    started.finish().unwrap()
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 24)
}

#[tokio::test]
async fn progressive_and_greyscale_jpeg() {
    let red: Vec<u8> = [200u8, 30, 30].repeat(64 * 48);
    let out = large_variant(mozjpeg(mozjpeg::ColorSpace::JCS_RGB, 64, 48, &red, true)).await;
    assert!(close(out.get_pixel(10, 10).0, [200, 30, 30]), "{:?}", out.get_pixel(10, 10));
    let grey = vec![90u8; 64 * 48];
    let out = large_variant(mozjpeg(mozjpeg::ColorSpace::JCS_GRAYSCALE, 64, 48, &grey, false)).await;
    assert!(close(out.get_pixel(10, 10).0, [90, 90, 90]));
}

#[tokio::test]
async fn cmyk_jpeg_from_photoshop_is_not_a_negative() {
    // libjpeg writes an Adobe marker for CMYK; Photoshop's convention is inverted
    // (255 = no ink). Pure cyan ink, no black: C=100%, M=Y=K=0 → inverted 0,255,255,255.
    let cyan: Vec<u8> = [0u8, 255, 255, 255].repeat(64 * 48);
    let out = large_variant(mozjpeg(mozjpeg::ColorSpace::JCS_CMYK, 64, 48, &cyan, false)).await;
    assert!(close(out.get_pixel(10, 10).0, [0, 255, 255]), "cyan expected, got {:?}", out.get_pixel(10, 10));
}

#[tokio::test]
async fn png_sixteen_bit_palette_and_alpha() {
    let wide = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(64, 48, image::Rgb([65535u16, 0, 32768]));
    let mut png16 = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png16)
        .write_image(&ne_bytes(wide.as_raw()), 64, 48, image::ExtendedColorType::Rgb16)
        .unwrap();
    assert!(close(large_variant(png16).await.get_pixel(5, 5).0, [255, 0, 128]));
    assert!(close(large_variant(common::palette_png()).await.get_pixel(1, 1).0, [10, 200, 30]));
    let transparent = image::RgbaImage::from_pixel(64, 48, image::Rgba([0, 0, 0, 0]));
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(transparent.as_raw(), 64, 48, image::ExtendedColorType::Rgba8)
        .unwrap();
    assert!(close(large_variant(png).await.get_pixel(5, 5).0, [255, 255, 255]), "alpha flattened onto white");
}

#[tokio::test]
async fn gif_first_frame_and_webp() {
    let img = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(64, 48, image::Rgba([20, 40, 220, 255])));
    for format in [image::ImageFormat::Gif, image::ImageFormat::WebP] {
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
        assert!(close(large_variant(bytes).await.get_pixel(5, 5).0, [20, 40, 220]), "{format:?}");
    }
}

/// Native-endian bytes of 16-bit samples, as the encoder expects.
fn ne_bytes(data: &[u16]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_ne_bytes()).collect()
}
