//! The Xen end-to-end harness: Xen 4.17 + a Debian dom0 (busybox initramfs with the Xen toolstack)
//! in QEMU TCG (`-M q35` with an emulated VT-d so PCI passthrough works), usbdom created as a PV
//! domU with the emulated controller passed through. Used by `cargo xtask test xen`, `e2e` and `run`.
//!
//! Cached under `target/xen/` (each artifact rebuilt only when its inputs change, see
//! [`util::cached`]): the Xen ELF (from `/boot/xen-4.17-amd64.gz`), the Debian vmlinuz,
//! `xen-hcd.ko` built out of tree from `linux-source-6.1`, `xen-hcd-sg.ko` (the same source with
//! `tests/xen-hcd/xen-hcd-sg.patch`: scatter-gather), and the dom0 base initramfs. Per run a small
//! cpio with `/init`, `/tests/*` (from `tests/xen/`), `/guest/usbdom` and `/guest/xen-hcd-sg.ko`
//! is appended.
//!
//! The dom0 scripts print markers (`XT: ...`, `XT-DOM0-READY`, `U| ` live usbdom console lines,
//! `C| ` the full console at the end); this module reads them from the serial log.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::console;
use crate::cpio::Cpio;
use crate::qemu::{self, Action, Line};
use crate::report::Report;
use crate::util::{self, Prereq};

/// Debian packages the Xen harness needs.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "xenstore-utils",
    "linux-image-amd64",
    "linux-headers-amd64",
    "linux-source-6.1",
    "busybox-static",
    "cpio",
    "kmod",
    "pciutils",
    "gcc-12",
    "make",
    "libc6-dev",
    "xz-utils",
    "bc",
    "binutils",
    "patch",
];

/// Bump when the way the cached base initramfs is built changes.
const BASE_RECIPE: &str = "dom0-base v1";
pub const XEN_BIN: &str = "/usr/lib/xen-4.17/bin";
/// The emulated xHCI's PCI ID (QEMU's `qemu-xhci`, Red Hat vendor ID).
pub const XHCI_ID: &str = "1b36:000d";
/// Controllers the harness can pass through: (QEMU device, PCI ID).
pub const CONTROLLERS: &[(&str, &str)] = &[
    ("qemu-xhci", XHCI_ID),
    ("piix3-usb-uhci", "8086:7020"),
    ("ich9-usb-uhci1", "8086:2934"),
];

/// Domain name used for usbdom.
pub const DOMAIN: &str = "usbdom";

/// The cached inputs of a boot.
pub struct Artifacts {
    pub xen: PathBuf,
    pub vmlinuz: PathBuf,
    pub base_cpio: PathBuf,
    pub xen_hcd: PathBuf,
    /// `xen-hcd-sg.ko`: xen-hcd with scatter-gather (module `xen_hcd_sg`); each run ships it as
    /// `/guest/xen-hcd-sg.ko` for dom0 to `insmod` instead of `xen-hcd`.
    pub xen_hcd_sg: PathBuf,
}

/// The patch that makes `xen-hcd-sg.ko` out of `xen-hcd.c` (relative to the repository root).
pub const SG_PATCH: &str = "tests/xen-hcd/xen-hcd-sg.patch";

/// The cache key of `xen-hcd-sg.ko`: the stock module's key plus the patch's content.
fn sg_hcd_key(hcd_key: &str, patch: &[u8]) -> String {
    format!(
        "{hcd_key} sg-patch:{:016x}:{}",
        util::fnv1a64(util::FNV_OFFSET, patch),
        patch.len()
    )
}

/// The newest `*-amd64` kernel that has modules, a vmlinuz and headers.
fn kver() -> Result<String, String> {
    newest_kernel("build", "headers")
}

/// The newest installed `*-amd64` kernel (by version, not by string order) that has a
/// `/boot/vmlinuz-<k>` and a `/lib/modules/<k>/<needs>`; `what` names `needs` in the error.
pub fn newest_kernel(needs: &str, what: &str) -> Result<String, String> {
    let mut v: Vec<String> = fs::read_dir("/lib/modules")
        .map_err(|e| format!("/lib/modules: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|k| {
            k.ends_with("-amd64")
                && Path::new(&format!("/boot/vmlinuz-{k}")).exists()
                && Path::new(&format!("/lib/modules/{k}/{needs}")).exists()
        })
        .collect();
    v.sort_by(|a, b| version_cmp(a, b));
    v.pop()
        .ok_or_else(|| format!("no /lib/modules/*-amd64 with /boot/vmlinuz and {what}"))
}

/// Compare version strings numerically by their digit runs (like `sort -V` for these names).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let nums = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().unwrap_or(0))
            .collect()
    };
    nums(a).cmp(&nums(b))
}

