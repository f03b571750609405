//! Hardware-access traits shared by the USB host-controller drivers and the platforms that run them.
//!
//! The drivers (`xhci`, `uhci`) are generic over these traits; the kernel implements them twice:
//! once for plain QEMU under PVH (port-I/O PCI configuration space, identity-mapped DMA) and once for a
//! Xen PV driver domain (pcifront configuration space, BARs mapped through the PV MMU, DMA pages whose
//! bus address is the machine address from the p2m, interrupts bound to event channels).  The host
//! tests use the fakes in [`fake`].
//!
//! Device memory is never a Rust reference: every access to registers or DMA memory goes through a
//! method of these traits, which the platform implements with volatile accesses.
//!
//! References: PCI Local Bus 3.0 §6 (configuration space), xHCI 1.2 §5 (MMIO registers), UHCI 1.1 §2
//! (I/O registers).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod fake;

use core::fmt;

/// Errors of the hardware-access layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalError {
    /// No DMA memory of the requested size and alignment is left.
    OutOfDmaMemory { size: usize, align: usize },
    /// A request the platform cannot satisfy (for example more than one page machine-contiguous
    /// where the platform has no contiguous pages left).
    Unsupported(&'static str),
    /// The platform (Xen) refused to map a BAR.
    BarMapRefused { bar: u8, code: i32 },
    /// The platform (Xen) refused to bind the interrupt.
    IrqBindRefused { code: i32 },
    /// The BAR does not exist or is of the wrong kind.
    NoSuchBar(u8),
    /// Access outside a register window or buffer.
    OutOfRange {
        offset: usize,
        len: usize,
        size: usize,
    },
}

impl fmt::Display for HalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HalError::OutOfDmaMemory { size, align } => {
                write!(f, "out of DMA memory ({size} bytes, align {align})")
            }
            HalError::Unsupported(what) => write!(f, "unsupported: {what}"),
            HalError::BarMapRefused { bar, code } => {
                write!(
                    f,
                    "mapping BAR{bar} refused by the hypervisor (error {code})"
                )
            }
            HalError::IrqBindRefused { code } => {
                write!(
                    f,
                    "binding the interrupt refused by the hypervisor (error {code})"
                )
            }
            HalError::NoSuchBar(bar) => write!(f, "BAR{bar} does not exist or has the wrong type"),
            HalError::OutOfRange { offset, len, size } => {
                write!(
                    f,
                    "access at {offset:#x}+{len} outside a window of {size:#x} bytes"
                )
            }
        }
    }
}

/// A window of device registers: a memory BAR (MMIO) or an I/O-port BAR.
///
/// Offsets are relative to the start of the window. Implementations do volatile accesses of exactly
/// the requested width. Out-of-range offsets are a driver bug; implementations panic on them in debug
/// builds and ignore writes / return all-ones on reads otherwise, as a missing device would.
pub trait RegisterIo {
    fn read8(&self, offset: usize) -> u8;
    fn read16(&self, offset: usize) -> u16;
    fn read32(&self, offset: usize) -> u32;
    fn write8(&self, offset: usize, value: u8);
    fn write16(&self, offset: usize, value: u16);
    fn write32(&self, offset: usize, value: u32);
    /// 64-bit register as two 32-bit accesses, low half first (allowed for xHCI when the controller
    /// does not report 64-bit MMIO atomicity, xHCI 1.2 §5.1).
    fn read64(&self, offset: usize) -> u64 {
        let lo = self.read32(offset) as u64;
        let hi = self.read32(offset + 4) as u64;
        lo | (hi << 32)
    }
    /// 64-bit register write as two 32-bit accesses, low half first (xHCI 1.2 §5.1).
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
    /// Size of the window in bytes.
    fn size(&self) -> usize;
}

