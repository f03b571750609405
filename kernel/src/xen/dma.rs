//! DMA memory for a PV domain: our own pages, whose bus address is the machine address from the
//! p2m (no IOMMU translation for a PV domain's passed-through device: Xen maps the domain's frames
//! 1:1 in the IOMMU). A buffer of more than one page must be machine-contiguous: its pages are
//! traded for one contiguous extent with `XENMEM_exchange` (Xen `memory.h`; the same technique as
//! Linux's `xen_create_contiguous_region`): unmap the pseudo-physical pages, exchange the frames,
//! then record the new frames in the p2m/m2p and map them at the same addresses.

use hal::{DmaAlloc, DmaBuf, HalError};
use xenidc::abi::DomId;
use xenidc::xen::ops;

use crate::pv::mm::{self, PAGE_SIZE};

/// `XENMEM_exchange`.
const XENMEM_EXCHANGE: u32 = 11;
/// Machine addresses below 4 GiB (UHCI and 32-bit xHCI structures).
const ADDRESS_BITS: u32 = 32;
/// Largest machine-contiguous buffer (order 4 = 64 KiB: naturally aligned, so it never crosses a
/// 64 KiB boundary, xHCI 1.2 §6).
const MAX_ORDER: u32 = 4;

/// `struct xen_memory_reservation` (x86_64).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MemoryReservation {
    extent_start: u64,
    nr_extents: u64,
    extent_order: u32,
    mem_flags: u32,
    domid: DomId,
    _pad: [u8; 6],
}

/// `struct xen_memory_exchange`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MemoryExchange {
    input: MemoryReservation,
    output: MemoryReservation,
    nr_exchanged: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<MemoryReservation>() == 32);
    assert!(offset_of!(MemoryReservation, nr_extents) == 8);
    assert!(offset_of!(MemoryReservation, extent_order) == 16);
    assert!(offset_of!(MemoryReservation, mem_flags) == 20);
    assert!(offset_of!(MemoryReservation, domid) == 24);
    assert!(size_of::<MemoryExchange>() == 72);
    assert!(offset_of!(MemoryExchange, output) == 32);
    assert!(offset_of!(MemoryExchange, nr_exchanged) == 64);
};

#[derive(Debug, Default)]
pub struct XenDma;

/// A machine-contiguous DMA buffer mapped at `va`.
#[derive(Debug)]
pub struct XenDmaBuf {
    va: usize,
    bus: u64,
    len: usize,
    pages: usize,
}

/// Make the `n = 2^order` pages at `va` machine-contiguous; returns the first machine frame.
fn make_contiguous(va: usize, order: u32) -> Result<u64, HalError> {
    let n = 1usize << order;
    let mut in_frames = [0u64; 1 << MAX_ORDER];
    for (i, f) in in_frames.iter_mut().enumerate().take(n) {
        *f = mm::va_to_mfn(va + i * PAGE_SIZE)
            .ok_or(HalError::Unsupported("page outside the p2m"))?;
    }
    let mut out_frame = [0u64; 1];
    // Xen takes the frames only if nothing maps them.
    // SAFETY: the pages were just allocated for this buffer; nothing else uses them.
    unsafe { mm::unmap(va, n) }.map_err(|_| HalError::Unsupported("unmapping DMA pages failed"))?;
    let mut x = MemoryExchange {
        input: MemoryReservation {
            extent_start: in_frames.as_mut_ptr() as u64,
            nr_extents: n as u64,
            extent_order: 0,
            mem_flags: 0,
            domid: DomId::SELF,
            _pad: [0; 6],
        },
        output: MemoryReservation {
            extent_start: out_frame.as_mut_ptr() as u64,
            nr_extents: 1,
            extent_order: order,
            mem_flags: ADDRESS_BITS,
            domid: DomId::SELF,
            _pad: [0; 6],
        },
        nr_exchanged: 0,
    };
    // SAFETY: the argument's handles point at `in_frames`/`out_frame`, live for the call; the
    // frames given away are unmapped and unused.
    let r = unsafe { ops::memory_op(XENMEM_EXCHANGE, &mut x) };
    let ok = r.is_ok() && x.nr_exchanged == n as u64;
    // On failure Xen has exchanged nothing (the exchange of one output extent is all or nothing):
    // put the old frames back.
    let frames: [u64; 1 << MAX_ORDER] = if ok {
        core::array::from_fn(|i| out_frame[0] + i as u64)
    } else {
        in_frames
    };
    for (i, &mfn) in frames.iter().enumerate().take(n) {
        let pfn = (va / PAGE_SIZE + i) as u64;
        // SAFETY: `mfn` is ours in place of the pfn's old frame (exchanged, or the original).
        unsafe { mm::set_pfn_frame(pfn, mfn) }
            .map_err(|_| HalError::Unsupported("remapping exchanged DMA pages failed"))?;
    }
    if !ok {
        return Err(HalError::Unsupported(
            "Xen refused a machine-contiguous DMA allocation (XENMEM_exchange)",
        ));
    }
    Ok(out_frame[0])
}