/// Install packages and build/cache the artifacts. `Ok(Err(reason))`: this machine cannot run the tier.
pub fn prepare() -> Result<Result<Artifacts, String>, String> {
    match util::ensure_packages(PACKAGES)? {
        Prereq::Ready => {}
        Prereq::Unavailable(why) => return Ok(Err(why)),
    }
    let dir = util::target().join("xen");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let kver = kver()?;

    let xen = dir.join("xen-4.17-amd64");
    let xen_gz = Path::new("/boot/xen-4.17-amd64.gz");
    util::cached(&xen, &util::file_key(xen_gz), |out| {
        let elf = util::output_bytes(Command::new("zcat").arg(xen_gz))?;
        fs::write(out, elf).map_err(|e| e.to_string())
    })?;

    let vmlinuz = dir.join("vmlinuz");
    let vsrc = PathBuf::from(format!("/boot/vmlinuz-{kver}"));
    util::cached(&vmlinuz, &util::file_key(&vsrc), |out| {
        fs::copy(&vsrc, out).map(|_| ()).map_err(|e| e.to_string())
    })?;

    let xen_hcd = dir.join("xen-hcd.ko");
    let src_tar = Path::new("/usr/src/linux-source-6.1.tar.xz");
    let hcd_key = format!(
        "{kver} {} {}",
        util::file_key(src_tar),
        util::file_key(Path::new(&format!("/lib/modules/{kver}/build/Makefile")))
    );
    util::cached(&xen_hcd, &hcd_key, |out| {
        build_xen_hcd(&dir, &kver, src_tar, out)
    })?;

    let xen_hcd_sg = dir.join("xen-hcd-sg.ko");
    let patch_path = util::root().join(SG_PATCH);
    let patch = fs::read(&patch_path).map_err(|e| format!("{}: {e}", patch_path.display()))?;
    util::cached(&xen_hcd_sg, &sg_hcd_key(&hcd_key, &patch), |out| {
        build_xen_hcd_sg(&dir, &kver, src_tar, &patch_path, out)
    })?;

    let base_cpio = dir.join("dom0-base.cpio");
    let base_key = format!(
        "{BASE_RECIPE} {kver} {hcd_key} {} {} {}",
        util::file_key(Path::new(&format!("{XEN_BIN}/xl"))),
        util::file_key(Path::new("/bin/busybox")),
        util::file_key(Path::new(&format!("/lib/modules/{kver}/modules.dep"))),
    );
    util::cached(&base_cpio, &base_key, |out| {
        build_base(&dir, &kver, &xen_hcd, out)
    })?;
    Ok(Ok(Artifacts {
        xen,
        vmlinuz,
        base_cpio,
        xen_hcd,
        xen_hcd_sg,
    }))
}

/// Debian's 6.1 kernel has no `CONFIG_USB_XEN_HCD`: build the module out of tree from the
/// matching `linux-source-6.1`, against the installed headers.
fn build_xen_hcd(dir: &Path, kver: &str, src_tar: &Path, out: &Path) -> Result<(), String> {
    let b = dir.join("xen-hcd-build");
    let _ = fs::remove_dir_all(&b);
    fs::create_dir_all(&b).map_err(|e| e.to_string())?;
    println!(
        "xen: building xen-hcd.ko for {kver} (extracting from {})",
        src_tar.display()
    );
    extract_xen_hcd(src_tar, &b)?;
    make_module(kver, &b, "xen-hcd", out)
}

/// `drivers/usb/host/xen-hcd.c` of the kernel source tarball `src_tar`, into directory `b`.
fn extract_xen_hcd(src_tar: &Path, b: &Path) -> Result<(), String> {
    util::run(
        Command::new("tar")
            .arg("-xJf")
            .arg(src_tar)
            .arg("-C")
            .arg(b)
            .args([
                "--wildcards",
                "--strip-components=4",
                "*/drivers/usb/host/xen-hcd.c",
            ]),
    )
}

/// Build `<name>.c` in directory `b` out of tree as module `<name>` against the headers of
/// kernel `kver`, and copy the `.ko` to `out`.
fn make_module(kver: &str, b: &Path, name: &str, out: &Path) -> Result<(), String> {
    fs::write(b.join("Makefile"), format!("obj-m := {name}.o\n")).map_err(|e| e.to_string())?;
    util::run(
        Command::new("make")
            .arg("-C")
            .arg(format!("/lib/modules/{kver}/build"))
            .arg(format!("M={}", b.display()))
            .args(["CC=gcc-12", "modules"]),
    )?;
    fs::copy(b.join(format!("{name}.ko")), out).map_err(|e| format!("{name}.ko: {e}"))?;
    Ok(())
}

/// `xen-hcd-sg.ko`: `xen-hcd.c` from `linux-source-6.1` with [`SG_PATCH`] applied, built as module
/// `xen-hcd-sg` (the source renamed `xen-hcd-sg.c`) so it can be loaded instead of `xen-hcd`.
fn build_xen_hcd_sg(
    dir: &Path,
    kver: &str,
    src_tar: &Path,
    patch: &Path,
    out: &Path,
) -> Result<(), String> {
    let b = dir.join("xen-hcd-sg-build");
    let _ = fs::remove_dir_all(&b);
    fs::create_dir_all(&b).map_err(|e| e.to_string())?;
    println!("xen: building xen-hcd-sg.ko for {kver} (xen-hcd.c + {SG_PATCH})");
    extract_xen_hcd(src_tar, &b)?;
    let pristine = b.join("xen-hcd.c");
    let patched = b.join("xen-hcd-sg.c");
    let patch_file = fs::File::open(patch).map_err(|e| format!("{}: {e}", patch.display()))?;
    util::run(
        Command::new("patch")
            .args(["--batch", "--forward", "--silent", "-o"])
            .arg(&patched)
            .arg(&pristine)
            .stdin(patch_file),
    )
    .map_err(|e| format!("{SG_PATCH} does not apply to xen-hcd.c: {e}"))?;
    fs::remove_file(&pristine).map_err(|e| e.to_string())?;
    make_module(kver, &b, "xen-hcd-sg", out)
}

fn copy_into(root: &Path, src: &Path) -> Result<(), String> {
    let dst = root.join(src.strip_prefix("/").unwrap_or(src));
    if dst.exists() {
        return Ok(());
    }
    fs::create_dir_all(dst.parent().unwrap()).map_err(|e| e.to_string())?;
    fs::copy(src, &dst)
        .map(|_| ())
        .map_err(|e| format!("copy {}: {e}", src.display()))
}

