//! End-to-end scenarios: backend + simulated hypervisor/xenstore + fake controller + simulated
//! frontends.

use super::*;
use fakehc::FakeStick;
use usb_core::hc::HcError;
use xenidc::abi::usbif::UsbifStatus as S;

const FE: u16 = 5;
const FE2: u16 = 6;

fn ok(f: &mut Frontend, id: u16) -> UrbResponse {
    let r = f.take(id);
    assert_eq!(r.len(), 1, "exactly one response to {id}: {r:?}");
    r[0]
}

fn status(f: &mut Frontend, id: u16) -> S {
    ok(f, id).status
}

/// A world with a high-speed stick on root port 1 assigned to port 1 of frontend `FE`, connected.
fn connected(zero_copy: bool, speed: Speed) -> (World, Frontend) {
    let mut w = World::new(zero_copy);
    w.plug(1, speed);
    w.toolstack_create(FE, 0, 4, 2);
    let mut f = Frontend::new(&mut w, FE, 0);
    w.assign(FE, 0, 1, "1-1");
    w.run(&mut [&mut f]);
    assert_eq!(w.be_state(FE, 0), Some(4));
    assert_eq!(f.state(), 4);
    (w, f)
}

/// The guest's enumeration: descriptor at address 0, SET_ADDRESS, descriptors, SET_CONFIGURATION.
fn enumerate(w: &mut World, f: &mut Frontend, port: u32, addr: u8) {
    let (pi, g) = f.page(false);
    f.send(&request(
        1,
        ctrl_pipe(port, 0, true),
        [0x80, 6, 0, 1, 0, 0, 64, 0],
        &[(g, 0, 8)],
    ));
    w.run(&mut [&mut *f]);
    let r = ok(f, 1);
    assert_eq!((r.status, r.actual_length), (S::OK, 8));
    let mut d = [0u8; 8];
    f.page_mem(pi).read_bytes(0, &mut d).unwrap();
    assert_eq!(&d[..2], &[18, 1]);
    f.send(&request(
        2,
        ctrl_pipe(port, 0, false),
        [0, 5, addr, 0, 0, 0, 0, 0],
        &[],
    ));
    w.run(&mut [&mut *f]);
    assert_eq!(status(f, 2), S::OK);
    f.send(&request(
        3,
        ctrl_pipe(port, addr, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    f.send(&request(
        4,
        ctrl_pipe(port, addr, true),
        [0x80, 6, 0, 2, 0, 0, 0xff, 0],
        &[(g, 100, 255)],
    ));
    w.run(&mut [&mut *f]);
    let r = ok(f, 3);
    assert_eq!((r.status, r.actual_length), (S::OK, 18));
    let r = ok(f, 4);
    assert_eq!(r.status, S::OK);
    let mut total = [0u8; 4];
    f.page_mem(pi).read_bytes(100, &mut total).unwrap();
    assert_eq!(total[1], 2, "a configuration descriptor");
    assert_eq!(
        r.actual_length,
        u16::from_le_bytes([total[2], total[3]]) as i32
    );
    f.send(&request(
        5,
        ctrl_pipe(port, addr, false),
        [0, 9, 1, 0, 0, 0, 0, 0],
        &[],
    ));
    w.run(&mut [&mut *f]);
    assert_eq!(status(f, 5), S::OK);
}

/// Read `blocks` sectors at `lba` through BOT: CBW, data (over `segs`), CSW. Returns the data.
fn bot_read(
    w: &mut World,
    f: &mut Frontend,
    port: u32,
    addr: u8,
    lba: u32,
    blocks: u16,
    id: u16,
) -> Vec<u8> {
    let (ci, cg) = f.page(true);
    f.page_mem(ci)
        .write_bytes(0, &cbw(id as u32, true, lba, blocks))
        .unwrap();
    let len = blocks as usize * 512;
    // Data over several pages, starting mid-page, as a kmalloc'ed buffer would be.
    let mut segs = Vec::new();
    let mut pages = Vec::new();
    let mut left = len;
    let mut first = true;
    while left > 0 {
        let (pi, g) = f.page(false);
        let off = if first { 512 } else { 0 };
        first = false;
        let n = left.min(4096 - off);
        segs.push((g, off as u16, n as u16));
        pages.push((pi, off, n));
        left -= n;
    }
    let (si, sg) = f.page(false);
    f.send(&request(
        id,
        bulk_pipe(port, addr, 2, false),
        [0; 8],
        &[(cg, 0, 31)],
    ));
    f.send(&request(
        id + 1,
        bulk_pipe(port, addr, 1, true),
        [0; 8],
        &segs,
    ));
    f.send(&request(
        id + 2,
        bulk_pipe(port, addr, 1, true),
        [0; 8],
        &[(sg, 0, 13)],
    ));
    w.run(&mut [&mut *f]);
    assert_eq!(ok(f, id).actual_length, 31);
    let r = ok(f, id + 1);
    assert_eq!((r.status, r.actual_length as usize), (S::OK, len));
    let r = ok(f, id + 2);
    assert_eq!((r.status, r.actual_length), (S::OK, 13));
    let mut csw = [0u8; 13];
    f.page_mem(si).read_bytes(0, &mut csw).unwrap();
    assert_eq!(&csw[..4], b"USBS");
    assert_eq!(csw[12], 0);
    let mut out = Vec::new();
    for (pi, off, n) in pages {
        let mut b = vec![0u8; n];
        f.page_mem(pi).read_bytes(off, &mut b).unwrap();
        out.extend(b);
    }
    out
}

fn disk(w: &mut World, port: u8, lba: usize, blocks: usize) -> Vec<u8> {
    w.hc.stick(port).disk[lba * 512..(lba + blocks) * 512].to_vec()
}

#[test]
fn xen_hcd_sequence_enumerates_and_reads_zero_copy() {
    let (mut w, mut f) = connected(true, Speed::High);
    assert_eq!(f.speeds.get(&1), Some(&UsbifSpeed::HIGH.0));
    assert_eq!(
        f.conn_log,
        vec![(1, UsbifSpeed::HIGH.0)],
        "one event, no repeats"
    );
    // Published for the tool.
    let dev = format!("{}/data/usbdom/devices/1-1", home_path(BE));
    assert_eq!(
        w.read(&format!("{dev}/vid-pid")).as_deref(),
        Some("0781:5567")
    );
    assert_eq!(w.read(&format!("{dev}/speed")).as_deref(), Some("high"));
    assert_eq!(w.read(&format!("{dev}/assigned")).as_deref(), Some("5/0/1"));
    assert_eq!(w.read(&format!("{dev}/path")).as_deref(), Some("1-1"));

    enumerate(&mut w, &mut f, 1, 5);
    assert_eq!(
        w.hc.stick(1).set_address_seen,
        0,
        "SET_ADDRESS never reaches the device"
    );
    assert_eq!(w.hc.stick(1).set_config_seen, vec![1]);
    let (_, eps) = w.hc.configured.last().unwrap().clone();
    assert!(
        eps.contains(&usb_core::hc::EndpointAddress(0x81))
            && eps.contains(&usb_core::hc::EndpointAddress(0x02))
    );

    let data = bot_read(&mut w, &mut f, 1, 5, 3, 8, 100);
    assert_eq!(data, disk(&mut w, 1, 3, 8));
    let data = bot_read(&mut w, &mut f, 1, 5, 10, 16, 200);
    assert_eq!(data, disk(&mut w, 1, 10, 16));
    assert_eq!(w.hc.dma_faults, 0);
    // Only the two ring pages stay mapped between requests.
    assert_eq!(w.be_stats().foreign_maps, 2);
    assert!(
        f.responses.is_empty(),
        "no stray responses: {:?}",
        f.responses
    );
}

#[test]
fn bounce_mode_moves_the_same_data_by_grant_copy() {
    let (mut w, mut f) = connected(false, Speed::High);
    enumerate(&mut w, &mut f, 1, 9);
    let copies_before = w.be_stats().copies_total;
    let data = bot_read(&mut w, &mut f, 1, 9, 0, 12, 50);
    assert_eq!(data, disk(&mut w, 1, 0, 12));
    assert!(
        w.be_stats().copies_total > copies_before,
        "data went through grant copy"
    );
    assert_eq!(w.be_stats().foreign_maps, 2, "no data page was mapped");
    assert_eq!(w.hc.dma_faults, 0);
}

#[test]
fn guest_address_table_and_address_zero_rules() {
    let (mut w, mut f) = connected(true, Speed::High);
    let (_, g) = f.page(false);
    // Before SET_ADDRESS, address 5 is unknown.
    f.send(&request(
        1,
        ctrl_pipe(1, 5, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    // At address 0 only GET_DESCRIPTOR and SET_ADDRESS.
    f.send(&request(
        2,
        ctrl_pipe(1, 0, false),
        [0, 9, 1, 0, 0, 0, 0, 0],
        &[],
    ));
    // Bulk before configuration: no such endpoint.
    f.send(&request(3, bulk_pipe(1, 0, 1, true), [0; 8], &[(g, 0, 13)]));
    // Ports without a device / beyond num-ports.
    f.send(&request(
        4,
        ctrl_pipe(2, 0, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    f.send(&request(
        6,
        ctrl_pipe(7, 0, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 1), S::NODEV);
    assert_eq!(status(&mut f, 2), S::INVAL);
    assert_eq!(status(&mut f, 3), S::INVAL);
    assert_eq!(status(&mut f, 4), S::NODEV);
    assert_eq!(status(&mut f, 6), S::INVAL);
    enumerate(&mut w, &mut f, 1, 5);
    // Re-addressing moves the device: the old address is gone.
    f.send(&request(
        7,
        ctrl_pipe(1, 5, false),
        [0, 5, 6, 0, 0, 0, 0, 0],
        &[],
    ));
    f.send(&request(
        8,
        ctrl_pipe(1, 5, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    f.send(&request(
        9,
        ctrl_pipe(1, 6, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 7), S::OK);
    assert_eq!(status(&mut f, 8), S::NODEV);
    assert_eq!(status(&mut f, 9), S::OK);
    // A stalled control request (unknown descriptor) recovers endpoint 0 for the next one.
    f.send(&request(
        10,
        ctrl_pipe(1, 6, true),
        [0x80, 6, 0, 0x21, 0, 0, 9, 0],
        &[(g, 0, 9)],
    ));
    f.send(&request(
        11,
        ctrl_pipe(1, 6, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 10), S::STALL);
    assert_eq!(status(&mut f, 11), S::OK);
}

#[test]
fn integrity_rule_fails_what_is_queued_behind_an_error() {
    let (mut w, mut f) = connected(true, Speed::High);
    enumerate(&mut w, &mut f, 1, 5);
    let dev = w.hc.devices[&1].0;
    let (_, g) = f.page(false);
    w.hc.hold = true;
    for id in [20u16, 21, 22] {
        f.send(&request(
            id,
            bulk_pipe(1, 5, 1, true),
            [0; 8],
            &[(g, (id - 20) * 1024, 512)],
        ));
    }
    w.run(&mut [&mut f]);
    assert!(f.responses.is_empty(), "held in the controller");
    w.hc.fail_next.insert((dev, 0x81), HcError::Stall);
    w.hc.hold = false;
    w.run(&mut [&mut f]);
    let order: Vec<u16> = f.responses.iter().map(|r| r.id).collect();
    assert_eq!(order, vec![20, 21, 22], "answered in order");
    assert_eq!(status(&mut f, 20), S::STALL);
    assert_eq!(status(&mut f, 21), S::STALL);
    assert_eq!(status(&mut f, 22), S::STALL);
    let ran: Vec<_> = w.hc.executed.iter().filter(|e| e.1 == 0x81).collect();
    assert_eq!(ran.len(), 1, "nothing behind the failed transfer ran");
    // Sent before the guest recovered the endpoint: refused, not run.
    f.send(&request(
        23,
        bulk_pipe(1, 5, 1, true),
        [0; 8],
        &[(g, 0, 512)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 23), S::STALL);
    assert_eq!(w.hc.executed.iter().filter(|e| e.1 == 0x81).count(), 1);
    // CLEAR_FEATURE(ENDPOINT_HALT) of 0x81: controller-side recovery + forwarded to the device.
    f.send(&request(
        24,
        ctrl_pipe(1, 5, false),
        [2, 1, 0, 0, 0x81, 0, 0, 0],
        &[],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 24), S::OK);
    assert!(w.hc.clear_halts.contains(&(dev, 0x81)));
    assert_eq!(w.hc.stick(1).clear_halt_seen, vec![0x81]);
    // The retry runs.
    let data = bot_read(&mut w, &mut f, 1, 5, 1, 1, 30);
    assert_eq!(data, disk(&mut w, 1, 1, 1));
}

#[test]
fn unlink_gets_two_responses() {
    let (mut w, mut f) = connected(true, Speed::High);
    enumerate(&mut w, &mut f, 1, 5);
    let (_, g) = f.page(false);
    w.hc.hold = true;
    let pipe = bulk_pipe(1, 5, 1, true);
    f.send(&request(3, pipe, [0; 8], &[(g, 0, 512)]));
    w.run(&mut [&mut f]);
    assert_eq!(
        w.be_stats().foreign_maps,
        3,
        "data page mapped while in flight"
    );
    let mut u = request(
        4,
        UsbifPipe(pipe.0 | UsbifPipe::UNLINK),
        [3, 0, 0, 0, 0, 0, 0, 0],
        &[],
    );
    u.u = [3, 0, 0, 0, 0, 0, 0, 0];
    f.send(&u);
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 4), S::OK);
    assert_eq!(
        status(&mut f, 3),
        S::IOERROR,
        "the cancelled request is answered too"
    );
    assert_eq!(w.be_stats().foreign_maps, 2, "unmapped before answering");
    // Unlinking something already answered: one response, nothing else.
    f.send(&u);
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 4), S::OK);
    assert!(f.responses.is_empty());
    w.hc.hold = false;
}

#[test]
fn hotplug_fails_in_flight_urbs_and_reannounces() {
    let (mut w, mut f) = connected(true, Speed::High);
    enumerate(&mut w, &mut f, 1, 5);
    let (_, g) = f.page(false);
    w.hc.hold = true;
    f.send(&request(
        40,
        bulk_pipe(1, 5, 1, true),
        [0; 8],
        &[(g, 0, 512)],
    ));
    f.send(&request(
        41,
        bulk_pipe(1, 5, 1, true),
        [0; 8],
        &[(g, 1024, 512)],
    ));
    w.run(&mut [&mut f]);
    assert!(f.responses.is_empty());
    w.unplug(1);
    w.run(&mut [&mut f]);
    assert_eq!(f.speeds.get(&1), Some(&0), "disconnect announced");
    let s40 = status(&mut f, 40);
    let s41 = status(&mut f, 41);
    assert_ne!(s40, S::OK);
    assert_ne!(s41, S::OK);
    assert_eq!(w.be_stats().foreign_maps, 2, "nothing left mapped");
    assert_eq!(w.be.frontends()[0].in_flight, 0, "none left hanging");
    assert!(w
        .read(&format!("{}/data/usbdom/devices/1-1/path", home_path(BE)))
        .is_none());
    // Plugged again: announced again, the old guest address is gone, enumeration works.
    w.hc.hold = false;
    w.plug(1, Speed::Full);
    w.run(&mut [&mut f]);
    assert_eq!(f.speeds.get(&1), Some(&UsbifSpeed::FULL.0));
    f.send(&request(
        42,
        ctrl_pipe(1, 5, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 42), S::NODEV);
    enumerate(&mut w, &mut f, 1, 7);
    assert_eq!(f.conn_log, vec![(1, 3), (1, 0), (1, 2)]);
}

#[test]
fn hostile_frontend_beside_a_good_one() {
    let (mut w, mut good) = connected(true, Speed::High);
    w.plug(2, Speed::High);
    w.toolstack_create(FE2, 0, 2, 2);
    let mut bad = Frontend::new(&mut w, FE2, 0);
    w.assign(FE2, 0, 1, "1-2");
    w.run(&mut [&mut good, &mut bad]);
    assert_eq!(w.be_state(FE2, 0), Some(4));
    enumerate(&mut w, &mut good, 1, 5);
    enumerate(&mut w, &mut bad, 1, 5);
    let (_, g) = bad.page(false);
    let (_, ro) = bad.page(true);
    let pipe_in = bulk_pipe(1, 5, 1, true);
    // Bad grant reference.
    bad.send(&request(10, pipe_in, [0; 8], &[(GrantRef(999), 0, 512)]));
    // Segment crossing its page.
    bad.send(&request(11, pipe_in, [0; 8], &[(g, 4000, 200)]));
    // Too many segments (the count field lies beyond the array).
    let mut r = request(12, pipe_in, [0; 8], &[(g, 0, 16)]);
    r.nr_buffer_segs = 17;
    bad.send(&r);
    // Overlapping segments of one page.
    bad.send(&request(13, pipe_in, [0; 8], &[(g, 0, 512), (g, 256, 512)]));
    // Length mismatch.
    let mut r = request(14, pipe_in, [0; 8], &[(g, 0, 512)]);
    r.buffer_length = 1024;
    bad.send(&r);
    // Port not assigned to it, port beyond num-ports, reserved pipe bits.
    bad.send(&request(
        15,
        bulk_pipe(2, 5, 1, true),
        [0; 8],
        &[(g, 0, 512)],
    ));
    bad.send(&request(
        16,
        bulk_pipe(9, 5, 1, true),
        [0; 8],
        &[(g, 0, 512)],
    ));
    bad.send(&request(
        17,
        UsbifPipe(pipe_in.0 | 1 << 20),
        [0; 8],
        &[(g, 0, 512)],
    ));
    // IN transfer into a read-only grant.
    bad.send(&request(18, pipe_in, [0; 8], &[(ro, 0, 512)]));
    w.run(&mut [&mut good, &mut bad]);
    for id in 10..=18u16 {
        let s = status(&mut bad, id);
        assert!(s == S::INVAL || s == S::NODEV, "request {id}: {s:?}");
    }
    // Duplicate id while the first is in flight: the duplicate is refused.
    w.hc.hold = true;
    bad.send(&request(19, pipe_in, [0; 8], &[(g, 0, 512)]));
    bad.send(&request(19, pipe_in, [0; 8], &[(g, 1024, 512)]));
    w.run(&mut [&mut good, &mut bad]);
    let r = bad.take(19);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, S::INVAL);
    w.hc.hold = false;
    w.run(&mut [&mut good, &mut bad]);
    assert_eq!(status(&mut bad, 19), S::OK);
    // The good frontend is unaffected so far.
    let data = bot_read(&mut w, &mut good, 1, 5, 2, 4, 60);
    assert_eq!(data, disk(&mut w, 1, 2, 4));
    // Ring-index overflow: the hostile frontend is disconnected alone.
    let rp = bad.urb.as_ref().unwrap().ring_page().clone();
    let rsp_prod = rp.read_u32(8).unwrap();
    rp.write_u32(0, rsp_prod.wrapping_add(100)).unwrap();
    w.run(&mut [&mut good, &mut bad]);
    assert!(
        matches!(w.be_state(FE2, 0), Some(5) | Some(6)),
        "hostile frontend closed"
    );
    assert_eq!(w.be_state(FE, 0), Some(4));
    assert_eq!(
        w.be_stats().foreign_maps,
        2,
        "only the good frontend's rings stay mapped"
    );
    let data = bot_read(&mut w, &mut good, 1, 5, 20, 8, 70);
    assert_eq!(data, disk(&mut w, 1, 20, 8));
    assert_eq!(w.be.stats().protocol_failures, 1);
}

#[test]
fn frontend_death_mid_transfer_leaks_nothing_and_a_new_frontend_is_served() {
    let (mut w, mut f) = connected(true, Speed::High);
    enumerate(&mut w, &mut f, 1, 5);
    let (_, g) = f.page(false);
    w.hc.hold = true;
    f.send(&request(
        50,
        bulk_pipe(1, 5, 1, true),
        [0; 8],
        &[(g, 0, 512)],
    ));
    f.send(&request(
        51,
        bulk_pipe(1, 5, 1, true),
        [0; 8],
        &[(g, 512, 512)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(w.be_stats().foreign_maps, 4);
    // The domain dies: Xen tears it down, xenstored removes its home.
    w.sim.destroy_domain(DomId(FE));
    w.server.borrow_mut().remove_domain(FE);
    w.run(&mut []);
    let be = World::be_path(FE, 0);
    assert!(w.read(&be).is_none(), "backend directory removed");
    assert!(w.be.frontends().is_empty());
    let st = w.be_stats();
    assert_eq!(st.foreign_maps, 0, "every grant unmapped");
    assert_eq!(st.ports_open, 0, "event channel closed");
    assert_eq!(st.pages, 0, "no page kept");
    assert_eq!(w.be.draining(), 0);
    assert_eq!(w.hc.queued(), 0, "transfers cancelled in the controller");
    // The device is free for the next frontend.
    w.hc.hold = false;
    w.toolstack_create(7, 0, 2, 2);
    let mut f7 = Frontend::new(&mut w, 7, 0);
    w.assign(7, 0, 2, "1-1");
    w.run(&mut [&mut f7]);
    assert_eq!(f7.speeds.get(&2), Some(&UsbifSpeed::HIGH.0));
    enumerate(&mut w, &mut f7, 2, 3);
    let data = bot_read(&mut w, &mut f7, 2, 3, 5, 2, 80);
    assert_eq!(data, disk(&mut w, 1, 5, 2));
}

#[test]
fn frontend_close_and_reconnect() {
    let (mut w, mut f) = connected(true, Speed::High);
    f.set_state(5);
    w.run(&mut [&mut f]);
    assert_eq!(w.be_state(FE, 0), Some(6));
    assert_eq!(f.state(), 6);
    assert_eq!(w.be_stats().foreign_maps, 0);
    // xen-hcd loaded again: the frontend frees its old rings and starts over.
    let urb = f.urb.take().unwrap();
    let conn = f.conn.take().unwrap();
    assert!(urb.close(&mut f.dom).is_ok(), "backend released the ring");
    assert!(conn.close(&mut f.dom).is_ok());
    f.speeds.clear();
    f.set_state(1);
    w.run(&mut [&mut f]);
    assert_eq!(w.be_state(FE, 0), Some(4));
    assert_eq!(
        f.speeds.get(&1),
        Some(&UsbifSpeed::HIGH.0),
        "devices announced again"
    );
    enumerate(&mut w, &mut f, 1, 4);
}

#[test]
fn a_device_is_exported_on_one_port_only_and_clearing_detaches() {
    let (mut w, mut f) = connected(true, Speed::High);
    w.toolstack_create(FE2, 0, 2, 2);
    let mut g = Frontend::new(&mut w, FE2, 0);
    w.assign(FE2, 0, 2, "1-1");
    w.run(&mut [&mut f, &mut g]);
    assert_eq!(w.be_state(FE2, 0), Some(4));
    assert!(g.speeds.is_empty(), "second claim refused");
    assert_eq!(
        w.read(&format!(
            "{}/data/usbdom/devices/1-1/assigned",
            home_path(BE)
        ))
        .as_deref(),
        Some("5/0/1")
    );
    w.assign(FE, 0, 1, "");
    w.run(&mut [&mut f, &mut g]);
    assert_eq!(f.speeds.get(&1), Some(&0));
    assert_eq!(
        w.read(&format!(
            "{}/data/usbdom/devices/1-1/assigned",
            home_path(BE)
        ))
        .as_deref(),
        Some("")
    );
    // Garbage in port/N is ignored.
    w.assign(FE, 0, 2, "1-1.x");
    w.run(&mut [&mut f, &mut g]);
    assert_eq!(
        w.be.frontends()
            .iter()
            .find(|i| i.frontend == FE)
            .unwrap()
            .assigned,
        vec![]
    );
}

#[test]
fn invalid_controllers_are_not_served() {
    for (ports, ver) in [(0u32, 2u32), (32, 2), (4, 3), (4, 0)] {
        let mut w = World::new(true);
        w.toolstack_create(FE, 0, ports, ver);
        let mut f = Frontend::new(&mut w, FE, 0);
        w.run(&mut [&mut f]);
        assert_eq!(w.be_state(FE, 0), Some(6), "ports {ports} ver {ver}");
        assert!(w.be.frontends().is_empty());
        w.be.process_xenstore(&mut w.hc).unwrap();
        let (events, _) = crate::Store::take_events(w.be.xenstore()).unwrap();
        assert!(events.is_empty(), "no write loop: {events:?}");
    }
}

#[test]
fn frontend_initialised_state_also_connects() {
    let mut w = World::new(true);
    w.plug(1, Speed::Low);
    w.toolstack_create(FE, 0, 1, 1);
    let mut f = Frontend::new(&mut w, FE, 0);
    f.auto_connect = false;
    w.assign(FE, 0, 1, "1-1");
    w.run(&mut [&mut f]);
    assert_eq!(w.be_state(FE, 0), Some(2));
    f.connect();
    f.set_state(3);
    w.run(&mut [&mut f]);
    assert_eq!(w.be_state(FE, 0), Some(4));
    assert_eq!(f.speeds.get(&1), Some(&UsbifSpeed::LOW.0));
}

#[test]
fn superspeed_device_is_shown_as_high_speed() {
    let (mut w, mut f) = connected(true, Speed::Super);
    assert_eq!(f.speeds.get(&1), Some(&UsbifSpeed::HIGH.0));
    let (pi, g) = f.page(false);
    f.send(&request(
        1,
        ctrl_pipe(1, 0, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    f.send(&request(
        2,
        ctrl_pipe(1, 0, true),
        [0x80, 6, 0, 2, 0, 0, 32, 0],
        &[(g, 100, 32)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 1), S::OK);
    assert_eq!(status(&mut f, 2), S::OK);
    let mut d = [0u8; 18];
    f.page_mem(pi).read_bytes(0, &mut d).unwrap();
    assert_eq!(u16::from_le_bytes([d[2], d[3]]), 0x0210);
    assert_eq!(d[7], 64);
    let mut c = [0u8; 32];
    f.page_mem(pi).read_bytes(100, &mut c).unwrap();
    assert_eq!(u16::from_le_bytes([c[22], c[23]]), 512);
    assert_eq!(u16::from_le_bytes([c[29], c[30]]), 512);
}

fn usb_device(
    id: DeviceId,
    route: Route,
    speed: Speed,
    stick: &FakeStick,
    hub: Option<usb_core::hc::HubInfo>,
) -> usb_core::registry::UsbDevice {
    let raw = stick.config_descriptor();
    usb_core::registry::UsbDevice {
        id,
        info: usb_core::hc::DeviceInfo {
            route,
            speed,
            tt: None,
        },
        address: id.0 + 1,
        descriptor: usb_core::descriptor::DeviceDescriptor::parse(&stick.device_descriptor())
            .unwrap(),
        config: Some(usb_core::descriptor::Configuration::parse(&raw).unwrap()),
        config_raw: raw,
        manufacturer: None,
        product: Some("Fake Stick".into()),
        serial: None,
        parent: None,
        hub,
    }
}

#[test]
fn usb_core_bus_events_export_devices_behind_hubs_but_not_hubs() {
    use usb_core::enumerate::BusEvent;
    let mut w = World::new(true);
    w.toolstack_create(FE, 0, 2, 2);
    let mut f = Frontend::new(&mut w, FE, 0);
    w.assign(FE, 0, 2, "1-3.2");
    w.run(&mut [&mut f]);
    let hub_route = Route::root(3);
    let route = hub_route.child(2).unwrap();
    let stick = FakeStick::new(Speed::High, 8);
    let hub = usb_device(
        DeviceId(40),
        hub_route,
        Speed::High,
        &stick,
        Some(usb_core::hc::HubInfo {
            ports: 4,
            multi_tt: false,
            think_time: 0,
        }),
    );
    let dev = usb_device(DeviceId(0), route, Speed::High, &stick, None);
    let id = w.hc.plug(3, stick);
    let dev = usb_core::registry::UsbDevice { id, ..dev };
    let mut reg = usb_core::registry::Registry::new();
    reg.insert(hub);
    reg.insert(dev);
    w.be.handle_bus_events(
        &mut w.hc,
        &reg,
        &[BusEvent::Attached(DeviceId(40)), BusEvent::Attached(id)],
    )
    .unwrap();
    w.run(&mut [&mut f]);
    let published = w
        .server
        .borrow()
        .admin_children(&format!("{}/data/usbdom/devices", home_path(BE)));
    assert_eq!(
        published,
        vec!["1-3_2".to_string()],
        "the hub is not exportable"
    );
    assert_eq!(f.speeds.get(&2), Some(&UsbifSpeed::HIGH.0));
    enumerate(&mut w, &mut f, 2, 8);
    w.be.handle_bus_events(&mut w.hc, &reg, &[BusEvent::Detached(id, route)])
        .unwrap();
    w.run(&mut [&mut f]);
    assert_eq!(f.speeds.get(&2), Some(&0));
}

mod hostile_fuzz {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Raw {
        pipe: u32,
        structured: (u32, u8, u8, u8, bool, bool),
        use_structured: bool,
        segs: Vec<(u8, u16, u16)>,
        nsegs_lie: Option<u16>,
        len_lie: Option<u16>,
        setup: [u8; 8],
        known_setup: u8,
        unlink: u16,
        flags: u16,
    }

    fn raw() -> impl Strategy<Value = Raw> {
        (
            any::<u32>(),
            (
                0u32..6,
                prop_oneof![Just(0u8), Just(5u8), any::<u8>()],
                0u8..4,
                0u8..4,
                any::<bool>(),
                prop::bool::weighted(0.15),
            ),
            any::<bool>(),
            prop::collection::vec((0u8..4, 0u16..4200, 0u16..4200), 0..18),
            prop::option::weighted(0.2, 0u16..40),
            prop::option::weighted(0.2, any::<u16>()),
            any::<[u8; 8]>(),
            0u8..6,
            100u16..120,
            any::<u16>(),
        )
            .prop_map(
                |(
                    pipe,
                    structured,
                    use_structured,
                    segs,
                    nsegs_lie,
                    len_lie,
                    setup,
                    known_setup,
                    unlink,
                    flags,
                )| Raw {
                    pipe,
                    structured,
                    use_structured,
                    segs,
                    nsegs_lie,
                    len_lie,
                    setup,
                    known_setup,
                    unlink,
                    flags,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, .. ProptestConfig::default() })]
        /// Whatever a frontend sends, every request is answered exactly once, nothing stays
        /// mapped, the controller never sees memory that is not mapped, and the backend does not
        /// panic.
        #[test]
        fn random_requests_are_answered_exactly_once(
            reqs in prop::collection::vec(raw(), 1..16),
            zero_copy in any::<bool>(),
        ) {
            let (mut w, mut f) = connected(zero_copy, Speed::High);
            enumerate(&mut w, &mut f, 1, 5);
            let mut grefs = Vec::new();
            for ro in [false, true] {
                let (_, g) = f.page(ro);
                grefs.push(g);
            }
            grefs.push(GrantRef(777));
            for (i, r) in reqs.iter().enumerate() {
                let id = 100 + i as u16;
                let pipe = if r.use_structured {
                    let (port, dev, ep, ty, dir, unlink) = r.structured;
                    let p = UsbifPipe::new(port, dev, ep, PipeType(ty), dir);
                    UsbifPipe(if unlink { p.0 | UsbifPipe::UNLINK } else { p.0 })
                } else {
                    UsbifPipe(r.pipe)
                };
                let segs: Vec<(GrantRef, u16, u16)> = r
                    .segs
                    .iter()
                    .take(16)
                    .map(|&(g, o, l)| (if g < 3 { grefs[g as usize] } else { GrantRef(g as u32 * 1000) }, o, l))
                    .collect();
                let setup = match r.known_setup {
                    0 => [0x80, 6, 0, 1, 0, 0, 18, 0],
                    1 => [0, 5, 7, 0, 0, 0, 0, 0],
                    2 => [0, 9, 1, 0, 0, 0, 0, 0],
                    3 => [2, 1, 0, 0, 0x81, 0, 0, 0],
                    _ => r.setup,
                };
                let mut req = request(id, pipe, setup, &segs);
                if pipe.is_unlink() {
                    req.u = [r.unlink as u8, (r.unlink >> 8) as u8, 0, 0, 0, 0, 0, 0];
                }
                if let Some(n) = r.nsegs_lie {
                    req.nr_buffer_segs = n;
                }
                if let Some(l) = r.len_lie {
                    req.buffer_length = l;
                }
                req.transfer_flags = r.flags;
                f.send(&req);
            }
            w.run(&mut [&mut f]);
            for i in 0..reqs.len() {
                let id = 100 + i as u16;
                let n = f.take(id).len();
                prop_assert_eq!(n, 1, "request {} answered {} times", id, n);
            }
            prop_assert!(f.responses.is_empty());
            prop_assert_eq!(w.be_stats().foreign_maps, 2);
            prop_assert_eq!(w.hc.dma_faults, 0);
            prop_assert_eq!(w.be.frontends()[0].in_flight, 0);
            prop_assert_eq!(w.be_state(FE, 0), Some(4));
        }
    }
}

#[test]
fn toolstack_teardown_closes_and_removes_the_backend_directory() {
    let (mut w, mut f) = connected(true, Speed::High);
    enumerate(&mut w, &mut f, 1, 5);
    // libxl's device removal: online=0 and backend state Closing; it then waits for Closed and
    // for the directory to disappear.
    let be = World::be_path(FE, 0);
    f.passive = true;
    w.server
        .borrow_mut()
        .admin_write(&format!("{be}/online"), b"0", &[]);
    w.server
        .borrow_mut()
        .admin_write(&format!("{be}/state"), b"5", &[]);
    w.run(&mut [&mut f]);
    assert_eq!(w.be_state(FE, 0), Some(6), "Closed first: libxl reads it");
    assert_eq!(w.be_stats().foreign_maps, 0);
    assert_eq!(w.be_stats().ports_open, 0);
    // The frontend does not answer: the directory goes after the grace period.
    assert!(w.be.tick(&mut w.hc).unwrap().is_some());
    assert!(w.read(&be).is_some());
    w.sim.advance_ns(crate::REMOVE_GRACE_NS + 1);
    assert_eq!(w.be.tick(&mut w.hc).unwrap(), None);
    assert!(w.read(&be).is_none(), "backend directory removed");
    assert!(w.be.frontends().is_empty());
    assert_eq!(
        w.read(&format!(
            "{}/data/usbdom/devices/1-1/assigned",
            home_path(BE)
        ))
        .as_deref(),
        Some(""),
        "the device is free again"
    );
}

#[test]
fn a_64k_urb_with_buffer_length_0_is_taken_as_65536_bytes() {
    let (mut w, mut f) = connected(true, Speed::High);
    enumerate(&mut w, &mut f, 1, 5);
    let (ci, cg) = f.page(true);
    f.page_mem(ci)
        .write_bytes(0, &cbw(9, true, 7, 128))
        .unwrap();
    let pages: Vec<(usize, GrantRef)> = (0..16).map(|_| f.page(false)).collect();
    let segs: Vec<(GrantRef, u16, u16)> = pages.iter().map(|&(_, g)| (g, 0, 4096)).collect();
    let data_req = request(11, bulk_pipe(1, 5, 1, true), [0; 8], &segs);
    assert_eq!(data_req.buffer_length, 0, "65536 does not fit the u16");
    let (_, sg) = f.page(false);
    f.send(&request(
        10,
        bulk_pipe(1, 5, 2, false),
        [0; 8],
        &[(cg, 0, 31)],
    ));
    f.send(&data_req);
    f.send(&request(
        12,
        bulk_pipe(1, 5, 1, true),
        [0; 8],
        &[(sg, 0, 13)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 10), S::OK);
    let r = ok(&mut f, 11);
    assert_eq!((r.status, r.actual_length), (S::OK, 65536));
    assert_eq!(status(&mut f, 12), S::OK);
    let mut got = Vec::new();
    for (pi, _) in pages {
        let mut b = vec![0u8; 4096];
        f.page_mem(pi).read_bytes(0, &mut b).unwrap();
        got.extend(b);
    }
    assert_eq!(got, disk(&mut w, 1, 7, 128));
    // A zero length with segments that do not add up to 65536 is still refused.
    let (_, g) = f.page(false);
    let mut bad = request(13, bulk_pipe(1, 5, 1, true), [0; 8], &[(g, 0, 4096)]);
    bad.buffer_length = 0;
    f.send(&bad);
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 13), S::INVAL);
}

#[test]
fn usb11_controller_shows_full_speed_devices_only() {
    let mut w = World::new(true);
    w.plug(1, Speed::High);
    w.plug(2, Speed::Full);
    w.toolstack_create(FE, 0, 2, 1);
    let mut f = Frontend::new(&mut w, FE, 0);
    w.assign(FE, 0, 1, "1-1");
    w.assign(FE, 0, 2, "1-2");
    w.run(&mut [&mut f]);
    assert_eq!(w.be_state(FE, 0), Some(4));
    assert_eq!(
        f.speeds.get(&1),
        None,
        "high-speed device not shown on USB 1.1"
    );
    assert_eq!(f.speeds.get(&2), Some(&UsbifSpeed::FULL.0));
}

#[test]
fn keyboard_interrupt_urb_waits_for_a_key_and_can_be_unlinked() {
    let mut w = World::new(true);
    let stick = FakeStick::keyboard(Speed::Low);
    let cfg = usb_core::descriptor::Configuration::parse(&stick.config_descriptor()).unwrap();
    let id = w.hc.plug(2, stick);
    w.be.device_attached(
        &mut w.hc,
        PhysDevice {
            path: PortPath::parse("1-2").unwrap(),
            device: id,
            speed: Speed::Low,
            vendor: 0x0627,
            product_id: 0x0001,
            product: Some("QEMU USB Keyboard".into()),
            config: Some(cfg),
        },
    )
    .unwrap();
    w.toolstack_create(FE, 0, 2, 1);
    let mut f = Frontend::new(&mut w, FE, 0);
    w.assign(FE, 0, 1, "1-2");
    w.run(&mut [&mut f]);
    assert_eq!(f.speeds.get(&1), Some(&UsbifSpeed::LOW.0));
    enumerate(&mut w, &mut f, 1, 2);
    let (pi, g) = f.page(false);
    let int_in = UsbifPipe::new(1, 2, 1, PipeType::INT, true);
    // The wrong type for the endpoint is refused.
    f.send(&request(30, bulk_pipe(1, 2, 1, true), [0; 8], &[(g, 0, 8)]));
    // The interrupt URB stays pending until a key is pressed.
    f.send(&request(
        31,
        int_in,
        [10, 0, 0, 0, 0, 0, 0, 0],
        &[(g, 0, 8)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 30), S::INVAL);
    assert!(f.take(31).is_empty(), "no key yet");
    w.hc.stick(2).reports.push_back([0, 0, 4, 0, 0, 0, 0, 0]);
    w.run(&mut [&mut f]);
    let r = ok(&mut f, 31);
    assert_eq!((r.status, r.actual_length), (S::OK, 8));
    let mut rep = [0u8; 8];
    f.page_mem(pi).read_bytes(0, &mut rep).unwrap();
    assert_eq!(rep[2], 4, "key 'a'");
    // usbhid closing the device: the pending URB is unlinked; two answers.
    f.send(&request(
        32,
        int_in,
        [10, 0, 0, 0, 0, 0, 0, 0],
        &[(g, 0, 8)],
    ));
    w.run(&mut [&mut f]);
    let mut u = request(33, UsbifPipe(int_in.0 | UsbifPipe::UNLINK), [0; 8], &[]);
    u.u = [32, 0, 0, 0, 0, 0, 0, 0];
    f.send(&u);
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 33), S::OK);
    assert_eq!(status(&mut f, 32), S::IOERROR);
    assert_eq!(w.be_stats().foreign_maps, 2);
}

#[test]
fn corrupt_conn_ring_disconnects_that_frontend_only() {
    let (mut w, mut good) = connected(true, Speed::High);
    w.plug(2, Speed::High);
    w.toolstack_create(FE2, 0, 2, 2);
    let mut bad = Frontend::new(&mut w, FE2, 0);
    w.run(&mut [&mut good, &mut bad]);
    assert_eq!(w.be_state(FE2, 0), Some(4));
    // The hostile frontend claims 4000 conn requests on a 512-entry ring.
    let rp = bad.conn.as_ref().unwrap().ring_page().clone();
    let rsp_prod = rp.read_u32(8).unwrap();
    rp.write_u32(0, rsp_prod.wrapping_add(4000)).unwrap();
    bad.passive = true;
    // The next event for it (a device assigned) makes the backend read the conn ring.
    w.assign(FE2, 0, 1, "1-2");
    w.run(&mut [&mut good, &mut bad]);
    assert_eq!(w.be_state(FE2, 0), Some(5), "hostile frontend closed");
    assert_eq!(w.be_state(FE, 0), Some(4));
    assert_eq!(w.be.stats().protocol_failures, 1);
    assert_eq!(w.be_stats().foreign_maps, 2);
    enumerate(&mut w, &mut good, 1, 5);
}

/// Not a test: host-side cost of the backend's data path (simulated hypervisor and controller),
/// zero copy against bounce, side by side. `cargo test -p pvusb -- --ignored --nocapture sim_read_rate`
#[test]
#[ignore]
fn sim_read_rate() {
    let mut rates = Vec::new();
    for zero_copy in [true, false] {
        let (mut w, mut f) = connected(zero_copy, Speed::High);
        enumerate(&mut w, &mut f, 1, 5);
        let t = std::time::Instant::now();
        let rounds = 200u32;
        for i in 0..rounds {
            let d = bot_read(&mut w, &mut f, 1, 5, (i % 64) * 2, 56, 100);
            assert_eq!(d.len(), 56 * 512);
        }
        let secs = t.elapsed().as_secs_f64();
        let mib = rounds as f64 * 56.0 * 512.0 / (1024.0 * 1024.0);
        rates.push(mib / secs);
        println!(
            "zero_copy={zero_copy}: {:.1} MiB/s ({rounds} BOT reads of 28 KiB)",
            mib / secs
        );
    }
    println!("bounce/zero-copy = {:.2}", rates[1] / rates[0]);
}

#[test]
fn toolstack_teardown_with_a_live_frontend_removes_the_directory_once_it_closed() {
    let (mut w, mut f) = connected(true, Speed::High);
    let be = World::be_path(FE, 0);
    w.server
        .borrow_mut()
        .admin_write(&format!("{be}/online"), b"0", &[]);
    w.server
        .borrow_mut()
        .admin_write(&format!("{be}/state"), b"5", &[]);
    w.run(&mut [&mut f]);
    assert_eq!(f.state(), 6, "xen-hcd closed");
    assert!(
        w.read(&be).is_none(),
        "removed without waiting for the grace period"
    );
    assert_eq!(w.be_stats().foreign_maps, 0);
}

#[test]
fn closed_device_does_not_rewrite_its_state_forever() {
    let (mut w, mut f) = connected(true, Speed::High);
    f.passive = true;
    let be = World::be_path(FE, 0);
    w.server
        .borrow_mut()
        .admin_write(&format!("{be}/online"), b"0", &[]);
    w.server
        .borrow_mut()
        .admin_write(&format!("{be}/state"), b"5", &[]);
    w.run(&mut [&mut f]);
    assert_eq!(w.be_state(FE, 0), Some(6));
    // Quiescent: another round finds no watch event to act on (no write loop on our own state).
    w.be.process_xenstore(&mut w.hc).unwrap();
    let (events, _) = crate::Store::take_events(w.be.xenstore()).unwrap();
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn garbage_frontend_state_closes_that_frontend() {
    let (mut w, mut f) = connected(true, Speed::High);
    f.passive = true;
    let p = format!("{}/state", f.path());
    f.xs.write(xenidc::xenstore::TxId::NONE, &p, b"banana", &mut || true)
        .unwrap();
    w.run(&mut [&mut f]);
    assert_eq!(w.be_state(FE, 0), Some(5));
    assert_eq!(w.be_stats().foreign_maps, 0);
    assert!(w.read(&World::be_path(FE, 0)).is_some(), "directory kept");
}

/// In flight on an attached port when the controller closes: a bulk transfer and a control
/// transfer in the controller, a second control transfer waiting behind the first.
fn transfers_in_flight(w: &mut World, f: &mut Frontend) {
    enumerate(w, f, 1, 5);
    let (_, g) = f.page(false);
    w.hc.hold = true;
    f.send(&request(
        50,
        bulk_pipe(1, 5, 1, true),
        [0; 8],
        &[(g, 0, 512)],
    ));
    let get_dev = [0x80, 6, 0, 1, 0, 0, 18, 0];
    f.send(&request(
        51,
        ctrl_pipe(1, 5, true),
        get_dev,
        &[(g, 1024, 18)],
    ));
    f.send(&request(
        52,
        ctrl_pipe(1, 5, true),
        get_dev,
        &[(g, 2048, 18)],
    ));
    w.run(&mut [&mut *f]);
    assert!(
        f.responses.is_empty(),
        "all three pending: {:?}",
        f.responses
    );
    assert_eq!(w.hc.queued(), 2, "bulk and first control in the controller");
}

/// Every one of the transfers of [`transfers_in_flight`] was answered exactly once, with an error,
/// and nothing of the link is left.
fn all_answered_with_an_error(w: &mut World, f: &mut Frontend) {
    for id in [50, 51, 52] {
        let s = status(f, id);
        assert_ne!(s, S::OK, "request {id} answered with an error");
    }
    assert!(f.responses.is_empty(), "nothing else: {:?}", f.responses);
    assert_eq!(w.be_state(FE, 0), Some(6));
    assert_eq!(w.hc.queued(), 0, "transfers cancelled in the controller");
    assert_eq!(w.be.draining(), 0);
    let st = w.be_stats();
    assert_eq!(st.foreign_maps, 0, "every grant unmapped");
    assert_eq!(st.ports_open, 0, "event channel closed");
}

#[test]
fn toolstack_close_answers_every_request_in_flight_before_disconnecting() {
    let (mut w, mut f) = connected(true, Speed::High);
    transfers_in_flight(&mut w, &mut f);
    // libxl's removal without detaching the port first: online=0, backend state Closing.
    let be = World::be_path(FE, 0);
    f.passive = true;
    w.server
        .borrow_mut()
        .admin_write(&format!("{be}/online"), b"0", &[]);
    w.server
        .borrow_mut()
        .admin_write(&format!("{be}/state"), b"5", &[]);
    w.run(&mut [&mut f]);
    all_answered_with_an_error(&mut w, &mut f);
}

#[test]
fn frontend_closing_answers_every_request_in_flight() {
    let (mut w, mut f) = connected(false, Speed::High);
    transfers_in_flight(&mut w, &mut f);
    f.set_state(5);
    w.run(&mut [&mut f]);
    all_answered_with_an_error(&mut w, &mut f);
}

std::thread_local! {
    /// Log lines of this thread, while it captures.
    static CAPTURED: RefCell<Option<Vec<(String, String)>>> = const { RefCell::new(None) };
}

/// A logger that keeps (target, message) of the threads that asked for it.
struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        CAPTURED.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push((r.target().to_string(), r.args().to_string()));
            }
        });
    }
    fn flush(&self) {}
}

#[test]
fn log_lines_do_not_repeat_the_crate_name_of_their_target() {
    static CAPTURE: Capture = Capture;
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
    });
    assert!(
        log::max_level() == log::LevelFilter::Trace,
        "capturing logger installed"
    );
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    // Connect, attach, a refused request, a detach, a device that goes, a close.
    let (mut w, mut f) = connected(true, Speed::High);
    f.send(&request(9, ctrl_pipe(1, 77, true), [0; 8], &[]));
    w.assign(FE, 0, 1, "");
    w.run(&mut [&mut f]);
    w.unplug(1);
    f.set_state(5);
    w.run(&mut [&mut f]);
    let lines = CAPTURED.with(|c| c.borrow_mut().take().unwrap());
    let ours: Vec<_> = lines
        .iter()
        .filter(|(t, _)| t.starts_with("pvusb"))
        .collect();
    assert!(ours.len() >= 6, "the scenario logs: {lines:?}");
    for (t, m) in ours {
        assert!(!m.starts_with("pvusb"), "{t}: {m}");
    }
}

/// [`connected`] with the stick enumerated at guest address 5, the resets the backend asks for
/// left to the test ([`World::do_resets`]).
fn enumerated_resets_by_hand() -> (World, Frontend) {
    let (mut w, mut f) = connected(false, Speed::High);
    w.auto_reset = false;
    enumerate(&mut w, &mut f, 1, 5);
    (w, f)
}

/// Request `id`: a CBW (READ(10) of 8 blocks at LBA 0) to the stick at address 5 on port 1,
/// whose data and status stages never follow.
fn half_done_read(w: &mut World, f: &mut Frontend, id: u16) {
    let (ci, cg) = f.page(true);
    f.page_mem(ci)
        .write_bytes(0, &cbw(id as u32, true, 0, 8))
        .unwrap();
    f.send(&request(
        id,
        bulk_pipe(1, 5, 2, false),
        [0; 8],
        &[(cg, 0, 31)],
    ));
    w.run(&mut [&mut *f]);
    assert_eq!(ok(f, id).actual_length, 31);
}

/// Request `id`: GET_DESCRIPTOR(device, 18 bytes) to address 0 on port 1, the first request of a
/// (re-)enumeration. Returns the data page.
fn descriptor_at_address_0(f: &mut Frontend, id: u16) -> (usize, GrantRef) {
    let (pi, g) = f.page(false);
    f.send(&request(
        id,
        ctrl_pipe(1, 0, true),
        [0x80, 6, 0, 1, 0, 0, 64, 0],
        &[(g, 0, 18)],
    ));
    (pi, g)
}

/// The domU of the Xen tier, destroyed in the middle of a read: the stick is left with a
/// half-done READ(10) (data and CSW still to come). The next frontend must get it reset, and
/// must not see it before the reset.
#[test]
fn a_device_its_frontend_let_go_is_reset_before_the_next_frontend_sees_it() {
    let (mut w, mut f) = enumerated_resets_by_hand();
    // The dying guest never fetches the data of this READ(10).
    half_done_read(&mut w, &mut f, 60);
    w.sim.destroy_domain(DomId(FE));
    w.server.borrow_mut().remove_domain(FE);
    w.run(&mut []);
    assert!(w.be.frontends().is_empty());
    let pending: Vec<String> = w.be.resets_pending().map(|p| p.to_string()).collect();
    assert_eq!(pending, vec!["1-1".to_string()]);

    // The next frontend claims it before the reset happened: not announced yet.
    w.toolstack_create(7, 0, 2, 2);
    let mut g = Frontend::new(&mut w, 7, 0);
    w.assign(7, 0, 1, "1-1");
    w.run(&mut [&mut g]);
    assert_eq!(w.be_state(7, 0), Some(4));
    assert!(
        g.speeds.is_empty(),
        "announced before its reset: {:?}",
        g.speeds
    );
    assert_eq!(w.hc.stick(1).resets, 0);

    // The owner resets it: announced, and it reads like a fresh device.
    w.do_resets();
    w.run(&mut [&mut g]);
    assert_eq!(w.hc.stick(1).resets, 1);
    assert_eq!(g.speeds.get(&1), Some(&UsbifSpeed::HIGH.0));
    assert_eq!(w.be.resets_pending().count(), 0);
    enumerate(&mut w, &mut g, 1, 3);
    let data = bot_read(&mut w, &mut g, 1, 3, 7, 3, 80);
    assert_eq!(data, disk(&mut w, 1, 7, 3));
}

#[test]
fn detaching_resets_the_device_at_most_once_a_second() {
    let (mut w, mut f) = enumerated_resets_by_hand();
    // Cleared: a reset is due at once.
    w.assign(FE, 0, 1, "");
    w.run(&mut [&mut f]);
    assert_eq!(f.speeds.get(&1), Some(&0), "disconnect shown");
    w.do_resets();
    assert_eq!(w.hc.stick(1).resets, 1);
    // Given back and taken away again at once: this reset waits for the interval.
    w.assign(FE, 0, 1, "1-1");
    w.run(&mut [&mut f]);
    assert_eq!(f.speeds.get(&1), Some(&UsbifSpeed::HIGH.0));
    w.assign(FE, 0, 1, "");
    w.run(&mut [&mut f]);
    w.do_resets();
    assert_eq!(
        w.hc.stick(1).resets,
        1,
        "no second reset within the interval"
    );
    // Meanwhile it is not announced, even to the frontend that just had it.
    w.assign(FE, 0, 1, "1-1");
    w.run(&mut [&mut f]);
    assert_eq!(
        f.speeds.get(&1),
        Some(&0),
        "announced while a reset is owed"
    );
    w.sim.advance_ns(crate::RESET_MIN_INTERVAL_NS);
    w.do_resets();
    w.run(&mut [&mut f]);
    assert_eq!(w.hc.stick(1).resets, 2);
    assert_eq!(f.speeds.get(&1), Some(&UsbifSpeed::HIGH.0));
    enumerate(&mut w, &mut f, 1, 6);
}

#[test]
fn a_device_no_frontend_used_is_not_reset() {
    let mut w = World::new(false);
    w.plug(1, Speed::High);
    // Assigned to a controller whose frontend never connects, then cleared.
    w.toolstack_create(FE, 0, 2, 2);
    w.assign(FE, 0, 1, "1-1");
    w.run(&mut []);
    w.assign(FE, 0, 1, "");
    w.run(&mut []);
    assert_eq!(w.be.resets_pending().count(), 0);
    assert_eq!(w.hc.stick(1).resets, 0);
}

/// usb_reset_device in the guest (mass-storage error recovery): xen-hcd resets its emulated
/// root port and enumerates again, starting at address 0. The device is reset for real, the
/// frontend keeps it (no disconnect), and the half-done command the guest gave up on is gone.
#[test]
fn a_guest_reenumerating_its_device_gets_a_real_reset_without_a_disconnect() {
    let (mut w, mut f) = enumerated_resets_by_hand();
    let conn_before = f.conn_log.len();
    // The guest never runs the data phase of this READ(10) (its command timed out).
    half_done_read(&mut w, &mut f, 60);
    // The guest's re-enumeration: GET_DESCRIPTOR to address 0. It waits for the reset.
    let (pi, g) = descriptor_at_address_0(&mut f, 61);
    w.run(&mut [&mut f]);
    assert!(f.take(61).is_empty(), "ran before the reset");
    let pending: Vec<String> = w.be.resets_pending().map(|p| p.to_string()).collect();
    assert_eq!(pending, vec!["1-1".to_string()]);
    // The old address is gone from the guest address table.
    f.send(&request(
        62,
        ctrl_pipe(1, 5, true),
        [0x80, 6, 0, 1, 0, 0, 18, 0],
        &[(g, 0, 18)],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 62), S::NODEV);

    w.do_resets();
    w.run(&mut [&mut f]);
    assert_eq!(w.hc.stick(1).resets, 1);
    let r = ok(&mut f, 61);
    assert_eq!((r.status, r.actual_length), (S::OK, 18));
    let mut d = [0u8; 2];
    f.page_mem(pi).read_bytes(0, &mut d).unwrap();
    assert_eq!(d, [18, 1]);
    assert_eq!(
        f.conn_log.len(),
        conn_before,
        "no disconnect shown: {:?}",
        f.conn_log
    );
    // The guest finishes its enumeration (address again, configuration) and reads.
    f.send(&request(
        63,
        ctrl_pipe(1, 0, false),
        [0, 5, 5, 0, 0, 0, 0, 0],
        &[],
    ));
    f.send(&request(
        64,
        ctrl_pipe(1, 5, false),
        [0, 9, 1, 0, 0, 0, 0, 0],
        &[],
    ));
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 63), S::OK);
    assert_eq!(status(&mut f, 64), S::OK);
    let data = bot_read(&mut w, &mut f, 1, 5, 9, 2, 80);
    assert_eq!(data, disk(&mut w, 1, 9, 2));
}

#[test]
fn a_guest_reset_of_a_device_that_does_not_come_back_shows_a_disconnect() {
    let (mut w, mut f) = enumerated_resets_by_hand();
    descriptor_at_address_0(&mut f, 61);
    w.run(&mut [&mut f]);
    assert!(f.take(61).is_empty());
    // The reset fails: the device is gone (as usb-core reports an enumeration failure).
    let due = w.be.take_due_resets();
    assert_eq!(due.len(), 1);
    let path = due[0].0;
    w.be.begin_reset(path);
    w.hc.unplug(1);
    w.be.device_detached(&mut w.hc, path).unwrap();
    w.be.end_reset(&mut w.hc, path);
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 61), S::NODEV);
    assert_eq!(f.speeds.get(&1), Some(&0), "disconnect shown");
}

/// Send a READ(10) of `n` blocks at `lba` on device 5 of port 1 as usb-storage over stock
/// xen-hcd does: the CBW (request `id`), one 512-byte bulk IN per block (`id + 1` ..= `id + n`)
/// and the CSW (`id + n + 1`). Returns the frontend page and grant of each data transfer.
fn send_read_of_blocks(f: &mut Frontend, id: u16, lba: u32, n: u16) -> Vec<(usize, GrantRef)> {
    let (ci, cg) = f.page(true);
    f.page_mem(ci)
        .write_bytes(0, &cbw(id as u32, true, lba, n))
        .unwrap();
    f.send(&request(
        id,
        bulk_pipe(1, 5, 2, false),
        [0; 8],
        &[(cg, 0, 31)],
    ));
    let mut data = Vec::new();
    for k in 1..=n {
        let (pi, g) = f.page(false);
        data.push((pi, g));
        f.send(&request(
            id + k,
            bulk_pipe(1, 5, 1, true),
            [0; 8],
            &[(g, 0, 512)],
        ));
    }
    let (_, sg) = f.page(false);
    f.send(&request(
        id + n + 1,
        bulk_pipe(1, 5, 1, true),
        [0; 8],
        &[(sg, 0, 13)],
    ));
    data
}

/// A round's completions (a CBW, eight data packets and the CSW finishing at once, as when the
/// controller's interrupt reports several transfers) are answered without the frontend seeing
/// any of them, then published together with one notification, however eagerly the frontend
/// re-arms its response event in between (one domain switch per round, not per transfer).
#[test]
fn completions_of_one_round_are_published_together_with_one_notification() {
    let (mut w, mut f) = connected(false, Speed::High);
    enumerate(&mut w, &mut f, 1, 5);
    w.hc.hold = true;
    let data = send_read_of_blocks(&mut f, 10, 8, 8);
    w.run(&mut [&mut f]);
    assert!(f.responses.is_empty(), "held: {:?}", f.responses);
    assert_eq!(w.hc.queued(), 10, "all ten in the controller");
    w.hc.hold = false;
    let sends = w.be_stats().sends_total;
    let copy_calls = w.be_stats().copy_calls;
    let mut n = 0;
    while let Some(ev) = w.hc.poll() {
        let HcEvent::Transfer(c) = ev else { continue };
        assert!(w.be.answer(&mut w.hc, &c));
        n += 1;
        // An eager frontend: takes what is published and asks to be notified of the next one.
        f.poll();
        let _ = f.urb.as_mut().unwrap().idle_check();
        assert!(
            f.responses.is_empty(),
            "published before publish(): {:?}",
            f.responses
        );
    }
    assert_eq!(n, 10);
    assert_eq!(
        w.be_stats().sends_total,
        sends,
        "no notification before publish()"
    );
    w.be.publish(&mut w.hc);
    assert_eq!(
        w.be_stats().sends_total,
        sends + 1,
        "one notification for the round"
    );
    assert_eq!(
        w.be_stats().copy_calls,
        copy_calls + 1,
        "the nine IN transfers' data copied back in one grant-copy call"
    );
    f.poll();
    assert_eq!(ok(&mut f, 10).actual_length, 31);
    for (i, id) in (11..19u16).enumerate() {
        let r = ok(&mut f, id);
        assert_eq!((r.status, r.actual_length), (S::OK, 512));
        let mut b = vec![0u8; 512];
        f.page_mem(data[i].0).read_bytes(0, &mut b).unwrap();
        assert_eq!(b, disk(&mut w, 1, 8 + i, 1), "block {i}");
    }
    assert_eq!(ok(&mut f, 19).actual_length, 13);
}

/// A frontend that revokes the grant of an IN buffer while the transfer runs: the batched
/// copy-out fails for that transfer alone, which is answered `SHUTDOWN` exactly once; the other
/// transfers of the same round get their data, and the frontend keeps being served.
#[test]
fn a_grant_revoked_mid_transfer_fails_only_its_own_copy_out() {
    let (mut w, mut f) = connected(false, Speed::High);
    enumerate(&mut w, &mut f, 1, 5);
    w.hc.hold = true;
    let data = send_read_of_blocks(&mut f, 20, 0, 2);
    let ((p1, _), (_, g2)) = (data[0], data[1]);
    w.run(&mut [&mut f]);
    assert!(f.responses.is_empty());
    f.dom.end_access(g2).unwrap();
    w.hc.hold = false;
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 20), S::OK);
    let r = ok(&mut f, 21);
    assert_eq!((r.status, r.actual_length), (S::OK, 512));
    let mut b = vec![0u8; 512];
    f.page_mem(p1).read_bytes(0, &mut b).unwrap();
    assert_eq!(b, disk(&mut w, 1, 0, 1));
    assert_eq!(
        status(&mut f, 22),
        S::SHUTDOWN,
        "its data could not go back"
    );
    assert_eq!(status(&mut f, 23), S::OK);
    assert!(f.responses.is_empty(), "nothing else: {:?}", f.responses);
    assert_eq!(f.state(), 4, "still connected");
    let data = bot_read(&mut w, &mut f, 1, 5, 3, 2, 30);
    assert_eq!(data, disk(&mut w, 1, 3, 2));
}

/// A controller whose transfer ring for the endpoint is full refuses a transfer with
/// `NoResources` (sixteen 16-segment requests fill an xHCI ring): the request is no error of the
/// frontend's. It waits, first in line, and starts when a transfer ahead of it completes; every
/// request is answered once, in order, with the right data.
#[test]
fn a_full_controller_ring_makes_transfers_wait_not_fail() {
    let (mut w, mut f) = connected(false, Speed::High);
    enumerate(&mut w, &mut f, 1, 5);
    w.hc.ring_capacity = Some(2);
    let data = send_read_of_blocks(&mut f, 40, 16, 8);
    w.hc.hold = true;
    w.run(&mut [&mut f]);
    assert_eq!(
        w.hc.queued(),
        3,
        "the CBW, and two data transfers: the ring is full"
    );
    assert!(f.responses.is_empty(), "nothing refused: {:?}", f.responses);
    w.hc.hold = false;
    w.run(&mut [&mut f]);
    assert_eq!(status(&mut f, 40), S::OK);
    for (i, id) in (41..49u16).enumerate() {
        let r = ok(&mut f, id);
        assert_eq!((r.status, r.actual_length), (S::OK, 512), "request {id}");
        let mut b = vec![0u8; 512];
        f.page_mem(data[i].0).read_bytes(0, &mut b).unwrap();
        assert_eq!(b, disk(&mut w, 1, 16 + i, 1), "block {i}");
    }
    assert_eq!(status(&mut f, 49), S::OK);
    assert!(w.be.stats().links.deferred > 0);
    let order: Vec<usb_core::hc::TransferId> =
        w.hc.executed
            .iter()
            .filter(|(_, ep, _)| *ep == 0x81)
            .map(|(_, _, t)| *t)
            .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "IN transfers ran in submission order");
}