impl DmaAlloc for XenDma {
    type Buf = XenDmaBuf;

    fn alloc(&self, size: usize, align: usize) -> Result<XenDmaBuf, HalError> {
        let want = size.max(1).div_ceil(PAGE_SIZE);
        let order = want.next_power_of_two().trailing_zeros();
        if order > MAX_ORDER || align > PAGE_SIZE {
            return Err(HalError::Unsupported(
                "DMA buffers are at most 64 KiB and page aligned",
            ));
        }
        let pages = 1usize << order;
        let va = mm::alloc_pages(pages).map_err(|_| HalError::OutOfDmaMemory { size, align })?;
        let bus = if pages == 1 {
            mm::va_to_mfn(va).ok_or(HalError::Unsupported("page outside the p2m"))? << 12
        } else {
            match make_contiguous(va, order) {
                Ok(mfn) => mfn << 12,
                Err(e) => {
                    mm::free_pages_at(va, pages);
                    return Err(e);
                }
            }
        };
        let buf = XenDmaBuf {
            va,
            bus,
            len: size,
            pages,
        };
        buf.zero();
        Ok(buf)
    }
}

impl Drop for XenDmaBuf {
    fn drop(&mut self) {
        // The pages (machine-contiguous or not) are ordinary pages of ours again.
        mm::free_pages_at(self.va, self.pages);
    }
}

impl XenDmaBuf {
    /// The kernel virtual address of the buffer.
    #[cfg_attr(not(feature = "selftest"), allow(dead_code))] // self-tests only
    pub fn va(&self) -> usize {
        self.va
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "DMA access {offset:#x}+{len} outside a buffer of {:#x}",
            self.len
        );
    }
}

impl DmaBuf for XenDmaBuf {
    fn bus_addr(&self) -> u64 {
        self.bus
    }
    fn len(&self) -> usize {
        self.len
    }
    fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: inside the buffer (checked), our mapped pages; volatile: the device writes it.
            *b = unsafe { core::ptr::read_volatile((self.va + offset + i) as *const u8) };
        }
    }
    fn write_bytes(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as `read_bytes`.
            unsafe { core::ptr::write_volatile((self.va + offset + i) as *mut u8, *b) };
        }
    }
    fn read32(&self, offset: usize) -> u32 {
        self.check(offset, 4);
        assert!(offset.is_multiple_of(4), "misaligned DMA read32");
        // SAFETY: aligned, inside the buffer.
        unsafe { core::ptr::read_volatile((self.va + offset) as *const u32) }
    }
    fn write32(&self, offset: usize, value: u32) {
        self.check(offset, 4);
        assert!(offset.is_multiple_of(4), "misaligned DMA write32");
        // SAFETY: aligned, inside the buffer.
        unsafe { core::ptr::write_volatile((self.va + offset) as *mut u32, value) }
    }
    fn read64(&self, offset: usize) -> u64 {
        self.check(offset, 8);
        assert!(offset.is_multiple_of(8), "misaligned DMA read64");
        // SAFETY: aligned, inside the buffer.
        unsafe { core::ptr::read_volatile((self.va + offset) as *const u64) }
    }
    fn write64(&self, offset: usize, value: u64) {
        self.check(offset, 8);
        assert!(offset.is_multiple_of(8), "misaligned DMA write64");
        // SAFETY: aligned, inside the buffer.
        unsafe { core::ptr::write_volatile((self.va + offset) as *mut u64, value) }
    }
}