/// The shared libraries a binary needs, from `ldd`.
pub fn ldd(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output();
    let Ok(out) = out else { return vec![] };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// The dom0 base initramfs (no `/init`, no tests, no guest: those come per run): busybox, the Xen
/// modules + xen-pciback + USB storage/HID + xen-hcd, and the toolstack with its libraries.
fn build_base(dir: &Path, kver: &str, xen_hcd: &Path, out: &Path) -> Result<(), String> {
    println!("xen: building the dom0 base initramfs");
    let r = dir.join("rootfs-dom0");
    let _ = fs::remove_dir_all(&r);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "etc/xen",
        "root",
        "mnt",
        "lib64",
        "lib/x86_64-linux-gnu",
        "var/lib/xen",
        "var/log/xen/console",
        "var/lib/xenstored",
        "guest",
        "tests",
        "usr/share/misc",
    ] {
        fs::create_dir_all(r.join(d)).map_err(|e| e.to_string())?;
    }
    std::os::unix::fs::symlink("/run", r.join("var/run")).map_err(|e| e.to_string())?;
    fs::copy("/bin/busybox", r.join("bin/busybox")).map_err(|e| format!("busybox: {e}"))?;
    let applets = util::output(Command::new("/bin/busybox").arg("--list"))?;
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", r.join("bin").join(a));
    }
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(|e| e.to_string())?;

    // Kernel modules with their dependencies.
    let mods = [
        "xen-evtchn",
        "xen-gntdev",
        "xen-gntalloc",
        "xenfs",
        "xen-privcmd",
        "xen-pciback",
        "usbcore",
        "usb-storage",
        "sd_mod",
        "usbhid",
        "hid-generic",
    ];
    for m in mods {
        let deps = util::output(Command::new("modprobe").args(["--show-depends", "-S", kver, m]))?;
        for l in deps.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.first() == Some(&"insmod") && w.len() >= 2 {
                copy_into(&r, Path::new(w[1]))?;
            }
        }
    }
    let mdir = r.join(format!("lib/modules/{kver}"));
    fs::create_dir_all(mdir.join("extra")).map_err(|e| e.to_string())?;
    fs::copy(xen_hcd, mdir.join("extra/xen-hcd.ko")).map_err(|e| e.to_string())?;
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let _ = fs::copy(format!("/lib/modules/{kver}/{f}"), mdir.join(f));
    }
    util::run(Command::new("depmod").arg("-b").arg(&r).arg(kver))?;

    // The toolstack and its libraries.
    let bins: Vec<PathBuf> = [
        "xl",
        "xenstored",
        "xenconsoled",
        "xenconsole",
        "xen-init-dom0",
        "libxl-save-helper",
        "xenstore-control",
    ]
    .iter()
    .map(|b| Path::new(XEN_BIN).join(b))
    .chain(
        ["/usr/bin/xenstore", "/usr/bin/lspci"]
            .iter()
            .map(PathBuf::from),
    )
    .collect();
    for b in &bins {
        copy_into(&r, b)?;
        for l in ldd(b) {
            copy_into(&r, &l)?;
        }
    }
    // pthread_cancel() dlopen()s libgcc_s: xl aborts at exit without it.
    copy_into(&r, Path::new("/lib/x86_64-linux-gnu/libgcc_s.so.1"))?;
    for t in [
        "read", "write", "ls", "list", "rm", "chmod", "exists", "watch",
    ] {
        let _ = std::os::unix::fs::symlink("xenstore", r.join(format!("usr/bin/xenstore-{t}")));
    }
    util::run(
        Command::new("cp")
            .args(["-a", "/etc/xen/xl.conf", "/etc/xen/scripts"])
            .arg(r.join("etc/xen")),
    )?;
    let _ = fs::copy("/usr/share/misc/pci.ids", r.join("usr/share/misc/pci.ids"));

    let mut c = Cpio::new();
    c.host_tree("", &r)
        .map_err(|e| format!("packing {}: {e}", r.display()))?;
    fs::write(out, c.finish()).map_err(|e| e.to_string())
}

