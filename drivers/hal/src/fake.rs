//! Fakes of the hardware-access traits for host tests: a flat "physical memory" that both the driver
//! (through [`FakeDma`] buffers) and a simulated device model (through [`FakeMemory::read`] /
//! [`FakeMemory::write`]) see, a register block, a manual clock and an interrupt flag.
//!
//! Single-threaded by design (`Rc<RefCell<…>>`): host tests drive driver and device model in turn.

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::{Clock, DmaAlloc, DmaBuf, HalError, Interrupt, RegisterIo};

/// Simulated physical memory starting at bus address `base`.
#[derive(Clone)]
pub struct FakeMemory {
    inner: Rc<RefCell<MemInner>>,
}

struct MemInner {
    base: u64,
    bytes: Vec<u8>,
    next: usize,
    /// Freed ranges, reused first-fit.
    free: Vec<(usize, usize)>,
}

impl FakeMemory {
    /// `size` bytes of memory at bus address `base` (should be page aligned, non-zero so that a
    /// zero pointer is recognisably wrong).
    pub fn new(base: u64, size: usize) -> Self {
        FakeMemory {
            inner: Rc::new(RefCell::new(MemInner {
                base,
                bytes: vec![0; size],
                next: 0,
                free: Vec::new(),
            })),
        }
    }

    /// Device-side read. Returns `false` (and leaves `out` untouched) when the range is outside
    /// memory, as a master abort would.
    pub fn read(&self, bus_addr: u64, out: &mut [u8]) -> bool {
        let m = self.inner.borrow();
        match m.range(bus_addr, out.len()) {
            Some(r) => {
                out.copy_from_slice(&m.bytes[r]);
                true
            }
            None => false,
        }
    }

