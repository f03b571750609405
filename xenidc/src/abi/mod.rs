//! Xen ABI definitions: the public-interface structures and constants usbdom exchanges with the
//! hypervisor and with peer domains, each with its size and field offsets asserted at compile time.
//!
//! Sources (read, not copied): Xen `xen/include/public/` — `xen.h`, `grant_table.h`,
//! `event_channel.h`, `sched.h`, `physdev.h`, `io/ring.h`, `io/usbif.h`, `io/pciif.h`,
//! `io/console.h`, `io/xs_wire.h` — for x86_64, interface version 0x00041300. Layouts were also
//! cross-checked against `../shared/reference/pvusb-protocol.md`, whose sizes were obtained by
//! compiling those headers.
//!
//! Values that come from a peer (status codes, speeds, pipe words, grant references, ports) are
//! integer newtypes with associated constants, never Rust enums: a peer may send any bit pattern.

/// Compile-time layout check: `layout!(Type, size N, field @ offset, ...)`.
macro_rules! layout {
    ($t:ty, size $s:expr $(, $f:ident @ $o:expr)* $(,)?) => {
        const _: () = {
            assert!(core::mem::size_of::<$t>() == $s);
            $(assert!(core::mem::offset_of!($t, $f) == $o);)*
        };
    };
}

pub mod console;
pub mod evtchn;
pub mod grant;
pub mod hypercall;
pub mod pciif;
pub mod physdev;
pub mod ring;
pub mod sched;
pub mod shared_info;
pub mod start_info;
pub mod usbif;
pub mod xs_ring;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of a Xen page on x86 (all shared rings are exactly one such page).
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A domain identifier (`domid_t`, 16 bits).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
#[repr(transparent)]
pub struct DomId(pub u16);

impl DomId {
    /// dom0, the control domain.
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_SELF`: the calling domain.
    pub const SELF: DomId = DomId(0x7FF0);
    /// `DOMID_IO`: owner of I/O memory (used to map BARs).
    pub const IO: DomId = DomId(0x7FF1);
    /// `DOMID_XEN`: the hypervisor itself.
    pub const XEN: DomId = DomId(0x7FF2);
    /// `DOMID_COW`.
    pub const COW: DomId = DomId(0x7FF3);
    /// `DOMID_INVALID`.
    pub const INVALID: DomId = DomId(0x7FF4);
    /// `DOMID_IDLE`.
    pub const IDLE: DomId = DomId(0x7FFF);
    /// Highest identifier of an ordinary domain (`DOMID_FIRST_RESERVED - 1`).
    pub const MAX_NORMAL: DomId = DomId(0x7FEF);

    /// True for identifiers of ordinary domains (not one of the reserved `DOMID_*` values).
    pub const fn is_normal(self) -> bool {
        self.0 <= Self::MAX_NORMAL.0
    }
}

impl core::fmt::Display for DomId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "dom{}", self.0)
    }
}

/// A grant reference (`grant_ref_t`): an index into the granting domain's grant table.
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
#[repr(transparent)]
pub struct GrantRef(pub u32);

impl core::fmt::Display for GrantRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "gref {}", self.0)
    }
}

/// An event-channel port number (`evtchn_port_t`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
#[repr(transparent)]
pub struct Port(pub u32);

impl core::fmt::Display for Port {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// A grant handle returned by `GNTTABOP_map_grant_ref` (`grant_handle_t`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
#[repr(transparent)]
pub struct GrantHandle(pub u32);

/// Xen error numbers returned by hypercalls (negated in the return value). Only those the code
/// inspects; any other value is carried as a plain integer.
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const EINTR: i32 = 4;
    pub const EIO: i32 = 5;
    pub const E2BIG: i32 = 7;
    pub const EBADF: i32 = 9;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EFAULT: i32 = 14;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EPIPE: i32 = 32;
    pub const ERANGE: i32 = 34;
    pub const ENOSYS: i32 = 38;
    pub const ETIMEDOUT: i32 = 110;
}

const _: () = assert!(core::mem::size_of::<DomId>() == 2);
const _: () = assert!(core::mem::size_of::<GrantRef>() == 4);
const _: () = assert!(core::mem::size_of::<Port>() == 4);
const _: () = assert!(core::mem::size_of::<GrantHandle>() == 4);
