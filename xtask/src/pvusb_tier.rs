//! Xen tier, PVUSB: one more boot per controller (xHCI, UHCI) in which dom0 itself is the `xen-hcd` frontend of usbdom
//! (`tests/xen/pvusb-tier.sh` → `tests/xen/pvusb.sh`): the dom0 tool lists the devices, creates a
//! virtual controller, attaches the stick (whole-device sha256 against the image, O_DIRECT write
//! and read back) and the keyboard (a HID input device), detaches, removes the controller. The
//! script prints one `PVUSB-CHECK PASS <name>` / `PVUSB-CHECK FAIL <name>: <why>` line per check
//! and `PVUSB-MEASURE <name> <value>` lines; every expected check must pass.

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
    "keyboard-hid",
    "detach",
    "remove-controller",
];

/// The verdict of each expected check from the serial lines.
pub fn verdicts(lines: &[Line], prefix: &str) -> Vec<(String, Result<(), String>)> {
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
    CHECKS
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

/// Boot once more with the PVUSB scenario over `controller` (a QEMU device of
/// [`xen::CONTROLLERS`]) and judge it; check names start with `xen: <name>:`.
pub fn tier(
    controller: &str,
    name: &str,
    r: &mut Report,
    art: &Artifacts,
    guest: &std::path::Path,
    vars: Vec<(String, String)>,
) {
    let b = Boot {
        art,
        guest,
        test: "pvusb-tier",
        dom0_vars: vars,
        controller,
        devices: vec![],
        extra_files: vec![],
        dir: util::target().join("xen-tier"),
        name,
        monitor: None,
        actions: vec![],
        timeout: Duration::from_secs(600),
        echo: true,
    };
    let prefix = format!("xen: {name}");
    let res = match xen::boot(&b) {
        Ok(x) => x,
        Err(e) => return r.fail(&format!("{prefix}: boot"), e),
    };
    let before = r.counts().1;
    for (check, v) in verdicts(&res.out.lines, &prefix) {
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
        t.iter()
            .map(|s| Line {
                t: 0.0,
                text: s.to_string(),
            })
            .collect()
    }

    #[test]
    fn all_expected_checks_must_pass() {
        let mut lines: Vec<String> = CHECKS
            .iter()
            .map(|c| format!("PVUSB-CHECK PASS {c}"))
            .collect();
        let all: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert!(verdicts(&l(&all), "xen: pvusb")
            .iter()
            .all(|(_, v)| v.is_ok()));

        // One missing: that one fails, the others pass.
        lines.remove(3);
        let some: Vec<&str> = lines.iter().map(String::as_str).collect();
        let v = verdicts(&l(&some), "xen: pvusb");
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
        );
        let (name, r) = v.iter().find(|(n, _)| n.ends_with("sha256")).unwrap();
        assert_eq!(name, "xen: pvusb: sha256");
        assert_eq!(r.as_ref().unwrap_err(), "sha256 abc != image def");
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
