//! `start_info` (x86_64, `include/public/xen.h`): what Xen tells a PV guest at entry (`%rsi`).
//! Copied out once at boot; layout asserted against the ABI offsets.

/// x86_64 `struct start_info`, 1168 bytes.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct StartInfo {
    pub magic: [u8; 32],
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info: u64,
    pub flags: u32,
    _pad0: u32,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    _pad1: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
    _pad2: u32,
    /// Virtual address of the L4 page table.
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    /// Virtual address of the p2m (pfn → mfn) array.
    pub mfn_list: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    pub cmd_line: [u8; 1024],
    pub first_p2m_pfn: u64,
    pub nr_p2m_frames: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<StartInfo>() == 1168);
    assert!(offset_of!(StartInfo, nr_pages) == 32);
    assert!(offset_of!(StartInfo, shared_info) == 40);
    assert!(offset_of!(StartInfo, flags) == 48);
    assert!(offset_of!(StartInfo, store_mfn) == 56);
    assert!(offset_of!(StartInfo, store_evtchn) == 64);
    assert!(offset_of!(StartInfo, console_mfn) == 72);
    assert!(offset_of!(StartInfo, console_evtchn) == 80);
    assert!(offset_of!(StartInfo, pt_base) == 88);
    assert!(offset_of!(StartInfo, nr_pt_frames) == 96);
    assert!(offset_of!(StartInfo, mfn_list) == 104);
    assert!(offset_of!(StartInfo, mod_start) == 112);
    assert!(offset_of!(StartInfo, mod_len) == 120);
    assert!(offset_of!(StartInfo, cmd_line) == 128);
    assert!(offset_of!(StartInfo, first_p2m_pfn) == 1152);
    assert!(offset_of!(StartInfo, nr_p2m_frames) == 1160);
};

/// `SIF_PRIVILEGED`: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1;
/// `SIF_INITDOMAIN`: the domain is dom0.
pub const SIF_INITDOMAIN: u32 = 2;

impl StartInfo {
    /// Copy the structure Xen left at `va`.
    ///
    /// # Safety
    /// `va` is the `start_info` pointer Xen passed in `%rsi` (mapped, 1168 bytes).
    pub unsafe fn read(va: usize) -> StartInfo {
        // SAFETY: caller contract; a plain-old-data copy.
        unsafe { core::ptr::read_volatile(va as *const StartInfo) }
    }

    /// Whether the magic says "xen-3.0-x86_64".
    pub fn magic_ok(&self) -> bool {
        self.magic.starts_with(b"xen-3.0-x86_64")
    }

    /// The command line (`extra=` of the domain config), up to the first NUL.
    pub fn cmdline(&self) -> &str {
        let n = self
            .cmd_line
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.cmd_line.len());
        core::str::from_utf8(&self.cmd_line[..n]).unwrap_or("")
    }
}
