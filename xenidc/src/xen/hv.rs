//! [`XenHypervisor`]: the real-Xen implementation of [`Hypervisor`] for an x86_64 PV domain.
//!
//! Grants of other domains are host-mapped (`GNTMAP_host_map`) into page-sized address slots the
//! kernel reserves; the bus address for DMA is the `dev_bus_addr` Xen returns (the machine address
//! on PV; with an IOMMU Xen maps the frame 1:1 for a domain that owns devices). Our own pages come
//! from the kernel's allocator with their machine frame (the p2m), and are granted through our
//! [`GrantTable`]. Event channels are the 2-level ABI; waiting is `SCHEDOP_poll` over the ports
//! this object knows (upcalls stay masked).
//!
//! What needs the kernel's memory management (allocating pages and address slots, time) comes
//! through [`PvEnv`].

use super::events::EventBits;
use super::gnttab::{GnttabError, GrantTable};
use super::mem::XenMem;
use super::ops;
use crate::abi::errno;
use crate::abi::grant::{gntcopy, gntmap, GntStatus, GnttabCopy, MapGrantRef, UnmapGrantRef};
use crate::abi::{grant, DomId, GrantHandle, GrantRef, Port, PAGE_SIZE};
use crate::hypervisor::{CopyOp, CopyPtr, Hypervisor, LocalPage, Mapping, XenError, XenOp};
use alloc::vec::Vec;
use core::ptr::NonNull;

/// What the hypervisor layer needs from the kernel's memory management.
pub trait PvEnv {
    /// Xen system time in nanoseconds (the clock `SCHEDOP_poll` timeouts use).
    fn now_ns(&self) -> u64;
    /// One zeroed, writable page of our memory: its virtual address and machine frame.
    fn alloc_page(&mut self) -> Option<(NonNull<u8>, u64)>;
    /// Give back a page from [`PvEnv::alloc_page`].
    ///
    /// # Safety
    /// Nothing accesses the page afterwards, and it is not granted to anyone.
    unsafe fn free_page(&mut self, va: NonNull<u8>, mfn: u64);
    /// A page-sized, page-aligned virtual address with nothing mapped and its L1 page table
    /// present, for `GNTMAP_host_map`.
    fn reserve_map_slot(&mut self) -> Option<NonNull<u8>>;
    /// Return a slot from [`PvEnv::reserve_map_slot`] (nothing mapped there any more).
    fn release_map_slot(&mut self, va: NonNull<u8>);
}

/// Most ports one `SCHEDOP_poll` accepts (Xen limit).
const MAX_POLL_PORTS: usize = 128;

/// The hypervisor services of this PV domain.
pub struct XenHypervisor<E: PvEnv> {
    env: E,
    gnttab: GrantTable,
    events: EventBits,
    xs_page: XenMem,
    xs_port: Port,
    /// Ports this object allocated, bound or was told about: what `block` waits on and
    /// `take_pending` reports.
    ports: Vec<Port>,
}

impl<E: PvEnv> XenHypervisor<E> {
    /// Assemble the services from their parts. `xs_page` is the mapped xenstore ring
    /// (`start_info.store_mfn`), `xs_port` its event channel (`start_info.store_evtchn`).
    pub fn new(
        env: E,
        gnttab: GrantTable,
        events: EventBits,
        xs_page: XenMem,
        xs_port: Port,
    ) -> Self {
        XenHypervisor {
            env,
            gnttab,
            events,
            xs_page,
            xs_port,
            ports: alloc::vec![xs_port],
        }
    }

    pub fn env(&mut self) -> &mut E {
        &mut self.env
    }

    /// The event bitmaps (for the kernel's own ports).
    pub fn events(&self) -> EventBits {
        self.events
    }

    /// Include `port` (bound elsewhere, e.g. a pirq) in [`Hypervisor::block`] and
    /// [`Hypervisor::take_pending`].
    pub fn watch_port(&mut self, port: Port) {
        if !self.ports.contains(&port) {
            self.ports.push(port);
        }
    }

    /// Stop watching `port`.
    pub fn unwatch_port(&mut self, port: Port) {
        self.ports.retain(|p| *p != port);
    }

    /// Bind physical IRQ `pirq` to a new event channel and watch it.
    pub fn bind_pirq(&mut self, pirq: u32, will_share: bool) -> Result<Port, i32> {
        let port = ops::evtchn_bind_pirq(pirq, will_share)?;
        self.watch_port(port);
        Ok(port)
    }

    /// References left in our grant table.
    pub fn grants_available(&self) -> usize {
        self.gnttab.available()
    }
}

