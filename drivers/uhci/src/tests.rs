//! Driver tests against the simulated controller in [`crate::sim`].

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use hal::fake::{FakeDma, FakeDmaBuf};
use hal::{DmaAlloc, DmaBuf, DmaSegment, Interrupt, RegisterIo};
use usb_core::hc::{
    Completion, DeviceId, DeviceInfo, Direction, EndpointAddress, EndpointInfo, HcError, HcEvent,
    HostController, PortChanges, Route, Speed, TransferFlags, TransferId, TransferRequest,
    TransferType,
};

use crate::controller::{PORT_RECOVERY_NS, PORT_RESET_NS};
use crate::regs::{self, PortSc, Sts};
use crate::schedule::{Link, PID_IN, PID_OUT, PID_SETUP};
use crate::sim::{Dev, Resp, Sim, SimPlatform, TestDevice};
use crate::Uhci;

type Hc = Uhci<SimPlatform>;

const BULK_IN: EndpointAddress = EndpointAddress(0x81);
const BULK_OUT: EndpointAddress = EndpointAddress(0x02);
const INT_IN: EndpointAddress = EndpointAddress(0x83);

fn start() -> (Sim, Hc) {
    let sim = Sim::new();
    let (r, d, c, i) = sim.platform();
    let hc = Uhci::<SimPlatform>::new(r, d, c, i).expect("controller starts");
    (sim, hc)
}

fn dma(sim: &Sim) -> FakeDma {
    FakeDma::new(sim.mem.clone())
}

fn seg(b: &FakeDmaBuf, len: usize) -> DmaSegment {
    DmaSegment {
        bus_addr: b.bus_addr(),
        len: len as u32,
    }
}

/// Poll until `pred` picks an event, advancing simulated time 1 ms per round; other events are
/// collected into `other`.
fn wait_event(
    sim: &Sim,
    hc: &mut Hc,
    mut pred: impl FnMut(&HcEvent) -> bool,
    other: &mut Vec<HcEvent>,
) -> HcEvent {
    for _ in 0..20_000 {
        while let Some(ev) = hc.poll() {
            if pred(&ev) {
                return ev;
            }
            other.push(ev);
        }
        sim.advance_ms(1);
    }
    panic!("event did not arrive; others: {other:?}");
}

fn wait_done(sim: &Sim, hc: &mut Hc, id: TransferId) -> Completion {
    let mut other = Vec::new();
    match wait_event(
        sim,
        hc,
        |e| matches!(e, HcEvent::Transfer(c) if c.id == id),
        &mut other,
    ) {
        HcEvent::Transfer(c) => c,
        _ => unreachable!(),
    }
}

/// Attach a device on root port `port` (1-based), reset it and give it an address.
fn enumerate(sim: &Sim, hc: &mut Hc, port: u8, dev: &Dev) -> DeviceId {
    sim.attach(port as usize - 1, dev.clone());
    let mut other = Vec::new();
    wait_event(sim, hc, |e| *e == HcEvent::PortChange(port), &mut other);
    let st = hc.port_status(port).unwrap();
    assert!(st.connected && st.changes.contains(PortChanges::CONNECT));
    hc.clear_port_changes(port, st.changes).unwrap();
    hc.reset_port(port).unwrap();
    wait_event(sim, hc, |e| *e == HcEvent::PortChange(port), &mut other);
    let st = hc.port_status(port).unwrap();
    assert!(st.enabled && !st.resetting);
    assert!(st.changes.contains(PortChanges::RESET));
    hc.clear_port_changes(port, st.changes).unwrap();
    let id = hc
        .create_device(&DeviceInfo {
            route: Route::root(port),
            speed: st.speed.unwrap(),
            tt: None,
        })
        .unwrap();
    let addr = hc.address_device(id).unwrap();
    hc.set_ep0_max_packet(id, dev.borrow().ep0_mps as u16)
        .unwrap();
    assert_eq!(dev.borrow().addr, addr, "device took the address");
    id
}

fn ep_info(address: EndpointAddress, kind: TransferType, mps: u16, interval: u8) -> EndpointInfo {
    EndpointInfo {
        address,
        kind,
        max_packet: mps,
        mult: 0,
        max_burst: 0,
        interval,
        bytes_per_interval: 0,
    }
}

fn configure(hc: &mut Hc, id: DeviceId) {
    hc.configure_endpoints(
        id,
        &[
            ep_info(BULK_IN, TransferType::Bulk, 64, 0),
            ep_info(BULK_OUT, TransferType::Bulk, 64, 0),
            ep_info(INT_IN, TransferType::Interrupt, 8, 8),
        ],
    )
    .unwrap();
}

fn submit(
    hc: &mut Hc,
    device: DeviceId,
    endpoint: EndpointAddress,
    buffer: &[DmaSegment],
    flags: TransferFlags,
) -> TransferId {
    hc.submit(&TransferRequest {
        device,
        endpoint,
        setup: None,
        buffer,
        flags,
    })
    .unwrap()
}

