//! Physical-device operations (`physdev.h`) a driver domain needs for legacy interrupts and MSI:
//! mapping a GSI/MSI to a pirq, end-of-interrupt, status query, I/O privilege level.

use super::DomId;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `PHYSDEVOP_*` command numbers of `HYPERVISOR_physdev_op`.
pub mod op {
    pub const IRQ_STATUS_QUERY: u32 = 5;
    pub const SET_IOPL: u32 = 6;
    pub const SET_IOBITMAP: u32 = 7;
    pub const EOI: u32 = 12;
    pub const MAP_PIRQ: u32 = 13;
    pub const UNMAP_PIRQ: u32 = 14;
    pub const MANAGE_PCI_ADD: u32 = 15;
    pub const MANAGE_PCI_REMOVE: u32 = 16;
    pub const RESTORE_MSI: u32 = 19;
    pub const SETUP_GSI: u32 = 21;
    pub const GET_FREE_PIRQ: u32 = 23;
    pub const PIRQ_EOI_GMFN_V2: u32 = 28;
}

/// `PHYSDEVOP_eoi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevEoi {
    pub irq: u32,
}
layout!(PhysdevEoi, size 4, irq @ 0);

/// `PHYSDEVOP_irq_status_query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevIrqStatusQuery {
    pub irq: u32,
    /// OUT: `XENIRQSTAT_*`.
    pub flags: u32,
}
layout!(PhysdevIrqStatusQuery, size 8, irq @ 0, flags @ 4);

/// `XENIRQSTAT_needs_eoi`.
pub const XENIRQSTAT_NEEDS_EOI: u32 = 1 << 0;
/// `XENIRQSTAT_shared`.
pub const XENIRQSTAT_SHARED: u32 = 1 << 1;

/// `PHYSDEVOP_set_iopl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevSetIopl {
    pub iopl: u32,
}
layout!(PhysdevSetIopl, size 4, iopl @ 0);

/// `MAP_PIRQ_TYPE_*` values of [`PhysdevMapPirq::ty`].
pub mod map_pirq_type {
    pub const MSI: i32 = 0;
    pub const GSI: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const MSI_SEG: i32 = 3;
    pub const MULTI_MSI: i32 = 4;
}

/// `PHYSDEVOP_map_pirq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevMapPirq {
    pub domid: DomId,
    pub pad0: [u8; 2],
    /// `MAP_PIRQ_TYPE_*`.
    pub ty: i32,
    /// IN: GSI or MSI vector index.
    pub index: i32,
    /// IN/OUT: the pirq.
    pub pirq: i32,
    /// IN: PCI bus (MSI; with MSI_SEG the segment in the upper 16 bits).
    pub bus: i32,
    pub devfn: i32,
    /// IN (MSI-X): entry number; OUT (MULTI_MSI): number of vectors.
    pub entry_nr: i32,
    pub pad1: [u8; 4],
    /// IN (MSI-X): base address of the MSI-X table.
    pub table_base: u64,
}
layout!(PhysdevMapPirq, size 40, domid @ 0, ty @ 4, index @ 8, pirq @ 12, bus @ 16, devfn @ 20, entry_nr @ 24, table_base @ 32);

/// `PHYSDEVOP_unmap_pirq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PhysdevUnmapPirq {
    pub domid: DomId,
    pub pad0: [u8; 2],
    pub pirq: i32,
}
layout!(PhysdevUnmapPirq, size 8, domid @ 0, pirq @ 4);