    /// Device-side write; `false` when outside memory.
    pub fn write(&self, bus_addr: u64, data: &[u8]) -> bool {
        let mut m = self.inner.borrow_mut();
        match m.range(bus_addr, data.len()) {
            Some(r) => {
                m.bytes[r].copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    pub fn read32(&self, bus_addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(bus_addr, &mut b).then(|| u32::from_le_bytes(b))
    }

    pub fn read64(&self, bus_addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(bus_addr, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// Bytes currently allocated (for leak checks).
    pub fn allocated(&self) -> usize {
        let m = self.inner.borrow();
        m.next - m.free.iter().map(|(_, l)| *l).sum::<usize>()
    }
}

impl MemInner {
    fn range(&self, bus_addr: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = bus_addr.checked_sub(self.base)? as usize;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }
}

/// A DMA buffer in [`FakeMemory`].
pub struct FakeDmaBuf {
    mem: FakeMemory,
    offset: usize,
    len: usize,
}

impl FakeDmaBuf {
    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "DMA buffer access {offset:#x}+{len} outside {:#x}",
            self.len
        );
    }
}

impl DmaBuf for FakeDmaBuf {
    fn bus_addr(&self) -> u64 {
        self.mem.inner.borrow().base + self.offset as u64
    }
    fn len(&self) -> usize {
        self.len
    }
    fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        let m = self.mem.inner.borrow();
        out.copy_from_slice(&m.bytes[self.offset + offset..self.offset + offset + out.len()]);
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        let mut m = self.mem.inner.borrow_mut();
        let start = self.offset + offset;
        m.bytes[start..start + data.len()].copy_from_slice(data);
    }
}

impl Drop for FakeDmaBuf {
    fn drop(&mut self) {
        self.mem
            .inner
            .borrow_mut()
            .free
            .push((self.offset, self.len));
    }
}

/// Allocator over a [`FakeMemory`].
#[derive(Clone)]
pub struct FakeDma {
    pub mem: FakeMemory,
}

impl FakeDma {
    pub fn new(mem: FakeMemory) -> Self {
        FakeDma { mem }
    }
}

impl DmaAlloc for FakeDma {
    type Buf = FakeDmaBuf;
    fn alloc(&self, size: usize, align: usize) -> Result<FakeDmaBuf, HalError> {
        assert!(align.is_power_of_two() && align <= 4096);
        let size = size.max(1);
        let mut m = self.mem.inner.borrow_mut();
        let base = m.base as usize;
        // First fit among freed ranges with exact size and suitable alignment.
        let reuse = m
            .free
            .iter()
            .position(|&(off, len)| len == size && (base + off).is_multiple_of(align));
        let offset = if let Some(i) = reuse {
            m.free.swap_remove(i).0
        } else {
            let start = (base + m.next).next_multiple_of(align) - base;
            // Never cross a 64 KiB boundary for buffers that fit in one (xHCI rule).
            let start = if size <= 0x10000
                && (base + start) / 0x10000 != (base + start + size - 1) / 0x10000
            {
                (base + start).next_multiple_of(0x10000) - base
            } else {
                start
            };
            if start + size > m.bytes.len() {
                return Err(HalError::OutOfDmaMemory { size, align });
            }
            m.next = start + size;
            start
        };
        m.bytes[offset..offset + size].fill(0);
        drop(m);
        Ok(FakeDmaBuf {
            mem: self.mem.clone(),
            offset,
            len: size,
        })
    }
}

/// A register block backed by memory, with an optional hook so a device model can react to writes.
pub struct FakeRegs {
    bytes: RefCell<Vec<u8>>,
    /// Called after every write with (offset, width, value).
    #[allow(clippy::type_complexity)]
    on_write: RefCell<Option<alloc::boxed::Box<dyn FnMut(&FakeRegs, usize, u8, u64)>>>,
    /// Called before every read with (offset, width); may update the bytes.
    #[allow(clippy::type_complexity)]
    on_read: RefCell<Option<alloc::boxed::Box<dyn FnMut(&FakeRegs, usize, u8)>>>,
}

impl FakeRegs {
    pub fn new(size: usize) -> Self {
        FakeRegs {
            bytes: RefCell::new(vec![0; size]),
            on_write: RefCell::new(None),
            on_read: RefCell::new(None),
        }
    }
    pub fn set_on_write(&self, f: impl FnMut(&FakeRegs, usize, u8, u64) + 'static) {
        *self.on_write.borrow_mut() = Some(alloc::boxed::Box::new(f));
    }
    pub fn set_on_read(&self, f: impl FnMut(&FakeRegs, usize, u8) + 'static) {
        *self.on_read.borrow_mut() = Some(alloc::boxed::Box::new(f));
    }
    /// Device-side store that does not trigger the write hook.
    pub fn poke(&self, offset: usize, width: u8, value: u64) {
        let mut b = self.bytes.borrow_mut();
        b[offset..offset + width as usize].copy_from_slice(&value.to_le_bytes()[..width as usize]);
    }
    /// Device-side load that does not trigger the read hook.
    pub fn peek(&self, offset: usize, width: u8) -> u64 {
        let b = self.bytes.borrow();
        let mut v = [0u8; 8];
        v[..width as usize].copy_from_slice(&b[offset..offset + width as usize]);
        u64::from_le_bytes(v)
    }
    fn load(&self, offset: usize, width: u8) -> u64 {
        // Take the hook out while it runs so it can call peek/poke.
        let hook = self.on_read.borrow_mut().take();
        if let Some(mut h) = hook {
            h(self, offset, width);
            *self.on_read.borrow_mut() = Some(h);
        }
        self.peek(offset, width)
    }
    fn store(&self, offset: usize, width: u8, value: u64) {
        self.poke(offset, width, value);
        let hook = self.on_write.borrow_mut().take();
        if let Some(mut h) = hook {
            h(self, offset, width, value);
            *self.on_write.borrow_mut() = Some(h);
        }
    }
}

impl RegisterIo for FakeRegs {
    fn read8(&self, offset: usize) -> u8 {
        self.load(offset, 1) as u8
    }
    fn read16(&self, offset: usize) -> u16 {
        self.load(offset, 2) as u16
    }
    fn read32(&self, offset: usize) -> u32 {
        self.load(offset, 4) as u32
    }
    fn write8(&self, offset: usize, value: u8) {
        self.store(offset, 1, value as u64)
    }
    fn write16(&self, offset: usize, value: u16) {
        self.store(offset, 2, value as u64)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.store(offset, 4, value as u64)
    }
    fn size(&self) -> usize {
        self.bytes.borrow().len()
    }
}

/// A [`RegisterIo`] handle to a shared [`FakeRegs`] block: the driver under test owns one, the
/// simulated device model keeps the `Rc` to read and change the same registers.
#[derive(Clone)]
pub struct SharedRegs(pub Rc<FakeRegs>);

impl RegisterIo for SharedRegs {
    fn read8(&self, offset: usize) -> u8 {
        self.0.read8(offset)
    }
    fn read16(&self, offset: usize) -> u16 {
        self.0.read16(offset)
    }
    fn read32(&self, offset: usize) -> u32 {
        self.0.read32(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        self.0.write8(offset, value)
    }
    fn write16(&self, offset: usize, value: u16) {
        self.0.write16(offset, value)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.0.write32(offset, value)
    }
    fn size(&self) -> usize {
        self.0.size()
    }
}

/// The hal bundle of the fakes: a driver under test instantiated over [`SharedRegs`],
/// [`FakeDma`], [`FakeClock`] and [`FakeIrq`].
pub struct FakePlatform;

impl crate::Platform for FakePlatform {
    type Regs = SharedRegs;
    type Dma = FakeDma;
    type Clock = FakeClock;
    type Irq = FakeIrq;
}

/// A clock that only moves when told to; `delay_us` advances it.
#[derive(Clone, Default)]
pub struct FakeClock {
    now: Rc<Cell<u64>>,
}

impl FakeClock {
    pub fn advance_ns(&self, ns: u64) {
        self.now.set(self.now.get() + ns);
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.now.get()
    }
    fn delay_us(&self, us: u64) {
        self.advance_ns(us * 1000);
    }
}

/// An interrupt line a test raises by hand.
#[derive(Clone, Default)]
pub struct FakeIrq {
    pending: Rc<Cell<bool>>,
    count: Rc<Cell<u64>>,
    pub unmasks: Rc<Cell<u64>>,
}

impl FakeIrq {
    pub fn raise(&self) {
        self.pending.set(true);
        self.count.set(self.count.get() + 1);
    }
}

impl Interrupt for FakeIrq {
    fn take(&self) -> bool {
        self.pending.replace(false)
    }
    fn unmask(&self) {
        self.unmasks.set(self.unmasks.get() + 1);
    }
    fn count(&self) -> u64 {
        self.count.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_alignment_boundary_and_reuse() {
        let mem = FakeMemory::new(0x10_0000, 0x40000);
        let dma = FakeDma::new(mem.clone());
        let a = dma.alloc(100, 64).unwrap();
        assert_eq!(a.bus_addr() % 64, 0);
        let b = dma.alloc(0x8000, 4096).unwrap();
        assert_eq!(b.bus_addr() % 4096, 0);
        assert_eq!(
            b.bus_addr() / 0x10000,
            (b.bus_addr() + 0x7fff) / 0x10000,
            "crosses 64K"
        );
        b.write32(8, 0xdead_beef);
        assert_eq!(mem.read32(b.bus_addr() + 8), Some(0xdead_beef));
        assert!(mem.write(a.bus_addr(), &[1, 2, 3]));
        let mut out = [0u8; 3];
        a.read_bytes(0, &mut out);
        assert_eq!(out, [1, 2, 3]);
        let addr = a.bus_addr();
        let before = mem.allocated();
        drop(a);
        assert_eq!(mem.allocated(), before - 100);
        let c = dma.alloc(100, 64).unwrap();
        assert_eq!(c.bus_addr(), addr);
        let mut z = [9u8; 3];
        c.read_bytes(0, &mut z);
        assert_eq!(z, [0, 0, 0], "reused buffer is zeroed");
        assert!(matches!(
            dma.alloc(0x100000, 8),
            Err(HalError::OutOfDmaMemory { .. })
        ));
        assert!(!mem.read(0x10, &mut out), "below memory");
    }

    #[test]
    fn regs_hooks() {
        let r = Rc::new(FakeRegs::new(64));
        let seen = Rc::new(Cell::new(0u64));
        let s = seen.clone();
        r.set_on_write(move |regs, off, _w, v| {
            s.set(v);
            regs.poke(off + 4, 4, v + 1);
        });
        r.write32(0, 41);
        assert_eq!(seen.get(), 41);
        assert_eq!(r.read32(4), 42);
        r.write64(8, 0x1_0000_0002);
        assert_eq!(r.read64(8), 0x1_0000_0002);
    }
}