fn new_dev(low: bool) -> Dev {
    Rc::new(RefCell::new(TestDevice::new(low)))
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read(b: &FakeDmaBuf, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    b.read_bytes(0, &mut v);
    v
}

#[test]
fn init_builds_frame_list_and_skeleton() {
    let (sim, hc) = start();
    let s = sim.state.borrow();
    assert_eq!(s.cmd & 1, 1, "running");
    assert_eq!(s.sts & Sts::HCHALTED.bits(), 0);
    assert_eq!(s.flbase as u64, hc.frame_list_addr());
    assert_eq!(
        s.intr, 0b1101,
        "IOC, short packet and timeout/CRC interrupts"
    );
    drop(s);
    // Frame i points at skeleton int(2^min(tz(i),7)); walking from any frame reaches every
    // list at or below its period, ending with control, bulk, terminate.
    let m = &sim.mem;
    let walk = |f: u64| {
        let mut l = Link(m.read32(hc.frame_list_addr() + 4 * f).unwrap());
        let mut n = 0;
        while !l.is_terminate() {
            assert!(l.is_qh());
            assert_eq!(
                m.read32(l.addr() as u64 + 4),
                Some(1),
                "skeleton has no TDs"
            );
            l = Link(m.read32(l.addr() as u64).unwrap());
            n += 1;
        }
        n
    };
    assert_eq!(walk(0), 10);
    assert_eq!(walk(1), 3, "int1, control, bulk");
    assert_eq!(walk(2), 4);
    assert_eq!(walk(8), 6);
    assert_eq!(walk(128), 10);
    assert_eq!(walk(384), 10);
    assert_eq!(walk(96), 8, "tz(96) = 5: int32 … int1");
}

#[test]
fn port_reset_follows_usb2_timing() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    sim.attach(0, dev.clone());
    let mut other = Vec::new();
    wait_event(&sim, &mut hc, |e| *e == HcEvent::PortChange(1), &mut other);
    let st = hc.port_status(1).unwrap();
    assert!(st.connected && !st.enabled);
    assert_eq!(st.speed, Some(Speed::Full));
    assert_eq!(st.changes, PortChanges::CONNECT);
    // No repeated event for the same change.
    sim.advance_ms(1);
    assert_eq!(hc.poll(), None);
    hc.clear_port_changes(1, PortChanges::CONNECT).unwrap();
    assert_eq!(
        sim.state.borrow().ports[0].sc & PortSc::CSC.bits(),
        0,
        "CSC cleared"
    );
    let t0 = sim.clock_now();
    hc.reset_port(1).unwrap();
    assert!(hc.port_status(1).unwrap().resetting);
    wait_event(&sim, &mut hc, |e| *e == HcEvent::PortChange(1), &mut other);
    let t1 = sim.clock_now();
    let p = sim.state.borrow().ports[0].clone();
    assert!(
        p.last_reset_ns.unwrap() >= PORT_RESET_NS,
        "reset held ≥ 50 ms"
    );
    assert!(
        p.enabled_at.unwrap() >= t0 + PORT_RESET_NS,
        "enabled after reset"
    );
    assert!(
        t1 >= p.enabled_at.unwrap() + PORT_RECOVERY_NS,
        "10 ms recovery before reset is reported done"
    );
    let st = hc.port_status(1).unwrap();
    assert!(st.enabled && !st.resetting);
    assert_eq!(st.changes, PortChanges::RESET);
    assert_eq!(dev.borrow().resets, 1, "the port reset reached the device");
    assert!(
        other.is_empty(),
        "the reset's own change bits are not news: {other:?}"
    );
}

