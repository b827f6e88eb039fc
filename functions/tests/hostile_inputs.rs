//! Hostile inputs end in a clear permanent error, never a panic and never a large
//! allocation: the process's peak RSS is checked after all of them.

use image::ImageEncoder;
use weir_functions::{Context, Item, Metadata, Params, Payload, Registry, Stores};

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose header claims `w` × `h`, with a real (tiny) compressed stream.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (*b"IHDR", [w.to_be_bytes(), h.to_be_bytes()].concat().into_iter().chain([8, 2, 0, 0, 0]).collect::<Vec<u8>>()),
        (*b"IDAT", vec![0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01]),
        (*b"IEND", vec![]),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(&kind);
        out.extend_from_slice(&data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    out
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
    let mut bad_crc = png_bomb(10, 10);
    bad_crc[29] ^= 0xff;
    let before = peak_rss_mib();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zero.jpg", vec![], "empty file"),
        ("page.jpg", b"<!doctype html><html></html>".to_vec(), "not a supported image"),
        ("truncated.jpg", good[..good.len() / 2].to_vec(), "truncated"),
        ("header-only.jpg", good[..160].to_vec(), "zero.jpg"),
        ("huge.jpg", huge_jpeg, "over max_pixels"),
        ("bomb.png", png_bomb(30_000, 30_000), "900000000 pixels, over max_pixels"),
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
