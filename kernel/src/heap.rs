//! The kernel heap: `talc` over a static arena in `.bss` (mapped by `boot/`'s identity map under PVH
//! and by Xen's initial page tables under PV, so it needs no page-table work). Sized for a domain
//! with `memory=8`.

use hermit_sync::RawSpinMutex;
use talc::{ClaimOnOom, Span, Talc, Talck};

/// Heap size in bytes.
pub const HEAP_SIZE: usize = 1024 * 1024;

static mut ARENA: [u8; HEAP_SIZE] = [0; HEAP_SIZE];

#[global_allocator]
static ALLOCATOR: Talck<RawSpinMutex, ClaimOnOom> = Talc::new(
    // SAFETY: the arena is used by nothing but the allocator; only its address is taken here.
    unsafe { ClaimOnOom::new(Span::from_array(core::ptr::addr_of!(ARENA).cast_mut())) },
)
.lock();