#[test]
fn enumeration_and_control_transfers() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 2, &dev);
    assert_eq!(dev.borrow().addr, 1);
    let buf = dma(&sim).alloc(64, 64).unwrap();
    // GET_DESCRIPTOR(device, 64): the device has 18 bytes; endpoint 0 max packet 8 → two full
    // packets and a short one, then the status stage.
    let t = hc
        .submit(&TransferRequest {
            device: id,
            endpoint: EndpointAddress::EP0,
            setup: Some([0x80, 6, 0, 1, 0, 0, 64, 0]),
            buffer: &[seg(&buf, 64)],
            flags: TransferFlags::empty(),
        })
        .unwrap();
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!(c.result, Ok(()));
    assert_eq!(c.actual, 18);
    assert_eq!(read(&buf, 18), dev.borrow().descriptor_bytes());
    let log: Vec<_> = sim
        .state
        .borrow()
        .log
        .iter()
        .filter(|x| x.addr == 1)
        .map(|x| (x.pid, x.toggle))
        .collect();
    assert_eq!(
        log,
        vec![
            (PID_SETUP, false),
            (PID_IN, true),
            (PID_IN, false),
            (PID_IN, true),
            (PID_OUT, true)
        ],
        "short data stage goes straight to the status stage"
    );
    // SET_CONFIGURATION (no data stage).
    let t = hc
        .submit(&TransferRequest {
            device: id,
            endpoint: EndpointAddress::EP0,
            setup: Some([0, 9, 1, 0, 0, 0, 0, 0]),
            buffer: &[],
            flags: TransferFlags::empty(),
        })
        .unwrap();
    assert_eq!(wait_done(&sim, &mut hc, t).result, Ok(()));
    assert_eq!(dev.borrow().configured, 1);
    assert_eq!(dev.borrow().toggle_errors, 0);
    // A request the device does not support stalls; endpoint 0 is then halted until cleared.
    let t = hc
        .submit(&TransferRequest {
            device: id,
            endpoint: EndpointAddress::EP0,
            setup: Some([0x80, 6, 0, 3, 0, 0, 8, 0]),
            buffer: &[seg(&buf, 8)],
            flags: TransferFlags::empty(),
        })
        .unwrap();
    assert_eq!(wait_done(&sim, &mut hc, t).result, Err(HcError::Stall));
    let again = TransferRequest {
        device: id,
        endpoint: EndpointAddress::EP0,
        setup: Some([0x80, 6, 0, 1, 0, 0, 8, 0]),
        buffer: &[seg(&buf, 8)],
        flags: TransferFlags::empty(),
    };
    assert_eq!(hc.submit(&again), Err(HcError::EndpointHalted));
    hc.clear_halt(id, EndpointAddress::EP0).unwrap();
    let t = hc.submit(&again).unwrap();
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!((c.result, c.actual), (Ok(()), 8));
}

#[test]
fn bulk_in_multi_packet_keeps_toggles_across_transfers() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    let data = pattern(5000, 7);
    dev.borrow_mut().bulk_in.extend(data.iter().copied());
    let a = dma(&sim).alloc(4096, 4096).unwrap();
    let b = dma(&sim).alloc(4096, 4096).unwrap();
    // 4000 bytes: 62 full packets and one of 32; then 1000 more in a second transfer.
    let t1 = submit(
        &mut hc,
        id,
        BULK_IN,
        &[seg(&a, 4000)],
        TransferFlags::empty(),
    );
    let t2 = submit(
        &mut hc,
        id,
        BULK_IN,
        &[seg(&b, 1000)],
        TransferFlags::empty(),
    );
    let c1 = wait_done(&sim, &mut hc, t1);
    let c2 = wait_done(&sim, &mut hc, t2);
    assert_eq!((c1.result, c1.actual), (Ok(()), 4000));
    assert_eq!((c2.result, c2.actual), (Ok(()), 1000));
    assert_eq!(read(&a, 4000), data[..4000]);
    assert_eq!(read(&b, 1000), data[4000..]);
    let log: Vec<_> = sim
        .state
        .borrow()
        .log
        .iter()
        .filter(|x| x.ep == 1)
        .copied()
        .collect();
    assert_eq!(log.len(), 63 + 16);
    for (i, x) in log.iter().enumerate() {
        assert_eq!(x.toggle, i % 2 == 1, "toggle of packet {i}");
    }
    assert_eq!(dev.borrow().toggle_errors, 0);
    // 1280 bytes per frame: 20 packets of 64.
    let frames: alloc::collections::BTreeSet<u16> = log.iter().map(|x| x.frame).collect();
    assert!(
        frames.len() >= 4,
        "spread over frames by the bandwidth limit"
    );
    assert!(sim.state.borrow().full_frames > 0);
}

#[test]
fn short_bulk_in_ends_transfer_and_fixes_toggle() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    dev.borrow_mut().bulk_in.extend(pattern(100, 1));
    let a = dma(&sim).alloc(512, 64).unwrap();
    let t = submit(
        &mut hc,
        id,
        BULK_IN,
        &[seg(&a, 512)],
        TransferFlags::empty(),
    );
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!((c.result, c.actual), (Ok(()), 100));
    assert_eq!(read(&a, 100), pattern(100, 1));
    // Two packets moved (64 + 36): the next transfer starts with DATA0 again.
    dev.borrow_mut().bulk_in.extend(pattern(64, 2));
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    assert_eq!(wait_done(&sim, &mut hc, t).result, Ok(()));
    assert_eq!(dev.borrow().toggle_errors, 0);
    let n_in = sim.state.borrow().log.iter().filter(|x| x.ep == 1).count();
    assert_eq!(
        n_in, 3,
        "the TDs after the short packet were never executed"
    );
    // SHORT_NOT_OK: the short transfer is an error, but the endpoint goes on (no halt) with the
    // toggle after the short packet.
    dev.borrow_mut().bulk_in.extend(pattern(10, 3));
    let t = submit(
        &mut hc,
        id,
        BULK_IN,
        &[seg(&a, 128)],
        TransferFlags::SHORT_NOT_OK,
    );
    let t2 = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!((c.result, c.actual), (Err(HcError::ShortPacket), 10));
    dev.borrow_mut().bulk_in.extend(pattern(64, 4));
    let c2 = wait_done(&sim, &mut hc, t2);
    assert_eq!((c2.result, c2.actual), (Ok(()), 64));
    assert_eq!(read(&a, 64), pattern(64, 4));
    assert_eq!(dev.borrow().toggle_errors, 0);
}

