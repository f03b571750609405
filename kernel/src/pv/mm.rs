//! PV memory management for a 64-bit Xen PV guest (`include/public/xen.h` "MMU", x86_64 4-level
//! paging). A PV guest never writes its page tables: they are mapped read-only and every change
//! goes through `mmu_update` / `update_va_mapping` / `mmuext_op`, which Xen validates.
//!
//! * p2m: `start_info.mfn_list`, pfn → mfn (ours to keep up to date when frames change).
//! * m2p: Xen's read-only table at [`MACH2PHYS_VIRT_START`], mfn → pfn.
//! * Our own RAM is mapped at `va = pfn * 4096` (VIRT_BASE = 0). Xen's builder maps the image, its
//!   own structures and up to the next 4 MiB boundary; [`alloc_pages`] maps further pages on demand.
//! * New page-table pages come from a `.bss` pool (already mapped), then from already-mapped free
//!   frames: zeroed, remapped read-only, then hooked into the parent with `mmu_update` (Xen
//!   validates and types them). Page-table pages are never freed.
//! * I/O and foreign frames are mapped in a window starting at [`IO_WINDOW_START`] (4 GiB): BARs
//!   with `mmu_update(foreigndom = DOMID_IO)` and cache-disable bits; [`reserve_va`] hands out
//!   window pages whose L1 tables exist, e.g. for `GNTTABOP_map_grant_ref` with `GNTMAP_host_map`.
//!
//! Single vCPU: one global lock around the allocator state.

use core::sync::atomic::{AtomicUsize, Ordering};

use hermit_sync::SpinMutex;

use super::hcall::{self, MmuUpdate, MmuextOp, DOMID_IO, DOMID_SELF, MMU_NORMAL_PT_UPDATE};
use super::start_info::StartInfo;
use crate::frames::FrameAllocator;

/// Read-only machine-to-physical table Xen maps into every 64-bit PV guest.
pub const MACH2PHYS_VIRT_START: usize = 0xFFFF_8000_0000_0000;
pub const PAGE_SIZE: usize = 4096;
/// Start of the VA window for I/O, foreign and grant mappings.
pub const IO_WINDOW_START: usize = 0x1_0000_0000;
/// Size of that window.
pub const IO_WINDOW_SIZE: usize = 1 << 30;

/// PTE bits (Intel SDM vol. 3 §4.5).
pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_RW: u64 = 1 << 1;
pub const PTE_USER: u64 = 1 << 2;
pub const PTE_PWT: u64 = 1 << 3;
pub const PTE_PCD: u64 = 1 << 4;
pub const PTE_ACCESSED: u64 = 1 << 5;
pub const PTE_DIRTY: u64 = 1 << 6;
pub const PTE_PS: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Flags of a normal read-write kernel data page.
pub const PAGE_RW: u64 = PTE_PRESENT | PTE_RW | PTE_ACCESSED | PTE_DIRTY;
/// Flags of an uncached read-write I/O page.
pub const PAGE_IO: u64 = PAGE_RW | PTE_PCD | PTE_PWT;
/// Flags of an intermediate page-table entry.
const TABLE_FLAGS: u64 = PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED | PTE_DIRTY;

/// `mmu_update` command: update the m2p entry of a frame we own.
const MMU_MACHPHYS_UPDATE: u64 = 1;
const MMUEXT_INVLPG_LOCAL: u32 = 7;

/// Errors of PV memory management.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmError {
    /// No free pages (or page-table pages) left.
    OutOfMemory,
    /// The VA window is exhausted.
    OutOfVa,
    /// A large page is in the way at this level.
    LargePage(usize),
    /// Xen refused an MMU operation (negative errno).
    Hypercall { op: &'static str, code: isize },
    /// Not initialised / bad argument.
    Invalid(&'static str),
}

impl core::fmt::Display for MmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MmError::OutOfMemory => write!(f, "out of memory"),
            MmError::OutOfVa => write!(f, "out of virtual address space in the I/O window"),
            MmError::LargePage(va) => write!(f, "large page in the way at {va:#x}"),
            MmError::Hypercall { op, code } => write!(f, "{op} failed ({code})"),
            MmError::Invalid(w) => write!(f, "invalid: {w}"),
        }
    }
}

