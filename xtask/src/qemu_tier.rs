//! The QEMU hardware tier: the kernel boots under plain QEMU (PVH entry, `-kernel <elf>`) with
//! emulated controllers and devices, runs the self-test named on its command line
//! (`usbdom.selftest=<name>`), prints `SELFTEST PASS <name>` / `SELFTEST FAIL <name>: <why>` and
//! exits QEMU through `isa-debug-exit` (status 33 = pass, 35 = fail).
//!
//! To add a scenario, add a row to [`SCENARIOS`]. Device strings may use `{disk}` for the path of
//! a disk image of known random content that xtask writes fresh for each run; its FNV-1a 64
//! checksum and size are passed on the kernel command line as `usbdom.disk_fnv=<16 hex digits>
//! usbdom.disk_bytes=<n>`. Scripted actions send QEMU monitor commands when a serial line appears.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::qemu::{self, Action};
use crate::report::Report;
use crate::util;

/// One QEMU-tier scenario.
pub struct Scenario {
    pub name: &'static str,
    /// `-device`/`-drive` style arguments, as (option, value) pairs; `{disk}` is replaced.
    pub devices: &'static [(&'static str, &'static str)],
    /// Kernel command line; must contain `usbdom.selftest=<name>`.
    pub cmdline: &'static str,
    /// Size of the disk image in MiB (0 = no image).
    pub disk_mib: usize,
    /// (serial line substring, monitor command) pairs, each fired once.
    pub actions: &'static [(&'static str, &'static str)],
    /// Hard timeout, seconds.
    pub timeout_s: u64,
}

