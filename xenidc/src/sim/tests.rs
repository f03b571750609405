use super::*;

fn two() -> (Sim, SimDomain, SimDomain) {
    let sim = Sim::new();
    let a = sim.add_domain(DomId(1));
    let b = sim.add_domain(DomId(2));
    (sim, a, b)
}

fn code(e: XenError) -> crate::hypervisor::XenCode {
    e.code
}

use crate::hypervisor::XenCode;

#[test]
fn grant_map_write_read_and_counts() {
    let (sim, mut a, mut b) = two();
    let page = a.alloc_page().unwrap();
    page.mem.write_u32(8, 0xdead_beef).unwrap();
    let gref = a.grant_access(page.frame, DomId(2), false).unwrap();
    assert!(gref.0 >= crate::abi::grant::NR_RESERVED_ENTRIES);
    let m = b.map_grant(DomId(1), gref, false).unwrap();
    assert_eq!(m.mem.read_u32(8).unwrap(), 0xdead_beef);
    m.mem.write_u32(12, 7).unwrap();
    assert_eq!(page.mem.read_u32(12).unwrap(), 7);
    assert_eq!(m.bus_addr, page.frame << 12);
    assert!(a.grant_in_use(gref));
    assert_eq!(sim.stats(DomId(1)).grants_mapped_by_others, 1);
    assert_eq!(sim.stats(DomId(2)).foreign_maps, 1);
    // Revoking a mapped grant fails and leaves it valid.
    assert_eq!(
        code(a.end_access(gref).unwrap_err()),
        XenCode::Errno(errno::EBUSY)
    );
    let m2 = b.map_grant(DomId(1), gref, true).unwrap();
    b.unmap_grant(m).unwrap();
    assert!(a.grant_in_use(gref));
    b.unmap_grant(m2).unwrap();
    assert!(!a.grant_in_use(gref));
    a.end_access(gref).unwrap();
    // Revoked: mapping fails.
    assert_eq!(
        code(b.map_grant(DomId(1), gref, true).unwrap_err()),
        XenCode::Grant(GntStatus::GENERAL_ERROR)
    );
    let s = sim.stats(DomId(2));
    assert_eq!((s.foreign_maps, s.maps_total, s.unmaps_total), (0, 2, 2));
    assert_eq!(sim.stats(DomId(1)).grants_active, 0);
}

#[test]
fn grant_permissions_are_enforced() {
    let (sim, mut a, mut b) = two();
    let mut c = sim.add_domain(DomId(3));
    let page = a.alloc_page().unwrap();
    let ro = a.grant_access(page.frame, DomId(2), true).unwrap();
    // Writable map of a read-only grant.
    assert_eq!(
        code(b.map_grant(DomId(1), ro, false).unwrap_err()),
        XenCode::Grant(GntStatus::GENERAL_ERROR)
    );
    // Wrong domain.
    assert_eq!(
        code(c.map_grant(DomId(1), ro, true).unwrap_err()),
        XenCode::Grant(GntStatus::GENERAL_ERROR)
    );
    // Out-of-range reference, unknown granter.
    assert_eq!(
        code(b.map_grant(DomId(1), GrantRef(1 << 30), true).unwrap_err()),
        XenCode::Grant(GntStatus::BAD_GNTREF)
    );
    assert_eq!(
        code(b.map_grant(DomId(9), ro, true).unwrap_err()),
        XenCode::Grant(GntStatus::BAD_DOMAIN)
    );
    let m = b.map_grant(DomId(1), ro, true).unwrap();
    assert!(m.readonly);
    b.unmap_grant(m).unwrap();
    assert_eq!(sim.stats(DomId(2)).map_failures, 3);
    // A bogus handle.
    let fake = Mapping {
        mem: HostMem::page(),
        handle: GrantHandle(999),
        bus_addr: 0,
        dom: DomId(1),
        gref: ro,
        readonly: true,
    };
    assert_eq!(
        code(b.unmap_grant(fake).unwrap_err()),
        XenCode::Grant(GntStatus::BAD_HANDLE)
    );
}

