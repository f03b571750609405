//! Kernel command line: space-separated `key=value` words (`usbdom.selftest=probe`). Under PVH it
//! comes from `hvm_start_info.cmdline_paddr`, under Xen PV from `start_info.cmd_line` (`extra=`).

/// Value of the first `key=value` word with this key.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|w| {
        let (k, v) = w.split_once('=')?;
        (k == key).then_some(v)
    })
}

static CURRENT: hermit_sync::OnceCell<&'static str> = hermit_sync::OnceCell::new();

/// Record the boot command line (once, at entry).
pub fn set(cmdline: &'static str) {
    let _ = CURRENT.set(cmdline);
}

/// The boot command line ("" before [`set`]).
pub fn current() -> &'static str {
    CURRENT.get().copied().unwrap_or("")
}
