//! The kernel console: where every log line goes.
//!
//! Under PVH it is the COM1 16550 UART (port 0x3f8). In a Xen PV domU the only console is the PV
//! console ring (`start_info.console.domU`, `include/public/io/console.h`), drained by xenconsoled
//! in dom0. Before the ring is known (and for the panic path if the ring is wedged) output falls
//! back to `HYPERVISOR_console_io`, which lands in `xl dmesg` when Xen allows it.

pub mod serial;
pub mod xencons;

use hermit_sync::SpinMutex;

enum Sink {
    /// Nothing set up yet: output is dropped (PVH) — the first thing `main` does is pick a sink.
    None,
    Serial(serial::Com1),
    Xen(xencons::XenConsole),
    /// Xen, ring not mapped yet: `console_io` only.
    XenDebug,
}

static CONSOLE: SpinMutex<Sink> = SpinMutex::new(Sink::None);

/// Use COM1 (PVH).
pub fn init_serial() {
    *CONSOLE.lock() = Sink::Serial(serial::Com1::init());
}

/// Early Xen output through `console_io` until [`init_xen_ring`].
pub fn init_xen_early() {
    *CONSOLE.lock() = Sink::XenDebug;
}

/// Use the PV console ring mapped at `ring_va`, notifying event channel `port`.
///
/// # Safety
/// `ring_va` must be the mapped, page-sized console ring page of this domain.
pub unsafe fn init_xen_ring(ring_va: usize, port: u32) {
    // SAFETY: forwarded from the caller.
    let c = unsafe { xencons::XenConsole::new(ring_va, port) };
    *CONSOLE.lock() = Sink::Xen(c);
}

fn write_to(sink: &mut Sink, s: &str) {
    match sink {
        Sink::None => {}
        Sink::Serial(c) => c.write_str(s),
        Sink::Xen(c) => c.write_str(s),
        Sink::XenDebug => crate::pv::hcall::console_io_write(s.as_bytes()),
    }
}

/// Write a string to the console.
pub fn write_str(s: &str) {
    write_to(&mut CONSOLE.lock(), s);
}

/// Write from the panic handler: does not wait for a lock another context may hold forever.
pub fn write_str_panic(s: &str) {
    if let Some(mut g) = CONSOLE.try_lock() {
        write_to(&mut g, s);
    } else {
        // SAFETY-free fallback: the lock holder is this same CPU (single vCPU) and will never run
        // again, so the sink may be half-way through a line; write directly without the lock.
        // We do that by forcing the lock open: on one vCPU nothing else can be inside.
        // SAFETY: single vCPU, the holder was interrupted by the panic and never resumes.
        unsafe { CONSOLE.force_unlock() };
        write_to(&mut CONSOLE.lock(), s);
    }
}

/// A `core::fmt::Write` adapter over the console.
pub struct Writer;

impl core::fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write_str(s);
        Ok(())
    }
}