#[test]
fn maptrack_limit() {
    let sim = Sim::new();
    let mut a = sim.add_domain(DomId(1));
    let mut b = sim.add_domain_with(
        DomId(2),
        SimConfig {
            max_maps: 2,
            ..SimConfig::default()
        },
    );
    let p = a.alloc_page().unwrap();
    let g = a.grant_access(p.frame, DomId(2), false).unwrap();
    let m1 = b.map_grant(DomId(1), g, false).unwrap();
    let _m2 = b.map_grant(DomId(1), g, false).unwrap();
    assert_eq!(
        code(b.map_grant(DomId(1), g, false).unwrap_err()),
        XenCode::Grant(GntStatus::NO_SPACE)
    );
    b.unmap_grant(m1).unwrap();
    assert!(b.map_grant(DomId(1), g, false).is_ok());
}

#[test]
fn grant_copy_checks_permissions_and_bounds() {
    let (_sim, mut a, mut b) = two();
    let src = a.alloc_page().unwrap();
    src.mem.write_bytes(100, b"hello").unwrap();
    let g_ro = a.grant_access(src.frame, DomId(2), true).unwrap();
    let mine = b.alloc_page().unwrap();
    let mut ops = [
        CopyOp::new(
            CopyPtr::Grant {
                dom: DomId(1),
                gref: g_ro,
                offset: 100,
            },
            CopyPtr::Local {
                frame: mine.frame,
                offset: 4000,
            },
            5,
        ),
        // Writing into a read-only grant.
        CopyOp::new(
            CopyPtr::Local {
                frame: mine.frame,
                offset: 0,
            },
            CopyPtr::Grant {
                dom: DomId(1),
                gref: g_ro,
                offset: 0,
            },
            5,
        ),
        // Crossing the page end.
        CopyOp::new(
            CopyPtr::Grant {
                dom: DomId(1),
                gref: g_ro,
                offset: 4094,
            },
            CopyPtr::Local {
                frame: mine.frame,
                offset: 0,
            },
            5,
        ),
        // Someone else's frame.
        CopyOp::new(
            CopyPtr::Local {
                frame: src.frame,
                offset: 0,
            },
            CopyPtr::Local {
                frame: mine.frame,
                offset: 0,
            },
            5,
        ),
    ];
    b.grant_copy(&mut ops).unwrap();
    assert_eq!(ops[0].status, GntStatus::OKAY);
    let mut out = [0u8; 5];
    mine.mem.read_bytes(4000, &mut out).unwrap();
    assert_eq!(&out, b"hello");
    assert_eq!(ops[1].status, GntStatus::GENERAL_ERROR);
    assert_eq!(ops[2].status, GntStatus::BAD_COPY_ARG);
    assert_eq!(ops[3].status, GntStatus::BAD_PAGE);
    // The read-only page was not written.
    let mut first = [0u8; 5];
    src.mem.read_bytes(0, &mut first).unwrap();
    assert_eq!(first, [0; 5]);
}

#[test]
fn event_channels_bind_send_close() {
    let (sim, mut a, mut b) = two();
    let pa = a.evtchn_alloc_unbound(DomId(2)).unwrap();
    // Only the named remote may bind.
    let mut c = sim.add_domain(DomId(3));
    assert!(c.evtchn_bind_interdomain(DomId(1), pa).is_err());
    let pb = b.evtchn_bind_interdomain(DomId(1), pa).unwrap();
    let mut got = Vec::new();
    b.take_pending(&mut |p| got.push(p));
    assert_eq!(got, vec![pb], "binding raises an event locally");
    b.evtchn_send(pb).unwrap();
    assert!(sim.has_pending(DomId(1)));
    got.clear();
    a.take_pending(&mut |p| got.push(p));
    assert_eq!(got, vec![pa]);
    got.clear();
    a.take_pending(&mut |p| got.push(p));
    assert!(got.is_empty(), "pending bit cleared");
    // Close: the peer's end becomes unbound, sending on it goes nowhere.
    a.evtchn_close(pa).unwrap();
    b.evtchn_send(pb).unwrap();
    assert!(!sim.has_pending(DomId(1)));
    assert!(a.evtchn_send(pa).is_err());
    assert!(a.evtchn_close(pa).is_err());
    assert_eq!(sim.stats(DomId(1)).ports_open, 0);
    assert_eq!(sim.stats(DomId(2)).ports_open, 1);
    b.evtchn_close(pb).unwrap();
    assert_eq!(sim.stats(DomId(2)).ports_open, 0);
}

