use super::*;
use crate::sim::{Fault, SimDevice, SimHc};
use hal::fake::{FakeClock, FakeDma, FakeMemory};

fn bus(ports: u8) -> Bus<SimHc, FakeDma, FakeClock> {
    let mem = FakeMemory::new(0x10_0000, 0x10_0000);
    let hc = SimHc::new(mem.clone(), ports);
    Bus::new(hc, FakeDma::new(mem), FakeClock::default()).unwrap()
}

#[test]
fn enumerates_root_devices() {
    let mut b = bus(4);
    b.hc.plug(1, Some(SimDevice::qemu_storage(Speed::High)));
    b.hc.plug(3, Some(SimDevice::qemu_keyboard()));
    let ev = b.scan();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(b.registry.len(), 2);
    let st = b.registry.by_route(&Route::root(1)).unwrap();
    assert_eq!(st.descriptor.vendor, 0x46f4);
    assert_eq!(st.product.as_deref(), Some("QEMU USB HARDDRIVE"));
    assert_eq!(st.manufacturer.as_deref(), Some("usbdom-sim"));
    let cfg = st.config.as_ref().unwrap();
    assert_eq!(cfg.interfaces[0].class, 8);
    assert_eq!(cfg.interfaces[0].endpoints.len(), 2);
    let id = st.id;
    assert_eq!(b.hc.device_at(&Route::root(1)).unwrap().configuration, 1);
    assert_ne!(b.hc.device_at(&Route::root(1)).unwrap().address, 0);
    // A rescan without changes does nothing.
    assert!(b.scan().is_empty());
    // The configured bulk endpoint works through the trait.
    b.hc.device_at(&Route::root(1))
        .unwrap()
        .in_data
        .push_back(vec![1, 2, 3]);
    let buf = b.dma().alloc(512, 64).unwrap();
    let seg = [DmaSegment {
        bus_addr: buf.bus_addr(),
        len: 512,
    }];
    let t =
        b.hc.submit(&TransferRequest {
            device: id,
            endpoint: EndpointAddress(0x81),
            setup: None,
            buffer: &seg,
            flags: TransferFlags::empty(),
        })
        .unwrap();
    assert_eq!(b.wait(t, 10), Ok(3));
    let mut got = [0u8; 3];
    buf.read_bytes(0, &mut got);
    assert_eq!(got, [1, 2, 3]);
}

#[test]
fn superspeed_uses_512_byte_ep0() {
    let mut b = bus(2);
    b.hc.plug(2, Some(SimDevice::qemu_storage(Speed::Super)));
    let ev = b.scan();
    assert!(matches!(ev[..], [BusEvent::Attached(_)]), "{ev:?}");
    let d = b.registry.by_route(&Route::root(2)).unwrap();
    assert_eq!(d.info.speed, Speed::Super);
    assert_eq!(d.descriptor.max_packet0(), Ok(512));
    assert_eq!(
        d.config.as_ref().unwrap().active_endpoints(&[])[0].max_packet,
        1024
    );
}

