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
    match cargo_test() {
        Ok((ok, units)) => {
            // Binaries without a test (empty doc-tests, crates with no tests yet) are not results.
            for u in units.iter().filter(|u| u.passed + u.failed > 0 || !u.ok) {
                let name = format!("host: {} ({} tests)", u.name, u.passed + u.failed);
                r.check(&name, u.ok, format!("{} failed", u.failed));
            }
            if !ok && units.iter().all(|u| u.ok) {
                r.fail(
                    "host: cargo test (workspace default members)",
                    "cargo test failed outside any test binary (build error?)",
                );
            }
            if units.is_empty() && ok {
                r.fail("host: cargo test", "no test binary ran");
            }
        }
        Err(e) => r.fail("host: cargo test (workspace default members)", e),
    }
    println!("host: cargo test took {:.0}s", util::secs(t0));
    tool_tests(r);
    crate::toolchain::repair_check(r);
    fuzz(r);
}

/// xtask's tests of its use of host tools (`#[ignore]`d in a plain `cargo test`, where the tool
/// may be missing): the tools are installed like every prerequisite, then the tests run; where
/// they cannot be installed, the check is skipped with the reason.
fn tool_tests(r: &mut Report) {
    const NAME: &str = "host: xtask tests with host tools (cpio, qemu, dpkg)";
    if !util::have("dpkg-query") {
        return r.skip(NAME, "not a Debian host (no dpkg-query)");
    }
    match util::ensure_packages(&["cpio", "qemu-system-x86"]) {
        Ok(util::Prereq::Ready) => {}
        Ok(util::Prereq::Unavailable(why)) => return r.skip(NAME, why),
        Err(e) => return r.fail(NAME, e),
    }
    let mut cmd = Command::new(cargo());
    cmd.current_dir(util::root())
        .args(["test", "-p", "xtask", "--", "--ignored"]);
    match util::output(&mut cmd) {
        Ok(out) => {
            let units = parse_cargo_test(&out);
            let ran: u32 = units.iter().map(|u| u.passed + u.failed).sum();
            let failed: u32 = units.iter().map(|u| u.failed).sum();
            r.check(
                NAME,
                ran >= 3 && failed == 0,
                format!("{ran} ran, {failed} failed:\n{out}"),
            );
        }
        Err(e) => r.fail(NAME, e),
    }
}

/// The result of one test binary (unit tests of a crate, an integration test, doc-tests).
#[derive(Debug, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub ok: bool,
    pub passed: u32,
    pub failed: u32,
}

fn count_before(s: &str, word: &str) -> u32 {
    s.split(';')
        .find_map(|p| p.trim().strip_suffix(word))
        .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Parse `cargo test` output (stdout and stderr merged) into per-binary results.
pub fn parse_cargo_test(out: &str) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut current: Option<String> = None;
    for l in out.lines() {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("Running ") {
            // "unittests src/lib.rs (target/debug/deps/hal-0123abcd)"
            let (what, path) = rest.split_once(" (").unwrap_or((rest, ""));
            let bin = path.trim_end_matches(')').rsplit('/').next().unwrap_or("");
            let bin = bin.rsplit_once('-').map(|(b, _)| b).unwrap_or(bin);
            current = Some(format!("{bin}: {what}"));
        } else if let Some(krate) = t.strip_prefix("Doc-tests ") {
            current = Some(format!("{krate}: doc-tests"));
        } else if let Some(res) = t.strip_prefix("test result: ") {
            let name = current
                .take()
                .unwrap_or_else(|| "(unnamed test binary)".into());
            units.push(Unit {
                name,
                ok: res.starts_with("ok"),
                passed: count_before(res, "passed"),
                failed: count_before(res, "failed"),
            });
        }
    }
    units
}

/// Run `cargo test --no-fail-fast` on the default members, echoing its output; returns whether
/// it succeeded and the per-binary results.
fn cargo_test() -> Result<(bool, Vec<Unit>), String> {
    let (mut rd, wr) = std::io::pipe().map_err(|e| e.to_string())?;
    let wr2 = wr.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(cargo());
    cmd.current_dir(util::root())
        .args(["test", "--no-fail-fast"])
        .stdout(wr)
        .stderr(wr2);
    eprintln!("+ {}", util::show_cmd(&cmd));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    drop(cmd);
    let mut all = String::new();
    let mut buf = [0u8; 8192];
    loop {
        use std::io::{Read, Write};
        match rd.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = std::io::stdout().write_all(&buf[..n]);
                all.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    }
    let st = child.wait().map_err(|e| e.to_string())?;
    Ok((st.success(), parse_cargo_test(&all)))
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
        // A fresh machine has only the toolchain rust-toolchain.toml names; cargo-fuzz needs a
        // nightly one (sanitizer flags). Install it as the set-up of every other prerequisite does.
        println!(
            "xtask: fuzzing needs a nightly toolchain and there is none: installing it with rustup"
        );
        let installed = util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]));
        if let Err(e) = installed {
            r.skip(
                "host: fuzz",
                format!("no nightly toolchain, and `rustup toolchain install nightly` failed: {e}"),
            );
            return;
        }
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
    fn cargo_test_output_parsing() {
        let out = "   Compiling hal v0.1.0
     Running unittests src/lib.rs (target/debug/deps/hal-1a2b3c4d)

running 2 tests
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running tests/model.rs (target/x/debug/deps/model-99aa)
test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s
   Doc-tests xenidc
test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
";
        let u = parse_cargo_test(out);
        assert_eq!(
            u,
            vec![
                Unit {
                    name: "hal: unittests src/lib.rs".into(),
                    ok: true,
                    passed: 2,
                    failed: 0
                },
                Unit {
                    name: "model: tests/model.rs".into(),
                    ok: false,
                    passed: 3,
                    failed: 1
                },
                Unit {
                    name: "xenidc: doc-tests".into(),
                    ok: true,
                    passed: 0,
                    failed: 0
                },
            ]
        );
    }

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