#[test]
fn bulk_out_with_zero_length_packet() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    let a = dma(&sim).alloc(128, 64).unwrap();
    a.write_bytes(0, &pattern(128, 9));
    let t = submit(
        &mut hc,
        id,
        BULK_OUT,
        &[seg(&a, 128)],
        TransferFlags::ZERO_PACKET,
    );
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!((c.result, c.actual), (Ok(()), 128));
    assert_eq!(dev.borrow().bulk_out, pattern(128, 9));
    let out: Vec<_> = sim
        .state
        .borrow()
        .log
        .iter()
        .filter(|x| x.ep == 2)
        .map(|x| (x.len, x.toggle))
        .collect();
    assert_eq!(out, vec![(64, false), (64, true), (0, false)]);
    assert_eq!(dev.borrow().toggle_errors, 0);
}

#[test]
fn interrupt_endpoint_naks_then_delivers_at_its_interval() {
    let (sim, mut hc) = start();
    let dev = new_dev(true);
    let id = enumerate(&sim, &mut hc, 2, &dev);
    configure(&mut hc, id);
    let a = dma(&sim).alloc(8, 8).unwrap();
    let t = submit(&mut hc, id, INT_IN, &[seg(&a, 8)], TransferFlags::empty());
    for _ in 0..40 {
        sim.advance_ms(1);
        assert_eq!(hc.poll(), None, "NAKed transfer stays pending");
    }
    let polls: Vec<_> = sim
        .state
        .borrow()
        .log
        .iter()
        .filter(|x| x.ep == 3)
        .copied()
        .collect();
    assert!(
        polls.len() >= 4 && polls.len() <= 6,
        "every 8 frames: {}",
        polls.len()
    );
    for x in &polls {
        assert_eq!(x.frame % 8, 0, "interval-8 queue only in frames ≡ 0 mod 8");
        assert!(x.low_speed, "LS bit set for a low-speed device");
    }
    dev.borrow_mut()
        .int_in
        .push_back(vec![0, 0, 4, 0, 0, 0, 0, 0]);
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!((c.result, c.actual), (Ok(()), 8));
    assert_eq!(read(&a, 8), vec![0, 0, 4, 0, 0, 0, 0, 0]);
    assert_eq!(hc.port_status(2).unwrap().speed, Some(Speed::Low));
}

#[test]
fn stall_halts_endpoint_and_fails_queued_transfers() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    dev.borrow_mut().bulk_in.extend(pattern(256, 0));
    dev.borrow_mut().faults.push_back((1, PID_IN, Resp::Stall));
    let a = dma(&sim).alloc(256, 64).unwrap();
    let t1 = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    let t2 = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    let c1 = wait_done(&sim, &mut hc, t1);
    assert_eq!(c1.result, Err(HcError::Stall));
    let c2 = wait_done(&sim, &mut hc, t2);
    assert_eq!((c2.result, c2.actual), (Err(HcError::EndpointHalted), 0));
    assert_eq!(
        hc.submit(&TransferRequest {
            device: id,
            endpoint: BULK_IN,
            setup: None,
            buffer: &[seg(&a, 64)],
            flags: TransferFlags::empty()
        }),
        Err(HcError::EndpointHalted)
    );
    // Other endpoints are unaffected.
    let t = submit(
        &mut hc,
        id,
        BULK_OUT,
        &[seg(&a, 10)],
        TransferFlags::empty(),
    );
    assert_eq!(wait_done(&sim, &mut hc, t).result, Ok(()));
    hc.clear_halt(id, BULK_IN).unwrap();
    dev.borrow_mut().clear_halt(1, true);
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!((c.result, c.actual), (Ok(()), 64));
    assert_eq!(dev.borrow().toggle_errors, 0);
}

#[test]
fn timeout_retries_three_times_then_transaction_error() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    for _ in 0..3 {
        dev.borrow_mut()
            .faults
            .push_back((1, PID_IN, Resp::Timeout));
    }
    dev.borrow_mut().bulk_in.extend(pattern(64, 0));
    let a = dma(&sim).alloc(64, 64).unwrap();
    let before = sim.state.borrow().log.len();
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!(c.result, Err(HcError::Transaction));
    assert_eq!(
        sim.state.borrow().log.len() - before,
        3,
        "C_ERR = 3 attempts"
    );
    assert!(
        hc.port_status(1).unwrap().enabled,
        "a timeout does not cut the port off"
    );
    // Two timeouts and then success: retried by the hardware, no error.
    hc.clear_halt(id, BULK_IN).unwrap();
    for _ in 0..2 {
        dev.borrow_mut()
            .faults
            .push_back((1, PID_IN, Resp::Timeout));
    }
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!((c.result, c.actual), (Ok(()), 64));
}

