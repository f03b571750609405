//! [`XenPlatform`]: the kernel's [`Platform`] on a Xen PV domU (see `crate::platform` for the
//! contract). PCI configuration space goes through pcifront; memory BARs are mapped uncached with
//! `mmu_update` on `DOMID_IO` frames (`crate::pv::mm::map_io`); I/O BARs need `PHYSDEVOP_set_iopl`;
//! interrupts are pirqs bound to event channels ([`super::irq`]); DMA pages carry machine addresses
//! ([`super::dma`]).

use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use hal::{HalError, PciConfig};
use xenidc::pcifront::PciFunctionInfo;
use xenidc::xen::ops;

use super::dma::XenDma;
use super::front::{Front, FrontConfig};
use super::irq::{Source, XenIrq};
use super::Ctx;
use crate::platform::pci::{usb_host_kind, CMD_BUS_MASTER};
use crate::platform::{Bar, Kind, MmioRegs, PciFunction, Platform, PortRegs, Regs};
use crate::pv::mm::{self, MmError, PAGE_SIZE};
use crate::time::KernelClock;

/// Largest part of a memory BAR we map (register windows are far smaller; a huge prefetchable BAR
/// would only waste page tables).
const MAX_BAR_MAP: u64 = 1 << 20;
const CMD_IO: u16 = 1 << 0;
const CMD_MEM: u16 = 1 << 1;
const CMD_INTX_DISABLE: u16 = 1 << 10;

pub struct XenPlatform {
    ctx: Rc<RefCell<Ctx>>,
    front: Rc<RefCell<Front>>,
    functions: Vec<PciFunction<FrontConfig>>,
    dma: XenDma,
    clock: KernelClock,
    irq_desc: Cell<&'static str>,
    iopl: Cell<bool>,
}

impl XenPlatform {
    /// Build the platform from the functions pcifront found (BARs are decoded and sized through
    /// pcifront here).
    pub fn new(
        ctx: Rc<RefCell<Ctx>>,
        front: Rc<RefCell<Front>>,
        found: &[PciFunctionInfo],
    ) -> Self {
        let mut functions = Vec::new();
        for info in found {
            let cfg = FrontConfig::new(front.clone(), info.addr);
            if let Some(f) = PciFunction::probe(info.addr, cfg) {
                functions.push(f);
            }
        }
        XenPlatform {
            ctx,
            front,
            functions,
            dma: XenDma,
            clock: KernelClock,
            irq_desc: Cell::new("none"),
            iopl: Cell::new(false),
        }
    }

    pub fn ctx(&self) -> &Rc<RefCell<Ctx>> {
        &self.ctx
    }

    fn bind_pirq(
        &self,
        f: &PciFunction<FrontConfig>,
        pirq: u32,
        source: Source,
    ) -> Result<XenIrq, i32> {
        let events = self.ctx.borrow().hv.events();
        let irq = XenIrq::bind(pirq, source, events)?;
        self.ctx.borrow_mut().hv.watch_port(irq.port);
        let desc = match source {
            Source::Intx { .. } => format!("pirq {pirq}"),
            Source::Msi => format!("msi, pirq {pirq}"),
        };
        self.irq_desc.set(Box::leak(desc.into_boxed_str()));
        log::info!(target: "irq", "{} ({}): {} bound to event channel {}{}",
            f.addr, usb_host_kind(&f.id).unwrap_or("device"),
            match source { Source::Intx { gsi } => format!("INTx GSI {gsi} as pirq {pirq}"), Source::Msi => format!("MSI pirq {pirq}") },
            irq.port.0, if irq.needs_eoi() { ", needs EOI" } else { "" });
        Ok(irq)
    }
}

impl hal::Platform for XenPlatform {
    type Regs = Regs;
    type Dma = XenDma;
    type Clock = KernelClock;
    type Irq = XenIrq;
}

impl Platform for XenPlatform {
    type Config = FrontConfig;

    fn kind(&self) -> Kind {
        Kind::XenPv
    }

    fn functions(&self) -> &[PciFunction<FrontConfig>] {
        &self.functions
    }

