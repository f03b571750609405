//! UHCI 1.1 host controller driver for usbdom.
//!
//! [`Uhci`] drives one Universal Host Controller Interface controller (Intel UHCI Design Guide,
//! revision 1.1; QEMU's `piix3-usb-uhci`, Intel PIIX/ICH companions) through its 32-byte I/O-port
//! register block (§2.1) and implements [`usb_core::hc::HostController`] over the hardware-access
//! traits of [`hal`]: register I/O, DMA memory, a clock and a (possibly shared) interrupt line.
//!
//! * [`regs`] — the I/O registers and their bits (§2.1);
//! * [`schedule`] — frame-list pointers, TDs and QHs as the controller fetches them (§3), and the
//!   DMA pool they live in;
//! * [`transfer`] — transfer requests split into TD chains with data toggles (§3.2, USB 2.0 §8.6),
//!   TD status mapped to errors (§3.2.2);
//! * [`controller`] — initialisation, schedule skeleton, endpoint queues, completion, cancel and the
//!   root ports (§2.1.7, USB 2.0 §7.1.7.5);
//! * [`pci`] — PCI-side setup of the function (legacy-support register, §5.2.1).
//!
//! UHCI drives full- and low-speed devices only; isochronous transfers are not implemented yet
//! (the TD encoding has the ISO bit and the frame list has room for them).  All memory the
//! controller reads is addressed by 32-bit bus addresses.
//!
//! # Measured on QEMU (`usbdom.selftest=uhci`, 4 MiB image, 64 KiB SCSI READs through BOT)
//! QEMU's `piix3-usb-uhci` moves at most 1280 bytes per 1 ms frame.  Counted in the controller's
//! own frames ([`Uhci::frames`]), a steady-state READ(10) of 64 KiB takes 54 frames: one for the
//! CBW, 52 for the 1024 data packets (20 per frame), one for the CSW, i.e. 1214 bytes/frame =
//! 94.8 % of the cap.  Whole-image runs on the shared 2-core build host measured 91–95 % when it
//! was less loaded and 73–88 % when it was busy (QEMU's frame timer then runs frames in bursts,
//! and a transfer linked after a burst waits for the next one).  128 KiB commands were slower on
//! QEMU 7.2 (107–127 frames each).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod controller;
pub mod pci;
pub mod regs;
pub mod schedule;
pub mod transfer;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use controller::{Stats, Uhci};