/// The per-run archive: `/init`, `/tests/*` from `tests/xen/`, `/guest/usbdom`, extra files.
pub fn run_cpio(guest_elf: &Path, extra: &[(String, PathBuf)]) -> Result<Vec<u8>, String> {
    let src = util::root().join("tests/xen");
    let mut c = Cpio::new();
    c.host_file("init", &src.join("init"))
        .map_err(|e| format!("tests/xen/init: {e}"))?;
    c.dir("tests", 0o755);
    let mut files: Vec<_> = fs::read_dir(&src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "init"))
        .collect();
    files.sort();
    for f in files {
        let name = format!("tests/{}", f.file_name().unwrap().to_string_lossy());
        c.host_file(&name, &f)
            .map_err(|e| format!("{}: {e}", f.display()))?;
    }
    c.dir("guest", 0o755);
    c.host_file("guest/usbdom", guest_elf)
        .map_err(|e| format!("{}: {e}", guest_elf.display()))?;
    // The kernel's initramfs unpacker creates no missing parent directories: name them first
    // (an existing directory is left as it is).
    let mut dirs: Vec<String> = Vec::new();
    for (name, _) in extra {
        let parts: Vec<&str> = name.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if d != "guest" && !dirs.contains(&d) {
                c.dir(&d, 0o755);
                dirs.push(d);
            }
        }
    }
    for (name, p) in extra {
        c.host_file(name, p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(c.finish())
}

/// The dom0 tool `usbdom` (`tools/usbdom`) built for dom0 (glibc) and stripped; each run's
/// initramfs carries it as `/usr/bin/usbdom` (its libraries, libc and libgcc_s, are in the base
/// image already, copied for the toolstack).
pub fn dom0_tool() -> Result<PathBuf, String> {
    crate::build::release_stripped("usbdom-tool", "x86_64-unknown-linux-gnu", "usbdom")
        .map(|(_, s)| s)
}

/// A small C program for dom0, built static (dom0's initramfs has no compiler and only the
/// toolstack's libraries).
pub fn dom0_c_program(src: &Path, out: &Path) -> Result<(), String> {
    if let Some(d) = out.parent() {
        fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    util::run(
        Command::new("gcc-12")
            .args(["-O2", "-static", "-Wall", "-s", "-o"])
            .arg(out)
            .arg(src),
    )
}

/// `tests/xen/usbreset.c` for dom0 (`/usr/bin/usbreset`: USBDEVFS_RESET, the reset a guest's
/// mass-storage error recovery does).
pub fn dom0_usbreset() -> Result<PathBuf, String> {
    let out = util::target().join("dom0/usbreset");
    dom0_c_program(&util::root().join("tests/xen/usbreset.c"), &out)?;
    Ok(out)
}

/// `tests/xen/odirect-cat.c` for dom0 (`/usr/bin/odirect-cat`: the whole device through O_DIRECT
/// reads into a buffer at a chosen offset inside a page; tests/xen/pvusb-sg.sh).
pub fn dom0_odirect_cat() -> Result<PathBuf, String> {
    let out = util::target().join("dom0/odirect-cat");
    dom0_c_program(&util::root().join("tests/xen/odirect-cat.c"), &out)?;
    Ok(out)
}

/// One Xen boot.
pub struct Boot<'a> {
    pub art: &'a Artifacts,
    /// The guest ELF placed at /guest/usbdom.
    pub guest: &'a Path,
    /// Which /tests/<name>.sh dom0 runs.
    pub test: &'a str,
    /// Extra `key=value` for the dom0 command line (`xt.key=value` → `$XT_KEY` in the scripts).
    pub dom0_vars: Vec<(String, String)>,
    /// The USB controller passed through (a QEMU device of [`CONTROLLERS`]), id `usbc`, with a
    /// `usb-storage` stick and a `usb-kbd` on it.
    pub controller: &'a str,
    /// Extra QEMU `-device` values.
    pub devices: Vec<String>,
    pub extra_files: Vec<(String, PathBuf)>,
    /// Logs go to `<dir>/<name>.log`.
    pub dir: PathBuf,
    pub name: &'a str,
    pub monitor: Option<PathBuf>,
    pub actions: Vec<Action>,
    pub timeout: Duration,
    /// Print the XT:/U| lines as they arrive.
    pub echo: bool,
}

/// What a boot showed, read from the serial log.
pub struct BootResult {
    pub out: qemu::Outcome,
    pub retried: Option<String>,
    pub console: String,
}

impl BootResult {
    fn t(&self, pat: &str) -> Option<f64> {
        self.out.find(pat).map(|l| l.t)
    }
    pub fn dom0_ready(&self) -> Option<f64> {
        self.t("XT-DOM0-READY")
    }
    pub fn create_start(&self) -> Option<f64> {
        self.out
            .lines
            .iter()
            .rev()
            .find(|l| l.text.contains(&format!("XT: xl create {DOMAIN} start")))
            .map(|l| l.t)
    }
    pub fn first_usbdom_line(&self) -> Option<f64> {
        self.out
            .lines
            .iter()
            .find(|l| l.text.starts_with("U| ") && !l.text[3..].trim().is_empty())
            .map(|l| l.t)
    }
    pub fn ready(&self) -> Option<f64> {
        self.out
            .lines
            .iter()
            .find(|l| is_ready_line(l))
            .map(|l| l.t)
    }
    pub fn timings(&self) -> String {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.1}s")).unwrap_or_else(|| "-".into());
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.1}s", b - a),
            _ => "-".into(),
        };
        format!(
            "timings: QEMU start -> dom0 ready {}; xl create -> usbdom first line {} -> usbdom ready {} (create at {}, total run {:.1}s)",
            f(self.dom0_ready()),
            d(self.create_start(), self.first_usbdom_line()),
            d(self.create_start(), self.ready()),
            f(self.create_start()),
            self.out.secs
        )
    }
}

/// The usbdom console as dumped by dom0 between `XT-CONSOLE-BEGIN`/`END` (lines `C| `), or, if
/// there is no dump, the live copy (`U| ` lines).
pub fn extract_console(lines: &[Line]) -> String {
    let dumped: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.text.strip_prefix("C| "))
        .collect();
    let live: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.text.strip_prefix("U| "))
        .collect();
    let pick = if dumped.is_empty() { live } else { dumped };
    pick.iter().map(|s| format!("{s}\n")).collect()
}

/// Why a boot may be retried: it hung before usbdom printed anything (dom0 never ready, or
/// `xl create` hung). Never when usbdom printed a line: that would hide a usbdom failure.
pub fn retry_reason(lines: &[Line], timed_out: bool) -> Option<String> {
    let any_usbdom = lines
        .iter()
        .any(|l| (l.text.starts_with("U| ") || l.text.starts_with("C| ")) && l.text.len() > 3);
    if any_usbdom {
        return None;
    }
    let dom0 = lines.iter().any(|l| l.text.contains("XT-DOM0-READY"));
    if !dom0 && timed_out {
        return Some("Xen/dom0 boot hung before dom0 was ready".into());
    }
    if lines.iter().any(|l| l.text.contains("XT: xl create HUNG")) {
        return Some("`xl create` hung before usbdom printed anything".into());
    }
    None
}

/// The size of the random image behind the `usb-storage` stick: a UHCI bus moves at most
/// ~1.2 MB/s (full speed, QEMU's frame budget), so its stick is smaller.
pub fn stick_bytes(controller: &str) -> usize {
    if controller.contains("uhci") {
        4 << 20
    } else {
        16 << 20
    }
}

