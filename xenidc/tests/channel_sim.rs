//! A frontend and a backend in two simulated domains, talking `usbif` urb requests over a
//! [`Connection`] / [`FrontChannel`] pair: a million requests with notification hold-off, disconnect
//! and reconnect, a frontend dying mid-stream, and a hostile frontend next to a good one.

use xenidc::abi::usbif::{
    PipeType, RequestSegment, UrbRequest, UrbResponse, UsbifPipe, UsbifStatus,
};
use xenidc::abi::{DomId, GrantRef, Port};
use xenidc::buffer::{Direction, LocalBuffer, RemoteBuffer};
use xenidc::channel::{ChannelError, ChannelState, Connection, FrontChannel};
use xenidc::hypervisor::{Hypervisor, LocalPage};
use xenidc::shm::{HostMem, SharedMem};
use xenidc::sim::{Sim, SimDomain};

const BE: DomId = DomId(1);

type Conn = Connection<SimDomain, UrbRequest, UrbResponse>;
type Front = FrontChannel<SimDomain, UrbRequest, UrbResponse>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Map,
    Bounce,
    /// Map and keep the buffer (the "device" still owns it): never respond.
    Hold,
}

/// Backend handling of one request: validate, make the buffer local, touch the data, release,
/// respond. IN transfers get the request id written at the start of the buffer; OUT transfers
/// echo the first data byte in `error_count`.
fn handle(
    hv: &mut SimDomain,
    conn: &mut Conn,
    req: &UrbRequest,
    mode: Mode,
    held: &mut Vec<LocalBuffer>,
) -> Result<(), ChannelError> {
    let mut rsp = UrbResponse {
        id: req.id,
        ..Default::default()
    };
    let nsegs = req.nr_buffer_segs as usize;
    if nsegs > req.seg.len() {
        rsp.status = UsbifStatus::INVAL;
        return conn.complete(hv, None, &rsp);
    }
    let peer = conn.channel().peer();
    let dir = if req.pipe.is_in() {
        Direction::FromDevice
    } else {
        Direction::ToDevice
    };
    let rb = match RemoteBuffer::new(peer, dir, &req.seg[..nsegs], req.buffer_length as u32) {
        Ok(rb) => rb,
        Err(_) => {
            rsp.status = UsbifStatus::INVAL;
            return conn.complete(hv, None, &rsp);
        }
    };
    if rb.is_empty() {
        return conn.complete(hv, None, &rsp);
    }
    let mapper = conn.mapper();
    let lb = match mode {
        Mode::Map | Mode::Hold => mapper.map(hv, &rb),
        Mode::Bounce => mapper.bounce(&rb),
    };
    let lb = match lb {
        Ok(lb) => lb,
        Err(_) => {
            rsp.status = UsbifStatus::SHUTDOWN;
            return conn.complete(hv, None, &rsp);
        }
    };
    if mode == Mode::Hold {
        held.push(lb);
        return Ok(());
    }
    let ok = if req.pipe.is_in() {
        mapper.write(&lb, 0, &(req.id as u32).to_le_bytes()).is_ok()
            && mapper.copy_out(hv, &lb).is_ok()
    } else {
        let mut b = [0u8; 1];
        let r = mapper.copy_in(hv, &lb).is_ok() && mapper.read(&lb, 0, &mut b).is_ok();
        rsp.error_count = b[0] as i32;
        r
    };
    if ok {
        rsp.actual_length = rb.len() as i32;
    } else {
        rsp.status = UsbifStatus::SHUTDOWN;
    }
    conn.complete(hv, Some(lb), &rsp)
}

/// Serve `conn` until its ring is idle (notification armed).
fn serve(
    hv: &mut SimDomain,
    conn: &mut Conn,
    mode: Mode,
    held: &mut Vec<LocalBuffer>,
) -> Result<u64, ChannelError> {
    let mut n = 0;
    loop {
        while let Some(req) = conn.channel().receive()? {
            handle(hv, conn, &req, mode, held)?;
            n += 1;
        }
        conn.channel().flush(hv)?;
        if !conn.channel().idle_check()? {
            return Ok(n);
        }
    }
}

fn pending(hv: &mut SimDomain) -> Vec<Port> {
    let mut v = Vec::new();
    hv.take_pending(&mut |p| v.push(p));
    v
}

struct Frontend {
    hv: SimDomain,
    ch: Front,
    pages: Vec<(LocalPage<HostMem>, GrantRef)>,
}

