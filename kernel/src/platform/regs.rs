//! Register windows shared by both platforms: a memory BAR mapped at a kernel virtual address
//! (MMIO, volatile accesses of exactly the requested width) or an I/O-port BAR (`in`/`out`).
//! PVH maps memory BARs through its identity map; Xen maps them with `mmu_update(DOMID_IO)` at a
//! kernel VA; both then hand out [`Regs::Mmio`]. Out-of-range accesses read all-ones / are dropped
//! (and assert in debug builds), as `hal::RegisterIo` requires.

use hal::RegisterIo;

/// A mapped MMIO window.
#[derive(Debug)]
pub struct MmioRegs {
    va: usize,
    size: usize,
}

impl MmioRegs {
    /// # Safety
    /// `[va, va + size)` must stay mapped (uncached) to the device's registers for the lifetime of
    /// the value and must not be used as ordinary memory by anyone else.
    pub unsafe fn new(va: usize, size: usize) -> Self {
        MmioRegs { va, size }
    }

    pub fn va(&self) -> usize {
        self.va
    }

    fn ok(&self, off: usize, w: usize) -> bool {
        let ok = off.is_multiple_of(w) && off.checked_add(w).is_some_and(|e| e <= self.size);
        debug_assert!(
            ok,
            "MMIO access {off:#x}+{w} outside window of {:#x}",
            self.size
        );
        ok
    }
}

/// An I/O-port window.
#[derive(Debug, Clone, Copy)]
pub struct PortRegs {
    base: u16,
    size: u16,
}

impl PortRegs {
    pub fn new(base: u16, size: u16) -> Self {
        PortRegs { base, size }
    }

    pub fn base(&self) -> u16 {
        self.base
    }

    fn ok(&self, off: usize, w: usize) -> bool {
        let ok = off + w <= self.size as usize;
        debug_assert!(
            ok,
            "port access {off:#x}+{w} outside window of {:#x}",
            self.size
        );
        ok
    }
}

/// A register window of either kind; the type every platform's `hal::Platform::Regs` is.
#[derive(Debug)]
pub enum Regs {
    Mmio(MmioRegs),
    Port(PortRegs),
}

macro_rules! mmio_rw {
    ($r:ident, $w:ident, $t:ty, $pin:path, $pout:path) => {
        fn $r(&self, off: usize) -> $t {
            const W: usize = core::mem::size_of::<$t>();
            match self {
                Regs::Mmio(m) => {
                    if !m.ok(off, W) {
                        return <$t>::MAX;
                    }
                    // SAFETY: inside the mapped window (checked), aligned to the access width.
                    unsafe { core::ptr::read_volatile((m.va + off) as *const $t) }
                }
                Regs::Port(p) => {
                    if !p.ok(off, W) {
                        return <$t>::MAX;
                    }
                    $pin(p.base + off as u16)
                }
            }
        }
        fn $w(&self, off: usize, v: $t) {
            const W: usize = core::mem::size_of::<$t>();
            match self {
                Regs::Mmio(m) => {
                    if m.ok(off, W) {
                        // SAFETY: as the read.
                        unsafe { core::ptr::write_volatile((m.va + off) as *mut $t, v) }
                    }
                }
                Regs::Port(p) => {
                    if p.ok(off, W) {
                        $pout(p.base + off as u16, v)
                    }
                }
            }
        }
    };
}

impl RegisterIo for Regs {
    mmio_rw!(read8, write8, u8, crate::arch::inb, crate::arch::outb);
    mmio_rw!(read16, write16, u16, crate::arch::inw, crate::arch::outw);
    mmio_rw!(read32, write32, u32, crate::arch::inl, crate::arch::outl);

    fn size(&self) -> usize {
        match self {
            Regs::Mmio(m) => m.size,
            Regs::Port(p) => p.size as usize,
        }
    }
}
