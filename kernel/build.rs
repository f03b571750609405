//! Links the kernel with the boot crate's linker script (non-PIE, image at 1 MiB) when building for
//! the bare-metal target. `cargo build -p usbdom --target x86_64-unknown-none --release` is enough;
//! nothing needs to be passed by the caller.
use std::path::PathBuf;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let script = dir.join("..").join("boot").join("linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    if target == "x86_64-unknown-none" {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-znostart-stop-gc");
    }
}
