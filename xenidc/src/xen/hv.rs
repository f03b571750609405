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
use crate::hypervisor::{
    CopyOp, CopyPtr, Hypervisor, LocalPage, MapRequest, MapResult, Mapping, XenError, XenOp,
};
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
    stats: GrantStats,
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
            stats: GrantStats::default(),
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

    /// Grant hypercalls made so far and the time spent in them.
    pub fn grant_stats(&self) -> GrantStats {
        self.stats
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
const COPY_BATCH: usize = 64;

/// Grant maps or unmaps per hypercall (the batch lives on the stack): one request's segments.
const MAP_BATCH: usize = 16;

const NO_MAP: MapGrantRef = MapGrantRef {
    host_addr: 0,
    flags: 0,
    gref: GrantRef(0),
    dom: DomId::SELF,
    status: GntStatus::GENERAL_ERROR,
    handle: GrantHandle(0),
    dev_bus_addr: 0,
};

const NO_UNMAP: UnmapGrantRef = UnmapGrantRef {
    host_addr: 0,
    dev_bus_addr: 0,
    handle: GrantHandle(0),
    status: GntStatus::GENERAL_ERROR,
    pad: [0; 2],
};

/// Grant hypercalls this object made and the Xen system time spent in them (for the loop's
/// statistics line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantStats {
    pub map_calls: u64,
    pub maps: u64,
    pub map_ns: u64,
    pub unmap_calls: u64,
    pub unmaps: u64,
    pub unmap_ns: u64,
    pub copy_calls: u64,
    pub copies: u64,
    pub copy_ns: u64,
}

impl<E: PvEnv> XenHypervisor<E> {
    /// Map up to [`MAP_BATCH`] grants with one hypercall; `push` gets one result per request, in
    /// order (see [`Hypervisor::map_grants`]).
    fn map_chunk(&mut self, chunk: &[MapRequest], push: &mut dyn FnMut(MapResult<XenMem>)) {
        debug_assert!(chunk.len() <= MAP_BATCH, "callers chunk by MAP_BATCH");
        let mut batch = [NO_MAP; MAP_BATCH];
        // Position of each request of the chunk in `batch` (None: no slot for it).
        let mut pos: [Option<usize>; MAP_BATCH] = [None; MAP_BATCH];
        let mut n = 0;
        for (i, r) in chunk.iter().enumerate() {
            if let Some(slot) = self.env.reserve_map_slot() {
                batch[n] = MapGrantRef {
                    host_addr: slot.as_ptr() as u64,
                    flags: gntmap::HOST_MAP | if r.readonly { gntmap::READONLY } else { 0 },
                    gref: r.gref,
                    dom: r.dom,
                    status: GntStatus::GENERAL_ERROR,
                    handle: GrantHandle(0),
                    dev_bus_addr: 0,
                };
                pos[i] = Some(n);
                n += 1;
            }
        }
        let r = if n == 0 {
            Ok(())
        } else {
            let t0 = self.env.now_ns();
            // SAFETY: every `host_addr` is a slot reserved for grant mappings with nothing
            // Rust uses there (`PvEnv::reserve_map_slot` contract).
            let r = unsafe { ops::gnttab_map(&mut batch[..n]) };
            self.stats.map_calls += 1;
            self.stats.maps += n as u64;
            self.stats.map_ns += self.env.now_ns().saturating_sub(t0);
            r
        };
        for (i, req) in chunk.iter().enumerate() {
            let op = XenOp::GrantMap {
                dom: req.dom,
                gref: req.gref,
                readonly: req.readonly,
            };
            let Some(p) = pos[i] else {
                push(Err(XenError::errno(op, errno::ENOMEM)));
                continue;
            };
            let m = &batch[p];
            let slot = NonNull::new(m.host_addr as *mut u8);
            match (m.status.is_ok(), slot) {
                (true, Some(slot)) => push(Ok(Mapping {
                    // SAFETY: Xen mapped the granted page at `slot` (page-aligned, one
                    // page); it stays mapped until `unmap_grants` consumes this mapping.
                    mem: unsafe { XenMem::new(slot, PAGE_SIZE) },
                    handle: m.handle,
                    bus_addr: m.dev_bus_addr,
                    dom: req.dom,
                    gref: req.gref,
                    readonly: req.readonly,
                })),
                (_, slot) => {
                    if let Some(slot) = slot {
                        self.env.release_map_slot(slot);
                    }
                    push(Err(match r {
                        Err(e) => XenError::errno(op, e),
                        Ok(()) => XenError::grant(op, m.status),
                    }));
                }
            }
        }
    }
}

