//! Ending the run: a Xen domain shuts down (`SCHEDOP_shutdown`); under PVH QEMU exits through
//! `isa-debug-exit` (port 0xf4, status = value << 1 | 1), falling back to halting the CPU when the
//! device is absent.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::platform::Kind;
use crate::pv::hcall::{self, ShutdownReason};

const KIND_UNKNOWN: u8 = 0;
const KIND_PVH: u8 = 1;
const KIND_XEN: u8 = 2;
static KIND: AtomicU8 = AtomicU8::new(KIND_UNKNOWN);

/// Record which platform we booted on (first thing after entry).
pub fn set_kind(k: Kind) {
    KIND.store(
        match k {
            Kind::Pvh => KIND_PVH,
            Kind::XenPv => KIND_XEN,
        },
        Ordering::SeqCst,
    );
}

/// The platform we booted on, if known.
pub fn kind() -> Option<Kind> {
    match KIND.load(Ordering::SeqCst) {
        KIND_PVH => Some(Kind::Pvh),
        KIND_XEN => Some(Kind::XenPv),
        _ => None,
    }
}

/// How the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Self-test passed (QEMU status 33).
    #[cfg_attr(not(feature = "selftest"), allow(dead_code))] // self-tests only
    Pass,
    /// Self-test failed (QEMU status 35).
    Fail,
    /// Crash / panic (QEMU status 35, Xen SHUTDOWN_crash).
    Crash,
    /// Normal power-off (Xen `xl shutdown`; QEMU status 33).
    Poweroff,
}

/// isa-debug-exit port and values.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
pub const DEBUG_EXIT_PASS: u32 = 0x10;
pub const DEBUG_EXIT_FAIL: u32 = 0x11;

/// End the run.
pub fn exit(e: Exit) -> ! {
    match kind() {
        Some(Kind::XenPv) => {
            let reason = match e {
                Exit::Pass | Exit::Poweroff => ShutdownReason::Poweroff,
                Exit::Fail | Exit::Crash => ShutdownReason::Crash,
            };
            loop {
                hcall::shutdown(reason);
                hcall::sched_yield();
            }
        }
        _ => {
            let v = match e {
                Exit::Pass | Exit::Poweroff => DEBUG_EXIT_PASS,
                Exit::Fail | Exit::Crash => DEBUG_EXIT_FAIL,
            };
            crate::arch::outl(DEBUG_EXIT_PORT, v);
            crate::arch::halt_forever()
        }
    }
}