impl Frontend {
    /// A frontend domain `id` with a channel to the backend and 16 writable data pages granted.
    fn new(sim: &Sim, id: DomId) -> Frontend {
        let mut hv = sim.add_domain(id);
        let ch = Front::create(&mut hv, BE).unwrap();
        let pages = (0..16)
            .map(|_| {
                let p = hv.alloc_page().unwrap();
                let g = hv.grant_access(p.frame, BE, false).unwrap();
                (p, g)
            })
            .collect();
        Frontend { hv, ch, pages }
    }

    fn reconnect(&mut self) {
        self.ch = Front::create(&mut self.hv, BE).unwrap();
    }

    /// Request number `seq`: ids cycle through 0..16 (responses come back in order here); every
    /// fourth request carries data in the page of its id, alternating IN and OUT.
    fn request(&self, seq: u64) -> UrbRequest {
        let id = (seq % 16) as u16;
        let mut req = UrbRequest {
            id,
            ..Default::default()
        };
        let dir_in = seq.is_multiple_of(8);
        req.pipe = UsbifPipe::new(1, 2, 1, PipeType::BULK, dir_in);
        if seq.is_multiple_of(4) {
            let (page, gref) = &self.pages[id as usize];
            if !dir_in {
                page.mem.write_u8(128, seq as u8).unwrap();
            }
            req.nr_buffer_segs = 1;
            req.buffer_length = 512;
            req.seg[0] = RequestSegment {
                gref: *gref,
                offset: 128,
                length: 512,
            };
        }
        req
    }

    fn check(&self, seq: u64, rsp: &UrbResponse) {
        assert_eq!(rsp.id, (seq % 16) as u16, "response {seq} out of order");
        assert_eq!(rsp.status, UsbifStatus::OK, "response {seq}");
        if seq.is_multiple_of(4) {
            assert_eq!(rsp.actual_length, 512);
            if seq.is_multiple_of(8) {
                let page = &self.pages[(seq % 16) as usize].0;
                assert_eq!(
                    page.mem.read_u32(128).unwrap(),
                    (seq % 16) as u32,
                    "IN data of {seq}"
                );
            } else {
                assert_eq!(rsp.error_count, (seq as u8) as i32, "OUT data of {seq}");
            }
        } else {
            assert_eq!(rsp.actual_length, 0);
        }
    }
}

/// Run `n` requests from `fe` through `conn`, both sides driven only by their event channels.
/// Panics on a lost wakeup (nobody can make progress).
fn exchange(be: &mut SimDomain, conn: &mut Conn, fe: &mut Frontend, n: u64, mode: Mode) {
    let (mut sent, mut done) = (0u64, 0u64);
    // The backend starts by checking its ring once (connect-time), then sleeps until notified.
    let mut held = Vec::new();
    serve(be, conn, mode, &mut held).unwrap();
    let mut stuck = 0;
    while done < n {
        let mut progress = false;
        while sent < n && fe.ch.free_slots() > 0 {
            fe.ch.send(&fe.request(sent)).unwrap();
            sent += 1;
            progress = true;
        }
        fe.ch.flush(&mut fe.hv).unwrap();
        if pending(be).contains(&conn.port()) {
            serve(be, conn, mode, &mut held).unwrap();
        }
        if pending(&mut fe.hv).contains(&fe.ch.port()) || fe.ch.free_slots() == 0 {
            loop {
                while let Some(rsp) = fe.ch.receive().unwrap() {
                    fe.check(done, &rsp);
                    done += 1;
                    progress = true;
                }
                if !fe.ch.idle_check().unwrap() {
                    break;
                }
            }
        }
        stuck = if progress { 0 } else { stuck + 1 };
        assert!(stuck < 3, "lost wakeup: sent {sent}, done {done}");
    }
    assert!(held.is_empty());
}

fn assert_backend_clean(sim: &Sim) {
    let s = sim.stats(BE);
    assert_eq!(
        (s.foreign_maps, s.ports_open, s.pages),
        (0, 0, 0),
        "backend leaked: {s:?}"
    );
}

