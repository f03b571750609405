//! The 2-level event-channel bitmaps in `shared_info` (Xen `xen.h`, x86_64: `evtchn_pending[64]`
//! at byte 2048, `evtchn_mask[64]` at 2560, one bit per port). Xen sets pending bits concurrently,
//! so every access is atomic.

use crate::abi::Port;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::abi::shared_info::{
    EVTCHN_MASK_OFFSET as EVTCHN_MASK, EVTCHN_PENDING_OFFSET as EVTCHN_PENDING,
};

/// Ports of the 2-level ABI on x86_64.
pub const NR_PORTS: u32 = crate::abi::evtchn::NR_EVENT_CHANNELS_2L;

/// Access to the event bitmaps of our mapped `shared_info` page.
#[derive(Debug, Clone, Copy)]
pub struct EventBits {
    shared_info: NonNull<u8>,
}

impl EventBits {
    /// # Safety
    /// `shared_info` maps this domain's shared-info page for the rest of the program.
    pub unsafe fn new(shared_info: NonNull<u8>) -> EventBits {
        EventBits { shared_info }
    }

    fn word(&self, base: usize, port: u32) -> &AtomicU64 {
        let off = base + (port as usize / 64) * 8;
        // SAFETY: `port < NR_PORTS` (callers check), so `off + 8 <= 3072 < 4096`: inside the mapped
        // page, 8-byte aligned; Xen writes these words concurrently, hence atomics.
        unsafe { AtomicU64::from_ptr(self.shared_info.as_ptr().add(off) as *mut u64) }
    }

    /// If `port` is pending, clear the bit and return true.
    pub fn test_and_clear(&self, port: Port) -> bool {
        if port.0 >= NR_PORTS {
            return false;
        }
        let bit = 1u64 << (port.0 % 64);
        self.word(EVTCHN_PENDING, port.0)
            .fetch_and(!bit, Ordering::SeqCst)
            & bit
            != 0
    }

    pub fn is_pending(&self, port: Port) -> bool {
        port.0 < NR_PORTS
            && self.word(EVTCHN_PENDING, port.0).load(Ordering::SeqCst) & (1u64 << (port.0 % 64))
                != 0
    }

    pub fn is_masked(&self, port: Port) -> bool {
        port.0 < NR_PORTS
            && self.word(EVTCHN_MASK, port.0).load(Ordering::SeqCst) & (1u64 << (port.0 % 64)) != 0
    }

    /// Set the mask bit of `port` (unmasking goes through `EVTCHNOP_unmask`, which re-raises a
    /// pending event).
    pub fn mask(&self, port: Port) {
        if port.0 < NR_PORTS {
            self.word(EVTCHN_MASK, port.0)
                .fetch_or(1u64 << (port.0 % 64), Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_bits_are_per_port_and_cleared_once() {
        let mut page = alloc::vec![0u64; 512];
        page[2048 / 8 + 1] = 1 << 3; // port 67 pending
        page[2560 / 8 + 1] = 1 << 4; // port 68 masked
        page[2048 / 8] = 1 << 5; // port 5 pending
        let p = NonNull::new(page.as_mut_ptr() as *mut u8).unwrap();
        // SAFETY: `page` outlives `ev` and is only accessed through it below.
        let ev = unsafe { EventBits::new(p) };
        assert!(ev.is_pending(Port(67)));
        assert!(!ev.is_pending(Port(66)));
        assert!(ev.is_masked(Port(68)));
        assert!(!ev.is_masked(Port(67)));
        assert!(ev.test_and_clear(Port(67)));
        assert!(!ev.test_and_clear(Port(67)));
        assert!(ev.is_pending(Port(5)));
        ev.mask(Port(5));
        assert!(ev.is_masked(Port(5)));
        assert!(!ev.test_and_clear(Port(NR_PORTS)));
        assert!(!ev.is_pending(Port(u32::MAX)));
        assert_eq!(page[2048 / 8 + 1], 0);
        assert_eq!(page[2560 / 8], 1 << 5);
    }
}