static P2M: AtomicUsize = AtomicUsize::new(0);
static NR_PAGES: AtomicUsize = AtomicUsize::new(0);
static PT_BASE: AtomicUsize = AtomicUsize::new(0);

/// Number of page-table pages kept for growing the page tables.
const PT_POOL_PAGES: usize = 24;

#[repr(C, align(4096))]
struct PtPool([[u8; PAGE_SIZE]; PT_POOL_PAGES]);

/// Page-table page pool. Only its address is used; the pages are accessed through raw pointers and
/// become read-only page tables.
static mut PT_POOL: PtPool = PtPool([[0; PAGE_SIZE]; PT_POOL_PAGES]);

struct State {
    pt_pool_used: usize,
    /// Page-table pages taken from `frames` once the pool ran out (never returned).
    pt_from_frames: usize,
    frames: FrameAllocator,
    io_next: usize,
}

static STATE: SpinMutex<State> = SpinMutex::new(State {
    pt_pool_used: 0,
    pt_from_frames: 0,
    frames: FrameAllocator::empty(),
    io_next: IO_WINDOW_START,
});

/// Remember the p2m list (start_info.mfn_list) and the number of pages.
pub fn init_p2m(mfn_list_va: usize, nr_pages: usize) {
    P2M.store(mfn_list_va, Ordering::SeqCst);
    NR_PAGES.store(nr_pages, Ordering::SeqCst);
}

/// Set up the allocator. Free frames: those below the image (VIRT_BASE = 0 and the image at 1 MiB
/// leave pfns 1..256 unused) and those after Xen's page tables and boot stack; pfn 0 is unmapped so
/// a null pointer dereference faults.
pub fn init(si: &StartInfo) {
    init_p2m(si.mfn_list as usize, si.nr_pages as usize);
    PT_BASE.store(si.pt_base as usize, Ordering::SeqCst);
    // Xen's builder puts, from the image start upwards: image, p2m list, start_info, xenstore,
    // console, page tables, boot stack. Keep a few pages of slack after the page tables.
    let (img_start, img_end) = boot::image_range();
    let used_from = (img_start / PAGE_SIZE) as u64;
    let used_to = ((si.pt_base as usize / PAGE_SIZE) as u64 + si.nr_pt_frames + 4)
        .max(img_end.div_ceil(PAGE_SIZE) as u64);
    let count = (si.nr_pages as usize).saturating_sub(1);
    let mut st = STATE.lock();
    st.frames.init(1, count);
    st.frames.reserve(used_from, (used_to - used_from) as usize);
    drop(st);
    // Null-pointer guard: unmap page 0 (its frame simply stays unused).
    // SAFETY: nothing lives at virtual address 0.
    let _ = unsafe { hcall::update_va_mapping(0, 0, hcall::UVMF_INVLPG) };
}

/// Number of pages [`alloc_pages`] can still hand out.
pub fn free_pages() -> usize {
    STATE.lock().frames.free_frames()
}

/// Pseudo-physical frame → machine frame.
pub fn pfn_to_mfn(pfn: u64) -> Option<u64> {
    let p2m = P2M.load(Ordering::Relaxed);
    if p2m == 0 || pfn as usize >= NR_PAGES.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: the p2m list covers nr_pages entries and is mapped by Xen's builder.
    Some(unsafe { core::ptr::read_volatile((p2m as *const u64).add(pfn as usize)) })
}

/// Machine frame → pseudo-physical frame (Xen's read-only m2p table). Only meaningful for frames
/// this domain owns.
pub fn mfn_to_pfn(mfn: u64) -> u64 {
    // SAFETY: Xen maps the m2p read-only at MACH2PHYS_VIRT_START for every machine frame.
    unsafe { core::ptr::read_volatile((MACH2PHYS_VIRT_START as *const u64).add(mfn as usize)) }
}

