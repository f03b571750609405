//! Driver tests against the simulated xHCI ([`crate::sim`]).

use std::vec;
use std::vec::Vec;

use hal::fake::{FakeClock, FakeDma, FakeMemory};
use hal::{DmaAlloc, DmaBuf, DmaSegment};
use usb_core::hc::*;
use usb_core::sim::SimDevice;
use usb_core::{Bus, BusEvent};

use crate::sim::SimXhci;
use crate::trb::ty;
use crate::Xhci;

/// The driver over the simulated controller's registers and the hal fakes.
type P = hal::fake::FakePlatform;

struct Rig {
    sim: SimXhci,
    mem: FakeMemory,
    dma: FakeDma,
    clock: FakeClock,
}

fn rig(csz64: bool, scratch: u32) -> Rig {
    let mem = FakeMemory::new(0x20_0000, 0x40_0000);
    let sim = SimXhci::new(mem.clone(), csz64, scratch);
    Rig {
        sim,
        dma: FakeDma::new(mem.clone()),
        mem,
        clock: FakeClock::default(),
    }
}

fn start(r: &Rig, irq: bool) -> Xhci<P> {
    Xhci::<P>::new(
        r.sim.regs(),
        r.dma.clone(),
        r.clock.clone(),
        irq.then(|| r.sim.irq()),
    )
    .expect("controller starts")
}

fn drain(x: &mut Xhci<P>) -> Vec<HcEvent> {
    let mut v = Vec::new();
    while let Some(e) = x.poll() {
        v.push(e);
    }
    v
}