#[test]
fn destroyed_domain_releases_its_mappings_and_ports() {
    let (sim, mut a, mut b) = two();
    let p = a.alloc_page().unwrap();
    let g = a.grant_access(p.frame, DomId(2), false).unwrap();
    let _m = b.map_grant(DomId(1), g, false).unwrap();
    let pa = a.evtchn_alloc_unbound(DomId(2)).unwrap();
    let pb = b.evtchn_bind_interdomain(DomId(1), pa).unwrap();
    sim.destroy_domain(DomId(2));
    assert!(!a.grant_in_use(g));
    a.end_access(g).unwrap();
    a.evtchn_send(pa).unwrap(); // now unbound: dropped
    assert!(b.evtchn_send(pb).is_err());
    assert!(b.alloc_page().is_err());
    assert_eq!(sim.stats(DomId(1)).ports_open, 1);
}

#[test]
fn block_advances_virtual_time_only_when_idle() {
    let (sim, mut a, mut b) = two();
    a.block(Some(1_000)).unwrap();
    assert_eq!(sim.now_ns(), 1_000);
    let pa = a.evtchn_alloc_unbound(DomId(2)).unwrap();
    let _pb = b.evtchn_bind_interdomain(DomId(1), pa).unwrap();
    b.block(Some(5_000)).unwrap(); // pending bind event: returns at once
    assert_eq!(sim.now_ns(), 1_000);
}

struct Echo(u32);
impl XenstoreService for Echo {
    fn kick(&mut self, dom: DomId, page: &HostMem, notify: &mut dyn FnMut(DomId)) {
        self.0 += 1;
        let v = page.read_u32(0).unwrap();
        page.write_u32(1024, v + 1).unwrap();
        notify(dom);
    }
}

#[test]
fn xenstore_port_reaches_the_service() {
    let (sim, mut a, _b) = two();
    sim.set_xenstore_service(Box::new(Echo(0)));
    a.xenstore_page().write_u32(0, 41).unwrap();
    let port = a.xenstore_port();
    a.evtchn_send(port).unwrap();
    assert_eq!(a.xenstore_page().read_u32(1024).unwrap(), 42);
    let mut got = Vec::new();
    a.take_pending(&mut |p| got.push(p));
    assert_eq!(got, vec![port]);
}

mod xenstore_rings {
    use super::*;
    use crate::xenstore::client::Client;
    use crate::xenstore::ring::RingTransport;
    use crate::xenstore::server::Server;
    use crate::xenstore::TxId;
    use alloc::string::String;
    use core::cell::RefCell;
    use std::rc::Rc;

    fn client(hv: &SimDomain) -> Client<RingTransport<HostMem, impl FnMut()>> {
        let mut h = hv.clone();
        let port = hv.xenstore_port();
        let t = RingTransport::client(hv.xenstore_page().clone(), move || {
            let _ = h.evtchn_send(port);
        })
        .unwrap();
        Client::new(t)
    }

    #[test]
    fn domains_talk_to_xenstored_through_their_ring_pages() {
        let sim = Sim::new();
        let server = Rc::new(RefCell::new(Server::new()));
        server.borrow_mut().add_domain(1);
        server.borrow_mut().add_domain(2);
        sim.set_xenstore_service(Box::new(xenstored::RingXenstored::new(server.clone())));
        let a = sim.add_domain(DomId(1));
        let b = sim.add_domain(DomId(2));
        let mut ca = client(&a);
        let mut cb = client(&b);
        let mut wait = || true;
        ca.write(TxId::NONE, "/local/domain/1/data/x", b"hello", &mut wait)
            .unwrap();
        assert_eq!(
            ca.read(TxId::NONE, "/local/domain/1/data/x", &mut wait)
                .unwrap(),
            b"hello"
        );
        assert_eq!(
            server.borrow().admin_read("/local/domain/1/data/x"),
            Some(&b"hello"[..])
        );
        // Permissions: dom2 may not read dom1's home.
        assert!(cb
            .read(TxId::NONE, "/local/domain/1/data/x", &mut wait)
            .is_err());
        // A watch set by dom2 fires when the toolstack writes the path: the event reaches dom2's
        // ring (and its port) at the next kick.
        cb.watch("/local/domain/2/data/w", "tok", &mut wait)
            .unwrap();
        let mut drain = Vec::new();
        let mut bb = b.clone();
        bb.take_pending(&mut |p| drain.push(p));
        while cb.next_event().is_some() {}
        let mut big = String::new();
        for _ in 0..300 {
            big.push_str("0123456789");
        }
        ca.write(
            TxId::NONE,
            "/local/domain/1/data/big",
            big.as_bytes(),
            &mut wait,
        )
        .unwrap();
        assert_eq!(
            ca.read(TxId::NONE, "/local/domain/1/data/big", &mut wait)
                .unwrap(),
            big.as_bytes()
        );
        server
            .borrow_mut()
            .admin_write("/local/domain/2/data/w", b"1", &[]);
        // Admin writes happen outside any ring: a kick by anyone flushes the event to dom2.
        ca.read(TxId::NONE, "/local/domain/1/data/x", &mut wait)
            .unwrap();
        let mut got = Vec::new();
        bb.take_pending(&mut |p| got.push(p));
        assert_eq!(got, vec![b.xenstore_port()]);
        cb.poll().unwrap();
        let ev = cb
            .next_event()
            .expect("watch event delivered through the ring");
        assert_eq!(ev.path, "/local/domain/2/data/w");
        assert_eq!(ev.token, "tok");
    }
}

