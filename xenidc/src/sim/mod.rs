//! The simulated hypervisor: several domains in one process, for host tests.
//!
//! It models what the inter-domain layer relies on, with Xen's rules (`xen/common/grant_table.c`,
//! `xen/common/event_channel.c`):
//! - **grant tables** (v1 semantics): a domain grants one of its frames to one other domain,
//!   read-only or writable; a map by the wrong domain, of a revoked or never-made grant, or a
//!   writable map of a read-only grant fails; every mapping is counted, and revoking a grant that
//!   is still mapped fails (`EBUSY`) and leaves the entry valid, as on Xen; grant copy checks the
//!   same permissions plus the page bounds;
//! - **event channels**: unbound ports, interdomain binding, send (sets the peer's pending bit),
//!   unmask, close (the peer's end becomes unbound again), and pending-port delivery;
//! - **domain death** ([`Sim::destroy_domain`]): the domain's ports are closed and its mappings of
//!   other domains' grants are released, as Xen does when it tears a domain down;
//! - **xenstore**: every domain has a xenstore ring page and port; a send on that port is handed to
//!   a pluggable [`XenstoreService`] (the simulated xenstore server of `crate::xenstore`).
//!
//! Counters ([`DomStats`]) let tests prove that a connection torn down at any moment leaves no
//! grants mapped, no pages granted and no ports open, and that grant maps and unmaps are batched
//! (a [`Hypervisor::map_grants`]/[`Hypervisor::unmap_grants`] batch counts as one hypercall).
//!
//! The simulation is single-threaded and deterministic: [`Hypervisor::block`] never waits; it
//! advances the virtual clock to the deadline when nothing is pending.

use crate::abi::errno;
use crate::abi::grant::GntStatus;
use crate::abi::{DomId, GrantHandle, GrantRef, Port, PAGE_SIZE};
use crate::hypervisor::{
    CopyOp, CopyPtr, Hypervisor, LocalPage, MapRequest, MapResult, Mapping, XenError, XenOp,
};
use crate::shm::{HostMem, SharedMem};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Limits of each simulated domain.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Grant-table entries (the first [`crate::abi::grant::NR_RESERVED_ENTRIES`] are reserved).
    pub grant_entries: u32,
    /// Maximum simultaneous mappings of foreign grants (maptrack entries).
    pub max_maps: u32,
    /// Maximum event-channel ports.
    pub max_ports: u32,
    /// Maximum pages [`Hypervisor::alloc_page`] hands out.
    pub max_pages: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            grant_entries: 2048,
            max_maps: 1024,
            max_ports: 1024,
            max_pages: 4096,
        }
    }
}

/// Counters of one simulated domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomStats {
    /// Grant entries this domain currently has active (granted, not revoked).
    pub grants_active: u32,
    /// Of those, entries currently mapped by some domain.
    pub grants_mapped_by_others: u32,
    /// Mappings this domain holds of other domains' grants.
    pub foreign_maps: u32,
    /// Ports not free (unbound or bound).
    pub ports_open: u32,
    /// Pages allocated and not freed (the xenstore page excluded).
    pub pages: u32,
    /// Totals since creation.
    pub maps_total: u64,
    pub unmaps_total: u64,
    pub copies_total: u64,
    pub sends_total: u64,
    pub map_failures: u64,
    /// Simulated map and unmap hypercalls (a batch is one call, as on Xen).
    pub map_calls: u64,
    pub unmap_calls: u64,
    /// Simulated grant-copy hypercalls (a batch is one call).
    pub copy_calls: u64,
}

/// The simulated xenstore server, plugged in with [`Sim::set_xenstore_service`]
/// ([`xenstored::RingXenstored`] is the real one).
pub trait XenstoreService {
    /// Domain `dom` notified its xenstore port; `page` is its ring page. Process what is there;
    /// call `notify(d)` for every domain whose ring received output.
    fn kick(&mut self, dom: DomId, page: &HostMem, notify: &mut dyn FnMut(DomId));
}

