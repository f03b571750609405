//! QEMU-tier self-tests: `usbdom.selftest=<name>` on the kernel command line runs one test instead
//! of the normal service, prints `SELFTEST PASS <name>` or `SELFTEST FAIL <name>: <why>` and exits
//! QEMU through `isa-debug-exit` (iobase 0xf4: 0x10 = pass → exit status 33, 0x11 = fail → 35).
//! A panic during a self-test also prints the FAIL line (see `crate::panic`).
//!
//! ## Adding a self-test
//! Add `pub mod mytest;` and one `"mytest" => mytest::run(platform),` line to [`dispatch`]; `run`
//! has the signature `fn run<P: Platform>(platform: &P) -> Result<(), String>`. Tests of the kernel
//! core alone (no platform) go in `dispatch_core` (`unit`, `pvmm`, and `panic` / `fault` / `null`, which
//! must end in `PANIC at ...` + `SELFTEST FAIL <name>: panic` + the crash exit, status 35).
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

pub mod bench;
pub mod bot;
pub mod common;
pub mod probe;
pub mod pvmm;
pub mod uhci;
pub mod unit;
pub mod xhci;

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

/// Self-tests that need no platform (kernel core only). `None`: not one of them.
fn dispatch_core(name: &str, cmdline: &str) -> Option<Result<(), String>> {
    Some(match name {
        "unit" => unit::run().and_then(|()| {
            if crate::exit::kind() == Some(crate::platform::Kind::Pvh) {
                unit::pvh_dma()
            } else {
                Ok(())
            }
        }),
        "pvmm" => pvmm::run(cmdline),
        // Expected to FAIL: they prove the panic path (PANIC line, FAIL line, crash exit).
        "panic" => panic!("deliberate panic (self-test)"),
        "fault" => {
            // A canonical address nothing maps (PVH maps 0..4 GiB; PV maps RAM and the I/O window).
            // SAFETY: not sound on purpose: the read must fault; the exception handler panics.
            let v = unsafe { core::ptr::read_volatile(0x4000_0000_0000 as *const u64) };
            Err(format!(
                "read of an unmapped address returned {v:#x} instead of faulting"
            ))
        }
        "null" => {
            // SAFETY: not sound on purpose: page 0 is unmapped on both platforms; must fault.
            let v = unsafe { core::ptr::read_volatile(8 as *const u64) };
            Err(format!(
                "read of address 8 returned {v:#x} instead of faulting"
            ))
        }
        _ => return None,
    })
}

fn dispatch<P: Platform>(name: &str, cmdline: &str, platform: &P) -> Result<(), String> {
    if let Some(r) = dispatch_core(name, cmdline) {
        return r;
    }
    match name {
        "bench" => bench::run(platform, cmdline),
        "probe" => probe::run(platform),
        "uhci" => uhci::run(platform, cmdline),
        "xhci" => xhci::run(platform, cmdline),
        _ => Err(format!("unknown self-test '{name}'")),
    }
}

fn start(name: &'static str) {
    CURRENT_LEN.store(name.len(), Ordering::SeqCst);
    CURRENT.store(name.as_ptr() as *mut u8, Ordering::SeqCst);
    let kind = crate::exit::kind().map(|k| k.name()).unwrap_or("?");
    log::info!(target: "selftest", "running self-test {name} on {kind}");
}

/// Run self-test `name` and exit with its verdict. Self-tests read their options from the boot
/// command line (`crate::cmdline::current()`).
pub fn run<P: Platform>(name: &'static str, platform: &P) -> ! {
    start(name);
    finish(name, dispatch(name, crate::cmdline::current(), platform))
}

/// Whether `name` is a self-test that needs no platform (`unit`, `pvmm`).
pub fn is_core(name: &str) -> bool {
    matches!(name, "unit" | "pvmm" | "panic" | "fault" | "null")
}

/// Run a self-test that needs no platform (kernel core only).
pub fn run_core(name: &'static str) -> ! {
    start(name);
    let r = dispatch_core(name, crate::cmdline::current()).unwrap_or_else(|| {
        Err(format!(
            "self-test '{name}' needs a platform, none is available here"
        ))
    });
    finish(name, r)
}

fn finish(name: &str, result: Result<(), String>) -> ! {
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