#[test]
fn hub_with_devices_behind_it() {
    let mut b = bus(2);
    let mut hub = SimDevice::hub(4);
    hub.hub.as_mut().unwrap().ports[1].device = Some(SimDevice::qemu_keyboard());
    hub.hub.as_mut().unwrap().ports[3].device = Some(SimDevice::qemu_storage(Speed::High));
    b.hc.plug(1, Some(hub));
    let ev = b.scan();
    assert_eq!(ev.len(), 3, "{ev:?}");
    let hub_id = b.registry.by_route(&Route::root(1)).unwrap().id;
    assert_eq!(b.registry.get(hub_id).unwrap().hub.unwrap().ports, 4);
    let kbd_route = Route::root(1).child(2).unwrap();
    let kbd = b.registry.by_route(&kbd_route).unwrap();
    assert_eq!(kbd.info.speed, Speed::Full);
    assert_eq!(kbd.parent, Some(hub_id));
    let tt = kbd
        .info
        .tt
        .expect("full-speed behind high-speed hub needs a TT");
    assert_eq!((tt.hub, tt.port), (hub_id, 2));
    let st = b
        .registry
        .by_route(&Route::root(1).child(4).unwrap())
        .unwrap();
    assert_eq!(st.info.tt, None);
    assert_eq!(st.info.route.to_string(), "1.4");

    // Hotplug behind the hub: unplug the keyboard, the hub poll notices.
    b.hc.plug_behind_hub(Route::root(1), 2, None);
    let ev = b.poll_hubs();
    assert!(
        matches!(ev[..], [BusEvent::Detached(_, r)] if r == kbd_route),
        "{ev:?}"
    );
    assert_eq!(b.registry.len(), 2);
    // And back.
    b.hc.plug_behind_hub(Route::root(1), 2, Some(SimDevice::qemu_keyboard()));
    let ev = b.poll_hubs();
    assert!(matches!(ev[..], [BusEvent::Attached(_)]), "{ev:?}");

    // Unplugging the hub removes the whole subtree and frees every slot.
    assert_eq!(b.hc.slots_in_use(), 3);
    b.hc.plug(1, None);
    let ev = b.handle_root_port(1);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(
        matches!(ev[2], BusEvent::Detached(id, _) if id == hub_id),
        "hub last: {ev:?}"
    );
    assert!(b.registry.is_empty());
    assert_eq!(b.hc.slots_in_use(), 0);
}

#[test]
fn malformed_descriptor_disables_only_that_port() {
    let mut b = bus(2);
    let mut bad = SimDevice::qemu_keyboard();
    bad.config[9] = 0; // bLength 0 inside the configuration
    b.hc.plug(1, Some(bad));
    b.hc.plug(2, Some(SimDevice::qemu_storage(Speed::High)));
    let ev = b.scan();
    assert!(
        matches!(ev[0], BusEvent::Failed(r, UsbError::Descriptor(_)) if r == Route::root(1)),
        "{ev:?}"
    );
    assert!(matches!(ev[1], BusEvent::Attached(_)));
    assert!(!b.hc.port_enabled(1));
    assert!(b.hc.port_enabled(2));
    assert_eq!(
        b.hc.slots_in_use(),
        1,
        "the failed device's slot is released"
    );
}

#[test]
fn silent_device_times_out_and_stalling_device_fails() {
    let mut b = bus(3);
    let mut silent = SimDevice::qemu_keyboard();
    silent.fault = Fault::SilentAfter(1);
    let mut stalls = SimDevice::qemu_keyboard();
    stalls.fault = Fault::StallControlAfter(0);
    b.hc.plug(1, Some(silent));
    b.hc.plug(2, Some(stalls));
    b.hc.plug(3, Some(SimDevice::qemu_keyboard()));
    let ev = b.scan();
    assert!(
        matches!(ev[0], BusEvent::Failed(_, UsbError::Timeout(_))),
        "{ev:?}"
    );
    assert!(
        matches!(ev[1], BusEvent::Failed(_, UsbError::Hc(HcError::Stall))),
        "{ev:?}"
    );
    assert!(matches!(ev[2], BusEvent::Attached(_)), "{ev:?}");
    assert_eq!(b.hc.slots_in_use(), 1);
    assert!(b.clock.now_ns() >= CONTROL_TIMEOUT_MS * 1_000_000);
}

#[test]
fn port_events_arriving_during_enumeration_are_kept() {
    let mut b = bus(2);
    b.hc.plug(1, Some(SimDevice::qemu_keyboard()));
    b.hc.plug(2, Some(SimDevice::qemu_keyboard()));
    let _ = b.handle_root_port(1);
    // The two plug events were queued before; enumeration's waits must not lose them.
    let mut changes = vec![];
    while let Some(e) = b.poll() {
        if let HcEvent::PortChange(p) = e {
            changes.push(p);
        }
    }
    assert_eq!(changes, vec![1, 2]);
}

