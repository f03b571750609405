//! The generic shared-ring page layout of Xen `io/ring.h`.
//!
//! A ring page starts with a 64-byte header holding four free-running `RING_IDX` (u32) indices,
//! followed by an array of entries, each the size of the union of the request and response types.
//! The number of entries is the largest power of two that fits in the rest of the page. The
//! producer/consumer protocol itself lives in [`crate::ring`].

use super::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The header of a shared ring page (`struct name##_sring` without the `ring[]` array).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SringHeader {
    /// Written by the front end: requests produced.
    pub req_prod: u32,
    /// Written by the back end: "notify me when `req_prod` passes this".
    pub req_event: u32,
    /// Written by the back end: responses produced.
    pub rsp_prod: u32,
    /// Written by the front end: "notify me when `rsp_prod` passes this".
    pub rsp_event: u32,
    /// Private union (netif smartpoll etc.); unused by usbif.
    pub pvt: [u8; 4],
    /// Padding up to the 64-byte entry array.
    pub pad: [u8; 44],
}

layout!(SringHeader, size 64, req_prod @ 0, req_event @ 4, rsp_prod @ 8, rsp_event @ 12, pvt @ 16, pad @ 20);

/// Byte offset of `req_prod` in a ring page.
pub const REQ_PROD_OFFSET: usize = 0;
/// Byte offset of `req_event` in a ring page.
pub const REQ_EVENT_OFFSET: usize = 4;
/// Byte offset of `rsp_prod` in a ring page.
pub const RSP_PROD_OFFSET: usize = 8;
/// Byte offset of `rsp_event` in a ring page.
pub const RSP_EVENT_OFFSET: usize = 12;
/// Byte offset of `ring[0]` in a ring page.
pub const ENTRIES_OFFSET: usize = 64;

/// `__CONST_RING_SIZE(name, page_size)`: entries of `entry_size` bytes that fit on a ring page of
/// `page_size` bytes, rounded down to a power of two (0 if not even one fits).
pub const fn const_ring_size(page_size: usize, entry_size: usize) -> usize {
    if entry_size == 0 || page_size <= ENTRIES_OFFSET {
        return 0;
    }
    let n = (page_size - ENTRIES_OFFSET) / entry_size;
    if n == 0 {
        0
    } else {
        1usize << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// Ring size for a one-page ring of entries of `entry_size` bytes.
pub const fn page_ring_size(entry_size: usize) -> usize {
    const_ring_size(PAGE_SIZE, entry_size)
}

const _: () = assert!(page_ring_size(148) == 16);
const _: () = assert!(page_ring_size(4) == 512);
const _: () = assert!(page_ring_size(112) == 32); // blkif, a familiar anchor
const _: () = assert!(page_ring_size(5000) == 0);