#[derive(Debug, Clone)]
struct GrantEntry {
    frame: u64,
    to: DomId,
    readonly: bool,
    maps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortState {
    Free,
    Unbound { remote: DomId },
    Interdomain { remote: DomId, remote_port: Port },
    Xenstore,
}

#[derive(Debug, Clone, Copy)]
struct PortSlot {
    state: PortState,
    pending: bool,
    masked: bool,
}

const FREE_PORT: PortSlot = PortSlot {
    state: PortState::Free,
    pending: false,
    masked: false,
};

#[derive(Debug, Clone)]
struct MapRecord {
    granter: DomId,
    gref: GrantRef,
}

struct Dom {
    alive: bool,
    cfg: SimConfig,
    pages: BTreeMap<u64, HostMem>,
    grants: Vec<Option<GrantEntry>>,
    maps: BTreeMap<u32, MapRecord>,
    next_handle: u32,
    ports: Vec<PortSlot>,
    xs_page: HostMem,
    xs_port: Port,
    /// Ports whose pending bit may be set (a superset), so delivery does not scan every port.
    maybe_pending: BTreeSet<u32>,
    stats: DomStats,
}

struct World {
    doms: BTreeMap<u16, Dom>,
    next_frame: u64,
    now_ns: u64,
}

impl World {
    fn dom(&mut self, id: DomId) -> Option<&mut Dom> {
        self.doms.get_mut(&id.0).filter(|d| d.alive)
    }

    /// Resolve `granter`'s grant `gref` for use by `user`; returns the page.
    fn check_grant(
        &mut self,
        user: DomId,
        granter: DomId,
        gref: GrantRef,
        write: bool,
    ) -> Result<HostMem, GntStatus> {
        let g = self
            .doms
            .get(&granter.0)
            .filter(|d| d.alive)
            .ok_or(GntStatus::BAD_DOMAIN)?;
        let e = g
            .grants
            .get(gref.0 as usize)
            .ok_or(GntStatus::BAD_GNTREF)?
            .as_ref()
            .ok_or(GntStatus::GENERAL_ERROR)?;
        if e.to != user || (write && e.readonly) {
            return Err(GntStatus::GENERAL_ERROR);
        }
        g.pages.get(&e.frame).cloned().ok_or(GntStatus::BAD_PAGE)
    }

    fn release_mapping(&mut self, granter: DomId, gref: GrantRef) {
        if let Some(g) = self.doms.get_mut(&granter.0) {
            if let Some(Some(e)) = g.grants.get_mut(gref.0 as usize) {
                e.maps = e.maps.saturating_sub(1);
            }
        }
    }

    fn set_pending(&mut self, dom: DomId, port: Port) {
        if let Some(d) = self.dom(dom) {
            if let Some(p) = d.ports.get_mut(port.0 as usize) {
                if p.state != PortState::Free {
                    p.pending = true;
                    d.maybe_pending.insert(port.0);
                }
            }
        }
    }

    /// Close `port` of `dom`; the other end of an interdomain channel becomes unbound.
    fn close_port(&mut self, dom: DomId, port: Port) -> bool {
        let Some(d) = self.doms.get_mut(&dom.0) else {
            return false;
        };
        let Some(slot) = d.ports.get_mut(port.0 as usize) else {
            return false;
        };
        let old = slot.state;
        if matches!(old, PortState::Free | PortState::Xenstore) {
            return false;
        }
        *slot = FREE_PORT;
        if let PortState::Interdomain {
            remote,
            remote_port,
        } = old
        {
            if let Some(r) = self.doms.get_mut(&remote.0) {
                if let Some(rs) = r.ports.get_mut(remote_port.0 as usize) {
                    if rs.state
                        == (PortState::Interdomain {
                            remote: dom,
                            remote_port: port,
                        })
                    {
                        rs.state = PortState::Unbound { remote: dom };
                    }
                }
            }
        }
        true
    }
}

/// The simulated machine. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Sim {
    world: Rc<RefCell<World>>,
    xenstore: Rc<RefCell<Option<Box<dyn XenstoreService>>>>,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    pub fn new() -> Sim {
        Sim {
            world: Rc::new(RefCell::new(World {
                doms: BTreeMap::new(),
                next_frame: 0x1000,
                now_ns: 0,
            })),
            xenstore: Rc::new(RefCell::new(None)),
        }
    }

