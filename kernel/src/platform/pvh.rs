//! The PVH / plain-QEMU platform (QEMU `-kernel` with the PVH ELF note).
//!
//! * Boot information: `hvm_start_info` (`include/public/arch-x86/hvm/start_info.h`): magic
//!   0x336ec578, command line, E820-style memory map (version ≥ 1).
//! * PCI configuration space: configuration mechanism #1, ports 0xCF8 (address) / 0xCFC (data)
//!   (PCI 3.0 §3.2.2.3.2); all 256 buses are scanned, functions 1–7 only on multi-function devices.
//! * Memory BARs: the identity map built by `boot/` covers 0–4 GiB, the PCI hole 3–4 GiB uncached;
//!   BARs outside that are refused.
//! * I/O BARs: `in`/`out` on the port window.
//! * DMA: identity (bus address = physical address) from a page pool carved from the RAM after the
//!   kernel image.
//! * Interrupts: no APIC/IOAPIC driver — interrupts are *polled*: `Interrupt::take` always says
//!   "look at the controller's status register".

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use hal::{DmaAlloc, DmaBuf, HalError, PciConfig};
use hermit_sync::SpinMutex;

use super::pci::{usb_host_kind, PciAddress, PciFunction, CMD_BUS_MASTER};
use super::{Bar, Kind, MmioRegs, PortRegs, Regs};
use crate::arch::{inl, outl};
use crate::frames::FrameAllocator;
use crate::time::KernelClock;

pub const HVM_START_MAGIC: u32 = 0x336e_c578;
const PAGE: usize = 4096;
/// End of the identity map `boot/` builds.
const IDENTITY_END: u64 = 4 << 30;
/// Start of the uncached part of the identity map (the PCI hole).
const UNCACHED_START: u64 = 3 << 30;

/// What we keep from `hvm_start_info`.
#[derive(Debug, Clone, Copy)]
pub struct PvhBootInfo {
    pub cmdline: &'static str,
    /// Largest RAM range `[start, end)` above the kernel image (from the memory map).
    pub ram_after_image: (u64, u64),
}

/// Parse `hvm_start_info` at physical (= virtual) address `pa`. `None` if the magic is wrong.
///
/// # Safety
/// `pa` is the `%ebx` value the PVH loader passed; the structure, command line and memory map it
/// points to are identity-mapped RAM that nobody writes any more.
pub unsafe fn parse_start_info(pa: u64, image_end: u64) -> Option<PvhBootInfo> {
    let rd32 = |a: u64| -> u32 {
        // SAFETY: inside the start-info structures (caller contract).
        unsafe { core::ptr::read_volatile(a as *const u32) }
    };
    let rd64 = |a: u64| -> u64 {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(a as *const u64) }
    };
    if pa == 0 || rd32(pa) != HVM_START_MAGIC {
        return None;
    }
    let version = rd32(pa + 4);
    let cmdline_pa = rd64(pa + 24);
    let cmdline = if cmdline_pa != 0 && cmdline_pa < IDENTITY_END {
        let mut n = 0usize;
        // SAFETY: NUL-terminated string in identity-mapped RAM; bounded to 4 KiB.
        while n < 4096
            && unsafe { core::ptr::read_volatile((cmdline_pa as usize + n) as *const u8) } != 0
        {
            n += 1;
        }
        // SAFETY: loader data in identity-mapped RAM, read once here.
        let bytes = unsafe { core::slice::from_raw_parts(cmdline_pa as *const u8, n) };
        // Copied: the loader's memory (page 0 included) is not kept mapped.
        alloc::string::String::from(core::str::from_utf8(bytes).unwrap_or("")).leak()
    } else {
        ""
    };
    let mut ram = (image_end, image_end);
    if version >= 1 {
        let map = rd64(pa + 40);
        let entries = rd32(pa + 48).min(128) as u64;
        for i in 0..entries {
            let e = map + i * 24;
            let (addr, size, ty) = (rd64(e), rd64(e + 8), rd32(e + 16));
            if ty != 1 {
                continue;
            }
            let end = addr.saturating_add(size);
            let start = addr.max(image_end);
            if end > start && end - start > ram.1 - ram.0 {
                ram = (start, end);
            }
        }
    }
    Some(PvhBootInfo {
        cmdline,
        ram_after_image: ram,
    })
}

