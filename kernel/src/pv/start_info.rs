//! `start_info` (x86_64, `include/public/xen.h`): what Xen tells a PV guest at entry (`%rsi`).
//! The layout (and its compile-time offset checks) is xenidc's ABI struct
//! [`xenidc::abi::start_info::StartInfo`]; this module only holds what needs the kernel: copying
//! the structure out of the page Xen left it in.

pub use xenidc::abi::start_info::StartInfo;

/// Copy the structure Xen left at `va`.
///
/// # Safety
/// `va` is the `start_info` pointer Xen passed in `%rsi` (mapped, 1168 bytes).
pub unsafe fn read(va: usize) -> StartInfo {
    // SAFETY: caller contract; a plain-old-data copy.
    unsafe { core::ptr::read_volatile(va as *const StartInfo) }
}

/// The command line (`extra=` of the domain config), up to the first NUL; empty if not UTF-8.
pub fn cmdline(si: &StartInfo) -> &str {
    core::str::from_utf8(si.cmd_line()).unwrap_or("")
}
