//! The Rust toolchain the kernel builds with: the one `rust-toolchain.toml` names, with the
//! targets and components it lists.
//!
//! rustup reads `rust-toolchain.toml` when it *installs* a toolchain, but it does not add a target
//! or component to a toolchain that already exists (a machine with the default `stable` has no
//! `x86_64-unknown-none`), and xtask runs the toolchain's `cargo` by path (`$CARGO`), past the
//! rustup proxy. So [`ensure`] checks what the toolchain has and adds what is missing with
//! `rustup target add` / `rustup component add`, one progress line each, before the kernel is
//! built. Where it cannot (no rustup), the error says what is missing and the command that adds it.
//!
//! [`repair_check`] is the host tier's proof: a throwaway `RUSTUP_HOME` whose toolchain lacks the
//! kernel target, and `cargo xtask build` run in it through the rustup proxy, as a newcomer runs it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::build::KERNEL_TARGET;
use crate::report::Report;
use crate::util;

/// What `rust-toolchain.toml` asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub channel: String,
    pub targets: Vec<String>,
    pub components: Vec<String>,
}

/// Parse the `[toolchain]` table of a `rust-toolchain.toml` (the subset this project uses: string
/// values and arrays of strings).
pub fn parse(text: &str) -> Result<Wanted, String> {
    let mut w = Wanted::default();
    let mut in_table = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            in_table = line == "[toolchain]";
            continue;
        }
        if !in_table {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("rust-toolchain.toml line {}: expected key = value", n + 1))?;
        let strings = || -> Vec<String> {
            value
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|s| s.trim().trim_matches('"').to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        match key.trim() {
            "channel" => w.channel = strings().into_iter().next().unwrap_or_default(),
            "targets" => w.targets = strings(),
            "components" => w.components = strings(),
            _ => {}
        }
    }
    if w.channel.is_empty() {
        return Err("rust-toolchain.toml names no channel".into());
    }
    Ok(w)
}

/// The installed items `rustup <kind> list --installed` printed that `wanted` lacks. Component
/// lines carry the host triple (`clippy-x86_64-unknown-linux-gnu`); older rustups add `-preview`.
pub fn missing(wanted: &[String], installed: &str) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| {
            !installed.lines().map(str::trim).any(|l| {
                l == w.as_str()
                    || l.strip_prefix(w.as_str())
                        .is_some_and(|rest| rest.starts_with('-'))
            })
        })
        .cloned()
        .collect()
}

/// The toolchain rustup resolves in the workspace (the `rust-toolchain.toml` override, or
/// `RUSTUP_TOOLCHAIN` when the proxy set it).
fn active(rustup: &Path) -> Result<String, String> {
    let out = util::output(
        Command::new(rustup)
            .current_dir(util::root())
            .args(["show", "active-toolchain"]),
    )?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "`rustup show active-toolchain` printed nothing".into())
}

