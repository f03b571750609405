//! The host tier: `cargo test` of the workspace's default members, then a short run of every
//! cargo-fuzz target found under `*/fuzz/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::report::Report;
use crate::util;

/// Seconds each fuzz target runs.
const FUZZ_SECS: u32 = 20;

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn tier(r: &mut Report) {
    println!("==== host tier ====");
    let t0 = std::time::Instant::now();
    let res = util::run(
        Command::new(cargo())
            .current_dir(util::root())
            .args(["test", "--quiet"]),
    );
    match res {
        Ok(()) => r.pass("host: cargo test (workspace default members)"),
        Err(e) => r.fail("host: cargo test (workspace default members)", e),
    }
    println!("host: cargo test took {:.0}s", util::secs(t0));
    fuzz(r);
}

/// Directories `<crate>/fuzz` holding a cargo-fuzz project (a `Cargo.toml`), at most three levels deep.
pub fn fuzz_dirs(root: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let name = e.file_name();
            if !p.is_dir() || name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if name == "fuzz" && p.join("Cargo.toml").is_file() {
                out.push(p.clone());
            } else if depth > 0 {
                walk(&p, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, 3, &mut out);
    out
}

fn nightly() -> bool {
    Command::new("cargo")
        .args(["+nightly", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn fuzz(r: &mut Report) {
    let dirs = fuzz_dirs(&util::root());
    if dirs.is_empty() {
        r.skip(
            "host: fuzz",
            "no cargo-fuzz targets (no */fuzz/Cargo.toml) yet",
        );
        return;
    }
    if !nightly() {
        r.skip(
            "host: fuzz",
            "no nightly toolchain (rustup toolchain install nightly)",
        );
        return;
    }
    if !cargo_fuzz_installed() {
        if let Err(e) =
            util::run(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))
        {
            r.skip(
                "host: fuzz",
                format!("cargo-fuzz missing and its install failed: {e}"),
            );
            return;
        }
    }
    for d in dirs {
        let krate = d.parent().unwrap();
        let rel = krate
            .strip_prefix(util::root())
            .unwrap_or(krate)
            .display()
            .to_string();
        let list = util::output(
            Command::new("cargo")
                .current_dir(krate)
                .args(["+nightly", "fuzz", "list"]),
        );
        let targets: Vec<String> = match list {
            Ok(s) => s
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            Err(e) => {
                r.fail(
                    &format!("host: fuzz {rel}"),
                    format!("cargo fuzz list: {e}"),
                );
                continue;
            }
        };
        if targets.is_empty() {
            r.skip(&format!("host: fuzz {rel}"), "fuzz project has no targets");
        }
        for t in targets {
            let name = format!("host: fuzz {rel}/{t} ({FUZZ_SECS}s)");
            let res = util::run(
                Command::new("cargo")
                    .current_dir(krate)
                    .args(["+nightly", "fuzz", "run", &t, "--"])
                    .arg(format!("-max_total_time={FUZZ_SECS}")),
            );
            match res {
                Ok(()) => r.pass(&name),
                Err(e) => r.fail(&name, e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fuzz_projects_but_not_targets_or_plain_dirs() {
        let root = std::env::temp_dir().join(format!("xtask-fuzz-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in ["a/fuzz", "drivers/b/fuzz", "c/fuzz", "target/x/fuzz"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("a/fuzz/Cargo.toml"), "").unwrap();
        fs::write(root.join("drivers/b/fuzz/Cargo.toml"), "").unwrap();
        fs::write(root.join("target/x/fuzz/Cargo.toml"), "").unwrap();
        // c/fuzz has no Cargo.toml: not a cargo-fuzz project.
        let got = fuzz_dirs(&root);
        assert_eq!(got, vec![root.join("a/fuzz"), root.join("drivers/b/fuzz")]);
        let _ = fs::remove_dir_all(&root);
    }
}
