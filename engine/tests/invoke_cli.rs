//! `weir invoke` and `weir functions`: trying a function on one local file.

use std::process::Command;

use image::ImageEncoder;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

#[test]
fn invoke_runs_a_function_on_a_file_and_writes_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_fn(1000, 700, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .write_image(img.as_raw(), 1000, 700, image::ExtendedColorType::Rgb8)
        .unwrap();
    let input = dir.path().join("holiday photo.jpg");
    std::fs::write(&input, jpeg).unwrap();
    let out_dir = dir.path().join("out");
    let out = weir()
        .args(["invoke", "image.resize_and_watermark", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out_dir)
        .args(["--param", "sizes=[{name=\"small\",long_edge=300},{name=\"big\",long_edge=2000}]"])
        .args(["--param", "watermark.text=Hello"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("init") && stdout.contains("2 output(s)"), "{stdout}");
    let small = image::open(out_dir.join("holiday photo-small.jpg")).unwrap();
    assert_eq!((small.width(), small.height()), (300, 210));
    let big = image::open(out_dir.join("holiday photo-big.jpg")).unwrap();
    assert_eq!((big.width(), big.height()), (1000, 700), "never upscaled");
}

#[test]
fn invoke_with_no_parameters_makes_the_standard_three_variants() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_fn(2000, 1000, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 60]));
    let input = dir.path().join("photo.jpg");
    img.save(&input).unwrap();
    let out_dir = dir.path().join("out");
    let out = weir()
        .args(["invoke", "image.resize_and_watermark", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (variant, width) in [("thumb", 200), ("medium", 800), ("large", 1600)] {
        assert_eq!(image::open(out_dir.join(format!("photo-{variant}.jpg"))).unwrap().width(), width);
    }
}

#[test]
fn invoke_reports_bad_parameters_and_bad_inputs_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("notes.jpg");
    std::fs::write(&input, "just text").unwrap();
    let out = weir()
        .args(["invoke", "image.resize_and_watermark", "--param", "sises=[]", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `sises`"));
    let out = weir()
        .args(["invoke", "image.resize_and_watermark", "--param", "sizes=[{name=\"a\",long_edge=9}]", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("notes.jpg: not a supported image"), "{stderr}");
}

#[test]
fn functions_lists_every_builtin_with_its_parameters() {
    let out = weir().arg("functions").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for name in ["image.resize_and_watermark", "object.put", "object.copy", "object.delete", "object.manifest"] {
        assert!(stdout.lines().any(|l| l == name), "{name} missing from:\n{stdout}");
    }
    assert!(stdout.contains("long_edge") && stdout.contains("(required)"), "{stdout}");
}
