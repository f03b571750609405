//! QEMU-tier self-tests: `usbdom.selftest=<name>` on the kernel command line runs one test instead
//! of the normal service, prints `SELFTEST PASS <name>` or `SELFTEST FAIL <name>: <why>` and exits
//! QEMU through `isa-debug-exit` (iobase 0xf4: 0x10 = pass → exit status 33, 0x11 = fail → 35).
//! A panic during a self-test also prints the FAIL line (see `crate::panic`).
//!
//! ## Adding a self-test
//! Add `mod mytest;` and one `"mytest" => mytest::run(platform),` line to [`dispatch`]; `run`
//! has the signature `fn run<P: Platform>(platform: &P) -> Result<(), String>`.
//!
//! ## What a self-test gets: [`crate::platform::Platform`]
//! * `platform.functions()` — every PCI function (`PciFunction { addr, id, config, bars, .. }`);
//!   `crate::platform::pci::is_supported_host(&f.id)` filters UHCI/xHCI.
//! * `platform.map_bar(f, n)` → `Regs` (implements `hal::RegisterIo`: MMIO or I/O ports).
//! * `platform.bind_interrupt(f)` → `P::Irq` (`hal::Interrupt`; polled under PVH).
//! * `platform.dma()` → `P::Dma` (`hal::DmaAlloc`: zeroed buffers with bus addresses).
//! * `platform.clock()` → `hal::Clock` (`now_ns`, `delay_us`).
//! * `crate::event::EventLoop` for timers; `log::info!(target: "...", ..)` for output.
//!
//! The same code runs on the Xen platform, so a test written against the trait also runs as a PV
//! domU (exit is then a domain shutdown: poweroff for pass, crash for fail).

pub mod probe;

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::platform::Platform;

/// The running self-test's name (for the panic handler).
static CURRENT: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);

/// The self-test currently running, if any.
pub fn current() -> Option<&'static str> {
    let p = CURRENT.load(Ordering::SeqCst);
    if p.is_null() {
        return None;
    }
    // SAFETY: set from a `&'static str` in `run`.
    let bytes = unsafe { core::slice::from_raw_parts(p, CURRENT_LEN.load(Ordering::SeqCst)) };
    core::str::from_utf8(bytes).ok()
}

fn dispatch<P: Platform>(name: &str, platform: &P) -> Result<(), String> {
    match name {
        "probe" => probe::run(platform),
        _ => Err(format!("unknown self-test '{name}' (known: probe)")),
    }
}

/// Run self-test `name` and exit with its verdict.
pub fn run<P: Platform>(name: &'static str, platform: &P) -> ! {
    CURRENT_LEN.store(name.len(), Ordering::SeqCst);
    CURRENT.store(name.as_ptr() as *mut u8, Ordering::SeqCst);
    log::info!(target: "selftest", "running self-test {name} on {}", platform.kind().name());
    let result = dispatch(name, platform);
    match result {
        Ok(()) => {
            log::info!(target: "selftest", "SELFTEST PASS {name}");
            crate::exit::exit(crate::exit::Exit::Pass)
        }
        Err(why) => {
            log::error!(target: "selftest", "SELFTEST FAIL {name}: {why}");
            crate::exit::exit(crate::exit::Exit::Fail)
        }
    }
}