fn gnt_err(op: XenOp, e: GnttabError) -> XenError {
    match e {
        GnttabError::Full => XenError::grant(op, GntStatus::NO_SPACE),
        GnttabError::NotGranted => XenError::grant(op, GntStatus::BAD_GNTREF),
        GnttabError::InUse => XenError::errno(op, errno::EBUSY),
        GnttabError::FrameTooLarge => XenError::grant(op, GntStatus::ADDRESS_TOO_BIG),
    }
}

fn copy_ptr(p: CopyPtr) -> (grant::CopyPtr, u16) {
    match p {
        CopyPtr::Grant { dom, gref, offset } => (
            grant::CopyPtr {
                u: gref.0 as u64,
                domid: dom,
                offset,
                pad: [0; 4],
            },
            1,
        ),
        CopyPtr::Local { frame, offset } => (
            grant::CopyPtr {
                u: frame,
                domid: DomId::SELF,
                offset,
                pad: [0; 4],
            },
            0,
        ),
    }
}

/// Grant copies per hypercall (the batch lives on the stack).
const COPY_BATCH: usize = 16;

impl<E: PvEnv> Hypervisor for XenHypervisor<E> {
    type Mem = XenMem;
    type Page = XenMem;

    fn map_grant(
        &mut self,
        dom: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<Mapping<XenMem>, XenError> {
        let op = XenOp::GrantMap {
            dom,
            gref,
            readonly,
        };
        let slot = self
            .env
            .reserve_map_slot()
            .ok_or(XenError::errno(op, errno::ENOMEM))?;
        let mut m = [MapGrantRef {
            host_addr: slot.as_ptr() as u64,
            flags: gntmap::HOST_MAP | if readonly { gntmap::READONLY } else { 0 },
            gref,
            dom,
            status: GntStatus::GENERAL_ERROR,
            handle: GrantHandle(0),
            dev_bus_addr: 0,
        }];
        // SAFETY: `slot` is an address reserved for grant mappings with nothing Rust uses there
        // (`PvEnv::reserve_map_slot` contract).
        let r = unsafe { ops::gnttab_map(&mut m) };
        if let Err(e) = r {
            self.env.release_map_slot(slot);
            return Err(XenError::errno(op, e));
        }
        if !m[0].status.is_ok() {
            self.env.release_map_slot(slot);
            return Err(XenError::grant(op, m[0].status));
        }
        Ok(Mapping {
            // SAFETY: Xen mapped the granted page at `slot` (page-aligned, one page); it stays
            // mapped until `unmap_grant` consumes this mapping.
            mem: unsafe { XenMem::new(slot, PAGE_SIZE) },
            handle: m[0].handle,
            bus_addr: m[0].dev_bus_addr,
            dom,
            gref,
            readonly,
        })
    }

    fn unmap_grant(&mut self, mapping: Mapping<XenMem>) -> Result<(), XenError> {
        let op = XenOp::GrantUnmap {
            handle: mapping.handle,
        };
        let va = mapping.mem.addr();
        let mut u = [UnmapGrantRef {
            host_addr: va as u64,
            dev_bus_addr: 0,
            handle: mapping.handle,
            status: GntStatus::GENERAL_ERROR,
            pad: [0; 2],
        }];
        // SAFETY: the mapping is consumed here; its memory view is dropped with it.
        unsafe { ops::gnttab_unmap(&mut u) }.map_err(|e| XenError::errno(op, e))?;
        if !u[0].status.is_ok() {
            return Err(XenError::grant(op, u[0].status));
        }
        if let Some(slot) = NonNull::new(va as *mut u8) {
            self.env.release_map_slot(slot);
        }
        Ok(())
    }

    fn grant_copy(&mut self, ops_in: &mut [CopyOp]) -> Result<(), XenError> {
        for chunk in ops_in.chunks_mut(COPY_BATCH) {
            let mut batch: [GnttabCopy; COPY_BATCH] = [GnttabCopy {
                source: grant::CopyPtr {
                    u: 0,
                    domid: DomId::SELF,
                    offset: 0,
                    pad: [0; 4],
                },
                dest: grant::CopyPtr {
                    u: 0,
                    domid: DomId::SELF,
                    offset: 0,
                    pad: [0; 4],
                },
                len: 0,
                flags: 0,
                status: GntStatus::GENERAL_ERROR,
                pad: [0; 2],
            }; COPY_BATCH];
            for (b, o) in batch.iter_mut().zip(chunk.iter()) {
                let (src, sg) = copy_ptr(o.src);
                let (dst, dg) = copy_ptr(o.dst);
                b.source = src;
                b.dest = dst;
                b.len = o.len;
                b.flags = if sg == 1 { gntcopy::SOURCE_GREF } else { 0 }
                    | if dg == 1 { gntcopy::DEST_GREF } else { 0 };
            }
            let n = chunk.len();
            // SAFETY: local frames named in copy ops are the caller's pages (from `alloc_page`);
            // Xen checks grant permissions for the foreign side.
            unsafe { ops::gnttab_copy(&mut batch[..n]) }
                .map_err(|e| XenError::errno(XenOp::GrantCopy, e))?;
            for (o, b) in chunk.iter_mut().zip(batch.iter()) {
                o.status = b.status;
            }
        }
        Ok(())
    }

    fn alloc_page(&mut self) -> Result<LocalPage<XenMem>, XenError> {
        let (va, mfn) = self
            .env
            .alloc_page()
            .ok_or(XenError::errno(XenOp::AllocPage, errno::ENOMEM))?;
        Ok(LocalPage {
            // SAFETY: a fresh page of ours, page-aligned, mapped until `free_page`.
            mem: unsafe { XenMem::new(va, PAGE_SIZE) },
            frame: mfn,
            bus_addr: mfn << 12,
        })
    }

    fn free_page(&mut self, page: LocalPage<XenMem>) {
        if let Some(va) = NonNull::new(page.mem.addr() as *mut u8) {
            // SAFETY: the page came from `alloc_page` and its only view is consumed here; the
            // trait contract says it is no longer granted.
            unsafe { self.env.free_page(va, page.frame) };
        }
    }

    fn grant_access(
        &mut self,
        frame: u64,
        to: DomId,
        readonly: bool,
    ) -> Result<GrantRef, XenError> {
        self.gnttab
            .grant(frame, to, readonly)
            .map_err(|e| gnt_err(XenOp::GrantAccess { to }, e))
    }

    fn end_access(&mut self, gref: GrantRef) -> Result<(), XenError> {
        self.gnttab
            .end(gref)
            .map_err(|e| gnt_err(XenOp::GrantEndAccess { gref }, e))
    }

    fn grant_in_use(&self, gref: GrantRef) -> bool {
        self.gnttab.in_use(gref)
    }

    fn evtchn_alloc_unbound(&mut self, remote: DomId) -> Result<Port, XenError> {
        let port = ops::evtchn_alloc_unbound(remote)
            .map_err(|e| XenError::errno(XenOp::EvtchnAllocUnbound { remote }, e))?;
        self.watch_port(port);
        Ok(port)
    }

    fn evtchn_bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: Port,
    ) -> Result<Port, XenError> {
        let port = ops::evtchn_bind_interdomain(remote, remote_port).map_err(|e| {
            XenError::errno(
                XenOp::EvtchnBindInterdomain {
                    remote,
                    remote_port,
                },
                e,
            )
        })?;
        self.watch_port(port);
        Ok(port)
    }