const STICK: (&str, &str) = ("-drive", "if=none,id=stick,format=raw,file={disk}");

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "probe-xhci",
        devices: &[
            ("-device", "qemu-xhci,id=usbc"),
            STICK,
            ("-device", "usb-storage,bus=usbc.0,drive=stick"),
            ("-device", "usb-kbd,bus=usbc.0"),
        ],
        cmdline: "usbdom.selftest=probe",
        disk_mib: 8,
        actions: &[],
        timeout_s: 120,
    },
    // xHCI driver + usb-core (issue 4): enumeration of a stick (SuperSpeed: usb-storage takes the
    // USB3 port), a keyboard and a full-speed hub with a mouse behind it; whole-image checksum,
    // write/read-back, a key sent with `sendkey`, and keyboard hot-unplug/plug.
    Scenario {
        name: "xhci",
        devices: &[
            ("-device", "qemu-xhci,id=usbc"),
            STICK,
            ("-device", "usb-storage,bus=usbc.0,port=1,drive=stick"),
            ("-device", "usb-kbd,bus=usbc.0,port=2,id=kbd1"),
            ("-device", "usb-hub,bus=usbc.0,port=3"),
            ("-device", "usb-mouse,bus=usbc.0,port=3.1"),
        ],
        cmdline: "usbdom.selftest=xhci usbdom.xhci_hotplug=1 usbdom.xhci_speed=super",
        disk_mib: 8,
        actions: &[
            ("XHCI-ACTION sendkey", "sendkey a"),
            ("XHCI-ACTION second key", "sendkey c"),
            ("XHCI-ACTION unplug", "device_del kbd1"),
            (
                "XHCI-ACTION plug",
                "device_add usb-kbd,bus=usbc.0,port=4,id=kbd2",
            ),
        ],
        timeout_s: 300,
    },
    // The same on an xHCI without USB3 ports (p3=0): the stick enumerates high-speed (512-byte bulk
    // packets, USB2 port reset path).
    Scenario {
        name: "xhci-usb2",
        devices: &[
            ("-device", "qemu-xhci,id=usbc,p3=0"),
            STICK,
            ("-device", "usb-storage,bus=usbc.0,port=1,drive=stick"),
            ("-device", "usb-kbd,bus=usbc.0,port=2"),
        ],
        cmdline: "usbdom.selftest=xhci usbdom.xhci_speed=high",
        disk_mib: 4,
        actions: &[
            ("XHCI-ACTION sendkey", "sendkey b"),
            ("XHCI-ACTION second key", "sendkey d"),
        ],
        timeout_s: 300,
    },
    Scenario {
        name: "probe-uhci",
        devices: &[
            ("-device", "piix3-usb-uhci,id=usbc"),
            STICK,
            ("-device", "usb-storage,bus=usbc.0,drive=stick"),
            ("-device", "usb-kbd,bus=usbc.0"),
        ],
        cmdline: "usbdom.selftest=probe",
        disk_mib: 8,
        actions: &[],
        timeout_s: 120,
    },
    // UHCI (issue 5): enumeration, whole-image checksum (4 MiB: QEMU's UHCI moves at most 1280
    // bytes per 1 ms frame), write/read-back, keyboard reports, hot-unplug and re-plug.  Explicit
    // ports keep QEMU from inserting its automatic hub, so the root-port hotplug path is tested.
    Scenario {
        name: "uhci",
        devices: &[
            ("-device", "piix3-usb-uhci,id=usbc"),
            STICK,
            ("-device", "usb-storage,bus=usbc.0,port=1,drive=stick"),
            ("-device", "usb-kbd,bus=usbc.0,port=2,id=kbd"),
        ],
        cmdline: "usbdom.selftest=uhci",
        disk_mib: 4,
        actions: &[
            ("uhci: keyboard ready", "sendkey a"),
            ("uhci: keyboard ready", "sendkey b"),
            ("uhci: unplug keyboard", "device_del kbd"),
            (
                "uhci: plug keyboard",
                "device_add usb-kbd,bus=usbc.0,port=2,id=kbd2",
            ),
        ],
        timeout_s: 180,
    },
    // The same behind a full-speed hub (QEMU usb-hub): enumeration through the hub, hot-unplug and
    // re-plug on hub ports (usb-core's hub polling over UHCI control transfers).
    Scenario {
        name: "uhci-hub",
        devices: &[
            ("-device", "piix3-usb-uhci,id=usbc"),
            STICK,
            ("-device", "usb-storage,bus=usbc.0,port=1,drive=stick"),
            ("-device", "usb-hub,bus=usbc.0,port=2,id=hub"),
            ("-device", "usb-kbd,bus=usbc.0,port=2.1,id=kbd"),
        ],
        cmdline: "usbdom.selftest=uhci",
        disk_mib: 4,
        actions: &[
            ("uhci: keyboard ready", "sendkey a"),
            ("uhci: keyboard ready", "sendkey b"),
            ("uhci: unplug keyboard", "device_del kbd"),
            (
                "uhci: plug keyboard",
                "device_add usb-kbd,bus=usbc.0,port=2.3,id=kbd2",
            ),
        ],
        timeout_s: 180,
    },
];

/// The self-test name in a command line (`usbdom.selftest=<name>`).
pub fn selftest_name(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("usbdom.selftest="))
}