#[test]
fn babble_disables_the_port_and_data_buffer_error_is_reported() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    let a = dma(&sim).alloc(64, 64).unwrap();
    dev.borrow_mut()
        .faults
        .push_back((2, PID_OUT, Resp::DataBuffer));
    let t = submit(
        &mut hc,
        id,
        BULK_OUT,
        &[seg(&a, 64)],
        TransferFlags::empty(),
    );
    assert_eq!(wait_done(&sim, &mut hc, t).result, Err(HcError::DataBuffer));
    dev.borrow_mut().faults.push_back((1, PID_IN, Resp::Babble));
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    assert_eq!(wait_done(&sim, &mut hc, t).result, Err(HcError::Babble));
    assert!(
        !hc.port_status(1).unwrap().enabled,
        "babbling device cut off"
    );
    // Further traffic to the device fails cleanly (no panic, no hang).
    hc.clear_halt(id, BULK_IN).unwrap();
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!(c.result, Err(HcError::NoDevice));
}

#[test]
fn cancel_waits_for_the_frame_and_frees_descriptors() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    sim.advance_ms(100);
    while hc.poll().is_some() {}
    let baseline = hc.descriptors_in_use();
    let a = dma(&sim).alloc(64, 64).unwrap();
    // Interrupt IN NAKs forever.
    let t1 = submit(&mut hc, id, INT_IN, &[seg(&a, 8)], TransferFlags::empty());
    let t2 = submit(&mut hc, id, INT_IN, &[seg(&a, 8)], TransferFlags::empty());
    sim.advance_ms(20);
    assert_eq!(hc.poll(), None);
    assert!(hc.descriptors_in_use() > baseline);
    // Cancel the waiting one: immediate.
    assert_eq!(hc.cancel(t2), Ok(true));
    match hc.poll() {
        Some(HcEvent::Transfer(c)) => assert_eq!((c.id, c.result), (t2, Err(HcError::Cancelled))),
        e => panic!("{e:?}"),
    }
    // Cancel the active one: reported only after the frame counter moved.
    assert_eq!(hc.cancel(t1), Ok(true));
    assert_eq!(hc.poll(), None, "not before a frame has passed");
    let c = wait_done(&sim, &mut hc, t1);
    assert_eq!((c.result, c.actual), (Err(HcError::Cancelled), 0));
    assert_eq!(hc.cancel(t1), Ok(false));
    // The endpoint goes on with the right toggle; memory comes back after the quarantine.
    dev.borrow_mut().int_in.push_back(vec![1; 8]);
    let t3 = submit(&mut hc, id, INT_IN, &[seg(&a, 8)], TransferFlags::empty());
    assert_eq!(wait_done(&sim, &mut hc, t3).result, Ok(()));
    sim.advance_ms(50);
    while hc.poll().is_some() {}
    assert_eq!(hc.descriptors_in_use(), baseline, "no descriptor leak");
    assert_eq!(dev.borrow().toggle_errors, 0);
}

#[test]
fn cancel_of_a_transfer_that_finished_meanwhile_reports_its_result() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    dev.borrow_mut().bulk_in.extend(pattern(64, 5));
    let a = dma(&sim).alloc(64, 64).unwrap();
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    // Let the hardware run without the driver looking (writes to FRNUM are not reads).
    sim.clock.advance_ns(3_000_000);
    let _ = sim.regs.read16(regs::USBSTS);
    assert_eq!(hc.cancel(t), Ok(true));
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!((c.result, c.actual), (Ok(()), 64));
    // The toggle advanced: the next packet is DATA1.
    dev.borrow_mut().bulk_in.extend(pattern(64, 6));
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    assert_eq!(wait_done(&sim, &mut hc, t).result, Ok(()));
    assert_eq!(dev.borrow().toggle_errors, 0);
}

#[test]
fn disconnect_fails_outstanding_transfers_with_no_device() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    let a = dma(&sim).alloc(64, 64).unwrap();
    let t = submit(&mut hc, id, INT_IN, &[seg(&a, 8)], TransferFlags::empty());
    sim.advance_ms(10);
    assert_eq!(hc.poll(), None);
    sim.detach(0);
    let mut other = Vec::new();
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!(c.result, Err(HcError::NoDevice));
    let ev = wait_event(&sim, &mut hc, |e| *e == HcEvent::PortChange(1), &mut other);
    assert_eq!(ev, HcEvent::PortChange(1));
    let st = hc.port_status(1).unwrap();
    assert!(!st.connected && !st.enabled);
    assert!(st
        .changes
        .contains(PortChanges::CONNECT | PortChanges::ENABLE));
    assert_eq!(
        hc.submit(&TransferRequest {
            device: id,
            endpoint: INT_IN,
            setup: None,
            buffer: &[seg(&a, 8)],
            flags: TransferFlags::empty()
        }),
        Err(HcError::NoDevice)
    );
    hc.release_device(id).unwrap();
    // Re-plug: enumerates again with a fresh address.
    let dev2 = new_dev(false);
    hc.clear_port_changes(1, st.changes).unwrap();
    let id2 = enumerate(&sim, &mut hc, 1, &dev2);
    assert_eq!(dev2.borrow().addr, 1, "address 1 is free again");
    assert_ne!(Some(id2), None);
}

