//! PCI functions as both platforms present them (PCI Local Bus 3.0 §6.1–6.2): address, identity,
//! BARs decoded and sized through any `hal::PciConfig` (ports 0xCF8/0xCFC under PVH, pcifront on
//! Xen), and the "what is this" classification the console lines use.

use hal::{PciConfig, PciId};

/// `ssss:bb:dd.f`: one address type for both platforms (pcifront's, which also parses the
/// toolstack's strings and gives the `devfn` of `pciif.h`).
pub use xenidc::pcifront::PciAddress;

/// A decoded base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    /// Memory BAR: bus address, size in bytes, 64-bit type, prefetchable.
    Memory {
        addr: u64,
        size: u64,
        is64: bool,
        prefetchable: bool,
    },
    /// I/O-port BAR.
    Io { port: u16, size: u16 },
}

/// One PCI function owned by this domain, with its configuration-space accessor.
pub struct PciFunction<C: PciConfig> {
    pub addr: PciAddress,
    pub id: PciId,
    pub config: C,
    /// Index = BAR number; the upper half of a 64-bit BAR is `None`.
    pub bars: [Option<Bar>; 6],
    /// Interrupt pin (1 = INTA#, 0 = none) and line (as firmware/pciback set it).
    pub irq_pin: u8,
    pub irq_line: u8,
}

const CFG_VENDOR: u16 = 0x00;
const CFG_COMMAND: u16 = 0x04;
const CFG_CLASS_REV: u16 = 0x08;
const CFG_HEADER_TYPE: u16 = 0x0e;
const CFG_BAR0: u16 = 0x10;
const CFG_INTERRUPT: u16 = 0x3c;
const CMD_IO: u16 = 1 << 0;
const CMD_MEM: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;

impl<C: PciConfig> PciFunction<C> {
    /// Read identity, BARs (sized with decoding briefly disabled) and interrupt pin/line. `None`
    /// if no function answers at this address (vendor 0xffff / 0).
    pub fn probe(addr: PciAddress, config: C) -> Option<Self> {
        let vd = config.read32(CFG_VENDOR);
        let vendor = vd as u16;
        if vendor == 0xffff || vendor == 0 {
            return None;
        }
        let class = config.read32(CFG_CLASS_REV) >> 8;
        let id = PciId {
            vendor,
            device: (vd >> 16) as u16,
            class,
        };
        let header = config.read8(CFG_HEADER_TYPE) & 0x7f;
        let bars = if header == 0 {
            decode_bars(&config)
        } else {
            [None; 6]
        };
        let int = config.read32(CFG_INTERRUPT);
        Some(PciFunction {
            addr,
            id,
            config,
            bars,
            irq_pin: (int >> 8) as u8,
            irq_line: int as u8,
        })
    }

    /// Whether the function is a multi-function device's function 0 (header type bit 7).
    pub fn is_multifunction(&self) -> bool {
        self.config.read8(CFG_HEADER_TYPE) & 0x80 != 0
    }

    /// Set bits in the command register (e.g. memory/IO decode, bus master).
    pub fn enable(&self, bits: u16) {
        let cmd = self.config.read16(CFG_COMMAND);
        if cmd & bits != bits {
            self.config.write16(CFG_COMMAND, cmd | bits);
        }
    }

    pub fn bar(&self, n: u8) -> Option<Bar> {
        self.bars.get(n as usize).copied().flatten()
    }
}

/// Decode and size the six BARs of a type-0 header.
fn decode_bars<C: PciConfig>(config: &C) -> [Option<Bar>; 6] {
    let mut bars = [None; 6];
    let cmd = config.read16(CFG_COMMAND);
    // Disable decoding while the BARs hold all-ones (PCI 3.0 §6.2.5.1).
    config.write16(CFG_COMMAND, cmd & !(CMD_IO | CMD_MEM));
    let mut i = 0usize;
    while i < 6 {
        let off = CFG_BAR0 + 4 * i as u16;
        let orig = config.read32(off);
        config.write32(off, 0xffff_ffff);
        let probe = config.read32(off);
        config.write32(off, orig);
        if orig & 1 == 1 {
            let mask = probe & !3 & 0xffff;
            if mask != 0 {
                let size = (!mask & 0xffff).wrapping_add(1) as u16;
                bars[i] = Some(Bar::Io {
                    port: (orig & !3) as u16,
                    size,
                });
            }
            i += 1;
            continue;
        }
        let is64 = (orig >> 1) & 3 == 2;
        let prefetchable = orig & 8 != 0;
        let mut addr = (orig & !0xf) as u64;
        let mut mask = (probe & !0xf) as u64;
        if is64 && i + 1 < 6 {
            let hoff = off + 4;
            let horig = config.read32(hoff);
            config.write32(hoff, 0xffff_ffff);
            let hprobe = config.read32(hoff);
            config.write32(hoff, horig);
            addr |= (horig as u64) << 32;
            mask |= (hprobe as u64) << 32;
        } else {
            mask |= 0xffff_ffff_0000_0000;
        }
        if mask & 0xffff_ffff != 0 {
            let size = (!mask).wrapping_add(1);
            bars[i] = Some(Bar::Memory {
                addr,
                size,
                is64,
                prefetchable,
            });
        }
        i += if is64 { 2 } else { 1 };
    }
    config.write16(CFG_COMMAND, cmd);
    bars
}

/// Short name of a USB host controller class, or `None` if the function is not one.
pub fn usb_host_kind(id: &PciId) -> Option<&'static str> {
    match id.class {
        PciId::CLASS_USB_UHCI => Some("UHCI"),
        PciId::CLASS_USB_OHCI => Some("OHCI"),
        PciId::CLASS_USB_EHCI => Some("EHCI"),
        PciId::CLASS_USB_XHCI => Some("xHCI"),
        c if c >> 8 == 0x0c03 => Some("USB (unknown interface)"),
        _ => None,
    }
}

/// Whether usbdom has a driver for this controller (UHCI or xHCI).
pub fn is_supported_host(id: &PciId) -> bool {
    matches!(id.class, PciId::CLASS_USB_UHCI | PciId::CLASS_USB_XHCI)
}

/// Log the agreed `pci: <ssss:bb:dd.f> <vvvv:dddd> class <cccccc> <what>` line.
pub fn log_function<C: PciConfig>(f: &PciFunction<C>) {
    log::info!(target: "pci", "{} {:04x}:{:04x} class {:06x} {}",
        f.addr, f.id.vendor, f.id.device, f.id.class,
        usb_host_kind(&f.id).unwrap_or("(not a USB host controller)"));
}
