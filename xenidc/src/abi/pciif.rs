//! The PCI frontend/backend shared page (`io/pciif.h`), used by pcifront for configuration-space
//! access and MSI/MSI-X enabling.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `SH_INFO_MAX_VEC`: MSI-X entries in one operation.
pub const SH_INFO_MAX_VEC: usize = 128;

/// `_XEN_PCIF_active`: bit number in [`XenPciSharedInfo::flags`] of "operation pending".
pub const XEN_PCIF_ACTIVE_BIT: u32 = 0;
/// `XEN_PCIF_active`.
pub const XEN_PCIF_ACTIVE: u32 = 1 << XEN_PCIF_ACTIVE_BIT;
/// `_XEN_PCIB_AERHANDLER`: bit number.
pub const XEN_PCIB_AERHANDLER_BIT: u32 = 1;
/// `_XEN_PCIB_active`: bit number (AER operation pending).
pub const XEN_PCIB_ACTIVE_BIT: u32 = 2;

/// `XEN_PCI_OP_*` commands.
pub mod op {
    pub const CONF_READ: u32 = 0;
    pub const CONF_WRITE: u32 = 1;
    pub const ENABLE_MSI: u32 = 2;
    pub const DISABLE_MSI: u32 = 3;
    pub const ENABLE_MSIX: u32 = 4;
    pub const DISABLE_MSIX: u32 = 5;
    pub const AER_DETECTED: u32 = 6;
    pub const AER_RESUME: u32 = 7;
    pub const AER_MMIO: u32 = 8;
    pub const AER_SLOTRESET: u32 = 9;
    pub const ENABLE_MULTI_MSI: u32 = 10;
}

/// `XEN_PCI_ERR_*` values of [`XenPciOp::err`] (backend result; peer-supplied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(transparent)]
pub struct XenPciErr(pub i32);

impl XenPciErr {
    pub const SUCCESS: XenPciErr = XenPciErr(0);
    pub const DEV_NOT_FOUND: XenPciErr = XenPciErr(-1);
    pub const INVALID_OFFSET: XenPciErr = XenPciErr(-2);
    pub const ACCESS_DENIED: XenPciErr = XenPciErr(-3);
    pub const NOT_IMPLEMENTED: XenPciErr = XenPciErr(-4);
    pub const OP_FAILED: XenPciErr = XenPciErr(-5);
}

/// `struct xen_msix_entry`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XenMsixEntry {
    pub vector: u16,
    pub entry: u16,
}
layout!(XenMsixEntry, size 4, vector @ 0, entry @ 2);

/// `struct xen_pci_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenPciOp {
    /// `XEN_PCI_OP_*`.
    pub cmd: u32,
    /// OUT: [`XenPciErr`].
    pub err: XenPciErr,
    pub domain: u32,
    pub bus: u32,
    pub devfn: u32,
    pub offset: i32,
    pub size: i32,
    /// IN/OUT: value written / read; for enable_msi the returned pirq.
    pub value: u32,
    /// IN: extra information (number of MSI vectors for enable_multi_msi).
    pub info: u32,
    pub msix_entries: [XenMsixEntry; SH_INFO_MAX_VEC],
}
layout!(XenPciOp, size 548, cmd @ 0, err @ 4, domain @ 8, bus @ 12, devfn @ 16, offset @ 20, size @ 24, value @ 28, info @ 32, msix_entries @ 36);

/// `struct xen_pcie_aer_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenPcieAerOp {
    pub cmd: u32,
    pub err: i32,
    pub domain: u32,
    pub bus: u32,
    pub devfn: u32,
}
layout!(XenPcieAerOp, size 20, cmd @ 0, err @ 4, domain @ 8, bus @ 12, devfn @ 16);

/// `struct xen_pci_sharedinfo`: the page granted by pcifront.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenPciSharedInfo {
    /// `XEN_PCIF_*` / `XEN_PCIB_*` bits.
    pub flags: u32,
    pub op: XenPciOp,
    pub aer_op: XenPcieAerOp,
}
layout!(XenPciSharedInfo, size 572, flags @ 0, op @ 4, aer_op @ 552);

/// Byte offset of `flags` in the shared page.
pub const FLAGS_OFFSET: usize = 0;
/// Byte offset of `op` in the shared page.
pub const OP_OFFSET: usize = 4;