#[test]
fn interrupts_are_checked_against_usbsts() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    let ours = hc.stats().irq_ours;
    dev.borrow_mut().bulk_in.extend(pattern(64, 0));
    let a = dma(&sim).alloc(64, 64).unwrap();
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    wait_done(&sim, &mut hc, t);
    assert!(hc.stats().irq_ours > ours, "IOC raised the interrupt");
    // Another device on the shared line: USBSTS is empty, not ours, but the line is unmasked.
    let unmasks = sim.irq.unmasks.get();
    sim.irq.raise();
    // USBSTS is read at most every 200 µs (a polled line always says "look").
    sim.clock.advance_ns(200_000);
    assert_eq!(hc.poll(), None);
    assert_eq!(hc.stats().irq_not_ours, 1);
    assert_eq!(sim.irq.unmasks.get(), unmasks + 1);
    assert!(!sim.irq.take());
}

#[test]
fn completion_without_interrupt_by_polling() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    // Interrupts disabled in the controller: only polling finds the completion.
    sim.regs.write16(regs::USBINTR, 0);
    let count = sim.irq.count();
    dev.borrow_mut().bulk_in.extend(pattern(64, 0));
    let a = dma(&sim).alloc(64, 64).unwrap();
    let t = submit(&mut hc, id, BULK_IN, &[seg(&a, 64)], TransferFlags::empty());
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!(c.result, Ok(()));
    assert_eq!(sim.irq.count(), count, "no interrupt was raised");
}

#[test]
fn controller_death_fails_everything() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    let a = dma(&sim).alloc(64, 64).unwrap();
    let t = submit(&mut hc, id, INT_IN, &[seg(&a, 8)], TransferFlags::empty());
    sim.host_system_error();
    let mut evs = Vec::new();
    while let Some(e) = hc.poll() {
        evs.push(e);
    }
    assert!(evs.contains(&HcEvent::ControllerDead));
    assert!(evs.iter().any(
        |e| matches!(e, HcEvent::Transfer(c) if c.id == t && c.result == Err(HcError::ControllerDead))
    ));
    assert_eq!(
        hc.submit(&TransferRequest {
            device: id,
            endpoint: INT_IN,
            setup: None,
            buffer: &[seg(&a, 8)],
            flags: TransferFlags::empty()
        }),
        Err(HcError::ControllerDead)
    );
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    let a = dma(&sim).alloc(4096, 4096).unwrap();
    let b = dma(&sim).alloc(4096, 4096).unwrap();
    let straddle = [seg(&a, 100), seg(&b, 100)];
    let req = |ep, setup, buffer| TransferRequest {
        device: id,
        endpoint: ep,
        setup,
        buffer,
        flags: TransferFlags::empty(),
    };
    assert!(matches!(
        hc.submit(&req(BULK_IN, None, &straddle)),
        Err(HcError::Invalid(_))
    ));
    assert!(matches!(
        hc.submit(&req(EndpointAddress::EP0, None, &[])),
        Err(HcError::Invalid(_))
    ));
    assert!(matches!(
        hc.submit(&req(BULK_IN, Some([0; 8]), &[])),
        Err(HcError::Invalid(_))
    ));
    assert!(matches!(
        hc.submit(&req(EndpointAddress(0x85), None, &[])),
        Err(HcError::Invalid(_))
    ));
    assert_eq!(
        hc.submit(&TransferRequest {
            device: DeviceId(99),
            ..req(BULK_IN, None, &[])
        }),
        Err(HcError::NoDevice)
    );
    assert!(hc.port_status(0).is_err() && hc.port_status(3).is_err());
    assert!(matches!(
        hc.create_device(&DeviceInfo {
            route: Route::root(2),
            speed: Speed::High,
            tt: None
        }),
        Err(HcError::NotSupported(_))
    ));
    // Segments contiguous in bus addresses are merged.
    let merged = [
        seg(&a, 100),
        DmaSegment {
            bus_addr: a.bus_addr() + 100,
            len: 28,
        },
    ];
    dev.borrow_mut().bulk_in.extend(pattern(128, 4));
    let t = hc.submit(&req(BULK_IN, None, &merged)).unwrap();
    assert_eq!(wait_done(&sim, &mut hc, t).actual, 128);
    let _ = Direction::In;
}

