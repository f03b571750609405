//! `pvmm` (Xen PV only): the PV memory manager against the real hypervisor — page allocation with
//! on-demand mapping beyond Xen's initial mappings, p2m/m2p consistency, aliasing our own frame in
//! the I/O window with `mmu_update`, unmapping, a blocking `SCHEDOP_poll` timer wait, and, when
//! `usbdom.bar0=<hex address>` (and `usbdom.bar0size=<hex>`) is given, mapping that BAR (DOMID_IO,
//! uncached) and reading the xHCI capability registers. Xen refuses (-EPERM) any page outside the
//! iomem ranges the toolstack granted, so the size must be the BAR's.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::pv::hcall::DOMID_SELF;
use crate::pv::mm::{self, PAGE_RW, PAGE_SIZE};

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn rd(va: usize) -> u64 {
    // SAFETY: callers pass addresses of pages this test mapped and owns.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

fn wr(va: usize, v: u64) {
    // SAFETY: as `rd`.
    unsafe { core::ptr::write_volatile(va as *mut u64, v) }
}

pub fn run(cmdline: &str) -> Result<(), String> {
    if crate::exit::kind() != Some(crate::platform::Kind::XenPv) {
        return Err(String::from("pvmm needs a Xen PV domain"));
    }
    // 1. A few pages: mapped, zeroed, p2m and m2p agree.
    let va = mm::alloc_pages(3).map_err(|e| format!("alloc_pages(3): {e}"))?;
    for i in 0..3 {
        let p = va + i * PAGE_SIZE;
        let mfn = mm::va_to_mfn(p).ok_or("no mfn")?;
        check!(
            mm::mfn_to_pfn(mfn) == (p / PAGE_SIZE) as u64,
            "m2p[p2m[pfn]] != pfn for {p:#x}"
        );
        check!(
            rd(p) == 0 && rd(p + PAGE_SIZE - 8) == 0,
            "page {p:#x} not zeroed"
        );
    }
    // 2. Alias the first page in the I/O window, write through the alias, read the original.
    let alias = mm::reserve_va(1).map_err(|e| format!("reserve_va: {e}"))?;
    check!(alias >= mm::IO_WINDOW_START, "alias outside the window");
    let mfn0 = mm::va_to_mfn(va).ok_or("mfn0")?;
    // SAFETY: `alias` was just reserved for this test.
    unsafe { mm::map_frames(alias, &[mfn0], PAGE_RW, DOMID_SELF) }
        .map_err(|e| format!("map_frames alias: {e}"))?;
    wr(alias + 16, 0x1234_5678_9abc_def0);
    check!(
        rd(va + 16) == 0x1234_5678_9abc_def0,
        "write through the alias not visible"
    );
    check!(
        mm::lookup(alias) >> 12 & 0xff_ffff_ffff == mfn0,
        "alias PTE does not point at the frame"
    );
    // SAFETY: nothing uses the alias any more.
    unsafe { mm::unmap(alias, 1) }.map_err(|e| format!("unmap: {e}"))?;
    check!(mm::lookup(alias) == 0, "alias still mapped after unmap");
    mm::free_pages_at(va, 3);
    // 3. All remaining memory in 64-page chunks: forces mappings beyond Xen's initial
    //    4 MiB-aligned area (and uses the pfns below the image).
    let free = mm::free_pages();
    let pt_taken = mm::pt_frames_from_allocator();
    let mut chunks: Vec<usize> = Vec::new();
    while let Ok(c) = mm::alloc_pages(64) {
        let last = c + 63 * PAGE_SIZE;
        wr(last, c as u64);
        check!(
            rd(last) == c as u64,
            "last page of chunk {c:#x} not writable"
        );
        chunks.push(c);
    }
    let lowest = chunks.iter().copied().min().unwrap_or(0);
    let highest = chunks.iter().copied().max().unwrap_or(0) + 64 * PAGE_SIZE;
    check!(
        mm::free_pages() < 128, // two free ranges, each may keep < 64
        "{} pages left although 64-page chunks failed",
        mm::free_pages()
    );
    check!(
        highest > 4 << 20,
        "no page above the initial mapping was handed out ({highest:#x})"
    );
    log::info!(target: "pvmm", "allocated {} pages in {} chunks {lowest:#x}..{highest:#x}, page-table pool pages used {}",
        chunks.len() * 64, chunks.len(), mm::pt_pool_used());
    for c in chunks {
        mm::free_pages_at(c, 64);
    }
    // Page tables built for this test (beyond the .bss pool) keep their frames.
    let want = free - (mm::pt_frames_from_allocator() - pt_taken);
    check!(
        mm::free_pages() == want,
        "pages lost: {} free, want {want}",
        mm::free_pages()
    );
    // 4. The event loop blocks (SCHEDOP_poll with timeout) until the timer.
    let mut ev = crate::event::EventLoop::new();
    let t0 = crate::time::now_ns();
    ev.add_timer_in(20_000_000, 7);
    let e = ev.wait();
    let t1 = crate::time::now_ns();
    check!(e == Some(crate::event::Event::Timer(7)), "event {e:?}");
    check!(
        t1 >= t0 + 20_000_000,
        "woke before the deadline ({} ns)",
        t1 - t0
    );
    log::info!(target: "pvmm", "SCHEDOP_poll timer wait: {} us for a 20000 us timer", (t1 - t0) / 1000);
    // 5. Optional: map an xHCI BAR0 (I/O memory) and read its capability registers.
    if let Some(bar) = crate::cmdline::get(cmdline, "usbdom.bar0") {
        let addr =
            u64::from_str_radix(bar.trim_start_matches("0x"), 16).map_err(|_| "bad usbdom.bar0")?;
        let size = crate::cmdline::get(cmdline, "usbdom.bar0size")
            .and_then(|s| usize::from_str_radix(s.trim_start_matches("0x"), 16).ok())
            .unwrap_or(PAGE_SIZE);
        let pages = size.div_ceil(PAGE_SIZE);
        let io = mm::map_io(addr >> 12, pages, true)
            .map_err(|e| format!("map_io({addr:#x}, {pages} pages): {e}"))?;
        // SAFETY: the BAR was just mapped uncached at `io` (at least one page).
        let cap0 = unsafe { core::ptr::read_volatile(io as *const u32) };
        // SAFETY: as above.
        let hcs1 = unsafe { core::ptr::read_volatile((io + 4) as *const u32) };
        log::info!(target: "xhci", "BAR0 mapped: CAPLENGTH={:#04x} HCIVERSION={:#06x} HCSPARAMS1={hcs1:#010x} (slots {}, ports {})",
            cap0 as u8, cap0 >> 16, hcs1 & 0xff, hcs1 >> 24);
        check!(
            cap0 as u8 >= 0x20 && cap0 >> 16 == 0x0100,
            "xHCI capability registers insane: {cap0:#x}"
        );
    }
    Ok(())
}