    /// Create domain `id` with default limits and return its hypervisor handle.
    pub fn add_domain(&self, id: DomId) -> SimDomain {
        self.add_domain_with(id, SimConfig::default())
    }

    /// Create domain `id` with the given limits. Re-creating a destroyed domain id starts afresh.
    pub fn add_domain_with(&self, id: DomId, cfg: SimConfig) -> SimDomain {
        let mut w = self.world.borrow_mut();
        let mut ports = vec![FREE_PORT; cfg.max_ports.max(2) as usize];
        ports[1] = PortSlot {
            state: PortState::Xenstore,
            pending: false,
            masked: false,
        };
        let dom = Dom {
            alive: true,
            cfg,
            pages: BTreeMap::new(),
            grants: vec![None; cfg.grant_entries as usize],
            maps: BTreeMap::new(),
            next_handle: 1,
            ports,
            xs_page: HostMem::page(),
            xs_port: Port(1),
            maybe_pending: BTreeSet::new(),
            stats: DomStats::default(),
        };
        w.doms.insert(id.0, dom);
        drop(w);
        SimDomain {
            sim: self.clone(),
            id,
            xs_page: self.xs_page(id),
        }
    }

    fn xs_page(&self, id: DomId) -> HostMem {
        self.world.borrow().doms[&id.0].xs_page.clone()
    }

    /// The domain dies: its ports are closed (peers' ends become unbound) and its mappings of other
    /// domains' grants are released. Its own grants stay valid for peers that still map them, until
    /// they unmap (as Xen keeps a dying domain's granted pages alive).
    pub fn destroy_domain(&self, id: DomId) {
        let mut w = self.world.borrow_mut();
        let Some(d) = w.doms.get_mut(&id.0) else {
            return;
        };
        d.alive = false;
        let nports = d.ports.len();
        let maps: Vec<MapRecord> = core::mem::take(&mut d.maps).into_values().collect();
        d.stats.foreign_maps = 0;
        for p in 0..nports {
            w.close_port(id, Port(p as u32));
        }
        for m in maps {
            w.release_mapping(m.granter, m.gref);
        }
    }

    /// Counters of domain `id` (zero if it does not exist).
    pub fn stats(&self, id: DomId) -> DomStats {
        let w = self.world.borrow();
        let Some(d) = w.doms.get(&id.0) else {
            return DomStats::default();
        };
        let mut s = d.stats;
        s.grants_active = d.grants.iter().filter(|g| g.is_some()).count() as u32;
        s.grants_mapped_by_others = d
            .grants
            .iter()
            .filter(|g| g.as_ref().is_some_and(|e| e.maps > 0))
            .count() as u32;
        s.foreign_maps = d.maps.len() as u32;
        s.ports_open = d
            .ports
            .iter()
            .filter(|p| !matches!(p.state, PortState::Free | PortState::Xenstore))
            .count() as u32;
        s.pages = d.pages.len() as u32;
        s
    }

    /// Virtual system time.
    pub fn now_ns(&self) -> u64 {
        self.world.borrow().now_ns
    }

    /// Advance the virtual clock.
    pub fn advance_ns(&self, ns: u64) {
        let mut w = self.world.borrow_mut();
        w.now_ns = w.now_ns.saturating_add(ns);
    }

    /// True if domain `id` has a pending unmasked port.
    pub fn has_pending(&self, id: DomId) -> bool {
        let w = self.world.borrow();
        w.doms.get(&id.0).is_some_and(|d| {
            d.maybe_pending.iter().any(|&i| {
                d.ports
                    .get(i as usize)
                    .is_some_and(|p| p.pending && !p.masked)
            })
        })
    }

    /// Plug in the simulated xenstore server.
    pub fn set_xenstore_service(&self, service: Box<dyn XenstoreService>) {
        *self.xenstore.borrow_mut() = Some(service);
    }

