//! [`SharedHv`]: the backend's [`Hypervisor`] when the kernel shares one hypervisor object between
//! several users (pcifront, the platform, the backend) in an `Rc<RefCell<…>>`.
//!
//! Each call borrows the shared object for the duration of that call only, through a projection
//! from the shared state to the hypervisor (`|ctx| &mut ctx.hv`). The owner must therefore not
//! hold a borrow of the shared state while it calls into the backend. The xenstore page view, which
//! the trait returns by reference, is a separate view the owner hands over at construction (the
//! backend itself does not use it).

use alloc::rc::Rc;
use core::cell::RefCell;

use alloc::vec::Vec;
use xenidc::abi::{DomId, GrantRef, Port};
use xenidc::hypervisor::{CopyOp, Hypervisor, LocalPage, MapRequest, MapResult, Mapping, XenError};

/// A [`Hypervisor`] that lives inside shared state `T`.
pub struct SharedHv<T, H: Hypervisor> {
    cell: Rc<RefCell<T>>,
    get: fn(&T) -> &H,
    get_mut: fn(&mut T) -> &mut H,
    xs_page: H::Page,
    xs_port: Port,
}

impl<T, H: Hypervisor> SharedHv<T, H> {
    /// `get`/`get_mut` project the shared state to the hypervisor; `xs_page`/`xs_port` are what
    /// [`Hypervisor::xenstore_page`]/[`Hypervisor::xenstore_port`] answer.
    pub fn new(
        cell: Rc<RefCell<T>>,
        get: fn(&T) -> &H,
        get_mut: fn(&mut T) -> &mut H,
        xs_page: H::Page,
        xs_port: Port,
    ) -> Self {
        SharedHv {
            cell,
            get,
            get_mut,
            xs_page,
            xs_port,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut H) -> R) -> R {
        let mut t = self.cell.borrow_mut();
        f((self.get_mut)(&mut t))
    }
}

impl<T, H: Hypervisor> Hypervisor for SharedHv<T, H> {
    type Mem = H::Mem;
    type Page = H::Page;

