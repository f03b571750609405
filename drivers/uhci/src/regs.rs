//! The UHCI I/O register block (UHCI 1.1 §2.1): offsets inside the 32-byte I/O-port BAR and the bits
//! of each register.
//!
//! Register widths matter: USBCMD, USBSTS, USBINTR, FRNUM and PORTSCn are 16-bit registers,
//! FRBASEADD is 32-bit and SOFMOD 8-bit (§2.1, table 2). QEMU ignores accesses of the wrong width.
//!
//! PORTSC (§2.1.7) mixes read-only, read/write and write-one-to-clear bits: a read-modify-write must
//! mask out the write-clear bits (CSC, PEC) or it acknowledges changes nobody has looked at yet; see
//! [`PortSc::rmw_base`].

use bitflags::bitflags;

/// USB Command register, 16 bit (§2.1.1).
pub const USBCMD: usize = 0x00;
/// USB Status register, 16 bit, write one to clear (§2.1.2).
pub const USBSTS: usize = 0x02;
/// USB Interrupt Enable register, 16 bit (§2.1.3).
pub const USBINTR: usize = 0x04;
/// Frame Number register, 16 bit, bits 10:0 (§2.1.4).
pub const FRNUM: usize = 0x06;
/// Frame List Base Address register, 32 bit, 4 KiB aligned (§2.1.5).
pub const FRBASEADD: usize = 0x08;
/// Start Of Frame Modify register, 8 bit (§2.1.6).
pub const SOFMOD: usize = 0x0c;
/// Port 1 Status/Control, 16 bit (§2.1.7); port `n` (0-based) is at `PORTSC1 + 2 * n`.
pub const PORTSC1: usize = 0x10;
/// Size of the I/O window (§2.1: 32 bytes).
pub const IO_SIZE: usize = 0x20;
/// The root hub of a UHCI controller has two ports (§2.1.7).
pub const NUM_PORTS: usize = 2;

/// Offset of the PORTSC register of 0-based root port `port`.
pub const fn portsc(port: usize) -> usize {
    PORTSC1 + 2 * port
}

/// Frame-number bits of FRNUM (§2.1.4); bits 9:0 index the frame list.
pub const FRNUM_MASK: u16 = 0x7ff;

bitflags! {
    /// USBCMD bits (§2.1.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cmd: u16 {
        /// Run/Stop: the controller executes the schedule while set.
        const RS = 1 << 0;
        /// Host Controller Reset: self-clearing reset of the controller.
        const HCRESET = 1 << 1;
        /// Global Reset: reset signalling on the bus, held by software ≥ 10 ms.
        const GRESET = 1 << 2;
        /// Enter Global Suspend Mode.
        const EGSM = 1 << 3;
        /// Force Global Resume.
        const FGR = 1 << 4;
        /// Software Debug.
        const SWDBG = 1 << 5;
        /// Configure Flag (software semaphore, no effect on hardware).
        const CF = 1 << 6;
        /// Max Packet for bandwidth reclamation: 1 = 64 bytes, 0 = 32 bytes.
        const MAXP = 1 << 7;
    }
}

bitflags! {
    /// USBSTS bits (§2.1.2); all but HCHALTED are write-one-to-clear.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Sts: u16 {
        /// A TD with IOC completed, or a short packet was detected (SPD).
        const USBINT = 1 << 0;
        /// A transaction ended in error (error counter reached zero, stall, babble…).
        const USBERRINT = 1 << 1;
        /// Resume Detect.
        const RESUME = 1 << 2;
        /// Host System Error: a PCI error during a master access; the controller halted.
        const HSE = 1 << 3;
        /// Host Controller Process Error: a malformed schedule (bad PID…); the controller halted.
        const HCPE = 1 << 4;
        /// HCHalted: the controller stopped (RS cleared by software or by an error).
        const HCHALTED = 1 << 5;
    }
}

impl Sts {
    /// The write-one-to-clear bits that announce an interrupt (all but HCHALTED).
    pub const ACK_MASK: Sts = Sts::USBINT
        .union(Sts::USBERRINT)
        .union(Sts::RESUME)
        .union(Sts::HSE)
        .union(Sts::HCPE);
}

bitflags! {
    /// USBINTR bits (§2.1.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Intr: u16 {
        /// Timeout/CRC interrupt enable.
        const TIMEOUT_CRC = 1 << 0;
        /// Resume interrupt enable.
        const RESUME = 1 << 1;
        /// Interrupt On Complete enable.
        const IOC = 1 << 2;
        /// Short Packet interrupt enable.
        const SHORT_PACKET = 1 << 3;
    }
}

bitflags! {
    /// PORTSCn bits (§2.1.7).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PortSc: u16 {
        /// Current Connect Status (read only).
        const CCS = 1 << 0;
        /// Connect Status Change (write one to clear).
        const CSC = 1 << 1;
        /// Port Enabled/Disabled (read/write; the controller clears it on errors/disconnect).
        const PE = 1 << 2;
        /// Port Enable/Disable Change (write one to clear).
        const PEC = 1 << 3;
        /// Line status D+ (read only).
        const LINE_DP = 1 << 4;
        /// Line status D- (read only).
        const LINE_DM = 1 << 5;
        /// Resume Detect (read/write).
        const RD = 1 << 6;
        /// Reserved, always reads 1.
        const RESERVED1 = 1 << 7;
        /// Low Speed Device Attached (read only).
        const LSDA = 1 << 8;
        /// Port Reset (read/write): reset signalling while set.
        const PR = 1 << 9;
        /// Suspend (read/write).
        const SUSP = 1 << 12;
    }
}

impl PortSc {
    /// Write-one-to-clear bits.
    pub const W1C: PortSc = PortSc::CSC.union(PortSc::PEC);
    /// Bits software may write with their current meaning preserved.
    pub const RW: PortSc = PortSc::PE
        .union(PortSc::RD)
        .union(PortSc::PR)
        .union(PortSc::SUSP);

    /// The value to start a read-modify-write from: the read/write bits of `self`, never a
    /// write-one-to-clear bit (which would silently acknowledge a change).
    pub fn rmw_base(self) -> PortSc {
        self & PortSc::RW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_register_offsets() {
        assert_eq!(portsc(0), 0x10);
        assert_eq!(portsc(1), 0x12);
        assert!(portsc(NUM_PORTS - 1) + 2 <= IO_SIZE);
    }

    #[test]
    fn rmw_never_writes_change_bits() {
        let all = PortSc::from_bits_retain(0xffff);
        let base = all.rmw_base();
        assert!(!base.intersects(PortSc::W1C));
        assert!(base.contains(PortSc::PE | PortSc::PR));
    }
}