/// Virtual address of our own pseudo-physical frame (VIRT_BASE = 0: va = pfn * 4096).
pub fn pfn_to_va(pfn: u64) -> usize {
    pfn as usize * PAGE_SIZE
}

/// Machine frame of the page of our own RAM at kernel virtual address `va` (not for the I/O window).
pub fn va_to_mfn(va: usize) -> Option<u64> {
    pfn_to_mfn((va / PAGE_SIZE) as u64)
}

fn read_entry(table_va: usize, idx: usize) -> u64 {
    // SAFETY: `table_va` is a mapped (read-only) page-table page; idx < 512.
    unsafe { core::ptr::read_volatile((table_va as *const u64).add(idx)) }
}

fn index(va: usize, level: u32) -> usize {
    (va >> (12 + 9 * (level - 1))) & 511
}

/// Take a pool page, zero it and make it read-only so Xen accepts it as a page table.
fn new_table(st: &mut State) -> Result<(usize, u64), MmError> {
    let va = if st.pt_pool_used < PT_POOL_PAGES {
        // Only the address of the pool is taken; pages are handed out once each.
        let base = core::ptr::addr_of!(PT_POOL) as usize;
        st.pt_pool_used += 1;
        base + (st.pt_pool_used - 1) * PAGE_SIZE
    } else {
        // Pool exhausted (large domains): a free frame that is already mapped. First fit hands
        // out the low, initially mapped frames first; an unmapped one cannot be used (mapping it
        // would need a page table itself).
        let pfn = st.frames.alloc(1, 1, 0).ok_or(MmError::OutOfMemory)?;
        let va = pfn_to_va(pfn);
        if lookup(va) & PTE_PRESENT == 0 {
            st.frames.free(pfn, 1);
            return Err(MmError::OutOfMemory);
        }
        st.pt_pool_used += 1;
        st.pt_from_frames += 1;
        va
    };
    // SAFETY: this pool page is ours alone and still mapped writable.
    unsafe { core::ptr::write_bytes(va as *mut u8, 0, PAGE_SIZE) };
    let mfn = va_to_mfn(va).ok_or(MmError::Invalid("page-table pool outside the p2m"))?;
    // SAFETY: remapping our own pool page read-only; nothing holds a reference to it.
    let r = unsafe {
        hcall::update_va_mapping(
            va,
            (mfn << 12) | PTE_PRESENT | PTE_ACCESSED,
            hcall::UVMF_INVLPG,
        )
    };
    if r != 0 {
        return Err(MmError::Hypercall {
            op: "update_va_mapping(page table read-only)",
            code: r,
        });
    }
    Ok((va, mfn))
}

/// Walk to the L1 table covering `va`, creating missing tables. Returns the L1's (va, mfn).
fn ensure_l1(st: &mut State, va: usize) -> Result<(usize, u64), MmError> {
    let pt_base = PT_BASE.load(Ordering::Relaxed);
    if pt_base == 0 {
        return Err(MmError::Invalid("mm not initialised"));
    }
    let mut table_va = pt_base;
    let mut table_mfn = va_to_mfn(pt_base).ok_or(MmError::Invalid("pt_base outside the p2m"))?;
    for level in [4u32, 3, 2] {
        let idx = index(va, level);
        let e = read_entry(table_va, idx);
        if e & PTE_PRESENT == 0 {
            let (nva, nmfn) = new_table(st)?;
            let req = [MmuUpdate {
                ptr: ((table_mfn << 12) + (idx as u64) * 8) | MMU_NORMAL_PT_UPDATE,
                val: (nmfn << 12) | TABLE_FLAGS,
            }];
            // SAFETY: installs a fresh, zeroed, read-only table into an empty slot of our tables.
            let (r, _) = unsafe { hcall::mmu_update(&req, DOMID_SELF) };
            if r != 0 {
                return Err(MmError::Hypercall {
                    op: "mmu_update(new page table)",
                    code: r,
                });
            }
            table_va = nva;
            table_mfn = nmfn;
        } else {
            if e & PTE_PS != 0 {
                return Err(MmError::LargePage(va));
            }
            table_mfn = (e & PTE_ADDR) >> 12;
            table_va = pfn_to_va(mfn_to_pfn(table_mfn));
        }
    }
    Ok((table_va, table_mfn))
}

