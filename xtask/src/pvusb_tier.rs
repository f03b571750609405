//! Xen tier, PVUSB: one more boot per controller (xHCI, UHCI) in which dom0 itself is the `xen-hcd` frontend of usbdom
//! (`tests/xen/pvusb-tier.sh` → `tests/xen/pvusb.sh`): the dom0 tool lists the devices, creates a
//! virtual controller, attaches the stick (whole-device sha256 against the image, O_DIRECT write
//! and read back, a reset by the guest that usbdom carries out for real) and the keyboard (a HID
//! input device), detaches, removes the controller.
//! In the xHCI boot a second Linux domain then becomes the frontend (`tests/xen/pvusb-domu.sh`):
//! it reads the whole stick (sha256), is destroyed in the middle of its next read (with the
//! keyboard's interrupt transfer in flight), usbdom cleans up and resets both devices, and dom0
//! as the next frontend reads the whole device as the image. Before that, also in the xHCI boot,
//! dom0 is the frontend once more with `xen-hcd-sg.ko` (xen-hcd with scatter-gather,
//! `tests/xen-hcd/xen-hcd-sg.patch`; `tests/xen/pvusb-sg.sh`): queue limits, whole-device sha256
//! through O_DIRECT reads of several sizes and buffer offsets, O_DIRECT writes read back.
//! The scripts print one `PVUSB-CHECK PASS <name>` / `PVUSB-CHECK FAIL <name>: <why>` line per
//! check and `PVUSB-MEASURE <name> <value>` lines; every expected check must pass.

use std::time::Duration;

use crate::qemu::Line;
use crate::report::Report;
use crate::util;
use crate::xen::{self, Artifacts, Boot};

/// The checks `tests/xen/pvusb.sh` makes, in order; a missing one fails ("not reached").
pub const CHECKS: &[&str] = &[
    "list",
    "modprobe-xen-hcd",
    "create-controller",
    "attach-stick",
    "frontend-disk",
    "sha256",
    "odirect-write-read",
    "guest-reset",
    "keyboard-hid",
    "detach",
    "remove-controller",
];

/// The checks `tests/xen/pvusb-domu.sh` makes, in order (the second-frontend scenario).
pub const DOMU_CHECKS: &[&str] = &[
    "domu-boot",
    "domu-attach",
    "domu-disk",
    "domu-destroy-cleanup",
    "domu-inflight-drained",
    "domu-device-reset",
    "after-destroy-sha256",
];

/// The checks `tests/xen/pvusb-sg.sh` makes, in order (dom0's frontend is `xen-hcd-sg.ko`).
pub const SG_CHECKS: &[&str] = &[
    "insmod-xen-hcd-sg",
    "frontend-is-xen-hcd-sg",
    "sha256-odirect-1m-120k-commands",
    "sg-queue-limits",
    "sha256-odirect-64k",
    "sha256-odirect-1m",
    "sha256-odirect-at512-61440",
    "sha256-odirect-at3584-61440",
    "sha256-odirect-at3584-65536",
    "sha256-odirect-at1536-1048576",
    "sha256-buffered",
    "odirect-write-read-restore",
    "sha256-after-restore",
    "dmesg-clean",
];