    fn map_grant(
        &mut self,
        dom: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<Mapping<H::Mem>, XenError> {
        self.with(|h| h.map_grant(dom, gref, readonly))
    }
    fn unmap_grant(&mut self, mapping: Mapping<H::Mem>) -> Result<(), XenError> {
        self.with(|h| h.unmap_grant(mapping))
    }
    fn map_grants(&mut self, reqs: &[MapRequest], out: &mut Vec<MapResult<H::Mem>>) {
        self.with(|h| h.map_grants(reqs, out))
    }
    fn unmap_grants<I>(&mut self, mappings: I) -> Result<(), XenError>
    where
        I: IntoIterator<Item = Mapping<H::Mem>>,
    {
        self.with(|h| h.unmap_grants(mappings))
    }
    fn grant_copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError> {
        self.with(|h| h.grant_copy(ops))
    }
    fn alloc_page(&mut self) -> Result<LocalPage<H::Page>, XenError> {
        self.with(|h| h.alloc_page())
    }
    fn free_page(&mut self, page: LocalPage<H::Page>) {
        self.with(|h| h.free_page(page))
    }
    fn grant_access(
        &mut self,
        frame: u64,
        to: DomId,
        readonly: bool,
    ) -> Result<GrantRef, XenError> {
        self.with(|h| h.grant_access(frame, to, readonly))
    }
    fn end_access(&mut self, gref: GrantRef) -> Result<(), XenError> {
        self.with(|h| h.end_access(gref))
    }
    fn grant_in_use(&self, gref: GrantRef) -> bool {
        (self.get)(&self.cell.borrow()).grant_in_use(gref)
    }
    fn evtchn_alloc_unbound(&mut self, remote: DomId) -> Result<Port, XenError> {
        self.with(|h| h.evtchn_alloc_unbound(remote))
    }
    fn evtchn_bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: Port,
    ) -> Result<Port, XenError> {
        self.with(|h| h.evtchn_bind_interdomain(remote, remote_port))
    }
    fn evtchn_send(&mut self, port: Port) -> Result<(), XenError> {
        self.with(|h| h.evtchn_send(port))
    }
    fn evtchn_unmask(&mut self, port: Port) -> Result<(), XenError> {
        self.with(|h| h.evtchn_unmask(port))
    }
    fn evtchn_close(&mut self, port: Port) -> Result<(), XenError> {
        self.with(|h| h.evtchn_close(port))
    }
    fn take_pending(&mut self, f: &mut dyn FnMut(Port)) {
        self.with(|h| h.take_pending(f))
    }
    fn now_ns(&self) -> u64 {
        (self.get)(&self.cell.borrow()).now_ns()
    }
    fn block(&mut self, deadline_ns: Option<u64>) -> Result<(), XenError> {
        self.with(|h| h.block(deadline_ns))
    }
    fn poll(&mut self, ports: &[Port], deadline_ns: Option<u64>) -> Result<(), XenError> {
        self.with(|h| h.poll(ports, deadline_ns))
    }
    fn xenstore_page(&self) -> &H::Page {
        &self.xs_page
    }
    fn xenstore_port(&self) -> Port {
        self.xs_port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenidc::shm::HostMem;
    use xenidc::sim::{Sim, SimDomain};

    struct Ctx {
        hv: SimDomain,
        other_users: u32,
    }

    type Shared = SharedHv<Ctx, SimDomain>;

    /// A simulator with a frontend (domain 5) and the backend's hypervisor (domain 1) inside a
    /// shared context, reached through a [`SharedHv`].
    fn shared() -> (Sim, SimDomain, Rc<RefCell<Ctx>>, Shared) {
        let sim = Sim::new();
        let fe = sim.add_domain(DomId(5));
        let ctx = Rc::new(RefCell::new(Ctx {
            hv: sim.add_domain(DomId(1)),
            other_users: 0,
        }));
        let hv = SharedHv::new(
            ctx.clone(),
            |c| &c.hv,
            |c| &mut c.hv,
            HostMem::page(),
            Port(1),
        );
        (sim, fe, ctx, hv)
    }

    #[test]
    fn borrows_per_call_and_reaches_the_shared_hypervisor() {
        let (sim, fe, ctx, mut hv) = shared();
        let p = hv.alloc_page().unwrap();
        let g = hv.grant_access(p.frame, DomId(5), false).unwrap();
        // Someone else uses the shared state between the backend's calls.
        ctx.borrow_mut().other_users += 1;
        let mut fe2 = fe.clone();
        let m = fe2.map_grant(DomId(1), g, false).unwrap();
        assert!(hv.grant_in_use(g));
        assert_eq!(sim.stats(DomId(1)).grants_active, 1);
        fe2.unmap_grant(m).unwrap();
        hv.end_access(g).unwrap();
        hv.free_page(p);
        assert_eq!(sim.stats(DomId(1)).pages, 0);
        assert_eq!(hv.xenstore_port(), Port(1));
        assert_eq!(hv.now_ns(), sim.now_ns());
        assert_eq!(ctx.borrow().other_users, 1);
    }

    #[test]
    fn batches_reach_the_shared_hypervisor_as_one_call_each() {
        let (sim, mut fe, _ctx, mut hv) = shared();
        let reqs: Vec<MapRequest> = (0..3)
            .map(|_| {
                let p = fe.alloc_page().unwrap();
                MapRequest {
                    dom: DomId(5),
                    gref: fe.grant_access(p.frame, DomId(1), false).unwrap(),
                    readonly: false,
                }
            })
            .collect();
        let mut out = Vec::new();
        hv.map_grants(&reqs, &mut out);
        let maps: Vec<_> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(maps.len(), 3);
        hv.unmap_grants(maps).unwrap();
        let s = sim.stats(DomId(1));
        assert_eq!((s.map_calls, s.unmap_calls), (1, 1));
        assert_eq!((s.maps_total, s.unmaps_total, s.foreign_maps), (3, 3, 0));
    }
}