mod grant_model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Map;

    #[derive(Debug, Clone)]
    enum Op {
        Grant { to: u16, ro: bool },
        Revoke(usize),
        Map { by: u16, which: usize, ro: bool },
        Unmap(usize),
        Destroy(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (2u16..5, any::<bool>()).prop_map(|(to, ro)| Op::Grant { to, ro }),
            (0usize..8).prop_map(Op::Revoke),
            (2u16..5, 0usize..8, any::<bool>()).prop_map(|(by, which, ro)| Op::Map {
                by,
                which,
                ro
            }),
            (0usize..8).prop_map(Op::Unmap),
            (2u16..5).prop_map(Op::Destroy),
        ]
    }

    proptest! {
        /// Domain 1 grants pages to domains 2..4, which map and unmap them, and may die. The
        /// simulator agrees with a plain model: who may map, read-only rules, revoke refused while
        /// mapped, and the counters.
        #[test]
        fn grant_table_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
            let sim = Sim::new();
            let mut owner = sim.add_domain(DomId(1));
            let mut doms: Map<u16, SimDomain> = (2..5).map(|d| (d, sim.add_domain(DomId(d)))).collect();
            let page = owner.alloc_page().unwrap();
            // Model: gref -> (to, readonly, mapped count); live domains.
            let mut grants: Map<u32, (u16, bool, u32)> = Map::new();
            let mut order: Vec<GrantRef> = Vec::new();
            let mut maps: Vec<(u16, Mapping<HostMem>)> = Vec::new();
            let mut alive: Vec<u16> = vec![2, 3, 4];
            for op in ops {
                match op {
                    Op::Grant { to, ro } => {
                        let g = owner.grant_access(page.frame, DomId(to), ro).unwrap();
                        prop_assert!(!grants.contains_key(&g.0));
                        grants.insert(g.0, (to, ro, 0));
                        order.push(g);
                    }
                    Op::Revoke(i) => {
                        let Some(&g) = order.get(i) else { continue };
                        let r = owner.end_access(g);
                        match grants.get(&g.0) {
                            Some(&(_, _, 0)) => { prop_assert!(r.is_ok()); grants.remove(&g.0); }
                            Some(_) => prop_assert_eq!(r.unwrap_err().code, XenCode::Errno(errno::EBUSY)),
                            None => prop_assert!(r.is_err()),
                        }
                    }
                    Op::Map { by, which, ro } => {
                        let Some(&g) = order.get(which) else { continue };
                        let hv = doms.get_mut(&by).unwrap();
                        let r = hv.map_grant(DomId(1), g, ro);
                        let ok = alive.contains(&by)
                            && grants.get(&g.0).is_some_and(|&(to, gro, _)| to == by && (ro || !gro));
                        prop_assert_eq!(r.is_ok(), ok, "map of {:?} by {}", g, by);
                        if let Ok(m) = r {
                            prop_assert_eq!(m.mem.is_read_only(), ro);
                            grants.get_mut(&g.0).unwrap().2 += 1;
                            maps.push((by, m));
                        }
                    }
                    Op::Unmap(i) => {
                        if i >= maps.len() { continue; }
                        let (by, m) = maps.remove(i);
                        let gref = m.gref;
                        let r = doms.get_mut(&by).unwrap().unmap_grant(m);
                        if alive.contains(&by) {
                            prop_assert!(r.is_ok());
                            grants.get_mut(&gref.0).unwrap().2 -= 1;
                        }
                    }
                    Op::Destroy(d) => {
                        if !alive.contains(&d) { continue; }
                        sim.destroy_domain(DomId(d));
                        alive.retain(|&x| x != d);
                        for (by, m) in maps.iter() {
                            if *by == d { grants.get_mut(&m.gref.0).unwrap().2 -= 1; }
                        }
                        maps.retain(|(by, _)| *by != d);
                    }
                }
                let s = sim.stats(DomId(1));
                prop_assert_eq!(s.grants_active as usize, grants.len());
                prop_assert_eq!(s.grants_mapped_by_others as usize, grants.values().filter(|g| g.2 > 0).count());
                for (&gref, &(_, _, n)) in grants.iter() {
                    prop_assert_eq!(owner.grant_in_use(GrantRef(gref)), n > 0);
                }
                for &d in alive.iter() {
                    prop_assert_eq!(sim.stats(DomId(d)).foreign_maps as usize, maps.iter().filter(|(b, _)| *b == d).count());
                }
            }
        }
    }
}

