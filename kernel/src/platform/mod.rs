//! The platform API: what the rest of the kernel (self-tests, the USB stack wiring) gets from the
//! machine it runs on, independent of whether that is plain QEMU (PVH) or a Xen PV domU.
//!
//! A platform is a [`Platform`]: the `hal::Platform` bundle the host-controller drivers are generic
//! over (`Regs`, `Dma`, `Clock`, `Irq`) plus PCI discovery, BAR mapping and interrupt binding.
//!
//! * [`pvh::PvhPlatform`] (this directory): configuration space through ports 0xCF8/0xCFC, memory
//!   BARs through the identity map (the PCI hole 3–4 GiB is mapped uncached by `boot/`), I/O BARs
//!   with `in`/`out`, DMA = identity from a page pool, interrupts polled.
//! * The Xen implementation lives in `crate::xen` (pcifront configuration space, BARs mapped with
//!   `mm::map_io`, DMA pages with machine addresses from the p2m, pirq → event channel). It uses the
//!   same [`Regs`], [`PciFunction`], [`crate::time::KernelClock`], and `crate::pv::mm`.
//!
//! Contract of the operations (both implementations):
//! * `functions()` lists every PCI function this domain owns, probed once at init.
//! * `map_bar(f, n)` enables decoding and returns the register window of BAR `n` (memory or I/O);
//!   errors: `NoSuchBar`, `BarMapRefused { code }` (Xen said no).
//! * `bind_interrupt(f)` enables bus mastering/interrupts and returns the device's
//!   `hal::Interrupt`; errors: `IrqBindRefused { code }`.
//! * `dma()` returns the allocator for controller data structures and buffers (bus addresses).
//! * `clock()` is monotonic time.
//! * `irq_description()` names how interrupts arrive (`pirq N`, `msi`, `polled`) for the
//!   `irq: first interrupt received (...)` line.

pub mod pci;
pub mod pvh;
pub mod regs;

pub use pci::{Bar, PciAddress, PciFunction};
pub use regs::{MmioRegs, PortRegs, Regs};

use hal::HalError;

/// Which kind of machine we run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain QEMU (or Xen `type="pvh"`) through the PVH entry.
    Pvh,
    /// A Xen PV domU.
    XenPv,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pvh => "pvh",
            Kind::XenPv => "xen-pv",
        }
    }
}

/// Everything a self-test or the USB stack gets from the platform.
pub trait Platform: hal::Platform<Regs = Regs> {
    /// Configuration-space accessor of one function.
    type Config: hal::PciConfig;

    fn kind(&self) -> Kind;
    /// The PCI functions this domain owns.
    fn functions(&self) -> &[PciFunction<Self::Config>];
    /// Map BAR `bar` of `f` (memory: uncached at a kernel VA; I/O: a port window).
    fn map_bar(&self, f: &PciFunction<Self::Config>, bar: u8) -> Result<Regs, HalError>;
    /// Bind the device interrupt and return its handle.
    fn bind_interrupt(&self, f: &PciFunction<Self::Config>) -> Result<Self::Irq, HalError>;
    /// The DMA allocator.
    fn dma(&self) -> &Self::Dma;
    /// Monotonic time.
    fn clock(&self) -> &Self::Clock;
    /// How interrupts are delivered, for the logs (`pirq 23`, `msi`, `polled`).
    fn irq_description(&self) -> &'static str;
}
