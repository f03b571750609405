//! `probe`: find every USB host controller on PCI, log it, map its registers and check that the
//! capability/status registers read back sane values.
//!
//! * xHCI (xHCI 1.2 §5.3): BAR0 MMIO; CAPLENGTH (8 bit @0) must be ≥ 0x20 and 4-aligned, HCIVERSION
//!   (16 bit @2) one of 0.90/0.95/0.96/1.00/1.10/1.20, HCSPARAMS1 (@4) with MaxSlots (7:0) and
//!   MaxPorts (31:24) non-zero.
//! * UHCI (UHCI 1.1 §2.1): BAR4 I/O; USBCMD @0, USBSTS @2, PORTSC1/2 @0x10/0x12; PORTSC bit 7 is
//!   reserved and reads 1, and a present controller does not read all-ones.
//!
//! Fails if no USB host controller is present, or one is unsupported (OHCI/EHCI), or a register
//! reads insane.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hal::RegisterIo;

use crate::platform::pci::{is_supported_host, log_function, usb_host_kind};
use crate::platform::{PciFunction, Platform};

pub fn run<P: Platform>(platform: &P) -> Result<(), String> {
    let mut found = 0usize;
    let mut failures: Vec<String> = Vec::new();
    for f in platform.functions() {
        log_function(f);
        if usb_host_kind(&f.id).is_none() {
            continue;
        }
        found += 1;
        let r = match f.id.class {
            hal::PciId::CLASS_USB_XHCI => check_xhci(platform, f),
            hal::PciId::CLASS_USB_UHCI => check_uhci(platform, f),
            _ => Err(format!(
                "{} is a {} controller, which usbdom does not drive",
                f.addr,
                usb_host_kind(&f.id).unwrap_or("?")
            )),
        };
        if let Err(e) = r {
            if is_supported_host(&f.id) {
                log::error!(target: "error", "{e}");
                failures.push(e);
            } else {
                log::warn!(target: "probe", "{e} (ignored)");
                found -= 1;
            }
        }
    }
    if found == 0 {
        log::error!(target: "error",
            "no USB host controller found on PCI: start QEMU with -device qemu-xhci or -device piix3-usb-uhci");
        return Err(String::from("no USB host controller found on PCI"));
    }
    if let Some(first) = failures.into_iter().next() {
        return Err(first);
    }
    log::info!(target: "probe", "{found} USB host controller(s) probed");
    Ok(())
}

fn check_xhci<P: Platform>(p: &P, f: &PciFunction<P::Config>) -> Result<(), String> {
    let regs = p
        .map_bar(f, 0)
        .map_err(|e| format!("mapping BAR0 of {} failed: {e}", f.addr))?;
    if regs.size() < 0x20 {
        return Err(format!(
            "BAR0 of {} is only {:#x} bytes",
            f.addr,
            regs.size()
        ));
    }
    // CAPLENGTH and HCIVERSION share the first dword; read it whole (QEMU's qemu-xhci, like some
    // hardware, only implements 32-bit accesses there; Linux does the same).
    let cap0 = regs.read32(0);
    let caplength = cap0 as u8;
    let hciversion = (cap0 >> 16) as u16;
    let hcsparams1 = regs.read32(4);
    let slots = hcsparams1 & 0xff;
    let ports = hcsparams1 >> 24;
    log::info!(target: "xhci",
        "BAR0 mapped: CAPLENGTH={caplength:#04x} HCIVERSION={hciversion:#06x} HCSPARAMS1={hcsparams1:#010x} (slots {slots}, ports {ports})");
    if caplength < 0x20 || !caplength.is_multiple_of(4) || caplength as usize >= regs.size() {
        return Err(format!("xHCI {}: insane CAPLENGTH {caplength:#x}", f.addr));
    }
    if ![0x0090, 0x0095, 0x0096, 0x0100, 0x0110, 0x0120].contains(&hciversion) {
        return Err(format!(
            "xHCI {}: unknown HCIVERSION {hciversion:#06x}",
            f.addr
        ));
    }
    if slots == 0 || ports == 0 {
        return Err(format!(
            "xHCI {}: HCSPARAMS1 {hcsparams1:#x} reports no slots or ports",
            f.addr
        ));
    }
    // USBSTS (operational base + 4): HCHalted (bit 0) is set after reset; all-ones = no device.
    let usbsts = regs.read32(caplength as usize + 4);
    if usbsts == u32::MAX {
        return Err(format!("xHCI {}: USBSTS reads all-ones", f.addr));
    }
    Ok(())
}

fn check_uhci<P: Platform>(p: &P, f: &PciFunction<P::Config>) -> Result<(), String> {
    let regs = p
        .map_bar(f, 4)
        .map_err(|e| format!("mapping I/O BAR4 of {} failed: {e}", f.addr))?;
    let base = match &regs {
        crate::platform::Regs::Port(pr) => pr.base(),
        crate::platform::Regs::Mmio(_) => {
            return Err(format!("UHCI {}: BAR4 is not an I/O BAR", f.addr));
        }
    };
    if regs.size() < 0x14 {
        return Err(format!(
            "UHCI {}: I/O BAR4 is only {:#x} ports",
            f.addr,
            regs.size()
        ));
    }
    let usbcmd = regs.read16(0);
    let usbsts = regs.read16(2);
    let portsc1 = regs.read16(0x10);
    let portsc2 = regs.read16(0x12);
    log::info!(target: "uhci",
        "I/O BAR4 at {base:#06x}: USBCMD={usbcmd:#06x} USBSTS={usbsts:#06x} PORTSC1={portsc1:#06x} PORTSC2={portsc2:#06x}");
    if usbcmd == 0xffff || usbsts == 0xffff || portsc1 == 0xffff || portsc2 == 0xffff {
        return Err(format!("UHCI {}: registers read all-ones", f.addr));
    }
    if portsc1 & 0x80 == 0 || portsc2 & 0x80 == 0 {
        return Err(format!(
            "UHCI {}: PORTSC reserved bit 7 reads 0 (PORTSC1={portsc1:#x} PORTSC2={portsc2:#x})",
            f.addr
        ));
    }
    Ok(())
}
