//! Checks of the usbdom console log against the agreed console lines (see the Xen tier).
//! Each line goes through the kernel's `log` backend (`[  secs.micros] LEVEL target: message`), so
//! the checks look for substrings and parse the values they need.

/// Values of the `xhci: BAR0 mapped: ...` line.
#[derive(Debug, PartialEq, Eq)]
pub struct XhciCaps {
    pub caplength: u32,
    pub hciversion: u32,
    pub hcsparams1: u32,
    pub slots: u32,
    pub ports: u32,
}

fn hex_after(line: &str, key: &str) -> Option<u32> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u32::from_str_radix(&digits, 16).ok()
}

fn dec_after(line: &str, key: &str) -> Option<u32> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Parse `xhci: BAR0 mapped: CAPLENGTH=0x40 HCIVERSION=0x0100 HCSPARAMS1=0x... (slots N, ports N)`.
pub fn parse_xhci(line: &str) -> Option<XhciCaps> {
    if !line.contains("xhci: BAR0 mapped:") {
        return None;
    }
    Some(XhciCaps {
        caplength: hex_after(line, "CAPLENGTH=0x")?,
        hciversion: hex_after(line, "HCIVERSION=0x")?,
        hcsparams1: hex_after(line, "HCSPARAMS1=0x")?,
        slots: dec_after(line, "(slots ")?,
        ports: dec_after(line, "ports ")?,
    })
}

/// Sanity of the xHCI capability registers (xHCI 1.2 §5.3): CAPLENGTH ≥ 0x20, a known HCIVERSION,
/// MaxSlots (HCSPARAMS1 bits 7:0) and MaxPorts (bits 31:24) non-zero and equal to what the line says.
pub fn check_xhci(c: &XhciCaps) -> Result<(), String> {
    if c.caplength < 0x20 || c.caplength > 0xff {
        return Err(format!("CAPLENGTH 0x{:x} out of range", c.caplength));
    }
    if ![0x0090, 0x0096, 0x0100, 0x0110, 0x0120].contains(&c.hciversion) {
        return Err(format!("HCIVERSION 0x{:04x} unknown", c.hciversion));
    }
    let max_slots = c.hcsparams1 & 0xff;
    let max_ports = c.hcsparams1 >> 24;
    if max_slots == 0 || max_ports == 0 {
        return Err(format!(
            "HCSPARAMS1 0x{:08x}: MaxSlots {max_slots}, MaxPorts {max_ports}",
            c.hcsparams1
        ));
    }
    if (c.slots, c.ports) != (max_slots, max_ports) {
        return Err(format!(
            "line says slots {} ports {} but HCSPARAMS1 0x{:08x} means slots {max_slots} ports {max_ports}",
            c.slots, c.ports, c.hcsparams1
        ));
    }
    Ok(())
}

