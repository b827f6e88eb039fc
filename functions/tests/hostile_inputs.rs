//! Hostile inputs end in a clear permanent error, never a panic and never a large
//! allocation: the process's peak RSS is checked after all of them.

mod common;

use common::png_claiming;
use image::ImageEncoder;
use weir_functions::{Context, Item, Metadata, Params, Payload, Registry, Stores};

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[tokio::test]
async fn hostile_inputs_are_refused_cheaply_and_clearly() {
    let function = Registry::builtin()
        .build("image.resize_and_watermark", Params::parse(r#"{ sizes = [{ name = "t", long_edge = 200 }] }"#).unwrap())
        .unwrap()
        .function;
    let img = image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut good = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut good, 90)
        .write_image(img.as_raw(), 300, 200, image::ExtendedColorType::Rgb8)
        .unwrap();
    let mut huge_jpeg = good.clone();
    let sof = huge_jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    huge_jpeg[sof + 5..sof + 9].copy_from_slice(&[0xfd, 0xe8, 0xfd, 0xe8]); // 65000 × 65000
    let mut bad_crc = png_claiming(10, 10);
    bad_crc[29] ^= 0xff;
    let before = peak_rss_mib();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zero.jpg", vec![], "empty file"),
        ("page.jpg", b"<!doctype html><html></html>".to_vec(), "not a supported image"),
        ("truncated.jpg", good[..good.len() / 2].to_vec(), "truncated"),
        ("header-only.jpg", good[..160].to_vec(), "zero.jpg"),
        ("huge.jpg", huge_jpeg, "over max_pixels"),
        ("bomb.png", png_claiming(30_000, 30_000), "900000000 pixels, over max_pixels"),
        ("bad-crc.png", bad_crc, "bad-crc.png"),
    ];
    for (name, bytes, expected) in cases {
        let item = Item::new(Payload::Bytes(bytes.into()), Metadata::for_object("memory://t", name));
        let err = match function.invoke(item, &Context::standalone(Stores::new())).await {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e,
        };
        assert!(!err.is_retryable(), "{name}");
        let message = err.message();
        assert!(message.starts_with(name) && !message.contains('\n'), "{message}");
        if expected != "zero.jpg" && !expected.ends_with(".png") {
            assert!(message.contains(expected), "{name}: {message}");
        }
    }
    let grew = peak_rss_mib().saturating_sub(before);
    // The bomb alone would need 2.7 GB; all of these together stay within a few MB.
    assert!(grew < 64, "peak RSS grew by {grew} MiB");
}
