//! The kernel heap: `talc` over a static arena in `.bss` (mapped by `boot/`'s identity map under PVH
//! and by Xen's initial page tables under PV), growing on demand with pages from the platform's
//! page allocator (`pv::mm::alloc_pages` on Xen, the identity page pool under PVH). The arena is
//! small so a `memory=8` domain keeps most of its pages for DMA until the heap needs them.

use core::alloc::Layout;
use core::sync::atomic::{AtomicUsize, Ordering};

use hermit_sync::RawSpinMutex;
use talc::{OomHandler, Span, Talc, Talck};

use crate::platform::Kind;

/// Size of the static arena in bytes.
pub const ARENA_SIZE: usize = 512 * 1024;
/// Minimum growth step.
const GROW_BYTES: usize = 256 * 1024;
const PAGE: usize = 4096;

static mut ARENA: [u8; ARENA_SIZE] = [0; ARENA_SIZE];
static GROWN: AtomicUsize = AtomicUsize::new(0);

/// Claims the static arena first, then pages from the platform.
pub struct GrowOnOom {
    arena: Span,
}

impl OomHandler for GrowOnOom {
    fn handle_oom(talc: &mut Talc<Self>, layout: Layout) -> Result<(), ()> {
        if !talc.oom_handler.arena.is_empty() {
            let arena = talc.oom_handler.arena;
            talc.oom_handler.arena = Span::empty();
            // SAFETY: the static arena is used by nothing but the allocator.
            unsafe { talc.claim(arena)? };
            return Ok(());
        }
        let bytes = (layout.size() + layout.align() + 2 * PAGE).max(GROW_BYTES);
        let pages = bytes.div_ceil(PAGE);
        let va = match crate::exit::kind() {
            Some(Kind::XenPv) => crate::pv::mm::alloc_pages(pages).map_err(|_| ())?,
            Some(Kind::Pvh) => crate::platform::pvh::alloc_pool_pages(pages).ok_or(())?,
            None => return Err(()),
        };
        // SAFETY: the pages were just allocated for the heap alone, are mapped writable and are
        // never returned to their allocator.
        unsafe { talc.claim(Span::from_base_size(va as *mut u8, pages * PAGE))? };
        GROWN.fetch_add(pages * PAGE, Ordering::Relaxed);
        Ok(())
    }
}

#[global_allocator]
static ALLOCATOR: Talck<RawSpinMutex, GrowOnOom> = Talc::new(GrowOnOom {
    arena: Span::from_array(core::ptr::addr_of!(ARENA).cast_mut()),
})
.lock();

/// Bytes the heap has grown by beyond the static arena.
#[cfg_attr(not(feature = "selftest"), allow(dead_code))] // self-tests only
pub fn grown_bytes() -> usize {
    GROWN.load(Ordering::Relaxed)
}