    fn evtchn_send(&mut self, port: Port) -> Result<(), XenError> {
        ops::evtchn_send(port).map_err(|e| XenError::errno(XenOp::EvtchnSend { port }, e))
    }

    fn evtchn_unmask(&mut self, port: Port) -> Result<(), XenError> {
        ops::evtchn_unmask(port).map_err(|e| XenError::errno(XenOp::EvtchnUnmask { port }, e))
    }

    fn evtchn_close(&mut self, port: Port) -> Result<(), XenError> {
        self.unwatch_port(port);
        ops::evtchn_close(port).map_err(|e| XenError::errno(XenOp::EvtchnClose { port }, e))
    }

    /// Reports the pending, unmasked ports among those this object knows (see
    /// [`XenHypervisor::watch_port`]); other ports' bits are left to their owners.
    fn take_pending(&mut self, f: &mut dyn FnMut(Port)) {
        for i in 0..self.ports.len() {
            let port = self.ports[i];
            if !self.events.is_masked(port) && self.events.test_and_clear(port) {
                f(port);
            }
        }
    }

    fn now_ns(&self) -> u64 {
        self.env.now_ns()
    }

    fn block(&mut self, deadline_ns: Option<u64>) -> Result<(), XenError> {
        let n = self.ports.len().min(MAX_POLL_PORTS);
        let ports: Vec<Port> = self.ports[..n].to_vec();
        self.poll(&ports, deadline_ns).map_err(|e| XenError {
            op: XenOp::Block,
            ..e
        })
    }

    fn poll(&mut self, ports: &[Port], deadline_ns: Option<u64>) -> Result<(), XenError> {
        if ports.len() > MAX_POLL_PORTS {
            return Err(XenError::errno(XenOp::Poll, errno::EINVAL));
        }
        // 0 means "no timeout" to Xen; a deadline of exactly 0 has passed already.
        let timeout = match deadline_ns {
            Some(0) => 1,
            Some(d) => d,
            None => 0,
        };
        ops::sched_poll(ports, timeout).map_err(|e| XenError::errno(XenOp::Poll, e))
    }

    fn xenstore_page(&self) -> &XenMem {
        &self.xs_page
    }

    fn xenstore_port(&self) -> Port {
        self.xs_port
    }
}