fn boot_once(b: &Boot, attempt: u32) -> Result<qemu::Outcome, String> {
    fs::create_dir_all(&b.dir).map_err(|e| e.to_string())?;
    let initrd = b.dir.join(format!("{}-initrd.cpio", b.name));
    let mut data = fs::read(&b.art.base_cpio).map_err(|e| e.to_string())?;
    let mut extra = b.extra_files.clone();
    extra.push(("usr/bin/usbdom".to_string(), dom0_tool()?));
    extra.push(("usr/bin/usbreset".to_string(), dom0_usbreset()?));
    extra.push(("guest/xen-hcd-sg.ko".to_string(), b.art.xen_hcd_sg.clone()));
    extra.push(("usr/bin/odirect-cat".to_string(), dom0_odirect_cat()?));
    data.extend(run_cpio(b.guest, &extra)?);
    fs::write(&initrd, data).map_err(|e| e.to_string())?;

    let stick = b.dir.join("stick.img");
    let stick_bytes = stick_bytes(b.controller);
    crate::qemu_tier::write_disk(&stick, "xen-stick", stick_bytes)?;
    // The image's sha256 and size for the dom0 scripts ($XT_STICK_SHA256, $XT_STICK_BYTES).
    let sum = util::output(Command::new("sha256sum").arg(&stick))?;
    let sum = sum.split_whitespace().next().unwrap_or("").to_string();

    let pci_id = CONTROLLERS
        .iter()
        .find(|(d, _)| *d == b.controller)
        .map(|(_, id)| *id)
        .ok_or_else(|| format!("unknown controller {}", b.controller))?;
    let mut d0 = format!(
        "console=hvc0 earlyprintk=xen loglevel=6 xt.test={} xt.pci_id={pci_id}",
        b.test
    );
    for (k, v) in &b.dom0_vars {
        d0.push_str(&format!(" xt.{k}={v}"));
    }
    d0.push_str(&format!(
        " xt.stick_sha256={sum} xt.stick_bytes={stick_bytes}"
    ));
    let d0 = d0.replace(',', ",,");
    let mut args: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "max,-smap,-smep,-pku",
        "-M",
        "q35",
        "-m",
        "1536",
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-kernel".into(),
        b.art.xen.display().to_string(),
        "-append".into(),
        "console=com1 com1=115200,8n1 dom0_mem=512M dom0_max_vcpus=1 loglvl=all guest_loglvl=all noreboot".into(),
        "-initrd".into(),
        format!("{} {d0},{}", b.art.vmlinuz.display(), initrd.display()),
        "-device".into(),
        "intel-iommu,intremap=on".into(),
        "-device".into(),
        format!("{},id=usbc", b.controller),
        "-drive".into(),
        format!("if=none,id=stick,format=raw,file={}", stick.display()),
        "-device".into(),
        "usb-storage,bus=usbc.0,drive=stick".into(),
        "-device".into(),
        "usb-kbd,bus=usbc.0".into(),
    ]);
    for d in &b.devices {
        args.push("-device".into());
        args.push(d.clone());
    }
    let echo = b.echo;
    let label = b.name.to_string();
    let log = if attempt == 0 {
        b.dir.join(format!("{}.log", b.name))
    } else {
        b.dir.join(format!("{}.retry{attempt}.log", b.name))
    };
    println!("xen: booting Xen + dom0 (log {})", log.display());
    qemu::run(qemu::Spec {
        args,
        log,
        timeout: b.timeout,
        monitor: b.monitor.clone(),
        actions: b.actions.clone(),
        // Under TCG dom0 is ready after 10-70 s (depending on the host's load).
        milestones: vec![("XT-DOM0-READY".into(), Duration::from_secs(300))],
        on_line: Box::new(move |l: &Line| {
            if echo
                && (l.text.starts_with("XT")
                    || l.text.starts_with("U| ")
                    || l.text.starts_with("xtask:"))
            {
                println!("[{:7.2}] {}", l.t, l.text);
            } else if let Some(p) = progress_line(&label, l) {
                println!("{p}");
            }
        }),
    })
}

/// A progress line for the host when the serial log is not echoed: dom0 scripts mark the phases
/// of a long run with `XT: phase <what>`, shown as `<name> xen: +93s phase <what>` (seconds since
/// QEMU start).
pub fn progress_line(name: &str, l: &Line) -> Option<String> {
    let what = l.text.strip_prefix("XT: phase ")?;
    Some(format!("{name} xen: +{:.0}s phase {}", l.t, what.trim()))
}

/// Boot, retrying at most once when the boot hung before usbdom printed its first line.
pub fn boot(b: &Boot) -> Result<BootResult, String> {
    let mut out = boot_once(b, 0)?;
    let mut retried = None;
    if let Some(why) = retry_reason(&out.lines, out.timed_out) {
        println!(
            "xen: RETRY of the boot (once): {why}; first attempt's log kept as {}.log",
            b.name
        );
        let first = out;
        out = boot_once(b, 1)?;
        retried = Some(format!("{why} (first attempt {:.0}s)", first.secs));
    }
    let console = extract_console(&out.lines);
    let _ = fs::write(b.dir.join(format!("{}-console.log", b.name)), &console);
    Ok(BootResult {
        out,
        retried,
        console,
    })
}

/// Print the diagnostics of a failed boot.
pub fn diagnostics(b: &Boot, r: &BootResult) {
    println!(
        "---- serial log tail ({}/{}.log) ----\n{}",
        b.dir.display(),
        b.name,
        r.out.tail(40)
    );
    println!("---- usbdom console ----\n{}", util::tail(&r.console, 30));
    println!("---- QEMU command line ----\n{}", r.out.cmdline);
}