/// Current PTE of `va` (0 if any level is missing).
pub fn lookup(va: usize) -> u64 {
    let mut table_va = PT_BASE.load(Ordering::Relaxed);
    if table_va == 0 {
        return 0;
    }
    for level in [4u32, 3, 2, 1] {
        let e = read_entry(table_va, index(va, level));
        if e & PTE_PRESENT == 0 {
            return 0;
        }
        if level == 1 || e & PTE_PS != 0 {
            return e;
        }
        table_va = pfn_to_va(mfn_to_pfn((e & PTE_ADDR) >> 12));
    }
    0
}

fn invlpg(va: usize) {
    let op = [MmuextOp {
        cmd: MMUEXT_INVLPG_LOCAL,
        _pad: 0,
        arg1: va as u64,
        arg2: 0,
    }];
    // SAFETY: a TLB flush of one address has no memory-safety effect.
    unsafe { hcall::mmuext_op(&op) };
}

/// Map machine frames `mfns` (owned by `domid`: `DOMID_SELF`, `DOMID_IO` for BARs, or another
/// domain's id for foreign frames we have rights to) at `va..` with PTE `flags`.
///
/// # Safety
/// The caller owns the virtual range: nothing else may live there, and replacing a mapping
/// invalidates whatever was accessible through it.
pub unsafe fn map_frames(va: usize, mfns: &[u64], flags: u64, domid: u16) -> Result<(), MmError> {
    let mut st = STATE.lock();
    for (i, &mfn) in mfns.iter().enumerate() {
        let v = va + i * PAGE_SIZE;
        let (_, l1_mfn) = ensure_l1(&mut st, v)?;
        let req = [MmuUpdate {
            ptr: ((l1_mfn << 12) + (index(v, 1) as u64) * 8) | MMU_NORMAL_PT_UPDATE,
            val: (mfn << 12) | flags,
        }];
        // SAFETY: the caller owns `v`.
        let (r, _) = unsafe { hcall::mmu_update(&req, domid) };
        if r != 0 {
            return Err(MmError::Hypercall {
                op: "mmu_update(map)",
                code: r,
            });
        }
        invlpg(v);
    }
    Ok(())
}

/// Remove the mappings of `pages` pages at `va`.
///
/// # Safety
/// Nothing may access the range afterwards.
pub unsafe fn unmap(va: usize, pages: usize) -> Result<(), MmError> {
    for i in 0..pages {
        let v = va + i * PAGE_SIZE;
        if lookup(v) == 0 {
            continue;
        }
        // SAFETY: caller contract.
        let r = unsafe { hcall::update_va_mapping(v, 0, hcall::UVMF_INVLPG) };
        if r != 0 {
            return Err(MmError::Hypercall {
                op: "update_va_mapping(unmap)",
                code: r,
            });
        }
    }
    Ok(())
}

/// Reserve `pages` pages of the I/O window whose L1 tables exist (unmapped): for mapping grants
/// (`GNTMAP_host_map`) or frames with [`map_frames`]. Never reused.
pub fn reserve_va(pages: usize) -> Result<usize, MmError> {
    let mut st = STATE.lock();
    let va = st.io_next;
    let end = va.checked_add(pages * PAGE_SIZE).ok_or(MmError::OutOfVa)?;
    if end > IO_WINDOW_START + IO_WINDOW_SIZE {
        return Err(MmError::OutOfVa);
    }
    for i in 0..pages {
        ensure_l1(&mut st, va + i * PAGE_SIZE)?;
    }
    st.io_next = end;
    Ok(va)
}

