//! QEMU-tier throughput for `cargo xtask bench`: sequential read of a `usb-storage` stick by
//! usbdom (kernel self-test `usbdom.selftest=bench`, see `kernel/src/selftest/bench.rs`) and by a
//! Linux guest (the host's Debian kernel with a busybox initramfs built here and cached under
//! `target/bench-qemu/`), with the same QEMU flags, controller, device and image, in one run.
//!
//! Both guests first read the whole image once untimed (usbdom checks its FNV-1a 64; both warm the
//! host page cache behind QEMU's drive), then make [`PASSES`] timed passes; the best pass counts.
//! usbdom prints `BENCH-RESULT hc=<name> pass=<i> bytes=<n> ns=<t> frames=<f>` per pass; the Linux
//! guest writes start/end markers to `/dev/kmsg`, whose kernel timestamps (µs) give the pass time
//! ([`linux_samples`]). usbdom reads with READ(10) of 64 KiB (its test-side BOT reader); Linux with
//! `dd bs=1M iflag=direct` (its usb-storage driver splits that by the device's `max_sectors_kb`,
//! printed in the log). Both times are the guests' own clocks (under TCG they follow the host's).
//!
//! UHCI is also compared with QEMU's frame cap: 1280 bytes per 1 ms frame (`hcd-uhci.c`), i.e.
//! 1.28 MB/s.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cpio::Cpio;
use crate::qemu;
use crate::qemu_tier;
use crate::report::Report;
use crate::util;

/// Runs of the usbdom guest before its failure counts (each failure is printed).
pub const USBDOM_ATTEMPTS: u32 = 3;
/// Timed passes per guest.
pub const PASSES: u32 = 5;
/// QEMU's UHCI cap, bytes per second (1280 bytes per 1 ms frame).
pub const UHCI_CAP_BYTES_PER_S: f64 = 1_280_000.0;
const MIB: f64 = 1024.0 * 1024.0;

/// One controller setup measured with both guests.
pub struct Setup {
    pub name: &'static str,
    pub controller: &'static str,
    pub disk_mib: usize,
}

pub const SETUPS: &[Setup] = &[
    Setup {
        name: "xhci",
        controller: "qemu-xhci,id=usbc",
        disk_mib: 256,
    },
    Setup {
        name: "uhci",
        controller: "piix3-usb-uhci,id=usbc",
        disk_mib: 2,
    },
];

/// One `BENCH-RESULT` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub hc: String,
    pub pass: u32,
    pub bytes: u64,
    pub ns: u64,
    pub frames: u64,
}

impl Sample {
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 * 1e9 / self.ns.max(1) as f64
    }
    pub fn mib_s(&self) -> f64 {
        self.bytes_per_s() / MIB
    }
}

/// Parse `... BENCH-RESULT hc=x pass=1 bytes=2 ns=3 frames=4` (anything before the marker is
/// ignored: log prefixes, timestamps).
pub fn parse_sample(line: &str) -> Option<Sample> {
    let rest = line.split("BENCH-RESULT ").nth(1)?;
    let mut s = Sample {
        hc: String::new(),
        pass: 0,
        bytes: 0,
        ns: 0,
        frames: 0,
    };
    let mut seen = 0;
    for w in rest.split_whitespace() {
        let (k, v) = w.split_once('=')?;
        match k {
            "hc" => s.hc = v.to_string(),
            "pass" => s.pass = v.parse().ok()?,
            "bytes" => s.bytes = v.parse().ok()?,
            "ns" => s.ns = v.parse().ok()?,
            "frames" => s.frames = v.parse().ok()?,
            _ => continue,
        }
        seen += 1;
    }
    (seen == 5 && !s.hc.is_empty() && s.ns > 0 && s.bytes > 0).then_some(s)
}