    /// Notify domain `id` on its xenstore port (the server has put replies or watch events on
    /// its ring).
    pub fn notify_xenstore_client(&self, id: DomId) {
        let mut w = self.world.borrow_mut();
        if let Some(d) = w.dom(id) {
            let p = d.xs_port.0 as usize;
            d.ports[p].pending = true;
            d.maybe_pending.insert(p as u32);
        }
    }

    /// Test hook for hostile peers: overwrite (or create, with `to`) grant entry `gref` of
    /// domain `id`, bypassing the normal API.
    pub fn poke_grant(&self, id: DomId, gref: GrantRef, to: Option<(u64, DomId, bool)>) {
        let mut w = self.world.borrow_mut();
        if let Some(d) = w.doms.get_mut(&id.0) {
            if let Some(slot) = d.grants.get_mut(gref.0 as usize) {
                *slot = to.map(|(frame, to, readonly)| GrantEntry {
                    frame,
                    to,
                    readonly,
                    maps: 0,
                });
            }
        }
    }
}

/// The [`Hypervisor`] of one simulated domain.
#[derive(Clone)]
pub struct SimDomain {
    sim: Sim,
    id: DomId,
    xs_page: HostMem,
}

impl core::fmt::Debug for SimDomain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SimDomain({})", self.id)
    }
}

impl SimDomain {
    /// This domain's id.
    pub fn id(&self) -> DomId {
        self.id
    }
    /// The machine this domain lives in.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }
    /// This domain's counters.
    pub fn stats(&self) -> DomStats {
        self.sim.stats(self.id)
    }

    fn with<R>(
        &self,
        op: XenOp,
        f: impl FnOnce(&mut World, DomId) -> Result<R, XenError>,
    ) -> Result<R, XenError> {
        let mut w = self.sim.world.borrow_mut();
        if w.dom(self.id).is_none() {
            return Err(XenError::errno(op, errno::ESRCH));
        }
        f(&mut w, self.id)
    }
}

impl Hypervisor for SimDomain {
    type Mem = HostMem;
    type Page = HostMem;

