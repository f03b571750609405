//! PCI-side setup of a UHCI function (UHCI 1.1 §5: PCI configuration registers).
//!
//! The I/O registers are in BAR4, the USBBASE register at configuration offset 0x20.  The
//! legacy-support register LEGSUP at 0xC0 (Intel PIIX/ICH function registers; QEMU's piix3 model
//! has it too) routes the controller's interrupt to SMI for BIOS keyboard emulation until the OS takes over:
//! writing 1s to its status bits clears them, clearing the trap enables stops SMIs, and setting
//! USBPIRQDEN (bit 13) routes the interrupt to PIRQD, i.e. to the ordinary INTx line.

use hal::PciConfig;

/// USBBASE, the I/O BAR of the register block (BAR4).
pub const USBBASE: u16 = 0x20;
/// Legacy-support register (16 bit).
pub const LEGSUP: u16 = 0xc0;
/// LEGSUP write-one-to-clear status bits and the end-of-A20GATE bit.
const LEGSUP_RWC: u16 = 0x8f00;
/// LEGSUP USBPIRQDEN: deliver the interrupt on INTx (PIRQD).
const LEGSUP_PIRQ: u16 = 0x2000;

/// Take the controller from the BIOS: stop SMI traps, clear their status, route the interrupt to
/// INTx, and enable I/O decoding and bus mastering (PCI command bits 0 and 2).
pub fn take_over(cfg: &impl PciConfig) {
    cfg.write16(LEGSUP, LEGSUP_RWC);
    cfg.write16(LEGSUP, LEGSUP_PIRQ);
    let cmd = cfg.read16(0x04);
    cfg.write16(0x04, cmd | 0x1 | 0x4);
}

/// The I/O port base of the register block, if BAR4 is an I/O BAR.
pub fn io_base(cfg: &impl PciConfig) -> Option<u16> {
    let bar = cfg.read32(USBBASE);
    (bar & 1 == 1 && bar & !3 != 0).then_some((bar & 0xffe0) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    struct Cfg(RefCell<[u32; 64]>);
    impl PciConfig for Cfg {
        fn read32(&self, o: u16) -> u32 {
            self.0.borrow()[o as usize / 4]
        }
        fn write32(&self, o: u16, v: u32) {
            self.0.borrow_mut()[o as usize / 4] = v;
        }
    }

    #[test]
    fn take_over_routes_interrupt_and_enables_decoding() {
        let c = Cfg(RefCell::new([0; 64]));
        c.write32(0x04, 0x0280_0000);
        c.write32(USBBASE, 0xc041);
        c.write32(0xc0, 0x0000_00bf);
        take_over(&c);
        assert_eq!(c.read16(LEGSUP), 0x2000);
        assert_eq!(c.read32(0xc0) >> 16, 0, "upper half untouched");
        assert_eq!(c.read32(0x04), 0x0280_0005, "status half untouched");
        assert_eq!(io_base(&c), Some(0xc040));
        c.write32(USBBASE, 0xfebf_0000);
        assert_eq!(
            io_base(&c),
            None,
            "a memory BAR is not a UHCI register block"
        );
    }
}