#[test]
fn reset_device_on_a_root_port_enumerates_it_afresh() {
    let mut b = bus(2);
    b.hc.plug(2, Some(SimDevice::qemu_storage(Speed::High)));
    b.scan();
    let old = b.registry.by_route(&Route::root(2)).unwrap().id;
    // What a previous user left behind: another configuration selected.
    b.hc.device_at(&Route::root(2)).unwrap().configuration = 0;
    let resets_before = b.hc.device_at(&Route::root(2)).unwrap().resets;
    let ev = b.reset_device(old);
    assert!(
        matches!(ev[..], [BusEvent::Detached(o, r), BusEvent::Attached(_)] if o == old && r == Route::root(2)),
        "{ev:?}"
    );
    let d = b.hc.device_at(&Route::root(2)).unwrap();
    assert_eq!(d.resets, resets_before + 1, "the port was reset");
    assert_eq!(d.configuration, 1, "configured again");
    assert_ne!(d.address, 0, "addressed again");
    let new = b.registry.by_route(&Route::root(2)).unwrap();
    assert_eq!(new.descriptor.vendor, 0x46f4);
    assert_eq!(b.registry.len(), 1);
    assert_eq!(b.hc.slots_in_use(), 1, "the old slot was released");
    // An unknown device: nothing happens.
    assert!(b.reset_device(DeviceId(200)).is_empty());
    assert_eq!(b.registry.len(), 1);
}

#[test]
fn reset_device_behind_a_hub_resets_only_that_hub_port() {
    let mut b = bus(1);
    let mut hub = SimDevice::hub(4);
    hub.hub.as_mut().unwrap().ports[1].device = Some(SimDevice::qemu_keyboard());
    hub.hub.as_mut().unwrap().ports[3].device = Some(SimDevice::qemu_storage(Speed::High));
    b.hc.plug(1, Some(hub));
    b.scan();
    let hub_id = b.registry.by_route(&Route::root(1)).unwrap().id;
    let st_route = Route::root(1).child(4).unwrap();
    let kbd_route = Route::root(1).child(2).unwrap();
    let st = b.registry.by_route(&st_route).unwrap().id;
    let kbd = b.registry.by_route(&kbd_route).unwrap().id;
    let ev = b.reset_device(st);
    assert!(
        matches!(ev[..], [BusEvent::Detached(o, r), BusEvent::Attached(_)] if o == st && r == st_route),
        "{ev:?}"
    );
    let new = b.registry.by_route(&st_route).unwrap();
    assert_eq!(new.parent, Some(hub_id));
    assert_eq!(
        b.hc.device_at(&st_route).unwrap().resets,
        2,
        "enumeration, then the reset"
    );
    assert_eq!(
        b.hc.device_at(&kbd_route).unwrap().resets,
        1,
        "enumeration only"
    );
    assert_eq!(
        b.registry.by_route(&kbd_route).unwrap().id,
        kbd,
        "the keyboard is untouched"
    );
    assert_eq!(b.registry.len(), 3);
    assert_eq!(b.hc.slots_in_use(), 3);
}

#[test]
fn reset_device_that_no_longer_answers_fails_and_disables_the_port() {
    let mut b = bus(1);
    b.hc.plug(1, Some(SimDevice::qemu_storage(Speed::High)));
    b.scan();
    let id = b.registry.by_route(&Route::root(1)).unwrap().id;
    b.hc.device_at(&Route::root(1)).unwrap().fault = Fault::StallControlAfter(0);
    let ev = b.reset_device(id);
    assert!(
        matches!(ev[..], [BusEvent::Detached(o, _), BusEvent::Failed(r, _)] if o == id && r == Route::root(1)),
        "{ev:?}"
    );
    assert!(b.registry.is_empty());
    assert_eq!(b.hc.slots_in_use(), 0);
}