    fn map_grant(
        &mut self,
        dom: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<Mapping<HostMem>, XenError> {
        let op = XenOp::GrantMap {
            dom,
            gref,
            readonly,
        };
        self.with(op, |w, me| {
            w.dom(me).unwrap().stats.map_calls += 1;
            map_one(w, me, dom, gref, readonly)
        })
    }

    fn unmap_grant(&mut self, mapping: Mapping<HostMem>) -> Result<(), XenError> {
        self.unmap_grants(core::iter::once(mapping))
    }

    /// One simulated hypercall for the whole batch (counted in [`DomStats::map_calls`]); each
    /// entry is checked on its own, as Xen does.
    fn map_grants(&mut self, reqs: &[MapRequest], out: &mut Vec<MapResult<HostMem>>) {
        let mut w = self.sim.world.borrow_mut();
        let me = self.id;
        match w.dom(me) {
            Some(d) => d.stats.map_calls += 1,
            None => {
                for r in reqs {
                    let op = XenOp::GrantMap {
                        dom: r.dom,
                        gref: r.gref,
                        readonly: r.readonly,
                    };
                    out.push(Err(XenError::errno(op, errno::ESRCH)));
                }
                return;
            }
        }
        for r in reqs {
            out.push(map_one(&mut w, me, r.dom, r.gref, r.readonly));
        }
    }

    /// One simulated hypercall for the whole batch (counted in [`DomStats::unmap_calls`]).
    fn unmap_grants<I>(&mut self, mappings: I) -> Result<(), XenError>
    where
        I: IntoIterator<Item = Mapping<HostMem>>,
    {
        let mut w = self.sim.world.borrow_mut();
        let mut first = None;
        let mut counted = false;
        for mapping in mappings {
            let op = XenOp::GrantUnmap {
                handle: mapping.handle,
            };
            let Some(d) = w.doms.get_mut(&self.id.0) else {
                first.get_or_insert(XenError::errno(op, errno::ESRCH));
                continue;
            };
            // A dead domain's mappings were already released; unmapping is then a no-op.
            if !d.alive {
                continue;
            }
            if !counted {
                d.stats.unmap_calls += 1;
                counted = true;
            }
            let Some(rec) = d.maps.remove(&mapping.handle.0) else {
                first.get_or_insert(XenError::grant(op, GntStatus::BAD_HANDLE));
                continue;
            };
            d.stats.unmaps_total += 1;
            w.release_mapping(rec.granter, rec.gref);
        }
        first.map_or(Ok(()), Err)
    }

    fn grant_copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError> {
        self.with(XenOp::GrantCopy, |w, me| {
            w.dom(me).unwrap().stats.copy_calls += 1;
            let mut buf = [0u8; PAGE_SIZE];
            for op in ops.iter_mut() {
                op.status = copy_one(w, me, op, &mut buf);
                w.dom(me).unwrap().stats.copies_total += 1;
            }
            Ok(())
        })
    }

    fn alloc_page(&mut self) -> Result<LocalPage<HostMem>, XenError> {
        self.with(XenOp::AllocPage, |w, me| {
            let frame = w.next_frame;
            let d = w.dom(me).unwrap();
            if d.pages.len() as u32 >= d.cfg.max_pages {
                return Err(XenError::errno(XenOp::AllocPage, errno::ENOMEM));
            }
            let mem = HostMem::page();
            d.pages.insert(frame, mem.clone());
            w.next_frame += 1;
            Ok(LocalPage {
                mem,
                frame,
                bus_addr: frame << 12,
            })
        })
    }

    fn free_page(&mut self, page: LocalPage<HostMem>) {
        let mut w = self.sim.world.borrow_mut();
        if let Some(d) = w.doms.get_mut(&self.id.0) {
            d.pages.remove(&page.frame);
        }
    }

    fn grant_access(
        &mut self,
        frame: u64,
        to: DomId,
        readonly: bool,
    ) -> Result<GrantRef, XenError> {
        let op = XenOp::GrantAccess { to };
        self.with(op, |w, me| {
            let d = w.dom(me).unwrap();
            if !d.pages.contains_key(&frame) {
                return Err(XenError::errno(op, errno::EINVAL));
            }
            let first = crate::abi::grant::NR_RESERVED_ENTRIES as usize;
            let Some(i) = (first..d.grants.len()).find(|&i| d.grants[i].is_none()) else {
                return Err(XenError::errno(op, errno::ENOSPC));
            };
            d.grants[i] = Some(GrantEntry {
                frame,
                to,
                readonly,
                maps: 0,
            });
            Ok(GrantRef(i as u32))
        })
    }

    fn end_access(&mut self, gref: GrantRef) -> Result<(), XenError> {
        let op = XenOp::GrantEndAccess { gref };
        self.with(op, |w, me| {
            let d = w.dom(me).unwrap();
            match d.grants.get_mut(gref.0 as usize) {
                Some(slot @ Some(_)) => {
                    if slot.as_ref().unwrap().maps > 0 {
                        return Err(XenError::errno(op, errno::EBUSY));
                    }
                    *slot = None;
                    Ok(())
                }
                _ => Err(XenError::errno(op, errno::EINVAL)),
            }
        })
    }

    fn grant_in_use(&self, gref: GrantRef) -> bool {
        let w = self.sim.world.borrow();
        w.doms
            .get(&self.id.0)
            .and_then(|d| d.grants.get(gref.0 as usize))
            .and_then(|g| g.as_ref())
            .is_some_and(|e| e.maps > 0)
    }

    fn evtchn_alloc_unbound(&mut self, remote: DomId) -> Result<Port, XenError> {
        let op = XenOp::EvtchnAllocUnbound { remote };
        self.with(op, |w, me| {
            let d = w.dom(me).unwrap();
            let Some(i) = (1..d.ports.len()).find(|&i| d.ports[i].state == PortState::Free) else {
                return Err(XenError::errno(op, errno::ENOSPC));
            };
            d.ports[i] = PortSlot {
                state: PortState::Unbound { remote },
                pending: false,
                masked: false,
            };
            Ok(Port(i as u32))
        })
    }

    fn evtchn_bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: Port,
    ) -> Result<Port, XenError> {
        let op = XenOp::EvtchnBindInterdomain {
            remote,
            remote_port,
        };
        self.with(op, |w, me| {
            let ok = w
                .dom(remote)
                .and_then(|r| r.ports.get(remote_port.0 as usize))
                .is_some_and(|p| p.state == PortState::Unbound { remote: me });
            if !ok {
                return Err(XenError::errno(op, errno::EINVAL));
            }
            let d = w.dom(me).unwrap();
            let Some(i) = (1..d.ports.len()).find(|&i| d.ports[i].state == PortState::Free) else {
                return Err(XenError::errno(op, errno::ENOSPC));
            };
            let local = Port(i as u32);
            // Binding raises an event on the new local port, as Xen does.
            d.ports[i] = PortSlot {
                state: PortState::Interdomain {
                    remote,
                    remote_port,
                },
                pending: true,
                masked: false,
            };
            d.maybe_pending.insert(i as u32);
            let r = w.dom(remote).unwrap();
            r.ports[remote_port.0 as usize].state = PortState::Interdomain {
                remote: me,
                remote_port: local,
            };
            Ok(local)
        })
    }

