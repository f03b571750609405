//! Grant tables, version 1 (`grant_table.h`): the table entry a granting domain writes, the
//! `GNTTABOP_*` argument structures and their flags and status codes.

use super::{DomId, GrantHandle, GrantRef};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A version-1 grant-table entry (`grant_entry_v1_t`), written by the granting domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// `GTF_*` type and flags.
    pub flags: u16,
    /// The domain being granted access.
    pub domid: u16,
    /// The frame (GFN; the MFN for a PV guest) being granted.
    pub frame: u32,
}
layout!(GrantEntryV1, size 8, flags @ 0, domid @ 2, frame @ 4);

/// Entries per 4 KiB grant-table frame.
pub const ENTRIES_PER_FRAME: usize = 4096 / 8;
/// The first grant references are reserved for the toolstack (console and xenstore pages).
pub const NR_RESERVED_ENTRIES: u32 = 8;
/// Reserved reference used by the toolstack for the console ring.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = GrantRef(0);
/// Reserved reference used by the toolstack for the xenstore ring.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = GrantRef(1);

/// `GTF_*` values of [`GrantEntryV1::flags`].
pub mod gtf {
    pub const INVALID: u16 = 0;
    pub const PERMIT_ACCESS: u16 = 1;
    pub const ACCEPT_TRANSFER: u16 = 2;
    pub const TRANSITIVE: u16 = 3;
    pub const TYPE_MASK: u16 = 3;
    /// The grantee may only map/copy read-only.
    pub const READONLY: u16 = 1 << 2;
    /// Set by Xen while the grantee has the frame mapped/copied for reading.
    pub const READING: u16 = 1 << 3;
    /// Set by Xen while the grantee has the frame mapped/copied for writing.
    pub const WRITING: u16 = 1 << 4;
    pub const PWT: u16 = 1 << 5;
    pub const PCD: u16 = 1 << 6;
    pub const PAT: u16 = 1 << 7;
    pub const SUB_PAGE: u16 = 1 << 8;
}

/// `GNTTABOP_*` sub-operation numbers of `HYPERVISOR_grant_table_op`.
pub mod op {
    pub const MAP_GRANT_REF: u32 = 0;
    pub const UNMAP_GRANT_REF: u32 = 1;
    pub const SETUP_TABLE: u32 = 2;
    pub const DUMP_TABLE: u32 = 3;
    pub const TRANSFER: u32 = 4;
    pub const COPY: u32 = 5;
    pub const QUERY_SIZE: u32 = 6;
    pub const UNMAP_AND_REPLACE: u32 = 7;
    pub const SET_VERSION: u32 = 8;
    pub const GET_STATUS_FRAMES: u32 = 9;
    pub const GET_VERSION: u32 = 10;
}

/// `GNTMAP_*` flags of [`MapGrantRef::flags`].
pub mod gntmap {
    pub const DEVICE_MAP: u32 = 1 << 0;
    pub const HOST_MAP: u32 = 1 << 1;
    pub const READONLY: u32 = 1 << 2;
    pub const APPLICATION_MAP: u32 = 1 << 3;
    pub const CONTAINS_PTE: u32 = 1 << 4;
}

/// A `GNTST_*` status code returned in the `status` field of each grant operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(transparent)]
pub struct GntStatus(pub i16);

impl GntStatus {
    pub const OKAY: GntStatus = GntStatus(0);
    pub const GENERAL_ERROR: GntStatus = GntStatus(-1);
    pub const BAD_DOMAIN: GntStatus = GntStatus(-2);
    pub const BAD_GNTREF: GntStatus = GntStatus(-3);
    pub const BAD_HANDLE: GntStatus = GntStatus(-4);
    pub const BAD_VIRT_ADDR: GntStatus = GntStatus(-5);
    pub const BAD_DEV_ADDR: GntStatus = GntStatus(-6);
    pub const NO_DEVICE_SPACE: GntStatus = GntStatus(-7);
    pub const PERMISSION_DENIED: GntStatus = GntStatus(-8);
    pub const BAD_PAGE: GntStatus = GntStatus(-9);
    pub const BAD_COPY_ARG: GntStatus = GntStatus(-10);
    pub const ADDRESS_TOO_BIG: GntStatus = GntStatus(-11);
    pub const EAGAIN: GntStatus = GntStatus(-12);
    pub const NO_SPACE: GntStatus = GntStatus(-13);