/// PCI configuration space of one function through ports 0xCF8/0xCFC.
#[derive(Debug, Clone, Copy)]
pub struct PortConfig {
    bus: u8,
    device: u8,
    function: u8,
}

impl PortConfig {
    fn address(&self, offset: u16) -> u32 {
        0x8000_0000
            | (self.bus as u32) << 16
            | (self.device as u32) << 11
            | (self.function as u32) << 8
            | (offset as u32 & 0xfc)
    }
}

impl PciConfig for PortConfig {
    fn read32(&self, offset: u16) -> u32 {
        if offset >= 256 {
            return u32::MAX;
        }
        outl(0xcf8, self.address(offset));
        inl(0xcfc)
    }
    fn write32(&self, offset: u16, value: u32) {
        if offset >= 256 {
            return;
        }
        outl(0xcf8, self.address(offset));
        outl(0xcfc, value);
    }
}

/// Enumerate every function on buses 0..=255.
pub fn enumerate() -> Vec<PciFunction<PortConfig>> {
    let mut out = Vec::new();
    for bus in 0..=255u8 {
        for device in 0..32u8 {
            let f0 = PortConfig {
                bus,
                device,
                function: 0,
            };
            let addr = PciAddress {
                segment: 0,
                bus,
                device,
                function: 0,
            };
            let Some(func0) = PciFunction::probe(addr, f0) else {
                continue;
            };
            let multi = func0.is_multifunction();
            out.push(func0);
            if multi {
                for function in 1..8u8 {
                    let c = PortConfig {
                        bus,
                        device,
                        function,
                    };
                    let a = PciAddress { function, ..addr };
                    if let Some(f) = PciFunction::probe(a, c) {
                        out.push(f);
                    }
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------ DMA

static POOL: SpinMutex<FrameAllocator> = SpinMutex::new(FrameAllocator::empty());
static POOL_ALLOCATED: AtomicU64 = AtomicU64::new(0);

/// Give the DMA pool the physical range `[start, end)` (page-rounded inwards).
pub fn init_dma_pool(start: u64, end: u64) {
    let first = start.div_ceil(PAGE as u64);
    let last = end / PAGE as u64;
    POOL.lock().init(first, last.saturating_sub(first) as usize);
}

/// Take `pages` identity-mapped pages from the pool for good (heap growth). Returns the address.
pub fn alloc_pool_pages(pages: usize) -> Option<usize> {
    let frame = POOL.lock().alloc(pages, 1, 0)?;
    Some(frame as usize * PAGE)
}

/// Free pages in the DMA pool.
pub fn dma_pool_free_pages() -> usize {
    POOL.lock().free_frames()
}

/// Identity-mapped DMA allocator.
#[derive(Debug, Default)]
pub struct PvhDma;

/// A DMA buffer in identity-mapped RAM.
#[derive(Debug)]
pub struct PvhDmaBuf {
    addr: u64,
    len: usize,
    pages: usize,
}

impl DmaAlloc for PvhDma {
    type Buf = PvhDmaBuf;
    fn alloc(&self, size: usize, align: usize) -> Result<PvhDmaBuf, HalError> {
        let pages = size.max(1).div_ceil(PAGE);
        // Page alignment covers every align ≤ 4096; runs ≤ 64 KiB never cross 64 KiB.
        let boundary = if pages <= 16 { 16 } else { 0 };
        let frame = POOL
            .lock()
            .alloc(pages, 1, boundary)
            .ok_or(HalError::OutOfDmaMemory { size, align })?;
        POOL_ALLOCATED.fetch_add(pages as u64, Ordering::Relaxed);
        let buf = PvhDmaBuf {
            addr: frame * PAGE as u64,
            len: size,
            pages,
        };
        buf.zero();
        Ok(buf)
    }
}

impl Drop for PvhDmaBuf {
    fn drop(&mut self) {
        POOL.lock().free(self.addr / PAGE as u64, self.pages);
        POOL_ALLOCATED.fetch_sub(self.pages as u64, Ordering::Relaxed);
    }
}

impl DmaBuf for PvhDmaBuf {
    fn bus_addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len, "DMA read outside buffer");
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: inside the buffer (asserted), identity-mapped pool RAM owned by this buffer;
            // volatile because the device writes it.
            *b =
                unsafe { core::ptr::read_volatile((self.addr as usize + offset + i) as *const u8) };
        }
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len, "DMA write outside buffer");
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as `read_bytes`.
            unsafe { core::ptr::write_volatile((self.addr as usize + offset + i) as *mut u8, *b) };
        }
    }
    fn read32(&self, offset: usize) -> u32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "DMA read32 outside buffer"
        );
        // SAFETY: aligned, inside the buffer.
        unsafe { core::ptr::read_volatile((self.addr as usize + offset) as *const u32) }
    }
    fn write32(&self, offset: usize, value: u32) {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "DMA write32 outside buffer"
        );
        // SAFETY: aligned, inside the buffer.
        unsafe { core::ptr::write_volatile((self.addr as usize + offset) as *mut u32, value) }
    }
}