    fn evtchn_send(&mut self, port: Port) -> Result<(), XenError> {
        let op = XenOp::EvtchnSend { port };
        let xenstore_kick = self.with(op, |w, me| {
            let d = w.dom(me).unwrap();
            let Some(slot) = d.ports.get(port.0 as usize).copied() else {
                return Err(XenError::errno(op, errno::EINVAL));
            };
            d.stats.sends_total += 1;
            match slot.state {
                PortState::Free => Err(XenError::errno(op, errno::EINVAL)),
                PortState::Unbound { .. } => Ok(false),
                PortState::Interdomain {
                    remote,
                    remote_port,
                } => {
                    w.set_pending(remote, remote_port);
                    Ok(false)
                }
                PortState::Xenstore => Ok(true),
            }
        })?;
        if xenstore_kick {
            let mut to_notify = Vec::new();
            if let Some(s) = self.sim.xenstore.borrow_mut().as_mut() {
                s.kick(self.id, &self.xs_page, &mut |d| to_notify.push(d));
            }
            for d in to_notify {
                self.sim.notify_xenstore_client(d);
            }
        }
        Ok(())
    }

    fn evtchn_unmask(&mut self, port: Port) -> Result<(), XenError> {
        let op = XenOp::EvtchnUnmask { port };
        self.with(op, |w, me| {
            match w.dom(me).unwrap().ports.get_mut(port.0 as usize) {
                Some(p) if p.state != PortState::Free => {
                    p.masked = false;
                    Ok(())
                }
                _ => Err(XenError::errno(op, errno::EINVAL)),
            }
        })
    }

    fn evtchn_close(&mut self, port: Port) -> Result<(), XenError> {
        let op = XenOp::EvtchnClose { port };
        self.with(op, |w, me| {
            if w.close_port(me, port) {
                Ok(())
            } else {
                Err(XenError::errno(op, errno::EINVAL))
            }
        })
    }

    fn take_pending(&mut self, f: &mut dyn FnMut(Port)) {
        let mut ready = Vec::new();
        {
            let mut w = self.sim.world.borrow_mut();
            if let Some(d) = w.dom(self.id) {
                let Dom {
                    ports,
                    maybe_pending,
                    ..
                } = d;
                maybe_pending.retain(|&i| match ports.get_mut(i as usize) {
                    Some(p) if p.pending && !p.masked => {
                        p.pending = false;
                        ready.push(Port(i));
                        false
                    }
                    Some(p) => p.pending,
                    None => false,
                });
            }
        }
        for p in ready {
            f(p);
        }
    }