fn rustup_path() -> Option<PathBuf> {
    if util::have("rustup") {
        return Some(PathBuf::from("rustup"));
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let p = home.join("bin").join("rustup");
    p.is_file().then_some(p)
}

/// Whether the toolchain that runs xtask's `cargo` has `target` (its sysroot has the target's
/// standard library).
fn sysroot_has(target: &str) -> bool {
    let cargo = PathBuf::from(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let rustc = cargo.with_file_name("rustc");
    let rustc = if rustc.is_file() {
        rustc
    } else {
        PathBuf::from("rustc")
    };
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .is_some_and(|s| Path::new(&s).join("lib/rustlib").join(target).is_dir())
}

/// Make sure the toolchain has what `rust-toolchain.toml` lists (once per xtask run).
pub fn ensure() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(ensure_now).clone()
}

fn ensure_now() -> Result<(), String> {
    let file = util::root().join("rust-toolchain.toml");
    let text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let wanted = parse(&text)?;
    let Some(rustup) = rustup_path() else {
        let lacking: Vec<&String> = wanted.targets.iter().filter(|t| !sysroot_has(t)).collect();
        if lacking.is_empty() {
            return Ok(());
        }
        let list: Vec<&str> = lacking.iter().map(|s| s.as_str()).collect();
        return Err(format!(
            "the Rust toolchain lacks the target {} that the kernel builds for, and rustup is not on PATH to add it: install rustup (https://rustup.rs) and run `rustup target add {}`, or install that target's standard library for your toolchain",
            list.join(" "),
            list.join(" ")
        ));
    };
    let tc = active(&rustup)?;
    for (kind, items) in [
        ("target", &wanted.targets),
        ("component", &wanted.components),
    ] {
        let installed = util::output(Command::new(&rustup).current_dir(util::root()).args([
            kind,
            "list",
            "--installed",
            "--toolchain",
            &tc,
        ]))?;
        let lacking = missing(items, &installed);
        if lacking.is_empty() {
            continue;
        }
        println!(
            "xtask: the toolchain {tc} lacks the {kind}(s) {} named in rust-toolchain.toml: adding with rustup",
            lacking.join(" ")
        );
        let mut cmd = Command::new(&rustup);
        cmd.current_dir(util::root())
            .args([kind, "add", "--toolchain", &tc])
            .args(&lacking);
        util::run(&mut cmd).map_err(|e| {
            format!(
                "the toolchain {tc} lacks the {kind}(s) {} and adding them failed ({e}); run `rustup {kind} add --toolchain {tc} {}` by hand",
                lacking.join(" "),
                lacking.join(" ")
            )
        })?;
    }
    Ok(())
}

// --- the host tier's proof ----------------------------------------------------------------------

/// Metadata files rustup rewrites when it adds a component: copied, not hard-linked, into the
/// throwaway toolchain so the real one is never touched.
const REWRITTEN: &[&str] = &[
    "lib/rustlib/components",
    "lib/rustlib/multirust-config.toml",
    "lib/rustlib/multirust-channel-manifest.toml",
    "lib/rustlib/rust-installer-version",
];

/// A copy of the toolchain `tc` (hard links, except [`REWRITTEN`]) under a new `RUSTUP_HOME` at
/// `home`, without the kernel target.
fn toolchain_without_target(real_home: &Path, tc: &str, home: &Path) -> Result<PathBuf, String> {
    let _ = fs::remove_dir_all(home);
    fs::create_dir_all(home.join("toolchains")).map_err(|e| e.to_string())?;
    let src = fs::canonicalize(real_home.join("toolchains").join(tc))
        .map_err(|e| format!("toolchain {tc} under {}: {e}", real_home.display()))?;
    let dst = home.join("toolchains").join(tc);
    util::run(Command::new("cp").arg("-al").arg(&src).arg(&dst))?;
    for f in REWRITTEN {
        let d = dst.join(f);
        if d.exists() {
            fs::remove_file(&d).map_err(|e| e.to_string())?;
            fs::copy(src.join(f), &d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
    }
    let rustlib = dst.join("lib/rustlib");
    let _ = fs::remove_dir_all(rustlib.join(KERNEL_TARGET));
    let _ = fs::remove_file(rustlib.join(format!("manifest-rust-std-{KERNEL_TARGET}")));
    let comps = rustlib.join("components");
    let text = fs::read_to_string(&comps).map_err(|e| format!("{}: {e}", comps.display()))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| *l != format!("rust-std-{KERNEL_TARGET}"))
        .collect();
    fs::write(&comps, kept.join("\n") + "\n").map_err(|e| e.to_string())?;
    // rustup's own record of the installed components (what `rustup target list` reads).
    let cfg = rustlib.join("multirust-config.toml");
    if let Ok(text) = fs::read_to_string(&cfg) {
        fs::write(&cfg, without_component(&text, "rust-std", KERNEL_TARGET))
            .map_err(|e| e.to_string())?;
    }
    let settings = real_home.join("settings.toml");
    if settings.is_file() {
        fs::copy(&settings, home.join("settings.toml")).map_err(|e| e.to_string())?;
    }
    Ok(dst)
}

/// `multirust-config.toml` without the `[[components]]` entry of `pkg` for `target`.
pub fn without_component(text: &str, pkg: &str, target: &str) -> String {
    let mut parts = text.split("[[components]]");
    let mut out = parts.next().unwrap_or("").to_string();
    for p in parts {
        let is = |k: &str, v: &str| p.lines().any(|l| l.trim() == format!("{k} = \"{v}\""));
        if !(is("pkg", pkg) && is("target", target)) {
            out.push_str("[[components]]");
            out.push_str(p);
        }
    }
    out
}

/// Host-tier check `host: toolchain repair`: in a throwaway `RUSTUP_HOME` whose toolchain lacks
/// `x86_64-unknown-none` (as `rustup target remove` leaves it), `cargo xtask build` through the
/// rustup proxy adds the target and builds the kernel.
pub fn repair_check(r: &mut Report) {
    const NAME: &str = "host: toolchain repair (cargo xtask build adds the missing kernel target)";
    let t0 = std::time::Instant::now();
    let Some(rustup) = rustup_path() else {
        r.skip(NAME, "rustup is not installed here");
        return;
    };
    let real_home = match std::env::var_os("RUSTUP_HOME") {
        Some(h) => PathBuf::from(h),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".rustup"),
            None => {
                r.skip(NAME, "neither RUSTUP_HOME nor HOME is set");
                return;
            }
        },
    };
    let proxy = rustup.with_file_name("cargo");
    let proxy = if proxy.is_file() {
        proxy
    } else {
        PathBuf::from("cargo")
    };
    let tc = match active(&rustup) {
        Ok(t) => t,
        Err(e) => return r.fail(NAME, e),
    };
    let dir = util::target().join("toolchain-repair");
    let home = dir.join("rustup-home");
    if let Err(e) = toolchain_without_target(&real_home, &tc, &home) {
        return r.fail(NAME, format!("making the throwaway toolchain: {e}"));
    }
    let in_home = |cmd: &mut Command| {
        cmd.current_dir(util::root())
            .env("RUSTUP_HOME", &home)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .env("CARGO_TARGET_DIR", dir.join("target"));
    };
    // The precondition: that toolchain really lacks the target.
    let mut list = Command::new(&rustup);
    list.args(["target", "list", "--installed", "--toolchain", &tc]);
    in_home(&mut list);
    match util::output(&mut list) {
        Ok(s) if s.lines().any(|l| l.trim() == KERNEL_TARGET) => {
            return r.fail(NAME, "the throwaway toolchain still has the target");
        }
        Ok(_) => {}
        Err(e) => return r.fail(NAME, e),
    }
    let mut build = Command::new(&proxy);
    build.args(["xtask", "build"]);
    in_home(&mut build);
    println!(
        "host: toolchain repair: {} (RUSTUP_HOME={})",
        util::show_cmd(&build),
        home.display()
    );
    let out = build.output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return r.fail(NAME, format!("cannot start cargo: {e}")),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = text.contains(&format!("lacks the target(s) {KERNEL_TARGET}"));
    let elf = dir
        .join("target")
        .join(KERNEL_TARGET)
        .join("release/usbdom");
    let now_has = util::output(&mut list)
        .map(|s| s.lines().any(|l| l.trim() == KERNEL_TARGET))
        .unwrap_or(false);
    println!(
        "host: toolchain repair took {:.0}s (exit {})",
        util::secs(t0),
        out.status
    );
    if !(out.status.success() && said && now_has && elf.is_file()) {
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return r.fail(
            NAME,
            format!(
                "exit {}, progress line {}, target added {now_has}, kernel {}; last lines:\n{}",
                out.status,
                if said { "printed" } else { "missing" },
                if elf.is_file() { "built" } else { "missing" },
                tail.join("\n")
            ),
        );
    }
    let _ = fs::remove_dir_all(&home);
    r.pass(NAME);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_projects_file() {
        let w = parse(include_str!("../../rust-toolchain.toml")).unwrap();
        assert_eq!(w.channel, "stable");
        assert_eq!(w.targets, vec!["x86_64-unknown-none".to_string()]);
        assert_eq!(w.components, vec!["rustfmt".to_string(), "clippy".into()]);
    }

    #[test]
    fn parse_errors_and_other_tables() {
        assert!(parse("[toolchain]\ntargets = [\"a\"]\n").is_err());
        assert!(parse("[toolchain]\nchannel\n").is_err());
        let w = parse("# c\n[other]\nchannel = \"x\"\n[toolchain]\nchannel = \"1.95\" # pin\n")
            .unwrap();
        assert_eq!(w.channel, "1.95");
        assert!(w.targets.is_empty());
    }

    #[test]
    fn a_component_leaves_rustups_record() {
        let cfg = "config_version = \"1\"\n\n[[components]]\npkg = \"rust-std\"\ntarget = \"x86_64-unknown-none\"\nis_extension = false\n\n[[components]]\npkg = \"rust-std\"\ntarget = \"x86_64-unknown-linux-gnu\"\nis_extension = false\n";
        let out = without_component(cfg, "rust-std", "x86_64-unknown-none");
        assert!(!out.contains("x86_64-unknown-none"), "{out}");
        assert!(
            out.contains("target = \"x86_64-unknown-linux-gnu\""),
            "{out}"
        );
        assert!(out.starts_with("config_version = \"1\""), "{out}");
        assert_eq!(out.matches("[[components]]").count(), 1);
    }

    #[test]
    fn missing_items() {
        let want = vec![
            "x86_64-unknown-none".to_string(),
            "clippy".into(),
            "rustfmt".into(),
        ];
        let installed = "x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrustfmt-preview-x86_64-unknown-linux-gnu\n";
        assert_eq!(missing(&want, installed), vec!["x86_64-unknown-none"]);
        assert_eq!(
            missing(&want, "x86_64-unknown-none\nclippy-x\nrustfmt-x\n"),
            Vec::<String>::new()
        );
        // A prefix is not a match: `clippy` is not `clippyx`.
        assert_eq!(missing(&["clippy".into()], "clippyx-y\n"), vec!["clippy"]);
    }
}