/// Write a disk image of deterministic random content (seeded by the scenario name) and return
/// its FNV-1a 64 checksum.
pub fn write_disk(path: &Path, seed_name: &str, bytes: usize) -> Result<u64, String> {
    let seed = util::fnv1a64(util::FNV_OFFSET, seed_name.as_bytes());
    let data = util::random_bytes(seed, bytes);
    fs::write(path, &data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(util::fnv1a64(util::FNV_OFFSET, &data))
}

/// Judge a finished run: exit status 33 and the pass line. Returns Err(why) on failure.
pub fn judge(
    selftest: &str,
    code: Option<i32>,
    timed_out: bool,
    lines: &[qemu::Line],
) -> Result<(), String> {
    let pass_line = format!("SELFTEST PASS {selftest}");
    let fail_prefix = format!("SELFTEST FAIL {selftest}");
    let saw_pass = lines.iter().any(|l| l.text.contains(&pass_line));
    let fail = lines.iter().find(|l| l.text.contains(&fail_prefix));
    if timed_out {
        return Err("timed out".into());
    }
    if let Some(f) = fail {
        return Err(format!("kernel says: {}", f.text.trim()));
    }
    match (code, saw_pass) {
        (Some(33), true) => Ok(()),
        (Some(33), false) => Err(format!("exit status 33 but no `{pass_line}` line")),
        (Some(35), _) => Err("exit status 35 (fail) without a SELFTEST FAIL line".into()),
        (c, true) => Err(format!(
            "`{pass_line}` printed but exit status {c:?} (want 33)"
        )),
        (c, false) => Err(format!("exit status {c:?}, no SELFTEST line")),
    }
}

/// The QEMU machine every PVH guest of xtask runs on (TCG, q35, one vCPU, serial on stdio,
/// `isa-debug-exit` for pass/fail), with `mem_mib` of memory.
pub fn machine_args(mem_mib: u32) -> Vec<String> {
    let mem = mem_mib.to_string();
    [
        "-accel",
        "tcg",
        "-M",
        "q35",
        "-cpu",
        "max",
        "-m",
        mem.as_str(),
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The base QEMU arguments of a PVH boot of the kernel.
pub fn base_args(elf: &Path, cmdline: &str) -> Vec<String> {
    let mut args = machine_args(128);
    args.extend([
        "-kernel".into(),
        elf.display().to_string(),
        "-append".into(),
        cmdline.to_string(),
    ]);
    args
}

/// Run one scenario; Err(why) on failure (the log tail is printed by the caller).
fn run_one(s: &Scenario, elf: &Path) -> Result<qemu::Outcome, (String, Option<qemu::Outcome>)> {
    let dir = util::target().join("qemu-tier");
    fs::create_dir_all(&dir).map_err(|e| (e.to_string(), None))?;
    let mut cmdline = s.cmdline.to_string();
    let disk = dir.join(format!("{}.img", s.name));
    if s.disk_mib > 0 {
        let bytes = s.disk_mib << 20;
        let h = write_disk(&disk, s.name, bytes).map_err(|e| (e, None))?;
        cmdline.push_str(&format!(
            " usbdom.disk_fnv={h:016x} usbdom.disk_bytes={bytes}"
        ));
    }
    let mut args = base_args(elf, &cmdline);
    for (opt, val) in s.devices {
        args.push(opt.to_string());
        args.push(val.replace("{disk}", &disk.display().to_string()));
    }
    let monitor = dir.join(format!("{}.monitor", s.name));
    let spec = qemu::Spec {
        args,
        log: dir.join(format!("{}.log", s.name)),
        timeout: Duration::from_secs(s.timeout_s),
        monitor: Some(monitor),
        actions: s
            .actions
            .iter()
            .map(|(w, c)| Action {
                when: w.to_string(),
                send: c.to_string(),
            })
            .collect(),
        milestones: vec![],
        on_line: Box::new(|_| {}),
    };
    let out = qemu::run(spec).map_err(|e| (e, None))?;
    let st = selftest_name(s.cmdline).unwrap_or(s.name);
    match judge(st, out.code, out.timed_out, &out.lines) {
        Ok(()) => Ok(out),
        Err(e) => Err((e, Some(out))),
    }
}

pub fn tier(r: &mut Report, only: Option<&str>) {
    println!("==== qemu tier ====");
    match util::ensure_packages(&["qemu-system-x86", "binutils"]) {
        Ok(util::Prereq::Ready) => {}
        Ok(util::Prereq::Unavailable(why)) => return r.skip("qemu tier", why),
        Err(e) => return r.fail("qemu tier: prerequisites", e),
    }
    let k = match crate::build::kernel_selftest() {
        Ok(k) => k,
        Err(e) => return r.fail("qemu tier: kernel build", e),
    };
    for s in SCENARIOS
        .iter()
        .filter(|s| only.is_none_or(|o| o == s.name))
    {
        let name = format!("qemu: {}", s.name);
        match run_one(s, &k.elf) {
            Ok(out) => {
                println!("qemu: {} passed in {:.1}s", s.name, out.secs);
                r.pass(&name)
            }
            Err((why, out)) => {
                if let Some(out) = out {
                    println!(
                        "---- {} log tail (target/qemu-tier/{}.log, {:.1}s) ----\n{}\n---- command: {}",
                        s.name,
                        s.name,
                        out.secs,
                        out.tail(25),
                        out.cmdline
                    );
                }
                r.fail(&name, why)
            }
        }
    }
    if only.is_none() {
        production_has_no_selftests(r);
    }
}

/// The production image (`cargo xtask build`, what the Xen tier runs) has no self-tests: asked
/// for one under PVH, it says so and fails, instead of running it.
fn production_has_no_selftests(r: &mut Report) {
    const NAME: &str = "qemu: production image has no self-tests";
    let k = match crate::build::kernel() {
        Ok(k) => k,
        Err(e) => return r.fail(NAME, format!("kernel build: {e}")),
    };
    let s = Scenario {
        name: "production-no-selftest",
        devices: &[],
        cmdline: "usbdom.selftest=probe",
        disk_mib: 0,
        actions: &[],
        timeout_s: 60,
    };
    match run_one(&s, &k.elf) {
        Ok(_) => r.fail(NAME, "the production image ran self-test probe"),
        Err((why, _)) if why.contains("built without self-tests") => r.pass(NAME),
        Err((why, _)) => r.fail(NAME, format!("not the expected refusal: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::Line;

    fn lines(t: &[&str]) -> Vec<Line> {
        crate::qemu::lines_at_0(t)
    }

    #[test]
    fn judge_needs_both_status_and_line() {
        let ok = lines(&["[  0.1] INFO x: SELFTEST PASS probe"]);
        assert!(judge("probe", Some(33), false, &ok).is_ok());
        assert!(judge("probe", Some(35), false, &ok).is_err());
        assert!(judge("probe", Some(0), false, &ok).is_err());
        assert!(judge("probe", None, true, &ok).is_err());
        assert!(judge("probe", Some(33), false, &lines(&["nothing"])).is_err());
        // A pass line for another self-test does not count.
        assert!(judge("enum", Some(33), false, &ok).is_err());
        let failed = lines(&["SELFTEST FAIL probe: no controller", "SELFTEST PASS probe"]);
        let e = judge("probe", Some(33), false, &failed).unwrap_err();
        assert!(e.contains("no controller"), "{e}");
    }

    #[test]
    fn scenarios_are_well_formed() {
        let mut names = std::collections::HashSet::new();
        for s in SCENARIOS {
            assert!(names.insert(s.name), "duplicate scenario {}", s.name);
            assert!(
                selftest_name(s.cmdline).is_some(),
                "{} lacks usbdom.selftest=",
                s.name
            );
            let uses_disk = s.devices.iter().any(|(_, v)| v.contains("{disk}"));
            assert_eq!(
                uses_disk,
                s.disk_mib > 0,
                "{}: disk use and size disagree",
                s.name
            );
        }
    }

    #[test]
    fn selftest_name_parsing() {
        assert_eq!(selftest_name("a=b usbdom.selftest=probe x"), Some("probe"));
        assert_eq!(selftest_name("usbdom.selftest"), None);
    }

    #[test]
    fn disk_image_checksum_matches_content() {
        let p = std::env::temp_dir().join(format!("xtask-disk-{}.img", std::process::id()));
        let h = write_disk(&p, "t", 4096).unwrap();
        let data = fs::read(&p).unwrap();
        assert_eq!(data.len(), 4096);
        assert_eq!(h, util::fnv1a64(util::FNV_OFFSET, &data));
        assert_eq!(h, write_disk(&p, "t", 4096).unwrap());
        assert_ne!(h, write_disk(&p, "u", 4096).unwrap());
        let _ = fs::remove_file(&p);
    }
}