/// The Linux guest's pass markers: `[  12.345678] BENCH-T start pass=<i>` and
/// `[  12.456789] BENCH-T end pass=<i> bytes=<n>`, written to `/dev/kmsg` so the guest kernel
/// stamps them (microseconds, no process forked to read a clock). Start/end pairs become samples
/// of `hc` (`frames=0`).
pub fn linux_samples<'a>(lines: impl IntoIterator<Item = &'a str>, hc: &str) -> Vec<Sample> {
    let mut start: Option<(u32, f64)> = None;
    let mut out = Vec::new();
    for l in lines {
        let Some((pre, rest)) = l.split_once("BENCH-T ") else {
            continue;
        };
        let Some(t) = pre
            .rsplit_once('[')
            .and_then(|(_, x)| x.split_once(']'))
            .and_then(|(x, _)| x.trim().parse::<f64>().ok())
        else {
            continue;
        };
        let kv = |k: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let Some(pass) = kv("pass").map(|p| p as u32) else {
            continue;
        };
        if rest.starts_with("start") {
            start = Some((pass, t));
        } else if rest.starts_with("end") {
            if let (Some((p0, t0)), Some(bytes)) = (start.take(), kv("bytes")) {
                let ns = ((t - t0) * 1e9).round();
                if p0 == pass && ns >= 1.0 {
                    out.push(Sample {
                        hc: hc.to_string(),
                        pass,
                        bytes,
                        ns: ns as u64,
                        frames: 0,
                    });
                }
            }
        }
    }
    out
}

/// The fastest of the samples of `hc`, after checking there are `passes` of them, each of
/// `bytes` bytes.
pub fn best(samples: &[Sample], hc: &str, passes: u32, bytes: u64) -> Result<Sample, String> {
    let mine: Vec<&Sample> = samples.iter().filter(|s| s.hc == hc).collect();
    if mine.len() != passes as usize {
        return Err(format!(
            "{} BENCH-RESULT lines for {hc}, want {passes}",
            mine.len()
        ));
    }
    if let Some(s) = mine.iter().find(|s| s.bytes != bytes) {
        return Err(format!(
            "{hc} pass {} read {} bytes, the image has {bytes}",
            s.pass, s.bytes
        ));
    }
    Ok((*mine
        .iter()
        .max_by(|a, b| a.bytes_per_s().total_cmp(&b.bytes_per_s()))
        .expect("non-empty"))
    .clone())
}

/// The QEMU arguments both guests share (everything but the kernel, initrd and command line).
pub fn common_args(s: &Setup, disk: &Path) -> Vec<String> {
    let mut args = crate::qemu_tier::machine_args(256);
    args.extend([
        "-device".into(),
        s.controller.to_string(),
        "-drive".into(),
        format!("if=none,id=stick,format=raw,file={}", disk.display()),
        "-device".into(),
        "usb-storage,bus=usbc.0,port=1,drive=stick".into(),
    ]);
    args
}

/// The newest Debian `*-amd64` kernel with a vmlinuz and modules.
fn linux_kernel() -> Result<String, String> {
    crate::xen::newest_kernel("modules.dep", "modules")
}

/// Modules the Linux guest loads, dependencies first (from `modprobe --show-depends`).
const MODULES: &[&str] = &["xhci-pci", "uhci-hcd", "usb-storage", "sd_mod"];

/// The Linux guest's `/init`. Kernel parameters `bench_passes=N` arrive as environment.
const INIT: &str = r#"#!/bin/sh
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in $(cat /modules.list); do insmod /mods/$m >/dev/null 2>&1; done
i=0
while [ ! -b /dev/sda ] && [ $i -lt 300 ]; do usleep 100000; i=$((i+1)); done
if [ ! -b /dev/sda ]; then echo "BENCH-LINUX FAIL: no /dev/sda"; poweroff -f; fi
bytes=$(( $(cat /sys/block/sda/size) * 512 ))
echo "BENCH-LINUX sda $bytes bytes, max_sectors_kb $(cat /sys/block/sda/queue/max_sectors_kb)"
dd if=/dev/sda of=/dev/null bs=1M iflag=direct 2>/dev/null || echo "BENCH-LINUX FAIL: dd"
p=1
while [ $p -le ${bench_passes:-3} ]; do
  echo "<2>BENCH-T start pass=$p" >/dev/kmsg
  dd if=/dev/sda of=/dev/null bs=1M iflag=direct 2>/dev/null
  echo "<2>BENCH-T end pass=$p bytes=$bytes" >/dev/kmsg
  p=$((p+1))
done
echo "BENCH-LINUX done"
poweroff -f
"#;