fn completions(x: &mut Xhci<P>) -> Vec<Completion> {
    drain(x)
        .into_iter()
        .filter_map(|e| match e {
            HcEvent::Transfer(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn bring_up_sets_up_dcbaa_scratchpad_rings_and_ports() {
    for csz64 in [false, true] {
        let r = rig(csz64, 3);
        let x = start(&r, false);
        assert_eq!(x.context_size(), if csz64 { 64 } else { 32 });
        assert_eq!(x.num_ports(), 4);
        assert!(!x.is_usb3_port(1) && !x.is_usb3_port(2));
        assert!(x.is_usb3_port(3) && x.is_usb3_port(4));
        let regs = &r.sim.regs;
        let dcbaap = regs.peek(0x40 + crate::regs::DCBAAP, 8);
        assert_ne!(dcbaap, 0);
        let arr = r.mem.read64(dcbaap).unwrap();
        assert_ne!(arr, 0, "scratchpad array in DCBAA[0]");
        for i in 0..3 {
            let page = r.mem.read64(arr + 8 * i).unwrap();
            assert!(
                page != 0 && page.is_multiple_of(4096),
                "scratchpad page {i}"
            );
        }
        assert_eq!(regs.peek(0x40 + crate::regs::CONFIG, 4), 8);
        assert_eq!(regs.peek(0x40 + crate::regs::USBSTS, 4) & 1, 0, "running");
        assert_eq!(
            regs.peek(crate::sim::XECP, 4) as u32 & crate::regs::LEGACY_BIOS_OWNED,
            0
        );
    }
}

#[test]
fn commands_complete_and_map_errors() {
    let r = rig(false, 0);
    let mut x = start(&r, false);
    r.sim.plug(1, Some(SimDevice::qemu_keyboard()));
    let info = DeviceInfo {
        route: Route::root(1),
        speed: Speed::Full,
        tt: None,
    };
    // No port reset yet: the sim's port is not enabled, so Address Device (BSR=1) fails.
    assert_eq!(x.create_device(&info), Err(HcError::Transaction));
    assert_eq!(x.stats.commands, 3, "enable, address, disable");
    x.reset_port(1).unwrap();
    let dev = x.create_device(&info).unwrap();
    assert_eq!(dev, DeviceId(1), "slot 1 was freed and reused");
    let addr = x.address_device(dev).unwrap();
    assert_eq!(addr, 1);
    assert_eq!(r.sim.device(1).address, 1);
    // A command the controller rejects.
    r.sim.st.borrow_mut().fail_command = Some((ty::EVALUATE_CONTEXT, crate::trb::cc::PARAMETER));
    assert!(matches!(
        x.set_ep0_max_packet(dev, 8),
        Err(HcError::Invalid(_))
    ));
    r.sim.st.borrow_mut().fail_command = None;
    // A controller that never answers: timeout, bounded by the clock.
    r.sim.st.borrow_mut().hang_commands = true;
    let t0 = r.clock.now_ns_for_test();
    assert_eq!(x.set_ep0_max_packet(dev, 8), Err(HcError::Timeout));
    assert!(r.clock.now_ns_for_test() - t0 >= crate::COMMAND_TIMEOUT_MS * 1_000_000);
}

trait Now {
    fn now_ns_for_test(&self) -> u64;
}
impl Now for FakeClock {
    fn now_ns_for_test(&self) -> u64 {
        hal::Clock::now_ns(self)
    }
}

fn enumerate(r: &Rig, x: Xhci<P>) -> Bus<Xhci<P>, FakeDma, FakeClock> {
    let mut bus = Bus::new(x, r.dma.clone(), r.clock.clone()).unwrap();
    let ev = bus.scan();
    assert!(
        ev.iter().all(|e| matches!(e, BusEvent::Attached(_))),
        "{ev:?}"
    );
    bus
}

#[test]
fn enumeration_end_to_end_over_usb2_and_usb3_ports() {
    for csz64 in [false, true] {
        let r = rig(csz64, 1);
        r.sim.plug(1, Some(SimDevice::qemu_keyboard()));
        r.sim.plug(3, Some(SimDevice::qemu_storage(Speed::Super)));
        let x = start(&r, true);
        let bus = enumerate(&r, x);
        assert_eq!(bus.registry.len(), 2);
        let kbd = bus.registry.by_route(&Route::root(1)).unwrap();
        assert_eq!(kbd.product.as_deref(), Some("QEMU USB Keyboard"));
        assert_eq!(kbd.descriptor.vendor, 0x0627);
        let st = bus.registry.by_route(&Route::root(3)).unwrap();
        assert_eq!(st.info.speed, Speed::Super);
        assert_eq!(st.descriptor.max_packet0(), Ok(512));
        assert_eq!(r.sim.device(3).configuration, 1);
        assert!(
            hal::Interrupt::count(&r.sim.irq()) > 0,
            "interrupts were raised"
        );
        // The endpoints were configured in the controller (running).
        let s = r.sim.st.borrow();
        let slot = s.slots[st.id.0 as usize].as_ref().unwrap();
        assert_eq!(slot.eps[3].state, 1, "bulk IN running");
        assert_eq!(slot.eps[4].state, 1, "bulk OUT running");
        assert_eq!(slot.eps[3].ep_type, 6);
    }
}

fn bulk(
    x: &mut Xhci<P>,
    dev: DeviceId,
    ep: u8,
    segs: &[DmaSegment],
    flags: TransferFlags,
) -> TransferId {
    x.submit(&TransferRequest {
        device: dev,
        endpoint: EndpointAddress(ep),
        setup: None,
        buffer: segs,
        flags,
    })
    .unwrap()
}

#[test]
fn bulk_transfers_multi_trb_short_and_wrap() {
    let r = rig(false, 0);
    r.sim.plug(2, Some(SimDevice::qemu_storage(Speed::High)));
    let x = start(&r, false);
    let mut bus = enumerate(&r, x);
    let dev = bus.registry.by_route(&Route::root(2)).unwrap().id;
    let x = &mut bus.hc;
    // A buffer crossing a 64 KiB boundary becomes two TRBs in one TD.
    let buf = r.dma.alloc(0x30000, 4096).unwrap();
    let base = (buf.bus_addr() + 0xffff) & !0xffff;
    let seg = [DmaSegment {
        bus_addr: base - 0x800,
        len: 0x1000,
    }];
    let trbs0 = x.stats.trbs;
    let data: Vec<u8> = (0..0x1000u32).map(|i| i as u8).collect();
    r.sim.device(2).in_data.push_back(data.clone());
    let id = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    assert_eq!(x.stats.trbs - trbs0, 2);
    let c = completions(x);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].id, c[0].actual, c[0].result), (id, 0x1000, Ok(())));
    let mut got = vec![0u8; 0x1000];
    assert!(r.mem.read(base - 0x800, &mut got));
    assert_eq!(got, data);

    // Short IN: actual length reported; with SHORT_NOT_OK it is an error.
    r.sim.device(2).in_data.push_back(vec![7; 13]);
    let id = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    let c = completions(x);
    assert_eq!((c[0].id, c[0].actual, c[0].result), (id, 13, Ok(())));
    r.sim.device(2).in_data.push_back(vec![7; 0x900]);
    bulk(x, dev, 0x81, &seg, TransferFlags::SHORT_NOT_OK);
    let c = completions(x);
    assert_eq!(
        (c[0].actual, c[0].result),
        (0x900, Err(HcError::ShortPacket))
    );

    // OUT data arrives gathered from several segments, many times round the ring (wraps).
    let a = r.dma.alloc(512, 64).unwrap();
    let b = r.dma.alloc(512, 64).unwrap();
    a.write_bytes(0, &[1; 512]);
    b.write_bytes(0, &[2; 512]);
    let segs = [
        DmaSegment {
            bus_addr: a.bus_addr(),
            len: 512,
        },
        DmaSegment {
            bus_addr: b.bus_addr(),
            len: 100,
        },
    ];
    for i in 0..400u32 {
        let id = bulk(x, dev, 0x02, &segs, TransferFlags::empty());
        let c = completions(x);
        assert_eq!(c.len(), 1, "round {i}");
        assert_eq!((c[0].id, c[0].actual, c[0].result), (id, 612, Ok(())));
    }
    let out = &r.sim.device(2).out_data;
    assert_eq!(out.len(), 400);
    assert_eq!(out[399].1.len(), 612);
    assert_eq!(out[399].1[511], 1);
    assert_eq!(out[399].1[512], 2);
}

#[test]
fn stall_halts_endpoint_fails_queue_and_clear_halt_recovers() {
    let r = rig(true, 0);
    r.sim.plug(1, Some(SimDevice::qemu_storage(Speed::High)));
    let x = start(&r, false);
    let mut bus = enumerate(&r, x);
    let dev = bus.registry.by_route(&Route::root(1)).unwrap().id;
    let x = &mut bus.hc;
    let buf = r.dma.alloc(512, 64).unwrap();
    let seg = [DmaSegment {
        bus_addr: buf.bus_addr(),
        len: 512,
    }];
    // Three IN transfers queued while the device has no data (NAK); then it stalls.
    let a = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    let b = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    let c = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    assert!(completions(x).is_empty());
    r.sim.device(1).stall_eps.push(0x81);
    r.sim.kick(dev.0, 3);
    let done = completions(x);
    assert_eq!(
        done.iter().map(|c| (c.id, c.result)).collect::<Vec<_>>(),
        vec![
            (a, Err(HcError::Stall)),
            (b, Err(HcError::EndpointHalted)),
            (c, Err(HcError::EndpointHalted))
        ]
    );
    assert_eq!(
        x.submit(&TransferRequest {
            device: dev,
            endpoint: EndpointAddress(0x81),
            setup: None,
            buffer: &seg,
            flags: TransferFlags::empty()
        }),
        Err(HcError::EndpointHalted)
    );
    // The other endpoint is unaffected.
    bulk(x, dev, 0x02, &seg, TransferFlags::empty());
    assert_eq!(completions(x)[0].result, Ok(()));
    // Recover: Reset Endpoint + Set TR Dequeue; the next transfer works.
    r.sim.device(1).stall_eps.clear();
    x.clear_halt(dev, EndpointAddress(0x81)).unwrap();
    let cmds = r.sim.st.borrow().commands.clone();
    assert_eq!(
        &cmds[cmds.len() - 2..],
        &[ty::RESET_ENDPOINT, ty::SET_TR_DEQUEUE]
    );
    r.sim.device(1).in_data.push_back(vec![9; 5]);
    let d = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    assert_eq!(
        completions(x)
            .iter()
            .map(|c| (c.id, c.actual, c.result))
            .collect::<Vec<_>>(),
        vec![(d, 5, Ok(()))]
    );
}

#[test]
fn control_stall_and_short_control_read() {
    let r = rig(false, 0);
    r.sim.plug(1, Some(SimDevice::qemu_keyboard()));
    let x = start(&r, false);
    let mut bus = enumerate(&r, x);
    let dev = bus.registry.by_route(&Route::root(1)).unwrap().id;
    // Unknown descriptor type: stall, then ep0 is usable again (the bus clears the halt).
    let mut b = [0u8; 16];
    let res = bus.control(
        dev,
        usb_core::request::SetupPacket::get_descriptor(0x22, 0, 0, 16),
        Some(&mut b),
        None,
    );
    assert_eq!(res, Err(usb_core::UsbError::Hc(HcError::Stall)));
    let mut big = [0u8; 64];
    // Asking 64 bytes of an 18-byte descriptor: short data stage, actual 18.
    let n = bus
        .control(
            dev,
            usb_core::request::SetupPacket::get_device_descriptor(64),
            Some(&mut big),
            None,
        )
        .unwrap();
    assert_eq!(n, 18);
    assert_eq!(&big[..2], &[18, 1]);
}

#[test]
fn cancel_pending_transfer_and_queue_continues() {
    let r = rig(false, 0);
    r.sim.plug(1, Some(SimDevice::qemu_keyboard()));
    let x = start(&r, true);
    let mut bus = enumerate(&r, x);
    let dev = bus.registry.by_route(&Route::root(1)).unwrap().id;
    let x = &mut bus.hc;
    let buf = r.dma.alloc(64, 64).unwrap();
    let seg = [DmaSegment {
        bus_addr: buf.bus_addr(),
        len: 8,
    }];
    let a = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    let b = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    let c = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    assert!(completions(x).is_empty(), "keyboard NAKs");
    // Cancel the middle one: it is turned into No-ops and skipped.
    assert_eq!(x.cancel(b), Ok(true));
    let done = completions(x);
    assert_eq!(
        done.iter().map(|c| (c.id, c.result)).collect::<Vec<_>>(),
        vec![(b, Err(HcError::Cancelled))]
    );
    r.sim
        .device(1)
        .in_data
        .push_back(vec![0, 0, 4, 0, 0, 0, 0, 0]);
    r.sim.kick(dev.0, 3);
    assert_eq!(
        completions(x)
            .iter()
            .map(|c| (c.id, c.actual, c.result))
            .collect::<Vec<_>>(),
        vec![(a, 8, Ok(()))]
    );
    let d = bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    // Cancel the head (waiting at the controller): skipped with Set TR Dequeue Pointer.
    assert_eq!(x.cancel(c), Ok(true));
    assert_eq!(
        completions(x)
            .iter()
            .map(|c| (c.id, c.result))
            .collect::<Vec<_>>(),
        vec![(c, Err(HcError::Cancelled))]
    );
    // A key press completes the remaining transfer, and only it.
    r.sim
        .device(1)
        .in_data
        .push_back(vec![0, 0, 5, 0, 0, 0, 0, 0]);
    r.sim.kick(dev.0, 3);
    let done = completions(x);
    assert_eq!(
        done.iter()
            .map(|c| (c.id, c.actual, c.result))
            .collect::<Vec<_>>(),
        vec![(d, 8, Ok(()))]
    );
    let mut rep = [0u8; 8];
    buf.read_bytes(0, &mut rep);
    assert_eq!(rep[2], 5);
    assert_eq!(x.stats.stray_events, 0);
    let c = d;
    assert_eq!(x.cancel(c), Ok(false), "already completed");
}

#[test]
fn disconnect_fails_outstanding_transfers_with_no_device() {
    let r = rig(false, 0);
    r.sim.plug(1, Some(SimDevice::qemu_keyboard()));
    r.sim.plug(2, Some(SimDevice::qemu_storage(Speed::High)));
    let x = start(&r, false);
    let mut bus = enumerate(&r, x);
    let kbd = bus.registry.by_route(&Route::root(1)).unwrap().id;
    let buf = r.dma.alloc(64, 64).unwrap();
    let seg = [DmaSegment {
        bus_addr: buf.bus_addr(),
        len: 8,
    }];
    let t = bulk(&mut bus.hc, kbd, 0x81, &seg, TransferFlags::empty());
    r.sim.plug(1, None);
    let ev = drain(&mut bus.hc);
    assert!(
        ev.contains(&HcEvent::Transfer(Completion {
            id: t,
            device: kbd,
            endpoint: EndpointAddress(0x81),
            actual: 0,
            result: Err(HcError::NoDevice)
        })),
        "{ev:?}"
    );
    assert!(ev.contains(&HcEvent::PortChange(1)));
    assert_eq!(
        bus.hc.submit(&TransferRequest {
            device: kbd,
            endpoint: EndpointAddress(0x81),
            setup: None,
            buffer: &seg,
            flags: TransferFlags::empty()
        }),
        Err(HcError::NoDevice)
    );
    let ev = bus.handle_root_port(1);
    assert!(
        matches!(ev[..], [BusEvent::Detached(id, _)] if id == kbd),
        "{ev:?}"
    );
    assert!(
        r.sim.st.borrow().slots[kbd.0 as usize].is_none(),
        "slot disabled"
    );
    // The other device still works.
    let st = bus.registry.by_route(&Route::root(2)).unwrap().id;
    r.sim.device(2).in_data.push_back(vec![1; 8]);
    bulk(&mut bus.hc, st, 0x81, &seg, TransferFlags::empty());
    assert_eq!(completions(&mut bus.hc)[0].result, Ok(()));
    // Replug: enumerates again.
    r.sim.plug(1, Some(SimDevice::qemu_keyboard()));
    let ev = bus.handle_root_port(1);
    assert!(matches!(ev[..], [BusEvent::Attached(_)]), "{ev:?}");
}

#[test]
fn devices_behind_a_hub_get_route_and_tt() {
    let r = rig(false, 0);
    let mut hub = SimDevice::hub(4);
    hub.hub.as_mut().unwrap().ports[2].device = Some(SimDevice::qemu_keyboard());
    hub.hub.as_mut().unwrap().ports[0].device = Some(SimDevice::qemu_storage(Speed::High));
    r.sim.plug(2, Some(hub));
    let x = start(&r, false);
    let bus = enumerate(&r, x);
    assert_eq!(bus.registry.len(), 3);
    let hub_id = bus.registry.by_route(&Route::root(2)).unwrap().id;
    let kbd = bus
        .registry
        .by_route(&Route::root(2).child(3).unwrap())
        .unwrap();
    assert_eq!(kbd.product.as_deref(), Some("QEMU USB Keyboard"));
    let s = r.sim.st.borrow();
    let ks = s.slots[kbd.id.0 as usize].as_ref().unwrap();
    assert_eq!((ks.port, ks.route, ks.tt_hub), (2, 0x3, hub_id.0));
    // The hub's slot context says it is a hub with 4 ports.
    let dcbaap = r.sim.regs.peek(0x40 + crate::regs::DCBAAP, 8);
    let out = r.mem.read64(dcbaap + 8 * hub_id.0 as u64).unwrap();
    let d0 = r.mem.read32(out).unwrap();
    let d1 = r.mem.read32(out + 4).unwrap();
    assert!(d0 & (1 << 26) != 0, "hub bit");
    assert_eq!(d1 >> 24, 4, "number of ports");
}

#[test]
fn malformed_device_disables_port_others_continue() {
    let r = rig(false, 0);
    let mut bad = SimDevice::qemu_keyboard();
    bad.device_desc[7] = 3; // impossible bMaxPacketSize0
    r.sim.plug(1, Some(bad));
    r.sim.plug(2, Some(SimDevice::qemu_keyboard()));
    let x = start(&r, false);
    let mut bus = Bus::new(x, r.dma.clone(), r.clock.clone()).unwrap();
    let ev = bus.scan();
    assert!(
        matches!(
            ev[0],
            BusEvent::Failed(_, usb_core::UsbError::Descriptor(_))
        ),
        "{ev:?}"
    );
    assert!(matches!(ev[1], BusEvent::Attached(_)), "{ev:?}");
    assert!(!bus.hc.port_status(1).unwrap().enabled, "port 1 disabled");
    assert!(bus.hc.port_status(2).unwrap().enabled);
    assert_eq!(
        r.sim
            .st
            .borrow()
            .slots
            .iter()
            .filter(|s| s.is_some())
            .count(),
        1
    );
}

#[test]
fn event_ring_wraps_many_times() {
    let r = rig(false, 0);
    r.sim.plug(2, Some(SimDevice::qemu_storage(Speed::High)));
    let x = start(&r, true);
    let mut bus = enumerate(&r, x);
    let dev = bus.registry.by_route(&Route::root(2)).unwrap().id;
    let x = &mut bus.hc;
    let buf = r.dma.alloc(512, 64).unwrap();
    let seg = [DmaSegment {
        bus_addr: buf.bus_addr(),
        len: 512,
    }];
    // 1000 transfers, completions polled in batches of 10: > 3 wraps of the 256-entry ring.
    let mut n = 0;
    for _ in 0..100 {
        let ids: Vec<_> = (0..10)
            .map(|_| bulk(x, dev, 0x02, &seg, TransferFlags::empty()))
            .collect();
        let c = completions(x);
        assert_eq!(c.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
        n += c.len();
    }
    assert_eq!(n, 1000);
    assert!(x.stats.events > 3 * 256);
    assert_eq!(x.stats.stray_events, 0);
}

#[test]
fn silent_device_times_out_cleanly_and_its_port_is_disabled() {
    let r = rig(false, 0);
    let mut silent = SimDevice::qemu_keyboard();
    silent.fault = usb_core::sim::Fault::SilentAfter(1);
    r.sim.plug(1, Some(silent));
    r.sim.plug(2, Some(SimDevice::qemu_keyboard()));
    let x = start(&r, false);
    let mut bus = Bus::new(x, r.dma.clone(), r.clock.clone()).unwrap();
    let ev = bus.scan();
    assert!(
        matches!(ev[0], BusEvent::Failed(route, usb_core::UsbError::Timeout(_)) if route == Route::root(1)),
        "{ev:?}"
    );
    assert!(matches!(ev[1], BusEvent::Attached(_)), "{ev:?}");
    // The hanging control transfer was cancelled (Stop Endpoint) and its slot released.
    let cmds = r.sim.st.borrow().commands.clone();
    assert!(cmds.contains(&ty::STOP_ENDPOINT), "{cmds:?}");
    assert!(cmds.contains(&ty::DISABLE_SLOT), "{cmds:?}");
    assert!(!bus.hc.port_status(1).unwrap().enabled);
    assert_eq!(bus.hc.stats.stray_events, 0);
    // The keyboard on the other port works.
    let kbd = bus.registry.by_route(&Route::root(2)).unwrap().id;
    let buf = r.dma.alloc(8, 8).unwrap();
    let seg = [DmaSegment {
        bus_addr: buf.bus_addr(),
        len: 8,
    }];
    r.sim
        .device(2)
        .in_data
        .push_back(vec![0, 0, 7, 0, 0, 0, 0, 0]);
    let id = bulk(&mut bus.hc, kbd, 0x81, &seg, TransferFlags::empty());
    assert_eq!(completions(&mut bus.hc)[0].id, id);
}

#[test]
fn babble_and_transaction_errors_map_and_halt() {
    let r = rig(false, 0);
    r.sim.plug(2, Some(SimDevice::qemu_storage(Speed::High)));
    let x = start(&r, false);
    let mut bus = enumerate(&r, x);
    let dev = bus.registry.by_route(&Route::root(2)).unwrap().id;
    let x = &mut bus.hc;
    let buf = r.dma.alloc(512, 64).unwrap();
    let seg = [DmaSegment {
        bus_addr: buf.bus_addr(),
        len: 64,
    }];
    r.sim.device(2).in_data.push_back(vec![1; 100]); // more than asked for
    bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    assert_eq!(completions(x)[0].result, Err(HcError::Babble));
    x.clear_halt(dev, EndpointAddress(0x81)).unwrap();
    r.sim.device(2).in_data.push_back(vec![1; 64]);
    bulk(x, dev, 0x81, &seg, TransferFlags::empty());
    assert_eq!(completions(x)[0].result, Ok(()));
    // Zero-length OUT with ZERO_PACKET on a multiple of the packet size adds a zero-length TRB.
    let full = [DmaSegment {
        bus_addr: buf.bus_addr(),
        len: 512,
    }];
    let before = x.stats.trbs;
    bulk(x, dev, 0x02, &full, TransferFlags::ZERO_PACKET);
    assert_eq!(x.stats.trbs - before, 2);
    assert_eq!(completions(x)[0].actual, 512);
}

#[test]
fn a_32_bit_controller_refuses_buffers_above_4_gib() {
    let r = rig(false, 0);
    let hcc = r.sim.regs.peek(crate::regs::HCCPARAMS1, 4) & !(crate::regs::HCC_AC64 as u64);
    r.sim.regs.poke(crate::regs::HCCPARAMS1, 4, hcc);
    r.sim.plug(2, Some(SimDevice::qemu_storage(Speed::High)));
    let x = start(&r, false);
    let mut bus = enumerate(&r, x);
    let dev = bus.registry.by_route(&Route::root(2)).unwrap().id;
    let high = [DmaSegment {
        bus_addr: 0xffff_ff00,
        len: 0x200,
    }];
    assert!(matches!(
        bus.hc.submit(&TransferRequest {
            device: dev,
            endpoint: EndpointAddress(0x02),
            setup: None,
            buffer: &high,
            flags: TransferFlags::empty()
        }),
        Err(HcError::Invalid(_))
    ));
}
