//! `cargo xtask build`: the kernel ELF for `x86_64-unknown-none`, and its stripped size.
//!
//! The kernel is built into [`util::target`] (`CARGO_TARGET_DIR`, else the workspace's `target/`),
//! after [`crate::toolchain::ensure`] made sure the toolchain has the kernel target. Linker flags (the linker script) come from the kernel's own `build.rs`
//! (`cargo:rustc-link-arg`), so a plain `cargo build` of the package is enough here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util;

pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

pub struct Kernel {
    pub elf: PathBuf,
    pub stripped: PathBuf,
    pub size: u64,
    pub stripped_size: u64,
}

/// `cargo build --release -p <package> --target <target>` in the workspace, then a stripped copy
/// of its binary `<bin>` beside it (`<bin>.stripped`). Returns (binary, stripped copy).
pub fn release_stripped(
    package: &str,
    target: &str,
    bin: &str,
) -> Result<(PathBuf, PathBuf), String> {
    release_stripped_in(&util::target(), package, target, bin, &[])
}

/// [`release_stripped`] into target directory `dir`, with extra cargo arguments (features).
fn release_stripped_in(
    dir: &Path,
    package: &str,
    target: &str,
    bin: &str,
    extra: &[&str],
) -> Result<(PathBuf, PathBuf), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    util::run(
        Command::new(cargo)
            .current_dir(util::root())
            .env("CARGO_TARGET_DIR", dir)
            .args(["build", "-p", package, "--release", "--target", target])
            .args(extra),
    )?;
    let elf = dir.join(target).join("release").join(bin);
    let stripped = elf.with_file_name(format!("{bin}.stripped"));
    util::run(Command::new("strip").arg("-o").arg(&stripped).arg(&elf))?;
    Ok((elf, stripped))
}

/// Build the production kernel (no self-tests) and a stripped copy of it.
pub fn kernel() -> Result<Kernel, String> {
    kernel_in(&util::target(), &[])
}

/// Build the test image: the kernel with its self-tests (`--features selftest`, for the qemu
/// tier and the QEMU bench), in its own target directory (`target/selftest/`) so that neither
/// build undoes the other's.
pub fn kernel_selftest() -> Result<Kernel, String> {
    kernel_in(
        &util::target().join("selftest"),
        &["--features", "selftest"],
    )
}

fn kernel_in(dir: &Path, extra: &[&str]) -> Result<Kernel, String> {
    crate::toolchain::ensure()?;
    // `strip` (binutils) makes the stripped copy.
    if let util::Prereq::Unavailable(why) = util::ensure_packages(&["binutils"])? {
        return Err(format!("cannot make the stripped kernel: {why}"));
    }
    let (elf, stripped) = release_stripped_in(dir, "usbdom", KERNEL_TARGET, "usbdom", extra)?;
    let size = fs::metadata(&elf)
        .map_err(|e| format!("{}: {e}", elf.display()))?
        .len();
    let stripped_size = fs::metadata(&stripped)
        .map_err(|e| format!("{}: {e}", stripped.display()))?
        .len();
    Ok(Kernel {
        elf,
        stripped,
        size,
        stripped_size,
    })
}

pub fn cmd_build() -> Result<(), String> {
    let k = kernel()?;
    println!("kernel ELF: {} ({} bytes)", k.elf.display(), k.size);
    println!(
        "stripped:   {} ({} bytes, {:.1} KiB)",
        k.stripped.display(),
        k.stripped_size,
        k.stripped_size as f64 / 1024.0
    );
    Ok(())
}
