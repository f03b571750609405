//! Kernel command line: space-separated `key=value` words (`usbdom.selftest=probe`). Under PVH it
//! comes from `hvm_start_info.cmdline_paddr`, under Xen PV from `start_info.cmd_line` (`extra=`).

/// Value of the first `key=value` word with this key.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|w| {
        let (k, v) = w.split_once('=')?;
        (k == key).then_some(v)
    })
}