/// The verdict of each expected check (`expected`) from the serial lines.
pub fn verdicts(
    lines: &[Line],
    prefix: &str,
    expected: &[&str],
) -> Vec<(String, Result<(), String>)> {
    let mut seen: Vec<(String, Result<(), String>)> = Vec::new();
    for l in lines {
        let Some(i) = l.text.find("PVUSB-CHECK ") else {
            continue;
        };
        let rest = &l.text[i + "PVUSB-CHECK ".len()..];
        if let Some(name) = rest.strip_prefix("PASS ") {
            seen.push((name.trim().to_string(), Ok(())));
        } else if let Some(r) = rest.strip_prefix("FAIL ") {
            let (name, why) = r.split_once(": ").unwrap_or((r, "failed"));
            seen.push((name.trim().to_string(), Err(why.trim().to_string())));
        }
    }
    expected
        .iter()
        .map(|c| {
            // A check that failed anywhere counts as failed.
            let mine: Vec<&Result<(), String>> = seen
                .iter()
                .filter(|(n, _)| n == c)
                .map(|(_, v)| v)
                .collect();
            let v = if mine.is_empty() {
                Err("not reached (see the serial log)".to_string())
            } else if let Some(Err(e)) = mine.iter().find(|v| v.is_err()) {
                Err(e.clone())
            } else {
                Ok(())
            };
            (format!("{prefix}: {c}"), v)
        })
        .collect()
}

