//! The `Hypervisor` trait: every hypervisor service the inter-domain layer uses, so the same ring,
//! channel and backend code runs on real Xen (`crate::xen`, feature `xen`) and on the simulated
//! hypervisor of the host tests (`crate::sim`).
//!
//! It covers grant tables (mapping a peer's grants, grant copy, granting our own pages — Xen
//! `grant_table.h`), event channels (`event_channel.h`), blocking and polling (`sched.h`), and access
//! to our own xenstore ring page and its event channel (`start_info.store_mfn/store_evtchn`).
//!
//! Errors are [`XenError`]: the operation with its arguments, plus the hypervisor's code.

use crate::abi::grant::GntStatus;
use crate::abi::{DomId, GrantHandle, GrantRef, Port};
use crate::shm::SharedMem;
use alloc::vec::Vec;
use core::fmt;

/// The operation that failed, with the arguments that identify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XenOp {
    GrantMap {
        dom: DomId,
        gref: GrantRef,
        readonly: bool,
    },
    GrantUnmap {
        handle: GrantHandle,
    },
    GrantCopy,
    GrantAccess {
        to: DomId,
    },
    GrantEndAccess {
        gref: GrantRef,
    },
    AllocPage,
    EvtchnAllocUnbound {
        remote: DomId,
    },
    EvtchnBindInterdomain {
        remote: DomId,
        remote_port: Port,
    },
    EvtchnSend {
        port: Port,
    },
    EvtchnUnmask {
        port: Port,
    },
    EvtchnClose {
        port: Port,
    },
    Block,
    Poll,
}

/// The hypervisor's answer: a (positive) errno from a hypercall's negative return value, or a
/// per-operation grant status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XenCode {
    /// Errno (positive, e.g. [`crate::abi::errno::EINVAL`]); the hypercall returned its negation.
    Errno(i32),
    /// `GNTST_*` status of a grant operation.
    Grant(GntStatus),
}

/// A failed hypervisor operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenError {
    pub op: XenOp,
    pub code: XenCode,
}

impl XenError {
    pub const fn errno(op: XenOp, errno: i32) -> XenError {
        XenError {
            op,
            code: XenCode::Errno(errno),
        }
    }
    pub const fn grant(op: XenOp, status: GntStatus) -> XenError {
        XenError {
            op,
            code: XenCode::Grant(status),
        }
    }
}

impl fmt::Display for XenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            XenCode::Errno(e) => write!(f, "{:?} failed: error -{e}", self.op),
            XenCode::Grant(s) => write!(f, "{:?} failed: {} ({})", self.op, s.describe(), s.0),
        }
    }
}

/// A foreign page mapped into our address space with `GNTTABOP_map_grant_ref` (host map).
///
/// Dropping it does not unmap: pass it to [`Hypervisor::unmap_grant`]. The backend-level
/// mapper in [`crate::buffer`] tracks every mapping so a torn-down connection releases them all.
#[derive(Debug)]
pub struct Mapping<M> {
    /// Access to the mapped page.
    pub mem: M,
    /// Handle for the unmap.
    pub handle: GrantHandle,
    /// Bus address of the page for device DMA (machine address on x86 PV; with an IOMMU Xen
    /// installs a 1:1 mapping for the frame).
    pub bus_addr: u64,
    /// The grant this mapping came from.
    pub dom: DomId,
    pub gref: GrantRef,
    pub readonly: bool,
}

/// One grant to map with [`Hypervisor::map_grants`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    pub dom: DomId,
    pub gref: GrantRef,
    pub readonly: bool,
}

/// The outcome of one [`MapRequest`].
pub type MapResult<M> = Result<Mapping<M>, XenError>;

/// One of our own pages, suitable for granting to a peer and for DMA.
#[derive(Debug)]
pub struct LocalPage<P> {
    pub mem: P,
    /// Our frame number of the page (GFN; MFN on PV), as used in grant entries and grant copies.
    pub frame: u64,
    /// Bus address for device DMA.
    pub bus_addr: u64,
}

/// One side of a grant copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyPtr {
    /// A peer's grant reference.
    Grant {
        dom: DomId,
        gref: GrantRef,
        offset: u16,
    },
    /// One of our own frames.
    Local { frame: u64, offset: u16 },
}

/// One `GNTTABOP_copy` operation. `status` is filled in by [`Hypervisor::grant_copy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOp {
    pub src: CopyPtr,
    pub dst: CopyPtr,
    pub len: u16,
    pub status: GntStatus,
}

impl CopyOp {
    pub const fn new(src: CopyPtr, dst: CopyPtr, len: u16) -> CopyOp {
        CopyOp {
            src,
            dst,
            len,
            status: GntStatus::GENERAL_ERROR,
        }
    }
}