#[test]
fn address_device_times_out_on_a_silent_device() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    sim.attach(0, dev.clone());
    hc.reset_port(1).unwrap();
    for _ in 0..100 {
        sim.advance_ms(1);
        while hc.poll().is_some() {}
    }
    assert!(!hc.port_status(1).unwrap().resetting);
    let id = hc
        .create_device(&DeviceInfo {
            route: Route::root(1),
            speed: Speed::Full,
            tt: None,
        })
        .unwrap();
    // The device never answers the SETUP (three timeouts).
    for _ in 0..3 {
        dev.borrow_mut()
            .faults
            .push_back((0, PID_SETUP, Resp::Timeout));
    }
    assert_eq!(hc.address_device(id), Err(HcError::Transaction));
    // A controller that stops running frames: bounded by the driver timeout.
    sim.state.borrow_mut().frozen = true;
    hc.clear_halt(id, EndpointAddress::EP0).unwrap();
    assert_eq!(hc.address_device(id), Err(HcError::Timeout));
}

#[test]
fn configure_drops_endpoints_and_cancels_their_transfers() {
    let (sim, mut hc) = start();
    let dev = new_dev(false);
    let id = enumerate(&sim, &mut hc, 1, &dev);
    configure(&mut hc, id);
    let a = dma(&sim).alloc(64, 64).unwrap();
    let t = submit(&mut hc, id, INT_IN, &[seg(&a, 8)], TransferFlags::empty());
    sim.advance_ms(10);
    hc.configure_endpoints(id, &[ep_info(BULK_IN, TransferType::Bulk, 64, 0)])
        .unwrap();
    let c = wait_done(&sim, &mut hc, t);
    assert_eq!(c.result, Err(HcError::Cancelled));
    assert!(matches!(
        hc.submit(&TransferRequest {
            device: id,
            endpoint: INT_IN,
            setup: None,
            buffer: &[seg(&a, 8)],
            flags: TransferFlags::empty()
        }),
        Err(HcError::Invalid(_))
    ));
    hc.release_device(id).unwrap();
    sim.advance_ms(100);
    while hc.poll().is_some() {}
    // Only the ten skeleton QHs remain.
    assert_eq!(hc.descriptors_in_use(), 10);
}

#[test]
fn io_window_too_small_is_refused() {
    let sim = Sim::new();
    let (_, d, c, i) = sim.platform();
    let small = crate::sim::SimRegs(Rc::new(hal::fake::FakeRegs::new(16)));
    assert!(Uhci::<SimPlatform>::new(small, d, c, i).is_err());
}

mod random {
    //! Random sequences of submissions, cancels, halts and device misbehaviour: the driver never
    //! panics, every accepted transfer completes exactly once, and no descriptor leaks.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Submit(u8, u16),
        Fault(u8, u8),
        Advance(u8),
        Cancel(u8),
        ClearHalt(u8),
        Feed(u16),
        Report,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 0u16..700).prop_map(|(e, l)| Op::Submit(e, l)),
            2 => (0u8..3, 0u8..5).prop_map(|(e, f)| Op::Fault(e, f)),
            4 => (0u8..6).prop_map(Op::Advance),
            1 => any::<u8>().prop_map(Op::Cancel),
            1 => (0u8..3).prop_map(Op::ClearHalt),
            2 => (0u16..2000).prop_map(Op::Feed),
            1 => Just(Op::Report),
        ]
    }

    const EPS: [EndpointAddress; 3] = [BULK_IN, BULK_OUT, INT_IN];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]
        #[test]
        fn every_transfer_completes_once_and_nothing_leaks(ops in proptest::collection::vec(op(), 1..60)) {
            let (sim, mut hc) = start();
            let dev = new_dev(false);
            let id = enumerate(&sim, &mut hc, 1, &dev);
            configure(&mut hc, id);
            sim.advance_ms(50);
            while hc.poll().is_some() {}
            let baseline = hc.descriptors_in_use();
            let buf = dma(&sim).alloc(4096, 4096).unwrap();
            let mut outstanding: Vec<TransferId> = Vec::new();
            let mut done: BTreeMap<TransferId, Completion> = BTreeMap::new();
            let collect = |hc: &mut Hc, done: &mut BTreeMap<TransferId, Completion>| {
                while let Some(ev) = hc.poll() {
                    if let HcEvent::Transfer(c) = ev {
                        assert!(done.insert(c.id, c).is_none(), "{:?} completed twice", c.id);
                    }
                }
            };
            for op in ops {
                match op {
                    Op::Submit(e, len) => {
                        let ep = EPS[e as usize];
                        let len = if ep == INT_IN { len.min(8) } else { len };
                        if let Ok(t) = hc.submit(&TransferRequest {
                            device: id,
                            endpoint: ep,
                            setup: None,
                            buffer: &[seg(&buf, len as usize)],
                            flags: TransferFlags::empty(),
                        }) {
                            outstanding.push(t);
                        }
                    }
                    Op::Fault(e, f) => {
                        let (num, pid) = [(1, PID_IN), (2, PID_OUT), (3, PID_IN)][e as usize];
                        let r = [Resp::Nak, Resp::Stall, Resp::Timeout, Resp::Babble, Resp::DataBuffer][f as usize].clone();
                        dev.borrow_mut().faults.push_back((num, pid, r));
                    }
                    Op::Advance(ms) => sim.advance_ms(ms as u64),
                    Op::Cancel(i) => {
                        if !outstanding.is_empty() {
                            let t = outstanding[i as usize % outstanding.len()];
                            let _ = hc.cancel(t);
                        }
                    }
                    Op::ClearHalt(e) => {
                        let _ = hc.clear_halt(id, EPS[e as usize]);
                    }
                    Op::Feed(n) => dev.borrow_mut().bulk_in.extend(pattern(n as usize, 1)),
                    Op::Report => dev.borrow_mut().int_in.push_back(vec![0, 0, 5, 0, 0, 0, 0, 0]),
                }
                collect(&mut hc, &mut done);
            }
            // Drain: keep the device answering, cancel what still waits (NAKing endpoints).
            for t in &outstanding {
                let _ = hc.cancel(*t);
            }
            for _ in 0..200 {
                sim.advance_ms(1);
                collect(&mut hc, &mut done);
            }
            for t in &outstanding {
                prop_assert!(done.contains_key(t), "{:?} never completed", t);
            }
            prop_assert_eq!(done.len(), outstanding.len());
            prop_assert_eq!(hc.descriptors_in_use(), baseline, "descriptor leak");
        }
    }
}

