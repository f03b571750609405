//! `start_info` (x86_64, `xen.h`): what Xen hands a PV guest at boot (pointer in `%rsi`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The start-of-day information page of a PV guest (`start_info_t`, x86_64).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StartInfo {
    /// "xen-3.0-x86_64" (NUL padded).
    pub magic: [u8; 32],
    pub nr_pages: u64,
    /// Machine address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*`.
    pub flags: u32,
    pub pad0: [u8; 4],
    /// Machine frame of the xenstore ring page.
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub pad1: [u8; 4],
    /// domU: machine frame of the console ring page (dom0: `info_off`/`info_size`).
    pub console_mfn: u64,
    pub console_evtchn: u32,
    pub pad2: [u8; 4],
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
layout!(StartInfo, size 1168,
    magic @ 0, nr_pages @ 32, shared_info @ 40, flags @ 48, store_mfn @ 56, store_evtchn @ 64,
    console_mfn @ 72, console_evtchn @ 80, pt_base @ 88, nr_pt_frames @ 96, mfn_list @ 104,
    mod_start @ 112, mod_len @ 120, cmd_line @ 128, first_p2m_pfn @ 1152, nr_p2m_frames @ 1160);

/// Expected prefix of [`StartInfo::magic`] for an x86_64 PV guest.
pub const MAGIC_PREFIX: &[u8] = b"xen-3.0-x86_64";

/// `SIF_*` flags of [`StartInfo::flags`].
pub mod sif {
    pub const PRIVILEGED: u32 = 1 << 0;
    pub const INITDOMAIN: u32 = 1 << 1;
    pub const MULTIBOOT_MOD: u32 = 1 << 2;
    pub const MOD_START_PFN: u32 = 1 << 3;
    pub const VIRT_P2M_4TOOLS: u32 = 1 << 4;
}

impl StartInfo {
    /// True if the magic starts with [`MAGIC_PREFIX`].
    pub fn magic_ok(&self) -> bool {
        self.magic.starts_with(MAGIC_PREFIX)
    }

    /// The command line up to its first NUL byte.
    pub fn cmd_line(&self) -> &[u8] {
        let end = self
            .cmd_line
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.cmd_line.len());
        &self.cmd_line[..end]
    }
}
