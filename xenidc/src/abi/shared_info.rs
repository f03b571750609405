//! The shared-info page (`xen.h`, x86_64 `arch-x86/xen-x86_64.h`): per-VCPU event and time
//! information and the 2-level event-channel pending/mask bitmaps.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Number of `vcpu_info` slots in the shared-info page (`XEN_LEGACY_MAX_VCPUS`).
pub const LEGACY_MAX_VCPUS: usize = 32;

/// `vcpu_time_info`: the parameters to turn the TSC into Xen system time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the record (seqlock-style).
    pub version: u32,
    pub pad0: u32,
    pub tsc_timestamp: u64,
    /// System time (ns) at `tsc_timestamp`.
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
    pub pad1: [u8; 2],
}
layout!(VcpuTimeInfo, size 32, version @ 0, tsc_timestamp @ 8, system_time @ 16, tsc_to_system_mul @ 24, tsc_shift @ 28, flags @ 29);

/// `vcpu_info` (x86_64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuInfo {
    pub evtchn_upcall_pending: u8,
    /// Non-zero: event upcalls are masked (the PV "interrupt flag").
    pub evtchn_upcall_mask: u8,
    pub pad0: [u8; 6],
    /// Selector of the words of `evtchn_pending` that may have bits set.
    pub evtchn_pending_sel: u64,
    /// `arch_vcpu_info`: cr2 and padding.
    pub arch_cr2: u64,
    pub arch_pad: u64,
    pub time: VcpuTimeInfo,
}
layout!(VcpuInfo, size 64, evtchn_upcall_pending @ 0, evtchn_upcall_mask @ 1, evtchn_pending_sel @ 8, arch_cr2 @ 16, time @ 32);

/// `shared_info` (x86_64).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SharedInfo {
    pub vcpu_info: [VcpuInfo; LEGACY_MAX_VCPUS],
    /// 2-level ABI: one bit per port.
    pub evtchn_pending: [u64; 64],
    pub evtchn_mask: [u64; 64],
    /// Wallclock at system time 0 (seqlock `wc_version`).
    pub wc_version: u32,
    pub wc_sec: u32,
    pub wc_nsec: u32,
    pub wc_sec_hi: u32,
    /// `arch_shared_info`.
    pub max_pfn: u64,
    pub pfn_to_mfn_frame_list_list: u64,
    pub nmi_reason: u64,
    pub p2m_cr3: u64,
    pub p2m_vaddr: u64,
    pub p2m_generation: u64,
}
layout!(SharedInfo, size 3136,
    vcpu_info @ 0, evtchn_pending @ 2048, evtchn_mask @ 2560, wc_version @ 3072, wc_sec @ 3076,
    wc_nsec @ 3080, wc_sec_hi @ 3084, max_pfn @ 3088, pfn_to_mfn_frame_list_list @ 3096,
    nmi_reason @ 3104, p2m_cr3 @ 3112, p2m_vaddr @ 3120, p2m_generation @ 3128);

/// Byte offset of `evtchn_pending` in the shared-info page.
pub const EVTCHN_PENDING_OFFSET: usize = 2048;
/// Byte offset of `evtchn_mask` in the shared-info page.
pub const EVTCHN_MASK_OFFSET: usize = 2560;