#[test]
fn a_million_requests_then_disconnect_and_reconnect() {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut fe = Frontend::new(&sim, DomId(2));
    let mut conn = Conn::connect(&mut be, DomId(2), fe.ch.ring_ref(), fe.ch.port(), 16, 0).unwrap();
    exchange(&mut be, &mut conn, &mut fe, 1_000_000, Mode::Map);
    let st = conn.channel().stats();
    assert_eq!((st.received, st.responded), (1_000_000, 1_000_000));
    // Hold-off works: far fewer notifications than requests.
    assert!(st.notifications_sent < 1_000_000 / 2, "{st:?}");
    let bs = sim.stats(BE);
    assert_eq!(
        bs.maps_total,
        1 + 250_000,
        "one ring map plus one map per data request"
    );
    assert_eq!(bs.unmaps_total, 250_000);

    // Disconnect: backend first, then the frontend can revoke its ring grant.
    let report = conn.teardown(&mut be);
    assert_eq!(
        (
            report.mappings_released,
            report.requests_abandoned,
            report.ring_error
        ),
        (0, 0, None)
    );
    assert_backend_clean(&sim);
    assert_eq!(sim.stats(DomId(2)).grants_mapped_by_others, 0);
    let old = std::mem::replace(&mut fe.ch, Front::create(&mut fe.hv, BE).unwrap());
    assert!(old.close(&mut fe.hv).is_ok());

    // Reconnect (new ring and port) and run again, this time bouncing through grant copy.
    let mut conn = Conn::connect(&mut be, DomId(2), fe.ch.ring_ref(), fe.ch.port(), 0, 1).unwrap();
    exchange(&mut be, &mut conn, &mut fe, 20_000, Mode::Bounce);
    assert_eq!(
        sim.stats(BE).foreign_maps,
        1,
        "only the ring is mapped when bouncing"
    );
    conn.teardown(&mut be);
    assert_backend_clean(&sim);
    fe.reconnect();
}

#[test]
fn frontend_revoking_a_mapped_ring_fails_until_the_backend_unmaps() {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut fe = Frontend::new(&sim, DomId(2));
    let conn = Conn::connect(&mut be, DomId(2), fe.ch.ring_ref(), fe.ch.port(), 16, 0).unwrap();
    let ch = std::mem::replace(&mut fe.ch, Front::create(&mut fe.hv, BE).unwrap());
    let Err((ch, _err)) = ch.close(&mut fe.hv) else {
        panic!("revoking must fail while the backend maps the ring");
    };
    conn.teardown(&mut be);
    assert!(ch.close(&mut fe.hv).is_ok());
}

#[test]
fn frontend_dying_mid_stream_leaves_no_mappings() {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut fe = Frontend::new(&sim, DomId(2));
    let mut conn = Conn::connect(&mut be, DomId(2), fe.ch.ring_ref(), fe.ch.port(), 16, 1).unwrap();
    // 16 requests, 4 with data; the backend maps them and hands them to the "device".
    for seq in 0..16 {
        fe.ch.send(&fe.request(seq)).unwrap();
    }
    fe.ch.flush(&mut fe.hv).unwrap();
    let mut held = Vec::new();
    let n = serve(&mut be, &mut conn, Mode::Hold, &mut held).unwrap();
    assert_eq!(n, 16);
    assert_eq!(held.len(), 4);
    assert_eq!(sim.stats(BE).foreign_maps, 5, "ring + 4 data pages");
    assert_eq!(sim.stats(DomId(2)).grants_mapped_by_others, 5);

    sim.destroy_domain(DomId(2));
    // The device's buffers are abandoned with the connection.
    drop(held);
    let report = conn.teardown(&mut be);
    assert_eq!(report.mappings_released, 4);
    assert_eq!(
        report.requests_abandoned, 4,
        "12 empty requests were answered already"
    );
    assert_backend_clean(&sim);
    assert_eq!(sim.stats(DomId(2)).grants_mapped_by_others, 0);
    assert_eq!(sim.stats(BE).maps_total, sim.stats(BE).unmaps_total);
}

#[test]
fn hostile_frontend_is_disconnected_alone() {
    let sim = Sim::new();
    let mut be = sim.add_domain(BE);
    let mut good = Frontend::new(&sim, DomId(2));
    let mut evil = Frontend::new(&sim, DomId(3));
    let mut gconn =
        Conn::connect(&mut be, DomId(2), good.ch.ring_ref(), good.ch.port(), 16, 0).unwrap();
    let mut econn =
        Conn::connect(&mut be, DomId(3), evil.ch.ring_ref(), evil.ch.port(), 16, 0).unwrap();
    let mut held = Vec::new();

    // Bad grant references and a segment crossing its page: error responses, still connected.
    let mut r = evil.request(0);
    r.seg[0].gref = GrantRef(1999);
    evil.ch.send(&r).unwrap();
    let mut r = evil.request(4);
    r.seg[0] = RequestSegment {
        gref: evil.pages[4].1,
        offset: 4000,
        length: 512,
    };
    evil.ch.send(&r).unwrap();
    let mut r = evil.request(8);
    r.nr_buffer_segs = 17;
    evil.ch.send(&r).unwrap();
    evil.ch.flush(&mut evil.hv).unwrap();
    serve(&mut be, &mut econn, Mode::Map, &mut held).unwrap();
    let statuses: Vec<_> = std::iter::from_fn(|| evil.ch.receive().unwrap())
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            UsbifStatus::SHUTDOWN,
            UsbifStatus::INVAL,
            UsbifStatus::INVAL
        ]
    );
    assert_eq!(econn.state(), ChannelState::Connected);

    // Then it claims 1000 requests on a 16-entry ring.
    let page = evil.ch.ring_page();
    let prod = page.read_u32(0).unwrap();
    page.write_u32(0, prod.wrapping_add(1000)).unwrap();
    evil.hv.evtchn_send(evil.ch.port()).unwrap();
    let err = serve(&mut be, &mut econn, Mode::Map, &mut held).unwrap_err();
    assert!(err.is_peer_error(), "{err:?}");
    assert!(matches!(econn.state(), ChannelState::Failed(_)));
    assert_eq!(econn.channel().receive(), Err(ChannelError::Failed));
    let report = econn.teardown(&mut be);
    assert_eq!(report.ring_error, None);
    assert_eq!(sim.stats(DomId(3)).grants_mapped_by_others, 0);

    // The good frontend is unaffected.
    exchange(&mut be, &mut gconn, &mut good, 10_000, Mode::Map);
    gconn.teardown(&mut be);
    assert_backend_clean(&sim);
}

