//! `cargo xtask build`: the kernel ELF for `x86_64-unknown-none`, and its stripped size.
//!
//! The kernel is built into the workspace's normal `target/` (whatever `CARGO_TARGET_DIR` xtask
//! itself was built with). Linker flags (the linker script) come from the kernel's own `build.rs`
//! (`cargo:rustc-link-arg`), so a plain `cargo build` of the package is enough here.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::util;

pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

pub struct Kernel {
    pub elf: PathBuf,
    pub stripped: PathBuf,
    pub size: u64,
    pub stripped_size: u64,
}

/// Build the kernel and a stripped copy of it.
pub fn kernel() -> Result<Kernel, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    util::run(
        Command::new(cargo)
            .current_dir(util::root())
            .env("CARGO_TARGET_DIR", util::target())
            .args([
                "build",
                "-p",
                "usbdom",
                "--release",
                "--target",
                KERNEL_TARGET,
            ]),
    )?;
    let elf = util::target()
        .join(KERNEL_TARGET)
        .join("release")
        .join("usbdom");
    let stripped = elf.with_file_name("usbdom.stripped");
    util::run(Command::new("strip").arg("-o").arg(&stripped).arg(&elf))?;
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