/// The guest to boot as the driver domain: the kernel built fresh (its stripped copy goes into the
/// initramfs), or, for harness development, `$XTASK_GUEST` (any PV kernel; `$XTASK_GUEST_MEM`
/// sets its `memory=`).
fn guest() -> Result<(PathBuf, Vec<(String, String)>), String> {
    if let Some(g) = std::env::var_os("XTASK_GUEST") {
        println!(
            "xen: NOTE: booting $XTASK_GUEST={} instead of usbdom",
            g.to_string_lossy()
        );
        let mut vars = vec![];
        if let Ok(m) = std::env::var("XTASK_GUEST_MEM") {
            vars.push(("mem".to_string(), m));
        }
        return Ok((PathBuf::from(g), vars));
    }
    Ok((crate::build::kernel()?.stripped, vec![]))
}

pub fn tier(r: &mut Report) {
    println!("==== xen tier ====");
    let art = match prepare() {
        Ok(Ok(a)) => a,
        Ok(Err(why)) => return r.skip("xen tier", why),
        Err(e) => return r.fail("xen tier: prerequisites", e),
    };
    println!(
        "xen: cached inputs: {}, {}, {}, {}",
        art.xen.display(),
        art.vmlinuz.display(),
        art.xen_hcd.display(),
        art.base_cpio.display()
    );
    let (guest, dom0_vars) = match guest() {
        Ok(g) => g,
        Err(e) => return r.fail("xen: kernel build", e),
    };
    let pvusb_vars = dom0_vars.clone();
    let b = Boot {
        art: &art,
        guest: &guest,
        test: "usbdom",
        dom0_vars,
        controller: "qemu-xhci",
        devices: vec![],
        extra_files: vec![],
        dir: util::target().join("xen-tier"),
        name: "xen",
        monitor: None,
        actions: vec![],
        timeout: Duration::from_secs(600),
        echo: true,
    };
    let res = match boot(&b) {
        Ok(x) => x,
        Err(e) => return r.fail("xen: boot", e),
    };
    judge(r, &b, &res);
    // PVUSB end to end, in boots of their own: xHCI (dom0 as the frontend, then a second Linux
    // domU destroyed mid-read, then dom0 again; before the domU, dom0 with the scatter-gather
    // xen-hcd-sg.ko), then UHCI (dom0, a smaller stick).
    crate::pvusb_tier::tier(
        "qemu-xhci",
        "pvusb",
        r,
        &art,
        &guest,
        pvusb_vars.clone(),
        crate::pvusb_tier::Also {
            domu: true,
            sg: true,
        },
    );
    crate::pvusb_tier::tier(
        "piix3-usb-uhci",
        "pvusb-uhci",
        r,
        &art,
        &guest,
        pvusb_vars,
        crate::pvusb_tier::Also {
            domu: false,
            sg: false,
        },
    );
}

/// The Xen-tier checks of a finished boot.
pub fn judge(r: &mut Report, b: &Boot, res: &BootResult) {
    let before = r.counts().1;
    if let Some(why) = &res.retried {
        println!("xen: NOTE: this result comes from a retried boot: {why}");
    }
    r.check(
        "xen: dom0 boot (toolstack up)",
        res.dom0_ready().is_some(),
        if res.out.timed_out {
            "timed out before XT-DOM0-READY"
        } else {
            "no XT-DOM0-READY"
        },
    );
    let created = res
        .out
        .lines
        .iter()
        .any(|l| l.text.contains("XT: xl create rc=0"));
    let mem16 = res.out.find("retrying with memory=16").is_some();
    if mem16 {
        println!("xen: NOTE: memory=8 did not start; usbdom ran with memory=16");
    }
    r.check(
        "xen: xl create usbdom (type=pv, pci=[xHCI])",
        created,
        res.out
            .lines
            .iter()
            .rev()
            .find(|l| l.text.contains("XT: xl create"))
            .map(|l| l.text.clone())
            .unwrap_or_else(|| "xl create never ran".into()),
    );
    for (name, v) in console::xen_checks(&res.console, DOMAIN, XHCI_ID) {
        let n = format!("xen: console: {name}");
        match v {
            Ok(()) => r.pass(&n),
            Err(e) => r.fail(&n, e),
        }
    }
    r.check(
        "xen: domain gone after xl shutdown",
        res.out
            .find(&format!("XT: domain {DOMAIN} gone after shutdown"))
            .is_some(),
        "usbdom did not go away after `xl shutdown`",
    );
    println!("xen: {}", res.timings());
    if r.counts().1 > before {
        diagnostics(b, res);
    }
}

/// `cargo xtask run`: boot everything and show what usbdom prints.
pub fn cmd_run(hold: u32) -> Result<Result<(), String>, String> {
    let art = match prepare()? {
        Ok(a) => a,
        Err(why) => return Err(format!("cannot run: {why}")),
    };
    let (guest, mut dom0_vars) = guest()?;
    dom0_vars.push(("hold".into(), hold.to_string()));
    let b = Boot {
        art: &art,
        guest: &guest,
        test: "run",
        dom0_vars,
        controller: "qemu-xhci",
        devices: vec![],
        extra_files: vec![],
        dir: util::target().join("run"),
        name: "run",
        monitor: None,
        actions: vec![],
        timeout: Duration::from_secs(900),
        echo: true,
    };
    let res = boot(&b)?;
    println!("run: {}", res.timings());
    println!(
        "run: serial log {}/run.log, usbdom console {}/run-console.log",
        b.dir.display(),
        b.dir.display()
    );
    // usbdom came up, and the stick reached dom0 as a xen-hcd frontend (tests/xen/frontend.sh).
    let verdict = verdict(
        &res.out.lines,
        "the frontend scenario (tests/xen/frontend.sh: the stick reaching dom0 as /dev/sdX; see the `XT: frontend:` lines above)",
        "XT: frontend scenario rc=",
    );
    if verdict.is_err() {
        diagnostics(&b, &res);
    }
    Ok(verdict)
}

