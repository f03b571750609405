//! The production image's stand-in for the self-tests (built with the `selftest` feature only,
//! see `kernel/src/selftest/`): a `usbdom.selftest=<name>` on the command line of an image
//! without them is refused with one line and a failing exit, instead of starting the service.

use crate::exit::{self, Exit};

/// No self-test ever runs here.
pub fn current() -> Option<&'static str> {
    None
}

/// Every self-test name is handled at once, before any platform is set up.
pub fn is_core(_name: &str) -> bool {
    true
}

pub fn run_core(name: &'static str) -> ! {
    log::error!(target: "selftest", "SELFTEST FAIL {name}: this usbdom image was built without self-tests (the test image is `cargo build -p usbdom --features selftest`)");
    exit::exit(Exit::Fail)
}

pub fn run<P>(name: &'static str, _platform: &P) -> ! {
    run_core(name)
}