    fn map_bar(&self, f: &PciFunction<FrontConfig>, bar: u8) -> Result<Regs, HalError> {
        match f.bar(bar) {
            Some(Bar::Memory { addr, size, .. }) => {
                if addr == 0 || size == 0 {
                    return Err(HalError::NoSuchBar(bar));
                }
                let size = size.min(MAX_BAR_MAP);
                let first = addr & !(PAGE_SIZE as u64 - 1);
                let off = (addr - first) as usize;
                let pages = (off + size as usize).div_ceil(PAGE_SIZE);
                f.enable(CMD_MEM);
                match mm::map_io(first >> 12, pages, true) {
                    Ok(va) => {
                        // SAFETY: `pages` pages of the BAR are mapped uncached at `va` for the rest
                        // of the run, in a VA range reserved for this mapping alone.
                        Ok(Regs::Mmio(unsafe {
                            MmioRegs::new(va + off, size as usize)
                        }))
                    }
                    Err(MmError::Hypercall { code, .. }) => {
                        log::error!(target: "error",
                            "Xen refused to map BAR{bar} of {} (error {code}): is the device assignable (xl pci-assignable-add) and is an IOMMU enabled?",
                            f.addr);
                        Err(HalError::BarMapRefused {
                            bar,
                            code: code as i32,
                        })
                    }
                    Err(e) => {
                        log::error!(target: "error", "mapping BAR{bar} of {} failed: {e}", f.addr);
                        Err(HalError::Unsupported("BAR mapping failed"))
                    }
                }
            }
            Some(Bar::Io { port, size }) => {
                if port == 0 {
                    return Err(HalError::NoSuchBar(bar));
                }
                if !self.iopl.get() {
                    // Our PV kernel runs in ring 3 but counts as ring 1 for Xen's I/O checks.
                    if let Err(e) = ops::physdev_set_iopl(1) {
                        log::error!(target: "error",
                            "Xen refused I/O privilege for BAR{bar} of {} (PHYSDEVOP_set_iopl error -{e})",
                            f.addr);
                        return Err(HalError::BarMapRefused { bar, code: -e });
                    }
                    self.iopl.set(true);
                }
                f.enable(CMD_IO);
                Ok(Regs::Port(PortRegs::new(port, size)))
            }
            None => Err(HalError::NoSuchBar(bar)),
        }
    }

    fn bind_interrupt(&self, f: &PciFunction<FrontConfig>) -> Result<XenIrq, HalError> {
        f.enable(CMD_BUS_MASTER);
        let cmd = f.config.read16(0x04);
        if cmd & CMD_INTX_DISABLE != 0 {
            f.config.write16(0x04, cmd & !CMD_INTX_DISABLE);
        }
        let mut last_err = None;
        // `usbdom.irq=msi` on the command line skips INTx (to exercise MSI through pcifront).
        let want_msi = crate::cmdline::get(crate::cmdline::current(), "usbdom.irq") == Some("msi");
        // INTx: pciback shows the GSI in the Interrupt Line register; for a PV domU it is also
        // the pirq number the toolstack mapped for us.
        if !want_msi && f.irq_pin != 0 && f.irq_line != 0 && f.irq_line != 0xff {
            let gsi = f.irq_line as u32;
            match self.bind_pirq(f, gsi, Source::Intx { gsi }) {
                Ok(irq) => return Ok(irq),
                Err(e) => {
                    log::warn!(target: "irq", "{}: binding INTx pirq {gsi} failed (error -{e}); trying MSI", f.addr);
                    last_err = Some(-e);
                }
            }
        }
        let msi = self.front.borrow_mut().enable_msi(f.addr);
        match msi {
            Ok(pirq) => match self.bind_pirq(f, pirq, Source::Msi) {
                Ok(irq) => return Ok(irq),
                Err(e) => last_err = Some(-e),
            },
            Err(e) => {
                let code = match e {
                    xenidc::pcifront::PcifrontError::Op { err, .. } => err.0,
                    _ => -1,
                };
                if last_err.is_none() {
                    // No INTx was tried: the MSI refusal is the cause.
                    log::error!(target: "error",
                        "dom0's pciback refused to enable MSI for {} ({e}): {}",
                        f.addr,
                        if want_msi { "use the legacy interrupt (drop usbdom.irq=msi)" } else { "the device has no legacy interrupt; check dom0's xen-pciback messages" });
                    return Err(HalError::IrqBindRefused { code });
                }
                log::warn!(target: "irq", "{}: enabling MSI through pcifront failed too: {e}", f.addr);
            }
        }
        let code = last_err.unwrap_or(-1);
        log::error!(target: "error",
            "Xen refused to bind the interrupt of {} (error {code}): was the device assigned with xl pci= (which grants its IRQ) and does dom0's pciback own it?",
            f.addr);
        Err(HalError::IrqBindRefused { code })
    }

    fn dma(&self) -> &XenDma {
        &self.dma
    }

    fn clock(&self) -> &KernelClock {
        &self.clock
    }

    fn irq_description(&self) -> &'static str {
        self.irq_desc.get()
    }
}
