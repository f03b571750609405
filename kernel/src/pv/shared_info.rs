//! The `shared_info` page (`include/public/xen.h`, x86_64 layout): vCPU 0's `vcpu_info` (upcall
//! mask, pending selector, `vcpu_time_info`) and the 2-level event-channel pending/mask bitmaps.
//! Mapped once at boot over a reserved `.bss` page (see `boot::shared_info_page_addr`). The page is
//! written by Xen concurrently: every access is volatile or atomic.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

const VCPU0_UPCALL_MASK: usize = 1;
/// `vcpu_info.arch.cr2` of vCPU 0.
const VCPU0_CR2: usize = 16;
/// `vcpu_info.time` (struct vcpu_time_info) of vCPU 0.
const VCPU0_TIME: usize = 32;
const EVTCHN_PENDING: usize = 2048;
const EVTCHN_MASK: usize = 2560;
/// Number of 2-level event channels on x86_64 (64 × 64).
pub const NR_EVENT_CHANNELS: u32 = 4096;

/// Snapshot of `vcpu_time_info` (version, tsc_timestamp, system_time, mul, shift).
#[derive(Debug, Clone, Copy, Default)]
pub struct VcpuTime {
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
}

impl VcpuTime {
    /// Xen system time (ns) at TSC value `tsc` (`xen.h`: scale the TSC delta by shift, then by
    /// mul / 2^32).
    pub fn system_time_at(&self, tsc: u64) -> u64 {
        let mut delta = tsc.wrapping_sub(self.tsc_timestamp);
        if self.tsc_shift >= 0 {
            delta <<= self.tsc_shift as u32;
        } else {
            delta >>= (-self.tsc_shift) as u32;
        }
        let ns = ((delta as u128 * self.tsc_to_system_mul as u128) >> 32) as u64;
        self.system_time.wrapping_add(ns)
    }
}

/// Accessor for the mapped shared-info page.
#[derive(Clone, Copy)]
pub struct SharedInfo {
    va: usize,
}

impl SharedInfo {
    /// # Safety
    /// `va` maps this domain's shared-info frame for the rest of the program.
    pub const unsafe fn new(va: usize) -> Self {
        SharedInfo { va }
    }

    fn byte(&self, off: usize) -> &AtomicU8 {
        // SAFETY: `off` is a fixed offset inside the mapped page (constructor contract); atomics
        // are the right tool for memory Xen writes concurrently.
        unsafe { &*((self.va + off) as *const AtomicU8) }
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off < 4096);
        // SAFETY: as `byte`, 8-byte aligned.
        unsafe { &*((self.va + off) as *const AtomicU64) }
    }

    fn rd32(&self, off: usize) -> u32 {
        // SAFETY: inside the mapped page.
        unsafe { core::ptr::read_volatile((self.va + off) as *const u32) }
    }

    fn rd64(&self, off: usize) -> u64 {
        // SAFETY: inside the mapped page.
        unsafe { core::ptr::read_volatile((self.va + off) as *const u64) }
    }

    /// vCPU 0's `arch.cr2`: the faulting address of the last page fault Xen bounced to us.
    pub fn vcpu0_cr2(&self) -> u64 {
        self.rd64(VCPU0_CR2)
    }

    /// Mask event upcalls on vCPU 0 (we never take upcalls; SCHEDOP_poll works while masked).
    pub fn mask_upcalls(&self) {
        self.byte(VCPU0_UPCALL_MASK).store(1, Ordering::SeqCst);
    }

    /// Consistent snapshot of vCPU 0's time info (seqlock on `version`: odd = being updated).
    pub fn vcpu_time(&self) -> VcpuTime {
        loop {
            let v1 = self.rd32(VCPU0_TIME);
            core::sync::atomic::fence(Ordering::Acquire);
            let t = VcpuTime {
                tsc_timestamp: self.rd64(VCPU0_TIME + 8),
                system_time: self.rd64(VCPU0_TIME + 16),
                tsc_to_system_mul: self.rd32(VCPU0_TIME + 24),
                tsc_shift: self.rd32(VCPU0_TIME + 28) as u8 as i8,
            };
            core::sync::atomic::fence(Ordering::Acquire);
            let v2 = self.rd32(VCPU0_TIME);
            if v1 == v2 && v1 & 1 == 0 {
                return t;
            }
            core::hint::spin_loop();
        }
    }

    /// Whether event channel `port` is pending; clears it if so (the event is then ours).
    pub fn test_and_clear_pending(&self, port: u32) -> bool {
        if port >= NR_EVENT_CHANNELS {
            return false;
        }
        let w = self.word(EVTCHN_PENDING + (port as usize / 64) * 8);
        let bit = 1u64 << (port % 64);
        w.fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }

    /// Whether event channel `port` is pending (not cleared).
    pub fn is_pending(&self, port: u32) -> bool {
        if port >= NR_EVENT_CHANNELS {
            return false;
        }
        let w = self.word(EVTCHN_PENDING + (port as usize / 64) * 8);
        w.load(Ordering::SeqCst) & (1u64 << (port % 64)) != 0
    }

    /// Set or clear the mask bit of `port` (a masked port still wakes SCHEDOP_poll).
    pub fn set_masked(&self, port: u32, masked: bool) {
        if port >= NR_EVENT_CHANNELS {
            return;
        }
        let w = self.word(EVTCHN_MASK + (port as usize / 64) * 8);
        let bit = 1u64 << (port % 64);
        if masked {
            w.fetch_or(bit, Ordering::SeqCst);
        } else {
            w.fetch_and(!bit, Ordering::SeqCst);
        }
    }
}