/// A physically (machine-) contiguous DMA buffer owned by the driver.
///
/// The CPU accesses it only through these methods (volatile in the real platforms); the device
/// accesses it at [`DmaBuf::bus_addr`].
pub trait DmaBuf {
    /// The address the device uses.
    fn bus_addr(&self) -> u64;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_bytes(&self, offset: usize, out: &mut [u8]);
    fn write_bytes(&self, offset: usize, data: &[u8]);
    fn read32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read_bytes(offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.write_bytes(offset, &value.to_le_bytes());
    }
    fn read64(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        self.read_bytes(offset, &mut b);
        u64::from_le_bytes(b)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.write_bytes(offset, &value.to_le_bytes());
    }
    /// Fill with zeroes.
    fn zero(&self) {
        let z = [0u8; 64];
        let mut off = 0;
        while off < self.len() {
            let n = (self.len() - off).min(z.len());
            self.write_bytes(off, &z[..n]);
            off += n;
        }
    }
}

/// Allocator of DMA buffers.
///
/// `alloc` returns zeroed, machine-contiguous memory of at least `size` bytes whose bus address is a
/// multiple of `align` (a power of two ≤ 4096) and which does not cross a `boundary` when one is given
/// (xHCI 1.2 §6: data structures must not cross a 64 KiB boundary).  Buffers are freed on drop.
pub trait DmaAlloc {
    type Buf: DmaBuf;
    fn alloc(&self, size: usize, align: usize) -> Result<Self::Buf, HalError>;
}

/// A piece of memory the device reads or writes, given by bus address. Used for data buffers the
/// driver does not own (for example a frontend's granted page mapped for DMA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaSegment {
    pub bus_addr: u64,
    pub len: u32,
}

/// Monotonic time and short busy-waits.
pub trait Clock {
    /// Nanoseconds since an arbitrary epoch; monotonic.
    fn now_ns(&self) -> u64;
    /// Wait at least `us` microseconds (used for hardware timing rules such as the USB 2.0 §7.1.7.5
    /// port-reset duration). Long waits may yield to the event loop.
    fn delay_us(&self, us: u64);
}

/// PCI configuration space of one function (PCI 3.0 §6.1). On Xen every access goes through
/// pcifront; under PVH through ports 0xCF8/0xCFC.
pub trait PciConfig {
    fn read32(&self, offset: u16) -> u32;
    fn write32(&self, offset: u16, value: u32);
    fn read16(&self, offset: u16) -> u16 {
        let v = self.read32(offset & !3);
        (v >> ((offset & 2) * 8)) as u16
    }
    fn read8(&self, offset: u16) -> u8 {
        let v = self.read32(offset & !3);
        (v >> ((offset & 3) * 8)) as u8
    }
    /// 16-bit write done as read-modify-write of the dword.
    fn write16(&self, offset: u16, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(offset & !3);
        let new = (old & !(0xffff << shift)) | ((value as u32) << shift);
        self.write32(offset & !3, new);
    }
}

/// PCI identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciId {
    pub vendor: u16,
    pub device: u16,
    /// class << 16 | subclass << 8 | prog-if
    pub class: u32,
}

impl PciId {
    pub const CLASS_USB_UHCI: u32 = 0x0c0300;
    pub const CLASS_USB_OHCI: u32 = 0x0c0310;
    pub const CLASS_USB_EHCI: u32 = 0x0c0320;
    pub const CLASS_USB_XHCI: u32 = 0x0c0330;
    pub fn is_usb_host(&self) -> bool {
        self.class >> 8 == 0x0c03
    }
}

/// Interrupt delivery of one device. The platform binds INTx / MSI to something it can wait for
/// (an event channel on Xen, a polled status under PVH). Drivers call `take` from their service
/// routine and `unmask` when they have handled what the interrupt announced.
pub trait Interrupt {
    /// Whether an interrupt arrived since the last call; clears the flag.
    fn take(&self) -> bool;
    /// Re-enable delivery (EOI / event-channel unmask).
    fn unmask(&self);
    /// Number of interrupts delivered so far (diagnostics).
    fn count(&self) -> u64;
}

/// Everything a host-controller driver needs from its platform, bundled so a driver has one type
/// parameter.
pub trait Platform {
    type Regs: RegisterIo;
    type Dma: DmaAlloc;
    type Clock: Clock;
    type Irq: Interrupt;
}