/// The check results for a usbdom console log from the Xen tier: (check name, Ok or why not).
/// `name` is the domain name given to `xl create`; `pci_id` the controller's `vvvv:dddd`.
pub fn xen_checks(
    console: &str,
    name: &str,
    pci_id: &str,
) -> Vec<(&'static str, Result<(), String>)> {
    let lines: Vec<&str> = console.lines().collect();
    let find = |pat: &str| lines.iter().copied().find(|l| l.contains(pat));
    let need = |pat: &str| -> Result<(), String> {
        find(pat)
            .map(|_| ())
            .ok_or(format!("no line containing `{pat}`"))
    };
    let mut out: Vec<(&'static str, Result<(), String>)> = Vec::new();
    let banner = format!("usbdom {} starting (xen-pv)", env!("CARGO_PKG_VERSION"));
    out.push(("banner", need(&banner)));
    out.push((
        "domid and name from xenstore",
        match find("xenstore: domid ") {
            None => Err("no `xenstore: domid <N> name <name>` line".into()),
            Some(l) => {
                let domid = dec_after(l, "xenstore: domid ");
                let got = l.split(" name ").nth(1).map(str::trim);
                match (domid, got) {
                    (Some(d), Some(n)) if d >= 1 && n == name => Ok(()),
                    _ => Err(format!("want a domid >= 1 and name {name}: `{l}`")),
                }
            }
        },
    ));
    out.push(("pcifront connected", need("pcifront: connected")));
    out.push((
        "controller found through pcifront",
        match lines
            .iter()
            .find(|l| l.contains("pci: ") && l.contains(&format!(" {pci_id} class 0c03")))
        {
            Some(_) => Ok(()),
            None => Err(format!("no `pci: <bdf> {pci_id} class 0c03xx ...` line")),
        },
    ));
    out.push((
        "BAR0 mapped, capability registers sane",
        match find("xhci: BAR0 mapped:") {
            None => Err("no `xhci: BAR0 mapped:` line".into()),
            Some(l) => parse_xhci(l)
                .ok_or_else(|| format!("cannot parse `{l}`"))
                .and_then(|c| check_xhci(&c)),
        },
    ));
    out.push((
        "first interrupt received",
        need("irq: first interrupt received ("),
    ));
    out.push(("ready", need("usbdom: ready")));
    out.push(("shutdown line", need("usbdom: shutdown (poweroff)")));
    out.push((
        "no panic",
        match find("PANIC at") {
            Some(l) => Err(format!("panicked: `{l}`")),
            None => Ok(()),
        },
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[  0.000100] INFO usbdom: usbdom 0.1.0 starting (xen-pv)
[  0.000200] INFO usbdom: xenstore: domid 3 name usbdom
[  0.010000] INFO pcifront: pcifront: connected
[  0.020000] INFO pci: pci: 0000:00:00.0 1b36:000d class 0c0330 xHCI
[  0.030000] INFO xhci: xhci: BAR0 mapped: CAPLENGTH=0x40 HCIVERSION=0x0100 HCSPARAMS1=0x08000440 (slots 64, ports 8)
[  0.040000] INFO irq: irq: first interrupt received (pirq 23)
[  0.050000] INFO usbdom: usbdom: ready
[  9.000000] INFO usbdom: usbdom: shutdown (poweroff)
";

    #[test]
    fn good_console_passes_all() {
        let r = xen_checks(GOOD, "usbdom", "1b36:000d");
        assert_eq!(r.len(), 9);
        for (n, v) in &r {
            assert!(v.is_ok(), "{n}: {v:?}");
        }
    }

    fn failing(console: &str) -> Vec<&'static str> {
        xen_checks(console, "usbdom", "1b36:000d")
            .into_iter()
            .filter(|(_, v)| v.is_err())
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn each_missing_line_fails_its_check() {
        assert_eq!(failing(&GOOD.replace("(xen-pv)", "(pvh)")), vec!["banner"]);
        assert_eq!(
            failing(&GOOD.replace("name usbdom", "name other")),
            vec!["domid and name from xenstore"]
        );
        assert_eq!(
            failing(&GOOD.replace("domid 3", "domid 0")),
            vec!["domid and name from xenstore"]
        );
        assert_eq!(
            failing(&GOOD.replace("1b36:000d", "8086:100e")),
            vec!["controller found through pcifront"]
        );
        assert_eq!(
            failing(&GOOD.replace("first interrupt", "no interrupt")),
            vec!["first interrupt received"]
        );
        assert_eq!(
            failing(&GOOD.replace("(poweroff)", "(crash)")),
            vec!["shutdown line"]
        );
        assert_eq!(
            failing(&format!("{GOOD}PANIC at a.rs:1: boom\n")),
            vec!["no panic"]
        );
        assert_eq!(
            failing("").len(),
            8,
            "all but `no panic` fail on an empty log"
        );
    }

    #[test]
    fn xhci_line_parsing_and_sanity() {
        let l = "xhci: BAR0 mapped: CAPLENGTH=0x40 HCIVERSION=0x0100 HCSPARAMS1=0x08000440 (slots 64, ports 8)";
        let c = parse_xhci(l).unwrap();
        assert_eq!(
            c,
            XhciCaps {
                caplength: 0x40,
                hciversion: 0x100,
                hcsparams1: 0x0800_0440,
                slots: 64,
                ports: 8
            }
        );
        assert!(check_xhci(&c).is_ok());
        let bad = |s: &str| check_xhci(&parse_xhci(s).unwrap()).is_err();
        assert!(bad("xhci: BAR0 mapped: CAPLENGTH=0x10 HCIVERSION=0x0100 HCSPARAMS1=0x08000440 (slots 64, ports 8)"));
        assert!(bad("xhci: BAR0 mapped: CAPLENGTH=0x40 HCIVERSION=0x0200 HCSPARAMS1=0x08000440 (slots 64, ports 8)"));
        assert!(bad("xhci: BAR0 mapped: CAPLENGTH=0x40 HCIVERSION=0x0100 HCSPARAMS1=0x00000440 (slots 64, ports 0)"));
        assert!(bad("xhci: BAR0 mapped: CAPLENGTH=0x40 HCIVERSION=0x0100 HCSPARAMS1=0x08000440 (slots 32, ports 8)"));
        assert!(parse_xhci("xhci: BAR0 mapped: CAPLENGTH=zz").is_none());
        assert!(parse_xhci("uhci: something").is_none());
    }
}
