//! The `shared_info` page (`include/public/xen.h`, x86_64 layout): vCPU 0's `vcpu_info` (upcall
//! mask, `arch.cr2`, `vcpu_time_info`) and the 2-level event-channel pending bitmap.
//! Mapped once at boot over a reserved `.bss` page (see `boot::shared_info_page_addr`). The page is
//! written by Xen concurrently: every access is volatile or atomic. Field offsets come from
//! xenidc's layout-checked ABI structs ([`xenidc::abi::shared_info`]); the event bitmaps are
//! accessed through xenidc's [`EventBits`].

use core::mem::offset_of;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};
use xenidc::abi::shared_info::{SharedInfo as SharedInfoAbi, VcpuInfo, VcpuTimeInfo};
use xenidc::abi::Port;
use xenidc::xen::events::EventBits;

/// `vcpu_info` of vCPU 0 (the first element of `shared_info.vcpu_info`).
const VCPU0: usize = offset_of!(SharedInfoAbi, vcpu_info);
const VCPU0_UPCALL_MASK: usize = VCPU0 + offset_of!(VcpuInfo, evtchn_upcall_mask);
/// `vcpu_info.arch.cr2` of vCPU 0.
const VCPU0_CR2: usize = VCPU0 + offset_of!(VcpuInfo, arch_cr2);
/// `vcpu_info.time` (struct vcpu_time_info) of vCPU 0.
const VCPU0_TIME: usize = VCPU0 + offset_of!(VcpuInfo, time);
const TIME_VERSION: usize = VCPU0_TIME + offset_of!(VcpuTimeInfo, version);
const TIME_TSC_TIMESTAMP: usize = VCPU0_TIME + offset_of!(VcpuTimeInfo, tsc_timestamp);
const TIME_SYSTEM_TIME: usize = VCPU0_TIME + offset_of!(VcpuTimeInfo, system_time);
const TIME_MUL: usize = VCPU0_TIME + offset_of!(VcpuTimeInfo, tsc_to_system_mul);
/// The 4-byte word holding `tsc_shift` in its low byte (little endian).
const TIME_SHIFT: usize = VCPU0_TIME + offset_of!(VcpuTimeInfo, tsc_shift);

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

    fn events(&self) -> Option<EventBits> {
        let page = NonNull::new(self.va as *mut u8)?;
        // SAFETY: constructor contract: `va` maps the shared-info page for the rest of the program.
        Some(unsafe { EventBits::new(page) })
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
            let v1 = self.rd32(TIME_VERSION);
            core::sync::atomic::fence(Ordering::Acquire);
            let t = VcpuTime {
                tsc_timestamp: self.rd64(TIME_TSC_TIMESTAMP),
                system_time: self.rd64(TIME_SYSTEM_TIME),
                tsc_to_system_mul: self.rd32(TIME_MUL),
                tsc_shift: self.rd32(TIME_SHIFT) as u8 as i8,
            };
            core::sync::atomic::fence(Ordering::Acquire);
            let v2 = self.rd32(TIME_VERSION);
            if v1 == v2 && v1 & 1 == 0 {
                return t;
            }
            core::hint::spin_loop();
        }
    }

    /// Whether event channel `port` is pending; clears it if so (the event is then ours).
    /// Ports outside the 2-level ABI are never pending.
    pub fn test_and_clear_pending(&self, port: u32) -> bool {
        self.events()
            .is_some_and(|ev| ev.test_and_clear(Port(port)))
    }
}