/// Map `pages` machine frames of I/O memory (a PCI BAR) starting at `mfn`, uncached if
/// `uncached`, at a fresh VA of the I/O window. Errors carry Xen's code (e.g. -EPERM when the
/// toolstack gave us no iomem permission).
pub fn map_io(mfn: u64, pages: usize, uncached: bool) -> Result<usize, MmError> {
    let va = reserve_va(pages)?;
    let flags = if uncached { PAGE_IO } else { PAGE_RW };
    for i in 0..pages {
        // SAFETY: `va` was just reserved for us alone.
        unsafe { map_frames(va + i * PAGE_SIZE, &[mfn + i as u64], flags, DOMID_IO)? };
    }
    Ok(va)
}

/// Allocate `n` zeroed pages of our own RAM, contiguous in pseudo-physical (and virtual) space but
/// **not** machine-contiguous; returns the VA. Use [`va_to_mfn`] per page for machine addresses.
pub fn alloc_pages(n: usize) -> Result<usize, MmError> {
    let pfn = STATE
        .lock()
        .frames
        .alloc(n, 1, 0)
        .ok_or(MmError::OutOfMemory)?;
    for i in 0..n as u64 {
        let va = pfn_to_va(pfn + i);
        if lookup(va) & PTE_PRESENT == 0 {
            let mfn = pfn_to_mfn(pfn + i).ok_or(MmError::Invalid("pfn outside the p2m"))?;
            // SAFETY: the frame is ours and unused (just allocated); the VA is its identity slot.
            unsafe { map_frames(va, &[mfn], PAGE_RW, DOMID_SELF)? };
        }
        // SAFETY: freshly allocated and mapped writable page.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, PAGE_SIZE) };
    }
    Ok(pfn_to_va(pfn))
}

/// Return pages from [`alloc_pages`].
pub fn free_pages_at(va: usize, n: usize) {
    STATE.lock().frames.free((va / PAGE_SIZE) as u64, n);
}

/// After Xen replaced the machine frame behind `pfn` (e.g. `XENMEM_exchange` for machine-contiguous
/// DMA memory): record `new_mfn` in the p2m and m2p and remap the pfn's VA to it.
///
/// # Safety
/// `new_mfn` must now belong to this domain in place of the old frame of `pfn`.
pub unsafe fn set_pfn_frame(pfn: u64, new_mfn: u64) -> Result<(), MmError> {
    let p2m = P2M.load(Ordering::Relaxed);
    if p2m == 0 || pfn as usize >= NR_PAGES.load(Ordering::Relaxed) {
        return Err(MmError::Invalid("pfn outside the p2m"));
    }
    let req = [MmuUpdate {
        ptr: (new_mfn << 12) | MMU_MACHPHYS_UPDATE,
        val: pfn,
    }];
    // SAFETY: updates the m2p entry of a frame we own.
    let (r, _) = unsafe { hcall::mmu_update(&req, DOMID_SELF) };
    if r != 0 {
        return Err(MmError::Hypercall {
            op: "mmu_update(machphys)",
            code: r,
        });
    }
    // SAFETY: the p2m list is ours and mapped writable.
    unsafe { core::ptr::write_volatile((p2m as *mut u64).add(pfn as usize), new_mfn) };
    // SAFETY: the caller guarantees the frame is ours; the VA is the pfn's identity slot.
    let r = unsafe {
        hcall::update_va_mapping(
            pfn_to_va(pfn),
            (new_mfn << 12) | PAGE_RW,
            hcall::UVMF_INVLPG,
        )
    };
    if r != 0 {
        return Err(MmError::Hypercall {
            op: "update_va_mapping(remap pfn)",
            code: r,
        });
    }
    Ok(())
}

/// Number of page-table pages added so far (pool and fallback; diagnostics).
pub fn pt_pool_used() -> usize {
    STATE.lock().pt_pool_used
}

/// Number of page-table pages taken from the free frames (they never come back).
pub fn pt_frames_from_allocator() -> usize {
    STATE.lock().pt_from_frames
}
