//! Small helpers shared by every xtask command: paths, running commands, apt prerequisites,
//! checksums and input-keyed caching.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, UNIX_EPOCH};

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The target directory for the kernel, the tiers' caches and logs: `CARGO_TARGET_DIR` when it is
/// set (as for the rest of the workspace), else the workspace's `target/`.
pub fn target() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                root().join(d)
            }
        }
        _ => root().join("target"),
    }
}

/// Format a command line for logs and diagnostics (shell-quoted where needed).
pub fn show_cmd(cmd: &Command) -> String {
    let mut s = quote(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(&a.to_string_lossy()));
    }
    s
}

/// Quote one word for a POSIX shell if it needs it.
pub fn quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// Run a command with inherited stdio; error if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = show_cmd(cmd);
    eprintln!("+ {shown}");
    let st = cmd
        .status()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed: {st}"))
    }
}

/// Run a command and capture its stdout (stderr inherited).
pub fn output(cmd: &mut Command) -> Result<String, String> {
    output_bytes(cmd).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// Run a command and capture its stdout as bytes (stderr inherited).
pub fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let shown = show_cmd(cmd);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{shown}` failed: {}", out.status));
    }
    Ok(out.stdout)
}

/// Whether `prog` is found on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Whether we run as root (needed to install packages).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Debian packages not installed (dpkg says so).
pub fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .stderr(Stdio::null())
                .output();
            match out {
                Ok(o) => !String::from_utf8_lossy(&o.stdout).contains("install ok installed"),
                Err(_) => true,
            }
        })
        .map(|p| p.to_string())
        .collect()
}

/// Outcome of making sure packages are present.
pub enum Prereq {
    Ready,
    /// Cannot install (not root, no apt): the tier is skipped with this reason.
    Unavailable(String),
}

/// Make sure the Debian packages are installed: check with dpkg, `apt-get update` and install only
/// what is missing. Not being root (or having no apt) gives `Unavailable`; an apt failure is an error.
pub fn ensure_packages(pkgs: &[&str]) -> Result<Prereq, String> {
    let missing = missing_packages(pkgs);
    if missing.is_empty() {
        return Ok(Prereq::Ready);
    }
    if !have("apt-get") || !is_root() {
        return Ok(Prereq::Unavailable(format!(
            "missing Debian packages {} and cannot install them (need root and apt-get)",
            missing.join(" ")
        )));
    }
    eprintln!("xtask: installing missing packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    let mut spec: Vec<String> = missing.clone();
    // qemu-utils comes from bookworm-backports on these machines; qemu-system-x86 needs the
    // bookworm version beside it.
    if missing.iter().any(|p| p == "qemu-system-x86") {
        spec.retain(|p| p != "qemu-utils");
        spec.push("qemu-utils/bookworm".into());
    }
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--allow-downgrades",
        ])
        .args(&spec))?;
    let still = missing_packages(pkgs);
    if still.is_empty() {
        Ok(Prereq::Ready)
    } else {
        Err(format!("apt-get did not install {}", still.join(" ")))
    }
}

/// FNV-1a, 64 bit, over a byte slice (continuing from `h`; start with [`FNV_OFFSET`]).
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub fn fnv1a64(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Deterministic pseudo-random bytes (xorshift64*), for disk images of known content.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        v.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A cache key part describing a file: path, size and modification time (or "absent").
pub fn file_key(p: &Path) -> String {
    match fs::metadata(p) {
        Ok(m) => {
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("{}:{}:{}", p.display(), m.len(), t)
        }
        Err(_) => format!("{}:absent", p.display()),
    }
}

/// Build `out` with `build` unless its stamp file records the same `key` and `out` exists.
/// Returns whether a rebuild happened.
pub fn cached(
    out: &Path,
    key: &str,
    build: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<bool, String> {
    let mut stamp = out.as_os_str().to_owned();
    stamp.push(".key");
    let stamp = PathBuf::from(stamp);
    if out.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(key) {
        return Ok(false);
    }
    let _ = fs::remove_file(&stamp);
    if let Some(d) = out.parent() {
        fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
    }
    build(out)?;
    if !out.exists() {
        return Err(format!("building {} produced nothing", out.display()));
    }
    fs::write(&stamp, key).map_err(|e| format!("write {}: {e}", stamp.display()))?;
    Ok(true)
}

/// Seconds elapsed since `t0`, for timings.
pub fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_vectors() {
        // Reference values of FNV-1a 64 (Fowler/Noll/Vo test suite).
        assert_eq!(fnv1a64(FNV_OFFSET, b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(FNV_OFFSET, b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET, b"foobar"), 0x85944171f73967e8);
        // Incremental use equals one-shot.
        assert_eq!(
            fnv1a64(fnv1a64(FNV_OFFSET, b"foo"), b"bar"),
            0x85944171f73967e8
        );
    }

    #[test]
    fn random_bytes_deterministic_and_seed_dependent() {
        let a = random_bytes(7, 1000);
        assert_eq!(a.len(), 1000);
        assert_eq!(a, random_bytes(7, 1000));
        assert_ne!(a, random_bytes(8, 1000));
        // Not trivially constant.
        assert!(a.iter().filter(|&&b| b == a[0]).count() < 100);
    }

    #[test]
    fn quote_words() {
        assert_eq!(quote("abc-1.2"), "abc-1.2");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn cached_rebuilds_only_on_key_change() {
        let dir = std::env::temp_dir().join(format!("xtask-cache-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let out = dir.join("thing.bin");
        let mut builds = 0;
        let mut b = |p: &Path| {
            builds += 1;
            fs::write(p, b"x").map_err(|e| e.to_string())
        };
        assert!(cached(&out, "k1", &mut b).unwrap());
        assert!(!cached(&out, "k1", &mut b).unwrap());
        assert!(cached(&out, "k2", &mut b).unwrap());
        fs::remove_file(&out).unwrap();
        assert!(cached(&out, "k2", &mut b).unwrap());
        assert_eq!(builds, 3);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    #[ignore = "needs dpkg-query (a Debian host): run by `cargo xtask test host`"]
    fn dpkg_says_what_is_missing() {
        let m = missing_packages(&["coreutils", "xtask-no-such-package-zz"]);
        assert_eq!(m, vec!["xtask-no-such-package-zz".to_string()]);
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