#[test]
fn babble_behind_a_hub_leaves_the_root_port_alone() {
    let (sim, mut hc) = start();
    // The sim does not model hubs: the device answers on root port 1, the driver believes it
    // sits on port 3 of a hub there.
    let dev = new_dev(false);
    enumerate(&sim, &mut hc, 1, &dev);
    let behind = hc
        .create_device(&DeviceInfo {
            route: Route::root(1).child(3).unwrap(),
            speed: Speed::Full,
            tt: None,
        })
        .unwrap();
    hc.configure_endpoints(behind, &[ep_info(BULK_IN, TransferType::Bulk, 64, 0)])
        .unwrap();
    // Both driver devices talk to address 1; the transfer goes to the "hub child" handle.
    dev.borrow_mut().addr = 0;
    dev.borrow_mut().faults.push_back((1, PID_IN, Resp::Babble));
    let a = dma(&sim).alloc(64, 64).unwrap();
    let t = submit(
        &mut hc,
        behind,
        BULK_IN,
        &[seg(&a, 64)],
        TransferFlags::empty(),
    );
    assert_eq!(wait_done(&sim, &mut hc, t).result, Err(HcError::Babble));
    assert!(
        hc.port_status(1).unwrap().enabled,
        "root port still serves the hub"
    );
}

#[test]
fn usb_core_bus_enumerates_and_hotplugs_over_uhci() {
    use usb_core::{Bus, BusEvent};
    let (sim, hc) = start();
    let full = new_dev(false);
    full.borrow_mut().ep0_mps = 64;
    let low = new_dev(true);
    sim.attach(0, full.clone());
    sim.attach(1, low.clone());
    let mut bus = Bus::new(hc, dma(&sim), sim.clock.clone()).unwrap();
    let events = bus.scan();
    let attached: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            BusEvent::Attached(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(attached.len(), 2, "{events:?}");
    assert_eq!((full.borrow().addr, low.borrow().addr), (1, 2));
    assert_eq!((full.borrow().configured, low.borrow().configured), (1, 1));
    let speeds: Vec<_> = bus.registry.iter().map(|d| d.info.speed).collect();
    assert_eq!(speeds, vec![Speed::Full, Speed::Low]);
    let dev1 = bus.registry.iter().next().unwrap().id;
    // Bulk IN through the configured endpoint.
    full.borrow_mut().bulk_in.extend(pattern(300, 8));
    let a = dma(&sim).alloc(512, 64).unwrap();
    let t = submit(
        &mut bus.hc,
        dev1,
        BULK_IN,
        &[seg(&a, 300)],
        TransferFlags::empty(),
    );
    assert_eq!(bus.wait(t, 1000), Ok(300));
    assert_eq!(read(&a, 300), pattern(300, 8));
    assert_eq!(full.borrow().toggle_errors + low.borrow().toggle_errors, 0);
    // Unplug the low-speed device: the bus sees the port change and detaches it.
    sim.detach(1);
    let mut detached = None;
    for _ in 0..100 {
        sim.advance_ms(1);
        if let Some(HcEvent::PortChange(p)) = bus.poll() {
            for e in bus.handle_root_port(p) {
                if let BusEvent::Detached(d, r) = e {
                    detached = Some((d, r));
                }
            }
        }
        if detached.is_some() {
            break;
        }
    }
    let (_, route) = detached.expect("detach reported");
    assert_eq!(route, Route::root(2));
    assert_eq!(bus.registry.len(), 1);
}