/// The `PVUSB-MEASURE` values.
pub fn measures(lines: &[Line]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let i = l.text.find("PVUSB-MEASURE ")?;
            let mut w = l.text[i + "PVUSB-MEASURE ".len()..].split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The scenarios a PVUSB boot runs after `tests/xen/pvusb.sh`.
pub struct Also {
    /// A second Linux domain as the frontend ([`DOMU_CHECKS`]).
    pub domu: bool,
    /// dom0 as the frontend with the scatter-gather `xen-hcd-sg.ko` ([`SG_CHECKS`]).
    pub sg: bool,
}

/// Boot once more with the PVUSB scenario over `controller` (a QEMU device of
/// [`xen::CONTROLLERS`]) and judge it; check names start with `xen: <name>:`. The scenarios of
/// `also` run in the same boot (the scatter-gather frontend's before the second domain's).
pub fn tier(
    controller: &str,
    name: &str,
    r: &mut Report,
    art: &Artifacts,
    guest: &std::path::Path,
    mut vars: Vec<(String, String)>,
    also: Also,
) {
    let Also { domu, sg } = also;
    let mut extra_files = vec![];
    let mut expected: Vec<&str> = CHECKS.to_vec();
    if sg {
        vars.push(("pvusb_sg".into(), "1".into()));
        expected.extend_from_slice(SG_CHECKS);
    }
    if domu {
        vars.push(("pvusb_domu".into(), "1".into()));
        // The dom0 script's own bound (tests/xen/init), inside the QEMU timeout below.
        vars.push(("timeout".into(), if sg { "680" } else { "560" }.into()));
        // The dom0 kernel doubles as the frontend domU's kernel.
        extra_files.push(("guest/vmlinuz".to_string(), art.vmlinuz.clone()));
        expected.extend_from_slice(DOMU_CHECKS);
    }
    let b = Boot {
        art,
        guest,
        test: "pvusb-tier",
        dom0_vars: vars,
        controller,
        devices: vec![],
        extra_files,
        dir: util::target().join("xen-tier"),
        name,
        monitor: None,
        actions: vec![],
        timeout: Duration::from_secs(if sg { 720 } else { 600 }),
        echo: true,
    };
    let prefix = format!("xen: {name}");
    let res = match xen::boot(&b) {
        Ok(x) => x,
        Err(e) => return r.fail(&format!("{prefix}: boot"), e),
    };
    let before = r.counts().1;
    for (check, v) in verdicts(&res.out.lines, &prefix, &expected) {
        match v {
            Ok(()) => r.pass(&check),
            Err(e) => r.fail(&check, e),
        }
    }
    r.check(
        &format!("{prefix}: usbdom gone after xl shutdown"),
        res.out
            .find(&format!("XT: domain {} gone after shutdown", xen::DOMAIN))
            .is_some(),
        "usbdom did not go away after `xl shutdown`",
    );
    for l in res
        .out
        .lines
        .iter()
        .filter(|l| l.text.contains("DOM0 PROGRAM CRASHED: "))
    {
        println!(
            "{prefix}: NOTE: a dom0 program crashed in this run (not usbdom): {}",
            l.text
        );
    }
    for (k, v) in measures(&res.out.lines) {
        println!("{prefix}: {k} = {v}");
    }
    if r.counts().1 > before {
        xen::diagnostics(&b, &res);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(t: &[&str]) -> Vec<Line> {
        crate::qemu::lines_at_0(t)
    }

    #[test]
    fn all_expected_checks_must_pass() {
        let mut lines: Vec<String> = CHECKS
            .iter()
            .map(|c| format!("PVUSB-CHECK PASS {c}"))
            .collect();
        let all: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert!(verdicts(&l(&all), "xen: pvusb", CHECKS)
            .iter()
            .all(|(_, v)| v.is_ok()));

        // One missing: that one fails, the others pass.
        lines.remove(3);
        let some: Vec<&str> = lines.iter().map(String::as_str).collect();
        let v = verdicts(&l(&some), "xen: pvusb", CHECKS);
        assert_eq!(v.len(), CHECKS.len());
        assert_eq!(v.iter().filter(|(_, v)| v.is_err()).count(), 1);
        assert!(v[3].1.as_ref().unwrap_err().contains("not reached"));
    }

    #[test]
    fn a_fail_line_wins_and_keeps_its_reason() {
        let v = verdicts(
            &l(&[
                "PVUSB-CHECK PASS sha256",
                "[  12.0] PVUSB-CHECK FAIL sha256: sha256 abc != image def",
            ]),
            "xen: pvusb",
            CHECKS,
        );
        let (name, r) = v.iter().find(|(n, _)| n.ends_with("sha256")).unwrap();
        assert_eq!(name, "xen: pvusb: sha256");
        assert_eq!(r.as_ref().unwrap_err(), "sha256 abc != image def");
    }

    #[test]
    fn domu_checks_are_expected_only_when_asked_for() {
        let lines: Vec<String> = CHECKS
            .iter()
            .map(|c| format!("PVUSB-CHECK PASS {c}"))
            .collect();
        let all: Vec<&str> = lines.iter().map(String::as_str).collect();
        let mut both = CHECKS.to_vec();
        both.extend_from_slice(DOMU_CHECKS);
        let v = verdicts(&l(&all), "xen: pvusb", &both);
        assert_eq!(v.len(), CHECKS.len() + DOMU_CHECKS.len());
        assert_eq!(
            v.iter().filter(|(_, r)| r.is_err()).count(),
            DOMU_CHECKS.len(),
            "the domU checks were not reached: {v:?}"
        );
    }

    #[test]
    fn sg_checks_are_the_ones_pvusb_sg_sh_makes() {
        let script = std::fs::read_to_string(util::root().join("tests/xen/pvusb-sg.sh")).unwrap();
        for c in SG_CHECKS {
            let made = if let Some(rest) = c.strip_prefix("sha256-odirect-at") {
                let (mis, chunk) = rest.split_once('-').unwrap();
                script.contains(&format!("\nodirect_check {mis} {chunk}\n"))
            } else {
                script.contains(&format!("pass {c}\n"))
                    || script.contains(&format!("pass {c} "))
                    || script.contains(&format!("\nread_check {c} "))
            };
            assert!(made, "tests/xen/pvusb-sg.sh makes no check {c}");
        }
        // Asked for, they are expected, and missing ones fail.
        let v = verdicts(
            &l(&["PVUSB-CHECK PASS dmesg-clean"]),
            "xen: pvusb",
            SG_CHECKS,
        );
        assert_eq!(v.iter().filter(|(_, r)| r.is_ok()).count(), 1);
    }

    #[test]
    fn measures_parsed() {
        let m = measures(&l(&[
            "x",
            "PVUSB-MEASURE read-mib-s 0.58",
            "PVUSB-MEASURE bad",
        ]));
        assert_eq!(m, vec![("read-mib-s".to_string(), "0.58".to_string())]);
    }
}