const NOT_READY: &str = "usbdom did not get ready; see the diagnostics above";

/// usbdom's console line that says it serves (relayed by dom0 with `U| `).
fn is_ready_line(l: &Line) -> bool {
    l.text.starts_with("U| ") && l.text.contains("usbdom: ready")
}

/// What a `run` or `e2e` boot came to: `Ok` when usbdom got ready and the dom0 script `what` ended
/// with status 0 (its `rc_marker` line, e.g. `XT: user script rc=0`); else the one thing that
/// failed, for the command's last line.
pub fn verdict(lines: &[Line], what: &str, rc_marker: &str) -> Result<(), String> {
    let ready = lines.iter().any(is_ready_line);
    if !ready {
        return Err(NOT_READY.into());
    }
    match lines.iter().find_map(|l| l.text.strip_prefix(rc_marker)) {
        Some("0") => Ok(()),
        Some(rc) => Err(format!(
            "{what} exited with status {rc} (usbdom was ready; its console is above)"
        )),
        None => Err(format!(
            "{what} did not finish (no `{rc_marker}` line: killed by the timeout or dom0 died); usbdom was ready"
        )),
    }
}

/// Options of `cargo xtask e2e`.
#[derive(Default)]
pub struct E2e {
    /// The controller passed through (default qemu-xhci).
    pub controller: Option<String>,
    pub devices: Vec<String>,
    pub script: Option<PathBuf>,
    pub actions: Vec<Action>,
    pub timeout_s: Option<u64>,
    /// Extra files for dom0: (path inside dom0 without the leading `/`, host file).
    pub files: Vec<(String, PathBuf)>,
}