    fn now_ns(&self) -> u64 {
        self.sim.now_ns()
    }

    fn block(&mut self, deadline_ns: Option<u64>) -> Result<(), XenError> {
        if !self.sim.has_pending(self.id) {
            if let Some(t) = deadline_ns {
                let mut w = self.sim.world.borrow_mut();
                w.now_ns = w.now_ns.max(t);
            }
        }
        Ok(())
    }

    fn poll(&mut self, ports: &[Port], deadline_ns: Option<u64>) -> Result<(), XenError> {
        let mut w = self.sim.world.borrow_mut();
        let Some(d) = w.dom(self.id) else {
            return Err(XenError::errno(XenOp::Poll, errno::ESRCH));
        };
        let any = ports
            .iter()
            .any(|p| d.ports.get(p.0 as usize).is_some_and(|s| s.pending));
        if !any {
            if let Some(t) = deadline_ns {
                w.now_ns = w.now_ns.max(t);
            }
        }
        Ok(())
    }

    fn xenstore_page(&self) -> &HostMem {
        &self.xs_page
    }

    fn xenstore_port(&self) -> Port {
        Port(1)
    }
}

/// Map `dom`'s grant `gref` for `me` (one entry of a map hypercall).
fn map_one(
    w: &mut World,
    me: DomId,
    dom: DomId,
    gref: GrantRef,
    readonly: bool,
) -> MapResult<HostMem> {
    let op = XenOp::GrantMap {
        dom,
        gref,
        readonly,
    };
    let page = match w.check_grant(me, dom, gref, !readonly) {
        Ok(p) => p,
        Err(s) => {
            w.dom(me).unwrap().stats.map_failures += 1;
            return Err(XenError::grant(op, s));
        }
    };
    let d = w.dom(me).unwrap();
    if d.maps.len() as u32 >= d.cfg.max_maps {
        d.stats.map_failures += 1;
        return Err(XenError::grant(op, GntStatus::NO_SPACE));
    }
    let handle = d.next_handle;
    d.next_handle = d.next_handle.wrapping_add(1).max(1);
    d.maps.insert(handle, MapRecord { granter: dom, gref });
    d.stats.maps_total += 1;
    let g = w.doms.get_mut(&dom.0).unwrap();
    let e = g.grants[gref.0 as usize].as_mut().unwrap();
    e.maps += 1;
    let bus_addr = e.frame << 12;
    let mem = if readonly { page.read_only() } else { page };
    Ok(Mapping {
        mem,
        handle: GrantHandle(handle),
        bus_addr,
        dom,
        gref,
        readonly,
    })
}

fn copy_one(w: &mut World, me: DomId, op: &CopyOp, buf: &mut [u8; PAGE_SIZE]) -> GntStatus {
    let len = op.len as usize;
    let resolve = |w: &mut World, p: CopyPtr, write: bool| -> Result<(HostMem, usize), GntStatus> {
        match p {
            CopyPtr::Grant { dom, gref, offset } => {
                Ok((w.check_grant(me, dom, gref, write)?, offset as usize))
            }
            CopyPtr::Local { frame, offset } => {
                let d = w.dom(me).ok_or(GntStatus::BAD_DOMAIN)?;
                let page = d.pages.get(&frame).cloned().ok_or(GntStatus::BAD_PAGE)?;
                Ok((page, offset as usize))
            }
        }
    };
    let (src, so) = match resolve(w, op.src, false) {
        Ok(x) => x,
        Err(s) => return s,
    };
    let (dst, d_o) = match resolve(w, op.dst, true) {
        Ok(x) => x,
        Err(s) => return s,
    };
    if so + len > PAGE_SIZE || d_o + len > PAGE_SIZE {
        return GntStatus::BAD_COPY_ARG;
    }
    if src.read_bytes(so, &mut buf[..len]).is_err() || dst.write_bytes(d_o, &buf[..len]).is_err() {
        return GntStatus::BAD_COPY_ARG;
    }
    GntStatus::OKAY
}

pub mod xenstored;

#[cfg(test)]
mod tests;