/// The hypervisor services of one domain.
pub trait Hypervisor {
    /// View of a mapped foreign page.
    type Mem: SharedMem;
    /// View of one of our own pages.
    type Page: SharedMem;

    // --- grants of other domains --------------------------------------------------------

    /// Map `dom`'s grant `gref` (host map; read-only if `readonly`). Fails if the grant is not
    /// ours to map (wrong domain, invalid or revoked entry, read-only grant mapped writable).
    fn map_grant(
        &mut self,
        dom: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<Mapping<Self::Mem>, XenError>;

    /// Unmap a mapping made by [`Hypervisor::map_grant`].
    fn unmap_grant(&mut self, mapping: Mapping<Self::Mem>) -> Result<(), XenError>;

    /// Map a batch of grants (`GNTTABOP_map_grant_ref` with a count, as few hypercalls as the
    /// implementation's batch bound allows). Appends exactly one result per request to `out`, in
    /// order. Each entry succeeds or fails on its own, with the rules of
    /// [`Hypervisor::map_grant`]; the caller owns the successful mappings, also when others
    /// failed. The default maps one grant per call.
    fn map_grants(&mut self, reqs: &[MapRequest], out: &mut Vec<MapResult<Self::Mem>>) {
        for r in reqs {
            out.push(self.map_grant(r.dom, r.gref, r.readonly));
        }
    }

    /// Unmap a batch of mappings (`GNTTABOP_unmap_grant_ref` with a count). Every mapping is
    /// consumed and unmapped on its own, with the rules of [`Hypervisor::unmap_grant`], also when
    /// others fail; the first failure is returned. The default unmaps one per call.
    fn unmap_grants<I>(&mut self, mappings: I) -> Result<(), XenError>
    where
        I: IntoIterator<Item = Mapping<Self::Mem>>,
        Self: Sized,
    {
        let mut first = None;
        for m in mappings {
            if let Err(e) = self.unmap_grant(m) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Run a batch of grant copies. The call fails as a whole only if the hypercall itself fails;
    /// otherwise each operation's `status` says whether it was done.
    fn grant_copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError>;

    // --- our own pages and grants -------------------------------------------------------

    /// Allocate one zeroed page of our own memory.
    fn alloc_page(&mut self) -> Result<LocalPage<Self::Page>, XenError>;

    /// Return a page from [`Hypervisor::alloc_page`]. It must not be granted any more.
    fn free_page(&mut self, page: LocalPage<Self::Page>);

    /// Grant `to` access to our frame `frame`; returns the grant reference to advertise.
    fn grant_access(&mut self, frame: u64, to: DomId, readonly: bool)
        -> Result<GrantRef, XenError>;

    /// Revoke a grant made by [`Hypervisor::grant_access`]. Fails (`EBUSY`) while the grantee
    /// still has it mapped — as on Xen, the entry then stays valid.
    fn end_access(&mut self, gref: GrantRef) -> Result<(), XenError>;

    /// True while the grantee has the grant mapped (`GTF_reading`/`GTF_writing`).
    fn grant_in_use(&self, gref: GrantRef) -> bool;

    // --- event channels -----------------------------------------------------------------

    /// Allocate a port for `remote` to bind to.
    fn evtchn_alloc_unbound(&mut self, remote: DomId) -> Result<Port, XenError>;
    /// Bind a local port to `remote`'s unbound port `remote_port`.
    fn evtchn_bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: Port,
    ) -> Result<Port, XenError>;
    /// Notify the other end of `port`.
    fn evtchn_send(&mut self, port: Port) -> Result<(), XenError>;
    /// Unmask `port` (events arriving while masked stay pending).
    fn evtchn_unmask(&mut self, port: Port) -> Result<(), XenError>;
    /// Close `port`; the peer's end becomes unbound.
    fn evtchn_close(&mut self, port: Port) -> Result<(), XenError>;
    /// Call `f` once for every pending unmasked port and clear its pending bit.
    fn take_pending(&mut self, f: &mut dyn FnMut(Port));

    // --- waiting ------------------------------------------------------------------------

    /// Current system time in nanoseconds.
    fn now_ns(&self) -> u64;
    /// Sleep until any event is pending, or until system time `deadline_ns` if given.
    fn block(&mut self, deadline_ns: Option<u64>) -> Result<(), XenError>;
    /// Sleep until one of `ports` is pending, or until system time `deadline_ns` if given.
    fn poll(&mut self, ports: &[Port], deadline_ns: Option<u64>) -> Result<(), XenError>;

    // --- xenstore -----------------------------------------------------------------------

    /// Our xenstore ring page (`struct xenstore_domain_interface`, see
    /// [`crate::abi::xs_ring`]).
    fn xenstore_page(&self) -> &Self::Page;
    /// The event channel of the xenstore ring.
    fn xenstore_port(&self) -> Port;
}