impl<E: PvEnv> Hypervisor for XenHypervisor<E> {
    type Mem = XenMem;
    type Page = XenMem;

    fn map_grant(
        &mut self,
        dom: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<Mapping<XenMem>, XenError> {
        let req = MapRequest {
            dom,
            gref,
            readonly,
        };
        let mut res = Err(XenError::errno(
            XenOp::GrantMap {
                dom,
                gref,
                readonly,
            },
            errno::EINVAL,
        ));
        self.map_chunk(&[req], &mut |r| res = r);
        res
    }

    fn unmap_grant(&mut self, mapping: Mapping<XenMem>) -> Result<(), XenError> {
        self.unmap_grants(core::iter::once(mapping))
    }

    /// One `GNTTABOP_map_grant_ref` per [`MAP_BATCH`] requests. Each entry gets its own address
    /// slot; an entry that fails (no slot, or a bad status) gives its slot back. If the hypercall
    /// itself fails, the entries Xen finished before it stopped (status `GNTST_okay`) are still
    /// mappings; the others fail with the hypercall's errno.
    fn map_grants(&mut self, reqs: &[MapRequest], out: &mut Vec<MapResult<XenMem>>) {
        for chunk in reqs.chunks(MAP_BATCH) {
            self.map_chunk(chunk, &mut |r| out.push(r));
        }
    }

    /// One `GNTTABOP_unmap_grant_ref` per [`MAP_BATCH`] mappings (Xen flushes the TLB once per
    /// call). An entry whose unmap failed keeps its address slot (something may still be mapped
    /// there); the others give theirs back.
    fn unmap_grants<I>(&mut self, mappings: I) -> Result<(), XenError>
    where
        I: IntoIterator<Item = Mapping<XenMem>>,
    {
        let mut first = None;
        let mut it = mappings.into_iter();
        loop {
            let mut batch = [NO_UNMAP; MAP_BATCH];
            let mut n = 0;
            for m in it.by_ref().take(MAP_BATCH) {
                // The mapping's memory view is dropped here, before the page goes.
                batch[n] = UnmapGrantRef {
                    host_addr: m.mem.addr() as u64,
                    dev_bus_addr: 0,
                    handle: m.handle,
                    status: GntStatus::GENERAL_ERROR,
                    pad: [0; 2],
                };
                n += 1;
            }
            if n == 0 {
                break;
            }
            let t0 = self.env.now_ns();
            // SAFETY: the mappings were consumed above; no view of their pages remains.
            let r = unsafe { ops::gnttab_unmap(&mut batch[..n]) };
            self.stats.unmap_calls += 1;
            self.stats.unmaps += n as u64;
            self.stats.unmap_ns += self.env.now_ns().saturating_sub(t0);
            for u in &batch[..n] {
                if u.status.is_ok() {
                    if let Some(slot) = NonNull::new(u.host_addr as *mut u8) {
                        self.env.release_map_slot(slot);
                    }
                } else {
                    let op = XenOp::GrantUnmap { handle: u.handle };
                    first.get_or_insert(match r {
                        Err(e) => XenError::errno(op, e),
                        Ok(()) => XenError::grant(op, u.status),
                    });
                }
            }
            if n < MAP_BATCH {
                break;
            }
        }
        first.map_or(Ok(()), Err)
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
            let t0 = self.env.now_ns();
            // SAFETY: local frames named in copy ops are the caller's pages (from `alloc_page`);
            // Xen checks grant permissions for the foreign side.
            let r = unsafe { ops::gnttab_copy(&mut batch[..n]) };
            self.stats.copy_calls += 1;
            self.stats.copies += n as u64;
            self.stats.copy_ns += self.env.now_ns().saturating_sub(t0);
            r.map_err(|e| XenError::errno(XenOp::GrantCopy, e))?;
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
