//! `cargo xtask bench`: runs the benchmarks the crates expose and reports costs side by side as
//! ratios from one run (never timed assertions).
//!
//! Contract for a benchmark: an example named `bench_<name>` in any workspace package
//! (`<crate>/examples/bench_<name>.rs`), run as
//! - `bench_<name> list` → prints its variant names, one per line; the first is the baseline;
//! - `bench_<name> <variant> <iterations>` → does `iterations` requests of that variant and exits 0.
//!
//! For each variant xtask measures the cost per request as the *difference* between two iteration
//! counts (so setup cost cancels): instructions with `valgrind --tool=callgrind` and nanoseconds
//! from native wall-clock runs (best of 3), then prints each variant's ratio to the baseline.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::report::Report;
use crate::util;

// Declared here rather than in main.rs (another engineer's file): xtask/src/bench_qemu.rs.
#[path = "bench_qemu.rs"]
pub mod bench_qemu;
#[path = "bench_xen.rs"]
pub mod bench_xen;

const N_SMALL: u64 = 1_000;
const N_LARGE: u64 = 6_000;

/// (package name, example name, crate directory) of every `*/examples/bench_*.rs` in the workspace.
pub fn find_benches(root: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    for top in ["drivers", "tools"] {
        if let Ok(rd) = fs::read_dir(root.join(top)) {
            dirs.extend(rd.flatten().map(|e| e.path()));
        }
    }
    if let Ok(rd) = fs::read_dir(root) {
        dirs.extend(rd.flatten().map(|e| e.path()));
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        let (Ok(toml), Ok(ex)) = (
            fs::read_to_string(d.join("Cargo.toml")),
            fs::read_dir(d.join("examples")),
        ) else {
            continue;
        };
        let Some(pkg) = package_name(&toml) else {
            continue;
        };
        let mut names: Vec<String> = ex
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("bench_")
                    .and_then(|r| r.strip_suffix(".rs"))
                    .map(|r| format!("bench_{r}"))
            })
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|n| (pkg.clone(), n, d.clone())));
    }
    out
}

/// The `name = "..."` of the `[package]` section of a Cargo.toml.
pub fn package_name(toml: &str) -> Option<String> {
    let mut in_pkg = false;
    for l in toml.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            in_pkg = l == "[package]";
        } else if in_pkg {
            if let Some(v) = l.strip_prefix("name") {
                let v = v.trim_start().strip_prefix('=')?.trim();
                return Some(v.trim_matches('"').to_string());
            }
        }
    }
    None
}

/// The `required-features` of the `[[example]]` named `example` in a Cargo.toml.
pub fn required_features(toml: &str, example: &str) -> Vec<String> {
    let mut in_ex = false;
    let mut name: Option<String> = None;
    let mut feats: Vec<String> = Vec::new();
    let mut found = Vec::new();
    let mut flush = |name: &mut Option<String>, feats: &mut Vec<String>| {
        if name.as_deref() == Some(example) {
            found = std::mem::take(feats);
        }
        *name = None;
        feats.clear();
    };
    for l in toml.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            flush(&mut name, &mut feats);
            in_ex = l == "[[example]]";
        } else if in_ex {
            if let Some((k, v)) = l.split_once('=') {
                match k.trim() {
                    "name" => name = Some(v.trim().trim_matches('"').to_string()),
                    "required-features" => {
                        feats = v
                            .trim()
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .split(',')
                            .map(|f| f.trim().trim_matches('"').to_string())
                            .filter(|f| !f.is_empty())
                            .collect()
                    }
                    _ => {}
                }
            }
        }
    }
    flush(&mut name, &mut feats);
    found
}

/// The instruction count callgrind reports (`==pid== Collected : N`).
pub fn parse_collected(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|v| v.trim().parse().ok())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(util::target)
}

fn instructions(bin: &Path, variant: &str, n: u64) -> Result<u64, String> {
    let out_file = std::env::temp_dir().join(format!("xtask-callgrind-{}.out", std::process::id()));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(bin)
        .args([variant, &n.to_string()])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    let _ = fs::remove_file(&out_file);
    if !out.status.success() {
        return Err(format!(
            "valgrind run of {variant} {n} failed: {}",
            out.status
        ));
    }
    parse_collected(&String::from_utf8_lossy(&out.stderr))
        .ok_or_else(|| "no `Collected :` in callgrind output".into())
}

fn nanos(bin: &Path, variant: &str, n: u64) -> Result<f64, String> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let st = Command::new(bin)
            .args([variant, &n.to_string()])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("{variant} {n}: {st}"));
        }
        best = best.min(t0.elapsed().as_nanos() as f64);
    }
    Ok(best)
}

/// Native nanoseconds per request: the difference of two best-of-3 wall-clock runs, with the
/// iteration count scaled up from [`N_LARGE`] until the larger run takes at least ~0.25 s (so
/// process start-up and timer noise are small beside it).
fn ns_per_request(bin: &Path, variant: &str) -> Result<f64, String> {
    let mut n = N_LARGE;
    let mut t = nanos(bin, variant, n)?;
    while t < 250e6 && n < 50_000_000 {
        let scale = (300e6 / t.max(1e5)).clamp(2.0, 100.0);
        n = ((n as f64 * scale) as u64).min(50_000_000);
        t = nanos(bin, variant, n)?;
    }
    let small = n / 6;
    Ok((t - nanos(bin, variant, small)?) / (n - small) as f64)
}

pub fn cmd_bench(r: &mut Report) {
    // `USBDOM_BENCH=micro`, `=qemu` or `=xen` runs only that part.
    let only = std::env::var("USBDOM_BENCH").unwrap_or_default();
    if only.is_empty() || only == "micro" {
        micro(r);
    }
    if only.is_empty() || only == "qemu" {
        bench_qemu::run(r);
    }
    if only.is_empty() || only == "xen" {
        bench_xen::run(r);
    }
}