/// Build (or reuse) the Linux guest's initramfs. Returns (vmlinuz, initramfs).
fn linux_guest(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let kver = linux_kernel()?;
    let vmlinuz = PathBuf::from(format!("/boot/vmlinuz-{kver}"));
    let out = dir.join("linux-initramfs.cpio");
    let key = format!(
        "{}|{}|{}|{}|{}",
        util::file_key(&vmlinuz),
        util::file_key(Path::new("/bin/busybox")),
        util::file_key(Path::new(&format!("/lib/modules/{kver}/modules.dep"))),
        MODULES.join(","),
        util::fnv1a64(util::FNV_OFFSET, INIT.as_bytes())
    );
    util::cached(&out, &key, |out| {
        println!("bench: building the Linux guest initramfs ({kver})");
        let mut c = Cpio::new();
        for d in ["bin", "dev", "proc", "sys", "mods"] {
            c.dir(d, 0o755);
        }
        c.host_file("bin/busybox", Path::new("/bin/busybox"))
            .map_err(|e| format!("/bin/busybox: {e}"))?;
        for a in [
            "sh", "mount", "cat", "insmod", "usleep", "sed", "dd", "poweroff", "echo",
        ] {
            c.symlink(&format!("bin/{a}"), "busybox");
        }
        let mut order: Vec<String> = Vec::new();
        for m in MODULES {
            let deps =
                util::output(Command::new("modprobe").args(["--show-depends", "-S", &kver, m]))?;
            for l in deps.lines() {
                let w: Vec<&str> = l.split_whitespace().collect();
                if w.first() != Some(&"insmod") || w.len() < 2 {
                    continue;
                }
                let p = Path::new(w[1]);
                let base = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| format!("odd module path {}", w[1]))?;
                if order.contains(&base) {
                    continue;
                }
                c.host_file(&format!("mods/{base}"), p)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                order.push(base);
            }
        }
        if order.is_empty() {
            return Err("modprobe --show-depends found no modules".into());
        }
        c.file("modules.list", 0o644, (order.join("\n") + "\n").as_bytes());
        c.file("init", 0o755, INIT.as_bytes());
        fs::write(out, c.finish()).map_err(|e| format!("{}: {e}", out.display()))
    })?;
    Ok((vmlinuz, out))
}

fn run_guest(
    name: &str,
    args: Vec<String>,
    log: PathBuf,
    timeout_s: u64,
) -> Result<qemu::Outcome, String> {
    let out = qemu::run(qemu::Spec {
        args,
        log: log.clone(),
        timeout: Duration::from_secs(timeout_s),
        monitor: None,
        actions: vec![],
        milestones: vec![],
        on_line: Box::new(|_| {}),
    })?;
    println!(
        "bench: {name} guest ran {:.1}s (log {})",
        out.secs,
        log.display()
    );
    Ok(out)
}

fn samples(out: &qemu::Outcome) -> Vec<Sample> {
    let mut v: Vec<Sample> = out
        .lines
        .iter()
        .filter_map(|l| parse_sample(&l.text))
        .collect();
    v.extend(linux_samples(
        out.lines.iter().map(|l| l.text.as_str()),
        "linux",
    ));
    v
}

fn fail_with_tail(r: &mut Report, name: &str, why: String, out: Option<&qemu::Outcome>) {
    if let Some(o) = out {
        println!("---- {name} log tail ----\n{}", o.tail(15));
    }
    r.fail(name, why)
}