mod teardown_at_any_moment {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// The frontend queues and publishes up to n requests.
        Send(u8),
        /// The backend serves its ring, keeping data buffers ("device busy") or finishing them.
        Serve { hold: bool },
        /// The "device" finishes up to n held buffers.
        Finish(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u8..20).prop_map(Step::Send),
            any::<bool>().prop_map(|hold| Step::Serve { hold }),
            (1u8..20).prop_map(Step::Finish),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever was in flight, tearing the connection down (after the frontend died, or not)
        /// leaves the backend with no mapping, port or page, and the frontend's grants unmapped.
        #[test]
        fn nothing_leaks(steps in proptest::collection::vec(step(), 0..40), frontend_dies in any::<bool>(), bounce in any::<bool>()) {
            let sim = Sim::new();
            let mut be = sim.add_domain(BE);
            let mut fe = Frontend::new(&sim, DomId(2));
            let mut conn = Conn::connect(&mut be, DomId(2), fe.ch.ring_ref(), fe.ch.port(), 16, 1).unwrap();
            let mut held: Vec<(UrbRequest, LocalBuffer)> = Vec::new();
            let mut seq = 0u64;
            for s in steps {
                match s {
                    Step::Send(n) => {
                        for _ in 0..n {
                            if fe.ch.free_slots() == 0 { break; }
                            fe.ch.send(&fe.request(seq)).unwrap();
                            seq += 1;
                        }
                        fe.ch.flush(&mut fe.hv).unwrap();
                        while fe.ch.receive().unwrap().is_some() {}
                    }
                    Step::Serve { hold } => {
                        while let Some(req) = conn.channel().receive().unwrap() {
                            let nsegs = req.nr_buffer_segs as usize;
                            let dir = if req.pipe.is_in() { Direction::FromDevice } else { Direction::ToDevice };
                            let rb = RemoteBuffer::new(DomId(2), dir, &req.seg[..nsegs], req.buffer_length as u32).unwrap();
                            if rb.is_empty() {
                                conn.complete(&mut be, None, &UrbResponse { id: req.id, ..Default::default() }).unwrap();
                                continue;
                            }
                            let lb = if bounce { conn.mapper().bounce(&rb) } else { conn.mapper().map(&mut be, &rb) }.unwrap();
                            if hold {
                                held.push((req, lb));
                            } else {
                                conn.complete(&mut be, Some(lb), &UrbResponse { id: req.id, ..Default::default() }).unwrap();
                            }
                        }
                        conn.channel().flush(&mut be).unwrap();
                    }
                    Step::Finish(n) => {
                        for _ in 0..n {
                            let Some((req, lb)) = (!held.is_empty()).then(|| held.remove(0)) else { break };
                            conn.complete(&mut be, Some(lb), &UrbResponse { id: req.id, ..Default::default() }).unwrap();
                        }
                        conn.channel().flush(&mut be).unwrap();
                    }
                }
                prop_assert_eq!(conn.mapper().mapped_now() + conn.mapper().bounce_in_use(), held.len());
            }
            if frontend_dies {
                sim.destroy_domain(DomId(2));
            }
            let report = conn.teardown(&mut be);
            prop_assert_eq!(report.mappings_released, if bounce { 0 } else { held.len() });
            let s = sim.stats(BE);
            prop_assert_eq!((s.foreign_maps, s.ports_open, s.pages), (0, 0, 0));
            prop_assert_eq!(s.maps_total, s.unmaps_total);
            prop_assert_eq!(sim.stats(DomId(2)).grants_mapped_by_others, 0);
        }
    }
}
