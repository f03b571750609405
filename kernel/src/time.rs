//! Monotonic time.
//!
//! * Xen PV: Xen system time (ns since boot of the host) from vCPU 0's `vcpu_time_info` in
//!   `shared_info`, extrapolated with the TSC (`include/public/xen.h`, "vcpu_time_info").
//! * PVH: the TSC, calibrated once against PIT channel 2 (8254, 1.193182 MHz): smallest of three ~35 ms windows.
//!
//! `now_ns()` is relative to the moment time was initialised, so log timestamps start near 0.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::arch;
use crate::pv::shared_info::SharedInfo;

const SRC_NONE: u8 = 0;
const SRC_TSC: u8 = 1;
const SRC_XEN: u8 = 2;

static SOURCE: AtomicU8 = AtomicU8::new(SRC_NONE);
/// TSC: ticks per ms is stored as a 32.32 fixed-point ns-per-tick multiplier.
static TSC_NS_MUL: AtomicU64 = AtomicU64::new(0);
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
/// Raw source value at init (TSC ticks or Xen system ns).
static EPOCH: AtomicU64 = AtomicU64::new(0);
static SHARED_INFO_VA: AtomicU64 = AtomicU64::new(0);

/// Use Xen system time from the mapped shared-info page.
pub fn init_xen(si: SharedInfo, si_va: usize) {
    SHARED_INFO_VA.store(si_va as u64, Ordering::SeqCst);
    let t = si.vcpu_time();
    EPOCH.store(t.system_time_at(arch::rdtsc()), Ordering::SeqCst);
    SOURCE.store(SRC_XEN, Ordering::SeqCst);
}

/// Xen system time in ns (absolute, as `SCHEDOP_poll` timeouts want it). 0 if not on Xen.
pub fn xen_system_time_ns() -> u64 {
    if SOURCE.load(Ordering::Relaxed) != SRC_XEN {
        return 0;
    }
    // SAFETY: set in `init_xen` from a mapped shared-info page that stays mapped.
    let si = unsafe { SharedInfo::new(SHARED_INFO_VA.load(Ordering::Relaxed) as usize) };
    si.vcpu_time().system_time_at(arch::rdtsc())
}

const PIT_HZ: u64 = 1_193_182;

/// Latch and read PIT channel 2's current count.
fn pit2_count() -> u16 {
    arch::outb(0x43, 0x80); // counter latch, channel 2
    let lo = arch::inb(0x42) as u16;
    let hi = arch::inb(0x42) as u16;
    lo | hi << 8
}

/// A (TSC, PIT count) pair read as close together as possible: of several tries, the one whose
/// bracketing TSC reads are nearest (a vCPU descheduled in between shows as a wide bracket).
fn pit2_sample() -> (u64, u16) {
    let mut best = (u64::MAX, 0u64, 0u16);
    for _ in 0..16 {
        let a = arch::rdtsc();
        let c = pit2_count();
        let b = arch::rdtsc();
        let w = b.wrapping_sub(a);
        if w < best.0 {
            best = (w, a + w / 2, c);
        }
    }
    (best.1, best.2)
}

/// Measure the TSC frequency against PIT channel 2 (PVH only; port I/O). Returns kHz.
///
/// Channel 2 counts down from 0xffff (mode 0, ~55 ms); the TSC is sampled together with the
/// count at both ends of a ~35 ms window. Only the two bracketed samples matter, so a loaded host
/// that deschedules the vCPU (QEMU TCG on shared cores) does not skew the result.
fn calibrate_tsc_pit() -> Option<u64> {
    let p61 = arch::inb(0x61);
    arch::outb(0x61, (p61 & !0x02) | 0x01); // gate channel 2 on, speaker off
    let mut best: Option<u64> = None;
    let mut good = 0;
    for _ in 0..8 {
        arch::outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
        arch::outb(0x42, 0xff);
        arch::outb(0x42, 0xff);
        let (t1, c1) = pit2_sample();
        let mut spins = 0u32;
        while c1.wrapping_sub(pit2_count()) < 42_000 && spins < 10_000_000 {
            spins += 1;
        }
        let (t2, c2) = pit2_sample();
        // A wrap past zero (descheduled for longer than the remaining count) shows as c2 > c1;
        // a full wrap cannot be seen in the counts but only ever inflates the result, so the
        // smallest of three windows is kept.
        if c2 < c1 && c1 - c2 >= 40_000 && t2 > t1 {
            let khz = (t2 - t1) * PIT_HZ / (c1 - c2) as u64 / 1000;
            best = Some(best.map_or(khz, |b| b.min(khz)));
            good += 1;
            if good == 3 {
                break;
            }
        }
    }
    arch::outb(0x61, p61);
    best
}

/// Calibrate the TSC and use it (PVH). Returns the frequency in kHz.
pub fn init_tsc() -> u64 {
    let khz = calibrate_tsc_pit()
        .filter(|&k| k > 1000)
        .unwrap_or_else(|| {
            log::warn!(target: "time", "PIT calibration failed: assuming a 1 GHz TSC");
            1_000_000
        });
    TSC_KHZ.store(khz, Ordering::SeqCst);
    // ns per tick in 32.32 fixed point: 1e6 / khz.
    TSC_NS_MUL.store((1_000_000u64 << 32) / khz, Ordering::SeqCst);
    EPOCH.store(arch::rdtsc(), Ordering::SeqCst);
    SOURCE.store(SRC_TSC, Ordering::SeqCst);
    khz
}

/// TSC frequency in kHz if the TSC source is used.
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Nanoseconds since time was initialised (0 before).
pub fn now_ns() -> u64 {
    match SOURCE.load(Ordering::Relaxed) {
        SRC_TSC => {
            let d = arch::rdtsc().wrapping_sub(EPOCH.load(Ordering::Relaxed));
            ((d as u128 * TSC_NS_MUL.load(Ordering::Relaxed) as u128) >> 32) as u64
        }
        SRC_XEN => xen_system_time_ns().saturating_sub(EPOCH.load(Ordering::Relaxed)),
        _ => 0,
    }
}

/// Convert a kernel-relative deadline into absolute Xen system time (for `SCHEDOP_poll`).
pub fn to_xen_system_time(deadline_ns: u64) -> u64 {
    deadline_ns.saturating_add(EPOCH.load(Ordering::Relaxed))
}

/// Busy-wait at least `us` microseconds.
pub fn spin_us(us: u64) {
    let end = now_ns().saturating_add(us.saturating_mul(1000));
    while now_ns() < end {
        arch::pause();
    }
}

/// The kernel clock as the drivers see it (`hal::Clock`).
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelClock;

impl hal::Clock for KernelClock {
    fn now_ns(&self) -> u64 {
        now_ns()
    }
    fn delay_us(&self, us: u64) {
        spin_us(us)
    }
}