/// `loadavg` as "1-min 5-min 15-min".
pub fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn run(r: &mut Report) {
    println!("==== bench: QEMU-tier sequential read (usbdom vs Linux, TCG) ====");
    // The Linux guest is the host's Debian kernel (a fresh machine has none installed).
    match util::ensure_packages(&[
        "qemu-system-x86",
        "busybox-static",
        "kmod",
        "linux-image-amd64",
    ]) {
        Ok(util::Prereq::Ready) => {}
        Ok(util::Prereq::Unavailable(why)) => return r.skip("bench: qemu throughput", why),
        Err(e) => return r.fail("bench: qemu throughput: prerequisites", e),
    }
    let k = match crate::build::kernel_selftest() {
        Ok(k) => k,
        Err(e) => return r.fail("bench: qemu throughput: kernel build", e),
    };
    let dir = util::target().join("bench-qemu");
    if let Err(e) = fs::create_dir_all(&dir) {
        return r.fail("bench: qemu throughput", e.to_string());
    }
    let linux = linux_guest(&dir);
    if let Err(e) = &linux {
        r.skip("bench: linux guest", format!("no Linux guest: {e}"));
    }
    println!("bench: load average before: {}", load());
    for s in SETUPS {
        let name = format!("bench: qemu {} read", s.name);
        let disk = dir.join(format!("{}.img", s.name));
        let bytes = s.disk_mib << 20;
        let h = match qemu_tier::write_disk(&disk, &format!("bench-{}", s.name), bytes) {
            Ok(h) => h,
            Err(e) => {
                r.fail(&name, e);
                continue;
            }
        };
        // usbdom.
        let mut args = common_args(s, &disk);
        args.extend([
            "-kernel".into(),
            k.elf.display().to_string(),
            "-append".into(),
            format!(
                "usbdom.selftest=bench usbdom.bench_hc={} usbdom.bench_passes={PASSES} usbdom.disk_fnv={h:016x} usbdom.disk_bytes={bytes}",
                s.name
            ),
        ]);
        // Up to USBDOM_ATTEMPTS runs: a failed run is reported (never hidden) and retried, so an
        // intermittent driver failure does not cost the measurement.
        let mut failures: Vec<String> = Vec::new();
        let mut got = None;
        for attempt in 1..=USBDOM_ATTEMPTS {
            let log = dir.join(format!("usbdom-{}-{attempt}.log", s.name));
            let ud = match run_guest(
                &format!("usbdom {}", s.name),
                args.clone(),
                log.clone(),
                240,
            ) {
                Ok(o) => o,
                Err(e) => {
                    failures.push(e);
                    break;
                }
            };
            let res = qemu_tier::judge("bench", ud.code, ud.timed_out, &ud.lines)
                .and_then(|()| best(&samples(&ud), s.name, PASSES, bytes as u64));
            match res {
                Ok(u) => {
                    got = Some(u);
                    break;
                }
                Err(e) => {
                    println!(
                        "bench: usbdom {} attempt {attempt} FAILED: {e} (log {})\n{}",
                        s.name,
                        log.display(),
                        ud.tail(6)
                    );
                    failures.push(e);
                }
            }
        }
        let Some(u) = got else {
            r.fail(&name, failures.join("; "));
            continue;
        };
        // Linux.
        let l = match &linux {
            Ok((vmlinuz, initrd)) => {
                let mut args = common_args(s, &disk);
                args.extend([
                    "-kernel".into(),
                    vmlinuz.display().to_string(),
                    "-initrd".into(),
                    initrd.display().to_string(),
                    "-append".into(),
                    format!("console=ttyS0 quiet panic=-1 bench_passes={PASSES}"),
                ]);
                let lname = format!("bench: qemu {} read, Linux guest", s.name);
                match run_guest(
                    &format!("Linux {}", s.name),
                    args,
                    dir.join(format!("linux-{}.log", s.name)),
                    420,
                ) {
                    Ok(o) => match best(&samples(&o), "linux", PASSES, bytes as u64) {
                        Ok(l) if o.find("BENCH-LINUX done").is_some() => {
                            if let Some(m) = o.find("max_sectors_kb") {
                                println!("bench: Linux {}: {}", s.name, m.text.trim());
                            }
                            Some(l)
                        }
                        Ok(_) => {
                            fail_with_tail(r, &lname, "no `BENCH-LINUX done`".into(), Some(&o));
                            None
                        }
                        Err(e) => {
                            fail_with_tail(r, &lname, e, Some(&o));
                            None
                        }
                    },
                    Err(e) => {
                        r.fail(&lname, e);
                        None
                    }
                }
            }
            Err(_) => None,
        };
        println!(
            "{name}: {} MiB image, best of {PASSES} passes, TCG, same QEMU flags:",
            s.disk_mib
        );
        println!(
            "  usbdom  {:8.2} MiB/s  ({:.3} s){}",
            u.mib_s(),
            u.ns as f64 / 1e9,
            if failures.is_empty() {
                String::new()
            } else {
                format!(
                    "  -- after {} FAILED run(s): {}",
                    failures.len(),
                    failures.join("; ")
                )
            }
        );
        if let Some(l) = &l {
            println!(
                "  Linux   {:8.2} MiB/s  ({:.3} s)",
                l.mib_s(),
                l.ns as f64 / 1e9
            );
            println!("  usbdom/Linux = {:.2}", u.bytes_per_s() / l.bytes_per_s());
        }
        if s.name == "uhci" {
            print!(
                "  usbdom/QEMU UHCI cap (1.28 MB/s) = {:.3} by the guest clock",
                u.bytes_per_s() / UHCI_CAP_BYTES_PER_S
            );
            if u.frames > 0 {
                print!(
                    ", {:.3} by frames ({:.1} bytes/frame of 1280)",
                    u.bytes as f64 / u.frames as f64 / 1280.0,
                    u.bytes as f64 / u.frames as f64
                );
            }
            println!();
            if let Some(l) = &l {
                println!(
                    "  Linux/QEMU UHCI cap = {:.3}",
                    l.bytes_per_s() / UHCI_CAP_BYTES_PER_S
                );
            }
        }
        r.pass(&name);
    }
    println!("bench: load average after: {}", load());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_parsing() {
        let l = "[    5.44] [    4.5] INFO  bench: BENCH-RESULT hc=xhci pass=2 bytes=67108864 ns=1500000000 frames=0";
        let s = parse_sample(l).unwrap();
        assert_eq!(
            s,
            Sample {
                hc: "xhci".into(),
                pass: 2,
                bytes: 67108864,
                ns: 1_500_000_000,
                frames: 0
            }
        );
        assert!((s.mib_s() - 64.0 / 1.5).abs() < 1e-9);
        // Extra keys are ignored; a missing or malformed one rejects the line.
        assert!(parse_sample(
            "BENCH-RESULT hc=linux pass=1 bytes=10 ns=5 frames=0 clock_read_ns=3"
        )
        .is_some());
        assert!(parse_sample("BENCH-RESULT hc=linux pass=1 bytes=10 frames=0").is_none());
        assert!(parse_sample("BENCH-RESULT hc=linux pass=1 bytes=10 ns=-4 frames=0").is_none());
        assert!(parse_sample("BENCH-RESULT hc=linux pass=1 bytes=10 ns=0 frames=0").is_none());
        assert!(parse_sample("hc=linux pass=1 bytes=10 ns=5 frames=0").is_none());
    }

    fn s(hc: &str, pass: u32, bytes: u64, ns: u64) -> Sample {
        Sample {
            hc: hc.into(),
            pass,
            bytes,
            ns,
            frames: 0,
        }
    }

    #[test]
    fn best_pass_is_the_fastest_and_checks_counts_and_sizes() {
        let v = vec![
            s("xhci", 1, 100, 30),
            s("xhci", 2, 100, 20),
            s("linux", 1, 100, 1),
            s("xhci", 3, 100, 25),
        ];
        assert_eq!(best(&v, "xhci", 3, 100).unwrap().pass, 2);
        assert!(best(&v, "xhci", 2, 100).is_err());
        assert!(best(&v, "xhci", 3, 99).is_err());
        assert!(best(&v, "uhci", 3, 100).is_err());
    }

    #[test]
    fn both_guests_get_the_same_hardware() {
        let d = Path::new("/tmp/x.img");
        for st in SETUPS {
            let a = common_args(st, d);
            assert!(a.iter().any(|x| x == st.controller));
            assert!(a.iter().any(|x| x.contains("file=/tmp/x.img")));
            assert!(!a.iter().any(|x| x == "-kernel" || x == "-append"));
        }
    }

    #[test]
    fn linux_markers_become_samples() {
        let log = [
            "[    6.100000] BENCH-T start pass=1",
            "noise",
            "[    6.350000] BENCH-T end pass=1 bytes=2097152",
            // An end without its start, and a start whose end is for another pass: ignored.
            "[    7.000000] BENCH-T end pass=9 bytes=2097152",
            "[    7.100000] BENCH-T start pass=2",
            "[    7.200000] BENCH-T end pass=3 bytes=2097152",
            "[    8.000000] BENCH-T start pass=4",
            "[    8.500000] BENCH-T end pass=4 bytes=100",
        ];
        let v = linux_samples(log, "linux");
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0], s("linux", 1, 2097152, 250_000_000));
        assert_eq!(v[1], s("linux", 4, 100, 500_000_000));
    }

    #[test]
    fn init_script_markers_match_the_parser() {
        // The guest's marker lines as its kernel prints them, shell variables substituted.
        let marker = |needle: &str| -> String {
            let l = INIT.lines().find(|l| l.contains(needle)).unwrap().trim();
            let body = l
                .trim_start_matches("echo \"<2>")
                .split('"')
                .next()
                .unwrap()
                .replace("$p", "1")
                .replace("$bytes", "4096");
            assert!(l.ends_with(">/dev/kmsg"), "{l}");
            body
        };
        let log = [
            format!("[    1.000000] {}", marker("BENCH-T start")),
            format!("[    1.500000] {}", marker("BENCH-T end")),
        ];
        assert_eq!(
            linux_samples(log.iter().map(String::as_str), "linux"),
            vec![s("linux", 1, 4096, 500_000_000)]
        );
    }
}