fn micro(r: &mut Report) {
    println!("==== bench ====");
    let benches = find_benches(&util::root());
    if benches.is_empty() {
        r.skip(
            "bench",
            "no benchmark exposed yet (want `<crate>/examples/bench_<name>.rs`, see xtask/src/bench.rs)",
        );
    }
    // The first benchmark the harness was written for: xenidc's ring consume+validate+respond.
    if !benches.iter().any(|(p, _, _)| p == "xenidc") {
        r.skip(
            "bench: xenidc ring consume+validate+respond",
            "xenidc exposes no examples/bench_*.rs yet",
        );
    }
    // Instruction counts need valgrind (a fresh machine lacks it): install it like every other
    // prerequisite; where that cannot be done the table says so per row.
    if let Ok(util::Prereq::Unavailable(why)) | Err(why) = util::ensure_packages(&["valgrind"]) {
        println!("bench: no instruction counts: {why}");
    }
    let have_valgrind = util::have("valgrind");
    for (pkg, ex, dir) in benches {
        let name = format!("bench: {pkg}/{ex}");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(util::root())
            .args(["build", "--release", "-p", &pkg, "--example", &ex]);
        let feats = required_features(
            &fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default(),
            &ex,
        );
        if !feats.is_empty() {
            build.arg("--features").arg(feats.join(","));
        }
        if let Err(e) = util::run(&mut build) {
            r.fail(&name, e);
            continue;
        }
        let bin = target_dir().join("release/examples").join(&ex);
        let variants = match util::output(Command::new(&bin).arg("list")) {
            Ok(v) => v
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>(),
            Err(e) => {
                r.fail(&name, e);
                continue;
            }
        };
        if variants.is_empty() {
            r.fail(&name, "`list` printed no variants");
            continue;
        }
        let dn = (N_LARGE - N_SMALL) as f64;
        let mut rows = Vec::new();
        let mut err = None;
        for v in &variants {
            let ns = ns_per_request(&bin, v);
            let ir = if have_valgrind {
                instructions(&bin, v, N_LARGE).and_then(|a| {
                    Ok(Some(
                        (a as f64 - instructions(&bin, v, N_SMALL)? as f64) / dn,
                    ))
                })
            } else {
                Ok(None)
            };
            match (ns, ir) {
                (Ok(ns), Ok(ir)) => rows.push((v.clone(), ns, ir)),
                (Err(e), _) | (_, Err(e)) => err = Some(e),
            }
        }
        if let Some(e) = err {
            r.fail(&name, e);
            continue;
        }
        println!(
            "{name} (per request; instructions: difference of {N_LARGE} and {N_SMALL} iterations under callgrind; ns: native, best of 3, load {}):",
            bench_qemu::load()
        );
        let (_, base_ns, base_ir) = rows[0].clone();
        for (v, ns, ir) in &rows {
            let ir_s = match (ir, base_ir) {
                (Some(i), Some(b)) => format!("{i:9.1} instr  (x{:.2})", i / b),
                _ => "   (valgrind missing: no instruction count)".into(),
            };
            println!("  {v:24} {ns:9.1} ns  (x{:.2})  {ir_s}", ns / base_ns);
        }
        r.pass(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_name_from_toml() {
        let t = "[package]\nname = \"xenidc\"\nversion = \"1\"\n[dependencies]\nname = \"x\"\n";
        assert_eq!(package_name(t).as_deref(), Some("xenidc"));
        assert_eq!(package_name("[workspace]\nname = \"no\"\n"), None);
    }

    #[test]
    fn example_required_features() {
        let t = "[package]\nname = \"xhci\"\n[features]\nsim = []\n[[example]]\nname = \"other\"\nrequired-features = [\"x\"]\n[[example]]\nname = \"bench_xhci\"\nrequired-features = [\"sim\", \"y\"]\n[dev-dependencies]\n";
        assert_eq!(required_features(t, "bench_xhci"), vec!["sim", "y"]);
        assert_eq!(required_features(t, "other"), vec!["x"]);
        assert!(required_features(t, "none").is_empty());
    }

    #[test]
    fn callgrind_summary_parsing() {
        let s = "==12== Events    : Ir\n==12== Collected : 123456\n==12==\n";
        assert_eq!(parse_collected(s), Some(123456));
        assert_eq!(parse_collected("nothing"), None);
    }

    #[test]
    fn finds_bench_examples() {
        let root = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("xenidc/examples")).unwrap();
        fs::create_dir_all(root.join("drivers/xhci/examples")).unwrap();
        fs::write(
            root.join("xenidc/Cargo.toml"),
            "[package]\nname = \"xenidc\"\n",
        )
        .unwrap();
        fs::write(root.join("xenidc/examples/bench_ring.rs"), "").unwrap();
        fs::write(root.join("xenidc/examples/other.rs"), "").unwrap();
        fs::write(
            root.join("drivers/xhci/Cargo.toml"),
            "[package]\nname = \"xhci\"\n",
        )
        .unwrap();
        fs::write(root.join("drivers/xhci/examples/bench_trb.rs"), "").unwrap();
        let got: Vec<(String, String)> = find_benches(&root)
            .into_iter()
            .map(|(p, e, _)| (p, e))
            .collect();
        assert_eq!(
            got,
            vec![
                ("xhci".to_string(), "bench_trb".to_string()),
                ("xenidc".to_string(), "bench_ring".to_string())
            ]
        );
        let _ = fs::remove_dir_all(&root);
    }
}