    pub const fn is_ok(self) -> bool {
        self.0 == 0
    }

    /// A short description (the `GNTTABOP_error_msgs` meanings).
    pub const fn describe(self) -> &'static str {
        match self.0 {
            0 => "okay",
            -1 => "undefined error",
            -2 => "unrecognised domain id",
            -3 => "invalid grant reference",
            -4 => "invalid mapping handle",
            -5 => "invalid virtual address",
            -6 => "invalid device address",
            -7 => "no space for device mapping",
            -8 => "permission denied",
            -9 => "bad page",
            -10 => "copy arguments cross page boundary",
            -11 => "page address size too large",
            -12 => "operation not done; try again",
            -13 => "out of space",
            _ => "unknown grant status",
        }
    }
}

/// `GNTTABOP_map_grant_ref` argument (`gnttab_map_grant_ref_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MapGrantRef {
    /// IN: virtual address to map at (with `GNTMAP_host_map`).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the grant reference in `dom`'s table.
    pub gref: GrantRef,
    /// IN: the granting domain.
    pub dom: DomId,
    /// OUT: `GNTST_*`.
    pub status: GntStatus,
    /// OUT: handle for the unmap.
    pub handle: GrantHandle,
    /// OUT: bus address of the frame (machine address on x86 PV).
    pub dev_bus_addr: u64,
}
layout!(MapGrantRef, size 32, host_addr @ 0, flags @ 8, gref @ 12, dom @ 16, status @ 18, handle @ 20, dev_bus_addr @ 24);

/// `GNTTABOP_unmap_grant_ref` argument (`gnttab_unmap_grant_ref_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct UnmapGrantRef {
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub handle: GrantHandle,
    /// OUT: `GNTST_*`.
    pub status: GntStatus,
    pub pad: [u8; 2],
}
layout!(UnmapGrantRef, size 24, host_addr @ 0, dev_bus_addr @ 8, handle @ 16, status @ 20);

/// `GNTTABOP_setup_table` argument (`gnttab_setup_table_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SetupTable {
    pub dom: DomId,
    pub pad0: [u8; 2],
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: GntStatus,
    pub pad1: [u8; 6],
    /// Guest handle (virtual address) of a `xen_pfn_t` array receiving the frame numbers.
    pub frame_list: u64,
}
layout!(SetupTable, size 24, dom @ 0, nr_frames @ 4, status @ 8, frame_list @ 16);

/// `GNTTABOP_query_size` argument (`gnttab_query_size_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QuerySize {
    pub dom: DomId,
    pub pad0: [u8; 2],
    pub nr_frames: u32,
    pub max_nr_frames: u32,
    pub status: GntStatus,
    pub pad1: [u8; 2],
}
layout!(QuerySize, size 16, dom @ 0, nr_frames @ 4, max_nr_frames @ 8, status @ 12);

/// `GNTTABOP_set_version` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SetVersion {
    pub version: u32,
}
layout!(SetVersion, size 4, version @ 0);

/// One side of a grant copy: a grant reference (with `GNTCOPY_*_gref`) or a frame number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CopyPtr {
    /// `union { grant_ref_t ref; xen_pfn_t gmfn; }`: a grant reference occupies the low 32 bits.
    pub u: u64,
    pub domid: DomId,
    pub offset: u16,
    pub pad: [u8; 4],
}
layout!(CopyPtr, size 16, u @ 0, domid @ 8, offset @ 10);

/// `GNTTABOP_copy` argument (`gnttab_copy_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabCopy {
    pub source: CopyPtr,
    pub dest: CopyPtr,
    pub len: u16,
    /// `GNTCOPY_*`.
    pub flags: u16,
    /// OUT: `GNTST_*`.
    pub status: GntStatus,
    pub pad: [u8; 2],
}
layout!(GnttabCopy, size 40, source @ 0, dest @ 16, len @ 32, flags @ 34, status @ 36);

/// `GNTCOPY_*` flags of [`GnttabCopy::flags`].
pub mod gntcopy {
    pub const SOURCE_GREF: u16 = 1 << 0;
    pub const DEST_GREF: u16 = 1 << 1;
}