// ------------------------------------------------------------------------------ interrupts

/// Polled "interrupt": every `take` says "check the controller".
#[derive(Debug, Default)]
pub struct PolledIrq {
    count: AtomicU64,
}

impl hal::Interrupt for PolledIrq {
    fn take(&self) -> bool {
        self.count.fetch_add(1, Ordering::Relaxed);
        true
    }
    fn unmask(&self) {}
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

// -------------------------------------------------------------------------------- platform

pub struct PvhPlatform {
    functions: Vec<PciFunction<PortConfig>>,
    dma: PvhDma,
    clock: KernelClock,
}

impl PvhPlatform {
    /// Enumerate PCI. The DMA pool must have been given memory with [`init_dma_pool`].
    pub fn new() -> Self {
        let functions = enumerate();
        PvhPlatform {
            functions,
            dma: PvhDma,
            clock: KernelClock,
        }
    }
}

impl Default for PvhPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl hal::Platform for PvhPlatform {
    type Regs = Regs;
    type Dma = PvhDma;
    type Clock = KernelClock;
    type Irq = PolledIrq;
}

impl super::Platform for PvhPlatform {
    type Config = PortConfig;

    fn kind(&self) -> Kind {
        Kind::Pvh
    }

    fn functions(&self) -> &[PciFunction<PortConfig>] {
        &self.functions
    }

    fn map_bar(&self, f: &PciFunction<PortConfig>, bar: u8) -> Result<Regs, HalError> {
        match f.bar(bar) {
            Some(Bar::Memory { addr, size, .. }) => {
                let end = addr.checked_add(size).ok_or(HalError::NoSuchBar(bar))?;
                if addr == 0 || addr < UNCACHED_START || end > IDENTITY_END {
                    log::error!(target: "error",
                        "BAR{bar} of {} at {addr:#x}+{size:#x} is outside the uncached identity map (3-4 GiB): not supported under PVH",
                        f.addr);
                    return Err(HalError::Unsupported(
                        "memory BAR outside the PVH identity map",
                    ));
                }
                f.enable(0x2);
                // SAFETY: `boot/` identity-maps 3..4 GiB uncached; the BAR is the device's.
                Ok(Regs::Mmio(unsafe {
                    MmioRegs::new(addr as usize, size as usize)
                }))
            }
            Some(Bar::Io { port, size }) => {
                if port == 0 {
                    return Err(HalError::NoSuchBar(bar));
                }
                f.enable(0x1);
                Ok(Regs::Port(PortRegs::new(port, size)))
            }
            None => Err(HalError::NoSuchBar(bar)),
        }
    }

    fn bind_interrupt(&self, f: &PciFunction<PortConfig>) -> Result<PolledIrq, HalError> {
        f.enable(CMD_BUS_MASTER);
        log::info!(target: "irq", "{} ({}): no APIC/IOAPIC support under PVH: interrupts are polled",
            f.addr, usb_host_kind(&f.id).unwrap_or("device"));
        Ok(PolledIrq::default())
    }

    fn dma(&self) -> &PvhDma {
        &self.dma
    }

    fn clock(&self) -> &KernelClock {
        &self.clock
    }

    fn irq_description(&self) -> &'static str {
        "polled"
    }
}