#[test]
fn batched_map_checks_each_entry_and_counts_one_call() {
    let (sim, mut a, mut b) = two();
    let p0 = a.alloc_page().unwrap();
    let p1 = a.alloc_page().unwrap();
    let g0 = a.grant_access(p0.frame, DomId(2), false).unwrap();
    let ro = a.grant_access(p1.frame, DomId(2), true).unwrap();
    let req = |gref, readonly| MapRequest {
        dom: DomId(1),
        gref,
        readonly,
    };
    let mut out = Vec::new();
    b.map_grants(
        &[
            req(g0, false),
            req(ro, false),
            req(GrantRef(5000), true),
            req(ro, true),
        ],
        &mut out,
    );
    assert_eq!(out.len(), 4);
    let s = sim.stats(DomId(2));
    assert_eq!((s.map_calls, s.maps_total, s.map_failures), (1, 2, 2));
    // The same rules as the single call, entry by entry.
    assert_eq!(
        code(*out[1].as_ref().unwrap_err()),
        XenCode::Grant(GntStatus::GENERAL_ERROR)
    );
    assert_eq!(
        code(*out[2].as_ref().unwrap_err()),
        XenCode::Grant(GntStatus::BAD_GNTREF)
    );
    let maps: Vec<_> = out.into_iter().filter_map(Result::ok).collect();
    assert_eq!(maps.len(), 2);
    assert!(maps[1].mem.write_u8(0, 1).is_err(), "read-only map");
    assert!(a.grant_in_use(g0) && a.grant_in_use(ro));
    b.unmap_grants(maps).unwrap();
    let s = sim.stats(DomId(2));
    assert_eq!((s.unmap_calls, s.unmaps_total, s.foreign_maps), (1, 2, 0));
    assert!(!a.grant_in_use(g0) && !a.grant_in_use(ro));
}

#[test]
fn batched_unmap_goes_on_past_a_bad_handle_and_reports_it() {
    let (sim, mut a, mut b) = two();
    let p = a.alloc_page().unwrap();
    let g = a.grant_access(p.frame, DomId(2), false).unwrap();
    let m0 = b.map_grant(DomId(1), g, false).unwrap();
    let m1 = b.map_grant(DomId(1), g, true).unwrap();
    let bogus = Mapping {
        mem: HostMem::page(),
        handle: GrantHandle(9999),
        bus_addr: 0,
        dom: DomId(1),
        gref: g,
        readonly: false,
    };
    let e = b.unmap_grants([m0, bogus, m1]).unwrap_err();
    assert_eq!(
        e,
        XenError::grant(
            XenOp::GrantUnmap {
                handle: GrantHandle(9999)
            },
            GntStatus::BAD_HANDLE
        )
    );
    let s = sim.stats(DomId(2));
    assert_eq!((s.map_calls, s.unmap_calls), (2, 1));
    assert_eq!((s.unmaps_total, s.foreign_maps), (2, 0));
    assert!(!a.grant_in_use(g));
    // Nothing to unmap: no call.
    b.unmap_grants(Vec::new()).unwrap();
    assert_eq!(sim.stats(DomId(2)).unmap_calls, 1);
}
