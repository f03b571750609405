//! The panic handler: one `PANIC at file:line: message` line, the self-test FAIL line if a
//! self-test was running, then the domain shuts down as crashed (Xen `SHUTDOWN_crash`) or QEMU
//! exits with the fail code through `isa-debug-exit`.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

static PANICKING: AtomicBool = AtomicBool::new(false);

struct PanicWriter;

impl Write for PanicWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        crate::console::write_str_panic(s);
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        // Panic while panicking: no more output, just stop.
        crate::exit::exit(crate::exit::Exit::Crash);
    }
    let ns = crate::time::now_ns();
    let mut w = PanicWriter;
    let _ = write!(
        w,
        "[{:5}.{:06}] ERROR panic: PANIC at ",
        ns / 1_000_000_000,
        (ns / 1000) % 1_000_000
    );
    match info.location() {
        Some(l) => {
            let _ = write!(w, "{}:{}: ", l.file(), l.line());
        }
        None => {
            let _ = write!(w, "<unknown>: ");
        }
    }
    let _ = writeln!(w, "{}", info.message());
    if let Some(name) = crate::selftest::current() {
        let _ = writeln!(
            w,
            "[{:5}.{:06}] ERROR selftest: SELFTEST FAIL {name}: panic",
            ns / 1_000_000_000,
            (ns / 1000) % 1_000_000
        );
    }
    crate::exit::exit(crate::exit::Exit::Crash)
}
