//! Says so when the JPEG codec will be slow. mozjpeg-sys builds libjpeg-turbo's SIMD
//! kernels only when `nasm` is on PATH, and when it is not, its warning is one cargo
//! hides (it comes from a dependency): a new user just gets a slower build. This runs
//! mozjpeg-sys's own check (`nasm -v`, refusing 0.x) so that the build prints it and
//! `weir run` logs it.

use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(weir_jpeg_without_simd)");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch != "x86_64" && arch != "x86" {
        // libjpeg-turbo's ARM kernels are C intrinsics and GNU assembler: no nasm needed.
        return;
    }
    let nasm = Command::new("nasm").arg("-v").output();
    let usable =
        nasm.is_ok_and(|out| out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("NASM version 0."));
    if !usable {
        println!(
            "cargo::warning=nasm is not installed, so the JPEG codec is built without its SIMD kernels and \
             the image functions run about 10% slower. To fix: apt-get install nasm (or your system's package), \
             then cargo clean -p mozjpeg-sys and build again."
        );
        println!("cargo::rustc-cfg=weir_jpeg_without_simd");
    }
}