/// `cargo xtask e2e`: the Xen setup with extra devices, a user script in dom0, a monitor socket.
pub fn cmd_e2e(o: E2e) -> Result<Result<(), String>, String> {
    let art = match prepare()? {
        Ok(a) => a,
        Err(why) => return Err(format!("cannot run: {why}")),
    };
    let (guest, dom0_vars) = guest()?;
    let dir = util::target().join("e2e");
    let monitor = dir.join("monitor.sock");
    println!(
        "e2e: QEMU monitor (HMP) on unix socket {} (e.g. `socat - UNIX-CONNECT:{}`, then `sendkey a`, `device_add usb-kbd,bus=usbc.0,id=k2`)",
        monitor.display(),
        monitor.display()
    );
    let mut extra = vec![];
    if let Some(s) = &o.script {
        extra.push(("tests/user.sh".to_string(), s.clone()));
    }
    // The dom0 kernel, which a script can boot as a Linux domU (tests/xen/pvusb-domu.sh).
    extra.push(("guest/vmlinuz".to_string(), art.vmlinuz.clone()));
    for (dest, src) in &o.files {
        if !src.is_file() {
            return Err(format!("--file {}: no such file", src.display()));
        }
        extra.push((dest.clone(), src.clone()));
    }
    let b = Boot {
        art: &art,
        guest: &guest,
        test: "e2e",
        dom0_vars,
        controller: o.controller.as_deref().unwrap_or("qemu-xhci"),
        devices: o.devices,
        extra_files: extra,
        dir,
        name: "e2e",
        monitor: Some(monitor),
        actions: o.actions,
        timeout: Duration::from_secs(o.timeout_s.unwrap_or(900)),
        echo: true,
    };
    let res = boot(&b)?;
    println!("e2e: {}", res.timings());
    let user_rc = res
        .out
        .lines
        .iter()
        .find_map(|l| l.text.strip_prefix("XT: user script rc="))
        .map(str::to_string);
    println!(
        "e2e: user script rc={}; logs under {}",
        user_rc.as_deref().unwrap_or("(not run)"),
        b.dir.display()
    );
    let verdict = match &o.script {
        Some(s) => verdict(
            &res.out.lines,
            &format!("the user script {}", s.display()),
            "XT: user script rc=",
        ),
        None if res.ready().is_some() => Ok(()),
        None => Err(NOT_READY.into()),
    };
    if verdict.is_err() {
        diagnostics(&b, &res);
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(t: &[&str]) -> Vec<Line> {
        t.iter()
            .map(|s| Line {
                t: 1.0,
                text: s.to_string(),
            })
            .collect()
    }

    #[test]
    fn run_cpio_names_the_parent_directories_of_extra_files_first() {
        let f = std::env::temp_dir().join(format!("xtask-cpio-test-{}", std::process::id()));
        fs::write(&f, b"x").unwrap();
        let extra = vec![
            ("usr/libexec/qemu".to_string(), f.clone()),
            ("guest/qd1".to_string(), f.clone()),
        ];
        let data = run_cpio(&f, &extra).unwrap();
        let _ = fs::remove_file(&f);
        let at = |name: &str| {
            let n = format!("{name}\0");
            data.windows(n.len()).position(|w| w == n.as_bytes())
        };
        let (usr, libexec, file) = (at("usr"), at("usr/libexec"), at("usr/libexec/qemu"));
        assert!(usr.is_some() && libexec.is_some() && file.is_some());
        assert!(usr < libexec && libexec < file);
    }

    #[test]
    fn progress_lines_are_the_phase_markers_only() {
        let mut x = l(&[
            "XT: phase direct: seq read ",
            "XT: usbdom ready",
            "U| XT: phase x",
        ]);
        x[0].t = 92.6;
        assert_eq!(
            progress_line("bench", &x[0]).as_deref(),
            Some("bench xen: +93s phase direct: seq read")
        );
        assert_eq!(progress_line("bench", &x[1]), None);
        assert_eq!(progress_line("bench", &x[2]), None);
    }

    #[test]
    fn retry_only_when_hung_before_usbdom_printed() {
        // dom0 never came up and QEMU was killed by the timeout.
        assert!(retry_reason(&l(&["Xen 4.17", "xtask: TIMEOUT"]), true).is_some());
        // xl create hung.
        assert!(
            retry_reason(&l(&["XT-DOM0-READY", "XT: xl create HUNG (> 120s)"]), false).is_some()
        );
        // usbdom printed something: never retry, whatever happened next.
        assert!(retry_reason(
            &l(&[
                "XT-DOM0-READY",
                "U| usbdom 0.1.0 starting (xen-pv)",
                "XT: xl create HUNG"
            ]),
            true
        )
        .is_none());
        // usbdom was created but silent, no hang reported: that is a usbdom failure, no retry.
        assert!(retry_reason(&l(&["XT-DOM0-READY", "XT: xl create rc=0"]), false).is_none());
        // QEMU exited (not timed out) before dom0 was ready: no hang, no retry.
        assert!(retry_reason(&l(&["Xen panic"]), false).is_none());
    }

    #[test]
    fn console_prefers_the_final_dump() {
        let lines = l(&[
            "U| a",
            "XT: x",
            "U| b",
            "XT-CONSOLE-BEGIN usbdom",
            "C| a",
            "C| b",
            "C| c",
        ]);
        assert_eq!(extract_console(&lines), "a\nb\nc\n");
        let live = l(&["U| a", "XT: x", "U| b"]);
        assert_eq!(extract_console(&live), "a\nb\n");
    }

    #[test]
    fn timings_from_markers() {
        let mk = |t: f64, s: &str| Line { t, text: s.into() };
        let out = qemu::Outcome {
            code: Some(0),
            timed_out: false,
            lines: vec![
                mk(9.5, "XT-DOM0-READY uptime 4.1"),
                mk(10.0, "XT: xl create usbdom start (memory=8)"),
                mk(
                    12.0,
                    "U| [  0.000001] INFO usbdom: usbdom 0.1.0 starting (xen-pv)",
                ),
                mk(12.5, "U| [  0.500000] INFO usbdom: usbdom: ready"),
            ],
            secs: 30.0,
            cmdline: String::new(),
        };
        let r = BootResult {
            out,
            retried: None,
            console: String::new(),
        };
        assert_eq!(r.dom0_ready(), Some(9.5));
        assert_eq!(r.create_start(), Some(10.0));
        assert_eq!(r.first_usbdom_line(), Some(12.0));
        assert_eq!(r.ready(), Some(12.5));
        let t = r.timings();
        assert!(t.contains("dom0 ready 9.5s"), "{t}");
        assert!(
            t.contains("usbdom first line 2.0s -> usbdom ready 2.5s"),
            "{t}"
        );
    }

    #[test]
    fn run_and_e2e_name_what_failed() {
        const RC: &str = "XT: user script rc=";
        let ready = "U| [  0.5] INFO usbdom: usbdom: ready";
        // The user script failed while usbdom served: the script is named, not usbdom.
        let e = verdict(
            &l(&[ready, "XT: user script rc=3"]),
            "the user script t.sh",
            RC,
        )
        .unwrap_err();
        assert!(
            e.contains("the user script t.sh exited with status 3"),
            "{e}"
        );
        assert!(!e.contains("did not get ready"), "{e}");
        // usbdom never got ready: that is what is named, whatever the script did.
        let e = verdict(&l(&["XT-DOM0-READY", "XT: user script rc=1"]), "x", RC).unwrap_err();
        assert!(e.starts_with("usbdom did not get ready"), "{e}");
        // The script never finished.
        let e = verdict(&l(&[ready]), "the user script t.sh", RC).unwrap_err();
        assert!(e.contains("t.sh did not finish"), "{e}");
        assert_eq!(
            verdict(&l(&[ready, "XT: user script rc=0"]), "x", RC),
            Ok(())
        );
    }

    #[test]
    fn sg_module_key_follows_the_patch_and_the_stock_key() {
        let k = sg_hcd_key("6.1 src:1:2 mk:3:4", b"--- a\n+++ b\n");
        assert_eq!(k, sg_hcd_key("6.1 src:1:2 mk:3:4", b"--- a\n+++ b\n"));
        assert!(k.starts_with("6.1 src:1:2 mk:3:4 "));
        // One changed byte of the patch, or a new kernel/source, rebuilds the module.
        assert_ne!(k, sg_hcd_key("6.1 src:1:2 mk:3:4", b"--- a\n+++ c\n"));
        assert_ne!(k, sg_hcd_key("6.1 src:1:9 mk:3:4", b"--- a\n+++ b\n"));
        // The patch in the repository is a unified diff of xen-hcd.c with its licence header.
        let p = fs::read_to_string(util::root().join(SG_PATCH)).unwrap();
        assert!(p.starts_with("SPDX-License-Identifier: GPL-2.0\n"));
        assert!(p.contains("\n--- a/drivers/usb/host/xen-hcd.c"));
        assert!(p.contains("\n+++ b/drivers/usb/host/xen-hcd.c"));
        assert!(p.contains("+\t\thcd->self.sg_tablesize = XENHCD_SG_TABLESIZE;"));
    }

    #[test]
    fn version_sort() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64"]);
    }
}
